//! The admin listener: connections, limits, routing, authentication and the handlers.
//!
//! Limits, so a misbehaving local client cannot hold the node's control plane: at most
//! [`MAX_CONNECTIONS`] connections (more are closed at accept and counted), request headers
//! within [`HEADER_READ_TIMEOUT`] and [`MAX_HEADER_BYTES`], bodies within [`MAX_BODY_BYTES`]
//! and [`BODY_READ_TIMEOUT`], and every connection closed gracefully after
//! [`MAX_CONNECTION_AGE`]. Operator changes are applied one at a time, so two concurrent calls
//! cannot each start from the same state and lose one another's change.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{
    AdminContext,
    error::{ApiError, json_response, typed_response},
    metrics::AdminMetrics,
    model::{
        DecisionView, HealthChannelView, MaxTtl, RegionAction, RegionResponse, RegionView, Status,
        WeightRequest,
    },
    page,
};
use crate::{
    config::model::RegionIdx,
    metrics::{MetricsSource, encode_all},
    operator_state::{MAX_WEIGHT_PERCENT, OperatorState, RegionOperatorState},
    snapshot::{OperatorUpdateError, Snapshot},
};

pub const MAX_CONNECTIONS: usize = 64;
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's smallest read buffer; request line and headers must fit in it.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
pub const MAX_BODY_BYTES: usize = 4 * 1024;
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(120);
/// How long a closing connection may take to finish its request at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves the admin API on `listener` until `shutdown` turns true, then lets open requests
/// finish (bounded) and returns.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<AdminContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = Arc::new(AdminService::new(ctx));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    if let Ok(address) = listener.local_addr() {
        info!(%address, "admin API listening");
    }
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    debug!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            service.metrics.connection_refused();
            debug!(%peer, "admin connection refused: connection cap reached");
            continue;
        };
        let service = Arc::clone(&service);
        let mut shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let handler = service_fn(move |request| {
                let service = Arc::clone(&service);
                async move { Ok::<_, Infallible>(service.handle(request, peer).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), handler);
            tokio::pin!(connection);
            let stop = async {
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => {}
                    () = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
                }
            };
            let finished = tokio::select! {
                served = connection.as_mut() => Some(served),
                () = stop => None,
            };
            let served = match finished {
                Some(served) => served,
                None => {
                    // Finish the request in progress, if any, then close; bounded.
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(CLOSE_GRACE, connection)
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(error) = served {
                debug!(%error, %peer, "admin connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// What a request asks for, once the method and path are known to fit together.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    Page,
    Metrics,
    Status,
    Decisions,
    Region { id: String, action: RegionAction },
    Weight { id: String },
    SetMaxTtl,
    ClearMaxTtl,
}

impl Route {
    /// The metric label: a pattern, never the raw path.
    fn label(&self) -> &'static str {
        match self {
            Self::Page => "GET /",
            Self::Metrics => "GET /metrics",
            Self::Status => "GET /v1/status",
            Self::Decisions => "GET /v1/decisions",
            Self::Region { action, .. } => match action {
                RegionAction::Drain => "POST /v1/regions/{id}/drain",
                RegionAction::Undrain => "POST /v1/regions/{id}/undrain",
                RegionAction::ForceDown => "POST /v1/regions/{id}/force-down",
                RegionAction::ForceUp => "POST /v1/regions/{id}/force-up",
            },
            Self::Weight { .. } => "PUT /v1/regions/{id}/weight",
            Self::SetMaxTtl => "PUT /v1/max-ttl",
            Self::ClearMaxTtl => "DELETE /v1/max-ttl",
        }
    }

    fn is_mutating(&self) -> bool {
        !matches!(
            self,
            Self::Page | Self::Metrics | Self::Status | Self::Decisions
        )
    }
}

/// Label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let not_allowed = |allow: &'static str| ApiError::MethodNotAllowed {
        method: method.to_string(),
        allow,
    };
    match segments.as_slice() {
        [] if method == Method::GET => Ok(Route::Page),
        ["metrics"] if method == Method::GET => Ok(Route::Metrics),
        ["v1", "status"] if method == Method::GET => Ok(Route::Status),
        ["v1", "decisions"] if method == Method::GET => Ok(Route::Decisions),
        [] | ["metrics"] | ["v1", "status"] | ["v1", "decisions"] => Err(not_allowed("GET")),
        ["v1", "regions", id, "weight"] => match *method {
            Method::PUT => Ok(Route::Weight { id: id.to_string() }),
            _ => Err(not_allowed("PUT")),
        },
        ["v1", "regions", id, action] => match RegionAction::from_path_segment(action) {
            Some(action) if method == Method::POST => Ok(Route::Region {
                id: id.to_string(),
                action,
            }),
            Some(_) => Err(not_allowed("POST")),
            None => Err(ApiError::NotFound {
                path: path.to_owned(),
            }),
        },
        ["v1", "max-ttl"] => match *method {
            Method::PUT => Ok(Route::SetMaxTtl),
            Method::DELETE => Ok(Route::ClearMaxTtl),
            _ => Err(not_allowed("PUT, DELETE")),
        },
        _ => Err(ApiError::NotFound {
            path: path.to_owned(),
        }),
    }
}

struct AdminService {
    ctx: Arc<AdminContext>,
    metrics: Arc<AdminMetrics>,
    /// The context's sources and ours, in scrape order.
    sources: Vec<Arc<dyn MetricsSource>>,
    /// Serialises operator changes (read-modify-persist-publish).
    mutations: tokio::sync::Mutex<()>,
}

impl AdminService {
    fn new(ctx: Arc<AdminContext>) -> AdminService {
        let metrics = Arc::new(AdminMetrics::new(Arc::clone(&ctx.recent)));
        let mut sources = ctx.metrics.clone();
        sources.push(Arc::clone(&metrics) as Arc<dyn MetricsSource>);
        AdminService {
            ctx,
            metrics,
            sources,
            mutations: tokio::sync::Mutex::new(()),
        }
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let (label, result) = match route(request.method(), request.uri().path()) {
            Ok(route) => (route.label(), self.dispatch(route, request, peer).await),
            Err(error) => (UNMATCHED, Err(error)),
        };
        let response = result.unwrap_or_else(|error| {
            if error == ApiError::Unauthorized {
                self.metrics.auth_failure();
            }
            error.into_response()
        });
        self.metrics.request(label, response.status().as_u16());
        response
    }

    async fn dispatch(
        &self,
        route: Route,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        if route.is_mutating() && !self.ctx.token.authorizes(request.headers()) {
            warn!(%peer, route = route.label(), "admin call refused: missing or wrong token");
            return Err(ApiError::Unauthorized);
        }
        match route {
            Route::Page => {
                let snapshot = self.ctx.store.load_full();
                let html = page::render(
                    &self.status(&snapshot),
                    &self.ctx.recent.entries(),
                    SystemTime::now(),
                );
                let mut response = typed_response(StatusCode::OK, "text/html; charset=utf-8", html);
                // The page is escaped already; these make a missed escape inert: no script, no
                // framing, no type sniffing. Its one inline stylesheet is all it loads.
                let headers = response.headers_mut();
                headers.insert(
                    http::header::CONTENT_SECURITY_POLICY,
                    http::HeaderValue::from_static(
                        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
                    ),
                );
                headers.insert(
                    http::header::X_CONTENT_TYPE_OPTIONS,
                    http::HeaderValue::from_static("nosniff"),
                );
                headers.insert(
                    http::header::X_FRAME_OPTIONS,
                    http::HeaderValue::from_static("DENY"),
                );
                Ok(response)
            }
            Route::Metrics => Ok(typed_response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                encode_all(&self.sources),
            )),
            Route::Status => {
                let snapshot = self.ctx.store.load_full();
                Ok(json_response(StatusCode::OK, &self.status(&snapshot)))
            }
            Route::Decisions => Ok(json_response(StatusCode::OK, &self.decisions())),
            Route::Region { id, action } => {
                let region = self
                    .change_region(&id, |state| state.admin = action.admin_state())
                    .await?;
                info!(%peer, region = %id, action = action.path_segment(), "operator state changed through the admin API");
                Ok(json_response(StatusCode::OK, &RegionResponse { region }))
            }
            Route::Weight { id } => {
                let WeightRequest { weight } = read_json(request).await?;
                if weight > MAX_WEIGHT_PERCENT {
                    return Err(ApiError::InvalidWeight { weight });
                }
                let region = self
                    .change_region(&id, |state| state.weight_percent = weight)
                    .await?;
                info!(%peer, region = %id, weight, "operator weight changed through the admin API");
                Ok(json_response(StatusCode::OK, &RegionResponse { region }))
            }
            Route::SetMaxTtl => {
                let MaxTtl { max_ttl } = read_json(request).await?;
                let Some(max_ttl @ 1..) = max_ttl else {
                    return Err(ApiError::InvalidMaxTtl);
                };
                self.change(|operator| operator.max_ttl = Some(max_ttl))
                    .await?;
                info!(%peer, max_ttl, "TTL cap set through the admin API");
                Ok(json_response(
                    StatusCode::OK,
                    &MaxTtl {
                        max_ttl: Some(max_ttl),
                    },
                ))
            }
            Route::ClearMaxTtl => {
                self.change(|operator| operator.max_ttl = None).await?;
                info!(%peer, "TTL cap cleared through the admin API");
                Ok(json_response(StatusCode::OK, &MaxTtl { max_ttl: None }))
            }
        }
    }

    /// Applies `edit` to one region's operator state and returns the region as then served.
    async fn change_region(
        &self,
        id: &str,
        edit: impl FnOnce(&mut RegionOperatorState),
    ) -> Result<RegionView, ApiError> {
        if self.ctx.store.load().config.region_by_id(id).is_none() {
            return Err(ApiError::UnknownRegion { id: id.to_owned() });
        }
        let snapshot = self
            .change(|operator| {
                let mut state = operator.region(id);
                edit(&mut state);
                // Regions back at their defaults leave the file, so it lists only overrides.
                if state == RegionOperatorState::default() {
                    operator.regions.remove(id);
                } else {
                    operator.regions.insert(id.to_owned(), state);
                }
            })
            .await?;
        // A reload between the check and the change may have removed the region.
        let idx = snapshot
            .config
            .region_by_id(id)
            .ok_or_else(|| ApiError::UnknownRegion { id: id.to_owned() })?;
        Ok(self.region_view(&snapshot, idx, self.report_ages(&snapshot).get(idx.get())))
    }

    /// Copy, edit, persist, publish; one change at a time. Returns the snapshot published.
    async fn change(
        &self,
        edit: impl FnOnce(&mut OperatorState),
    ) -> Result<Arc<Snapshot>, ApiError> {
        let _one_at_a_time = self.mutations.lock().await;
        let current = self.ctx.store.load_full();
        if current.config.operator_state_file.is_none() {
            return Err(ApiError::NotPersistent);
        }
        let mut operator = current.operator.clone();
        drop(current);
        edit(&mut operator);
        let store = Arc::clone(&self.ctx.store);
        // File IO and fsync: off the async workers.
        let updated = tokio::task::spawn_blocking(move || store.update_operator(operator))
            .await
            .map_err(|error| ApiError::WriteFailed {
                message: error.to_string(),
            })?;
        match updated {
            Ok(()) => Ok(self.ctx.store.load_full()),
            Err(OperatorUpdateError::NotConfigured) => Err(ApiError::NotPersistent),
            Err(OperatorUpdateError::Save(error)) => {
                warn!(%error, "operator state change not applied");
                Err(ApiError::WriteFailed {
                    message: error.to_string(),
                })
            }
        }
    }

    fn status(&self, snapshot: &Snapshot) -> Status {
        let ages = self.report_ages(snapshot);
        let regions = (0..snapshot.config.regions.len())
            .filter_map(|i| u16::try_from(i).ok().map(RegionIdx))
            .map(|idx| self.region_view(snapshot, idx, ages.get(idx.get())))
            .collect();
        let health_channel = snapshot.config.health.as_ref().map(|channel| {
            let counters = self
                .ctx
                .ledger
                .as_ref()
                .map(|ledger| ledger.lock().unwrap_or_else(|p| p.into_inner()).counters());
            HealthChannelView {
                listen: channel.listen,
                reports_accepted: counters.map(|c| c.accepted),
                reports_rejected: counters.map(|c| {
                    c.region_mismatch + c.replayed + c.out_of_order + c.superseded_session
                }),
            }
        });
        Status {
            generation: snapshot.generation,
            max_ttl: snapshot.steering.max_ttl(),
            regions,
            health_channel,
        }
    }

    /// Age of each region's latest report, by config index (all `None` without a ledger).
    fn report_ages(&self, snapshot: &Snapshot) -> Vec<Option<u64>> {
        let Some(ledger) = &self.ctx.ledger else {
            return Vec::new();
        };
        let now = Instant::now();
        let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
        snapshot
            .config
            .regions
            .iter()
            .map(|region| {
                ledger
                    .age(&region.id, now)
                    .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
            })
            .collect()
    }

    fn region_view(
        &self,
        snapshot: &Snapshot,
        idx: RegionIdx,
        report_age: Option<&Option<u64>>,
    ) -> RegionView {
        let status = snapshot.steering.region_status(idx);
        let region = snapshot.config.region(idx);
        let endpoints = match &region.endpoints {
            crate::config::model::Endpoints::Addresses { v4, v6 } => v4
                .iter()
                .map(ToString::to_string)
                .chain(v6.iter().map(ToString::to_string))
                .collect(),
            crate::config::model::Endpoints::Cname(target) => vec![target.to_ascii()],
        };
        RegionView {
            id: region.id.to_string(),
            admin: status.admin,
            weight: status.weight_percent,
            health: status.health.as_str().to_owned(),
            spilling: Some(status.spilling),
            headroom: status.headroom,
            report_age_ms: report_age.copied().flatten(),
            serving: status.is_serving(),
            endpoints,
        }
    }

    fn decisions(&self) -> Vec<DecisionView> {
        self.ctx
            .recent
            .entries()
            .into_iter()
            .map(|d| DecisionView {
                at_unix_ms: d
                    .at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                client: d.client.to_string(),
                name: d.name.to_string(),
                regions: d.regions.iter().map(|r| r.to_string()).collect(),
                reason: d.reason.to_owned(),
            })
            .collect()
    }
}

