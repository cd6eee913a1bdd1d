//! `GET /login`, `POST /login`, `POST /logout`.
//!
//! The sign-in form is protected against cross-site posts twice: a random token in an HttpOnly,
//! SameSite=Strict cookie must match the form's hidden field, and a request whose `Origin` names
//! another host is refused. A successful sign-in sets the session cookie (HttpOnly,
//! SameSite=Strict, `Secure` behind an HTTPS proxy) and redirects to the dashboard.

use super::{Session, escape, html, see_other, session};
use crate::auth::{SESSION_COOKIE, cookie};
use crate::state::{AppState, with_state};
use crate::user_api::login::check_credentials;
use bytes::Bytes;
use orchestrator_actors::security::random_secret;
use std::collections::HashMap;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;

/// The cookie holding the sign-in form's anti-forgery token.
const LOGIN_CSRF_COOKIE: &str = "orch_login_csrf";

/// Largest sign-in or sign-out form body.
const MAX_FORM_BYTES: u64 = 8 * 1024;

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let form = warp::path!("login")
        .and(warp::get())
        .and(session(state.clone()))
        .and(warp::header::headers_cloned())
        .map(
            |session: Option<Session>, headers: HeaderMap| match session {
                Some(_) => see_other("/"),
                None => login_page(StatusCode::OK, "", None, secure(&headers)),
            },
        );
    let submit = warp::path!("login")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(warp::header::headers_cloned())
        .and(crate::server::client_addr())
        .and(warp::body::content_length_limit(MAX_FORM_BYTES))
        .and(warp::body::bytes())
        .then(
            |state: AppState,
             headers: HeaderMap,
             addr: Option<std::net::SocketAddr>,
             body: Bytes| async move {
                sign_in(&state, &headers, &body, addr.map(|a| a.ip())).await
            },
        );
    let logout = warp::path!("logout")
        .and(warp::post())
        .and(session(state.clone()))
        .and(with_state(state))
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(MAX_FORM_BYTES))
        .and(warp::body::bytes())
        .then(
            |session: Option<Session>, state: AppState, headers: HeaderMap, body: Bytes| async move {
                let fields = form_fields(&body);
                match session {
                    Some(s) if fields.get("csrf") != Some(&s.csrf) || foreign_origin(&headers) => {
                        html(
                            StatusCode::FORBIDDEN,
                            message_page("Sign-out refused", "Reload the page and try again."),
                        )
                    }
                    _ => {
                        // Signing out ends every session of the user: the cookie's token (and
                        // any copy of it) is refused from now on.
                        if let Some(s) = &session
                            && let Err(err) = state.store.revoke_tokens(s.user.id).await
                        {
                            return html(
                                StatusCode::SERVICE_UNAVAILABLE,
                                message_page(
                                    "Sign-out failed",
                                    &crate::error::conceal(&err),
                                ),
                            );
                        }
                        let mut response = see_other("/login");
                        set_cookie(
                            &mut response,
                            &format!(
                                "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
                            ),
                        );
                        response
                    }
                }
            },
        );
    form.or(submit).unify().or(logout).unify().boxed()
}

async fn sign_in(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    addr: Option<std::net::IpAddr>,
) -> Response {
    let fields = form_fields(body);
    let username = fields.get("username").cloned().unwrap_or_default();
    let secure = secure(headers);
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let expected = cookie(cookies, LOGIN_CSRF_COOKIE);
    if expected.is_none()
        || fields.get("csrf").map(String::as_str) != expected
        || foreign_origin(headers)
    {
        return login_page(
            StatusCode::FORBIDDEN,
            &username,
            Some("The sign-in form expired or came from another site. Please try again."),
            secure,
        );
    }
    let password = fields.get("password").cloned().unwrap_or_default();
    let user = match check_credentials(state, &username, password, addr).await {
        Ok(user) => user,
        Err(err) if err.status == StatusCode::UNAUTHORIZED => {
            return login_page(
                StatusCode::UNAUTHORIZED,
                &username,
                Some("Wrong username or password."),
                secure,
            );
        }
        Err(err) => {
            let mut page = login_page(err.status, &username, Some(&err.message), secure);
            if let Some(seconds) = err.retry_after {
                page.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
            }
            return page;
        }
    };
    let ttl = state.config.jwt_ttl;
    let token = match state.jwt.issue(&user, ttl) {
        Ok((token, _)) => token,
        Err(err) => return login_page(err.status, &username, Some(&err.message), secure),
    };
    let mut response = see_other("/");
    let flags = if secure { "; Secure" } else { "" };
    set_cookie(
        &mut response,
        &format!(
            "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{flags}",
            ttl.as_secs()
        ),
    );
    set_cookie(
        &mut response,
        &format!("{LOGIN_CSRF_COOKIE}=; Path=/login; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// The sign-in page with a fresh anti-forgery token (also set as a cookie).
fn login_page(status: StatusCode, username: &str, error: Option<&str>, secure: bool) -> Response {
    let csrf = random_secret();
    let error = error
        .map(|e| {
            format!(
                r#"<p class="error" role="alert" id="login-error">{}</p>"#,
                escape(e)
            )
        })
        .unwrap_or_default();
    let body = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Orchestrator RPA</title>
<link rel="stylesheet" href="/assets/app.css">
</head>
<body class="login-body">
<main class="login-card" id="main">
<h1>Orchestrator RPA</h1>
<p class="muted">Sign in to the control room.</p>
{error}
<form method="post" action="/login" id="login-form">
<input type="hidden" name="csrf" value="{csrf}">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" required autofocus value="{username}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" class="primary">Sign in</button>
</form>
<p class="muted small"><a href="/docs">API documentation</a></p>
</main>
</body>
</html>
"#,
        username = escape(username),
    );
    let mut response = html(status, body);
    let flags = if secure { "; Secure" } else { "" };
    set_cookie(
        &mut response,
        &format!(
            "{LOGIN_CSRF_COOKIE}={csrf}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{flags}"
        ),
    );
    response
}

/// A small page that only says what went wrong.
pub(super) fn message_page(title: &str, text: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Orchestrator RPA</title><link rel="stylesheet" href="/assets/app.css"></head>
<body class="login-body"><main class="login-card" id="main"><h1>{title}</h1><p>{text}</p>
<p><a href="/">Back to the dashboard</a></p></main></body></html>"#,
        title = escape(title),
        text = escape(text),
    )
}

fn form_fields(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn set_cookie(response: &mut Response, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Whether the request came through an HTTPS proxy, so cookies get the `Secure` flag.
fn secure(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// An `Origin` header that names a host other than the one the request was sent to.
fn foreign_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    origin == "null" || !origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn origins_of_other_hosts_are_foreign() {
        assert!(!foreign_origin(&headers(&[("host", "a:8000")])));
        assert!(!foreign_origin(&headers(&[
            ("host", "a:8000"),
            ("origin", "http://a:8000")
        ])));
        assert!(foreign_origin(&headers(&[
            ("host", "a:8000"),
            ("origin", "http://evil:8000")
        ])));
        assert!(foreign_origin(&headers(&[
            ("host", "a:8000"),
            ("origin", "null")
        ])));
    }

    #[test]
    fn form_fields_decode_percent_and_plus() {
        let fields = form_fields(b"username=ana+b&password=p%26w");
        assert_eq!(fields["username"], "ana b");
        assert_eq!(fields["password"], "p&w");
    }
}
