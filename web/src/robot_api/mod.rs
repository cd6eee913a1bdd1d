//! The robot REST API v1 under `/api/v1/robot`: `Authorization: Token <robot token>` (`Bearer`
//! accepted too). Every authenticated request counts as a pulse.
//!
//! ```text
//!   POST /api/v1/robot/pulse                 {"status"?}        → robot state, pulse interval
//!   POST /api/v1/robot/items/claim?max&wait                     → leased items (long poll)
//!   POST /api/v1/robot/items/{id}/start|renew|complete|fail|release {"lease_id", ...}
//!   GET  /api/v1/robot/ws  (WebSocket; ?token= for tools that cannot set headers)
//! ```

pub mod auth;
pub(crate) mod items;
mod ws;

use crate::state::AppState;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// Every robot v1 route, combined.
pub fn robot_api(state: AppState) -> BoxedFilter<(Response,)> {
    items::routes(state.clone())
        .or(ws::routes(state))
        .unify()
        .boxed()
}
