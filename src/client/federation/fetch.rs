//! The issuer's discovery document and JWKS, fetched as the providers fetch
//! them (`<issuer>/.well-known/openid-configuration`, then its `jwks_uri`),
//! or read from the files `export` writes.
//!
//! Fetches with `verify`'s client code; imports nothing of the server side.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::super::verify::fetch_json;
use super::super::{read_flag_file, ClientError};

/// Discovery and JWKS, and how they were obtained.
#[derive(Clone, Debug)]
pub struct Documents {
    pub discovery: Value,
    pub jwks: Value,
    /// How long discovery and the JWKS took to answer together; `None`
    /// when read from files.
    pub fetch_time: Option<Duration>,
}

impl Documents {
    /// Fetches discovery under `issuer` and the JWKS it names. OIDC
    /// Discovery §4: the document is at the issuer plus
    /// `/.well-known/openid-configuration`, a trailing `/` of the issuer
    /// dropped first (as go-oidc, which Vault uses, does); whether a
    /// provider accepts that `/` is a rule of its own.
    pub async fn fetch(http: &reqwest::Client, issuer: &str) -> Result<Documents, ClientError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let started = Instant::now();
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.clone(),
            reason,
        };
        let discovery = fetch_json(http, &url).await.map_err(unreachable)?;
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .ok_or_else(|| ClientError::Answer(format!("{url} names no jwks_uri")))?;
        let jwks = fetch_json(http, jwks_uri)
            .await
            .map_err(|reason| ClientError::Unreachable {
                url: jwks_uri.to_owned(),
                reason,
            })?;
        Ok(Documents {
            fetch_time: Some(started.elapsed()),
            discovery,
            jwks,
        })
    }

    /// Reads an `export` bundle: its discovery document and its JWKS.
    pub fn from_files(discovery: &Path, jwks: &Path) -> Result<Documents, ClientError> {
        let read = |flag: &str, path: &Path| -> Result<Value, ClientError> {
            let bytes = read_flag_file(flag, path)?;
            serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Input(format!("{flag} {}: not JSON: {e}", path.display()))
            })
        };
        Ok(Documents {
            discovery: read("--discovery", discovery)?,
            jwks: read("--jwks", jwks)?,
            fetch_time: None,
        })
    }

    /// The `issuer` discovery states.
    pub fn issuer(&self) -> Option<&str> {
        self.discovery["issuer"].as_str()
    }

    /// The JWKS's keys; none when it has no `keys` array.
    pub fn keys(&self) -> &[Value] {
        self.jwks["keys"].as_array().map_or(&[], Vec::as_slice)
    }

    /// Whether these documents were read from an export bundle, to be
    /// uploaded rather than fetched.
    pub fn offline(&self) -> bool {
        self.fetch_time.is_none()
    }
}
