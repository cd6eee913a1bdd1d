//! What a robot sends is bounded on every surface (REST v1, the seed API, WebSocket frames):
//! an oversized observation or output, or one nested too deep, is refused with a 4xx and a code
//! and leaves the item as it was. A chunk whose stored text cannot be decoded is isolated: the
//! node keeps recovering expired leases of other chunks, lists the rest, and `/healthz` names it.

use anyhow::{Context, Result, ensure};
use orchestrator_node::NodeConfig;
use orchestrator_tests::{RestRobot, TestNode, WsRobot, eventually, expect, seed_robot};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

fn nested(levels: usize) -> Value {
    let mut value = json!("leaf");
    for _ in 0..levels {
        value = json!({ "a": value });
    }
    value
}

async fn item(t: &TestNode, id: i64) -> Result<Value> {
    let state = t
        .node
        .store()
        .item_state(id)
        .await?
        .context("item exists")?;
    Ok(json!({
        "status": state.status, "observation": state.observation, "output": state.output,
        "lease": state.lease_id,
    }))
}

/// Sends `body` as the item's completion and expects a refusal with `status` and `code`.
async fn refused(
    robot: &RestRobot,
    item: &Value,
    body: Value,
    status: StatusCode,
    code: &str,
) -> Result<()> {
    let resp = robot.act(item, "complete", body).await?;
    let got = resp.status();
    let body: Value = resp.json().await?;
    ensure!(
        got == status && body["error"]["code"] == code,
        "expected {status} {code}, got {got} {body}"
    );
    Ok(())
}

