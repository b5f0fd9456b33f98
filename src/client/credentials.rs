//! How the client side authenticates to the issuer's API, for `token`,
//! `agent` and the external signer's relay alike: a bearer token re-read
//! from its file on every call (`--token-file`), a client certificate
//! presented in the TLS handshake (`--cert`, `--key`), or both, when the
//! issuer goes by the token. The certificate and key are read and checked
//! here, so a bad file is named before anything is sent.
//!
//! Imports nothing of the server side and nothing of clap.

use std::path::PathBuf;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{read_flag_file, ApiClient, ClientError};

/// The files of a client certificate.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// PEM certificate chain, the client's own certificate first (`--cert`).
    pub cert: PathBuf,
    /// PEM private key of that certificate (`--key`).
    pub key: PathBuf,
}

/// How to authenticate to the issuer's API: a token file, a client
/// certificate, or both.
#[derive(Clone, Debug, Default)]
pub struct AuthOptions {
    /// File holding the API client's bearer token; re-read on every call.
    pub token_file: Option<PathBuf>,
    pub cert: Option<CertFiles>,
}

/// A client certificate chain and its private key, read and checked.
pub(super) struct ClientCert {
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
    pub(super) files: CertFiles,
}

impl ClientCert {
    /// Reads `--cert` and `--key`. That the key is usable and belongs to
    /// the certificate is checked as the TLS configuration is built.
    pub(super) fn read(files: &CertFiles) -> Result<ClientCert, ClientError> {
        let cert_at = format!("--cert {}", files.cert.display());
        let key_at = format!("--key {}", files.key.display());
        let pem = read_flag_file("--cert", &files.cert)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ClientError::Input(format!("{cert_at}: not a PEM certificate chain: {e}"))
            })?;
        if chain.is_empty() {
            return Err(ClientError::Input(format!(
                "{cert_at}: no CERTIFICATE in the file; give the client's PEM certificate \
                 (and the intermediates after it)"
            )));
        }
        let pem = read_flag_file("--key", &files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            use rustls::pki_types::pem::Error as Pem;
            ClientError::Input(match e {
                Pem::NoItemsFound => format!(
                    "{key_at}: no private key in the file; give the PEM \"PRIVATE KEY\", \
                     \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" of the --cert certificate"
                ),
                e => format!("{key_at}: not a PEM private key: {e}"),
            })
        })?;
        Ok(ClientCert {
            chain,
            key,
            files: files.clone(),
        })
    }
}

/// What rustls said when it took the certificate and key, naming the
/// flags: a key it cannot use, or one that is not the certificate's.
pub(super) fn refused(files: &CertFiles, e: &rustls::Error) -> ClientError {
    let key_at = format!("--key {}", files.key.display());
    ClientError::Input(match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{key_at} is not the private key of the certificate in --cert {} ({e})",
            files.cert.display()
        ),
        e => format!("{key_at}: not a private key this client can use: {e}"),
    })
}

/// The credentials a command authenticates with.
#[derive(Clone, Debug)]
pub struct Credentials {
    options: AuthOptions,
}

impl Credentials {
    /// Checks that there is a credential and that the token file, if any,
    /// can be read now.
    pub fn new(options: &AuthOptions) -> Result<Credentials, ClientError> {
        if options.token_file.is_none() && options.cert.is_none() {
            return Err(ClientError::Input(
                "no credential for the issuer's API: give --token-file, or --cert and --key".into(),
            ));
        }
        let credentials = Credentials {
            options: options.clone(),
        };
        credentials.bearer()?;
        Ok(credentials)
    }

    /// An HTTP client trusting `ca_pem` (or the system's roots) that
    /// presents the client certificate, if there is one.
    pub fn http_client(&self, ca_pem: Option<&[u8]>) -> Result<ApiClient, ClientError> {
        let cert = match &self.options.cert {
            Some(files) => Some(ClientCert::read(files)?),
            None => None,
        };
        let presents_certificate = cert.is_some();
        ApiClient::new(super::tls_config(ca_pem, cert)?, presents_certificate)
    }

    /// The bearer token, re-read so a rotated API token is picked up;
    /// `None` when the client authenticates by certificate alone.
    pub fn bearer(&self) -> Result<Option<String>, ClientError> {
        let Some(path) = &self.options.token_file else {
            return Ok(None);
        };
        let text = read_flag_file("--token-file", path)?;
        let token = String::from_utf8_lossy(&text).trim().to_owned();
        if token.is_empty() {
            return Err(ClientError::Input(format!(
                "--token-file {}: the file is empty",
                path.display()
            )));
        }
        Ok(Some(token))
    }

    /// Why a 401 came back when the certificate was the only credential:
    /// the issuer took the certificate but it names none of its API
    /// clients. `None` with a bearer token, which the issuer goes by.
    pub fn unauthenticated_hint(&self) -> Option<String> {
        match (&self.options.token_file, &self.options.cert) {
            (None, Some(files)) => Some(format!(
                "the certificate in --cert {} names no API client of the issuer: one of its \
                 subject alternative names must be in an api_clients entry's certificate_names",
                files.cert.display()
            )),
            _ => None,
        }
    }

    /// `e`, with [`Credentials::unauthenticated_hint`] added to a 401.
    pub fn explain(&self, e: ClientError) -> ClientError {
        match (e, self.unauthenticated_hint()) {
            (
                ClientError::Refused {
                    status: 401,
                    message,
                },
                Some(hint),
            ) => ClientError::Refused {
                status: 401,
                message: format!("{message}; {hint}"),
            },
            (e, _) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path, cert: &str, key: &str) -> CertFiles {
        std::fs::write(dir.join("c.pem"), cert).unwrap();
        std::fs::write(dir.join("k.pem"), key).unwrap();
        CertFiles {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
        }
    }

    #[test]
    fn no_credential_at_all_is_refused_naming_both_ways() {
        let err = Credentials::new(&AuthOptions::default()).unwrap_err();
        assert!(err
            .to_string()
            .contains("--token-file, or --cert and --key"));
    }

    #[test]
    fn a_key_file_without_a_key_and_a_cert_file_without_a_cert_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClientCert::read(&files(dir.path(), "hello", ""))
            .err()
            .unwrap();
        assert!(err.to_string().contains("--cert"), "{err}");
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let err = ClientCert::read(&files(dir.path(), cert, cert))
            .err()
            .unwrap();
        assert!(err.to_string().contains("--key"), "{err}");
        assert!(err.to_string().contains("no private key"), "{err}");
    }
}
