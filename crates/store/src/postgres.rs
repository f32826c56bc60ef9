//! The PostgreSQL backend: several gateways on one database.
//!
//! Queries run on a small pool of connections (a `Vec` of idle clients plus a semaphore; the
//! gateway writes rarely and every write serialises on the revision row anyway). Each write
//! bumps the revision, logs the change and calls `pg_notify` in one statement inside its
//! transaction, so the notification goes out exactly when the write commits. One more
//! connection `LISTEN`s; it turns other instances' notifications into [`ChangeNotice`]s and,
//! after a reconnect, replays what it missed from the change log.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::poll_fn;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{pin_mut, TryStreamExt};
use serde::Deserialize;
use switchboard_routing::model::{
    AppVersion, Cohort, CohortMember, Connection as TrunkConnection, Deployment, Scope,
    TrafficSplit,
};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore, SemaphorePermit};
use tokio_postgres::types::ToSql;
use tokio_postgres::{
    AsyncMessage, Client, Config, GenericClient, IsolationLevel, Row, Transaction,
};

use crate::codec::{self, MemberRow};
use crate::error::Context;
use crate::migrations::{self, CREATE_SCHEMA_VERSION};
use crate::pg_tls::{self, MakeRustls};
use crate::{
    global_scope, ChangeNotice, Dataset, RecordKind, Revision, StoreError, CHANGE_LOG_RETENTION,
    NOTICE_CHANNEL_CAPACITY,
};

/// Connections used for queries at once. Writes serialise on the revision row, so more would
/// only wait; reads (start-up, admin GETs) are few.
const POOL_SIZE: usize = 4;

/// The `LISTEN`/`NOTIFY` channel every instance shares.
const NOTIFY_CHANNEL: &str = "switchboard_changes";

/// Key of the advisory lock held while migrating, so gateways starting together migrate once.
/// Any constant works as long as every build uses the same one ("SWBTCH" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x5357_4254_4348;

/// First wait before reconnecting the listener; doubles up to the maximum. Short, because
/// every moment disconnected is a moment other gateways' writes are not applied here.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Cap of the reconnect backoff: a restarting database is retried at least this often.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// TCP keepalive idle time of the listener: it only receives, so without keepalives a
/// silently dropped connection (NAT timeout, failover) would go unnoticed for hours.
const LISTENER_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Bound on establishing a connection, so a black-holed address fails instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `application_name` of query connections (visible in `pg_stat_activity`).
const POOL_APPLICATION_NAME: &str = "switchboard";
/// `application_name` of the listener connection (PostgreSQL), to find it in
/// `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "switchboard-listener";

#[derive(Clone)]
pub(crate) struct PgStore {
    inner: Arc<PgInner>,
}

