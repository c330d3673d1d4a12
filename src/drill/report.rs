//! The drill's report: the figures computed from the recorded session, written as JSON (for
//! tools) and Markdown (for people), and a short summary for the terminal.
//!
//! Times are milliseconds: instants since the drill started (`*_at_ms`) or durations since the
//! event a figure measures from (`*_after_ms`). Sampling resolution is the sample interval.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use serde::Serialize;

use super::{
    measure::{self, Goal, Observation, Tick},
    runner::{Disruption, Phase, Restoration, Session, Stop},
};

/// File names inside the output folder.
pub const JSON_FILE: &str = "drill-report.json";
pub const MARKDOWN_FILE: &str = "drill-report.md";

#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    /// `planned` or `unplanned`.
    pub kind: String,
    pub config: ConfigEcho,
    pub started_unix_ms: u64,
    pub outcome: Outcome,
    pub events: Vec<EventRecord>,
    pub baseline: Baseline,
    pub ramp: Option<Ramp>,
    /// Answers leaving the target regions after the disruption.
    pub shift: Option<PhaseFigures>,
    /// Unplanned drills: what the DNS node's health said, per target region.
    pub detection: Vec<Detection>,
    pub traffic: Vec<Traffic>,
    pub restoration: Restoration,
    /// Answers coming back after restoration.
    pub recovery: Option<PhaseFigures>,
    /// Every change of each prefix's answer: the compact timeline.
    pub answer_changes: Vec<AnswerChange>,
    pub samples: SampleCounts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Converged,
    DidNotConverge { phase: String },
    Aborted { reason: String },
    Failed { error: String },
}

