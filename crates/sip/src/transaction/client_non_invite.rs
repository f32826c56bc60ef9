//! Non-INVITE client transaction: RFC 3261 §17.1.2 (the BYE, OPTIONS, ... we send).
//!
//! ```text
//!   request sent --> Trying --1xx--> Proceeding
//!                      |  \            |
//!                      |   \--final-- -+--> Completed --Timer K--> Terminated
//!                      +--Timer F (64·T1, both states)--> TimedOut
//! ```
//! Timer E retransmits the request over unreliable transports: T1, doubling up
//! to T2 in Trying; every T2 in Proceeding.

use std::time::Instant;

use bytes::Bytes;

use super::{due, earliest, Backoff, TimerAction, TimerConfig};

/// State of a [`ClientNonInviteTransaction`] (RFC 3261 Figure 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    /// Request sent, no response yet.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// The final response arrived; Timer K absorbs its retransmissions.
    Completed,
    /// Finished; the owner may drop the transaction.
    Terminated,
}

/// One non-INVITE client transaction. Create it right after transmitting the
/// request for the first time.
#[derive(Debug, Clone)]
pub struct ClientNonInviteTransaction {
    state: ClientNonInviteState,
    config: TimerConfig,
    reliable: bool,
    request: Bytes,
    timer_e: Option<Backoff>,
    timer_f: Option<Instant>,
    timer_k: Option<Instant>,
}

impl ClientNonInviteTransaction {
    /// Creates the transaction for `request`, first transmitted at `now`.
    pub fn new(now: Instant, config: TimerConfig, reliable: bool, request: Bytes) -> Self {
        ClientNonInviteTransaction {
            state: ClientNonInviteState::Trying,
            config,
            reliable,
            request,
            timer_e: (!reliable).then(|| Backoff::start(now, config.t1, Some(config.t2))),
            timer_f: Some(now + config.sixty_four_t1()),
            timer_k: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    /// `true` once the owner may forget this transaction.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientNonInviteState::Terminated
    }

    /// The encoded request (e.g. to send it again over a new connection).
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// A response with `status` matched this transaction. Returns `true` when it
    /// must be passed to the transaction user, `false` when it is a
    /// retransmission to absorb.
    pub fn on_response(&mut self, now: Instant, status: u16) -> bool {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                if status < 200 {
                    self.state = ClientNonInviteState::Proceeding;
                } else {
                    self.timer_e = None;
                    self.timer_f = None;
                    let linger = self.config.linger_t4(self.reliable);
                    if linger.is_zero() {
                        self.state = ClientNonInviteState::Terminated;
                    } else {
                        self.state = ClientNonInviteState::Completed;
                        self.timer_k = Some(now + linger);
                    }
                }
                true
            }
            ClientNonInviteState::Completed | ClientNonInviteState::Terminated => false,
        }
    }

    /// The earliest deadline at which [`on_timeout`](Self::on_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                earliest([self.timer_e.map(|e| e.next_at), self.timer_f])
            }
            ClientNonInviteState::Completed => self.timer_k,
            ClientNonInviteState::Terminated => None,
        }
    }

    /// Fires the timers due at `now`: a retransmission (Timer E), a time-out
    /// (Timer F: report to the TU, e.g. treat a BYE as done), or silent
    /// termination (Timer K).
    pub fn on_timeout(&mut self, now: Instant) -> Option<TimerAction> {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                if due(self.timer_f, now) {
                    self.terminate();
                    return Some(TimerAction::TimedOut);
                }
                let proceeding = self.state == ClientNonInviteState::Proceeding;
                let t2 = self.config.t2;
                match &mut self.timer_e {
                    Some(e) if now >= e.next_at => {
                        if proceeding {
                            // §17.1.2.2: in Proceeding, Timer E is reset to T2.
                            e.interval = t2;
                            e.next_at = now + t2;
                        } else {
                            e.fire(now);
                        }
                        Some(TimerAction::Retransmit(self.request.clone()))
                    }
                    _ => None,
                }
            }
            ClientNonInviteState::Completed => {
                if due(self.timer_k, now) {
                    self.terminate();
                }
                None
            }
            ClientNonInviteState::Terminated => None,
        }
    }

    fn terminate(&mut self) {
        self.state = ClientNonInviteState::Terminated;
        self.timer_e = None;
        self.timer_f = None;
        self.timer_k = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A BYE's transaction started at `t0` with the default timers.
    fn bye(t0: Instant, reliable: bool) -> ClientNonInviteTransaction {
        ClientNonInviteTransaction::new(
            t0,
            TimerConfig::default(),
            reliable,
            Bytes::from_static(b"BYE"),
        )
    }

    fn offsets(
        t0: Instant,
        t: &mut ClientNonInviteTransaction,
        until: Instant,
    ) -> (Vec<u128>, Option<u128>) {
        let mut retransmits = Vec::new();
        let mut timed_out = None;
        while let Some(at) = t.poll_timeout() {
            if at > until {
                break;
            }
            match t.on_timeout(at) {
                Some(TimerAction::Retransmit(_)) => retransmits.push((at - t0).as_millis()),
                Some(TimerAction::TimedOut) => timed_out = Some((at - t0).as_millis()),
                _ => {}
            }
        }
        (retransmits, timed_out)
    }

    #[test]
    fn timer_e_backs_off_and_timer_f_gives_up() {
        let t0 = Instant::now();
        let mut t = bye(t0, false);
        let (retransmits, timed_out) = offsets(t0, &mut t, t0 + Duration::from_secs(60));
        assert_eq!(
            retransmits,
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(timed_out, Some(32_000));
        assert!(t.is_terminated());
    }

    #[test]
    fn proceeding_retransmits_every_t2() {
        let t0 = Instant::now();
        let mut t = bye(t0, false);
        assert!(t.on_response(t0 + Duration::from_millis(100), 100));
        assert_eq!(t.state(), ClientNonInviteState::Proceeding);
        let (retransmits, _) = offsets(t0, &mut t, t0 + Duration::from_secs(13));
        assert_eq!(retransmits, vec![500, 4500, 8500, 12500]);
    }

    #[test]
    fn final_response_is_delivered_once_and_timer_k_ends_it() {
        let t0 = Instant::now();
        let mut t = bye(t0, false);
        let t1 = t0 + Duration::from_millis(30);
        assert!(t.on_response(t1, 200));
        assert!(!t.on_response(t1, 200), "retransmission absorbed");
        assert_eq!(t.poll_timeout(), Some(t1 + Duration::from_secs(5)));
        let (retransmits, timed_out) = offsets(t0, &mut t, t0 + Duration::from_secs(60));
        assert!(retransmits.is_empty());
        assert_eq!(timed_out, None);
        assert!(t.is_terminated());
    }

    #[test]
    fn reliable_transport_only_has_timer_f_and_no_timer_k() {
        let t0 = Instant::now();
        let mut t = bye(t0, true);
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        assert!(t.on_response(t0, 481));
        assert!(t.is_terminated());
    }
}
