//! Capacity spill-over end to end on loopback, through real components only: a DNS node
//! (`DnsNode::start`, `[health]` with `[health.spill]` watermarks) and two relays reporting to
//! it over the QUIC health channel, each in front of simulated vLLM backends.
//!
//! eu-west has two backends of two slots each, so four streamed completions through the
//! relay the DNS answer names saturate it (headroom fraction 0, at or below `trip`): answers
//! for a European client spill to us-east. With two of the streams ended the headroom sits
//! between `trip` and `recover`, and the answer must stay on us-east; once every stream has
//! ended, eu-west comes back only after `hold_reports` reports above `recover`. Every wait is
//! a bounded poll; the measured times are printed, never asserted.

mod common;

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use common::{addresses, ask, tcp_client, udp_client};
use hickory_net::{client::Client, runtime::TokioRuntimeProvider};
use hickory_proto::rr::{RData, RecordType};
use http_body_util::{BodyExt as _, Full};
use meridian::{
    dns::node::{DnsNode, NodeOptions},
    health::pki::{Member, write_deployment},
    relay::{config::load_relay_config, server::RelayHandle},
    sim_backend::{SimBackend, SimBackendArgs},
    snapshot::SnapshotStore,
    steering::Health,
};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{sync::oneshot, task::JoinHandle};

const API_NAME: &str = "api.example.test";
const MODEL: &str = "spill-model";
/// London in the bundled demo GeoIP database: eu-west first, then us-east.
const EU_CLIENT: &str = "81.2.69.0/24";
const US_EAST: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
const EU_WEST: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);

/// eu-west's capacity: `EU_BACKENDS` × `EU_SLOTS` concurrent generations.
const EU_BACKENDS: usize = 2;
const EU_SLOTS: u32 = 2;
const SATURATING_STREAMS: usize = EU_BACKENDS * EU_SLOTS as usize;

/// `[health.spill]`. With vLLM backends of two slots (the relay scores a backend by the larger
/// of its busy share and its KV-cache use / 0.9), eu-west's headroom fraction is 1.0 idle,
/// 0.44–0.5 with two streams, 0.22–0.25 with three and 0 with four: only the fourth stream
/// trips, and two streams sit between the watermarks.
const TRIP: f64 = 0.2;
const RECOVER: f64 = 0.8;
const HOLD_REPORTS: u64 = 4;
const REPORT_INTERVAL_MS: u64 = 200;
const REPORT_VALIDITY_MS: u64 = 2000;
const SCRAPE_INTERVAL_MS: u64 = 500;
const REFRESH_INTERVAL_MS: u64 = 100;

