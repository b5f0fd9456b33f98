//! Running it in production: two listeners, client certificates, health and
//! metrics, TLS renewal, limits and rate limits, graceful shutdown, and the
//! start-up refusals that keep keys and tokens safe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::{
    default_clusters, eventually, make_tls, tls_client, tls_client_config, token_sha256,
    verify_with_jwks, write_config, ClientCa, ClientName, Options, Server,
};

pub(crate) fn options(keys: &std::path::Path) -> Options<'_> {
    Options {
        listen: None,
        keys_dir: keys,
        clusters: default_clusters(),
        tls: None,
        api_listener: false,
        extra: String::new(),
    }
}

pub(crate) fn token_path(cluster: &str, ns: &str, sa: &str) -> String {
    format!("/c/{cluster}/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token")
}

pub(crate) async fn metrics(client: &reqwest::Client, base: &str) -> String {
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    r.text().await.unwrap()
}

/// The value of the sample whose line starts with `series` (name and labels).
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuance_api_can_live_on_its_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options {
        api_listener: true,
        ..options(dir.path())
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
async fn health_and_metrics_describe_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options {
        extra: "[rotation]\nreload_interval = \"1s\"\n".into(),
        ..options(dir.path())
    })
    .await;
    let c = s.client();
    let r = c.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = c.get(format!("{}/readyz", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");

    s.mint("demo", "ns", "sa", json!({})).await;
    s.mint("edge", "ns", "sa", json!({})).await;
    let r = c
        .post(format!("{}{}", s.base, token_path("demo", "ns", "sa")))
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let jwks_url = format!("{}/c/demo/openid/v1/jwks", s.base);
    let r = c.get(&jwks_url).send().await.unwrap();
    let etag = r.headers()["etag"].clone();
    let r = c
        .get(&jwks_url)
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let text = metrics(&c, &s.base).await;
    for (series, value) in [
        (
            r#"workload_issuer_tokens_minted_total{cluster="demo",outcome="issued"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_tokens_minted_total{cluster="edge",outcome="issued"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_tokens_minted_total{cluster="demo",outcome="unauthorized"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_http_requests_total{route="token",status="201"}"#,
            2.0,
        ),
        (
            r#"workload_issuer_http_requests_total{route="token",status="401"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_http_requests_total{route="jwks",status="304"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_http_requests_total{route="readyz",status="200"}"#,
            1.0,
        ),
        (
            r#"workload_issuer_not_modified_total{document="jwks"}"#,
            1.0,
        ),
        ("workload_issuer_key_reload_failing_clusters", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    let open = sample(
        &text,
        r#"workload_issuer_connections_open{listener="main"}"#,
    )
    .unwrap();
    assert!(open >= 1.0, "{open}");
    for cluster in ["demo", "edge"] {
        let age = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "workload_issuer_key_age_seconds{{cluster=\"{cluster}\",kid="
                )) && l.contains("state=\"current\"")
            })
            .unwrap_or_else(|| panic!("no current key age for {cluster}:\n{text}"));
        let age: f64 = age.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((0.0..60.0).contains(&age), "{age}");
        // Default policy: rotate every 30 days, the next key 24 h ahead.
        let next = sample(
            &text,
            &format!("workload_issuer_next_rotation_seconds{{cluster=\"{cluster}\"}}"),
        )
        .unwrap();
        assert!(
            (28.0 * 86400.0..=29.0 * 86400.0).contains(&next),
            "{cluster}: {next}"
        );
    }
    let reloaded = sample(
        &text,
        "workload_issuer_key_reload_last_success_timestamp_seconds",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - reloaded).abs() < 60.0, "{reloaded} vs {now}");

    // A manifest that can no longer be read makes the server not ready (the
    // last good keys keep serving), and ready again once it is repaired.
    let manifest = dir.path().join("demo").join("manifest.json");
    let good = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, b"{ not json").unwrap();
    let readyz = format!("{}/readyz", s.base);
    let not_ready = eventually(Duration::from_secs(10), || async {
        c.get(&readyz).send().await.unwrap().status() == 503
    })
    .await;
    assert!(not_ready, "readyz stayed 200 with a broken manifest");
    let v: serde_json::Value = c.get(&readyz).send().await.unwrap().json().await.unwrap();
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("cluster \"demo\": its keys on disk no longer load"),
        "{v}"
    );
    let text = metrics(&c, &s.base).await;
    assert_eq!(
        sample(&text, "workload_issuer_key_reload_failing_clusters"),
        Some(1.0)
    );
    s.mint("demo", "ns", "sa", json!({})).await;
    std::fs::write(&manifest, good).unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        c.get(&readyz).send().await.unwrap().status() == 200
    })
    .await;
    assert!(ready, "readyz did not recover");
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
        ..options(&keys)
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

