//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! One writer connection behind a mutex (SQLite allows one writer at a time anyway; queuing in
//! the process is cheaper than `SQLITE_BUSY` retries) and a small pool of read-only
//! connections, which WAL lets run beside the writer. Every call runs on tokio's blocking pool.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{
    params, params_from_iter, Connection, OptionalExtension, Row, Transaction, TransactionBehavior,
};
use switchboard_routing::model::{
    AppVersion, Cohort, CohortMember, Connection as TrunkConnection, Deployment, Scope,
    TrafficSplit,
};
use tokio::sync::broadcast;

use crate::codec::{self, MemberRow};
use crate::error::Context;
use crate::migrations::{self, CREATE_SCHEMA_VERSION};
use crate::{
    global_scope, ChangeNotice, Dataset, RecordKind, Revision, StoreError, CHANGE_LOG_RETENTION,
    NOTICE_CHANNEL_CAPACITY,
};

/// How long a statement waits for a lock held by another connection (a reader checkpointing,
/// or an operator's `sqlite3` shell) before failing: long enough to ride out a checkpoint,
/// short enough that an admin request fails visibly rather than hanging.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page cache of the writer, in KiB (SQLite's negative `cache_size` unit). Cohort uploads
/// upsert up to a million rows in random phone order; with the default 2 MiB most B-tree pages
/// they touch would be re-read from the file. 64 MiB holds the interior pages of such a table.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// WAL size (in pages) that triggers a checkpoint. SQLite's default (1,000 pages, 4 MB) makes
/// every 10k-row cohort batch checkpoint, writing its index pages a second time and fsyncing
/// the database file; at 20,000 pages (80 MB) a page dirtied by several batches is copied back
/// once. Measured: 1M random-order members in 10k batches went from ~8 s to ~5.4 s.
const WAL_CHECKPOINT_PAGES: u32 = 20_000;

/// Read connections kept open between calls; reads beyond this open a connection for the call.
/// The gateway reads little (start-up and admin GETs), so a few suffice.
const MAX_IDLE_READERS: usize = 4;

#[derive(Clone)]
pub(crate) struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Canonical path, so reader connections opened later do not depend on the working directory.
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    origin: String,
    /// Never sent on: one gateway per SQLite file. Held so receivers stay open.
    notices: broadcast::Sender<ChangeNotice>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

/// The change a write records: what the change log and notices say about it.
struct PendingChange {
    kind: RecordKind,
    scope: Scope,
    key: String,
}

