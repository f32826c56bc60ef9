//! Load driver for the cohort path at the issue's scale: upsert N members in batches (as the
//! admin API streams a CSV upload), then `load_all` (as the gateway does at start). Prints
//! timings; asserts nothing about them.
//!
//! ```text
//! cargo run --release -p switchboard-store --example cohort_bench -- [URL] [MEMBERS] [BATCH]
//! ```
//! URL defaults to a SQLite file in a temp dir, MEMBERS to 1,000,000, BATCH to 10,000. With a
//! PostgreSQL url the run uses its own scope and deletes its deployment at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchboard_routing::model::{
    AppOverrides, ChannelDirection, CohortMember, ConnectionConfig, Deployment, DeploymentStatus,
    Scope,
};
use switchboard_store::Store;

mod common;

use common::BenchArgs;

const DEFAULT_MEMBERS: usize = 1_000_000;
const DEFAULT_BATCH: usize = 10_000;

/// Spreads consecutive indexes over the number space, so rows arrive in random key order as
/// in a real CSV. The multiplier is coprime to 10^9, so distinct indexes give distinct numbers.
fn scattered(index: usize) -> u64 {
    (index as u64).wrapping_mul(2_654_435_761) % 1_000_000_000
}

fn member(index: usize) -> CohortMember {
    CohortMember {
        phone_number: format!("+919{:09}", scattered(index)),
        user_identifier: format!("customer-{index}"),
        app_variables: BTreeMap::from([("customer_name".to_owned(), format!("Customer {index}"))]),
        app_overrides: AppOverrides {
            initial_language_name: index.is_multiple_of(2).then(|| "hi".to_owned()),
            ..AppOverrides::default()
        },
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = BenchArgs::from_env()?;
    let url = args.url.clone();
    let total = args.count(1, "MEMBERS", DEFAULT_MEMBERS)?;
    let batch = args.count(2, "BATCH", DEFAULT_BATCH)?;

    let store = Store::open(&url).await?;
    let run = rand::random::<u32>();
    let scope = Scope::new("bench", format!("run-{run:08x}"));
    let deployment_id = format!("dep-bench-{run:08x}");
    let deployment = Deployment {
        deployment_id: deployment_id.clone(),
        name: "cohort bench".into(),
        description: None,
        app_id: "app-bench".into(),
        app_version: 1,
        connection_configs: vec![ConnectionConfig {
            connection_id: "trunk".into(),
            phone_numbers: vec![format!("+1888{run:010}")],
        }],
        channel_direction: ChannelDirection::Inbound,
        status: DeploymentStatus::Active,
        inbound_config: None,
        webhook_config: None,
        created_by: "bench".into(),
        created_at: String::new(),
        updated_by: "bench".into(),
        updated_at: String::new(),
    };
    store.insert_deployment(&scope, &deployment).await?;

    // Only the store calls are timed, not building the rows.
    let mut inserting = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    let mut start = 0;
    while start < total {
        let end = (start + batch).min(total);
        let rows: Vec<CohortMember> = (start..end).map(member).collect();
        let began = Instant::now();
        store
            .insert_cohort_members(&scope, &deployment_id, &rows)
            .await?;
        let took = began.elapsed();
        inserting += took;
        slowest = slowest.max(took);
        start = end;
    }
    let backend = store.backend_kind();
    println!(
        "{backend}: insert_cohort_members {total} rows in batches of {batch}: {inserting:.2?} \
         ({:.0} rows/s, slowest batch {slowest:.2?})",
        total as f64 / inserting.as_secs_f64()
    );

    let began = Instant::now();
    let dataset = store.load_all().await?;
    let loading = began.elapsed();
    let loaded = dataset
        .cohort_members
        .iter()
        .filter(|(s, _, _)| *s == scope)
        .count();
    anyhow::ensure!(
        loaded == total,
        "load_all returned {loaded} of {total} members"
    );
    println!(
        "{backend}: load_all {} members ({} in this run): {loading:.2?}",
        dataset.cohort_members.len(),
        loaded
    );
    drop(dataset);

    let began = Instant::now();
    store.delete_deployment(&scope, &deployment_id).await?;
    println!(
        "{backend}: delete_deployment with {total} members: {:.2?}",
        began.elapsed()
    );
    Ok(())
}
