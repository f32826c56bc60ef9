//! Forward-only migrations, tested from every earlier schema version.
//!
//! For each version v in `src/migrations/<dialect>/` a database is built as the build that
//! shipped v left it: its migration files applied in order and recorded, then representative
//! rows written in v's format (JSON documents frozen as that build wrote them, not produced
//! by today's types). The current code then opens it: the data must read back, and writes that
//! use every table must work. A database from a newer build is refused untouched.

use std::collections::BTreeMap;

use anyhow::Context as _;
use switchboard_routing::model::{CohortStatus, DeploymentStatus, MediaEncryption};
use switchboard_store::{NewDelivery, RecordKind, Store, StoreError};

use crate::support::{deployment, execute_sql, member, query_int, scope, TestDb};

/// What the build that created `schema_version` wrote (the same statement in both dialects).
const CREATE_SCHEMA_VERSION: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
)";

/// The revision the seeded rows leave the counter at.
const SEEDED_REVISION: i64 = 7;

/// Representative rows of schema version `version`, in that version's format, valid SQL in
/// both dialects. A new migration must add its rows here: the test fails until it does.
fn seed_rows(version: u32) -> &'static str {
    match version {
        1 => {
            r#"
            UPDATE revision_counter SET value = 7 WHERE id = 1;
            INSERT INTO changes (revision, origin, kind, org_id, workspace_id, key)
                VALUES (7, 'old-build', 'setting', '', '', 'admin_key');
            INSERT INTO deployments (org_id, workspace_id, deployment_id, doc, created_seq) VALUES
                ('org-old', 'ws-1', 'dep-old', '{"deployment_id":"dep-old","name":"deployment dep-old","description":"test","app_id":"app-1","app_version":1,"connection_configs":[{"connection_id":"trunk-1","phone_numbers":["+15550100"]}],"channel_direction":"inbound","status":"active","inbound_config":{"start_time":"09:00","end_time":"18:00","allowed_days":["Monday","Friday"],"timezone":"Asia/Kolkata"},"created_by":"tester","created_at":"2025-01-01T00:00:00Z","updated_by":"tester","updated_at":"2025-01-01T00:00:00Z"}', 1);
            INSERT INTO deployment_numbers (phone_number, dep_key)
                VALUES ('+15550100', (SELECT dep_key FROM deployments WHERE deployment_id = 'dep-old'));
            INSERT INTO connections (org_id, workspace_id, connection_id, doc) VALUES
                ('org-old', 'ws-1', 'trunk-old', '{"connection_id":"trunk-old","allowed_addresses":["203.0.113.0/24"],"digest":null,"provider":"exotel"}');
            INSERT INTO app_versions (org_id, workspace_id, app_id, version, doc) VALUES
                ('org-old', 'ws-1', 'app-old', 1, '{"app_id":"app-old","version":1,"runtime_url":"ws://127.0.0.1:9/app-old/1","dialect":"twilio","status":"provisioning","status_detail":null}');
            INSERT INTO traffic_splits (org_id, workspace_id, app_id, doc) VALUES
                ('org-old', 'ws-1', 'app-old', '{"app_id":"app-old","percentages":{"1":100.0}}');
            INSERT INTO cohorts (dep_key, cohort_id, doc) VALUES
                ((SELECT dep_key FROM deployments WHERE deployment_id = 'dep-old'), 'cohort-old', '{"cohort_id":"cohort-old","deployment_id":"dep-old","name":"old","status":"completed","result":{"total_records":1,"valid_records":1,"rejected_records":0},"rejections":[],"sequence":1}');
            INSERT INTO cohort_members (dep_key, phone_key, phone_number, user_identifier, app_variables, app_overrides, revision) VALUES
                ((SELECT dep_key FROM deployments WHERE deployment_id = 'dep-old'), 919800000001, '+919800000001',
                 'user-old', '{"customer_name":"name of user-old"}', '{"initial_language_name":"hi"}', 6);
            INSERT INTO settings (key, value) VALUES ('admin_key', 'old-secret');
        "#
        }
        2 => {
            r#"
            INSERT INTO webhook_outbox (event_id, url, secret, body, attempts, created_ms, next_attempt_ms)
                VALUES ('ev-old', 'http://127.0.0.1:9/hook', 's3cret', '{"event_id":"ev-old"}', 2, 1000, 2000);
        "#
        }
        other => panic!("no representative rows for schema version {other}: add them to seed_rows"),
    }
}

/// One migration file: `NNNN_name.sql`.
struct MigrationFile {
    version: u32,
    name: String,
    sql: String,
}

