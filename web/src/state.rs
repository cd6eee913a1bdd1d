//! What every handler may reach: the store and the node's HTTP settings.

use crate::auth::JwtKeys;
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
    /// How long a login token stays valid.
    pub jwt_ttl: Duration,
    /// A robot silent this long counts as disconnected.
    pub pulse_timeout: Duration,
}

/// Shared state of the web layer; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub jwt: Arc<JwtKeys>,
    pub config: Arc<WebConfig>,
}

/// Hands a clone of the state to a handler.
pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}
