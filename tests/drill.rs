//! `meridian drill` end to end: the drill library against a real DNS server on loopback (a
//! scratch copy of the bundled example with an operator-state file), driven through an
//! in-process [`DrillControl`] that applies operator changes with
//! `SnapshotStore::update_operator`, exactly what the admin API does behind HTTP.
//!
//! The test checks the report against what it observes itself: its own queries while the
//! region is drained and after the drill, the operator-state file, the control calls made.

mod common;

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Scratch, TestServer, addresses, ask, udp_client};
use hickory_proto::rr::{Name, RecordType};
use meridian::{
    drill::{
        ControlError, ControlStatus, Disruption, DrillControl, DrillPlan, DrillReport, EndpointMap,
        Outcome, RegionState, run_drill,
    },
    operator_state::{AdminState, OperatorState},
    snapshot::SnapshotStore,
};
use tokio_util::sync::CancellationToken;

const EU_WEST: &str = "198.51.100.10";
/// Answered with eu-west by the bundled example: GB, NL (EU), ZA (AF), the operator override.
const EU_PREFIXES: [&str; 4] = [
    "81.2.69.0/24",
    "185.199.108.0/24",
    "41.0.0.0/16",
    "198.51.100.0/24",
];
/// Answered elsewhere: US (us-east), JP (ap-south).
const OTHER_PREFIXES: [&str; 2] = ["8.8.8.0/24", "133.242.0.0/16"];

/// One prefix as the test saw it: (prefix, answer addresses, smallest TTL).
type Seen = (String, Vec<IpAddr>, u32);

/// What the in-process control is asked to do, and what goes wrong on cue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// The n-th mutating call (1-based) fails once.
    FailCall(usize),
    /// The n-th mutating call panics.
    PanicCall(usize),
    /// The n-th mutating call succeeds, then Ctrl-C arrives.
    CancelAfterCall(usize),
}

/// The admin API's effect without its HTTP: operator changes go through the store, which
/// persists them to the operator-state file and publishes a new snapshot.
struct StoreControl {
    store: Arc<SnapshotStore>,
    fault: Fault,
    cancel: CancellationToken,
    mutations: AtomicUsize,
    calls: Mutex<Vec<String>>,
    drain_started: Mutex<Option<Instant>>,
    drained_at: Mutex<Option<Instant>>,
    /// What the test itself saw when the drill began to restore (first undrain call).
    seen_before_restore: Mutex<Option<(Instant, Vec<Seen>)>>,
    dns: std::net::SocketAddr,
}

impl StoreControl {
    fn new(store: Arc<SnapshotStore>, dns: std::net::SocketAddr, fault: Fault) -> StoreControl {
        StoreControl {
            store,
            fault,
            cancel: CancellationToken::new(),
            mutations: AtomicUsize::new(0),
            calls: Mutex::new(Vec::new()),
            drain_started: Mutex::new(None),
            drained_at: Mutex::new(None),
            seen_before_restore: Mutex::new(None),
            dns,
        }
    }

    fn mutate(
        &self,
        what: String,
        change: impl FnOnce(&mut OperatorState),
    ) -> Result<(), ControlError> {
        let n = self.mutations.fetch_add(1, Ordering::SeqCst) + 1;
        self.calls.lock().unwrap().push(what.clone());
        match self.fault {
            Fault::FailCall(k) if k == n => {
                return Err(ControlError::Admin(format!("injected failure on {what}")));
            }
            Fault::PanicCall(k) if k == n => panic!("injected panic on {what}"),
            _ => {}
        }
        let mut operator = self.store.load().operator.clone();
        change(&mut operator);
        self.store
            .update_operator(operator)
            .map_err(|e| ControlError::Admin(e.to_string()))?;
        if self.fault == Fault::CancelAfterCall(n) {
            self.cancel.cancel();
        }
        Ok(())
    }

    /// The test's own view: every sampled prefix's answer addresses and TTL.
    async fn look(&self) -> Vec<Seen> {
        let client = udp_client(self.dns).await;
        let mut seen = Vec::new();
        for prefix in EU_PREFIXES.iter().chain(&OTHER_PREFIXES) {
            let message = ask(&client, "api.example.test.", RecordType::A, Some(prefix)).await;
            let ttl = message.answers.iter().map(|r| r.ttl).min().unwrap_or(0);
            seen.push((prefix.to_string(), addresses(&message), ttl));
        }
        seen
    }
}

