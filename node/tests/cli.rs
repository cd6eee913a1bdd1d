//! The `orchestrator` binary as an operator runs it: flags, readiness, the generated admin
//! password printed once, and a graceful exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn serve_prints_the_generated_admin_password_and_stops_on_sigterm() -> anyhow::Result<()> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args([
            "serve",
            "--db",
            "mem://",
            "--listen",
            "127.0.0.1:0",
            "--pulse-timeout",
            "3s",
        ])
        .env_remove("ORCH_ADMIN_PASSWORD")
        .env("ORCH_JWT_TTL", "5m")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
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
    drop((slow_head, slow_body));
    Ok(())
}

#[test]
fn invalid_settings_are_refused_before_start() -> anyhow::Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--db", "mem://", "--pulse-timeout", "soon"])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pulse_timeout"), "{stderr}");
    Ok(())
}

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
