//! The health channel end to end on loopback: a relay-side sender pushes reports over QUIC
//! with mutual TLS to a DNS node's listener, whose ledger and health view steer the answers of
//! the in-process DNS server on the bundled example.
//!
//! The first test drives the library pieces directly; the others run the real path: a
//! `RelayHandle` configured with `[relay.health_channel]` in front of a simulated backend,
//! reporting to a DNS node's plane started by `health::runtime`, whose own probe reaches the
//! relay's public port.

mod common;

use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use common::{Scratch, TestServer, addresses, ask, udp_client};
use hickory_net::{client::Client, runtime::TokioRuntimeProvider};
use hickory_proto::rr::RecordType;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meridian::{
    config::model::{HealthChannel, ProbeSettings, RelayProbe, SpillWatermarks},
    dns::server::{Listeners, ServerLimits},
    health::{
        ChannelSetupError, HealthNode, HealthPlane, HealthSenderConfig, HealthView, Hysteresis,
        ListenerCounters, ListenerLimits, ReportLedger, ReportedState, SteeringFeed,
        listener_endpoint,
        pki::{Member, PemPair, write_deployment},
        probe::{ProbeTarget, probe_relay, roots_from_pem},
        run_listener, run_sender, runtime,
    },
    metrics::{Metrics, MetricsSource},
    relay::{
        config::parse_relay_config,
        report::{REPORT_VERSION, RegionReport, RegionState},
        server::{RelayHandle, StartError},
        stats::Rates,
    },
    sim_backend::{SimBackend, SimBackendArgs},
    snapshot::{Snapshot, SnapshotStore},
    steering::Health,
};
use rustls_pki_types::{ServerName, pem::PemObject as _};
use tokio::{sync::watch, task::JoinHandle};

const EU_CLIENT: &str = "81.2.69.0/24";
const EU_WEST: &str = "198.51.100.10";
const US_EAST: &str = "192.0.2.10";
const HYSTERESIS: Hysteresis = Hysteresis {
    down_after: 2,
    up_after: 3,
};
const INTERVAL: Duration = Duration::from_millis(100);
/// Generous: every wait below normally ends within a few report intervals.
const WAIT: Duration = Duration::from_secs(15);

struct Deployment {
    dir: tempfile::TempDir,
    ca_pem: String,
    node: PemPair,
    eu_west: PemPair,
    us_east: PemPair,
}

fn deployment() -> Deployment {
    let dir = tempfile::tempdir().expect("tempdir");
    // Relay certificates also serve the relays' HTTPS on 127.0.0.1, as `meridian certs
    // deployment --region eu-west=127.0.0.1` makes them.
    let regions: Vec<Member> = ["eu-west=127.0.0.1", "us-east=127.0.0.1"]
        .iter()
        .map(|r| r.parse().expect("member"))
        .collect();
    let nodes = vec!["node-a=127.0.0.1".parse().expect("member")];
    write_deployment(dir.path(), &regions, &nodes, SystemTime::now()).expect("deployment");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("read pem");
    let pair = |stem: &str| PemPair {
        cert_pem: read(&format!("{stem}.pem")),
        key_pem: read(&format!("{stem}-key.pem")),
    };
    Deployment {
        ca_pem: read("ca.pem"),
        node: pair("dns-node-a"),
        eu_west: pair("relay-eu-west"),
        us_east: pair("relay-us-east"),
        dir,
    }
}

impl Deployment {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// What the test tells a relay to report, and how many reports it built in that state.
#[derive(Default)]
struct Script {
    state: Option<RegionState>,
    built_in_state: u32,
}

fn controlled_reports(
    claimed_region: &'static str,
    script: Arc<Mutex<Script>>,
) -> impl Fn(u64) -> RegionReport + Send + 'static {
    move |sequence| {
        let mut script = script.lock().expect("script");
        script.built_in_state += 1;
        let state = script.state.unwrap_or(RegionState::Ok);
        RegionReport {
            version: REPORT_VERSION,
            region: claimed_region.to_string(),
            sequence,
            state,
            accept_new: state == RegionState::Ok,
            saturation: 0.1,
            capacity_units: 8,
            headroom_units: 7.2,
            headroom_fraction: 0.9,
            models: BTreeMap::new(),
            rates: Rates::default(),
            client_rtt: vec![],
        }
    }
}

