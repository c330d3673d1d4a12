//! The relay's admin listener: `/metrics`, `/region/health`, and operator actions (drain the
//! relay, drain or undrain one backend, reload the configuration file, pause or resume the
//! health-channel reports).
//!
//! Plain HTTP/1.1 on `admin_listen` (loopback by default). Reads (`GET`: metrics, the region
//! report, backends, report state) are open, like a Prometheus target, and carry no secret.
//! Every other call changes the relay; with `admin_token_file` set it needs
//! `Authorization: Bearer <token>`, checked by the DNS tier's [`AdminToken`] (same file rules,
//! same constant-time comparison), and is refused with 401 before it is even routed, so a
//! caller without the token learns nothing about which calls exist. Without a token file the
//! listener must be on loopback (the config validator refuses anything else).

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tracing::{debug, info, warn};

use super::{
    config::model::RelayConfig,
    metrics::RelayMetrics,
    proxy::Proxy,
    reconfigure::{Reconfigure, ReloadError},
    report,
    stats::RequestStats,
};
use crate::{
    admin::{AdminError, AdminToken},
    config::ConfigError,
};

/// What the admin handlers act on.
pub struct AdminState {
    pub config: Arc<RelayConfig>,
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<RelayMetrics>,
    pub stats: Arc<RequestStats>,
    /// Set to true to drain the whole relay (the same as SIGTERM).
    pub drain: watch::Sender<bool>,
    pub report_sequence: AtomicU64,
    /// `POST /admin/reload`: the same procedure as SIGHUP.
    pub reconfigure: Arc<Reconfigure>,
    /// `POST /admin/reports {"paused": true}`: the health-channel sender sends nothing while
    /// set (an unplanned drill: the DNS tier sees the region go silent).
    pub reports_paused: Arc<AtomicBool>,
    /// `Some`: mutating calls need this bearer token ([`load_token`]).
    pub token: Option<AdminToken>,
}

/// The token `relay.admin_token_file` names, read once (at start and by `meridian check`);
/// `None` when the file is not configured. The file must not be readable by group or others.
pub fn load_token(config: &RelayConfig) -> Result<Option<AdminToken>, AdminError> {
    config
        .admin_token_file
        .as_deref()
        .map(AdminToken::from_file)
        .transpose()
}

/// Largest body of an admin call (they are all tiny JSON objects).
const MAX_ADMIN_BODY: usize = 4096;

/// Admin connections served at once; more are closed at accept, so a stuck or hostile local
/// client cannot exhaust the relay's tasks and file descriptors through this port.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => { debug!(%error, "admin accept failed"); continue; }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, limit = MAX_ADMIN_CONNECTIONS, "admin connection limit reached; closing");
            state.metrics.connection_refused("admin");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(authorize_then_handle(&state, request, peer).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                debug!(%error, %peer, "admin connection failed");
            }
        });
    }
}

/// Reads pass; anything else needs the token when one is configured.
async fn authorize_then_handle(
    state: &AdminState,
    request: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if let Some(token) = &state.token
        && !reads
        && !token.authorizes(request.headers())
    {
        // The path is the caller's text: logged as a debug-formatted string, never the header.
        warn!(%peer, method = %request.method(), path = ?request.uri().path(), "relay admin call refused: missing or wrong token");
        state.metrics.admin_auth_failed();
        return unauthorized();
    }
    handle(state, request).await
}

/// 401 with the challenge and nothing about why (absent, malformed or wrong token alike).
fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": "unauthorized" }),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"meridian-relay-admin\""),
    );
    response
}

