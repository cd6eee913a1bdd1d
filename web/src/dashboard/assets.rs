//! `GET /assets/{file}`: the dashboard's stylesheet and scripts, compiled into the binary. Nothing
//! is fetched from another origin at run time.

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

/// Every embedded asset: (file name, content type, contents).
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "docs.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/docs.js"),
    ),
];

pub(super) fn routes() -> BoxedFilter<(Response,)> {
    warp::path!("assets" / String)
        .and(warp::get())
        .map(|name: String| asset(&name))
        .boxed()
}

fn asset(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(file, _, _)| *file == name) else {
        return crate::error::ApiError::not_found(format!("no asset {name}")).into_response();
    };
    let mut response = Response::new((*body).into());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Short caching: assets change with the binary and carry no version in their names.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
