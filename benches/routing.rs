//! Routing table benchmarks (issues 4 and 16): lookup latency at 1M numbers / 10k deployments /
//! 1M cohort rows (three variables each), build + swap, one-deployment changes, memory per
//! number and per cohort row, and the worst lookup latency seen while another thread swaps.
//!
//! `cargo bench -p switchboard-benches --bench routing -- --warm-up-time 1 --measurement-time 3`
//!
//! `SWITCHBOARD_BENCH_NUMBERS=10000000` runs the same at 10M numbers (100k deployments);
//! `SWITCHBOARD_BENCH_COHORT_ROWS` sets the cohort rows (default: as many as numbers). Cohort
//! rows are applied in per-deployment batches, as uploads do, so their input never sits in
//! memory all at once.
//!
//! Criterion measures the timings; the memory and stall figures are printed as `REPORT` lines
//! after the criterion groups (a counting global allocator gives live heap bytes).

use std::alloc::System;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{criterion_group, BatchSize, Criterion};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use switchboard_routing::model::{
    AppOverrides, AppVersion, ChannelDirection, CohortMember, Connection, ConnectionConfig,
    Deployment, DeploymentStatus, InboundConfig, RuntimeStatus, Scope, TrafficSplit,
};
use switchboard_routing::{
    Change, RouteDecision, RoutingData, RoutingSettings, RoutingSnapshot, RoutingTable,
};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const NUMBERS_PER_DEPLOYMENT: usize = 100;
const APPS: usize = 100;
/// Distinct lookups cycled through by the lookup benchmark: far more than fit in cache
/// together with their table entries, so most probes miss like real traffic would.
const LOOKUP_SET: usize = 1 << 16;

/// "1M", "10M": the table size in bench names.
fn scale_label() -> String {
    format!("{}M", deployments() * NUMBERS_PER_DEPLOYMENT / 1_000_000)
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deployments in the table: numbers / 100 (10k at the default 1M numbers).
fn deployments() -> usize {
    env_count("SWITCHBOARD_BENCH_NUMBERS", 1_000_000) / NUMBERS_PER_DEPLOYMENT
}

/// Cohort rows per deployment (100 at the defaults).
fn cohort_per_deployment() -> usize {
    env_count(
        "SWITCHBOARD_BENCH_COHORT_ROWS",
        deployments() * NUMBERS_PER_DEPLOYMENT,
    ) / deployments().max(1)
}

fn scope_of(deployment: usize) -> Scope {
    Scope::new(format!("org-{}", deployment % 50), "main")
}

fn called_number(deployment: usize, index: usize) -> String {
    format!("+9180{:08}", deployment * NUMBERS_PER_DEPLOYMENT + index)
}

fn caller_number(deployment: usize, index: usize) -> String {
    format!("+9198{:08}", deployment * cohort_per_deployment() + index)
}

/// Three kinds of schedule, all open at [`bench_now`] (so lookups exercise the zone
/// conversion and accept), plus 24/7 deployments.
fn schedule_for(deployment: usize) -> Option<InboundConfig> {
    let all_days = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ]
    .map(String::from)
    .to_vec();
    let (start, end, tz) = match deployment % 4 {
        0 => ("09:00", "21:00", "Asia/Kolkata"),
        1 => ("06:00", "23:00", "Europe/London"),
        2 => ("22:00", "06:00", "America/New_York"),
        _ => return None,
    };
    Some(InboundConfig {
        start_time: start.into(),
        end_time: end.into(),
        allowed_days: all_days,
        timezone: tz.into(),
    })
}

/// Monday 2026-03-02 06:30 UTC: 12:00 in Kolkata, 06:30 in London, 01:30 in New York.
fn bench_now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T06:30:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn make_deployment(
    d: usize,
    numbers: impl Iterator<Item = String>,
    status: DeploymentStatus,
) -> Deployment {
    Deployment {
        deployment_id: format!("dep-{d:05}"),
        name: format!("Line {d}"),
        description: None,
        app_id: format!("app-{}", d % APPS),
        app_version: 1,
        connection_configs: vec![ConnectionConfig {
            connection_id: format!("conn-{}", d % 50),
            phone_numbers: numbers.collect(),
        }],
        channel_direction: ChannelDirection::Inbound,
        status,
        inbound_config: schedule_for(d),
        webhook_config: None,
        created_by: "bench@example.com".into(),
        created_at: "2026-03-01T10:00:00Z".into(),
        updated_by: "bench@example.com".into(),
        updated_at: "2026-03-01T10:00:00Z".into(),
    }
}

