//! Whether a region may receive new clients: operator state combined with health.
//!
//! Health, spill-over and headroom come from relay reports through the health plane's view
//! ([`RegionLive`]); this module only fixes what the combination means, so the decision code
//! never interprets raw reports.

use std::time::Instant;

use crate::{
    config::model::{DnsConfig, RegionIdx},
    operator_state::{AdminState, OperatorState},
};

/// What the health plane believes about a region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Health {
    /// No fresh report: not the same as down (design §4), so it still serves.
    #[default]
    Unknown,
    Up,
    /// Serving, but answers are given a shorter TTL so clients can move sooner.
    Degraded,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }
}

/// What the health plane reports about one region at one moment: the input of
/// [`region_statuses_live`], produced by `health::view::HealthView`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RegionLive {
    pub health: Health,
    /// Capacity spill-over, with hysteresis (design §4): new clients go to the next region
    /// first. Never set without a fresh report.
    pub spilling: bool,
    /// Headroom fraction (0 = saturated, 1 = idle) of the latest fresh report.
    pub headroom: Option<f32>,
    /// When this node received that report (its own clock), for report ages.
    pub report_received: Option<Instant>,
}

/// Everything the decision needs to know about a region right now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RegionStatus {
    pub admin: AdminState,
    /// Operator multiplier on capacity in the weighted mode, in percent.
    pub weight_percent: u32,
    pub health: Health,
    /// Serving but short of headroom: ordered after every serving region that is not.
    pub spilling: bool,
    /// Headroom fraction of the latest fresh report, if any.
    pub headroom: Option<f32>,
    /// When the latest fresh report was received, if any.
    pub report_received: Option<Instant>,
}

impl Default for RegionStatus {
    fn default() -> Self {
        Self {
            admin: AdminState::Auto,
            weight_percent: 100,
            health: Health::Unknown,
            spilling: false,
            headroom: None,
            report_received: None,
        }
    }
}

/// Why a region is left out by the health filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusion {
    Drain,
    ForceDown,
    Down,
}

impl Exclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::ForceDown => "force_down",
            Self::Down => "down",
        }
    }
}

impl RegionStatus {
    /// Why this region must not get new clients, or `None` when it serves.
    pub fn exclusion(&self) -> Option<Exclusion> {
        match (self.admin, self.health) {
            (AdminState::ForceUp, _) => None,
            (AdminState::ForceDown, _) => Some(Exclusion::ForceDown),
            (AdminState::Drain, _) => Some(Exclusion::Drain),
            (AdminState::Auto, Health::Down) => Some(Exclusion::Down),
            (AdminState::Auto, Health::Unknown | Health::Up | Health::Degraded) => None,
        }
    }

    pub fn is_serving(&self) -> bool {
        self.exclusion().is_none()
    }

    /// Left out only because health says down, not by an operator decision. Fail-open falls
    /// back to these first: "answer as if all were healthy" must not undo a drain while a
    /// merely unhealthy region is available.
    pub fn is_health_excluded_only(&self) -> bool {
        self.exclusion() == Some(Exclusion::Down)
    }

    /// Whether answers that include this region as a candidate get a shorter TTL
    /// (gdnsd halves it while a resource is in transition).
    pub fn lowers_ttl(&self) -> bool {
        self.ttl_lowered_because().is_some()
    }

    /// Why this region lowers the TTL of answers it is a candidate of, if it does.
    pub fn ttl_lowered_because(&self) -> Option<&'static str> {
        if self.admin == AdminState::Drain {
            Some("drain")
        } else if self.health == Health::Degraded {
            Some("degraded")
        } else if self.spilling && self.is_serving() {
            Some("spilling")
        } else {
            None
        }
    }

    /// Spilling and serving: ordered after the serving regions that are not spilling.
    pub fn is_spilling(&self) -> bool {
        self.spilling && self.is_serving()
    }
}

/// Combines operator state and health into one status per region, indexed by [`RegionIdx`].
/// `health` is indexed the same way; regions past its end are [`Health::Unknown`].
pub fn region_statuses(
    config: &DnsConfig,
    operator: &OperatorState,
    health: &[Health],
) -> Vec<RegionStatus> {
    let live: Vec<RegionLive> = health
        .iter()
        .map(|&health| RegionLive {
            health,
            ..RegionLive::default()
        })
        .collect();
    region_statuses_live(config, operator, &live)
}

/// Like [`region_statuses`], from the health plane's full per-region state.
pub fn region_statuses_live(
    config: &DnsConfig,
    operator: &OperatorState,
    live: &[RegionLive],
) -> Vec<RegionStatus> {
    config
        .regions
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let op = operator.region(&region.id);
            let live = live.get(i).copied().unwrap_or_default();
            RegionStatus {
                admin: op.admin,
                weight_percent: op.weight_percent,
                health: live.health,
                spilling: live.spilling,
                headroom: live.headroom,
                report_received: live.report_received,
            }
        })
        .collect()
}

/// The status of `r` in a status list built by [`region_statuses`].
pub(crate) fn status_of(statuses: &[RegionStatus], r: RegionIdx) -> RegionStatus {
    statuses.get(r.get()).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_table() {
        use AdminState::*;
        use Health::*;
        let cases = [
            (Auto, Unknown, None, false),
            (Auto, Up, None, false),
            (Auto, Degraded, None, true),
            (Auto, Down, Some(Exclusion::Down), false),
            (ForceUp, Down, None, false),
            (ForceUp, Degraded, None, true),
            (ForceDown, Up, Some(Exclusion::ForceDown), false),
            (Drain, Up, Some(Exclusion::Drain), true),
            (Drain, Down, Some(Exclusion::Drain), true),
        ];
        for (admin, health, exclusion, lowers) in cases {
            let s = RegionStatus {
                admin,
                health,
                ..RegionStatus::default()
            };
            assert_eq!(s.exclusion(), exclusion, "{admin:?} {health:?}");
            assert_eq!(s.is_serving(), exclusion.is_none());
            assert_eq!(s.lowers_ttl(), lowers, "{admin:?} {health:?}");
            // Spilling lowers the TTL and orders last only while the region serves.
            let spilling = RegionStatus {
                spilling: true,
                ..s
            };
            assert_eq!(spilling.is_spilling(), s.is_serving());
            assert_eq!(spilling.lowers_ttl(), lowers || s.is_serving());
        }
    }
}
