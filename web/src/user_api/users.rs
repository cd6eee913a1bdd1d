//! `/api/v1/users` (admin only).

use crate::auth::{AuthUser, signed_in};
use crate::body::json_body;
use crate::error::{ApiError, respond};
use crate::state::{AppState, with_state};
use crate::views;
use orchestrator_actors::domain::Role;
use orchestrator_actors::security::hash_password;
use orchestrator_actors::store::{NewUser, UserPatch};
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUser {
    username: String,
    password: String,
    #[serde(default)]
    role: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchUser {
    password: Option<String>,
    role: Option<String>,
    disabled: Option<bool>,
}

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let max = state.config.json_limit();
    let create = warp::path!("api" / "v1" / "users")
        .and(warp::post())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .and(json_body::<CreateUser>(max))
        .then(|user, state, body| async move { respond(create(user, state, body).await) });
    let list = warp::path!("api" / "v1" / "users")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .then(|user: AuthUser, state: AppState| async move {
            respond(
                async {
                    user.require_admin()?;
                    let users = state.store.list_users().await?;
                    let body: Vec<_> = users.iter().map(views::user).collect();
                    Ok::<_, ApiError>(warp::reply::json(&body))
                }
                .await,
            )
        });
    let patch = warp::path!("api" / "v1" / "users" / i64)
        .and(warp::patch())
        .and(signed_in(state.clone()))
        .and(with_state(state))
        .and(json_body::<PatchUser>(max))
        .then(|id, user, state, body| async move { respond(patch(id, user, state, body).await) });
    create.or(list).unify().or(patch).unify().boxed()
}

fn valid_username(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_username",
            "usernames are 1 to 64 characters of letters, digits, '_', '.', '@' or '-'",
        ))
    }
}

fn valid_password(password: &str) -> Result<(), ApiError> {
    if (8..=256).contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_password",
            "passwords are 8 to 256 characters",
        ))
    }
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    role.parse()
        .map_err(|e: String| ApiError::unprocessable("invalid_role", format!("role {e}")))
}

async fn create(
    user: AuthUser,
    state: AppState,
    body: CreateUser,
) -> Result<impl warp::Reply, ApiError> {
    user.require_admin()?;
    let username = body.username.trim().to_string();
    valid_username(&username)?;
    valid_password(&body.password)?;
    let role = body
        .role
        .as_deref()
        .map_or(Ok(Role::Operator), parse_role)?;
    let password = body.password;
    let password_hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let created = state
        .store
        .create_user(&NewUser {
            username,
            password_hash,
            role,
        })
        .await?;
    Ok(warp::reply::with_status(
        warp::reply::json(&views::user(&created)),
        StatusCode::CREATED,
    ))
}

async fn patch(
    id: i64,
    user: AuthUser,
    state: AppState,
    body: PatchUser,
) -> Result<impl warp::Reply, ApiError> {
    user.require_admin()?;
    let role = body.role.as_deref().map(parse_role).transpose()?;
    if id == user.id && (body.disabled == Some(true) || role == Some(Role::Operator)) {
        return Err(ApiError::conflict(
            "you cannot disable or demote yourself; ask another admin",
        ));
    }
    let password_hash = match body.password {
        Some(password) => {
            valid_password(&password)?;
            Some(
                tokio::task::spawn_blocking(move || hash_password(&password))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            )
        }
        None => None,
    };
    let patch = UserPatch {
        password_hash,
        role,
        disabled: body.disabled,
    };
    let updated = state
        .store
        .update_user(id, &patch)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id} not found")))?;
    Ok(warp::reply::json(&views::user(&updated)))
}
