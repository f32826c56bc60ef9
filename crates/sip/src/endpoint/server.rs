//! Requests we receive: server transactions (§17.2), their matching (§17.2.3) and the
//! dialog an in-dialog request names (§12.2.2), ACK and CANCEL handling, and the
//! stateless refusals (400/420/481/500/503) the endpoint sends by itself.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::dialog::{DialogId, DialogKey};
use crate::error::SipError;
use crate::header::HeaderName;
use crate::message::{Message, OwnedMessage};
use crate::transaction::{
    is_rfc3261_branch, AckDisposition, SentBy, ServerInviteState, ServerInviteTransaction,
    ServerNonInviteTransaction, TransactionKey,
};
use crate::via::Transport;

use super::routing::{response_target, stamp_request};
use super::{Endpoint, Event, ServerTxnId, TimerKey, OVERLOAD_RETRY_AFTER_SECS};

pub(super) enum ServerMachine {
    Invite(ServerInviteTransaction),
    NonInvite(ServerNonInviteTransaction),
}

pub(super) struct ServerTxn {
    pub(super) key: TransactionKey,
    pub(super) machine: ServerMachine,
    /// The request, its top Via stamped with received/rport.
    pub(super) request: OwnedMessage,
    /// Where the request came from (the dialog's fallback next hop).
    pub(super) source: SocketAddr,
    /// Where responses go (§18.2.2).
    pub(super) target: SocketAddr,
    pub(super) transport: Transport,
    /// To tag of our responses (the dialog's tag for in-dialog requests).
    pub(super) local_tag: String,
    pub(super) dialog: Option<DialogId>,
    /// When the TU must have answered (finally) by.
    pub(super) answer_by: Option<Instant>,
}

impl ServerTxn {
    pub(super) fn is_invite(&self) -> bool {
        matches!(self.machine, ServerMachine::Invite(_))
    }

    pub(super) fn method(&self) -> &str {
        self.key.method()
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let machine = match &self.machine {
            ServerMachine::Invite(m) => m.poll_timeout(),
            ServerMachine::NonInvite(m) => m.poll_timeout(),
        };
        [machine, self.answer_by].into_iter().flatten().min()
    }

    pub(super) fn is_terminated(&self) -> bool {
        match &self.machine {
            ServerMachine::Invite(m) => m.is_terminated(),
            ServerMachine::NonInvite(m) => m.is_terminated(),
        }
    }

    pub(super) fn send_response(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Bytes,
    ) -> Option<Bytes> {
        if status >= 200 {
            self.answer_by = None;
        }
        match &mut self.machine {
            ServerMachine::Invite(m) => m.send_response(now, status, bytes),
            ServerMachine::NonInvite(m) => m.send_response(now, status, bytes),
        }
    }
}

/// The server transaction key of a (validated) request (§17.2.3).
fn server_key(m: &Message<'_>) -> Result<TransactionKey, SipError> {
    let via = m.via()?;
    let method = m.method().unwrap_or_default();
    match via.branch() {
        Some(branch) if is_rfc3261_branch(branch) => Ok(TransactionKey::rfc3261(
            branch,
            SentBy::new(&via.host.to_string(), via.port),
            method,
        )),
        _ => {
            let top_via = m
                .list_elements(HeaderName::Via)
                .next()
                .unwrap_or(Err(SipError::MissingHeader { header: "Via" }))?;
            let request_uri = m
                .request_uri_raw()
                .and_then(|u| std::str::from_utf8(u).ok())
                .unwrap_or_default();
            Ok(TransactionKey::rfc2543(
                request_uri,
                m.from()?.tag(),
                m.call_id()?,
                m.cseq()?.seq,
                top_via,
                method,
            ))
        }
    }
}

/// The dialog an in-dialog request names (§12.2.2), from our point of view.
fn dialog_key_of_request(m: &Message<'_>) -> Option<DialogKey> {
    let local_tag = m.to().ok()?.tag()?.to_owned();
    Some(DialogKey {
        call_id: m.call_id().ok()?.to_owned(),
        local_tag,
        remote_tag: m.from().ok()?.tag().unwrap_or_default().to_owned(),
    })
}

