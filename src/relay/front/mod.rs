//! The relay's fronts: the listeners that speak HTTP to clients and hand every request to a
//! [`RelayService`].
//!
//! - [`https`]: HTTP/1.1 and HTTP/2 over TLS on TCP, chosen by ALPN, advertising HTTP/3.
//! - [`h3`]: HTTP/3 over QUIC on UDP (the same port number, by convention).
//! - [`plain`]: HTTP/1.1 and h2c (prior knowledge) without TLS, for local use and probes.
//!
//! A front owns connections, protocol limits (connection count, header size and time,
//! streams per connection) and draining; it never looks inside a request to decide anything
//! (routing, errors and body limits are the service's). Each serve function takes an already
//! bound socket and a drain signal, and returns once draining finished: no new connections,
//! GOAWAY / `Connection: close` on the open ones, in-flight requests completed.
//!
//! This file holds what HTTPS and plain share: hyper's HTTP/1.1 and HTTP/2 connection set-up.

pub mod h3;
pub mod https;
pub mod plain;

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::Watcher,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
};
use tracing::{debug, warn};

pub use self::{h3::h3_endpoint, h3::serve_h3, https::serve_https, plain::serve_plain};
use super::{
    config::model::Limits,
    service::{BodyError, ConnInfo, FrontProtocol, RelayService},
};

/// Resolves once draining starts. A drain sender that is gone can never start one, so that
/// waits forever rather than taking the listener down by accident.
async fn drain_started(drain: &mut watch::Receiver<bool>) {
    if drain.wait_for(|draining| *draining).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Accepts the next TCP connection, or `None` once draining started.
async fn accept_until_drain(
    listener: &TcpListener,
    drain: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            // Draining wins a tie: a connection that arrives with the drain is not taken.
            biased;
            () = drain_started(drain) => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Tokens are small writes: with Nagle on, a token written while an earlier
                    // one is unacknowledged waits for the client's delayed ACK (~40 ms), which
                    // showed up as +22 ms first-token latency on shared h2 connections.
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%peer, %error, "cannot set TCP_NODELAY");
                    }
                    return Some((stream, peer));
                }
                // The peer gave up between SYN and accept: its problem, not the listener's.
                Err(error) if is_per_connection(&error) => {
                    debug!(%error, "connection failed before accept");
                }
                Err(error) => {
                    // Out of file descriptors and the like: accepting again at once would
                    // spin; pausing lets finishing connections free what is short.
                    warn!(%error, "cannot accept connections; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Which hyper connection a TCP connection gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HttpVersion {
    Http1,
    Http2,
}

impl HttpVersion {
    fn protocol(self) -> FrontProtocol {
        match self {
            HttpVersion::Http1 => FrontProtocol::Http1,
            HttpVersion::Http2 => FrontProtocol::Http2,
        }
    }
}

/// HTTP/1.1 and HTTP/2 connection settings derived from [`Limits`], plus what every response
/// gets; shared by the HTTPS and plain fronts.
struct HttpConnections {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    service: Arc<dyn RelayService>,
    alt_svc: Option<HeaderValue>,
    secure: bool,
    /// HTTP/2 has no header-read timeout: a connection must bring its first request within
    /// this time, or it only holds a connection slot.
    first_request_timeout: Duration,
}

impl HttpConnections {
    fn service(&self) -> &dyn RelayService {
        self.service.as_ref()
    }

    fn new(
        service: Arc<dyn RelayService>,
        limits: &Limits,
        alt_svc: Option<HeaderValue>,
        secure: bool,
    ) -> HttpConnections {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_request_header_bytes);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_streams_per_connection)
            .max_header_list_size(
                u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX),
            );
        HttpConnections {
            http1,
            http2,
            service,
            alt_svc,
            secure,
            first_request_timeout: limits.header_read_timeout,
        }
    }

    /// Serves one connection until it ends, or until shutdown (through `watcher`) finished it
    /// gracefully. Errors end the connection and are logged here, once, at debug: a client
    /// that goes away is routine.
    async fn serve<I>(
        &self,
        io: I,
        version: HttpVersion,
        peer: SocketAddr,
        rtt: Option<Duration>,
        watcher: Watcher,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = ConnInfo {
            peer,
            protocol: version.protocol(),
            secure: self.secure,
            rtt,
        };
        let first_request = Arc::new(Notify::new());
        let service = {
            let relay = self.service.clone();
            let alt_svc = self.alt_svc.clone();
            let first_request = first_request.clone();
            hyper::service::service_fn(move |request: http::Request<Incoming>| {
                first_request.notify_one();
                let request = request.map(|body| body.map_err(BodyError::from).boxed_unsync());
                let response = relay.call(request, conn.clone());
                let alt_svc = alt_svc.clone();
                async move {
                    let mut response = response.await;
                    if let Some(alt_svc) = alt_svc {
                        response
                            .headers_mut()
                            .insert(http::header::ALT_SVC, alt_svc);
                    }
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let io = TokioIo::new(io);
        let result = match version {
            HttpVersion::Http1 => {
                watcher
                    .watch(self.http1.serve_connection(io, service))
                    .await
            }
            HttpVersion::Http2 => {
                let connection = watcher.watch(self.http2.serve_connection(io, service));
                tokio::pin!(connection);
                let first =
                    tokio::time::timeout(self.first_request_timeout, first_request.notified());
                tokio::select! {
                    result = &mut connection => result,
                    waited = first => match waited {
                        Ok(()) => connection.await,
                        Err(_) => {
                            debug!(%peer, "no HTTP/2 request in time; closing");
                            return;
                        }
                    },
                }
            }
        };
        if let Err(error) = result {
            debug!(%peer, protocol = version.protocol().as_str(), %error, "connection ended with an error");
        }
    }
}

/// An IO whose first bytes were already read (to tell HTTP/1.1 from h2c) and are replayed.
struct Rewound<T> {
    prefix: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewound<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewound<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod testing;
