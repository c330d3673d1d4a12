//! The bodies of Meridian's fuzz targets, one public function per target.
//!
//! Each function takes the fuzzer's bytes, drives one untrusted-input surface of the real code
//! (no copies of its logic), and panics — which libFuzzer reports as a crash — when the code
//! panics or when a property that must hold for every input does not. The binaries in
//! `fuzz_targets/` are one-line wrappers, so the same bodies can be replayed anywhere.
//!
//! | target          | surface                                                             |
//! |-----------------|---------------------------------------------------------------------|
//! | `dns_respond`   | a UDP/TCP packet → `dns::handler::respond` on the bundled snapshot, |
//! |                 | then RRL classification and slip of the response                    |
//! | `dns_ecs`       | an EDNS Client Subnet option → `dns::wire` and the whole handler    |
//! | `health_frame`  | bytes from a relay's QUIC stream → `health::frame::decode`          |
//! | `dns_config`    | TOML text → `config::parse_dns_config` (parse and validate)         |
//! | `relay_config`  | TOML text → `relay::config::parse_relay_config`                     |
//! | `relay_request` | an HTTP request (method, path, headers, body) → the relay's proxy   |
//! |                 | service, as a front hands it over after hyper parsed it             |

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::rdata::opt::{EdnsCode, EdnsOption},
};
use meridian::{
    config,
    dns::{
        handler::{self, Transport},
        rrl, wire,
    },
    health::frame,
    relay::{
        self,
        config::model::RelayConfig,
        metrics::RelayMetrics,
        pool::Pool,
        proxy::{Proxy, ProxyService},
        service::{ConnInfo, FrontProtocol, RelayService, full_body},
        stats::RequestStats,
    },
    snapshot::Snapshot,
};

/// The repository root (the fuzz crate lives in `fuzz/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The bundled example configuration, loaded once: the zones, GSLB names, overrides and GeoIP
/// database a real deployment starts from.
fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        Snapshot::load(&repo().join("zones/meridian.toml"), 1)
            .unwrap_or_else(|error| panic!("the bundled config must load: {error}"))
    })
}

/// A fixed `now`, so a crash replays exactly.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

const PEER_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(81, 2, 69, 160)), 53_000);
const PEER_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    53_001,
);
/// The RFC 1035 limit for a client without EDNS, below which the handler never truncates.
const CLASSIC_UDP_LIMIT: usize = 512;

/// `dns_respond`: any packet, over UDP and over TCP. Never a panic; a response is sent unless
/// the packet is not a query (shorter than a header, or QR set); every response parses, is a
/// response, carries the query's ID, fits the transport and says TC when it was truncated;
/// and the RRL code reads it and slips it into a response that parses too.
pub fn dns_respond(packet: &[u8]) {
    let snapshot = snapshot();
    for (transport, peer) in [(Transport::Udp, PEER_V4), (Transport::Tcp, PEER_V6)] {
        let mut out = Vec::new();
        let summary =
            handler::respond(snapshot, packet, peer, transport, 0x5eed, epoch(), &mut out);
        let must_drop = packet.len() < 12 || packet[2] & 0x80 != 0;
        let Some(summary) = summary else {
            assert!(must_drop, "a query was dropped without a response");
            continue;
        };
        assert!(!must_drop, "a non-query was answered");
        let response = check_response(packet, &out, transport);
        // Compared as numbers: 16 reads back as BADSIG, which shares its code with BADVERS.
        assert_eq!(
            u16::from(response.metadata.response_code),
            u16::from(summary.rcode)
        );
        assert_eq!(response.metadata.truncation, summary.truncated);
        check_rrl(&out);
    }
}

/// Properties of every response the handler sends; returns it parsed.
fn check_response(query: &[u8], out: &[u8], transport: Transport) -> Message {
    assert!(!out.is_empty(), "an empty response would be sent");
    let response = Message::from_vec(out)
        .unwrap_or_else(|error| panic!("response does not parse: {error}\n{out:02x?}"));
    assert_eq!(response.metadata.message_type, MessageType::Response);
    assert_eq!(
        response.metadata.id,
        u16::from_be_bytes([query[0], query[1]]),
        "response ID differs from the query's"
    );
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        // The most any UDP response may be: the larger of 512 and our configured payload.
        Transport::Udp => {
            usize::from(snapshot().config.limits.max_udp_payload).max(CLASSIC_UDP_LIMIT)
        }
    };
    assert!(
        out.len() <= limit,
        "{} response of {} bytes exceeds {limit}",
        transport.as_str(),
        out.len()
    );
    if transport == Transport::Udp && query_edns_payload(query).is_none() {
        assert!(
            out.len() <= CLASSIC_UDP_LIMIT,
            "non-EDNS UDP response over 512 bytes"
        );
    }
    response
}

/// The UDP payload size of the query's OPT record, if hickory can read one.
fn query_edns_payload(query: &[u8]) -> Option<u16> {
    Message::from_vec(query)
        .ok()?
        .edns
        .map(|edns| edns.max_payload())
}

