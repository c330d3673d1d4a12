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
//! When the sender stops, it sends one last report (a draining relay's says so) and waits a
//! moment for each connected node to acknowledge it, so a planned stop is seen as `draining`
//! rather than as silence.
//!
//! The report content is the caller's (`build_report`), which may also withhold reports (the
//! relay's `POST /admin/reports {"paused": true}`); this module only carries them.
//! [`HealthSenderConfig::from_relay`] reads the relay config's `[relay.health_channel]` files
//! and checks the certificate names the relay's own region.

use std::{
    hash::{BuildHasher, RandomState},
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use quinn::{IdleTimeout, TransportConfig};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio::{sync::watch, task::JoinSet};
use tracing::{debug, info, warn};

use super::{
    frame,
    pki::{self, PemPair, PkiError},
};
use crate::relay::{config::model::RelayConfig, report::RegionReport};

/// How long a stopping sender waits for the nodes to acknowledge its last report.
const LAST_REPORT_GRACE: Duration = Duration::from_secs(1);

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

    /// The sender of `config`'s `[relay.health_channel]` (`None` without one): reads the CA,
    /// certificate and key, checks that the certificate names `relay.region`, and that the
    /// three make a working TLS client. Blocking file IO: `meridian check` and start-up only.
    pub fn from_relay(
        config: &RelayConfig,
    ) -> Result<Option<HealthSenderConfig>, ChannelSetupError> {
        let Some(channel) = &config.health_channel else {
            return Ok(None);
        };
        let ca_pem = read("ca", &channel.ca)?;
        let identity = PemPair {
            cert_pem: read("cert", &channel.cert)?,
            key_pem: read("key", &channel.key)?,
        };
        let leaf =
            CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).map_err(|error| {
                ChannelSetupError::Identity {
                    path: channel.cert.clone(),
                    error: PkiError::MalformedPem {
                        what: "certificate",
                        reason: error.to_string(),
                    },
                }
            })?;
        let certified = pki::region_of(&leaf).map_err(|error| ChannelSetupError::Identity {
            path: channel.cert.clone(),
            error,
        })?;
        if certified != *config.region {
            return Err(ChannelSetupError::RegionMismatch {
                path: channel.cert.clone(),
                certified,
                configured: config.region.to_string(),
            });
        }
        pki::client_config_with_identity(&ca_pem, &identity)
            .map_err(|error| ChannelSetupError::Tls { error })?;
        let nodes = channel
            .nodes
            .iter()
            .map(|node| HealthNode {
                address: node.address,
                server_name: node.server_name.clone(),
            })
            .collect();
        let mut sender = HealthSenderConfig::new(nodes, ca_pem, identity);
        // One socket reaches every node: a dual-stack one as soon as any node is IPv6.
        if channel.nodes.iter().any(|node| node.address.is_ipv6()) {
            sender.bind = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
        }
        sender.interval = channel.interval;
        sender.validity = channel.validity;
        // Reports would stop at the first idle timeout shorter than the gap between them.
        sender.idle_timeout = sender.idle_timeout.max(channel.interval * 3);
        Ok(Some(sender))
    }
}

fn read(key: &'static str, path: &Path) -> Result<String, ChannelSetupError> {
    std::fs::read_to_string(path).map_err(|error| ChannelSetupError::Read {
        key,
        path: path.to_path_buf(),
        kind: error.kind(),
    })
}

