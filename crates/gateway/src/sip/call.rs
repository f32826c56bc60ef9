//! One call's task: reach the agent while the caller hears ringing, then run the media
//! bridge until either side hangs up.
//!
//! The SIP state of the call lives in its SIP engine ([`super::service`]); this task owns
//! what may block or take time: the agent WebSocket, the RTP socket and the port pair. The two
//! talk over bounded channels ([`CallEvent`] in, [`CoreCommand`] out). Every way out of this
//! task drops the [`RtpPorts`] guard, so the pair returns to the pool whatever ended the call
//! (reject, CANCEL, BYE, timeout, agent failure, admin hang-up, panic).

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec};
use switchboard_media::{
    connect_agent, spawn_bridge, AgentTls, BridgeConfig, BridgeStats, EndReason, MediaError,
    StartParams,
};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::flow::CallEvent;
use super::metrics::CallMetrics;
use super::ports::RtpPorts;
use super::refusal::{Hangup, REST_API_REQUESTER, TWIML_REQUESTER};
use crate::live_calls::{CallCommand, HangupCause, TransferRequest};

/// Events per call from the SIP engine: a handful per call lifetime.
pub const CALL_EVENT_QUEUE: usize = 8;
/// How often a running call adds its bridge's drop counters to the gateway's metrics: often
/// enough that an attack on a long call shows on the next scrape, rare enough to cost nothing.
const STATS_EXPORT_INTERVAL: Duration = Duration::from_secs(1);

/// What a call tells the SIP engine.
#[derive(Debug)]
pub enum CoreCommand {
    /// The agent is connected: answer with 200 OK.
    AgentReady { call_id: String },
    /// The agent could not be reached: answer the INVITE with `status`.
    AgentFailed {
        call_id: String,
        status: u16,
        why: String,
    },
    /// End the call from our side: BYE when answered, a final response while ringing.
    HangUp { call_id: String, hangup: Hangup },
    /// The agent asked for a transfer: the engine's flow sends the REFER (or refuses) and
    /// answers on the request's reply.
    Transfer {
        call_id: String,
        request: TransferRequest,
    },
}

/// Our side's reason to end a call after its bridge stopped (`None`: the caller hung up).
fn hangup_for(reason: EndReason) -> Option<Hangup> {
    match reason {
        EndReason::CallerHangup => None,
        EndReason::AgentClosed => Some(Hangup::AgentClosed),
        EndReason::AgentError(e) => Some(Hangup::AgentError(e)),
        EndReason::MediaTimeout => Some(Hangup::MediaTimeout),
        EndReason::SocketError(e) => Some(Hangup::MediaError(e)),
        other => Some(Hangup::MediaError(format!("{other:?}"))),
    }
}

/// Everything a call task needs, prepared by its SIP engine.
#[derive(Debug)]
pub struct CallSetup {
    pub call_id: String,
    pub runtime_url: String,
    pub start: StartParams,
    pub connect_timeout: Duration,
    pub bridge: BridgeConfig,
    /// `switchboard_rtp_dropped_total{reason}`: the bridge's strict-RTP drops are added here.
    pub rtp_dropped: IntCounterVec,
    /// Agent connect failures and RTP packet counts are added here.
    pub call_metrics: CallMetrics,
    pub ports: RtpPorts,
    pub rtp_socket: std::net::UdpSocket,
    /// Trust for a `wss://` runtime.
    pub agent_tls: AgentTls,
}

/// Copies a bridge's per-call drop and packet counters into the process-wide Prometheus
/// counters. Call [`DropExport::flush`] periodically and once after the bridge ended; each
/// call adds only what was counted since the previous one.
#[derive(Debug)]
struct DropExport {
    counters: Vec<Exported>,
}

/// One process-wide counter following one of the bridge's figures.
#[derive(Debug)]
struct Exported {
    counter: IntCounter,
    read: fn(&BridgeStats) -> u64,
    /// The figure when last added.
    seen: u64,
}

