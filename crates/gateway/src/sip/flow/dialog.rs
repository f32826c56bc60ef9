//! An accepted call's life after the ring: 200 when the agent is up, ACK (our offer's
//! answer in a late-offer call), re-INVITE/UPDATE, and the ways it ends (CANCEL, BYE either
//! way, ACK timeout, our hang-up).

use switchboard_sip::{DialogId, OwnedMessage, ServerTxnId};

use super::super::refusal::{Hangup, Refusal, ALLOW, SERVER, SUPPORTED};
use super::super::screen;
use super::{CallEvent, CallFlow, CallState, Ending, MediaPorts, Now, Output};
use crate::events::EventKind;

impl<P: MediaPorts> CallFlow<P> {
    /// The agent is connected: 200 OK with our SDP.
    pub(super) fn answer(&mut self, now: Now, call_id: &str) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.state != CallState::Ringing {
            return;
        }
        let (txn, sdp, transport, secure) = (
            call.invite_txn,
            call.local_sdp.clone(),
            call.transport,
            call.secure,
        );
        let Some(ok) = self.endpoint.response(txn, 200) else {
            return;
        };
        let ok = ok
            .header("Server", SERVER)
            .header("Contact", self.contact(transport, secure))
            .header("Allow", ALLOW)
            .header("Supported", SUPPORTED.join(", "))
            .body("application/sdp", sdp.as_bytes());
        match self.endpoint.respond(now.instant, txn, ok) {
            Ok(()) => {
                self.metrics.response(200);
                self.metrics.calls_answered.inc();
                if let Some(call) = self.calls.get_mut(call_id) {
                    call.state = CallState::Answered;
                    call.summary.answered_at = Some(now.instant);
                    let took = now.instant.saturating_duration_since(call.summary.rang_at);
                    self.metrics.call.setup("answer", took);
                    call.record.answered_at = Some(now.wall);
                    let mut answered = (*call.record).clone();
                    answered.kind = EventKind::CallAnswered;
                    answered.at = now.wall;
                    self.emit(answered);
                }
            }
            Err(e) => tracing::debug!(error = %e, %call_id, "200 not sent"),
        }
    }

    pub(super) fn on_ack(&mut self, now: Now, dialog: DialogId, ack: &OwnedMessage) {
        let msg = ack.message();
        let Ok(call_id) = msg.call_id().map(str::to_owned) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.dialog = Some(dialog);
        if let Some(hangup) = call.bye_pending.take() {
            // We wanted to hang up while the 200 was unacknowledged (RFC 3261 §15).
            self.send_bye(now, &call_id, &hangup);
            self.finish(now, &call_id, Ending::ours(&hangup, 200));
            return;
        }
        if call.awaiting_answer {
            let answer = screen::sdp_body(&msg).map(|b| String::from_utf8_lossy(b).into_owned());
            match answer.as_deref().map(|a| call.sdp.accept_answer(a)) {
                Some(Ok(media)) => {
                    call.negotiated = Some(media);
                    call.awaiting_answer = false;
                }
                Some(Err(e)) => {
                    let hangup = Hangup::BadAnswer(e.to_string());
                    self.send_bye(now, &call_id, &hangup);
                    self.finish(now, &call_id, Ending::ours(&hangup, 200));
                    return;
                }
                None if call.state == CallState::Answered => {
                    let why = "the ACK carried no SDP answer to our offer".to_owned();
                    let hangup = Hangup::BadAnswer(why);
                    self.send_bye(now, &call_id, &hangup);
                    self.finish(now, &call_id, Ending::ours(&hangup, 200));
                    return;
                }
                None => {}
            }
        }
        let Some(media) = call.negotiated.clone() else {
            return;
        };
        let event = match call.state {
            CallState::Answered => {
                call.state = CallState::Confirmed;
                CallEvent::Confirmed(media)
            }
            _ => CallEvent::MediaUpdate(media),
        };
        self.outputs.push_back(Output::ToCall { call_id, event });
    }

    /// re-INVITE or UPDATE: answer an offer with our SDP (hold, resume, refresh), or make an
    /// offer when a re-INVITE brings none (the ACK then answers it).
    pub(super) fn renegotiate(
        &mut self,
        now: Now,
        txn: ServerTxnId,
        request: &OwnedMessage,
        dialog: DialogId,
        method: &str,
    ) {
        let msg = request.message();
        let call_id = msg.call_id().unwrap_or("").to_owned();
        let Some((transport, secure)) = self.calls.get(&call_id).map(|c| (c.transport, c.secure))
        else {
            self.reply(now, txn, &Refusal::no_such_dialog());
            return;
        };
        let contact = self.contact(transport, secure);
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.dialog = Some(dialog);
        if method == "INVITE" && call.state == CallState::Answered {
            // Our 200 is not acknowledged yet (RFC 3261 §14.2).
            self.reply(now, txn, &Refusal::request_pending());
            return;
        }
        let offer = screen::sdp_body(&msg).map(|b| String::from_utf8_lossy(b).into_owned());
        let outcome = match offer {
            Some(offer) => call
                .sdp
                .answer(&offer)
                .map(|(a, m)| Some((a.into_string(), Some(m)))),
            None if method == "INVITE" => {
                call.awaiting_answer = true;
                Ok(Some((call.sdp.offer().into_string(), None)))
            }
            // UPDATE without SDP: a session refresh.
            None => Ok(None),
        };
        let (body, media) = match outcome {
            Ok(Some(pair)) => pair,
            Ok(None) => {
                self.reply(now, txn, &Refusal::status(200));
                return;
            }
            Err(e) => {
                // The call keeps its previous media (RFC 3261 §14.2).
                self.reply(now, txn, &Refusal::media(&e));
                return;
            }
        };
        if let Some(media) = media {
            call.negotiated = Some(media.clone());
            self.outputs.push_back(Output::ToCall {
                call_id: call_id.clone(),
                event: CallEvent::MediaUpdate(media),
            });
        }
        let Some(ok) = self.endpoint.response(txn, 200) else {
            return;
        };
        let ok = ok
            .header("Server", SERVER)
            .header("Contact", contact)
            .header("Allow", ALLOW)
            .body("application/sdp", body.as_bytes());
        match self.endpoint.respond(now.instant, txn, ok) {
            Ok(()) => self.metrics.response(200),
            Err(e) => tracing::debug!(error = %e, %call_id, "re-INVITE answer not sent"),
        }
    }

    /// Ends a call from our side (see [`CallFlow::hang_up`]).
    pub(super) fn end_call(&mut self, now: Now, call_id: &str, hangup: Hangup) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let sip_status = match (call.state, call.dialog) {
            (CallState::Ringing, _) => {
                let refusal = Refusal::ended_while_ringing(&hangup);
                self.refuse_ringing(now, call_id, &refusal);
                refusal.status
            }
            (_, None) => {
                call.bye_pending = Some(hangup);
                return;
            }
            (_, Some(_)) => {
                self.send_bye(now, call_id, &hangup);
                200
            }
        };
        self.finish(now, call_id, Ending::ours(&hangup, sip_status));
    }

    /// Answers the still-ringing INVITE of `call_id` with a final non-2xx response, in its
    /// transaction (retransmitted until the ACK).
    pub(super) fn refuse_ringing(&mut self, now: Now, call_id: &str, refusal: &Refusal) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.state != CallState::Ringing {
            return;
        }
        let txn = call.invite_txn;
        self.reply(now, txn, refusal);
    }

    /// Sends BYE with `hangup`'s Reason in the call's dialog and forgets the dialog.
    pub(super) fn send_bye(&mut self, now: Now, call_id: &str, hangup: &Hangup) {
        let Some(dialog) = self.calls.get(call_id).and_then(|c| c.dialog) else {
            return;
        };
        let Some(builder) = self.endpoint.dialog_request(dialog, "BYE") else {
            return;
        };
        let Some((hop, transport)) = self
            .endpoint
            .dialog(dialog)
            .map(|d| (d.next_hop(), d.transport()))
        else {
            return;
        };
        let built = builder
            .header("Reason", hangup.reason().to_string())
            .header("User-Agent", SERVER)
            .build();
        self.endpoint.remove_dialog(dialog);
        match built.map(|bye| self.endpoint.send_request(now.instant, hop, transport, bye)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) | Err(e) => tracing::warn!(%call_id, error = %e, "cannot send BYE"),
        }
    }
}
