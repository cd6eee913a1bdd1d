//! `GET /openapi.json`: the OpenAPI 3.1 description of every HTTP route of a node, and `GET /docs`,
//! which renders it in the browser (with `docs.js`, no CDN) next to copy-paste robot examples.
//! [`ROUTES`] is the one list of operations; a test checks it against the routes the node serves.
//! Request and response schemas are derived from the Rust types the handlers read and write
//! (utoipa's `ToSchema`), collected in [`Schemas`].

use super::html;
use crate::robot_api::items::{ActionBody, PulseBody};
use crate::seed_api::views::{SeedItem, SeedRobot, SeedTask, SeedValue};
use crate::user_api::login::Login;
use crate::user_api::processes::{CreateProcess, PatchProcess};
use crate::user_api::robots::{CreateRobot, PatchRobot};
use crate::user_api::users::{CreateUser, PatchUser};
use crate::views::*;
use serde_json::{Map, Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

/// Which credentials an operation takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Auth {
    Public,
    /// `Authorization: Bearer <jwt>` or the browser's session cookie.
    User,
    /// Like `User`, and only for admins.
    Admin,
    /// `Authorization: Token <robot token>` (or `Bearer`).
    Robot,
    /// The browser's session cookie.
    Browser,
}

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// OpenAPI path template, `{id}` for path parameters.
    pub path: &'static str,
    pub tag: &'static str,
    pub auth: Auth,
    pub summary: &'static str,
    /// Query parameters: (name, type, description).
    pub query: &'static [(&'static str, &'static str, &'static str)],
    /// Example request body (JSON text), or "" for none; "csv" for a CSV upload.
    pub body: &'static str,
    /// Schema of the JSON request body: a type in [`Schemas`], or "" for none.
    pub request: &'static str,
    /// What a success answers: a type in [`Schemas`], `[Type]` for a JSON array of it, `csv`,
    /// `html`, or "" for no body.
    pub response: &'static str,
    /// Success status.
    pub ok: u16,
}

const PAGE: &[(&str, &str, &str)] = &[
    ("offset", "integer", "rows to skip (default 0)"),
    ("limit", "integer", "rows to return, 1 to 1000 (default 50)"),
];

const fn route(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    auth: Auth,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        tag,
        auth,
        summary,
        query: &[],
        body: "",
        request: "",
        response: "",
        ok: 200,
    }
}

