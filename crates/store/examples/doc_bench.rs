//! Load driver for the document paths the admin API uses: insert, update, get and list
//! deployments (each claiming a phone number), and put/get connections. Prints the median
//! and p90 of each call; asserts nothing about them.
//!
//! ```text
//! cargo run --release -p switchboard-store --example doc_bench -- [URL] [RECORDS]
//! ```
//! URL defaults to a SQLite file in a temp dir, RECORDS to 500. With a PostgreSQL url the run
//! uses its own scope and deletes what it wrote at the end.

use std::future::Future;
use std::time::{Duration, Instant};

use switchboard_routing::model::{
    ChannelDirection, Connection, ConnectionConfig, Deployment, DeploymentStatus, Scope,
};
use switchboard_store::Store;

mod common;

use common::BenchArgs;

const DEFAULT_RECORDS: usize = 500;
/// Page size of the list calls (the admin API's default page).
const PAGE: u64 = 50;

fn deployment(run: u32, index: usize) -> Deployment {
    Deployment {
        deployment_id: format!("dep-{index}"),
        name: format!("bench deployment {index}"),
        description: Some("doc bench".into()),
        app_id: "app-bench".into(),
        app_version: 1,
        connection_configs: vec![ConnectionConfig {
            connection_id: "trunk".into(),
            phone_numbers: vec![format!("+1777{run:08}{index:05}")],
        }],
        channel_direction: ChannelDirection::Inbound,
        status: DeploymentStatus::Active,
        inbound_config: None,
        webhook_config: None,
        created_by: "bench".into(),
        created_at: String::new(),
        updated_by: "bench".into(),
        updated_at: String::new(),
    }
}

fn connection(index: usize) -> Connection {
    Connection {
        connection_id: format!("trunk-{index}"),
        allowed_addresses: vec!["203.0.113.0/24".parse().expect("valid net")],
        media_addresses: Vec::new(),
        digest: None,
        provider: Some("bench".into()),
        max_calls_per_second: Some(50),
        media_encryption: Default::default(),
        headers_to_parameters: Default::default(),
        include_headers: Default::default(),
        transfer: Default::default(),
    }
}

/// Runs `call` for each index and prints the median and p90 of its duration.
async fn timed<F, Fut>(backend: &str, name: &str, count: usize, mut call: F) -> anyhow::Result<()>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut took: Vec<Duration> = Vec::with_capacity(count);
    for index in 0..count {
        let began = Instant::now();
        call(index).await?;
        took.push(began.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 - 1.0) * q) as usize];
    println!(
        "{backend}: {name:<18} x{count}: median {:>9.1?}  p90 {:>9.1?}",
        at(0.5),
        at(0.9)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = BenchArgs::from_env()?;
    let url = args.url.clone();
    let records = args.count(1, "RECORDS", DEFAULT_RECORDS)?;

    let store = Store::open(&url).await?;
    let backend = store.backend_kind().to_string();
    let run = rand::random::<u32>() % 100_000_000;
    let scope = Scope::new("bench", format!("docs-{run:08}"));

    timed(&backend, "insert_deployment", records, |i| {
        let (store, scope) = (&store, &scope);
        async move {
            store.insert_deployment(scope, &deployment(run, i)).await?;
            Ok(())
        }
    })
    .await?;
    timed(&backend, "update_deployment", records, |i| {
        let (store, scope) = (&store, &scope);
        async move {
            let mut changed = deployment(run, i);
            changed.name.push_str(" (renamed)");
            store.update_deployment(scope, &changed).await?;
            Ok(())
        }
    })
    .await?;
    timed(&backend, "get_deployment", records, |i| {
        let (store, scope) = (&store, &scope);
        async move {
            let found = store.get_deployment(scope, &format!("dep-{i}")).await?;
            anyhow::ensure!(found.is_some(), "dep-{i} missing");
            Ok(())
        }
    })
    .await?;
    let pages = (records as u64).div_ceil(PAGE);
    timed(&backend, "list_deployments", records, |i| {
        let (store, scope) = (&store, &scope);
        async move {
            let offset = (i as u64 % pages) * PAGE;
            let (page, total) = store.list_deployments(scope, offset, PAGE).await?;
            anyhow::ensure!(total == records as u64 && !page.is_empty(), "short list");
            Ok(())
        }
    })
    .await?;
    timed(&backend, "put_connection", records, |i| {
        let (store, scope) = (&store, &scope);
        async move {
            store.put_connection(scope, &connection(i)).await?;
            Ok(())
        }
    })
    .await?;
    timed(&backend, "get_connection", records, |i| {
        let (store, scope) = (&store, &scope);
        async move {
            let found = store.get_connection(scope, &format!("trunk-{i}")).await?;
            anyhow::ensure!(found.is_some(), "trunk-{i} missing");
            Ok(())
        }
    })
    .await?;
    timed(&backend, "delete_deployment", records, |i| {
        let (store, scope) = (&store, &scope);
        async move {
            store.delete_deployment(scope, &format!("dep-{i}")).await?;
            Ok(())
        }
    })
    .await?;
    for index in 0..records {
        store
            .delete_connection(&scope, &format!("trunk-{index}"))
            .await?;
    }
    Ok(())
}
