//! Zone transfer to secondaries through the real paths: a Knot DNS secondary of the
//! `meridian` binary on loopback (initial AXFR, then NOTIFY and a re-transfer after the zone
//! file changes), access control from two loopback addresses, transfers refused over UDP, and
//! a 20 000-record zone split across many messages, read by a raw client parsing with
//! hickory and by `dig`; and TSIG (RFC 8945): transfers and NOTIFYs signed with a
//! `[[tsig_key]]`, checked by `dig -y` and by a Knot secondary holding the same key, and
//! requests without the key's signature refused.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType},
};
use meridian::{
    config::model::TsigAlgorithm,
    dns::tsig::{self, Key},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

const EXAMPLE_SERIAL: u32 = 2026112101;

/// Adds keys to the bundled config's `[[zone]]` for example.test.
fn zone_keys(scratch: &Scratch, keys: &str) {
    let config = scratch.read("zones/meridian.toml");
    let anchor = "file = \"example.test.zone\"\n";
    assert!(
        config.contains(anchor),
        "example config changed: update this test"
    );
    scratch.replace(
        "zones/meridian.toml",
        &config.replacen(anchor, &format!("{anchor}{keys}\n"), 1),
    );
}

fn query_packet(zone: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(0x5eed, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(zone).unwrap(), qtype));
    message.to_vec().unwrap()
}

/// A transfer over TCP from `from` (any loopback address): the response messages, read until
/// the closing SOA or an error RCODE.
async fn transfer(server: SocketAddr, from: IpAddr, zone: &str, qtype: RecordType) -> Vec<Message> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let packet = query_packet(zone, qtype);
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    stream.write_all(&framed).await.unwrap();

    let mut messages = Vec::new();
    let mut soas = 0;
    // Bounded: a transfer of the largest zone here is far fewer messages.
    for _ in 0..10_000 {
        let read = async {
            let mut length = [0u8; 2];
            stream.read_exact(&mut length).await?;
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(length))];
            stream.read_exact(&mut body).await?;
            std::io::Result::Ok(body)
        };
        let body = tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("next transfer message within 20 s")
            .expect("transfer message");
        let message = Message::from_vec(&body).expect("a DNS message");
        assert_eq!(message.metadata.id, 0x5eed);
        soas += message
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .count();
        let failed = message.metadata.response_code != ResponseCode::NoError;
        messages.push(message);
        if failed || soas >= 2 {
            return messages;
        }
    }
    panic!("no closing SOA after 10 000 messages");
}

fn all_records(messages: &[Message]) -> Vec<Record> {
    messages.iter().flat_map(|m| m.answers.clone()).collect()
}

#[tokio::test]
async fn transfers_follow_the_allow_list_and_need_tcp() {
    let scratch = Scratch::new();
    zone_keys(&scratch, "transfer_to = [\"127.0.0.2\"]");
    let server = TestServer::start(&scratch.config()).await;
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let allowed: IpAddr = "127.0.0.2".parse().unwrap();

    let refused = transfer(server.addr, loopback, "example.test.", RecordType::AXFR).await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].metadata.response_code, ResponseCode::Refused);
    assert!(refused[0].answers.is_empty());

    let granted = transfer(server.addr, allowed, "example.test.", RecordType::AXFR).await;
    let records = all_records(&granted);
    assert_eq!(granted[0].metadata.response_code, ResponseCode::NoError);
    assert!(granted[0].metadata.authoritative);
    let (first, last) = (records.first().unwrap(), records.last().unwrap());
    assert_eq!(first.record_type(), RecordType::SOA);
    assert_eq!(first, last, "the closing SOA repeats the opening one");
    let has = |name: &str, rtype: RecordType| {
        records
            .iter()
            .any(|r| r.name == Name::from_ascii(name).unwrap() && r.record_type() == rtype)
    };
    assert!(has("www.example.test.", RecordType::HTTPS));
    assert!(
        has("lab.example.test.", RecordType::NS),
        "delegations are transferred"
    );
    assert!(
        has("ns.lab.example.test.", RecordType::A),
        "glue is transferred"
    );
    assert!(has("*.apps.example.test.", RecordType::A));
    // A GSLB name is transferred as its static fallback, so a secondary never says NXDOMAIN.
    assert!(has("api.example.test.", RecordType::A));
    assert!(!has("_why.api.example.test.", RecordType::TXT));

    // Not a zone apex we hold: NOTAUTH, even for an allowed client.
    let other = transfer(server.addr, allowed, "www.example.test.", RecordType::AXFR).await;
    assert_eq!(other[0].metadata.response_code, ResponseCode::NotAuth);

    // IXFR is answered in full, AXFR-style (RFC 1995 §4).
    let incremental = transfer(server.addr, allowed, "example.test.", RecordType::IXFR).await;
    assert_eq!(all_records(&incremental), records);

    // UDP: AXFR is refused (RFC 5936 §4.2 defines none); IXFR gets the SOA alone ("use
    // TCP", RFC 1995 §2), even for a client that may not transfer: it is public data.
    let wait = Duration::from_secs(5);
    let axfr = raw_udp(
        server.addr,
        &query_packet("example.test.", RecordType::AXFR),
        wait,
    )
    .await
    .expect("an answer");
    assert_eq!(
        Message::from_vec(&axfr).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
    let ixfr = raw_udp(
        server.addr,
        &query_packet("example.test.", RecordType::IXFR),
        wait,
    )
    .await
    .expect("an answer");
    let ixfr = Message::from_vec(&ixfr).unwrap();
    assert_eq!(ixfr.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ixfr.answers, vec![first.clone()]);

    server.stop().await;
}

