//! The proxy: one client request in, one streamed response out, whatever front carried it.
//!
//! Owns the request path of the relay: routing by path and by the body's `model`, admission
//! (draining, saturation), backend choice (through the [`Pool`]), the retry rules, the four
//! timeouts, and streaming the response through unbuffered. The rules that keep it safe:
//! - a request is retried on another backend only when the backend cannot have started on it
//!   (connect failed, the request was never written, or the connection was reset before any
//!   response: see [`never_processed`]) or refused it before any body (429/503), within the
//!   retry budget;
//! - response headers are held back until the backend's first body byte, so a time-to-first-
//!   token timeout still becomes a clean 504 rather than a broken stream;
//! - once a byte reached the client nothing is retried: a failing SSE stream ends with an
//!   error event, any other body is aborted;
//! - dropping the response body (the client went away) drops the upstream request with it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::client::legacy::Client;

use super::{
    config::model::{BackendIdx, RelayConfig},
    errors::{RelayError, sse_error_event},
    metrics::RelayMetrics,
    pool::{Failure, InFlight, Pool},
    retry::RetryBudget,
    service::{Body, BodyError, ConnInfo, RelayService, ResponseFuture, full_body},
    stats::RequestStats,
    upstream::{self, UpstreamConnector},
};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub struct Proxy {
    config: Arc<RelayConfig>,
    pool: Arc<Pool>,
    client: Client<UpstreamConnector, Body>,
    budget: RetryBudget,
    metrics: Arc<RelayMetrics>,
    stats: Arc<RequestStats>,
    draining: AtomicBool,
    seeds: AtomicU64,
}

/// The [`RelayService`] the fronts call.
#[derive(Clone)]
pub struct ProxyService(pub Arc<Proxy>);

impl RelayService for ProxyService {
    fn call(&self, request: Request<Body>, conn: ConnInfo) -> ResponseFuture {
        let proxy = self.0.clone();
        Box::pin(async move { proxy.handle(request, conn).await })
    }

    fn connection_refused(&self, listener: &'static str) {
        self.0.metrics.connection_refused(listener);
    }
}

/// What one attempt on one backend came to.
enum Attempt {
    Response(Response<Body>),
    /// Safe to try another backend: the failure happened before the backend took the request.
    Retry(RelayError),
    Fail(RelayError),
}

impl Proxy {
    pub fn new(
        config: Arc<RelayConfig>,
        pool: Arc<Pool>,
        metrics: Arc<RelayMetrics>,
        stats: Arc<RequestStats>,
    ) -> Proxy {
        let client = upstream::client(&config);
        let now = Instant::now();
        Proxy {
            budget: RetryBudget::new(&config.retry, now),
            seeds: AtomicU64::new(seed_start()),
            draining: AtomicBool::new(false),
            config,
            pool,
            client,
            metrics,
            stats,
        }
    }

