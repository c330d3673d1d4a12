//! The DNS node's own probe of a region's relay (design §4): a region without a fresh report is
//! *unknown*, and is taken out only when this probe cannot reach its relay either.
//!
//! One probe is two checks against the relay's public address, run concurrently and each
//! bounded by the probe timeout: a QUIC handshake with ALPN `h3` (the HTTP/3 front) and an
//! HTTPS `GET /health` over TCP (the h1/h2 front; a draining relay answers 503, which fails).
//! Both verify the relay's certificate for the configured server name against the probe's CA.
//! A probe passes only when both checks pass: a relay that lost either front is not what the
//! DNS answer promises.
//!
//! [`ProbeTracker`] is the pure part: consecutive failures per region, and the verdict they
//! give ([`ProbeVerdict::Unreachable`] only after `down_after` failures in a row; one pass
//! makes a region reachable again). [`probe_relay`] does the IO and decides nothing.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;

use super::view::{ProbeVerdict, ProbeVerdicts};

/// The path every relay serves on its public port (`relay::proxy`): 200 while it takes new
/// requests, 503 while draining.
pub const HEALTH_PATH: &str = "/health";

/// Consecutive probe failures per region, and the verdicts they give.
#[derive(Debug)]
pub struct ProbeTracker {
    down_after: u32,
    failures: HashMap<Arc<str>, u32>,
}

impl ProbeTracker {
    /// `down_after` consecutive failures make a region unreachable (0 is taken as 1).
    pub fn new(down_after: u32) -> ProbeTracker {
        ProbeTracker {
            down_after: down_after.max(1),
            failures: HashMap::new(),
        }
    }

    /// Counts one probe of `region`; returns its verdict now.
    pub fn record(&mut self, region: &Arc<str>, passed: bool) -> ProbeVerdict {
        let failures = self.failures.entry(Arc::clone(region)).or_insert(0);
        *failures = if passed {
            0
        } else {
            failures.saturating_add(1)
        };
        let failures = *failures;
        self.verdict(failures)
    }

    /// Drops what is known of `region` (it reports again, or is no longer probed): if it goes
    /// silent later, it needs `down_after` fresh failures before it counts as unreachable.
    pub fn forget(&mut self, region: &str) {
        self.failures.remove(region);
    }

    /// Keeps only the regions `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.failures.retain(|region, _| keep(region));
    }

    /// The verdict of every region probed since it was last forgotten.
    pub fn verdicts(&self) -> ProbeVerdicts {
        self.failures
            .iter()
            .map(|(region, &failures)| (Arc::clone(region), self.verdict(failures)))
            .collect()
    }

    fn verdict(&self, failures: u32) -> ProbeVerdict {
        if failures >= self.down_after {
            ProbeVerdict::Unreachable
        } else {
            ProbeVerdict::Reachable
        }
    }
}

/// Where and how to reach one region's relay.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    pub address: SocketAddr,
    /// The name the relay's certificate must be valid for (and the HTTP `Host`).
    pub server_name: ServerName<'static>,
    /// The CA(s) the relay's certificate must chain to.
    pub roots: Arc<RootCertStore>,
}

/// Why one check of a probe failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailed {
    #[error("no answer within {timeout:?}")]
    Timeout { timeout: Duration },
    #[error("TLS configuration: {reason}")]
    Config { reason: String },
    #[error("cannot connect: {reason}")]
    Connect { reason: String },
    #[error("handshake failed: {reason}")]
    Handshake { reason: String },
    #[error("request failed: {reason}")]
    Request { reason: String },
    #[error("{HEALTH_PATH} answered {status}")]
    Status { status: StatusCode },
}

/// What one probe found: each check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub quic: Result<(), CheckFailed>,
    pub https: Result<(), CheckFailed>,
}

impl ProbeOutcome {
    pub fn passed(&self) -> bool {
        self.quic.is_ok() && self.https.is_ok()
    }
}

/// Why a probe's CA file cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeCaError {
    #[error("no certificate in the CA file")]
    Empty,
    #[error("malformed PEM: {reason}")]
    Malformed { reason: String },
    #[error("unusable CA certificate: {reason}")]
    Unusable { reason: String },
}

/// The trust anchors in a PEM bundle.
pub fn roots_from_pem(pem: &str) -> Result<RootCertStore, ProbeCaError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ProbeCaError::Malformed {
            reason: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ProbeCaError::Empty);
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|error| ProbeCaError::Unusable {
            reason: error.to_string(),
        })?;
    }
    Ok(roots)
}

/// Probes `target` once: both checks at once, each within `timeout`.
pub async fn probe_relay(target: &ProbeTarget, timeout: Duration) -> ProbeOutcome {
    let (quic, https) = tokio::join!(
        bounded(timeout, quic_handshake(target)),
        bounded(timeout, https_health(target))
    );
    ProbeOutcome { quic, https }
}

async fn bounded(
    timeout: Duration,
    check: impl Future<Output = Result<(), CheckFailed>>,
) -> Result<(), CheckFailed> {
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or(Err(CheckFailed::Timeout { timeout }))
}