/// RRL reads every response and slips it into a minimal TC=1 response with the same ID.
fn check_rrl(out: &[u8]) {
    let _ = rrl::classify(out);
    let mut slipped = out.to_vec();
    assert!(
        rrl::truncate_for_slip(&mut slipped),
        "a response cannot be slipped"
    );
    let message = Message::from_vec(&slipped)
        .unwrap_or_else(|error| panic!("slipped response does not parse: {error}"));
    assert!(message.metadata.truncation);
    assert_eq!(&slipped[..2], &out[..2]);
    assert!(message.answers.is_empty() && message.authorities.is_empty());
    assert!(slipped.len() <= out.len());
}

/// `dns_ecs`: the bytes are the data of an EDNS Client Subnet option. Parsing it agrees with
/// RFC 7871 §6 (or is refused), encoding round-trips, and a query carrying it gets FORMERR when
/// it is refused, or an answer whose echoed option is the query's with a scope no wider than
/// its source prefix.
pub fn dns_ecs(data: &[u8]) {
    // An option is at most a few dozen bytes; longer inputs only slow the search down.
    if data.len() > 512 {
        return;
    }
    let parsed = wire::parse_client_subnet(data);
    if let Ok(subnet) = parsed {
        let max = if subnet.address.is_ipv4() { 32 } else { 128 };
        assert!(subnet.source_prefix <= max);
        assert_eq!(
            wire::encode_client_subnet(&subnet, 0),
            data,
            "ECS does not round-trip"
        );
        // Host bits past the source prefix are zero.
        let bits = match subnet.address {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
            IpAddr::V6(v6) => u128::from(v6),
        };
        assert_eq!(
            bits.checked_shl(u32::from(subnet.source_prefix))
                .unwrap_or(0),
            0,
            "host bits set past the source prefix"
        );
    }

    // The option inside a real query to the geo-steered GSLB name.
    let query = query_with_option(b"\x03api\x07example\x04test\x00", 1, 8, data);
    let snapshot = snapshot();
    let mut out = Vec::new();
    let summary = handler::respond(
        snapshot,
        &query,
        PEER_V4,
        Transport::Udp,
        7,
        epoch(),
        &mut out,
    )
    .expect("a well-formed query is answered");
    let response = check_response(&query, &out, Transport::Udp);
    match parsed {
        Err(_) => assert_eq!(summary.rcode, ResponseCode::FormErr, "bad ECS not refused"),
        Ok(subnet) => {
            assert_ne!(summary.rcode, ResponseCode::FormErr, "valid ECS refused");
            let echoed = response.edns.as_ref().and_then(|edns| {
                edns.options()
                    .as_ref()
                    .iter()
                    .find_map(|(code, option)| match (code, option) {
                        (EdnsCode::Subnet, EdnsOption::Subnet(s)) => Some(*s),
                        _ => None,
                    })
            });
            let echoed = echoed.expect("the ECS option is echoed");
            assert_eq!(echoed.addr(), subnet.address);
            assert_eq!(echoed.source_prefix(), subnet.source_prefix);
            assert!(
                echoed.scope_prefix() <= subnet.source_prefix,
                "scope /{} wider than source /{}",
                echoed.scope_prefix(),
                subnet.source_prefix
            );
        }
    }
}

/// A query for `qname` (wire format) / `qtype` with an OPT record holding one option.
fn query_with_option(qname: &[u8], qtype: u16, code: u16, data: &[u8]) -> Vec<u8> {
    let option_len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    let data = &data[..usize::from(option_len)];
    let mut packet = vec![0xec, 0x5e, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    packet.extend_from_slice(qname);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet.push(0); // root owner
    packet.extend_from_slice(&41u16.to_be_bytes());
    packet.extend_from_slice(&1232u16.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0]);
    let rdlength = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
    packet.extend_from_slice(&rdlength.to_be_bytes());
    packet.extend_from_slice(&code.to_be_bytes());
    packet.extend_from_slice(&option_len.to_be_bytes());
    packet.extend_from_slice(data);
    packet
}

/// `health_frame`: bytes as they arrive on a relay's report stream. A decoded frame used
/// exactly the bytes its header announced and re-encodes to a frame that decodes the same; any
/// shorter prefix of it is `Incomplete`; `Incomplete` never asks for more than one maximal
/// frame; every error formats.
pub fn health_frame(data: &[u8]) {
    match frame::decode(data) {
        Ok((decoded, used)) => {
            assert!(used >= frame::HEADER_LEN && used <= data.len());
            let announced = u32::from_be_bytes([data[6], data[7], data[8], data[9]]) as usize;
            assert_eq!(used, frame::HEADER_LEN + announced);
            for cut in [0, 1, frame::HEADER_LEN - 1, frame::HEADER_LEN, used - 1] {
                if cut < used {
                    assert!(
                        matches!(
                            frame::decode(&data[..cut]),
                            Err(frame::FrameError::Incomplete { .. })
                        ),
                        "prefix of {cut} bytes of a good frame is not Incomplete"
                    );
                }
            }
            // The relay encodes what the DNS node decoded: the two ends agree.
            if let Ok(encoded) = frame::encode(&decoded) {
                let (again, _) = frame::decode(&encoded).expect("a re-encoded frame decodes");
                assert_eq!(again, decoded, "frame does not round-trip");
            }
        }
        Err(error) => {
            if let frame::FrameError::Incomplete { needed } = error {
                assert!(needed > 0);
                assert!(data.len() + needed <= frame::HEADER_LEN + frame::MAX_FRAME_BYTES);
            }
            let _ = error.to_string();
        }
    }
}