impl PendingChange {
    fn new(kind: RecordKind, scope: &Scope, key: impl Into<String>) -> Self {
        PendingChange {
            kind,
            scope: scope.clone(),
            key: key.into(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock left the connection with its transaction rolled back
    // (rusqlite rolls back on drop), so the connection is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| StoreError::TaskFailed {
            reason: err.to_string(),
        })?
}

impl SqliteStore {
    pub(crate) async fn open(path: PathBuf, origin: String) -> Result<Self, StoreError> {
        let inner = blocking(move || {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                    path: parent.to_owned(),
                    source,
                })?;
            }
            let mut writer = Connection::open(&path).ctx("open database")?;
            configure_writer(&writer)?;
            migrate(&mut writer)?;
            let path = std::fs::canonicalize(&path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            let (notices, _) = broadcast::channel(NOTICE_CHANNEL_CAPACITY);
            Ok(Inner {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                origin,
                notices,
            })
        })
        .await?;
        Ok(SqliteStore {
            inner: Arc::new(inner),
        })
    }

    pub(crate) fn origin(&self) -> &str {
        &self.inner.origin
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ChangeNotice> {
        self.inner.notices.subscribe()
    }

    /// Runs `apply` in one `BEGIN IMMEDIATE` transaction on the writer, after bumping the
    /// revision and logging `change`; commits (fsync) before returning.
    async fn write_with<T, F>(
        &self,
        change: PendingChange,
        apply: F,
    ) -> Result<(Revision, T), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, Revision) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let mut conn = lock(&inner.writer);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .ctx("begin write transaction")?;
            let revision = record_change(&tx, &inner.origin, &change)?;
            let output = apply(&tx, revision)?;
            tx.commit().ctx("commit write transaction")?;
            Ok((revision, output))
        })
        .await
    }

    async fn write<F>(&self, change: PendingChange, apply: F) -> Result<Revision, StoreError>
    where
        F: FnOnce(&Transaction<'_>, Revision) -> Result<(), StoreError> + Send + 'static,
    {
        self.write_with(change, apply)
            .await
            .map(|(revision, ())| revision)
    }

    /// Runs `work` on the writer outside the revision counter and change log: for tables that
    /// are not routing data (the webhook outbox, see `outbox.rs`).
    pub(crate) async fn with_writer<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || work(&mut lock(&inner.writer))).await
    }

    /// Runs `apply` on a pooled read-only connection.
    async fn read<T, F>(&self, apply: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let pooled = lock(&inner.readers).pop();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&inner.path)?,
            };
            let result = apply(&mut conn);
            let mut idle = lock(&inner.readers);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
    }

    pub(crate) async fn load_all(&self) -> Result<Dataset, StoreError> {
        self.read(|conn| {
            // One read transaction: every table is read from the same WAL snapshot.
            let tx = conn.transaction().ctx("begin snapshot read")?;
            let revision = current_revision(&tx)?;
            let mut dataset = Dataset {
                revision,
                ..Dataset::default()
            };

            let mut by_key: HashMap<i64, (Scope, String)> = HashMap::new();
            let mut stmt = tx
                .prepare(
                    "SELECT dep_key, org_id, workspace_id, deployment_id, doc FROM deployments \
                     ORDER BY created_seq, dep_key",
                )
                .ctx("load deployments")?;
            let mut rows = stmt.query([]).ctx("load deployments")?;
            while let Some(row) = rows.next().ctx("load deployments")? {
                let dep_key: i64 = row.get(0).ctx("load deployments")?;
                let scope = Scope::new(
                    row.get::<_, String>(1).ctx("load deployments")?,
                    row.get::<_, String>(2).ctx("load deployments")?,
                );
                let id: String = row.get(3).ctx("load deployments")?;
                let deployment: Deployment = codec::decode(
                    RecordKind::Deployment,
                    &id,
                    text(row, 4).ctx("load deployments")?,
                )?;
                dataset.deployments.push((scope.clone(), deployment));
                by_key.insert(dep_key, (scope, id));
            }
            drop(rows);
            drop(stmt);

            dataset.connections = load_scoped_docs(
                &tx,
                RecordKind::Connection,
                "SELECT org_id, workspace_id, connection_id, doc FROM connections \
                 ORDER BY org_id, workspace_id, connection_id",
            )?;
            dataset.app_versions = load_scoped_docs(
                &tx,
                RecordKind::AppVersion,
                "SELECT org_id, workspace_id, app_id || '/' || version, doc FROM app_versions \
                 ORDER BY org_id, workspace_id, app_id, version",
            )?;
            dataset.splits = load_scoped_docs(
                &tx,
                RecordKind::TrafficSplit,
                "SELECT org_id, workspace_id, app_id, doc FROM traffic_splits \
                 ORDER BY org_id, workspace_id, app_id",
            )?;

            // Sized up front: growing a Vec of a million members by doubling copies it ~20 times.
            let count: i64 = tx
                .query_row("SELECT COUNT(*) FROM cohort_members", [], |row| row.get(0))
                .ctx("count cohort members")?;
            dataset
                .cohort_members
                .reserve(usize::try_from(count).unwrap_or(0));
            let mut stmt = tx
                .prepare(
                    "SELECT dep_key, phone_number, user_identifier, app_variables, app_overrides \
                     FROM cohort_members",
                )
                .ctx("load cohort members")?;
            let mut rows = stmt.query([]).ctx("load cohort members")?;
            while let Some(row) = rows.next().ctx("load cohort members")? {
                let dep_key: i64 = row.get(0).ctx("load cohort members")?;
                let Some((scope, deployment_id)) = by_key.get(&dep_key) else {
                    continue; // unreachable with foreign keys on; never fail start-up over it
                };
                let member = member_from_row(row, 1).ctx("load cohort members")??;
                dataset
                    .cohort_members
                    .push((scope.clone(), deployment_id.clone(), member));
            }
            Ok(dataset)
        })
        .await
    }

    pub(crate) async fn revision(&self) -> Result<Revision, StoreError> {
        self.read(|conn| current_revision(conn)).await
    }

    pub(crate) async fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(|conn| {
            let version: i64 = conn
                .query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                    [],
                    |row| row.get(0),
                )
                .ctx("read schema version")?;
            codec::to_u32("schema_version", version)
        })
        .await
    }

    // ---- deployments ------------------------------------------------------------------

    pub(crate) async fn insert_deployment(
        &self,
        scope: &Scope,
        deployment: &Deployment,
    ) -> Result<Revision, StoreError> {
        let id = deployment.deployment_id.clone();
        let doc = codec::encode(RecordKind::Deployment, &id, deployment)?;
        let numbers = codec::distinct_numbers(deployment);
        let owned_scope = scope.clone();
        self.write(PendingChange::new(RecordKind::Deployment, scope, &id), move |tx, revision| {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO deployments (org_id, workspace_id, deployment_id, doc, created_seq) \
                     VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (org_id, workspace_id, deployment_id) DO NOTHING",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![owned_scope.org_id, owned_scope.workspace_id, id, doc, revision])
                })
                .ctx("insert deployment")?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists { kind: RecordKind::Deployment, id });
            }
            claim_numbers(tx, tx.last_insert_rowid(), &numbers)
        })
        .await
    }

    pub(crate) async fn update_deployment(
        &self,
        scope: &Scope,
        deployment: &Deployment,
    ) -> Result<Revision, StoreError> {
        let id = deployment.deployment_id.clone();
        let doc = codec::encode(RecordKind::Deployment, &id, deployment)?;
        let numbers = codec::distinct_numbers(deployment);
        let owned_scope = scope.clone();
        self.write(
            PendingChange::new(RecordKind::Deployment, scope, &id),
            move |tx, _| {
                let dep_key = require_dep_key(tx, &owned_scope, &id)?;
                tx.execute(
                    "UPDATE deployments SET doc = ?1 WHERE dep_key = ?2",
                    params![doc, dep_key],
                )
                .ctx("update deployment")?;
                tx.execute(
                    "DELETE FROM deployment_numbers WHERE dep_key = ?1",
                    [dep_key],
                )
                .ctx("release deployment numbers")?;
                claim_numbers(tx, dep_key, &numbers)
            },
        )
        .await
    }

    pub(crate) async fn delete_deployment(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Revision, StoreError> {
        let id = deployment_id.to_owned();
        let owned_scope = scope.clone();
        self.write(
            PendingChange::new(RecordKind::Deployment, scope, &id),
            move |tx, _| {
                let dep_key = require_dep_key(tx, &owned_scope, &id)?;
                // Explicit rather than relying on ON DELETE CASCADE alone: the intent reads here.
                for statement in [
                    "DELETE FROM cohort_members WHERE dep_key = ?1",
                    "DELETE FROM cohorts WHERE dep_key = ?1",
                    "DELETE FROM deployment_numbers WHERE dep_key = ?1",
                    "DELETE FROM deployments WHERE dep_key = ?1",
                ] {
                    tx.execute(statement, [dep_key]).ctx("delete deployment")?;
                }
                Ok(())
            },
        )
        .await
    }

    pub(crate) async fn get_deployment(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        let (scope, id) = (scope.clone(), deployment_id.to_owned());
        self.read(move |conn| {
            let doc: Option<String> = conn
                .prepare_cached(
                    "SELECT doc FROM deployments \
                     WHERE org_id = ?1 AND workspace_id = ?2 AND deployment_id = ?3",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![scope.org_id, scope.workspace_id, id], |row| {
                        row.get(0)
                    })
                    .optional()
                })
                .ctx("get deployment")?;
            doc.map(|doc| codec::decode(RecordKind::Deployment, &id, &doc))
                .transpose()
        })
        .await
    }

    pub(crate) async fn list_deployments(
        &self,
        scope: &Scope,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Deployment>, u64), StoreError> {
        let offset = codec::to_i64("offset", offset)?;
        let limit = codec::to_i64("limit", limit)?;
        let scope = scope.clone();
        self.read(move |conn| {
            let tx = conn.transaction().ctx("begin snapshot read")?;
            let total: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM deployments WHERE org_id = ?1 AND workspace_id = ?2",
                    params![scope.org_id, scope.workspace_id],
                    |row| row.get(0),
                )
                .ctx("count deployments")?;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT deployment_id, doc FROM deployments WHERE org_id = ?1 AND workspace_id = ?2 \
                     ORDER BY created_seq, dep_key LIMIT ?3 OFFSET ?4",
                )
                .ctx("list deployments")?;
            let mut rows =
                stmt.query(params![scope.org_id, scope.workspace_id, limit, offset]).ctx("list deployments")?;
            let mut page = Vec::new();
            while let Some(row) = rows.next().ctx("list deployments")? {
                let id = text(row, 0).ctx("list deployments")?;
                page.push(codec::decode(RecordKind::Deployment, id, text(row, 1).ctx("list deployments")?)?);
            }
            Ok((page, codec::to_u64("deployment count", total)?))
        })
        .await
    }

    pub(crate) async fn number_owner(
        &self,
        phone_number: &str,
    ) -> Result<Option<(Scope, String)>, StoreError> {
        let number = phone_number.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT d.org_id, d.workspace_id, d.deployment_id FROM deployment_numbers n \
                 JOIN deployments d ON d.dep_key = n.dep_key WHERE n.phone_number = ?1",
                [number],
                |row| {
                    Ok((
                        Scope::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                        row.get(2)?,
                    ))
                },
            )
            .optional()
            .ctx("find number owner")
        })
        .await
    }

    // ---- connections ------------------------------------------------------------------

    pub(crate) async fn put_connection(
        &self,
        scope: &Scope,
        connection: &TrunkConnection,
    ) -> Result<Revision, StoreError> {
        let id = connection.connection_id.clone();
        let doc = codec::encode(RecordKind::Connection, &id, connection)?;
        let owned_scope = scope.clone();
        self.write(PendingChange::new(RecordKind::Connection, scope, &id), move |tx, _| {
            tx.execute(
                "INSERT INTO connections (org_id, workspace_id, connection_id, doc) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (org_id, workspace_id, connection_id) DO UPDATE SET doc = excluded.doc",
                params![owned_scope.org_id, owned_scope.workspace_id, id, doc],
            )
            .ctx("put connection")?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn get_connection(
        &self,
        scope: &Scope,
        connection_id: &str,
    ) -> Result<Option<TrunkConnection>, StoreError> {
        self.get_doc(
            RecordKind::Connection,
            "SELECT doc FROM connections WHERE org_id = ?1 AND workspace_id = ?2 AND connection_id = ?3",
            connection_id.to_owned(),
            scoped(scope, [Value::Text(connection_id.to_owned())]),
        )
        .await
    }

    pub(crate) async fn list_connections(
        &self,
        scope: &Scope,
    ) -> Result<Vec<TrunkConnection>, StoreError> {
        self.list_docs(
            RecordKind::Connection,
            "SELECT connection_id, doc FROM connections WHERE org_id = ?1 AND workspace_id = ?2 \
             ORDER BY connection_id",
            scoped(scope, []),
        )
        .await
    }

    pub(crate) async fn delete_connection(
        &self,
        scope: &Scope,
        connection_id: &str,
    ) -> Result<Revision, StoreError> {
        self.delete_doc(
            RecordKind::Connection,
            "DELETE FROM connections WHERE org_id = ?1 AND workspace_id = ?2 AND connection_id = ?3",
            scope,
            connection_id.to_owned(),
            scoped(scope, [Value::Text(connection_id.to_owned())]),
        )
        .await
    }

    // ---- app versions -----------------------------------------------------------------

    pub(crate) async fn put_app_version(
        &self,
        scope: &Scope,
        version: &AppVersion,
    ) -> Result<Revision, StoreError> {
        let key = codec::app_version_key(&version.app_id, version.version);
        let doc = codec::encode(RecordKind::AppVersion, &key, version)?;
        let (app_id, number) = (version.app_id.clone(), i64::from(version.version));
        let owned_scope = scope.clone();
        self.write(PendingChange::new(RecordKind::AppVersion, scope, key), move |tx, _| {
            tx.execute(
                "INSERT INTO app_versions (org_id, workspace_id, app_id, version, doc) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (org_id, workspace_id, app_id, version) DO UPDATE SET doc = excluded.doc",
                params![owned_scope.org_id, owned_scope.workspace_id, app_id, number, doc],
            )
            .ctx("put app version")?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn get_app_version(
        &self,
        scope: &Scope,
        app_id: &str,
        version: u32,
    ) -> Result<Option<AppVersion>, StoreError> {
        self.get_doc(
            RecordKind::AppVersion,
            "SELECT doc FROM app_versions WHERE org_id = ?1 AND workspace_id = ?2 AND app_id = ?3 AND version = ?4",
            codec::app_version_key(app_id, version),
            scoped(scope, [Value::Text(app_id.to_owned()), Value::Integer(i64::from(version))]),
        )
        .await
    }

    pub(crate) async fn list_app_versions(
        &self,
        scope: &Scope,
        app_id: &str,
    ) -> Result<Vec<AppVersion>, StoreError> {
        self.list_docs(
            RecordKind::AppVersion,
            "SELECT app_id || '/' || version, doc FROM app_versions \
             WHERE org_id = ?1 AND workspace_id = ?2 AND app_id = ?3 ORDER BY version",
            scoped(scope, [Value::Text(app_id.to_owned())]),
        )
        .await
    }

    pub(crate) async fn delete_app_version(
        &self,
        scope: &Scope,
        app_id: &str,
        version: u32,
    ) -> Result<Revision, StoreError> {
        self.delete_doc(
            RecordKind::AppVersion,
            "DELETE FROM app_versions WHERE org_id = ?1 AND workspace_id = ?2 AND app_id = ?3 AND version = ?4",
            scope,
            codec::app_version_key(app_id, version),
            scoped(scope, [Value::Text(app_id.to_owned()), Value::Integer(i64::from(version))]),
        )
        .await
    }

    // ---- traffic splits ---------------------------------------------------------------

    pub(crate) async fn put_traffic_split(
        &self,
        scope: &Scope,
        split: &TrafficSplit,
    ) -> Result<Revision, StoreError> {
        let app_id = split.app_id.clone();
        let doc = codec::encode(RecordKind::TrafficSplit, &app_id, split)?;
        let owned_scope = scope.clone();
        self.write(PendingChange::new(RecordKind::TrafficSplit, scope, &app_id), move |tx, _| {
            tx.execute(
                "INSERT INTO traffic_splits (org_id, workspace_id, app_id, doc) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (org_id, workspace_id, app_id) DO UPDATE SET doc = excluded.doc",
                params![owned_scope.org_id, owned_scope.workspace_id, app_id, doc],
            )
            .ctx("put traffic split")?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn get_traffic_split(
        &self,
        scope: &Scope,
        app_id: &str,
    ) -> Result<Option<TrafficSplit>, StoreError> {
        self.get_doc(
            RecordKind::TrafficSplit,
            "SELECT doc FROM traffic_splits WHERE org_id = ?1 AND workspace_id = ?2 AND app_id = ?3",
            app_id.to_owned(),
            scoped(scope, [Value::Text(app_id.to_owned())]),
        )
        .await
    }

    pub(crate) async fn list_traffic_splits(
        &self,
        scope: &Scope,
    ) -> Result<Vec<TrafficSplit>, StoreError> {
        self.list_docs(
            RecordKind::TrafficSplit,
            "SELECT app_id, doc FROM traffic_splits WHERE org_id = ?1 AND workspace_id = ?2 \
             ORDER BY app_id",
            scoped(scope, []),
        )
        .await
    }

    pub(crate) async fn delete_traffic_split(
        &self,
        scope: &Scope,
        app_id: &str,
    ) -> Result<Revision, StoreError> {
        self.delete_doc(
            RecordKind::TrafficSplit,
            "DELETE FROM traffic_splits WHERE org_id = ?1 AND workspace_id = ?2 AND app_id = ?3",
            scope,
            app_id.to_owned(),
            scoped(scope, [Value::Text(app_id.to_owned())]),
        )
        .await
    }

    // ---- cohorts ----------------------------------------------------------------------

    pub(crate) async fn put_cohort(
        &self,
        scope: &Scope,
        cohort: &Cohort,
    ) -> Result<Revision, StoreError> {
        let key = codec::cohort_key(&cohort.deployment_id, &cohort.cohort_id);
        let doc = codec::encode(RecordKind::Cohort, &key, cohort)?;
        let (deployment_id, cohort_id) = (cohort.deployment_id.clone(), cohort.cohort_id.clone());
        let owned_scope = scope.clone();
        self.write(
            PendingChange::new(RecordKind::Cohort, scope, key),
            move |tx, _| {
                let dep_key = require_dep_key(tx, &owned_scope, &deployment_id)?;
                tx.execute(
                    "INSERT INTO cohorts (dep_key, cohort_id, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (dep_key, cohort_id) DO UPDATE SET doc = excluded.doc",
                    params![dep_key, cohort_id, doc],
                )
                .ctx("put cohort")?;
                Ok(())
            },
        )
        .await
    }

    pub(crate) async fn get_cohort(
        &self,
        scope: &Scope,
        deployment_id: &str,
        cohort_id: &str,
    ) -> Result<Option<Cohort>, StoreError> {
        let (scope, deployment_id, cohort_id) = (
            scope.clone(),
            deployment_id.to_owned(),
            cohort_id.to_owned(),
        );
        self.read(move |conn| {
            let doc: Option<String> = conn
                .query_row(
                    "SELECT c.doc FROM cohorts c JOIN deployments d ON d.dep_key = c.dep_key \
                     WHERE d.org_id = ?1 AND d.workspace_id = ?2 AND d.deployment_id = ?3 AND c.cohort_id = ?4",
                    params![scope.org_id, scope.workspace_id, deployment_id, cohort_id],
                    |row| row.get(0),
                )
                .optional()
                .ctx("get cohort")?;
            doc.map(|doc| codec::decode(RecordKind::Cohort, &codec::cohort_key(&deployment_id, &cohort_id), &doc))
                .transpose()
        })
        .await
    }

    pub(crate) async fn list_cohorts(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Vec<Cohort>, StoreError> {
        let (scope, deployment_id) = (scope.clone(), deployment_id.to_owned());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT c.cohort_id, c.doc FROM cohorts c JOIN deployments d ON d.dep_key = c.dep_key \
                     WHERE d.org_id = ?1 AND d.workspace_id = ?2 AND d.deployment_id = ?3",
                )
                .ctx("list cohorts")?;
            let mut rows =
                stmt.query(params![scope.org_id, scope.workspace_id, deployment_id]).ctx("list cohorts")?;
            let mut cohorts: Vec<Cohort> = Vec::new();
            while let Some(row) = rows.next().ctx("list cohorts")? {
                let key = codec::cohort_key(&deployment_id, text(row, 0).ctx("list cohorts")?);
                cohorts.push(codec::decode(RecordKind::Cohort, &key, text(row, 1).ctx("list cohorts")?)?);
            }
            cohorts.sort_by_key(|cohort| cohort.sequence);
            Ok(cohorts)
        })
        .await
    }

    pub(crate) async fn insert_cohort_members(
        &self,
        scope: &Scope,
        deployment_id: &str,
        members: &[CohortMember],
    ) -> Result<Revision, StoreError> {
        let rows = members
            .iter()
            .map(|member| MemberRow::encode(deployment_id, member))
            .collect::<Result<Vec<_>, _>>()?;
        let (owned_scope, id) = (scope.clone(), deployment_id.to_owned());
        self.write(PendingChange::new(RecordKind::CohortMembers, scope, deployment_id), move |tx, revision| {
            let dep_key = require_dep_key(tx, &owned_scope, &id)?;
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO cohort_members \
                     (dep_key, phone_key, phone_number, user_identifier, app_variables, app_overrides, revision) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (dep_key, phone_key) DO UPDATE SET phone_number = excluded.phone_number, \
                     user_identifier = excluded.user_identifier, app_variables = excluded.app_variables, \
                     app_overrides = excluded.app_overrides, revision = excluded.revision",
                )
                .ctx("prepare cohort member upsert")?;
            for row in &rows {
                stmt.execute(params![
                    dep_key,
                    row.phone_key,
                    row.phone_number,
                    row.user_identifier,
                    row.app_variables,
                    row.app_overrides,
                    revision
                ])
                .ctx("upsert cohort member")?;
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn cohort_members_at(
        &self,
        scope: &Scope,
        deployment_id: &str,
        revision: Revision,
    ) -> Result<Vec<CohortMember>, StoreError> {
        self.select_members(
            "SELECT m.phone_number, m.user_identifier, m.app_variables, m.app_overrides \
             FROM cohort_members m JOIN deployments d ON d.dep_key = m.dep_key \
             WHERE d.org_id = ?1 AND d.workspace_id = ?2 AND d.deployment_id = ?3 AND m.revision = ?4 \
             ORDER BY m.phone_number",
            scope,
            deployment_id,
            Value::Integer(revision),
        )
        .await
    }

    pub(crate) async fn get_cohort_member(
        &self,
        scope: &Scope,
        deployment_id: &str,
        phone_number: &str,
    ) -> Result<Option<CohortMember>, StoreError> {
        let Some(key) = codec::phone_key(phone_number) else {
            return Ok(None); // never stored: inserts reject such numbers
        };
        let mut members = self
            .select_members(
                "SELECT m.phone_number, m.user_identifier, m.app_variables, m.app_overrides \
                 FROM cohort_members m JOIN deployments d ON d.dep_key = m.dep_key \
                 WHERE d.org_id = ?1 AND d.workspace_id = ?2 AND d.deployment_id = ?3 AND m.phone_key = ?4",
                scope,
                deployment_id,
                Value::Integer(key),
            )
            .await?;
        Ok(members.pop())
    }

    async fn select_members(
        &self,
        sql: &'static str,
        scope: &Scope,
        deployment_id: &str,
        filter: rusqlite::types::Value,
    ) -> Result<Vec<CohortMember>, StoreError> {
        let (scope, deployment_id) = (scope.clone(), deployment_id.to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(sql).ctx("select cohort members")?;
            let mut rows = stmt
                .query(params![
                    scope.org_id,
                    scope.workspace_id,
                    deployment_id,
                    filter
                ])
                .ctx("select cohort members")?;
            let mut members = Vec::new();
            while let Some(row) = rows.next().ctx("select cohort members")? {
                members.push(member_from_row(row, 0).ctx("select cohort members")??);
            }
            Ok(members)
        })
        .await
    }

    pub(crate) async fn count_cohort_members(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<u64, StoreError> {
        let (scope, deployment_id) = (scope.clone(), deployment_id.to_owned());
        self.read(move |conn| {
            let count: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM cohort_members m JOIN deployments d ON d.dep_key = m.dep_key \
                     WHERE d.org_id = ?1 AND d.workspace_id = ?2 AND d.deployment_id = ?3",
                    params![scope.org_id, scope.workspace_id, deployment_id],
                    |row| row.get(0),
                )
                .ctx("count cohort members")?;
            codec::to_u64("cohort member count", count)
        })
        .await
    }

    // ---- settings ---------------------------------------------------------------------

    pub(crate) async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .ctx("get setting")
        })
        .await
    }

    pub(crate) async fn put_setting(&self, key: &str, value: &str) -> Result<Revision, StoreError> {
        let (owned_key, value) = (key.to_owned(), value.to_owned());
        self.write(
            PendingChange::new(RecordKind::Setting, &global_scope(), key),
            move |tx, _| {
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![owned_key, value],
                )
                .ctx("put setting")?;
                Ok(())
            },
        )
        .await
    }

    pub(crate) async fn put_setting_if_absent(
        &self,
        key: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        let (owned_key, value) = (key.to_owned(), value.to_owned());
        let (_, effective) = self
            .write_with(PendingChange::new(RecordKind::Setting, &global_scope(), key), move |tx, _| {
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                    params![owned_key, value],
                )
                .ctx("put setting")?;
                tx.query_row("SELECT value FROM settings WHERE key = ?1", [owned_key], |row| row.get(0))
                    .ctx("get setting")
            })
            .await?;
        Ok(effective)
    }

    // ---- shared shapes ----------------------------------------------------------------

    /// One JSON document selected by `sql` with `params`; `key` names it in errors.
    async fn get_doc<T>(
        &self,
        kind: RecordKind,
        sql: &'static str,
        key: String,
        params: Vec<Value>,
    ) -> Result<Option<T>, StoreError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        self.read(move |conn| {
            let doc: Option<String> = conn
                .prepare_cached(sql)
                .and_then(|mut stmt| {
                    stmt.query_row(params_from_iter(params), |row| row.get(0))
                        .optional()
                })
                .ctx("get record")?;
            doc.map(|doc| codec::decode(kind, &key, &doc)).transpose()
        })
        .await
    }

    /// The documents `sql` selects as (key, doc) rows.
    async fn list_docs<T>(
        &self,
        kind: RecordKind,
        sql: &'static str,
        params: Vec<Value>,
    ) -> Result<Vec<T>, StoreError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(sql).ctx("list records")?;
            let mut rows = stmt.query(params_from_iter(params)).ctx("list records")?;
            let mut docs = Vec::new();
            while let Some(row) = rows.next().ctx("list records")? {
                let key = text(row, 0).ctx("list records")?;
                docs.push(codec::decode(kind, key, text(row, 1).ctx("list records")?)?);
            }
            Ok(docs)
        })
        .await
    }

    /// Deletes the row `sql` names; `NotFound` (as `kind`/`key`) if there was none.
    async fn delete_doc(
        &self,
        kind: RecordKind,
        sql: &'static str,
        scope: &Scope,
        key: String,
        params: Vec<Value>,
    ) -> Result<Revision, StoreError> {
        self.write(
            PendingChange::new(kind, scope, key.clone()),
            move |tx, _| {
                let deleted = tx
                    .execute(sql, params_from_iter(params))
                    .ctx("delete record")?;
                if deleted == 0 {
                    return Err(StoreError::NotFound { kind, id: key });
                }
                Ok(())
            },
        )
        .await
    }
}

