use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use hickory_proto::rr::Name;

use super::{
    model::{AllUnhealthy, Endpoints, Limits, RegionIdx, SteeringMode},
    raw::RawServer,
    *,
};

const SOURCE: &str = "/etc/meridian/dns.toml";

/// A valid document the cases below append to: one zone, regions 0 = us-east, 1 = eu-west,
/// 2 = ap-south.
const BASE: &str = r#"
[[zone]]
origin = "example.test."
file = "example.test.zone"

[[region]]
id = "us-east"
latitude = 39.0438
longitude = -77.4874
ipv4 = ["192.0.2.10"]

[[region]]
id = "eu-west"
latitude = 53.3498
longitude = -6.2603
ipv4 = ["198.51.100.10"]

[[region]]
id = "ap-south"
latitude = 19.0760
longitude = 72.8777
ipv6 = ["2001:db8:30::10"]
"#;

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn parse(text: &str) -> Result<DnsConfig, ConfigError> {
    parse_dns_config(text, Path::new(SOURCE))
}

/// The field errors of an invalid document; panics on any other outcome.
fn field_errors(text: &str) -> Vec<FieldError> {
    match parse(text) {
        Err(ConfigError::Invalid { errors, .. }) => errors,
        other => panic!("expected ConfigError::Invalid, got {other:?}"),
    }
}

fn error(field: &str, problem: Problem) -> FieldError {
    FieldError {
        field: field.to_owned(),
        problem,
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/meridian.toml");
    let config = load_dns_config(&path).unwrap_or_else(|e| panic!("{e}"));
    let folder = path.parent().unwrap();

    assert_eq!(
        config.listen,
        vec![
            "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
            "[::1]:5353".parse().unwrap()
        ]
    );
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9153".parse().unwrap())
    );
    assert_eq!(config.limits, Limits::default());
    assert_eq!(
        config.geoip.as_ref().map(|g| g.path.clone()),
        Some(folder.join("../geoip/demo.mmdb"))
    );
    assert_eq!(
        config.operator_state_file,
        Some(folder.join("operator-state.json"))
    );
    assert_eq!(config.zones.len(), 1);
    assert_eq!(config.zones[0].origin, name("example.test."));
    assert_eq!(config.zones[0].file, folder.join("example.test.zone"));

    let ids: Vec<&str> = config.regions.iter().map(|r| r.id.as_ref()).collect();
    assert_eq!(ids, ["us-east", "eu-west", "ap-south"]);
    let (us, eu, ap) = (RegionIdx(0), RegionIdx(1), RegionIdx(2));

    let names: Vec<String> = config.gslb.iter().map(|g| g.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "api.example.test.",
            "nearest.example.test.",
            "weighted.example.test.",
            "failover.example.test.",
            "latency.example.test."
        ]
    );
    assert!(config.gslb.iter().all(|g| g.zone == name("example.test.")));
    assert!(config.gslb.iter().all(|g| g.policy.why));

    let api = &config.gslb[0].policy;
    assert_eq!(api.candidates, [us, eu, ap]);
    assert_eq!((api.answers, api.ttl, api.ecs), (1, 30, true));
    let SteeringMode::GeoMap(geo) = &api.mode else {
        panic!("api.example.test. is not geo: {:?}", api.mode);
    };
    assert_eq!(geo.default, [us]);
    for (continent, first) in [
        ("EU", eu),
        ("AF", eu),
        ("NA", us),
        ("SA", us),
        ("AS", ap),
        ("OC", ap),
    ] {
        assert_eq!(geo.continents[continent][0], first, "{continent}");
    }

    assert_eq!(config.gslb[1].policy.mode, SteeringMode::Nearest);
    assert_eq!(config.gslb[1].policy.candidates, [us, eu, ap]);
    assert_eq!(config.gslb[2].policy.mode, SteeringMode::Weighted);
    assert_eq!(config.gslb[3].policy.mode, SteeringMode::Failover);
    assert_eq!(config.gslb[3].policy.candidates, [eu, us, ap]);
    let latency = &config.gslb[4].policy;
    assert!(matches!(
        &latency.mode,
        SteeringMode::Latency(super::model::LatencyFallback::GeoMap(_))
    ));
    assert_eq!(
        latency.cost,
        Some(super::model::CostPreference::WithinMs(20.0))
    );
    let costs: Vec<f64> = config.regions.iter().map(|r| r.cost).collect();
    assert_eq!(costs, [1.0, 1.2, 0.8]);

    assert_eq!(config.overrides.len(), 1);
    assert_eq!(
        config.overrides[0].network,
        "198.51.100.0/24".parse().unwrap()
    );
    assert_eq!(config.overrides[0].regions, [eu]);
}

#[test]
fn defaults_apply_and_match_the_model() {
    let text = format!(
        "{BASE}
[[gslb]]
name = \"api.example.test\"
mode = \"nearest\"
"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.source, PathBuf::from(SOURCE));
    assert_eq!(config.listen, ["127.0.0.1:5353".parse().unwrap()]);
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.geoip, None);
    assert_eq!(config.metrics_listen, None);
    assert_eq!(config.operator_state_file, None);
    assert!(config.regions.iter().all(|r| r.capacity == 100));

    let policy = &config.gslb[0].policy;
    assert_eq!(
        policy.candidates,
        [RegionIdx(0), RegionIdx(1), RegionIdx(2)]
    );
    assert_eq!((policy.answers, policy.ttl), (1, 30));
    assert_eq!(policy.when_all_unhealthy, AllUnhealthy::FailOpen);
    assert!(policy.ecs);
    assert!(!policy.why);

    // The serde defaults and `RawServer::default()` are the same functions; both must agree
    // with the model's own notion of default limits.
    let server = RawServer::default();
    assert_eq!(
        (
            server.max_udp_payload,
            server.tcp_idle_timeout_ms,
            server.max_tcp_connections
        ),
        (1232, 10_000, 1024)
    );
    assert_eq!(parse_raw("", Path::new(SOURCE)).unwrap().server, server);
}

