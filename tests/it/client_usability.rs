//! What a person pasting the README's client commands runs into (issue #12):
//! the issuer's `Warning` header reaches them, `--out` and `--socket` make
//! their missing parent directories, and a TLS refusal says to use
//! `--ca-file` (a server certificate from an unknown CA, and a CA
//! certificate served as the server's own, as `openssl req -x509` makes).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::delivery::{short_lived_server, unix_get_with_headers};
use crate::harness::{
    file_mode as mode, run_bin as run, sigterm_and_wait, token_args, Options, Server, Tls, BIN,
};

/// A JWT-shaped token (RS256, kid "x") that gets `verify` as far as fetching
/// discovery; its signature is never reached.
const UNVERIFIED: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.e30.c2ln";

/// `verify` of a token for audience `aud` from `issuer`; add the rest.
fn verify_args(issuer: &str) -> Vec<&str> {
    vec!["verify", "--issuer", issuer, "--audience", "aud"]
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
    let token = |duration| {
        let mut args = token_args(&server, token_file.to_str().unwrap());
        args.extend(["--duration", duration]);
        args
    };
    // demo's max_token_lifetime is the default 24h: 48h is cut to 24h.
    let (code, stdout, err) = run(&token("48h")).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout.trim().split('.').count(), 3, "{stdout}");
    assert!(
        err.contains("requested expiration of 172800 seconds shortened to 86400 seconds"),
        "the Warning header reaches stderr: {err:?}"
    );
    // A lifetime within the maximum draws no warning.
    let (code, _, err) = run(&token("1h")).await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("shortened"), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_out_creates_missing_parent_directories_private() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::default_in(dir.path()).await;
    let out = dir.path().join("run/workload/aws.jwt");
    let server = s.issuer("demo");
    let token_file = dir.path().join("admin.token");
    let mut args = token_args(&server, token_file.to_str().unwrap());
    args.extend(["--out", out.to_str().unwrap()]);
    let (code, _, err) = run(&args).await;
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
    let mut args = token_args(&server, token_file.to_str().unwrap());
    args.extend(["--out", out.to_str().unwrap()]);
    let (code, _, err) = run(&args).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("--out {}", out.display())), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_socket_creates_missing_parent_directories_private() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let s = short_lived_server(&keys, None).await;
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
    let status = sigterm_and_wait(&mut child, Duration::from_secs(10)).await;
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
    let (s, tls) = Server::tls_in(dir.path()).await;
    let server = s.issuer("demo");
    let token_file = keys.join("admin.token");
    let tf = token_file.to_str().unwrap();
    let (code, _, err) = run(&token_args(&server, tf)).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("--ca-file"), "the fix is named: {err}");

    let mut args = verify_args(&server);
    args.push(UNVERIFIED);
    let (code, stdout, err) = run(&args).await;
    assert_eq!(code, 1, "{stdout}{err}");
    assert!(stdout.contains("--ca-file"), "the fix is named: {stdout}");

    // With the CA, both work.
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &tls.ca_pem).unwrap();
    let mut args = token_args(&server, tf);
    args.extend(["--ca-file", ca_file.to_str().unwrap(), "--audience", "aud"]);
    let (code, token, err) = run(&args).await;
    assert_eq!(code, 0, "{err}");
    let mut args = verify_args(&server);
    args.extend(["--ca-file", ca_file.to_str().unwrap(), token.trim()]);
    let (code, stdout, err) = run(&args).await;
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
    let token_file = keys.join("admin.token");
    let mut args = token_args(&server, token_file.to_str().unwrap());
    args.extend(["--ca-file", tls.cert.to_str().unwrap()]);
    let (code, _, err) = run(&args).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("CaUsedAsEndEntity"), "{err}");
    assert!(
        err.contains("--ca-file") && err.contains("leaf"),
        "says what to do: {err}"
    );

    let mut args = verify_args(&server);
    args.extend(["--ca-file", tls.cert.to_str().unwrap(), UNVERIFIED]);
    let (code, stdout, err) = run(&args).await;
    assert_eq!(code, 1, "{stdout}{err}");
    assert!(
        stdout.contains("--ca-file") && stdout.contains("leaf"),
        "{stdout}"
    );
    s.stop().await;
}