/// Generous: each wait normally ends within a few report intervals.
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_spills_to_the_next_region_and_recovery_needs_the_hold() {
    let stage = Stage::start().await;
    let eu = IpAddr::V4(EU_WEST);
    let us = IpAddr::V4(US_EAST);

    eventually("both regions up and not spilling", || async {
        (stage.steady("eu-west") && stage.steady("us-east")).then_some(())
    })
    .await;
    assert_eq!(stage.answer().await, [eu], "a European client gets eu-west");

    // Saturate eu-west through the relay the DNS answer named (a client keeps it for the
    // TTL), one stream at a time so the relay spreads them over the backends; each holds a
    // slot once its first token is out.
    let relay = stage.answer().await;
    let mut streams = Vec::new();
    for _ in 0..SATURATING_STREAMS {
        streams.push(stage.open_stream(relay[0]).await);
    }
    let saturated_at = Instant::now();
    let running: u32 = stage.eu_backends.iter().map(|b| b.stats().running).sum();
    assert_eq!(
        running, SATURATING_STREAMS as u32,
        "every eu-west slot taken"
    );

    let spilled_after = eventually("answers to spill to us-east", || async {
        (stage.answer().await == [us]).then(|| saturated_at.elapsed())
    })
    .await;
    let status = stage.status("eu-west");
    assert!(status.spilling, "{status:?}");
    assert!(
        status.headroom.is_some_and(|h| f64::from(h) <= TRIP),
        "spilling on a report at or below trip: {status:?}"
    );
    let why = stage.why().await;
    assert!(
        why.iter()
            .any(|l| l.contains("region=eu-west") && l.contains(" spilling headroom=0.")),
        "the trace shows eu-west spilling with its headroom:\n{}",
        why.join("\n")
    );
    assert!(
        why.iter()
            .any(|l| l.contains("step=spill moved-last=eu-west")),
        "the trace shows the spill step:\n{}",
        why.join("\n")
    );

    // Half the streams end: headroom between the watermarks. Still spilling, answers stay.
    for stream in streams.drain(..SATURATING_STREAMS / 2) {
        assert!(stream.stop().await > 0, "the stream carried tokens");
    }
    let between = eventually(
        "a report with headroom between trip and recover",
        || async {
            stage
                .eu_report()
                .filter(|&(_, h)| h > TRIP && h <= RECOVER)
                .map(|(sequence, _)| sequence)
        },
    )
    .await;
    let mut seen = 0;
    let mut last = between;
    while last < between + HOLD_REPORTS + 2 {
        let (sequence, headroom) = stage.eu_report().expect("eu-west keeps reporting");
        assert!(
            headroom <= RECOVER,
            "report {sequence}: headroom {headroom} with two of four slots busy"
        );
        if sequence != last {
            seen += 1;
            last = sequence;
        }
        let status = stage.status("eu-west");
        assert!(
            status.spilling,
            "stopped spilling on report {sequence} (headroom {headroom}): {status:?}"
        );
        assert_eq!(
            stage.answer().await,
            [us],
            "eu-west came back while its headroom ({headroom}) was below recover"
        );
        assert!(
            saturated_at.elapsed() < WAIT * 2,
            "eu-west stopped reporting"
        );
        tokio::time::sleep(POLL).await;
    }
    let why = stage.why().await;
    assert!(
        why.iter()
            .any(|l| l.contains("region=eu-west") && l.contains(" spilling headroom=")),
        "the trace still shows eu-west spilling:\n{}",
        why.join("\n")
    );

    // Every stream ends: eu-west returns, but only after `hold_reports` reports above recover.
    let (before_release, _) = stage.eu_report().expect("eu-west reporting");
    let released_at = Instant::now();
    for stream in streams {
        assert!(stream.stop().await > 0, "the stream carried tokens");
    }
    let returned_after = eventually("answers to come back to eu-west", || async {
        (stage.answer().await == [eu]).then(|| released_at.elapsed())
    })
    .await;
    let (at_return, headroom) = stage.eu_report().expect("eu-west reporting");
    assert!(
        headroom > RECOVER,
        "back on a report above recover: {headroom}"
    );
    assert!(
        at_return >= before_release + HOLD_REPORTS,
        "back after report {at_return}, only {} reports after the release (hold_reports = \
         {HOLD_REPORTS})",
        at_return - before_release
    );
    assert!(!stage.status("eu-west").spilling);
    // The closed streams gave their backend slots back (through the relay).
    eventually("eu-west's backends idle", || async {
        stage
            .eu_backends
            .iter()
            .all(|b| b.stats().running == 0)
            .then_some(())
    })
    .await;

    println!(
        "spill: saturation -> answers on us-east after {spilled_after:?}; {seen} reports between \
         the watermarks kept them there; release -> answers back on eu-west after \
         {returned_after:?} ({} reports). Config: trip {TRIP}, recover {RECOVER}, hold_reports \
         {HOLD_REPORTS}, relay reports every {REPORT_INTERVAL_MS} ms (validity \
         {REPORT_VALIDITY_MS} ms), backend scrape every {SCRAPE_INTERVAL_MS} ms, node refresh \
         {REFRESH_INTERVAL_MS} ms, eu-west {EU_BACKENDS} vLLM backends x {EU_SLOTS} slots",
        at_return - before_release
    );
    stage.stop().await;
}

