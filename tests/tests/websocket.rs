//! The robot WebSocket channel end to end: items are pushed up to capacity and refilled as they
//! complete, a reconnect resumes, a drain revokes, bad frames get `error` frames without
//! changing anything, and WebSocket, REST v1 and seed robots finish one task together.

use anyhow::{Context, Result, bail, ensure};
use orchestrator_node::NodeConfig;
use orchestrator_tests::{
    RestRobot, TestNode, WsMessage, WsRobot, expect, seed_csv, seed_robot, wait_for_task_status,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

async fn upload(t: &TestNode, process: i64, rows: usize) -> Result<i64> {
    let task = expect(
        t.upload(&t.admin, process, seed_csv(rows)).await?,
        StatusCode::CREATED,
    )
    .await?;
    task["id"].as_i64().context("task id")
}

/// Sends `ready` and waits for its ack (items pushed meanwhile are returned).
async fn ready(robot: &mut WsRobot, capacity: Option<i64>) -> Result<Vec<Value>> {
    let mut frame = json!({ "type": "ready", "ref": "ready" });
    if let Some(capacity) = capacity {
        frame["capacity"] = json!(capacity);
    }
    robot.send(frame).await?;
    let mut items = Vec::new();
    loop {
        let frame = robot.next().await?;
        match frame["type"].as_str() {
            Some("ack") if frame["ref"] == "ready" => return Ok(items),
            Some("items") => items.extend(frame["items"].as_array().cloned().unwrap_or_default()),
            _ => bail!("unexpected frame {frame}"),
        }
    }
}

/// Works items as they are pushed until `total` are done or nothing comes for `idle`; checks
/// every ack. Returns the completed ids in order.
async fn work(robot: &mut WsRobot, mut held: Vec<Value>, idle: Duration) -> Result<Vec<i64>> {
    let mut done = Vec::new();
    let mut pending_acks = 0usize;
    loop {
        for item in held.drain(..) {
            let id = item["id"].as_i64().context("item id")?;
            robot
                .act("started", &item, &format!("s{id}"), json!({}))
                .await?;
            robot
                .act(
                    "completed",
                    &item,
                    &format!("c{id}"),
                    json!({ "observation": "done by ws", "output": { "ok": true } }),
                )
                .await?;
            pending_acks += 2;
            done.push(id);
        }
        let Some(frame) = robot.next_within(idle).await? else {
            ensure!(pending_acks == 0, "{pending_acks} acks never came");
            return Ok(done);
        };
        match frame["type"].as_str() {
            Some("items") => held.extend(frame["items"].as_array().cloned().unwrap_or_default()),
            Some("ack") => pending_acks -= 1,
            _ => bail!("unexpected frame {frame}"),
        }
    }
}

#[tokio::test]
async fn items_are_pushed_up_to_capacity_and_refilled_as_they_complete() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Push").await?;
    let mut robot = WsRobot::create(&t, "ws-push", json!({ "capacity": 3 })).await?;
    ready(&mut robot, None).await?;
    let task = upload(&t, process, 10).await?;

    let first = robot.items(3).await?;
    assert_eq!(first.len(), 3, "exactly the capacity is pushed");
    assert!(
        robot
            .next_within(Duration::from_millis(400))
            .await?
            .is_none(),
        "nothing beyond capacity is pushed"
    );
    for item in &first {
        assert_eq!(item["status"], "ASSIGNED");
        assert_eq!(item["process_id"], process);
        assert!(item["lease_id"].is_string() && item["values"].is_object());
    }

    // One completion frees one slot: the ack carries the ref, and one new item follows.
    let item = &first[0];
    robot.act("started", item, "s1", json!({})).await?;
    robot
        .act("completed", item, "c1", json!({ "observation": "ok" }))
        .await?;
    let mut acks = Vec::new();
    let mut refill = Vec::new();
    while acks.len() < 2 || refill.is_empty() {
        let frame = robot.next().await?;
        match frame["type"].as_str() {
            Some("ack") => acks.push(frame),
            Some("items") => refill.extend(frame["items"].as_array().cloned().unwrap_or_default()),
            _ => bail!("unexpected frame {frame}"),
        }
    }
    assert_eq!(acks[0]["ref"], "s1");
    assert_eq!(acks[1]["ref"], "c1");
    assert_eq!(acks[1]["item"]["status"], "COMPLETED");
    assert_eq!(refill.len(), 1, "one slot freed, one item pushed");

    let mut held: Vec<Value> = first[1..].to_vec();
    held.extend(refill);
    let mut done = vec![item["id"].as_i64().context("id")?];
    done.extend(work(&mut robot, held, Duration::from_millis(800)).await?);
    let unique: HashSet<i64> = done.iter().copied().collect();
    assert_eq!((done.len(), unique.len()), (10, 10), "every item once");
    let task = wait_for_task_status(&t, task, "COMPLETED").await?;
    assert_eq!(task["counts"]["completed"], 10);
    Ok(())
}

