//! Configuration: the TOML file (or the embedded default), environment and
//! flag overrides, and validation into a [`Config`] the rest of the crate trusts.
//!
//! Order of precedence: the embedded default *or* `--config FILE`, then
//! environment variables, then flags (clap merges those two). Every validation
//! error names the field and says what is wrong; all of them are reported at
//! once. Secrets are never inline: API tokens are SHA-256 digests or file paths.
//!
//! Depends on `keys::material` (for key specs) and nothing that does I/O on keys.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::keys::material::{KeySpec, RSA_BITS};

/// The configuration used when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.toml");

pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc";

// ---- the file as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: String,
    public_url: String,
    keys_dir: PathBuf,
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
    #[serde(default)]
    clusters: Vec<FileCluster>,
    #[serde(default)]
    api_clients: Vec<FileApiClient>,
    #[serde(default)]
    rotation: FileRotation,
    #[serde(default)]
    tls_reload_interval: Option<String>,
    #[serde(default)]
    api: FileApi,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    allow_insecure_http: bool,
    #[serde(default)]
    allow_insecure_key_permissions: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
    #[serde(default)]
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    #[serde(default)]
    max_connections: Option<u32>,
    #[serde(default)]
    max_header_bytes: Option<u32>,
    #[serde(default)]
    header_read_timeout: Option<String>,
    #[serde(default)]
    request_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    id: String,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default = "default_algorithm")]
    algorithm: String,
    #[serde(default)]
    rsa_bits: Option<u32>,
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default)]
    min_token_lifetime: Option<String>,
    #[serde(default)]
    max_token_lifetime: Option<String>,
    #[serde(default)]
    jwks_max_age: Option<String>,
    #[serde(default)]
    rotate_every: Option<String>,
    #[serde(default)]
    publish_ahead: Option<String>,
    #[serde(default)]
    clock_skew: Option<String>,
    #[serde(default)]
    retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRotation {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    reload_interval: Option<String>,
}

fn default_algorithm() -> String {
    "RS256".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApiClient {
    name: String,
    #[serde(default)]
    token_sha256: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    generate: bool,
    clusters: Vec<String>,
    #[serde(default)]
    namespaces: Option<Vec<String>>,
    #[serde(default)]
    certificate_names: Vec<String>,
    #[serde(default)]
    allow_common_name: bool,
    #[serde(default)]
    rate_limit: Option<String>,
    #[serde(default)]
    burst: Option<u32>,
}

// ---- overrides from the environment and flags ----------------------------

/// Values given on the command line or in the environment; each wins over the
/// file when set.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub keys_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

// ---- the validated configuration -----------------------------------------

#[derive(Clone, Debug)]
pub struct Config {
    /// The main listener: the public face (discovery, JWKS, health), and the
    /// issuance API too unless `api_listener` is set.
    pub listen: SocketAddr,
    pub public_url: String,
    pub keys_dir: PathBuf,
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

#[derive(Clone, Debug)]
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

/// Every problem found in a configuration, one per line.
#[derive(Debug)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration in {}:", self.source)?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads `path`, or the embedded default when `None`, applies the
    /// overrides and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (source, text) = match path {
            Some(p) => {
                let source = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    source: source.clone(),
                    problems: vec![format!("cannot read the file: {e}")],
                })?;
                (source, text)
            }
            None => (
                "the embedded default".to_owned(),
                EMBEDDED_DEFAULT.to_owned(),
            ),
        };
        Config::parse(&source, &text, overrides)
    }

    pub fn parse(source: &str, text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut file: FileConfig = toml::from_str(text).map_err(|e| ConfigError {
            source: source.to_owned(),
            problems: vec![e.to_string().trim_end().to_owned()],
        })?;
        if let Some(v) = &overrides.listen {
            file.listen = v.clone();
        }
        if let Some(v) = &overrides.public_url {
            file.public_url = v.clone();
        }
        if let Some(v) = &overrides.keys_dir {
            file.keys_dir = v.clone();
        }
        if let Some(v) = &overrides.tls_cert {
            file.tls_cert = Some(v.clone());
        }
        if let Some(v) = &overrides.tls_key {
            file.tls_key = Some(v.clone());
        }
        let mut problems = Vec::new();
        let config = validate(file, &mut problems);
        if problems.is_empty() {
            if let Some(config) = config {
                return Ok(config);
            }
        }
        Err(ConfigError {
            source: source.to_owned(),
            problems,
        })
    }

    pub fn cluster(&self, id: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.id == id)
    }
}

