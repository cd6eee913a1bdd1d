//! The browser surface over HTTP: page routes, the sign-in form and its cookies, cookie
//! authentication of the API with its anti-forgery check, live events, the results export, the
//! throughput counters, and the API docs.

use anyhow::{Context, Result};
use orchestrator_tests::{
    ADMIN_PASSWORD, RestRobot, TestNode, csrf_in, eventually, expect, expect_error,
    no_redirect_client, seed_csv, set_cookie,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// Uploads a `rows`-row seed CSV as the holder of `token`; returns the created task.
async fn seed_task(t: &TestNode, token: &str, process: i64, rows: usize) -> Result<Value> {
    expect(
        t.upload(token, process, seed_csv(rows)).await?,
        StatusCode::CREATED,
    )
    .await
}

/// Every page, and whether only admins may open it.
const PAGES: &[(&str, bool)] = &[
    ("/", false),
    ("/tasks", false),
    ("/tasks/new", false),
    ("/robots", false),
    ("/processes", true),
    ("/users", true),
    ("/cluster", true),
];

#[tokio::test]
async fn pages_redirect_to_login_when_signed_out() -> Result<()> {
    let t = TestNode::start().await?;
    let http = no_redirect_client()?;
    for path in PAGES.iter().map(|(p, _)| *p).chain(["/tasks/1"]) {
        let resp = http.get(t.url(path)).send().await?;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(resp.headers()["location"], "/login", "{path}");
        // A forged or expired cookie is no better than none.
        let forged = http
            .get(t.url(path))
            .header("cookie", "orch_session=not.a.jwt")
            .send()
            .await?;
        assert_eq!(
            forged.status(),
            StatusCode::SEE_OTHER,
            "{path} with a forged cookie"
        );
    }
    let events = http.get(t.url("/events")).send().await?;
    expect_error(events, StatusCode::UNAUTHORIZED, "unauthorized", "sign in").await?;
    Ok(())
}

#[tokio::test]
async fn operators_get_403_on_admin_pages_and_admins_see_every_page() -> Result<()> {
    let t = TestNode::start().await?;
    t.user("olga", "operator").await?;
    let operator = t.sign_in_form("olga", "password-123").await?;
    let admin = t.sign_in_form("admin", ADMIN_PASSWORD).await?;
    let http = no_redirect_client()?;
    for (path, admins_only) in PAGES {
        let as_operator = http
            .get(t.url(path))
            .header("cookie", &operator.cookie)
            .send()
            .await?;
        let expected = if *admins_only {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        };
        assert_eq!(as_operator.status(), expected, "{path} as operator");
        let as_admin = http
            .get(t.url(path))
            .header("cookie", &admin.cookie)
            .send()
            .await?;
        assert_eq!(as_admin.status(), StatusCode::OK, "{path} as admin");
        let headers = as_admin.headers().clone();
        let html = as_admin.text().await?;
        assert!(html.contains(r#"<script src="/assets/app.js""#), "{path}");
        assert!(
            html.contains(r#"action="/logout""#),
            "{path} has a sign-out form"
        );
        assert!(
            headers["content-security-policy"]
                .to_str()?
                .contains("script-src 'self'"),
            "{path} forbids foreign and inline scripts"
        );
    }
    // The operator's navigation does not offer the admin pages.
    let home = http
        .get(t.url("/"))
        .header("cookie", &operator.cookie)
        .send()
        .await?
        .text()
        .await?;
    assert!(!home.contains(r#"href="/users""#));
    Ok(())
}

#[tokio::test]
async fn task_pages_are_404_for_other_operators_tasks() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("p").await?;
    let olga = t.user("olga", "operator").await?;
    t.user("omar", "operator").await?;
    let task = seed_task(&t, &olga, process, 2).await?;
    let id = task["id"].as_i64().context("id")?;
    let omar = t.sign_in_form("omar", "password-123").await?;
    let olga_session = t.sign_in_form("olga", "password-123").await?;
    let http = no_redirect_client()?;
    let other = http
        .get(t.url(&format!("/tasks/{id}")))
        .header("cookie", &omar.cookie)
        .send()
        .await?;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let own = http
        .get(t.url(&format!("/tasks/{id}")))
        .header("cookie", &olga_session.cookie)
        .send()
        .await?;
    assert_eq!(own.status(), StatusCode::OK);
    assert!(
        own.text()
            .await?
            .contains(&format!(r#"data-task-id="{id}""#))
    );
    Ok(())
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_refuses_bad_forms() -> Result<()> {
    let t = TestNode::start().await?;
    let http = no_redirect_client()?;
    let form = http.get(t.url("/login")).send().await?;
    assert_eq!(form.status(), StatusCode::OK);
    let login_cookie = set_cookie(&form, "orch_login_csrf")
        .context("anti-forgery cookie")?
        .to_string();
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
    let login_cookie = login_cookie
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    let field = csrf_in(&form.text().await?).context("hidden field")?;
    let post =
        |fields: Vec<(&'static str, String)>, cookie: Option<String>, origin: Option<&str>| {
            let mut req = http.post(t.url("/login")).form(&fields);
            if let Some(cookie) = cookie {
                req = req.header("cookie", cookie);
            }
            if let Some(origin) = origin {
                req = req.header("origin", origin);
            }
            req.send()
        };
    let creds = |password: &str| {
        vec![
            ("username", "admin".to_string()),
            ("password", password.to_string()),
            ("csrf", field.clone()),
        ]
    };

    let wrong = post(creds("nope"), Some(login_cookie.clone()), None).await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&wrong, "orch_session").is_none());
    assert!(wrong.text().await?.contains("Wrong username or password."));

    let no_cookie = post(creds(ADMIN_PASSWORD), None, None).await?;
    assert_eq!(
        no_cookie.status(),
        StatusCode::FORBIDDEN,
        "form without its cookie"
    );
    assert!(set_cookie(&no_cookie, "orch_session").is_none());

    let mut forged = creds(ADMIN_PASSWORD);
    forged[2].1 = "0".repeat(64);
    let forged = post(forged, Some(login_cookie.clone()), None).await?;
    assert_eq!(
        forged.status(),
        StatusCode::FORBIDDEN,
        "field not matching the cookie"
    );

    let cross_site = post(
        creds(ADMIN_PASSWORD),
        Some(login_cookie.clone()),
        Some("http://evil.example"),
    )
    .await?;
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN, "foreign Origin");

    let ok = post(creds(ADMIN_PASSWORD), Some(login_cookie), Some(&t.base)).await?;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()["location"], "/");
    let session = set_cookie(&ok, "orch_session").context("session cookie")?;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(session.contains(flag), "{session} lacks {flag}");
    }
    // Signed in, the form page sends the user on to the dashboard.
    let cookie = session.split(';').next().unwrap_or_default().to_string();
    let again = http
        .get(t.url("/login"))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    Ok(())
}

#[tokio::test]
async fn the_api_takes_the_session_cookie_but_writes_need_the_page_token() -> Result<()> {
    let t = TestNode::start().await?;
    let session = t.sign_in_form("admin", ADMIN_PASSWORD).await?;
    let stats = t
        .http
        .get(t.url("/api/v1/stats"))
        .header("cookie", &session.cookie)
        .send()
        .await?;
    expect(stats, StatusCode::OK).await?;

    let before = t.get("/api/v1/processes").await?;
    let forged = t
        .http
        .post(t.url("/api/v1/processes"))
        .header("cookie", &session.cookie)
        .json(&json!({ "title": "forged" }))
        .send()
        .await?;
    expect_error(forged, StatusCode::FORBIDDEN, "forbidden", "X-CSRF-Token").await?;
    let wrong = t
        .http
        .post(t.url("/api/v1/processes"))
        .header("cookie", &session.cookie)
        .header("x-csrf-token", "0".repeat(32))
        .json(&json!({ "title": "forged" }))
        .send()
        .await?;
    expect_error(wrong, StatusCode::FORBIDDEN, "forbidden", "X-CSRF-Token").await?;
    assert_eq!(
        t.get("/api/v1/processes").await?,
        before,
        "nothing was created"
    );

    let made = t
        .http
        .post(t.url("/api/v1/processes"))
        .header("cookie", &session.cookie)
        .header("x-csrf-token", &session.csrf)
        .json(&json!({ "title": "from the browser" }))
        .send()
        .await?;
    expect(made, StatusCode::CREATED).await?;
    Ok(())
}

#[tokio::test]
async fn sign_out_clears_the_cookie_and_needs_the_page_token() -> Result<()> {
    let t = TestNode::start().await?;
    let session = t.sign_in_form("admin", ADMIN_PASSWORD).await?;
    let http = no_redirect_client()?;
    let forged = http
        .post(t.url("/logout"))
        .header("cookie", &session.cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let out = http
        .post(t.url("/logout"))
        .header("cookie", &session.cookie)
        .form(&[("csrf", session.csrf.as_str())])
        .send()
        .await?;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(out.headers()["location"], "/login");
    let cleared = set_cookie(&out, "orch_session").context("cleared cookie")?;
    assert!(cleared.starts_with("orch_session=;") && cleared.contains("Max-Age=0"));
    Ok(())
}

#[tokio::test]
async fn live_events_carry_stats_throughput_and_running_tasks() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("p").await?;
    let task = seed_task(&t, &t.admin, process, 3).await?;
    let session = t.sign_in_form("admin", ADMIN_PASSWORD).await?;
    let mut resp = t
        .http
        .get(t.url("/events"))
        .header("cookie", &session.cookie)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );
    let mut text = String::new();
    let tick = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = resp.chunk().await? {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(start) = text.find("event:tick\ndata:") {
                let rest = &text[start + "event:tick\ndata:".len()..];
                if let Some(end) = rest.find('\n') {
                    return Ok::<Value, anyhow::Error>(serde_json::from_str(&rest[..end])?);
                }
            }
        }
        anyhow::bail!("stream ended: {text}")
    })
    .await??;
    assert_eq!(tick["stats"]["items"]["pending"], 3);
    assert_eq!(
        tick["throughput"]["minutes"].as_array().map(Vec::len),
        Some(60)
    );
    assert_eq!(tick["active_tasks"][0]["id"], task["id"]);
    Ok(())
}