#[tokio::test]
async fn a_reconnect_within_the_pulse_timeout_resumes_the_same_leases() -> Result<()> {
    let mut config = NodeConfig::for_tests();
    config.pulse_timeout = Duration::from_secs(5);
    let t = TestNode::start_with(config).await?;
    let process = t.process("Resume").await?;
    let (id, token) = t.robot("ws-resume", json!({ "capacity": 2 })).await?;
    let mut robot = WsRobot::connect(&t, id, &token).await?;
    ready(&mut robot, None).await?;
    let task = upload(&t, process, 2).await?;
    let items = robot.items(2).await?;
    robot.act("started", &items[0], "s", json!({})).await?;
    assert_eq!(robot.next().await?["ref"], "s");
    robot.close().await?;

    let mut robot = WsRobot::connect(&t, id, &token).await?;
    let resumed = robot.items(2).await?;
    let by_id: BTreeMap<i64, &Value> = resumed
        .iter()
        .map(|i| (i["id"].as_i64().unwrap_or_default(), i))
        .collect();
    for before in &items {
        let after = by_id
            .get(&before["id"].as_i64().unwrap_or_default())
            .context("a held item was not re-sent")?;
        assert_eq!(after["lease_id"], before["lease_id"], "same lease");
    }
    let started = by_id[&items[0]["id"].as_i64().unwrap_or_default()];
    assert_eq!(started["status"], "STARTED");
    let done = work(&mut robot, resumed.clone(), Duration::from_millis(500)).await;
    // The started item is acked for `started` again (repeat is a no-op) and completed.
    done?;
    let task = wait_for_task_status(&t, task, "COMPLETED").await?;
    assert_eq!(task["counts"]["completed"], 2);
    assert_eq!(task["counts"]["abandoned"], 0);
    Ok(())
}

