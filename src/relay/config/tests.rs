use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use proptest::prelude::*;

use super::{
    model::{BackendKind, HealthChecks, Limits, ModelSource, RetryPolicy, Shedding, Timeouts},
    raw::{RawHealth, RawLimits, RawRetry, RawShedding, RawTimeouts},
    validate::backend_url,
    *,
};
use crate::config::{AddressKind, FieldError, Problem, UrlProblem};

const SOURCE: &str = "/etc/meridian/relay.toml";

/// A valid document the cases below edit by replacing one of its lines.
const BASE: &str = r#"
[relay]
region = "eu-west"
listen = "127.0.0.1:8443"
http3 = true

[relay.tls]
cert = "certs/relay.pem"
key = "certs/relay-key.pem"

[[backend]]
id = "a"
url = "http://127.0.0.1:8001"
kind = "vllm"
models = ["m"]
slots = 4

[[backend]]
id = "b"
url = "http://127.0.0.1:8002"
kind = "sglang"
models = "discover"
slots = 8
"#;

fn parse(text: &str) -> Result<RelayConfig, ConfigError> {
    parse_relay_config(text, Path::new(SOURCE))
}

/// `BASE` with the first occurrence of `from` replaced by `to`; panics if `from` is absent, so
/// a case cannot silently test the unmodified document.
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
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

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn url_error(url: &str, reason: UrlProblem) -> Problem {
    Problem::InvalidUrl {
        url: url.to_owned(),
        reason,
    }
}

fn out_of_range(value: i64, min: i64, max: i64) -> Problem {
    Problem::IntegerOutOfRange { value, min, max }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// The documented defaults of every optional section, as model values.
fn default_sections() -> (Timeouts, RetryPolicy, Shedding, Limits, HealthChecks) {
    (
        Timeouts {
            connect: ms(2000),
            first_byte: ms(60_000),
            idle: ms(30_000),
            total: ms(600_000),
        },
        RetryPolicy {
            max_attempts: 3,
            budget_ratio: 0.2,
            min_retries_per_second: 5,
            max_retry_after: ms(2000),
        },
        Shedding {
            max_saturation: 0.95,
            retry_after: Duration::from_secs(2),
        },
        Limits {
            max_request_body_bytes: 4 * 1024 * 1024,
            max_request_header_bytes: 64 * 1024,
            max_response_header_bytes: 64 * 1024,
            max_connections: 4096,
            max_streams_per_connection: 128,
            header_read_timeout: ms(10_000),
        },
        HealthChecks {
            interval: ms(2000),
            deep_interval: ms(30_000),
            deep_timeout: ms(10_000),
            eject_after_failures: 3,
            base_ejection: ms(5000),
            max_ejection: ms(300_000),
            healthy_after_successes: 2,
        },
    )
}

#[test]
fn shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/relay/relay.toml");
    let config = load_relay_config(&path).unwrap_or_else(|e| panic!("{e}"));
    let folder = path.parent().unwrap();

    assert_eq!(config.source, path);
    assert_eq!(&*config.region, "eu-west");
    assert_eq!(config.listen, addr("127.0.0.1:8443"));
    assert_eq!(config.plain_listen, Some(addr("127.0.0.1:8080")));
    assert_eq!(config.admin_listen, addr("127.0.0.1:9190"));
    assert!(config.http3);
    assert_eq!(config.scrape_interval, ms(1000));
    assert_eq!(config.tls.cert, folder.join("certs/relay.pem"));
    assert_eq!(config.tls.key, folder.join("certs/relay-key.pem"));

    let backends: Vec<_> = config
        .backends
        .iter()
        .map(|b| {
            (
                &*b.id,
                b.base_url.to_string(),
                b.kind,
                b.models.clone(),
                b.slots,
                b.capacity,
                b.drained,
            )
        })
        .collect();
    let demo = || ModelSource::Declared(strings(&["demo-model"]));
    assert_eq!(
        backends,
        [
            (
                "sim-a",
                "http://127.0.0.1:8001/".to_owned(),
                BackendKind::Vllm,
                demo(),
                4,
                4,
                false
            ),
            (
                "sim-b",
                "http://127.0.0.1:8002/".to_owned(),
                BackendKind::Vllm,
                demo(),
                4,
                4,
                false
            ),
        ]
    );
    assert_eq!(
        (
            config.timeouts,
            config.retry,
            config.shedding,
            config.limits,
            config.health
        ),
        default_sections()
    );
}

