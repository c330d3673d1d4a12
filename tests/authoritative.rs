//! Authoritative answers from the bundled example zone through the real network path: the
//! in-process server on loopback, asked by hickory's UDP and TCP clients, by raw sockets where
//! the bytes on the wire matter (sizes, case, OPT), and by `dig`.
//!
//! Expected records are written out from `zones/example.test.zone` as "owner ttl TYPE rdata",
//! so a change in any section, flag, TTL or record shows up as a readable diff.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use common::*;
use hickory_net::{client::Client, runtime::TokioRuntimeProvider};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{
            HTTPS, SVCB,
            svcb::{Alpn, SvcParamValue},
        },
    },
};

/// Bound on every wait for a datagram that must come back.
const WAIT: Duration = Duration::from_secs(2);
/// `server.max_udp_payload` of the bundled example.
const OUR_PAYLOAD: u16 = 1232;
/// eu-west's address: the answer for a client in GB.
const EU_WEST: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));

/// The SOA as served in the answer section (zone TTL).
const SOA: &str = "example.test. 3600 SOA ns1.example.test. hostmaster.example.test. 2026112101 7200 1800 1209600 300";
/// The SOA as served in the authority section of negative answers: TTL = min(3600, minimum
/// 300) (RFC 2308 §5).
const NEGATIVE_SOA: &str = "example.test. 300 SOA ns1.example.test. hostmaster.example.test. 2026112101 7200 1800 1209600 300";
const APEX_NS: &[&str] = &[
    "example.test. 3600 NS ns1.example.test.",
    "example.test. 3600 NS ns2.example.test.",
];
const NS_GLUE: &[&str] = &[
    "ns1.example.test. 3600 A 192.0.2.1",
    "ns1.example.test. 3600 AAAA 2001:db8::1",
    "ns2.example.test. 3600 A 192.0.2.2",
    "ns2.example.test. 3600 AAAA 2001:db8::2",
];
const WWW_ADDRESSES: &[&str] = &[
    "www.example.test. 300 A 192.0.2.80",
    "www.example.test. 300 AAAA 2001:db8::80",
];
const LAB_NS: &[&str] = &["lab.example.test. 3600 NS ns.lab.example.test."];
const LAB_GLUE: &[&str] = &[
    "ns.lab.example.test. 3600 A 192.0.2.53",
    "ns.lab.example.test. 3600 AAAA 2001:db8::53",
];
/// The three character-strings of the DKIM TXT record, in order.
const DKIM: [&str; 3] = [
    "v=DKIM1; k=rsa; p=bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB1L9RIvNEVUxTveLruM0rfj0WAK1jHDhaXXzOI8d4",
    "VFmtvBtMkA/+SNV1tdpcY4BAEl9l2w/j4kSUt26phkV9mGCE/tCLl4r019GWp0RqhrWACeY2thHbFiEbZamq3/KcXlLZxQjFAjRz",
    "RNjAetkcvWBor8df9ikvBioJyjgcieced7mprp4wsNvbb1EKJk753ngVAde2uSronrBZxat0PbZ1humPrSfaC5lovA",
];

/// One question and the exact response it must get.
struct Case {
    name: &'static str,
    qtype: RecordType,
    rcode: ResponseCode,
    authoritative: bool,
    /// Compared in order: CNAME chains come first.
    answer: &'static [&'static str],
    /// Compared as sets: RRset order carries no meaning.
    authority: &'static [&'static str],
    additional: &'static [&'static str],
}

const fn answer(
    name: &'static str,
    qtype: RecordType,
    answer: &'static [&'static str],
    additional: &'static [&'static str],
) -> Case {
    Case {
        name,
        qtype,
        rcode: ResponseCode::NoError,
        authoritative: true,
        answer,
        authority: &[],
        additional,
    }
}

