//! The unplanned drill in kill mode, through real processes: `meridian dns` (health channel,
//! admin API with a private token file, operator state, its own probe of each region's relay),
//! two `meridian relay` processes in front of simulated backends, and `meridian drill
//! --kill-pid` killing the eu-west relay.
//!
//! As in production, each relay listens on the address its region answers with (127.0.1.x),
//! on one port, with a certificate for the API name; the node probes that address when a
//! region goes silent. While the drill runs, the test watches on its own (relay process, the
//! node's status, DNS answers) and afterwards checks the report against what it saw.

mod common;

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use common::{addresses, ask, udp_client};
use hickory_net::{client::Client, runtime::TokioRuntimeProvider};
use hickory_proto::rr::RecordType;
use meridian::{
    admin::client::AdminClient,
    health::pki::{Member, write_deployment},
    sim_backend::{SimBackend, SimBackendArgs},
};
use serde_json::Value;

const API_NAME: &str = "api.example.test";
const MODEL: &str = "drill-model";
/// Both in Great Britain in the bundled demo GeoIP database: eu-west first, then us-east.
const PREFIXES: [&str; 2] = ["81.2.69.0/24", "81.2.80.0/24"];
const US_EAST: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
const EU_WEST: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);

/// The detection configuration under test (printed with the figures).
const REPORT_INTERVAL_MS: u64 = 250;
const REPORT_VALIDITY_MS: u64 = 1000;
const MAX_REPORT_VALIDITY_MS: u64 = 10_000;
const REFRESH_INTERVAL_MS: u64 = 100;
const DOWN_AFTER: u32 = 2;
const UP_AFTER: u32 = 3;
const PROBE_INTERVAL_MS: u64 = 500;
const PROBE_TIMEOUT_MS: u64 = 500;
const PROBE_DOWN_AFTER: u32 = 2;
const DRILL_MAX_WAIT_S: u64 = 30;
/// The drill's default sampling interval (`--sample-interval-ms`).
const SAMPLE_INTERVAL_MS: u64 = 100;

/// Expected detection: the last report expires (validity), then `PROBE_DOWN_AFTER` failed probe
/// rounds. A generous bound: on loopback it is about 2 s.
const DETECTION_BOUND: Duration = Duration::from_secs(15);
/// How far the test's own observation of an instant may be from the drill's: both sample
/// (the drill every 100 ms, the test every ~50 ms) on a loaded machine.
const AGREEMENT: Duration = Duration::from_millis(2500);
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// A `meridian` child process, killed and reaped when dropped.
struct Process {
    child: Child,
    ready: Value,
}

impl Process {
    /// Starts `meridian ARGS --ready-file …` and waits (bounded) for its ready file.
    fn start(dir: &Path, name: &str, args: &[&str]) -> Process {
        let ready_file = dir.join(format!("{name}.ready.json"));
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(args)
            .arg("--ready-file")
            .arg(&ready_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn meridian {name}: {e}"));
        let deadline = Instant::now() + WAIT;
        let ready = loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                break serde_json::from_str::<Value>(&text).expect("ready file is JSON");
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join(format!("{name}.log")));
                panic!("meridian {name} exited before it was ready: {status}\n{log:?}");
            }
            assert!(
                Instant::now() < deadline,
                "meridian {name} not ready in {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Process { child, ready }
    }

