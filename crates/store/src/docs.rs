//! The generic document layer: one [`DocTable`] descriptor per record kind, the SQL of every
//! operation generated from it once (in `?` form, see `db.rs`), and the operations themselves
//! written once against [`Db`].
//!
//! A record is a JSON document (the domain type's serde form) in one column, beside the columns
//! that own it (a scope, a deployment, or nothing for global settings) and key it. Adding a
//! record kind means one descriptor here (plus its migration and typed methods on `Store`),
//! not a set of statements per backend.

use std::sync::OnceLock;

use switchboard_routing::model::Scope;

use crate::db::{placeholder_rows, query_all, query_int, query_opt, Db, DbRow, Value};
use crate::{global_scope, RecordKind, StoreError};

/// Turns a stored document back into its domain type: `codec::decode`, or a copy for raw text.
pub(crate) type Decode<T> = fn(RecordKind, &str, &str) -> Result<T, StoreError>;

/// Who a record belongs to, as the table stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnerKind {
    /// Nobody: one global namespace (settings).
    Global,
    /// A tenant: `org_id` and `workspace_id` columns.
    Scope,
    /// A deployment: a `dep_key` column holding the deployment's row id.
    Deployment,
}

/// The owner of one record, as a caller names it.
#[derive(Debug, Clone)]
pub(crate) enum Owner {
    Global,
    Scope(Scope),
    /// (scope, deployment_id)
    Deployment(Scope, String),
}

impl Owner {
    /// The scope change notices carry.
    pub(crate) fn scope(&self) -> Scope {
        match self {
            Owner::Global => global_scope(),
            Owner::Scope(scope) | Owner::Deployment(scope, _) => scope.clone(),
        }
    }

    /// Parameters of the owner filter ([`OwnerKind::filter`]).
    fn filter_params(&self) -> Vec<Value> {
        match self {
            Owner::Global => Vec::new(),
            Owner::Scope(scope) => scope_params(scope),
            Owner::Deployment(scope, deployment_id) => {
                let mut params = scope_params(scope);
                params.push(Value::from(deployment_id.as_str()));
                params
            }
        }
    }
}

impl OwnerKind {
    /// The columns an insert writes.
    fn columns(self) -> &'static [&'static str] {
        match self {
            OwnerKind::Global => &[],
            OwnerKind::Scope => &["org_id", "workspace_id"],
            OwnerKind::Deployment => &["dep_key"],
        }
    }

    /// The condition selecting an owner's rows (reads resolve a deployment in the same query).
    fn filter(self) -> &'static str {
        match self {
            OwnerKind::Global => "1 = 1",
            OwnerKind::Scope => "org_id = ? AND workspace_id = ?",
            OwnerKind::Deployment => {
                "dep_key = (SELECT dep_key FROM deployments \
                 WHERE org_id = ? AND workspace_id = ? AND deployment_id = ?)"
            }
        }
    }
}

/// Values a record claims for itself alone: a second record claiming one fails the write.
#[derive(Debug)]
pub(crate) struct Claims {
    /// Table whose primary key is the claimed value.
    pub table: &'static str,
    pub value_column: &'static str,
    /// Column holding the claiming record's row id.
    pub owner_column: &'static str,
}

/// Everything the layer needs to know about one record kind's table.
#[derive(Debug)]
pub(crate) struct DocTable {
    pub kind: RecordKind,
    pub table: &'static str,
    pub owner: OwnerKind,
    /// Columns that, with the owner's, identify a record.
    pub key_columns: &'static [&'static str],
    /// How many leading key columns a list fixes (app versions are listed per app).
    pub list_by: usize,
    /// The record's key as SQL over the row: what errors name.
    pub key_sql: &'static str,
    pub doc_column: &'static str,
    /// Order of lists (within one owner).
    pub order: &'static str,
    /// Order of [`load`] (across owners).
    pub load_order: &'static str,
    /// The integer row id that claims and dependent tables refer to.
    pub row_id: Option<&'static str>,
    /// Column set to the creating write's revision, so lists keep creation order on update.
    pub created_seq: Option<&'static str>,
    pub claims: Option<Claims>,
    /// Tables whose rows (keyed by `row_id`) are deleted with a record.
    pub dependents: &'static [&'static str],
    sql: OnceLock<TableSql>,
}