struct PgInner {
    pool: Pool,
    origin: String,
    notices: broadcast::Sender<ChangeNotice>,
    /// Dropped with the last `Store` clone, which stops the listener task.
    _stop_listener: oneshot::Sender<()>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded Vec is valid whatever panicked while holding it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PgStore {
    pub(crate) async fn open(url: &str, origin: String) -> Result<Self, StoreError> {
        // `sslmode` and `sslrootcert` as libpq means them (see `pg_tls`).
        let (mut config, tls) = pg_tls::parse(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mut listener_config = config.clone();
        listener_config
            .application_name(LISTENER_APPLICATION_NAME)
            .keepalives_idle(LISTENER_KEEPALIVE_IDLE);
        if config.get_application_name().is_none() {
            config.application_name(POOL_APPLICATION_NAME);
        }

        let pool = Pool::new(config, tls.clone());
        let revision = {
            let mut client = pool.get().await?;
            migrate(&mut client).await?;
            current_revision(&*client).await?
        };

        // Listen before returning, so a write committed after `open` is never missed.
        let connection = ListenConnection::connect(&listener_config, &tls).await?;
        let (notices, _) = broadcast::channel(NOTICE_CHANNEL_CAPACITY);
        let (stop_listener, stop) = oneshot::channel();
        let listener = Listener {
            config: listener_config,
            tls,
            origin: origin.clone(),
            notices: notices.clone(),
            last_seen: revision,
        };
        tokio::spawn(listener.run(connection, stop));

        Ok(PgStore {
            inner: Arc::new(PgInner {
                pool,
                origin,
                notices,
                _stop_listener: stop_listener,
            }),
        })
    }

    pub(crate) fn origin(&self) -> &str {
        &self.inner.origin
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ChangeNotice> {
        self.inner.notices.subscribe()
    }

    /// A pooled client for queries outside the revision counter and change log (the webhook
    /// outbox, see `outbox.rs`).
    pub(crate) async fn client(&self) -> Result<impl DerefMut<Target = Client> + '_, StoreError> {
        self.inner.pool.get().await
    }

    /// Starts a write transaction and records `change` in it (revision, log, notify).
    async fn begin<'c>(
        &self,
        client: &'c mut Client,
        kind: RecordKind,
        scope: &Scope,
        key: &str,
    ) -> Result<(Transaction<'c>, Revision), StoreError> {
        let tx = client.transaction().await.ctx("begin write transaction")?;
        let revision = record_change(&tx, &self.inner.origin, kind, scope, key).await?;
        Ok((tx, revision))
    }

    pub(crate) async fn load_all(&self) -> Result<Dataset, StoreError> {
        let mut client = self.inner.pool.get().await?;
        // REPEATABLE READ: every table below is read from one snapshot.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .ctx("begin snapshot read")?;
        let revision = current_revision(&tx).await?;
        let mut dataset = Dataset {
            revision,
            ..Dataset::default()
        };

        let mut by_key: HashMap<i64, (Scope, String)> = HashMap::new();
        let rows = tx
            .query(
                "SELECT dep_key, org_id, workspace_id, deployment_id, doc FROM deployments \
                 ORDER BY created_seq, dep_key",
                &[],
            )
            .await
            .ctx("load deployments")?;
        for row in rows {
            let dep_key: i64 = row.try_get(0).ctx("load deployments")?;
            let scope = Scope::new(
                row.try_get::<_, String>(1).ctx("load deployments")?,
                row.try_get::<_, String>(2).ctx("load deployments")?,
            );
            let id: String = row.try_get(3).ctx("load deployments")?;
            let deployment: Deployment = codec::decode(
                RecordKind::Deployment,
                &id,
                row.try_get(4).ctx("load deployments")?,
            )?;
            dataset.deployments.push((scope.clone(), deployment));
            by_key.insert(dep_key, (scope, id));
        }

        dataset.connections = load_scoped_docs(
            &tx,
            RecordKind::Connection,
            "SELECT org_id, workspace_id, connection_id, doc FROM connections \
             ORDER BY org_id, workspace_id, connection_id",
        )
        .await?;
        dataset.app_versions = load_scoped_docs(
            &tx,
            RecordKind::AppVersion,
            "SELECT org_id, workspace_id, app_id || '/' || version, doc FROM app_versions \
             ORDER BY org_id, workspace_id, app_id, version",
        )
        .await?;
        dataset.splits = load_scoped_docs(
            &tx,
            RecordKind::TrafficSplit,
            "SELECT org_id, workspace_id, app_id, doc FROM traffic_splits \
             ORDER BY org_id, workspace_id, app_id",
        )
        .await?;

        // Sized up front from the planner's row estimate (an exact COUNT would scan the table):
        // growing a Vec of a million members by doubling copies it ~20 times.
        let estimate: i64 = tx
            .query_one(
                "SELECT GREATEST(reltuples, 0)::BIGINT FROM pg_class \
                 WHERE oid = 'cohort_members'::regclass",
                &[],
            )
            .await
            .and_then(|row| row.try_get(0))
            .ctx("estimate cohort members")?;
        dataset
            .cohort_members
            .reserve(usize::try_from(estimate).unwrap_or(0));
        // Streamed: a million members never sit in memory twice (as rows and as members).
        let stream = tx
            .query_raw(
                "SELECT dep_key, phone_number, user_identifier, app_variables, app_overrides \
                 FROM cohort_members",
                std::iter::empty::<i64>(),
            )
            .await
            .ctx("load cohort members")?;
        pin_mut!(stream);
        while let Some(row) = stream.try_next().await.ctx("load cohort members")? {
            let dep_key: i64 = row.try_get(0).ctx("load cohort members")?;
            let Some((scope, deployment_id)) = by_key.get(&dep_key) else {
                continue; // unreachable with the foreign key; never fail start-up over it
            };
            let member = member_from_row(&row, 1)?;
            dataset
                .cohort_members
                .push((scope.clone(), deployment_id.clone(), member));
        }
        tx.commit().await.ctx("end snapshot read")?;
        Ok(dataset)
    }

    pub(crate) async fn revision(&self) -> Result<Revision, StoreError> {
        let client = self.inner.pool.get().await?;
        current_revision(&*client).await
    }

    pub(crate) async fn schema_version(&self) -> Result<u32, StoreError> {
        let client = self.inner.pool.get().await?;
        let version: i64 = client
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version",
                &[],
            )
            .await
            .and_then(|row| row.try_get(0))
            .ctx("read schema version")?;
        codec::to_u32("schema_version", version)
    }

    // ---- deployments ------------------------------------------------------------------

    pub(crate) async fn insert_deployment(
        &self,
        scope: &Scope,
        deployment: &Deployment,
    ) -> Result<Revision, StoreError> {
        let id = deployment.deployment_id.as_str();
        let doc = codec::encode(RecordKind::Deployment, id, deployment)?;
        let numbers = codec::distinct_numbers(deployment);
        let mut client = self.inner.pool.get().await?;
        let (tx, revision) = self
            .begin(&mut client, RecordKind::Deployment, scope, id)
            .await?;
        let inserted = tx
            .query_opt(
                "INSERT INTO deployments (org_id, workspace_id, deployment_id, doc, created_seq) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (org_id, workspace_id, deployment_id) DO NOTHING RETURNING dep_key",
                &[&scope.org_id, &scope.workspace_id, &id, &doc, &revision],
            )
            .await
            .ctx("insert deployment")?;
        let Some(row) = inserted else {
            return Err(StoreError::AlreadyExists {
                kind: RecordKind::Deployment,
                id: id.to_owned(),
            });
        };
        let dep_key: i64 = row.try_get(0).ctx("insert deployment")?;
        claim_numbers(&tx, dep_key, &numbers).await?;
        tx.commit().await.ctx("commit deployment")?;
        Ok(revision)
    }