    /// From now on, new requests get 503 and a `Connection: close`; in-flight ones finish.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    async fn handle(self: Arc<Self>, request: Request<Body>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        if let Some(rtt) = conn.rtt
            && self.stats.record_client_rtt(conn.peer.ip(), rtt, started)
        {
            self.metrics.client_rtt_evicted();
        }
        let path = request.uri().path().to_string();
        let result = match (request.method(), path.as_str()) {
            (&Method::GET, "/v1/models") => Ok(self.models_response()),
            (&Method::GET, "/health" | "/healthz") => Ok(self.health_response()),
            (method, "/v1/models") => Err(RelayError::MethodNotAllowed {
                method: method.to_string(),
                path,
            }),
            (&Method::POST, p) if p.starts_with("/v1/") => {
                self.forward(request, &conn, started).await
            }
            (method, _) => Err(RelayError::NotFound {
                method: method.to_string(),
                path,
            }),
        };
        match result {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(peer = %conn.peer, protocol = conn.protocol.as_str(), %error, "request refused");
                self.metrics.request_failed(&error);
                if matches!(
                    error,
                    RelayError::Saturated { .. } | RelayError::Draining { .. }
                ) {
                    self.stats.record_shed(Instant::now());
                }
                error.into_response()
            }
        }
    }

    fn models_response(&self) -> Response<Body> {
        let created = 0;
        let data: Vec<serde_json::Value> = self
            .pool
            .models()
            .into_iter()
            .map(|id| {
                serde_json::json!({
                    "id": id, "object": "model", "created": created,
                    "owned_by": format!("meridian/{}", self.config.region),
                })
            })
            .collect();
        json_response(
            StatusCode::OK,
            &serde_json::json!({ "object": "list", "data": data }),
        )
    }

    fn health_response(&self) -> Response<Body> {
        let status = if self.is_draining() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        json_response(
            status,
            &serde_json::json!({ "region": &*self.config.region, "draining": self.is_draining() }),
        )
    }

    async fn forward(
        &self,
        request: Request<Body>,
        conn: &ConnInfo,
        started: Instant,
    ) -> Result<Response<Body>, RelayError> {
        if self.is_draining() {
            return Err(RelayError::Draining {
                retry_after: self.config.shedding.retry_after,
            });
        }
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !content_type.as_deref().is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        }) {
            return Err(RelayError::UnsupportedMediaType { content_type });
        }
        let (parts, body) = request.into_parts();
        let body = read_body(
            body,
            self.config.limits.max_request_body_bytes,
            self.config.limits.header_read_timeout,
        )
        .await?;
        let model = model_of(&body)?;
        if !self.pool.serves(&model) {
            return Err(RelayError::UnknownModel { model });
        }
        let now = Instant::now();
        let load = self.pool.region_load(now);
        match load.models.iter().find(|m| m.model == model) {
            Some(m) if m.healthy_backends == 0 => {
                return Err(RelayError::NoBackend {
                    model,
                    retry_after: self.config.shedding.retry_after,
                });
            }
            // Shed before sending: a request admitted now would only queue behind full slots.
            Some(m) if m.saturation >= self.config.shedding.max_saturation => {
                return Err(RelayError::Saturated {
                    reason: "backends at capacity",
                    retry_after: self.config.shedding.retry_after,
                });
            }
            _ => {}
        }

        let deadline = started + self.config.timeouts.total;
        self.budget.deposit(now);
        let mut tried: Vec<BackendIdx> = Vec::with_capacity(2);
        let mut last_error = None;
        for attempt in 0..self.config.retry.max_attempts {
            let now = Instant::now();
            if now >= deadline {
                return Err(RelayError::TotalTimeout {
                    after: self.config.timeouts.total,
                });
            }
            if attempt > 0 && !self.budget.try_withdraw(now) {
                self.metrics.retry_denied();
                break;
            }
            let seed = next_seed(&self.seeds);
            // A retry follows an attempt the backend did not act on; with no available backend
            // left, an ejected one may still take it rather than the client getting a 502.
            let Some(backend) = self.pool.pick(&model, &tried, seed, now).or_else(|| {
                (attempt > 0)
                    .then(|| self.pool.pick_held_out(&model, &tried, seed, now))
                    .flatten()
            }) else {
                break;
            };
            if attempt > 0
                && let Some(config) = self.pool.backend(backend)
            {
                self.metrics.retried(&config.id);
            }
            tried.push(backend);
            match self
                .attempt(backend, &parts, body.clone(), &model, conn, deadline)
                .await
            {
                Attempt::Response(response) => return Ok(response),
                Attempt::Retry(error) => last_error = Some(error),
                Attempt::Fail(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or(RelayError::NoBackend {
            model,
            retry_after: self.config.shedding.retry_after,
        }))
    }

    async fn attempt(
        &self,
        backend: BackendIdx,
        parts: &http::request::Parts,
        body: Bytes,
        model: &str,
        conn: &ConnInfo,
        deadline: Instant,
    ) -> Attempt {
        let in_flight = self.pool.begin(backend);
        // Looked up in the pool, not the start-up config: the backend may have been added by a
        // reload, and one removed since `pick` is still there (as a tombstone) to finish on.
        let Some(backend_config) = self.pool.backend(backend) else {
            return Attempt::Retry(RelayError::NoBackend {
                model: model.to_string(),
                retry_after: self.config.shedding.retry_after,
            });
        };
        let backend_id = backend_config.id.clone();
        let upstream = match upstream_request(&backend_config.base_url, parts, body, conn) {
            Ok(request) => request,
            Err(error) => {
                return Attempt::Fail(RelayError::BadGateway {
                    backend: backend_id.to_string(),
                    reason: error,
                });
            }
        };
        let sent = Instant::now();
        let first_byte_limit = self
            .config
            .timeouts
            .first_byte
            .min(deadline.saturating_duration_since(sent));
        let first_byte_deadline = sent + first_byte_limit;

        let response = match tokio::time::timeout_at(
            first_byte_deadline.into(),
            self.client.request(upstream),
        )
        .await
        {
            Err(_elapsed) => {
                self.pool
                    .record_failure(backend, Failure::FirstByteTimeout, Instant::now());
                self.stats.record_timeout(Instant::now());
                return Attempt::Fail(RelayError::FirstByteTimeout {
                    backend: backend_id.to_string(),
                    after: first_byte_limit,
                });
            }
            Ok(Err(error)) if error.is_connect() => {
                // Nothing reached the backend: safe on another one.
                self.pool
                    .record_failure(backend, Failure::Connect, Instant::now());
                return Attempt::Retry(RelayError::BadGateway {
                    backend: backend_id.to_string(),
                    reason: format!("connect failed: {error}"),
                });
            }
            Ok(Err(error)) => {
                let reason = super::probe::DisplayChain(&error).to_string();
                self.pool
                    .record_failure(backend, Failure::ResetBeforeResponse, Instant::now());
                if let Some(unprocessed) = never_processed(&error) {
                    tracing::debug!(backend = %backend_id, ?unprocessed, %reason, "request never reached the backend; trying another");
                    return Attempt::Retry(RelayError::BadGateway {
                        backend: backend_id.to_string(),
                        reason,
                    });
                }
                // The backend may have read the request and acted on it: a retry could run it
                // twice. The whole cause chain goes into the reason: "client error
                // (SendRequest)" alone does not say whether the backend closed or reset.
                self.stats.record_error(Instant::now());
                return Attempt::Fail(RelayError::BadGateway {
                    backend: backend_id.to_string(),
                    reason,
                });
            }
            Ok(Ok(response)) => response,
        };

        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            // Refused before any body: the backend did no work, another one may.
            let retry_after = retry_after(response.headers());
            self.pool
                .record_failure(backend, Failure::Overloaded { retry_after }, Instant::now());
            return Attempt::Retry(RelayError::Saturated {
                reason: "every backend refused the request",
                retry_after: retry_after
                    .map(|d| d.min(self.config.retry.max_retry_after))
                    .unwrap_or(self.config.shedding.retry_after),
            });
        }

        let (mut head, mut upstream_body) = response.into_parts();
        let first = match tokio::time::timeout_at(first_byte_deadline.into(), upstream_body.frame())
            .await
        {
            Err(_elapsed) => {
                self.pool
                    .record_failure(backend, Failure::FirstByteTimeout, Instant::now());
                self.stats.record_timeout(Instant::now());
                return Attempt::Fail(RelayError::FirstByteTimeout {
                    backend: backend_id.to_string(),
                    after: first_byte_limit,
                });
            }
            Ok(Some(Err(error))) => {
                self.pool
                    .record_failure(backend, Failure::ResetBeforeResponse, Instant::now());
                self.stats.record_error(Instant::now());
                return Attempt::Fail(RelayError::BadGateway {
                    backend: backend_id.to_string(),
                    reason: format!("body failed before its first byte: {error}"),
                });
            }
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(None) => None,
        };
        let first_byte_after = sent.elapsed();
        let now = Instant::now();
        if status.is_server_error() {
            self.pool.record_failure(
                backend,
                Failure::Status {
                    code: status.as_u16(),
                },
                now,
            );
            self.stats.record_error(now);
        } else {
            self.pool.record_success(backend, first_byte_after, now);
        }
        self.metrics
            .response_started(model, &backend_id, status, first_byte_after);
        self.stats.record_first_byte(model, first_byte_after, now);

        // Content-Length stays: bodies pass through unchanged (a failing SSE stream gets an
        // error event, but SSE responses are never length-delimited).
        strip_hop_by_hop(&mut head.headers);
        let is_sse = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let stream = Relayed {
            first,
            upstream: upstream_body,
            _in_flight: in_flight,
            is_sse,
            idle: self.config.timeouts.idle,
            deadline,
            model: model.to_string(),
            backend,
            backend_id,
            pool: self.pool.clone(),
            metrics: self.metrics.clone(),
            stats: self.stats.clone(),
            last_frame: now,
            done: false,
        };
        let body =
            StreamBody::new(futures_util::stream::unfold(stream, Relayed::next)).boxed_unsync();
        Attempt::Response(Response::from_parts(head, body))
    }
}

