//! Agent transfer (issue 14): the agent asks through the Twilio call update (`<Dial>` TwiML,
//! sent with Twilio's own Python helper library when its venv is there), switchboard REFERs the
//! carrier (SIPp), follows its NOTIFYs and tells the agent on its stream. Also the refusals:
//! 409 while a transfer is pending, 400 on a `transfer = "disabled"` connection or for bad
//! TwiML, 404 once the call is over.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::harness::*;

const FORM: &str = "application/x-www-form-urlencoded";
const DIAL: &str = "<Response><Dial>+918000000000</Dial></Response>";

/// The twilio venv's python (`TWILIO_VENV`, default /tmp/twilio-venv, made by tests/run.sh);
/// `None`, after a notice, when it is absent.
fn twilio_python() -> Option<PathBuf> {
    let venv =
        std::env::var_os("TWILIO_VENV").map_or_else(|| "/tmp/twilio-venv".into(), PathBuf::from);
    let python = venv.join("bin/python");
    let usable = Command::new(&python)
        .args(["-c", "import twilio"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        eprintln!(
            "notice: no twilio venv at {} (tests/run.sh makes it: python3 -m venv; pip install twilio); using plain HTTP for the call update",
            venv.display()
        );
    }
    usable.then_some(python)
}

/// `(status, sip_status)` of the agent's `transfer` events once `count` arrived (10 s).
async fn transfer_events(agent: &Agent, count: usize) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    for _ in 0..500 {
        seen = agent
            .calls()
            .first()
            .map(|c| {
                c.messages
                    .iter()
                    .filter(|m| m["event"] == "transfer")
                    .map(|m| {
                        assert!(m["streamSid"].is_string(), "{m}");
                        let t = &m["transfer"];
                        (
                            t["status"].as_str().unwrap_or("").to_owned(),
                            t["sip_status"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if seen.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

/// The Twilio call resource path and Basic auth of the agent's call.
struct CallUpdate {
    path: String,
    account_sid: String,
    call_sid: String,
    auth: Vec<String>,
}

impl CallUpdate {
    fn of(start: &Value) -> CallUpdate {
        let call_sid = start["callSid"].as_str().expect("callSid").to_owned();
        let account_sid = start["accountSid"].as_str().expect("accountSid").to_owned();
        CallUpdate {
            path: format!("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json"),
            auth: vec![twilio_basic_auth(&account_sid)],
            account_sid,
            call_sid,
        }
    }

    /// POSTs `Twiml=<twiml>` as a form (plain HTTP).
    async fn post(&self, admin: Admin, twiml: &str) -> HttpResponse {
        let form = format!("Twiml={}", form_encode(twiml));
        let (path, auth) = (self.path.clone(), self.auth.clone());
        tokio::task::spawn_blocking(move || {
            admin
                .request("POST", &path, Some(FORM), form.as_bytes(), &auth)
                .expect("call update")
        })
        .await
        .unwrap()
    }
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The call's summary line in the daemon's log.
fn summary(daemon: &Daemon, call_sid: &str) -> String {
    let log = daemon.log();
    log.lines()
        .find(|l| l.contains("call ended") && l.contains(call_sid))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no summary line\n{}", tail(&log, 40)))
}

async fn run_ok(fixture: &Fixture, call: tokio::task::JoinHandle<anyhow::Result<SippRun>>) {
    let run = call.await.unwrap().expect("sipp ran");
    assert!(
        run.success,
        "sipp failed\n{}\n--- switchboard log ---\n{}",
        run.report,
        tail(&fixture.daemon.log(), 80)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_transfers_through_the_twilio_library_and_the_carrier_completes_it() {
    if sipp_missing() {
        return;
    }
    let python = twilio_python();
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let sipp = Sipp::new("uac_transfer_accept.xml", fixture.daemon.sip_udp);
    let call = tokio::task::spawn_blocking(move || sipp.run());
    let start = first_start(&fixture.agent).await;
    let update = CallUpdate::of(&start);

    match python {
        Some(python) => {
            let base_url = format!("http://{}", fixture.daemon.admin);
            let args = [
                base_url,
                update.account_sid.clone(),
                API_KEY.to_owned(),
                update.call_sid.clone(),
                DIAL.to_owned(),
            ];
            let out = tokio::task::spawn_blocking(move || {
                Command::new(python)
                    .arg(scenario("../twilio/call_update.py"))
                    .args(args)
                    .output()
                    .expect("python runs")
            })
            .await
            .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let answer: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
                panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr))
            });
            assert_eq!(answer["status"], 200, "{answer}");
            assert_eq!(answer["call_status"], "in-progress", "{answer}");
            assert_eq!(answer["sid"], update.call_sid.as_str(), "{answer}");
        }
        None => {
            let accepted = update.post(fixture.daemon.admin(), DIAL).await;
            assert_eq!(accepted.status, 200, "{}", accepted.body);
            assert_eq!(
                accepted.json()["status"],
                "in-progress",
                "{}",
                accepted.body
            );
        }
    }
    // The carrier holds its NOTIFYs a second: a second transfer meanwhile is a conflict.
    let again = update.post(fixture.daemon.admin(), DIAL).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.json()["code"], 21220, "{}", again.body);
    assert_eq!(again.json()["status"], 409, "{}", again.body);

    // SIPp checked Refer-To, Referred-By and the BYE's Reason.
    run_ok(&fixture, call).await;
    let events = transfer_events(&fixture.agent, 2).await;
    assert_eq!(
        events,
        [("ringing".to_owned(), 100), ("completed".to_owned(), 200)]
    );
    // The agent's leg ended: `stop` after the transfer events, then the socket closed.
    first_call_stopped(&fixture.agent).await;
    let summary = summary(&fixture.daemon, &update.call_sid);
    assert!(summary.contains("transferred"), "{summary}");
    assert!(summary.contains("agent"), "{summary}");
    assert!(
        fixture.daemon.log().contains("transfer"),
        "{}",
        tail(&fixture.daemon.log(), 40)
    );
    // Over: the call resource is gone.
    let gone = update.post(fixture.daemon.admin(), DIAL).await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert_eq!(gone.json()["code"], 20404, "{}", gone.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_transfer_keeps_the_caller_with_the_agent() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let sipp = Sipp::new("uac_transfer_reject.xml", fixture.daemon.sip_udp);
    let call = tokio::task::spawn_blocking(move || sipp.run());
    let start = first_start(&fixture.agent).await;
    let update = CallUpdate::of(&start);
    let bad_uri = update
        .post(
            fixture.daemon.admin(),
            "<Response><Refer><Sip>http://x</Sip></Refer></Response>",
        )
        .await;
    assert_eq!(bad_uri.status, 400, "{}", bad_uri.body);
    assert_eq!(bad_uri.json()["code"], 12200, "{}", bad_uri.body);
    let accepted = update.post(fixture.daemon.admin(), DIAL).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    let events = transfer_events(&fixture.agent, 1).await;
    assert_eq!(events, [("failed".to_owned(), 603)]);
    // Still connected: the agent's stream goes on until the carrier's own BYE.
    run_ok(&fixture, call).await;
    first_call_stopped(&fixture.agent).await;
    let summary = summary(&fixture.daemon, &update.call_sid);
    assert!(summary.contains("caller_bye"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_connection_refuses_transfers_with_400_and_bad_twiml_is_400() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let admin = fixture.daemon.admin();
    tokio::task::spawn_blocking(move || {
        let path = Admin::scoped(&format!("/connections/{CONNECTION}"));
        let bad = admin
            .json(
                "PUT",
                &path,
                &json!({ "allowed_addresses": ["127.0.0.1/32"], "transfer": "blind" }),
            )
            .expect("PUT");
        assert_eq!(bad.status, 422, "{}", bad.body);
        assert!(bad.body.contains("transfer"), "{}", bad.body);
        let stored = admin
            .ok(
                "PUT",
                &path,
                &json!({ "allowed_addresses": ["127.0.0.1/32", "::1/128"], "transfer": "disabled" }),
            )
            .expect("PUT connection");
        assert_eq!(stored["transfer"], "disabled", "{stored}");
    })
    .await
    .unwrap();

    let sipp = Sipp::new("uac_call.xml", fixture.daemon.sip_udp)
        .arg("-d")
        .arg("3000");
    let call = tokio::task::spawn_blocking(move || sipp.run());
    let start = first_start(&fixture.agent).await;
    let update = CallUpdate::of(&start);
    let disabled = update.post(fixture.daemon.admin(), DIAL).await;
    assert_eq!(disabled.status, 400, "{}", disabled.body);
    assert_eq!(disabled.json()["code"], 13227, "{}", disabled.body);
    assert_eq!(disabled.json()["status"], 400, "{}", disabled.body);
    for (twiml, code) in [
        ("<Response><Dial>+91800", 12100),
        ("<Response><Dial>0800 123</Dial></Response>", 13224),
        (
            "<Response><Dial><Conference>c</Conference></Dial></Response>",
            12200,
        ),
    ] {
        let refused = update.post(fixture.daemon.admin(), twiml).await;
        assert_eq!(refused.status, 400, "{twiml}: {}", refused.body);
        assert_eq!(refused.json()["code"], code, "{twiml}: {}", refused.body);
    }
    run_ok(&fixture, call).await;
    assert!(
        transfer_events(&fixture.agent, 1).await.is_empty(),
        "nothing reached the carrier"
    );
    let gone = update.post(fixture.daemon.admin(), DIAL).await;
    assert_eq!(gone.status, 404, "{}", gone.body);
}
