//! The backend-independent suite: every function takes the url of a fresh, empty database and
//! is run once per backend by `backend_suite!` in main.rs.

use std::collections::{BTreeMap, HashSet};

use anyhow::ensure;
use switchboard_routing::model::{
    Cohort, CohortRejection, CohortResult, CohortStatus, DeploymentStatus, TrafficSplit,
};
use switchboard_store::{RecordKind, Store, StoreError};
use tokio::sync::broadcast::error::TryRecvError;

use crate::support::{app_version, connection, deployment, execute_sql, member, scope};

pub async fn deployments_round_trip(url: &str) -> anyhow::Result<()> {
    let store = Store::open(url).await?;
    let s = scope("org-a");
    assert_eq!(store.revision().await?, 0);
    assert_eq!(store.list_deployments(&s, 0, 10).await?, (vec![], 0));

    let mut revisions = Vec::new();
    for index in 0..5 {
        let d = deployment(&format!("dep-{index}"), &[&format!("+1555000000{index}")]);
        revisions.push(store.insert_deployment(&s, &d).await?);
    }
    assert!(
        revisions.windows(2).all(|pair| pair[0] < pair[1]),
        "{revisions:?}"
    );
    assert_eq!(store.revision().await?, *revisions.last().unwrap());

    let got = store.get_deployment(&s, "dep-2").await?;
    assert_eq!(got, Some(deployment("dep-2", &["+15550000002"])));
    assert_eq!(
        store.get_deployment(&scope("org-b"), "dep-2").await?,
        None,
        "scopes are isolated"
    );

    let (page, total) = store.list_deployments(&s, 1, 2).await?;
    assert_eq!(total, 5);
    let ids: Vec<_> = page.iter().map(|d| d.deployment_id.as_str()).collect();
    assert_eq!(ids, ["dep-1", "dep-2"], "creation order");
    let (tail, _) = store.list_deployments(&s, 4, 10).await?;
    assert_eq!(tail.len(), 1);

    let mut changed = deployment("dep-2", &["+15550000002"]);
    changed.app_version = 4;
    changed.status = DeploymentStatus::Paused;
    let update_revision = store.update_deployment(&s, &changed).await?;
    assert!(update_revision > revisions[4]);
    assert_eq!(store.get_deployment(&s, "dep-2").await?, Some(changed));
    let (page, _) = store.list_deployments(&s, 2, 1).await?;
    assert_eq!(
        page[0].deployment_id, "dep-2",
        "an update keeps the creation position"
    );

    let err = store
        .insert_deployment(&s, &deployment("dep-2", &["+15559999999"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { kind: RecordKind::Deployment, id } if id == "dep-2"),
        "{err}"
    );
    assert_eq!(
        store.number_owner("+15559999999").await?,
        None,
        "a failed insert claims nothing"
    );

    store.delete_deployment(&s, "dep-2").await?;
    assert_eq!(store.get_deployment(&s, "dep-2").await?, None);
    assert_eq!(store.list_deployments(&s, 0, 10).await?.1, 4);
    for err in [
        store.delete_deployment(&s, "dep-2").await.unwrap_err(),
        store
            .update_deployment(&s, &deployment("dep-2", &[]))
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(&err, StoreError::NotFound { kind: RecordKind::Deployment, id } if id == "dep-2"),
            "{err}"
        );
    }
    Ok(())
}

