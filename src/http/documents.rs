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

        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt as _;

        use crate::clock::ManualClock;
        use crate::config::{Config, Overrides};
        use crate::http::{app, AppState};
        use crate::issuer::auth::ApiClients;
        use crate::issuer::Issuers;
        use crate::keys::store::KeyStore;

        async fn router() -> (axum::Router, tempfile::TempDir) {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "listen = \"127.0.0.1:0\"\npublic_url = \"https://oidc.example.com\"\n\
                 keys_dir = {:?}\n[[clusters]]\nid = \"demo\"\nalgorithm = \"ES256\"\n",
                dir.path().display().to_string()
            );
            let config = Config::parse("test", &text, &Overrides::default()).unwrap();
            let c = config.clusters[0].clone();
            let (keys, _) = KeyStore::new(dir.path())
                .load_or_create("demo", c.key_spec, std::time::UNIX_EPOCH)
                .unwrap();
            let issuers = Issuers::new(vec![(c, Arc::new(keys))]);
            let (clients, _) = ApiClients::load(&[], dir.path()).unwrap();
            let clock = ManualClock::new(std::time::UNIX_EPOCH);
            let state = AppState::new(
                issuers,
                clients,
                |records, c| crate::keys::policy::next_due(records, c.key_spec, &c.rotation),
                clock,
            )
            .unwrap();
            (app(state), dir)
        }

        async fn get(
            router: &axum::Router,
            path: &str,
            etag: Option<&str>,
        ) -> axum::response::Response {
            let mut request = Request::get(path);
            if let Some(etag) = etag {
                request = request.header("if-none-match", etag);
            }
            router
                .clone()
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap()
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
                let r = get(&router, path, None).await;
                assert_eq!(r.status(), StatusCode::OK, "{path}");
                let h = r.headers();
                assert_eq!(h["content-type"], kind, "{path}");
                assert_eq!(h["access-control-allow-origin"], "*", "{path}");
                assert!(
                    h["cache-control"]
                        .to_str()
                        .unwrap()
                        .starts_with("public, max-age="),
                    "{path}"
                );
                let etag = h["etag"].to_str().unwrap().to_owned();
                let again = get(&router, path, Some(&etag)).await;
                assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
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
        async fn unknown_paths_and_methods_are_refused_with_a_message() {
            let (router, _dir) = router().await;
            let r = get(&router, "/c/nope/openid/v1/jwks", None).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
            let r = router
                .clone()
                .oneshot(
                    Request::delete("/c/demo/openid/v1/jwks")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert!(r.headers()["allow"].to_str().unwrap().contains("GET"));
            let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(
                v["message"].as_str().unwrap().contains("GET or HEAD"),
                "{v}"
            );
        }
    }
}
