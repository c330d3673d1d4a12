//! The validated configuration model of the DNS tier.
//!
//! Everything here has already been checked by [`super::raw`]'s `TryFrom`: region ids exist,
//! GSLB names lie inside a configured zone, lists are non-empty where they must be. Code that
//! receives a [`DnsConfig`] never re-validates; code that builds one never skips validation.
//! Regions are referred to by [`RegionIdx`], their position in [`DnsConfig::regions`], so the
//! query path never hashes a string.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use hickory_proto::rr::Name;
use ipnet::IpNet;

/// Position of a region in [`DnsConfig::regions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionIdx(pub u16);

impl RegionIdx {
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

/// The whole validated configuration of `meridian dns`.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where the config file lives; relative paths below were resolved against its folder.
    pub source: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub limits: Limits,
    pub geoip: Option<GeoIpSource>,
    pub zones: Vec<ZoneSource>,
    pub regions: Vec<Region>,
    pub gslb: Vec<GslbName>,
    /// Operator CIDR overrides, most specific first; they win over GeoIP.
    pub overrides: Vec<CidrOverride>,
    /// Where operator region state (drain / force down / weight) is persisted.
    pub operator_state_file: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    /// `[health]`: the relay report channel; `None` = no channel (every region unknown).
    pub health: Option<HealthChannel>,
    /// `[admin]`: the operator HTTP API; `None` = no admin listener.
    pub admin: Option<AdminApi>,
    /// `[anycast]`: BGP announcement control through BIRD; `None` = not anycast.
    pub anycast: Option<Anycast>,
    /// `[rrl]`: response-rate limiting of UDP answers; `None` = off.
    pub rrl: Option<RateLimit>,
}

/// `[health]`: where this DNS node listens for relay reports and how it judges them
/// (design §4). Thresholds are counted in reports, not seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthChannel {
    /// QUIC (UDP) listen address of the report channel.
    pub listen: SocketAddr,
    /// The deployment CA that signed relay certificates.
    pub ca: PathBuf,
    /// This node's certificate chain and key (server auth).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Bad reports in a row before a region is taken out (≥ 1).
    pub down_after: u32,
    /// Good reports in a row before it is put back (≥ `down_after`).
    pub up_after: u32,
    /// Longest validity a report may claim; older reports are stale whatever they say.
    pub max_report_validity: std::time::Duration,
    /// Spill-over: a region whose headroom fraction falls below `trip` stops getting new
    /// clients first; it is put back only after `hold_reports` reports above `recover`.
    pub spill: SpillWatermarks,
    /// How often the published health is recomputed (silence turns into unknown).
    pub refresh_interval: std::time::Duration,
    /// The node's own probe of regions without a fresh report.
    pub probe: ProbeSettings,
    /// Most concurrent relay connections accepted.
    pub max_connections: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpillWatermarks {
    /// Headroom fraction (0..1) at or below which a region starts spilling.
    pub trip: f64,
    /// Headroom fraction (> `trip`) the region must exceed to stop spilling …
    pub recover: f64,
    /// … for this many consecutive reports (≥ 1).
    pub hold_reports: u32,
}

impl Default for SpillWatermarks {
    fn default() -> Self {
        Self {
            trip: 0.05,
            recover: 0.20,
            hold_reports: 3,
        }
    }
}

/// How a DNS node checks a region it has no fresh report from.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSettings {
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    /// Failed probes in a row before a silent region counts as down.
    pub down_after: u32,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            interval: std::time::Duration::from_secs(2),
            timeout: std::time::Duration::from_secs(2),
            down_after: 2,
        }
    }
}

/// `[admin]`: the operator HTTP API (status, drain, weights, status page, metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminApi {
    /// Loopback by default.
    pub listen: SocketAddr,
    /// File holding the bearer token (one line; surrounding whitespace ignored).
    pub token_file: PathBuf,
}

