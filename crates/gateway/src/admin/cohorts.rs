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

/// One mapped column.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ColumnSpec {
    column: String,
    required: bool,
}

/// Which `app_overrides` field a column feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OverrideField {
    BotMessage,
    StateName,
    LanguageName,
}

impl OverrideField {
    const ALL: [(&'static str, OverrideField); 3] = [
        ("initial_bot_message", OverrideField::BotMessage),
        ("initial_state_name", OverrideField::StateName),
        ("initial_language_name", OverrideField::LanguageName),
    ];

    fn set(self, o: &mut AppOverrides, value: String) {
        match self {
            OverrideField::BotMessage => o.initial_bot_message = Some(value),
            OverrideField::StateName => o.initial_state_name = Some(value),
            OverrideField::LanguageName => o.initial_language_name = Some(value),
        }
    }
}

/// The transformation file: `{"phone_number":{"column_name":…}, "user_identifier":{…},
/// "app_variables":{name:{…}}, "app_overrides":{field:{…}}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    phone: ColumnSpec,
    user_identifier: Option<ColumnSpec>,
    variables: Vec<(String, ColumnSpec)>,
    overrides: Vec<(OverrideField, ColumnSpec)>,
}

fn transformation_loc() -> Loc {
    at(&body_loc(), "cohort_transformation_file")
}

/// Parses the transformation file, reporting every problem at `["body","cohort_transformation_file",…]`.
fn parse_mapping(bytes: &[u8]) -> Result<Mapping, ApiError> {
    let root = transformation_loc();
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(
            root.clone(),
            "json_invalid",
            format!("JSON decode error: {e}"),
        )
    })?;
    let mut p = Problems::default();
    let Some(map) = object(&value, &root, &mut p) else {
        return Err(finish_err(p));
    };
    deny_unknown(
        map,
        &[
            "phone_number",
            "user_identifier",
            "app_variables",
            "app_overrides",
        ],
        &root,
        &mut p,
    );
    let phone = required(map, "phone_number", &root, &mut p)
        .and_then(|v| column_spec(v, true, at(&root, "phone_number"), &mut p));
    let user_identifier = optional(map, "user_identifier")
        .and_then(|v| column_spec(v, false, at(&root, "user_identifier"), &mut p));
    let mut variables = Vec::new();
    if let Some(v) = optional(map, "app_variables") {
        let loc = at(&root, "app_variables");
        if let Some(vars) = object(v, &loc, &mut p) {
            for (name, spec) in vars {
                if let Some(spec) = column_spec(spec, false, at(&loc, name.as_str()), &mut p) {
                    variables.push((name.clone(), spec));
                }
            }
        }
    }
    let mut overrides = Vec::new();
    if let Some(v) = optional(map, "app_overrides") {
        let loc = at(&root, "app_overrides");
        if let Some(o) = object(v, &loc, &mut p) {
            let names: Vec<&str> = OverrideField::ALL.iter().map(|(n, _)| *n).collect();
            deny_unknown(o, &names, &loc, &mut p);
            for (name, field) in OverrideField::ALL {
                if let Some(spec) =
                    optional(o, name).and_then(|v| column_spec(v, false, at(&loc, name), &mut p))
                {
                    overrides.push((field, spec));
                }
            }
        }
    }
    p.finish()?;
    let phone = phone.ok_or_else(|| ApiError::invalid(root, "missing", "Field required"))?;
    Ok(Mapping {
        phone,
        user_identifier,
        variables,
        overrides,
    })
}

/// `{"column_name": "...", "required": bool}`; the phone column is always required.
fn column_spec(v: &Value, always_required: bool, loc: Loc, p: &mut Problems) -> Option<ColumnSpec> {
    let m = object(v, &loc, p)?;
    deny_unknown(m, &["column_name", "required"], &loc, p);
    let column =
        required(m, "column_name", &loc, p).and_then(|v| string(v, at(&loc, "column_name"), p))?;
    let required = match optional(m, "required") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            p.push(
                at(&loc, "required"),
                "bool_type",
                "Input should be a valid boolean",
            );
            false
        }
    };
    Some(ColumnSpec {
        column: column.to_owned(),
        required: required || always_required,
    })
}

