//! Authentication of people: argon2-checked passwords exchanged for HS256 JWTs, and the filter
//! that guards every user route. Robot tokens are refused here (and JWTs on robot routes).

use crate::error::ApiError;
use crate::state::AppState;
use orchestrator_actors::domain::Role;
use warp::{Filter, Rejection};

/// The signed-in person behind a request.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthUser {
    pub id: i64,
    pub username: String,
    pub role: Role,
}

impl AuthUser {
    /// Fails with 403 unless the user is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs the admin role"))
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The cookie that carries a browser's login token (HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "orch_session";

/// The header a browser sends with the anti-forgery token on cookie-authenticated writes.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The anti-forgery token bound to a login token: pages embed it, and cookie-authenticated
/// writes must send it back. A cross-site page can make the browser send the cookie but can
/// neither read the cookie nor this token.
pub fn csrf_token(session_token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("orchestrator-csrf:{session_token}"));
    hex::encode(&digest[..16])
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// What a request presents to prove who sends it.
#[derive(Debug, Default)]
struct Credentials {
    authorization: Option<String>,
    cookie: Option<String>,
    csrf: Option<String>,
    safe_method: bool,
}

/// Extracts the signed-in user from `Authorization: Bearer <jwt>` or, for the browser, from the
/// session cookie (writes then need the `X-CSRF-Token` header), rejecting with 401 (403 for a
/// write without the anti-forgery token). The user is re-read from the store so disabling a
/// user takes effect at once.
pub fn signed_in(state: AppState) -> impl Filter<Extract = (AuthUser,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("cookie"))
        .and(warp::header::optional::<String>(CSRF_HEADER))
        .and_then(
            move |method: warp::http::Method,
                  authorization: Option<String>,
                  cookie: Option<String>,
                  csrf: Option<String>| {
                let state = state.clone();
                let credentials = Credentials {
                    authorization,
                    cookie,
                    csrf,
                    safe_method: method == warp::http::Method::GET
                        || method == warp::http::Method::HEAD,
                };
                async move {
                    authenticate_request(&state, credentials)
                        .await
                        .map_err(warp::reject::custom)
                }
            },
        )
}

async fn authenticate_request(state: &AppState, c: Credentials) -> Result<AuthUser, ApiError> {
    if c.authorization.is_some() {
        return authenticate(state, c.authorization.as_deref()).await;
    }
    let Some(token) = cookie(c.cookie.as_deref(), SESSION_COOKIE) else {
        return authenticate(state, None).await;
    };
    if !c.safe_method && c.csrf.as_deref() != Some(csrf_token(token).as_str()) {
        return Err(ApiError::forbidden(
            "cookie-authenticated writes need the X-CSRF-Token header of the signed-in page",
        ));
    }
    user_of_token(state, token).await
}

/// The user a login token names, if the token is valid and the user still enabled.
pub async fn user_of_token(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    let claims = state.jwt.verify(token.trim())?;
    let user_id: i64 = claims
        .sub
        .parse()
        .map_err(|_| ApiError::unauthorized("the login token is not valid"))?;
    let user = state
        .store
        .user(user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the user no longer exists"))?;
    if user.disabled {
        return Err(ApiError::unauthorized("the user is disabled"));
    }
    if user.tokens_after.is_some_and(|after| claims.iat_ms < after) {
        return Err(ApiError::unauthorized(
            "the login token was revoked (signed out or password changed); sign in again",
        ));
    }
    Ok(AuthUser {
        id: user.id,
        username: user.username,
        role: user.role,
    })
}

async fn authenticate(state: &AppState, header: Option<&str>) -> Result<AuthUser, ApiError> {
    let header = header.ok_or_else(|| {
        ApiError::unauthorized("sign in first: send Authorization: Bearer <token>")
    })?;
    let (scheme, token) = header
        .trim()
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
    if scheme.eq_ignore_ascii_case("token") {
        return Err(ApiError::unauthorized(
            "robot tokens are not accepted on user routes",
        ));
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized("use Authorization: Bearer <token>"));
    }
    user_of_token(state, token).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let header = Some("a=1; orch_session=tok; orch_session_x=2");
        assert_eq!(cookie(header, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(header, "missing"), None);
        assert_eq!(cookie(Some("orch_session="), SESSION_COOKIE), None);
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_are_stable() {
        assert_eq!(csrf_token("a"), csrf_token("a"));
        assert_ne!(csrf_token("a"), csrf_token("b"));
        assert_eq!(csrf_token("a").len(), 32);
    }
}