/// `[anycast]`: the node announces `prefixes` through BIRD while it is fit to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anycast {
    /// BIRD's control socket.
    pub bird_socket: PathBuf,
    /// The BIRD protocol (e.g. a `static` protocol holding the anycast routes) that is enabled
    /// to announce and disabled to withdraw.
    pub protocol: String,
    /// Self-check: withdraw when the serving snapshot is older than this without a successful
    /// reload check, when a listener failed, or (if set) when no relay report arrived for
    /// `max_health_silence`.
    pub max_health_silence: Option<std::time::Duration>,
    /// How often the self-check runs.
    pub check_interval: std::time::Duration,
}

/// `[rrl]`: response-rate limiting per client prefix and answer (Knot / NSD / BIND style).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Responses per second allowed for one (client prefix, answer) bucket.
    pub responses_per_second: u32,
    /// Burst on top of the rate, in responses.
    pub burst: u32,
    /// Every `slip`-th limited response is sent truncated (TC=1) instead of dropped; 0 = drop all.
    pub slip: u32,
    /// Client prefix lengths buckets are kept per.
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Most buckets tracked; the oldest are forgotten first.
    pub max_buckets: usize,
}

impl DnsConfig {
    pub fn region(&self, idx: RegionIdx) -> &Region {
        &self.regions[idx.get()]
    }

    pub fn region_by_id(&self, id: &str) -> Option<RegionIdx> {
        self.regions
            .iter()
            .position(|r| r.id.as_ref() == id)
            .and_then(|i| u16::try_from(i).ok())
            .map(RegionIdx)
    }
}

/// Transport limits of the DNS listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest UDP response we send when the client advertises more (EDNS payload size).
    pub max_udp_payload: u16,
    /// How long an idle TCP connection is kept open.
    pub tcp_idle_timeout_ms: u64,
    /// Most TCP connections served at once; further ones are closed on accept.
    pub max_tcp_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_udp_payload: 1232,
            tcp_idle_timeout_ms: 10_000,
            max_tcp_connections: 1024,
        }
    }
}

/// A GeoIP database file (MaxMind DB: City or Country).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeoIpSource {
    pub path: PathBuf,
}

/// One RFC 1035 zone file and the origin it is loaded at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneSource {
    /// Lower-case, fully qualified.
    pub origin: Name,
    pub file: PathBuf,
    /// Client networks allowed to transfer the zone (AXFR, IXFR); empty = transfers refused.
    /// Host bits are zero.
    pub transfer_to: Vec<IpNet>,
    /// Secondaries sent a NOTIFY (RFC 1996) when a reload changes the zone's serial.
    pub notify: Vec<SocketAddr>,
    /// `transfer_key`: transfers must be signed with this key (on top of `transfer_to`), and
    /// NOTIFYs are signed with it. Resolved from its `[[tsig_key]]` at validation.
    pub transfer_key: Option<TsigKey>,
}

/// A `[[tsig_key]]` (RFC 8945). The secret is read from `secret_file` when it is used
/// (`crate::dns::tsig::Key::load`), so it is never part of the configuration, its `Debug`
/// output or a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsigKey {
    /// Lower-case, fully qualified: the TSIG record's owner name.
    pub name: Name,
    pub algorithm: TsigAlgorithm,
    pub secret_file: PathBuf,
}

/// A TSIG MAC algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha512,
}

impl TsigAlgorithm {
    /// The algorithm's name as written in TSIG records and configuration (RFC 8945 §6).
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }
}

impl ZoneSource {
    /// Whether `client` may transfer this zone. IPv4-mapped IPv6 clients (dual-stack
    /// sockets) are matched as IPv4.
    pub fn transfer_allowed(&self, client: std::net::IpAddr) -> bool {
        let client = match client {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.transfer_to
            .iter()
            .any(|network| network.contains(&client))
    }
}

/// A region: a set of relay endpoints clients can be steered to.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    pub id: Arc<str>,
    pub coordinates: Coordinates,
    pub endpoints: Endpoints,
    /// Nominal capacity weight (> 0); the weighted mode splits answers by it.
    pub capacity: u32,
    /// Relative cost of serving from this region (≥ 0; default 1); see [`CostPreference`].
    pub cost: f64,
    /// Model pools this region serves; empty = every pool.
    pub models: Vec<Arc<str>>,
    /// Where the DNS node's own probe reaches this region's relay, when reports go silent.
    pub probe: Option<RelayProbe>,
}

