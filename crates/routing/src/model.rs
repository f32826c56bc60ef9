//! The domain model, in the JSON shapes of the public API pages (`shared/seeds`).
//!
//! These types are the contract between the admin API (which validates and serialises them),
//! the store (which persists them) and the routing snapshot (which compiles them for lookup).
//! They carry no org/workspace: every stored record is paired with a [`Scope`].

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The org and workspace a record belongs to. Phone numbers are global (a carrier number rings
/// in one place); everything else is looked up within its scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    pub org_id: String,
    pub workspace_id: String,
}

impl Scope {
    pub fn new(org_id: impl Into<String>, workspace_id: impl Into<String>) -> Self {
        Self {
            org_id: org_id.into(),
            workspace_id: workspace_id.into(),
        }
    }
}

/// Seed 000/001/002: agent + phone numbers + schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub deployment_id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub app_id: String,
    pub app_version: u32,
    pub connection_configs: Vec<ConnectionConfig>,
    pub channel_direction: ChannelDirection,
    pub status: DeploymentStatus,
    /// Absent means the deployment takes calls 24/7.
    #[serde(default)]
    pub inbound_config: Option<InboundConfig>,
    /// Where call events are POSTed (issue 12). Absent: no webhooks. Its secret is stored
    /// but never shown by the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Boxed: most deployments have none, and `Deployment` travels inside every `Change`.
    pub webhook_config: Option<Box<WebhookConfig>>,
    pub created_by: String,
    pub created_at: String,
    pub updated_by: String,
    pub updated_at: String,
}

/// A deployment's webhook: each event named in `events` is POSTed to `url`, signed with
/// HMAC-SHA256 under `secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// An `http://` URL (the admin API refuses others).
    pub url: String,
    pub secret: String,
    /// Event names (`call.ended`, ...).
    pub events: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub connection_id: String,
    /// Stored normalised to E.164 (`+` and digits).
    pub phone_numbers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelDirection {
    Inbound,
    Outbound,
    InboundOutbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    Active,
    Paused,
}

/// Business hours: `start_time` inclusive, `end_time` exclusive, evaluated in `timezone`.
/// A window whose end is before its start runs overnight (22:00–06:00).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// "HH:MM", 24-hour.
    pub start_time: String,
    /// "HH:MM", 24-hour, exclusive.
    pub end_time: String,
    /// Day names as the seed spells them: "Monday" … "Sunday".
    pub allowed_days: Vec<String>,
    /// IANA name, e.g. "Asia/Kolkata".
    pub timezone: String,
}

/// A trunk: where a carrier's INVITEs may come from and how they authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub connection_id: String,
    pub allowed_addresses: Vec<IpNet>,
    /// Extra networks the carrier's RTP may come from (media servers that are not its
    /// signalling hosts). Strict RTP accepts media only from the SDP address, the INVITE's
    /// source IP and these. Defaults to empty so records stored before the field still load.
    #[serde(default)]
    pub media_addresses: Vec<IpNet>,
    #[serde(default)]
    pub digest: Option<DigestCredentials>,
    #[serde(default)]
    pub provider: Option<String>,
    /// New calls per second this trunk may offer; above it INVITEs get a stateless 503 with
    /// Retry-After. `None`: unlimited (screening and the per-source bucket still apply).
    #[serde(default)]
    pub max_calls_per_second: Option<u32>,
    /// Whether this trunk's media is SRTP (SDES), plain RTP, or whichever it offers. Defaults
    /// to `allow` so records stored before the field still load and behave as before.
    #[serde(default)]
    pub media_encryption: MediaEncryption,
    /// SIP header name -> `start.customParameters` key (`X-Customer-Id` -> `customer_id`).
    /// Defaults to empty so records stored before the field still load.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers_to_parameters: BTreeMap<String, String>,
    /// Which other INVITE headers reach the agent as `sip.h.<lower-case name>`. Defaults to
    /// none: a carrier's headers are the caller's data, passed on only when asked for.
    #[serde(default)]
    pub include_headers: IncludeHeaders,
    /// How an agent's transfer (`<Dial>`, `<Refer>` in a call update) reaches this trunk.
    /// Defaults to `refer` so records stored before the field still load, and because every
    /// carrier that takes SIP trunks takes in-dialog REFER or answers 405/603, which the
    /// agent sees as a failed transfer with the caller still connected.
    #[serde(default)]
    pub transfer: TransferMode,
}

/// A connection's `transfer`: whether agents may transfer its callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    /// Send the carrier an in-dialog REFER (RFC 3515) and follow its NOTIFYs.
    #[default]
    Refer,
    /// Refuse transfer requests (the call update answers 400).
    Disabled,
}

impl TransferMode {
    /// Every value, as the API spells it.
    pub const NAMES: [&'static str; 2] = ["refer", "disabled"];

    pub fn as_str(self) -> &'static str {
        match self {
            TransferMode::Refer => "refer",
            TransferMode::Disabled => "disabled",
        }
    }

    pub fn from_name(name: &str) -> Option<TransferMode> {
        match name {
            "refer" => Some(TransferMode::Refer),
            "disabled" => Some(TransferMode::Disabled),
            _ => None,
        }
    }
}

/// A connection's `include_headers`: which INVITE headers the agent gets as
/// `sip.h.<lower-case name>` parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IncludeHeaders {
    /// Only the headers named in `headers_to_parameters`.
    #[default]
    None,
    /// Every `X-` header.
    XHeaders,
    /// Every header except credentials (`Authorization`, `Proxy-Authorization`).
    All,
}

