//! What every cluster test uses: a `surreal` server and node processes on loopback, calls to
//! their APIs, WebSocket robots and `robot-sim` fleets.

pub(crate) use anyhow::{Context, Result, bail, ensure};
pub(crate) use orchestrator_actors::dispatch_config::DispatchConfig;
pub(crate) use orchestrator_actors::dispatcher::Dispatcher;
pub(crate) use orchestrator_actors::domain::Clock;
pub(crate) use orchestrator_actors::domain::Platform;
pub(crate) use orchestrator_actors::store::{Lane, NewRobot};
pub(crate) use orchestrator_actors::{Store, StoreConfig};
pub(crate) use orchestrator_test_kit::{Proc, free_port, until};
pub(crate) use reqwest::{Client, Method};
pub(crate) use serde_json::{Value, json};
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::process::{Command, Stdio};
pub(crate) use std::time::{Duration, Instant};

pub(crate) const ADMIN_PASSWORD: &str = "cluster-test-password";
pub(crate) const JWT_SECRET: &str = "cluster-test-secret-shared-by-every-node";
pub(crate) const PULSE_TIMEOUT: Duration = Duration::from_secs(3);
pub(crate) const SWEEP: Duration = Duration::from_millis(200);
pub(crate) const DEAD_AFTER: Duration = Duration::from_secs(1);

/// One cluster test at a time.
pub(crate) static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) fn node_binary() -> Result<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_surreal")).with_file_name("orchestrator");
    ensure!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds the node)",
        path.display()
    );
    Ok(path)
}

/// Timers of the nodes, and whether they exchange hints.
#[derive(Clone)]
pub(crate) struct Timers {
    pub(crate) sweep: Duration,
    pub(crate) dead_after: Duration,
    /// Cluster listener ports (one per node) when the nodes exchange hints.
    pub(crate) hint_ports: Option<Vec<u16>>,
    /// How often loads are recounted from the store (None: the node's default). Tests that
    /// assert loads set it out of reach, so the backstop cannot hide a missed update.
    pub(crate) recount: Option<Duration>,
}

impl Timers {
    pub(crate) fn fast() -> Timers {
        Timers {
            sweep: SWEEP,
            dead_after: DEAD_AFTER,
            hint_ports: None,
            recount: None,
        }
    }
}

/// The SurrealDB server and the nodes on it.
pub(crate) struct Cluster {
    pub(crate) timers: Timers,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) db: String,
    pub(crate) surreal_port: u16,
    pub(crate) surreal: Option<Proc>,
    pub(crate) nodes: Vec<Option<Proc>>,
    pub(crate) urls: Vec<String>,
    pub(crate) http: Client,
}

impl Cluster {
    /// Starts the server, then `count` nodes at the same moment.
    pub(crate) async fn start(count: usize) -> Result<Cluster> {
        Cluster::start_with(count, Timers::fast()).await
    }

