//! Behaviour of the routing table through its public API: every reject reason, splits, cohorts,
//! trunks, hot swap, and `apply` ≡ `build` over random change sequences.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use switchboard_routing::model::{
    AppOverrides, AppVersion, ChannelDirection, CohortMember, Connection, ConnectionConfig,
    Deployment, DeploymentStatus, InboundConfig, RuntimeStatus, Scope, TrafficSplit,
};
use switchboard_routing::{
    Change, RejectReason, RouteDecision, RoutingData, RoutingError, RoutingSettings,
    RoutingSnapshot, RoutingTable,
};

fn scope() -> Scope {
    Scope::new("acme", "main")
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

/// Monday 2026-03-02 12:00 in Kolkata: inside 09:00–18:00 weekdays.
fn monday_noon() -> DateTime<Utc> {
    at("2026-03-02T06:30:00Z")
}

fn deployment(
    id: &str,
    app_id: &str,
    version: u32,
    connection: &str,
    numbers: &[&str],
) -> Deployment {
    Deployment {
        deployment_id: id.into(),
        name: format!("{id} line"),
        description: None,
        app_id: app_id.into(),
        app_version: version,
        connection_configs: vec![ConnectionConfig {
            connection_id: connection.into(),
            phone_numbers: numbers.iter().map(|n| n.to_string()).collect(),
        }],
        channel_direction: ChannelDirection::Inbound,
        status: DeploymentStatus::Active,
        inbound_config: None,
        webhook_config: None,
        created_by: "ops@acme.example".into(),
        created_at: "2026-03-01T10:00:00Z".into(),
        updated_by: "ops@acme.example".into(),
        updated_at: "2026-03-01T10:00:00Z".into(),
    }
}

fn business_hours() -> InboundConfig {
    InboundConfig {
        start_time: "09:00".into(),
        end_time: "18:00".into(),
        allowed_days: ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
            .map(String::from)
            .to_vec(),
        timezone: "Asia/Kolkata".into(),
    }
}

fn app_version(app_id: &str, version: u32, status: RuntimeStatus) -> AppVersion {
    AppVersion {
        app_id: app_id.into(),
        version,
        runtime_url: format!("ws://runtime.example/{app_id}/v{version}"),
        dialect: switchboard_routing::model::Dialect::Twilio,
        status,
        status_detail: None,
    }
}

fn connection(id: &str, nets: &[&str]) -> Connection {
    Connection {
        connection_id: id.into(),
        allowed_addresses: nets.iter().map(|n| n.parse().unwrap()).collect(),
        media_addresses: Vec::new(),
        digest: None,
        provider: Some("exotel".into()),
        max_calls_per_second: None,
        media_encryption: Default::default(),
        headers_to_parameters: Default::default(),
        include_headers: Default::default(),
        transfer: Default::default(),
    }
}

fn member(number: &str, user: &str, name: &str) -> CohortMember {
    CohortMember {
        phone_number: number.into(),
        user_identifier: user.into(),
        app_variables: BTreeMap::from([("name".to_string(), name.to_string())]),
        app_overrides: AppOverrides {
            initial_language_name: Some("Hindi".into()),
            ..Default::default()
        },
    }
}

fn split(app_id: &str, pairs: &[(u32, f64)]) -> TrafficSplit {
    TrafficSplit {
        app_id: app_id.into(),
        percentages: pairs.iter().copied().collect(),
    }
}

/// One deployment per reject reason plus an accepting one.
fn fixture() -> RoutingData {
    let mut paused = deployment("dep-paused", "agent", 1, "conn-1", &["+918047168002"]);
    paused.status = DeploymentStatus::Paused;
    let mut office = deployment("dep-office", "agent", 1, "conn-1", &["+918047168003"]);
    office.inbound_config = Some(business_hours());
    let mut outbound = deployment("dep-outbound", "agent", 1, "conn-1", &["+918047168007"]);
    outbound.channel_direction = ChannelDirection::Outbound;
    RoutingData {
        deployments: vec![
            (
                scope(),
                deployment(
                    "dep-live",
                    "agent",
                    1,
                    "conn-1",
                    &["+918047168000", "080 4716 8001"],
                ),
            ),
            (scope(), paused),
            (scope(), office),
            (
                scope(),
                deployment("dep-missing", "agent", 9, "conn-1", &["+918047168004"]),
            ),
            (
                scope(),
                deployment("dep-provisioning", "agent", 2, "conn-1", &["+918047168005"]),
            ),
            (
                scope(),
                deployment("dep-broken", "agent", 3, "conn-1", &["+918047168006"]),
            ),
            (scope(), outbound),
        ],
        connections: vec![(
            scope(),
            connection("conn-1", &["203.0.113.0/24", "2001:db8::/32"]),
        )],
        app_versions: vec![
            (scope(), app_version("agent", 1, RuntimeStatus::Ready)),
            (
                scope(),
                app_version("agent", 2, RuntimeStatus::Provisioning),
            ),
            (scope(), app_version("agent", 3, RuntimeStatus::Error)),
        ],
        splits: vec![],
        cohort_members: vec![
            (
                scope(),
                "dep-live".into(),
                member("+919876543210", "u-1", "Asha"),
            ),
            (
                scope(),
                "dep-live".into(),
                member("+919876500000", "u-2", "Ravi"),
            ),
            // The later row for the same caller (written nationally) wins.
            (
                scope(),
                "dep-live".into(),
                member("098765 43210", "u-1b", "Asha K"),
            ),
        ],
        settings: RoutingSettings {
            default_country_code: Some("91".into()),
        },
    }
}

fn route(snapshot: &RoutingSnapshot, called: &str) -> RouteDecision {
    snapshot.route(
        monday_noon(),
        called,
        "+919876543210",
        "call-1@carrier.example",
    )
}

fn reject_reason(decision: &RouteDecision) -> Option<RejectReason> {
    decision.rejected().map(|r| r.reason())
}

#[test]
fn accepts_with_runtime_connection_and_cohort() {
    let snapshot = RoutingSnapshot::build(fixture()).unwrap();
    let decision = snapshot.route(
        monday_noon(),
        "sip:+918047168000@gw.example;user=phone",
        "<sip:+919876543210@carrier.example>",
        "abc",
    );
    let route = decision.accepted().expect("accepted");
    assert_eq!(route.deployment_id(), "dep-live");
    assert_eq!(route.scope(), &scope());
    assert_eq!((route.app_id(), route.app_version()), ("agent", 1));
    assert_eq!(route.runtime_url(), "ws://runtime.example/agent/v1");
    assert_eq!(route.connection_id(), "conn-1");
    assert_eq!(route.called().as_str(), "+918047168000");
    assert_eq!(route.caller().map(|c| c.as_str()), Some("+919876543210"));
    assert!(route.split().is_none());
    let cohort = route.cohort().expect("caller is in the cohort");
    assert_eq!(cohort.user_identifier, "u-1b", "the later row wins");
    assert_eq!(cohort.app_variables["name"], "Asha K");
    let why = route.explanation();
    assert!(
        why.contains("dep-live") && why.contains("agent v1") && why.contains("u-1b"),
        "{why}"
    );

    // National format of a number stored nationally, caller outside the cohort, anonymous caller.
    let other = snapshot.route(monday_noon(), "08047168001", "+14155550100", "x");
    let route = other.accepted().expect("accepted");
    assert_eq!(route.called().as_str(), "+918047168001");
    assert!(
        route.cohort().is_none(),
        "no match = no variables, still routed"
    );
    let anonymous = snapshot.route(
        monday_noon(),
        "+918047168000",
        "sip:anonymous@anonymous.invalid",
        "x",
    );
    let route = anonymous.accepted().expect("anonymous callers are routed");
    assert!(route.caller().is_none() && route.cohort().is_none());
}

#[test]
fn every_reject_reason_maps_to_a_sip_status_and_explains_itself() {
    let snapshot = RoutingSnapshot::build(fixture()).unwrap();
    let saturday = at("2026-03-07T06:30:00Z");
    let cases: Vec<(RouteDecision, RejectReason, u16, Option<u32>, &str)> = vec![
        (
            route(&snapshot, "1-800-FLOWERS"),
            RejectReason::InvalidCalledNumber,
            404,
            None,
            "not a phone number",
        ),
        (
            route(&snapshot, "+14155550100"),
            RejectReason::NoRoute,
            404,
            None,
            "no deployment has +14155550100",
        ),
        (
            route(&snapshot, "+918047168007"),
            RejectReason::InboundDisabled,
            403,
            None,
            "outbound-only",
        ),
        (
            route(&snapshot, "+918047168002"),
            RejectReason::Paused,
            480,
            None,
            "dep-paused",
        ),
        (
            snapshot.route(saturday, "+918047168003", "", "c"),
            RejectReason::OutsideSchedule,
            480,
            // Saturday 12:00 local -> Monday 09:00 local = 45 h.
            Some(45 * 3600),
            "09:00-18:00 Mon,Tue,Wed,Thu,Fri Asia/Kolkata",
        ),
        (
            route(&snapshot, "+918047168004"),
            RejectReason::RuntimeMissing,
            503,
            None,
            "agent v9",
        ),
        (
            route(&snapshot, "+918047168005"),
            RejectReason::RuntimeNotReady,
            503,
            Some(switchboard_routing::RUNTIME_PROVISIONING_RETRY_AFTER_SECS),
            "still provisioning",
        ),
        (
            route(&snapshot, "+918047168006"),
            RejectReason::RuntimeNotReady,
            503,
            None,
            "in error",
        ),
    ];
    let mut seen = std::collections::HashSet::new();
    for (decision, reason, status, retry_after, phrase) in cases {
        let reject = decision
            .rejected()
            .unwrap_or_else(|| panic!("{reason} expected, got {decision:?}"));
        assert_eq!(reject.reason(), reason);
        assert_eq!(reject.sip_status(), status, "{reason}");
        assert_eq!(reject.reason().sip_status(), status);
        assert_eq!(reject.retry_after(), retry_after, "{reason}");
        let why = reject.explanation();
        assert!(why.contains(phrase), "{reason}: {why}");
        seen.insert(reason);
    }
    assert_eq!(seen.len(), RejectReason::ALL.len(), "a test per reason");
    assert_eq!(RejectReason::RuntimeNotReady.retry_after(), Some(30));
    assert_eq!(
        RejectReason::Paused.sip_reason_phrase(),
        "Temporarily Unavailable"
    );
    // Inside hours the office line routes.
    assert!(route(&snapshot, "+918047168003").accepted().is_some());
}

#[test]
fn split_overrides_app_version_and_hits_configured_proportions() {
    let mut data = fixture();
    data.app_versions
        .push((scope(), app_version("agent", 4, RuntimeStatus::Ready)));
    data.splits
        .push((scope(), split("agent", &[(1, 70.0), (4, 30.0)])));
    let snapshot = RoutingSnapshot::build(data.clone()).unwrap();
    let again = RoutingSnapshot::build(data).unwrap();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for i in 0..10_000 {
        let call_id = format!("{i:08x}-4c1d-9f7e@pbx.carrier.example");
        let decision = snapshot.route(monday_noon(), "+918047168000", "", &call_id);
        let route = decision.accepted().expect("both branches ready");
        let split = route.split().expect("a split chose the version");
        assert!(split.redrawn_from.is_none());
        *counts.entry(route.app_version()).or_default() += 1;
        // Deterministic: same Call-ID, same version, in an independently built snapshot too.
        assert_eq!(
            again.route(monday_noon(), "+918047168000", "", &call_id),
            decision
        );
    }
    let v1 = f64::from(counts[&1]) / 10_000.0;
    let v4 = f64::from(counts[&4]) / 10_000.0;
    assert!((v1 - 0.70).abs() <= 0.02, "v1 got {v1}");
    assert!((v4 - 0.30).abs() <= 0.02, "v4 got {v4}");
    // dep-missing pins v9, but the split on its app decides: it routes too.
    assert!(route(&snapshot, "+918047168004").accepted().is_some());
    let why = route(&snapshot, "+918047168000").explanation();
    assert!(why.contains("split: bucket"), "{why}");
}

#[test]
fn three_way_split_proportions() {
    let mut data = fixture();
    data.app_versions
        .push((scope(), app_version("agent", 4, RuntimeStatus::Ready)));
    data.app_versions
        .push((scope(), app_version("agent", 5, RuntimeStatus::Ready)));
    data.splits
        .push((scope(), split("agent", &[(1, 50.0), (4, 33.3), (5, 16.7)])));
    let snapshot = RoutingSnapshot::build(data).unwrap();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for i in 0..10_000u32 {
        let call_id = format!("{}@10.1.2.3", i.wrapping_mul(2_654_435_761));
        let version = snapshot
            .route(monday_noon(), "+918047168000", "", &call_id)
            .accepted()
            .unwrap()
            .app_version();
        *counts.entry(version).or_default() += 1;
    }
    for (version, want) in [(1, 0.50), (4, 0.333), (5, 0.167)] {
        let got = f64::from(counts[&version]) / 10_000.0;
        assert!((got - want).abs() <= 0.02, "v{version}: {got} vs {want}");
    }
}

#[test]
fn split_branch_not_ready_is_redrawn_among_ready_ones() {
    let mut data = fixture();
    // v2 is provisioning: its 40 % goes to v1 (ready), never to a caller's failed call.
    data.splits
        .push((scope(), split("agent", &[(1, 60.0), (2, 40.0)])));
    let snapshot = RoutingSnapshot::build(data).unwrap();
    let mut redrawn = 0;
    for i in 0..2_000 {
        let decision = snapshot.route(monday_noon(), "+918047168000", "", &format!("c-{i}"));
        let route = decision.accepted().expect("a ready branch exists");
        assert_eq!(route.app_version(), 1);
        if let Some(from) = route.split().and_then(|s| s.redrawn_from) {
            assert_eq!(from, 2);
            redrawn += 1;
        }
    }
    assert!(
        (600..=1000).contains(&redrawn),
        "about 40 % were drawn to v2: {redrawn}"
    );
    let why = (0..100)
        .map(|i| snapshot.route(monday_noon(), "+918047168000", "", &format!("c-{i}")))
        .find(|d| {
            d.accepted()
                .and_then(|r| r.split())
                .is_some_and(|s| s.redrawn_from.is_some())
        })
        .map(|d| d.explanation())
        .unwrap_or_default();
    assert!(why.contains("not ready; redrawn"), "{why}");

    // No branch ready: the drawn branch's problem is reported.
    let mut data = fixture();
    data.splits
        .push((scope(), split("agent", &[(2, 50.0), (3, 25.0), (8, 25.0)])));
    let snapshot = RoutingSnapshot::build(data).unwrap();
    let mut reasons = std::collections::HashSet::new();
    for i in 0..200 {
        let decision = snapshot.route(monday_noon(), "+918047168000", "", &format!("c-{i}"));
        reasons.insert(reject_reason(&decision).expect("rejected"));
    }
    assert_eq!(
        reasons,
        [RejectReason::RuntimeNotReady, RejectReason::RuntimeMissing]
            .into_iter()
            .collect(),
        "v2/v3 exist but are not ready, v8 is missing"
    );
}

#[test]
fn duplicate_numbers_are_refused_by_build_and_apply() {
    let mut data = fixture();
    data.deployments.push((
        scope(),
        deployment("dep-dup", "agent", 1, "conn-2", &["+91 80 4716 8000"]),
    ));
    let error = RoutingSnapshot::build(data).unwrap_err();
    assert!(
        matches!(&error, RoutingError::DuplicateNumber { number, deployment_id, owner_deployment_id }
            if number == "+918047168000" && deployment_id == "dep-dup" && owner_deployment_id == "dep-live"),
        "{error}"
    );
    let table = RoutingTable::new(RoutingSnapshot::build(fixture()).unwrap());
    let version = table.load().version();
    let batch = [
        Change::UpsertDeployment(
            scope(),
            deployment("dep-new", "agent", 1, "conn-1", &["+918047169999"]),
        ),
        Change::UpsertDeployment(
            scope(),
            deployment("dep-dup", "agent", 1, "conn-1", &["08047168000"]),
        ),
    ];
    assert!(matches!(
        table.apply(&batch),
        Err(RoutingError::DuplicateNumber { .. })
    ));
    assert_eq!(table.load().version(), version, "all or nothing");
    assert!(reject_reason(&route(&table.load(), "+918047169999")) == Some(RejectReason::NoRoute));
    // Moving a number between deployments in one batch is fine.
    let mut live = deployment("dep-live", "agent", 1, "conn-1", &["+918047168001"]);
    live.name = "moved".into();
    let moved = [
        Change::UpsertDeployment(scope(), live),
        Change::UpsertDeployment(
            scope(),
            deployment("dep-dup", "agent", 1, "conn-1", &["+918047168000"]),
        ),
    ];
    assert_eq!(table.apply(&moved).unwrap(), version + 1);
    assert_eq!(
        route(&table.load(), "+918047168000")
            .accepted()
            .unwrap()
            .deployment_id(),
        "dep-dup"
    );
}

#[test]
fn invalid_records_are_refused_with_structured_errors() {
    let mut data = fixture();
    data.deployments[0].1.inbound_config = Some(InboundConfig {
        end_time: "18:60".into(),
        ..business_hours()
    });
    assert!(matches!(
        RoutingSnapshot::build(data).unwrap_err(),
        RoutingError::InDeployment { deployment_id, source } if deployment_id == "dep-live"
            && matches!(*source, RoutingError::InvalidTime { field: "end_time", .. })
    ));
    let mut data = fixture();
    data.deployments[0].1.connection_configs[0]
        .phone_numbers
        .push("+91 80 CALL NOW".into());
    assert!(matches!(
        RoutingSnapshot::build(data).unwrap_err(),
        RoutingError::InDeployment { .. }
    ));
    let mut data = fixture();
    data.cohort_members.push((
        scope(),
        "dep-gone".into(),
        member("+919876543210", "u", "n"),
    ));
    assert!(matches!(
        RoutingSnapshot::build(data).unwrap_err(),
        RoutingError::UnknownDeployment { .. }
    ));
    let mut data = fixture();
    data.splits.push((scope(), split("agent", &[(1, 60.0)])));
    assert!(matches!(
        RoutingSnapshot::build(data).unwrap_err(),
        RoutingError::SplitTotalNot100 { .. }
    ));
    let data = RoutingData {
        settings: RoutingSettings {
            default_country_code: Some("0".into()),
        },
        ..fixture()
    };
    assert!(matches!(
        RoutingSnapshot::build(data).unwrap_err(),
        RoutingError::InvalidCountryCode { .. }
    ));
}

#[test]
fn trunks_and_source_allowlists() {
    let mut data = fixture();
    data.connections
        .push((scope(), connection("conn-2", &["198.51.100.10/32"])));
    data.deployments.push((
        scope(),
        deployment("dep-2", "agent", 1, "conn-2", &["+442079460958"]),
    ));
    data.deployments.push((
        scope(),
        deployment("dep-3", "agent", 1, "conn-undefined", &["+442079460959"]),
    ));
    let snapshot = RoutingSnapshot::build(data).unwrap();
    assert_eq!(
        snapshot
            .trunk_for_number("+918047168000")
            .map(|c| c.connection_id.as_str()),
        Some("conn-1")
    );
    assert_eq!(
        snapshot
            .trunk_for_number("tel:+44-20-7946-0958")
            .map(|c| c.connection_id.as_str()),
        Some("conn-2")
    );
    assert!(
        snapshot.trunk_for_number("+442079460959").is_none(),
        "connection not defined"
    );
    assert!(snapshot.trunk_for_number("+15555550100").is_none());
    assert!(snapshot.admits_source("203.0.113.77".parse().unwrap()));
    assert!(snapshot.admits_source("198.51.100.10".parse().unwrap()));
    assert!(snapshot.admits_source("::ffff:198.51.100.10".parse().unwrap()));
    assert!(snapshot.admits_source("2001:db8::5060".parse().unwrap()));
    assert!(!snapshot.admits_source("198.51.100.11".parse().unwrap()));
    let without = snapshot
        .apply(&[Change::RemoveConnection(scope(), "conn-2".into())])
        .unwrap();
    assert!(!without.admits_source("198.51.100.10".parse().unwrap()));
    assert!(without.trunk_for_number("+442079460958").is_none());
    assert!(
        route(&without, "+442079460958").accepted().is_some(),
        "routing does not depend on trunk auth"
    );
}

#[test]
fn apply_changes_take_effect() {
    let table = RoutingTable::new(RoutingSnapshot::build(fixture()).unwrap());
    assert_eq!(table.load().version(), 1);
    let mut paused = deployment(
        "dep-live",
        "agent",
        1,
        "conn-1",
        &["+918047168000", "+918047168001"],
    );
    paused.status = DeploymentStatus::Paused;
    assert_eq!(
        table
            .apply(&[Change::UpsertDeployment(scope(), paused)])
            .unwrap(),
        2
    );
    assert_eq!(
        reject_reason(&route(&table.load(), "+918047168000")),
        Some(RejectReason::Paused)
    );
    // The cohort survived the PATCH.
    let resumed = deployment("dep-live", "agent", 1, "conn-1", &["+918047168000"]);
    table
        .apply(&[Change::UpsertDeployment(scope(), resumed)])
        .unwrap();
    let snapshot = table.load();
    assert_eq!(
        route(&snapshot, "+918047168000")
            .accepted()
            .unwrap()
            .cohort()
            .unwrap()
            .user_identifier,
        "u-1b"
    );
    assert_eq!(
        reject_reason(&route(&snapshot, "+918047168001")),
        Some(RejectReason::NoRoute),
        "number dropped"
    );
    drop(snapshot);
    // Runtime becomes ready -> the provisioning deployment routes.
    table
        .apply(&[Change::UpsertAppVersion(
            scope(),
            app_version("agent", 2, RuntimeStatus::Ready),
        )])
        .unwrap();
    assert!(route(&table.load(), "+918047168005").accepted().is_some());
    table
        .apply(&[Change::RemoveAppVersion(scope(), "agent".into(), 2)])
        .unwrap();
    assert_eq!(
        reject_reason(&route(&table.load(), "+918047168005")),
        Some(RejectReason::RuntimeMissing)
    );
    // Cohort upload: new rows win over old ones.
    table
        .apply(&[Change::UpsertCohortMembers(
            scope(),
            "dep-live".into(),
            vec![member("+919876543210", "u-1c", "Asha Kumar")],
        )])
        .unwrap();
    assert_eq!(
        route(&table.load(), "+918047168000")
            .accepted()
            .unwrap()
            .cohort()
            .unwrap()
            .user_identifier,
        "u-1c"
    );
    // Split set and removed.
    table
        .apply(&[Change::SetSplit(scope(), split("agent", &[(1, 100.0)]))])
        .unwrap();
    assert!(route(&table.load(), "+918047168004").accepted().is_some());
    table
        .apply(&[Change::RemoveSplit(scope(), "agent".into())])
        .unwrap();
    assert_eq!(
        reject_reason(&route(&table.load(), "+918047168004")),
        Some(RejectReason::RuntimeMissing)
    );
    // Removal drops numbers and cohort; re-creating starts with an empty cohort.
    table
        .apply(&[Change::RemoveDeployment(scope(), "dep-live".into())])
        .unwrap();
    assert_eq!(
        reject_reason(&route(&table.load(), "+918047168000")),
        Some(RejectReason::NoRoute)
    );
    table
        .apply(&[Change::RemoveDeployment(scope(), "dep-live".into())])
        .unwrap();
    table
        .apply(&[Change::UpsertDeployment(
            scope(),
            deployment("dep-live", "agent", 1, "conn-1", &["+918047168000"]),
        )])
        .unwrap();
    assert!(route(&table.load(), "+918047168000")
        .accepted()
        .unwrap()
        .cohort()
        .is_none());
    assert!(matches!(
        table.apply(&[Change::UpsertCohortMembers(
            scope(),
            "nope".into(),
            vec![member("+919876543210", "u", "n")]
        )]),
        Err(RoutingError::UnknownDeployment { .. })
    ));
}

#[test]
fn readers_see_whole_snapshots_while_a_writer_swaps() {
    // Each snapshot moves both numbers to the same deployment; a reader must never see the two
    // numbers on different deployments (half an update).
    let both = |id: &str| {
        deployment(
            id,
            "agent",
            1,
            "conn-1",
            &["+918047160001", "+918047160002"],
        )
    };
    let mut data = fixture();
    data.deployments.push((scope(), both("dep-a")));
    let table = Arc::new(RoutingTable::new(RoutingSnapshot::build(data).unwrap()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (table, stop) = (Arc::clone(&table), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut checked = 0u64;
            while !stop.load(Ordering::Relaxed) || checked < 1000 {
                let snapshot = table.load();
                let owner = |n: &str| {
                    route(&snapshot, n)
                        .accepted()
                        .map(|r| r.deployment_id().to_string())
                };
                let (first, second) = (owner("+918047160001"), owner("+918047160002"));
                assert!(
                    first.is_some() && first == second,
                    "torn read: {first:?} vs {second:?}"
                );
                checked += 1;
            }
            checked
        })
    };
    for i in 0..200 {
        let (from, to) = if i % 2 == 0 {
            ("dep-a", "dep-b")
        } else {
            ("dep-b", "dep-a")
        };
        table
            .apply(&[
                Change::RemoveDeployment(scope(), from.into()),
                Change::UpsertDeployment(scope(), both(to)),
            ])
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() >= 1000);
    assert_eq!(table.load().version(), 201);
}

// ---------------------------------------------------------------------------------------------
// apply() ≡ build(): random change sequences against a model of the store.

const NUMBERS: [&str; 6] = [
    "+918047168000",
    "080 4716 8000",
    "+918047168001",
    "+442079460958",
    "0091 80 4716 8002",
    "+12125551234",
];
const CALLERS: [&str; 3] = ["+919876543210", "098765 43210", "+14155550100"];

fn scopes() -> [Scope; 2] {
    [Scope::new("acme", "main"), Scope::new("acme", "lab")]
}

fn arb_scope() -> impl Strategy<Value = Scope> {
    (0..2usize).prop_map(|i| scopes()[i].clone())
}

fn arb_deployment() -> impl Strategy<Value = Deployment> {
    (
        0..4usize,
        0..2usize,
        1..4u32,
        proptest::collection::vec(
            (
                0..2usize,
                proptest::sample::subsequence(NUMBERS.to_vec(), 0..3),
            ),
            1..3,
        ),
        any::<bool>(),
        0..6u8,
        0..3u8,
    )
        .prop_map(|(id, app, version, configs, active, schedule, direction)| {
            let mut d = deployment(
                &format!("dep-{id}"),
                &format!("app-{app}"),
                version,
                "conn-0",
                &[],
            );
            d.connection_configs = configs
                .into_iter()
                .map(|(conn, numbers)| ConnectionConfig {
                    connection_id: format!("conn-{conn}"),
                    phone_numbers: numbers.iter().map(|n| n.to_string()).collect(),
                })
                .collect();
            d.status = if active {
                DeploymentStatus::Active
            } else {
                DeploymentStatus::Paused
            };
            d.inbound_config = match schedule {
                0 => Some(business_hours()),
                1 => Some(InboundConfig {
                    start_time: "22:00".into(),
                    end_time: "06:00".into(),
                    ..business_hours()
                }),
                2 => Some(InboundConfig {
                    start_time: "25:00".into(),
                    ..business_hours()
                }),
                _ => None,
            };
            d.channel_direction = match direction {
                0 => ChannelDirection::Outbound,
                1 => ChannelDirection::InboundOutbound,
                _ => ChannelDirection::Inbound,
            };
            d
        })
}

fn arb_change() -> impl Strategy<Value = Change> {
    let status = prop_oneof![
        Just(RuntimeStatus::Ready),
        Just(RuntimeStatus::Provisioning),
        Just(RuntimeStatus::Error)
    ];
    prop_oneof![
        4 => (arb_scope(), arb_deployment()).prop_map(|(s, d)| Change::UpsertDeployment(s, d)),
        1 => (arb_scope(), 0..4usize).prop_map(|(s, i)| Change::RemoveDeployment(s, format!("dep-{i}"))),
        1 => (arb_scope(), 0..2usize, 0..3usize).prop_map(|(s, i, n)| {
            let nets = ["203.0.113.0/24", "198.51.100.0/25", "2001:db8::/32"];
            Change::UpsertConnection(s, connection(&format!("conn-{i}"), &nets[..n]))
        }),
        1 => (arb_scope(), 0..2usize).prop_map(|(s, i)| Change::RemoveConnection(s, format!("conn-{i}"))),
        3 => (arb_scope(), 0..2usize, 1..4u32, status)
            .prop_map(|(s, a, v, st)| Change::UpsertAppVersion(s, app_version(&format!("app-{a}"), v, st))),
        1 => (arb_scope(), 0..2usize, 1..4u32).prop_map(|(s, a, v)| Change::RemoveAppVersion(s, format!("app-{a}"), v)),
        2 => (arb_scope(), 0..2usize, 0..4usize).prop_map(|(s, a, k)| {
            let shapes: [&[(u32, f64)]; 4] = [&[(1, 50.0), (2, 50.0)], &[(2, 10.0), (3, 90.0)], &[(1, 100.0)], &[(1, 50.0), (3, 40.0)]];
            Change::SetSplit(s, split(&format!("app-{a}"), shapes[k]))
        }),
        1 => (arb_scope(), 0..2usize).prop_map(|(s, a)| Change::RemoveSplit(s, format!("app-{a}"))),
        2 => (arb_scope(), 0..4usize, proptest::collection::vec((0..3usize, 0..100u32), 0..4)).prop_map(|(s, i, rows)| {
            let members = rows.into_iter().map(|(c, u)| member(CALLERS[c], &format!("u-{u}"), "n")).collect();
            Change::UpsertCohortMembers(s, format!("dep-{i}"), members)
        }),
    ]
}

/// What the store would hold after the same writes.
#[derive(Clone, Default)]
struct Model {
    deployments: BTreeMap<(Scope, String), Deployment>,
    connections: BTreeMap<(Scope, String), Connection>,
    versions: BTreeMap<(Scope, String, u32), AppVersion>,
    splits: BTreeMap<(Scope, String), TrafficSplit>,
    cohort: Vec<(Scope, String, CohortMember)>,
}

impl Model {
    fn with(&self, change: &Change) -> Model {
        let mut m = self.clone();
        match change.clone() {
            Change::UpsertDeployment(s, d) => {
                m.deployments.insert((s, d.deployment_id.clone()), d);
            }
            Change::RemoveDeployment(s, id) => {
                m.deployments.remove(&(s.clone(), id.clone()));
                m.cohort.retain(|(cs, cd, _)| !(*cs == s && *cd == id));
            }
            Change::UpsertConnection(s, c) => {
                m.connections.insert((s, c.connection_id.clone()), c);
            }
            Change::RemoveConnection(s, id) => {
                m.connections.remove(&(s, id));
            }
            Change::UpsertAppVersion(s, v) => {
                m.versions.insert((s, v.app_id.clone(), v.version), v);
            }
            Change::RemoveAppVersion(s, app, v) => {
                m.versions.remove(&(s, app, v));
            }
            Change::SetSplit(s, t) => {
                m.splits.insert((s, t.app_id.clone()), t);
            }
            Change::RemoveSplit(s, app) => {
                m.splits.remove(&(s, app));
            }
            Change::UpsertCohortMembers(s, id, members) => {
                m.cohort
                    .extend(members.into_iter().map(|mem| (s.clone(), id.clone(), mem)));
            }
        }
        m
    }

    fn data(&self) -> RoutingData {
        RoutingData {
            deployments: self
                .deployments
                .iter()
                .map(|((s, _), d)| (s.clone(), d.clone()))
                .collect(),
            connections: self
                .connections
                .iter()
                .map(|((s, _), c)| (s.clone(), c.clone()))
                .collect(),
            app_versions: self
                .versions
                .iter()
                .map(|((s, _, _), v)| (s.clone(), v.clone()))
                .collect(),
            splits: self
                .splits
                .iter()
                .map(|((s, _), t)| (s.clone(), t.clone()))
                .collect(),
            cohort_members: self.cohort.clone(),
            settings: RoutingSettings {
                default_country_code: Some("91".into()),
            },
        }
    }
}

fn assert_same_behaviour(applied: &RoutingSnapshot, built: &RoutingSnapshot) {
    let times = [
        monday_noon(),
        at("2026-03-07T18:00:00Z"),
        at("2026-03-03T20:00:00Z"),
    ];
    for called in NUMBERS.iter().chain(["+15555550100"].iter()) {
        for caller in CALLERS {
            for now in times {
                for call_id in ["a", "b@x", "c-123"] {
                    assert_eq!(
                        applied.route(now, called, caller, call_id),
                        built.route(now, called, caller, call_id),
                        "route({called}, {caller}, {call_id}, {now})"
                    );
                }
            }
        }
        assert_eq!(
            applied.trunk_for_number(called),
            built.trunk_for_number(called),
            "trunk for {called}"
        );
    }
    for ip in [
        "203.0.113.9",
        "198.51.100.1",
        "198.51.100.200",
        "2001:db8::1",
        "10.0.0.1",
    ] {
        let ip = ip.parse().unwrap();
        assert_eq!(applied.admits_source(ip), built.admits_source(ip), "{ip}");
    }
    assert_eq!(applied.number_count(), built.number_count());
    assert_eq!(applied.deployment_count(), built.deployment_count());
    assert_eq!(applied.cohort_member_count(), built.cohort_member_count());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn apply_is_equivalent_to_a_full_build(changes in proptest::collection::vec(arb_change(), 1..24)) {
        let mut model = Model::default();
        let mut snapshot = RoutingSnapshot::build(model.data()).unwrap();
        for change in &changes {
            let next_model = model.with(change);
            let applied = snapshot.apply(std::slice::from_ref(change));
            let built = RoutingSnapshot::build(next_model.data());
            prop_assert_eq!(applied.is_ok(), built.is_ok(), "{:?}: apply {:?} vs build {:?}", change, applied.as_ref().err(), built.as_ref().err());
            if let (Ok(applied), Ok(built)) = (applied, built) {
                assert_same_behaviour(&applied, &built);
                snapshot = applied;
                model = next_model;
            }
        }
    }
}