pub async fn numbers_belong_to_one_deployment(url: &str) -> anyhow::Result<()> {
    let store = Store::open(url).await?;
    let (a, b) = (scope("org-a"), scope("org-b"));
    store
        .insert_deployment(&a, &deployment("dep-a", &["+911111", "+912222"]))
        .await?;
    assert_eq!(
        store.number_owner("+912222").await?,
        Some((a.clone(), "dep-a".to_owned()))
    );

    // Another deployment, even in another org, cannot take a claimed number.
    let before = store.revision().await?;
    let err = store
        .insert_deployment(&b, &deployment("dep-b", &["+913333", "+912222"]))
        .await
        .unwrap_err();
    match &err {
        StoreError::NumberTaken {
            phone_number,
            deployment_id,
        } => {
            assert_eq!(
                (phone_number.as_str(), deployment_id.as_str()),
                ("+912222", "dep-a")
            );
        }
        other => panic!("expected NumberTaken, got {other}"),
    }
    assert_eq!(
        store.get_deployment(&b, "dep-b").await?,
        None,
        "the failed insert rolled back"
    );
    assert_eq!(store.number_owner("+913333").await?, None);
    assert_eq!(
        store.revision().await?,
        before,
        "a failed write does not use a revision"
    );

    // The same number listed twice in one deployment is one claim, not a conflict.
    let mut twice = deployment("dep-b", &["+913333", "+913333"]);
    twice
        .connection_configs
        .push(twice.connection_configs[0].clone());
    store.insert_deployment(&b, &twice).await?;

    // An update that takes a number of another deployment fails and changes nothing.
    let mut grab = deployment("dep-b", &["+913333", "+911111"]);
    grab.name = "grabbing".into();
    let err = store.update_deployment(&b, &grab).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NumberTaken { deployment_id, .. } if deployment_id == "dep-a"),
        "{err}"
    );
    assert_eq!(store.get_deployment(&b, "dep-b").await?, Some(twice));
    assert_eq!(
        store.number_owner("+913333").await?,
        Some((b.clone(), "dep-b".to_owned()))
    );

    // Releasing a number by update lets another deployment claim it.
    store
        .update_deployment(&a, &deployment("dep-a", &["+912222"]))
        .await?;
    assert_eq!(store.number_owner("+911111").await?, None);
    store.update_deployment(&b, &grab).await?;
    assert_eq!(
        store.number_owner("+911111").await?,
        Some((b.clone(), "dep-b".to_owned()))
    );

    // Deleting a deployment releases its numbers.
    store.delete_deployment(&a, "dep-a").await?;
    assert_eq!(store.number_owner("+912222").await?, None);
    store
        .insert_deployment(&a, &deployment("dep-c", &["+912222"]))
        .await?;
    Ok(())
}

pub async fn connections_versions_and_splits(url: &str) -> anyhow::Result<()> {
    let store = Store::open(url).await?;
    let (s, other) = (scope("org-a"), scope("org-b"));

    store.put_connection(&s, &connection("trunk-b")).await?;
    store.put_connection(&s, &connection("trunk-a")).await?;
    let mut replaced = connection("trunk-b");
    replaced.provider = None;
    replaced.allowed_addresses.push("127.0.0.1/32".parse()?);
    store.put_connection(&s, &replaced).await?;
    assert_eq!(
        store.get_connection(&s, "trunk-b").await?,
        Some(replaced.clone())
    );
    assert_eq!(
        store.list_connections(&s).await?,
        vec![connection("trunk-a"), replaced]
    );
    assert_eq!(store.list_connections(&other).await?, vec![]);
    assert_eq!(store.get_connection(&other, "trunk-a").await?, None);
    store.delete_connection(&s, "trunk-a").await?;
    let err = store.delete_connection(&s, "trunk-a").await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                kind: RecordKind::Connection,
                ..
            }
        ),
        "{err}"
    );

    for version in [3, 1, 2] {
        store
            .put_app_version(&s, &app_version("app-1", version))
            .await?;
    }
    store.put_app_version(&s, &app_version("app-2", 1)).await?;
    let mut ready = app_version("app-1", 2);
    ready.status = switchboard_routing::model::RuntimeStatus::Error;
    ready.status_detail = Some("handshake refused".into());
    store.put_app_version(&s, &ready).await?;
    assert_eq!(
        store.get_app_version(&s, "app-1", 2).await?,
        Some(ready.clone())
    );
    assert_eq!(store.get_app_version(&s, "app-1", 9).await?, None);
    let versions: Vec<u32> = store
        .list_app_versions(&s, "app-1")
        .await?
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    store.delete_app_version(&s, "app-1", 3).await?;
    let err = store.delete_app_version(&s, "app-1", 3).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { kind: RecordKind::AppVersion, id } if id == "app-1/3"),
        "{err}"
    );
    assert_eq!(store.list_app_versions(&other, "app-1").await?, vec![]);

    let split = TrafficSplit {
        app_id: "app-1".into(),
        percentages: BTreeMap::from([(1, 12.5), (2, 87.5)]),
    };
    store.put_traffic_split(&s, &split).await?;
    assert_eq!(
        store.get_traffic_split(&s, "app-1").await?,
        Some(split.clone())
    );
    let moved = TrafficSplit {
        app_id: "app-1".into(),
        percentages: BTreeMap::from([(2, 100.0)]),
    };
    store.put_traffic_split(&s, &moved).await?;
    assert_eq!(store.list_traffic_splits(&s).await?, vec![moved]);
    assert_eq!(store.get_traffic_split(&other, "app-1").await?, None);
    store.delete_traffic_split(&s, "app-1").await?;
    assert_eq!(store.get_traffic_split(&s, "app-1").await?, None);
    let err = store.delete_traffic_split(&s, "app-1").await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                kind: RecordKind::TrafficSplit,
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}