/// A response body on its way from a backend to a client.
struct Relayed {
    first: Option<Frame<Bytes>>,
    upstream: hyper::body::Incoming,
    /// Held until the body ends or is dropped: the backend counts as busy until then.
    _in_flight: InFlight,
    is_sse: bool,
    idle: Duration,
    deadline: Instant,
    model: String,
    backend: BackendIdx,
    backend_id: Arc<str>,
    pool: Arc<Pool>,
    metrics: Arc<RelayMetrics>,
    stats: Arc<RequestStats>,
    last_frame: Instant,
    done: bool,
}

impl Relayed {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, BodyError>, Relayed)> {
        if self.done {
            return None;
        }
        if let Some(frame) = self.first.take() {
            return Some((Ok(frame), self));
        }
        let now = Instant::now();
        let limit = (now + self.idle).min(self.deadline);
        match tokio::time::timeout_at(limit.into(), self.upstream.frame()).await {
            Ok(Some(Ok(frame))) => {
                let now = Instant::now();
                if frame.is_data() {
                    self.stats
                        .record_inter_chunk(&self.model, now - self.last_frame, now);
                    self.metrics.inter_chunk(&self.model, now - self.last_frame);
                    self.last_frame = now;
                }
                Some((Ok(frame), self))
            }
            Ok(None) => {
                self.metrics
                    .response_finished(&self.model, &self.backend_id);
                None
            }
            Ok(Some(Err(error))) => {
                let reason = format!("backend {} failed mid-stream: {error}", self.backend_id);
                self.fail(Failure::ResetBeforeResponse, reason, "backend_error")
            }
            Err(_elapsed) => {
                let (failure, reason) = if limit >= self.deadline {
                    (
                        Failure::IdleTimeout,
                        "the request exceeded its total time limit".to_string(),
                    )
                } else {
                    (
                        Failure::IdleTimeout,
                        format!(
                            "backend {} went silent for {:?}",
                            self.backend_id, self.idle
                        ),
                    )
                };
                self.stats.record_timeout(Instant::now());
                self.fail(failure, reason, "backend_timeout")
            }
        }
    }

    /// A stream failed after bytes reached the client: never retried. SSE clients get an error
    /// event and a clean end; any other body is aborted so the client sees it incomplete.
    fn fail(
        mut self,
        failure: Failure,
        reason: String,
        code: &str,
    ) -> Option<(Result<Frame<Bytes>, BodyError>, Relayed)> {
        let now = Instant::now();
        self.pool.record_failure(self.backend, failure, now);
        self.stats.record_error(now);
        self.metrics.stream_failed(&self.model, &self.backend_id);
        tracing::warn!(model = %self.model, backend = %self.backend_id, %reason, "stream failed after its first byte");
        self.done = true;
        if self.is_sse {
            Some((Ok(Frame::data(sse_error_event(&reason, code))), self))
        } else {
            Some((Err(reason.into()), self))
        }
    }
}

