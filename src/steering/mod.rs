//! The steering core: which region(s) a GSLB name answers with, for this client, right now.
//!
//! [`SteeringTable::build`] compiles the validated config, the GeoIP networks and the operator
//! state into per-policy data once per snapshot; [`decide`] is then a pure function of that
//! table and one query, the chain of design §3:
//!
//! 1. model eligibility (compiled into the candidate list) and endpoint family;
//! 2. ordering: client map (geo map / nearest), measured latency for the client's prefix
//!    (falling back to the client map), configured order, or a weighted draw over
//!    rate-limited weights ([`ramp`]);
//! 3. health filter, with fail-open / fail-closed;
//! 4. capacity spill-over: spilling regions go after every serving region that is not;
//! 5. cost: the cheapest serving candidate within the budget of the first moves to the front;
//! 6. the first N.
//!
//! It does no IO, reads no clock (`now` is passed in) and allocates only the answer list (and
//! a walk order for client-dependent or spilling policies) unless a trace was asked for.
//! Rendering records, ECS option handling and GeoIP lookups for the trace belong to the DNS
//! shell, not here.

pub mod client_map;
pub mod latency;
mod ordering;
pub mod ramp;
pub mod status;
pub mod trace;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    config::model::{
        AllUnhealthy, CostPreference, DnsConfig, Endpoints, LatencyFallback, RegionIdx,
        SteeringMode,
    },
    geo::{GeoMatch, LocatedNetworks},
    operator_state::OperatorState,
};

pub use client_map::{ClientMap, MapLookup, MapOrigin};
pub use latency::{LatencyLookup, LatencyTable, LatencyTableBuilder, LiveHealth};
pub use ordering::great_circle_km;
pub use ramp::WeightRamp;
pub use status::{
    Exclusion, Health, RegionLive, RegionStatus, region_statuses, region_statuses_live,
};
pub use trace::{CandidateState, CostTrace, FailOpenTier, MapTrace, Step, Trace};

use ordering::{GeoMapPreference, MAX_REACH, NearestPreference, WithinKm, weighted_permutation};
use status::status_of;

/// Index into [`DnsConfig::gslb`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyIdx(pub u32);

/// Which endpoint family the answer needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Want {
    /// An `A` query.
    V4,
    /// An `AAAA` query.
    V6,
    /// `ANY` or `CNAME`: any region with endpoints will do.
    Any,
}

impl Want {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "A",
            Self::V6 => "AAAA",
            Self::Any => "ANY",
        }
    }
}

/// Where the client address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientSource {
    /// A valid EDNS Client Subnet option.
    Ecs,
    /// The packet's source address (the recursive resolver).
    Resolver,
}

/// The client as the DNS shell saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientInput {
    /// Masked to `source_prefix`.
    pub addr: IpAddr,
    pub source_prefix: u8,
    pub source: ClientSource,
    /// Entropy for the weighted draw, supplied by the shell so `decide` stays deterministic.
    pub seed: u64,
    /// The GeoIP match for the trace; filled by the shell only when explaining.
    pub location: Option<GeoMatch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    pub want: Want,
    /// Build a [`Trace`] (a `_why.<name>` query).
    pub explain: bool,
}

/// Which rule ordered the candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Basis {
    GeoSubdivision,
    GeoCountry,
    GeoContinent,
    /// The geo map's default list (no key matched, or no GeoIP data).
    GeoDefault,
    /// An operator CIDR override.
    Override,
    /// Nearest by great-circle distance.
    Nearest,
    /// Nearest mode without client coordinates: configured order.
    Unlocated,
    Weighted,
    Failover,
    /// The policy has one candidate; nothing to order.
    SingleCandidate,
    /// Relay-measured RTT for the client's prefix.
    Latency,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GeoSubdivision => "geo-subdivision",
            Self::GeoCountry => "geo-country",
            Self::GeoContinent => "geo-continent",
            Self::GeoDefault => "geo-default",
            Self::Override => "override",
            Self::Nearest => "nearest",
            Self::Unlocated => "unlocated",
            Self::Weighted => "weighted",
            Self::Failover => "failover",
            Self::SingleCandidate => "single-candidate",
            Self::Latency => "latency",
        }
    }
}

