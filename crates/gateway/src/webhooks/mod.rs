//! Webhook delivery: each event a deployment's `webhook_config` subscribes to is POSTed,
//! signed ([`sign`]), to its URL, at least once.
//!
//! The dispatcher task takes events from the event bus's queue (the call path never waits
//! for it), looks up the deployment's webhook in the routing snapshot, and starts a delivery:
//! the delivery is written to the store's outbox **before** the first attempt, then attempted
//! ([`client`]); delivered or given up, the row is deleted, otherwise rescheduled by the pure
//! [`schedule::RetryPolicy`]. A sweep every [`SWEEP_INTERVAL`] claims due rows — retries, and
//! rows a crashed or restarted process left — so neither a restart nor kill -9 loses a
//! delivery; every attempt repeats the stored body, hence the same `event_id`.
//!
//! `switchboard_webhook_deliveries_total{outcome}`: `delivered`, `retry` (a failed attempt
//! that will be retried), `gave_up`, `dropped` (no room in the queue), `store_error`.

pub mod client;
pub mod schedule;
pub mod sign;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use switchboard_store::{NewDelivery, PendingDelivery, Store};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::client::{post, Attempt};
use self::schedule::{NextStep, RetryPolicy};
use crate::events::Published;
use crate::state::AppState;

/// How often due deliveries are looked for in the outbox.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// A claimed row is left alone for the attempt's budget plus this margin.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Unix milliseconds of `t`.
fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What every delivery task shares.
#[derive(Debug)]
struct Deliverer {
    store: Store,
    outcomes: prometheus::IntCounterVec,
    policy: RetryPolicy,
    timeout: Duration,
    slots: Arc<Semaphore>,
    /// Verifies `https://` receivers: the same trust as `wss://` agents.
    tls: Arc<rustls::ClientConfig>,
}

impl Deliverer {
    fn lease_until(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(i64::try_from((self.timeout + LEASE_MARGIN).as_millis()).unwrap_or(0))
    }

    fn count(&self, outcome: &str) {
        self.outcomes.with_label_values(&[outcome]).inc();
    }

    /// Writes the delivery to the outbox, then makes the first attempt.
    async fn start(&self, delivery: NewDelivery) {
        let row = PendingDelivery {
            id: 0,
            event_id: delivery.event_id.clone(),
            url: delivery.url.clone(),
            secret: delivery.secret.clone(),
            body: delivery.body.clone(),
            attempts: 0,
            created_ms: delivery.created_ms,
            next_attempt_ms: delivery.next_attempt_ms,
        };
        match self.store.outbox_enqueue(delivery).await {
            Ok(id) => self.attempt(PendingDelivery { id, ..row }).await,
            Err(e) => {
                // Not durable: still try once, so a store outage alone loses nothing that
                // the receiver can take now.
                self.count("store_error");
                tracing::warn!(error = %e, event_id = %row.event_id, "webhook outbox write failed");
                if self.send(&row).await.is_ok() {
                    self.count("delivered");
                }
            }
        }
    }

    /// One attempt of a stored delivery, and its bookkeeping.
    async fn attempt(&self, row: PendingDelivery) {
        let result = self.send(&row).await;
        let now_ms = unix_ms(SystemTime::now());
        let attempts = row.attempts.saturating_add(1);
        let stored = match result {
            Ok(_) => {
                self.count("delivered");
                self.store.outbox_remove(row.id).await
            }
            Err(e) => {
                match self
                    .policy
                    .after_failure(attempts, row.created_ms, now_ms, rand::random())
                {
                    NextStep::RetryAt(at) => {
                        self.count("retry");
                        tracing::debug!(event_id = %row.event_id, attempts, error = %e, "webhook attempt failed; will retry");
                        self.store.outbox_reschedule(row.id, attempts, at).await
                    }
                    NextStep::GiveUp => {
                        self.count("gave_up");
                        tracing::warn!(event_id = %row.event_id, url = %row.url, attempts, error = %e, "webhook delivery given up");
                        self.store.outbox_remove(row.id).await
                    }
                }
            }
        };
        if let Err(e) = stored {
            // The row stays as it was; the sweep retries it once its lease runs out.
            self.count("store_error");
            tracing::warn!(error = %e, event_id = %row.event_id, "webhook outbox update failed");
        }
    }