/// Why a failed exchange proves the backend never processed the request, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unprocessed {
    /// hyper handed the request back unsent: the connection closed before it was written.
    NotSent,
    /// The backend's socket reset the connection before any response: it was closed with our
    /// request unread in it, or already gone when the request arrived.
    Reset,
}

/// Decides, from an upstream error's cause chain, whether the request provably never ran on
/// the backend (RFC 9110 §9.2.2: a non-idempotent request may be retried automatically only
/// when the client can tell it was never applied). The two proofs:
/// - hyper cancelled it before writing it ([`hyper::Error::is_canceled`]); hyper-util already
///   resends those itself on a reused connection, not on a fresh one;
/// - the connection was reset (`ECONNRESET`, `EPIPE`, `ECONNABORTED`, on write or read) before
///   the response head: a peer that had read the request and then died (crashed, killed,
///   restarted) closes with a FIN; the kernel answers with a reset only when the socket is
///   closed with unread data in it or no longer exists — the request sat unread, and a
///   backend cannot act on a JSON body it never read. This is the dead pooled keep-alive
///   connection to a stopped or restarted backend.
///
/// Deliberately not a proof: "connection closed before message completed" (EOF, no reset)
/// before any response byte. It is the same EOF whether the backend closed an idle
/// connection just as the request crossed (nothing processed) or read the request and then
/// died (maybe processed, maybe generated tokens); hyper cannot tell them apart, so that
/// request fails with a 502 rather than risk running twice (Go's `net/http` makes the same
/// call for non-replayable requests). hyper-util resends the common variant — the close seen
/// before the request was taken — itself.
fn never_processed(error: &(dyn std::error::Error + 'static)) -> Option<Unprocessed> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if current
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return Some(Unprocessed::NotSent);
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            )
        {
            return Some(Unprocessed::Reset);
        }
        cause = current.source();
    }
    None
}