const fn nodata(name: &'static str, qtype: RecordType, chain: &'static [&'static str]) -> Case {
    Case {
        name,
        qtype,
        rcode: ResponseCode::NoError,
        authoritative: true,
        answer: chain,
        authority: &[NEGATIVE_SOA],
        additional: &[],
    }
}

const fn nxdomain(name: &'static str, qtype: RecordType) -> Case {
    Case {
        name,
        qtype,
        rcode: ResponseCode::NXDomain,
        authoritative: true,
        answer: &[],
        authority: &[NEGATIVE_SOA],
        additional: &[],
    }
}

const fn referral(name: &'static str, qtype: RecordType) -> Case {
    Case {
        name,
        qtype,
        rcode: ResponseCode::NoError,
        authoritative: false,
        answer: &[],
        authority: LAB_NS,
        additional: LAB_GLUE,
    }
}

const fn refused(name: &'static str, qtype: RecordType) -> Case {
    Case {
        name,
        qtype,
        rcode: ResponseCode::Refused,
        authoritative: false,
        answer: &[],
        authority: &[],
        additional: &[],
    }
}

/// Everything the example zone answers, one case per behaviour.
const CASES: &[Case] = &[
    // The apex.
    answer("example.test.", RecordType::SOA, &[SOA], &[]),
    answer("example.test.", RecordType::NS, APEX_NS, NS_GLUE),
    answer(
        "example.test.",
        RecordType::MX,
        &["example.test. 3600 MX 10 mail.example.test."],
        &[
            "mail.example.test. 3600 A 192.0.2.25",
            "mail.example.test. 3600 AAAA 2001:db8::25",
        ],
    ),
    answer(
        "example.test.",
        RecordType::TXT,
        &["example.test. 3600 TXT \"v=spf1 mx -all\""],
        &[],
    ),
    answer(
        "example.test.",
        RecordType::CAA,
        &[
            "example.test. 3600 CAA 0 issue \"letsencrypt.org\"",
            "example.test. 3600 CAA 0 iodef \"mailto:security@example.test\"",
        ],
        &[],
    ),
    // Ordinary names and types.
    answer(
        "www.example.test.",
        RecordType::A,
        &["www.example.test. 300 A 192.0.2.80"],
        &[],
    ),
    answer(
        "www.example.test.",
        RecordType::AAAA,
        &["www.example.test. 300 AAAA 2001:db8::80"],
        &[],
    ),
    answer(
        "www.example.test.",
        RecordType::HTTPS,
        &["www.example.test. 300 HTTPS 1 . alpn=h3,h2"],
        &[],
    ),
    answer(
        "svc.example.test.",
        RecordType::SVCB,
        &["svc.example.test. 3600 SVCB 1 www.example.test. alpn=h2 port=8443"],
        &[],
    ),
    answer(
        "_https._tcp.example.test.",
        RecordType::SRV,
        &["_https._tcp.example.test. 3600 SRV 10 5 443 www.example.test."],
        WWW_ADDRESSES,
    ),
    answer(
        "_services._dns-sd._udp.example.test.",
        RecordType::PTR,
        &["_services._dns-sd._udp.example.test. 3600 PTR _https._tcp.example.test."],
        &[],
    ),
    answer(
        "mail.example.test.",
        RecordType::AAAA,
        &["mail.example.test. 3600 AAAA 2001:db8::25"],
        &[],
    ),
    answer(
        "ns1.example.test.",
        RecordType::A,
        &["ns1.example.test. 3600 A 192.0.2.1"],
        &[],
    ),
    // CNAME followed inside the zone: the CNAME first, then the target's data.
    answer(
        "docs.example.test.",
        RecordType::A,
        &[
            "docs.example.test. 3600 CNAME www.example.test.",
            "www.example.test. 300 A 192.0.2.80",
        ],
        &[],
    ),
    answer(
        "docs.example.test.",
        RecordType::AAAA,
        &[
            "docs.example.test. 3600 CNAME www.example.test.",
            "www.example.test. 300 AAAA 2001:db8::80",
        ],
        &[],
    ),
    answer(
        "docs.example.test.",
        RecordType::CNAME,
        &["docs.example.test. 3600 CNAME www.example.test."],
        &[],
    ),
    // The target exists without that type: NODATA after the chain.
    nodata(
        "docs.example.test.",
        RecordType::MX,
        &["docs.example.test. 3600 CNAME www.example.test."],
    ),
    // Wildcard (RFC 4592): synthesized with the qname as owner, at any depth below apps.
    answer(
        "anything.apps.example.test.",
        RecordType::A,
        &["anything.apps.example.test. 3600 A 192.0.2.100"],
        &[],
    ),
    answer(
        "deeper.still.apps.example.test.",
        RecordType::A,
        &["deeper.still.apps.example.test. 3600 A 192.0.2.100"],
        &[],
    ),
    answer(
        "*.apps.example.test.",
        RecordType::A,
        &["*.apps.example.test. 3600 A 192.0.2.100"],
        &[],
    ),
    nodata("anything.apps.example.test.", RecordType::AAAA, &[]),
    // The wildcard's parent exists (as an empty non-terminal): not covered by the wildcard.
    nodata("apps.example.test.", RecordType::A, &[]),
    // Negative answers.
    nxdomain("nope.example.test.", RecordType::A),
    nxdomain("below.www.example.test.", RecordType::A),
    nodata("www.example.test.", RecordType::MX, &[]),
    nodata("example.test.", RecordType::A, &[]),
    // b is an empty non-terminal: NODATA, and it has no wildcard to synthesize from.
    nodata("b.example.test.", RecordType::A, &[]),
    answer(
        "a.b.example.test.",
        RecordType::A,
        &["a.b.example.test. 3600 A 192.0.2.110"],
        &[],
    ),
    nxdomain("c.b.example.test.", RecordType::A),
    // The delegation: referrals, not authoritative, whatever the type, glue included.
    referral("x.lab.example.test.", RecordType::A),
    referral("lab.example.test.", RecordType::A),
    referral("lab.example.test.", RecordType::NS),
    referral("deep.x.lab.example.test.", RecordType::MX),
    // Glue is not authoritative data: asking for it directly is a referral too.
    referral("ns.lab.example.test.", RecordType::A),
    // DS belongs to the parent side of the cut: we answer it (and have none).
    nodata("lab.example.test.", RecordType::DS, &[]),
    // Not ours.
    refused("example.com.", RecordType::A),
    refused("test.", RecordType::SOA),
    refused(".", RecordType::NS),
    refused("example.test.com.", RecordType::A),
];

/// "owner ttl TYPE rdata" in presentation format, except where hickory's Display departs from
/// it: TXT strings are quoted one by one (not concatenated), an ALPN list has no trailing comma.
fn rr(record: &Record) -> String {
    let data = match &record.data {
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| format!("\"{}\"", String::from_utf8_lossy(s)))
            .collect::<Vec<_>>()
            .join(" "),
        RData::SVCB(svcb) | RData::HTTPS(HTTPS(svcb)) => service_binding(svcb),
        other => other.to_string(),
    };
    format!(
        "{} {} {} {}",
        record.name,
        record.ttl,
        record.record_type(),
        data
    )
}

