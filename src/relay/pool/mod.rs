//! The region's backends as the relay sees them: who serves which model, who may take new work,
//! how loaded each one is, and which one a request goes to.
//!
//! [`Pool`] owns that state and the decisions on it — power-of-two-choices selection on a load
//! score, active-probe hysteresis, passive outlier ejection, the region's saturation and
//! headroom (design §4–§5) — and the backend set itself, which [`Pool::reconcile`] changes
//! while the relay serves. It does no IO and reads no clock: the proxy and [`super::probe`]
//! report what they saw, with `now`, and read decisions back. It must not learn about HTTP,
//! sockets or metric formats ([`super::signals`] turns those into numbers first).
//!
//! # Sharing
//!
//! One `Arc<Pool>` is read on every request (`pick`, `begin`) and written by the probe tasks a
//! few times a second per backend, so the two sides must not wait on each other:
//!
//! - in-flight counts are per-backend atomics, touched without any lock;
//! - everything else a backend has learnt (signals, probe and ejection state) sits behind its
//!   own `std::sync::Mutex`, held only to copy or overwrite a few plain fields — parsing and IO
//!   happen before the lock is taken, so no holder ever waits inside it;
//! - what changes only on reconfiguration or model discovery — which backends exist, their
//!   config, which are removed, the model → backends routing table — is one immutable
//!   [`Roster`], rebuilt whole and published through an `ArcSwap`: `pick` sees either the old
//!   or the new roster, never a routing table that names a backend the member list lacks.
//!
//! Why not one `ArcSwap` of the whole per-backend state: its writers (probe results, passive
//! failures from many concurrent requests) read-modify-write counters, which a swap would turn
//! into compare-and-swap retry loops that clone the state each time; a short uncontended mutex
//! per backend is cheaper and keeps each update obviously atomic. Different backends never
//! share a lock.
//!
//! # Changing the backend set
//!
//! [`Pool::reconcile`] matches a new backend list against the live members by `id`. A
//! [`BackendIdx`] names one member for as long as it exists: requests, probes and metrics hold
//! indices across a reconfiguration, so an index is never shifted or handed to another backend
//! while anything may still use it. A removed member (or the old half of a changed one) becomes
//! a *tombstone*: never picked, not counted in the region's load or model list, but still
//! found by its index, so the streams it carries finish and their [`InFlight`] guards and
//! late failures land on it harmlessly. Tombstones stay in [`Pool::views`] (`removed: true`)
//! until their last request ends. Their index is only taken again once all 65 536 are used,
//! and then only one whose in-flight count is zero.
//!
//! # Load score
//!
//! Per backend `s = max(demand / slots, kv / KV_FULL, slots_busy / slots_total)`. This is
//! design §4's `max(waiting/Q, kv/KV, inflight/slots)` with `Q = slots`: `(running + waiting)
//! / slots` is never below `waiting / slots`, so the queue term is folded into the demand term.
//! `s = 1` is a full batch; above 1 requests queue.
//!
//! `demand` is the relay's own in-flight count *now* plus the backend's load from elsewhere
//! (other relays, direct clients): its scraped `running + waiting` minus the relay's in-flight
//! count *when it was scraped*. Taking the plain maximum of the live count and the scraped one
//! instead lets a scrape up to one interval old outvote the live count: under steady load every
//! backend looks as busy as its busiest recent moment, ties send every new request to one
//! backend, and the region looks saturated at half its real load (seen at 128 concurrent
//! streams over two backends). KV use and busy slots are scaled the same way, by the change of
//! our own share since the scrape. Signals older than [`STALE_AFTER_SCRAPES`] scrape intervals
//! are ignored and the score falls back to in-flight alone.

