//! The health channel's mutual TLS through real QUIC handshakes on loopback: which relay
//! certificates a DNS node's health listener accepts, the region it reads from them, and one
//! report frame carried on a unidirectional stream.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use meridian::{
    health::{
        Frame, ReportedState, decode,
        frame::{HEADER_LEN, MAX_FRAME_BYTES, encode_report},
        pki::{
            Ca, HEALTH_ALPN, PemPair, Validity, client_config_with_identity, create_ca,
            issue_dns_node_cert, issue_relay_cert, peer_region, server_config_with_client_auth,
        },
    },
    relay::{
        report::{ModelReport, REPORT_VERSION, RegionReport, RegionState},
        stats::{ClientRtt, Rates},
    },
};

/// Generous: a loopback handshake takes milliseconds; this only stops a hung test.
const BOUND: Duration = Duration::from_secs(10);

struct Deployment {
    ca_pair: PemPair,
    ca: Ca,
    node: PemPair,
}

fn deployment() -> Deployment {
    let now = SystemTime::now();
    let ca_pair = create_ca("test deployment", Validity::ca(now)).unwrap();
    let ca = Ca::from_pem(&ca_pair).unwrap();
    let node = issue_dns_node_cert(&ca, "dns1", &["127.0.0.1"], Validity::leaf(now)).unwrap();
    Deployment { ca_pair, ca, node }
}