fn validate(file: FileConfig, problems: &mut Vec<String>) -> Option<Config> {
    let listen = match file.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "listen: \"{}\" is not an address and port such as 127.0.0.1:8080 or [::]:443",
                file.listen
            ));
            None
        }
    };
    let public_url = match check_url(&file.public_url) {
        Ok(_) => Some(file.public_url.clone()),
        Err(why) => {
            problems.push(format!("public_url: \"{}\" {why}", file.public_url));
            None
        }
    };
    if file.keys_dir.as_os_str().is_empty() {
        problems.push("keys_dir: must not be empty".into());
    }
    let tls = tls_pair("", file.tls_cert, file.tls_key, problems);
    let (api_listener, tls) = validate_api(file.api, listen, tls, problems);
    let api_tls = match &api_listener {
        Some(l) => l.tls.as_ref(),
        None => tls.as_ref(),
    };
    let client_ca = api_tls.is_some_and(|t| t.client_ca.is_some());

    if file.clusters.is_empty() {
        problems.push("clusters: at least one cluster is required".into());
    }
    let mut clusters = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut paths: HashMap<String, usize> = HashMap::new();
    for (i, c) in file.clusters.into_iter().enumerate() {
        let at = format!("clusters[{i}]");
        if let Some(first) = ids.get(&c.id) {
            problems.push(format!(
                "{at}.id: duplicate cluster id \"{}\" (also clusters[{first}])",
                c.id
            ));
        } else {
            ids.insert(c.id.clone(), i);
        }
        if let Some(cluster) = validate_cluster(&at, c, public_url.as_deref(), problems) {
            if let Some(first) = paths.get(&cluster.issuer_path) {
                problems.push(format!(
                    "{at}.issuer: \"{}\" has the same path as clusters[{first}]; \
                     each issuer needs its own path, since requests are routed by it",
                    cluster.issuer
                ));
            } else {
                paths.insert(cluster.issuer_path.clone(), i);
            }
            clusters.push(cluster);
        }
    }

    let mut api_clients = Vec::new();
    let mut names = HashSet::new();
    // One token, one client: with two, whichever is checked last would
    // decide the scope, and nothing in the config would say so.
    let mut digests: HashMap<[u8; 32], String> = HashMap::new();
    let mut token_files: HashMap<PathBuf, String> = HashMap::new();
    for (i, a) in file.api_clients.into_iter().enumerate() {
        let at = format!("api_clients[{i}]");
        if !names.insert(a.name.clone()) {
            problems.push(format!(
                "{at}.name: duplicate API client name \"{}\"",
                a.name
            ));
        }
        let Some(client) = validate_client(&at, a, &ids, client_ca, problems) else {
            continue;
        };
        let name = &client.name;
        match &client.credential {
            Some(Credential::Sha256(d)) => {
                if let Some(first) = digests.insert(*d, name.clone()) {
                    problems.push(format!(
                        "{at}.token_sha256: the same token is given to both \"{first}\" and \
                         \"{name}\"; a token must identify one client, give each its own"
                    ));
                }
            }
            // Compared as paths, so "./a.token" is "a.token". Two paths to one
            // file (a link) are not seen here; the start refuses that too,
            // once the files are read.
            Some(Credential::File { path, .. }) => {
                if let Some(first) = token_files.insert(file.keys_dir.join(path), name.clone()) {
                    problems.push(format!(
                        "{at}.token_file: \"{}\" is the token file of both \"{first}\" and \
                         \"{name}\"; a token must identify one client, give each its own file",
                        path.display()
                    ));
                }
            }
            None => {}
        }
        api_clients.push(client);
    }

    let mut seen_names: HashMap<&str, &str> = HashMap::new();
    for c in &api_clients {
        for n in &c.certificate_names {
            if let Some(first) = seen_names.insert(n, &c.name) {
                problems.push(format!(
                    "api_clients: certificate name \"{n}\" is given to both \"{first}\" and \"{}\"; \
                     a certificate must identify one client",
                    c.name
                ));
            }
        }
    }

    if let Some(listen) = listen {
        check_exposure(
            listen,
            api_listener.as_ref(),
            tls.is_some(),
            &clusters,
            file.allow_insecure_http,
            problems,
        );
    }

    let rotation = validate_rotation(file.rotation, problems);
    let limits = validate_limits(file.limits, problems);
    let tls_reload_interval = duration(
        "",
        "tls_reload_interval",
        file.tls_reload_interval.as_deref(),
        "10s",
        problems,
    );
    if tls_reload_interval.is_some_and(|d| d < Duration::from_secs(1)) {
        problems.push("tls_reload_interval: must be at least 1s".into());
    }

    Some(Config {
        rotation: rotation?,
        listen: listen?,
        public_url: public_url?,
        keys_dir: file.keys_dir,
        tls,
        api_listener,
        clusters,
        api_clients,
        limits: limits?,
        tls_reload_interval: tls_reload_interval?,
        allow_insecure_key_permissions: file.allow_insecure_key_permissions,
    })
}

/// A certificate and key given together, or neither. `at` prefixes the
/// field names ("" or "api.").
fn tls_pair(
    at: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    problems: &mut Vec<String>,
) -> Option<TlsFiles> {
    match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca: None,
        }),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(format!("{at}tls_key: required when {at}tls_cert is set"));
            None
        }
        (None, Some(_)) => {
            problems.push(format!("{at}tls_cert: required when {at}tls_key is set"));
            None
        }
    }
}

