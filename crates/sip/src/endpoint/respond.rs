//! The TU answers a server transaction: [`Endpoint::respond`] (statefully, creating the
//! dialog on a 2xx to an INVITE) or [`Endpoint::respond_stateless`] (and forget it).

use std::time::Instant;

use crate::builder::MessageBuilder;
use crate::dialog::{AnswerRetransmission, Dialog};
use crate::error::SipError;
use crate::message::OwnedMessage;

use super::{no_such_transaction, Endpoint, ServerTxnId, TimerKey};

impl Endpoint {
    /// The request of a live server transaction (with its top Via stamped).
    pub fn request(&self, txn: ServerTxnId) -> Option<&OwnedMessage> {
        self.server_txns.get(&txn).map(|t| &t.request)
    }

    /// A response to `txn`'s request per RFC 3261 §8.2.6 (Via, From, To with our
    /// tag, Call-ID, CSeq copied) to complete with headers/body and pass to
    /// [`Endpoint::respond`]. `None` when the transaction is gone.
    pub fn response(&self, txn: ServerTxnId, status: u16) -> Option<MessageBuilder> {
        let t = self.server_txns.get(&txn)?;
        Some(t.request.message().response(status).to_tag(&t.local_tag))
    }

    /// Sends a response in `txn`. Call it for every answer to an event's request
    /// (1xx, then exactly one final). A 2xx to an INVITE creates the dialog (or
    /// refreshes it for a re-INVITE) and is retransmitted until its ACK; a final
    /// response to a BYE ends the dialog.
    ///
    /// Errors: the builder's [`SipError::Build`], or `Build` when the
    /// transaction is gone or already answered finally.
    pub fn respond(
        &mut self,
        now: Instant,
        txn: ServerTxnId,
        response: MessageBuilder,
    ) -> Result<(), SipError> {
        let t = self.server_txns.get(&txn).ok_or_else(no_such_transaction)?;
        let response = response.to_tag(&t.local_tag).build_message()?;
        let status = response.message().status().unwrap_or_default();
        let invite_2xx = t.is_invite() && (200..300).contains(&status);
        let new_dialog = if invite_2xx && t.dialog.is_none() {
            Some(Dialog::uas(
                &t.request.message(),
                &response.message(),
                t.source,
                t.transport,
            )?)
        } else {
            None
        };
        let t = self
            .server_txns
            .get_mut(&txn)
            .ok_or_else(no_such_transaction)?;
        let Some(bytes) = t.send_response(now, status, response.bytes()) else {
            return Err(SipError::Build {
                reason: "the transaction already sent its final response",
            });
        };
        let (target, transport, reliable) = (t.target, t.transport, t.transport.is_stream());
        let cseq = t
            .request
            .message()
            .cseq()
            .map(|c| c.seq)
            .unwrap_or_default();
        let is_bye = t.method() == "BYE";
        let mut dialog = t.dialog;
        self.transmit(target, transport, bytes.clone());
        if let Some(d) = new_dialog {
            let id = self.insert_dialog(d);
            dialog = Some(id);
            if let Some(t) = self.server_txns.get_mut(&txn) {
                t.dialog = Some(id);
            }
        }
        if invite_2xx {
            if let Some(d) = dialog.and_then(|id| self.dialogs.get_mut(&id)) {
                d.answer = Some(AnswerRetransmission::start(
                    now,
                    &self.config.timers,
                    reliable,
                    cseq,
                    bytes,
                    target,
                ));
            }
            if let Some(id) = dialog {
                self.schedule(TimerKey::Answer(id));
            }
        }
        if is_bye && status >= 200 {
            if let Some(id) = dialog {
                self.remove_dialog(id);
            }
        }
        self.after_server_change(txn);
        Ok(())
    }

    /// Answers `txn`'s request with a final non-2xx response (any final one for a non-INVITE)
    /// and forgets the transaction at once, as a stateless proxy's `sl_send_reply` does.
    ///
    /// Call it for refusals decided before a call is taken on (403, 404, 480, 503, ...), in
    /// the same turn as the event that carried the request: nothing is kept, so a flood of
    /// rejected requests costs no memory and no timers. A retransmission of the request comes
    /// back as a new event and, answered the same way, gets the identical response (the To
    /// tag is derived from the request); the ACK for it is absorbed (see [`Endpoint::stats`]).
    ///
    /// Errors: `Build` when the transaction is gone, already answered finally, the status is
    /// provisional, or it is a 2xx to an INVITE (that needs a dialog: use `respond`).
    pub fn respond_stateless(
        &mut self,
        txn: ServerTxnId,
        response: MessageBuilder,
    ) -> Result<(), SipError> {
        let t = self.server_txns.get(&txn).ok_or_else(no_such_transaction)?;
        let response = response.to_tag(&t.local_tag).build_message()?;
        let status = response.message().status().unwrap_or_default();
        if status < 200 || (t.is_invite() && status < 300) {
            return Err(SipError::Build {
                reason: "a stateless answer must be final, and not a 2xx to an INVITE",
            });
        }
        if t.answer_by.is_none() {
            return Err(SipError::Build {
                reason: "the transaction already sent its final response",
            });
        }
        let (target, transport) = (t.target, t.transport);
        self.transmit(target, transport, response.bytes());
        self.stats.replies += 1;
        self.remove_server(txn);
        Ok(())
    }

    /// [`Endpoint::respond`] with a bare response (no extra headers or body).
    pub(super) fn respond_status(&mut self, now: Instant, txn: ServerTxnId, status: u16) {
        if let Some(b) = self.response(txn, status) {
            // Cannot fail: the builder only copies the validated request.
            let _ = self.respond(now, txn, b);
        }
    }
}
