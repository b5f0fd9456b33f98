//! The external signer over the issuer API, for a kube-apiserver on another
//! machine: its relay (`workload-issuer kubernetes-signer`) serves the gRPC
//! socket there and calls these two endpoints under the cluster's issuer path.
//!
//! - `POST <issuer path>/externaljwt/v1/sign`, `{"claims":"<base64url>"}`:
//!   the checks and the key of the socket signer (`issuer::external`);
//!   answers `{"header":"...","signature":"...","kid":"..."}`.
//! - `GET <issuer path>/externaljwt/v1/keys`: what `FetchKeys` and `Metadata`
//!   answer: `{"keys":[{"key_id":"...","key":"<base64 PKIX DER>"}],
//!   "data_timestamp":<unix seconds>,"refresh_hint_seconds":N,
//!   "max_token_expiration_seconds":N}`.
//!
//! Authenticated and scoped like minting (bearer token or client
//! certificate; the client's clusters, and its namespaces against the
//! claims' `kubernetes.io.namespace`; its rate limit). A refusal of the
//! claims answers `{"code":"<gRPC code name>","message":"..."}` so the
//! relay hands kube-apiserver the same code the socket would.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::token::{authenticate, read_body};
use super::{uncached, AppState};
use crate::error::AppError;
use crate::issuer::auth::ApiClient;
use crate::issuer::external::{self, Refusal, SignError, REFRESH_HINT_SECONDS};
use crate::issuer::Cluster;
use crate::metrics::{SignOutcome, SignVia};

pub const SIGN_PATH: &str = "/externaljwt/v1/sign";
pub const KEYS_PATH: &str = "/externaljwt/v1/keys";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    claims: String,
}

#[derive(Serialize)]
struct Signed<'a> {
    header: &'a str,
    signature: &'a str,
    kid: &'a str,
}

#[derive(Serialize)]
struct Keys {
    keys: Vec<Key>,
    data_timestamp: u64,
    refresh_hint_seconds: i64,
    max_token_expiration_seconds: i64,
}

#[derive(Serialize)]
struct Key {
    key_id: String,
    key: String,
}

#[derive(Serialize)]
struct Refused<'a> {
    code: &'a str,
    message: &'a str,
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    uncached(
        status,
        "application/json",
        serde_json::to_vec(body).unwrap_or_default(),
    )
}

