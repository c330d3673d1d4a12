//! Bad input never stalls or crashes the server: crafted packets over UDP and TCP, each
//! followed by a valid query that must still be answered, stalled and oversized TCP frames,
//! and a bounded deterministic fuzz loop over mutations of valid queries.
//!
//! Packets are built byte by byte here, because the point is to send what no DNS library
//! would emit.

mod common;

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use common::*;
use hickory_proto::op::Message;
use meridian::dns::wire::{QueryError, parse_query};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

/// Bound on every wait, for an answer or for its absence.
const WAIT: Duration = Duration::from_secs(2);

const WWW: &[u8] = b"\x03www\x07example\x04test\x00";
const TYPE_A: u16 = 1;
const TYPE_TXT: u16 = 16;
const TYPE_OPT: u16 = 41;
const TYPE_AXFR: u16 = 252;
const RD: u16 = 0x0100;
const QR: u16 = 0x8000;
const OPTION_PADDING: u16 = 12;
const OPTION_ECS: u16 = 8;

const FORMERR: u16 = 1;
const NOTIMP: u16 = 4;
const REFUSED: u16 = 5;
const BADVERS: u16 = 16;

fn header(id: u16, flags: u16, [qd, an, ns, ar]: [u16; 4]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(512);
    for field in [id, flags, qd, an, ns, ar] {
        bytes.extend_from_slice(&field.to_be_bytes());
    }
    bytes
}

/// A question of class IN.
fn question(name: &[u8], qtype: u16) -> Vec<u8> {
    let mut bytes = name.to_vec();
    bytes.extend_from_slice(&qtype.to_be_bytes());
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes
}

/// An OPT record owned by the root with these EDNS version and options.
fn opt(version: u8, options: &[u8]) -> Vec<u8> {
    opt_with_length(version, options, options.len())
}

/// An OPT record whose RDLENGTH says `rdlength`, whatever follows.
fn opt_with_length(version: u8, options: &[u8], rdlength: usize) -> Vec<u8> {
    let mut bytes = vec![0]; // root
    bytes.extend_from_slice(&TYPE_OPT.to_be_bytes());
    bytes.extend_from_slice(&1232u16.to_be_bytes());
    bytes.extend_from_slice(&[0, version, 0, 0]); // extended RCODE, version, flags
    bytes.extend_from_slice(&(rdlength as u16).to_be_bytes());
    bytes.extend_from_slice(options);
    bytes
}

fn option(code: u16, data: &[u8]) -> Vec<u8> {
    let mut bytes = code.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(data.len() as u16).to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// www.example.test A, with an OPT record holding `options` when given.
fn query(id: u16, options: Option<&[u8]>) -> Vec<u8> {
    let mut bytes = header(id, RD, [1, 0, 0, u16::from(options.is_some())]);
    bytes.extend(question(WWW, TYPE_A));
    if let Some(options) = options {
        bytes.extend(opt(0, options));
    }
    bytes
}

fn with_ecs(data: &[u8]) -> Vec<u8> {
    query(0, Some(&option(OPTION_ECS, data)))
}

/// What the server must do with a packet.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// No response at all.
    Dropped,
    /// A response with this RCODE (the full value: OPT's extended bits included).
    Rcode(u16),
    /// The normal answer for www.example.test A.
    Answer,
}

struct Case {
    what: String,
    packet: Vec<u8>,
    expect: Expect,
}

