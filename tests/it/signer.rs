//! Kubernetes' external token signer (REFERENCE §9) as kube-apiserver uses
//! it: a tonic client dials the Unix socket with authority "localhost",
//! calls Metadata, FetchKeys and Sign under both proto packages, assembles
//! `header.claims.signature`, checks the header strictly, verifies the
//! signature with the FetchKeys key and has PyJWT accept the token through
//! the issuer's discovery. Then the same through the relay
//! (`workload-issuer kubernetes-signer`), with the issuer stopped and
//! restarted under it.
//!
//! The messages are declared here from the proto, apart from the server's.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::uri::PathAndQuery;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

use crate::harness::{eventually, metrics, sample, Options, Server, CI_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_workload-issuer");

#[derive(Clone, PartialEq, prost::Message)]
struct SignJwtRequest {
    #[prost(string, tag = "1")]
    claims: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SignJwtResponse {
    #[prost(string, tag = "1")]
    header: String,
    #[prost(string, tag = "2")]
    signature: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FetchKeysResponse {
    #[prost(message, repeated, tag = "1")]
    keys: Vec<Key>,
    #[prost(message, optional, tag = "2")]
    data_timestamp: Option<Timestamp>,
    #[prost(int64, tag = "3")]
    refresh_hint_seconds: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Key {
    #[prost(string, tag = "1")]
    key_id: String,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
    #[prost(bool, tag = "3")]
    exclude_from_oidc_discovery: bool,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct Timestamp {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetadataResponse {
    #[prost(int64, tag = "1")]
    max_token_expiration_seconds: i64,
}

pub(crate) const PACKAGES: [&str; 2] = ["v1", "v1alpha1"];

/// kube-apiserver's side of the socket.
pub(crate) struct Apiserver {
    channel: Channel,
}

impl Apiserver {
    pub(crate) async fn dial(socket: &Path) -> Apiserver {
        let path = socket.to_owned();
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap();
        Apiserver { channel }
    }

    async fn call<Req, Resp>(
        &self,
        package: &str,
        method: &str,
        req: Req,
    ) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.unwrap();
        let path =
            PathAndQuery::try_from(format!("/{package}.ExternalJWTSigner/{method}")).unwrap();
        let mut request = tonic::Request::new(req);
        request.set_timeout(Duration::from_secs(60));
        grpc.unary(
            request,
            path,
            tonic_prost::ProstCodec::<Req, Resp>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
    }

    pub(crate) async fn metadata(&self, package: &str) -> i64 {
        let m: MetadataResponse = self.call(package, "Metadata", Empty {}).await.unwrap();
        m.max_token_expiration_seconds
    }

    /// FetchKeys, checked as kube-apiserver checks it.
    pub(crate) async fn fetch_keys(
        &self,
        package: &str,
    ) -> Result<FetchKeysResponse, tonic::Status> {
        let keys: FetchKeysResponse = self.call(package, "FetchKeys", Empty {}).await?;
        assert!(!keys.keys.is_empty(), "no keys");
        assert!(keys.data_timestamp.is_some(), "no data_timestamp");
        assert!(
            keys.refresh_hint_seconds > 0,
            "refresh hint {}",
            keys.refresh_hint_seconds
        );
        for k in &keys.keys {
            assert!((1..=1024).contains(&k.key_id.len()), "kid {:?}", k.key_id);
            assert!(!k.exclude_from_oidc_discovery);
            // The Kubernetes kid: SHA-256 of the PKIX DER (REFERENCE §2).
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &k.key);
            assert_eq!(URL_SAFE_NO_PAD.encode(digest.as_ref()), k.key_id);
        }
        Ok(keys)
    }

    pub(crate) async fn sign(
        &self,
        package: &str,
        claims: &str,
    ) -> Result<SignJwtResponse, tonic::Status> {
        self.call(
            package,
            "Sign",
            SignJwtRequest {
                claims: claims.to_owned(),
            },
        )
        .await
    }

    /// Signs `claims` as kube-apiserver does and assembles the token after
    /// checking the header strictly and the signature with the FetchKeys
    /// key it names. Returns the token and its kid.
    pub(crate) async fn token(&self, package: &str, claims: &str) -> (String, String) {
        let signed = self.sign(package, claims).await.unwrap();
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&signed.header).unwrap()).unwrap();
        let mut members: Vec<&str> = header.keys().map(String::as_str).collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "kid", "typ"], "header {header:?}");
        assert_eq!(header["typ"], "JWT");
        let alg = header["alg"].as_str().unwrap();
        assert!(["RS256", "ES256", "ES384", "ES512"].contains(&alg));
        let kid = header["kid"].as_str().unwrap().to_owned();
        assert!(!signed.signature.is_empty());
        let token = format!("{}.{claims}.{}", signed.header, signed.signature);
        let keys = self.fetch_keys(package).await.unwrap();
        let key = keys
            .keys
            .iter()
            .find(|k| k.key_id == kid)
            .unwrap_or_else(|| panic!("kid {kid} is not among FetchKeys' keys"));
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&key.key)
        );
        let (decoding, algorithm) = match alg {
            "RS256" => (
                jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
                jsonwebtoken::Algorithm::RS256,
            ),
            _ => (
                jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
                jsonwebtoken::Algorithm::ES256,
            ),
        };
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(&token, &decoding, &validation).unwrap_or_else(|e| {
            panic!("the signature does not verify with the FetchKeys key: {e}")
        });
        (token, kid)
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A payload as kube-apiserver builds it for a pod-bound token.
pub(crate) fn claims(issuer: &str, namespace: &str, lifetime: i64) -> String {
    let iat = now();
    let payload = json!({
        "aud": ["https://kubernetes.default.svc"],
        "exp": iat + lifetime,
        "iat": iat,
        "iss": issuer,
        "jti": "0b7c1a5e-2f7e-4c55-9b8e-4f4f1f0c1d2e",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "n1", "uid": "4b1d0a3e-0000-4000-8000-000000000001"},
            "pod": {"name": "p", "uid": "4b1d0a3e-0000-4000-8000-000000000002"},
            "serviceaccount": {"name": "default", "uid": "4b1d0a3e-0000-4000-8000-000000000003"}
        },
        "nbf": iat,
        "sub": format!("system:serviceaccount:{namespace}:default"),
    });
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap())
}

