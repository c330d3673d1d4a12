//! Starting, draining and stopping a relay: binds the listeners, wires pool, proxy, fronts,
//! probes, admin and certificate reload together, and tears them down in the right order.
//!
//! Drain order: the proxy refuses new requests (503 + `Connection: close`), the fronts stop
//! accepting and send GOAWAY (h2, h3), in-flight streams finish, the fronts return; only then
//! do the probes, the admin listener, the certificate watcher, the SIGHUP listener and the
//! health-channel sender stop. The sender reports `draining` for as long as the drain lasts and
//! sends one last report as it stops, so the DNS tier sees a planned stop as a drain, not as
//! silence.
//!
//! Configuration reloads (SIGHUP, `POST /admin/reload`, [`RelayHandle::reload`]) all run
//! [`Reconfigure::reload`]; the SIGHUP listener is installed before `start` returns, so a
//! supervisor may send SIGHUP as soon as the relay reports ready.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use http::HeaderValue;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tracing::{error, info, warn};

use super::{
    admin::{AdminState, serve_admin},
    config::model::RelayConfig,
    front::{h3::UdpRelease, h3_endpoint, serve_h3, serve_https, serve_plain},
    metrics::RelayMetrics,
    pool::Pool,
    probe,
    proxy::{Proxy, ProxyService},
    reconfigure::{Reconfigure, ReloadError, Reloaded},
    report,
    service::RelayService,
    stats::RequestStats,
    tls::{self, CertStore, TlsError},
};
use crate::health::sender::{ChannelSetupError, HealthSenderConfig, run_sender};

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `[relay.health_channel]` names unusable files, or a certificate of another region.
    #[error(transparent)]
    HealthChannel(#[from] ChannelSetupError),
    /// `relay.admin_token_file` is unreadable, empty or readable by others.
    #[error("relay.admin_token_file: {0}")]
    AdminToken(#[from] crate::admin::AdminError),
    #[error("cannot bind {transport} {address}: {source}")]
    Bind {
        transport: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Margin on top of the longest silence a request may have, before QUIC calls a connection
/// idle: a slow first token must never cost the client its connection.
const QUIC_IDLE_MARGIN: Duration = Duration::from_secs(10);

/// A running relay.
pub struct RelayHandle {
    pub https: SocketAddr,
    pub h3: Option<SocketAddr>,
    pub plain: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub certs: Arc<CertStore>,
    /// Fires when the admin API asks for a drain.
    pub drain_requested: watch::Receiver<bool>,
    reconfigure: Arc<Reconfigure>,
    drain: watch::Sender<bool>,
    fronts_drain: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    fronts: JoinSet<()>,
    /// Frees the HTTP/3 UDP port once the fronts are gone.
    udp_release: Option<UdpRelease>,
    background: JoinSet<()>,
}

impl RelayHandle {
    pub async fn start(config: RelayConfig) -> Result<RelayHandle, StartError> {
        tls::install_crypto_provider();
        let config = Arc::new(config);
        let certs = Arc::new(CertStore::load(config.tls.clone())?);
        let health_sender = HealthSenderConfig::from_relay(&config)?;
        let admin_token = super::admin::load_token(&config)?;
        let keys =
            std::iter::once(&config.tls.key).chain(config.health_channel.iter().map(|c| &c.key));
        for exposed in keys.filter_map(|key| crate::health::pki::key_file_exposure(key)) {
            warn!(%exposed, "private key file is exposed to every local user");
        }
        let tcp_config = tls::tcp_server_config(certs.clone())?;

        let (https_listener, udp) = bind_front(config.listen, config.http3).await?;
        let https = local(&https_listener, "TCP", config.listen)?;
        let plain_listener = match config.plain_listen {
            Some(address) => Some(bind_tcp(address).await?),
            None => None,
        };
        let admin_listener = bind_tcp(config.admin_listen).await?;
        let admin = local(&admin_listener, "TCP", config.admin_listen)?;

        let pool = Arc::new(Pool::new(&config));
        let metrics = Arc::new(RelayMetrics::new());
        let stats = Arc::new(RequestStats::default());
        let proxy = Arc::new(Proxy::new(
            config.clone(),
            pool.clone(),
            metrics.clone(),
            stats.clone(),
        ));
        let service: Arc<dyn RelayService> = Arc::new(ProxyService(proxy.clone()));
        let (drain, drain_requested) = watch::channel(false);
        let (fronts_drain, fronts_drain_rx) = watch::channel(false);
        let (shutdown, shutdown_rx) = watch::channel(false);

        let mut fronts = JoinSet::new();
        let mut h3 = None;
        let mut alt_svc = None;
        let mut udp_release = None;
        if let Some(socket) = udp {
            let idle = config.timeouts.first_byte.max(config.timeouts.idle) + QUIC_IDLE_MARGIN;
            let quic_config = tls::quic_server_config(certs.clone(), &config.limits, idle)?;
            let address = socket.local_addr().map_err(|source| StartError::Bind {
                transport: "UDP",
                address: config.listen,
                source,
            })?;
            let (endpoint, release) =
                h3_endpoint(socket, quic_config).map_err(|source| StartError::Bind {
                    transport: "UDP",
                    address,
                    source,
                })?;
            udp_release = Some(release);
            alt_svc = HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", address.port())).ok();
            h3 = Some(address);
            fronts.spawn(serve_h3(
                endpoint,
                service.clone(),
                config.limits,
                fronts_drain_rx.clone(),
            ));
        }
        fronts.spawn(serve_https(
            https_listener,
            tcp_config,
            service.clone(),
            config.limits,
            alt_svc,
            fronts_drain_rx.clone(),
        ));
        let plain = match plain_listener {
            Some(listener) => {
                let address = local(&listener, "TCP", config.listen)?;
                fronts.spawn(serve_plain(
                    listener,
                    service.clone(),
                    config.limits,
                    fronts_drain_rx.clone(),
                ));
                Some(address)
            }
            None => None,
        };

        let mut background = JoinSet::new();
        background.spawn(probe::run(
            pool.clone(),
            config.clone(),
            shutdown_rx.clone(),
        ));
        let watcher = certs.clone().watch(shutdown_rx.clone());
        background.spawn(async move {
            let _ = watcher.await;
        });
        let reconfigure = Arc::new(Reconfigure::new(
            config.clone(),
            pool.clone(),
            metrics.clone(),
        ));
        // Created here, not in the task: from now on SIGHUP reloads instead of killing.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangup) => {
                background.spawn(
                    reconfigure
                        .clone()
                        .reload_on_hangup(hangup, shutdown_rx.clone()),
                );
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGHUP; reload through the admin API only")
            }
        }
        let reports_paused = Arc::new(AtomicBool::new(false));
        if let Some(sender) = health_sender {
            let build = {
                let (config, proxy, stats) = (config.clone(), proxy.clone(), stats.clone());
                let paused = reports_paused.clone();
                let warm_until = Instant::now() + probe::first_scrape_within(&config);
                move |sequence| {
                    // Paused for an unplanned drill: the DNS tier must see silence.
                    if paused.load(Ordering::Relaxed) {
                        return None;
                    }
                    // Before the first scrape a backend's headroom counts as zero: a report
                    // then would make the DNS tier spill the region away for several reports.
                    // Silence is read as `unknown`, which still serves; bounded, so a backend
                    // whose metrics never answer cannot keep the region silent.
                    let now = Instant::now();
                    if now < warm_until && proxy.pool().awaiting_first_scrape() {
                        return None;
                    }
                    Some(report::build(
                        &config,
                        proxy.pool(),
                        &stats,
                        proxy.is_draining(),
                        sequence,
                        Instant::now(),
                    ))
                }
            };
            let nodes = sender.nodes.len();
            let stop = shutdown_rx.clone();
            background.spawn(async move {
                if let Err(error) = run_sender(sender, build, stop).await {
                    error!(%error, "the health channel sender stopped; no reports are sent");
                }
            });
            info!(nodes, "health channel: reporting to the DNS nodes");
        }
        let admin_state = Arc::new(AdminState {
            config: config.clone(),
            proxy: proxy.clone(),
            metrics,
            stats,
            drain: drain.clone(),
            report_sequence: Default::default(),
            reconfigure: reconfigure.clone(),
            reports_paused,
            token: admin_token,
        });
        background.spawn(serve_admin(admin_listener, admin_state, shutdown_rx));

        info!(region = %config.region, %https, ?h3, ?plain, %admin, backends = config.backends.len(), "relay serving");
        Ok(RelayHandle {
            https,
            h3,
            plain,
            admin,
            proxy,
            certs,
            drain_requested,
            reconfigure,
            drain,
            fronts_drain,
            shutdown,
            fronts,
            udp_release,
            background,
        })
    }

    /// Reads the configuration file again and applies its backend changes without dropping a
    /// stream; an invalid file changes nothing. The same as SIGHUP and `POST /admin/reload`.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reconfigure.reload().await
    }

    /// Drains (no new requests, in-flight ones finish, GOAWAY) and stops. In-flight requests
    /// get at most `grace`; whatever is still running then is cut. Returns once the listening
    /// sockets are closed (the UDP one within a bounded wait), so the same address can be
    /// bound again at once.
    pub async fn drain_and_stop(mut self, grace: Duration) {
        let _ = self.drain.send(true);
        self.proxy.start_draining();
        let _ = self.fronts_drain.send(true);
        let fronts = async { while self.fronts.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, fronts).await.is_err() {
            tracing::warn!(
                ?grace,
                "drain grace period over; cutting the remaining streams"
            );
            self.fronts.abort_all();
            // Joined, not just aborted: an aborted front closes its listener and (h3) aborts
            // its connection tasks only when its task is dropped.
            while self.fronts.join_next().await.is_some() {}
        }
        // The fronts are gone: the health reports stop now, not after the UDP port is free.
        let _ = self.shutdown.send(true);
        if let Some(release) = self.udp_release.take() {
            release.release(UDP_RELEASE_LIMIT).await;
        }
        while self.background.join_next().await.is_some() {}
        info!("relay stopped");
    }
}