/// The `[api]` table: where the issuance API listens and with what TLS.
/// Returns the API's own listener, if any, and the main listener's TLS (which
/// takes the client CA when the API shares the main listener).
fn validate_api(
    api: FileApi,
    listen: Option<SocketAddr>,
    mut tls: Option<TlsFiles>,
    problems: &mut Vec<String>,
) -> (Option<ListenerConfig>, Option<TlsFiles>) {
    let own_tls = tls_pair("api.", api.tls_cert, api.tls_key, problems);
    let Some(text) = api.listen else {
        if own_tls.is_some() {
            problems.push(
                "api.tls_cert and api.tls_key: only apply with api.listen; without it the API \
                 is served on the main listener with tls_cert and tls_key"
                    .into(),
            );
        }
        if let Some(ca) = api.client_ca {
            match tls.as_mut() {
                Some(t) => t.client_ca = Some(ca),
                None => problems.push(
                    "api.client_ca: client certificates need TLS; set tls_cert and tls_key".into(),
                ),
            }
        }
        return (None, tls);
    };
    let Ok(addr) = text.parse::<SocketAddr>() else {
        problems.push(format!(
            "api.listen: \"{text}\" is not an address and port such as 10.0.0.5:9443 or [::]:9443"
        ));
        return (None, tls);
    };
    if listen.is_some_and(|l| {
        l.port() == addr.port()
            && (l.ip() == addr.ip() || l.ip().is_unspecified() || addr.ip().is_unspecified())
    }) {
        problems.push(format!(
            "api.listen: {addr} overlaps listen; the issuance API needs an address of its own"
        ));
    }
    let mut own = own_tls.or_else(|| tls.clone());
    if let Some(ca) = api.client_ca {
        match own.as_mut() {
            Some(t) => t.client_ca = Some(ca),
            None => problems.push(
                "api.client_ca: client certificates need TLS on the API listener; set \
                 api.tls_cert and api.tls_key (or tls_cert and tls_key)"
                    .into(),
            ),
        }
    }
    (Some(ListenerConfig { addr, tls: own }), tls)
}

/// Refuses what cloud IAM providers and API clients must not be exposed to:
/// an http issuer served on a non-loopback address (providers require https
/// issuers), and the issuance API on a non-loopback address without TLS
/// (bearer tokens and minted tokens in clear text). `allow_insecure_http`
/// permits both, for TLS terminated in front of the server.
fn check_exposure(
    listen: SocketAddr,
    api: Option<&ListenerConfig>,
    main_tls: bool,
    clusters: &[ClusterConfig],
    allow: bool,
    problems: &mut Vec<String>,
) {
    if allow {
        return;
    }
    let fix = "set allow_insecure_http = true if TLS is terminated in front of the server";
    if !listen.ip().is_loopback() {
        if let Some(c) = clusters.iter().find(|c| c.issuer.starts_with("http://")) {
            problems.push(format!(
                "clusters: issuer \"{}\" is http while listen {listen} is not a loopback \
                 address; cloud IAM providers only accept https issuers (use an https \
                 public_url or issuer, or {fix})",
                c.issuer
            ));
        }
    }
    let (api_addr, api_tls, field) = match api {
        Some(l) => (l.addr, l.tls.is_some(), "api.listen"),
        None => (listen, main_tls, "listen"),
    };
    if !api_addr.ip().is_loopback() && !api_tls {
        problems.push(format!(
            "{field}: the issuance API would listen on {api_addr} without TLS, sending bearer \
             tokens and minted tokens in clear text; set tls_cert and tls_key, move the API to \
             a loopback api.listen, or {fix}"
        ));
    }
}

