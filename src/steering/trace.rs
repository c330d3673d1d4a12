//! The decision trace behind `_why.<name>`: what the steering core saw and did, step by step.
//!
//! Built only when a query asks for it, from the same inputs as the decision (it re-derives
//! the per-step sets instead of making the query path record them), and rendered as short
//! lines that fit one TXT character-string each.

use std::{fmt::Write, net::IpAddr};

use crate::{
    config::model::{AllUnhealthy, DnsConfig, RegionIdx, SteeringMode},
    geo::GeoMatch,
};

use super::{
    Basis, ClientInput, ClientSource, Decision, Exclusion, MapLookup, MapOrigin, Outcome,
    PolicyIdx, PolicyOrdering, Question, Reason, RegionStatus, SteeringTable, Tier, Want,
    weighted_permutation,
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

/// One step of the chain and its effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
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
    /// Eligible regions that are not serving.
    Health {
        removed: Vec<(RegionIdx, Exclusion)>,
    },
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
    /// Status of every candidate.
    pub statuses: Vec<(RegionIdx, RegionStatus, u64)>,
    pub steps: Vec<Step>,
    pub outcome: Outcome,
    pub reason: Reason,
    pub ecs_scope: u8,
    pub ttl: u32,
    pub policy_ttl: u32,
    /// Candidates whose state lowered the TTL.
    pub ttl_lowered_by: Vec<RegionIdx>,
}

pub(super) fn explain(
    table: &SteeringTable,
    policy: PolicyIdx,
    client: &ClientInput,
    question: &Question,
    decision: &Decision,
    lookup: Option<MapLookup<'_>>,
    tier: Tier,
) -> Trace {
    let p = &table.compiled.policies[policy.0 as usize];
    let want = question.want;
    let eligible = |r: RegionIdx| table.has_endpoints_for(r, want);
    let candidates = p.candidates.to_vec();

    let (order, basis): (Vec<RegionIdx>, Basis) = match (&p.ordering, lookup) {
        (_, Some(l)) => (l.class.to_vec(), l.basis),
        (PolicyOrdering::Fixed(b), None) => (candidates.clone(), *b),
        _ => (candidates.clone(), Basis::Weighted),
    };

    let mut steps = vec![Step::Eligibility {
        want,
        removed: candidates
            .iter()
            .copied()
            .filter(|&r| !eligible(r))
            .collect(),
    }];
    if tier != Tier::NoEligible {
        let considered = |r: RegionIdx| {
            eligible(r)
                && match tier {
                    Tier::Serving | Tier::FailClosed | Tier::NoEligible => {
                        table.status(r).is_serving()
                    }
                    Tier::FailOpen(FailOpenTier::IgnoreHealth) => {
                        table.status(r).is_health_excluded_only()
                    }
                    Tier::FailOpen(FailOpenTier::IgnoreOperator) => true,
                }
        };
        let (walked, seed) = match p.ordering {
            PolicyOrdering::Weighted => {
                let mut drawn = Vec::new();
                weighted_permutation(
                    &order,
                    considered,
                    |r| table.weight(r),
                    client.seed,
                    order.len(),
                    &mut drawn,
                );
                (drawn, Some(client.seed))
            }
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
            .map(|&r| (r, table.status(r), table.weight(r)))
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
                SteeringMode::Latency(_) => "latency",
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
        for (r, s, weight) in &self.statuses {
            out.push(format!(
                "region={} admin={} health={} weight={}% effective-weight={weight}",
                id(*r),
                s.admin.as_str(),
                s.health.as_str(),
                s.weight_percent,
            ));
        }
        for step in &self.steps {
            match step {
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
                    let s = self
                        .statuses
                        .iter()
                        .find(|(x, _, _)| *x == r)
                        .map(|(_, s, _)| *s)
                        .unwrap_or_default();
                    let why = if s.admin == crate::operator_state::AdminState::Drain {
                        "drain"
                    } else {
                        "degraded"
                    };
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
