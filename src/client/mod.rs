//! The client side of the issuer's API: `token`, `agent` and `verify`, as a
//! workload, a platform backend or a relying party runs them.
//!
//! Owns the HTTP client (rustls on aws-lc-rs, with the system's roots or a
//! given CA), minting through TokenRequest (`mint`), the output formats a
//! workload reads (`output`, with the target API server they point at,
//! `target`, and the Kubernetes Secret, `secret`), and the commands
//! (`token`, `agent`, `verify`, `federation`, and the external signer's
//! relay, `relay`), each taking a plain options struct that `cli` builds
//! from its parsed flags.
//!
//! Must not import the server side (`server`, `serve`, `http`, `issuer`,
//! `keys`, `health`, `metrics`, `signer`) nor clap: it talks to the
//! issuer over HTTP like any other client. It may use the neutral helpers
//! `fsutil`, the Kubernetes name rules `k8s::names`, `config` (the bottom
//! layer) for what `federation print` reads of a cluster, and the protocol
//! of `externaljwt` (the external signer's gRPC service and socket, which
//! `relay` serves).

pub mod agent;
mod api_client;
mod credentials;
pub mod federation;
mod identity;
mod mint;
pub mod output;
pub mod relay;
mod renewal;
pub mod secret;
mod signal;
mod socket;
pub mod target;
pub mod token;
pub mod verify;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

pub use api_client::{ApiClient, SendFailure};
pub use credentials::{AuthOptions, CertFiles, Credentials};
pub use identity::IdentityOptions;
pub use mint::{mint, Issued, MintParams};
pub use output::{Format, Output};
pub use secret::{SecretOptions, SecretType};
pub use target::TargetOptions;

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
    client_builder(ca_pem)?
        .build()
        .map_err(|e| ClientError::Input(e.to_string()))
}

/// The builder of [`http_client`], for a command that adds to it.
fn client_builder(ca_pem: Option<&[u8]>) -> Result<reqwest::ClientBuilder, ClientError> {
    Ok(builder_for(tls_config(ca_pem, None)?))
}

/// The TLS settings of a client trusting `ca_pem` (or the system's roots)
/// that presents `cert` when the server asks for a client certificate.
fn tls_config(
    ca_pem: Option<&[u8]>,
    cert: Option<credentials::ClientCert>,
) -> Result<rustls::ClientConfig, ClientError> {
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
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Input(e.to_string()))?
        .with_root_certificates(roots);
    let (mut tls, alpn) = match cert {
        // In TLS 1.3 the server refuses a client certificate after the
        // client's side of the handshake is done; over HTTP/2 hyper may
        // drop that alert ("channel closed"), over HTTP/1.1 it mostly
        // reaches the request (and when it does not, `api_client` asks).
        Some(credentials::ClientCert { chain, key, files }) => (
            tls.with_client_auth_cert(chain, key)
                .map_err(|e| credentials::refused(&files, &e))?,
            vec![b"http/1.1".to_vec()],
        ),
        None => (
            tls.with_no_client_auth(),
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ),
    };
    tls.alpn_protocols = alpn;
    Ok(tls)
}

/// The builder of an HTTP client on `tls`.
fn builder_for(tls: rustls::ClientConfig) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder();
    if tls.alpn_protocols.len() == 1 {
        builder = builder.http1_only();
    }
    builder
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_secs(30))
}

/// How long a client waits for a TCP connection to the issuer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What went wrong with a request, with its causes, and for a server
/// certificate the client refused, what to do about it.
pub fn request_error(e: &reqwest::Error) -> String {
    let chain = error_chain(e);
    match tls_advice(e) {
        Some(advice) => format!("{chain}. {advice}"),
        None => chain,
    }
}

/// The rustls error somewhere in `e`'s causes. An `io::Error` hides the
/// error it wraps from `source()` (and reqwest wraps one io::Error in
/// another), so each is opened by hand.
fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut at = Some(e);
    while let Some(err) = at {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        at = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// What to do about a TLS handshake that failed over a certificate: the
/// server's, refused by this client, or this client's (`--cert`), refused
/// by the server. `None` when `e` is not that.
fn tls_advice(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    match rustls_cause(e)? {
        rustls::Error::InvalidCertificate(refused) => Some(server_certificate_advice(refused)),
        rustls::Error::AlertReceived(alert) => client_certificate_advice(*alert),
        _ => None,
    }
}

/// What the server's TLS alert says about this client's certificate.
fn client_certificate_advice(alert: rustls::AlertDescription) -> Option<String> {
    use rustls::AlertDescription as A;
    match alert {
        A::CertificateRequired => Some(
            "The server asks for a client certificate: pass it with --cert and its key with \
             --key"
                .into(),
        ),
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied
        // A certificate naming a trusted CA that did not sign it.
        | A::DecryptError => Some(format!(
            "The server refused the client certificate of --cert (its TLS alert: {alert:?}): \
             the certificate must be issued by a CA the server trusts for clients (the \
             issuer's api.client_ca), with any intermediates after it in the file, be within \
             its validity period and allow client authentication"
        )),
        _ => None,
    }
}

/// What to do about a server certificate this client refused.
fn server_certificate_advice(refused: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match refused {
        C::UnknownIssuer => "The server's certificate was not issued by a CA this client \
            trusts: pass the CA certificate that issued it with --ca-file (without --ca-file, \
            only the system's roots are trusted)"
            .into(),
        // webpki's CaUsedAsEndEntity has no CertificateError of its own.
        C::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            "The server presents a CA certificate as its own (a self-signed \
             `openssl req -x509` certificate is one), and TLS clients accept only a leaf \
             certificate: give the server a leaf certificate issued by a CA, and pass that \
             CA with --ca-file"
                .into()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "The server's certificate does not name the host in the URL: use a host its \
             subjectAltName lists, or give the server a certificate for this one (the CA in \
             --ca-file is not the problem)"
                .into()
        }
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            "The server's certificate is outside its validity period: renew it, or check \
             this machine's clock"
                .into()
        }
        _ => "The server's certificate was refused: check that --ca-file holds the CA \
            that issued it (without --ca-file, only the system's roots are trusted)"
            .into(),
    }
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
    fn only_a_refused_certificate_gets_tls_advice() {
        let refused = |c: rustls::CertificateError| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(c),
            )
        };
        let advice = tls_advice(&refused(rustls::CertificateError::UnknownIssuer)).unwrap();
        assert!(advice.contains("pass the CA certificate that issued it with --ca-file"));
        let advice = tls_advice(&refused(rustls::CertificateError::BadSignature)).unwrap();
        assert!(advice.contains("--ca-file"), "{advice}");
        // Wrapped twice, as reqwest does.
        let twice = std::io::Error::other(refused(rustls::CertificateError::UnknownIssuer));
        assert!(tls_advice(&twice).is_some());
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_advice(&plain), None);
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let err = http_client(Some(b"not a pem")).unwrap_err().to_string();
        assert!(err.contains("--ca-file"), "{err}");
    }
}
