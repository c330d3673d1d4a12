//! The two per-backend state machines behind availability, as plain values: active-probe
//! hysteresis ([`ProbeHealth`]) and passive outlier ejection ([`Outlier`]). No clock, no
//! locks: [`super::Pool`] owns the values and hands `now` in.

use std::time::{Duration, Instant};

use crate::relay::config::model::HealthChecks;

/// What the active probes say about a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Health {
    /// Not probed enough to say; still used (a fresh relay must not refuse all work).
    #[default]
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// The two probes a backend gets (design §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// The server's own liveness endpoint (`/health`, `/`, `/v1/models`).
    Liveness,
    /// A one-token completion: catches "`/health` says 200 while generation hangs".
    Deep,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Deep => "deep",
        }
    }
}

/// Hysteresis over one kind of probe: `down_after` consecutive failures take it down, and only
/// `up_after` consecutive successes bring it back, so one lost probe does not flap it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ProbeHealth {
    pub(super) state: Health,
    good_streak: u32,
    bad_streak: u32,
}

impl ProbeHealth {
    pub(super) fn record(&mut self, ok: bool, policy: &HealthChecks) -> Health {
        let down_after = policy.eject_after_failures.max(1);
        let up_after = policy.healthy_after_successes.max(1);
        if ok {
            self.good_streak = self.good_streak.saturating_add(1);
            self.bad_streak = 0;
            self.state = match self.state {
                // Unknown was already in use; a success only confirms it.
                Health::Unknown | Health::Up => Health::Up,
                Health::Down if self.good_streak >= up_after => Health::Up,
                Health::Down => Health::Down,
            };
        } else {
            self.bad_streak = self.bad_streak.saturating_add(1);
            self.good_streak = 0;
            if self.bad_streak >= down_after {
                self.state = Health::Down;
            }
        }
        self.state
    }
}

/// Liveness and deep probes each run their own hysteresis, so the frequent liveness successes
/// cannot reset the streak of the slow deep probe; either one being down takes the backend out.
pub(super) fn combined(liveness: Health, deep: Health) -> Health {
    match (liveness, deep) {
        (Health::Down, _) | (_, Health::Down) => Health::Down,
        (Health::Up, _) | (_, Health::Up) => Health::Up,
        (Health::Unknown, Health::Unknown) => Health::Unknown,
    }
}

/// What went wrong with one proxied request, as the proxy saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Connect,
    ResetBeforeResponse,
    /// A response status that is the backend's fault (5xx other than 503).
    Status {
        code: u16,
    },
    FirstByteTimeout,
    IdleTimeout,
    /// 429 or 503: the backend works but is full.
    Overloaded {
        retry_after: Option<Duration>,
    },
}

/// How long an overloaded backend without `Retry-After` is left alone: long enough for a batch
/// slot to free up, short enough not to waste capacity.
pub(super) const OVERLOAD_PAUSE: Duration = Duration::from_secs(1);

/// Passive outlier detection from real traffic (Envoy's consecutive-errors ejection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Outlier {
    pub(super) consecutive_failures: u32,
    /// Ejections since the last success: the exponent of the backoff.
    ejections: u32,
    pub(super) ejected_until: Option<Instant>,
    /// Set by `Retry-After`: not a fault, so it never grows the backoff.
    pub(super) paused_until: Option<Instant>,
}

impl Outlier {
    pub(super) fn is_out(&self, now: Instant) -> bool {
        let until = |t: Option<Instant>| t.is_some_and(|t| t > now);
        until(self.ejected_until) || until(self.paused_until)
    }

    /// Paused at the backend's own request (429/503), as opposed to ejected.
    pub(super) fn is_paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|t| t > now)
    }

    pub(super) fn record_success(&mut self, now: Instant) {
        self.consecutive_failures = 0;
        // A success from a request sent before the ejection says nothing about its cause.
        if self.ejected_until.is_none_or(|t| t <= now) {
            self.ejections = 0;
        }
    }

    /// Returns the ejection length when this failure ejected the backend.
    pub(super) fn record_failure(
        &mut self,
        failure: Failure,
        now: Instant,
        policy: &HealthChecks,
    ) -> Option<Duration> {
        let failure = match failure {
            Failure::Status { code: 429 | 503 } => Failure::Overloaded { retry_after: None },
            Failure::Status { code } if code < 500 => return None, // the client's fault
            other => other,
        };
        if let Failure::Overloaded { retry_after } = failure {
            // Overload is the backend working as designed: it counts once, so overload alone
            // never ejects it, and the pause keeps it out for as long as it asked (capped, so a
            // backend cannot take itself out for longer than an ejection could).
            self.consecutive_failures = self.consecutive_failures.max(1);
            let pause = retry_after
                .unwrap_or(OVERLOAD_PAUSE)
                .min(policy.max_ejection);
            let until = now + pause;
            self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
            return None;
        }
        if self.ejected_until.is_some_and(|t| t > now) {
            // Requests that were in flight when it was ejected: the same incident.
            return None;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures < policy.eject_after_failures.max(1) {
            return None;
        }
        self.consecutive_failures = 0;
        self.ejections = self.ejections.saturating_add(1);
        let length = ejection_length(self.ejections, policy);
        self.ejected_until = Some(now + length);
        Some(length)
    }
}

/// `base × 2^(n−1)`, capped at `max`.
pub(super) fn ejection_length(ejections: u32, policy: &HealthChecks) -> Duration {
    let doublings = ejections.saturating_sub(1).min(31);
    policy
        .base_ejection
        .saturating_mul(1u32 << doublings)
        .min(policy.max_ejection)
}