fn case(what: impl Into<String>, packet: Vec<u8>, expect: Expect) -> Case {
    Case {
        what: what.into(),
        packet,
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let mut cases = vec![case("an empty datagram", Vec::new(), Dropped)];
    let valid = query(0, None);
    for length in 1..12 {
        cases.push(case(
            format!("{length} bytes: shorter than a header"),
            valid[..length].to_vec(),
            Dropped,
        ));
    }

    let mut response = query(0, None);
    response[2] |= (QR >> 8) as u8;
    cases.push(case("a response (QR=1)", response, Dropped));

    cases.push(case(
        "a header announcing a question, and nothing else",
        header(0, RD, [1, 0, 0, 0]),
        Rcode(FORMERR),
    ));
    cases.push(case(
        "no question",
        header(0, RD, [0, 0, 0, 0]),
        Rcode(FORMERR),
    ));

    let mut two = header(0, RD, [2, 0, 0, 0]);
    two.extend(question(WWW, TYPE_A));
    two.extend(question(WWW, TYPE_TXT));
    cases.push(case("two questions", two, Rcode(FORMERR)));

    let named = |what: &str, name: &[u8], expect: Expect| {
        let mut packet = header(0, RD, [1, 0, 0, 0]);
        packet.extend_from_slice(name);
        packet.extend_from_slice(&TYPE_A.to_be_bytes());
        packet.extend_from_slice(&1u16.to_be_bytes());
        case(what, packet, expect)
    };
    let mut long_label = vec![64u8];
    long_label.extend_from_slice(&[b'a'; 64]);
    long_label.push(0);
    cases.push(named("a 64-octet label", &long_label, Rcode(FORMERR)));
    let mut long_name = Vec::new();
    for _ in 0..5 {
        long_name.push(63u8);
        long_name.extend_from_slice(&[b'a'; 63]);
    }
    long_name.push(0);
    cases.push(named(
        "a name longer than 255 octets",
        &long_name,
        Rcode(FORMERR),
    ));
    // Offset 12 is where the question name starts.
    cases.push(named(
        "a compression pointer to itself",
        &[0xc0, 12],
        Rcode(FORMERR),
    ));
    // Pointers that only go backwards cannot loop, so one of two pointers to each other is
    // a forward pointer: rejected as such before any loop could start.
    cases.push(named(
        "two compression pointers to each other",
        &[0xc0, 14, 0xc0, 12],
        Rcode(FORMERR),
    ));
    cases.push(named(
        "a compression pointer past the packet",
        &[0xc0, 0xff],
        Rcode(FORMERR),
    ));
    cases.push(named(
        "a reserved label type (0x80)",
        &[0x80, 1, b'a', 0],
        Rcode(FORMERR),
    ));

    let mut runs_past = header(0, RD, [1, 0, 0, 0]);
    runs_past.extend_from_slice(b"\x07exa");
    cases.push(case(
        "a label running past the packet end",
        runs_past,
        Rcode(FORMERR),
    ));
    let mut no_root = header(0, RD, [1, 0, 0, 0]);
    no_root.extend_from_slice(b"\x03www");
    cases.push(case(
        "a name without its root label",
        no_root,
        Rcode(FORMERR),
    ));
    let mut no_class = header(0, RD, [1, 0, 0, 0]);
    no_class.extend_from_slice(WWW);
    no_class.extend_from_slice(&TYPE_A.to_be_bytes());
    cases.push(case(
        "a question without its class",
        no_class,
        Rcode(FORMERR),
    ));

    // A forward pointer: the question name points into the additional record's data, where a
    // valid name sits. Header 12 + pointer 2 + type/class 4 = 18; the record's owner (root),
    // type, class, TTL and RDLENGTH take 11 more: its data starts at offset 29.
    let mut forward = header(0, RD, [1, 0, 0, 1]);
    forward.extend(question(&[0xc0, 29], TYPE_A));
    forward.push(0);
    forward.extend_from_slice(&TYPE_TXT.to_be_bytes());
    forward.extend_from_slice(&1u16.to_be_bytes());
    forward.extend_from_slice(&0u32.to_be_bytes());
    forward.extend_from_slice(&(WWW.len() as u16).to_be_bytes());
    forward.extend_from_slice(WWW);
    assert_eq!(forward[29..], *WWW, "the pointer's target");
    cases.push(case(
        "a forward compression pointer",
        forward,
        Rcode(FORMERR),
    ));

    for (opcode, what) in [
        (1u16, "IQUERY"),
        (2, "STATUS"),
        (4, "NOTIFY"),
        (5, "UPDATE"),
        (15, "unassigned opcode 15"),
    ] {
        let mut packet = query(0, None);
        packet[2] |= (opcode << 3) as u8;
        cases.push(case(format!("opcode {what}"), packet, Rcode(NOTIMP)));
    }

    let mut edns1 = header(0, RD, [1, 0, 0, 1]);
    edns1.extend(question(WWW, TYPE_A));
    edns1.extend(opt(1, &[]));
    cases.push(case("EDNS version 1", edns1, Rcode(BADVERS)));

    let mut two_opts = header(0, RD, [1, 0, 0, 2]);
    two_opts.extend(question(WWW, TYPE_A));
    two_opts.extend(opt(0, &[]));
    two_opts.extend(opt(0, &[]));
    cases.push(case("two OPT records", two_opts, Rcode(FORMERR)));

    let mut owned = header(0, RD, [1, 0, 0, 1]);
    owned.extend(question(WWW, TYPE_A));
    let mut record = opt(0, &[]);
    record.splice(0..1, WWW.iter().copied());
    owned.extend(record);
    cases.push(case(
        "an OPT record not owned by the root",
        owned,
        Rcode(FORMERR),
    ));

    cases.push(case(
        "an EDNS option running past the OPT data",
        query(0, Some(&[0, 8, 0, 40, 0, 1])),
        Rcode(FORMERR),
    ));
    cases.push(case(
        "half an EDNS option header",
        query(0, Some(&[0, 12, 0])),
        Rcode(FORMERR),
    ));
    let mut past_packet = header(0, RD, [1, 0, 0, 1]);
    past_packet.extend(question(WWW, TYPE_A));
    past_packet.extend(opt_with_length(0, &[], 100));
    cases.push(case(
        "OPT data running past the packet",
        past_packet,
        Rcode(FORMERR),
    ));
    cases.push(case(
        "4000 bytes of EDNS padding",
        query(0, Some(&option(OPTION_PADDING, &[0; 4000]))),
        Answer,
    ));
    cases.push(case(
        "an unknown EDNS option",
        query(0, Some(&option(65_001, b"whatever!!"))),
        Answer,
    ));
    cases.push(case(
        "a valid client subnet",
        with_ecs(&[0, 1, 24, 0, 81, 2, 69]),
        Answer,
    ));
    for (what, data) in [
        ("family 3", &[0u8, 3, 24, 0, 81, 2, 69][..]),
        ("family 0", &[0, 0, 0, 0]),
        ("a non-zero scope", &[0, 1, 24, 8, 81, 2, 69]),
        ("host bits set", &[0, 1, 23, 0, 81, 2, 69]),
        ("too many address bytes", &[0, 1, 24, 0, 81, 2, 69, 0]),
        ("too few address bytes", &[0, 1, 24, 0, 81, 2]),
        ("a source prefix of 33", &[0, 1, 33, 0, 1, 2, 3, 4, 5]),
        ("an IPv6 source prefix of 129", &[0, 2, 129, 0]),
        ("fewer than 4 bytes", &[0, 1, 24]),
    ] {
        cases.push(case(
            format!("a client subnet with {what}"),
            with_ecs(data),
            Rcode(FORMERR),
        ));
    }
    let mut twice = option(OPTION_ECS, &[0, 1, 24, 0, 81, 2, 69]);
    twice.extend(option(OPTION_ECS, &[0, 1, 24, 0, 81, 2, 69]));
    cases.push(case(
        "two client subnet options",
        query(0, Some(&twice)),
        Rcode(FORMERR),
    ));

    let mut trailing = query(0, None);
    trailing.extend_from_slice(b"garbage");
    cases.push(case(
        "trailing garbage after the question",
        trailing,
        Rcode(FORMERR),
    ));
    let mut trailing_opt = query(0, Some(&[]));
    trailing_opt.push(0);
    cases.push(case(
        "trailing garbage after the OPT record",
        trailing_opt,
        Rcode(FORMERR),
    ));
    let mut missing = header(0, RD, [1, 0, 0, 1]);
    missing.extend(question(WWW, TYPE_A));
    cases.push(case(
        "an announced additional record that is missing",
        missing,
        Rcode(FORMERR),
    ));
    let mut implausible = header(0, RD, [1, 0xffff, 0, 0]);
    implausible.extend(question(WWW, TYPE_A));
    cases.push(case(
        "65535 answer records announced",
        implausible,
        Rcode(FORMERR),
    ));

    let mut opt_question = header(0, RD, [1, 0, 0, 0]);
    opt_question.extend(question(WWW, TYPE_OPT));
    cases.push(case("a question of type OPT", opt_question, Rcode(FORMERR)));
    let mut axfr = header(0, 0, [1, 0, 0, 0]);
    axfr.extend(question(b"\x07example\x04test\x00", TYPE_AXFR));
    cases.push(case("AXFR (not offered)", axfr, Rcode(REFUSED)));
    cases
}

fn id_of(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[0], packet[1]])
}