fn cohort(id: &str, sequence: u64, status: CohortStatus) -> Cohort {
    Cohort {
        cohort_id: id.to_owned(),
        deployment_id: "dep-1".into(),
        name: format!("cohort {id}"),
        status,
        result: CohortResult {
            total_records: 3,
            valid_records: 2,
            rejected_records: 1,
        },
        rejections: vec![CohortRejection {
            row: 2,
            reason: "invalid phone".into(),
        }],
        sequence,
    }
}

pub async fn latest_cohort_wins(url: &str) -> anyhow::Result<()> {
    let store = Store::open(url).await?;
    let s = scope("org-a");
    store
        .insert_deployment(&s, &deployment("dep-1", &["+15550001"]))
        .await?;

    let err = store
        .put_cohort(&scope("org-b"), &cohort("c1", 1, CohortStatus::Processing))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                kind: RecordKind::Deployment,
                ..
            }
        ),
        "{err}"
    );
    store
        .put_cohort(&s, &cohort("c2", 2, CohortStatus::Processing))
        .await?;
    store
        .put_cohort(&s, &cohort("c1", 1, CohortStatus::Processing))
        .await?;
    store
        .put_cohort(&s, &cohort("c1", 1, CohortStatus::Completed))
        .await?;
    assert_eq!(
        store.get_cohort(&s, "dep-1", "c1").await?,
        Some(cohort("c1", 1, CohortStatus::Completed))
    );
    assert_eq!(store.get_cohort(&s, "dep-1", "c9").await?, None);
    let sequences: Vec<u64> = store
        .list_cohorts(&s, "dep-1")
        .await?
        .iter()
        .map(|c| c.sequence)
        .collect();
    assert_eq!(sequences, [1, 2]);

    let first = store
        .insert_cohort_members(
            &s,
            "dep-1",
            &[
                member("+911", "u1"),
                member("+912", "u2"),
                member("+913", "u3"),
            ],
        )
        .await?;
    let mut plain = member("+912", "u2-new");
    plain.app_variables.clear();
    plain.app_overrides = Default::default();
    // The second upload overlaps +912 and lists +914 twice: the later row wins in both cases.
    let second = store
        .insert_cohort_members(
            &s,
            "dep-1",
            &[plain.clone(), member("+914", "first"), member("+914", "u4")],
        )
        .await?;
    assert!(second > first);

    assert_eq!(store.count_cohort_members(&s, "dep-1").await?, 4);
    assert_eq!(
        store.get_cohort_member(&s, "dep-1", "+912").await?,
        Some(plain.clone())
    );
    assert_eq!(
        store.get_cohort_member(&s, "dep-1", "+911").await?,
        Some(member("+911", "u1"))
    );
    assert_eq!(
        store.get_cohort_member(&s, "dep-1", "+914").await?,
        Some(member("+914", "u4"))
    );
    assert_eq!(
        store
            .get_cohort_member(&scope("org-b"), "dep-1", "+911")
            .await?,
        None
    );

    // What a notice at each revision tells another gateway to apply.
    assert_eq!(
        store.cohort_members_at(&s, "dep-1", second).await?,
        vec![plain, member("+914", "u4")]
    );
    assert_eq!(
        store.cohort_members_at(&s, "dep-1", first).await?,
        vec![member("+911", "u1"), member("+913", "u3")],
        "+912 was overwritten by the later write"
    );

    // Members are keyed by their normalised number; anything else is refused, whole batch.
    let before = store.revision().await?;
    let err = store
        .insert_cohort_members(&s, "dep-1", &[member("+916", "u6"), member("0916", "u7")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::InvalidPhoneNumber { phone_number } if phone_number == "0916"),
        "{err}"
    );
    assert_eq!(store.revision().await?, before);
    assert_eq!(store.get_cohort_member(&s, "dep-1", "+916").await?, None);
    assert_eq!(store.get_cohort_member(&s, "dep-1", "0916").await?, None);

    let err = store
        .insert_cohort_members(&s, "dep-missing", &[member("+915", "u5")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { kind: RecordKind::Deployment, id } if id == "dep-missing"),
        "{err}"
    );
    assert_eq!(store.count_cohort_members(&s, "dep-missing").await?, 0);
    Ok(())
}

