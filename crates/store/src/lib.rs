//! switchboard-store: durable persistence for the routing data.
//!
//! [`Store::open`] picks a backend from the url:
//! - `sqlite://PATH` — the embedded default: one file, WAL journal, `synchronous=FULL`, so the
//!   gateway runs with no external service. One writer connection (writes are serialised, as
//!   SQLite requires anyway) plus a few reader connections; every call runs on tokio's blocking
//!   pool so the async runtime never waits on disk.
//! - `postgres://…` — for several gateways sharing one database. A small connection pool for
//!   queries and one dedicated `LISTEN` connection: every write sends a `pg_notify` inside its
//!   transaction, so the other gateways learn about it when it commits ([`Store::subscribe`]).
//!
//! Every write is one transaction and returns only after `COMMIT`: an acknowledged write
//! survives a crash. Each write bumps a single revision counter and appends to a change log;
//! the [`Revision`] it returns orders all writes (the counter row serialises writers, so
//! revision order is commit order, with no gaps).
//!
//! Data: deployments, connections, app versions, splits and cohorts are stored as the JSON of
//! their `switchboard_routing::model` type beside the key columns. Phone numbers are claimed
//! in a `deployment_numbers` table whose primary key makes "a number belongs to at most one
//! deployment" a database guarantee ([`StoreError::NumberTaken`]). Cohort members — up to
//! millions — are rows keyed by (deployment, the number's digits as an integer) and upserted,
//! so the latest upload wins; their two small maps are JSON text columns.
//!
//! Following other gateways: subscribe, then `load_all`, then for each notice re-read the
//! record it names (`None` = deleted; [`RecordKind::CohortMembers`] → [`Store::cohort_members_at`]).
//!
//! Layout, from the API down:
//! - `records.rs`: the typed methods of [`Store`]; each names a record (its table descriptor,
//!   owner and key) and runs one generic operation. `outbox.rs`: the webhook outbox's methods.
//! - `docs.rs`: the document layer: one `DocTable` descriptor per record kind (table, owner
//!   columns, key columns, document column, list order, row id, unique claims such as phone
//!   numbers, dependent tables) and every operation's SQL, generated once from it, written once.
//! - `db.rs`: the thin driver interface those operations run on (`execute`, `query` with a
//!   row visitor, `execute_batch`, plus the cohort members' bulk upsert, the one fast path
//!   each driver writes its own way); SQL uses `?` placeholders, rewritten to `$n` for
//!   PostgreSQL.
//! - `sqlite.rs`, `postgres.rs`: driver glue only: connections, transactions, the revision
//!   counter and change log (and, on PostgreSQL, NOTIFY and the listener).
//! - `migrations/`: versioned schema per dialect; `codec.rs`: JSON documents <-> domain types;
//!   `error.rs`: the error enum.
//!
//! Adding a record kind: a migration creating its table (both dialects), a `DocTable` in
//! `docs.rs`, a [`RecordKind`], and its typed methods in `records.rs`.

mod codec;
mod db;
mod docs;
mod error;
mod migrations;
mod outbox;
mod pg_tls;
mod postgres;
mod records;
mod sqlite;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use switchboard_routing::model::{
    AppVersion, CohortMember, Connection, Deployment, Scope, TrafficSplit,
};
use tokio::sync::broadcast;

use crate::db::{Db, Op};

pub use error::{BackendKind, BoxedError, StoreError};
pub use outbox::{NewDelivery, PendingDelivery};
pub use postgres::LISTENER_APPLICATION_NAME;

/// Orders committed writes: every write returns the revision it committed as; a larger
/// revision committed later. Starts at 1 for the first write.
pub type Revision = i64;

/// How many change notices a slow subscriber may fall behind before it sees
/// `RecvError::Lagged` (and should reload everything). A storm of 1,000 admin PATCHes on another
/// gateway fits with room to spare.
pub const NOTICE_CHANNEL_CAPACITY: usize = 4096;

