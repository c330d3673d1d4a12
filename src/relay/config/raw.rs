//! The relay configuration file exactly as written: serde structs mirroring the TOML.
//!
//! Like the DNS tier's [`crate::config::raw`], these types only describe the document's shape:
//! they reject unknown keys and wrong types and check nothing else. Values that need checking
//! are kept as written (strings, `i64`, `f64`) so [`super::validate`] can report every bad value
//! with its field path at once.
//!
//! Defaults are named functions shared by serde and the `Default` impls, so the documented
//! default, the serde default and `RawTimeouts::default()` cannot drift apart.

use std::{fmt, path::PathBuf};

use serde::{
    Deserialize, Deserializer,
    de::{self, SeqAccess, Visitor},
};

/// The whole `meridian relay` configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelayConfig {
    /// Required: its presence is what marks a file as a relay config (see
    /// [`super::config_kind`]).
    pub relay: RawRelay,
    #[serde(default, rename = "backend")]
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub shedding: RawShedding,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub health: RawHealth,
}

/// `[relay]`: identity and listeners.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    pub region: String,
    pub listen: String,
    #[serde(default)]
    pub plain_listen: Option<String>,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// File holding the admin listener's bearer token; `None`: mutating admin calls are open
    /// (allowed only on a loopback `admin_listen`).
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    #[serde(default = "default_http3")]
    pub http3: bool,
    #[serde(default = "default_scrape_interval_ms")]
    pub scrape_interval_ms: i64,
    pub tls: RawTls,
    /// `None`: this relay reports to no DNS node.
    #[serde(default)]
    pub health_channel: Option<RawHealthChannel>,
}

// Loopback: without `admin_token_file` the admin listener drains and reloads without
// authentication, so exposing it must be a deliberate choice (and then needs a token). 9190 sits next to the DNS tier's 9153 in Prometheus' port range.
pub fn default_admin_listen() -> String {
    "127.0.0.1:9190".to_owned()
}

pub fn default_http3() -> bool {
    true
}

// A second: fresh enough for the once-a-second health report to the DNS tier, cheap for the
// backends' `/metrics` handlers.
pub fn default_scrape_interval_ms() -> i64 {
    1000
}

/// `[relay.tls]`: PEM files, relative to the config file's folder.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[relay.health_channel]`: the QUIC report channel to the DNS tier (design §4).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawHealthChannel {
    /// The deployment CA (`meridian certs deployment`), the only root trusted for the nodes.
    pub ca: PathBuf,
    /// This relay's certificate from the same deployment; its region must be `relay.region`.
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_report_interval_ms")]
    pub interval_ms: i64,
    #[serde(default = "default_report_validity_ms")]
    pub validity_ms: i64,
    #[serde(default, rename = "node")]
    pub nodes: Vec<RawHealthNode>,
}

/// `[[relay.health_channel.node]]`: one DNS node's health listener.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawHealthNode {
    pub id: String,
    /// `ip:port` of the node's `[health] listen`.
    pub address: String,
    /// The name (DNS name or IP) the node's certificate is checked against.
    pub server_name: String,
}

// Once a second (design §4): fast enough that the DNS tier follows load within a few seconds,
// and a report is a few hundred bytes per node.
pub fn default_report_interval_ms() -> i64 {
    1000
}

// Three intervals: one or two lost reports do not make the region unknown.
pub fn default_report_validity_ms() -> i64 {
    3000
}

/// `[[backend]]`: one LLM server.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub id: String,
    pub url: String,
    pub kind: RawBackendKind,
    pub models: RawModels,
    pub slots: i64,
    /// `None`: the backend's `slots`.
    #[serde(default)]
    pub capacity: Option<i64>,
    #[serde(default)]
    pub drained: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawBackendKind {
    Vllm,
    Sglang,
    Tgi,
    Llamacpp,
    Ollama,
    Openai,
}

/// `models`: a list of model ids, or a keyword (only `"discover"` is valid; any other string is
/// kept so validation can say so with the field's path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawModels {
    List(Vec<String>),
    Keyword(String),
}

// Hand-written rather than `#[serde(untagged)]`, whose only error is "data did not match any
// variant"; this one says what was expected and keeps the value's span for the field path.
impl<'de> Deserialize<'de> for RawModels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModelsVisitor;

        impl<'de> Visitor<'de> for ModelsVisitor {
            type Value = RawModels;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of model ids or \"discover\"")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawModels, E> {
                Ok(RawModels::Keyword(value.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawModels, A::Error> {
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(id) = seq.next_element::<String>()? {
                    ids.push(id);
                }
                Ok(RawModels::List(ids))
            }
        }

        deserializer.deserialize_any(ModelsVisitor)
    }
}

/// `[timeouts]`, in milliseconds.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default = "default_connect_ms")]
    pub connect_ms: i64,
    #[serde(default = "default_first_byte_ms")]
    pub first_byte_ms: i64,
    #[serde(default = "default_idle_ms")]
    pub idle_ms: i64,
    #[serde(default = "default_total_ms")]
    pub total_ms: i64,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            first_byte_ms: default_first_byte_ms(),
            idle_ms: default_idle_ms(),
            total_ms: default_total_ms(),
        }
    }
}

