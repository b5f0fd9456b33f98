//! TLS for a listener: the certificate, key and client CA files, rebuilt
//! into a rustls configuration when they change, and the names a verified
//! client certificate carries.
//!
//! Depends on `config`'s file paths and the clock; nothing else here.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::clock::{unix_seconds, SharedClock};
use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("TLS key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS client CA {path}: {reason}")]
    ClientCa { path: String, reason: String },
    #[error("TLS certificate and key do not fit together: {0}")]
    Config(String),
}

/// The names a verified client certificate carries. Put in every request's
/// extensions on a connection that presented one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Its DNS and URI subject alternative names.
    pub names: Vec<String>,
    /// Its subject common names, only when it has no subject alternative
    /// name extension. A CA's name constraints bind the SANs, not the CN
    /// (rustls does not check a CN against them), so a CN only counts for a
    /// client that opts in.
    pub common_names: Vec<String>,
}

fn read(path: &Path, err: impl Fn(String) -> TlsError) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))
}

/// The bytes of one listener's TLS files, read together.
#[derive(PartialEq, Eq)]
struct TlsPem {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl TlsPem {
    fn read(files: &TlsFiles) -> Result<TlsPem, TlsError> {
        Ok(TlsPem {
            cert: read(&files.cert, |reason| TlsError::Cert {
                path: files.cert.display().to_string(),
                reason,
            })?,
            key: read(&files.key, |reason| TlsError::Key {
                path: files.key.display().to_string(),
                reason,
            })?,
            ca: match &files.client_ca {
                Some(ca) => Some(read(ca, |reason| TlsError::ClientCa {
                    path: ca.display().to_string(),
                    reason,
                })?),
                None => None,
            },
        })
    }

    fn build(&self, files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
        let cert_err = |reason: String| TlsError::Cert {
            path: files.cert.display().to_string(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| cert_err(e.to_string()))?;
        if chain.is_empty() {
            return Err(cert_err("no CERTIFICATE found in the file".into()));
        }
        let private = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| TlsError::Key {
            path: files.key.display().to_string(),
            reason: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (&self.ca, &files.client_ca) {
            (Some(ca), Some(path)) => {
                let ca_err = |reason: String| TlsError::ClientCa {
                    path: path.display().to_string(),
                    reason,
                };
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| ca_err(e.to_string()))?;
                    roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca_err("no CERTIFICATE found in the file".into()));
                }
                // A certificate is one way to authenticate, bearer tokens the
                // other: connections without one are let through, and a
                // certificate that is presented must verify.
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| ca_err(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, private)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A listener's TLS configuration, rebuilt when its files change. New
/// connections take the newest; open ones keep the one they started with.
pub struct TlsSource {
    files: TlsFiles,
    current: ArcSwap<rustls::ServerConfig>,
    /// The file contents last seen, and whether they built the configuration
    /// in use: a bad renewal is reported once rather than on every check.
    seen: Mutex<(TlsPem, bool)>,
    /// Seconds since the epoch of the last successful load.
    pub last_good: AtomicU64,
    /// Why the files last seen could not be used, if they could not.
    pub failing: Mutex<Option<String>>,
    clock: SharedClock,
}

impl TlsSource {
    /// Loads the files; `clock` stamps each successful (re)load.
    pub fn load(files: &TlsFiles, clock: SharedClock) -> Result<Arc<TlsSource>, TlsError> {
        let pem = TlsPem::read(files)?;
        let config = pem.build(files)?;
        Ok(Arc::new(TlsSource {
            files: files.clone(),
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new((pem, true)),
            last_good: AtomicU64::new(unix_seconds(clock.now())),
            failing: Mutex::new(None),
            clock,
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files; when they changed and make a good configuration,
    /// new connections use it. Returns whether a new configuration was taken.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let pem = match TlsPem::read(&self.files) {
            Ok(p) => p,
            Err(e) => {
                let why = e.to_string();
                if self.failing_with().as_deref() == Some(why.as_str()) {
                    return Ok(false); // reported already
                }
                self.set_failing(Some(why));
                return Err(e);
            }
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0 == pem {
            if seen.1 {
                // The files in use are readable again, unchanged.
                self.set_failing(None);
                self.last_good
                    .store(unix_seconds(self.clock.now()), Ordering::Relaxed);
            }
            return Ok(false);
        }
        let built = pem.build(&self.files);
        *seen = (pem, built.is_ok());
        drop(seen);
        match built {
            Ok(config) => {
                self.current.store(Arc::new(config));
                self.last_good
                    .store(unix_seconds(self.clock.now()), Ordering::Relaxed);
                self.set_failing(None);
                Ok(true)
            }
            Err(e) => {
                self.set_failing(Some(e.to_string()));
                Err(e)
            }
        }
    }

    fn failing_with(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_failing(&self, why: Option<String>) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Checks the files every `interval` until the task is dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let source = self.clone();
            let result = tokio::task::spawn_blocking(move || source.reload()).await;
            match result {
                Ok(Ok(true)) => tracing::info!(
                    cert = %self.files.cert.display(),
                    "TLS certificate reloaded; new connections use it"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    "cannot reload TLS files; the last good certificate keeps serving"
                ),
                Err(e) => tracing::error!(error = %e, "the TLS reload task failed"),
            }
        }
    }
}

/// The DNS and URI subject alternative names of a certificate, and its
/// subject common names when it has no subject alternative name extension.
/// No names when it cannot be parsed (rustls has verified it already, so
/// that does not happen in practice).
pub fn peer_certificate(der: &[u8]) -> PeerCertificate {
    use x509_cert::der::Decode as _;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let mut names = Vec::new();
    let mut common_names = Vec::new();
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return PeerCertificate {
            names,
            common_names,
        };
    };
    let tbs = &cert.tbs_certificate;
    let mut has_san = false;
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id != const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
            continue;
        }
        has_san = true;
        if let Ok(san) = SubjectAltName::from_der(ext.extn_value.as_bytes()) {
            for name in san.0 {
                match name {
                    GeneralName::DnsName(n) => names.push(n.as_str().to_owned()),
                    GeneralName::UniformResourceIdentifier(n) => names.push(n.as_str().to_owned()),
                    _ => {}
                }
            }
        }
    }
    // The CN only when there is no SAN extension at all (RFC 6125 §6.4.4).
    if !has_san {
        for rdn in tbs.subject.0.iter() {
            for atv in rdn.0.iter() {
                if atv.oid == const_oid::db::rfc4519::CN {
                    if let Ok(s) = atv.value.decode_as::<String>() {
                        common_names.push(s);
                    } else if let Ok(s) = atv
                        .value
                        .decode_as::<x509_cert::der::asn1::PrintableStringRef<'_>>()
                    {
                        common_names.push(s.as_str().to_owned());
                    }
                }
            }
        }
    }
    PeerCertificate {
        names,
        common_names,
    }
}
