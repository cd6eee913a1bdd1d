//! Robot load bookkeeping over many tasks in a row. After each task completes, with nothing
//! leased, every robot's load (what the registry plans with and `GET /api/v1/robots` shows)
//! must be back to what the store holds for it, 0, without waiting for the periodic recount;
//! and a new task must then fill every robot to its capacity at once. Run over WebSocket
//! (with standby), REST v1 and the seed API.

use anyhow::{Context, Result, bail, ensure};
use orchestrator_node::NodeConfig;
use orchestrator_tests::{
    RestRobot, SeedRobot, TestNode, WsRobot, eventually, seed_robot, wait_for_task_status,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A node whose periodic recount is far away: these tests check that no decrement is lost,
/// not that the backstop repairs one.
async fn node() -> Result<TestNode> {
    let mut config = NodeConfig::for_tests();
    config.recount_period = Duration::from_secs(3_600);
    TestNode::start_with(config).await
}

/// Loads by robot id as `GET /api/v1/robots` shows them.
async fn loads(t: &TestNode) -> Result<BTreeMap<i64, i64>> {
    let robots = t.get("/api/v1/robots").await?;
    Ok(robots
        .as_array()
        .context("robots")?
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap_or(-1),
                r["load"].as_i64().unwrap_or(-1),
            )
        })
        .collect())
}

/// Loads shown and items stored, per robot of `ids`.
async fn shown_and_stored(
    t: &TestNode,
    ids: &[i64],
) -> Result<(BTreeMap<i64, i64>, BTreeMap<i64, i64>)> {
    let shown = loads(t).await?;
    let mut mine = BTreeMap::new();
    let mut stored = BTreeMap::new();
    for id in ids {
        mine.insert(*id, shown.get(id).copied().unwrap_or(-1));
        stored.insert(*id, t.node.store().robot_in_flight_count(*id).await?);
    }
    Ok((mine, stored))
}

/// Waits until every robot's load equals the items the store says it holds, and returns the
/// loads.
async fn loads_match_the_store(t: &TestNode, ids: &[i64]) -> Result<BTreeMap<i64, i64>> {
    let matched = eventually(Duration::from_secs(3), || async {
        let (shown, stored) = shown_and_stored(t, ids).await?;
        Ok((shown == stored).then_some(shown))
    })
    .await;
    match matched {
        Ok(loads) => Ok(loads),
        Err(err) => {
            let (shown, stored) = shown_and_stored(t, ids).await?;
            bail!("{err}: loads {shown:?}, store {stored:?}")
        }
    }
}

