//! The HTTP shell: accepts connections (HTTP/1.1 and h2c, hyper-util's auto builder), routes,
//! reads bounded bodies, and drives generations on the clock. Decisions are made in `engine`
//! through `state`; wire formats come from `openai` and `exposition`.

use std::{
    convert::Infallible,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Response, StatusCode,
    header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER},
};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::debug;

use super::{
    ControlChange, FaultMode, MAX_BODY_BYTES, SimKind, TOKENS_BEFORE_DEATH,
    engine::{Outcome, effective_max_tokens},
    exposition,
    openai::{self, Completion, Endpoint, GenerationRequest, RequestError},
    state::{Admitted, Shared, Verdict},
};

/// How a generation stream ends abnormally: hyper resets the stream or closes the connection.
#[derive(Debug, thiserror::Error)]
#[error("simulated backend died mid-stream")]
pub struct StreamAborted;

type SimBody = UnsyncBoxBody<Bytes, StreamAborted>;

/// Frames a generation task produces, in order; the task notices the client leaving when the
/// receiver (this body, owned by hyper) is dropped.
struct GenerationBody {
    frames: mpsc::Receiver<Result<Bytes, StreamAborted>>,
}

impl Body for GenerationBody {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        self.frames
            .poll_recv(cx)
            .map(|frame| frame.map(|frame| frame.map(Frame::data)))
    }
}

type FrameSender = mpsc::Sender<Result<Bytes, StreamAborted>>;

/// Chunks buffered between a generation and hyper: a few, so a slow reader slows generation
/// down the way TCP back-pressure does on a real server.
const STREAM_BUFFER: usize = 16;

/// Least time between a dying stream's last token and the reset; see `stream_generation`.
const DEATH_FLUSH_GRACE: Duration = Duration::from_millis(20);