impl DropExport {
    fn new(dropped: &IntCounterVec, packets: &IntCounterVec) -> DropExport {
        let follow = |counter: IntCounter, read: fn(&BridgeStats) -> u64| Exported {
            counter,
            read,
            seen: 0,
        };
        let counters = vec![
            follow(dropped.with_label_values(&["foreign_source"]), |s| {
                load(&s.rtp_dropped_foreign)
            }),
            follow(dropped.with_label_values(&["learning"]), |s| {
                load(&s.rtp_dropped_learning)
            }),
            follow(dropped.with_label_values(&["srtp_auth"]), |s| {
                load(&s.rtp_dropped_unauthenticated)
            }),
            follow(dropped.with_label_values(&["srtp_replay"]), |s| {
                load(&s.rtp_dropped_replayed)
            }),
            follow(dropped.with_label_values(&["bad_payload"]), |s| {
                load(&s.rtp_dropped_bad_payload)
            }),
            follow(dropped.with_label_values(&["agent_busy"]), |s| {
                load(&s.media_dropped_agent_busy)
            }),
            follow(packets.with_label_values(&["in"]), |s| {
                load(&s.rtp_received)
            }),
            follow(packets.with_label_values(&["out"]), |s| load(&s.rtp_sent)),
        ];
        DropExport { counters }
    }

    fn flush(&mut self, stats: &BridgeStats) {
        for exported in &mut self.counters {
            let now = (exported.read)(stats);
            exported.counter.inc_by(now.saturating_sub(exported.seen));
            exported.seen = now;
        }
    }
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The `reason` label of `switchboard_agent_connect_failures_total`.
fn connect_failure_reason(error: &MediaError) -> &'static str {
    match error {
        MediaError::AgentTimeout { .. } => "timeout",
        _ => "connect",
    }
}

fn requested(cause: &HangupCause) -> Hangup {
    match cause {
        HangupCause::RestApi => Hangup::Requested(REST_API_REQUESTER.to_owned()),
        HangupCause::Twiml => Hangup::Requested(TWIML_REQUESTER.to_owned()),
        HangupCause::Admin(who) => Hangup::Requested(who.clone()),
    }
}

/// Carries out an admin command in any stage of the call: a transfer goes on to the SIP engine
/// (whose flow answers the REST caller; a request lost on the way reads as an ended call); a
/// hang-up is returned for the stage to act on.
async fn admin_command(
    command: CallCommand,
    call_id: &str,
    core: &mpsc::Sender<CoreCommand>,
) -> Option<Hangup> {
    match command {
        CallCommand::Hangup(cause) => Some(requested(&cause)),
        CallCommand::Transfer(request) => {
            let call_id = call_id.to_owned();
            let _ = core.send(CoreCommand::Transfer { call_id, request }).await;
            None
        }
    }
}

