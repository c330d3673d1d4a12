//! The boundary between the relay's fronts (HTTPS h1/h2, HTTP/3, plain HTTP) and the proxy.
//!
//! Every front turns what arrives into an `http::Request<Body>` plus a [`ConnInfo`] and hands
//! it to a [`RelayService`]; the proxy never knows which protocol carried it. Bodies are boxed
//! streams of `Bytes` frames, so a response body flows to the client frame by frame as the
//! backend produces it (nothing buffers a stream), and dropping a body — the client went away —
//! drops everything upstream of it.

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Why a body stream ended early.
pub type BodyError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A request or response body: a stream of data frames (and optional trailers).
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// The HTTP protocol a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrontProtocol {
    Http1,
    Http2,
    Http3,
}

impl FrontProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontProtocol::Http1 => "h1",
            FrontProtocol::Http2 => "h2",
            FrontProtocol::Http3 => "h3",
        }
    }
}

/// What the front knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub protocol: FrontProtocol,
    /// Whether it came over TLS (the HTTPS and HTTP/3 fronts) or the plain listener.
    pub secure: bool,
    /// The connection's smoothed round-trip time, where the transport measures one (QUIC).
    pub rtt: Option<Duration>,
}

pub type ResponseFuture = Pin<Box<dyn Future<Output = http::Response<Body>> + Send + 'static>>;

/// Handles one request. Infallible: errors are responses (OpenAI-style JSON), decided by the
/// service, never by a front.
pub trait RelayService: Send + Sync + 'static {
    fn call(&self, request: http::Request<Body>, conn: ConnInfo) -> ResponseFuture;

    /// A front turned a connection away at its connection cap (`listener`: `https`, `plain`,
    /// `h3`). The fronts own no metrics; the service that owns them counts it.
    fn connection_refused(&self, listener: &'static str) {
        let _ = listener;
    }
}

/// A body with all its bytes at once.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty_body() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}