    pub(crate) async fn update_deployment(
        &self,
        scope: &Scope,
        deployment: &Deployment,
    ) -> Result<Revision, StoreError> {
        let id = deployment.deployment_id.as_str();
        let doc = codec::encode(RecordKind::Deployment, id, deployment)?;
        let numbers = codec::distinct_numbers(deployment);
        let mut client = self.inner.pool.get().await?;
        let (tx, revision) = self
            .begin(&mut client, RecordKind::Deployment, scope, id)
            .await?;
        let dep_key = require_dep_key(&tx, scope, id).await?;
        tx.execute(
            "UPDATE deployments SET doc = $1 WHERE dep_key = $2",
            &[&doc, &dep_key],
        )
        .await
        .ctx("update deployment")?;
        tx.execute(
            "DELETE FROM deployment_numbers WHERE dep_key = $1",
            &[&dep_key],
        )
        .await
        .ctx("release deployment numbers")?;
        claim_numbers(&tx, dep_key, &numbers).await?;
        tx.commit().await.ctx("commit deployment")?;
        Ok(revision)
    }

    pub(crate) async fn delete_deployment(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Revision, StoreError> {
        let mut client = self.inner.pool.get().await?;
        let (tx, revision) = self
            .begin(&mut client, RecordKind::Deployment, scope, deployment_id)
            .await?;
        let dep_key = require_dep_key(&tx, scope, deployment_id).await?;
        // Explicit rather than relying on ON DELETE CASCADE alone: the intent reads here.
        for statement in [
            "DELETE FROM cohort_members WHERE dep_key = $1",
            "DELETE FROM cohorts WHERE dep_key = $1",
            "DELETE FROM deployment_numbers WHERE dep_key = $1",
            "DELETE FROM deployments WHERE dep_key = $1",
        ] {
            tx.execute(statement, &[&dep_key])
                .await
                .ctx("delete deployment")?;
        }
        tx.commit().await.ctx("commit deployment deletion")?;
        Ok(revision)
    }

    pub(crate) async fn get_deployment(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        self.get_doc(
            RecordKind::Deployment,
            "SELECT doc FROM deployments WHERE org_id = $1 AND workspace_id = $2 AND deployment_id = $3",
            deployment_id,
            &[&scope.org_id, &scope.workspace_id, &deployment_id],
        )
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
        let mut client = self.inner.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .ctx("begin snapshot read")?;
        let total: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM deployments WHERE org_id = $1 AND workspace_id = $2",
                &[&scope.org_id, &scope.workspace_id],
            )
            .await
            .and_then(|row| row.try_get(0))
            .ctx("count deployments")?;
        let rows = tx
            .query(
                "SELECT deployment_id, doc FROM deployments WHERE org_id = $1 AND workspace_id = $2 \
                 ORDER BY created_seq, dep_key LIMIT $3 OFFSET $4",
                &[&scope.org_id, &scope.workspace_id, &limit, &offset],
            )
            .await
            .ctx("list deployments")?;
        tx.commit().await.ctx("end snapshot read")?;
        Ok((
            docs_from_rows(RecordKind::Deployment, &rows)?,
            codec::to_u64("deployment count", total)?,
        ))
    }

