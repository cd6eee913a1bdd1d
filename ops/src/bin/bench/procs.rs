//! The processes a scenario runs: nodes (on their embedded store or a `surreal` server) and
//! the small HTTP client the runner uses.

use super::*;

/// A node process on a fresh store.
pub(crate) struct NodeProc {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) _dir: TempDir,
}

pub(crate) struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The nodes of a scenario, and the SurrealDB server they share if any.
pub(crate) struct Nodes {
    pub(crate) nodes: Vec<NodeProc>,
    pub(crate) server: Option<(Child, TempDir)>,
}

impl Nodes {
    pub(crate) fn start(on: Setup, node_bin: &Path, surreal_bin: &Path) -> Result<Nodes> {
        let Setup::Server { nodes } = on else {
            return Ok(Nodes {
                nodes: vec![NodeProc::start(node_bin, None, 1)?],
                server: None,
            });
        };
        ensure!(
            surreal_bin.exists(),
            "{} is missing: run `cargo build --release -p orchestrator-node -p orchestrator-ops` first",
            surreal_bin.display()
        );
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("orch-bench-db-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let child = Command::new(surreal_bin)
            .args(["start", "--user", "root", "--pass", "root", "--log", "warn"])
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .arg(format!("surrealkv://{}", dir.join("db").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting surreal")?;
        let server = Some((child, TempDir(dir)));
        let until = Instant::now() + Duration::from_secs(60);
        while !matches!(
            http::get_ok(&format!("http://127.0.0.1:{port}/health")),
            Ok(true)
        ) {
            ensure!(Instant::now() < until, "surreal did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let db = format!("ws://127.0.0.1:{port}");
        let mut started = Nodes {
            nodes: Vec::new(),
            server,
        };
        for k in 1..=nodes {
            started.nodes.push(NodeProc::start(node_bin, Some(&db), k)?);
        }
        Ok(started)
    }

    /// Every node's address, comma separated (robot-sim spreads its robots over them).
    pub(crate) fn bases(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.base.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(crate) fn stop(self) {
        for node in self.nodes {
            node.stop();
        }
        if let Some((mut child, _dir)) = self.server {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl NodeProc {
    /// A node on a fresh embedded store, or on `db` (a `ws://` server) as node `n{k}`.
    pub(crate) fn start(bin: &Path, db: Option<&str>, k: usize) -> Result<NodeProc> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("orch-bench-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = db.map_or_else(
            || format!("surrealkv://{}", dir.join("db").display()),
            str::to_string,
        );
        // The nodes' log (their stdout) is shown only when BENCH_NODE_LOG names a filter
        // (`info`, `warn`): a run prints its figures, a failing one is run again with the log.
        let log = std::env::var("BENCH_NODE_LOG").ok();
        let child = Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--db", &db, "--node-id", &format!("n{k}")])
            .args(["--admin-password", ADMIN_PASSWORD])
            .args(["--log", log.as_deref().unwrap_or("warn")])
            .stdout(if log.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let node = NodeProc {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: TempDir(dir),
        };
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Ok(true) = http::get_ok(&format!("{}/healthz", node.base)) {
                return Ok(node);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("node did not become healthy")
    }

    /// (current RSS, peak RSS) in MB, from /proc.
    pub(crate) fn rss_mb(&self) -> Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("{name} missing"))?;
            let kb: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
            Ok(kb / 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tiny blocking HTTP helpers over `std::net`, so the runner needs no async runtime.
pub(crate) mod http {
    use anyhow::{Context, Result, bail};
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// `GET url` answered 200?
    pub fn get_ok(url: &str) -> Result<bool> {
        let (status, _) = request("GET", url, &[], &[])?;
        Ok(status == 200)
    }

    /// A request with `headers` and `body`; returns the status and body.
    pub fn request(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let rest = url.strip_prefix("http://").context("http only")?;
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        let mut stream = TcpStream::connect(host)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no header end")?;
        let head = String::from_utf8_lossy(&response[..split]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .context("no status")?
            .parse()?;
        let mut body = response[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body)?;
        }
        if status == 0 {
            bail!("bad status");
        }
        Ok((status, body))
    }

    pub(crate) fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line_end = data
                .windows(2)
                .position(|w| w == b"\r\n")
                .context("chunk size")?;
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)?;
            data = &data[line_end + 2..];
            if size == 0 {
                return Ok(out);
            }
            out.extend_from_slice(data.get(..size).context("short chunk")?);
            data = data.get(size + 2..).context("chunk end")?;
        }
    }
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
