//! Whole-chain tests of `decide` over a small hand-built world.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use hickory_proto::rr::Name;
use ipnet::IpNet;
use proptest::prelude::*;

use super::*;
use crate::{
    config::model::{
        CidrOverride, Coordinates, CostPreference, GeoMap, GslbName, LatencyFallback, Limits,
        Region, SteeringPolicy,
    },
    geo::{Location, LocationId},
    operator_state::{AdminState, RegionOperatorState},
};

const EU_WEST: u16 = 0;
const US_EAST: u16 = 1;
const AP_SOUTH: u16 = 2;
const CDN: u16 = 3;

fn r(i: u16) -> RegionIdx {
    RegionIdx(i)
}

fn coords(latitude: f64, longitude: f64) -> Coordinates {
    Coordinates {
        latitude,
        longitude,
    }
}

fn region(id: &str, at: Coordinates, endpoints: Endpoints, capacity: u32) -> Region {
    Region {
        id: id.into(),
        coordinates: at,
        endpoints,
        capacity,
        cost: 1.0,
        models: Vec::new(),
        probe: None,
    }
}

fn dual_stack(n: u8) -> Endpoints {
    Endpoints::Addresses {
        v4: vec![Ipv4Addr::new(192, 0, 2, n)],
        v6: vec![Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n))],
    }
}

fn empty_config(regions: Vec<Region>) -> DnsConfig {
    DnsConfig {
        source: PathBuf::from("/etc/meridian/dns.toml"),
        listen: Vec::new(),
        limits: Limits::default(),
        geoip: None,
        zones: Vec::new(),
        regions,
        gslb: Vec::new(),
        overrides: Vec::new(),
        operator_state_file: None,
        metrics_listen: None,
        health: None,
        admin: None,
        anycast: None,
        rrl: None,
    }
}

/// A config with dual-stack regions of these ids and no policies (for operator-state tests).
pub(crate) fn config_with_regions(ids: &[&str]) -> DnsConfig {
    empty_config(
        ids.iter()
            .enumerate()
            .map(|(i, id)| region(id, coords(0.0, 0.0), dual_stack(i as u8), 100))
            .collect(),
    )
}

fn policy(mode: SteeringMode, candidates: &[u16]) -> SteeringPolicy {
    SteeringPolicy {
        mode,
        candidates: candidates.iter().map(|&i| r(i)).collect(),
        answers: 1,
        ttl: 30,
        when_all_unhealthy: AllUnhealthy::FailOpen,
        ecs: true,
        why: true,
        model: None,
        cost: None,
    }
}

fn geo_map() -> GeoMap {
    let mut m = GeoMap::default();
    m.subdivisions.insert("GB-SCT".into(), vec![r(US_EAST)]);
    m.countries.insert("GB".into(), vec![r(EU_WEST)]);
    m.countries.insert("US".into(), vec![r(US_EAST)]);
    m.continents
        .insert("EU".into(), vec![r(EU_WEST), r(US_EAST)]);
    m.continents.insert("AS".into(), vec![r(AP_SOUTH)]);
    m.default = vec![r(US_EAST)];
    m
}

// Policy indices of `world()`.
const GEO: u32 = 0;
const NEAREST: u32 = 1;
const WEIGHTED: u32 = 2;
const FAILOVER: u32 = 3;
const SINGLE: u32 = 4;
const FAIL_CLOSED: u32 = 5;
const CNAME_MIX: u32 = 6;
const GEO_TWO: u32 = 7;
const GEO_TWIN: u32 = 8;
const V4_ONLY: u32 = 9;
/// Latency, falling back to the geo map.
const LATENCY: u32 = 10;
/// Latency falling back to nearest, preferring the cheapest within 20 ms of the best.
const LATENCY_COST: u32 = 11;
/// Nearest, preferring the cheapest within 6000 km of the nearest.
const NEAREST_COST: u32 = 12;
/// Failover bound to the `llama-70b` pool, which us-east does not serve.
const MODEL: u32 = 13;
const POLICIES: u32 = 14;

fn world() -> DnsConfig {
    let mut c = empty_config(vec![
        region("eu-west", coords(53.3, -6.3), dual_stack(1), 100),
        region("us-east", coords(39.0, -77.5), dual_stack(2), 300),
        region(
            "ap-south",
            coords(19.1, 72.9),
            Endpoints::Addresses {
                v4: vec![Ipv4Addr::new(192, 0, 2, 3)],
                v6: Vec::new(),
            },
            600,
        ),
        region(
            "cdn",
            coords(0.0, 0.0),
            Endpoints::Cname(Name::from_ascii("lb.cdn.example.net.").unwrap()),
            100,
        ),
    ]);
    let geo = SteeringMode::GeoMap(geo_map());
    let mut fail_closed = policy(SteeringMode::Failover, &[EU_WEST, US_EAST]);
    fail_closed.when_all_unhealthy = AllUnhealthy::FailClosed;
    let mut geo_two = policy(geo.clone(), &[EU_WEST, US_EAST, AP_SOUTH]);
    geo_two.answers = 2;
    let mut latency_cost = policy(
        SteeringMode::Latency(LatencyFallback::Nearest),
        &[EU_WEST, US_EAST, AP_SOUTH],
    );
    latency_cost.cost = Some(CostPreference::WithinMs(20.0));
    let mut nearest_cost = policy(SteeringMode::Nearest, &[EU_WEST, US_EAST, AP_SOUTH]);
    nearest_cost.cost = Some(CostPreference::WithinKm(6000.0));
    let mut model = policy(SteeringMode::Failover, &[US_EAST, EU_WEST, AP_SOUTH]);
    model.model = Some("llama-70b".into());
    // Serving cheaper regions is the point of cost-aware steering; the pools differ.
    c.regions[usize::from(US_EAST)].cost = 0.5;
    c.regions[usize::from(AP_SOUTH)].cost = 0.2;
    c.regions[usize::from(US_EAST)].models = vec!["llama-8b".into()];
    c.regions[usize::from(AP_SOUTH)].models = vec!["llama-8b".into(), "llama-70b".into()];
    let policies = [
        ("geo", policy(geo.clone(), &[EU_WEST, US_EAST, AP_SOUTH])),
        (
            "nearest",
            policy(SteeringMode::Nearest, &[EU_WEST, US_EAST, AP_SOUTH]),
        ),
        (
            "weighted",
            policy(SteeringMode::Weighted, &[EU_WEST, US_EAST, AP_SOUTH]),
        ),
        (
            "failover",
            policy(SteeringMode::Failover, &[US_EAST, EU_WEST, AP_SOUTH]),
        ),
        ("single", policy(geo.clone(), &[EU_WEST])),
        ("closed", fail_closed),
        ("mix", policy(SteeringMode::Failover, &[AP_SOUTH, CDN])),
        ("geo2", geo_two),
        (
            "geo-twin",
            policy(geo.clone(), &[EU_WEST, US_EAST, AP_SOUTH]),
        ),
        ("v4only", policy(SteeringMode::Failover, &[AP_SOUTH])),
        (
            "latency",
            policy(
                SteeringMode::Latency(LatencyFallback::GeoMap(geo_map())),
                &[EU_WEST, US_EAST, AP_SOUTH],
            ),
        ),
        ("latency-cost", latency_cost),
        ("nearest-cost", nearest_cost),
        ("model", model),
    ];
    c.gslb = policies
        .into_iter()
        .map(|(label, policy)| GslbName {
            name: Name::from_ascii(format!("{label}.gslb.example.com.")).unwrap(),
            zone: Name::from_ascii("gslb.example.com.").unwrap(),
            policy,
        })
        .collect();
    c.overrides = vec![
        CidrOverride {
            network: "10.1.0.0/16".parse().unwrap(),
            regions: vec![r(EU_WEST)],
        },
        CidrOverride {
            network: "10.0.0.0/8".parse().unwrap(),
            regions: vec![r(AP_SOUTH)],
        },
    ];
    c
}

