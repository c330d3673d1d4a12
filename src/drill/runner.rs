//! Runs one drill: preflight, baseline, optional TTL ramp, the disruption, observation until
//! convergence or `max_wait`, hold, restoration, observation of the recovery.
//!
//! Restoration cannot be skipped: every lever is written into [`Applied`] *before* it is
//! pulled (a call that timed out may still have taken effect), the whole forward path runs as
//! one future raced against cancellation and caught if it panics, and [`run_drill`] restores
//! after that future ends, whatever the way it ended. Restore calls are retried and bounded.
//! The runner owns timing and IO; every figure comes from [`super::measure`].

use std::{
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures_util::{FutureExt as _, future::join_all};
use hickory_proto::rr::{Name, RecordType};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminToken;

use super::{
    control::{ControlError, DrillControl},
    http::HttpCaller,
    measure::{self, Goal, HealthReading, RelayScrape, Tick},
    probe::{DnsSampler, EndpointMap, relay_counters},
    report::{self, DrillReport},
};

/// What to disrupt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disruption {
    /// Drain the target regions through the admin API (a planned drill).
    Drain,
    /// Stop the health reports of the relay whose admin listener is at this URL.
    PauseReports { relay_admin: String },
    /// Kill this relay process (SIGKILL); it cannot be restored by the drill.
    Kill { pid: u32 },
}

/// Everything a drill does, fixed before it starts.
#[derive(Clone, Debug)]
pub struct DrillPlan {
    /// The DNS node's UDP address.
    pub dns: SocketAddr,
    pub name: Name,
    pub qtype: RecordType,
    /// Regions drained (planned) or whose outage is simulated (unplanned).
    pub regions: Vec<Arc<str>>,
    pub prefixes: Vec<IpNet>,
    pub endpoints: EndpointMap,
    /// (region, relay `/metrics` URL).
    pub relay_metrics: Vec<(Arc<str>, String)>,
    /// Cap answers' TTL at this many seconds first, then wait out the previous TTL.
    pub ttl_ramp: Option<u32>,
    pub disruption: Disruption,
    pub sample_interval: Duration,
    pub query_timeout: Duration,
    /// Bound on each phase (ramp wait, convergence, recovery).
    pub max_wait: Duration,
    /// How long to stay disrupted after convergence.
    pub hold: Duration,
    /// Sampling rounds before the disruption.
    pub baseline_rounds: usize,
    /// Answered samples at the goal before a prefix counts as settled online.
    pub confirm_samples: usize,
    /// How long a relay must stay idle with a still counter to count as drained.
    pub traffic_quiet: Duration,
    /// Bound on each control call and scrape.
    pub call_timeout: Duration,
    /// The admin URL, for the report only.
    pub admin_url: String,
    /// Bearer token for the relays' admin listeners (`--relay-token-file`), sent on the
    /// pause/resume calls and the `/metrics` scrapes; `None` for relays without one.
    pub relay_token: Option<AdminToken>,
}

impl DrillPlan {
    /// A plan with the defaults of the command line.
    pub fn new(
        dns: SocketAddr,
        name: Name,
        regions: Vec<Arc<str>>,
        prefixes: Vec<IpNet>,
        endpoints: EndpointMap,
    ) -> DrillPlan {
        DrillPlan {
            dns,
            name,
            qtype: RecordType::A,
            regions,
            prefixes,
            endpoints,
            relay_metrics: Vec::new(),
            ttl_ramp: None,
            disruption: Disruption::Drain,
            sample_interval: Duration::from_millis(100),
            query_timeout: Duration::from_millis(1000),
            max_wait: Duration::from_secs(60),
            hold: Duration::ZERO,
            baseline_rounds: 3,
            confirm_samples: 3,
            traffic_quiet: Duration::from_secs(2),
            call_timeout: Duration::from_secs(10),
            admin_url: String::new(),
            relay_token: None,
        }
    }

    pub fn is_planned(&self) -> bool {
        self.disruption == Disruption::Drain
    }
}

/// Why the forward path stopped early.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    #[error("aborted: {0}")]
    Aborted(String),
    #[error("preflight: {0}")]
    Preflight(String),
    #[error("{action}: {error}")]
    Control { action: String, error: ControlError },
    #[error("cannot query the DNS node: {0}")]
    Sampler(String),
    #[error("panicked: {0}")]
    Panicked(String),
}

/// The levers pulled so far; what restoration undoes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub drained: Vec<Arc<str>>,
    /// The `max_ttl` to put back (the value before the drill), when the drill changed it.
    pub max_ttl_before: Option<Option<u32>>,
    pub paused_reports: Option<String>,
    pub killed: Option<u32>,
}

/// Which part of the drill a sampling round belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Baseline,
    Ramp,
    Disrupted,
    Hold,
    Recovery,
}

