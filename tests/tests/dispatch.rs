//! Dispatch end to end over the robot REST API v1: items flow to the least-loaded robots and come
//! back completed, failed or abandoned; silent robots, expired leases and cancellations.

use anyhow::Result;
use orchestrator_node::NodeConfig;
use orchestrator_tests::{
    RestRobot, TestNode, eventually, expect, expect_error, seed_csv, task_when,
    wait_for_task_status,
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
    Ok(task["id"].as_i64().unwrap_or_default())
}

/// Claims and finishes items until `stop` says so; returns the ids this robot completed.
async fn work(robot: RestRobot, max: usize) -> Result<Vec<i64>> {
    let mut done = Vec::new();
    let mut idle = 0;
    while idle < 3 {
        let items = robot.claim(max, 0.3).await?;
        if items.is_empty() {
            idle += 1;
            continue;
        }
        idle = 0;
        for item in &items {
            robot.finish(item).await?;
            done.push(item["id"].as_i64().unwrap_or_default());
        }
    }
    Ok(done)
}

#[tokio::test]
async fn robots_finish_a_task_with_balanced_shares_and_no_item_twice() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Balance reload").await?;
    let mut robots = Vec::new();
    for i in 0..3 {
        robots.push(RestRobot::create(&t, &format!("bot-{i}"), json!({ "capacity": 2 })).await?);
    }
    let task_id = upload(&t, process, 300).await?;
    let workers: Vec<_> = robots
        .iter()
        .cloned()
        .map(|r| tokio::spawn(work(r, 2)))
        .collect();
    let mut all = Vec::new();
    let mut shares = Vec::new();
    for worker in workers {
        let done = worker.await??;
        shares.push(done.len());
        all.extend(done);
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(
        (all.len(), unique.len()),
        (300, 300),
        "every item completed exactly once"
    );
    for share in &shares {
        assert!(*share >= 60, "shares are balanced: {shares:?}");
    }
    let task = wait_for_task_status(&t, task_id, "COMPLETED").await?;
    assert_eq!(task["counts"]["completed"], 300);
    assert_eq!(task["progress"], 1.0);
    assert!(task["ended_at"].is_string());
    let items = t
        .get(&format!("/api/v1/tasks/{task_id}/items?limit=5"))
        .await?;
    assert!(
        items["items"][0]["observation"]
            .as_str()
            .is_some_and(|o| o.starts_with("done by"))
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_robots_unstarted_items_go_to_others_and_its_late_completion_is_refused()
-> Result<()> {
    let mut config = NodeConfig::for_tests();
    config.pulse_timeout = Duration::from_millis(800);
    let t = TestNode::start_with(config).await?;
    let process = t.process("Registration").await?;
    let silent = RestRobot::create(&t, "silent", json!({ "capacity": 5 })).await?;
    let task_id = upload(&t, process, 5).await?;
    let held = eventually(Duration::from_secs(10), || async {
        let items = silent.claim(5, 0.5).await?;
        Ok((!items.is_empty()).then_some(items))
    })
    .await?;
    // The silent robot starts one item and then says nothing more.
    expect(
        silent.act(&held[0], "start", json!({})).await?,
        StatusCode::OK,
    )
    .await?;
    let helper = RestRobot::create(&t, "helper", json!({ "capacity": 5 })).await?;
    let mut done = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while done.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "helper finished only {done:?}"
        );
        for item in helper.claim(5, 0.5).await? {
            helper.finish(&item).await?;
            done.push(item["id"].as_i64().unwrap_or_default());
        }
    }
    let unstarted: HashSet<i64> = held[1..].iter().filter_map(|i| i["id"].as_i64()).collect();
    assert!(
        unstarted.iter().all(|id| done.contains(id)),
        "the helper took over {unstarted:?}: {done:?}"
    );

    let robot = t.get(&format!("/api/v1/robots/{}", silent.id)).await?;
    assert_eq!(
        robot["status"], "INACTIVE",
        "a lost robot is marked INACTIVE"
    );
    let late = silent.act(&held[1], "complete", json!({})).await?;
    expect_error(
        late,
        StatusCode::CONFLICT,
        "stale_lease",
        "not the current lease",
    )
    .await?;
    let task = wait_for_task_status(&t, task_id, "COMPLETED").await?;
    // The started item may have run: it is ABANDONED, never silently re-run.
    assert_eq!(task["counts"]["abandoned"], 1);
    assert_eq!(task["counts"]["completed"], 4);
    Ok(())
}

