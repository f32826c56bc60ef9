//! Versioned schema migrations, embedded in the binary, one list per SQL dialect.
//!
//! Each backend keeps a `schema_version` table with one row per applied migration and, on
//! open, applies the missing ones in order inside one transaction (PostgreSQL additionally
//! takes an advisory lock so gateways starting together do not race). A database already at a
//! newer version than this build knows is refused. Never edit a released migration: append one.

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
