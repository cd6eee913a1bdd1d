//! Test harness: starts real nodes in-process (on `mem://` or a `surrealkv://` temp dir) and
//! drives them over HTTP like any client would.

use anyhow::{Context, Result, bail};
use orchestrator_node::{Node, NodeConfig};
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
            "item_rows": store.count_rows("item").await?,
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

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("condition not met within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