/// Why `[relay.health_channel]` cannot be used; each names the key whose file is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ChannelSetupError {
    #[error("relay.health_channel.{key}: cannot read {}: {kind}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        kind: io::ErrorKind,
    },
    #[error("relay.health_channel.cert: {}: {error}", path.display())]
    Identity { path: PathBuf, error: PkiError },
    #[error(
        "relay.health_channel.cert: {} is the certificate of region `{certified}`, but \
         relay.region is `{configured}`: DNS nodes would file this relay's reports under \
         `{certified}`; issue a certificate for `{configured}` (`meridian certs deployment \
         --region {configured}`)",
        path.display()
    )]
    RegionMismatch {
        path: PathBuf,
        certified: String,
        configured: String,
    },
    #[error("relay.health_channel.ca / cert / key: {error}")]
    Tls { error: PkiError },
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
/// turns true (or its sender goes), then pushes one last report. Returns early only if the
/// configuration cannot work (certificates, socket); unreachable nodes are retried for ever.
///
/// `build_report` may return `None` (a [`RegionReport`] converts into `Some`): nothing is sent
/// that tick, and a node that reconnects meanwhile is not sent the older report either.
pub async fn run_sender<F, R>(
    config: HealthSenderConfig,
    build_report: F,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SenderError>
where
    F: Fn(u64) -> R + Send,
    R: Into<Option<RegionReport>>,
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

    // The node tasks stop when `latest` is dropped, after delivering what it last held: the
    // report loop's own end, not `shutdown`, ends them, so the last report is not lost.
    let (latest, frames) = watch::channel::<Option<Bytes>>(None);
    let mut nodes = JoinSet::new();
    for node in &config.nodes {
        nodes.spawn(serve_node(
            endpoint.clone(),
            node.clone(),
            config.backoff,
            frames.clone(),
        ));
    }

    let validity_ms = u32::try_from(config.validity.as_millis()).unwrap_or(u32::MAX);
    let publish = |sequence: u64| {
        let frame = build_report(sequence).into().and_then(|report| {
            frame::encode_report(&report, validity_ms)
                .inspect_err(|error| warn!(%error, sequence, "region report not sent"))
                .ok()
        });
        latest.send_replace(frame);
    };
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        sequence += 1;
        publish(sequence);
    }
    sequence += 1;
    publish(sequence);
    drop(latest);
    let delivered = async { while nodes.join_next().await.is_some() {} };
    if tokio::time::timeout(LAST_REPORT_GRACE * 2, delivered)
        .await
        .is_err()
    {
        nodes.abort_all();
    }
    endpoint.close(0u32.into(), b"relay stopping");
    let _ = tokio::time::timeout(LAST_REPORT_GRACE, endpoint.wait_idle()).await;
    Ok(())
}

