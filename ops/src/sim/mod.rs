//! The robot load simulator: N robots against a running node, through the WebSocket channel,
//! the REST API v1 or the prototype's API, checking as they go that no item is held by two
//! robots at once, and measuring throughput and latencies.
//!
//! ```text
//!   setup (admin): process, N robots, connect ─► upload(s) ─► robots work ─► task COMPLETED
//!   per robot:  delivery ─► holders map (duplicate check) ─► started ─► completed|failed
//!   report:     one JSON line: items/s, assign and next-item latencies, errors, duplicates
//! ```

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use reqwest::{Client, Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

mod fleet;
mod node;
mod rest;
mod ws;

use fleet::Fleet;
use node::Node;
use rest::{rest_robot, seed_robot};
use ws::ws_robot;

/// Which robot API the fleet speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `GET /api/v1/robot/ws`: items pushed up to capacity.
    Ws,
    /// REST v1: long-poll claim, then start and complete per item.
    Rest,
    /// The prototype's API: poll `GET /api/tasks/`, `PATCH /api/items`.
    Seed,
}

/// `robot-sim` flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "robot-sim",
    about = "Simulates a fleet of robots against a running orchestrator node"
)]
pub struct SimArgs {
    /// The node, e.g. http://127.0.0.1:8000, or several nodes of a cluster separated by
    /// commas: robots are spread over them and move to the next when theirs fails.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    /// Robot API the fleet uses.
    #[arg(long, value_enum, default_value = "ws")]
    pub api: Api,
    /// Number of robots.
    #[arg(long, default_value_t = 10)]
    pub robots: usize,
    /// Items each robot holds at once.
    #[arg(long, default_value_t = 1)]
    pub capacity: usize,
    /// Time each item takes, e.g. 0ms, 200ms.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub work_time: Duration,
    /// Share of items failed as business errors (never retried).
    #[arg(long, default_value_t = 0.0)]
    pub business_failure_rate: f64,
    /// Share of items failed as application errors (retried with backoff).
    #[arg(long, default_value_t = 0.0)]
    pub application_failure_rate: f64,
    /// Chance per item that the robot crashes afterwards (drops everything and comes back).
    #[arg(long, default_value_t = 0.0)]
    pub crash_rate: f64,
    /// Items to upload (needs --admin-password): creates a process, the robots and the task(s).
    #[arg(long)]
    pub items: Option<usize>,
    /// Split the items over this many uploads, one after another, each sent once the previous
    /// one's first item reached a robot (measures upload → first item).
    #[arg(long, default_value_t = 1)]
    pub uploads: usize,
    /// Admin user for the setup.
    #[arg(long, default_value = "admin")]
    pub admin_user: String,
    /// Admin password for the setup.
    #[arg(long, env = "ORCH_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Robots to use instead of creating them: one `<robot id> <token>` per line.
    #[arg(long)]
    pub tokens_file: Option<std::path::PathBuf>,
    /// Stop after this long even if work remains, e.g. 60s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// How often idle robots send a pulse.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub pulse_every: Duration,
    /// Cap on completions per second across the fleet (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// A node that sends a robot nothing for this long (no frame or ping on a WebSocket, no
    /// answer to a request) counts as failed: the robot moves to the next node. Catches frozen
    /// and cut-off nodes, whose connections stay open; set it above the node's ping period (a
    /// third of its pulse timeout) and the claim wait (1 s) [default: off].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub node_silence: Option<Duration>,
}

