//! The errors of the core, at the bottom of it: the store's, dispatch's, and the one table of
//! codes clients are answered with ([`code`]).

pub use crate::codes::{Code, code};
use crate::lifecycle::TransitionError;
use crate::limits::PayloadError;
use thiserror::Error;

/// Failures of the SurrealDB-backed store. A database error is sorted into these once, where
/// it is converted ([`StoreError::from`]); nothing else reads an error's text.
#[derive(Debug, Clone, Error)]
pub enum StoreError {
    /// The transaction lost a write-write race with another; sending it again may succeed.
    #[error("write conflict: {0}")]
    Contention(String),
    /// A guard written into the transaction refused it (a row it read had moved on, or the
    /// task was cancelled meanwhile): nothing was written; re-read and plan again.
    #[error("the data moved on: {0}")]
    Moved(String),
    /// The database could not be reached or went away.
    #[error("the database is unreachable: {0}")]
    Unreachable(String),
    /// The database answered with any other error.
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
    /// The one place a SurrealDB error is classified. The SDK's kinds decide where they exist
    /// (they survive the `ws://` protocol); a unique index's refusal is reported with the
    /// generic internal kind, so only its text tells it apart.
    fn from(err: surrealdb::Error) -> Self {
        use surrealdb::types::QueryError;
        let text = err.to_string();
        // Sibling statements of a transaction that failed report "not executed"; the statement
        // that failed it is classified on its own.
        if let Some(QueryError::TransactionConflict | QueryError::NotExecuted) = err.query_details()
        {
            return StoreError::Contention(text);
        }
        if err.is_thrown() {
            StoreError::Moved(text)
        } else if err.is_connection() {
            StoreError::Unreachable(text)
        } else if text.contains("already contains") {
            StoreError::Conflict(text)
        } else if text.contains("can be retried") {
            // A conflict the storage engine reported without its kind.
            StoreError::Contention(text)
        } else {
            StoreError::Database(text)
        }
    }
}

/// Whether `err` only says its statement was skipped because another statement of the same
/// transaction failed (that other statement's error tells why).
pub(crate) fn not_executed(err: &surrealdb::Error) -> bool {
    matches!(
        err.query_details(),
        Some(surrealdb::types::QueryError::NotExecuted)
    )
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
    /// Whether sending the same transaction again may succeed (it lost an optimistic race).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Contention(_))
    }
}

/// An actor of dispatch, as errors and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Supervisor,
    Registry,
    Session,
    Batcher,
    Director,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Supervisor => "dispatch supervisor",
            Part::Registry => "robot registry",
            Part::Session => "robot session",
            Part::Batcher => "transition batcher",
            Part::Director => "task director",
        })
    }
}

/// Why dispatch could not serve a request just now; the client is asked to send it again.
#[derive(Debug, Clone, Error)]
pub enum Unavailable {
    /// Dispatch is restarting after a failure (or not started yet).
    #[error("dispatch is not running")]
    NotRunning,
    /// The actor did not answer within the call's deadline.
    #[error("the {0} did not answer in time")]
    Timeout(Part),
    /// The actor stopped or its mailbox is closed.
    #[error("the {part} is down: {reason}")]
    ActorDown { part: Part, reason: String },
    /// The robot was deleted while its request was served.
    #[error("robot {0} no longer exists")]
    RobotGone(i64),
    /// The item changed under every attempt to write it.
    #[error("item {0} kept changing; try again")]
    Contended(i64),
    /// The batch the request rode in could not be written.
    #[error("the batch write failed: {0}")]
    Batch(StoreError),
}

/// Why a dispatch request failed.
#[derive(Debug, Clone, Error)]
pub enum DispatchError {
    #[error("item {0} not found")]
    ItemNotFound(i64),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("dispatch is unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    #[error("{ROBOT_DISABLED}")]
    RobotDisabled,
}

/// What a robot is told when it tries to make itself ACTIVE after an administrator set it
/// INACTIVE.
pub const ROBOT_DISABLED: &str = "an administrator set this robot INACTIVE; it gets no work \
                                  until an administrator sets it ACTIVE";

impl StoreError {
    /// The code a client is answered with: a unique index's refusal is a conflict; anything
    /// else from the store is worth sending again once it is back.
    pub fn code(&self) -> Code {
        match self {
            StoreError::Conflict(_) => code::CONFLICT,
            _ => code::STORE_UNAVAILABLE,
        }
    }

    /// What a client may be told: a unique index's refusal as it is; any other store failure
    /// is logged under the request id, and only the id is told.
    pub fn public_message(&self, request_id: Option<&str>) -> String {
        match self {
            StoreError::Conflict(message) => message.clone(),
            other => conceal_as(request_id, other),
        }
    }
}

impl DispatchError {
    /// The code a client is answered with.
    pub fn code(&self) -> Code {
        match self {
            DispatchError::ItemNotFound(_) => code::NOT_FOUND,
            DispatchError::Payload(err) => err.code(),
            DispatchError::RobotDisabled => code::ROBOT_DISABLED,
            DispatchError::Transition(TransitionError::NotYours { .. }) => code::NOT_YOUR_ITEM,
            DispatchError::Transition(TransitionError::StaleLease { .. }) => code::STALE_LEASE,
            DispatchError::Transition(TransitionError::Illegal { .. }) => code::ILLEGAL_TRANSITION,
            DispatchError::Store(err) => err.code(),
            DispatchError::Unavailable(_) => code::UNAVAILABLE,
        }
    }

    /// What a client is told: the error, except a store failure's text or why dispatch is
    /// unavailable, which are logged under the request id instead.
    pub fn public_message(&self, request_id: Option<&str>) -> String {
        match self {
            DispatchError::Store(err) => err.public_message(request_id),
            DispatchError::Unavailable(cause) => unavailable_as(request_id, cause),
            other => other.to_string(),
        }
    }

    /// Whether the same request may succeed later (dispatch or the store was busy or away).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DispatchError::Unavailable(_) | DispatchError::Store(_)
        )
    }
}
