//! Test databases and record builders.

use std::collections::BTreeMap;

use anyhow::Context as _;
use switchboard_routing::model::{
    AppOverrides, AppVersion, ChannelDirection, CohortMember, Connection, ConnectionConfig,
    Deployment, DeploymentStatus, InboundConfig, RuntimeStatus, Scope,
};
use tempfile::TempDir;
use tokio_postgres::NoTls;

/// Where the PostgreSQL tests connect: set by `eval "$(tests/pg.sh start)"`.
pub const POSTGRES_URL_ENV: &str = "SWITCHBOARD_TEST_POSTGRES_URL";

/// The PostgreSQL url to test against, or `None` (with a notice) to skip. In CI the variable
/// is required: a skipped PostgreSQL suite there would hide a broken backend.
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{POSTGRES_URL_ENV} must be set in CI: run `eval \"$(tests/pg.sh start)\"` first"
            );
            println!("skipped: {POSTGRES_URL_ENV} not set");
            None
        }
    }
}

/// A fresh, empty database: a SQLite file in a temp dir, or a new PostgreSQL database created
/// beside the one `SWITCHBOARD_TEST_POSTGRES_URL` names (tests run in parallel and phone
/// numbers are global, so each test needs its own).
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    _dir: Option<TempDir>,
    postgres: Option<(String, String)>, // (admin url, database name)
}

impl TestDb {
    pub fn sqlite() -> anyhow::Result<TestDb> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        Ok(TestDb {
            url,
            _dir: Some(dir),
            postgres: None,
        })
    }

    pub async fn postgres() -> anyhow::Result<Option<TestDb>> {
        let Some(admin_url) = postgres_url() else {
            return Ok(None);
        };
        let name = format!("sb_test_{:016x}", rand::random::<u64>());
        admin_execute(&admin_url, &format!("CREATE DATABASE {name}")).await?;
        let url = with_database(&admin_url, &name)?;
        Ok(Some(TestDb {
            url,
            _dir: None,
            postgres: Some((admin_url, name)),
        }))
    }

    /// Drops the PostgreSQL database (closing any connection still open on it).
    pub async fn finish(self) -> anyhow::Result<()> {
        if let Some((admin_url, name)) = &self.postgres {
            admin_execute(
                admin_url,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await?;
        }
        Ok(())
    }
}

/// Runs one statement on the database `url` names (over a plain connection: `sslmode` and
/// `sslrootcert`, which only the store understands in full, are left out).
pub async fn admin_execute(url: &str, sql: &str) -> anyhow::Result<u64> {
    let plain = without_tls_params(url);
    let (client, connection) = tokio_postgres::connect(&plain, NoTls)
        .await
        .with_context(|| format!("connect for {sql:?}"))?;
    let driver = tokio::spawn(connection);
    let rows = client
        .execute(sql, &[])
        .await
        .with_context(|| sql.to_owned())?;
    drop(client);
    let _ = driver.await;
    Ok(rows)
}

/// Runs raw SQL (one or several `;`-separated statements) on a store's database behind its
/// back: to damage it on purpose, or to build it as an older build left it.
pub async fn execute_sql(store_url: &str, sql: &str) -> anyhow::Result<()> {
    match store_url.strip_prefix("sqlite://") {
        Some(path) => {
            let conn = rusqlite::Connection::open(path)?;
            conn.execute_batch(sql)?;
        }
        None => {
            let plain = without_tls_params(store_url);
            let (client, connection) = tokio_postgres::connect(&plain, NoTls).await?;
            let driver = tokio::spawn(connection);
            client
                .batch_execute(sql)
                .await
                .with_context(|| sql.to_owned())?;
            drop(client);
            let _ = driver.await;
        }
    }
    Ok(())
}

