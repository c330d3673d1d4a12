//! The relay's end of the health channel (design §4): one long-lived QUIC connection to every
//! configured DNS node, a region report pushed on each of them every interval, one frame per
//! unidirectional stream.
//!
//! The report is built and framed once per tick and handed to every node's connection task
//! through a `watch` channel, so a slow or unreachable node only ever misses reports: it never
//! delays the others and nothing queues up behind it (the newest report supersedes any unsent
//! one). A node whose connection fails is reconnected after an exponential, jittered, bounded
//! [`Backoff`]; the backoff resets once a connection has carried a report.
//!
//! The sender numbers its reports from 1, once per process, strictly increasing across all
//! nodes and reconnections (the ledger orders by it within a connection).
//!
//! Not wired into the relay yet: the relay config has no health-channel section, so the caller
//! builds a [`HealthSenderConfig`] itself. The report content is the caller's (`build_report`);
//! this module only carries it.

use std::{
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use quinn::{IdleTimeout, TransportConfig};
use tokio::{sync::watch, task::JoinSet};
use tracing::{debug, info, warn};

use super::{
    frame,
    pki::{self, PemPair, PkiError},
};
use crate::relay::report::RegionReport;

/// A DNS node's health listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthNode {
    pub address: SocketAddr,
    /// The name its certificate is checked against (a DNS name or an IP address).
    pub server_name: String,
}

/// Reconnection delays: `initial`, doubling per failed attempt up to `max`, each drawn
/// uniformly from its upper half so that relays restarted together do not reconnect in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before attempt `failures + 1`, after `failures` (≥ 1) failures in a row;
    /// `jitter` in `[0, 1]` picks within the upper half of the step. Pure.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let step = self
            .initial
            .saturating_mul(1u32 << doublings)
            .min(self.max)
            .max(self.initial.min(self.max));
        let half = step / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[derive(Clone, Debug)]
pub struct HealthSenderConfig {
    pub nodes: Vec<HealthNode>,
    /// The deployment CA, the only root trusted for the nodes' certificates.
    pub ca_pem: String,
    /// This relay's region certificate and key.
    pub identity: PemPair,
    /// Time between reports.
    pub interval: Duration,
    /// How long after receipt a report may be trusted (the node caps it); a few intervals, so
    /// one lost report does not make the region unknown.
    pub validity: Duration,
    pub backoff: Backoff,
    /// A connection silent this long is given up and reconnected.
    pub idle_timeout: Duration,
    /// Local UDP address (`0.0.0.0:0` or `[::]:0` usually).
    pub bind: SocketAddr,
}

impl HealthSenderConfig {
    /// Reports every second, valid for three, to `nodes`.
    pub fn new(nodes: Vec<HealthNode>, ca_pem: String, identity: PemPair) -> HealthSenderConfig {
        HealthSenderConfig {
            nodes,
            ca_pem,
            identity,
            interval: Duration::from_secs(1),
            validity: Duration::from_secs(3),
            backoff: Backoff::default(),
            idle_timeout: Duration::from_secs(10),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("idle timeout {timeout:?} is out of QUIC's range")]
    IdleTimeout { timeout: Duration },
    #[error("report interval must be positive")]
    ZeroInterval,
    #[error("cannot bind the health channel's UDP socket {address}: {kind}")]
    Bind {
        address: SocketAddr,
        kind: std::io::ErrorKind,
    },
}

/// Pushes `build_report(sequence)` to every node every `config.interval` until `shutdown`
/// turns true (or its sender goes). Returns early only if the configuration cannot work
/// (certificates, socket); unreachable nodes are retried for ever.
pub async fn run_sender<F>(
    config: HealthSenderConfig,
    build_report: F,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SenderError>
where
    F: Fn(u64) -> RegionReport + Send,
{
    if config.interval.is_zero() {
        return Err(SenderError::ZeroInterval);
    }
    let mut client = pki::client_config_with_identity(&config.ca_pem, &config.identity)?;
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(config.interval.min(config.idle_timeout / 2)))
        .max_idle_timeout(Some(IdleTimeout::try_from(config.idle_timeout).map_err(
            |_| SenderError::IdleTimeout {
                timeout: config.idle_timeout,
            },
        )?));
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(config.bind).map_err(|error| SenderError::Bind {
        address: config.bind,
        kind: error.kind(),
    })?;
    endpoint.set_default_client_config(client);

    let (latest, frames) = watch::channel::<Option<Bytes>>(None);
    let mut nodes = JoinSet::new();
    for node in &config.nodes {
        nodes.spawn(serve_node(
            endpoint.clone(),
            node.clone(),
            config.backoff,
            frames.clone(),
            shutdown.clone(),
        ));
    }

    let validity_ms = u32::try_from(config.validity.as_millis()).unwrap_or(u32::MAX);
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        sequence += 1;
        let report = build_report(sequence);
        match frame::encode_report(&report, validity_ms) {
            Ok(bytes) => {
                latest.send_replace(Some(bytes));
            }
            Err(error) => warn!(%error, sequence, "region report not sent"),
        }
    }
    drop(latest);
    while nodes.join_next().await.is_some() {}
    endpoint.close(0u32.into(), b"relay stopping");
    endpoint.wait_idle().await;
    Ok(())
}

