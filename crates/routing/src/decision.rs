//! What [`crate::RoutingSnapshot::route`] answers: accept with a [`Route`], or reject with a
//! [`Reject`] that knows its SIP status and an operator-readable explanation.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::cohort::CohortRow;
use crate::entry::DeploymentEntry;
use crate::model::{AppVersion, CohortMember, Deployment, RuntimeStatus, Scope};
use crate::number::{NumberError, E164};
use crate::schedule::Schedule;

/// A runtime that is still provisioning is usually ready within tens of seconds (seed 004's
/// lifecycle); asking the carrier to retry after 30 s lands most retries on a ready runtime
/// without hammering a gateway that cannot serve the call yet.
pub const RUNTIME_PROVISIONING_RETRY_AFTER_SECS: u32 = 30;

/// The outcome of routing one INVITE.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteDecision {
    Accept(Route),
    Reject(Reject),
}

impl RouteDecision {
    /// `Some(route)` when accepted.
    pub fn accepted(&self) -> Option<&Route> {
        match self {
            RouteDecision::Accept(route) => Some(route),
            RouteDecision::Reject(_) => None,
        }
    }

    /// `Some(reject)` when rejected.
    pub fn rejected(&self) -> Option<&Reject> {
        match self {
            RouteDecision::Accept(_) => None,
            RouteDecision::Reject(reject) => Some(reject),
        }
    }

    /// One line for logs and the admin API's "why did this call go there" answers.
    pub fn explanation(&self) -> String {
        match self {
            RouteDecision::Accept(route) => route.explanation(),
            RouteDecision::Reject(reject) => reject.explanation(),
        }
    }
}

/// How a split picked the version, for the decision's explanation and for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitChoice {
    /// `xxh3(Call-ID) % 10_000`.
    pub bucket: u16,
    /// The configured share of the version that serves the call, in basis points.
    pub share_basis_points: u16,
    /// The version the bucket fell on when its runtime was not ready and the call was redrawn
    /// among the ready versions; `None` when the bucket's own version serves the call.
    pub redrawn_from: Option<u32>,
}

/// An accepted call: where it goes and with what personalisation. Cheap to clone (one reference
/// count, two with a cohort row); holds the deployment's data alive, not the snapshot.
#[derive(Debug, Clone)]
pub struct Route {
    pub(crate) deployment: Arc<DeploymentEntry>,
    /// Index into `deployment.app.versions` (the entry is immutable, so it stays valid).
    pub(crate) runtime: u16,
    pub(crate) connection: u16,
    pub(crate) split: Option<SplitChoice>,
    pub(crate) cohort: Option<CohortRow>,
    pub(crate) called: E164,
    pub(crate) caller: Option<E164>,
}

impl Route {
    pub fn deployment_id(&self) -> &str {
        &self.deployment.record.deployment_id
    }

    pub fn scope(&self) -> &Scope {
        &self.deployment.scope
    }

    /// The whole deployment record as it was when the snapshot was built.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment.record
    }

    pub fn app_id(&self) -> &str {
        &self.runtime().app_id
    }

    /// The version serving the call: the split's pick, or the deployment's `app_version`.
    pub fn app_version(&self) -> u32 {
        self.runtime().version
    }

    /// `ws://`/`wss://` URL of the agent runtime to bridge the call to.
    pub fn runtime_url(&self) -> &str {
        &self.runtime().runtime_url
    }

    /// The runtime record (dialect, status detail).
    pub fn runtime(&self) -> &AppVersion {
        &self.deployment.app.versions[usize::from(self.runtime)]
    }

    /// The connection (trunk) the called number is configured under.
    pub fn connection_id(&self) -> &str {
        self.deployment
            .connections
            .get(usize::from(self.connection))
            .map_or("", |c| c.id.as_str())
    }

    /// `Some` when a traffic split chose the version.
    pub fn split(&self) -> Option<&SplitChoice> {
        self.split.as_ref()
    }

    /// The caller's cohort row (variables, overrides), if the caller is in this deployment's
    /// cohort. No row means no variables; the call is routed all the same.
    /// Decoded from the compact row on first use (lookups themselves never allocate).
    pub fn cohort(&self) -> Option<&Arc<CohortMember>> {
        self.cohort.as_ref().map(CohortRow::member)
    }

    pub fn called(&self) -> &E164 {
        &self.called
    }

    /// `None` when the caller is anonymous or not a phone number.
    pub fn caller(&self) -> Option<&E164> {
        self.caller.as_ref()
    }

    /// Why the call went where it went, e.g. `+918047168000 -> deployment dep-1 (acme/main)
    /// on conn-1 -> support-agent v4 (split: bucket 8123 of 10000, v4 has 30.00 %); caller
    /// +919876543210 is cohort user u-17`.
    pub fn explanation(&self) -> String {
        let mut out = format!(
            "{} -> deployment {} ({}/{}) on {} -> {} v{}",
            self.called,
            self.deployment_id(),
            self.scope().org_id,
            self.scope().workspace_id,
            self.connection_id(),
            self.app_id(),
            self.app_version()
        );
        match &self.split {
            None => out.push_str(" (the deployment's app_version; no split)"),
            Some(split) => {
                let share = f64::from(split.share_basis_points) / 100.0;
                match split.redrawn_from {
                    None => {
                        let _ = write!(
                            out,
                            " (split: bucket {} of 10000, v{} has {share:.2} %)",
                            split.bucket,
                            self.app_version()
                        );
                    }
                    Some(drawn) => {
                        let _ = write!(
                            out,
                            " (split: bucket {} fell on v{drawn}, whose runtime is not ready; redrawn among ready versions, v{} has {share:.2} %)",
                            split.bucket,
                            self.app_version()
                        );
                    }
                }
            }
        }
        match (&self.caller, self.cohort()) {
            (Some(caller), Some(member)) => {
                let _ = write!(
                    out,
                    "; caller {caller} is cohort user {}",
                    member.user_identifier
                );
            }
            (Some(caller), None) => {
                let _ = write!(out, "; caller {caller} is in no cohort");
            }
            (None, _) => out.push_str("; caller number unknown"),
        }
        out
    }
}

