//! deploy/: the alert rules pass `promtool check rules` (Debian package `prometheus`; skipped
//! with a notice without it, outside CI), the dashboard is valid JSON, every switchboard config
//! shipped there parses, and the orchestrators wait longer than the drain's grace period.

use std::path::{Path, PathBuf};
use std::process::Command;

use switchboard::config::Config;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn promtool_accepts_the_alert_rules() {
    if Command::new("promtool").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is required in CI (Debian package prometheus)"
        );
        eprintln!("skipped: promtool not found (Debian package prometheus)");
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy().join("prometheus/alerts.yml"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_dashboard_is_grafana_json_with_panels() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/switchboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(targets
            .iter()
            .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())));
    }
}

/// The `[shutdown] grace_period_secs` of a config text.
fn grace_period(toml_text: &str) -> u64 {
    Config::from_toml_str(toml_text)
        .unwrap_or_else(|e| panic!("{e}\n{toml_text}"))
        .shutdown
        .grace_period_secs
}

/// The number after `key` (e.g. `terminationGracePeriodSeconds:` in `…Seconds: 330`).
fn number_after(text: &str, key: &str) -> u64 {
    let rest = &text[text.find(key).unwrap_or_else(|| panic!("no {key}")) + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key}"))
}

#[test]
fn shipped_configs_parse_and_orchestrators_outwait_the_grace_period() {
    let compose_config = grace_period(&read("config/switchboard.toml"));
    let manifests = read("kubernetes/switchboard.yaml");
    // The ConfigMap's switchboard.toml: the indented block after `switchboard.toml: |`.
    let block: String = manifests
        .split_once("switchboard.toml: |\n")
        .unwrap()
        .1
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let k8s_config = grace_period(&block);
    let k8s_wait = number_after(&manifests, "terminationGracePeriodSeconds:");
    assert!(k8s_wait > k8s_config, "{k8s_wait} <= {k8s_config}");
    let compose = read("compose.yaml");
    assert!(number_after(&compose, "stop_grace_period:") > compose_config);
    let unit = read("switchboard.service");
    assert!(
        number_after(&unit, "\nTimeoutStopSec=") > Config::default().shutdown.grace_period_secs
    );
    assert!(unit.contains("KillSignal=SIGTERM"));
}