/// The statements of one table, built on first use.
#[derive(Debug)]
struct TableSql {
    get: String,
    list: String,
    list_page: String,
    count: String,
    upsert: String,
    insert_if_absent: String,
    insert_returning_id: String,
    update: String,
    find_row_id: String,
    delete: String,
    load: String,
    release_claims: String,
    claim_owner: String,
}

impl DocTable {
    fn sql(&self) -> &TableSql {
        self.sql.get_or_init(|| self.build_sql())
    }

    fn build_sql(&self) -> TableSql {
        let (table, doc, filter) = (self.table, self.doc_column, self.owner.filter());
        let key_match: String = self
            .key_columns
            .iter()
            .map(|column| format!(" AND {column} = ?"))
            .collect();
        let list_match: String = self.key_columns[..self.list_by]
            .iter()
            .map(|column| format!(" AND {column} = ?"))
            .collect();
        let mut insert_columns: Vec<&str> = self.owner.columns().to_vec();
        insert_columns.extend(self.key_columns);
        let conflict = insert_columns.join(", ");
        insert_columns.push(doc);
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES {}",
            insert_columns.join(", "),
            placeholder_rows(1, insert_columns.len())
        );
        let mut seq_columns = insert_columns.clone();
        seq_columns.extend(self.created_seq);
        let row_id = self.row_id.unwrap_or("0");
        let list = format!(
            "SELECT {}, {doc} FROM {table} WHERE {filter}{list_match} ORDER BY {}",
            self.key_sql, self.order
        );
        let (claims_table, value, owner) = self.claims.as_ref().map_or(("", "", ""), |claims| {
            (claims.table, claims.value_column, claims.owner_column)
        });
        TableSql {
            get: format!(
                "SELECT {}, {doc} FROM {table} WHERE {filter}{key_match}",
                self.key_sql
            ),
            list_page: format!("{list} LIMIT ? OFFSET ?"),
            list,
            count: format!("SELECT COUNT(*) FROM {table} WHERE {filter}{list_match}"),
            upsert: format!(
                "{insert} ON CONFLICT ({conflict}) DO UPDATE SET {doc} = excluded.{doc}"
            ),
            insert_if_absent: format!("{insert} ON CONFLICT ({conflict}) DO NOTHING"),
            insert_returning_id: format!(
                "INSERT INTO {table} ({}) VALUES {} ON CONFLICT ({conflict}) DO NOTHING \
                 RETURNING {row_id}",
                seq_columns.join(", "),
                placeholder_rows(1, seq_columns.len())
            ),
            update: format!(
                "UPDATE {table} SET {doc} = ? WHERE {filter}{key_match} RETURNING {row_id}"
            ),
            find_row_id: format!("SELECT {row_id} FROM {table} WHERE {filter}{key_match}"),
            delete: format!("DELETE FROM {table} WHERE {filter}{key_match}"),
            load: format!(
                "SELECT {row_id}, org_id, workspace_id, {}, {doc} FROM {table} ORDER BY {}",
                self.key_sql, self.load_order
            ),
            release_claims: format!("DELETE FROM {claims_table} WHERE {owner} = ?"),
            claim_owner: format!(
                "SELECT t.org_id, t.workspace_id, t.{} FROM {claims_table} c \
                 JOIN {table} t ON t.{row_id} = c.{owner} WHERE c.{value} = ?",
                self.key_columns.last().copied().unwrap_or(row_id)
            ),
        }
    }

    fn claims(&self) -> Result<&Claims, StoreError> {
        self.claims.as_ref().ok_or(StoreError::TaskFailed {
            reason: format!("{} records claim no values", self.kind),
        })
    }
}

