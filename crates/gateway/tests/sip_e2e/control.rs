//! Agent call control (issue 14): a connection's carrier headers reach the agent's
//! `start.customParameters`, and the agent hangs up with a TwiML `<Hangup/>` call update whose
//! BYE says why. SIPp is the carrier.

use serde_json::{json, Value};

use super::harness::*;

const FORM: &str = "application/x-www-form-urlencoded";

/// `headers_to_parameters` and `include_headers` are validated (every problem at once) and
/// stored; the stored connection echoes them.
fn configure_headers(admin: &Admin) {
    let path = Admin::scoped(&format!("/connections/{CONNECTION}"));
    let bad = admin
        .json(
            "PUT",
            &path,
            &json!({
                "allowed_addresses": ["127.0.0.1/32"],
                "headers_to_parameters": {
                    "X-Customer-Id": "from_number",
                    "X Bad": "ok",
                    "X-Two": "sip.h.x-two",
                    "X-Three": "with space",
                },
                "include_headers": "some",
            }),
        )
        .expect("PUT");
    assert_eq!(bad.status, 422, "{}", bad.body);
    let locs: Vec<Value> = bad.json()["detail"]
        .as_array()
        .expect("detail")
        .iter()
        .map(|d| d["loc"].clone())
        .collect();
    for field in ["X-Customer-Id", "X Bad", "X-Two", "X-Three"] {
        assert!(
            locs.contains(&json!(["body", "headers_to_parameters", field])),
            "{field}: {}",
            bad.body
        );
    }
    assert!(
        locs.contains(&json!(["body", "include_headers"])),
        "{}",
        bad.body
    );

    let stored = admin
        .ok(
            "PUT",
            &path,
            &json!({
                "allowed_addresses": ["127.0.0.1/32", "::1/128"],
                "headers_to_parameters": { "X-Customer-Id": "customer_id" },
                "include_headers": "x-headers",
            }),
        )
        .expect("PUT connection");
    assert_eq!(
        stored["headers_to_parameters"],
        json!({ "X-Customer-Id": "customer_id" }),
        "{stored}"
    );
    assert_eq!(stored["include_headers"], "x-headers", "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_headers_reach_the_agent_and_a_twiml_hangup_ends_the_call_with_a_reason() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let admin = fixture.daemon.admin();
    tokio::task::spawn_blocking(move || configure_headers(&admin))
        .await
        .unwrap();

    let sipp = Sipp::new("uac_call_headers_twiml.xml", fixture.daemon.sip_udp);
    let name = sipp.scenario.display().to_string();
    let call = tokio::task::spawn_blocking(move || sipp.run());
    let start = first_start(&fixture.agent).await;
    let params = &start["customParameters"];
    assert_eq!(params["customer_id"], "42", "{start}");
    assert_eq!(params["sip.h.x-customer-id"], "42", "{start}");
    assert_eq!(params["sip.h.x-campaign"], "spring", "{start}");
    assert_eq!(params["from_number"], CALLER, "{start}");
    assert!(params.get("sip.h.via").is_none(), "x-headers only: {start}");

    let call_sid = start["callSid"].as_str().expect("callSid").to_owned();
    let account_sid = start["accountSid"].as_str().expect("accountSid").to_owned();
    let path = format!("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json");
    let auth = vec![twilio_basic_auth(&account_sid)];
    let admin = fixture.daemon.admin();
    let [say, malformed, hangup] = tokio::task::spawn_blocking(move || {
        [
            "Twiml=%3CResponse%3E%3CSay%3Ehello%3C%2FSay%3E%3C%2FResponse%3E",
            "Twiml=%3CResponse%3E%3CHangup%2F%3E",
            "Twiml=%3CResponse%3E%3CHangup%2F%3E%3C%2FResponse%3E",
        ]
        .map(|form| {
            admin
                .request("POST", &path, Some(FORM), form.as_bytes(), &auth)
                .expect("call update")
        })
    })
    .await
    .unwrap();
    // Other TwiML is refused in Twilio's error shape, and the call goes on.
    assert_eq!(say.status, 400, "{}", say.body);
    assert_eq!(say.json()["code"], 12200, "{}", say.body);
    assert_eq!(say.json()["status"], 400, "{}", say.body);
    assert!(say.body.contains("<Say>"), "{}", say.body);
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    assert_eq!(malformed.json()["code"], 12100, "{}", malformed.body);
    assert_eq!(hangup.status, 200, "{}", hangup.body);
    assert_eq!(hangup.json()["status"], "completed", "{}", hangup.body);

    // SIPp checks the BYE's Reason names the agent's TwiML hang-up.
    let run = call.await.unwrap().expect("sipp ran");
    assert!(
        run.success,
        "{name} failed\n{}\n--- switchboard log ---\n{}",
        run.report,
        tail(&fixture.daemon.log(), 80)
    );
    // The call's summary line says who (the agent) and why (its TwiML hang-up).
    let log = fixture.daemon.log();
    let summary = log
        .lines()
        .find(|l| l.contains("call ended") && l.contains(&call_sid))
        .unwrap_or_else(|| panic!("no summary line\n{}", tail(&log, 40)));
    assert!(summary.contains("twiml_hangup"), "{summary}");
    assert!(summary.contains("agent"), "{summary}");
}