fn set_state(script: &Mutex<Script>, state: RegionState) {
    let mut script = script.lock().expect("script");
    script.state = Some(state);
    script.built_in_state = 0;
}

fn sender_config(d: &Deployment, identity: &PemPair, node: SocketAddr) -> HealthSenderConfig {
    let mut config = HealthSenderConfig::new(
        vec![HealthNode {
            address: node,
            server_name: "127.0.0.1".into(),
        }],
        d.ca_pem.clone(),
        identity.clone(),
    );
    config.interval = INTERVAL;
    config.validity = Duration::from_secs(5);
    config.bind = "127.0.0.1:0".parse().expect("addr");
    config
}

/// Polls `check` until it returns `Some`, for at most [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    common::eventually_some(what, WAIT, check).await
}

fn health_of(store: &SnapshotStore, region: &str) -> Health {
    let snapshot = store.load();
    let idx = snapshot.config.region_by_id(region).expect("region");
    snapshot.steering.region_status(idx).health
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_the_reports_of_the_certified_region() {
    let scratch = Scratch::new();
    let server = TestServer::start(&scratch.config()).await;
    let store = server.store.clone();
    let d = deployment();
    let (shutdown, shutdown_rx) = watch::channel(false);

    // The DNS node's side: listener, ledger, view, feed into the server's snapshot store.
    let limits = ListenerLimits::default();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let endpoint = listener_endpoint(socket, &d.ca_pem, &d.node, &limits).expect("endpoint");
    let node_addr = endpoint.local_addr().expect("addr");
    let ledger = Arc::new(Mutex::new(ReportLedger::new(Duration::from_secs(10))));
    let counters = Arc::new(ListenerCounters::default());
    let feed = Arc::new(SteeringFeed::new(
        ledger.clone(),
        HealthView::new(HYSTERESIS),
        store.clone(),
    ));
    let on_report = {
        let feed = feed.clone();
        move |_region: &str| {
            feed.refresh(Instant::now());
        }
    };
    let listener = tokio::spawn(run_listener(
        endpoint,
        ledger.clone(),
        counters.clone(),
        limits,
        |region: &str| ["eu-west", "us-east", "ap-south"].contains(&region),
        on_report,
        shutdown_rx.clone(),
    ));
    let ticker = tokio::spawn(
        feed.clone()
            .run_periodic(Duration::from_millis(250), shutdown_rx.clone()),
    );

    // eu-west's relay.
    let eu_script = Arc::new(Mutex::new(Script::default()));
    let eu_sender = tokio::spawn(run_sender(
        sender_config(&d, &d.eu_west, node_addr),
        controlled_reports("eu-west", eu_script.clone()),
        shutdown_rx.clone(),
    ));

    let client = udp_client(server.addr).await;
    let answer = || {
        let client = &client;
        async move { addresses(&ask(client, "api.example.test.", RecordType::A, Some(EU_CLIENT)).await) }
    };
    let eu: IpAddr = EU_WEST.parse().expect("ip");
    let us: IpAddr = US_EAST.parse().expect("ip");

    // Reports say ok: eu-west is up and answered.
    eventually("eu-west up", || async {
        (health_of(&store, "eu-west") == Health::Up).then_some(())
    })
    .await;
    assert_eq!(answer().await, [eu]);

    // Reports say down: answers move to us-east, but only after `down_after` of them.
    set_state(&eu_script, RegionState::Down);
    eventually("answers to leave eu-west", || async {
        (answer().await == [us]).then_some(())
    })
    .await;
    let down_reports = eu_script.lock().expect("script").built_in_state;
    assert!(
        down_reports >= HYSTERESIS.down_after,
        "moved after {down_reports} down reports"
    );
    assert_eq!(health_of(&store, "eu-west"), Health::Down);

    // A reload rebuilds the snapshot and keeps the health the channel established.
    let generation = store.load().generation;
    let reloaded = tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.reload()
    })
    .await
    .expect("reload task");
    assert!(
        matches!(reloaded, meridian::snapshot::ReloadOutcome::Loaded { .. }),
        "{reloaded:?}"
    );
    assert!(store.load().generation > generation);
    assert_eq!(health_of(&store, "eu-west"), Health::Down);
    assert_eq!(answer().await, [us]);

    // Ok again: back to eu-west, after `up_after` reports.
    set_state(&eu_script, RegionState::Ok);
    eventually("answers to return to eu-west", || async {
        (answer().await == [eu]).then_some(())
    })
    .await;
    let ok_reports = eu_script.lock().expect("script").built_in_state;
    assert!(
        ok_reports >= HYSTERESIS.up_after,
        "came back after {ok_reports} ok reports"
    );

    // us-east's certificate claiming eu-west (and saying it is down): rejected, counted, and
    // nothing moves.
    let forged_script = Arc::new(Mutex::new(Script::default()));
    set_state(&forged_script, RegionState::Down);
    let forger = tokio::spawn(run_sender(
        sender_config(&d, &d.us_east, node_addr),
        controlled_reports("eu-west", forged_script.clone()),
        shutdown_rx.clone(),
    ));
    let mismatches =
        |ledger: &Mutex<ReportLedger>| ledger.lock().expect("ledger").counters().region_mismatch;
    eventually("forged reports to be rejected", || async {
        (mismatches(&ledger) >= 5).then_some(())
    })
    .await;
    assert_eq!(health_of(&store, "eu-west"), Health::Up);
    assert_eq!(health_of(&store, "us-east"), Health::Unknown);
    assert_eq!(answer().await, [eu]);
    assert!(
        counters
            .reports_rejected
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5
    );
    assert_eq!(
        counters
            .no_region
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    let _ = shutdown.send(true);
    for task in [eu_sender, forger] {
        task.await.expect("sender task").expect("sender ran");
    }
    listener.await.expect("listener");
    ticker.await.expect("ticker");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The real path: RelayHandle → health::runtime → DNS answers.
// ---------------------------------------------------------------------------------------------

const RELAY_INTERVAL_MS: u64 = 100;
const RELAY_VALIDITY_MS: u64 = 1000;
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_DOWN_AFTER: u32 = 2;
/// Generous bound on how long a killed relay's region may keep its answers: report validity
/// plus `PROBE_DOWN_AFTER` probe rounds is about 2 s on loopback.
const DETECTION_BOUND: Duration = Duration::from_secs(15);

async fn sim_backend() -> SimBackend {
    let mut args = SimBackendArgs::new(["test-model"]);
    args.listen = "127.0.0.1:0".parse().expect("addr");
    args.ttft_ms = 5;
    args.max_tokens = 4;
    SimBackend::start(args).await.expect("sim backend starts")
}

/// A relay config for `region`, serving HTTPS with its deployment certificate and reporting to
/// `node` with the certificate of `certified`.
fn relay_config_text(
    d: &Deployment,
    region: &str,
    certified: &str,
    node: SocketAddr,
    backend: &str,
) -> String {
    let file = |name: &str| d.path(name).display().to_string();
    format!(
        r#"
[relay]
region = "{region}"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
http3 = true

[relay.tls]
cert = "{tls_cert}"
key = "{tls_key}"

[relay.health_channel]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
interval_ms = {RELAY_INTERVAL_MS}
validity_ms = {RELAY_VALIDITY_MS}

[[relay.health_channel.node]]
id = "node-a"
address = "{node}"
server_name = "127.0.0.1"

[[backend]]
id = "sim-1"
url = "{backend}"
kind = "vllm"
models = ["test-model"]
slots = 8

[health]
interval_ms = 500
deep_interval_ms = 600000
"#,
        tls_cert = file(&format!("relay-{region}.pem")),
        tls_key = file(&format!("relay-{region}-key.pem")),
        ca = file("ca.pem"),
        cert = file(&format!("relay-{certified}.pem")),
        key = file(&format!("relay-{certified}-key.pem")),
    )
}

async fn start_relay(
    d: &Deployment,
    node: SocketAddr,
    backend: &SimBackend,
) -> Result<RelayHandle, StartError> {
    let text = relay_config_text(d, "eu-west", "eu-west", node, &backend.url());
    let config = parse_relay_config(&text, &d.path("relay.toml"))
        .unwrap_or_else(|error| panic!("test relay config is invalid: {error}\n{text}"));
    RelayHandle::start(config).await
}

/// The DNS node's `[health]`, with thresholds and intervals short enough for a test.
fn health_channel(d: &Deployment, listen: SocketAddr) -> HealthChannel {
    HealthChannel {
        listen,
        ca: d.path("ca.pem"),
        cert: d.path("dns-node-a.pem"),
        key: d.path("dns-node-a-key.pem"),
        down_after: HYSTERESIS.down_after,
        up_after: HYSTERESIS.up_after,
        max_report_validity: Duration::from_secs(10),
        spill: SpillWatermarks::default(),
        refresh_interval: Duration::from_millis(100),
        probe: ProbeSettings {
            interval: PROBE_INTERVAL,
            timeout: PROBE_TIMEOUT,
            down_after: PROBE_DOWN_AFTER,
        },
        max_connections: 16,
    }
}

/// The bundled example with eu-west's relay probed at `probe`. (Built as a model value: the
/// `[[region]] probe` key is parsed by the DNS config loader.)
fn dns_store(scratch: &Scratch, probe: RelayProbe) -> Arc<SnapshotStore> {
    let path = scratch.config();
    let mut config = meridian::config::load_dns_config(&path).expect("bundled config loads");
    let eu = config.region_by_id("eu-west").expect("eu-west");
    config.regions[eu.get()].probe = Some(probe);
    let snapshot = Snapshot::build(config, 1).expect("snapshot builds");
    Arc::new(SnapshotStore::from_snapshot(snapshot, &path))
}

async fn serve_dns(
    store: Arc<SnapshotStore>,
    shutdown: watch::Receiver<bool>,
) -> (SocketAddr, JoinHandle<()>) {
    let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("addr")])
        .await
        .expect("bind DNS");
    let addr = listeners.udp_addresses().expect("udp address")[0];
    let limits = ServerLimits {
        tcp_idle_timeout: Duration::from_secs(10),
        max_tcp_connections: 64,
    };
    let task = tokio::spawn(meridian::dns::server::serve(
        listeners,
        store,
        Arc::new(Metrics::new()),
        limits,
        shutdown,
    ));
    (addr, task)
}

