//! Configuration: one TOML file, every key optional, every key overridable from the environment.
//!
//! Loading never stops at the first problem: each key of each section is checked on its own, so a
//! file with three typos reports three errors (see [`ConfigErrors`]). Unknown sections and keys
//! are errors (`deny_unknown_fields`), because a misspelt key silently falling back to its default
//! is how a production gateway ends up listening on the wrong port.
//!
//! Precedence: embedded defaults < file (`--config FILE`) < environment
//! (`SWITCHBOARD_<SECTION>_<KEY>`, e.g. `SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:0`). An environment
//! value is read as a string for string-typed keys, and as a TOML value otherwise (numbers,
//! booleans, arrays such as `["k1","k2"]`; a list of strings may also be written `k1,k2`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

mod ops;
mod sip;
pub use ops::{LogConfig, LogFormat, MetricsConfig, ShutdownConfig};
pub use sip::{SipConfig, UntrustedPolicy};
mod events;
pub use events::{EventsConfig, WebhooksConfig};

/// Prefix of environment overrides: `SWITCHBOARD_<SECTION>_<KEY>`.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Section names, as written in the file and in environment overrides.
const SECTIONS: [&str; 10] = [
    "sip", "admin", "store", "media", "routing", "shutdown", "log", "metrics", "events", "webhooks",
];

/// The whole configuration. Every section and key has a default, so an empty file is valid.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub media: MediaConfig,
    pub routing: RoutingConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub events: EventsConfig,
    pub webhooks: WebhooksConfig,
}

/// The admin HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin listener; loopback by default because it changes routing for every call.
    pub listen: SocketAddr,
    /// Keys that reach every org. Empty: one is generated on first start, kept in the store and
    /// printed once to stderr.
    pub api_keys: Vec<ApiKey>,
    /// Keys restricted to one org (and optionally one workspace).
    pub scoped_keys: Vec<ScopedKey>,
    /// Cap on JSON request bodies; larger ones get 413.
    pub max_body_bytes: usize,
    /// Cap on a cohort upload (multipart); larger ones get 413.
    pub max_upload_bytes: u64,
    /// How often every agent version's runtime is re-probed (WebSocket handshake).
    pub probe_interval_secs: u64,
    /// How long one probe may take before the version is marked `error`.
    pub probe_timeout_ms: u64,
    /// Cap on concurrently open admin connections; connections beyond it are closed at accept
    /// (and counted in `switchboard_admin_connections_rejected_total`).
    pub max_connections: usize,
    /// Slow-body bound, seconds. A JSON body must arrive completely within it; a multipart
    /// cohort upload (which may legitimately take minutes) must not stall longer than it
    /// between two reads. Past it the request gets 408 and the connection is closed.
    pub body_timeout_secs: u64,
    /// PEM certificate chain: when set (with `tls_key`), the admin listener speaks HTTPS only.
    /// Re-read on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

/// Default admin listener: loopback, so a fresh install is not reachable from the network.
const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// 1 MiB: a deployment with hundreds of numbers is a few KiB; anything near 1 MiB is abuse.
const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// 256 MiB: a 1,000,000-row cohort CSV with a handful of columns is ~60-100 MB.
const DEFAULT_MAX_UPLOAD_BYTES: u64 = 256 << 20;
/// 30 s: a runtime that went away is noticed well within a minute without probe traffic mattering.
const DEFAULT_PROBE_INTERVAL_SECS: u64 = 30;
/// 3 s: the same budget a call gets to reach its agent (`media.agent_connect_timeout_ms`).
const DEFAULT_PROBE_TIMEOUT_MS: u64 = 3_000;
/// 256: far more than the handful of operators, deploy scripts and Prometheus scrapers that use
/// the admin API at once, yet few enough that connections held open on purpose (slowloris)
/// cannot exhaust the process's file descriptors, which the SIP side needs too.
const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// 30 s: a 1 MiB JSON body (the default cap) arrives in well under a second on any working
/// link, so 30 s only cuts off clients that stall on purpose or are broken; as an upload's gap
/// between reads it tolerates a congested network without holding a dead upload open.
const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN,
            api_keys: Vec::new(),
            scoped_keys: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            probe_interval_secs: DEFAULT_PROBE_INTERVAL_SECS,
            probe_timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            body_timeout_secs: DEFAULT_BODY_TIMEOUT_SECS,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// A key restricted to one org, and to one workspace of it when `workspace_id` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedKey {
    pub key: ApiKey,
    pub org_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
}

