//! A running DNS node: the listeners, the reload loop, the metrics endpoint and (when
//! configured) the health plane and the admin API, started together around one
//! [`SnapshotStore`] and stopped together.
//!
//! `meridian dns` and `meridian demo` both start nodes through [`DnsNode::start`], so the
//! demo runs exactly what production runs. This module only assembles and sequences the
//! parts (start order, shutdown order); it decides nothing about queries or health.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tracing::info;

use super::server::{self, Listeners, ServerLimits};
use crate::{
    metrics::{self, Metrics},
    reload,
    snapshot::SnapshotStore,
};

/// Command-line settings that win over the config file (port 0 picks a free port).
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// DNS listen addresses; empty = the config's `server.listen`.
    pub listen: Vec<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
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

        let node_addresses = NodeAddresses {
            udp: listeners.udp_addresses().map_err(NodeError::Listeners)?,
            tcp: listeners.tcp_addresses().map_err(NodeError::Listeners)?,
            metrics: metrics_listener.as_ref().and_then(metrics::describe),
            admin: None,
            health: None,
            admin_token_file: config.admin.as_ref().map(|a| a.token_file.clone()),
        };
        let limits = ServerLimits {
            tcp_idle_timeout: Duration::from_millis(config.limits.tcp_idle_timeout_ms),
            max_tcp_connections: config.limits.max_tcp_connections,
        };

        let mut tasks = JoinSet::new();
        if let Some(listener) = metrics_listener {
            tasks.spawn(metrics::serve_metrics(
                listener,
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(reload::run(
            store.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(server::serve(
            listeners,
            store.clone(),
            metrics.clone(),
            limits,
            shutdown.clone(),
        ));
        drop(snapshot);
        Ok(DnsNode {
            addresses: node_addresses,
            store,
            metrics,
            shutdown: shutdown_tx,
            tasks,
        })
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(mut self) {
        info!("DNS node shutting down");
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
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
