//! The decision trace behind `_why.<name>`: what the steering core saw and did, step by step.
//!
//! Built only when a query asks for it, from the same inputs as the decision (it re-derives
//! the per-step sets instead of making the query path record them), and rendered as short
//! lines that fit one TXT character-string each.

use std::{
    fmt::Write,
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use crate::{
    config::model::{
        AllUnhealthy, CostPreference, DnsConfig, LatencyFallback, RegionIdx, SteeringMode,
    },
    geo::GeoMatch,
};

use super::{
    Basis, ClientInput, ClientSource, Decision, Exclusion, LatencyLookup, MapLookup, MapOrigin,
    Outcome, PolicyIdx, PolicyOrdering, Question, Reason, RegionStatus, SteeringTable, Tier,
    WalkNotes, Want,
};

/// Longest line [`Trace::lines`] produces: within one DNS TXT character-string (255), with
/// room left for a caller's numbering prefix.
pub const MAX_LINE: usize = 240;

/// How a fail-open answer was chosen when nothing was serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailOpenTier {
    /// Regions left out only because health said down were used.
    IgnoreHealth,
    /// Every region was drained or forced down by an operator; all eligible were used.
    IgnoreOperator,
}

/// The client map entry that ordered the candidates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapTrace {
    pub origin: MapOrigin,
    pub basis: Basis,
    /// The class: a full ordering of the candidates.
    pub class: Vec<RegionIdx>,
    /// Before clamping to the source prefix.
    pub scope_len: u8,
}

/// What the cost step saw and did.
#[derive(Clone, Debug, PartialEq)]
pub struct CostTrace {
    pub budget: CostPreference,
    /// The region the budget is measured from (first after ordering and spill-over).
    pub first: Option<RegionIdx>,
    /// Regions within the budget (and in the first one's spill group), with their cost.
    pub within: Vec<(RegionIdx, f64)>,
    pub chosen: Option<RegionIdx>,
}

/// One candidate's state as the decision saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CandidateState {
    pub region: RegionIdx,
    pub status: RegionStatus,
    /// Weighted-mode weight in effect (ramped; 0 when not serving).
    pub effective_weight: u64,
    /// Nominal weight: capacity × operator weight.
    pub nominal_weight: u64,
    /// Age of the latest fresh report at the decision's `now`.
    pub report_age: Option<Duration>,
}

/// One step of the chain and its effect.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Configured candidates that do not serve the policy's model.
    Model {
        excluded: Vec<RegionIdx>,
    },
    /// Candidates without endpoints of the wanted family.
    Eligibility {
        want: Want,
        removed: Vec<RegionIdx>,
    },
    /// The order the selection walked (for weighted: the drawn permutation of the regions the
    /// selection considered).
    Ordering {
        basis: Basis,
        order: Vec<RegionIdx>,
        seed: Option<u64>,
    },
    /// Latency mode (or a `within_ms` budget): the figures for the client's prefix, if any.
    Latency {
        /// `None`: no data (or a source prefix too short to know the client's /24, /48).
        prefix: Option<IpNet>,
        /// (region, RTT ms) among the candidates, lowest first.
        figures: Vec<(RegionIdx, f32)>,
    },
    /// Eligible regions that are not serving.
    Health {
        removed: Vec<(RegionIdx, Exclusion)>,
    },
    /// Spilling regions moved after the serving regions that are not spilling.
    Spill {
        moved: Vec<RegionIdx>,
    },
    Cost(CostTrace),
    FailOpen {
        tier: FailOpenTier,
    },
    FailClosed,
    Select {
        answers: usize,
        chosen: Vec<RegionIdx>,
    },
}

/// A structured record of one decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub policy: PolicyIdx,
    pub client: IpAddr,
    pub source_prefix: u8,
    pub source: ClientSource,
    pub want: Want,
    /// As looked up by the DNS shell (GeoIP only; overrides show in `map`).
    pub location: Option<GeoMatch>,
    /// `None` when the answer does not depend on the client.
    pub map: Option<MapTrace>,
    pub candidates: Vec<RegionIdx>,
    /// State of every candidate.
    pub statuses: Vec<CandidateState>,
    pub steps: Vec<Step>,
    pub outcome: Outcome,
    pub reason: Reason,
    pub ecs_scope: u8,
    pub ttl: u32,
    pub policy_ttl: u32,
    /// Candidates whose state lowered the TTL.
    pub ttl_lowered_by: Vec<RegionIdx>,
}