impl Endpoint {
    pub(super) fn handle_request(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        transport: Transport,
        request: OwnedMessage,
    ) {
        let (method, is_ack) = {
            let m = request.message();
            let method = m.method().unwrap_or_default().to_owned();
            let is_ack = method == "ACK";
            if let Err(error) = m.validate() {
                if !is_ack {
                    self.reply_stateless_error(&m, remote, transport, &error);
                }
                return;
            }
            if !is_ack && method != "CANCEL" {
                let supported: Vec<&str> =
                    self.config.supported.iter().map(String::as_str).collect();
                if let Err(error) = m.check_require(&supported) {
                    self.reply_stateless_error(&m, remote, transport, &error);
                    return;
                }
            }
            (method, is_ack)
        };
        let request = stamp_request(request, remote);
        let m = request.message();
        let Ok(via) = m.via() else { return };
        let target = response_target(&via, remote, transport);
        let Ok(key) = server_key(&m) else { return };

        if is_ack {
            self.handle_ack(now, key, request.clone());
            return;
        }
        if let Some(&id) = self.server_keys.get(&key) {
            // A retransmission: repeat the last response, if any.
            if let Some(txn) = self.server_txns.get_mut(&id) {
                let again = match &mut txn.machine {
                    ServerMachine::Invite(t) => t.on_request_retransmission(now),
                    ServerMachine::NonInvite(t) => t.on_request_retransmission(now),
                };
                if let Some(bytes) = again {
                    let (to, tr) = (txn.target, txn.transport);
                    self.transmit(to, tr, bytes);
                }
            }
            return;
        }
        let in_dialog = m.to().is_ok_and(|to| to.tag().is_some());
        let too_many_dialogs =
            method == "INVITE" && !in_dialog && self.dialogs.len() >= self.config.max_dialogs;
        if self.transaction_count() >= self.config.max_transactions || too_many_dialogs {
            self.reply_overloaded(&m, target, transport);
            return;
        }

        if method == "CANCEL" {
            self.handle_cancel(now, key, request.clone(), remote, target, transport);
            return;
        }

        let mut dialog = None;
        let mut local_tag = None;
        let mut reject = None;
        if in_dialog {
            match dialog_key_of_request(&m).and_then(|k| self.dialog_keys.get(&k).copied()) {
                None => reject = Some(481),
                Some(id) => {
                    if let Some(d) = self.dialogs.get_mut(&id) {
                        let cseq = m.cseq().map(|c| c.seq).unwrap_or_default();
                        if d.accept_remote_cseq(&method, cseq) {
                            if method == "INVITE" || method == "UPDATE" {
                                d.refresh_target(&m);
                            }
                            dialog = Some(id);
                            local_tag = Some(d.local_tag().to_owned());
                        } else {
                            reject = Some(500);
                        }
                    }
                }
            }
        } else if method == "BYE" || method == "INFO" {
            // Requests that only exist inside a dialog (RFC 3261 §15, RFC 6086).
            reject = Some(481);
        }

        if let Some(status) = reject {
            // 481/500 keep no state: a retransmission is answered the same way again.
            let tag = local_tag.or_else(|| self.tagger.tag_for(&m));
            self.reply_stateless(&m, target, transport, status, tag);
            return;
        }
        // Out of dialog the tag derives from the request, so the TU may still answer
        // statelessly (`respond_stateless`) with the tag a retransmission would get.
        let local_tag = match local_tag.or_else(|| self.tagger.tag_for(&m)) {
            Some(tag) => tag,
            None => self.token(),
        };
        let reliable = transport.is_stream();
        let machine = if method == "INVITE" {
            ServerMachine::Invite(ServerInviteTransaction::new(
                now,
                self.config.timers,
                reliable,
                self.config.trying_delay,
            ))
        } else {
            ServerMachine::NonInvite(ServerNonInviteTransaction::new(
                now,
                self.config.timers,
                reliable,
            ))
        };
        let answer_by = now
            + if method == "INVITE" {
                self.config.unanswered_invite_timeout
            } else {
                self.config.timers.sixty_four_t1()
            };
        let id = ServerTxnId(self.next_id());
        self.server_keys.insert(key.clone(), id);
        self.server_txns.insert(
            id,
            ServerTxn {
                key,
                machine,
                request: request.clone(),
                source: remote,
                target,
                transport,
                local_tag,
                dialog,
                answer_by: Some(answer_by),
            },
        );

        if method == "INVITE" && self.config.trying_delay.is_none() {
            self.respond_status(now, id, 100);
        }
        let event = match (method.as_str(), dialog) {
            ("INVITE", None) => Event::NewInvite {
                txn: id,
                request,
                remote,
                transport,
            },
            ("INVITE", Some(dialog)) => Event::ReInvite {
                txn: id,
                dialog,
                request,
            },
            ("BYE", Some(dialog)) => Event::Bye {
                txn: id,
                dialog,
                request,
            },
            ("INFO", Some(dialog)) => Event::Info {
                txn: id,
                dialog,
                request,
            },
            ("OPTIONS", dialog) => Event::Options {
                txn: id,
                dialog,
                request,
                remote,
                transport,
            },
            (_, dialog) => Event::Request {
                txn: id,
                dialog,
                request,
                remote,
                transport,
            },
        };
        self.events.push_back(event);
        self.schedule(TimerKey::Server(id));
    }