mod health;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::relay::{
    config::model::{Backend, BackendIdx, BackendKind, HealthChecks, ModelSource, RelayConfig},
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

/// Indices a pool can hand out (`BackendIdx` is a `u16`).
const MAX_MEMBERS: usize = 1 << 16;

pub struct Pool {
    roster: ArcSwap<Roster>,
    /// Held by whoever builds the next roster (reconcile, discovery), so two writers cannot
    /// publish rosters that each miss the other's change.
    writer: Mutex<()>,
    /// Bumped after every reconcile that changed anything: the prober follows it.
    changes: watch::Sender<u64>,
    /// Tells apart members that had the same index; never reused.
    next_incarnation: AtomicU64,
    /// Indices this pool hands out: [`MAX_MEMBERS`], lower only in tests of index reuse.
    index_limit: usize,
    health: HealthChecks,
    stale_after: Duration,
}

/// Everything that changes only when the backend set or a model list does, published whole.
struct Roster {
    /// Indexed by [`BackendIdx`]; tombstones included.
    slots: Vec<Slot>,
    /// Which live backends serve each model.
    by_model: BTreeMap<String, Vec<BackendIdx>>,
}

#[derive(Clone)]
struct Slot {
    /// What the config file says about it; swapped only when just its `drained` changed.
    config: Arc<Backend>,
    member: Arc<Member>,
    removed: bool,
}

/// One backend's live state.
struct Member {
    incarnation: u64,
    /// The operator's current say: from the file, or from the admin API since.
    drained: AtomicBool,
    in_flight: Arc<AtomicU32>,
    /// Models found by discovery; written only under `Pool::writer`.
    discovered: Mutex<Vec<String>>,
    state: Mutex<MemberState>,
}

#[derive(Clone, Copy, Default)]
struct MemberState {
    /// The last scrape, when it was taken, and the relay's own in-flight count at that moment.
    signals: Option<(BackendSignals, Instant, u32)>,
    liveness: ProbeHealth,
    deep: ProbeHealth,
    outlier: Outlier,
    ttft_ewma: Option<f64>,
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

/// What [`Pool::reconcile`] did, by backend id, each list in the order of the new config (the
/// removed ones in index order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileSummary {
    pub added: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
    /// Replaced: the old member finishes its streams as a tombstone, a fresh one takes over.
    pub changed: Vec<Arc<str>>,
    /// Only `drained` changed in the file; the member keeps its state.
    pub drain_changed: Vec<Arc<str>>,
    /// Not added: every index is held by a live member or a tombstone still streaming.
    pub no_room: Vec<Arc<str>>,
}

impl ReconcileSummary {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.drain_changed.is_empty()
            && self.no_room.is_empty()
    }
}

/// A backend the prober must follow. `incarnation` tells a member from an earlier one that had
/// the same index.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveBackend {
    pub idx: BackendIdx,
    pub incarnation: u64,
    pub backend: Arc<Backend>,
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
    /// No longer configured: shown only while requests it carries are still running.
    pub removed: bool,
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
    /// Not removed, drained, found down by active probes or paused at its own request
    /// (429/503 with `Retry-After`): available but for a passive outlier ejection.
    live: bool,
    in_flight: u32,
    score: f64,
    /// Signals recent enough to count, or a kind that has none (in-flight is always fresh).
    fresh: bool,
}

impl Pool {
    pub fn new(config: &RelayConfig) -> Pool {
        Pool::with_index_limit(config, MAX_MEMBERS)
    }

    fn with_index_limit(config: &RelayConfig, index_limit: usize) -> Pool {
        let pool = Pool {
            roster: ArcSwap::from_pointee(Roster {
                slots: Vec::new(),
                by_model: BTreeMap::new(),
            }),
            writer: Mutex::new(()),
            changes: watch::Sender::new(0),
            next_incarnation: AtomicU64::new(0),
            index_limit: index_limit.min(MAX_MEMBERS),
            health: config.health,
            stale_after: config.scrape_interval.saturating_mul(STALE_AFTER_SCRAPES),
        };
        // The start-up set goes through the same path as every later change.
        let _ = pool.reconcile(&config.backends);
        pool
    }

