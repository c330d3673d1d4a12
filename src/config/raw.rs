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
}

impl RawMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Geo => "geo",
            Self::Nearest => "nearest",
            Self::Weighted => "weighted",
            Self::Failover => "failover",
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