/// An API key. `Debug` and `Display` never show it, so it cannot end up in a log line.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The secret itself: only for constant-time comparison and the one-time print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl Serialize for ApiKey {
    /// Serialises redacted: a dumped config never carries keys.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Persistence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path/file.db` (embedded default) or `postgres://…` (many gateways).
    pub url: String,
}

/// Embedded default: a SQLite file in the working directory, so the gateway needs no service.
const DEFAULT_STORE_URL: &str = "sqlite://switchboard.db";

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_STORE_URL.to_owned(),
        }
    }
}

/// RTP and the agent WebSocket (owned by the SIP/media side; add fields with a default + doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Inclusive UDP port range for RTP, written `"20000-29999"` (parsed by the SIP side).
    pub rtp_ports: String,
    /// Address put into SDP answers (`c=` line); what the carrier sends RTP to.
    pub advertised_ip: IpAddr,
    /// No RTP from the caller for this long ends the call with BYE.
    pub timeout_secs: u64,
    /// Budget for reaching the agent runtime before answering; past it the call gets 503.
    pub agent_connect_timeout_ms: u64,
    /// PEM bundle of extra CAs trusted for `wss://` agent runtimes, on top of the system roots
    /// (runtimes behind a private CA). Unset: system roots only.
    pub agent_ca_file: Option<PathBuf>,
}

/// 10,000 ports: 5,000 concurrent calls at one even RTP port (+ RTCP) each.
const DEFAULT_RTP_PORTS: &str = "20000-29999";
/// 30 s: carriers send RTP every 20 ms even in silence; 30 s of nothing is a dead call.
const DEFAULT_MEDIA_TIMEOUT_SECS: u64 = 30;
/// 3 s: callers hear ringing meanwhile; longer and carriers start their own INVITE timeouts.
const DEFAULT_AGENT_CONNECT_TIMEOUT_MS: u64 = 3_000;

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            rtp_ports: DEFAULT_RTP_PORTS.to_owned(),
            advertised_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            timeout_secs: DEFAULT_MEDIA_TIMEOUT_SECS,
            agent_connect_timeout_ms: DEFAULT_AGENT_CONNECT_TIMEOUT_MS,
            agent_ca_file: None,
        }
    }
}

/// Number normalisation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Country code (digits, no `+`) prefixed to national-format numbers, e.g. `"91"`. Empty: none,
    /// so only numbers written in international form are accepted.
    pub default_country_code: String,
}

impl RoutingConfig {
    /// The code as `normalize_number` takes it: `None` when unset.
    pub fn country_code(&self) -> Option<&str> {
        Some(self.default_country_code.as_str()).filter(|c| !c.is_empty())
    }
}

/// One problem in the configuration, located by `section.key` (and where it came from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `"sip.udp"`, `"admin.scoped_keys[1]"`, or `""` for the file as a whole.
    pub key: String,
    /// The file or environment variable the bad value came from.
    pub origin: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key.is_empty() {
            true => write!(f, "{}: {}", self.origin, self.message),
            false => write!(f, "{}: {}: {}", self.origin, self.key, self.message),
        }
    }
}

/// Every problem found while loading, in file order; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Where a value of the merged table came from, for error messages.
#[derive(Debug, Default)]
struct Origins {
    file: Option<PathBuf>,
    /// `(section, key)` → environment variable name.
    env: Vec<((String, String), String)>,
}

impl Origins {
    fn of(&self, section: &str, key: &str) -> String {
        self.env
            .iter()
            .find(|((s, k), _)| s == section && k == key)
            .map(|(_, var)| format!("env {var}"))
            .or_else(|| self.file.as_ref().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "defaults".to_owned())
    }
}

