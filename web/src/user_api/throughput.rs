//! `GET /api/v1/stats/throughput?minutes=60`: items robots finished in each of the last minutes,
//! oldest first, the current (partial) minute last. Read from per-minute counters.

use crate::auth::{AuthUser, signed_in};
use crate::error::{ApiError, respond};
use crate::query::query;
use crate::state::{AppState, with_state};
use crate::views;
use orchestrator_actors::domain::now_millis;
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThroughputQuery {
    #[serde(default = "default_minutes")]
    minutes: i64,
}

fn default_minutes() -> i64 {
    60
}

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "stats" / "throughput")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state))
        .and(query::<ThroughputQuery>())
        .then(
            |user: AuthUser, state: AppState, q: ThroughputQuery| async move {
                respond(
                    async {
                        // Node-wide figures: they show other users' work.
                        user.require_admin()?;
                        if !(1..=1440).contains(&q.minutes) {
                            return Err(ApiError::bad_request(
                                "invalid_minutes",
                                "minutes must be between 1 and 1440",
                            ));
                        }
                        Ok(warp::reply::json(&throughput(&state, q.minutes).await?))
                    }
                    .await,
                )
            },
        )
        .boxed()
}

/// The last `minutes` minutes as JSON; also what the dashboard's live events carry.
pub(crate) async fn throughput(
    state: &AppState,
    minutes: i64,
) -> Result<views::ThroughputView, ApiError> {
    let rows = state.store.recent_throughput(minutes, now_millis()).await?;
    Ok(views::throughput(&rows))
}
