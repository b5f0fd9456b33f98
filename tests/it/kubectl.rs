//! `kubectl create token` against the https server: kubectl 1.32 sends the
//! TokenRequest as Kubernetes protobuf, and only over https sends its bearer.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::harness::{verify_with_jwks, Server};

fn kubeconfig(dir: &Path, server: &str, ca_pem: &str, token: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: issuer\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: backend\n  user:\n    token: {token}\ncontexts:\n- name: issuer\n  context:\n    cluster: issuer\n    user: backend\ncurrent-context: issuer\n",
        STANDARD.encode(ca_pem)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// kubectl with the kubeconfig `config` and its cache in `work`.
async fn kubectl(config: &Path, work: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(config)
        .arg("--cache-dir")
        .arg(work.join("kube-cache"))
        .args(args)
        .output()
        .await
        .expect("kubectl must be on PATH (the machine image ships it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_token_gets_a_token_that_verifies() {
    let work = tempfile::tempdir().unwrap();
    let (s, tls) = Server::tls_in(work.path()).await;
    for cluster in ["demo", "edge"] {
        let config = kubeconfig(work.path(), &s.issuer(cluster), &tls.ca_pem, &s.admin_token);
        let out = kubectl(
            &config,
            work.path(),
            &[
                "create",
                "token",
                "builder",
                "-n",
                "ci",
                "--audience",
                "https://vault.example.com",
                "--duration",
                "1h",
            ],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cluster}: kubectl failed: {stderr}");
        let token = String::from_utf8(out.stdout).unwrap();
        let token = token.trim();
        let jwks = s.jwks(cluster).await;
        let claims = verify_with_jwks(
            token,
            &jwks,
            &s.issuer(cluster),
            "https://vault.example.com",
        )
        .unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:ci:builder");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            3600
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_the_servers_message_for_a_refused_request() {
    let work = tempfile::tempdir().unwrap();
    let (s, tls) = Server::tls_in(work.path()).await;
    let config = kubeconfig(work.path(), &s.issuer("demo"), &tls.ca_pem, &s.admin_token);
    let create = ["create", "token", "builder", "-n", "ci", "--duration", "5m"];
    let out = kubectl(&config, work.path(), &create).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("may not specify a duration less than 10m"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_are_offered() {
    let work = tempfile::tempdir().unwrap();
    let (s, _tls) = Server::tls_in(work.path()).await;
    let addr = s.base.trim_start_matches("https://").to_owned();
    // SECLEVEL=0 lets this client offer TLS 1.1 at all; the server must refuse it.
    for (flag, ok) in [("-tls1_3", true), ("-tls1_2", true), ("-tls1_1", false)] {
        let out = tokio::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                flag,
                "-brief",
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("openssl on PATH");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            text.contains("CONNECTION ESTABLISHED"),
            ok,
            "{flag}: {text}"
        );
        if !ok {
            assert!(text.contains("alert"), "refused in the handshake: {text}");
        }
    }
    // And https serves the documents over HTTP/2 as well.
    let r = s
        .client()
        .get(format!("{}/openid/v1/jwks", s.issuer("demo")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}
