//! An upload in progress: rows parsed as they arrive, batches committed by a writer task that
//! records the counts with each batch and applies the rows to the routing table.

use super::mapping::{bind, default_mapping, member_from_row, BoundMapping, Mapping};
use super::*;

/// The batch queue into the writer task, and the task (which returns the first store error).
pub(super) type Writer = (
    mpsc::Sender<(Vec<CohortMember>, Cohort)>,
    JoinHandle<Result<(), ApiError>>,
);

/// An upload in progress once its header is bound.
pub(super) struct Ingest {
    pub(super) state: AppState,
    pub(super) scope: Scope,
    pub(super) cohort: Cohort,
    pub(super) country_code: Option<String>,
    pub(super) bound: Option<BoundMapping>,
    pub(super) mapping: Option<Mapping>,
    pub(super) csv: CsvReader,
    pub(super) records: Vec<Vec<String>>,
    pub(super) batch: Vec<CohortMember>,
    pub(super) writer: Option<Writer>,
}

impl Ingest {
    pub(super) fn new(
        cx: &Ctx,
        scope: Scope,
        deployment_id: String,
        mapping: Option<Mapping>,
    ) -> Self {
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
    pub(super) async fn feed(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.csv.feed(chunk, &mut self.records).map_err(csv_error)?;
        self.drain_records().await
    }

    /// End of the CSV: last record, last batch, writer drained.
    pub(super) async fn finish_csv(&mut self) -> Result<(), ApiError> {
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

    pub(super) async fn drain_records(&mut self) -> Result<(), ApiError> {
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
    pub(super) async fn start(&mut self, header: &[String]) -> Result<(), ApiError> {
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

    pub(super) async fn flush(&mut self) -> Result<(), ApiError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_ROWS));
        let Some((tx, _)) = &self.writer else {
            return Ok(());
        };
        if tx.send((batch, self.cohort.clone())).await.is_err() {
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
    pub(super) async fn close(&mut self, status: CohortStatus) -> Result<(), ApiError> {
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

/// The writer task: commit each batch together with the cohort's counts as of that batch (so
/// `GET …/cohorts/{id}` shows progress while the upload streams), then apply the rows to the
/// routing table.
///
/// Routing is applied in growing steps ([`routing_step`]): each apply copies the cohort shards
/// the rows touch, so applying every 10k-row batch of a 10M-row upload would copy the whole
/// cohort a thousand times. Rows already committed but not yet applied are applied when the
/// upload ends, however it ends.
pub(super) async fn write_batches(
    state: AppState,
    scope: Scope,
    deployment_id: String,
    mut rx: mpsc::Receiver<(Vec<CohortMember>, Cohort)>,
) -> Result<(), ApiError> {
    let mut pending: Vec<CohortMember> = Vec::new();
    let mut applied = 0usize;
    let apply = |rows: Vec<CohortMember>| {
        Change::UpsertCohortMembers(scope.clone(), deployment_id.clone(), rows)
    };
    let mut outcome = Ok(());
    while let Some((batch, progress)) = rx.recv().await {
        let _write = state.write_lock().await;
        let committed = async {
            state
                .store
                .insert_cohort_members(&scope, &deployment_id, &batch)
                .await?;
            state.store.put_cohort(&scope, &progress).await
        }
        .await;
        if let Err(e) = committed {
            outcome = Err(e.into());
            break;
        }
        state
            .metrics
            .cohort_rows
            .with_label_values(&["valid"])
            .inc_by(batch.len() as u64);
        pending.extend(batch);
        if pending.len() >= routing_step(applied) {
            applied += pending.len();
            state.apply(&[apply(std::mem::take(&mut pending))]).await;
        }
    }
    if !pending.is_empty() {
        let _write = state.write_lock().await;
        state.apply(&[apply(pending)]).await;
    }
    outcome
}

/// Rows to collect before the next routing apply, given the rows applied so far: a batch at
/// first (small uploads are live batch by batch), then a quarter of what is applied (the total
/// copying stays a small multiple of the cohort), capped so the rows waiting stay a few
/// hundred MB at most.
pub(super) fn routing_step(applied: usize) -> usize {
    const MAX_PENDING_ROWS: usize = 250_000;
    (applied / 4).clamp(BATCH_ROWS, MAX_PENDING_ROWS)
}
