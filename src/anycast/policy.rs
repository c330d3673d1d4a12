//! When this PoP should announce the anycast address, and when BIRD must next be told (pure).
//!
//! [`Announcement`] turns what the node observes about itself into an [`Intent`]: announce
//! once it serves a valid snapshot, withdraw at once when it drains, shuts down or fails its
//! self-check, and announce again only after it has been fit for a while, so a flapping check
//! does not flap a BGP route (each flap costs every router on the path a best-path run, and
//! dampening may then hide the PoP for minutes). [`BirdSync`] decides when the intent has to be
//! (re)sent to BIRD: at once when it changes, with exponential backoff while BIRD fails, and
//! every [`RESYNC_AFTER`] otherwise, so a restarted BIRD or a hand-typed `birdc` command is
//! corrected. Both take `now` and do no IO.

use std::time::{Duration, Instant};

/// How often the intent is re-sent although BIRD already confirmed it.
pub const RESYNC_AFTER: Duration = Duration::from_secs(10);
/// First retry delay after a failed exchange with BIRD; doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the node knows about itself at one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Listeners bound and the first snapshot loaded.
    pub serving: bool,
    /// The operator asked this PoP to leave the anycast (it keeps answering what reaches it).
    pub draining: bool,
    /// Graceful shutdown began: the withdrawal has to happen before the listeners close.
    pub shutting_down: bool,
    /// A listener task ended on its own.
    pub listener_failed: bool,
    /// The serving snapshot can be answered from.
    pub snapshot_usable: bool,
    /// When the health plane last received a relay report (`None`: none yet, or no plane).
    pub last_health_report: Option<Instant>,
}

/// Why the PoP is not (or no longer) announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WithdrawReason {
    /// Not serving yet: listeners not bound or no snapshot loaded.
    NotServing,
    Draining,
    ShuttingDown,
    ListenerFailed,
    SnapshotUnusable,
    /// No relay report for longer than `max_health_silence`.
    HealthSilent {
        silent_for: Duration,
    },
    /// Fit again, but not yet for `reannounce_after`.
    Recovering,
}

impl WithdrawReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            WithdrawReason::NotServing => "not_serving",
            WithdrawReason::Draining => "draining",
            WithdrawReason::ShuttingDown => "shutting_down",
            WithdrawReason::ListenerFailed => "listener_failed",
            WithdrawReason::SnapshotUnusable => "snapshot_unusable",
            WithdrawReason::HealthSilent { .. } => "health_silent",
            WithdrawReason::Recovering => "recovering",
        }
    }

    /// A failed self-check, after which the PoP must prove itself before it is announced again
    /// (draining and starting up are not faults: their end is announced at once).
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            WithdrawReason::ListenerFailed
                | WithdrawReason::SnapshotUnusable
                | WithdrawReason::HealthSilent { .. }
        )
    }
}

/// Whether the anycast route should be in BGP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    Announce,
    Withdraw(WithdrawReason),
}

impl Intent {
    pub fn announce(&self) -> bool {
        matches!(self, Intent::Announce)
    }
}

/// The self-check's thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Withdraw when no relay report arrived for this long (counted from start-up until the
    /// first report); `None` = the health plane is not part of the self-check.
    pub max_health_silence: Option<Duration>,
    /// After a failed self-check, how long the node must be fit before it is announced again.
    pub reannounce_after: Duration,
}

impl Settings {
    /// Re-announce after three check intervals of fitness.
    pub fn from_config(config: &crate::config::model::Anycast) -> Settings {
        Settings {
            max_health_silence: config.max_health_silence,
            reannounce_after: config.check_interval.saturating_mul(3),
        }
    }
}

/// The announcement decision, with its hysteresis.
#[derive(Clone, Debug)]
pub struct Announcement {
    settings: Settings,
    started: Instant,
    intent: Intent,
    /// A self-check failed since the last announcement: re-announcing needs a fit streak.
    needs_proof: bool,
    fit_since: Option<Instant>,
    /// Shutting down is final, whatever later observations say.
    shut_down: bool,
}

impl Announcement {
    pub fn new(settings: Settings, now: Instant) -> Announcement {
        Announcement {
            settings,
            started: now,
            intent: Intent::Withdraw(WithdrawReason::NotServing),
            needs_proof: false,
            fit_since: None,
            shut_down: false,
        }
    }

    pub fn intent(&self) -> Intent {
        self.intent
    }

