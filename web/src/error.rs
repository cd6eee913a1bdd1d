//! One error type for every HTTP surface, and the one place that maps errors to responses:
//! `{"error": {"code", "message"}}` with a fitting status.

use orchestrator_actors::StoreError;
use orchestrator_actors::error::{Code, DispatchError};
use orchestrator_actors::ingest::IngestError;
use std::convert::Infallible;
use tracing::error;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The same error with a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The JSON response for this error.
    pub fn into_response(self) -> Response {
        let body = crate::views::ErrorView {
            error: crate::views::ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                request_id: crate::request_id::current(),
            },
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(warp::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// What a client may be told of an internal failure (logged in full under the request's id).
pub fn conceal(err: &dyn std::fmt::Display) -> String {
    orchestrator_actors::error::conceal_as(crate::request_id::current().as_deref(), err)
}

impl ApiError {
    /// An error of the core, answered with its code and status from the one code table
    /// ([`orchestrator_actors::error::code`]).
    fn coded(code: Code, message: String) -> Self {
        let status = StatusCode::from_u16(code.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, code.name, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let message = err.public_message(crate::request_id::current().as_deref());
        ApiError::coded(err.code(), message)
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        let message = err.public_message(crate::request_id::current().as_deref());
        ApiError::coded(err.code(), message)
    }
}

impl From<DispatchError> for ApiError {
    fn from(err: DispatchError) -> Self {
        let message = err.public_message(crate::request_id::current().as_deref());
        ApiError::coded(err.code(), message)
    }
}

/// Turns any handler outcome into a response, errors included, so they never fall through to
/// other routes.
pub fn respond<R: Reply>(outcome: Result<R, ApiError>) -> Response {
    match outcome {
        Ok(reply) => reply.into_response(),
        Err(err) => err.into_response(),
    }
}

/// Maps warp's rejections (no route, bad method, auth filters) to the JSON error body.
pub async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let err = if let Some(api) = rejection.find::<ApiError>() {
        api.clone()
    } else if rejection.is_not_found() {
        ApiError::not_found("no such route")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        )
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        ApiError::bad_request("invalid_body", e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request("invalid_query", e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request("invalid_header", e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::bad_request("missing_header", e.to_string())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is too large",
        )
    } else if let Some(e) = rejection.find::<warp::reject::UnsupportedMediaType>() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        )
    } else {
        error!(?rejection, "unhandled rejection");
        ApiError::internal("unhandled rejection")
    };
    Ok(err.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_actors::error::Unavailable;

    /// A store's text reached robots inside "dispatch is unavailable: database error:
    /// Connection reset" (a REST robot's completion while the store restarted).
    #[test]
    fn why_dispatch_is_unavailable_stays_in_the_log() {
        let err = ApiError::from(DispatchError::Unavailable(Unavailable::Batch(
            StoreError::Database("Connection reset".into()),
        )));
        assert_eq!(
            (err.status, err.code),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert!(!err.message.contains("Connection reset"), "{}", err.message);
        assert!(err.message.contains("request id"), "{}", err.message);
    }
}
