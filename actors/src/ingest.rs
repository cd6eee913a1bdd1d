//! Streams an uploaded CSV into the store, all or nothing, in bounded memory.
//!
//! ```text
//!  body chunks ──feeder──► [bytes, 16] ──► CsvParser (blocking thread) ──► [batches, 4]
//!                                                                             │
//!                        StagedUpload ◄── writer: reserve ids, INSERT 1,000 ◄─┘
//!                           │ commit(process): task UPLOADING → CREATED, one write
//!                           └ discard(): delete what was staged
//! ```
//! The feeder counts bytes and aborts past the size limit; any error on any stage stops all of
//! them (dropped channels) and the staged rows are deleted before the caller hears of it.

use crate::csv_ingest::{CsvError, CsvLimits, CsvParser};
use crate::domain::Task;
use crate::error::StoreError;
use crate::store::{NewItem, Store};
use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use std::io::{self, Read};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Rows per INSERT statement: four whole chunks.
pub const BATCH_ROWS: usize = 4 * crate::store::CHUNK_ITEMS as usize;

/// Why an upload was refused or failed.
#[derive(Debug, Error)]
pub enum IngestError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("process {0} does not exist")]
    ProcessNotFound(i64),
    #[error("process {0} is disabled")]
    ProcessDisabled(i64),
    #[error("the upload names no process (give process_id)")]
    MissingProcess,
    #[error("the upload was interrupted: {0}")]
    Body(String),
    #[error("the upload {0}")]
    Timeout(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IngestError {
    /// The code a client is answered with.
    pub fn code(&self) -> crate::codes::Code {
        use crate::codes::code;
        match self {
            IngestError::Csv(csv) => csv.code(),
            IngestError::TooLarge { .. } => code::PAYLOAD_TOO_LARGE,
            IngestError::ProcessNotFound(_) => code::PROCESS_NOT_FOUND,
            IngestError::ProcessDisabled(_) => code::PROCESS_DISABLED,
            IngestError::MissingProcess => code::MISSING_PROCESS,
            IngestError::Body(_) => code::UPLOAD_INTERRUPTED,
            IngestError::Timeout(_) => code::UPLOAD_TIMEOUT,
            IngestError::Store(store) => store.code(),
        }
    }

    /// What a client is told (a store failure's text stays in the log, under the request id).
    pub fn public_message(&self, request_id: Option<&str>) -> String {
        match self {
            IngestError::Store(store) => store.public_message(request_id),
            other => other.to_string(),
        }
    }
}

/// Who uploads what.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub owner_id: i64,
    pub filename: Option<String>,
    pub priority: i64,
    /// Largest accepted body in bytes.
    pub max_bytes: u64,
    /// Columns, field and row sizes the CSV may have.
    pub csv_limits: CsvLimits,
    /// The body must deliver data at least this often...
    pub idle_timeout: std::time::Duration,
    /// ...and arrive whole within this long.
    pub total_timeout: std::time::Duration,
}

/// Items written under an invisible task, waiting for [`StagedUpload::commit`].
#[derive(Debug)]
#[must_use = "a staged upload must be committed or discarded"]
pub struct StagedUpload {
    task_id: i64,
    item_count: i64,
    id_ranges: Vec<(i64, i64)>,
}

impl StagedUpload {
    /// The staged task's id.
    pub fn task_id(&self) -> i64 {
        self.task_id
    }

    /// Makes the task visible for `process_id` if that process exists and is enabled; otherwise
    /// discards everything staged.
    pub async fn commit(self, store: &Store, process_id: i64) -> Result<Task, IngestError> {
        if let Err(err) = check_process(store, process_id).await {
            self.discard(store).await;
            return Err(err);
        }
        match store
            .commit_staged_task(self.task_id, process_id, self.item_count, &self.id_ranges)
            .await
        {
            Ok(Some(task)) => {
                info!(task_id = task.id, items = task.item_count, "task uploaded");
                metrics::counter!("orchestrator_upload_rows_total")
                    .increment(task.item_count.max(0) as u64);
                Ok(task)
            }
            Ok(None) => Err(StoreError::Malformed(format!(
                "staged task {} vanished before commit",
                self.task_id
            ))
            .into()),
            Err(err) => {
                self.discard(store).await;
                Err(err.into())
            }
        }
    }

    /// Deletes the staged task and its items. Failures are logged; the stale-upload sweep retries.
    pub async fn discard(self, store: &Store) {
        if let Err(err) = store.discard_staged_task(self.task_id).await {
            warn!(task_id = self.task_id, error = %err, "could not discard a staged upload");
        }
    }
}

/// Fails unless `process_id` names an enabled process.
pub async fn check_process(store: &Store, process_id: i64) -> Result<(), IngestError> {
    match store.process(process_id).await? {
        None => Err(IngestError::ProcessNotFound(process_id)),
        Some(p) if !p.enabled => Err(IngestError::ProcessDisabled(process_id)),
        Some(_) => Ok(()),
    }
}

enum Parsed {
    Header(Vec<String>),
    Rows(Vec<NewItem>),
}

