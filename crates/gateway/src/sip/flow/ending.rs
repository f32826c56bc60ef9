//! How calls end: the drain after SIGTERM (new calls refused, live ones go on until they end or
//! the grace period passes), and the one place every call passes through when it is over
//! ([`CallFlow::finish`]), which writes the call's summary line and its metrics.

use std::time::{Duration, Instant};

use super::super::refusal::Hangup;
use super::{CallEvent, CallFlow, Ending, MediaPorts, Now, Output};

/// What a call's summary line and ended metrics report, filled in as the call goes.
#[derive(Debug, Clone)]
pub(super) struct CallRecord {
    pub deployment_id: String,
    pub app_id: String,
    pub app_version: String,
    pub from: String,
    pub to: String,
    /// When its INVITE was taken on (the 180).
    pub rang_at: Instant,
    pub answered_at: Option<Instant>,
}

/// The drain after SIGTERM.
#[derive(Debug, Clone, Copy)]
pub(super) struct Drain {
    /// Calls still up then are hung up (BYE, Q.850 41).
    deadline: Instant,
    /// The deadline passed (or the operator asked to end calls now): calls were hung up.
    hung_up: bool,
}

impl<P: MediaPorts> CallFlow<P> {
    /// SIGTERM: from now on new INVITEs get a stateless 503 + Retry-After and out-of-dialog
    /// OPTIONS get 503 (so a dispatcher probing us stops sending); live calls go on until they
    /// end or `grace` passes, then get BYE. Calling it again keeps the first deadline.
    pub fn start_drain(&mut self, now: Now, grace: Duration) {
        if self.drain.is_none() {
            self.drain = Some(Drain {
                deadline: now.instant + grace,
                hung_up: false,
            });
            tracing::info!(
                calls = self.calls.len(),
                ?grace,
                "draining: new calls refused"
            );
        }
    }

    /// A second SIGTERM or SIGINT (or the grace period over): ends every call now (BYE or a
    /// final response, Q.850 41 "gateway shutdown"), and keeps refusing new ones.
    pub fn end_all_calls(&mut self, now: Now) {
        self.start_drain(now, Duration::ZERO);
        if let Some(drain) = &mut self.drain {
            drain.hung_up = true;
        }
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        for call_id in ids {
            self.end_call(now, &call_id, Hangup::Shutdown);
        }
        self.drive(now);
    }

    /// Draining and no call left: the engine may stop once its last BYEs are out.
    pub fn drained(&self) -> bool {
        self.drain.is_some() && self.calls.is_empty()
    }

    /// Whether new calls are refused for shutdown.
    pub fn is_draining(&self) -> bool {
        self.drain.is_some()
    }

    /// The grace deadline while it can still fire (for [`CallFlow::poll_timeout`]).
    pub(super) fn drain_deadline(&self) -> Option<Instant> {
        self.drain
            .filter(|d| !d.hung_up && !self.calls.is_empty())
            .map(|d| d.deadline)
    }

    /// Ends the calls left once the grace period is over (from [`CallFlow::handle_timeout`]).
    pub(super) fn check_drain_deadline(&mut self, now: Now) {
        if self.drain_deadline().is_some_and(|at| now.instant >= at) {
            tracing::warn!(
                calls = self.calls.len(),
                "shutdown grace period over: hanging up the calls left"
            );
            self.end_all_calls(now);
        }
    }

    /// Forgets a call on the SIP side, tells its task (which releases the ports), and reports
    /// how it ended: its `call.ended` (or `call.rejected`) event, summary line and metrics.
    pub(super) fn finish(&mut self, now: Now, call_id: &str, ending: Ending) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        self.drop_transfer(call_id);
        self.by_invite.remove(&call.invite_txn);
        self.metrics.calls_active.dec();
        self.outputs.push_back(Output::ToCall {
            call_id: call_id.to_owned(),
            event: CallEvent::Ended,
        });
        self.outputs.push_back(Output::CallEnded {
            call_id: call_id.to_owned(),
            call_sid: call.call_sid.clone(),
        });
        log_call_summary(
            &self.metrics,
            now,
            &call.call_sid,
            call_id,
            &call.summary,
            &ending,
        );
        let mut event = *call.record;
        event.kind = ending.kind;
        event.at = now.wall;
        event.hangup_by = Some(ending.hangup_by);
        event.reason = Some(ending.reason.to_owned());
        event.sip_status = Some(ending.sip_status);
        self.emit(event);
    }
}

/// The call's one summary line (`call ended`) and its ended metrics: duration (0 when never
/// answered), who hung up, and the INVITE's final status.
fn log_call_summary(
    metrics: &super::super::metrics::SipMetrics,
    now: Now,
    call_sid: &str,
    sip_call_id: &str,
    record: &CallRecord,
    ending: &Ending,
) {
    let by = ending.hangup_by;
    let duration = record.answered_at.map_or(Duration::ZERO, |at| {
        now.instant.saturating_duration_since(at)
    });
    metrics.call.ended(by, record.answered_at.map(|_| duration));
    tracing::info!(
        call_sid,
        sip_call_id,
        deployment_id = %record.deployment_id,
        app_id = %record.app_id,
        app_version = %record.app_version,
        from = %record.from,
        to = %record.to,
        duration = duration.as_secs_f64(),
        hangup_by = by.as_str(),
        sip_status = ending.sip_status,
        reason = ending.reason,
        "call ended"
    );
}
