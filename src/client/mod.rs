//! The client side of the issuer's API: `token`, `agent` and `verify`, as a
//! workload, a platform backend or a relying party runs them.
//!
//! Owns the HTTP client (rustls on aws-lc-rs, with the system's roots or a
//! given CA), minting through TokenRequest (`mint`), the output formats a
//! workload reads (`output`), and the three commands (`token`, `agent`,
//! `verify`), each taking a plain options struct that `cli` builds from
//! its parsed flags.
//!
//! Must not import the server side (`server`, `serve`, `http`, `issuer`,
//! `keys`, `health`, `metrics`) nor clap: it talks to the issuer over HTTP
//! like any other client. It may use the neutral helpers `fsutil` and the
//! Kubernetes name rule `config::check_audience`.

pub mod agent;
mod identity;
mod mint;
pub mod output;
mod renewal;
mod signal;
mod socket;
pub mod token;
pub mod verify;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

pub use identity::IdentityOptions;
pub use mint::{mint, Issued, MintParams};
pub use output::{render, Format};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Input(String),
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered with an error; `message` is its own words.
    #[error("the server refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the server's answer is not what was expected: {0}")]
    Answer(String),
}

impl ClientError {
    /// Whether trying again later may succeed (the server is down or busy),
    /// as opposed to a request that will be refused again.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Answer(_) => true,
            ClientError::Refused { status, .. } => *status == 429 || *status >= 500,
            ClientError::Input(_) => false,
        }
    }
}

/// Prints `e` and returns the exit code for it: 2 for bad input, else 1.
pub(crate) fn fail(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        ClientError::Input(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// An HTTP client trusting `ca_pem` (a PEM bundle), or the system's roots.
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    ClientError::Input(format!("--ca-file: not a PEM certificate bundle: {e}"))
                })?;
            if certs.is_empty() {
                return Err(ClientError::Input(
                    "--ca-file: no CERTIFICATE in the file".into(),
                ));
            }
            for c in certs {
                roots.add(c).map_err(|e| {
                    ClientError::Input(format!("--ca-file: unusable certificate: {e}"))
                })?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Input(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ClientError::Input(e.to_string()))
}

/// Reads a file named by a flag, saying which flag when it fails.
pub fn read_flag_file(flag: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Input(format!("{flag} {}: {e}", path.display())))
}

/// The error and its causes, so "connection refused" is not hidden behind
/// "error sending request".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The token part of a JWT's payload, for diagnostics; not verified.
pub fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_named() {
        let err = http_client(Some(b"not a pem")).unwrap_err().to_string();
        assert!(err.contains("--ca-file"), "{err}");
    }
}