/// The scope's two key columns followed by `rest`, as statement parameters.
fn scoped(scope: &Scope, rest: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut params = vec![
        Value::Text(scope.org_id.clone()),
        Value::Text(scope.workspace_id.clone()),
    ];
    params.extend(rest);
    params
}

fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).ctx("set busy timeout")?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .ctx("enable WAL journal")?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "sqlite refused WAL mode; writes still sync but readers block writers");
    }
    // FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss
    // (NORMAL, the usual WAL pairing, may lose the last commits on power loss).
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .ctx("set durability pragmas")?;
    conn.execute_batch(&format!(
        "PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES};"
    ))
    .ctx("set cache and checkpoint sizes")
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).ctx("open reader")?;
    conn.busy_timeout(BUSY_TIMEOUT).ctx("set busy timeout")?;
    conn.execute_batch("PRAGMA query_only = ON;")
        .ctx("make reader read-only")?;
    Ok(conn)
}

/// Applies the missing migrations in one immediate transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("begin migration")?;
    tx.execute_batch(CREATE_SCHEMA_VERSION)
        .ctx("create schema_version")?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |row| row.get(0),
        )
        .ctx("read schema version")?;
    let supported = migrations::latest(migrations::SQLITE);
    if current > i64::from(supported) {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for migration in migrations::SQLITE
        .iter()
        .filter(|m| i64::from(m.version) > current)
    {
        tx.execute_batch(migration.sql)
            .map_err(|err| StoreError::Migration {
                version: migration.version,
                name: migration.name,
                source: Box::new(err),
            })?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES (?1, ?2)",
            params![migration.version, migration.name],
        )
        .ctx("record schema version")?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied sqlite migration"
        );
    }
    tx.commit().ctx("commit migration")
}

