//! The PostgreSQL backend: several gateways on one database.
//!
//! Queries run on a small pool of connections (a `Vec` of idle clients plus a semaphore; the
//! gateway writes rarely and every write serialises on the revision row anyway). Each write
//! bumps the revision, logs the change and calls `pg_notify` in one statement inside its
//! transaction, so the notification goes out exactly when the write commits. One more
//! connection `LISTEN`s; it turns other instances' notifications into [`ChangeNotice`]s and,
//! after a reconnect, replays what it missed from the change log.

use std::collections::HashSet;
use std::fmt;
use std::future::poll_fn;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{pin_mut, TryStreamExt};
use serde::Deserialize;
use switchboard_routing::model::Scope;
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore, SemaphorePermit};
use tokio_postgres::types::Type;
use tokio_postgres::{
    AsyncMessage, Client, Config, GenericClient, IsolationLevel, Row, Transaction,
};

use crate::codec::MemberRow;
use crate::db::{postgres_placeholders, Db, DbRow, Op, RowVisitor, Value};
use crate::error::Context;
use crate::migrations;
use crate::pg_tls::{self, MakeRustls};
use crate::{
    Access, BackendKind, Change, ChangeNotice, RecordKind, Revision, StoreError,
    CHANGE_LOG_RETENTION, NOTICE_CHANNEL_CAPACITY,
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

    /// Starts a transaction, records `change` in it (revision, log, notify), runs `op` and
    /// commits; the notification goes out with the commit.
    pub(crate) async fn write<T, F>(
        &self,
        change: Change,
        op: F,
    ) -> Result<(Revision, T), StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut dyn Db, Revision) -> Op<'a, T> + Send + 'static,
    {
        let mut client = self.inner.pool.get().await?;
        let tx = client.transaction().await.ctx("begin write transaction")?;
        let revision = record_change(&tx, &self.inner.origin, &change).await?;
        let output = op(&mut PgDb { client: &tx }, revision).await?;
        tx.commit().await.ctx("commit write transaction")?;
        Ok((revision, output))
    }

    /// Runs `op` on a pooled connection; for [`Access::Snapshot`] in one read-only REPEATABLE
    /// READ transaction, so every statement sees the same snapshot.
    pub(crate) async fn run<T, F>(&self, access: Access, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut dyn Db) -> Op<'a, T> + Send + 'static,
    {
        let mut client = self.inner.pool.get().await?;
        if access != Access::Snapshot {
            return op(&mut PgDb { client: &*client }).await;
        }
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .ctx("begin snapshot read")?;
        let output = op(&mut PgDb { client: &tx }).await?;
        tx.commit().await.ctx("end snapshot read")?;
        Ok(output)
    }
}

/// Applies the missing migrations in one transaction under an advisory lock, so gateways
/// starting together migrate once.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.ctx("begin migration")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .ctx("take migration lock")?;
    migrations::apply(&mut PgDb { client: &tx }, migrations::POSTGRES).await?;
    tx.commit().await.ctx("commit migration")
}

/// Bumps the revision, logs the change, prunes the log and queues the notification, in one
/// statement. The counter row stays locked until commit, so writers serialise and revisions
/// commit in order without gaps.
async fn record_change(
    tx: &Transaction<'_>,
    origin: &str,
    change: &Change,
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
                &change.kind.as_str(),
                &change.scope.org_id,
                &change.scope.workspace_id,
                &change.key,
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

/// The PostgreSQL side of [`Db`], on a pooled client or a transaction.
struct PgDb<'c, C> {
    client: &'c C,
}

struct PgRow<'r> {
    row: &'r Row,
    operation: &'static str,
}

impl DbRow for PgRow<'_> {
    fn text(&self, index: usize) -> Result<&str, StoreError> {
        self.row.try_get(index).ctx(self.operation)
    }

    fn int(&self, index: usize) -> Result<i64, StoreError> {
        let column_type = self.row.columns().get(index).map(|column| column.type_());
        match column_type {
            Some(&Type::INT4) => self.row.try_get::<_, i32>(index).map(i64::from),
            Some(&Type::INT2) => self.row.try_get::<_, i16>(index).map(i64::from),
            _ => self.row.try_get(index),
        }
        .ctx(self.operation)
    }
}

impl<C: GenericClient + Sync> Db for PgDb<'_, C> {
    fn backend(&self) -> BackendKind {
        BackendKind::Postgres
    }

    fn execute<'a>(
        &'a mut self,
        operation: &'static str,
        sql: &'a str,
        params: &'a [Value],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let sql = postgres_placeholders(sql);
            self.client
                .execute_raw(sql.as_str(), params.iter())
                .await
                .ctx(operation)
        })
    }

    fn query<'a>(
        &'a mut self,
        operation: &'static str,
        sql: &'a str,
        params: &'a [Value],
        each: &'a mut RowVisitor<'_>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let sql = postgres_placeholders(sql);
            // Streamed: rows are handed on as they arrive, never collected first.
            let stream = self
                .client
                .query_raw(sql.as_str(), params.iter())
                .await
                .ctx(operation)?;
            pin_mut!(stream);
            while let Some(row) = stream.try_next().await.ctx(operation)? {
                each(&PgRow {
                    row: &row,
                    operation,
                })?;
            }
            Ok(())
        })
    }

    fn execute_batch<'a>(
        &'a mut self,
        operation: &'static str,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.client.batch_execute(sql).await.ctx(operation) })
    }

    fn upsert_members<'a>(
        &'a mut self,
        dep_key: i64,
        revision: Revision,
        rows: &'a [MemberRow],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
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
            // Arrays of columns, one statement per batch: the whole batch in one round trip.
            self.client
                .execute(
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
            Ok(())
        })
    }
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