    fn address(&self, key: &str) -> SocketAddr {
        let value = if self.ready[key].is_array() {
            &self.ready[key][0]
        } else {
            &self.ready[key]
        };
        value
            .as_str()
            .unwrap_or_else(|| panic!("{key} in the ready file: {}", self.ready))
            .parse()
            .expect("socket address")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_eu_west_relay_is_detected_and_measured_by_the_drill() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path();
    let member = |text: &str| text.parse::<Member>().expect("member");
    write_deployment(
        &dir.join("certs"),
        &[
            member(&format!("eu-west={API_NAME},{EU_WEST}")),
            member(&format!("us-east={API_NAME},{US_EAST}")),
        ],
        &[member("node-a=localhost,127.0.0.1")],
        SystemTime::now(),
    )
    .expect("deployment certificates");
    let token_file = dir.join("admin.token");
    write_private(&token_file, "e2e-drill-token-0123456789abcdef\n");
    let relay_port = free_port_on(&[US_EAST, EU_WEST]).await;
    std::fs::write(dir.join("dns.toml"), dns_config_text(relay_port)).expect("write dns.toml");

    let dns = Process::start(
        dir,
        "dns",
        &[
            "dns",
            "--config",
            &dir.join("dns.toml").display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let dns_udp = dns.address("udp");
    let admin_url = format!("http://{}", dns.address("admin"));
    let health = dns.address("health");

    let backends = [sim_backend().await, sim_backend().await];
    let mut relays = Vec::new();
    for ((region, ip), backend) in [("us-east", US_EAST), ("eu-west", EU_WEST)]
        .into_iter()
        .zip(&backends)
    {
        let path = dir.join(format!("relay-{region}.toml"));
        let listen = SocketAddr::from((ip, relay_port));
        std::fs::write(
            &path,
            relay_config_text(region, listen, health, &backend.url()),
        )
        .expect("write relay config");
        let relay = Process::start(
            dir,
            &format!("relay-{region}"),
            &["relay", "--config", &path.display().to_string()],
        );
        assert_eq!(relay.address("https"), listen);
        relays.push(relay);
    }
    let mut eu_relay = relays.pop().expect("eu-west relay");
    let eu_pid = eu_relay.child.id();

    let admin = AdminClient::new(&admin_url, None).expect("admin client");
    let deadline = Instant::now() + WAIT;
    loop {
        let status = admin.status().await.expect("GET /v1/status");
        let steady = |id: &str| {
            status
                .regions
                .iter()
                .any(|r| r.id == id && r.health == "up" && r.spilling != Some(true) && r.serving)
        };
        if steady("eu-west") && steady("us-east") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "regions not up and steady within {WAIT:?}: {status:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let client = udp_client(dns_udp).await;
    for prefix in PREFIXES {
        assert_eq!(
            answer(&client, prefix).await,
            [IpAddr::V4(EU_WEST)],
            "{prefix} starts on eu-west"
        );
    }

    let out = dir.join("drill-report");
    let drill_log = |name: &str| std::fs::File::create(dir.join(name)).expect("drill log");
    let mut drill = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("drill")
        .args(["--admin", &admin_url])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--dns", &dns_udp.to_string()])
        .args(["--name", API_NAME, "--region", "eu-west"])
        .args(["--prefix", PREFIXES[0], "--prefix", PREFIXES[1]])
        .args(["--kill-pid", &eu_pid.to_string()])
        .args(["--max-wait-s", &DRILL_MAX_WAIT_S.to_string()])
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(drill_log("drill.out"))
        .stderr(drill_log("drill.err"))
        .spawn()
        .expect("spawn meridian drill");

    // The test's own view while the drill runs, from the moment it sees the relay gone.
    let mut seen = Seen::default();
    let deadline = Instant::now() + WAIT + Duration::from_secs(DRILL_MAX_WAIT_S);
    let exit_status = loop {
        if let Some(status) = drill.try_wait().expect("try_wait drill") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = drill.kill();
            let _ = drill.wait();
            panic!("the drill did not finish within its own bound");
        }
        seen.observe(&mut eu_relay, &admin, &client).await;
        tokio::time::sleep(POLL).await;
    };
    let stdout = std::fs::read_to_string(dir.join("drill.out")).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.join("drill.err")).unwrap_or_default();
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("drill-report.json")).expect("drill-report.json"),
    )
    .expect("the report is JSON");
    assert!(
        out.join("drill-report.md").is_file(),
        "the Markdown report too"
    );

