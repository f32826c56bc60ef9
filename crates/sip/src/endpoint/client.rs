//! Requests we send: client transactions (§17.1), the responses they receive (with the
//! ACK for a failure and re-ACKs of retransmitted 2xx), CANCEL, and the dialog requests
//! (re-INVITE, BYE, ACK) of the UAC side.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::builder::MessageBuilder;
use crate::dialog::{Dialog, DialogId, DialogKey};
use crate::error::SipError;
use crate::header::HeaderName;
use crate::message::{Message, OwnedMessage};
use crate::transaction::{ClientInviteState, ClientInviteTransaction, ClientNonInviteTransaction};
use crate::via::Transport;

use super::{no_such_transaction, ClientTxnId, Endpoint, Event, TimerKey};

pub(super) enum ClientMachine {
    Invite(ClientInviteTransaction),
    NonInvite(ClientNonInviteTransaction),
}

pub(super) struct ClientTxn {
    pub(super) branch: String,
    pub(super) method: String,
    pub(super) machine: ClientMachine,
    pub(super) request: OwnedMessage,
    pub(super) remote: SocketAddr,
    pub(super) transport: Transport,
}

impl ClientTxn {
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match &self.machine {
            ClientMachine::Invite(m) => m.poll_timeout(),
            ClientMachine::NonInvite(m) => m.poll_timeout(),
        }
    }

    pub(super) fn is_terminated(&self) -> bool {
        match &self.machine {
            ClientMachine::Invite(m) => m.is_terminated(),
            ClientMachine::NonInvite(m) => m.is_terminated(),
        }
    }
}

fn raw_header<'a>(m: &Message<'a>, name: HeaderName) -> Option<&'a str> {
    m.header(name).and_then(|h| h.value_str())
}

/// The ACK a client INVITE transaction sends for a failure response
/// (§17.1.1.3): Request-URI, top Via, From, Call-ID and Route of the INVITE, To of
/// the response, CSeq number of the INVITE with method ACK.
fn ack_for_failure(invite: &Message<'_>, response: &Message<'_>) -> Option<Bytes> {
    let request_uri = std::str::from_utf8(invite.request_uri_raw()?).ok()?;
    let top_via = invite.list_elements(HeaderName::Via).next()?.ok()?;
    let mut b = MessageBuilder::request("ACK", request_uri)
        .header("Via", top_via)
        .header("Max-Forwards", crate::dialog::DEFAULT_MAX_FORWARDS);
    for route in invite.headers_named(HeaderName::Route) {
        b = b.header("Route", route.value_str()?);
    }
    b.header("From", raw_header(invite, HeaderName::From)?)
        .header("To", raw_header(response, HeaderName::To)?)
        .header("Call-ID", invite.call_id().ok()?)
        .header("CSeq", format_args!("{} ACK", invite.cseq().ok()?.seq))
        .build()
        .ok()
}

impl Endpoint {
    pub(super) fn handle_response(&mut self, now: Instant, response: OwnedMessage) {
        let m = response.message();
        if m.validate().is_err() {
            return; // malformed responses are dropped silently
        }
        let (Ok(via), Ok(cseq), Some(status)) = (m.via(), m.cseq(), m.status()) else {
            return;
        };
        let Some(branch) = via.branch() else { return };
        let lookup = (branch.to_owned(), cseq.method.to_owned());
        let Some(&id) = self.client_keys.get(&lookup) else {
            // A 2xx retransmission after the INVITE transaction ended: re-ACK it.
            if cseq.method == "INVITE" && (200..300).contains(&status) {
                self.absorb_2xx_retransmission(&m);
            }
            return;
        };
        let Some(txn) = self.client_txns.get_mut(&id) else {
            return;
        };
        let (deliver, transmit) = match &mut txn.machine {
            ClientMachine::NonInvite(t) => (t.on_response(now, status), None),
            ClientMachine::Invite(t) => {
                let invite = txn.request.message();
                let d = t.on_response(now, status, || ack_for_failure(&invite, &m));
                (d.deliver, d.transmit)
            }
        };
        let (remote, transport) = (txn.remote, txn.transport);
        let is_invite = matches!(txn.machine, ClientMachine::Invite(_));
        let invite = txn.request.clone();
        if let Some(ack) = transmit {
            self.transmit(remote, transport, ack);
        }
        let mut dialog = None;
        if deliver && is_invite && (200..300).contains(&status) {
            if self.absorb_2xx_retransmission(&m) {
                self.after_client_change(id);
                return;
            }
            match Dialog::uac(&invite.message(), &m, remote, transport) {
                Ok(d) => dialog = Some(self.insert_dialog(d)),
                Err(_) => {
                    self.after_client_change(id);
                    return;
                }
            }
        }
        if deliver {
            self.events.push_back(Event::Response {
                txn: id,
                dialog,
                response,
            });
        }
        self.after_client_change(id);
    }

