//! Test harness: starts real nodes in-process (on `mem://` or a `surrealkv://` temp dir) and
//! drives them over HTTP like any client would.

use anyhow::{Context, Result, bail};
use orchestrator_node::{Node, NodeConfig};
pub use orchestrator_test_kit::{eventually, throughout, until};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The bootstrap admin's password in test nodes.
pub const ADMIN_PASSWORD: &str = "admin-password";

/// A node under test with an HTTP client and an admin login.
#[derive(Debug)]
pub struct TestNode {
    pub node: Node,
    pub base: String,
    pub http: Client,
    pub admin: String,
}

impl TestNode {
    /// A node on an in-memory store.
    pub async fn start() -> Result<TestNode> {
        TestNode::start_with(NodeConfig::for_tests()).await
    }

    /// A node with a custom configuration (the admin password must stay [`ADMIN_PASSWORD`]).
    pub async fn start_with(config: NodeConfig) -> Result<TestNode> {
        let node = Node::start(config).await.context("node start")?;
        let base = format!("http://{}", node.addr());
        let http = Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let mut test = TestNode {
            node,
            base,
            http,
            admin: String::new(),
        };
        test.admin = test.login("admin", ADMIN_PASSWORD).await?;
        Ok(test)
    }

    /// Absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with `Authorization: Bearer <token>`.
    pub fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    /// Signs in and returns the JWT.
    pub async fn login(&self, username: &str, password: &str) -> Result<String> {
        let resp = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await?;
        let body = expect(resp, StatusCode::OK).await?;
        Ok(body["token"].as_str().context("token")?.to_string())
    }

    /// Creates a user as admin and returns its login token.
    pub async fn user(&self, username: &str, role: &str) -> Result<String> {
        let resp = self
            .req(Method::POST, "/api/v1/users", &self.admin)
            .json(&json!({ "username": username, "password": "password-123", "role": role }))
            .send()
            .await?;
        expect(resp, StatusCode::CREATED).await?;
        self.login(username, "password-123").await
    }

    /// Creates a process as admin and returns its id.
    pub async fn process(&self, title: &str) -> Result<i64> {
        let resp = self
            .req(Method::POST, "/api/v1/processes", &self.admin)
            .json(&json!({ "title": title }))
            .send()
            .await?;
        let body = expect(resp, StatusCode::CREATED).await?;
        body["id"].as_i64().context("process id")
    }

    /// Creates a robot as admin; returns its id and token.
    pub async fn robot(&self, name: &str, body: Value) -> Result<(i64, String)> {
        let mut body = body;
        body["name"] = name.into();
        let resp = self
            .req(Method::POST, "/api/v1/robots", &self.admin)
            .json(&body)
            .send()
            .await?;
        let body = expect(resp, StatusCode::CREATED).await?;
        Ok((
            body["id"].as_i64().context("robot id")?,
            body["token"].as_str().context("robot token")?.to_string(),
        ))
    }

    /// Uploads `csv` as a raw `text/csv` body.
    pub async fn upload(
        &self,
        token: &str,
        process_id: i64,
        csv: impl Into<reqwest::Body>,
    ) -> Result<Response> {
        Ok(self
            .req(
                Method::POST,
                &format!("/api/v1/tasks?process_id={process_id}"),
                token,
            )
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await?)
    }

    /// Uploads a seed-format CSV of `rows` rows as admin, expecting 201; returns the task id.
    pub async fn upload_seed_rows(&self, process_id: i64, rows: usize) -> Result<i64> {
        let task = expect(
            self.upload(&self.admin, process_id, seed_csv(rows)).await?,
            StatusCode::CREATED,
        )
        .await?;
        task["id"].as_i64().context("task id")
    }

    /// GET as admin, expecting 200.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let resp = self.req(Method::GET, path, &self.admin).send().await?;
        expect(resp, StatusCode::OK).await
    }

    /// Everything an operator could observe of tasks and items, plus the raw row counts, to
    /// check that a refused request left the store as it was.
    pub async fn snapshot(&self) -> Result<Value> {
        let store = self.node.store();
        Ok(json!({
            "stats": self.get("/api/v1/stats").await?,
            "tasks": self.get("/api/v1/tasks?limit=1000").await?,
            "items": store.count_items().await?,
            "chunk_rows": store.count_rows("chunk").await?,
            "chunk_data_rows": store.count_rows("chunk_data").await?,
            "task_rows": store.count_rows("task").await?,
        }))
    }
}