#[tokio::test]
async fn failures_retry_or_stay_failed_and_retry_failed_reopens() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Flaky").await?;
    let robot = RestRobot::create(&t, "bot", json!({ "capacity": 1 })).await?;
    let task_id = upload(&t, process, 2).await?;
    let mut attempts: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut flaky = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let items = robot.claim(1, 0.3).await?;
        let Some(item) = items.first() else {
            let task = t.get(&format!("/api/v1/tasks/{task_id}")).await?;
            if task["status"] == "COMPLETED" {
                break;
            }
            continue;
        };
        let id = item["id"].as_i64().unwrap_or_default();
        attempts
            .entry(id)
            .or_default()
            .push(item["attempt"].as_i64().unwrap_or_default());
        expect(robot.act(item, "start", json!({})).await?, StatusCode::OK).await?;
        let is_flaky = *flaky.get_or_insert(id) == id;
        if is_flaky && attempts[&id].len() < 3 {
            // The application misbehaves twice, then works.
            let resp = robot
                .act(
                    item,
                    "fail",
                    json!({ "kind": "application", "message": "timeout" }),
                )
                .await?;
            assert_eq!(expect(resp, StatusCode::OK).await?["status"], "PENDING");
            continue;
        }
        if is_flaky {
            expect(
                robot.act(item, "complete", json!({})).await?,
                StatusCode::OK,
            )
            .await?;
            continue;
        }
        let resp = robot
            .act(
                item,
                "fail",
                json!({ "kind": "business", "message": "no such account" }),
            )
            .await?;
        assert_eq!(expect(resp, StatusCode::OK).await?["status"], "FAILED");
    }
    let first = flaky
        .and_then(|id| attempts.get(&id).cloned())
        .unwrap_or_default();
    assert_eq!(
        first,
        [1, 2, 3],
        "application failures were retried with new attempts"
    );
    let task = wait_for_task_status(&t, task_id, "COMPLETED").await?;
    assert_eq!(
        (
            task["counts"]["completed"].clone(),
            task["counts"]["failed"].clone()
        ),
        (json!(1), json!(1))
    );
    let failed = t
        .get(&format!("/api/v1/tasks/{task_id}/items?status=FAILED"))
        .await?;
    assert_eq!(failed["items"][0]["observation"], "no such account");
    assert_eq!(failed["items"][0]["fail_kind"], "business");

    let resp = t
        .req(
            Method::POST,
            &format!("/api/v1/tasks/{task_id}/retry-failed"),
            &t.admin,
        )
        .send()
        .await?;
    let reopened = expect(resp, StatusCode::OK).await?;
    assert_eq!(
        (reopened["reopened"].clone(), reopened["status"].clone()),
        (json!(1), json!("STARTED"))
    );
    let done = work(robot, 1).await?;
    assert_eq!(done.len(), 1);
    wait_for_task_status(&t, task_id, "COMPLETED").await?;
    Ok(())
}

#[tokio::test]
async fn an_item_whose_lease_expires_three_times_is_quarantined() -> Result<()> {
    let t = TestNode::start().await?;
    let resp = t
        .req(Method::POST, "/api/v1/processes", &t.admin)
        .json(&json!({ "title": "Short leases", "lease_ttl_ms": 1000 }))
        .send()
        .await?;
    let process = expect(resp, StatusCode::CREATED).await?["id"]
        .as_i64()
        .unwrap_or_default();
    let robot = RestRobot::create(&t, "forgetful", json!({})).await?;
    let task_id = upload(&t, process, 1).await?;
    // The robot claims the item and never renews; each expiry hands it out again.
    let mut leases = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let task = loop {
        for item in robot.claim(1, 0.2).await? {
            leases.insert(item["lease_id"].as_str().unwrap_or_default().to_string());
        }
        let task = t.get(&format!("/api/v1/tasks/{task_id}")).await?;
        if task["status"] == "COMPLETED" {
            break task;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not quarantined in time: {task}"
        );
    };
    assert_eq!(
        leases.len(),
        3,
        "three leases were issued before the quarantine"
    );
    assert_eq!(task["counts"]["failed"], 1);
    let items = t.get(&format!("/api/v1/tasks/{task_id}/items")).await?;
    assert_eq!(items["items"][0]["fail_kind"], "poison");
    Ok(())
}

#[tokio::test]
async fn robots_touch_only_their_own_items_and_transitions_are_checked() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Registration").await?;
    let owner = RestRobot::create(&t, "owner", json!({ "capacity": 1 })).await?;
    upload(&t, process, 1).await?;
    let item = eventually(Duration::from_secs(10), || async {
        Ok(owner.claim(1, 0.5).await?.into_iter().next())
    })
    .await?;
    let other = RestRobot::create(&t, "other", json!({})).await?;
    let before = t.snapshot().await?;
    let resp = other.act(&item, "complete", json!({})).await?;
    expect_error(
        resp,
        StatusCode::FORBIDDEN,
        "not_your_item",
        "not held by robot",
    )
    .await?;
    let mut wrong = item.clone();
    wrong["lease_id"] = json!(format!("{}-0000", owner.id));
    expect_error(
        owner.act(&wrong, "start", json!({})).await?,
        StatusCode::CONFLICT,
        "stale_lease",
        "lease",
    )
    .await?;
    let resp = owner.act(&item, "fail", json!({ "message": "x" })).await?;
    expect_error(resp, StatusCode::BAD_REQUEST, "invalid_body", "kind").await?;
    assert_eq!(t.snapshot().await?, before, "refusals changed nothing");

    owner.finish(&item).await?;
    // Repeating the completion is a harmless no-op; restarting a completed item is illegal.
    let again = owner
        .act(&item, "complete", json!({ "observation": "again" }))
        .await?;
    assert_eq!(expect(again, StatusCode::OK).await?["status"], "COMPLETED");
    expect_error(
        owner.act(&item, "start", json!({})).await?,
        StatusCode::CONFLICT,
        "illegal_transition",
        "COMPLETED",
    )
    .await?;

    // A user's JWT is not a robot token, and the reverse.
    let resp = t
        .http
        .post(t.url("/api/v1/robot/pulse"))
        .bearer_auth(&t.admin)
        .json(&json!({}))
        .send()
        .await?;
    expect_error(
        resp,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "user tokens",
    )
    .await?;
    let resp = t
        .http
        .post(t.url("/api/v1/robot/items/claim"))
        .send()
        .await?;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", "Token").await?;
    Ok(())
}

