//! `/api/v1/processes`: any signed-in user reads, admins write.

use crate::auth::{AuthUser, signed_in};
use crate::body::json_body;
use crate::error::{ApiError, respond};
use crate::state::{AppState, with_state};
use crate::views;
use orchestrator_actors::domain::LostItemPolicy;
use orchestrator_actors::store::{NewProcess, ProcessPatch};
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateProcess {
    title: String,
    #[serde(default)]
    description: String,
    lease_ttl_ms: Option<i64>,
    max_attempts: Option<i64>,
    on_lost: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchProcess {
    title: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    lease_ttl_ms: Option<Option<i64>>,
    max_attempts: Option<i64>,
    on_lost: Option<String>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let max = state.config.json_limit();
    let create = warp::path!("api" / "v1" / "processes")
        .and(warp::post())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .and(json_body::<CreateProcess>(max))
        .then(|user, state, body| async move { respond(create(user, state, body).await) });
    let list = warp::path!("api" / "v1" / "processes")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .then(|_user: AuthUser, state: AppState| async move {
            respond(
                async {
                    let all = state.store.list_processes().await?;
                    let body: Vec<_> = all.iter().map(views::process).collect();
                    Ok::<_, ApiError>(warp::reply::json(&body))
                }
                .await,
            )
        });
    let get = warp::path!("api" / "v1" / "processes" / i64)
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .then(|id: i64, _user: AuthUser, state: AppState| async move {
            respond(
                async {
                    let process =
                        state.store.process(id).await?.ok_or_else(|| {
                            ApiError::not_found(format!("process {id} not found"))
                        })?;
                    Ok::<_, ApiError>(warp::reply::json(&views::process(&process)))
                }
                .await,
            )
        });
    let patch = warp::path!("api" / "v1" / "processes" / i64)
        .and(warp::patch())
        .and(signed_in(state.clone()))
        .and(with_state(state))
        .and(json_body::<PatchProcess>(max))
        .then(|id, user, state, body| async move { respond(patch(id, user, state, body).await) });
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(patch)
        .unify()
        .boxed()
}

fn valid_title(title: &str) -> Result<String, ApiError> {
    let title = title.trim();
    if (1..=200).contains(&title.chars().count()) {
        Ok(title.to_string())
    } else {
        Err(ApiError::unprocessable(
            "invalid_title",
            "a process title is 1 to 200 characters",
        ))
    }
}

/// Longest process description, in characters.
const MAX_DESCRIPTION: usize = 2_000;

fn valid_description(text: String) -> Result<String, ApiError> {
    if text.chars().count() <= MAX_DESCRIPTION {
        Ok(text)
    } else {
        Err(ApiError::unprocessable(
            "invalid_description",
            format!("a process description is at most {MAX_DESCRIPTION} characters"),
        ))
    }
}

fn valid_attempts(n: i64) -> Result<i64, ApiError> {
    if (1..=100).contains(&n) {
        Ok(n)
    } else {
        Err(ApiError::unprocessable(
            "invalid_max_attempts",
            "max_attempts runs from 1 to 100",
        ))
    }
}

fn valid_ttl(ttl: Option<i64>) -> Result<Option<i64>, ApiError> {
    match ttl {
        Some(ms) if !(1_000..=7 * 24 * 3_600_000).contains(&ms) => Err(ApiError::unprocessable(
            "invalid_lease_ttl",
            "lease_ttl_ms runs from 1000 (1 s) to 604800000 (7 days)",
        )),
        other => Ok(other),
    }
}

fn parse_policy(text: &str) -> Result<LostItemPolicy, ApiError> {
    text.parse()
        .map_err(|e: String| ApiError::unprocessable("invalid_on_lost", format!("on_lost {e}")))
}

async fn create(
    user: AuthUser,
    state: AppState,
    body: CreateProcess,
) -> Result<impl warp::Reply, ApiError> {
    user.require_admin()?;
    let new = NewProcess {
        title: valid_title(&body.title)?,
        description: valid_description(body.description)?,
        lease_ttl_ms: valid_ttl(body.lease_ttl_ms)?,
        max_attempts: valid_attempts(body.max_attempts.unwrap_or(3))?,
        on_lost: body
            .on_lost
            .as_deref()
            .map_or(Ok(LostItemPolicy::Abandon), parse_policy)?,
    };
    let process = state.store.create_process(&new).await?;
    Ok(warp::reply::with_status(
        warp::reply::json(&views::process(&process)),
        StatusCode::CREATED,
    ))
}

async fn patch(
    id: i64,
    user: AuthUser,
    state: AppState,
    body: PatchProcess,
) -> Result<impl warp::Reply, ApiError> {
    user.require_admin()?;
    let patch = ProcessPatch {
        title: body.title.as_deref().map(valid_title).transpose()?,
        description: body.description.map(valid_description).transpose()?,
        enabled: body.enabled,
        lease_ttl_ms: body.lease_ttl_ms.map(valid_ttl).transpose()?,
        max_attempts: body.max_attempts.map(valid_attempts).transpose()?,
        on_lost: body.on_lost.as_deref().map(parse_policy).transpose()?,
    };
    let process = state
        .store
        .update_process(id, &patch)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("process {id} not found")))?;
    Ok(warp::reply::json(&views::process(&process)))
}
