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
//! Layout: `error.rs` (the error enum), `codec.rs` (JSON documents <-> domain types),
//! `migrations/` (versioned schema per dialect), `sqlite.rs` and `postgres.rs` (the backends).
//! [`Store`] itself only dispatches.

mod codec;
mod error;
mod migrations;
mod outbox;
mod pg_tls;
mod postgres;
mod sqlite;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use switchboard_routing::model::{
    AppVersion, Cohort, CohortMember, Connection, Deployment, Scope, TrafficSplit,
};
use tokio::sync::broadcast;

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

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(backend) => backend.$method($($arg),*).await,
            Backend::Postgres(backend) => backend.$method($($arg),*).await,
        }
    };
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

    /// Reads everything the routing snapshot is built from, in one consistent snapshot.
    /// Call at start (and after a resync); it reads every cohort member, so not per request.
    pub async fn load_all(&self) -> Result<Dataset, StoreError> {
        dispatch!(self.load_all())
    }

    /// The revision of the latest committed write (0 for an empty store).
    pub async fn revision(&self) -> Result<Revision, StoreError> {
        dispatch!(self.revision())
    }

    /// The schema version the database is at after `open`'s migrations.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        dispatch!(self.schema_version())
    }

    // ---- deployments ------------------------------------------------------------------

    /// Stores a new deployment and claims its phone numbers (normalised E.164, as given).
    /// Fails with `AlreadyExists` if the id is taken in this scope, or `NumberTaken` if any
    /// number belongs to another deployment (of any scope: a number rings in one place).
    pub async fn insert_deployment(
        &self,
        scope: &Scope,
        deployment: &Deployment,
    ) -> Result<Revision, StoreError> {
        dispatch!(self.insert_deployment(scope, deployment))
    }

    /// Replaces a deployment (keyed by its `deployment_id`) and its set of numbers; numbers it
    /// no longer lists are released. `NotFound` / `NumberTaken`.
    pub async fn update_deployment(
        &self,
        scope: &Scope,
        deployment: &Deployment,
    ) -> Result<Revision, StoreError> {
        dispatch!(self.update_deployment(scope, deployment))
    }

    /// Deletes a deployment with its numbers, cohorts and cohort members. `NotFound`.
    pub async fn delete_deployment(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Revision, StoreError> {
        dispatch!(self.delete_deployment(scope, deployment_id))
    }

    pub async fn get_deployment(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        dispatch!(self.get_deployment(scope, deployment_id))
    }

    /// One page of the scope's deployments in creation order, and the scope's total count.
    pub async fn list_deployments(
        &self,
        scope: &Scope,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Deployment>, u64), StoreError> {
        dispatch!(self.list_deployments(scope, offset, limit))
    }

    /// The deployment owning `phone_number` (normalised E.164), with its scope.
    pub async fn number_owner(
        &self,
        phone_number: &str,
    ) -> Result<Option<(Scope, String)>, StoreError> {
        dispatch!(self.number_owner(phone_number))
    }

    // ---- connections ------------------------------------------------------------------

    /// Inserts or replaces a connection (trunk).
    pub async fn put_connection(
        &self,
        scope: &Scope,
        connection: &Connection,
    ) -> Result<Revision, StoreError> {
        dispatch!(self.put_connection(scope, connection))
    }

    pub async fn get_connection(
        &self,
        scope: &Scope,
        connection_id: &str,
    ) -> Result<Option<Connection>, StoreError> {
        dispatch!(self.get_connection(scope, connection_id))
    }

    /// The scope's connections ordered by id.
    pub async fn list_connections(&self, scope: &Scope) -> Result<Vec<Connection>, StoreError> {
        dispatch!(self.list_connections(scope))
    }

    /// `NotFound` if absent. Deployments naming the connection are not checked here (the
    /// admin API decides whether that is allowed).
    pub async fn delete_connection(
        &self,
        scope: &Scope,
        connection_id: &str,
    ) -> Result<Revision, StoreError> {
        dispatch!(self.delete_connection(scope, connection_id))
    }

    // ---- app versions -----------------------------------------------------------------

    /// Inserts or replaces one version of an app (its runtime url and status).
    pub async fn put_app_version(
        &self,
        scope: &Scope,
        version: &AppVersion,
    ) -> Result<Revision, StoreError> {
        dispatch!(self.put_app_version(scope, version))
    }

    pub async fn get_app_version(
        &self,
        scope: &Scope,
        app_id: &str,
        version: u32,
    ) -> Result<Option<AppVersion>, StoreError> {
        dispatch!(self.get_app_version(scope, app_id, version))
    }

    /// The app's versions in ascending version order.
    pub async fn list_app_versions(
        &self,
        scope: &Scope,
        app_id: &str,
    ) -> Result<Vec<AppVersion>, StoreError> {
        dispatch!(self.list_app_versions(scope, app_id))
    }

    /// `NotFound` if absent.
    pub async fn delete_app_version(
        &self,
        scope: &Scope,
        app_id: &str,
        version: u32,
    ) -> Result<Revision, StoreError> {
        dispatch!(self.delete_app_version(scope, app_id, version))
    }

    // ---- traffic splits ---------------------------------------------------------------

    /// Inserts or replaces the app's split (validation of the percentages is the caller's).
    pub async fn put_traffic_split(
        &self,
        scope: &Scope,
        split: &TrafficSplit,
    ) -> Result<Revision, StoreError> {
        dispatch!(self.put_traffic_split(scope, split))
    }

    pub async fn get_traffic_split(
        &self,
        scope: &Scope,
        app_id: &str,
    ) -> Result<Option<TrafficSplit>, StoreError> {
        dispatch!(self.get_traffic_split(scope, app_id))
    }

    /// The scope's splits ordered by app id.
    pub async fn list_traffic_splits(
        &self,
        scope: &Scope,
    ) -> Result<Vec<TrafficSplit>, StoreError> {
        dispatch!(self.list_traffic_splits(scope))
    }

    /// `NotFound` if absent.
    pub async fn delete_traffic_split(
        &self,
        scope: &Scope,
        app_id: &str,
    ) -> Result<Revision, StoreError> {
        dispatch!(self.delete_traffic_split(scope, app_id))
    }

    // ---- cohorts ----------------------------------------------------------------------

    /// Inserts or replaces a cohort's metadata (status, result, rejections). Call when an
    /// upload starts (`processing`) and again when it ends. `NotFound` if the deployment is
    /// missing.
    pub async fn put_cohort(&self, scope: &Scope, cohort: &Cohort) -> Result<Revision, StoreError> {
        dispatch!(self.put_cohort(scope, cohort))
    }

    pub async fn get_cohort(
        &self,
        scope: &Scope,
        deployment_id: &str,
        cohort_id: &str,
    ) -> Result<Option<Cohort>, StoreError> {
        dispatch!(self.get_cohort(scope, deployment_id, cohort_id))
    }

    /// The deployment's cohorts ordered by `sequence`.
    pub async fn list_cohorts(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Vec<Cohort>, StoreError> {
        dispatch!(self.list_cohorts(scope, deployment_id))
    }

    /// Upserts members into the deployment: for a phone number already present, the new row
    /// replaces the old one (the latest cohort wins); within one call the last row for a number
    /// wins. One transaction per call: callers stream an upload in batches of ~10k rows (one
    /// commit per batch keeps a million rows to a hundred fsyncs). `NotFound` if the deployment
    /// is missing.
    pub async fn insert_cohort_members(
        &self,
        scope: &Scope,
        deployment_id: &str,
        members: &[CohortMember],
    ) -> Result<Revision, StoreError> {
        dispatch!(self.insert_cohort_members(scope, deployment_id, members))
    }

    /// The members last written by the write at `revision` (a [`RecordKind::CohortMembers`]
    /// notice's): what another gateway applies on such a notice.
    pub async fn cohort_members_at(
        &self,
        scope: &Scope,
        deployment_id: &str,
        revision: Revision,
    ) -> Result<Vec<CohortMember>, StoreError> {
        dispatch!(self.cohort_members_at(scope, deployment_id, revision))
    }

    pub async fn get_cohort_member(
        &self,
        scope: &Scope,
        deployment_id: &str,
        phone_number: &str,
    ) -> Result<Option<CohortMember>, StoreError> {
        dispatch!(self.get_cohort_member(scope, deployment_id, phone_number))
    }

    /// How many members the deployment has (0 for a missing deployment).
    pub async fn count_cohort_members(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<u64, StoreError> {
        dispatch!(self.count_cohort_members(scope, deployment_id))
    }

    // ---- settings ---------------------------------------------------------------------

    pub async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self.get_setting(key))
    }

    /// Inserts or replaces a global setting.
    pub async fn put_setting(&self, key: &str, value: &str) -> Result<Revision, StoreError> {
        dispatch!(self.put_setting(key, value))
    }

    /// Stores `value` unless the key already has one, and returns the value in effect. Lets
    /// two gateways starting at once agree on one generated admin key. Counts as a write (a
    /// revision and a notice) even when the key existed: it is called once per start.
    pub async fn put_setting_if_absent(
        &self,
        key: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        dispatch!(self.put_setting_if_absent(key, value))
    }
}

