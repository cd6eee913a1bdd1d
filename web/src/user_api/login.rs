//! `POST /api/v1/auth/login` and `GET /api/v1/auth/me`.

use crate::auth::{AuthUser, signed_in};
use crate::body::json_body;
use crate::error::{ApiError, respond};
use crate::state::{AppState, with_state};
use crate::views;
use orchestrator_actors::domain::{User, rfc3339};
use orchestrator_actors::security::verify_password;
use serde::Deserialize;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

#[derive(Debug, Deserialize)]
struct Login {
    username: String,
    password: String,
}

// Verifying against this keeps the answer time the same for unknown usernames.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| orchestrator_actors::security::hash_password("not a password"));

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let max = state.config.max_json_bytes;
    let login = warp::path!("api" / "v1" / "auth" / "login")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(json_body::<Login>(max))
        .then(|state, body| async move { respond(login(state, body).await) });
    let me = warp::path!("api" / "v1" / "auth" / "me")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state))
        .then(|user: AuthUser, state: AppState| async move {
            respond(
                async {
                    let user = state
                        .store
                        .user(user.id)
                        .await?
                        .ok_or_else(|| ApiError::unauthorized("the user no longer exists"))?;
                    Ok::<_, ApiError>(warp::reply::json(&views::user(&user)))
                }
                .await,
            )
        });
    login.or(me).unify().boxed()
}

async fn login(state: AppState, body: Login) -> Result<impl warp::Reply, ApiError> {
    let user = check_credentials(&state, &body.username, body.password).await?;
    let (token, exp) = state.jwt.issue(&user, state.config.jwt_ttl)?;
    Ok(warp::reply::json(&json!({
        "token": token,
        "token_type": "Bearer",
        "expires_at": rfc3339(exp * 1000),
        "user": views::user(&user),
    })))
}

/// The enabled user with these credentials; 401 `invalid_credentials` otherwise, answered in
/// the same time whether or not the username exists.
pub(crate) async fn check_credentials(
    state: &AppState,
    username: &str,
    password: String,
) -> Result<User, ApiError> {
    let found = state.store.user_credentials(username.trim()).await?;
    let hash = found
        .as_ref()
        .map_or_else(|| DUMMY_HASH.clone(), |c| c.password_hash.clone());
    let verified = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match found {
        Some(creds) if verified && !creds.user.disabled => Ok(creds.user),
        _ => Err(ApiError::new(
            warp::http::StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        )),
    }
}