/// Keeps one node connected and fed until shutdown.
async fn serve_node(
    endpoint: quinn::Endpoint,
    node: HealthNode,
    backoff: Backoff,
    mut frames: watch::Receiver<Option<Bytes>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let random = RandomState::new();
    let mut failures = 0u32;
    loop {
        let connected = tokio::select! {
            connected = connect(&endpoint, &node) => connected,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match connected {
            Ok(connection) => {
                info!(node = %node.address, "connected to DNS node's health listener");
                let outcome = feed(&connection, &mut frames, &mut shutdown).await;
                if outcome.delivered {
                    failures = 0;
                }
                match outcome.end {
                    FeedEnd::Stopped => {
                        connection.close(0u32.into(), b"relay stopping");
                        return;
                    }
                    FeedEnd::Lost(error) => {
                        warn!(node = %node.address, %error, "health connection lost")
                    }
                }
            }
            Err(error) => warn!(node = %node.address, %error, "cannot reach DNS node"),
        }
        failures = failures.saturating_add(1);
        let jitter = (random.hash_one(failures) >> 11) as f64 / (1u64 << 53) as f64;
        let delay = backoff.delay(failures, jitter);
        debug!(node = %node.address, ?delay, failures, "reconnecting after backoff");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
}

async fn connect(
    endpoint: &quinn::Endpoint,
    node: &HealthNode,
) -> Result<quinn::Connection, ConnectError> {
    Ok(endpoint.connect(node.address, &node.server_name)?.await?)
}

enum FeedEnd {
    Stopped,
    Lost(quinn::ConnectionError),
}

struct FeedOutcome {
    delivered: bool,
    end: FeedEnd,
}

/// Sends each new report on `connection` until it fails or shutdown.
async fn feed(
    connection: &quinn::Connection,
    frames: &mut watch::Receiver<Option<Bytes>>,
    shutdown: &mut watch::Receiver<bool>,
) -> FeedOutcome {
    // The newest report goes out at once: after a reconnect the node need not wait a tick.
    frames.mark_changed();
    let mut delivered = false;
    loop {
        let end = tokio::select! {
            changed = frames.changed() => match changed {
                Ok(()) => None,
                // The report loop ended: the sender is stopping.
                Err(_) => Some(FeedEnd::Stopped),
            },
            error = connection.closed() => Some(FeedEnd::Lost(error)),
            _ = shutdown.wait_for(|stop| *stop) => Some(FeedEnd::Stopped),
        };
        if let Some(end) = end {
            return FeedOutcome { delivered, end };
        }
        let Some(frame) = frames.borrow_and_update().clone() else {
            continue;
        };
        // Stream credit may run out if the node is slow; then this report is skipped in favour
        // of the next, rather than the connection waiting behind it.
        let sent = tokio::select! {
            sent = send(connection, &frame) => sent,
            _ = frames.changed() => Err(SendError::Superseded),
        };
        match sent {
            Ok(()) => delivered = true,
            Err(error) => debug!(%error, "report not delivered"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Closed(#[from] quinn::ClosedStream),
    #[error("superseded by a newer report before it could be sent")]
    Superseded,
}

async fn send(connection: &quinn::Connection, frame: &Bytes) -> Result<(), SendError> {
    let mut stream = connection.open_uni().await?;
    stream.write_all(frame).await?;
    stream.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds_and_jitters_in_the_upper_half() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let ms = Duration::from_millis;
        // (failures, jitter, delay)
        let cases = [
            (1, 0.0, ms(50)),
            (1, 1.0, ms(100)),
            (2, 0.0, ms(100)),
            (2, 0.5, ms(150)),
            (3, 1.0, ms(400)),
            (4, 1.0, ms(800)),
            (5, 1.0, ms(1000)),
            (5, 0.0, ms(500)),
            (u32::MAX, 1.0, ms(1000)),
            (0, 1.0, ms(100)),
            (2, -3.0, ms(100)),
            (2, 7.0, ms(200)),
        ];
        for (failures, jitter, want) in cases {
            assert_eq!(
                backoff.delay(failures, jitter),
                want,
                "{failures} failures, jitter {jitter}"
            );
        }
    }

    #[test]
    fn a_max_below_initial_caps_everything() {
        let backoff = Backoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(1),
        };
        assert_eq!(backoff.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff.delay(10, 1.0), Duration::from_secs(1));
    }
}
