//! Cohorts: per-caller variables for a deployment, uploaded as CSV (multipart) or sent as JSON.
//!
//! # Streaming upload
//! `POST …/cohorts/upload` is `multipart/form-data` with `name`, `cohort_file` (CSV with a header
//! row) and `cohort_transformation_file` (JSON saying which column is what). The CSV is parsed as
//! its bytes arrive ([`super::csv::CsvReader`]) and valid rows go to the store in batches of
//! [`BATCH_ROWS`], each committed and then applied to the routing table by a writer task, so
//! parsing the next batch overlaps with committing the previous one and memory stays bounded by
//! two batches. If the CSV part arrives before the transformation file, it is spooled to a
//! temporary file first (still never held in memory) and parsed once the mapping is known.
//!
//! The cohort is `processing` while rows stream in, then `completed` (with counts and the first
//! [`MAX_REPORTED_REJECTIONS`] rejected rows and why) or `failed` (the upload broke off; rows of
//! batches already committed stay, as the latest-upload-wins rule would keep them anyway).
//!
//! Without a transformation file the header names the fields: `phone_number` (required),
//! `user_identifier`, the `app_overrides` names, and every other column becomes an app variable.

use std::collections::BTreeMap;
use std::io;

use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt as _;
use http::{Response, StatusCode};
use http_body_util::BodyStream;
use serde_json::{json, Map, Value};
use switchboard_routing::model::{
    AppOverrides, Cohort, CohortMember, CohortRejection, CohortResult, CohortStatus, Scope,
};
use switchboard_routing::{normalize_number, Change};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::body_timeout::is_timeout;
use super::csv::CsvReader;
use super::error::{json_response, ApiError};
use super::request::{
    array, at, body_loc, check_declared_length, deny_unknown, media_type, object, optional,
    read_json, required, string, Loc, Problems,
};
use super::{deployments, Body, Ctx, RequestBody};
use crate::state::AppState;

/// Rows per store transaction: one commit per 10k rows keeps a million-row upload to a hundred
/// fsyncs while a batch (a few MB) stays small.
pub const BATCH_ROWS: usize = 10_000;
/// Rejected rows reported with their reason; counts stay exact beyond it. Enough to fix a bad
/// export, small enough that a file of garbage does not produce a huge cohort record.
pub const MAX_REPORTED_REJECTIONS: usize = 1_000;
/// Users per `cohorts/stream` request.
pub const MAX_STREAM_USERS: usize = 1_000;
/// Cap on the transformation file and the `name` part (they are tiny).
const MAX_SMALL_PART_BYTES: u64 = 64 * 1024;
/// Longest cohort name accepted.
const MAX_COHORT_NAME_CHARS: usize = 100;
/// Batches queued between the parser and the writer: one committing, one being filled.
const WRITER_QUEUE: usize = 2;
/// Read size when replaying a spooled CSV.
const SPOOL_READ_BYTES: usize = 256 * 1024;

/// The cohort as the API shows it (`sequence` is internal).
fn view(c: &Cohort) -> Value {
    json!({
        "cohort_id": c.cohort_id,
        "deployment_id": c.deployment_id,
        "name": c.name,
        "status": c.status,
        "result": c.result,
        "rejections": c.rejections,
    })
}

fn new_cohort_id() -> String {
    format!("coh-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Orders uploads (the latest wins per number): microseconds since the epoch.
fn sequence_now() -> u64 {
    u64::try_from(Utc::now().timestamp_micros()).unwrap_or_default()
}

/// `GET …/cohorts/{cohort_id}`.
pub async fn get(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let (dep, cohort) = (cx.params.get("deployment_id"), cx.params.get("cohort_id"));
    let c = cx
        .state
        .store
        .get_cohort(&scope, dep, cohort)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Cohort {cohort}")))?;
    Ok(json_response(StatusCode::OK, &view(&c)))
}

/// `GET …/cohorts`: the deployment's cohorts, oldest first.
pub async fn list(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    deployments::load(cx, &scope).await?;
    let items: Vec<Value> = cx
        .state
        .store
        .list_cohorts(&scope, cx.params.get("deployment_id"))
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "total": items.len(), "items": items }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Column mapping

mod ingest;
mod mapping;
mod stream;
#[cfg(test)]
mod tests;

use ingest::Ingest;
use mapping::{parse_mapping, transformation_loc};
pub use stream::stream;

/// `POST …/cohorts/upload` (multipart). 201 with the finished cohort.
pub async fn upload(cx: &Ctx, body: RequestBody) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let deployment = deployments::load(cx, &scope).await?;
    if media_type(&cx.headers) != "multipart/form-data" {
        return Err(ApiError::UnsupportedMediaType {
            expected: "multipart/form-data",
        });
    }
    let limit = cx.state.config.admin.max_upload_bytes;
    check_declared_length(&cx.headers, limit)?;
    let content_type = cx
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::invalid(
            body_loc(),
            "value_error",
            "Value error, multipart/form-data without a boundary",
        )
    })?;
    let stream = BodyStream::new(body).filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(Ok::<Bytes, io::Error>),
            Err(e) => Some(Err(io::Error::other(e))),
        }
    });
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limit)
            .for_field("name", MAX_SMALL_PART_BYTES)
            .for_field("cohort_transformation_file", MAX_SMALL_PART_BYTES),
    );
    let mut ingest = Ingest::new(cx, scope, deployment.deployment_id, None);
    // The upload runs in its own task: should hyper drop this handler's future (connection
    // torn down, shutdown), the task still sees the body end in an error and marks the cohort
    // `failed` instead of leaving it `processing` forever.
    let task = tokio::spawn(async move {
        let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
        let outcome = receive(&mut multipart, &mut ingest, limit).await;
        finish_upload(ingest, outcome).await
    });
    task.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "cohort upload task failed");
        Err(ApiError::NotReady)
    })
}

