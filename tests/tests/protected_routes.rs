//! Every protected user route answers 401 without credentials and 401 with a robot token; an
//! unknown path answers 404 whatever the credentials.

use anyhow::Result;
use orchestrator_tests::{TestNode, expect_error};
use reqwest::{Method, StatusCode};
use serde_json::json;

const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/api/v1/auth/me"),
    ("POST", "/api/v1/auth/logout"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("PATCH", "/api/v1/users/1"),
    ("GET", "/api/v1/processes"),
    ("POST", "/api/v1/processes"),
    ("GET", "/api/v1/processes/1"),
    ("PATCH", "/api/v1/processes/1"),
    ("GET", "/api/v1/robots"),
    ("POST", "/api/v1/robots"),
    ("GET", "/api/v1/robots/1"),
    ("PATCH", "/api/v1/robots/1"),
    ("DELETE", "/api/v1/robots/1"),
    ("POST", "/api/v1/robots/1/token"),
    ("GET", "/api/v1/tasks"),
    ("POST", "/api/v1/tasks?process_id=1"),
    ("GET", "/api/v1/tasks/1"),
    ("GET", "/api/v1/tasks/1/items"),
    ("POST", "/api/v1/tasks/1/cancel"),
    ("POST", "/api/v1/tasks/1/retry-failed"),
    ("GET", "/api/v1/tasks/1/results.csv"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/stats/throughput"),
];

#[tokio::test]
async fn every_protected_route_refuses_missing_and_robot_credentials() -> Result<()> {
    let t = TestNode::start().await?;
    let (_, robot_token) = t.robot("bot", json!({})).await?;
    let before = t.snapshot().await?;
    for (method, path) in PROTECTED {
        let method: Method = method.parse()?;
        let anonymous = t
            .http
            .request(method.clone(), t.url(path))
            .body("{}")
            .send()
            .await?;
        expect_error(
            anonymous,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sign in",
        )
        .await
        .map_err(|e| e.context(format!("{method} {path} without credentials")))?;
        let robot = t
            .http
            .request(method.clone(), t.url(path))
            .header("authorization", format!("Token {robot_token}"))
            .body("{}")
            .send()
            .await?;
        expect_error(
            robot,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "robot tokens",
        )
        .await
        .map_err(|e| e.context(format!("{method} {path} with a robot token")))?;
    }
    assert_eq!(
        t.snapshot().await?,
        before,
        "refused requests changed nothing"
    );
    Ok(())
}

const ROBOT_ROUTES: &[&str] = &[
    "/api/v1/robot/pulse",
    "/api/v1/robot/items/claim",
    "/api/v1/robot/items/1/start",
    "/api/v1/robot/items/1/renew",
    "/api/v1/robot/items/1/complete",
    "/api/v1/robot/items/1/fail",
    "/api/v1/robot/items/1/release",
];

#[tokio::test]
async fn every_robot_route_refuses_missing_and_user_credentials() -> Result<()> {
    let t = TestNode::start().await?;
    let before = t.snapshot().await?;
    for path in ROBOT_ROUTES {
        let anonymous = t.http.post(t.url(path)).body("{}").send().await?;
        expect_error(anonymous, StatusCode::UNAUTHORIZED, "unauthorized", "Token")
            .await
            .map_err(|e| e.context(format!("POST {path} without credentials")))?;
        let user = t
            .http
            .post(t.url(path))
            .bearer_auth(&t.admin)
            .body("{}")
            .send()
            .await?;
        expect_error(
            user,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "user tokens",
        )
        .await
        .map_err(|e| e.context(format!("POST {path} with a user token")))?;
        let unknown = t
            .http
            .post(t.url(path))
            .header("authorization", "Token AAAAA-BBBBB")
            .body("{}")
            .send()
            .await?;
        expect_error(
            unknown,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown robot token",
        )
        .await?;
    }
    assert_eq!(
        t.snapshot().await?,
        before,
        "refused requests changed nothing"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_paths_are_404_even_without_credentials() -> Result<()> {
    let t = TestNode::start().await?;
    for path in ["/api/v1/nothing", "/api/v1/tasks/1/nothing", "/nope"] {
        let resp = t.http.get(t.url(path)).send().await?;
        expect_error(resp, StatusCode::NOT_FOUND, "not_found", "no such route").await?;
    }
    Ok(())
}