fn upstream_request(
    base: &http::Uri,
    parts: &http::request::Parts,
    body: Bytes,
    conn: &ConnInfo,
) -> Result<Request<Body>, String> {
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let base_path = base.path().trim_end_matches('/');
    let uri = http::Uri::builder()
        .scheme(base.scheme_str().unwrap_or("http"))
        .authority(base.authority().map_or("", |a| a.as_str()))
        .path_and_query(format!("{base_path}{path_and_query}"))
        .build()
        .map_err(|e| format!("bad upstream URI: {e}"))?;
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(full_body(body))
        .map_err(|e| format!("bad upstream request: {e}"))?;
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            headers.append(name.clone(), value.clone());
        }
    }
    strip_hop_by_hop(headers);
    if let Ok(value) = HeaderValue::from_str(&conn.peer.ip().to_string()) {
        headers.append("x-forwarded-for", value);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if conn.secure { "https" } else { "http" }),
    );
    Ok(request)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| header::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// `Retry-After` in seconds (the HTTP-date form is rare from inference servers; ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Reads the whole request body (it is needed for `model`, and kept to resend on a retry),
/// refusing it as soon as it passes `limit` and when the client is too slow to send it.
async fn read_body(mut body: Body, limit: usize, timeout: Duration) -> Result<Bytes, RelayError> {
    // A declared length over the limit is refused before reading (or waiting for) any of it.
    if usize::try_from(http_body::Body::size_hint(&body).lower())
        .map_or(true, |declared| declared > limit)
    {
        return Err(RelayError::BodyTooLarge { limit });
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut collected = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(RelayError::BodyTimeout),
            Ok(None) => return Ok(collected.freeze()),
            Ok(Some(Err(error))) => {
                return Err(RelayError::BodyUnreadable {
                    reason: error.to_string(),
                });
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                return Err(RelayError::BodyTooLarge { limit });
            }
            collected.extend_from_slice(&data);
        }
    }
}

/// The `model` field of an OpenAI request body.
pub fn model_of(body: &[u8]) -> Result<String, RelayError> {
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<serde_json::Value>,
    }
    let parsed: ModelOnly = serde_json::from_slice(body).map_err(|e| RelayError::InvalidJson {
        reason: e.to_string(),
    })?;
    match parsed.model {
        Some(serde_json::Value::String(model)) if !model.is_empty() => Ok(model),
        _ => Err(RelayError::MissingModel),
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full_body(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn seed_start() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn next_seed(seeds: &AtomicU64) -> u64 {
    let mut z = seeds
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_read_from_the_body() {
        assert_eq!(
            model_of(br#"{"model":"m","messages":[]}"#),
            Ok("m".to_string())
        );
        assert_eq!(
            model_of(br#"{"messages":[]}"#),
            Err(RelayError::MissingModel)
        );
        assert_eq!(model_of(br#"{"model":7}"#), Err(RelayError::MissingModel));
        assert_eq!(model_of(br#"{"model":""}"#), Err(RelayError::MissingModel));
        assert!(matches!(
            model_of(b"{nope"),
            Err(RelayError::InvalidJson { .. })
        ));
        assert!(matches!(
            model_of(b"{\"model\":\"\xff\"}"),
            Err(RelayError::InvalidJson { .. })
        ));
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(headers[header::AUTHORIZATION], "Bearer k");
    }

    #[test]
    fn only_a_reset_or_an_unsent_request_proves_it_never_ran() {
        use std::io::{Error, ErrorKind};
        #[derive(Debug, thiserror::Error)]
        #[error("connection error")]
        struct Wrapped(#[source] Error);
        let cases = [
            (ErrorKind::ConnectionReset, Some(Unprocessed::Reset)),
            (ErrorKind::BrokenPipe, Some(Unprocessed::Reset)),
            (ErrorKind::ConnectionAborted, Some(Unprocessed::Reset)),
            (ErrorKind::UnexpectedEof, None),
            (ErrorKind::TimedOut, None),
            (ErrorKind::Other, None),
        ];
        for (kind, expected) in cases {
            let error = Wrapped(Error::from(kind));
            assert_eq!(never_processed(&error), expected, "{kind:?}");
        }
    }

    #[test]
    fn retry_after_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
