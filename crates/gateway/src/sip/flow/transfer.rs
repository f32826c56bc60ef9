//! Blind transfer of an answered call on the agent's request (RFC 3515 REFER, RFC 5589 §6).
//!
//! ```text
//! agent ─REST <Dial>─▶ flow.transfer() ─REFER (Refer-To, Referred-By)─▶ carrier
//!                                       ◀─202 Accepted (or 405/603: failed)──
//!                                       ◀─NOTIFY sipfrag "SIP/2.0 100 Trying"── → ringing
//!                                       ◀─NOTIFY sipfrag "SIP/2.0 200 OK"────── → completed: BYE
//! ```
//!
//! [`TransferPolicy`] is the decision part: a sans-IO machine fed the REFER's outcome, each
//! NOTIFY's sipfrag status and the time, answering with the progress to report. The rest of
//! this file moves SIP in and out of it: the REFER goes out as a non-INVITE client transaction
//! of the [`Endpoint`](switchboard_sip::Endpoint) (retransmitted by it until answered or Timer
//! F), NOTIFYs arrive in the call's dialog and are answered 200 (400 when malformed, with the
//! transfer untouched; a retransmitted NOTIFY is absorbed by its server transaction). Each
//! progress goes to the call's task (the agent's `transfer` event), to the event streams
//! (`call.transfer`) and to the log; `completed` ends the call with BYE (reason `transferred`),
//! `failed` leaves the caller with the agent.

use std::time::{Duration, Instant};

use switchboard_media::TransferStatus;
use switchboard_routing::model::TransferMode;
use switchboard_sip::{ClientTxnId, HeaderName, Message, NameAddr, OwnedMessage, ServerTxnId};

use super::super::refusal::{Hangup, Refusal, SERVER};
use super::{CallEvent, CallFlow, CallState, Ending, MediaPorts, Now, Output};
use crate::events::EventKind;
use crate::live_calls::{TransferRefused, TransferTarget};

/// `sip_status` reported when the carrier never gave a final answer in time (408 Request
/// Timeout, as a transaction timeout is reported).
const TIMED_OUT: u16 = 408;
/// `sip_status` reported when the carrier ended the subscription without a final sipfrag.
const ABANDONED: u16 = 487;
/// Longest NOTIFY body read for its status line; a sipfrag is a status line and a few headers.
const MAX_SIPFRAG_BYTES: usize = 4096;

/// A transfer's progress report: what the agent, events and log are told.
pub(super) type Progress = (TransferStatus, u16);

/// The decisions of one transfer, on its own clock. Feed it what the carrier said; it answers
/// with the progress to report (`None`: nothing new). Once it reports `completed` or `failed`
/// it is done and ignores everything else.
#[derive(Debug, Clone)]
pub(super) struct TransferPolicy {
    /// No final answer by then: failed (408).
    deadline: Instant,
    /// The last progress reported, so a repeated 1xx is not reported twice.
    reported: Option<Progress>,
    done: bool,
}

impl TransferPolicy {
    /// A transfer whose REFER goes out at `now`.
    pub(super) fn new(now: Instant, timeout: Duration) -> Self {
        TransferPolicy {
            deadline: now + timeout,
            reported: None,
            done: false,
        }
    }

    /// When [`TransferPolicy::on_timeout`] must run; `None` once done.
    pub(super) fn deadline(&self) -> Option<Instant> {
        (!self.done).then_some(self.deadline)
    }

    /// The REFER's final response: 2xx means NOTIFYs will follow; anything else is a refusal.
    pub(super) fn on_refer_response(&mut self, status: u16) -> Option<Progress> {
        match status {
            0..=299 => None,
            _ => self.report(TransferStatus::Failed, status),
        }
    }

    /// The REFER got no final response (Timer F).
    pub(super) fn on_refer_timeout(&mut self) -> Option<Progress> {
        self.report(TransferStatus::Failed, TIMED_OUT)
    }

    /// A NOTIFY whose sipfrag says `status`; `terminated` when its Subscription-State ends the
    /// implicit subscription. A NOTIFY may overtake the REFER's 202: it counts all the same.
    pub(super) fn on_notify(&mut self, status: u16, terminated: bool) -> Option<Progress> {
        match status {
            100..=199 if terminated => self.report(TransferStatus::Failed, ABANDONED),
            100..=199 => self.report(TransferStatus::Ringing, status),
            200..=299 => self.report(TransferStatus::Completed, status),
            _ => self.report(TransferStatus::Failed, status),
        }
    }

    /// Call when `now` reaches [`TransferPolicy::deadline`].
    pub(super) fn on_timeout(&mut self, now: Instant) -> Option<Progress> {
        if now < self.deadline {
            return None;
        }
        self.report(TransferStatus::Failed, TIMED_OUT)
    }

