//! Timers: one heap of deadlines for every transaction and 2xx retransmission, lazily
//! invalidated and compacted; firing them; and the bookkeeping after a transaction changes
//! (re-arm its deadline, or reap it once terminated).

use std::cmp::Reverse;
use std::time::Instant;

use crate::dialog::{AnswerTimer, DialogId};
use crate::transaction::TimerAction;

use super::client::{ClientMachine, ClientTxn};
use super::server::{ServerMachine, ServerTxn};
use super::{ClientTxnId, Endpoint, Event, ServerTxnId, TimerKey, TransactionId, Transmit};

/// A safety bound on how many timer actions one transaction may take in one
/// `handle_timeout` call (each action moves its deadline; a zero T1 must not spin).
const MAX_TIMER_STEPS: usize = 16;

impl Endpoint {
    /// Call when `now >= poll_timeout()`: fires every due timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.armed.get(&key) != Some(&at) {
                continue; // superseded
            }
            self.armed.remove(&key);
            match key {
                TimerKey::Server(id) => self.fire_server(now, id),
                TimerKey::Client(id) => self.fire_client(now, id),
                TimerKey::Answer(id) => self.fire_answer(now, id),
            }
        }
    }

    fn fire_server(&mut self, now: Instant, id: ServerTxnId) {
        for _ in 0..MAX_TIMER_STEPS {
            let Some(txn) = self.server_txns.get_mut(&id) else {
                return;
            };
            if txn.poll_timeout().is_none_or(|at| at > now) {
                break;
            }
            if txn.answer_by.is_some_and(|at| at <= now) {
                txn.answer_by = None;
                let invite = txn.is_invite();
                self.events.push_back(Event::TransactionTimedOut {
                    txn: TransactionId::Server(id),
                });
                if invite {
                    self.respond_status(now, id, 408);
                } else {
                    self.remove_server(id);
                    return;
                }
                continue;
            }
            let action = match &mut txn.machine {
                ServerMachine::Invite(t) => t.on_timeout(now),
                ServerMachine::NonInvite(t) => {
                    t.on_timeout(now);
                    None
                }
            };
            let (to, tr) = (txn.target, txn.transport);
            match action {
                Some(TimerAction::Retransmit(bytes)) => self.transmit(to, tr, bytes),
                Some(TimerAction::TimedOut) => self.events.push_back(Event::TransactionTimedOut {
                    txn: TransactionId::Server(id),
                }),
                Some(TimerAction::SendTrying) => self.respond_status(now, id, 100),
                None => {}
            }
        }
        self.after_server_change(id);
    }

    fn fire_client(&mut self, now: Instant, id: ClientTxnId) {
        for _ in 0..MAX_TIMER_STEPS {
            let Some(txn) = self.client_txns.get_mut(&id) else {
                return;
            };
            if txn.poll_timeout().is_none_or(|at| at > now) {
                break;
            }
            let action = match &mut txn.machine {
                ClientMachine::Invite(t) => t.on_timeout(now),
                ClientMachine::NonInvite(t) => t.on_timeout(now),
            };
            let (to, tr) = (txn.remote, txn.transport);
            match action {
                Some(TimerAction::Retransmit(bytes)) => self.transmit(to, tr, bytes),
                Some(TimerAction::TimedOut) => self.events.push_back(Event::TransactionTimedOut {
                    txn: TransactionId::Client(id),
                }),
                Some(TimerAction::SendTrying) | None => {}
            }
        }
        self.after_client_change(id);
    }

    fn fire_answer(&mut self, now: Instant, id: DialogId) {
        let Some(dialog) = self.dialogs.get_mut(&id) else {
            return;
        };
        let transport = dialog.transport();
        let Some(answer) = dialog.answer.as_mut() else {
            return;
        };
        let target = answer.target;
        for _ in 0..MAX_TIMER_STEPS {
            if answer.poll_timeout() > now {
                break;
            }
            match answer.on_timeout(now) {
                Some(AnswerTimer::Retransmit(bytes)) => self.transmits.push_back(Transmit {
                    remote: target,
                    transport,
                    bytes,
                }),
                Some(AnswerTimer::GaveUp) => {
                    dialog.answer = None;
                    self.events.push_back(Event::AckTimedOut { dialog: id });
                    return;
                }
                None => break,
            }
        }
        self.schedule(TimerKey::Answer(id));
    }
    /// When [`Endpoint::handle_timeout`] must be called next (`None`: no timer).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if self.armed.get(&key) == Some(&at) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }
    fn deadline(&self, key: TimerKey) -> Option<Instant> {
        match key {
            TimerKey::Server(id) => self.server_txns.get(&id)?.poll_timeout(),
            TimerKey::Client(id) => self.client_txns.get(&id)?.poll_timeout(),
            TimerKey::Answer(id) => Some(self.dialogs.get(&id)?.answer.as_ref()?.poll_timeout()),
        }
    }

    pub(super) fn schedule(&mut self, key: TimerKey) {
        match self.deadline(key) {
            Some(at) => {
                if self.armed.get(&key) != Some(&at) {
                    self.armed.insert(key, at);
                    self.timers.push(Reverse((at, key)));
                    self.compact_timers();
                }
            }
            None => self.unschedule(key),
        }
    }

    /// Superseded deadlines stay in the heap until popped; when they outnumber the live
    /// ones (many transactions ended early, each leaving a far deadline behind), rebuild
    /// the heap from the live set so its size stays proportional to live state.
    fn compact_timers(&mut self) {
        const SLACK: usize = 1024;
        if self.timers.len() > 2 * self.armed.len() + SLACK {
            self.timers = self
                .armed
                .iter()
                .map(|(&key, &at)| Reverse((at, key)))
                .collect();
        }
    }

    pub(super) fn unschedule(&mut self, key: TimerKey) {
        // The heap entry stays and is skipped when popped.
        self.armed.remove(&key);
    }

    pub(super) fn after_server_change(&mut self, id: ServerTxnId) {
        if self
            .server_txns
            .get(&id)
            .is_some_and(ServerTxn::is_terminated)
        {
            self.remove_server(id);
        } else {
            self.schedule(TimerKey::Server(id));
        }
    }

    pub(super) fn remove_server(&mut self, id: ServerTxnId) {
        if let Some(t) = self.server_txns.remove(&id) {
            if self.server_keys.get(&t.key) == Some(&id) {
                self.server_keys.remove(&t.key);
            }
        }
        self.unschedule(TimerKey::Server(id));
    }

    pub(super) fn after_client_change(&mut self, id: ClientTxnId) {
        if self
            .client_txns
            .get(&id)
            .is_some_and(ClientTxn::is_terminated)
        {
            if let Some(t) = self.client_txns.remove(&id) {
                self.client_keys.remove(&(t.branch, t.method));
            }
            self.unschedule(TimerKey::Client(id));
        } else {
            self.schedule(TimerKey::Client(id));
        }
    }
}
