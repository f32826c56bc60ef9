//! Integration tests of switchboard-store against real databases: a SQLite file in a temp
//! dir, and PostgreSQL when `SWITCHBOARD_TEST_POSTGRES_URL` is set (`eval "$(tests/pg.sh
//! start)"`; required when `CI` is set). The suite in `suite.rs` is written once and run per
//! backend; `multi_gateway.rs` holds PostgreSQL-only behaviour, `crash.rs` the kill -9 tests.

mod crash;
mod multi_gateway;
mod suite;
mod support;
mod upgrade;

use std::time::Duration;

/// Bound on waiting for a change notice from another instance (the "within 1 s").
/// A bound that turns a hang into a failure, not a latency measurement.
pub const NOTICE_BOUND: Duration = Duration::from_secs(1);

/// Runs each named `suite` function against a fresh SQLite file and a fresh PostgreSQL database.
macro_rules! backend_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    let db = crate::support::TestDb::sqlite()?;
                    crate::suite::$name(&db.url).await?;
                    db.finish().await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    let Some(db) = crate::support::TestDb::postgres().await? else { return Ok(()) };
                    crate::suite::$name(&db.url).await?;
                    db.finish().await
                }
            )*
        }
    };
}

backend_suite!(
    deployments_round_trip,
    numbers_belong_to_one_deployment,
    connections_versions_and_splits,
    latest_cohort_wins,
    deleting_a_deployment_removes_its_cohorts,
    settings_round_trip,
    load_all_returns_everything,
    reopen_persists_and_migrations_are_idempotent,
    own_writes_are_not_echoed,
    damaged_databases_fail_cleanly,
    outbox_survives_reopen_and_leases_rows,
);
