//! A SIP engine task: the I/O loop around one sans-IO [`CallFlow`]. There is one engine per
//! core (`[sip] workers`); each owns its UDP socket (all on the listener's port, spread by
//! `SO_REUSEPORT`), its flow — transactions, dialogs, calls — and its rate limiter, so the
//! per-datagram path takes no lock and crosses no channel: read, screen, parse, handle, send,
//! on one task. A datagram whose Call-ID another engine owns ([`owner`]) is forwarded to that
//! engine's queue, as are TCP messages and call-task commands.
//!
//! The loop waits on four inputs — its socket, forwarded messages, commands from its call
//! tasks, the flow's timers — takes up to [`UDP_BATCH`] datagrams per wake-up, and then drains
//! the flow: transmits to the sockets, outputs to call tasks, the live-call registry and the
//! screen. All call policy is in [`super::flow`]; this file only moves bytes and spawns tasks.

use std::collections::HashMap;
use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use switchboard_sip::{Transmit, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::call::{self, CallSetup, CoreCommand, CALL_EVENT_QUEUE};
use super::flow::{CallEvent, CallFlow, MediaPorts, Now, Output};
use super::ports::{RtpPortAllocator, RtpPorts};
use super::transport::{owner, Inbound, Outbound, ReaderShared, UdpReader, UDP_BATCH};
use crate::live_calls::CallHandle;
use crate::state::AppState;
use crate::Stop;

/// Commands from call tasks waiting for the engine; a few per call.
pub const CORE_COMMAND_QUEUE: usize = 4096;
/// How long shutdown gives BYEs to leave before the task exits.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(200);
/// After a drain's last call ended, how long the engine may keep serving while transactions
/// are left: time for our last BYE to be retransmitted twice over UDP (T1 = 500 ms, then 1 s)
/// and for its 200 to be absorbed. An engine with no transaction left stops at once.
const DRAIN_LINGER: Duration = Duration::from_secs(2);

/// RTP port pairs with real sockets: bound at reservation, owned by the call task after.
#[derive(Debug)]
pub struct BoundPorts {
    allocator: RtpPortAllocator,
    bind_ip: IpAddr,
}

impl BoundPorts {
    /// Pairs from `allocator`, bound on `bind_ip` (the wildcard of the advertised family).
    pub fn new(allocator: RtpPortAllocator, bind_ip: IpAddr) -> Self {
        BoundPorts { allocator, bind_ip }
    }
}

impl MediaPorts for BoundPorts {
    type Reservation = (RtpPorts, UdpSocket);

    fn reserve(&mut self) -> Result<(u16, Self::Reservation), String> {
        let (ports, socket) = self
            .allocator
            .bind(self.bind_ip)
            .map_err(|e| e.to_string())?;
        Ok((ports.rtp(), (ports, socket)))
    }
}

/// The engine task's state.
#[derive(Debug)]
pub struct Engine {
    /// This engine's index among all engines (the [`owner`] of the Call-IDs it handles).
    index: usize,
    flow: CallFlow<BoundPorts>,
    reader: UdpReader,
    shared: ReaderShared,
    outbound: Outbound,
    state: AppState,
    /// Each live call's task, by SIP Call-ID.
    call_tasks: HashMap<String, mpsc::Sender<CallEvent>>,
    commands: mpsc::Sender<CoreCommand>,
    tasks: TaskTracker,
}

impl Engine {
    /// Engine `index` around `flow`, reading `reader`'s socket; call tasks it spawns report
    /// back on `commands`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        flow: CallFlow<BoundPorts>,
        reader: UdpReader,
        shared: ReaderShared,
        outbound: Outbound,
        state: AppState,
        commands: mpsc::Sender<CoreCommand>,
        tasks: TaskTracker,
    ) -> Self {
        Engine {
            index,
            flow,
            reader,
            shared,
            outbound,
            state,
            call_tasks: HashMap::new(),
            commands,
            tasks,
        }
    }

    /// Runs until `shutdown`, then ends every call at once (BYE / 503) and returns.
    /// `stop.drain` starts the drain (new calls refused, live ones go on for up to `grace`),
    /// `stop.end_calls` ends the live calls now; once this engine's last call has ended it
    /// drops `busy`, and keeps serving (refusing) until every engine has and the gateway cancels
    /// `shutdown`: its socket takes its share of the port's datagrams until then.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<CoreCommand>,
        shutdown: CancellationToken,
        stop: Stop,
        grace: Duration,
        busy: TaskTrackerToken,
    ) {
        let (mut draining, mut ending) = (false, false);
        let mut busy = Some(busy);
        let mut drained_at: Option<Instant> = None;
        loop {
            let linger_until = drained_at
                .filter(|_| busy.is_some())
                .map(|at| at + DRAIN_LINGER);
            let deadline = match (self.flow.poll_timeout(), linger_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = stop.drain.cancelled(), if !draining => {
                    draining = true;
                    self.flow.start_drain(Now::current(), grace);
                }
                () = stop.end_calls.cancelled(), if !ending => {
                    ending = true;
                    self.flow.end_all_calls(Now::current());
                }
                readable = self.reader.readable() => {
                    if readable.is_ok() {
                        self.read_datagrams();
                    }
                }
                Some(message) = inbound.recv() => {
                    self.flow.handle_message(Now::current(), message);
                }
                Some(command) = commands.recv() => self.on_command(command),
                () = sleep => self.flow.handle_timeout(Now::current()),
            }
            self.drain();
            if busy.is_some() && self.flow.drained() && self.call_tasks.is_empty() {
                let since = *drained_at.get_or_insert_with(Instant::now);
                if self.flow.transaction_count() == 0 || since.elapsed() >= DRAIN_LINGER {
                    busy = None;
                    tracing::debug!(engine = self.index, "engine drained");
                }
            } else {
                drained_at = None;
            }
        }
        self.flow.end_all_calls(Now::current());
        self.drain();
        tokio::time::sleep(SHUTDOWN_FLUSH).await;
    }

    /// Takes up to [`UDP_BATCH`] datagrams from the socket: this engine's are handled here,
    /// others' forwarded to their owner.
    fn read_datagrams(&mut self) {
        let engines = self.shared.engines.len();
        for _ in 0..UDP_BATCH {
            let Some(taken) = self.reader.try_take(&self.shared) else {
                break;
            };
            let Some(inbound) = taken else {
                continue;
            };
            let engine = owner(&inbound, engines);
            if engine == self.index {
                self.flow.handle_message(Now::current(), inbound);
            } else {
                let source = inbound.source;
                if let Some(reply) = self.shared.forward(engine, inbound) {
                    self.outbound.send(Transport::Udp, source, reply);
                }
            }
        }
    }

    fn on_command(&mut self, command: CoreCommand) {
        let now = Now::current();
        match command {
            CoreCommand::AgentReady { call_id } => self.flow.agent_ready(now, &call_id),
            CoreCommand::AgentFailed {
                call_id,
                status,
                why,
            } => self.flow.agent_failed(now, &call_id, status, &why),
            CoreCommand::HangUp { call_id, hangup } => self.flow.hang_up(now, &call_id, hangup),
            CoreCommand::Transfer { call_id, request } => {
                let answer = self.flow.transfer(now, &call_id, &request.target);
                // The REST caller may have given up waiting; the transfer goes on regardless.
                let _ = request.reply.send(answer);
            }
        }
    }

    /// Sends what the flow wants sent and carries out its outputs.
    fn drain(&mut self) {
        while let Some(Transmit {
            remote,
            transport,
            bytes,
        }) = self.flow.poll_transmit()
        {
            self.outbound.send(transport, remote, bytes);
        }
        while let Some(output) = self.flow.poll_output() {
            match output {
                Output::StartCall(start) => self.start_call(*start),
                Output::ToCall { call_id, event } => {
                    let full = self
                        .call_tasks
                        .get(&call_id)
                        .is_some_and(|task| task.try_send(event).is_err());
                    if full {
                        self.shared
                            .metrics
                            .queue_full
                            .with_label_values(&["call_events"])
                            .inc();
                    }
                }
                Output::CallEnded { call_id, call_sid } => {
                    self.call_tasks.remove(&call_id);
                    self.state.calls.remove(&call_sid);
                }
                Output::Offence { ip, offence } => {
                    self.shared.guard.offence(Instant::now(), ip, offence);
                }
                Output::Event(event) => self.state.publish_event(*event),
            }
        }
    }

    fn start_call(&mut self, start: super::flow::CallStart<(RtpPorts, UdpSocket)>) {
        let (handle, admin_rx) = CallHandle::new(start.details);
        self.state
            .calls
            .insert(handle.call_sid().to_owned(), handle);
        let (to_task, events_rx) = mpsc::channel(CALL_EVENT_QUEUE);
        self.call_tasks.insert(start.call_id.clone(), to_task);
        let (ports, rtp_socket) = start.reservation;
        let setup = CallSetup {
            call_id: start.call_id,
            runtime_url: start.runtime_url,
            start: start.start,
            connect_timeout: start.connect_timeout,
            bridge: start.bridge,
            rtp_dropped: self.shared.metrics.rtp_dropped.clone(),
            call_metrics: self.shared.metrics.call.clone(),
            ports,
            rtp_socket,
            agent_tls: self.state.agent_tls.clone(),
        };
        self.tasks
            .spawn(call::run(setup, events_rx, admin_rx, self.commands.clone()));
    }
}