/// A table descriptor; the SQL is built on first use.
#[allow(clippy::too_many_arguments)]
const fn table(
    kind: RecordKind,
    table: &'static str,
    owner: OwnerKind,
    key_columns: &'static [&'static str],
    key_sql: &'static str,
    doc_column: &'static str,
    order: &'static str,
    load_order: &'static str,
) -> DocTable {
    DocTable {
        kind,
        table,
        owner,
        key_columns,
        list_by: 0,
        key_sql,
        doc_column,
        order,
        load_order,
        row_id: None,
        created_seq: None,
        claims: None,
        dependents: &[],
        sql: OnceLock::new(),
    }
}

impl DocTable {
    /// Lists fix the first `columns` key columns.
    const fn listed_by(mut self, columns: usize) -> Self {
        self.list_by = columns;
        self
    }

    /// Rows have an integer id; rows of `dependents` referring to it are deleted with them.
    const fn with_row_id(
        mut self,
        column: &'static str,
        dependents: &'static [&'static str],
    ) -> Self {
        self.row_id = Some(column);
        self.dependents = dependents;
        self
    }

    const fn with_created_seq(mut self, column: &'static str) -> Self {
        self.created_seq = Some(column);
        self
    }

    const fn with_claims(mut self, claims: Claims) -> Self {
        self.claims = Some(claims);
        self
    }
}

/// Deployments: listed in creation order, owning their phone numbers (a number rings in one
/// place) and, by row id, their cohorts and cohort members.
pub(crate) static DEPLOYMENTS: DocTable = table(
    RecordKind::Deployment,
    "deployments",
    OwnerKind::Scope,
    &["deployment_id"],
    "deployment_id",
    "doc",
    "created_seq, dep_key",
    "created_seq, dep_key",
)
.with_row_id(
    "dep_key",
    &["cohort_members", "cohorts", "deployment_numbers"],
)
.with_created_seq("created_seq")
.with_claims(Claims {
    table: "deployment_numbers",
    value_column: "phone_number",
    owner_column: "dep_key",
});

pub(crate) static CONNECTIONS: DocTable = table(
    RecordKind::Connection,
    "connections",
    OwnerKind::Scope,
    &["connection_id"],
    "connection_id",
    "doc",
    "connection_id",
    "org_id, workspace_id, connection_id",
);

/// App versions: keyed by (app, version number), listed per app in version order.
pub(crate) static APP_VERSIONS: DocTable = table(
    RecordKind::AppVersion,
    "app_versions",
    OwnerKind::Scope,
    &["app_id", "version"],
    "app_id || '/' || version",
    "doc",
    "version",
    "org_id, workspace_id, app_id, version",
)
.listed_by(1);

pub(crate) static TRAFFIC_SPLITS: DocTable = table(
    RecordKind::TrafficSplit,
    "traffic_splits",
    OwnerKind::Scope,
    &["app_id"],
    "app_id",
    "doc",
    "app_id",
    "org_id, workspace_id, app_id",
);

/// Cohorts belong to a deployment (deleted with it); callers sort them by their `sequence`.
pub(crate) static COHORTS: DocTable = table(
    RecordKind::Cohort,
    "cohorts",
    OwnerKind::Deployment,
    &["cohort_id"],
    "cohort_id",
    "doc",
    "cohort_id",
    "dep_key, cohort_id",
);

/// Settings: global, and their value is plain text rather than JSON.
pub(crate) static SETTINGS: DocTable = table(
    RecordKind::Setting,
    "settings",
    OwnerKind::Global,
    &["key"],
    "key",
    "value",
    "key",
    "key",
);

fn scope_params(scope: &Scope) -> Vec<Value> {
    vec![
        Value::from(scope.org_id.as_str()),
        Value::from(scope.workspace_id.as_str()),
    ]
}

fn concat(mut first: Vec<Value>, rest: &[Value]) -> Vec<Value> {
    first.extend_from_slice(rest);
    first
}

