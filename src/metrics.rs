//! Prometheus metrics of the DNS tier, and the `/metrics` HTTP endpoint that exposes them.
//!
//! Owns the registry and the names of every series; callers report events through the
//! methods here and never touch prometheus types. Label values come from the snapshot (GSLB
//! and region names), so a series exists only for names that were configured.
//!
//! The UDP workers count into a [`Tally`] of their own (plain integers indexed by transport,
//! RCODE and source: no label hashing, no lock, no shared cache line per query) and fold it
//! into the shared series once per receive batch, before the batch's responses are sent, so
//! a scrape never lags an answer a client already has.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::{
    encoding::{
        EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
        NoLabelSet,
    },
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::debug;

use crate::{
    config::model::RegionIdx,
    dns::handler::{AnswerSource, Summary, Transport},
    snapshot::Snapshot,
    steering::{PolicyIdx, Reason},
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
    handle_seconds: HandleTime,
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
        let handle_seconds = HandleTime::default();
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

    /// One query answered outside a worker's batch (TCP): counted at once.
    pub fn answered(
        &self,
        transport: Transport,
        summary: &Summary,
        snapshot: &Snapshot,
        took: Duration,
    ) {
        let mut tally = Tally::default();
        tally.answered(transport, summary, took);
        self.flush(&mut tally, snapshot);
    }

    pub fn dropped(&self, transport: Transport) {
        self.dropped
            .get_or_create(&TransportLabels {
                transport: transport.as_str(),
            })
            .inc();
    }

    /// Folds a worker's counts into the shared series and zeroes them. `snapshot` must be the
    /// one the counted answers were decided on: GSLB counts are kept as indices into it.
    pub fn flush(&self, tally: &mut Tally, snapshot: &Snapshot) {
        if tally.is_empty() {
            return;
        }
        for (t, transport) in TRANSPORTS.iter().enumerate() {
            for (r, rcode) in RCODE_NAMES.iter().enumerate() {
                for (s, source) in SOURCE_NAMES.iter().enumerate() {
                    let count = std::mem::take(&mut tally.responses[t][r][s]);
                    if count > 0 {
                        self.responses
                            .get_or_create(&ResponseLabels {
                                transport: transport.as_str(),
                                rcode,
                                source,
                            })
                            .inc_by(count);
                    }
                }
            }
            let dropped = std::mem::take(&mut tally.dropped[t]);
            if dropped > 0 {
                self.dropped
                    .get_or_create(&TransportLabels {
                        transport: transport.as_str(),
                    })
                    .inc_by(dropped);
            }
        }
        for answer in tally.gslb.drain(..) {
            let Some(gslb) = snapshot.steering_names().get(answer.policy.0 as usize) else {
                continue;
            };
            let region = answer
                .region
                .map(|r| snapshot.config.region(r).id.clone())
                .unwrap_or_else(|| Arc::from("none"));
            self.gslb_answers
                .get_or_create(&GslbLabels {
                    name: SharedLabel(gslb.clone()),
                    region: SharedLabel(region),
                    reason: answer.reason.as_str(),
                })
                .inc_by(answer.count);
        }
        let truncated = std::mem::take(&mut tally.truncated);
        if truncated > 0 {
            self.truncated.inc_by(truncated);
        }
        self.handle_seconds.add(&mut tally.handle);
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

const TRANSPORTS: [Transport; 2] = [Transport::Udp, Transport::Tcp];
const RCODE_NAMES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER",
];
const SOURCE_NAMES: [&str; 5] = ["malformed", "refused", "zone", "gslb", "why"];

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
    }
}

/// Position in [`RCODE_NAMES`].
fn rcode_index(rcode: hickory_proto::op::ResponseCode) -> usize {
    use hickory_proto::op::ResponseCode as R;
    match rcode {
        R::NoError => 0,
        R::FormErr => 1,
        R::ServFail => 2,
        R::NXDomain => 3,
        R::NotImp => 4,
        R::Refused => 5,
        R::BADVERS => 6,
        _ => 7,
    }
}

/// Position in [`SOURCE_NAMES`].
fn source_index(source: &AnswerSource) -> usize {
    match source {
        AnswerSource::Malformed => 0,
        AnswerSource::Refused => 1,
        AnswerSource::Zone => 2,
        AnswerSource::Gslb { .. } => 3,
        AnswerSource::Why { .. } => 4,
    }
}

/// One worker's counts since its last [`Metrics::flush`].
#[derive(Debug, Default)]
pub struct Tally {
    responses: [[[u64; SOURCE_NAMES.len()]; RCODE_NAMES.len()]; TRANSPORTS.len()],
    dropped: [u64; TRANSPORTS.len()],
    truncated: u64,
    /// Distinct (name, region, reason) of a batch: a handful, so a list beats a map.
    gslb: Vec<GslbCount>,
    handle: HandleCounts,
}