fn dataset() -> RoutingData {
    let records: Vec<(Scope, Deployment)> = (0..deployments())
        .map(|d| {
            let numbers = (0..NUMBERS_PER_DEPLOYMENT).map(|i| called_number(d, i));
            (
                scope_of(d),
                make_deployment(d, numbers, DeploymentStatus::Active),
            )
        })
        .collect();
    let connections = (0..deployments().min(50))
        .map(|c| {
            let connection = Connection {
                connection_id: format!("conn-{c}"),
                allowed_addresses: vec![format!("10.{c}.0.0/16")
                    .parse()
                    .unwrap_or_else(|_| "10.0.0.0/8".parse().unwrap())],
                media_addresses: Vec::new(),
                digest: None,
                provider: None,
                max_calls_per_second: None,
                media_encryption: Default::default(),
                headers_to_parameters: Default::default(),
                include_headers: Default::default(),
                transfer: Default::default(),
            };
            (scope_of(c), connection)
        })
        .collect();
    let mut app_versions = Vec::new();
    let mut splits = Vec::new();
    for org in 0..50 {
        for app in 0..APPS {
            for version in 1..=3 {
                app_versions.push((
                    Scope::new(format!("org-{org}"), "main"),
                    AppVersion {
                        app_id: format!("app-{app}"),
                        version,
                        runtime_url: format!("wss://runtime.example/app-{app}/v{version}"),
                        dialect: switchboard_routing::model::Dialect::Twilio,
                        status: RuntimeStatus::Ready,
                        status_detail: None,
                    },
                ));
            }
            if app % 5 == 0 {
                splits.push((
                    Scope::new(format!("org-{org}"), "main"),
                    TrafficSplit {
                        app_id: format!("app-{app}"),
                        percentages: BTreeMap::from([(1, 90.0), (2, 10.0)]),
                    },
                ));
            }
        }
    }
    RoutingData {
        deployments: records,
        connections,
        app_versions,
        splits,
        cohort_members: Vec::new(),
        settings: RoutingSettings {
            default_country_code: Some("91".into()),
        },
    }
}

/// One deployment's cohort rows as an upload batch: a user id and three variables per row.
fn cohort_batch(d: usize) -> Change {
    let members = (0..cohort_per_deployment())
        .map(|i| CohortMember {
            phone_number: caller_number(d, i),
            user_identifier: format!("user-{d}-{i}"),
            app_variables: BTreeMap::from([
                ("name".to_string(), format!("Customer {i}")),
                ("balance".to_string(), format!("{}", i * 17)),
                (
                    "plan".to_string(),
                    ["gold", "silver", "basic"][i % 3].to_string(),
                ),
            ]),
            app_overrides: AppOverrides::default(),
        })
        .collect();
    Change::UpsertCohortMembers(scope_of(d), format!("dep-{d:05}"), members)
}

/// Adds every deployment's cohort, a batch (one `apply`) per 100 deployments.
fn with_cohorts(snapshot: RoutingSnapshot) -> RoutingSnapshot {
    let batches: Vec<usize> = (0..deployments()).step_by(100).collect();
    batches.into_iter().fold(snapshot, |snapshot, first| {
        let changes: Vec<Change> = (first..(first + 100).min(deployments()))
            .map(cohort_batch)
            .collect();
        snapshot.apply(&changes).expect("valid cohort rows")
    })
}