    pub(crate) async fn start_with(count: usize, timers: Timers) -> Result<Cluster> {
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
    pub(crate) async fn start_surreal(&mut self) -> Result<()> {
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
        until(Duration::from_secs(60), "surreal started", || async {
            let up = self
                .http
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            Ok(if up { Ok(()) } else { Err("no answer".into()) })
        })
        .await
    }

    pub(crate) fn spawn_node(&self, n: usize) -> Result<Proc> {
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

    pub(crate) async fn wait_healthy(&self, n: usize) -> Result<()> {
        until(
            Duration::from_secs(60),
            &format!("n{n} healthy"),
            || async {
                let ok = self
                    .http
                    .get(format!("{}/healthz", self.urls[n - 1]))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                Ok(if ok { Ok(()) } else { Err(self.log(n)) })
            },
        )
        .await
    }

    pub(crate) fn log(&self, n: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("n{n}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub(crate) fn node(&self, n: usize) -> Result<&Proc> {
        self.nodes[n - 1].as_ref().context("node not running")
    }

    pub(crate) async fn login(&self, n: usize) -> Result<String> {
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

    pub(crate) async fn call(
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

    pub(crate) async fn json(
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
    pub(crate) async fn work(
        &self,
        admin: &str,
        title: &str,
        robots: usize,
        items: usize,
    ) -> Result<Work> {
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
    pub(crate) async fn upload(
        &self,
        n: usize,
        admin: &str,
        process: i64,
        items: usize,
    ) -> Result<i64> {
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

    pub(crate) async fn task(&self, n: usize, admin: &str, task: i64) -> Result<Value> {
        self.json(
            n,
            Method::GET,
            &format!("/api/v1/tasks/{task}"),
            admin,
            None,
        )
        .await
    }

    pub(crate) async fn cluster_view(&self, n: usize, admin: &str) -> Result<Value> {
        self.json(n, Method::GET, "/api/v1/cluster", admin, None)
            .await
    }

    /// Makes the robot with `token` ACTIVE through node `n` (robots start INACTIVE).
    pub(crate) async fn activate(&self, n: usize, token: &str) -> Result<()> {
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
    pub(crate) async fn claim(&self, n: usize, token: &str, max: usize) -> Result<Vec<Value>> {
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

pub(crate) struct Work {
    /// `Token <token>` per robot.
    pub(crate) tokens: Vec<String>,
    pub(crate) ids: Vec<i64>,
    pub(crate) process: i64,
    pub(crate) task: i64,
}

pub(crate) fn humantime(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Node `id`'s row in a `GET /api/v1/cluster` answer (null when absent).
pub(crate) fn node_in(view: &Value, id: &str) -> Value {
    view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap_or_default()
}

pub(crate) fn count(task: &Value, status: &str) -> i64 {
    task["counts"][status].as_i64().unwrap_or(-1)
}

/// Connects the robot with `token` to node `n` over WebSocket, says it is ready, and returns
/// once it has been pushed items.
pub(crate) async fn ws_robot_working(
    cluster: &Cluster,
    n: usize,
    token: &str,
) -> Result<RobotSocket> {
    ws_robot_until(cluster, n, token, "\"items\"")
        .await
        .context("no items pushed")
}

/// Connects the robot with `token` to node `n` over WebSocket, says it is ready, and reads
/// frames until one contains `wanted` (within 10 s).
pub(crate) async fn ws_robot_until(
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
pub(crate) async fn closed_within(socket: &mut RobotSocket, limit: Duration) -> Result<Duration> {
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
pub(crate) async fn wait_loads_zero(
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
pub(crate) async fn loads(
    cluster: &Cluster,
    n: usize,
    admin: &str,
    ids: &[i64],
) -> Result<Vec<i64>> {
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
pub(crate) async fn wait_loads(
    cluster: &Cluster,
    n: usize,
    admin: &str,
    ids: &[i64],
    want: &[i64],
) -> Result<()> {
    let what = format!("n{n} shows loads {want:?} for robots {ids:?}");
    until(Duration::from_secs(10), &what, || async {
        let now = loads(cluster, n, admin, ids).await?;
        Ok(if now == want {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        })
    })
    .await
}

/// Connects the robot with `token` to node `n` over WebSocket and says it is ready; the socket
/// is read in the background (its pings answered) until the returned task is aborted. Returns
/// once the node acknowledged `ready`.
pub(crate) async fn ws_robot_ready(
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

/// Runs `robot-sim` over every node in the background; the report comes from the handle.
pub(crate) fn fleet(
    cluster: &Cluster,
    api: &str,
    robots: usize,
    items: usize,
) -> tokio::task::JoinHandle<Result<Value>> {
    let args = crate::support::fleet_args(
        &cluster.urls.join(","),
        ADMIN_PASSWORD,
        api,
        robots,
        items,
        "150s",
    );
    let run = crate::support::robot_sim(args);
    tokio::spawn(async move { Ok(run.await?.0) })
}

/// Waits until the cluster's items completed reach `at_least` (stats through node `n`).
pub(crate) async fn wait_completed(
    cluster: &Cluster,
    n: usize,
    admin: &str,
    at_least: i64,
) -> Result<()> {
    until(Duration::from_secs(90), "the fleet got going", || async {
        let stats = cluster
            .json(n, Method::GET, "/api/v1/stats", admin, None)
            .await?;
        let going = stats["items"]["completed"].as_i64().unwrap_or(0) >= at_least;
        Ok(if going {
            Ok(())
        } else {
            Err(stats.to_string())
        })
    })
    .await
}

/// A WebSocket to a node's robot channel.
pub(crate) type RobotSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
