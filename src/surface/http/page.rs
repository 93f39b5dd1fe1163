//! The Sync Status page: its files embedded in the binary (no CDN, no internet at run time),
//! the script and style separate so that the page's policy allows no inline code. The chart
//! library (uPlot) is installed from npm and copied into `assets/vendor/` at commit time
//! (`assets/vendor/package.json`); a test checks the copy against the npm package.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, PAGE_POLICY};

const PAGE: &str = include_str!("../../../assets/index.html");

/// The files under `/assets/`: name, content type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "page.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../assets/page.js"),
    ),
    (
        "page.css",
        "text/css; charset=utf-8",
        include_str!("../../../assets/page.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../assets/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../../assets/vendor/uPlot.min.css"),
    ),
];

fn page_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn page() -> Response {
    page_file("text/html; charset=utf-8", PAGE)
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => page_file(content_type, body),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no asset /assets/{file}; see /api/openapi.json"),
        )
        .into_response(),
    }
}
