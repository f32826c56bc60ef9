//! INVITE server transaction: RFC 3261 §17.2.1 as updated by RFC 6026 §7.1
//! (the "Accepted" state replaces the RFC 3261 shortcut of terminating on 2xx).
//!
//! ```text
//!                  INVITE received (owner sends 100 Trying at once, or after a delay)
//!                         |
//!                   Proceeding --1xx from TU--> (stays; retransmits of the INVITE
//!                   |        |                     get the last 1xx again)
//!        2xx from TU|        |300-699 from TU
//!                   v        v
//!              Accepted    Completed --Timer G--> resend final (unreliable only)
//!      (Timer L; ACKs|        |  \--Timer H--> TimedOut (no ACK ever came)
//!     go to the TU;  |     ACK|
//!      2xx resends   |        v
//!      from the TU)  |    Confirmed --Timer I--> Terminated
//!                    +--Timer L--> Terminated
//! ```

use std::time::Instant;

use bytes::Bytes;

use super::{due, earliest, Backoff, TimerAction, TimerConfig};

/// State of an [`ServerInviteTransaction`] (RFC 3261 Figure 7 + RFC 6026 Figure 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    /// Waiting for the transaction user's final answer.
    Proceeding,
    /// A 2xx was sent; the TU retransmits it until the ACK (RFC 6026).
    Accepted,
    /// A 300–699 was sent; retransmitted until the ACK arrives.
    Completed,
    /// The ACK for the failure response arrived; absorbing stray ACKs.
    Confirmed,
    /// Finished; the owner may drop the transaction.
    Terminated,
}

/// What the owner should do with an ACK that matched this transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckDisposition {
    /// The ACK for our failure response: consumed by the transaction.
    Absorbed,
    /// An ACK while in "Accepted" (the ACK for a 2xx, RFC 6026 §7.1): hand it to
    /// the transaction user / dialog layer.
    PassToTu,
    /// No response has been sent yet (or the transaction is over): drop it.
    Ignored,
}

/// One INVITE server transaction. Create it when a new INVITE arrives; see the
/// module docs for the state diagram.
#[derive(Debug, Clone)]
pub struct ServerInviteTransaction {
    state: ServerInviteState,
    config: TimerConfig,
    reliable: bool,
    last_response: Option<Bytes>,
    last_status: Option<u16>,
    /// Deadline for the automatic `100 Trying` (when the owner delays it).
    trying_at: Option<Instant>,
    timer_g: Option<Backoff>,
    timer_h: Option<Instant>,
    timer_i: Option<Instant>,
    timer_l: Option<Instant>,
}

