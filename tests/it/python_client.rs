//! The official Kubernetes Python client (`pip install kubernetes`),
//! unmodified, against this server: it mints with
//! `CoreV1Api.create_namespaced_service_account_token` and reviews with
//! `AuthenticationV1Api.create_token_review`. It sends those bodies without
//! a Content-Type, which kube-apiserver reads as JSON.

use std::path::Path;

use crate::harness::{decode_part, Server};

/// Whether the client is importable; in CI (`WORKLOAD_ISSUER_REQUIRE_INTEROP=1`)
/// its absence fails the test instead of skipping it.
async fn kubernetes_client_available() -> bool {
    let ok = tokio::process::Command::new("python3")
        .args(["-c", "import kubernetes.client"])
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let required = std::env::var("WORKLOAD_ISSUER_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "the Kubernetes Python client is required: pip install -r tests/interop/requirements.txt"
        );
        eprintln!(
            "SKIPPED: the Kubernetes Python client is not installed \
             (pip install -r tests/interop/requirements.txt)"
        );
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_mints_and_reviews_unmodified() {
    if !kubernetes_client_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/kubernetes_client.py");
    let audience = "https://py.example.com";
    for cluster in ["demo", "edge"] {
        let issuer = s.issuer(cluster);
        let out = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(&issuer)
            .arg(dir.path().join("admin.token"))
            .args(["ws-5", "default", audience])
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{cluster}: {text}");
        let got: serde_json::Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{cluster}: not JSON ({e}): {text}"));

        let token = got["token"].as_str().unwrap();
        let claims = decode_part(token, 1);
        assert_eq!(claims["iss"], issuer.as_str());
        assert_eq!(claims["sub"], "system:serviceaccount:ws-5:default");
        assert_eq!(claims["aud"], serde_json::json!([audience]));
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            3600
        );
        let jwks = s.jwks(cluster).await;
        crate::harness::verify_with_jwks(token, &jwks, &issuer, audience).unwrap();
        // The client parsed the expiration the server sent.
        let expiration = got["expiration"].as_str().unwrap();
        let exp = humantime::parse_rfc3339(&expiration.replace("+00:00", "Z")).unwrap();
        assert_eq!(
            exp.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64,
            claims["exp"].as_i64().unwrap()
        );

        let review = &got["review"];
        assert_eq!(review["authenticated"], true, "{cluster}: {review}");
        assert_eq!(review["username"], "system:serviceaccount:ws-5:default");
        assert_eq!(
            review["uid"],
            claims["kubernetes.io"]["serviceaccount"]["uid"]
        );
        assert_eq!(review["audiences"], serde_json::json!([audience]));
        let groups = review["groups"].as_array().unwrap();
        assert!(
            groups.iter().any(|g| g == "system:serviceaccounts:ws-5"),
            "{review}"
        );
    }
}