#[tokio::test]
async fn without_transfer_to_every_transfer_is_refused() {
    let scratch = Scratch::new();
    let server = TestServer::start(&scratch.config()).await;
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let refused = transfer(server.addr, loopback, "example.test.", RecordType::AXFR).await;
    assert_eq!(refused[0].metadata.response_code, ResponseCode::Refused);
    server.stop().await;
}

const LARGE_RECORDS: usize = 20_000;

fn write_large_zone(path: &Path) {
    let mut text = String::from(
        "$ORIGIN big.test.\n$TTL 300\n@ SOA ns1.big.test. hostmaster.big.test. 7 3600 600 86400 60\n\
         @ NS ns1.big.test.\nns1 A 192.0.2.1\n",
    );
    // Apex SOA, NS and ns1 A are three; the rest are hosts.
    for i in 0..LARGE_RECORDS - 3 {
        text.push_str(&format!(
            "host-{i:05} A 10.{}.{}.{}\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_large_zone_is_transferred_completely_in_many_messages() {
    let scratch = Scratch::new();
    write_large_zone(&scratch.path("zones/big.test.zone"));
    let mut config = scratch.read("zones/meridian.toml");
    config.push_str(
        "\n[[zone]]\norigin = \"big.test.\"\nfile = \"big.test.zone\"\ntransfer_to = [\"127.0.0.0/8\"]\n",
    );
    scratch.replace("zones/meridian.toml", &config);
    let server = TestServer::start(&scratch.config()).await;

    let messages = transfer(
        server.addr,
        "127.0.0.1".parse().unwrap(),
        "big.test.",
        RecordType::AXFR,
    )
    .await;
    let records = all_records(&messages);
    eprintln!("{} records in {} messages", records.len(), messages.len());
    assert!(messages.len() > 10, "{} messages", messages.len());
    // Every record once, plus the closing SOA.
    assert_eq!(records.len(), LARGE_RECORDS + 1);
    let mut names: Vec<String> = records
        .iter()
        .filter(|r| r.record_type() == RecordType::A)
        .map(|r| r.name.to_string())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), LARGE_RECORDS - 2);
    let last_host = Name::from_ascii(format!("host-{:05}.big.test.", LARGE_RECORDS - 4)).unwrap();
    assert!(records.iter().any(|r| r.name == last_host));

    // dig, an independent parser, agrees.
    if require_tool("dig") {
        // Off the runtime's thread: the server answers on this runtime.
        let port = server.addr.port().to_string();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("dig")
                .args(["-p", &port, "@127.0.0.1", "big.test.", "AXFR"])
                .output()
        })
        .await
        .unwrap()
        .expect("dig runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let summary = format!(
            "XFR size: {} records (messages {},",
            LARGE_RECORDS + 1,
            messages.len()
        );
        assert!(
            text.contains(&summary),
            "dig says: {}",
            text.lines().last().unwrap_or("")
        );
    }
    server.stop().await;
}

// --- TSIG ------------------------------------------------------------------------------------

const KEY_NAME: &str = "xfr-key.";
/// 32 random-looking octets, base64: what `tsig-keygen` prints.
const SECRET: &str = "9Q1qzRAbrdZiO1tTb3i0E3/WYa7oXS9cHDUDW8Y6xgM=";
const WRONG_SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Writes the key's secret file (0600) and its `[[tsig_key]]` into the scratch config.
fn add_key(scratch: &Scratch, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = scratch.path("zones/xfr.b64");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = scratch.read("zones/meridian.toml");
    config.push_str(&format!(
        "\n[[tsig_key]]\nname = \"{KEY_NAME}\"\nalgorithm = \"hmac-sha256\"\nsecret_file = \"xfr.b64\"\n"
    ));
    scratch.replace("zones/meridian.toml", &config);
}