fn set_admin(operator: &mut OperatorState, region: &str, admin: AdminState) {
    operator.regions.entry(region.to_owned()).or_default().admin = admin;
}

impl DrillControl for StoreControl {
    async fn drain(&self, region: &str) -> Result<(), ControlError> {
        self.drain_started
            .lock()
            .unwrap()
            .get_or_insert(Instant::now());
        self.mutate(format!("drain {region}"), |o| {
            set_admin(o, region, AdminState::Drain)
        })?;
        self.drained_at
            .lock()
            .unwrap()
            .get_or_insert(Instant::now());
        Ok(())
    }

    async fn undrain(&self, region: &str) -> Result<(), ControlError> {
        if self.seen_before_restore.lock().unwrap().is_none() {
            let at = Instant::now();
            let seen = self.look().await;
            *self.seen_before_restore.lock().unwrap() = Some((at, seen));
        }
        self.mutate(format!("undrain {region}"), |o| {
            set_admin(o, region, AdminState::Auto)
        })
    }

    async fn set_max_ttl(&self, max_ttl: Option<u32>) -> Result<(), ControlError> {
        self.mutate(format!("max_ttl {max_ttl:?}"), |o| o.max_ttl = max_ttl)
    }

    async fn status(&self) -> Result<ControlStatus, ControlError> {
        self.calls.lock().unwrap().push("status".into());
        let snapshot = self.store.load();
        let regions = snapshot
            .config
            .regions
            .iter()
            .map(|region| {
                let idx = snapshot
                    .config
                    .region_by_id(&region.id)
                    .expect("own region");
                let status = snapshot.steering.region_status(idx);
                RegionState {
                    id: region.id.to_string(),
                    admin: snapshot
                        .operator
                        .region(&region.id)
                        .admin
                        .as_str()
                        .to_owned(),
                    health: status.health.as_str().to_owned(),
                    serving: status.exclusion().is_none(),
                }
            })
            .collect();
        Ok(ControlStatus {
            max_ttl: snapshot.operator.max_ttl,
            regions,
        })
    }

    async fn pause_reports(&self, relay_admin: &str, paused: bool) -> Result<(), ControlError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("pause_reports {relay_admin} {paused}"));
        Ok(())
    }

    async fn kill(&self, pid: u32) -> Result<(), ControlError> {
        Err(ControlError::Kill {
            pid,
            message: "not in this test".into(),
        })
    }
}

/// The scratch example with a short TTL (so a TTL ramp waits 2 s, not 30).
fn scratch() -> Scratch {
    let scratch = Scratch::new();
    let config = scratch.read("zones/meridian.toml");
    let shortened = config.replacen("ttl = 30", "ttl = 2", 1);
    assert_ne!(config, shortened, "the bundled example's api TTL moved");
    scratch.replace("zones/meridian.toml", &shortened);
    scratch
}

fn plan(server: &TestServer) -> DrillPlan {
    let config = meridian::config::load_dns_config(server.store.config_path()).expect("config");
    let prefixes = EU_PREFIXES
        .iter()
        .chain(&OTHER_PREFIXES)
        .map(|p| p.parse().expect("prefix"))
        .collect();
    let mut plan = DrillPlan::new(
        server.addr,
        Name::from_ascii("api.example.test.").expect("name"),
        vec![Arc::from("eu-west")],
        prefixes,
        EndpointMap::from_config(&config),
    );
    plan.sample_interval = Duration::from_millis(50);
    plan.query_timeout = Duration::from_millis(500);
    plan.max_wait = Duration::from_secs(20);
    plan
}

fn state_file(scratch: &Scratch) -> OperatorState {
    OperatorState::load(&scratch.path("zones/operator-state.json")).expect("state file")
}

