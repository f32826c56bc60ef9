//! Non-INVITE server transaction: RFC 3261 §17.2.2 (OPTIONS, BYE, CANCEL, INFO, ...).
//!
//! ```text
//!   request --> Trying --1xx from TU--> Proceeding --final from TU--> Completed
//!                 \______________final from TU_____________________/     |
//!                                                        Timer J (64·T1 on UDP,
//!                                                        0 on TCP) --> Terminated
//! ```
//! Retransmissions of the request are ignored in Trying (nothing to resend yet)
//! and answered with the last response in Proceeding and Completed.

use std::time::Instant;

use bytes::Bytes;

use super::{due, TimerConfig};

/// State of a [`ServerNonInviteTransaction`] (RFC 3261 Figure 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    /// Request received, the TU has not responded.
    Trying,
    /// The TU sent a provisional response.
    Proceeding,
    /// The TU sent its final response; Timer J absorbs retransmissions.
    Completed,
    /// Finished; the owner may drop the transaction.
    Terminated,
}

/// One non-INVITE server transaction. Create it when a new non-INVITE,
/// non-ACK request arrives.
#[derive(Debug, Clone)]
pub struct ServerNonInviteTransaction {
    state: ServerNonInviteState,
    config: TimerConfig,
    reliable: bool,
    last_response: Option<Bytes>,
    last_status: Option<u16>,
    timer_j: Option<Instant>,
}

impl ServerNonInviteTransaction {
    /// Creates the transaction for a request received at `now`.
    pub fn new(_now: Instant, config: TimerConfig, reliable: bool) -> Self {
        ServerNonInviteTransaction {
            state: ServerNonInviteState::Trying,
            config,
            reliable,
            last_response: None,
            last_status: None,
            timer_j: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> ServerNonInviteState {
        self.state
    }

    /// `true` once the owner may forget this transaction.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerNonInviteState::Terminated
    }

    /// Status code of the last response sent, if any.
    pub fn last_status(&self) -> Option<u16> {
        self.last_status
    }

    /// The TU sends a response. Returns the bytes to transmit, or `None` when a
    /// final response was already sent (the extra response must not go out).
    pub fn send_response(&mut self, now: Instant, status: u16, bytes: Bytes) -> Option<Bytes> {
        match self.state {
            ServerNonInviteState::Trying | ServerNonInviteState::Proceeding => {
                if status < 200 {
                    self.state = ServerNonInviteState::Proceeding;
                } else {
                    let linger = self.config.timer_j(self.reliable);
                    if linger.is_zero() {
                        self.state = ServerNonInviteState::Terminated;
                    } else {
                        self.state = ServerNonInviteState::Completed;
                        self.timer_j = Some(now + linger);
                    }
                }
                self.last_status = Some(status);
                self.last_response = Some(bytes.clone());
                Some(bytes)
            }
            ServerNonInviteState::Completed | ServerNonInviteState::Terminated => None,
        }
    }

    /// A retransmission of the request arrived: returns the response to send
    /// again, if there is one.
    pub fn on_request_retransmission(&mut self, _now: Instant) -> Option<Bytes> {
        match self.state {
            ServerNonInviteState::Proceeding | ServerNonInviteState::Completed => {
                self.last_response.clone()
            }
            ServerNonInviteState::Trying | ServerNonInviteState::Terminated => None,
        }
    }

    /// The deadline at which [`on_timeout`](Self::on_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ServerNonInviteState::Completed => self.timer_j,
            _ => None,
        }
    }

    /// Fires Timer J if due (the transaction terminates; nothing to send).
    pub fn on_timeout(&mut self, now: Instant) {
        if self.state == ServerNonInviteState::Completed && due(self.timer_j, now) {
            self.state = ServerNonInviteState::Terminated;
            self.timer_j = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bytes(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn trying_ignores_retransmissions_then_completed_repeats_the_final() {
        let t0 = Instant::now();
        let mut t = ServerNonInviteTransaction::new(t0, TimerConfig::default(), false);
        assert_eq!(t.on_request_retransmission(t0), None);
        assert_eq!(t.send_response(t0, 200, bytes("200")), Some(bytes("200")));
        assert_eq!(t.state(), ServerNonInviteState::Completed);
        assert_eq!(t.on_request_retransmission(t0), Some(bytes("200")));
        assert_eq!(t.send_response(t0, 500, bytes("500")), None);
    }

    #[test]
    fn proceeding_repeats_the_provisional() {
        let t0 = Instant::now();
        let mut t = ServerNonInviteTransaction::new(t0, TimerConfig::default(), false);
        t.send_response(t0, 100, bytes("100"));
        assert_eq!(t.state(), ServerNonInviteState::Proceeding);
        assert_eq!(t.on_request_retransmission(t0), Some(bytes("100")));
        t.send_response(t0, 200, bytes("200"));
        assert_eq!(t.last_status(), Some(200));
    }

    #[test]
    fn timer_j_is_64_t1_on_udp() {
        let t0 = Instant::now();
        let mut t = ServerNonInviteTransaction::new(t0, TimerConfig::default(), false);
        t.send_response(t0, 200, bytes("200"));
        let at = t.poll_timeout().unwrap();
        assert_eq!(at, t0 + Duration::from_secs(32));
        t.on_timeout(at - Duration::from_millis(1));
        assert!(!t.is_terminated());
        t.on_timeout(at);
        assert!(t.is_terminated());
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn timer_j_is_zero_on_tcp() {
        let t0 = Instant::now();
        let mut t = ServerNonInviteTransaction::new(t0, TimerConfig::default(), true);
        t.send_response(t0, 200, bytes("200"));
        assert!(t.is_terminated());
    }
}