impl Config {
    /// Loads the configuration: defaults, then `path` (if any), then the `SWITCHBOARD_*`
    /// variables of `env` (pass `std::env::vars()`; tests pass their own). Reports every problem.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut origins = Origins {
            file: path.map(Path::to_path_buf),
            env: Vec::new(),
        };
        let mut errors = Vec::new();
        let mut table = match path {
            None => toml::Table::new(),
            Some(p) => match std::fs::read_to_string(p) {
                Err(e) => return Err(single(p.display().to_string(), format!("cannot read: {e}"))),
                Ok(text) => match text.parse::<toml::Table>() {
                    Ok(t) => t,
                    Err(e) => {
                        return Err(single(
                            p.display().to_string(),
                            e.to_string().trim().to_owned(),
                        ))
                    }
                },
            },
        };
        apply_env(&mut table, env, &mut origins, &mut errors);
        let config = check_sections(&table, &origins, &mut errors);
        config.validate(&mut errors);
        match errors.is_empty() {
            true => Ok(config),
            false => Err(ConfigErrors(errors)),
        }
    }

    /// Loads from a TOML string (tests, `--check-config` on stdin in the future).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| single("<string>", e.to_string()))?;
        let origins = Origins::default();
        let mut errors = Vec::new();
        let config = check_sections(&table, &origins, &mut errors);
        config.validate(&mut errors);
        match errors.is_empty() {
            true => Ok(config),
            false => Err(ConfigErrors(errors)),
        }
    }

    /// Checks that hold across keys (types are already right here).
    fn validate(&self, errors: &mut Vec<ConfigError>) {
        let mut bad = |key: &str, message: String| {
            errors.push(ConfigError {
                key: key.to_owned(),
                origin: "config".to_owned(),
                message,
            })
        };
        let cc = &self.routing.default_country_code;
        if !cc.is_empty()
            && (cc.len() > 3 || !cc.bytes().all(|b| b.is_ascii_digit()) || cc.starts_with('0'))
        {
            bad(
                "routing.default_country_code",
                format!("{cc:?} is not a country calling code (1-3 digits, no '+', no leading 0)"),
            );
        }
        if !(self.store.url.starts_with("sqlite://")
            || self.store.url.starts_with("postgres://")
            || self.store.url.starts_with("postgresql://"))
        {
            bad(
                "store.url",
                "must start with sqlite:// or postgres://".to_owned(),
            );
        }
        if !valid_port_range(&self.media.rtp_ports) {
            bad(
                "media.rtp_ports",
                format!(
                    "{:?} is not \"LOW-HIGH\" with 1 <= LOW < HIGH <= 65535",
                    self.media.rtp_ports
                ),
            );
        }
        if let Some(path) = &self.media.agent_ca_file {
            if let Err(e) = switchboard_media::AgentTls::new(Some(path)) {
                bad("media.agent_ca_file", e.to_string());
            }
        }
        if self.sip.max_message_bytes < 1024 {
            bad("sip.max_message_bytes", "must be at least 1024".to_owned());
        }
        if self.sip.rate_limit_per_second == 0 {
            bad("sip.rate_limit_per_second", "must be positive".to_owned());
        }
        if self.sip.rate_limit_burst == 0 {
            bad("sip.rate_limit_burst", "must be positive".to_owned());
        }
        for (key, value) in [
            (
                "sip.ban_digest_failures",
                u64::from(self.sip.ban_digest_failures),
            ),
            (
                "sip.ban_malformed_messages",
                u64::from(self.sip.ban_malformed_messages),
            ),
            ("sip.ban_window_secs", self.sip.ban_window_secs),
            ("sip.transfer_timeout_secs", self.sip.transfer_timeout_secs),
        ] {
            if value == 0 {
                bad(key, "must be positive".to_owned());
            }
        }
        if self.admin.max_body_bytes == 0 {
            bad("admin.max_body_bytes", "must be positive".to_owned());
        }
        if self.admin.probe_interval_secs == 0 {
            bad("admin.probe_interval_secs", "must be positive".to_owned());
        }
        if self.admin.max_connections == 0 {
            bad("admin.max_connections", "must be positive".to_owned());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            bad(
                "log.level",
                format!("{:?} is not a log filter: {e}", self.log.level),
            );
        }
        if self
            .metrics
            .listen
            .is_some_and(|m| m == self.admin.listen && m.port() != 0)
        {
            bad(
                "metrics.listen",
                "must differ from admin.listen (leave it unset to serve metrics there)".to_owned(),
            );
        }
        for (key, value) in [
            ("events.ring_size", self.events.ring_size as u64),
            (
                "events.subscriber_buffer",
                self.events.subscriber_buffer as u64,
            ),
            ("events.keepalive_secs", self.events.keepalive_secs),
            ("webhooks.timeout_ms", self.webhooks.timeout_ms),
            ("webhooks.first_retry_ms", self.webhooks.first_retry_ms),
            ("webhooks.max_retry_secs", self.webhooks.max_retry_secs),
            ("webhooks.max_in_flight", self.webhooks.max_in_flight as u64),
            ("webhooks.queue", self.webhooks.queue as u64),
        ] {
            if value == 0 {
                bad(key, "must be positive".to_owned());
            }
        }
        if self.admin.body_timeout_secs == 0 {
            bad("admin.body_timeout_secs", "must be positive".to_owned());
        }
        let sip = &self.sip;
        if sip.tls.is_some() || sip.tls_cert.is_some() || sip.tls_key.is_some() {
            check_tls_pair(
                "sip",
                sip.tls_cert.as_deref(),
                sip.tls_key.as_deref(),
                &mut bad,
            );
            if sip.tls.is_none() {
                bad(
                    "sip.tls",
                    "tls_cert/tls_key are set but no TLS listener address".to_owned(),
                );
            }
        }
        if let Some(ca) = &sip.tls_client_ca {
            if let Err(e) = crate::tls::read_client_roots(ca) {
                bad("sip.tls_client_ca", e.to_string());
            }
            if sip.tls.is_none() {
                bad("sip.tls_client_ca", "set but [sip] tls is not".to_owned());
            }
        }
        let admin = &self.admin;
        if admin.tls_cert.is_some() || admin.tls_key.is_some() {
            check_tls_pair(
                "admin",
                admin.tls_cert.as_deref(),
                admin.tls_key.as_deref(),
                &mut bad,
            );
        }
        for (i, k) in self.admin.api_keys.iter().enumerate() {
            if k.expose().trim().is_empty() {
                bad(
                    &format!("admin.api_keys[{i}]"),
                    "must not be empty".to_owned(),
                );
            }
        }
        for (i, k) in self.admin.scoped_keys.iter().enumerate() {
            if k.key.expose().trim().is_empty() {
                bad(
                    &format!("admin.scoped_keys[{i}].key"),
                    "must not be empty".to_owned(),
                );
            }
            if k.org_id.is_empty() {
                bad(
                    &format!("admin.scoped_keys[{i}].org_id"),
                    "must not be empty".to_owned(),
                );
            }
        }
    }
}

