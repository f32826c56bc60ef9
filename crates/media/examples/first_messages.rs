//! Prints what switchboard sends an agent, one JSON message per line, for compatibility
//! checks against agent frameworks (tests/pipecat/check.py feeds them to Pipecat).
//!
//! ```text
//! cargo run -p switchboard-media --example first_messages -- [--from +1555...] [--to +1555...]
//! ```
//! Lines 1-2 are the first two messages of every stream (`connected`, `start`); lines 3-6 are
//! a `media` frame, a `dtmf` digit, a `mark` echo and the final `stop`.
//!
//! With `--connect URL` (`ws://` or `wss://`, optionally `--ca FILE`: a PEM bundle trusted on
//! top of the system roots), it instead opens a real agent WebSocket the way a call does
//! (`connect_agent`: TLS verified, then `connected` and `start`) and hangs up (`stop`).
//!
//! With `--parse`, it instead reads agent→switchboard messages (one JSON per line) on stdin and
//! prints how switchboard understood each: `media <bytes>`, `mark <name>`, `clear`,
//! `other <event>` or `error <reason>`.

use std::io::BufRead as _;

use switchboard_media::twilio::{new_sid, parse_agent_message, AgentEvent, Outbound};
use switchboard_media::{
    connect_agent, AgentTls, CallInfo, CustomParameters, StartParams, StreamIds,
};

fn main() -> anyhow::Result<()> {
    let mut from = "+15550001111".to_owned();
    let mut to = "+15550002222".to_owned();
    let mut parse = false;
    let mut connect: Option<String> = None;
    let mut ca: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--from" => {
                from = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--from needs a value"))?
            }
            "--to" => {
                to = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--to needs a value"))?
            }
            "--parse" => parse = true,
            "--connect" => {
                connect = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--connect needs a URL"))?,
                )
            }
            "--ca" => {
                ca = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--ca needs a file"))?
                        .into(),
                )
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    if parse {
        return parse_stdin();
    }

    let variables = vec![("customer_name".to_owned(), "Asha".to_owned())];
    let overrides = vec![(
        "initial_bot_message".to_owned(),
        "Hello from switchboard".to_owned(),
    )];
    let params = CustomParameters::for_call(&CallInfo {
        from_number: &from,
        to_number: &to,
        deployment_id: "dep_example",
        app_id: "app_example",
        app_version: 2,
        split_variant: Some("2"),
        user_identifier: Some("user-1"),
        app_variables: &variables,
        app_overrides: &overrides,
    });
    let ids = StreamIds::generate(new_sid("AC"));
    if let Some(url) = connect {
        let tls = AgentTls::new(ca.as_deref())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(async {
            let start = StartParams {
                ids,
                custom_parameters: params,
                dialect: switchboard_media::AgentDialect::Twilio,
            };
            let link = connect_agent(&url, start, std::time::Duration::from_secs(5), &tls).await?;
            link.abandon().await;
            anyhow::Ok(())
        });
    }
    let mut out = Outbound::new(ids);
    println!("{}", out.connected());
    println!("{}", out.start(&params));
    // 20 ms of a µ-law ramp: every line after the first two is optional for checkers.
    let frame: Vec<u8> = (0..160u8).collect();
    println!("{}", out.media(0, &frame));
    println!("{}", out.dtmf('5'));
    println!("{}", out.mark("greeting-done"));
    println!("{}", out.stop());
    Ok(())
}

fn parse_stdin() -> anyhow::Result<()> {
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_agent_message(&line) {
            Ok(AgentEvent::Media(bytes)) => println!("media {}", bytes.len()),
            Ok(AgentEvent::Mark(name)) => println!("mark {name}"),
            Ok(AgentEvent::Clear) => println!("clear"),
            Ok(AgentEvent::Other(event)) => println!("other {event}"),
            Ok(other) => println!("other {other:?}"),
            Err(e) => println!("error {e}"),
        }
    }
    Ok(())
}