    /// Re-sends our ACK when a 2xx we already acknowledged comes again; `true`
    /// when it did.
    fn absorb_2xx_retransmission(&mut self, response: &Message<'_>) -> bool {
        let Some(key) = (|| {
            Some(DialogKey {
                call_id: response.call_id().ok()?.to_owned(),
                local_tag: response.from().ok()?.tag()?.to_owned(),
                remote_tag: response.to().ok()?.tag().unwrap_or_default().to_owned(),
            })
        })() else {
            return false;
        };
        let cseq = response.cseq().map(|c| c.seq).ok();
        let Some(dialog) = self
            .dialog_keys
            .get(&key)
            .and_then(|id| self.dialogs.get(id))
        else {
            return false;
        };
        match &dialog.sent_ack {
            Some((ack_cseq, bytes)) if Some(*ack_cseq) == cseq => {
                let (to, tr, bytes) = (dialog.next_hop(), dialog.transport(), bytes.clone());
                self.transmit(to, tr, bytes);
                true
            }
            // Acknowledged by the TU later (it has not sent the ACK yet).
            _ => dialog.sent_ack.is_none() && dialog.invite_cseq() == cseq.unwrap_or(0),
        }
    }

    // ---- requests we send ----------------------------------------------------

    /// Sends a request we built (its top Via from [`Endpoint::new_via`]) in a new
    /// client transaction to `remote`. INVITE gets an INVITE client transaction,
    /// everything else a non-INVITE one; use [`Endpoint::send_ack`] for ACK.
    pub fn send_request(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        transport: Transport,
        request: Bytes,
    ) -> Result<ClientTxnId, SipError> {
        let request = OwnedMessage::parse(request)?;
        let (branch, method) = {
            let m = request.message();
            let method = m.method().ok_or(SipError::Build {
                reason: "send_request needs a request",
            })?;
            if method == "ACK" {
                return Err(SipError::Build {
                    reason: "ACK has no transaction: use send_ack",
                });
            }
            let branch = m.via()?.branch().ok_or(SipError::Build {
                reason: "the top Via needs a branch (use new_via)",
            })?;
            (branch.to_owned(), method.to_owned())
        };
        if self.transaction_count() >= self.config.max_transactions {
            return Err(SipError::Build {
                reason: "too many live transactions",
            });
        }
        let reliable = transport.is_stream();
        let bytes = request.bytes();
        let machine = if method == "INVITE" {
            ClientMachine::Invite(ClientInviteTransaction::new(
                now,
                self.config.timers,
                reliable,
                bytes.clone(),
            ))
        } else {
            ClientMachine::NonInvite(ClientNonInviteTransaction::new(
                now,
                self.config.timers,
                reliable,
                bytes.clone(),
            ))
        };
        let id = ClientTxnId(self.next_id());
        self.client_keys
            .insert((branch.clone(), method.clone()), id);
        self.client_txns.insert(
            id,
            ClientTxn {
                branch,
                method,
                machine,
                request,
                remote,
                transport,
            },
        );
        self.transmit(remote, transport, bytes);
        self.schedule(TimerKey::Client(id));
        Ok(id)
    }

    /// The dialog, if it is live.
    pub fn dialog(&self, id: DialogId) -> Option<&Dialog> {
        self.dialogs.get(&id)
    }

    /// Starts an in-dialog request (e.g. re-INVITE, INFO) with a fresh Via and the
    /// next CSeq; finish it and pass it to [`Endpoint::send_request`] with
    /// [`Dialog::next_hop`] / [`Dialog::transport`].
    pub fn dialog_request(&mut self, id: DialogId, method: &str) -> Option<MessageBuilder> {
        let transport = self.dialogs.get(&id)?.transport();
        let via = self.new_via(transport);
        Some(self.dialogs.get_mut(&id)?.request(method, &via))
    }

