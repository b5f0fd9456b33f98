//! TokenReview, answered as kube-apiserver answers it.

use prost::Message as _;
use serde_json::json;

use crate::harness::{Server, CI_TOKEN};

fn review_url(s: &Server, cluster: &str) -> String {
    format!(
        "{}/apis/authentication.k8s.io/v1/tokenreviews",
        s.issuer(cluster)
    )
}

async fn review(
    s: &Server,
    cluster: &str,
    bearer: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = s
        .client()
        .post(review_url(s, cluster))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn request(token: &str, audiences: &[&str]) -> serde_json::Value {
    json!({"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":token,"audiences":audiences}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_is_authenticated_with_the_kubernetes_user() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let token = s
        .mint("demo", "ws-9", "builder", json!({"spec":{"audiences":["vault"],"boundObjectRef":{"kind":"Pod","name":"p-0","uid":"pu"}}}))
        .await;
    let claims = crate::harness::decode_part(&token, 1);
    let (status, v) = review(
        &s,
        "demo",
        &s.admin_token,
        request(&token, &["vault", "other"]),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(v["kind"], "TokenReview");
    let st = &v["status"];
    assert_eq!(st["authenticated"], true, "{v}");
    assert_eq!(st["audiences"], json!(["vault"]));
    assert_eq!(st["user"]["username"], "system:serviceaccount:ws-9:builder");
    assert_eq!(
        st["user"]["uid"],
        claims["kubernetes.io"]["serviceaccount"]["uid"]
    );
    assert_eq!(
        st["user"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:ws-9",
            "system:authenticated"
        ])
    );
    assert_eq!(
        st["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["p-0"])
    );
    assert_eq!(
        st["user"]["extra"]["authentication.kubernetes.io/credential-id"],
        json!([format!("JTI={}", claims["jti"].as_str().unwrap())])
    );
    assert_eq!(v["spec"]["token"], "", "the credential is not echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_not_authenticated_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let demo = s
        .mint("demo", "ns", "sa", json!({"spec":{"audiences":["a"]}}))
        .await;
    let edge = s
        .mint("edge", "ns", "sa", json!({"spec":{"audiences":["a"]}}))
        .await;
    let default_aud = s.mint("demo", "ns", "sa", json!({})).await;
    let tampered = {
        let p: Vec<&str> = demo.split('.').collect();
        let q: Vec<&str> = edge.split('.').collect();
        format!("{}.{}.{}", p[0], q[1], p[2])
    };
    for (token, audiences, needle) in [
        (
            demo.as_str(),
            vec!["b"],
            "token audiences [\"a\"] is invalid for the target audiences [\"b\"]",
        ),
        (
            demo.as_str(),
            vec![],
            "is invalid for the target audiences [\"https://kubernetes.default.svc\"]",
        ),
        (
            edge.as_str(),
            vec!["a"],
            "is not one of this issuer's published keys",
        ),
        (tampered.as_str(), vec!["a"], "invalid signature"),
        ("not-a-token", vec!["a"], "not a JWT"),
    ] {
        let (status, v) = review(&s, "demo", &s.admin_token, request(token, &audiences)).await;
        assert_eq!(status, 201);
        assert_eq!(v["status"]["authenticated"], false, "{needle}");
        assert!(
            v["status"]["error"].as_str().unwrap().contains(needle),
            "{needle}: {v}"
        );
        assert!(v["status"].get("user").is_none());
    }
    // With no audiences asked for, the cluster's own are used.
    let (_, v) = review(&s, "demo", &s.admin_token, request(&default_aud, &[])).await;
    assert_eq!(v["status"]["authenticated"], true);
    assert_eq!(
        v["status"]["audiences"],
        json!(["https://kubernetes.default.svc"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_needs_an_allowed_api_client_and_a_well_formed_body() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let (status, v) = review(&s, "demo", "wrong", request("x", &[])).await;
    assert_eq!((status, v["reason"].as_str()), (401, Some("Unauthorized")));
    for (bearer, body, status, needle) in [
        (
            CI_TOKEN,
            request("x", &[]),
            403,
            "API client \"ci\" may not mint tokens for cluster \"demo\"",
        ),
        (
            &s.admin_token,
            json!({"kind":"TokenReview","spec":{"token":""}}),
            400,
            "spec.token: Required value",
        ),
        (
            &s.admin_token,
            json!({"kind":"TokenRequest","spec":{"token":"x"}}),
            400,
            "kind: Invalid value: \"TokenRequest\"",
        ),
    ] {
        let (got, v) = review(&s, "demo", bearer, body).await;
        assert_eq!(got, status, "{needle}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{needle}: {v}"
        );
    }
    let r = s
        .client()
        .get(review_url(&s, "demo"))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protobuf_token_review_is_answered() {
    use k8s_pb::api::authentication::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let token = s.mint("edge", "ns", "sa", json!({})).await;
    let raw = pb::TokenReview {
        metadata: None,
        spec: Some(pb::TokenReviewSpec {
            token: Some(token),
            audiences: vec![],
        }),
        status: None,
    }
    .encode_to_vec();
    let envelope = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some("authentication.k8s.io/v1".into()),
            kind: Some("TokenReview".into()),
        }),
        raw: Some(raw),
        content_encoding: None,
        content_type: None,
    };
    let r = s.post_protobuf(&review_url(&s, "edge"), &envelope).await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"]["authenticated"], true, "{v}");
    assert_eq!(v["status"]["audiences"], json!(["sts.amazonaws.com"]));
}