/// Bumps the revision counter and logs the change; prunes the log beyond its retention.
fn record_change(
    tx: &Transaction<'_>,
    origin: &str,
    change: &PendingChange,
) -> Result<Revision, StoreError> {
    let revision: Revision = tx
        .prepare_cached(
            "UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value",
        )
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
        .ctx("bump revision")?;
    tx.prepare_cached(
        "INSERT INTO changes (revision, origin, kind, org_id, workspace_id, key) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            revision,
            origin,
            change.kind.as_str(),
            change.scope.org_id,
            change.scope.workspace_id,
            change.key
        ])
    })
    .ctx("log change")?;
    tx.prepare_cached("DELETE FROM changes WHERE revision <= ?1")
        .and_then(|mut stmt| stmt.execute([revision - CHANGE_LOG_RETENTION]))
        .ctx("prune change log")?;
    Ok(revision)
}

fn current_revision(conn: &Connection) -> Result<Revision, StoreError> {
    conn.query_row(
        "SELECT value FROM revision_counter WHERE id = 1",
        [],
        |row| row.get(0),
    )
    .ctx("read revision")
}

fn dep_key(
    conn: &Connection,
    scope: &Scope,
    deployment_id: &str,
) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached(
        "SELECT dep_key FROM deployments WHERE org_id = ?1 AND workspace_id = ?2 AND deployment_id = ?3",
    )
    .and_then(|mut stmt| {
        stmt.query_row(params![scope.org_id, scope.workspace_id, deployment_id], |row| row.get(0))
            .optional()
    })
    .ctx("find deployment")
}