/// Asserts the status and returns the JSON body (or `null` for an empty one).
pub async fn expect(resp: Response, status: StatusCode) -> Result<Value> {
    let got = resp.status();
    let text = resp.text().await?;
    if got != status {
        bail!("expected {status}, got {got}: {text}");
    }
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
}

/// Asserts an error response: status, `error.code`, and a message containing `fragment`.
pub async fn expect_error(
    resp: Response,
    status: StatusCode,
    code: &str,
    fragment: &str,
) -> Result<()> {
    let body = expect(resp, status).await?;
    let got_code = body["error"]["code"].as_str().unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    if got_code != code || !message.contains(fragment) {
        bail!("expected error {code} containing '{fragment}', got {body}");
    }
    Ok(())
}

/// A seed-format CSV (`linea,valor,field_name`) with `rows` rows.
pub fn seed_csv(rows: usize) -> String {
    let mut csv = String::from("linea,valor,field_name\n");
    for i in 1..=rows {
        csv.push_str(&format!("{i},{},hello\n", 3_000_000 + i));
    }
    csv
}

/// A robot speaking the REST API v1, for tests.
#[derive(Debug, Clone)]
pub struct RestRobot {
    pub id: i64,
    pub token: String,
    pub base: String,
    pub http: Client,
}

impl RestRobot {
    /// Creates a robot through the admin API and makes it ACTIVE with a pulse.
    pub async fn create(node: &TestNode, name: &str, body: Value) -> Result<RestRobot> {
        let (id, token) = node.robot(name, body).await?;
        let robot = RestRobot {
            id,
            token,
            base: node.base.clone(),
            http: node.http.clone(),
        };
        robot.pulse(Some("ACTIVE")).await?;
        Ok(robot)
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.http
            .post(format!("{}{}", self.base, path))
            .header("authorization", format!("Token {}", self.token))
    }

    /// `POST /api/v1/robot/pulse`.
    pub async fn pulse(&self, status: Option<&str>) -> Result<Value> {
        let body = match status {
            Some(s) => json!({ "status": s }),
            None => json!({}),
        };
        expect(
            self.post("/api/v1/robot/pulse").json(&body).send().await?,
            StatusCode::OK,
        )
        .await
    }

    /// `POST /api/v1/robot/items/claim?max=&wait=`.
    pub async fn claim(&self, max: usize, wait_secs: f64) -> Result<Vec<Value>> {
        let resp = self
            .post(&format!(
                "/api/v1/robot/items/claim?max={max}&wait={wait_secs}"
            ))
            .send()
            .await?;
        let body = expect(resp, StatusCode::OK).await?;
        Ok(body.as_array().cloned().unwrap_or_default())
    }

    /// `POST /api/v1/robot/items/{id}/{verb}` with the item's lease; returns the raw response.
    pub async fn act(&self, item: &Value, verb: &str, extra: Value) -> Result<Response> {
        let mut body = extra;
        body["lease_id"] = item["lease_id"].clone();
        Ok(self
            .post(&format!("/api/v1/robot/items/{}/{verb}", item["id"]))
            .json(&body)
            .send()
            .await?)
    }

    /// Starts and completes an item, expecting success.
    pub async fn finish(&self, item: &Value) -> Result<()> {
        expect(self.act(item, "start", json!({})).await?, StatusCode::OK).await?;
        let done = self
            .act(
                item,
                "complete",
                json!({ "observation": format!("done by {}", self.id) }),
            )
            .await?;
        expect(done, StatusCode::OK).await?;
        Ok(())
    }
}

/// Polls the task until its status is `status`.
pub async fn wait_for_task_status(node: &TestNode, task_id: i64, status: &str) -> Result<Value> {
    eventually(Duration::from_secs(60), || async {
        let task = node.get(&format!("/api/v1/tasks/{task_id}")).await?;
        Ok((task["status"] == status).then_some(task))
    })
    .await
}

impl RestRobot {
    /// Claims until exactly `n` items arrive in one claim (dispatch is asynchronous).
    pub async fn claim_exactly(&self, n: usize) -> Result<Vec<Value>> {
        eventually(Duration::from_secs(10), || async {
            let items = self.claim(n, 0.5).await?;
            Ok((items.len() == n).then_some(items))
        })
        .await
    }
}

