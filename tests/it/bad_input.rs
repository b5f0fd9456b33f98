//! Hostile and broken input, sent as raw bytes so nothing in between tidies
//! it up: each case gets its documented status (README "Errors"), nothing
//! answers 500, and the server is still healthy afterwards.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::{Options, Server};

struct Case {
    what: &'static str,
    request: Vec<u8>,
    status: u16,
    /// Part of the message when the answer is one of ours (JSON); `None`
    /// for answers of the HTTP layer itself (malformed HTTP).
    message: Option<&'static str>,
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    }) {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

async fn send(addr: &str, bytes: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("no answer within 10 s")
        .expect("the connection broke instead of answering");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, text)
}

fn protobuf_envelope(inner: &[u8]) -> Vec<u8> {
    // "k8s\0" then runtime.Unknown{typeMeta, raw}: field 2 (raw) only.
    let mut out = b"k8s\0".to_vec();
    out.push(0x12);
    out.push(inner.len() as u8);
    out.extend_from_slice(inner);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_its_documented_status_and_never_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options::new(dir.path())).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let bearer = format!("Bearer {}", s.admin_token);
    let auth = ("Authorization", bearer.as_str());
    let json = ("Content-Type", "application/json");
    let proto = ("Content-Type", "application/vnd.kubernetes.protobuf");
    let token = "/c/demo/api/v1/namespaces/ns/serviceaccounts/sa/token";
    let review = "/c/demo/apis/authentication.k8s.io/v1/tokenreviews";
    let many_audiences = serde_json::json!({"spec": {"audiences": (0..5000).map(|i| format!("a{i}")).collect::<Vec<_>>()}}).to_string();
    let huge_audiences = serde_json::json!({"spec": {"audiences": (0..20000).map(|i| format!("aud-{i}")).collect::<Vec<_>>()}}).to_string();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let long_name = "a".repeat(300);
    let cases = vec![
        // Malformed and truncated bodies.
        Case {
            what: "truncated JSON",
            request: request("POST", token, &[auth, json], br#"{"spec":{"audiences":["#),
            status: 400,
            message: Some("is not a valid TokenRequest"),
        },
        Case {
            what: "JSON nested 10000 deep",
            request: request("POST", token, &[auth, json], deep.as_bytes()),
            status: 400,
            message: Some("is not a valid TokenRequest"),
        },
        Case {
            what: "body not UTF-8",
            request: request("POST", token, &[auth, json], b"{\"spec\":\xff\xfe}"),
            status: 400,
            message: Some("is not a valid TokenRequest"),
        },
        Case {
            what: "empty body, protobuf",
            request: request("POST", token, &[auth, proto], b""),
            status: 400,
            message: Some("envelope prefix"),
        },
        Case {
            what: "protobuf envelope with garbage inside",
            request: request(
                "POST",
                token,
                &[auth, proto],
                &protobuf_envelope(b"\xff\xff\xff\xff"),
            ),
            status: 400,
            message: Some("protobuf"),
        },
        Case {
            what: "protobuf with a length past the end",
            request: request(
                "POST",
                token,
                &[auth, proto],
                b"k8s\0\x12\xff\xff\xff\xff\x0f\x01",
            ),
            status: 400,
            message: Some("protobuf"),
        },
        Case {
            what: "TokenReview truncated",
            request: request("POST", review, &[auth, json], b"{\"spec\":{\"tok"),
            status: 400,
            message: Some("TokenReview.authentication.k8s.io is invalid"),
        },
        Case {
            what: "TokenReview without a token",
            request: request(
                "POST",
                review,
                &[auth, json],
                br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","spec":{}}"#,
            ),
            status: 400,
            message: Some("spec.token: Required value"),
        },
        // Sizes.
        Case {
            what: "5000 audiences",
            request: request("POST", token, &[auth, json], many_audiences.as_bytes()),
            status: 400,
            message: Some("spec.audiences: Too many: 5000"),
        },
        Case {
            what: "20000 audiences (over the body limit)",
            request: request("POST", token, &[auth, json], huge_audiences.as_bytes()),
            status: 413,
            message: Some("larger than 65536 bytes"),
        },
        Case {
            what: "a header over max_header_bytes",
            request: request("GET", "/healthz", &[("X-Big", &"b".repeat(20_000))], b""),
            status: 431,
            message: None,
        },
        // Integer overflow in expiration.
        Case {
            what: "expiration past i64",
            request: request(
                "POST",
                token,
                &[auth, json],
                br#"{"spec":{"expirationSeconds":9223372036854775808}}"#,
            ),
            status: 400,
            message: Some("spec.expirationSeconds"),
        },
        Case {
            what: "expiration past u64",
            request: request(
                "POST",
                token,
                &[auth, json],
                br#"{"spec":{"expirationSeconds":18446744073709551616}}"#,
            ),
            status: 400,
            message: Some("spec.expirationSeconds"),
        },
        Case {
            what: "most negative expiration",
            request: request(
                "POST",
                token,
                &[auth, json],
                br#"{"spec":{"expirationSeconds":-9223372036854775808}}"#,
            ),
            status: 400,
            message: Some("spec.expirationSeconds: Invalid value"),
        },
        Case {
            what: "expiration of i64::MAX is shortened to the cluster's maximum",
            request: request(
                "POST",
                token,
                &[auth, json],
                br#"{"spec":{"expirationSeconds":9223372036854775807}}"#,
            ),
            status: 201,
            message: None,
        },
        // Unicode and path traversal in names and cluster ids.
        Case {
            what: "percent-encoded traversal in a namespace",
            request: request(
                "POST",
                "/c/demo/api/v1/namespaces/..%2F..%2Fetc/serviceaccounts/sa/token",
                &[auth, json],
                b"{}",
            ),
            status: 400,
            message: Some("metadata.namespace: Invalid value"),
        },
        Case {
            what: "dot-dot as the service account",
            request: request(
                "POST",
                "/c/demo/api/v1/namespaces/ns/serviceaccounts/../token",
                &[auth, json],
                b"{}",
            ),
            status: 400,
            message: Some("metadata.name: Invalid value"),
        },
        Case {
            what: "traversal before a cluster path",
            request: request("GET", "/c/../c/demo/openid/v1/jwks", &[], b""),
            status: 404,
            message: Some("nothing is served at"),
        },
        Case {
            what: "encoded unicode in a namespace",
            request: request(
                "POST",
                "/c/demo/api/v1/namespaces/n%C3%A9/serviceaccounts/sa/token",
                &[auth, json],
                b"{}",
            ),
            status: 400,
            message: Some("metadata.namespace: Invalid value"),
        },
        Case {
            what: "encoded unicode in a cluster id",
            request: request("GET", "/c/d%C3%A9mo/openid/v1/jwks", &[], b""),
            status: 404,
            message: Some("nothing is served at"),
        },
        Case {
            what: "raw UTF-8 in the path",
            request: request("GET", "/c/d\u{e9}mo/openid/v1/jwks", &[], b""),
            status: 404,
            message: Some("nothing is served at"),
        },
        Case {
            what: "a service account name of 300 characters",
            request: request(
                "POST",
                &format!("/c/demo/api/v1/namespaces/ns/serviceaccounts/{long_name}/token"),
                &[auth, json],
                b"{}",
            ),
            status: 400,
            message: Some("metadata.name: Invalid value"),
        },
        Case {
            what: "unicode in metadata.name",
            request: request(
                "POST",
                token,
                &[auth, json],
                "{\"metadata\":{\"name\":\"s\u{e4}\"}}".as_bytes(),
            ),
            status: 400,
            message: Some("metadata.name: Invalid value"),
        },
        Case {
            what: "a NUL in an audience",
            request: request(
                "POST",
                token,
                &[auth, json],
                br#"{"spec":{"audiences":["a\u0000b"]}}"#,
            ),
            status: 400,
            message: Some("spec.audiences[0]"),
        },
        // Duplicate and conflicting headers.
        Case {
            what: "two Authorization headers",
            request: request("POST", token, &[auth, auth, json], b"{}"),
            status: 401,
            message: Some("Unauthorized"),
        },
        Case {
            what: "two different Content-Types",
            request: request("POST", token, &[auth, json, proto], b"{}"),
            status: 415,
            message: Some("more than one Content-Type"),
        },
        Case {
            what: "two different Content-Lengths",
            request: request(
                "POST",
                token,
                &[auth, json, ("Content-Length", "2"), ("Content-Length", "3")],
                b"{} ",
            ),
            status: 400,
            message: None,
        },
        // RFC 9112 §6.3: Transfer-Encoding frames the body and the
        // connection is closed after the answer (hyper does both), so a
        // proxy that framed it by Content-Length cannot smuggle a request.
        Case {
            what: "Content-Length and chunked together",
            request: request(
                "POST",
                token,
                &[
                    auth,
                    json,
                    ("Content-Length", "100"),
                    ("Transfer-Encoding", "chunked"),
                ],
                b"2\r\n{}\r\n0\r\n\r\n",
            ),
            status: 201,
            message: None,
        },
        Case {
            what: "a Content-Length that is not a number",
            request: request(
                "POST",
                token,
                &[auth, json, ("Content-Length", "-1")],
                b"{}",
            ),
            status: 400,
            message: None,
        },
        Case {
            what: "Authorization with another scheme",
            request: request(
                "POST",
                token,
                &[("Authorization", "Basic YWRtaW46YWRtaW4="), json],
                b"{}",
            ),
            status: 401,
            message: Some("Unauthorized"),
        },
        // Wrong methods.
        Case {
            what: "PUT on the token subresource",
            request: request("PUT", token, &[auth, json], b"{}"),
            status: 405,
            message: Some("PUT is not supported"),
        },
        Case {
            what: "DELETE on tokenreviews",
            request: request("DELETE", review, &[auth], b""),
            status: 405,
            message: Some("DELETE is not supported"),
        },
        Case {
            what: "POST on the JWKS",
            request: request("POST", "/c/demo/openid/v1/jwks", &[json], b"{}"),
            status: 405,
            message: Some("POST is not allowed"),
        },
        Case {
            what: "PATCH on discovery",
            request: request(
                "PATCH",
                "/c/demo/.well-known/openid-configuration",
                &[],
                b"",
            ),
            status: 405,
            message: Some("PATCH is not allowed"),
        },
        Case {
            what: "POST on /healthz",
            request: request("POST", "/healthz", &[], b""),
            status: 405,
            message: Some("POST is not allowed"),
        },
        Case {
            what: "PUT on /metrics",
            request: request("PUT", "/metrics", &[], b""),
            status: 405,
            message: Some("PUT is not allowed"),
        },
        Case {
            what: "an invented method",
            request: request("BREW", "/readyz", &[], b""),
            status: 405,
            message: Some("BREW is not allowed"),
        },
        // Not HTTP at all.
        Case {
            what: "a TLS hello on the plain port",
            request: b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            status: 400,
            message: None,
        },
        Case {
            what: "a request line without a version",
            request: b"GET /healthz\r\n\r\n".to_vec(),
            status: 400,
            message: None,
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let (status, text) = send(&addr, &c.request).await;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if status != c.status {
            failures.push(format!(
                "{}: expected {}, got {status}: {body}",
                c.what, c.status
            ));
            continue;
        }
        if let Some(m) = c.message {
            let v: serde_json::Value = match serde_json::from_str(body) {
                Ok(v) => v,
                Err(_) => {
                    failures.push(format!("{}: not JSON: {body:?}", c.what));
                    continue;
                }
            };
            if !v["message"].as_str().is_some_and(|t| t.contains(m)) {
                failures.push(format!("{}: message lacks {m:?}: {body}", c.what));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Nothing broke on the way: the server answers, and no answer was a 500.
    let (status, _) = send(&addr, &request("GET", "/readyz", &[], b"")).await;
    assert_eq!(status, 200);
    let (_, metrics) = send(&addr, &request("GET", "/metrics", &[], b"")).await;
    assert!(!metrics.contains("status=\"500\""), "{metrics}");
    s.stop().await;
}