#[tokio::test]
async fn results_download_has_the_original_columns_and_each_outcome() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("p").await?;
    let csv =
        "customer;amount;status\nAcme, Inc.;10;new\n\"Quote \"\"Co\"\"\";20;old\nZed;30;new\n";
    let task = expect(t.upload(&t.admin, process, csv).await?, StatusCode::CREATED).await?;
    let id = task["id"].as_i64().context("id")?;
    let robot = RestRobot::create(&t, "bot", json!({ "capacity": 3 })).await?;
    let items = robot.claim_exactly(3).await?;
    robot.finish(&items[0]).await?;
    let fail = robot
        .act(
            &items[1],
            "fail",
            json!({ "kind": "business", "message": "bad customer" }),
        )
        .await?;
    expect(fail, StatusCode::OK).await?;

    let resp = t
        .req(
            Method::GET,
            &format!("/api/v1/tasks/{id}/results.csv"),
            &t.admin,
        )
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()?
            .starts_with("text/csv")
    );
    assert!(
        resp.headers()["content-disposition"]
            .to_str()?
            .contains(&format!("task-{id}-results.csv"))
    );
    let body = resp.text().await?;
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let header: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
    assert_eq!(
        header,
        [
            "customer",
            "amount",
            "status",
            "result_status",
            "robot_id",
            "attempt",
            "observation",
            "output",
            "fail_kind",
            "created_at",
            "started_at",
            "ended_at"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 3);
    let by_customer = |name: &str| rows.iter().find(|r| &r[0] == name).cloned();
    let acme = by_customer("Acme, Inc.").context("acme row")?;
    let quote = by_customer("Quote \"Co\"").context("quoted row")?;
    let zed = by_customer("Zed").context("zed row")?;
    let done_one = [&acme, &quote]
        .into_iter()
        .find(|r| &r[3] == "COMPLETED")
        .context("one completed")?;
    assert_eq!(&done_one[4], robot.id.to_string().as_str());
    assert!(done_one[6].starts_with("done by"));
    assert!(!done_one[11].is_empty(), "ended_at is set");
    assert!(
        [&acme, &quote]
            .iter()
            .any(|r| &r[3] == "FAILED" && &r[8] == "business")
    );
    assert_eq!(&zed[2], "new", "the file's own status column is kept");
    assert_eq!(&zed[3], "ASSIGNED");

    // Another operator cannot read it.
    let other = t.user("olga", "operator").await?;
    let refused = t
        .req(
            Method::GET,
            &format!("/api/v1/tasks/{id}/results.csv"),
            &other,
        )
        .send()
        .await?;
    expect_error(refused, StatusCode::NOT_FOUND, "not_found", "not found").await?;
    Ok(())
}