#[tokio::test]
async fn draining_a_robot_revokes_its_unstarted_items() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Drain").await?;
    let mut robot = WsRobot::create(&t, "ws-drain", json!({ "capacity": 2 })).await?;
    ready(&mut robot, None).await?;
    let task = upload(&t, process, 2).await?;
    let items = robot.items(2).await?;
    let mut ids: Vec<i64> = items.iter().filter_map(|i| i["id"].as_i64()).collect();
    ids.sort_unstable();

    let resp = t
        .req(
            Method::PATCH,
            &format!("/api/v1/robots/{}", robot.id),
            &t.admin,
        )
        .json(&json!({ "status": "INACTIVE" }))
        .send()
        .await?;
    expect(resp, StatusCode::OK).await?;
    let frame = robot.next().await?;
    assert_eq!(frame["type"], "revoke", "{frame}");
    let mut revoked: Vec<i64> = frame["item_ids"]
        .as_array()
        .context("item_ids")?
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    revoked.sort_unstable();
    assert_eq!(revoked, ids);
    let task = t.get(&format!("/api/v1/tasks/{task}")).await?;
    assert_eq!(
        task["counts"]["pending"], 2,
        "revoked items are PENDING again"
    );

    // A revoked lease is refused.
    robot.act("started", &items[0], "late", json!({})).await?;
    let frame = robot.next().await?;
    assert_eq!(
        (frame["type"].as_str(), frame["ref"].as_str()),
        (Some("error"), Some("late"))
    );
    Ok(())
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_change_nothing() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Bad frames").await?;
    let mut robot = WsRobot::create(&t, "ws-bad", json!({ "capacity": 1 })).await?;
    let mut other = WsRobot::create(&t, "ws-other", json!({ "capacity": 1 })).await?;
    ready(&mut robot, None).await?;
    ready(&mut other, None).await?;
    upload(&t, process, 2).await?;
    let mine = robot.items(1).await?.remove(0);
    let theirs = other.items(1).await?.remove(0);
    let before = t.snapshot().await?;

    // Above the protocol limit (1 MiB), below the size that ends the connection (4 MiB).
    let big = format!(r#"{{"type":"pulse","pad":"{}"}}"#, "x".repeat(1_100_000));
    let cases: Vec<(WsMessage, &str)> =
        vec![
        (WsMessage::text("not json"), "malformed_frame"),
        (WsMessage::text("[1,2,3]"), "malformed_frame"),
        (WsMessage::text(r#"{"no":"type"}"#), "malformed_frame"),
        (WsMessage::text(r#"{"type":"dance","ref":1}"#), "unknown_type"),
        (WsMessage::text(big), "frame_too_large"),
        (WsMessage::binary(vec![1u8, 2, 3]), "malformed_frame"),
        (
            WsMessage::text(r#"{"type":"completed","item_id":1}"#),
            "invalid_frame",
        ),
        (
            WsMessage::text(
                json!({ "type": "failed", "item_id": mine["id"], "lease_id": mine["lease_id"] })
                    .to_string(),
            ),
            "invalid_frame",
        ),
        (
            WsMessage::text(
                json!({ "type": "completed", "item_id": theirs["id"],
                        "lease_id": theirs["lease_id"], "ref": "x" })
                .to_string(),
            ),
            "not_your_item",
        ),
        (
            WsMessage::text(
                json!({ "type": "completed", "item_id": mine["id"], "lease_id": "1-stale" })
                    .to_string(),
            ),
            "stale_lease",
        ),
        (
            WsMessage::text(
                json!({ "type": "completed", "item_id": 999_999, "lease_id": "x" }).to_string(),
            ),
            "not_found",
        ),
    ];
    for (message, code) in cases {
        let shown = format!("{message:?}").chars().take(80).collect::<String>();
        robot.send_raw(message).await?;
        let frame = robot.next().await?;
        assert_eq!(frame["type"], "error", "{shown}: {frame}");
        assert_eq!(frame["code"], code, "{shown}: {frame}");
        assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // REST v1 answers an unknown item the same way.
    let resp = t
        .http
        .post(t.url("/api/v1/robot/items/999999/complete"))
        .header("authorization", format!("Token {}", other.token))
        .json(&json!({ "lease_id": "x" }))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Still connected, and nothing changed.
    robot
        .send(json!({ "type": "pulse", "ref": "alive" }))
        .await?;
    let frame = robot.next().await?;
    assert_eq!(
        (frame["type"].as_str(), frame["ref"].as_str()),
        (Some("ack"), Some("alive"))
    );
    assert_eq!(t.snapshot().await?, before);
    Ok(())
}

/// A report as large as the limits allow (observation and output at 64 KiB each, by default)
/// fits in one frame, as it fits in one REST request.
#[tokio::test]
async fn a_report_at_the_payload_limits_fits_in_one_frame() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Large reports").await?;
    let mut robot = WsRobot::create(&t, "ws-large", json!({ "capacity": 1 })).await?;
    ready(&mut robot, None).await?;
    upload(&t, process, 1).await?;
    let item = robot.items(1).await?.remove(0);
    let observation = "o".repeat(64 << 10);
    // Compact JSON of exactly 64 KiB: {"text":"..."} is 11 bytes around the text.
    let output = json!({ "text": "p".repeat((64 << 10) - 11) });
    assert_eq!(output.to_string().len(), 64 << 10);
    robot
        .send(
            json!({ "type": "completed", "item_id": item["id"], "lease_id": item["lease_id"],
                      "observation": observation, "output": output, "ref": "large" }),
        )
        .await?;
    let frame = robot.next().await?;
    assert_eq!(
        (frame["type"].as_str(), frame["ref"].as_str()),
        (Some("ack"), Some("large")),
        "{}",
        frame.to_string().chars().take(300).collect::<String>()
    );
    let task = item["task_id"].as_i64().context("task id")?;
    let listed = t.get(&format!("/api/v1/tasks/{task}/items")).await?;
    let stored = &listed["items"][0];
    assert_eq!(stored["status"], "COMPLETED");
    assert_eq!(stored["observation"].as_str().map(str::len), Some(64 << 10));
    assert_eq!(stored["output"], output);
    Ok(())
}

#[tokio::test]
async fn the_upgrade_needs_a_robot_token() -> Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let t = TestNode::start().await?;
    let (id, token) = t.robot("ws-auth", json!({})).await?;
    let url = t.url("/api/v1/robot/ws").replacen("http", "ws", 1);

    for header in [
        None,
        Some("Token nope".to_string()),
        Some(format!("Bearer {}", t.admin)),
    ] {
        let mut request = url.clone().into_client_request()?;
        if let Some(header) = &header {
            request
                .headers_mut()
                .insert("authorization", header.parse()?);
        }
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{header:?}");
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}"))?;
                assert_eq!(body["error"]["code"], "unauthorized", "{header:?}: {body}");
            }
            other => bail!("{header:?} was not refused: {:?}", other.map(|_| ())),
        }
    }
    // A plain GET without the upgrade is refused too: 426 names what is missing.
    let resp = t
        .http
        .get(t.url("/api/v1/robot/ws"))
        .header("authorization", format!("Token {token}"))
        .send()
        .await?;
    assert_eq!(resp.status(), 426);
    let body: Value = resp.json().await?;
    assert_eq!(
        body["error"]["code"], "websocket_upgrade_required",
        "{body}"
    );

    // The token may come as a query parameter, for tools that cannot set headers.
    let (socket, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}")).await?;
    let mut robot = WsRobot::from_socket(id, &token, socket);
    robot.send(json!({ "type": "pulse", "ref": 1 })).await?;
    assert_eq!(robot.next().await?["ref"], 1);
    Ok(())
}

#[tokio::test]
async fn websocket_rest_and_seed_robots_finish_one_task_exactly_once() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Mixed fleet").await?;
    let mut ws = WsRobot::create(&t, "fleet-ws", json!({ "capacity": 3 })).await?;
    ready(&mut ws, None).await?;
    let rest = RestRobot::create(&t, "fleet-rest", json!({ "capacity": 3 })).await?;
    let seed = seed_robot(&t, "fleet-seed").await?;
    let task = upload(&t, process, 150).await?;

    let ws_work =
        tokio::spawn(async move { work(&mut ws, Vec::new(), Duration::from_secs(2)).await });
    let rest_work = tokio::spawn(async move {
        let mut done = Vec::new();
        let mut idle = 0;
        while idle < 5 {
            let items = rest.claim(3, 0.3).await?;
            if items.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            for item in &items {
                rest.finish(item).await?;
                done.push(item["id"].as_i64().unwrap_or_default());
            }
        }
        anyhow::Ok(done)
    });
    let seed_work = tokio::spawn(seed.run(15));
    let mut all = Vec::new();
    let mut shares = Vec::new();
    for (name, done) in [
        ("ws", ws_work.await??),
        ("rest", rest_work.await??),
        ("seed", seed_work.await??),
    ] {
        shares.push((name, done.len()));
        all.extend(done);
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 150, "completions {shares:?}");
    assert_eq!(unique.len(), 150, "no item completed twice {shares:?}");
    assert!(
        shares.iter().all(|(_, n)| *n > 0),
        "everyone worked: {shares:?}"
    );
    let task = wait_for_task_status(&t, task, "COMPLETED").await?;
    assert_eq!(task["counts"]["completed"], 150);
    let items = t
        .get(&format!(
            "/api/v1/tasks/{task}/items?limit=1000",
            task = task["id"]
        ))
        .await?;
    let statuses: HashSet<String> = items["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["status"].as_str().map(str::to_string))
        .collect();
    assert_eq!(statuses, HashSet::from(["COMPLETED".to_string()]));
    Ok(())
}

/// Task counts once `check` holds for them.
async fn counts_when(t: &TestNode, task: i64, check: impl Fn(&Value) -> bool) -> Result<Value> {
    let task = orchestrator_tests::task_when(t, task, |task| check(&task["counts"])).await?;
    Ok(task["counts"].clone())
}

#[tokio::test]
async fn a_standby_item_is_pushed_the_moment_the_robot_reports_one_done() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Standby").await?;
    let mut robot = WsRobot::create(&t, "ws-standby", json!({ "capacity": 1 })).await?;
    ready(&mut robot, None).await?;
    let task = upload(&t, process, 3).await?;

    let first = robot.items(1).await?.remove(0);
    // A second item is leased to the robot and kept back: the robot sees only its capacity.
    counts_when(&t, task, |c| c["assigned"] == 2 && c["pending"] == 1).await?;
    assert!(
        robot
            .next_within(Duration::from_millis(300))
            .await?
            .is_none(),
        "standby is not pushed while the window is full"
    );

    robot.act("started", &first, "s", json!({})).await?;
    assert_eq!(robot.next().await?["ref"], "s");
    robot
        .act("completed", &first, "c", json!({ "observation": "ok" }))
        .await?;
    // The next item goes out on the report itself, before the completion is even written
    // (its ack needs the write).
    let frame = robot.next().await?;
    assert_eq!(frame["type"], "items", "the next item comes first: {frame}");
    let second = frame["items"][0].clone();
    assert_eq!(frame["items"].as_array().map(Vec::len), Some(1));
    assert_ne!(second["id"], first["id"]);
    let ack = robot.next().await?;
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_str()),
        (Some("ack"), Some("c"))
    );

    // The last item becomes the new standby; the robot still sees one item at a time.
    counts_when(&t, task, |c| c["assigned"] == 2 && c["completed"] == 1).await?;
    assert!(
        robot
            .next_within(Duration::from_millis(300))
            .await?
            .is_none(),
        "never above capacity"
    );

    // The connection drops: the standby item goes back to the queue at once, not as an
    // attempt; the item the robot was shown stays leased to it while it may come back.
    robot.close().await?;
    let counts = counts_when(&t, task, |c| c["pending"] == 1).await?;
    assert_eq!(counts["assigned"], 1);
    let items = t
        .get(&format!("/api/v1/tasks/{task}/items?status=PENDING"))
        .await?;
    assert_eq!(
        items["items"][0]["attempt"], 0,
        "a standby hand-back is no attempt"
    );
    assert_ne!(items["items"][0]["id"], second["id"]);
    Ok(())
}

#[tokio::test]
async fn an_idle_robot_takes_over_work_held_as_another_robots_standby() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Takeover").await?;
    let mut streaming = WsRobot::create(&t, "ws-busy", json!({ "capacity": 1 })).await?;
    ready(&mut streaming, None).await?;
    let task = upload(&t, process, 2).await?;
    let first = streaming.items(1).await?.remove(0);
    counts_when(&t, task, |c| c["assigned"] == 2).await?;

    // A robot with room connects while the only other item waits as standby: it gets it.
    let idle = RestRobot::create(&t, "rest-idle", json!({ "capacity": 1 })).await?;
    let taken = idle.claim_exactly(1).await?;
    assert_ne!(taken[0]["id"], first["id"]);
    idle.finish(&taken[0]).await?;
    streaming.act("started", &first, "s", json!({})).await?;
    streaming.act("completed", &first, "c", json!({})).await?;
    let task = wait_for_task_status(&t, task, "COMPLETED").await?;
    assert_eq!(task["counts"]["completed"], 2);
    Ok(())
}
