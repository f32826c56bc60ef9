//! A crash during writes loses no acknowledged write.
//!
//! The test binary re-executes itself running only `crash_child_writer`, which writes in a
//! loop and prints `ACK …` after each write returns. The parent SIGKILLs it mid-stream, reopens
//! the store and checks that every acknowledged write is there.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use switchboard_store::Store;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{deployment, member, scope, TestDb};

/// Set (to the store url) only in the child process.
const CHILD_URL_ENV: &str = "SWITCHBOARD_STORE_CRASH_CHILD_URL";

/// Acknowledged writes to see before the kill: enough that the kill lands mid-stream, with
/// writes in flight, rather than before the first commit.
const ACKS_BEFORE_KILL: usize = 60;

/// Bound on the child reaching `ACKS_BEFORE_KILL`: turns a stuck child into a failure.
const CHILD_BOUND: Duration = Duration::from_secs(120);

const SIGKILL: i32 = 9;

fn number(index: u64) -> String {
    format!("+1999{index:07}")
}

/// What one `ACK` line acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    Deployment(u64),
    Members(u64),
}

fn parse_ack(line: &str) -> Option<Ack> {
    // Only complete lines count: a line cut by the kill was never fully acknowledged.
    let line = line.strip_suffix('\n')?;
    let mut words = line.strip_prefix("ACK ")?.split(' ');
    let (kind, index) = (words.next()?, words.next()?.parse().ok()?);
    match kind {
        "deployment" => Some(Ack::Deployment(index)),
        "members" => Some(Ack::Members(index)),
        _ => None,
    }
}

#[tokio::test]
#[ignore = "the child process of the crash tests; does nothing unless they start it"]
async fn crash_child_writer() -> anyhow::Result<()> {
    let Ok(url) = std::env::var(CHILD_URL_ENV) else {
        return Ok(());
    };
    let store = Store::open(&url).await?;
    let s = scope("org-crash");
    for index in 0u64.. {
        let id = format!("dep-{index}");
        store
            .insert_deployment(&s, &deployment(&id, &[&number(index)]))
            .await?;
        println!("ACK deployment {index}");
        store
            .insert_cohort_members(&s, &id, &[member(&number(index), &id)])
            .await?;
        println!("ACK members {index}");
    }
    Ok(())
}

async fn acknowledged_writes_survive_kill(url: &str) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "crash::crash_child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL_ENV, url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("start the writer child")?;
    let mut output = BufReader::new(child.stdout.take().context("child stdout")?);
    let mut acked = Vec::new();
    let mut line = String::new();

    let reading = async {
        while acked.len() < ACKS_BEFORE_KILL {
            line.clear();
            if output.read_line(&mut line).await? == 0 {
                bail!("the writer exited before {ACKS_BEFORE_KILL} writes");
            }
            acked.extend(parse_ack(&line));
        }
        Ok(())
    };
    tokio::time::timeout(CHILD_BOUND, reading)
        .await
        .context("writer too slow")??;
    child.start_kill()?;
    let status = child.wait().await?;
    ensure!(
        status.signal() == Some(SIGKILL),
        "the writer was killed mid-stream, not {status}"
    );
    // What it printed before dying was acknowledged too.
    loop {
        line.clear();
        if output.read_line(&mut line).await? == 0 {
            break;
        }
        acked.extend(parse_ack(&line));
    }

    let store = Store::open(url).await?;
    let s = scope("org-crash");
    for ack in &acked {
        match *ack {
            Ack::Deployment(index) => {
                let id = format!("dep-{index}");
                assert!(
                    store.get_deployment(&s, &id).await?.is_some(),
                    "{ack:?} lost"
                );
                assert_eq!(
                    store.number_owner(&number(index)).await?,
                    Some((s.clone(), id)),
                    "{ack:?}"
                );
            }
            Ack::Members(index) => {
                let id = format!("dep-{index}");
                let got = store.get_cohort_member(&s, &id, &number(index)).await?;
                assert_eq!(got, Some(member(&number(index), &id)), "{ack:?} lost");
            }
        }
    }
    // The store is whole after the crash: everything loads, and writing goes on.
    let dataset = store.load_all().await?;
    ensure!(
        dataset.deployments.len() >= acked.len() / 2,
        "{} deployments",
        dataset.deployments.len()
    );
    store.put_setting("after-crash", "ok").await?;
    println!("{} acknowledged writes survived kill -9", acked.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acknowledged_writes_survive_kill_9() -> anyhow::Result<()> {
    let db = TestDb::sqlite()?;
    acknowledged_writes_survive_kill(&db.url).await?;
    db.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_writes_survive_kill_9() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await? else {
        return Ok(());
    };
    acknowledged_writes_survive_kill(&db.url).await?;
    db.finish().await
}

#[test]
fn ack_lines_parse_only_when_complete() {
    assert_eq!(parse_ack("ACK deployment 7\n"), Some(Ack::Deployment(7)));
    assert_eq!(parse_ack("ACK members 12\n"), Some(Ack::Members(12)));
    assert_eq!(parse_ack("ACK members 12"), None, "cut by the kill");
    assert_eq!(parse_ack("running 1 test\n"), None);
}