/// After shutdown is asked, how long open connections get to finish; hanging streams never do.
const GRACE: Duration = Duration::from_secs(1);

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    debug!(%error, "sim-backend accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            changed = shutdown.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
        };
        let _ = stream.set_nodelay(true);
        let service_state = shared.clone();
        let service = service_fn(move |request| {
            let shared = service_state.clone();
            async move { Ok::<_, Infallible>(route(shared, request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, %peer, "sim-backend connection ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
    // Dropping the set aborts what is left, hung streams included.
    connections.shutdown().await;
    Ok(())
}

async fn route(shared: Arc<Shared>, request: Request<Incoming>) -> Response<SimBody> {
    let kind = shared.fixed.kind;
    let method = request.method().clone();
    match (method, request.uri().path()) {
        (Method::POST, "/v1/chat/completions") => generate(shared, Endpoint::Chat, request).await,
        (Method::POST, "/v1/completions") => generate(shared, Endpoint::Completions, request).await,
        (Method::POST, "/v1/embeddings") => embed(shared, request).await,
        (Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &openai::model_list(&shared.fixed.models, unix_now()),
        ),
        (Method::GET, "/health") if kind != SimKind::Ollama => match kind {
            // llama.cpp answers with a status object, the others with an empty 200.
            SimKind::Llamacpp => json_response(StatusCode::OK, &json!({"status": "ok"})),
            _ => respond(StatusCode::OK, None, empty()),
        },
        (Method::GET, "/") if kind == SimKind::Ollama => respond(
            StatusCode::OK,
            Some("text/plain; charset=utf-8"),
            full("Ollama is running"),
        ),
        (Method::GET, "/api/tags") if kind == SimKind::Ollama => {
            json_response(StatusCode::OK, &ollama_tags(&shared.fixed.models))
        }
        (Method::GET, "/metrics") => {
            let model = shared.fixed.models.first().map_or("", String::as_str);
            match exposition::metrics_text(kind, model, &shared.load()) {
                Some(text) => respond(
                    StatusCode::OK,
                    Some("text/plain; version=0.0.4; charset=utf-8"),
                    full(text),
                ),
                None => not_found(),
            }
        }
        (Method::GET, "/slots") if kind == SimKind::Llamacpp => {
            json_response(StatusCode::OK, &exposition::slots_json(&shared.load()))
        }
        (Method::GET, "/sim/stats") => json_response(StatusCode::OK, &json!(shared.stats())),
        (Method::POST, "/sim/control") => control(shared, request).await,
        _ => not_found(),
    }
}

async fn generate(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    request: Request<Incoming>,
) -> Response<SimBody> {
    shared.received();
    let parsed = match read_body(request)
        .await
        .and_then(|body| openai::parse_request(&body, &shared.fixed.models))
    {
        Ok(parsed) => parsed,
        Err(error) => {
            shared.ended(Outcome::Invalid);
            return json_response(error.status(), &error.to_json());
        }
    };
    let fault = match shared.verdict() {
        Verdict::Unavailable => return unavailable(),
        Verdict::InjectedError => return injected_error(),
        Verdict::Serve(fault) => fault,
    };
    let plan = Plan::new(&shared, endpoint, &parsed, fault);

    if fault == FaultMode::HangAfterHeaders {
        let in_flight = shared.unslotted();
        let (frames, body) = generation_channel();
        tokio::spawn(async move {
            frames.closed().await;
            drop(in_flight);
        });
        return ok_headers(parsed.stream, body);
    }

    let Some(admitted) = shared.admit() else {
        return queue_full();
    };
    if parsed.stream {
        // Headers go out at once, as vLLM does: queueing shows as a later first chunk.
        let (frames, body) = generation_channel();
        tokio::spawn(stream_generation(admitted, frames, plan));
        ok_headers(true, body)
    } else {
        complete(admitted, plan).await
    }
}

/// What one generation will do, fixed on arrival.
struct Plan {
    completion: Completion,
    tokens: u32,
    fault: FaultMode,
    include_usage: bool,
}

impl Plan {
    fn new(
        shared: &Shared,
        endpoint: Endpoint,
        request: &GenerationRequest,
        fault: FaultMode,
    ) -> Plan {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        };
        Plan {
            completion: Completion {
                endpoint,
                id: format!("{prefix}-sim-{}", shared.request_id()),
                model: request.model.clone(),
                created: unix_now(),
                prompt_tokens: request.prompt_tokens,
            },
            tokens: effective_max_tokens(request.max_tokens, shared.fixed.default_max_tokens),
            fault,
            include_usage: request.include_usage,
        }
    }

    /// Tokens actually produced: a dying stream stops early.
    fn tokens_produced(&self) -> u32 {
        match self.fault {
            FaultMode::DieMidStream => self.tokens.min(TOKENS_BEFORE_DEATH),
            _ => self.tokens,
        }
    }
}

/// Produces one streamed answer into `frames`, each chunk at its due time. Ends (and frees the
/// slot, counted cancelled) as soon as hyper drops the body.
async fn stream_generation(admitted: Admitted, frames: FrameSender, plan: Plan) {
    let in_flight = tokio::select! {
        in_flight = admitted.into_running() => in_flight,
        () = frames.closed() => return,
    };
    if plan.fault == FaultMode::GenerationHangs {
        frames.closed().await;
        return;
    }
    let schedule = in_flight.schedule(plan.tokens);
    for index in 0..plan.tokens_produced() {
        let due = schedule.due(index);
        // Timers are millisecond-grained: tokens already due go out without one, so fast
        // rates keep their throughput (each still its own frame).
        if due > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = frames.closed() => return,
            }
        }
        let chunk = openai::sse_event(&plan.completion.token_chunk(index));
        if frames.send(Ok(Bytes::from(chunk))).await.is_err() {
            return;
        }
    }
    if plan.fault == FaultMode::DieMidStream {
        // A real server that dies has already flushed the tokens it produced. Let hyper take
        // every buffered frame, then wait until the next token would be due (and at least a
        // moment, so hyper flushes what it took), before the error makes it cut the connection.
        let Ok(drained) = frames.reserve_many(STREAM_BUFFER).await else {
            return;
        };
        drop(drained);
        let death = schedule
            .due(plan.tokens_produced())
            .max(Instant::now() + DEATH_FLUSH_GRACE);
        tokio::select! {
            () = tokio::time::sleep_until(death.into()) => {}
            () = frames.closed() => return,
        }
        in_flight.finish(Outcome::Failed);
        let _ = frames.send(Err(StreamAborted)).await;
        return;
    }
    let mut tail = vec![openai::sse_event(&plan.completion.finish_chunk())];
    if plan.include_usage {
        tail.push(openai::sse_event(&plan.completion.usage_chunk(plan.tokens)));
    }
    tail.push(openai::SSE_DONE.to_string());
    for event in tail {
        if frames.send(Ok(Bytes::from(event))).await.is_err() {
            return;
        }
    }
    in_flight.finish(Outcome::Completed);
}

/// Produces one non-streamed answer after the whole generation time. If hyper drops this
/// future (the client left), the guards inside free the slot and count it cancelled.
async fn complete(admitted: Admitted, plan: Plan) -> Response<SimBody> {
    let in_flight = admitted.into_running().await;
    if plan.fault == FaultMode::GenerationHangs {
        return std::future::pending().await;
    }
    let schedule = in_flight.schedule(plan.tokens_produced());
    tokio::time::sleep_until(schedule.finished_at().into()).await;
    if plan.fault == FaultMode::DieMidStream {
        in_flight.finish(Outcome::Failed);
        // The pause lets hyper flush the headers first: the cut comes after them.
        let body = futures_util::stream::once(async {
            tokio::time::sleep(DEATH_FLUSH_GRACE).await;
            Err::<Frame<Bytes>, _>(StreamAborted)
        });
        return respond(
            StatusCode::OK,
            Some("application/json"),
            http_body_util::StreamBody::new(body).boxed_unsync(),
        );
    }
    in_flight.finish(Outcome::Completed);
    json_response(StatusCode::OK, &plan.completion.full(plan.tokens))
}

async fn embed(shared: Arc<Shared>, request: Request<Incoming>) -> Response<SimBody> {
    shared.received();
    let parsed = match read_body(request)
        .await
        .and_then(|body| openai::parse_request(&body, &shared.fixed.models))
    {
        Ok(parsed) => parsed,
        Err(error) => {
            shared.ended(Outcome::Invalid);
            return json_response(error.status(), &error.to_json());
        }
    };
    match shared.verdict() {
        Verdict::Unavailable => unavailable(),
        Verdict::InjectedError => injected_error(),
        // Embeddings are quick and take no slot; only the refusals above apply to them.
        Verdict::Serve(_) => {
            shared.ended(Outcome::Completed);
            json_response(
                StatusCode::OK,
                &openai::embeddings(&parsed.model, parsed.prompt_tokens),
            )
        }
    }
}

async fn control(shared: Arc<Shared>, request: Request<Incoming>) -> Response<SimBody> {
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(error) => return json_response(error.status(), &error.to_json()),
    };
    let change: ControlChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(error) => return bad_request(&error.to_string()),
    };
    match shared.change_control(change) {
        Ok(control) => json_response(StatusCode::OK, &json!(control)),
        Err(error) => bad_request(&error.to_string()),
    }
}

