//! A top-level dispatch actor that fails comes back by itself: `/healthz` answers 503 naming it
//! while dispatch is down, the supervisor restarts dispatch from the store, and robots carry on
//! (a REST robot with its next request, a WebSocket robot by reconnecting) until the task is
//! done, every item once.

use anyhow::{Context, Result, ensure};
use orchestrator_tests::{RestRobot, TestNode, eventually, expect, seed_csv, wait_for_task_status};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_restarts_after_the_registry_fails_and_the_task_completes() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Supervised").await?;
    let robot = RestRobot::create(&t, "survivor", json!({ "capacity": 2 })).await?;
    let task = expect(
        t.upload(&t.admin, process, seed_csv(40)).await?,
        StatusCode::CREATED,
    )
    .await?["id"]
        .as_i64()
        .context("task id")?;
    let mut done = HashSet::new();
    for item in robot.claim_exactly(2).await.context("first claim")? {
        robot.finish(&item).await?;
        done.insert(item["id"].as_i64().unwrap_or_default());
    }
    // The robot holds two more items when the registry fails.
    let mut held = Vec::new();
    for _ in 0..50 {
        held.extend(robot.claim(2 - held.len(), 0.2).await?);
        if held.len() == 2 {
            break;
        }
    }
    ensure!(held.len() == 2, "the robot holds {} items", held.len());

    t.node.dispatcher().fail_registry_for_test();
    let down: Value = eventually(Duration::from_secs(5), || async {
        let resp = t.http.get(t.url("/healthz")).send().await?;
        if resp.status() != StatusCode::SERVICE_UNAVAILABLE {
            return Ok(None);
        }
        Ok(Some(resp.json().await?))
    })
    .await
    .context("healthz turned 503 while dispatch was down")?;
    ensure!(down["error"]["code"] == "dispatch_down", "{down}");
    ensure!(
        down["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("robot registry")),
        "{down}"
    );
    eventually(Duration::from_secs(10), || async {
        let resp = t.http.get(t.url("/healthz")).send().await?;
        Ok((resp.status() == StatusCode::OK).then_some(()))
    })
    .await
    .context("healthz back to 200")?;
    ensure!(t.node.dispatcher().restarts() == 1);

    // The leases survived in the store: the items the robot held still complete.
    for item in &held {
        robot.finish(item).await?;
        done.insert(item["id"].as_i64().unwrap_or_default());
    }
    while done.len() < 40 {
        let items = robot.claim(2, 0.5).await?;
        for item in &items {
            robot.finish(item).await?;
            ensure!(
                done.insert(item["id"].as_i64().unwrap_or_default()),
                "an item came twice: {item}"
            );
        }
    }
    let finished = wait_for_task_status(&t, task, "COMPLETED").await?;
    ensure!(finished["counts"]["completed"] == 40, "{finished}");
    Ok(())
}
