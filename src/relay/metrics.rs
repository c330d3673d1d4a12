//! Prometheus metrics of the relay tier. Callers report events through the methods here and
//! never touch prometheus types; backend gauges are refreshed from the pool at scrape time.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::StatusCode;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::{errors::RelayError, pool::Pool};

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResponseLabels {
    model: String,
    backend: String,
    status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelBackendLabels {
    model: String,
    backend: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    code: &'static str,
    status: u16,
}

type Histograms = Family<ModelLabels, Histogram, fn() -> Histogram>;

pub struct RelayMetrics {
    registry: Mutex<Registry>,
    responses: Family<ResponseLabels, Counter>,
    finished: Family<ModelBackendLabels, Counter>,
    stream_failures: Family<ModelBackendLabels, Counter>,
    refused: Family<ErrorLabels, Counter>,
    retries: Family<BackendLabels, Counter>,
    retries_denied: Counter,
    first_byte: Histograms,
    inter_chunk: Histograms,
    in_flight: Family<BackendLabels, Gauge>,
    available: Family<BackendLabels, Gauge>,
    load_score: Family<BackendLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    saturation: Gauge<f64, std::sync::atomic::AtomicU64>,
    reloads: Family<ReloadLabels, Counter>,
    connections_refused: Family<ListenerLabels, Counter>,
    admin_auth_failures: Counter,
    client_rtt_evictions: Counter,
}

fn first_byte_histogram() -> Histogram {
    // 5 ms .. ~80 s: prefill of long prompts on busy GPUs takes seconds.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn inter_chunk_histogram() -> Histogram {
    // 1 ms .. ~4 s between tokens.
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

impl Default for RelayMetrics {
    fn default() -> Self {
        RelayMetrics::new()
    }
}

impl RelayMetrics {
    pub fn new() -> RelayMetrics {
        let mut registry = Registry::with_prefix("meridian_relay");
        let metrics = RelayMetrics {
            registry: Mutex::new(Registry::default()),
            responses: Family::default(),
            finished: Family::default(),
            stream_failures: Family::default(),
            refused: Family::default(),
            retries: Family::default(),
            retries_denied: Counter::default(),
            first_byte: Family::new_with_constructor(first_byte_histogram),
            inter_chunk: Family::new_with_constructor(inter_chunk_histogram),
            in_flight: Family::default(),
            available: Family::default(),
            load_score: Family::default(),
            saturation: Gauge::default(),
            reloads: Family::default(),
            connections_refused: Family::default(),
            admin_auth_failures: Counter::default(),
            client_rtt_evictions: Counter::default(),
        };
        registry.register(
            "responses",
            "Responses started from a backend, by model, backend and status",
            metrics.responses.clone(),
        );
        registry.register(
            "streams_finished",
            "Responses whose body the backend finished",
            metrics.finished.clone(),
        );
        registry.register(
            "stream_failures",
            "Responses that failed after their first byte (SSE error event sent, or aborted)",
            metrics.stream_failures.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed or refused at accept because the listener (https, plain, h3, admin) was at its connection cap",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "client_rtt_evictions",
            "Client prefixes dropped from the RTT table (the least recently seen) to make room for a new one",
            metrics.client_rtt_evictions.clone(),
        );
        registry.register(
            "admin_auth_failures",
            "Relay admin calls refused with 401 (missing or wrong bearer token)",
            metrics.admin_auth_failures.clone(),
        );
        registry.register(
            "refused",
            "Requests answered by the relay itself with an error, by error code and status (sheds are code region_saturated)",
            metrics.refused.clone(),
        );
        registry.register(
            "retries",
            "Retries, by the backend retried on",
            metrics.retries.clone(),
        );
        registry.register(
            "retries_denied",
            "Retries not made because the retry budget was spent",
            metrics.retries_denied.clone(),
        );
        registry.register(
            "first_byte_seconds",
            "Time from sending a request to the backend to its first body byte (TTFT)",
            metrics.first_byte.clone(),
        );
        registry.register(
            "inter_chunk_seconds",
            "Time between body chunks of a streamed response (inter-token latency)",
            metrics.inter_chunk.clone(),
        );
        registry.register(
            "backend_in_flight",
            "Requests in flight per backend",
            metrics.in_flight.clone(),
        );
        registry.register(
            "backend_available",
            "1 when the backend may take new requests (healthy or unknown, not ejected or drained)",
            metrics.available.clone(),
        );
        registry.register(
            "backend_load_score",
            "Load score used by the balancer: max(waiting/Q, kv/KV, inflight/slots)",
            metrics.load_score.clone(),
        );
        registry.register(
            "region_saturation",
            "Capacity-weighted load of the region's backends (0..1)",
            metrics.saturation.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads, by result (applied, rejected)",
            metrics.reloads.clone(),
        );
        *metrics.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        metrics
    }

    pub fn response_started(
        &self,
        model: &str,
        backend: &str,
        status: StatusCode,
        first_byte: Duration,
    ) {
        self.responses
            .get_or_create(&ResponseLabels {
                model: model.to_string(),
                backend: backend.to_string(),
                status: status.as_u16(),
            })
            .inc();
        self.first_byte
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .observe(first_byte.as_secs_f64());
    }

    pub fn inter_chunk(&self, model: &str, gap: Duration) {
        self.inter_chunk
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .observe(gap.as_secs_f64());
    }

    pub fn response_finished(&self, model: &str, backend: &str) {
        self.finished
            .get_or_create(&ModelBackendLabels {
                model: model.to_string(),
                backend: backend.to_string(),
            })
            .inc();
    }

    pub fn stream_failed(&self, model: &str, backend: &str) {
        self.stream_failures
            .get_or_create(&ModelBackendLabels {
                model: model.to_string(),
                backend: backend.to_string(),
            })
            .inc();
    }

    pub fn request_failed(&self, error: &RelayError) {
        self.refused
            .get_or_create(&ErrorLabels {
                code: error.code(),
                status: error.status().as_u16(),
            })
            .inc();
    }

    pub fn retried(&self, backend: &str) {
        self.retries
            .get_or_create(&BackendLabels {
                backend: backend.to_string(),
            })
            .inc();
    }

    /// A connection turned away at `listener`'s connection cap.
    pub fn connection_refused(&self, listener: &'static str) {
        self.connections_refused
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    pub fn client_rtt_evicted(&self) {
        self.client_rtt_evictions.inc();
    }

    pub fn admin_auth_failed(&self) {
        self.admin_auth_failures.inc();
    }

    pub fn retry_denied(&self) {
        self.retries_denied.inc();
    }

    /// One configuration reload; `applied` tells an applied file from a rejected one.
    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// The exposition text, with backend gauges read from the pool now.
    pub fn encode(&self, pool: &Arc<Pool>) -> String {
        let now = Instant::now();
        // Held from the reset to the encoding, so concurrent scrapes cannot see each other's
        // half-refilled gauges.
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Backends come and go with reloads: only those the pool still shows get a series.
        self.in_flight.clear();
        self.available.clear();
        self.load_score.clear();
        for view in pool.views(now) {
            let labels = BackendLabels {
                backend: view.id.to_string(),
            };
            self.in_flight
                .get_or_create(&labels)
                .set(i64::from(view.in_flight));
            self.available
                .get_or_create(&labels)
                .set(i64::from(view.available));
            self.load_score.get_or_create(&labels).set(view.score);
        }
        self.saturation.set(pool.region_load(now).saturation);
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text = "# encoding failed\n".to_string();
        }
        text
    }
}
