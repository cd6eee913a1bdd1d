//! `POST /api/v1/auth/login` and `GET /api/v1/auth/me`.

use crate::auth::{AuthUser, signed_in};
use crate::body::json_body;
use crate::error::{ApiError, respond};
use crate::state::{AppState, with_state};
use crate::views;
use orchestrator_actors::domain::{User, rfc3339};
use orchestrator_actors::security::verify_password;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct Login {
    username: String,
    password: String,
}

// Verifying against this keeps the answer time the same for unknown usernames.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| orchestrator_actors::security::hash_password("not a password"));

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let max = state.config.json_limit();
    let login = warp::path!("api" / "v1" / "auth" / "login")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(crate::server::client_addr())
        .and(json_body::<Login>(max))
        .then(|state, addr: Option<SocketAddr>, body| async move {
            respond(login(state, addr.map(|a| a.ip()), body).await)
        });
    let logout = warp::path!("api" / "v1" / "auth" / "logout")
        .and(warp::post())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .then(|user: AuthUser, state: AppState| async move {
            respond(
                async {
                    state.store.revoke_tokens(user.id).await?;
                    Ok::<_, ApiError>(warp::reply::with_status(
                        warp::reply(),
                        warp::http::StatusCode::NO_CONTENT,
                    ))
                }
                .await,
            )
        });
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
    login.or(me).unify().or(logout).unify().boxed()
}

async fn login(
    state: AppState,
    addr: Option<IpAddr>,
    body: Login,
) -> Result<impl warp::Reply, ApiError> {
    let user = check_credentials(&state, &body.username, body.password, addr).await?;
    let (token, exp) = state.jwt.issue(&user, state.config.jwt_ttl)?;
    Ok(warp::reply::json(&views::LoginView {
        token,
        token_type: "Bearer".into(),
        expires_at: rfc3339(exp * 1000),
        user: views::user(&user),
    }))
}

/// The enabled user with these credentials; 401 `invalid_credentials` otherwise, answered in
/// the same time whether or not the username exists; 429 `too_many_attempts` while the
/// username or the client's address is throttled (see [`crate::login_guard`]).
pub(crate) async fn check_credentials(
    state: &AppState,
    username: &str,
    password: String,
    addr: Option<IpAddr>,
) -> Result<User, ApiError> {
    let attempt = state.logins.begin(username, addr).map_err(|throttled| {
        let seconds = throttled.wait.as_secs().max(1);
        ApiError::new(
            warp::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many sign-ins for this name or address; try again in {seconds} s"),
        )
        .retry_after(seconds)
    })?;
    let found = state.store.user_credentials(username.trim()).await?;
    let hash = found
        .as_ref()
        .map_or_else(|| DUMMY_HASH.clone(), |c| c.password_hash.clone());
    let Some(_turn) = state.logins.hashing_turn().await else {
        return Err(ApiError::new(
            warp::http::StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many sign-ins at once; try again shortly",
        )
        .retry_after(2));
    };
    let verified = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match found {
        Some(creds) if verified && !creds.user.disabled => {
            attempt.succeeded(username);
            Ok(creds.user)
        }
        _ => {
            attempt.failed();
            Err(ApiError::new(
                warp::http::StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "wrong username or password",
            ))
        }
    }
}
