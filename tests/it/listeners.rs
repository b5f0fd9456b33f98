//! Listeners as production runs them: the issuance API on its own listener,
//! client certificates, TLS renewed without a restart.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::{
    eventually, make_tls, metrics, sample, tls_client, tls_connect, token_path, verify_with_jwks,
    ClientCa, ClientName, Options, Server,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuance_api_can_live_on_its_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options {
        api_listener: true,
        ..Options::new(dir.path())
    })
    .await;
    let api = s.api_base.clone().unwrap();
    let c = s.client();
    for path in [
        "/c/demo/.well-known/openid-configuration",
        "/c/demo/openid/v1/jwks",
        "/healthz",
        "/readyz",
    ] {
        let r = c.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "public {path}");
    }
    // The public face neither mints, nor reviews, nor shows metrics.
    let r = c
        .post(format!("{}{}", s.base, token_path("demo", "ns", "sa")))
        .bearer_auth(&s.admin_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("not served on this listener"));
    let review = "/c/demo/apis/authentication.k8s.io/v1/tokenreviews";
    let r = c
        .post(format!("{}{review}", s.base))
        .bearer_auth(&s.admin_token)
        .json(&json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": {"token": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(format!("{}/metrics", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // The API listener mints; the token verifies with the public JWKS.
    let r = c
        .post(format!("{api}{}", token_path("demo", "ns", "sa")))
        .bearer_auth(&s.admin_token)
        .json(&json!({"spec": {"audiences": ["vault"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    let token = v["status"]["token"].as_str().unwrap();
    let jwks = s.jwks("demo").await;
    verify_with_jwks(token, &jwks, &s.issuer("demo"), "vault").unwrap();
    let text = metrics(&c, &api).await;
    assert_eq!(
        sample(
            &text,
            r#"workload_issuer_tokens_minted_total{cluster="demo",outcome="issued"}"#
        ),
        Some(1.0),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate_api_clients_with_the_same_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let tls = make_tls(dir.path());
    let ca = ClientCa::new(dir.path());
    let extra = format!(
        r#"
[api]
client_ca = {:?}

[[api_clients]]
name = "cert-ci"
certificate_names = ["ci.platform.internal"]
clusters = ["edge"]
namespaces = ["ci"]

[[api_clients]]
name = "cert-admin"
certificate_names = ["spiffe://example.org/admin"]
clusters = ["*"]
"#,
        ca.path.display().to_string()
    );
    let s = Server::start(Options {
        tls: Some(&tls),
        extra,
        ..Options::new(&keys)
    })
    .await;
    let mint = |client: reqwest::Client, path: String, bearer: Option<String>| {
        let url = format!("{}{path}", s.base);
        async move {
            let mut req = client.post(url).json(&json!({}));
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };

    let ci = tls_client(
        &tls.ca_pem,
        Some(&ca.issue(ClientName::Dns("ci.platform.internal"))),
    );
    let (status, body) = mint(ci.clone(), token_path("edge", "ci", "builder"), None).await;
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let claims = crate::harness::decode_part(v["status"]["token"].as_str().unwrap(), 1);
    assert_eq!(claims["sub"], "system:serviceaccount:ci:builder");
    let (status, body) = mint(ci.clone(), token_path("edge", "prod", "builder"), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("API client \\\"cert-ci\\\" may not mint tokens in namespace"),
        "{body}"
    );
    let (status, _) = mint(ci.clone(), token_path("demo", "ci", "builder"), None).await;
    assert_eq!(status, 403);

    let admin = tls_client(
        &tls.ca_pem,
        Some(&ca.issue(ClientName::Uri("spiffe://example.org/admin"))),
    );
    let (status, body) = mint(admin, token_path("demo", "ns", "sa"), None).await;
    assert_eq!(status, 201, "{body}");

    // A certificate from the CA naming no client, and no credential at all.
    let nobody = tls_client(
        &tls.ca_pem,
        Some(&ca.issue(ClientName::CommonName("nobody"))),
    );
    let (status, _) = mint(nobody, token_path("demo", "ns", "sa"), None).await;
    assert_eq!(status, 401);
    let anonymous = tls_client(&tls.ca_pem, None);
    let (status, _) = mint(anonymous.clone(), token_path("demo", "ns", "sa"), None).await;
    assert_eq!(status, 401);
    // Bearer tokens keep working without a certificate; with both, the
    // bearer token decides.
    let (status, _) = mint(
        anonymous.clone(),
        token_path("demo", "ns", "sa"),
        Some(s.admin_token.clone()),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = mint(ci, token_path("demo", "ns", "sa"), Some("wrong".into())).await;
    assert_eq!(status, 401);
    // Discovery needs no certificate.
    let r = anonymous
        .get(format!("{}/c/demo/openid/v1/jwks", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A certificate from another CA fails the handshake.
    let other = ClientCa::new(&dir.path().join("keys"));
    let stranger = tls_client(
        &tls.ca_pem,
        Some(&other.issue(ClientName::Dns("ci.platform.internal"))),
    );
    let result = stranger
        .post(format!("{}{}", s.base, token_path("edge", "ci", "x")))
        .json(&json!({}))
        .send()
        .await;
    assert!(
        result.is_err(),
        "a certificate from an unknown CA was accepted"
    );
    s.stop().await;
}

/// One HTTP/1.1 GET on an open stream, keeping it open; returns the status line.
async fn get_keep_alive<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // Headers, then as much body as Content-Length says.
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text.lines().next().unwrap().to_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_served_without_a_restart_or_dropped_connections() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let first = make_tls(dir.path());
    let s = Server::start(Options {
        tls: Some(&first),
        extra: "tls_reload_interval = \"1s\"\n".into(),
        ..Options::new(&keys)
    })
    .await;
    let path = "/c/demo/.well-known/openid-configuration";
    // HTTP/2 and HTTP/1.1 are both offered.
    let (_, _, alpn) = tls_connect(&s.base, &first.ca_pem, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (mut open, old_leaf, alpn) = tls_connect(&s.base, &first.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(get_keep_alive(&mut open, path).await, "HTTP/1.1 200 OK");

    // cert-manager renews: a new certificate from a new CA at the same paths.
    let renewed_dir = dir.path().join("renewed");
    std::fs::create_dir(&renewed_dir).unwrap();
    let renewed = make_tls(&renewed_dir);
    std::fs::copy(&renewed.key, &first.key).unwrap();
    std::fs::copy(&renewed.cert, &first.cert).unwrap();
    let mut new_leaf = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while new_leaf.is_none() && Instant::now() < deadline {
        match tls_connect(&s.base, &renewed.ca_pem, &[b"h2", b"http/1.1"]).await {
            Ok((_, leaf, _)) => new_leaf = Some(leaf),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let switched = new_leaf.is_some();
    let new_leaf = new_leaf.unwrap_or_default();
    assert!(
        switched,
        "new connections never got the renewed certificate"
    );
    assert_ne!(new_leaf, old_leaf);
    // The connection opened before the renewal is still served.
    assert_eq!(get_keep_alive(&mut open, path).await, "HTTP/1.1 200 OK");

    // A certificate file missing for a moment (a non-atomic writer) makes
    // the server not ready; back unchanged, it is ready again.
    let client = tls_client(&renewed.ca_pem, None);
    let readyz = format!("{}/readyz", s.base);
    let aside = dir.path().join("tls.crt.aside");
    std::fs::rename(&first.cert, &aside).unwrap();
    let status_is = |code: u16| {
        let (client, readyz) = (client.clone(), readyz.clone());
        move || {
            let (client, readyz) = (client.clone(), readyz.clone());
            async move { client.get(&readyz).send().await.unwrap().status() == code }
        }
    };
    let went = eventually(Duration::from_secs(15), status_is(503)).await;
    assert!(went, "readyz stayed 200 with the certificate file gone");
    std::fs::rename(&aside, &first.cert).unwrap();
    let back = eventually(Duration::from_secs(15), status_is(200)).await;
    assert!(back, "readyz did not recover once the same files were back");

    // A broken renewal is refused: the renewed certificate keeps serving and
    // readiness says why.
    std::fs::write(
        &first.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_ready = eventually(Duration::from_secs(15), || async {
        client.get(&readyz).send().await.unwrap().status() == 503
    })
    .await;
    assert!(not_ready);
    let v: serde_json::Value = client
        .get(&readyz)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("TLS files could not be reloaded"),
        "{v}"
    );
    let (_, leaf, _) = tls_connect(&s.base, &renewed.ca_pem, &[b"h2"])
        .await
        .unwrap();
    assert_eq!(leaf, new_leaf);
    s.stop().await;
}
