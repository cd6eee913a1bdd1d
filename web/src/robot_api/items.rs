//! Pulse, claim and item actions of the robot API v1.

use super::auth::robot;
use crate::body::json_body;
use crate::error::{ApiError, respond};
use crate::query::query;
use crate::state::{AppState, with_state};
use crate::views;
use orchestrator_actors::domain::{Robot, RobotStatus};
use orchestrator_actors::lifecycle::{FailKind, RobotAction};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// Longest long-poll a claim may ask for.
const MAX_WAIT_SECS: f64 = 60.0;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PulseBody {
    status: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimQuery {
    max: Option<usize>,
    wait: Option<f64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionBody {
    lease_id: String,
    observation: Option<String>,
    output: Option<Value>,
    kind: Option<FailKind>,
    message: Option<String>,
}

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let max = state.config.json_limit();
    let pulse = warp::path!("api" / "v1" / "robot" / "pulse")
        .and(warp::post())
        .and(robot(state.clone()))
        .and(with_state(state.clone()))
        .and(json_body::<PulseBody>(max))
        .then(|robot, state, body| async move { respond(pulse(robot, state, body).await) });
    let claim = warp::path!("api" / "v1" / "robot" / "items" / "claim")
        .and(warp::post())
        .and(robot(state.clone()))
        .and(with_state(state.clone()))
        .and(query::<ClaimQuery>())
        .then(|robot, state, q| async move { respond(claim(robot, state, q).await) });
    let act = warp::path!("api" / "v1" / "robot" / "items" / i64 / String)
        .and(warp::post())
        .and(robot(state.clone()))
        .and(with_state(state))
        .and(json_body::<ActionBody>(max))
        .then(|id, verb, robot, state, body| async move {
            respond(act(id, verb, robot, state, body).await)
        });
    pulse.or(claim).unify().or(act).unify().boxed()
}

async fn pulse(
    robot: Robot,
    state: AppState,
    body: PulseBody,
) -> Result<impl warp::Reply, ApiError> {
    let mut robot = robot;
    if let Some(status) = body.status {
        let status: RobotStatus = status.parse().map_err(|e: String| {
            ApiError::unprocessable("invalid_status", format!("status {e}"))
        })?;
        robot = state
            .dispatcher
            .set_own_status(&robot, status)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the robot no longer exists"))?;
    }
    let interval = state.config.pulse_timeout / 3;
    Ok(warp::reply::json(&views::PulseView {
        id: robot.id,
        name: robot.name,
        status: robot.status,
        capacity: robot.capacity,
        processes: robot.processes,
        pulse_interval_ms: interval.as_millis() as u64,
        pulse_timeout_ms: state.config.pulse_timeout.as_millis() as u64,
        disabled_by_admin: robot.disabled_by_admin,
    }))
}

async fn claim(robot: Robot, state: AppState, q: ClaimQuery) -> Result<impl warp::Reply, ApiError> {
    let max = q.max.unwrap_or(robot.capacity as usize);
    if max == 0 || max > 1000 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "max runs from 1 to 1000",
        ));
    }
    let wait = q.wait.unwrap_or(0.0);
    if !(0.0..=MAX_WAIT_SECS).contains(&wait) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("wait runs from 0 to {MAX_WAIT_SECS} seconds"),
        ));
    }
    let items = state
        .dispatcher
        .claim(&robot, max, Duration::from_secs_f64(wait))
        .await?;
    let body: Vec<views::LeasedItemView> = items.iter().map(views::leased_item).collect();
    Ok(warp::reply::json(&body))
}

async fn act(
    id: i64,
    verb: String,
    robot: Robot,
    state: AppState,
    body: ActionBody,
) -> Result<impl warp::Reply, ApiError> {
    let action = match verb.as_str() {
        "start" => RobotAction::Start,
        "renew" => RobotAction::Renew,
        "release" => RobotAction::Release,
        "complete" => RobotAction::Complete {
            observation: body.observation,
            output: body.output,
        },
        "fail" => RobotAction::Fail {
            kind: body.kind.ok_or_else(|| {
                ApiError::bad_request("invalid_body", "fail needs kind: business or application")
            })?,
            message: body.message.unwrap_or_default(),
        },
        _ => return Err(ApiError::not_found("no such route")),
    };
    let item = state
        .dispatcher
        .act(robot.id, id, Some(&body.lease_id), &action)
        .await?;
    Ok(warp::reply::json(&views::item_state(&item)))
}
