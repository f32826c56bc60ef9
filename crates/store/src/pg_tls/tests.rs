//! `sslmode`/`sslrootcert` parsing, and (when `tests/pg.sh` runs a TLS-enabled PostgreSQL and
//! `SWITCHBOARD_TEST_POSTGRES_URL` carries its `sslrootcert`) real connections in each mode.

use std::path::PathBuf;

use super::*;

#[test]
fn tls_parameters_are_taken_out_of_the_url() {
    let (rest, mode, root) = take_tls_params(
        "postgres://u@db:5432/x?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca%20b.pem",
    )
    .unwrap();
    assert_eq!(rest, "postgres://u@db:5432/x?connect_timeout=5");
    assert_eq!(mode, Mode::VerifyFull);
    assert_eq!(root, Some(PathBuf::from("/tmp/ca b.pem")));
    let (rest, mode, root) = take_tls_params("postgres://u@db/x").unwrap();
    assert_eq!(
        (rest.as_str(), mode, root),
        ("postgres://u@db/x", Mode::Prefer, None)
    );
}

#[test]
fn bad_tls_parameters_are_refused_with_the_reason() {
    let reason = |url: &str| match parse(url) {
        Err(StoreError::InvalidUrl { reason }) => reason,
        other => panic!("{url}: {other:?}"),
    };
    assert!(reason("postgres://u@h/x?sslmode=verify").contains("verify-full"));
    assert!(reason("postgres://u@h/x?sslmode=verify-full").contains("needs sslrootcert"));
    assert!(reason("postgres://u@h/x?sslmode=verify-ca").contains("needs sslrootcert"));
    assert!(
        reason("postgres://u@h/x?sslmode=require&sslrootcert=/nonexistent.pem")
            .contains("/nonexistent.pem")
    );
    assert!(reason("postgres://u@h/x?sslrootcert=%zz").contains("percent"));
    for mode in ["disable", "prefer", "require"] {
        assert!(
            parse(&format!("postgres://u@h/x?sslmode={mode}")).is_ok(),
            "{mode}"
        );
    }
}

/// The test server's url (with `sslrootcert`), or `None` to skip.
fn tls_server() -> Option<(String, PathBuf)> {
    let url = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").ok()?;
    let (_, _, root) = take_tls_params(&url).ok()?;
    let Some(root) = root else {
        println!(
            "skipped: SWITCHBOARD_TEST_POSTGRES_URL has no sslrootcert (tests/pg.sh makes one)"
        );
        return None;
    };
    let base = url
        .split_once('?')
        .map_or(url.as_str(), |(b, _)| b)
        .to_owned();
    Some((base, root))
}

/// Connects to `url` and asks the server whether this session is encrypted.
async fn session_is_tls(url: &str) -> Result<bool, StoreError> {
    let (config, tls) = parse(url)?;
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| invalid(format!("{e:?}")))?;
    let driver = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| invalid(e.to_string()))?;
    drop(client);
    let _ = driver.await;
    Ok(row.get(0))
}

#[tokio::test]
async fn each_sslmode_against_a_tls_server() {
    let Some((base, root)) = tls_server() else {
        return;
    };
    let root = root.display().to_string();
    // The server certificate names 127.0.0.1 only (tests/pg.sh), so `localhost` is a
    // name mismatch.
    let by_name = base.replacen("127.0.0.1", "localhost", 1);
    assert!(
        session_is_tls(&format!("{base}?sslmode=verify-full&sslrootcert={root}"))
            .await
            .unwrap()
    );
    assert!(!session_is_tls(&format!("{base}?sslmode=disable"))
        .await
        .unwrap());
    assert!(session_is_tls(&format!("{base}?sslmode=prefer"))
        .await
        .unwrap());
    assert!(session_is_tls(&format!("{base}?sslmode=require"))
        .await
        .unwrap());
    assert!(
        session_is_tls(&format!("{by_name}?sslmode=verify-ca&sslrootcert={root}"))
            .await
            .unwrap()
    );
    let mismatch =
        session_is_tls(&format!("{by_name}?sslmode=verify-full&sslrootcert={root}")).await;
    assert!(
        format!("{mismatch:?}").contains("NotValidForName"),
        "{mismatch:?}"
    );
    // The server's own certificate is no CA: the chain does not verify.
    let server_cert = PathBuf::from(&root).with_file_name("server.crt");
    let untrusted = session_is_tls(&format!(
        "{base}?sslmode=verify-ca&sslrootcert={}",
        server_cert.display()
    ))
    .await;
    assert!(untrusted.is_err(), "{untrusted:?}");
}