#[test]
fn names_codes_and_endpoints_are_normalised() {
    let text = r#"
[[zone]]
origin = "Example.TEST"
file = "/var/lib/meridian/example.test.zone"

[[region]]
id = "us-east"
latitude = 39
longitude = -77
cname = "LB.us-east.Example.NET"

[[region]]
id = "eu-west"
latitude = 53.3
longitude = -6.3
ipv4 = ["198.51.100.10"]

[[gslb]]
name = "API.Example.Test."
mode = "geo"
when_all_unhealthy = "fail_closed"
[gslb.geo]
default = ["us-east"]
countries = { gb = ["eu-west"] }
subdivisions = { "us-ca" = ["us-east"] }
continents = { eu = ["eu-west"] }
"#;
    let config = parse(text).unwrap();
    // An absolute path stays as written.
    assert_eq!(
        config.zones[0].file,
        PathBuf::from("/var/lib/meridian/example.test.zone")
    );
    let origin = &config.zones[0].origin;
    assert!(origin.is_fqdn());
    assert_eq!(origin.to_string(), "example.test.");
    assert_eq!(config.gslb[0].name.to_string(), "api.example.test.");
    assert_eq!(
        config.regions[0].endpoints,
        Endpoints::Cname(name("lb.us-east.example.net."))
    );
    let Endpoints::Cname(target) = &config.regions[0].endpoints else {
        unreachable!()
    };
    assert_eq!(target.to_string(), "lb.us-east.example.net.");
    assert_eq!(
        config.gslb[0].policy.when_all_unhealthy,
        AllUnhealthy::FailClosed
    );
    let SteeringMode::GeoMap(geo) = &config.gslb[0].policy.mode else {
        panic!("not geo");
    };
    assert_eq!(geo.countries["GB"], [RegionIdx(1)]);
    assert_eq!(geo.subdivisions["US-CA"], [RegionIdx(0)]);
    assert_eq!(geo.continents["EU"], [RegionIdx(1)]);
    assert_eq!(
        config.regions[1].endpoints,
        Endpoints::Addresses {
            v4: vec![Ipv4Addr::new(198, 51, 100, 10)],
            v6: vec![]
        }
    );
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let text = format!(
        "operator_state = \"state/operator.json\"\n[geoip]\ndatabase = \"../geoip/x.mmdb\"\n{BASE}"
    );
    let config = parse_dns_config(&text, Path::new("deploy/dns.toml")).unwrap();
    assert_eq!(
        config.operator_state_file,
        Some(PathBuf::from("deploy/state/operator.json"))
    );
    assert_eq!(
        config.geoip.unwrap().path,
        PathBuf::from("deploy/../geoip/x.mmdb")
    );
    assert_eq!(
        config.zones[0].file,
        PathBuf::from("deploy/example.test.zone")
    );

    // A bare file name has an empty folder: paths stay relative to the working directory.
    let config = parse_dns_config(BASE, Path::new("dns.toml")).unwrap();
    assert_eq!(config.zones[0].file, PathBuf::from("example.test.zone"));
}

#[test]
fn overrides_are_sorted_most_specific_first() {
    let text = format!(
        r#"{BASE}
[[override]]
network = "198.51.0.0/16"
regions = ["us-east"]
[[override]]
network = "2001:db8::/32"
regions = ["ap-south"]
[[override]]
network = "198.51.100.0/24"
regions = ["eu-west", "us-east"]
[[override]]
network = "198.51.100.128/25"
regions = ["ap-south"]
"#
    );
    let config = parse(&text).unwrap();
    let networks: Vec<String> = config
        .overrides
        .iter()
        .map(|o| o.network.to_string())
        .collect();
    // Prefix lengths of different families never compete for one address; comparing them
    // only has to be deterministic.
    assert_eq!(
        networks,
        [
            "2001:db8::/32",
            "198.51.100.128/25",
            "198.51.100.0/24",
            "198.51.0.0/16"
        ]
    );
    assert_eq!(config.overrides[2].regions, [RegionIdx(1), RegionIdx(0)]);
}

