//! The user API end to end on a real node: sign-in, users, processes, robots and stats.

use anyhow::Result;
use orchestrator_actors::security::hash_robot_token;
use orchestrator_tests::{TestNode, expect, expect_error};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn health_answers_once_ready() -> Result<()> {
    let t = TestNode::start().await?;
    let resp = t.http.get(t.url("/healthz")).send().await?;
    assert_eq!(expect(resp, StatusCode::OK).await?["status"], "ok");
    Ok(())
}

#[tokio::test]
async fn login_issues_a_jwt_and_refuses_bad_credentials() -> Result<()> {
    let t = TestNode::start().await?;
    let resp = t
        .http
        .post(t.url("/api/v1/auth/login"))
        .json(&json!({ "username": "admin", "password": "admin-password" }))
        .send()
        .await?;
    let body = expect(resp, StatusCode::OK).await?;
    assert_eq!(
        body["token"].as_str().map(|t| t.split('.').count()),
        Some(3)
    );
    assert!(body["expires_at"].as_str().is_some_and(|s| s.contains('T')));
    assert_eq!(body["user"]["role"], "admin");

    for (user, password) in [("admin", "wrong"), ("nobody", "admin-password")] {
        let resp = t
            .http
            .post(t.url("/api/v1/auth/login"))
            .json(&json!({ "username": user, "password": password }))
            .send()
            .await?;
        expect_error(
            resp,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username",
        )
        .await?;
    }
    let resp = t
        .http
        .post(t.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    expect_error(
        resp,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        "invalid JSON",
    )
    .await?;

    let me = t.get("/api/v1/auth/me").await?;
    assert_eq!(me["username"], "admin");
    Ok(())
}

#[tokio::test]
async fn admins_manage_users_and_operators_cannot() -> Result<()> {
    let t = TestNode::start().await?;
    let operator = t.user("olga", "operator").await?;
    let users = t.get("/api/v1/users").await?;
    assert_eq!(users.as_array().map(Vec::len), Some(2));
    assert!(
        users.to_string().find("password").is_none(),
        "no hashes leak"
    );

    let resp = t
        .req(Method::POST, "/api/v1/users", &operator)
        .json(&json!({ "username": "eve", "password": "password-123", "role": "admin" }))
        .send()
        .await?;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden", "admin").await?;
    let resp = t
        .req(Method::GET, "/api/v1/users", &operator)
        .send()
        .await?;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden", "admin").await?;

    let dup = t
        .req(Method::POST, "/api/v1/users", &t.admin)
        .json(&json!({ "username": "olga", "password": "password-123", "role": "operator" }))
        .send()
        .await?;
    expect_error(dup, StatusCode::CONFLICT, "conflict", "taken").await?;
    let bad_role = t
        .req(Method::POST, "/api/v1/users", &t.admin)
        .json(&json!({ "username": "x", "password": "password-123", "role": "robot" }))
        .send()
        .await?;
    expect_error(
        bad_role,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_role",
        "robot",
    )
    .await?;
    let short = t
        .req(Method::POST, "/api/v1/users", &t.admin)
        .json(&json!({ "username": "y", "password": "short" }))
        .send()
        .await?;
    expect_error(
        short,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_password",
        "8 to 256",
    )
    .await?;
    assert_eq!(
        t.get("/api/v1/users").await?.as_array().map(Vec::len),
        Some(2)
    );

    // Disabling a user ends their session at once.
    let olga_id = t.get("/api/v1/users").await?[1]["id"]
        .as_i64()
        .unwrap_or_default();
    let resp = t
        .req(Method::PATCH, &format!("/api/v1/users/{olga_id}"), &t.admin)
        .json(&json!({ "disabled": true }))
        .send()
        .await?;
    assert_eq!(expect(resp, StatusCode::OK).await?["disabled"], true);
    let resp = t
        .req(Method::GET, "/api/v1/processes", &operator)
        .send()
        .await?;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", "disabled").await?;
    Ok(())
}

#[tokio::test]
async fn processes_are_created_listed_and_disabled() -> Result<()> {
    let t = TestNode::start().await?;
    let resp = t
        .req(Method::POST, "/api/v1/processes", &t.admin)
        .json(&json!({ "title": "Balance reload", "description": "top up phones" }))
        .send()
        .await?;
    let created = expect(resp, StatusCode::CREATED).await?;
    let id = created["id"].as_i64().unwrap_or_default();
    assert!(id > 0);
    assert_eq!(created["enabled"], true);
    assert_eq!(created["max_attempts"], 3);
    assert_eq!(created["on_lost"], "abandon");

    let dup = t
        .req(Method::POST, "/api/v1/processes", &t.admin)
        .json(&json!({ "title": "Balance reload" }))
        .send()
        .await?;
    expect_error(dup, StatusCode::CONFLICT, "conflict", "exists").await?;
    let unknown_field = t
        .req(Method::POST, "/api/v1/processes", &t.admin)
        .json(&json!({ "title": "X", "colour": "red" }))
        .send()
        .await?;
    expect_error(
        unknown_field,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        "colour",
    )
    .await?;

    let resp = t
        .req(Method::PATCH, &format!("/api/v1/processes/{id}"), &t.admin)
        .json(&json!({ "enabled": false, "description": "paused", "on_lost": "retry" }))
        .send()
        .await?;
    let patched = expect(resp, StatusCode::OK).await?;
    assert_eq!(
        (patched["enabled"].clone(), patched["on_lost"].clone()),
        (json!(false), json!("retry"))
    );
    assert_eq!(
        t.get(&format!("/api/v1/processes/{id}")).await?["description"],
        "paused"
    );
    let missing = t
        .req(Method::PATCH, "/api/v1/processes/999", &t.admin)
        .json(&json!({ "enabled": true }))
        .send()
        .await?;
    expect_error(missing, StatusCode::NOT_FOUND, "not_found", "process 999").await?;

    let operator = t.user("op", "operator").await?;
    let list = t
        .req(Method::GET, "/api/v1/processes", &operator)
        .send()
        .await?;
    assert_eq!(
        expect(list, StatusCode::OK).await?.as_array().map(Vec::len),
        Some(1)
    );
    let resp = t
        .req(Method::POST, "/api/v1/processes", &operator)
        .json(&json!({ "title": "Mine" }))
        .send()
        .await?;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden", "admin").await?;
    Ok(())
}

#[tokio::test]
async fn robot_tokens_are_shown_once_stored_hashed_and_rotated() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Registration").await?;
    let (id, token) = t
        .robot(
            "bot-1",
            json!({ "platform": "uipath", "capacity": 4, "processes": [process] }),
        )
        .await?;
    let robot = t.get(&format!("/api/v1/robots/{id}")).await?;
    assert_eq!(robot["platform"], "UIPATH");
    assert_eq!(robot["capacity"], 4);
    assert_eq!(robot["processes"], json!([process]));
    assert_eq!(robot["status"], "INACTIVE");
    assert_eq!(robot["connected"], false);
    assert!(robot.get("token").is_none());
    let listing = t.get("/api/v1/robots").await?.to_string();
    assert!(!listing.contains(&token) && !listing.contains("token_hash"));
    let store = t.node.store();
    assert_eq!(
        store
            .robot_by_token_hash(&hash_robot_token(&token))
            .await?
            .map(|r| r.id),
        Some(id)
    );

    // A robot token is refused on user routes.
    let resp = t
        .http
        .get(t.url("/api/v1/robots"))
        .header("authorization", format!("Token {token}"))
        .send()
        .await?;
    expect_error(
        resp,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "robot tokens",
    )
    .await?;
    let resp = t.req(Method::GET, "/api/v1/robots", &token).send().await?;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", "not valid").await?;

    let rotated = t
        .req(
            Method::POST,
            &format!("/api/v1/robots/{id}/token"),
            &t.admin,
        )
        .send()
        .await?;
    let new_token = expect(rotated, StatusCode::OK).await?["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(new_token, token);
    assert!(
        store
            .robot_by_token_hash(&hash_robot_token(&token))
            .await?
            .is_none()
    );
    assert!(
        store
            .robot_by_token_hash(&hash_robot_token(&new_token))
            .await?
            .is_some()
    );

    let bad = t
        .req(Method::POST, "/api/v1/robots", &t.admin)
        .json(&json!({ "name": "bot-2", "processes": [999] }))
        .send()
        .await?;
    expect_error(
        bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        "process_not_found",
        "999",
    )
    .await?;
    let bad = t
        .req(Method::POST, "/api/v1/robots", &t.admin)
        .json(&json!({ "name": "bot-2", "capacity": 0 }))
        .send()
        .await?;
    expect_error(
        bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_capacity",
        "capacity",
    )
    .await?;
    let dup = t
        .req(Method::POST, "/api/v1/robots", &t.admin)
        .json(&json!({ "name": "bot-1" }))
        .send()
        .await?;
    expect_error(dup, StatusCode::CONFLICT, "conflict", "taken").await?;
    assert_eq!(
        t.get("/api/v1/robots").await?.as_array().map(Vec::len),
        Some(1)
    );

    let resp = t
        .req(Method::PATCH, &format!("/api/v1/robots/{id}"), &t.admin)
        .json(&json!({ "status": "ACTIVE", "capacity": 2, "processes": [] }))
        .send()
        .await?;
    let patched = expect(resp, StatusCode::OK).await?;
    assert_eq!(
        (patched["status"].clone(), patched["capacity"].clone()),
        (json!("ACTIVE"), json!(2))
    );
    let stats = t.get("/api/v1/stats").await?;
    assert_eq!(
        stats["robots"],
        json!({ "total": 1, "active": 1, "connected": 0 })
    );

    let resp = t
        .req(Method::DELETE, &format!("/api/v1/robots/{id}"), &t.admin)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = t
        .req(Method::DELETE, &format!("/api/v1/robots/{id}"), &t.admin)
        .send()
        .await?;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found", "robot").await?;
    Ok(())
}

#[tokio::test]
async fn expired_and_foreign_jwts_are_refused() -> Result<()> {
    let t = TestNode::start().await?;
    let now = chrono_now();
    for (secret, exp, fragment) in [
        (
            orchestrator_node::config::TEST_JWT_SECRET,
            now - 3600,
            "expired",
        ),
        ("another-secret", now + 3600, "not valid"),
    ] {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({ "sub": "1", "role": "admin", "username": "admin", "iat": now, "exp": exp }),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )?;
        let resp = t.req(Method::GET, "/api/v1/stats", &token).send().await?;
        expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", fragment).await?;
    }
    Ok(())
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
