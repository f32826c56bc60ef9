//! The webhook outbox: deliveries written before their first attempt and deleted once done.
//!
//! The gateway's webhook dispatcher enqueues a delivery (its signed-later body, url and
//! secret), attempts it, and then either removes it (delivered or given up) or reschedules it.
//! A crash between any two of these leaves the row in place, so the next start delivers it
//! again with the same `event_id`: at-least-once. [`crate::Store::outbox_claim_due`] pushes
//! the rows it returns forward by a lease, so a restarted gateway, or another gateway on the
//! same PostgreSQL database, does not attempt a row another attempt is still working on.
//!
//! Outbox writes are not routing data: they bump no revision and send no change notice.

use rusqlite::{params, Connection, Row};

use crate::error::Context;
use crate::{postgres::PgStore, sqlite::SqliteStore, StoreError};

/// A delivery to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The event's id: the same on every attempt, so receivers can drop duplicates.
    pub event_id: String,
    pub url: String,
    /// The HMAC key the body is signed with at each attempt.
    pub secret: String,
    /// The JSON body, byte for byte what every attempt sends.
    pub body: String,
    /// Unix milliseconds the event happened (the give-up deadline counts from here).
    pub created_ms: i64,
    /// Unix milliseconds before which no one else may attempt it (the first attempt's lease).
    pub next_attempt_ms: i64,
}

/// A pending delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    /// The outbox row id (for [`crate::Store::outbox_reschedule`] and `outbox_remove`).
    pub id: i64,
    pub event_id: String,
    pub url: String,
    pub secret: String,
    pub body: String,
    /// Attempts made so far (failed ones; a delivered row is gone).
    pub attempts: u32,
    pub created_ms: i64,
    pub next_attempt_ms: i64,
}

const COLUMNS: &str = "id, event_id, url, secret, body, attempts, created_ms, next_attempt_ms";

fn sqlite_row(row: &Row<'_>) -> rusqlite::Result<PendingDelivery> {
    Ok(PendingDelivery {
        id: row.get(0)?,
        event_id: row.get(1)?,
        url: row.get(2)?,
        secret: row.get(3)?,
        body: row.get(4)?,
        attempts: row.get(5)?,
        created_ms: row.get(6)?,
        next_attempt_ms: row.get(7)?,
    })
}

fn pg_row(row: &tokio_postgres::Row) -> PendingDelivery {
    PendingDelivery {
        id: row.get(0),
        event_id: row.get(1),
        url: row.get(2),
        secret: row.get(3),
        body: row.get(4),
        attempts: u32::try_from(row.get::<_, i32>(5)).unwrap_or(0),
        created_ms: row.get(6),
        next_attempt_ms: row.get(7),
    }
}

fn pg_attempts(attempts: u32) -> i32 {
    i32::try_from(attempts).unwrap_or(i32::MAX)
}

// ---- SQLite --------------------------------------------------------------------------

pub(crate) async fn sqlite_enqueue(
    store: &SqliteStore,
    delivery: NewDelivery,
) -> Result<i64, StoreError> {
    store
        .with_writer(move |conn: &mut Connection| {
            conn.execute(
                "INSERT INTO webhook_outbox (event_id, url, secret, body, created_ms, next_attempt_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    delivery.event_id,
                    delivery.url,
                    delivery.secret,
                    delivery.body,
                    delivery.created_ms,
                    delivery.next_attempt_ms
                ],
            )
            .ctx("enqueue webhook delivery")?;
            Ok(conn.last_insert_rowid())
        })
        .await
}

pub(crate) async fn sqlite_claim_due(
    store: &SqliteStore,
    now_ms: i64,
    lease_until_ms: i64,
    limit: u32,
) -> Result<Vec<PendingDelivery>, StoreError> {
    store
        .with_writer(move |conn: &mut Connection| {
            let sql = format!(
                "UPDATE webhook_outbox SET next_attempt_ms = ?2 WHERE id IN \
                 (SELECT id FROM webhook_outbox WHERE next_attempt_ms <= ?1 \
                  ORDER BY next_attempt_ms LIMIT ?3) RETURNING {COLUMNS}"
            );
            let mut stmt = conn.prepare(&sql).ctx("claim webhook deliveries")?;
            let rows = stmt
                .query_map(params![now_ms, lease_until_ms, limit], sqlite_row)
                .ctx("claim webhook deliveries")?;
            rows.collect::<Result<Vec<_>, _>>()
                .ctx("claim webhook deliveries")
        })
        .await
}