    /// The intent after observing `observation` at `now`.
    pub fn observe(&mut self, now: Instant, observation: &Observation) -> Intent {
        self.shut_down |= observation.shutting_down;
        self.intent = match self.unfit(now, observation) {
            Some(reason) => {
                self.needs_proof |= reason.is_fault();
                self.fit_since = None;
                Intent::Withdraw(reason)
            }
            None if self.intent.announce() || !self.needs_proof => Intent::Announce,
            None => {
                let since = *self.fit_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= self.settings.reannounce_after {
                    self.needs_proof = false;
                    self.fit_since = None;
                    Intent::Announce
                } else {
                    Intent::Withdraw(WithdrawReason::Recovering)
                }
            }
        };
        self.intent
    }

    /// The first reason not to announce, most deliberate first.
    fn unfit(&self, now: Instant, observation: &Observation) -> Option<WithdrawReason> {
        if self.shut_down {
            return Some(WithdrawReason::ShuttingDown);
        }
        if observation.draining {
            return Some(WithdrawReason::Draining);
        }
        if observation.listener_failed {
            return Some(WithdrawReason::ListenerFailed);
        }
        if !observation.snapshot_usable {
            return Some(WithdrawReason::SnapshotUnusable);
        }
        if !observation.serving {
            return Some(WithdrawReason::NotServing);
        }
        let max = self.settings.max_health_silence?;
        // Until the first report, silence counts from start-up: a fresh node gets the same
        // grace as a running one.
        let heard = observation.last_health_report.unwrap_or(self.started);
        let silent_for = now.saturating_duration_since(heard);
        (silent_for > max).then_some(WithdrawReason::HealthSilent { silent_for })
    }
}

/// What BIRD last confirmed, and when to talk to it next.
#[derive(Clone, Debug)]
pub struct BirdSync {
    /// `Some(true)`: BIRD said the protocol is enabled. `None`: unknown (never asked, or the
    /// last exchange failed, after which BIRD may have restarted with its config's default).
    confirmed: Option<bool>,
    /// The intent the last exchange was for.
    sent: Option<bool>,
    last_success: Option<Instant>,
    failures: u32,
    retry_at: Instant,
}

impl BirdSync {
    pub fn new(now: Instant) -> BirdSync {
        BirdSync {
            confirmed: None,
            sent: None,
            last_success: None,
            failures: 0,
            retry_at: now,
        }
    }

    pub fn confirmed(&self) -> Option<bool> {
        self.confirmed
    }

    pub fn failing(&self) -> bool {
        self.failures > 0
    }

    /// When `want` has to be sent next: now for a new intent, after the backoff while BIRD
    /// fails, at the resync otherwise.
    pub fn next_exchange(&self, want: bool) -> Option<Instant> {
        if self.sent != Some(want) {
            // A new intent goes out at once: a withdrawal must not wait for a backoff that an
            // old failure started.
            return None;
        }
        if self.failures > 0 || self.confirmed != Some(want) {
            return Some(self.retry_at);
        }
        self.last_success.map(|at| at + RESYNC_AFTER)
    }

    /// Whether `want` has to be sent at `now`.
    pub fn due(&self, now: Instant, want: bool) -> bool {
        self.next_exchange(want).is_none_or(|at| now >= at)
    }

    /// BIRD confirmed the protocol `enabled` (or not) after being asked for `want`.
    pub fn succeeded(&mut self, now: Instant, want: bool, enabled: bool) {
        self.sent = Some(want);
        self.confirmed = Some(enabled);
        self.last_success = Some(now);
        self.failures = 0;
        self.retry_at = now + RETRY_FIRST;
    }

