//! `meridian sim-backend`: a simulated OpenAI-compatible LLM server for tests, the demo and
//! benchmarks.
//!
//! It behaves like a real inference server under load, in the ways a relay can observe: a
//! request takes one of a few batch slots or waits in a bounded FIFO queue (503 beyond it),
//! produces its first token a prefill time after getting its slot and the rest at a steady rate,
//! streams them as SSE frames at the moment they are produced, and frees its slot the moment its
//! client goes away. Each `--kind` publishes its load the way that server does (`/metrics`
//! names, llama.cpp's `/slots`, Ollama's health page), from the real queue. Faults are injected
//! from flags or at run time (`POST /sim/control`), and `GET /sim/stats` tells tests what the
//! backend saw.
//!
//! Layout: `engine` decides (slots, queue, token schedule, failure injection; pure, `now` passed
//! in), `openai` and `exposition` render the wire formats (pure), `state` is the shared state
//! with the guards that give a slot back however a request ends, `server` is the hyper shell.
//! This module must not grow relay logic: it is the thing the relay is tested against.

mod engine;
mod exposition;
mod openai;
mod server;
mod state;
#[cfg(test)]
mod tests;

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{error, info};

pub use engine::{MAX_TOKENS_CAP, SimStats, TOKENS_BEFORE_DEATH};
use state::Shared;

/// Largest request body accepted; beyond it the answer is 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

const DEFAULT_SLOTS: u32 = 4;
const DEFAULT_QUEUE_LIMIT: u32 = 64;
const DEFAULT_TTFT_MS: u64 = 50;
const DEFAULT_TOKENS_PER_S: f64 = 50.0;
const DEFAULT_MAX_TOKENS: u32 = 16;

/// Which server software to imitate: decides `/metrics`, `/slots` and the health path.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimKind {
    Vllm,
    Sglang,
    Tgi,
    Llamacpp,
    Ollama,
    /// A generic OpenAI-compatible server: `/health`, no load signals.
    Openai,
}

impl SimKind {
    /// Where this kind answers a liveness probe with 200.
    pub fn health_path(self) -> &'static str {
        match self {
            SimKind::Ollama => "/",
            _ => "/health",
        }
    }
}

/// An injected fault. Each reproduces a way real backends fail that the relay must handle.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultMode {
    #[default]
    None,
    /// 200 and the response headers at once, then nothing until the client goes away. No slot
    /// is taken: the engine never saw the request.
    HangAfterHeaders,
    /// A stream that stops after a few tokens ([`TOKENS_BEFORE_DEATH`]) with the connection
    /// reset: no finish chunk, no `[DONE]`. A non-streaming answer is cut after its headers.
    DieMidStream,
    /// 503 with `Retry-After: 1` before any body, no slot taken: a refusal that is safe to retry.
    UnavailableBeforeBody,
    /// Requests take their slot and never produce a first token, while `/health` and
    /// `/v1/models` keep answering 200: only a deep probe (a real completion) catches it.
    GenerationHangs,
}

/// The simulator's command line (`meridian sim-backend`).
#[derive(clap::Args, Clone, Debug)]
pub struct SimBackendArgs {
    /// Address to listen on (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// A model id this backend serves (repeatable).
    #[arg(long = "model", value_name = "NAME", required = true)]
    pub models: Vec<String>,
    /// Which server to imitate: decides `/metrics`, `/slots` and the health path.
    #[arg(long, value_enum, default_value_t = SimKind::Vllm)]
    pub kind: SimKind,
    /// Concurrent generations (batch slots).
    #[arg(long, default_value_t = DEFAULT_SLOTS)]
    pub slots: u32,
    /// Requests that may wait for a slot; beyond it the answer is 503.
    #[arg(long, default_value_t = DEFAULT_QUEUE_LIMIT)]
    pub queue_limit: u32,
    /// Prefill time: from getting a slot to the first token, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_TTFT_MS)]
    pub ttft_ms: u64,
    /// Decode rate once the first token is out.
    #[arg(long, default_value_t = DEFAULT_TOKENS_PER_S, value_parser = parse_tokens_per_s)]
    pub tokens_per_s: f64,
    /// Tokens generated when a request has no `max_tokens` (capped at 4096).
    #[arg(long, default_value_t = DEFAULT_MAX_TOKENS)]
    pub max_tokens: u32,
    /// Fraction of requests answered 500 before any body (0..=1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fail_rate)]
    pub fail_rate: f64,
    /// Fault to inject from the start (changeable with `POST /sim/control`).
    #[arg(long, value_enum, default_value_t = FaultMode::None)]
    pub fault: FaultMode,
    /// Written once listening: `{"listen": "127.0.0.1:PORT", "pid": N}`.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

impl SimBackendArgs {
    /// The defaults of the command line, for in-process use (tests, benchmarks).
    pub fn new<M: Into<String>>(models: impl IntoIterator<Item = M>) -> SimBackendArgs {
        SimBackendArgs {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            models: models.into_iter().map(Into::into).collect(),
            kind: SimKind::Vllm,
            slots: DEFAULT_SLOTS,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            ttft_ms: DEFAULT_TTFT_MS,
            tokens_per_s: DEFAULT_TOKENS_PER_S,
            max_tokens: DEFAULT_MAX_TOKENS,
            fail_rate: 0.0,
            fault: FaultMode::None,
            ready_file: None,
        }
    }
}

/// The run-time settings `POST /sim/control` changes. New values apply to requests that arrive
/// (fault, failure rate) or get a slot (timing) after the change.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Control {
    pub fault: FaultMode,
    pub fail_rate: f64,
    pub ttft_ms: u64,
    pub tokens_per_s: f64,
}

