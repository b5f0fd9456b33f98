//! The validated configuration the rest of the crate trusts: listeners,
//! the store, clusters with their rotation policies, API clients, limits.
//!
//! Only `config::validate` builds these. Imports nothing of the crate
//! above `config` (`keys`, `issuer`, `http`, `server`, `serve`, `client`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::KeySpec;

pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc";

#[derive(Clone, Debug)]
pub struct Config {
    /// The main listener: the public face (discovery, JWKS, health), and the
    /// issuance API too unless `api_listener` is set.
    pub listen: SocketAddr,
    pub public_url: String,
    pub keys_dir: PathBuf,
    /// Where clusters, key manifests and keys are kept: the keys dir, or
    /// etcd.
    pub store: StoreConfig,
    pub tls: Option<TlsFiles>,
    /// A listener of its own for the issuance API (minting, TokenReview,
    /// metrics), so it can stay on an internal address.
    pub api_listener: Option<ListenerConfig>,
    pub clusters: Vec<ClusterConfig>,
    pub api_clients: Vec<ApiClientConfig>,
    pub rotation: RotationSettings,
    pub limits: Limits,
    /// How often TLS certificate, key and client CA files are checked for
    /// changes (renewals).
    pub tls_reload_interval: Duration,
    /// Start even when signing key files are readable by group or others.
    pub allow_insecure_key_permissions: bool,
    /// The file this configuration was read from (`None`: the embedded
    /// default alone).
    pub file: Option<PathBuf>,
    /// The flags it was loaded with, to load it again the same way (a
    /// reload).
    pub overrides: crate::config::Overrides,
}

#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
}

/// Per-listener protections against clients that hold connections or send
/// oversized requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per listener; further ones wait in the backlog.
    pub max_connections: usize,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// How long a client may take to finish the TLS handshake and to send a
    /// request head, also between requests on a kept-alive connection; and
    /// how long an HTTP/2 connection may stay without an open stream.
    pub header_read_timeout: Duration,
    /// How long a request may take from its head to the answer.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What this replica does about rotation (the policies are per cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationSettings {
    /// Whether this replica applies the rotation policies. Replicas sharing a
    /// keys dir may leave it to some of them; every replica follows changes.
    pub enabled: bool,
    /// How often the policies are applied.
    pub interval: Duration,
    /// How often the manifests are checked for changes made elsewhere (the
    /// CLI, another replica).
    pub reload_interval: Duration,
}

/// Where clusters, key manifests and keys are kept (`[store]`).
// One per process, read once: the size of `Dir` does not matter, and the
// store matches on `Etcd(EtcdStoreConfig)` directly rather than through a box.
#[expect(clippy::large_enum_variant, reason = "one value per process")]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// The keys dir (`kind = "dir"`, the default).
    #[default]
    Dir,
    /// An etcd v3 cluster (`kind = "etcd"`), private keys sealed under a
    /// key-encryption key.
    Etcd(EtcdStoreConfig),
}

/// The prefix every key of this issuer sits under in etcd, by default.
pub const DEFAULT_ETCD_PREFIX: &str = "/workload-issuer";

/// The rotation election's lease TTL in etcd, by default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// The etcd store. Paths are as written: a relative one is taken from the
/// working directory, as `keys_dir` and `tls_cert` are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdStoreConfig {
    /// The members' client URLs (`http://` or `https://`, host and port),
    /// all of one scheme.
    pub endpoints: Vec<String>,
    /// Starts with '/', does not end with one, no "//", printable ASCII.
    pub prefix: String,
    /// 32 raw bytes: the key-encryption key private keys are sealed under.
    pub kek_file: PathBuf,
    /// More key-encryption keys that open keys but never seal one: the KEK
    /// being brought in, or the one being retired (`store rewrap`).
    pub extra_kek_files: Vec<PathBuf>,
    /// `Some` exactly when the endpoints are `https://`; with no file set in
    /// it, the server is verified against the system's roots.
    pub tls: Option<EtcdTls>,
    /// etcd authentication: set together with `password_file`.
    pub username: Option<String>,
    /// A file whose content, a trailing newline trimmed, is the password.
    pub password_file: Option<PathBuf>,
    /// The rotation election's lease TTL: 2s to 60s, whole seconds.
    pub lease_ttl: Duration,
    /// A private local working copy's directory; `None`: /dev/shm if
    /// writable, else the OS temp dir.
    pub cache_dir: Option<PathBuf>,
}