/// The dialect's migration files in version order, read from the source tree (so a new file
/// is tested without touching this test).
fn migration_files(dialect: &str) -> anyhow::Result<Vec<MigrationFile>> {
    let dir = format!("{}/src/migrations/{dialect}", env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| dir.clone())? {
        let path = entry?.path();
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(stem) = file_name.strip_suffix(".sql") else {
            continue;
        };
        let (number, name) = stem.split_once('_').context("NNNN_name.sql")?;
        files.push(MigrationFile {
            version: number.parse().with_context(|| file_name.to_owned())?,
            name: name.to_owned(),
            sql: std::fs::read_to_string(&path)?,
        });
    }
    files.sort_by_key(|file| file.version);
    anyhow::ensure!(!files.is_empty(), "no migrations in {dir}");
    Ok(files)
}

/// Builds the database at `url` as the build that shipped `version` left it.
async fn build_at_version(url: &str, files: &[MigrationFile], version: u32) -> anyhow::Result<()> {
    execute_sql(url, CREATE_SCHEMA_VERSION).await?;
    for file in files.iter().filter(|file| file.version <= version) {
        execute_sql(url, &file.sql).await?;
        let record = format!(
            "INSERT INTO schema_version (version, name) VALUES ({}, '{}')",
            file.version, file.name
        );
        execute_sql(url, &record).await?;
    }
    for seeded in 1..=version {
        execute_sql(url, seed_rows(seeded)).await?;
    }
    Ok(())
}

