//! The typed [`Store`] API over the document layer: each method encodes its domain value,
//! names the record (its [`DocTable`], owner and key) and runs one generic operation from
//! `docs.rs` on whichever backend the store opened. Nothing here knows a SQL dialect.

use std::collections::HashMap;

use switchboard_routing::model::{
    AppVersion, Cohort, CohortMember, Connection, Deployment, Scope, TrafficSplit,
};

use crate::codec::{self, MemberRow};
use crate::db::{query_all, query_int, Db, DbRow, Value};
use crate::docs::{
    self, Decode, DocTable, Owner, Record, APP_VERSIONS, COHORTS, CONNECTIONS, DEPLOYMENTS,
    SETTINGS, TRAFFIC_SPLITS,
};
use crate::{migrations, Access, Change, Dataset, RecordKind, Revision, Store, StoreError};

/// Settings are plain text, not JSON documents.
fn raw_text(_: RecordKind, _: &str, text: &str) -> Result<String, StoreError> {
    Ok(text.to_owned())
}

impl Store {
    /// Reads everything the routing snapshot is built from, in one consistent snapshot.
    /// Call at start (and after a resync); it reads every cohort member, so not per request.
    pub async fn load_all(&self) -> Result<Dataset, StoreError> {
        self.run(Access::Snapshot, |db| Box::pin(load_all(db)))
            .await
    }

    /// The revision of the latest committed write (0 for an empty store).
    pub async fn revision(&self) -> Result<Revision, StoreError> {
        self.run(Access::Read, |db| Box::pin(current_revision(db)))
            .await
    }