fn service_binding(svcb: &SVCB) -> String {
    let mut text = format!("{} {}", svcb.svc_priority, svcb.target_name);
    for (key, value) in &svcb.svc_params {
        match value {
            SvcParamValue::Alpn(Alpn(ids)) => text.push_str(&format!(" {key}={}", ids.join(","))),
            other => text.push_str(&format!(" {key}={other}")),
        }
    }
    text
}

fn rrs(records: &[Record]) -> Vec<String> {
    records.iter().map(rr).collect()
}

fn set(records: &[Record]) -> Vec<String> {
    let mut all = rrs(records);
    all.sort();
    all
}

fn set_of(expected: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    all.sort();
    all
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// Checks everything a response to `case` must say; `via` names the path in failures.
fn check(case: &Case, response: &Message, via: &str) {
    let what = format!("{} {} via {via}", case.name, case.qtype);
    assert_eq!(
        response.metadata.message_type,
        MessageType::Response,
        "{what}"
    );
    assert_eq!(response.metadata.op_code, OpCode::Query, "{what}");
    assert_eq!(response.metadata.response_code, case.rcode, "{what}: RCODE");
    assert_eq!(
        response.metadata.authoritative, case.authoritative,
        "{what}: AA"
    );
    assert!(!response.metadata.truncation, "{what}: TC");
    assert!(!response.metadata.recursion_available, "{what}: RA");
    assert_eq!(
        response.queries,
        vec![Query::query(name(case.name), case.qtype)],
        "{what}: question"
    );
    assert_eq!(
        in_rrset_order(&rrs(&response.answers)),
        in_rrset_order(case.answer),
        "{what}: answer"
    );
    assert_eq!(
        set(&response.authorities),
        set_of(case.authority),
        "{what}: authority"
    );
    assert_eq!(
        set(&response.additionals),
        set_of(case.additional),
        "{what}: additional"
    );
    let edns = response.edns.as_ref().expect("EDNS query gets an OPT back");
    assert_eq!(
        edns.max_payload(),
        OUR_PAYLOAD,
        "{what}: advertised payload"
    );
    assert_eq!(edns.version(), 0, "{what}: EDNS version");
}

/// Answer lines with each RRset's records sorted: RRsets keep their order (a CNAME chain comes
/// first), records inside one carry no order.
fn in_rrset_order<S: AsRef<str>>(lines: &[S]) -> Vec<String> {
    let key = |line: &str| {
        let mut fields = line.split(' ');
        let owner = fields.next().unwrap_or_default().to_ascii_lowercase();
        let rtype = fields.nth(1).unwrap_or_default().to_owned();
        (owner, rtype)
    };
    let mut ordered = Vec::with_capacity(lines.len());
    let mut start = 0;
    while start < lines.len() {
        let first = key(lines[start].as_ref());
        let mut end = start + 1;
        while end < lines.len() && key(lines[end].as_ref()) == first {
            end += 1;
        }
        let mut group: Vec<String> = lines[start..end]
            .iter()
            .map(|s| s.as_ref().to_owned())
            .collect();
        group.sort();
        ordered.extend(group);
        start = end;
    }
    ordered
}

async fn run_cases(client: &Client<TokioRuntimeProvider>, via: &str) {
    for case in CASES {
        let response = ask(client, case.name, case.qtype, None).await;
        check(case, &response, via);
    }
}

#[tokio::test]
async fn zone_answers_over_udp() {
    let server = TestServer::start(&bundled_config()).await;
    assert_eq!(
        server.store.load().config.limits.max_udp_payload,
        OUR_PAYLOAD,
        "the bundled example's payload cap"
    );
    let client = udp_client(server.addr).await;
    run_cases(&client, "UDP").await;
    server.stop().await;
}

#[tokio::test]
async fn zone_answers_over_tcp() {
    let server = TestServer::start(&bundled_config()).await;
    let client = tcp_client(server.addr).await;
    run_cases(&client, "TCP").await;
    server.stop().await;
}

/// Whether this machine can bind the IPv6 loopback (containers often cannot).
fn ipv6_loopback_available() -> bool {
    std::net::UdpSocket::bind("[::1]:0").is_ok() && std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[tokio::test]
async fn zone_answers_over_ipv6_loopback() {
    if !ipv6_loopback_available() {
        eprintln!("SKIPPED: [::1] cannot be bound on this machine (no IPv6 loopback)");
        return;
    }
    let server = TestServer::start_on(&bundled_config(), "[::1]:0".parse().unwrap()).await;
    assert!(server.addr.is_ipv6());
    let udp = udp_client(server.addr).await;
    run_cases(&udp, "UDP over IPv6").await;
    let tcp = tcp_client(server.addr).await;
    run_cases(&tcp, "TCP over IPv6").await;

    // Truncation and the TCP retry work the same over IPv6.
    let truncated = ask(&udp, "big.example.test.", RecordType::TXT, None).await;
    assert!(truncated.metadata.truncation);
    assert!(truncated.answers.is_empty());
    let full = ask(&tcp, "big.example.test.", RecordType::TXT, None).await;
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 20);

    // A GSLB answer with ECS, and without (the IPv6 resolver address steers: the default).
    let steered = ask(
        &udp,
        "api.example.test.",
        RecordType::A,
        Some("81.2.69.0/24"),
    )
    .await;
    assert_eq!(addresses(&steered), vec![EU_WEST]);
    server.stop().await;
}

#[tokio::test]
async fn the_long_txt_record_keeps_its_character_strings() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    let response = ask(
        &client,
        "mail._domainkey.example.test.",
        RecordType::TXT,
        None,
    )
    .await;
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative);
    assert_eq!(response.answers.len(), 1, "one record, several strings");
    let record = &response.answers[0];
    assert_eq!(record.name, name("mail._domainkey.example.test."));
    assert_eq!(record.ttl, 3600);
    let RData::TXT(txt) = &record.data else {
        panic!("not a TXT record: {record}");
    };
    let strings: Vec<&[u8]> = txt.txt_data.iter().map(|s| &s[..]).collect();
    let expected: Vec<&[u8]> = DKIM.iter().map(|s| s.as_bytes()).collect();
    assert_eq!(strings, expected);
    assert!(
        DKIM.iter().map(|s| s.len()).sum::<usize>() > 255,
        "the record must exercise more than one string's worth of data"
    );
    server.stop().await;
}

