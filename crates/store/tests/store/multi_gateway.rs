//! PostgreSQL only: two `Store` instances (two gateways) on one database.

use std::time::Duration;

use switchboard_store::{ChangeNotice, RecordKind, Store, LISTENER_APPLICATION_NAME};
use tokio::sync::broadcast;

use crate::support::{admin_execute, deployment, member, scope, TestDb};
use crate::NOTICE_BOUND;

/// Bound on the listener noticing a killed connection, reconnecting (backoff from 100 ms) and
/// replaying the change log. Generous: it only turns a hang into a failure.
const RECONNECT_BOUND: Duration = Duration::from_secs(15);

async fn next_notice(
    notices: &mut broadcast::Receiver<ChangeNotice>,
    bound: Duration,
) -> anyhow::Result<ChangeNotice> {
    Ok(tokio::time::timeout(bound, notices.recv()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_reaches_the_other() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await? else {
        return Ok(());
    };
    let (a, b) = (Store::open(&db.url).await?, Store::open(&db.url).await?);
    assert_ne!(a.instance_id(), b.instance_id());
    let mut on_b = b.subscribe();
    let s = scope("org-a");

    let mut d = deployment("dep-1", &["+15550001"]);
    let revision = a.insert_deployment(&s, &d).await?;
    let notice = next_notice(&mut on_b, NOTICE_BOUND).await?;
    assert_eq!(
        notice,
        ChangeNotice {
            revision,
            kind: RecordKind::Deployment,
            scope: s.clone(),
            key: "dep-1".into()
        }
    );
    assert_eq!(
        b.get_deployment(&s, "dep-1").await?,
        Some(d.clone()),
        "committed before the notice"
    );

    d.app_version = 4;
    let revision = a.update_deployment(&s, &d).await?;
    let notice = next_notice(&mut on_b, NOTICE_BOUND).await?;
    assert_eq!(
        (notice.revision, notice.kind),
        (revision, RecordKind::Deployment)
    );
    assert_eq!(
        b.get_deployment(&s, "dep-1").await?.map(|d| d.app_version),
        Some(4)
    );

    let members = vec![member("+911", "u1"), member("+912", "u2")];
    let revision = a.insert_cohort_members(&s, "dep-1", &members).await?;
    let notice = next_notice(&mut on_b, NOTICE_BOUND).await?;
    assert_eq!(
        (notice.revision, notice.kind, notice.key.as_str()),
        (revision, RecordKind::CohortMembers, "dep-1")
    );
    assert_eq!(
        b.cohort_members_at(&notice.scope, &notice.key, notice.revision)
            .await?,
        members
    );

    let revision = a
        .put_app_version(&s, &crate::support::app_version("app-1", 3))
        .await?;
    let notice = next_notice(&mut on_b, NOTICE_BOUND).await?;
    assert_eq!(
        (notice.revision, notice.kind, notice.key.as_str()),
        (revision, RecordKind::AppVersion, "app-1/3")
    );

    let revision = a.delete_deployment(&s, "dep-1").await?;
    let notice = next_notice(&mut on_b, NOTICE_BOUND).await?;
    assert_eq!(
        (notice.revision, notice.kind),
        (revision, RecordKind::Deployment)
    );
    assert_eq!(
        b.get_deployment(&s, "dep-1").await?,
        None,
        "a notice whose record is gone means deleted"
    );

    // A failed write (rolled back) sends nothing: the next notice is the next successful write.
    a.insert_deployment(&s, &deployment("dep-2", &["+15550002"]))
        .await?;
    next_notice(&mut on_b, NOTICE_BOUND).await?;
    assert!(a
        .insert_deployment(&s, &deployment("dep-3", &["+15550002"]))
        .await
        .is_err());
    let revision = a.put_setting("k", "v").await?;
    assert_eq!(
        next_notice(&mut on_b, NOTICE_BOUND).await?.revision,
        revision
    );

    // Notices flow both ways.
    let mut on_a = a.subscribe();
    let revision = b.put_setting("k", "w").await?;
    assert_eq!(
        next_notice(&mut on_a, NOTICE_BOUND).await?.revision,
        revision
    );

    drop((a, b));
    db.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_and_replays_missed_changes() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await? else {
        return Ok(());
    };
    let (a, b) = (Store::open(&db.url).await?, Store::open(&db.url).await?);
    let mut on_b = b.subscribe();
    let s = scope("org-a");

    // Kill every listener connection on this test's database; writes made while B is
    // disconnected must still reach it, from the change log, in order.
    let killed = admin_execute(
        &db.url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = '{LISTENER_APPLICATION_NAME}'"
        ),
    )
    .await?;
    assert_eq!(killed, 2, "one listener per instance");
    let first = a
        .insert_deployment(&s, &deployment("dep-1", &["+15550001"]))
        .await?;
    let second = a.put_setting("k", "v").await?;

    let notice = next_notice(&mut on_b, RECONNECT_BOUND).await?;
    assert_eq!(
        (notice.revision, notice.kind),
        (first, RecordKind::Deployment)
    );
    let notice = next_notice(&mut on_b, RECONNECT_BOUND).await?;
    assert_eq!(
        (notice.revision, notice.kind),
        (second, RecordKind::Setting)
    );

    // And live notifications work again on the new connection.
    let third = a.put_setting("k", "w").await?;
    assert_eq!(
        next_notice(&mut on_b, RECONNECT_BOUND).await?.revision,
        third
    );

    drop((a, b));
    db.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_once_and_agree_on_a_generated_setting(
) -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await? else {
        return Ok(());
    };
    // Both run migrations on an empty database at once: the advisory lock serialises them.
    let (a, b) = tokio::join!(Store::open(&db.url), Store::open(&db.url));
    let (a, b) = (a?, b?);
    assert_eq!(
        (a.schema_version().await?, b.schema_version().await?),
        (2, 2)
    );
    let (from_a, from_b) = tokio::join!(
        a.put_setting_if_absent("admin_api_key", "key-a"),
        b.put_setting_if_absent("admin_api_key", "key-b")
    );
    let (from_a, from_b) = (from_a?, from_b?);
    assert_eq!(from_a, from_b);
    assert!(from_a == "key-a" || from_a == "key-b");
    drop((a, b));
    db.finish().await
}
