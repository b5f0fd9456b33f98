//! `POST <issuer path>/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token`:
//! the Kubernetes TokenRequest subresource, so `kubectl create token` and
//! client-go work against this server.
//!
//! Order of checks, as kube-apiserver does them: authentication (401), the
//! names in the URL (400), authorization (403), then the body (415, 413, 400).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;

use super::token_request::{decode_json, decode_protobuf, encode_response};
use super::AppState;
use crate::error::{AppError, Invalid};
use crate::issuer::auth::ApiClient;
use crate::issuer::mint::{mint, validate_names, MintError, MintRequest, Minted};
use crate::issuer::Cluster;
use crate::server::PeerCertificate;

/// Largest TokenRequest body accepted. A real one is a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// The parts of a TokenRequest URL.
pub struct TokenPath<'a> {
    /// The issuer path before `/api/v1/...`.
    pub prefix: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

pub struct OwnedTokenPath {
    pub namespace: String,
    pub name: String,
}

impl<'a> TokenPath<'a> {
    /// Matches `<prefix>/api/v1/namespaces/<ns>/serviceaccounts/<name>/token`
    /// from the right, so any issuer path may come before it.
    pub fn parse(path: &'a str) -> Option<Self> {
        let rest = path.strip_suffix("/token")?;
        let (rest, name) = rest.rsplit_once('/')?;
        let rest = rest.strip_suffix("/serviceaccounts")?;
        let (rest, namespace) = rest.rsplit_once('/')?;
        let prefix = rest.strip_suffix("/api/v1/namespaces")?;
        Some(TokenPath {
            prefix,
            namespace,
            name,
        })
    }

    pub fn owned(&self) -> OwnedTokenPath {
        OwnedTokenPath {
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
        }
    }
}

/// The bearer token of the request, or why there is none usable. The reason
/// is logged, never sent: a 401 gives no hint which part was wrong.
fn bearer(headers: &HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or("no Authorization header")?;
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    let value = value
        .to_str()
        .map_err(|_| "Authorization header is not ASCII")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("Authorization header has no scheme")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("Authorization scheme is not Bearer");
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("empty bearer token");
    }
    Ok(token)
}

/// The API client making the request: by its bearer token when it sends an
/// Authorization header, else by the verified client certificate of the
/// connection (mTLS), if any.
pub(super) fn authenticate(
    state: &AppState,
    parts: &axum::http::request::Parts,
) -> Result<Arc<ApiClient>, AppError> {
    let clients = state.clients.load();
    let unauthorized = || AppError::kube(StatusCode::UNAUTHORIZED, "Unauthorized");
    let headers = &parts.headers;
    if !headers.contains_key(header::AUTHORIZATION) {
        if let Some(peer) = parts.extensions.get::<PeerCertificate>() {
            return clients
                .by_certificate(&peer.names, &peer.common_names)
                .cloned()
                .ok_or_else(|| {
                    tracing::info!(
                        names = ?peer.names,
                        common_names = ?peer.common_names,
                        "request refused: the client certificate names no API client \
                         (a common name counts only for a client with allow_common_name)"
                    );
                    unauthorized()
                });
        }
    }
    let token = bearer(headers).map_err(|why| {
        tracing::info!(reason = why, "TokenRequest refused: unauthenticated");
        unauthorized()
    })?;
    clients.authenticate(token).cloned().ok_or_else(|| {
        tracing::info!("TokenRequest refused: unknown bearer token");
        unauthorized()
    })
}

pub(super) enum Format {
    Json,
    Protobuf,
}

/// The format of a Kubernetes API request body, by its Content-Type. A
/// request without one (or with an empty one) is JSON, as kube-apiserver
/// reads it (apiserver/pkg/endpoints/handlers/rest.go): the official Python
/// client sends none on create calls. Any other type is a 415 naming it.
pub(super) fn content_format(headers: &HeaderMap) -> Result<Format, AppError> {
    if headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(AppError::kube(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "more than one Content-Type header; send exactly one",
        ));
    }
    let value = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => "",
        Some(Ok(v)) => v,
        Some(Err(_)) => {
            return Err(AppError::kube(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the Content-Type header is not ASCII; send application/json or application/vnd.kubernetes.protobuf",
            ))
        }
    };
    if value.trim().is_empty() {
        return Ok(Format::Json);
    }
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/vnd.kubernetes.protobuf" => Ok(Format::Protobuf),
        _ => Err(AppError::kube(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the body's content type {} is not supported; send application/json or application/vnd.kubernetes.protobuf",
                serde_json::to_string(value).unwrap_or_default()
            ),
        )),
    }
}