/// A name with data of its own is never wildcarded, whatever type is asked (RFC 4592 §2.2.1).
#[tokio::test]
async fn an_existing_name_below_a_wildcard_is_not_wildcarded() {
    let scratch = Scratch::new();
    let mut zone = scratch.read("zones/example.test.zone");
    zone.push_str("\nexists.apps IN TXT \"own data\"\n");
    scratch.replace("zones/example.test.zone", &zone);
    let server = TestServer::start(&scratch.config()).await;
    let client = udp_client(server.addr).await;

    let own = ask(&client, "exists.apps.example.test.", RecordType::TXT, None).await;
    assert_eq!(own.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        rrs(&own.answers),
        vec!["exists.apps.example.test. 3600 TXT \"own data\""]
    );

    let no_a = ask(&client, "exists.apps.example.test.", RecordType::A, None).await;
    assert_eq!(no_a.metadata.response_code, ResponseCode::NoError);
    assert!(no_a.metadata.authoritative);
    assert_eq!(rrs(&no_a.answers), Vec::<String>::new(), "not from *.apps");
    assert_eq!(rrs(&no_a.authorities), vec![NEGATIVE_SOA]);

    // Its siblings are still wildcarded.
    let sibling = ask(&client, "other.apps.example.test.", RecordType::A, None).await;
    assert_eq!(
        rrs(&sibling.answers),
        vec!["other.apps.example.test. 3600 A 192.0.2.100"]
    );
    server.stop().await;
}