struct Fixture {
    data: RoutingData,
    snapshot: Arc<RoutingSnapshot>,
    /// (called, caller, call_id), pseudo-randomly spread over all numbers; 80 % of callers are in
    /// the deployment's cohort.
    lookups: Vec<(String, String, String)>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let data = dataset();
        let snapshot = Arc::new(with_cohorts(
            RoutingSnapshot::build(data.clone()).expect("bench data is valid"),
        ));
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            // xorshift64*: a fixed, dependency-free sequence.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let lookups = (0..LOOKUP_SET)
            .map(|i| {
                let r = next();
                let d = (r % deployments() as u64) as usize;
                let n = ((r >> 20) % NUMBERS_PER_DEPLOYMENT as u64) as usize;
                let caller = if (r >> 40) % 5 == 0 {
                    "+14155550100".to_string()
                } else {
                    caller_number(
                        d,
                        ((r >> 48) % cohort_per_deployment().max(1) as u64) as usize,
                    )
                };
                (
                    called_number(d, n),
                    caller,
                    format!("{r:016x}-{i}@carrier.example"),
                )
            })
            .collect();
        Fixture {
            data,
            snapshot,
            lookups,
        }
    })
}

fn bench_lookup(c: &mut Criterion) {
    let fx = fixture();
    let now = bench_now();
    let mut group = c.benchmark_group("lookup");
    // Sanity: the benchmark measures accepted calls, most with cohort variables.
    let sample = fx.lookups.iter().take(1000).filter(|(called, caller, id)| {
        matches!(fx.snapshot.route(now, called, caller, id), RouteDecision::Accept(ref r) if r.cohort().is_some())
    });
    assert!(
        sample.count() > 700,
        "lookups should mostly accept with a cohort row"
    );

    // Misses spread like the hits: same shape and range, one digit off (no deployment has them).
    let unknown: Vec<(String, String, String)> = fx
        .lookups
        .iter()
        .map(|(called, caller, call_id)| {
            let called = called.replacen("+9180", "+9181", 1);
            (called, caller.clone(), call_id.clone())
        })
        .collect();
    let scale = scale_label();
    for (name, lookups, set) in [
        (
            format!("route_{scale}_numbers_random"),
            &fx.lookups,
            LOOKUP_SET,
        ),
        (
            format!("route_{scale}_unknown_numbers_random"),
            &unknown,
            LOOKUP_SET,
        ),
        // Sets are powers of two: a mask, not a division, picks the next lookup.
        ("route_1k_hot_numbers_random".to_string(), &fx.lookups, 1024),
    ] {
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                let (called, caller, call_id) = &lookups[i & (set - 1)];
                i = i.wrapping_add(1);
                black_box(fx.snapshot.route(
                    now,
                    black_box(called),
                    black_box(caller),
                    black_box(call_id),
                ))
            })
        });
    }
    // The number table alone (normalise, probe, the deployment's connection): no schedule,
    // split or cohort.
    let mut i = 0usize;
    group.bench_function(format!("trunk_for_{scale}_numbers_random"), |b| {
        b.iter(|| {
            let (called, _, _) = &fx.lookups[i & (LOOKUP_SET - 1)];
            i = i.wrapping_add(1);
            black_box(fx.snapshot.trunk_for_number(black_box(called)).is_some())
        })
    });
    let table = RoutingTable::new((*fx.snapshot).clone());
    let mut i = 0usize;
    group.bench_function("table_load_and_route_random", |b| {
        b.iter(|| {
            let (called, caller, call_id) = &fx.lookups[i & (LOOKUP_SET - 1)];
            i = i.wrapping_add(1);
            black_box(table.load().route(now, called, caller, call_id))
        })
    });
    let (called, caller, call_id) = &fx.lookups[0];
    group.bench_function("route_same_number", |b| {
        b.iter(|| {
            black_box(fx.snapshot.route(
                now,
                black_box(called),
                black_box(caller),
                black_box(call_id),
            ))
        })
    });
    group.bench_function("route_unknown_number", |b| {
        b.iter(|| {
            black_box(fx.snapshot.route(
                now,
                black_box("+14155550100"),
                black_box(caller),
                black_box(call_id),
            ))
        })
    });
    group.bench_function("trunk_for_number", |b| {
        b.iter(|| black_box(fx.snapshot.trunk_for_number(black_box(called)).is_some()))
    });
    group.bench_function("admits_source", |b| {
        let ip: std::net::IpAddr = "10.42.7.9"
            .parse()
            .unwrap_or(std::net::IpAddr::from([10, 42, 7, 9]));
        b.iter(|| black_box(fx.snapshot.admits_source(black_box(ip))))
    });
    group.finish();
}

