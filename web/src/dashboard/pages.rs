//! The page shells. Each is the common layout (navigation, the user, sign-out, the anti-forgery
//! token in a meta tag) around a `<main>` whose containers `app.js` fills from the JSON API and
//! refreshes on every live event.

use super::login::message_page;
use super::{Session, escape, html, see_other, session};
use crate::state::{AppState, with_state};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

/// Who may open a page.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Access {
    AnyUser,
    Admin,
}

/// A page: where it lives in the navigation and what its `<main>` holds.
#[derive(Debug, Clone, Copy)]
struct Page {
    /// `data-page` for `app.js`.
    id: &'static str,
    title: &'static str,
    access: Access,
    main: &'static str,
}

const DASHBOARD: Page = Page {
    id: "dashboard",
    title: "Dashboard",
    access: Access::AnyUser,
    main: include_str!("assets/dashboard.html"),
};
const TASKS: Page = Page {
    id: "tasks",
    title: "Tasks",
    access: Access::AnyUser,
    main: include_str!("assets/tasks.html"),
};
const NEW_TASK: Page = Page {
    id: "new-task",
    title: "New task",
    access: Access::AnyUser,
    main: include_str!("assets/new_task.html"),
};
const TASK: Page = Page {
    id: "task",
    title: "Task",
    access: Access::AnyUser,
    main: include_str!("assets/task.html"),
};
const ROBOTS: Page = Page {
    id: "robots",
    title: "Robots",
    access: Access::AnyUser,
    main: include_str!("assets/robots.html"),
};
const PROCESSES: Page = Page {
    id: "processes",
    title: "Processes",
    access: Access::Admin,
    main: include_str!("assets/processes.html"),
};
const USERS: Page = Page {
    id: "users",
    title: "Users",
    access: Access::Admin,
    main: include_str!("assets/users.html"),
};

const CLUSTER: Page = Page {
    id: "cluster",
    title: "Cluster",
    access: Access::Admin,
    main: include_str!("assets/cluster.html"),
};

/// The navigation, in order: (href, label, page id, admins only).
const NAV: [(&str, &str, &str, bool); 7] = [
    ("/", "Dashboard", "dashboard", false),
    ("/tasks", "Tasks", "tasks", false),
    ("/robots", "Robots", "robots", false),
    ("/processes", "Processes", "processes", true),
    ("/users", "Users", "users", true),
    ("/cluster", "Cluster", "cluster", true),
    ("/docs", "API docs", "docs", false),
];

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let page = |page: Page| move |session: Option<Session>| render(page, session, "");
    let dashboard = warp::path::end()
        .and(warp::get())
        .and(session(state.clone()))
        .map(page(DASHBOARD));
    let tasks = warp::path!("tasks")
        .and(warp::get())
        .and(session(state.clone()))
        .map(page(TASKS));
    let new_task = warp::path!("tasks" / "new")
        .and(warp::get())
        .and(session(state.clone()))
        .map(page(NEW_TASK));
    let task = warp::path!("tasks" / i64)
        .and(warp::get())
        .and(session(state.clone()))
        .and(with_state(state.clone()))
        .then(
            |id: i64, session: Option<Session>, state: AppState| async move {
                task_page(id, session, &state).await
            },
        );
    let robots = warp::path!("robots")
        .and(warp::get())
        .and(session(state.clone()))
        .map(page(ROBOTS));
    let processes = warp::path!("processes")
        .and(warp::get())
        .and(session(state.clone()))
        .map(page(PROCESSES));
    let users = warp::path!("users")
        .and(warp::get())
        .and(session(state.clone()))
        .map(page(USERS));
    let cluster = warp::path!("cluster")
        .and(warp::get())
        .and(session(state))
        .map(page(CLUSTER));
    dashboard
        .or(tasks)
        .unify()
        .or(new_task)
        .unify()
        .or(task)
        .unify()
        .or(robots)
        .unify()
        .or(processes)
        .unify()
        .or(users)
        .unify()
        .or(cluster)
        .unify()
        .boxed()
}

/// The task page, or 404 when the task does not exist or belongs to another operator.
async fn task_page(id: i64, session: Option<Session>, state: &AppState) -> Response {
    let Some(session) = session else {
        return see_other("/login");
    };
    let visible = match state.store.task(id).await {
        Ok(Some(task)) => session.user.is_admin() || task.owner_id == session.user.id,
        Ok(None) => false,
        Err(err) => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                message_page("Store unavailable", &crate::error::conceal(&err)),
            );
        }
    };
    if !visible {
        return html(
            StatusCode::NOT_FOUND,
            message_page(
                "Task not found",
                &format!("There is no task {id} you can see."),
            ),
        );
    }
    render(TASK, Some(session), &format!(r#" data-task-id="{id}""#))
}

/// The page for `session`: a redirect to sign in without one, 403 for operators on admin pages.
fn render(page: Page, session: Option<Session>, attrs: &str) -> Response {
    let Some(session) = session else {
        return see_other("/login");
    };
    if page.access == Access::Admin && !session.user.is_admin() {
        return html(
            StatusCode::FORBIDDEN,
            message_page("Admins only", "This page needs the admin role."),
        );
    }
    html(StatusCode::OK, layout(page, &session, attrs))
}

fn layout(page: Page, session: &Session, attrs: &str) -> String {
    let admin = session.user.is_admin();
    let nav: String = NAV
        .iter()
        .filter(|(_, _, _, admins)| admin || !admins)
        .map(|(href, label, id, _)| {
            let current = if *id == page.id
                || (page.id == "task" || page.id == "new-task") && *id == "tasks"
            {
                r#" aria-current="page""#
            } else {
                ""
            };
            format!(r#"<a href="{href}"{current}>{label}</a>"#)
        })
        .collect();
    let role = if admin { "admin" } else { "operator" };
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{csrf}">
<title>{title} · Orchestrator RPA</title>
<link rel="stylesheet" href="/assets/app.css">
<script src="/assets/app.js" defer></script>
</head>
<body data-page="{page}" data-role="{role}" data-user-id="{user_id}" data-username="{username}"{attrs}>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<a class="brand" href="/">Orchestrator RPA</a>
<nav aria-label="Main">{nav}</nav>
<form method="post" action="/logout" class="logout">
<input type="hidden" name="csrf" value="{csrf}">
<span class="who">{username} <span class="muted">({role})</span></span>
<button type="submit" id="logout">Sign out</button>
</form>
</header>
<main id="main">
{main}
</main>
<p class="live" id="live-status" aria-live="polite">connecting…</p>
</body>
</html>
"##,
        csrf = escape(&session.csrf),
        title = page.title,
        page = page.id,
        user_id = session.user.id,
        username = escape(&session.user.username),
        main = page.main,
    )
}
