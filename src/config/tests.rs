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
            "failover.example.test."
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
                    expected: strings(&["geo", "nearest", "weighted", "failover"]),
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
