//! Changing the relay's backends while it serves, end to end: the configuration file is
//! rewritten (written beside and renamed over, as deployment tools do) and reloaded through
//! [`RelayHandle::reload`], `POST /admin/reload`, or SIGHUP to a `meridian relay` process.
//!
//! What is asserted is what clients and backends observe: which sim received which request,
//! that a stream running on a backend being drained and removed ends with `[DONE]`, the model
//! list, and the admin view. Events are ordered by state (sim stats, admin views), never by
//! sleeping; the one duration that matters is the slow stream's, long enough to outlive the
//! two reloads made while it runs.

mod relay_support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meridian::{
    config::ConfigError,
    relay::{reconfigure::ReloadError, tls},
    sim_backend::SimBackend,
};
use relay_support::*;
use tokio::net::TcpStream;

/// One `[[backend]]` as the rewritten file declares it.
struct Decl {
    id: &'static str,
    url: String,
    models: &'static [&'static str],
    drained: bool,
}

fn decl(id: &'static str, sim: &SimBackend, models: &'static [&'static str]) -> Decl {
    Decl {
        id,
        url: sim.url(),
        models,
        drained: false,
    }
}

fn drained(decl: Decl) -> Decl {
    Decl {
        drained: true,
        ..decl
    }
}

/// The backends of `TestRelay::start`'s file are declared with 4 slots.
const SLOTS: u32 = 4;

/// The file [`TestRelay::start`] would have written for these backends (same `[relay]` table,
/// same quiet health checks), so a reload sees only the backend changes.
fn relay_file(relay_keys: &str, backends: &[Decl]) -> String {
    let mut text = format!(
        "[relay]\nregion = \"test\"\nlisten = \"127.0.0.1:0\"\n\
         admin_listen = \"127.0.0.1:0\"\nhttp3 = true\n{relay_keys}\n\n\
         [relay.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n"
    );
    for b in backends {
        let models: Vec<String> = b.models.iter().map(|m| format!("{m:?}")).collect();
        text.push_str(&format!(
            "[[backend]]\nid = \"{}\"\nurl = \"{}\"\nkind = \"vllm\"\nmodels = [{}]\nslots = {SLOTS}\ndrained = {}\n\n",
            b.id,
            b.url,
            models.join(", "),
            b.drained
        ));
    }
    text.push_str(QUIET_HEALTH);
    text
}

/// Replaces `dir/relay.toml` the way deployment tools do: written beside, renamed over.
fn rewrite(dir: &Path, text: &str) {
    let staged = dir.join("relay.toml.staged");
    std::fs::write(&staged, text).expect("write the staged config");
    std::fs::rename(&staged, dir.join("relay.toml")).expect("rename over the config");
}

/// The ids of `GET /v1/models`.
async fn model_ids(client: &mut Client) -> Vec<String> {
    let list = client.get("/v1/models").await.unwrap().json().await;
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a model list: {list}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// `(id, removed, in_flight)` of every backend `GET /admin/backends` shows.
async fn admin_backends(relay: &TestRelay) -> Vec<(String, bool, u64)> {
    let all = relay.admin_json("/admin/backends").await;
    all["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("no backend list: {all}"))
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["removed"].as_bool().unwrap(),
                b["in_flight"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `n` quick non-streaming completions for `model`, each answered 200 in full.
async fn complete(client: &mut Client, model: &str, n: usize) {
    for i in 0..n {
        let mut response = client.chat(model, false, 2).await.unwrap();
        let body = response.text().await.unwrap();
        assert_eq!(
            response.status,
            StatusCode::OK,
            "request {i} for {model}: {body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Blue/green: add v2 and drain v1, then remove v1, while a stream runs on v1
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_roll_out_keeps_the_stream_on_the_old_version() {
    // 20 tokens at 5/s: the stream runs for about four seconds, through both reloads.
    let v1 = sim(&[MODEL], |args| args.tokens_per_s = 5.0).await;
    let v2 = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(&[backend("v1", v1.url(), &[MODEL], SLOTS)], "").await;
    let v1_before = probed(&v1).await;

    let mut streaming = relay.client(Proto::H2).await;
    let mut stream = streaming.chat(MODEL, true, 20).await.unwrap();
    assert_eq!(stream.status, StatusCode::OK);
    let first = stream.chunk().await.unwrap().expect("a first chunk");

    // Step 1: v2 joins, v1 is drained.
    rewrite(
        relay.dir(),
        &relay_file(
            "",
            &[
                drained(decl("v1", &v1, &[MODEL])),
                decl("v2", &v2, &[MODEL]),
            ],
        ),
    );
    let reloaded = relay.handle().reload().await.expect("the new file applies");
    assert_eq!(reloaded.backends.added, ["v2".into()]);
    assert_eq!(reloaded.backends.drain_changed, ["v1".into()]);
    assert!(reloaded.backends.removed.is_empty() && reloaded.backends.changed.is_empty());
    assert!(
        reloaded.needs_restart.is_empty(),
        "only backends changed: {:?}",
        reloaded.needs_restart
    );
    // The new backend is probed: its first deep probe arrives (and is the baseline).
    let v2_before = probed(&v2).await;

    let mut client = relay.client(Proto::H1).await;
    complete(&mut client, MODEL, 4).await;
    let (v1_now, v2_now) = (v1.stats(), v2.stats());
    assert_eq!(
        v2_now.received,
        v2_before.received + 4,
        "new work goes to v2: {v2_now:?}"
    );
    assert_eq!(
        (v1_now.received, v1_now.running),
        (v1_before.received + 1, 1),
        "v1 gets no new work and still runs the stream: {v1_now:?}"
    );

    // Step 2: v1 leaves while its stream still runs.
    rewrite(relay.dir(), &relay_file("", &[decl("v2", &v2, &[MODEL])]));
    let reloaded = relay.handle().reload().await.expect("the new file applies");
    assert_eq!(reloaded.backends.removed, ["v1".into()]);
    assert!(reloaded.backends.added.is_empty() && reloaded.backends.changed.is_empty());
    assert_eq!(
        admin_backends(&relay).await,
        [("v1".into(), true, 1), ("v2".into(), false, 0)],
        "v1 is shown as removed while its stream runs"
    );
    assert_eq!(
        v1.stats().running,
        1,
        "the stream outlived the second reload"
    );

    let text = format!(
        "{}{}",
        String::from_utf8(first.to_vec()).unwrap(),
        stream
            .text()
            .await
            .expect("the stream on the removed backend is not cut")
    );
    let payloads = sse_payloads(&text);
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{text}"
    );
    assert_eq!(text.matches("tok").count(), 20, "{text}");
    eventually("v1 leaves the admin view once its stream ended", || async {
        admin_backends(&relay).await == [("v2".to_string(), false, 0)]
    })
    .await;

    // v1 receives nothing more; the model list never changed.
    complete(&mut client, MODEL, 3).await;
    let v1_after = v1.stats();
    assert_eq!(
        (v1_after.received, v1_after.completed),
        (v1_before.received + 1, v1_before.completed + 1),
        "{v1_after:?}"
    );
    assert_eq!(v2.stats().received, v2_before.received + 7);
    assert_eq!(model_ids(&mut client).await, [MODEL]);
    let metrics = relay.metrics().await;
    let gone: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("meridian_relay_backend_") && l.contains("backend=\"v1\""))
        .collect();
    assert!(
        gone.is_empty(),
        "gauges of a backend that is gone: {gone:?}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "meridian_relay_reloads_total",
            &[("result", "applied")]
        ),
        2.0
    );
}

// ---------------------------------------------------------------------------------------------
// 2. An invalid file changes nothing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_rejected_and_the_relay_keeps_its_backends() {
    let a = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(&[backend("a", a.url(), &[MODEL], SLOTS)], "").await;
    let before = probed(&a).await;

    // Valid TOML, invalid config: every problem with its field path.
    let mut bad = relay_file("", &[decl("a", &a, &[MODEL])]);
    bad = bad
        .replace(&a.url(), "ftp://example")
        .replace(&format!("slots = {SLOTS}"), "slots = 0");
    rewrite(relay.dir(), &bad);
    match relay.handle().reload().await {
        Err(ReloadError::Rejected(ConfigError::Invalid { errors, .. })) => {
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            assert!(fields.contains(&"backend[0].url"), "{fields:?}");
            assert!(fields.contains(&"backend[0].slots"), "{fields:?}");
        }
        other => panic!("the invalid file must be rejected: {other:?}"),
    }
    // The same through the admin API: 422 with the problems.
    let (status, body) = relay.admin_request(Method::POST, "/admin/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["field"] == "backend[0].slots"),
        "{body}"
    );
    // Not TOML at all.
    rewrite(relay.dir(), "[relay\nregion = ");
    assert!(matches!(
        relay.handle().reload().await,
        Err(ReloadError::Rejected(ConfigError::Syntax { .. }))
    ));

    // Still serving on the old backend.
    let mut client = relay.client(Proto::H2).await;
    complete(&mut client, MODEL, 2).await;
    assert_eq!(a.stats().received, before.received + 2);
    assert_eq!(admin_backends(&relay).await, [("a".into(), false, 0)]);
    assert_eq!(model_ids(&mut client).await, [MODEL]);
    let metrics = relay.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "meridian_relay_reloads_total",
            &[("result", "rejected")]
        ),
        3.0
    );

    // A repaired file that says what already runs changes nothing.
    rewrite(relay.dir(), &relay_file("", &[decl("a", &a, &[MODEL])]));
    let reloaded = relay
        .handle()
        .reload()
        .await
        .expect("the repaired file applies");
    assert!(reloaded.backends.is_empty(), "{reloaded:?}");
    assert!(reloaded.needs_restart.is_empty(), "{reloaded:?}");
}

// ---------------------------------------------------------------------------------------------
// 3. A backend with a new model, through POST /admin/reload
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_backend_brings_its_model_and_is_probed() {
    const FRESH: &str = "fresh-model";
    let a = sim(&[MODEL], |_| {}).await;
    let fresh = sim(&[FRESH], |_| {}).await;
    let relay = TestRelay::start(&[backend("a", a.url(), &[MODEL], SLOTS)], "").await;
    let a_before = probed(&a).await;
    let mut client = relay.client(Proto::H3).await;
    let unknown = client.chat(FRESH, false, 2).await.unwrap();
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    rewrite(
        relay.dir(),
        &relay_file(
            "",
            &[decl("a", &a, &[MODEL]), decl("fresh", &fresh, &[FRESH])],
        ),
    );
    let (status, body) = relay.admin_request(Method::POST, "/admin/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["added"], serde_json::json!(["fresh"]), "{body}");
    assert_eq!(body["needs_restart"], serde_json::json!([]), "{body}");

    // The prober follows the pool: the new backend gets its deep probe.
    let fresh_before = probed(&fresh).await;
    assert_eq!(model_ids(&mut client).await, [FRESH, MODEL]);
    complete(&mut client, FRESH, 2).await;
    complete(&mut client, MODEL, 1).await;
    assert_eq!(fresh.stats().received, fresh_before.received + 2);
    assert_eq!(fresh.stats().invalid, 0);
    assert_eq!(a.stats().received, a_before.received + 1);
    assert_eq!(
        metric_sum(
            &relay.metrics().await,
            "meridian_relay_reloads_total",
            &[("result", "applied")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// 4. SIGHUP to a `meridian relay` process
// ---------------------------------------------------------------------------------------------

/// The relay process, killed if the test ends without stopping it.
struct RelayProcess {
    child: Child,
    stderr: PathBuf,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl RelayProcess {
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// One plain HTTP/1.1 exchange with `address`.
async fn plain_request(
    address: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (StatusCode, String) {
    let exchange = async {
        let tcp = TcpStream::connect(address).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, address.to_string());
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        Ok::<_, BoxError>((status, String::from_utf8(body.to_vec())?))
    };
    within("plain HTTP request", exchange)
        .await
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_running_relay_process() {
    const HUP: &str = "hup-model";
    let a = sim(&[MODEL], |_| {}).await;
    let added = sim(&[HUP], |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls::self_signed(&["localhost"]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    let keys = "plain_listen = \"127.0.0.1:0\"";
    rewrite(dir.path(), &relay_file(keys, &[decl("a", &a, &[MODEL])]));

    let ready = dir.path().join("ready.json");
    let stderr = dir.path().join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("relay")
        .arg("--config")
        .arg(dir.path().join("relay.toml"))
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start meridian relay");
    let relay = RelayProcess { child, stderr };

    // The ready file is renamed into place whole: once it parses, the relay serves.
    let mut plain = None;
    eventually("the relay process reports ready", || {
        let parsed = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        plain = parsed.and_then(|r| r["plain"].as_str().and_then(|a| a.parse().ok()));
        let serving = plain.is_some();
        async move { serving }
    })
    .await;
    let plain: SocketAddr = plain.unwrap();
    let models = |body: String| -> Vec<String> {
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, body) = plain_request(plain, Method::GET, "/v1/models", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(models(body), [MODEL]);

    rewrite(
        dir.path(),
        &relay_file(
            keys,
            &[decl("a", &a, &[MODEL]), decl("added", &added, &[HUP])],
        ),
    );
    relay.signal("HUP");
    eventually("SIGHUP applies the new backend", || async {
        let (_, body) = plain_request(plain, Method::GET, "/v1/models", None).await;
        models(body) == [HUP, MODEL]
    })
    .await;
    let (status, body) = plain_request(
        plain,
        Method::POST,
        "/v1/chat/completions",
        Some(&chat_body(HUP, false, 2)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", relay.log());
    // Only the added backend serves that model.
    assert!(body.contains(&format!("\"model\":\"{HUP}\"")), "{body}");
    assert_eq!(added.stats().invalid, 0);

    // Still alive after the signal, and it stops cleanly on SIGTERM.
    relay.signal("TERM");
    let mut relay = relay;
    let status = within("the relay process exits on SIGTERM", async {
        loop {
            if let Some(status) = relay.child.try_wait().expect("wait for the relay") {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(status.success(), "{status}\n{}", relay.log());
}
