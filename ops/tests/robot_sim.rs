//! Smoke test of `robot-sim`: a short run of each robot API against an in-process node finishes
//! the task with every item completed once and reports no duplicates or errors.

use anyhow::{Context, Result, ensure};
use orchestrator_node::{Node, NodeConfig};
use serde_json::Value;

async fn simulate(node: &Node, flags: &[&str]) -> Result<Value> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_robot-sim"))
        .args(["--base-url", &format!("http://{}", node.addr())])
        .args(["--admin-password", "admin-password"])
        .args(flags)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "robot-sim failed: {stdout} {stderr}"
    );
    let line = stdout.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("not JSON: {line} ({stderr})"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_robot_api_finishes_a_task_without_duplicates() -> Result<()> {
    let node = Node::start(NodeConfig::for_tests()).await?;
    for api in ["ws", "rest", "seed"] {
        let report = simulate(
            &node,
            &[
                "--api",
                api,
                "--robots",
                "4",
                "--capacity",
                "3",
                "--items",
                "240",
                "--duration",
                "60s",
            ],
        )
        .await?;
        assert_eq!(report["api"], api);
        assert_eq!(report["items_completed"], 240, "{report}");
        assert_eq!(report["duplicates"], 0, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert!(
            report["items_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{report}"
        );
        assert!(report["next_item_p99_ms"].is_number(), "{report}");
        assert!(report["assign_p99_ms"].is_number(), "{report}");
    }
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_crashes_still_end_with_every_item_final() -> Result<()> {
    let mut config = NodeConfig::for_tests();
    config.pulse_timeout = std::time::Duration::from_secs(1);
    config.retry_backoff = std::time::Duration::from_millis(10);
    let node = Node::start(config).await?;
    let report = simulate(
        &node,
        &[
            "--api",
            "ws",
            "--robots",
            "5",
            "--capacity",
            "2",
            "--items",
            "200",
            "--business-failure-rate",
            "0.1",
            "--application-failure-rate",
            "0.1",
            "--crash-rate",
            "0.05",
            "--duration",
            "90s",
        ],
    )
    .await?;
    assert_eq!(report["duplicates"], 0, "{report}");
    let completed = report["items_completed"].as_u64().unwrap_or(0);
    assert!(completed > 100 && completed <= 200, "{report}");
    assert!(report["crashes"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(
        report["seconds"].as_f64().unwrap_or(90.0) < 90.0,
        "the task finished: {report}"
    );
    node.shutdown().await;
    Ok(())
}

/// A node that cannot take a robot on just now closes its WebSocket with 1013 (try again later)
/// or answers 503 instead of the upgrade: the robot comes back after a pause instead of giving
/// up, as a production robot does in a connect storm. A node that ends a robot's session
/// (1000 "session ended": it judged the robot silent, or was fenced) sees it connect again. A
/// stand-in node refuses the first two connections (one each way), acknowledges `ready` on the
/// third and then ends it, and keeps the fourth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_told_to_come_back_later_or_whose_session_ended_comes_back() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let node = tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            connections += 1;
            if connections == 1 {
                let _ = tcp
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                    .await;
                continue;
            }
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                continue;
            };
            if connections == 2 {
                let _ = ws
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Again,
                        reason: "dispatch is unavailable: robot registry timed out".into(),
                    })))
                    .await;
                continue;
            }
            let ends = connections == 3;
            tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if message.to_text().is_ok_and(|t| t.contains("\"ready\"")) {
                        let ack = r#"{"type":"ack","ref":"ready"}"#;
                        let _ = ws.send(Message::text(ack)).await;
                        if ends {
                            let _ = ws
                                .send(Message::Close(Some(CloseFrame {
                                    code: CloseCode::Normal,
                                    reason: "session ended".into(),
                                })))
                                .await;
                        }
                    }
                }
            });
        }
    });
    let tokens = tempfile::NamedTempFile::new()?;
    std::fs::write(tokens.path(), "7 robot-token\n")?;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_robot-sim"))
        .args(["--base-url", &format!("http://{addr}"), "--api", "ws"])
        .args(["--robots", "1", "--duration", "1s"])
        .arg("--tokens-file")
        .arg(tokens.path())
        .output()
        .await?;
    node.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "robot-sim failed: {stdout} {stderr}"
    );
    let report: Value = serde_json::from_str(stdout.lines().last().context("no output")?)?;
    assert_eq!(report["refusals"], 2, "{report} {stderr}");
    assert_eq!(report["reconnects"], 1, "{report} {stderr}");
    assert_eq!(report["connected"], 1, "{report} {stderr}");
    assert_eq!(report["errors"], 0, "{report} {stderr}");
    Ok(())
}