/// `dig` against `server`, off the runtime's thread (the server answers on this runtime).
async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let mut all = vec!["+tries=1".to_owned(), "+time=5".to_owned()];
    all.extend([
        "-p".to_owned(),
        server.port().to_string(),
        "@127.0.0.1".to_owned(),
    ]);
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let output = tokio::task::spawn_blocking(move || Command::new("dig").args(&all).output())
        .await
        .unwrap()
        .expect("dig runs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text
}

/// A transfer request signed by the test's own TSIG code, sent over TCP: the first response
/// message, raw.
async fn signed_transfer(server: SocketAddr, key: &Key, zone: &str, time: u64) -> Vec<u8> {
    let mut packet = query_packet(zone, RecordType::AXFR);
    tsig::sign_request(key, &mut packet, time);
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    stream.write_all(&framed).await.unwrap();
    let read = async {
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut body).await?;
        std::io::Result::Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer within 20 s")
        .expect("a response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_with_a_transfer_key_transfers_only_signed_requests() {
    let scratch = Scratch::new();
    add_key(&scratch, SECRET);
    write_large_zone(&scratch.path("zones/big.test.zone"));
    let mut config = scratch.read("zones/meridian.toml");
    config.push_str(&format!(
        "\n[[zone]]\norigin = \"big.test.\"\nfile = \"big.test.zone\"\ntransfer_to = [\"127.0.0.1\"]\ntransfer_key = \"{KEY_NAME}\"\n"
    ));
    scratch.replace("zones/meridian.toml", &config);
    zone_keys(
        &scratch,
        &format!("transfer_to = [\"127.0.0.1\"]\ntransfer_key = \"{KEY_NAME}\""),
    );
    let server = TestServer::start(&scratch.config()).await;
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();

    // Unsigned: refused, even from an allowed address.
    let unsigned = transfer(server.addr, loopback, "example.test.", RecordType::AXFR).await;
    assert_eq!(unsigned.len(), 1);
    assert_eq!(unsigned[0].metadata.response_code, ResponseCode::Refused);
    assert!(unsigned[0].answers.is_empty());

    let secret = tsig::decode_base64(SECRET).unwrap();
    let key = Key::new(
        Name::from_ascii(KEY_NAME).unwrap(),
        TsigAlgorithm::HmacSha256,
        &secret,
    );
    let now = tsig::unix_now();
    // Our own signer and verifier agree end to end (the chain is dig's to check, below).
    let granted = signed_transfer(server.addr, &key, "example.test.", now).await;
    assert_eq!(rcode_and_tsig_error(&granted), (ResponseCode::NoError, 0));
    // Signed too far in the past: NOTAUTH, BADTIME, our clock in Other Data, signed.
    let late = signed_transfer(server.addr, &key, "example.test.", now - 3_600).await;
    assert_eq!(rcode_and_tsig_error(&late), (ResponseCode::NotAuth, 18));
    let record = tsig::find(&late).unwrap().unwrap();
    assert_eq!(record.time_signed, now - 3_600);
    assert_eq!(record.other.len(), 6);
    assert_eq!(record.mac.len(), 32, "a BADTIME answer is signed");
    // Another key's name: NOTAUTH, BADKEY, unsigned.
    let stranger = Key::new(
        Name::from_ascii("other-key.").unwrap(),
        TsigAlgorithm::HmacSha256,
        &secret,
    );
    let unknown = signed_transfer(server.addr, &stranger, "example.test.", now).await;
    assert_eq!(rcode_and_tsig_error(&unknown), (ResponseCode::NotAuth, 17));
    assert!(tsig::find(&unknown).unwrap().unwrap().mac.is_empty());

    if require_tool("dig") {
        // dig signs with the key and verifies every message's MAC, chained (RFC 8945
        // §5.3.1): a transfer of many messages completes only if each one verifies.
        let signed_key = format!("hmac-sha256:{KEY_NAME}:{SECRET}");
        let text = dig(server.addr, &["-y", &signed_key, "big.test.", "AXFR"]).await;
        assert!(
            text.contains(&format!("XFR size: {} records", LARGE_RECORDS + 1)),
            "dig says:\n{}",
            tail(&text)
        );
        let text = dig(server.addr, &["-y", &signed_key, "example.test.", "AXFR"]).await;
        assert!(text.contains("XFR size:"), "dig says:\n{}", tail(&text));
        assert!(!text.contains("tsig"), "dig says:\n{}", tail(&text));

        // The wrong secret: BADSIG, nothing transferred.
        let wrong_key = format!("hmac-sha256:{KEY_NAME}:{WRONG_SECRET}");
        let text = dig(server.addr, &["-y", &wrong_key, "example.test.", "AXFR"]).await;
        assert!(!text.contains("XFR size:"), "dig says:\n{}", tail(&text));
        assert!(text.contains("BADSIG"), "dig says:\n{}", tail(&text));
        // No key: refused.
        let text = dig(server.addr, &["example.test.", "AXFR"]).await;
        assert!(!text.contains("XFR size:"), "dig says:\n{}", tail(&text));
    }

    // The wrong secret, to our own parser: NOTAUTH with BADSIG and no MAC.
    let forged = Key::new(
        Name::from_ascii(KEY_NAME).unwrap(),
        TsigAlgorithm::HmacSha256,
        &tsig::decode_base64(WRONG_SECRET).unwrap(),
    );
    let bad = signed_transfer(server.addr, &forged, "example.test.", now).await;
    assert_eq!(rcode_and_tsig_error(&bad), (ResponseCode::NotAuth, 16));
    assert!(tsig::find(&bad).unwrap().unwrap().mac.is_empty());
    server.stop().await;
}

fn rcode_and_tsig_error(response: &[u8]) -> (ResponseCode, u16) {
    let message = Message::from_vec(response).expect("a DNS message");
    let record = tsig::find(response)
        .expect("well-formed")
        .expect("a TSIG record");
    (message.metadata.response_code, record.error)
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

// --- A real secondary: Knot DNS ------------------------------------------------------------

/// Whether `knotd` is installed; in CI (CI=true) its absence is a failure.
fn knot_available() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v knotd"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "knotd is not installed, but CI must run this test (.ci/run installs knot)"
        );
        eprintln!("SKIPPED: knotd is not installed (apt-get install knot)");
    }
    found
}

