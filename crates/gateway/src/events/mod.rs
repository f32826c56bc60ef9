//! Call and deployment events: what the SSE streams and the webhooks carry.
//!
//! The call flow describes what happened as an [`Event`] (an `Output` of the sans-IO flow);
//! its SIP engine hands it to [`EventBus::publish`], which never waits: it numbers the event,
//! keeps it in a bounded ring (for `Last-Event-ID` replay), offers it to every live subscriber
//! through a bounded broadcast channel (a subscriber that falls more than
//! `[events] subscriber_buffer` events behind is cut off; the call never waits for it) and, when
//! its deployment has a webhook for it, to the webhook dispatcher through a bounded queue. The
//! JSON is rendered once, by its first reader: at thousands of refused calls a second, an event
//! nobody streams or posts costs a few allocations, not a serialisation and a task wake-up.
//! Nothing here imports the SIP side.

mod payload;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::IntCounterVec;
use switchboard_routing::model::{Scope, WebhookConfig};
use switchboard_routing::RoutingSnapshot;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

pub use payload::{rfc3339, to_json};

/// Every event name, as it appears in `event:` lines, payloads and `webhook_config.events`.
pub const EVENT_NAMES: [&str; 6] = [
    "call.offered",
    "call.rejected",
    "call.answered",
    "call.ended",
    "deployment.updated",
    "call.transfer",
];

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A routed INVITE rings while the agent is reached.
    CallOffered,
    /// A call for a known deployment was refused (by routing, for lack of media, or because
    /// the agent could not be reached).
    CallRejected,
    /// The agent is up and the call was answered (200 OK sent).
    CallAnswered,
    /// An offered call ended (whoever ended it, answered or not).
    CallEnded,
    /// A deployment was created, changed, paused, resumed or deleted.
    DeploymentUpdated,
    /// An agent's transfer of a call progressed: `status` is `ringing`, `completed` or
    /// `failed`, `sip_status` the carrier's (sipfrag or REFER response) status.
    CallTransfer,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::CallOffered => EVENT_NAMES[0],
            EventKind::CallRejected => EVENT_NAMES[1],
            EventKind::CallAnswered => EVENT_NAMES[2],
            EventKind::CallEnded => EVENT_NAMES[3],
            EventKind::DeploymentUpdated => EVENT_NAMES[4],
            EventKind::CallTransfer => EVENT_NAMES[5],
        }
    }
}

/// Which side ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupBy {
    /// BYE or CANCEL from the carrier.
    Caller,
    /// The agent closed its stream or hung up through the REST API.
    Agent,
    /// Our own decision: media timeout, errors, an operator, shutdown.
    Gateway,
}

impl HangupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            HangupBy::Caller => "caller",
            HangupBy::Agent => "agent",
            HangupBy::Gateway => "gateway",
        }
    }
}

/// One event as its producer describes it (no id yet). Fields a kind does not have are
/// `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    /// When it happened.
    pub at: SystemTime,
    pub scope: Scope,
    pub deployment_id: String,
    pub app_id: Option<String>,
    pub app_version: Option<u32>,
    /// `CA…`; absent for a call refused before it was given one.
    pub call_sid: Option<String>,
    pub sip_call_id: Option<String>,
    /// Caller, E.164 when known.
    pub from: Option<String>,
    /// Called number, E.164.
    pub to: Option<String>,
    pub started_at: Option<SystemTime>,
    pub answered_at: Option<SystemTime>,
    pub hangup_by: Option<HangupBy>,
    /// A short machine-readable cause (`paused`, `caller_bye`, `agent_closed`, ...).
    pub reason: Option<String>,
    /// The final status of the INVITE (200 for an answered call).
    pub sip_status: Option<u16>,
    /// `deployment.updated`: the deployment's status (`active`, `paused`, `deleted`);
    /// `call.transfer`: the transfer's (`ringing`, `completed`, `failed`).
    pub status: Option<String>,
}

impl Event {
    /// An event of `kind` for a deployment, every optional field empty.
    pub fn new(kind: EventKind, at: SystemTime, scope: Scope, deployment_id: String) -> Self {
        Event {
            kind,
            at,
            scope,
            deployment_id,
            app_id: None,
            app_version: None,
            call_sid: None,
            sip_call_id: None,
            from: None,
            to: None,
            started_at: None,
            answered_at: None,
            hangup_by: None,
            reason: None,
            sip_status: None,
            status: None,
        }
    }

    /// The webhook of this event's deployment, if it subscribes to this kind of event: where
    /// the dispatcher posts it, and whether [`EventBus::publish`] should queue it at all.
    pub fn webhook<'a>(&self, snapshot: &'a RoutingSnapshot) -> Option<&'a WebhookConfig> {
        let config = snapshot
            .deployment(&self.scope, &self.deployment_id)?
            .webhook_config
            .as_deref()?;
        config
            .events
            .iter()
            .any(|e| e == self.kind.as_str())
            .then_some(config)
    }

    /// Seconds from answer to `at` (0 for a call never answered).
    pub fn duration_secs(&self) -> u64 {
        self.answered_at
            .and_then(|answered| self.at.duration_since(answered).ok())
            .map_or(0, |d| d.as_secs())
    }
}

