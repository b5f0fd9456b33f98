//! The workload identity `token` and `agent` mint for, and the client they
//! mint through: the issuer URL, the API client's bearer token file, the
//! CA to trust, the service account and what to ask for.
//!
//! Imports nothing of the server side and nothing of clap: `cli` fills
//! `IdentityOptions` from its flags.

use std::path::PathBuf;
use std::time::Duration;

use super::{read_flag_file, ClientError, Issued, MintParams};

/// Who to mint for, and where to ask (`token` and `agent` alike).
#[derive(Clone, Debug)]
pub struct IdentityOptions {
    /// The issuer URL, as a kubeconfig's server.
    pub server: String,
    /// File holding the API client's bearer token; re-read on every mint.
    pub token_file: PathBuf,
    /// PEM CA bundle to trust; the system's roots when `None`.
    pub ca_file: Option<PathBuf>,
    pub namespace: String,
    pub service_account: String,
    /// Requested lifetime; the server's default when `None`.
    pub duration: Option<Duration>,
    /// Bind the token to this pod (name, uid).
    pub bound_pod: Option<(String, String)>,
}

/// The workload identity to mint for, with a client to mint through.
pub struct Identity {
    client: reqwest::Client,
    params: MintParams,
    token_file: PathBuf,
    pub ca_pem: Option<Vec<u8>>,
}

impl Identity {
    pub fn new(options: &IdentityOptions) -> Result<Identity, ClientError> {
        url::Url::parse(&options.server)
            .ok()
            .filter(|u| u.scheme() == "https" || u.scheme() == "http")
            .ok_or_else(|| {
                ClientError::Input(format!(
                    "--server: {:?} is not an http(s) URL",
                    options.server
                ))
            })?;
        let ca_pem = match &options.ca_file {
            Some(p) => Some(read_flag_file("--ca-file", p)?),
            None => None,
        };
        let identity = Identity {
            client: super::http_client(ca_pem.as_deref())?,
            params: MintParams {
                server: options.server.clone(),
                bearer: String::new(),
                namespace: options.namespace.clone(),
                service_account: options.service_account.clone(),
                audiences: Vec::new(),
                duration: options.duration,
                bound_pod: options.bound_pod.clone(),
            },
            token_file: options.token_file.clone(),
            ca_pem,
        };
        // Fail early on an unreadable bearer file.
        identity.bearer()?;
        Ok(identity)
    }

    /// The issuer URL, as given.
    pub fn server(&self) -> &str {
        &self.params.server
    }

    /// Re-read on every mint, so a rotated API token is picked up.
    fn bearer(&self) -> Result<String, ClientError> {
        let text = read_flag_file("--token-file", &self.token_file)?;
        let token = String::from_utf8_lossy(&text).trim().to_owned();
        if token.is_empty() {
            return Err(ClientError::Input(format!(
                "--token-file {}: the file is empty",
                self.token_file.display()
            )));
        }
        Ok(token)
    }

    pub async fn mint(&self, audiences: &[String]) -> Result<Issued, ClientError> {
        let mut params = self.params.clone();
        params.bearer = self.bearer()?;
        params.audiences = audiences.to_vec();
        let issued = super::mint(&self.client, &params).await?;
        if let Some(warning) = issued.clock_warning() {
            tracing::warn!("{warning}");
        }
        Ok(issued)
    }
}