/// The negative TTL is min(SOA TTL, SOA minimum) (RFC 2308 §5): the bundled zone has the
/// minimum as the smaller one, so here the SOA's own TTL is made the smaller.
#[tokio::test]
async fn negative_ttl_is_the_smaller_of_soa_ttl_and_minimum() {
    let scratch = Scratch::new();
    let zone = scratch.read("zones/example.test.zone");
    let soa_line = "@           IN SOA  ns1.example.test.";
    assert!(zone.contains(soa_line));
    scratch.replace(
        "zones/example.test.zone",
        &zone.replacen(soa_line, "@       120 IN SOA  ns1.example.test.", 1),
    );
    let server = TestServer::start(&scratch.config()).await;
    let client = udp_client(server.addr).await;
    let soa_at = |ttl: u32| {
        format!(
            "example.test. {ttl} SOA ns1.example.test. hostmaster.example.test. 2026112101 7200 1800 1209600 300"
        )
    };
    for (qname, qtype, rcode) in [
        ("nope.example.test.", RecordType::A, ResponseCode::NXDomain),
        ("www.example.test.", RecordType::MX, ResponseCode::NoError),
    ] {
        let response = ask(&client, qname, qtype, None).await;
        assert_eq!(response.metadata.response_code, rcode, "{qname}");
        assert!(response.answers.is_empty(), "{qname}");
        assert_eq!(rrs(&response.authorities), vec![soa_at(120)], "{qname}");
    }
    let soa = ask(&client, "example.test.", RecordType::SOA, None).await;
    assert_eq!(rrs(&soa.answers), vec![soa_at(120)]);
    server.stop().await;
}

/// REFUSED for a class we do not serve, even for a name in our zone; the question is echoed as
/// asked, class included (RFC 1035 §4.1.1: resolvers match it against their query).
#[tokio::test]
async fn class_chaos_is_refused() {
    let server = TestServer::start(&bundled_config()).await;
    for (qname, qtype) in [
        ("version.bind.", RecordType::TXT),
        ("www.example.test.", RecordType::A),
    ] {
        let mut message = query_message(qname, qtype, None);
        message.queries[0].set_query_class(DNSClass::CH);
        let (_, response) = raw_exchange(server.addr, &message.to_vec().unwrap()).await;
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::Refused,
            "{qname}"
        );
        assert!(!response.metadata.authoritative, "{qname}");
        assert!(response.answers.is_empty(), "{qname}");
        assert!(response.authorities.is_empty(), "{qname}");
        assert_eq!(
            response.queries, message.queries,
            "{qname}: question echoed"
        );
    }
    server.stop().await;
}

