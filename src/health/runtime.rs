//! The DNS node's health plane, running (design §4): the `[health]` listener, the report
//! ledger, the feed that publishes region health into the serving snapshot, and the node's own
//! probe of silent regions, started together by [`start`] and stopped by one shutdown signal.
//!
//! Health is recomputed after every accepted report and every `refresh_interval` (so silence
//! turns into unknown on time), and after every probe round. Each recomputation goes through
//! [`HealthPlane`]'s observer, which counts health transitions per region by comparing what
//! the snapshot shows with what it showed before.
//!
//! The probe runs every `probe.interval` for the regions that have a `probe` address and no
//! fresh report; a region's verdict is forgotten as soon as it reports again. Probes of
//! different regions run concurrently, each bounded by `probe.timeout`.
//!
//! Configuration reloads: the regions (and their `probe` settings) are read from the serving
//! snapshot at every step, so a reload that adds, removes or re-addresses regions applies at
//! once and the plane keeps running. The `[health]` section itself (listen address, CA,
//! certificate, thresholds, intervals) is read only here, at start: changing it needs a
//! restart of the DNS node.
//!
//! This module owns the tasks and the metrics; it decides nothing itself (the ledger orders
//! reports, the view decides health, [`super::probe::ProbeTracker`] decides reachability).

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::{sync::watch, task::JoinSet};
use tracing::{debug, info, warn};

use super::{
    feed::SteeringFeed,
    ledger::ReportLedger,
    listener::{ListenerCounters, ListenerError, ListenerLimits, listener_endpoint, run_listener},
    pki::{self, PemPair},
    probe::{ProbeOutcome, ProbeTarget, ProbeTracker, probe_relay, roots_from_pem},
    view::{HealthView, ProbeVerdict},
};
use crate::{
    config::model::{HealthChannel, RelayProbe},
    metrics::MetricsSource,
    snapshot::SnapshotStore,
    steering::Health,
};

/// Why the health plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthPlaneError {
    #[error("[health] {key}: cannot read {}: {kind}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        kind: io::ErrorKind,
    },
    #[error("[health] listen: cannot bind UDP {address}: {kind}")]
    Bind {
        address: SocketAddr,
        kind: io::ErrorKind,
    },
    #[error("[health]: {0}")]
    Listener(#[from] ListenerError),
}

/// A running health plane. Its tasks stop when the `shutdown` given to [`start`] turns true;
/// [`HealthPlane::stopped`] waits for them.
pub struct HealthPlane {
    /// The bound `[health] listen` address (the real port when configured with port 0).
    pub local_addr: SocketAddr,
    pub ledger: Arc<Mutex<ReportLedger>>,
    pub counters: Arc<ListenerCounters>,
    pub feed: Arc<SteeringFeed>,
    metrics: Arc<PlaneMetrics>,
    tasks: JoinSet<()>,
}

/// Binds the `[health]` listener and starts the plane's tasks: the listener, the periodic
/// refresh and the probe of silent regions. Reads the CA, certificate and key files.
pub async fn start(
    config: &HealthChannel,
    store: Arc<SnapshotStore>,
    shutdown: watch::Receiver<bool>,
) -> Result<HealthPlane, HealthPlaneError> {
    let socket =
        std::net::UdpSocket::bind(config.listen).map_err(|error| HealthPlaneError::Bind {
            address: config.listen,
            kind: error.kind(),
        })?;
    start_on(socket, config, store, shutdown).await
}

