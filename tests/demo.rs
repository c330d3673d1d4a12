//! `meridian demo` end to end, as the README tells a newcomer to use it: the real binary, its
//! ready file, DNS answers by ECS naming the relay's own loopback address, a streamed
//! completion through that relay with the demo CA and the API name (no port or address
//! given by anything but DNS), the region's health arriving over the health channel, a
//! drain through the admin API moving the answer and an undrain bringing it back, and a
//! clean exit on SIGTERM.

mod common;

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{addresses, exchange, query_message, udp_client};
use hickory_proto::rr::RecordType;
use http_body_util::{BodyExt as _, Full};
use meridian::demo::DemoReady;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};

const DEADLINE: Duration = Duration::from_secs(30);

struct DemoProcess {
    child: Child,
    ready: DemoReady,
    _dir: tempfile::TempDir,
}

impl DemoProcess {
    fn start() -> DemoProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready_file = dir.path().join("ready.json");
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["demo", "--ready-file"])
            .arg(&ready_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn meridian demo");
        let deadline = Instant::now() + DEADLINE;
        let ready = loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                break serde_json::from_str::<DemoReady>(&text).expect("ready file is JSON");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("meridian demo exited before it was ready: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "demo not ready within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        DemoProcess {
            child,
            ready,
            _dir: dir,
        }
    }

    fn region(&self, id: &str) -> &meridian::demo::DemoRegion {
        self.ready
            .regions
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no region {id} in the ready file"))
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn answer(dns: SocketAddr, subnet: &str) -> Vec<IpAddr> {
    let client = udp_client(dns).await;
    let response = exchange(
        &client,
        query_message("api.example.test.", RecordType::A, Some(subnet)),
    )
    .await;
    addresses(&response)
}

/// Polls `check` until it holds, for at most [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    common::eventually_true(what, DEADLINE, check).await
}

/// A streamed chat completion to `https://api.example.test:PORT` at `address`, trusting only
/// the demo CA; returns the SSE body.
async fn stream_completion(ca_file: &std::path::Path, address: SocketAddr, model: &str) -> String {
    meridian::relay::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("CA file") {
        roots.add(cert.expect("CA pem")).expect("CA cert");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the relay the DNS answer named");
    let tls = connector
        .connect(
            ServerName::try_from("api.example.test").expect("server name"),
            tcp,
        )
        .await
        .expect("TLS handshake with the demo CA and the API name");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
    let driver = tokio::spawn(connection);
    let body = serde_json::json!({
        "model": model,
        "stream": true,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let request = http::Request::post("/v1/chat/completions")
        .header(http::header::HOST, "api.example.test")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    let bytes = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    driver.abort();
    String::from_utf8(bytes.to_vec()).expect("UTF-8 body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_steers_streams_drains_and_stops() {
    let mut demo = DemoProcess::start();
    let ready = demo.ready.clone();
    let eu = demo.region("eu-west").https;
    let us = demo.region("us-east").https;
    assert_eq!(eu.port(), us.port(), "every relay listens on the same port");
    assert_ne!(eu.ip(), us.ip(), "each relay on its own loopback address");

    // Geo steering by ECS: London → eu-west's relay address, Ashburn → us-east's.
    assert_eq!(answer(ready.dns_udp, "81.2.69.0/24").await, vec![eu.ip()]);
    assert_eq!(answer(ready.dns_udp, "3.80.0.0/24").await, vec![us.ip()]);

    // The DNS answer alone names the relay: connect to it on the shared port.
    let relay = SocketAddr::new(answer(ready.dns_udp, "81.2.69.0/24").await[0], eu.port());
    let body = stream_completion(&ready.ca_file, relay, &ready.model).await;
    assert!(body.contains("data: "), "an SSE stream: {body}");
    assert!(
        body.trim_end().ends_with("data: [DONE]"),
        "a complete stream: {body}"
    );

    // Reports arrive over the health channel: every region becomes "up".
    let token = std::fs::read_to_string(&ready.admin_token_file).expect("token file");
    let admin =
        meridian::admin::client::AdminClient::new(&ready.admin_url, Some(token.trim().to_string()))
            .expect("admin client");
    eventually("every region reports up", || async {
        admin.status().await.is_ok_and(|status| {
            status.regions.len() == 3 && status.regions.iter().all(|r| r.health == "up")
        })
    })
    .await;

    // Drain eu-west: London moves to the next region of its geo list (us-east), and back.
    admin
        .set_admin("eu-west", meridian::admin::model::RegionAction::Drain)
        .await
        .expect("drain");
    eventually("London leaves the drained region", || async {
        answer(ready.dns_udp, "81.2.69.0/24").await == vec![us.ip()]
    })
    .await;
    admin
        .set_admin("eu-west", meridian::admin::model::RegionAction::Undrain)
        .await
        .expect("undrain");
    eventually("London comes back", || async {
        answer(ready.dns_udp, "81.2.69.0/24").await == vec![eu.ip()]
    })
    .await;

    // The README's drill, through the real binary and the admin API: a planned drain of
    // eu-west with a TTL ramp, sampled by ECS for three EU/AF prefixes, with eu-west's relay
    // traffic. Its report must say what the test can check for itself: every sampled prefix
    // left eu-west for us-east, then came back, and the node is restored.
    let out = tempfile::tempdir().expect("report dir");
    let eu_admin = &demo.region("eu-west").admin_url;
    let drill = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["drill", "--admin", &ready.admin_url, "--token-file"])
        .arg(&ready.admin_token_file)
        .args([
            "--dns",
            &ready.dns_udp.to_string(),
            "--name",
            "api.example.test",
        ])
        .args(["--region", "eu-west"])
        .args([
            "--prefix",
            "81.2.69.0/24",
            "--prefix",
            "81.2.80.0/24",
            "--prefix",
            "41.0.0.0/24",
        ])
        .args(["--relay-metrics", &format!("eu-west={eu_admin}/metrics")])
        .args([
            "--ttl-ramp",
            "1",
            "--max-wait-s",
            "20",
            "--traffic-quiet-ms",
            "300",
        ])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run meridian drill");
    let summary = String::from_utf8_lossy(&drill.stdout);
    assert!(
        drill.status.success(),
        "drill failed ({}):\n{summary}\n{}",
        drill.status,
        String::from_utf8_lossy(&drill.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("drill-report.json")).expect("JSON report"),
    )
    .expect("report is JSON");
    assert!(
        out.path().join("drill-report.md").exists(),
        "Markdown report"
    );
    assert_eq!(report["outcome"]["status"], "converged", "{report:#}");
    let shift = &report["shift"];
    let (p90, all) = (
        shift["p90_after_ms"].as_u64().expect("p90 figure"),
        shift["all_after_ms"].as_u64().expect("all figure"),
    );
    assert!(p90 <= all && all < 20_000, "p90 {p90} ms, all {all} ms");
    let per_prefix = shift["per_prefix"].as_array().expect("per-prefix figures");
    assert_eq!(per_prefix.len(), 3, "{shift:#}");
    for prefix in per_prefix {
        assert_eq!(prefix["before"], "eu-west", "{prefix}");
        assert_eq!(prefix["after"], "us-east", "{prefix}");
    }
    assert_eq!(report["restoration"]["complete"], true, "{report:#}");
    // Restored: the test's own query and the node's status agree with the report.
    assert_eq!(answer(ready.dns_udp, "81.2.69.0/24").await, vec![eu.ip()]);
    let status = admin.status().await.expect("status");
    assert_eq!(status.max_ttl, None);
    assert!(status.regions.iter().all(|r| r.serving), "{status:?}");

    // SIGTERM: everything stops and the process exits cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &demo.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + DEADLINE;
    let exit = loop {
        if let Some(status) = demo.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "demo did not stop within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "demo exit status {exit}");
    let mut printed = String::new();
    if let Some(mut stdout) = demo.child.stdout.take() {
        let _ = stdout.read_to_string(&mut printed);
    }
    assert!(
        printed.contains("dig @"),
        "the demo prints what to try:\n{printed}"
    );
    assert!(
        printed.contains("meridian ctl"),
        "and how to drain:\n{printed}"
    );
}
