//! Listeners: the accept loop for plain HTTP and for TLS (rustls, TLS 1.2 and
//! 1.3 only), HTTP/1.1 and HTTP/2, connection and header limits, the idle
//! timeout of HTTP/2 connections, TLS files reloaded when they change, client
//! certificates, and graceful shutdown.
//!
//! Knows the router only as a tower service; depends on nothing else here
//! but the validated configuration types.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::clock::{unix_seconds, SharedClock};
use crate::config::{Limits, TlsFiles};

/// How long in-flight requests get to finish after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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

/// Counters one listener keeps, read by health checks and metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Accepting connections (false before start and once shutdown begins).
    pub up: AtomicBool,
    pub open: AtomicUsize,
    pub accepted: AtomicU64,
    /// Connections that waited because `max_connections` were open.
    pub waited: AtomicU64,
}

/// One listening socket and how it serves.
pub struct Listener {
    /// "public", "api" or "main" (both faces), for logs and metrics.
    pub name: &'static str,
    pub socket: TcpListener,
    pub tls: Option<Arc<TlsSource>>,
    pub limits: Limits,
    pub stats: Arc<ListenerStats>,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting
/// and gives open connections [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(listener: Listener, app: Router, shutdown: impl Future<Output = ()>) {
    let Listener {
        name,
        socket,
        tls,
        limits,
        stats,
    } = listener;
    // Shutdown is announced to every connection through this channel, and
    // waited for until the last connection has dropped its receiver.
    let (stop, stopped) = watch::channel(());
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builders = Arc::new(Builders {
        http1,
        http2,
        idle_timeout: limits.header_read_timeout,
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    stats.up.store(true, Ordering::Relaxed);
    tokio::pin!(shutdown);
    // Whether the last accept had to wait for a slot: the warning is logged
    // once per episode, not once per connection.
    let mut limited = false;
    loop {
        // A slot first: at the cap, new connections wait in the backlog
        // rather than being accepted and starved.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                limited = false;
                p
            }
            Err(_) => {
                stats.waited.fetch_add(1, Ordering::Relaxed);
                if !limited {
                    tracing::warn!(
                        listener = name,
                        max_connections = limits.max_connections,
                        "connection limit reached; new connections wait"
                    );
                    limited = true;
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let conn = Connection {
            builders: builders.clone(),
            stop: stopped.clone(),
            peer,
            _slot: Slot {
                stats: stats.clone(),
                _permit: permit,
            },
        };
        let app = app.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        // Whatever comes first on a connection (a request head, the HTTP/2
        // preface, a ClientHello) must come within the head timeout: a client
        // that connects and sends nothing must not keep its slot.
        let first_bytes = limits.header_read_timeout;
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let Some(protocol) = sniff(&stream, first_bytes).await else {
                        tracing::debug!(%peer, "no request within the header timeout");
                        return;
                    };
                    conn.serve(protocol, TokioIo::new(stream), app).await
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(first_bytes, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    // RFC 9113 §3.2: over TLS, HTTP/2 is chosen by ALPN.
                    let protocol = match tls.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        _ => Protocol::Http1,
                    };
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| peer_certificate(cert.as_ref()));
                    match identity {
                        None => conn.serve(protocol, TokioIo::new(tls), app).await,
                        Some(identity) => {
                            let service = tower::ServiceExt::map_request(
                                app,
                                move |mut request: hyper::Request<hyper::body::Incoming>| {
                                    request.extensions_mut().insert(identity.clone());
                                    request
                                },
                            );
                            conn.serve(protocol, TokioIo::new(tls), service).await
                        }
                    }
                }
            }
        });
    }
    stats.up.store(false, Ordering::Relaxed);
    drop(socket);
    drop(stopped);
    stop.send_replace(());
    tokio::select! {
        () = stop.closed() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!(listener = name, "shutdown grace period over; closing open connections");
        }
    }
}

/// How one listener serves its connections.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// An HTTP/2 connection without an open stream for this long is closed.
    idle_timeout: Duration,
}

/// One accepted connection; gives its slot back when dropped.
struct Connection {
    builders: Arc<Builders>,
    /// Changes when the listener shuts down.
    stop: watch::Receiver<()>,
    peer: std::net::SocketAddr,
    _slot: Slot,
}