/// Why this answer, in a form cheap enough for every query (metrics, logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reason {
    pub basis: Basis,
    /// No candidate was serving and the policy answered anyway.
    pub fail_open: bool,
}

impl Reason {
    /// A static label (metrics, logs, traces): the basis, suffixed `+fail-open` when it applies.
    pub fn as_str(&self) -> &'static str {
        if !self.fail_open {
            return self.basis.as_str();
        }
        match self.basis {
            Basis::GeoSubdivision => "geo-subdivision+fail-open",
            Basis::GeoCountry => "geo-country+fail-open",
            Basis::GeoContinent => "geo-continent+fail-open",
            Basis::GeoDefault => "geo-default+fail-open",
            Basis::Override => "override+fail-open",
            Basis::Nearest => "nearest+fail-open",
            Basis::Unlocated => "unlocated+fail-open",
            Basis::Weighted => "weighted+fail-open",
            Basis::Failover => "failover+fail-open",
            Basis::SingleCandidate => "single-candidate+fail-open",
            Basis::Latency => "latency+fail-open",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// In answer order; at least one, at most the policy's `answers`.
    Regions(Vec<RegionIdx>),
    /// No candidate has endpoints of the wanted family.
    NoData,
    /// The policy is fail-closed and no candidate is serving.
    ServFail,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    /// TTL of the answer records, in seconds.
    pub ttl: u32,
    /// ECS scope prefix length to echo: 0 when the answer does not depend on the client.
    pub ecs_scope: u8,
    pub reason: Reason,
    /// Only when [`Question::explain`] was set.
    pub trace: Option<Trace>,
}

/// What `decide` needs of a region, copied out of the config so the query path touches one
/// small array.
#[derive(Clone, Copy, Debug)]
struct RegionTraits {
    v4: bool,
    v6: bool,
    cname: bool,
    capacity: u32,
    cost: f64,
    /// Weight ramp period: the shortest TTL of the weighted policies it is a candidate of.
    ramp_period: Duration,
}

impl RegionTraits {
    fn has_endpoints_for(&self, want: Want) -> bool {
        self.cname
            || match want {
                Want::V4 => self.v4,
                Want::V6 => self.v6,
                Want::Any => self.v4 || self.v6,
            }
    }
}

#[derive(Debug)]
enum PolicyOrdering {
    /// Configured order, independent of the client.
    Fixed(Basis),
    Weighted,
    /// Client-dependent; shared between policies with the same ordering function.
    Map(Arc<ClientMap>),
}

#[derive(Debug)]
struct CompiledPolicy {
    /// The configured candidates that serve the policy's model, in configured order.
    candidates: Box<[RegionIdx]>,
    /// Configured candidates left out because they do not serve `model`.
    model_excluded: Box<[RegionIdx]>,
    answers: usize,
    ttl: u32,
    when_all_unhealthy: AllUnhealthy,
    ordering: PolicyOrdering,
    /// Latency mode with more than one candidate (the client map is the fallback).
    latency: bool,
    cost: Option<CostPreference>,
}

impl CompiledPolicy {
    /// Whether the answer depends on latency data (and so on the client's /24 or /48).
    fn uses_latency(&self) -> bool {
        matches!(self.ordering, PolicyOrdering::Map(_))
            && (self.latency || matches!(self.cost, Some(CostPreference::WithinMs(_))))
    }
}

/// The part of the table that only changes with config or GeoIP data (expensive to build).
#[derive(Debug)]
struct Compiled {
    policies: Vec<CompiledPolicy>,
    regions: Vec<RegionTraits>,
}

/// Everything `decide` needs, built once per snapshot.
#[derive(Clone, Debug)]
pub struct SteeringTable {
    compiled: Arc<Compiled>,
    statuses: Vec<RegionStatus>,
    /// The operator's cap on every answer TTL (drill ramp-down), if set.
    max_ttl: Option<u32>,
    /// Effective TTL per policy under `statuses` and `max_ttl`.
    ttls: Vec<u32>,
    /// Relay-measured client RTT per prefix, indexed like `statuses`.
    latency: Arc<LatencyTable>,
    /// Weighted-mode weight ramp per region, indexed like `statuses`.
    ramps: Arc<[WeightRamp]>,
}

/// Identifies an ordering function, so policies sharing one share its client map. Configs
/// may hold thousands of GSLB names over a handful of distinct maps.
#[derive(PartialEq, Eq, Hash)]
struct MapKey {
    ordering: OrderingKey,
    /// `cost = { within_km }` budget (its bits): it is part of the map's classes.
    within_km: Option<u64>,
}

#[derive(PartialEq, Eq, Hash)]
enum OrderingKey {
    GeoMap {
        candidates: Vec<RegionIdx>,
        /// (level, code, regions), sorted: a canonical form of the three hash maps.
        entries: Vec<(u8, String, Vec<RegionIdx>)>,
        default: Vec<RegionIdx>,
    },
    Nearest {
        candidates: Vec<RegionIdx>,
    },
}

impl SteeringTable {
    /// Compiles the config and GeoIP networks; regions start with [`Health::Unknown`].
    pub fn build(
        config: &DnsConfig,
        networks: Option<&LocatedNetworks>,
        operator: &OperatorState,
    ) -> SteeringTable {
        let mut regions: Vec<RegionTraits> = config
            .regions
            .iter()
            .map(|r| {
                let (v4, v6, cname) = match &r.endpoints {
                    Endpoints::Addresses { v4, v6 } => (!v4.is_empty(), !v6.is_empty(), false),
                    Endpoints::Cname(_) => (false, false, true),
                };
                RegionTraits {
                    v4,
                    v6,
                    cname,
                    capacity: r.capacity,
                    cost: r.cost,
                    ramp_period: Duration::ZERO,
                }
            })
            .collect();

        let mut maps: HashMap<MapKey, Arc<ClientMap>> = HashMap::new();
        let policies: Vec<CompiledPolicy> = config
            .gslb
            .iter()
            .map(|g| {
                let p = &g.policy;
                let serves_model = |r: &RegionIdx| match &p.model {
                    None => true,
                    Some(model) => {
                        let models = &config.region(*r).models;
                        models.is_empty() || models.contains(model)
                    }
                };
                let (candidates, model_excluded): (Vec<RegionIdx>, Vec<RegionIdx>) =
                    p.candidates.iter().copied().partition(|r| serves_model(r));
                let within_km = match p.cost {
                    Some(CostPreference::WithinKm(km)) => Some(km),
                    _ => None,
                };
                let mut shared_map =
                    |ordering: OrderingKey, preference: &dyn client_map::Preference| {
                        let key = MapKey {
                            ordering,
                            within_km: within_km.map(f64::to_bits),
                        };
                        let map = maps.entry(key).or_insert_with(|| {
                            let map = match within_km {
                                Some(budget_km) => {
                                    let with_budget = WithinKm {
                                        inner: preference,
                                        coordinates: candidates
                                            .iter()
                                            .map(|&r| config.region(r).coordinates)
                                            .collect(),
                                        budget_km,
                                    };
                                    ClientMap::build(&with_budget, networks, &config.overrides)
                                }
                                None => ClientMap::build(preference, networks, &config.overrides),
                            };
                            Arc::new(map)
                        });
                        PolicyOrdering::Map(Arc::clone(map))
                    };
                let ordering = match &p.mode {
                    _ if candidates.len() <= 1 => PolicyOrdering::Fixed(Basis::SingleCandidate),
                    SteeringMode::Failover => PolicyOrdering::Fixed(Basis::Failover),
                    SteeringMode::Weighted => PolicyOrdering::Weighted,
                    SteeringMode::GeoMap(map)
                    | SteeringMode::Latency(LatencyFallback::GeoMap(map)) => shared_map(
                        geo_map_key(map, &candidates),
                        &GeoMapPreference {
                            map,
                            candidates: &candidates,
                        },
                    ),
                    SteeringMode::Nearest | SteeringMode::Latency(LatencyFallback::Nearest) => {
                        shared_map(
                            OrderingKey::Nearest {
                                candidates: candidates.clone(),
                            },
                            &NearestPreference {
                                candidates: &candidates,
                                coordinates: candidates
                                    .iter()
                                    .map(|&r| config.region(r).coordinates)
                                    .collect(),
                            },
                        )
                    }
                };
                let latency = matches!(p.mode, SteeringMode::Latency(_))
                    && matches!(ordering, PolicyOrdering::Map(_));
                CompiledPolicy {
                    candidates: candidates.into(),
                    model_excluded: model_excluded.into(),
                    answers: p.answers.max(1),
                    ttl: p.ttl,
                    when_all_unhealthy: p.when_all_unhealthy,
                    ordering,
                    latency,
                    cost: p.cost,
                }
            })
            .collect();

        for p in &policies {
            if !matches!(p.ordering, PolicyOrdering::Weighted) {
                continue;
            }
            let period = Duration::from_secs(u64::from(p.ttl.max(1)));
            for r in p.candidates.iter() {
                if let Some(t) = regions.get_mut(r.get()) {
                    t.ramp_period = if t.ramp_period.is_zero() {
                        period
                    } else {
                        t.ramp_period.min(period)
                    };
                }
            }
        }

        let compiled = Arc::new(Compiled { policies, regions });
        let statuses = region_statuses(config, operator, &[]);
        let ramps = settled_ramps(&compiled, &statuses);
        Self::assemble(
            compiled,
            statuses,
            operator.max_ttl,
            Arc::new(LatencyTable::default()),
            ramps,
        )
    }