/// The identity mapping used without a transformation file.
fn default_mapping(header: &[String]) -> Mapping {
    let spec = |c: &str, required| ColumnSpec {
        column: c.to_owned(),
        required,
    };
    let mut variables = Vec::new();
    let mut overrides = Vec::new();
    for col in header {
        match col.as_str() {
            "phone_number" | "user_identifier" => {}
            other => match OverrideField::ALL.iter().find(|(n, _)| *n == other) {
                Some((_, field)) => overrides.push((*field, spec(other, false))),
                None => variables.push((other.to_owned(), spec(other, false))),
            },
        }
    }
    Mapping {
        phone: spec("phone_number", true),
        user_identifier: header
            .iter()
            .any(|c| c == "user_identifier")
            .then(|| spec("user_identifier", false)),
        variables,
        overrides,
    }
}

/// A mapping resolved against the header: column indices.
#[derive(Debug)]
struct BoundMapping {
    phone: (usize, String),
    user_identifier: Option<(usize, ColumnSpec)>,
    variables: Vec<(String, usize, ColumnSpec)>,
    overrides: Vec<(OverrideField, usize, ColumnSpec)>,
}

/// Resolves every mapped column in `header`; a mapped column the header lacks is a 422 naming it.
fn bind(mapping: &Mapping, header: &[String]) -> Result<BoundMapping, ApiError> {
    let root = transformation_loc();
    let mut p = Problems::default();
    let index = |spec: &ColumnSpec, loc: Loc, p: &mut Problems| {
        let found = header.iter().position(|h| h.trim() == spec.column);
        if found.is_none() {
            p.push(
                at(&loc, "column_name"),
                "value_error",
                format!(
                    "Value error, column {:?} is not in the CSV header ({})",
                    spec.column,
                    header.join(",")
                ),
            );
        }
        found
    };
    let phone = index(&mapping.phone, at(&root, "phone_number"), &mut p);
    let user_identifier = mapping
        .user_identifier
        .as_ref()
        .and_then(|s| index(s, at(&root, "user_identifier"), &mut p).map(|i| (i, s.clone())));
    let variables = mapping
        .variables
        .iter()
        .filter_map(|(name, s)| {
            index(s, at(&at(&root, "app_variables"), name.as_str()), &mut p)
                .map(|i| (name.clone(), i, s.clone()))
        })
        .collect();
    let overrides = mapping
        .overrides
        .iter()
        .filter_map(|(f, s)| {
            index(s, at(&root, "app_overrides"), &mut p).map(|i| (*f, i, s.clone()))
        })
        .collect();
    p.finish()?;
    let phone = phone.ok_or_else(|| ApiError::invalid(root, "missing", "Field required"))?;
    Ok(BoundMapping {
        phone: (phone, mapping.phone.column.clone()),
        user_identifier,
        variables,
        overrides,
    })
}