/// A change to [`Control`]: the body of `POST /sim/control`; absent fields stay as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlChange {
    pub fault: Option<FaultMode>,
    pub fail_rate: Option<f64>,
    pub ttft_ms: Option<u64>,
    pub tokens_per_s: Option<f64>,
}

/// Why a control change was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ControlError {
    #[error("fail_rate must be within 0..=1, got {value}")]
    FailRateOutOfRange { value: f64 },
    #[error("tokens_per_s must be a positive number, got {value}")]
    TokensPerSecondNotPositive { value: f64 },
}

impl Control {
    /// The settings after `change`, or why it is refused (then nothing changes).
    pub fn apply(self, change: ControlChange) -> Result<Control, ControlError> {
        Ok(Control {
            fault: change.fault.unwrap_or(self.fault),
            fail_rate: match change.fail_rate {
                Some(value) => valid_fail_rate(value)?,
                None => self.fail_rate,
            },
            ttft_ms: change.ttft_ms.unwrap_or(self.ttft_ms),
            tokens_per_s: match change.tokens_per_s {
                Some(value) => valid_tokens_per_s(value)?,
                None => self.tokens_per_s,
            },
        })
    }
}

fn valid_fail_rate(value: f64) -> Result<f64, ControlError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ControlError::FailRateOutOfRange { value })
    }
}

fn valid_tokens_per_s(value: f64) -> Result<f64, ControlError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(ControlError::TokensPerSecondNotPositive { value })
    }
}

fn parse_fail_rate(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|error| format!("{error}"))?;
    valid_fail_rate(value).map_err(|error| error.to_string())
}

fn parse_tokens_per_s(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|error| format!("{error}"))?;
    valid_tokens_per_s(value).map_err(|error| error.to_string())
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimBackendError {
    #[error("cannot start the async runtime: {source}")]
    Runtime { source: io::Error },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile { path: PathBuf, source: io::Error },
}

/// Serves the simulator on `listener` until `shutdown` turns true (or its sender is dropped).
/// `args.listen` and `args.ready_file` are not used here: the listener is already bound.
pub async fn serve(
    listener: TcpListener,
    args: SimBackendArgs,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    server::serve(listener, Arc::new(Shared::new(&args)), shutdown).await
}

/// A simulator running in this process, for tests and benchmarks that want to look inside
/// without HTTP. Dropping it stops the server.
pub struct SimBackend {
    address: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    server: Option<JoinHandle<io::Result<()>>>,
}

impl SimBackend {
    /// Binds `args.listen` and serves on the current runtime.
    pub async fn start(args: SimBackendArgs) -> Result<SimBackend, SimBackendError> {
        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| SimBackendError::Bind {
                    address: args.listen,
                    source,
                })?;
        let address = listener
            .local_addr()
            .map_err(|source| SimBackendError::Bind {
                address: args.listen,
                source,
            })?;
        let shared = Arc::new(Shared::new(&args));
        let (shutdown, watch_shutdown) = watch::channel(false);
        let server = tokio::spawn(server::serve(listener, shared.clone(), watch_shutdown));
        Ok(SimBackend {
            address,
            shared,
            shutdown,
            server: Some(server),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://ADDRESS`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The same numbers as `GET /sim/stats`.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Waits until the stats satisfy `done`, woken by every change: lets tests wait for "the
    /// upstream request was cancelled" without sleeping. Bound it with a timeout.
    pub async fn wait_for(&self, done: impl FnMut(&SimStats) -> bool) -> SimStats {
        self.shared.wait_for(done).await
    }

    /// The same as `POST /sim/control`.
    pub fn control(&self, change: ControlChange) -> Result<Control, ControlError> {
        self.shared.change_control(change)
    }

    /// Stops accepting, lets short requests finish (briefly: hanging ones never would), returns.
    pub async fn shutdown(mut self) -> io::Result<()> {
        let _ = self.shutdown.send(true);
        match self.server.take() {
            Some(server) => server.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for SimBackend {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// What the CLI calls: binds, writes the ready file, serves until SIGTERM or SIGINT.
pub fn run(args: SimBackendArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => {
            let error = SimBackendError::Runtime { source };
            eprintln!("meridian sim-backend: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_until_signal(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(%error, "sim-backend failed");
            eprintln!("meridian sim-backend: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_until_signal(args: SimBackendArgs) -> Result<(), SimBackendError> {
    let ready_file = args.ready_file.clone();
    let backend = SimBackend::start(args.clone()).await?;
    if let Some(path) = &ready_file {
        write_ready_file(path, backend.address()).map_err(|source| SimBackendError::ReadyFile {
            path: path.clone(),
            source,
        })?;
    }
    info!(
        listen = %backend.address(),
        kind = ?args.kind,
        models = ?args.models,
        slots = args.slots,
        "sim-backend serving"
    );
    wait_for_termination().await;
    info!("sim-backend shutting down");
    let served = backend.shutdown().await;
    if let Some(path) = &ready_file {
        let _ = std::fs::remove_file(path);
    }
    if let Err(error) = served {
        error!(%error, "sim-backend server ended with an error");
    }
    Ok(())
}

#[derive(Serialize)]
struct ReadyFile {
    listen: SocketAddr,
    pid: u32,
}

/// Written to a temporary name and renamed, so a reader never sees half a file.
fn write_ready_file(path: &Path, listen: SocketAddr) -> io::Result<()> {
    let ready = ReadyFile {
        listen,
        pid: std::process::id(),
    };
    let text = serde_json::to_string(&ready).map_err(io::Error::other)?;
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; serve until then.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
