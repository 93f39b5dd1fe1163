//! `GET /api/local/history`: the upload and meter sync runs of the last hours, for the page's
//! chart (queue size before and after each upload, the upload rate, changes per meter sync).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiError;
use crate::data::synclog::{self, History};
use crate::service::Service;

/// `/api/local/history` options.
#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// The window, in hours back from now: 1 to 168 (default 24).
    pub hours: Option<i64>,
}

/// The runs of the last `hours`, oldest first (at most 2,880 of each kind, the newest).
#[utoipa::path(get, path = "/api/local/history", params(HistoryQuery), responses(
    (status = 200, body = History), (status = 400, body = super::ErrorBody), (status = 503, body = super::ErrorBody)))]
pub async fn history(
    State(service): State<Service>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let hours = query.hours.unwrap_or(24);
    if !(1..=synclog::MAX_HISTORY_HOURS).contains(&hours) {
        return Err(ApiError::bad_request(format!(
            "hours={hours} is out of range: give 1 to {}",
            synclog::MAX_HISTORY_HOURS
        )));
    }
    let history = service
        .history(hours)
        .await
        .map_err(|e| ApiError::database("history", &e))?;
    Ok(Json(history))
}
