//! Discovery and JWKS: anonymous, cacheable, prebuilt bytes.
//!
//! The bytes and the ETag come ready from the cluster's published set; a
//! request only picks them and sets headers. REFERENCE §1: a real max-age,
//! a strong ETag answered with 304, CORS `*` since browsers and relying parties
//! fetch these anonymously.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::AppError;
use crate::issuer::{Published, Which};

const ALLOW: &str = "GET, HEAD, OPTIONS";

pub fn discovery(published: Arc<Published>, request: &Request) -> Response {
    serve(
        published,
        Which::Discovery,
        HeaderValue::from_static("application/json"),
        request,
    )
}

pub fn jwks(published: Arc<Published>, request: &Request) -> Response {
    // The type Kubernetes serves the JWKS with (RFC 7517 §8.5.1).
    serve(
        published,
        Which::Jwks,
        HeaderValue::from_static("application/jwk-set+json"),
        request,
    )
}

fn serve(
    published: Arc<Published>,
    which: Which,
    content_type: HeaderValue,
    request: &Request,
) -> Response {
    let method = request.method();
    if method == Method::OPTIONS {
        // CORS preflight: anyone may GET these documents. Three constant
        // headers, by hand: tower-http's CorsLayer answers every OPTIONS
        // with a 200 and no Allow, and adds Vary to every answer.
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        cors(h);
        h.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        return response;
    }
    if method != Method::GET && method != Method::HEAD {
        return AppError::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed here; this document is read with GET or HEAD"),
        )
        .with_allow(ALLOW)
        .into_response();
    }
    let doc = published.document(which);
    // Quoted base64url and `public, max-age=N`: always valid header values.
    let (Ok(etag), Ok(cache_control)) = (
        HeaderValue::from_bytes(doc.etag()),
        HeaderValue::try_from(format!("public, max-age={}", published.max_age)),
    ) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let not_modified = if_none_match(request.headers(), doc.etag());
    let mut response = if not_modified {
        // RFC 9110 §15.4.5: a 304 carries the validators and caching headers.
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(published.body(which)));
        r.headers_mut().insert(header::CONTENT_TYPE, content_type);
        r
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, cache_control);
    cors(h);
    response
}

fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// RFC 9110 §13.1.2: If-None-Match matches when it is `*` or lists the
/// current entity tag. Weak comparison applies for GET/HEAD, so a `W/`
/// prefix on the client's tag still matches.
fn if_none_match(headers: &HeaderMap, etag: &[u8]) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_handles_lists_stars_and_weak_tags() {
        let mut h = HeaderMap::new();
        assert!(!if_none_match(&h, b"\"a\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", \"a\""),
        );
        assert!(if_none_match(&h, b"\"a\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("W/\"a\""));
        assert!(if_none_match(&h, b"\"a\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&h, b"\"a\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"b\""));
        assert!(!if_none_match(&h, b"\"a\""));
    }

    /// Route tests through the router itself: no socket, no server.
    mod routes {
        use std::sync::Arc;

        use axum::body::{Body, Bytes};
        use axum::http::{header, HeaderMap, Method, Request, StatusCode};
        use tower::ServiceExt as _;

        use crate::clock::ManualClock;
        use crate::config::{Config, Overrides};
        use crate::http::{app, AppState};
        use crate::issuer::auth::ApiClients;
        use crate::issuer::Issuers;
        use crate::keys::store::KeyStore;

        const ISSUER: &str = "https://oidc.example.com/c/demo";

        /// Two clusters: `demo` (RS256, JWKS max-age 5 min) and `edge`
        /// (ES256, the default max-age), keys created in a temporary dir.
        async fn router() -> (axum::Router, tempfile::TempDir) {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "listen = \"127.0.0.1:0\"\npublic_url = \"https://oidc.example.com\"\n\
                 keys_dir = {:?}\n\
                 [[clusters]]\nid = \"demo\"\nalgorithm = \"RS256\"\njwks_max_age = \"5m\"\n\
                 [[clusters]]\nid = \"edge\"\nalgorithm = \"ES256\"\n",
                dir.path().display().to_string()
            );
            let config = Config::parse("test", &text, &Overrides::default()).unwrap();
            let store = KeyStore::new(dir.path());
            let clusters = config
                .clusters
                .iter()
                .map(|c| {
                    let (keys, _) = store
                        .load_or_create(&c.id, c.key_spec, std::time::UNIX_EPOCH)
                        .unwrap();
                    (c.clone(), Arc::new(keys))
                })
                .collect();
            let (clients, _) = ApiClients::load(&[], dir.path()).unwrap();
            let clock = ManualClock::new(std::time::UNIX_EPOCH);
            let state = AppState::new(
                Issuers::new(clusters),
                clients,
                |records, c| crate::keys::policy::next_due(records, c.key_spec, &c.rotation),
                clock,
            )
            .unwrap();
            (app(state), dir)
        }

        /// Sends `method path` with `headers`; the status, headers and body.
        async fn send(
            router: &axum::Router,
            method: Method,
            path: &str,
            headers: &[(header::HeaderName, &str)],
        ) -> (StatusCode, HeaderMap, Bytes) {
            let mut request = Request::builder().method(method).uri(path);
            for (name, value) in headers {
                request = request.header(name, *value);
            }
            let r = router
                .clone()
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let (parts, body) = r.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            (parts.status, parts.headers, body)
        }

        async fn get(router: &axum::Router, path: &str) -> (StatusCode, HeaderMap, Bytes) {
            send(router, Method::GET, path, &[]).await
        }

        fn json(body: &[u8]) -> serde_json::Value {
            serde_json::from_slice(body).unwrap()
        }

        #[tokio::test]
        async fn discovery_and_jwks_answer_with_their_types_caching_and_cors() {
            let (router, _dir) = router().await;
            for (path, kind) in [
                (
                    "/c/demo/.well-known/openid-configuration",
                    "application/json",
                ),
                ("/c/demo/openid/v1/jwks", "application/jwk-set+json"),
            ] {
                let (status, h, _) = get(&router, path).await;
                assert_eq!(status, StatusCode::OK, "{path}");
                assert_eq!(h["content-type"], kind, "{path}");
                assert_eq!(h["access-control-allow-origin"], "*", "{path}");
                assert_eq!(h["cache-control"], "public, max-age=300", "{path}");
                let etag = h["etag"].to_str().unwrap();
                assert!(
                    etag.starts_with('"') && !etag.starts_with("W/"),
                    "{path}: a strong ETag: {etag}"
                );
            }
        }

        #[tokio::test]
        async fn health_routes_answer_get_and_head_refuse_the_rest_and_are_counted() {
            let (router, _dir) = router().await;
            let send = |method: &str, path: &str| {
                let request = Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap();
                router.clone().oneshot(request)
            };
            let r = send("HEAD", "/healthz").await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["cache-control"], "no-store");
            let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
            assert!(body.is_empty(), "{body:?}");
            for (method, path) in [
                ("POST", "/healthz"),
                ("BREW", "/readyz"),
                ("PUT", "/metrics"),
            ] {
                let r = send(method, path).await.unwrap();
                assert_eq!(
                    r.status(),
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}"
                );
                assert_eq!(r.headers()["allow"], "GET, HEAD", "{method} {path}");
                let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let message = v["message"].as_str().unwrap();
                assert!(message.contains(&format!("{method} is not allowed")), "{v}");
            }
            let r = send("GET", "/metrics").await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            let text = String::from_utf8(body.to_vec()).unwrap();
            for line in [
                r#"workload_issuer_http_requests_total{route="healthz",status="200"} 1"#,
                r#"workload_issuer_http_requests_total{route="healthz",status="405"} 1"#,
                r#"workload_issuer_http_requests_total{route="readyz",status="405"} 1"#,
                r#"workload_issuer_http_requests_total{route="metrics",status="405"} 1"#,
            ] {
                assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
            }
        }

        #[tokio::test]
        async fn discovery_has_the_kubernetes_shape_and_each_clusters_alg_and_max_age() {
            let (router, _dir) = router().await;
            let (_, _, body) = get(&router, "/c/demo/.well-known/openid-configuration").await;
            assert_eq!(
                std::str::from_utf8(&body).unwrap(),
                format!(
                    r#"{{"issuer":"{ISSUER}","jwks_uri":"{ISSUER}/openid/v1/jwks","response_types_supported":["id_token"],"subject_types_supported":["public"],"id_token_signing_alg_values_supported":["RS256"]}}"#
                )
            );
            // The ES256 cluster announces its own algorithm and max-age.
            let (_, h, body) = get(&router, "/c/edge/.well-known/openid-configuration").await;
            assert_eq!(h["cache-control"], "public, max-age=3600");
            let v = json(&body);
            assert_eq!(v["issuer"], "https://oidc.example.com/c/edge");
            assert_eq!(
                v["id_token_signing_alg_values_supported"],
                serde_json::json!(["ES256"])
            );
        }

        #[tokio::test]
        async fn jwks_has_use_alg_kid_and_no_private_members() {
            let (router, _dir) = router().await;
            let (_, _, body) = get(&router, "/c/demo/openid/v1/jwks").await;
            let rsa = json(&body)["keys"][0].clone();
            assert_eq!(rsa["kty"], "RSA");
            assert_eq!(rsa["use"], "sig");
            assert_eq!(rsa["alg"], "RS256");
            assert_eq!(rsa["e"], "AQAB");
            assert_eq!(rsa["kid"].as_str().unwrap().len(), 43);
            let (_, _, body) = get(&router, "/c/edge/openid/v1/jwks").await;
            let ec = json(&body)["keys"][0].clone();
            assert_eq!(ec["kty"], "EC");
            assert_eq!(ec["crv"], "P-256");
            assert_eq!(ec["alg"], "ES256");
            assert_eq!(ec["x"].as_str().unwrap().len(), 43, "32 bytes, unpadded");
            for key in [rsa, ec] {
                for member in ["d", "p", "q", "dp", "dq", "qi"] {
                    assert!(key.get(member).is_none(), "private member {member}");
                }
            }
        }

        #[tokio::test]
        async fn if_none_match_gets_304_with_validators_and_head_gets_headers_only() {
            let (router, _dir) = router().await;
            for path in [
                "/c/demo/.well-known/openid-configuration",
                "/c/demo/openid/v1/jwks",
            ] {
                let (_, first, body) = get(&router, path).await;
                let etag = first["etag"].to_str().unwrap();

                let if_none_match = [(header::IF_NONE_MATCH, etag)];
                let (status, h, empty) = send(&router, Method::GET, path, &if_none_match).await;
                assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
                assert_eq!(h["etag"], etag, "{path}");
                assert_eq!(h["cache-control"], first["cache-control"], "{path}");
                assert_eq!(h["access-control-allow-origin"], "*", "{path}");
                assert!(empty.is_empty(), "{path}");

                let stale = [(header::IF_NONE_MATCH, "\"stale\"")];
                let (status, _, _) = send(&router, Method::GET, path, &stale).await;
                assert_eq!(status, StatusCode::OK, "{path}");

                let (status, h, empty) = send(&router, Method::HEAD, path, &[]).await;
                assert_eq!(status, StatusCode::OK, "{path}");
                assert_eq!(h["content-length"], body.len().to_string(), "{path}");
                assert!(empty.is_empty(), "{path}");
            }
        }

        #[tokio::test]
        async fn cors_preflight_and_wrong_methods_are_answered() {
            let (router, _dir) = router().await;
            let path = "/c/demo/openid/v1/jwks";
            let preflight = [
                (header::ORIGIN, "https://example.com"),
                (header::ACCESS_CONTROL_REQUEST_METHOD, "GET"),
            ];
            let (status, h, _) = send(&router, Method::OPTIONS, path, &preflight).await;
            assert_eq!(status, StatusCode::NO_CONTENT);
            assert_eq!(h["access-control-allow-origin"], "*");
            for method in [Method::POST, Method::DELETE] {
                let (status, h, body) = send(&router, method.clone(), path, &[]).await;
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
                assert_eq!(h["allow"], "GET, HEAD, OPTIONS", "{method}");
                let message = json(&body)["message"].as_str().unwrap().to_owned();
                assert!(
                    message.contains(&format!("{method} is not allowed"))
                        && message.contains("GET or HEAD"),
                    "{message}"
                );
            }
        }

        #[tokio::test]
        async fn unknown_paths_get_a_json_404() {
            let (router, _dir) = router().await;
            for path in [
                "/",
                "/c/nope/.well-known/openid-configuration",
                "/c/nope/openid/v1/jwks",
                "/c/demo/openid/v1/jwks/extra",
            ] {
                let (status, h, body) = get(&router, path).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
                assert_eq!(h["content-type"], "application/json", "{path}");
                let v = json(&body);
                assert!(
                    v["message"].as_str().unwrap().contains("nothing is served"),
                    "{path}: {v}"
                );
            }
        }
    }
}