#[tokio::test]
async fn oversized_or_deep_reports_are_refused_on_every_robot_surface() -> Result<()> {
    // Limits below the defaults, so the seed API's query string stays a valid URL.
    let mut config = NodeConfig::for_tests();
    config.payload_limits.max_observation_bytes = 16_000;
    config.payload_limits.max_output_bytes = 16_000;
    let t = TestNode::start_with(config).await?;
    let process = t.process("Limits").await?;
    let robot = RestRobot::create(&t, "rest-limits", json!({ "capacity": 1 })).await?;
    t.upload_seed_rows(process, 3).await?;
    let claimed = robot.claim_exactly(1).await?;
    let it = &claimed[0];
    let id = it["id"].as_i64().context("id")?;
    expect(robot.act(it, "start", json!({})).await?, StatusCode::OK).await?;
    let before = item(&t, id).await?;

    // REST v1: depth 33 (the limit is 32), an observation a byte too long, a 17 KB output, a
    // long failure message.
    refused(
        &robot,
        it,
        json!({ "output": nested(33) }),
        StatusCode::UNPROCESSABLE_ENTITY,
        "output_too_deep",
    )
    .await?;
    refused(
        &robot,
        it,
        json!({ "observation": "x".repeat(16_001) }),
        StatusCode::PAYLOAD_TOO_LARGE,
        "observation_too_large",
    )
    .await?;
    refused(
        &robot,
        it,
        json!({ "output": { "blob": "y".repeat(17_000) } }),
        StatusCode::PAYLOAD_TOO_LARGE,
        "output_too_large",
    )
    .await?;
    let resp = robot
        .act(
            it,
            "fail",
            json!({ "kind": "application", "message": "z".repeat(17_000) }),
        )
        .await?;
    ensure!(resp.status() == StatusCode::PAYLOAD_TOO_LARGE);
    // A body nested past what any JSON reader takes is refused as a body, not a 5xx.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let raw = t
        .http
        .post(t.url(&format!("/api/v1/robot/items/{id}/complete")))
        .header("authorization", format!("Token {}", robot.token))
        .header("content-type", "application/json")
        .body(format!(r#"{{"lease_id": "x", "output": {deep}}}"#))
        .send()
        .await?;
    ensure!(raw.status().is_client_error(), "{}", raw.status());
    ensure!(
        item(&t, id).await? == before,
        "refusals change nothing: {before} vs {}",
        item(&t, id).await?
    );

    // Within the limits: depth 32 and 16,000 bytes are fine.
    let ok = robot
        .act(
            it,
            "complete",
            json!({ "observation": "o".repeat(16_000), "output": nested(32) }),
        )
        .await?;
    expect(ok, StatusCode::OK).await?;

    // Seed API: the observation travels in the query string.
    let seed = seed_robot(&t, "seed-limits").await?;
    seed.call(
        Method::PATCH,
        &format!("/api/robots/?robot_id={}&status=ACTIVE", seed.id),
    )
    .await?;
    let held = eventually(Duration::from_secs(10), || async {
        let (_, body) = seed
            .call(Method::GET, &format!("/api/tasks/?robot_id={}", seed.id))
            .await?;
        let tasks: Vec<Value> = serde_json::from_str(&body)?;
        Ok(tasks.first().and_then(|t| t["item_set"][0]["id"].as_i64()))
    })
    .await?;
    let before = item(&t, held).await?;
    let (code, body) = seed
        .call(
            Method::PATCH,
            &format!(
                "/api/items?robot_id={}&item_id={held}&status=COMPLETED&observation={}",
                seed.id,
                "s".repeat(20_000)
            ),
        )
        .await?;
    ensure!(code == StatusCode::PAYLOAD_TOO_LARGE, "{code} {body}");
    ensure!(item(&t, held).await? == before);
    Ok(())
}

#[tokio::test]
async fn an_oversized_websocket_report_gets_an_error_frame_and_frees_no_slot() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("WS limits").await?;
    let mut robot = WsRobot::create(&t, "ws-limits", json!({ "capacity": 1 })).await?;
    robot.send(json!({ "type": "ready", "ref": "r" })).await?;
    t.upload_seed_rows(process, 5).await?;
    let mut first = None;
    while first.is_none() {
        let frame = robot.next().await?;
        if frame["type"] == "items" {
            first = frame["items"][0].as_object().cloned();
        }
    }
    let it = Value::Object(first.context("an item")?);
    let id = it["id"].as_i64().context("id")?;
    robot.act("started", &it, "s", json!({})).await?;
    robot
        .act("completed", &it, "deep", json!({ "output": nested(40) }))
        .await?;
    let mut error = None;
    while error.is_none() {
        let frame = robot.next().await?;
        ensure!(
            frame["type"] != "items",
            "no new item while the slot is busy: {frame}"
        );
        if frame["type"] == "error" {
            error = Some(frame);
        }
    }
    let error = error.context("error frame")?;
    ensure!(
        error["code"] == "output_too_deep" && error["ref"] == "deep",
        "{error}"
    );
    ensure!(
        robot
            .next_within(Duration::from_millis(500))
            .await?
            .is_none_or(|f| f["type"] != "items"),
        "the refused report pushed no standby item"
    );
    ensure!(item(&t, id).await?["status"] == "STARTED");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_cannot_be_read_is_isolated_and_reported() -> Result<()> {
    let mut config = NodeConfig::for_tests();
    config.lease_ttl = Duration::from_millis(600);
    config.sweep_period = Duration::from_millis(100);
    let t = TestNode::start_with(config).await?;
    let process = t.process("Damaged").await?;
    let damaged = t.upload_seed_rows(process, 10).await?;
    let healthy = t.upload_seed_rows(process, 10).await?;
    let store = t.node.store();
    let rows = store
        .query_all(
            "SELECT VALUE record::id(id) FROM chunk WHERE task = $task;",
            json!({ "task": damaged }),
        )
        .await?;
    let n = rows[0][0]
        .as_i64()
        .with_context(|| format!("chunk of the task: {rows:?}"))?;
    store
        .query_all(
            "UPDATE type::record('chunk', $n) SET state = '[[[[ not json', version += 1;",
            json!({ "n": n }),
        )
        .await?;

    // A robot takes items and goes quiet: its leases expire and come back, the damaged
    // chunk notwithstanding.
    let robot = RestRobot::create(&t, "quiet", json!({ "capacity": 3 })).await?;
    let mut items = Vec::new();
    for _ in 0..50 {
        items.extend(robot.claim(3, 0.2).await?);
        if items.len() >= 3 {
            break;
        }
    }
    ensure!(items.len() == 3, "the robot got {} items", items.len());
    for it in &items {
        ensure!(
            it["task_id"] == healthy,
            "only the readable task is dispatched: {it}"
        );
    }
    let ids: Vec<i64> = items.iter().filter_map(|i| i["id"].as_i64()).collect();
    let recovered = eventually(Duration::from_secs(10), || async {
        let mut all_back = true;
        for id in &ids {
            let state = store.item_state(*id).await?.context("item")?;
            all_back &= state.lease_expiries > 0;
        }
        Ok(all_back.then_some(()))
    })
    .await;
    if let Err(err) = recovered {
        let mut states = Vec::new();
        for id in &ids {
            states.push(store.item_state(*id).await?);
        }
        anyhow::bail!("expired leases of the healthy task were not recovered: {err}: {states:?}");
    }

    let health = expect(t.http.get(t.url("/healthz")).send().await?, StatusCode::OK).await?;
    ensure!(
        health["status"] == "degraded" && health["unreadable_chunks"] == json!([n]),
        "{health}"
    );
    let listing = t
        .get(&format!("/api/v1/tasks/{healthy}/items?limit=100"))
        .await?;
    ensure!(listing["items"].as_array().map(Vec::len) == Some(10));
    Ok(())
}