/// A WebSocket robot that completes every item it is pushed while `work` is on, and only
/// counts (holds) them while it is off. Returns how many it holds when `stop` is set.
async fn ws_worker(
    mut robot: WsRobot,
    work: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
) -> Result<usize> {
    robot
        .send(json!({ "type": "ready", "ref": "ready" }))
        .await?;
    while !stop.load(Ordering::SeqCst) {
        let Some(frame) = robot.next_within(Duration::from_millis(50)).await? else {
            continue;
        };
        match frame["type"].as_str() {
            Some("items") => {
                for item in frame["items"].as_array().cloned().unwrap_or_default() {
                    if !work.load(Ordering::SeqCst) {
                        held.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    robot.act("started", &item, "s", json!({})).await?;
                    robot
                        .act("completed", &item, "c", json!({ "observation": "ok" }))
                        .await?;
                }
            }
            Some("ack") | Some("revoke") => {}
            _ => bail!("unexpected frame {frame}"),
        }
    }
    Ok(held.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_robots_keep_exact_loads_across_tasks_in_a_row() -> Result<()> {
    let t = node().await?;
    let process = t.process("In a row (WebSocket)").await?;
    let (robots, capacity) = (8usize, 5i64);
    let work = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    let mut workers = Vec::new();
    let mut holding = Vec::new();
    for i in 0..robots {
        let robot =
            WsRobot::create(&t, &format!("ws-{i}"), json!({ "capacity": capacity })).await?;
        ids.push(robot.id);
        let held = Arc::new(AtomicUsize::new(0));
        holding.push(held.clone());
        workers.push(tokio::spawn(ws_worker(
            robot,
            work.clone(),
            stop.clone(),
            held,
        )));
    }
    for round in 0..5 {
        let task = t.upload_seed_rows(process, 1_500).await?;
        wait_for_task_status(&t, task, "COMPLETED").await?;
        let at_rest = loads_match_the_store(&t, &ids).await?;
        ensure!(
            at_rest.values().all(|l| *l == 0),
            "round {round}: loads at rest {at_rest:?}"
        );
    }
    // Every robot idle: the next task fills each one to its capacity (standby comes on top
    // only once all are full, so the store shows capacity plus standby per robot).
    work.store(false, Ordering::SeqCst);
    let standby = NodeConfig::for_tests().ws_standby;
    let per_robot = capacity + standby;
    t.upload_seed_rows(process, robots * per_robot as usize + 10)
        .await?;
    let full = eventually(Duration::from_secs(5), || async {
        let shown = loads(&t).await?;
        Ok(ids.iter().all(|id| shown[id] == per_robot).then_some(shown))
    })
    .await
    .context("every robot filled to capacity plus standby")?;
    loads_match_the_store(&t, &ids).await?;
    // Every robot is pushed its capacity (its standby item is kept back by its session).
    let pushed = eventually(Duration::from_secs(5), || async {
        let counts: Vec<usize> = holding.iter().map(|h| h.load(Ordering::SeqCst)).collect();
        Ok(counts
            .iter()
            .all(|c| *c >= capacity as usize)
            .then_some(counts))
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    pushed.context("every robot was pushed its capacity")?;
    for worker in workers {
        let held = worker.await??;
        ensure!(
            held == capacity as usize,
            "each robot is pushed its capacity, standby kept back: {held} ({full:?})"
        );
    }
    Ok(())
}

/// Claims and finishes items until `stop` is set.
async fn rest_worker(robot: RestRobot, max: usize, stop: Arc<AtomicBool>) -> Result<()> {
    while !stop.load(Ordering::SeqCst) {
        for item in robot.claim(max, 0.2).await? {
            robot.finish(&item).await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_robots_keep_exact_loads_across_tasks_in_a_row() -> Result<()> {
    let t = node().await?;
    let process = t.process("In a row (REST)").await?;
    let (robots, capacity) = (6usize, 4i64);
    let mut fleet = Vec::new();
    for i in 0..robots {
        fleet.push(
            RestRobot::create(&t, &format!("rest-{i}"), json!({ "capacity": capacity })).await?,
        );
    }
    let ids: Vec<i64> = fleet.iter().map(|r| r.id).collect();
    for round in 0..4 {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = fleet
            .iter()
            .cloned()
            .map(|r| tokio::spawn(rest_worker(r, capacity as usize, stop.clone())))
            .collect();
        let task = t.upload_seed_rows(process, 400).await?;
        wait_for_task_status(&t, task, "COMPLETED").await?;
        stop.store(true, Ordering::SeqCst);
        for worker in workers {
            worker.await??;
        }
        let at_rest = loads_match_the_store(&t, &ids).await?;
        ensure!(
            at_rest.values().all(|l| *l == 0),
            "round {round}: loads at rest {at_rest:?}"
        );
    }
    t.upload_seed_rows(process, robots * capacity as usize + 10)
        .await?;
    eventually(Duration::from_secs(5), || async {
        let shown = loads(&t).await?;
        Ok(ids.iter().all(|id| shown[id] == capacity).then_some(()))
    })
    .await
    .context("every REST robot filled to its capacity")?;
    // The load counts a slot from the moment it is planned; once the store agrees, the items
    // are leased and waiting in each robot's session.
    let full = loads_match_the_store(&t, &ids).await?;
    ensure!(full.values().all(|l| *l == capacity), "{full:?}");
    for robot in &fleet {
        let items = robot.claim(capacity as usize + 1, 2.0).await?;
        ensure!(items.len() == capacity as usize, "claimed {}", items.len());
    }
    Ok(())
}

/// A prototype robot's PATCH of a task it worked on, answered 200 whether or not the task has
/// already completed itself.
async fn seed_worker(robot: SeedRobot) -> Result<usize> {
    Ok(robot.run(4).await?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_robots_keep_exact_loads_across_tasks_in_a_row() -> Result<()> {
    let t = node().await?;
    let process = t.process("In a row (seed)").await?;
    let mut fleet = Vec::new();
    for i in 0..4 {
        fleet.push(seed_robot(&t, &format!("seed-{i}")).await?);
    }
    let ids: Vec<i64> = fleet.iter().map(|r| r.id).collect();
    for round in 0..3 {
        let workers: Vec<_> = fleet
            .iter()
            .cloned()
            .map(|r| tokio::spawn(seed_worker(r)))
            .collect();
        let task = t.upload_seed_rows(process, 200).await?;
        wait_for_task_status(&t, task, "COMPLETED").await?;
        let mut done = 0;
        for worker in workers {
            done += worker.await??;
        }
        ensure!(done == 200, "round {round}: {done} items done");
        let at_rest = loads_match_the_store(&t, &ids).await?;
        ensure!(
            at_rest.values().all(|l| *l == 0),
            "round {round}: loads at rest {at_rest:?}"
        );
    }
    // Seed robots have capacity 2: a task of 8 fills all four at once.
    t.upload_seed_rows(process, 8).await?;
    eventually(Duration::from_secs(5), || async {
        let shown = loads(&t).await?;
        Ok(ids.iter().all(|id| shown[id] == 2).then_some(()))
    })
    .await
    .context("every seed robot filled to its capacity")?;
    // The load counts a slot from the moment it is planned; once the store agrees, the items
    // are leased and a prototype robot's poll shows them.
    let full = loads_match_the_store(&t, &ids).await?;
    ensure!(full.values().all(|l| *l == 2), "{full:?}");
    for robot in &fleet {
        let (status, body) = robot
            .call(Method::GET, &format!("/api/tasks/?robot_id={}", robot.id))
            .await?;
        ensure!(status == StatusCode::OK, "{status} {body}");
        let tasks: Vec<Value> = serde_json::from_str(&body)?;
        let items: usize = tasks
            .iter()
            .map(|t| t["item_set"].as_array().map_or(0, Vec::len))
            .sum();
        ensure!(items == 2, "seed robot {} sees {items} items", robot.id);
    }
    Ok(())
}
