//! Query-string parsing with errors that say which parameter is wrong.

use crate::error::ApiError;
use serde::de::DeserializeOwned;
use warp::{Filter, Rejection};

/// Parses the query string (absent = empty) into `T`, rejecting with a 400 that names the problem.
pub fn query<T: DeserializeOwned + Send + 'static>()
-> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move {
            let pairs = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
            serde_path_to_error::deserialize::<_, T>(pairs).map_err(|e| {
                let field = e.path().to_string();
                let message = if field == "." {
                    format!("invalid query parameters: {}", e.inner())
                } else {
                    format!("query parameter {field}: {}", e.inner())
                };
                warp::reject::custom(ApiError::bad_request("invalid_query", message))
            })
        })
}
