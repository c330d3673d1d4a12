//! The relay end to end, through the real network path: a relay started from TOML with real
//! listeners (HTTPS h1/h2, HTTP/3, admin) in front of simulated backends, and real clients.
//!
//! Each test asserts what a client and the backends observe — statuses, OpenAI error codes,
//! SSE framing, which backend saw and finished which request, cancellations — and orders
//! events by state (`SimBackend::wait_for`, sim stats, certificate generations), never by
//! wall-clock thresholds. The sims are fast unless a test needs a slow token rate.

mod relay_support;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use meridian::sim_backend::{ControlChange, FaultMode, TOKENS_BEFORE_DEATH};
use relay_support::*;

/// The whole text of a streamed response, from its first chunk on.
async fn rest_after(first: Bytes, response: &mut Response) -> String {
    let rest = response
        .text()
        .await
        .expect("the stream ends without a transport error");
    format!(
        "{}{rest}",
        String::from_utf8(first.to_vec()).expect("UTF-8")
    )
}

/// The token chunks' text, in order (chat completion chunks).
fn streamed_content(payloads: &[String]) -> String {
    payloads
        .iter()
        .filter(|p| p.as_str() != "[DONE]")
        .filter_map(|p| {
            let chunk: serde_json::Value = serde_json::from_str(p).expect("chunk is JSON");
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Streaming and plain completions over every front
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_arrives_incrementally_over_h1_h2_and_h3() {
    // 10 tokens/s: 100 ms between chunks, so a relay that buffered would show the request
    // finished at the backend by the time the client saw anything.
    let slow = sim(&[MODEL], |args| args.tokens_per_s = 10.0).await;
    let relay = TestRelay::start(&[backend("a", slow.url(), &[MODEL], 4)], "").await;
    let mut before = probed(&slow).await;

    for proto in ALL_PROTOCOLS {
        let mut client = relay.client(proto).await;
        let mut response = client.chat(MODEL, true, 5).await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{proto:?}");
        assert!(
            response.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"),
            "{proto:?}: {:?}",
            response.headers
        );
        if proto != Proto::H3 {
            assert_eq!(
                response.headers[header::ALT_SVC],
                format!("h3=\":{}\"; ma=86400", relay.h3.port()),
                "{proto:?}"
            );
        }

        let first = response.chunk().await.unwrap().expect("a first chunk");
        let at_first_chunk = slow.stats();
        assert!(first.starts_with(b"data: "), "{proto:?}: {first:?}");
        assert_eq!(
            (at_first_chunk.running, at_first_chunk.completed),
            (1, before.completed),
            "{proto:?}: the first chunk must reach the client while the backend still generates"
        );

        let text = rest_after(first, &mut response).await;
        let payloads = sse_payloads(&text);
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "{proto:?}: {text}"
        );
        assert_eq!(
            streamed_content(&payloads),
            "tok1 tok2 tok3 tok4 tok5 ",
            "{proto:?}"
        );
        before = within(
            "the backend finishes the stream",
            slow.wait_for(|s| s.completed == before.completed + 1 && s.running == 0),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_completion_is_json_over_h1_h2_and_h3() {
    let fast = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(&[backend("a", fast.url(), &[MODEL], 4)], "").await;
    let before = probed(&fast).await;

    for proto in ALL_PROTOCOLS {
        let mut client = relay.client(proto).await;
        let response = client.chat(MODEL, false, 3).await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{proto:?}");
        assert_eq!(
            response.headers[header::CONTENT_TYPE],
            "application/json",
            "{proto:?}"
        );
        if proto != Proto::H3 {
            assert_eq!(
                response.headers[header::ALT_SVC],
                format!("h3=\":{}\"; ma=86400", relay.h3.port()),
                "{proto:?}"
            );
        } else {
            assert!(response.headers.get(header::ALT_SVC).is_none());
        }
        let json = response.json().await;
        assert_eq!(json["object"], "chat.completion", "{proto:?}: {json}");
        assert_eq!(json["model"], MODEL);
        assert_eq!(json["choices"][0]["message"]["content"], "tok1 tok2 tok3 ");
    }
    assert_eq!(fast.stats().completed, before.completed + 3);
}

// ---------------------------------------------------------------------------------------------
// 2. Model list and routing by model
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_the_union_and_requests_reach_only_backends_serving_their_model() {
    let alpha = sim(&["alpha"], |_| {}).await;
    let beta = sim(&["beta"], |_| {}).await;
    let relay = TestRelay::start(
        &[
            backend("a", alpha.url(), &["alpha"], 4),
            backend("b", beta.url(), &["beta"], 4),
        ],
        "",
    )
    .await;
    let (alpha0, beta0) = (probed(&alpha).await, probed(&beta).await);

    let mut client = relay.client(Proto::H2).await;
    let list = client.get("/v1/models").await.unwrap().json().await;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta"], "{list}");

    for i in 0..9 {
        let model = if i % 3 == 0 { "beta" } else { "alpha" };
        let response = client.chat(model, i % 2 == 0, 2).await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{model}");
        let mut response = response;
        let text = response.text().await.unwrap();
        assert!(text.contains(&format!("\"model\":\"{model}\"")), "{text}");
    }
    let (alpha1, beta1) = (alpha.stats(), beta.stats());
    assert_eq!(alpha1.received - alpha0.received, 6, "alpha: {alpha1:?}");
    assert_eq!(beta1.received - beta0.received, 3, "beta: {beta1:?}");
    assert_eq!(
        alpha1.invalid + beta1.invalid,
        0,
        "a backend got a model it does not serve"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A backend dying mid-stream
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_dying_mid_stream_ends_the_sse_stream_with_an_error_event() {
    let dying = sim(&[MODEL], |args| args.fault = FaultMode::DieMidStream).await;
    let relay = TestRelay::start(
        &[backend("a", dying.url(), &[MODEL], 4)],
        &format!("{QUIET_HEALTH}eject_after_failures = 10\n"),
    )
    .await;
    let mut before = probed(&dying).await;

    for proto in ALL_PROTOCOLS {
        let mut client = relay.client(proto).await;
        let mut response = client.chat(MODEL, true, 10).await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{proto:?}");
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{proto:?}: the stream must end cleanly, got {e}"));
        let payloads = sse_payloads(&text);
        let (last, tokens) = payloads.split_last().expect("some events");
        assert_eq!(
            tokens.len(),
            TOKENS_BEFORE_DEATH as usize,
            "{proto:?}: {text}"
        );
        assert!(!payloads.iter().any(|p| p == "[DONE]"), "{proto:?}: {text}");
        let error: serde_json::Value = serde_json::from_str(last).expect("error event is JSON");
        assert_openai_error(&error, "backend_error");
        before = within(
            "the backend counts its death",
            dying.wait_for(|s| s.failed == before.failed + 1),
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Retries that are safe: refused before any body, connect failed
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_before_body_is_retried_on_another_backend() {
    let refusing = sim(&[MODEL], |args| {
        args.fault = FaultMode::UnavailableBeforeBody;
    })
    .await;
    let healthy = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(
        &[
            backend("a", refusing.url(), &[MODEL], 4),
            backend("b", healthy.url(), &[MODEL], 4),
        ],
        "",
    )
    .await;
    let (a0, b0) = (probed(&refusing).await, probed(&healthy).await);

    // The balancer picks A for about half the requests while A is not paused: send until A
    // got one. Every request must succeed, including that one.
    let mut client = relay.client(Proto::H2).await;
    let mut sent = 0;
    while refusing.stats().received == a0.received {
        assert!(sent < 40, "the balancer never picked backend a");
        let response = client.chat(MODEL, sent % 2 == 0, 2).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        let mut response = response;
        assert!(response.text().await.unwrap().contains("tok2"));
        sent += 1;
    }
    let (a1, b1) = (refusing.stats(), healthy.stats());
    assert_eq!(a1.received - a0.received, 1, "{a1:?}");
    assert_eq!(a1.completed, a0.completed, "a refused: it finished nothing");
    assert_eq!(
        b1.completed - b0.completed,
        sent,
        "b finished every request: {b1:?}"
    );
    let metrics = relay.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "meridian_relay_retries_total",
            &[("backend", "b")]
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_backend() {
    let healthy = sim(&[MODEL], |_| {}).await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let relay = TestRelay::start(
        &[
            backend("a", dead, &[MODEL], 4),
            backend("b", healthy.url(), &[MODEL], 4),
        ],
        "",
    )
    .await;
    let b0 = probed(&healthy).await;

    let mut client = relay.client(Proto::H1).await;
    let mut sent = 0;
    loop {
        assert!(sent < 40, "the balancer never picked backend a");
        let mut response = client.chat(MODEL, false, 2).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert!(response.text().await.unwrap().contains("tok2"));
        sent += 1;
        let metrics = relay.metrics().await;
        if metric_sum(
            &metrics,
            "meridian_relay_retries_total",
            &[("backend", "b")],
        ) >= 1.0
        {
            break;
        }
    }
    assert_eq!(healthy.stats().completed - b0.completed, sent);
    let a = relay.backend_view("a").await;
    assert!(
        a["consecutive_failures"].as_u64().unwrap_or(0) >= 1 || !a["ejected_for_ms"].is_null(),
        "the connect failure was not held against a: {a}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Time to first byte
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_first_byte_in_time_is_a_504_and_cancels_the_generation() {
    let hanging = sim(&[MODEL], |args| args.fault = FaultMode::GenerationHangs).await;
    let relay = TestRelay::start(
        &[backend("a", hanging.url(), &[MODEL], 4)],
        "[timeouts]\nfirst_byte_ms = 300\n",
    )
    .await;
    // The deep probe hangs too (for its 60 s timeout): count from when it arrived.
    let before = within(
        "the deep probe arrives",
        hanging.wait_for(|s| s.received >= 1),
    )
    .await;

    // Streaming: headers come at once, the first token never does. Not streaming: nothing
    // comes at all.
    for (proto, stream) in [(Proto::H2, true), (Proto::H1, false), (Proto::H3, true)] {
        let mut client = relay.client(proto).await;
        let response = client.chat(MODEL, stream, 5).await.unwrap();
        assert_eq!(
            response.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{proto:?} stream={stream}"
        );
        assert_eq!(response.headers[header::CONTENT_TYPE], "application/json");
        assert_openai_error(&response.json().await, "backend_timeout");
    }
    let after = within(
        "the backend sees all three requests cancelled",
        hanging.wait_for(|s| s.cancelled >= before.cancelled + 3),
    )
    .await;
    assert_eq!(after.received - before.received, 3);
    assert_eq!(after.completed, 0);
}

// ---------------------------------------------------------------------------------------------
// 6. Silence mid-stream
// ---------------------------------------------------------------------------------------------

/// The sim's control applies to new generations only, so instead of slowing a running stream
/// the backend is slow from the start: a quick first token (within the TTFT limit) and then
/// 2 s between tokens, far beyond the 300 ms idle limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_mid_stream_ends_it_with_a_timeout_event_and_cancels_upstream() {
    let stalling = sim(&[MODEL], |args| args.tokens_per_s = 0.5).await;
    let relay = TestRelay::start(
        &[backend("a", stalling.url(), &[MODEL], 4)],
        "[timeouts]\nidle_ms = 300\n",
    )
    .await;
    let before = probed(&stalling).await;

    let mut client = relay.client(Proto::H2).await;
    let mut response = client.chat(MODEL, true, 5).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let text = response
        .text()
        .await
        .expect("the stream ends cleanly after the timeout event");
    let payloads = sse_payloads(&text);
    assert_eq!(payloads.len(), 2, "one token, then the error: {text}");
    assert_eq!(streamed_content(&payloads[..1]), "tok1 ");
    let error: serde_json::Value = serde_json::from_str(&payloads[1]).unwrap();
    assert_openai_error(&error, "backend_timeout");
    let after = within(
        "the stalled generation is cancelled",
        stalling.wait_for(|s| s.cancelled == before.cancelled + 1 && s.running == 0),
    )
    .await;
    assert_eq!(after.completed, before.completed);
}

// ---------------------------------------------------------------------------------------------
// 7. Shedding
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_region_sheds_with_429_and_retry_after() {
    let single = sim(&[MODEL], |args| {
        args.slots = 1;
        args.tokens_per_s = 5.0;
    })
    .await;
    let relay = TestRelay::start_with(
        &[backend("a", single.url(), &[MODEL], 1)],
        "scrape_interval_ms = 100",
        "[shedding]\nmax_saturation = 0.5\nretry_after_s = 3\n",
    )
    .await;
    let before = probed(&single).await;
    // The deep probe held the only slot a moment ago; the scraped load must have caught up.
    eventually("the region accepts before the test starts", || async {
        relay.admin_json("/region/health").await["accept_new"] == true
    })
    .await;

    let mut holder = relay.client(Proto::H2).await;
    let mut long = holder.chat(MODEL, true, 200).await.unwrap();
    assert_eq!(long.status, StatusCode::OK);
    long.chunk()
        .await
        .unwrap()
        .expect("the long stream started");

    eventually("the region reports saturation", || async {
        let report = relay.admin_json("/region/health").await;
        report["saturation"].as_f64().unwrap_or(0.0) >= 0.5 && report["accept_new"] == false
    })
    .await;

    for proto in ALL_PROTOCOLS {
        let mut client = relay.client(proto).await;
        let response = client.chat(MODEL, true, 2).await.unwrap();
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS, "{proto:?}");
        assert_eq!(response.headers[header::RETRY_AFTER], "3", "{proto:?}");
        let body = response.json().await;
        assert_openai_error(&body, "region_saturated");
        assert_eq!(body["error"]["type"], "rate_limit_error");
    }
    assert_eq!(
        single.stats().received,
        before.received + 1,
        "a shed request reached the backend"
    );

    // Shedding follows the load: once the slot is free, requests are admitted again.
    drop(long);
    drop(holder);
    within(
        "the long stream is cancelled",
        single.wait_for(|s| s.cancelled == before.cancelled + 1 && s.running == 0),
    )
    .await;
    eventually("the region accepts again", || async {
        relay.admin_json("/region/health").await["accept_new"] == true
    })
    .await;
    let mut client = relay.client(Proto::H1).await;
    let response = client.chat(MODEL, false, 1).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// 8. The client going away
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_upstream_generation() {
    let slow = sim(&[MODEL], |args| args.tokens_per_s = 5.0).await;
    let relay = TestRelay::start(&[backend("a", slow.url(), &[MODEL], 4)], "").await;
    let mut before = probed(&slow).await;

    for proto in ALL_PROTOCOLS {
        let mut client = relay.client(proto).await;
        let mut response = client.chat(MODEL, true, 100).await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{proto:?}");
        response.chunk().await.unwrap().expect("a first chunk");
        drop(response);
        drop(client);
        before = within(
            "the backend sees the request cancelled",
            slow.wait_for(|s| s.cancelled == before.cancelled + 1 && s.running == 0),
        )
        .await;
        assert_eq!(before.completed, slow.stats().completed, "{proto:?}");
        eventually(
            "the relay no longer counts the request in flight",
            || async { relay.backend_view("a").await["in_flight"] == 0 },
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Drain
// ---------------------------------------------------------------------------------------------

/// A request made once the drain began must not be served: its connection is refused or
/// closed, its stream refused (GOAWAY), or it gets 503 `relay_draining`.
async fn assert_not_served(outcome: Result<Response, BoxError>, what: &str) {
    if let Ok(response) = outcome {
        assert_eq!(
            response.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: served while draining"
        );
        assert_openai_error(&response.json().await, "relay_draining");
    }
}

/// [`assert_not_served`] for a request on a connection opened now (if it opens at all).
async fn assert_new_connection_not_served(relay: &TestRelay, proto: Proto) {
    let Ok(mut client) = relay.try_client(proto).await else {
        return;
    };
    let outcome = client.chat(MODEL, true, 2).await;
    assert_not_served(outcome, &format!("new {proto:?} connection")).await;
}

/// One slow stream in flight on each of the TCP and QUIC fronts, so both are still up (and
/// must refuse) while the drain waits for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_streams_and_refuses_new_work() {
    let slow = Arc::new(sim(&[MODEL], |args| args.tokens_per_s = 10.0).await);
    let mut relay = TestRelay::start(&[backend("a", slow.url(), &[MODEL], 4)], "").await;
    let before = probed(&slow).await;

    // The h3 stream is the shorter one: it ends well before the h2 stream, and is read after.
    let mut h2 = relay.client(Proto::H2).await;
    let mut h3 = relay.client(Proto::H3).await;
    let mut in_flight = Vec::new();
    for (client, tokens) in [(&mut h2, 20), (&mut h3, 15)] {
        let mut stream = client.chat(MODEL, true, tokens).await.unwrap();
        assert_eq!(stream.status, StatusCode::OK);
        let first = stream.chunk().await.unwrap().expect("a first chunk");
        in_flight.push((first, stream, tokens));
    }

    let proxy = relay.handle().proxy.clone();
    let handle = relay.take_handle();
    let observed = slow.clone();
    let drained = tokio::spawn(async move {
        handle.drain_and_stop(Duration::from_secs(30)).await;
        observed.stats()
    });
    eventually("the drain begins", || async { proxy.is_draining() }).await;

    for proto in ALL_PROTOCOLS {
        assert_new_connection_not_served(&relay, proto).await;
    }
    let outcome = h2.chat(MODEL, true, 2).await;
    assert_not_served(outcome, "new stream on an h2 connection from before").await;
    let outcome = h3.chat(MODEL, true, 2).await;
    assert_not_served(outcome, "new request on an h3 connection from before").await;
    assert!(
        !drained.is_finished(),
        "drain_and_stop returned with streams in flight"
    );

    // The h3 stream is read last, after the backend finished it: a client that reads
    // slowly must still get the whole response (what it has not read sits in its QUIC stack).
    for ((first, mut stream, tokens), proto) in in_flight.into_iter().zip([Proto::H2, Proto::H3]) {
        let rest = stream.text().await.unwrap_or_else(|error| {
            panic!("{proto:?}: the in-flight stream was cut by the drain: {error}")
        });
        let text = format!("{}{rest}", String::from_utf8(first.to_vec()).unwrap());
        let payloads = sse_payloads(&text);
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "{proto:?}: {text}"
        );
        assert_eq!(
            streamed_content(&payloads).matches("tok").count(),
            tokens as usize
        );
    }
    // A client leaves a drained connection once its last response is in.
    drop(h2);
    drop(h3);

    let at_return = within("drain_and_stop returns", drained).await.unwrap();
    assert_eq!(
        (at_return.received, at_return.completed),
        (before.received + 2, before.completed + 2),
        "drain_and_stop returned before the in-flight streams ended, or new work got through"
    );
}

// ---------------------------------------------------------------------------------------------
// 10. The deep probe
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_probe_takes_out_a_backend_whose_generation_hangs() {
    let hanging = sim(&[MODEL], |args| args.fault = FaultMode::GenerationHangs).await;
    let healthy = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(
        &[
            backend("a", hanging.url(), &[MODEL], 4),
            backend("b", healthy.url(), &[MODEL], 4),
        ],
        "[health]\ninterval_ms = 100\ndeep_interval_ms = 100\ndeep_timeout_ms = 200\n\
         eject_after_failures = 2\n\n[timeouts]\nfirst_byte_ms = 5000\n",
    )
    .await;

    eventually("the deep probe takes a out", || async {
        let a = relay.backend_view("a").await;
        a["available"] == false && a["health"] == "down"
    })
    .await;
    assert_eq!(
        relay.backend_view("b").await["available"],
        true,
        "b must stay in"
    );

    let mut client = relay.client(Proto::H2).await;
    for i in 0..10 {
        let mut response = client.chat(MODEL, i % 2 == 0, 2).await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "request {i}");
        assert!(response.text().await.unwrap().contains("tok2"));
    }
    let metrics = relay.metrics().await;
    let responses = |backend| {
        metric_sum(
            &metrics,
            "meridian_relay_responses_total",
            &[("backend", backend)],
        )
    };
    assert_eq!((responses("a"), responses("b")), (0.0, 10.0), "{metrics}");
}

/// A retry with no available backend left goes to one held out only by passive ejection (a
/// guess from recent failures) rather than answering 502: here `b` was ejected for a 500 and
/// has recovered, and `a`, the only available one, refuses connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_nothing_else_left_goes_to_an_ejected_backend() {
    let a = sim(&[MODEL], |_| {}).await;
    let b = sim(&[MODEL], |args| args.fail_rate = 1.0).await;
    let relay = TestRelay::start(
        &[
            backend("a", a.url(), &[MODEL], 4),
            backend("b", b.url(), &[MODEL], 4),
        ],
        &format!("{QUIET_HEALTH}eject_after_failures = 1\nbase_ejection_ms = 300000\n"),
    )
    .await;

    let mut client = relay.client(Proto::H1).await;
    let mut sent = 0;
    while relay.backend_view("b").await["ejected_for_ms"].is_null() {
        assert!(sent < 40, "b was never ejected");
        let _ = client.chat(MODEL, false, 2).await.unwrap().text().await;
        sent += 1;
    }
    b.control(ControlChange {
        fail_rate: Some(0.0),
        ..ControlChange::default()
    })
    .unwrap();
    a.shutdown().await.unwrap();
    assert_eq!(relay.backend_view("a").await["available"], true);

    let served_before = b.stats().completed;
    let mut response = client.chat(MODEL, false, 2).await.unwrap();
    let text = response.text().await.unwrap();
    assert_eq!(response.status, StatusCode::OK, "{text}");
    assert!(text.contains("tok2"), "{text}");
    assert_eq!(b.stats().completed, served_before + 1, "b served it");
    let metrics = relay.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "meridian_relay_retries_total",
            &[("backend", "b")]
        ),
        1.0,
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Bad input
// ---------------------------------------------------------------------------------------------

/// One malformed request and the answer it must get.
struct BadRequest<'a> {
    what: &'a str,
    method: Method,
    path: &'a str,
    content_type: Option<&'a str>,
    body: &'a [u8],
    status: u16,
    code: &'a str,
}

impl<'a> BadRequest<'a> {
    fn post(
        what: &'a str,
        path: &'a str,
        content_type: Option<&'a str>,
        body: &'a [u8],
        status: u16,
        code: &'a str,
    ) -> Self {
        BadRequest {
            what,
            method: Method::POST,
            path,
            content_type,
            body,
            status,
            code,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_an_openai_error() {
    let fast = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(
        &[backend("a", fast.url(), &[MODEL], 4)],
        "[limits]\nmax_request_body_bytes = 1024\nmax_request_header_bytes = 8192\n",
    )
    .await;
    let before = probed(&fast).await;

    let json = Some("application/json");
    let chat = "/v1/chat/completions";
    let oversized = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2048)
    );
    let known_model = format!(r#"{{"model":"{MODEL}"}}"#);
    #[rustfmt::skip]
    let cases = [
        BadRequest::post("malformed JSON", chat, json, b"{nope", 400, "invalid_json"),
        BadRequest::post("no model", chat, json, br#"{"messages":[]}"#, 400, "missing_model"),
        BadRequest::post("model not a string", chat, json, br#"{"model":7}"#, 400, "missing_model"),
        BadRequest::post("unknown model", chat, json, br#"{"model":"nope"}"#, 404, "model_not_found"),
        BadRequest::post("text body", chat, Some("text/plain"), known_model.as_bytes(), 415, "unsupported_media_type"),
        BadRequest::post("no content type", chat, None, known_model.as_bytes(), 415, "unsupported_media_type"),
        BadRequest::post("body over the limit", chat, json, oversized.as_bytes(), 413, "request_too_large"),
        BadRequest::post("invalid UTF-8", chat, json, b"{\"model\":\"\xff\"}", 400, "invalid_json"),
        BadRequest::post("unknown POST path", "/v2/chat", json, known_model.as_bytes(), 404, "not_found"),
        BadRequest::post("POST on the model list", "/v1/models", json, known_model.as_bytes(), 405, "method_not_allowed"),
        BadRequest { method: Method::GET, ..BadRequest::post("unknown path", "/nope", None, b"", 404, "not_found") },
    ];
    for proto in ALL_PROTOCOLS {
        for case in &cases {
            let what = case.what;
            let mut request = Request::builder()
                .method(case.method.clone())
                .uri(case.path);
            if let Some(content_type) = case.content_type {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            let request = request.body(Bytes::copy_from_slice(case.body)).unwrap();
            let mut client = relay.client(proto).await;
            let response = client
                .send(request)
                .await
                .unwrap_or_else(|e| panic!("{proto:?} {what}: {e}"));
            assert_eq!(response.status.as_u16(), case.status, "{proto:?} {what}");
            assert_eq!(
                response.headers[header::CONTENT_TYPE],
                "application/json",
                "{proto:?} {what}"
            );
            let body = response.json().await;
            assert_openai_error(&body, case.code);
            if case.code.ends_with("model") || case.code == "model_not_found" {
                assert_eq!(body["error"]["param"], "model", "{proto:?} {what}: {body}");
            }
        }
    }
    assert_eq!(
        fast.stats().received,
        before.received,
        "a bad request reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_are_refused_and_the_relay_keeps_serving() {
    let fast = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(
        &[backend("a", fast.url(), &[MODEL], 4)],
        "[limits]\nmax_request_header_bytes = 8192\n",
    )
    .await;
    let big = "x".repeat(16 << 10);
    let request = || {
        Request::get("/v1/models")
            .header("x-big", big.as_str())
            .body(Bytes::new())
            .unwrap()
    };

    // HTTP/1.1: hyper answers 431 itself, before the relay sees a request.
    let mut h1 = relay.client(Proto::H1).await;
    let response = h1.send(request()).await.expect("h1 gets an answer");
    assert_eq!(response.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // HTTP/2: the header list is over the advertised SETTINGS_MAX_HEADER_LIST_SIZE; the h2
    // server answers 431 and resets only that stream, so the connection goes on serving.
    let mut h2 = relay.client(Proto::H2).await;
    let response = h2.send(request()).await.expect("h2 gets an answer");
    assert_eq!(response.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let response = h2.get("/v1/models").await.unwrap();
    assert_eq!(
        response.status,
        StatusCode::OK,
        "the h2 connection after the 431"
    );

    for proto in ALL_PROTOCOLS {
        let mut client = relay.client(proto).await;
        let response = client.get("/v1/models").await.unwrap();
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{proto:?} after the big headers"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 12. What the relay reports
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_health_and_metrics_reflect_the_traffic() {
    let fast = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start_with(
        &[backend("a", fast.url(), &[MODEL], 4)],
        "scrape_interval_ms = 100",
        "",
    )
    .await;
    probed(&fast).await;

    let mut client = relay.client(Proto::H2).await;
    for i in 0..6 {
        let mut response = client.chat(MODEL, i % 2 == 0, 3).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        response.text().await.unwrap();
    }

    eventually("the report shows headroom from fresh signals", || async {
        let report = relay.admin_json("/region/health").await;
        report["models"][MODEL]["headroom_units"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    })
    .await;
    let report = relay.admin_json("/region/health").await;
    assert!(
        report["models"][MODEL]["headroom_units"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["version"], 1, "{report}");
    assert_eq!(report["region"], "test");
    assert_eq!(report["state"], "ok", "{report}");
    assert_eq!(report["accept_new"], true);
    let model = &report["models"][MODEL];
    assert_eq!(model["healthy_backends"], 1, "{report}");
    assert_eq!(model["total_backends"], 1);
    assert_eq!(model["capacity_units"], 4);
    let fraction = model["headroom_fraction"].as_f64().unwrap();
    assert!(fraction > 0.0 && fraction <= 1.0, "{report}");
    let (p50, p95) = (
        model["ttft_p50_ms"].as_f64().unwrap(),
        model["ttft_p95_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p95 >= p50, "TTFT percentiles: {report}");
    assert!(
        report["rates"]["requests_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    // The h2 connection's TLS handshake gave a client RTT for its /24.
    let rtt = &report["client_rtt"];
    assert_eq!(rtt[0]["prefix"], "127.0.0.0/24", "{report}");
    assert!(rtt[0]["samples"].as_u64().unwrap() >= 6, "{report}");
    assert!(rtt[0]["rtt_ms"].as_f64().unwrap() >= 0.0, "{report}");
    let sequence = report["sequence"].as_u64().unwrap();
    let next = relay.admin_json("/region/health").await;
    assert!(next["sequence"].as_u64().unwrap() > sequence, "{next}");

    let metrics = relay.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "meridian_relay_responses_total",
            &[("model", MODEL), ("backend", "a"), ("status", "200")]
        ),
        6.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "meridian_relay_first_byte_seconds_count",
            &[("model", MODEL)]
        ),
        6.0,
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE meridian_relay_first_byte_seconds histogram"));
}

// ---------------------------------------------------------------------------------------------
// 13. Certificate reload
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_is_served_to_new_connections_only() {
    let fast = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(&[backend("a", fast.url(), &[MODEL], 4)], "").await;

    let mut before_h2 = relay.client(Proto::H2).await;
    let mut before_h3 = relay.client(Proto::H3).await;
    assert_eq!(before_h2.server_cert, relay.cert_der);
    assert_eq!(before_h3.server_cert, relay.cert_der);

    let next = relay.replace_with_new_pair();
    assert_ne!(next, relay.cert_der);
    eventually(
        "a new TLS connection presents the new certificate",
        || async { relay.client(Proto::H1).await.server_cert == next },
    )
    .await;
    assert_eq!(relay.client(Proto::H2).await.server_cert, next);
    assert_eq!(relay.client(Proto::H3).await.server_cert, next);
    assert_eq!(relay.handle().certs.subscribe().borrow().generation, 2);

    // Connections made before the reload go on with the keys they negotiated.
    for client in [&mut before_h2, &mut before_h3] {
        let response = client.get("/v1/models").await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        let list = response.json().await;
        assert_eq!(list["data"][0]["id"], MODEL);
    }
}

// ---------------------------------------------------------------------------------------------
// 12. Dead pooled connections and restarts on the same address
// ---------------------------------------------------------------------------------------------

/// How [`KeepAliveDropper`] gets rid of a pooled connection's second completion request.
#[derive(Clone, Copy, Debug)]
enum DeadConnection {
    /// Closes as soon as the request arrives, unread: the kernel answers with a reset, as it
    /// does for a request that lands on a backend process that is gone.
    ResetUnread,
    /// Reads the request, then closes (FIN): a backend that died after taking the request.
    CloseAfterReading,
}

/// A tiny HTTP/1.1 backend that answers the first completion on each connection (keep-alive)
/// and kills the connection when a second one arrives on it: what a relay sees when it
/// reuses a pooled connection to a backend that stopped. Everything else gets an empty 200.
struct KeepAliveDropper {
    url: String,
    served: Arc<std::sync::atomic::AtomicU64>,
    killed: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAliveDropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeepAliveDropper {
    async fn start(mode: DeadConnection) -> KeepAliveDropper {
        use std::sync::atomic::AtomicU64;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicU64::new(0));
        let (s, k) = (served.clone(), killed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, k) = (s.clone(), k.clone());
                tokio::spawn(async move {
                    let _ = serve_until_second_completion(stream, mode, &s, &k).await;
                });
            }
        });
        KeepAliveDropper {
            url,
            served,
            killed,
            task,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn killed(&self) -> u64 {
        self.killed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn serve_until_second_completion(
    mut stream: tokio::net::TcpStream,
    mode: DeadConnection,
    served: &std::sync::atomic::AtomicU64,
    killed: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut completions = 0;
    let mut buffer = Vec::new();
    loop {
        if completions == 1 {
            // The connection is idle in the relay's pool now; the next request on it dies.
            stream.readable().await?;
            if let DeadConnection::CloseAfterReading = mode {
                // Take the whole request in (it is small), so the close is a clean FIN.
                let mut chunk = [0u8; 65536];
                let _ = stream.read(&mut chunk).await?;
            }
            killed.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        buffer.drain(..head_end + length);
        let body = if head.starts_with("post ") && head.contains("/chat/completions") {
            completions += 1;
            served.fetch_add(1, Ordering::SeqCst);
            r#"{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"tok1 tok2"},"finish_reason":"stop"}]}"#
        } else {
            ""
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}

/// A request that goes out on a pooled connection the backend has since dropped never reached
/// it: the relay must send it to another backend, not answer 502.
async fn dead_pooled_connection_is_retried(mode: DeadConnection) {
    let dropper = KeepAliveDropper::start(mode).await;
    let healthy = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(
        &[
            backend("a", dropper.url.clone(), &[MODEL], 4),
            backend("b", healthy.url(), &[MODEL], 4),
        ],
        "",
    )
    .await;
    let b0 = probed(&healthy).await;
    let a0 = dropper.served();

    let mut client = relay.client(Proto::H1).await;
    let mut sent = 0;
    while dropper.killed() == 0 {
        assert!(sent < 60, "the relay never reused its connection to a");
        let mut response = client.chat(MODEL, false, 2).await.unwrap();
        let text = response.text().await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{mode:?}: {text}");
        assert!(text.contains("tok2"), "{text}");
        sent += 1;
    }
    assert!(dropper.served() - a0 >= 1);
    assert_eq!(
        healthy.stats().completed - b0.completed + (dropper.served() - a0),
        sent,
        "every request was answered exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_on_a_reset_pooled_connection_is_retried_on_another_backend() {
    dead_pooled_connection_is_retried(DeadConnection::ResetUnread).await;
}

/// The other side of the rule: a backend that read the request and then closed may have acted
/// on it, so the relay answers 502 rather than risk running it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_read_by_a_backend_that_then_closed_is_not_retried() {
    let dropper = KeepAliveDropper::start(DeadConnection::CloseAfterReading).await;
    let healthy = sim(&[MODEL], |_| {}).await;
    let relay = TestRelay::start(
        &[
            backend("a", dropper.url.clone(), &[MODEL], 4),
            backend("b", healthy.url(), &[MODEL], 4),
        ],
        "",
    )
    .await;
    let b0 = probed(&healthy).await;
    let a0 = dropper.served();

    let mut client = relay.client(Proto::H1).await;
    let mut sent = 0;
    let mut failed = Vec::new();
    while dropper.killed() == 0 {
        assert!(sent < 60, "the relay never reused its connection to a");
        let mut response = client.chat(MODEL, false, 2).await.unwrap();
        let text = response.text().await.unwrap();
        if response.status != StatusCode::OK {
            failed.push((response.status, text));
        }
        sent += 1;
    }
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (status, text) = &failed[0];
    assert_eq!(*status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(text.contains("closed before message completed"), "{text}");
    assert_eq!(
        healthy.stats().completed - b0.completed + (dropper.served() - a0),
        sent - 1,
        "the request a took was not sent to b as well"
    );
}

/// Binds TCP and UDP on the relay's front address, as a restarted relay would.
fn rebind_front(relay: &TestRelay) -> Result<(), String> {
    let tcp = std::net::TcpListener::bind(relay.https).map_err(|e| format!("TCP: {e}"));
    let udp = std::net::UdpSocket::bind(relay.h3).map_err(|e| format!("UDP: {e}"));
    tcp.and(udp).map(|_| ())
}

/// A stopped relay's address can be bound again as soon as `drain_and_stop` returns, even
/// with HTTP/3 connections still open on it: one idle, one with a stream the short grace
/// period cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_relay_frees_its_ports_at_once_even_when_the_grace_runs_out() {
    let slow = sim(&[MODEL], |args| args.tokens_per_s = 5.0).await;
    let mut relay = TestRelay::start(&[backend("a", slow.url(), &[MODEL], 4)], "").await;
    let mut idle = relay.client(Proto::H3).await;
    let mut busy = relay.client(Proto::H3).await;
    let mut tcp = relay.client(Proto::H2).await;
    let response = idle.chat(MODEL, false, 1).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let mut stream = busy.chat(MODEL, true, 50).await.unwrap();
    assert_eq!(stream.status, StatusCode::OK);
    stream.chunk().await.unwrap().expect("a first chunk");
    let tcp_stream = tcp.chat(MODEL, true, 50).await.unwrap();
    assert_eq!(tcp_stream.status, StatusCode::OK);

    let handle = relay.take_handle();
    within(
        "drain_and_stop returns",
        handle.drain_and_stop(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(
        rebind_front(&relay),
        Ok(()),
        "ports still held after the stop"
    );
    drop((idle, busy, tcp, stream, tcp_stream));
}

/// The same after a drain that completes: the open HTTP/3 connection is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_relay_frees_its_ports_at_once() {
    let healthy = sim(&[MODEL], |_| {}).await;
    let mut relay = TestRelay::start(&[backend("a", healthy.url(), &[MODEL], 4)], "").await;
    let mut h3 = relay.client(Proto::H3).await;
    let response = h3.chat(MODEL, false, 1).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);

    let handle = relay.take_handle();
    within(
        "drain_and_stop returns",
        handle.drain_and_stop(Duration::from_secs(30)),
    )
    .await;
    assert_eq!(
        rebind_front(&relay),
        Ok(()),
        "ports still held after the stop"
    );
    drop(h3);
}