/// Checks `<section>.tls_cert` and `tls_key`: both present, readable, and belonging together.
/// Each file is read on its own so that a bad certificate and a bad key are both reported.
fn check_tls_pair(
    section: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
    bad: &mut impl FnMut(&str, String),
) {
    let cert_key = format!("{section}.tls_cert");
    let key_key = format!("{section}.tls_key");
    let chain = match cert {
        None => {
            bad(&cert_key, "required for TLS".to_owned());
            None
        }
        Some(path) => crate::tls::read_chain(path)
            .map_err(|e| bad(&cert_key, e.to_string()))
            .ok(),
    };
    let private = match key {
        None => {
            bad(&key_key, "required for TLS".to_owned());
            None
        }
        Some(path) => crate::tls::read_key(path)
            .map_err(|e| bad(&key_key, e.to_string()))
            .ok(),
    };
    if let (Some(_), Some(_), Some(cert), Some(key)) = (chain, private, cert, key) {
        if let Err(e) = crate::tls::load_certified_key(cert, key) {
            bad(&key_key, e.to_string());
        }
    }
}

/// Shape check of `"LOW-HIGH"`; the SIP side's port allocator applies its own stricter rules.
fn valid_port_range(spec: &str) -> bool {
    let Some((low, high)) = spec.split_once('-') else {
        return false;
    };
    match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
        (Ok(low), Ok(high)) => low >= 1 && low < high,
        _ => false,
    }
}

fn single(origin: impl Into<String>, message: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: String::new(),
        origin: origin.into(),
        message: message.into(),
    }])
}

/// Merges `SWITCHBOARD_<SECTION>_<KEY>` variables into `table`. Variables whose section is not
/// one of ours (e.g. `SWITCHBOARD_LOG`) are ignored; unknown keys in our sections are reported by
/// the per-key check like any other unknown key.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    origins: &mut Origins,
    errors: &mut Vec<ConfigError>,
) {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut vars: Vec<(String, String)> = env.into_iter().collect();
    vars.sort();
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        if !SECTIONS.contains(&section.as_str()) {
            continue;
        }
        let default = defaults.get(&section).and_then(|s| s.get(&key));
        let value = match env_value(&raw, default) {
            Ok(v) => v,
            Err(message) => {
                errors.push(ConfigError {
                    key: format!("{section}.{key}"),
                    origin: format!("env {var}"),
                    message,
                });
                continue;
            }
        };
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.clone(), value);
            }
            _ => errors.push(ConfigError {
                key: section.clone(),
                origin: format!("env {var}"),
                message: "section is not a table".to_owned(),
            }),
        }
        origins.env.push(((section, key), var));
    }
}

