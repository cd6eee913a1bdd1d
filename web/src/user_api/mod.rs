//! The user API under `/api/v1`: sign-in, users, processes, robots, tasks, stats and the cluster. Every route
//! but login needs `Authorization: Bearer <jwt>`; the auth filter runs after the path filters so
//! an unknown path still answers 404.

mod cluster;
pub(crate) mod login;
pub(crate) mod processes;
mod results;
pub(crate) mod robots;
pub(crate) mod stats;
mod tasks;
pub(crate) mod throughput;
pub(crate) mod users;

use crate::state::AppState;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// Pagination parameters shared by the listings (query fields `offset`, `limit`; serde's
/// `flatten` cannot be used with query strings, so each query struct carries both).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    pub offset: i64,
    pub limit: i64,
}

pub(crate) fn default_limit() -> i64 {
    50
}

impl Page {
    /// Validates the page; limits run from 1 to 1,000.
    pub fn checked(self) -> Result<Page, crate::error::ApiError> {
        if self.offset < 0 || !(1..=1000).contains(&self.limit) {
            return Err(crate::error::ApiError::bad_request(
                "invalid_page",
                "offset must be >= 0 and limit between 1 and 1000",
            ));
        }
        Ok(self)
    }
}

/// Every user route, combined.
pub fn user_api(state: AppState) -> BoxedFilter<(Response,)> {
    login::routes(state.clone())
        .or(users::routes(state.clone()))
        .unify()
        .or(processes::routes(state.clone()))
        .unify()
        .or(robots::routes(state.clone()))
        .unify()
        .or(tasks::routes(state.clone()))
        .unify()
        .or(results::routes(state.clone()))
        .unify()
        .or(throughput::routes(state.clone()))
        .unify()
        .or(stats::routes(state.clone()))
        .unify()
        .or(cluster::routes(state))
        .unify()
        .boxed()
}
