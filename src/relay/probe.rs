//! The prober: the IO that keeps [`Pool`] informed about each backend, off the request path.
//!
//! Per live backend of the pool, three loops run until shutdown or until the backend is
//! removed (a supervisor follows [`Pool::changes`], starting the loops of added members and
//! stopping those of removed ones; a changed backend is a new member with new loops):
//!
//! - **scrape**, every `scrape_interval`: the load signals (`GET /metrics`, llama.cpp also
//!   `GET /slots`) → [`Pool::update_signals`], and with `models = "discover"` the model list
//!   (`GET /v1/models`) → [`Pool::update_models`];
//! - **liveness**, every `health.interval`: the kind's own liveness path → [`ProbeKind::Liveness`];
//! - **deep**, every `health.deep_interval` (every `health.interval` while the deep probe has the
//!   backend down, so it comes back sooner): a one-token completion within `deep_timeout` →
//!   [`ProbeKind::Deep`]. This is what catches a backend whose `/health` says 200 while
//!   generation hangs.
//!
//! Every request has a timeout, and intervals are stretched by a small fixed amount per backend
//! so that the probes of many backends drift apart instead of arriving together. All decisions
//! (hysteresis, freshness, what "down" means) belong to the pool; this module only fetches,
//! parses through [`super::signals`], and reports. It logs only when something flips.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::{Client, connect::Connect};
use serde::Deserialize;
use tokio::{sync::watch, task::JoinSet, time::Instant};
use tracing::{debug, info, warn};

use crate::relay::{
    config::model::{Backend, BackendIdx, BackendKind, HealthChecks, ModelSource, RelayConfig},
    pool::{Health, Pool, ProbeKind},
    signals::{self, BackendSignals, SignalsError},
};

/// Largest response body read from a backend. vLLM's `/metrics` with many models and
/// histograms runs to a few hundred kilobytes; anything far beyond is not an exposition.
const MAX_BODY_BYTES: usize = 8 << 20;

/// A scrape or liveness answer may take one interval, within these bounds: a `/health` slower
/// than 10 s is not healthy, and under 1 s a busy host's scheduling noise would read as
/// failures. Each loop waits for its answer before sleeping, so a timeout longer than the
/// interval only delays the next probe.
const PROBE_TIMEOUT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(10));

/// Intervals vary by ±5 % between backends.
const JITTER: f64 = 0.1;

/// The first probe of a loop comes within this fraction of a second of start-up (spread by
/// backend), so a dead backend is found quickly even with a 30 s deep interval.
const MAX_FIRST_DELAY: Duration = Duration::from_secs(1);

/// Probes every live backend of `pool` until `shutdown` turns true (or its sender goes away),
/// over plain HTTP with the configured connect timeout. Follows the pool: backends added by
/// [`Pool::reconcile`] get their loops, removed ones lose them.
pub async fn run(pool: Arc<Pool>, config: Arc<RelayConfig>, shutdown: watch::Receiver<bool>) {
    let client = super::upstream::client(&config);
    run_with_client(pool, config, client, shutdown).await;
}