/// One CSV row to a member, or the reason it is rejected.
fn member_from_row(
    b: &BoundMapping,
    row: &[String],
    country_code: Option<&str>,
) -> Result<CohortMember, String> {
    let cell = |i: usize| row.get(i).map(|s| s.trim()).filter(|s| !s.is_empty());
    let missing = |col: &str| format!("missing required column {col:?}");
    let raw_phone = cell(b.phone.0).ok_or_else(|| missing(&b.phone.1))?;
    let phone = normalize_number(raw_phone, country_code)
        .map_err(|e| format!("invalid phone number {raw_phone:?}: {e}"))?
        .to_string();
    let user_identifier = match &b.user_identifier {
        Some((i, spec)) => match cell(*i) {
            Some(v) => v.to_owned(),
            None if spec.required => return Err(missing(&spec.column)),
            None => phone.clone(),
        },
        None => phone.clone(),
    };
    let mut app_variables = BTreeMap::new();
    for (name, i, spec) in &b.variables {
        match cell(*i) {
            Some(v) => {
                app_variables.insert(name.clone(), v.to_owned());
            }
            None if spec.required => return Err(missing(&spec.column)),
            None => {}
        }
    }
    let mut app_overrides = AppOverrides::default();
    for (field, i, spec) in &b.overrides {
        match cell(*i) {
            Some(v) => field.set(&mut app_overrides, v.to_owned()),
            None if spec.required => return Err(missing(&spec.column)),
            None => {}
        }
    }
    Ok(CohortMember {
        phone_number: phone,
        user_identifier,
        app_variables,
        app_overrides,
    })
}

// ---------------------------------------------------------------------------------------------
// Ingestion: rows in, batches to the writer task, cohort record kept current.

/// The batch queue into the writer task, and the task (which returns the first store error).
type Writer = (
    mpsc::Sender<Vec<CohortMember>>,
    JoinHandle<Result<(), ApiError>>,
);

/// An upload in progress once its header is bound.
struct Ingest {
    state: AppState,
    scope: Scope,
    cohort: Cohort,
    country_code: Option<String>,
    bound: Option<BoundMapping>,
    mapping: Option<Mapping>,
    csv: CsvReader,
    records: Vec<Vec<String>>,
    batch: Vec<CohortMember>,
    writer: Option<Writer>,
}

impl Ingest {
    fn new(cx: &Ctx, scope: Scope, deployment_id: String, mapping: Option<Mapping>) -> Self {
        Self {
            state: cx.state.clone(),
            scope,
            cohort: Cohort {
                cohort_id: new_cohort_id(),
                deployment_id,
                name: String::new(),
                status: CohortStatus::Processing,
                result: CohortResult::default(),
                rejections: Vec::new(),
                sequence: sequence_now(),
            },
            country_code: cx.country_code().map(str::to_owned),
            bound: None,
            mapping,
            csv: CsvReader::new(),
            records: Vec::new(),
            batch: Vec::with_capacity(BATCH_ROWS),
            writer: None,
        }
    }

    /// Feeds CSV bytes; rows are processed as soon as they are complete.
    async fn feed(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.csv.feed(chunk, &mut self.records).map_err(csv_error)?;
        self.drain_records().await
    }

    /// End of the CSV: last record, last batch, writer drained.
    async fn finish_csv(&mut self) -> Result<(), ApiError> {
        self.csv.finish(&mut self.records).map_err(csv_error)?;
        self.drain_records().await?;
        if self.bound.is_none() {
            return Err(ApiError::invalid(
                at(&body_loc(), "cohort_file"),
                "value_error",
                "Value error, the CSV file is empty (a header row is required)",
            ));
        }
        self.flush().await?;
        if let Some((tx, handle)) = self.writer.take() {
            drop(tx);
            match handle.await {
                Ok(result) => result?,
                Err(e) => {
                    tracing::error!(error = %e, "cohort writer task failed");
                    return Err(ApiError::NotReady);
                }
            }
        }
        Ok(())
    }

    async fn drain_records(&mut self) -> Result<(), ApiError> {
        let records = std::mem::take(&mut self.records);
        for record in records {
            let Some(bound) = &self.bound else {
                self.start(&record).await?;
                continue;
            };
            self.cohort.result.total_records += 1;
            let row = self.cohort.result.total_records;
            match member_from_row(bound, &record, self.country_code.as_deref()) {
                Ok(member) => {
                    self.cohort.result.valid_records += 1;
                    self.batch.push(member);
                    if self.batch.len() >= BATCH_ROWS {
                        self.flush().await?;
                    }
                }
                Err(reason) => {
                    self.cohort.result.rejected_records += 1;
                    if self.cohort.rejections.len() < MAX_REPORTED_REJECTIONS {
                        self.cohort.rejections.push(CohortRejection { row, reason });
                    }
                }
            }
        }
        Ok(())
    }

