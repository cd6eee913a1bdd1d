//! One error type for every HTTP surface, and the one place that maps errors to responses:
//! `{"error": {"code", "message"}}` with a fitting status.

use orchestrator_actors::StoreError;
use orchestrator_actors::csv_ingest::CsvError;
use orchestrator_actors::dispatcher::DispatchError;
use orchestrator_actors::ingest::IngestError;
use orchestrator_actors::lifecycle::TransitionError;
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

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(message) => ApiError::conflict(message),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                conceal(&other),
            ),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        let message = err.to_string();
        match err {
            IngestError::Csv(csv) => ApiError::unprocessable(csv_code(&csv), message),
            IngestError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            IngestError::ProcessNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "process_not_found", message)
            }
            IngestError::ProcessDisabled(_) => {
                ApiError::new(StatusCode::CONFLICT, "process_disabled", message)
            }
            IngestError::MissingProcess => ApiError::bad_request("missing_process", message),
            IngestError::Body(_) => ApiError::bad_request("upload_interrupted", message),
            IngestError::Timeout(_) => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "upload_timeout", message)
            }
            IngestError::Store(store) => store.into(),
        }
    }
}

impl From<DispatchError> for ApiError {
    fn from(err: DispatchError) -> Self {
        let message = err.to_string();
        match err {
            DispatchError::ItemNotFound(_) => ApiError::not_found(message),
            DispatchError::RobotDisabled => {
                ApiError::new(StatusCode::CONFLICT, "robot_disabled", message)
            }
            DispatchError::Payload(err) => {
                let status = if err.is_size() {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                ApiError::new(status, err.code(), message)
            }
            DispatchError::Transition(TransitionError::NotYours { .. }) => {
                ApiError::new(StatusCode::FORBIDDEN, "not_your_item", message)
            }
            DispatchError::Transition(TransitionError::StaleLease { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "stale_lease", message)
            }
            DispatchError::Transition(TransitionError::Illegal { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "illegal_transition", message)
            }
            DispatchError::Store(store) => store.into(),
            DispatchError::Unavailable(cause) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                orchestrator_actors::error::unavailable_as(
                    crate::request_id::current().as_deref(),
                    &cause,
                ),
            ),
        }
    }
}

fn csv_code(err: &CsvError) -> &'static str {
    match err {
        CsvError::Empty => "csv_empty",
        CsvError::NoRows => "csv_no_rows",
        CsvError::EmptyHeaderName { .. } | CsvError::DuplicateHeader { .. } => "csv_bad_header",
        CsvError::RaggedRow { .. } => "csv_ragged_row",
        CsvError::InvalidUtf8 { .. } => "csv_invalid_utf8",
        CsvError::Malformed { .. } => "csv_malformed",
        CsvError::TooManyColumns { .. } => "csv_too_many_columns",
        CsvError::FieldTooLarge { .. } => "csv_field_too_large",
        CsvError::RowTooLarge { .. } => "csv_row_too_large",
        CsvError::UnterminatedQuote { .. } => "csv_unterminated_quote",
        CsvError::Read(_) => "upload_interrupted",
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

    /// A store's text reached robots inside "dispatch is unavailable: database error:
    /// Connection reset" (a REST robot's completion while the store restarted).
    #[test]
    fn why_dispatch_is_unavailable_stays_in_the_log() {
        let err = ApiError::from(DispatchError::Unavailable(
            "database error: Connection reset".into(),
        ));
        assert_eq!(
            (err.status, err.code),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert!(!err.message.contains("Connection reset"), "{}", err.message);
        assert!(err.message.contains("request id"), "{}", err.message);
    }
}
