//! Dispatch over nodes: cancel, the least-loaded robot of any node, token rotation, a mixed fleet.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_on_one_node_gets_no_new_lease_on_any_node() -> Result<()> {
    let _turn = TURN.lock().await;
    let timers = Timers {
        recount: Some(Duration::from_secs(3_600)),
        ..Timers::fast()
    };
    let cluster = Cluster::start_with(3, timers).await?;
    let admin = cluster.login(1).await?;
    let work = cluster.work(&admin, "cancel", 4, 2_000).await?;
    // Robots on nodes 2 and 3 lease and finish items in a loop until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut robots = Vec::new();
    for (r, token) in work.tokens.iter().enumerate() {
        cluster.activate(2 + r % 2, token).await?;
        let (cluster_http, url, token, stop) = (
            cluster.http.clone(),
            cluster.urls[1 + r % 2].clone(),
            token.clone(),
            stop.clone(),
        );
        robots.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(resp) = cluster_http
                    .post(format!("{url}/api/v1/robot/items/claim?max=5&wait=1"))
                    .header("authorization", &token)
                    .send()
                    .await
                else {
                    continue;
                };
                let items: Value = resp.json().await.unwrap_or(Value::Null);
                for item in items.as_array().into_iter().flatten() {
                    let id = item["id"].as_i64().unwrap_or_default();
                    let lease = item["lease_id"].clone();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let _ = cluster_http
                        .post(format!("{url}/api/v1/robot/items/{id}/complete"))
                        .header("authorization", &token)
                        .json(&json!({ "lease_id": lease, "observation": "done" }))
                        .send()
                        .await;
                }
            }
        }));
    }
    // Cancel on node 1 once the robots are well under way.
    until(Duration::from_secs(60), "the robots started", || async {
        let task = cluster.task(1, &admin, work.task).await?;
        Ok(if count(&task, "completed") >= 200 {
            Ok(())
        } else {
            Err(task.to_string())
        })
    })
    .await?;
    cluster
        .json(
            1,
            Method::POST,
            &format!("/api/v1/tasks/{}/cancel", work.task),
            &admin,
            None,
        )
        .await?;
    let at_cancel = cluster.task(1, &admin, work.task).await?;
    assert_eq!(at_cancel["status"], "CANCELLED");
    // The robots go on asking for work on nodes 2 and 3 for two seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for robot in robots {
        robot.await?;
    }
    let after = cluster.task(2, &admin, work.task).await?;
    assert_eq!(after["status"], "CANCELLED", "{after}");
    assert_eq!(
        count(&after, "pending"),
        count(&at_cancel, "pending"),
        "no item left PENDING after the cancel: {at_cancel} then {after}"
    );
    assert_eq!(count(&after, "assigned"), 0, "{after}");
    // Nodes 2 and 3 stopped counting the items node 1 released (no hints here: the event rows
    // they read each sweep told them; the recount backstop is out of reach in this test).
    for n in [2, 3] {
        wait_loads_zero(&cluster, n, &admin, &work.ids, Duration::from_secs(2)).await?;
    }
    Ok(())
}