/// A refusal of the claims, carrying its gRPC code.
fn refused(e: &SignError) -> Response {
    let status = match e.refusal {
        Refusal::InvalidArgument => StatusCode::BAD_REQUEST,
        Refusal::PermissionDenied => StatusCode::FORBIDDEN,
        Refusal::FailedPrecondition => StatusCode::CONFLICT,
        Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(
        status,
        &Refused {
            code: e.refusal.as_str(),
            message: &e.message,
        },
    )
}

fn outcome_of(status: StatusCode) -> SignOutcome {
    match status {
        StatusCode::UNAUTHORIZED => SignOutcome::Unauthorized,
        StatusCode::TOO_MANY_REQUESTS => SignOutcome::RateLimited,
        _ => SignOutcome::Failed,
    }
}

/// `POST <issuer path>/externaljwt/v1/sign`.
pub async fn sign(state: &AppState, cluster: &Arc<Cluster>, request: Request) -> Response {
    let (outcome, response) = match sign_inner(state, cluster, request).await {
        Ok(done) => done,
        Err(e) => (
            outcome_of(e.status()),
            axum::response::IntoResponse::into_response(e),
        ),
    };
    state.metrics.sign(cluster.id(), SignVia::Api, outcome);
    response
}

async fn sign_inner(
    state: &AppState,
    cluster: &Arc<Cluster>,
    request: Request,
) -> Result<(SignOutcome, Response), AppError> {
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST {
        return Err(method_not_allowed(&parts.method, "POST"));
    }
    let client = authenticate(state, &parts)?;
    if let Err(e) = client.authorize_cluster(cluster.id()) {
        return Ok((
            SignOutcome::Forbidden,
            forbidden(cluster, &client, &e.to_string()),
        ));
    }
    rate_limit(cluster, &client)?;
    let body = read_body(&parts.headers, body).await?;
    let body: SignBody = serde_json::from_slice(&body).map_err(|e| {
        AppError::plain(
            StatusCode::BAD_REQUEST,
            format!("the body is not {{\"claims\":\"<base64url JWT payload>\"}}: {e}"),
        )
    })?;
    let refuse = |e: SignError| {
        tracing::info!(
            cluster = cluster.id(),
            via = "api",
            client = client.name,
            reason = e.message,
            "signing request refused"
        );
        let outcome = match e.refusal {
            Refusal::InvalidArgument => SignOutcome::Invalid,
            Refusal::PermissionDenied => SignOutcome::Denied,
            Refusal::FailedPrecondition => SignOutcome::CannotSign,
            Refusal::Internal => SignOutcome::Failed,
        };
        (outcome, refused(&e))
    };
    // A cluster that cannot sign at all says so before any claim is read.
    let published = match external::signing_keys(cluster) {
        Ok(p) => p,
        Err(e) => return Ok(refuse(e)),
    };
    let checked = match external::check(cluster, &body.claims) {
        Ok(c) => c,
        Err(e) => return Ok(refuse(e)),
    };
    // A client kept to some namespaces signs only for those, as it mints.
    let namespace = checked.namespace.as_deref().unwrap_or("");
    if let Err(e) = client.authorize(cluster.id(), namespace) {
        let why = match &checked.namespace {
            Some(_) => e.to_string(),
            None => format!(
                "{e}: the claims' sub names no service account (system:serviceaccount:NAMESPACE:NAME)"
            ),
        };
        return Ok((SignOutcome::Forbidden, forbidden(cluster, &client, &why)));
    }
    let signed = if cluster.signs_slowly() {
        state
            .signing
            .run(|| external::sign(&published, &checked))
            .await
    } else {
        external::sign(&published, &checked)
    };
    let signed = match signed {
        Ok(s) => s,
        Err(e) => return Ok(refuse(e)),
    };
    tracing::info!(
        cluster = cluster.id(),
        via = "api",
        client = client.name,
        namespace,
        kid = signed.kid,
        expiration_seconds = checked.lifetime,
        "token signed for kube-apiserver"
    );
    let response = json(
        StatusCode::OK,
        &Signed {
            header: &signed.header,
            signature: &signed.signature,
            kid: &signed.kid,
        },
    );
    Ok((SignOutcome::Signed, response))
}

/// `GET <issuer path>/externaljwt/v1/keys`.
pub async fn keys(state: &AppState, cluster: &Arc<Cluster>, request: Request) -> Response {
    keys_inner(state, cluster, request)
        .await
        .unwrap_or_else(axum::response::IntoResponse::into_response)
}

async fn keys_inner(
    state: &AppState,
    cluster: &Arc<Cluster>,
    request: Request,
) -> Result<Response, AppError> {
    let (parts, _) = request.into_parts();
    if parts.method != Method::GET {
        return Err(method_not_allowed(&parts.method, "GET"));
    }
    let client = authenticate(state, &parts)?;
    if let Err(e) = client.authorize_cluster(cluster.id()) {
        return Ok(forbidden(cluster, &client, &e.to_string()));
    }
    let data = match external::key_data(&cluster.published()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(cluster = cluster.id(), error = e.message, "key data failed");
            return Ok(refused(&e));
        }
    };
    let keys = Keys {
        keys: data
            .keys
            .into_iter()
            .map(|k| Key {
                key_id: k.kid,
                key: STANDARD.encode(k.der),
            })
            .collect(),
        data_timestamp: data
            .changed
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        refresh_hint_seconds: REFRESH_HINT_SECONDS,
        max_token_expiration_seconds: external::max_lifetime_seconds(cluster),
    };
    Ok(json(StatusCode::OK, &keys))
}

fn method_not_allowed(method: &Method, allow: &'static str) -> AppError {
    AppError::plain(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not supported here; use {allow}"),
    )
    .with_allow(allow)
}

fn forbidden(cluster: &Cluster, client: &ApiClient, why: &str) -> Response {
    tracing::info!(
        cluster = cluster.id(),
        client = client.name,
        reason = why,
        "signing request refused: forbidden"
    );
    json(
        StatusCode::FORBIDDEN,
        &Refused {
            code: "PermissionDenied",
            message: why,
        },
    )
}

/// The client's minting budget covers signing too: one signature, one token.
fn rate_limit(cluster: &Cluster, client: &ApiClient) -> Result<(), AppError> {
    let Err(wait) = client.take_mint(std::time::Instant::now()) else {
        return Ok(());
    };
    let seconds = (wait.as_secs_f64().ceil() as u64).max(1);
    tracing::info!(
        cluster = cluster.id(),
        client = client.name,
        retry_after = seconds,
        "signing request refused: rate limit"
    );
    Err(AppError::plain(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "API client {} is over its rate limit; retry after {seconds} s",
            serde_json::to_string(&client.name).unwrap_or_default()
        ),
    )
    .retry_after(seconds))
}
