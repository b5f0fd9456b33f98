//! The HTTP surface: routes requests to a cluster by the path of its issuer
//! URL (one hash probe, axum's fallback), then to discovery, JWKS, the
//! TokenRequest API or the external signer's endpoints; health, metrics and
//! the admin API (`admin`, at fixed paths) are ordinary axum routes.
//!
//! Calls `issuer` and reads the key set it publishes; never imports
//! `keys::rotation` or a crypto crate.

pub mod admin;
mod documents;
mod health;
pub mod kube;
mod review;
mod sign;
mod token;
pub mod token_request;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;

use crate::error::AppError;
use crate::health::Health;
use crate::issuer::auth::ApiClients;
use crate::issuer::discovery::{DISCOVERY_PATH, JWKS_PATH};
use crate::issuer::{Cluster, Issuers, LiveIssuers};
use crate::metrics::{Metrics, MintOutcome, Route};

/// Shared by every request; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The clusters served now, replaced whole when clusters come or go.
    pub issuers: Arc<LiveIssuers>,
    /// The API clients, replaced whole when the config is reloaded.
    pub clients: Arc<ArcSwap<ApiClients>>,
    /// Turns for slow (RSA) signatures, one per runtime worker.
    pub signing: Arc<crate::signing::SigningTurns>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// How long a minting or review request may take.
    pub request_timeout: Duration,
    /// The wall clock tokens are stamped with.
    pub clock: crate::clock::SharedClock,
    /// The admin API's store and settings (`None`: no admin API, as in
    /// tests that build a state by hand).
    pub admin: Option<Arc<admin::Admin>>,
    /// The etcd store this server keeps its keys in (`None`: the keys dir).
    pub store: Option<Arc<crate::etcd::Replica>>,
}