/// Gives a packet its own ID (packets shorter than an ID keep their bytes).
fn set_id(packet: &mut [u8], id: u16) {
    if packet.len() >= 2 {
        packet[..2].copy_from_slice(&id.to_be_bytes());
    }
}

/// Checks a response to `sent` against `expect`, which is not [`Expect::Dropped`].
fn check(what: &str, sent: &[u8], response: &[u8], expect: Expect) {
    let message =
        Message::from_vec(response).unwrap_or_else(|e| panic!("{what}: unparsable response: {e}"));
    assert_eq!(id_of(response), id_of(sent), "{what}: ID echoed");
    assert!(response[2] & 0x80 != 0, "{what}: QR");
    assert_eq!(
        (response[2] >> 3) & 0x0f,
        (sent[2] >> 3) & 0x0f,
        "{what}: opcode echoed"
    );
    let low = u16::from(response[3] & 0x0f);
    let high = message
        .edns
        .as_ref()
        .map_or(0, |e| u16::from(e.rcode_high()));
    let rcode = (high << 4) | low;
    match expect {
        Expect::Dropped => panic!("{what}: answered, but it must be dropped"),
        Expect::Rcode(expected) => {
            assert_eq!(rcode, expected, "{what}: RCODE");
            assert!(message.answers.is_empty(), "{what}: no answer");
            if expected == BADVERS {
                // RFC 6891 §6.1.3: 16 does not fit the header: 0 there, 1 in the OPT record,
                // which says which version we do speak.
                assert_eq!(low, 0, "{what}: header RCODE");
                let edns = message.edns.as_ref().expect("BADVERS needs an OPT record");
                assert_eq!(edns.rcode_high(), 1, "{what}: extended RCODE");
                assert_eq!(edns.version(), 0, "{what}: our EDNS version");
            }
        }
        Expect::Answer => {
            assert_eq!(rcode, 0, "{what}: RCODE");
            assert_eq!(
                addresses(&message),
                vec!["192.0.2.80".parse::<std::net::IpAddr>().unwrap()],
                "{what}: answer"
            );
        }
    }
}

