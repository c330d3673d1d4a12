//! The region's backends as the relay sees them: who serves which model, who may take new work,
//! how loaded each one is, and which one a request goes to.
//!
//! [`Pool`] owns that state and the decisions on it — power-of-two-choices selection on a load
//! score, active-probe hysteresis, passive outlier ejection, the region's saturation and
//! headroom (design §4–§5). It does no IO and reads no clock: the proxy and [`super::probe`]
//! report what they saw, with `now`, and read decisions back. It must not learn about HTTP,
//! sockets or metric formats ([`super::signals`] turns those into numbers first).
//!
//! # Sharing
//!
//! One `Arc<Pool>` is read on every request (`pick`, `begin`) and written by the probe tasks a
//! few times a second per backend, so the two sides must not wait on each other:
//!
//! - in-flight counts are per-backend atomics, touched without any lock;
//! - everything else a backend has (signals, probe and ejection state) sits behind its own
//!   `std::sync::Mutex`, held only to copy or overwrite a few plain fields — parsing and IO
//!   happen before the lock is taken, so no holder ever waits inside it;
//! - the model → backends routing table changes only on model discovery; it is rebuilt whole
//!   and published through an `ArcSwap`, so `pick` sees either the old or the new table, never
//!   half of one.
//!
//! Why not one `ArcSwap` of the whole per-backend state: its writers (probe results, passive
//! failures from many concurrent requests) read-modify-write counters, which a swap would turn
//! into compare-and-swap retry loops that clone the state each time; a short uncontended mutex
//! per backend is cheaper and keeps each update obviously atomic. Different backends never
//! share a lock.
//!
//! # Load score
//!
//! Per backend `s = max(demand / slots, kv / KV_FULL, slots_busy / slots_total)`, where `demand`
//! is the larger of the relay's own in-flight count and the backend's `running + waiting`
//! (the backend also serves other relays). This is design §4's `max(waiting/Q, kv/KV,
//! inflight/slots)` with `Q = slots`: `(running + waiting) / slots` is never below
//! `waiting / slots`, so the queue term is folded into the demand term. `s = 1` is a full batch;
//! above 1 requests queue. Signals older than [`STALE_AFTER_SCRAPES`] scrape intervals are
//! ignored and the score falls back to in-flight alone.

mod health;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use crate::relay::{
    config::model::{BackendIdx, BackendKind, HealthChecks, ModelSource, RelayConfig},
    signals::{BackendSignals, publishes_signals},
};

pub use health::{Failure, Health, ProbeKind};
use health::{Outlier, ProbeHealth, combined};

/// KV-cache use that counts as full: vLLM and SGLang start preempting running sequences
/// (recompute or swap) before the cache is exhausted, so latency falls off a cliff around 90 %,
/// not at 100 %.
pub const KV_FULL: f64 = 0.9;

/// Signals are trusted for this many scrape intervals: one missed scrape is normal, three in a
/// row means the numbers describe a past that no longer holds.
pub const STALE_AFTER_SCRAPES: u32 = 3;

/// Weight of the newest sample in the time-to-first-byte average: about the last ten requests.
const TTFT_EWMA_WEIGHT: f64 = 0.2;

pub struct Pool {
    backends: Vec<Member>,
    routes: ArcSwap<Routes>,
    /// Writer side of `routes`: models found by discovery, per backend. Held while a new
    /// table is built, so two discoveries cannot publish tables that each miss the other.
    discovered: Mutex<Vec<Vec<String>>>,
    health: HealthChecks,
    stale_after: Duration,
}

/// One backend: what the config fixed, plus its live state.
struct Member {
    id: Arc<str>,
    kind: BackendKind,
    slots: u32,
    capacity: u32,
    /// `None` when the models come from discovery.
    declared: Option<Vec<String>>,
    drained: AtomicBool,
    in_flight: Arc<AtomicU32>,
    state: Mutex<MemberState>,
}

#[derive(Clone, Copy, Default)]
struct MemberState {
    signals: Option<(BackendSignals, Instant)>,
    liveness: ProbeHealth,
    deep: ProbeHealth,
    outlier: Outlier,
    ttft_ewma: Option<f64>,
}

