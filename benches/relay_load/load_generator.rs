//! `relay_load`: a closed-loop load generator for OpenAI-compatible streaming endpoints, used by
//! `benches/relay_vs_nginx.sh` to put the relay and nginx side by side.
//!
//! `--concurrency` workers each send one streamed chat completion at a time, back to back, for
//! the warm-up and then the measured window, over HTTPS (h1 or h2 by ALPN) or plain HTTP (h1 or
//! h2c), spread over one or more `--target`s. Per request it records the time to first token
//! (request sent → first non-empty body chunk, which is the first SSE event) and checks the
//! stream: status 200, at least `--max-tokens` + 1 `data:` events, ending with `data: [DONE]`.
//! Anything else is an error, counted by kind. A refusal with `Retry-After` (the relay's 429
//! when it sheds) makes its worker wait that long, at most `--max-retry-after-s`, as the
//! OpenAI SDKs do, rather than retry at once.
//!
//! It prints one line, `result key=value ...`, for the script to tabulate:
//! - `rps`: successful requests completed inside the measured window, per second;
//! - `ttft_p50_ms`/`ttft_p99_ms`, `headers_p50_ms` (request sent → response head),
//!   `total_p50_ms`: over successful requests started in it;
//! - `completed_total`: every success, warm-up and tail included (for CPU per request);
//! - `errors`/`error_kinds`: every failure of the whole run, warm-up included.
//!
//! Bounded: no request is sent after the window closes, each request has `--timeout-s`, and the
//! run is abandoned a few seconds after the last request could have ended. A benchmark tool,
//! not library code: it exits with a message on bad arguments or when nothing can connect.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SSE_DATA: &[u8] = b"data: ";
/// How an OpenAI-style stream ends.
const DONE: &[u8] = b"data: [DONE]\n\n";

#[derive(Parser, Debug, Clone)]
#[command(about = "Closed-loop SSE load generator for OpenAI-compatible endpoints")]
struct Args {
    /// Base URL to load, `http://` or `https://` with an IP address and a port (repeatable:
    /// connections are spread over the targets round-robin).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// PEM certificate(s) to trust for `https://` targets.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// TLS server name to send and verify.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// HTTP/2 (ALPN `h2` over TLS, prior knowledge on plain HTTP) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Requests in flight at once (workers).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Connections for HTTP/2 (streams are multiplexed over them); default concurrency / 16,
    /// at least 1. HTTP/1.1 always uses one connection per worker.
    #[arg(long)]
    connections: Option<usize>,
    /// Length of the measured window.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Load before the window, not measured (connections and pools warm up).
    #[arg(long, default_value_t = 2.0)]
    warmup_s: f64,
    /// Longest `Retry-After` (of a 429 or 503) a worker waits before its next request.
    #[arg(long, default_value_t = 2.0)]
    max_retry_after_s: f64,
    /// Longest a single request may take.
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    #[arg(long, default_value = "bench-model")]
    model: String,
    /// Tokens asked for per request (`max_tokens`).
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// Echoed in the result line.
    #[arg(long, default_value = "run")]
    label: String,
}

#[derive(Clone, Debug)]
struct Target {
    tls: bool,
    addr: std::net::SocketAddr,
    authority: String,
}

fn parse_target(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!(
            "{url}: the target must start with http:// or https://"
        ));
    };
    let authority = rest.trim_end_matches('/').to_string();
    let addr = authority
        .parse()
        .map_err(|error| format!("{url}: the target must be IP:PORT ({error})"))?;
    Ok(Target {
        tls,
        addr,
        authority,
    })
}

fn tls_config(ca: &std::path::Path, http2: bool) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(Arc::new(config))
}

#[derive(Clone)]
enum Sender {
    Http1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

struct Connector {
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    http2: bool,
}

impl Connector {
    async fn connect(&self, target: &Target) -> Result<Sender, BoxError> {
        let tcp = TcpStream::connect(target.addr).await?;
        // Each SSE event is its own small write; Nagle would hold them back.
        tcp.set_nodelay(true)?;
        match (&self.tls, target.tls) {
            (Some((config, name)), true) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await?;
                let expected: &[u8] = if self.http2 { b"h2" } else { b"http/1.1" };
                if tls.get_ref().1.alpn_protocol() != Some(expected) {
                    return Err(format!(
                        "the server did not accept ALPN {}",
                        String::from_utf8_lossy(expected)
                    )
                    .into());
                }
                self.handshake(tls).await
            }
            (_, false) => self.handshake(tcp).await,
            (None, true) => Err("an https:// target needs --ca".into()),
        }
    }

    async fn handshake<I>(&self, io: I) -> Result<Sender, BoxError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if self.http2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::Http2(sender))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::Http1(Arc::new(tokio::sync::Mutex::new(sender))))
        }
    }
}

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    Status(u16),
    Connect,
    Transport,
    Timeout,
    /// 200, but the stream ended without `[DONE]` or with too few events.
    Incomplete,
}

