//! `orchestrator health --url URL`: asks a node's `/healthz` and exits 0 only on 200, so a
//! container image without curl can still have a health check.

use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most of an answer read: `/healthz` answers a few hundred bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// Why a probe failed.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("'{0}' is not an http://HOST:PORT address")]
    Url(String),
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url} answered something that is not HTTP")]
    NotHttp { url: String },
}

/// `GET {base}/healthz`: the status code and the body.
pub async fn probe(base: &str, timeout: Duration) -> Result<(u16, String), ProbeError> {
    let host = base
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .ok_or_else(|| ProbeError::Url(base.to_string()))?;
    let url = format!("http://{host}/healthz");
    let io = |source| ProbeError::Io {
        url: url.clone(),
        source,
    };
    let ask = async {
        let mut stream = TcpStream::connect(host).await.map_err(io)?;
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(io)?;
        Ok::<_, ProbeError>(answer)
    };
    let answer = tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| ProbeError::Timeout {
            url: url.clone(),
            timeout,
        })??;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(ProbeError::NotHttp { url })?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_an_http_address_is_probed_and_silence_times_out() {
        for bad in ["127.0.0.1:1", "https://x:1", "http://", "http://x:1/path"] {
            assert!(
                matches!(
                    probe(bad, Duration::from_secs(1)).await,
                    Err(ProbeError::Url(_))
                ),
                "{bad}"
            );
        }
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let err = probe(&format!("http://{addr}"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");
    }
}