/// Reads an environment value with the type of the key's default: strings stay raw strings,
/// everything else is a TOML value; a list of strings may also be comma-separated.
fn env_value(raw: &str, default: Option<&toml::Value>) -> Result<toml::Value, String> {
    let as_toml = || {
        format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    match default {
        Some(toml::Value::String(_)) => Ok(toml::Value::String(raw.to_owned())),
        Some(toml::Value::Array(_)) => Ok(as_toml().unwrap_or_else(|| {
            toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            )
        })),
        Some(_) => as_toml().ok_or_else(|| format!("{raw:?} is not a valid value")),
        None => Ok(as_toml().unwrap_or_else(|| toml::Value::String(raw.to_owned()))),
    }
}

/// Deserialises every section, checking each key on its own first so that all bad keys are
/// reported, not just the first one serde meets. Returns the config built from the good keys, so
/// the cross-key checks of [`Config::validate`] still run; the caller discards it when any error
/// was found.
fn check_sections(table: &toml::Table, origins: &Origins, errors: &mut Vec<ConfigError>) -> Config {
    for (name, value) in table {
        if !SECTIONS.contains(&name.as_str()) {
            errors.push(ConfigError {
                key: name.clone(),
                origin: origins.of(name, ""),
                message: format!("unknown section, expected one of {}", SECTIONS.join(", ")),
            });
        } else if !value.is_table() {
            errors.push(ConfigError {
                key: name.clone(),
                origin: origins.of(name, ""),
                message: "must be a table ([section])".to_owned(),
            });
        }
    }
    Config {
        sip: section(table, "sip", origins, errors),
        admin: section(table, "admin", origins, errors),
        store: section(table, "store", origins, errors),
        media: section(table, "media", origins, errors),
        routing: section(table, "routing", origins, errors),
        shutdown: section(table, "shutdown", origins, errors),
        log: section(table, "log", origins, errors),
        metrics: section(table, "metrics", origins, errors),
        events: section(table, "events", origins, errors),
        webhooks: section(table, "webhooks", origins, errors),
    }
}

/// Deserialises one section. Each key is first tried alone against the section's type (all
/// fields default), which isolates type errors and unknown keys; array values are additionally
/// tried one element at a time so `[[admin.scoped_keys]]` entries are reported individually.
/// The section is then built from the keys that passed.
fn section<T: DeserializeOwned + Default>(
    root: &toml::Table,
    name: &str,
    origins: &Origins,
    errors: &mut Vec<ConfigError>,
) -> T {
    let Some(toml::Value::Table(table)) = root.get(name) else {
        return T::default();
    };
    let mut good = toml::Table::new();
    for (key, value) in table {
        let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
        let Err(e) = toml::Value::Table(alone).try_into::<T>() else {
            good.insert(key.clone(), value.clone());
            continue;
        };
        let origin = origins.of(name, key);
        let mut reported = false;
        if let toml::Value::Array(items) = value {
            for (i, item) in items.iter().enumerate() {
                let one =
                    toml::Table::from_iter([(key.clone(), toml::Value::Array(vec![item.clone()]))]);
                if let Err(e) = toml::Value::Table(one).try_into::<T>() {
                    reported = true;
                    errors.push(ConfigError {
                        key: format!("{name}.{key}[{i}]"),
                        origin: origin.clone(),
                        message: clean(&e),
                    });
                }
            }
        }
        if !reported {
            errors.push(ConfigError {
                key: format!("{name}.{key}"),
                origin,
                message: clean(&e),
            });
        }
    }
    toml::Value::Table(good)
        .try_into::<T>()
        .unwrap_or_else(|e| {
            errors.push(ConfigError {
                key: name.to_owned(),
                origin: origins.of(name, ""),
                message: clean(&e),
            });
            T::default()
        })
}

fn clean(e: &toml::de::Error) -> String {
    e.message().trim().replace('\n', " ")
}

#[cfg(test)]
mod tests;
