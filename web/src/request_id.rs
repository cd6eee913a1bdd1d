//! Request ids. Every request gets one: the client's `x-request-id` when it is a short plain
//! token (a balancer's or a robot's own), a fresh one otherwise. The server runs the request in
//! a tracing span carrying it, so every log line the request causes names it; every response
//! carries it in `x-request-id`, and error bodies as `error.request_id`, so a user's report
//! finds the log lines.

use std::future::Future;
use std::sync::Arc;
use warp::http::HeaderValue;

/// The header a request id travels in, both ways.
pub const HEADER: &str = "x-request-id";

/// Longest client-chosen id kept; a longer (or odd) one is replaced.
const MAX_CLIENT_ID: usize = 64;

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// The client's id when it is 1 to 64 characters of `A-Z a-z 0-9 . _ -`, else a fresh one.
pub fn pick(header: Option<&HeaderValue>) -> Arc<str> {
    let client = header
        .and_then(|v| v.to_str().ok())
        .filter(|s| (1..=MAX_CLIENT_ID).contains(&s.len()))
        .filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    match client {
        Some(id) => Arc::from(id),
        None => Arc::from(format!("{:016x}", rand::random::<u64>())),
    }
}

/// Runs `future` as request `id`: [`current`] answers `id` inside it.
pub fn scope<F: Future>(id: Arc<str>, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(id, future)
}

/// The id of the request being served, if any (not on WebSocket tasks, which outlive it).
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_client_ids_are_kept_and_others_replaced() {
        let keep = HeaderValue::from_static("lb-7f3a.1_x");
        assert_eq!(&*pick(Some(&keep)), "lb-7f3a.1_x");
        for odd in ["", "has space", "quote\"", &"x".repeat(65)] {
            let value = HeaderValue::from_str(odd).expect("header value");
            let id = pick(Some(&value));
            assert_ne!(&*id, odd);
            assert_eq!(id.len(), 16, "a fresh id replaces {odd:?}");
        }
        assert_eq!(pick(None).len(), 16);
        assert_ne!(pick(None), pick(None));
    }

    #[tokio::test]
    async fn current_answers_inside_the_scope_only() {
        assert_eq!(current(), None);
        let inside = scope(Arc::from("abc"), async { current() }).await;
        assert_eq!(inside.as_deref(), Some("abc"));
    }
}