/// A DNS node, two relays and their backends, configured through files as in production.
struct Stage {
    dir: tempfile::TempDir,
    node: DnsNode,
    relays: Vec<RelayHandle>,
    eu_backends: Vec<SimBackend>,
    us_backend: SimBackend,
    udp: Client<TokioRuntimeProvider>,
    dns: SocketAddr,
    relay_port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl Stage {
    async fn start() -> Stage {
        meridian::relay::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let member = |text: &str| text.parse::<Member>().expect("member");
        write_deployment(
            &certs,
            &[
                member(&format!("eu-west={API_NAME},{EU_WEST}")),
                member(&format!("us-east={API_NAME},{US_EAST}")),
            ],
            &[member("node-a=localhost,127.0.0.1")],
            SystemTime::now(),
        )
        .expect("deployment certificates");

        let config = dir.path().join("dns.toml");
        std::fs::write(&config, dns_config_text()).expect("write dns.toml");
        let store = Arc::new(SnapshotStore::open(&config).expect("DNS config loads"));
        let node = DnsNode::start(
            store,
            NodeOptions {
                listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
                ..NodeOptions::default()
            },
        )
        .await
        .expect("DNS node starts");
        let health = node.addresses.health.expect("health channel");
        let dns = node.addresses.udp[0];

        let relay_port = free_port_on(&[US_EAST, EU_WEST]).await;
        let mut eu_backends = Vec::new();
        for _ in 0..EU_BACKENDS {
            eu_backends.push(sim_backend(EU_SLOTS).await);
        }
        let us_backend = sim_backend(16).await;
        let mut relays = Vec::new();
        for (region, ip, backends) in [
            ("us-east", US_EAST, vec![&us_backend]),
            ("eu-west", EU_WEST, eu_backends.iter().collect()),
        ] {
            let path = dir.path().join(format!("relay-{region}.toml"));
            let urls: Vec<String> = backends.iter().map(|b| b.url()).collect();
            std::fs::write(
                &path,
                relay_config_text(region, SocketAddr::from((ip, relay_port)), health, &urls),
            )
            .expect("write relay config");
            let config = load_relay_config(&path)
                .unwrap_or_else(|e| panic!("{}: invalid relay config: {e}", path.display()));
            relays.push(RelayHandle::start(config).await.expect("relay starts"));
        }

        let tls = tls_connector(&certs.join("ca.pem"));
        Stage {
            node,
            relays,
            eu_backends,
            us_backend,
            udp: udp_client(dns).await,
            dns,
            relay_port,
            tls,
            dir,
        }
    }

    fn status(&self, region: &str) -> meridian::steering::RegionStatus {
        let snapshot = self.node.store.load();
        let idx = snapshot.config.region_by_id(region).expect("region");
        *snapshot.steering.region_status(idx)
    }

    /// Up and not spilling (a relay's first reports, before its first scrape, carry no
    /// headroom, so a region starts out spilling).
    fn steady(&self, region: &str) -> bool {
        let status = self.status(region);
        status.health == Health::Up && !status.spilling
    }

    /// The sequence and headroom fraction of eu-west's latest fresh report, as the node has it.
    fn eu_report(&self) -> Option<(u64, f64)> {
        let plane = self.node.health.as_ref().expect("health plane");
        let ledger = plane.ledger.lock().expect("ledger");
        ledger
            .fresh("eu-west", Instant::now())
            .map(|report| (report.sequence, report.headroom_fraction))
    }

    async fn answer(&self) -> Vec<IpAddr> {
        let response = ask(
            &self.udp,
            &format!("{API_NAME}."),
            RecordType::A,
            Some(EU_CLIENT),
        )
        .await;
        addresses(&response)
    }

    /// The why-this-answer trace for the European client (over TCP: it can be long).
    async fn why(&self) -> Vec<String> {
        let client = tcp_client(self.dns).await;
        let response = ask(
            &client,
            &format!("_why.{API_NAME}."),
            RecordType::TXT,
            Some(EU_CLIENT),
        )
        .await;
        response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.to_string()),
                _ => None,
            })
            .collect()
    }

    /// A streamed chat completion through the relay at `ip` (port and name as a client knows
    /// them), held open once its first token arrived.
    async fn open_stream(&self, ip: IpAddr) -> Stream {
        let address = SocketAddr::new(ip, self.relay_port);
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(address)
                .await
                .expect("connect to the relay the DNS answer named");
            let tls = self
                .tls
                .connect(ServerName::try_from(API_NAME).expect("name"), tcp)
                .await
                .expect("TLS with the deployment CA and the API name");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .expect("HTTP/1.1 handshake");
            let driver = tokio::spawn(connection);
            let body = serde_json::json!({
                "model": MODEL,
                "stream": true,
                "max_tokens": 4000,
                "messages": [{"role": "user", "content": "fill the region"}],
            });
            let request = http::Request::post("/v1/chat/completions")
                .header(http::header::HOST, API_NAME)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            assert_eq!(response.status(), 200, "the relay admitted the stream");
            let mut body = response.into_body();
            let mut chunks = 0usize;
            while chunks == 0 {
                let frame = body
                    .frame()
                    .await
                    .expect("the stream stays open")
                    .expect("a body frame");
                chunks += usize::from(frame.is_data());
            }
            (sender, driver, body, chunks)
        };
        let (sender, driver, mut body, mut chunks) = tokio::time::timeout(WAIT, connect)
            .await
            .expect("the stream's first token within the bound");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _sender = sender;
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    frame = body.frame() => match frame {
                        Some(Ok(frame)) => chunks += usize::from(frame.is_data()),
                        _ => panic!("the stream ended before the test released it"),
                    },
                }
            }
            // Closing the connection is how a client goes away: the relay's in-flight guard
            // and the backend's slot go with it.
            drop(body);
            driver.abort();
            chunks
        });
        Stream { stop, task }
    }

    async fn stop(self) {
        for relay in self.relays {
            relay.drain_and_stop(Duration::from_secs(2)).await;
        }
        self.node.shutdown().await;
        for backend in self.eu_backends.into_iter().chain([self.us_backend]) {
            let _ = backend.shutdown().await;
        }
        drop(self.dir);
    }
}

