//! The browser surface: server-rendered page shells signed in by an HttpOnly, SameSite=Strict
//! cookie, a live event stream, the embedded assets, and the API docs.
//!
//! ```text
//!   GET  /login, POST /login, POST /logout   sign-in form (anti-forgery field) and sign-out
//!   GET  / /tasks /tasks/new /tasks/{id} /robots      any signed-in user
//!   GET  /processes /users                            admins (403 for operators)
//!   GET  /events                                      server-sent events: stats every 2 s
//!   GET  /assets/{file}                               CSS and JS compiled into the binary
//!   GET  /docs, /openapi.json                         API reference (public)
//! ```
//!
//! Pages carry no data: `app.js` fills them from the JSON user API, which accepts the session
//! cookie and, for writes, the page's anti-forgery token in `X-CSRF-Token`.

mod assets;
mod events;
mod login;
pub mod openapi;
mod pages;

use crate::auth::{AuthUser, SESSION_COOKIE, cookie, csrf_token, user_of_token};
use crate::state::AppState;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

/// A signed-in browser: the user and the anti-forgery token of the session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub user: AuthUser,
    pub csrf: String,
}

/// Every browser route, combined.
pub fn dashboard(state: AppState) -> BoxedFilter<(Response,)> {
    login::routes(state.clone())
        .or(pages::routes(state.clone()))
        .unify()
        .or(events::routes(state))
        .unify()
        .or(assets::routes())
        .unify()
        .or(openapi::routes())
        .unify()
        .boxed()
}

/// The session behind the request's cookie, if it holds a valid login of an enabled user.
pub(crate) fn session(
    state: AppState,
) -> impl Filter<Extract = (Option<Session>,), Error = std::convert::Infallible> + Clone {
    warp::header::optional::<String>("cookie")
        .or(warp::any().map(|| None))
        .unify()
        .then(move |header: Option<String>| {
            let state = state.clone();
            async move {
                let token = cookie(header.as_deref(), SESSION_COOKIE)?;
                let user = user_of_token(&state, token).await.ok()?;
                Some(Session {
                    user,
                    csrf: csrf_token(token),
                })
            }
        })
}

/// `303 See Other` to `location`.
pub(crate) fn see_other(location: &str) -> Response {
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// An HTML response with the headers every page carries: a strict content security policy
/// (no inline script, nothing from other origins), no framing, no caching of signed-in pages.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
