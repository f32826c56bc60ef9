//! The drain after SIGTERM on simulated time: refusals, the grace deadline, ending all calls.

use super::*;

/// Sends an out-of-dialog OPTIONS from the trunk (as a dispatcher's probe would).
fn send_options(sim: &mut Sim) {
    let options = MessageBuilder::request("OPTIONS", "sip:192.0.2.9")
        .header("Via", sim.uac.new_via(Transport::Udp))
        .header("Max-Forwards", 70)
        .header(
            "From",
            format!("<sip:probe@192.0.2.1>;tag={}", sim.uac.new_tag()),
        )
        .header("To", "<sip:192.0.2.9>")
        .header("Call-ID", format!("{}@192.0.2.1", sim.uac.new_tag()))
        .header("CSeq", "1 OPTIONS")
        .build()
        .unwrap();
    sim.uac
        .send_request(sim.now, addr(GATEWAY), Transport::Udp, options)
        .unwrap();
}

#[test]
fn a_drain_refuses_new_calls_and_probes_but_lets_the_live_call_go_on_to_its_end() {
    let (mut sim, dialog) = answered_call(30);
    let now = sim.time();
    sim.flow.start_drain(now, Duration::from_secs(300));
    sim.invite(CALLED, None);
    send_options(&mut sim);
    sim.run_call(4.0, None);
    assert_eq!(sim.log.uac_statuses, [180, 200, 503, 503], "{:?}", sim.log);
    for refusal in &sim.log.uac_responses[2..] {
        assert!(refusal.contains("Retry-After: 30"), "{refusal}");
        assert!(refusal.contains("Reason: Q.850;cause=41;"), "{refusal}");
    }
    assert_eq!(sim.log.started.len(), 1, "no call task for a refused call");
    // The live call goes on well past the refusals: no BYE from us, media still up.
    sim.run_call(100.0, None);
    assert!(sim.log.gateway_byes.is_empty(), "{:?}", sim.log);
    assert_eq!(sim.flow.call_count(), 1);
    assert!(!sim.flow.drained());
    // The caller hangs up: the call ends normally and the flow is drained.
    sim.uac.send_bye(sim.now, dialog).unwrap();
    sim.run_call(140.0, None);
    assert_eq!(sim.log.ended.len(), 1);
    assert!(sim.flow.drained());
    assert_eq!(sim.flow.transaction_count(), 0);
    let ended = &sim.flow.metrics.call.ended;
    assert_eq!(ended.with_label_values(&["caller"]).get(), 1);
    assert_eq!(ended.with_label_values(&["gateway"]).get(), 0);
    assert_eq!(sim.flow.metrics.call.duration_seconds.get_sample_count(), 1);
    let duration = sim.flow.metrics.call.duration_seconds.get_sample_sum();
    assert!((98.0..140.0).contains(&duration), "{duration}");
}

#[test]
fn when_the_grace_period_is_over_the_calls_left_get_bye_with_cause_41() {
    let (mut sim, _dialog) = answered_call(31);
    let drain_at = sim.now;
    let now = sim.time();
    sim.flow.start_drain(now, Duration::from_secs(60));
    // The deadline is one of the flow's timers (no I/O loop needed to enforce it).
    assert!(sim
        .flow
        .poll_timeout()
        .is_some_and(|at| at <= drain_at + Duration::from_secs(60)));
    sim.run_call(100.0, None);
    assert_eq!(sim.log.gateway_byes.len(), 1, "{:?}", sim.log);
    let (at, reason) = &sim.log.gateway_byes[0];
    assert_eq!(reason, "Reason: Q.850;cause=41;text=\"gateway shutdown\"");
    let after = *at - drain_at;
    assert!(
        after >= Duration::from_secs(60) && after < Duration::from_secs(61),
        "BYE {after:?} after the drain began"
    );
    assert!(sim.flow.drained());
    let ended = &sim.flow.metrics.call.ended;
    assert_eq!(ended.with_label_values(&["gateway"]).get(), 1);
}

#[test]
fn ending_all_calls_hangs_up_at_once_and_keeps_refusing() {
    let (mut sim, _dialog) = answered_call(32);
    let (asked_at, now) = (sim.now, sim.time());
    sim.flow.start_drain(now, Duration::from_secs(300));
    sim.flow.end_all_calls(now);
    // A call ringing when the order comes is refused with 503, not left behind.
    sim.invite(CALLED, None);
    sim.run_call(10.0, None);
    assert_eq!(sim.log.gateway_byes.len(), 1, "{:?}", sim.log);
    assert!(sim.log.gateway_byes[0].0 - asked_at < Duration::from_secs(1));
    assert!(sim.log.gateway_byes[0].1.contains("cause=41"));
    assert_eq!(sim.log.uac_statuses.last(), Some(&503));
    assert!(sim.flow.drained());
    assert_eq!(
        sim.flow.poll_timeout().is_some(),
        sim.flow.transaction_count() > 0
    );
}