/// Opens a database built at `version` with the current code and checks the old rows and the
/// new code's writes.
async fn upgrade_from(url: &str, files: &[MigrationFile], version: u32) -> anyhow::Result<()> {
    let latest = files.last().map_or(0, |file| file.version);
    build_at_version(url, files, version).await?;
    let store = Store::open(url).await?;
    let s = scope("org-old");
    assert_eq!(store.schema_version().await?, latest, "from v{version}");
    assert_eq!(store.revision().await?, SEEDED_REVISION);

    // Old rows read back.
    let old = deployment("dep-old", &["+15550100"]);
    assert_eq!(
        store.get_deployment(&s, "dep-old").await?,
        Some(old.clone())
    );
    assert_eq!(
        store.number_owner("+15550100").await?,
        Some((s.clone(), "dep-old".to_owned()))
    );
    let trunk = store
        .get_connection(&s, "trunk-old")
        .await?
        .context("old connection")?;
    assert_eq!(trunk.provider.as_deref(), Some("exotel"));
    assert!(
        trunk.media_addresses.is_empty(),
        "fields added later take their defaults"
    );
    assert_eq!(trunk.media_encryption, MediaEncryption::Allow);
    let app = store.get_app_version(&s, "app-old", 1).await?;
    assert_eq!(
        app.map(|a| a.runtime_url).as_deref(),
        Some("ws://127.0.0.1:9/app-old/1")
    );
    let split = store
        .get_traffic_split(&s, "app-old")
        .await?
        .context("old split")?;
    assert_eq!(split.percentages, BTreeMap::from([(1, 100.0)]));
    let cohorts = store.list_cohorts(&s, "dep-old").await?;
    assert_eq!(cohorts.len(), 1);
    assert_eq!(cohorts[0].status, CohortStatus::Completed);
    assert_eq!(
        store
            .get_cohort_member(&s, "dep-old", "+919800000001")
            .await?,
        Some(member("+919800000001", "user-old"))
    );
    assert_eq!(
        store.get_setting("admin_key").await?.as_deref(),
        Some("old-secret")
    );
    let dataset = store.load_all().await?;
    assert_eq!(dataset.revision, SEEDED_REVISION);
    assert_eq!(dataset.deployments, vec![(s.clone(), old)]);
    assert_eq!(
        (
            dataset.connections.len(),
            dataset.app_versions.len(),
            dataset.splits.len()
        ),
        (1, 1, 1)
    );
    assert_eq!(dataset.cohort_members.len(), 1);

    // The current code writes beside them: revisions continue, claims hold, every table takes rows.
    let next = store
        .insert_deployment(&s, &deployment("dep-new", &["+15550200"]))
        .await?;
    assert_eq!(next, SEEDED_REVISION + 1);
    let err = store
        .insert_deployment(&s, &deployment("dep-thief", &["+15550100"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NumberTaken { deployment_id, .. } if deployment_id == "dep-old"),
        "{err}"
    );
    let mut paused = deployment("dep-old", &["+15550100", "+15550101"]);
    paused.status = DeploymentStatus::Paused;
    store.update_deployment(&s, &paused).await?;
    assert_eq!(
        store
            .number_owner("+15550101")
            .await?
            .map(|o| o.1)
            .as_deref(),
        Some("dep-old")
    );
    store
        .insert_cohort_members(&s, "dep-old", &[member("+919800000002", "user-new")])
        .await?;
    assert_eq!(store.count_cohort_members(&s, "dep-old").await?, 2);
    assert_eq!(
        store
            .put_setting_if_absent("admin_key", "new-secret")
            .await?,
        "old-secret"
    );
    if version >= 2 {
        let due = store.outbox_claim_due(5_000, 60_000, 10).await?;
        let old_delivery: Vec<_> = due
            .iter()
            .map(|d| (d.event_id.as_str(), d.attempts))
            .collect();
        assert_eq!(
            old_delivery,
            [("ev-old", 2)],
            "the queued delivery survives the upgrade"
        );
        store.outbox_remove(due[0].id).await?;
    }
    let id = store
        .outbox_enqueue(NewDelivery {
            event_id: "ev-new".into(),
            url: "http://127.0.0.1:9/hook".into(),
            secret: "s".into(),
            body: "{}".into(),
            created_ms: 1,
            next_attempt_ms: 1,
        })
        .await?;
    store.outbox_reschedule(id, 1, 2).await?;
    assert_eq!(store.outbox_pending().await?, 1);
    store.delete_deployment(&s, "dep-old").await?;
    assert_eq!(store.count_cohort_members(&s, "dep-old").await?, 0);
    assert_eq!(store.number_owner("+15550100").await?, None);
    Ok(())
}

/// Every earlier version, each in a fresh database.
async fn upgrades_from_every_version(
    dialect: &str,
    mut fresh: impl AsyncFnMut() -> anyhow::Result<Option<TestDb>>,
) -> anyhow::Result<()> {
    let files = migration_files(dialect)?;
    for file in &files {
        let Some(db) = fresh().await? else {
            return Ok(());
        };
        upgrade_from(&db.url, &files, file.version)
            .await
            .with_context(|| format!("{dialect} upgrade from schema version {}", file.version))?;
        db.finish().await?;
    }
    Ok(())
}

/// A schema one past what this build knows is refused, and left as it was.
async fn newer_schema_is_refused_untouched(dialect: &str, db: TestDb) -> anyhow::Result<()> {
    let files = migration_files(dialect)?;
    let latest = files.last().map_or(0, |file| file.version);
    build_at_version(&db.url, &files, latest).await?;
    let future = format!(
        "INSERT INTO schema_version (version, name) VALUES ({}, 'from_a_newer_build')",
        latest + 1
    );
    execute_sql(&db.url, &future).await?;
    let err = Store::open(&db.url).await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported }
            if found == i64::from(latest + 1) && supported == latest),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&(latest + 1).to_string()) && message.contains(&latest.to_string()),
        "the error names both versions: {message}"
    );
    let versions = query_int(&db.url, "SELECT COUNT(*) FROM schema_version").await?;
    assert_eq!(versions, i64::from(latest) + 1, "nothing was migrated");
    let revision = query_int(&db.url, "SELECT value FROM revision_counter WHERE id = 1").await?;
    assert_eq!(revision, SEEDED_REVISION, "nothing was written");
    db.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrades_from_every_version() -> anyhow::Result<()> {
    upgrades_from_every_version("sqlite", async || TestDb::sqlite().map(Some)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upgrades_from_every_version() -> anyhow::Result<()> {
    upgrades_from_every_version("postgres", TestDb::postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_newer_schema() -> anyhow::Result<()> {
    newer_schema_is_refused_untouched("sqlite", TestDb::sqlite()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_newer_schema() -> anyhow::Result<()> {
    let Some(db) = TestDb::postgres().await? else {
        return Ok(());
    };
    newer_schema_is_refused_untouched("postgres", db).await
}

/// The record kinds the seeds cover (a reminder to extend them with a new kind).
#[test]
fn seeds_cover_every_stored_kind() {
    let seeds: String = (1..=2).map(seed_rows).collect();
    for (kind, table) in [
        (RecordKind::Deployment, "deployments"),
        (RecordKind::Connection, "connections"),
        (RecordKind::AppVersion, "app_versions"),
        (RecordKind::TrafficSplit, "traffic_splits"),
        (RecordKind::Cohort, "cohorts"),
        (RecordKind::CohortMembers, "cohort_members"),
        (RecordKind::Setting, "settings"),
    ] {
        assert!(
            seeds.contains(&format!("INSERT INTO {table} ")),
            "{kind} has no seeded row"
        );
    }
}