fn loc(country: &str, sub: &str, continent: &str, at: Option<(f64, f64)>) -> Location {
    let opt = |s: &str| (!s.is_empty()).then(|| s.into());
    Location {
        country: opt(country),
        subdivision: opt(sub),
        continent: opt(continent),
        coordinates: at.map(|(a, b)| coords(a, b)),
    }
}

/// The GeoIP world: (network, location).
fn geo_entries() -> Vec<(&'static str, Location)> {
    vec![
        ("1.0.0.0/24", loc("", "", "AS", None)),
        ("2.16.0.0/13", loc("FR", "", "EU", Some((48.86, 2.35)))),
        (
            "8.8.8.0/24",
            loc("US", "US-CA", "NA", Some((37.39, -122.08))),
        ),
        (
            "81.2.69.0/24",
            loc("GB", "GB-ENG", "EU", Some((51.51, -0.09))),
        ),
        (
            "81.2.70.0/24",
            loc("GB", "GB-SCT", "EU", Some((55.95, -3.19))),
        ),
        ("198.51.100.0/24", loc("JP", "", "AS", None)),
        (
            "203.0.113.0/24",
            loc("IN", "IN-MH", "AS", Some((19.08, 72.88))),
        ),
        (
            "2001:db8::/32",
            loc("US", "US-NY", "NA", Some((40.71, -74.0))),
        ),
        ("2a01:e00::/26", loc("FR", "", "EU", Some((48.86, 2.35)))),
    ]
}

fn networks() -> LocatedNetworks {
    let mut ln = LocatedNetworks::default();
    for (net, location) in geo_entries() {
        let id = match ln.locations.iter().position(|l| *l == location) {
            Some(i) => i,
            None => {
                ln.locations.push(location);
                ln.locations.len() - 1
            }
        };
        ln.networks
            .push((net.parse().unwrap(), LocationId(id as u32)));
    }
    ln.networks.sort_by_key(|(n, _)| *n);
    ln
}

fn geo_match(addr: IpAddr) -> Option<GeoMatch> {
    geo_entries()
        .into_iter()
        .map(|(n, l)| (n.parse::<IpNet>().unwrap(), l))
        .find(|(n, _)| n.contains(&addr))
        .map(|(network, location)| GeoMatch { location, network })
}

fn table() -> (DnsConfig, SteeringTable) {
    let config = world();
    let table = SteeringTable::build(&config, Some(&networks()), &OperatorState::default());
    (config, table)
}

fn client(prefix: &str, source: ClientSource, seed: u64) -> ClientInput {
    let net: IpNet = prefix.parse().unwrap();
    ClientInput {
        addr: net.network(),
        source_prefix: net.prefix_len(),
        source,
        seed,
        location: None,
    }
}

type StatusSpec = (u16, AdminState, Health);

fn with(table: &SteeringTable, spec: &[StatusSpec]) -> SteeringTable {
    let mut statuses = vec![RegionStatus::default(); 4];
    for &(i, admin, health) in spec {
        statuses[usize::from(i)] = RegionStatus {
            admin,
            health,
            ..RegionStatus::default()
        };
    }
    table.with_statuses(statuses)
}

fn ask(table: &SteeringTable, policy: u32, c: &ClientInput, want: Want) -> Decision {
    decide(
        table,
        PolicyIdx(policy),
        c,
        &Question {
            want,
            explain: false,
        },
        Instant::now(),
    )
}