#[tokio::test]
async fn cancel_stops_dispatch_and_returns_unstarted_items() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Registration").await?;
    let robot = RestRobot::create(&t, "bot", json!({ "capacity": 3 })).await?;
    let task_id = upload(&t, process, 10).await?;
    let items = robot.claim_exactly(3).await?;
    expect(
        robot.act(&items[0], "start", json!({})).await?,
        StatusCode::OK,
    )
    .await?;
    let resp = t
        .req(
            Method::POST,
            &format!("/api/v1/tasks/{task_id}/cancel"),
            &t.admin,
        )
        .send()
        .await?;
    let task = expect(resp, StatusCode::OK).await?;
    assert_eq!(task["status"], "CANCELLED");
    let task: Value = task_when(&t, task_id, |task| task["counts"]["assigned"] == 0).await?;
    assert_eq!(
        (
            task["counts"]["pending"].clone(),
            task["counts"]["started"].clone()
        ),
        (json!(9), json!(1))
    );
    // The started item may still finish; nothing new is handed out.
    expect(
        robot.act(&items[0], "complete", json!({})).await?,
        StatusCode::OK,
    )
    .await?;
    assert!(robot.claim(3, 0.5).await?.is_empty());
    let resp = t
        .req(
            Method::POST,
            &format!("/api/v1/tasks/{task_id}/cancel"),
            &t.admin,
        )
        .send()
        .await?;
    expect_error(resp, StatusCode::CONFLICT, "conflict", "not running").await?;
    Ok(())
}

#[tokio::test]
async fn draining_revoking_and_renewing_behave_as_documented() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Registration").await?;
    let robot = RestRobot::create(&t, "bot", json!({ "capacity": 2 })).await?;
    let task_id = upload(&t, process, 4).await?;
    let items = robot.claim_exactly(2).await?;
    let renewed = expect(
        robot.act(&items[0], "start", json!({})).await?,
        StatusCode::OK,
    )
    .await?;
    let again = expect(
        robot.act(&items[0], "renew", json!({})).await?,
        StatusCode::OK,
    )
    .await?;
    assert!(
        again["lease_expires_at"].as_str() >= renewed["lease_expires_at"].as_str(),
        "renew extends the lease"
    );

    // Draining (INACTIVE) returns the unstarted item at once; the started one may finish.
    robot.pulse(Some("INACTIVE")).await?;
    let task = task_when(&t, task_id, |task| task["counts"]["assigned"] == 0).await?;
    assert_eq!(
        (
            task["counts"]["pending"].clone(),
            task["counts"]["started"].clone()
        ),
        (json!(3), json!(1))
    );
    expect(
        robot.act(&items[0], "complete", json!({})).await?,
        StatusCode::OK,
    )
    .await?;
    assert!(
        robot.claim(2, 0.3).await?.is_empty(),
        "a drained robot gets no new work"
    );

    // Rotating the token revokes the robot: what it held goes back (started items are abandoned).
    robot.pulse(Some("ACTIVE")).await?;
    let held = robot.claim_exactly(2).await?;
    expect(
        robot.act(&held[0], "start", json!({})).await?,
        StatusCode::OK,
    )
    .await?;
    let resp = t
        .req(
            Method::POST,
            &format!("/api/v1/robots/{}/token", robot.id),
            &t.admin,
        )
        .send()
        .await?;
    expect(resp, StatusCode::OK).await?;
    let task = task_when(&t, task_id, |task| {
        task["counts"]["assigned"] == 0 && task["counts"]["started"] == 0
    })
    .await?;
    assert_eq!(
        (
            task["counts"]["pending"].clone(),
            task["counts"]["abandoned"].clone(),
            task["counts"]["completed"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );
    let resp = robot.act(&held[1], "start", json!({})).await?;
    expect_error(
        resp,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "unknown robot token",
    )
    .await?;

    // Deleting a robot releases its items the same way.
    let other = RestRobot::create(&t, "other", json!({ "capacity": 2 })).await?;
    other.claim_exactly(2).await?;
    let resp = t
        .req(
            Method::DELETE,
            &format!("/api/v1/robots/{}", other.id),
            &t.admin,
        )
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let task = task_when(&t, task_id, |task| task["counts"]["assigned"] == 0).await?;
    assert_eq!(task["counts"]["pending"], 2);
    Ok(())
}