fn bench_build(c: &mut Criterion) {
    let fx = fixture();
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    let table = RoutingTable::new((*fx.snapshot).clone());
    group.bench_function(format!("build_and_swap_{}_numbers", scale_label()), |b| {
        b.iter_batched(
            || fx.data.clone(),
            |data| table.store(Arc::new(RoutingSnapshot::build(data).expect("valid"))),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Two versions of deployment 1234 with entirely different numbers, applied alternately: the
/// worst single-deployment change (100 numbers unlinked, 100 linked).
fn renumbering_changes() -> [Vec<Change>; 2] {
    let d = 1234;
    let original = make_deployment(
        d,
        (0..NUMBERS_PER_DEPLOYMENT).map(|i| called_number(d, i)),
        DeploymentStatus::Active,
    );
    let renumbered = make_deployment(
        d,
        (0..NUMBERS_PER_DEPLOYMENT).map(|i| format!("+9122{:08}", i)),
        DeploymentStatus::Active,
    );
    [
        vec![Change::UpsertDeployment(scope_of(d), renumbered)],
        vec![Change::UpsertDeployment(scope_of(d), original)],
    ]
}

fn pause_changes() -> [Vec<Change>; 2] {
    let d = 4321;
    let numbers = || (0..NUMBERS_PER_DEPLOYMENT).map(|i| called_number(d, i));
    [
        vec![Change::UpsertDeployment(
            scope_of(d),
            make_deployment(d, numbers(), DeploymentStatus::Paused),
        )],
        vec![Change::UpsertDeployment(
            scope_of(d),
            make_deployment(d, numbers(), DeploymentStatus::Active),
        )],
    ]
}

fn bench_apply(c: &mut Criterion) {
    let fx = fixture();
    let mut group = c.benchmark_group("apply");
    let table = RoutingTable::new((*fx.snapshot).clone());
    for (name, changes) in [
        ("renumber_one_deployment_and_swap", renumbering_changes()),
        ("pause_one_deployment_and_swap", pause_changes()),
    ] {
        let mut flip = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                flip ^= 1;
                table.apply(&changes[flip]).expect("valid change")
            })
        });
    }
    let cohort_batch = vec![Change::UpsertCohortMembers(
        scope_of(77),
        "dep-00077".into(),
        (0..1000)
            .map(|i| CohortMember {
                phone_number: caller_number(77, i),
                user_identifier: format!("user-77-{i}-v2"),
                app_variables: BTreeMap::new(),
                app_overrides: AppOverrides::default(),
            })
            .collect(),
    )];
    group.bench_function("upsert_1000_cohort_rows_and_swap", |b| {
        b.iter(|| table.apply(&cohort_batch).expect("valid"))
    });
    group.finish();
}

fn live_heap_bytes() -> i128 {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as i128 - stats.bytes_deallocated as i128
        + stats.bytes_reallocated as i128
}

/// Live heap held by a snapshot built from consumed input (records the snapshot keeps, such as
/// the deployments' phone-number strings, count as its memory).
fn memory_report() {
    let before = live_heap_bytes();
    let snapshot = RoutingSnapshot::build(dataset()).expect("valid");
    let numbers_bytes = live_heap_bytes() - before;
    let numbers = snapshot.number_count();
    println!(
        "REPORT memory [numbers only]: {numbers} numbers, {} deployments: {:.1} MiB live heap = {:.1} bytes/number",
        snapshot.deployment_count(),
        numbers_bytes as f64 / (1024.0 * 1024.0),
        numbers_bytes as f64 / numbers as f64
    );
    let before_change = live_heap_bytes();
    let next = snapshot.apply(&renumbering_changes()[0]).expect("valid");
    println!(
        "REPORT memory [one-deployment change]: the next snapshot adds {:.1} KiB of unshared data",
        (live_heap_bytes() - before_change) as f64 / 1024.0
    );
    drop(next);
    let before_cohorts = live_heap_bytes();
    let snapshot = with_cohorts(snapshot);
    let cohort_bytes = live_heap_bytes() - before_cohorts;
    let members = snapshot.cohort_member_count();
    println!(
        "REPORT memory [cohorts]: {members} cohort rows (a user id and 3 variables each): {:.1} MiB = {:.1} bytes/cohort row",
        cohort_bytes as f64 / (1024.0 * 1024.0),
        cohort_bytes as f64 / members.max(1) as f64
    );
}