/// Load summaries: each node plans only for the robots whose session it holds, but a scarce
/// item goes to the least loaded robot of the cluster. A WebSocket robot on n1 holds 3 items
/// (capacity 5); an idle one on n2 shows in n2's summary; two items uploaded on n1 (which sees
/// them first) go to n2's robot. Without the summaries n1 pushes both to its own robot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scarce_task_goes_to_the_least_loaded_robot_of_any_node() -> Result<()> {
    let _turn = TURN.lock().await;
    let timers = Timers {
        recount: Some(Duration::from_secs(3_600)),
        ..Timers::fast()
    };
    let cluster = Cluster::start_with(2, timers).await?;
    let admin = cluster.login(1).await?;
    let work = cluster.work(&admin, "summaries", 2, 3).await?;
    let busy = ws_robot_ready(&cluster, 1, &work.tokens[0]).await?;
    wait_loads(&cluster, 1, &admin, &work.ids[..1], &[3]).await?;
    let idle = ws_robot_ready(&cluster, 2, &work.tokens[1]).await?;
    // n1 learns of n2's idle robot from n2's next heartbeat (the cluster page shows it too).
    until(
        Duration::from_secs(10),
        "load summaries of both nodes",
        || async {
            let view = cluster.cluster_view(1, &admin).await?;
            let seen =
                node_in(&view, "n2")["free_slots"] == 5 && node_in(&view, "n1")["free_slots"] == 2;
            Ok(if seen { Ok(()) } else { Err(view.to_string()) })
        },
    )
    .await?;
    // The row is there; n1's member reads the rows every sweep (200 ms) into what its
    // registry plans with.
    tokio::time::sleep(5 * SWEEP).await;
    let task = cluster.upload(1, &admin, work.process, 2).await?;
    wait_loads(&cluster, 1, &admin, &work.ids, &[3, 2]).await?;
    // And it stays so: n1 did not take them back, nobody leased beyond the items there are.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(loads(&cluster, 2, &admin, &work.ids).await?, [3, 2]);
    let task = cluster.task(1, &admin, task).await?;
    assert_eq!(count(&task, "assigned"), 2, "{task}");
    busy.abort();
    idle.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_on_one_node_closes_the_robots_socket_on_another() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(2).await?;
    let admin = cluster.login(1).await?;
    let work = cluster.work(&admin, "rotate", 1, 10).await?;
    let token = &work.tokens[0];
    let robot_id = cluster
        .json(1, Method::GET, "/api/v1/robots", &admin, None)
        .await?
        .as_array()
        .and_then(|robots| robots.iter().find(|r| r["name"] == "rotate-0"))
        .and_then(|r| r["id"].as_i64())
        .context("robot id")?;
    // The robot works on node 2: it is pushed its items.
    let mut socket = ws_robot_working(&cluster, 2, token).await?;
    cluster
        .json(
            1,
            Method::POST,
            &format!("/api/v1/robots/{robot_id}/token"),
            &admin,
            None,
        )
        .await?;
    let closed_after = closed_within(&mut socket, Duration::from_secs(5)).await?;
    eprintln!("token rotated on node 1: node 2 closed the socket after {closed_after:?}");
    assert!(
        closed_after < Duration::from_secs(1),
        "closed after {closed_after:?}"
    );
    // The old token no longer signs in on node 2, and the items went back.
    let (status, _) = cluster
        .call(
            2,
            Method::POST,
            "/api/v1/robot/pulse",
            token,
            Some(json!({})),
        )
        .await?;
    assert_eq!(status, 401);
    let task = cluster.task(2, &admin, work.task).await?;
    assert_eq!(count(&task, "pending"), 10, "{task}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_spread_over_three_nodes_finishes_one_task_in_shares() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(3).await?;
    let admin = cluster.login(1).await?;
    const ITEMS: i64 = 1_500;
    let work = cluster.work(&admin, "mixed", 9, ITEMS as usize).await?;
    // Three robots per API (capacity 5, as created); robot-sim spreads each trio over the
    // three nodes.
    let mut fleets = Vec::new();
    for (k, api) in ["ws", "rest", "seed"].into_iter().enumerate() {
        let tokens: String = (3 * k..3 * k + 3)
            .map(|r| {
                format!(
                    "{} {}\n",
                    work.ids[r],
                    work.tokens[r].trim_start_matches("Token ")
                )
            })
            .collect();
        let path = cluster.dir.path().join(format!("{api}.tokens"));
        std::fs::write(&path, tokens)?;
        let bases = cluster.urls.join(",");
        fleets.push(tokio::spawn(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_robot-sim"))
                .args(["--base-url", &bases, "--api", api, "--robots", "3"])
                .args([
                    "--capacity",
                    "5",
                    "--duration",
                    "30s",
                    "--pulse-every",
                    "500ms",
                ])
                .arg("--tokens-file")
                .arg(&path)
                .output(),
        ));
    }
    let started = Instant::now();
    loop {
        let task = cluster.task(1, &admin, work.task).await?;
        if task["status"] == "COMPLETED" {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the task did not finish: {task}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("mixed fleet: {ITEMS} items in {:?}", started.elapsed());
    for fleet in fleets {
        let output = fleet.await??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "robot-sim failed: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
        eprintln!("{report} {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(report["duplicates"], 0, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
    }
    // Every item completed once, and by whom: every robot, on every node, had its share.
    let mut by_robot: std::collections::BTreeMap<i64, i64> = Default::default();
    let mut offset = 0;
    loop {
        let page = cluster
            .json(
                2,
                Method::GET,
                &format!(
                    "/api/v1/tasks/{}/items?offset={offset}&limit=1000",
                    work.task
                ),
                &admin,
                None,
            )
            .await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        for item in &items {
            assert_eq!(item["status"], "COMPLETED", "{item}");
            *by_robot
                .entry(item["robot_id"].as_i64().unwrap_or(-1))
                .or_default() += 1;
        }
        offset += items.len();
    }
    assert_eq!(by_robot.values().sum::<i64>(), ITEMS);
    eprintln!("items per robot: {by_robot:?}");
    for id in &work.ids {
        let share = by_robot.get(id).copied().unwrap_or(0);
        // At least a third of an even share, whichever API and node the robot is on.
        assert!(
            share >= ITEMS / 9 / 3,
            "robot {id} got {share}: {by_robot:?}"
        );
    }
    Ok(())
}