pub async fn run_with_client<C>(
    pool: Arc<Pool>,
    config: Arc<RelayConfig>,
    client: Client<C, Full<Bytes>>,
    mut shutdown: watch::Receiver<bool>,
) where
    C: Connect + Clone + Send + Sync + 'static,
{
    let mut changes = pool.changes();
    // One stop signal per member: dropping or setting it ends that member's loops only.
    let mut probing: HashMap<(BackendIdx, u64), watch::Sender<bool>> = HashMap::new();
    let mut loops = JoinSet::new();
    loop {
        changes.borrow_and_update();
        let live = pool.live();
        probing.retain(|&(idx, incarnation), stop| {
            let still_live = live
                .iter()
                .any(|b| b.idx == idx && b.incarnation == incarnation);
            if !still_live {
                let _ = stop.send(true);
            }
            still_live
        });
        for target in &live {
            let key = (target.idx, target.incarnation);
            if probing.contains_key(&key) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            probing.insert(key, stop);
            let backend = &target.backend;
            let prober = match Prober::new(target.idx, backend, &config, &pool, &client) {
                Ok(prober) => Arc::new(prober),
                Err(error) => {
                    // The validated config makes this unreachable; if not, the backend keeps
                    // its Unknown health rather than stopping the relay.
                    warn!(backend = %backend.id, %error, "cannot build probe URLs; not probing");
                    continue;
                }
            };
            if signals::publishes_signals(prober.kind) || prober.discover {
                loops.spawn(prober.clone().scrape_loop(stopped.clone()));
            }
            loops.spawn(prober.clone().liveness_loop(stopped.clone()));
            loops.spawn(prober.deep_loop(stopped));
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // The pool outlived its own sender: nothing will change any more.
                    stopped(&mut shutdown).await;
                    break;
                }
            }
            // Reaps the loops of removed members as they end.
            Some(_) = loops.join_next() => {}
            () = stopped(&mut shutdown) => break,
        }
    }
    for stop in probing.values() {
        let _ = stop.send(true);
    }
    while loops.join_next().await.is_some() {}
}

