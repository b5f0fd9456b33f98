//! Starts the real server in-process on 127.0.0.1:0 and stops it on drop;
//! JWKS verification, polling, metrics, and the binary's commands and
//! signals for the integration tests. TLS fixtures are in `harness/tls.rs`,
//! the real etcd cluster of the etcd store's tests in `harness/etcd.rs`;
//! what the soak run shares with the tests lives in `tests/support`.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tokio::sync::oneshot;
use workload_issuer::config::{Config, Overrides};

#[path = "../support/mod.rs"]
pub mod support;

pub use support::{api_client, config_file, token_path, token_sha256, BIN, CLUSTERS};

mod etcd;
pub mod node;
mod tls;

pub use etcd::{etcd_config, new_kek, EtcdCluster};
pub use tls::{make_tls, tls_client, tls_connect, ClientCa, ClientName, Tls};

/// The token of the scoped client in [`default_clusters`]: it may mint only
/// for cluster `edge`, in namespace `ci`.
pub const CI_TOKEN: &str = "ci-token-for-tests";

/// A config file for the binary in `dir`: listen on 127.0.0.1:0, one ES256
/// cluster, one API client holding `token`.
pub fn write_config(dir: &Path, cluster: &str, client: &str, token: &str) -> PathBuf {
    config_file(
        dir,
        &format!(
            "[[clusters]]\nid = \"{cluster}\"\nalgorithm = \"ES256\"\n{}",
            api_client(client, token)
        ),
    )
}

/// The admin client of config/example.toml: its token generated into
/// `<keys dir>/admin.token` ([`Server::admin_token`]), every cluster.
pub const ADMIN_CLIENT: &str = r#"
[[api_clients]]
name = "admin"
token_file = "admin.token"
generate = true
clusters = ["*"]
admin = true
"#;

/// Two clusters and two clients, like config/example.toml plus a scoped client.
pub fn default_clusters() -> String {
    let hex = token_sha256(CI_TOKEN);
    format!(
        r#"{CLUSTERS}{ADMIN_CLIENT}
[[api_clients]]
name = "ci"
token_sha256 = "{hex}"
clusters = ["edge"]
namespaces = ["ci"]
"#
    )
}

pub struct Server {
    pub base: String,
    /// The issuance API's own listener, when started with `api_listener`.
    pub api_base: Option<String>,
    pub admin_token: String,
    pub ca_pem: Option<String>,
    /// What the key-rotation task reports, to wait for its passes.
    pub reload: std::sync::Arc<workload_issuer::keys::rotation::ReloadStatus>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Options<'a> {
    /// Where to listen; 127.0.0.1:0 when `None`.
    pub listen: Option<std::net::SocketAddr>,
    pub keys_dir: &'a Path,
    pub clusters: String,
    pub tls: Option<&'a Tls>,
    /// Serve the issuance API on a listener of its own (`api_base`).
    pub api_listener: bool,
    /// More configuration, appended as is; `{api}` is replaced by the API
    /// listener's address.
    pub extra: String,
}

impl<'a> Options<'a> {
    /// The default two clusters on plain http, one listener, keys in
    /// `keys_dir`: override what a test needs with `..Options::new(dir)`.
    pub fn new(keys_dir: &'a Path) -> Options<'a> {
        Options {
            listen: None,
            keys_dir,
            clusters: default_clusters(),
            tls: None,
            api_listener: false,
            extra: String::new(),
        }
    }
}

impl Server {
    /// Starts a server on the system clock.
    pub async fn start(opts: Options<'_>) -> Server {
        Server::start_with_clock(opts, workload_issuer::clock::SystemClock::shared()).await
    }