pub(crate) async fn sqlite_reschedule(
    store: &SqliteStore,
    id: i64,
    attempts: u32,
    next_attempt_ms: i64,
) -> Result<(), StoreError> {
    store
        .with_writer(move |conn: &mut Connection| {
            conn.execute(
                "UPDATE webhook_outbox SET attempts = ?2, next_attempt_ms = ?3 WHERE id = ?1",
                params![id, attempts, next_attempt_ms],
            )
            .ctx("reschedule webhook delivery")?;
            Ok(())
        })
        .await
}

pub(crate) async fn sqlite_remove(store: &SqliteStore, id: i64) -> Result<(), StoreError> {
    store
        .with_writer(move |conn: &mut Connection| {
            conn.execute("DELETE FROM webhook_outbox WHERE id = ?1", params![id])
                .ctx("remove webhook delivery")?;
            Ok(())
        })
        .await
}

pub(crate) async fn sqlite_pending(store: &SqliteStore) -> Result<u64, StoreError> {
    store
        .with_writer(|conn: &mut Connection| {
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM webhook_outbox", [], |r| r.get(0))
                .ctx("count webhook deliveries")?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
}

// ---- PostgreSQL ----------------------------------------------------------------------

pub(crate) async fn pg_enqueue(store: &PgStore, delivery: NewDelivery) -> Result<i64, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_one(
            "INSERT INTO webhook_outbox (event_id, url, secret, body, created_ms, next_attempt_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &delivery.event_id,
                &delivery.url,
                &delivery.secret,
                &delivery.body,
                &delivery.created_ms,
                &delivery.next_attempt_ms,
            ],
        )
        .await
        .ctx("enqueue webhook delivery")?;
    Ok(row.get(0))
}

pub(crate) async fn pg_claim_due(
    store: &PgStore,
    now_ms: i64,
    lease_until_ms: i64,
    limit: u32,
) -> Result<Vec<PendingDelivery>, StoreError> {
    let client = store.client().await?;
    // SKIP LOCKED: gateways sweeping at once each take different rows.
    let sql = format!(
        "UPDATE webhook_outbox SET next_attempt_ms = $2 WHERE id IN \
         (SELECT id FROM webhook_outbox WHERE next_attempt_ms <= $1 \
          ORDER BY next_attempt_ms LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}"
    );
    let rows = client
        .query(&sql, &[&now_ms, &lease_until_ms, &i64::from(limit)])
        .await
        .ctx("claim webhook deliveries")?;
    Ok(rows.iter().map(pg_row).collect())
}

pub(crate) async fn pg_reschedule(
    store: &PgStore,
    id: i64,
    attempts: u32,
    next_attempt_ms: i64,
) -> Result<(), StoreError> {
    let client = store.client().await?;
    client
        .execute(
            "UPDATE webhook_outbox SET attempts = $2, next_attempt_ms = $3 WHERE id = $1",
            &[&id, &pg_attempts(attempts), &next_attempt_ms],
        )
        .await
        .ctx("reschedule webhook delivery")?;
    Ok(())
}

pub(crate) async fn pg_remove(store: &PgStore, id: i64) -> Result<(), StoreError> {
    let client = store.client().await?;
    client
        .execute("DELETE FROM webhook_outbox WHERE id = $1", &[&id])
        .await
        .ctx("remove webhook delivery")?;
    Ok(())
}

pub(crate) async fn pg_pending(store: &PgStore) -> Result<u64, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_one("SELECT COUNT(*) FROM webhook_outbox", &[])
        .await
        .ctx("count webhook deliveries")?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}
