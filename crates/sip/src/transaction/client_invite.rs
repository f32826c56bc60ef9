//! INVITE client transaction: RFC 3261 §17.1.1 as updated by RFC 6026 §7.2.
//!
//! ```text
//!   INVITE sent --> Calling --1xx--> Proceeding
//!                    |  \               |  \
//!                    |   \---300-699----+---> Completed (ACK sent; resent for each
//!                    |                  |        retransmitted failure) --Timer D--> Terminated
//!                    |   /-----2xx------/
//!                    v  v
//!                  Accepted (2xx and its retransmissions go to the TU, which ACKs)
//!                    --Timer M--> Terminated
//!   Calling --Timer B (64·T1)--> TimedOut
//! ```
//! Timer A retransmits the INVITE over unreliable transports (T1, doubling).
//! The gateway mostly answers calls; this machine exists for completeness and
//! for tests that play the caller.

use std::time::Instant;

use bytes::Bytes;

use super::{due, earliest, Backoff, TimerAction, TimerConfig};

/// State of a [`ClientInviteTransaction`] (RFC 3261 Figure 5 + RFC 6026 Figure 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    /// INVITE sent, no response yet.
    Calling,
    /// A provisional response arrived; waiting for the final one (no timer).
    Proceeding,
    /// A 2xx arrived; further 2xx (retransmissions or forks) go to the TU.
    Accepted,
    /// A failure arrived and was ACKed; Timer D re-ACKs its retransmissions.
    Completed,
    /// Finished; the owner may drop the transaction.
    Terminated,
}

/// What to do with a response that matched a [`ClientInviteTransaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseDisposition {
    /// Pass the response to the transaction user.
    pub deliver: bool,
    /// Send these bytes (the ACK for a failure response).
    pub transmit: Option<Bytes>,
}

/// One INVITE client transaction. Create it right after transmitting the INVITE.
#[derive(Debug, Clone)]
pub struct ClientInviteTransaction {
    state: ClientInviteState,
    config: TimerConfig,
    reliable: bool,
    request: Bytes,
    ack: Option<Bytes>,
    timer_a: Option<Backoff>,
    timer_b: Option<Instant>,
    timer_d: Option<Instant>,
    timer_m: Option<Instant>,
}

