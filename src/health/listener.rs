//! The DNS node's end of the health channel (design §4): accepts relays' QUIC connections with
//! mutual TLS, reads one report frame per unidirectional stream, and hands each to the ledger
//! under the region of the relay's certificate ([`super::feed`] turns the ledger into region
//! health in the serving snapshot).
//!
//! Everything a peer can send is bounded before it is buffered: connections by
//! [`ListenerLimits::max_connections`] (more are refused), streams per connection by QUIC's own
//! stream credit ([`ListenerLimits::max_concurrent_uni_streams`]; bidirectional streams are not
//! allowed at all), bytes per stream by one frame ([`HEADER_LEN`] + [`MAX_FRAME_BYTES`]), and
//! time per stream by [`ListenerLimits::stream_timeout`]. Whatever is refused is counted in
//! [`ListenerCounters`]; what the ledger refuses is counted there.
//!
//! This module does the IO; it decides nothing about trust beyond "the TLS layer verified the
//! certificate against the deployment CA and it names exactly one region" (the ledger decides
//! ordering and freshness, [`super::view`] decides health).

use std::{
    net::UdpSocket,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use quinn::{IdleTimeout, TransportConfig, VarInt};
use tokio::{sync::Semaphore, sync::watch, task::JoinSet};
use tracing::{debug, info, warn};

use super::{
    frame::{self, Frame, HEADER_LEN, MAX_FRAME_BYTES},
    ledger::{ReportLedger, Session},
    pki::{self, PemPair, PkiError},
};

/// Application close code for a connection whose certificate names no region.
const CLOSE_NO_REGION: VarInt = VarInt::from_u32(1);
/// Application close code for a certificate of a region this node does not serve.
const CLOSE_UNKNOWN_REGION: VarInt = VarInt::from_u32(2);
const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Relay connections served at once; one per region per relay is the normal load.
    pub max_connections: usize,
    /// Report streams a relay may have open at once (QUIC stream credit).
    pub max_concurrent_uni_streams: u32,
    /// A connection silent this long is closed (relays send keep-alives and a report a second).
    pub idle_timeout: Duration,
    /// A report stream must be complete within this.
    pub stream_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 256,
            max_concurrent_uni_streams: 4,
            idle_timeout: Duration::from_secs(10),
            stream_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("idle timeout {timeout:?} is out of QUIC's range")]
    IdleTimeout { timeout: Duration },
    #[error("cannot start the health listener: {kind}")]
    Endpoint { kind: std::io::ErrorKind },
}

/// What the listener refused or dropped before anything reached the ledger.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    pub connections: AtomicU64,
    pub refused_over_limit: AtomicU64,
    pub handshake_failed: AtomicU64,
    pub no_region: AtomicU64,
    /// Certified for a region that is not in the node's configuration.
    pub unknown_region: AtomicU64,
    pub streams_too_long: AtomicU64,
    pub streams_timed_out: AtomicU64,
    pub malformed_frames: AtomicU64,
    pub reports_rejected: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A QUIC endpoint on `socket` serving the health channel: TLS 1.3 presenting `identity`,
/// client certificates from the CA in `ca_pem` required, transport limits from `limits`.
pub fn listener_endpoint(
    socket: UdpSocket,
    ca_pem: &str,
    identity: &PemPair,
    limits: &ListenerLimits,
) -> Result<quinn::Endpoint, ListenerError> {
    let mut server = pki::server_config_with_client_auth(ca_pem, identity)?;
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_uni_streams(VarInt::from_u32(limits.max_concurrent_uni_streams))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(IdleTimeout::try_from(limits.idle_timeout).map_err(
            |_| ListenerError::IdleTimeout {
                timeout: limits.idle_timeout,
            },
        )?));
    server.transport_config(Arc::new(transport));
    // Relays have fixed addresses; nothing to gain from following a migrating peer.
    server.migration(false);
    let runtime = quinn::default_runtime().ok_or(ListenerError::Endpoint {
        kind: std::io::ErrorKind::Unsupported,
    })?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(|error| ListenerError::Endpoint { kind: error.kind() })
}