pub(crate) fn kids_of(keys: &FetchKeysResponse) -> Vec<String> {
    let mut kids: Vec<String> = keys.keys.iter().map(|k| k.key_id.clone()).collect();
    kids.sort();
    kids
}

pub(crate) async fn jwks_kids(client: &reqwest::Client, issuer: &str) -> Vec<String> {
    let jwks: Value = client
        .get(format!("{issuer}/openid/v1/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

/// Whether PyJWT is here; required in CI (`WORKLOAD_ISSUER_REQUIRE_INTEROP=1`).
fn pyjwt_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let required = std::env::var("WORKLOAD_ISSUER_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "PyJWT is required: pip install -r tests/interop/requirements.txt"
        );
        eprintln!("SKIPPED the PyJWT part: PyJWT not installed");
    }
    ok
}

/// PyJWT verifies `token` with the JWKS this issuer's discovery names.
async fn pyjwt_accepts(client: &reqwest::Client, issuer: &str, token: &str) {
    if !pyjwt_available() {
        return;
    }
    let discovery: Value = client
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], issuer);
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/verify_pyjwt.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([jwks_uri, issuer, "https://kubernetes.default.svc", token])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "PyJWT refused the token: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn keys_cli(config: &Path, args: &[&str]) {
    let out = tokio::process::Command::new(BIN)
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the server's JWKS differs from `before`; the new kids.
async fn jwks_changes(client: &reqwest::Client, issuer: &str, before: &[String]) -> Vec<String> {
    let changed = eventually(Duration::from_secs(10), || {
        let c = client.clone();
        async move { jwks_kids(&c, issuer).await != before }
    })
    .await;
    assert!(changed, "the JWKS did not change");
    jwks_kids(client, issuer).await
}