fn validate_limits(l: FileLimits, problems: &mut Vec<String>) -> Option<Limits> {
    let d = Limits::default();
    let before = problems.len();
    let max_connections = l.max_connections.map_or(d.max_connections, |n| n as usize);
    if !(1..=1_000_000).contains(&max_connections) {
        problems.push(format!(
            "limits.max_connections: {max_connections} must be between 1 and 1000000"
        ));
    }
    let max_header_bytes = l
        .max_header_bytes
        .map_or(d.max_header_bytes, |n| n as usize);
    if !(8192..=1024 * 1024).contains(&max_header_bytes) {
        problems.push(format!(
            "limits.max_header_bytes: {max_header_bytes} must be between 8192 and 1048576"
        ));
    }
    let header_read_timeout = duration(
        "limits",
        "header_read_timeout",
        l.header_read_timeout.as_deref(),
        "10s",
        problems,
    );
    let request_timeout = duration(
        "limits",
        "request_timeout",
        l.request_timeout.as_deref(),
        "30s",
        problems,
    );
    for (field, value) in [
        ("header_read_timeout", header_read_timeout),
        ("request_timeout", request_timeout),
    ] {
        if value.is_some_and(|v| v < Duration::from_secs(1) || v > Duration::from_secs(3600)) {
            problems.push(format!("limits.{field}: must be between 1s and 1h"));
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(Limits {
        max_connections,
        max_header_bytes,
        header_read_timeout: header_read_timeout?,
        request_timeout: request_timeout?,
    })
}

/// "200/s", "30/m" or "1000/h".
fn parse_rate(text: &str) -> Option<f64> {
    let (count, unit) = text.trim().split_once('/')?;
    let count: u32 = count.trim().parse().ok().filter(|n| *n > 0)?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(f64::from(count) / seconds)
}

fn validate_cluster(
    at: &str,
    c: FileCluster,
    public_url: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<ClusterConfig> {
    let before = problems.len();
    if !is_dns_label(&c.id) {
        problems.push(format!(
            "{at}.id: \"{}\" must be a DNS label: 1 to 63 lowercase letters, digits or '-', \
             starting and ending with a letter or digit",
            c.id
        ));
    }
    let issuer = match (&c.issuer, public_url) {
        (Some(explicit), _) => explicit.clone(),
        (None, Some(base)) => format!("{base}/c/{}", c.id),
        (None, None) => String::new(), // public_url already reported
    };
    let mut issuer_path = String::new();
    if !issuer.is_empty() {
        match check_url(&issuer) {
            Ok(path) => issuer_path = path,
            Err(why) => problems.push(format!("{at}.issuer: \"{issuer}\" {why}")),
        }
    }
    let key_spec = match (c.algorithm.as_str(), c.rsa_bits) {
        ("RS256", None) => Some(KeySpec::Rsa { bits: 2048 }),
        ("RS256", Some(bits)) if RSA_BITS.contains(&bits) => Some(KeySpec::Rsa { bits }),
        ("RS256", Some(bits)) => {
            problems.push(format!(
                "{at}.rsa_bits: {bits} is not allowed; use 2048, 3072 or 4096 \
                 (RSA under 2048 bits is refused by cloud IAM providers)"
            ));
            None
        }
        ("ES256", None) => Some(KeySpec::P256),
        ("ES256", Some(_)) => {
            problems.push(format!(
                "{at}.rsa_bits: only applies to algorithm \"RS256\""
            ));
            None
        }
        (other, _) => {
            problems.push(format!(
                "{at}.algorithm: \"{other}\" is not supported; use \"RS256\" or \"ES256\""
            ));
            None
        }
    };
    let audiences = c
        .audiences
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_owned()]);
    if audiences.is_empty() {
        problems.push(format!("{at}.audiences: must name at least one audience"));
    }
    for (j, aud) in audiences.iter().enumerate() {
        if let Err(why) = check_audience(aud) {
            problems.push(format!("{at}.audiences[{j}]: {why}"));
        }
    }
    let min = duration(
        at,
        "min_token_lifetime",
        c.min_token_lifetime.as_deref(),
        "10m",
        problems,
    );
    let max = duration(
        at,
        "max_token_lifetime",
        c.max_token_lifetime.as_deref(),
        "24h",
        problems,
    );
    let max_age = duration(
        at,
        "jwks_max_age",
        c.jwks_max_age.as_deref(),
        "1h",
        problems,
    );
    if let (Some(min), Some(max)) = (min, max) {
        if min < Duration::from_secs(1) {
            problems.push(format!("{at}.min_token_lifetime: must be at least 1s"));
        }
        if max < min {
            problems.push(format!(
                "{at}.max_token_lifetime: {} is shorter than min_token_lifetime {}",
                humantime::format_duration(max),
                humantime::format_duration(min)
            ));
        }
        if max > MAX_LIFETIME_CAP {
            problems.push(format!(
                "{at}.max_token_lifetime: {} is longer than the 365-day cap",
                humantime::format_duration(max)
            ));
        }
    }
    if let Some(age) = max_age {
        if age < Duration::from_secs(1) || age > Duration::from_secs(7 * 86400) {
            problems.push(format!(
                "{at}.jwks_max_age: {} must be between 1s and 7d; relying parties that \
                 cannot cache refetch the JWKS on every verification",
                humantime::format_duration(age)
            ));
        }
    }
    let rotation = match (max, max_age) {
        (Some(max), Some(age)) => validate_policy(at, &c, max, age, problems),
        _ => None,
    };
    if problems.len() != before {
        return None;
    }
    Some(ClusterConfig {
        rotation: rotation?,
        id: c.id,
        issuer,
        issuer_path,
        key_spec: key_spec?,
        audiences,
        min_token_lifetime: min?,
        max_token_lifetime: max?,
        jwks_max_age: max_age?,
    })
}

/// Rotation policy of one cluster (REFERENCE §5). Refuses a policy under
/// which a relying party could miss a key: a next key published for less than
/// the JWKS max-age before it signs, or a retired key dropped while tokens it
/// signed may still be presented.
fn validate_policy(
    at: &str,
    c: &FileCluster,
    max_lifetime: Duration,
    max_age: Duration,
    problems: &mut Vec<String>,
) -> Option<RotationPolicy> {
    let rotate_every = duration(
        at,
        "rotate_every",
        c.rotate_every.as_deref(),
        "30d",
        problems,
    );
    let publish_ahead = duration(
        at,
        "publish_ahead",
        c.publish_ahead.as_deref(),
        "24h",
        problems,
    );
    let clock_skew = duration(at, "clock_skew", c.clock_skew.as_deref(), "5m", problems);
    let (rotate_every, publish_ahead, clock_skew) = (rotate_every?, publish_ahead?, clock_skew?);
    let floor = max_lifetime + max_age + clock_skew;
    let retention = match c.retention.as_deref() {
        Some(text) => duration(at, "retention", Some(text), "", problems)?,
        None => floor,
    };
    let show = |d: Duration| humantime::format_duration(d).to_string();
    let before = problems.len();
    if publish_ahead < max_age {
        problems.push(format!(
            "{at}.publish_ahead: {} is shorter than jwks_max_age {}: a relying party that cached \
             the JWKS just before the next key appeared would not know it when it starts signing",
            show(publish_ahead),
            show(max_age)
        ));
    }
    if retention < floor {
        problems.push(format!(
            "{at}.retention: {} is shorter than max_token_lifetime {} + jwks_max_age {} + \
             clock_skew {} = {}: tokens signed just before a rotation would stop verifying \
             while still valid",
            show(retention),
            show(max_lifetime),
            show(max_age),
            show(clock_skew),
            show(floor)
        ));
    }
    if rotate_every < publish_ahead {
        problems.push(format!(
            "{at}.rotate_every: {} is shorter than publish_ahead {}: each next key must be \
             published for publish_ahead before it signs",
            show(rotate_every),
            show(publish_ahead)
        ));
    }
    if rotate_every < Duration::from_secs(1) {
        problems.push(format!("{at}.rotate_every: must be at least 1s"));
    }
    // AWS accepts at most 100 keys of a type in one JWKS (spire#4699). At
    // steady state the JWKS holds the current and next keys and the retired
    // ones still within retention.
    let published = 2 + retention.as_secs().div_ceil(rotate_every.as_secs().max(1));
    if published > MAX_KEYS_PER_TYPE as u64 {
        problems.push(format!(
            "{at}.rotate_every: rotating every {} with retention {} publishes up to {published} \
             keys; AWS accepts at most 100 of a type, so rotate less often",
            show(rotate_every),
            show(retention)
        ));
    }
    if problems.len() != before {
        return None;
    }
    Some(RotationPolicy {
        rotate_every,
        publish_ahead,
        retention,
    })
}

fn validate_rotation(r: FileRotation, problems: &mut Vec<String>) -> Option<RotationSettings> {
    let interval = duration(
        "rotation",
        "interval",
        r.interval.as_deref(),
        "1m",
        problems,
    );
    let reload = duration(
        "rotation",
        "reload_interval",
        r.reload_interval.as_deref(),
        "5s",
        problems,
    );
    let (interval, reload) = (interval?, reload?);
    if interval < Duration::from_secs(1) || reload < Duration::from_secs(1) {
        problems.push("rotation.interval and rotation.reload_interval: must be at least 1s".into());
        return None;
    }
    Some(RotationSettings {
        enabled: r.enabled.unwrap_or(true),
        interval,
        reload_interval: reload,
    })
}

const MAX_LIFETIME_CAP: Duration = Duration::from_secs(365 * 86400);

fn duration(
    at: &str,
    field: &str,
    value: Option<&str>,
    default: &str,
    problems: &mut Vec<String>,
) -> Option<Duration> {
    let text = value.unwrap_or(default);
    let at = if at.is_empty() {
        String::new()
    } else {
        format!("{at}.")
    };
    match humantime::parse_duration(text) {
        Ok(d) if d.subsec_nanos() == 0 => Some(d),
        Ok(_) => {
            problems.push(format!(
                "{at}{field}: \"{text}\" must be a whole number of seconds"
            ));
            None
        }
        Err(e) => {
            problems.push(format!(
                "{at}{field}: \"{text}\" is not a duration ({e}); write it like \"24h\", \"90m\" or \"3600s\""
            ));
            None
        }
    }
}

fn validate_client(
    at: &str,
    a: FileApiClient,
    clusters: &HashMap<String, usize>,
    client_ca: bool,
    problems: &mut Vec<String>,
) -> Option<ApiClientConfig> {
    let before = problems.len();
    if a.name.is_empty() || a.name.len() > 128 || a.name.chars().any(|c| c.is_control()) {
        problems.push(format!("{at}.name: must be 1 to 128 printable characters"));
    }
    let credential = match (a.token_sha256, a.token_file) {
        (Some(hex), None) => {
            if a.generate {
                problems.push(format!("{at}.generate: only applies with token_file"));
            }
            match decode_sha256_hex(&hex) {
                Some(d) => Some(Credential::Sha256(d)),
                None => {
                    problems.push(format!(
                        "{at}.token_sha256: must be 64 hex digits, the SHA-256 of the token \
                         (for example: printf %s \"$TOKEN\" | sha256sum)"
                    ));
                    None
                }
            }
        }
        (None, Some(path)) => Some(Credential::File {
            path,
            generate: a.generate,
        }),
        (Some(_), Some(_)) => {
            problems.push(format!("{at}: set token_sha256 or token_file, not both"));
            None
        }
        (None, None) => {
            if a.certificate_names.is_empty() {
                problems.push(format!(
                    "{at}: set token_sha256 (a digest) or token_file, or certificate_names for \
                     client certificates; tokens are never written inline"
                ));
            } else if a.generate {
                problems.push(format!("{at}.generate: only applies with token_file"));
            }
            None
        }
    };
    if a.allow_common_name && a.certificate_names.is_empty() {
        problems.push(format!(
            "{at}.allow_common_name: only applies with certificate_names"
        ));
    }
    if !a.certificate_names.is_empty() && !client_ca {
        problems.push(format!(
            "{at}.certificate_names: client certificates are only accepted with api.client_ca set"
        ));
    }
    for (j, n) in a.certificate_names.iter().enumerate() {
        if n.is_empty() || n.len() > 253 || n.chars().any(|c| c.is_control() || c == ' ') {
            problems.push(format!(
                "{at}.certificate_names[{j}]: must be a DNS name, URI or common name of 1 to 253 \
                 characters without spaces"
            ));
        }
    }
    let rate_limit = match (a.rate_limit.as_deref(), a.burst) {
        (None, None) => None,
        (None, Some(_)) => {
            problems.push(format!("{at}.burst: only applies with rate_limit"));
            None
        }
        (Some(text), burst) => match parse_rate(text) {
            Some(per_second) => {
                let default_burst = text
                    .split_once('/')
                    .and_then(|(n, _)| n.trim().parse().ok())
                    .unwrap_or(1);
                let burst = burst.unwrap_or(default_burst);
                if burst == 0 {
                    problems.push(format!("{at}.burst: must be at least 1"));
                }
                Some(RateLimit { per_second, burst })
            }
            None => {
                problems.push(format!(
                    "{at}.rate_limit: \"{text}\" is not a rate; write it like \"200/s\", \"30/m\" \
                     or \"1000/h\" (a positive whole number of mints per second, minute or hour)"
                ));
                None
            }
        },
    };
    if a.clusters.is_empty() {
        problems.push(format!(
            "{at}.clusters: must list the clusters this client may mint for, or [\"*\"]"
        ));
    }
    let all_clusters = a.clusters.iter().any(|c| c == "*");
    for (j, c) in a.clusters.iter().enumerate() {
        if c != "*" && !clusters.contains_key(c) {
            problems.push(format!("{at}.clusters[{j}]: no cluster has id \"{c}\""));
        }
    }
    if let Some(ns) = &a.namespaces {
        if ns.is_empty() {
            problems.push(format!(
                "{at}.namespaces: an empty list would allow nothing; leave it out to allow every namespace"
            ));
        }
        for (j, n) in ns.iter().enumerate() {
            if !is_dns_label(n) {
                problems.push(format!(
                    "{at}.namespaces[{j}]: \"{n}\" is not a namespace name (a DNS label)"
                ));
            }
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(ApiClientConfig {
        name: a.name,
        credential,
        certificate_names: a.certificate_names,
        allow_common_name: a.allow_common_name,
        rate_limit,
        clusters: (!all_clusters).then_some(a.clusters),
        namespaces: a.namespaces,
    })
}

fn decode_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Checks an issuer-style URL and returns its path without a trailing slash.
/// OIDC Discovery §3 and §4.3: the issuer is https (http is accepted here for
/// loopback development), has no query or fragment, and is compared byte for
/// byte, so it must be written in normal form and without a trailing slash.
fn check_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err("must use https (or http for local development)".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user information".into());
    }
    if text.contains('?') {
        return Err("must not have a query".into());
    }
    if text.contains('#') {
        return Err("must not have a fragment".into());
    }
    if text.ends_with('/') {
        return Err(
            "must not end with '/': relying parties compare the issuer byte for byte, and a \
             trailing slash on one side breaks Azure (AADSTS70021) and go-oidc"
                .into(),
        );
    }
    let path = url.path().trim_end_matches('/').to_owned();
    let normal = format!("{}{}", url.origin().ascii_serialization(), path);
    if normal != text {
        return Err(format!(
            "is not in normal form; write it as \"{normal}\" so it matches the iss claim byte for byte"
        ));
    }
    for segment in path.split('/').skip(1) {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err("has an empty, '.' or '..' path segment".into());
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return Err(format!(
                "path segment \"{segment}\" may hold only letters, digits, '-', '.', '_' and '~'"
            ));
        }
    }
    Ok(path)
}

/// RFC 1123 label, as Kubernetes checks namespace names.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain, as Kubernetes checks most object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Longest audience accepted, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 1024;

/// Checks one audience value: non-empty, bounded, printable.
pub fn check_audience(aud: &str) -> Result<(), String> {
    if aud.is_empty() {
        return Err("must not be empty".into());
    }
    if aud.len() > MAX_AUDIENCE_LEN {
        return Err(format!(
            "is {} bytes long; at most {MAX_AUDIENCE_LEN} are allowed",
            aud.len()
        ));
    }
    if aud.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("test.toml", text, &Overrides::default())
    }

    const BASE: &str = r#"
listen = "127.0.0.1:8080"
public_url = "https://oidc.example.com"
keys_dir = "keys"
"#;

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.clusters[0].issuer, "http://127.0.0.1:8080/c/demo");
        assert_eq!(c.clusters[0].issuer_path, "/c/demo");
        assert_eq!(c.clusters[0].key_spec, KeySpec::Rsa { bits: 2048 });
        assert_eq!(c.clusters[0].audiences, vec![DEFAULT_AUDIENCE]);
        assert_eq!(c.clusters[0].max_token_lifetime, Duration::from_secs(86400));
        assert_eq!(c.api_clients.len(), 1);
    }

    #[test]
    fn the_example_file_is_valid() {
        let c = Config::load(
            Some(Path::new("config/example.toml")),
            &Overrides::default(),
        )
        .unwrap();
        let ids: Vec<_> = c.clusters.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["demo", "edge"]);
        assert_eq!(c.clusters[1].key_spec, KeySpec::P256);
    }

    #[test]
    fn overrides_win_over_the_file() {
        let o = Overrides {
            listen: Some("127.0.0.1:9999".into()),
            public_url: Some("https://id.example.org".into()),
            ..Default::default()
        };
        let c = Config::load(None, &o).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.clusters[0].issuer, "https://id.example.org/c/demo");
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse(&format!("{BASE}\nlisten_port = 3\n")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `listen_port`"),
            "{err}"
        );
        let err = parse(&format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\nalgo = \"RS256\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `algo`"), "{err}");
    }

    #[test]
    fn every_problem_names_its_field() {
        let text = format!(
            r#"{BASE}
[[clusters]]
id = "demo"
rsa_bits = 1024

[[clusters]]
id = "demo"
issuer = "https://oidc.example.com/x/"

[[clusters]]
id = "Bad_Id"
issuer = "https://oidc.example.com/y?q=1"
algorithm = "HS256"

[[clusters]]
id = "frag"
issuer = "https://oidc.example.com/z#f"
max_token_lifetime = "5m"
jwks_max_age = "soon"

[[api_clients]]
name = "x"
token_sha256 = "abc"
clusters = ["nope"]
"#
        );
        let err = parse(&text).unwrap_err().to_string();
        for needle in [
            "clusters[0].rsa_bits: 1024",
            "clusters[1].id: duplicate cluster id \"demo\"",
            "clusters[1].issuer: \"https://oidc.example.com/x/\" must not end with '/'",
            "clusters[2].id: \"Bad_Id\" must be a DNS label",
            "clusters[2].issuer: \"https://oidc.example.com/y?q=1\" must not have a query",
            "clusters[2].algorithm: \"HS256\" is not supported",
            "clusters[3].issuer: \"https://oidc.example.com/z#f\" must not have a fragment",
            "clusters[3].max_token_lifetime: 5m is shorter than min_token_lifetime 10m",
            "clusters[3].jwks_max_age: \"soon\" is not a duration",
            "api_clients[0].token_sha256: must be 64 hex digits",
            "api_clients[0].clusters[0]: no cluster has id \"nope\"",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    #[test]
    fn issuers_may_live_at_another_path_or_at_the_root() {
        let text = format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\nissuer = \"https://oidc.example.com/id/a\"\n\
             [[clusters]]\nid = \"b\"\nissuer = \"https://b.example.com\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.clusters[0].issuer_path, "/id/a");
        assert_eq!(c.clusters[1].issuer_path, "");
    }

    #[test]
    fn two_issuers_on_one_path_are_refused() {
        let text = format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\nissuer = \"https://one.example.com/x\"\n\
             [[clusters]]\nid = \"b\"\nissuer = \"https://two.example.com/x\"\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("clusters[1].issuer") && err.contains("same path"),
            "{err}"
        );
    }

    #[test]
    fn issuer_urls_must_be_in_normal_form() {
        let text = format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\nissuer = \"HTTPS://Oidc.Example.com:443/a\"\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("write it as \"https://oidc.example.com/a\""),
            "{err}"
        );
    }

    #[test]
    fn tokens_are_never_inline() {
        let text = format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\n[[api_clients]]\nname = \"x\"\ntoken = \"secret\"\nclusters = [\"*\"]\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `token`"), "{err}");
    }

    #[test]
    fn dns_names_are_checked_like_kubernetes() {
        assert!(is_dns_label("ws-123"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("my.sa-1"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain("../etc"));
    }

    fn problems_of(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        }
    }

    const CLUSTER: &str = "[[clusters]]\nid = \"demo\"\n";

    #[test]
    fn an_http_issuer_or_a_clear_text_api_off_loopback_is_refused_unless_allowed() {
        let open_http = "listen = \"0.0.0.0:8080\"\npublic_url = \"http://oidc.example.com\"\nkeys_dir = \"k\"\n";
        let p = problems_of(&format!("{open_http}{CLUSTER}"));
        assert!(
            p.iter()
                .any(|m| m.contains("cloud IAM providers only accept https issuers")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m
                .starts_with("listen: the issuance API would listen on 0.0.0.0:8080 without TLS")),
            "{p:?}"
        );
        assert!(parse(&format!("allow_insecure_http = true\n{open_http}{CLUSTER}")).is_ok());
        // https behind a terminating proxy, the API kept on loopback: fine.
        let proxied = "listen = \"0.0.0.0:8080\"\npublic_url = \"https://oidc.example.com\"\nkeys_dir = \"k\"\n";
        assert!(problems_of(&format!("{proxied}{CLUSTER}"))
            .iter()
            .any(|m| m.contains("issuance API")));
        let c = parse(&format!(
            "{proxied}{CLUSTER}[api]\nlisten = \"127.0.0.1:9443\"\n"
        ))
        .unwrap();
        assert_eq!(c.api_listener.unwrap().addr.to_string(), "127.0.0.1:9443");
        // Loopback development over http stays allowed.
        assert!(parse(&format!("{BASE}{CLUSTER}")).is_ok());
    }

    #[test]
    fn the_api_listener_and_client_certificates_are_checked() {
        let tls = "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
        let c = parse(&format!("{tls}{BASE}{CLUSTER}[api]\nlisten = \"127.0.0.1:9443\"\nclient_ca = \"ca.pem\"\n[[api_clients]]\nname = \"ci\"\ncertificate_names = [\"ci.internal\"]\nclusters = [\"*\"]\n")).unwrap();
        let api = c.api_listener.unwrap();
        let api_tls = api.tls.unwrap();
        assert_eq!(api_tls.cert, PathBuf::from("c.pem"));
        assert_eq!(api_tls.client_ca, Some(PathBuf::from("ca.pem")));
        // The public listener does not ask for client certificates.
        assert!(c.tls.unwrap().client_ca.is_none());
        assert!(c.api_clients[0].credential.is_none());
        // Common names count only when a client asks for them.
        assert!(!c.api_clients[0].allow_common_name);
        let p = problems_of(&format!(
            "{BASE}{CLUSTER}[[api_clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nallow_common_name = true\nclusters = [\"*\"]\n",
            "0".repeat(64)
        ));
        assert_eq!(
            p,
            ["api_clients[0].allow_common_name: only applies with certificate_names"]
        );

        let p = problems_of(&format!("{BASE}{CLUSTER}[api]\nlisten = \"127.0.0.1:8080\"\nclient_ca = \"ca.pem\"\n[[api_clients]]\nname = \"ci\"\ncertificate_names = [\"ci.internal\"]\nclusters = [\"*\"]\n"));
        assert!(
            p.iter()
                .any(|m| m.starts_with("api.listen: 127.0.0.1:8080 overlaps listen")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("api.client_ca: client certificates need TLS")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains(
                "certificate_names: client certificates are only accepted with api.client_ca"
            )),
            "{p:?}"
        );
        let p = problems_of(&format!(
            "{BASE}{CLUSTER}[[api_clients]]\nname = \"a\"\nclusters = [\"*\"]\n"
        ));
        assert!(
            p.iter()
                .any(|m| m
                    .contains("set token_sha256 (a digest) or token_file, or certificate_names")),
            "{p:?}"
        );
        let p = problems_of(&format!("{tls}{BASE}{CLUSTER}[api]\nclient_ca = \"ca.pem\"\n[[api_clients]]\nname = \"a\"\ncertificate_names = [\"x\"]\nclusters = [\"*\"]\n[[api_clients]]\nname = \"b\"\ncertificate_names = [\"x\"]\nclusters = [\"*\"]\n"));
        assert!(
            p.iter()
                .any(|m| m.contains("certificate name \"x\" is given to both \"a\" and \"b\"")),
            "{p:?}"
        );
    }

    #[test]
    fn limits_and_rate_limits_are_parsed_and_bounded() {
        let c = parse(&format!("{BASE}{CLUSTER}")).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.tls_reload_interval, Duration::from_secs(10));
        let c = parse(&format!("{BASE}{CLUSTER}[limits]\nmax_connections = 64\nheader_read_timeout = \"2s\"\n[[api_clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\nrate_limit = \"30/m\"\n", "0".repeat(64))).unwrap();
        assert_eq!(c.limits.max_connections, 64);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(
            c.api_clients[0].rate_limit,
            Some(RateLimit {
                per_second: 0.5,
                burst: 30
            })
        );
        let p = problems_of(&format!("{BASE}tls_reload_interval = \"0s\"\n{CLUSTER}[limits]\nmax_connections = 0\nmax_header_bytes = 100\nrequest_timeout = \"2h\"\n[[api_clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\nrate_limit = \"fast\"\n[[api_clients]]\nname = \"b\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\nburst = 3\n", "0".repeat(64), "1".repeat(64)));
        for expected in [
            "limits.max_connections: 0 must be between 1 and 1000000",
            "limits.max_header_bytes: 100 must be between 8192 and 1048576",
            "limits.request_timeout: must be between 1s and 1h",
            "api_clients[0].rate_limit: \"fast\" is not a rate",
            "api_clients[1].burst: only applies with rate_limit",
            "tls_reload_interval: must be at least 1s",
        ] {
            assert!(
                p.iter().any(|m| m.starts_with(expected)),
                "{expected} not in {p:?}"
            );
        }
    }
}
