//! Robot authentication: the token's SHA-256 is looked up; a user's JWT is refused here.

use crate::error::ApiError;
use crate::state::AppState;
use orchestrator_actors::domain::Robot;
use orchestrator_actors::security::hash_robot_token;
use warp::{Filter, Rejection};

/// Extracts the robot behind `Authorization: Token <token>` (or `Bearer <token>`), rejecting with
/// 401, and records the request as a pulse.
pub fn robot(state: AppState) -> impl Filter<Extract = (Robot,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
        let state = state.clone();
        async move {
            let robot = authenticate(&state, header.as_deref())
                .await
                .map_err(warp::reject::custom)?;
            state
                .dispatcher
                .connect(&robot)
                .await
                .map_err(|e| warp::reject::custom(ApiError::from(e)))?;
            Ok::<_, Rejection>(robot)
        }
    })
}

/// The robot a header names, without recording a pulse.
pub async fn authenticate(state: &AppState, header: Option<&str>) -> Result<Robot, ApiError> {
    let header = header
        .ok_or_else(|| ApiError::unauthorized("robots send Authorization: Token <robot token>"))?;
    let (scheme, token) = header
        .trim()
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
    if !(scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")) {
        return Err(ApiError::unauthorized(
            "use Authorization: Token <robot token>",
        ));
    }
    let token = token.trim();
    if token.matches('.').count() == 2 {
        return Err(ApiError::unauthorized(
            "user tokens are not accepted on robot routes",
        ));
    }
    state
        .store
        .robot_by_token_hash(&hash_robot_token(token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown robot token"))
}
