//! The state every part of the daemon shares: cheap to clone (all `Arc`s inside).
//!
//! The write path lives here because every writer (admin handlers, the runtime prober, the
//! remote-change listener) must follow the same rule: **commit to the store first, then apply
//! the same change to the routing table**, while holding [`AppState::write_lock`] so that two
//! writers cannot commit in one order and swap the snapshot in the other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use dashmap::DashMap;
use switchboard_media::AgentTls;
use switchboard_routing::model::{AppVersion, Scope};
use switchboard_routing::{Change, RoutingData, RoutingSettings, RoutingSnapshot, RoutingTable};
use switchboard_store::{Dataset, Store};
use tokio::sync::{Mutex, MutexGuard};

use crate::admin::auth::Keyring;
use crate::config::Config;
use crate::events::{BusLimits, Delivery, Event, EventBus, EventKind};
use crate::live_calls::CallHandle;
use crate::metrics::Metrics;

/// Shared application state, handed to the admin API, the SIP service and background tasks.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// The live routing table: `routing.load().route(now, called, caller, call_id)` per INVITE.
    pub routing: Arc<RoutingTable>,
    pub store: Store,
    /// Admin API keys (configured plus the generated one).
    pub keyring: Arc<Keyring>,
    /// Live calls by call SID: the SIP side registers them, the admin side looks them up (e.g.
    /// to hang one up).
    pub calls: Arc<DashMap<String, CallHandle>>,
    /// Call and deployment events: SSE streams and the webhook dispatcher subscribe here.
    pub events: Arc<EventBus>,
    /// `switchboard_webhook_deliveries_total{outcome}`.
    pub webhook_deliveries: prometheus::IntCounterVec,
    /// Every agent version the routing table knows, for the periodic runtime prober. Kept in
    /// step by [`AppState::apply`] and [`AppState::load_snapshot`], the only ways into the table.
    runtimes: Arc<DashMap<(Scope, String, u32), AppVersion>>,
    /// Serialises commit+apply pairs (see the module doc).
    write_lock: Arc<Mutex<()>>,
    /// Set once the routing snapshot has been built from the store; `/readyz` reports it.
    ready: Arc<AtomicBool>,
    /// Trust for `wss://` agent runtimes (system roots + `[media] agent_ca_file`), shared by
    /// calls and health probes so both judge a certificate the same way.
    pub agent_tls: AgentTls,
    /// Set when a drain starts (SIGTERM): `/readyz` answers 503 from then on.
    draining: Arc<AtomicBool>,
}