    /// Hangs up: sends BYE in the dialog and forgets the dialog (further
    /// requests in it get 481). The BYE's response arrives as
    /// [`Event::Response`], or its loss as [`Event::TransactionTimedOut`].
    pub fn send_bye(&mut self, now: Instant, id: DialogId) -> Result<ClientTxnId, SipError> {
        let bye = self
            .dialog_request(id, "BYE")
            .ok_or_else(no_such_transaction)?
            .build()?;
        let (hop, transport) = {
            let d = self.dialogs.get(&id).ok_or_else(no_such_transaction)?;
            (d.next_hop(), d.transport())
        };
        self.remove_dialog(id);
        self.send_request(now, hop, transport, bye)
    }

    /// UAC side: acknowledges the 2xx of our INVITE in dialog `id`, optionally
    /// with a body (the SDP answer when the 2xx carried the offer). The ACK is
    /// re-sent by the endpoint whenever the 2xx is retransmitted.
    pub fn send_ack(
        &mut self,
        _now: Instant,
        id: DialogId,
        body: Option<(&str, &[u8])>,
    ) -> Result<(), SipError> {
        let transport = self
            .dialogs
            .get(&id)
            .ok_or_else(no_such_transaction)?
            .transport();
        let via = self.new_via(transport);
        let d = self.dialogs.get_mut(&id).ok_or_else(no_such_transaction)?;
        let mut ack = d.ack(&via);
        if let Some((content_type, bytes)) = body {
            ack = ack.body(content_type, bytes);
        }
        let bytes = ack.build()?;
        d.sent_ack = Some((d.invite_cseq(), bytes.clone()));
        let hop = d.next_hop();
        self.transmit(hop, transport, bytes);
        Ok(())
    }

    /// UAC side: cancels our INVITE `invite` (RFC 3261 §9.1) once a provisional
    /// response has arrived. The 487 for the INVITE arrives as [`Event::Response`].
    pub fn send_cancel(
        &mut self,
        now: Instant,
        invite: ClientTxnId,
    ) -> Result<ClientTxnId, SipError> {
        let txn = self
            .client_txns
            .get(&invite)
            .ok_or_else(no_such_transaction)?;
        match &txn.machine {
            ClientMachine::Invite(t) if t.state() == ClientInviteState::Proceeding => {}
            _ => {
                return Err(SipError::Build {
                    reason: "CANCEL only for an INVITE that got a provisional response",
                })
            }
        }
        let m = txn.request.message();
        let raw = |name: HeaderName| {
            m.header(name)
                .and_then(|h| h.value_str())
                .ok_or(SipError::MissingHeader {
                    header: name.as_str(),
                })
        };
        let request_uri = m
            .request_uri_raw()
            .and_then(|u| std::str::from_utf8(u).ok())
            .ok_or(SipError::Build {
                reason: "INVITE without Request-URI",
            })?;
        let top_via = m
            .list_elements(HeaderName::Via)
            .next()
            .unwrap_or(Err(SipError::MissingHeader { header: "Via" }))?;
        let mut b = MessageBuilder::request("CANCEL", request_uri)
            .header("Via", top_via)
            .header("Max-Forwards", crate::dialog::DEFAULT_MAX_FORWARDS);
        for route in m.headers_named(HeaderName::Route) {
            if let Some(v) = route.value_str() {
                b = b.header("Route", v);
            }
        }
        let cancel = b
            .header("From", raw(HeaderName::From)?)
            .header("To", raw(HeaderName::To)?)
            .header("Call-ID", m.call_id()?)
            .header("CSeq", format_args!("{} CANCEL", m.cseq()?.seq))
            .build()?;
        let (remote, transport) = (txn.remote, txn.transport);
        self.send_request(now, remote, transport, cancel)
    }

    /// Forgets a dialog without signalling (e.g. after [`Event::AckTimedOut`]
    /// when no BYE is wanted).
    pub fn remove_dialog(&mut self, id: DialogId) {
        if let Some(d) = self.dialogs.remove(&id) {
            self.dialog_keys.remove(&d.key());
        }
        self.unschedule(TimerKey::Answer(id));
    }
}