    fn report(&mut self, status: TransferStatus, sip_status: u16) -> Option<Progress> {
        if self.done || self.reported == Some((status, sip_status)) {
            return None;
        }
        self.done = status != TransferStatus::Ringing;
        self.reported = Some((status, sip_status));
        self.reported
    }
}

/// A transfer in progress: its policy and its REFER transaction while that is open.
#[derive(Debug)]
pub(super) struct Transfer {
    policy: TransferPolicy,
    refer: Option<ClientTxnId>,
}

/// What a NOTIFY for our REFER says, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Notify {
    status: u16,
    terminated: bool,
}

impl<P: MediaPorts> CallFlow<P> {
    /// The agent asks to transfer `call_id`'s caller to `target`: sends the REFER, or says
    /// why not. Progress then comes as [`CallEvent::Transfer`] and `call.transfer` events.
    pub fn transfer(
        &mut self,
        now: Now,
        call_id: &str,
        target: &TransferTarget,
    ) -> Result<(), TransferRefused> {
        let result = self.start_transfer(now, call_id, target);
        self.drive(now);
        result
    }

    fn start_transfer(
        &mut self,
        now: Now,
        call_id: &str,
        target: &TransferTarget,
    ) -> Result<(), TransferRefused> {
        let call = self.calls.get(call_id).ok_or(TransferRefused::Ended)?;
        if call.transfer_mode == TransferMode::Disabled {
            return Err(TransferRefused::Disabled);
        }
        if self.transfers.contains_key(call_id) {
            return Err(TransferRefused::InProgress);
        }
        let dialog = match (call.state, call.dialog, &call.bye_pending) {
            (CallState::Confirmed, Some(dialog), None) => dialog,
            _ => return Err(TransferRefused::NotInProgress),
        };
        let refer_to = match target {
            // The carrier routes the number: a sip: URI on its side of the call, as a
            // carrier expects a number it should dial (RFC 3261 §19.1.6 user=phone).
            TransferTarget::Number(number) => {
                format!("<sip:{number}@{};user=phone>", call.carrier_host)
            }
            TransferTarget::Uri(uri) => format!("<{uri}>"),
        };
        let contact = self.contact(call.transport, call.secure);
        let call_sid = call.call_sid.clone();
        let not_sent = |why: &str| TransferRefused::NotSent(why.to_owned());
        let (hop, transport, referred_by) = self
            .endpoint
            .dialog(dialog)
            .map(|d| (d.next_hop(), d.transport(), referred_by(d.local_party())))
            .ok_or_else(|| not_sent("the dialog is gone"))?;
        let refer = self
            .endpoint
            .dialog_request(dialog, "REFER")
            .ok_or_else(|| not_sent("the dialog is gone"))?
            .header("Refer-To", &refer_to)
            .header("Referred-By", referred_by)
            .header("Contact", contact)
            .header("User-Agent", SERVER)
            .build()
            .map_err(|e| TransferRefused::NotSent(e.to_string()))?;
        let txn = self
            .endpoint
            .send_request(now.instant, hop, transport, refer)
            .map_err(|e| TransferRefused::NotSent(e.to_string()))?;
        tracing::info!(%call_sid, sip_call_id = call_id, %refer_to, "transfer: REFER sent");
        self.refers.insert(txn, call_id.to_owned());
        self.transfers.insert(
            call_id.to_owned(),
            Transfer {
                policy: TransferPolicy::new(now.instant, self.config.transfer_timeout),
                refer: Some(txn),
            },
        );
        Ok(())
    }

    /// A response to a request we sent: the REFER's is the transfer's; BYEs' need nothing.
    pub(super) fn on_client_response(
        &mut self,
        now: Now,
        txn: ClientTxnId,
        response: &OwnedMessage,
    ) {
        let Some(status) = response.message().status() else {
            return;
        };
        if status < 200 {
            return;
        }
        let Some(call_id) = self.refers.remove(&txn) else {
            return;
        };
        let progress = self.transfers.get_mut(&call_id).and_then(|t| {
            t.refer = None;
            t.policy.on_refer_response(status)
        });
        self.on_progress(now, &call_id, progress);
    }

    /// A client transaction gave up: when it was a REFER, the transfer failed.
    pub(super) fn on_client_timeout(&mut self, now: Now, txn: ClientTxnId) {
        let Some(call_id) = self.refers.remove(&txn) else {
            return;
        };
        let progress = self.transfers.get_mut(&call_id).and_then(|t| {
            t.refer = None;
            t.policy.on_refer_timeout()
        });
        self.on_progress(now, &call_id, progress);
    }

