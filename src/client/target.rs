//! The API server a `token` output points at: the target cluster's
//! (`--target-server`, `--target-ca`) or, without them, the issuer's own API
//! (`--server`, `--ca-file`). The DOCA credential request makes credentials
//! for a target cluster whose kube-apiserver trusts this issuer.
//!
//! Owns the checks of the target URL and CA file; pure but for reading the
//! CA file. Imports nothing of the server side.

use std::net::IpAddr;
use std::path::Path;

use rustls::pki_types::pem::{PemObject as _, SectionKind};
use x509_cert::der::Decode as _;

use super::{read_flag_file, ClientError};

/// Where the credentials are for, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct TargetOptions {
    /// `--target-server`: the target cluster's API server URL.
    pub server: Option<String>,
    /// `--target-ca`: the PEM CA bundle of the target's API server.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The API server an output points at, checked.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: url::Url,
    /// The CA the output tells clients to trust, as given (PEM); the
    /// system's roots when `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// The flag `url` came from, for error messages.
    pub flag: &'static str,
}

impl Target {
    /// The target named by `options`, or the issuer's own API (`server`,
    /// already used to mint, and its CA `ca_pem`) without `--target-server`.
    pub fn new(
        options: &TargetOptions,
        server: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Target, ClientError> {
        let Some(given) = &options.server else {
            if options.ca_file.is_some() {
                return Err(ClientError::Input(
                    "--target-ca needs --target-server: without it the output points at the \
                     issuer's own API, whose CA is --ca-file"
                        .into(),
                ));
            }
            let url = url::Url::parse(server)
                .map_err(|e| ClientError::Input(format!("--server {server:?}: {e}")))?;
            return Ok(Target {
                url,
                ca_pem: ca_pem.map(<[u8]>::to_vec),
                flag: "--server",
            });
        };
        let url = target_url(given)?;
        let ca_pem = match &options.ca_file {
            Some(path) => Some(read_ca("--target-ca", path)?),
            None => None,
        };
        Ok(Target {
            url,
            ca_pem,
            flag: "--target-server",
        })
    }

    /// `scheme://host` (an IPv6 host in brackets), as DOCA's
    /// `KUBERNETES_SERVICE_HOST` holds it, and the port, for the outputs that
    /// name the server by host and port. Those cannot carry a path, so a URL
    /// with one is refused rather than cut: its API would not be found at
    /// the host's root.
    pub fn host_and_port(&self, output: &str) -> Result<(String, u16), ClientError> {
        let path = self.url.path();
        if !path.is_empty() && path != "/" {
            return Err(ClientError::Input(format!(
                "{output} names the API server by host and port only, and {} {} has the path \
                 {path}: pass the target cluster's API server (such as \
                 https://10.0.0.1:6443) with --target-server, or use a kubeconfig, which keeps \
                 the path",
                self.flag,
                self.url.as_str()
            )));
        }
        let host = match self.url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            Some(host) => host.to_string(),
            None => {
                return Err(ClientError::Input(format!(
                    "{} {}: no host",
                    self.flag,
                    self.url.as_str()
                )))
            }
        };
        let port = self.url.port_or_known_default().unwrap_or(443);
        Ok((format!("{}://{host}", self.url.scheme()), port))
    }

    /// The server URL as a kubeconfig's `server`.
    pub fn server(&self) -> String {
        // `Url` adds a '/' to a bare host; kubeconfigs are written without it.
        let text = self.url.as_str();
        match self.url.path() {
            "/" => text.trim_end_matches('/').to_owned(),
            _ => text.to_owned(),
        }
    }
}