/// One UDP socket talking to the server, so that dropped packets can be batched: whatever
/// the server sends comes back here, in order.
struct UdpProbe {
    socket: UdpSocket,
    server: SocketAddr,
    next_id: u16,
}

impl UdpProbe {
    async fn new(server: SocketAddr) -> UdpProbe {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        UdpProbe {
            socket,
            server,
            next_id: 0xc000,
        }
    }

    async fn send(&self, packet: &[u8]) {
        self.socket.send_to(packet, self.server).await.unwrap();
    }

    async fn receive(&self) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; 65_535];
        match timeout(WAIT, self.socket.recv_from(&mut buffer)).await {
            Ok(Ok((n, _))) => Some(buffer[..n].to_vec()),
            _ => None,
        }
    }

    /// Sends a valid query and waits for its answer; returns every other response that came
    /// back first. Panics if the answer does not come within [`WAIT`].
    async fn still_answers(&mut self, after: &str) -> Vec<Vec<u8>> {
        self.next_id = self.next_id.wrapping_add(1);
        let marker = query(self.next_id, None);
        self.send(&marker).await;
        let mut others = Vec::new();
        loop {
            let response = self
                .receive()
                .await
                .unwrap_or_else(|| panic!("no answer to a valid query after {after}"));
            if id_of(&response) == self.next_id {
                check(
                    &format!("valid query after {after}"),
                    &marker,
                    &response,
                    Expect::Answer,
                );
                return others;
            }
            others.push(response);
        }
    }
}