pub async fn deleting_a_deployment_removes_its_cohorts(url: &str) -> anyhow::Result<()> {
    let store = Store::open(url).await?;
    let s = scope("org-a");
    store
        .insert_deployment(&s, &deployment("dep-1", &["+15550001"]))
        .await?;
    store
        .insert_deployment(&s, &deployment("dep-2", &["+15550002"]))
        .await?;
    store
        .put_cohort(&s, &cohort("c1", 1, CohortStatus::Completed))
        .await?;
    store
        .insert_cohort_members(&s, "dep-1", &[member("+911", "u1"), member("+912", "u2")])
        .await?;
    store
        .insert_cohort_members(&s, "dep-2", &[member("+911", "other")])
        .await?;

    store.delete_deployment(&s, "dep-1").await?;
    assert_eq!(store.count_cohort_members(&s, "dep-1").await?, 0);
    assert_eq!(store.get_cohort(&s, "dep-1", "c1").await?, None);
    let dataset = store.load_all().await?;
    let remaining: Vec<_> = dataset
        .cohort_members
        .iter()
        .map(|(_, d, m)| (d.as_str(), m.user_identifier.as_str()))
        .collect();
    assert_eq!(remaining, [("dep-2", "other")]);

    // A deployment re-created under the same id starts without the old members.
    store
        .insert_deployment(&s, &deployment("dep-1", &["+15550001"]))
        .await?;
    assert_eq!(store.count_cohort_members(&s, "dep-1").await?, 0);
    Ok(())
}

pub async fn settings_round_trip(url: &str) -> anyhow::Result<()> {
    let store = Store::open(url).await?;
    assert_eq!(store.get_setting("admin_api_key").await?, None);
    store.put_setting("default_country_code", "91").await?;
    store.put_setting("default_country_code", "1").await?;
    assert_eq!(
        store.get_setting("default_country_code").await?.as_deref(),
        Some("1")
    );

    assert_eq!(
        store
            .put_setting_if_absent("admin_api_key", "first")
            .await?,
        "first"
    );
    assert_eq!(
        store
            .put_setting_if_absent("admin_api_key", "second")
            .await?,
        "first",
        "the first value stays"
    );
    assert_eq!(
        store.get_setting("admin_api_key").await?.as_deref(),
        Some("first")
    );
    Ok(())
}