    /// Makes the live backends those of `backends`, matched by `id` (a validated config has
    /// unique ids; a repeated one is ignored):
    ///
    /// - same config: kept with all its state;
    /// - only `drained` changed in the file: the member flips to the file's value and keeps its
    ///   state (a drain set through the admin API stays until the file's value changes);
    /// - anything else changed (URL, kind, models, slots, capacity): the old member becomes a
    ///   tombstone that finishes its streams, and a fresh one (health unknown, so usable at
    ///   once) takes the id;
    /// - new ids are added the same way; ids no longer there become tombstones.
    ///
    /// The member list and routing table of the result are published in one swap.
    pub fn reconcile(&self, backends: &[Backend]) -> ReconcileSummary {
        let _writer = lock(&self.writer);
        let current = self.roster.load_full();
        let mut slots = current.slots.clone();
        let mut summary = ReconcileSummary::default();
        let live: HashMap<&str, usize> = current
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| !slot.removed)
            .map(|(i, slot)| (&*slot.config.id, i))
            .collect();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut retired: Vec<usize> = Vec::new();
        let mut reused: HashSet<usize> = HashSet::new();
        let mut drain_flips: Vec<(Arc<Member>, bool)> = Vec::new();
        for backend in backends {
            if !seen.insert(&backend.id) {
                continue;
            }
            let existing = live.get(&*backend.id).copied();
            if let Some(i) = existing
                && let Some(slot) = slots.get_mut(i)
                && same_except_drained(&slot.config, backend)
            {
                if slot.config.drained != backend.drained {
                    drain_flips.push((slot.member.clone(), backend.drained));
                    summary.drain_changed.push(backend.id.clone());
                    slot.config = Arc::new(backend.clone());
                }
                continue;
            }
            let Some(free) = free_index(&current, slots.len(), self.index_limit, &reused) else {
                // With no index to give, a changed backend keeps running as it was.
                summary.no_room.push(backend.id.clone());
                continue;
            };
            let slot = Slot {
                config: Arc::new(backend.clone()),
                member: Arc::new(Member::new(
                    self.next_incarnation.fetch_add(1, Ordering::Relaxed),
                    backend.drained,
                )),
                removed: false,
            };
            if free == slots.len() {
                slots.push(slot);
            } else if let Some(tombstone) = slots.get_mut(free) {
                reused.insert(free);
                *tombstone = slot;
            }
            match existing {
                Some(old) => {
                    retired.push(old);
                    summary.changed.push(backend.id.clone());
                }
                None => summary.added.push(backend.id.clone()),
            }
        }
        for (i, slot) in current.slots.iter().enumerate() {
            if !slot.removed && !seen.contains(&*slot.config.id) {
                retired.push(i);
                summary.removed.push(slot.config.id.clone());
            }
        }
        if summary.added.is_empty()
            && summary.changed.is_empty()
            && summary.removed.is_empty()
            && summary.drain_changed.is_empty()
        {
            return summary;
        }
        for i in retired {
            if let Some(slot) = slots.get_mut(i) {
                slot.removed = true;
            }
        }
        let by_model = routes(&slots);
        self.roster.store(Arc::new(Roster { slots, by_model }));
        for (member, drained) in drain_flips {
            member.drained.store(drained, Ordering::Relaxed);
        }
        self.changes.send_modify(|generation| *generation += 1);
        summary
    }

    /// Ticks after every reconcile that changed something: whoever follows the live set (the
    /// prober) reads [`Pool::live`] again.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The live members, in index order.
    /// Whether a live, undrained backend that publishes load signals has never been scraped:
    /// until then its headroom counts as zero (unknown load), so a report would understate
    /// the region.
    pub fn awaiting_first_scrape(&self) -> bool {
        indexed(&self.roster.load().slots).any(|(_, slot)| {
            !slot.removed
                && !slot.member.drained.load(Ordering::Relaxed)
                && publishes_signals(slot.config.kind)
                && lock(&slot.member.state).signals.is_none()
        })
    }

    pub fn live(&self) -> Vec<LiveBackend> {
        indexed(&self.roster.load().slots)
            .filter(|(_, slot)| !slot.removed)
            .map(|(idx, slot)| LiveBackend {
                idx,
                incarnation: slot.member.incarnation,
                backend: slot.config.clone(),
            })
            .collect()
    }

    /// The live backend called `id`.
    pub fn find(&self, id: &str) -> Option<BackendIdx> {
        indexed(&self.roster.load().slots)
            .find(|(_, slot)| !slot.removed && &*slot.config.id == id)
            .map(|(idx, _)| idx)
    }

    /// The config of backend `b`, tombstones included (a stream still running on a removed
    /// backend needs its id and URL).
    pub fn backend(&self, b: BackendIdx) -> Option<Arc<Backend>> {
        self.roster
            .load()
            .slots
            .get(b.get())
            .map(|slot| slot.config.clone())
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
        self.pick_among(model, exclude, seed, now, |reading| reading.available)
    }

    /// The last resort for a request no backend has seen yet, when [`Pool::pick`] has none
    /// left: the same choice among the backends held out only by passive outlier detection
    /// (ejected, or paused after a 429/503). Ejection is a guess from recent failures, and the
    /// backend may well be back; trying it costs one connection attempt, while not trying
    /// turns a request that could have been served into a 502. Backends that active probes
    /// found down, drained or removed ones are never picked.
    pub fn pick_held_out(
        &self,
        model: &str,
        exclude: &[BackendIdx],
        seed: u64,
        now: Instant,
    ) -> Option<BackendIdx> {
        self.pick_among(model, exclude, seed, now, |reading| reading.live)
    }

    fn pick_among(
        &self,
        model: &str,
        exclude: &[BackendIdx],
        seed: u64,
        now: Instant,
        eligible: impl Fn(&Reading) -> bool,
    ) -> Option<BackendIdx> {
        let roster = self.roster.load();
        let candidates: Vec<(BackendIdx, Reading)> = roster
            .by_model
            .get(model)?
            .iter()
            .filter(|b| !exclude.contains(b))
            .filter_map(|&b| {
                let reading = self.reading(roster.slots.get(b.get())?, now);
                eligible(&reading).then_some((b, reading))
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

    /// Whether any live backend serves `model`, whatever its health: tells "unknown model"
    /// (404) from "no capacity" (503) apart.
    pub fn serves(&self, model: &str) -> bool {
        self.roster.load().by_model.contains_key(model)
    }

    /// Every model a live backend serves, sorted.
    pub fn models(&self) -> Vec<String> {
        self.roster.load().by_model.keys().cloned().collect()
    }

    /// The models one backend serves: declared ones in config order, discovered ones sorted.
    pub fn models_of(&self, b: BackendIdx) -> Vec<String> {
        self.with_slot(b, models_of).unwrap_or_default()
    }

    /// Counts a request against `b` until the guard drops.
    pub fn begin(&self, b: BackendIdx) -> InFlight {
        let counter = self
            .with_slot(b, |slot| slot.member.in_flight.clone())
            // Indices come from this pool; a stray one must not panic the request path, so it
            // counts against nothing.
            .unwrap_or_else(|| Arc::new(AtomicU32::new(0)));
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight { counter }
    }

    pub fn record_success(&self, b: BackendIdx, first_byte: Duration, now: Instant) {
        self.with_slot(b, |slot| {
            let mut state = lock(&slot.member.state);
            state.outlier.record_success(now);
            let sample = first_byte.as_secs_f64();
            state.ttft_ewma = Some(match state.ttft_ewma {
                Some(avg) => avg + TTFT_EWMA_WEIGHT * (sample - avg),
                None => sample,
            });
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
        self.with_slot(b, |slot| {
            lock(&slot.member.state)
                .outlier
                .record_failure(failure, now, &self.health)
        })?
    }

    pub fn set_drained(&self, b: BackendIdx, drained: bool) {
        self.with_slot(b, |slot| {
            slot.member.drained.store(drained, Ordering::Relaxed)
        });
    }

    pub fn update_signals(&self, b: BackendIdx, signals: BackendSignals, now: Instant) {
        self.update_signals_scraped(b, signals, now, 0);
    }

    /// The relay's own in-flight count at a backend, e.g. taken just before a scrape is sent.
    pub fn in_flight(&self, b: BackendIdx) -> u32 {
        self.with_slot(b, |slot| slot.member.in_flight.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Like [`Pool::update_signals`], with our in-flight count from when the scrape was sent.
    /// The backend counted its load somewhere between sending and now; the larger of our two
    /// counts is taken as our share then, so a burst of our own requests finishing meanwhile
    /// is never mistaken for load from elsewhere (which would shed load that is not there).
    pub fn update_signals_scraped(
        &self,
        b: BackendIdx,
        signals: BackendSignals,
        now: Instant,
        ours_when_sent: u32,
    ) {
        self.with_slot(b, |slot| {
            let ours = slot
                .member
                .in_flight
                .load(Ordering::Relaxed)
                .max(ours_when_sent);
            lock(&slot.member.state).signals = Some((signals, now, ours));
        });
    }

    /// Models found by discovery (`GET /v1/models`). Ignored for backends whose models the
    /// config declares (the operator's list wins) and for removed ones. Returns whether the
    /// list changed.
    pub fn update_models(&self, b: BackendIdx, mut models: Vec<String>) -> bool {
        models.sort();
        models.dedup();
        let _writer = lock(&self.writer);
        // Read under the writer lock: a reconcile cannot slip in between this roster and the
        // one built from it.
        let current = self.roster.load_full();
        let Some(slot) = current.slots.get(b.get()) else {
            return false;
        };
        if slot.removed || slot.config.models != ModelSource::Discover {
            return false;
        }
        {
            let mut discovered = lock(&slot.member.discovered);
            if *discovered == models {
                return false;
            }
            *discovered = models;
        }
        let slots = current.slots.clone();
        let by_model = routes(&slots);
        self.roster.store(Arc::new(Roster { slots, by_model }));
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
        self.with_slot(b, |slot| {
            let mut state = lock(&slot.member.state);
            let from = combined(state.liveness.state, state.deep.state);
            match probe {
                ProbeKind::Liveness => state.liveness.record(ok, &self.health),
                ProbeKind::Deep => state.deep.record(ok, &self.health),
            };
            let to = combined(state.liveness.state, state.deep.state);
            (from != to).then_some(HealthFlip { probe, from, to })
        })?
    }

    /// What one probe kind currently says (the prober probes a down backend more often).
    pub fn probe_health(&self, b: BackendIdx, probe: ProbeKind) -> Health {
        self.with_slot(b, |slot| {
            let state = lock(&slot.member.state);
            match probe {
                ProbeKind::Liveness => state.liveness.state,
                ProbeKind::Deep => state.deep.state,
            }
        })
        .unwrap_or(Health::Unknown)
    }

    /// The load score (see the module doc); `f64::INFINITY` for an unknown index.
    pub fn load_score(&self, b: BackendIdx, now: Instant) -> f64 {
        self.with_slot(b, |slot| self.reading(slot, now).score)
            .unwrap_or(f64::INFINITY)
    }

    /// Every live backend, and the tombstones still carrying requests, in index order.
    pub fn views(&self, now: Instant) -> Vec<BackendView> {
        let roster = self.roster.load();
        indexed(&roster.slots)
            .filter_map(|(idx, slot)| {
                let member = &slot.member;
                let state = *lock(&member.state);
                let reading = self.reading_of(slot, &state, now);
                if slot.removed && reading.in_flight == 0 {
                    return None;
                }
                let left = |until: Option<Instant>| {
                    until
                        .map(|t| t.saturating_duration_since(now))
                        .filter(|d| !d.is_zero())
                };
                Some(BackendView {
                    idx,
                    id: slot.config.id.clone(),
                    kind: slot.config.kind,
                    models: models_of(slot),
                    health: reading.health,
                    liveness: state.liveness.state,
                    deep: state.deep.state,
                    available: reading.available,
                    drained: member.drained.load(Ordering::Relaxed),
                    removed: slot.removed,
                    ejected_for: left(state.outlier.ejected_until),
                    paused_for: left(state.outlier.paused_until),
                    in_flight: reading.in_flight,
                    score: reading.score,
                    signals: state.signals.map(|(signals, _, _)| signals),
                    signal_age: state
                        .signals
                        .map(|(_, at, _)| now.saturating_duration_since(at)),
                    consecutive_failures: state.outlier.consecutive_failures,
                    ttft_ewma: state
                        .ttft_ewma
                        .and_then(|secs| Duration::try_from_secs_f64(secs).ok()),
                })
            })
            .collect()
    }

    /// Saturation and headroom (design §4): per live backend `h = healthy · fresh ·
    /// clamp(1 − s)`, summed weighted by capacity, for the region and for each model.
    pub fn region_load(&self, now: Instant) -> RegionLoad {
        let roster = self.roster.load();
        let readings: Vec<Option<(u32, Reading)>> = roster
            .slots
            .iter()
            .map(|slot| (!slot.removed).then(|| (slot.config.capacity, self.reading(slot, now))))
            .collect();
        let tally = |backends: &mut dyn Iterator<Item = usize>| {
            let mut tally = Tally::default();
            for b in backends {
                if let Some(Some((capacity, reading))) = readings.get(b) {
                    tally.add(*capacity, reading);
                }
            }
            tally
        };
        let region = tally(&mut (0..readings.len()));
        let models = roster
            .by_model
            .iter()
            .map(|(model, backends)| {
                let t = tally(&mut backends.iter().map(|b| b.get()));
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

    fn with_slot<R>(&self, b: BackendIdx, f: impl FnOnce(&Slot) -> R) -> Option<R> {
        self.roster.load().slots.get(b.get()).map(f)
    }

    fn reading(&self, slot: &Slot, now: Instant) -> Reading {
        let state = *lock(&slot.member.state);
        self.reading_of(slot, &state, now)
    }

    fn reading_of(&self, slot: &Slot, state: &MemberState, now: Instant) -> Reading {
        let health = combined(state.liveness.state, state.deep.state);
        let in_flight = slot.member.in_flight.load(Ordering::Relaxed);
        let fresh_signals = state
            .signals
            .filter(|(_, at, _)| now.saturating_duration_since(*at) <= self.stale_after)
            .map(|(signals, _, ours_then)| Scraped { signals, ours_then });
        let live = !slot.removed
            && !slot.member.drained.load(Ordering::Relaxed)
            && health != Health::Down
            && !state.outlier.is_paused(now);
        Reading {
            health,
            available: live && !state.outlier.is_out(now),
            live,
            in_flight,
            score: load_score(slot.config.slots, in_flight, fresh_signals.as_ref()),
            fresh: fresh_signals.is_some() || !publishes_signals(slot.config.kind),
        }
    }
}

impl Member {
    fn new(incarnation: u64, drained: bool) -> Member {
        Member {
            incarnation,
            drained: AtomicBool::new(drained),
            in_flight: Arc::new(AtomicU32::new(0)),
            discovered: Mutex::new(Vec::new()),
            state: Mutex::new(MemberState::default()),
        }
    }
}

/// Whether `new` is `old` with at most `drained` changed: the member can keep its state.
fn same_except_drained(old: &Backend, new: &Backend) -> bool {
    // Destructured so that a new `Backend` field must be sorted into one side or the other.
    let Backend {
        id,
        base_url,
        kind,
        models,
        slots,
        capacity,
        drained: _,
    } = new;
    old.id == *id
        && old.base_url == *base_url
        && old.kind == *kind
        && old.models == *models
        && old.slots == *slots
        && old.capacity == *capacity
}

/// The index a new member gets: the next unused one, or once all are used, a tombstone of the
/// current roster whose last request has ended (never one this reconcile already took).
fn free_index(
    current: &Roster,
    len: usize,
    limit: usize,
    reused: &HashSet<usize>,
) -> Option<usize> {
    if len < limit {
        return Some(len);
    }
    indexed(&current.slots)
        .find(|(b, slot)| {
            slot.removed
                && slot.member.in_flight.load(Ordering::Relaxed) == 0
                && !reused.contains(&b.get())
        })
        .map(|(b, _)| b.get())
}

/// Slots with their indices. (`enumerate` rather than a `0u16..` zip: a range at its last value
/// would overflow computing the next one.)
fn indexed(slots: &[Slot]) -> impl Iterator<Item = (BackendIdx, &Slot)> {
    slots
        .iter()
        .enumerate()
        .filter_map(|(i, slot)| Some((BackendIdx(u16::try_from(i).ok()?), slot)))
}

fn models_of(slot: &Slot) -> Vec<String> {
    match &slot.config.models {
        ModelSource::Declared(models) => models.clone(),
        ModelSource::Discover => lock(&slot.member.discovered).clone(),
    }
}

/// Which live backends serve each model.
fn routes(slots: &[Slot]) -> BTreeMap<String, Vec<BackendIdx>> {
    let mut by_model: BTreeMap<String, Vec<BackendIdx>> = BTreeMap::new();
    for (idx, slot) in indexed(slots) {
        if slot.removed {
            continue;
        }
        for model in models_of(slot) {
            let serving = by_model.entry(model).or_default();
            if !serving.contains(&idx) {
                serving.push(idx);
            }
        }
    }
    by_model
}
/// A fresh scrape and the relay's own in-flight count when it was taken.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scraped {
    pub(crate) signals: BackendSignals,
    pub(crate) ours_then: u32,
}

/// The score of the module doc, from numbers already judged fresh.
pub(crate) fn load_score(slots: u32, in_flight: u32, scraped: Option<&Scraped>) -> f64 {
    let slots = f64::from(slots.max(1));
    let ours_now = f64::from(in_flight);
    let mut demand = ours_now;
    let mut score = 0.0_f64;
    if let Some(Scraped { signals, ours_then }) = scraped {
        let ours_then = f64::from(*ours_then);
        let at_backend = match (signals.running, signals.waiting) {
            (None, None) => None,
            (running, waiting) => Some(running.unwrap_or(0.0) + waiting.unwrap_or(0.0)),
        };
        if let Some(at_backend) = at_backend {
            // `max(0.0)` also maps a NaN to 0: a bad signal never poisons the comparison.
            demand = ours_now + (at_backend - ours_then).max(0.0);
        }
        if let Some(kv) = signals.kv_usage {
            // KV use grows with running sequences: scale the scraped figure to today's demand.
            let kv_now = match at_backend {
                Some(then) if then > 0.0 => kv * demand / then,
                _ => kv,
            };
            score = score.max(kv_now / KV_FULL);
        }
        if let (Some(busy), Some(total)) = (signals.slots_busy, signals.slots_total)
            && total > 0.0
        {
            let busy_now = ours_now + (busy - ours_then).max(0.0);
            score = score.max(busy_now / total);
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