#[tokio::test]
async fn malformed_udp_packets_are_answered_or_dropped_and_the_server_keeps_serving() {
    let server = TestServer::start(&bundled_config()).await;
    let mut probe = UdpProbe::new(server.addr).await;
    let mut dropped = Vec::new();
    for (i, case) in cases().into_iter().enumerate() {
        let mut packet = case.packet;
        set_id(&mut packet, 0x1000 + i as u16);
        if case.expect == Expect::Dropped {
            dropped.push((case.what, packet));
            continue;
        }
        probe.send(&packet).await;
        let response = probe
            .receive()
            .await
            .unwrap_or_else(|| panic!("{}: no response within {WAIT:?}", case.what));
        check(&case.what, &packet, &response, case.expect);
        let stray = probe.still_answers(&case.what).await;
        assert!(stray.is_empty(), "{}: extra responses {stray:?}", case.what);
    }

    // Dropped packets, batched: nothing may come back before the valid query's answer.
    for (_, packet) in &dropped {
        probe.send(packet).await;
    }
    let what: Vec<&str> = dropped.iter().map(|(what, _)| what.as_str()).collect();
    let stray = probe.still_answers("the dropped packets").await;
    assert!(
        stray.is_empty(),
        "responses to packets that must be dropped ({what:?}): {stray:?}"
    );
    server.stop().await;
}

/// Writes one length-prefixed message.
async fn send_framed(stream: &mut TcpStream, packet: &[u8]) {
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.unwrap();
}

/// What came back on a TCP connection within [`WAIT`].
#[derive(Debug, PartialEq)]
enum TcpReply {
    Message(Vec<u8>),
    /// The server closed (or reset) the connection.
    Closed,
    /// Nothing within [`WAIT`]: the server is stalling.
    Silent,
}

async fn receive_framed(stream: &mut TcpStream) -> TcpReply {
    let read = async {
        let mut length = [0u8; 2];
        if stream.read_exact(&mut length).await.is_err() {
            return TcpReply::Closed;
        }
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
        match stream.read_exact(&mut message).await {
            Ok(_) => TcpReply::Message(message),
            Err(_) => TcpReply::Closed,
        }
    };
    timeout(WAIT, read).await.unwrap_or(TcpReply::Silent)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connected within 2 s")
        .expect("connect")
}

/// A valid query on `stream` is answered.
async fn tcp_still_answers(stream: &mut TcpStream, id: u16, after: &str) {
    let valid = query(id, None);
    send_framed(stream, &valid).await;
    match receive_framed(stream).await {
        TcpReply::Message(response) => check(
            &format!("valid TCP query after {after}"),
            &valid,
            &response,
            Expect::Answer,
        ),
        other => panic!("valid TCP query after {after}: {other:?}"),
    }
}

#[tokio::test]
async fn malformed_tcp_messages_are_answered_or_the_connection_closed() {
    let server = TestServer::start(&bundled_config()).await;
    for (i, case) in cases().into_iter().enumerate() {
        let id = 0x2000 + i as u16;
        let mut packet = case.packet;
        set_id(&mut packet, id);
        let mut stream = connect(server.addr).await;
        send_framed(&mut stream, &packet).await;
        let reply = receive_framed(&mut stream).await;
        match (case.expect, reply) {
            (Expect::Dropped, TcpReply::Closed) => {
                // Not a DNS client: the connection is gone; a new one is served.
                let mut fresh = connect(server.addr).await;
                tcp_still_answers(&mut fresh, id ^ 0x8000, &case.what).await;
            }
            (Expect::Dropped, other) => {
                panic!("{}: must close the connection, got {other:?}", case.what)
            }
            (expect, TcpReply::Message(response)) => {
                check(&case.what, &packet, &response, expect);
                // The connection survives a malformed message.
                tcp_still_answers(&mut stream, id ^ 0x8000, &case.what).await;
            }
            (_, other) => panic!("{}: expected a response, got {other:?}", case.what),
        }
    }
    server.stop().await;
}