/// Involuntary context switches of the calling thread (Linux), to tell preemption by other
/// processes on this shared machine apart from stalls caused by the swap itself.
fn involuntary_switches() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("nonvoluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
}

struct Latencies {
    sorted_ns: Vec<u64>,
    preempted: Option<u64>,
}

impl Latencies {
    fn percentile(&self, p: f64) -> u64 {
        let index = ((self.sorted_ns.len() as f64 - 1.0) * p).round() as usize;
        self.sorted_ns.get(index).copied().unwrap_or(0)
    }

    fn line(&self, label: &str) -> String {
        let over = self.sorted_ns.iter().filter(|&&ns| ns > 10_000).count();
        format!(
            "{label}: {} lookups, p50 {} ns, p99 {} ns, p99.9 {} ns, p99.99 {} ns, max {:.1} us, {over} above 10 us, {} involuntary context switches of the reader",
            self.sorted_ns.len(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(0.999),
            self.percentile(0.9999),
            self.sorted_ns.last().copied().unwrap_or(0) as f64 / 1000.0,
            self.preempted.map_or_else(|| "?".to_string(), |n| n.to_string())
        )
    }
}

/// Times each `route` (through `RoutingTable::load`) for `duration` over the first `set`
/// lookups of the fixture.
fn time_lookups(table: &RoutingTable, set: usize, duration: Duration) -> Latencies {
    let fx = fixture();
    let now = bench_now();
    let mut samples = Vec::with_capacity(4_000_000);
    let switches_before = involuntary_switches();
    let deadline = Instant::now() + duration;
    let mut i = 0usize;
    while Instant::now() < deadline && samples.len() + 1000 < samples.capacity() {
        for _ in 0..1000 {
            let (called, caller, call_id) = &fx.lookups[i % set];
            i = i.wrapping_add(1);
            let start = Instant::now();
            let decision = table.load().route(now, called, caller, call_id);
            let elapsed = start.elapsed();
            black_box(decision);
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    let preempted = switches_before
        .zip(involuntary_switches())
        .map(|(before, after)| after - before);
    samples.sort_unstable();
    Latencies {
        sorted_ns: samples,
        preempted,
    }
}

/// A reader routes in a tight loop, timing each lookup, first alone, then while a writer
/// alternates full swaps (`store` of a prebuilt 1M-number snapshot) and one-deployment
/// `apply`s as fast as it can.
fn stall_report() {
    let fx = fixture();
    let table = Arc::new(RoutingTable::new((*fx.snapshot).clone()));
    let alternate = Arc::new(RoutingSnapshot::build(fx.data.clone()).expect("valid"));
    for (label, set) in [
        ("1k hot numbers", 1_000usize),
        ("64k numbers spread over 1M", LOOKUP_SET),
    ] {
        let quiet = time_lookups(&table, set, Duration::from_secs(2));
        println!(
            "REPORT stall [{label}, no writer] {}",
            quiet.line("lookups").trim_start_matches("lookups: ")
        );
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (table, stop) = (Arc::clone(&table), Arc::clone(&stop));
            let snapshots = [Arc::clone(&fx.snapshot), Arc::clone(&alternate)];
            std::thread::spawn(move || {
                let changes = renumbering_changes();
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    table.store(Arc::clone(&snapshots[(swaps % 2) as usize]));
                    let _ = table.apply(&changes[0]);
                    let _ = table.apply(&changes[1]);
                    swaps += 3;
                }
                swaps
            })
        };
        let busy = time_lookups(&table, set, Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        let swaps = writer.join().unwrap_or(0);
        println!(
            "REPORT stall [{label}, writer swapping] {} ({swaps} swaps meanwhile)",
            busy.line("x").trim_start_matches("x: ")
        );
    }
}

criterion_group!(benches, bench_lookup, bench_build, bench_apply);

fn main() {
    benches();
    memory_report();
    stall_report();
    Criterion::default().configure_from_args().final_summary();
}
