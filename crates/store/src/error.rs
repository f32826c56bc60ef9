//! The one error type of this crate.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;

use crate::RecordKind;

/// A boxed error from a database driver, kept as the `source` of [`StoreError::Backend`].
pub type BoxedError = Box<dyn StdError + Send + Sync + 'static>;

/// Which database a [`StoreError::Backend`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        })
    }
}

/// Everything a [`crate::Store`] call can fail with.
///
/// The first four variants are answers about the data (the admin API maps them to 404/409);
/// the rest mean the store itself is unwell (a 500/503 and a log line).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record a write refers to does not exist (in this scope).
    #[error("{kind} {id:?} not found")]
    NotFound { kind: RecordKind, id: String },

    /// An insert found a record with the same key.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: RecordKind, id: String },

    /// A deployment claims a phone number that another deployment already owns.
    #[error("phone number {phone_number} already belongs to deployment {deployment_id:?}")]
    NumberTaken {
        phone_number: String,
        deployment_id: String,
    },

    /// A cohort member's phone number is not normalised E.164 (`+` and digits).
    #[error("phone number {phone_number:?} is not normalised E.164")]
    InvalidPhoneNumber { phone_number: String },

    /// A number or size does not fit the database's integer type.
    #[error("{field} = {value} is out of range for the store")]
    OutOfRange { field: &'static str, value: String },

    /// The url names no supported backend.
    #[error("unsupported store url {url:?}: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl { url: String },

    /// The url names a supported backend but cannot be parsed.
    #[error("invalid store url: {reason}")]
    InvalidUrl { reason: String },

    /// The database directory could not be created.
    #[error("cannot create directory {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The database driver failed (connection lost, disk full, lock timeout, ...).
    #[error("{backend} failed to {operation}: {source}")]
    Backend {
        backend: BackendKind,
        operation: &'static str,
        #[source]
        source: BoxedError,
    },

    /// A schema migration failed; the database is left at the previous version.
    #[error("migration to schema version {version} ({name}) failed: {source}")]
    Migration {
        version: u32,
        name: &'static str,
        #[source]
        source: BoxedError,
    },

    /// The database was migrated by a newer build; refusing to run against a schema we do not know.
    #[error("database schema version {found} is newer than the {supported} this build supports")]
    SchemaTooNew { found: i64, supported: u32 },

    /// A stored document no longer decodes as its domain type.
    #[error("stored {kind} {id:?} does not decode: {source}")]
    Corrupt {
        kind: RecordKind,
        id: String,
        #[source]
        source: serde_json::Error,
    },

    /// A domain value could not be serialised to JSON.
    #[error("cannot encode {kind} {id:?}: {source}")]
    Encode {
        kind: RecordKind,
        id: String,
        #[source]
        source: serde_json::Error,
    },

    /// The blocking task running a SQLite call panicked or was cancelled.
    #[error("store task failed: {reason}")]
    TaskFailed { reason: String },
}

impl StoreError {
    pub(crate) fn sqlite(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Backend {
            backend: BackendKind::Sqlite,
            operation,
            source: Box::new(source),
        }
    }

    pub(crate) fn postgres(
        operation: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        move |source| StoreError::Backend {
            backend: BackendKind::Postgres,
            operation,
            source: Box::new(source),
        }
    }
}

/// Attaches the failed operation to a driver error: `stmt.execute(..).ctx("insert deployment")?`.
pub(crate) trait Context<T> {
    fn ctx(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn ctx(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(StoreError::sqlite(operation))
    }
}

impl<T> Context<T> for Result<T, tokio_postgres::Error> {
    fn ctx(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(StoreError::postgres(operation))
    }
}