pub async fn load_all_returns_everything(url: &str) -> anyhow::Result<()> {
    let store = Store::open(url).await?;
    let (a, b) = (scope("org-a"), scope("org-b"));
    store
        .insert_deployment(&a, &deployment("dep-1", &["+1001"]))
        .await?;
    store
        .insert_deployment(&b, &deployment("dep-1", &["+1002"]))
        .await?;
    store.put_connection(&a, &connection("trunk-1")).await?;
    store.put_app_version(&b, &app_version("app-1", 7)).await?;
    let split = TrafficSplit {
        app_id: "app-1".into(),
        percentages: BTreeMap::from([(7, 100.0)]),
    };
    store.put_traffic_split(&b, &split).await?;
    let members: Vec<_> = (0..250)
        .map(|i| member(&format!("+4400{i:04}"), &format!("u{i}")))
        .collect();
    store.insert_cohort_members(&b, "dep-1", &members).await?;
    let last = store
        .insert_cohort_members(&a, "dep-1", &[member("+4400", "a-user")])
        .await?;

    let dataset = store.load_all().await?;
    assert_eq!(dataset.revision, last);
    assert_eq!(
        dataset.deployments,
        vec![
            (a.clone(), deployment("dep-1", &["+1001"])),
            (b.clone(), deployment("dep-1", &["+1002"]))
        ]
    );
    assert_eq!(
        dataset.connections,
        vec![(a.clone(), connection("trunk-1"))]
    );
    assert_eq!(
        dataset.app_versions,
        vec![(b.clone(), app_version("app-1", 7))]
    );
    assert_eq!(dataset.splits, vec![(b.clone(), split)]);
    assert_eq!(dataset.cohort_members.len(), 251);
    let loaded: HashSet<_> = dataset
        .cohort_members
        .iter()
        .map(|(s, d, m)| {
            (
                s.org_id.clone(),
                d.clone(),
                m.phone_number.clone(),
                m.user_identifier.clone(),
            )
        })
        .collect();
    assert!(loaded.contains(&(
        "org-a".to_owned(),
        "dep-1".to_owned(),
        "+4400".to_owned(),
        "a-user".to_owned()
    )));
    for member in &members {
        let key = (
            "org-b".to_owned(),
            "dep-1".to_owned(),
            member.phone_number.clone(),
            member.user_identifier.clone(),
        );
        assert!(loaded.contains(&key), "{key:?} missing");
    }
    let sample = dataset
        .cohort_members
        .iter()
        .find(|(_, _, m)| m.phone_number == "+44000007")
        .map(|(_, _, m)| m);
    assert_eq!(sample, Some(&members[7]), "variables and overrides survive");
    Ok(())
}

pub async fn reopen_persists_and_migrations_are_idempotent(url: &str) -> anyhow::Result<()> {
    let s = scope("org-a");
    let written = {
        let store = Store::open(url).await?;
        assert_eq!(store.schema_version().await?, 2);
        store
            .insert_deployment(&s, &deployment("dep-1", &["+1001"]))
            .await?;
        store
            .insert_cohort_members(&s, "dep-1", &[member("+2001", "u1")])
            .await?;
        store.put_setting("k", "v").await?
    };
    for _ in 0..2 {
        let store = Store::open(url).await?;
        assert_eq!(
            store.schema_version().await?,
            2,
            "reopening applies nothing twice"
        );
        assert_eq!(store.revision().await?, written);
        assert_eq!(
            store.get_deployment(&s, "dep-1").await?,
            Some(deployment("dep-1", &["+1001"]))
        );
        assert_eq!(
            store.get_cohort_member(&s, "dep-1", "+2001").await?,
            Some(member("+2001", "u1"))
        );
        assert_eq!(store.get_setting("k").await?.as_deref(), Some("v"));
        let err = store
            .insert_deployment(&s, &deployment("dep-2", &["+1001"]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NumberTaken { .. }),
            "the number index survived: {err}"
        );
    }
    let store = Store::open(url).await?;
    assert_eq!(
        store.put_setting("k", "w").await?,
        written + 1,
        "revisions continue after a reopen"
    );
    Ok(())
}