/// The row id of a deployment; `NotFound` if it does not exist.
pub(crate) async fn require_deployment(
    db: &mut dyn Db,
    scope: &Scope,
    deployment_id: &str,
) -> Result<i64, StoreError> {
    let sql = &DEPLOYMENTS.sql().find_row_id;
    let params = concat(scope_params(scope), &[Value::from(deployment_id)]);
    query_opt(db, "find deployment", sql, &params, |row| row.int(0))
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: RecordKind::Deployment,
            id: deployment_id.to_owned(),
        })
}

/// The owner columns' values for an insert: a deployment owner is resolved to its row id.
async fn owner_values(db: &mut dyn Db, owner: &Owner) -> Result<Vec<Value>, StoreError> {
    Ok(match owner {
        Owner::Global => Vec::new(),
        Owner::Scope(scope) => scope_params(scope),
        Owner::Deployment(scope, deployment_id) => {
            vec![Value::Int(
                require_deployment(db, scope, deployment_id).await?,
            )]
        }
    })
}

fn decode_row<T>(table: &DocTable, decode: Decode<T>, row: &dyn DbRow) -> Result<T, StoreError> {
    decode(table.kind, row.text(0)?, row.text(1)?)
}

/// One record, or `None`.
pub(crate) async fn get<T: Send>(
    db: &mut dyn Db,
    table: &DocTable,
    owner: &Owner,
    key: &[Value],
    decode: Decode<T>,
) -> Result<Option<T>, StoreError> {
    let params = concat(owner.filter_params(), key);
    query_opt(db, "get record", &table.sql().get, &params, |row| {
        decode_row(table, decode, row)
    })
    .await
}

/// The owner's records whose first `table.list_by` key columns equal `prefix`, in the table's
/// order; `page` is (limit, offset).
pub(crate) async fn list<T: Send>(
    db: &mut dyn Db,
    table: &DocTable,
    owner: &Owner,
    prefix: &[Value],
    page: Option<(i64, i64)>,
    decode: Decode<T>,
) -> Result<Vec<T>, StoreError> {
    let mut params = concat(owner.filter_params(), prefix);
    let sql = match page {
        Some((limit, offset)) => {
            params.extend([Value::Int(limit), Value::Int(offset)]);
            &table.sql().list_page
        }
        None => &table.sql().list,
    };
    query_all(db, "list records", sql, &params, |row| {
        decode_row(table, decode, row)
    })
    .await
}

/// How many records [`list`] would return without a page.
pub(crate) async fn count(
    db: &mut dyn Db,
    table: &DocTable,
    owner: &Owner,
    prefix: &[Value],
) -> Result<i64, StoreError> {
    let params = concat(owner.filter_params(), prefix);
    query_int(db, "count records", &table.sql().count, &params).await
}

/// Inserts or replaces a record.
pub(crate) async fn put(
    db: &mut dyn Db,
    table: &DocTable,
    owner: &Owner,
    key: &[Value],
    doc: String,
) -> Result<(), StoreError> {
    let mut params = concat(owner_values(db, owner).await?, key);
    params.push(Value::Text(doc));
    db.execute("put record", &table.sql().upsert, &params)
        .await?;
    Ok(())
}

/// Inserts a record unless one with its key exists; returns the document in effect.
pub(crate) async fn put_if_absent(
    db: &mut dyn Db,
    table: &DocTable,
    owner: &Owner,
    key: &[Value],
    doc: String,
) -> Result<String, StoreError> {
    let mut params = concat(owner_values(db, owner).await?, key);
    params.push(Value::Text(doc));
    db.execute("put record", &table.sql().insert_if_absent, &params)
        .await?;
    let found = get(db, table, owner, key, |_, _, doc| Ok(doc.to_owned())).await?;
    found.ok_or_else(|| StoreError::TaskFailed {
        reason: format!("{} vanished inside its own transaction", table.kind),
    })
}

/// One record by name, for the writes that must find (or must not find) it.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub owner: Owner,
    /// The key columns' values.
    pub key: Vec<Value>,
    /// The key as errors name it.
    pub id: String,
}

