//! Every bad TokenRequest gets a Kubernetes `Status` with the right code and a
//! message that names what was wrong.

use serde_json::json;

use crate::harness::{Server, CI_TOKEN};

struct Case {
    what: &'static str,
    method: reqwest::Method,
    path: String,
    bearer: Option<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    code: u16,
    reason: &'static str,
    message: &'static str,
}

fn json_case(what: &'static str, body: serde_json::Value, message: &'static str) -> Case {
    Case {
        what,
        method: reqwest::Method::POST,
        path: "/c/demo/api/v1/namespaces/ns/serviceaccounts/sa/token".into(),
        bearer: None,
        content_type: Some("application/json"),
        body: serde_json::to_vec(&body).unwrap(),
        code: 400,
        reason: "BadRequest",
        message,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_status_and_a_message_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let path =
        |ns: &str, sa: &str| format!("/c/demo/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token");
    let long_aud = "a".repeat(1025);
    let many: Vec<String> = (0..33).map(|i| format!("aud-{i}")).collect();
    let mut cases = vec![
        Case { what: "namespace not a DNS label", path: path("Bad_NS", "sa"), ..json_case("", json!({}), "metadata.namespace: Invalid value: \"Bad_NS\": a lowercase RFC 1123 label") },
        Case { what: "name not a DNS subdomain", path: path("ns", "sa..x"), ..json_case("", json!({}), "metadata.name: Invalid value: \"sa..x\": a lowercase RFC 1123 subdomain") },
        json_case("empty audience", json!({"spec":{"audiences":[""]}}), "spec.audiences[0]: Invalid value: must not be empty"),
        Case { body: serde_json::to_vec(&json!({"spec":{"audiences":["ok", long_aud]}})).unwrap(), ..json_case("over-long audience", json!({}), "spec.audiences[1]: Invalid value: is 1025 bytes long") },
        Case { body: serde_json::to_vec(&json!({"spec":{"audiences": many}})).unwrap(), ..json_case("too many audiences", json!({}), "spec.audiences: Too many: 33") },
        json_case("lifetime under the minimum", json!({"spec":{"expirationSeconds":599}}), "spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10m"),
        json_case("negative lifetime", json!({"spec":{"expirationSeconds":-1}}), "spec.expirationSeconds: Invalid value: -1"),
        json_case("lifetime of the wrong type", json!({"spec":{"expirationSeconds":"1h"}}), "spec.expirationSeconds: invalid type: string \"1h\""),
        json_case("lifetime that overflows", json!({"spec":{"expirationSeconds":1e30}}), "spec.expirationSeconds: invalid type: floating point"),
        json_case("wrong kind", json!({"kind":"Pod","apiVersion":"authentication.k8s.io/v1"}), "kind: Invalid value: \"Pod\": expected \"TokenRequest\""),
        json_case("wrong apiVersion", json!({"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v2"}), "apiVersion: Invalid value: \"authentication.k8s.io/v2\""),
        json_case("unknown boundObjectRef kind", json!({"spec":{"boundObjectRef":{"kind":"Deployment","name":"d","uid":"u"}}}), "spec.boundObjectRef.kind: Unsupported value: \"Deployment\""),
        json_case("boundObjectRef without uid", json!({"spec":{"boundObjectRef":{"kind":"Pod","name":"p"}}}), "spec.boundObjectRef.uid: Required value"),
        json_case("boundObjectRef of another apiVersion", json!({"spec":{"boundObjectRef":{"kind":"Pod","apiVersion":"v2","name":"p","uid":"u"}}}), "spec.boundObjectRef.apiVersion: Unsupported value: \"v2\""),
        json_case("namespace in the body differs", json!({"metadata":{"namespace":"other"}}), "metadata.namespace: Invalid value: \"other\": does not match"),
        Case { body: b"{\"spec\":".to_vec(), ..json_case("truncated JSON", json!({}), "the body is not a valid TokenRequest") },
        Case { body: b"not json".to_vec(), ..json_case("not JSON", json!({}), "the body is not a valid TokenRequest") },
        Case { content_type: Some("application/vnd.kubernetes.protobuf"), body: b"k8s\0\x0a\x05\xff".to_vec(), ..json_case("truncated protobuf", json!({}), "the protobuf envelope (runtime.Unknown) is malformed") },
        Case { content_type: Some("application/vnd.kubernetes.protobuf"), body: b"{}".to_vec(), ..json_case("protobuf without envelope", json!({}), "does not start with the Kubernetes envelope prefix") },
        Case { bearer: Some(String::new()), code: 401, reason: "Unauthorized", ..json_case("no bearer", json!({}), "Unauthorized") },
        Case { bearer: Some("wrong-token".into()), code: 401, reason: "Unauthorized", ..json_case("wrong bearer", json!({}), "Unauthorized") },
        Case { bearer: Some(CI_TOKEN.into()), code: 403, reason: "Forbidden", ..json_case("client not allowed for the cluster", json!({}), "serviceaccounts \"sa\" is forbidden: API client \"ci\" may not mint tokens for cluster \"demo\"") },
        Case { bearer: Some(CI_TOKEN.into()), path: "/c/edge/api/v1/namespaces/prod/serviceaccounts/sa/token".into(), code: 403, reason: "Forbidden", ..json_case("client not allowed for the namespace", json!({}), "may not mint tokens in namespace \"prod\" of cluster \"edge\"") },
        Case { path: "/c/nope/api/v1/namespaces/ns/serviceaccounts/sa/token".into(), code: 404, reason: "NotFound", ..json_case("unknown cluster", json!({}), "could not find the requested resource") },
        Case { method: reqwest::Method::GET, code: 405, reason: "MethodNotAllowed", ..json_case("GET on the token subresource", json!({}), "GET is not supported on the token subresource") },
        Case { body: vec![b' '; 70 * 1024], code: 413, reason: "RequestEntityTooLarge", ..json_case("body over the limit", json!({}), "larger than 65536 bytes") },
        Case { content_type: Some("text/plain"), code: 415, reason: "UnsupportedMediaType", ..json_case("text body", json!({}), "content type \"text/plain\" is not supported") },
        // No Content-Type is JSON, as kube-apiserver reads it: the body is checked as JSON.
        Case { content_type: None, body: b"not json".to_vec(), ..json_case("no content type", json!({}), "the body is not a valid TokenRequest") },
        Case { content_type: Some("application/xml"), code: 415, reason: "UnsupportedMediaType", ..json_case("xml body", json!({}), "content type \"application/xml\" is not supported; send application/json") },
    ];
    for c in cases.iter_mut().filter(|c| c.what.is_empty()) {
        c.what = "name check";
    }
    let client = s.client();
    for c in cases {
        let mut req = client.request(c.method.clone(), format!("{}{}", s.base, c.path));
        match &c.bearer {
            None => req = req.bearer_auth(&s.admin_token),
            Some(t) if t.is_empty() => {}
            Some(t) => req = req.bearer_auth(t),
        }
        if let Some(ct) = c.content_type {
            req = req.header("Content-Type", ct);
        }
        let r = req.body(c.body.clone()).send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = r.text().await.unwrap();
        assert_eq!(status, c.code, "{}: {text}", c.what);
        assert_eq!(ct.as_deref(), Some("application/json"), "{}", c.what);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: not JSON: {text}", c.what));
        assert_eq!(v["kind"], "Status", "{}", c.what);
        assert_eq!(v["apiVersion"], "v1", "{}", c.what);
        assert_eq!(v["status"], "Failure", "{}", c.what);
        assert_eq!(v["code"], c.code, "{}", c.what);
        assert_eq!(v["reason"], c.reason, "{}", c.what);
        let message = v["message"].as_str().unwrap();
        assert!(
            message.contains(c.message),
            "{}: {message:?} lacks {:?}",
            c.what,
            c.message
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_gives_no_hint_which_part_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let url = s.token_url("demo", "ns", "sa");
    let c = s.client();
    let mut bodies = Vec::new();
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic YTpi"),
        Some("Bearer "),
    ] {
        let mut r = c
            .post(&url)
            .header("Content-Type", "application/json")
            .body("{}");
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        bodies.push(r.text().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_far_over_the_limit_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /c/demo/api/v1/namespaces/ns/serviceaccounts/sa/token HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
        s.admin_token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_string(&mut answer),
    )
    .await
    .expect("answered without waiting for the body")
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("larger than 65536 bytes"), "{answer}");
}
