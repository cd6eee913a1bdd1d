//! Robots on REST v1 and on the prototype's API.

use super::*;

/// One robot on REST v1: long-poll claims, then start and finish each item.
pub(super) async fn rest_robot(
    node: &Node,
    args: &SimArgs,
    fleet: &Arc<Fleet>,
    index: usize,
    robot: RobotCred,
    ready: mpsc::Sender<()>,
) -> Result<()> {
    let auth = format!("Token {}", robot.token);
    let pulse = node
        .json(
            Method::POST,
            "/api/v1/robot/pulse",
            &auth,
            Some(json!({ "status": "ACTIVE" })),
        )
        .await?;
    let silent_for =
        Duration::from_millis(pulse["pulse_timeout_ms"].as_u64().unwrap_or(30_000) + 1_000);
    let _ = ready.send(()).await;
    drop(ready);
    fleet.connected.fetch_add(1, Ordering::Relaxed);
    let mut freed: VecDeque<Instant> = VecDeque::new();
    loop {
        let items = node
            .json(
                Method::POST,
                &format!("/api/v1/robot/items/claim?max={}&wait=1", args.capacity),
                &auth,
                None,
            )
            .await?;
        let items = items.as_array().cloned().unwrap_or_default();
        let now = Instant::now();
        for item in &items {
            fleet.delivered(
                index,
                item["id"].as_i64().unwrap_or_default(),
                item["task_id"].as_i64().unwrap_or_default(),
            );
            fleet.next_item(freed.pop_front(), now);
        }
        if items.is_empty() {
            freed.clear();
        }
        for (n, item) in items.iter().enumerate() {
            if !rest_item(node, args, fleet, index, &auth, item).await? {
                continue;
            }
            freed.push_back(Instant::now());
            if crashes(args) {
                // A crash: everything held is forgotten and the robot stays silent until the
                // node declares it lost.
                fleet.crashes.fetch_add(1, Ordering::Relaxed);
                for item in &items[n..] {
                    fleet.dropped(index, item["id"].as_i64().unwrap_or_default());
                }
                freed.clear();
                fleet.connected.fetch_sub(1, Ordering::Relaxed);
                tokio::time::sleep(silent_for).await;
                node.json(
                    Method::POST,
                    "/api/v1/robot/pulse",
                    &auth,
                    Some(json!({ "status": "ACTIVE" })),
                )
                .await?;
                fleet.connected.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// Starts and finishes one item over REST v1; `false` when the node refused the start (the
/// item is dropped).
async fn rest_item(
    node: &Node,
    args: &SimArgs,
    fleet: &Fleet,
    index: usize,
    auth: &str,
    item: &Value,
) -> Result<bool> {
    let id = item["id"].as_i64().unwrap_or_default();
    let lease = item["lease_id"].clone();
    let act = |verb: &str, body: Value| {
        let mut body = body;
        body["lease_id"] = lease.clone();
        node.report(
            Method::POST,
            format!("/api/v1/robot/items/{id}/{verb}"),
            auth,
            Some(body),
        )
    };
    let (status, text) = act("start", json!({})).await?;
    if !status.is_success() {
        fleet.error(format!("start {id}: {status} {text}"));
        fleet.dropped(index, id);
        return Ok(false);
    }
    if !args.work_time.is_zero() {
        tokio::time::sleep(args.work_time).await;
    }
    fleet.pace(args.rate).await;
    let (verb, body) = match outcome(args) {
        Outcome::Complete => ("complete", json!({ "observation": "done" })),
        Outcome::Business => (
            "fail",
            json!({ "kind": "business", "message": "simulated" }),
        ),
        Outcome::Application => (
            "fail",
            json!({ "kind": "application", "message": "simulated" }),
        ),
    };
    let (status, text) = act(verb, body).await?;
    if !status.is_success() {
        fleet.error(format!("{verb} {id}: {status} {text}"));
        fleet.dropped(index, id);
    } else if verb == "complete" {
        fleet.completed(index, id);
    } else {
        fleet.failures.fetch_add(1, Ordering::Relaxed);
        fleet.dropped(index, id);
    }
    Ok(true)
}

/// One robot speaking the prototype's API: poll its tasks, then start and finish each item.
pub(super) async fn seed_robot(
    node: &Node,
    args: &SimArgs,
    fleet: &Arc<Fleet>,
    index: usize,
    robot: RobotCred,
    ready: mpsc::Sender<()>,
) -> Result<()> {
    let auth = format!("Token {}", robot.token);
    let id = robot.id;
    let (status, text) = node
        .call(
            Method::PATCH,
            &format!("/api/robots/?robot_id={id}&status=ACTIVE"),
            &auth,
            None,
        )
        .await?;
    ensure!(status.is_success(), "activate: {status} {text}");
    let _ = ready.send(()).await;
    drop(ready);
    fleet.connected.fetch_add(1, Ordering::Relaxed);
    let mut freed: VecDeque<Instant> = VecDeque::new();
    let mut working: HashSet<i64> = HashSet::new();
    loop {
        let (status, text) = node
            .call(
                Method::GET,
                &format!("/api/tasks/?robot_id={id}"),
                &auth,
                None,
            )
            .await?;
        ensure!(status.is_success(), "get tasks: {status} {text}");
        let tasks: Vec<Value> = serde_json::from_str(&text)?;
        let now = Instant::now();
        let mut any = false;
        for task in &tasks {
            let task_id = task["id"].as_i64().unwrap_or_default();
            for item in task["item_set"].as_array().into_iter().flatten() {
                let item_id = item["id"].as_i64().unwrap_or_default();
                if !working.insert(item_id) {
                    continue;
                }
                any = true;
                fleet.delivered(index, item_id, task_id);
                fleet.next_item(freed.pop_front(), now);
                let patch = |status: &str, observation: &str| {
                    node.report(
                        Method::PATCH,
                        format!(
                            "/api/items?robot_id={id}&item_id={item_id}&status={status}&observation={observation}"
                        ),
                        &auth,
                        None,
                    )
                };
                let (code, body) = patch("STARTED", "").await?;
                if !code.is_success() {
                    fleet.error(format!("STARTED {item_id}: {code} {body}"));
                    continue;
                }
                if !args.work_time.is_zero() {
                    tokio::time::sleep(args.work_time).await;
                }
                fleet.pace(args.rate).await;
                let finish = match outcome(args) {
                    Outcome::Complete => "COMPLETED",
                    Outcome::Business | Outcome::Application => "ERROR",
                };
                let (code, body) = patch(finish, "simulated").await?;
                if !code.is_success() {
                    fleet.error(format!("{finish} {item_id}: {code} {body}"));
                    fleet.dropped(index, item_id);
                } else if finish == "COMPLETED" {
                    fleet.completed(index, item_id);
                } else {
                    fleet.failures.fetch_add(1, Ordering::Relaxed);
                    fleet.dropped(index, item_id);
                }
                freed.push_back(Instant::now());
            }
        }
        // Items leave the robot's task list once final; forget ids it no longer shows.
        let shown: HashSet<i64> = tasks
            .iter()
            .flat_map(|t| t["item_set"].as_array().cloned().unwrap_or_default())
            .filter_map(|i| i["id"].as_i64())
            .collect();
        working.retain(|i| shown.contains(i));
        if !any {
            freed.clear();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
