use std::time::Duration;

use prometheus::Opts;
use tokio::sync::broadcast::error::TryRecvError;

use super::*;

fn counter() -> IntCounterVec {
    IntCounterVec::new(Opts::new("deliveries_total", "test"), &["outcome"]).unwrap()
}

fn bus(ring: usize, subscriber_buffer: usize, webhook_queue: usize) -> EventBus {
    EventBus::new(
        BusLimits {
            ring,
            subscriber_buffer,
            webhook_queue,
        },
        counter(),
    )
}

fn ended(n: u64) -> Event {
    let at = UNIX_EPOCH + Duration::from_secs(1_000 + n);
    let mut e = Event::new(
        EventKind::CallEnded,
        at,
        Scope::new("org", "ws"),
        "dep-1".into(),
    );
    e.call_sid = Some(format!("CA{n:032x}"));
    e.answered_at = Some(at - Duration::from_secs(n));
    e.hangup_by = Some(HangupBy::Caller);
    e
}

#[test]
fn ids_increase_and_event_ids_are_unique() {
    let bus = bus(8, 8, 8);
    let a = bus.publish(ended(1), Delivery::StreamsAndWebhook);
    let b = bus.publish(ended(2), Delivery::StreamsAndWebhook);
    assert_eq!(b.id, a.id + 1);
    assert_ne!(a.event_id, b.event_id);
    assert!(a.event_id.starts_with("ev_") && a.event_id.len() == 35);
}

#[test]
fn replay_after_a_kept_id_has_no_gap() {
    let bus = bus(4, 8, 8);
    let first = bus.publish(ended(1), Delivery::StreamsAndWebhook);
    let ids: Vec<u64> = (2..=4)
        .map(|n| bus.publish(ended(n), Delivery::StreamsAndWebhook).id)
        .collect();
    let sub = bus.subscribe(Some(first.id));
    assert!(!sub.gap);
    assert_eq!(sub.replay.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    // The latest id replays nothing.
    let sub = bus.subscribe(Some(ids[2]));
    assert!(sub.replay.is_empty() && !sub.gap);
}

#[test]
fn an_id_older_than_the_ring_is_a_gap_then_everything_kept() {
    let bus = bus(3, 8, 16);
    let first = bus.publish(ended(1), Delivery::StreamsAndWebhook).id;
    for n in 2..=6 {
        bus.publish(ended(n), Delivery::StreamsAndWebhook);
    }
    let sub = bus.subscribe(Some(first));
    assert!(sub.gap);
    let kept: Vec<u64> = sub.replay.iter().map(|e| e.id).collect();
    assert_eq!(kept, [first + 3, first + 4, first + 5]);
    // An id from before a restart (smaller than any of this bus) is a gap too.
    assert!(bus.subscribe(Some(1)).gap);
}

#[test]
fn a_subscriber_that_falls_behind_lags_and_the_publisher_never_waits() {
    let bus = bus(4, 2, 1);
    let mut sub = bus.subscribe(None);
    for n in 0..10 {
        bus.publish(ended(n), Delivery::StreamsAndWebhook);
    }
    assert!(matches!(sub.live.try_recv(), Err(TryRecvError::Lagged(_))));
    // The webhook queue held one; the other nine were counted as dropped.
    assert_eq!(bus.deliveries.with_label_values(&["dropped"]).get(), 9);
    let mut queue = bus.take_webhook_queue().unwrap();
    assert!(queue.try_recv().is_ok());
    assert!(bus.take_webhook_queue().is_none());
}

#[test]
fn payload_uses_sarvam_names() {
    let bus = bus(4, 4, 4);
    let published = bus.publish(ended(5), Delivery::StreamsAndWebhook);
    let v: serde_json::Value = serde_json::from_str(published.json()).unwrap();
    assert_eq!(v["event"], "call.ended");
    assert_eq!(v["event_id"], published.event_id.as_str());
    assert_eq!(v["interaction_id"], format!("CA{:032x}", 5));
    assert_eq!(v["duration"], 5);
    assert_eq!(v["hangup_by"], "caller");
    assert_eq!(v["deployment_id"], "dep-1");
    assert_eq!(v["end_datetime"], "1970-01-01T00:16:45.000Z");
    for key in [
        "app_id",
        "app_version",
        "user_phone_number",
        "agent_phone_number",
        "start_datetime",
        "sip_status",
        "reason",
    ] {
        assert!(v.get(key).is_some(), "{key} missing");
    }
}

#[test]
fn streams_only_events_reach_subscribers_and_the_ring_but_not_the_webhook_queue() {
    let bus = bus(4, 4, 4);
    let mut sub = bus.subscribe(None);
    let mut queue = bus.take_webhook_queue().unwrap();
    let quiet = bus.publish(ended(1), Delivery::StreamsOnly);
    let posted = bus.publish(ended(2), Delivery::StreamsAndWebhook);
    assert_eq!(sub.live.try_recv().unwrap().id, quiet.id);
    assert_eq!(sub.live.try_recv().unwrap().id, posted.id);
    assert_eq!(queue.try_recv().unwrap().id, posted.id);
    assert!(
        queue.try_recv().is_err(),
        "the streams-only event was queued"
    );
    assert_eq!(bus.subscribe(Some(quiet.id - 1)).replay.len(), 2);
}

#[test]
fn an_event_has_a_webhook_only_when_its_deployment_subscribes_to_its_kind() {
    use switchboard_routing::model::{
        ChannelDirection, ConnectionConfig, Deployment, DeploymentStatus,
    };
    use switchboard_routing::{Change, RoutingSettings};

    let scope = Scope::new("org", "ws");
    let deployment = Deployment {
        deployment_id: "dep-1".into(),
        name: "line".into(),
        description: None,
        app_id: "app".into(),
        app_version: 1,
        connection_configs: vec![ConnectionConfig {
            connection_id: "trunk".into(),
            phone_numbers: vec!["+14155550100".into()],
        }],
        channel_direction: ChannelDirection::Inbound,
        status: DeploymentStatus::Active,
        inbound_config: None,
        webhook_config: Some(Box::new(WebhookConfig {
            url: "http://hooks.example/x".into(),
            secret: "s".into(),
            events: vec!["call.ended".into()],
        })),
        created_by: "ops".into(),
        created_at: "2026-03-01T10:00:00Z".into(),
        updated_by: "ops".into(),
        updated_at: "2026-03-01T10:00:00Z".into(),
    };
    let snapshot = RoutingSnapshot::empty(RoutingSettings::default())
        .unwrap()
        .apply(&[Change::UpsertDeployment(scope.clone(), deployment)])
        .unwrap();
    let ended = ended(1);
    assert_eq!(
        ended.webhook(&snapshot).map(|w| w.url.as_str()),
        Some("http://hooks.example/x")
    );
    let mut rejected = ended.clone();
    rejected.kind = EventKind::CallRejected;
    assert!(rejected.webhook(&snapshot).is_none(), "kind not subscribed");
    let mut elsewhere = ended;
    elsewhere.deployment_id = "dep-2".into();
    assert!(elsewhere.webhook(&snapshot).is_none(), "unknown deployment");
}
