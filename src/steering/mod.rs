//! The steering core: which region(s) a GSLB name answers with, for this client, right now.
//!
//! [`SteeringTable::build`] compiles the validated config, the GeoIP networks and the operator
//! state into per-policy data once per snapshot; [`decide`] is then a pure function of that
//! table and one query: eligibility (endpoint family) → ordering (client map, configured
//! order, or weighted draw) → health filter (with fail-open / fail-closed) → first N. It does
//! no IO, reads no clock (`now` is passed in) and allocates only the answer list unless a
//! trace was asked for. Rendering records, ECS option handling and GeoIP lookups for the
//! trace belong to the DNS shell, not here.

pub mod client_map;
mod ordering;
pub mod status;
pub mod trace;

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Instant};

use crate::{
    config::model::{AllUnhealthy, DnsConfig, Endpoints, RegionIdx, SteeringMode},
    geo::{GeoMatch, LocatedNetworks},
    operator_state::OperatorState,
};

pub use client_map::{ClientMap, MapLookup, MapOrigin};
pub use ordering::great_circle_km;
pub use status::{Exclusion, Health, RegionStatus, region_statuses};
pub use trace::{FailOpenTier, MapTrace, Step, Trace};

use ordering::{GeoMapPreference, NearestPreference, weighted_permutation};
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
    candidates: Box<[RegionIdx]>,
    answers: usize,
    ttl: u32,
    when_all_unhealthy: AllUnhealthy,
    ordering: PolicyOrdering,
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
}

/// Identifies an ordering function, so policies sharing one share its client map. Configs
/// may hold thousands of GSLB names over a handful of distinct maps.
#[derive(PartialEq, Eq, Hash)]
enum MapKey {
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
        let regions = config
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
                }
            })
            .collect();

        let mut maps: HashMap<MapKey, Arc<ClientMap>> = HashMap::new();
        let policies = config
            .gslb
            .iter()
            .map(|g| {
                let p = &g.policy;
                let candidates = p.candidates.as_slice();
                let ordering = match &p.mode {
                    _ if candidates.len() <= 1 => PolicyOrdering::Fixed(Basis::SingleCandidate),
                    SteeringMode::Failover => PolicyOrdering::Fixed(Basis::Failover),
                    SteeringMode::Weighted => PolicyOrdering::Weighted,
                    // Until latency data is wired in, latency mode orders by its fallback.
                    SteeringMode::GeoMap(map)
                    | SteeringMode::Latency(crate::config::model::LatencyFallback::GeoMap(map)) => {
                        let key = geo_map_key(map, candidates);
                        let map = maps.entry(key).or_insert_with(|| {
                            let preference = GeoMapPreference { map, candidates };
                            Arc::new(ClientMap::build(&preference, networks, &config.overrides))
                        });
                        PolicyOrdering::Map(Arc::clone(map))
                    }
                    SteeringMode::Nearest
                    | SteeringMode::Latency(crate::config::model::LatencyFallback::Nearest) => {
                        let key = MapKey::Nearest {
                            candidates: candidates.to_vec(),
                        };
                        let map = maps.entry(key).or_insert_with(|| {
                            let preference = NearestPreference {
                                candidates,
                                coordinates: candidates
                                    .iter()
                                    .map(|&r| config.region(r).coordinates)
                                    .collect(),
                            };
                            Arc::new(ClientMap::build(&preference, networks, &config.overrides))
                        });
                        PolicyOrdering::Map(Arc::clone(map))
                    }
                };
                CompiledPolicy {
                    candidates: candidates.into(),
                    answers: p.answers.max(1),
                    ttl: p.ttl,
                    when_all_unhealthy: p.when_all_unhealthy,
                    ordering,
                }
            })
            .collect();

        let compiled = Arc::new(Compiled { policies, regions });
        let statuses = region_statuses(config, operator, &[]);
        Self::assemble(compiled, statuses, operator.max_ttl)
    }

    /// The same compiled policies with new region statuses (indexed by [`RegionIdx`]; see
    /// [`region_statuses`]). Cheap: client maps are shared, not rebuilt, so the health plane
    /// can call this on every flip.
    pub fn with_statuses(&self, statuses: Vec<RegionStatus>) -> SteeringTable {
        Self::assemble(Arc::clone(&self.compiled), statuses, self.max_ttl)
    }

    /// The same table with the operator's TTL cap replaced (statuses unchanged).
    pub fn with_max_ttl(&self, max_ttl: Option<u32>) -> SteeringTable {
        Self::assemble(Arc::clone(&self.compiled), self.statuses.clone(), max_ttl)
    }

    /// The operator's TTL cap in force, if any.
    pub fn max_ttl(&self) -> Option<u32> {
        self.max_ttl
    }

    fn assemble(
        compiled: Arc<Compiled>,
        statuses: Vec<RegionStatus>,
        max_ttl: Option<u32>,
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

    /// Weighted-mode weight: capacity × operator percent (the /100 is a common factor).
    fn weight(&self, r: RegionIdx) -> u64 {
        let capacity = self.compiled.regions.get(r.get()).map_or(0, |t| t.capacity);
        u64::from(capacity) * u64::from(self.status(r).weight_percent)
    }
}

fn geo_map_key(map: &crate::config::model::GeoMap, candidates: &[RegionIdx]) -> MapKey {
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
    MapKey::GeoMap {
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
    // Reserved for TTL ramps ahead of planned drills; nothing depends on time yet.
    let _ = now;
    let p = &table.compiled.policies[policy.0 as usize];
    let ttl = table.ttls[policy.0 as usize];
    let want = question.want;

    let (order, basis, lookup): (&[RegionIdx], Basis, Option<MapLookup<'_>>) = match &p.ordering {
        PolicyOrdering::Fixed(basis) => (&p.candidates, *basis, None),
        PolicyOrdering::Weighted => (&p.candidates, Basis::Weighted, None),
        PolicyOrdering::Map(map) => {
            let l = map.lookup(client.addr);
            (l.class, l.basis, Some(l))
        }
    };

    let eligible = |r: RegionIdx| table.has_endpoints_for(r, want);
    let select = |keep: &dyn Fn(RegionIdx) -> bool, out: &mut Vec<RegionIdx>| match p.ordering {
        PolicyOrdering::Weighted => weighted_permutation(
            order,
            keep,
            |r| table.weight(r),
            client.seed,
            p.answers,
            out,
        ),
        PolicyOrdering::Fixed(_) | PolicyOrdering::Map(_) => {
            out.extend(order.iter().copied().filter(|&r| keep(r)).take(p.answers));
        }
    };

    let (outcome, tier) = if !p.candidates.iter().any(|&r| eligible(r)) {
        (Outcome::NoData, Tier::NoEligible)
    } else {
        let mut chosen = Vec::with_capacity(p.answers.min(p.candidates.len()));
        select(
            &|r| eligible(r) && table.status(r).is_serving(),
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
                        &mut chosen,
                    );
                    let tier = if chosen.is_empty() {
                        select(&eligible, &mut chosen);
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
        (Outcome::Regions(_), Some(l)) => l.scope_len.min(client.source_prefix),
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
            table, policy, client, question, &decision, lookup, tier,
        ));
    }
    decision
}

#[cfg(test)]
pub(crate) mod tests;
