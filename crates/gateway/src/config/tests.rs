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

/// Writes a self-signed certificate and key (openssl CLI) as `<name>.pem`/`<name>.key`;
/// `None` (with a notice) when openssl is missing.
fn self_signed(dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Some((cert, key)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "openssl is required in CI"
            );
            eprintln!("skipped: openssl not found");
            None
        }
    }
}

#[test]
fn every_tls_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cert_a, _key_a)) = self_signed(dir.path(), "a") else {
        return;
    };
    let Some((_cert_b, key_b)) = self_signed(dir.path(), "b") else {
        return;
    };
    let missing = dir.path().join("missing.pem");
    let text = format!(
        r#"
        [sip]
        tls = "0.0.0.0:5061"
        tls_cert = "{cert_a}"
        tls_key = "{key_b}"
        tls_client_ca = "{missing}"
        [admin]
        tls_cert = "{missing}"
    "#,
        cert_a = cert_a.display(),
        key_b = key_b.display(),
        missing = missing.display(),
    );
    let errs = Config::from_toml_str(&text).unwrap_err().0;
    let found: Vec<(&str, &str)> = errs
        .iter()
        .map(|e| (e.key.as_str(), e.message.as_str()))
        .collect();
    let has = |key: &str, words: &str| found.iter().any(|(k, m)| *k == key && m.contains(words));
    assert!(has("sip.tls_key", "does not belong"), "{found:?}");
    assert!(has("sip.tls_client_ca", "missing.pem"), "{found:?}");
    assert!(has("admin.tls_cert", "missing.pem"), "{found:?}");
    assert!(has("admin.tls_key", "required"), "{found:?}");
    assert_eq!(errs.len(), 4, "{found:?}");

    // `tls` without a certificate, and a certificate without `tls`.
    let errs = Config::from_toml_str("[sip]\ntls = \"0.0.0.0:5061\"")
        .unwrap_err()
        .0;
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["sip.tls_cert", "sip.tls_key"]);
    let text = format!(
        "[sip]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        cert_a.display(),
        dir.path().join("a.key").display()
    );
    let errs = Config::from_toml_str(&text).unwrap_err().0;
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["sip.tls"]);

    // A matching pair, from the environment like any other key.
    let c = Config::load(
        None,
        env(&[
            ("SWITCHBOARD_SIP_TLS", "127.0.0.1:5061"),
            ("SWITCHBOARD_SIP_TLS_CERT", cert_a.to_str().unwrap()),
            (
                "SWITCHBOARD_SIP_TLS_KEY",
                dir.path().join("a.key").to_str().unwrap(),
            ),
        ]),
    )
    .unwrap();
    assert_eq!(c.sip.tls, Some("127.0.0.1:5061".parse().unwrap()));
}
