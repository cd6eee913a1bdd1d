//! Request bodies with a size limit and a deadline on every route that reads one: a client
//! that sends a body a byte at a time is answered 408 instead of holding its connection.

use crate::error::ApiError;
use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

/// How large a JSON body may be and how long it may take to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    pub max_bytes: u64,
    pub timeout: std::time::Duration,
}

/// Reads at most `limit.max_bytes` of body within `limit.timeout` and parses it as JSON into
/// `T`; an empty body is `{}`.
pub fn json_body<T: DeserializeOwned + Send>(
    limit: BodyLimit,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, body| async move {
            let read = read_json::<T, _, _>(length, body, limit.max_bytes);
            match tokio::time::timeout(limit.timeout, read).await {
                Ok(parsed) => parsed.map_err(warp::reject::custom),
                Err(_) => Err(warp::reject::custom(body_timeout(limit.timeout))),
            }
        })
}

/// The error for a body that did not arrive in time.
pub fn body_timeout(timeout: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!("the body did not arrive within {}s", timeout.as_secs_f64()),
    )
}

async fn read_json<T, S, B>(length: Option<u64>, body: S, max: u64) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {max} bytes"),
        )
    };
    if length.is_some_and(|l| l > max) {
        return Err(too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
        if buf.len() as u64 + chunk.remaining() as u64 > max {
            return Err(too_large());
        }
        buf.extend_from_slice(chunk.chunk());
    }
    let slice: &[u8] = if buf.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &buf
    };
    serde_json::from_slice::<T>(slice)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid JSON body: {e}")))
}
