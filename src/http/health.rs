//! `/healthz` (the process answers), `/readyz` (keys loaded, listeners up,
//! last reloads good) and `/metrics` (Prometheus text format). Never cached.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use std::sync::Arc;

use super::{AppState, Face};
use crate::error::AppError;

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    super::uncached(status, "application/json", body.to_string())
}

/// The 405 of a read-only route, as axum's method routing falls back to it.
/// The Allow header is ours, spelled as before; axum only adds one when the
/// answer has none.
pub async fn not_allowed(method: Method) -> Response {
    AppError::plain(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed here; read it with GET or HEAD"),
    )
    .with_allow("GET, HEAD")
    .into_response()
}

pub fn healthz() -> Response {
    json(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

/// On the public face the problems are summaries: file paths and OS errors
/// are for the operator (the API listener, the logs), not the internet.
pub fn readyz(state: &AppState, face: Face) -> Response {
    let issuers = state.issuers.load();
    let mut ready = state.health.readiness(&issuers);
    if face != Face::Public {
        let config = state.health.config_problems();
        if !config.is_empty() {
            ready = Err(ready
                .err()
                .unwrap_or_default()
                .into_iter()
                .chain(config)
                .collect());
        }
    }
    match ready {
        Ok(()) => json(
            StatusCode::OK,
            serde_json::json!({
                "status": "ready",
                "clusters": issuers.all().len(),
            }),
        ),
        Err(problems) => {
            let shown: Vec<String> = problems
                .iter()
                .map(|p| {
                    if face == Face::Public {
                        p.summary.clone()
                    } else {
                        p.full()
                    }
                })
                .collect();
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "status": "not ready", "problems": shown }),
            )
        }
    }
}

/// Rendering walks every cluster's keys (thousands of them in a big
/// fleet): it runs on the blocking pool, not on the threads serving JWKS.
pub async fn metrics(state: &Arc<AppState>) -> Response {
    let shared = state.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        shared
            .metrics
            .render(&shared.issuers.load(), &shared.health, shared.clock.now())
    })
    .await;
    match rendered {
        Ok(body) => super::uncached(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            body,
        ),
        Err(e) => {
            tracing::error!(error = %e, "rendering the metrics failed");
            AppError::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the metrics could not be rendered",
            )
            .into_response()
        }
    }
}
