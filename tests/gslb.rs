//! GSLB answers through the real network path: the server on 127.0.0.1:0, queried by
//! hickory's UDP and TCP clients, with ECS from the networks the bundled example steers.

mod common;

use std::{net::IpAddr, time::Duration};

use common::*;
use hickory_proto::{
    op::ResponseCode,
    rr::{RData, RecordType},
};

const US_EAST_V4: &str = "192.0.2.10";
const EU_WEST_V4: &str = "198.51.100.10";
const AP_SOUTH_V4: &str = "203.0.113.10";
const EU_WEST_V6: &str = "2001:db8:20::10";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn ecs_steers_each_listed_network_to_its_region_with_a_scope() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    let table = [
        ("81.2.69.0/24", EU_WEST_V4),     // GB
        ("185.199.108.0/24", EU_WEST_V4), // NL
        ("41.0.0.0/16", EU_WEST_V4),      // ZA
        ("8.8.8.0/24", US_EAST_V4),       // US
        ("200.160.0.0/20", US_EAST_V4),   // BR
        ("49.36.0.0/16", AP_SOUTH_V4),    // IN
        ("133.242.0.0/16", AP_SOUTH_V4),  // JP
        ("1.1.1.0/24", AP_SOUTH_V4),      // AU
    ];
    for (subnet, expected) in table {
        let response = ask(&client, "api.example.test.", RecordType::A, Some(subnet)).await;
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::NoError,
            "{subnet}"
        );
        assert!(response.metadata.authoritative, "{subnet}: AA");
        assert_eq!(addresses(&response), vec![ip(expected)], "{subnet}");
        let echoed = echoed_subnet(&response).expect("ECS echoed");
        let source: ipnet::IpNet = subnet.parse().unwrap();
        assert_eq!(echoed.source_prefix(), source.prefix_len(), "{subnet}");
        assert!(
            echoed.scope_prefix() > 0,
            "{subnet}: geo answer needs a scope"
        );
        assert!(
            echoed.scope_prefix() <= source.prefix_len(),
            "{subnet}: scope {} wider than allowed",
            echoed.scope_prefix()
        );
        assert_eq!(response.answers[0].ttl, 30, "{subnet}: policy TTL");
    }
    server.stop().await;
}

#[tokio::test]
async fn ipv6_ecs_and_aaaa_answers() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    let response = ask(
        &client,
        "api.example.test.",
        RecordType::AAAA,
        Some("2a02:2e0::/32"),
    )
    .await;
    assert_eq!(addresses(&response), vec![ip(EU_WEST_V6)]);
    let echoed = echoed_subnet(&response).expect("ECS echoed");
    assert_eq!(echoed.source_prefix(), 32);
    assert!(echoed.scope_prefix() > 0 && echoed.scope_prefix() <= 32);

    let us = ask(
        &client,
        "api.example.test.",
        RecordType::A,
        Some("2001:4860::/32"),
    )
    .await;
    assert_eq!(addresses(&us), vec![ip(US_EAST_V4)]);
    server.stop().await;
}

#[tokio::test]
async fn no_ecs_in_the_response_to_a_query_without_one() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    let response = ask(&client, "api.example.test.", RecordType::A, None).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&response).len(), 1);
    assert!(response.edns.is_some(), "EDNS query gets an OPT back");
    assert_eq!(echoed_subnet(&response), None);
    server.stop().await;
}

#[tokio::test]
async fn zone_answers_echo_ecs_with_scope_zero() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    let response = ask(
        &client,
        "example.test.",
        RecordType::SOA,
        Some("81.2.69.0/24"),
    )
    .await;
    assert_eq!(response.answers.len(), 1);
    let echoed = echoed_subnet(&response).expect("ECS echoed");
    assert_eq!(echoed.scope_prefix(), 0);
    server.stop().await;
}

#[tokio::test]
async fn tcp_answers_match_udp() {
    let server = TestServer::start(&bundled_config()).await;
    let udp = udp_client(server.addr).await;
    let tcp = tcp_client(server.addr).await;
    for subnet in ["81.2.69.0/24", "8.8.8.0/24", "133.242.0.0/16"] {
        let over_udp = ask(&udp, "api.example.test.", RecordType::A, Some(subnet)).await;
        let over_tcp = ask(&tcp, "api.example.test.", RecordType::A, Some(subnet)).await;
        assert_eq!(addresses(&over_udp), addresses(&over_tcp), "{subnet}");
        assert_eq!(
            echoed_subnet(&over_udp),
            echoed_subnet(&over_tcp),
            "{subnet}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn cname_into_a_gslb_name_is_steered() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    let response = ask(
        &client,
        "chat.example.test.",
        RecordType::A,
        Some("81.2.69.0/24"),
    )
    .await;
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(
        matches!(response.answers[0].data, RData::CNAME(_)),
        "{response:?}"
    );
    assert_eq!(addresses(&response), vec![ip(EU_WEST_V4)]);
    server.stop().await;
}

#[tokio::test]
async fn other_types_at_a_gslb_name_are_nodata_with_soa() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    let response = ask(&client, "api.example.test.", RecordType::MX, None).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.answers.is_empty());
    assert!(matches!(response.authorities[0].data, RData::SOA(_)));
    server.stop().await;
}

