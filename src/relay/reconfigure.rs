//! Reloading the relay's configuration while it serves: on SIGHUP and on `POST /admin/reload`.
//!
//! Owns the reload procedure. The file the relay started from is read again and validated
//! whole; an invalid file changes nothing (the error, with its field paths, is logged once
//! here and returned to the caller). A valid one is applied to what can change without a
//! restart — the backend set, through [`Pool::reconcile`]: backends are added, drained and
//! removed one at a time while every running stream finishes where it started, which is what
//! a blue/green model roll-out needs (add v2, drain v1, remove v1). Every other section that
//! differs from what runs is named in a warning and in [`Reloaded::needs_restart`]: listeners,
//! timeouts, limits and the rest were wired into sockets, clients and tasks at start-up.
//!
//! It must not rebind listeners or reload certificates (their contents already reload on
//! change, see [`super::tls`]; only the paths are fixed), and decides nothing about the
//! backends beyond handing the new list to the pool.

use std::sync::Arc;

use tokio::{signal::unix::Signal, sync::watch};
use tracing::{error, info, warn};

use crate::{
    config::ConfigError,
    relay::{
        config::{model::RelayConfig, parse_relay_config},
        metrics::RelayMetrics,
        pool::{Pool, ReconcileSummary},
    },
};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read, is not TOML, or is not a valid relay configuration.
    #[error(transparent)]
    Rejected(#[from] ConfigError),
}

/// What a reload applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub backends: ReconcileSummary,
    /// Sections that differ from the running configuration and take effect only on restart,
    /// named as in the file (`relay.listen`, `timeouts`, ...).
    pub needs_restart: Vec<&'static str>,
}

/// The reload procedure of one running relay.
pub struct Reconfigure {
    /// What the relay started with: everything but the backends keeps running from it.
    running: Arc<RelayConfig>,
    pool: Arc<Pool>,
    metrics: Arc<RelayMetrics>,
    /// One reload at a time: two overlapping ones could apply the older file last.
    serial: tokio::sync::Mutex<()>,
}

impl Reconfigure {
    pub fn new(running: Arc<RelayConfig>, pool: Arc<Pool>, metrics: Arc<RelayMetrics>) -> Self {
        Reconfigure {
            running,
            pool,
            metrics,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads the configuration file again and applies its backends (see the module doc).
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _serial = self.serial.lock().await;
        let path = &self.running.source;
        let loaded = match tokio::fs::read_to_string(path).await {
            Ok(text) => parse_relay_config(&text, path),
            Err(source) => Err(ConfigError::Read {
                path: path.clone(),
                source,
            }),
        };
        let new = match loaded {
            Ok(config) => config,
            Err(rejected) => {
                error!(error = %rejected, "configuration reload rejected; nothing changed");
                self.metrics.reloaded(false);
                return Err(rejected.into());
            }
        };
        let backends = self.pool.reconcile(&new.backends);
        let needs_restart = needs_restart(&self.running, &new);
        for section in &needs_restart {
            warn!(
                section,
                "changed in the configuration file; takes effect only after a restart"
            );
        }
        if !backends.no_room.is_empty() {
            warn!(backends = ?backends.no_room, "no backend index left; not added (restart the relay)");
        }
        info!(
            added = ?backends.added, removed = ?backends.removed, changed = ?backends.changed,
            drain_changed = ?backends.drain_changed, "configuration reloaded"
        );
        self.metrics.reloaded(true);
        Ok(Reloaded {
            backends,
            needs_restart,
        })
    }

    /// Reloads on every SIGHUP until `shutdown` turns true (or its sender goes away). The
    /// signal stream is created by the caller, before the relay reports ready, so a SIGHUP
    /// sent as soon as it is ready cannot take the default action and kill the process.
    pub async fn reload_on_hangup(
        self: Arc<Self>,
        mut hangup: Signal,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    info!("SIGHUP: reloading the configuration");
                    // Logged and counted by `reload`; nobody else to tell.
                    let _ = self.reload().await;
                }
                () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
            }
        }
    }
}

