//! Defaults, file and environment layering, and every-problem-at-once reporting.
use super::*;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn empty_input_gives_the_documented_defaults() {
    let c = Config::load(None, env(&[])).unwrap();
    assert_eq!(c.admin.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.sip.udp, "0.0.0.0:5060".parse().unwrap());
    assert_eq!(c.store.url, "sqlite://switchboard.db");
    assert_eq!(c.media.rtp_ports, "20000-29999");
    assert_eq!(c.routing.country_code(), None);
    assert_eq!(c.admin.max_connections, 256);
    assert_eq!(c.admin.body_timeout_secs, 30);
}

#[test]
fn every_bad_key_is_reported_at_once() {
    let text = r#"
        [sip]
        udp = "not an address"
        bogus = 1
        [admin]
        max_body_bytes = "big"
        [[admin.scoped_keys]]
        key = "k"
        org_id = "o"
        [[admin.scoped_keys]]
        key = "k2"
        [media]
        rtp_ports = "30000-20000"
        [routing]
        default_country_code = "+91"
        [nonsense]
    "#;
    let errs = Config::from_toml_str(text).unwrap_err().0;
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    for expected in [
        "nonsense",
        "sip.udp",
        "sip.bogus",
        "admin.max_body_bytes",
        "admin.scoped_keys[1]",
        "media.rtp_ports",
        "routing.default_country_code",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
    assert!(!keys.contains(&"admin.scoped_keys[0]"), "{keys:?}");
}

#[test]
fn cross_key_checks_run_when_types_are_right() {
    let errs = Config::from_toml_str(
        "[routing]\ndefault_country_code = \"+91\"\n[store]\nurl = \"mysql://x\"",
    )
    .unwrap_err()
    .0;
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["routing.default_country_code", "store.url"]);
}

#[test]
fn admin_limits_must_be_positive() {
    let errs = Config::from_toml_str("[admin]\nmax_connections = 0\nbody_timeout_secs = 0")
        .unwrap_err()
        .0;
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["admin.max_connections", "admin.body_timeout_secs"]);
}

#[test]
fn environment_overrides_the_file_with_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[admin]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
    let c = Config::load(
        Some(&path),
        env(&[
            ("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD_ADMIN_API_KEYS", "k1, k2"),
            ("SWITCHBOARD_SIP_RATE_LIMIT_BURST", "9"),
            ("SWITCHBOARD_ADMIN_MAX_CONNECTIONS", "16"),
            ("SWITCHBOARD_ADMIN_BODY_TIMEOUT_SECS", "5"),
            ("SWITCHBOARD_ROUTING_DEFAULT_COUNTRY_CODE", "91"),
            ("SWITCHBOARD_LOG", "ignored: not a section"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(c.admin.listen.port(), 0);
    assert_eq!(c.admin.api_keys, [ApiKey::new("k1"), ApiKey::new("k2")]);
    assert_eq!(c.sip.rate_limit_burst, 9);
    assert_eq!(c.admin.max_connections, 16);
    assert_eq!(c.admin.body_timeout_secs, 5);
    assert_eq!(c.routing.country_code(), Some("91"));
}

#[test]
fn bad_environment_values_name_the_variable() {
    let errs = Config::load(
        None,
        env(&[
            ("SWITCHBOARD_SIP_NONCE_TTL_SECS", "soon"),
            ("SWITCHBOARD_SIP_TYPO", "1"),
        ]),
    )
    .unwrap_err()
    .0;
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs.iter()
            .all(|e| e.origin.starts_with("env SWITCHBOARD_SIP_")),
        "{errs:?}"
    );
}

#[test]
fn keys_never_print() {
    let c = Config::from_toml_str("[admin]\napi_keys = [\"sekrit-123\"]").unwrap();
    assert!(!format!("{c:?}").contains("sekrit"));
    assert!(!toml::to_string(&c).unwrap().contains("sekrit"));
}