/// The request's JSON body, within the size and time limits.
async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, ApiError> {
    let limited = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect())
        .await
        .map_err(|_| ApiError::BodyTimeout {
            seconds: BODY_READ_TIMEOUT.as_secs(),
        })?;
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ApiError::BodyTooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        Err(error) => {
            return Err(ApiError::InvalidBody {
                message: error.to_string(),
            });
        }
    };
    serde_json::from_slice(&body).map_err(|error| ApiError::InvalidBody {
        message: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        let ok = |m: Method, p: &str| route(&m, p).unwrap();
        assert_eq!(ok(Method::GET, "/"), Route::Page);
        assert_eq!(ok(Method::GET, "/v1/status/"), Route::Status);
        assert_eq!(
            ok(Method::POST, "/v1/regions/eu-west/force-down"),
            Route::Region {
                id: "eu-west".into(),
                action: RegionAction::ForceDown
            }
        );
        assert_eq!(
            ok(Method::PUT, "/v1/regions/eu-west/weight"),
            Route::Weight {
                id: "eu-west".into()
            }
        );
        assert_eq!(ok(Method::DELETE, "/v1/max-ttl"), Route::ClearMaxTtl);
        let err = |m: Method, p: &str| route(&m, p).unwrap_err().code();
        assert_eq!(err(Method::POST, "/v1/status"), "method_not_allowed");
        assert_eq!(
            err(Method::GET, "/v1/regions/eu-west/drain"),
            "method_not_allowed"
        );
        assert_eq!(
            err(Method::POST, "/v1/regions/eu-west/explode"),
            "not_found"
        );
        assert_eq!(err(Method::GET, "/v2/status"), "not_found");
        assert_eq!(err(Method::GET, "/v1/max-ttl"), "method_not_allowed");
    }

    #[test]
    fn errors_map_to_status_and_code() {
        let cases = [
            (ApiError::Unauthorized, 401, "unauthorized"),
            (
                ApiError::UnknownRegion { id: "x".into() },
                404,
                "unknown_region",
            ),
            (
                ApiError::InvalidWeight { weight: 5000 },
                400,
                "invalid_weight",
            ),
            (ApiError::InvalidMaxTtl, 400, "invalid_max_ttl"),
            (ApiError::NotPersistent, 409, "not_persistent"),
            (
                ApiError::WriteFailed {
                    message: "disk".into(),
                },
                500,
                "write_failed",
            ),
            (ApiError::BodyTooLarge { limit: 1 }, 413, "body_too_large"),
        ];
        for (error, status, code) in cases {
            let response = error.clone().into_response();
            assert_eq!(response.status().as_u16(), status, "{error:?}");
            assert_eq!(error.code(), code);
        }
        let unauthorized = ApiError::Unauthorized.into_response();
        assert_eq!(
            unauthorized.headers()[http::header::WWW_AUTHENTICATE],
            "Bearer realm=\"meridian-admin\""
        );
    }
}
