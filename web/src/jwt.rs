//! Login tokens: HS256 JWTs signed with the node's secret, carrying the user's id, role and the
//! moment of issue (for revocation). Below `auth` (which checks them on requests) and `state`
//! (which holds the keys).

use crate::error::ApiError;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use orchestrator_actors::domain::{Role, User, now_millis};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