/// Which backends serve each model.
#[derive(Debug, Default)]
struct Routes {
    by_model: BTreeMap<String, Vec<BackendIdx>>,
}

/// The relay's own count of requests at a backend, held for as long as a request is.
#[must_use = "the request counts as in flight only while this guard lives"]
#[derive(Debug)]
pub struct InFlight {
    counter: Arc<AtomicU32>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Relaxed: the count is a load hint, ordered with nothing else.
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A change of a backend's overall health, for the caller to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthFlip {
    pub probe: ProbeKind,
    pub from: Health,
    pub to: Health,
}

/// One backend, for metrics and the region report.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendView {
    pub idx: BackendIdx,
    pub id: Arc<str>,
    pub kind: BackendKind,
    pub models: Vec<String>,
    /// Liveness and deep probe combined; each is also given on its own.
    pub health: Health,
    pub liveness: Health,
    pub deep: Health,
    /// Whether `pick` may choose it now.
    pub available: bool,
    pub drained: bool,
    /// Time left of a passive ejection.
    pub ejected_for: Option<Duration>,
    /// Time left of an overload pause (`Retry-After`).
    pub paused_for: Option<Duration>,
    pub in_flight: u32,
    pub score: f64,
    /// The last signals scraped, stale or not (see `signal_age`).
    pub signals: Option<BackendSignals>,
    pub signal_age: Option<Duration>,
    pub consecutive_failures: u32,
    pub ttft_ewma: Option<Duration>,
}

/// The region's load, for shedding and for the report to the DNS tier.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionLoad {
    /// Capacity-weighted load of the available backends, each capped at 1; 1 when none is.
    pub saturation: f64,
    /// Nominal capacity of every configured backend.
    pub capacity_units: u64,
    /// `Σ capacity · healthy · fresh · clamp(1 − s)`.
    pub headroom_units: f64,
    /// `headroom_units / capacity_units` (0 without capacity).
    pub headroom_fraction: f64,
    /// Sorted by model id.
    pub models: Vec<ModelLoad>,
}

/// One model's share of [`RegionLoad`]; a backend serving several models counts in each.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelLoad {
    pub model: String,
    /// Backends serving it that may take new work.
    pub healthy_backends: u32,
    pub total_backends: u32,
    pub saturation: f64,
    pub capacity_units: u64,
    pub headroom_units: f64,
    pub headroom_fraction: f64,
}

/// What one lock of a backend yields: enough for every decision about it.
#[derive(Clone, Copy, Debug)]
struct Reading {
    health: Health,
    available: bool,
    in_flight: u32,
    score: f64,
    /// Signals recent enough to count, or a kind that has none (in-flight is always fresh).
    fresh: bool,
}

impl Pool {
    pub fn new(config: &RelayConfig) -> Pool {
        let backends: Vec<Member> = config
            .backends
            .iter()
            .map(|backend| Member {
                id: backend.id.clone(),
                kind: backend.kind,
                slots: backend.slots,
                capacity: backend.capacity,
                declared: match &backend.models {
                    ModelSource::Declared(models) => Some(models.clone()),
                    ModelSource::Discover => None,
                },
                drained: AtomicBool::new(backend.drained),
                in_flight: Arc::new(AtomicU32::new(0)),
                state: Mutex::new(MemberState::default()),
            })
            .collect();
        let discovered = vec![Vec::new(); backends.len()];
        let routes = Routes::build(&backends, &discovered);
        Pool {
            backends,
            routes: ArcSwap::from_pointee(routes),
            discovered: Mutex::new(discovered),
            health: config.health,
            stale_after: config.scrape_interval.saturating_mul(STALE_AFTER_SCRAPES),
        }
    }