/// Inserts a new record created at `revision` and claims `claims` for it. `AlreadyExists`
/// if the key is taken; `NumberTaken` if a claim is.
pub(crate) async fn insert(
    db: &mut dyn Db,
    table: &DocTable,
    record: &Record,
    doc: String,
    revision: i64,
    claims: &[String],
) -> Result<(), StoreError> {
    let (owner, key, id) = (&record.owner, &record.key, &record.id);
    let mut params = concat(owner_values(db, owner).await?, key);
    params.push(Value::Text(doc));
    if table.created_seq.is_some() {
        params.push(Value::Int(revision));
    }
    let sql = &table.sql().insert_returning_id;
    let inserted = query_opt(db, "insert record", sql, &params, |row| row.int(0)).await?;
    let Some(row_id) = inserted else {
        return Err(StoreError::AlreadyExists {
            kind: table.kind,
            id: id.clone(),
        });
    };
    claim(db, table, row_id, claims).await
}

/// Replaces an existing record's document and its claims (values it no longer lists are
/// released). `NotFound` if it does not exist.
pub(crate) async fn update(
    db: &mut dyn Db,
    table: &DocTable,
    record: &Record,
    doc: String,
    claims: &[String],
) -> Result<(), StoreError> {
    let (owner, key, id) = (&record.owner, &record.key, &record.id);
    let params = concat(vec![Value::Text(doc)], &concat(owner.filter_params(), key));
    let sql = &table.sql().update;
    let updated = query_opt(db, "update record", sql, &params, |row| row.int(0)).await?;
    let Some(row_id) = updated else {
        return Err(StoreError::NotFound {
            kind: table.kind,
            id: id.clone(),
        });
    };
    if table.claims.is_some() {
        let release = &table.sql().release_claims;
        db.execute("release claims", release, &[Value::Int(row_id)])
            .await?;
        claim(db, table, row_id, claims).await?;
    }
    Ok(())
}

/// Deletes a record with its claims and dependent rows. `NotFound` if absent.
pub(crate) async fn delete(
    db: &mut dyn Db,
    table: &DocTable,
    record: &Record,
) -> Result<(), StoreError> {
    let (owner, key, id) = (&record.owner, &record.key, &record.id);
    let params = concat(owner.filter_params(), key);
    let not_found = || StoreError::NotFound {
        kind: table.kind,
        id: id.clone(),
    };
    let Some(row_column) = table.row_id else {
        let deleted = db
            .execute("delete record", &table.sql().delete, &params)
            .await?;
        return if deleted == 0 {
            Err(not_found())
        } else {
            Ok(())
        };
    };
    let sql = &table.sql().find_row_id;
    let row_id = query_opt(db, "delete record", sql, &params, |row| row.int(0))
        .await?
        .ok_or_else(not_found)?;
    // Dependents first and explicitly (not by ON DELETE CASCADE alone): the intent reads here,
    // and PostgreSQL's cohort_members has no foreign key to cascade.
    let id_param = [Value::Int(row_id)];
    for dependent in table.dependents {
        let sql = format!("DELETE FROM {dependent} WHERE {row_column} = ?");
        db.execute("delete dependent rows", &sql, &id_param).await?;
    }
    let sql = format!("DELETE FROM {} WHERE {row_column} = ?", table.table);
    db.execute("delete record", &sql, &id_param).await?;
    Ok(())
}

/// Rows per multi-row claim statement: far below both drivers' parameter limits.
const CLAIM_CHUNK: usize = 500;