/// The relay endpoint a DNS node probes: a QUIC handshake and an HTTPS `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayProbe {
    /// HTTPS (TCP) and HTTP/3 (UDP) address of the relay.
    pub address: SocketAddr,
    /// TLS server name to verify the relay's certificate against.
    pub server_name: String,
    /// CA to verify it with; `None` = the `[health]` CA.
    pub ca: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coordinates {
    pub latitude: f64,
    pub longitude: f64,
}

/// What a region's answer contains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// At least one of the two lists is non-empty.
    Addresses {
        v4: Vec<Ipv4Addr>,
        v6: Vec<Ipv6Addr>,
    },
    /// A CNAME target (lower-case, fully qualified), e.g. a cloud load balancer's name.
    Cname(Name),
}

/// A name answered by the steering core rather than from zone data.
#[derive(Clone, Debug)]
pub struct GslbName {
    /// Lower-case, fully qualified; lies inside `zone`.
    pub name: Name,
    /// Origin of the zone it belongs to (shares that zone's SOA and NS).
    pub zone: Name,
    pub policy: SteeringPolicy,
}

/// How one GSLB name picks its answer: candidates → health filter → ordering → first N.
#[derive(Clone, Debug, PartialEq)]
pub struct SteeringPolicy {
    pub mode: SteeringMode,
    /// Eligible regions, in the order the operator listed them (the failover order).
    pub candidates: Vec<RegionIdx>,
    /// Regions answered per response (≥ 1).
    pub answers: usize,
    /// TTL of the answer records, in seconds.
    pub ttl: u32,
    pub when_all_unhealthy: AllUnhealthy,
    /// Whether EDNS Client Subnet is honoured (and echoed) for this name.
    pub ecs: bool,
    /// Whether `_why.<name>` TXT queries explain the decision.
    pub why: bool,
    /// The model pool the name is bound to: regions not serving it are not candidates.
    pub model: Option<Arc<str>>,
    /// Prefer the cheapest serving candidate within a budget of the best one.
    pub cost: Option<CostPreference>,
}

/// Cost-aware steering: after ordering, the cheapest serving candidate whose distance (or
/// measured latency) is within `budget` of the first one's is moved to the front.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CostPreference {
    /// Extra great-circle distance allowed, in km.
    WithinKm(f64),
    /// Extra measured client RTT allowed, in ms (needs latency data; otherwise no change).
    WithinMs(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum SteeringMode {
    /// Country / subdivision / continent → ordered regions.
    GeoMap(GeoMap),
    /// Nearest by great-circle distance from the client's GeoIP coordinates.
    Nearest,
    /// Split by region weight (capacity × operator weight); independent of the client.
    Weighted,
    /// The candidates in their configured order; independent of the client.
    Failover,
    /// Lowest relay-measured client RTT for the client's prefix (/24, /48); where there is no
    /// data, the fallback ordering (geo map or nearest).
    Latency(LatencyFallback),
}

#[derive(Clone, Debug, PartialEq)]
pub enum LatencyFallback {
    GeoMap(GeoMap),
    Nearest,
}

/// A geo map. Keys are upper-case: ISO 3166-1 country (`GB`), ISO 3166-2 subdivision
/// (`US-CA`), MaxMind continent code (`EU`, `NA`, `SA`, `AS`, `AF`, `OC`, `AN`).
/// Lookup order: subdivision, country, continent, default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GeoMap {
    pub subdivisions: HashMap<String, Vec<RegionIdx>>,
    pub countries: HashMap<String, Vec<RegionIdx>>,
    pub continents: HashMap<String, Vec<RegionIdx>>,
    pub default: Vec<RegionIdx>,
}

/// What to answer when no candidate region is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AllUnhealthy {
    /// Answer as if all candidates were up (Route 53 / Azure behaviour).
    #[default]
    FailOpen,
    /// SERVFAIL.
    FailClosed,
}

/// An operator CIDR override: clients in `network` prefer `regions`, in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrOverride {
    pub network: IpNet,
    pub regions: Vec<RegionIdx>,
}
