//! Authentication and sessions under abuse: sign-in throttling per username and per address,
//! sign-out and password changes revoking earlier tokens, `/events` ending with the session,
//! operators seeing their own figures only, bounded task priority, and an administrator's
//! INACTIVE winning over the robot's own attempts to become ACTIVE.

use anyhow::{Context, Result, ensure};
use orchestrator_tests::{
    ADMIN_PASSWORD, RestRobot, TestNode, WsRobot, expect, expect_error, seed_csv, seed_robot,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn login_status(t: &TestNode, username: &str, password: &str) -> Result<reqwest::Response> {
    Ok(t.http
        .post(t.url("/api/v1/auth/login"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await?)
}

#[tokio::test]
async fn wrong_passwords_are_throttled_per_username_and_per_address() -> Result<()> {
    let t = TestNode::start().await?;
    for _ in 0..5 {
        let resp = login_status(&t, "admin", "wrong-password").await?;
        ensure!(resp.status() == StatusCode::UNAUTHORIZED);
    }
    // The sixth failure locks the name for a second, the seventh for two.
    ensure!(login_status(&t, "admin", "wrong").await?.status() == StatusCode::UNAUTHORIZED);
    let locked = login_status(&t, "admin", ADMIN_PASSWORD).await?;
    ensure!(
        locked.status() == StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.status()
    );
    let retry: u64 = locked
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .context("Retry-After")?;
    ensure!((1..=2).contains(&retry), "retry after {retry}");
    expect_error(
        locked,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        "try again",
    )
    .await?;
    // An unknown name is throttled the same way (nothing tells names apart).
    for _ in 0..6 {
        login_status(&t, "nobody-here", "x").await?;
    }
    ensure!(login_status(&t, "nobody-here", "x").await?.status() == StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    expect(
        login_status(&t, "admin", ADMIN_PASSWORD).await?,
        StatusCode::OK,
    )
    .await?;

    // One address trying many names is locked out too, whatever name it tries next.
    let mut statuses = Vec::new();
    for i in 0..25 {
        statuses.push(login_status(&t, &format!("guess-{i}"), "x").await?.status());
    }
    ensure!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    Ok(())
}

#[tokio::test]
async fn signing_out_and_changing_the_password_revoke_earlier_tokens() -> Result<()> {
    let t = TestNode::start().await?;
    let first = t.user("olga", "operator").await?;
    let second = t.login("olga", "password-123").await?;
    let me = |token: String| {
        let t = &t;
        async move {
            Ok::<_, anyhow::Error>(
                t.req(Method::GET, "/api/v1/auth/me", &token)
                    .send()
                    .await?
                    .status(),
            )
        }
    };
    ensure!(me(first.clone()).await? == StatusCode::OK);
    let out = t
        .req(Method::POST, "/api/v1/auth/logout", &first)
        .send()
        .await?;
    ensure!(out.status() == StatusCode::NO_CONTENT, "{}", out.status());
    ensure!(me(first).await? == StatusCode::UNAUTHORIZED);
    ensure!(
        me(second).await? == StatusCode::UNAUTHORIZED,
        "signing out ends every session of the user"
    );
    let third = t.login("olga", "password-123").await?;
    ensure!(me(third.clone()).await? == StatusCode::OK);

    // A browser session too: its cookie stops working after the password changes.
    let browser = t.sign_in_form("olga", "password-123").await?;
    let id = t.get("/api/v1/users").await?.as_array().and_then(|users| {
        users
            .iter()
            .find(|u| u["username"] == "olga")
            .and_then(|u| u["id"].as_i64())
    });
    let resp = t
        .req(
            Method::PATCH,
            &format!("/api/v1/users/{}", id.context("olga")?),
            &t.admin,
        )
        .json(&json!({ "password": "a-new-password-456" }))
        .send()
        .await?;
    expect(resp, StatusCode::OK).await?;
    ensure!(me(third).await? == StatusCode::UNAUTHORIZED);
    let cookie = t
        .http
        .get(t.url("/api/v1/auth/me"))
        .header("cookie", &browser.cookie)
        .send()
        .await?;
    ensure!(cookie.status() == StatusCode::UNAUTHORIZED);
    t.login("olga", "a-new-password-456").await?;
    Ok(())
}

#[tokio::test]
async fn the_event_stream_ends_when_the_user_is_disabled() -> Result<()> {
    let t = TestNode::start().await?;
    t.user("pia", "operator").await?;
    let browser = t.sign_in_form("pia", "password-123").await?;
    let mut events = t
        .http
        .get(t.url("/events"))
        .header("cookie", &browser.cookie)
        .send()
        .await?;
    ensure!(events.status() == StatusCode::OK);
    let mut first = String::new();
    // warp writes `event:tick` (no space after the colon); an event ends with a blank line.
    let tick = loop {
        let text = first.replace("event: ", "event:");
        if let Some(at) = text.find("event:tick")
            && let Some(end) = text[at..].find("\n\n")
        {
            break text[at..at + end].to_string();
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
            .await
            .context("a first tick")??
            .context("the stream ended early")?;
        first.push_str(&String::from_utf8_lossy(&chunk));
    };
    // An operator's tick has the shape the dashboard draws: `throughput.minutes` is a list
    // (empty: the figure is the node's), like an admin's.
    let data = tick
        .lines()
        .find_map(|line| line.strip_prefix("data:"))
        .context("tick data")?;
    let data: serde_json::Value = serde_json::from_str(data.trim())?;
    ensure!(
        data["throughput"]["minutes"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{data}"
    );
    let users = t.get("/api/v1/users").await?;
    let id = users
        .as_array()
        .and_then(|u| u.iter().find(|u| u["username"] == "pia"))
        .and_then(|u| u["id"].as_i64())
        .context("pia")?;
    expect(
        t.req(Method::PATCH, &format!("/api/v1/users/{id}"), &t.admin)
            .json(&json!({ "disabled": true }))
            .send()
            .await?,
        StatusCode::OK,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => break,
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => anyhow::bail!("the stream was still open: {seen}"),
        }
    }
    let seen = seen.replace("event: ", "event:");
    ensure!(
        seen.contains("event:ended") && seen.contains("disabled"),
        "{seen}"
    );
    Ok(())
}

#[tokio::test]
async fn operators_see_their_own_figures_and_priority_is_bounded() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Figures").await?;
    let olga = t.user("olga", "operator").await?;
    expect(
        t.upload(&olga, process, seed_csv(3)).await?,
        StatusCode::CREATED,
    )
    .await?;
    expect(
        t.upload(&t.admin, process, seed_csv(5)).await?,
        StatusCode::CREATED,
    )
    .await?;
    let mine = expect(
        t.req(Method::GET, "/api/v1/stats", &olga).send().await?,
        StatusCode::OK,
    )
    .await?;
    ensure!(
        mine["items"]["pending"] == 3 && mine["tasks"]["total"] == 1,
        "{mine}"
    );
    let all = t.get("/api/v1/stats").await?;
    ensure!(
        all["items"]["pending"] == 8 && all["tasks"]["total"] == 2,
        "{all}"
    );
    let resp = t
        .req(Method::GET, "/api/v1/stats/throughput", &olga)
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::FORBIDDEN);

    let upload = |token: &String, priority: i64| {
        t.req(
            Method::POST,
            &format!("/api/v1/tasks?process_id={process}&priority={priority}"),
            token,
        )
        .header("content-type", "text/csv")
        .body(seed_csv(2))
        .send()
    };
    let before = t.snapshot().await?;
    for (token, priority) in [(&olga, 11), (&olga, -11), (&t.admin, 1_001)] {
        let resp = upload(token, priority).await?;
        expect_error(
            resp,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_priority",
            "priority",
        )
        .await?;
    }
    ensure!(t.snapshot().await? == before);
    for (token, priority) in [(&olga, 10), (&t.admin, 500)] {
        let task = expect(upload(token, priority).await?, StatusCode::CREATED).await?;
        ensure!(task["priority"] == priority, "{task}");
    }
    Ok(())
}

#[tokio::test]
async fn an_admins_inactive_wins_over_the_robot() -> Result<()> {
    let t = TestNode::start().await?;
    let rest = RestRobot::create(&t, "rest-held", json!({ "capacity": 1 })).await?;
    let seed = seed_robot(&t, "seed-held").await?;
    let (ws_id, ws_token) = t.robot("ws-held", json!({ "capacity": 1 })).await?;
    let set = |id: i64, status: &'static str| {
        let t = &t;
        async move {
            expect(
                t.req(Method::PATCH, &format!("/api/v1/robots/{id}"), &t.admin)
                    .json(&json!({ "status": status }))
                    .send()
                    .await?,
                StatusCode::OK,
            )
            .await
        }
    };
    // Not disabled by an admin: the prototype's own ACTIVE/INACTIVE keeps working.
    for status in ["INACTIVE", "ACTIVE"] {
        let (code, _) = seed
            .call(
                Method::PATCH,
                &format!("/api/robots/?robot_id={}&status={status}", seed.id),
            )
            .await?;
        ensure!(code == StatusCode::OK);
    }
    for id in [rest.id, seed.id, ws_id] {
        let view = set(id, "INACTIVE").await?;
        ensure!(view["disabled_by_admin"] == true, "{view}");
    }
    let resp = rest
        .http
        .post(t.url("/api/v1/robot/pulse"))
        .header("authorization", format!("Token {}", rest.token))
        .json(&json!({ "status": "ACTIVE" }))
        .send()
        .await?;
    expect_error(
        resp,
        StatusCode::CONFLICT,
        "robot_disabled",
        "administrator",
    )
    .await?;
    let pulse = rest.pulse(None).await?;
    ensure!(
        pulse["disabled_by_admin"] == true && pulse["status"] == "INACTIVE",
        "{pulse}"
    );
    let (code, body) = seed
        .call(
            Method::PATCH,
            &format!("/api/robots/?robot_id={}&status=ACTIVE", seed.id),
        )
        .await?;
    ensure!(code == StatusCode::CONFLICT, "{code} {body}");
    ensure!(
        serde_json::from_str::<Value>(&body)?["detail"]
            .as_str()
            .is_some_and(|d| d.contains("administrator"))
    );
    let mut ws = WsRobot::connect(&t, ws_id, &ws_token).await?;
    ws.send(json!({ "type": "ready", "ref": "r" })).await?;
    let frame = ws.next().await?;
    ensure!(
        frame["type"] == "error" && frame["code"] == "robot_disabled" && frame["ref"] == "r",
        "{frame}"
    );
    for robot in t
        .get("/api/v1/robots")
        .await?
        .as_array()
        .context("robots")?
    {
        ensure!(robot["status"] == "INACTIVE", "{robot}");
    }
    // An administrator's ACTIVE lifts it.
    set(rest.id, "ACTIVE").await?;
    let pulse = rest.pulse(Some("ACTIVE")).await?;
    ensure!(
        pulse["status"] == "ACTIVE" && pulse["disabled_by_admin"] == false,
        "{pulse}"
    );
    Ok(())
}
