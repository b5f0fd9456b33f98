//! The client side authenticating with a client certificate (`--cert`,
//! `--key`) instead of an API token: the external signer's relay signs
//! through a TLS issuer with a client CA as kube-apiserver asks it to,
//! scoped to the clusters of the API client the certificate names; `token`
//! mints with one; and every bad certificate or key file, and every refusal
//! by the issuer, is named.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::Code;

use crate::harness::{
    make_tls, run_bin, verify_with_jwks, ClientCa, ClientName, Options, Server, Tls,
};
use crate::signer::{claims, jwks_kids, kids_of, Apiserver, Relay, PACKAGES};

/// The API clients that authenticate by certificate: one for cluster demo,
/// one for cluster edge only.
const CERT_CLIENTS: &str = "[[api_clients]]\nname = \"demo-relay\"\n\
    certificate_names = [\"relay.demo.internal\"]\nclusters = [\"demo\"]\n\
    [[api_clients]]\nname = \"edge-relay\"\n\
    certificate_names = [\"relay.edge.internal\"]\nclusters = [\"edge\"]\n";

/// A TLS issuer trusting client certificates from `root`, with the
/// default clusters and clients and [`CERT_CLIENTS`].
struct CertIssuer {
    s: Server,
    root: ClientCa,
    ca_file: PathBuf,
    dir: tempfile::TempDir,
    _tls: Tls,
}

impl CertIssuer {
    async fn start() -> CertIssuer {
        let dir = tempfile::tempdir().unwrap();
        let tls = make_tls(dir.path());
        let root = ClientCa::new(dir.path());
        let ca_file = dir.path().join("issuer-ca.pem");
        std::fs::write(&ca_file, &tls.ca_pem).unwrap();
        let keys = dir.path().join("keys");
        let s = Server::start(Options {
            tls: Some(&tls),
            extra: format!(
                "[api]\nclient_ca = {:?}\n{CERT_CLIENTS}",
                root.path.display().to_string()
            ),
            ..Options::new(&keys)
        })
        .await;
        CertIssuer {
            s,
            root,
            ca_file,
            dir,
            _tls: tls,
        }
    }

    /// Writes a certificate for `name` issued by `ca` and its key; their paths.
    fn cert_files(&self, ca: &ClientCa, name: ClientName<'_>, stem: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = ca.issue(name);
        write_pair(self.dir.path(), stem, &cert, &key)
    }

    /// A client CA the issuer does not trust.
    fn other_ca(&self) -> ClientCa {
        let dir = self.dir.path().join("elsewhere");
        std::fs::create_dir_all(&dir).unwrap();
        ClientCa::new(&dir)
    }

    /// The relay for cluster `cluster`, presenting `cert` and `key`.
    async fn relay(&self, cluster: &str, (cert, key): &(PathBuf, PathBuf)) -> (Relay, Apiserver) {
        let socket = self
            .dir
            .path()
            .join(format!("{cluster}-{}.sock", stem(cert)));
        let auth: [&OsStr; 6] = [
            "--cert".as_ref(),
            cert.as_ref(),
            "--key".as_ref(),
            key.as_ref(),
            "--ca-file".as_ref(),
            self.ca_file.as_ref(),
        ];
        let relay = Relay::start_with(&self.s.issuer(cluster), &auth, &socket).await;
        let apiserver = Apiserver::dial(&socket).await;
        (relay, apiserver)
    }

    /// `token` for demo/ns/sa with `auth` (flags and values): exit code,
    /// stdout, stderr.
    async fn token(&self, auth: &[&str]) -> (i32, String, String) {
        let issuer = self.s.issuer("demo");
        let ca = self.ca_file.display().to_string();
        let mut args = vec![
            "token",
            "--server",
            &issuer,
            "--ca-file",
            &ca,
            "-n",
            "ns",
            "--service-account",
            "sa",
            "--audience",
            "test-aud",
        ];
        args.extend_from_slice(auth);
        run_bin(&args).await
    }
}

