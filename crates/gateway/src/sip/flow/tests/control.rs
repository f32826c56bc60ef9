//! Agent call control on simulated time: trunk headers to the agent, the TwiML hang-up.

use super::*;

#[test]
fn trunk_headers_reach_the_agent_sanitised_and_never_over_reserved_keys() {
    let table = routing_trunk(false, false, |c| {
        c.include_headers = IncludeHeaders::XHeaders;
        c.headers_to_parameters = [
            ("X-Customer-Id".to_owned(), "customer_id".to_owned()),
            // Refused by the admin API; a record that has it still cannot spoof the caller.
            ("X-Spoof".to_owned(), "from_number".to_owned()),
        ]
        .into();
    });
    let mut sim = Sim::new(41, 0, table);
    sim.invite_with(
        CALLED,
        None,
        &[
            ("X-Customer-Id", "42"),
            ("X-Spoof", "+15550009999"),
            ("X-Note", "a\u{7}b"),
        ],
    );
    sim.run_call(2.0, None);
    let params = &sim.log.start_params[0];
    assert_eq!(params.get("customer_id"), Some("42"));
    assert_eq!(params.get("from_number"), Some("+919812345678"));
    assert_eq!(params.get("sip.h.x-customer-id"), Some("42"));
    assert_eq!(params.get("sip.h.x-spoof"), Some("+15550009999"));
    assert_eq!(params.get("sip.h.x-note"), Some("ab"));
    assert_eq!(params.get("sip.h.from"), None, "x-headers only");
}

#[test]
fn a_twiml_hang_up_sends_bye_saying_the_agent_asked_and_ends_as_the_agents() {
    let (mut sim, _dialog) = answered_call(42);
    let call_id = sim.log.started[0].clone();
    let now = sim.time();
    sim.flow
        .hang_up(now, &call_id, Hangup::Requested(TWIML_REQUESTER.to_owned()));
    sim.run_call(6.0, None);
    assert_eq!(sim.log.gateway_byes.len(), 1, "{:?}", sim.log);
    assert_eq!(
        sim.log.gateway_byes[0].1,
        "Reason: Q.850;cause=16;text=\"hung up by the agent (TwiML <Hangup/>)\""
    );
    assert_eq!(
        sim.log.outcomes().last(),
        Some(&("call.ended", Some("agent"), Some("twiml_hangup"), Some(200)))
    );
}
