//! Every file in `config/` parses (unknown keys would fail), the example documents every key,
//! and a bad config makes the binary list every problem and exit 64.

use std::path::PathBuf;

use switchboard::config::Config;

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

#[test]
fn every_file_in_config_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(config_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(Some(&path), std::iter::empty())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected the example and minimal configs, found {seen}"
    );
}

#[test]
fn the_example_sets_every_key() {
    let example: toml::Table =
        std::fs::read_to_string(config_dir().join("switchboard.example.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    for (section, keys) in &defaults {
        let keys = keys.as_table().unwrap();
        for key in keys.keys() {
            assert!(
                example.get(section).and_then(|s| s.get(key)).is_some(),
                "config/switchboard.example.toml does not document [{section}] {key}"
            );
        }
    }
    // ...and sets them to the embedded defaults, so it doubles as their reference.
    let parsed = Config::load(
        Some(&config_dir().join("switchboard.example.toml")),
        std::iter::empty(),
    )
    .unwrap();
    let mut without_keys = parsed.clone();
    without_keys.admin.scoped_keys.clear();
    assert_eq!(without_keys, Config::default());
}

#[test]
fn a_bad_config_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[sip]\nudp = \"not-an-address\"\ntypo = 1\n[admin]\nmax_body_bytes = \"big\"\n[media]\nrtp_ports = \"9-3\"\n[routing]\ndefault_country_code = \"+91\"\n[extra]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "extra",
        "sip.udp",
        "sip.typo",
        "admin.max_body_bytes",
        "media.rtp_ports",
        "routing.default_country_code",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    // A bad environment override is reported the same way; a good file then passes.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[admin]\napi_keys = [\"k\"]\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--check-config", "--config"])
        .arg(&good)
        .env("SWITCHBOARD_ADMIN_LISTEN", "nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SWITCHBOARD_ADMIN_LISTEN"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown arguments are usage errors too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn help_and_version_print_on_stdout_and_exit_0() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .output()
            .unwrap()
    };
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["--config", "check-config", "SIGTERM", "SWITCHBOARD_"] {
        assert!(text.contains(word), "{word} missing from --help:\n{text}");
    }
    let version = run(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("switchboard {}", env!("CARGO_PKG_VERSION"))
    );
    // The subcommand checks like the old flag: every problem listed, exit 64; a good file 0.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[log]\nformat = \"xml\"\nlevel = \"[[\"\n[shutdown]\ntypo = 1\n",
    )
    .unwrap();
    let out = run(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["log.format", "log.level", "shutdown.typo"] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    let example = config_dir().join("switchboard.example.toml");
    let out = run(&["check-config", "-c", example.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