/// How many change-log rows are kept. A listener that reconnects after missing more than this
/// many writes gets a [`RecordKind::Resync`] notice instead of the individual changes.
pub const CHANGE_LOG_RETENTION: i64 = 10_000;

/// What kind of record a change or an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecordKind {
    /// Key: the deployment id.
    Deployment,
    /// Key: the connection id.
    Connection,
    /// Key: `app_id/version`.
    AppVersion,
    /// Key: the app id.
    TrafficSplit,
    /// Key: `deployment_id/cohort_id`.
    Cohort,
    /// Key: the deployment id; the members written are those of [`Store::cohort_members_at`]
    /// the notice's revision.
    CohortMembers,
    /// Key: the setting's key; the scope is empty (settings are global).
    Setting,
    /// Only in notices: changes were missed (the listener was disconnected for longer than the
    /// change log keeps); reload everything with [`Store::load_all`]. Key and scope are empty.
    Resync,
}

impl RecordKind {
    /// The stable name used in the change log and in notification payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Deployment => "deployment",
            RecordKind::Connection => "connection",
            RecordKind::AppVersion => "app_version",
            RecordKind::TrafficSplit => "traffic_split",
            RecordKind::Cohort => "cohort",
            RecordKind::CohortMembers => "cohort_members",
            RecordKind::Setting => "setting",
            RecordKind::Resync => "resync",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of [`RecordKind::as_str`]'s (e.g. written by a newer build).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRecordKind(pub String);

impl FromStr for RecordKind {
    type Err = UnknownRecordKind;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "deployment" => RecordKind::Deployment,
            "connection" => RecordKind::Connection,
            "app_version" => RecordKind::AppVersion,
            "traffic_split" => RecordKind::TrafficSplit,
            "cohort" => RecordKind::Cohort,
            "cohort_members" => RecordKind::CohortMembers,
            "setting" => RecordKind::Setting,
            "resync" => RecordKind::Resync,
            other => return Err(UnknownRecordKind(other.to_owned())),
        })
    }
}

/// A write committed by another gateway instance. Fetch the record by `kind`/`scope`/`key` (a
/// `None` from a getter means it was deleted) and apply it to the routing table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeNotice {
    pub revision: Revision,
    pub kind: RecordKind,
    pub scope: Scope,
    pub key: String,
}

/// Everything needed to build the routing snapshot, read in one consistent snapshot of the
/// database at `revision`. Change notices with a revision `<=` this are already included.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub deployments: Vec<(Scope, Deployment)>,
    pub connections: Vec<(Scope, Connection)>,
    pub app_versions: Vec<(Scope, AppVersion)>,
    pub splits: Vec<(Scope, TrafficSplit)>,
    /// (scope, deployment_id, member).
    pub cohort_members: Vec<(Scope, String, CohortMember)>,
    pub revision: Revision,
}