/// Opens a TLS connection and returns the stream, the server's leaf
/// certificate and the negotiated ALPN protocol.
pub(crate) async fn tls_connect(
    base: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<
    (
        tokio_rustls::client::TlsStream<TcpStream>,
        Vec<u8>,
        Option<Vec<u8>>,
    ),
    std::io::Error,
> {
    let addr = base.trim_start_matches("https://");
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(ca_pem, None, alpn)));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await?;
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].as_ref().to_vec();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    Ok((stream, leaf, alpn))
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
        ..options(&keys)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_limit_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let hex = token_sha256("limited-token");
    let s = Server::start(Options {
        extra: format!(
            "[[api_clients]]\nname = \"limited\"\ntoken_sha256 = \"{hex}\"\nclusters = [\"*\"]\nrate_limit = \"2/m\"\n"
        ),
        ..options(dir.path())
    })
    .await;
    let c = s.client();
    let url = format!("{}{}", s.base, token_path("edge", "ns", "sa"));
    for _ in 0..2 {
        let r = c
            .post(&url)
            .bearer_auth("limited-token")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = c
        .post(&url)
        .bearer_auth("limited-token")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "TooManyRequests");
    assert_eq!(v["details"]["retryAfterSeconds"], retry);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("over its rate limit"),
        "{v}"
    );
    // Other clients are not limited by it.
    s.mint("edge", "ns", "sa", json!({})).await;
    let text = metrics(&c, &s.base).await;
    assert_eq!(
        sample(
            &text,
            r#"workload_issuer_tokens_minted_total{cluster="edge",outcome="rate_limited"}"#
        ),
        Some(1.0)
    );
    s.stop().await;
}

#[derive(Clone, Copy)]
enum Slow {
    /// Sends a request head one byte at a time and never finishes.
    Trickle,
    /// Connects and sends nothing.
    Idle,
    /// Sends part of the HTTP/2 preface, then nothing.
    PartialPreface,
}