struct Slot {
    stats: Arc<ListenerStats>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Peeks at a plain connection's first bytes until they tell HTTP/1 from
/// HTTP/2 (prior knowledge), for at most `limit`; `None` when the client
/// sent nothing telling in time or closed the connection.
async fn sniff(stream: &tokio::net::TcpStream, limit: Duration) -> Option<Protocol> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // Part of the preface so far: real clients send it whole, so this
        // only waits on a slow or hostile one.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

impl Connection {
    /// Serves `protocol`, as the first bytes (or ALPN) said, with hyper's
    /// builder for it: hyper's own detection reads without a timeout.
    async fn serve<I, S>(self, protocol: Protocol, io: I, service: S)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: tower::Service<
                hyper::Request<hyper::body::Incoming>,
                Response = axum::response::Response,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let Connection {
            builders,
            stop,
            peer,
            _slot,
        } = self;
        let result = match protocol {
            // HTTP/1.1: the header timeout covers idle kept-alive connections.
            Protocol::Http1 => {
                let service = TowerToHyperService::new(service);
                let conn = builders.http1.serve_connection(io, service).with_upgrades();
                until_stopped(conn, |c| c.graceful_shutdown(), stop, None).await
            }
            // HTTP/2 has no such timeout in hyper: the streams are counted
            // here, and a connection without one is closed.
            Protocol::Http2 => {
                let streams = Arc::new(Streams::default());
                let service = TowerToHyperService::new(counted(service, &streams));
                let conn = builders.http2.serve_connection(io, service);
                let idle = Some((streams, builders.idle_timeout));
                until_stopped(conn, |c| c.graceful_shutdown(), stop, idle).await
            }
        };
        match result {
            Ok(Ended::Served) => {}
            Ok(Ended::Idle) => tracing::debug!(
                %peer,
                "HTTP/2 connection without a stream for the header timeout; closed"
            ),
            Err(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        }
    }
}

enum Ended {
    Served,
    /// An HTTP/2 connection closed for having no stream open.
    Idle,
}

/// Drives `conn` to its end. When the listener stops, or (with `idle`) when
/// an HTTP/2 connection has had no stream open for a whole period, `shutdown`
/// asks it to finish gracefully: HTTP/2 sends GOAWAY and lets open streams
/// complete. A connection still there a period after an idle GOAWAY with no
/// stream open (a client that does not read) is dropped.
async fn until_stopped<C>(
    conn: C,
    mut shutdown: impl FnMut(Pin<&mut C>),
    mut stop: watch::Receiver<()>,
    idle: Option<(Arc<Streams>, Duration)>,
) -> Result<Ended, hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    let mut stopping = false;
    let Some((streams, period)) = idle else {
        tokio::select! {
            r = conn.as_mut() => return r.map(|()| Ended::Served),
            _ = stop.changed() => shutdown(conn.as_mut()),
        }
        return conn.await.map(|()| Ended::Served);
    };
    let check = tokio::time::sleep(period);
    tokio::pin!(check);
    let mut seen = streams.snapshot();
    let mut went_away = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                return r.map(|()| if went_away { Ended::Idle } else { Ended::Served });
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                shutdown(conn.as_mut());
            }
            () = check.as_mut() => {
                let now = streams.snapshot();
                // No stream started since the last check and none open now:
                // none was open for the whole period.
                if now == seen && Streams::open(now) == 0 {
                    if went_away {
                        return Ok(Ended::Idle);
                    }
                    went_away = true;
                    if !stopping {
                        stopping = true;
                        shutdown(conn.as_mut());
                    }
                }
                seen = now;
                check.as_mut().reset(tokio::time::Instant::now() + period);
            }
        }
    }
}

/// The streams of one HTTP/2 connection: open ones in the low 32 bits, the
/// number ever started (wrapping) in the high 32, so that a stream opened
/// and finished between two checks is seen. What the idle timeout costs a
/// stream: one atomic add when it starts, one subtraction when its response
/// is done, and the reference its guard holds; nothing is allocated, and
/// HTTP/1.1 connections (the bulk of JWKS traffic) do not pay it at all.
#[derive(Debug, Default)]
struct Streams(AtomicU64);

const STREAM_OPEN: u64 = 1;
const STREAM_STARTED: u64 = 1 << 32;

impl Streams {
    fn start(self: &Arc<Self>) -> OpenStream {
        // Wraps on overflow, carrying out of the high half only.
        self.0
            .fetch_add(STREAM_STARTED + STREAM_OPEN, Ordering::Relaxed);
        OpenStream(self.clone())
    }

    fn snapshot(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn open(snapshot: u64) -> u64 {
        snapshot & (STREAM_STARTED - 1)
    }
}

/// One open stream, from the call of the service until its response body
/// has been sent (or the stream reset).
struct OpenStream(Arc<Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(STREAM_OPEN, Ordering::Relaxed);
    }
}

/// `service`, counting its streams in `streams`.
fn counted<S>(
    service: S,
    streams: &Arc<Streams>,
) -> impl tower::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<CountedBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<hyper::Response<CountedBody>, std::convert::Infallible>>
                 + Send
                 + 'static,
> + Clone
       + Send
       + 'static
where
    S: tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let streams = streams.clone();
    tower::ServiceExt::map_future(service, move |response: S::Future| {
        let open = streams.start();
        async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody { body, _open: open }))
        }
    })
}

/// A response body that holds its stream open until it is dropped.
struct CountedBody {
    body: axum::body::Body,
    _open: OpenStream,
}

impl hyper::body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
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

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a signal that comes while
/// the server is still starting is not lost (nor does it kill the process).
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(term, "SIGTERM") => {}
            () = wait(int, "SIGINT") => {}
        }
        tracing::info!(
            "shutting down: no new connections; open requests get {} s",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

/// Binds a listener, with the address in the error.
pub async fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
