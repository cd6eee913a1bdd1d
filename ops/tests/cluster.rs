//! Three `orchestrator` processes on one `surreal` server, all on loopback with short timers:
//! they start together on an empty database, keep one housekeeping node, stop leasing a task
//! cancelled on another node, release the robots of a killed node and finish its fleet's work,
//! and fence a node that was frozen past the dead-node time.
//!
//! The node binary is looked for next to `surreal` (both are built by `cargo test
//! --workspace`). The tests take turns: each runs four servers and a fleet on a 2-core host.

mod support;

use anyhow::{Context, Result, bail, ensure};
use orchestrator_actors::dispatcher::{DispatchConfig, Dispatcher};
use orchestrator_actors::domain::Clock;
use orchestrator_actors::domain::Platform;
use orchestrator_actors::store::{Lane, NewRobot};
use orchestrator_actors::{Store, StoreConfig};
use reqwest::{Client, Method};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_PASSWORD: &str = "cluster-test-password";
const JWT_SECRET: &str = "cluster-test-secret-shared-by-every-node";
const PULSE_TIMEOUT: Duration = Duration::from_secs(3);
const SWEEP: Duration = Duration::from_millis(200);
const DEAD_AFTER: Duration = Duration::from_secs(1);

/// One cluster test at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn node_binary() -> Result<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_surreal")).with_file_name("orchestrator");
    ensure!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds the node)",
        path.display()
    );
    Ok(path)
}

/// A child process killed when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -{signal} {} failed", self.name);
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Timers of the nodes, and whether they exchange hints.
#[derive(Clone)]
struct Timers {
    sweep: Duration,
    dead_after: Duration,
    /// Cluster listener ports (one per node) when the nodes exchange hints.
    hint_ports: Option<Vec<u16>>,
    /// How often loads are recounted from the store (None: the node's default). Tests that
    /// assert loads set it out of reach, so the backstop cannot hide a missed update.
    recount: Option<Duration>,
}

impl Timers {
    fn fast() -> Timers {
        Timers {
            sweep: SWEEP,
            dead_after: DEAD_AFTER,
            hint_ports: None,
            recount: None,
        }
    }
}

/// The SurrealDB server and the nodes on it.
struct Cluster {
    timers: Timers,
    dir: tempfile::TempDir,
    db: String,
    surreal_port: u16,
    surreal: Option<Proc>,
    nodes: Vec<Option<Proc>>,
    urls: Vec<String>,
    http: Client,
}

impl Cluster {
    /// Starts the server, then `count` nodes at the same moment.
    async fn start(count: usize) -> Result<Cluster> {
        Cluster::start_with(count, Timers::fast()).await
    }