impl ServerInviteTransaction {
    /// Creates the transaction for an INVITE received at `now`.
    ///
    /// `trying_delay`: `None` when the owner sends `100 Trying` itself right away;
    /// `Some(d)` to have [`on_timeout`](Self::on_timeout) ask for one
    /// ([`TimerAction::SendTrying`]) if the TU has not responded within `d`
    /// (RFC 3261 §17.2.1 suggests 200 ms).
    pub fn new(
        now: Instant,
        config: TimerConfig,
        reliable: bool,
        trying_delay: Option<std::time::Duration>,
    ) -> Self {
        ServerInviteTransaction {
            state: ServerInviteState::Proceeding,
            config,
            reliable,
            last_response: None,
            last_status: None,
            trying_at: trying_delay.map(|d| now + d),
            timer_g: None,
            timer_h: None,
            timer_i: None,
            timer_l: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> ServerInviteState {
        self.state
    }

    /// `true` once the owner may forget this transaction.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerInviteState::Terminated
    }

    /// Status code of the last response sent, if any.
    pub fn last_status(&self) -> Option<u16> {
        self.last_status
    }

    /// `true` once a final (>= 200) response has been sent.
    pub fn has_final_response(&self) -> bool {
        self.last_status.is_some_and(|s| s >= 200)
    }

    /// The transaction user sends a response (`bytes` is the encoded message).
    ///
    /// Returns the bytes to transmit, or `None` when the response is not allowed
    /// in the current state (e.g. a second final response, or a 1xx after the
    /// final one); the owner must then not send anything. In "Accepted" further
    /// 2xx responses are passed through: that is how the TU retransmits its 2xx
    /// (RFC 6026 §7.1).
    pub fn send_response(&mut self, now: Instant, status: u16, bytes: Bytes) -> Option<Bytes> {
        match (self.state, status) {
            (ServerInviteState::Proceeding, 100..=199) => {
                self.trying_at = None;
            }
            (ServerInviteState::Proceeding, 200..=299) => {
                self.trying_at = None;
                self.state = ServerInviteState::Accepted;
                self.timer_l = Some(now + self.config.sixty_four_t1());
            }
            (ServerInviteState::Proceeding, 300..=699) => {
                self.trying_at = None;
                self.state = ServerInviteState::Completed;
                if !self.reliable {
                    self.timer_g = Some(Backoff::start(now, self.config.t1, Some(self.config.t2)));
                }
                self.timer_h = Some(now + self.config.sixty_four_t1());
            }
            (ServerInviteState::Accepted, 200..=299) => return Some(bytes),
            _ => return None,
        }
        self.last_status = Some(status);
        self.last_response = Some(bytes.clone());
        Some(bytes)
    }

    /// A retransmission of the INVITE arrived. Returns the response to send
    /// again: the last provisional in "Proceeding", the final in "Completed";
    /// otherwise the retransmission is absorbed (`None`).
    pub fn on_request_retransmission(&mut self, _now: Instant) -> Option<Bytes> {
        match self.state {
            ServerInviteState::Proceeding | ServerInviteState::Completed => {
                self.last_response.clone()
            }
            // RFC 6026 §7.1: absorbed in Accepted; the TU's own 2xx
            // retransmissions repair a lost 2xx.
            _ => None,
        }
    }

    /// An ACK matched this transaction.
    pub fn on_ack(&mut self, now: Instant) -> AckDisposition {
        match self.state {
            ServerInviteState::Completed => {
                self.timer_g = None;
                self.timer_h = None;
                let linger = self.config.linger_t4(self.reliable);
                if linger.is_zero() {
                    self.state = ServerInviteState::Terminated;
                } else {
                    self.state = ServerInviteState::Confirmed;
                    self.timer_i = Some(now + linger);
                }
                AckDisposition::Absorbed
            }
            ServerInviteState::Confirmed => AckDisposition::Absorbed,
            ServerInviteState::Accepted => AckDisposition::PassToTu,
            ServerInviteState::Proceeding | ServerInviteState::Terminated => {
                AckDisposition::Ignored
            }
        }
    }

    /// The earliest deadline at which [`on_timeout`](Self::on_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ServerInviteState::Proceeding => self.trying_at,
            ServerInviteState::Completed => {
                earliest([self.timer_g.map(|g| g.next_at), self.timer_h])
            }
            ServerInviteState::Confirmed => self.timer_i,
            ServerInviteState::Accepted => self.timer_l,
            ServerInviteState::Terminated => None,
        }
    }

    /// Fires every timer due at `now`; returns what the owner must do. Call it
    /// whenever `now >= poll_timeout()`; each call makes progress, so calling it
    /// until `poll_timeout()` is in the future terminates.
    pub fn on_timeout(&mut self, now: Instant) -> Option<TimerAction> {
        match self.state {
            ServerInviteState::Proceeding => {
                if due(self.trying_at, now) {
                    self.trying_at = None;
                    return Some(TimerAction::SendTrying);
                }
                None
            }
            ServerInviteState::Completed => {
                if due(self.timer_h, now) {
                    // Timer H: the ACK never came.
                    self.terminate();
                    return Some(TimerAction::TimedOut);
                }
                match &mut self.timer_g {
                    Some(g) if now >= g.next_at => {
                        g.fire(now);
                        self.last_response.clone().map(TimerAction::Retransmit)
                    }
                    _ => None,
                }
            }
            ServerInviteState::Confirmed => {
                if due(self.timer_i, now) {
                    self.terminate();
                }
                None
            }
            ServerInviteState::Accepted => {
                if due(self.timer_l, now) {
                    self.terminate();
                }
                None
            }
            ServerInviteState::Terminated => None,
        }
    }

    fn terminate(&mut self) {
        self.state = ServerInviteState::Terminated;
        self.trying_at = None;
        self.timer_g = None;
        self.timer_h = None;
        self.timer_i = None;
        self.timer_l = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bytes(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// Runs every timer up to `until`, collecting the retransmission instants.
    fn run_until(
        t: &mut ServerInviteTransaction,
        until: Instant,
    ) -> (Vec<Instant>, Option<Instant>) {
        let mut retransmits = Vec::new();
        let mut timed_out = None;
        while let Some(at) = t.poll_timeout() {
            if at > until {
                break;
            }
            match t.on_timeout(at) {
                Some(TimerAction::Retransmit(_)) => retransmits.push(at),
                Some(TimerAction::TimedOut) => timed_out = Some(at),
                _ => {}
            }
        }
        (retransmits, timed_out)
    }

    #[test]
    fn failure_is_retransmitted_with_timer_g_until_timer_h() {
        let t0 = Instant::now();
        let mut t = ServerInviteTransaction::new(t0, TimerConfig::default(), false, None);
        assert_eq!(t.send_response(t0, 100, bytes("100")), Some(bytes("100")));
        assert_eq!(t.send_response(t0, 486, bytes("486")), Some(bytes("486")));
        assert_eq!(t.state(), ServerInviteState::Completed);
        let (retransmits, timed_out) = run_until(&mut t, t0 + Duration::from_secs(60));
        let offsets: Vec<u128> = retransmits
            .iter()
            .map(|at| (*at - t0).as_millis())
            .collect();
        // 0.5, 1.5, 3.5, 7.5, then every 4 s (T2) until 32 s.
        assert_eq!(
            offsets,
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(timed_out, Some(t0 + Duration::from_secs(32)));
        assert!(t.is_terminated());
    }

    #[test]
    fn ack_stops_retransmissions_and_timer_i_absorbs_more_acks() {
        let t0 = Instant::now();
        let mut t = ServerInviteTransaction::new(t0, TimerConfig::default(), false, None);
        t.send_response(t0, 487, bytes("487"));
        let t1 = t0 + Duration::from_millis(700);
        assert_eq!(t.on_ack(t1), AckDisposition::Absorbed);
        assert_eq!(t.state(), ServerInviteState::Confirmed);
        assert_eq!(t.on_ack(t1), AckDisposition::Absorbed);
        assert_eq!(t.on_request_retransmission(t1), None);
        assert_eq!(t.poll_timeout(), Some(t1 + Duration::from_secs(5)));
        let (retransmits, timed_out) = run_until(&mut t, t0 + Duration::from_secs(60));
        assert!(retransmits.is_empty());
        assert_eq!(timed_out, None);
        assert!(t.is_terminated());
    }

    #[test]
    fn request_retransmissions_get_the_last_response() {
        let t0 = Instant::now();
        let mut t = ServerInviteTransaction::new(t0, TimerConfig::default(), false, None);
        assert_eq!(t.on_request_retransmission(t0), None, "nothing sent yet");
        t.send_response(t0, 100, bytes("100"));
        assert_eq!(t.on_request_retransmission(t0), Some(bytes("100")));
        t.send_response(t0, 180, bytes("180"));
        assert_eq!(t.on_request_retransmission(t0), Some(bytes("180")));
        t.send_response(t0, 603, bytes("603"));
        assert_eq!(t.on_request_retransmission(t0), Some(bytes("603")));
    }

    #[test]
    fn second_final_and_late_provisional_are_refused() {
        let t0 = Instant::now();
        let mut t = ServerInviteTransaction::new(t0, TimerConfig::default(), false, None);
        t.send_response(t0, 404, bytes("404"));
        assert_eq!(t.send_response(t0, 200, bytes("200")), None);
        assert_eq!(t.send_response(t0, 180, bytes("180")), None);
        assert_eq!(t.last_status(), Some(404));
    }

    #[test]
    fn accepted_passes_acks_and_2xx_resends_then_timer_l_ends_it() {
        let t0 = Instant::now();
        let mut t = ServerInviteTransaction::new(t0, TimerConfig::default(), false, None);
        assert!(t.send_response(t0, 200, bytes("200")).is_some());
        assert_eq!(t.state(), ServerInviteState::Accepted);
        assert_eq!(t.on_request_retransmission(t0), None);
        assert_eq!(t.send_response(t0, 200, bytes("200")), Some(bytes("200")));
        assert_eq!(t.send_response(t0, 486, bytes("486")), None);
        assert_eq!(t.on_ack(t0), AckDisposition::PassToTu);
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        let (retransmits, timed_out) = run_until(&mut t, t0 + Duration::from_secs(40));
        assert!(retransmits.is_empty());
        assert_eq!(timed_out, None);
        assert!(t.is_terminated());
    }

    #[test]
    fn reliable_transport_has_no_timer_g_and_no_timer_i() {
        let t0 = Instant::now();
        let mut t = ServerInviteTransaction::new(t0, TimerConfig::default(), true, None);
        t.send_response(t0, 480, bytes("480"));
        assert_eq!(
            t.poll_timeout(),
            Some(t0 + Duration::from_secs(32)),
            "only H"
        );
        assert_eq!(t.on_ack(t0), AckDisposition::Absorbed);
        assert!(t.is_terminated());
    }

    #[test]
    fn delayed_trying_is_requested_once_unless_the_tu_answers() {
        let t0 = Instant::now();
        let delay = Some(Duration::from_millis(200));
        let mut t = ServerInviteTransaction::new(t0, TimerConfig::default(), false, delay);
        let at = t.poll_timeout().unwrap();
        assert_eq!(at, t0 + Duration::from_millis(200));
        assert_eq!(t.on_timeout(at), Some(TimerAction::SendTrying));
        assert_eq!(t.poll_timeout(), None);

        let mut answered = ServerInviteTransaction::new(t0, TimerConfig::default(), false, delay);
        answered.send_response(t0, 180, bytes("180"));
        assert_eq!(answered.poll_timeout(), None);
    }

    #[test]
    fn ack_before_any_response_is_ignored() {
        let t0 = Instant::now();
        let mut t = ServerInviteTransaction::new(t0, TimerConfig::default(), false, None);
        assert_eq!(t.on_ack(t0), AckDisposition::Ignored);
        assert_eq!(t.state(), ServerInviteState::Proceeding);
    }
}
