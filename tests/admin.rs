//! The DNS node's admin API through the real path: the DNS server and the admin listener on
//! 127.0.0.1:0 in this process, driven over HTTP (the Rust client, raw requests, and the
//! `meridian ctl` binary), with the effect checked by real DNS queries and on disk.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use common::*;
use hickory_proto::rr::RecordType;
use meridian::{
    admin::{
        self, AdminContext, AdminToken, RecentDecisions,
        client::{AdminClient, ClientError},
        model::{RegionAction, Status},
    },
    dns::handler::{Transport, respond},
    health::{ReportLedger, frame::ReportFrame},
    metrics::MetricsSource,
    operator_state::{AdminState, OperatorState},
    snapshot::SnapshotStore,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

const TOKEN: &str = "0f4c1e9a7d2b8c3e5f6a0b1c2d3e4f5a";
const GB_CLIENT: &str = "81.2.69.0/24";
const EU_WEST_V4: &str = "198.51.100.10";
const US_EAST_V4: &str = "192.0.2.10";

/// A DNS node with its admin API, both on loopback port 0, over a scratch copy of the bundled
/// example (which names `operator-state.json`).
struct Node {
    dns: TestServer,
    admin: SocketAddr,
    recent: Arc<RecentDecisions>,
    token_file: PathBuf,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Node {
    async fn start(scratch: &Scratch) -> Node {
        Node::start_with(scratch, None).await
    }

    async fn start_with(scratch: &Scratch, ledger: Option<Arc<Mutex<ReportLedger>>>) -> Node {
        let token_file = scratch.path("admin.token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dns = TestServer::start(&scratch.config()).await;
        let recent = Arc::new(RecentDecisions::default());
        let ctx = Arc::new(AdminContext {
            store: dns.store.clone(),
            token: AdminToken::from_file(&token_file).expect("token file"),
            metrics: vec![dns.metrics.clone() as Arc<dyn MetricsSource>],
            ledger,
            recent: recent.clone(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let (shutdown, watcher) = watch::channel(false);
        let task = tokio::spawn(admin::serve(listener, ctx, watcher));
        Node {
            dns,
            admin,
            recent,
            token_file,
            shutdown,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.admin)
    }

    fn client(&self) -> AdminClient {
        AdminClient::new(&self.url(), Some(TOKEN.to_owned())).unwrap()
    }

    fn anonymous(&self) -> AdminClient {
        AdminClient::new(&self.url(), None).unwrap()
    }

    async fn answer(&self, subnet: &str) -> (Vec<IpAddr>, u32) {
        let client = udp_client(self.dns.addr).await;
        let response = ask(&client, "api.example.test.", RecordType::A, Some(subnet)).await;
        let ttl = response.answers.first().map_or(0, |r| r.ttl);
        (addresses(&response), ttl)
    }

    async fn stop(self) {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("admin API stops within 10 s")
            .unwrap();
        self.dns.stop().await;
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// One HTTP/1.1 exchange on a fresh connection: (status, head, body).
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("answered within 5 s")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

fn error_code(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).expect(body);
    value["error"]["code"].as_str().expect(body).to_owned()
}

fn operator_file(scratch: &Scratch) -> OperatorState {
    OperatorState::load(&scratch.path("zones/operator-state.json")).unwrap()
}

#[tokio::test]
async fn a_drain_moves_answers_is_persisted_and_survives_a_restart() {
    let scratch = Scratch::new();
    let node = Node::start(&scratch).await;
    assert_eq!(node.answer(GB_CLIENT).await.0, vec![ip(EU_WEST_V4)]);

    let region = node
        .client()
        .set_admin("eu-west", RegionAction::Drain)
        .await
        .unwrap();
    assert_eq!(
        (region.id.as_str(), region.admin),
        ("eu-west", AdminState::Drain)
    );
    assert!(!region.serving);
    // Published before the call returned: the very next query moves.
    assert_eq!(node.answer(GB_CLIENT).await.0, vec![ip(US_EAST_V4)]);
    assert_eq!(
        operator_file(&scratch).region("eu-west").admin,
        AdminState::Drain
    );
    let status = node.anonymous().status().await.unwrap();
    let eu = status.regions.iter().find(|r| r.id == "eu-west").unwrap();
    assert_eq!((eu.admin, eu.serving), (AdminState::Drain, false));

    // A restart: a new store from the same config, and a new server on it.
    let reopened = SnapshotStore::open(&scratch.config()).unwrap();
    assert_eq!(
        reopened.load().operator.region("eu-west").admin,
        AdminState::Drain
    );
    let restarted = TestServer::start(&scratch.config()).await;
    let client = udp_client(restarted.addr).await;
    let response = ask(&client, "api.example.test.", RecordType::A, Some(GB_CLIENT)).await;
    assert_eq!(addresses(&response), vec![ip(US_EAST_V4)]);
    restarted.stop().await;

    // Undrain is back to automatic: answers return and the file no longer lists the region.
    let region = node
        .client()
        .set_admin("eu-west", RegionAction::Undrain)
        .await
        .unwrap();
    assert_eq!((region.admin, region.serving), (AdminState::Auto, true));
    assert_eq!(node.answer(GB_CLIENT).await.0, vec![ip(EU_WEST_V4)]);
    assert!(!operator_file(&scratch).regions.contains_key("eu-west"));

    // Force-down and weight are persisted the same way.
    node.client()
        .set_admin("ap-south", RegionAction::ForceDown)
        .await
        .unwrap();
    let region = node.client().set_weight("ap-south", 250).await.unwrap();
    assert_eq!((region.admin, region.weight), (AdminState::ForceDown, 250));
    let saved = operator_file(&scratch).region("ap-south");
    assert_eq!(
        (saved.admin, saved.weight_percent),
        (AdminState::ForceDown, 250)
    );
    node.stop().await;
}

#[tokio::test]
async fn changes_without_the_right_token_are_refused_and_change_nothing() {
    let scratch = Scratch::new();
    let node = Node::start(&scratch).await;

    let (status, head, body) = raw(node.admin, "POST", "/v1/regions/eu-west/drain", &[], "").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        head.to_lowercase().contains("www-authenticate: bearer"),
        "{head}"
    );
    assert_eq!(error_code(&body), "unauthorized");

    let wrong = AdminClient::new(&node.url(), Some(format!("{TOKEN}x"))).unwrap();
    for result in [
        wrong.set_admin("eu-west", RegionAction::Drain).await,
        node.anonymous()
            .set_admin("eu-west", RegionAction::ForceDown)
            .await,
        wrong.set_weight("eu-west", 0).await,
    ] {
        match result {
            Err(ClientError::Server { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (401, "unauthorized"))
            }
            other => panic!("{other:?}"),
        }
    }
    let (status, _, _) = raw(
        node.admin,
        "DELETE",
        "/v1/max-ttl",
        &[("Authorization", "Basic Zm9vOmJhcg==")],
        "",
    )
    .await;
    assert_eq!(status, 401);

    // Nothing changed: not served differently, not written.
    assert_eq!(node.answer(GB_CLIENT).await.0, vec![ip(EU_WEST_V4)]);
    assert!(!scratch.path("zones/operator-state.json").exists());
    let status = node.anonymous().status().await.unwrap();
    assert!(
        status
            .regions
            .iter()
            .all(|r| r.admin == AdminState::Auto && r.serving)
    );
    node.stop().await;
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_message() {
    let scratch = Scratch::new();
    let node = Node::start(&scratch).await;
    let client = node.client();

    match client.set_admin("mars-1", RegionAction::Drain).await {
        Err(ClientError::Server {
            status: 404,
            code,
            message,
        }) => {
            assert_eq!(code, "unknown_region");
            assert!(message.contains("mars-1"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match client.set_weight("eu-west", 5000).await {
        Err(ClientError::Server {
            status: 400,
            code,
            message,
        }) => {
            assert_eq!(code, "invalid_weight");
            assert!(
                message.contains("5000") && message.contains("1000"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let auth = [("Authorization", &*format!("Bearer {TOKEN}"))];
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "PUT",
            "/v1/max-ttl",
            r#"{"max_ttl":0}"#,
            400,
            "invalid_max_ttl",
        ),
        (
            "PUT",
            "/v1/max-ttl",
            r#"{"max_ttl":null}"#,
            400,
            "invalid_max_ttl",
        ),
        (
            "PUT",
            "/v1/regions/eu-west/weight",
            r#"{"weight":-1}"#,
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/v1/regions/eu-west/weight",
            r#"{"wieght":5}"#,
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/v1/regions/eu-west/weight",
            "not json",
            400,
            "invalid_body",
        ),
        (
            "GET",
            "/v1/regions/eu-west/drain",
            "",
            405,
            "method_not_allowed",
        ),
        ("POST", "/v1/status", "", 405, "method_not_allowed"),
        ("GET", "/v2/everything", "", 404, "not_found"),
    ];
    for &(method, path, body, status, code) in cases {
        let (got, _, text) = raw(node.admin, method, path, &auth, body).await;
        assert_eq!(
            (got, error_code(&text).as_str()),
            (status, code),
            "{method} {path} {body}"
        );
    }
    let huge = format!(r#"{{"weight":1{}}}"#, " ".repeat(8 * 1024));
    let (got, _, text) = raw(
        node.admin,
        "PUT",
        "/v1/regions/eu-west/weight",
        &auth,
        &huge,
    )
    .await;
    assert_eq!((got, error_code(&text).as_str()), (413, "body_too_large"));

    // None of it was applied.
    assert!(!scratch.path("zones/operator-state.json").exists());
    node.stop().await;
}

#[tokio::test]
async fn a_ttl_cap_lowers_answer_ttls_until_cleared() {
    let scratch = Scratch::new();
    let node = Node::start(&scratch).await;
    assert_eq!(node.answer(GB_CLIENT).await.1, 30);

    node.client().set_max_ttl(Some(5)).await.unwrap();
    let (answer, ttl) = node.answer(GB_CLIENT).await;
    assert_eq!(answer, vec![ip(EU_WEST_V4)]);
    assert!((1..=5).contains(&ttl), "TTL {ttl}");
    assert_eq!(node.anonymous().status().await.unwrap().max_ttl, Some(5));
    assert_eq!(operator_file(&scratch).max_ttl, Some(5));

    node.client().set_max_ttl(None).await.unwrap();
    assert_eq!(node.answer(GB_CLIENT).await.1, 30);
    assert_eq!(node.anonymous().status().await.unwrap().max_ttl, None);
    node.stop().await;
}

#[tokio::test]
async fn without_an_operator_state_file_changes_are_refused_as_not_persistent() {
    let scratch = Scratch::new();
    let config = scratch.read("zones/meridian.toml");
    let without: String = config
        .lines()
        .filter(|line| !line.starts_with("operator_state"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(
        config, without,
        "the bundled example names an operator_state file"
    );
    scratch.replace("zones/meridian.toml", &without);
    let node = Node::start(&scratch).await;
    match node
        .client()
        .set_admin("eu-west", RegionAction::Drain)
        .await
    {
        Err(ClientError::Server { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (409, "not_persistent"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(node.answer(GB_CLIENT).await.0, vec![ip(EU_WEST_V4)]);
    node.stop().await;
}

#[tokio::test]
async fn status_page_and_metrics_show_regions_decisions_and_both_tiers_series() {
    let scratch = Scratch::new();
    let node = Node::start(&scratch).await;

    // A real decision through the handler, recorded the way the query path records it.
    let snapshot = node.dns.store.load_full();
    let packet = query_message("api.example.test.", RecordType::A, Some(GB_CLIENT))
        .to_vec()
        .unwrap();
    let peer: SocketAddr = "192.0.2.200:53000".parse().unwrap();
    let mut out = Vec::new();
    let summary = respond(
        &snapshot,
        &packet,
        peer,
        Transport::Udp,
        1,
        Instant::now(),
        &mut out,
    )
    .expect("answered");
    node.recent
        .record_answer(GB_CLIENT.parse().unwrap(), &summary, &snapshot);
    // A name carrying markup must be shown, never interpreted.
    let evil: Arc<str> = Arc::from("<script>alert(1)</script>.example.test.");
    node.recent.record(
        SystemTime::now(),
        "203.0.113.9/32".parse().unwrap(),
        &evil,
        [&evil],
        "geo-country",
    );
    let _ = node.answer(GB_CLIENT).await; // DNS series to scrape
    node.anonymous().status().await.unwrap();

    let (status, head, page) = raw(node.admin, "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        head.to_lowercase().contains("content-type: text/html"),
        "{head}"
    );
    for header in [
        "content-security-policy: default-src 'none'; style-src 'unsafe-inline'",
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
    ] {
        assert!(head.to_lowercase().contains(header), "{header}: {head}");
    }
    for region in ["us-east", "eu-west", "ap-south"] {
        assert!(page.contains(region), "{region} missing from the page");
    }
    assert!(page.contains("81.2.69.0/24") && page.contains("api.example.test."));
    assert!(
        page.contains("203.0.113.0/24"),
        "client networks are truncated"
    );
    assert!(!page.contains("<script>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains(TOKEN));
    // Nor in any other read, nor in what a refused call is told.
    for path in ["/v1/status", "/v1/decisions", "/metrics"] {
        let (_, head, body) = raw(node.admin, "GET", path, &[], "").await;
        assert!(!head.contains(TOKEN) && !body.contains(TOKEN), "{path}");
    }
    let almost = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let (status, head, body) = raw(
        node.admin,
        "POST",
        "/v1/regions/eu-west/drain",
        &[("Authorization", &almost)],
        "",
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        !head.contains(&TOKEN[..8]) && !body.contains(&TOKEN[..8]),
        "{head}{body}"
    );

    let decisions = node.anonymous().decisions().await.unwrap();
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[1].regions, vec!["eu-west".to_owned()]);
    assert_eq!(decisions[1].client, GB_CLIENT);

    let _ = raw(node.admin, "POST", "/v1/regions/eu-west/drain", &[], "").await; // 401
    let (status, _, metrics) = raw(node.admin, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    for series in [
        "meridian_dns_responses_total{",
        "meridian_dns_gslb_answers_total{name=\"api.example.test.\",region=\"eu-west\"",
        "meridian_admin_requests_total{route=\"GET /v1/status\",status=\"200\"} 2",
        "meridian_admin_requests_total{route=\"POST /v1/regions/{id}/drain\",status=\"401\"} 2",
        "meridian_admin_auth_failures_total 2",
        "meridian_admin_connections_refused_total 0",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"));
    assert_eq!(metrics.matches("# EOF").count(), 1);
    node.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_counted() {
    let scratch = Scratch::new();
    let node = Node::start(&scratch).await;
    let mut held = Vec::new();
    for _ in 0..admin::server::MAX_CONNECTIONS {
        held.push(TcpStream::connect(node.admin).await.unwrap());
    }
    // One more is accepted and closed at once, without an answer.
    let mut extra = TcpStream::connect(node.admin).await.unwrap();
    let _ = extra
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut buffer))
        .await
        .expect("closed within 5 s");
    assert!(read.is_err() || buffer.is_empty(), "{buffer:?}");

    // Freeing connections makes room again (the server notices the close asynchronously).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match node.anonymous().status().await {
            Ok(status) => break status,
            Err(error) => {
                assert!(Instant::now() < deadline, "no room after 10 s: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(status.regions.len(), 3);
    let (_, _, metrics) = raw(node.admin, "GET", "/metrics", &[], "").await;
    assert!(
        !metrics.contains("meridian_admin_connections_refused_total 0"),
        "{metrics}"
    );
    node.stop().await;
}

/// `meridian ctl` as a child process; returns (exit code, stdout, stderr).
async fn ctl(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
            .arg("ctl")
            .args(&args)
            .output()
            .expect("run meridian ctl");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ctl_command_shows_status_and_drains() {
    let scratch = Scratch::new();
    let node = Node::start(&scratch).await;
    let url = node.url();
    let token = node.token_file.display().to_string();
    let args = |rest: &[&str]| -> Vec<String> {
        let mut args = vec!["--admin".to_owned(), url.clone()];
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    };

    let (code, out, err) = ctl(args(&["status"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("REGION") && out.contains("eu-west"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("eu-west") && l.contains("auto")),
        "{out}"
    );

    let (code, out, err) = ctl(args(&["--token-file", &token, "drain", "eu-west"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("eu-west") && l.contains("drain")),
        "{out}"
    );
    assert_eq!(node.answer(GB_CLIENT).await.0, vec![ip(US_EAST_V4)]);

    let (code, out, err) = ctl(args(&["--json", "status"])).await;
    assert_eq!(code, 0, "{err}");
    let status: Status = serde_json::from_str(&out).expect(&out);
    let eu = status.regions.iter().find(|r| r.id == "eu-west").unwrap();
    assert_eq!(eu.admin, AdminState::Drain);

    let (code, out, err) = ctl(args(&["--token-file", &token, "max-ttl", "5"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("5 s"), "{out}");
    assert!(node.answer(GB_CLIENT).await.1 <= 5);

    // A change without a token file is a usage error, refused before any call.
    let (code, _, err) = ctl(args(&["undrain", "eu-west"])).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--token-file"), "{err}");
    // The node's refusal: exit 1 with its message.
    let (code, _, err) = ctl(args(&["--token-file", &token, "weight", "eu-west", "5000"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("5000") && err.contains("HTTP 400"), "{err}");
    let (code, _, err) = ctl(args(&["--token-file", &token, "drain", "mars-1"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("mars-1"), "{err}");
    // Nobody listening: exit 1 naming the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, err) = ctl(vec!["--admin".into(), closed_url.clone(), "status".into()]).await;
    assert_eq!(code, 1);
    assert!(err.contains(&closed_url), "{err}");
    // A token file others can read is refused, without printing the token.
    std::fs::set_permissions(&node.token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = ctl(args(&["--token-file", &token, "undrain", "eu-west"])).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("chmod 600") && !err.contains(TOKEN) && !out.contains(TOKEN));

    // The drain made through ctl is what the node still serves.
    assert_eq!(
        operator_file(&scratch).region("eu-west").admin,
        AdminState::Drain
    );
    node.stop().await;
}

#[tokio::test]
async fn status_shows_report_ages_from_the_ledger() {
    let scratch = Scratch::new();
    let ledger = Arc::new(Mutex::new(ReportLedger::new(Duration::from_secs(10))));
    {
        let mut ledger = ledger.lock().unwrap();
        let session = ledger.open_session("eu-west");
        // Decoded like a received frame, so fields added to reports later keep this test valid.
        let report = serde_json::from_value(serde_json::json!({
            "version": 1, "region": "eu-west", "sequence": 1, "state": "ok",
            "accept_new": true, "saturation": 0.1, "capacity_units": 4,
            "headroom_units": 3.6, "headroom_fraction": 0.9,
        }))
        .unwrap();
        let received = Instant::now()
            .checked_sub(Duration::from_millis(1500))
            .unwrap();
        ledger
            .accept(
                &session,
                ReportFrame {
                    validity_ms: 5000,
                    report,
                },
                received,
            )
            .unwrap();
    }
    let node = Node::start_with(&scratch, Some(ledger)).await;
    let status = node.anonymous().status().await.unwrap();
    let age = |id: &str| {
        status
            .regions
            .iter()
            .find(|r| r.id == id)
            .unwrap()
            .report_age_ms
    };
    let eu = age("eu-west").expect("eu-west reported");
    assert!((1500..60_000).contains(&eu), "{eu} ms");
    assert_eq!(age("us-east"), None);
    let (_, _, page) = raw(node.admin, "GET", "/", &[], "").await;
    assert!(page.contains("never"), "regions without reports say so");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_are_all_kept() {
    let scratch = Scratch::new();
    let node = Node::start(&scratch).await;
    let client = node.client();
    let (a, b, c, d) = tokio::join!(
        client.set_admin("eu-west", RegionAction::Drain),
        client.set_admin("ap-south", RegionAction::ForceDown),
        client.set_weight("us-east", 50),
        client.set_max_ttl(Some(7)),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    d.unwrap();
    let saved = operator_file(&scratch);
    assert_eq!(saved.region("eu-west").admin, AdminState::Drain);
    assert_eq!(saved.region("ap-south").admin, AdminState::ForceDown);
    assert_eq!(saved.region("us-east").weight_percent, 50);
    assert_eq!(saved.max_ttl, Some(7));
    let served = node.dns.store.load_full();
    assert_eq!(served.operator, saved);
    node.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The relay's admin listener: the same token rules, on a real relay.
// ---------------------------------------------------------------------------------------------

mod relay_support;

const RELAY_TOKEN: &str = "7c1e0b9d4a2f6e8c3b5d7f9a1c3e5b7d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_admin_calls_that_change_the_relay_need_the_token() {
    let scratch = tempfile::tempdir().unwrap();
    let mut relay = relay_support::relay_with_admin_token(scratch.path(), RELAY_TOKEN).await;
    let admin = relay.admin;
    let bearer = format!("Bearer {RELAY_TOKEN}");
    let wrong = format!("Bearer {RELAY_TOKEN}0");

    // Every mutating call, without a token, with a wrong one, or another scheme: 401 with the
    // challenge and no reason, and nothing changes.
    let mutating = [
        ("POST", "/admin/drain", ""),
        ("POST", "/admin/backends/a/drain", ""),
        ("POST", "/admin/backends/nope/undrain", ""),
        ("POST", "/admin/reload", ""),
        ("POST", "/admin/reports", r#"{"paused": true}"#),
        ("DELETE", "/metrics", ""),
        ("PUT", "/no/such/route", ""),
    ];
    let presented: [&[(&str, &str)]; 4] = [
        &[],
        &[("Authorization", &wrong)],
        &[("Authorization", "Basic Zm9vOmJhcg==")],
        &[("Authorization", RELAY_TOKEN)],
    ];
    for (method, path, body) in mutating {
        for headers in presented {
            let (status, head, text) = raw(admin, method, path, headers, body).await;
            assert_eq!(status, 401, "{method} {path} {headers:?}: {text}");
            assert!(
                head.to_lowercase()
                    .contains("www-authenticate: bearer realm=\"meridian-relay-admin\""),
                "{head}"
            );
            assert_eq!(text, r#"{"error":"unauthorized"}"#);
            assert!(!head.contains(RELAY_TOKEN) && !text.contains(RELAY_TOKEN));
        }
    }
    assert!(
        !*relay.handle().drain_requested.borrow(),
        "refused drain drained"
    );
    assert_eq!(relay.backend_view("a").await["drained"], false);

    // Reads stay open, like a Prometheus target.
    for path in [
        "/metrics",
        "/region/health",
        "/admin/backends",
        "/admin/reports",
    ] {
        let (status, _, text) = raw(admin, "GET", path, &[], "").await;
        assert_eq!(status, 200, "GET {path}: {text}");
        assert!(!text.contains(RELAY_TOKEN), "GET {path}");
    }
    let refusals = mutating.len() * presented.len();
    let (_, _, metrics) = raw(admin, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains(&format!(
            "meridian_relay_admin_auth_failures_total {refusals}"
        )),
        "{metrics}"
    );

    // With the token (the scheme is case-insensitive) the same calls go through.
    let (status, _, text) = raw(
        admin,
        "POST",
        "/admin/backends/a/drain",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(relay.backend_view("a").await["drained"], true);
    let lower = format!("bearer {RELAY_TOKEN}");
    let (status, _, text) = raw(
        admin,
        "POST",
        "/admin/backends/a/undrain",
        &[("Authorization", &lower)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = raw(
        admin,
        "POST",
        "/admin/drain",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, 202, "{text}");
    assert!(*relay.handle().drain_requested.borrow());
    relay
        .take_handle()
        .drain_and_stop(Duration::from_secs(5))
        .await;
}

/// A relay config in `dir` beside a fresh self-signed certificate, with `relay_keys` added to
/// `[relay]`.
fn relay_config_file(dir: &std::path::Path, relay_keys: &str) -> PathBuf {
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["certs", "self-signed", "--out"])
        .arg(dir.join("certs"))
        .args(["--name", "localhost"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let text = format!(
        "[relay]\nregion = \"eu-west\"\nlisten = \"127.0.0.1:0\"\n{relay_keys}\n\n\
         [relay.tls]\ncert = \"certs/relay.pem\"\nkey = \"certs/relay-key.pem\"\n\n\
         [[backend]]\nid = \"a\"\nurl = \"http://127.0.0.1:9\"\nkind = \"vllm\"\n\
         models = [\"m\"]\nslots = 1\n"
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn meridian(args: &[&str], config: &std::path::Path) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_exposed_relay_admin_listener_or_token_file_is_refused_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();

    // Off loopback without a token file: `check` and `relay` refuse, naming the field.
    let config = relay_config_file(dir.path(), "admin_listen = \"0.0.0.0:0\"");
    for command in ["check", "relay"] {
        let (code, stderr) = meridian(&[command], &config);
        assert_eq!(code, Some(64), "{command}: {stderr}");
        assert!(
            stderr.contains("relay.admin_listen: 0.0.0.0:0 is not a loopback address")
                && stderr.contains("relay.admin_token_file"),
            "{command}: {stderr}"
        );
    }

    // A token file others can read: refused the same way, without showing the token.
    let token = relay_support::admin_token_file(dir.path(), RELAY_TOKEN, 0o644);
    let config = relay_config_file(
        dir.path(),
        "admin_listen = \"0.0.0.0:0\"\nadmin_token_file = \"relay-admin.token\"",
    );
    for command in ["check", "relay"] {
        let (code, stderr) = meridian(&[command], &config);
        assert_eq!(code, Some(64), "{command}: {stderr}");
        assert!(
            stderr.contains("relay.admin_token_file") && stderr.contains("chmod 600"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains(RELAY_TOKEN), "{stderr}");
    }

    // Private again: check passes.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, stderr) = meridian(&["check"], &config);
    assert_eq!(code, Some(0), "{stderr}");
}