    /// The header row: bind the mapping, record the cohort as `processing`, start the writer.
    async fn start(&mut self, header: &[String]) -> Result<(), ApiError> {
        let mapping = self
            .mapping
            .take()
            .unwrap_or_else(|| default_mapping(header));
        self.bound = Some(bind(&mapping, header)?);
        {
            let _write = self.state.write_lock().await;
            self.state
                .store
                .put_cohort(&self.scope, &self.cohort)
                .await?;
        }
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let handle = tokio::spawn(write_batches(
            self.state.clone(),
            self.scope.clone(),
            self.cohort.deployment_id.clone(),
            rx,
        ));
        self.writer = Some((tx, handle));
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ApiError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_ROWS));
        let Some((tx, _)) = &self.writer else {
            return Ok(());
        };
        if tx.send(batch).await.is_err() {
            // The writer stopped on an error: collect it.
            if let Some((_, handle)) = self.writer.take() {
                if let Ok(Err(e)) = handle.await {
                    return Err(e);
                }
            }
            return Err(ApiError::NotReady);
        }
        Ok(())
    }

    /// Records the final status (best effort on failure: the response reports the error anyway).
    async fn close(&mut self, status: CohortStatus) -> Result<(), ApiError> {
        if self.bound.is_none() {
            return Ok(()); // nothing was recorded yet
        }
        self.cohort.status = status;
        let _write = self.state.write_lock().await;
        self.state
            .store
            .put_cohort(&self.scope, &self.cohort)
            .await?;
        Ok(())
    }
}

/// The writer task: commit each batch, then apply it to the routing table.
async fn write_batches(
    state: AppState,
    scope: Scope,
    deployment_id: String,
    mut rx: mpsc::Receiver<Vec<CohortMember>>,
) -> Result<(), ApiError> {
    while let Some(batch) = rx.recv().await {
        let _write = state.write_lock().await;
        state
            .store
            .insert_cohort_members(&scope, &deployment_id, &batch)
            .await?;
        let rows = batch.len() as u64;
        state
            .apply(&[Change::UpsertCohortMembers(
                scope.clone(),
                deployment_id.clone(),
                batch,
            )])
            .await;
        state
            .metrics
            .cohort_rows
            .with_label_values(&["valid"])
            .inc_by(rows);
    }
    Ok(())
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

/// `POST …/cohorts/stream`: `{"name": …, "users": [{phone_number, user_identifier?,
/// app_variables?, app_overrides?}]}` with 1–1000 users. Bad phone numbers reject their row, as in
/// a CSV; anything structurally wrong is a 422.
pub async fn stream(cx: &Ctx, body: RequestBody) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let deployment = deployments::load(cx, &scope).await?;
    let value = read_json(&cx.headers, body, cx.max_body()).await?;
    let root = body_loc();
    let mut p = Problems::default();
    let Some(map) = object(&value, &root, &mut p) else {
        return Err(finish_err(p));
    };
    deny_unknown(map, &["name", "users"], &root, &mut p);
    let name = required(map, "name", &root, &mut p).and_then(|v| {
        super::request::bounded_string(v, MAX_COHORT_NAME_CHARS, at(&root, "name"), &mut p)
    });
    let users_loc = at(&root, "users");
    let mut rows: Vec<Result<CohortMember, String>> = Vec::new();
    if let Some(users) =
        required(map, "users", &root, &mut p).and_then(|v| array(v, users_loc.clone(), &mut p))
    {
        if users.is_empty() || users.len() > MAX_STREAM_USERS {
            p.push(
                users_loc.clone(),
                if users.is_empty() {
                    "too_short"
                } else {
                    "too_long"
                },
                format!(
                    "List should have between 1 and {MAX_STREAM_USERS} items, not {}",
                    users.len()
                ),
            );
        } else {
            for (i, u) in users.iter().enumerate() {
                if let Some(row) = stream_user(u, cx.country_code(), at(&users_loc, i), &mut p) {
                    rows.push(row);
                }
            }
        }
    }
    p.finish()?;
    let mut ingest = Ingest::new(cx, scope, deployment.deployment_id, None);
    ingest.cohort.name = name.unwrap_or_default();
    let mut members = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        ingest.cohort.result.total_records += 1;
        match row {
            Ok(m) => {
                ingest.cohort.result.valid_records += 1;
                members.push(m);
            }
            Err(reason) => {
                ingest.cohort.result.rejected_records += 1;
                ingest.cohort.rejections.push(CohortRejection {
                    row: i as u64 + 1,
                    reason,
                });
            }
        }
    }
    ingest.cohort.status = CohortStatus::Completed;
    let state = &cx.state;
    let _write = state.write_lock().await;
    state
        .store
        .put_cohort(&ingest.scope, &ingest.cohort)
        .await?;
    if !members.is_empty() {
        let rows = members.len() as u64;
        state
            .store
            .insert_cohort_members(&ingest.scope, &ingest.cohort.deployment_id, &members)
            .await?;
        state
            .apply(&[Change::UpsertCohortMembers(
                ingest.scope.clone(),
                ingest.cohort.deployment_id.clone(),
                members,
            )])
            .await;
        state
            .metrics
            .cohort_rows
            .with_label_values(&["valid"])
            .inc_by(rows);
    }
    state
        .metrics
        .cohort_rows
        .with_label_values(&["rejected"])
        .inc_by(ingest.cohort.result.rejected_records);
    Ok(json_response(StatusCode::CREATED, &view(&ingest.cohort)))
}

