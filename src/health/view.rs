//! What the DNS node believes about each region's health, from the reports in the ledger
//! (design §4): [`Health`] per configured region, with hysteresis on the down/serving boundary.
//!
//! Classification of one fresh report:
//!
//! | report                                   | class    |
//! |------------------------------------------|----------|
//! | state `ok`, `accept_new`                 | good     |
//! | state `degraded`, or `ok` without `accept_new` | degraded |
//! | state `down` or `draining`               | bad      |
//!
//! A region leaves service ([`Health::Down`]) only after [`Hysteresis::down_after`] consecutive
//! bad reports, and returns only after [`Hysteresis::up_after`] consecutive good or degraded
//! ones; more are needed to come back than to leave, so a flapping relay does not make answers
//! flap. While serving, the latest report decides between [`Health::Up`] and
//! [`Health::Degraded`]; a bad report not yet confirmed shows as degraded (shorter TTLs while
//! the region may be on its way out). A region starts out serving: a DNS node that has just
//! started must not need several reports before it trusts a region it has never seen fail.
//!
//! A region without a fresh report is [`Health::Unknown`], not down; its counts are kept, so a
//! region that went down and then silent still has to earn its way back.
//!
//! Reports are counted as the view sees them: [`HealthView::update`] notices a new report by
//! its sequence and receive time. Called after every accepted report it counts each one; if
//! two reports of one region arrive between two calls, the earlier one is not counted, which
//! only delays a flip by one report.
//!
//! **Spill-over** has its own hysteresis on the headroom fraction of each counted report
//! ([`SpillWatermarks`]): a region starts spilling on a report at or below `trip`, and stops
//! only after `hold_reports` consecutive reports above `recover`; any report at or below
//! `recover` restarts that count. With `trip < recover`, alternating reports can never make it
//! flap. A region without a fresh report is not spilling (its state is kept for when reports
//! resume).
//!
//! **Latency**: the client RTT per prefix of every fresh report is gathered into a
//! [`LatencyTable`] (IPv4 /24, IPv6 /48 entries only).
//!
//! Pure: reads the ledger at the `now` it is given; no IO, no clock. It does not decide what
//! to answer (steering) nor which report is current (the ledger).

use std::{collections::HashMap, sync::Arc, time::Instant};

use ipnet::IpNet;

use super::{
    frame::{ReceivedReport, ReportedState},
    ledger::ReportLedger,
};
use crate::{
    config::model::{HealthChannel, RegionIdx, SpillWatermarks},
    steering::{Health, LatencyTableBuilder, LiveHealth, RegionLive},
};

/// How many consecutive reports confirm a flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    /// Bad reports in a row before a serving region is taken out.
    pub down_after: u32,
    /// Serving (good or degraded) reports in a row before a down region is put back.
    pub up_after: u32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            down_after: 2,
            up_after: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Good,
    Degraded,
    Bad,
}

fn classify(report: &ReceivedReport) -> Class {
    match report.state {
        ReportedState::Ok if report.accept_new => Class::Good,
        ReportedState::Ok | ReportedState::Degraded => Class::Degraded,
        ReportedState::Draining | ReportedState::Down => Class::Bad,
    }
}

#[derive(Debug)]
struct Track {
    serving: bool,
    /// Consecutive bad reports (while serving) or serving reports (while down).
    streak: u32,
    latest: Class,
    /// (sequence, receive time) of the last report counted.
    last_counted: Option<(u64, Instant)>,
    spilling: bool,
    /// Consecutive reports above the recovery watermark while spilling.
    recover_streak: u32,
}

impl Track {
    fn new() -> Track {
        Track {
            serving: true,
            streak: 0,
            latest: Class::Good,
            last_counted: None,
            spilling: false,
            recover_streak: 0,
        }
    }

    /// Spill-over hysteresis on one report's headroom fraction. A NaN headroom says nothing
    /// and changes nothing.
    fn count_headroom(&mut self, headroom: f64, spill: SpillWatermarks) {
        if headroom.is_nan() {
            return;
        }
        if !self.spilling {
            if headroom <= spill.trip {
                self.spilling = true;
                self.recover_streak = 0;
            }
        } else if headroom > spill.recover {
            self.recover_streak += 1;
            if self.recover_streak >= spill.hold_reports {
                self.spilling = false;
                self.recover_streak = 0;
            }
        } else {
            self.recover_streak = 0;
        }
    }