/// A handle on the database; cheap to clone (all clones share the connections).
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens (creating if needed) the store at `url` and brings its schema up to date.
    ///
    /// `sqlite://PATH` (relative or absolute, e.g. `sqlite:///var/lib/switchboard.db`; the
    /// parent directory is created) or `postgres://user@host:port/db` /
    /// `postgresql://…`. Call once at start, before building the routing snapshot.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let origin = new_instance_id();
        let backend = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreError::InvalidUrl {
                    reason: "sqlite url has no path".into(),
                });
            }
            Backend::Sqlite(sqlite::SqliteStore::open(path.into(), origin).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(postgres::PgStore::open(url, origin).await?)
        } else {
            return Err(StoreError::UnsupportedUrl {
                url: redact_url(url),
            });
        };
        Ok(Store { backend })
    }

    /// Which backend this store uses.
    pub fn backend_kind(&self) -> BackendKind {
        match &self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// The random id of this `Store::open` call; notices carry it so an instance can ignore its
    /// own writes.
    pub fn instance_id(&self) -> &str {
        match &self.backend {
            Backend::Sqlite(backend) => backend.origin(),
            Backend::Postgres(backend) => backend.origin(),
        }
    }

    /// Writes committed by *other* `Store` instances (other gateways) on the same PostgreSQL
    /// database; this instance's own writes are not echoed.
    ///
    /// Subscribe before [`Store::load_all`], then skip notices whose revision is `<=` the
    /// dataset's. A receiver that reports `Lagged`, or a [`RecordKind::Resync`] notice, means
    /// changes were missed: reload everything.
    ///
    /// With SQLite there is one gateway per database file, so the receiver never yields (it
    /// stays open, pending, for as long as the store lives).
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeNotice> {
        match &self.backend {
            Backend::Sqlite(backend) => backend.subscribe(),
            Backend::Postgres(backend) => backend.subscribe(),
        }
    }

    /// Runs a write of the document layer as one transaction recording `change`: the
    /// revision it commits as is bumped and logged (and, on PostgreSQL, notified) with it.
    async fn write<T, F>(&self, change: Change, op: F) -> Result<(Revision, T), StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut dyn Db, Revision) -> Op<'a, T> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(backend) => backend.write(change, op).await,
            Backend::Postgres(backend) => backend.write(change, op).await,
        }
    }

    /// [`Store::write`] for operations that return nothing but the revision.
    async fn write_revision<F>(&self, change: Change, op: F) -> Result<Revision, StoreError>
    where
        F: for<'a> FnOnce(&'a mut dyn Db, Revision) -> Op<'a, ()> + Send + 'static,
    {
        self.write(change, op).await.map(|(revision, ())| revision)
    }

    /// Runs a read (or an unlogged write, see [`Access`]) of the document layer.
    async fn run<T, F>(&self, access: Access, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut dyn Db) -> Op<'a, T> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(backend) => backend.run(access, op).await,
            Backend::Postgres(backend) => backend.run(access, op).await,
        }
    }
}

/// The change a write records: what the change log and notices say about it.
#[derive(Debug, Clone)]
struct Change {
    kind: RecordKind,
    scope: Scope,
    key: String,
}

impl Change {
    fn new(kind: RecordKind, scope: Scope, key: impl Into<String>) -> Self {
        Change {
            kind,
            scope,
            key: key.into(),
        }
    }
}

/// How a read runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Any connection, statement by statement.
    Read,
    /// Every statement in one consistent snapshot (several statements that must agree).
    Snapshot,
    /// A write outside the revision counter and change log (tables that are not routing
    /// data: the webhook outbox). On SQLite it runs on the writer connection.
    UnloggedWrite,
}

/// A random id per `Store::open`, so notices from this instance can be told apart.
fn new_instance_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The url without its password, for error messages and logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The scope of global records (settings) in change notices.
fn global_scope() -> Scope {
    Scope::new("", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_kind_names_round_trip() {
        for kind in [
            RecordKind::Deployment,
            RecordKind::Connection,
            RecordKind::AppVersion,
            RecordKind::TrafficSplit,
            RecordKind::Cohort,
            RecordKind::CohortMembers,
            RecordKind::Setting,
            RecordKind::Resync,
        ] {
            assert_eq!(kind.as_str().parse::<RecordKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert!("bogus".parse::<RecordKind>().is_err());
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://sb:secret@127.0.0.1:5432/db"),
            "postgres://sb:***@127.0.0.1:5432/db"
        );
        assert_eq!(
            redact_url("postgres://sb@127.0.0.1/db"),
            "postgres://sb@127.0.0.1/db"
        );
        assert_eq!(redact_url("mysql://x"), "mysql://x");
    }

    #[test]
    fn store_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<Store>();
    }

    #[tokio::test]
    async fn malformed_urls_are_rejected() {
        let err = Store::open("sqlite://").await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err}");
        let err = Store::open("postgres://u@h:notaport/db").await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err}");
    }

    #[tokio::test]
    async fn unknown_scheme_is_rejected() {
        let err = Store::open("mysql://u:pw@host/db").await.unwrap_err();
        match err {
            StoreError::UnsupportedUrl { url } => assert_eq!(url, "mysql://u:***@host/db"),
            other => panic!("unexpected {other}"),
        }
    }
}