/// Several messages in one write, a malformed one among them: answered in order.
#[tokio::test]
async fn pipelined_tcp_queries_around_a_malformed_one() {
    let server = TestServer::start(&bundled_config()).await;
    let mut stream = connect(server.addr).await;
    let first = query(1, None);
    let mut malformed = query(2, None);
    malformed.extend_from_slice(b"trailing");
    let last = query(3, Some(&[]));
    let mut batch = Vec::new();
    for packet in [&first, &malformed, &last] {
        batch.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        batch.extend_from_slice(packet);
    }
    stream.write_all(&batch).await.unwrap();
    for (packet, expect) in [
        (&first, Expect::Answer),
        (&malformed, Expect::Rcode(FORMERR)),
        (&last, Expect::Answer),
    ] {
        match receive_framed(&mut stream).await {
            TcpReply::Message(response) => check("pipelined", packet, &response, expect),
            other => panic!("pipelined query {}: {other:?}", id_of(packet)),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_tcp_frame_announcing_65535_bytes_then_closing() {
    let server = TestServer::start(&bundled_config()).await;
    for sent in [0usize, 100, 65_534] {
        let mut stream = connect(server.addr).await;
        let mut bytes = vec![0xff, 0xff];
        bytes.extend(std::iter::repeat_n(0xa5u8, sent));
        stream.write_all(&bytes).await.unwrap();
        stream.shutdown().await.unwrap();
        // The server sees the end of the stream mid-message and closes its side.
        assert_eq!(
            receive_framed(&mut stream).await,
            TcpReply::Closed,
            "{sent} of 65535 bytes"
        );
        drop(stream);
        let mut fresh = connect(server.addr).await;
        tcp_still_answers(&mut fresh, 5, &format!("{sent} of 65535 bytes")).await;
    }
    let mut probe = UdpProbe::new(server.addr).await;
    assert!(probe.still_answers("short TCP frames").await.is_empty());
    server.stop().await;
}

/// Connections that stall (half a length prefix, a frame announced and not sent, nothing at
/// all) hold their own task only: other clients are served meanwhile.
#[tokio::test]
async fn stalled_tcp_connections_do_not_stall_other_clients() {
    let server = TestServer::start(&bundled_config()).await;
    let mut stalled = Vec::new();
    for bytes in [
        &[0x00][..],
        &[0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        &[],
    ] {
        for _ in 0..10 {
            let mut stream = connect(server.addr).await;
            stream.write_all(bytes).await.unwrap();
            stalled.push(stream);
        }
    }
    // With a 10 s idle timeout, every stalled connection is still open while these run.
    for round in 0..3 {
        let mut fresh = connect(server.addr).await;
        tcp_still_answers(&mut fresh, 40 + round, "30 stalled connections").await;
        let mut probe = UdpProbe::new(server.addr).await;
        assert!(
            probe
                .still_answers("30 stalled connections")
                .await
                .is_empty()
        );
    }
    // And they are still open: nothing was answered or closed on them.
    for stream in &mut stalled {
        let mut byte = [0u8; 1];
        assert!(
            timeout(Duration::from_millis(10), stream.read(&mut byte))
                .await
                .is_err(),
            "a stalled connection got a reply or was closed early"
        );
    }
    drop(stalled);
    server.stop().await;
}

/// The idle timeout cuts stalled connections off, wherever in a message they stall.
#[tokio::test]
async fn the_idle_timeout_closes_stalled_connections() {
    let scratch = Scratch::new();
    let config = scratch.read("zones/meridian.toml");
    assert!(config.contains("tcp_idle_timeout_ms = 10000"));
    scratch.replace(
        "zones/meridian.toml",
        &config.replace("tcp_idle_timeout_ms = 10000", "tcp_idle_timeout_ms = 300"),
    );
    let server = TestServer::start(&scratch.config()).await;
    let mut stalled = Vec::new();
    for bytes in [&[0x00][..], &[0xff, 0xff, 1, 2, 3], &[]] {
        let mut stream = connect(server.addr).await;
        stream.write_all(bytes).await.unwrap();
        stalled.push(stream);
    }
    for (i, stream) in stalled.iter_mut().enumerate() {
        assert_eq!(
            receive_framed(stream).await,
            TcpReply::Closed,
            "stalled connection {i} not closed within {WAIT:?}"
        );
    }
    let mut fresh = connect(server.addr).await;
    tcp_still_answers(&mut fresh, 9, "idle connections were closed").await;
    server.stop().await;
}

/// xorshift64: deterministic, so a failing fuzz run replays exactly.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Valid queries through every answer path: zone data, GSLB with ECS, the explanation,
/// truncation, a referral, NXDOMAIN, and a plain query without EDNS.
fn fuzz_seeds() -> Vec<Vec<u8>> {
    let ecs = option(OPTION_ECS, &[0, 1, 24, 0, 81, 2, 69]);
    let with = |name: &[u8], qtype: u16, options: Option<&[u8]>| {
        let mut packet = header(0, RD, [1, 0, 0, u16::from(options.is_some())]);
        packet.extend(question(name, qtype));
        if let Some(options) = options {
            packet.extend(opt(0, options));
        }
        packet
    };
    vec![
        with(WWW, TYPE_A, Some(&ecs)),
        with(b"\x03api\x07example\x04test\x00", TYPE_A, Some(&ecs)),
        with(
            b"\x04_why\x03api\x07example\x04test\x00",
            TYPE_TXT,
            Some(&ecs),
        ),
        with(b"\x03big\x07example\x04test\x00", TYPE_TXT, Some(&[])),
        with(b"\x01x\x03lab\x07example\x04test\x00", TYPE_A, None),
        with(b"\x04nope\x07example\x04test\x00", TYPE_A, Some(&[])),
        with(b"\x07example\x04test\x00", 2, None),
    ]
}

/// One mutation of a seed: flipped bytes, a truncation, special values (pointers, label
/// types, lengths), inserted or appended bytes.
fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut packet = seed.to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(6) {
            0 | 1 => {
                for _ in 0..=rng.below(4) {
                    if !packet.is_empty() {
                        let at = rng.below(packet.len());
                        packet[at] ^= rng.byte() | 1;
                    }
                }
            }
            2 => {
                let keep = rng.below(packet.len() + 1);
                packet.truncate(keep);
            }
            3 => {
                if !packet.is_empty() {
                    let at = rng.below(packet.len());
                    packet[at] = [0x00, 0xff, 0xc0, 0xc0 | 12, 0x3f, 0x40, 0x80, 41][rng.below(8)];
                }
            }
            4 => {
                let at = rng.below(packet.len() + 1);
                let count = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..count).map(|_| rng.byte()).collect();
                packet.splice(at..at, bytes);
            }
            _ => {
                let count = 1 + rng.below(16);
                packet.extend((0..count).map(|_| rng.byte()));
            }
        }
    }
    packet
}

fn must_be_dropped(packet: &[u8]) -> bool {
    matches!(parse_query(packet), Err(QueryError::Drop { .. }))
}

/// 2000 mutated queries over UDP, in batches closed by a valid query: every packet the
/// decoder does not drop gets exactly one well-formed response, dropped ones get none.
#[tokio::test]
async fn udp_fuzz_never_stalls_or_garbles() {
    const PACKETS: u16 = 2000;
    const BATCH: u16 = 25;
    let server = TestServer::start(&bundled_config()).await;
    let mut probe = UdpProbe::new(server.addr).await;
    let seeds = fuzz_seeds();
    let mut rng = XorShift(0x5eed_d15c_0ba1_1e57);
    let (mut answered, mut dropped) = (0, 0);
    for batch in 0..PACKETS / BATCH {
        let mut expected = HashSet::new();
        let mut sent = std::collections::HashMap::new();
        for i in 0..BATCH {
            let id = batch * BATCH + i;
            let seed = &seeds[rng.below(seeds.len())];
            let mut packet = mutate(&mut rng, seed);
            // A mutated packet keeps a known ID so its response can be matched; packets too
            // short to carry one are only ever dropped.
            if packet.len() < 2 {
                assert!(must_be_dropped(&packet));
                dropped += 1;
            } else {
                set_id(&mut packet, id);
                if must_be_dropped(&packet) {
                    dropped += 1;
                } else {
                    expected.insert(id);
                }
            }
            probe.send(&packet).await;
            sent.insert(id, packet);
        }
        // Several workers serve one socket, so responses to a batch may arrive in any
        // order (also after a later query's): collect by ID until every expected one came.
        // IDs are unique over the run, so a response to a packet that had to be dropped is
        // caught whichever batch it arrives in.
        let mut seen = HashSet::new();
        while !expected.is_subset(&seen) {
            let response = probe.receive().await.unwrap_or_else(|| {
                let missing: Vec<_> = expected.difference(&seen).map(|id| &sent[id]).collect();
                panic!("fuzz batch {batch}: no response to {missing:?}")
            });
            let message = Message::from_vec(&response).unwrap_or_else(|e| {
                panic!("fuzz batch {batch}: unparsable response {response:?}: {e}")
            });
            let id = id_of(&response);
            assert!(response[2] & 0x80 != 0, "fuzz: QR not set in {message:?}");
            assert!(
                expected.contains(&id),
                "fuzz: a response to packet {id} {:?}, which must be dropped (or is late)",
                sent.get(&id)
            );
            assert!(seen.insert(id), "fuzz: two responses to packet {id}");
            assert!(
                response.len() <= 1232,
                "fuzz: {} bytes over UDP",
                response.len()
            );
        }
        answered += seen.len();
    }
    eprintln!("UDP fuzz: {answered} answered, {dropped} dropped");
    // The mutations reach both outcomes, so the loop tests something either way.
    assert!(
        answered > 200 && dropped > 50,
        "answered {answered}, dropped {dropped}"
    );
    assert!(probe.still_answers("the fuzz run").await.is_empty());
    server.stop().await;
}

/// The same over TCP, one message at a time: a response or a closed connection, never
/// silence, and always a well-formed response.
#[tokio::test]
async fn tcp_fuzz_never_stalls_or_garbles() {
    const PACKETS: u16 = 300;
    let server = TestServer::start(&bundled_config()).await;
    let seeds = fuzz_seeds();
    let mut rng = XorShift(0x7c9f_0d1e_55aa_0133);
    let mut stream = connect(server.addr).await;
    for id in 0..PACKETS {
        let seed = &seeds[rng.below(seeds.len())];
        let mut packet = mutate(&mut rng, seed);
        set_id(&mut packet, id);
        send_framed(&mut stream, &packet).await;
        match receive_framed(&mut stream).await {
            TcpReply::Message(response) => {
                assert!(!must_be_dropped(&packet), "answered {packet:?}");
                let message = Message::from_vec(&response)
                    .unwrap_or_else(|e| panic!("unparsable response to {packet:?}: {e}"));
                assert_eq!(message.metadata.id, id);
                assert!(response[2] & 0x80 != 0);
            }
            TcpReply::Closed => {
                assert!(must_be_dropped(&packet), "closed after {packet:?}");
                stream = connect(server.addr).await;
            }
            TcpReply::Silent => panic!("no response and no close after {packet:?}"),
        }
    }
    tcp_still_answers(&mut stream, 0xabcd, "the TCP fuzz run").await;
    server.stop().await;
}