    pub(crate) async fn number_owner(
        &self,
        phone_number: &str,
    ) -> Result<Option<(Scope, String)>, StoreError> {
        let client = self.inner.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT d.org_id, d.workspace_id, d.deployment_id FROM deployment_numbers n \
                 JOIN deployments d ON d.dep_key = n.dep_key WHERE n.phone_number = $1",
                &[&phone_number],
            )
            .await
            .ctx("find number owner")?;
        row.map(|row| -> Result<(Scope, String), tokio_postgres::Error> {
            Ok((
                Scope::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?),
                row.try_get(2)?,
            ))
        })
        .transpose()
        .ctx("find number owner")
    }

    // ---- connections ------------------------------------------------------------------

    pub(crate) async fn put_connection(
        &self,
        scope: &Scope,
        connection: &TrunkConnection,
    ) -> Result<Revision, StoreError> {
        let id = connection.connection_id.as_str();
        let doc = codec::encode(RecordKind::Connection, id, connection)?;
        self.put_doc(
            RecordKind::Connection,
            scope,
            id,
            "INSERT INTO connections (org_id, workspace_id, connection_id, doc) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (org_id, workspace_id, connection_id) DO UPDATE SET doc = EXCLUDED.doc",
            &[&scope.org_id, &scope.workspace_id, &id, &doc],
        )
        .await
    }

    pub(crate) async fn get_connection(
        &self,
        scope: &Scope,
        connection_id: &str,
    ) -> Result<Option<TrunkConnection>, StoreError> {
        self.get_doc(
            RecordKind::Connection,
            "SELECT doc FROM connections WHERE org_id = $1 AND workspace_id = $2 AND connection_id = $3",
            connection_id,
            &[&scope.org_id, &scope.workspace_id, &connection_id],
        )
        .await
    }

    pub(crate) async fn list_connections(
        &self,
        scope: &Scope,
    ) -> Result<Vec<TrunkConnection>, StoreError> {
        self.list_docs(
            RecordKind::Connection,
            "SELECT connection_id, doc FROM connections WHERE org_id = $1 AND workspace_id = $2 \
             ORDER BY connection_id",
            &[&scope.org_id, &scope.workspace_id],
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
            scope,
            connection_id,
            "DELETE FROM connections WHERE org_id = $1 AND workspace_id = $2 AND connection_id = $3",
            &[&scope.org_id, &scope.workspace_id, &connection_id],
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
        self.put_doc(
            RecordKind::AppVersion,
            scope,
            &key,
            "INSERT INTO app_versions (org_id, workspace_id, app_id, version, doc) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (org_id, workspace_id, app_id, version) DO UPDATE SET doc = EXCLUDED.doc",
            &[&scope.org_id, &scope.workspace_id, &version.app_id, &i64::from(version.version), &doc],
        )
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
            "SELECT doc FROM app_versions WHERE org_id = $1 AND workspace_id = $2 AND app_id = $3 AND version = $4",
            &codec::app_version_key(app_id, version),
            &[&scope.org_id, &scope.workspace_id, &app_id, &i64::from(version)],
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
             WHERE org_id = $1 AND workspace_id = $2 AND app_id = $3 ORDER BY version",
            &[&scope.org_id, &scope.workspace_id, &app_id],
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
            scope,
            &codec::app_version_key(app_id, version),
            "DELETE FROM app_versions WHERE org_id = $1 AND workspace_id = $2 AND app_id = $3 AND version = $4",
            &[&scope.org_id, &scope.workspace_id, &app_id, &i64::from(version)],
        )
        .await
    }

    // ---- traffic splits ---------------------------------------------------------------

    pub(crate) async fn put_traffic_split(
        &self,
        scope: &Scope,
        split: &TrafficSplit,
    ) -> Result<Revision, StoreError> {
        let app_id = split.app_id.as_str();
        let doc = codec::encode(RecordKind::TrafficSplit, app_id, split)?;
        self.put_doc(
            RecordKind::TrafficSplit,
            scope,
            app_id,
            "INSERT INTO traffic_splits (org_id, workspace_id, app_id, doc) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (org_id, workspace_id, app_id) DO UPDATE SET doc = EXCLUDED.doc",
            &[&scope.org_id, &scope.workspace_id, &app_id, &doc],
        )
        .await
    }

    pub(crate) async fn get_traffic_split(
        &self,
        scope: &Scope,
        app_id: &str,
    ) -> Result<Option<TrafficSplit>, StoreError> {
        self.get_doc(
            RecordKind::TrafficSplit,
            "SELECT doc FROM traffic_splits WHERE org_id = $1 AND workspace_id = $2 AND app_id = $3",
            app_id,
            &[&scope.org_id, &scope.workspace_id, &app_id],
        )
        .await
    }

    pub(crate) async fn list_traffic_splits(
        &self,
        scope: &Scope,
    ) -> Result<Vec<TrafficSplit>, StoreError> {
        self.list_docs(
            RecordKind::TrafficSplit,
            "SELECT app_id, doc FROM traffic_splits WHERE org_id = $1 AND workspace_id = $2 ORDER BY app_id",
            &[&scope.org_id, &scope.workspace_id],
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
            scope,
            app_id,
            "DELETE FROM traffic_splits WHERE org_id = $1 AND workspace_id = $2 AND app_id = $3",
            &[&scope.org_id, &scope.workspace_id, &app_id],
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
        let mut client = self.inner.pool.get().await?;
        let (tx, revision) = self
            .begin(&mut client, RecordKind::Cohort, scope, &key)
            .await?;
        let dep_key = require_dep_key(&tx, scope, &cohort.deployment_id).await?;
        tx.execute(
            "INSERT INTO cohorts (dep_key, cohort_id, doc) VALUES ($1, $2, $3) \
             ON CONFLICT (dep_key, cohort_id) DO UPDATE SET doc = EXCLUDED.doc",
            &[&dep_key, &cohort.cohort_id, &doc],
        )
        .await
        .ctx("put cohort")?;
        tx.commit().await.ctx("commit cohort")?;
        Ok(revision)
    }

    pub(crate) async fn get_cohort(
        &self,
        scope: &Scope,
        deployment_id: &str,
        cohort_id: &str,
    ) -> Result<Option<Cohort>, StoreError> {
        self.get_doc(
            RecordKind::Cohort,
            "SELECT c.doc FROM cohorts c JOIN deployments d ON d.dep_key = c.dep_key \
             WHERE d.org_id = $1 AND d.workspace_id = $2 AND d.deployment_id = $3 AND c.cohort_id = $4",
            &codec::cohort_key(deployment_id, cohort_id),
            &[&scope.org_id, &scope.workspace_id, &deployment_id, &cohort_id],
        )
        .await
    }

    pub(crate) async fn list_cohorts(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Vec<Cohort>, StoreError> {
        let mut cohorts: Vec<Cohort> = self
            .list_docs(
                RecordKind::Cohort,
                "SELECT c.cohort_id, c.doc FROM cohorts c JOIN deployments d ON d.dep_key = c.dep_key \
                 WHERE d.org_id = $1 AND d.workspace_id = $2 AND d.deployment_id = $3",
                &[&scope.org_id, &scope.workspace_id, &deployment_id],
            )
            .await?;
        cohorts.sort_by_key(|cohort| cohort.sequence);
        Ok(cohorts)
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
        // One multi-row upsert may not touch a row twice: keep the last row per number,
        // which is what sequential upserts would have left.
        let mut seen = HashSet::with_capacity(rows.len());
        let (mut keys, mut phones, mut users, mut variables, mut overrides) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in rows.iter().rev() {
            if seen.insert(row.phone_key) {
                keys.push(row.phone_key);
                phones.push(row.phone_number.as_str());
                users.push(row.user_identifier.as_str());
                variables.push(row.app_variables.as_str());
                overrides.push(row.app_overrides.as_str());
            }
        }

        let mut client = self.inner.pool.get().await?;
        let (tx, revision) = self
            .begin(&mut client, RecordKind::CohortMembers, scope, deployment_id)
            .await?;
        let dep_key = require_dep_key(&tx, scope, deployment_id).await?;
        tx.execute(
            "INSERT INTO cohort_members \
             (dep_key, phone_key, phone_number, user_identifier, app_variables, app_overrides, revision) \
             SELECT $1, m.phone_key, m.phone_number, m.user_identifier, m.app_variables, m.app_overrides, $2 \
             FROM UNNEST($3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[]) \
               AS m (phone_key, phone_number, user_identifier, app_variables, app_overrides) \
             ON CONFLICT (dep_key, phone_key) DO UPDATE SET phone_number = EXCLUDED.phone_number, \
             user_identifier = EXCLUDED.user_identifier, app_variables = EXCLUDED.app_variables, \
             app_overrides = EXCLUDED.app_overrides, revision = EXCLUDED.revision",
            &[&dep_key, &revision, &keys, &phones, &users, &variables, &overrides],
        )
        .await
        .ctx("upsert cohort members")?;
        tx.commit().await.ctx("commit cohort members")?;
        Ok(revision)
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
             WHERE d.org_id = $1 AND d.workspace_id = $2 AND d.deployment_id = $3 AND m.revision = $4 \
             ORDER BY m.phone_number",
            &[&scope.org_id, &scope.workspace_id, &deployment_id, &revision],
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
                 WHERE d.org_id = $1 AND d.workspace_id = $2 AND d.deployment_id = $3 AND m.phone_key = $4",
                &[&scope.org_id, &scope.workspace_id, &deployment_id, &key],
            )
            .await?;
        Ok(members.pop())
    }

    async fn select_members(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<CohortMember>, StoreError> {
        let client = self.inner.pool.get().await?;
        let rows = client
            .query(sql, params)
            .await
            .ctx("select cohort members")?;
        rows.iter().map(|row| member_from_row(row, 0)).collect()
    }

    pub(crate) async fn count_cohort_members(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<u64, StoreError> {
        let client = self.inner.pool.get().await?;
        let count: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM cohort_members m JOIN deployments d ON d.dep_key = m.dep_key \
                 WHERE d.org_id = $1 AND d.workspace_id = $2 AND d.deployment_id = $3",
                &[&scope.org_id, &scope.workspace_id, &deployment_id],
            )
            .await
            .and_then(|row| row.try_get(0))
            .ctx("count cohort members")?;
        codec::to_u64("cohort member count", count)
    }

    // ---- settings ---------------------------------------------------------------------

    pub(crate) async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let client = self.inner.pool.get().await?;
        client
            .query_opt("SELECT value FROM settings WHERE key = $1", &[&key])
            .await
            .and_then(|row| row.map(|row| row.try_get(0)).transpose())
            .ctx("get setting")
    }

    pub(crate) async fn put_setting(&self, key: &str, value: &str) -> Result<Revision, StoreError> {
        self.put_doc(
            RecordKind::Setting,
            &global_scope(),
            key,
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&key, &value],
        )
        .await
    }

    pub(crate) async fn put_setting_if_absent(
        &self,
        key: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        let mut client = self.inner.pool.get().await?;
        let (tx, _) = self
            .begin(&mut client, RecordKind::Setting, &global_scope(), key)
            .await?;
        tx.execute(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &value],
        )
        .await
        .ctx("put setting")?;
        let effective: String = tx
            .query_one("SELECT value FROM settings WHERE key = $1", &[&key])
            .await
            .and_then(|row| row.try_get(0))
            .ctx("get setting")?;
        tx.commit().await.ctx("commit setting")?;
        Ok(effective)
    }

    // ---- shared shapes ----------------------------------------------------------------

    /// One write statement as a whole change.
    async fn put_doc(
        &self,
        kind: RecordKind,
        scope: &Scope,
        key: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Revision, StoreError> {
        let mut client = self.inner.pool.get().await?;
        let (tx, revision) = self.begin(&mut client, kind, scope, key).await?;
        tx.execute(sql, params).await.ctx("write record")?;
        tx.commit().await.ctx("commit record")?;
        Ok(revision)
    }

    /// Deletes the row `sql` names; `NotFound` (as `kind`/`key`) if there was none.
    async fn delete_doc(
        &self,
        kind: RecordKind,
        scope: &Scope,
        key: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Revision, StoreError> {
        let mut client = self.inner.pool.get().await?;
        let (tx, revision) = self.begin(&mut client, kind, scope, key).await?;
        if tx.execute(sql, params).await.ctx("delete record")? == 0 {
            return Err(StoreError::NotFound {
                kind,
                id: key.to_owned(),
            });
        }
        tx.commit().await.ctx("commit deletion")?;
        Ok(revision)
    }

    /// One JSON document (first column) selected by `sql`; `key` names it in errors.
    async fn get_doc<T: serde::de::DeserializeOwned>(
        &self,
        kind: RecordKind,
        sql: &str,
        key: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<T>, StoreError> {
        let client = self.inner.pool.get().await?;
        let row = client.query_opt(sql, params).await.ctx("get record")?;
        match row {
            Some(row) => Ok(Some(codec::decode(
                kind,
                key,
                row.try_get(0).ctx("get record")?,
            )?)),
            None => Ok(None),
        }
    }

    /// The documents `sql` selects as (key, doc) rows.
    async fn list_docs<T: serde::de::DeserializeOwned>(
        &self,
        kind: RecordKind,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<T>, StoreError> {
        let client = self.inner.pool.get().await?;
        let rows = client.query(sql, params).await.ctx("list records")?;
        docs_from_rows(kind, &rows)
    }
}

/// Applies the missing migrations in one transaction under an advisory lock.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.ctx("begin migration")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .ctx("take migration lock")?;
    tx.batch_execute(CREATE_SCHEMA_VERSION)
        .await
        .ctx("create schema_version")?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .ctx("read schema version")?;
    let supported = migrations::latest(migrations::POSTGRES);
    if current > i64::from(supported) {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for migration in migrations::POSTGRES
        .iter()
        .filter(|m| i64::from(m.version) > current)
    {
        let failed = |err: tokio_postgres::Error| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source: Box::new(err),
        };
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        let version = i32::try_from(migration.version).map_err(|_| StoreError::OutOfRange {
            field: "schema version",
            value: migration.version.to_string(),
        })?;
        tx.execute(
            "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
            &[&version, &migration.name],
        )
        .await
        .ctx("record schema version")?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied postgres migration"
        );
    }
    tx.commit().await.ctx("commit migration")
}

/// Bumps the revision, logs the change, prunes the log and queues the notification, in one
/// statement. The counter row stays locked until commit, so writers serialise and revisions
/// commit in order without gaps.
async fn record_change(
    tx: &Transaction<'_>,
    origin: &str,
    kind: RecordKind,
    scope: &Scope,
    key: &str,
) -> Result<Revision, StoreError> {
    const SQL: &str = "WITH bumped AS ( \
            UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value \
        ), logged AS ( \
            INSERT INTO changes (revision, origin, kind, org_id, workspace_id, key) \
            SELECT value, $1, $2, $3, $4, $5 FROM bumped \
        ), pruned AS ( \
            DELETE FROM changes WHERE revision <= (SELECT value FROM bumped) - $6 \
        ) \
        SELECT value, pg_notify($7, json_build_object( \
            'revision', value, 'origin', $1::TEXT, 'kind', $2::TEXT, \
            'scope', json_build_object('org_id', $3::TEXT, 'workspace_id', $4::TEXT), \
            'key', $5::TEXT)::TEXT)::TEXT \
        FROM bumped";
    let row = tx
        .query_one(
            SQL,
            &[
                &origin,
                &kind.as_str(),
                &scope.org_id,
                &scope.workspace_id,
                &key,
                &CHANGE_LOG_RETENTION,
                &NOTIFY_CHANNEL,
            ],
        )
        .await
        .ctx("record change")?;
    row.try_get(0).ctx("record change")
}

async fn current_revision(client: &impl GenericClient) -> Result<Revision, StoreError> {
    client
        .query_one("SELECT value FROM revision_counter WHERE id = 1", &[])
        .await
        .and_then(|row| row.try_get(0))
        .ctx("read revision")
}

async fn require_dep_key(
    client: &impl GenericClient,
    scope: &Scope,
    deployment_id: &str,
) -> Result<i64, StoreError> {
    let row = client
        .query_opt(
            "SELECT dep_key FROM deployments WHERE org_id = $1 AND workspace_id = $2 AND deployment_id = $3",
            &[&scope.org_id, &scope.workspace_id, &deployment_id],
        )
        .await
        .ctx("find deployment")?;
    match row {
        Some(row) => row.try_get(0).ctx("find deployment"),
        None => Err(StoreError::NotFound {
            kind: RecordKind::Deployment,
            id: deployment_id.to_owned(),
        }),
    }
}

/// Claims `numbers` (distinct) for the deployment in one statement; if any is owned
/// elsewhere, fails with the first such number and its owner.
async fn claim_numbers(
    tx: &Transaction<'_>,
    dep_key: i64,
    numbers: &[String],
) -> Result<(), StoreError> {
    let claimed = tx
        .execute(
            "INSERT INTO deployment_numbers (phone_number, dep_key) \
             SELECT UNNEST($1::TEXT[]), $2 ON CONFLICT (phone_number) DO NOTHING",
            &[&numbers, &dep_key],
        )
        .await
        .ctx("claim phone numbers")?;
    if claimed == numbers.len() as u64 {
        return Ok(());
    }
    let conflict = tx
        .query_opt(
            "SELECT n.phone_number, d.deployment_id FROM deployment_numbers n \
             JOIN deployments d ON d.dep_key = n.dep_key \
             WHERE n.phone_number = ANY($1::TEXT[]) AND n.dep_key <> $2 \
             ORDER BY n.phone_number COLLATE \"C\" LIMIT 1",
            &[&numbers, &dep_key],
        )
        .await
        .ctx("find number owner")?;
    match conflict {
        Some(row) => Err(StoreError::NumberTaken {
            phone_number: row.try_get(0).ctx("find number owner")?,
            deployment_id: row.try_get(1).ctx("find number owner")?,
        }),
        // Fewer rows than numbers, yet no other owner: only possible if `numbers` repeated one.
        None => Ok(()),
    }
}

/// Reads (org_id, workspace_id, key, doc) rows into scoped documents.
async fn load_scoped_docs<T: serde::de::DeserializeOwned>(
    tx: &Transaction<'_>,
    kind: RecordKind,
    sql: &str,
) -> Result<Vec<(Scope, T)>, StoreError> {
    let rows = tx.query(sql, &[]).await.ctx("load records")?;
    let mut docs = Vec::with_capacity(rows.len());
    for row in rows {
        let scope = Scope::new(
            row.try_get::<_, String>(0).ctx("load records")?,
            row.try_get::<_, String>(1).ctx("load records")?,
        );
        let key: &str = row.try_get(2).ctx("load records")?;
        docs.push((
            scope,
            codec::decode(kind, key, row.try_get(3).ctx("load records")?)?,
        ));
    }
    Ok(docs)
}

/// Decodes (key, doc) rows.
fn docs_from_rows<T: serde::de::DeserializeOwned>(
    kind: RecordKind,
    rows: &[Row],
) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(|row| {
            let key: &str = row.try_get(0).ctx("read records")?;
            codec::decode(kind, key, row.try_get(1).ctx("read records")?)
        })
        .collect()
}

