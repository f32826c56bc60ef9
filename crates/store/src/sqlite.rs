//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! One writer connection behind a mutex (SQLite allows one writer at a time anyway; queuing in
//! the process is cheaper than `SQLITE_BUSY` retries) and a small pool of read-only
//! connections, which WAL lets run beside the writer. Every call runs on tokio's blocking pool.

use std::fmt;
use std::future::ready;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rusqlite::{params, params_from_iter, Connection, Row};
use tokio::sync::broadcast;

use crate::codec::MemberRow;
use crate::db::{Db, DbRow, Op, RowVisitor, Value};
use crate::error::Context;
use crate::migrations;
use crate::{
    Access, BackendKind, Change, ChangeNotice, Revision, StoreError, CHANGE_LOG_RETENTION,
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves at most an open transaction, which
    // `in_transaction` rolls back before the next one, so the connection is still usable.
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

/// Runs an operation of the document layer to completion. On SQLite every [`Db`] call does its
/// work before returning a ready future, so the operation never waits; one that did would be a
/// bug, reported rather than blocked on.
fn run_now<T>(op: Op<'_, T>) -> Result<T, StoreError> {
    op.now_or_never().unwrap_or_else(|| {
        Err(StoreError::TaskFailed {
            reason: "a sqlite operation waited on something".into(),
        })
    })
}

/// Runs `body` between `begin` and `COMMIT`, rolling back if it fails.
fn in_transaction<T>(
    conn: &mut Connection,
    begin: &str,
    body: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    if !conn.is_autocommit() {
        // Left open by a panic in an earlier call: discard it.
        conn.execute_batch("ROLLBACK")
            .ctx("roll back abandoned transaction")?;
    }
    conn.execute_batch(begin).ctx("begin transaction")?;
    let result = body(conn).and_then(|output| {
        conn.execute_batch("COMMIT").ctx("commit transaction")?;
        Ok(output)
    });
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
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
            in_transaction(&mut writer, "BEGIN IMMEDIATE", |conn| {
                run_now(Box::pin(migrations::apply(
                    &mut SqliteDb { conn },
                    migrations::SQLITE,
                )))
            })?;
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

    /// Runs `op` in one `BEGIN IMMEDIATE` transaction on the writer, after bumping the
    /// revision and logging `change`; commits (fsync) before returning.
    pub(crate) async fn write<T, F>(
        &self,
        change: Change,
        op: F,
    ) -> Result<(Revision, T), StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut dyn Db, Revision) -> Op<'a, T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let mut conn = lock(&inner.writer);
            in_transaction(&mut conn, "BEGIN IMMEDIATE", |conn| {
                let revision = record_change(conn, &inner.origin, &change)?;
                let output = run_now(op(&mut SqliteDb { conn }, revision))?;
                Ok((revision, output))
            })
        })
        .await
    }

    /// Runs `op` as `access` says: on a pooled read-only connection (in one WAL snapshot for
    /// [`Access::Snapshot`]), or on the writer outside the revision counter and change log for
    /// tables that are not routing data (the webhook outbox).
    pub(crate) async fn run<T, F>(&self, access: Access, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut dyn Db) -> Op<'a, T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            if access == Access::UnloggedWrite {
                return run_now(op(&mut SqliteDb {
                    conn: &mut lock(&inner.writer),
                }));
            }
            let pooled = lock(&inner.readers).pop();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&inner.path)?,
            };
            let result = match access {
                Access::Snapshot => in_transaction(&mut conn, "BEGIN", |conn| {
                    run_now(op(&mut SqliteDb { conn }))
                }),
                _ => run_now(op(&mut SqliteDb { conn: &mut conn })),
            };
            let mut idle = lock(&inner.readers);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
    }
}

/// The SQLite side of [`Db`]: statements are prepared once per connection and cached.
struct SqliteDb<'c> {
    conn: &'c mut Connection,
}

struct SqliteRow<'r, 's> {
    row: &'r Row<'s>,
    operation: &'static str,
}

impl DbRow for SqliteRow<'_, '_> {
    fn text(&self, index: usize) -> Result<&str, StoreError> {
        // Borrowed from the row: no allocation per column.
        self.row
            .get_ref(index)
            .and_then(|value| {
                value.as_str().map_err(|err| {
                    rusqlite::Error::FromSqlConversionFailure(
                        index,
                        rusqlite::types::Type::Text,
                        Box::new(err),
                    )
                })
            })
            .ctx(self.operation)
    }

    fn int(&self, index: usize) -> Result<i64, StoreError> {
        self.row.get(index).ctx(self.operation)
    }
}

impl SqliteDb<'_> {
    fn query_now(
        &mut self,
        operation: &'static str,
        sql: &str,
        params: &[Value],
        each: &mut RowVisitor<'_>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).ctx(operation)?;
        let mut rows = stmt.query(params_from_iter(params)).ctx(operation)?;
        while let Some(row) = rows.next().ctx(operation)? {
            each(&SqliteRow { row, operation })?;
        }
        Ok(())
    }

    fn upsert_members_now(
        &mut self,
        dep_key: i64,
        revision: Revision,
        rows: &[MemberRow],
    ) -> Result<(), StoreError> {
        // One cached statement per row: SQLite has no round trips to save, and sequential
        // upserts leave the last row per number, as the contract says.
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO cohort_members \
                 (dep_key, phone_key, phone_number, user_identifier, app_variables, app_overrides, revision) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (dep_key, phone_key) DO UPDATE SET phone_number = excluded.phone_number, \
                 user_identifier = excluded.user_identifier, app_variables = excluded.app_variables, \
                 app_overrides = excluded.app_overrides, revision = excluded.revision",
            )
            .ctx("prepare cohort member upsert")?;
        for row in rows {
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
    }
}

impl Db for SqliteDb<'_> {
    fn backend(&self) -> BackendKind {
        BackendKind::Sqlite
    }

    fn execute<'a>(
        &'a mut self,
        operation: &'static str,
        sql: &'a str,
        params: &'a [Value],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let changed = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(params_from_iter(params)))
            .ctx(operation)
            .map(|rows| rows as u64);
        Box::pin(ready(changed))
    }

    fn query<'a>(
        &'a mut self,
        operation: &'static str,
        sql: &'a str,
        params: &'a [Value],
        each: &'a mut RowVisitor<'_>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(ready(self.query_now(operation, sql, params, each)))
    }

    fn execute_batch<'a>(
        &'a mut self,
        operation: &'static str,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(ready(self.conn.execute_batch(sql).ctx(operation)))
    }

    fn upsert_members<'a>(
        &'a mut self,
        dep_key: i64,
        revision: Revision,
        rows: &'a [MemberRow],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(ready(self.upsert_members_now(dep_key, revision, rows)))
    }
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

/// Bumps the revision counter and logs the change; prunes the log beyond its retention.
fn record_change(conn: &Connection, origin: &str, change: &Change) -> Result<Revision, StoreError> {
    let revision: Revision = conn
        .prepare_cached(
            "UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value",
        )
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
        .ctx("bump revision")?;
    conn.prepare_cached(
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
    conn.prepare_cached("DELETE FROM changes WHERE revision <= ?1")
        .and_then(|mut stmt| stmt.execute([revision - CHANGE_LOG_RETENTION]))
        .ctx("prune change log")?;
    Ok(revision)
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