/// What `decide` already worked out, handed to [`explain`].
pub(super) struct Inputs<'a> {
    pub lookup: Option<MapLookup<'a>>,
    pub rtts: Option<LatencyLookup<'a>>,
    /// The order the selection walked (latency, class or configured).
    pub order: &'a [RegionIdx],
    pub basis: Basis,
    pub tier: Tier,
    /// Of the tier that produced the answer.
    pub notes: WalkNotes,
    pub now: Instant,
}

pub(super) fn explain(
    table: &SteeringTable,
    policy: PolicyIdx,
    client: &ClientInput,
    question: &Question,
    decision: &Decision,
    inputs: Inputs<'_>,
) -> Trace {
    let Inputs {
        lookup,
        rtts,
        order,
        basis,
        tier,
        notes,
        now,
    } = inputs;
    let p = &table.compiled.policies[policy.0 as usize];
    let want = question.want;
    let eligible = |r: RegionIdx| table.has_endpoints_for(r, want);
    let candidates = p.candidates.to_vec();

    let mut steps = Vec::new();
    if !p.model_excluded.is_empty() {
        steps.push(Step::Model {
            excluded: p.model_excluded.to_vec(),
        });
    }
    steps.push(Step::Eligibility {
        want,
        removed: candidates
            .iter()
            .copied()
            .filter(|&r| !eligible(r))
            .collect(),
    });
    if p.uses_latency() {
        steps.push(Step::Latency {
            prefix: rtts.map(|l| l.prefix),
            figures: rtts
                .map(|l| {
                    l.figures
                        .iter()
                        .copied()
                        .filter(|(r, _)| p.candidates.contains(r))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    if tier != Tier::NoEligible {
        let (walked, seed) = match p.ordering {
            PolicyOrdering::Weighted => (notes.drawn.clone(), Some(client.seed)),
            _ => (
                order.iter().copied().filter(|&r| eligible(r)).collect(),
                None,
            ),
        };
        steps.push(Step::Ordering {
            basis,
            order: walked,
            seed,
        });
        steps.push(Step::Health {
            removed: order
                .iter()
                .filter(|&&r| eligible(r))
                .filter_map(|&r| table.status(r).exclusion().map(|e| (r, e)))
                .collect(),
        });
        match tier {
            Tier::FailOpen(tier) => steps.push(Step::FailOpen { tier }),
            Tier::FailClosed => steps.push(Step::FailClosed),
            Tier::Serving | Tier::NoEligible => {}
        }
        if !notes.spilled.is_empty() {
            steps.push(Step::Spill {
                moved: notes.spilled.clone(),
            });
        }
        if let Some(cost) = notes.cost {
            steps.push(Step::Cost(cost));
        }
        if let Outcome::Regions(chosen) = &decision.outcome {
            steps.push(Step::Select {
                answers: p.answers,
                chosen: chosen.clone(),
            });
        }
    }

    Trace {
        policy,
        client: client.addr,
        source_prefix: client.source_prefix,
        source: client.source,
        want,
        location: client.location.clone(),
        map: lookup.map(|l| MapTrace {
            origin: l.origin,
            basis: l.basis,
            class: l.class.to_vec(),
            scope_len: l.scope_len,
        }),
        statuses: candidates
            .iter()
            .map(|&r| {
                let status = table.status(r);
                CandidateState {
                    region: r,
                    status,
                    effective_weight: table.effective_weight(r, now),
                    nominal_weight: table.nominal_weight(r),
                    report_age: status
                        .report_received
                        .map(|at| now.saturating_duration_since(at)),
                }
            })
            .collect(),
        candidates,
        steps,
        outcome: decision.outcome.clone(),
        reason: decision.reason,
        ecs_scope: decision.ecs_scope,
        ttl: decision.ttl,
        policy_ttl: p.ttl,
        ttl_lowered_by: p
            .candidates
            .iter()
            .copied()
            .filter(|&r| table.status(r).lowers_ttl())
            .collect(),
    }
}

impl Trace {
    /// Human-readable lines, each at most [`MAX_LINE`] bytes; long lists continue on further
    /// lines with the same key.
    pub fn lines(&self, config: &DnsConfig) -> Vec<String> {
        let id = |r: RegionIdx| config.regions.get(r.get()).map_or("?", |x| &*x.id);
        let mut out = Lines::default();

        if let Some(g) = config.gslb.get(self.policy.0 as usize) {
            let mode = match g.policy.mode {
                SteeringMode::GeoMap(_) => "geo-map",
                SteeringMode::Nearest => "nearest",
                SteeringMode::Weighted => "weighted",
                SteeringMode::Failover => "failover",
                SteeringMode::Latency(LatencyFallback::GeoMap(_)) => "latency fallback=geo-map",
                SteeringMode::Latency(LatencyFallback::Nearest) => "latency fallback=nearest",
            };
            let unhealthy = match g.policy.when_all_unhealthy {
                AllUnhealthy::FailOpen => "fail-open",
                AllUnhealthy::FailClosed => "fail-closed",
            };
            out.push(format!(
                "name={} mode={mode} answers={} ttl={} all-unhealthy={unhealthy}",
                g.name, g.policy.answers, g.policy.ttl
            ));
        }
        let source = match self.source {
            ClientSource::Ecs => "ecs",
            ClientSource::Resolver => "resolver",
        };
        out.push(format!(
            "client={}/{} source={source} want={}",
            self.client,
            self.source_prefix,
            self.want.as_str()
        ));
        match &self.location {
            Some(m) => {
                let l = &m.location;
                let code = |c: &Option<Box<str>>| c.as_deref().unwrap_or("-").to_owned();
                let mut line = format!(
                    "location={}/{}/{}",
                    code(&l.country),
                    code(&l.subdivision),
                    code(&l.continent)
                );
                if let Some(c) = l.coordinates {
                    let _ = write!(line, " lat={:.2} lon={:.2}", c.latitude, c.longitude);
                }
                let _ = write!(line, " net={}", m.network);
                out.push(line);
            }
            None => out.push("location=none".to_owned()),
        }
        if let Some(map) = &self.map {
            let origin = match map.origin {
                MapOrigin::Override(i) => {
                    match config.overrides.get(i as usize) {
                        Some(o) => out.list(
                            &format!("override={} prefers=", o.network),
                            o.regions.iter().map(|&r| id(r)),
                        ),
                        None => out.push(format!("override=#{i}")),
                    }
                    "override"
                }
                MapOrigin::GeoIp => "geoip",
                MapOrigin::NoGeoData => "no-geo-data",
            };
            out.list(
                &format!(
                    "map={origin} basis={} scope={} class=",
                    map.basis.as_str(),
                    map.scope_len
                ),
                map.class.iter().map(|&r| id(r)),
            );
        }
        out.list("candidates=", self.candidates.iter().map(|&r| id(r)));
        for c in &self.statuses {
            let s = &c.status;
            let mut line = format!(
                "region={} admin={} health={} weight={}% effective-weight={}",
                id(c.region),
                s.admin.as_str(),
                s.health.as_str(),
                s.weight_percent,
                c.effective_weight,
            );
            if c.effective_weight != c.nominal_weight && s.is_serving() {
                let _ = write!(line, " ramping-to={}", c.nominal_weight);
            }
            if s.spilling {
                line.push_str(" spilling");
            }
            if let Some(h) = s.headroom {
                let _ = write!(line, " headroom={h:.2}");
            }
            if let Some(age) = c.report_age {
                let _ = write!(line, " report-age={}ms", age.as_millis());
            }
            out.push(line);
        }
        for step in &self.steps {
            match step {
                Step::Model { excluded } => {
                    let model = config
                        .gslb
                        .get(self.policy.0 as usize)
                        .and_then(|g| g.policy.model.as_deref())
                        .unwrap_or("?");
                    out.list(
                        &format!("step=model model={model} excluded="),
                        excluded
                            .iter()
                            .map(|&r| format!("{}(not-serving-model)", id(r))),
                    );
                }
                Step::Latency { prefix, figures } => match prefix {
                    Some(prefix) => out.list(
                        &format!("step=latency prefix={prefix} rtt="),
                        figures
                            .iter()
                            .map(|&(r, rtt)| format!("{}:{rtt:.1}ms", id(r))),
                    ),
                    None => out.push("step=latency prefix=none (no data: fallback)".to_owned()),
                },
                Step::Spill { moved } => {
                    out.list("step=spill moved-last=", moved.iter().map(|&r| id(r)))
                }
                Step::Cost(cost) => {
                    let budget = match cost.budget {
                        CostPreference::WithinKm(km) => format!("{km}km"),
                        CostPreference::WithinMs(ms) => format!("{ms}ms"),
                    };
                    let head = format!(
                        "step=cost within={budget} first={} chosen={} candidates=",
                        cost.first.map_or("none", id),
                        cost.chosen.map_or("none (no data)", id),
                    );
                    out.list_or_none(
                        &head,
                        cost.within
                            .iter()
                            .map(|&(r, c)| format!("{}(cost={c})", id(r))),
                    );
                }
                Step::Eligibility { want, removed } => {
                    let why = match want {
                        Want::V4 => "(no-v4)",
                        Want::V6 => "(no-v6)",
                        Want::Any => "(no-endpoints)",
                    };
                    out.list_or_none(
                        &format!("step=eligibility want={} removed=", want.as_str()),
                        removed.iter().map(|&r| format!("{}{why}", id(r))),
                    );
                }
                Step::Ordering { basis, order, seed } => {
                    let head = match seed {
                        Some(seed) => {
                            format!("step=order basis={} seed={seed} order=", basis.as_str())
                        }
                        None => format!("step=order basis={} order=", basis.as_str()),
                    };
                    out.list_or_none(&head, order.iter().map(|&r| id(r)));
                }
                Step::Health { removed } => out.list_or_none(
                    "step=health removed=",
                    removed
                        .iter()
                        .map(|&(r, e)| format!("{}({})", id(r), e.as_str())),
                ),
                Step::FailOpen { tier } => out.push(format!(
                    "step=fail-open ignored={}",
                    match tier {
                        FailOpenTier::IgnoreHealth => "health",
                        FailOpenTier::IgnoreOperator => "health+operator",
                    }
                )),
                Step::FailClosed => out.push("step=fail-closed nothing-serving".to_owned()),
                Step::Select { answers, chosen } => out.list(
                    &format!("step=select first={answers} chosen="),
                    chosen.iter().map(|&r| id(r)),
                ),
            }
        }
        if !self.ttl_lowered_by.is_empty() {
            out.list(
                &format!(
                    "ttl={} policy-ttl={} lowered-by=",
                    self.ttl, self.policy_ttl
                ),
                self.ttl_lowered_by.iter().map(|&r| {
                    let why = self
                        .statuses
                        .iter()
                        .find(|c| c.region == r)
                        .and_then(|c| c.status.ttl_lowered_because())
                        .unwrap_or("?");
                    format!("{}({why})", id(r))
                }),
            );
        }
        let tail = format!(
            " scope={} ttl={} reason={}",
            self.ecs_scope,
            self.ttl,
            self.reason.as_str()
        );
        match &self.outcome {
            Outcome::Regions(regions) => {
                let mut line = "answer=".to_owned();
                for (i, &r) in regions.iter().enumerate() {
                    if i > 0 {
                        line.push(',');
                    }
                    line.push_str(id(r));
                }
                line.push_str(&tail);
                out.push(line);
            }
            Outcome::NoData => out.push(format!("answer=nodata{tail}")),
            Outcome::ServFail => out.push(format!("answer=servfail{tail}")),
        }
        out.0
    }
}

/// Accumulates lines, keeping each within [`MAX_LINE`] bytes.
#[derive(Default)]
struct Lines(Vec<String>);

impl Lines {
    fn push(&mut self, mut line: String) {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        self.0.push(line);
    }

    /// `head` followed by comma-separated items, continued on new lines (same head) as needed.
    fn list<S: AsRef<str>>(&mut self, head: &str, items: impl Iterator<Item = S>) {
        let mut line = head.to_owned();
        let mut empty = true;
        for item in items {
            let item = item.as_ref();
            let sep = usize::from(!empty);
            if !empty && line.len() + sep + item.len() > MAX_LINE {
                self.push(std::mem::replace(&mut line, head.to_owned()));
                empty = true;
            }
            if !empty {
                line.push(',');
            }
            line.push_str(item);
            empty = false;
        }
        self.push(line);
    }

    fn list_or_none<S: AsRef<str>>(&mut self, head: &str, items: impl Iterator<Item = S>) {
        let mut items = items.peekable();
        if items.peek().is_none() {
            self.push(format!("{head}none"));
        } else {
            self.list(head, items);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_wrap_within_the_limit() {
        let mut lines = Lines::default();
        let items: Vec<String> = (0..100).map(|i| format!("region-{i:03}")).collect();
        lines.list("candidates=", items.iter());
        assert!(lines.0.len() > 1);
        let mut seen = Vec::new();
        for l in &lines.0 {
            assert!(l.len() <= MAX_LINE, "{l}");
            let rest = l.strip_prefix("candidates=").unwrap();
            seen.extend(rest.split(',').map(str::to_owned));
        }
        assert_eq!(seen, items);

        let mut lines = Lines::default();
        lines.push("x".repeat(300) + "é");
        assert_eq!(lines.0[0].len(), MAX_LINE);
    }
}
