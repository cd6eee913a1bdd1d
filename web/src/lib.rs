//! The HTTP surfaces of a node, as warp filters. `web` holds no per-robot state: it
//! authenticates, parses, and hands each request to the store (and, for dispatch, to actors).
//!
//! ```text
//!   /healthz          readiness
//!   /api/v1/...       user API (Bearer JWT)          user_api::user_api
//!   /api/v1/robot/... robot API v1 (Token)           robot_api::robot_api
//!   /api/robots|tasks|items  the prototype's API      seed_api::seed_api
//!   /login, /, /tasks, ...   browser pages (cookie)   dashboard::dashboard
//!   /docs, /openapi.json     API reference            dashboard::openapi
//! ```

pub mod auth;
pub mod body;
pub mod dashboard;
pub mod error;
pub mod jwt;
pub mod login_guard;
pub mod metrics;
pub mod query;
pub mod request_id;
pub mod robot_api;
pub mod seed_api;
pub mod server;
pub mod state;
pub mod user_api;
pub mod views;

pub use state::{AppParts, AppState, WebConfig};

use warp::Filter;
use warp::Reply;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

/// `GET /healthz`: 200 while the store answers and dispatch runs; 503 naming the component
/// otherwise.
pub fn health(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("healthz")
        .and(warp::get())
        .and(state::with_state(state))
        .then(|state: AppState| async move {
            if let Some((component, reason)) = state.dispatcher.health_problem() {
                return error::ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "dispatch_down",
                    format!("{component} failed ({reason}); dispatch is restarting"),
                )
                .into_response();
            }
            if state.store.ping().await {
                // Damaged chunks do not stop the node (their items are left out), but an
                // operator must hear of them: "degraded", still 200.
                let unreadable = state.store.unreadable_chunks();
                let status = if unreadable.is_empty() {
                    "ok"
                } else {
                    "degraded"
                };
                warp::reply::json(&views::HealthView {
                    status: status.into(),
                    unreadable_chunks: unreadable,
                })
                .into_response()
            } else {
                error::ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store does not answer",
                )
                .into_response()
            }
        })
        .boxed()
}

/// Every route of the node, with errors rendered as JSON (the server runs each in its
/// request-id span: `server::serve`).
pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
    health(state.clone())
        .or(user_api::user_api(state.clone()))
        .unify()
        .or(robot_api::robot_api(state.clone()))
        .unify()
        .or(seed_api::seed_api(state.clone()))
        .unify()
        .or(dashboard::dashboard(state))
        .unify()
        .recover(error::handle_rejection)
        .unify()
        .map(harden)
}

/// Headers every response carries: no content-type sniffing; JSON is never cached (it is
/// per-user and changes by the second).
fn harden(mut response: Response) -> Response {
    use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
    let headers = response.headers_mut();
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if json {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