    /// Starts a server whose wall clock and rotation schedule are `clock`.
    pub async fn start_with_clock(
        opts: Options<'_>,
        clock: workload_issuer::clock::SharedClock,
    ) -> Server {
        let at = opts
            .listen
            .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let listener = tokio::net::TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{addr}");
        let mut text = format!(
            "listen = \"{addr}\"\npublic_url = \"{base}\"\nkeys_dir = {:?}\n",
            opts.keys_dir.display().to_string()
        );
        if let Some(tls) = opts.tls {
            text.push_str(&format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                tls.cert.display().to_string(),
                tls.key.display().to_string()
            ));
        }
        text.push_str(&opts.clusters.replace("{base}", &base));
        let api = if opts.api_listener {
            let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = api.local_addr().unwrap();
            text.push_str(&format!("\n[api]\nlisten = \"{addr}\"\n"));
            Some((api, addr))
        } else {
            None
        };
        let api_addr = api.as_ref().map(|(_, a)| a.to_string()).unwrap_or_default();
        // Lines of `extra` before its first table are top-level keys: they
        // go before the clusters.
        let extra = opts.extra.replace("{api}", &api_addr);
        let split = extra
            .lines()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(extra.lines().count());
        let top: Vec<&str> = extra.lines().take(split).collect();
        let tables: Vec<&str> = extra.lines().skip(split).collect();
        text = format!("{}\n{text}\n{}\n", top.join("\n"), tables.join("\n"));
        let config = Config::parse("test", &text, &Overrides::default()).unwrap();
        let state = workload_issuer::serve::prepare(&config, clock)
            .await
            .unwrap();
        let reload = state.health.reload.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let api_base = api.as_ref().map(|(_, a)| format!("{scheme}://{a}"));
        let sockets = workload_issuer::serve::Sockets {
            main: listener,
            api: api.map(|(l, _)| l),
        };
        let task = serve_in_background(config, state, sockets, rx);
        let admin_token = std::fs::read_to_string(opts.keys_dir.join("admin.token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        Server {
            base,
            api_base,
            admin_token,
            ca_pem: opts.tls.map(|t| t.ca_pem.clone()),
            reload,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A server with the default two clusters on plain http.
    pub async fn default_in(keys_dir: &Path) -> Server {
        Server::start(Options::new(keys_dir)).await
    }

    /// A server with the default two clusters on https: a new CA and server
    /// certificate in `dir` ([`make_tls`]), keys in `dir/keys`.
    pub async fn tls_in(dir: &Path) -> (Server, Tls) {
        let tls = make_tls(dir);
        let keys = dir.join("keys");
        let server = Server::start(Options {
            tls: Some(&tls),
            ..Options::new(&keys)
        })
        .await;
        (server, tls)
    }

    pub fn issuer(&self, cluster: &str) -> String {
        format!("{}/c/{cluster}", self.base)
    }

    pub fn token_url(&self, cluster: &str, ns: &str, sa: &str) -> String {
        format!(
            "{}/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
            self.issuer(cluster)
        )
    }

    pub fn client(&self) -> reqwest::Client {
        workload_issuer::client::http_client(self.ca_pem.as_deref().map(str::as_bytes)).unwrap()
    }

    /// Mints with the admin token through the JSON API; panics unless 201.
    pub async fn mint(&self, cluster: &str, ns: &str, sa: &str, body: serde_json::Value) -> String {
        let r = self
            .client()
            .post(self.token_url(cluster, ns, sa))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let v: serde_json::Value = r.json().await.unwrap();
        v["status"]["token"].as_str().unwrap().to_owned()
    }

    /// POSTs a Kubernetes protobuf body (the "k8s\0" magic, then the
    /// `runtime.Unknown` envelope) with the admin token, as kubectl does.
    pub async fn post_protobuf(
        &self,
        url: &str,
        envelope: &k8s_pb::apimachinery::pkg::runtime::Unknown,
    ) -> reqwest::Response {
        use prost::Message as _;
        let mut body = b"k8s\0".to_vec();
        body.extend(envelope.encode_to_vec());
        self.client()
            .post(url)
            .bearer_auth(&self.admin_token)
            .header("Content-Type", "application/vnd.kubernetes.protobuf")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn jwks(&self, cluster: &str) -> serde_json::Value {
        let url = format!("{}/openid/v1/jwks", self.issuer(cluster));
        self.client()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (up to 10 s) until the key-rotation task has finished a pass
    /// at or after the steady time `at` of its clock.
    pub async fn passed(&self, at: std::time::Duration) {
        let reload = self.reload.clone();
        let done = eventually(std::time::Duration::from_secs(10), || {
            let reload = reload.clone();
            async move { reload.passed() >= at }
        })
        .await;
        assert!(done, "the key-rotation task did not pass {at:?}");
    }

    /// Stops the server and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// Runs `serve::run` on a task until `stop` fires (or its sender is dropped).
pub fn serve_in_background(
    config: Config,
    state: workload_issuer::http::AppState,
    sockets: workload_issuer::serve::Sockets,
    stop: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let reloads = workload_issuer::serve::reload_signal();
    tokio::spawn(async move {
        let stop = async {
            let _ = stop.await;
        };
        workload_issuer::serve::run(&config, state, sockets, stop, reloads)
            .await
            .unwrap();
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Verifies `token` with a key taken from a JWKS document, the way a relying
/// party does: by kid, with the algorithm the JWK names.
pub fn verify_with_jwks(
    token: &str,
    jwks: &serde_json::Value,
    issuer: &str,
    audience: &str,
) -> Result<serde_json::Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let jwk = set.find(&kid).ok_or(format!("kid {kid} not in JWKS"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

pub fn decode_part(token: &str, index: usize) -> serde_json::Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A rustls client configuration trusting `ca_pem`, presenting a client
/// certificate when given, offering the ALPN protocols given.
pub fn tls_client_config(
    ca_pem: &str,
    identity: Option<&(String, String)>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Polls `check` every 100 ms for up to `limit`; whether it came true.
pub async fn eventually<F, Fut>(limit: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

pub async fn metrics(client: &reqwest::Client, base: &str) -> String {
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    r.text().await.unwrap()
}

/// The value of the sample whose line starts with `series` (name and labels).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Runs the binary with `args`: its exit code (-1 for a signal), stdout and
/// stderr.
pub async fn run_bin(args: &[&str]) -> (i32, String, String) {
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

/// `token` against `server` with the API token in `token_file`, for
/// service account `default` in namespace `ws-1`; add what a test needs.
pub fn token_args<'a>(server: &'a str, token_file: &'a str) -> Vec<&'a str> {
    vec![
        "token",
        "--server",
        server,
        "--token-file",
        token_file,
        "-n",
        "ws-1",
        "--service-account",
        "default",
    ]
}

/// `check-config FILE`: the exit code and stderr.
pub fn check_config(file: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The permission bits of a file or directory.
pub fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Sends `signal` to the process `pid`.
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .unwrap_or_else(|| panic!("{pid} is not a process id"));
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Asserts that the public listener's connection cap was reached at least
/// once, by the metrics of the API listener at `api`.
pub async fn assert_public_cap_reached(client: &reqwest::Client, api: &str) {
    let text = metrics(client, api).await;
    assert!(
        sample(
            &text,
            r#"workload_issuer_connections_limited_total{listener="public"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "the connection cap was never reached:\n{text}"
    );
}

/// SIGTERM to a child process, then its exit status, which must come
/// within `limit`.
pub async fn sigterm_and_wait(
    child: &mut tokio::process::Child,
    limit: std::time::Duration,
) -> std::process::ExitStatus {
    signal(
        child.id().expect("a running process"),
        rustix::process::Signal::TERM,
    );
    tokio::time::timeout(limit, child.wait())
        .await
        .expect("the process ends on SIGTERM")
        .unwrap()
}