/// The sections of `new` that differ from `running`, other than the backends.
pub fn needs_restart(running: &RelayConfig, new: &RelayConfig) -> Vec<&'static str> {
    // Destructured so that a new field must be sorted into "reloadable" or "restart".
    let RelayConfig {
        source: _,
        backends: _,
        region,
        listen,
        plain_listen,
        admin_listen,
        admin_token_file,
        tls,
        http3,
        timeouts,
        retry,
        shedding,
        limits,
        health,
        scrape_interval,
        health_channel,
    } = new;
    [
        ("relay.region", running.region == *region),
        ("relay.listen", running.listen == *listen),
        ("relay.plain_listen", running.plain_listen == *plain_listen),
        ("relay.admin_listen", running.admin_listen == *admin_listen),
        // The token is read once at start, like the TLS identity of the health channel.
        (
            "relay.admin_token_file",
            running.admin_token_file == *admin_token_file,
        ),
        ("relay.http3", running.http3 == *http3),
        (
            "relay.scrape_interval_ms",
            running.scrape_interval == *scrape_interval,
        ),
        ("relay.tls", running.tls == *tls),
        ("timeouts", running.timeouts == *timeouts),
        ("retry", running.retry == *retry),
        ("shedding", running.shedding == *shedding),
        ("limits", running.limits == *limits),
        ("health", running.health == *health),
        (
            "relay.health_channel",
            running.health_channel == *health_channel,
        ),
    ]
    .into_iter()
    .filter(|&(_, same)| !same)
    .map(|(section, _)| section)
    .collect()
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, path::PathBuf, time::Duration};

    use super::*;
    use crate::relay::{
        config::model::BackendKind,
        pool::tests::{backend, config},
    };

    #[test]
    fn sections_that_need_a_restart() {
        type Edit = fn(&mut RelayConfig);
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let cases: &[(&str, Edit, &[&str])] = &[
            ("nothing", |_| {}, &[]),
            (
                "only backends and the file name",
                |c| {
                    c.backends.clear();
                    c.source = PathBuf::from("elsewhere.toml");
                },
                &[],
            ),
            ("listen", |c| c.listen.set_port(9), &["relay.listen"]),
            (
                "admin",
                |c| c.admin_listen.set_port(9),
                &["relay.admin_listen"],
            ),
            (
                "plain listener added, http3 off",
                |c| {
                    c.plain_listen = Some("127.0.0.1:9".parse().unwrap());
                    c.http3 = !c.http3;
                },
                &["relay.plain_listen", "relay.http3"],
            ),
            ("region", |c| c.region = "us-east".into(), &["relay.region"]),
            (
                "certificate path",
                |c| c.tls.cert = PathBuf::from("other.pem"),
                &["relay.tls"],
            ),
            (
                "timeouts and limits",
                |c| {
                    c.timeouts.idle = Duration::from_secs(1);
                    c.limits.max_connections = 1;
                },
                &["timeouts", "limits"],
            ),
            ("retry", |c| c.retry.max_attempts = 5, &["retry"]),
            (
                "shedding",
                |c| c.shedding.max_saturation = 0.5,
                &["shedding"],
            ),
            (
                "health and scraping",
                |c| {
                    c.health.interval = Duration::from_millis(1);
                    c.scrape_interval = Duration::from_millis(1);
                },
                &["relay.scrape_interval_ms", "health"],
            ),
            (
                "health channel added",
                |c| {
                    c.health_channel = Some(crate::relay::config::model::HealthChannel {
                        ca: PathBuf::from("ca.pem"),
                        cert: PathBuf::from("relay.pem"),
                        key: PathBuf::from("relay-key.pem"),
                        interval: Duration::from_secs(1),
                        validity: Duration::from_secs(3),
                        nodes: Vec::new(),
                    })
                },
                &["relay.health_channel"],
            ),
        ];
        let running = config(vec![backend("a", BackendKind::Vllm, &["m"], 4)]);
        assert_ne!(running.listen, other, "the edits must change something");
        for (name, edit, expected) in cases {
            let mut new = running.clone();
            edit(&mut new);
            assert_eq!(needs_restart(&running, &new), *expected, "{name}");
        }
    }

    #[tokio::test]
    async fn an_invalid_file_changes_nothing_and_a_valid_one_applies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        let mut running = config(vec![backend("a", BackendKind::Vllm, &["m"], 4)]);
        running.source = path.clone();
        let running = Arc::new(running);
        let pool = Arc::new(Pool::new(&running));
        let metrics = Arc::new(RelayMetrics::new());
        let reconfigure = Reconfigure::new(running, pool.clone(), metrics.clone());

        // No file at all.
        let missing = reconfigure.reload().await;
        assert!(
            matches!(
                missing,
                Err(ReloadError::Rejected(ConfigError::Read { .. }))
            ),
            "{missing:?}"
        );
        // A file that parses but does not validate: every problem with its field path.
        std::fs::write(&path, relay_toml("[[backend]]\nid = \"b\"\nurl = \"ftp://x\"\nkind = \"vllm\"\nmodels = [\"m\"]\nslots = 0\n")).unwrap();
        match reconfigure.reload().await {
            Err(ReloadError::Rejected(ConfigError::Invalid { errors, .. })) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                assert!(fields.contains(&"backend[0].url"), "{fields:?}");
                assert!(fields.contains(&"backend[0].slots"), "{fields:?}");
            }
            other => panic!("expected the file to be rejected: {other:?}"),
        }
        assert_eq!(
            pool.find("a"),
            Some(crate::relay::config::model::BackendIdx(0))
        );
        assert_eq!(pool.find("b"), None);

        std::fs::write(&path, relay_toml("[[backend]]\nid = \"b\"\nurl = \"http://127.0.0.1:1\"\nkind = \"vllm\"\nmodels = [\"n\"]\nslots = 2\n")).unwrap();
        let applied = reconfigure.reload().await.unwrap();
        assert_eq!(applied.backends.added, [Arc::from("b")]);
        assert_eq!(applied.backends.removed, [Arc::from("a")]);
        assert_eq!(pool.models(), ["n"]);
        // The test file differs from the running config in every restart-only section it sets.
        assert!(
            applied.needs_restart.contains(&"relay.listen"),
            "{applied:?}"
        );

        let text = metrics.encode(&pool);
        assert!(
            text.contains("meridian_relay_reloads_total{result=\"rejected\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("meridian_relay_reloads_total{result=\"applied\"} 1"),
            "{text}"
        );
    }

    fn relay_toml(backends: &str) -> String {
        format!(
            "[relay]\nregion = \"eu-west\"\nlisten = \"127.0.0.1:8443\"\n\
             admin_listen = \"127.0.0.1:9100\"\n\n[relay.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\n\
             {backends}"
        )
    }
}
