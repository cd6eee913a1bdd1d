//! The nodes' HTTP surface as the simulator uses it, moving to the next node when one fails.

use super::*;

/// The nodes' HTTP surface, as the simulator uses it: one node at a time, the next one when
/// it fails.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) bases: Arc<Vec<String>>,
    /// Index of the node in use (modulo the number of nodes).
    pub(super) at: Arc<AtomicUsize>,
    pub(super) http: Client,
    /// Moves to another node, fleet-wide.
    pub(super) moves: Arc<AtomicU64>,
    /// `--node-silence`: a request unanswered this long moves the robot on.
    pub(super) silence: Option<Duration>,
}

impl Node {
    pub(super) fn new(base_urls: &str, http: Client, silence: Option<Duration>) -> Result<Node> {
        let bases: Vec<String> = base_urls
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect();
        ensure!(!bases.is_empty(), "--base-url names no node");
        Ok(Node {
            bases: Arc::new(bases),
            at: Arc::default(),
            http,
            moves: Arc::default(),
            silence,
        })
    }

    /// The node in use.
    pub(super) fn base(&self) -> &str {
        &self.bases[self.at.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// A handle for robot `index`, starting on node `index` modulo the number of nodes.
    pub(super) fn for_robot(&self, index: usize) -> Node {
        Node {
            at: Arc::new(AtomicUsize::new(index % self.bases.len())),
            ..self.clone()
        }
    }

    /// Moves to the next node; `false` when there is no other node.
    pub(super) fn fail_over(&self) -> bool {
        if self.bases.len() < 2 {
            return false;
        }
        self.at.fetch_add(1, Ordering::Relaxed);
        self.moves.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub(super) async fn call(
        &self,
        method: Method,
        path: impl AsRef<str>,
        auth: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, String)> {
        let path = path.as_ref();
        let mut attempt = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base()))
                .header("authorization", auth);
            if let Some(body) = &body {
                request = request.json(body);
            }
            if let Some(silence) = self.silence {
                request = request.timeout(silence);
            }
            match request.send().await {
                Ok(resp) => return Ok((resp.status(), resp.text().await?)),
                // The node is gone (refused, reset), or silent past `--node-silence`: the next
                // one serves the same store (what was sent is idempotent there).
                Err(err)
                    if (!err.is_timeout() || self.silence.is_some())
                        && attempt < self.bases.len()
                        && self.fail_over() =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// A robot's report about an item, sent again while the node answers 503 (its store away
    /// for a moment) or 429, half a second apart and up to [`REPORT_TRIES`] times, as a
    /// production robot does (a report repeated with its lease is a no-op once written). Any
    /// other answer is returned as it is.
    pub(super) async fn report(
        &self,
        method: Method,
        path: impl AsRef<str>,
        auth: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, String)> {
        let mut tries = 0;
        loop {
            let (status, text) = self
                .call(method.clone(), path.as_ref(), auth, body.clone())
                .await?;
            if !matches!(status.as_u16(), 429 | 503) || tries >= REPORT_TRIES {
                return Ok((status, text));
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub(super) async fn json(
        &self,
        method: Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let (status, text) = self.call(method, path, auth, body).await?;
        ensure!(status.is_success(), "{path}: {status} {text}");
        if text.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }
}
