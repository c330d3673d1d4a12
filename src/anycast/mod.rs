//! Anycast announcement control: this DNS PoP's share of the anycast service address is in BGP
//! only while the node is fit to answer (design §6).
//!
//! Meridian does not speak BGP. Each PoP runs BIRD 2 with a protocol (normally a `static`
//! protocol holding the anycast /32 and /128, exported to the BGP sessions; see
//! `deploy/bird/`) that Meridian enables to announce and disables to withdraw, over BIRD's
//! control socket ([`bird`]). What to announce is decided by the pure [`policy`]; this module
//! is the driver around it: one task that observes the node, applies the policy, tells BIRD,
//! and publishes the outcome ([`AnnouncementStatus`], [`metrics::AnycastMetrics`]).
//!
//! It must never take the DNS service down: BIRD missing, hung or refusing is logged once per
//! change, counted, retried with backoff, and the node keeps answering whatever reaches it.
//!
//! Order on a graceful shutdown (the caller's part): [`AnycastHandle::withdraw_and_wait`]
//! first, then linger so queries already routed here are answered, then close the listeners.
//! A crash cannot withdraw: the PoP's service manager has to (`ExecStopPost=` in
//! `docs/anycast.md`), or the route stays until BIRD itself goes away.

pub mod bird;
pub mod metrics;
pub mod policy;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use bird::{BirdControl, BirdError, ProtocolStatus};
pub use metrics::AnycastMetrics;
pub use policy::{Intent, WithdrawReason};

use crate::config::model;
use policy::{Announcement, BirdSync, Observation, Settings};

/// Bounds one exchange with BIRD (connect, greeting, command, reply).
pub const BIRD_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a stopping node keeps answering after its withdrawal, by default: the routers
/// have switched within milliseconds of BIRD's UPDATE, so this covers packets already on the
/// way and resolvers' retries to the old path.
pub const DEFAULT_WITHDRAW_LINGER: Duration = Duration::from_secs(2);

/// When the health plane last received a relay report (`None`: none yet).
pub type LastReportProbe = Arc<dyn Fn() -> Option<Instant> + Send + Sync>;
/// Whether the serving snapshot can be answered from.
pub type SnapshotProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// The parts of the self-check that live elsewhere in the node. Absent probes pass.
#[derive(Clone, Default)]
pub struct Probes {
    /// Consulted only when `max_health_silence` is set.
    pub last_health_report: Option<LastReportProbe>,
    pub snapshot_usable: Option<SnapshotProbe>,
}

/// What the DNS node tells the controller through its handle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NodeSignals {
    serving: bool,
    draining: bool,
    shutting_down: bool,
    listener_failed: bool,
}

/// The controller's latest view, for status pages and for waiting on a withdrawal.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnouncementStatus {
    /// What the self-check wants.
    pub intent: Intent,
    /// What BIRD last confirmed (`Some(true)` = announced); `None` = unknown.
    pub bird_confirmed: Option<bool>,
    /// The last exchange's error, while BIRD fails.
    pub last_error: Option<BirdError>,
}

/// How [`AnycastHandle::withdraw_and_wait`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Withdrawal {
    /// BIRD confirmed the protocol disabled: the route is leaving BGP.
    Confirmed,
    /// BIRD is not running (no socket, or nobody listening on it), so it announces nothing.
    BirdNotRunning(BirdError),
    /// No confirmation in time: BIRD hung or refused, and the route may still be announced.
    Unconfirmed(Option<BirdError>),
}

/// Starts announcement control.
pub struct AnycastController;

impl AnycastController {
    /// Spawns the controller on the current tokio runtime. Nothing is announced until the
    /// node calls [`AnycastHandle::serving`]. The task ends when every handle is dropped.
    pub fn start(config: &model::Anycast, probes: Probes) -> AnycastHandle {
        let (node_tx, node_rx) = watch::channel(NodeSignals::default());
        let (status_tx, status_rx) = watch::channel(AnnouncementStatus {
            intent: Intent::Withdraw(WithdrawReason::NotServing),
            bird_confirmed: None,
            last_error: None,
        });
        let metrics = Arc::new(AnycastMetrics::new());
        let driver = Driver {
            protocol: config.protocol.clone(),
            bird: BirdControl::new(&config.bird_socket, BIRD_EXCHANGE_TIMEOUT),
            check_interval: config.check_interval.max(Duration::from_millis(10)),
            settings: Settings::from_config(config),
            probes,
            metrics: metrics.clone(),
        };
        tokio::spawn(driver.run(node_rx, status_tx));
        AnycastHandle {
            inner: Arc::new(Shared {
                node: node_tx,
                status: status_rx,
                metrics,
            }),
        }
    }
}