/// Why one probe or scrape failed; logged when a loop flips to failing.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("status {0}")]
    Status(StatusCode),
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("body read failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot build the request")]
    Http(#[from] http::Error),
    #[error(transparent)]
    Signals(#[from] SignalsError),
    #[error("/v1/models is not an OpenAI model list")]
    ModelList(#[source] serde_json::Error),
}

/// Where each probe goes, from the backend's base URL (which may carry a path prefix).
#[derive(Debug)]
struct Endpoints {
    metrics: Uri,
    slots: Uri,
    liveness: Uri,
    models: Uri,
    completions: Uri,
}

impl Endpoints {
    fn new(base: &Uri, kind: BackendKind) -> Result<Endpoints, http::Error> {
        let liveness = match kind {
            BackendKind::Vllm | BackendKind::Sglang | BackendKind::Tgi | BackendKind::Llamacpp => {
                "/health"
            }
            BackendKind::Ollama => "/",
            BackendKind::Openai => "/v1/models",
        };
        Ok(Endpoints {
            metrics: endpoint(base, "/metrics")?,
            slots: endpoint(base, "/slots")?,
            liveness: endpoint(base, liveness)?,
            models: endpoint(base, "/v1/models")?,
            completions: endpoint(base, "/v1/completions")?,
        })
    }
}

fn endpoint(base: &Uri, path: &str) -> Result<Uri, http::Error> {
    let prefix = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(format!("{prefix}{path}").parse()?);
    Ok(Uri::from_parts(parts)?)
}

struct Prober<C> {
    idx: BackendIdx,
    id: Arc<str>,
    kind: BackendKind,
    discover: bool,
    endpoints: Endpoints,
    pool: Arc<Pool>,
    client: Client<C, Full<Bytes>>,
    health: HealthChecks,
    scrape_interval: Duration,
    /// This backend's place in `0..1`, which fixes its jitter.
    phase: f64,
}

impl<C> Prober<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    fn new(
        idx: BackendIdx,
        backend: &Backend,
        config: &RelayConfig,
        pool: &Arc<Pool>,
        client: &Client<C, Full<Bytes>>,
    ) -> Result<Prober<C>, http::Error> {
        Ok(Prober {
            idx,
            id: backend.id.clone(),
            kind: backend.kind,
            discover: backend.models == ModelSource::Discover,
            endpoints: Endpoints::new(&backend.base_url, backend.kind)?,
            pool: pool.clone(),
            client: client.clone(),
            health: config.health,
            scrape_interval: config.scrape_interval,
            phase: phase(idx),
        })
    }

    async fn scrape_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut signals_log = FlipLog::default();
        let mut models_log = FlipLog::default();
        let mut delay = self.first_delay(self.scrape_interval);
        while pause(delay, &mut shutdown).await {
            delay = self.jittered(self.scrape_interval);
            let timeout = delay.clamp(PROBE_TIMEOUT.0, PROBE_TIMEOUT.1);
            let scrape = async {
                if signals::publishes_signals(self.kind) {
                    let ours_when_sent = self.pool.in_flight(self.idx);
                    match self.fetch_signals(timeout).await {
                        Ok(signals) => {
                            self.pool.update_signals_scraped(
                                self.idx,
                                signals,
                                now(),
                                ours_when_sent,
                            );
                            signals_log.ok(&self.id, "load signals");
                        }
                        Err(error) => signals_log.failed(&self.id, "load signals", &error),
                    }
                }
                if self.discover {
                    match self.fetch_models(timeout).await {
                        Ok(models) => {
                            models_log.ok(&self.id, "model discovery");
                            if self.pool.update_models(self.idx, models.clone()) {
                                info!(backend = %self.id, ?models, "models discovered");
                            }
                        }
                        Err(error) => models_log.failed(&self.id, "model discovery", &error),
                    }
                }
            };
            if !until_shutdown(scrape, &mut shutdown).await {
                return;
            }
        }
    }

    async fn liveness_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut delay = self.first_delay(self.health.interval);
        while pause(delay, &mut shutdown).await {
            delay = self.jittered(self.health.interval);
            let timeout = delay.clamp(PROBE_TIMEOUT.0, PROBE_TIMEOUT.1);
            let probe = self.fetch(Method::GET, &self.endpoints.liveness, Bytes::new(), timeout);
            let Some(result) = until_shutdown_with(probe, &mut shutdown).await else {
                return;
            };
            self.report(ProbeKind::Liveness, result.map(drop));
        }
    }

    async fn deep_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut delay = self.first_delay(self.health.deep_interval);
        while pause(delay, &mut shutdown).await {
            let interval = match self.pool.probe_health(self.idx, ProbeKind::Deep) {
                Health::Down => self.health.interval.min(self.health.deep_interval),
                Health::Unknown | Health::Up => self.health.deep_interval,
            };
            delay = self.jittered(interval);
            // Before discovery found a model there is nothing to ask for; liveness covers it.
            let Some(model) = self.pool.models_of(self.idx).into_iter().next() else {
                continue;
            };
            let body = serde_json::json!({
                "model": model,
                "prompt": "ping",
                "max_tokens": 1,
                "stream": false,
            });
            let probe = self.fetch(
                Method::POST,
                &self.endpoints.completions,
                Bytes::from(body.to_string()),
                self.health.deep_timeout,
            );
            let Some(result) = until_shutdown_with(probe, &mut shutdown).await else {
                return;
            };
            self.report(ProbeKind::Deep, result.map(drop));
        }
    }

    fn report(&self, probe: ProbeKind, result: Result<(), ProbeError>) {
        let flip = self
            .pool
            .record_probe(self.idx, probe, result.is_ok(), now());
        let id = &self.id;
        match (flip, result) {
            (Some(flip), Err(error)) if flip.to == Health::Down => warn!(
                backend = %id, probe = probe.as_str(), error = %DisplayChain(&error),
                "backend down"
            ),
            (Some(flip), _) => info!(
                backend = %id, probe = probe.as_str(),
                from = flip.from.as_str(), to = flip.to.as_str(), "backend health changed"
            ),
            (None, Err(error)) => debug!(
                backend = %id, probe = probe.as_str(), error = %DisplayChain(&error), "probe failed"
            ),
            (None, Ok(())) => {}
        }
    }

    async fn fetch_signals(&self, timeout: Duration) -> Result<BackendSignals, ProbeError> {
        let metrics = async {
            let body = self
                .fetch(Method::GET, &self.endpoints.metrics, Bytes::new(), timeout)
                .await?;
            Ok::<_, ProbeError>(signals::parse_exposition(
                self.kind,
                &String::from_utf8_lossy(&body),
            )?)
        };
        if self.kind != BackendKind::Llamacpp {
            return metrics.await;
        }
        // llama.cpp serves `/metrics` only with `--metrics` and `/slots` only without
        // `--no-slots`: either one alone is a usable signal.
        let slots = async {
            let body = self
                .fetch(Method::GET, &self.endpoints.slots, Bytes::new(), timeout)
                .await?;
            Ok::<_, ProbeError>(signals::parse_slots(&body)?)
        };
        match tokio::join!(metrics, slots) {
            (Ok(metrics), Ok(slots)) => Ok(metrics.with_slots(slots)),
            (Ok(metrics), Err(_)) => Ok(metrics),
            (Err(_), Ok(slots)) => Ok(BackendSignals::default().with_slots(slots)),
            (Err(error), Err(_)) => Err(error),
        }
    }

    async fn fetch_models(&self, timeout: Duration) -> Result<Vec<String>, ProbeError> {
        let body = self
            .fetch(Method::GET, &self.endpoints.models, Bytes::new(), timeout)
            .await?;
        parse_model_list(&body).map_err(ProbeError::ModelList)
    }

    /// One request, whole body read, all within `timeout`; anything but 2xx is an error.
    async fn fetch(
        &self,
        method: Method,
        uri: &Uri,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ProbeError> {
        let mut request = http::Request::builder().method(method).uri(uri.clone());
        if !body.is_empty() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(ProbeError::Request)?;
            let status = response.status();
            if !status.is_success() {
                return Err(ProbeError::Status(status));
            }
            let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|error| {
                    if error.is::<LengthLimitError>() {
                        ProbeError::BodyTooLarge
                    } else {
                        ProbeError::Body(error)
                    }
                })?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(ProbeError::Timeout(timeout)))
    }

    fn jittered(&self, interval: Duration) -> Duration {
        interval.mul_f64(1.0 + JITTER * (self.phase - 0.5))
    }

    fn first_delay(&self, interval: Duration) -> Duration {
        interval.min(MAX_FIRST_DELAY).mul_f64(self.phase)
    }
}