/// A member from four columns starting at `first`: phone, user id, variables, overrides.
fn member_from_row(row: &Row, first: usize) -> Result<CohortMember, StoreError> {
    let column = |index: usize| -> Result<&str, StoreError> {
        row.try_get(first + index).ctx("read cohort member")
    };
    codec::decode_member(column(0)?, column(1)?, column(2)?, column(3)?)
}

// ---- connection pool ------------------------------------------------------------------

/// Idle clients plus a semaphore bounding how many are in use.
struct Pool {
    config: Config,
    tls: MakeRustls,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

/// A client on loan from the pool; goes back on drop unless its connection died.
struct PooledClient<'pool> {
    client: Option<Client>,
    pool: &'pool Pool,
    _permit: SemaphorePermit<'pool>,
}

impl Pool {
    fn new(config: Config, tls: MakeRustls) -> Self {
        Pool {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(POOL_SIZE),
        }
    }

    async fn get(&self) -> Result<PooledClient<'_>, StoreError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::TaskFailed {
                reason: "connection pool closed".into(),
            })?;
        let reusable = loop {
            match lock(&self.idle).pop() {
                Some(client) if client.is_closed() => continue,
                other => break other,
            }
        };
        let client = match reusable {
            Some(client) => client,
            None => connect(&self.config, &self.tls).await?,
        };
        Ok(PooledClient {
            client: Some(client),
            pool: self,
            _permit: permit,
        })
    }
}