/// A port free for UDP and TCP on 127.0.0.1 right now, for a server that cannot bind port 0
/// and report it (knotd). Both sockets close before it starts: a small, accepted race.
fn free_port() -> u16 {
    for _ in 0..64 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free UDP+TCP port pair on 127.0.0.1");
}

struct Knot {
    child: Child,
    log: std::path::PathBuf,
}

impl Knot {
    /// `secret`: the base64 secret of `xfr-key.`, which Knot then signs its transfer
    /// requests with and demands on NOTIFYs.
    fn start(dir: &Path, port: u16, primary: SocketAddr, secret: Option<&str>) -> Knot {
        let d = dir.display();
        let (keys, with_key) = match secret {
            Some(secret) => (
                format!(
                    "key:\n  - id: {KEY_NAME}\n    algorithm: hmac-sha256\n    secret: {secret}\n"
                ),
                format!("\n    key: {KEY_NAME}"),
            ),
            None => (String::new(), String::new()),
        };
        let config = format!(
            r#"{keys}server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
database:
    storage: "{d}/db"
control:
    listen: "{d}/knot.sock"
log:
  - target: stderr
    any: info
remote:
  - id: meridian
    address: {ip}@{primary_port}{with_key}
acl:
  - id: notify_from_meridian
    address: 127.0.0.1{with_key}
    action: notify
template:
  - id: default
    storage: "{d}/zones"
zone:
  - domain: example.test
    master: meridian
    acl: notify_from_meridian
"#,
            ip = primary.ip(),
            primary_port = primary.port(),
        );
        let conf = dir.join("knot.conf");
        std::fs::write(&conf, config).unwrap();
        let log = dir.join("knot.log");
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn knotd");
        Knot { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The answer section as comparable text, in a stable order.
fn answer_set(message: &Message) -> Vec<String> {
    let mut lines: Vec<String> = message.answers.iter().map(|r| r.to_string()).collect();
    lines.sort();
    lines
}

/// Polls `knot` until `done` holds for its answer to `name`/`qtype`, at most 30 s.
async fn wait_for(
    knot: &Knot,
    addr: SocketAddr,
    name: &str,
    qtype: RecordType,
    done: impl Fn(&Message) -> bool,
) -> Message {
    let client = udp_client(addr).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer =
            tokio::time::timeout(Duration::from_secs(2), ask(&client, name, qtype, None)).await;
        if let Ok(answer) = answer
            && done(&answer)
        {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the secondary did not get {name} {qtype} within 30 s; knotd log:\n{}",
            knot.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn soa_serial(message: &Message) -> Option<u32> {
    message.answers.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knot_secondary_transfers_the_zone_and_follows_notify() {
    knot_follows_meridian(false).await;
}

/// The same with TSIG on both sides: Knot signs its transfer requests and accepts only
/// signed NOTIFYs, so the zone reaching it at all, and the NOTIFY being taken, prove both
/// directions verify against an independent implementation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knot_secondary_with_the_key_transfers_and_takes_signed_notify() {
    knot_follows_meridian(true).await;
}

async fn knot_follows_meridian(signed: bool) {
    if !knot_available() {
        return;
    }
    let scratch = Scratch::new();
    let knot_dir = tempfile::tempdir().unwrap();
    let knot_port = free_port();
    let knot_addr: SocketAddr = ([127, 0, 0, 1], knot_port).into();
    let mut keys = format!("transfer_to = [\"127.0.0.1\"]\nnotify = [\"{knot_addr}\"]");
    if signed {
        add_key(&scratch, SECRET);
        keys.push_str(&format!("\ntransfer_key = \"{KEY_NAME}\""));
    }
    zone_keys(&scratch, &keys);
    let config = scratch.config();
    let meridian = Binary::dns(&["--config", config.to_str().unwrap()]);
    let primary: SocketAddr = meridian.ready["tcp"][0].as_str().unwrap().parse().unwrap();
    let knot = Knot::start(
        knot_dir.path(),
        knot_port,
        primary,
        signed.then_some(SECRET),
    );

    // Bootstrap: Knot transfers the zone as soon as it starts.
    wait_for(&knot, knot_addr, "example.test.", RecordType::SOA, |m| {
        soa_serial(m) == Some(EXAMPLE_SERIAL)
    })
    .await;

    // Static data: the secondary answers exactly as the primary does.
    let (ours, theirs) = (udp_client(meridian.udp).await, udp_client(knot_addr).await);
    for (name, qtype) in [
        ("example.test.", RecordType::NS),
        ("example.test.", RecordType::MX),
        ("example.test.", RecordType::CAA),
        ("www.example.test.", RecordType::A),
        ("www.example.test.", RecordType::AAAA),
        ("www.example.test.", RecordType::HTTPS),
        ("docs.example.test.", RecordType::CNAME),
        ("svc.example.test.", RecordType::SVCB),
        ("_https._tcp.example.test.", RecordType::SRV),
        ("mail._domainkey.example.test.", RecordType::TXT),
        ("x.apps.example.test.", RecordType::A),
        ("a.b.example.test.", RecordType::A),
    ] {
        let primary_answer = ask(&ours, name, qtype, None).await;
        let secondary_answer = ask(&theirs, name, qtype, None).await;
        assert!(
            !primary_answer.answers.is_empty(),
            "{name} {qtype}: no answer from Meridian"
        );
        assert_eq!(
            answer_set(&secondary_answer),
            answer_set(&primary_answer),
            "{name} {qtype}"
        );
    }
    // The GSLB name: a static fallback (the default region), not NXDOMAIN.
    let api = ask(&theirs, "api.example.test.", RecordType::A, None).await;
    assert_eq!(api.metadata.response_code, ResponseCode::NoError);
    assert!(!addresses(&api).is_empty(), "{api:?}");

    // A new serial with a new record: Meridian reloads on the file change and sends NOTIFY;
    // the zone's refresh interval (2 h) cannot be what brings the record within 30 s.
    let zone = scratch.read("zones/example.test.zone");
    let bumped = zone
        .replacen(
            &format!("{EXAMPLE_SERIAL} ; serial"),
            &format!("{} ; serial", EXAMPLE_SERIAL + 1),
            1,
        )
        .replacen("\nmail ", "\nnew         IN A     192.0.2.99\nmail ", 1);
    assert_ne!(bumped, zone, "example zone changed: update this test");
    scratch.replace("zones/example.test.zone", &bumped);
    let new = wait_for(&knot, knot_addr, "new.example.test.", RecordType::A, |m| {
        !m.answers.is_empty()
    })
    .await;
    assert_eq!(
        addresses(&new),
        vec!["192.0.2.99".parse::<IpAddr>().unwrap()]
    );
    let log = knot.log();
    assert!(log.contains("notify, incoming"), "knotd log:\n{log}");
    assert!(!log.contains("denied"), "knotd log:\n{log}");
    drop(meridian);
}