/// Reads a whole request body, refusing more than [`MAX_BODY_BYTES`].
async fn read_body(request: Request<Incoming>) -> Result<Bytes, RequestError> {
    // No early refusal on Content-Length: refusing while the client is still sending makes the
    // close a reset, which can destroy the 413 before the client reads it.
    match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(RequestError::BodyTooLarge {
            limit: MAX_BODY_BYTES,
        }),
        Err(error) => Err(RequestError::InvalidJson {
            detail: format!("cannot read the body: {error}"),
        }),
    }
}

fn generation_channel() -> (FrameSender, SimBody) {
    let (frames, receiver) = mpsc::channel(STREAM_BUFFER);
    (frames, GenerationBody { frames: receiver }.boxed_unsync())
}

fn ok_headers(stream: bool, body: SimBody) -> Response<SimBody> {
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut response = respond(StatusCode::OK, Some(content_type), body);
    if stream {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

fn unavailable() -> Response<SimBody> {
    let mut response = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &openai::error_json(
            "the simulated backend is unavailable",
            "server_error",
            None,
            Some("unavailable"),
        ),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn queue_full() -> Response<SimBody> {
    let mut response = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &openai::error_json(
            "the request queue is full",
            "server_error",
            None,
            Some("queue_full"),
        ),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn injected_error() -> Response<SimBody> {
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &openai::error_json(
            "simulated internal error",
            "server_error",
            None,
            Some("injected_failure"),
        ),
    )
}

fn bad_request(message: &str) -> Response<SimBody> {
    json_response(
        StatusCode::BAD_REQUEST,
        &openai::error_json(message, "invalid_request_error", None, None),
    )
}

fn not_found() -> Response<SimBody> {
    json_response(
        StatusCode::NOT_FOUND,
        &openai::error_json("not found", "invalid_request_error", None, None),
    )
}

fn ollama_tags(models: &[String]) -> Value {
    let models: Vec<Value> = models
        .iter()
        .map(|model| {
            json!({
                "name": model,
                "model": model,
                "modified_at": "2024-01-01T00:00:00Z",
                "size": 0,
                "digest": "sim",
                "details": {"format": "gguf", "family": "sim"},
            })
        })
        .collect();
    json!({ "models": models })
}

fn json_response(status: StatusCode, value: &Value) -> Response<SimBody> {
    respond(status, Some("application/json"), full(value.to_string()))
}

fn respond(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: SimBody,
) -> Response<SimBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

fn full(bytes: impl Into<Bytes>) -> SimBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> SimBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
