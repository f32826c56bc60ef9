//! The thin driver interface the document layer is written against.
//!
//! SQL is written once, with `?` placeholders (SQLite's own syntax); the PostgreSQL driver
//! rewrites them to `$1, $2, …` ([`postgres_placeholders`]). Parameters are [`Value`]s, rows
//! are read through [`DbRow`] without copying, and every call is async so one body of code
//! drives both drivers: the SQLite driver does its work before returning a ready future (it
//! runs on the blocking pool, see `sqlite.rs`), the PostgreSQL one awaits the server.

use std::error::Error as StdError;

use bytes::BytesMut;
use futures_util::future::BoxFuture;
use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio_postgres::types::{IsNull, ToSql, Type};

use crate::codec::MemberRow;
use crate::{BackendKind, Revision, StoreError};

/// A statement parameter. One integer type for both dialects: the PostgreSQL driver narrows
/// it to the column's type (`INTEGER` columns take `i32`), failing rather than truncating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Text(String),
    Int(i64),
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Text(text)
    }
}

impl From<i64> for Value {
    fn from(number: i64) -> Self {
        Value::Int(number)
    }
}

/// One result row; columns by index, as the statement selected them.
pub(crate) trait DbRow {
    fn text(&self, index: usize) -> Result<&str, StoreError>;
    fn int(&self, index: usize) -> Result<i64, StoreError>;
}

/// Called once per result row, in order.
pub(crate) type RowVisitor<'v> = dyn FnMut(&dyn DbRow) -> Result<(), StoreError> + Send + 'v;

/// A connection (or the transaction open on it) of either driver. `operation` names the call
/// in errors ("insert deployment").
pub(crate) trait Db: Send {
    fn backend(&self) -> BackendKind;

    /// Runs one statement; returns the number of rows it changed.
    fn execute<'a>(
        &'a mut self,
        operation: &'static str,
        sql: &'a str,
        params: &'a [Value],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Runs one query, handing each row to `each` as it arrives (PostgreSQL streams them, so
    /// a million rows never sit in memory twice).
    fn query<'a>(
        &'a mut self,
        operation: &'static str,
        sql: &'a str,
        params: &'a [Value],
        each: &'a mut RowVisitor<'_>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Runs several `;`-separated statements without parameters (migrations).
    fn execute_batch<'a>(
        &'a mut self,
        operation: &'static str,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The cohort fast path: upserts `rows` into the deployment `dep_key` as written at
    /// `revision`, the last row per number winning. Each driver uses its fastest bulk form.
    fn upsert_members<'a>(
        &'a mut self,
        dep_key: i64,
        revision: Revision,
        rows: &'a [MemberRow],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// A read or write handed to a backend to run on one of its connections: it borrows the
/// connection for as long as it runs, which is why it returns a boxed future.
pub(crate) type Op<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// The first row `sql` selects, read by `read`.
pub(crate) async fn query_opt<T: Send>(
    db: &mut dyn Db,
    operation: &'static str,
    sql: &str,
    params: &[Value],
    mut read: impl FnMut(&dyn DbRow) -> Result<T, StoreError> + Send,
) -> Result<Option<T>, StoreError> {
    let mut found = None;
    db.query(operation, sql, params, &mut |row| {
        if found.is_none() {
            found = Some(read(row)?);
        }
        Ok(())
    })
    .await?;
    Ok(found)
}

/// Every row `sql` selects, each read by `read`.
pub(crate) async fn query_all<T: Send>(
    db: &mut dyn Db,
    operation: &'static str,
    sql: &str,
    params: &[Value],
    mut read: impl FnMut(&dyn DbRow) -> Result<T, StoreError> + Send,
) -> Result<Vec<T>, StoreError> {
    let mut all = Vec::new();
    db.query(operation, sql, params, &mut |row| {
        all.push(read(row)?);
        Ok(())
    })
    .await?;
    Ok(all)
}

/// The single integer `sql` selects (a count, a counter); 0 when it selects no row.
pub(crate) async fn query_int(
    db: &mut dyn Db,
    operation: &'static str,
    sql: &str,
    params: &[Value],
) -> Result<i64, StoreError> {
    Ok(query_opt(db, operation, sql, params, |row| row.int(0))
        .await?
        .unwrap_or(0))
}

/// `sql` with each `?` outside quotes replaced by `$1, $2, …` in order, for PostgreSQL.
pub(crate) fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut number = 0;
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (Some(open), _) if c == open => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                number += 1;
                out.push('$');
                out.push_str(&number.to_string());
                continue;
            }
            (None, _) => {}
        }
        out.push(c);
    }
    out
}

/// `n` comma-separated groups of `width` placeholders: `(?, ?), (?, ?)` for multi-row inserts.
pub(crate) fn placeholder_rows(n: usize, width: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(", "));
    vec![row; n].join(", ")
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Value::Int(number) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(*number)),
        })
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Text(text) => text.as_str().to_sql_checked(ty, out),
            Value::Int(number) => match *ty {
                Type::INT2 => i16::try_from(*number)?.to_sql_checked(ty, out),
                Type::INT4 => i32::try_from(*number)?.to_sql_checked(ty, out),
                _ => number.to_sql_checked(ty, out),
            },
        }
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty) || matches!(*ty, Type::INT2 | Type::INT4 | Type::INT8)
    }

    tokio_postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes_only() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ? AND c = '?' AND \"d?\" = ?"),
            "SELECT a FROM t WHERE b = $1 AND c = '?' AND \"d?\" = $2"
        );
        let many = postgres_placeholders(&placeholder_rows(6, 2));
        assert!(many.ends_with("($11, $12)"), "{many}");
        assert_eq!(postgres_placeholders("no parameters"), "no parameters");
    }
}