/// Runs one call to its end. Returns when both the SIP side and the media are finished.
pub async fn run(
    setup: CallSetup,
    mut events: mpsc::Receiver<CallEvent>,
    mut admin: mpsc::Receiver<CallCommand>,
    core: mpsc::Sender<CoreCommand>,
) {
    let CallSetup {
        call_id,
        runtime_url,
        start,
        connect_timeout,
        bridge,
        rtp_dropped,
        call_metrics,
        ports,
        rtp_socket,
        agent_tls,
    } = setup;
    // The guard lives until this function returns, on every path.
    let _ports = ports;
    let connecting = connect_agent(&runtime_url, start, connect_timeout, &agent_tls);
    tokio::pin!(connecting);
    let link = loop {
        tokio::select! {
            result = &mut connecting => break result,
            _ = events.recv() => return, // CANCEL or shutdown while ringing
            Some(command) = admin.recv() => {
                if let Some(hangup) = admin_command(command, &call_id, &core).await {
                    let _ = core.send(CoreCommand::HangUp { call_id, hangup }).await;
                    return;
                }
            }
        }
    };
    let link = match link {
        Ok(link) => link,
        Err(e) => {
            call_metrics
                .agent_connect_failures
                .with_label_values(&[connect_failure_reason(&e)])
                .inc();
            let _ = core
                .send(CoreCommand::AgentFailed {
                    call_id,
                    status: e.sip_status(),
                    why: e.to_string(),
                })
                .await;
            return;
        }
    };
    if core
        .send(CoreCommand::AgentReady {
            call_id: call_id.clone(),
        })
        .await
        .is_err()
    {
        link.abandon().await;
        return;
    }
    let media = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(CallEvent::Confirmed(media)) => break media,
                Some(CallEvent::MediaUpdate(_) | CallEvent::Transfer { .. }) => continue,
                Some(CallEvent::Ended) | None => {
                    link.abandon().await;
                    return;
                }
            },
            Some(command) = admin.recv() => {
                if let Some(hangup) = admin_command(command, &call_id, &core).await {
                    let _ = core.send(CoreCommand::HangUp { call_id, hangup }).await;
                    link.abandon().await;
                    return;
                }
            }
        }
    };
    let socket = match rtp_socket
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UdpSocket::from_std(rtp_socket))
    {
        Ok(s) => s,
        Err(e) => {
            let _ = core
                .send(CoreCommand::HangUp {
                    call_id,
                    hangup: Hangup::MediaError(e.to_string()),
                })
                .await;
            link.abandon().await;
            return;
        }
    };
    let handle = spawn_bridge(socket, media, link, bridge);
    let mut drops = DropExport::new(&rtp_dropped, &call_metrics.rtp_packets);
    let mut export = tokio::time::interval(STATS_EXPORT_INTERVAL);
    export.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Why we hang up, if it is our side that ends the call.
    let hangup = loop {
        tokio::select! {
            reason = handle.ended() => break hangup_for(reason),
            event = events.recv() => match event {
                Some(CallEvent::MediaUpdate(media)) => handle.update_media(media),
                Some(CallEvent::Confirmed(_)) => {}
                Some(CallEvent::Transfer { status, sip_status }) => {
                    handle.report_transfer(status, sip_status);
                }
                Some(CallEvent::Ended) | None => {
                    handle.hangup();
                    let _ = handle.ended().await;
                    break None;
                }
            },
            Some(command) = admin.recv() => {
                if let Some(hangup) = admin_command(command, &call_id, &core).await {
                    handle.hangup();
                    let _ = handle.ended().await;
                    break Some(hangup);
                }
            }
            _ = export.tick() => drops.flush(handle.stats()),
        }
    };
    drops.flush(handle.stats());
    if let Some(hangup) = hangup {
        let _ = core.send(CoreCommand::HangUp { call_id, hangup }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_endings_map_to_our_hang_up_reasons() {
        assert_eq!(hangup_for(EndReason::CallerHangup), None);
        assert_eq!(
            hangup_for(EndReason::MediaTimeout),
            Some(Hangup::MediaTimeout)
        );
        let h = hangup_for(EndReason::AgentError("bad \"frame\"\r\nInjected: x".into()))
            .unwrap()
            .reason()
            .to_string();
        assert!(h.starts_with("Q.850;cause=41;"), "{h}");
        assert!(
            !h.contains('\r') && !h.contains('\n') && h.matches('"').count() == 2,
            "{h}"
        );
    }

    #[test]
    fn drop_export_adds_only_what_is_new() {
        let metric = IntCounterVec::new(
            prometheus::Opts::new("rtp_dropped_total", "test"),
            &["reason"],
        )
        .unwrap();
        let packets = IntCounterVec::new(
            prometheus::Opts::new("rtp_packets_total", "test"),
            &["direction"],
        )
        .unwrap();
        let stats = BridgeStats::default();
        stats.rtp_received.store(50, Ordering::Relaxed);
        let mut export = DropExport::new(&metric, &packets);
        stats.rtp_dropped_foreign.store(5, Ordering::Relaxed);
        stats.rtp_dropped_learning.store(3, Ordering::Relaxed);
        stats
            .rtp_dropped_unauthenticated
            .store(4, Ordering::Relaxed);
        stats.rtp_dropped_replayed.store(2, Ordering::Relaxed);
        stats.media_dropped_agent_busy.store(6, Ordering::Relaxed);
        export.flush(&stats);
        export.flush(&stats);
        stats.rtp_dropped_foreign.store(7, Ordering::Relaxed);
        export.flush(&stats);
        // A second call's bridge adds to the same counters.
        let mut other = DropExport::new(&metric, &packets);
        stats.rtp_dropped_foreign.store(1, Ordering::Relaxed);
        stats.rtp_dropped_learning.store(0, Ordering::Relaxed);
        other.flush(&stats);
        let value = |reason: &str| metric.with_label_values(&[reason]).get();
        assert_eq!(value("foreign_source"), 8);
        assert_eq!(value("learning"), 3);
        assert_eq!(value("srtp_auth"), 8);
        assert_eq!(value("srtp_replay"), 4);
        assert_eq!(value("agent_busy"), 12);
        // Both calls' bridges read 50 received packets: each adds its own.
        assert_eq!(packets.with_label_values(&["in"]).get(), 100);
    }
}