    fn count(&mut self, class: Class, hysteresis: Hysteresis) {
        self.latest = class;
        let against = match (self.serving, class) {
            (true, Class::Bad) => true,
            (true, Class::Good | Class::Degraded) => false,
            (false, Class::Bad) => false,
            (false, Class::Good | Class::Degraded) => true,
        };
        if !against {
            self.streak = 0;
            return;
        }
        self.streak += 1;
        let needed = if self.serving {
            hysteresis.down_after
        } else {
            hysteresis.up_after
        };
        if self.streak >= needed {
            self.serving = !self.serving;
            self.streak = 0;
        }
    }

    fn health(&self) -> Health {
        match (self.serving, self.latest) {
            (false, _) => Health::Down,
            (true, Class::Good) => Health::Up,
            (true, Class::Degraded | Class::Bad) => Health::Degraded,
        }
    }
}

/// What the DNS node's own probe of a region's relay found (QUIC handshake and HTTPS
/// `/health`), after its own consecutive-failure threshold. Only consulted for regions
/// without a fresh report: a silent region is down only when it is also unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeVerdict {
    Reachable,
    Unreachable,
}

/// Probe verdicts by region id; a region absent here has not been probed (yet).
pub type ProbeVerdicts = HashMap<Arc<str>, ProbeVerdict>;

/// The hysteresis state of every region the node has heard of.
#[derive(Debug)]
pub struct HealthView {
    hysteresis: Hysteresis,
    spill: SpillWatermarks,
    regions: HashMap<Arc<str>, Track>,
}

impl HealthView {
    /// A view with the default spill-over watermarks.
    pub fn new(hysteresis: Hysteresis) -> HealthView {
        HealthView::with_spill(hysteresis, SpillWatermarks::default())
    }

    pub fn with_spill(hysteresis: Hysteresis, spill: SpillWatermarks) -> HealthView {
        HealthView {
            hysteresis,
            spill,
            regions: HashMap::new(),
        }
    }

    /// The view a `[health]` section configures.
    pub fn for_channel(channel: &HealthChannel) -> HealthView {
        HealthView::with_spill(
            Hysteresis {
                down_after: channel.down_after,
                up_after: channel.up_after,
            },
            channel.spill,
        )
    }