    // A killed relay cannot be restarted by the drill: it converges but exits 3 (restoration
    // incomplete) so that an operator looks.
    assert_eq!(
        exit_status.code(),
        Some(i32::from(meridian::drill::EXIT_NOT_RESTORED)),
        "drill exit status\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(report["outcome"]["status"], "converged", "{report:#}");
    assert_eq!(report["kind"], "unplanned");
    assert_eq!(report["config"]["disruption"], format!("kill-pid={eu_pid}"));
    assert_eq!(report["restoration"]["complete"], false);
    let actions = report["restoration"]["actions"]
        .as_array()
        .expect("actions");
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(
        actions[0]["action"],
        format!("restart relay process {eu_pid}")
    );
    assert_eq!(
        report["baseline"]["affected_prefixes"],
        serde_json::json!(PREFIXES),
        "both prefixes were on eu-west before"
    );

    // Detection: health left `up` and reached `down`.
    let detection = &report["detection"][0];
    assert_eq!(detection["region"], "eu-west", "{report:#}");
    assert_eq!(detection["health_before"], "up");
    let changed = millis(&detection["changed_after_ms"]).expect("health changed");
    let changed_to = detection["changed_to"].as_str().expect("changed_to");
    assert!(
        ["unknown", "down"].contains(&changed_to),
        "changed to {changed_to}"
    );
    let down = millis(&detection["down_after_ms"]).expect("health reached down");
    assert!(changed <= down, "changed {changed:?} after down {down:?}");
    // Silence alone is `unknown`: not down before the last report could expire.
    assert!(
        down >= Duration::from_millis(REPORT_VALIDITY_MS / 2),
        "down after {down:?}, before the last report could expire"
    );

    // Shift: every sampled prefix left eu-west, for us-east, and not before the node said
    // down (answers and status are sampled together, one interval apart at most).
    let shift = &report["shift"];
    assert_eq!(shift["converged"], true, "{shift:#}");
    let p90 = millis(&shift["p90_after_ms"]).expect("p90");
    let all = millis(&shift["all_after_ms"]).expect("all");
    assert!(p90 <= all);
    assert!(
        all + Duration::from_millis(SAMPLE_INTERVAL_MS) >= down,
        "answers moved ({all:?}) before the node took eu-west down ({down:?})"
    );
    assert!(all < DETECTION_BOUND, "answers moved only after {all:?}");
    for prefix in shift["per_prefix"].as_array().expect("per_prefix") {
        assert_eq!(prefix["before"], "eu-west", "{prefix}");
        assert_eq!(prefix["after"], "us-east", "{prefix}");
    }

    // Afterwards: the relay process is gone (killed), the node says down, and no sampled
    // client is answered with eu-west.
    let exit = eu_relay.child.try_wait().expect("try_wait");
    let exit = exit.expect("the eu-west relay process is gone");
    {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(exit.signal(), Some(9), "killed with SIGKILL: {exit:?}");
    }
    let status = admin.status().await.expect("status");
    let eu = status
        .regions
        .iter()
        .find(|r| r.id == "eu-west")
        .expect("eu-west in status");
    assert_eq!(eu.health, "down", "{eu:?}");
    assert!(!eu.serving, "{eu:?}");
    for prefix in PREFIXES {
        assert_eq!(
            answer(&client, prefix).await,
            [IpAddr::V4(US_EAST)],
            "{prefix} on us-east"
        );
    }

    // The drill's figures agree with what the test saw on its own.
    let killed = seen.killed.expect("the test saw the relay die");
    let seen_down = seen.down.expect("the test saw eu-west down") - killed;
    let seen_moved = seen.moved.expect("the test saw the answers move") - killed;
    for (what, drill, test) in [("down", down, seen_down), ("shift", all, seen_moved)] {
        assert!(
            drill.abs_diff(test) <= AGREEMENT,
            "{what}: the drill measured {drill:?}, the test saw {test:?}"
        );
    }

    println!(
        "unplanned drill (kill): detection {changed:?} (eu-west -> {changed_to}), down after \
         {down:?}, answers shifted p90 {p90:?} / all {all:?}; the test saw down after \
         {seen_down:?}, answers moved after {seen_moved:?}. Config: relay reports every \
         {REPORT_INTERVAL_MS} ms valid {REPORT_VALIDITY_MS} ms (node max \
         {MAX_REPORT_VALIDITY_MS} ms, refresh {REFRESH_INTERVAL_MS} ms), node probe every \
         {PROBE_INTERVAL_MS} ms timeout {PROBE_TIMEOUT_MS} ms down after {PROBE_DOWN_AFTER} \
         failures, hysteresis down_after {DOWN_AFTER} / up_after {UP_AFTER}, drill sample every \
         {SAMPLE_INTERVAL_MS} ms"
    );
    println!("{stdout}");

    drop(relays);
    drop(dns);
    for backend in backends {
        let _ = backend.shutdown().await;
    }
}

/// What the test itself saw, as instants of its own clock.
#[derive(Default)]
struct Seen {
    killed: Option<Instant>,
    down: Option<Instant>,
    /// Since when every sampled prefix has been off eu-west (reset if one comes back).
    moved: Option<Instant>,
}

impl Seen {
    async fn observe(
        &mut self,
        relay: &mut Process,
        admin: &AdminClient,
        client: &Client<TokioRuntimeProvider>,
    ) {
        let now = Instant::now();
        if self.killed.is_none() {
            if let Ok(Some(_)) = relay.child.try_wait() {
                self.killed = Some(now);
            }
            return;
        }
        if self.down.is_none()
            && let Ok(status) = admin.status().await
            && status
                .regions
                .iter()
                .any(|r| r.id == "eu-west" && r.health == "down")
        {
            self.down = Some(now);
        }
        let mut off = true;
        for prefix in PREFIXES {
            off &= !answer(client, prefix).await.contains(&IpAddr::V4(EU_WEST));
        }
        match (off, self.moved) {
            (true, None) => self.moved = Some(now),
            (false, Some(_)) => self.moved = None,
            _ => {}
        }
    }
}

fn millis(value: &Value) -> Option<Duration> {
    value.as_u64().map(Duration::from_millis)
}

async fn answer(client: &Client<TokioRuntimeProvider>, prefix: &str) -> Vec<IpAddr> {
    addresses(&ask(client, &format!("{API_NAME}."), RecordType::A, Some(prefix)).await)
}

async fn sim_backend() -> SimBackend {
    let mut args = SimBackendArgs::new([MODEL]);
    args.ttft_ms = 5;
    args.max_tokens = 4;
    SimBackend::start(args).await.expect("sim backend starts")
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create token file");
    file.write_all(text.as_bytes()).expect("write token");
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn dns_config_text(relay_port: u16) -> String {
    let region = |id: &str, lat: f64, lon: f64, ip: Ipv4Addr| {
        format!(
            r#"
[[region]]
id = "{id}"
latitude = {lat}
longitude = {lon}
ipv4 = ["{ip}"]
capacity = 100
probe = {{ address = "{ip}:{relay_port}", server_name = "{API_NAME}" }}
"#
        )
    };
    format!(
        r#"
operator_state = "operator-state.json"

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
down_after = {DOWN_AFTER}
up_after = {UP_AFTER}
max_report_validity_ms = {MAX_REPORT_VALIDITY_MS}
refresh_interval_ms = {REFRESH_INTERVAL_MS}

[health.probe]
interval_ms = {PROBE_INTERVAL_MS}
timeout_ms = {PROBE_TIMEOUT_MS}
down_after = {PROBE_DOWN_AFTER}

[admin]
listen = "127.0.0.1:0"
token_file = "admin.token"
{us}{eu}
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
        us = region("us-east", 39.0438, -77.4874, US_EAST),
        eu = region("eu-west", 53.3498, -6.2603, EU_WEST),
    )
}

fn relay_config_text(
    region: &str,
    listen: SocketAddr,
    health: SocketAddr,
    backend: &str,
) -> String {
    format!(
        r#"
[relay]
region = "{region}"
listen = "{listen}"
admin_listen = "127.0.0.1:0"
http3 = true

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

[health]
interval_ms = 500
deep_interval_ms = 600000

[[backend]]
id = "{region}-sim"
url = "{backend}"
kind = "vllm"
models = ["{MODEL}"]
slots = 4
"#
    )
}

/// A port free for TCP and UDP on every one of `ips`: the demo's own search, since each
/// relay listens on its own address with the same port.
async fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    meridian::demo::free_port_on_all(ips.iter().map(|&ip| IpAddr::V4(ip)))
        .await
        .expect("a port free on every relay address")
}
