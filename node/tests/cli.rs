//! The `orchestrator` binary as an operator runs it: flags, readiness, the generated admin
//! password printed once, and a graceful exit on SIGTERM.

use orchestrator_test_kit::spawn_with_lines;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn serve_prints_the_generated_admin_password_and_stops_on_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut child, rx) = spawn_with_lines(
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["serve", "--db"])
            .arg(format!("surrealkv://{}", dir.path().join("db").display()))
            .args(["--listen", "127.0.0.1:0", "--pulse-timeout", "3s"])
            .env_remove("ORCH_ADMIN_PASSWORD")
            .env("ORCH_JWT_TTL", "5m")
            .env("NO_COLOR", "1"),
    )?;
    let mut password = None;
    let mut addr = None;
    while addr.is_none() {
        let line = rx.recv_timeout(Duration::from_secs(60))?;
        if line.contains("generated password") {
            password = field(&line, "password=");
        }
        if line.contains("node ready") {
            addr = field(&line, "addr=");
        }
    }
    let (addr, password) = (addr.unwrap_or_default(), password.unwrap_or_default());
    assert_eq!(password.len(), 20, "a generated password is printed once");

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let health = http.get(format!("http://{addr}/healthz")).send().await?;
        assert_eq!(health.status(), 200);
        let login = http
            .post(format!("http://{addr}/api/v1/auth/login"))
            .json(&serde_json::json!({ "username": "admin", "password": password }))
            .send()
            .await?;
        assert_eq!(login.status(), 200);
        anyhow::Ok(())
    })?;
    // The health subcommand (a container's health check) agrees: 0 for this node, 1 for none.
    let probe = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["health", "--url", url, "--timeout", "2s"])
            .output()
    };
    let up = probe(&format!("http://{addr}"))?;
    assert!(up.status.success(), "{up:?}");
    assert!(
        String::from_utf8_lossy(&up.stdout).contains("\"ok\""),
        "{up:?}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let down = probe(&format!("http://{closed}"))?;
    assert_eq!(down.status.code(), Some(1), "{down:?}");

    // Clients that hold connections open: headers never finished, a body a byte short. They
    // must not keep the node from stopping.
    use std::io::Write;
    let mut slow_head = std::net::TcpStream::connect(&addr)?;
    slow_head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")?;
    let mut slow_body = std::net::TcpStream::connect(&addr)?;
    slow_body.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
          content-length: 40\r\n\r\n{\"username\"",
    )?;
    std::thread::sleep(Duration::from_millis(200));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let asked = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break exit;
        }
        if asked.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            anyhow::bail!("still running 20 s after SIGTERM with slow clients connected");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "graceful exit, got {exit}");
    assert!(
        asked.elapsed() < Duration::from_secs(12),
        "stopped within the 10 s grace: {:?}",
        asked.elapsed()
    );
    // A clean stop is said in INFO lines only: no warning or error from the storage engine
    // closing (it logged "ERROR The datastore is shutting down" and "No runtime available for
    // closing the store correctly" on every stop).
    let stop_lines: Vec<String> = rx
        .try_iter()
        .skip_while(|line| !line.contains("shutdown requested"))
        .collect();
    assert!(
        stop_lines.iter().any(|line| line.contains("node stopped")),
        "{stop_lines:?}"
    );
    assert!(
        !stop_lines.iter().any(|line| {
            (line.contains(" WARN ") || line.contains(" ERROR "))
                && !line.contains("grace period over")
        }),
        "{stop_lines:#?}"
    );
    drop((slow_head, slow_body));
    Ok(())
}

/// The embedded engine shut its datastore down a second time as the node's last store handle
/// dropped after the stop, and that pass logged "ERROR The datastore is shutting down" and a
/// WARN "Failed to archive node during shutdown": about one stop in three. Ten idle stops in a
/// row all log INFO only.
#[test]
fn repeated_idle_stops_log_no_storage_engine_error() -> anyhow::Result<()> {
    for round in 0..10 {
        let dir = tempfile::tempdir()?;
        let (mut child, rx) = spawn_with_lines(
            Command::new(env!("CARGO_BIN_EXE_orchestrator"))
                .args(["serve", "--db"])
                .arg(format!("surrealkv://{}", dir.path().join("db").display()))
                .args(["--listen", "127.0.0.1:0"])
                .env("ORCH_ADMIN_PASSWORD", "a-long-enough-password")
                .env("NO_COLOR", "1"),
        )?;
        let mut lines = Vec::new();
        while !lines.iter().any(|l: &String| l.contains("node ready")) {
            lines.push(rx.recv_timeout(Duration::from_secs(60))?);
        }
        std::thread::sleep(Duration::from_millis(500));
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let exit = child.wait()?;
        anyhow::ensure!(exit.success(), "round {round}: exit {exit}");
        lines.extend(rx.iter());
        let noisy: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        anyhow::ensure!(noisy.is_empty(), "round {round}: {noisy:#?}");
    }
    Ok(())
}

