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
        let iat = now_millis() / 1000;
        let exp = iat + ttl.as_secs() as i64;
        let claims = Claims {
            sub: user.id.to_string(),
            role: user.role,
            username: user.username.clone(),
            iat,
            exp,
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

/// Extracts the signed-in user from `Authorization: Bearer <jwt>`, rejecting with 401.
/// The user is re-read from the store so disabling a user takes effect at once.
pub fn signed_in(state: AppState) -> impl Filter<Extract = (AuthUser,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
        let state = state.clone();
        async move {
            authenticate(&state, header.as_deref())
                .await
                .map_err(warp::reject::custom)
        }
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
    Ok(AuthUser {
        id: user.id,
        username: user.username,
        role: user.role,
    })
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
    fn expired_tokens_are_refused() {
        let keys = JwtKeys::new("secret");
        let claims = Claims {
            sub: "1".into(),
            role: Role::Admin,
            username: "a".into(),
            iat: 0,
            exp: now_millis() / 1000 - 60,
        };
        let token =
            jsonwebtoken::encode(&Header::default(), &claims, &keys.encoding).expect("sign");
        let err = keys.verify(&token).unwrap_err();
        assert_eq!(err.message, "the login token has expired");
    }
}