/// The webhook outbox (see `outbox.rs`): at-least-once delivery that survives crashes.
impl Store {
    /// Writes a delivery before its first attempt; returns its row id. Committed on return.
    pub async fn outbox_enqueue(&self, delivery: NewDelivery) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => outbox::sqlite_enqueue(b, delivery).await,
            Backend::Postgres(b) => outbox::pg_enqueue(b, delivery).await,
        }
    }

    /// Up to `limit` deliveries due at `now_ms`, each leased until `lease_until_ms` (nobody
    /// else claims it before then). Call periodically; rows enqueued by a crashed process come
    /// back here once their lease runs out.
    pub async fn outbox_claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => outbox::sqlite_claim_due(b, now_ms, lease_until_ms, limit).await,
            Backend::Postgres(b) => outbox::pg_claim_due(b, now_ms, lease_until_ms, limit).await,
        }
    }

    /// Records a failed attempt: `attempts` so far, next try at `next_attempt_ms`.
    pub async fn outbox_reschedule(
        &self,
        id: i64,
        attempts: u32,
        next_attempt_ms: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => outbox::sqlite_reschedule(b, id, attempts, next_attempt_ms).await,
            Backend::Postgres(b) => outbox::pg_reschedule(b, id, attempts, next_attempt_ms).await,
        }
    }

    /// Deletes a delivery that was delivered or given up.
    pub async fn outbox_remove(&self, id: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => outbox::sqlite_remove(b, id).await,
            Backend::Postgres(b) => outbox::pg_remove(b, id).await,
        }
    }

    /// How many deliveries are pending.
    pub async fn outbox_pending(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => outbox::sqlite_pending(b).await,
            Backend::Postgres(b) => outbox::pg_pending(b).await,
        }
    }
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