    /// Counts the reports that arrived since the last call and returns the state of each of
    /// `regions` (the configured region ids, in config order) at `now`, with the latency
    /// table of their fresh reports. A region without a fresh report is unknown, or down when
    /// `probes` says its relay is unreachable.
    pub fn update<'a>(
        &mut self,
        ledger: &ReportLedger,
        regions: impl IntoIterator<Item = &'a str>,
        probes: &ProbeVerdicts,
        now: Instant,
    ) -> LiveHealth {
        let mut ids = Vec::new();
        let mut states = Vec::new();
        let mut latency = LatencyTableBuilder::default();
        for (i, region) in regions.into_iter().enumerate() {
            ids.push(Arc::<str>::from(region));
            let Some(report) = ledger.fresh(region, now) else {
                let health = match probes.get(region) {
                    Some(ProbeVerdict::Unreachable) => Health::Down,
                    Some(ProbeVerdict::Reachable) | None => Health::Unknown,
                };
                states.push(RegionLive {
                    health,
                    ..RegionLive::default()
                });
                continue;
            };
            // A fresh report has an age; `now - age` is its receive time exactly.
            let received_at = ledger.age(region, now).and_then(|age| now.checked_sub(age));
            let track = match self.regions.get_mut(region) {
                Some(track) => track,
                None => self
                    .regions
                    .entry(Arc::from(region))
                    .or_insert(Track::new()),
            };
            if let Some(received_at) = received_at {
                let key = (report.sequence, received_at);
                if track.last_counted != Some(key) {
                    track.last_counted = Some(key);
                    track.count(classify(report), self.hysteresis);
                    track.count_headroom(report.headroom_fraction, self.spill);
                }
            }
            // Positions beyond u16 cannot be configured regions (the config caps them).
            if let Ok(idx) = u16::try_from(i) {
                for sample in &report.client_rtt {
                    if sample.samples == 0 {
                        continue;
                    }
                    if let Ok(prefix) = sample.prefix.parse::<IpNet>() {
                        latency.add(prefix, RegionIdx(idx), sample.rtt_ms);
                    }
                }
            }
            let headroom = report.headroom_fraction;
            states.push(RegionLive {
                health: track.health(),
                spilling: track.spilling,
                headroom: headroom
                    .is_finite()
                    .then_some(headroom.clamp(0.0, 1.0) as f32),
                report_received: received_at,
            });
        }
        LiveHealth {
            ids,
            regions: states,
            latency: Arc::new(latency.build()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::{
        frame::{ReceivedRates, ReportFrame},
        ledger::Session,
    };

    const VALIDITY_MS: u32 = 1000;

    fn frame(region: &str, sequence: u64, state: ReportedState, accept_new: bool) -> ReportFrame {
        ReportFrame {
            validity_ms: VALIDITY_MS,
            report: ReceivedReport {
                version: 1,
                region: region.into(),
                sequence,
                state,
                accept_new,
                saturation: 0.1,
                capacity_units: 4,
                headroom_units: 3.6,
                headroom_fraction: 0.9,
                models: Default::default(),
                rates: ReceivedRates::default(),
                client_rtt: vec![],
            },
        }
    }

    /// One report of eu-west per step, 100 ms apart; the view is updated after each.
    struct Run {
        ledger: ReportLedger,
        view: HealthView,
        session: Session,
        sequence: u64,
        now: Instant,
    }

    impl Run {
        fn new(hysteresis: Hysteresis) -> Run {
            let mut ledger = ReportLedger::new(Duration::from_secs(10));
            let session = ledger.open_session("eu-west");
            Run {
                ledger,
                view: HealthView::new(hysteresis),
                session,
                sequence: 0,
                now: Instant::now(),
            }
        }

        fn report(&mut self, state: ReportedState, accept_new: bool) -> Health {
            self.sequence += 1;
            self.now += Duration::from_millis(100);
            let frame = frame("eu-west", self.sequence, state, accept_new);
            self.ledger
                .accept(&self.session, frame, self.now)
                .expect("accepted");
            self.health()
        }

        fn health(&mut self) -> Health {
            self.live().health
        }

        fn live(&mut self) -> RegionLive {
            self.view
                .update(&self.ledger, ["eu-west"], &ProbeVerdicts::new(), self.now)
                .regions[0]
        }

        /// A good report with this headroom; returns whether the region is spilling after it.
        fn headroom(&mut self, fraction: f64) -> bool {
            self.sequence += 1;
            self.now += Duration::from_millis(100);
            let mut frame = frame("eu-west", self.sequence, S::Ok, true);
            frame.report.headroom_fraction = fraction;
            self.ledger
                .accept(&self.session, frame, self.now)
                .expect("accepted");
            self.live().spilling
        }
    }

    use Health::{Degraded, Down, Up};
    use ReportedState as S;

    const OK: (S, bool) = (S::Ok, true);
    const FULL: (S, bool) = (S::Ok, false);
    const DEGRADED: (S, bool) = (S::Degraded, true);
    const DOWN: (S, bool) = (S::Down, false);
    const DRAINING: (S, bool) = (S::Draining, false);

    /// (name, thresholds, [(report, health after it)]).
    type Case = (&'static str, Hysteresis, Vec<((S, bool), Health)>);

    #[test]
    fn flips_only_after_enough_reports_in_a_row() {
        let cases: Vec<Case> = vec![
            (
                "classification while serving",
                Hysteresis::default(),
                vec![(OK, Up), (DEGRADED, Degraded), (FULL, Degraded), (OK, Up)],
            ),
            (
                "down after two bad, up after three good",
                Hysteresis::default(),
                vec![
                    (OK, Up),
                    (DOWN, Degraded),
                    (DOWN, Down),
                    (OK, Down),
                    (OK, Down),
                    (OK, Up),
                ],
            ),
            (
                "draining counts as bad",
                Hysteresis::default(),
                vec![(DRAINING, Degraded), (DRAINING, Down)],
            ),
            (
                "a good report breaks the bad streak",
                Hysteresis::default(),
                vec![
                    (DOWN, Degraded),
                    (OK, Up),
                    (DOWN, Degraded),
                    (OK, Up),
                    (DOWN, Degraded),
                    (DOWN, Down),
                ],
            ),
            (
                "a bad report breaks the recovery streak",
                Hysteresis::default(),
                vec![
                    (DOWN, Degraded),
                    (DOWN, Down),
                    (OK, Down),
                    (OK, Down),
                    (DOWN, Down),
                    (OK, Down),
                    (OK, Down),
                    (OK, Up),
                ],
            ),
            (
                "degraded reports count towards recovery and come back degraded",
                Hysteresis::default(),
                vec![
                    (DOWN, Degraded),
                    (DOWN, Down),
                    (DEGRADED, Down),
                    (FULL, Down),
                    (DEGRADED, Degraded),
                ],
            ),
            (
                "thresholds of one flip at once",
                Hysteresis {
                    down_after: 1,
                    up_after: 1,
                },
                vec![(DOWN, Down), (OK, Up), (DRAINING, Down)],
            ),
        ];
        for (name, hysteresis, steps) in cases {
            let mut run = Run::new(hysteresis);
            for (i, ((state, accept_new), want)) in steps.into_iter().enumerate() {
                assert_eq!(run.report(state, accept_new), want, "{name}: step {i}");
            }
        }
    }

    #[test]
    fn a_report_is_counted_once_however_often_the_view_is_updated() {
        let mut run = Run::new(Hysteresis::default());
        run.report(S::Down, false);
        for _ in 0..5 {
            assert_eq!(run.health(), Degraded);
        }
        assert_eq!(run.report(S::Down, false), Down);
    }

    #[test]
    fn silence_is_unknown_and_keeps_the_counts() {
        let mut run = Run::new(Hysteresis::default());
        run.report(S::Down, false);
        run.report(S::Down, false);
        run.now += Duration::from_millis(u64::from(VALIDITY_MS));
        assert_eq!(run.health(), Health::Unknown);
        // Still down underneath: coming back takes the full recovery streak.
        assert_eq!(run.report(S::Ok, true), Down);
        assert_eq!(run.report(S::Ok, true), Down);
        assert_eq!(run.report(S::Ok, true), Up);
    }

    #[test]
    fn regions_are_reported_in_the_order_asked_and_unheard_ones_are_unknown() {
        let mut run = Run::new(Hysteresis::default());
        run.report(S::Degraded, true);
        let health = run.view.update(
            &run.ledger,
            ["us-east", "eu-west", "ap-south"],
            &ProbeVerdicts::new(),
            run.now,
        );
        let health: Vec<Health> = health.regions.iter().map(|r| r.health).collect();
        assert_eq!(health, [Health::Unknown, Degraded, Health::Unknown]);
    }

    #[test]
    fn a_new_session_restarting_the_sequence_is_still_counted() {
        let mut run = Run::new(Hysteresis::default());
        run.report(S::Down, false);
        // The relay restarts: new connection, sequence from 1 again.
        run.session = run.ledger.open_session("eu-west");
        run.sequence = 0;
        assert_eq!(run.report(S::Down, false), Down);
    }

    #[test]
    fn spill_trips_at_the_watermark_and_recovers_after_the_hold() {
        // Defaults: trip 0.05, recover 0.20, hold 3.
        let cases: &[(&str, &[(f64, bool)])] = &[
            ("plenty of headroom", &[(0.9, false), (0.3, false)]),
            ("trips at the watermark itself", &[(0.05, true)]),
            (
                "recovers only after three reports above recover",
                &[(0.01, true), (0.5, true), (0.5, true), (0.5, false)],
            ),
            (
                "between the watermarks neither trips nor recovers",
                &[
                    (0.1, false),
                    (0.01, true),
                    (0.1, true),
                    (0.15, true),
                    (0.2, true),
                ],
            ),
            (
                "a report at or below recover restarts the hold",
                &[
                    (0.0, true),
                    (0.9, true),
                    (0.9, true),
                    (0.2, true),
                    (0.9, true),
                    (0.9, true),
                    (0.9, false),
                ],
            ),
            ("NaN changes nothing", &[(0.0, true), (f64::NAN, true)]),
        ];
        for (name, steps) in cases {
            let mut run = Run::new(Hysteresis::default());
            for (i, &(fraction, spilling)) in steps.iter().enumerate() {
                assert_eq!(run.headroom(fraction), spilling, "{name}: step {i}");
            }
        }
    }

    #[test]
    fn headroom_and_report_time_come_from_the_fresh_report_only() {
        let mut run = Run::new(Hysteresis::default());
        assert!(run.headroom(0.01));
        let live = run.live();
        assert_eq!(live.headroom, Some(0.01));
        assert_eq!(live.report_received, Some(run.now));
        run.now += Duration::from_millis(u64::from(VALIDITY_MS));
        assert_eq!(
            run.live(),
            RegionLive::default(),
            "silent: unknown, not spilling"
        );
        // Spilling is kept underneath: reports resume still spilling.
        assert!(run.headroom(0.5));
    }

    #[test]
    fn client_rtt_of_fresh_reports_becomes_the_latency_table() {
        use crate::health::frame::ReceivedClientRtt;
        let mut ledger = ReportLedger::new(Duration::from_secs(10));
        let now = Instant::now();
        let rtt = |prefix: &str, rtt_ms, samples| ReceivedClientRtt {
            prefix: prefix.into(),
            rtt_ms,
            samples,
        };
        for (region, samples) in [
            (
                "eu-west",
                vec![
                    rtt("203.0.113.0/24", 12.0, 40),
                    rtt("not a prefix", 1.0, 5),
                    rtt("198.51.100.0/24", 3.0, 0),
                ],
            ),
            ("us-east", vec![rtt("203.0.113.0/24", 80.0, 7)]),
        ] {
            let session = ledger.open_session(region);
            let mut f = frame(region, 1, S::Ok, true);
            f.report.client_rtt = samples;
            ledger.accept(&session, f, now).expect("accepted");
        }
        let mut view = HealthView::new(Hysteresis::default());
        let live = view.update(&ledger, ["us-east", "eu-west"], &ProbeVerdicts::new(), now);
        let l = live
            .latency
            .lookup("203.0.113.9".parse().unwrap(), 32)
            .unwrap();
        assert_eq!(l.figures, &[(RegionIdx(1), 12.0), (RegionIdx(0), 80.0)]);
        // Zero samples say nothing.
        assert!(
            live.latency
                .lookup("198.51.100.1".parse().unwrap(), 32)
                .is_none()
        );
        // Silence drops a region's figures.
        let later = now + Duration::from_millis(u64::from(VALIDITY_MS));
        let live = view.update(
            &ledger,
            ["us-east", "eu-west"],
            &ProbeVerdicts::new(),
            later,
        );
        assert!(live.latency.is_empty());
    }

    use proptest::prelude::*;

    proptest! {
        /// Reports alternating between any two headroom figures never make spill-over flap
        /// more than once: with trip < recover, one side of an alternation is at or below
        /// recover, which restarts the hold every other report (hold ≥ 2).
        #[test]
        fn alternating_reports_never_flap(
            a in 0.0f64..1.0,
            b in 0.0f64..1.0,
            hold in 2u32..6,
            n in 4usize..40,
        ) {
            let spill = SpillWatermarks { trip: 0.05, recover: 0.2, hold_reports: hold };
            let mut track = Track::new();
            let mut flips = 0;
            let mut last = track.spilling;
            for i in 0..n {
                track.count_headroom(if i % 2 == 0 { a } else { b }, spill);
                if track.spilling != last {
                    flips += 1;
                    last = track.spilling;
                }
            }
            // At most the trip (if one side is at or below trip); never a recovery, unless
            // both sides are above recover (then it never tripped).
            prop_assert!(flips <= 1, "{} flips for {} / {}", flips, a, b);
        }
    }
}
