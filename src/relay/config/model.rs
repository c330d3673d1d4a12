//! The validated configuration model of the relay tier (`meridian relay`).
//!
//! Built only by [`super`]'s loader from TOML after every check passed; code that receives a
//! [`RelayConfig`] never re-validates. At run time backends are referred to by [`BackendIdx`],
//! their stable index in the relay's pool (which follows config reloads), not by position in
//! [`RelayConfig::backends`].

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

/// A backend's stable index in the relay's pool; kept for as long as the backend exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendIdx(pub u16);

impl BackendIdx {
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The config file; relative paths were resolved against its folder.
    pub source: PathBuf,
    /// Region this relay serves, e.g. `eu-west` (must match the DNS tier's region id).
    pub region: Arc<str>,
    /// HTTPS (HTTP/1.1 + HTTP/2 over TLS, TCP) and HTTP/3 (QUIC, UDP) on the same port.
    pub listen: SocketAddr,
    /// Optional plain-HTTP listener (HTTP/1.1 and h2c) for local use and health checks.
    pub plain_listen: Option<SocketAddr>,
    /// Admin listener: `/metrics`, `/region/health`, drain. Plain HTTP; keep it private.
    pub admin_listen: SocketAddr,
    /// Bearer-token file that mutating admin calls must present; always set when
    /// `admin_listen` is not a loopback address. Read at start (`crate::relay::admin::load_token`).
    pub admin_token_file: Option<PathBuf>,
    pub tls: TlsFiles,
    /// Whether HTTP/3 is served (and advertised with `Alt-Svc`).
    pub http3: bool,
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub shedding: Shedding,
    pub limits: Limits,
    pub health: HealthChecks,
    /// How often backend load signals (`/metrics`, `/slots`) are scraped.
    pub scrape_interval: Duration,
    /// `[relay.health_channel]`: where region reports are pushed; `None` = nowhere.
    pub health_channel: Option<HealthChannel>,
}

/// The relay's end of the health channel (design §4): the files are only named here;
/// [`crate::health::sender::HealthSenderConfig::from_relay`] reads them and checks that the
/// certificate's region is [`RelayConfig::region`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChannel {
    /// The deployment CA, the only root trusted for the DNS nodes' certificates.
    pub ca: PathBuf,
    /// This relay's client certificate (its region in a SAN URI) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Time between two reports.
    pub interval: Duration,
    /// How long after receipt a report may be trusted (≥ `interval`; the DNS node caps it).
    pub validity: Duration,
    /// At least one; ids and addresses unique.
    pub nodes: Vec<HealthChannelNode>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChannelNode {
    /// Names the node in logs: 1 to 63 of `a-z`, `0-9`, `-`.
    pub id: Arc<str>,
    /// The node's `[health] listen` address (QUIC, UDP).
    pub address: SocketAddr,
    /// DNS name or IP address its certificate is verified against.
    pub server_name: String,
}

/// PEM files; reloaded when they change, without dropping connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// Unique, `[a-z0-9-]`, used in metrics and logs.
    pub id: Arc<str>,
    /// `http://host:port` or `https://host:port`, optionally with a path prefix (no trailing `/`).
    pub base_url: http::Uri,
    pub kind: BackendKind,
    pub models: ModelSource,
    /// Concurrent generations the backend can run (its batch slots); > 0.
    pub slots: u32,
    /// Relative capacity units this backend contributes to the region (default = slots).
    pub capacity: u32,
    /// Operator state from config: a drained backend finishes its streams and gets no new work.
    pub drained: bool,
}

/// Which server software a backend runs: decides its liveness path and load signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Vllm,
    Sglang,
    Tgi,
    Llamacpp,
    Ollama,
    /// Any other OpenAI-compatible server: no load signals, in-flight count only.
    Openai,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Vllm => "vllm",
            BackendKind::Sglang => "sglang",
            BackendKind::Tgi => "tgi",
            BackendKind::Llamacpp => "llamacpp",
            BackendKind::Ollama => "ollama",
            BackendKind::Openai => "openai",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// Model ids as clients send them in the `model` field.
    Declared(Vec<String>),
    /// Asked from the backend's `GET /v1/models`, refreshed with the scrape.
    Discover,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a backend.
    pub connect: Duration,
    /// From sending the request to the first response body byte (time to first token).
    pub first_byte: Duration,
    /// Longest silence between two body chunks of a streamed response.
    pub idle: Duration,
    /// Whole request, first byte in to last byte out.
    pub total: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per request including the first (1 = never retry).
    pub max_attempts: u32,
    /// Retries allowed as a fraction of recent requests (e.g. 0.2), so a failing region cannot
    /// multiply its own load; plus `min_retries_per_second` always allowed.
    pub budget_ratio: f64,
    pub min_retries_per_second: u32,
    /// Longest `Retry-After` from a backend that is honoured by waiting before the retry.
    pub max_retry_after: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shedding {
    /// Region saturation (0..=1, capacity-weighted backend load) above which new requests get
    /// 429; requests already admitted are never shed.
    pub max_saturation: f64,
    /// `Retry-After` sent with a 429.
    pub retry_after: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_request_body_bytes: usize,
    pub max_request_header_bytes: usize,
    pub max_response_header_bytes: usize,
    pub max_connections: usize,
    /// Streams per HTTP/2 or HTTP/3 connection.
    pub max_streams_per_connection: u32,
    /// A client must finish sending its request head within this time (slowloris).
    pub header_read_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthChecks {
    /// Liveness probe (`/health`, `/v1/models`, …) interval.
    pub interval: Duration,
    /// Deep probe: a 1-token completion, on a slower interval.
    pub deep_interval: Duration,
    pub deep_timeout: Duration,
    /// Consecutive failures (probe or passive) that eject a backend.
    pub eject_after_failures: u32,
    /// First ejection length; doubles on each consecutive ejection up to `max_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Consecutive good probes before an unhealthy backend is used again.
    pub healthy_after_successes: u32,
}