    async fn start_with(count: usize, timers: Timers) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let http = Client::builder().timeout(Duration::from_secs(30)).build()?;
        let mut cluster = Cluster {
            timers,
            dir,
            db: format!("ws://127.0.0.1:{port}"),
            surreal_port: port,
            surreal: None,
            nodes: Vec::new(),
            urls: Vec::new(),
            http,
        };
        cluster.start_surreal().await?;
        for n in 1..=count {
            let port = free_port()?;
            cluster.urls.push(format!("http://127.0.0.1:{port}"));
            let proc = cluster.spawn_node(n)?;
            cluster.nodes.push(Some(proc));
        }
        for n in 1..=count {
            cluster.wait_healthy(n).await?;
        }
        Ok(cluster)
    }

    /// Starts the SurrealDB server on its port and data folder (again, after a stop).
    async fn start_surreal(&mut self) -> Result<()> {
        let port = self.surreal_port;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("surreal.log"))?;
        self.surreal = Some(Proc {
            child: Command::new(env!("CARGO_BIN_EXE_surreal"))
                .args(["start", "--user", "root", "--pass", "root", "--log", "warn"])
                .args(["--bind", &format!("127.0.0.1:{port}")])
                .arg(format!(
                    "surrealkv://{}",
                    self.dir.path().join("db").display()
                ))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("start surreal")?,
            name: "surreal".into(),
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .http
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .map_or(true, |r| !r.status().is_success())
        {
            ensure!(Instant::now() < deadline, "surreal did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn spawn_node(&self, n: usize) -> Result<Proc> {
        let listen = self.urls[n - 1].trim_start_matches("http://").to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{n}.log")))?;
        let mut command = Command::new(node_binary()?);
        command.args(["serve", "--db", &self.db, "--listen", &listen]);
        if let Some(recount) = self.timers.recount {
            command.args(["--recount-period", &humantime(recount)]);
        }
        if let Some(ports) = &self.timers.hint_ports {
            command
                .args(["--cluster-listen", &format!("127.0.0.1:{}", ports[n - 1])])
                .env("ORCH_CLUSTER_COOKIE", "cluster-test-cookie-of-the-suite");
        }
        let child = command
            .args(["--node-id", &format!("n{n}")])
            .args(["--pulse-timeout", &humantime(PULSE_TIMEOUT)])
            .args(["--sweep-period", &humantime(self.timers.sweep)])
            .args(["--dead-after", &humantime(self.timers.dead_after)])
            // Long enough that items a robot started just before a store outage are not
            // expired while its retried reports wait for the store (production: 5 min).
            .args(["--lease-ttl", "30s"])
            .env("ORCH_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("ORCH_JWT_SECRET", JWT_SECRET)
            .env("ORCH_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start n{n}"))?;
        Ok(Proc {
            child,
            name: format!("n{n}"),
        })
    }

    async fn wait_healthy(&self, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self
                .http
                .get(format!("{}/healthz", self.urls[n - 1]))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("n{n} did not become healthy:\n{}", self.log(n));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self, n: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("n{n}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn node(&self, n: usize) -> Result<&Proc> {
        self.nodes[n - 1].as_ref().context("node not running")
    }

    async fn login(&self, n: usize) -> Result<String> {
        let body = self
            .json(
                n,
                Method::POST,
                "/api/v1/auth/login",
                "",
                Some(json!({ "username": "admin", "password": ADMIN_PASSWORD })),
            )
            .await?;
        Ok(format!(
            "Bearer {}",
            body["token"].as_str().context("token")?
        ))
    }

    async fn call(
        &self,
        n: usize,
        method: Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.urls[n - 1]))
            .header("authorization", auth);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn json(
        &self,
        n: usize,
        method: Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let (status, value) = self.call(n, method, path, auth, body).await?;
        ensure!(
            (200..300).contains(&status),
            "{path} on n{n}: {status} {value}"
        );
        Ok(value)
    }

    /// Creates a process, `robots` robots for it and a task of `items` rows (through node 1);
    /// returns the robots' tokens and the task id.
    async fn work(&self, admin: &str, title: &str, robots: usize, items: usize) -> Result<Work> {
        let process = self
            .json(
                1,
                Method::POST,
                "/api/v1/processes",
                admin,
                Some(json!({ "title": title, "description": "cluster test" })),
            )
            .await?["id"]
            .as_i64()
            .context("process id")?;
        let mut tokens = Vec::new();
        let mut ids = Vec::new();
        for r in 0..robots {
            let robot = self
                .json(
                    1,
                    Method::POST,
                    "/api/v1/robots",
                    admin,
                    Some(
                        json!({ "name": format!("{title}-{r}"), "platform": "python",
                                 "capacity": 5, "processes": [process] }),
                    ),
                )
                .await?;
            tokens.push(format!(
                "Token {}",
                robot["token"].as_str().context("token")?
            ));
            ids.push(robot["id"].as_i64().context("robot id")?);
        }
        Ok(Work {
            tokens,
            ids,
            process,
            task: self.upload(1, admin, process, items).await?,
        })
    }

    /// Uploads a task of `items` one-column rows for `process` through node `n`; its id.
    async fn upload(&self, n: usize, admin: &str, process: i64, items: usize) -> Result<i64> {
        let csv: String = std::iter::once("n\n".to_string())
            .chain((0..items).map(|i| format!("{i}\n")))
            .collect();
        let resp = self
            .http
            .post(format!(
                "{}/api/v1/tasks?process_id={process}",
                self.urls[n - 1]
            ))
            .header("authorization", admin)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await?;
        let status = resp.status();
        let task: Value = resp.json().await?;
        ensure!(status.is_success(), "upload: {status} {task}");
        task["id"].as_i64().context("task id")
    }

    async fn task(&self, n: usize, admin: &str, task: i64) -> Result<Value> {
        self.json(
            n,
            Method::GET,
            &format!("/api/v1/tasks/{task}"),
            admin,
            None,
        )
        .await
    }

    async fn cluster_view(&self, n: usize, admin: &str) -> Result<Value> {
        self.json(n, Method::GET, "/api/v1/cluster", admin, None)
            .await
    }

    /// Makes the robot with `token` ACTIVE through node `n` (robots start INACTIVE).
    async fn activate(&self, n: usize, token: &str) -> Result<()> {
        self.json(
            n,
            Method::POST,
            "/api/v1/robot/pulse",
            token,
            Some(json!({ "status": "ACTIVE" })),
        )
        .await?;
        Ok(())
    }

    /// Leases up to `max` items for the robot with `token` through node `n`.
    async fn claim(&self, n: usize, token: &str, max: usize) -> Result<Vec<Value>> {
        let items = self
            .json(
                n,
                Method::POST,
                &format!("/api/v1/robot/items/claim?max={max}&wait=5"),
                token,
                None,
            )
            .await?;
        Ok(items.as_array().cloned().unwrap_or_default())
    }
}

struct Work {
    /// `Token <token>` per robot.
    tokens: Vec<String>,
    ids: Vec<i64>,
    process: i64,
    task: i64,
}

fn humantime(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Node `id`'s row in a `GET /api/v1/cluster` answer (null when absent).
fn node_in(view: &Value, id: &str) -> Value {
    view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap_or_default()
}

fn count(task: &Value, status: &str) -> i64 {
    task["counts"][status].as_i64().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_together_on_an_empty_database_all_come_up() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(3).await?;
    let admin = cluster.login(2).await?;
    // Every node signs the same admin in (one admin was created, one JWT secret kept).
    for n in 1..=3 {
        cluster.login(n).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = cluster.cluster_view(3, &admin).await?;
        let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 3 && nodes.iter().all(|n| n["alive"] == true) {
            break view;
        }
        ensure!(Instant::now() < deadline, "not all alive: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let holder = view["housekeeping"]
        .as_str()
        .context("a housekeeping node")?;
    assert!(["n1", "n2", "n3"].contains(&holder), "{view}");
    for node in view["nodes"].as_array().into_iter().flatten() {
        assert_eq!(node["incarnation"], 1, "{view}");
        assert!(
            node["http"]
                .as_str()
                .is_some_and(|h| h.starts_with("http://127.0.0.1:"))
        );
    }
    // Without a valid sign-in the cluster is not shown.
    let (status, _) = cluster
        .call(3, Method::GET, "/api/v1/cluster", "Bearer nonsense", None)
        .await?;
    assert_eq!(status, 401);
    Ok(())
}

/// Time `ping` takes on `store`, or the limit when it answers false (the store's own bound).
async fn ping_time(store: &Store) -> Duration {
    let started = Instant::now();
    store.ping().await;
    started.elapsed()
}

/// A store on `cluster`'s server holding 1,000 robots: a read of the robot table then keeps the
/// server's task for the connection busy for a while.
async fn store_with_robots(cluster: &Cluster) -> Result<Store> {
    let store = Store::open(&StoreConfig {
        url: cluster.db.clone(),
        ..StoreConfig::memory()
    })
    .await?;
    for n in 0..1_000 {
        store
            .create_robot(&NewRobot {
                name: format!("bot-{n}"),
                platform: Platform::Python,
                capacity: 1,
                processes: Vec::new(),
                token_hash: format!("hash-{n}"),
            })
            .await?;
    }
    Ok(store)
}

/// Buries `store`'s main connection under 400 reads of the whole robot table, sent all at
/// once; 100 ms later runs `during` (which times itself) beside a ping on the main connection,
/// then waits for the reads. The ping must take at least 500 ms (or the test shows nothing) and
/// `during` under a quarter of it: `what` answered without queueing behind the main connection.
async fn answers_while_buried(
    store: &Store,
    what: &str,
    idle: Duration,
    during: impl Future<Output = Result<Duration>>,
) -> Result<()> {
    let burden: Vec<_> = (0..400)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.list_robots().await.map(|r| r.len()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (main, took) = tokio::join!(ping_time(store), during);
    for read in burden {
        assert_eq!(read.await??, 1_000);
    }
    let took = took?;
    eprintln!(
        "{what} while 400 table reads queue on the main connection: {took:?} (idle {idle:?}, \
         a ping on the main connection {main:?})"
    );
    ensure!(
        main >= Duration::from_millis(500),
        "the burden did not slow the main connection ({main:?}): the test shows nothing"
    );
    ensure!(
        took * 4 < main,
        "{what} waited behind the main connection: {took:?} vs {main:?}"
    );
    Ok(())
}

/// The server runs all requests of one connection in one task, so a heartbeat sent down the
/// connection that carries a node's bulk traffic waits behind all of it (heartbeats of 10 s and
/// more in a 30,000-robot connect storm, and nodes declared dead). Membership has a connection
/// of its own: it answers while the main one is buried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_membership_lane_answers_while_the_main_connection_is_buried() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(0).await?;
    let store = store_with_robots(&cluster).await?;
    let lane = store.lane(Lane::Membership);
    let idle = ping_time(&lane).await;
    answers_while_buried(&store, "membership lane ping", idle, async {
        Ok(ping_time(&lane).await)
    })
    .await
}

/// Every robot connect waits for the registry. Its sweeps read and write the store each
/// period; down the main connection, a sweep waited behind a connect storm for 68 to 97 s
/// (30,000 robots on three nodes) and the connects meanwhile were refused. The registry's own
/// store work has a connection of its own: it answers while the main one is buried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_answers_while_the_main_connection_is_buried() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(0).await?;
    let store = store_with_robots(&cluster).await?;
    let dispatcher = Dispatcher::start(
        store.clone(),
        DispatchConfig {
            node_id: "buried".into(),
            http: "http://127.0.0.1:0".into(),
            dead_after: DEAD_AFTER,
            pulse_timeout: PULSE_TIMEOUT,
            lease_ttl: Duration::from_secs(60),
            // A sweep starts while the burden is sent, and several while it is read.
            sweep_period: Duration::from_millis(50),
            backoff_base: Duration::from_millis(100),
            dispatch_delay: Duration::from_millis(1),
            ws_standby: 0,
            recount_period: Duration::from_millis(100),
            payload_limits: Default::default(),
            stale_upload_after: Duration::from_secs(600),
            clock: Clock::system(),
            hints: Default::default(),
        },
    )
    .await?;
    // A robot with a session, so that recounts read the store too.
    let robot = store.list_robots().await?.remove(0);
    dispatcher.connect(&robot).await?;
    let loads_time = || async {
        let started = Instant::now();
        let loads = dispatcher.loads().await?;
        ensure!(loads.len() == 1, "loads of {} robots, not 1", loads.len());
        Ok(started.elapsed())
    };
    let idle = loads_time().await?;
    let answered = answers_while_buried(&store, "robot loads", idle, loads_time()).await;
    dispatcher.shutdown().await;
    answered
}

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
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&cluster.task(1, &admin, work.task).await?, "completed") < 200 {
        ensure!(Instant::now() < deadline, "the robots did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// A WebSocket to a node's robot channel.
type RobotSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects the robot with `token` to node `n` over WebSocket, says it is ready, and returns
/// once it has been pushed items.
async fn ws_robot_working(cluster: &Cluster, n: usize, token: &str) -> Result<RobotSocket> {
    ws_robot_until(cluster, n, token, "\"items\"")
        .await
        .context("no items pushed")
}

/// Connects the robot with `token` to node `n` over WebSocket, says it is ready, and reads
/// frames until one contains `wanted` (within 10 s).
async fn ws_robot_until(
    cluster: &Cluster,
    n: usize,
    token: &str,
    wanted: &str,
) -> Result<RobotSocket> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut request = format!(
        "{}/api/v1/robot/ws",
        cluster.urls[n - 1].replacen("http", "ws", 1)
    )
    .into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", token.parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    socket
        .send(Message::text(
            json!({ "type": "ready", "ref": "ready" }).to_string(),
        ))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline.into(), socket.next())
            .await
            .with_context(|| format!("no frame with {wanted} within 10 s"))?
            .context("socket ended")??;
        if frame.to_text().is_ok_and(|t| t.contains(wanted)) {
            return Ok(socket);
        }
    }
}

/// How long until the node closes `socket`; an error if it stays open past `limit`.
async fn closed_within(socket: &mut RobotSocket, limit: Duration) -> Result<Duration> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let started = Instant::now();
    loop {
        match tokio::time::timeout(limit, socket.next()).await {
            Err(_) => bail!("the node kept the socket open {limit:?}"),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                return Ok(started.elapsed());
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Waits until node `n` shows a load of 0 for every robot of `ids`; returns how long it took.
async fn wait_loads_zero(
    cluster: &Cluster,
    n: usize,
    admin: &str,
    ids: &[i64],
    within: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let robots = cluster
            .json(n, Method::GET, "/api/v1/robots", admin, None)
            .await?;
        let loaded: Vec<&Value> = robots
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| ids.iter().any(|id| r["id"] == *id) && r["load"] != 0)
            .collect();
        if loaded.is_empty() {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < within,
            "n{n} still counts items after {within:?}: {loaded:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The loads node `n` shows for robots `ids` (the node's own plan for its sessions, the store's
/// count for the others).
async fn loads(cluster: &Cluster, n: usize, admin: &str, ids: &[i64]) -> Result<Vec<i64>> {
    let robots = cluster
        .json(n, Method::GET, "/api/v1/robots", admin, None)
        .await?;
    ids.iter()
        .map(|id| {
            robots
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["id"] == *id)
                .and_then(|r| r["load"].as_i64())
                .with_context(|| format!("robot {id} in {robots}"))
        })
        .collect()
}

/// Waits until `check` holds for what node `n` shows of robots `ids`.
async fn wait_loads(
    cluster: &Cluster,
    n: usize,
    admin: &str,
    ids: &[i64],
    want: &[i64],
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = loads(cluster, n, admin, ids).await?;
        if now == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "n{n} shows loads {now:?} for robots {ids:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects the robot with `token` to node `n` over WebSocket and says it is ready; the socket
/// is read in the background (its pings answered) until the returned task is aborted. Returns
/// once the node acknowledged `ready`.
async fn ws_robot_ready(
    cluster: &Cluster,
    n: usize,
    token: &str,
) -> Result<tokio::task::JoinHandle<()>> {
    use futures_util::StreamExt;
    let mut socket = ws_robot_until(cluster, n, token, "\"ack\"")
        .await
        .context("ready not acknowledged")?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(_)) = socket.next().await {}
    }))
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = cluster.cluster_view(1, &admin).await?;
        if node_in(&view, "n2")["free_slots"] == 5 && node_in(&view, "n1")["free_slots"] == 2 {
            break;
        }
        ensure!(Instant::now() < deadline, "no summaries: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
async fn a_killed_nodes_robots_move_or_are_released_and_the_work_completes() -> Result<()> {
    let _turn = TURN.lock().await;
    let mut cluster = Cluster::start(3).await?;
    let admin = cluster.login(1).await?;
    // The victim is the node holding housekeeping, so that role has to move as well.
    let view = cluster.cluster_view(1, &admin).await?;
    let victim: usize = view["housekeeping"]
        .as_str()
        .and_then(|h| h.trim_start_matches('n').parse().ok())
        .context("housekeeping holder")?;
    let survivor = if victim == 1 { 2 } else { 1 };
    // A robot that leases on the victim and never comes back.
    let lonely = cluster.work(&admin, "lonely", 1, 10).await?;
    cluster.activate(victim, &lonely.tokens[0]).await?;
    let held = cluster.claim(victim, &lonely.tokens[0], 5).await?;
    assert_eq!(held.len(), 5);
    // It pulses on the victim until the kill, then never reaches another node.
    let pulses = {
        let (http, url, token) = (
            cluster.http.clone(),
            cluster.urls[victim - 1].clone(),
            lonely.tokens[0].clone(),
        );
        tokio::spawn(async move {
            loop {
                let _ = http
                    .post(format!("{url}/api/v1/robot/pulse"))
                    .header("authorization", &token)
                    .json(&json!({}))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    // A fleet of WebSocket robots spread over the three nodes.
    let bases = cluster.urls.join(",");
    let sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_robot-sim"))
        .args(["--base-url", &bases, "--admin-password", ADMIN_PASSWORD])
        .args(["--api", "ws", "--robots", "6", "--capacity", "3"])
        .args([
            "--items",
            "3000",
            "--duration",
            "120s",
            "--pulse-every",
            "500ms",
        ])
        .output();
    let sim = tokio::spawn(sim);
    // Kill the victim once about 30 % of the fleet's items are done.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stats = cluster
            .json(survivor, Method::GET, "/api/v1/stats", &admin, None)
            .await?;
        if stats["items"]["completed"].as_i64().unwrap_or(0) >= 900 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the fleet did not get going: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.node(victim)?.signal("KILL")?;
    let killed = Instant::now();
    pulses.abort();
    let before = cluster.task(survivor, &admin, lonely.task).await?;
    assert_eq!(
        count(&before, "assigned"),
        5,
        "still held at the kill: {before}"
    );
    cluster.nodes[victim - 1] = None;
    // Takeover: another node declares the victim dead and holds housekeeping.
    let (mut dead_at, mut takeover_at, mut released_at) = (None, None, None);
    while released_at.is_none() || dead_at.is_none() || takeover_at.is_none() {
        ensure!(
            killed.elapsed() < Duration::from_secs(30),
            "no takeover after 30 s: dead {dead_at:?}, housekeeping {takeover_at:?}, \
             released {released_at:?}\n{}",
            cluster.log(survivor)
        );
        let view = cluster.cluster_view(survivor, &admin).await?;
        let victim_id = format!("n{victim}");
        if dead_at.is_none() && node_in(&view, &victim_id)["alive"] == false {
            dead_at = Some(killed.elapsed());
        }
        if takeover_at.is_none()
            && view["housekeeping"]
                .as_str()
                .is_some_and(|h| h != victim_id)
        {
            takeover_at = Some(killed.elapsed());
        }
        if released_at.is_none()
            && count(
                &cluster.task(survivor, &admin, lonely.task).await?,
                "pending",
            ) == 10
        {
            released_at = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (dead_at, takeover_at, released_at) = (
        dead_at.unwrap_or_default(),
        takeover_at.unwrap_or_default(),
        released_at.unwrap_or_default(),
    );
    eprintln!(
        "node loss: declared dead after {dead_at:?}, housekeeping moved after {takeover_at:?}, \
         the lost robot's items released after {released_at:?} (pulse timeout \
         {PULSE_TIMEOUT:?}, sweep {SWEEP:?}, dead after {DEAD_AFTER:?})"
    );
    // Released within the pulse timeout plus two sweeps (its last pulse was under a second
    // before the kill), with a second of slack for a loaded 2-core host; not before the pulse
    // timeout, since the robot might still have come back on another node.
    assert!(
        released_at <= PULSE_TIMEOUT + 2 * SWEEP + Duration::from_secs(1),
        "released after {released_at:?}"
    );
    assert!(
        released_at >= PULSE_TIMEOUT - Duration::from_secs(1),
        "released after {released_at:?}, before the pulse timeout"
    );
    let output = sim.await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "robot-sim failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    eprintln!(
        "fleet: {report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The store holds every item of the fleet's task completed once (the lonely robot's task
    // never completes), and robot-sim had each acknowledged: a report the killed node wrote
    // but never acknowledged was sent again on the robot's new node, and answered there.
    let stats = cluster
        .json(survivor, Method::GET, "/api/v1/stats", &admin, None)
        .await?;
    assert_eq!(stats["items"]["completed"], 3000, "{stats}");
    assert_eq!(report["items_completed"], 3000, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert!(report["node_moves"].as_u64().unwrap_or(0) > 0, "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_declared_dead_fences_itself_and_rejoins() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(3).await?;
    let admin = cluster.login(1).await?;
    cluster.node(3)?.signal("STOP")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let view = cluster.cluster_view(1, &admin).await?;
        let n3 = node_in(&view, "n3");
        if n3["alive"] == false {
            break;
        }
        ensure!(Instant::now() < deadline, "n3 never declared dead: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(DEAD_AFTER).await;
    cluster.node(3)?.signal("CONT")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let view = cluster.cluster_view(1, &admin).await?;
        let n3 = node_in(&view, "n3");
        if n3["alive"] == true && n3["incarnation"] == 2 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "n3 did not rejoin: {view}\n{}",
            cluster.log(3)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster.log(3).contains("declared dead by the cluster"),
        "n3 says it fenced itself:\n{}",
        cluster.log(3)
    );
    cluster.wait_healthy(3).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_a_cookie_hint_each_other_before_their_store_poll() -> Result<()> {
    let _turn = TURN.lock().await;
    // Sweeps, and the event poll with them, every 5 s: what a node does within a second of a
    // change made on another node, it did because a hint told it.
    let ports = vec![free_port()?, free_port()?];
    let timers = Timers {
        sweep: Duration::from_secs(5),
        dead_after: Duration::from_secs(15),
        hint_ports: Some(ports.clone()),
        recount: Some(Duration::from_secs(3_600)),
    };
    let cluster = Cluster::start_with(2, timers).await?;
    let admin = cluster.login(1).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (v1, v2) = (
            cluster.cluster_view(1, &admin).await?,
            cluster.cluster_view(2, &admin).await?,
        );
        if v1["hints"]["peers"] == json!(["n2"]) && v2["hints"]["peers"] == json!(["n1"]) {
            assert_eq!(v1["hints"]["enabled"], true, "{v1}");
            assert_eq!(
                node_in(&v1, "n2")["cluster"],
                format!("127.0.0.1:{}", ports[1]),
                "{v1}"
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "nodes never connected: {v1} {v2}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let work = cluster.work(&admin, "hints", 2, 40).await?;
    // Robot 0 polls node 2 over REST, robot 1 holds a WebSocket there.
    cluster.activate(2, &work.tokens[0]).await?;
    let claimed = cluster.claim(2, &work.tokens[0], 5).await?;
    ensure!(claimed.len() == 5, "claimed {claimed:?}");
    let mut socket = ws_robot_working(&cluster, 2, &work.tokens[1]).await?;
    // Cancel on node 1: node 2 stops counting the released items at once.
    cluster
        .json(
            1,
            Method::POST,
            &format!("/api/v1/tasks/{}/cancel", work.task),
            &admin,
            None,
        )
        .await?;
    let took = wait_loads_zero(&cluster, 2, &admin, &work.ids, Duration::from_secs(1)).await?;
    eprintln!("cancel on node 1: node 2's robots at load 0 after {took:?}");
    // Rotate robot 1's token on node 1: node 2 closes its socket at once.
    cluster
        .json(
            1,
            Method::POST,
            &format!("/api/v1/robots/{}/token", work.ids[1]),
            &admin,
            None,
        )
        .await?;
    let closed_after = closed_within(&mut socket, Duration::from_secs(10)).await?;
    eprintln!("token rotated on node 1: node 2 closed the socket after {closed_after:?}");
    assert!(
        closed_after < Duration::from_secs(1),
        "closed after {closed_after:?}"
    );
    let v2 = cluster.cluster_view(2, &admin).await?;
    assert!(v2["hints"]["received"].as_u64() >= Some(3), "{v2}");
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

/// Runs `robot-sim` over every node in the background; the report comes from the handle.
fn fleet(
    cluster: &Cluster,
    api: &str,
    robots: usize,
    items: usize,
) -> tokio::task::JoinHandle<Result<Value>> {
    let args = support::fleet_args(
        &cluster.urls.join(","),
        ADMIN_PASSWORD,
        api,
        robots,
        items,
        "150s",
    );
    let run = support::robot_sim(args);
    tokio::spawn(async move { Ok(run.await?.0) })
}

/// Waits until the cluster's items completed reach `at_least` (stats through node `n`).
async fn wait_completed(cluster: &Cluster, n: usize, admin: &str, at_least: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stats = cluster
            .json(n, Method::GET, "/api/v1/stats", admin, None)
            .await?;
        if stats["items"]["completed"].as_i64().unwrap_or(0) >= at_least {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the fleet did not get going: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_server_restarting_under_load_loses_nothing() -> Result<()> {
    let _turn = TURN.lock().await;
    let mut cluster = Cluster::start(3).await?;
    let admin = cluster.login(1).await?;
    let ws = fleet(&cluster, "ws", 6, 2_000);
    wait_completed(&cluster, 1, &admin, 500).await?;
    // A clean stop of the server, two seconds away, and the same server back on its data.
    cluster
        .surreal
        .as_ref()
        .context("surreal")?
        .signal("TERM")?;
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = cluster.call(2, Method::GET, "/healthz", "", None).await?;
    assert_eq!(status, 503, "healthz while the store is away: {body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    if let Some(mut old) = cluster.surreal.take() {
        let _ = old.child.wait();
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.start_surreal().await?;
    for n in 1..=3 {
        cluster.wait_healthy(n).await?;
    }
    eprintln!(
        "store away and back: every node healthy {:?} after the stop",
        stopped.elapsed()
    );
    let report = ws.await??;
    eprintln!("fleet: {report}");
    assert_all_completed_once(&cluster, &admin, 2_000, &report, 0).await?;
    // No node was declared dead for the outage they all shared.
    let view = cluster.cluster_view(1, &admin).await?;
    for node in view["nodes"].as_array().into_iter().flatten() {
        assert_eq!(node["incarnation"], 1, "{view}");
        assert_eq!(node["alive"], true, "{view}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_loses_nothing() -> Result<()> {
    let _turn = TURN.lock().await;
    let mut cluster = Cluster::start(3).await?;
    let admin = cluster.login(1).await?;
    let ws = fleet(&cluster, "ws", 6, 6_000);
    wait_completed(&cluster, 1, &admin, 300).await?;
    let mut longest_pause = Duration::ZERO;
    for n in 1..=3 {
        // A clean stop (SIGTERM: WebSocket robots are told to reconnect), then the same node id.
        let before = completed_now(&cluster, n % 3 + 1, &admin).await?;
        let stopping = Instant::now();
        cluster.node(n)?.signal("TERM")?;
        if let Some(mut old) = cluster.nodes[n - 1].take() {
            let _ = old.child.wait();
        }
        cluster.nodes[n - 1] = Some(cluster.spawn_node(n)?);
        cluster.wait_healthy(n).await?;
        // The fleet keeps finishing items: measure how long until it moved again.
        let other = n % 3 + 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while completed_now(&cluster, other, &admin).await? <= before {
            ensure!(
                Instant::now() < deadline,
                "the fleet stopped after n{n} restarted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        longest_pause = longest_pause.max(stopping.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = ws.await??;
    eprintln!(
        "rolling restart: longest stop to next completion {longest_pause:?}; fleet: {report}"
    );
    // Seen once before the fix in the robot session (standby found in the store at connect is
    // never handed back, since an earlier connection may have shown it): a robot cut off in
    // the middle of an `items` frame kept an item the node it moved to later handed back, so
    // another robot ran it too (the store refused the first robot's completion: stale lease).
    // Not seen in the runs since; up to two are still allowed until more runs show it gone.
    assert_all_completed_once(&cluster, &admin, 6_000, &report, 2).await?;
    assert!(report["node_moves"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(longest_pause < Duration::from_secs(10), "{longest_pause:?}");
    let view = cluster.cluster_view(1, &admin).await?;
    for node in view["nodes"].as_array().into_iter().flatten() {
        assert_eq!(node["incarnation"], 2, "each node restarted once: {view}");
    }
    Ok(())
}

async fn completed_now(cluster: &Cluster, n: usize, admin: &str) -> Result<i64> {
    Ok(cluster
        .json(n, Method::GET, "/api/v1/stats", admin, None)
        .await?["items"]["completed"]
        .as_i64()
        .unwrap_or(0))
}

/// Every item of the fleet's task is COMPLETED in the store and no robot was handed an item
/// another held or had finished. A robot may miss the answer to a completion: the node wrote it
/// as it stopped, or the write failed while the store was away (the robot is told with an
/// `error` frame, and `robot-sim` does not send it again; the item comes back when its lease
/// expires). The store, not the robot's count, says what was done.
async fn assert_all_completed_once(
    cluster: &Cluster,
    admin: &str,
    items: i64,
    report: &Value,
    known_duplicates: u64,
) -> Result<()> {
    let stats = cluster
        .json(1, Method::GET, "/api/v1/stats", admin, None)
        .await?;
    assert_eq!(stats["items"]["completed"], items, "{stats}");
    for status in ["pending", "assigned", "started", "failed", "abandoned"] {
        assert_eq!(stats["items"][status], 0, "{status}: {stats}");
    }
    assert!(
        report["duplicates"].as_u64().unwrap_or(u64::MAX) <= known_duplicates,
        "{report}"
    );
    let acknowledged = report["items_completed"].as_i64().unwrap_or(0);
    assert!(
        acknowledged >= items * 98 / 100 && acknowledged <= items,
        "{report}"
    );
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