impl Deref for PooledClient<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a pooled client is present until dropped")
    }
}

impl DerefMut for PooledClient<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a pooled client is present until dropped")
    }
}

impl Drop for PooledClient<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // A transaction dropped without commit has queued its ROLLBACK on this
            // connection, which runs before the next borrower's statements.
            if !client.is_closed() {
                lock(&self.pool.idle).push(client);
            }
        }
    }
}

async fn connect(config: &Config, tls: &MakeRustls) -> Result<Client, StoreError> {
    let (client, connection) = config.connect(tls.clone()).await.ctx("connect")?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(%err, "postgres connection closed with an error");
        }
    });
    Ok(client)
}

// ---- change listener ------------------------------------------------------------------

/// The notification payload `record_change` builds with `json_build_object`.
#[derive(Debug, Deserialize)]
struct NoticePayload {
    revision: Revision,
    origin: String,
    kind: String,
    scope: Scope,
    key: String,
}

/// A connection that has run `LISTEN`; its notifications arrive on `notifications`, which
/// closes when the connection dies.
struct ListenConnection {
    client: Client,
    notifications: mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for ListenConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl ListenConnection {
    async fn connect(config: &Config, tls: &MakeRustls) -> Result<Self, StoreError> {
        let (client, mut connection) = config.connect(tls.clone()).await.ctx("connect listener")?;
        let (sender, notifications) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(notification)) => {
                        if sender.send(notification).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {} // server notices: nothing to act on
                    Err(err) => {
                        tracing::warn!(%err, "change listener connection failed");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await
            .ctx("listen for changes")?;
        Ok(ListenConnection {
            client,
            notifications,
            driver,
        })
    }
}

/// Turns committed changes into notices, in revision order, exactly once each.
struct Listener {
    config: Config,
    tls: MakeRustls,
    origin: String,
    notices: broadcast::Sender<ChangeNotice>,
    /// Every revision up to here has been seen (emitted, or skipped as our own).
    last_seen: Revision,
}

impl Listener {
    async fn run(mut self, mut connection: ListenConnection, mut stop: oneshot::Receiver<()>) {
        loop {
            match self.catch_up(&connection.client).await {
                Ok(()) => loop {
                    tokio::select! {
                        _ = &mut stop => return,
                        received = connection.notifications.recv() => match received {
                            Some(notification) => {
                                if let Err(err) = self.deliver(&connection.client, notification.payload()).await {
                                    tracing::warn!(%err, "change listener failed to catch up");
                                    break;
                                }
                            }
                            None => break,
                        },
                    }
                },
                Err(err) => tracing::warn!(%err, "change listener failed to catch up"),
            }
            drop(connection);
            tracing::warn!("change listener disconnected; reconnecting");
            connection = match self.reconnect(&mut stop).await {
                Some(connection) => connection,
                None => return,
            };
        }
    }

    /// Reconnects with exponential backoff; `None` once the store is dropped.
    async fn reconnect(&self, stop: &mut oneshot::Receiver<()>) -> Option<ListenConnection> {
        let mut backoff = RECONNECT_BACKOFF_MIN;
        loop {
            tokio::select! {
                _ = &mut *stop => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            tokio::select! {
                _ = &mut *stop => return None,
                connected = ListenConnection::connect(&self.config, &self.tls) => match connected {
                    Ok(connection) => {
                        tracing::info!("change listener reconnected");
                        return Some(connection);
                    }
                    Err(err) => {
                        tracing::warn!(%err, ?backoff, "change listener reconnect failed");
                        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    }
                },
            }
        }
    }

    async fn deliver(&mut self, client: &Client, payload: &str) -> Result<(), StoreError> {
        let notice: NoticePayload = match serde_json::from_str(payload) {
            Ok(notice) => notice,
            Err(err) => {
                // Not ours (someone else NOTIFYing on the channel): the change log is the truth.
                tracing::warn!(%err, "ignoring malformed change notification");
                return self.catch_up(client).await;
            }
        };
        if notice.revision <= self.last_seen {
            return Ok(()); // already replayed from the change log
        }
        if notice.revision > self.last_seen + 1 {
            return self.catch_up(client).await; // a gap: the log has the missing ones, in order
        }
        self.emit(
            notice.revision,
            &notice.origin,
            &notice.kind,
            notice.scope,
            notice.key,
        );
        Ok(())
    }

    /// Replays committed changes after `last_seen` from the change log; if some were pruned,
    /// emits one `Resync` instead.
    async fn catch_up(&mut self, client: &Client) -> Result<(), StoreError> {
        let rows = client
            .query(
                "SELECT revision, origin, kind, org_id, workspace_id, key FROM changes \
                 WHERE revision > $1 ORDER BY revision",
                &[&self.last_seen],
            )
            .await
            .ctx("read change log")?;
        let revision_of =
            |row: &Row| -> Result<Revision, StoreError> { row.try_get(0).ctx("read change log") };
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            if revision_of(first)? > self.last_seen + 1 {
                self.last_seen = revision_of(last)?;
                self.send(ChangeNotice {
                    revision: self.last_seen,
                    kind: RecordKind::Resync,
                    scope: Scope::new("", ""),
                    key: String::new(),
                });
                return Ok(());
            }
        }
        for row in rows {
            let text = |index: usize| -> Result<String, StoreError> {
                row.try_get(index).ctx("read change log")
            };
            let scope = Scope::new(text(3)?, text(4)?);
            self.emit(revision_of(&row)?, &text(1)?, &text(2)?, scope, text(5)?);
        }
        Ok(())
    }

    fn emit(&mut self, revision: Revision, origin: &str, kind: &str, scope: Scope, key: String) {
        self.last_seen = revision;
        if origin == self.origin {
            return;
        }
        let notice = match kind.parse::<RecordKind>() {
            Ok(kind) => ChangeNotice {
                revision,
                kind,
                scope,
                key,
            },
            // Written by a newer build: we cannot apply it piecemeal, so reload everything.
            Err(_) => ChangeNotice {
                revision,
                kind: RecordKind::Resync,
                scope: Scope::new("", ""),
                key: String::new(),
            },
        };
        self.send(notice);
    }

    fn send(&self, notice: ChangeNotice) {
        // An error only means nobody subscribed yet; the notice is then simply not needed.
        let _ = self.notices.send(notice);
    }
}