    /// The schema version the database is at after `open`'s migrations.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        self.run(Access::Read, |db| Box::pin(migrations::current(db)))
            .await
    }

    // ---- deployments ------------------------------------------------------------------

    /// Stores a new deployment and claims its phone numbers (normalised E.164, as given).
    /// Fails with `AlreadyExists` if the id is taken in this scope, or `NumberTaken` if any
    /// number belongs to another deployment (of any scope: a number rings in one place).
    pub async fn insert_deployment(
        &self,
        scope: &Scope,
        deployment: &Deployment,
    ) -> Result<Revision, StoreError> {
        let id = deployment.deployment_id.clone();
        let doc = codec::encode(RecordKind::Deployment, &id, deployment)?;
        let numbers = codec::distinct_numbers(deployment);
        let record = deployment_record(scope, id);
        let change = Change::new(RecordKind::Deployment, scope.clone(), &record.id);
        self.write_revision(change, move |db, revision| {
            Box::pin(async move {
                docs::insert(db, &DEPLOYMENTS, &record, doc, revision, &numbers).await
            })
        })
        .await
    }

    /// Replaces a deployment (keyed by its `deployment_id`) and its set of numbers; numbers it
    /// no longer lists are released. `NotFound` / `NumberTaken`.
    pub async fn update_deployment(
        &self,
        scope: &Scope,
        deployment: &Deployment,
    ) -> Result<Revision, StoreError> {
        let id = deployment.deployment_id.clone();
        let doc = codec::encode(RecordKind::Deployment, &id, deployment)?;
        let numbers = codec::distinct_numbers(deployment);
        let record = deployment_record(scope, id);
        let change = Change::new(RecordKind::Deployment, scope.clone(), &record.id);
        self.write_revision(change, move |db, _| {
            Box::pin(async move { docs::update(db, &DEPLOYMENTS, &record, doc, &numbers).await })
        })
        .await
    }

    /// Deletes a deployment with its numbers, cohorts and cohort members. `NotFound`.
    pub async fn delete_deployment(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Revision, StoreError> {
        let key = one(deployment_id);
        self.delete_doc(&DEPLOYMENTS, scoped(scope), key, deployment_id)
            .await
    }

    pub async fn get_deployment(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        let key = one(deployment_id);
        self.get_doc(&DEPLOYMENTS, scoped(scope), key, codec::decode)
            .await
    }

    /// One page of the scope's deployments in creation order, and the scope's total count.
    pub async fn list_deployments(
        &self,
        scope: &Scope,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Deployment>, u64), StoreError> {
        let page = (
            codec::to_i64("limit", limit)?,
            codec::to_i64("offset", offset)?,
        );
        let owner = scoped(scope);
        // One snapshot: the count and the page agree.
        self.run(Access::Snapshot, move |db| {
            Box::pin(async move {
                let total = docs::count(db, &DEPLOYMENTS, &owner, &[]).await?;
                let decode: Decode<Deployment> = codec::decode;
                let deployments =
                    docs::list(db, &DEPLOYMENTS, &owner, &[], Some(page), decode).await?;
                Ok((deployments, codec::to_u64("deployment count", total)?))
            })
        })
        .await
    }

    /// The deployment owning `phone_number` (normalised E.164), with its scope.
    pub async fn number_owner(
        &self,
        phone_number: &str,
    ) -> Result<Option<(Scope, String)>, StoreError> {
        let number = phone_number.to_owned();
        self.run(Access::Read, move |db| {
            Box::pin(async move { docs::claim_owner(db, &DEPLOYMENTS, &number).await })
        })
        .await
    }

    // ---- connections ------------------------------------------------------------------

    /// Inserts or replaces a connection (trunk).
    pub async fn put_connection(
        &self,
        scope: &Scope,
        connection: &Connection,
    ) -> Result<Revision, StoreError> {
        let id = &connection.connection_id;
        let doc = codec::encode(RecordKind::Connection, id, connection)?;
        let key = one(id.as_str());
        self.put_doc(&CONNECTIONS, scoped(scope), key, id, doc)
            .await
    }

    pub async fn get_connection(
        &self,
        scope: &Scope,
        connection_id: &str,
    ) -> Result<Option<Connection>, StoreError> {
        let key = one(connection_id);
        self.get_doc(&CONNECTIONS, scoped(scope), key, codec::decode)
            .await
    }

    /// The scope's connections ordered by id.
    pub async fn list_connections(&self, scope: &Scope) -> Result<Vec<Connection>, StoreError> {
        self.list_docs(&CONNECTIONS, scoped(scope), Vec::new(), codec::decode)
            .await
    }

    /// `NotFound` if absent. Deployments naming the connection are not checked here (the
    /// admin API decides whether that is allowed).
    pub async fn delete_connection(
        &self,
        scope: &Scope,
        connection_id: &str,
    ) -> Result<Revision, StoreError> {
        let key = one(connection_id);
        self.delete_doc(&CONNECTIONS, scoped(scope), key, connection_id)
            .await
    }

    // ---- app versions -----------------------------------------------------------------

    /// Inserts or replaces one version of an app (its runtime url and status).
    pub async fn put_app_version(
        &self,
        scope: &Scope,
        version: &AppVersion,
    ) -> Result<Revision, StoreError> {
        let id = codec::app_version_key(&version.app_id, version.version);
        let doc = codec::encode(RecordKind::AppVersion, &id, version)?;
        let key = app_version_key(&version.app_id, version.version);
        self.put_doc(&APP_VERSIONS, scoped(scope), key, &id, doc)
            .await
    }

    pub async fn get_app_version(
        &self,
        scope: &Scope,
        app_id: &str,
        version: u32,
    ) -> Result<Option<AppVersion>, StoreError> {
        let key = app_version_key(app_id, version);
        self.get_doc(&APP_VERSIONS, scoped(scope), key, codec::decode)
            .await
    }

    /// The app's versions in ascending version order.
    pub async fn list_app_versions(
        &self,
        scope: &Scope,
        app_id: &str,
    ) -> Result<Vec<AppVersion>, StoreError> {
        let prefix = one(app_id);
        self.list_docs(&APP_VERSIONS, scoped(scope), prefix, codec::decode)
            .await
    }

    /// `NotFound` if absent.
    pub async fn delete_app_version(
        &self,
        scope: &Scope,
        app_id: &str,
        version: u32,
    ) -> Result<Revision, StoreError> {
        let id = codec::app_version_key(app_id, version);
        let key = app_version_key(app_id, version);
        self.delete_doc(&APP_VERSIONS, scoped(scope), key, &id)
            .await
    }

    // ---- traffic splits ---------------------------------------------------------------

    /// Inserts or replaces the app's split (validation of the percentages is the caller's).
    pub async fn put_traffic_split(
        &self,
        scope: &Scope,
        split: &TrafficSplit,
    ) -> Result<Revision, StoreError> {
        let id = &split.app_id;
        let doc = codec::encode(RecordKind::TrafficSplit, id, split)?;
        let key = one(id.as_str());
        self.put_doc(&TRAFFIC_SPLITS, scoped(scope), key, id, doc)
            .await
    }

    pub async fn get_traffic_split(
        &self,
        scope: &Scope,
        app_id: &str,
    ) -> Result<Option<TrafficSplit>, StoreError> {
        let key = one(app_id);
        self.get_doc(&TRAFFIC_SPLITS, scoped(scope), key, codec::decode)
            .await
    }

    /// The scope's splits ordered by app id.
    pub async fn list_traffic_splits(
        &self,
        scope: &Scope,
    ) -> Result<Vec<TrafficSplit>, StoreError> {
        let owner = scoped(scope);
        self.list_docs(&TRAFFIC_SPLITS, owner, Vec::new(), codec::decode)
            .await
    }

    /// `NotFound` if absent.
    pub async fn delete_traffic_split(
        &self,
        scope: &Scope,
        app_id: &str,
    ) -> Result<Revision, StoreError> {
        let key = one(app_id);
        self.delete_doc(&TRAFFIC_SPLITS, scoped(scope), key, app_id)
            .await
    }

    // ---- cohorts ----------------------------------------------------------------------

    /// Inserts or replaces a cohort's metadata (status, result, rejections). Call when an
    /// upload starts (`processing`) and again when it ends. `NotFound` if the deployment is
    /// missing.
    pub async fn put_cohort(&self, scope: &Scope, cohort: &Cohort) -> Result<Revision, StoreError> {
        let id = codec::cohort_key(&cohort.deployment_id, &cohort.cohort_id);
        let doc = codec::encode(RecordKind::Cohort, &id, cohort)?;
        let owner = Owner::Deployment(scope.clone(), cohort.deployment_id.clone());
        let key = one(cohort.cohort_id.as_str());
        self.put_doc(&COHORTS, owner, key, &id, doc).await
    }

    pub async fn get_cohort(
        &self,
        scope: &Scope,
        deployment_id: &str,
        cohort_id: &str,
    ) -> Result<Option<Cohort>, StoreError> {
        let owner = Owner::Deployment(scope.clone(), deployment_id.to_owned());
        self.get_doc(&COHORTS, owner, one(cohort_id), codec::decode)
            .await
    }

    /// The deployment's cohorts ordered by `sequence`.
    pub async fn list_cohorts(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<Vec<Cohort>, StoreError> {
        let owner = Owner::Deployment(scope.clone(), deployment_id.to_owned());
        let mut cohorts: Vec<Cohort> = self
            .list_docs(&COHORTS, owner, Vec::new(), codec::decode)
            .await?;
        cohorts.sort_by_key(|cohort| cohort.sequence);
        Ok(cohorts)
    }

    /// Upserts members into the deployment: for a phone number already present, the new row
    /// replaces the old one (the latest cohort wins); within one call the last row for a number
    /// wins. One transaction per call: callers stream an upload in batches of ~10k rows (one
    /// commit per batch keeps a million rows to a hundred fsyncs). `NotFound` if the deployment
    /// is missing.
    pub async fn insert_cohort_members(
        &self,
        scope: &Scope,
        deployment_id: &str,
        members: &[CohortMember],
    ) -> Result<Revision, StoreError> {
        let rows = members
            .iter()
            .map(|member| MemberRow::encode(deployment_id, member))
            .collect::<Result<Vec<_>, _>>()?;
        let (owned_scope, id) = (scope.clone(), deployment_id.to_owned());
        let change = Change::new(RecordKind::CohortMembers, scope.clone(), deployment_id);
        self.write_revision(change, move |db, revision| {
            Box::pin(async move {
                let dep_key = docs::require_deployment(db, &owned_scope, &id).await?;
                db.upsert_members(dep_key, revision, &rows).await
            })
        })
        .await
    }

    /// The members last written by the write at `revision` (a [`RecordKind::CohortMembers`]
    /// notice's): what another gateway applies on such a notice.
    pub async fn cohort_members_at(
        &self,
        scope: &Scope,
        deployment_id: &str,
        revision: Revision,
    ) -> Result<Vec<CohortMember>, StoreError> {
        const SQL: &str = members_of_deployment!("AND m.revision = ? ORDER BY m.phone_number");
        self.select_members(SQL, scope, deployment_id, Value::Int(revision))
            .await
    }

    pub async fn get_cohort_member(
        &self,
        scope: &Scope,
        deployment_id: &str,
        phone_number: &str,
    ) -> Result<Option<CohortMember>, StoreError> {
        const SQL: &str = members_of_deployment!("AND m.phone_key = ?");
        let Some(key) = codec::phone_key(phone_number) else {
            return Ok(None); // never stored: inserts reject such numbers
        };
        let mut members = self
            .select_members(SQL, scope, deployment_id, Value::Int(key))
            .await?;
        Ok(members.pop())
    }

    /// How many members the deployment has (0 for a missing deployment).
    pub async fn count_cohort_members(
        &self,
        scope: &Scope,
        deployment_id: &str,
    ) -> Result<u64, StoreError> {
        let params = deployment_params(scope, deployment_id);
        let count = self
            .run(Access::Read, move |db| {
                Box::pin(async move {
                    let sql = "SELECT COUNT(*) FROM cohort_members m \
                         JOIN deployments d ON d.dep_key = m.dep_key \
                         WHERE d.org_id = ? AND d.workspace_id = ? AND d.deployment_id = ?";
                    query_int(db, "count cohort members", sql, &params).await
                })
            })
            .await?;
        codec::to_u64("cohort member count", count)
    }

    // ---- settings ---------------------------------------------------------------------

    pub async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.get_doc(&SETTINGS, Owner::Global, one(key), raw_text)
            .await
    }

    /// Inserts or replaces a global setting.
    pub async fn put_setting(&self, key: &str, value: &str) -> Result<Revision, StoreError> {
        let doc = value.to_owned();
        self.put_doc(&SETTINGS, Owner::Global, one(key), key, doc)
            .await
    }

    /// Stores `value` unless the key already has one, and returns the value in effect. Lets
    /// two gateways starting at once agree on one generated admin key. Counts as a write (a
    /// revision and a notice) even when the key existed: it is called once per start.
    pub async fn put_setting_if_absent(
        &self,
        key: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        let (owned_key, doc) = (key.to_owned(), value.to_owned());
        let change = Change::new(RecordKind::Setting, Owner::Global.scope(), key);
        let (_, effective) = self
            .write(change, move |db, _| {
                Box::pin(async move {
                    let key = [Value::Text(owned_key)];
                    docs::put_if_absent(db, &SETTINGS, &Owner::Global, &key, doc).await
                })
            })
            .await?;
        Ok(effective)
    }

    // ---- shared shapes ----------------------------------------------------------------

    /// Inserts or replaces one record as a whole change.
    async fn put_doc(
        &self,
        table: &'static DocTable,
        owner: Owner,
        key: Vec<Value>,
        id: &str,
        doc: String,
    ) -> Result<Revision, StoreError> {
        let change = Change::new(table.kind, owner.scope(), id);
        self.write_revision(change, move |db, _| {
            Box::pin(async move { docs::put(db, table, &owner, &key, doc).await })
        })
        .await
    }

    /// Deletes one record as a whole change; `NotFound` (as `id`) if absent.
    async fn delete_doc(
        &self,
        table: &'static DocTable,
        owner: Owner,
        key: Vec<Value>,
        id: &str,
    ) -> Result<Revision, StoreError> {
        let change = Change::new(table.kind, owner.scope(), id);
        let record = Record {
            owner,
            key,
            id: id.to_owned(),
        };
        self.write_revision(change, move |db, _| {
            Box::pin(async move { docs::delete(db, table, &record).await })
        })
        .await
    }

    async fn get_doc<T: Send + 'static>(
        &self,
        table: &'static DocTable,
        owner: Owner,
        key: Vec<Value>,
        decode: Decode<T>,
    ) -> Result<Option<T>, StoreError> {
        self.run(Access::Read, move |db| {
            Box::pin(async move { docs::get(db, table, &owner, &key, decode).await })
        })
        .await
    }

    async fn list_docs<T: Send + 'static>(
        &self,
        table: &'static DocTable,
        owner: Owner,
        prefix: Vec<Value>,
        decode: Decode<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.run(Access::Read, move |db| {
            Box::pin(async move { docs::list(db, table, &owner, &prefix, None, decode).await })
        })
        .await
    }

    /// The members `sql` (a [`members_of_deployment!`]) selects with `filter` as its last
    /// parameter.
    async fn select_members(
        &self,
        sql: &'static str,
        scope: &Scope,
        deployment_id: &str,
        filter: Value,
    ) -> Result<Vec<CohortMember>, StoreError> {
        let mut params = deployment_params(scope, deployment_id);
        params.push(filter);
        self.run(Access::Read, move |db| {
            Box::pin(async move {
                query_all(db, "select cohort members", sql, &params, |row| {
                    member_from_row(row, 0)
                })
                .await
            })
        })
        .await
    }
}