/// Every operation the node serves.
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    Route { response: "HealthView", ..route("get", "/healthz", "health", Auth::Public, "200 once the node is ready and its store answers") },
    Route { request: "Login", response: "LoginView", body: r#"{"username": "admin", "password": "secret"}"#, ..route("post", "/api/v1/auth/login", "users", Auth::Public, "Exchange a username and password for a JWT") },
    Route { ok: 204, ..route("post", "/api/v1/auth/logout", "users", Auth::User, "Sign out: every token of the user issued until now is revoked") },
    Route { response: "UserView", ..route("get", "/api/v1/auth/me", "users", Auth::User, "The signed-in user") },
    Route { request: "CreateUser", response: "UserView", body: r#"{"username": "ana", "password": "a long passphrase", "role": "operator"}"#, ok: 201, ..route("post", "/api/v1/users", "users", Auth::Admin, "Create a user (role admin or operator)") },
    Route { response: "[UserView]", ..route("get", "/api/v1/users", "users", Auth::Admin, "List users") },
    Route { request: "PatchUser", response: "UserView", body: r#"{"password": "new passphrase", "role": "admin", "disabled": false}"#, ..route("patch", "/api/v1/users/{id}", "users", Auth::Admin, "Change a user's password, role or disabled flag") },
    Route { request: "CreateProcess", response: "ProcessView", body: r#"{"title": "Invoices", "description": "Post invoices to the ERP", "max_attempts": 3, "on_lost": "retry"}"#, ok: 201, ..route("post", "/api/v1/processes", "processes", Auth::Admin, "Create a process") },
    Route { response: "[ProcessView]", ..route("get", "/api/v1/processes", "processes", Auth::User, "List processes") },
    Route { response: "ProcessView", ..route("get", "/api/v1/processes/{id}", "processes", Auth::User, "One process") },
    Route { request: "PatchProcess", response: "ProcessView", body: r#"{"enabled": false, "description": "paused for the audit"}"#, ..route("patch", "/api/v1/processes/{id}", "processes", Auth::Admin, "Enable or disable a process, change its description or policy") },
    Route { request: "CreateRobot", response: "RobotView", body: r#"{"name": "uipath-01", "platform": "uipath", "capacity": 4, "processes": [1]}"#, ok: 201, ..route("post", "/api/v1/robots", "robots", Auth::Admin, "Create a robot; the answer carries its token, shown only here") },
    Route { response: "[RobotView]", ..route("get", "/api/v1/robots", "robots", Auth::User, "List robots with status, connection, load and last pulse") },
    Route { response: "RobotView", ..route("get", "/api/v1/robots/{id}", "robots", Auth::User, "One robot") },
    Route { request: "PatchRobot", response: "RobotView", body: r#"{"capacity": 8, "processes": [1, 2], "status": "INACTIVE"}"#, ..route("patch", "/api/v1/robots/{id}", "robots", Auth::Admin, "Change a robot's name, platform, capacity, processes or status") },
    Route { ok: 204, ..route("delete", "/api/v1/robots/{id}", "robots", Auth::Admin, "Delete a robot; its leased items go back to PENDING") },
    Route { response: "RobotView", ..route("post", "/api/v1/robots/{id}/token", "robots", Auth::Admin, "Rotate a robot's token; the old one stops working at once") },
    Route { response: "TaskView", query: &[("process_id", "integer", "the process the items belong to (required for a raw CSV body)"), ("priority", "integer", "higher runs first (default 0)"), ("filename", "string", "name to show for the upload")], body: "csv", ok: 201, ..route("post", "/api/v1/tasks", "tasks", Auth::User, "Upload a CSV (raw text/csv body, or multipart/form-data with fields process_id and file); all or nothing") },
    Route { response: "TaskPage", query: &[("status", "string", "CREATED, STARTED, COMPLETED, CANCELLED"), ("process_id", "integer", "only this process"), ("offset", "integer", "rows to skip"), ("limit", "integer", "rows to return, 1 to 1000")], ..route("get", "/api/v1/tasks", "tasks", Auth::User, "List tasks (operators see their own), newest first") },
    Route { response: "TaskView", ..route("get", "/api/v1/tasks/{id}", "tasks", Auth::User, "A task with its counts by item status and progress") },
    Route { response: "ItemPage", query: &[("status", "string", "PENDING, ASSIGNED, STARTED, COMPLETED, FAILED, ABANDONED"), ("offset", "integer", "rows to skip"), ("limit", "integer", "rows to return, 1 to 1000")], ..route("get", "/api/v1/tasks/{id}/items", "tasks", Auth::User, "A task's items in file order") },
    Route { response: "csv", ..route("get", "/api/v1/tasks/{id}/results.csv", "tasks", Auth::User, "Download the task as CSV: the original columns, then status, robot_id, attempt, observation, output, fail_kind and timestamps") },
    Route { response: "TaskView", ..route("post", "/api/v1/tasks/{id}/cancel", "tasks", Auth::User, "Cancel a running task; leased items are revoked") },
    Route { response: "TaskView", ..route("post", "/api/v1/tasks/{id}/retry-failed", "tasks", Auth::User, "Put FAILED and ABANDONED items back to PENDING") },
    Route { response: "StatsView", ..route("get", "/api/v1/stats", "stats", Auth::User, "Robots (total, active, connected), tasks by status, items by status") },
    Route { response: "ThroughputView", query: &[("minutes", "integer", "how many minutes back, 1 to 1440 (default 60)")], ..route("get", "/api/v1/stats/throughput", "stats", Auth::User, "Items robots finished per minute") },
    Route { response: "ClusterView", ..route("get", "/api/v1/cluster", "stats", Auth::Admin, "The nodes sharing this store: addresses, incarnation, last heartbeat, alive, robots connected, free slots (load summary), items leased per minute, and which node does housekeeping") },
    Route { request: "PulseBody", response: "PulseView", body: r#"{"status": "ACTIVE"}"#, ..route("post", "/api/v1/robot/pulse", "robot v1", Auth::Robot, "Pulse (optionally set ACTIVE or INACTIVE); answers the pulse interval to keep") },
    Route { response: "[LeasedItemView]", query: &[("max", "integer", "most items to lease (default: the robot's capacity)"), ("wait", "number", "seconds to wait for work, long poll (0 to 60; the answer comes within half the pulse timeout)")], ..route("post", "/api/v1/robot/items/claim", "robot v1", Auth::Robot, "Lease up to max PENDING items") },
    Route { request: "ActionBody", response: "ItemStateView", body: r#"{"lease_id": "..."}"#, ..route("post", "/api/v1/robot/items/{id}/start", "robot v1", Auth::Robot, "Mark a leased item STARTED") },
    Route { request: "ActionBody", response: "ItemStateView", body: r#"{"lease_id": "..."}"#, ..route("post", "/api/v1/robot/items/{id}/renew", "robot v1", Auth::Robot, "Extend the lease of a long-running item") },
    Route { request: "ActionBody", response: "ItemStateView", body: r#"{"lease_id": "...", "observation": "posted", "output": {"invoice": "F-1"}}"#, ..route("post", "/api/v1/robot/items/{id}/complete", "robot v1", Auth::Robot, "Complete an item with an observation and output") },
    Route { request: "ActionBody", response: "ItemStateView", body: r#"{"lease_id": "...", "kind": "business", "message": "customer unknown"}"#, ..route("post", "/api/v1/robot/items/{id}/fail", "robot v1", Auth::Robot, "Fail an item (kind business: final; application: retried per the process)") },
    Route { request: "ActionBody", response: "ItemStateView", body: r#"{"lease_id": "..."}"#, ..route("post", "/api/v1/robot/items/{id}/release", "robot v1", Auth::Robot, "Hand an unstarted item back") },
    Route { query: &[("token", "string", "the robot token, for clients that cannot set headers")], ok: 101, ..route("get", "/api/v1/robot/ws", "robot v1", Auth::Robot, "WebSocket: the server pushes items up to capacity; the robot sends ready, pulse, started, renew, completed, failed, release") },
    Route { response: "SeedRobot", query: &[("robot_id", "integer", "the calling robot's id")], ..route("get", "/api/robots/", "seed-compatible", Auth::Robot, "The calling robot (prototype API; also without the trailing slash)") },
    Route { query: &[("robot_id", "integer", "the calling robot's id"), ("status", "string", "ACTIVE or INACTIVE")], ..route("patch", "/api/robots/", "seed-compatible", Auth::Robot, "Set the robot's status") },
    Route { response: "[SeedTask]", query: &[("robot_id", "integer", "the calling robot's id")], ..route("get", "/api/tasks/", "seed-compatible", Auth::Robot, "Tasks with the items assigned to the robot (item_set)") },
    Route { query: &[("robot_id", "integer", "the calling robot's id"), ("task_id", "integer", "the task"), ("status", "string", "CREATED, STARTED, COMPLETED or ERROR")], ..route("patch", "/api/tasks/", "seed-compatible", Auth::Robot, "Report a task's status") },
    Route { query: &[("robot_id", "integer", "the calling robot's id"), ("item_id", "integer", "the item"), ("status", "string", "STARTED, COMPLETED or FAILED"), ("observation", "string", "what the robot saw")], ..route("patch", "/api/items/", "seed-compatible", Auth::Robot, "Report an item's status") },
    Route { response: "html", ..route("get", "/login", "browser", Auth::Public, "The sign-in page") },
    Route { body: "form", ok: 303, ..route("post", "/login", "browser", Auth::Public, "Sign in (form fields username, password, csrf); sets the HttpOnly session cookie") },
    Route { body: "form", ok: 303, ..route("post", "/logout", "browser", Auth::Browser, "Sign out (form field csrf)") },
    Route { response: "html", ..route("get", "/", "browser", Auth::Browser, "Dashboard page") },
    Route { response: "html", ..route("get", "/tasks", "browser", Auth::Browser, "Tasks page") },
    Route { response: "html", ..route("get", "/tasks/new", "browser", Auth::Browser, "Upload page") },
    Route { response: "html", ..route("get", "/tasks/{id}", "browser", Auth::Browser, "Task page") },
    Route { response: "html", ..route("get", "/robots", "browser", Auth::Browser, "Robots page") },
    Route { response: "html", ..route("get", "/processes", "browser", Auth::Browser, "Processes page (admins)") },
    Route { response: "html", ..route("get", "/users", "browser", Auth::Browser, "Users page (admins)") },
    Route { response: "html", ..route("get", "/cluster", "browser", Auth::Browser, "Cluster page: the nodes sharing the store (admins)") },
    route("get", "/events", "browser", Auth::Browser, "Server-sent events: a tick with stats, throughput and running tasks every 2 s"),
    Route { response: "html", ..route("get", "/docs", "browser", Auth::Public, "This documentation") },
    route("get", "/openapi.json", "browser", Auth::Public, "The OpenAPI description"),
];

pub(super) fn routes() -> BoxedFilter<(Response,)> {
    let spec = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| warp::reply::Reply::into_response(warp::reply::json(&spec())));
    let docs = warp::path!("docs")
        .and(warp::get())
        .map(|| html(StatusCode::OK, docs_page()));
    spec.or(docs).unify().boxed()
}

/// The robot examples shown on `/docs`; the Python one is run against a node by the tests.
pub const PYTHON_ROBOT: &str = include_str!("assets/robot_example.py");
pub const POWERSHELL_ROBOT: &str = include_str!("assets/robot_example.ps1");

fn docs_page() -> String {
    include_str!("assets/docs.html")
        .replace("{{python}}", &super::escape(PYTHON_ROBOT))
        .replace("{{powershell}}", &super::escape(POWERSHELL_ROBOT))
}

/// Every type a route's `request` or `response` names (and what those refer to).
#[derive(Debug, utoipa::OpenApi)]
#[openapi(components(schemas(
    ErrorView,
    ErrorDetail,
    DetailView,
    HealthView,
    Login,
    LoginView,
    UserView,
    CreateUser,
    PatchUser,
    ProcessView,
    CreateProcess,
    PatchProcess,
    RobotView,
    CreateRobot,
    PatchRobot,
    TaskView,
    TaskPage,
    ItemView,
    ItemPage,
    StatsView,
    RobotFigures,
    TaskFigures,
    ThroughputView,
    MinuteView,
    ClusterView,
    NodeView,
    HintsView,
    PulseBody,
    PulseView,
    LeasedItemView,
    ActionBody,
    ItemStateView,
    SeedRobot,
    SeedTask,
    SeedItem,
    SeedValue,
)))]
pub struct Schemas;

fn schemas() -> Value {
    let components = <Schemas as utoipa::OpenApi>::openapi()
        .components
        .expect("Schemas lists components");
    serde_json::to_value(components.schemas).expect("schemas serialize")
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The OpenAPI 3.1 document.
pub fn spec() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = operation(r);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Orchestrator RPA",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Bulk work uploaded as CSV, parcelled out item by item to automation robots. \
                            Errors are JSON {\"error\": {\"code\", \"message\"}} (the seed-compatible API keeps \
                            the prototype's {\"detail\"}).",
        },
        "servers": [{ "url": "/" }],
        "tags": [
            { "name": "health" }, { "name": "users" }, { "name": "processes" }, { "name": "robots" },
            { "name": "tasks" }, { "name": "stats" },
            { "name": "robot v1", "description": "For robots: REST with leases, and the WebSocket push channel" },
            { "name": "seed-compatible", "description": "The prototype's robot API, unchanged for existing robots" },
            { "name": "browser", "description": "Pages and events of the dashboard" },
        ],
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "session": { "type": "apiKey", "in": "cookie", "name": crate::auth::SESSION_COOKIE },
                "robotToken": { "type": "apiKey", "in": "header", "name": "Authorization",
                                "description": "Token <robot token>" },
            },
            "schemas": schemas(),
        },
        "paths": paths,
    })
}

fn operation(r: &Route) -> Value {
    let mut parameters: Vec<Value> = path_params(r.path)
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "integer" } }))
        .collect();
    let query = if r.query.is_empty() && r.path.ends_with("/items") {
        PAGE
    } else {
        r.query
    };
    parameters.extend(query.iter().map(|(name, kind, description)| {
        json!({ "name": name, "in": "query", "required": false, "description": description,
                "schema": { "type": kind } })
    }));
    let security = match r.auth {
        Auth::Public => json!([]),
        Auth::User | Auth::Admin => json!([{ "bearer": [] }, { "session": [] }]),
        Auth::Robot => json!([{ "robotToken": [] }]),
        Auth::Browser => json!([{ "session": [] }]),
    };
    let mut responses = Map::new();
    responses.insert(r.ok.to_string(), success(r));
    // The seed-compatible API keeps the prototype's error shape.
    let error = reference(if r.tag == "seed-compatible" {
        "DetailView"
    } else {
        "ErrorView"
    });
    for (status, description) in error_statuses(r) {
        responses.insert(
            status.to_string(),
            json!({ "description": description,
                    "content": { "application/json": { "schema": error } } }),
        );
    }
    let mut op = json!({
        "tags": [r.tag],
        "summary": r.summary,
        "operationId": format!("{} {}", r.method, r.path),
        "parameters": parameters,
        "security": security,
        "responses": responses,
    });
    match r.body {
        "" => {}
        "csv" => {
            op["requestBody"] = json!({ "required": true, "content": {
                "text/csv": { "schema": { "type": "string" },
                              "example": "linea,valor,field_name\n1,100,amount\n2,250,amount\n" },
                "multipart/form-data": { "schema": { "type": "object", "properties": {
                    "process_id": { "type": "integer" }, "file": { "type": "string", "format": "binary" } } } },
            } });
        }
        "form" => {
            op["requestBody"] = json!({ "required": true, "content": {
                "application/x-www-form-urlencoded": { "schema": { "type": "object" } } } });
        }
        example => {
            let example: Value = serde_json::from_str(example).unwrap_or(Value::Null);
            op["requestBody"] = json!({ "required": r.request != "PulseBody", "content": {
                "application/json": { "schema": reference(r.request), "example": example } } });
        }
    }
    op
}