    /// The exchange for `want` failed at `now`; returns the delay before the next attempt.
    pub fn failed(&mut self, now: Instant, want: bool) -> Duration {
        self.sent = Some(want);
        self.confirmed = None;
        let delay = RETRY_FIRST
            .saturating_mul(1u32 << self.failures.min(16))
            .min(RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = now + delay;
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIT: Observation = Observation {
        serving: true,
        draining: false,
        shutting_down: false,
        listener_failed: false,
        snapshot_usable: true,
        last_health_report: None,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn settings(max_health_silence: Option<u64>) -> Settings {
        Settings {
            max_health_silence: max_health_silence.map(ms),
            reannounce_after: ms(3000),
        }
    }

    /// Each step: (milliseconds since start, observation, expected intent).
    type Step = (u64, Observation, Intent);

    fn run(settings: Settings, steps: &[Step]) {
        let start = Instant::now();
        let mut announcement = Announcement::new(settings, start);
        for (i, (at, observation, expected)) in steps.iter().enumerate() {
            let intent = announcement.observe(start + ms(*at), observation);
            assert_eq!(intent, *expected, "step {i} at {at} ms: {observation:?}");
        }
    }

    use Intent::{Announce, Withdraw};
    use WithdrawReason as R;

    #[test]
    fn announces_once_serving_and_withdraws_at_once_when_draining() {
        let starting = Observation {
            serving: false,
            ..FIT
        };
        let draining = Observation {
            draining: true,
            ..FIT
        };
        run(
            settings(None),
            &[
                (0, starting, Withdraw(R::NotServing)),
                (100, FIT, Announce),
                (200, draining, Withdraw(R::Draining)),
                // The end of a drain is the operator's decision: no proof period.
                (300, FIT, Announce),
            ],
        );
    }

    #[test]
    fn a_failed_self_check_needs_a_fit_streak_before_announcing_again() {
        let failed = Observation {
            snapshot_usable: false,
            ..FIT
        };
        run(
            settings(None),
            &[
                (0, FIT, Announce),
                (1000, failed, Withdraw(R::SnapshotUnusable)),
                (2000, FIT, Withdraw(R::Recovering)),
                (4000, FIT, Withdraw(R::Recovering)),
                // A relapse restarts the streak.
                (4500, failed, Withdraw(R::SnapshotUnusable)),
                (5000, FIT, Withdraw(R::Recovering)),
                (7999, FIT, Withdraw(R::Recovering)),
                (8000, FIT, Announce),
                (9000, FIT, Announce),
            ],
        );
    }

    #[test]
    fn shutting_down_is_final_and_wins_over_everything() {
        let stopping = Observation {
            shutting_down: true,
            ..FIT
        };
        let draining_and_broken = Observation {
            draining: true,
            listener_failed: true,
            ..FIT
        };
        run(
            settings(None),
            &[
                (0, FIT, Announce),
                (1, draining_and_broken, Withdraw(R::Draining)),
                (2, stopping, Withdraw(R::ShuttingDown)),
                (10_000, FIT, Withdraw(R::ShuttingDown)),
            ],
        );
    }

    #[test]
    fn a_failed_listener_withdraws() {
        let failed = Observation {
            listener_failed: true,
            ..FIT
        };
        run(
            settings(None),
            &[(0, FIT, Announce), (5, failed, Withdraw(R::ListenerFailed))],
        );
    }

    #[test]
    fn health_silence_counts_from_start_until_the_first_report() {
        let start = Instant::now();
        let mut announcement = Announcement::new(settings(Some(5000)), start);
        let heard_at = |at: u64| Observation {
            last_health_report: Some(start + ms(at)),
            ..FIT
        };
        let cases: &[(u64, Observation, Intent)] = &[
            (0, FIT, Announce),
            (5000, FIT, Announce),
            (
                5001,
                FIT,
                Withdraw(R::HealthSilent {
                    silent_for: ms(5001),
                }),
            ),
            (6000, heard_at(5500), Withdraw(R::Recovering)),
            (9000, heard_at(8500), Announce),
            (
                13_501,
                heard_at(8500),
                Withdraw(R::HealthSilent {
                    silent_for: ms(5001),
                }),
            ),
        ];
        for (at, observation, expected) in cases {
            assert_eq!(
                announcement.observe(start + ms(*at), observation),
                *expected,
                "at {at} ms"
            );
        }
    }

    #[test]
    fn without_a_silence_limit_the_health_plane_is_ignored() {
        run(
            settings(None),
            &[(0, FIT, Announce), (3_600_000, FIT, Announce)],
        );
    }

    #[test]
    fn bird_is_told_at_once_then_resynced_and_backed_off_while_failing() {
        let start = Instant::now();
        let at = |n: u64| start + ms(n);
        let mut sync = BirdSync::new(start);
        assert!(sync.due(at(0), true), "a first intent goes out at once");
        sync.succeeded(at(0), true, true);
        assert_eq!(sync.confirmed(), Some(true));
        assert!(!sync.due(at(9_999), true));
        assert!(sync.due(at(10_000), true), "resync");

        // A new intent ignores the resync timer.
        assert!(sync.due(at(1), false));
        let delays: Vec<u64> = (0..8)
            .map(|i| sync.failed(at(i), false).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]
        );
        assert_eq!(sync.confirmed(), None, "unknown while BIRD fails");
        assert!(sync.failing());
        assert!(!sync.due(at(29_000), false), "backing off");
        assert!(sync.due(at(37_000), false));
        // Changing the intent again cuts the backoff short.
        assert!(sync.due(at(8), true));
        sync.succeeded(at(9), true, true);
        assert!(!sync.failing());
        assert_eq!(sync.next_exchange(true), Some(at(9) + RESYNC_AFTER));
    }

    #[test]
    fn a_reply_contradicting_the_intent_is_retried() {
        let start = Instant::now();
        let mut sync = BirdSync::new(start);
        // Asked to enable, BIRD says disabled (cannot happen with BIRD 2, but must not stall).
        sync.succeeded(start, true, false);
        assert_eq!(sync.next_exchange(true), Some(start + RETRY_FIRST));
    }
}