/// A relay, the DNS node's plane with its own probe of the relay, and the DNS server.
struct Stage {
    d: Deployment,
    _scratch: Scratch,
    _backend: SimBackend,
    relay: Option<RelayHandle>,
    store: Arc<SnapshotStore>,
    plane: HealthPlane,
    client: Client<TokioRuntimeProvider>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl Stage {
    async fn start() -> Stage {
        let d = deployment();
        let scratch = Scratch::new();
        let (shutdown, shutdown_rx) = watch::channel(false);
        // Bound first, so the relay can be configured with the node's address.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind health socket");
        let node = socket.local_addr().expect("health address");
        let backend = sim_backend().await;
        let relay = start_relay(&d, node, &backend).await.expect("relay starts");
        let store = dns_store(
            &scratch,
            RelayProbe {
                address: relay.https,
                server_name: "127.0.0.1".into(),
                ca: None,
            },
        );
        assert_eq!(relay.h3.map(|h3| h3.port()), Some(relay.https.port()));
        let plane = runtime::start_on(
            socket,
            &health_channel(&d, node),
            store.clone(),
            shutdown_rx.clone(),
        )
        .await
        .expect("health plane starts");
        assert_eq!(plane.local_addr, node);
        let (dns, server) = serve_dns(store.clone(), shutdown_rx).await;
        Stage {
            d,
            _scratch: scratch,
            _backend: backend,
            relay: Some(relay),
            store,
            plane,
            client: udp_client(dns).await,
            shutdown,
            server,
        }
    }

    fn relay(&self) -> &RelayHandle {
        self.relay.as_ref().expect("relay running")
    }

    async fn answer(&self) -> Vec<IpAddr> {
        addresses(
            &ask(
                &self.client,
                "api.example.test.",
                RecordType::A,
                Some(EU_CLIENT),
            )
            .await,
        )
    }

    fn health(&self) -> Health {
        health_of(&self.store, "eu-west")
    }

    /// Up and not spilling.
    fn steady(&self) -> bool {
        let snapshot = self.store.load();
        let idx = snapshot.config.region_by_id("eu-west").expect("region");
        let status = snapshot.steering.region_status(idx);
        status.health == Health::Up && !status.spilling
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        self.plane.encode_into(&mut text);
        text
    }

    async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.plane.stopped().await;
        self.server.await.expect("DNS server");
    }
}

