//! `GET /api/v1/cluster` (admins): the nodes sharing this store, from their membership rows.

use crate::auth::{AuthUser, signed_in};
use crate::error::{ApiError, respond};
use crate::state::{AppState, with_state};
use crate::views::{self, ClusterView};
use orchestrator_actors::domain::now_millis;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "cluster")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state))
        .then(|user: AuthUser, state: AppState| async move {
            respond(
                cluster(&state, &user)
                    .await
                    .map(|body| warp::reply::json(&body)),
            )
        })
        .boxed()
}

async fn cluster(state: &AppState, user: &AuthUser) -> Result<ClusterView, ApiError> {
    user.require_admin()?;
    let nodes = state.store.nodes().await?;
    let singletons = state.store.singletons().await?;
    let config = state.dispatcher.config();
    Ok(views::cluster(
        &config.node_id,
        config.dead_after,
        &nodes,
        &singletons,
        config.hints.stats(),
        now_millis(),
    ))
}