    /// An ACK: for a failure response it belongs to the INVITE transaction; for
    /// a 2xx it is matched to the dialog (§13.3.1.4, §17.1.1.3).
    fn handle_ack(&mut self, now: Instant, key: TransactionKey, request: OwnedMessage) {
        if let Some(&id) = self.server_keys.get(&key) {
            let disposition = match self.server_txns.get_mut(&id).map(|t| &mut t.machine) {
                Some(ServerMachine::Invite(t)) => t.on_ack(now),
                _ => AckDisposition::Ignored,
            };
            self.after_server_change(id);
            if disposition != AckDisposition::PassToTu {
                return;
            }
        }
        let m = request.message();
        let Some(dialog_id) = dialog_key_of_request(&m).and_then(|k| self.dialog_keys.get(&k))
        else {
            // No transaction, no dialog: the ACK of a stateless reply (its To tag is the
            // one we derived from this very request), or a stray. Either way, nothing to do.
            let ours = m.to().ok().and_then(|to| to.tag()).is_some_and(|tag| {
                self.tagger
                    .tag_for(&m)
                    .is_some_and(|expected| expected == tag)
            });
            if ours {
                self.stats.absorbed_acks += 1;
            } else {
                self.stats.stray_acks += 1;
            }
            return;
        };
        let dialog_id = *dialog_id;
        let cseq = m.cseq().map(|c| c.seq).ok();
        let Some(dialog) = self.dialogs.get_mut(&dialog_id) else {
            return;
        };
        if dialog.answer.as_ref().map(|a| a.cseq) != cseq {
            return; // a retransmitted ACK, or one for an older INVITE
        }
        dialog.answer = None;
        self.unschedule(TimerKey::Answer(dialog_id));
        self.events.push_back(Event::Ack {
            dialog: dialog_id,
            request,
        });
    }

    fn handle_cancel(
        &mut self,
        now: Instant,
        key: TransactionKey,
        request: OwnedMessage,
        remote: SocketAddr,
        target: SocketAddr,
        transport: Transport,
    ) {
        let invite = self.server_keys.get(&key.with_method("INVITE")).copied();
        let invite_info = invite.and_then(|id| {
            let t = self.server_txns.get(&id)?;
            let unanswered = matches!(
                &t.machine,
                ServerMachine::Invite(m) if m.state() == ServerInviteState::Proceeding
            );
            Some((id, t.local_tag.clone(), unanswered))
        });
        let Some((invite, local_tag, unanswered)) = invite_info else {
            // Nothing to cancel: a stateless 481, so stray CANCELs cost no state.
            let m = request.message();
            let tag = self.tagger.tag_for(&m);
            self.reply_stateless(&m, target, transport, 481, tag);
            return;
        };
        let id = ServerTxnId(self.next_id());
        self.server_keys.insert(key.clone(), id);
        self.server_txns.insert(
            id,
            ServerTxn {
                key,
                machine: ServerMachine::NonInvite(ServerNonInviteTransaction::new(
                    now,
                    self.config.timers,
                    transport.is_stream(),
                )),
                request: request.clone(),
                source: remote,
                target,
                transport,
                // §9.2: the CANCEL's response carries the INVITE response's To tag.
                local_tag,
                dialog: None,
                answer_by: None,
            },
        );
        self.respond_status(now, id, 200);
        if unanswered {
            self.events.push_back(Event::Cancel { invite, request });
        }
    }
    fn reply_stateless_error(
        &mut self,
        m: &Message<'_>,
        remote: SocketAddr,
        transport: Transport,
        error: &SipError,
    ) {
        let Some(status) = error.response_status() else {
            return;
        };
        let target = m
            .via()
            .map_or(remote, |via| response_target(&via, remote, transport));
        let tag = self.stateless_tag(m);
        let mut b = m.response(status).to_tag(&tag);
        if let SipError::BadExtension { unsupported } = error {
            b = b.header("Unsupported", unsupported.join(", "));
        }
        if let Ok(bytes) = b.build() {
            self.transmit(target, transport, bytes);
            self.stats.replies += 1;
        }
    }

    fn reply_overloaded(&mut self, m: &Message<'_>, target: SocketAddr, transport: Transport) {
        let tag = self.stateless_tag(m);
        let response = m
            .response(503)
            .to_tag(&tag)
            .header("Retry-After", OVERLOAD_RETRY_AFTER_SECS)
            .header("Reason", "SIP;cause=503;text=\"transaction limit reached\"")
            .build();
        if let Ok(bytes) = response {
            self.transmit(target, transport, bytes);
            self.stats.replies += 1;
        }
    }

    /// The To tag for a stateless reply to `m`: derived from the request when it names a
    /// Call-ID, From and Via (so its ACK is recognised), else a fresh token.
    fn stateless_tag(&mut self, m: &Message<'_>) -> String {
        match self.tagger.tag_for(m) {
            Some(tag) => tag,
            None => self.token(),
        }
    }

    /// A bare final response with no transaction (`tag`: the To tag, else derived).
    fn reply_stateless(
        &mut self,
        m: &Message<'_>,
        target: SocketAddr,
        transport: Transport,
        status: u16,
        tag: Option<String>,
    ) {
        let tag = match tag {
            Some(tag) => tag,
            None => self.stateless_tag(m),
        };
        if let Ok(bytes) = m.response(status).to_tag(&tag).build() {
            self.transmit(target, transport, bytes);
            self.stats.replies += 1;
        }
    }
}
