//! `GET …/deployments/{deployment_id}/events` and `GET …/events`: call events as
//! Server-Sent Events (seed 004 streams this way).
//!
//! Each event is one block, `id:` (resume point), `event:` (its name) and `data:` (its JSON,
//! the webhook body). A `Last-Event-ID` request header replays the kept events after that id;
//! one older than the ring gets a `gap` event first. A `:` comment goes out after
//! `[events] keepalive_secs` of silence so proxies keep idle streams open.
//!
//! Each stream has a forwarding task between the event bus and the response body. The bus
//! never waits for it: a client that stops reading falls behind and is cut off, either when it
//! is more than `[events] subscriber_buffer` events behind (the broadcast channel says so) or
//! when its response has not moved for a keep-alive interval. It reconnects with
//! `Last-Event-ID` and loses nothing the ring still holds.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use hyper::body::Frame;
use switchboard_routing::model::Scope;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::deployments::deployment_not_found;
use super::error::ApiError;
use super::Ctx;
use crate::events::{Published, Subscription};

/// Frames buffered between the forwarding task and the connection.
const FRAMES_IN_FLIGHT: usize = 16;
/// The browser's reconnect delay (EventSource `retry:`), milliseconds.
const RETRY_MS: u32 = 2_000;

/// A `text/event-stream` response body: the frames its forwarding task produces.
#[derive(Debug)]
pub struct SseBody {
    frames: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .frames
            .poll_recv(cx)
            .map(|frame| frame.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Which events a stream carries.
#[derive(Debug, Clone)]
struct Filter {
    scope: Scope,
    deployment_id: Option<String>,
}

impl Filter {
    fn matches(&self, e: &Published) -> bool {
        e.event.scope == self.scope
            && self
                .deployment_id
                .as_ref()
                .is_none_or(|id| *id == e.event.deployment_id)
    }
}

/// Opens a stream of the workspace's events, or of one deployment's (`for_deployment`).
pub async fn stream(cx: &Ctx, for_deployment: bool) -> Result<Response<SseBody>, ApiError> {
    let scope = cx.scope()?;
    let deployment_id = match for_deployment {
        true => {
            let id = cx.params.get("deployment_id");
            if cx.state.routing.load().deployment(&scope, id).is_none() {
                return Err(deployment_not_found(id));
            }
            Some(id.to_owned())
        }
        false => None,
    };
    let last_event_id = last_event_id(cx)?;
    let subscription = cx.state.events.subscribe(last_event_id);
    let (tx, frames) = mpsc::channel(FRAMES_IN_FLIGHT);
    let keepalive = Duration::from_secs(cx.state.config.events.keepalive_secs.max(1));
    tokio::spawn(forward(
        subscription,
        last_event_id,
        Filter {
            scope,
            deployment_id,
        },
        tx,
        keepalive,
        cx.state.events.closing(),
    ));
    let mut resp = Response::new(SseBody { frames });
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// `Last-Event-ID`: absent, or one of our ids (a decimal number); anything else is a 422.
fn last_event_id(cx: &Ctx) -> Result<Option<u64>, ApiError> {
    let Some(value) = cx.headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::invalid(
            vec!["header".into(), "last-event-id".into()],
            "int_parsing",
            "Input should be an event id from this API's `id:` lines",
        )
    })
}

/// One event's block.
fn frame(e: &Published) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        e.id,
        e.event.kind.as_str(),
        e.json()
    ))
}