struct Shared {
    node: watch::Sender<NodeSignals>,
    status: watch::Receiver<AnnouncementStatus>,
    metrics: Arc<AnycastMetrics>,
}

/// The DNS node's side of the controller. Cheap to clone.
#[derive(Clone)]
pub struct AnycastHandle {
    inner: Arc<Shared>,
}

impl AnycastHandle {
    /// Listeners are bound and the first snapshot is loaded: announce (if otherwise fit).
    pub fn serving(&self) {
        self.inner
            .node
            .send_if_modified(|s| !std::mem::replace(&mut s.serving, true));
    }

    /// A listener task ended although no shutdown was asked: withdraw for good.
    pub fn listener_failed(&self) {
        self.inner
            .node
            .send_if_modified(|s| !std::mem::replace(&mut s.listener_failed, true));
    }

    /// Leave (`true`) or rejoin (`false`) the anycast while still answering.
    pub fn set_draining(&self, draining: bool) {
        self.inner
            .node
            .send_if_modified(|s| std::mem::replace(&mut s.draining, draining) != draining);
    }

    pub fn status(&self) -> AnnouncementStatus {
        self.inner.status.borrow().clone()
    }

    pub fn metrics(&self) -> Arc<AnycastMetrics> {
        self.inner.metrics.clone()
    }

    /// Withdraws for good and waits, at most `timeout`, until BIRD confirms it. Call it before
    /// the listeners close; then linger (e.g. [`DEFAULT_WITHDRAW_LINGER`]) so queries already
    /// routed here are answered. Never fails the shutdown: the outcome is for the log.
    pub async fn withdraw_and_wait(&self, timeout: Duration) -> Withdrawal {
        self.inner
            .node
            .send_if_modified(|s| !std::mem::replace(&mut s.shutting_down, true));
        let mut status = self.inner.status.clone();
        let mut last_error = None;
        let wait = async {
            loop {
                {
                    let current = status.borrow_and_update();
                    last_error.clone_from(&current.last_error);
                    if current.intent == Intent::Withdraw(WithdrawReason::ShuttingDown) {
                        if current.bird_confirmed == Some(false) {
                            return Withdrawal::Confirmed;
                        }
                        if let Some(error) = &current.last_error
                            && error.bird_not_running()
                        {
                            return Withdrawal::BirdNotRunning(error.clone());
                        }
                    }
                }
                if status.changed().await.is_err() {
                    // The controller task is gone (it only ends with the runtime).
                    return Withdrawal::Unconfirmed(None);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(outcome) => outcome,
            Err(_) => Withdrawal::Unconfirmed(last_error),
        }
    }
}

/// Which BIRD protocols `protocol` drives, in which state. Only meaningful where BIRD runs;
/// [`BirdError::bird_not_running`] tells that case apart.
pub async fn check_protocol(config: &model::Anycast) -> Result<Vec<ProtocolStatus>, BirdError> {
    bird::validate_protocol_name(&config.protocol)?;
    BirdControl::new(&config.bird_socket, BIRD_EXCHANGE_TIMEOUT)
        .protocol_status(&config.protocol)
        .await
}

/// What `meridian check` can say about `[anycast]` without changing anything.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckOutcome {
    /// BIRD runs and the name or pattern matches these protocols.
    Drives(Vec<ProtocolStatus>),
    /// No BIRD at the socket here (a build machine, or BIRD not started yet): not checked.
    NotChecked(BirdError),
}

impl std::fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckOutcome::Drives(protocols) => {
                f.write_str("anycast drives BIRD protocol(s) ")?;
                for (i, p) in protocols.iter().enumerate() {
                    let comma = if i == 0 { "" } else { ", " };
                    write!(f, "{comma}{} ({}, {})", p.name, p.proto, p.state)?;
                }
                Ok(())
            }
            CheckOutcome::NotChecked(error) => {
                write!(f, "anycast not checked against BIRD: {error}")
            }
        }
    }
}

/// `meridian check` (no runtime of its own): an invalid protocol name, or a running BIRD that
/// has no protocol matching it, or one that cannot be asked, is an error; no BIRD here is not.
pub fn check_blocking(config: &model::Anycast) -> Result<CheckOutcome, BirdError> {
    bird::validate_protocol_name(&config.protocol)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BirdError::Io {
            path: config.bird_socket.clone(),
            reason: format!("cannot start a runtime to ask BIRD: {e}"),
        })?;
    match runtime.block_on(check_protocol(config)) {
        Ok(protocols) => Ok(CheckOutcome::Drives(protocols)),
        Err(error) if error.bird_not_running() => Ok(CheckOutcome::NotChecked(error)),
        Err(error) => Err(error),
    }
}

