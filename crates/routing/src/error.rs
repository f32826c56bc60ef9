//! The crate's one error type.

use crate::model::Scope;
use crate::number::NumberError;

/// Why a schedule, a traffic split or a change to the routing table was refused. Carries the
/// offending values so the admin API can name them in its 422 body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    #[error("{field} {value:?} is not a valid \"HH:MM\" time")]
    InvalidTime { field: &'static str, value: String },
    #[error("{day:?} is not a day name (Monday … Sunday)")]
    UnknownDay { day: String },
    #[error("allowed_days is empty, so the deployment would never take a call; pause it instead")]
    NoAllowedDays,
    #[error("{timezone:?} is not an IANA time zone name")]
    UnknownTimezone { timezone: String },
    #[error("{what} {number:?} is not a phone number: {reason}")]
    InvalidNumber {
        what: &'static str,
        number: String,
        reason: NumberError,
    },
    #[error("default country code {value:?} is invalid: {reason}")]
    InvalidCountryCode { value: String, reason: NumberError },
    #[error("phone number {number} already belongs to deployment {owner_deployment_id}, so deployment {deployment_id} cannot use it")]
    DuplicateNumber {
        number: String,
        deployment_id: String,
        owner_deployment_id: String,
    },
    #[error(
        "deployment {deployment_id} has {count} connection configs; at most {max} are supported"
    )]
    TooManyConnections {
        deployment_id: String,
        count: usize,
        max: usize,
    },
    #[error("traffic split for {app_id} has no versions")]
    EmptySplit { app_id: String },
    #[error("traffic split for {app_id}: version {version} has percentage {percentage}, outside 0..=100")]
    SplitPercentageOutOfRange {
        app_id: String,
        version: u32,
        percentage: f64,
    },
    #[error("traffic split for {app_id}: the percentages total {total}, not 100")]
    SplitTotalNot100 { app_id: String, total: f64 },
    #[error("deployment {deployment_id} does not exist in {}/{}", scope.org_id, scope.workspace_id)]
    UnknownDeployment { scope: Scope, deployment_id: String },
    #[error("deployment {deployment_id}: {source}")]
    InDeployment {
        deployment_id: String,
        #[source]
        source: Box<RoutingError>,
    },
}
