//! What a drill measured, computed from what it sampled: the pure core of `meridian drill`.
//!
//! The runner records a timeline (answers per client prefix per tick, relay counters, region
//! health) and hands slices of it here; this module turns them into the figures of the report
//! (when 90 % and all of the affected prefixes left the drained regions, each prefix's own
//! shift time, when the relay's traffic drained, when health changed). It does no IO and reads
//! no clock: every instant is a [`Duration`] since the drill started, and every figure is
//! relative to the event it measures from (the drain call, the restore call).
//!
//! A prefix has *shifted* at the first answered sample after its last answered sample that
//! still showed the old state, so a prefix that flaps back is measured from when it settled,
//! not from its first move. Lost samples (timeouts) carry no information and are skipped.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

/// What one query for one client prefix got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// Address or CNAME records, mapped to the regions whose endpoints they are.
    Answer {
        regions: BTreeSet<Arc<str>>,
        /// Smallest TTL among the answer records.
        ttl: Option<u32>,
        /// Records that are no known region's endpoint (shown in the report, never guessed).
        unmapped: Vec<String>,
    },
    /// A response without address records (NXDOMAIN, SERVFAIL of a fail-closed policy, …):
    /// the client gets no region at all.
    Empty { rcode: String },
    /// No usable response in time.
    Lost { reason: String },
}

impl Observation {
    /// Whether the client is sent to any of `targets`; `None` when the sample tells nothing.
    pub fn in_targets(&self, targets: &[Arc<str>]) -> Option<bool> {
        match self {
            Self::Answer { regions, .. } => Some(targets.iter().any(|t| regions.contains(t))),
            Self::Empty { .. } => Some(false),
            Self::Lost { .. } => None,
        }
    }

    pub fn ttl(&self) -> Option<u32> {
        match self {
            Self::Answer { ttl, .. } => *ttl,
            Self::Empty { .. } | Self::Lost { .. } => None,
        }
    }

    /// Short text for reports: the regions, or what went wrong.
    pub fn describe(&self) -> String {
        match self {
            Self::Answer {
                regions, unmapped, ..
            } => {
                let mut names: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
                names.extend(unmapped.iter().map(|u| format!("?{u}")));
                if names.is_empty() {
                    "(no records)".to_owned()
                } else {
                    names.join(",")
                }
            }
            Self::Empty { rcode } => format!("empty ({rcode})"),
            Self::Lost { reason } => format!("lost ({reason})"),
        }
    }
}

/// One sampling round: one observation per client prefix, in the plan's prefix order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tick {
    /// When the round's queries were sent, since the drill started.
    pub at: Duration,
    pub answers: Vec<Observation>,
}

/// Which way a phase moves the affected prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Away from the target regions (drain, outage).
    Leave,
    /// Back to them (restore).
    Return,
}

impl Goal {
    fn reached(self, observation: &Observation, targets: &[Arc<str>]) -> Option<bool> {
        let inside = observation.in_targets(targets)?;
        Some(match self {
            Self::Leave => !inside,
            Self::Return => inside,
        })
    }
}

/// The prefixes that the baseline sent to a target region at least once: only they can move,
/// so only they count towards the shift figures.
pub fn affected_prefixes(baseline: &[Tick], targets: &[Arc<str>]) -> Vec<usize> {
    let prefixes = baseline.iter().map(|t| t.answers.len()).max().unwrap_or(0);
    (0..prefixes)
        .filter(|&p| {
            baseline.iter().any(|tick| {
                tick.answers
                    .get(p)
                    .and_then(|o| o.in_targets(targets))
                    .unwrap_or(false)
            })
        })
        .collect()
}

/// When one prefix settled on the goal, and how many answered samples confirmed it since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settle {
    /// Since `event`; `None` while the latest answered sample is not at the goal.
    pub after: Option<Duration>,
    pub confirmations: usize,
}