    /// The same compiled policies with new region statuses (indexed by [`RegionIdx`]; see
    /// [`region_statuses`]), weights settled at once (no ramp). Cheap: client maps are
    /// shared, not rebuilt.
    pub fn with_statuses(&self, statuses: Vec<RegionStatus>) -> SteeringTable {
        let ramps = settled_ramps(&self.compiled, &statuses);
        Self::assemble(
            Arc::clone(&self.compiled),
            statuses,
            self.max_ttl,
            Arc::clone(&self.latency),
            ramps,
        )
    }

    /// The same compiled policies with the health plane's statuses and latency table at
    /// `now`: weights that changed start ramping from where they are now ([`ramp`]).
    pub fn with_live(
        &self,
        statuses: Vec<RegionStatus>,
        latency: Arc<LatencyTable>,
        now: Instant,
    ) -> SteeringTable {
        let ramps = statuses
            .iter()
            .enumerate()
            .map(|(i, status)| {
                let target = target_weight(&self.compiled, RegionIdx(i as u16), status);
                match self.ramps.get(i) {
                    Some(ramp) => ramp.retarget(target, now),
                    None => WeightRamp::settled(target, ramp_period(&self.compiled, i)),
                }
            })
            .collect();
        Self::assemble(
            Arc::clone(&self.compiled),
            statuses,
            self.max_ttl,
            latency,
            ramps,
        )
    }

