//! `GET /api/v1/stats`: dashboard figures from counters, never from scanning items.

use crate::auth::{AuthUser, signed_in};
use crate::error::{ApiError, respond};
use crate::state::{AppState, with_state};
use orchestrator_actors::domain::now_millis;
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "stats")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state))
        .then(|_user: AuthUser, state: AppState| async move {
            respond(stats(&state).await.map(|body| warp::reply::json(&body)))
        })
        .boxed()
}

/// The figures `GET /api/v1/stats` answers; also what the dashboard's live events carry.
pub(crate) async fn stats(state: &AppState) -> Result<Value, ApiError> {
    let since = now_millis() - state.config.pulse_timeout.as_millis() as i64;
    let s = state.store.stats(since).await?;
    Ok(json!({
        "robots": { "total": s.robots_total, "active": s.robots_active,
                    "connected": s.robots_connected },
        "tasks": { "total": s.tasks_total, "by_status": s.tasks_by_status },
        "items": s.items,
    }))
}