/// The success answer of `r`, with its schema.
fn success(r: &Route) -> Value {
    let content = match r.response {
        "" => return json!({ "description": "success" }),
        "csv" => json!({ "text/csv": { "schema": { "type": "string" } } }),
        "html" => json!({ "text/html": { "schema": { "type": "string" } } }),
        name => {
            let schema = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
                Some(item) => json!({ "type": "array", "items": reference(item) }),
                None => reference(name),
            };
            json!({ "application/json": { "schema": schema } })
        }
    };
    json!({ "description": "success", "content": content })
}

fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
}

fn error_statuses(r: &Route) -> Vec<(u16, &'static str)> {
    let mut out = Vec::new();
    if !r.body.is_empty() || !r.query.is_empty() {
        out.push((400, "invalid input"));
    }
    match r.auth {
        Auth::Public => {}
        Auth::Browser => out.push((401, "not signed in (pages redirect to /login)")),
        Auth::Admin => {
            out.push((401, "missing, expired or wrong kind of credentials"));
            out.push((403, "needs the admin role"));
        }
        Auth::User | Auth::Robot => {
            out.push((401, "missing, expired or wrong kind of credentials"))
        }
    }
    if r.path.contains('{') {
        out.push((404, "not found"));
    }
    if r.method != "get" && r.tag != "browser" {
        out.push((409, "the change conflicts with the current state"));
    }
    if r.body == "csv" {
        out.push((413, "the upload is over the configured limit"));
        out.push((422, "the CSV is malformed; the message names the line"));
    } else if !r.request.is_empty() {
        out.push((413, "the body is over the configured limit"));
        out.push((422, "a field is over its size or nesting limit"));
    }
    if r.path == "/api/v1/auth/login" {
        out.push((429, "too many failed sign-ins; see Retry-After"));
    }
    out.push((503, "the store does not answer or dispatch is restarting"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_spec_once_with_its_path_parameters() {
        let spec = spec();
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} listed twice",
                r.method,
                r.path
            );
            let op = &spec["paths"][r.path][r.method];
            assert_eq!(op["summary"], r.summary);
            for name in path_params(r.path) {
                assert!(
                    op["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["name"] == name)),
                    "{} {} lacks path parameter {name}",
                    r.method,
                    r.path
                );
            }
        }
    }

    #[test]
    fn every_named_schema_is_derived_and_every_json_body_has_one() {
        let schemas = schemas();
        for r in ROUTES {
            let response = r.response.trim_start_matches('[').trim_end_matches(']');
            for name in [r.request, response] {
                if !["", "csv", "html"].contains(&name) {
                    assert!(
                        schemas.get(name).is_some(),
                        "{} {} names {name}, which Schemas lacks",
                        r.method,
                        r.path
                    );
                }
            }
            let json_body = !["", "csv", "form"].contains(&r.body);
            assert_eq!(
                json_body,
                !r.request.is_empty(),
                "{} {}: a JSON body needs a request schema",
                r.method,
                r.path
            );
        }
        // Derived, not hand-written: a field of the Rust type shows up with its own type.
        assert_eq!(
            schemas["RobotView"]["properties"]["capacity"]["type"],
            "integer"
        );
        assert_eq!(
            schemas["ActionBody"]["properties"]["lease_id"]["type"],
            "string"
        );
        // A robot's `output` is any JSON, not only objects.
        for owner in ["ActionBody", "ItemView", "ItemStateView"] {
            let output = &schemas[owner]["properties"]["output"];
            assert!(output.is_object(), "{owner} documents output");
            assert!(
                output.get("type").is_none() && output.get("$ref").is_none(),
                "{owner}.output is narrowed: {output}"
            );
        }
    }

    #[test]
    fn json_examples_parse() {
        for r in ROUTES
            .iter()
            .filter(|r| !["", "csv", "form"].contains(&r.body))
        {
            assert!(
                serde_json::from_str::<Value>(r.body).is_ok(),
                "{} {} has a broken example",
                r.method,
                r.path
            );
        }
    }
}