    /// The same table with the operator's TTL cap replaced (statuses unchanged).
    pub fn with_max_ttl(&self, max_ttl: Option<u32>) -> SteeringTable {
        Self::assemble(
            Arc::clone(&self.compiled),
            self.statuses.clone(),
            max_ttl,
            Arc::clone(&self.latency),
            Arc::clone(&self.ramps),
        )
    }

    /// The operator's TTL cap in force, if any.
    pub fn max_ttl(&self) -> Option<u32> {
        self.max_ttl
    }

    /// The latency table in force.
    pub fn latency(&self) -> &Arc<LatencyTable> {
        &self.latency
    }

    fn assemble(
        compiled: Arc<Compiled>,
        statuses: Vec<RegionStatus>,
        max_ttl: Option<u32>,
        latency: Arc<LatencyTable>,
        ramps: Arc<[WeightRamp]>,
    ) -> SteeringTable {
        let ttls = compiled
            .policies
            .iter()
            .map(|p| {
                let ttl = if p
                    .candidates
                    .iter()
                    .any(|&r| status_of(&statuses, r).lowers_ttl())
                {
                    (p.ttl / 2).max(1)
                } else {
                    p.ttl
                };
                max_ttl.map_or(ttl, |cap| ttl.min(cap.max(1)))
            })
            .collect();
        SteeringTable {
            compiled,
            statuses,
            max_ttl,
            ttls,
            latency,
            ramps,
        }
    }

    /// Panics if `r` is not a region of the config the table was built from.
    pub fn region_status(&self, r: RegionIdx) -> &RegionStatus {
        &self.statuses[r.get()]
    }

    /// The client map a policy uses, if its answer depends on the client.
    pub fn client_map(&self, policy: PolicyIdx) -> Option<&Arc<ClientMap>> {
        match &self.compiled.policies.get(policy.0 as usize)?.ordering {
            PolicyOrdering::Map(map) => Some(map),
            PolicyOrdering::Fixed(_) | PolicyOrdering::Weighted => None,
        }
    }

