//! What every handler may reach: the store and the node's HTTP settings.

use crate::jwt::JwtKeys;
use orchestrator_actors::Store;
use orchestrator_actors::dispatcher::Dispatcher;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use warp::Filter;

/// Settings of the HTTP surfaces.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Largest accepted CSV upload in bytes.
    pub max_upload_bytes: u64,
    /// Largest accepted JSON body in bytes.
    pub max_json_bytes: u64,
    /// How long a JSON body may take to arrive; an upload must deliver data at least this
    /// often.
    pub body_timeout: Duration,
    /// How long a whole upload may take.
    pub upload_timeout: Duration,
    /// Columns, field and row sizes an uploaded CSV may have.
    pub csv_limits: orchestrator_actors::csv_ingest::CsvLimits,
    /// How long a login token stays valid.
    pub jwt_ttl: Duration,
    /// A robot silent this long counts as disconnected.
    pub pulse_timeout: Duration,
}

impl WebConfig {
    /// The bound on a JSON request body.
    pub fn json_limit(&self) -> crate::body::BodyLimit {
        crate::body::BodyLimit {
            max_bytes: self.max_json_bytes,
            timeout: self.body_timeout,
        }
    }
}

/// What the web layer shares: the store, dispatch, login keys and settings.
#[derive(Debug)]
pub struct AppParts {
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub jwt: JwtKeys,
    pub config: WebConfig,
    /// Sign-in throttling and the password-hashing bound.
    pub logins: crate::login_guard::LoginGuard,
}

/// Shared state of the web layer; one pointer, so a clone is one reference-count increment.
/// Every filter stage of every request clones it: as a struct of a dozen `Arc`s (and a
/// `String`) those clones and drops were about 16% of the node's CPU under REST load (`perf`).
#[derive(Debug, Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// Hands a clone of the state to a handler.
pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}