/// Polls the task until `check` holds for it; returns it.
pub async fn task_when(
    node: &TestNode,
    task_id: i64,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    eventually(Duration::from_secs(10), || async {
        let task = node.get(&format!("/api/v1/tasks/{task_id}")).await?;
        Ok(check(&task).then_some(task))
    })
    .await
}

/// A robot as the prototype's README describes it.
#[derive(Debug, Clone)]
pub struct SeedRobot {
    pub id: i64,
    pub token: String,
    pub base: String,
    pub http: Client,
}

impl SeedRobot {
    pub async fn call(&self, method: Method, path: &str) -> Result<(StatusCode, String)> {
        let resp = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("Authorization", format!("Token {}", self.token))
            .send()
            .await?;
        Ok((resp.status(), resp.text().await?))
    }

    /// Polls `GET /api/tasks/` and works every item it holds; returns the ids it completed.
    pub async fn run(self, until_empty_polls: usize) -> Result<Vec<i64>> {
        let (status, _) = self
            .call(
                Method::PATCH,
                &format!("/api/robots/?robot_id={}&status=ACTIVE", self.id),
            )
            .await?;
        anyhow::ensure!(status == StatusCode::OK, "activate: {status}");
        let mut done = Vec::new();
        let mut empty = 0;
        while empty < until_empty_polls {
            let (status, body) = self
                .call(Method::GET, &format!("/api/tasks/?robot_id={}", self.id))
                .await?;
            anyhow::ensure!(status == StatusCode::OK, "get tasks: {status} {body}");
            let tasks: Vec<Value> = serde_json::from_str(&body)?;
            if tasks.is_empty() {
                empty += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            empty = 0;
            for task in tasks {
                for item in task["item_set"].as_array().cloned().unwrap_or_default() {
                    let id = item["id"].as_i64().unwrap_or_default();
                    for status in ["STARTED", "COMPLETED"] {
                        let (code, body) = self
                            .call(
                                Method::PATCH,
                                &format!(
                                    "/api/items?robot_id={}&item_id={id}&status={status}&observation=Sin%20observaciones",
                                    self.id
                                ),
                            )
                            .await?;
                        anyhow::ensure!(
                            code == StatusCode::OK && body.is_empty(),
                            "{status}: {code} {body}"
                        );
                    }
                    done.push(id);
                }
                let (code, _) = self
                    .call(
                        Method::PATCH,
                        &format!(
                            "/api/tasks?robot_id={}&task_id={}&status=COMPLETED",
                            self.id, task["id"]
                        ),
                    )
                    .await?;
                // The prototype's robots treat anything but 200 here as an error.
                anyhow::ensure!(code == StatusCode::OK, "task patch {code}");
            }
        }
        Ok(done)
    }
}

/// Creates a robot (UiPath, capacity 2) for the prototype's API.
pub async fn seed_robot(t: &TestNode, name: &str) -> Result<SeedRobot> {
    let (id, token) = t
        .robot(name, json!({ "platform": "UIPATH", "capacity": 2 }))
        .await?;
    Ok(SeedRobot {
        id,
        token,
        base: t.base.clone(),
        http: t.http.clone(),
    })
}

/// A robot on the WebSocket channel, for tests.
pub struct WsRobot {
    pub id: i64,
    pub token: String,
    sink: futures_util::stream::SplitSink<WsStream, WsMessage>,
    stream: futures_util::stream::SplitStream<WsStream>,
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub use tokio_tungstenite::tungstenite::Message as WsMessage;

impl std::fmt::Debug for WsRobot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsRobot").field("id", &self.id).finish()
    }
}

impl WsRobot {
    /// Creates a robot through the admin API and connects it.
    pub async fn create(node: &TestNode, name: &str, body: Value) -> Result<WsRobot> {
        let (id, token) = node.robot(name, body).await?;
        WsRobot::connect(node, id, &token).await
    }