    /// Number of distinct client maps (after sharing).
    pub fn client_map_count(&self) -> usize {
        let mut seen: Vec<*const ClientMap> = Vec::new();
        for p in &self.compiled.policies {
            if let PolicyOrdering::Map(m) = &p.ordering
                && !seen.contains(&Arc::as_ptr(m))
            {
                seen.push(Arc::as_ptr(m));
            }
        }
        seen.len()
    }

    fn status(&self, r: RegionIdx) -> RegionStatus {
        status_of(&self.statuses, r)
    }

    fn has_endpoints_for(&self, r: RegionIdx, want: Want) -> bool {
        self.compiled
            .regions
            .get(r.get())
            .is_some_and(|t| t.has_endpoints_for(want))
    }

    /// Nominal weighted-mode weight: capacity × operator percent (the /100 is a common
    /// factor), whatever the health. Fail-open draws use it.
    fn nominal_weight(&self, r: RegionIdx) -> u64 {
        let capacity = self.compiled.regions.get(r.get()).map_or(0, |t| t.capacity);
        u64::from(capacity) * u64::from(self.status(r).weight_percent)
    }

    /// The ramped weight in effect at `now` (0 for a region that is not serving).
    fn effective_weight(&self, r: RegionIdx, now: Instant) -> u64 {
        if target_weight(&self.compiled, r, &self.status(r)) <= 0.0 {
            return 0;
        }
        match self.ramps.get(r.get()) {
            // At least 1: a serving region with a weight is never a last resort.
            Some(ramp) => (ramp.at(now).round() as u64).max(1),
            None => self.nominal_weight(r),
        }
    }

    fn cost(&self, r: RegionIdx) -> f64 {
        self.compiled.regions.get(r.get()).map_or(0.0, |t| t.cost)
    }
}

/// The weight a region's ramp heads for: nominal while serving, 0 otherwise.
fn target_weight(compiled: &Compiled, r: RegionIdx, status: &RegionStatus) -> f64 {
    if !status.is_serving() {
        return 0.0;
    }
    let capacity = compiled.regions.get(r.get()).map_or(0, |t| t.capacity);
    (u64::from(capacity) * u64::from(status.weight_percent)) as f64
}

fn ramp_period(compiled: &Compiled, i: usize) -> Duration {
    // Regions in no weighted policy never draw; any period will do.
    compiled
        .regions
        .get(i)
        .map(|t| t.ramp_period)
        .filter(|p| !p.is_zero())
        .unwrap_or(Duration::from_secs(30))
}

fn settled_ramps(compiled: &Compiled, statuses: &[RegionStatus]) -> Arc<[WeightRamp]> {
    statuses
        .iter()
        .enumerate()
        .map(|(i, status)| {
            WeightRamp::settled(
                target_weight(compiled, RegionIdx(i as u16), status),
                ramp_period(compiled, i),
            )
        })
        .collect()
}

fn geo_map_key(map: &crate::config::model::GeoMap, candidates: &[RegionIdx]) -> OrderingKey {
    let mut entries: Vec<(u8, String, Vec<RegionIdx>)> = [
        (0u8, &map.subdivisions),
        (1, &map.countries),
        (2, &map.continents),
    ]
    .into_iter()
    .flat_map(|(level, table)| {
        table
            .iter()
            .map(move |(k, v)| (level, k.clone(), v.clone()))
    })
    .collect();
    entries.sort();
    OrderingKey::GeoMap {
        candidates: candidates.to_vec(),
        entries,
        default: map.default.clone(),
    }
}

/// How the selection went, for the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    /// Nothing has endpoints of the wanted family.
    NoEligible,
    Serving,
    FailOpen(FailOpenTier),
    FailClosed,
}

/// What the cost step did, for the trace.
#[derive(Clone, Debug, Default, PartialEq)]
struct WalkNotes {
    /// The order before spill-over and cost (weighted: the drawn permutation).
    drawn: Vec<RegionIdx>,
    /// Spilling regions moved after the others.
    spilled: Vec<RegionIdx>,
    cost: Option<CostTrace>,
}

/// Inputs of the cost step that depend on the client.
#[derive(Clone, Copy)]
struct CostInputs<'a> {
    rtts: Option<LatencyLookup<'a>>,
    reach: Option<&'a [u64]>,
}

