//! Rate-limited weight changes (design §4): in weighted mode a region's effective weight
//! follows its target (capacity × operator weight, 0 when not serving) along a ramp, so a
//! change does not move a whole region's traffic onto its neighbours within one TTL.
//!
//! The rule, per region, with `period` the shortest TTL of the weighted names it is a
//! candidate of:
//! - a target of 0 (drained, down, forced down, weight 0) applies at once: safety first;
//! - otherwise the effective weight moves towards the target by at most a factor of two per
//!   `period`, continuously (`from · 2^(±elapsed/period)`), and never past it;
//! - a region coming back (or up from less than an eighth of its target) starts at an eighth
//!   of the target, so it reaches its full weight three periods later.
//!
//! A ramp is a pure function of `now`: it is re-targeted when statuses change (health
//! refresh, operator action) and evaluated by each query at its own `now`, so traffic keeps
//! converging between refreshes and without any health channel at all.

use std::time::{Duration, Instant};

/// Where a returning region starts, as a fraction of its target.
const RETURN_FRACTION: f64 = 1.0 / 8.0;

/// One region's weight ramp.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightRamp {
    from: f64,
    target: f64,
    /// `None`: settled at `target`.
    since: Option<Instant>,
    period: Duration,
}

impl WeightRamp {
    /// Already at `target` (first build: a node that has just started has no history).
    pub fn settled(target: f64, period: Duration) -> WeightRamp {
        WeightRamp {
            from: target,
            target,
            since: None,
            period,
        }
    }

    pub fn target(&self) -> f64 {
        self.target
    }

    /// The effective weight at `now`.
    pub fn at(&self, now: Instant) -> f64 {
        let Some(since) = self.since else {
            return self.target;
        };
        if self.target <= 0.0 {
            return 0.0;
        }
        let period = self.period.as_secs_f64();
        let k = if period > 0.0 {
            now.saturating_duration_since(since).as_secs_f64() / period
        } else {
            f64::INFINITY
        };
        if self.target >= self.from {
            let start = self.from.max(self.target * RETURN_FRACTION);
            (start * k.exp2()).min(self.target)
        } else {
            (self.from * (-k).exp2()).max(self.target)
        }
    }

    /// The ramp towards `target` from wherever this one is at `now`.
    pub fn retarget(&self, target: f64, now: Instant) -> WeightRamp {
        if target == self.target {
            return *self;
        }
        let from = self.at(now);
        if from == target {
            return WeightRamp::settled(target, self.period);
        }
        WeightRamp {
            from,
            target,
            since: Some(now),
            period: self.period,
        }
    }

    /// Whether it has reached its target by `now`.
    pub fn is_settled(&self, now: Instant) -> bool {
        self.at(now) == self.target
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn ramp_table() {
        let t0 = Instant::now();
        let after = |ttls: f64| t0 + TTL.mul_f64(ttls);
        let base = WeightRamp::settled(10_000.0, TTL);
        // (new target, (TTLs after the change, effective weight) ...)
        let cases: &[(f64, &[(f64, f64)])] = &[
            (0.0, &[(0.0, 0.0), (5.0, 0.0)]),
            (
                40_000.0,
                &[
                    (0.0, 10_000.0),
                    (1.0, 20_000.0),
                    (2.0, 40_000.0),
                    (9.0, 40_000.0),
                ],
            ),
            (
                2_500.0,
                &[
                    (0.0, 10_000.0),
                    (1.0, 5_000.0),
                    (2.0, 2_500.0),
                    (3.0, 2_500.0),
                ],
            ),
            (10_000.0, &[(0.0, 10_000.0)]),
        ];
        for (target, points) in cases {
            let ramp = base.retarget(*target, t0);
            for &(ttls, want) in *points {
                let got = ramp.at(after(ttls));
                assert!(
                    (got - want).abs() < 1e-6,
                    "{target} at {ttls}: {got} vs {want}"
                );
            }
        }
        // Coming back from 0: an eighth, then doubling.
        let down = base.retarget(0.0, t0);
        let back = down.retarget(10_000.0, after(1.0));
        for (ttls, want) in [(1.0, 1_250.0), (2.0, 2_500.0), (4.0, 10_000.0)] {
            assert!((back.at(after(ttls)) - want).abs() < 1e-6, "{ttls}");
        }
        assert!(back.is_settled(after(4.0)) && !back.is_settled(after(3.5)));
    }

    proptest! {
        /// Between any two moments of one ramp the weight changes by at most a factor of
        /// `2^(elapsed/period)` (except the drop to 0 and the jump up to an eighth of the
        /// target at the start), and it reaches its target within log2 of the ratio.
        #[test]
        fn never_exceeds_its_step_and_converges(
            from in 1.0f64..1e6,
            target in 1.0f64..1e6,
            a in 0u64..10_000,
            b in 0u64..10_000,
        ) {
            let t0 = Instant::now();
            let ramp = WeightRamp::settled(from, TTL).retarget(target, t0);
            let (a, b) = (a.min(b), a.max(b));
            let (ta, tb) = (t0 + Duration::from_millis(a * 30), t0 + Duration::from_millis(b * 30));
            let (wa, wb) = (ramp.at(ta), ramp.at(tb));
            let allowed = ((b - a) as f64 / 1000.0).exp2() * (1.0 + 1e-9);
            prop_assert!(wb / wa <= allowed && wa / wb <= allowed, "{} -> {} in {} TTLs", wa, wb, (b - a) as f64 / 1000.0);
            // Monotone towards the target.
            if target >= from { prop_assert!(wb >= wa) } else { prop_assert!(wb <= wa) }
            let start = if target > from { from.max(target / 8.0) } else { from };
            let needed = (target / start).log2().abs();
            let settle = t0 + TTL.mul_f64(needed + 1e-6);
            prop_assert!((ramp.at(settle) - target).abs() <= target * 1e-9);
        }
    }
}
