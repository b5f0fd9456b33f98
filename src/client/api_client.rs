//! The HTTP client `token`, `agent` and the relay call the issuer's API
//! through, and why a call that never got an answer failed.
//!
//! With a client certificate, TLS 1.3 leaves one gap: the server reads the
//! certificate after the client's side of the handshake is done, so its
//! refusal (a TLS alert) races the request. When the alert reaches hyper's
//! connection before the request is handed to it, hyper drops it and the
//! request fails as "connection was not ready", which says nothing. A call
//! that fails without a TLS cause while a certificate is presented is
//! therefore followed by one bare handshake that sends nothing after it,
//! so the server's verdict, if it refuses, is the first thing read.
//!
//! Imports nothing of the server side.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncRead as _;

use super::{client_certificate_advice, request_error, rustls_cause, ClientError, CONNECT_TIMEOUT};

/// How long the bare handshake waits for the server's verdict on the
/// certificate once its own side is done. A server that refuses says so
/// as soon as it has checked the certificate; one that takes it sends
/// session tickets or nothing, and then the wait runs out.
const VERDICT_WAIT: Duration = Duration::from_secs(5);

/// An HTTP client for the issuer's API, holding the TLS settings of the
/// client certificate it presents, if any.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    certificate_tls: Option<Arc<rustls::ClientConfig>>,
}

/// Why a request got no answer.
#[derive(Debug)]
pub struct SendFailure {
    /// The error and its causes, with what to do for a refused certificate.
    pub reason: String,
    /// The server refused this client's certificate, which trying again
    /// will not change.
    pub certificate_refused: bool,
}

impl ApiClient {
    /// A client on `tls`; `presents_certificate` says whether `tls` holds a
    /// client certificate the server may refuse.
    pub(super) fn new(
        tls: rustls::ClientConfig,
        presents_certificate: bool,
    ) -> Result<ApiClient, ClientError> {
        let certificate_tls = presents_certificate.then(|| Arc::new(tls.clone()));
        let http = super::builder_for(tls)
            .build()
            .map_err(|e| ClientError::Input(e.to_string()))?;
        Ok(ApiClient {
            http,
            certificate_tls,
        })
    }

    /// The HTTP client, to build a request with.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends `request`, saying why when no answer came.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendFailure> {
        let e = match request.send().await {
            Ok(response) => return Ok(response),
            Err(e) => e,
        };
        // A TLS cause says what went wrong, and `request_error` adds what
        // to do about it.
        let reason = request_error(&e);
        if rustls_cause(&e).is_some() {
            return Err(SendFailure {
                reason,
                certificate_refused: refusal_advice(&e).is_some(),
            });
        }
        // Only a connection that got past its handshake can have had the
        // alert dropped; one that never connected, or a request that ran
        // out of time, is not asked again (nor made to wait twice).
        let advice = match (&self.certificate_tls, e.url()) {
            (Some(tls), Some(url)) if !e.is_connect() && !e.is_timeout() => {
                certificate_refusal(tls.clone(), url).await
            }
            _ => None,
        };
        Err(match advice {
            Some(advice) => SendFailure {
                reason: format!("{reason}; a second TLS handshake says why. {advice}"),
                certificate_refused: true,
            },
            None => SendFailure {
                reason,
                certificate_refused: false,
            },
        })
    }
}

/// The advice for the server's refusal of this client's certificate (its
/// TLS alert), when that is what `e` is.
fn refusal_advice(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    match rustls_cause(e)? {
        rustls::Error::AlertReceived(alert) => client_certificate_advice(*alert),
        _ => None,
    }
}

/// Whether the server at `url` refuses the client certificate in `tls`,
/// asked in a handshake after which nothing is sent; the advice for its
/// refusal, or `None` when it takes the certificate or cannot be asked.
pub(super) async fn certificate_refusal(
    tls: Arc<rustls::ClientConfig>,
    url: &url::Url,
) -> Option<String> {
    if url.scheme() != "https" {
        return None;
    }
    let port = url.port_or_known_default()?;
    let (name, tcp) = match url.host()? {
        url::Host::Domain(domain) => (
            ServerName::try_from(domain.to_owned()).ok()?,
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect((domain, port)),
            )
            .await,
        ),
        url::Host::Ipv4(ip) => connect_ip(IpAddr::V4(ip), port).await,
        url::Host::Ipv6(ip) => connect_ip(IpAddr::V6(ip), port).await,
    };
    let tcp = tcp.ok()?.ok()?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let handshake = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await;
    let mut stream = match handshake.ok()? {
        Ok(stream) => stream,
        // TLS 1.2: the refusal comes in the handshake itself.
        Err(e) => return refusal_advice(&e),
    };
    match tokio::time::timeout(VERDICT_WAIT, verdict(&mut stream)).await {
        Ok(Err(e)) => refusal_advice(&e),
        // Tickets, data, the end of the connection, or no word within the
        // wait: the server did not refuse the certificate.
        _ => None,
    }
}

/// Reads until the server says something of the certificate: an alert
/// (the error), or session tickets, data or the end of the connection,
/// which it sends only after it took the certificate.
async fn verdict(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    std::future::poll_fn(|cx| {
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(read) => Poll::Ready(read),
            Poll::Pending if stream.get_ref().1.tls13_tickets_received() == 0 => Poll::Pending,
            Poll::Pending => Poll::Ready(Ok(())),
        }
    })
    .await
}