/// The value of the sample whose line starts with `series` (name and labels), 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn probe_target(d: &Deployment, address: SocketAddr) -> ProbeTarget {
    let ca = std::fs::read_to_string(d.path("ca.pem")).expect("read CA");
    ProbeTarget {
        address,
        server_name: ServerName::try_from("127.0.0.1").expect("name").to_owned(),
        roots: Arc::new(roots_from_pem(&ca).expect("CA")),
    }
}

/// A request to the relay's admin listener: status and body.
async fn admin(
    relay: &RelayHandle,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, String) {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(relay.admin).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, relay.admin.to_string())
            .body(Full::new(Bytes::from(body.to_owned())))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
            status,
            String::from_utf8(body.to_vec())?,
        ))
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("admin call within the bound")
        .unwrap_or_else(|error| panic!("admin {path}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_is_unknown_then_down_by_the_probe_and_answers_move() {
    let stage = Stage::start().await;
    let eu: IpAddr = EU_WEST.parse().expect("ip");
    let us: IpAddr = US_EAST.parse().expect("ip");

    eventually("eu-west up from the relay's own reports", || async {
        (stage.health() == Health::Up).then_some(())
    })
    .await;
    // The relay's first report waits for its first backend scrape: a report sent before
    // would carry zero headroom and trip the spill-over the moment the region came up.
    assert!(stage.steady(), "eu-west came up spilling");
    assert_eq!(stage.answer().await, [eu]);

    // The report carries the client RTT the relay measured per prefix: one HTTPS request (the
    // same check the DNS node's probe makes) puts 127.0.0.0/24 in it.
    let outcome = probe_relay(&probe_target(&stage.d, stage.relay().https), WAIT).await;
    assert!(outcome.passed(), "{outcome:?}");
    eventually("the client RTT of 127.0.0.0/24 in a report", || async {
        let ledger = stage.plane.ledger.lock().expect("ledger");
        ledger
            .fresh("eu-west", Instant::now())
            .is_some_and(|report| {
                report
                    .client_rtt
                    .iter()
                    .any(|rtt| rtt.prefix == "127.0.0.0/24" && rtt.samples >= 1)
            })
            .then_some(())
    })
    .await;

    // Kill the relay: no drain, no last report; its sockets close.
    let mut stage = stage;
    let killed_at = Instant::now();
    drop(stage.relay.take());
    let silent_after = eventually("eu-west to go silent (unknown, then down)", || async {
        (stage.health() != Health::Up).then(|| killed_at.elapsed())
    })
    .await;
    let down_after = eventually("the probe to take eu-west down", || async {
        (stage.health() == Health::Down).then(|| killed_at.elapsed())
    })
    .await;
    let moved_after = eventually("answers to leave eu-west", || async {
        (stage.answer().await == [us]).then(|| killed_at.elapsed())
    })
    .await;
    println!(
        "killed relay: silent (unknown) after {silent_after:?}, down after {down_after:?}, \
         answers moved after {moved_after:?} (report validity {RELAY_VALIDITY_MS} ms, probe every \
         {PROBE_INTERVAL:?} with timeout {PROBE_TIMEOUT:?}, down after {PROBE_DOWN_AFTER} failures)"
    );
    assert!(
        moved_after < DETECTION_BOUND,
        "answers moved only after {moved_after:?}"
    );
    // Not before the report expired: silence alone is unknown, not down.
    assert!(
        down_after >= Duration::from_millis(RELAY_VALIDITY_MS) / 2,
        "down after {down_after:?}, before the last report could expire"
    );

    let text = stage.metrics();
    let eu_series =
        |name: &str, rest: &str| format!("meridian_health_{name}{{region=\"eu-west\"{rest}}}");
    assert_eq!(
        sample(&text, &eu_series("transitions_total", ",to=\"unknown\"")),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, &eu_series("transitions_total", ",to=\"down\"")),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, &eu_series("probe_unreachable", "")),
        1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            &eu_series("probes_total", ",check=\"https\",result=\"failed\"")
        ) >= f64::from(PROBE_DOWN_AFTER),
        "{text}"
    );
    assert!(
        // At least the one carrying the client RTT (the first report may be it: it waits for
        // the relay's first backend scrape).
        sample(&text, "meridian_health_reports_accepted_total") >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "meridian_health_connections_total"),
        1.0,
        "{text}"
    );
    assert!(
        sample(&text, &eu_series("report_age_seconds", ""))
            >= RELAY_VALIDITY_MS as f64 / 1000.0 / 2.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "meridian_health_reports_rejected_total{reason=\"region_mismatch\"}"
        ),
        0.0
    );

    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_reports_make_the_region_unknown_and_a_drain_is_reported() {
    let mut stage = Stage::start().await;
    let eu: IpAddr = EU_WEST.parse().expect("ip");
    eventually("eu-west up", || async { stage.steady().then_some(()) }).await;

    let (status, body) = admin(stage.relay(), Method::GET, "/admin/reports", "").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"configured":true,"paused":false}"#)
    );
    let (status, body) = admin(
        stage.relay(),
        Method::POST,
        "/admin/reports",
        r#"{"pause":1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // An unplanned drill: the relay keeps serving but stops reporting.
    let (status, body) = admin(
        stage.relay(),
        Method::POST,
        "/admin/reports",
        r#"{"paused":true}"#,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"configured":true,"paused":true}"#)
    );
    eventually("eu-west unknown once its last report expires", || async {
        (stage.health() == Health::Unknown).then_some(())
    })
    .await;
    // The node's probe still reaches the relay: silent, but not down, and still answered.
    let https_ok = r#"meridian_health_probes_total{region="eu-west",check="https",result="ok"}"#;
    eventually("a few passing probes of the silent region", || async {
        (sample(&stage.metrics(), https_ok) >= f64::from(PROBE_DOWN_AFTER) + 1.0).then_some(())
    })
    .await;
    assert_eq!(stage.health(), Health::Unknown);
    assert_eq!(stage.answer().await, [eu]);
    assert_eq!(
        sample(
            &stage.metrics(),
            "meridian_health_probe_unreachable{region=\"eu-west\"}"
        ),
        0.0
    );

    // Resumed: reports again, and up.
    let (status, _) = admin(
        stage.relay(),
        Method::POST,
        "/admin/reports",
        r#"{"paused":false}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    eventually("eu-west up again", || async {
        stage.steady().then_some(())
    })
    .await;

    // A planned stop: the relay's last report says it is draining.
    let relay = stage.relay.take().expect("relay");
    tokio::time::timeout(WAIT, relay.drain_and_stop(Duration::from_secs(5)))
        .await
        .expect("relay drains and stops");
    let last = {
        let ledger = stage.plane.ledger.lock().expect("ledger");
        ledger
            .fresh("eu-west", Instant::now())
            .map(|report| report.state)
    };
    assert_eq!(last, Some(ReportedState::Draining));
    stage.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_certified_for_another_region_is_refused() {
    let d = deployment();
    let node: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    // eu-west's relay presenting us-east's certificate on the health channel.
    let text = relay_config_text(&d, "eu-west", "us-east", node, "http://127.0.0.1:9");
    let path = d.path("relay.toml");
    let config = parse_relay_config(&text, &path).expect("the file alone is valid");

    let expected = "relay.health_channel.cert: ";
    match HealthSenderConfig::from_relay(&config) {
        Err(error @ ChannelSetupError::RegionMismatch { .. }) => {
            let ChannelSetupError::RegionMismatch {
                certified,
                configured,
                ..
            } = &error
            else {
                unreachable!()
            };
            assert_eq!(
                (certified.as_str(), configured.as_str()),
                ("us-east", "eu-west")
            );
            assert!(error.to_string().starts_with(expected), "{error}");
        }
        other => panic!("expected a region mismatch, got {other:?}"),
    }
    match RelayHandle::start(config).await {
        Err(StartError::HealthChannel(ChannelSetupError::RegionMismatch { .. })) => {}
        Err(other) => panic!("expected a region mismatch, got {other}"),
        Ok(_) => panic!("a relay certified for us-east started as eu-west"),
    }

    // `meridian check` says so too, and exits 64.
    std::fs::write(&path, &text).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["check", "--config", path.to_str().expect("utf-8 path")])
        .output()
        .expect("run meridian check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("is the certificate of region `us-east`, but relay.region is `eu-west`"),
        "{stderr}"
    );

    // With its own certificate it passes.
    let own = relay_config_text(&d, "eu-west", "eu-west", node, "http://127.0.0.1:9");
    std::fs::write(&path, &own).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["check", "--config", path.to_str().expect("utf-8 path")])
        .output()
        .expect("run meridian check");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The shipped relay configs carry a commented `[relay.health_channel]`: uncommented as the