impl Outcome {
    pub fn describe(&self) -> String {
        match self {
            Self::Converged => "converged".to_owned(),
            Self::DidNotConverge { phase } => format!("did not converge ({phase})"),
            Self::Aborted { reason } => format!("aborted: {reason}"),
            Self::Failed { error } => format!("failed: {error}"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ConfigEcho {
    pub admin: String,
    pub dns: String,
    pub name: String,
    pub qtype: String,
    pub regions: Vec<String>,
    pub prefixes: Vec<String>,
    pub relay_metrics: Vec<(String, String)>,
    pub disruption: String,
    pub ttl_ramp_s: Option<u32>,
    pub sample_interval_ms: u64,
    pub query_timeout_ms: u64,
    pub max_wait_ms: u64,
    pub hold_ms: u64,
    pub confirm_samples: usize,
    pub traffic_quiet_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    pub at_ms: u64,
    pub what: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    pub rounds: usize,
    /// Prefixes answered with a target region before the disruption: the ones measured.
    pub affected_prefixes: Vec<String>,
    pub largest_ttl: Option<u32>,
    /// Unplanned drills: each target region's health before the disruption.
    pub health: Vec<(String, Option<String>)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ramp {
    pub max_ttl: u32,
    pub previous_ttl: Option<u32>,
    pub at_ms: u64,
    pub waited_ms: Option<u64>,
    /// When every sampled answer carried the capped TTL, since the cap was set.
    pub ttl_capped_after_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseFigures {
    /// The drain / disruption / restore call, since the start.
    pub event_at_ms: u64,
    pub converged: Option<bool>,
    /// Since the event: when 90 % of the affected prefixes had settled, and all of them.
    pub p90_after_ms: Option<u64>,
    pub all_after_ms: Option<u64>,
    /// How long the phase was observed, since the event.
    pub observed_ms: u64,
    pub per_prefix: Vec<PrefixShift>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PrefixShift {
    pub prefix: String,
    /// The last answer before the event and the last one in the phase.
    pub before: Option<String>,
    pub after: Option<String>,
    pub settled_after_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Detection {
    pub region: String,
    pub health_before: Option<String>,
    pub changed_after_ms: Option<u64>,
    pub changed_to: Option<String>,
    pub down_after_ms: Option<u64>,
    /// Back to its health before the drill, since the restore call.
    pub recovered_after_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Traffic {
    pub region: String,
    pub url: String,
    /// Since the disruption: in-flight at 0 with a still responses counter (for the quiet time).
    pub drained_after_ms: Option<u64>,
    pub failed_scrapes: usize,
    /// (at_ms, in_flight, responses_total), where either changed, plus the first and last.
    pub series: Vec<(u64, f64, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AnswerChange {
    pub at_ms: u64,
    pub prefix: String,
    pub answer: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SampleCounts {
    pub rounds: usize,
    pub queries: usize,
    pub lost: usize,
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Computes the report from what the session recorded.
pub(super) fn build(
    session: &Session<'_>,
    stop: Option<Stop>,
    restoration: Restoration,
) -> DrillReport {
    let plan = session.plan;
    let prefix_name = |p: usize| {
        plan.prefixes
            .get(p)
            .map_or_else(|| format!("#{p}"), ToString::to_string)
    };
    let outcome = match (&stop, session.converged, session.recovered) {
        (Some(Stop::Aborted(reason)), ..) => Outcome::Aborted {
            reason: reason.clone(),
        },
        (Some(stop), ..) => Outcome::Failed {
            error: stop.to_string(),
        },
        (None, Some(false), _) => Outcome::DidNotConverge {
            phase: "disruption".into(),
        },
        (None, _, Some(false)) => Outcome::DidNotConverge {
            phase: "recovery".into(),
        },
        (None, ..) => Outcome::Converged,
    };

    let all_ticks = session.ticks_in(&[
        Phase::Baseline,
        Phase::Ramp,
        Phase::Disrupted,
        Phase::Hold,
        Phase::Recovery,
    ]);
    let shift = session.disrupted_at.map(|at| {
        let ticks = session.ticks_in(&[Phase::Disrupted]);
        phase_figures(
            session,
            &all_ticks,
            &ticks,
            at,
            Goal::Leave,
            session.converged,
        )
    });
    let recovery = session
        .restore_at
        .filter(|_| session.recovered.is_some())
        .map(|at| {
            let ticks = session.ticks_in(&[Phase::Recovery]);
            phase_figures(
                session,
                &all_ticks,
                &ticks,
                at,
                Goal::Return,
                session.recovered,
            )
        });

    let ramp = plan.ttl_ramp.map(|cap| {
        let ramp_ticks = session.ticks_in(&[Phase::Ramp, Phase::Disrupted, Phase::Hold]);
        Ramp {
            max_ttl: cap,
            previous_ttl: session.baseline_ttl,
            at_ms: session.ramp_at.map_or(0, ms),
            waited_ms: session.ramp_waited.map(ms),
            ttl_capped_after_ms: session
                .ramp_at
                .and_then(|at| measure::ttl_capped(&ramp_ticks, at, cap))
                .map(ms),
        }
    });

    let detection = if plan.is_planned() {
        Vec::new()
    } else {
        plan.regions
            .iter()
            .zip(&session.health)
            .zip(&session.baseline_health)
            .map(|((region, readings), before)| {
                let at = session.disrupted_at.unwrap_or_default();
                let changed = before
                    .as_deref()
                    .and_then(|b| measure::health_changed(readings, at, b));
                Detection {
                    region: region.to_string(),
                    health_before: before.clone(),
                    changed_after_ms: changed.as_ref().map(|(d, _)| ms(*d)),
                    changed_to: changed.map(|(_, h)| h),
                    down_after_ms: session
                        .disrupted_at
                        .and_then(|at| measure::health_reached(readings, at, "down"))
                        .map(ms),
                    recovered_after_ms: session
                        .restore_at
                        .zip(before.as_deref())
                        .and_then(|(at, b)| measure::health_reached(readings, at, b))
                        .map(ms),
                }
            })
            .collect()
    };

    let traffic = plan
        .relay_metrics
        .iter()
        .zip(&session.scrapes)
        .map(|((region, url), scrapes)| Traffic {
            region: region.to_string(),
            url: url.clone(),
            drained_after_ms: session
                .disrupted_at
                .and_then(|at| {
                    // Traffic comes back after the restore: judge only the drained span.
                    let end = session.restore_at.unwrap_or(Duration::MAX);
                    let drained: Vec<_> = scrapes.iter().filter(|s| s.at < end).copied().collect();
                    measure::traffic_drained(&drained, at, plan.traffic_quiet)
                })
                .map(ms),
            failed_scrapes: scrapes.iter().filter(|s| s.counters.is_none()).count(),
            series: series(scrapes),
        })
        .collect();

    let queries = all_ticks.iter().map(|t| t.answers.len()).sum();
    let lost = all_ticks
        .iter()
        .flat_map(|t| &t.answers)
        .filter(|o| matches!(o, Observation::Lost { .. }))
        .count();

    DrillReport {
        kind: if plan.is_planned() {
            "planned"
        } else {
            "unplanned"
        }
        .to_owned(),
        config: ConfigEcho {
            admin: plan.admin_url.clone(),
            dns: plan.dns.to_string(),
            name: plan.name.to_ascii(),
            qtype: plan.qtype.to_string(),
            regions: plan.regions.iter().map(|r| r.to_string()).collect(),
            prefixes: plan.prefixes.iter().map(ToString::to_string).collect(),
            relay_metrics: plan
                .relay_metrics
                .iter()
                .map(|(r, u)| (r.to_string(), u.clone()))
                .collect(),
            disruption: match &plan.disruption {
                Disruption::Drain => "drain".to_owned(),
                Disruption::PauseReports { relay_admin } => {
                    format!("pause-reports={relay_admin}")
                }
                Disruption::Kill { pid } => format!("kill-pid={pid}"),
            },
            ttl_ramp_s: plan.ttl_ramp,
            sample_interval_ms: ms(plan.sample_interval),
            query_timeout_ms: ms(plan.query_timeout),
            max_wait_ms: ms(plan.max_wait),
            hold_ms: ms(plan.hold),
            confirm_samples: plan.confirm_samples,
            traffic_quiet_ms: ms(plan.traffic_quiet),
        },
        started_unix_ms: session
            .started_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, ms),
        outcome,
        events: session
            .events
            .iter()
            .map(|(at, what)| EventRecord {
                at_ms: ms(*at),
                what: what.clone(),
            })
            .collect(),
        baseline: Baseline {
            rounds: session.ticks_in(&[Phase::Baseline]).len(),
            affected_prefixes: session.affected.iter().map(|&p| prefix_name(p)).collect(),
            largest_ttl: session.baseline_ttl,
            health: if plan.is_planned() {
                Vec::new()
            } else {
                plan.regions
                    .iter()
                    .zip(&session.baseline_health)
                    .map(|(r, h)| (r.to_string(), h.clone()))
                    .collect()
            },
        },
        ramp,
        shift,
        detection,
        traffic,
        restoration,
        recovery,
        answer_changes: measure::answer_changes(&all_ticks)
            .into_iter()
            .map(|(at, p, answer)| AnswerChange {
                at_ms: ms(at),
                prefix: prefix_name(p),
                answer,
            })
            .collect(),
        samples: SampleCounts {
            rounds: all_ticks.len(),
            queries,
            lost,
        },
    }
}

fn phase_figures(
    session: &Session<'_>,
    all_ticks: &[Tick],
    ticks: &[Tick],
    at: Duration,
    goal: Goal,
    converged: Option<bool>,
) -> PhaseFigures {
    let plan = session.plan;
    let shift = measure::shift(ticks, &session.affected, at, goal, &plan.regions);
    let last_answer = |ticks: &mut dyn Iterator<Item = &Tick>, p: usize| {
        ticks
            .filter_map(|t| t.answers.get(p))
            .filter(|o| !matches!(o, Observation::Lost { .. }))
            .last()
            .map(Observation::describe)
    };
    PhaseFigures {
        event_at_ms: ms(at),
        converged,
        p90_after_ms: shift.p90.map(ms),
        all_after_ms: shift.all.map(ms),
        observed_ms: ticks.last().map_or(0, |t| ms(t.at.saturating_sub(at))),
        per_prefix: shift
            .per_prefix
            .iter()
            .map(|&(p, settled)| PrefixShift {
                prefix: plan
                    .prefixes
                    .get(p)
                    .map_or_else(|| format!("#{p}"), ToString::to_string),
                before: last_answer(&mut all_ticks.iter().filter(|t| t.at < at), p),
                after: last_answer(&mut ticks.iter(), p),
                settled_after_ms: settled.map(ms),
            })
            .collect(),
    }
}

fn series(scrapes: &[measure::RelayScrape]) -> Vec<(u64, f64, f64)> {
    let points: Vec<(u64, f64, f64)> = scrapes
        .iter()
        .filter_map(|s| s.counters.map(|c| (ms(s.at), c.in_flight, c.responses)))
        .collect();
    let mut kept: Vec<(u64, f64, f64)> = Vec::new();
    for (i, point) in points.iter().enumerate() {
        let changed = kept
            .last()
            .is_none_or(|last| last.1 != point.1 || last.2 != point.2);
        if changed || i + 1 == points.len() {
            kept.push(*point);
        }
    }
    kept
}

fn opt_ms(value: Option<u64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{v} ms"))
}

impl DrillReport {
    /// The report for people: configuration, figures, timeline, per-prefix table, traffic.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Meridian drill report ({})\n", self.kind);
        let _ = writeln!(out, "**Outcome: {}**\n", self.outcome.describe());
        let restored = if self.restoration.complete {
            "restored"
        } else {
            "RESTORATION INCOMPLETE — check the regions by hand"
        };
        let _ = writeln!(out, "Restoration: {restored}.\n");

        let c = &self.config;
        let _ = writeln!(out, "## Configuration\n\n| setting | value |\n|---|---|");
        let rows: Vec<(&str, String)> = vec![
            ("admin API", c.admin.clone()),
            ("DNS node", c.dns.clone()),
            ("name", format!("{} {}", c.name, c.qtype)),
            ("regions", c.regions.join(", ")),
            ("disruption", c.disruption.clone()),
            ("client prefixes", c.prefixes.join(", ")),
            (
                "relay metrics",
                c.relay_metrics
                    .iter()
                    .map(|(r, u)| format!("{r}={u}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "TTL ramp",
                c.ttl_ramp_s.map_or("none".into(), |t| format!("{t} s")),
            ),
            ("sample interval", format!("{} ms", c.sample_interval_ms)),
            ("query timeout", format!("{} ms", c.query_timeout_ms)),
            ("max wait per phase", format!("{} ms", c.max_wait_ms)),
            ("hold", format!("{} ms", c.hold_ms)),
            (
                "settled after",
                format!("{} answered samples", c.confirm_samples),
            ),
            ("traffic quiet time", format!("{} ms", c.traffic_quiet_ms)),
        ];
        for (key, value) in rows {
            let _ = writeln!(out, "| {key} | {value} |");
        }

        let _ = writeln!(out, "\n## Figures\n\n| figure | value |\n|---|---|");
        let _ = writeln!(
            out,
            "| prefixes measured (answered with a target region before) | {} of {} |",
            self.baseline.affected_prefixes.len(),
            c.prefixes.len()
        );
        if let Some(ramp) = &self.ramp {
            let _ = writeln!(
                out,
                "| TTL ramp: previous TTL → cap | {} → {} s (waited {}) |",
                ramp.previous_ttl.map_or("—".into(), |t| format!("{t} s")),
                ramp.max_ttl,
                opt_ms(ramp.waited_ms)
            );
            let _ = writeln!(
                out,
                "| all answers carry the capped TTL after | {} |",
                opt_ms(ramp.ttl_capped_after_ms)
            );
        }
        if let Some(shift) = &self.shift {
            let _ = writeln!(
                out,
                "| 90 % of answers left after | {} |",
                opt_ms(shift.p90_after_ms)
            );
            let _ = writeln!(
                out,
                "| all answers left after | {} |",
                opt_ms(shift.all_after_ms)
            );
        }
        for d in &self.detection {
            let _ = writeln!(
                out,
                "| {}: health {} → {} after | {} |",
                d.region,
                d.health_before.as_deref().unwrap_or("?"),
                d.changed_to.as_deref().unwrap_or("(unchanged)"),
                opt_ms(d.changed_after_ms)
            );
            let _ = writeln!(
                out,
                "| {}: down after | {} |",
                d.region,
                opt_ms(d.down_after_ms)
            );
        }
        for t in &self.traffic {
            let _ = writeln!(
                out,
                "| {}: relay traffic drained after | {} |",
                t.region,
                opt_ms(t.drained_after_ms)
            );
        }
        if let Some(recovery) = &self.recovery {
            let _ = writeln!(
                out,
                "| 90 % of answers back after restore | {} |",
                opt_ms(recovery.p90_after_ms)
            );
            let _ = writeln!(
                out,
                "| all answers back after restore | {} |",
                opt_ms(recovery.all_after_ms)
            );
        }
        let _ = writeln!(
            out,
            "| samples | {} rounds, {} queries, {} lost |",
            self.samples.rounds, self.samples.queries, self.samples.lost
        );

        let _ = writeln!(out, "\n## Timeline\n\n| at | event |\n|---|---|");
        for event in &self.events {
            let _ = writeln!(out, "| {} ms | {} |", event.at_ms, event.what);
        }

        if let Some(shift) = &self.shift {
            let back: std::collections::HashMap<&str, Option<u64>> = self
                .recovery
                .iter()
                .flat_map(|r| &r.per_prefix)
                .map(|p| (p.prefix.as_str(), p.settled_after_ms))
                .collect();
            let _ = writeln!(
                out,
                "\n## Per prefix\n\n| prefix | before | after | left after | back after restore |\n|---|---|---|---|---|"
            );
            for p in &shift.per_prefix {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    p.prefix,
                    p.before.as_deref().unwrap_or("—"),
                    p.after.as_deref().unwrap_or("—"),
                    opt_ms(p.settled_after_ms),
                    opt_ms(back.get(p.prefix.as_str()).copied().flatten())
                );
            }
        }

        if !self.traffic.is_empty() {
            let _ = writeln!(out, "\n## Relay traffic\n");
            for t in &self.traffic {
                let _ = writeln!(
                    out,
                    "{} ({}), {} failed scrapes:\n\n| at | in flight | responses |\n|---|---|---|",
                    t.region, t.url, t.failed_scrapes
                );
                for (at, in_flight, responses) in &t.series {
                    let _ = writeln!(out, "| {at} ms | {in_flight} | {responses} |");
                }
                out.push('\n');
            }
        }

        let _ = writeln!(
            out,
            "\n## Restoration\n\n| action | attempts | result |\n|---|---|---|"
        );
        for action in &self.restoration.actions {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                action.action,
                action.attempts,
                action.error.as_deref().unwrap_or("ok")
            );
        }
        out
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut out = format!("drill {}: {}\n", self.kind, self.outcome.describe());
        if let Some(shift) = &self.shift {
            let _ = writeln!(
                out,
                "  answers left {}: 90% after {}, all after {} ({} prefixes measured)",
                self.config.regions.join(","),
                opt_ms(shift.p90_after_ms),
                opt_ms(shift.all_after_ms),
                shift.per_prefix.len()
            );
        }
        for d in &self.detection {
            let _ = writeln!(
                out,
                "  {} health changed after {}, down after {}",
                d.region,
                opt_ms(d.changed_after_ms),
                opt_ms(d.down_after_ms)
            );
        }
        for t in &self.traffic {
            let _ = writeln!(
                out,
                "  {} relay traffic drained after {}",
                t.region,
                opt_ms(t.drained_after_ms)
            );
        }
        if let Some(recovery) = &self.recovery {
            let _ = writeln!(
                out,
                "  answers back after restore: all after {}",
                opt_ms(recovery.all_after_ms)
            );
        }
        let _ = writeln!(
            out,
            "  restoration: {}",
            if self.restoration.complete {
                "complete"
            } else {
                "INCOMPLETE — check the regions by hand"
            }
        );
        out
    }

    /// Writes the JSON and Markdown reports into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(JSON_FILE);
        let markdown = dir.join(MARKDOWN_FILE);
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&json, text + "\n")?;
        std::fs::write(&markdown, self.to_markdown())?;
        Ok((json, markdown))
    }
}
