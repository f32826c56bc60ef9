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

use crate::db::{query_all, query_int, DbRow, Value};
use crate::{Access, BackendKind, Store, StoreError};

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

fn delivery_from_row(row: &dyn DbRow) -> Result<PendingDelivery, StoreError> {
    Ok(PendingDelivery {
        id: row.int(0)?,
        event_id: row.text(1)?.to_owned(),
        url: row.text(2)?.to_owned(),
        secret: row.text(3)?.to_owned(),
        body: row.text(4)?.to_owned(),
        attempts: u32::try_from(row.int(5)?).unwrap_or(0),
        created_ms: row.int(6)?,
        next_attempt_ms: row.int(7)?,
    })
}

/// The webhook outbox: at-least-once delivery that survives crashes.
impl Store {
    /// Writes a delivery before its first attempt; returns its row id. Committed on return.
    pub async fn outbox_enqueue(&self, delivery: NewDelivery) -> Result<i64, StoreError> {
        let params = vec![
            Value::Text(delivery.event_id),
            Value::Text(delivery.url),
            Value::Text(delivery.secret),
            Value::Text(delivery.body),
            Value::Int(delivery.created_ms),
            Value::Int(delivery.next_attempt_ms),
        ];
        self.run(Access::UnloggedWrite, move |db| {
            Box::pin(async move {
                let sql = "INSERT INTO webhook_outbox \
                     (event_id, url, secret, body, created_ms, next_attempt_ms) \
                     VALUES (?, ?, ?, ?, ?, ?) RETURNING id";
                query_int(db, "enqueue webhook delivery", sql, &params).await
            })
        })
        .await
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
        let params = vec![
            Value::Int(lease_until_ms),
            Value::Int(now_ms),
            Value::Int(i64::from(limit)),
        ];
        self.run(Access::UnloggedWrite, move |db| {
            Box::pin(async move {
                // SKIP LOCKED: PostgreSQL gateways sweeping at once each take different rows
                // (SQLite has one writer, so nobody to skip).
                let skip_locked = match db.backend() {
                    BackendKind::Postgres => " FOR UPDATE SKIP LOCKED",
                    BackendKind::Sqlite => "",
                };
                let sql = format!(
                    "UPDATE webhook_outbox SET next_attempt_ms = ? WHERE id IN \
                     (SELECT id FROM webhook_outbox WHERE next_attempt_ms <= ? \
                      ORDER BY next_attempt_ms LIMIT ?{skip_locked}) RETURNING {COLUMNS}"
                );
                let operation = "claim webhook deliveries";
                query_all(db, operation, &sql, &params, delivery_from_row).await
            })
        })
        .await
    }

    /// Records a failed attempt: `attempts` so far, next try at `next_attempt_ms`.
    pub async fn outbox_reschedule(
        &self,
        id: i64,
        attempts: u32,
        next_attempt_ms: i64,
    ) -> Result<(), StoreError> {
        // The column is a 32-bit INTEGER in PostgreSQL: saturate rather than fail.
        let attempts = i64::from(attempts.min(i32::MAX as u32));
        let params = vec![
            Value::Int(attempts),
            Value::Int(next_attempt_ms),
            Value::Int(id),
        ];
        let sql = "UPDATE webhook_outbox SET attempts = ?, next_attempt_ms = ? WHERE id = ?";
        self.outbox_execute("reschedule webhook delivery", sql, params)
            .await
    }

    /// Deletes a delivery that was delivered or given up.
    pub async fn outbox_remove(&self, id: i64) -> Result<(), StoreError> {
        let sql = "DELETE FROM webhook_outbox WHERE id = ?";
        self.outbox_execute("remove webhook delivery", sql, vec![Value::Int(id)])
            .await
    }

    /// How many deliveries are pending.
    pub async fn outbox_pending(&self) -> Result<u64, StoreError> {
        let count = self
            .run(Access::Read, |db| {
                Box::pin(async move {
                    let sql = "SELECT COUNT(*) FROM webhook_outbox";
                    query_int(db, "count webhook deliveries", sql, &[]).await
                })
            })
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn outbox_execute(
        &self,
        operation: &'static str,
        sql: &'static str,
        params: Vec<Value>,
    ) -> Result<(), StoreError> {
        self.run(Access::UnloggedWrite, move |db| {
            Box::pin(async move {
                db.execute(operation, sql, &params).await?;
                Ok(())
            })
        })
        .await
    }
}