async fn handle(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["metrics"]) => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.encode(state.proxy.pool()),
        ),
        (&Method::GET, ["region", "health"]) => {
            let sequence = state.report_sequence.fetch_add(1, Ordering::Relaxed) + 1;
            let report = report::build(
                &state.config,
                state.proxy.pool(),
                &state.stats,
                state.proxy.is_draining(),
                sequence,
                Instant::now(),
            );
            json(
                StatusCode::OK,
                &serde_json::to_value(report).unwrap_or_default(),
            )
        }
        (&Method::GET, ["admin", "backends"]) => {
            let views: Vec<serde_json::Value> = state
                .proxy
                .pool()
                .views(Instant::now())
                .into_iter()
                .map(|v| {
                    serde_json::json!({
                        "id": &*v.id, "kind": v.kind.as_str(), "models": v.models,
                        "health": format!("{:?}", v.health).to_lowercase(),
                        "available": v.available, "drained": v.drained, "removed": v.removed,
                        "ejected_for_ms": v.ejected_for.map(|d| d.as_millis() as u64),
                        "in_flight": v.in_flight, "load_score": v.score,
                        "consecutive_failures": v.consecutive_failures,
                    })
                })
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "backends": views }))
        }
        (&Method::POST, ["admin", "drain"]) => {
            info!("drain requested through the admin API");
            let _ = state.drain.send(true);
            json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "draining": true }),
            )
        }
        (&Method::POST, ["admin", "backends", id, action @ ("drain" | "undrain")]) => {
            let Some(index) = state.proxy.pool().find(id) else {
                return json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({ "error": format!("no backend `{id}`") }),
                );
            };
            let drained = *action == "drain";
            state.proxy.pool().set_drained(index, drained);
            info!(backend = %id, drained, "backend drain state changed through the admin API");
            json(
                StatusCode::OK,
                &serde_json::json!({ "backend": id, "drained": drained }),
            )
        }
        (&Method::GET, ["admin", "reports"]) => reports_status(state),
        (&Method::POST, ["admin", "reports"]) => set_reports_paused(state, request).await,
        (&Method::POST, ["admin", "reload"]) => {
            info!("configuration reload requested through the admin API");
            reload(state).await
        }
        (_, ["metrics"] | ["region", "health"] | ["admin", ..]) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({ "error": "method not allowed" }),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "not found", "routes": [
                "GET /metrics", "GET /region/health", "GET /admin/backends",
                "POST /admin/drain", "POST /admin/backends/{id}/drain", "POST /admin/backends/{id}/undrain",
                "POST /admin/reload", "GET /admin/reports", "POST /admin/reports"
            ]}),
        ),
    }
}

/// Whether the health channel is configured and whether its reports are paused.
fn reports_status(state: &AdminState) -> Response<Full<Bytes>> {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "configured": state.config.health_channel.is_some(),
            "paused": state.reports_paused.load(Ordering::Relaxed),
        }),
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseReports {
    paused: bool,
}

/// `POST /admin/reports {"paused": bool}`: 200 with the new state; 400 for another body; 409
/// when there is no `[relay.health_channel]` to pause.
async fn set_reports_paused(
    state: &AdminState,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": format!("cannot read the body: {error}") }),
            );
        }
    };
    let pause: PauseReports = match serde_json::from_slice(&body) {
        Ok(pause) => pause,
        Err(error) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": format!("expected {{\"paused\": true|false}}: {error}") }),
            );
        }
    };
    if state.config.health_channel.is_none() {
        return json(
            StatusCode::CONFLICT,
            &serde_json::json!({ "error": "no [relay.health_channel] is configured: there are no reports to pause" }),
        );
    }
    let was = state.reports_paused.swap(pause.paused, Ordering::Relaxed);
    if was != pause.paused {
        info!(
            paused = pause.paused,
            "health-channel reports paused or resumed through the admin API"
        );
    }
    reports_status(state)
}

/// 200 with what changed, or the rejection: 422 with every problem and its field path for a
/// file that does not parse or validate, 500 when it cannot be read.
async fn reload(state: &AdminState) -> Response<Full<Bytes>> {
    match state.reconfigure.reload().await {
        Ok(reloaded) => {
            let ids = |ids: &[Arc<str>]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();
            let b = &reloaded.backends;
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "added": ids(&b.added), "removed": ids(&b.removed),
                    "changed": ids(&b.changed), "drain_changed": ids(&b.drain_changed),
                    "no_room": ids(&b.no_room), "needs_restart": reloaded.needs_restart,
                }),
            )
        }
        Err(ReloadError::Rejected(error)) => {
            let (status, problems) = match &error {
                ConfigError::Read { .. } => (StatusCode::INTERNAL_SERVER_ERROR, Vec::new()),
                ConfigError::Syntax { .. } => (StatusCode::UNPROCESSABLE_ENTITY, Vec::new()),
                ConfigError::Invalid { errors, .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    errors
                        .iter()
                        .map(|e| serde_json::json!({ "field": e.field, "problem": e.problem.to_string() }))
                        .collect(),
                ),
            };
            json(
                status,
                &serde_json::json!({ "error": error.to_string(), "problems": problems }),
            )
        }
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    text(status, "application/json", value.to_string())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