async fn connect_ip(
    ip: IpAddr,
    port: u16,
) -> (
    ServerName<'static>,
    Result<std::io::Result<tokio::net::TcpStream>, tokio::time::error::Elapsed>,
) {
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(SocketAddr::new(ip, port)),
    )
    .await;
    (ServerName::IpAddress(ip.into()), connected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::credentials::{CertFiles, ClientCert};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        (params.self_signed(&key).unwrap(), Issuer::new(params, key))
    }

    fn leaf(name: &str, issuer: &Issuer<'static, KeyPair>) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert.der().clone(), key)
    }

    fn private(key: &KeyPair) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap()
    }

    /// A server for 127.0.0.1 asking for a client certificate issued by
    /// the client CA, when `client_ca` is given, and the PEM of its own CA.
    fn server(client_ca: Option<&rcgen::Certificate>) -> (rustls::ServerConfig, String) {
        let (ca_cert, ca) = ca("server CA");
        let (cert, key) = leaf("127.0.0.1", &ca);
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(client_ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(client_ca.der().clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(vec![cert], private(&key)).unwrap();
        (config, ca_cert.pem())
    }

    /// A client trusting `server_ca` that presents a certificate for
    /// `relay.internal` issued by `issuer`.
    fn client(server_ca: &str, issuer: &Issuer<'static, KeyPair>) -> ApiClient {
        let (cert, key) = leaf("relay.internal", issuer);
        let cert = ClientCert {
            chain: vec![cert],
            key: private(&key),
            files: CertFiles {
                cert: "relay.crt".into(),
                key: "relay.key".into(),
            },
        };
        let tls = crate::client::tls_config(Some(server_ca.as_bytes()), Some(cert)).unwrap();
        ApiClient::new(tls, true).unwrap()
    }

    /// Serves TLS with `configs` in turn, one connection each, reading a
    /// request and closing without an answer.
    async fn serve(configs: Vec<rustls::ServerConfig>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for config in configs {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.read(&mut [0u8; 1024]).await;
                    let _ = tls.shutdown().await;
                }
            }
        });
        port
    }

    #[tokio::test]
    async fn the_bare_handshake_names_a_refused_certificate_and_passes_a_taken_one() {
        let (client_ca_cert, client_ca) = ca("client CA");
        let (stranger_cert, stranger) = ca("a CA the server does not know");
        let _ = stranger_cert;
        let (config, server_ca) = server(Some(&client_ca_cert));
        let port = serve(vec![config.clone(), config]).await;
        let url = url::Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap();

        let refused = client(&server_ca, &stranger);
        let tls = refused.certificate_tls.clone().unwrap();
        let advice = certificate_refusal(tls, &url).await.unwrap();
        assert!(
            advice.contains("refused the client certificate of --cert (its TLS alert: UnknownCA)"),
            "{advice}"
        );

        let taken = client(&server_ca, &client_ca);
        let tls = taken.certificate_tls.clone().unwrap();
        assert_eq!(certificate_refusal(tls, &url).await, None);
    }

    #[tokio::test]
    async fn a_request_that_fails_without_a_tls_cause_asks_the_server_in_a_second_handshake() {
        let (client_ca_cert, _) = ca("client CA");
        let (_, stranger) = ca("a CA the server does not know");
        // The first connection is taken and closed with no answer, as a
        // refusal hyper dropped looks; the second refuses the certificate.
        let (open, server_ca) = server(None);
        let (mut refusing, _) = server(Some(&client_ca_cert));
        refusing.cert_resolver = open.cert_resolver.clone();
        let port = serve(vec![open, refusing]).await;
        let api = client(&server_ca, &stranger);
        let url = format!("https://127.0.0.1:{port}/token");
        let failure = api.send(api.http().post(&url)).await.unwrap_err();
        assert!(failure.certificate_refused, "{failure:?}");
        assert!(
            failure.reason.contains(
                "a second TLS handshake says why. The server refused the \
                 client certificate of --cert (its TLS alert: UnknownCA)"
            ),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn a_failure_without_a_certificate_or_before_the_handshake_is_not_asked_again() {
        let (open, server_ca) = server(None);
        let port = serve(vec![open]).await;
        let tls = crate::client::tls_config(Some(server_ca.as_bytes()), None).unwrap();
        let api = ApiClient::new(tls, false).unwrap();
        let url = format!("https://127.0.0.1:{port}/token");
        let failure = api.send(api.http().post(&url)).await.unwrap_err();
        assert!(!failure.certificate_refused, "{failure:?}");
        assert!(
            !failure.reason.contains("second TLS handshake"),
            "{failure:?}"
        );

        // With a certificate, a server that is not there is not asked again.
        let (_, ca) = ca("client CA");
        let api = client(&server_ca, &ca);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/token", closed.local_addr().unwrap());
        drop(closed);
        let failure = api.send(api.http().post(&url)).await.unwrap_err();
        assert!(!failure.certificate_refused, "{failure:?}");
        assert!(failure.reason.contains("Connection refused"), "{failure:?}");
    }
}