    /// NOTIFY in a call's dialog: the carrier's word on our REFER (RFC 3515 §2.4.4).
    pub(super) fn on_notify(&mut self, now: Now, txn: ServerTxnId, request: &OwnedMessage) {
        let msg = request.message();
        let call_id = msg.call_id().unwrap_or("").to_owned();
        if !self.transfers.contains_key(&call_id) {
            // No REFER of ours is waiting in this dialog: no such subscription.
            self.reply(now, txn, &Refusal::no_such_dialog());
            return;
        }
        let notify = match read_notify(&msg) {
            Ok(notify) => notify,
            Err(why) => {
                tracing::debug!(sip_call_id = %call_id, why, "malformed NOTIFY for a transfer");
                self.reply(now, txn, &Refusal::protocol(400, why));
                return;
            }
        };
        self.reply(now, txn, &Refusal::status(200));
        let progress = self
            .transfers
            .get_mut(&call_id)
            .and_then(|t| t.policy.on_notify(notify.status, notify.terminated));
        self.on_progress(now, &call_id, progress);
    }

    /// The earliest transfer deadline (for [`CallFlow::poll_timeout`]).
    pub(super) fn transfer_deadline(&self) -> Option<Instant> {
        self.transfers
            .values()
            .filter_map(|t| t.policy.deadline())
            .min()
    }

    /// Fails the transfers whose deadline passed (from [`CallFlow::handle_timeout`]).
    pub(super) fn check_transfer_deadlines(&mut self, now: Now) {
        if self.transfer_deadline().is_none_or(|at| now.instant < at) {
            return;
        }
        let due: Vec<(String, Progress)> = self
            .transfers
            .iter_mut()
            .filter_map(|(call_id, t)| Some((call_id.clone(), t.policy.on_timeout(now.instant)?)))
            .collect();
        for (call_id, progress) in due {
            self.on_progress(now, &call_id, Some(progress));
        }
    }

    /// Forgets `call_id`'s transfer (the call is over).
    pub(super) fn drop_transfer(&mut self, call_id: &str) {
        if let Some(transfer) = self.transfers.remove(call_id) {
            if let Some(txn) = transfer.refer {
                self.refers.remove(&txn);
            }
        }
    }

    /// Reports a transfer's progress; a final one ends the transfer, and a completed one the
    /// call (the transferor hangs up once the target answered, RFC 5589 §6).
    fn on_progress(&mut self, now: Now, call_id: &str, progress: Option<Progress>) {
        let Some((status, sip_status)) = progress else {
            return;
        };
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        tracing::info!(
            call_sid = %call.call_sid,
            sip_call_id = call_id,
            status = status.as_str(),
            sip_status,
            "transfer"
        );
        let mut event = (*call.record).clone();
        event.kind = EventKind::CallTransfer;
        event.at = now.wall;
        event.status = Some(status.as_str().to_owned());
        event.sip_status = Some(sip_status);
        self.emit(event);
        self.outputs.push_back(Output::ToCall {
            call_id: call_id.to_owned(),
            event: CallEvent::Transfer { status, sip_status },
        });
        if status == TransferStatus::Ringing {
            return;
        }
        self.drop_transfer(call_id);
        if status == TransferStatus::Completed {
            self.send_bye(now, call_id, &Hangup::Transferred);
            self.finish(now, call_id, Ending::ours(&Hangup::Transferred, 200));
        }
    }
}

/// `Referred-By`: our URI in the dialog, without its tag (RFC 3892 §3).
fn referred_by(local_party: &str) -> String {
    match NameAddr::parse(local_party) {
        Ok(addr) => format!("<{}>", addr.uri_text),
        Err(_) => local_party.to_owned(),
    }
}