/// Where `prefix` stands in `ticks` (those before `event` are ignored).
pub fn settle(
    ticks: &[Tick],
    prefix: usize,
    event: Duration,
    goal: Goal,
    targets: &[Arc<str>],
) -> Settle {
    let mut state = Settle {
        after: None,
        confirmations: 0,
    };
    for tick in ticks.iter().filter(|t| t.at >= event) {
        match tick
            .answers
            .get(prefix)
            .and_then(|o| goal.reached(o, targets))
        {
            Some(true) => {
                if state.after.is_none() {
                    state.after = Some(tick.at - event);
                }
                state.confirmations += 1;
            }
            Some(false) => {
                state = Settle {
                    after: None,
                    confirmations: 0,
                }
            }
            None => {}
        }
    }
    state
}

/// Whether every affected prefix sits at the goal, confirmed by `confirm` answered samples.
pub fn settled(
    ticks: &[Tick],
    affected: &[usize],
    event: Duration,
    goal: Goal,
    targets: &[Arc<str>],
    confirm: usize,
) -> bool {
    affected.iter().all(|&p| {
        let s = settle(ticks, p, event, goal, targets);
        s.after.is_some() && s.confirmations >= confirm.max(1)
    })
}

/// The shift figures of one phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shift {
    /// Per affected prefix (prefix index, settle time since the event).
    pub per_prefix: Vec<(usize, Option<Duration>)>,
    /// When 90 % of the affected prefixes had settled (rounded up: 9 of 10, 1 of 1).
    pub p90: Option<Duration>,
    /// When all of them had.
    pub all: Option<Duration>,
}

pub fn shift(
    ticks: &[Tick],
    affected: &[usize],
    event: Duration,
    goal: Goal,
    targets: &[Arc<str>],
) -> Shift {
    let per_prefix: Vec<(usize, Option<Duration>)> = affected
        .iter()
        .map(|&p| (p, settle(ticks, p, event, goal, targets).after))
        .collect();
    let times: Vec<Option<Duration>> = per_prefix.iter().map(|(_, t)| *t).collect();
    Shift {
        p90: fraction_reached(&times, 9, 10),
        all: fraction_reached(&times, 1, 1),
        per_prefix,
    }
}

/// The time by which `numerator/denominator` of the items had reached their state (rounded up
/// to whole items); `None` if not enough did, or there are no items.
pub fn fraction_reached(
    times: &[Option<Duration>],
    numerator: usize,
    denominator: usize,
) -> Option<Duration> {
    if times.is_empty() || denominator == 0 {
        return None;
    }
    let needed = (times.len() * numerator).div_ceil(denominator).max(1);
    let mut reached: Vec<Duration> = times.iter().flatten().copied().collect();
    reached.sort_unstable();
    reached.get(needed - 1).copied()
}

/// The relay counters that tell whether a region still serves traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RelayCounters {
    /// `meridian_relay_backend_in_flight`, summed over backends.
    pub in_flight: f64,
    /// `meridian_relay_responses_total`, summed over models, backends and statuses.
    pub responses: f64,
}

/// One scrape of a relay's `/metrics`; `counters` is `None` when the scrape failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RelayScrape {
    pub at: Duration,
    pub counters: Option<RelayCounters>,
}

/// When the relay's traffic drained, since `event`: the first scrape of the final run in which
/// nothing was in flight and the responses counter no longer moved. The run must span at least
/// `quiet`, or a momentary lull would count; `None` until it does.
pub fn traffic_drained(
    scrapes: &[RelayScrape],
    event: Duration,
    quiet: Duration,
) -> Option<Duration> {
    let mut run: Option<(Duration, f64)> = None;
    let mut last_at = None;
    for scrape in scrapes.iter().filter(|s| s.at >= event) {
        let Some(counters) = scrape.counters else {
            continue;
        };
        let idle = counters.in_flight == 0.0;
        run = match run {
            Some((start, responses)) if idle && counters.responses == responses => {
                Some((start, responses))
            }
            _ if idle => Some((scrape.at, counters.responses)),
            _ => None,
        };
        last_at = Some(scrape.at);
    }
    let (start, _) = run?;
    (last_at? - start >= quiet).then(|| start - event)
}

/// One reading of a region's health from the admin API; `None` when the call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReading {
    pub at: Duration,
    pub health: Option<String>,
}

