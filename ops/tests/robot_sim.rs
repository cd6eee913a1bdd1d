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