    async fn send(&self, row: &PendingDelivery) -> Result<u16, client::AttemptError> {
        let unix_secs = u64::try_from(unix_ms(SystemTime::now()) / 1000).unwrap_or(0);
        let event = serde_json::from_str::<serde_json::Value>(&row.body)
            .ok()
            .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let attempt = Attempt {
            url: &row.url,
            body: Bytes::from(row.body.clone()),
            signature: sign::signature(row.secret.as_bytes(), unix_secs, row.body.as_bytes()),
            event: &event,
            event_id: &row.event_id,
        };
        post(attempt, self.timeout, &self.tls).await
    }
}

/// Starts the dispatcher (once per process; later calls do nothing). It stops at `shutdown`;
/// deliveries in flight then are finished by the next start from the outbox.
pub fn spawn(state: &AppState, shutdown: CancellationToken, tasks: &TaskTracker) {
    let Some(queue) = state.events.take_webhook_queue() else {
        return;
    };
    let config = &state.config.webhooks;
    let deliverer = Arc::new(Deliverer {
        store: state.store.clone(),
        outcomes: state.webhook_deliveries.clone(),
        policy: RetryPolicy {
            first_retry: Duration::from_millis(config.first_retry_ms),
            max_retry: Duration::from_secs(config.max_retry_secs),
            give_up: Duration::from_secs(config.give_up_secs),
        },
        timeout: Duration::from_millis(config.timeout_ms),
        slots: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
        tls: state.agent_tls.client_config(),
    });
    tasks.spawn(run(state.clone(), queue, deliverer, shutdown));
}

async fn run(
    state: AppState,
    mut queue: mpsc::Receiver<Arc<Published>>,
    deliverer: Arc<Deliverer>,
    shutdown: CancellationToken,
) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(published) = queue.recv() => {
                if let Some(delivery) = delivery_for(&state, &published, deliverer.lease_until(unix_ms(SystemTime::now()))) {
                    let Ok(slot) = Arc::clone(&deliverer.slots).acquire_owned().await else { return };
                    let d = Arc::clone(&deliverer);
                    tokio::spawn(async move {
                        d.start(delivery).await;
                        drop(slot);
                    });
                }
            }
            _ = sweep.tick() => sweep_due(&deliverer).await,
        }
    }
}

/// The delivery `published` calls for, if its deployment has a webhook for its kind.
fn delivery_for(
    state: &AppState,
    published: &Published,
    lease_until_ms: i64,
) -> Option<NewDelivery> {
    let event = &published.event;
    let snapshot = state.routing.load();
    let config = event.webhook(&snapshot)?;
    Some(NewDelivery {
        event_id: published.event_id.clone(),
        url: config.url.clone(),
        secret: config.secret.clone(),
        body: published.json().to_owned(),
        created_ms: unix_ms(event.at),
        next_attempt_ms: lease_until_ms,
    })
}

/// Claims the due rows (as many as there are free slots) and attempts each.
async fn sweep_due(deliverer: &Arc<Deliverer>) {
    let free = u32::try_from(deliverer.slots.available_permits()).unwrap_or(u32::MAX);
    if free == 0 {
        return;
    }
    let now_ms = unix_ms(SystemTime::now());
    let due = match deliverer
        .store
        .outbox_claim_due(now_ms, deliverer.lease_until(now_ms), free)
        .await
    {
        Ok(due) => due,
        Err(e) => {
            deliverer.count("store_error");
            tracing::warn!(error = %e, "webhook outbox sweep failed");
            return;
        }
    };
    for row in due {
        let Ok(slot) = Arc::clone(&deliverer.slots).acquire_owned().await else {
            return;
        };
        let d = Arc::clone(deliverer);
        tokio::spawn(async move {
            d.attempt(row).await;
            drop(slot);
        });
    }
}