/// Waits for the server to have bound `socket` (it does so as it starts).
async fn bound(socket: &Path) -> PathBuf {
    let up = eventually(Duration::from_secs(30), || async { socket.exists() }).await;
    assert!(up, "no socket at {}", socket.display());
    socket.to_owned()
}

/// One RS256 cluster `k8s` with its signer socket in `dir`, reloading its
/// keys every second, and an admin client; with the same for the CLI.
fn signer_cluster(dir: &Path, extra: &str) -> String {
    format!(
        "[rotation]\nenabled = false\nreload_interval = \"1s\"\n\
         [[clusters]]\nid = \"k8s\"\nalgorithm = \"RS256\"\nmax_token_lifetime = \"48h\"\n\
         kubernetes_signer_socket = {:?}\n{extra}\n\
         [[api_clients]]\nname = \"admin\"\ntoken_file = \"admin.token\"\ngenerate = true\n\
         clusters = [\"*\"]\n",
        dir.join("signer.sock").display().to_string()
    )
}

/// A config file naming the same keys dir and cluster, for `keys` commands.
fn cli_config(dir: &Path, keys: &Path) -> PathBuf {
    let path = dir.join("cli.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\nkeys_dir = {:?}\n{}",
            keys.display().to_string(),
            signer_cluster(dir, "")
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_signs_through_the_socket_and_follows_rotation_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let socket = dir.path().join("signer.sock");
    let s = Server::start(Options {
        clusters: signer_cluster(dir.path(), ""),
        ..Options::new(&keys_dir)
    })
    .await;
    let client = s.client();
    let issuer = s.issuer("k8s");

    bound(&socket).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is private to its owner");
    let apiserver = Apiserver::dial(&socket).await;
    let jwks = jwks_kids(&client, &issuer).await;
    for package in PACKAGES {
        assert_eq!(apiserver.metadata(package).await, 48 * 3600, "{package}");
        let keys = apiserver.fetch_keys(package).await.unwrap();
        assert_eq!(
            kids_of(&keys),
            jwks,
            "{package}: FetchKeys is exactly the JWKS"
        );
        let payload = claims(&issuer, "ws-1", 3600);
        let (token, kid) = apiserver.token(package, &payload).await;
        // The JWKS: the signing key and the standby published beside it.
        assert!(jwks.len() == 2 && jwks.contains(&kid), "{jwks:?} {kid}");
        assert_eq!(
            token.split('.').nth(1),
            Some(payload.as_str()),
            "signed as given"
        );
        pyjwt_accepts(&client, &issuer, &token).await;
    }
    let m = metrics(&client, &s.base).await;
    let signed = "workload_issuer_external_sign_requests_total{cluster=\"k8s\",outcome=\"signed\",via=\"socket\"}";
    assert_eq!(sample(&m, signed), Some(2.0), "{m}");

    // `keys rotate --force`: the next Sign uses the new key, FetchKeys has it.
    let config = cli_config(dir.path(), &keys_dir);
    let before = jwks_kids(&client, &issuer).await;
    let first = apiserver.token("v1", &claims(&issuer, "ws-1", 600)).await.1;
    keys_cli(&config, &["rotate", "--cluster", "k8s", "--force"]).await;
    let after = jwks_changes(&client, &issuer, &before).await;
    let keys = apiserver.fetch_keys("v1").await.unwrap();
    assert_eq!(kids_of(&keys), after, "FetchKeys follows the rotation");
    let second = apiserver.token("v1", &claims(&issuer, "ws-1", 600)).await.1;
    assert_ne!(second, first, "Sign follows the rotation");
    assert!(after.contains(&first) && after.contains(&second));
    let stamp = keys.data_timestamp.unwrap().seconds;
    assert!(
        stamp >= now() - 60,
        "data_timestamp {stamp} is when the set changed"
    );

    // `keys revoke` of the signing key: gone from FetchKeys, never signs again.
    keys_cli(&config, &["revoke", "--cluster", "k8s", "--kid", &second]).await;
    let after = jwks_changes(&client, &issuer, &after).await;
    assert!(!after.contains(&second));
    let keys = apiserver.fetch_keys("v1alpha1").await.unwrap();
    assert_eq!(kids_of(&keys), after, "FetchKeys follows the revocation");
    let (token, third) = apiserver
        .token("v1alpha1", &claims(&issuer, "ws-1", 600))
        .await;
    assert_ne!(third, second, "a revoked key never signs");
    pyjwt_accepts(&client, &issuer, &token).await;

    drop(apiserver);
    s.stop().await;
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_code_and_names_the_problem_under_both_packages() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let s = Server::start(Options {
        clusters: signer_cluster(dir.path(), ""),
        ..Options::new(&keys_dir)
    })
    .await;
    let issuer = s.issuer("k8s");
    let apiserver = Apiserver::dial(&bound(&dir.path().join("signer.sock")).await).await;
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
    let t = now();
    let cases = [
        (
            "not base64url!".to_owned(),
            Code::InvalidArgument,
            "not base64url",
        ),
        (
            format!("{}=", b64(json!({"iss": issuer}))),
            Code::InvalidArgument,
            "not base64url",
        ),
        (
            URL_SAFE_NO_PAD.encode("[1]"),
            Code::InvalidArgument,
            "not a JSON object",
        ),
        (
            URL_SAFE_NO_PAD.encode("{\"iss\":"),
            Code::InvalidArgument,
            "not a JSON object",
        ),
        (
            b64(json!({"iat": t, "exp": t + 600})),
            Code::InvalidArgument,
            "iss is missing",
        ),
        (
            b64(json!({"iss": "https://elsewhere.example.com", "iat": t, "exp": t + 600})),
            Code::PermissionDenied,
            "is not this cluster's issuer",
        ),
        (
            b64(json!({"iss": issuer, "iat": t, "exp": t + 48 * 3600 + 1})),
            Code::PermissionDenied,
            "longer than this cluster's max_token_lifetime",
        ),
        (
            b64(json!({"iss": issuer, "iat": t, "exp": t})),
            Code::InvalidArgument,
            "is not after iat",
        ),
        (
            b64(json!({"iss": issuer, "iat": t})),
            Code::InvalidArgument,
            "exp is missing",
        ),
        (
            b64(json!({"iss": issuer, "iat": t, "exp": 1.5})),
            Code::InvalidArgument,
            "exp is not an integer",
        ),
    ];
    for package in PACKAGES {
        for (claims, code, says) in &cases {
            let err = apiserver.sign(package, claims).await.unwrap_err();
            assert_eq!(err.code(), *code, "{package} {claims}: {}", err.message());
            assert!(
                err.message().contains(says),
                "{package} {claims}: {}",
                err.message()
            );
        }
    }
    let m = metrics(&s.client(), &s.base).await;
    let invalid = "workload_issuer_external_sign_requests_total{cluster=\"k8s\",outcome=\"invalid\",via=\"socket\"}";
    let denied = invalid.replace("invalid", "denied");
    assert_eq!(sample(&m, invalid), Some(16.0), "{m}");
    assert_eq!(sample(&m, &denied), Some(4.0), "{m}");
    drop(apiserver);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_with_a_group_is_0660_and_owned_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let gid = std::fs::metadata(dir.path()).unwrap().gid();
    let keys_dir = dir.path().join("keys");
    let s = Server::start(Options {
        clusters: signer_cluster(
            dir.path(),
            &format!("kubernetes_signer_socket_group = \"{gid}\""),
        ),
        ..Options::new(&keys_dir)
    })
    .await;
    let meta = std::fs::metadata(bound(&dir.path().join("signer.sock")).await).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    s.stop().await;
}

#[test]
fn a_signer_cluster_with_a_maximum_lifetime_under_ten_minutes_is_refused() {
    let text = "listen = \"127.0.0.1:0\"\npublic_url = \"https://oidc.example.com\"\n\
                keys_dir = \"k\"\n[[clusters]]\nid = \"k8s\"\nmin_token_lifetime = \"1m\"\n\
                max_token_lifetime = \"5m\"\nkubernetes_signer_socket = \"/run/signer.sock\"\n";
    let err = workload_issuer::config::Config::parse(
        "test",
        text,
        &workload_issuer::config::Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "clusters[0].max_token_lifetime: 5m is under 10m, the least kube-apiserver accepts"
        ),
        "{err}"
    );
    let relative = text
        .replace("max_token_lifetime = \"5m\"", "")
        .replace("/run/signer.sock", "signer.sock");
    let err = workload_issuer::config::Config::parse(
        "test",
        &relative,
        &workload_issuer::config::Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("must be an absolute file path"), "{err}");
}