/// One user of a stream request: structure problems go to `p`; a bad phone number is the row's
/// rejection reason.
fn stream_user(
    v: &Value,
    country_code: Option<&str>,
    loc: Loc,
    p: &mut Problems,
) -> Option<Result<CohortMember, String>> {
    let m = object(v, &loc, p)?;
    deny_unknown(
        m,
        &[
            "phone_number",
            "user_identifier",
            "app_variables",
            "app_overrides",
        ],
        &loc,
        p,
    );
    let before = p.len();
    let phone =
        required(m, "phone_number", &loc, p).and_then(|v| string(v, at(&loc, "phone_number"), p));
    let user_identifier =
        optional(m, "user_identifier").and_then(|v| string(v, at(&loc, "user_identifier"), p));
    let mut app_variables = BTreeMap::new();
    if let Some(vars) =
        optional(m, "app_variables").and_then(|v| object(v, &at(&loc, "app_variables"), p))
    {
        for (k, v) in vars {
            match v {
                Value::String(s) => {
                    app_variables.insert(k.clone(), s.clone());
                }
                Value::Number(_) | Value::Bool(_) => {
                    app_variables.insert(k.clone(), v.to_string());
                }
                Value::Null => {}
                _ => p.push(
                    at(&at(&loc, "app_variables"), k.as_str()),
                    "string_type",
                    "Input should be a valid string",
                ),
            }
        }
    }
    let app_overrides =
        optional(m, "app_overrides").and_then(|v| overrides(v, at(&loc, "app_overrides"), p));
    if p.len() != before {
        return None;
    }
    let phone = phone?;
    Some(match normalize_number(phone, country_code) {
        Err(e) => Err(format!("invalid phone number {phone:?}: {e}")),
        Ok(e164) => {
            let phone_number = e164.to_string();
            Ok(CohortMember {
                user_identifier: user_identifier
                    .map_or_else(|| phone_number.clone(), str::to_owned),
                phone_number,
                app_variables,
                app_overrides: app_overrides.unwrap_or_default(),
            })
        }
    })
}

