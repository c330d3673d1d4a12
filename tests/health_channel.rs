//! The health channel end to end on loopback: a relay-side sender pushes reports over QUIC
//! with mutual TLS to a DNS node's listener, whose ledger and health view steer the answers of
//! the in-process DNS server on the bundled example.

mod common;

use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use common::{Scratch, TestServer, addresses, ask, udp_client};
use hickory_proto::rr::RecordType;
use meridian::{
    health::{
        HealthNode, HealthSenderConfig, HealthView, Hysteresis, ListenerCounters, ListenerLimits,
        ReportLedger, SteeringFeed, listener_endpoint,
        pki::{Member, PemPair, write_deployment},
        run_listener, run_sender,
    },
    relay::{
        report::{REPORT_VERSION, RegionReport, RegionState},
        stats::Rates,
    },
    snapshot::SnapshotStore,
    steering::Health,
};
use tokio::sync::watch;

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
    _dir: tempfile::TempDir,
    ca_pem: String,
    node: PemPair,
    eu_west: PemPair,
    us_east: PemPair,
}

fn deployment() -> Deployment {
    let dir = tempfile::tempdir().expect("tempdir");
    let regions: Vec<Member> = ["eu-west", "us-east"]
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
        _dir: dir,
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
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