/// Walks `order` for one tier of the selection: the regions passing `keep`, in answer order,
/// into `out`, truncated to the policy's `answers` (all of them when `full`).
#[allow(clippy::too_many_arguments)]
fn walk(
    table: &SteeringTable,
    p: &CompiledPolicy,
    order: &[RegionIdx],
    keep: &dyn Fn(RegionIdx) -> bool,
    weight: &dyn Fn(RegionIdx) -> u64,
    seed: u64,
    inputs: CostInputs<'_>,
    full: bool,
    out: &mut Vec<RegionIdx>,
    notes: Option<&mut WalkNotes>,
) {
    let spilling = |r: RegionIdx| table.status(r).is_spilling();
    let any_spilling = order.iter().any(|&r| keep(r) && spilling(r));
    // Spill-over and cost look past the first N; otherwise stop there.
    let limit = if full || any_spilling || p.cost.is_some() {
        order.len()
    } else {
        p.answers
    };
    match p.ordering {
        PolicyOrdering::Weighted => weighted_permutation(order, keep, weight, seed, limit, out),
        PolicyOrdering::Fixed(_) | PolicyOrdering::Map(_) => {
            out.extend(order.iter().copied().filter(|&r| keep(r)).take(limit));
        }
    }
    let drawn = notes.is_some().then(|| out.clone());
    if any_spilling {
        // Stable: each group keeps the ordering's preference.
        out.sort_by_key(|&r| spilling(r));
    }
    let cost = p
        .cost
        .map(|budget| cost_step(table, p, budget, inputs, out));
    out.truncate(p.answers);
    if let Some(notes) = notes {
        notes.drawn = drawn.unwrap_or_default();
        notes.spilled = if any_spilling {
            notes
                .drawn
                .iter()
                .copied()
                .filter(|&r| spilling(r))
                .collect()
        } else {
            Vec::new()
        };
        notes.cost = cost;
    }
}

/// Moves the cheapest region within the budget of the first one's figure to the front of
/// `order` (never a spilling one ahead of one that is not).
fn cost_step(
    table: &SteeringTable,
    p: &CompiledPolicy,
    budget: CostPreference,
    inputs: CostInputs<'_>,
    order: &mut [RegionIdx],
) -> CostTrace {
    let mut trace = CostTrace {
        budget,
        first: order.first().copied(),
        within: Vec::new(),
        chosen: None,
    };
    let Some(&first) = order.first() else {
        return trace;
    };
    let position = |r: RegionIdx| {
        p.candidates
            .iter()
            .position(|&c| c == r)
            .filter(|&i| i < MAX_REACH)
    };
    let within = |r: RegionIdx| -> bool {
        match budget {
            CostPreference::WithinMs(ms) => {
                let Some(rtts) = inputs.rtts else {
                    return false;
                };
                match (rtts.rtt(first), rtts.rtt(r)) {
                    (Some(f), Some(x)) => f64::from(x) <= f64::from(f) + ms,
                    _ => false,
                }
            }
            CostPreference::WithinKm(_) => {
                let (Some(reach), Some(i), Some(j)) = (inputs.reach, position(first), position(r))
                else {
                    return false;
                };
                reach.get(i).is_some_and(|mask| mask & (1 << j) != 0)
            }
        }
    };
    let group = table.status(first).is_spilling();
    let best = order
        .iter()
        .enumerate()
        .filter(|&(_, &r)| table.status(r).is_spilling() == group && within(r))
        .inspect(|&(_, &r)| trace.within.push((r, table.cost(r))))
        .min_by(|a, b| table.cost(*a.1).total_cmp(&table.cost(*b.1)));
    if let Some((i, &r)) = best {
        order[..=i].rotate_right(1);
        trace.chosen = Some(r);
    }
    trace
}