    /// Power of two choices among the available backends serving `model`, minus `exclude`
    /// (those a retry already tried): two distinct candidates drawn from `seed`, the lower load
    /// score wins, a tie goes to fewer in-flight requests. `None` when no backend can take it.
    pub fn pick(
        &self,
        model: &str,
        exclude: &[BackendIdx],
        seed: u64,
        now: Instant,
    ) -> Option<BackendIdx> {
        let routes = self.routes.load();
        let candidates: Vec<(BackendIdx, Reading)> = routes
            .by_model
            .get(model)?
            .iter()
            .filter(|b| !exclude.contains(b))
            .filter_map(|&b| {
                let reading = self.read(b, now)?;
                reading.available.then_some((b, reading))
            })
            .collect();
        let n = candidates.len() as u64;
        if n <= 1 {
            return candidates.first().map(|&(b, _)| b);
        }
        let mut rng = SplitMix64(seed);
        let first = rng.next() % n;
        let second = (first + 1 + rng.next() % (n - 1)) % n;
        let (a, ra) = *candidates.get(usize::try_from(first).ok()?)?;
        let (b, rb) = *candidates.get(usize::try_from(second).ok()?)?;
        let b_wins = rb.score < ra.score || (rb.score == ra.score && rb.in_flight < ra.in_flight);
        Some(if b_wins { b } else { a })
    }

    /// Whether any backend serves `model`, whatever its health: tells "unknown model" (404)
    /// from "no capacity" (503) apart.
    pub fn serves(&self, model: &str) -> bool {
        self.routes.load().by_model.contains_key(model)
    }

    /// Every model any backend serves, sorted.
    pub fn models(&self) -> Vec<String> {
        self.routes.load().by_model.keys().cloned().collect()
    }

