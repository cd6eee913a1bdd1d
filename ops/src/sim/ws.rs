//! A robot on the WebSocket channel.

use super::*;

/// Connection attempts per (re)connect before a robot gives up.
pub(super) const CONNECT_ATTEMPTS: u32 = 8;

/// Opens a robot's WebSocket the way a production robot does: a connection refused or reset
/// (thousands of robots connecting at once) is tried again after a growing, jittered pause. An
/// HTTP refusal (a bad token) is not.
pub(super) async fn connect_ws(
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
pub(super) async fn ws_robot(
    node: &Node,
    args: &SimArgs,
    fleet: &Arc<Fleet>,
    index: usize,
    robot: RobotCred,
    ready: mpsc::Sender<()>,
) -> Result<()> {
    let mut me = WsRobot {
        node,
        args,
        fleet,
        index,
        robot,
        ready: Some(ready),
        held: HashSet::new(),
        reports: HashMap::new(),
        finished: HashSet::new(),
        refused_in_a_row: 0,
    };
    loop {
        let Some(socket) = me.connect().await? else {
            continue;
        };
        fleet.connected.fetch_add(1, Ordering::Relaxed);
        let ended = me.session(socket).await;
        fleet.connected.fetch_sub(1, Ordering::Relaxed);
        if fleet.stopped() {
            return Ok(());
        }
        me.after(ended?).await?;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket robot's memory across its connections.
struct WsRobot<'a> {
    node: &'a Node,
    args: &'a SimArgs,
    fleet: &'a Arc<Fleet>,
    index: usize,
    robot: RobotCred,
    /// Told once, when the node first acknowledges `ready`.
    ready: Option<mpsc::Sender<()>>,
    /// Items pushed and not finished; kept when the robot moves to another node, which pushes
    /// the robot's leases again.
    held: HashSet<i64>,
    /// Frames about items (started, completed, failed) sent and not acknowledged yet, by ref:
    /// the frame and how often it was sent again. Each is idempotent on the node, and they
    /// outlive a connection: a node may die after writing a report and before acknowledging it.
    reports: HashMap<String, (String, u32)>,
    /// Items whose completion was acknowledged: a node may push one again when it read the
    /// robot's leases before a completion sent again after a move had landed.
    finished: HashSet<i64>,
    /// Refusals since the node last acknowledged `ready`: they lengthen the pause.
    refused_in_a_row: u32,
}

/// One connection's writer and what the robot measures on it.
struct Link {
    out: mpsc::UnboundedSender<Message>,
    /// When the robot finished items, for the next-item latency.
    freed: VecDeque<Instant>,
}

impl Link {
    /// Queues a frame; fails only once the connection is gone (the read side then ends too).
    fn send(&self, text: String) -> Result<(), mpsc::error::SendError<Message>> {
        self.out.send(Message::text(text))
    }
}

impl WsRobot<'_> {
    /// Opens a connection (`None`: refused or failed over, try again).
    async fn connect(&mut self) -> Result<Option<Socket>> {
        let url = format!("{}/api/v1/robot/ws", self.node.base()).replacen("http", "ws", 1);
        let connecting = connect_ws(&url, &self.robot);
        let connected = match self.node.silence {
            Some(silence) => tokio::time::timeout(silence, connecting)
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!("{url} did not answer within {silence:?}"))
                }),
            None => connecting.await,
        };
        match connected {
            Ok(socket) => Ok(Some(socket)),
            Err(err) if refused_for_now(&err) => {
                come_back_later(self.fleet, &mut self.refused_in_a_row).await;
                self.node.fail_over();
                Ok(None)
            }
            Err(_) if self.node.fail_over() => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Serves one connection until it ends.
    async fn session(&mut self, socket: Socket) -> Result<Ended> {
        let (mut sink, mut stream) = socket.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let mut link = Link {
            out,
            freed: VecDeque::new(),
        };
        // A send fails only once the connection is gone; the read side then ends as well.
        let _ = link.send(json!({ "type": "ready", "ref": "ready" }).to_string());
        self.resume(&link);
        let mut pulse = tokio::time::interval(self.args.pulse_every);
        pulse.tick().await;
        // Far away without --node-silence.
        let silence = self
            .node
            .silence
            .unwrap_or(Duration::from_secs(365 * 24 * 3600));
        let mut heard = tokio::time::Instant::now();
        let ended = loop {
            let message = tokio::select! {
                message = stream.next() => message,
                _ = pulse.tick() => {
                    let _ = link.send(json!({ "type": "pulse" }).to_string());
                    continue;
                }
                () = tokio::time::sleep_until(heard + silence) => {
                    break Ended::Lost(format!("the node was silent for {silence:?}"));
                }
            };
            heard = tokio::time::Instant::now();
            let text = match read(message) {
                Ok(Some(text)) => text,
                Ok(None) => continue,
                Err(ended) => break ended,
            };
            let frame: Value = match serde_json::from_str(&text) {
                Ok(frame) => frame,
                Err(err) => {
                    writer.abort();
                    return Err(err.into());
                }
            };
            if let Some(ended) = self.on_frame(&frame, &mut link).await {
                break ended;
            }
        };
        drop(link);
        writer.abort();
        Ok(ended)
    }

    /// Reports the node that went away never acknowledged are sent again here. A report that
    /// landed there is answered as the first time; one that did not lands now. A `started` is
    /// dropped when the item's outcome is pending too (it may have landed), or was acknowledged
    /// (its own ack was lost).
    fn resume(&mut self, link: &Link) {
        let outcomes: HashSet<String> = self
            .reports
            .keys()
            .filter(|r| r.starts_with('c') || r.starts_with('f'))
            .map(|r| r[1..].to_string())
            .collect();
        let finished = &self.finished;
        self.reports.retain(|r, _| {
            !(r.starts_with('s')
                && (outcomes.contains(&r[1..])
                    || r[1..].parse().is_ok_and(|id: i64| finished.contains(&id))))
        });
        for (text, _) in self.reports.values() {
            let _ = link.send(text.clone());
        }
        // What it holds now is what the node pushes on this connection (its leases resume);
        // items the node took back meanwhile (released while the robot was away) are gone.
        self.held.clear();
    }

    /// Handles one frame from the node; `Some` when the connection is to end.
    async fn on_frame(&mut self, frame: &Value, link: &mut Link) -> Option<Ended> {
        match frame["type"].as_str() {
            Some("ack") if frame["ref"] == "ready" => {
                self.refused_in_a_row = 0;
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(()).await;
                }
            }
            Some("ack") => {
                let reference = frame["ref"].as_str().unwrap_or_default();
                self.reports.remove(reference);
                if let Some(id) = reference.strip_prefix('c').and_then(|r| r.parse().ok()) {
                    self.finished.insert(id);
                    self.fleet.completed(self.index, id);
                }
            }
            Some("error") => self.on_error(frame, link).await,
            Some("revoke") => {
                for id in frame["item_ids"].as_array().into_iter().flatten() {
                    let id = id.as_i64().unwrap_or_default();
                    self.held.remove(&id);
                    self.fleet.dropped(self.index, id);
                }
            }
            Some("items") => return self.on_items(frame, link).await,
            _ => self
                .fleet
                .error(format!("robot {}: unexpected frame {frame}", self.robot.id)),
        }
        None
    }

    /// An `error` frame about a report.
    async fn on_error(&mut self, frame: &Value, link: &Link) {
        let reference = frame["ref"].as_str().unwrap_or_default().to_string();
        let code = frame["code"].as_str().unwrap_or_default();
        // A `started` sent again after the item's outcome was reported: the outcome landed
        // first, so the node calls the start illegal now, or a start is not sent again once
        // the item's outcome went out after it. Nothing is wrong.
        let outcome_out = outcome_reported(&reference, &self.finished, &self.reports);
        if code == "illegal_transition" && outcome_out {
            self.reports.remove(&reference);
            return;
        }
        // The node could not write a report (its store was away for a moment): send it again,
        // as a production robot does.
        let retryable = ["store_unavailable", "unavailable"].contains(&code)
            && self
                .reports
                .get(&reference)
                .is_some_and(|(_, tries)| *tries < REPORT_TRIES);
        if retryable {
            if outcome_out {
                self.reports.remove(&reference);
            } else if let Some((text, tries)) = self.reports.get_mut(&reference) {
                *tries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = link.send(text.clone());
            }
            return;
        }
        self.reports.remove(&reference);
        self.fleet
            .error(format!("robot {}: {frame}", self.robot.id));
    }

    /// Items pushed: each is started and finished (or the robot crashes on it).
    async fn on_items(&mut self, frame: &Value, link: &mut Link) -> Option<Ended> {
        let now = Instant::now();
        // An item whose outcome was reported and not acknowledged yet (sent again above), or
        // whose completion was acknowledged, is not worked twice.
        let items: Vec<Value> = frame["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|item| {
                let id = item["id"].as_i64().unwrap_or_default();
                !self.finished.contains(&id)
                    && !self.reports.contains_key(&format!("c{id}"))
                    && !self.reports.contains_key(&format!("f{id}"))
            })
            .collect();
        for item in &items {
            let id = item["id"].as_i64().unwrap_or_default();
            if self.held.insert(id) {
                let task = item["task_id"].as_i64().unwrap_or_default();
                self.fleet.delivered(self.index, id, task);
                self.fleet.next_item(link.freed.pop_front(), now);
            }
        }
        // The node pushes at most the robot's capacity; standby stays on its side.
        if self.held.len() > self.args.capacity {
            self.fleet.error(format!(
                "robot {} was pushed {} items at once, above its capacity {}",
                self.robot.id,
                self.held.len(),
                self.args.capacity
            ));
        }
        for item in items {
            if let Some(ended) = self.work(&item, link).await {
                return Some(ended);
            }
        }
        None
    }

    /// Starts and finishes one item; `Some` when the connection went away or the robot
    /// crashed.
    async fn work(&mut self, item: &Value, link: &mut Link) -> Option<Ended> {
        let id = item["id"].as_i64().unwrap_or_default();
        let lease = item["lease_id"].clone();
        let reports = &mut self.reports;
        let mut send = |kind: &str, extra: Value| {
            let mut frame = extra;
            frame["type"] = json!(kind);
            frame["item_id"] = json!(id);
            frame["lease_id"] = lease.clone();
            let text = frame.to_string();
            let reference = frame["ref"].as_str().unwrap_or_default();
            reports.insert(reference.to_string(), (text.clone(), 0));
            link.send(text)
        };
        let cut_off = || Some(Ended::Lost("the connection closed while sending".into()));
        if item["status"] != "STARTED"
            && send("started", json!({ "ref": format!("s{id}") })).is_err()
        {
            return cut_off();
        }
        if !self.args.work_time.is_zero() {
            tokio::time::sleep(self.args.work_time).await;
        }
        self.fleet.pace(self.args.rate).await;
        let (kind, body) = match outcome(self.args) {
            Outcome::Complete => (
                "completed",
                json!({ "ref": format!("c{id}"), "observation": "done",
                        "output": { "robot": self.robot.id } }),
            ),
            failure => {
                self.fleet.failures.fetch_add(1, Ordering::Relaxed);
                self.fleet.dropped(self.index, id);
                let kind = if failure == Outcome::Business {
                    "business"
                } else {
                    "application"
                };
                (
                    "failed",
                    json!({ "ref": format!("f{id}"), "kind": kind,
                            "message": format!("simulated {kind} error") }),
                )
            }
        };
        if send(kind, body).is_err() {
            // The connection went away: the item stays held, and the node the robot moves to
            // pushes it again.
            return cut_off();
        }
        self.held.remove(&id);
        link.freed.push_back(Instant::now());
        crashes(self.args).then_some(Ended::Crashed)
    }

    /// What the robot does once a connection ended: comes back, to another node if it can.
    async fn after(&mut self, ended: Ended) -> Result<()> {
        match ended {
            Ended::Crashed => {
                self.fleet.crashes.fetch_add(1, Ordering::Relaxed);
                for id in self.held.drain() {
                    self.fleet.dropped(self.index, id);
                }
                // A crashed robot remembers nothing it sent either.
                self.reports.clear();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ended::Refused => {
                come_back_later(self.fleet, &mut self.refused_in_a_row).await;
                self.node.fail_over();
            }
            // The node ended the session (it judged the robot silent, it was fenced, it is
            // stopping): connect again, to the next node if there is one, after a short
            // jittered pause so a crowd ended at once does not come back at once. A robot
            // that may no longer connect (token rotated, deleted) is refused at the upgrade.
            Ended::Closed => {
                self.fleet.reconnects.fetch_add(1, Ordering::Relaxed);
                self.node.fail_over();
                tokio::time::sleep(Duration::from_millis(rand::random_range(100..=600))).await;
            }
            // Its node failed: reconnect to the next one, which resumes its leases.
            Ended::Lost(_) if self.node.fail_over() => {}
            Ended::Lost(why) => bail!("{why}"),
        }
        Ok(())
    }
}

/// A message from the node as text: `Ok(None)` for frames the robot ignores (pings), `Err`
/// when the connection ended.
fn read(
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<String>, Ended> {
    let message = match message {
        Some(Ok(message)) => message,
        Some(Err(err)) => return Err(Ended::Lost(format!("the connection failed: {err}"))),
        None => return Err(Ended::Lost("the node closed the connection".into())),
    };
    match message {
        Message::Text(text) => Ok(Some(text.to_string())),
        Message::Close(Some(frame))
            if matches!(frame.code, CloseCode::Error | CloseCode::Again) =>
        {
            Err(Ended::Refused)
        }
        Message::Close(Some(frame))
            if matches!(
                frame.code,
                CloseCode::Normal | CloseCode::Away | CloseCode::Restart
            ) =>
        {
            Err(Ended::Closed)
        }
        Message::Close(frame) => Err(Ended::Lost(format!(
            "the node closed the connection: {frame:?}"
        ))),
        _ => Ok(None),
    }
}

/// Whether `reference` is a `started` (`s<id>`) whose item's outcome was reported since: its
/// completion acknowledged, or a completion or failure on its way.
pub(super) fn outcome_reported(
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