#[tokio::test]
async fn why_query_explains_the_decision_for_this_client() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    let response = ask(
        &client,
        "_why.api.example.test.",
        RecordType::TXT,
        Some("81.2.69.0/24"),
    )
    .await;
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    let text: Vec<String> = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(txt.to_string()),
            _ => None,
        })
        .collect();
    let all = text.join("\n");
    assert!(all.contains("81.2.69.0/24"), "client shown: {all}");
    assert!(all.contains("GB"), "location shown: {all}");
    assert!(all.contains("eu-west"), "chosen region shown: {all}");
    assert!(text.len() >= 4, "several steps: {all}");
    assert!(response.answers.iter().all(|r| r.ttl == 0), "never cached");
    server.stop().await;
}

#[tokio::test]
async fn other_modes_answer() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    // Failover: first in the configured order, whoever asks.
    for subnet in ["8.8.8.0/24", "133.242.0.0/16"] {
        let response = ask(
            &client,
            "failover.example.test.",
            RecordType::A,
            Some(subnet),
        )
        .await;
        assert_eq!(addresses(&response), vec![ip(EU_WEST_V4)], "{subnet}");
        assert_eq!(echoed_subnet(&response).unwrap().scope_prefix(), 0);
    }
    // Nearest: Tokyo is nearer to Mumbai than to Dublin or Ashburn.
    let response = ask(
        &client,
        "nearest.example.test.",
        RecordType::A,
        Some("133.242.0.0/16"),
    )
    .await;
    assert_eq!(addresses(&response), vec![ip(AP_SOUTH_V4)]);
    // Weighted: every region shows up over enough queries, and scope is 0.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let response = ask(
            &client,
            "weighted.example.test.",
            RecordType::A,
            Some("8.8.8.0/24"),
        )
        .await;
        assert_eq!(echoed_subnet(&response).unwrap().scope_prefix(), 0);
        seen.extend(addresses(&response));
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        3,
        "weighted answers cover all regions: {seen:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn drained_region_is_skipped_and_ttl_lowered() {
    let scratch = Scratch::new();
    let server = TestServer::start(&scratch.config()).await;
    let client = udp_client(server.addr).await;
    let before = ask(
        &client,
        "api.example.test.",
        RecordType::A,
        Some("81.2.69.0/24"),
    )
    .await;
    assert_eq!(addresses(&before), vec![ip(EU_WEST_V4)]);

    scratch.replace(
        "zones/operator-state.json",
        r#"{"version":1,"regions":{"eu-west":{"admin":"drain"}}}"#,
    );
    match server.store.reload() {
        meridian::snapshot::ReloadOutcome::Loaded { .. } => {}
        other => panic!("reload failed: {other:?}"),
    }
    let after = ask(
        &client,
        "api.example.test.",
        RecordType::A,
        Some("81.2.69.0/24"),
    )
    .await;
    assert_eq!(
        addresses(&after),
        vec![ip(US_EAST_V4)],
        "EU falls back to us-east"
    );
    assert!(
        after.answers[0].ttl < 30,
        "TTL lowered while a candidate drains"
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_ecs_is_formerr_and_the_server_keeps_answering() {
    let server = TestServer::start(&bundled_config()).await;
    // A valid query for api.example.test A with an ECS option whose host bits are set.
    let mut packet = vec![0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    packet.extend_from_slice(b"\x03api\x07example\x04test\x00\x00\x01\x00\x01");
    packet.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11]);
    packet.extend_from_slice(&[0, 8, 0, 7, 0, 1, 23, 0, 81, 2, 69]);
    let response = raw_udp(server.addr, &packet, Duration::from_secs(5))
        .await
        .expect("FORMERR response");
    assert_eq!(&response[..2], &[0xab, 0xcd]);
    assert_eq!(response[3] & 0x0f, 1, "RCODE FORMERR");

    let client = udp_client(server.addr).await;
    let ok = ask(
        &client,
        "api.example.test.",
        RecordType::A,
        Some("81.2.69.0/24"),
    )
    .await;
    assert_eq!(addresses(&ok), vec![ip(EU_WEST_V4)]);
    server.stop().await;
}

/// RFC 7871 §7.2.1: a query with SOURCE PREFIX-LENGTH 0 is answered from the resolver's own
/// address, and the echoed scope is never wider than the source prefix (/0), whatever the
/// resolver address's GeoIP network is. Found by the `dns_respond` fuzz target.
#[tokio::test]
async fn a_zero_length_ecs_source_gets_scope_zero() {
    let server = TestServer::start(&bundled_config()).await;
    let client = udp_client(server.addr).await;
    for subnet in ["0.0.0.0/0", "::/0"] {
        let response = ask(&client, "api.example.test.", RecordType::A, Some(subnet)).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        let echoed = echoed_subnet(&response).expect("ECS echoed");
        assert_eq!(echoed.source_prefix(), 0, "{subnet}");
        assert_eq!(
            echoed.scope_prefix(),
            0,
            "{subnet}: scope wider than the source"
        );
    }
    server.stop().await;
}