/// One bad thing per case, appended to [`BASE`], and the one error it must produce.
#[test]
fn each_mistake_is_reported_at_its_field() {
    let gslb = |extra: &str| {
        format!(
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"geo\"\n{extra}\n[gslb.geo]\ndefault = [\"us-east\"]\n"
        )
    };
    let cases: Vec<(&str, String, FieldError)> = vec![
        (
            "unknown key in a gslb table",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"nearest\"\nttll = 30\n".into(),
            error(
                "gslb[0].ttll",
                Problem::UnknownKey {
                    key: "ttll".into(),
                    expected: strings(&[
                        "name",
                        "mode",
                        "regions",
                        "answers",
                        "ttl",
                        "when_all_unhealthy",
                        "ecs",
                        "why",
                        "geo",
                        "model",
                        "latency_fallback",
                        "cost",
                    ]),
                },
            ),
        ),
        (
            "unknown key in a nested table",
            format!("{}cities = {{}}\n", gslb("")),
            error(
                "gslb[0].geo.cities",
                Problem::UnknownKey {
                    key: "cities".into(),
                    expected: strings(&["default", "continents", "countries", "subdivisions"]),
                },
            ),
        ),
        (
            "unknown top-level key",
            "[servers]\nlisten = []\n".into(),
            error(
                "servers",
                Problem::UnknownKey {
                    key: "servers".into(),
                    expected: strings(&[
                        "operator_state",
                        "server",
                        "geoip",
                        "zone",
                        "region",
                        "gslb",
                        "override",
                        "health",
                        "admin",
                        "anycast",
                        "rrl",
                        "tsig_key",
                    ]),
                },
            ),
        ),
        (
            "missing required key",
            "[[region]]\nid = \"x\"\nlongitude = 1.0\nipv4 = [\"192.0.2.1\"]\n".into(),
            error(
                "region[3].latitude",
                Problem::MissingKey {
                    key: "latitude".into(),
                },
            ),
        ),
        (
            "unknown mode",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"closest\"\n".into(),
            error(
                "gslb[0].mode",
                Problem::UnknownVariant {
                    value: "closest".into(),
                    expected: strings(&["geo", "nearest", "weighted", "failover", "latency"]),
                },
            ),
        ),
        (
            "wrong type",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"nearest\"\nttl = \"30\"\n".into(),
            error(
                "gslb[0].ttl",
                Problem::Schema {
                    message: "invalid type: string \"30\", expected i64".into(),
                },
            ),
        ),
        (
            "unknown region in a geo map",
            format!("{}countries = {{ GB = [\"eu-west\", \"eu-wset\"] }}\n", gslb("")),
            error(
                "gslb[0].geo.countries.GB[1]",
                Problem::UnknownRegion {
                    id: "eu-wset".into(),
                },
            ),
        ),
        (
            "geo map region that is not a candidate",
            format!(
                "{}continents = {{ AS = [\"ap-south\"] }}\n",
                gslb("regions = [\"us-east\", \"eu-west\"]")
            ),
            error(
                "gslb[0].geo.continents.AS[0]",
                Problem::NotACandidate {
                    id: "ap-south".into(),
                },
            ),
        ),
        (
            "duplicate region",
            "[[region]]\nid = \"us-east\"\nlatitude = 1.0\nlongitude = 1.0\nipv4 = [\"192.0.2.1\"]\n"
                .into(),
            error(
                "region[3].id",
                Problem::Duplicate {
                    value: "us-east".into(),
                    first: "region[0].id".into(),
                },
            ),
        ),
        (
            "invalid region id",
            "[[region]]\nid = \"US_West\"\nlatitude = 1.0\nlongitude = 1.0\nipv4 = [\"192.0.2.1\"]\n"
                .into(),
            error(
                "region[3].id",
                Problem::InvalidRegionId {
                    id: "US_West".into(),
                },
            ),
        ),
        (
            "gslb name outside every zone",
            "[[gslb]]\nname = \"api.example.org.\"\nmode = \"nearest\"\n".into(),
            error(
                "gslb[0].name",
                Problem::NotInAnyZone {
                    name: "api.example.org.".into(),
                },
            ),
        ),
        (
            "gslb name at a zone apex",
            "[[gslb]]\nname = \"Example.Test\"\nmode = \"nearest\"\n".into(),
            error(
                "gslb[0].name",
                Problem::ZoneApex {
                    name: "example.test.".into(),
                },
            ),
        ),
        (
            "cname and addresses",
            "[[region]]\nid = \"lb\"\nlatitude = 1.0\nlongitude = 1.0\nipv4 = [\"192.0.2.1\"]\ncname = \"lb.example.net.\"\n"
                .into(),
            error("region[3].cname", Problem::CnameWithAddresses),
        ),
        (
            "no endpoints",
            "[[region]]\nid = \"empty\"\nlatitude = 1.0\nlongitude = 1.0\n".into(),
            error("region[3]", Problem::NoEndpoints),
        ),
        (
            "bad ipv6 address",
            "[[region]]\nid = \"v6\"\nlatitude = 1.0\nlongitude = 1.0\nipv6 = [\"2001:db8::1\", \"192.0.2.1\"]\n"
                .into(),
            error(
                "region[3].ipv6[1]",
                Problem::InvalidAddress {
                    value: "192.0.2.1".into(),
                    expected: AddressKind::Ipv6,
                },
            ),
        ),
        (
            "latitude out of range",
            "[[region]]\nid = \"pole\"\nlatitude = 91.0\nlongitude = 1.0\nipv4 = [\"192.0.2.1\"]\n"
                .into(),
            error(
                "region[3].latitude",
                Problem::CoordinateOutOfRange {
                    value: 91.0,
                    min: -90.0,
                    max: 90.0,
                },
            ),
        ),
        (
            "missing geo section",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"geo\"\n".into(),
            error("gslb[0].geo", Problem::GeoMapRequired),
        ),
        (
            "geo section on a non-geo mode",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"failover\"\n[gslb.geo]\ndefault = [\"us-east\"]\n"
                .into(),
            error(
                "gslb[0].geo",
                Problem::GeoMapForbidden {
                    mode: "failover".into(),
                },
            ),
        ),
        (
            "bad country code",
            format!("{}countries = {{ UK = [\"eu-west\"] }}\n", gslb("")),
            error(
                "gslb[0].geo.countries.UK",
                Problem::UnknownCountry {
                    code: "UK".into(),
                    suggestion: Some("GB".into()),
                },
            ),
        ),
        (
            "bad continent code",
            format!("{}continents = {{ EUR = [\"eu-west\"] }}\n", gslb("")),
            error(
                "gslb[0].geo.continents.EUR",
                Problem::UnknownContinent { code: "EUR".into() },
            ),
        ),
        (
            "bad subdivision code",
            format!("{}subdivisions = {{ CA = [\"us-east\"] }}\n", gslb("")),
            error(
                "gslb[0].geo.subdivisions.CA",
                Problem::InvalidSubdivision { code: "CA".into() },
            ),
        ),
        (
            "empty geo default",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"geo\"\n[gslb.geo]\ndefault = []\n".into(),
            error("gslb[0].geo.default", Problem::EmptyList),
        ),
        (
            "override host bits",
            "[[override]]\nnetwork = \"198.51.100.7/24\"\nregions = [\"eu-west\"]\n".into(),
            error(
                "override[0].network",
                Problem::HostBitsSet {
                    network: "198.51.100.7/24".parse().unwrap(),
                    truncated: "198.51.100.0/24".parse().unwrap(),
                },
            ),
        ),
        (
            "duplicate override network",
            "[[override]]\nnetwork = \"198.51.100.0/24\"\nregions = [\"eu-west\"]\n[[override]]\nnetwork = \"198.51.100.0/24\"\nregions = [\"us-east\"]\n"
                .into(),
            error(
                "override[1].network",
                Problem::Duplicate {
                    value: "198.51.100.0/24".into(),
                    first: "override[0].network".into(),
                },
            ),
        ),
        (
            "answers above candidates",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"weighted\"\nregions = [\"us-east\", \"eu-west\"]\nanswers = 3\n"
                .into(),
            error(
                "gslb[0].answers",
                Problem::AnswersExceedCandidates {
                    answers: 3,
                    candidates: 2,
                },
            ),
        ),
        (
            "ttl zero",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"nearest\"\nttl = 0\n".into(),
            error(
                "gslb[0].ttl",
                Problem::IntegerOutOfRange {
                    value: 0,
                    min: 1,
                    max: 86_400,
                },
            ),
        ),
        (
            "duplicate candidate",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"failover\"\nregions = [\"us-east\", \"us-east\"]\n"
                .into(),
            error(
                "gslb[0].regions[1]",
                Problem::Duplicate {
                    value: "us-east".into(),
                    first: "gslb[0].regions[0]".into(),
                },
            ),
        ),
        (
            "duplicate gslb name",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"nearest\"\n[[gslb]]\nname = \"API.example.test\"\nmode = \"weighted\"\n"
                .into(),
            error(
                "gslb[1].name",
                Problem::Duplicate {
                    value: "api.example.test.".into(),
                    first: "gslb[0].name".into(),
                },
            ),
        ),
        (
            "udp payload out of range",
            "[server]\nmax_udp_payload = 65535\n".into(),
            error(
                "server.max_udp_payload",
                Problem::IntegerOutOfRange {
                    value: 65535,
                    min: 512,
                    max: 4096,
                },
            ),
        ),
        (
            "bad listen address",
            "[server]\nlisten = [\"127.0.0.1\"]\n".into(),
            error(
                "server.listen[0]",
                Problem::InvalidAddress {
                    value: "127.0.0.1".into(),
                    expected: AddressKind::SocketAddr,
                },
            ),
        ),
        (
            "metrics on a dns listener",
            "[server]\nmetrics_listen = \"127.0.0.1:5353\"\n".into(),
            error(
                "server.metrics_listen",
                Problem::MetricsOnDnsListener {
                    address: "127.0.0.1:5353".parse().unwrap(),
                },
            ),
        ),
        (
            "empty zone file path",
            "[[zone]]\norigin = \"other.test.\"\nfile = \"\"\n".into(),
            error("zone[1].file", Problem::EmptyPath),
        ),
    ];

    for (what, extra, expected) in cases {
        // Top-level keys must precede the tables in TOML; tables can go either side.
        let text = if extra.starts_with('[') {
            format!("{BASE}\n{extra}")
        } else {
            format!("{extra}\n{BASE}")
        };
        assert_eq!(field_errors(&text), [expected], "case: {what}\n{text}");
    }
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let text = "[server]\nlisten = [\"127.0.0.1:5353\"]\n# café\nmax_udp_payload = = 1232\n";
    match parse(text) {
        Err(ConfigError::Syntax {
            path, line, column, ..
        }) => {
            assert_eq!(path, PathBuf::from(SOURCE));
            assert_eq!((line, column), (4, 19));
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }

    // A key defined twice is a TOML error, not a validation error.
    let twice = "[server]\nmax_udp_payload = 1232\nmax_udp_payload = 1400\n";
    assert!(
        matches!(parse(twice), Err(ConfigError::Syntax { line: 3, .. })),
        "{:?}",
        parse(twice)
    );
}

#[test]
fn position_counts_characters() {
    assert_eq!(position("", 0), (1, 1));
    assert_eq!(position("ab\ncd", 4), (2, 2));
    assert_eq!(position("é\né=", 5), (2, 2));
}

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"
[server]
listen = ["127.0.0.1:5353", "not an address"]

[[zone]]
origin = "example.test."
file = "example.test.zone"

[[region]]
id = "us-east"
latitude = 39.0
longitude = 200.0
ipv4 = ["192.0.2.10"]

[[region]]
id = "us-east"
latitude = 53.3
longitude = -6.3
ipv4 = ["198.51.100.10"]

[[gslb]]
name = "api.example.org."
mode = "geo"
ttl = 0
[gslb.geo]
default = ["eu-west"]

[[override]]
network = "198.51.100.1/24"
regions = []
"#;
    let expected = vec![
        error(
            "server.listen[1]",
            Problem::InvalidAddress {
                value: "not an address".into(),
                expected: AddressKind::SocketAddr,
            },
        ),
        error(
            "region[0].longitude",
            Problem::CoordinateOutOfRange {
                value: 200.0,
                min: -180.0,
                max: 180.0,
            },
        ),
        error(
            "region[1].id",
            Problem::Duplicate {
                value: "us-east".into(),
                first: "region[0].id".into(),
            },
        ),
        error(
            "gslb[0].name",
            Problem::NotInAnyZone {
                name: "api.example.org.".into(),
            },
        ),
        error(
            "gslb[0].ttl",
            Problem::IntegerOutOfRange {
                value: 0,
                min: 1,
                max: 86_400,
            },
        ),
        error(
            "gslb[0].geo.default[0]",
            Problem::UnknownRegion {
                id: "eu-west".into(),
            },
        ),
        error("override[0].regions", Problem::EmptyList),
        error(
            "override[0].network",
            Problem::HostBitsSet {
                network: "198.51.100.1/24".parse().unwrap(),
                truncated: "198.51.100.0/24".parse().unwrap(),
            },
        ),
    ];
    let errors = field_errors(text);
    assert_eq!(errors, expected);

    // Display: one `<file>: <field>: <problem>` line per error.
    let shown = parse(text).unwrap_err().to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{shown}");
    assert_eq!(
        lines[0],
        "/etc/meridian/dns.toml: server.listen[1]: `not an address` is not a socket address (such as 127.0.0.1:53 or [::1]:53)"
    );
    assert_eq!(
        lines[5],
        "/etc/meridian/dns.toml: gslb[0].geo.default[0]: no [[region]] has id `eu-west`"
    );
}