/// Compares what a call would observe (ids, version, runtime, split, cohort values), not
/// pointer identity: two snapshots built differently route equal calls equally.
impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.deployment_id() == other.deployment_id()
            && self.scope() == other.scope()
            && self.runtime() == other.runtime()
            && self.connection_id() == other.connection_id()
            && self.split == other.split
            && self.cohort().map(|m| &**m) == other.cohort().map(|m| &**m)
            && self.called == other.called
            && self.caller == other.caller
    }
}

/// Why a call is not taken. Maps to a SIP final response via [`RejectReason::sip_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The Request-URI's user part is not a phone number.
    InvalidCalledNumber,
    /// No deployment has the called number.
    NoRoute,
    /// The deployment is outbound-only (`channel_direction: outbound`).
    InboundDisabled,
    /// The deployment is paused.
    Paused,
    /// Outside the deployment's `inbound_config` schedule.
    OutsideSchedule,
    /// The chosen app version is not registered (no runtime to send the call to).
    RuntimeMissing,
    /// The chosen app version's runtime is `provisioning` or `error`.
    RuntimeNotReady,
}

impl RejectReason {
    /// Every reason, for metrics pre-registration and exhaustive tests.
    pub const ALL: [RejectReason; 7] = [
        RejectReason::InvalidCalledNumber,
        RejectReason::NoRoute,
        RejectReason::InboundDisabled,
        RejectReason::Paused,
        RejectReason::OutsideSchedule,
        RejectReason::RuntimeMissing,
        RejectReason::RuntimeNotReady,
    ];

    /// The SIP final response (RFC 3261 §21): 404 when the number is not ours, 403 when it is
    /// but takes no inbound calls, 480 when it is ours but not answering right now (paused,
    /// out of hours), 503 when we cannot reach an agent (the carrier may fail over).
    pub fn sip_status(self) -> u16 {
        match self {
            RejectReason::InvalidCalledNumber | RejectReason::NoRoute => 404,
            RejectReason::InboundDisabled => 403,
            RejectReason::Paused | RejectReason::OutsideSchedule => 480,
            RejectReason::RuntimeMissing | RejectReason::RuntimeNotReady => 503,
        }
    }