/// The relay process, killed if a test fails before it stops it.
pub(crate) struct Relay(Option<std::process::Child>);

impl Relay {
    async fn start(server: &str, token_file: &Path, socket: &Path) -> Relay {
        Relay::start_with(
            server,
            &["--token-file".as_ref(), token_file.as_ref()],
            socket,
        )
        .await
    }

    /// The relay for `server` on `socket`, authenticated by `auth` (flags
    /// and their values).
    pub(crate) async fn start_with(
        server: &str,
        auth: &[&std::ffi::OsStr],
        socket: &Path,
    ) -> Relay {
        let child = std::process::Command::new(BIN)
            .args(["kubernetes-signer", "--server", server])
            .args(auth)
            .arg("--socket")
            .arg(socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let relay = Relay(Some(child));
        bound(socket).await;
        relay
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_signs_through_the_issuer_api_and_rides_out_an_issuer_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let s = Server::start(Options::new(&keys_dir)).await;
    let addr: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    let client = s.client();
    let issuer = s.issuer("demo");
    let socket = dir.path().join("relay.sock");
    let relay = Relay::start(&issuer, &keys_dir.join("admin.token"), &socket).await;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let apiserver = Apiserver::dial(&socket).await;

    let jwks = jwks_kids(&client, &issuer).await;
    let mut kept = None;
    for package in PACKAGES {
        assert_eq!(apiserver.metadata(package).await, 86400, "{package}");
        let keys = apiserver.fetch_keys(package).await.unwrap();
        assert_eq!(kids_of(&keys), jwks, "{package}");
        let (token, _) = apiserver
            .token(package, &claims(&issuer, "ws-2", 3600))
            .await;
        pyjwt_accepts(&client, &issuer, &token).await;
        kept = Some(keys);
    }
    // The issuer's refusals reach kube-apiserver with their codes.
    let err = apiserver
        .sign("v1", &claims("https://elsewhere.example.com", "ws-2", 600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("is not this cluster's issuer"),
        "{}",
        err.message()
    );
    let err = apiserver.sign("v1", "e30=").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    // Counted per cluster on the issuer, like mints.
    let m = metrics(&client, &s.base).await;
    let series = |outcome: &str| {
        format!("workload_issuer_external_sign_requests_total{{cluster=\"demo\",outcome=\"{outcome}\",via=\"api\"}}")
    };
    assert_eq!(sample(&m, &series("signed")), Some(2.0), "{m}");
    assert_eq!(sample(&m, &series("denied")), Some(1.0), "{m}");
    assert_eq!(sample(&m, &series("invalid")), Some(1.0), "{m}");

    // The issuer goes away: Sign is UNAVAILABLE (kube-apiserver retries),
    // FetchKeys and Metadata answer from the last good copy.
    s.stop().await;
    let err = apiserver
        .sign("v1", &claims(&issuer, "ws-2", 600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        err.message().contains("cannot be reached"),
        "{}",
        err.message()
    );
    let keys = apiserver.fetch_keys("v1").await.unwrap();
    assert_eq!(Some(keys), kept, "FetchKeys from the last good copy");
    assert_eq!(apiserver.metadata("v1alpha1").await, 86400);

    // Back on the same address with the same keys: signing resumes.
    let s = Server::start(Options {
        listen: Some(addr),
        ..Options::new(&keys_dir)
    })
    .await;
    let (token, kid) = apiserver.token("v1", &claims(&issuer, "ws-2", 600)).await;
    // The JWKS: the signing key and the standby published beside it.
    assert!(jwks.len() == 2 && jwks.contains(&kid), "{jwks:?} {kid}");
    pyjwt_accepts(&client, &issuer, &token).await;

    drop(apiserver);
    assert!(relay.stop().success(), "SIGTERM stops the relay cleanly");
    assert!(!socket.exists(), "the relay removes its socket on exit");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_signs_only_where_its_api_client_may_mint() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let s = Server::start(Options::new(&keys_dir)).await;
    let token_file = dir.path().join("ci.token");
    std::fs::write(&token_file, CI_TOKEN).unwrap();
    // The "ci" client may mint only in namespace ci of cluster edge.
    let edge = s.issuer("edge");
    let socket = dir.path().join("edge.sock");
    let relay = Relay::start(&edge, &token_file, &socket).await;
    let apiserver = Apiserver::dial(&socket).await;
    apiserver.token("v1", &claims(&edge, "ci", 600)).await;
    let err = apiserver
        .sign("v1", &claims(&edge, "prod", 600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("namespace \"prod\""),
        "{}",
        err.message()
    );
    // What a relying party trusts is sub: a namespace of its own beside a
    // sub of another does not widen the scope, nor does a sub that names no
    // service account.
    let with_sub = |sub: &str| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims(&edge, "ci", 600)).unwrap())
                .unwrap();
        v["sub"] = json!(sub);
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
    };
    let err = apiserver
        .sign("v1", &with_sub("system:serviceaccount:prod:deployer"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains(
            "sub is a service account of namespace \"prod\" but kubernetes.io.namespace is \"ci\""
        ),
        "{}",
        err.message()
    );
    let err = apiserver.sign("v1", &with_sub("admin")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("sub names no service account"),
        "{}",
        err.message()
    );
    drop(apiserver);
    drop(relay);

    let demo = s.issuer("demo");
    let socket = dir.path().join("demo.sock");
    let _relay = Relay::start(&demo, &token_file, &socket).await;
    let apiserver = Apiserver::dial(&socket).await;
    let err = apiserver
        .sign("v1", &claims(&demo, "ci", 600))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("cluster \"demo\""),
        "{}",
        err.message()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_refuses_plain_http_elsewhere_and_a_lifetime_kube_apiserver_exits_on() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let token_file = dir.path().join("relay.token");
    std::fs::write(&token_file, "a-token-that-must-not-cross-a-network").unwrap();

    // Its credential signs any token of the cluster: never in clear.
    let socket = dir.path().join("refused.sock");
    let out = std::process::Command::new(BIN)
        .args([
            "kubernetes-signer",
            "--server",
            "http://issuer.example.com/c/demo",
        ])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("plain http to another machine") && stderr.contains("use https"),
        "{stderr}"
    );
    assert!(!socket.exists());

    // A cluster whose tokens live at most 5 minutes: kube-apiserver would
    // exit on that Metadata, so the relay says why instead.
    let s = Server::start(Options {
        clusters: "[[clusters]]\nid = \"short\"\nalgorithm = \"ES256\"\n\
                   min_token_lifetime = \"1m\"\nmax_token_lifetime = \"5m\"\n\
                   [[api_clients]]\nname = \"admin\"\ntoken_file = \"admin.token\"\n\
                   generate = true\nclusters = [\"*\"]\n"
            .to_owned(),
        ..Options::new(&keys_dir)
    })
    .await;
    let socket = dir.path().join("short.sock");
    let _relay = Relay::start(&s.issuer("short"), &keys_dir.join("admin.token"), &socket).await;
    let apiserver = Apiserver::dial(&socket).await;
    for package in PACKAGES {
        let err = apiserver
            .call::<_, MetadataResponse>(package, "Metadata", Empty {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(
            err.message()
                .contains("max_token_lifetime is 300 s, under the 600 s kube-apiserver requires"),
            "{}",
            err.message()
        );
    }
    s.stop().await;
}