// Backends sit in the relay's own region: a connect slower than this is a dead host.
pub fn default_connect_ms() -> i64 {
    2000
}

// Time to first token includes queueing and prefill of a long prompt on a busy backend.
pub fn default_first_byte_ms() -> i64 {
    60_000
}

// Tokens arrive every few tens of ms; half a minute of silence mid-stream is a stuck backend.
pub fn default_idle_ms() -> i64 {
    30_000
}

// Ten minutes: long generations finish, abandoned ones do not hold a slot forever.
pub fn default_total_ms() -> i64 {
    600_000
}

/// `[retry]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i64,
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: i64,
    #[serde(default = "default_max_retry_after_ms")]
    pub max_retry_after_ms: i64,
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            budget_ratio: default_budget_ratio(),
            min_retries_per_second: default_min_retries_per_second(),
            max_retry_after_ms: default_max_retry_after_ms(),
        }
    }
}

pub fn default_max_attempts() -> i64 {
    3
}

// Linkerd's and gRPC's default: retries add at most 20% to the load of a struggling region.
pub fn default_budget_ratio() -> f64 {
    0.2
}

// So a quiet relay can still retry its occasional failure.
pub fn default_min_retries_per_second() -> i64 {
    5
}

// Waiting longer than this for one backend is worse than answering 429 and letting the client
// (or DNS) pick another region.
pub fn default_max_retry_after_ms() -> i64 {
    2000
}

/// `[shedding]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawShedding {
    #[serde(default = "default_max_saturation")]
    pub max_saturation: f64,
    #[serde(default = "default_retry_after_s")]
    pub retry_after_s: i64,
}

impl Default for RawShedding {
    fn default() -> Self {
        Self {
            max_saturation: default_max_saturation(),
            retry_after_s: default_retry_after_s(),
        }
    }
}

// Shed just before full, so admitted requests keep their latency.
pub fn default_max_saturation() -> f64 {
    0.95
}

pub fn default_retry_after_s() -> i64 {
    2
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default = "default_max_request_body_bytes")]
    pub max_request_body_bytes: i64,
    #[serde(default = "default_max_request_header_bytes")]
    pub max_request_header_bytes: i64,
    #[serde(default = "default_max_response_header_bytes")]
    pub max_response_header_bytes: i64,
    #[serde(default = "default_max_connections")]
    pub max_connections: i64,
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: i64,
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: default_max_request_body_bytes(),
            max_request_header_bytes: default_max_request_header_bytes(),
            max_response_header_bytes: default_max_response_header_bytes(),
            max_connections: default_max_connections(),
            max_streams_per_connection: default_max_streams_per_connection(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
        }
    }
}

// Room for a long chat history (a 128k-token context is about 0.5 MB of text) with JSON
// overhead; large enough for embeddings batches, small enough to bound memory per request.
pub fn default_max_request_body_bytes() -> i64 {
    4 * 1024 * 1024
}

pub fn default_max_request_header_bytes() -> i64 {
    64 * 1024
}

pub fn default_max_response_header_bytes() -> i64 {
    64 * 1024
}

pub fn default_max_connections() -> i64 {
    4096
}

// HTTP/2's customary SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 recommends at least 100).
pub fn default_max_streams_per_connection() -> i64 {
    128
}

pub fn default_header_read_timeout_ms() -> i64 {
    10_000
}

/// `[health]`, in milliseconds and counts.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    #[serde(default = "default_interval_ms")]
    pub interval_ms: i64,
    #[serde(default = "default_deep_interval_ms")]
    pub deep_interval_ms: i64,
    #[serde(default = "default_deep_timeout_ms")]
    pub deep_timeout_ms: i64,
    #[serde(default = "default_eject_after_failures")]
    pub eject_after_failures: i64,
    #[serde(default = "default_base_ejection_ms")]
    pub base_ejection_ms: i64,
    #[serde(default = "default_max_ejection_ms")]
    pub max_ejection_ms: i64,
    #[serde(default = "default_healthy_after_successes")]
    pub healthy_after_successes: i64,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            interval_ms: default_interval_ms(),
            deep_interval_ms: default_deep_interval_ms(),
            deep_timeout_ms: default_deep_timeout_ms(),
            eject_after_failures: default_eject_after_failures(),
            base_ejection_ms: default_base_ejection_ms(),
            max_ejection_ms: default_max_ejection_ms(),
            healthy_after_successes: default_healthy_after_successes(),
        }
    }
}

pub fn default_interval_ms() -> i64 {
    2000
}

// A 1-token completion costs a batch slot; every half minute is enough to catch a backend
// that answers `/health` but cannot generate.
pub fn default_deep_interval_ms() -> i64 {
    30_000
}

pub fn default_deep_timeout_ms() -> i64 {
    10_000
}

pub fn default_eject_after_failures() -> i64 {
    3
}

pub fn default_base_ejection_ms() -> i64 {
    5000
}

pub fn default_max_ejection_ms() -> i64 {
    300_000
}

// One lucky probe must not bring a flapping backend back.
pub fn default_healthy_after_successes() -> i64 {
    2
}
