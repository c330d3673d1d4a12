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
}

/// A region: a set of relay endpoints clients can be steered to.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    pub id: Arc<str>,
    pub coordinates: Coordinates,
    pub endpoints: Endpoints,
    /// Nominal capacity weight (> 0); the weighted mode splits answers by it.
    pub capacity: u32,
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