    /// Opens `/api/v1/robot/ws` with an `Authorization: Token` header.
    pub async fn connect(node: &TestNode, id: i64, token: &str) -> Result<WsRobot> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = node.url("/api/v1/robot/ws").replacen("http", "ws", 1);
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Token {token}").parse()?);
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(WsRobot::from_socket(id, token, socket))
    }

    /// Wraps an open socket.
    pub fn from_socket(id: i64, token: &str, socket: WsStream) -> WsRobot {
        use futures_util::StreamExt;
        let (sink, stream) = socket.split();
        WsRobot {
            id,
            token: token.to_string(),
            sink,
            stream,
        }
    }

    /// Sends a JSON text frame.
    pub async fn send(&mut self, frame: Value) -> Result<()> {
        self.send_raw(WsMessage::text(frame.to_string())).await
    }

    /// Sends any frame.
    pub async fn send_raw(&mut self, message: WsMessage) -> Result<()> {
        use futures_util::SinkExt;
        self.sink.send(message).await?;
        Ok(())
    }

    /// The next JSON frame within `within` (control frames skipped); `None` on timeout.
    pub async fn next_within(&mut self, within: Duration) -> Result<Option<Value>> {
        use futures_util::StreamExt;
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("the server closed the WebSocket"),
                Ok(Some(message)) => message?,
            };
            match message {
                WsMessage::Text(text) => return Ok(Some(serde_json::from_str(text.as_str())?)),
                WsMessage::Close(frame) => bail!("the server closed the WebSocket: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next JSON frame, failing after 10 s.
    pub async fn next(&mut self) -> Result<Value> {
        self.next_within(Duration::from_secs(10))
            .await?
            .context("no frame within 10 s")
    }

    /// Reads `items` frames until `n` items arrived in total; fails on any other frame.
    pub async fn items(&mut self, n: usize) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        while items.len() < n {
            let frame = self.next().await?;
            if frame["type"] != "items" {
                bail!("expected an items frame, got {frame}");
            }
            items.extend(frame["items"].as_array().cloned().unwrap_or_default());
        }
        Ok(items)
    }

    /// Sends an action frame (`started`, `completed`, ...) for `item` with `ref` and `extra`
    /// fields.
    pub async fn act(
        &mut self,
        kind: &str,
        item: &Value,
        reference: &str,
        extra: Value,
    ) -> Result<()> {
        let mut frame = extra;
        if frame.is_null() {
            frame = json!({});
        }
        frame["type"] = json!(kind);
        frame["item_id"] = item["id"].clone();
        frame["lease_id"] = item["lease_id"].clone();
        frame["ref"] = json!(reference);
        self.send(frame).await
    }

    /// Closes the connection.
    pub async fn close(mut self) -> Result<()> {
        use futures_util::SinkExt;
        self.sink.close().await?;
        Ok(())
    }
}

/// A browser's sign-in, made through the login form: the session cookie and the page's
/// anti-forgery token.
#[derive(Debug, Clone)]
pub struct BrowserSession {
    /// `orch_session=<jwt>`, ready for a `Cookie` header.
    pub cookie: String,
    pub csrf: String,
}

/// An HTTP client that does not follow redirects, to see them.
pub fn no_redirect_client() -> Result<Client> {
    Ok(Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// The value of `name` in the response's `Set-Cookie` headers (the whole header line).
pub fn set_cookie<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
}

/// The `value="..."` of the hidden `csrf` field (or the `csrf-token` meta tag) in a page.
pub fn csrf_in(html: &str) -> Option<String> {
    for marker in [r#"name="csrf" value=""#, r#"name="csrf-token" content=""#] {
        if let Some(start) = html.find(marker) {
            let rest = &html[start + marker.len()..];
            return rest.split('"').next().map(str::to_string);
        }
    }
    None
}

impl TestNode {
    /// Signs in through `GET /login` and `POST /login` like a browser does.
    pub async fn sign_in_form(&self, username: &str, password: &str) -> Result<BrowserSession> {
        let http = no_redirect_client()?;
        let form = http.get(self.url("/login")).send().await?;
        let login_cookie = set_cookie(&form, "orch_login_csrf")
            .context("login csrf cookie")?
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        let field = csrf_in(&form.text().await?).context("csrf field")?;
        let resp = http
            .post(self.url("/login"))
            .header("cookie", login_cookie)
            .form(&[
                ("username", username),
                ("password", password),
                ("csrf", &field),
            ])
            .send()
            .await?;
        if resp.status() != StatusCode::SEE_OTHER {
            bail!("sign-in answered {}", resp.status());
        }
        let cookie = set_cookie(&resp, "orch_session")
            .context("session cookie")?
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        let page = http
            .get(self.url("/"))
            .header("cookie", &cookie)
            .send()
            .await?
            .text()
            .await?;
        let csrf = csrf_in(&page).context("csrf meta")?;
        Ok(BrowserSession { cookie, csrf })
    }
}