/// The first reading at or after `event` whose health is not `from`, with that health.
pub fn health_changed(
    readings: &[HealthReading],
    event: Duration,
    from: &str,
) -> Option<(Duration, String)> {
    readings
        .iter()
        .filter(|r| r.at >= event)
        .find_map(|r| match &r.health {
            Some(h) if h != from => Some((r.at - event, h.clone())),
            _ => None,
        })
}

/// The first reading at or after `event` whose health is `value`.
pub fn health_reached(
    readings: &[HealthReading],
    event: Duration,
    value: &str,
) -> Option<Duration> {
    readings
        .iter()
        .filter(|r| r.at >= event)
        .find(|r| r.health.as_deref() == Some(value))
        .map(|r| r.at - event)
}

/// When every answered sample since `event` carried a TTL of at most `cap` (settled as in
/// [`settle`]): how long resolvers' caches took to turn over to the ramped-down TTL.
pub fn ttl_capped(ticks: &[Tick], event: Duration, cap: u32) -> Option<Duration> {
    let mut since = None;
    for tick in ticks.iter().filter(|t| t.at >= event) {
        let ttls: Vec<u32> = tick.answers.iter().filter_map(Observation::ttl).collect();
        if ttls.is_empty() {
            continue;
        }
        if ttls.iter().all(|&t| t <= cap) {
            since.get_or_insert(tick.at - event);
        } else {
            since = None;
        }
    }
    since
}

/// Largest TTL answered in `ticks`: how long a resolver may keep an answer it got before.
pub fn largest_ttl(ticks: &[Tick]) -> Option<u32> {
    ticks
        .iter()
        .flat_map(|t| t.answers.iter().filter_map(Observation::ttl))
        .max()
}

