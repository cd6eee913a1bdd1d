//! Errors of the store and the ingest pipeline.

use thiserror::Error;

/// Failures of the SurrealDB-backed store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database answered with an error or could not be reached.
    #[error("database error: {0}")]
    Database(String),
    /// A row did not have the shape the code expects (a bug or a foreign write).
    #[error("stored data is malformed: {0}")]
    Malformed(String),
    /// A unique index refused the write.
    #[error("{0}")]
    Conflict(String),
    /// The database holds a newer schema than this binary understands.
    #[error("database schema version {found} is newer than this binary's {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The database keeps items one row each (schema 2 and before) and still holds some.
    #[error(
        "database schema version {found} keeps one row per item and still holds items; this \
         binary (schema {supported}) stores items in chunks and cannot read them: finish or \
         export those tasks with the earlier release, or start on a new database"
    )]
    RowPerItemLayout { found: i64, supported: i64 },
    /// The store URL is not one this node can open.
    #[error("unsupported store url '{0}': use surrealkv://PATH, mem:// or ws://HOST:PORT")]
    UnsupportedUrl(String),
}

impl From<surrealdb::Error> for StoreError {
    fn from(err: surrealdb::Error) -> Self {
        let text = err.to_string();
        if text.contains("already contains") {
            StoreError::Conflict(text)
        } else {
            StoreError::Database(text)
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(err: serde_json::Error) -> Self {
        StoreError::Malformed(err.to_string())
    }
}

/// Logs an internal failure under a fresh request id and returns what a client may be told:
/// the id to quote, never the store's own text.
pub fn conceal(err: &dyn std::fmt::Display) -> String {
    conceal_as(None, err)
}

/// [`conceal`] under the id of the request being served (the one its other log lines and its
/// `x-request-id` header carry), or a fresh one.
pub fn conceal_as(request_id: Option<&str>, err: &dyn std::fmt::Display) -> String {
    let request_id = request_id_or_new(request_id);
    tracing::error!(%request_id, error = %err, "internal failure");
    format!("the store could not complete the request (request id {request_id})")
}

/// What a client is told when dispatch could not serve it just now (an actor busy, restarting
/// or waiting on the store): the cause, which may carry a store's text, is logged at INFO under
/// the request id instead (at WARN, a connect storm of thousands of robots sent back to retry
/// would fill the log).
pub fn unavailable_as(request_id: Option<&str>, cause: &dyn std::fmt::Display) -> String {
    let request_id = request_id_or_new(request_id);
    tracing::info!(%request_id, cause = %cause, "dispatch unavailable; the client was asked to retry");
    format!("dispatch is unavailable just now; send the request again (request id {request_id})")
}

fn request_id_or_new(request_id: Option<&str>) -> String {
    match request_id {
        Some(id) => id.to_string(),
        None => format!("{:016x}", rand::random::<u64>()),
    }
}

impl StoreError {
    /// Whether retrying the same transaction may succeed (optimistic-concurrency conflicts).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(text) => {
                // A commit that lost a write-write race reports every statement as "not executed
                // due to a failed transaction".
                text.contains("can be retried")
                    || text.contains("conflict")
                    || text.contains("due to a failed transaction")
            }
            _ => false,
        }
    }
}