fn require_dep_key(
    conn: &Connection,
    scope: &Scope,
    deployment_id: &str,
) -> Result<i64, StoreError> {
    dep_key(conn, scope, deployment_id)?.ok_or_else(|| StoreError::NotFound {
        kind: RecordKind::Deployment,
        id: deployment_id.to_owned(),
    })
}

/// Claims `numbers` for the deployment; the first one owned elsewhere fails the write.
fn claim_numbers(tx: &Transaction<'_>, dep_key: i64, numbers: &[String]) -> Result<(), StoreError> {
    let mut claim = tx
        .prepare_cached(
            "INSERT INTO deployment_numbers (phone_number, dep_key) VALUES (?1, ?2) \
             ON CONFLICT (phone_number) DO NOTHING",
        )
        .ctx("claim phone number")?;
    for number in numbers {
        if claim
            .execute(params![number, dep_key])
            .ctx("claim phone number")?
            == 0
        {
            let owner: String = tx
                .query_row(
                    "SELECT d.deployment_id FROM deployment_numbers n \
                     JOIN deployments d ON d.dep_key = n.dep_key WHERE n.phone_number = ?1",
                    [number],
                    |row| row.get(0),
                )
                .ctx("find number owner")?;
            return Err(StoreError::NumberTaken {
                phone_number: number.clone(),
                deployment_id: owner,
            });
        }
    }
    Ok(())
}

