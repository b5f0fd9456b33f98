//! Starts the real server in-process on 127.0.0.1:0 and stops it on drop.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tokio::sync::oneshot;
use workload_issuer::config::{Config, Overrides};

/// The token of the scoped client in [`DEFAULT_CLUSTERS`]: it may mint only for
/// cluster `edge`, in namespace `ci`.
pub const CI_TOKEN: &str = "ci-token-for-tests";

/// Two clusters and two clients, like config/example.toml plus a scoped client.
pub fn default_clusters() -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CI_TOKEN.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!(
        r#"
[[clusters]]
id = "demo"
algorithm = "RS256"
jwks_max_age = "5m"

[[clusters]]
id = "edge"
algorithm = "ES256"
audiences = ["sts.amazonaws.com"]
max_token_lifetime = "12h"

[[api_clients]]
name = "admin"
token_file = "admin.token"
generate = true
clusters = ["*"]

[[api_clients]]
name = "ci"
token_sha256 = "{hex}"
clusters = ["edge"]
namespaces = ["ci"]
"#
    )
}

pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_pem: String,
}

/// A CA and a server certificate for 127.0.0.1 and localhost, written to `dir`.
pub fn make_tls(dir: &Path) -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "workload-issuer test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    Tls {
        cert,
        key,
        ca_pem: ca_cert.pem(),
    }
}

pub struct Server {
    pub base: String,

    pub admin_token: String,
    pub ca_pem: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Options<'a> {
    /// Where to listen; 127.0.0.1:0 when `None`.
    pub listen: Option<std::net::SocketAddr>,
    pub keys_dir: &'a Path,
    pub clusters: String,
    pub tls: Option<&'a Tls>,
}

impl Server {
    pub async fn start(opts: Options<'_>) -> Server {
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
        let config = Config::parse("test", &text, &Overrides::default()).unwrap();
        let state = workload_issuer::serve::prepare(&config).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            workload_issuer::serve::run(&config, state, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let admin_token = std::fs::read_to_string(opts.keys_dir.join("admin.token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        Server {
            base,

            admin_token,
            ca_pem: opts.tls.map(|t| t.ca_pem.clone()),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A server with the default two clusters on plain http.
    pub async fn default_in(keys_dir: &Path) -> Server {
        Server::start(Options {
            listen: None,
            keys_dir,
            clusters: default_clusters(),
            tls: None,
        })
        .await
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