#[derive(Debug)]
struct GslbCount {
    policy: PolicyIdx,
    region: Option<RegionIdx>,
    reason: Reason,
    count: u64,
}

impl Tally {
    pub fn answered(&mut self, transport: Transport, summary: &Summary, took: Duration) {
        let t = transport_index(transport);
        self.responses[t][rcode_index(summary.rcode)][source_index(&summary.source)] += 1;
        if let AnswerSource::Gslb {
            policy,
            regions,
            reason,
        } = &summary.source
        {
            let first_region = regions.first().copied();
            match self
                .gslb
                .iter_mut()
                .find(|c| c.policy == *policy && c.region == first_region && c.reason == *reason)
            {
                Some(counted) => counted.count += 1,
                None => self.gslb.push(GslbCount {
                    policy: *policy,
                    region: first_region,
                    reason: *reason,
                    count: 1,
                }),
            }
        }
        if summary.truncated {
            self.truncated += 1;
        }
        self.handle.observe(took);
    }

    pub fn dropped(&mut self, transport: Transport) {
        self.dropped[transport_index(transport)] += 1;
    }

    fn is_empty(&self) -> bool {
        self.handle.count == 0 && self.dropped.iter().all(|d| *d == 0)
    }
}

/// Upper bounds of the handling-time buckets: 1 µs .. ~16 ms, doubling. The handler is
/// CPU-only; anything slower is a bug worth seeing.
const HANDLE_BUCKETS: usize = 15;

fn handle_bucket(took: Duration) -> usize {
    // Bucket i holds times up to 2^i µs; the last one everything longer.
    let micros = took.as_nanos().div_ceil(1_000).max(1);
    let bucket = (u128::BITS - (micros - 1).leading_zeros()) as usize;
    bucket.min(HANDLE_BUCKETS)
}

fn handle_bound(bucket: usize) -> f64 {
    if bucket >= HANDLE_BUCKETS {
        f64::MAX
    } else {
        1e-6 * f64::from(1u32 << bucket)
    }
}

/// Handling times counted locally by a worker.
#[derive(Debug, Default)]
struct HandleCounts {
    buckets: [u64; HANDLE_BUCKETS + 1],
    sum_nanos: u64,
    count: u64,
}

impl HandleCounts {
    fn observe(&mut self, took: Duration) {
        self.buckets[handle_bucket(took)] += 1;
        self.sum_nanos = self
            .sum_nanos
            .saturating_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        self.count += 1;
    }
}

/// The `handle_seconds` histogram, added to in bulk (prometheus-client's histogram takes a
/// lock per observation, which two workers would contend on for every query).
#[derive(Clone, Debug, Default)]
struct HandleTime(Arc<HandleTimeCells>);

#[derive(Debug, Default)]
struct HandleTimeCells {
    buckets: [AtomicU64; HANDLE_BUCKETS + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl HandleTime {
    fn add(&self, counts: &mut HandleCounts) {
        if counts.count == 0 {
            return;
        }
        let cells = &self.0;
        for (shared, local) in cells.buckets.iter().zip(counts.buckets.iter_mut()) {
            let local = std::mem::take(local);
            if local > 0 {
                shared.fetch_add(local, Ordering::Relaxed);
            }
        }
        cells
            .sum_nanos
            .fetch_add(std::mem::take(&mut counts.sum_nanos), Ordering::Relaxed);
        cells
            .count
            .fetch_add(std::mem::take(&mut counts.count), Ordering::Relaxed);
    }
}

impl EncodeMetric for HandleTime {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &self.0;
        let buckets: Vec<(f64, u64)> = cells
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| (handle_bound(i), b.load(Ordering::Relaxed)))
            .collect();
        let sum = cells.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let count = cells.count.load(Ordering::Relaxed);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Serves `GET /metrics` over plain HTTP/1.1 (hyper) until shutdown: a scrape endpoint for a
/// loopback or management address. The health-plane work folds it into the DNS admin API.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    serve_sources(listener, vec![metrics as Arc<dyn MetricsSource>], shutdown).await
}

/// [`serve_metrics`] for several sources (the DNS series, the health plane, anycast, RRL),
/// concatenated into one exposition.
pub async fn serve_sources(
    listener: TcpListener,
    sources: Vec<Arc<dyn MetricsSource>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let sources: Arc<[Arc<dyn MetricsSource>]> = sources.into();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => { debug!(%error, "metrics accept failed"); continue; }
            },
            _ = shutdown.changed() => return,
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let sources = sources.clone();
                async move { Ok::<_, std::convert::Infallible>(scrape(&sources, &request)) }
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

fn scrape<B>(
    sources: &[Arc<dyn MetricsSource>],
    request: &http::Request<B>,
) -> http::Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (http::StatusCode::OK, encode_all(sources)),
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