/// RFC 8482: ANY gets one RRset, the one with the lowest type code; a CNAME is not followed.
#[tokio::test]
async fn any_gets_a_minimal_answer() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    let table: &[(&str, &[&str])] = &[
        ("example.test.", APEX_NS), // NS (2) < SOA (6) < MX < TXT < CAA
        ("www.example.test.", &["www.example.test. 300 A 192.0.2.80"]),
        (
            "docs.example.test.",
            &["docs.example.test. 3600 CNAME www.example.test."],
        ),
        (
            "anything.apps.example.test.",
            &["anything.apps.example.test. 3600 A 192.0.2.100"],
        ),
        (
            "mail._domainkey.example.test.",
            &[], // checked by count below: the long TXT
        ),
    ];
    for (qname, expected) in table {
        let response = ask(&client, qname, RecordType::ANY, None).await;
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::NoError,
            "{qname}"
        );
        assert!(response.metadata.authoritative, "{qname}");
        assert_one_rrset(&response, qname);
        if !expected.is_empty() {
            assert_eq!(set(&response.answers), set_of(expected), "{qname}");
        }
    }
    server.stop().await;
}

/// The GSLB name answers ANY like any other name: one RRset.
#[tokio::test]
async fn any_at_a_gslb_name_is_one_rrset() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    let response = ask(
        &client,
        "api.example.test.",
        RecordType::ANY,
        Some("81.2.69.0/24"),
    )
    .await;
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_one_rrset(&response, "api.example.test.");
    server.stop().await;
}

fn assert_one_rrset(response: &Message, qname: &str) {
    let mut rrsets: Vec<(Name, RecordType)> = response
        .answers
        .iter()
        .map(|r| (r.name.clone(), r.record_type()))
        .collect();
    rrsets.dedup();
    assert_eq!(
        rrsets.len(),
        1,
        "{qname} ANY: exactly one RRset, got {:?}",
        rrs(&response.answers)
    );
}

async fn raw_exchange(addr: SocketAddr, packet: &[u8]) -> (Vec<u8>, Message) {
    let bytes = raw_udp(addr, packet, WAIT)
        .await
        .expect("answered within 2 s");
    let message = Message::from_vec(&bytes).expect("response parses");
    (bytes, message)
}

#[tokio::test]
async fn names_are_case_insensitive_and_the_question_keeps_its_case() {
    let server = TestServer::start(&bundled_config()).await;
    for (qname, qtype, rcode, answer) in [
        (
            "WwW.ExAmPlE.TeSt.",
            RecordType::A,
            ResponseCode::NoError,
            vec!["www.example.test. 300 A 192.0.2.80"],
        ),
        (
            "DOCS.example.TEST.",
            RecordType::A,
            ResponseCode::NoError,
            vec![
                "docs.example.test. 3600 CNAME www.example.test.",
                "www.example.test. 300 A 192.0.2.80",
            ],
        ),
        (
            "AnyThing.APPS.example.test.",
            RecordType::A,
            ResponseCode::NoError,
            // The synthesized owner is the qname; names compare case-insensitively.
            vec!["AnyThing.APPS.example.test. 3600 A 192.0.2.100"],
        ),
        (
            "NoPe.Example.Test.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
        ),
    ] {
        let query = raw_query(0x4242, qname, qtype, Some(1232));
        let (bytes, response) = raw_exchange(server.addr, &query).await;
        assert_eq!(response.metadata.response_code, rcode, "{qname}");
        assert!(response.metadata.authoritative, "{qname}");
        // The question section, byte for byte (hickory's Name comparison ignores case).
        let question_len = query.len() - 12 - 11; // header, OPT record
        assert_eq!(
            &bytes[12..12 + question_len],
            &query[12..12 + question_len],
            "{qname}: question echoed with its case"
        );
        assert_eq!(response.queries[0].name().to_ascii(), qname);
        let answers: Vec<String> = rrs(&response.answers)
            .into_iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let expected: Vec<String> = answer.iter().map(|s| s.to_ascii_lowercase()).collect();
        assert_eq!(answers, expected, "{qname}");
    }

    // The hickory client checks the echoed case itself (0x20 defence); and GSLB names too.
    let client = udp_client(server.addr).await;
    let steered = ask(
        &client,
        "API.Example.TEST.",
        RecordType::A,
        Some("81.2.69.0/24"),
    )
    .await;
    assert_eq!(addresses(&steered), vec![EU_WEST]);
    server.stop().await;
}

