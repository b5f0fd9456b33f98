//! Discovery and JWKS as relying parties fetch them.

use reqwest::header;

use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_has_the_kubernetes_shape_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let url = format!("{}/.well-known/openid-configuration", s.issuer("demo"));
    let r = s.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    assert_eq!(h[header::CACHE_CONTROL], "public, max-age=300");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let etag = h[header::ETAG].to_str().unwrap();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong etag: {etag}"
    );
    let body = r.text().await.unwrap();
    let issuer = s.issuer("demo");
    assert_eq!(
        body,
        format!(
            r#"{{"issuer":"{issuer}","jwks_uri":"{issuer}/openid/v1/jwks","response_types_supported":["id_token"],"subject_types_supported":["public"],"id_token_signing_alg_values_supported":["RS256"]}}"#
        )
    );
    // The ES256 cluster announces its own algorithm and its own max-age.
    let edge = format!("{}/.well-known/openid-configuration", s.issuer("edge"));
    let r = s.client().get(&edge).send().await.unwrap();
    assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=3600");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(v["issuer"], s.issuer("edge"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_has_use_alg_kid_and_no_private_members() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let url = format!("{}/openid/v1/jwks", s.issuer("demo"));
    let r = s.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/jwk-set+json"
    );
    assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let v: serde_json::Value = r.json().await.unwrap();
    let rsa = &v["keys"][0];
    assert_eq!(rsa["kty"], "RSA");
    assert_eq!(rsa["use"], "sig");
    assert_eq!(rsa["alg"], "RS256");
    assert_eq!(rsa["e"], "AQAB");
    assert_eq!(rsa["kid"].as_str().unwrap().len(), 43);
    let ec = &s.jwks("edge").await["keys"][0];
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_gets_304_with_validators_and_head_gets_headers_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let c = s.client();
    for path in ["/.well-known/openid-configuration", "/openid/v1/jwks"] {
        let url = format!("{}{path}", s.issuer("demo"));
        let first = c.get(&url).send().await.unwrap();
        let etag = first.headers()[header::ETAG].clone();
        let len = first.bytes().await.unwrap().len();

        let r = c
            .get(&url)
            .header(header::IF_NONE_MATCH, etag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{path}");
        assert_eq!(r.headers()[header::ETAG], etag);
        assert!(r.headers().contains_key(header::CACHE_CONTROL));
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(r.bytes().await.unwrap().is_empty());

        let r = c
            .get(&url)
            .header(header::IF_NONE_MATCH, "\"stale\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        let r = c.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()[header::CONTENT_LENGTH].to_str().unwrap(),
            len.to_string()
        );
        assert!(r.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_wrong_methods_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let url = format!("{}/openid/v1/jwks", s.issuer("demo"));
    let r = s
        .client()
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "https://example.com")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let r = s.client().post(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()[header::ALLOW], "GET, HEAD, OPTIONS");
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("POST is not allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_get_a_json_404() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    for path in [
        "/",
        "/c/nope/.well-known/openid-configuration",
        "/c/nope/openid/v1/jwks",
        "/c/demo/openid/v1/jwks/extra",
    ] {
        let r = s
            .client()
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(
            v["message"].as_str().unwrap().contains("nothing is served"),
            "{v}"
        );
    }
}