/// Keeps one node connected and fed until the report loop ends (`frames` closes).
async fn serve_node(
    endpoint: quinn::Endpoint,
    node: HealthNode,
    backoff: Backoff,
    mut frames: watch::Receiver<Option<Bytes>>,
) {
    let random = RandomState::new();
    let mut failures = 0u32;
    loop {
        let connected = tokio::select! {
            connected = connect(&endpoint, &node) => connected,
            () = closed(frames.clone()) => return,
        };
        match connected {
            Ok(connection) => {
                info!(node = %node.address, "connected to DNS node's health listener");
                let outcome = feed(&connection, &mut frames).await;
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
            () = closed(frames.clone()) => return,
        }
    }
}

/// Resolves once the report loop has ended (on a clone, so the caller's "seen" mark stays).
async fn closed(mut frames: watch::Receiver<Option<Bytes>>) {
    while frames.changed().await.is_ok() {}
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

/// Sends each new report on `connection` until it fails or the report loop ends; then waits
/// (briefly) for the node to acknowledge the last one.
async fn feed(
    connection: &quinn::Connection,
    frames: &mut watch::Receiver<Option<Bytes>>,
) -> FeedOutcome {
    // The newest report goes out at once: after a reconnect the node need not wait a tick.
    frames.mark_changed();
    let mut delivered = false;
    let mut last_sent: Option<quinn::SendStream> = None;
    loop {
        // A new frame first: the report loop's last one is published just before it ends.
        let end = tokio::select! {
            biased;
            changed = frames.changed() => match changed {
                Ok(()) => None,
                Err(_) => Some(FeedEnd::Stopped),
            },
            error = connection.closed() => Some(FeedEnd::Lost(error)),
        };
        if let Some(end) = end {
            if let (FeedEnd::Stopped, Some(stream)) = (&end, &last_sent) {
                let _ = tokio::time::timeout(LAST_REPORT_GRACE, stream.stopped()).await;
            }
            return FeedOutcome { delivered, end };
        }
        let Some(frame) = frames.borrow_and_update().clone() else {
            continue;
        };
        // Stream credit may run out if the node is slow; then this report is skipped in favour
        // of the next, rather than the connection waiting behind it. (The loop ending is not a
        // newer report: that branch is disabled by its pattern.)
        let sent = tokio::select! {
            sent = send(connection, &frame) => sent,
            Ok(()) = frames.changed() => Err(SendError::Superseded),
        };
        match sent {
            Ok(stream) => {
                delivered = true;
                last_sent = Some(stream);
            }
            Err(SendError::Superseded) => {
                debug!("report superseded before it could be sent");
                // The newer frame is marked seen by `changed`; send it now.
                frames.mark_changed();
            }
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

async fn send(
    connection: &quinn::Connection,
    frame: &Bytes,
) -> Result<quinn::SendStream, SendError> {
    let mut stream = connection.open_uni().await?;
    stream.write_all(frame).await?;
    stream.finish()?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay config for eu-west whose channel files are `ca`, `cert`, `key` in `dir`.
    fn relay_config(dir: &Path, cert: &str, key: &str) -> RelayConfig {
        let text = format!(
            r#"
[relay]
region = "eu-west"
listen = "127.0.0.1:0"
[relay.tls]
cert = "tls.pem"
key = "tls-key.pem"
[relay.health_channel]
ca = "ca.pem"
cert = "{cert}"
key = "{key}"
interval_ms = 5000
validity_ms = 15000
[[relay.health_channel.node]]
id = "pop-a"
address = "[2001:db8::53]:8853"
server_name = "pop-a"
[[backend]]
id = "a"
url = "http://127.0.0.1:8000"
kind = "vllm"
models = ["m"]
slots = 1
"#
        );
        crate::relay::config::parse_relay_config(&text, &dir.join("relay.toml")).unwrap()
    }

    #[test]
    fn from_relay_reads_and_checks_the_channel_files() {
        let dir = tempfile::tempdir().unwrap();
        let members = |specs: &[&str]| -> Vec<pki::Member> {
            specs.iter().map(|s| s.parse().unwrap()).collect()
        };
        pki::write_deployment(
            dir.path(),
            &members(&["eu-west", "us-east"]),
            &members(&["pop-a"]),
            std::time::SystemTime::now(),
        )
        .unwrap();

        let mut no_channel = relay_config(dir.path(), "relay-eu-west.pem", "relay-eu-west-key.pem");
        no_channel.health_channel = None;
        assert!(
            HealthSenderConfig::from_relay(&no_channel)
                .unwrap()
                .is_none()
        );

        let own = relay_config(dir.path(), "relay-eu-west.pem", "relay-eu-west-key.pem");
        let sender = HealthSenderConfig::from_relay(&own).unwrap().unwrap();
        assert_eq!(sender.interval, Duration::from_secs(5));
        assert_eq!(sender.validity, Duration::from_secs(15));
        assert_eq!(
            sender.idle_timeout,
            Duration::from_secs(15),
            "outlasts 3 intervals"
        );
        assert!(sender.bind.is_ipv6(), "an IPv6 node needs an IPv6 socket");
        assert_eq!(sender.nodes[0].server_name, "pop-a");

        let missing = relay_config(dir.path(), "nope.pem", "relay-eu-west-key.pem");
        assert!(matches!(
            HealthSenderConfig::from_relay(&missing),
            Err(ChannelSetupError::Read {
                key: "cert",
                kind: io::ErrorKind::NotFound,
                ..
            })
        ));
        // A DNS node's certificate names no region.
        let node = relay_config(dir.path(), "dns-pop-a.pem", "dns-pop-a-key.pem");
        assert!(matches!(
            HealthSenderConfig::from_relay(&node),
            Err(ChannelSetupError::Identity {
                error: PkiError::NoRegion,
                ..
            })
        ));
        let other = relay_config(dir.path(), "relay-us-east.pem", "relay-us-east-key.pem");
        assert!(matches!(
            HealthSenderConfig::from_relay(&other),
            Err(ChannelSetupError::RegionMismatch { ref certified, .. }) if certified == "us-east"
        ));
        // eu-west's certificate with us-east's key.
        let mismatched_key = relay_config(dir.path(), "relay-eu-west.pem", "relay-us-east-key.pem");
        assert!(matches!(
            HealthSenderConfig::from_relay(&mismatched_key),
            Err(ChannelSetupError::Tls { .. })
        ));
    }

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