#[test]
fn no_zones_is_an_error() {
    assert_eq!(field_errors(""), [error("zone", Problem::NoZones)]);
}

#[test]
fn unreadable_file_is_a_read_error() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/does-not-exist.toml");
    match load_dns_config(&path) {
        Err(ConfigError::Read { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn problems_read_as_sentences() {
    let cases = [
        (
            Problem::IntegerOutOfRange {
                value: 0,
                min: 1,
                max: 86_400,
            },
            "0 is out of range: must be from 1 to 86400",
        ),
        (
            Problem::IntegerOutOfRange {
                value: -5,
                min: 1,
                max: i64::MAX,
            },
            "-5 is out of range: must be at least 1",
        ),
        (
            Problem::UnknownKey {
                key: "ttll".into(),
                expected: strings(&["ttl"]),
            },
            "unknown key `ttll`; expected `ttl`",
        ),
        (
            Problem::UnknownCountry {
                code: "UK".into(),
                suggestion: Some("GB".into()),
            },
            "`UK` is not an ISO 3166-1 alpha-2 country code; did you mean `GB`?",
        ),
        (
            Problem::ZoneApex {
                name: "example.test.".into(),
            },
            "`example.test.` is the apex of zone `example.test.`, which owns its SOA and NS; \
             steer a name below it",
        ),
    ];
    for (problem, sentence) in cases {
        assert_eq!(problem.to_string(), sentence);
    }
    let located = error("gslb[0].ttl", Problem::EmptyList);
    assert_eq!(located.to_string(), "gslb[0].ttl: must not be empty");
}

#[test]
fn documented_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (_, after) = doc.split_once("## Full example").unwrap();
    let (_, block) = after.split_once("```toml\n").unwrap();
    let (example, _) = block.split_once("```").unwrap();
    let config = parse_dns_config(example, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.regions.len(), 3);
    assert_eq!(config.gslb.len(), 2);
    assert_eq!(
        config.regions[2].endpoints,
        Endpoints::Cname(name("lb.ap-south.example.net."))
    );
}

/// A `[health]` section with only the required keys, for cases to extend.
const HEALTH: &str = "[health]\nlisten = \"127.0.0.1:8853\"\nca = \"certs/ca.pem\"\ncert = \"certs/node.pem\"\nkey = \"certs/node-key.pem\"\n";

#[test]
fn health_plane_keys_parse_with_defaults_and_resolved_paths() {
    use std::time::Duration;

    use super::model::{
        AdminApi, Anycast, CostPreference, HealthChannel, LatencyFallback, ProbeSettings,
        RateLimit, RelayProbe, SpillWatermarks,
    };

    let text = format!(
        "{BASE}
{HEALTH}
[admin]
token_file = \"admin.token\"

[anycast]
bird_socket = \"/run/bird/bird.ctl\"
protocol = \"anycast_dns\"

[rrl]

[[region]]
id = \"gpu-west\"
latitude = 45.6
longitude = -121.2
ipv4 = [\"192.0.2.40\"]
cost = 0.5
models = [\"llama-3.1-8b\", \"llama-3.1-70b\"]
probe = {{ address = \"127.0.1.4:8443\", server_name = \"api.example.test\", ca = \"certs/relay-ca.pem\" }}

[[gslb]]
name = \"latency.example.test.\"
mode = \"latency\"
latency_fallback = \"geo\"
model = \"llama-3.1-70b\"
cost = {{ within_ms = 20.0 }}
[gslb.geo]
default = [\"us-east\"]

[[gslb]]
name = \"cheap.example.test.\"
mode = \"nearest\"
cost = {{ within_km = 2000.0 }}

[[gslb]]
name = \"fast.example.test.\"
mode = \"latency\"
"
    );
    let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let folder = Path::new(SOURCE).parent().unwrap();
    assert_eq!(
        config.health,
        Some(HealthChannel {
            listen: "127.0.0.1:8853".parse().unwrap(),
            ca: folder.join("certs/ca.pem"),
            cert: folder.join("certs/node.pem"),
            key: folder.join("certs/node-key.pem"),
            down_after: 2,
            up_after: 3,
            max_report_validity: Duration::from_secs(10),
            spill: SpillWatermarks::default(),
            refresh_interval: Duration::from_millis(250),
            probe: ProbeSettings::default(),
            max_connections: 256,
        })
    );
    assert_eq!(
        config.admin,
        Some(AdminApi {
            listen: "127.0.0.1:9954".parse().unwrap(),
            token_file: folder.join("admin.token"),
        })
    );
    assert_eq!(
        config.anycast,
        Some(Anycast {
            bird_socket: "/run/bird/bird.ctl".into(),
            protocol: "anycast_dns".into(),
            max_health_silence: None,
            check_interval: Duration::from_secs(1),
        })
    );
    assert_eq!(
        config.rrl,
        Some(RateLimit {
            responses_per_second: 20,
            burst: 20,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            max_buckets: 100_000,
        })
    );

    let gpu = &config.regions[3];
    assert_eq!(gpu.cost, 0.5);
    assert_eq!(
        gpu.models,
        [
            std::sync::Arc::<str>::from("llama-3.1-8b"),
            "llama-3.1-70b".into()
        ]
    );
    assert_eq!(
        gpu.probe,
        Some(RelayProbe {
            address: "127.0.1.4:8443".parse().unwrap(),
            server_name: "api.example.test".into(),
            ca: Some(folder.join("certs/relay-ca.pem")),
        })
    );
    // Defaults of the new region keys.
    assert_eq!(
        (config.regions[0].cost, config.regions[0].models.len()),
        (1.0, 0)
    );
    assert_eq!(config.regions[0].probe, None);

    let latency = &config.gslb[0].policy;
    let SteeringMode::Latency(LatencyFallback::GeoMap(map)) = &latency.mode else {
        panic!("{:?}", latency.mode);
    };
    assert_eq!(map.default, [RegionIdx(0)]);
    assert_eq!(latency.model.as_deref(), Some("llama-3.1-70b"));
    assert_eq!(latency.cost, Some(CostPreference::WithinMs(20.0)));
    assert_eq!(
        config.gslb[1].policy.cost,
        Some(CostPreference::WithinKm(2000.0))
    );
    assert_eq!(
        config.gslb[2].policy.mode,
        SteeringMode::Latency(LatencyFallback::Nearest)
    );
    assert_eq!(config.gslb[2].policy.model, None);
}

/// One bad thing per case in the health-plane keys, and the one error it must produce.
#[test]
fn health_plane_mistakes_are_reported_at_their_field() {
    let health = |extra: &str| format!("{HEALTH}{extra}\n");
    let region = |extra: &str| {
        format!(
            "[[region]]\nid = \"gpu\"\nlatitude = 1.0\nlongitude = 1.0\nipv4 = [\"192.0.2.9\"]\n{extra}\n"
        )
    };
    let gslb = |extra: &str| {
        format!("[[gslb]]\nname = \"api.example.test.\"\nmode = \"nearest\"\n{extra}\n")
    };
    let range = |value: i64, min: i64, max: i64| Problem::IntegerOutOfRange { value, min, max };
    let number =
        |value: f64, min: f64, min_exclusive: bool, max: Option<f64>| Problem::NumberOutOfRange {
            value,
            min,
            min_exclusive,
            max,
        };
    let cases: Vec<(&str, String, FieldError)> = vec![
        (
            "health without a listen address",
            "[health]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n".into(),
            error(
                "health.listen",
                Problem::MissingKey {
                    key: "listen".into(),
                },
            ),
        ),
        (
            "bad health listen address",
            HEALTH.replace("127.0.0.1:8853", "localhost"),
            error(
                "health.listen",
                Problem::InvalidAddress {
                    value: "localhost".into(),
                    expected: AddressKind::SocketAddr,
                },
            ),
        ),
        (
            "health channel on a dns listener",
            HEALTH.replace("127.0.0.1:8853", "0.0.0.0:5353"),
            error(
                "health.listen",
                Problem::ListenerClash {
                    address: "0.0.0.0:5353".parse().unwrap(),
                    other: "server.listen[0]".into(),
                },
            ),
        ),
        (
            "empty ca path",
            HEALTH.replace("certs/ca.pem", ""),
            error("health.ca", Problem::EmptyPath),
        ),
        (
            "down_after zero",
            health("down_after = 0"),
            error("health.down_after", range(0, 1, 100)),
        ),
        (
            "up_after below down_after",
            health("down_after = 4\nup_after = 3"),
            error(
                "health.down_after",
                Problem::ExceedsField {
                    value: 4,
                    other: "health.up_after".into(),
                    other_value: 3,
                },
            ),
        ),
        (
            "report validity too short",
            health("max_report_validity_ms = 10"),
            error(
                "health.max_report_validity_ms",
                range(10, 100, 3_600_000),
            ),
        ),
        (
            "refresh interval zero",
            health("refresh_interval_ms = 0"),
            error("health.refresh_interval_ms", range(0, 10, 60_000)),
        ),
        (
            "no connections allowed",
            health("max_connections = 0"),
            error("health.max_connections", range(0, 1, 65_536)),
        ),
        (
            "trip above one",
            health("[health.spill]\ntrip = 1.5\nrecover = 0.2"),
            error("health.spill.trip", number(1.5, 0.0, false, Some(1.0))),
        ),
        (
            "recover negative",
            health("[health.spill]\ntrip = 0.05\nrecover = -0.1"),
            error("health.spill.recover", number(-0.1, 0.0, false, Some(1.0))),
        ),
        (
            "trip not below recover",
            health("[health.spill]\ntrip = 0.3\nrecover = 0.3"),
            error(
                "health.spill.trip",
                Problem::NotBelowField {
                    value: 0.3,
                    other: "health.spill.recover".into(),
                    other_value: 0.3,
                },
            ),
        ),
        (
            "hold zero reports",
            health("[health.spill]\nhold_reports = 0"),
            error("health.spill.hold_reports", range(0, 1, 100)),
        ),
        (
            "unknown spill key",
            health("[health.spill]\ntrip_at = 0.1"),
            error(
                "health.spill.trip_at",
                Problem::UnknownKey {
                    key: "trip_at".into(),
                    expected: strings(&["trip", "recover", "hold_reports"]),
                },
            ),
        ),
        (
            "probe interval too short",
            health("[health.probe]\ninterval_ms = 5"),
            error("health.probe.interval_ms", range(5, 100, 3_600_000)),
        ),
        (
            "probe timeout too long",
            health("[health.probe]\ntimeout_ms = 120000"),
            error("health.probe.timeout_ms", range(120_000, 100, 60_000)),
        ),
        (
            "probe down_after zero",
            health("[health.probe]\ndown_after = 0"),
            error("health.probe.down_after", range(0, 1, 100)),
        ),
        (
            "admin without a token file",
            "[admin]\nlisten = \"127.0.0.1:9954\"\n".into(),
            error(
                "admin.token_file",
                Problem::MissingKey {
                    key: "token_file".into(),
                },
            ),
        ),
        (
            "admin on the metrics listener",
            "[server]\nmetrics_listen = \"127.0.0.1:9153\"\n[admin]\nlisten = \"127.0.0.1:9153\"\ntoken_file = \"t\"\n".into(),
            error(
                "admin.listen",
                Problem::ListenerClash {
                    address: "127.0.0.1:9153".parse().unwrap(),
                    other: "server.metrics_listen".into(),
                },
            ),
        ),
        (
            "anycast without a protocol name",
            "[anycast]\nbird_socket = \"/run/bird/bird.ctl\"\nprotocol = \" \"\n".into(),
            error("anycast.protocol", Problem::EmptyList),
        ),
        (
            "anycast silence too short",
            "[anycast]\nbird_socket = \"b.ctl\"\nprotocol = \"p\"\nmax_health_silence_ms = 10\n"
                .into(),
            error(
                "anycast.max_health_silence_ms",
                range(10, 1_000, 86_400_000),
            ),
        ),
        (
            "anycast check interval zero",
            "[anycast]\nbird_socket = \"b.ctl\"\nprotocol = \"p\"\ncheck_interval_ms = 0\n".into(),
            error("anycast.check_interval_ms", range(0, 100, 60_000)),
        ),
        (
            "rrl rate zero",
            "[rrl]\nresponses_per_second = 0\n".into(),
            error("rrl.responses_per_second", range(0, 1, 1_000_000)),
        ),
        (
            "rrl slip too high",
            "[rrl]\nslip = 11\n".into(),
            error("rrl.slip", range(11, 0, 10)),
        ),
        (
            "rrl ipv4 prefix too long",
            "[rrl]\nipv4_prefix = 33\n".into(),
            error("rrl.ipv4_prefix", range(33, 1, 32)),
        ),
        (
            "rrl ipv6 prefix zero",
            "[rrl]\nipv6_prefix = 0\n".into(),
            error("rrl.ipv6_prefix", range(0, 1, 128)),
        ),
        (
            "rrl no buckets",
            "[rrl]\nmax_buckets = 0\n".into(),
            error("rrl.max_buckets", range(0, 1, 100_000_000)),
        ),
        (
            "negative region cost",
            region("cost = -1.0"),
            error("region[3].cost", number(-1.0, 0.0, false, None)),
        ),
        (
            "empty model id",
            region("models = [\"llama\", \"\"]"),
            error("region[3].models[1]", Problem::EmptyModelId),
        ),
        (
            "model listed twice",
            region("models = [\"llama\", \"llama\"]"),
            error(
                "region[3].models[1]",
                Problem::Duplicate {
                    value: "llama".into(),
                    first: "region[3].models[0]".into(),
                },
            ),
        ),
        (
            "bad probe address",
            format!(
                "{HEALTH}{}",
                region("probe = { address = \"relay:8443\", server_name = \"api.example.test\" }")
            ),
            error(
                "region[3].probe.address",
                Problem::InvalidAddress {
                    value: "relay:8443".into(),
                    expected: AddressKind::SocketAddr,
                },
            ),
        ),
        (
            "bad probe server name",
            format!(
                "{HEALTH}{}",
                region("probe = { address = \"127.0.0.1:8443\", server_name = \"not a name\" }")
            ),
            error(
                "region[3].probe.server_name",
                Problem::InvalidServerName {
                    name: "not a name".into(),
                },
            ),
        ),
        (
            "probe without a ca and no health section",
            region("probe = { address = \"127.0.0.1:8443\", server_name = \"api.example.test\" }"),
            error("region[3].probe", Problem::ProbeCaRequired),
        ),
        (
            "model no candidate serves",
            format!(
                "{}{}",
                region("models = [\"llama\"]"),
                gslb("regions = [\"gpu\"]\nmodel = \"mistral\"")
            ),
            error(
                "gslb[0].model",
                Problem::ModelNotServed {
                    model: "mistral".into(),
                },
            ),
        ),
        (
            "empty model name",
            gslb("model = \"\""),
            error("gslb[0].model", Problem::EmptyModelId),
        ),
        (
            "latency fallback on another mode",
            gslb("latency_fallback = \"nearest\""),
            error(
                "gslb[0].latency_fallback",
                Problem::LatencyFallbackForbidden {
                    mode: "nearest".into(),
                },
            ),
        ),
        (
            "latency falling back to geo without a geo map",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"latency\"\nlatency_fallback = \"geo\"\n"
                .into(),
            error("gslb[0].geo", Problem::GeoMapRequired),
        ),
        (
            "geo map on latency falling back to nearest",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"latency\"\n[gslb.geo]\ndefault = [\"us-east\"]\n"
                .into(),
            error(
                "gslb[0].geo",
                Problem::GeoMapForbidden {
                    mode: "latency".into(),
                },
            ),
        ),
        (
            "unknown latency fallback",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"latency\"\nlatency_fallback = \"weighted\"\n"
                .into(),
            error(
                "gslb[0].latency_fallback",
                Problem::UnknownVariant {
                    value: "weighted".into(),
                    expected: strings(&["geo", "nearest"]),
                },
            ),
        ),
        (
            "cost budget zero",
            gslb("cost = { within_km = 0.0 }"),
            error("gslb[0].cost.within_km", number(0.0, 0.0, true, Some(40_075.0))),
        ),
        (
            "cost budget negative ms",
            gslb("cost = { within_ms = -5.0 }"),
            error("gslb[0].cost.within_ms", number(-5.0, 0.0, true, Some(60_000.0))),
        ),
        (
            "cost with both budgets",
            gslb("cost = { within_km = 100.0, within_ms = 5.0 }"),
            error("gslb[0].cost", Problem::CostBudgetChoice),
        ),
        (
            "cost with no budget",
            gslb("cost = {}"),
            error("gslb[0].cost", Problem::CostBudgetChoice),
        ),
        (
            "cost on a weighted name",
            "[[gslb]]\nname = \"api.example.test.\"\nmode = \"weighted\"\ncost = { within_km = 100.0 }\n"
                .into(),
            error(
                "gslb[0].cost",
                Problem::CostForbidden {
                    mode: "weighted".into(),
                },
            ),
        ),
    ];

    for (what, extra, expected) in cases {
        let text = format!("{BASE}\n{extra}");
        assert_eq!(field_errors(&text), [expected], "case: {what}\n{text}");
    }
}

#[test]
fn health_plane_problems_read_as_sentences() {
    let cases = [
        (
            Problem::ModelNotServed {
                model: "llama".into(),
            },
            "no candidate region serves model `llama`: a region serves it when its `models` list is empty or names it",
        ),
        (
            Problem::NotBelowField {
                value: 0.3,
                other: "health.spill.recover".into(),
                other_value: 0.2,
            },
            "0.3 must be below `health.spill.recover` (0.2)",
        ),
        (
            Problem::CostBudgetChoice,
            "write exactly one of `within_km` and `within_ms`",
        ),
        (
            Problem::LatencyFallbackForbidden { mode: "geo".into() },
            "`latency_fallback` only applies to mode = \"latency\", not \"geo\"",
        ),
    ];
    for (problem, sentence) in cases {
        assert_eq!(problem.to_string(), sentence);
    }
}

/// BASE with keys added to its `[[zone]]`.
fn with_zone_keys(keys: &str) -> String {
    BASE.replacen(
        "file = \"example.test.zone\"\n",
        &format!("file = \"example.test.zone\"\n{keys}\n"),
        1,
    )
}

#[test]
fn zone_transfer_keys_parse_and_default_to_no_transfers() {
    let config = parse(BASE).unwrap();
    assert!(config.zones[0].transfer_to.is_empty());
    assert!(config.zones[0].notify.is_empty());
    assert!(!config.zones[0].transfer_allowed("127.0.0.1".parse().unwrap()));

    let config = parse(&with_zone_keys(
        "transfer_to = [\"192.0.2.0/24\", \"::1\", \"127.0.0.2\"]\nnotify = [\"192.0.2.53:53\", \"[2001:db8::53]:5300\"]",
    ))
    .unwrap();
    let zone = &config.zones[0];
    let networks: Vec<String> = zone.transfer_to.iter().map(ToString::to_string).collect();
    assert_eq!(networks, ["192.0.2.0/24", "::1/128", "127.0.0.2/32"]);
    let targets: Vec<SocketAddr> = vec![
        "192.0.2.53:53".parse().unwrap(),
        "[2001:db8::53]:5300".parse().unwrap(),
    ];
    assert_eq!(zone.notify, targets);
    for (client, allowed) in [
        ("192.0.2.200", true),
        ("::ffff:192.0.2.7", true), // a dual-stack socket's IPv4 client
        ("::1", true),
        ("127.0.0.2", true),
        ("127.0.0.1", false),
        ("198.51.100.1", false),
    ] {
        assert_eq!(
            zone.transfer_allowed(client.parse().unwrap()),
            allowed,
            "{client}"
        );
    }
}

#[test]
fn zone_transfer_mistakes_are_reported_at_their_field() {
    let errors = field_errors(&with_zone_keys(
        "transfer_to = [\"192.0.2.1/24\", \"not-a-network\", \"192.0.2.0/24\"]\nnotify = [\"192.0.2.53\"]",
    ));
    assert_eq!(
        errors,
        [
            error(
                "zone[0].transfer_to[0]",
                Problem::HostBitsSet {
                    network: "192.0.2.1/24".parse().unwrap(),
                    truncated: "192.0.2.0/24".parse().unwrap(),
                }
            ),
            error(
                "zone[0].transfer_to[1]",
                Problem::InvalidAddress {
                    value: "not-a-network".into(),
                    expected: AddressKind::Network,
                }
            ),
            error(
                "zone[0].transfer_to[2]",
                Problem::Duplicate {
                    value: "192.0.2.0/24".into(),
                    first: "zone[0].transfer_to[0]".into(),
                }
            ),
            error(
                "zone[0].notify[0]",
                Problem::InvalidAddress {
                    value: "192.0.2.53".into(),
                    expected: AddressKind::SocketAddr,
                }
            ),
        ]
    );
}

/// BASE with a `[[tsig_key]]` appended and `keys` added to its `[[zone]]`.
fn with_tsig_key(key: &str, zone_keys: &str) -> String {
    format!("{}\n[[tsig_key]]\n{key}\n", with_zone_keys(zone_keys))
}

#[test]
fn a_zone_transfer_key_is_resolved_from_its_tsig_key() {
    use super::model::{TsigAlgorithm, TsigKey};
    assert_eq!(parse(BASE).unwrap().zones[0].transfer_key, None);
    let config = parse(&with_tsig_key(
        "name = \"Xfr-Key\"\nalgorithm = \"hmac-sha512\"\nsecret_file = \"keys/xfr.b64\"",
        "transfer_to = [\"192.0.2.0/24\"]\ntransfer_key = \"xfr-key.\"",
    ))
    .unwrap();
    let folder = Path::new(SOURCE).parent().unwrap();
    assert_eq!(
        config.zones[0].transfer_key,
        Some(TsigKey {
            name: name("xfr-key."),
            algorithm: TsigAlgorithm::HmacSha512,
            secret_file: folder.join("keys/xfr.b64"),
        })
    );
}

#[test]
fn tsig_key_mistakes_are_reported_at_their_field() {
    let key = "name = \"xfr-key.\"\nalgorithm = \"hmac-sha256\"\nsecret_file = \"k\"";
    let errors = field_errors(&format!(
        "{}\n[[tsig_key]]\n{key}\n",
        with_tsig_key(key, "transfer_key = \"other-key.\"")
    ));
    assert_eq!(
        errors,
        [
            error(
                "tsig_key[1].name",
                Problem::Duplicate {
                    value: "xfr-key.".into(),
                    first: "tsig_key[0].name".into(),
                }
            ),
            error(
                "zone[0].transfer_key",
                Problem::UnknownVariant {
                    value: "other-key.".into(),
                    expected: strings(&["xfr-key."]),
                }
            ),
        ]
    );
    let errors = field_errors(&with_tsig_key(
        "name = \"k.\"\nalgorithm = \"hmac-md5\"\nsecret_file = \"k\"",
        "",
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "tsig_key[0].algorithm");
    assert!(
        matches!(&errors[0].problem, Problem::UnknownVariant { value, .. } if value == "hmac-md5"),
        "{errors:?}"
    );
}
