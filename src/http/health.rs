//! `/healthz` (the process answers), `/readyz` (keys loaded, listeners up,
//! last reloads good) and `/metrics` (Prometheus text format). Never cached.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::AppError;

const ALLOW: &str = "GET, HEAD";

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    super::uncached(status, "application/json", body.to_string())
}

/// `None` for GET and HEAD, else the 405 to answer.
fn only_get(request: &Request) -> Option<Response> {
    let method = request.method();
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    Some(
        AppError::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed here; read it with GET or HEAD"),
        )
        .with_allow(ALLOW)
        .into_response(),
    )
}

pub fn healthz(request: &Request) -> Response {
    if let Some(r) = only_get(request) {
        return r;
    }
    json(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

pub fn readyz(state: &AppState, request: &Request) -> Response {
    if let Some(r) = only_get(request) {
        return r;
    }
    match state.health.readiness(&state.issuers) {
        Ok(()) => json(
            StatusCode::OK,
            serde_json::json!({
                "status": "ready",
                "clusters": state.issuers.all().len(),
            }),
        ),
        Err(problems) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "not ready", "problems": problems }),
        ),
    }
}

pub fn metrics(state: &AppState, request: &Request) -> Response {
    if let Some(r) = only_get(request) {
        return r;
    }
    let body = state.metrics.render(&state.issuers, &state.health);
    super::uncached(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        body,
    )
}