/// By when every backend's first scrape has been answered or given up on: the first one
/// starts within `min(scrape_interval, MAX_FIRST_DELAY)` and takes at most the longest probe
/// timeout.
pub fn first_scrape_within(config: &RelayConfig) -> Duration {
    config.scrape_interval.min(MAX_FIRST_DELAY) + PROBE_TIMEOUT.1
}

/// Spreads backends evenly over `0..1` (the golden-ratio sequence), the same on every run.
fn phase(idx: BackendIdx) -> f64 {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    (f64::from(idx.0) * GOLDEN).fract()
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

/// The ids of an OpenAI `GET /v1/models` answer (`{"object":"list","data":[{"id":…},…]}`).
fn parse_model_list(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    let list: ModelList = serde_json::from_slice(body)?;
    Ok(list.data.into_iter().map(|model| model.id).collect())
}

/// Remembers whether a recurring fetch is failing, so only the change is logged.
#[derive(Default)]
struct FlipLog {
    failing: bool,
}

impl FlipLog {
    fn ok(&mut self, backend: &str, what: &'static str) {
        if std::mem::take(&mut self.failing) {
            info!(backend, what, "recovered");
        }
    }

    fn failed(&mut self, backend: &str, what: &'static str, error: &ProbeError) {
        if !std::mem::replace(&mut self.failing, true) {
            warn!(backend, what, error = %DisplayChain(error), "failing");
        }
    }
}

/// An error with its sources, `a: b: c`, for a single log field.
pub(crate) struct DisplayChain<'e>(pub(crate) &'e (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// The pool takes std instants; tokio's clock keeps paused-time tests possible.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Resolves once shutdown is asked for, or nobody is left to ask.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Sleeps `delay`; false if shutdown came first.
async fn pause(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stopped(shutdown) => false,
    }
}

/// Runs `work` unless shutdown comes first (then `work` is dropped mid-flight).
async fn until_shutdown(
    work: impl Future<Output = ()>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    until_shutdown_with(work, shutdown).await.is_some()
}

async fn until_shutdown_with<T>(
    work: impl Future<Output = T>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<T> {
    tokio::select! {
        output = work => Some(output),
        () = stopped(shutdown) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::atomic::{AtomicBool, AtomicU32, Ordering},
    };

    use hyper::{body::Incoming, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::relay::pool::tests::{backend, config};

    /// What the fake backend does with one request.
    enum Reply {
        Body(String),
        Status(u16),
        Hang,
    }

    type Routes = Arc<dyn Fn(&Method, &str) -> Reply + Send + Sync>;

    /// A backend on `127.0.0.1:0` answering from `routes`; returns its base URL.
    async fn fake_backend(routes: Routes) -> Uri {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let routes = routes.clone();
                let service = service_fn(move |request: http::Request<Incoming>| {
                    let reply = routes(request.method(), request.uri().path());
                    async move {
                        let response = match reply {
                            Reply::Body(body) => http::Response::new(Full::new(Bytes::from(body))),
                            Reply::Status(code) => http::Response::builder()
                                .status(code)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                            Reply::Hang => std::future::pending().await,
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        format!("http://{addr}/llm").parse().unwrap()
    }

    fn fast_config(base_url: Uri, kind: BackendKind, models: ModelSource) -> RelayConfig {
        let mut config = config(vec![Backend {
            base_url,
            models,
            ..backend("fake", kind, &[], 8)
        }]);
        config.scrape_interval = Duration::from_millis(50);
        config.health.interval = Duration::from_millis(50);
        config.health.deep_interval = Duration::from_millis(50);
        config.health.deep_timeout = Duration::from_millis(100);
        config.health.eject_after_failures = 2;
        config.health.healthy_after_successes = 2;
        config
    }

    /// Polls `condition` until it holds, failing after a generous bound (never a fixed sleep
    /// as the assertion itself).
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn view(pool: &Pool) -> crate::relay::pool::BackendView {
        pool.views(now()).remove(0)
    }

    #[tokio::test]
    async fn scrapes_discovers_and_catches_a_hanging_generation() {
        let hang = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(AtomicU32::new(3));
        let routes: Routes = {
            let (hang, waiting) = (hang.clone(), waiting.clone());
            Arc::new(move |method, path| match (method.as_str(), path) {
                ("GET", "/llm/health") => Reply::Body(String::new()),
                ("GET", "/llm/metrics") => Reply::Body(format!(
                    "# HELP vllm:num_requests_waiting Waiting.\n\
                     # TYPE vllm:num_requests_waiting gauge\n\
                     vllm:num_requests_waiting{{model_name=\"tiny\"}} {}.0\n\
                     vllm:num_requests_running{{model_name=\"tiny\"}} 2.0\n",
                    waiting.load(Ordering::Relaxed)
                )),
                ("GET", "/llm/v1/models") => Reply::Body(
                    r#"{"object":"list","data":[{"id":"tiny","object":"model"}]}"#.into(),
                ),
                ("POST", "/llm/v1/completions") if hang.load(Ordering::Relaxed) => Reply::Hang,
                ("POST", "/llm/v1/completions") => {
                    Reply::Body(r#"{"choices":[{"text":"!"}]}"#.into())
                }
                _ => Reply::Status(404),
            })
        };
        let base = fake_backend(routes).await;
        let config = Arc::new(fast_config(base, BackendKind::Vllm, ModelSource::Discover));
        let pool = Arc::new(Pool::new(&config));
        let (stop, shutdown) = watch::channel(false);
        let prober = tokio::spawn(run(pool.clone(), config, shutdown));

        eventually("models discovered", || pool.models() == ["tiny"]).await;
        eventually("signals scraped", || {
            view(&pool)
                .signals
                .is_some_and(|s| s.waiting == Some(3.0) && s.running == Some(2.0))
        })
        .await;
        eventually("deep probe up", || view(&pool).deep == Health::Up).await;
        waiting.store(7, Ordering::Relaxed);
        eventually("signals refreshed", || {
            view(&pool).signals.is_some_and(|s| s.waiting == Some(7.0))
        })
        .await;

        hang.store(true, Ordering::Relaxed);
        eventually("hanging generation takes it out", || {
            let v = view(&pool);
            v.deep == Health::Down && !v.available
        })
        .await;
        assert_eq!(view(&pool).liveness, Health::Up, "/health still says 200");
        assert_eq!(pool.pick("tiny", &[], 0, now()), None);

        hang.store(false, Ordering::Relaxed);
        eventually("generation works again", || view(&pool).available).await;
        assert_eq!(pool.pick("tiny", &[], 0, now()), Some(BackendIdx(0)));

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), prober)
            .await
            .expect("probe loops stop on shutdown")
            .unwrap();
    }

    /// A fake vLLM that counts its liveness probes.
    async fn counted_backend() -> (Uri, Arc<AtomicU32>) {
        let hits = Arc::new(AtomicU32::new(0));
        let counter = hits.clone();
        let routes: Routes = Arc::new(move |_, path| match path {
            "/llm/health" => {
                counter.fetch_add(1, Ordering::Relaxed);
                Reply::Body(String::new())
            }
            "/llm/v1/completions" => Reply::Body("{}".into()),
            _ => Reply::Status(404),
        });
        (fake_backend(routes).await, hits)
    }

    #[tokio::test]
    async fn probes_follow_the_pool_through_reconfiguration() {
        let (first_url, first_hits) = counted_backend().await;
        let (second_url, second_hits) = counted_backend().await;
        let models = ModelSource::Declared(vec!["tiny".into()]);
        let config = Arc::new(fast_config(first_url, BackendKind::Vllm, models));
        let first = config.backends[0].clone();
        let second = Backend {
            id: "second".into(),
            base_url: second_url,
            ..first.clone()
        };
        let pool = Arc::new(Pool::new(&config));
        let (stop, shutdown) = watch::channel(false);
        let prober = tokio::spawn(run(pool.clone(), config, shutdown));
        let hits = |counter: &AtomicU32| counter.load(Ordering::Relaxed);

        eventually("the first backend is probed", || hits(&first_hits) >= 2).await;
        assert_eq!(hits(&second_hits), 0);

        // Added: probed from now on, and usable once it is.
        pool.reconcile(&[first.clone(), second.clone()]);
        eventually("the added backend is probed", || hits(&second_hits) >= 2).await;
        let second_idx = pool.find("second").unwrap();
        eventually("the added backend's probes are recorded", || {
            pool.probe_health(second_idx, ProbeKind::Liveness) == Health::Up
        })
        .await;

        // Removed: its loops stop. One probe may have been on its way; after the other backend
        // got several more, the removed one must have had no new ones beyond that.
        pool.reconcile(std::slice::from_ref(&second));
        let at_removal = hits(&first_hits);
        let second_then = hits(&second_hits);
        eventually("the remaining backend keeps being probed", || {
            hits(&second_hits) >= second_then + 5
        })
        .await;
        assert!(
            hits(&first_hits) <= at_removal + 1,
            "the removed backend is still probed: {} after {at_removal}",
            hits(&first_hits)
        );

        // Changed (new URL): the new member's loops probe the new address.
        let (third_url, third_hits) = counted_backend().await;
        pool.reconcile(&[Backend {
            base_url: third_url,
            ..second
        }]);
        eventually("the changed backend is probed at its new URL", || {
            hits(&third_hits) >= 2
        })
        .await;

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), prober)
            .await
            .expect("probe loops stop on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn llamacpp_without_metrics_still_reports_slots() {
        let routes: Routes = Arc::new(|_, path| match path {
            "/llm/health" => Reply::Body(r#"{"status":"ok"}"#.into()),
            "/llm/metrics" => Reply::Status(501),
            "/llm/slots" => Reply::Body(
                r#"[{"id":0,"is_processing":true},{"id":1,"is_processing":false}]"#.into(),
            ),
            "/llm/v1/completions" => Reply::Body("{}".into()),
            _ => Reply::Status(404),
        });
        let base = fake_backend(routes).await;
        let models = ModelSource::Declared(vec!["tiny".into()]);
        let config = Arc::new(fast_config(base, BackendKind::Llamacpp, models));
        let pool = Arc::new(Pool::new(&config));
        let (_stop, shutdown) = watch::channel(false);
        let _prober = tokio::spawn(run(pool.clone(), config, shutdown));

        eventually("slots scraped", || {
            view(&pool).signals
                == Some(BackendSignals {
                    slots_busy: Some(1.0),
                    slots_total: Some(2.0),
                    ..BackendSignals::default()
                })
        })
        .await;
    }

    #[tokio::test]
    async fn unreachable_backend_goes_down() {
        // A port that was just free: connecting to it is refused.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let base: Uri = format!("http://{addr}").parse().unwrap();
        let models = ModelSource::Declared(vec!["tiny".into()]);
        let config = Arc::new(fast_config(base, BackendKind::Ollama, models));
        let pool = Arc::new(Pool::new(&config));
        let (stop, shutdown) = watch::channel(false);
        let prober = tokio::spawn(run(pool.clone(), config, shutdown));

        eventually("liveness down", || view(&pool).liveness == Health::Down).await;
        assert!(!view(&pool).available);
        assert_eq!(view(&pool).signals, None, "Ollama is never scraped");

        drop(stop); // The sender going away also stops the loops.
        tokio::time::timeout(Duration::from_secs(5), prober)
            .await
            .expect("probe loops stop when the shutdown sender is gone")
            .unwrap();
    }

    #[test]
    fn endpoints_keep_the_base_path() {
        let cases = [
            (
                "http://10.0.0.1:8000",
                BackendKind::Vllm,
                "http://10.0.0.1:8000/health",
            ),
            (
                "http://10.0.0.1:8000/",
                BackendKind::Sglang,
                "http://10.0.0.1:8000/health",
            ),
            (
                "http://gpu-3:11434",
                BackendKind::Ollama,
                "http://gpu-3:11434/",
            ),
            (
                "https://api.example/openai",
                BackendKind::Openai,
                "https://api.example/openai/v1/models",
            ),
        ];
        for (base, kind, liveness) in cases {
            let endpoints = Endpoints::new(&base.parse().unwrap(), kind).unwrap();
            assert_eq!(endpoints.liveness.to_string(), liveness, "{base}");
        }
        let endpoints =
            Endpoints::new(&"http://h:1/p".parse().unwrap(), BackendKind::Llamacpp).unwrap();
        let all = [
            &endpoints.metrics,
            &endpoints.slots,
            &endpoints.models,
            &endpoints.completions,
        ]
        .map(ToString::to_string);
        assert_eq!(
            all,
            [
                "http://h:1/p/metrics",
                "http://h:1/p/slots",
                "http://h:1/p/v1/models",
                "http://h:1/p/v1/completions"
            ]
        );
    }

    #[test]
    fn model_lists() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            (
                r#"{"object":"list","data":[{"id":"a","object":"model"},{"id":"b"}]}"#,
                Some(&["a", "b"]),
            ),
            (r#"{"object":"list","data":[]}"#, Some(&[])),
            (r#"{"models":[{"name":"a"}]}"#, None),
            ("not json", None),
        ];
        for (body, expected) in cases {
            let parsed = parse_model_list(body.as_bytes()).ok();
            let expected =
                expected.map(|ids| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(parsed, expected, "{body}");
        }
    }

    #[test]
    fn backends_are_spread_apart() {
        let mut phases: Vec<f64> = (0..16).map(|i| phase(BackendIdx(i))).collect();
        assert!(phases.iter().all(|p| (0.0..1.0).contains(p)));
        phases.sort_by(f64::total_cmp);
        let closest = phases
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(f64::INFINITY, f64::min);
        assert!(closest > 0.02, "phases bunch up: {phases:?}");
    }
}
