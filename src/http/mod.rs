//! The HTTP surface: routes requests to a cluster by the path of its issuer
//! URL, then to discovery, JWKS or the TokenRequest API.
//!
//! Calls `issuer` and reads the key set it publishes; never imports
//! `keys::rotation` or a crypto crate.

mod documents;
pub mod kube;
mod review;
mod token;
pub mod token_request;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::error::AppError;
use crate::issuer::auth::ApiClients;
use crate::issuer::discovery::{DISCOVERY_PATH, JWKS_PATH};
use crate::issuer::Issuers;

/// Shared by every request; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub issuers: Arc<Issuers>,
    pub clients: Arc<ApiClients>,
    /// Where slow (RSA) signatures run, one thread per core.
    pub signing: Arc<crate::signing::SigningThreads>,
}

impl AppState {
    pub fn new(issuers: Issuers, clients: ApiClients) -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(AppState {
            issuers: Arc::new(issuers),
            clients: Arc::new(clients),
            signing: crate::signing::SigningThreads::start(cores)?,
        })
    }
}

/// The application router. One handler does the routing itself: with
/// thousands of clusters at arbitrary issuer paths, one hash lookup on the
/// issuer path beats a route table that grows with them.
pub fn app(state: AppState) -> Router {
    Router::new().fallback(route).with_state(state)
}

async fn route(State(state): State<AppState>, request: Request) -> Response {
    let path = request.uri().path();
    if let Some(prefix) = path.strip_suffix(DISCOVERY_PATH) {
        return match state.issuers.by_path(prefix) {
            Some(cluster) => documents::discovery(cluster, &request),
            None => not_found(path),
        };
    }
    if let Some(prefix) = path.strip_suffix(JWKS_PATH) {
        return match state.issuers.by_path(prefix) {
            Some(cluster) => documents::jwks(cluster, &request),
            None => not_found(path),
        };
    }
    if let Some(prefix) = path.strip_suffix(review::PATH) {
        return match state.issuers.by_path(prefix) {
            Some(cluster) => {
                let cluster = cluster.clone();
                review::create(&state, &cluster, request)
                    .await
                    .unwrap_or_else(IntoResponse::into_response)
            }
            None => no_cluster(),
        };
    }
    if let Some(target) = token::TokenPath::parse(path) {
        return match state.issuers.by_path(target.prefix) {
            Some(cluster) => {
                let target = target.owned();
                let cluster = cluster.clone();
                token::create(&state, &cluster, target, request)
                    .await
                    .unwrap_or_else(IntoResponse::into_response)
            }
            None => no_cluster(),
        };
    }
    not_found(path)
}

fn no_cluster() -> Response {
    AppError::kube(
        StatusCode::NOT_FOUND,
        "the server could not find the requested resource: no cluster has an issuer at this path",
    )
    .into_response()
}

fn not_found(path: &str) -> Response {
    let shown = serde_json::to_string(path).unwrap_or_default();
    AppError::plain(
        StatusCode::NOT_FOUND,
        format!(
            "nothing is served at {shown}: discovery is at <issuer path>{DISCOVERY_PATH} and the JWKS at <issuer path>{JWKS_PATH}"
        ),
    )
    .into_response()
}