/// comment says, beside the certificates the comment's command makes, it must load and name
/// the file's own region.
#[test]
fn shipped_relay_configs_document_a_working_health_channel() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![repo.join("deploy/relay/relay.toml")];
    for region in ["eu-west", "us-east", "ap-south"] {
        files.push(repo.join(format!("deploy/example/relay-{region}.toml")));
    }
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read shipped config");
        let lines: Vec<&str> = text.lines().collect();
        let start = lines
            .iter()
            .position(|line| *line == "# [relay.health_channel]")
            .unwrap_or_else(|| panic!("{}: no commented [relay.health_channel]", file.display()));
        let block_end = lines[start..]
            .iter()
            .position(|line| !line.starts_with('#'))
            .map_or(lines.len(), |n| start + n);
        let uncommented: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                if (start..block_end).contains(&i) {
                    line.trim_start_matches('#').trim_start().to_string()
                } else {
                    (*line).to_string()
                }
            })
            .collect();
        let uncommented = uncommented.join("\n");

        let folder = tempfile::tempdir().expect("tempdir");
        let config_path = folder.path().join("relay.toml");
        let config = parse_relay_config(&uncommented, &config_path)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        let channel = config.health_channel.as_ref().expect("uncommented channel");
        assert!(!channel.nodes.is_empty(), "{}", file.display());
        let region: Member = config.region.parse().expect("member");
        let node: Member = "node-a=127.0.0.1".parse().expect("member");
        write_deployment(
            &folder.path().join("pki"),
            &[region],
            &[node],
            SystemTime::now(),
        )
        .expect("deployment");
        let sender = HealthSenderConfig::from_relay(&config)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()))
            .expect("configured");
        assert_eq!(sender.nodes.len(), channel.nodes.len());
        assert_eq!(sender.interval, channel.interval);
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates the channel refuses, through the real plane and the real sender.
// ---------------------------------------------------------------------------------------------