fn big_txt_records() -> Vec<String> {
    let mut all: Vec<String> = (1..=20)
        .map(|i| {
            format!(
                "big.example.test. 300 TXT \"filler {i:02}: this answer is too large for one 1232-byte UDP response.\""
            )
        })
        .collect();
    all.sort();
    all
}

fn big_a_records() -> Vec<String> {
    let mut all: Vec<String> = (1..=100)
        .map(|i| format!("big.example.test. 300 A 198.51.100.{i}"))
        .collect();
    all.sort();
    all
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_complete_over_tcp() {
    let server = TestServer::start(&bundled_config()).await;
    let udp = udp_client(server.addr).await;
    let tcp = tcp_client(server.addr).await;
    for (qtype, full) in [
        (RecordType::TXT, big_txt_records()),
        (RecordType::A, big_a_records()),
    ] {
        // Through the hickory client.
        let truncated = ask(&udp, "big.example.test.", qtype, None).await;
        assert_eq!(truncated.metadata.response_code, ResponseCode::NoError);
        assert!(truncated.metadata.truncation, "{qtype}: TC over UDP");
        assert!(truncated.answers.is_empty(), "{qtype}: no partial RRset");
        assert!(truncated.authorities.is_empty(), "{qtype}");
        assert!(truncated.additionals.is_empty(), "{qtype}");
        assert_eq!(
            truncated.edns.as_ref().map(Edns::max_payload),
            Some(OUR_PAYLOAD)
        );

        // On the wire: within the 1232 bytes, even when the client offers more (our cap).
        for offered in [1232, 4096, 65_535] {
            let (bytes, response) = raw_exchange(
                server.addr,
                &raw_query(7, "big.example.test.", qtype, Some(offered)),
            )
            .await;
            assert!(
                bytes.len() <= 1232,
                "{qtype}/{offered}: {} bytes",
                bytes.len()
            );
            assert!(response.metadata.truncation, "{qtype}/{offered}");
            assert!(response.answers.is_empty(), "{qtype}/{offered}");
        }

        // The same over TCP: everything, no TC.
        let complete = ask(&tcp, "big.example.test.", qtype, None).await;
        assert_eq!(complete.metadata.response_code, ResponseCode::NoError);
        assert!(complete.metadata.authoritative);
        assert!(!complete.metadata.truncation, "{qtype}: TC over TCP");
        assert_eq!(set(&complete.answers), full, "{qtype}");

        // Without EDNS the classic 512-byte limit holds.
        let (bytes, response) =
            raw_exchange(server.addr, &raw_query(8, "big.example.test.", qtype, None)).await;
        assert!(bytes.len() <= 512, "{qtype}: {} bytes", bytes.len());
        assert!(response.metadata.truncation, "{qtype}: TC without EDNS");
        assert!(response.answers.is_empty());
        assert!(response.edns.is_none(), "no OPT to a query without one");
    }
    server.stop().await;
}

/// 40 A records (about 700 bytes): too large for 512, fine for 1232.
#[tokio::test]
async fn edns_payload_decides_between_512_and_1232() {
    let scratch = Scratch::new();
    let mut zone = scratch.read("zones/example.test.zone");
    zone.push('\n');
    for i in 1..=40 {
        zone.push_str(&format!("mid 300 IN A 192.0.2.{}\n", 150 + i));
    }
    scratch.replace("zones/example.test.zone", &zone);
    let server = TestServer::start(&scratch.config()).await;

    let (bytes, classic) = raw_exchange(
        server.addr,
        &raw_query(1, "mid.example.test.", RecordType::A, None),
    )
    .await;
    assert!(bytes.len() <= 512);
    assert!(
        classic.metadata.truncation,
        "no EDNS: 512 bytes are not enough"
    );
    assert!(classic.answers.is_empty());

    // A payload below 512 means 512 (RFC 6891 §6.2.5).
    let (bytes, small) = raw_exchange(
        server.addr,
        &raw_query(2, "mid.example.test.", RecordType::A, Some(100)),
    )
    .await;
    assert!(bytes.len() <= 512);
    assert!(small.metadata.truncation);

    let (bytes, edns) = raw_exchange(
        server.addr,
        &raw_query(3, "mid.example.test.", RecordType::A, Some(1232)),
    )
    .await;
    assert!(
        bytes.len() > 512 && bytes.len() <= 1232,
        "{} bytes",
        bytes.len()
    );
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 40);
    server.stop().await;
}