fn tls_config(
    target: &ProbeTarget,
    alpn: &[u8],
    tls13_only: bool,
) -> Result<rustls::ClientConfig, CheckFailed> {
    let config_error = |error: rustls::Error| CheckFailed::Config {
        reason: error.to_string(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ));
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(config_error)?;
    let mut config = builder
        .with_root_certificates(Arc::clone(&target.roots))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

async fn quic_handshake(target: &ProbeTarget) -> Result<(), CheckFailed> {
    let tls = tls_config(target, b"h3", true)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|error| {
        CheckFailed::Config {
            reason: error.to_string(),
        }
    })?;
    let bind: SocketAddr = if target.address.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    // One endpoint per probe: a socket every few seconds per silent region is cheap, and no
    // state survives from a relay's previous life.
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|error| CheckFailed::Connect {
        reason: error.to_string(),
    })?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let server_name = target.server_name.to_str();
    let connecting = endpoint
        .connect(target.address, &server_name)
        .map_err(|error| CheckFailed::Connect {
            reason: error.to_string(),
        })?;
    let result = match connecting.await {
        Ok(connection) => {
            connection.close(0u32.into(), b"probe done");
            Ok(())
        }
        Err(error) => Err(CheckFailed::Handshake {
            reason: error.to_string(),
        }),
    };
    endpoint.close(0u32.into(), b"probe done");
    result
}

async fn https_health(target: &ProbeTarget) -> Result<(), CheckFailed> {
    let tls = tls_config(target, b"http/1.1", false)?;
    let tcp = TcpStream::connect(target.address)
        .await
        .map_err(|error| CheckFailed::Connect {
            reason: error.to_string(),
        })?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(|error| CheckFailed::Handshake {
            reason: error.to_string(),
        })?;
    let request_failed = |error: hyper::Error| CheckFailed::Request {
        reason: error.to_string(),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(request_failed)?;
    let driver = tokio::spawn(connection);
    let request = Request::get(HEALTH_PATH)
        .header(header::HOST, target.server_name.to_str().as_ref())
        .body(Empty::<Bytes>::new())
        .map_err(|error| CheckFailed::Request {
            reason: error.to_string(),
        })?;
    let response = sender.send_request(request).await;
    driver.abort();
    let status = response.map_err(request_failed)?.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(CheckFailed::Status { status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_only_after_down_after_failures_in_a_row() {
        let region: Arc<str> = Arc::from("eu-west");
        // (passed, verdict after it) with down_after = 2.
        let steps = [
            (false, ProbeVerdict::Reachable),
            (true, ProbeVerdict::Reachable),
            (false, ProbeVerdict::Reachable),
            (false, ProbeVerdict::Unreachable),
            (false, ProbeVerdict::Unreachable),
            (true, ProbeVerdict::Reachable),
            (false, ProbeVerdict::Reachable),
        ];
        let mut tracker = ProbeTracker::new(2);
        for (i, (passed, verdict)) in steps.into_iter().enumerate() {
            assert_eq!(tracker.record(&region, passed), verdict, "step {i}");
            assert_eq!(
                tracker.verdicts().get("eu-west"),
                Some(&verdict),
                "step {i}"
            );
        }
    }

    #[test]
    fn forgetting_a_region_restarts_its_count() {
        let region: Arc<str> = Arc::from("eu-west");
        let mut tracker = ProbeTracker::new(2);
        tracker.record(&region, false);
        tracker.forget("eu-west");
        assert!(tracker.verdicts().is_empty());
        assert_eq!(tracker.record(&region, false), ProbeVerdict::Reachable);
        tracker.retain(|r| r != "eu-west");
        assert!(tracker.verdicts().is_empty());
    }

    #[test]
    fn zero_down_after_is_one() {
        let region: Arc<str> = Arc::from("r");
        let mut tracker = ProbeTracker::new(0);
        assert_eq!(tracker.record(&region, true), ProbeVerdict::Reachable);
        assert_eq!(tracker.record(&region, false), ProbeVerdict::Unreachable);
    }

    #[test]
    fn a_pem_without_certificates_is_refused() {
        assert_eq!(roots_from_pem("").err(), Some(ProbeCaError::Empty));
    }

    #[tokio::test]
    async fn nothing_listening_fails_both_checks_within_the_timeout() {
        let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = free.local_addr().unwrap();
        drop(free);
        let pair = crate::health::pki::create_ca(
            "probe test CA",
            crate::health::pki::Validity::ca(std::time::SystemTime::now()),
        )
        .unwrap();
        let target = ProbeTarget {
            address,
            server_name: ServerName::try_from("127.0.0.1").unwrap().to_owned(),
            roots: Arc::new(roots_from_pem(&pair.cert_pem).unwrap()),
        };
        let timeout = Duration::from_millis(300);
        let outcome = probe_relay(&target, timeout).await;
        assert!(!outcome.passed());
        assert!(outcome.https.is_err(), "{outcome:?}");
        assert!(outcome.quic.is_err(), "{outcome:?}");
    }
}