#[test]
fn documented_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (_, relay) = doc.split_once("## Relay configuration").unwrap();
    let (_, after) = relay.split_once("### Relay example").unwrap();
    let (_, block) = after.split_once("```toml\n").unwrap();
    let (example, _) = block.split_once("```").unwrap();
    let config = parse_relay_config(example, &path).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(config.listen, addr("0.0.0.0:443"));
    assert_eq!(
        config.tls.cert,
        PathBuf::from("/etc/meridian/tls/relay.pem")
    );
    assert_eq!(
        config.admin_token_file.as_deref(),
        Some(Path::new("/etc/meridian/relay-admin.token"))
    );
    let ids: Vec<&str> = config.backends.iter().map(|b| &*b.id).collect();
    assert_eq!(ids, ["vllm-a", "sglang-b", "gateway"]);
    let gateway = &config.backends[2];
    assert_eq!(gateway.kind, BackendKind::Openai);
    assert_eq!(gateway.models, ModelSource::Discover);
    assert_eq!(gateway.base_url.scheme_str(), Some("https"));
    assert_eq!(gateway.base_url.path(), "/openai");
    assert_eq!((gateway.slots, gateway.capacity), (8, 8));
    assert_eq!(config.backends[1].capacity, 24);
    let channel = config.health_channel.as_ref().unwrap();
    assert_eq!(
        channel.cert,
        PathBuf::from("/etc/meridian/pki/relay-eu-west.pem")
    );
    assert_eq!((channel.interval, channel.validity), (ms(1000), ms(3000)));
    let nodes: Vec<&str> = channel.nodes.iter().map(|n| &*n.id).collect();
    assert_eq!(nodes, ["pop-a", "pop-b"]);
    // It spells out every default.
    assert_eq!(
        (
            config.timeouts,
            config.retry,
            config.shedding,
            config.limits,
            config.health
        ),
        default_sections()
    );
}

#[test]
fn defaults_apply() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.source, PathBuf::from(SOURCE));
    assert_eq!(config.plain_listen, None);
    assert_eq!(config.admin_listen, addr("127.0.0.1:9190"));
    assert_eq!(config.scrape_interval, ms(1000));
    assert_eq!(
        config.tls.cert,
        PathBuf::from("/etc/meridian/certs/relay.pem")
    );
    assert_eq!(
        (config.backends[1].slots, config.backends[1].capacity),
        (8, 8)
    );
    assert!(!config.backends[0].drained);
    assert_eq!(
        (
            config.timeouts,
            config.retry,
            config.shedding,
            config.limits,
            config.health
        ),
        default_sections()
    );

    // serde's defaults for an empty section and the `Default` impls are the same functions.
    let raw: raw::RawRelayConfig = crate::config::parse_toml(
        &format!("{BASE}\n[timeouts]\n[retry]\n[shedding]\n[limits]\n[health]\n"),
        Path::new(SOURCE),
    )
    .unwrap();
    assert_eq!(raw.timeouts, RawTimeouts::default());
    assert_eq!(raw.retry, RawRetry::default());
    assert_eq!(raw.shedding, RawShedding::default());
    assert_eq!(raw.limits, RawLimits::default());
    assert_eq!(raw.health, RawHealth::default());
}

