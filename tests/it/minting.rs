//! Minting through the TokenRequest API and verifying what comes out.

use prost::Message as _;
use serde_json::json;

use crate::harness::{decode_part, verify_with_jwks, Server, CI_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_token_verifies_against_the_jwks_fetched_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    for (cluster, alg) in [("demo", "RS256"), ("edge", "ES256")] {
        let token = s
            .mint(cluster, "ws-42", "default", json!({"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["https://vault.example.com"]}}))
            .await;
        let jwks = s.jwks(cluster).await;
        let claims = verify_with_jwks(
            &token,
            &jwks,
            &s.issuer(cluster),
            "https://vault.example.com",
        )
        .unwrap();
        let header = decode_part(&token, 0);
        assert_eq!(header["alg"], alg);
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
        assert_eq!(claims["sub"], "system:serviceaccount:ws-42:default");
        assert_eq!(claims["iss"], s.issuer(cluster));
        assert_eq!(claims["aud"], json!(["https://vault.example.com"]));
        assert_eq!(claims["nbf"], claims["iat"]);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            3600
        );
        assert_eq!(claims["kubernetes.io"]["namespace"], "ws-42");
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "default");
        uuid_v4(claims["jti"].as_str().unwrap());
    }
}

fn uuid_v4(s: &str) {
    let parts: Vec<&str> = s.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12],
        "{s}"
    );
    assert!(parts[2].starts_with('4'), "version 4: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_exactly_the_kubernetes_set_with_sorted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let token = s
        .mint("demo", "ns", "sa", json!({"spec":{"boundObjectRef":{"kind":"Pod","apiVersion":"v1","name":"web-0","uid":"pod-uid-1"}}}))
        .await;
    let raw = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "aud",
            "exp",
            "iat",
            "iss",
            "jti",
            "kubernetes.io",
            "nbf",
            "sub"
        ]
    );
    // serde_json's map is sorted, so check the order in the raw text too.
    let positions: Vec<usize> = [
        "\"aud\"",
        "\"exp\"",
        "\"iat\"",
        "\"iss\"",
        "\"jti\"",
        "\"kubernetes.io\"",
        "\"nbf\"",
        "\"sub\"",
    ]
    .iter()
    .map(|k| raw.find(k).unwrap())
    .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{raw}");
    assert_eq!(
        v["aud"],
        json!(["https://kubernetes.default.svc"]),
        "the cluster's default audience"
    );
    assert_eq!(
        v["kubernetes.io"]["pod"],
        json!({"name":"web-0","uid":"pod-uid-1"})
    );
    assert!(v["kubernetes.io"].get("secret").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_and_node_bound_tokens_name_their_object() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    for (kind, field) in [("Secret", "secret"), ("Node", "node")] {
        let token = s
            .mint(
                "edge",
                "ns",
                "sa",
                json!({"spec":{"boundObjectRef":{"kind":kind,"name":"obj","uid":"u-1"}}}),
            )
            .await;
        let claims = decode_part(&token, 1);
        assert_eq!(
            claims["kubernetes.io"][field],
            json!({"name":"obj","uid":"u-1"})
        );
        assert!(claims["kubernetes.io"].get("pod").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_account_uid_is_stable_per_issuer_namespace_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let uid = |t: &str| decode_part(t, 1)["kubernetes.io"]["serviceaccount"]["uid"].clone();
    let a = s.mint("demo", "ns", "sa", json!({})).await;
    let b = s.mint("demo", "ns", "sa", json!({})).await;
    let c = s.mint("demo", "ns", "other", json!({})).await;
    let d = s.mint("edge", "ns", "sa", json!({})).await;
    assert_eq!(uid(&a), uid(&b));
    assert_ne!(uid(&a), uid(&c));
    assert_ne!(uid(&a), uid(&d));
    assert_ne!(decode_part(&a, 1)["jti"], decode_part(&b, 1)["jti"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_echoes_the_effective_request_and_a_long_lifetime_is_shortened_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let r = s
        .client()
        .post(s.token_url("edge", "ns", "sa"))
        .bearer_auth(&s.admin_token)
        .json(&json!({"spec":{"expirationSeconds":100000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["warning"],
        "299 - \"requested expiration of 100000 seconds shortened to 43200 seconds\""
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["kind"], "TokenRequest");
    assert_eq!(v["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(v["metadata"]["name"], "sa");
    assert_eq!(v["metadata"]["namespace"], "ns");
    assert_eq!(v["spec"]["expirationSeconds"], 43200);
    assert_eq!(v["spec"]["audiences"], json!(["sts.amazonaws.com"]));
    let claims = decode_part(v["status"]["token"].as_str().unwrap(), 1);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        43200
    );
    let ts = v["status"]["expirationTimestamp"].as_str().unwrap();
    let exp = humantime::parse_rfc3339(ts).unwrap();
    assert_eq!(
        exp.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64,
        claims["exp"].as_i64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protobuf_token_request_as_kubectl_sends_it_is_accepted() {
    use k8s_pb::api::authentication::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let raw = pb::TokenRequest {
        metadata: Some(Default::default()),
        spec: Some(pb::TokenRequestSpec {
            audiences: vec!["aud-pb".into()],
            expiration_seconds: Some(1800),
            bound_object_ref: None,
        }),
        status: Some(Default::default()),
    }
    .encode_to_vec();
    let envelope = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some("authentication.k8s.io/v1".into()),
            kind: Some("TokenRequest".into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let r = s
        .post_protobuf(&s.token_url("demo", "ns", "sa"), &envelope)
        .await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    let token = v["status"]["token"].as_str().unwrap();
    let claims =
        verify_with_jwks(token, &s.jwks("demo").await, &s.issuer("demo"), "aud-pb").unwrap();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        1800
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_client_mints_where_it_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let r = s
        .client()
        .post(s.token_url("edge", "ci", "builder"))
        .bearer_auth(CI_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
