//! One accepted connection: which protocol it speaks (sniffed, or by ALPN),
//! hyper's HTTP/1.1 or HTTP/2 connection on it, the idle timeout of HTTP/2
//! connections (hyper has none) and graceful shutdown.
//!
//! Knows the router only as a tower service.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use super::ListenerStats;

/// How one listener serves its connections.
pub(super) struct Builders {
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
    /// An HTTP/2 connection without an open stream for this long is closed.
    pub(super) idle_timeout: Duration,
}

/// One accepted connection; gives its slot back when dropped.
pub(super) struct Connection {
    pub(super) builders: Arc<Builders>,
    /// Changes when the listener shuts down.
    pub(super) stop: watch::Receiver<()>,
    pub(super) peer: std::net::SocketAddr,
    pub(super) _slot: Slot,
}

pub(super) struct Slot {
    pub(super) stats: Arc<ListenerStats>,
    pub(super) _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Peeks at a plain connection's first bytes until they tell HTTP/1 from
/// HTTP/2 (prior knowledge), for at most `limit`; `None` when the client
/// sent nothing telling in time or closed the connection.
pub(super) async fn sniff(stream: &tokio::net::TcpStream, limit: Duration) -> Option<Protocol> {
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
    pub(super) async fn serve<I, S>(self, protocol: Protocol, io: I, service: S)
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

pub(super) enum Ended {
    Served,
    /// An HTTP/2 connection closed for having no stream open.
    Idle,
}

/// Drives `conn` to its end. When the listener stops, or (with `idle`) when
/// an HTTP/2 connection has had no stream open for a whole period, `shutdown`
/// asks it to finish gracefully: HTTP/2 sends GOAWAY and lets open streams
/// complete. A connection still there a period after an idle GOAWAY with no
/// stream open (a client that does not read) is dropped.
pub(super) async fn until_stopped<C>(
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
pub(super) struct Streams(AtomicU64);

pub(super) const STREAM_OPEN: u64 = 1;
pub(super) const STREAM_STARTED: u64 = 1 << 32;

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
pub(super) struct OpenStream(Arc<Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(STREAM_OPEN, Ordering::Relaxed);
    }
}

/// `service`, counting its streams in `streams`.
pub(super) fn counted<S>(
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
pub(super) struct CountedBody {
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
