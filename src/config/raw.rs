//! The configuration file exactly as written: serde structs mirroring the TOML.
//!
//! These types only describe the document's shape. They reject unknown keys (a typo must not
//! silently become a default) but check nothing else; [`super::validate`] turns them into the
//! [`super::model`] and reports every problem at once. Values that need checking are kept as
//! written (strings, `i64`) so a bad value becomes a located [`super::Problem`] rather than
//! serde's first-error-wins message.
//!
//! Defaults are named functions shared by serde and the `Default` impls, so the documented
//! default, the serde default and `RawServer::default()` cannot drift apart.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

/// The whole `meridian dns` configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDnsConfig {
    /// Where operator region state is persisted.
    #[serde(default)]
    pub operator_state: Option<PathBuf>,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub geoip: Option<RawGeoIp>,
    #[serde(default, rename = "zone")]
    pub zones: Vec<RawZone>,
    #[serde(default, rename = "region")]
    pub regions: Vec<RawRegion>,
    #[serde(default)]
    pub gslb: Vec<RawGslb>,
    #[serde(default, rename = "override")]
    pub overrides: Vec<RawOverride>,
    #[serde(default)]
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub anycast: Option<RawAnycast>,
    #[serde(default)]
    pub rrl: Option<RawRateLimit>,
    /// `[[tsig_key]]`: shared secrets zone transfers and NOTIFYs are signed with.
    #[serde(default, rename = "tsig_key")]
    pub tsig_keys: Vec<RawTsigKey>,
}

/// `[server]`: listeners and transport limits.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default = "default_max_udp_payload")]
    pub max_udp_payload: i64,
    #[serde(default = "default_tcp_idle_timeout_ms")]
    pub tcp_idle_timeout_ms: i64,
    #[serde(default = "default_max_tcp_connections")]
    pub max_tcp_connections: i64,
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_udp_payload: default_max_udp_payload(),
            tcp_idle_timeout_ms: default_tcp_idle_timeout_ms(),
            max_tcp_connections: default_max_tcp_connections(),
            metrics_listen: None,
        }
    }
}

// Loopback and an unprivileged port: a fresh checkout runs without root and exposes nothing.
pub fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:5353".to_owned()]
}

// 1232 bytes is the DNS Flag Day 2020 recommendation: it fits an IPv6 packet in a 1280-byte
// MTU without fragmentation.
pub fn default_max_udp_payload() -> i64 {
    1232
}

pub fn default_tcp_idle_timeout_ms() -> i64 {
    10_000
}

pub fn default_max_tcp_connections() -> i64 {
    1024
}

/// `[geoip]`: the MaxMind database clients are located with.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawGeoIp {
    pub database: PathBuf,
}

/// `[[zone]]`: one RFC 1035 zone file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawZone {
    pub origin: String,
    pub file: PathBuf,
    /// Networks allowed to transfer the zone (AXFR/IXFR); empty = no transfers.
    #[serde(default)]
    pub transfer_to: Vec<String>,
    /// Secondaries sent a NOTIFY when a reload changes the zone's serial.
    #[serde(default)]
    pub notify: Vec<String>,
    /// Name of the `[[tsig_key]]` transfers must be signed with (and NOTIFYs are signed with).
    #[serde(default)]
    pub transfer_key: Option<String>,
}

/// `[[tsig_key]]`: a TSIG (RFC 8945) key. The secret lives in its own file, never in the
/// configuration, so the configuration can be shown and versioned.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawTsigKey {
    pub name: String,
    pub algorithm: RawTsigAlgorithm,
    /// The base64 secret, as `tsig-keygen` or `keymgr -t` print it.
    pub secret_file: PathBuf,
}

/// The HMACs a TSIG key may use (RFC 8945 §6: SHA-256 is mandatory to implement).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum RawTsigAlgorithm {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

/// `[[region]]`: a set of relay endpoints.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub id: String,
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub ipv4: Vec<String>,
    #[serde(default)]
    pub ipv6: Vec<String>,
    #[serde(default)]
    pub cname: Option<String>,
    #[serde(default = "default_capacity")]
    pub capacity: i64,
    #[serde(default = "default_cost")]
    pub cost: f64,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub probe: Option<RawRelayProbe>,
}

pub fn default_cost() -> f64 {
    1.0
}

/// `[region.probe]`: where the DNS node's own probe reaches the region's relay.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRelayProbe {
    pub address: String,
    pub server_name: String,
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

pub fn default_capacity() -> i64 {
    100
}

/// `[[gslb]]`: a name answered by the steering core.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawGslb {
    pub name: String,
    pub mode: RawMode,
    /// `None` means every region, in config order.
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    #[serde(default = "default_answers")]
    pub answers: i64,
    #[serde(default = "default_ttl")]
    pub ttl: i64,
    #[serde(default)]
    pub when_all_unhealthy: RawAllUnhealthy,
    #[serde(default = "default_ecs")]
    pub ecs: bool,
    #[serde(default)]
    pub why: bool,
    #[serde(default)]
    pub geo: Option<RawGeoMap>,
    /// The model pool the name is bound to.
    #[serde(default)]
    pub model: Option<String>,
    /// Only with `mode = "latency"`: the ordering used where there is no latency data.
    #[serde(default)]
    pub latency_fallback: Option<RawLatencyFallback>,
    #[serde(default)]
    pub cost: Option<RawCost>,
}

/// `latency_fallback` of a `mode = "latency"` name.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawLatencyFallback {
    Geo,
    Nearest,
}

/// `cost = { within_km = … }` or `cost = { within_ms = … }`; exactly one of the two
/// (checked by the validator, which can say which field is at fault).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCost {
    #[serde(default)]
    pub within_km: Option<f64>,
    #[serde(default)]
    pub within_ms: Option<f64>,
}