/// The members of one deployment (by scope and id) as four columns, narrowed by `$filter`.
macro_rules! members_of_deployment {
    ($filter:literal) => {
        concat!(
            "SELECT m.phone_number, m.user_identifier, m.app_variables, m.app_overrides \
             FROM cohort_members m JOIN deployments d ON d.dep_key = m.dep_key \
             WHERE d.org_id = ? AND d.workspace_id = ? AND d.deployment_id = ? ",
            $filter
        )
    };
}
use members_of_deployment;

/// The owner of a scope's records.
fn scoped(scope: &Scope) -> Owner {
    Owner::Scope(scope.clone())
}

/// The key of a record keyed by one text column.
fn one(id: &str) -> Vec<Value> {
    vec![Value::from(id)]
}

fn deployment_record(scope: &Scope, deployment_id: String) -> Record {
    Record {
        owner: scoped(scope),
        key: vec![Value::from(deployment_id.as_str())],
        id: deployment_id,
    }
}

fn app_version_key(app_id: &str, version: u32) -> Vec<Value> {
    vec![Value::from(app_id), Value::Int(i64::from(version))]
}

fn deployment_params(scope: &Scope, deployment_id: &str) -> Vec<Value> {
    vec![
        Value::from(scope.org_id.as_str()),
        Value::from(scope.workspace_id.as_str()),
        Value::from(deployment_id),
    ]
}