impl Outcome {
    fn kind(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Status(code) => format!("status{code}"),
            Outcome::Connect => "connect".into(),
            Outcome::Transport => "transport".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Incomplete => "incomplete".into(),
        }
    }
}

struct Sample {
    start: Instant,
    /// Until the response head arrived.
    headers: Option<Duration>,
    /// A refusal's `Retry-After`, which the worker honours before its next request.
    retry_after: Option<Duration>,
    ttft: Option<Duration>,
    end: Instant,
    outcome: Outcome,
}

/// What a request showed before it ended, however it ends (a timeout keeps what was seen).
#[derive(Default)]
struct Seen {
    headers: Option<Duration>,
    retry_after: Option<Duration>,
    ttft: Option<Duration>,
}

struct Plan {
    args: Args,
    body: Bytes,
    targets: Vec<Target>,
    deadline: Instant,
}

fn request(
    plan: &Plan,
    target: &Target,
    http2: bool,
) -> Result<http::Request<Full<Bytes>>, BoxError> {
    let builder = http::Request::post(if http2 {
        let scheme = if target.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", target.authority, plan.args.path)
    } else {
        plan.args.path.clone()
    })
    .header(http::header::CONTENT_TYPE, "application/json")
    .header(http::header::ACCEPT, "text/event-stream");
    let builder = if http2 {
        builder
    } else {
        builder.header(http::header::HOST, target.authority.as_str())
    };
    Ok(builder.body(Full::new(plan.body.clone()))?)
}

/// Sends one request and reads its stream to the end.
async fn one_request(plan: &Plan, sender: &Sender, target: &Target, http2: bool) -> Sample {
    let start = Instant::now();
    let mut seen = Seen::default();
    let outcome = match tokio::time::timeout(
        Duration::from_secs_f64(plan.args.timeout_s),
        exchange(plan, sender, target, http2, start, &mut seen),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Timeout,
    };
    Sample {
        start,
        headers: seen.headers,
        retry_after: seen.retry_after,
        ttft: seen.ttft,
        end: Instant::now(),
        outcome,
    }
}

async fn exchange(
    plan: &Plan,
    sender: &Sender,
    target: &Target,
    http2: bool,
    start: Instant,
    seen: &mut Seen,
) -> Outcome {
    let Ok(request) = request(plan, target, http2) else {
        return Outcome::Transport;
    };
    let response: Result<http::Response<Incoming>, hyper::Error> = match sender {
        Sender::Http1(sender) => {
            let mut sender = sender.lock().await;
            match sender.ready().await {
                Ok(()) => sender.send_request(request).await,
                Err(error) => Err(error),
            }
        }
        Sender::Http2(sender) => {
            let mut sender = sender.clone();
            match sender.ready().await {
                Ok(()) => sender.send_request(request).await,
                Err(error) => Err(error),
            }
        }
    };
    let Ok(response) = response else {
        return Outcome::Transport;
    };
    seen.headers = Some(start.elapsed());
    let status = response.status();
    seen.retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = response.into_body();
    let mut events = 0_u32;
    // The bytes after the last chunk's final `data: ` match that could start one straddling
    // into the next chunk: shorter than the needle, so nothing is counted twice.
    let mut carry: Vec<u8> = Vec::new();
    let mut last: Vec<u8> = Vec::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return Outcome::Transport,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if seen.ttft.is_none() {
                    seen.ttft = Some(start.elapsed());
                }
                carry.extend_from_slice(&data);
                events += count(&carry, SSE_DATA);
                let keep = carry.len().min(SSE_DATA.len() - 1);
                carry.drain(..carry.len() - keep);
                last.extend_from_slice(&data);
                let keep = last.len().min(DONE.len());
                last.drain(..last.len() - keep);
            }
        }
    }
    if !status.is_success() {
        return Outcome::Status(status.as_u16());
    }
    if events < plan.args.max_tokens + 1 || last != DONE {
        return Outcome::Incomplete;
    }
    Outcome::Ok
}

fn count(haystack: &[u8], needle: &[u8]) -> u32 {
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count() as u32
}