/// A published event: its stream id, its globally unique `event_id` and its JSON.
#[derive(Debug)]
pub struct Published {
    /// The SSE `id:`; increases by one per event. Starts at the bus's creation time in
    /// microseconds, so ids from before a restart are older than any new one.
    pub id: u64,
    /// `ev_` + 32 hex digits: what webhook receivers deduplicate on (the same on every retry).
    pub event_id: String,
    pub event: Event,
    /// The payload, rendered by its first reader.
    json: OnceLock<String>,
}

impl Published {
    /// The payload (the webhook body and the SSE `data:`), rendered on the first call.
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| to_json(&self.event, &self.event_id))
    }
}

/// Whether a published event goes to the webhook dispatcher as well as the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Ring and live subscribers only: no webhook wants it.
    StreamsOnly,
    /// Also queued for the webhook dispatcher.
    StreamsAndWebhook,
}

/// Sizes of the bus, from `[events]`.
#[derive(Debug, Clone, Copy)]
pub struct BusLimits {
    /// Events kept for `Last-Event-ID` replay.
    pub ring: usize,
    /// How far one SSE subscriber may fall behind before it is cut off.
    pub subscriber_buffer: usize,
    /// Events waiting for the webhook dispatcher; past it events are not delivered (counted).
    pub webhook_queue: usize,
}

/// What [`EventBus::subscribe`] hands a new subscriber.
#[derive(Debug)]
pub struct Subscription {
    /// Kept events after the `Last-Event-ID`, oldest first.
    pub replay: Vec<Arc<Published>>,
    /// The `Last-Event-ID` is older than the ring: events were lost in between.
    pub gap: bool,
    /// Everything published after the replay.
    pub live: broadcast::Receiver<Arc<Published>>,
}

#[derive(Debug)]
struct Ring {
    next_id: u64,
    events: VecDeque<Arc<Published>>,
}

/// The event fan-out. One per process, in `AppState`.
#[derive(Debug)]
pub struct EventBus {
    ring: Mutex<Ring>,
    capacity: usize,
    live: broadcast::Sender<Arc<Published>>,
    webhooks: mpsc::Sender<Arc<Published>>,
    webhook_rx: Mutex<Option<mpsc::Receiver<Arc<Published>>>>,
    /// `switchboard_webhook_deliveries_total{outcome}`, for events the queue had no room for.
    deliveries: IntCounterVec,
    /// Cancelled at shutdown: open streams end so connections can close.
    closing: CancellationToken,
}

impl EventBus {
    /// `deliveries` is the webhook outcome counter (`dropped` is counted here).
    pub fn new(limits: BusLimits, deliveries: IntCounterVec) -> Self {
        let (live, _) = broadcast::channel(limits.subscriber_buffer.max(1));
        let (webhooks, webhook_rx) = mpsc::channel(limits.webhook_queue.max(1));
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(1));
        EventBus {
            ring: Mutex::new(Ring {
                next_id: start,
                events: VecDeque::with_capacity(limits.ring.min(4096)),
            }),
            capacity: limits.ring.max(1),
            live,
            webhooks,
            webhook_rx: Mutex::new(Some(webhook_rx)),
            deliveries,
            closing: CancellationToken::new(),
        }
    }

    /// Ends every open stream (at shutdown, so the admin listener can drain).
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Cancelled once [`EventBus::close`] was called.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Publishes `event`. Never waits: a short lock, a ring push and at most two non-blocking
    /// sends.
    pub fn publish(&self, event: Event, delivery: Delivery) -> Arc<Published> {
        let event_id = format!("ev_{:032x}", rand::random::<u128>());
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let id = ring.next_id;
        ring.next_id += 1;
        let published = Arc::new(Published {
            id,
            event_id,
            event,
            json: OnceLock::new(),
        });
        if ring.events.len() == self.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(Arc::clone(&published));
        // Sent under the lock so the ring and the channel agree on the order.
        let _ = self.live.send(Arc::clone(&published));
        drop(ring);
        if delivery == Delivery::StreamsAndWebhook
            && self.webhooks.try_send(Arc::clone(&published)).is_err()
        {
            self.deliveries.with_label_values(&["dropped"]).inc();
        }
        published
    }

    /// Subscribes to what comes next, after replaying the kept events newer than
    /// `last_event_id` (none when `None`). An id older than the ring sets `gap` and replays
    /// everything kept.
    pub fn subscribe(&self, last_event_id: Option<u64>) -> Subscription {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let live = self.live.subscribe();
        let Some(last) = last_event_id else {
            return Subscription {
                replay: Vec::new(),
                gap: false,
                live,
            };
        };
        let oldest = ring.events.front().map_or(ring.next_id, |e| e.id);
        // `last + 1 < oldest`: the event right after `last` is no longer kept.
        let gap = last.saturating_add(1) < oldest;
        let replay = ring
            .events
            .iter()
            .filter(|e| e.id > last)
            .cloned()
            .collect();
        Subscription { replay, gap, live }
    }

    /// The webhook dispatcher's queue; `None` after the first call (one dispatcher).
    pub fn take_webhook_queue(&self) -> Option<mpsc::Receiver<Arc<Published>>> {
        self.webhook_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

#[cfg(test)]
mod tests;