/// Everything recorded while the drill runs; the report is computed from it.
pub(super) struct Session<'p> {
    pub plan: &'p DrillPlan,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub ticks: Vec<Tick>,
    pub phases: Vec<Phase>,
    /// Per `plan.relay_metrics` entry.
    pub scrapes: Vec<Vec<RelayScrape>>,
    /// Per target region (unplanned drills only).
    pub health: Vec<Vec<HealthReading>>,
    pub events: Vec<(Duration, String)>,
    pub applied: Applied,
    pub affected: Vec<usize>,
    pub baseline_health: Vec<Option<String>>,
    pub baseline_ttl: Option<u32>,
    pub ramp_at: Option<Duration>,
    pub ramp_waited: Option<Duration>,
    pub disrupted_at: Option<Duration>,
    pub restore_at: Option<Duration>,
    pub converged: Option<bool>,
    pub recovered: Option<bool>,
    sampler: Option<DnsSampler>,
    http: HttpCaller,
}

impl<'p> Session<'p> {
    fn new(plan: &'p DrillPlan) -> Session<'p> {
        Session {
            plan,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            ticks: Vec::new(),
            phases: Vec::new(),
            scrapes: vec![Vec::new(); plan.relay_metrics.len()],
            health: vec![Vec::new(); plan.regions.len()],
            events: Vec::new(),
            applied: Applied::default(),
            affected: Vec::new(),
            baseline_health: Vec::new(),
            baseline_ttl: None,
            ramp_at: None,
            ramp_waited: None,
            disrupted_at: None,
            restore_at: None,
            converged: None,
            recovered: None,
            sampler: None,
            http: HttpCaller::new(plan.call_timeout).with_token(plan.relay_token.clone()),
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn event(&mut self, what: impl Into<String>) -> Duration {
        let at = self.now();
        let what = what.into();
        tracing::info!(at_ms = at.as_millis() as u64, "{what}");
        self.events.push((at, what));
        at
    }

    /// The rounds of these phases, in order.
    pub fn ticks_in(&self, phases: &[Phase]) -> Vec<Tick> {
        self.ticks
            .iter()
            .zip(&self.phases)
            .filter(|(_, p)| phases.contains(p))
            .map(|(t, _)| t.clone())
            .collect()
    }
}

/// Runs the drill described by `plan`, restores, and reports. Never returns without having
/// tried to undo every lever it pulled; cancelling `cancel` (Ctrl-C) aborts and restores.
pub async fn run_drill<C: DrillControl>(
    plan: &DrillPlan,
    control: &C,
    cancel: CancellationToken,
) -> DrillReport {
    let mut session = Session::new(plan);
    let forward = {
        let work = AssertUnwindSafe(execute(&mut session, control)).catch_unwind();
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(Stop::Aborted("interrupted (Ctrl-C)".to_owned())),
            result = work => result.unwrap_or_else(|panic| Err(Stop::Panicked(panic_text(&panic)))),
        }
    };
    if let Err(stop) = &forward {
        session.event(format!("stopped: {stop}"));
    }
    let restoration = restore(&mut session, control).await;
    let measure_recovery = forward.is_ok()
        && restoration.complete
        && !matches!(plan.disruption, Disruption::Kill { .. });
    if measure_recovery {
        let interrupted = tokio::select! {
            biased;
            () = cancel.cancelled() => true,
            () = observe_recovery(&mut session, control) => false,
        };
        if interrupted {
            session.event("recovery measurement interrupted (Ctrl-C); the drill was restored");
        }
    }
    report::build(&session, forward.err(), restoration)
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

async fn execute<C: DrillControl>(s: &mut Session<'_>, control: &C) -> Result<(), Stop> {
    let plan = s.plan;
    let status = call(plan, "read status", control.status()).await?;
    for region in &plan.regions {
        let Some(state) = status.region(region) else {
            return Err(Stop::Preflight(format!(
                "region {region} is not known to the DNS node"
            )));
        };
        if plan.is_planned() && state.admin != "auto" {
            return Err(Stop::Preflight(format!(
                "region {region} is already {} (a drill starts from auto)",
                state.admin
            )));
        }
        if !plan.endpoints.knows(region) {
            return Err(Stop::Preflight(format!(
                "no endpoint of region {region} is known, so its answers cannot be recognised"
            )));
        }
        s.baseline_health.push(Some(state.health.clone()));
    }
    let max_ttl_before = status.max_ttl;
    let sampler = DnsSampler::connect(
        plan.dns,
        plan.name.clone(),
        plan.qtype,
        plan.prefixes.clone(),
        plan.query_timeout,
        plan.endpoints.clone(),
    )
    .await
    .map_err(|e| Stop::Sampler(e.to_string()))?;
    s.sampler = Some(sampler);

    s.event("baseline");
    for _ in 0..plan.baseline_rounds.max(1) {
        tick(s, control, Phase::Baseline).await;
    }
    let baseline = s.ticks_in(&[Phase::Baseline]);
    s.affected = measure::affected_prefixes(&baseline, &plan.regions);
    s.baseline_ttl = measure::largest_ttl(&baseline);
    if s.affected.is_empty() {
        s.event("no sampled prefix was answered with a target region: no answer can move");
    }

    if let Some(cap) = plan.ttl_ramp {
        s.applied.max_ttl_before = Some(max_ttl_before);
        s.ramp_at = Some(s.event(format!("ramp: max_ttl = {cap}")));
        call(plan, "set max_ttl", control.set_max_ttl(Some(cap))).await?;
        // Resolvers may keep what they got before the cap for up to the old TTL.
        let previous = Duration::from_secs(u64::from(s.baseline_ttl.unwrap_or(0)));
        let wait = if s.baseline_ttl.is_some_and(|ttl| ttl > cap) {
            previous.min(plan.max_wait)
        } else {
            Duration::ZERO
        };
        if wait < previous && wait > Duration::ZERO {
            s.event(format!(
                "ramp wait capped at max-wait ({} s < previous TTL {} s)",
                wait.as_secs(),
                previous.as_secs()
            ));
        }
        let until = s.now() + wait;
        while s.now() < until {
            tick(s, control, Phase::Ramp).await;
        }
        s.ramp_waited = Some(wait);
    }

    let at = match &plan.disruption {
        Disruption::Drain => {
            let at = s.event(format!("drain {}", join(&plan.regions)));
            for region in &plan.regions {
                s.applied.drained.push(Arc::clone(region));
                call(plan, &format!("drain {region}"), control.drain(region)).await?;
            }
            at
        }
        Disruption::PauseReports { relay_admin } => {
            let at = s.event(format!("pause reports of {relay_admin}"));
            s.applied.paused_reports = Some(relay_admin.clone());
            call(
                plan,
                "pause reports",
                control.pause_reports(relay_admin, true),
            )
            .await?;
            at
        }
        Disruption::Kill { pid } => {
            let at = s.event(format!("kill relay process {pid}"));
            s.applied.killed = Some(*pid);
            call(plan, "kill", control.kill(*pid)).await?;
            at
        }
    };
    s.disrupted_at = Some(at);
    s.event("disruption applied");

    let deadline = at + plan.max_wait;
    let converged = loop {
        tick(s, control, Phase::Disrupted).await;
        if disruption_settled(s, at) {
            break true;
        }
        if s.now() >= deadline {
            break false;
        }
    };
    s.converged = Some(converged);
    s.event(if converged {
        "converged"
    } else {
        "did not converge within max-wait"
    });

    if converged && !plan.hold.is_zero() {
        let until = s.now() + plan.hold;
        while s.now() < until {
            tick(s, control, Phase::Hold).await;
        }
        s.event("hold over");
    }
    Ok(())
}

fn disruption_settled(s: &Session<'_>, at: Duration) -> bool {
    let ticks = s.ticks_in(&[Phase::Disrupted]);
    let answers = measure::settled(
        &ticks,
        &s.affected,
        at,
        Goal::Leave,
        &s.plan.regions,
        s.plan.confirm_samples,
    );
    let traffic = s
        .plan
        .relay_metrics
        .iter()
        .zip(&s.scrapes)
        .all(|((region, _), scrapes)| {
            !s.plan.regions.contains(region)
                || measure::traffic_drained(scrapes, at, s.plan.traffic_quiet).is_some()
        });
    answers && traffic
}

async fn observe_recovery<C: DrillControl>(s: &mut Session<'_>, control: &C) {
    let Some(at) = s.restore_at else {
        return;
    };
    let deadline = at + s.plan.max_wait;
    let recovered = loop {
        tick(s, control, Phase::Recovery).await;
        let ticks = s.ticks_in(&[Phase::Recovery]);
        let answers = measure::settled(
            &ticks,
            &s.affected,
            at,
            Goal::Return,
            &s.plan.regions,
            s.plan.confirm_samples,
        );
        let health = s.plan.is_planned()
            || s.health
                .iter()
                .zip(&s.baseline_health)
                .all(|(readings, before)| {
                    before
                        .as_deref()
                        .is_none_or(|b| measure::health_reached(readings, at, b).is_some())
                });
        if answers && health {
            break true;
        }
        if s.now() >= deadline {
            break false;
        }
    };
    s.recovered = Some(recovered);
    s.event(if recovered {
        "recovered"
    } else {
        "did not recover within max-wait"
    });
}

/// One sampling round: DNS answers, relay counters and (unplanned) region health, taken
/// together; then waits for the next round's start.
async fn tick<C: DrillControl>(s: &mut Session<'_>, control: &C, phase: Phase) {
    let plan = s.plan;
    let at = s.now();
    let http = &s.http;
    let sampler = s.sampler.as_mut();
    let dns = async move {
        match sampler {
            Some(sampler) => sampler.sample().await,
            None => Vec::new(),
        }
    };
    let relays = join_all(plan.relay_metrics.iter().map(|(_, url)| async move {
        let text = http.get_text(url).await.ok()?;
        relay_counters(&text).ok()
    }));
    let status = async {
        if plan.is_planned() {
            return None;
        }
        tokio::time::timeout(plan.call_timeout, control.status())
            .await
            .ok()
            .and_then(Result::ok)
    };
    let (answers, counters, status) = tokio::join!(dns, relays, status);
    s.ticks.push(Tick { at, answers });
    s.phases.push(phase);
    for (scrapes, counters) in s.scrapes.iter_mut().zip(counters) {
        scrapes.push(RelayScrape { at, counters });
    }
    if !plan.is_planned() {
        for (readings, region) in s.health.iter_mut().zip(&plan.regions) {
            let health = status
                .as_ref()
                .and_then(|st| st.region(region))
                .map(|r| r.health.clone());
            readings.push(HealthReading { at, health });
        }
    }
    tokio::time::sleep_until((s.started + at + plan.sample_interval).into()).await;
}

/// A control call bounded by the plan's call timeout.
async fn call<T>(
    plan: &DrillPlan,
    action: &str,
    future: impl std::future::Future<Output = Result<T, ControlError>>,
) -> Result<T, Stop> {
    match tokio::time::timeout(plan.call_timeout, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Stop::Control {
            action: action.to_owned(),
            error,
        }),
        Err(_) => Err(Stop::Control {
            action: action.to_owned(),
            error: ControlError::Other(format!("no answer within {:?}", plan.call_timeout)),
        }),
    }
}

/// What restoration did, action by action.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Restoration {
    /// Every undo call succeeded (vacuously true when nothing was applied).
    pub complete: bool,
    pub actions: Vec<RestoreAction>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RestoreAction {
    pub action: String,
    pub attempts: u32,
    /// `None` on success, else the last error.
    pub error: Option<String>,
}

const RESTORE_ATTEMPTS: u32 = 3;
const RESTORE_BACKOFF: Duration = Duration::from_millis(500);

async fn restore<C: DrillControl>(s: &mut Session<'_>, control: &C) -> Restoration {
    let applied = s.applied.clone();
    if applied == Applied::default() {
        return Restoration {
            complete: true,
            actions: Vec::new(),
        };
    }
    s.restore_at = Some(s.event("restore"));
    let plan = s.plan;
    let mut actions = Vec::new();
    for region in applied.drained.iter().rev() {
        actions.push(
            retry(plan, format!("undrain {region}"), || {
                control.undrain(region)
            })
            .await,
        );
    }
    if let Some(before) = applied.max_ttl_before {
        let action = match before {
            Some(ttl) => format!("max_ttl back to {ttl}"),
            None => "clear max_ttl".to_owned(),
        };
        actions.push(retry(plan, action, || control.set_max_ttl(before)).await);
    }
    if let Some(relay_admin) = &applied.paused_reports {
        actions.push(
            retry(plan, format!("resume reports of {relay_admin}"), || {
                control.pause_reports(relay_admin, false)
            })
            .await,
        );
    }
    if let Some(pid) = applied.killed {
        actions.push(RestoreAction {
            action: format!("restart relay process {pid}"),
            attempts: 0,
            error: Some("a killed process cannot be restarted by the drill: restart it".into()),
        });
    }
    let complete = actions.iter().all(|a| a.error.is_none());
    for action in &actions {
        if let Some(error) = &action.error {
            tracing::error!(action = %action.action, %error, "restoration step failed");
        }
    }
    s.event(if complete {
        "restored"
    } else {
        "restoration INCOMPLETE"
    });
    Restoration { complete, actions }
}

async fn retry<F, Fut>(plan: &DrillPlan, action: String, mut attempt: F) -> RestoreAction
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ControlError>>,
{
    let mut last = None;
    for tries in 1..=RESTORE_ATTEMPTS {
        match call(plan, &action, attempt()).await {
            Ok(()) => {
                return RestoreAction {
                    action,
                    attempts: tries,
                    error: None,
                };
            }
            Err(error) => last = Some(error.to_string()),
        }
        if tries < RESTORE_ATTEMPTS {
            tokio::time::sleep(RESTORE_BACKOFF).await;
        }
    }
    RestoreAction {
        action,
        attempts: RESTORE_ATTEMPTS,
        error: last,
    }
}

fn join(regions: &[Arc<str>]) -> String {
    regions
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