/// Checks `--target-server`: an https URL (http only to a loopback host,
/// such as `kubectl proxy` on 127.0.0.1:8001, since the token would travel in
/// clear), with a host and no user, query or fragment.
fn target_url(given: &str) -> Result<url::Url, ClientError> {
    let bad = |why: &str| ClientError::Input(format!("--target-server {given:?}: {why}"));
    let not_https =
        || bad("not an https URL; write it as https://HOST[:PORT], such as https://10.0.0.1:6443");
    let url = url::Url::parse(given).map_err(|_| not_https())?;
    let host = match (url.scheme(), url.host()) {
        ("https" | "http", Some(host)) => host,
        _ => return Err(not_https()),
    };
    if url.scheme() == "http" && !is_loopback(&host) {
        return Err(bad(
            "http would send the token in clear over the network; use https (http is \
             accepted only for a loopback host, such as kubectl proxy on 127.0.0.1)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not hold a user or password; the token authenticates",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(url)
}

/// A host that names this machine: plain http to it crosses no network.
pub(super) fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

/// Reads a CA bundle named by `flag`: PEM holding one or more X.509
/// certificates and nothing else (a private key in it would be copied into
/// every output). Returns the file as it is.
pub fn read_ca(flag: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    let pem = read_flag_file(flag, path)?;
    let bad = |why: String| ClientError::Input(format!("{flag} {}: {why}", path.display()));
    let mut certificates = 0;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&pem) {
        let (kind, der) = section.map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
        if kind != SectionKind::Certificate {
            return Err(bad(format!(
                "holds a {kind:?} section; give a file of CERTIFICATE sections only"
            )));
        }
        x509_cert::Certificate::from_der(&der).map_err(|e| {
            bad(format!(
                "certificate {} is not a valid X.509 certificate: {e}",
                certificates + 1
            ))
        })?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err(bad(
            "no PEM certificate in the file (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(server: &str) -> Result<Target, ClientError> {
        let options = TargetOptions {
            server: Some(server.into()),
            ca_file: None,
        };
        Target::new(&options, "https://issuer.example.com/c/demo", None)
    }

    #[test]
    fn the_target_is_https_or_http_on_loopback() {
        for good in [
            "https://10.0.0.1:6443",
            "https://api.example.com",
            "http://127.0.0.1:8001",
            "http://localhost:8001",
            "http://[::1]:8001",
        ] {
            assert!(target(good).is_ok(), "{good}");
        }
        for (bad, says) in [
            ("http://10.0.0.1:6443", "in clear"),
            ("ftp://10.0.0.1", "not an https URL"),
            ("10.0.0.1:6443", "not an https URL"),
            ("https://u:p@10.0.0.1", "user or password"),
            ("https://10.0.0.1/?a=b", "query"),
        ] {
            let err = target(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("--target-server") && err.contains(says),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn host_and_port_keep_the_scheme_and_refuse_a_path() {
        let t = target("https://10.0.0.1:6443").unwrap();
        assert_eq!(
            t.host_and_port("x").unwrap(),
            ("https://10.0.0.1".into(), 6443)
        );
        let t = target("https://[fd00::1]").unwrap();
        assert_eq!(
            t.host_and_port("x").unwrap(),
            ("https://[fd00::1]".into(), 443)
        );
        assert_eq!(t.server(), "https://[fd00::1]");
        let t = target("https://rancher.example.com/k8s/clusters/c-1").unwrap();
        assert_eq!(t.server(), "https://rancher.example.com/k8s/clusters/c-1");
        let err = t.host_and_port("--format env").unwrap_err().to_string();
        assert!(err.contains("the path /k8s/clusters/c-1"), "{err}");
        // The issuer's own API, by default: its path is named with --server.
        let t = Target::new(
            &TargetOptions::default(),
            "https://issuer.example.com/c/demo",
            None,
        )
        .unwrap();
        let err = t.host_and_port("--format env").unwrap_err().to_string();
        assert!(
            err.contains("--server https://issuer.example.com/c/demo"),
            "{err}"
        );
    }

    #[test]
    fn a_target_ca_without_a_target_server_is_refused() {
        let options = TargetOptions {
            server: None,
            ca_file: Some("/tmp/ca.pem".into()),
        };
        let err = Target::new(&options, "https://x", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--target-ca needs --target-server"), "{err}");
    }
}
