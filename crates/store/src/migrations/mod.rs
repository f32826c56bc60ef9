//! Versioned schema migrations, embedded in the binary, one list per SQL dialect.
//!
//! Each backend keeps a `schema_version` table with one row per applied migration and, on
//! open, applies the missing ones in order inside one transaction (PostgreSQL additionally
//! takes an advisory lock so gateways starting together do not race). A database already at a
//! newer version than this build knows is refused. Never edit a released migration: append one.

use crate::codec;
use crate::db::{query_int, Db, Value};
use crate::StoreError;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "webhook_outbox",
        sql: include_str!("sqlite/0002_webhook_outbox.sql"),
    },
];

pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "webhook_outbox",
        sql: include_str!("postgres/0002_webhook_outbox.sql"),
    },
];

/// The table recording applied versions; the same statement works in both dialects.
pub(crate) const CREATE_SCHEMA_VERSION: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
)";

/// The version the database is at (0 for a new one).
pub(crate) async fn current(db: &mut dyn Db) -> Result<u32, StoreError> {
    let version = query_int(
        db,
        "read schema version",
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        &[],
    )
    .await?;
    codec::to_u32("schema_version", version)
}

/// Brings the database up to the newest of `migrations`, inside the caller's transaction (which
/// the caller commits). A database already past them was written by a newer build: it is
/// refused untouched ([`StoreError::SchemaTooNew`]), never used with a schema we do not know.
pub(crate) async fn apply(db: &mut dyn Db, migrations: &[Migration]) -> Result<(), StoreError> {
    db.execute_batch("create schema_version", CREATE_SCHEMA_VERSION)
        .await?;
    let current = current(db).await?;
    let supported = latest(migrations);
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: i64::from(current),
            supported,
        });
    }
    let backend = db.backend();
    for migration in migrations.iter().filter(|m| m.version > current) {
        db.execute_batch("migrate", migration.sql)
            .await
            .map_err(|err| StoreError::Migration {
                version: migration.version,
                name: migration.name,
                source: Box::new(err),
            })?;
        db.execute(
            "record schema version",
            "INSERT INTO schema_version (version, name) VALUES (?, ?)",
            &[
                Value::Int(i64::from(migration.version)),
                Value::from(migration.name),
            ],
        )
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            %backend,
            "applied migration"
        );
    }
    Ok(())
}

/// The highest version in `migrations`.
pub(crate) fn latest(migrations: &[Migration]) -> u32 {
    migrations.iter().map(|m| m.version).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one_and_both_dialects_agree() {
        for list in [SQLITE, POSTGRES] {
            for (index, migration) in list.iter().enumerate() {
                assert_eq!(migration.version as usize, index + 1, "{}", migration.name);
            }
        }
        assert_eq!(latest(SQLITE), latest(POSTGRES));
    }
}