pub async fn own_writes_are_not_echoed(url: &str) -> anyhow::Result<()> {
    let store = Store::open(url).await?;
    let mut notices = store.subscribe();
    store
        .insert_deployment(&scope("org-a"), &deployment("dep-1", &["+1001"]))
        .await?;
    store.put_setting("k", "v").await?;
    if store.backend_kind() == switchboard_store::BackendKind::Postgres {
        // Writes from another instance do arrive, in order, and only they: the first notice
        // this instance sees is the other's, so its own two writes were not echoed before it.
        let other = Store::open(url).await?;
        let revision = other.put_setting("k", "from-other").await?;
        let notice = tokio::time::timeout(crate::NOTICE_BOUND, notices.recv()).await??;
        assert_eq!(
            (notice.revision, notice.kind, notice.key.as_str()),
            (revision, RecordKind::Setting, "k")
        );
    }
    assert_eq!(notices.try_recv().unwrap_err(), TryRecvError::Empty);
    ensure!(
        store.instance_id().len() == 32,
        "random 128-bit instance id"
    );
    Ok(())
}

pub async fn damaged_databases_fail_cleanly(url: &str) -> anyhow::Result<()> {
    let s = scope("org-a");
    {
        let store = Store::open(url).await?;
        store
            .insert_deployment(&s, &deployment("dep-1", &["+1001"]))
            .await?;
    }
    // A document that no longer decodes is an error naming the record, never a panic.
    execute_sql(url, "UPDATE deployments SET doc = '{\"name\": 1'").await?;
    let store = Store::open(url).await?;
    let err = store.get_deployment(&s, "dep-1").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { kind: RecordKind::Deployment, id, .. } if id == "dep-1"),
        "{err}"
    );
    let err = store.load_all().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    drop(store);

    // A schema written by a newer build is refused rather than misread.
    execute_sql(
        url,
        "INSERT INTO schema_version (version, name) VALUES (99, 'from the future')",
    )
    .await?;
    let err = Store::open(url).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: 2
            }
        ),
        "{err}"
    );
    Ok(())
}

pub async fn outbox_survives_reopen_and_leases_rows(url: &str) -> anyhow::Result<()> {
    use switchboard_store::NewDelivery;
    let delivery = |event_id: &str, next_attempt_ms: i64| NewDelivery {
        event_id: event_id.to_owned(),
        url: "http://127.0.0.1:9/hook".to_owned(),
        secret: "s3cret".to_owned(),
        body: format!(r#"{{"event_id":"{event_id}"}}"#),
        created_ms: 1_000,
        next_attempt_ms,
    };
    let (first, second) = {
        let store = Store::open(url).await?;
        let revision = store.revision().await?;
        let first = store.outbox_enqueue(delivery("ev-1", 5_000)).await?;
        let second = store.outbox_enqueue(delivery("ev-2", 1_000)).await?;
        assert_eq!(
            store.revision().await?,
            revision,
            "outbox writes are not routing changes"
        );
        (first, second)
    };
    // A new process (the store reopened) finds both rows.
    let store = Store::open(url).await?;
    assert_eq!(store.outbox_pending().await?, 2);
    // Only the due row is claimed, and the claim leases it.
    let due = store.outbox_claim_due(2_000, 60_000, 10).await?;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, second);
    assert_eq!(due[0].event_id, "ev-2");
    assert_eq!(due[0].body, r#"{"event_id":"ev-2"}"#);
    assert_eq!(due[0].secret, "s3cret");
    assert!(store.outbox_claim_due(2_000, 60_000, 10).await?.is_empty());
    // A failed attempt reschedules; the attempt count persists.
    store.outbox_reschedule(second, 3, 6_000).await?;
    let due = store.outbox_claim_due(6_000, 70_000, 10).await?;
    let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&first) && ids.contains(&second));
    let retried = due.iter().find(|d| d.id == second).unwrap();
    assert_eq!((retried.attempts, retried.next_attempt_ms), (3, 70_000));
    store.outbox_remove(first).await?;
    store.outbox_remove(second).await?;
    assert_eq!(store.outbox_pending().await?, 0);
    Ok(())
}