/// [`start`] on an already bound UDP socket (`config.listen` is not used): for callers that
/// must know the address before the plane starts (tests, the demo).
pub async fn start_on(
    socket: std::net::UdpSocket,
    config: &HealthChannel,
    store: Arc<SnapshotStore>,
    shutdown: watch::Receiver<bool>,
) -> Result<HealthPlane, HealthPlaneError> {
    if let Some(exposed) = pki::key_file_exposure(&config.key) {
        warn!(%exposed, "health channel private key file is exposed to every local user");
    }
    let ca_pem = read("ca", &config.ca).await?;
    let identity = PemPair {
        cert_pem: read("cert", &config.cert).await?,
        key_pem: read("key", &config.key).await?,
    };
    let limits = ListenerLimits {
        max_connections: config.max_connections,
        ..ListenerLimits::default()
    };
    let endpoint = listener_endpoint(socket, &ca_pem, &identity, &limits)?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|error| HealthPlaneError::Bind {
            address: config.listen,
            kind: error.kind(),
        })?;

    let ledger = Arc::new(Mutex::new(ReportLedger::new(config.max_report_validity)));
    let counters = Arc::new(ListenerCounters::default());
    let feed = Arc::new(SteeringFeed::new(
        Arc::clone(&ledger),
        HealthView::for_channel(config),
        Arc::clone(&store),
    ));
    let metrics = Arc::new(PlaneMetrics {
        ledger: Arc::clone(&ledger),
        counters: Arc::clone(&counters),
        store: Arc::clone(&store),
        observed: Mutex::new(Observed::default()),
    });
    let observer = Observer {
        feed: Arc::clone(&feed),
        metrics: Arc::clone(&metrics),
    };
    // The health the snapshot shows now is the baseline transitions are counted from.
    observer.metrics.observe();

    let mut tasks = JoinSet::new();
    tasks.spawn(run_listener(
        endpoint,
        Arc::clone(&ledger),
        Arc::clone(&counters),
        limits,
        {
            // The configuration of the moment: a region added by a reload is accepted at once.
            let store = Arc::clone(&store);
            move |region: &str| store.load().config.region_by_id(region).is_some()
        },
        {
            let observer = observer.clone();
            move |_region: &str| observer.refresh(Instant::now())
        },
        shutdown.clone(),
    ));
    tasks.spawn(refresh_periodically(
        observer.clone(),
        config.refresh_interval,
        shutdown.clone(),
    ));
    let prober = Prober {
        observer,
        ledger: Arc::clone(&ledger),
        store,
        health_ca: config.ca.clone(),
        timeout: config.probe.timeout,
        tracker: ProbeTracker::new(config.probe.down_after),
    };
    tasks.spawn(prober.run(config.probe.interval, shutdown));
    info!(%local_addr, "health channel listening for relay reports");
    Ok(HealthPlane {
        local_addr,
        ledger,
        counters,
        feed,
        metrics,
        tasks,
    })
}

impl HealthPlane {
    /// The plane's series, to register with a `/metrics` endpoint that outlives this handle.
    pub fn metrics(&self) -> Arc<dyn MetricsSource> {
        Arc::clone(&self.metrics) as Arc<dyn MetricsSource>
    }

