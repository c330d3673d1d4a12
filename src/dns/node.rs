//! A running DNS node: the listeners, the reload loop, the metrics endpoint and (when
//! configured) the health plane and the admin API, started together around one
//! [`SnapshotStore`] and stopped together.
//!
//! `meridian dns` and `meridian demo` both start nodes through [`DnsNode::start`], so the
//! demo runs exactly what production runs. This module only assembles and sequences the
//! parts (start order, shutdown order); it decides nothing about queries or health.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tracing::{error, info};

use super::server::{self, Listeners, ServerLimits};
use crate::{
    anycast::{self, AnycastController, AnycastHandle, Withdrawal},
    metrics::{self, Metrics, MetricsSource},
    reload,
    snapshot::SnapshotStore,
};

/// How long a graceful shutdown waits for BIRD to confirm the withdrawal.
const ANYCAST_WITHDRAW_TIMEOUT: Duration = Duration::from_secs(5);

/// Command-line settings that win over the config file (port 0 picks a free port).
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// DNS listen addresses; empty = the config's `server.listen`.
    pub listen: Vec<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    /// With `[anycast]`: how long the node keeps answering after its route is withdrawn, so
    /// queries already routed to it (and BGP convergence upstream) finish before it closes.
    pub withdraw_linger: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            metrics_listen: None,
            withdraw_linger: anycast::DEFAULT_WITHDRAW_LINGER,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot bind the DNS listeners: {0}")]
    Listeners(#[source] std::io::Error),
    #[error("cannot bind the {what} listener {address}: {source}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error(transparent)]
    Health(#[from] crate::health::HealthPlaneError),
}

/// Where a started node can be reached (the ready file's contents).
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeAddresses {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub health: Option<SocketAddr>,
    pub admin_token_file: Option<PathBuf>,
}

pub struct DnsNode {
    pub addresses: NodeAddresses,
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    /// The BGP announcement control, with `[anycast]`.
    pub anycast: Option<AnycastHandle>,
    /// The relay report channel, with `[health]`.
    pub health: Option<crate::health::HealthPlane>,
    withdraw_linger: Duration,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl DnsNode {
    /// Binds everything first (so a port conflict fails start-up before anything serves),
    /// then spawns the serving tasks.
    pub async fn start(
        store: Arc<SnapshotStore>,
        options: NodeOptions,
    ) -> Result<DnsNode, NodeError> {
        let snapshot = store.load_full();
        let config = &snapshot.config;
        let addresses = if options.listen.is_empty() {
            config.listen.clone()
        } else {
            options.listen
        };
        let listeners = Listeners::bind(&addresses)
            .await
            .map_err(NodeError::Listeners)?;
        let metrics = Arc::new(Metrics::new());
        metrics.reload_loaded(snapshot.generation);
        let (shutdown_tx, shutdown) = watch::channel(false);

        let metrics_listener = match options.metrics_listen.or(config.metrics_listen) {
            Some(address) => Some(bind_tcp("metrics", address).await?),
            None => None,
        };

        let admin = match &config.admin {
            Some(admin) => Some((
                crate::admin::AdminToken::from_file(&admin.token_file)?,
                bind_tcp("admin", admin.listen).await?,
            )),
            None => None,
        };

        // Bound here with the other listeners, so a port conflict fails start-up.
        let health = match &config.health {
            Some(settings) => {
                let socket = std::net::UdpSocket::bind(settings.listen).map_err(|source| {
                    NodeError::Bind {
                        what: "health",
                        address: settings.listen,
                        source,
                    }
                })?;
                Some(
                    crate::health::runtime::start_on(
                        socket,
                        settings,
                        store.clone(),
                        shutdown.clone(),
                    )
                    .await?,
                )
            }
            None => None,
        };

        let node_addresses = NodeAddresses {
            udp: listeners.udp_addresses().map_err(NodeError::Listeners)?,
            tcp: listeners.tcp_addresses().map_err(NodeError::Listeners)?,
            metrics: metrics_listener.as_ref().and_then(metrics::describe),
            admin: admin.as_ref().and_then(|(_, l)| l.local_addr().ok()),
            health: health.as_ref().map(|plane| plane.local_addr),
            admin_token_file: config.admin.as_ref().map(|a| a.token_file.clone()),
        };
        let limits = ServerLimits {
            tcp_idle_timeout: Duration::from_millis(config.limits.tcp_idle_timeout_ms),
            max_tcp_connections: config.limits.max_tcp_connections,
        };

        let anycast = config
            .anycast
            .as_ref()
            .map(|c| AnycastController::start(c, anycast_probes(health.as_ref(), &store)));
        let rrl = Arc::new(super::rrl::ResponseRateLimiter::new());
        let recent = Arc::new(crate::admin::RecentDecisions::default());
        let mut sources: Vec<Arc<dyn MetricsSource>> = vec![metrics.clone(), rrl.clone()];
        let notifier = Arc::new(super::notify::Notifier::default());
        sources.push(notifier.clone());
        if let Some(plane) = &health {
            sources.push(plane.metrics());
        }
        if let Some(handle) = &anycast {
            sources.push(handle.metrics());
        }

        let mut tasks = JoinSet::new();
        if let Some(listener) = metrics_listener {
            tasks.spawn(metrics::serve_sources(
                listener,
                sources.clone(),
                shutdown.clone(),
            ));
        }
        if let Some((token, listener)) = admin {
            let ctx = Arc::new(crate::admin::AdminContext {
                store: store.clone(),
                token,
                metrics: sources.clone(),
                ledger: health.as_ref().map(|plane| plane.ledger.clone()),
                recent: recent.clone(),
            });
            tasks.spawn(crate::admin::serve(listener, ctx, shutdown.clone()));
        }
        tasks.spawn(reload::run_with_notifier(
            store.clone(),
            metrics.clone(),
            notifier,
            shutdown.clone(),
        ));
        let serving = server::serve_observed(
            listeners,
            store.clone(),
            metrics.clone(),
            limits,
            server::Observers {
                rrl: Some(rrl),
                recent: Some(recent),
            },
            shutdown.clone(),
        );
        let (failed, stopping) = (anycast.clone(), shutdown.clone());
        tasks.spawn(async move {
            serving.await;
            if !*stopping.borrow() {
                error!("the DNS listeners stopped on their own");
                if let Some(handle) = failed {
                    handle.listener_failed();
                }
            }
        });
        if let Some(handle) = &anycast {
            tasks.spawn(anycast::follow_drain_signals(
                handle.clone(),
                shutdown.clone(),
            ));
            handle.serving();
        }
        drop(snapshot);
        Ok(DnsNode {
            addresses: node_addresses,
            store,
            metrics,
            anycast,
            health,
            withdraw_linger: options.withdraw_linger,
            shutdown: shutdown_tx,
            tasks,
        })
    }

    /// Stops the node: with anycast, the route is withdrawn first and the node keeps
    /// answering for the linger time, so no query routed here before the withdrawal is lost;
    /// then every task stops.
    pub async fn shutdown(mut self) {
        info!("DNS node shutting down");
        if let Some(handle) = &self.anycast {
            match handle.withdraw_and_wait(ANYCAST_WITHDRAW_TIMEOUT).await {
                Withdrawal::Confirmed => info!("anycast route withdrawn"),
                Withdrawal::BirdNotRunning(e) => {
                    info!(%e, "BIRD is not running: nothing was announced")
                }
                Withdrawal::Unconfirmed(e) => {
                    error!(?e, "anycast withdrawal unconfirmed; stopping anyway")
                }
            }
            tokio::time::sleep(self.withdraw_linger).await;
        }
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Some(plane) = self.health.take() {
            plane.stopped().await;
        }
    }
}

/// The anycast self-check's view of the node: with a health channel, when the freshest report
/// of any configured region arrived.
fn anycast_probes(
    health: Option<&crate::health::HealthPlane>,
    store: &Arc<SnapshotStore>,
) -> anycast::Probes {
    let Some(plane) = health else {
        return anycast::Probes::default();
    };
    let ledger = plane.ledger.clone();
    let store = store.clone();
    anycast::Probes {
        last_health_report: Some(Arc::new(move || {
            let now = std::time::Instant::now();
            let snapshot = store.load();
            let ledger = ledger.lock().ok()?;
            snapshot
                .config
                .regions
                .iter()
                .filter_map(|region| ledger.age(&region.id, now))
                .min()
                .and_then(|age| now.checked_sub(age))
        })),
        ..anycast::Probes::default()
    }
}

async fn bind_tcp(what: &'static str, address: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| NodeError::Bind {
            what,
            address,
            source,
        })
}
