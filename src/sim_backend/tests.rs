//! The simulator over real loopback sockets, driven by hyper's client. Ordering is asserted
//! through the server's own stats (`SimBackend::wait_for` wakes on every change), never through
//! wall-clock thresholds; the only timeouts either guard against a hang or check that nothing
//! arrives, which a slow machine cannot make fail.

use std::time::Duration;

use ::http::{Request, Response, StatusCode, Version, header::RETRY_AFTER};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};

use super::*;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Long enough for any honest step on a loaded machine; only a hang reaches it.
const HANG_GUARD: Duration = Duration::from_secs(20);
/// How long to watch for something that must not arrive (a broken server sends at once).
const QUIET: Duration = Duration::from_millis(150);

async fn guarded<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .expect("step hung")
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A fast backend unless the test says otherwise.
async fn start(configure: impl FnOnce(&mut SimBackendArgs)) -> SimBackend {
    let mut args = SimBackendArgs::new(["llama", "qwen"]);
    args.ttft_ms = 0;
    args.tokens_per_s = 10_000.0;
    configure(&mut args);
    SimBackend::start(args).await.expect("start sim backend")
}

async fn post(
    client: &HttpClient,
    backend: &SimBackend,
    path: &str,
    body: Value,
) -> Response<Incoming> {
    post_bytes(client, backend, path, body.to_string()).await
}

async fn post_bytes(
    client: &HttpClient,
    backend: &SimBackend,
    path: &str,
    body: impl Into<Bytes>,
) -> Response<Incoming> {
    let request = Request::post(format!("{}{path}", backend.url()))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    guarded(client.request(request)).await.unwrap()
}

async fn get(client: &HttpClient, backend: &SimBackend, path: &str) -> (StatusCode, Bytes) {
    let request = Request::get(format!("{}{path}", backend.url()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = guarded(client.request(request)).await.unwrap();
    let status = response.status();
    (status, read_all(response).await)
}

async fn read_all(response: Response<Incoming>) -> Bytes {
    guarded(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes()
}

async fn json_body(response: Response<Incoming>) -> Value {
    serde_json::from_slice(&read_all(response).await).unwrap()
}

fn chat(model: &str, stream: bool, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hello"}],
    })
}

/// Reads server-sent events whatever way the transport split or joined the frames.
struct Events {
    body: Incoming,
    buffer: String,
}

impl Events {
    fn new(response: Response<Incoming>) -> Events {
        Events {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event's `data`, `Ok(None)` at the clean end, `Err` if the stream broke.
    async fn next(&mut self) -> Result<Option<String>, hyper::Error> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let data = event.trim_end().strip_prefix("data: ").unwrap().to_string();
                return Ok(Some(data));
            }
            match guarded(self.body.frame()).await {
                None => {
                    assert!(self.buffer.is_empty(), "stream ended mid-event");
                    return Ok(None);
                }
                Some(Err(error)) => return Err(error),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
            }
        }
    }

    async fn next_chunk(&mut self) -> Value {
        let data = self.next().await.unwrap().expect("a chunk");
        serde_json::from_str(&data).unwrap()
    }

    /// Whether anything at all arrives within [`QUIET`].
    async fn stays_quiet(&mut self) -> bool {
        self.buffer.is_empty()
            && tokio::time::timeout(QUIET, self.body.frame())
                .await
                .is_err()
    }
}

fn content(chunk: &Value) -> &str {
    chunk["choices"][0]["delta"]["content"]
        .as_str()
        .or_else(|| chunk["choices"][0]["text"].as_str())
        .unwrap()
}