pub(super) fn too_large() -> AppError {
    AppError::kube(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {MAX_BODY} bytes"),
    )
}

/// Mints; an RSA signature (hundreds of microseconds) waits for its turn on
/// this worker, so discovery and JWKS keep being answered while minting
/// saturates the CPU. ECDSA signs in microseconds and needs no turn.
async fn mint_in_turn(
    state: &AppState,
    cluster: &Cluster,
    request: &MintRequest,
) -> Result<Minted, MintError> {
    if !cluster.signs_slowly() {
        return mint(cluster, request, state.clock.now());
    }
    state
        .signing
        .run(|| mint(cluster, request, state.clock.now()))
        .await
}

pub async fn create(
    state: &AppState,
    cluster: &Arc<Cluster>,
    target: OwnedTokenPath,
    request: Request,
) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST {
        return Err(AppError::kube(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} is not supported on the token subresource; create a token with POST",
                parts.method
            ),
        )
        .with_allow("POST"));
    }
    let client = authenticate(state, &parts)?;
    let (namespace, name) = (target.namespace.as_str(), target.name.as_str());
    validate_names(namespace, name).map_err(|e| Invalid::token_request(name, e))?;
    client.authorize(cluster.id(), namespace).map_err(|e| {
        AppError::kube(
            StatusCode::FORBIDDEN,
            format!(
                "serviceaccounts {} is forbidden: {e}",
                serde_json::to_string(name).unwrap_or_default()
            ),
        )
    })?;
    if let Err(wait) = client.take_mint(std::time::Instant::now()) {
        let seconds = wait.as_secs_f64().ceil() as u64;
        tracing::info!(
            cluster = cluster.id(),
            client = client.name,
            retry_after = seconds.max(1),
            "TokenRequest refused: rate limit"
        );
        return Err(AppError::kube(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "API client {} is over its rate limit for minting; retry after {} s",
                serde_json::to_string(&client.name).unwrap_or_default(),
                seconds.max(1)
            ),
        )
        .retry_after(seconds));
    }
    let format = content_format(&parts.headers)?;
    let body = read_body(&parts.headers, body).await?;
    let decoded = match format {
        Format::Json => decode_json(&body),
        Format::Protobuf => decode_protobuf(&body),
    }
    .map_err(|e| Invalid::token_request(name, e))?;
    if let Some(ns) = decoded
        .metadata_namespace
        .as_deref()
        .filter(|ns| *ns != namespace)
    {
        return Err(Invalid::token_request(
            name,
            format!(
                "metadata.namespace: Invalid value: {ns:?}: does not match the namespace in the URL ({namespace:?})"
            ),
        )
        .into());
    }
    if let Some(n) = decoded.metadata_name.as_deref().filter(|n| *n != name) {
        return Err(Invalid::token_request(
            name,
            format!("metadata.name: Invalid value: {n:?}: does not match the name in the URL ({name:?})"),
        )
        .into());
    }
    let mint_request = decoded.into_request(namespace, name);
    let minted = match mint_in_turn(state, cluster, &mint_request).await {
        Ok(m) => m,
        Err(e @ MintError::Invalid { .. }) => return Err(Invalid::token_request(name, e).into()),
        Err(MintError::CannotSign(why)) => {
            tracing::info!(cluster = cluster.id(), reason = %why, "TokenRequest refused: the cluster cannot sign");
            return Err(AppError::kube(
                StatusCode::FORBIDDEN,
                format!(
                    "serviceaccounts {} is forbidden: {why}",
                    serde_json::to_string(name).unwrap_or_default()
                ),
            ));
        }
        Err(MintError::Signing) => {
            tracing::error!(cluster = cluster.id(), "signing failed");
            return Err(AppError::kube(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the token could not be signed",
            ));
        }
    };
    tracing::info!(
        cluster = cluster.id(),
        namespace,
        service_account = name,
        audiences = ?minted.claims.aud,
        client = client.name,
        kid = minted.kid,
        jti = minted.claims.jti,
        expiration_seconds = minted.expiration_seconds,
        "token minted"
    );
    let body = encode_response(&mint_request, &minted)?;
    let mut response = super::kube::created(body);
    let h = response.headers_mut();
    if let Some(warning) = &minted.warning {
        // RFC 7234 §5.5 warn-code 299, as kube-apiserver sends warnings.
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{warning}\"")) {
            h.insert(header::WARNING, v);
        }
    }
    Ok(response)
}