#[tokio::test]
async fn opt_in_the_response_iff_the_query_had_one() {
    let server = TestServer::start(&bundled_config()).await;
    let questions = [
        ("www.example.test.", RecordType::A, ResponseCode::NoError),
        ("nope.example.test.", RecordType::A, ResponseCode::NXDomain),
        ("www.example.test.", RecordType::MX, ResponseCode::NoError),
        ("x.lab.example.test.", RecordType::A, ResponseCode::NoError),
        ("example.com.", RecordType::A, ResponseCode::Refused),
        ("api.example.test.", RecordType::A, ResponseCode::NoError),
    ];
    for (qname, qtype, rcode) in questions {
        let (_, without) = raw_exchange(server.addr, &raw_query(11, qname, qtype, None)).await;
        assert_eq!(without.metadata.response_code, rcode, "{qname}");
        assert!(
            without.edns.is_none(),
            "{qname}: OPT without one in the query"
        );

        for offered in [512, 1232, 4096] {
            let (_, with) =
                raw_exchange(server.addr, &raw_query(12, qname, qtype, Some(offered))).await;
            assert_eq!(with.metadata.response_code, rcode, "{qname}");
            let edns = with.edns.as_ref().expect("OPT echoed");
            assert_eq!(
                edns.max_payload(),
                OUR_PAYLOAD,
                "{qname}/{offered}: we advertise our own payload size"
            );
            assert_eq!(edns.version(), 0);
            assert!(
                !edns.flags().dnssec_ok,
                "{qname}: DO not set when not asked"
            );
        }
    }

    // DO is copied from the query (RFC 3225 §3).
    let mut message = query_message("www.example.test.", RecordType::A, None);
    message.edns.as_mut().unwrap().set_dnssec_ok(true);
    let (_, response) = raw_exchange(server.addr, &message.to_vec().unwrap()).await;
    assert!(response.edns.as_ref().unwrap().flags().dnssec_ok);
    server.stop().await;
}

/// `dig` output, run off the async runtime so the in-process server keeps serving.
async fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let mut command = Command::new("dig");
    command
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+norec", "+time=2", "+tries=1"])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("dig runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "dig {args:?} failed:\n{stdout}");
    stdout
}

/// The answer lines of dig's output, whitespace-normalised: "owner ttl class type rdata".
fn dig_answers(output: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_answer = false;
    for line in output.lines() {
        if line.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() {
                break;
            }
            lines.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    lines
}

#[tokio::test]
async fn dig_sees_steering_ecs_tcp_and_the_truncation_retry() {
    if !require_tool("dig") {
        return;
    }
    let server = TestServer::start(&bundled_config()).await;

    let output = dig(server.addr, &["api.example.test", "+subnet=81.2.69.0/24"]).await;
    assert!(output.contains("status: NOERROR"), "{output}");
    assert!(output.contains(" aa"), "authoritative:\n{output}");
    assert_eq!(
        dig_answers(&output),
        vec!["api.example.test. 30 IN A 198.51.100.10"],
        "{output}"
    );
    let scope: u8 = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("; CLIENT-SUBNET: 81.2.69.0/24/"))
        .unwrap_or_else(|| panic!("no CLIENT-SUBNET echo:\n{output}"))
        .trim()
        .parse()
        .expect("a scope prefix");
    assert!(scope > 0 && scope <= 24, "scope {scope}");

    let output = dig(server.addr, &["www.example.test", "+tcp"]).await;
    assert!(output.contains("status: NOERROR"), "{output}");
    assert_eq!(
        dig_answers(&output),
        vec!["www.example.test. 300 IN A 192.0.2.80"],
        "{output}"
    );
    assert!(output.contains("(TCP)"), "answered over TCP:\n{output}");

    let output = dig(server.addr, &["big.example.test", "TXT"]).await;
    assert!(
        output.contains("Truncated, retrying in TCP mode"),
        "{output}"
    );
    let mut answers = dig_answers(&output);
    answers.sort();
    let expected: Vec<String> = big_txt_records()
        .iter()
        .map(|r| r.replacen(" 300 TXT ", " 300 IN TXT ", 1))
        .collect();
    assert_eq!(answers, expected, "{output}");

    let output = dig(server.addr, &["nope.example.test"]).await;
    assert!(output.contains("status: NXDOMAIN"), "{output}");
    server.stop().await;
}