#[test]
fn invalid_settings_are_refused_before_start() -> anyhow::Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--db", "mem://", "--pulse-timeout", "soon"])
        .env("RUST_BACKTRACE", "1")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pulse_timeout"), "{stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one clear line, no stack trace, even with RUST_BACKTRACE=1: {stderr}"
    );
    Ok(())
}

/// Starts `command` with its stdout read line by line on a thread of its own (stderr dropped).
/// The value after `key` in a tracing log line, up to white space.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    Some(
        line[start..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

#[test]
fn the_example_config_file_is_valid() -> anyhow::Result<()> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ops/orchestrator.example.toml"
    );
    let args = orchestrator_node::ServeArgs {
        config: Some(path.into()),
        ..Default::default()
    };
    let config = args.resolve()?;
    assert_eq!(config.listen.port(), 8000);
    assert_eq!(config.store.url, "surrealkv:///var/lib/orchestrator/data");
    Ok(())
}

/// A node as a log shipper sees it: `--log-format json --access-log` on the embedded store.
/// Every line is one JSON object; the access line and the error body name the same request id;
/// nothing below WARN comes from a dependency (the storage engine's start-up internals, warp's
/// per-request lines); `/metrics` answers on its own address.
#[test]
fn json_logs_name_each_request_and_dependencies_stay_quiet() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut child, rx) = spawn_with_lines(
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--access-log", "--metrics-listen", "127.0.0.1:0", "--db"])
            .arg(format!("surrealkv://{}", dir.path().join("db").display()))
            .env("ORCH_ADMIN_PASSWORD", "a-long-admin-password")
            .env_remove("ORCH_LOG"),
    )?;
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let next = |within: Duration| -> anyhow::Result<Option<serde_json::Value>> {
        match rx.recv_timeout(within) {
            Ok(line) => {
                let value: serde_json::Value = serde_json::from_str(&line)
                    .map_err(|e| anyhow::anyhow!("not a JSON line ({e}): {line}"))?;
                Ok(Some(value))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(err) => Err(err.into()),
        }
    };
    let (mut addr, mut metrics) = (None, None);
    while addr.is_none() || metrics.is_none() {
        let line = next(Duration::from_secs(60))?.ok_or_else(|| anyhow::anyhow!("no start"))?;
        match line["message"].as_str() {
            Some("node ready") => addr = line["addr"].as_str().map(str::to_string),
            Some("metrics served at /metrics") => {
                metrics = line["addr"].as_str().map(str::to_string);
            }
            _ => {}
        }
        lines.push(line);
    }
    let (addr, metrics) = (addr.unwrap_or_default(), metrics.unwrap_or_default());
    let runtime = tokio::runtime::Runtime::new()?;
    let (body, page) = runtime.block_on(async {
        let http = reqwest::Client::new();
        let resp = http
            .get(format!("http://{addr}/api/v1/tasks"))
            .header("x-request-id", "cli-req-42")
            .send()
            .await?;
        assert_eq!(resp.status(), 401);
        let body: serde_json::Value = resp.json().await?;
        let page = http
            .get(format!("http://{metrics}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        anyhow::Ok((body, page))
    })?;
    assert_eq!(body["error"]["request_id"], "cli-req-42", "{body}");
    assert!(
        page.contains(r#"orchestrator_http_responses_total{class="4xx"} "#),
        "{page}"
    );
    let mut access = None;
    while access.is_none() {
        let line =
            next(Duration::from_secs(10))?.ok_or_else(|| anyhow::anyhow!("no access line"))?;
        if line["target"] == "orchestrator::access" && line["span"]["request_id"] == "cli-req-42" {
            access = Some(line.clone());
        }
        lines.push(line);
    }
    let access = access.unwrap_or_default();
    assert_eq!(access["status"], 401, "{access}");
    assert_eq!(access["path"], "/api/v1/tasks", "{access}");
    assert_eq!(access["method"], "GET", "{access}");
    while let Some(line) = next(Duration::from_millis(300))? {
        lines.push(line);
    }
    for line in &lines {
        let target = line["target"].as_str().unwrap_or_default();
        let quiet = matches!(line["level"].as_str(), Some("WARN" | "ERROR"));
        assert!(
            quiet || target.starts_with("orchestrator"),
            "a dependency's line at {}: {line}",
            line["level"]
        );
    }
    assert!(
        lines.len() < 15,
        "start-up and one request stay short: {} lines",
        lines.len()
    );
    child.kill()?;
    child.wait()?;
    Ok(())
}