/// The one JSON line `robot-sim` prints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub api: Api,
    pub robots: usize,
    pub items_completed: u64,
    pub seconds: f64,
    pub items_per_s: f64,
    pub assign_p50_ms: Option<f64>,
    pub assign_p99_ms: Option<f64>,
    pub next_item_p50_ms: Option<f64>,
    pub next_item_p99_ms: Option<f64>,
    pub errors: u64,
    /// Items seen at two robots at once, or completed twice (see `double_completions`).
    pub duplicates: u64,
    /// Completions the nodes accepted twice for one item: never right.
    pub double_completions: u64,
    /// Items failed (business or application), crashes simulated, robots connected at the end.
    pub items_failed: u64,
    pub crashes: u64,
    pub connected: u64,
    /// Times a robot moved to another node because its own failed.
    pub node_moves: u64,
    /// Times a node told a robot to come back later (503 or 429 instead of the WebSocket
    /// upgrade, or close code 1011 or 1013) and the robot did, after a growing, jittered pause.
    pub refusals: u64,
    /// Times a node ended a robot's WebSocket with a close frame (1000 "session ended", 1001
    /// going away, 1012 restarting) and the robot connected again, as a production robot does.
    pub reconnects: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`-th percentile (0–100) of `values`, nearest rank.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What a robot does with one item.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Complete,
    Business,
    Application,
}

fn outcome(args: &SimArgs) -> Outcome {
    let roll: f64 = rand::rng().random();
    if roll < args.business_failure_rate {
        Outcome::Business
    } else if roll < args.business_failure_rate + args.application_failure_rate {
        Outcome::Application
    } else {
        Outcome::Complete
    }
}

fn crashes(args: &SimArgs) -> bool {
    args.crash_rate > 0.0 && rand::rng().random::<f64>() < args.crash_rate
}

/// A robot the fleet drives.
#[derive(Debug, Clone)]
struct RobotCred {
    id: i64,
    token: String,
}

/// Runs the simulation described by `args` and returns its report.
pub async fn run(args: SimArgs) -> Result<Report> {
    ensure!(
        args.robots > 0 && args.capacity > 0,
        "robots and capacity must be positive"
    );
    ensure!(args.uploads > 0, "uploads must be positive");
    let node = Node::new(
        &args.base_url,
        Client::builder()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(usize::MAX)
            .build()?,
        args.node_silence,
    )?;
    let fleet = Arc::new(Fleet::default());
    let setup = match (&args.items, &args.tokens_file) {
        (Some(_), _) => Some(setup(&node, &args).await?),
        (None, Some(path)) => {
            ensure!(args.duration.is_some(), "--tokens-file needs --duration");
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let creds = parse_tokens(&text)?;
            ensure!(
                creds.len() >= args.robots,
                "{} has {} robots, --robots is {}",
                path.display(),
                creds.len(),
                args.robots
            );
            return drive(&node, &args, fleet, creds[..args.robots].to_vec(), None).await;
        }
        (None, None) => bail!("give --items with --admin-password, or --tokens-file"),
    };
    let (admin, process, creds) = setup.context("setup")?;
    drive(&node, &args, fleet, creds, Some((admin, process))).await
}

/// Reads `<robot id> <token>` lines.
pub fn parse_tokens(text: &str) -> Result<Vec<(i64, String)>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (id, token) = line
                .split_once(char::is_whitespace)
                .with_context(|| format!("'{line}' is not '<robot id> <token>'"))?;
            Ok((id.parse()?, token.trim().to_string()))
        })
        .collect()
}

/// Signs in, creates a process and the robots; returns the admin's `Authorization` header, the
/// process id and the robots.
async fn setup(node: &Node, args: &SimArgs) -> Result<(String, i64, Vec<(i64, String)>)> {
    let password = args
        .admin_password
        .clone()
        .context("--items needs --admin-password (or ORCH_ADMIN_PASSWORD)")?;
    let login = node
        .json(
            Method::POST,
            "/api/v1/auth/login",
            "",
            Some(json!({ "username": args.admin_user, "password": password })),
        )
        .await
        .context("admin login")?;
    let admin = format!("Bearer {}", login["token"].as_str().context("token")?);
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let process = node
        .json(
            Method::POST,
            "/api/v1/processes",
            &admin,
            Some(json!({ "title": format!("robot-sim {tag}") })),
        )
        .await?["id"]
        .as_i64()
        .context("process id")?;
    let mut creds = Vec::with_capacity(args.robots);
    let names: Vec<String> = (0..args.robots).map(|i| format!("sim-{tag}-{i}")).collect();
    for chunk in names.chunks(32) {
        let made = futures_util::future::join_all(chunk.iter().map(|name| {
            node.json(
                Method::POST,
                "/api/v1/robots",
                &admin,
                Some(
                    json!({ "name": name, "platform": "PYTHON", "capacity": args.capacity,
                             "processes": [process] }),
                ),
            )
        }))
        .await;
        for robot in made {
            let robot = robot?;
            creds.push((
                robot["id"].as_i64().context("robot id")?,
                robot["token"].as_str().context("robot token")?.to_string(),
            ));
        }
    }
    Ok((admin, process, creds))
}

/// Starts the robots, uploads (when set up here), and waits for the end.
async fn drive(
    node: &Node,
    args: &SimArgs,
    fleet: Arc<Fleet>,
    creds: Vec<(i64, String)>,
    owner: Option<(String, i64)>,
) -> Result<Report> {
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(creds.len().max(1));
    let mut robots = Vec::new();
    for (index, (id, token)) in creds.into_iter().enumerate() {
        let robot = RobotCred { id, token };
        let (node, args, fleet, ready) = (
            node.for_robot(index),
            args.clone(),
            Arc::clone(&fleet),
            ready_tx.clone(),
        );
        robots.push(tokio::spawn(async move {
            let outcome = match args.api {
                Api::Ws => ws_robot(&node, &args, &fleet, index, robot, ready).await,
                Api::Rest => rest_robot(&node, &args, &fleet, index, robot, ready).await,
                Api::Seed => seed_robot(&node, &args, &fleet, index, robot, ready).await,
            };
            if let Err(err) = outcome
                && !fleet.stopped()
            {
                fleet.error(format!("robot {index} stopped: {err:#}"));
            }
        }));
    }
    drop(ready_tx);
    // Robots are idle and connected before any work exists.
    let mut ready = 0;
    while ready < robots.len() {
        if ready_rx.recv().await.is_none() {
            break;
        }
        ready += 1;
    }
    let start = Instant::now();
    let deadline = args.duration.map(|d| start + d);
    let mut task_ids = Vec::new();
    if let (Some((admin, process)), Some(items)) = (&owner, args.items) {
        let per = items.div_ceil(args.uploads);
        let mut left = items;
        while left > 0 {
            let rows = per.min(left);
            left -= rows;
            let task = upload(node, &fleet, admin, *process, rows).await?;
            task_ids.push(task);
            if args.uploads > 1 {
                wait_first_item(&fleet, task, Duration::from_secs(10)).await;
            }
        }
    }
    wait_done(node, owner.as_ref(), &task_ids, deadline).await;
    let seconds = start.elapsed().as_secs_f64();
    // The task completes on the node before the last acks reach the robots: let them land.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle
        && !fleet
            .holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fleet.stop.store(true, Ordering::Relaxed);
    let connected = fleet.connected.load(Ordering::Relaxed);
    for robot in robots {
        robot.abort();
    }
    if let Some(err) = fleet
        .last_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        eprintln!("robot-sim: last error: {err}");
    }
    Ok(report(args, &fleet, node, seconds, connected))
}

/// Waits until every uploaded task is finished, or the deadline.
async fn wait_done(
    node: &Node,
    owner: Option<&(String, i64)>,
    task_ids: &[i64],
    deadline: Option<Instant>,
) {
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        if let Some((admin, _)) = owner.filter(|_| !task_ids.is_empty()) {
            let mut done = true;
            for task in task_ids {
                // A node may answer 503 for a while (its store restarting): ask again later.
                match node
                    .json(Method::GET, &format!("/api/v1/tasks/{task}"), admin, None)
                    .await
                {
                    Ok(body) => {
                        done &= body["status"] == "COMPLETED" || body["status"] == "CANCELLED";
                    }
                    Err(_) => done = false,
                }
            }
            if done {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The run's figures.
fn report(args: &SimArgs, fleet: &Fleet, node: &Node, seconds: f64, connected: u64) -> Report {
    let completed = fleet.completions.load(Ordering::Relaxed);
    let assign = fleet
        .assign_ms
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let next = fleet
        .next_item_ms
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let round = |v: Option<f64>| v.map(|x| (x * 100.0).round() / 100.0);
    Report {
        api: args.api,
        robots: args.robots,
        items_completed: completed,
        seconds: (seconds * 1000.0).round() / 1000.0,
        items_per_s: ((completed as f64 / seconds) * 10.0).round() / 10.0,
        assign_p50_ms: round(percentile(&assign, 50.0)),
        assign_p99_ms: round(percentile(&assign, 99.0)),
        next_item_p50_ms: round(percentile(&next, 50.0)),
        next_item_p99_ms: round(percentile(&next, 99.0)),
        errors: fleet.errors.load(Ordering::Relaxed),
        duplicates: fleet.duplicates.load(Ordering::Relaxed),
        double_completions: fleet.double_completions.load(Ordering::Relaxed),
        items_failed: fleet.failures.load(Ordering::Relaxed),
        crashes: fleet.crashes.load(Ordering::Relaxed),
        connected,
        node_moves: node.moves.load(Ordering::Relaxed),
        refusals: fleet.refusals.load(Ordering::Relaxed),
        reconnects: fleet.reconnects.load(Ordering::Relaxed),
    }
}

async fn upload(node: &Node, fleet: &Fleet, admin: &str, process: i64, rows: usize) -> Result<i64> {
    let mut csv = String::with_capacity(rows * 24 + 32);
    csv.push_str("linea,valor,field_name\n");
    for i in 1..=rows {
        csv.push_str(&format!("{i},{},sim\n", 3_000_000 + i));
    }
    let started = Instant::now();
    let resp = node
        .http
        .post(format!("{}/api/v1/tasks?process_id={process}", node.base()))
        .header("authorization", admin)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    ensure!(status == StatusCode::CREATED, "upload: {status} {text}");
    let task = serde_json::from_str::<Value>(&text)?["id"]
        .as_i64()
        .context("task id")?;
    let seen = fleet
        .first_seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&task);
    match seen {
        Some(at) => fleet
            .assign_ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ms(at - started)),
        None => {
            fleet
                .upload_started
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(task, started);
        }
    }
    Ok(task)
}

async fn wait_first_item(fleet: &Fleet, task: i64, within: Duration) {
    let until = Instant::now() + within;
    while Instant::now() < until
        && fleet
            .upload_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&task)
    {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Whether a failed WebSocket connect was the node saying "not now" (503 or 429 instead of
/// the upgrade) rather than refusing the robot.
fn refused_for_now(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<tokio_tungstenite::tungstenite::Error>(),
        Some(tokio_tungstenite::tungstenite::Error::Http(response))
            if matches!(response.status().as_u16(), 429 | 503)
    )
}

/// The pause before a refused robot comes back, as a production robot takes it: 250 ms doubled
/// per refusal in a row up to 8 s, plus up to half again at random so a refused crowd spreads.
async fn come_back_later(fleet: &Fleet, refused_in_a_row: &mut u32) {
    fleet.refusals.fetch_add(1, Ordering::Relaxed);
    let base = (250u64 << (*refused_in_a_row).min(5)).min(8_000);
    *refused_in_a_row += 1;
    let pause = base + rand::random_range(0..=base / 2);
    tokio::time::sleep(Duration::from_millis(pause)).await;
}

/// How often a robot sends a report again that the node could not write, half a second apart
/// (half a minute in all: longer than a SurrealDB server takes to restart).
const REPORT_TRIES: u32 = 60;