/// One open streamed completion.
struct Stream {
    stop: oneshot::Sender<()>,
    task: JoinHandle<usize>,
}

impl Stream {
    /// Closes the stream; returns how many chunks it carried.
    async fn stop(self) -> usize {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the stream closes")
            .expect("stream task")
    }
}

async fn sim_backend(slots: u32) -> SimBackend {
    let mut args = SimBackendArgs::new([MODEL]);
    args.slots = slots;
    args.ttft_ms = 20;
    // Generations far longer than the test: a stream ends only when the test closes it.
    args.tokens_per_s = 10.0;
    SimBackend::start(args).await.expect("sim backend starts")
}

fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA pem")).expect("CA cert");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn dns_config_text() -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[geoip]
database = "{geoip}"

[[zone]]
origin = "example.test."
file = "{zone}"

[health]
listen = "127.0.0.1:0"
ca = "certs/ca.pem"
cert = "certs/dns-node-a.pem"
key = "certs/dns-node-a-key.pem"
down_after = 2
up_after = 3
max_report_validity_ms = 5000
refresh_interval_ms = {REFRESH_INTERVAL_MS}

[health.spill]
trip = {TRIP}
recover = {RECOVER}
hold_reports = {HOLD_REPORTS}

[[region]]
id = "us-east"
latitude = 39.0438
longitude = -77.4874
ipv4 = ["{US_EAST}"]
capacity = 100

[[region]]
id = "eu-west"
latitude = 53.3498
longitude = -6.2603
ipv4 = ["{EU_WEST}"]
capacity = 100

[[gslb]]
name = "{API_NAME}."
mode = "geo"
regions = ["us-east", "eu-west"]
answers = 1
ttl = 10
ecs = true
why = true

[gslb.geo]
default = ["us-east", "eu-west"]
continents = {{ EU = ["eu-west", "us-east"], NA = ["us-east", "eu-west"] }}
"#,
        geoip = repo_file("geoip/demo.mmdb").display(),
        zone = repo_file("zones/example.test.zone").display(),
    )
}

fn relay_config_text(
    region: &str,
    listen: SocketAddr,
    health: SocketAddr,
    backends: &[String],
) -> String {
    let mut text = format!(
        r#"
[relay]
region = "{region}"
listen = "{listen}"
admin_listen = "127.0.0.1:0"
http3 = false
scrape_interval_ms = {SCRAPE_INTERVAL_MS}

[relay.tls]
cert = "certs/relay-{region}.pem"
key = "certs/relay-{region}-key.pem"

[relay.health_channel]
ca = "certs/ca.pem"
cert = "certs/relay-{region}.pem"
key = "certs/relay-{region}-key.pem"
interval_ms = {REPORT_INTERVAL_MS}
validity_ms = {REPORT_VALIDITY_MS}

[[relay.health_channel.node]]
id = "node-a"
address = "{health}"
server_name = "localhost"

# A deep probe takes a batch slot: none during the test.
[health]
interval_ms = 500
deep_interval_ms = 600000
"#
    );
    for (i, url) in backends.iter().enumerate() {
        text.push_str(&format!(
            r#"
[[backend]]
id = "{region}-{i}"
url = "{url}"
kind = "vllm"
models = ["{MODEL}"]
slots = {slots}
"#,
            slots = if region == "eu-west" { EU_SLOTS } else { 16 },
        ));
    }
    text
}

/// A port free for TCP and UDP on every one of `ips`: the demo's own search, since each
/// relay listens on its own address with the same port.
async fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    meridian::demo::free_port_on_all(ips.iter().map(|&ip| IpAddr::V4(ip)))
        .await
        .expect("a port free on every relay address")
}

/// Polls `check` until it returns `Some`, for at most [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    common::eventually_some(what, WAIT, check).await
}