/// Reads (org_id, workspace_id, key, doc) rows into scoped documents.
fn load_scoped_docs<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    kind: RecordKind,
    sql: &str,
) -> Result<Vec<(Scope, T)>, StoreError> {
    let mut stmt = conn.prepare(sql).ctx("load records")?;
    let mut rows = stmt.query([]).ctx("load records")?;
    let mut docs = Vec::new();
    while let Some(row) = rows.next().ctx("load records")? {
        let scope = Scope::new(
            row.get::<_, String>(0).ctx("load records")?,
            row.get::<_, String>(1).ctx("load records")?,
        );
        let key = text(row, 2).ctx("load records")?;
        docs.push((
            scope,
            codec::decode(kind, key, text(row, 3).ctx("load records")?)?,
        ));
    }
    Ok(docs)
}

/// Borrows a TEXT column without allocating.
fn text<'row>(row: &'row Row<'_>, index: usize) -> rusqlite::Result<&'row str> {
    row.get_ref(index)?.as_str().map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(err))
    })
}

/// A member from four columns starting at `first`: phone, user id, variables, overrides.
fn member_from_row(
    row: &Row<'_>,
    first: usize,
) -> rusqlite::Result<Result<CohortMember, StoreError>> {
    Ok(codec::decode_member(
        text(row, first)?,
        text(row, first + 1)?,
        text(row, first + 2)?,
        text(row, first + 3)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writer_runs_wal_with_full_sync_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("nested/dir/sb.db"), "test".into())
            .await
            .unwrap();
        let conn = lock(&store.inner.writer);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        let synchronous: i64 = conn
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .unwrap();
        let foreign_keys: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(synchronous, 2, "2 = FULL");
        assert_eq!(foreign_keys, 1);
    }
}
