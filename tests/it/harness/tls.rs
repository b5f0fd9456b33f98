//! TLS fixtures for the integration tests: a server certificate and its CA,
//! client-certificate CAs (with name-constrained sub-CAs), and a reqwest
//! client and raw TLS connections that trust them.

use std::path::{Path, PathBuf};

use super::tls_client_config;

pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_pem: String,
}

/// A CA and a server certificate for 127.0.0.1 and localhost, written to `dir`.
pub fn make_tls(dir: &Path) -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "workload-issuer test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    Tls {
        cert,
        key,
        ca_pem: ca_cert.pem(),
    }
}

/// A CA for client certificates, written to `dir/client-ca.crt`, that issues
/// client certificates on request.
pub struct ClientCa {
    /// The root the server trusts (`api.client_ca`).
    pub path: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// PEM of the CA certificates between this issuer and the root, sent
    /// after every leaf it issues.
    intermediates: String,
}

/// What a client certificate names.
pub enum ClientName<'a> {
    Dns(&'a str),
    Uri(&'a str),
    /// Only a subject common name, no alternative names.
    CommonName(&'a str),
    /// A DNS subject alternative name and a different common name.
    DnsAndCommonName(&'a str, &'a str),
}

impl ClientCa {
    pub fn new(dir: &Path) -> ClientCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "workload-issuer test client CA");
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join("client-ca.crt");
        std::fs::write(&path, cert.pem()).unwrap();
        ClientCa {
            path,
            issuer: Issuer::new(params, key),
            intermediates: String::new(),
        }
    }

    /// A sub-CA of this one whose name constraints permit only DNS names
    /// under `permitted` (RFC 5280 §4.2.1.10), as a tenant's CA would be.
    pub fn constrained_sub_ca(&self, permitted: &str) -> ClientCa {
        use rcgen::{
            BasicConstraints, CertificateParams, GeneralSubtree, IsCa, Issuer, KeyPair,
            NameConstraints,
        };
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("sub-CA for {permitted}"));
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(permitted.to_owned())],
            excluded_subtrees: Vec::new(),
        });
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ClientCa {
            path: self.path.clone(),
            issuer: Issuer::new(params, key),
            intermediates: format!("{}{}", cert.pem(), self.intermediates),
        }
    }

    /// A client certificate and its key, both PEM.
    pub fn issue(&self, name: ClientName<'_>) -> (String, String) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        match name {
            ClientName::Dns(n) => params
                .subject_alt_names
                .push(SanType::DnsName(n.try_into().unwrap())),
            ClientName::Uri(n) => params
                .subject_alt_names
                .push(SanType::URI(n.try_into().unwrap())),
            ClientName::CommonName(n) => {
                params.distinguished_name.push(rcgen::DnType::CommonName, n)
            }
            ClientName::DnsAndCommonName(dns, cn) => {
                params
                    .subject_alt_names
                    .push(SanType::DnsName(dns.try_into().unwrap()));
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, cn)
            }
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            format!("{}{}", cert.pem(), self.intermediates),
            key.serialize_pem(),
        )
    }
}

/// A reqwest client over [`tls_client_config`].
pub fn tls_client(ca_pem: &str, identity: Option<&(String, String)>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_client_config(ca_pem, identity, &[b"h2", b"http/1.1"]))
        .build()
        .unwrap()
}

/// Opens a TLS connection and returns the stream, the server's leaf
/// certificate and the negotiated ALPN protocol.
pub async fn tls_connect(
    base: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
        Option<Vec<u8>>,
    ),
    std::io::Error,
> {
    let addr = base.trim_start_matches("https://");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_client_config(
        ca_pem, None, alpn,
    )));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await?;
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].as_ref().to_vec();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    Ok((stream, leaf, alpn))
}