/// Moves events from the bus to the body until the client goes, falls behind, or the
/// gateway shuts down.
async fn forward(
    subscription: Subscription,
    last_event_id: Option<u64>,
    filter: Filter,
    tx: mpsc::Sender<Bytes>,
    keepalive: Duration,
    closing: CancellationToken,
) {
    let Subscription {
        replay,
        gap,
        mut live,
    } = subscription;
    let mut head = format!("retry: {RETRY_MS}\n\n");
    if gap {
        let oldest = replay.first().map(|e| e.id);
        head.push_str(&format!(
            "event: gap\ndata: {}\n\n",
            serde_json::json!({ "last_event_id": last_event_id, "oldest_kept_id": oldest })
        ));
    }
    if tx.send(Bytes::from(head)).await.is_err() {
        return;
    }
    for e in replay.iter().filter(|e| filter.matches(e)) {
        if tx.send(frame(e)).await.is_err() {
            return;
        }
    }
    drop(replay);
    let mut next_keepalive = Instant::now() + keepalive;
    loop {
        let out = tokio::select! {
            () = closing.cancelled() => return,
            () = tx.closed() => return,
            received = live.recv() => match received {
                Ok(e) if filter.matches(&e) => frame(&e),
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "event stream client fell behind; cut off");
                    let _ = tx.try_send(Bytes::from(format!(": cut off: {missed} events behind; reconnect with Last-Event-ID\n\n")));
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            () = tokio::time::sleep_until(next_keepalive) => Bytes::from_static(b": keep-alive\n\n"),
        };
        // A client whose response has not moved for a keep-alive interval is cut off.
        match timeout(keepalive, tx.send(out)).await {
            Ok(Ok(())) => next_keepalive = Instant::now() + keepalive,
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!("event stream client stopped reading; cut off");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use prometheus::{IntCounterVec, Opts};

    use super::*;
    use crate::events::{BusLimits, Delivery, Event, EventBus, EventKind};

    fn bus(subscriber_buffer: usize) -> EventBus {
        let counter =
            IntCounterVec::new(Opts::new("deliveries_total", "test"), &["outcome"]).unwrap();
        EventBus::new(
            BusLimits {
                ring: 16,
                subscriber_buffer,
                webhook_queue: 1024,
            },
            counter,
        )
    }

    fn event(deployment: &str) -> Event {
        Event::new(
            EventKind::CallOffered,
            SystemTime::now(),
            Scope::new("org", "ws"),
            deployment.to_owned(),
        )
    }

    fn filter(deployment: Option<&str>) -> Filter {
        Filter {
            scope: Scope::new("org", "ws"),
            deployment_id: deployment.map(str::to_owned),
        }
    }

    async fn drain(rx: &mut mpsc::Receiver<Bytes>) -> String {
        let mut text = String::new();
        while let Some(b) = rx.recv().await {
            text.push_str(std::str::from_utf8(&b).unwrap());
        }
        text
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off_and_publishing_never_waits() {
        let bus = bus(1024);
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(forward(
            bus.subscribe(None),
            None,
            filter(None),
            tx,
            Duration::from_millis(100),
            bus.closing(),
        ));
        // Nobody reads `rx`: the preamble fills the channel, then the forwarder waits.
        for _ in 0..100 {
            bus.publish(event("dep-1"), Delivery::StreamsOnly);
        }
        // Bounded wait: a regression hangs here and fails instead.
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("cut off after a keep-alive interval without progress")
            .unwrap();
        let text = drain(&mut rx).await;
        assert!(text.starts_with("retry: "), "{text}");
    }

    #[tokio::test]
    async fn a_client_too_far_behind_is_cut_off_with_a_comment() {
        let bus = bus(2);
        let subscription = bus.subscribe(None);
        for _ in 0..10 {
            bus.publish(event("dep-1"), Delivery::StreamsOnly);
        }
        let (tx, mut rx) = mpsc::channel(64);
        forward(
            subscription,
            None,
            filter(None),
            tx,
            Duration::from_secs(5),
            bus.closing(),
        )
        .await;
        let text = drain(&mut rx).await;
        assert!(text.contains(": cut off: 8 events behind"), "{text}");
    }

    #[tokio::test]
    async fn replay_and_live_events_are_filtered_by_deployment_and_close_ends_the_stream() {
        let bus = bus(16);
        let first = bus.publish(event("dep-1"), Delivery::StreamsOnly);
        bus.publish(event("dep-2"), Delivery::StreamsOnly);
        bus.publish(event("dep-1"), Delivery::StreamsOnly);
        let (tx, mut rx) = mpsc::channel(64);
        let task = tokio::spawn(forward(
            bus.subscribe(Some(first.id - 1)),
            Some(first.id - 1),
            filter(Some("dep-1")),
            tx,
            Duration::from_secs(5),
            bus.closing(),
        ));
        tokio::task::yield_now().await;
        bus.publish(event("dep-2"), Delivery::StreamsOnly);
        let last = bus.publish(event("dep-1"), Delivery::StreamsOnly);
        tokio::time::sleep(Duration::from_millis(50)).await;
        bus.close();
        task.await.unwrap();
        let text = drain(&mut rx).await;
        let ids: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: ")?.parse().ok())
            .collect();
        assert_eq!(ids, [first.id, first.id + 2, last.id], "{text}");
        assert!(!text.contains("event: gap"), "{text}");
    }
}