#[test]
fn bad_documents_are_located() {
    let kinds = strings(&["vllm", "sglang", "tgi", "llamacpp", "ollama", "openai"]);
    let relay_keys = strings(&[
        "region",
        "listen",
        "plain_listen",
        "admin_listen",
        "admin_token_file",
        "http3",
        "scrape_interval_ms",
        "tls",
        "health_channel",
    ]);
    let top_keys = strings(&[
        "relay", "backend", "timeouts", "retry", "shedding", "limits", "health",
    ]);
    let cases: Vec<(String, FieldError)> = vec![
        // Shape.
        (
            edit("http3 = true", "http3 = true\nhttp2 = true"),
            error(
                "relay.http2",
                Problem::UnknownKey {
                    key: "http2".into(),
                    expected: relay_keys,
                },
            ),
        ),
        (
            format!("{BASE}\n[timeout]\ntotal_ms = 1\n"),
            error(
                "timeout",
                Problem::UnknownKey {
                    key: "timeout".into(),
                    expected: top_keys,
                },
            ),
        ),
        (
            edit("kind = \"vllm\"", "kind = \"vlm\""),
            error(
                "backend[0].kind",
                Problem::UnknownVariant {
                    value: "vlm".into(),
                    expected: kinds,
                },
            ),
        ),
        (
            edit("slots = 4", ""),
            error(
                "backend[0].slots",
                Problem::MissingKey {
                    key: "slots".into(),
                },
            ),
        ),
        (
            edit(
                "[relay.tls]\ncert = \"certs/relay.pem\"\nkey = \"certs/relay-key.pem\"\n",
                "",
            ),
            error("relay.tls", Problem::MissingKey { key: "tls".into() }),
        ),
        // Backends.
        (
            edit("id = \"b\"", "id = \"a\""),
            error(
                "backend[1].id",
                Problem::Duplicate {
                    value: "a".into(),
                    first: "backend[0].id".into(),
                },
            ),
        ),
        (
            edit("id = \"a\"", "id = \"Vllm_A\""),
            error(
                "backend[0].id",
                Problem::InvalidBackendId {
                    id: "Vllm_A".into(),
                },
            ),
        ),
        (
            edit("http://127.0.0.1:8002", "HTTP://127.0.0.1:8001/"),
            error(
                "backend[1].url",
                Problem::Duplicate {
                    value: "HTTP://127.0.0.1:8001/".into(),
                    first: "backend[0].url".into(),
                },
            ),
        ),
        (
            edit("models = [\"m\"]", "models = []"),
            error("backend[0].models", Problem::EmptyList),
        ),
        (
            edit("models = \"discover\"", "models = \"bogus\""),
            error(
                "backend[1].models",
                Problem::UnknownModelSource {
                    value: "bogus".into(),
                },
            ),
        ),
        (
            edit("models = [\"m\"]", "models = [\"m\", \"\"]"),
            error("backend[0].models[1]", Problem::EmptyModelId),
        ),
        (
            edit("models = [\"m\"]", "models = [\"m\", \"n\", \"m\"]"),
            error(
                "backend[0].models[2]",
                Problem::Duplicate {
                    value: "m".into(),
                    first: "backend[0].models[0]".into(),
                },
            ),
        ),
        (
            edit("slots = 4", "slots = 0"),
            error("backend[0].slots", out_of_range(0, 1, u32::MAX.into())),
        ),
        (
            edit("slots = 4", "slots = 4\ncapacity = -1"),
            error("backend[0].capacity", out_of_range(-1, 1, u32::MAX.into())),
        ),
        // URLs.
        (
            edit("http://127.0.0.1:8001", "ftp://127.0.0.1:8001"),
            error(
                "backend[0].url",
                url_error("ftp://127.0.0.1:8001", UrlProblem::Scheme),
            ),
        ),
        (
            edit("http://127.0.0.1:8001", "127.0.0.1:8001"),
            error(
                "backend[0].url",
                url_error("127.0.0.1:8001", UrlProblem::Scheme),
            ),
        ),
        (
            edit("http://127.0.0.1:8001", "http://127.0.0.1:8001?x=1"),
            error(
                "backend[0].url",
                url_error("http://127.0.0.1:8001?x=1", UrlProblem::Query),
            ),
        ),
        (
            edit("http://127.0.0.1:8001", "http://127.0.0.1:8001/v1?"),
            error(
                "backend[0].url",
                url_error("http://127.0.0.1:8001/v1?", UrlProblem::Query),
            ),
        ),
        (
            edit("http://127.0.0.1:8001", "http://127.0.0.1:8001/#top"),
            error(
                "backend[0].url",
                url_error("http://127.0.0.1:8001/#top", UrlProblem::Fragment),
            ),
        ),
        (
            edit("http://127.0.0.1:8001", "http://llm.internal"),
            error(
                "backend[0].url",
                url_error("http://llm.internal", UrlProblem::NoPort),
            ),
        ),
        (
            edit("http://127.0.0.1:8001", "http://u:p@127.0.0.1:8001"),
            error(
                "backend[0].url",
                url_error("http://u:p@127.0.0.1:8001", UrlProblem::UserInfo),
            ),
        ),
        (
            edit("http://127.0.0.1:8001", "http://"),
            error(
                "backend[0].url",
                url_error("http://", UrlProblem::Unparsable),
            ),
        ),
        (
            edit("http://127.0.0.1:8001", ""),
            error("backend[0].url", url_error("", UrlProblem::Unparsable)),
        ),
        // Listeners.
        (
            edit("http3", "plain_listen = \"127.0.0.1:8443\"\nhttp3"),
            error(
                "relay.plain_listen",
                Problem::ListenerClash {
                    address: addr("127.0.0.1:8443"),
                    other: "relay.listen".into(),
                },
            ),
        ),
        (
            edit(
                "http3",
                "admin_listen = \"0.0.0.0:8443\"\nadmin_token_file = \"t\"\nhttp3",
            ),
            error(
                "relay.admin_listen",
                Problem::ListenerClash {
                    address: addr("0.0.0.0:8443"),
                    other: "relay.listen".into(),
                },
            ),
        ),
        (
            edit(
                "http3",
                "plain_listen = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:8080\"\nhttp3",
            ),
            error(
                "relay.admin_listen",
                Problem::ListenerClash {
                    address: addr("127.0.0.1:8080"),
                    other: "relay.plain_listen".into(),
                },
            ),
        ),
        (
            edit("127.0.0.1:8443", "localhost:8443"),
            error(
                "relay.listen",
                Problem::InvalidAddress {
                    value: "localhost:8443".into(),
                    expected: AddressKind::SocketAddr,
                },
            ),
        ),
        (
            edit("eu-west", "EU_West"),
            error(
                "relay.region",
                Problem::InvalidRegionId {
                    id: "EU_West".into(),
                },
            ),
        ),
        (
            edit("certs/relay-key.pem", ""),
            error("relay.tls.key", Problem::EmptyPath),
        ),
        // Orderings.
        (
            format!("{BASE}\n[timeouts]\nfirst_byte_ms = 700000\n"),
            error(
                "timeouts.first_byte_ms",
                Problem::ExceedsField {
                    value: 700_000,
                    other: "timeouts.total_ms".into(),
                    other_value: 600_000,
                },
            ),
        ),
        (
            format!("{BASE}\n[timeouts]\ntotal_ms = 45000\n"),
            error(
                "timeouts.first_byte_ms",
                Problem::ExceedsField {
                    value: 60_000,
                    other: "timeouts.total_ms".into(),
                    other_value: 45_000,
                },
            ),
        ),
        (
            format!("{BASE}\n[timeouts]\nidle_ms = 600001\n"),
            error(
                "timeouts.idle_ms",
                Problem::ExceedsField {
                    value: 600_001,
                    other: "timeouts.total_ms".into(),
                    other_value: 600_000,
                },
            ),
        ),
        (
            format!("{BASE}\n[health]\nmax_ejection_ms = 1000\n"),
            error(
                "health.base_ejection_ms",
                Problem::ExceedsField {
                    value: 5000,
                    other: "health.max_ejection_ms".into(),
                    other_value: 1000,
                },
            ),
        ),
        // Ranges.
        (
            edit("http3 = true", "scrape_interval_ms = 99"),
            error("relay.scrape_interval_ms", out_of_range(99, 100, 60_000)),
        ),
        (
            edit("http3 = true", "scrape_interval_ms = 60001"),
            error(
                "relay.scrape_interval_ms",
                out_of_range(60_001, 100, 60_000),
            ),
        ),
        (
            format!("{BASE}\n[timeouts]\nconnect_ms = 0\n"),
            error("timeouts.connect_ms", out_of_range(0, 1, i64::MAX)),
        ),
        (
            format!("{BASE}\n[retry]\nmax_attempts = 11\n"),
            error("retry.max_attempts", out_of_range(11, 1, 10)),
        ),
        (
            format!("{BASE}\n[retry]\nmax_attempts = 0\n"),
            error("retry.max_attempts", out_of_range(0, 1, 10)),
        ),
        (
            format!("{BASE}\n[retry]\nbudget_ratio = 1.5\n"),
            error(
                "retry.budget_ratio",
                Problem::NumberOutOfRange {
                    value: 1.5,
                    min: 0.0,
                    min_exclusive: false,
                    max: Some(1.0),
                },
            ),
        ),
        (
            format!("{BASE}\n[retry]\nmin_retries_per_second = -1\n"),
            error(
                "retry.min_retries_per_second",
                out_of_range(-1, 0, u32::MAX.into()),
            ),
        ),
        (
            format!("{BASE}\n[shedding]\nmax_saturation = 0\n"),
            error(
                "shedding.max_saturation",
                Problem::NumberOutOfRange {
                    value: 0.0,
                    min: 0.0,
                    min_exclusive: true,
                    max: Some(1.0),
                },
            ),
        ),
        (
            // Removed: the relay keeps no queue of its own, `max_saturation` bounds admission.
            format!("{BASE}\n[shedding]\nmax_queue_per_slot = 2.0\n"),
            error(
                "shedding.max_queue_per_slot",
                Problem::UnknownKey {
                    key: "max_queue_per_slot".into(),
                    expected: vec!["max_saturation".into(), "retry_after_s".into()],
                },
            ),
        ),
        (
            format!("{BASE}\n[shedding]\nretry_after_s = 3601\n"),
            error("shedding.retry_after_s", out_of_range(3601, 1, 3600)),
        ),
        (
            format!("{BASE}\n[limits]\nmax_request_header_bytes = 4096\n"),
            error(
                "limits.max_request_header_bytes",
                out_of_range(4096, 8192, 16 * 1024 * 1024),
            ),
        ),
        (
            format!("{BASE}\n[limits]\nmax_streams_per_connection = 0\n"),
            error(
                "limits.max_streams_per_connection",
                out_of_range(0, 1, u32::MAX.into()),
            ),
        ),
        (
            format!("{BASE}\n[health]\neject_after_failures = 0\n"),
            error(
                "health.eject_after_failures",
                out_of_range(0, 1, u32::MAX.into()),
            ),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(field_errors(&text), [expected], "{text}");
    }
}

/// A valid `[relay.health_channel]`, appended to `BASE` by the cases below.
const CHANNEL: &str = r#"
[relay.health_channel]
ca = "pki/ca.pem"
cert = "pki/relay-eu-west.pem"
key = "/etc/meridian/pki/relay-eu-west-key.pem"

[[relay.health_channel.node]]
id = "pop-a"
address = "192.0.2.53:8853"
server_name = "pop-a.dns.example"

[[relay.health_channel.node]]
id = "pop-b"
address = "[2001:db8::53]:8853"
server_name = "2001:db8::53"
"#;

fn with_channel(from: &str, to: &str) -> String {
    assert!(CHANNEL.contains(from), "CHANNEL has no {from:?}");
    format!("{BASE}{}", CHANNEL.replacen(from, to, 1))
}

#[test]
fn health_channel_is_optional_and_parsed() {
    assert_eq!(parse(BASE).unwrap().health_channel, None);
    let config = parse(&format!("{BASE}{CHANNEL}")).unwrap();
    let channel = config.health_channel.unwrap();
    assert_eq!(channel.ca, PathBuf::from("/etc/meridian/pki/ca.pem"));
    assert_eq!(
        channel.cert,
        PathBuf::from("/etc/meridian/pki/relay-eu-west.pem")
    );
    assert_eq!(
        channel.key,
        PathBuf::from("/etc/meridian/pki/relay-eu-west-key.pem")
    );
    assert_eq!((channel.interval, channel.validity), (ms(1000), ms(3000)));
    let nodes: Vec<_> = channel
        .nodes
        .iter()
        .map(|n| (&*n.id, n.address, n.server_name.as_str()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("pop-a", addr("192.0.2.53:8853"), "pop-a.dns.example"),
            ("pop-b", addr("[2001:db8::53]:8853"), "2001:db8::53"),
        ]
    );
    let tuned = with_channel("key =", "interval_ms = 250\nvalidity_ms = 250\nkey =");
    let channel = parse(&tuned).unwrap().health_channel.unwrap();
    assert_eq!((channel.interval, channel.validity), (ms(250), ms(250)));
}

#[test]
fn bad_health_channels_are_located() {
    let node_keys = strings(&["id", "address", "server_name"]);
    let cases: Vec<(String, FieldError)> = vec![
        (
            with_channel("id = \"pop-a\"", "id = \"pop-a\"\nport = 1"),
            error(
                "relay.health_channel.node[0].port",
                Problem::UnknownKey {
                    key: "port".into(),
                    expected: node_keys,
                },
            ),
        ),
        (
            with_channel("ca = \"pki/ca.pem\"\n", ""),
            error(
                "relay.health_channel.ca",
                Problem::MissingKey { key: "ca".into() },
            ),
        ),
        (
            with_channel("ca = \"pki/ca.pem\"", "ca = \"\""),
            error("relay.health_channel.ca", Problem::EmptyPath),
        ),
        (
            with_channel("key =", "interval_ms = 50\nkey ="),
            error(
                "relay.health_channel.interval_ms",
                out_of_range(50, 100, 60_000),
            ),
        ),
        (
            with_channel("key =", "validity_ms = 700000\nkey ="),
            error(
                "relay.health_channel.validity_ms",
                out_of_range(700_000, 100, 600_000),
            ),
        ),
        (
            with_channel("key =", "interval_ms = 4000\nkey ="),
            error(
                "relay.health_channel.interval_ms",
                Problem::ExceedsField {
                    value: 4000,
                    other: "relay.health_channel.validity_ms".into(),
                    other_value: 3000,
                },
            ),
        ),
        (
            format!(
                "{BASE}{}",
                CHANNEL
                    .split("[[relay.health_channel.node]]")
                    .next()
                    .unwrap()
            ),
            error("relay.health_channel.node", Problem::EmptyList),
        ),
        (
            with_channel("id = \"pop-b\"", "id = \"pop-a\""),
            error(
                "relay.health_channel.node[1].id",
                Problem::Duplicate {
                    value: "pop-a".into(),
                    first: "relay.health_channel.node[0].id".into(),
                },
            ),
        ),
        (
            with_channel("id = \"pop-a\"", "id = \"Pop A\""),
            error(
                "relay.health_channel.node[0].id",
                Problem::InvalidName {
                    name: "Pop A".into(),
                    reason: "a DNS node id is 1 to 63 characters from a-z, 0-9 and -".into(),
                },
            ),
        ),
        (
            with_channel("192.0.2.53:8853", "pop-a.dns.example:8853"),
            error(
                "relay.health_channel.node[0].address",
                Problem::InvalidAddress {
                    value: "pop-a.dns.example:8853".into(),
                    expected: AddressKind::SocketAddr,
                },
            ),
        ),
        (
            with_channel("192.0.2.53:8853", "192.0.2.53:0"),
            error(
                "relay.health_channel.node[0].address",
                out_of_range(0, 1, 65535),
            ),
        ),
        (
            with_channel("[2001:db8::53]:8853", "192.0.2.53:8853"),
            error(
                "relay.health_channel.node[1].address",
                Problem::Duplicate {
                    value: "192.0.2.53:8853".into(),
                    first: "relay.health_channel.node[0].address".into(),
                },
            ),
        ),
        (
            with_channel("\"pop-a.dns.example\"", "\"not a name\""),
            error(
                "relay.health_channel.node[0].server_name",
                Problem::InvalidName {
                    name: "not a name".into(),
                    reason: "a certificate is checked against a DNS name or an IP address".into(),
                },
            ),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(field_errors(&text), [expected], "{text}");
    }
}

#[test]
fn document_wide_rules() {
    let no_backends = BASE.split("[[backend]]").next().unwrap();
    assert_eq!(
        field_errors(no_backends),
        [error("backend", Problem::NoBackends)]
    );
    assert_eq!(
        field_errors(&BASE[BASE.find("[[backend]]").unwrap()..]),
        [error(
            "relay",
            Problem::MissingKey {
                key: "relay".into()
            }
        )]
    );

    // Port 0 picks a free port, so it never clashes: tests bind every listener on port 0.
    let all_port_zero = edit("127.0.0.1:8443", "127.0.0.1:0").replace(
        "http3 = true",
        "plain_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
    );
    let config = parse(&all_port_zero).unwrap();
    assert_eq!(config.admin_listen, addr("127.0.0.1:0"));
    // Same port on different addresses is fine.
    assert!(parse(&edit("http3", "plain_listen = \"127.0.0.2:8443\"\nhttp3")).is_ok());
}

#[test]
fn shape_errors_keep_serde_words_and_position() {
    let errors = field_errors(&edit("models = [\"m\"]", "models = 5"));
    let [FieldError { field, problem }] = errors.as_slice() else {
        panic!("{errors:?}");
    };
    assert_eq!(field, "backend[0].models");
    let Problem::Schema { message } = problem else {
        panic!("{problem:?}");
    };
    assert!(
        message.contains("expected a list of model ids or \"discover\""),
        "{message}"
    );

    match parse(&edit("slots = 4", "slots = ")) {
        Err(ConfigError::Syntax { line, column, .. }) => assert_eq!((line, column), (16, 9)),
        other => panic!("expected a syntax error, got {other:?}"),
    }

    let errors = field_errors(&format!("{BASE}\n[shedding]\nmax_saturation = nan\n"));
    assert!(
        matches!(
            errors.as_slice(),
            [FieldError { field, problem: Problem::NumberOutOfRange { value, .. } }]
                if field == "shedding.max_saturation" && value.is_nan()
        ),
        "{errors:?}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[relay]
region = "eu_west"
listen = "127.0.0.1:8443"
admin_listen = "127.0.0.1:8443"
scrape_interval_ms = 0

[relay.tls]
cert = ""
key = "k.pem"

[[backend]]
id = "a"
url = "http://10.0.0.1:8000?x"
kind = "tgi"
models = []
slots = 0

[[backend]]
id = "a"
url = "https://10.0.0.2:8000/v1/"
kind = "ollama"
models = "bogus"
slots = 1

[timeouts]
idle_ms = 0
total_ms = 1000

[health]
base_ejection_ms = 600000
"#;
    assert_eq!(
        field_errors(text),
        [
            error(
                "relay.region",
                Problem::InvalidRegionId {
                    id: "eu_west".into()
                }
            ),
            error(
                "relay.admin_listen",
                Problem::ListenerClash {
                    address: addr("127.0.0.1:8443"),
                    other: "relay.listen".into()
                }
            ),
            error("relay.tls.cert", Problem::EmptyPath),
            error("relay.scrape_interval_ms", out_of_range(0, 100, 60_000)),
            error(
                "backend[0].url",
                url_error("http://10.0.0.1:8000?x", UrlProblem::Query)
            ),
            error("backend[0].models", Problem::EmptyList),
            error("backend[0].slots", out_of_range(0, 1, u32::MAX.into())),
            error(
                "backend[1].id",
                Problem::Duplicate {
                    value: "a".into(),
                    first: "backend[0].id".into()
                }
            ),
            error(
                "backend[1].models",
                Problem::UnknownModelSource {
                    value: "bogus".into()
                }
            ),
            error("timeouts.idle_ms", out_of_range(0, 1, i64::MAX)),
            error(
                "timeouts.first_byte_ms",
                Problem::ExceedsField {
                    value: 60_000,
                    other: "timeouts.total_ms".into(),
                    other_value: 1000
                }
            ),
            error(
                "health.base_ejection_ms",
                Problem::ExceedsField {
                    value: 600_000,
                    other: "health.max_ejection_ms".into(),
                    other_value: 300_000
                }
            ),
        ]
    );
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token_file() {
    // Loopback (either family) needs no token; the default is loopback.
    for listen in ["127.0.0.1:9190", "[::1]:9190", "127.0.0.2:9190"] {
        let config = parse(&edit(
            "http3",
            &format!("admin_listen = \"{listen}\"\nhttp3"),
        ))
        .unwrap();
        assert_eq!(config.admin_token_file, None, "{listen}");
    }
    assert_eq!(parse(BASE).unwrap().admin_token_file, None);

    for listen in ["0.0.0.0:9190", "[::]:9190", "10.0.0.7:9190"] {
        let text = edit("http3", &format!("admin_listen = \"{listen}\"\nhttp3"));
        assert_eq!(
            field_errors(&text),
            [error(
                "relay.admin_listen",
                Problem::AdminExposedWithoutToken {
                    address: addr(listen),
                    token_key: "relay.admin_token_file".into(),
                },
            )],
            "{listen}"
        );
        let with_token = edit(
            "http3",
            &format!(
                "admin_listen = \"{listen}\"\nadmin_token_file = \"relay-admin.token\"\nhttp3"
            ),
        );
        let config = parse(&with_token).unwrap();
        // Relative to the config file's folder, like every other path.
        assert_eq!(
            config.admin_token_file,
            Some(PathBuf::from("/etc/meridian/relay-admin.token"))
        );
    }

    // An unparsable address is reported once, as such, not also as exposed.
    let text = edit("http3", "admin_listen = \"nowhere\"\nhttp3");
    assert_eq!(
        field_errors(&text),
        [error(
            "relay.admin_listen",
            Problem::InvalidAddress {
                value: "nowhere".into(),
                expected: AddressKind::SocketAddr,
            },
        )]
    );
    assert_eq!(
        field_errors(&edit("http3", "admin_token_file = \"\"\nhttp3")),
        [error("relay.admin_token_file", Problem::EmptyPath)]
    );
}

#[test]
fn messages_read_as_documented() {
    let text = edit("id = \"b\"", "id = \"a\"")
        .replace("http://127.0.0.1:8002", "http://127.0.0.1:8002?x=1")
        + "\n[timeouts]\nfirst_byte_ms = 900000\n";
    let message = parse(&text).unwrap_err().to_string();
    let shown = message.replace(SOURCE, "deploy/relay/relay.toml");
    let expected = "\
deploy/relay/relay.toml: backend[1].id: `a` appears twice (first at backend[0].id)
deploy/relay/relay.toml: backend[1].url: `http://127.0.0.1:8002?x=1` is not a usable backend URL: it must not have a query (?...)
deploy/relay/relay.toml: timeouts.first_byte_ms: 900000 exceeds `timeouts.total_ms` (600000)";
    assert_eq!(shown, expected);

    for (problem, text) in [
        (
            Problem::NumberOutOfRange {
                value: 0.0,
                min: 0.0,
                min_exclusive: true,
                max: Some(1.0),
            },
            "0 is out of range: must be greater than 0 and at most 1",
        ),
        (
            Problem::NumberOutOfRange {
                value: -1.0,
                min: 0.0,
                min_exclusive: false,
                max: None,
            },
            "-1 is out of range: must be a finite number of at least 0",
        ),
        (
            Problem::ListenerClash {
                address: addr("127.0.0.1:9190"),
                other: "relay.listen".into(),
            },
            "127.0.0.1:9190 is also used by `relay.listen`",
        ),
        (
            Problem::AdminExposedWithoutToken {
                address: addr("0.0.0.0:9190"),
                token_key: "relay.admin_token_file".into(),
            },
            "0.0.0.0:9190 is not a loopback address, so the admin listener needs \
             `relay.admin_token_file`: without a token anyone who reaches it can drain the relay",
        ),
        (
            Problem::UnknownModelSource {
                value: "bogus".into(),
            },
            "`bogus` is not a model list: write a list of model ids or \"discover\"",
        ),
    ] {
        assert_eq!(problem.to_string(), text);
    }
}

#[test]
fn config_kinds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
    let cases = [
        (read("zones/meridian.toml"), ConfigKind::Dns),
        (read("deploy/relay/relay.toml"), ConfigKind::Relay),
        (BASE.to_owned(), ConfigKind::Relay),
        (
            "relay = { region = \"eu-west\" }".to_owned(),
            ConfigKind::Relay,
        ),
        ("[relay.tls]\ncert = \"c\"".to_owned(), ConfigKind::Relay),
        ("relay = \"eu-west\"".to_owned(), ConfigKind::Dns),
        ("[server.relay]\n".to_owned(), ConfigKind::Dns),
        ("".to_owned(), ConfigKind::Dns),
        ("[relay\n".to_owned(), ConfigKind::Dns),
    ];
    for (text, kind) in cases {
        assert_eq!(config_kind(&text), kind, "{text}");
    }
}

#[test]
fn backend_urls_are_normalised() {
    for (text, expected) in [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/"),
        ("HTTPS://LLM.Example:443/v1//", "https://llm.example:443/v1"),
        ("http://[::1]:8000/prefix/", "http://[::1]:8000/prefix"),
    ] {
        let url = backend_url(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(url.to_string(), expected, "{text}");
    }
}

proptest! {
    /// Normalising is idempotent, so a URL and its normalised form are the same backend (the
    /// duplicate check compares normalised URLs).
    #[test]
    fn url_normalisation_is_idempotent(
        https in any::<bool>(),
        host in "[a-zA-Z][a-zA-Z0-9-]{0,10}(\\.[a-zA-Z0-9-]{1,8}){0,2}",
        port in 1_u16..,
        path in "(/[a-zA-Z0-9._-]{0,6}){0,3}/?",
    ) {
        let scheme = if https { "https" } else { "http" };
        let first = backend_url(&format!("{scheme}://{host}:{port}{path}")).unwrap();
        let again = backend_url(&first.to_string()).unwrap();
        prop_assert_eq!(&again, &first);
        prop_assert!(first.path() == "/" || !first.path().ends_with('/'));
        prop_assert_eq!(first.port_u16(), Some(port));
    }

    /// A value inside a key's documented range parses; one outside it is the only error.
    #[test]
    fn integer_ranges_are_exact(
        (section, key, min, max, value) in prop_oneof![
            (Just(("retry", "max_attempts", 1_i64, 10_i64)), -5_i64..20),
            (Just(("shedding", "retry_after_s", 1, 3600)), -10_i64..4000),
            (Just(("limits", "max_request_header_bytes", 8192, 16 << 20)), 0_i64..(17 << 20)),
            (Just(("health", "healthy_after_successes", 1, i64::from(u32::MAX))),
                prop_oneof![-3_i64..3, (u32::MAX as i64 - 3)..(u32::MAX as i64 + 3)]),
        ].prop_map(|((section, key, min, max), value)| (section, key, min, max, value)),
    ) {
        let text = format!("{BASE}\n[{section}]\n{key} = {value}\n");
        let result = parse(&text);
        if (min..=max).contains(&value) {
            prop_assert!(result.is_ok(), "{:?}", result.err());
        } else {
            prop_assert_eq!(
                field_errors(&text),
                vec![error(&format!("{section}.{key}"), out_of_range(value, min, max))]
            );
        }
    }
}