/// Up to this much of an over-long body is read and dropped before the 413,
/// so the client reads the answer instead of a reset connection; a body
/// declared larger is refused at once and the connection closed.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// How long a client may take to send its body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a request body of at most [`MAX_BODY`] bytes; a larger one is a 413.
pub(super) async fn read_body(headers: &HeaderMap, mut body: Body) -> Result<Bytes, AppError> {
    use http_body_util::BodyExt as _;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return Err(too_large().closing());
    }
    let mut kept = Vec::new();
    let mut seen = 0usize;
    loop {
        let frame = match tokio::time::timeout(BODY_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(AppError::kube(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body was not sent within {} s",
                        BODY_TIMEOUT.as_secs()
                    ),
                )
                .closing())
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(AppError::kube(
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read: {e}"),
                )
                .closing())
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY {
                kept.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                return Err(too_large().closing());
            }
        }
    }
    if seen > MAX_BODY {
        return Err(too_large().closing());
    }
    Ok(Bytes::from(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_paths_parse_from_the_right() {
        let p = TokenPath::parse("/c/demo/api/v1/namespaces/ns/serviceaccounts/sa/token").unwrap();
        assert_eq!((p.prefix, p.namespace, p.name), ("/c/demo", "ns", "sa"));
        let p = TokenPath::parse("/api/v1/namespaces/ns/serviceaccounts/sa/token").unwrap();
        assert_eq!(p.prefix, "");
        assert!(TokenPath::parse("/c/demo/api/v1/namespaces/ns/pods/sa/token").is_none());
        assert!(TokenPath::parse("/c/demo/api/v1/namespaces/ns/serviceaccounts/sa").is_none());
    }

    #[test]
    fn bearer_is_parsed_strictly() {
        let mut h = HeaderMap::new();
        assert!(bearer(&h).is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Ok("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer(&h).is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer def"),
        );
        assert!(bearer(&h).is_err());
    }

    #[test]
    fn a_missing_content_type_is_json_and_a_wrong_one_is_refused() {
        let format = |values: &[&[u8]]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_TYPE, HeaderValue::from_bytes(v).unwrap());
            }
            content_format(&h).map_err(|e| (e.status().as_u16(), e.message().to_owned()))
        };
        // kube-apiserver reads a request without Content-Type as JSON.
        assert!(matches!(format(&[]), Ok(Format::Json)));
        assert!(matches!(format(&[b""]), Ok(Format::Json)));
        assert!(matches!(
            format(&[b"Application/JSON; charset=utf-8"]),
            Ok(Format::Json)
        ));
        assert!(matches!(
            format(&[b"application/vnd.kubernetes.protobuf"]),
            Ok(Format::Protobuf)
        ));
        for (values, says) in [
            (
                &[&b"text/plain"[..]][..],
                "content type \"text/plain\" is not supported",
            ),
            (&[b"; charset=utf-8"], "is not supported"),
            (&[b"application/\xff"], "not ASCII"),
            (
                &[b"application/json", b"application/json"],
                "more than one Content-Type",
            ),
        ] {
            let (status, err) = format(values).err().unwrap_or_default();
            assert!(
                status == 415 && err.contains(says),
                "{values:?}: {status} {err}"
            );
        }
    }
}