/// Records the upload's final status and builds the response.
async fn finish_upload(
    mut ingest: Ingest,
    outcome: Result<Option<String>, ApiError>,
) -> Result<Response<Body>, ApiError> {
    match outcome {
        Ok(name) => {
            ingest.cohort.name = name.unwrap_or_else(|| ingest.cohort.cohort_id.clone());
            ingest
                .state
                .metrics
                .cohort_rows
                .with_label_values(&["rejected"])
                .inc_by(ingest.cohort.result.rejected_records);
            ingest.close(CohortStatus::Completed).await?;
            Ok(json_response(StatusCode::CREATED, &view(&ingest.cohort)))
        }
        Err(e) => {
            if let Err(close) = ingest.close(CohortStatus::Failed).await {
                tracing::warn!(error = %close, "could not mark the cohort failed");
            }
            Err(e)
        }
    }
}

/// Reads the multipart parts in whatever order they come; returns the cohort name if given.
async fn receive(
    multipart: &mut multer::Multipart<'_>,
    ingest: &mut Ingest,
    limit: u64,
) -> Result<Option<String>, ApiError> {
    let mut name = None;
    let mut saw_file = false;
    let mut spool: Option<(tempfile::TempPath, tokio::fs::File)> = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        let part = field.name().unwrap_or("").to_owned();
        match part.as_str() {
            "name" => {
                let text = field.text().await.map_err(|e| multipart_error(e, limit))?;
                let mut p = Problems::default();
                name = super::request::bounded_string(
                    &Value::String(text.trim().to_owned()),
                    MAX_COHORT_NAME_CHARS,
                    at(&body_loc(), "name"),
                    &mut p,
                );
                p.finish()?;
            }
            "cohort_transformation_file" => {
                if saw_file && spool.is_none() {
                    return Err(ApiError::invalid(
                        transformation_loc(),
                        "value_error",
                        "Value error, cohort_transformation_file must not come after cohort_file",
                    ));
                }
                let bytes = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                ingest.mapping = Some(parse_mapping(&bytes)?);
            }
            "cohort_file" => {
                if saw_file {
                    return Err(ApiError::invalid(
                        at(&body_loc(), "cohort_file"),
                        "value_error",
                        "Value error, only one cohort_file per upload",
                    ));
                }
                saw_file = true;
                if ingest.mapping.is_some() {
                    // The mapping is known: parse while the bytes arrive.
                    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
                        ingest.feed(&chunk).await?;
                    }
                    ingest.finish_csv().await?;
                } else {
                    spool = Some(spool_field(&mut field, limit).await?);
                }
            }
            other => {
                return Err(ApiError::invalid(
                    at(&body_loc(), other),
                    "extra_forbidden",
                    "Extra inputs are not permitted (expected name, cohort_file, cohort_transformation_file)",
                ))
            }
        }
    }
    if !saw_file {
        return Err(ApiError::invalid(
            at(&body_loc(), "cohort_file"),
            "missing",
            "Field required",
        ));
    }
    if let Some((path, mut file)) = spool {
        file.flush().await.map_err(spool_error)?;
        let mut file = tokio::fs::File::open(&path).await.map_err(spool_error)?;
        let mut buf = vec![0u8; SPOOL_READ_BYTES];
        loop {
            let n = file.read(&mut buf).await.map_err(spool_error)?;
            if n == 0 {
                break;
            }
            ingest.feed(&buf[..n]).await?;
        }
        ingest.finish_csv().await?;
    }
    Ok(name)
}

/// Writes a CSV part that arrived before its mapping to a temporary file (deleted on drop).
async fn spool_field(
    field: &mut multer::Field<'_>,
    limit: u64,
) -> Result<(tempfile::TempPath, tokio::fs::File), ApiError> {
    let path = tempfile::NamedTempFile::new()
        .map_err(spool_error)?
        .into_temp_path();
    let mut file = tokio::fs::File::create(&path).await.map_err(spool_error)?;
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        file.write_all(&chunk).await.map_err(spool_error)?;
    }
    Ok((path, file))
}

fn spool_error(e: io::Error) -> ApiError {
    tracing::error!(error = %e, "spooling a cohort upload failed");
    ApiError::NotReady
}

/// Size limits are 413, a stalled body 408; anything else about the multipart framing is the
/// client's (422).
fn multipart_error(e: multer::Error, limit: u64) -> ApiError {
    match e {
        multer::Error::StreamReadFailed(e) if is_timeout(&*e) => ApiError::RequestTimeout,
        multer::Error::StreamSizeExceeded { .. } => ApiError::PayloadTooLarge { limit },
        multer::Error::FieldSizeExceeded { limit, .. } => ApiError::PayloadTooLarge { limit },
        other => ApiError::invalid(
            body_loc(),
            "multipart_invalid",
            format!("malformed multipart body: {other}"),
        ),
    }
}

fn csv_error(e: super::csv::CsvError) -> ApiError {
    ApiError::invalid(
        at(&body_loc(), "cohort_file"),
        "value_error",
        format!("Value error, {e}"),
    )
}

fn finish_err(p: Problems) -> ApiError {
    p.finish().err().unwrap_or_else(|| {
        ApiError::invalid(
            body_loc(),
            "model_attributes_type",
            "Input should be an object",
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Endpoints
