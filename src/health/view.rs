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
//! Pure: reads the ledger at the `now` it is given; no IO, no clock. It does not decide what
//! to answer (steering) nor which report is current (the ledger).

use std::{collections::HashMap, sync::Arc, time::Instant};

use super::{
    frame::{ReceivedReport, ReportedState},
    ledger::ReportLedger,
};
use crate::steering::Health;

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
}

impl Track {
    fn new() -> Track {
        Track {
            serving: true,
            streak: 0,
            latest: Class::Good,
            last_counted: None,
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
    regions: HashMap<Arc<str>, Track>,
}

impl HealthView {
    pub fn new(hysteresis: Hysteresis) -> HealthView {
        HealthView {
            hysteresis,
            regions: HashMap::new(),
        }
    }

    /// Counts the reports that arrived since the last call and returns the health of each of
    /// `regions` (the configured region ids, in config order) at `now`. A region without a
    /// fresh report is unknown, or down when `probes` says its relay is unreachable.
    pub fn update<'a>(
        &mut self,
        ledger: &ReportLedger,
        regions: impl IntoIterator<Item = &'a str>,
        probes: &ProbeVerdicts,
        now: Instant,
    ) -> Vec<Health> {
        regions
            .into_iter()
            .map(|region| {
                let Some(report) = ledger.fresh(region, now) else {
                    return match probes.get(region) {
                        Some(ProbeVerdict::Unreachable) => Health::Down,
                        Some(ProbeVerdict::Reachable) | None => Health::Unknown,
                    };
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
                    }
                }
                track.health()
            })
            .collect()
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
            self.view
                .update(&self.ledger, ["eu-west"], &ProbeVerdicts::new(), self.now)[0]
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
}