    /// Waits for the plane's tasks, once shutdown was signalled.
    pub async fn stopped(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

impl MetricsSource for HealthPlane {
    fn encode_into(&self, out: &mut String) {
        self.metrics.encode_into(out);
    }
}

async fn read(key: &'static str, path: &Path) -> Result<String, HealthPlaneError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|error| HealthPlaneError::Read {
            key,
            path: path.to_path_buf(),
            kind: error.kind(),
        })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single assignment or increment.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Recomputes health and counts the transitions it published.
#[derive(Clone)]
struct Observer {
    feed: Arc<SteeringFeed>,
    metrics: Arc<PlaneMetrics>,
}

impl Observer {
    fn refresh(&self, now: Instant) {
        if self.feed.refresh(now) {
            self.metrics.observe();
        }
    }
}

async fn refresh_periodically(
    observer: Observer,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(period.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => observer.refresh(Instant::now()),
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// The node's own probe of regions that went silent.
struct Prober {
    observer: Observer,
    ledger: Arc<Mutex<ReportLedger>>,
    store: Arc<SnapshotStore>,
    /// The `[health]` CA, for regions whose `probe` names none.
    health_ca: PathBuf,
    timeout: Duration,
    tracker: ProbeTracker,
}

impl Prober {
    async fn run(mut self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            tokio::select! {
                () = self.round() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Probes every silent region with a probe address once, then publishes the verdicts.
    async fn round(&mut self) {
        let snapshot = self.store.load_full();
        let now = Instant::now();
        let silent: Vec<(Arc<str>, RelayProbe)> = {
            let ledger = lock(&self.ledger);
            snapshot
                .config
                .regions
                .iter()
                .filter(|region| ledger.fresh(&region.id, now).is_none())
                .filter_map(|region| Some((Arc::clone(&region.id), region.probe.clone()?)))
                .collect()
        };
        self.tracker
            .retain(|region| silent.iter().any(|(id, _)| &**id == region));

        let mut roots: HashMap<PathBuf, Result<Arc<RootCertStore>, String>> = HashMap::new();
        let mut probes = Vec::with_capacity(silent.len());
        for (region, probe) in &silent {
            let ca = probe.ca.clone().unwrap_or_else(|| self.health_ca.clone());
            if !roots.contains_key(&ca) {
                let loaded = load_roots(&ca).await;
                roots.insert(ca.clone(), loaded);
            }
            let target = match (&roots[&ca], ServerName::try_from(probe.server_name.clone())) {
                (Ok(roots), Ok(server_name)) => Ok(ProbeTarget {
                    address: probe.address,
                    server_name,
                    roots: Arc::clone(roots),
                }),
                (Err(reason), _) => Err(format!("CA {}: {reason}", ca.display())),
                (_, Err(_)) => Err(format!("server name {:?} is invalid", probe.server_name)),
            };
            let timeout = self.timeout;
            probes.push(async move {
                match target {
                    Ok(target) => Some(probe_relay(&target, timeout).await),
                    Err(reason) => {
                        warn!(%region, %reason, "cannot probe the region's relay");
                        None
                    }
                }
            });
        }
        let outcomes = join_all(probes).await;

        for ((region, probe), outcome) in silent.iter().zip(outcomes) {
            let passed = outcome.as_ref().is_some_and(ProbeOutcome::passed);
            let before = self.tracker.verdicts().get(region).copied();
            let verdict = self.tracker.record(region, passed);
            self.observer
                .metrics
                .probed(region, outcome.as_ref(), verdict);
            if before != Some(verdict) {
                match (verdict, &outcome) {
                    (ProbeVerdict::Unreachable, Some(outcome)) => warn!(
                        %region, address = %probe.address, quic = ?outcome.quic, https = ?outcome.https,
                        "silent region's relay is unreachable: taken out"
                    ),
                    (ProbeVerdict::Unreachable, None) => {
                        warn!(%region, "silent region cannot be probed: taken out")
                    }
                    (ProbeVerdict::Reachable, _) => {
                        info!(%region, address = %probe.address, "silent region's relay is reachable")
                    }
                }
            } else {
                debug!(%region, passed, ?verdict, "probed a silent region");
            }
        }
        self.observer.feed.set_probes(self.tracker.verdicts());
        self.observer.refresh(Instant::now());
    }
}

async fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let pem = tokio::fs::read_to_string(path)
        .await
        .map_err(|error| error.to_string())?;
    roots_from_pem(&pem)
        .map(Arc::new)
        .map_err(|error| error.to_string())
}

/// The plane's series: the listener's and ledger's counters read at scrape time, and what the
/// plane itself observed (transitions, probes).
struct PlaneMetrics {
    ledger: Arc<Mutex<ReportLedger>>,
    counters: Arc<ListenerCounters>,
    store: Arc<SnapshotStore>,
    observed: Mutex<Observed>,
}

#[derive(Default)]
struct Observed {
    /// The health each region had when last observed.
    health: HashMap<Arc<str>, Health>,
    /// Transitions by (region, new health).
    transitions: HashMap<(Arc<str>, &'static str), u64>,
    /// Probe checks by (region, check, result).
    probes: HashMap<(Arc<str>, &'static str, &'static str), u64>,
    /// The latest probe verdict of each probed region.
    unreachable: HashMap<Arc<str>, bool>,
}

impl PlaneMetrics {
    /// Counts a transition for every region whose published health differs from the last
    /// observation. A region seen for the first time sets its baseline.
    fn observe(&self) {
        let snapshot = self.store.load_full();
        let mut observed = lock(&self.observed);
        for (i, region) in snapshot.config.regions.iter().enumerate() {
            let Some(idx) = u16::try_from(i).ok().map(crate::config::model::RegionIdx) else {
                continue;
            };
            let health = snapshot.steering.region_status(idx).health;
            match observed.health.insert(Arc::clone(&region.id), health) {
                Some(before) if before != health => {
                    info!(region = %region.id, from = before.as_str(), to = health.as_str(), "region health changed");
                    *observed
                        .transitions
                        .entry((Arc::clone(&region.id), health.as_str()))
                        .or_default() += 1;
                }
                _ => {}
            }
        }
    }

    fn probed(&self, region: &Arc<str>, outcome: Option<&ProbeOutcome>, verdict: ProbeVerdict) {
        let mut observed = lock(&self.observed);
        let checks: [(&'static str, &'static str); 2] = match outcome {
            Some(outcome) => [
                ("quic", if outcome.quic.is_ok() { "ok" } else { "failed" }),
                (
                    "https",
                    if outcome.https.is_ok() {
                        "ok"
                    } else {
                        "failed"
                    },
                ),
            ],
            None => [("quic", "not_run"), ("https", "not_run")],
        };
        for (check, result) in checks {
            *observed
                .probes
                .entry((Arc::clone(region), check, result))
                .or_default() += 1;
        }
        observed
            .unreachable
            .insert(Arc::clone(region), verdict == ProbeVerdict::Unreachable);
    }

    fn registry(&self) -> Registry {
        #[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct Reason {
            reason: &'static str,
        }
        #[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct Region {
            region: String,
        }
        #[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct Transition {
            region: String,
            to: &'static str,
        }
        #[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct Probe {
            region: String,
            check: &'static str,
            result: &'static str,
        }
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        let counter = |value: u64| {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            counter
        };

        let mut registry = Registry::with_prefix("meridian_health");
        let c = &self.counters;
        registry.register(
            "connections",
            "Relay connections authenticated on the health channel",
            counter(load(&c.connections)),
        );
        let refused = Family::<Reason, Counter>::default();
        for (reason, value) in [
            ("over_limit", load(&c.refused_over_limit)),
            ("handshake_failed", load(&c.handshake_failed)),
            ("no_region", load(&c.no_region)),
            ("unknown_region", load(&c.unknown_region)),
        ] {
            refused.get_or_create(&Reason { reason }).inc_by(value);
        }
        registry.register(
            "connections_refused",
            "Health-channel connections refused, by reason",
            refused,
        );

        let now = Instant::now();
        let snapshot = self.store.load_full();
        let (ledger_counters, ages) = {
            let ledger = lock(&self.ledger);
            let ages: Vec<(String, f64)> = snapshot
                .config
                .regions
                .iter()
                .filter_map(|region| {
                    let age = ledger.age(&region.id, now)?;
                    Some((region.id.to_string(), age.as_secs_f64()))
                })
                .collect();
            (ledger.counters(), ages)
        };
        registry.register(
            "reports_accepted",
            "Relay reports accepted into the ledger",
            counter(ledger_counters.accepted),
        );
        let rejected = Family::<Reason, Counter>::default();
        for (reason, value) in [
            ("region_mismatch", ledger_counters.region_mismatch),
            ("replayed", ledger_counters.replayed),
            ("out_of_order", ledger_counters.out_of_order),
            ("superseded_session", ledger_counters.superseded_session),
            ("malformed_frame", load(&c.malformed_frames)),
            ("stream_too_long", load(&c.streams_too_long)),
            ("stream_timed_out", load(&c.streams_timed_out)),
        ] {
            rejected.get_or_create(&Reason { reason }).inc_by(value);
        }
        registry.register(
            "reports_rejected",
            "Relay reports rejected, by reason",
            rejected,
        );
        let age = Family::<Region, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (region, seconds) in ages {
            age.get_or_create(&Region { region }).set(seconds);
        }
        registry.register(
            "report_age_seconds",
            "Time since each region's current report was received, fresh or not",
            age,
        );

        let observed = lock(&self.observed);
        let transitions = Family::<Transition, Counter>::default();
        for ((region, to), value) in &observed.transitions {
            transitions
                .get_or_create(&Transition {
                    region: region.to_string(),
                    to,
                })
                .inc_by(*value);
        }
        registry.register(
            "transitions",
            "Region health changes published into the serving snapshot, by new health",
            transitions,
        );
        let probes = Family::<Probe, Counter>::default();
        for ((region, check, result), value) in &observed.probes {
            probes
                .get_or_create(&Probe {
                    region: region.to_string(),
                    check,
                    result,
                })
                .inc_by(*value);
        }
        registry.register(
            "probes",
            "Checks of silent regions' relays (quic handshake, https /health), by result",
            probes,
        );
        let unreachable = Family::<Region, Gauge>::default();
        for (region, &down) in &observed.unreachable {
            unreachable
                .get_or_create(&Region {
                    region: region.to_string(),
                })
                .set(i64::from(down));
        }
        registry.register(
            "probe_unreachable",
            "1 while a silent region's relay failed probe.down_after probes in a row",
            unreachable,
        );
        registry
    }
}

impl MetricsSource for PlaneMetrics {
    fn encode_into(&self, out: &mut String) {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry()).is_err() {
            return;
        }
        out.push_str(text.strip_suffix("# EOF\n").unwrap_or(&text));
    }
}