#[derive(Debug)]
enum Expect {
    Regions(&'static [u16]),
    NoData,
    ServFail,
}

struct Case {
    name: &'static str,
    policy: u32,
    client: &'static str,
    want: Want,
    source: ClientSource,
    status: &'static [StatusSpec],
    expect: Expect,
    basis: Basis,
    fail_open: bool,
    scope: u8,
    ttl: u32,
}

const fn case(
    name: &'static str,
    policy: u32,
    client: &'static str,
    expect: Expect,
    basis: Basis,
    scope: u8,
) -> Case {
    Case {
        name,
        policy,
        client,
        want: Want::V4,
        source: ClientSource::Ecs,
        status: &[],
        expect,
        basis,
        fail_open: false,
        scope,
        ttl: 30,
    }
}

use AdminState::{Auto, Drain, ForceDown, ForceUp};
use Basis as B;
use Expect::Regions as R;
use Health::{Degraded, Down, Unknown, Up};

fn cases() -> Vec<Case> {
    vec![
        // --- geo map: levels, overrides, no data, scope ---
        case(
            "geo country",
            GEO,
            "81.2.69.0/24",
            R(&[EU_WEST]),
            B::GeoCountry,
            24,
        ),
        case(
            "geo scope clamped to source",
            GEO,
            "81.2.64.0/20",
            R(&[US_EAST]),
            B::GeoDefault,
            20,
        ),
        case(
            "geo subdivision",
            GEO,
            "81.2.70.5/32",
            R(&[US_EAST]),
            B::GeoSubdivision,
            23,
        ),
        case(
            "geo continent",
            GEO,
            "2.17.0.0/16",
            R(&[EU_WEST]),
            B::GeoContinent,
            13,
        ),
        case(
            "geo continent only",
            GEO,
            "1.0.0.0/24",
            R(&[AP_SOUTH]),
            B::GeoContinent,
            24,
        ),
        // US and "no data" both map to us-east first: they merge into 8.0.0.0/7.
        case(
            "geo merged with default",
            GEO,
            "8.8.8.0/24",
            R(&[US_EAST]),
            B::GeoCountry,
            7,
        ),
        case(
            "geo no data",
            GEO,
            "192.0.2.0/24",
            R(&[US_EAST]),
            B::GeoDefault,
            6,
        ),
        case(
            "override",
            GEO,
            "10.2.3.0/24",
            R(&[AP_SOUTH]),
            B::Override,
            15,
        ),
        case(
            "nested override",
            GEO,
            "10.1.0.0/24",
            R(&[EU_WEST]),
            B::Override,
            16,
        ),
        Case {
            want: Want::V6,
            ..case(
                "override, family filtered",
                GEO,
                "10.2.3.0/24",
                R(&[EU_WEST]),
                B::Override,
                15,
            )
        },
        case(
            "geo ipv6 country",
            GEO,
            "2001:db8::/56",
            R(&[US_EAST]),
            B::GeoCountry,
            5,
        ),
        case(
            "geo ipv6 continent",
            GEO,
            "2a01:e00::/40",
            R(&[EU_WEST]),
            B::GeoContinent,
            26,
        ),
        Case {
            source: ClientSource::Resolver,
            ..case(
                "geo resolver source",
                GEO,
                "81.2.69.7/32",
                R(&[EU_WEST]),
                B::GeoCountry,
                24,
            )
        },
        // --- health and operator state ---
        Case {
            status: &[(EU_WEST, Drain, Unknown)],
            ttl: 15,
            ..case(
                "drained region skipped, ttl halved",
                GEO,
                "81.2.69.0/24",
                R(&[US_EAST]),
                B::GeoCountry,
                24,
            )
        },
        Case {
            status: &[(EU_WEST, ForceDown, Up)],
            ..case(
                "forced down skipped",
                GEO,
                "81.2.69.0/24",
                R(&[US_EAST]),
                B::GeoCountry,
                24,
            )
        },
        Case {
            status: &[(EU_WEST, Auto, Down)],
            ..case(
                "down skipped",
                GEO,
                "81.2.69.0/24",
                R(&[US_EAST]),
                B::GeoCountry,
                24,
            )
        },
        Case {
            status: &[(EU_WEST, Auto, Degraded)],
            ttl: 15,
            ..case(
                "degraded serves, ttl halved",
                GEO,
                "81.2.69.0/24",
                R(&[EU_WEST]),
                B::GeoCountry,
                24,
            )
        },
        Case {
            status: &[(AP_SOUTH, Auto, Degraded)],
            ttl: 15,
            ..case(
                "any degraded candidate halves",
                GEO,
                "81.2.69.0/24",
                R(&[EU_WEST]),
                B::GeoCountry,
                24,
            )
        },
        Case {
            status: &[(EU_WEST, ForceUp, Down)],
            ..case(
                "force up beats health",
                GEO,
                "81.2.69.0/24",
                R(&[EU_WEST]),
                B::GeoCountry,
                24,
            )
        },
        Case {
            status: &[
                (EU_WEST, Auto, Down),
                (US_EAST, Auto, Down),
                (AP_SOUTH, Auto, Down),
            ],
            fail_open: true,
            ..case(
                "all down: fail open in order",
                GEO,
                "81.2.69.0/24",
                R(&[EU_WEST]),
                B::GeoCountry,
                24,
            )
        },
        Case {
            status: &[
                (EU_WEST, Drain, Up),
                (US_EAST, Auto, Down),
                (AP_SOUTH, ForceDown, Up),
            ],
            fail_open: true,
            ttl: 15,
            ..case(
                "fail open prefers health-only exclusions",
                GEO,
                "81.2.69.0/24",
                R(&[US_EAST]),
                B::GeoCountry,
                24,
            )
        },
        Case {
            status: &[
                (EU_WEST, Drain, Up),
                (US_EAST, ForceDown, Up),
                (AP_SOUTH, ForceDown, Up),
            ],
            fail_open: true,
            ttl: 15,
            ..case(
                "fail open as last resort undoes operator",
                GEO,
                "81.2.69.0/24",
                R(&[EU_WEST]),
                B::GeoCountry,
                24,
            )
        },
        Case {
            status: &[(EU_WEST, Auto, Down), (US_EAST, Auto, Down)],
            ..case(
                "fail closed",
                FAIL_CLOSED,
                "81.2.69.0/24",
                Expect::ServFail,
                B::Failover,
                0,
            )
        },
        Case {
            status: &[(EU_WEST, Auto, Down)],
            ..case(
                "fail closed with one up",
                FAIL_CLOSED,
                "81.2.69.0/24",
                R(&[US_EAST]),
                B::Failover,
                0,
            )
        },
        // --- other modes ---
        // London, Edinburgh, Paris and every unlocated address share eu-west-first: one wide run.
        case(
            "nearest london",
            NEAREST,
            "81.2.69.0/24",
            R(&[EU_WEST]),
            B::Nearest,
            2,
        ),
        case(
            "nearest mumbai",
            NEAREST,
            "203.0.113.0/24",
            R(&[AP_SOUTH]),
            B::Nearest,
            24,
        ),
        case(
            "nearest california",
            NEAREST,
            "8.8.8.0/24",
            R(&[US_EAST]),
            B::Nearest,
            24,
        ),
        case(
            "nearest without coordinates",
            NEAREST,
            "198.51.100.0/24",
            R(&[EU_WEST]),
            B::Unlocated,
            5,
        ),
        case(
            "nearest no data",
            NEAREST,
            "192.0.2.0/24",
            R(&[EU_WEST]),
            B::Unlocated,
            5,
        ),
        case(
            "nearest override",
            NEAREST,
            "10.2.0.0/16",
            R(&[AP_SOUTH]),
            B::Override,
            15,
        ),
        case(
            "failover",
            FAILOVER,
            "81.2.69.0/24",
            R(&[US_EAST]),
            B::Failover,
            0,
        ),
        Case {
            status: &[(US_EAST, Auto, Down)],
            ..case(
                "failover next",
                FAILOVER,
                "81.2.69.0/24",
                R(&[EU_WEST]),
                B::Failover,
                0,
            )
        },
        Case {
            status: &[(EU_WEST, ForceDown, Up), (AP_SOUTH, ForceDown, Up)],
            ..case(
                "weighted sole survivor",
                WEIGHTED,
                "81.2.69.0/24",
                R(&[US_EAST]),
                B::Weighted,
                0,
            )
        },
        case(
            "single candidate",
            SINGLE,
            "81.2.69.0/24",
            R(&[EU_WEST]),
            B::SingleCandidate,
            0,
        ),
        case(
            "two answers",
            GEO_TWO,
            "81.2.69.0/24",
            R(&[EU_WEST, US_EAST]),
            B::GeoCountry,
            24,
        ),
        Case {
            status: &[(EU_WEST, Drain, Up)],
            ttl: 15,
            ..case(
                "two answers after drain",
                GEO_TWO,
                "81.2.69.0/24",
                R(&[US_EAST, AP_SOUTH]),
                B::GeoCountry,
                24,
            )
        },
        // --- families ---
        case(
            "cname region for A",
            CNAME_MIX,
            "81.2.69.0/24",
            R(&[AP_SOUTH]),
            B::Failover,
            0,
        ),
        Case {
            want: Want::V6,
            ..case(
                "cname region for AAAA",
                CNAME_MIX,
                "81.2.69.0/24",
                R(&[CDN]),
                B::Failover,
                0,
            )
        },
        Case {
            want: Want::V6,
            ..case(
                "no v6 anywhere",
                V4_ONLY,
                "81.2.69.0/24",
                Expect::NoData,
                B::SingleCandidate,
                0,
            )
        },
        Case {
            want: Want::Any,
            ..case(
                "any family",
                V4_ONLY,
                "81.2.69.0/24",
                R(&[AP_SOUTH]),
                B::SingleCandidate,
                0,
            )
        },
        Case {
            want: Want::V6,
            ..case(
                "ipv6 skips v4-only preferred region",
                GEO,
                "198.51.100.0/24",
                R(&[EU_WEST]),
                B::GeoContinent,
                24,
            )
        },
    ]
}

#[test]
fn decision_table() {
    let (_, base) = table();
    for c in cases() {
        let table = with(&base, c.status);
        let d = ask(&table, c.policy, &client(c.client, c.source, 1), c.want);
        let got = match &d.outcome {
            Outcome::Regions(rs) => format!("{:?}", rs.iter().map(|r| r.0).collect::<Vec<_>>()),
            other => format!("{other:?}"),
        };
        let want = match c.expect {
            Expect::Regions(rs) => format!("{rs:?}"),
            Expect::NoData => "NoData".to_owned(),
            Expect::ServFail => "ServFail".to_owned(),
        };
        assert_eq!(
            (got, d.reason.basis, d.reason.fail_open, d.ecs_scope, d.ttl),
            (want, c.basis, c.fail_open, c.scope, c.ttl),
            "{}",
            c.name
        );
    }
}

#[test]
fn policies_with_the_same_ordering_function_share_a_client_map() {
    let (_, table) = table();
    // geo, geo2, geo-twin and latency share one map; nearest and latency-cost another;
    // nearest-cost's distance budget is part of its classes, so it has its own; the rest
    // need none.
    assert_eq!(table.client_map_count(), 3);
    assert!(Arc::ptr_eq(
        table.client_map(PolicyIdx(GEO)).unwrap(),
        table.client_map(PolicyIdx(LATENCY)).unwrap()
    ));
    assert!(Arc::ptr_eq(
        table.client_map(PolicyIdx(NEAREST)).unwrap(),
        table.client_map(PolicyIdx(LATENCY_COST)).unwrap()
    ));
    let geo = table.client_map(PolicyIdx(GEO)).unwrap();
    assert!(Arc::ptr_eq(
        geo,
        table.client_map(PolicyIdx(GEO_TWIN)).unwrap()
    ));
    assert!(Arc::ptr_eq(
        geo,
        table.client_map(PolicyIdx(GEO_TWO)).unwrap()
    ));
    for p in [WEIGHTED, FAILOVER, SINGLE] {
        assert!(table.client_map(PolicyIdx(p)).is_none(), "{p}");
    }
}

#[test]
fn operator_state_flows_into_statuses() {
    let config = world();
    let mut operator = OperatorState::default();
    operator.regions.insert(
        "us-east".into(),
        RegionOperatorState {
            admin: AdminState::Drain,
            weight_percent: 40,
        },
    );
    let table = SteeringTable::build(&config, None, &operator);
    assert_eq!(
        *table.region_status(r(US_EAST)),
        RegionStatus {
            admin: AdminState::Drain,
            weight_percent: 40,
            ..RegionStatus::default()
        }
    );
    assert_eq!(*table.region_status(r(EU_WEST)), RegionStatus::default());
    // Without GeoIP data the geo map answers its default (us-east), which is drained; only
    // the overrides in 10.0.0.0/8 split the address space, so the scope is 64.0.0.0/2.
    let d = ask(
        &table,
        GEO,
        &client("81.2.69.0/24", ClientSource::Ecs, 0),
        Want::V4,
    );
    assert_eq!(d.outcome, Outcome::Regions(vec![r(EU_WEST)]));
    assert_eq!(
        (d.reason.basis, d.ttl, d.ecs_scope),
        (Basis::GeoDefault, 15, 2)
    );
}

#[test]
fn trace_explains_each_step() {
    let (config, base) = table();
    let table = with(&base, &[(EU_WEST, Drain, Unknown)]);
    let mut c = client("81.2.69.0/24", ClientSource::Ecs, 0);
    c.location = geo_match(c.addr);
    let question = Question {
        want: Want::V4,
        explain: true,
    };
    let d = decide(&table, PolicyIdx(GEO), &c, &question, Instant::now());
    let plain = ask(&table, GEO, &c, Want::V4);
    assert_eq!(
        (&d.outcome, d.ttl, d.ecs_scope, d.reason),
        (&plain.outcome, plain.ttl, plain.ecs_scope, plain.reason),
        "explaining must not change the answer"
    );
    let lines = d.trace.unwrap().lines(&config);
    let want = [
        "name=geo.gslb.example.com. mode=geo-map answers=1 ttl=30 all-unhealthy=fail-open",
        "client=81.2.69.0/24 source=ecs want=A",
        "location=GB/GB-ENG/EU lat=51.51 lon=-0.09 net=81.2.69.0/24",
        "map=geoip basis=geo-country scope=24 class=eu-west,us-east,ap-south",
        "candidates=eu-west,us-east,ap-south",
        "region=eu-west admin=drain health=unknown weight=100% effective-weight=0",
        "region=us-east admin=auto health=unknown weight=100% effective-weight=30000",
        "region=ap-south admin=auto health=unknown weight=100% effective-weight=60000",
        "step=eligibility want=A removed=none",
        "step=order basis=geo-country order=eu-west,us-east,ap-south",
        "step=health removed=eu-west(drain)",
        "step=select first=1 chosen=us-east",
        "ttl=15 policy-ttl=30 lowered-by=eu-west(drain)",
        "answer=us-east scope=24 ttl=15 reason=geo-country",
    ];
    assert_eq!(lines, want);
}

#[test]
fn trace_of_override_fail_open_and_weighted() {
    let (config, base) = table();
    let explain = |table: &SteeringTable, policy, c: &ClientInput, want| {
        let q = Question {
            want,
            explain: true,
        };
        decide(table, PolicyIdx(policy), c, &q, Instant::now())
            .trace
            .unwrap()
            .lines(&config)
    };
    let all_down = with(
        &base,
        &[
            (EU_WEST, Auto, Down),
            (US_EAST, Auto, Down),
            (AP_SOUTH, Auto, Down),
        ],
    );
    let lines = explain(
        &all_down,
        GEO,
        &client("10.1.2.0/24", ClientSource::Resolver, 0),
        Want::V6,
    );
    for line in [
        "client=10.1.2.0/24 source=resolver want=AAAA",
        "location=none",
        "override=10.1.0.0/16 prefers=eu-west",
        "map=override basis=override scope=16 class=eu-west,us-east,ap-south",
        "step=eligibility want=AAAA removed=ap-south(no-v6)",
        "step=order basis=override order=eu-west,us-east",
        "step=health removed=eu-west(down),us-east(down)",
        "step=fail-open ignored=health",
        "answer=eu-west scope=16 ttl=30 reason=override+fail-open",
    ] {
        assert!(lines.iter().any(|l| l == line), "{line} not in {lines:#?}");
    }

    let c = client("81.2.69.0/24", ClientSource::Ecs, 42);
    let lines = explain(&base, WEIGHTED, &c, Want::V4);
    let order = lines
        .iter()
        .find_map(|l| l.strip_prefix("step=order basis=weighted seed=42 order="))
        .unwrap();
    let chosen = lines
        .iter()
        .find_map(|l| l.strip_prefix("step=select first=1 chosen="))
        .unwrap();
    assert_eq!(order.split(',').count(), 3);
    assert!(order.starts_with(chosen), "{order} / {chosen}");
    assert!(lines.iter().all(|l| !l.starts_with("map=")));
}

#[test]
fn weighted_picks_follow_capacity_times_operator_weight() {
    let (_, base) = table();
    // Capacities 100 / 300 / 600; operator halves ap-south: weights 100 / 300 / 300.
    let mut statuses = vec![RegionStatus::default(); 4];
    statuses[usize::from(AP_SOUTH)].weight_percent = 50;
    let cases: [(SteeringTable, [f64; 3]); 2] = [
        (base.clone(), [0.1, 0.3, 0.6]),
        (
            base.with_statuses(statuses),
            [1.0 / 7.0, 3.0 / 7.0, 3.0 / 7.0],
        ),
    ];
    const N: u64 = 20_000;
    for (table, shares) in cases {
        let mut counts = [0u64; 3];
        for seed in 0..N {
            let d = ask(
                &table,
                WEIGHTED,
                &client("192.0.2.0/24", ClientSource::Ecs, seed),
                Want::V4,
            );
            let Outcome::Regions(rs) = d.outcome else {
                panic!("{d:?}")
            };
            counts[rs[0].get()] += 1;
        }
        for (i, share) in shares.iter().enumerate() {
            let got = counts[i] as f64 / N as f64;
            assert!(
                (got - share).abs() < 0.015,
                "region {i}: {got} vs {share} ({counts:?})"
            );
        }
    }
}

#[test]
fn zero_weight_region_is_a_last_resort() {
    let (_, base) = table();
    let mut statuses = vec![RegionStatus::default(); 4];
    statuses[usize::from(US_EAST)].weight_percent = 0;
    let table = base.with_statuses(statuses.clone());
    for seed in 0..500 {
        let d = ask(
            &table,
            WEIGHTED,
            &client("192.0.2.0/24", ClientSource::Ecs, seed),
            Want::V4,
        );
        assert_ne!(d.outcome, Outcome::Regions(vec![r(US_EAST)]), "seed {seed}");
    }
    statuses[usize::from(EU_WEST)].admin = AdminState::ForceDown;
    statuses[usize::from(AP_SOUTH)].health = Health::Down;
    let d = ask(
        &base.with_statuses(statuses),
        WEIGHTED,
        &client("192.0.2.0/24", ClientSource::Ecs, 3),
        Want::V4,
    );
    assert_eq!(d.outcome, Outcome::Regions(vec![r(US_EAST)]));
}

// ---- properties ----

fn any_status() -> impl Strategy<Value = RegionStatus> {
    (
        prop_oneof![Just(Auto), Just(ForceUp), Just(ForceDown), Just(Drain)],
        prop_oneof![Just(Unknown), Just(Up), Just(Degraded), Just(Down)],
        prop_oneof![Just(0u32), Just(50), Just(100), Just(1000)],
        any::<bool>(),
    )
        .prop_map(|(admin, health, weight_percent, spilling)| RegionStatus {
            admin,
            weight_percent,
            health,
            spilling,
            headroom: spilling.then_some(0.01),
            report_received: None,
        })
}

/// Addresses near the interesting networks plus anything at all, masked to a random prefix.
fn any_client() -> impl Strategy<Value = ClientInput> {
    let v4 = prop_oneof![
        any::<u32>(),
        (
            prop::sample::select(vec![
                0x0a01_0000u32,
                0x0a02_0000,
                0x5102_4500,
                0x0808_0800,
                0xcb00_7100,
                0x0210_0000
            ]),
            any::<u16>()
        )
            .prop_map(|(base, off)| base | u32::from(off)),
    ]
    .prop_flat_map(|a| (Just(IpAddr::V4(Ipv4Addr::from(a))), 0u8..=32));
    let v6 = prop_oneof![
        any::<u128>(),
        (
            prop::sample::select(vec![0x2001_0db8u128 << 96, 0x2a01_0e00 << 96]),
            any::<u64>()
        )
            .prop_map(|(base, off)| base | (u128::from(off) << 40)),
    ]
    .prop_flat_map(|a| (Just(IpAddr::V6(Ipv6Addr::from(a))), 0u8..=128));
    (
        prop_oneof![v4, v6],
        any::<u64>(),
        prop_oneof![Just(ClientSource::Ecs), Just(ClientSource::Resolver)],
    )
        .prop_map(|((addr, prefix), seed, source)| ClientInput {
            addr: IpNet::new(addr, prefix).unwrap().network(),
            source_prefix: prefix,
            source,
            seed,
            location: None,
        })
}

fn any_want() -> impl Strategy<Value = Want> {
    prop_oneof![Just(Want::V4), Just(Want::V6), Just(Want::Any)]
}

proptest! {
    #[test]
    fn decision_properties(
        statuses in prop::collection::vec(any_status(), 4),
        policy in 0..POLICIES,
        c in any_client(),
        want in any_want(),
    ) {
        let (config, base) = table();
        let table = base.with_statuses(statuses.clone());
        let p = &config.gslb[policy as usize].policy;
        let q = Question { want, explain: false };
        let d = decide(&table, PolicyIdx(policy), &c, &q, Instant::now());

        // Deterministic, and explaining does not change the answer.
        let again = decide(&table, PolicyIdx(policy), &c, &q, Instant::now());
        prop_assert_eq!(&d, &again);
        let explained = decide(&table, PolicyIdx(policy), &c, &Question { want, explain: true }, Instant::now());
        prop_assert_eq!((&explained.outcome, explained.ttl, explained.ecs_scope, explained.reason), (&d.outcome, d.ttl, d.ecs_scope, d.reason));
        let trace = explained.trace.unwrap();
        prop_assert_eq!(&trace, &decide(&table, PolicyIdx(policy), &c, &Question { want, explain: true }, Instant::now()).trace.unwrap());
        for line in trace.lines(&config) {
            prop_assert!(line.len() <= trace::MAX_LINE, "{}", line);
        }

        prop_assert!(d.ecs_scope <= c.source_prefix);
        // A model-bound name answers only regions serving its model.
        let serves_model = |r: &RegionIdx| match &p.model {
            None => true,
            Some(m) => config.region(*r).models.is_empty() || config.region(*r).models.contains(m),
        };
        let candidates: Vec<RegionIdx> = p.candidates.iter().copied().filter(serves_model).collect();
        let p = &SteeringPolicy { candidates, ..p.clone() };
        let client_independent = matches!(p.mode, SteeringMode::Weighted | SteeringMode::Failover) || p.candidates.len() == 1;
        if client_independent {
            prop_assert_eq!(d.ecs_scope, 0);
        }

        let eligible = |r: RegionIdx| match &config.region(r).endpoints {
            Endpoints::Cname(_) => true,
            Endpoints::Addresses { v4, v6 } => match want {
                Want::V4 => !v4.is_empty(),
                Want::V6 => !v6.is_empty(),
                Want::Any => true,
            },
        };
        let serving = |r: RegionIdx| statuses[r.get()].is_serving();
        let any_eligible = p.candidates.iter().any(|&r| eligible(r));
        let any_serving = p.candidates.iter().any(|&r| eligible(r) && serving(r));
        match &d.outcome {
            Outcome::Regions(rs) => {
                prop_assert!(!rs.is_empty() && rs.len() <= p.answers);
                let mut unique = rs.clone();
                unique.sort();
                unique.dedup();
                prop_assert_eq!(unique.len(), rs.len());
                for &r in rs {
                    prop_assert!(p.candidates.contains(&r) && eligible(r));
                    if any_serving {
                        prop_assert!(serving(r), "non-serving {:?} picked while one serves", r);
                    }
                }
                prop_assert_eq!(d.reason.fail_open, !any_serving);
                // Spill-over: a spilling region never precedes a serving one that is not.
                let spilling = |r: RegionIdx| statuses[r.get()].is_spilling();
                let any_calm = p.candidates.iter().any(|&r| eligible(r) && serving(r) && !spilling(r));
                if any_calm && any_serving {
                    prop_assert!(!spilling(rs[0]), "spilling {:?} first", rs[0]);
                    let first_spilling = rs.iter().position(|&r| spilling(r)).unwrap_or(rs.len());
                    prop_assert!(rs[first_spilling..].iter().all(|&r| spilling(r)));
                }
            }
            Outcome::NoData => prop_assert!(!any_eligible),
            Outcome::ServFail => {
                prop_assert!(any_eligible && !any_serving);
                prop_assert_eq!(p.when_all_unhealthy, AllUnhealthy::FailClosed);
            }
        }

        let lowered = p.candidates.iter().any(|&r| statuses[r.get()].lowers_ttl());
        prop_assert_eq!(d.ttl, if lowered { (p.ttl / 2).max(1) } else { p.ttl });
    }
}

/// Latency data for the world's prefixes: GB-ENG prefers us-east (odd but measured), the
/// Mumbai prefix has figures for ap-south and eu-west only.
fn latency_world() -> LatencyTable {
    let mut b = LatencyTableBuilder::default();
    for (prefix, region, rtt) in [
        ("81.2.69.0/24", US_EAST, 25.0),
        ("81.2.69.0/24", EU_WEST, 10.0),
        ("81.2.69.0/24", AP_SOUTH, 100.0),
        ("203.0.113.0/24", AP_SOUTH, 8.0),
        ("203.0.113.0/24", EU_WEST, 120.0),
        ("2001:db8::/48", US_EAST, 30.0),
    ] {
        assert!(b.add(prefix.parse().unwrap(), r(region), rtt));
    }
    b.build()
}

fn status(admin: AdminState, health: Health, spilling: bool) -> RegionStatus {
    RegionStatus {
        admin,
        health,
        spilling,
        headroom: spilling.then_some(0.02),
        ..RegionStatus::default()
    }
}

/// Spill-over, latency, cost and model eligibility through `decide`.
#[test]
fn health_plane_decisions() {
    let (_, base) = table();
    let calm = vec![RegionStatus::default(); 4];
    let spill = |i: u16| {
        let mut s = calm.clone();
        s[usize::from(i)] = status(Auto, Up, true);
        s
    };
    let mut eu_spilling_us_down = spill(EU_WEST);
    eu_spilling_us_down[usize::from(US_EAST)] = status(Auto, Down, false);
    let mut all_spilling = calm.clone();
    for i in [EU_WEST, US_EAST, AP_SOUTH] {
        all_spilling[usize::from(i)] = status(Auto, Up, true);
    }
    let mut us_down = calm.clone();
    us_down[usize::from(US_EAST)] = status(Auto, Down, false);

    // (name, statuses, policy, client, answer, basis, scope, ttl)
    type Row = (
        &'static str,
        Vec<RegionStatus>,
        u32,
        &'static str,
        &'static [u16],
        Basis,
        u8,
        u32,
    );
    let rows: Vec<Row> = vec![
        (
            "no spill",
            calm.clone(),
            GEO,
            "81.2.69.0/24",
            &[EU_WEST],
            B::GeoCountry,
            24,
            30,
        ),
        (
            "spilling region goes last",
            spill(EU_WEST),
            GEO,
            "81.2.69.0/24",
            &[US_EAST],
            B::GeoCountry,
            24,
            15,
        ),
        (
            "spilling beats down",
            eu_spilling_us_down.clone(),
            GEO,
            "81.2.69.0/24",
            &[AP_SOUTH],
            B::GeoCountry,
            24,
            15,
        ),
        (
            "all spilling: plain order",
            all_spilling,
            GEO,
            "81.2.69.0/24",
            &[EU_WEST],
            B::GeoCountry,
            24,
            15,
        ),
        (
            "spilling elsewhere still lowers the ttl",
            spill(AP_SOUTH),
            GEO,
            "81.2.69.0/24",
            &[EU_WEST],
            B::GeoCountry,
            24,
            15,
        ),
        (
            "latency: lowest rtt",
            calm.clone(),
            LATENCY,
            "81.2.69.0/24",
            &[EU_WEST],
            B::Latency,
            24,
            30,
        ),
        (
            "latency: rtt beats the geo map",
            calm.clone(),
            LATENCY,
            "203.0.113.0/24",
            &[AP_SOUTH],
            B::Latency,
            24,
            30,
        ),
        (
            "latency: spilling still goes last",
            spill(EU_WEST),
            LATENCY,
            "81.2.69.0/24",
            &[US_EAST],
            B::Latency,
            24,
            15,
        ),
        (
            "latency v6",
            calm.clone(),
            LATENCY,
            "2001:db8::/56",
            &[US_EAST],
            B::Latency,
            48,
            30,
        ),
        (
            "latency: no data falls back, scope /24",
            calm.clone(),
            LATENCY,
            "2.16.0.0/24",
            &[EU_WEST],
            B::GeoContinent,
            24,
            30,
        ),
        (
            "latency: short source prefix falls back",
            calm.clone(),
            LATENCY,
            "81.2.0.0/16",
            &[US_EAST],
            B::GeoDefault,
            16,
            30,
        ),
        (
            "within 20 ms of eu-west, us-east is cheaper",
            calm.clone(),
            LATENCY_COST,
            "81.2.69.0/24",
            &[US_EAST],
            B::Latency,
            24,
            30,
        ),
        (
            "cheap but down",
            us_down.clone(),
            LATENCY_COST,
            "81.2.69.0/24",
            &[EU_WEST],
            B::Latency,
            24,
            30,
        ),
        (
            "ms budget without data: no change",
            calm.clone(),
            LATENCY_COST,
            "8.8.8.0/24",
            &[US_EAST],
            B::Nearest,
            24,
            30,
        ),
        (
            "within 6000 km of Dublin from London",
            calm.clone(),
            NEAREST_COST,
            "81.2.69.0/24",
            &[US_EAST],
            B::Nearest,
            24,
            30,
        ),
        (
            "Mumbai: nothing cheaper in reach",
            calm.clone(),
            NEAREST_COST,
            "203.0.113.0/24",
            &[AP_SOUTH],
            B::Nearest,
            24,
            30,
        ),
        (
            "unlocated: no change",
            calm.clone(),
            NEAREST_COST,
            "1.0.0.0/24",
            &[EU_WEST],
            B::Unlocated,
            7,
            30,
        ),
        (
            "cost never promotes a spilling region",
            spill(US_EAST),
            NEAREST_COST,
            "81.2.69.0/24",
            &[EU_WEST],
            B::Nearest,
            24,
            15,
        ),
        (
            "model: us-east does not serve it",
            calm.clone(),
            MODEL,
            "192.0.2.0/24",
            &[EU_WEST],
            B::Failover,
            0,
            30,
        ),
        (
            "model: a down excluded region does not lower the ttl",
            us_down,
            MODEL,
            "192.0.2.0/24",
            &[EU_WEST],
            B::Failover,
            0,
            30,
        ),
    ];
    let latency = Arc::new(latency_world());
    for (name, statuses, policy, prefix, answer, basis, scope, ttl) in rows {
        let table = base.with_live(statuses, Arc::clone(&latency), Instant::now());
        let d = ask(
            &table,
            policy,
            &client(prefix, ClientSource::Ecs, 1),
            Want::Any,
        );
        let want: Vec<RegionIdx> = answer.iter().map(|&i| r(i)).collect();
        assert_eq!(
            (d.outcome, d.reason.basis, d.ecs_scope, d.ttl),
            (Outcome::Regions(want), basis, scope, ttl),
            "{name}"
        );
    }
}

#[test]
fn spilling_regions_go_last_in_weighted_draws() {
    let (_, base) = table();
    let mut statuses = vec![RegionStatus::default(); 4];
    statuses[usize::from(AP_SOUTH)] = status(Auto, Up, true);
    let table = base.with_statuses(statuses);
    let mut geo2_like = 0;
    for seed in 0..2_000 {
        let d = ask(
            &table,
            WEIGHTED,
            &client("192.0.2.0/24", ClientSource::Ecs, seed),
            Want::V4,
        );
        assert_ne!(
            d.outcome,
            Outcome::Regions(vec![r(AP_SOUTH)]),
            "seed {seed}"
        );
        geo2_like += usize::from(d.outcome == Outcome::Regions(vec![r(US_EAST)]));
    }
    // us-east : eu-west = 300 : 100 among the calm ones.
    assert!((1_400..1_600).contains(&geo2_like), "{geo2_like}");
}

#[test]
fn weighted_weights_ramp_back_after_a_region_returns() {
    let (config, base) = table();
    let t0 = Instant::now();
    let ttl = Duration::from_secs(30);
    let mut statuses = vec![RegionStatus::default(); 4];
    statuses[usize::from(EU_WEST)].health = Down;
    let down = base.with_live(statuses.clone(), Arc::default(), t0);
    statuses[usize::from(EU_WEST)].health = Up;
    let back = down.with_live(statuses, Arc::default(), t0 + ttl);
    let eu_line = |table: &SteeringTable, at: Instant| {
        let q = Question {
            want: Want::V4,
            explain: true,
        };
        decide(
            table,
            PolicyIdx(WEIGHTED),
            &client("192.0.2.0/24", ClientSource::Ecs, 0),
            &q,
            at,
        )
        .trace
        .unwrap()
        .lines(&config)
        .into_iter()
        .find(|l| l.starts_with("region=eu-west"))
        .unwrap()
    };
    let cases = [
        (
            &down,
            t0,
            "region=eu-west admin=auto health=down weight=100% effective-weight=0",
        ),
        (
            &back,
            t0 + ttl,
            "region=eu-west admin=auto health=up weight=100% effective-weight=1250 ramping-to=10000",
        ),
        (
            &back,
            t0 + ttl * 2,
            "region=eu-west admin=auto health=up weight=100% effective-weight=2500 ramping-to=10000",
        ),
        (
            &back,
            t0 + ttl * 4,
            "region=eu-west admin=auto health=up weight=100% effective-weight=10000",
        ),
    ];
    for (table, at, want) in cases {
        assert_eq!(eu_line(table, at), want);
    }
}

#[test]
fn trace_shows_latency_spill_cost_and_model() {
    let (config, base) = table();
    let now = Instant::now();
    let mut statuses = vec![RegionStatus::default(); 4];
    statuses[usize::from(AP_SOUTH)] = RegionStatus {
        report_received: Some(now - Duration::from_millis(350)),
        ..status(Auto, Up, true)
    };
    let table = base.with_live(statuses, Arc::new(latency_world()), now);
    let explain = |policy, prefix| {
        let q = Question {
            want: Want::Any,
            explain: true,
        };
        decide(
            &table,
            PolicyIdx(policy),
            &client(prefix, ClientSource::Ecs, 0),
            &q,
            now,
        )
        .trace
        .unwrap()
        .lines(&config)
    };
    let lines = explain(LATENCY_COST, "203.0.113.0/24");
    for line in [
        "name=latency-cost.gslb.example.com. mode=latency fallback=nearest answers=1 ttl=30 all-unhealthy=fail-open",
        "region=ap-south admin=auto health=up weight=100% effective-weight=60000 spilling headroom=0.02 report-age=350ms",
        "step=latency prefix=203.0.113.0/24 rtt=ap-south:8.0ms,eu-west:120.0ms",
        "step=order basis=latency order=ap-south,eu-west,us-east",
        "step=spill moved-last=ap-south",
        "step=cost within=20ms first=eu-west chosen=eu-west candidates=eu-west(cost=1)",
        "ttl=15 policy-ttl=30 lowered-by=ap-south(spilling)",
        "answer=eu-west scope=24 ttl=15 reason=latency",
    ] {
        assert!(lines.iter().any(|l| l == line), "{line} not in {lines:#?}");
    }
    let lines = explain(NEAREST_COST, "81.2.69.0/24");
    assert!(
        lines.contains(&"step=cost within=6000km first=eu-west chosen=us-east candidates=eu-west(cost=1),us-east(cost=0.5)".to_owned()),
        "{lines:#?}"
    );
    let lines = explain(MODEL, "192.0.2.0/24");
    assert!(
        lines
            .contains(&"step=model model=llama-70b excluded=us-east(not-serving-model)".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"candidates=eu-west,ap-south".to_owned()),
        "{lines:#?}"
    );
}