    /// The reason phrase to send with [`RejectReason::sip_status`].
    pub fn sip_reason_phrase(self) -> &'static str {
        match self.sip_status() {
            403 => "Forbidden",
            404 => "Not Found",
            480 => "Temporarily Unavailable",
            _ => "Service Unavailable",
        }
    }

    /// The default `Retry-After` hint in seconds; [`Reject::retry_after`] refines it with the
    /// call's details (time to the next opening, runtime status).
    pub fn retry_after(self) -> Option<u32> {
        match self {
            RejectReason::RuntimeNotReady => Some(RUNTIME_PROVISIONING_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// A stable snake_case label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidCalledNumber => "invalid_called_number",
            RejectReason::NoRoute => "no_route",
            RejectReason::InboundDisabled => "inbound_disabled",
            RejectReason::Paused => "paused",
            RejectReason::OutsideSchedule => "outside_schedule",
            RejectReason::RuntimeMissing => "runtime_missing",
            RejectReason::RuntimeNotReady => "runtime_not_ready",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected call with the details that explain it. Building one allocates nothing.
#[derive(Debug, Clone)]
pub struct Reject {
    pub(crate) reason: RejectReason,
    pub(crate) called: Option<E164>,
    pub(crate) number_error: Option<NumberError>,
    pub(crate) deployment: Option<Arc<DeploymentEntry>>,
    pub(crate) app_version: Option<u32>,
    pub(crate) runtime_status: Option<RuntimeStatus>,
    pub(crate) retry_after: Option<u32>,
}

impl Reject {
    pub(crate) fn new(reason: RejectReason) -> Self {
        Self {
            reason,
            called: None,
            number_error: None,
            deployment: None,
            app_version: None,
            runtime_status: None,
            retry_after: None,
        }
    }

    pub fn reason(&self) -> RejectReason {
        self.reason
    }

    pub fn sip_status(&self) -> u16 {
        self.reason.sip_status()
    }

    /// Seconds for a `Retry-After` header: until the schedule next opens (out of hours),
    /// [`RUNTIME_PROVISIONING_RETRY_AFTER_SECS`] for a provisioning runtime, else none.
    pub fn retry_after(&self) -> Option<u32> {
        self.retry_after
    }

    /// The normalised called number, when it was one.
    pub fn called(&self) -> Option<&E164> {
        self.called.as_ref()
    }

    /// Why the called number did not normalise ([`RejectReason::InvalidCalledNumber`]).
    pub fn number_error(&self) -> Option<NumberError> {
        self.number_error
    }

    /// The deployment that owns the number, when one does.
    pub fn deployment_id(&self) -> Option<&str> {
        self.deployment
            .as_deref()
            .map(|d| d.record.deployment_id.as_str())
    }

    pub fn scope(&self) -> Option<&Scope> {
        self.deployment.as_deref().map(|d| &*d.scope)
    }

    /// The app version the call would have gone to (runtime rejections).
    pub fn app_version(&self) -> Option<u32> {
        self.app_version
    }

    /// The runtime's status for [`RejectReason::RuntimeNotReady`].
    pub fn runtime_status(&self) -> Option<RuntimeStatus> {
        self.runtime_status
    }

    /// The schedule that kept the call out ([`RejectReason::OutsideSchedule`]).
    pub fn schedule(&self) -> Option<&Schedule> {
        self.deployment.as_deref().and_then(|d| d.schedule.as_ref())
    }

    /// What an operator needs to know to fix it, in one line.
    pub fn explanation(&self) -> String {
        let called = self
            .called
            .map_or_else(|| "the called number".to_string(), |n| n.to_string());
        let deployment = self.deployment_id().unwrap_or("?");
        let app_id = self
            .deployment
            .as_deref()
            .map_or("?", |d| d.record.app_id.as_str());
        let version = self
            .app_version
            .map_or_else(|| "?".to_string(), |v| v.to_string());
        match self.reason {
            RejectReason::InvalidCalledNumber => match self.number_error {
                Some(error) => format!("the called number is not a phone number: {error}"),
                None => "the called number is not a phone number".to_string(),
            },
            RejectReason::NoRoute => format!("no deployment has {called}; attach it to a deployment's connection_configs"),
            RejectReason::InboundDisabled => {
                format!("deployment {deployment} has {called} but is outbound-only (channel_direction)")
            }
            RejectReason::Paused => format!("deployment {deployment} for {called} is paused; resume it to take calls"),
            RejectReason::OutsideSchedule => {
                let schedule = self.schedule().map_or_else(String::new, |s| s.to_string());
                match self.retry_after {
                    Some(secs) => format!(
                        "deployment {deployment} for {called} takes calls {schedule}; it opens again in {}h{:02}m",
                        secs / 3600,
                        secs % 3600 / 60
                    ),
                    None => format!("deployment {deployment} for {called} takes calls {schedule}"),
                }
            }
            RejectReason::RuntimeMissing => format!(
                "deployment {deployment} for {called} routes to {app_id} v{version}, which is not registered; register the app version or change app_version/the split"
            ),
            RejectReason::RuntimeNotReady => {
                let status = match self.runtime_status {
                    Some(RuntimeStatus::Provisioning) => "still provisioning",
                    Some(RuntimeStatus::Error) => "in error",
                    _ => "not ready",
                };
                format!("deployment {deployment} for {called} routes to {app_id} v{version}, whose runtime is {status}")
            }
        }
    }
}

impl PartialEq for Reject {
    fn eq(&self, other: &Self) -> bool {
        self.reason == other.reason
            && self.called == other.called
            && self.number_error == other.number_error
            && self.deployment_id() == other.deployment_id()
            && self.scope() == other.scope()
            && self.app_version == other.app_version
            && self.runtime_status == other.runtime_status
            && self.retry_after == other.retry_after
    }
}
