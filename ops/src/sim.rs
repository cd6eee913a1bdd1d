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

/// State the whole fleet shares.
#[derive(Debug, Default)]
struct Fleet {
    /// Which robot holds each delivered item.
    holders: Mutex<HashMap<i64, usize>>,
    /// Items whose completion was accepted.
    completed: Mutex<HashSet<i64>>,
    duplicates: AtomicU64,
    double_completions: AtomicU64,
    errors: AtomicU64,
    completions: AtomicU64,
    failures: AtomicU64,
    crashes: AtomicU64,
    connected: AtomicU64,
    refusals: AtomicU64,
    reconnects: AtomicU64,
    /// Upload start per task, and first-arrival per task seen before its upload answered.
    upload_started: Mutex<HashMap<i64, Instant>>,
    first_seen: Mutex<HashMap<i64, Instant>>,
    assign_ms: Mutex<Vec<f64>>,
    next_item_ms: Mutex<Vec<f64>>,
    stop: AtomicBool,
    /// When `--rate` pacing began.
    started_at: Mutex<Option<Instant>>,
    /// Completion slots handed out by `--rate` pacing so far.
    paced: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Fleet {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn error(&self, what: impl std::fmt::Display) {
        // The first few in full on stderr (the report keeps the count and the last one).
        if self.errors.fetch_add(1, Ordering::Relaxed) < 10 {
            eprintln!("robot-sim: error: {what}");
        }
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *last = Some(what.to_string());
    }

    /// An item reached `robot`; counts a duplicate if another robot holds it or it was done.
    fn delivered(&self, robot: usize, item: i64, task: i64) {
        let now = Instant::now();
        {
            let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(other) = holders.insert(item, robot)
                && other != robot
            {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self
            .completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&item)
        {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        let started = self
            .upload_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&task);
        match started {
            Some(started) => self
                .assign_ms
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(ms(now - started)),
            None => {
                self.first_seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(task)
                    .or_insert(now);
            }
        }
    }

    /// A robot that freed a slot at `freed` got its next item at `now`.
    fn next_item(&self, freed: Option<Instant>, now: Instant) {
        if let Some(at) = freed {
            self.next_item_ms
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(ms(now - at));
        }
    }

    /// `robot` gave `item` back (failed, released, revoked, crashed).
    fn dropped(&self, robot: usize, item: i64) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if holders.get(&item) == Some(&robot) {
            holders.remove(&item);
        }
    }

    /// The node accepted `robot`'s completion of `item`.
    fn completed(&self, robot: usize, item: i64) {
        self.dropped(robot, item);
        if !self
            .completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(item)
        {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            self.double_completions.fetch_add(1, Ordering::Relaxed);
        }
        self.completions.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for this robot's turn so that completions are sent at `rate` per second, evenly
    /// spaced: each call takes the next slot (slot k is due k / rate seconds after the first).
    /// Counting accepted completions instead let every robot that woke before the acks came
    /// back through at once, so the node saw bursts of a whole fleet's completions.
    async fn pace(&self, rate: f64) {
        if rate <= 0.0 {
            return;
        }
        let start = *self
            .started_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(Instant::now);
        let slot = self.paced.fetch_add(1, Ordering::Relaxed) as f64;
        let due = start + Duration::from_secs_f64(slot / rate);
        tokio::time::sleep_until(due.into()).await;
    }
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

/// The nodes' HTTP surface, as the simulator uses it: one node at a time, the next one when
/// it fails.
#[derive(Debug, Clone)]
struct Node {
    bases: Arc<Vec<String>>,
    /// Index of the node in use (modulo the number of nodes).
    at: Arc<AtomicUsize>,
    http: Client,
    /// Moves to another node, fleet-wide.
    moves: Arc<AtomicU64>,
    /// `--node-silence`: a request unanswered this long moves the robot on.
    silence: Option<Duration>,
}

impl Node {
    fn new(base_urls: &str, http: Client, silence: Option<Duration>) -> Result<Node> {
        let bases: Vec<String> = base_urls
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect();
        ensure!(!bases.is_empty(), "--base-url names no node");
        Ok(Node {
            bases: Arc::new(bases),
            at: Arc::default(),
            http,
            moves: Arc::default(),
            silence,
        })
    }

    /// The node in use.
    fn base(&self) -> &str {
        &self.bases[self.at.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// A handle for robot `index`, starting on node `index` modulo the number of nodes.
    fn for_robot(&self, index: usize) -> Node {
        Node {
            at: Arc::new(AtomicUsize::new(index % self.bases.len())),
            ..self.clone()
        }
    }

    /// Moves to the next node; `false` when there is no other node.
    fn fail_over(&self) -> bool {
        if self.bases.len() < 2 {
            return false;
        }
        self.at.fetch_add(1, Ordering::Relaxed);
        self.moves.fetch_add(1, Ordering::Relaxed);
        true
    }

    async fn call(
        &self,
        method: Method,
        path: impl AsRef<str>,
        auth: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, String)> {
        let path = path.as_ref();
        let mut attempt = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base()))
                .header("authorization", auth);
            if let Some(body) = &body {
                request = request.json(body);
            }
            if let Some(silence) = self.silence {
                request = request.timeout(silence);
            }
            match request.send().await {
                Ok(resp) => return Ok((resp.status(), resp.text().await?)),
                // The node is gone (refused, reset), or silent past `--node-silence`: the next
                // one serves the same store (what was sent is idempotent there).
                Err(err)
                    if (!err.is_timeout() || self.silence.is_some())
                        && attempt < self.bases.len()
                        && self.fail_over() =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// A robot's report about an item, sent again while the node answers 503 (its store away
    /// for a moment) or 429, half a second apart and up to [`REPORT_TRIES`] times, as a
    /// production robot does (a report repeated with its lease is a no-op once written). Any
    /// other answer is returned as it is.
    async fn report(
        &self,
        method: Method,
        path: impl AsRef<str>,
        auth: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, String)> {
        let mut tries = 0;
        loop {
            let (status, text) = self
                .call(method.clone(), path.as_ref(), auth, body.clone())
                .await?;
            if !matches!(status.as_u16(), 429 | 503) || tries >= REPORT_TRIES {
                return Ok((status, text));
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let (status, text) = self.call(method, path, auth, body).await?;
        ensure!(status.is_success(), "{path}: {status} {text}");
        if text.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }
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
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some((admin, _)) = owner.as_ref().filter(|_| !task_ids.is_empty()) {
            let mut done = true;
            for task in &task_ids {
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
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    Ok(Report {
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
    })
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

/// Connection attempts per (re)connect before a robot gives up.
const CONNECT_ATTEMPTS: u32 = 8;

/// Opens a robot's WebSocket the way a production robot does: a connection refused or reset
/// (thousands of robots connecting at once) is tried again after a growing, jittered pause. An
/// HTTP refusal (a bad token) is not.
async fn connect_ws(
    url: &str,
    robot: &RobotCred,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let mut attempt = 1;
    loop {
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Token {}", robot.token).parse()?);
        // Nagle off, as production robot stacks have it (Python's asyncio sets TCP_NODELAY):
        // `started` and `completed` go out back to back.
        match tokio_tungstenite::connect_async_with_config(request, None, true).await {
            Ok((socket, _)) => return Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Io(_)) if attempt < CONNECT_ATTEMPTS => {
                let pause = 50 * 2u64.pow(attempt) + rand::random_range(0..100);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                attempt += 1;
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("robot {} connect (attempt {attempt})", robot.id));
            }
        }
    }
}

/// One robot on the WebSocket channel: connects, says ready, works what is pushed, and on a
/// simulated crash drops the connection and comes back.
async fn ws_robot(
    node: &Node,
    args: &SimArgs,
    fleet: &Arc<Fleet>,
    index: usize,
    robot: RobotCred,
    ready: mpsc::Sender<()>,
) -> Result<()> {
    let mut ready = Some(ready);
    // Items pushed and not finished; kept when the robot moves to another node, which pushes
    // the robot's leases again.
    let mut held: HashSet<i64> = HashSet::new();
    // Frames about items (started, completed, failed) sent and not acknowledged yet, by ref: the
    // frame and how often it was sent again. Each is idempotent on the node, and they outlive a
    // connection: a node may die after writing a report and before acknowledging it.
    let mut reports: HashMap<String, (String, u32)> = HashMap::new();
    // Items whose completion was acknowledged: a node may push one again when it read the
    // robot's leases before a completion sent again after a move had landed.
    let mut finished: HashSet<i64> = HashSet::new();
    // Refusals since the node last acknowledged `ready`: they lengthen the pause.
    let mut refused_in_a_row = 0u32;
    loop {
        let url = format!("{}/api/v1/robot/ws", node.base()).replacen("http", "ws", 1);
        let connecting = connect_ws(&url, &robot);
        let connected = match node.silence {
            Some(silence) => tokio::time::timeout(silence, connecting)
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!("{url} did not answer within {silence:?}"))
                }),
            None => connecting.await,
        };
        let socket = match connected {
            Ok(socket) => socket,
            Err(err) if refused_for_now(&err) => {
                come_back_later(fleet, &mut refused_in_a_row).await;
                node.fail_over();
                continue;
            }
            Err(_) if node.fail_over() => continue,
            Err(err) => return Err(err),
        };
        fleet.connected.fetch_add(1, Ordering::Relaxed);
        let (mut sink, mut stream) = socket.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        // A send fails only once the connection is gone; the read side then ends as well.
        let _ = out.send(Message::text(
            json!({ "type": "ready", "ref": "ready" }).to_string(),
        ));
        let mut freed: VecDeque<Instant> = VecDeque::new();
        // Reports the node that went away never acknowledged: send them again here. A report
        // that landed there is answered as the first time; one that did not lands now. A
        // `started` is dropped when the item's outcome is pending too (it may have landed).
        let outcomes: HashSet<String> = reports
            .keys()
            .filter(|r| r.starts_with('c') || r.starts_with('f'))
            .map(|r| r[1..].to_string())
            .collect();
        // Nor is one whose completion was acknowledged (its own ack was lost).
        reports.retain(|r, _| {
            !(r.starts_with('s')
                && (outcomes.contains(&r[1..])
                    || r[1..].parse().is_ok_and(|id: i64| finished.contains(&id))))
        });
        for (text, _) in reports.values() {
            let _ = out.send(Message::text(text.clone()));
        }
        // What it holds now is what the node pushes on this connection (its leases resume);
        // items the node took back meanwhile (released while the robot was away) are gone.
        held.clear();
        let mut pulse = tokio::time::interval(args.pulse_every);
        pulse.tick().await;
        // Far away without --node-silence.
        let silence = node.silence.unwrap_or(Duration::from_secs(365 * 24 * 3600));
        let mut heard = tokio::time::Instant::now();
        let ended = loop {
            let message = tokio::select! {
                message = stream.next() => message,
                _ = pulse.tick() => {
                    let _ = out.send(Message::text(json!({ "type": "pulse" }).to_string()));
                    continue;
                }
                () = tokio::time::sleep_until(heard + silence) => {
                    break Ended::Lost(format!("the node was silent for {silence:?}"));
                }
            };
            heard = tokio::time::Instant::now();
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(err)) => break Ended::Lost(format!("the connection failed: {err}")),
                None => break Ended::Lost("the node closed the connection".into()),
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(Some(frame))
                    if matches!(frame.code, CloseCode::Error | CloseCode::Again) =>
                {
                    break Ended::Refused;
                }
                Message::Close(Some(frame))
                    if matches!(
                        frame.code,
                        CloseCode::Normal | CloseCode::Away | CloseCode::Restart
                    ) =>
                {
                    break Ended::Closed;
                }
                Message::Close(frame) => {
                    break Ended::Lost(format!("the node closed the connection: {frame:?}"));
                }
                _ => continue,
            };
            let frame: Value = serde_json::from_str(text.as_str())?;
            match frame["type"].as_str() {
                Some("ack") if frame["ref"] == "ready" => {
                    refused_in_a_row = 0;
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(()).await;
                    }
                }
                Some("ack") => {
                    let reference = frame["ref"].as_str().unwrap_or_default();
                    reports.remove(reference);
                    if let Some(id) = reference.strip_prefix('c').and_then(|r| r.parse().ok()) {
                        finished.insert(id);
                        fleet.completed(index, id);
                    }
                }
                // The node could not write a report (its store was away for a moment): send it
                // again, as a production robot does.
                // A `started` sent again after the item's outcome was reported: the outcome
                // landed first, so the node calls the start illegal now. Nothing is wrong.
                Some("error")
                    if frame["code"] == "illegal_transition"
                        && frame["ref"]
                            .as_str()
                            .is_some_and(|r| outcome_reported(r, &finished, &reports)) =>
                {
                    if let Some(reference) = frame["ref"].as_str() {
                        reports.remove(reference);
                    }
                }
                Some("error")
                    if ["store_unavailable", "unavailable"]
                        .contains(&frame["code"].as_str().unwrap_or_default())
                        && frame["ref"]
                            .as_str()
                            .and_then(|r| reports.get(r))
                            .is_some_and(|(_, tries)| *tries < REPORT_TRIES) =>
                {
                    let reference = frame["ref"].as_str().unwrap_or_default().to_string();
                    // A start is not sent again once the item's outcome went out after it.
                    if outcome_reported(&reference, &finished, &reports) {
                        reports.remove(&reference);
                        continue;
                    }
                    if let Some((text, tries)) = reports.get_mut(&reference) {
                        *tries += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let _ = out.send(Message::text(text.clone()));
                    }
                }
                Some("error") => {
                    if let Some(reference) = frame["ref"].as_str() {
                        reports.remove(reference);
                    }
                    fleet.error(format!("robot {}: {frame}", robot.id));
                }
                Some("revoke") => {
                    for id in frame["item_ids"].as_array().into_iter().flatten() {
                        let id = id.as_i64().unwrap_or_default();
                        held.remove(&id);
                        fleet.dropped(index, id);
                    }
                }
                Some("items") => {
                    let now = Instant::now();
                    // An item whose outcome was reported and not acknowledged yet (sent again
                    // above), or whose completion was acknowledged, is not worked twice.
                    let items: Vec<Value> = frame["items"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|item| {
                            let id = item["id"].as_i64().unwrap_or_default();
                            !finished.contains(&id)
                                && !reports.contains_key(&format!("c{id}"))
                                && !reports.contains_key(&format!("f{id}"))
                        })
                        .collect();
                    for item in &items {
                        let id = item["id"].as_i64().unwrap_or_default();
                        if held.insert(id) {
                            fleet.delivered(
                                index,
                                id,
                                item["task_id"].as_i64().unwrap_or_default(),
                            );
                            fleet.next_item(freed.pop_front(), now);
                        }
                    }
                    // The node pushes at most the robot's capacity; standby stays on its side.
                    if held.len() > args.capacity {
                        fleet.error(format!(
                            "robot {} was pushed {} items at once, above its capacity {}",
                            robot.id,
                            held.len(),
                            args.capacity
                        ));
                    }
                    let mut crash = false;
                    let mut cut_off = false;
                    for item in items {
                        let id = item["id"].as_i64().unwrap_or_default();
                        let lease = item["lease_id"].clone();
                        let mut send = |kind: &str, extra: Value| {
                            let mut frame = extra;
                            frame["type"] = json!(kind);
                            frame["item_id"] = json!(id);
                            frame["lease_id"] = lease.clone();
                            let text = frame.to_string();
                            let reference = frame["ref"].as_str().unwrap_or_default();
                            reports.insert(reference.to_string(), (text.clone(), 0));
                            out.send(Message::text(text))
                        };
                        if item["status"] != "STARTED"
                            && send("started", json!({ "ref": format!("s{id}") })).is_err()
                        {
                            cut_off = true;
                            break;
                        }
                        if !args.work_time.is_zero() {
                            tokio::time::sleep(args.work_time).await;
                        }
                        fleet.pace(args.rate).await;
                        let sent = match outcome(args) {
                            Outcome::Complete => send(
                                "completed",
                                json!({ "ref": format!("c{id}"), "observation": "done",
                                        "output": { "robot": robot.id } }),
                            ),
                            Outcome::Business => {
                                fleet.failures.fetch_add(1, Ordering::Relaxed);
                                fleet.dropped(index, id);
                                send(
                                    "failed",
                                    json!({ "ref": format!("f{id}"), "kind": "business",
                                                      "message": "simulated business error" }),
                                )
                            }
                            Outcome::Application => {
                                fleet.failures.fetch_add(1, Ordering::Relaxed);
                                fleet.dropped(index, id);
                                send(
                                    "failed",
                                    json!({ "ref": format!("f{id}"), "kind": "application",
                                                      "message": "simulated application error" }),
                                )
                            }
                        };
                        if sent.is_err() {
                            // The connection went away: the item stays held, and the node the
                            // robot moves to pushes it again.
                            cut_off = true;
                            break;
                        }
                        held.remove(&id);
                        freed.push_back(Instant::now());
                        if crashes(args) {
                            crash = true;
                            break;
                        }
                    }
                    if cut_off {
                        break Ended::Lost("the connection closed while sending".into());
                    }
                    if crash {
                        break Ended::Crashed;
                    }
                }
                _ => fleet.error(format!("robot {}: unexpected frame {frame}", robot.id)),
            }
        };
        drop(out);
        writer.abort();
        fleet.connected.fetch_sub(1, Ordering::Relaxed);
        if fleet.stopped() {
            return Ok(());
        }
        match ended {
            Ended::Crashed => {
                fleet.crashes.fetch_add(1, Ordering::Relaxed);
                for id in held.drain() {
                    fleet.dropped(index, id);
                }
                // A crashed robot remembers nothing it sent either.
                reports.clear();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ended::Refused => {
                come_back_later(fleet, &mut refused_in_a_row).await;
                node.fail_over();
            }
            // The node ended the session (it judged the robot silent, it was fenced, it is
            // stopping): connect again, to the next node if there is one, after a short
            // jittered pause so a crowd ended at once does not come back at once. A robot
            // that may no longer connect (token rotated, deleted) is refused at the upgrade.
            Ended::Closed => {
                fleet.reconnects.fetch_add(1, Ordering::Relaxed);
                node.fail_over();
                tokio::time::sleep(Duration::from_millis(rand::random_range(100..=600))).await;
            }
            // Its node failed: reconnect to the next one, which resumes its leases.
            Ended::Lost(_) if node.fail_over() => {}
            Ended::Lost(why) => bail!("{why}"),
        }
    }
}

/// Whether `reference` is a `started` (`s<id>`) whose item's outcome was reported since: its
/// completion acknowledged, or a completion or failure on its way.
fn outcome_reported(
    reference: &str,
    finished: &HashSet<i64>,
    reports: &HashMap<String, (String, u32)>,
) -> bool {
    let Some(id) = reference.strip_prefix('s') else {
        return false;
    };
    id.parse().is_ok_and(|id: i64| finished.contains(&id))
        || reports.contains_key(&format!("c{id}"))
        || reports.contains_key(&format!("f{id}"))
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

/// Why a WebSocket robot's connection ended.
enum Ended {
    /// The simulated robot crashed (dropped its items).
    Crashed,
    /// The node closed the connection or it failed.
    Lost(String),
    /// The node closed the connection with "session ended" (1000), "going away" (1001) or
    /// "restarting" (1012).
    Closed,
    /// The node closed the connection with "try again later" (1013) or an internal error
    /// (1011): it could not take the robot on just now.
    Refused,
}

/// One robot on REST v1: long-poll claims, then start and finish each item.
async fn rest_robot(
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
            let id = item["id"].as_i64().unwrap_or_default();
            let lease = item["lease_id"].clone();
            let act = |verb: &str, body: Value| {
                let mut body = body;
                body["lease_id"] = lease.clone();
                node.report(
                    Method::POST,
                    format!("/api/v1/robot/items/{id}/{verb}"),
                    &auth,
                    Some(body),
                )
            };
            let (status, text) = act("start", json!({})).await?;
            if !status.is_success() {
                fleet.error(format!("start {id}: {status} {text}"));
                fleet.dropped(index, id);
                continue;
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

/// One robot speaking the prototype's API: poll its tasks, then start and finish each item.
async fn seed_robot(
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