/// No drain and no TTL cap left anywhere: file and published snapshot.
fn assert_restored(scratch: &Scratch, server: &TestServer) {
    for operator in [state_file(scratch), server.store.load().operator.clone()] {
        assert!(
            operator
                .regions
                .values()
                .all(|r| r.admin == AdminState::Auto),
            "{operator:?}"
        );
        assert_eq!(operator.max_ttl, None);
    }
}

/// A relay's `/metrics` as seen from outside: traffic while eu-west serves, none once it is
/// drained. Counts its scrapes and remembers when it first reported idle.
struct FakeRelay {
    url: String,
    scrapes: Arc<AtomicUsize>,
    first_idle: Arc<Mutex<Option<Instant>>>,
}

async fn fake_relay(store: Arc<SnapshotStore>) -> FakeRelay {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    let scrapes = Arc::new(AtomicUsize::new(0));
    let first_idle = Arc::new(Mutex::new(None));
    let (count, idle_at) = (scrapes.clone(), first_idle.clone());
    tokio::spawn(async move {
        let mut responses = 0u64;
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let drained = store.load().operator.region("eu-west").admin == AdminState::Drain;
            let in_flight = if drained {
                idle_at.lock().unwrap().get_or_insert(Instant::now());
                0
            } else {
                responses += 5;
                2
            };
            let body = format!(
                "# HELP meridian_relay_responses Responses.\n# TYPE meridian_relay_responses counter\n\
                 meridian_relay_responses_total{{model=\"m\",backend=\"b\",status=\"200\"}} {responses}\n\
                 # HELP meridian_relay_backend_in_flight In flight.\n# TYPE meridian_relay_backend_in_flight gauge\n\
                 meridian_relay_backend_in_flight{{backend=\"b\"}} {in_flight}\n# EOF\n"
            );
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    FakeRelay {
        url,
        scrapes,
        first_idle,
    }
}

fn eu_west() -> IpAddr {
    EU_WEST.parse().unwrap()
}

#[tokio::test]
async fn planned_drill_measures_the_shift_restores_and_reports_what_happened() {
    let scratch = scratch();
    let server = TestServer::start(&scratch.config()).await;
    let relay = fake_relay(server.store.clone()).await;
    let mut plan = plan(&server);
    plan.ttl_ramp = Some(1);
    plan.relay_metrics = vec![(Arc::from("eu-west"), relay.url.clone())];
    plan.traffic_quiet = Duration::from_millis(300);
    let control = StoreControl::new(server.store.clone(), server.addr, Fault::None);

    let report = run_drill(&plan, &control, CancellationToken::new()).await;

    assert_eq!(report.outcome, Outcome::Converged, "{}", report.summary());
    assert!(report.restoration.complete, "{:?}", report.restoration);
    assert_restored(&scratch, &server);
    assert_eq!(
        *control.calls.lock().unwrap(),
        [
            "status",
            "max_ttl Some(1)",
            "drain eu-west",
            "undrain eu-west",
            "max_ttl None"
        ]
    );

    // The prefixes the drill measured are exactly those the baseline sent to eu-west.
    assert_eq!(report.baseline.affected_prefixes, EU_PREFIXES);
    assert_eq!(report.baseline.largest_ttl, Some(2));

    // What the test saw itself just before restoration: no eu-west anywhere, capped TTLs.
    let (restore_started, seen) = control
        .seen_before_restore
        .lock()
        .unwrap()
        .clone()
        .expect("looked before restoring");
    for (prefix, answer, ttl) in &seen {
        assert!(!answer.is_empty(), "{prefix}: no answer");
        assert!(!answer.contains(&eu_west()), "{prefix} still gets eu-west");
        assert!(*ttl <= 1, "{prefix}: TTL {ttl} above the ramp");
    }

    // Figures agree with one another and with the test's clock.
    let shift = report.shift.as_ref().expect("shift figures");
    let all = shift.all_after_ms.expect("all left");
    let p90 = shift.p90_after_ms.expect("90 % left");
    assert!(p90 <= all && all <= shift.observed_ms, "{shift:?}");
    let drained_at = control.drained_at.lock().unwrap().expect("drain called");
    let drained_for = restore_started.duration_since(drained_at).as_millis() as u64;
    assert!(
        all <= drained_for,
        "settled after {all} ms, restored after {drained_for} ms"
    );
    assert_eq!(shift.per_prefix.len(), EU_PREFIXES.len());
    for prefix in &shift.per_prefix {
        assert_eq!(prefix.before.as_deref(), Some("eu-west"), "{prefix:?}");
        assert_eq!(prefix.after.as_deref(), Some("us-east"), "{prefix:?}");
        assert!(
            prefix.settled_after_ms.is_some_and(|t| t <= all),
            "{prefix:?}"
        );
    }
    // Relay traffic: drained at the first idle scrape the relay itself saw, quiet long enough.
    let traffic = &report.traffic[0];
    let drained = traffic.drained_after_ms.expect("traffic drained");
    let first_idle = relay
        .first_idle
        .lock()
        .unwrap()
        .expect("relay saw the drain");
    // The drill's clock starts just before the drain call, the relay's when the call began;
    // they differ by a scrape's latency at most.
    let drain_started = control.drain_started.lock().unwrap().expect("drain called");
    let idle_after = first_idle.duration_since(drain_started).as_millis() as u64;
    assert!(
        drained.abs_diff(idle_after) <= 50,
        "drained after {drained} ms, relay idle after {idle_after} ms"
    );
    assert!(
        drained + 300 <= shift.observed_ms + 5,
        "quiet period not observed: {traffic:?}"
    );
    assert_eq!(traffic.failed_scrapes, 0);
    assert_eq!(relay.scrapes.load(Ordering::SeqCst), report.samples.rounds);
    // In flight: busy, idle while drained, busy again once restored.
    let in_flight: Vec<f64> = traffic.series.iter().map(|p| p.1).collect();
    assert_eq!(in_flight.first(), Some(&2.0), "{traffic:?}");
    assert!(in_flight.contains(&0.0), "{traffic:?}");
    assert_eq!(in_flight.last(), Some(&2.0), "{traffic:?}");
    let ramp = report.ramp.as_ref().expect("ramp figures");
    assert_eq!((ramp.max_ttl, ramp.previous_ttl), (1, Some(2)));
    assert_eq!(ramp.waited_ms, Some(2000));
    assert!(ramp.ttl_capped_after_ms.is_some(), "{ramp:?}");

    // Recovery: measured, and the test sees eu-west again itself.
    let recovery = report.recovery.as_ref().expect("recovery figures");
    assert!(recovery.all_after_ms.is_some(), "{recovery:?}");
    let after = control.look().await;
    for (prefix, answer, ttl) in &after {
        assert_eq!(
            answer.contains(&eu_west()),
            EU_PREFIXES.contains(&prefix.as_str()),
            "{prefix}: {answer:?}"
        );
        assert_eq!(*ttl, 2, "{prefix}: the TTL cap was cleared");
    }

    // The timeline shows each measured prefix leave and come back; others never move.
    for prefix in EU_PREFIXES {
        let moves: Vec<&str> = report
            .answer_changes
            .iter()
            .filter(|c| c.prefix == prefix)
            .map(|c| c.answer.as_str())
            .collect();
        assert_eq!(moves, ["eu-west", "us-east", "eu-west"], "{prefix}");
    }
    for prefix in OTHER_PREFIXES {
        let moves = report
            .answer_changes
            .iter()
            .filter(|c| c.prefix == prefix)
            .count();
        assert_eq!(moves, 1, "{prefix} moved");
    }
    assert_eq!(report.samples.lost, 0);

    // Both reports on disk say the same.
    let out = tempfile::tempdir().expect("tempdir");
    let (json, markdown) = report.write(out.path()).expect("write reports");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).expect("json")).expect("parse");
    assert_eq!(written["outcome"]["status"], "converged");
    assert_eq!(written["shift"]["all_after_ms"], all);
    assert_eq!(written["restoration"]["complete"], true);
    let markdown = std::fs::read_to_string(markdown).expect("markdown");
    assert!(markdown.contains("**Outcome: converged**"), "{markdown}");
    assert!(
        markdown.contains(&format!("| all answers left after | {all} ms |")),
        "{markdown}"
    );
    println!("{}", report.summary());
    server.stop().await;
}