impl AppState {
    /// Builds the state with an empty routing table; call [`AppState::load_snapshot`] next.
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        store: Store,
        keyring: Keyring,
        agent_tls: AgentTls,
    ) -> anyhow::Result<Self> {
        let empty = RoutingSnapshot::empty(routing_settings(&config))?;
        let webhook_deliveries = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "webhook_deliveries_total",
                "Webhook delivery attempts by outcome (delivered, retry, gave_up, dropped)",
            ),
            &["outcome"],
        )?;
        metrics
            .registry()
            .register(Box::new(webhook_deliveries.clone()))?;
        let events = EventBus::new(
            BusLimits {
                ring: config.events.ring_size,
                subscriber_buffer: config.events.subscriber_buffer,
                webhook_queue: config.webhooks.queue,
            },
            webhook_deliveries.clone(),
        );
        Ok(Self {
            config,
            metrics,
            routing: Arc::new(RoutingTable::new(empty)),
            store,
            keyring: Arc::new(keyring),
            runtimes: Arc::new(DashMap::new()),
            calls: Arc::new(DashMap::new()),
            events: Arc::new(events),
            webhook_deliveries,
            write_lock: Arc::new(Mutex::new(())),
            ready: Arc::new(AtomicBool::new(false)),
            agent_tls,
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Takes the write lock. Hold it across one store write and the matching [`AppState::apply`].
    pub async fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }

    /// Applies committed changes to the routing table (caller holds the write lock). A change
    /// the table refuses cannot be undone in the store, so the table is rebuilt from the store
    /// instead: the store is the truth.
    pub async fn apply(&self, changes: &[Change]) {
        let started = Instant::now();
        for change in changes {
            self.publish_deployment_change(change);
            match change {
                Change::UpsertAppVersion(scope, v) => {
                    self.runtimes
                        .insert((scope.clone(), v.app_id.clone(), v.version), v.clone());
                }
                Change::RemoveAppVersion(scope, app_id, version) => {
                    self.runtimes
                        .remove(&(scope.clone(), app_id.clone(), *version));
                }
                _ => {}
            }
        }
        match self.routing.apply(changes) {
            Ok(_) => self.publish_routing_metrics(),
            Err(e) => {
                tracing::error!(error = %e, "routing table refused a committed change; rebuilding from the store");
                if let Err(e) = self.load_snapshot().await {
                    tracing::error!(error = %e, "rebuilding the routing snapshot failed");
                }
            }
        }
        self.metrics
            .routing_apply_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Rebuilds the routing snapshot from everything in the store and swaps it in. Called at
    /// start and whenever incremental updates cannot be trusted (missed notices).
    pub async fn load_snapshot(&self) -> anyhow::Result<()> {
        let data = self.store.load_all().await?;
        self.runtimes.clear();
        for (scope, v) in &data.app_versions {
            self.runtimes
                .insert((scope.clone(), v.app_id.clone(), v.version), v.clone());
        }
        let snapshot = RoutingSnapshot::build(routing_data(data, &self.config))?;
        self.routing.store(Arc::new(snapshot));
        self.publish_routing_metrics();
        Ok(())
    }

    /// Publishes a call event from the SIP side (never waits) and keeps the live-call
    /// registry's answer time in step.
    pub fn publish_event(&self, event: Event) {
        if event.kind == EventKind::CallAnswered {
            if let (Some(sid), Some(at)) = (&event.call_sid, event.answered_at) {
                if let Some(call) = self.calls.get(sid) {
                    call.mark_answered(at);
                }
            }
        }
        self.publish(event);
    }

    /// Every event goes to the streams; the webhook dispatcher sees only those a deployment's
    /// webhook subscribes to (checked here, on the snapshot the event was made from, so the
    /// dispatcher is not woken for the thousands a second nobody posts).
    fn publish(&self, event: Event) {
        let delivery = if event.webhook(&self.routing.load()).is_some() {
            Delivery::StreamsAndWebhook
        } else {
            Delivery::StreamsOnly
        };
        self.events.publish(event, delivery);
    }

    /// `deployment.updated` for a deployment written here or by another gateway.
    fn publish_deployment_change(&self, change: &Change) {
        let event = match change {
            Change::UpsertDeployment(scope, d) => {
                let mut e = Event::new(
                    EventKind::DeploymentUpdated,
                    SystemTime::now(),
                    scope.clone(),
                    d.deployment_id.clone(),
                );
                e.app_id = Some(d.app_id.clone());
                e.app_version = Some(d.app_version);
                e.status = serde_json::to_value(d.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned));
                e
            }
            Change::RemoveDeployment(scope, id) => {
                let mut e = Event::new(
                    EventKind::DeploymentUpdated,
                    SystemTime::now(),
                    scope.clone(),
                    id.clone(),
                );
                e.status = Some("deleted".to_owned());
                e
            }
            _ => return,
        };
        self.publish(event);
    }

    fn publish_routing_metrics(&self) {
        let snapshot = self.routing.load();
        self.metrics
            .routing_table_version
            .set(i64::try_from(snapshot.version()).unwrap_or(i64::MAX));
        self.metrics
            .routing_numbers
            .set(i64::try_from(snapshot.number_count()).unwrap_or(i64::MAX));
        self.metrics.routing_snapshot_swaps.inc();
    }

    /// Every known agent version with its scope (what the periodic prober sweeps).
    pub fn runtimes(&self) -> Vec<(Scope, AppVersion)> {
        self.runtimes
            .iter()
            .map(|e| (e.key().0.clone(), e.value().clone()))
            .collect()
    }

    /// Call once the routing snapshot is loaded and the listeners are bound.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the gateway can route calls (snapshot loaded).
    /// The readiness flag itself, for the SIP engine to read per INVITE without the state.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ready)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Call when the drain starts, so load balancers stop sending (`/readyz` 503).
    pub fn mark_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the gateway is draining for shutdown (admin writes still work meanwhile).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The routing settings implied by the config.
pub fn routing_settings(config: &Config) -> RoutingSettings {
    RoutingSettings {
        default_country_code: config.routing.country_code().map(str::to_owned),
    }
}

fn routing_data(data: Dataset, config: &Config) -> RoutingData {
    RoutingData {
        deployments: data.deployments,
        connections: data.connections,
        app_versions: data.app_versions,
        splits: data.splits,
        cohort_members: data.cohort_members,
        settings: routing_settings(config),
    }
}
