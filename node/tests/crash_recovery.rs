//! A node killed with SIGKILL mid-task and started again on the same `surrealkv://` store loses
//! nothing: every item ends exactly once in a final state and no completion is accepted twice.

use anyhow::{Context, Result, bail};
use orchestrator_test_kit::until;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN_PASSWORD: &str = "crash-test-password";

/// Starts the binary on `db` and returns it with its address.
fn spawn_node(db: &str) -> Result<(Child, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--db", db, "--listen", "127.0.0.1:0"])
        .args([
            "--pulse-timeout",
            "3s",
            "--lease-ttl",
            "2s",
            "--sweep-period",
            "100ms",
        ])
        .env("ORCH_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("ORCH_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("addr=").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60))?;
    Ok((child, format!("http://{addr}")))
}

#[derive(Clone)]
struct Shared {
    base: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Shared {
    fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.base.lock().map(|b| b.clone()).unwrap_or_default(),
            path
        )
    }

    /// Sends until the node answers (it may be down for a while); returns status and body.
    async fn send(&self, auth: &str, path: &str, body: Value) -> Result<(u16, Value)> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let attempt = self
                .http
                .post(self.url(path))
                .header("authorization", auth)
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match attempt {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await?;
                    return Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)));
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("node unreachable: {e}"),
            }
        }
    }
}

/// Accepted completions per item: (item id → leases under which a completion was accepted).
type Accepted = Arc<Mutex<BTreeMap<i64, HashSet<String>>>>;

async fn robot_loop(
    shared: Shared,
    token: String,
    accepted: Accepted,
    stop: Arc<Mutex<bool>>,
) -> Result<()> {
    let auth = format!("Token {token}");
    shared
        .send(&auth, "/api/v1/robot/pulse", json!({ "status": "ACTIVE" }))
        .await?;
    while !stop.lock().map(|s| *s).unwrap_or(true) {
        let (status, items) = shared
            .send(&auth, "/api/v1/robot/items/claim?wait=0.3", json!({}))
            .await?;
        if status != 200 {
            continue;
        }
        for item in items.as_array().cloned().unwrap_or_default() {
            let lease = item["lease_id"].as_str().unwrap_or_default().to_string();
            let path = |verb: &str| format!("/api/v1/robot/items/{}/{verb}", item["id"]);
            let (status, _) = shared
                .send(&auth, &path("start"), json!({ "lease_id": lease }))
                .await?;
            if status != 200 {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let (status, body) = shared
                .send(
                    &auth,
                    &path("complete"),
                    json!({ "lease_id": lease, "observation": "ok" }),
                )
                .await?;
            if status == 200
                && body["status"] == "COMPLETED"
                && let Ok(mut map) = accepted.lock()
            {
                map.entry(item["id"].as_i64().unwrap_or_default())
                    .or_default()
                    .insert(lease.clone());
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_task_resumes_without_losing_or_repeating_items() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = format!("surrealkv://{}", dir.path().join("db").display());
    let (mut node, base) = spawn_node(&db)?;
    let shared = Shared {
        base: Arc::new(Mutex::new(base)),
        http: reqwest::Client::new(),
    };
    let login = shared
        .http
        .post(shared.url("/api/v1/auth/login"))
        .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD }))
        .send()
        .await?
        .json::<Value>()
        .await?;
    let admin = format!("Bearer {}", login["token"].as_str().context("token")?);
    let (_, process) = shared
        .send(&admin, "/api/v1/processes", json!({ "title": "Crash" }))
        .await?;
    let mut tokens = Vec::new();
    for i in 0..3 {
        let (_, robot) = shared
            .send(
                &admin,
                "/api/v1/robots",
                json!({ "name": format!("bot-{i}"), "capacity": 3 }),
            )
            .await?;
        tokens.push(robot["token"].as_str().context("robot token")?.to_string());
    }
    let rows = 400;
    let mut csv = String::from("linea,valor,field_name\n");
    for i in 1..=rows {
        csv.push_str(&format!("{i},{},x\n", 1000 + i));
    }
    let task = shared
        .http
        .post(shared.url(&format!("/api/v1/tasks?process_id={}", process["id"])))
        .header("authorization", &admin)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await?
        .json::<Value>()
        .await?;
    let task_id = task["id"].as_i64().context("task id")?;

    let accepted: Accepted = Arc::default();
    let stop = Arc::new(Mutex::new(false));
    let robots: Vec<_> = tokens
        .iter()
        .map(|t| {
            tokio::spawn(robot_loop(
                shared.clone(),
                t.clone(),
                accepted.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // Kill the node once a good share of the work is done, then start it again.
    until(Duration::from_secs(60), "robots made progress", || async {
        let n = accepted.lock().map(|m| m.len()).unwrap_or(0);
        Ok(if n >= rows / 4 {
            Ok(())
        } else {
            Err(format!("{n} accepted"))
        })
    })
    .await?;
    node.kill()?;
    node.wait()?;
    let done_at_kill = accepted.lock().map(|m| m.len()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut node, base) = spawn_node(&db)?;
    if let Ok(mut b) = shared.base.lock() {
        *b = base;
    }

    let final_task = until(Duration::from_secs(120), "the task completed", || async {
        let resp = shared
            .http
            .get(shared.url(&format!("/api/v1/tasks/{task_id}")))
            .header("authorization", &admin)
            .send()
            .await;
        Ok(match resp {
            Ok(resp) => match resp.json::<Value>().await {
                Ok(task) if task["status"] == "COMPLETED" => Ok(task),
                Ok(task) => Err(task.to_string()),
                Err(err) => Err(err.to_string()),
            },
            Err(err) => Err(err.to_string()),
        })
    })
    .await?;
    if let Ok(mut s) = stop.lock() {
        *s = true;
    }
    for robot in robots {
        robot.await??;
    }
    node.kill()?;
    node.wait()?;

    let counts = &final_task["counts"];
    let finals = ["completed", "failed", "abandoned"]
        .iter()
        .map(|k| counts[k].as_i64().unwrap_or(0))
        .sum::<i64>();
    assert_eq!(
        finals, rows as i64,
        "every item ended in a final state: {counts}"
    );
    for k in ["pending", "assigned", "started"] {
        assert_eq!(counts[k], 0, "{k}: {counts}");
    }
    let accepted = accepted.lock().map(|m| m.clone()).unwrap_or_default();
    let twice: Vec<_> = accepted
        .iter()
        .filter(|(_, leases)| leases.len() > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "completions accepted under two leases: {twice:?}"
    );
    assert_eq!(
        accepted.len() as i64,
        counts["completed"].as_i64().unwrap_or(-1),
        "the store's completed count matches the completions robots saw accepted"
    );
    assert!(done_at_kill < rows, "the kill happened mid-task");
    Ok(())
}