/// Streams `body` into the store under a staged task. Nothing is visible until the returned
/// upload is committed; on error nothing is left behind.
pub async fn stage_csv<S, B, E>(
    store: &Store,
    body: S,
    options: &UploadOptions,
) -> Result<StagedUpload, IngestError>
where
    S: Stream<Item = Result<B, E>> + Send + Unpin,
    B: Buf + Send,
    E: std::fmt::Display,
{
    let (byte_tx, byte_rx) = mpsc::channel::<Result<Bytes, String>>(16);
    let (batch_tx, batch_rx) = mpsc::channel::<Result<Parsed, CsvError>>(4);
    let limits = options.csv_limits;
    let parser = tokio::task::spawn_blocking(move || parse_blocking(byte_rx, batch_tx, limits));
    let feeder = feed(body, byte_tx, options);
    let writer = write_batches(store, batch_rx, options);
    let (fed, written) = tokio::join!(feeder, writer);
    // The parser ends once both of its channels are closed; it never holds the result.
    let _ = parser.await;
    match (fed, written) {
        (Ok(()), Ok(staged)) => Ok(staged),
        // A body error explains any parse error it caused (a truncated last row), so it wins.
        (Err(body_error), written) => {
            if let Ok(staged) = written {
                staged.discard(store).await;
            }
            Err(body_error)
        }
        (Ok(()), Err(err)) => Err(err),
    }
}

async fn feed<S, B, E>(
    mut body: S,
    byte_tx: mpsc::Sender<Result<Bytes, String>>,
    options: &UploadOptions,
) -> Result<(), IngestError>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: Buf,
    E: std::fmt::Display,
{
    let max_bytes = options.max_bytes;
    let deadline = tokio::time::Instant::now() + options.total_timeout;
    let mut total: u64 = 0;
    loop {
        let wait = options
            .idle_timeout
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let next = match tokio::time::timeout(wait, body.next()).await {
            Ok(next) => next,
            Err(_) => {
                let message = if tokio::time::Instant::now() >= deadline {
                    format!("took longer than {}s", options.total_timeout.as_secs())
                } else {
                    format!("sent nothing for {}s", options.idle_timeout.as_secs_f64())
                };
                // The parser may have ended already (it stops at the first refusal); the error is returned below either way.
                let _ = byte_tx.send(Err(message.clone())).await;
                return Err(IngestError::Timeout(message));
            }
        };
        let Some(chunk) = next else { break };
        let mut chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) => {
                let message = err.to_string();
                // The parser may have ended already (it stops at the first refusal); the error is returned below either way.
                let _ = byte_tx.send(Err(message.clone())).await;
                return Err(IngestError::Body(message));
            }
        };
        let bytes = chunk.copy_to_bytes(chunk.remaining());
        total += bytes.len() as u64;
        if total > max_bytes {
            // The parser may have ended already (it stops at the first refusal); the error is returned below either way.
            let _ = byte_tx.send(Err("upload too large".into())).await;
            return Err(IngestError::TooLarge { limit: max_bytes });
        }
        if byte_tx.send(Ok(bytes)).await.is_err() {
            // The parser stopped (bad row); the writer reports why.
            return Ok(());
        }
    }
    Ok(())
}

async fn write_batches(
    store: &Store,
    mut batch_rx: mpsc::Receiver<Result<Parsed, CsvError>>,
    options: &UploadOptions,
) -> Result<StagedUpload, IngestError> {
    let mut staged: Option<StagedUpload> = None;
    let outcome: Result<(), IngestError> = async {
        while let Some(parsed) = batch_rx.recv().await {
            match parsed? {
                Parsed::Header(columns) => {
                    let task_id = store
                        .create_staged_task(
                            options.owner_id,
                            &columns,
                            options.filename.as_deref(),
                            options.priority,
                        )
                        .await?;
                    staged = Some(StagedUpload {
                        task_id,
                        item_count: 0,
                        id_ranges: Vec::new(),
                    });
                }
                Parsed::Rows(rows) => {
                    let upload = staged
                        .as_mut()
                        .ok_or_else(|| StoreError::Malformed("rows before header".into()))?;
                    let count = rows.len() as i64;
                    let first = store.reserve_item_ids(count).await?;
                    store
                        .insert_staged_items(upload.task_id, first, rows)
                        .await?;
                    upload.item_count += count;
                    match upload.id_ranges.last_mut() {
                        Some((_, end)) if *end + 1 == first => *end = first + count - 1,
                        _ => upload.id_ranges.push((first, first + count - 1)),
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    drop(batch_rx);
    match (outcome, staged) {
        (Ok(()), Some(staged)) if staged.item_count > 0 => Ok(staged),
        (Ok(()), Some(staged)) => {
            staged.discard(store).await;
            Err(CsvError::NoRows.into())
        }
        (Ok(()), None) => Err(CsvError::Empty.into()),
        (Err(err), staged) => {
            if let Some(staged) = staged {
                staged.discard(store).await;
            }
            Err(err)
        }
    }
}

fn parse_blocking(
    byte_rx: mpsc::Receiver<Result<Bytes, String>>,
    batch_tx: mpsc::Sender<Result<Parsed, CsvError>>,
    limits: CsvLimits,
) {
    let reader = ChannelReader {
        rx: byte_rx,
        current: Bytes::new(),
    };
    let mut parser = match CsvParser::with_limits(reader, limits) {
        Ok(parser) => parser,
        Err(err) => {
            // The writer may have ended already; it then has the earlier error.
            let _ = batch_tx.blocking_send(Err(err));
            return;
        }
    };
    if batch_tx
        .blocking_send(Ok(Parsed::Header(parser.columns().to_vec())))
        .is_err()
    {
        return;
    }
    loop {
        let next = match parser.next_batch(BATCH_ROWS) {
            Ok(Some(rows)) => Ok(Parsed::Rows(rows)),
            Ok(None) => return,
            Err(err) => Err(err),
        };
        let failed = next.is_err();
        if batch_tx.blocking_send(next).is_err() || failed {
            return;
        }
    }
}

/// Adapts the async byte channel to `std::io::Read` for the csv crate on a blocking thread.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(message)) => return Err(io::Error::other(message)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