/// Validates a NOTIFY for a REFER: `Event: refer`, a `Subscription-State`, and a
/// `message/sipfrag` body starting with a status line.
fn read_notify(msg: &Message<'_>) -> Result<Notify, &'static str> {
    let header = |name: &str| msg.header_by_name(name).and_then(|h| h.value_str());
    let event = msg
        .header(HeaderName::Event)
        .and_then(|h| h.value_str())
        .ok_or("NOTIFY without Event")?;
    let package = event.split(';').next().unwrap_or("").trim();
    if !package.eq_ignore_ascii_case("refer") {
        return Err("NOTIFY for an event package other than refer");
    }
    let state = header("Subscription-State").ok_or("NOTIFY without Subscription-State")?;
    let terminated = state
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("terminated");
    let is_sipfrag = msg
        .content_type()
        .ok()
        .flatten()
        .is_some_and(|ct| ct.is("message", "sipfrag"));
    if !is_sipfrag {
        return Err("NOTIFY body is not message/sipfrag");
    }
    let body = msg.body();
    let body = &body[..body.len().min(MAX_SIPFRAG_BYTES)];
    let line = body
        .split(|&b| b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or("sipfrag is not text")?;
    let mut parts = line.trim_end_matches('\r').splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some("SIP/2.0"), Some(code)) if code.len() == 3 => code.parse::<u16>().ok(),
        _ => None,
    };
    match status {
        Some(status @ 100..=699) => Ok(Notify { status, terminated }),
        _ => Err("sipfrag does not start with a SIP status line"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn notifies_map_to_ringing_then_completed_and_repeats_are_not_reported() {
        let start = Instant::now();
        let mut policy = TransferPolicy::new(start, TIMEOUT);
        assert_eq!(policy.on_refer_response(202), None);
        assert_eq!(
            policy.on_notify(100, false),
            Some((TransferStatus::Ringing, 100))
        );
        assert_eq!(policy.on_notify(100, false), None, "same progress");
        assert_eq!(
            policy.on_notify(180, false),
            Some((TransferStatus::Ringing, 180))
        );
        assert_eq!(
            policy.on_notify(200, true),
            Some((TransferStatus::Completed, 200))
        );
        assert_eq!(policy.deadline(), None, "done");
        assert_eq!(policy.on_notify(503, true), None, "done is final");
        assert_eq!(policy.on_timeout(start + TIMEOUT), None);
    }

    #[test]
    fn refusals_failures_and_silence_fail_with_the_carriers_status() {
        let start = Instant::now();
        let mut refused = TransferPolicy::new(start, TIMEOUT);
        assert_eq!(
            refused.on_refer_response(603),
            Some((TransferStatus::Failed, 603))
        );
        let mut busy = TransferPolicy::new(start, TIMEOUT);
        assert_eq!(
            busy.on_notify(100, false).map(|p| p.0),
            Some(TransferStatus::Ringing)
        );
        assert_eq!(
            busy.on_notify(486, true),
            Some((TransferStatus::Failed, 486))
        );
        let mut abandoned = TransferPolicy::new(start, TIMEOUT);
        assert_eq!(
            abandoned.on_notify(180, true),
            Some((TransferStatus::Failed, 487))
        );
        let mut lost = TransferPolicy::new(start, TIMEOUT);
        assert_eq!(lost.on_refer_timeout(), Some((TransferStatus::Failed, 408)));
        let mut silent = TransferPolicy::new(start, TIMEOUT);
        assert_eq!(silent.on_refer_response(202), None);
        assert_eq!(silent.deadline(), Some(start + TIMEOUT));
        assert_eq!(silent.on_timeout(start + TIMEOUT / 2), None);
        assert_eq!(
            silent.on_timeout(start + TIMEOUT),
            Some((TransferStatus::Failed, 408))
        );
    }

    fn notify(headers: &str, body: &str) -> OwnedMessage {
        let text = format!(
            "NOTIFY sip:switchboard@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
             From: <sip:c@192.0.2.1>;tag=a\r\nTo: <sip:s@192.0.2.9>;tag=b\r\nCall-ID: x\r\n\
             CSeq: 2 NOTIFY\r\nMax-Forwards: 70\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        OwnedMessage::parse(bytes::Bytes::from(text)).unwrap()
    }

    #[test]
    fn notify_bodies_are_read_strictly() {
        let good = "Event: refer;id=2\r\nSubscription-State: terminated;reason=noresource\r\nContent-Type: message/sipfrag;version=2.0\r\n";
        assert_eq!(
            read_notify(&notify(good, "SIP/2.0 200 OK\r\n").message()),
            Ok(Notify {
                status: 200,
                terminated: true
            })
        );
        let active = "Event: refer\r\nSubscription-State: active;expires=60\r\nContent-Type: message/sipfrag\r\n";
        assert_eq!(
            read_notify(&notify(active, "SIP/2.0 100 Trying").message()),
            Ok(Notify {
                status: 100,
                terminated: false
            })
        );
        for (headers, body) in [
            (active, "SIP/2.0 2000 OK\r\n"),
            (active, "HTTP/1.1 200 OK\r\n"),
            (active, "SIP/2.0 099 Early\r\n"),
            (active, ""),
            (active, "\u{7f}\u{7f}"),
            (
                "Event: presence\r\nSubscription-State: active\r\nContent-Type: message/sipfrag\r\n",
                "SIP/2.0 200 OK",
            ),
            (
                "Event: refer\r\nContent-Type: message/sipfrag\r\n",
                "SIP/2.0 200 OK",
            ),
            (
                "Event: refer\r\nSubscription-State: active\r\nContent-Type: text/plain\r\n",
                "SIP/2.0 200 OK",
            ),
            (
                "Subscription-State: active\r\nContent-Type: message/sipfrag\r\n",
                "SIP/2.0 200 OK",
            ),
        ] {
            assert!(
                read_notify(&notify(headers, body).message()).is_err(),
                "{headers:?} {body:?}"
            );
        }
    }
}
