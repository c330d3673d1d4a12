//! The relay's admin listener: `/metrics`, `/region/health`, and operator actions (drain the
//! relay, drain or undrain one backend).
//!
//! Plain HTTP/1.1 on `admin_listen` (loopback by default). It has no authentication yet: bind
//! it only where operators alone can reach it. Mutating calls are `POST`s.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info};

use super::{
    config::model::{BackendIdx, RelayConfig},
    metrics::RelayMetrics,
    proxy::Proxy,
    report,
    stats::RequestStats,
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
}

pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => { debug!(%error, "admin accept failed"); continue; }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request)) }
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

fn handle(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
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
                        "available": v.available, "drained": v.drained,
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
            let Some(index) = state.config.backends.iter().position(|b| &*b.id == *id) else {
                return json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({ "error": format!("no backend `{id}`") }),
                );
            };
            let Ok(index) = u16::try_from(index) else {
                return json(StatusCode::INTERNAL_SERVER_ERROR, &serde_json::json!({}));
            };
            let drained = *action == "drain";
            state.proxy.pool().set_drained(BackendIdx(index), drained);
            info!(backend = %id, drained, "backend drain state changed through the admin API");
            json(
                StatusCode::OK,
                &serde_json::json!({ "backend": id, "drained": drained }),
            )
        }
        (_, ["metrics"] | ["region", "health"] | ["admin", ..]) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({ "error": "method not allowed" }),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "not found", "routes": [
                "GET /metrics", "GET /region/health", "GET /admin/backends",
                "POST /admin/drain", "POST /admin/backends/{id}/drain", "POST /admin/backends/{id}/undrain"
            ]}),
        ),
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
