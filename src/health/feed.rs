//! [`SteeringFeed`]: turns the report ledger (and the node's own probe verdicts) into region
//! health, spill-over, headroom and the latency table in the serving snapshot, through a
//! [`HealthView`].
//!
//! It owns the order of locks (ledger, then view) and when a new view is published; it does
//! no network IO and decides nothing itself (the view decides health, the snapshot store
//! publishes). The view's output is keyed by region id, so a reload that reorders regions
//! between reading the region list and publishing cannot misapply it.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{
    ledger::ReportLedger,
    view::{HealthView, ProbeVerdicts},
};
use crate::snapshot::SnapshotStore;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the ledger leaves it consistent (every update is one assignment).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps the serving snapshot's region health in step with the ledger: computes the health of
/// every configured region through a [`HealthView`] and publishes it when it changed.
pub struct SteeringFeed {
    ledger: Arc<Mutex<ReportLedger>>,
    view: Mutex<HealthView>,
    probes: Mutex<ProbeVerdicts>,
    store: Arc<SnapshotStore>,
}

impl SteeringFeed {
    pub fn new(
        ledger: Arc<Mutex<ReportLedger>>,
        view: HealthView,
        store: Arc<SnapshotStore>,
    ) -> SteeringFeed {
        SteeringFeed {
            ledger,
            view: Mutex::new(view),
            probes: Mutex::new(ProbeVerdicts::new()),
            store,
        }
    }

    /// Replaces the probe verdicts (the node's own probe of silent regions); takes effect at
    /// the next [`refresh`](Self::refresh).
    pub fn set_probes(&self, verdicts: ProbeVerdicts) {
        *lock(&self.probes) = verdicts;
    }

    /// Recomputes health at `now` and publishes it if it changed; returns whether it did.
    /// Call it after every accepted report, and periodically so that silence turns into
    /// unknown. `now` also re-targets the weighted-mode weight ramps.
    pub fn refresh(&self, now: Instant) -> bool {
        let snapshot = self.store.load_full();
        let live = {
            // Always ledger, then view: the listener takes only the ledger.
            let probes = lock(&self.probes).clone();
            let ledger = lock(&self.ledger);
            let mut view = lock(&self.view);
            view.update(
                &ledger,
                snapshot.config.regions.iter().map(|region| &*region.id),
                &probes,
                now,
            )
        };
        self.store.update_health(live, now)
    }

    /// Refreshes every `period` until `shutdown` turns true.
    pub async fn run_periodic(
        self: Arc<Self>,
        period: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    self.refresh(Instant::now());
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}