/// The operator's drain switch: SIGUSR1 withdraws this PoP (it keeps answering what still
/// reaches it), SIGUSR2 announces it again. Runs until `shutdown`.
pub async fn follow_drain_signals(handle: AnycastHandle, mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut drain), Ok(mut undrain)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) else {
        warn!("cannot install SIGUSR1/SIGUSR2 handlers: anycast drain by signal unavailable");
        return;
    };
    loop {
        tokio::select! {
            _ = drain.recv() => {
                info!("SIGUSR1: draining this PoP out of the anycast");
                handle.set_draining(true);
            }
            _ = undrain.recv() => {
                info!("SIGUSR2: rejoining the anycast");
                handle.set_draining(false);
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The controller task's state.
struct Driver {
    protocol: String,
    bird: BirdControl,
    check_interval: Duration,
    settings: Settings,
    probes: Probes,
    metrics: Arc<AnycastMetrics>,
}

/// The clock the driver reads: tokio's, so tests can pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Driver {
    async fn run(
        self,
        mut node: watch::Receiver<NodeSignals>,
        status: watch::Sender<AnnouncementStatus>,
    ) {
        let mut announcement = Announcement::new(self.settings, now());
        let mut sync = BirdSync::new(now());
        let mut last_error: Option<BirdError> = None;
        loop {
            let checked_at = now();
            let observation = self.observe(*node.borrow_and_update());
            let before = announcement.intent();
            let intent = announcement.observe(checked_at, &observation);
            self.report_transition(before, intent);
            let want = intent.announce();
            if sync.due(checked_at, want) {
                match self.bird.set_enabled(&self.protocol, want).await {
                    Ok(enabled) => {
                        if last_error.take().is_some() {
                            info!(socket = %self.bird.socket().display(), "BIRD reachable again");
                        }
                        if enabled != want {
                            warn!(protocol = %self.protocol, enabled, want, "BIRD did not switch the protocol");
                        }
                        sync.succeeded(now(), want, enabled);
                        self.metrics.bird_confirmed(enabled);
                        debug!(protocol = %self.protocol, enabled, "BIRD confirmed");
                    }
                    Err(error) => {
                        let retry_in = sync.failed(now(), want);
                        self.metrics.bird_failed(error.label());
                        // Logged once per kind of failure, not once per retry.
                        if last_error.as_ref().map(BirdError::label) != Some(error.label()) {
                            warn!(%error, ?retry_in, want_announced = want,
                                "cannot drive BIRD: the announcement state is unknown; \
                                 DNS keeps answering");
                        }
                        last_error = Some(error);
                    }
                }
            }
            status.send_replace(AnnouncementStatus {
                intent,
                bird_confirmed: sync.confirmed(),
                last_error: last_error.clone(),
            });
            let next_check = checked_at + self.check_interval;
            let wake = sync
                .next_exchange(want)
                .map_or(next_check, |at| at.min(next_check));
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                changed = node.changed() => if changed.is_err() { return },
            }
        }
    }

    fn observe(&self, node: NodeSignals) -> Observation {
        Observation {
            serving: node.serving,
            draining: node.draining,
            shutting_down: node.shutting_down,
            listener_failed: node.listener_failed,
            snapshot_usable: self.probes.snapshot_usable.as_ref().is_none_or(|f| f()),
            last_health_report: self.probes.last_health_report.as_ref().and_then(|f| f()),
        }
    }

    fn report_transition(&self, before: Intent, after: Intent) {
        self.metrics.wanted(after.announce());
        match (before, after) {
            (Intent::Withdraw(_), Intent::Announce) => {
                info!(protocol = %self.protocol, "anycast: announcing");
            }
            (Intent::Announce, Intent::Withdraw(reason)) => {
                self.metrics.withdrawn(reason.as_str());
                if reason.is_fault() {
                    warn!(protocol = %self.protocol, reason = reason.as_str(), detail = ?reason,
                        "anycast: self-check failed, withdrawing");
                } else {
                    info!(protocol = %self.protocol, reason = reason.as_str(), "anycast: withdrawing");
                }
            }
            (Intent::Withdraw(old), Intent::Withdraw(new)) if old.as_str() != new.as_str() => {
                debug!(reason = new.as_str(), "anycast: still withdrawn");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
