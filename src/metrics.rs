//! Prometheus metrics of the DNS tier, and the `/metrics` HTTP endpoint that exposes them.
//!
//! Owns the registry and the names of every series; callers report events through the
//! methods here and never touch prometheus types. Label values come from the snapshot (GSLB
//! and region names), so a series exists only for names that were configured.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::debug;

use crate::{
    dns::handler::{AnswerSource, Summary, Transport},
    snapshot::Snapshot,
};

/// A label value shared with the snapshot (no allocation per query).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SharedLabel(Arc<str>);

impl EncodeLabelValue for SharedLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResponseLabels {
    transport: &'static str,
    rcode: &'static str,
    source: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GslbLabels {
    name: SharedLabel,
    region: SharedLabel,
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Every series the DNS tier exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    responses: Family<ResponseLabels, Counter>,
    gslb_answers: Family<GslbLabels, Counter>,
    dropped: Family<TransportLabels, Counter>,
    truncated: Counter,
    tcp_rejected: Counter,
    reloads: Family<ReloadLabels, Counter>,
    generation: Gauge,
    handle_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meridian_dns");
        let responses = Family::<ResponseLabels, Counter>::default();
        let gslb_answers = Family::<GslbLabels, Counter>::default();
        let dropped = Family::<TransportLabels, Counter>::default();
        let truncated = Counter::default();
        let tcp_rejected = Counter::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let generation = Gauge::default();
        // 1 µs .. ~16 ms: the handler is CPU-only, anything slower is a bug worth seeing.
        let handle_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1e-6, 2.0, 15),
        );
        registry.register(
            "responses",
            "Responses sent, by transport, RCODE and answer source",
            responses.clone(),
        );
        registry.register(
            "gslb_answers",
            "GSLB answers by name, first region answered and steering reason",
            gslb_answers.clone(),
        );
        registry.register(
            "dropped",
            "Packets dropped without a response (not a query, or too short)",
            dropped.clone(),
        );
        registry.register(
            "truncated",
            "UDP responses sent with TC=1 because they did not fit",
            truncated.clone(),
        );
        registry.register(
            "tcp_rejected",
            "TCP connections closed at accept because max_tcp_connections was reached",
            tcp_rejected.clone(),
        );
        registry.register(
            "reloads",
            "Snapshot reloads by result (loaded, rejected)",
            reloads.clone(),
        );
        registry.register(
            "snapshot_generation",
            "Generation of the snapshot being served",
            generation.clone(),
        );
        registry.register(
            "handle_seconds",
            "Time to decode, decide and encode one query",
            handle_seconds.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            responses,
            gslb_answers,
            dropped,
            truncated,
            tcp_rejected,
            reloads,
            generation,
            handle_seconds,
        }
    }

    pub fn answered(
        &self,
        transport: Transport,
        summary: &Summary,
        snapshot: &Snapshot,
        took: Duration,
    ) {
        let source = match &summary.source {
            AnswerSource::Malformed => "malformed",
            AnswerSource::Refused => "refused",
            AnswerSource::Zone => "zone",
            AnswerSource::Gslb { .. } => "gslb",
            AnswerSource::Why { .. } => "why",
        };
        self.responses
            .get_or_create(&ResponseLabels {
                transport: transport.as_str(),
                rcode: rcode_name(summary.rcode),
                source,
            })
            .inc();
        if let AnswerSource::Gslb {
            policy,
            regions,
            reason,
        } = &summary.source
            && let Some(gslb) = snapshot.steering_names().get(policy.0 as usize)
        {
            let region = regions
                .first()
                .map(|r| snapshot.config.region(*r).id.clone())
                .unwrap_or_else(|| Arc::from("none"));
            self.gslb_answers
                .get_or_create(&GslbLabels {
                    name: SharedLabel(gslb.clone()),
                    region: SharedLabel(region),
                    reason: reason.as_str(),
                })
                .inc();
        }
        if summary.truncated {
            self.truncated.inc();
        }
        self.handle_seconds.observe(took.as_secs_f64());
    }

    pub fn dropped(&self, transport: Transport) {
        self.dropped
            .get_or_create(&TransportLabels {
                transport: transport.as_str(),
            })
            .inc();
    }

    pub fn tcp_rejected(&self) {
        self.tcp_rejected.inc();
    }

    pub fn reload_loaded(&self, generation: u64) {
        self.reloads
            .get_or_create(&ReloadLabels { result: "loaded" })
            .inc();
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    pub fn reload_rejected(&self) {
        self.reloads
            .get_or_create(&ReloadLabels { result: "rejected" })
            .inc();
    }

    /// The exposition text of every series.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
            let _ = writeln!(text, "# encoding failed");
        }
        text
    }
}

/// Anything that contributes series to a `/metrics` scrape (the DNS metrics, the health
/// plane, the admin API). Each source writes complete Prometheus text exposition families
/// (without the final `# EOF`), so scrapes concatenate sources.
pub trait MetricsSource: Send + Sync {
    fn encode_into(&self, out: &mut String);
}

impl MetricsSource for Metrics {
    fn encode_into(&self, out: &mut String) {
        let text = self.encode();
        out.push_str(text.strip_suffix("# EOF\n").unwrap_or(&text));
    }
}

/// One exposition text from several sources, terminated once.
pub fn encode_all(sources: &[Arc<dyn MetricsSource>]) -> String {
    let mut text = String::new();
    for source in sources {
        source.encode_into(&mut text);
    }
    text.push_str("# EOF\n");
    text
}

fn rcode_name(rcode: hickory_proto::op::ResponseCode) -> &'static str {
    use hickory_proto::op::ResponseCode as R;
    match rcode {
        R::NoError => "NOERROR",
        R::FormErr => "FORMERR",
        R::ServFail => "SERVFAIL",
        R::NXDomain => "NXDOMAIN",
        R::NotImp => "NOTIMP",
        R::Refused => "REFUSED",
        R::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

/// Serves `GET /metrics` over plain HTTP/1.1 (hyper) until shutdown: a scrape endpoint for a
/// loopback or management address. The health-plane work folds it into the DNS admin API.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => { debug!(%error, "metrics accept failed"); continue; }
            },
            _ = shutdown.changed() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(scrape(&metrics, &request)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                debug!(%error, %peer, "metrics connection failed");
            }
        });
    }
}

fn scrape<B>(metrics: &Metrics, request: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (http::StatusCode::OK, metrics.encode()),
        (_, "/metrics") => (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "only GET /metrics is served here\n".to_string(),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "only GET /metrics is served here\n".to_string(),
        ),
    };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Where the metrics endpoint listens, for the ready file.
pub fn describe(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