#[tokio::test]
async fn first_chunk_arrives_while_the_generation_is_still_running() {
    let backend = start(|args| {
        args.ttft_ms = 0;
        args.tokens_per_s = 2.0;
    })
    .await;
    let client = client();
    let response = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", true, 20),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events::new(response);
    let first = events.next_chunk().await;
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(content(&first), "tok1 ");
    // The rest is due 0.5 s apart: the request must still hold its slot.
    let stats = backend.stats();
    assert_eq!((stats.running, stats.completed), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn prefill_holds_the_first_token_back_while_the_slot_is_taken() {
    let backend = start(|args| args.ttft_ms = 60_000).await;
    let client = client();
    let response = post(&client, &backend, "/v1/completions", chat("llama", true, 1)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = Events::new(response);
    assert!(events.stays_quiet().await);
    assert_eq!(backend.stats().running, 1);
    drop(events);
    guarded(backend.wait_for(|stats| stats.cancelled == 1 && stats.running == 0)).await;
}

#[tokio::test]
async fn streams_every_token_in_order_then_done() {
    let backend = start(|_| {}).await;
    let client = client();
    for (path, object) in [
        ("/v1/chat/completions", "chat.completion.chunk"),
        ("/v1/completions", "text_completion"),
    ] {
        let body = json!({
            "model": "qwen", "stream": true, "max_tokens": 4, "prompt": "hi",
            "stream_options": {"include_usage": true},
        });
        let mut events = Events::new(post(&client, &backend, path, body).await);
        for expected in ["tok1 ", "tok2 ", "tok3 ", "tok4 "] {
            let chunk = events.next_chunk().await;
            assert_eq!(chunk["object"], object, "{path}");
            assert_eq!(chunk["model"], "qwen");
            assert_eq!(content(&chunk), expected, "{path}");
        }
        let finish = events.next_chunk().await;
        assert_eq!(finish["choices"][0]["finish_reason"], "length", "{path}");
        let usage = events.next_chunk().await;
        assert_eq!(usage["usage"]["completion_tokens"], 4, "{path}");
        assert_eq!(events.next().await.unwrap().as_deref(), Some("[DONE]"));
        assert_eq!(events.next().await.unwrap(), None);
    }
    let stats = backend.wait_for(|stats| stats.completed == 2).await;
    assert_eq!(
        (stats.received, stats.running, stats.max_running_seen),
        (2, 0, 1)
    );
}

#[tokio::test]
async fn non_streaming_answers_one_json_document() {
    let backend = start(|args| args.max_tokens = 5).await;
    let client = client();
    let answer = json_body(
        post(
            &client,
            &backend,
            "/v1/chat/completions",
            chat("llama", false, 3),
        )
        .await,
    )
    .await;
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "llama");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "tok1 tok2 tok3 "
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(answer["usage"]["completion_tokens"], 3);

    // Without max_tokens the server default applies.
    let request = json!({"model": "llama", "prompt": "once upon"});
    let answer = json_body(post(&client, &backend, "/v1/completions", request).await).await;
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["choices"][0]["text"], "tok1 tok2 tok3 tok4 tok5 ");
    assert_eq!(answer["usage"]["completion_tokens"], 5);

    let embedding = json_body(
        post(
            &client,
            &backend,
            "/v1/embeddings",
            json!({"model": "llama", "input": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        embedding["data"][0]["embedding"].as_array().map(Vec::len),
        Some(8)
    );

    let stats = backend.stats();
    assert_eq!((stats.received, stats.completed), (3, 3));
}

#[tokio::test]
async fn refuses_bad_requests_openai_style() {
    let backend = start(|_| {}).await;
    let client = client();
    let response = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("gpt-9", false, 1),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let error = json_body(response).await;
    assert_eq!(error["error"]["code"], "model_not_found");
    assert_eq!(error["error"]["param"], "model");
    for key in ["message", "type", "param", "code"] {
        assert!(error["error"].get(key).is_some(), "{key}");
    }

    let cases: Vec<(&str, Bytes, StatusCode)> = vec![
        (
            "/v1/chat/completions",
            Bytes::from_static(b"{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/completions",
            Bytes::from(json!({"model": "llama", "max_tokens": 0}).to_string()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/chat/completions",
            Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/v1/embeddings",
            Bytes::from(json!({"model": "nope"}).to_string()),
            StatusCode::NOT_FOUND,
        ),
        ("/v2/unknown", Bytes::new(), StatusCode::NOT_FOUND),
    ];
    for (path, body, status) in cases {
        let response = post_bytes(&client, &backend, path, body).await;
        assert_eq!(response.status(), status, "{path}");
        assert!(
            json_body(response).await["error"]["message"].is_string(),
            "{path}"
        );
    }
    let stats = backend.stats();
    assert_eq!(
        (stats.received, stats.invalid, stats.max_running_seen),
        (5, 5, 0)
    );
}

#[tokio::test]
async fn one_slot_serves_one_request_at_a_time_in_arrival_order() {
    // Slow generations: a request only gives its slot up when its client leaves, so every
    // hand-over below happens at a moment the test chooses.
    let backend = start(|args| {
        args.slots = 1;
        args.tokens_per_s = 2.0;
    })
    .await;
    let client = client();
    let long = || chat("llama", true, 1000);
    let mut first = Events::new(post(&client, &backend, "/v1/chat/completions", long()).await);
    assert_eq!(content(&first.next_chunk().await), "tok1 ");
    // Headers come at once even while queued, as with vLLM; the tokens wait for the slot.
    let mut second = Events::new(post(&client, &backend, "/v1/chat/completions", long()).await);
    guarded(backend.wait_for(|stats| stats.waiting == 1)).await;
    let mut third = Events::new(post(&client, &backend, "/v1/chat/completions", long()).await);
    guarded(backend.wait_for(|stats| stats.waiting == 2)).await;

    drop(first);
    assert_eq!(content(&second.next_chunk().await), "tok1 ");
    let stats = backend.stats();
    assert_eq!(
        (stats.cancelled, stats.running, stats.waiting),
        (1, 1, 1),
        "the second got the slot once the first left, the third still waits: {stats:?}"
    );
    drop(second);
    assert_eq!(content(&third.next_chunk().await), "tok1 ");
    let stats = backend.stats();
    assert_eq!((stats.cancelled, stats.running, stats.waiting), (2, 1, 0));
    assert_eq!(stats.max_running_seen, 1);
}

#[tokio::test]
async fn beyond_the_queue_limit_requests_get_503_with_retry_after() {
    let backend = start(|args| {
        args.slots = 1;
        args.queue_limit = 1;
        args.fault = FaultMode::GenerationHangs;
    })
    .await;
    let client = client();
    let running = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", true, 1),
    )
    .await;
    let queued = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", true, 1),
    )
    .await;
    guarded(backend.wait_for(|stats| stats.running == 1 && stats.waiting == 1)).await;
    let refused = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", false, 1),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()[RETRY_AFTER], "1");
    assert_eq!(json_body(refused).await["error"]["code"], "queue_full");
    let stats = backend.stats();
    assert_eq!((stats.rejected, stats.running, stats.waiting), (1, 1, 1));

    // Both leave: the queued one is withdrawn, the running one frees its slot.
    drop((running, queued));
    let stats = guarded(backend.wait_for(|stats| stats.cancelled == 2)).await;
    assert_eq!((stats.running, stats.waiting), (0, 0));
}

#[tokio::test]
async fn client_going_away_cancels_the_generation_and_frees_the_slot() {
    let backend = start(|args| {
        args.slots = 1;
        args.tokens_per_s = 5.0;
    })
    .await;
    let client = client();
    let mut events = Events::new(
        post(
            &client,
            &backend,
            "/v1/chat/completions",
            chat("llama", true, 1000),
        )
        .await,
    );
    events.next_chunk().await;
    drop(events);
    let stats = guarded(backend.wait_for(|stats| stats.cancelled == 1)).await;
    assert_eq!((stats.running, stats.completed), (0, 0), "{stats:?}");

    // The slot is free again: a short request runs at once.
    let answer = json_body(
        post(
            &client,
            &backend,
            "/v1/chat/completions",
            chat("llama", false, 1),
        )
        .await,
    )
    .await;
    assert_eq!(answer["choices"][0]["message"]["content"], "tok1 ");
    assert_eq!(backend.stats().completed, 1);
}

#[tokio::test]
async fn hang_after_headers_sends_headers_then_nothing() {
    let backend = start(|args| args.fault = FaultMode::HangAfterHeaders).await;
    let client = client();
    let response = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", true, 1),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events::new(response);
    assert!(events.stays_quiet().await);
    let stats = backend.stats();
    assert_eq!(
        (stats.received, stats.running, stats.max_running_seen),
        (1, 0, 0)
    );
    drop(events);
    guarded(backend.wait_for(|stats| stats.cancelled == 1)).await;
}

#[tokio::test]
async fn die_mid_stream_breaks_the_stream_after_a_few_tokens() {
    let backend = start(|args| args.fault = FaultMode::DieMidStream).await;
    let client = client();
    let mut events = Events::new(
        post(
            &client,
            &backend,
            "/v1/chat/completions",
            chat("llama", true, 50),
        )
        .await,
    );
    let mut tokens = Vec::new();
    let broke = loop {
        match events.next().await {
            Ok(Some(data)) => {
                assert_ne!(data, "[DONE]");
                let chunk: Value = serde_json::from_str(&data).unwrap();
                assert!(chunk["choices"][0]["finish_reason"].is_null());
                tokens.push(content(&chunk).to_string());
            }
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(broke, "the stream must end with an error, not cleanly");
    assert_eq!(tokens, ["tok1 ", "tok2 ", "tok3 "]);

    // Non-streaming: headers, then the connection is cut instead of the body.
    let response = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", false, 50),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(guarded(response.into_body().collect()).await.is_err());

    let stats = backend.stats();
    assert_eq!((stats.failed, stats.completed, stats.running), (2, 0, 0));
}

#[tokio::test]
async fn unavailable_before_body_refuses_without_taking_a_slot() {
    let backend = start(|args| args.fault = FaultMode::UnavailableBeforeBody).await;
    let client = client();
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let response = post(&client, &backend, path, chat("llama", true, 1)).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert!(json_body(response).await["error"].is_object());
    }
    let stats = backend.stats();
    assert_eq!((stats.failed, stats.max_running_seen), (2, 0));

    // Back to normal at run time.
    let control = backend
        .control(ControlChange {
            fault: Some(FaultMode::None),
            ..ControlChange::default()
        })
        .unwrap();
    assert_eq!(control.fault, FaultMode::None);
    let response = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", false, 1),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn generation_hangs_while_health_and_models_stay_green() {
    let backend = start(|args| args.fault = FaultMode::GenerationHangs).await;
    let client = client();
    assert_eq!(get(&client, &backend, "/health").await.0, StatusCode::OK);
    assert_eq!(get(&client, &backend, "/v1/models").await.0, StatusCode::OK);

    let response = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", true, 1),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = Events::new(response);
    assert!(events.stays_quiet().await);

    // A non-streaming probe gets no answer at all.
    let request = Request::post(format!("{}/v1/chat/completions", backend.url()))
        .body(Full::new(Bytes::from(chat("llama", false, 1).to_string())))
        .unwrap();
    assert!(
        tokio::time::timeout(QUIET, client.request(request))
            .await
            .is_err()
    );
    let stats = guarded(backend.wait_for(|stats| stats.running == 2)).await;
    assert_eq!(stats.completed, 0);

    assert_eq!(get(&client, &backend, "/health").await.0, StatusCode::OK);
    drop(events);
    let stats = guarded(backend.wait_for(|stats| stats.cancelled == 2)).await;
    assert_eq!(stats.running, 0);
}

#[tokio::test]
async fn control_endpoint_changes_faults_at_run_time() {
    let backend = start(|_| {}).await;
    let client = client();
    let response = post(
        &client,
        &backend,
        "/sim/control",
        json!({"fail_rate": 1.0, "ttft_ms": 3}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let control = json_body(response).await;
    assert_eq!(control["fail_rate"], 1.0);
    assert_eq!(control["ttft_ms"], 3);
    assert_eq!(control["fault"], "none");

    let response = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", true, 1),
    )
    .await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(json_body(response).await["error"]["type"], "server_error");

    // Half the requests fail, deterministically every second one.
    post(&client, &backend, "/sim/control", json!({"fail_rate": 0.5})).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = post(
            &client,
            &backend,
            "/v1/chat/completions",
            chat("llama", false, 1),
        )
        .await;
        statuses.push(response.status().as_u16());
        read_all(response).await;
    }
    assert_eq!(statuses, [200, 500, 200, 500]);

    let response = post(
        &client,
        &backend,
        "/sim/control",
        json!({"fault": "die-mid-stream"}),
    )
    .await;
    assert_eq!(json_body(response).await["fault"], "die-mid-stream");

    for bad in [
        json!({"fail_rate": 2.0}),
        json!({"tokens_per_s": 0}),
        json!({"fault": "melt"}),
        json!({"colour": 1}),
    ] {
        let response = post(&client, &backend, "/sim/control", bad.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(backend.stats().failed, 3);
}

#[tokio::test]
async fn stats_endpoint_reports_what_the_backend_saw() {
    let backend = start(|_| {}).await;
    let client = client();
    read_all(
        post(
            &client,
            &backend,
            "/v1/chat/completions",
            chat("llama", false, 2),
        )
        .await,
    )
    .await;
    let (status, body) = get(&client, &backend, "/sim/stats").await;
    assert_eq!(status, StatusCode::OK);
    let stats: SimStats = serde_json::from_slice(&body).unwrap();
    assert_eq!(stats, backend.stats());
    assert_eq!(
        (stats.received, stats.completed, stats.max_running_seen),
        (1, 1, 1)
    );
}

fn gauges(text: &[u8]) -> Vec<(String, f64)> {
    exposition::parse_gauges(std::str::from_utf8(text).unwrap())
        .into_iter()
        .map(|(name, _, value)| (name, value))
        .collect()
}

#[tokio::test]
async fn metrics_follow_the_real_queue_for_each_kind() {
    // Two slots busy, one request waiting.
    let cases: &[(SimKind, &[(&str, f64)])] = &[
        (
            SimKind::Vllm,
            &[
                ("vllm:num_requests_running", 2.0),
                ("vllm:num_requests_waiting", 1.0),
                ("vllm:kv_cache_usage_perc", 1.0),
            ],
        ),
        (
            SimKind::Sglang,
            &[
                ("sglang:num_running_reqs", 2.0),
                ("sglang:num_queue_reqs", 1.0),
                ("sglang:token_usage", 1.0),
            ],
        ),
        (
            SimKind::Tgi,
            &[("tgi_queue_size", 1.0), ("tgi_batch_current_size", 2.0)],
        ),
        (
            SimKind::Llamacpp,
            &[
                ("llamacpp:requests_processing", 2.0),
                ("llamacpp:requests_deferred", 1.0),
            ],
        ),
    ];
    let client = client();
    for (kind, expected) in cases {
        let backend = start(|args| {
            args.kind = *kind;
            args.slots = 2;
            args.fault = FaultMode::GenerationHangs;
        })
        .await;
        let (_, idle) = get(&client, &backend, "/metrics").await;
        let idle = gauges(&idle);
        assert_eq!(idle.len(), expected.len(), "{kind:?}");
        assert!(idle.iter().all(|(_, value)| *value == 0.0), "{kind:?}");

        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                post(
                    &client,
                    &backend,
                    "/v1/chat/completions",
                    chat("llama", true, 1),
                )
                .await,
            );
        }
        let stats = guarded(backend.wait_for(|stats| stats.waiting == 1)).await;
        assert_eq!(stats.running, 2);
        let (status, text) = get(&client, &backend, "/metrics").await;
        assert_eq!(status, StatusCode::OK, "{kind:?}");
        let expected: Vec<(String, f64)> = expected
            .iter()
            .map(|(name, value)| (name.to_string(), *value))
            .collect();
        assert_eq!(gauges(&text), expected, "{kind:?}");
        if *kind == SimKind::Vllm {
            assert!(
                std::str::from_utf8(&text)
                    .unwrap()
                    .contains("model_name=\"llama\"")
            );
        }
    }
}

#[tokio::test]
async fn llamacpp_slots_show_which_slot_is_busy() {
    let backend = start(|args| {
        args.kind = SimKind::Llamacpp;
        args.slots = 2;
        args.fault = FaultMode::GenerationHangs;
    })
    .await;
    let client = client();
    let (status, body) = get(&client, &backend, "/health").await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &br#"{"status":"ok"}"#[..])
    );
    let _held = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", true, 1),
    )
    .await;
    guarded(backend.wait_for(|stats| stats.running == 1)).await;
    let (status, body) = get(&client, &backend, "/slots").await;
    assert_eq!(status, StatusCode::OK);
    let slots: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let processing: Vec<(u64, bool)> = slots
        .iter()
        .map(|slot| {
            (
                slot["id"].as_u64().unwrap(),
                slot["is_processing"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(processing, [(0, true), (1, false)]);
}

#[tokio::test]
async fn each_kind_answers_health_where_the_real_server_does() {
    let client = client();
    // (kind, path, status)
    let cases = [
        (SimKind::Vllm, "/health", StatusCode::OK),
        (SimKind::Vllm, "/slots", StatusCode::NOT_FOUND),
        (SimKind::Tgi, "/health", StatusCode::OK),
        (SimKind::Sglang, "/health", StatusCode::OK),
        (SimKind::Openai, "/health", StatusCode::OK),
        (SimKind::Openai, "/metrics", StatusCode::NOT_FOUND),
        (SimKind::Ollama, "/", StatusCode::OK),
        (SimKind::Ollama, "/api/tags", StatusCode::OK),
        (SimKind::Ollama, "/health", StatusCode::NOT_FOUND),
        (SimKind::Ollama, "/metrics", StatusCode::NOT_FOUND),
        (SimKind::Ollama, "/v1/models", StatusCode::OK),
    ];
    for (kind, path, status) in cases {
        let backend = start(|args| args.kind = kind).await;
        let (got, body) = get(&client, &backend, path).await;
        assert_eq!(got, status, "{kind:?} {path}");
        match (kind, path) {
            (SimKind::Ollama, "/") => assert_eq!(&body[..], b"Ollama is running"),
            (SimKind::Ollama, "/api/tags") => {
                let tags: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(tags["models"][1]["name"], "qwen");
            }
            (_, "/v1/models") => {
                let models: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(models["object"], "list");
                assert_eq!(models["data"][0]["id"], "llama");
            }
            _ => {}
        }
    }
    for kind in [
        SimKind::Vllm,
        SimKind::Sglang,
        SimKind::Tgi,
        SimKind::Llamacpp,
        SimKind::Ollama,
        SimKind::Openai,
    ] {
        let backend = start(|args| args.kind = kind).await;
        assert_eq!(
            get(&client, &backend, kind.health_path()).await.0,
            StatusCode::OK,
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn speaks_h2c_too() {
    let backend = start(|_| {}).await;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = post(
        &client,
        &backend,
        "/v1/chat/completions",
        chat("llama", true, 2),
    )
    .await;
    assert_eq!(response.version(), Version::HTTP_2);
    let mut events = Events::new(response);
    assert_eq!(content(&events.next_chunk().await), "tok1 ");
    assert_eq!(content(&events.next_chunk().await), "tok2 ");
    events.next_chunk().await;
    assert_eq!(events.next().await.unwrap().as_deref(), Some("[DONE]"));

    // h2 resets the stream when a generation dies: the client sees an error, not an end.
    backend
        .control(ControlChange {
            fault: Some(FaultMode::DieMidStream),
            ..ControlChange::default()
        })
        .unwrap();
    let mut events = Events::new(
        post(
            &client,
            &backend,
            "/v1/chat/completions",
            chat("llama", true, 9),
        )
        .await,
    );
    let mut outcome = events.next().await;
    while let Ok(Some(_)) = outcome {
        outcome = events.next().await;
    }
    assert!(outcome.is_err());
}

#[tokio::test]
async fn serve_returns_once_shutdown_is_asked() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (shutdown, watch_shutdown) = watch::channel(false);
    let server = tokio::spawn(serve(listener, SimBackendArgs::new(["m"]), watch_shutdown));
    shutdown.send(true).unwrap();
    guarded(server).await.unwrap().unwrap();
}

#[test]
fn ready_file_names_the_address_and_pid() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ready.json");
    write_ready_file(&path, "127.0.0.1:4242".parse().unwrap()).unwrap();
    let ready: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(ready["listen"], "127.0.0.1:4242");
    assert_eq!(ready["pid"], std::process::id());
}

#[test]
fn command_line_parses_and_validates() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimBackendArgs,
    }
    let cli = Cli::try_parse_from([
        "sim",
        "--model",
        "a",
        "--model",
        "b",
        "--kind",
        "llamacpp",
        "--fault",
        "generation-hangs",
        "--fail-rate",
        "0.25",
        "--slots",
        "2",
    ])
    .unwrap();
    assert_eq!(cli.args.models, ["a", "b"]);
    assert_eq!(cli.args.kind, SimKind::Llamacpp);
    assert_eq!(cli.args.fault, FaultMode::GenerationHangs);
    assert_eq!(
        (cli.args.fail_rate, cli.args.slots, cli.args.queue_limit),
        (0.25, 2, 64)
    );
    assert_eq!(cli.args.listen, "127.0.0.1:0".parse().unwrap());
    for bad in [
        &["sim"][..],
        &["sim", "--model", "a", "--fail-rate", "1.5"],
        &["sim", "--model", "a", "--tokens-per-s", "0"],
        &["sim", "--model", "a", "--kind", "triton"],
        &["sim", "--model", "a", "--fault", "melt"],
    ] {
        assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
    }
}