/// A member from four columns starting at `first`: phone, user id, variables, overrides.
fn member_from_row(row: &dyn DbRow, first: usize) -> Result<CohortMember, StoreError> {
    codec::decode_member(
        row.text(first)?,
        row.text(first + 1)?,
        row.text(first + 2)?,
        row.text(first + 3)?,
    )
}

fn without_row_id<T>((_, scope, doc): (i64, Scope, T)) -> (Scope, T) {
    (scope, doc)
}

async fn current_revision(db: &mut dyn Db) -> Result<Revision, StoreError> {
    let sql = "SELECT value FROM revision_counter WHERE id = 1";
    query_int(db, "read revision", sql, &[]).await
}

/// Everything, read inside the caller's snapshot.
async fn load_all(db: &mut dyn Db) -> Result<Dataset, StoreError> {
    let revision = current_revision(db).await?;
    let mut dataset = Dataset {
        revision,
        ..Dataset::default()
    };
    let deployments = docs::load(db, &DEPLOYMENTS, codec::decode::<Deployment>).await?;
    let mut by_key: HashMap<i64, (Scope, String)> = HashMap::with_capacity(deployments.len());
    for (dep_key, scope, deployment) in deployments {
        by_key.insert(dep_key, (scope.clone(), deployment.deployment_id.clone()));
        dataset.deployments.push((scope, deployment));
    }
    dataset.connections = docs::load(db, &CONNECTIONS, codec::decode)
        .await?
        .into_iter()
        .map(without_row_id)
        .collect();
    dataset.app_versions = docs::load(db, &APP_VERSIONS, codec::decode)
        .await?
        .into_iter()
        .map(without_row_id)
        .collect();
    dataset.splits = docs::load(db, &TRAFFIC_SPLITS, codec::decode)
        .await?
        .into_iter()
        .map(without_row_id)
        .collect();

    // Sized up front: growing a Vec of a million members by doubling copies it ~20 times.
    // PostgreSQL's planner estimate spares the exact COUNT's scan of the table.
    let estimate_sql = match db.backend() {
        crate::BackendKind::Sqlite => "SELECT COUNT(*) FROM cohort_members",
        crate::BackendKind::Postgres => {
            "SELECT GREATEST(reltuples, 0)::BIGINT FROM pg_class \
             WHERE oid = 'cohort_members'::regclass"
        }
    };
    let estimate = query_int(db, "estimate cohort members", estimate_sql, &[]).await?;
    let members = &mut dataset.cohort_members;
    members.reserve(usize::try_from(estimate).unwrap_or(0));
    let sql = "SELECT dep_key, phone_number, user_identifier, app_variables, app_overrides \
               FROM cohort_members";
    db.query("load cohort members", sql, &[], &mut |row| {
        let Some((scope, deployment_id)) = by_key.get(&row.int(0)?) else {
            return Ok(()); // unreachable with the write-time checks; never fail start-up over it
        };
        members.push((
            scope.clone(),
            deployment_id.clone(),
            member_from_row(row, 1)?,
        ));
        Ok(())
    })
    .await?;
    Ok(dataset)
}
