//! Listeners: the accept loop for plain HTTP and for TLS (rustls, TLS 1.2 and
//! 1.3 only), HTTP/1.1 and HTTP/2, connection and header limits, the idle
//! timeout of HTTP/2 connections, TLS files reloaded when they change, client
//! certificates, and graceful shutdown.
//!
//! Knows the router only as a tower service; depends on nothing else here
//! but the validated configuration types.

mod conn;
mod tls;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::Limits;

use conn::{sniff, Builders, Connection, Protocol, Slot};
pub use tls::{peer_certificate, PeerCertificate, TlsError, TlsSource};

/// How long in-flight requests get to finish after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