async fn worker(
    plan: Arc<Plan>,
    connector: Arc<Connector>,
    index: usize,
    shared: Option<Sender>,
) -> Vec<Sample> {
    let target = plan.targets[index % plan.targets.len()].clone();
    let http2 = plan.args.http2;
    let mut sender = shared;
    let mut samples = Vec::new();
    while Instant::now() < plan.deadline {
        let current = match sender.take() {
            Some(current) => current,
            None => {
                let start = Instant::now();
                match tokio::time::timeout(
                    Duration::from_secs_f64(plan.args.timeout_s),
                    connector.connect(&target),
                )
                .await
                {
                    Ok(Ok(fresh)) => fresh,
                    _ => {
                        samples.push(Sample {
                            start,
                            headers: None,
                            retry_after: None,
                            ttft: None,
                            end: Instant::now(),
                            outcome: Outcome::Connect,
                        });
                        // Do not spin on a refusing server.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        let sample = one_request(&plan, &current, &target, http2).await;
        // A client that retried a refusal at once would measure its own retry storm; real
        // ones (the OpenAI SDKs) wait as told. Bounded by --max-retry-after-s and the window.
        if let Some(wait) = sample.retry_after {
            let wait = wait.min(Duration::from_secs_f64(plan.args.max_retry_after_s));
            let until = (Instant::now() + wait).min(plan.deadline);
            tokio::time::sleep_until(until.into()).await;
        }
        // After a transport failure the connection is suspect: this worker opens its own.
        let keep = !matches!(sample.outcome, Outcome::Transport | Outcome::Timeout);
        samples.push(sample);
        if keep {
            sender = Some(current);
        }
    }
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

async fn run(args: Args) -> Result<String, BoxError> {
    let targets = args
        .targets
        .iter()
        .map(|url| parse_target(url))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = match &args.ca {
        Some(ca) => Some((
            tls_config(ca, args.http2)?,
            ServerName::try_from(args.server_name.clone())?,
        )),
        None => None,
    };
    let connector = Arc::new(Connector {
        tls,
        http2: args.http2,
    });
    let concurrency = args.concurrency.max(1);
    let connections = if args.http2 {
        args.connections
            .unwrap_or(concurrency / 16)
            .clamp(1, concurrency)
    } else {
        concurrency
    };

    // Connect first, so that handshakes are not part of the load.
    let mut senders = Vec::with_capacity(connections);
    for index in 0..connections {
        let target = &targets[index % targets.len()];
        let sender = tokio::time::timeout(Duration::from_secs(10), connector.connect(target))
            .await
            .map_err(|_| format!("connecting to {} timed out", target.authority))?
            .map_err(|error| format!("cannot connect to {}: {error}", target.authority))?;
        senders.push(sender);
    }

    let body = serde_json::json!({
        "model": args.model,
        "messages": [{"role": "user", "content": "Say something."}],
        "stream": true,
        "max_tokens": args.max_tokens,
    })
    .to_string();
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup_s);
    let deadline = measure_from + Duration::from_secs_f64(args.duration_s);
    let plan = Arc::new(Plan {
        args: args.clone(),
        body: Bytes::from(body),
        targets: targets.clone(),
        deadline,
    });

    let mut workers = Vec::with_capacity(concurrency);
    for index in 0..concurrency {
        // A worker's connection (h1) or the connection its streams share (h2) goes to the
        // same target the worker sends to.
        let slot = index % connections;
        let plan_for_worker = plan.clone();
        let target_index = slot % targets.len();
        let shared = senders[slot].clone();
        workers.push(tokio::spawn(worker(
            plan_for_worker,
            connector.clone(),
            target_index,
            Some(shared),
        )));
    }
    drop(senders);

    let give_up = deadline + Duration::from_secs_f64(args.timeout_s) + Duration::from_secs(5);
    let mut samples = Vec::new();
    let mut abandoned = 0_usize;
    for worker in workers {
        match tokio::time::timeout_at(give_up.into(), worker).await {
            Ok(Ok(mut worker_samples)) => samples.append(&mut worker_samples),
            _ => abandoned += 1,
        }
    }

    let window = args.duration_s;
    let mut ttfts = Vec::new();
    let mut heads = Vec::new();
    let mut totals = Vec::new();
    let mut in_window = 0_usize;
    let mut completed_total = 0_usize;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for sample in &samples {
        if sample.outcome != Outcome::Ok {
            *errors.entry(sample.outcome.kind()).or_default() += 1;
            continue;
        }
        completed_total += 1;
        if sample.end >= measure_from && sample.end <= deadline {
            in_window += 1;
        }
        if sample.start >= measure_from && sample.start < deadline {
            if let Some(ttft) = sample.ttft {
                ttfts.push(ttft);
            }
            if let Some(head) = sample.headers {
                heads.push(head);
            }
            totals.push(sample.end - sample.start);
        }
    }
    if abandoned > 0 {
        errors.insert("abandoned_workers".into(), abandoned);
    }
    ttfts.sort();
    heads.sort();
    totals.sort();
    let error_count: usize = errors.values().sum();
    let kinds = if errors.is_empty() {
        "-".to_string()
    } else {
        errors
            .iter()
            .map(|(kind, n)| format!("{kind}:{n}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    Ok(format!(
        "result label={} proto={} concurrency={} connections={} seconds={:.1} \
         completed={} completed_total={} rps={:.1} ttft_p50_ms={:.2} ttft_p99_ms={:.2} \
         headers_p50_ms={:.2} total_p50_ms={:.2} errors={} error_kinds={}",
        args.label,
        if args.http2 { "h2" } else { "h1" },
        concurrency,
        connections,
        window,
        in_window,
        completed_total,
        in_window as f64 / window,
        percentile(&ttfts, 50.0),
        percentile(&ttfts, 99.0),
        percentile(&heads, 50.0),
        percentile(&totals, 50.0),
        error_count,
        kinds,
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Only when asked: tracing hyper and h2 is how a stall is told apart from a slow server.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("RELAY_LOAD_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("relay_load: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("relay_load: {error}");
            ExitCode::FAILURE
        }
    }
}
