//! The HTTP server under slow and idle clients: headers that never finish, a body sent a byte
//! at a time, idle keep-alive connections and a cap on open connections (WebSockets count),
//! a stop that closes WebSocket robots with "reconnect" and does not wait on slow clients, and
//! the headers every JSON response carries.

use anyhow::{Context, Result, ensure};
use orchestrator_node::NodeConfig;
use orchestrator_tests::{TestNode, WsRobot};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(idle: Duration, max_connections: usize) -> NodeConfig {
    let mut config = NodeConfig::for_tests();
    config.server_limits.idle_timeout = idle;
    config.server_limits.max_connections = max_connections;
    config.body_timeout = Duration::from_millis(800);
    config
}

/// Reads until the server closes the connection; returns what it sent and how long it took.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Result<(String, Duration)> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(within, stream.read(&mut buf))
            .await
            .context("the server kept the connection open")?
            .unwrap_or(0);
        if n == 0 {
            return Ok((String::from_utf8_lossy(&got).into_owned(), start.elapsed()));
        }
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn slow_headers_slow_bodies_and_idle_connections_are_closed() -> Result<()> {
    let t = TestNode::start_with(config(Duration::from_millis(700), 100)).await?;
    let addr = t.node.addr();

    // Headers that never finish.
    let mut slow_head = TcpStream::connect(addr).await?;
    slow_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let (_, took) = until_closed(&mut slow_head, Duration::from_secs(5)).await?;
    ensure!(took < Duration::from_secs(3), "closed after {took:?}");

    // A keep-alive connection left idle after one request.
    let mut idle = TcpStream::connect(addr).await?;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let (answer, took) = until_closed(&mut idle, Duration::from_secs(5)).await?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    ensure!(
        took < Duration::from_secs(3),
        "idle connection closed after {took:?}"
    );

    // A JSON body sent a byte at a time: 408 once the body deadline passes.
    let mut trickle = TcpStream::connect(addr).await?;
    trickle
        .write_all(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
              content-length: 60\r\n\r\n",
        )
        .await?;
    let start = Instant::now();
    let mut answer = String::new();
    for byte in br#"{"username": "admin", "password": "admin-password"      }"# {
        if trickle.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(150), trickle.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            break;
        }
    }
    ensure!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    ensure!(answer.contains("body_timeout"), "{answer}");
    ensure!(start.elapsed() < Duration::from_secs(3));
    Ok(())
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_websockets_count() -> Result<()> {
    let t = TestNode::start_with(config(Duration::from_secs(30), 4)).await?;
    let addr = t.node.addr();
    // The test client's own keep-alive connection to the node (admin login) is one of them.
    let (id, token) = t.robot("ws-cap", json!({ "capacity": 1 })).await?;
    let robot = WsRobot::connect(&t, id, &token).await?;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(addr).await?;
    let (answer, _) = until_closed(&mut extra, Duration::from_secs(5)).await?;
    ensure!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    ensure!(answer.contains("too_many_connections"), "{answer}");
    ensure!(
        answer.to_ascii_lowercase().contains("retry-after: 5"),
        "{answer}"
    );

    // Closing the WebSocket frees its place.
    robot.close().await?;
    let mut again = None;
    for _ in 0..50 {
        let mut probe = TcpStream::connect(addr).await?;
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let (answer, _) = until_closed(&mut probe, Duration::from_secs(5)).await?;
        if answer.starts_with("HTTP/1.1 200") {
            again = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(again.is_some(), "a place freed once the WebSocket closed");
    drop(held);
    Ok(())
}

#[tokio::test]
async fn a_stop_closes_websocket_robots_with_reconnect_and_skips_slow_clients() -> Result<()> {
    let mut config = config(Duration::from_secs(30), 100);
    config.server_limits.grace = Duration::from_secs(2);
    let t = TestNode::start_with(config).await?;
    let addr = t.node.addr();
    let mut robot = WsRobot::create(&t, "ws-stop", json!({ "capacity": 1 })).await?;
    robot.send(json!({ "type": "ready", "ref": "r" })).await?;
    robot.next().await?;
    let mut slow = TcpStream::connect(addr).await?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await?;

    let start = Instant::now();
    let stopping = tokio::spawn(t.node.shutdown());
    let closed = robot.next_within(Duration::from_secs(5)).await;
    let message = format!("{closed:?}");
    ensure!(
        message.contains("Restart") || message.contains("1012"),
        "the robot is told to reconnect: {message}"
    );
    tokio::time::timeout(Duration::from_secs(6), stopping)
        .await
        .context("the node stopped despite a slow client")??;
    ensure!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn json_responses_are_not_sniffed_or_cached() -> Result<()> {
    let t = TestNode::start().await?;
    for path in ["/healthz", "/api/v1/tasks", "/no/such/route"] {
        let resp = t.http.get(t.url(path)).bearer_auth(&t.admin).send().await?;
        let headers = resp.headers();
        ensure!(
            headers.get("x-content-type-options").map(|v| v.as_bytes()) == Some(b"nosniff"),
            "{path}: {headers:?}"
        );
        ensure!(
            headers.get("cache-control").map(|v| v.as_bytes()) == Some(b"no-store"),
            "{path}: {headers:?}"
        );
    }
    Ok(())
}