impl ClientInviteTransaction {
    /// Creates the transaction for `request`, first transmitted at `now`.
    pub fn new(now: Instant, config: TimerConfig, reliable: bool, request: Bytes) -> Self {
        ClientInviteTransaction {
            state: ClientInviteState::Calling,
            config,
            reliable,
            request,
            ack: None,
            // Timer A doubles without a cap (§17.1.1.2): 7 retransmissions by Timer B.
            timer_a: (!reliable).then(|| Backoff::start(now, config.t1, None)),
            timer_b: Some(now + config.sixty_four_t1()),
            timer_d: None,
            timer_m: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    /// `true` once the owner may forget this transaction.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientInviteState::Terminated
    }

    /// The encoded INVITE (the owner builds CANCEL and ACK from it).
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// A response with `status` matched this transaction. For a 300–699
    /// response `build_ack` is called (once) to get the ACK that the
    /// transaction sends itself (§17.1.1.3); returning `None` from it skips the ACK.
    pub fn on_response(
        &mut self,
        now: Instant,
        status: u16,
        build_ack: impl FnOnce() -> Option<Bytes>,
    ) -> ResponseDisposition {
        let deliver = ResponseDisposition {
            deliver: true,
            transmit: None,
        };
        let absorb = ResponseDisposition {
            deliver: false,
            transmit: None,
        };
        match self.state {
            ClientInviteState::Calling | ClientInviteState::Proceeding => match status {
                100..=199 => {
                    self.state = ClientInviteState::Proceeding;
                    self.timer_a = None;
                    self.timer_b = None;
                    deliver
                }
                200..=299 => {
                    self.timer_a = None;
                    self.timer_b = None;
                    self.state = ClientInviteState::Accepted;
                    self.timer_m = Some(now + self.config.sixty_four_t1());
                    deliver
                }
                _ => {
                    self.timer_a = None;
                    self.timer_b = None;
                    self.ack = build_ack();
                    let linger = self.config.timer_d(self.reliable);
                    if linger.is_zero() {
                        self.state = ClientInviteState::Terminated;
                    } else {
                        self.state = ClientInviteState::Completed;
                        self.timer_d = Some(now + linger);
                    }
                    ResponseDisposition {
                        deliver: true,
                        transmit: self.ack.clone(),
                    }
                }
            },
            ClientInviteState::Accepted if (200..=299).contains(&status) => deliver,
            ClientInviteState::Completed if status >= 300 => ResponseDisposition {
                deliver: false,
                transmit: self.ack.clone(),
            },
            _ => absorb,
        }
    }

    /// The earliest deadline at which [`on_timeout`](Self::on_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientInviteState::Calling => earliest([self.timer_a.map(|a| a.next_at), self.timer_b]),
            ClientInviteState::Proceeding | ClientInviteState::Terminated => None,
            ClientInviteState::Accepted => self.timer_m,
            ClientInviteState::Completed => self.timer_d,
        }
    }

    /// Fires the timers due at `now`: retransmission (A), time-out (B) or silent
    /// termination (D, M).
    pub fn on_timeout(&mut self, now: Instant) -> Option<TimerAction> {
        match self.state {
            ClientInviteState::Calling => {
                if due(self.timer_b, now) {
                    self.terminate();
                    return Some(TimerAction::TimedOut);
                }
                match &mut self.timer_a {
                    Some(a) if now >= a.next_at => {
                        a.fire(now);
                        Some(TimerAction::Retransmit(self.request.clone()))
                    }
                    _ => None,
                }
            }
            ClientInviteState::Accepted => {
                if due(self.timer_m, now) {
                    self.terminate();
                }
                None
            }
            ClientInviteState::Completed => {
                if due(self.timer_d, now) {
                    self.terminate();
                }
                None
            }
            ClientInviteState::Proceeding | ClientInviteState::Terminated => None,
        }
    }

    fn terminate(&mut self) {
        self.state = ClientInviteState::Terminated;
        self.timer_a = None;
        self.timer_b = None;
        self.timer_d = None;
        self.timer_m = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn new(t0: Instant, reliable: bool) -> ClientInviteTransaction {
        ClientInviteTransaction::new(
            t0,
            TimerConfig::default(),
            reliable,
            Bytes::from_static(b"INVITE"),
        )
    }

    #[test]
    fn timer_a_doubles_without_cap_until_timer_b() {
        let t0 = Instant::now();
        let mut t = new(t0, false);
        let mut retransmits = Vec::new();
        let mut timed_out = None;
        while let Some(at) = t.poll_timeout() {
            match t.on_timeout(at) {
                Some(TimerAction::Retransmit(b)) => {
                    assert_eq!(b, Bytes::from_static(b"INVITE"));
                    retransmits.push((at - t0).as_millis());
                }
                Some(TimerAction::TimedOut) => timed_out = Some((at - t0).as_millis()),
                _ => {}
            }
        }
        assert_eq!(retransmits, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(timed_out, Some(32_000));
    }

    #[test]
    fn failure_is_acked_and_its_retransmissions_re_acked() {
        let t0 = Instant::now();
        let mut t = new(t0, false);
        assert!(t.on_response(t0, 180, || None).deliver);
        assert_eq!(t.poll_timeout(), None, "no timer in Proceeding");
        let d = t.on_response(t0, 486, || Some(Bytes::from_static(b"ACK")));
        assert!(d.deliver);
        assert_eq!(d.transmit, Some(Bytes::from_static(b"ACK")));
        let again = t.on_response(t0, 486, || panic!("ACK is built once"));
        assert!(!again.deliver);
        assert_eq!(again.transmit, Some(Bytes::from_static(b"ACK")));
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        assert_eq!(t.on_timeout(t0 + Duration::from_secs(32)), None);
        assert!(t.is_terminated());
    }

    #[test]
    fn accepted_delivers_every_2xx_until_timer_m() {
        let t0 = Instant::now();
        let mut t = new(t0, false);
        assert!(t.on_response(t0, 200, || None).deliver);
        assert_eq!(t.state(), ClientInviteState::Accepted);
        assert!(t.on_response(t0, 200, || None).deliver);
        assert!(!t.on_response(t0, 180, || None).deliver);
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        t.on_timeout(t0 + Duration::from_secs(32));
        assert!(t.is_terminated());
    }

    #[test]
    fn reliable_failure_terminates_at_once() {
        let t0 = Instant::now();
        let mut t = new(t0, true);
        assert_eq!(
            t.poll_timeout(),
            Some(t0 + Duration::from_secs(32)),
            "only B"
        );
        let d = t.on_response(t0, 503, || Some(Bytes::from_static(b"ACK")));
        assert_eq!(d.transmit, Some(Bytes::from_static(b"ACK")));
        assert!(t.is_terminated());
    }
}