impl AppState {
    pub fn new(
        issuers: Issuers,
        clients: ApiClients,
        next_due: crate::metrics::NextDue,
        clock: crate::clock::SharedClock,
    ) -> std::io::Result<Self> {
        // One signing turn per worker thread of the runtime serving us.
        let workers = tokio::runtime::Handle::try_current().map_or_else(
            |_| std::thread::available_parallelism().map_or(1, |n| n.get()),
            |runtime| runtime.metrics().num_workers(),
        );
        Ok(AppState {
            issuers: Arc::new(ArcSwap::from_pointee(issuers)),
            clients: Arc::new(ArcSwap::from_pointee(clients)),
            signing: Arc::new(crate::signing::SigningTurns::new(workers)),
            metrics: Arc::new(Metrics::new(next_due).map_err(std::io::Error::other)?),
            health: Arc::new(Health::default()),
            request_timeout: crate::config::Limits::default().request_timeout,
            clock,
            admin: None,
            store: None,
        })
    }
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Face {
    /// Everything: one listener for the public face and the issuance API.
    All,
    /// Discovery, JWKS and health: what may face the internet.
    Public,
    /// The issuance API (minting, TokenReview), metrics, health, and the
    /// documents too, for verifiers inside the network.
    Api,
}

/// The application router with every route (one listener).
pub fn app(state: AppState) -> Router {
    app_for(state, Face::All)
}

/// The router of a listener serving `face`. Health and metrics sit at fixed
/// paths and are ordinary axum routes. Everything else is found by the
/// issuer path, in the fallback: with thousands of clusters at arbitrary
/// issuer paths, one hash lookup on the path beats a route table that grows
/// with them.
pub fn app_for(state: AppState, face: Face) -> Router {
    // One Arc per request to clone, not one per shared part.
    let state = Arc::new(state);
    let mut router = Router::new()
        .route(
            "/healthz",
            read_only(&state, Route::Healthz, get(|| async { health::healthz() })),
        )
        .route(
            "/readyz",
            read_only(
                &state,
                Route::Readyz,
                get(move |State(state): State<Arc<AppState>>| async move {
                    health::readyz(&state, face)
                }),
            ),
        );
    if face != Face::Public {
        router =
            router.route(
                "/metrics",
                read_only(
                    &state,
                    Route::Metrics,
                    get(|State(state): State<Arc<AppState>>| async move {
                        health::metrics(&state).await
                    }),
                ),
            );
    }
    router
        .merge(admin::routes(state.metrics.clone(), face))
        .fallback(
            move |State(state): State<Arc<AppState>>, request: Request| route(state, face, request),
        )
        .with_state(state)
}

/// `get` (which answers HEAD too), our JSON 405 for any other method, and
/// every answer counted under `route`.
fn read_only(
    state: &Arc<AppState>,
    route: Route,
    get: MethodRouter<Arc<AppState>>,
) -> MethodRouter<Arc<AppState>> {
    let metrics = state.metrics.clone();
    get.fallback(health::not_allowed)
        .layer(axum::middleware::map_response(move |response: Response| {
            metrics.request(route, response.status().as_u16());
            std::future::ready(response)
        }))
}

async fn route(state: Arc<AppState>, face: Face, request: Request) -> Response {
    let (route, cluster, response) = dispatch(&state, face, request).await;
    let status = response.status();
    state.metrics.request(route, status.as_u16());
    if route == Route::Token {
        if let Some(cluster) = cluster {
            state.metrics.mint(cluster.id(), mint_outcome(status));
        }
    }
    response
}

fn mint_outcome(status: StatusCode) -> MintOutcome {
    match status {
        StatusCode::CREATED => MintOutcome::Issued,
        StatusCode::UNAUTHORIZED => MintOutcome::Unauthorized,
        StatusCode::FORBIDDEN => MintOutcome::Forbidden,
        StatusCode::TOO_MANY_REQUESTS => MintOutcome::RateLimited,
        s if s.is_server_error() => MintOutcome::Failed,
        _ => MintOutcome::Invalid,
    }
}

async fn dispatch(
    state: &Arc<AppState>,
    face: Face,
    request: Request,
) -> (Route, Option<Arc<Cluster>>, Response) {
    let path = request.uri().path();
    if let Some(prefix) = path.strip_suffix(DISCOVERY_PATH) {
        let response = match state.issuers.load().published_at(prefix) {
            Some(published) => documents::discovery(published, &request),
            None => not_found(path),
        };
        return (Route::Discovery, None, response);
    }
    if let Some(prefix) = path.strip_suffix(JWKS_PATH) {
        let response = match state.issuers.load().published_at(prefix) {
            Some(published) => documents::jwks(published, &request),
            None => not_found(path),
        };
        return (Route::Jwks, None, response);
    }
    if let Some(prefix) = path.strip_suffix(review::PATH) {
        if face == Face::Public {
            return (Route::TokenReview, None, not_on_this_listener());
        }
        let Some(cluster) = state.issuers.load().by_path(prefix).cloned() else {
            return (Route::TokenReview, None, no_cluster());
        };
        let work = review::create(state, &cluster, request);
        let response = within(state.request_timeout, work).await;
        return (Route::TokenReview, Some(cluster), response);
    }
    if let Some(response) = external_jwt(state, face, path) {
        let (cluster, keys) = match response {
            Ok(found) => found,
            Err(refused) => return (Route::ExternalJwt, None, refused),
        };
        let work = async {
            Ok(match keys {
                true => sign::keys(state, &cluster, request).await,
                false => sign::sign(state, &cluster, request).await,
            })
        };
        let response = within(state.request_timeout, work).await;
        return (Route::ExternalJwt, Some(cluster), response);
    }
    if let Some(target) = token::TokenPath::parse(path) {
        if face == Face::Public {
            return (Route::Token, None, not_on_this_listener());
        }
        let Some(cluster) = state.issuers.load().by_path(target.prefix).cloned() else {
            return (Route::Token, None, no_cluster());
        };
        let target = target.owned();
        let work = token::create(state, &cluster, target, request);
        let response = within(state.request_timeout, work).await;
        return (Route::Token, Some(cluster), response);
    }
    (Route::Other, None, not_found(path))
}

/// The external signer's endpoints (`http::sign`): the cluster and whether
/// the keys are asked for; `None` for another path.
fn external_jwt(
    state: &AppState,
    face: Face,
    path: &str,
) -> Option<Result<(Arc<Cluster>, bool), Response>> {
    let (prefix, keys) = match (
        path.strip_suffix(sign::SIGN_PATH),
        path.strip_suffix(sign::KEYS_PATH),
    ) {
        (Some(prefix), _) => (prefix, false),
        (_, Some(prefix)) => (prefix, true),
        _ => return None,
    };
    if face == Face::Public {
        return Some(Err(not_on_this_listener()));
    }
    Some(
        state
            .issuers
            .load()
            .by_path(prefix)
            .cloned()
            .map(|c| (c, keys))
            .ok_or_else(no_cluster),
    )
}

/// Runs an API handler for at most `limit`; past it, a 504 like
/// kube-apiserver's request timeout. Not tower-http's TimeoutLayer: that
/// answers with an empty body, where a Kubernetes client is owed a `Status`
/// naming the setting, and the connection must close (a body may be unread).
async fn within(
    limit: Duration,
    work: impl std::future::Future<Output = Result<Response, AppError>>,
) -> Response {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result.unwrap_or_else(IntoResponse::into_response),
        Err(_) => AppError::kube(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request did not complete within {} s (limits.request_timeout)",
                limit.as_secs()
            ),
        )
        .closing()
        .into_response(),
    }
}

fn not_on_this_listener() -> Response {
    AppError::kube(
        StatusCode::NOT_FOUND,
        "the issuance API (TokenRequest, TokenReview) is not served on this listener; use the API listener (api.listen)",
    )
    .into_response()
}

/// A response that must not be cached (answers to the API, health).
pub(crate) fn uncached(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<axum::body::Body>,
) -> Response {
    let mut response = (status, body.into()).into_response();
    let h = response.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(content_type),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
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