/// Where fuzzed configs claim to come from: relative paths resolve under it, nothing is read.
fn config_source() -> &'static Path {
    Path::new("/nonexistent/meridian-fuzz/config.toml")
}

/// `dns_config`: any UTF-8 text through the DNS config parser and validator, and what it says
/// about a file it refuses (line and column are computed from byte offsets).
pub fn dns_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = relay::config::config_kind(text);
    match config::parse_dns_config(text, config_source()) {
        Ok(_) => {}
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

/// `relay_config`: any UTF-8 text through the relay config parser and validator.
pub fn relay_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = relay::config::parse_relay_config(text, config_source()) {
        let _ = error.to_string();
    }
}

/// The relay under test: the real proxy over a pool with one backend whose port refuses
/// connections (bound, then closed), so forwarded requests end in the retry and error path
/// quickly and without leaving loopback.
struct RelayUnderTest {
    runtime: tokio::runtime::Runtime,
    service: ProxyService,
}

fn relay() -> &'static RelayUnderTest {
    static RELAY: OnceLock<RelayUnderTest> = OnceLock::new();
    RELAY.get_or_init(|| {
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("loopback bind");
        let text = format!(
            r#"
            [relay]
            region = "fuzz"
            listen = "127.0.0.1:0"
            admin_listen = "127.0.0.1:0"
            [relay.tls]
            cert = "cert.pem"
            key = "key.pem"
            [limits]
            max_request_body_bytes = 65536
            [[backend]]
            id = "b1"
            url = "http://{refused}"
            kind = "vllm"
            models = ["m", "llama-3.1-8b-instruct"]
            slots = 4
            "#
        );
        let config: RelayConfig = relay::config::parse_relay_config(&text, config_source())
            .unwrap_or_else(|error| panic!("the fuzz relay config must load: {error}"));
        let config = Arc::new(config);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let service = runtime.block_on(async {
            relay::tls::install_crypto_provider();
            let pool = Arc::new(Pool::new(&config));
            let proxy = Proxy::new(
                config,
                pool,
                Arc::new(RelayMetrics::new()),
                Arc::new(RequestStats::default()),
            );
            ProxyService(Arc::new(proxy))
        });
        RelayUnderTest { runtime, service }
    })
}

/// `relay_request`: the input is a request in HTTP/1-like text — `METHOD PATH`, header lines
/// `name: value`, an empty line, the body — made into the `http::Request` a front would hand
/// over (inputs `http` itself refuses are skipped: hyper never produces them). The proxy must
/// answer every request without panicking, within its timeouts, with a valid status, and
/// every error as OpenAI-style JSON.
pub fn relay_request(data: &[u8]) {
    let Some(request) = request_from(data) else {
        return;
    };
    let relay = relay();
    let conn = ConnInfo {
        peer: PEER_V4,
        protocol: FrontProtocol::Http1,
        secure: true,
        rtt: Some(Duration::from_millis(20)),
    };
    let (status, content_type, body) = relay.runtime.block_on(async {
        let response =
            tokio::time::timeout(Duration::from_secs(10), relay.service.call(request, conn))
                .await
                .expect("the proxy answers within its timeouts");
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = tokio::time::timeout(
            Duration::from_secs(10),
            http_body_util::BodyExt::collect(response.into_body()),
        )
        .await
        .expect("the body ends")
        .map(|collected| collected.to_bytes());
        (status, content_type, body)
    });
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{status}"
        );
        let body = body.expect("an error body is complete");
        let json: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|error| panic!("error body is not JSON: {error}"));
        assert!(json["error"]["message"].is_string(), "{json}");
        assert!(json["error"]["code"].is_string(), "{json}");
    }
}

/// Parses the text form of a request (see [`relay_request`]).
fn request_from(data: &[u8]) -> Option<http::Request<relay::service::Body>> {
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let head = std::str::from_utf8(&data[..split]).ok()?;
    let body = data.get(split + 2..).unwrap_or_default();
    let mut lines = head.split('\n');
    let (method, path) = lines.next()?.split_once(' ')?;
    let mut builder = http::Request::builder()
        .method(http::Method::from_bytes(method.as_bytes()).ok()?)
        .uri(http::Uri::try_from(path).ok()?);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        builder = builder.header(
            http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            http::HeaderValue::from_bytes(value.trim().as_bytes()).ok()?,
        );
    }
    builder
        .body(full_body(bytes::Bytes::copy_from_slice(body)))
        .ok()
}