/// Each prefix's answer changes in `ticks`: (tick time, prefix, new answer). The compact
/// timeline of the report; lost samples are left out.
pub fn answer_changes(ticks: &[Tick]) -> Vec<(Duration, usize, String)> {
    let mut last: Vec<Option<String>> = Vec::new();
    let mut changes = Vec::new();
    for tick in ticks {
        for (p, observation) in tick.answers.iter().enumerate() {
            if matches!(observation, Observation::Lost { .. }) {
                continue;
            }
            if last.len() <= p {
                last.resize(p + 1, None);
            }
            let now = observation.describe();
            if last[p].as_deref() != Some(now.as_str()) {
                changes.push((tick.at, p, now.clone()));
                last[p] = Some(now);
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const EU: &str = "eu-west";
    const US: &str = "us-east";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn answer(region: &str, ttl: u32) -> Observation {
        Observation::Answer {
            regions: [Arc::from(region)].into_iter().collect(),
            ttl: Some(ttl),
            unmapped: Vec::new(),
        }
    }

    fn lost() -> Observation {
        Observation::Lost {
            reason: "timeout".into(),
        }
    }

    /// A timeline from a compact picture: one string per prefix, one char per tick every
    /// 100 ms: `E` eu-west, `U` us-east, `-` lost, `0` empty answer.
    fn timeline(rows: &[&str]) -> Vec<Tick> {
        let ticks = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        (0..ticks)
            .map(|i| Tick {
                at: ms(100 * i as u64),
                answers: rows
                    .iter()
                    .map(|row| match row.as_bytes()[i] {
                        b'E' => answer(EU, 30),
                        b'U' => answer(US, 30),
                        b'0' => Observation::Empty {
                            rcode: "SERVFAIL".into(),
                        },
                        _ => lost(),
                    })
                    .collect(),
            })
            .collect()
    }

    fn eu() -> Vec<Arc<str>> {
        vec![Arc::from(EU)]
    }

    #[test]
    fn per_prefix_settle_times() {
        // (picture, event ms, goal, expected settle ms, confirmations)
        let cases: &[(&str, u64, Goal, Option<u64>, usize)] = &[
            ("EEEUUU", 200, Goal::Leave, Some(100), 3),
            ("EEUUUU", 200, Goal::Leave, Some(0), 4),
            ("EEEEEE", 200, Goal::Leave, None, 0),
            // Flapped back: measured from when it settled.
            ("EEUEUU", 100, Goal::Leave, Some(300), 2),
            // Lost samples are skipped, not counted against or for the goal.
            ("EE-U-U", 100, Goal::Leave, Some(200), 2),
            ("EEU---", 100, Goal::Leave, Some(100), 1),
            // An empty answer sends the client nowhere: it has left the region.
            ("EE0000", 100, Goal::Leave, Some(100), 4),
            ("UUUEEE", 100, Goal::Return, Some(200), 3),
            ("UUUUUU", 0, Goal::Return, None, 0),
            // Samples before the event do not count.
            ("UUEEEE", 300, Goal::Leave, None, 0),
        ];
        for &(picture, event, goal, want, confirmations) in cases {
            let ticks = timeline(&[picture]);
            let got = settle(&ticks, 0, ms(event), goal, &eu());
            assert_eq!(
                got,
                Settle {
                    after: want.map(ms),
                    confirmations
                },
                "{picture} from {event} ms"
            );
        }
    }

    #[test]
    fn affected_prefixes_are_those_the_baseline_sent_to_a_target() {
        let ticks = timeline(&["EEE", "UUU", "-E-", "---", "U0E"]);
        assert_eq!(affected_prefixes(&ticks, &eu()), vec![0, 2, 4]);
        assert_eq!(
            affected_prefixes(&ticks, &[Arc::from(EU), Arc::from(US)]),
            vec![0, 1, 2, 4]
        );
        assert!(affected_prefixes(&[], &eu()).is_empty());
    }

    #[test]
    fn ninety_percent_and_all() {
        // (settle times in ms, expected p90, expected all)
        type Case = (&'static [Option<u64>], Option<u64>, Option<u64>);
        let cases: &[Case] = &[
            (&[Some(100)], Some(100), Some(100)),
            (
                &[
                    Some(100),
                    Some(200),
                    Some(300),
                    Some(400),
                    Some(500),
                    Some(600),
                    Some(700),
                    Some(800),
                    Some(900),
                    Some(5000),
                ],
                Some(900),
                Some(5000),
            ),
            // 9 of 10 settled: the 90 % figure exists, "all" does not.
            (
                &[
                    Some(100),
                    Some(100),
                    Some(100),
                    Some(100),
                    Some(100),
                    Some(100),
                    Some(100),
                    Some(100),
                    Some(300),
                    None,
                ],
                Some(300),
                None,
            ),
            // 90 % of 3 rounds up to all 3.
            (&[Some(300), Some(100), Some(200)], Some(300), Some(300)),
            (&[Some(100), None, Some(200)], None, None),
            (&[], None, None),
        ];
        for &(times, p90, all) in cases {
            let times: Vec<Option<Duration>> = times.iter().map(|t| t.map(ms)).collect();
            assert_eq!(fraction_reached(&times, 9, 10), p90.map(ms), "{times:?}");
            assert_eq!(fraction_reached(&times, 1, 1), all.map(ms), "{times:?}");
        }
    }

    #[test]
    fn shift_of_a_drain() {
        let ticks = timeline(&["EEUUUU", "EEEUUU", "UUUUUU", "EEEEUU"]);
        let affected = affected_prefixes(&ticks[..2], &eu());
        assert_eq!(affected, vec![0, 1, 3]);
        let shift = shift(&ticks, &affected, ms(200), Goal::Leave, &eu());
        assert_eq!(
            shift.per_prefix,
            vec![(0, Some(ms(0))), (1, Some(ms(100))), (3, Some(ms(200)))]
        );
        assert_eq!(shift.p90, Some(ms(200)));
        assert_eq!(shift.all, Some(ms(200)));
        assert!(settled(&ticks, &affected, ms(200), Goal::Leave, &eu(), 2));
        assert!(!settled(&ticks, &affected, ms(200), Goal::Leave, &eu(), 3));
        // Nothing affected: trivially settled, no figures.
        assert!(settled(&ticks, &[], ms(200), Goal::Leave, &eu(), 3));
        assert_eq!(shift_none(&ticks), (None, None));
    }

    fn shift_none(ticks: &[Tick]) -> (Option<Duration>, Option<Duration>) {
        let s = shift(ticks, &[], ms(0), Goal::Leave, &eu());
        (s.p90, s.all)
    }

    fn scrape(at: u64, counters: Option<(f64, f64)>) -> RelayScrape {
        RelayScrape {
            at: ms(at),
            counters: counters.map(|(in_flight, responses)| RelayCounters {
                in_flight,
                responses,
            }),
        }
    }

    #[test]
    fn traffic_drained_needs_idle_and_a_still_counter_for_the_quiet_period() {
        type Scrapes = &'static [(u64, Option<(f64, f64)>)];
        // (scrapes, event, quiet, expected)
        let cases: &[(Scrapes, u64, u64, Option<u64>)] = &[
            (
                &[
                    (0, Some((3.0, 10.0))),
                    (100, Some((1.0, 12.0))),
                    (200, Some((0.0, 13.0))),
                    (300, Some((0.0, 13.0))),
                    (400, Some((0.0, 13.0))),
                ],
                0,
                200,
                Some(200),
            ),
            // Idle but the counter still moved at 300: the run starts again there.
            (
                &[
                    (0, Some((0.0, 10.0))),
                    (100, Some((0.0, 10.0))),
                    (300, Some((0.0, 11.0))),
                    (600, Some((0.0, 11.0))),
                ],
                0,
                200,
                Some(300),
            ),
            // Not quiet for long enough yet.
            (
                &[
                    (0, Some((1.0, 10.0))),
                    (100, Some((0.0, 11.0))),
                    (200, Some((0.0, 11.0))),
                ],
                0,
                500,
                None,
            ),
            // Still in flight at the end.
            (
                &[(0, Some((0.0, 1.0))), (900, Some((1.0, 1.0)))],
                0,
                0,
                None,
            ),
            // Failed scrapes are skipped; figures are relative to the event.
            (
                &[
                    (0, Some((5.0, 1.0))),
                    (1000, Some((2.0, 4.0))),
                    (1100, None),
                    (1200, Some((0.0, 5.0))),
                    (1500, None),
                    (1700, Some((0.0, 5.0))),
                ],
                1000,
                500,
                Some(200),
            ),
            (&[], 0, 0, None),
        ];
        for &(scrapes, event, quiet, want) in cases {
            let scrapes: Vec<RelayScrape> = scrapes.iter().map(|&(a, c)| scrape(a, c)).collect();
            assert_eq!(
                traffic_drained(&scrapes, ms(event), ms(quiet)),
                want.map(ms),
                "{scrapes:?}"
            );
        }
    }

    #[test]
    fn health_detection() {
        let readings: Vec<HealthReading> = [
            (0, Some("up")),
            (100, Some("up")),
            (200, None),
            (300, Some("unknown")),
            (400, Some("unknown")),
            (500, Some("down")),
        ]
        .iter()
        .map(|&(at, h)| HealthReading {
            at: ms(at),
            health: h.map(str::to_owned),
        })
        .collect();
        assert_eq!(
            health_changed(&readings, ms(100), "up"),
            Some((ms(200), "unknown".to_owned()))
        );
        assert_eq!(health_reached(&readings, ms(100), "down"), Some(ms(400)));
        assert_eq!(health_reached(&readings, ms(100), "degraded"), None);
        assert_eq!(health_changed(&readings[..3], ms(0), "up"), None);
    }

    #[test]
    fn ttl_ramp_and_changes() {
        let mut ticks = timeline(&["EEEE", "UUUU"]);
        for (i, tick) in ticks.iter_mut().enumerate() {
            let ttl = if i < 2 { 30 } else { 5 };
            for answer in &mut tick.answers {
                if let Observation::Answer { ttl: t, .. } = answer {
                    *t = Some(ttl);
                }
            }
        }
        assert_eq!(largest_ttl(&ticks), Some(30));
        assert_eq!(ttl_capped(&ticks, ms(100), 5), Some(ms(100)));
        assert_eq!(ttl_capped(&ticks, ms(0), 4), None);

        let changes = answer_changes(&timeline(&["EE-U", "UUUU"]));
        assert_eq!(
            changes,
            vec![
                (ms(0), 0, EU.to_owned()),
                (ms(0), 1, US.to_owned()),
                (ms(300), 0, US.to_owned())
            ]
        );
    }
}
