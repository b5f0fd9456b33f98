//! The workload identity `token` and `agent` mint for, and the client they
//! mint through: the issuer URL, the API client's credentials (a bearer
//! token file, a client certificate or both), the CA to trust, the service
//! account and what to ask for.
//!
//! Imports nothing of the server side and nothing of clap: `cli` fills
//! `IdentityOptions` from its flags.

use std::path::PathBuf;
use std::time::Duration;

use super::{read_flag_file, ApiClient, AuthOptions, ClientError, Credentials, Issued, MintParams};

/// Who to mint for, and where to ask (`token` and `agent` alike).
#[derive(Clone, Debug)]
pub struct IdentityOptions {
    /// The issuer URL, as a kubeconfig's server.
    pub server: String,
    /// How to authenticate to the issuer's API.
    pub auth: AuthOptions,
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
    client: ApiClient,
    params: MintParams,
    credentials: Credentials,
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
        // Fails early on an unreadable bearer file or a bad certificate.
        let credentials = Credentials::new(&options.auth)?;
        Ok(Identity {
            client: credentials.http_client(ca_pem.as_deref())?,
            params: MintParams {
                server: options.server.clone(),
                bearer: None,
                namespace: options.namespace.clone(),
                service_account: options.service_account.clone(),
                audiences: Vec::new(),
                duration: options.duration,
                bound_pod: options.bound_pod.clone(),
            },
            credentials,
            ca_pem,
        })
    }

    /// The issuer URL, as given.
    pub fn server(&self) -> &str {
        &self.params.server
    }

    pub async fn mint(&self, audiences: &[String]) -> Result<Issued, ClientError> {
        let mut params = self.params.clone();
        // Re-read on every mint, so a rotated API token is picked up.
        params.bearer = self.credentials.bearer()?;
        params.audiences = audiences.to_vec();
        let issued = super::mint(&self.client, &params)
            .await
            .map_err(|e| self.credentials.explain(e))?;
        if let Some(warning) = issued.clock_warning() {
            tracing::warn!("{warning}");
        }
        Ok(issued)
    }
}
