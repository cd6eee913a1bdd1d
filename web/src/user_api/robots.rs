//! `/api/v1/robots`: any signed-in user reads, admins create, change, rotate tokens and delete.
//! A robot's token is shown once, at creation or rotation, and stored only as a hash.

use crate::auth::{AuthUser, signed_in};
use crate::body::json_body;
use crate::error::{ApiError, respond};
use crate::state::{AppState, with_state};
use crate::views;
use orchestrator_actors::domain::{Platform, RobotStatus, admin_holds};
use orchestrator_actors::security::{hash_robot_token, new_robot_token};
use orchestrator_actors::store::{NewRobot, RobotPatch};
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRobot {
    name: String,
    platform: Option<String>,
    capacity: Option<i64>,
    processes: Option<Vec<i64>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchRobot {
    name: Option<String>,
    platform: Option<String>,
    capacity: Option<i64>,
    processes: Option<Vec<i64>>,
    status: Option<String>,
}

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let max = state.config.json_limit();
    let base = warp::path!("api" / "v1" / "robots");
    let one = warp::path!("api" / "v1" / "robots" / i64);
    let create = base
        .and(warp::post())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .and(json_body::<CreateRobot>(max))
        .then(|user, state, body| async move { respond(create(user, state, body).await) });
    let list = base
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .then(|_user: AuthUser, state| async move { respond(list(state).await) });
    let get = one
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .then(|id, _user: AuthUser, state| async move { respond(get(id, state).await) });
    let patch = one
        .and(warp::patch())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .and(json_body::<PatchRobot>(max))
        .then(|id, user, state, body| async move { respond(patch(id, user, state, body).await) });
    let delete = one
        .and(warp::delete())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .then(|id, user, state| async move { respond(delete(id, user, state).await) });
    let rotate = warp::path!("api" / "v1" / "robots" / i64 / "token")
        .and(warp::post())
        .and(signed_in(state.clone()))
        .and(with_state(state))
        .then(|id, user, state| async move { respond(rotate(id, user, state).await) });
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(rotate)
        .unify()
        .boxed()
}

/// Every robot. A robot with a session here shows what this node's registry plans it with;
/// any other (served by another node of the cluster, or by none) the items it holds in the
/// store.
async fn list(state: AppState) -> Result<impl warp::Reply, ApiError> {
    let timeout = state.config.pulse_timeout;
    let robots = state.store.list_robots().await?;
    let local = state.dispatcher.loads().await.unwrap_or_default();
    let held = state.store.held_counts().await?;
    let body: Vec<_> = robots
        .iter()
        .map(|r| {
            let mut view = views::robot(r, timeout);
            view.load = Some(
                local
                    .iter()
                    .find(|l| l.robot_id == r.id)
                    .map_or_else(|| held.get(&r.id).copied().unwrap_or(0), |l| l.in_flight),
            );
            view
        })
        .collect();
    Ok(warp::reply::json(&body))
}

async fn get(id: i64, state: AppState) -> Result<impl warp::Reply, ApiError> {
    let robot = state.store.robot(id).await?.ok_or_else(|| not_found(id))?;
    Ok(warp::reply::json(&views::robot(
        &robot,
        state.config.pulse_timeout,
    )))
}

async fn delete(id: i64, user: AuthUser, state: AppState) -> Result<impl warp::Reply, ApiError> {
    user.require_admin()?;
    if !state.dispatcher.delete_robot(id).await? {
        return Err(not_found(id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A new token; the old one stops working now, and what the robot held goes back.
async fn rotate(id: i64, user: AuthUser, state: AppState) -> Result<impl warp::Reply, ApiError> {
    user.require_admin()?;
    let token = new_robot_token();
    let robot = state
        .dispatcher
        .replace_robot_token(id, &hash_robot_token(&token))
        .await?
        .ok_or_else(|| not_found(id))?;
    let mut body = views::robot(&robot, state.config.pulse_timeout);
    body.token = Some(token);
    Ok(warp::reply::json(&body))
}

fn not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("robot {id} not found"))
}

fn valid_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if (1..=100).contains(&name.chars().count()) {
        Ok(name.to_string())
    } else {
        Err(ApiError::unprocessable(
            "invalid_name",
            "a robot name is 1 to 100 characters",
        ))
    }
}

fn valid_capacity(capacity: i64) -> Result<i64, ApiError> {
    if (1..=1000).contains(&capacity) {
        Ok(capacity)
    } else {
        Err(ApiError::unprocessable(
            "invalid_capacity",
            "capacity runs from 1 to 1000 items in flight",
        ))
    }
}

fn parse_platform(text: &str) -> Result<Platform, ApiError> {
    text.parse()
        .map_err(|e: String| ApiError::unprocessable("invalid_platform", format!("platform {e}")))
}

/// Most processes one robot may be limited to.
const MAX_ROBOT_PROCESSES: usize = 1_000;

/// Every listed process must exist; an empty list means all processes.
async fn valid_processes(state: &AppState, ids: Vec<i64>) -> Result<Vec<i64>, ApiError> {
    if ids.len() > MAX_ROBOT_PROCESSES {
        return Err(ApiError::unprocessable(
            "too_many_processes",
            format!("a robot lists at most {MAX_ROBOT_PROCESSES} processes (none means all)"),
        ));
    }
    let mut ids = ids;
    ids.sort_unstable();
    ids.dedup();
    for id in &ids {
        if state.store.process(*id).await?.is_none() {
            return Err(ApiError::unprocessable(
                "process_not_found",
                format!("process {id} does not exist"),
            ));
        }
    }
    Ok(ids)
}

async fn create(
    user: AuthUser,
    state: AppState,
    body: CreateRobot,
) -> Result<impl warp::Reply, ApiError> {
    user.require_admin()?;
    let token = new_robot_token();
    let new = NewRobot {
        name: valid_name(&body.name)?,
        platform: body
            .platform
            .as_deref()
            .map_or(Ok(Platform::Other), parse_platform)?,
        capacity: valid_capacity(body.capacity.unwrap_or(1))?,
        processes: valid_processes(&state, body.processes.unwrap_or_default()).await?,
        token_hash: hash_robot_token(&token),
    };
    let robot = state.store.create_robot(&new).await?;
    let mut view = views::robot(&robot, state.config.pulse_timeout);
    view.token = Some(token);
    Ok(warp::reply::with_status(
        warp::reply::json(&view),
        StatusCode::CREATED,
    ))
}

async fn patch(
    id: i64,
    user: AuthUser,
    state: AppState,
    body: PatchRobot,
) -> Result<impl warp::Reply, ApiError> {
    user.require_admin()?;
    let processes = match body.processes {
        Some(ids) => Some(valid_processes(&state, ids).await?),
        None => None,
    };
    let status = body
        .status
        .as_deref()
        .map(|s| {
            s.parse::<RobotStatus>()
                .map_err(|e| ApiError::unprocessable("invalid_status", format!("status {e}")))
        })
        .transpose()?;
    let patch = RobotPatch {
        name: body.name.as_deref().map(valid_name).transpose()?,
        platform: body.platform.as_deref().map(parse_platform).transpose()?,
        capacity: body.capacity.map(valid_capacity).transpose()?,
        processes,
        status,
        disabled_by_admin: status.map(admin_holds),
    };
    let robot = state
        .dispatcher
        .update_robot(id, &patch)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(warp::reply::json(&views::robot(
        &robot,
        state.config.pulse_timeout,
    )))
}