    /// The models one backend serves: declared ones in config order, discovered ones sorted.
    pub fn models_of(&self, b: BackendIdx) -> Vec<String> {
        let Some(member) = self.member(b) else {
            return Vec::new();
        };
        match &member.declared {
            Some(models) => models.clone(),
            None => lock(&self.discovered)
                .get(b.get())
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Counts a request against `b` until the guard drops.
    pub fn begin(&self, b: BackendIdx) -> InFlight {
        let counter = match self.member(b) {
            Some(member) => member.in_flight.clone(),
            // Indices come from this pool's own config; a stray one must not panic the
            // request path, so it counts against nothing.
            None => Arc::new(AtomicU32::new(0)),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight { counter }
    }

    pub fn record_success(&self, b: BackendIdx, first_byte: Duration, now: Instant) {
        let Some(member) = self.member(b) else { return };
        let mut state = lock(&member.state);
        state.outlier.record_success(now);
        let sample = first_byte.as_secs_f64();
        state.ttft_ewma = Some(match state.ttft_ewma {
            Some(avg) => avg + TTFT_EWMA_WEIGHT * (sample - avg),
            None => sample,
        });
    }

    /// Passive outlier detection: `eject_after_failures` consecutive failures eject the backend
    /// for `base_ejection × 2^(n−1)` (capped at `max_ejection`), `n` counting ejections since
    /// its last success. An overload (429/503) counts as at most one failure and keeps the
    /// backend out until its `Retry-After`. Returns the ejection length if this ejected it.
    pub fn record_failure(
        &self,
        b: BackendIdx,
        failure: Failure,
        now: Instant,
    ) -> Option<Duration> {
        let member = self.member(b)?;
        lock(&member.state)
            .outlier
            .record_failure(failure, now, &self.health)
    }

    pub fn set_drained(&self, b: BackendIdx, drained: bool) {
        if let Some(member) = self.member(b) {
            member.drained.store(drained, Ordering::Relaxed);
        }
    }

    pub fn update_signals(&self, b: BackendIdx, signals: BackendSignals, now: Instant) {
        if let Some(member) = self.member(b) {
            lock(&member.state).signals = Some((signals, now));
        }
    }

    /// Models found by discovery (`GET /v1/models`). Ignored for backends whose models the
    /// config declares: the operator's list wins. Returns whether the list changed.
    pub fn update_models(&self, b: BackendIdx, mut models: Vec<String>) -> bool {
        let Some(member) = self.member(b) else {
            return false;
        };
        if member.declared.is_some() {
            return false;
        }
        models.sort();
        models.dedup();
        let mut discovered = lock(&self.discovered);
        let Some(slot) = discovered.get_mut(b.get()) else {
            return false;
        };
        if *slot == models {
            return false;
        }
        *slot = models;
        self.routes
            .store(Arc::new(Routes::build(&self.backends, &discovered)));
        true
    }

    /// One probe result, through that probe kind's hysteresis. Returns the flip of the
    /// backend's overall health, if this caused one. Hysteresis counts results, not time, so
    /// `now` is unused today; it stays in the signature so time-based rules need no new API.
    pub fn record_probe(
        &self,
        b: BackendIdx,
        probe: ProbeKind,
        ok: bool,
        _now: Instant,
    ) -> Option<HealthFlip> {
        let member = self.member(b)?;
        let mut state = lock(&member.state);
        let from = combined(state.liveness.state, state.deep.state);
        match probe {
            ProbeKind::Liveness => state.liveness.record(ok, &self.health),
            ProbeKind::Deep => state.deep.record(ok, &self.health),
        };
        let to = combined(state.liveness.state, state.deep.state);
        (from != to).then_some(HealthFlip { probe, from, to })
    }

    /// What one probe kind currently says (the prober probes a down backend more often).
    pub fn probe_health(&self, b: BackendIdx, probe: ProbeKind) -> Health {
        self.member(b).map_or(Health::Unknown, |member| {
            let state = lock(&member.state);
            match probe {
                ProbeKind::Liveness => state.liveness.state,
                ProbeKind::Deep => state.deep.state,
            }
        })
    }

    /// The load score (see the module doc); `f64::INFINITY` for an unknown index.
    pub fn load_score(&self, b: BackendIdx, now: Instant) -> f64 {
        self.read(b, now).map_or(f64::INFINITY, |r| r.score)
    }

    pub fn views(&self, now: Instant) -> Vec<BackendView> {
        self.backends
            .iter()
            .zip(0u16..)
            .map(|(member, i)| {
                let idx = BackendIdx(i);
                let state = *lock(&member.state);
                let reading = member.reading(&state, now, self.stale_after);
                let left = |until: Option<Instant>| {
                    until
                        .map(|t| t.saturating_duration_since(now))
                        .filter(|d| !d.is_zero())
                };
                BackendView {
                    idx,
                    id: member.id.clone(),
                    kind: member.kind,
                    models: self.models_of(idx),
                    health: reading.health,
                    liveness: state.liveness.state,
                    deep: state.deep.state,
                    available: reading.available,
                    drained: member.drained.load(Ordering::Relaxed),
                    ejected_for: left(state.outlier.ejected_until),
                    paused_for: left(state.outlier.paused_until),
                    in_flight: reading.in_flight,
                    score: reading.score,
                    signals: state.signals.map(|(signals, _)| signals),
                    signal_age: state
                        .signals
                        .map(|(_, at)| now.saturating_duration_since(at)),
                    consecutive_failures: state.outlier.consecutive_failures,
                    ttft_ewma: state
                        .ttft_ewma
                        .and_then(|secs| Duration::try_from_secs_f64(secs).ok()),
                }
            })
            .collect()
    }

    /// Saturation and headroom (design §4): per backend `h = healthy · fresh · clamp(1 − s)`,
    /// summed weighted by capacity, for the region and for each model.
    pub fn region_load(&self, now: Instant) -> RegionLoad {
        let readings: Vec<Option<Reading>> = (0u16..)
            .take(self.backends.len())
            .map(|i| self.read(BackendIdx(i), now))
            .collect();
        let tally = |backends: &mut dyn Iterator<Item = BackendIdx>| {
            let mut tally = Tally::default();
            for b in backends {
                if let (Some(member), Some(Some(reading))) = (self.member(b), readings.get(b.get()))
                {
                    tally.add(member.capacity, reading);
                }
            }
            tally
        };
        let region = tally(&mut (0u16..).take(self.backends.len()).map(BackendIdx));
        let routes = self.routes.load();
        let models = routes
            .by_model
            .iter()
            .map(|(model, backends)| {
                let t = tally(&mut backends.iter().copied());
                ModelLoad {
                    model: model.clone(),
                    healthy_backends: t.healthy,
                    total_backends: t.total,
                    saturation: t.saturation(),
                    capacity_units: t.capacity,
                    headroom_units: t.headroom,
                    headroom_fraction: t.headroom_fraction(),
                }
            })
            .collect();
        RegionLoad {
            saturation: region.saturation(),
            capacity_units: region.capacity,
            headroom_units: region.headroom,
            headroom_fraction: region.headroom_fraction(),
            models,
        }
    }

    fn member(&self, b: BackendIdx) -> Option<&Member> {
        self.backends.get(b.get())
    }

    fn read(&self, b: BackendIdx, now: Instant) -> Option<Reading> {
        let member = self.member(b)?;
        let state = *lock(&member.state);
        Some(member.reading(&state, now, self.stale_after))
    }
}

impl Member {
    fn reading(&self, state: &MemberState, now: Instant, stale_after: Duration) -> Reading {
        let health = combined(state.liveness.state, state.deep.state);
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let fresh_signals = state
            .signals
            .filter(|(_, at)| now.saturating_duration_since(*at) <= stale_after)
            .map(|(signals, _)| signals);
        Reading {
            health,
            available: !self.drained.load(Ordering::Relaxed)
                && health != Health::Down
                && !state.outlier.is_out(now),
            in_flight,
            score: load_score(self.slots, in_flight, fresh_signals.as_ref()),
            fresh: fresh_signals.is_some() || !publishes_signals(self.kind),
        }
    }
}

/// The score of the module doc, from numbers already judged fresh.
fn load_score(slots: u32, in_flight: u32, signals: Option<&BackendSignals>) -> f64 {
    let slots = f64::from(slots.max(1));
    let mut demand = f64::from(in_flight);
    let mut score = 0.0_f64;
    if let Some(signals) = signals {
        let at_backend = match (signals.running, signals.waiting) {
            (None, None) => 0.0,
            (running, waiting) => running.unwrap_or(0.0) + waiting.unwrap_or(0.0),
        };
        demand = demand.max(at_backend);
        if let Some(kv) = signals.kv_usage {
            score = score.max(kv / KV_FULL);
        }
        if let (Some(busy), Some(total)) = (signals.slots_busy, signals.slots_total)
            && total > 0.0
        {
            score = score.max(busy / total);
        }
    }
    // `f64::max` drops a NaN operand, so a bad signal can never poison the comparison.
    score.max(demand / slots)
}

/// Capacity-weighted sums over a set of backends.
#[derive(Default)]
struct Tally {
    total: u32,
    healthy: u32,
    capacity: u64,
    available_capacity: u64,
    weighted_load: f64,
    headroom: f64,
}

impl Tally {
    fn add(&mut self, capacity: u32, reading: &Reading) {
        let capacity_f = f64::from(capacity);
        self.total += 1;
        self.capacity += u64::from(capacity);
        if reading.available {
            self.healthy += 1;
            self.available_capacity += u64::from(capacity);
            self.weighted_load += capacity_f * reading.score.clamp(0.0, 1.0);
            if reading.fresh {
                self.headroom += capacity_f * (1.0 - reading.score).clamp(0.0, 1.0);
            }
        }
    }

    fn saturation(&self) -> f64 {
        if self.available_capacity == 0 {
            return 1.0;
        }
        self.weighted_load / self.available_capacity as f64
    }

    fn headroom_fraction(&self) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        self.headroom / self.capacity as f64
    }
}

impl Routes {
    fn build(backends: &[Member], discovered: &[Vec<String>]) -> Routes {
        let mut by_model: BTreeMap<String, Vec<BackendIdx>> = BTreeMap::new();
        for (i, member) in (0u16..).zip(backends) {
            let models = match &member.declared {
                Some(models) => models.as_slice(),
                None => discovered
                    .get(usize::from(i))
                    .map_or(&[][..], Vec::as_slice),
            };
            for model in models {
                let serving = by_model.entry(model.clone()).or_default();
                if !serving.contains(&BackendIdx(i)) {
                    serving.push(BackendIdx(i));
                }
            }
        }
        Routes { by_model }
    }
}

/// The state behind these mutexes is plain values, each update complete in itself, so a panic
/// elsewhere while one was held leaves nothing half-written: poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Deterministic draws from the caller's seed (Steele et al.'s SplitMix64): `pick` stays a
/// pure function of its arguments, and the proxy feeds it whatever randomness it likes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