#[tokio::test]
async fn results_of_a_large_task_stream_every_row_in_file_order() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("p").await?;
    let task = seed_task(&t, &t.admin, process, 2_500).await?;
    let id = task["id"].as_i64().context("id")?;
    let body = t
        .req(
            Method::GET,
            &format!("/api/v1/tasks/{id}/results.csv"),
            &t.admin,
        )
        .send()
        .await?
        .text()
        .await?;
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let lineas: Vec<i64> = reader
        .records()
        .map(|r| Ok(r?[0].parse::<i64>()?))
        .collect::<Result<_>>()?;
    assert_eq!(lineas, (1..=2_500).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn throughput_counts_items_finished_this_minute() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("p").await?;
    seed_task(&t, &t.admin, process, 4).await?;
    let robot = RestRobot::create(&t, "bot", json!({ "capacity": 4 })).await?;
    let items = robot.claim_exactly(4).await?;
    for item in &items[..3] {
        robot.finish(item).await?;
    }
    let fail = robot
        .act(
            &items[3],
            "fail",
            json!({ "kind": "business", "message": "no" }),
        )
        .await?;
    expect(fail, StatusCode::OK).await?;
    let sums = eventually(Duration::from_secs(5), || async {
        let body = t.get("/api/v1/stats/throughput?minutes=5").await?;
        let minutes = body["minutes"].as_array().cloned().unwrap_or_default();
        let sum = |field: &str| {
            minutes
                .iter()
                .map(|m| m[field].as_i64().unwrap_or(0))
                .sum::<i64>()
        };
        Ok(
            (minutes.len() == 5 && sum("completed") + sum("failed") == 4)
                .then(|| (sum("completed"), sum("failed"))),
        )
    })
    .await?;
    assert_eq!(sums, (3, 1));
    let bad = t
        .req(Method::GET, "/api/v1/stats/throughput?minutes=0", &t.admin)
        .send()
        .await?;
    expect_error(
        bad,
        StatusCode::BAD_REQUEST,
        "invalid_minutes",
        "between 1 and 1440",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn robots_list_shows_each_robots_load() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("p").await?;
    seed_task(&t, &t.admin, process, 2).await?;
    let robot = RestRobot::create(&t, "bot", json!({ "capacity": 5 })).await?;
    robot.claim_exactly(2).await?;
    let robots = t.get("/api/v1/robots").await?;
    assert_eq!(robots[0]["load"], 2);
    assert_eq!(robots[0]["capacity"], 5);
    Ok(())
}

#[tokio::test]
async fn docs_and_assets_are_served_from_the_binary() -> Result<()> {
    let t = TestNode::start().await?;
    let docs = t.http.get(t.url("/docs")).send().await?;
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await?;
    assert!(html.contains("Invoke-RestMethod"), "PowerShell example");
    assert!(html.contains("urllib.request"), "Python example");
    assert!(
        !html.contains("http://cdn") && !html.contains("https://"),
        "no foreign assets"
    );
    for (asset, kind) in [
        ("app.css", "text/css"),
        ("app.js", "text/javascript"),
        ("docs.js", "text/javascript"),
    ] {
        let resp = t
            .http
            .get(t.url(&format!("/assets/{asset}")))
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::OK, "{asset}");
        assert!(resp.headers()["content-type"].to_str()?.starts_with(kind));
    }
    let missing = t.http.get(t.url("/assets/nope.js")).send().await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn openapi_lists_every_route_and_only_routes_that_exist() -> Result<()> {
    let t = TestNode::start().await?;
    let spec = expect(
        t.http.get(t.url("/openapi.json")).send().await?,
        StatusCode::OK,
    )
    .await?;
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().context("paths")?;
    let mut operations = 0;
    for (path, methods) in paths {
        for method in methods.as_object().context("methods")?.keys() {
            operations += 1;
            let concrete = path.replace("{id}", "1");
            let resp = t
                .http
                .request(method.to_uppercase().parse()?, t.url(&concrete))
                .send()
                .await?;
            let status = resp.status();
            let text = resp.text().await?;
            assert!(
                !(status == StatusCode::NOT_FOUND && text.contains("no such route")),
                "documented {method} {path} is not served"
            );
        }
    }
    // The user, robot and seed routes the other suites exercise are all documented.
    for (method, path) in [
        ("post", "/api/v1/tasks"),
        ("get", "/api/v1/tasks/{id}/results.csv"),
        ("post", "/api/v1/robot/items/{id}/complete"),
        ("get", "/api/v1/robot/ws"),
        ("patch", "/api/items/"),
        ("get", "/api/tasks/"),
        ("post", "/login"),
        ("get", "/events"),
    ] {
        assert!(
            spec["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    assert!(operations >= 50, "{operations} operations documented");
    Ok(())
}

#[tokio::test]
async fn the_python_example_on_the_docs_page_runs_a_task_to_completion() -> Result<()> {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    if python.is_err() {
        eprintln!("python3 is not installed; the example cannot run here");
        return Ok(());
    }
    let t = TestNode::start().await?;
    let process = t.process("p").await?;
    let (_, token) = t.robot("py", json!({ "capacity": 3 })).await?;
    let task = seed_task(&t, &t.admin, process, 7).await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("robot.py");
    std::fs::write(&script, orchestrator_web_example())?;
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .env("ORCH_URL", &t.base)
        .env("ORCH_ROBOT_TOKEN", &token)
        .env("ORCH_EXIT_WHEN_IDLE", "1")
        .env("ORCH_CLAIM_WAIT", "1")
        .output()
        .await?;
    assert!(
        output.status.success(),
        "the example failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id = task["id"].as_i64().context("id")?;
    let done = t.get(&format!("/api/v1/tasks/{id}")).await?;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["counts"]["completed"], 7);
    Ok(())
}

/// The Python robot exactly as `/docs` shows it.
fn orchestrator_web_example() -> &'static str {
    orchestrator_web::dashboard::openapi::PYTHON_ROBOT
}