fn health_listener(deployment: &Deployment) -> quinn::Endpoint {
    let config =
        server_config_with_client_auth(&deployment.ca_pair.cert_pem, &deployment.node).unwrap();
    quinn::Endpoint::server(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap()
}

/// Connects with `identity` and returns what each side made of the handshake: the server's
/// view of the connection, and the client's connection if it got one.
async fn handshake(
    server: &quinn::Endpoint,
    deployment: &Deployment,
    identity: &PemPair,
) -> (
    Result<quinn::Connection, quinn::ConnectionError>,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let client_config =
        client_config_with_identity(&deployment.ca_pair.cert_pem, identity).unwrap();
    let client = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = server.local_addr().unwrap();
    let connecting = client
        .connect_with(client_config, addr, "127.0.0.1")
        .unwrap();
    let accepting = async {
        let incoming = server.accept().await.expect("listener open");
        incoming.await
    };
    let both = async { tokio::join!(accepting, connecting) };
    tokio::time::timeout(BOUND, both)
        .await
        .expect("handshake hung")
}

/// With TLS 1.3 the client may finish its side before the server has judged its certificate;
/// a refused client then sees its connection closed instead of a failed handshake.
async fn client_was_refused(client: Result<quinn::Connection, quinn::ConnectionError>) {
    if let Ok(connection) = client {
        let closed = tokio::time::timeout(BOUND, connection.closed())
            .await
            .expect("refused connection was not closed");
        assert!(
            !matches!(closed, quinn::ConnectionError::LocallyClosed),
            "{closed:?}"
        );
    }
}

fn relay_report(region: &str, sequence: u64) -> RegionReport {
    RegionReport {
        version: REPORT_VERSION,
        region: region.into(),
        sequence,
        state: RegionState::Degraded,
        accept_new: true,
        saturation: 0.5,
        capacity_units: 8,
        headroom_units: 4.0,
        headroom_fraction: 0.5,
        models: BTreeMap::from([(
            "llama-3-8b".to_string(),
            ModelReport {
                healthy_backends: 1,
                total_backends: 2,
                capacity_units: 8,
                headroom_units: 4.0,
                headroom_fraction: 0.5,
                saturation: 0.5,
                waiting: 3.0,
                kv_usage: Some(0.7),
                ttft_p50_ms: 90.0,
                ttft_p95_ms: 240.0,
                inter_token_p50_ms: 12.0,
                inter_token_p95_ms: 30.0,
            },
        )]),
        rates: Rates {
            requests_per_s: 20.0,
            errors_per_s: 0.5,
            timeouts_per_s: 0.0,
            sheds_per_s: 0.0,
        },
        client_rtt: vec![ClientRtt {
            prefix: "203.0.113.0/24".into(),
            rtt_ms: 18.0,
            samples: 40,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_of_the_deployment_is_accepted_and_its_report_read() {
    meridian::relay::tls::install_crypto_provider();
    let deployment = deployment();
    let server = health_listener(&deployment);
    let relay = issue_relay_cert(
        &deployment.ca,
        "eu-west",
        &["api.example.test"],
        Validity::leaf(SystemTime::now()),
    )
    .unwrap();

    let (accepted, connected) = handshake(&server, &deployment, &relay).await;
    let accepted = accepted.expect("server refused a relay of its own CA");
    let connected = connected.expect("relay could not connect");
    assert_eq!(
        accepted.handshake_data().and_then(|data| data
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .ok()
            .and_then(|data| data.protocol)),
        Some(HEALTH_ALPN.to_vec())
    );
    assert_eq!(peer_region(&accepted), Ok("eu-west".to_string()));

    let frame = encode_report(&relay_report("eu-west", 7), 3000).unwrap();
    let sending = async {
        let mut stream = connected.open_uni().await.unwrap();
        stream.write_all(&frame).await.unwrap();
        stream.finish().unwrap();
    };
    let receiving = async {
        let mut stream = accepted.accept_uni().await.unwrap();
        stream
            .read_to_end(HEADER_LEN + MAX_FRAME_BYTES)
            .await
            .unwrap()
    };
    let ((), received) = tokio::time::timeout(BOUND, async { tokio::join!(sending, receiving) })
        .await
        .expect("report not delivered");

    let (Frame::Report(report), used) = decode(&received).unwrap();
    assert_eq!(used, received.len());
    assert_eq!(report.validity_ms, 3000);
    assert_eq!(report.report.region, "eu-west");
    assert_eq!(report.report.sequence, 7);
    assert_eq!(report.report.state, ReportedState::Degraded);
    assert_eq!(report.report.models["llama-3-8b"].ttft_p95_ms, 240.0);
    assert_eq!(report.report.client_rtt[0].prefix, "203.0.113.0/24");

    connected.close(0u32.into(), b"done");
    server.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_are_not_a_current_relay_of_the_deployment_are_refused() {
    meridian::relay::tls::install_crypto_provider();
    let deployment = deployment();
    let server = health_listener(&deployment);
    let now = SystemTime::now();
    let year = Duration::from_secs(365 * 86_400);

    let stranger_ca = Ca::from_pem(&create_ca("stranger", Validity::ca(now)).unwrap()).unwrap();
    let cases = [
        (
            "relay certificate from another CA",
            issue_relay_cert(&stranger_ca, "eu-west", &[], Validity::leaf(now)).unwrap(),
        ),
        (
            "DNS node certificate (no clientAuth usage)",
            issue_dns_node_cert(&deployment.ca, "dns2", &["dns2.test"], Validity::leaf(now))
                .unwrap(),
        ),
        (
            "expired relay certificate",
            issue_relay_cert(
                &deployment.ca,
                "eu-west",
                &[],
                Validity {
                    not_before: now - 2 * year,
                    not_after: now - year,
                },
            )
            .unwrap(),
        ),
    ];
    for (name, identity) in cases {
        let (accepted, connected) = handshake(&server, &deployment, &identity).await;
        assert!(accepted.is_err(), "{name}: accepted");
        client_was_refused(connected).await;
    }

    // The listener still serves a good relay afterwards.
    let relay = issue_relay_cert(&deployment.ca, "us-east", &[], Validity::leaf(now)).unwrap();
    let (accepted, _connected) = handshake(&server, &deployment, &relay).await;
    assert_eq!(peer_region(&accepted.unwrap()), Ok("us-east".to_string()));
    server.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refuses_a_health_listener_outside_the_deployment() {
    meridian::relay::tls::install_crypto_provider();
    let deployment = deployment();
    let now = SystemTime::now();
    let stranger_pair = create_ca("stranger", Validity::ca(now)).unwrap();
    let stranger = Deployment {
        node: issue_dns_node_cert(
            &Ca::from_pem(&stranger_pair).unwrap(),
            "dns1",
            &["127.0.0.1"],
            Validity::leaf(now),
        )
        .unwrap(),
        ca: Ca::from_pem(&stranger_pair).unwrap(),
        ca_pair: stranger_pair,
    };
    let impostor = health_listener(&stranger);
    let relay = issue_relay_cert(&deployment.ca, "eu-west", &[], Validity::leaf(now)).unwrap();

    // The relay trusts only its own deployment's CA.
    let (accepted, connected) = handshake(&impostor, &deployment, &relay).await;
    assert!(connected.is_err(), "relay connected to an impostor");
    assert!(accepted.is_err());
    impostor.close(0u32.into(), b"done");
}