/// Serves relay connections on `endpoint` until `shutdown` turns true (or its sender goes).
/// `is_configured` says whether a certified region is one the node serves (others are closed
/// before any report is read); `on_report` is called with the certified region after each
/// report the ledger accepted, without the ledger locked.
pub async fn run_listener<F>(
    endpoint: quinn::Endpoint,
    ledger: Arc<Mutex<ReportLedger>>,
    counters: Arc<ListenerCounters>,
    limits: ListenerLimits,
    is_configured: impl Fn(&str) -> bool + Send + Sync + 'static,
    on_report: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(&str) + Send + Sync + 'static,
{
    let is_configured: Arc<dyn Fn(&str) -> bool + Send + Sync> = Arc::new(is_configured);
    let on_report = Arc::new(on_report);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let Some(incoming) = incoming else { break };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            bump(&counters.refused_over_limit);
            incoming.refuse();
            continue;
        };
        let connection = Connection {
            ledger: Arc::clone(&ledger),
            counters: Arc::clone(&counters),
            limits,
            is_configured: Arc::clone(&is_configured),
            on_report: Arc::clone(&on_report),
        };
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            connection.serve(incoming, shutdown).await;
        });
    }
    endpoint.close(CLOSE_SHUTDOWN, b"shutting down");
    connections.shutdown().await;
}

struct Connection<F> {
    ledger: Arc<Mutex<ReportLedger>>,
    counters: Arc<ListenerCounters>,
    limits: ListenerLimits,
    is_configured: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    on_report: Arc<F>,
}

impl<F> Connection<F>
where
    F: Fn(&str) + Send + Sync + 'static,
{
    async fn serve(self, incoming: quinn::Incoming, mut shutdown: watch::Receiver<bool>) {
        let remote = incoming.remote_address();
        let connection = match incoming.accept() {
            Ok(connecting) => connecting.await,
            Err(error) => Err(error),
        };
        let connection = match connection {
            Ok(connection) => connection,
            Err(error) => {
                bump(&self.counters.handshake_failed);
                // Unknown CA, expired or not yet valid, no client certificate, wrong usage:
                // rustls' reason is in `error`. Once per connection attempt.
                warn!(%remote, %error, "health connection refused: TLS handshake failed");
                return;
            }
        };
        let region = match pki::peer_region(&connection) {
            Ok(region) => region,
            Err(error) => {
                bump(&self.counters.no_region);
                warn!(%remote, %error, "health connection refused: no region identity");
                connection.close(CLOSE_NO_REGION, b"certificate names no region");
                return;
            }
        };
        if !(self.is_configured)(&region) {
            bump(&self.counters.unknown_region);
            warn!(%remote, %region, "health connection refused: region not configured on this node");
            connection.close(CLOSE_UNKNOWN_REGION, b"region not configured on this node");
            return;
        }
        bump(&self.counters.connections);
        let session = lock(&self.ledger).open_session(&region);
        info!(%remote, %region, session = session.id(), "relay connected to the health channel");
        let this = Arc::new(self);
        // Bounded by the stream credit the transport grants the peer.
        let mut streams = JoinSet::new();
        loop {
            while streams.try_join_next().is_some() {}
            let stream = tokio::select! {
                stream = connection.accept_uni() => stream,
                _ = shutdown.wait_for(|stop| *stop) => {
                    connection.close(CLOSE_SHUTDOWN, b"shutting down");
                    break;
                }
            };
            match stream {
                Ok(stream) => {
                    let this = Arc::clone(&this);
                    let session = session.clone();
                    streams.spawn(async move { this.read_report(stream, &session).await });
                }
                Err(error) => {
                    info!(%remote, %region, %error, "relay left the health channel");
                    break;
                }
            }
        }
    }

    async fn read_report(&self, mut stream: quinn::RecvStream, session: &Session) {
        let read = tokio::time::timeout(
            self.limits.stream_timeout,
            stream.read_to_end(HEADER_LEN + MAX_FRAME_BYTES),
        )
        .await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(quinn::ReadToEndError::TooLong)) => {
                bump(&self.counters.streams_too_long);
                let _ = stream.stop(VarInt::from_u32(0));
                return;
            }
            // The connection went or the relay reset the stream: nothing was claimed.
            Ok(Err(quinn::ReadToEndError::Read(_))) => return,
            Err(_) => {
                bump(&self.counters.streams_timed_out);
                let _ = stream.stop(VarInt::from_u32(0));
                return;
            }
        };
        let frame = match frame::decode(&bytes) {
            Ok((Frame::Report(report), used)) if used == bytes.len() => report,
            Ok(_) => {
                bump(&self.counters.malformed_frames);
                debug!(
                    region = session.region(),
                    "report stream carries more than one frame"
                );
                return;
            }
            Err(error) => {
                bump(&self.counters.malformed_frames);
                debug!(region = session.region(), %error, "malformed report frame");
                return;
            }
        };
        let accepted = lock(&self.ledger).accept(session, frame, Instant::now());
        match accepted {
            Ok(()) => (self.on_report)(session.region()),
            Err(rejected) => {
                bump(&self.counters.reports_rejected);
                warn!(%rejected, "report rejected");
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the ledger leaves it consistent (every update is one assignment).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