fn slowloris(addr: String, kind: Slow) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            return;
        };
        match kind {
            Slow::Idle => {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                return;
            }
            Slow::PartialPreface => {
                // The start of the HTTP/2 preface, then nothing.
                let _ = stream.write_all(b"PRI * HTTP/2.0\r\n").await;
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                return;
            }
            Slow::Trickle => {}
        }
        let head = b"GET /c/demo/openid/v1/jwks HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let _ = stream.write_all(head).await;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b"a").await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_holding_connections_cannot_starve_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options {
        api_listener: true,
        extra: "[limits]\nmax_connections = 16\nheader_read_timeout = \"1s\"\nrequest_timeout = \"1s\"\n".into(),
        ..options(dir.path())
    })
    .await;
    let public = s.base.trim_start_matches("http://").to_owned();
    let api = s
        .api_base
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    // Every connection slot of both listeners is taken by a slow client.
    let kinds = [Slow::Trickle, Slow::Idle, Slow::PartialPreface, Slow::Idle];
    let mut slow: Vec<_> = (0..16)
        .map(|i| slowloris(api.clone(), kinds[i % 4]))
        .collect();
    // The public listener's slots are all held by clients that send nothing
    // telling: only the head timeout frees them.
    slow.extend((0..16).map(|i| {
        let kind = if i % 2 == 0 {
            Slow::Idle
        } else {
            Slow::PartialPreface
        };
        slowloris(public.clone(), kind)
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = s.client();
    for _ in 0..5 {
        let r = c
            .get(format!(
                "{}/c/demo/.well-known/openid-configuration",
                s.base
            ))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("discovery starved by slow clients");
        assert_eq!(r.status(), 200);
    }
    let text = metrics(&c, s.api_base.as_deref().unwrap()).await;
    assert!(
        sample(
            &text,
            r#"workload_issuer_connections_limited_total{listener="public"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "the connection cap was never reached:\n{text}"
    );
    for t in slow {
        t.abort();
    }

    // A request whose body trickles in past request_timeout gets a 504.
    let mut stream = TcpStream::connect(&api).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n",
        token_path("demo", "ns", "sa"),
        s.admin_token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let mut buf = [0u8; 2048];
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A write can fail once the server has answered and closed (a byte
        // that crossed the close resets the connection); the answer is
        // already here then, so read on regardless.
        let _ = stream.write_all(b" ").await;
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            break;
        }
    }
    if answer.is_empty() {
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer:?}");
    assert!(answer.contains("limits.request_timeout"), "{answer}");

    // A request head over max_header_bytes gets a 431.
    let mut stream = TcpStream::connect(&public).await.unwrap();
    let big = "a".repeat(20 * 1024);
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_others_can_read_stop_the_start_unless_allowed() {
    use std::os::unix::fs::PermissionsExt as _;
    use workload_issuer::config::{Config, Overrides};
    let dir = tempfile::tempdir().unwrap();
    let text = |allow: bool| {
        format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\nkeys_dir = {:?}\nallow_insecure_key_permissions = {allow}\n[[clusters]]\nid = \"demo\"\nalgorithm = \"ES256\"\n",
            dir.path().display().to_string()
        )
    };
    let config = Config::parse("test", &text(false), &Overrides::default()).unwrap();
    drop(
        workload_issuer::serve::prepare(&config, workload_issuer::clock::SystemClock::shared())
            .await
            .unwrap(),
    );
    let pem = std::fs::read_dir(dir.path().join("demo"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .unwrap();
    std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = match workload_issuer::serve::prepare(
        &config,
        workload_issuer::clock::SystemClock::shared(),
    )
    .await
    {
        Ok(_) => panic!("started with a world-readable key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&pem.display().to_string()), "{err}");
    assert!(err.contains("mode 644"), "{err}");
    assert!(err.contains("allow_insecure_key_permissions"), "{err}");
    let allowed = Config::parse("test", &text(true), &Overrides::default()).unwrap();
    assert!(workload_issuer::serve::prepare(
        &allowed,
        workload_issuer::clock::SystemClock::shared()
    )
    .await
    .is_ok());
    // Nothing was changed on disk by the refusal.
    assert_eq!(
        std::fs::metadata(&pem).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "demo", "a", "shutdown-token");
    let (server, addr, _) = crate::cli::spawn_serve(&["--config", config.to_str().unwrap()], &[]);
    // A mint whose body is half sent when the signal comes.
    let body = br#"{"spec":{"audiences":["a"]}}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer shutdown-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token_path("demo", "ns", "sa"),
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = server.id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // New connections are refused once the listener is closed.
    let refused = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(&addr).is_err()
    });
    assert!(refused, "still accepting connections after SIGTERM");
    // The request in flight completes.
    stream.write_all(&body[10..]).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let status = crate::cli::wait_exit(server, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn json_logs_audit_every_mint_without_tokens_or_secrets() {
    use std::io::{BufRead as _, Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let secret = "audit-bearer-secret";
    let config = write_config(dir.path(), "audited", "backend", secret);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_workload-issuer"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = crate::cli::Spawned::new(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let mut addr = None;
    while addr.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not start");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"));
        if let Some(m) = v["fields"]["message"].as_str() {
            addr = m.strip_prefix("listening on http://").map(str::to_owned);
        }
        lines.push(v);
    }
    let addr = addr.unwrap();
    let body = br#"{"spec":{"audiences":["sts.amazonaws.com","vault"]}}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token_path("audited", "payments", "api"),
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let v: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let token = v["status"]["token"].as_str().unwrap().to_owned();
    let claims = crate::harness::decode_part(&token, 1);
    let kid = crate::harness::decode_part(&token, 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = crate::cli::terminate(server);
    assert!(status.success());
    let mut raw: Vec<String> = lines.iter().map(|v| v.to_string()).collect();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        raw.push(line.clone());
        lines.push(serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}")));
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {raw:#?}"))
    };
    let started = find("workload-issuer started");
    assert_eq!(started["fields"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(find("serving issuer")["fields"]["cluster"], "audited");
    let mint = &find("token minted")["fields"];
    assert_eq!(mint["cluster"], "audited");
    assert_eq!(mint["namespace"], "payments");
    assert_eq!(mint["service_account"], "api");
    assert_eq!(mint["client"], "backend");
    assert_eq!(mint["kid"], kid.as_str());
    assert_eq!(mint["jti"], claims["jti"]);
    assert!(
        mint["audiences"].as_str().unwrap().contains("vault"),
        "{mint}"
    );
    // Neither the token, nor its signature, nor the bearer secret is logged.
    let signature = token.rsplit('.').next().unwrap();
    for line in &raw {
        assert!(!line.contains(signature), "a token in the logs: {line}");
        assert!(
            !line.contains(secret),
            "the bearer token in the logs: {line}"
        );
    }
}