/// Claims `values` (distinct, sorted) for the record `row_id`; the first one owned by another
/// record fails the write with `NumberTaken`.
async fn claim(
    db: &mut dyn Db,
    table: &DocTable,
    row_id: i64,
    values: &[String],
) -> Result<(), StoreError> {
    if values.is_empty() {
        return Ok(());
    }
    let claims = table.claims()?;
    let (claims_table, value_column, owner_column) =
        (claims.table, claims.value_column, claims.owner_column);
    for chunk in values.chunks(CLAIM_CHUNK) {
        let sql = format!(
            "INSERT INTO {claims_table} ({value_column}, {owner_column}) VALUES {} \
             ON CONFLICT ({value_column}) DO NOTHING",
            placeholder_rows(chunk.len(), 2)
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|value| [Value::from(value.as_str()), Value::Int(row_id)])
            .collect();
        if db.execute("claim values", &sql, &params).await? == chunk.len() as u64 {
            continue;
        }
        // Some value is owned elsewhere: name the first (values are sorted) and its owner.
        let sql = format!(
            "SELECT c.{value_column}, t.{key} FROM {claims_table} c \
             JOIN {table_name} t ON t.{row} = c.{owner_column} \
             WHERE c.{owner_column} <> ? AND c.{value_column} IN ({marks}) \
             ORDER BY c.{value_column} LIMIT 1",
            key = table.key_columns.last().copied().unwrap_or("0"),
            table_name = table.table,
            row = table.row_id.unwrap_or("0"),
            marks = vec!["?"; chunk.len()].join(", "),
        );
        let params: Vec<Value> = std::iter::once(Value::Int(row_id))
            .chain(chunk.iter().map(|value| Value::from(value.as_str())))
            .collect();
        let conflict = query_opt(db, "find claim owner", &sql, &params, |row| {
            Ok((row.text(0)?.to_owned(), row.text(1)?.to_owned()))
        })
        .await?;
        if let Some((phone_number, deployment_id)) = conflict {
            return Err(StoreError::NumberTaken {
                phone_number,
                deployment_id,
            });
        }
        // Fewer rows than values yet no other owner: only if `values` repeated one.
    }
    Ok(())
}

/// The (owner scope, key) of the record that claimed `value`.
pub(crate) async fn claim_owner(
    db: &mut dyn Db,
    table: &DocTable,
    value: &str,
) -> Result<Option<(Scope, String)>, StoreError> {
    table.claims()?;
    let sql = &table.sql().claim_owner;
    query_opt(db, "find claim owner", sql, &[Value::from(value)], |row| {
        Ok((
            Scope::new(row.text(0)?, row.text(1)?),
            row.text(2)?.to_owned(),
        ))
    })
    .await
}

/// Every record of a scope-owned table, as (row id, scope, document), in `load_order`.
pub(crate) async fn load<T: Send>(
    db: &mut dyn Db,
    table: &DocTable,
    decode: Decode<T>,
) -> Result<Vec<(i64, Scope, T)>, StoreError> {
    query_all(db, "load records", &table.sql().load, &[], |row| {
        let scope = Scope::new(row.text(1)?, row.text(2)?);
        let doc = decode(table.kind, row.text(3)?, row.text(4)?)?;
        Ok((row.int(0)?, scope, doc))
    })
    .await
}

/// Statements every table's SQL must produce without panicking (checked by a unit test).
#[cfg(test)]
fn all_tables() -> [&'static DocTable; 6] {
    [
        &DEPLOYMENTS,
        &CONNECTIONS,
        &APP_VERSIONS,
        &TRAFFIC_SPLITS,
        &COHORTS,
        &SETTINGS,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sql_is_well_formed_for_both_dialects() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for migration in crate::migrations::SQLITE {
            conn.execute_batch(migration.sql).unwrap();
        }
        for table in all_tables() {
            let sql = table.sql();
            let mut statements = vec![
                &sql.get,
                &sql.list,
                &sql.list_page,
                &sql.count,
                &sql.upsert,
                &sql.insert_if_absent,
                &sql.delete,
            ];
            if table.row_id.is_some() {
                statements.extend([&sql.insert_returning_id, &sql.update, &sql.find_row_id]);
            }
            if table.owner == OwnerKind::Scope {
                statements.push(&sql.load);
            }
            if table.claims.is_some() {
                statements.extend([&sql.release_claims, &sql.claim_owner]);
            }
            for statement in statements {
                conn.prepare(statement)
                    .unwrap_or_else(|err| panic!("{statement}: {err}"));
                assert!(!crate::db::postgres_placeholders(statement).contains('?'));
            }
        }
    }
}