/// How long a stop waits for the HTTP/3 socket to close once its QUIC driver tasks were ended
/// (see [`UdpRelease`]): the aborted tasks' last drops, normally a few milliseconds.
const UDP_RELEASE_LIMIT: Duration = Duration::from_secs(5);

/// TCP for HTTPS and, with HTTP/3, UDP on the same port (with port 0, the port TCP got).
async fn bind_front(
    address: SocketAddr,
    http3: bool,
) -> Result<(TcpListener, Option<std::net::UdpSocket>), StartError> {
    let mut last_error = None;
    for _ in 0..16 {
        let tcp = bind_tcp(address).await?;
        if !http3 {
            return Ok((tcp, None));
        }
        let port = local(&tcp, "TCP", address)?.port();
        let mut udp_address = address;
        udp_address.set_port(port);
        match std::net::UdpSocket::bind(udp_address) {
            Ok(udp) => return Ok((tcp, Some(udp))),
            // Port 0: the UDP side of the port TCP got may be taken; try another.
            Err(error) if address.port() == 0 => last_error = Some(error),
            Err(source) => {
                return Err(StartError::Bind {
                    transport: "UDP",
                    address: udp_address,
                    source,
                });
            }
        }
    }
    Err(StartError::Bind {
        transport: "UDP",
        address,
        source: last_error.unwrap_or_else(|| std::io::Error::other("no free port pair")),
    })
}

async fn bind_tcp(address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind {
            transport: "TCP",
            address,
            source,
        })
}

fn local(
    listener: &TcpListener,
    transport: &'static str,
    address: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        transport,
        address,
        source,
    })
}