fn write_pair(dir: &Path, stem: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

fn stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_signs_with_a_client_certificate_only_where_its_client_may_mint() {
    let c = CertIssuer::start().await;
    let client = c.s.client();
    let demo = c.s.issuer("demo");

    // No token file: the certificate names the "demo-relay" client.
    let cert = c.cert_files(&c.root, ClientName::Dns("relay.demo.internal"), "demo");
    let (relay, apiserver) = c.relay("demo", &cert).await;
    let jwks = jwks_kids(&client, &demo).await;
    for package in PACKAGES {
        let keys = apiserver.fetch_keys(package).await.unwrap();
        assert_eq!(kids_of(&keys), jwks, "{package}");
        let (token, kid) = apiserver.token(package, &claims(&demo, "ns", 600)).await;
        // The JWKS: the signing key and the standby published beside it.
        assert!(jwks.len() == 2 && jwks.contains(&kid), "{jwks:?} {kid}");
        let claims = verify_with_jwks(
            &token,
            &c.s.jwks("demo").await,
            &demo,
            "https://kubernetes.default.svc",
        )
        .unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:ns:default");
    }
    drop(apiserver);
    drop(relay);

    // The "edge-relay" client may not sign for demo.
    let edge_cert = c.cert_files(&c.root, ClientName::Dns("relay.edge.internal"), "edge");
    let (_relay, apiserver) = c.relay("demo", &edge_cert).await;
    let err = apiserver
        .sign("v1", &claims(&demo, "ns", 600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("cluster \"demo\""),
        "{}",
        err.message()
    );
    let err = apiserver.fetch_keys("v1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());

    // A certificate the issuer trusts but that names no API client.
    let stranger = c.cert_files(&c.root, ClientName::Dns("stranger.internal"), "stranger");
    let (_relay, apiserver) = c.relay("demo", &stranger).await;
    let err = apiserver
        .sign("v1", &claims(&demo, "ns", 600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    let expected = format!(
        "the issuer refused (401): Unauthorized; the certificate in --cert {} names no API \
         client of the issuer",
        text(&stranger.0)
    );
    assert!(err.message().contains(&expected), "{}", err.message());

    // A certificate from a CA the issuer does not trust (though named like
    // the one it does): refused in the handshake, with the issuer's alert.
    let elsewhere = c.other_ca();
    let foreign = c.cert_files(
        &elsewhere,
        ClientName::Dns("relay.demo.internal"),
        "foreign",
    );
    let (_relay, apiserver) = c.relay("demo", &foreign).await;
    let err = apiserver
        .sign("v1", &claims(&demo, "ns", 600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    for part in [
        "refused the relay's certificate",
        "The server refused the client certificate of --cert (its TLS alert: DecryptError)",
    ] {
        assert!(err.message().contains(part), "{}", err.message());
    }
    c.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mints_with_a_client_certificate_and_names_the_certificate_when_refused() {
    let c = CertIssuer::start().await;
    let (cert, key) = c.cert_files(&c.root, ClientName::Dns("relay.demo.internal"), "demo");
    let (code, stdout, stderr) = c
        .token(&["--cert", &text(&cert), "--key", &text(&key)])
        .await;
    assert_eq!(code, 0, "{stderr}");
    let claims = verify_with_jwks(
        stdout.trim(),
        &c.s.jwks("demo").await,
        &c.s.issuer("demo"),
        "test-aud",
    )
    .unwrap();
    assert_eq!(claims["sub"], "system:serviceaccount:ns:sa");

    // Scoped like a token: the edge client may not mint for demo.
    let (cert, key) = c.cert_files(&c.root, ClientName::Dns("relay.edge.internal"), "edge");
    let (code, _, stderr) = c
        .token(&["--cert", &text(&cert), "--key", &text(&key)])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("(403)") && stderr.contains("may not mint tokens for cluster \"demo\""),
        "{stderr}"
    );

    let (cert, key) = c.cert_files(&c.root, ClientName::Dns("stranger.internal"), "stranger");
    let (code, _, stderr) = c
        .token(&["--cert", &text(&cert), "--key", &text(&key)])
        .await;
    assert_eq!(code, 1, "{stderr}");
    let expected = format!(
        "the server refused the request (401): Unauthorized; the certificate in --cert {} \
         names no API client of the issuer",
        text(&cert)
    );
    assert!(stderr.contains(&expected), "{stderr}");

    let elsewhere = c.other_ca();
    let (cert, key) = c.cert_files(
        &elsewhere,
        ClientName::Dns("relay.demo.internal"),
        "foreign",
    );
    let (code, _, stderr) = c
        .token(&["--cert", &text(&cert), "--key", &text(&key)])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "The server refused the client certificate of --cert (its TLS alert: DecryptError)"
        ),
        "{stderr}"
    );
    // A self-signed one, from no CA the issuer knows.
    let own = rcgen::generate_simple_self_signed(vec!["relay.demo.internal".to_string()]).unwrap();
    let (cert, key) = write_pair(
        c.dir.path(),
        "self-signed",
        &own.cert.pem(),
        &own.signing_key.serialize_pem(),
    );
    let (code, _, stderr) = c
        .token(&["--cert", &text(&cert), "--key", &text(&key)])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "The server refused the client certificate of --cert (its TLS alert: UnknownCA)"
        ),
        "{stderr}"
    );
    c.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_certificate_or_key_file_is_named_before_anything_is_sent() {
    let c = CertIssuer::start().await;
    let dir = c.dir.path();
    let (cert, key) = c.cert_files(&c.root, ClientName::Dns("relay.demo.internal"), "good");
    let (_, other_key) = c.cert_files(&c.root, ClientName::Dns("relay.demo.internal"), "other");
    let missing = dir.join("missing.pem");
    let garbage_key = dir.join("garbage.key");
    std::fs::write(
        &garbage_key,
        "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (cert, key, other_key, missing, garbage_key) = (
        text(&cert),
        text(&key),
        text(&other_key),
        text(&missing),
        text(&garbage_key),
    );
    let cases: [(&str, [&str; 4], String); 6] = [
        (
            "an unreadable --cert",
            ["--cert", &missing, "--key", &key],
            format!("error: --cert {missing}: No such file or directory"),
        ),
        (
            "an unreadable --key",
            ["--cert", &cert, "--key", &missing],
            format!("error: --key {missing}: No such file or directory"),
        ),
        (
            "a key given as --cert",
            ["--cert", &key, "--key", &key],
            format!("error: --cert {key}: no CERTIFICATE in the file"),
        ),
        (
            "a certificate given as --key",
            ["--cert", &cert, "--key", &cert],
            format!("error: --key {cert}: no private key in the file"),
        ),
        (
            "a key that is not the certificate's",
            ["--cert", &cert, "--key", &other_key],
            format!("error: --key {other_key} is not the private key of the certificate in --cert {cert}"),
        ),
        (
            "a PRIVATE KEY block that holds no key",
            ["--cert", &cert, "--key", &garbage_key],
            format!("error: --key {garbage_key}: not a private key this client can use"),
        ),
    ];
    for (what, auth, expected) in &cases {
        let (code, stdout, stderr) = c.token(auth).await;
        assert_eq!(code, 2, "{what}: {stderr}");
        assert!(stdout.is_empty(), "{what}: {stdout}");
        assert!(stderr.contains(expected.as_str()), "{what}: {stderr}");
    }
    // The relay and the agent read the same files the same way, and stop
    // before serving.
    let socket = text(&dir.join("never.sock"));
    let issuer = c.s.issuer("demo");
    let (what, auth, expected) = &cases[4];
    for command in [
        vec![
            "kubernetes-signer",
            "--server",
            &issuer,
            "--socket",
            &socket,
        ],
        vec![
            "agent",
            "--server",
            &issuer,
            "--socket",
            &socket,
            "-n",
            "ns",
            "--service-account",
            "sa",
        ],
    ] {
        let mut args = command.clone();
        args.extend_from_slice(auth);
        let (code, _, stderr) = tokio::time::timeout(Duration::from_secs(30), run_bin(&args))
            .await
            .expect("a bad key stops the command");
        assert_eq!(code, 2, "{} with {what}: {stderr}", command[0]);
        assert!(
            stderr.contains(expected.as_str()),
            "{}: {stderr}",
            command[0]
        );
        assert!(!dir.join("never.sock").exists());
    }
    // Both or neither, and a credential there must be.
    let (code, _, stderr) = c.token(&["--cert", &cert]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--key <FILE>"), "{stderr}");
    let (code, _, stderr) = c.token(&["--key", &key]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--cert <FILE>"), "{stderr}");
    let (code, _, stderr) = c.token(&[]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--token-file"), "{stderr}");
    c.s.stop().await;
}