/// Decides the answer for one query of `policy`. Pure: the same inputs give the same decision.
///
/// Panics if `policy` is not an index of the config the table was built from.
pub fn decide(
    table: &SteeringTable,
    policy: PolicyIdx,
    client: &ClientInput,
    question: &Question,
    now: Instant,
) -> Decision {
    let p = &table.compiled.policies[policy.0 as usize];
    let ttl = table.ttls[policy.0 as usize];
    let want = question.want;

    let lookup = match &p.ordering {
        PolicyOrdering::Map(map) => Some(map.lookup(client.addr)),
        PolicyOrdering::Fixed(_) | PolicyOrdering::Weighted => None,
    };
    let rtts = if p.uses_latency() {
        table.latency.lookup(client.addr, client.source_prefix)
    } else {
        None
    };
    let by_latency: Option<Vec<RegionIdx>> = match (p.latency, rtts, lookup) {
        (true, Some(l), Some(map)) if l.figures.iter().any(|(r, _)| p.candidates.contains(r)) => {
            let mut order: Vec<RegionIdx> = l
                .figures
                .iter()
                .map(|&(r, _)| r)
                .filter(|r| p.candidates.contains(r))
                .collect();
            order.extend(map.class.iter().copied().filter(|r| l.rtt(*r).is_none()));
            Some(order)
        }
        _ => None,
    };
    let (order, basis): (&[RegionIdx], Basis) = match (&by_latency, &p.ordering, lookup) {
        (Some(order), _, _) => (order, Basis::Latency),
        (None, _, Some(l)) => (l.class, l.basis),
        (None, PolicyOrdering::Fixed(basis), None) => (&p.candidates, *basis),
        (None, _, None) => (&p.candidates, Basis::Weighted),
    };
    let inputs = CostInputs {
        rtts,
        reach: lookup.and_then(|l| l.reach),
    };

    let eligible = |r: RegionIdx| table.has_endpoints_for(r, want);
    let serving_weight = |r: RegionIdx| table.effective_weight(r, now);
    let nominal_weight = |r: RegionIdx| table.nominal_weight(r);
    let mut notes = question.explain.then(WalkNotes::default);
    let mut select = |keep: &dyn Fn(RegionIdx) -> bool,
                      weight: &dyn Fn(RegionIdx) -> u64,
                      out: &mut Vec<RegionIdx>| {
        if let Some(notes) = notes.as_mut() {
            *notes = WalkNotes::default();
        }
        walk(
            table,
            p,
            order,
            keep,
            weight,
            client.seed,
            inputs,
            question.explain,
            out,
            notes.as_mut(),
        );
    };

    let (outcome, tier) = if !p.candidates.iter().any(|&r| eligible(r)) {
        (Outcome::NoData, Tier::NoEligible)
    } else {
        let mut chosen = Vec::with_capacity(p.answers.min(p.candidates.len()));
        select(
            &|r| eligible(r) && table.status(r).is_serving(),
            &serving_weight,
            &mut chosen,
        );
        if !chosen.is_empty() {
            (Outcome::Regions(chosen), Tier::Serving)
        } else {
            match p.when_all_unhealthy {
                AllUnhealthy::FailClosed => (Outcome::ServFail, Tier::FailClosed),
                AllUnhealthy::FailOpen => {
                    // Ignore health first; undo operator decisions only if nothing else is left.
                    select(
                        &|r| eligible(r) && table.status(r).is_health_excluded_only(),
                        &nominal_weight,
                        &mut chosen,
                    );
                    let tier = if chosen.is_empty() {
                        select(&eligible, &nominal_weight, &mut chosen);
                        FailOpenTier::IgnoreOperator
                    } else {
                        FailOpenTier::IgnoreHealth
                    };
                    (Outcome::Regions(chosen), Tier::FailOpen(tier))
                }
            }
        }
    };

    let ecs_scope = match (&outcome, lookup) {
        (Outcome::Regions(_), Some(l)) => {
            // Latency data is per /24 (/48): a neighbouring prefix may answer differently
            // even where this one fell back.
            let scope = if p.uses_latency() {
                l.scope_len.max(LatencyTable::data_prefix(client.addr))
            } else {
                l.scope_len
            };
            scope.min(client.source_prefix)
        }
        _ => 0,
    };
    let mut decision = Decision {
        outcome,
        ttl,
        ecs_scope,
        reason: Reason {
            basis,
            fail_open: matches!(tier, Tier::FailOpen(_)),
        },
        trace: None,
    };
    if question.explain {
        decision.trace = Some(trace::explain(
            table,
            policy,
            client,
            question,
            &decision,
            trace::Inputs {
                lookup,
                rtts,
                order,
                basis,
                tier,
                notes: notes.unwrap_or_default(),
                now,
            },
        ));
    }
    decision
}

#[cfg(test)]
pub(crate) mod tests;
