//! Findings of the red-team review (issue #11), server side: ambiguous API
//! client credentials, certificate names, the generated admin token under
//! concurrent starts, and connections that hold a slot without a request.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::TcpStream;

use crate::cli::spawn_serve;
use crate::harness::{
    assert_public_cap_reached, check_config, eventually, make_tls, metrics, sample, tls_client,
    tls_connect, token_path, ClientCa, ClientName, Options, Server, Tls,
};

#[test]
fn check_config_refuses_two_clients_with_one_token_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("twice.toml");
    let digest = "ab".repeat(32);
    std::fs::write(
        &file,
        format!(
            r#"
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
keys_dir = "keys"
[[clusters]]
id = "demo"
[[clusters]]
id = "edge"
[[api_clients]]
name = "narrow"
token_sha256 = "{digest}"
clusters = ["edge"]
namespaces = ["ci"]
[[api_clients]]
name = "wide"
token_sha256 = "{}"
clusters = ["*"]
[[api_clients]]
name = "first-file"
token_file = "shared.token"
clusters = ["edge"]
[[api_clients]]
name = "second-file"
token_file = "./shared.token"
clusters = ["*"]
"#,
            digest.to_uppercase()
        ),
    )
    .unwrap();
    let (code, stderr) = check_config(&file);
    assert_eq!(code, Some(2), "accepted: {stderr}");
    assert!(
        stderr.contains(
            "api_clients[1].token_sha256: the same token is given to both \"narrow\" and \
             \"wide\"; a token must identify one client, give each its own"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "api_clients[3].token_file: \"./shared.token\" is the token file of both \
             \"first-file\" and \"second-file\"; a token must identify one client, give \
             each its own file"
        ),
        "{stderr}"
    );
}

/// A TLS server whose API clients (`clients`) authenticate with
/// certificates from the client CA `root`; all made in a temporary dir.
struct CertServer {
    s: Server,
    tls: Tls,
    root: ClientCa,
    _dir: tempfile::TempDir,
}

impl CertServer {
    async fn start(clients: &str) -> CertServer {
        let dir = tempfile::tempdir().unwrap();
        let tls = make_tls(dir.path());
        let root = ClientCa::new(dir.path());
        let keys = dir.path().join("keys");
        let s = Server::start(Options {
            tls: Some(&tls),
            extra: format!(
                "[api]\nclient_ca = {:?}\n{clients}",
                root.path.display().to_string()
            ),
            ..Options::new(&keys)
        })
        .await;
        CertServer {
            s,
            tls,
            root,
            _dir: dir,
        }
    }