fn overrides(v: &Value, loc: Loc, p: &mut Problems) -> Option<AppOverrides> {
    let m: &Map<String, Value> = object(v, &loc, p)?;
    let names: Vec<&str> = OverrideField::ALL.iter().map(|(n, _)| *n).collect();
    deny_unknown(m, &names, &loc, p);
    let mut o = AppOverrides::default();
    for (name, field) in OverrideField::ALL {
        if let Some(s) = optional(m, name).and_then(|v| string(v, at(&loc, name), p)) {
            field.set(&mut o, s.to_owned());
        }
    }
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cols: &[&str]) -> Vec<String> {
        cols.iter().map(|c| c.to_string()).collect()
    }

    const ISSUE_MAPPING: &str = r#"{"phone_number":{"column_name":"mobile"},"user_identifier":{"column_name":"customer_id","required":true},"app_variables":{"customer_name":{"column_name":"name"}},"app_overrides":{"initial_language_name":{"column_name":"language"}}}"#;

    #[test]
    fn the_issue_mapping_turns_rows_into_members_with_reasons_for_rejects() {
        let mapping = parse_mapping(ISSUE_MAPPING.as_bytes()).unwrap();
        let b = bind(
            &mapping,
            &header(&["customer_id", "mobile", "name", "language"]),
        )
        .unwrap();
        let row = |cols: &[&str]| header(cols);
        let m = member_from_row(
            &b,
            &row(&["c1", "080 4716 8000", "Asha", "Hindi"]),
            Some("91"),
        )
        .unwrap();
        assert_eq!(m.phone_number, "+918047168000");
        assert_eq!(m.user_identifier, "c1");
        assert_eq!(
            m.app_variables.get("customer_name").map(String::as_str),
            Some("Asha")
        );
        assert_eq!(
            m.app_overrides.initial_language_name.as_deref(),
            Some("Hindi")
        );
        let bad_phone =
            member_from_row(&b, &row(&["c2", "not-a-number", "B", ""]), Some("91")).unwrap_err();
        assert!(bad_phone.starts_with("invalid phone number"), "{bad_phone}");
        let no_id = member_from_row(&b, &row(&["", "+918047168001", "C", ""]), None).unwrap_err();
        assert_eq!(no_id, "missing required column \"customer_id\"");
        let short = member_from_row(&b, &row(&["c4"]), None).unwrap_err();
        assert_eq!(short, "missing required column \"mobile\"");
    }

    #[test]
    fn a_mapped_column_missing_from_the_header_is_a_422_naming_it() {
        let mapping = parse_mapping(ISSUE_MAPPING.as_bytes()).unwrap();
        let Err(ApiError::Validation(errs)) = bind(&mapping, &header(&["mobile", "name"])) else {
            panic!()
        };
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].msg.contains("customer_id"));
    }

    #[test]
    fn bad_transformation_files_report_every_problem() {
        let Err(ApiError::Validation(errs)) = parse_mapping(
            br#"{"phone_number":{},"app_overrides":{"voice":{"column_name":"v"}},"x":1}"#,
        ) else {
            panic!()
        };
        let kinds: Vec<&str> = errs.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["extra_forbidden", "missing", "extra_forbidden"]);
    }

    #[test]
    fn without_a_mapping_the_header_names_the_fields() {
        let h = header(&[
            "phone_number",
            "user_identifier",
            "initial_bot_message",
            "tier",
        ]);
        let b = bind(&default_mapping(&h), &h).unwrap();
        let m = member_from_row(&b, &header(&["+12125551234", "u1", "Hi!", "gold"]), None).unwrap();
        assert_eq!(m.user_identifier, "u1");
        assert_eq!(m.app_overrides.initial_bot_message.as_deref(), Some("Hi!"));
        assert_eq!(
            m.app_variables.get("tier").map(String::as_str),
            Some("gold")
        );
    }
}
