//! A randomized fleet: robots that complete, fail, release, stall past their lease, and crash and
//! come back, over thousands of items. Afterwards every item is in exactly one final state, the
//! counters agree with the items, and no completion was accepted twice.
//!
//! The seed is printed; set `SIM_SEED` to replay a run.

use anyhow::Result;
use orchestrator_node::NodeConfig;
use orchestrator_tests::{RestRobot, TestNode, expect, seed_csv, until};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Accepted = Arc<Mutex<BTreeMap<i64, HashSet<String>>>>;

const ITEMS: usize = 2_000;
const ROBOTS: usize = 10;

async fn chaotic_robot(
    robot: RestRobot,
    seed: u64,
    accepted: Accepted,
    done: Arc<Mutex<bool>>,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    while !done.lock().map(|d| *d).unwrap_or(true) {
        if rng.random_bool(0.01) {
            // Crash: silence about as long as the pulse timeout (600 ms), then come back, so
            // the return meets the sweep that ends the robot's session and releases its
            // items (a count read before that release made a new session drift).
            tokio::time::sleep(Duration::from_millis(rng.random_range(500..=900))).await;
            robot.pulse(Some("ACTIVE")).await?;
            continue;
        }
        for item in robot.claim(3, 0.2).await? {
            let roll: f64 = rng.random();
            if roll < 0.03 {
                robot.act(&item, "release", json!({})).await?;
                continue;
            }
            let started = robot.act(&item, "start", json!({})).await?;
            if started.status() != StatusCode::OK {
                continue;
            }
            let (verb, body) = if roll < 0.08 {
                ("fail", json!({ "kind": "application", "message": "flaky" }))
            } else if roll < 0.10 {
                ("fail", json!({ "kind": "business", "message": "bad data" }))
            } else {
                if roll < 0.12 {
                    // Stall past the lease: the completion may be refused as stale.
                    tokio::time::sleep(Duration::from_millis(1_300)).await;
                }
                ("complete", json!({ "observation": "ok" }))
            };
            let resp = robot.act(&item, verb, body).await?;
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or_default();
            assert!(
                status == StatusCode::OK || status == StatusCode::CONFLICT,
                "{verb} answered {status}: {body}"
            );
            if verb == "complete" && status == StatusCode::OK {
                let lease = item["lease_id"].as_str().unwrap_or_default().to_string();
                if let Ok(mut map) = accepted.lock() {
                    map.entry(item["id"].as_i64().unwrap_or_default())
                        .or_default()
                        .insert(lease);
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaotic_fleet_leaves_every_item_final_exactly_once() -> Result<()> {
    let seed: u64 = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("SIM_SEED={seed}");
    let mut config = NodeConfig::for_tests();
    config.pulse_timeout = Duration::from_millis(600);
    config.lease_ttl = Duration::from_millis(1_000);
    config.sweep_period = Duration::from_millis(100);
    config.retry_backoff = Duration::from_millis(50);
    // No recount during the run: the loads checked at the end must be right by themselves.
    config.recount_period = Duration::from_secs(3_600);
    let t = TestNode::start_with(config).await?;
    let process = t.process("Chaos").await?;
    let resp = t.upload(&t.admin, process, seed_csv(ITEMS)).await?;
    let task_id = expect(resp, StatusCode::CREATED).await?["id"]
        .as_i64()
        .unwrap_or_default();

    let accepted: Accepted = Arc::default();
    let done = Arc::new(Mutex::new(false));
    let mut fleet = Vec::new();
    for i in 0..ROBOTS {
        let robot =
            RestRobot::create(&t, &format!("chaos-{i}"), json!({ "capacity": 1 + i % 3 })).await?;
        fleet.push(tokio::spawn(chaotic_robot(
            robot,
            seed.wrapping_add(i as u64),
            accepted.clone(),
            done.clone(),
        )));
    }
    let what = format!("the task finished (seed {seed})");
    let task = until(Duration::from_secs(400), &what, || async {
        let task = t.get(&format!("/api/v1/tasks/{task_id}")).await?;
        Ok(if task["status"] == "COMPLETED" {
            Ok(task)
        } else {
            Err(task.to_string())
        })
    })
    .await?;
    if let Ok(mut d) = done.lock() {
        *d = true;
    }
    for robot in fleet {
        robot.await??;
    }

    // At rest, each robot's planned count equals what the store says it holds (nothing).
    let at_rest = orchestrator_tests::eventually(Duration::from_secs(5), || async {
        let robots = t.get("/api/v1/robots").await?;
        let mut pairs = Vec::new();
        for robot in robots.as_array().cloned().unwrap_or_default() {
            let id = robot["id"].as_i64().unwrap_or_default();
            let stored = t.node.store().robot_in_flight_count(id).await?;
            pairs.push((id, robot["load"].as_i64().unwrap_or(-1), stored));
        }
        Ok(pairs
            .iter()
            .all(|(_, load, stored)| load == stored)
            .then_some(pairs))
    })
    .await;
    assert!(
        at_rest.is_ok(),
        "seed {seed}: planned loads differ from the store at rest: {:?}",
        t.get("/api/v1/robots").await?
    );

    // Counters agree with the items themselves, and every item is final.
    let counts = &task["counts"];
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    let mut offset = 0;
    loop {
        let page = t
            .get(&format!(
                "/api/v1/tasks/{task_id}/items?offset={offset}&limit=1000"
            ))
            .await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        offset += items.len();
        for item in items {
            *by_status
                .entry(item["status"].as_str().unwrap_or_default().to_lowercase())
                .or_default() += 1;
        }
    }
    assert_eq!(offset, ITEMS);
    for status in ["pending", "assigned", "started"] {
        assert_eq!(
            by_status.get(status).copied().unwrap_or(0),
            0,
            "seed {seed}: {by_status:?}"
        );
    }
    for status in ["completed", "failed", "abandoned"] {
        assert_eq!(
            counts[status].as_i64().unwrap_or(-1),
            by_status.get(status).copied().unwrap_or(0),
            "seed {seed}: counter {status} vs items {by_status:?}"
        );
    }
    let accepted = accepted.lock().map(|m| m.clone()).unwrap_or_default();
    let twice: Vec<_> = accepted
        .iter()
        .filter(|(_, leases)| leases.len() > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: completions accepted twice: {twice:?}"
    );
    assert_eq!(
        accepted.len() as i64,
        counts["completed"].as_i64().unwrap_or(-1),
        "seed {seed}: accepted completions match the completed count"
    );
    println!("seed {seed}: {by_status:?}");
    Ok(())
}
