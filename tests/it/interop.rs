//! Verifiers not written in Rust: PyJWT (with PyJWKClient fetching the JWKS
//! over HTTP). `.ci/run` installs it; locally the test says how when missing.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;

use crate::harness::Server;

/// Whether PyJWT is importable; in CI (`WORKLOAD_ISSUER_REQUIRE_INTEROP=1`)
/// its absence fails the test instead of skipping it.
pub(crate) async fn pyjwt_available() -> bool {
    let ok = tokio::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let required = std::env::var("WORKLOAD_ISSUER_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "PyJWT is required: pip install -r tests/interop/requirements.txt"
        );
        eprintln!("SKIPPED: PyJWT not installed (pip install -r tests/interop/requirements.txt)");
    }
    ok
}

pub(crate) async fn pyjwt(
    jwks_url: &str,
    issuer: &str,
    audience: &str,
    token: &str,
) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/verify_pyjwt.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([jwks_url, issuer, audience, token])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Changes the payload but keeps the signature.
fn tamper(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("system:serviceaccount:kube-system:admin");
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_accepts_rs256_and_es256_tokens_and_rejects_tampered_ones() {
    if !pyjwt_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    for cluster in ["demo", "edge"] {
        let issuer = s.issuer(cluster);
        let jwks_url = format!("{issuer}/openid/v1/jwks");
        let token = s
            .mint(
                cluster,
                "ws-7",
                "default",
                json!({"spec":{"audiences":["https://py.example.com"]}}),
            )
            .await;
        let (ok, out) = pyjwt(&jwks_url, &issuer, "https://py.example.com", &token).await;
        assert!(ok, "{cluster}: PyJWT refused a good token: {out}");
        let claims: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:ws-7:default");

        let (ok, out) = pyjwt(
            &jwks_url,
            &issuer,
            "https://py.example.com",
            &tamper(&token),
        )
        .await;
        assert!(!ok, "{cluster}: PyJWT accepted a tampered token");
        assert!(out.contains("InvalidSignatureError"), "{out}");

        let (ok, out) = pyjwt(&jwks_url, &issuer, "https://other.example.com", &token).await;
        assert!(!ok && out.contains("InvalidAudienceError"), "{out}");
    }
}