async fn faulty_drill(fault: Fault) -> (DrillReport, Vec<String>) {
    let scratch = scratch();
    let server = TestServer::start(&scratch.config()).await;
    let mut plan = plan(&server);
    // Two regions, so the second drain is the second mutating call.
    plan.regions = vec![Arc::from("eu-west"), Arc::from("ap-south")];
    let control = StoreControl::new(server.store.clone(), server.addr, fault);
    let report = run_drill(&plan, &control, control.cancel.clone()).await;
    assert!(
        report.restoration.complete,
        "{fault:?}: {:?}",
        report.restoration
    );
    assert_restored(&scratch, &server);
    let calls = control.calls.lock().unwrap().clone();
    server.stop().await;
    (report, calls)
}

#[tokio::test]
async fn a_failing_control_call_mid_drill_still_restores() {
    let (report, calls) = faulty_drill(Fault::FailCall(2)).await;
    match &report.outcome {
        Outcome::Failed { error } => {
            assert!(
                error.contains("injected failure on drain ap-south"),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
    // eu-west was really drained; ap-south's drain failed but may have been applied
    // remotely, so both are undone, newest first.
    assert_eq!(
        calls,
        [
            "status",
            "drain eu-west",
            "drain ap-south",
            "undrain ap-south",
            "undrain eu-west"
        ]
    );
    assert!(
        report.recovery.is_none(),
        "no recovery measured after a failure"
    );
}

#[tokio::test]
async fn a_panic_or_an_interrupt_mid_drill_still_restores() {
    let (report, calls) = faulty_drill(Fault::PanicCall(2)).await;
    match &report.outcome {
        Outcome::Failed { error } => assert!(error.contains("panicked"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(&calls[3..], ["undrain ap-south", "undrain eu-west"]);

    let (report, calls) = faulty_drill(Fault::CancelAfterCall(1)).await;
    assert!(
        matches!(report.outcome, Outcome::Aborted { .. }),
        "{:?}",
        report.outcome
    );
    // Cancellation is seen at the drill's next pause, here after the second drain returned.
    assert_eq!(
        calls,
        [
            "status",
            "drain eu-west",
            "drain ap-south",
            "undrain ap-south",
            "undrain eu-west"
        ]
    );
    assert!(report.shift.as_ref().is_none_or(|s| s.converged.is_none()));
    assert!(report.events.iter().any(|e| e.what.contains("interrupted")));
}

#[tokio::test]
async fn a_drill_that_cannot_converge_reports_so_and_restores() {
    let scratch = scratch();
    let server = TestServer::start(&scratch.config()).await;
    let mut plan = plan(&server);
    // A relay whose metrics never answer: traffic can never be shown drained.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/metrics", dead.local_addr().expect("addr"));
    drop(dead);
    plan.relay_metrics = vec![(Arc::from("eu-west"), url)];
    plan.max_wait = Duration::from_secs(1);
    let control = StoreControl::new(server.store.clone(), server.addr, Fault::None);
    let report = run_drill(&plan, &control, CancellationToken::new()).await;
    assert_eq!(
        report.outcome,
        Outcome::DidNotConverge {
            phase: "disruption".into()
        }
    );
    // Answers did move; only the traffic figure is missing.
    assert!(report.shift.as_ref().and_then(|s| s.all_after_ms).is_some());
    assert_eq!(report.traffic[0].drained_after_ms, None);
    assert!(report.traffic[0].failed_scrapes > 0);
    assert!(report.restoration.complete);
    assert_restored(&scratch, &server);
    server.stop().await;
}

#[tokio::test]
async fn unplanned_pause_without_detection_does_not_converge_and_resumes_reports() {
    let scratch = scratch();
    let server = TestServer::start(&scratch.config()).await;
    let mut plan = plan(&server);
    plan.disruption = Disruption::PauseReports {
        relay_admin: "http://127.0.0.1:9/relay".into(),
    };
    plan.max_wait = Duration::from_secs(1);
    let control = StoreControl::new(server.store.clone(), server.addr, Fault::None);
    let report = run_drill(&plan, &control, CancellationToken::new()).await;

    // Without reports and without a probe the region is only "unknown": it keeps serving, so
    // answers never leave, and the report says exactly that.
    assert_eq!(report.kind, "unplanned");
    assert_eq!(
        report.outcome,
        Outcome::DidNotConverge {
            phase: "disruption".into()
        }
    );
    let detection = &report.detection[0];
    assert_eq!(detection.health_before.as_deref(), Some("unknown"));
    assert_eq!(
        (detection.changed_after_ms, detection.down_after_ms),
        (None, None)
    );
    let shift = report.shift.as_ref().expect("shift figures");
    assert!(
        shift
            .per_prefix
            .iter()
            .all(|p| p.settled_after_ms.is_none())
    );
    let gave_up = report
        .events
        .iter()
        .find(|e| e.what.starts_with("did not converge"))
        .expect("gave up");
    assert!(
        gave_up.at_ms >= shift.event_at_ms + 1000,
        "{:?}",
        report.events
    );
    let calls = control.calls.lock().unwrap().clone();
    let pauses: Vec<&String> = calls.iter().filter(|c| c.starts_with("pause")).collect();
    assert_eq!(
        pauses,
        [
            "pause_reports http://127.0.0.1:9/relay true",
            "pause_reports http://127.0.0.1:9/relay false"
        ]
    );
    assert!(report.restoration.complete);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The drill's calls to a relay whose admin listener has a token.
// ---------------------------------------------------------------------------------------------

mod relay_support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_presents_the_relay_admin_token() {
    use meridian::{
        admin::{AdminToken, client::AdminClient},
        drill::{AdminControl, http::HttpCaller},
    };

    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay_support::relay_with_admin_token(dir.path(), "drill-relay-token-42").await;
    let token_file = dir.path().join("relay-admin.token");
    let relay_admin = format!("http://{}", relay.admin);
    // The DNS side is not called here.
    let dns_admin = || AdminClient::new("http://127.0.0.1:9", None).unwrap();
    let token = AdminToken::from_file(&token_file).unwrap();
    let timeout = Duration::from_secs(5);

    // Without the token the relay refuses the pause; with it the call is authorised and gets
    // the relay's own answer (this relay has no health channel to pause: 409).
    let anonymous = AdminControl::new(dns_admin(), HttpCaller::new(timeout));
    let refused = anonymous
        .pause_reports(&relay_admin, true)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("HTTP 401"), "{refused}");
    let with_token = AdminControl::new(
        dns_admin(),
        HttpCaller::new(timeout).with_token(Some(token.clone())),
    );
    let answered = with_token
        .pause_reports(&relay_admin, true)
        .await
        .unwrap_err();
    assert!(answered.to_string().contains("HTTP 409"), "{answered}");
    assert!(!answered.to_string().contains("drill-relay-token-42"));

    // Scrapes carry it too, and still read the metrics.
    let metrics = HttpCaller::new(timeout)
        .with_token(Some(token))
        .get_text(&format!("{relay_admin}/metrics"))
        .await
        .unwrap();
    assert!(metrics.contains("meridian_relay_"), "{metrics}");
    relay
        .take_handle()
        .drain_and_stop(Duration::from_secs(5))
        .await;
}

/// `--relay-token-file` follows the token rules: a file others can read stops the drill
/// before it changes anything, with exit status 64.
#[test]
fn a_relay_token_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let admin_token = dir.path().join("admin.token");
    std::fs::write(&admin_token, "dns-token\n").unwrap();
    std::fs::set_permissions(&admin_token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let relay_token = dir.path().join("relay.token");
    std::fs::write(&relay_token, "relay-token-secret\n").unwrap();
    std::fs::set_permissions(&relay_token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["drill", "--admin", "http://127.0.0.1:9", "--token-file"])
        .arg(&admin_token)
        .arg("--relay-token-file")
        .arg(&relay_token)
        .args([
            "--dns",
            "127.0.0.1:9",
            "--name",
            "api.example.test",
            "--region",
            "eu-west",
            "--prefix",
            "81.2.69.0/24",
            "--unplanned",
            "pause-reports=http://127.0.0.1:9",
            "--out",
        ])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--relay-token-file") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!stderr.contains("relay-token-secret"), "{stderr}");
    assert!(!dir.path().join("out").exists());
}