/// TLS to etcd (`https://` endpoints).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA bundle (PEM) that verifies the members; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM); set together with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA whose client certificates authenticate API clients (mTLS); a
    /// client certificate is optional on the connection.
    pub client_ca: Option<PathBuf>,
}

/// AWS accepts at most 100 RSA and 100 EC keys in one JWKS (spire#4699).
pub const MAX_KEYS_PER_TYPE: usize = 100;

/// How one cluster's keys rotate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long a key signs before the next one takes over.
    pub rotate_every: Duration,
    /// How long the next key is published before it may sign: at least the
    /// JWKS max-age, so every relying party's cache has it first.
    pub publish_ahead: Duration,
    /// How long a retired key stays published: at least the longest token it
    /// may have signed + the JWKS max-age + clock skew.
    pub retention: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    pub id: String,
    /// The issuer URL exactly as it appears in `iss` and in discovery.
    pub issuer: String,
    /// The issuer URL's path without a trailing slash ("" at the root):
    /// requests are routed by it.
    pub issuer_path: String,
    pub key_spec: KeySpec,
    pub audiences: Vec<String>,
    pub min_token_lifetime: Duration,
    pub max_token_lifetime: Duration,
    pub jwks_max_age: Duration,
    pub rotation: RotationPolicy,
    /// The cluster signs its own tokens (its kube-apiserver holds the private
    /// key): this issuer only publishes the public keys imported with `keys
    /// import`, generates none, and refuses to sign for it.
    pub publish_only: bool,
    /// Where `serve` answers kube-apiserver's external signer calls for
    /// this cluster (REFERENCE §9), if anywhere.
    pub kubernetes_signer: Option<SignerSocket>,
    /// Where the cluster is declared: the config file, or created at run
    /// time (the admin API, `clusters add`).
    pub origin: Origin,
}

/// Where a cluster is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A `[[clusters]]` table (or the embedded default): changed by editing
    /// the file, never through the admin API.
    File,
    /// Created at run time, kept in the keys dir's cluster registry.
    Runtime,
}

/// The Unix socket of a cluster's external signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerSocket {
    pub path: PathBuf,
    /// A group (name or numeric id) that may connect too: the socket is
    /// then 0660 instead of 0600.
    pub group: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ApiClientConfig {
    pub name: String,
    /// The bearer token, if this client uses one.
    pub credential: Option<Credential>,
    /// DNS or URI subject alternative names of client certificates that
    /// authenticate as this client.
    pub certificate_names: Vec<String>,
    /// Also match `certificate_names` against the subject CN of a
    /// certificate without SANs. Unsafe with name-constrained CAs: the
    /// constraints bind the SANs, and such a CA may write any CN.
    pub allow_common_name: bool,
    /// Mints allowed, refilled continuously; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// `None`: every cluster.
    pub clusters: Option<Vec<String>>,
    /// `None`: every namespace.
    pub namespaces: Option<Vec<String>>,
    /// May create, recreate and delete clusters through the admin API.
    pub admin: bool,
}

/// A token bucket: `burst` mints at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Clone)]
pub enum Credential {
    /// SHA-256 of the bearer token.
    Sha256([u8; 32]),
    /// A file holding the bearer token; created with a random token at start
    /// when `generate` is set and the file does not exist.
    File { path: PathBuf, generate: bool },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Sha256(_) => f.write_str("Sha256(..)"),
            Credential::File { path, generate } => f
                .debug_struct("File")
                .field("path", path)
                .field("generate", generate)
                .finish(),
        }
    }
}

impl Config {
    pub fn cluster(&self, id: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.id == id)
    }
}