/// The integer `sql` selects, read behind the store's back.
pub async fn query_int(store_url: &str, sql: &str) -> anyhow::Result<i64> {
    match store_url.strip_prefix("sqlite://") {
        Some(path) => {
            let conn = rusqlite::Connection::open(path)?;
            Ok(conn.query_row(sql, [], |row| row.get(0))?)
        }
        None => {
            let plain = without_tls_params(store_url);
            let (client, connection) = tokio_postgres::connect(&plain, NoTls).await?;
            let driver = tokio::spawn(connection);
            let row = client
                .query_one(sql, &[])
                .await
                .with_context(|| sql.to_owned())?;
            let value: i64 = row.try_get(0)?;
            drop(client);
            let _ = driver.await;
            Ok(value)
        }
    }
}

/// `url` without its `sslmode` and `sslrootcert` query parameters.
fn without_tls_params(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.starts_with("sslmode=") && !p.starts_with("sslrootcert="))
        .collect();
    match kept.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", kept.join("&")),
    }
}

/// `url` with its database name replaced by `database` (query parameters kept).
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").context("postgres url without scheme")? + 3;
    let (base, query) = match url.find('?') {
        Some(at) => (&url[..at], &url[at..]),
        None => (url, ""),
    };
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |at| scheme_end + at);
    Ok(format!("{}/{database}{query}", &base[..authority_end]))
}

pub fn scope(org: &str) -> Scope {
    Scope::new(org, "ws-1")
}

pub fn deployment(id: &str, numbers: &[&str]) -> Deployment {
    Deployment {
        deployment_id: id.to_owned(),
        name: format!("deployment {id}"),
        description: Some("test".into()),
        app_id: "app-1".into(),
        app_version: 1,
        connection_configs: vec![ConnectionConfig {
            connection_id: "trunk-1".into(),
            phone_numbers: numbers.iter().map(|n| (*n).to_owned()).collect(),
        }],
        channel_direction: ChannelDirection::Inbound,
        status: DeploymentStatus::Active,
        inbound_config: Some(InboundConfig {
            start_time: "09:00".into(),
            end_time: "18:00".into(),
            allowed_days: vec!["Monday".into(), "Friday".into()],
            timezone: "Asia/Kolkata".into(),
        }),
        webhook_config: None,
        created_by: "tester".into(),
        created_at: "2025-01-01T00:00:00Z".into(),
        updated_by: "tester".into(),
        updated_at: "2025-01-01T00:00:00Z".into(),
    }
}

pub fn connection(id: &str) -> Connection {
    Connection {
        connection_id: id.to_owned(),
        allowed_addresses: vec!["203.0.113.0/24".parse().expect("valid net")],
        media_addresses: vec!["198.51.100.0/25".parse().expect("valid net")],
        digest: None,
        provider: Some("exotel".into()),
        max_calls_per_second: Some(50),
        media_encryption: Default::default(),
        headers_to_parameters: Default::default(),
        include_headers: Default::default(),
        transfer: Default::default(),
    }
}

pub fn app_version(app_id: &str, version: u32) -> AppVersion {
    AppVersion {
        app_id: app_id.to_owned(),
        version,
        runtime_url: format!("ws://127.0.0.1:9/{app_id}/{version}"),
        dialect: switchboard_routing::model::Dialect::Twilio,
        status: RuntimeStatus::Provisioning,
        status_detail: None,
    }
}

pub fn member(phone: &str, user: &str) -> CohortMember {
    CohortMember {
        phone_number: phone.to_owned(),
        user_identifier: user.to_owned(),
        app_variables: BTreeMap::from([("customer_name".to_owned(), format!("name of {user}"))]),
        app_overrides: AppOverrides {
            initial_language_name: Some("hi".into()),
            ..AppOverrides::default()
        },
    }
}

#[test]
fn database_name_is_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u@h:5/old", "new").unwrap(),
        "postgres://u@h:5/new"
    );
    assert_eq!(
        with_database("postgres://u@h:5", "new").unwrap(),
        "postgres://u@h:5/new"
    );
    assert_eq!(
        with_database("postgresql://u:p@h/old?sslmode=disable", "new").unwrap(),
        "postgresql://u:p@h/new?sslmode=disable"
    );
}