pub fn default_answers() -> i64 {
    1
}

// Short enough that a drained region stops receiving new resolutions within half a minute,
// long enough that resolvers absorb most of the query load.
pub fn default_ttl() -> i64 {
    30
}

pub fn default_ecs() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawMode {
    Geo,
    Nearest,
    Weighted,
    Failover,
    Latency,
}

impl RawMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Geo => "geo",
            Self::Nearest => "nearest",
            Self::Weighted => "weighted",
            Self::Failover => "failover",
            Self::Latency => "latency",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawAllUnhealthy {
    #[default]
    FailOpen,
    FailClosed,
}

/// `[gslb.geo]`. Maps are ordered so errors come out in a stable order.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawGeoMap {
    pub default: Vec<String>,
    #[serde(default)]
    pub continents: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub countries: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub subdivisions: BTreeMap<String, Vec<String>>,
}

/// `[[override]]`: operator CIDR steering that wins over GeoIP.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub network: String,
    pub regions: Vec<String>,
}

/// `[health]`: the relay report channel of this DNS node.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub listen: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_health_down_after")]
    pub down_after: i64,
    #[serde(default = "default_health_up_after")]
    pub up_after: i64,
    #[serde(default = "default_max_report_validity_ms")]
    pub max_report_validity_ms: i64,
    #[serde(default = "default_refresh_interval_ms")]
    pub refresh_interval_ms: i64,
    #[serde(default = "default_health_max_connections")]
    pub max_connections: i64,
    #[serde(default)]
    pub spill: RawSpill,
    #[serde(default)]
    pub probe: RawProbe,
}

// Two bad reports (about two seconds at the default interval) take a region out; three good
// ones bring it back, so a flapping relay does not make answers flap.
pub fn default_health_down_after() -> i64 {
    2
}

pub fn default_health_up_after() -> i64 {
    3
}

// Ten report intervals: a relay that merely missed a few sends stays fresh.
pub fn default_max_report_validity_ms() -> i64 {
    10_000
}

// Well below a report interval, so silence turns into "unknown" promptly.
pub fn default_refresh_interval_ms() -> i64 {
    250
}

pub fn default_health_max_connections() -> i64 {
    256
}

/// `[health.spill]`: capacity spill-over watermarks (headroom fractions).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSpill {
    #[serde(default = "default_spill_trip")]
    pub trip: f64,
    #[serde(default = "default_spill_recover")]
    pub recover: f64,
    #[serde(default = "default_spill_hold_reports")]
    pub hold_reports: i64,
}

impl Default for RawSpill {
    fn default() -> Self {
        Self {
            trip: default_spill_trip(),
            recover: default_spill_recover(),
            hold_reports: default_spill_hold_reports(),
        }
    }
}

pub fn default_spill_trip() -> f64 {
    0.05
}

pub fn default_spill_recover() -> f64 {
    0.20
}

pub fn default_spill_hold_reports() -> i64 {
    3
}

/// `[health.probe]`: the node's own probe of regions it has no fresh report from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    #[serde(default = "default_probe_interval_ms")]
    pub interval_ms: i64,
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: i64,
    #[serde(default = "default_probe_down_after")]
    pub down_after: i64,
}

impl Default for RawProbe {
    fn default() -> Self {
        Self {
            interval_ms: default_probe_interval_ms(),
            timeout_ms: default_probe_timeout_ms(),
            down_after: default_probe_down_after(),
        }
    }
}

pub fn default_probe_interval_ms() -> i64 {
    2_000
}

pub fn default_probe_timeout_ms() -> i64 {
    2_000
}

pub fn default_probe_down_after() -> i64 {
    2
}

/// `[admin]`: the operator HTTP API.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    pub token_file: PathBuf,
}

// Loopback: the admin API changes what the node answers and must not be reachable by default.
pub fn default_admin_listen() -> String {
    "127.0.0.1:9954".to_owned()
}

/// `[anycast]`: announcement control through BIRD.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawAnycast {
    pub bird_socket: PathBuf,
    pub protocol: String,
    #[serde(default)]
    pub max_health_silence_ms: Option<i64>,
    #[serde(default = "default_anycast_check_interval_ms")]
    pub check_interval_ms: i64,
}

pub fn default_anycast_check_interval_ms() -> i64 {
    1_000
}

/// `[rrl]`: response-rate limiting.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    #[serde(default = "default_rrl_responses_per_second")]
    pub responses_per_second: i64,
    #[serde(default = "default_rrl_burst")]
    pub burst: i64,
    #[serde(default = "default_rrl_slip")]
    pub slip: i64,
    #[serde(default = "default_rrl_ipv4_prefix")]
    pub ipv4_prefix: i64,
    #[serde(default = "default_rrl_ipv6_prefix")]
    pub ipv6_prefix: i64,
    #[serde(default = "default_rrl_max_buckets")]
    pub max_buckets: i64,
}

// BIND's and Knot's usual starting point: generous for a real resolver, useless for a
// reflection attack.
pub fn default_rrl_responses_per_second() -> i64 {
    20
}

pub fn default_rrl_burst() -> i64 {
    20
}

// Every second limited answer goes out truncated, so a real client behind a spoofed-victim
// prefix can still retry over TCP.
pub fn default_rrl_slip() -> i64 {
    2
}

pub fn default_rrl_ipv4_prefix() -> i64 {
    24
}

pub fn default_rrl_ipv6_prefix() -> i64 {
    56
}

pub fn default_rrl_max_buckets() -> i64 {
    100_000
}