impl IncludeHeaders {
    /// Every value, as the API spells it.
    pub const NAMES: [&'static str; 3] = ["none", "x-headers", "all"];

    pub fn as_str(self) -> &'static str {
        match self {
            IncludeHeaders::None => "none",
            IncludeHeaders::XHeaders => "x-headers",
            IncludeHeaders::All => "all",
        }
    }

    pub fn from_name(name: &str) -> Option<IncludeHeaders> {
        match name {
            "none" => Some(IncludeHeaders::None),
            "x-headers" => Some(IncludeHeaders::XHeaders),
            "all" => Some(IncludeHeaders::All),
            _ => None,
        }
    }
}

/// A connection's media protection policy (`media_encryption`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaEncryption {
    /// Plain RTP only: an `RTP/SAVP` offer gets 488.
    Disable,
    /// Answer what is offered (SRTP for `RTP/SAVP`, plain for `RTP/AVP`).
    #[default]
    Allow,
    /// SRTP only: a plain offer gets 488.
    Require,
}

impl MediaEncryption {
    /// Every value, as the API spells it.
    pub const NAMES: [&'static str; 3] = ["disable", "allow", "require"];

    pub fn as_str(self) -> &'static str {
        match self {
            MediaEncryption::Disable => "disable",
            MediaEncryption::Allow => "allow",
            MediaEncryption::Require => "require",
        }
    }

    pub fn from_name(name: &str) -> Option<MediaEncryption> {
        match name {
            "disable" => Some(MediaEncryption::Disable),
            "allow" => Some(MediaEncryption::Allow),
            "require" => Some(MediaEncryption::Require),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestCredentials {
    pub username: String,
    pub password: String,
}

/// Seed 004's lifecycle for one agent version's runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeStatus {
    Provisioning,
    Ready,
    Error,
}

/// The Media Streams variant an agent runtime speaks (app version `dialect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Dialect {
    /// Twilio Media Streams as Twilio sends it: 8 kHz µ-law. The default, so records stored
    /// before the field had a choice load as what they were.
    #[default]
    #[serde(rename = "twilio")]
    Twilio,
    /// The same messages carrying 16 kHz 16-bit little-endian linear PCM (`audio/L16`).
    #[serde(rename = "l16-16k")]
    L16Wideband,
}

impl Dialect {
    /// Every dialect, as the API names them.
    pub const ALL: [Dialect; 2] = [Dialect::Twilio, Dialect::L16Wideband];

    /// The API and stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Twilio => "twilio",
            Dialect::L16Wideband => "l16-16k",
        }
    }

    pub fn from_name(name: &str) -> Option<Dialect> {
        Dialect::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

/// One version of an agent (app) and the runtime endpoint that serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppVersion {
    pub app_id: String,
    pub version: u32,
    /// `ws://` or `wss://` URL of the agent runtime.
    pub runtime_url: String,
    /// Media Streams dialect spoken by the runtime.
    #[serde(default)]
    pub dialect: Dialect,
    pub status: RuntimeStatus,
    #[serde(default)]
    pub status_detail: Option<String>,
}

/// Seed 003: per agent, a percentage split of traffic across its versions ("branches").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficSplit {
    pub app_id: String,
    /// version → percentage (0..=100); the values total 100.
    pub percentages: BTreeMap<u32, f64>,
}

/// The seed's `app_overrides`: what a cohort row may change about the agent's start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_bot_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_state_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_language_name: Option<String>,
}

/// One caller's personalisation within a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortMember {
    /// Normalised E.164.
    pub phone_number: String,
    pub user_identifier: String,
    #[serde(default)]
    pub app_variables: BTreeMap<String, String>,
    #[serde(default)]
    pub app_overrides: AppOverrides,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CohortStatus {
    Processing,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortResult {
    pub total_records: u64,
    pub valid_records: u64,
    pub rejected_records: u64,
}

/// A rejected cohort row and why (1-based row number, header excluded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortRejection {
    pub row: u64,
    pub reason: String,
}

/// An uploaded cohort. `sequence` orders uploads: the latest cohort wins for a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cohort {
    pub cohort_id: String,
    pub deployment_id: String,
    pub name: String,
    pub status: CohortStatus,
    pub result: CohortResult,
    #[serde(default)]
    pub rejections: Vec<CohortRejection>,
    pub sequence: u64,
}

#[cfg(test)]
mod dialect_tests {
    use super::*;

    #[test]
    fn app_versions_stored_without_a_dialect_or_with_either_name_load() {
        let old = r#"{"app_id":"a","version":1,"runtime_url":"ws://x","status":"ready"}"#;
        let v: AppVersion = serde_json::from_str(old).unwrap();
        assert_eq!(v.dialect, Dialect::Twilio);
        for dialect in Dialect::ALL {
            let json = serde_json::to_string(&AppVersion {
                dialect,
                ..v.clone()
            })
            .unwrap();
            assert!(json.contains(&format!(r#""dialect":"{}""#, dialect.as_str())));
            let back: AppVersion = serde_json::from_str(&json).unwrap();
            assert_eq!(back.dialect, dialect);
            assert_eq!(Dialect::from_name(dialect.as_str()), Some(dialect));
        }
        assert_eq!(Dialect::from_name("L16"), None);
    }
}
