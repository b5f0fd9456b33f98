//! What a person pasting the README's client commands runs into (issue #12):
//! the issuer's `Warning` header reaches them, `--out` and `--socket` make
//! their missing parent directories, and a TLS refusal says to use
//! `--ca-file` (a server certificate from an unknown CA, and a CA
//! certificate served as the server's own, as `openssl req -x509` makes).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::delivery::{short_lived, unix_get_with_headers, BIN};
use crate::harness::{make_tls, Options, Server, Tls};

/// A JWT-shaped token (RS256, kid "x") that gets `verify` as far as fetching
/// discovery; its signature is never reached.
const UNVERIFIED: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.e30.c2ln";

async fn run(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn tls_server(keys: &Path, tls: &Tls) -> Server {
    Server::start(Options {
        tls: Some(tls),
        ..Options::new(keys)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_prints_the_issuers_warning_when_it_shortens_the_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let server = s.issuer("demo");
    let token_file = dir.path().join("admin.token");
    // demo's max_token_lifetime is the default 24h: 48h is cut to 24h.
    let (code, stdout, err) = run(&[
        "token",
        "--server",
        &server,
        "--token-file",
        token_file.to_str().unwrap(),
        "-n",
        "ws-1",
        "--service-account",
        "default",
        "--duration",
        "48h",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout.trim().split('.').count(), 3, "{stdout}");
    assert!(
        err.contains("requested expiration of 172800 seconds shortened to 86400 seconds"),
        "the Warning header reaches stderr: {err:?}"
    );
    // A lifetime within the maximum draws no warning.
    let (code, _, err) = run(&[
        "token",
        "--server",
        &server,
        "--token-file",
        token_file.to_str().unwrap(),
        "-n",
        "ws-1",
        "--service-account",
        "default",
        "--duration",
        "1h",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("shortened"), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_out_creates_missing_parent_directories_private() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let out = dir.path().join("run/workload/aws.jwt");
    let token_file = dir.path().join("admin.token");
    let (code, _, err) = run(&[
        "token",
        "--server",
        &s.issuer("demo"),
        "--token-file",
        token_file.to_str().unwrap(),
        "-n",
        "ws-1",
        "--service-account",
        "default",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().split('.').count(), 3);
    assert_eq!(mode(&out), 0o600);
    for d in ["run", "run/workload"] {
        assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
    }

    // A parent that is a file cannot be made a directory: the flag is named.
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, "").unwrap();
    let out = blocked.join("token");
    let (code, _, err) = run(&[
        "token",
        "--server",
        &s.issuer("demo"),
        "--token-file",
        token_file.to_str().unwrap(),
        "-n",
        "ws-1",
        "--service-account",
        "default",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("--out {}", out.display())), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_socket_creates_missing_parent_directories_private() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let s = Server::start(Options {
        clusters: short_lived(),
        ..Options::new(&keys)
    })
    .await;
    let socket = dir.path().join("run/workload/token.sock");
    let mut child = tokio::process::Command::new(BIN)
        .args(["agent", "--server", &s.issuer("s"), "--token-file"])
        .arg(keys.join("admin.token"))
        .args(["-n", "ns", "--service-account", "sa", "--socket"])
        .arg(&socket)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt as _;
                let _ = e.read_to_string(&mut err).await;
            }
            panic!("the agent exited ({status}) without its socket: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "no socket at {}",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for d in ["run", "run/workload"] {
        assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&socket), 0o600);
    let (status, _, body) = unix_get_with_headers(&socket, "/v1/token?audience=vault").await;
    assert_eq!(status, 200, "{body}");
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().unwrap().to_string())
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the agent ends on SIGTERM")
        .unwrap();
    assert!(status.success());
    s.stop().await;
}

/// A self-signed CA certificate for 127.0.0.1 served as the server's own,
/// which is what `openssl req -x509` makes (basicConstraints CA:TRUE).
fn ca_as_leaf(dir: &Path) -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("ca-leaf.crt"), dir.join("ca-leaf.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Tls {
        cert: cert_path,
        key: key_path,
        ca_pem: cert.pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_an_unknown_ca_points_token_and_verify_to_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let tls = make_tls(dir.path());
    let s = tls_server(&keys, &tls).await;
    let server = s.issuer("demo");
    let token_file = keys.join("admin.token");
    let (code, _, err) = run(&[
        "token",
        "--server",
        &server,
        "--token-file",
        token_file.to_str().unwrap(),
        "-n",
        "ws-1",
        "--service-account",
        "default",
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("--ca-file"), "the fix is named: {err}");

    let (code, stdout, err) = run(&[
        "verify",
        "--issuer",
        &server,
        "--audience",
        "aud",
        UNVERIFIED,
    ])
    .await;
    assert_eq!(code, 1, "{stdout}{err}");
    assert!(stdout.contains("--ca-file"), "the fix is named: {stdout}");

    // With the CA, both work.
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &tls.ca_pem).unwrap();
    let (code, token, err) = run(&[
        "token",
        "--server",
        &server,
        "--token-file",
        token_file.to_str().unwrap(),
        "--ca-file",
        ca_file.to_str().unwrap(),
        "-n",
        "ws-1",
        "--service-account",
        "default",
        "--audience",
        "aud",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, stdout, err) = run(&[
        "verify",
        "--issuer",
        &server,
        "--audience",
        "aud",
        "--ca-file",
        ca_file.to_str().unwrap(),
        token.trim(),
    ])
    .await;
    assert_eq!(code, 0, "{stdout}{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_served_as_the_servers_own_is_explained_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let tls = ca_as_leaf(dir.path());
    let s = tls_server(&keys, &tls).await;
    let server = s.issuer("demo");
    let (code, _, err) = run(&[
        "token",
        "--server",
        &server,
        "--token-file",
        keys.join("admin.token").to_str().unwrap(),
        "--ca-file",
        tls.cert.to_str().unwrap(),
        "-n",
        "ws-1",
        "--service-account",
        "default",
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("CaUsedAsEndEntity"), "{err}");
    assert!(
        err.contains("--ca-file") && err.contains("leaf"),
        "says what to do: {err}"
    );

    let (code, stdout, err) = run(&[
        "verify",
        "--issuer",
        &server,
        "--audience",
        "aud",
        "--ca-file",
        tls.cert.to_str().unwrap(),
        UNVERIFIED,
    ])
    .await;
    assert_eq!(code, 1, "{stdout}{err}");
    assert!(
        stdout.contains("--ca-file") && stdout.contains("leaf"),
        "{stdout}"
    );
    s.stop().await;
}