/// The plane's count of refused connections for `reason`, from its Prometheus series.
fn refused(plane: &HealthPlane, reason: &str) -> f64 {
    let mut text = String::new();
    plane.metrics().encode_into(&mut text);
    sample(
        &text,
        &format!("meridian_health_connections_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// Runs the real sender with `config` until the plane has refused one more connection for
/// `reason`, then stops it.
async fn refused_once(plane: &HealthPlane, reason: &str, config: HealthSenderConfig) {
    let before = refused(plane, reason);
    let (stop, stop_rx) = watch::channel(false);
    let script = Arc::new(Mutex::new(Script::default()));
    let sender = tokio::spawn(run_sender(
        config,
        controlled_reports("eu-west", script),
        stop_rx,
    ));
    eventually(&format!("a connection refused for {reason}"), || async {
        (refused(plane, reason) > before).then_some(())
    })
    .await;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(WAIT, sender).await;
}

/// A relay identity for `region` issued by the deployment's CA, valid over `validity`.
fn issued(d: &Deployment, region: &str, validity: meridian::health::pki::Validity) -> PemPair {
    let ca = meridian::health::pki::Ca::from_pem(&PemPair {
        cert_pem: d.ca_pem.clone(),
        key_pem: std::fs::read_to_string(d.path("ca-key.pem")).expect("CA key"),
    })
    .expect("CA");
    meridian::health::pki::issue_relay_cert(&ca, region, &["127.0.0.1"], validity).expect("issue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_the_channel_must_refuse_are_refused_counted_and_the_node_keeps_serving() {
    use meridian::health::pki::Validity;

    const DAY: Duration = Duration::from_secs(86_400);
    let d = deployment();
    let other = deployment(); // another deployment: another CA
    let scratch = Scratch::new();
    let store = dns_store(
        &scratch,
        RelayProbe {
            address: "127.0.0.1:9".parse().expect("addr"),
            server_name: "127.0.0.1".into(),
            ca: None,
        },
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let plane = runtime::start_on(
        socket,
        &health_channel(&d, "127.0.0.1:0".parse().expect("addr")),
        store.clone(),
        shutdown_rx,
    )
    .await
    .expect("plane starts");
    let node = plane.local_addr;
    let now = SystemTime::now();

    // The DNS node refuses relays: another deployment's certificate, an expired one, one not
    // valid yet, and one for a region this node does not serve.
    let cases: [(&str, PemPair); 4] = [
        ("handshake_failed", other.eu_west.clone()),
        (
            "handshake_failed",
            issued(
                &d,
                "eu-west",
                Validity {
                    not_before: now - 3 * DAY,
                    not_after: now - DAY,
                },
            ),
        ),
        (
            "handshake_failed",
            issued(
                &d,
                "eu-west",
                Validity {
                    not_before: now + DAY,
                    not_after: now + 3 * DAY,
                },
            ),
        ),
        ("unknown_region", issued(&d, "mars-1", Validity::leaf(now))),
    ];
    for (reason, identity) in cases {
        refused_once(&plane, reason, sender_config(&d, &identity, node)).await;
    }

    // A client presenting no certificate at all.
    let before = refused(&plane, "handshake_failed");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(d.ca_pem.as_bytes()).expect("CA pem"))
        .expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![meridian::health::pki::HEALTH_ALPN.to_vec()];
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC config"),
    )));
    if let Ok(connecting) = endpoint.connect(node, "127.0.0.1") {
        // TLS 1.3: the client may think it is connected until the server's alert arrives.
        if let Ok(Ok(connection)) = tokio::time::timeout(WAIT, connecting).await {
            let closed = tokio::time::timeout(WAIT, connection.closed()).await;
            assert!(
                closed.is_ok(),
                "a relay without a certificate stays connected"
            );
        }
    }
    eventually("the certificate-less client is refused", || async {
        (refused(&plane, "handshake_failed") > before).then_some(())
    })
    .await;

    // The relay refuses nodes: one certified by another CA, and a name its certificate does
    // not carry. The node sees the relay abort the handshake; no report arrives.
    let mut foreign_trust = sender_config(&d, &d.eu_west, node);
    foreign_trust.ca_pem = other.ca_pem.clone();
    refused_once(&plane, "handshake_failed", foreign_trust).await;
    let mut wrong_name = sender_config(&d, &d.eu_west, node);
    wrong_name.nodes[0].server_name = "dns.elsewhere.example".into();
    refused_once(&plane, "handshake_failed", wrong_name).await;

    assert_eq!(
        plane.ledger.lock().expect("ledger").counters().accepted,
        0,
        "a refused peer delivered a report"
    );
    assert_eq!(
        plane
            .counters
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // A report body claiming another region than its certificate's is rejected as such.
    let (stop, stop_rx) = watch::channel(false);
    let lying = tokio::spawn(run_sender(
        sender_config(&d, &d.eu_west, node),
        controlled_reports("us-east", Arc::new(Mutex::new(Script::default()))),
        stop_rx,
    ));
    eventually("the mismatched report is rejected", || async {
        let counters = plane.ledger.lock().expect("ledger").counters();
        (counters.region_mismatch > 0).then_some(())
    })
    .await;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(WAIT, lying).await;

    // Through all of that the node kept serving: a well-certified relay is accepted at once.
    let (stop, stop_rx) = watch::channel(false);
    let script = Arc::new(Mutex::new(Script::default()));
    let good = tokio::spawn(run_sender(
        sender_config(&d, &d.eu_west, node),
        controlled_reports("eu-west", script),
        stop_rx,
    ));
    eventually("the good relay's report is accepted", || async {
        let ledger = plane.ledger.lock().expect("ledger");
        ledger.fresh("eu-west", Instant::now()).map(drop)
    })
    .await;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(WAIT, good).await;
    let _ = shutdown.send(true);
    tokio::time::timeout(WAIT, plane.stopped())
        .await
        .expect("plane stops");
}
