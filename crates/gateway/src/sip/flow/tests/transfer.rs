//! An agent's transfer on simulated time: REFER out (retransmitted when lost), NOTIFYs in
//! (retransmitted when our 200 is lost), the outcome to the call task and the events, BYE
//! after success, the caller kept after a refusal or silence.

use switchboard_media::TransferStatus::{Completed, Failed, Ringing};
use switchboard_sip::ServerTxnId;

use super::*;
use crate::live_calls::{TransferRefused, TransferTarget};

/// Extra headers of a request the test builds.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// What the simulated carrier does with our REFER.
struct Carrier {
    /// The REFER's final status (0: never answer).
    refer_status: u16,
    /// After answering the REFER: NOTIFYs to send (seconds after the REFER, sipfrag status
    /// line, Subscription-State terminated?).
    notifies: Vec<(f64, &'static str, bool)>,
    /// Every REFER request received (retransmissions included: the endpoint absorbs them).
    refers: Vec<String>,
    /// Statuses of our answers to its NOTIFYs.
    notify_answers: Vec<u16>,
}

impl Carrier {
    fn new(refer_status: u16, notifies: &[(f64, &'static str, bool)]) -> Carrier {
        Carrier {
            refer_status,
            notifies: notifies.to_vec(),
            refers: Vec::new(),
            notify_answers: Vec::new(),
        }
    }
}

/// Sends a NOTIFY in `dialog` with `headers` and `body` (a sipfrag unless the test breaks it).
fn send_notify(sim: &mut Sim, dialog: DialogId, headers: &[(&str, &str)], body: &[u8]) {
    let mut b = sim.uac.dialog_request(dialog, "NOTIFY").unwrap();
    for (name, value) in headers {
        b = b.header(name, *value);
    }
    let notify = b.body("message/sipfrag", body).build().unwrap();
    let now = sim.now;
    sim.uac
        .send_request(now, addr(GATEWAY), Transport::Udp, notify)
        .unwrap();
}

fn sipfrag_notify(sim: &mut Sim, dialog: DialogId, status_line: &str, terminated: bool) {
    let state = if terminated {
        "terminated;reason=noresource"
    } else {
        "active;expires=60"
    };
    let body = format!("{status_line}\r\n");
    send_notify(
        sim,
        dialog,
        &[("Event", "refer"), ("Subscription-State", state)],
        body.as_bytes(),
    );
}

/// Runs the network until `until` with `carrier` answering REFERs and sending its NOTIFYs,
/// and the UAC answering BYE 200.
fn run_carrier(sim: &mut Sim, dialog: DialogId, until: f64, carrier: &mut Carrier) {
    let limit = sim.at(until);
    let mut pending: Vec<(Instant, &'static str, bool)> = Vec::new();
    while sim.now < limit {
        let next = pending
            .iter()
            .map(|p| p.0)
            .min()
            .unwrap_or(limit)
            .min(limit);
        let events = sim.step(next);
        let now = sim.now;
        let (due, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|p| p.0 <= now);
        pending = later;
        for (_, line, terminated) in due {
            sipfrag_notify(sim, dialog, line, terminated);
        }
        for event in events {
            match event {
                Event::Request { txn, request, .. }
                    if request.message().method() == Some("REFER") =>
                {
                    let text = String::from_utf8_lossy(request.message().as_bytes()).into_owned();
                    carrier.refers.push(text);
                    if carrier.refer_status == 0 {
                        continue;
                    }
                    respond(sim, txn, carrier.refer_status);
                    if carrier.refer_status < 300 {
                        for (after, line, terminated) in carrier.notifies.drain(..) {
                            pending.push((now + Duration::from_secs_f64(after), line, terminated));
                        }
                    }
                }
                Event::Response { response, .. }
                    if response
                        .message()
                        .cseq()
                        .is_ok_and(|c| c.method == "NOTIFY") =>
                {
                    carrier
                        .notify_answers
                        .push(response.message().status().unwrap());
                }
                Event::Bye { txn, request, .. } => {
                    sim.log.gateway_byes.push((sim.now, reason_line(&request)));
                    respond(sim, txn, 200);
                }
                _ => {}
            }
        }
    }
}

fn respond(sim: &mut Sim, txn: ServerTxnId, status: u16) {
    let answer = sim.uac.response(txn, status).unwrap();
    let now = sim.now;
    sim.uac.respond(now, txn, answer).unwrap();
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

fn transfer(sim: &mut Sim, target: TransferTarget) -> Result<(), TransferRefused> {
    let call_id = sim.log.started[0].clone();
    let now = sim.time();
    sim.flow.transfer(now, &call_id, &target)
}

fn number() -> TransferTarget {
    TransferTarget::Number("+918000000000".to_owned())
}

#[test]
fn a_lost_refer_is_resent_and_a_completed_transfer_hangs_up_as_transferred() {
    let (mut sim, dialog) = answered_call(51);
    // The first REFER and our first 200 to a NOTIFY are lost: the endpoint retransmits the
    // REFER, the carrier retransmits the NOTIFY, and each is acted on once.
    sim.drops.push((false, "REFER ", "", 1));
    sim.drops.push((false, "SIP/2.0 200", "NOTIFY", 1));
    transfer(&mut sim, number()).unwrap();
    let mut carrier = Carrier::new(
        202,
        &[
            (0.1, "SIP/2.0 100 Trying", false),
            (2.0, "SIP/2.0 200 OK", true),
        ],
    );
    run_carrier(&mut sim, dialog, 60.0, &mut carrier);

    assert_eq!(carrier.refers.len(), 1, "one REFER reached the carrier");
    let refer = &carrier.refers[0];
    assert_eq!(
        header(refer, "Refer-To"),
        Some("<sip:+918000000000@192.0.2.1;user=phone>"),
        "{refer}"
    );
    assert_eq!(
        header(refer, "Referred-By"),
        Some(&*format!("<sip:{CALLED}@192.0.2.9>")),
        "{refer}"
    );
    assert!(
        header(refer, "CSeq").is_some_and(|c| c.ends_with(" REFER")),
        "{refer}"
    );
    assert_eq!(carrier.notify_answers, [200, 200]);
    assert_eq!(sim.log.transfers, [(Ringing, 100), (Completed, 200)]);
    assert_eq!(sim.log.gateway_byes.len(), 1);
    assert_eq!(
        sim.log.gateway_byes[0].1,
        "Reason: Q.850;cause=16;text=\"call transferred\""
    );
    assert_eq!(
        sim.log.outcomes()[2..],
        [
            ("call.transfer", None, None, Some(100)),
            ("call.transfer", None, None, Some(200)),
            ("call.ended", Some("agent"), Some("transferred"), Some(200)),
        ]
    );
    let statuses: Vec<_> = sim.log.events[2..4]
        .iter()
        .map(|e| e.status.as_deref())
        .collect();
    assert_eq!(statuses, [Some("ringing"), Some("completed")]);
    assert_eq!(sim.log.task_events_ended, 1, "the agent's stream ends");
    assert_eq!(sim.flow.call_count(), 0);
    assert_eq!(sim.flow.transaction_count(), 0);
}

#[test]
fn a_refused_refer_keeps_the_caller_and_a_new_transfer_may_follow() {
    let (mut sim, dialog) = answered_call(52);
    transfer(
        &mut sim,
        TransferTarget::Uri("sip:desk@pbx.example.com".to_owned()),
    )
    .unwrap();
    assert_eq!(
        transfer(&mut sim, number()),
        Err(TransferRefused::InProgress),
        "one transfer at a time"
    );
    let mut carrier = Carrier::new(603, &[]);
    run_carrier(&mut sim, dialog, 10.0, &mut carrier);
    assert_eq!(
        header(&carrier.refers[0], "Refer-To"),
        Some("<sip:desk@pbx.example.com>")
    );
    assert_eq!(sim.log.transfers, [(Failed, 603)]);
    assert!(sim.log.gateway_byes.is_empty(), "the caller stays");
    assert_eq!(sim.flow.call_count(), 1);
    assert_eq!(sim.log.task_events_ended, 0);
    assert_eq!(
        sim.log.outcomes().last(),
        Some(&("call.transfer", None, None, Some(603)))
    );
    // The agent may try again; the carrier takes this one.
    transfer(&mut sim, number()).unwrap();
    let mut carrier = Carrier::new(202, &[(0.5, "SIP/2.0 200 OK", true)]);
    run_carrier(&mut sim, dialog, 60.0, &mut carrier);
    assert_eq!(sim.log.transfers, [(Failed, 603), (Completed, 200)]);
    assert_eq!(sim.flow.call_count(), 0);
}

#[test]
fn silence_after_202_or_no_answer_to_the_refer_fails_after_the_timeout() {
    for refer_status in [202, 0] {
        let (mut sim, dialog) = answered_call(53);
        let asked_at = sim.now;
        transfer(&mut sim, number()).unwrap();
        let mut carrier = Carrier::new(refer_status, &[]);
        run_carrier(&mut sim, dialog, 29.0, &mut carrier);
        assert!(sim.log.transfers.is_empty(), "{refer_status}: not yet");
        run_carrier(&mut sim, dialog, 80.0, &mut carrier);
        assert_eq!(sim.log.transfers, [(Failed, 408)], "{refer_status}");
        let failed_at = sim.log.events.last().unwrap().at;
        let first = sim.log.events[0].at;
        let took = failed_at.duration_since(first).unwrap();
        assert!(
            took >= asked_at - sim.start + Duration::from_secs(30) - Duration::from_secs(1),
            "{took:?}"
        );
        assert_eq!(sim.flow.call_count(), 1, "the caller stays with the agent");
        assert!(sim.log.gateway_byes.is_empty());
        assert_eq!(
            sim.flow.poll_timeout(),
            None,
            "no timer left once it failed"
        );
    }
}

#[test]
fn bad_notifies_get_400_and_change_nothing_stray_ones_get_481() {
    let (mut sim, dialog) = answered_call(54);
    // No transfer yet: a NOTIFY in the dialog names no subscription of ours.
    sipfrag_notify(&mut sim, dialog, "SIP/2.0 200 OK", true);
    let mut idle = Carrier::new(202, &[]);
    run_carrier(&mut sim, dialog, 4.0, &mut idle);
    assert_eq!(idle.notify_answers, [481]);

    transfer(&mut sim, number()).unwrap();
    let mut carrier = Carrier::new(202, &[]);
    run_carrier(&mut sim, dialog, 6.0, &mut carrier);
    let broken: [(Headers<'_>, &[u8]); 3] = [
        (
            &[("Event", "refer"), ("Subscription-State", "active")],
            b"SIP/2.0 2x0 OK\r\n",
        ),
        (
            &[("Event", "dialog"), ("Subscription-State", "active")],
            b"SIP/2.0 200 OK\r\n",
        ),
        (&[("Event", "refer")], b"SIP/2.0 200 OK\r\n"),
    ];
    for (at, (headers, body)) in (7..).zip(broken) {
        send_notify(&mut sim, dialog, headers, body);
        run_carrier(&mut sim, dialog, f64::from(at), &mut carrier);
    }
    assert_eq!(carrier.notify_answers, [400, 400, 400]);
    assert!(sim.log.transfers.is_empty(), "state unchanged");
    assert_eq!(sim.flow.call_count(), 1);
    // The transfer still completes on a good one.
    sipfrag_notify(&mut sim, dialog, "SIP/2.0 200 OK", true);
    run_carrier(&mut sim, dialog, 40.0, &mut carrier);
    assert_eq!(sim.log.transfers, [(Completed, 200)]);
}

#[test]
fn transfers_are_refused_when_disabled_ringing_or_ended() {
    let table = routing_trunk(false, false, |c| {
        c.transfer = switchboard_routing::model::TransferMode::Disabled;
    });
    let mut sim = Sim::new(55, 0, table);
    sim.invite(CALLED, None);
    sim.run_call(2.0, None).expect("answered");
    assert_eq!(transfer(&mut sim, number()), Err(TransferRefused::Disabled));

    let mut sim = Sim::new(56, 0, routing(false, false));
    sim.agent_delay = Duration::from_secs(3600);
    sim.invite(CALLED, None);
    sim.run_call(1.0, None);
    assert_eq!(
        transfer(&mut sim, number()),
        Err(TransferRefused::NotInProgress),
        "still ringing"
    );

    let (mut sim, dialog) = answered_call(57);
    let now = sim.time();
    let missing = sim.flow.transfer(now, "nobody@192.0.2.1", &number());
    assert_eq!(missing, Err(TransferRefused::Ended));
    // A caller BYE while a transfer waits ends both, with no timer left behind.
    transfer(&mut sim, number()).unwrap();
    let mut carrier = Carrier::new(202, &[]);
    run_carrier(&mut sim, dialog, 3.0, &mut carrier);
    let now = sim.now;
    sim.uac.send_bye(now, dialog).unwrap();
    run_carrier(&mut sim, dialog, 60.0, &mut carrier);
    assert_eq!(sim.flow.call_count(), 0);
    assert!(sim.log.transfers.is_empty(), "{:?}", sim.log.transfers);
    assert_eq!(sim.flow.poll_timeout(), None);
    assert_eq!(
        sim.log.outcomes().last(),
        Some(&("call.ended", Some("caller"), Some("caller_bye"), Some(200)))
    );
}
