//! The configuration file as written: the serde structs it is read into.
//! `deny_unknown_fields` everywhere, so a typo is never a silent default.
//!
//! Plain data; imports nothing of the crate beyond `config` (never `keys`,
//! `issuer`, `http`, `server`, `serve`, `client`).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: String,
    pub(super) public_url: String,
    pub(super) keys_dir: PathBuf,
    #[serde(default)]
    pub(super) store: FileStore,
    #[serde(default)]
    pub(super) tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub(super) tls_key: Option<PathBuf>,
    #[serde(default)]
    pub(super) clusters: Vec<FileCluster>,
    #[serde(default)]
    pub(super) api_clients: Vec<FileApiClient>,
    #[serde(default)]
    pub(super) rotation: FileRotation,
    #[serde(default)]
    pub(super) tls_reload_interval: Option<String>,
    #[serde(default)]
    pub(super) api: FileApi,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(default)]
    pub(super) allow_insecure_http: bool,
    #[serde(default)]
    pub(super) allow_insecure_key_permissions: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileApi {
    #[serde(default)]
    pub(super) listen: Option<String>,
    #[serde(default)]
    pub(super) tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub(super) tls_key: Option<PathBuf>,
    #[serde(default)]
    pub(super) client_ca: Option<PathBuf>,
}

/// `[store]`: every field optional, so validation can say which one a kind
/// needs or does not take.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileStore {
    #[serde(default)]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) endpoints: Option<Vec<String>>,
    #[serde(default)]
    pub(super) prefix: Option<String>,
    #[serde(default)]
    pub(super) kek_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) extra_kek_files: Option<Vec<PathBuf>>,
    #[serde(default)]
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) cert_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) key_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) username: Option<String>,
    #[serde(default)]
    pub(super) password_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) lease_ttl: Option<String>,
    #[serde(default)]
    pub(super) cache_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    #[serde(default)]
    pub(super) max_connections: Option<u32>,
    #[serde(default)]
    pub(super) max_header_bytes: Option<u32>,
    #[serde(default)]
    pub(super) header_read_timeout: Option<String>,
    #[serde(default)]
    pub(super) request_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCluster {
    pub(super) id: String,
    #[serde(default)]
    pub(super) issuer: Option<String>,
    #[serde(default = "default_algorithm")]
    pub(super) algorithm: String,
    #[serde(default)]
    pub(super) rsa_bits: Option<u32>,
    #[serde(default)]
    pub(super) audiences: Option<Vec<String>>,
    #[serde(default)]
    pub(super) min_token_lifetime: Option<String>,
    #[serde(default)]
    pub(super) max_token_lifetime: Option<String>,
    #[serde(default)]
    pub(super) jwks_max_age: Option<String>,
    #[serde(default)]
    pub(super) rotate_every: Option<String>,
    #[serde(default)]
    pub(super) publish_ahead: Option<String>,
    #[serde(default)]
    pub(super) clock_skew: Option<String>,
    #[serde(default)]
    pub(super) retention: Option<String>,
    #[serde(default)]
    pub(super) publish_only: bool,
    #[serde(default)]
    pub(super) kubernetes_signer_socket: Option<PathBuf>,
    #[serde(default)]
    pub(super) kubernetes_signer_socket_group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRotation {
    #[serde(default)]
    pub(super) enabled: Option<bool>,
    #[serde(default)]
    pub(super) interval: Option<String>,
    #[serde(default)]
    pub(super) reload_interval: Option<String>,
}

fn default_algorithm() -> String {
    "RS256".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileApiClient {
    pub(super) name: String,
    #[serde(default)]
    pub(super) token_sha256: Option<String>,
    #[serde(default)]
    pub(super) token_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) generate: bool,
    pub(super) clusters: Vec<String>,
    #[serde(default)]
    pub(super) namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub(super) certificate_names: Vec<String>,
    #[serde(default)]
    pub(super) allow_common_name: bool,
    /// May create, recreate and delete clusters (the admin API).
    #[serde(default)]
    pub(super) admin: bool,
    #[serde(default)]
    pub(super) rate_limit: Option<String>,
    #[serde(default)]
    pub(super) burst: Option<u32>,
}
