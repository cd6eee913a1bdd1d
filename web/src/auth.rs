//! Authentication of people: argon2-checked passwords exchanged for HS256 JWTs, and the filter
//! that guards every user route. Robot tokens are refused here (and JWTs on robot routes).

use crate::error::ApiError;
use crate::state::AppState;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use orchestrator_actors::domain::{Role, User, now_millis};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use warp::{Filter, Rejection};

/// The claims of a login token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// User id, as a decimal string (RFC 7519 makes `sub` a string).
    pub sub: String,
    pub role: Role,
    pub username: String,
    pub iat: i64,
    pub exp: i64,
    /// When the token was issued, in milliseconds (finer than `iat`, for revocation).
    #[serde(default)]
    pub iat_ms: i64,
}

/// Signing and verification keys for login tokens.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

impl JwtKeys {
    /// Keys from a shared secret.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// A token for `user` valid for `ttl`; returns it with its expiry (epoch seconds).
    pub fn issue(&self, user: &User, ttl: Duration) -> Result<(String, i64), ApiError> {
        let iat_ms = now_millis();
        let iat = iat_ms / 1000;
        let exp = iat + ttl.as_secs() as i64;
        let claims = Claims {
            sub: user.id.to_string(),
            role: user.role,
            username: user.username.clone(),
            iat,
            exp,
            iat_ms,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map(|token| (token, exp))
            .map_err(|e| ApiError::internal(format!("cannot sign token: {e}")))
    }

    /// Verifies signature and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::unauthorized("the login token has expired")
                }
                _ => ApiError::unauthorized("the login token is not valid"),
            })
    }
}

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

    fn user() -> User {
        User {
            id: 7,
            username: "ana".into(),
            role: Role::Operator,
            disabled: false,
            created_at: 0,
            tokens_after: None,
        }
    }

    #[test]
    fn tokens_round_trip_and_other_secrets_fail() {
        let keys = JwtKeys::new("secret-a");
        let (token, exp) = keys.issue(&user(), Duration::from_secs(60)).expect("sign");
        let claims = keys.verify(&token).expect("verify");
        assert_eq!(
            (claims.sub.as_str(), claims.role, claims.exp),
            ("7", Role::Operator, exp)
        );
        assert!(JwtKeys::new("secret-b").verify(&token).is_err());
    }

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

    #[test]
    fn expired_tokens_are_refused() {
        let keys = JwtKeys::new("secret");
        let claims = Claims {
            sub: "1".into(),
            role: Role::Admin,
            username: "a".into(),
            iat: 0,
            exp: now_millis() / 1000 - 60,
            iat_ms: 0,
        };
        let token =
            jsonwebtoken::encode(&Header::default(), &claims, &keys.encoding).expect("sign");
        let err = keys.verify(&token).unwrap_err();
        assert_eq!(err.message, "the login token has expired");
    }
}
