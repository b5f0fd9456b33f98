//! Keys on disk: created once, reused on restart, separate per cluster.

use std::os::unix::fs::PermissionsExt as _;

use serde_json::json;

use crate::harness::{verify_with_jwks, Options, Server};

fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_keys_and_kids_and_old_tokens_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let before = (kids(&s.jwks("demo").await), kids(&s.jwks("edge").await));
    let token = s.mint("edge", "ns", "sa", json!({})).await;
    let admin = s.admin_token.clone();
    s.stop().await;

    let s = Server::default_in(dir.path()).await;
    assert_eq!(
        s.admin_token, admin,
        "the admin token is reused, not regenerated"
    );
    let after = (kids(&s.jwks("demo").await), kids(&s.jwks("edge").await));
    assert_eq!(before, after);
    // The issuer URL carries the new port, so check the signature and claims
    // against the key only.
    let jwks = s.jwks("edge").await;
    let claims = crate::harness::decode_part(&token, 1);
    let iss = claims["iss"].as_str().unwrap();
    verify_with_jwks(&token, &jwks, iss, "sts.amazonaws.com").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_are_private_pkcs8_and_listed_in_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    for cluster in ["demo", "edge"] {
        let kid = kids(&s.jwks(cluster).await).remove(0);
        let key = dir.path().join(cluster).join(format!("{kid}.pem"));
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            key.display()
        );
        let pem = std::fs::read_to_string(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "PKCS#8");
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(cluster).join("manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["keys"][0]["kid"], kid);
        assert_eq!(manifest["keys"][0]["state"], "current");
    }
    let token = std::fs::metadata(dir.path().join("admin.token")).unwrap();
    assert_eq!(token.permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_have_different_keys_and_tokens_do_not_cross() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options {
clusters: "[[clusters]]\nid = \"one\"\nalgorithm = \"ES256\"\n\
                   [[clusters]]\nid = \"two\"\nalgorithm = \"ES256\"\n"
            .to_owned()
            + "[[api_clients]]\nname = \"admin\"\ntoken_file = \"admin.token\"\ngenerate = true\nclusters = [\"*\"]\n",
..Options::new(dir.path())
})
    .await;
    let (one, two) = (s.jwks("one").await, s.jwks("two").await);
    assert_ne!(kids(&one), kids(&two));
    let token = s
        .mint("one", "ns", "sa", json!({"spec":{"audiences":["a"]}}))
        .await;
    verify_with_jwks(&token, &one, &s.issuer("one"), "a").unwrap();
    let err = verify_with_jwks(&token, &two, &s.issuer("one"), "a").unwrap_err();
    assert!(err.contains("not in JWKS"), "{err}");
    // Even a relying party that ignores the kid and tries the other cluster's
    // key gets a bad signature.
    let other: jsonwebtoken::jwk::JwkSet = serde_json::from_value(two).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&other.keys[0]).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["a"]);
    let err = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap_err();
    assert_eq!(
        err.kind(),
        &jsonwebtoken::errors::ErrorKind::InvalidSignature
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_at_another_path_and_at_the_root_are_routed() {
    let dir = tempfile::tempdir().unwrap();
    // Issuer URLs need the port, known only once bound: the harness fills
    // in {base}.
    let s = Server::start(Options {
        clusters: "[[clusters]]\nid = \"a\"\nalgorithm = \"ES256\"\nissuer = \"{base}/id/a\"\n\
                   [[clusters]]\nid = \"b\"\nalgorithm = \"ES256\"\nissuer = \"{base}\"\n"
            .into(),
        ..Options::new(dir.path())
    })
    .await;
    for (issuer, path) in [(format!("{}/id/a", s.base), "/id/a"), (s.base.clone(), "")] {
        let r = s
            .client()
            .get(format!("{}{path}/.well-known/openid-configuration", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["issuer"], issuer);
        assert_eq!(v["jwks_uri"], format!("{issuer}/openid/v1/jwks"));
        let r = s
            .client()
            .get(v["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
