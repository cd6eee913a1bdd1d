//! `GET /api/v1/stats`: dashboard figures from counters, never from scanning items.

use crate::auth::{AuthUser, signed_in};
use crate::error::{ApiError, respond};
use crate::state::{AppState, with_state};
use crate::views::{self, StatsView};
use orchestrator_actors::domain::now_millis;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "stats")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state))
        .then(|user: AuthUser, state: AppState| async move {
            respond(
                stats(&state, &user)
                    .await
                    .map(|body| warp::reply::json(&body)),
            )
        })
        .boxed()
}

/// The figures `GET /api/v1/stats` answers; also what the dashboard's live events carry. An
/// operator's task and item figures cover their own tasks only.
pub(crate) async fn stats(state: &AppState, user: &AuthUser) -> Result<StatsView, ApiError> {
    let since = now_millis() - state.config.pulse_timeout.as_millis() as i64;
    let owner = (!user.is_admin()).then_some(user.id);
    let s = state.store.stats(since, owner).await?;
    Ok(views::stats(&s))
}