    /// POSTs an empty TokenRequest for demo/ns/sa with a certificate for
    /// `name` issued by `ca` as the only credential, and returns the status
    /// and body; `Err` when the TLS handshake or the request failed.
    async fn mint_as(&self, ca: &ClientCa, name: ClientName<'_>) -> Result<(u16, String), String> {
        let client = tls_client(&self.tls.ca_pem, Some(&ca.issue(name)));
        let r = client
            .post(format!("{}{}", self.s.base, token_path("demo", "ns", "sa")))
            .json(&json!({}))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.unwrap_or_default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_sans_does_not_authenticate_by_its_common_name() {
    let c = CertServer::start(
        "[[api_clients]]\nname = \"cert-admin\"\ncertificate_names = [\"admin.platform.internal\"]\nclusters = [\"*\"]\n",
    )
    .await;
    // A tenant's sub-CA may only issue names under tenant.example: rustls
    // holds its SANs to that, so it cannot claim the admin's name there...
    let tenant = c.root.constrained_sub_ca("tenant.example");
    assert!(
        c.mint_as(&tenant, ClientName::Dns("admin.platform.internal"))
            .await
            .is_err(),
        "a SAN outside the sub-CA's name constraints was accepted"
    );
    let own = c.mint_as(&tenant, ClientName::Dns("ci.tenant.example"));
    assert_eq!(own.await.unwrap().0, 401);
    // ...but a common name is not held to the constraints: without SANs, it
    // must not name a client.
    let by_cn = c.mint_as(&tenant, ClientName::CommonName("admin.platform.internal"));
    let (status, body) = by_cn.await.unwrap();
    assert_eq!(
        status, 401,
        "a SAN-less certificate authenticated by its CN: {body}"
    );
    // Nor one from the root itself, unless the client opts in.
    let root_cn = c.mint_as(&c.root, ClientName::CommonName("admin.platform.internal"));
    assert_eq!(root_cn.await.unwrap().0, 401);
    let root_san = c.mint_as(&c.root, ClientName::Dns("admin.platform.internal"));
    let (status, body) = root_san.await.unwrap();
    assert_eq!(status, 201, "{body}");
    c.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_may_opt_in_to_its_common_name_for_certificates_without_sans() {
    let c = CertServer::start(
        "[[api_clients]]\nname = \"legacy\"\ncertificate_names = [\"legacy-runner\"]\nallow_common_name = true\nclusters = [\"*\"]\n",
    )
    .await;
    let by_cn = c.mint_as(&c.root, ClientName::CommonName("legacy-runner"));
    let (status, body) = by_cn.await.unwrap();
    assert_eq!(status, 201, "{body}");
    // With SANs, the CN is not looked at even then (RFC 6125 §6.4.4).
    let with_san = c.mint_as(
        &c.root,
        ClientName::DnsAndCommonName("other.platform.internal", "legacy-runner"),
    );
    assert_eq!(with_san.await.unwrap().0, 401);
    c.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_a_fresh_keys_dir_all_accept_the_generated_token() {
    const REPLICAS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    // The embedded default: one RS256 cluster, and an admin client whose
    // token is generated into <keys dir>/admin.token at the first start.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(REPLICAS));
    let starts: Vec<_> = (0..REPLICAS)
        .map(|_| {
            let keys = keys.display().to_string();
            let barrier = barrier.clone();
            tokio::task::spawn_blocking(move || {
                barrier.wait();
                spawn_serve(&["--listen", "127.0.0.1:0", "--keys-dir", &keys], &[])
            })
        })
        .collect();
    let mut replicas = Vec::new();
    for start in starts {
        replicas.push(start.await.unwrap());
    }
    let token = std::fs::read_to_string(keys.join("admin.token")).unwrap();
    let client = workload_issuer::client::http_client(None).unwrap();
    for (i, (_, addr, _)) in replicas.iter().enumerate() {
        let r = client
            .post(format!("http://{addr}{}", token_path("demo", "ns", "sa")))
            .bearer_auth(token.trim())
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_eq!(
            status,
            201,
            "replica {i} refused the token in admin.token: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let generated = replicas
        .iter()
        .filter(|(_, _, lines)| {
            lines
                .iter()
                .any(|l| l.contains("generated its bearer token"))
        })
        .count();
    assert_eq!(generated, 1, "replicas that generated a token");
    // Each process is killed and waited for as `replicas` is dropped.
}

/// Connection slots of each listener in the idle-connection tests.
const SLOTS: usize = 4;
/// Small limits: one second to send something, and a few slots to fill.
const SMALL_LIMITS: &str =
    "[limits]\nmax_connections = 4\nheader_read_timeout = \"1s\"\nrequest_timeout = \"30s\"\n";
/// How long a connection the server should close after header_read_timeout
/// (1 s) may stay open before the test calls it held: far above 1 s, below
/// the 10 s TLS handshake timeout the server had.
const HELD: Duration = Duration::from_secs(6);

/// A client connection that holds a slot without asking anything; `closed`
/// finishes when the server ends the connection.
struct Holder {
    what: String,
    closed: tokio::task::JoinHandle<()>,
}

/// An HTTP/2 client connection that has sent the preface and its SETTINGS
/// and opens no stream; its driver answers the server's PINGs, as a real
/// client does, until the server closes the connection.
async fn idle_h2<T>(what: String, io: T) -> Holder
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (requests, connection) = h2::client::handshake(io).await.unwrap();
    let closed = tokio::spawn(async move {
        // Dropping every request handle would make the client leave by
        // itself: keep one until the server ends the connection.
        let _requests = requests;
        let _ = connection.await;
    });
    Holder { what, closed }
}

/// A connection that sends nothing at all (over TLS: not even the
/// ClientHello, or nothing after the handshake).
fn silent<T>(what: String, mut io: T) -> Holder
where
    T: AsyncRead + Unpin + Send + 'static,
{
    let closed = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    Holder { what, closed }
}

/// With every public slot taken by `holders`: each connection must be closed
/// by the server within [`HELD`], and a discovery request waiting for a slot
/// must then be answered.
async fn holders_give_their_slots_back(s: &Server, holders: Vec<Holder>) {
    let c = s.client();
    let api = s.api_base.clone().unwrap();
    let open = r#"workload_issuer_connections_open{listener="public"}"#;
    let full = eventually(Duration::from_secs(5), || async {
        sample(&metrics(&c, &api).await, open) == Some(SLOTS as f64)
    })
    .await;
    assert!(full, "the holders did not take every public slot");
    let url = format!("{}/c/demo/.well-known/openid-configuration", s.base);
    let waiting = tokio::spawn({
        let c = c.clone();
        async move {
            c.get(url)
                .timeout(Duration::from_secs(20))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    let deadline = tokio::time::Instant::now() + HELD;
    let mut held = Vec::new();
    for h in holders {
        if tokio::time::timeout_at(deadline, h.closed).await.is_err() {
            held.push(h.what);
        }
    }
    assert!(
        held.is_empty(),
        "still open {HELD:?} on, with header_read_timeout = 1s: {held:?}"
    );
    let status = waiting.await.unwrap().expect("discovery was not answered");
    assert_eq!(status, 200);
    // A new client: the server has closed `c`'s pooled connection to the API
    // listener after header_read_timeout, and reusing it could race that close.
    assert_public_cap_reached(&s.client(), &api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_give_their_slots_back_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options {
        api_listener: true,
        extra: SMALL_LIMITS.into(),
        ..Options::new(dir.path())
    })
    .await;
    let public = s.base.trim_start_matches("http://").to_owned();
    let mut holders = Vec::new();
    for i in 0..SLOTS {
        // HTTP/2 with prior knowledge (h2c): the preface, then no stream.
        let tcp = TcpStream::connect(&public).await.unwrap();
        holders.push(idle_h2(format!("idle h2c #{i}"), tcp).await);
    }
    holders_give_their_slots_back(&s, holders).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_clients_and_idle_http2_over_tls_give_their_slots_back() {
    let dir = tempfile::tempdir().unwrap();
    let tls = make_tls(dir.path());
    let s = Server::start(Options {
        tls: Some(&tls),
        api_listener: true,
        extra: SMALL_LIMITS.into(),
        ..Options::new(dir.path())
    })
    .await;
    let public = s.base.trim_start_matches("https://").to_owned();
    let mut holders = vec![silent(
        "TLS, no ClientHello".into(),
        TcpStream::connect(&public).await.unwrap(),
    )];
    let (quiet, _, alpn) = tls_connect(&s.base, &tls.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    holders.push(silent("TLS handshake done, nothing sent".into(), quiet));
    for i in 2..SLOTS {
        let (stream, _, alpn) = tls_connect(&s.base, &tls.ca_pem, &[b"h2"]).await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        holders.push(idle_h2(format!("idle h2 over TLS #{i}"), stream).await);
    }
    holders_give_their_slots_back(&s, holders).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_is_not_closed_as_idle_while_a_stream_is_open() {
    use axum::http::Request;
    use bytes::Bytes;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(Options {
        extra: SMALL_LIMITS.into(),
        ..Options::new(dir.path())
    })
    .await;
    let tcp = TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (requests, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut requests = requests.ready().await.unwrap();
    let request = Request::post(s.token_url("demo", "ns", "sa"))
        .header("authorization", format!("Bearer {}", s.admin_token))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (response, mut body) = requests.send_request(request, false).unwrap();
    // The request body comes slowly, for three header timeouts: the stream
    // is open all along, so the connection is not idle.
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        body.send_data(Bytes::from_static(b" "), false).unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    body.send_data(Bytes::from_static(b"{}"), true).unwrap();
    let response = response.await.expect("the stream was cut");
    assert_eq!(response.status(), 201);
    // And the connection still takes new streams.
    let mut requests = requests.ready().await.expect("the connection was closed");
    let request = Request::get(format!("{}/openid/v1/jwks", s.issuer("demo")))
        .body(())
        .unwrap();
    let (response, _) = requests.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    drop(requests);
    driver.abort();
    s.stop().await;
}
