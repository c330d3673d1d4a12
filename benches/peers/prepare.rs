//! The data `benches/dns_vs_peers.sh` hands to every server and to dnsperf, so that Meridian,
//! gdnsd and Knot DNS are measured on the same bytes.
//!
//! Two commands:
//! - `write-db OUT [--smoke]`: writes the synthetic GeoIP database of
//!   `benches/support/synthetic_geoip.rs` (the realistic size, or the smoke size) with the
//!   seed and database type of `benches/dns_path.rs`: the same networks and records the
//!   micro-benchmarks and `benches/dnsperf.sh` use. Only the build time differs: it is
//!   [`geo::CSV_BUILD_EPOCH`] rather than 0, because libmaxminddb (which gdnsd and Knot read
//!   databases with) rejects metadata whose `build_epoch` is 0.
//! - `queries DB DIR COUNT`: walks a GeoIP database (the synthetic one or a real
//!   GeoLite2-City) and samples `COUNT` client subnets from its networks, three IPv4 /24s to
//!   one IPv6 /56 as resolvers send them. It writes `DIR/gslb-ecs.blob`, one
//!   `api.example.test A` query per subnet with that subnet in an EDNS Client Subnet option,
//!   in dnsperf's `-B` format (each packet behind its 2-byte length), because dnsperf's `-E`
//!   can carry only one ECS option per run; and `DIR/ecs-checks.txt`, one subnet per
//!   continent found with the address every server must answer for it.
//!
//! Tooling only: it owns no server behaviour. The expected answers restate the continent map
//! of `zones/meridian.toml`, which the gdnsd and Knot templates in this folder restate too;
//! the harness asks every server for the checked subnets, so a map that drifted in one place
//! fails the run instead of skewing it.

// Only the generator is needed here: sampling walks the written database instead, so that a
// real database is sampled the same way.
#[allow(dead_code)]
#[path = "../support/synthetic_geoip.rs"]
mod synthetic_geoip;

use std::{
    collections::BTreeMap,
    error::Error,
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query},
    rr::{
        Name, RecordType,
        rdata::opt::{ClientSubnet, EdnsOption},
    },
};
use ipnet::IpNet;
use meridian::geo::{self, GeoDb};
use synthetic_geoip::{Size, XorShift};

/// The seed and database type of `benches/dns_path.rs`: the same database, byte for byte.
const SYNTHETIC_SEED: u64 = 0x6d65_7269_6469_616e;
const SYNTHETIC_DATABASE_TYPE: &str = "Meridian-Synthetic-City";

const GSLB_NAME: &str = "api.example.test.";

/// The network of the bundled config's `[[override]]`: Meridian steers it to eu-west whatever
/// its continent, and the peers are configured without overrides, so it is never sampled.
const OVERRIDDEN: &str = "198.51.100.0/24";

/// What `api.example.test A` answers for a client on each continent (and for a client the
/// database does not place on one): the `[gslb.geo]` map of `zones/meridian.toml`, answering
/// the first region of each list.
fn expected_answer(continent: Option<&str>) -> &'static str {
    const US_EAST: &str = "192.0.2.10";
    const EU_WEST: &str = "198.51.100.10";
    const AP_SOUTH: &str = "203.0.113.10";
    match continent {
        Some("EU" | "AF") => EU_WEST,
        Some("NA" | "SA") => US_EAST,
        Some("AS" | "OC") => AP_SOUTH,
        _ => US_EAST,
    }
}

type Failure = Box<dyn Error>;

fn main() -> Result<(), Failure> {
    let owned: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["write-db", out] => write_db(Path::new(out), Size::REALISTIC),
        ["write-db", out, "--smoke"] => write_db(Path::new(out), Size::SMOKE),
        ["queries", db, dir, count] => write_queries(Path::new(db), Path::new(dir), count.parse()?),
        _ => Err("usage: dns_peers write-db OUT [--smoke] | queries DB DIR COUNT".into()),
    }
}

fn write_db(out: &Path, size: Size) -> Result<(), Failure> {
    let started = Instant::now();
    let synthetic = synthetic_geoip::generate(size, SYNTHETIC_SEED);
    let bytes = geo::build_database(
        SYNTHETIC_DATABASE_TYPE,
        &synthetic.entries,
        geo::CSV_BUILD_EPOCH,
    )?;
    // Written beside and renamed: a server may already have the old file mapped.
    let partial = out.with_extension("partial");
    std::fs::write(&partial, &bytes)?;
    std::fs::rename(&partial, out)?;
    println!(
        "synthetic GeoIP database: {} IPv4 + {} IPv6 networks, {} locations, {:.1} MiB, \
         written in {:.1} s to {}",
        synthetic.ipv4_count,
        synthetic.ipv6_count,
        synthetic.location_count,
        bytes.len() as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64(),
        out.display(),
    );
    Ok(())
}

/// One sampled client subnet and the continent the database places it on.
struct Client {
    subnet: IpNet,
    continent: Option<Box<str>>,
}

fn write_queries(db_path: &Path, dir: &Path, count: usize) -> Result<(), Failure> {
    let db = GeoDb::open(db_path)?;
    let located = db.located_networks()?;
    let overridden: IpNet = OVERRIDDEN.parse()?;
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = located
        .networks
        .iter()
        .map(|(network, _)| *network)
        .partition(|network| matches!(network, IpNet::V4(_)));
    if v4.is_empty() {
        return Err(format!("{} has no IPv4 networks", db_path.display()).into());
    }

    let mut rng = XorShift::new(SYNTHETIC_SEED ^ 2);
    let mut clients = Vec::with_capacity(count);
    // Bounded: only the overridden /24 is ever rejected.
    for i in 0..count * 2 {
        if clients.len() == count {
            break;
        }
        let pool = if i % 4 == 3 && !v6.is_empty() {
            &v6
        } else {
            &v4
        };
        let network = pool[rng.below(pool.len() as u64) as usize];
        let subnet = resolver_subnet(address_inside(network, &mut rng));
        if overridden.contains(&subnet) || subnet.contains(&overridden) {
            continue;
        }
        // The subnet's own address decides, as it does in every server: a /24 can be wider
        // than the database network it was drawn from.
        let continent = db
            .lookup(subnet.network())
            .and_then(|found| found.location.continent);
        clients.push(Client { subnet, continent });
    }

    let blob = dir.join("gslb-ecs.blob");
    let mut packets = Vec::with_capacity(clients.len() * 64);
    for (id, client) in clients.iter().enumerate() {
        let packet = ecs_query(id as u16, client.subnet)?;
        packets.extend_from_slice(&u16::try_from(packet.len())?.to_be_bytes());
        packets.extend_from_slice(&packet);
    }
    std::fs::write(&blob, &packets)?;

    // The first client of each continent (and of "none"), with its expected answer.
    let mut per_continent: BTreeMap<&str, (usize, &Client)> = BTreeMap::new();
    for client in &clients {
        let key = client.continent.as_deref().unwrap_or("none");
        per_continent.entry(key).or_insert((0, client)).0 += 1;
    }
    let mut checks = String::new();
    for (continent, (_, client)) in &per_continent {
        let answer = expected_answer(client.continent.as_deref());
        writeln!(checks, "{} {continent} {answer}", client.subnet)?;
    }
    std::fs::write(dir.join("ecs-checks.txt"), checks)?;

    let v6_count = clients.iter().filter(|c| c.subnet.addr().is_ipv6()).count();
    let spread: Vec<String> = per_continent
        .iter()
        .map(|(continent, (n, _))| format!("{continent} {n}"))
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ECS queries: {} subnets ({} IPv4 /24, {} IPv6 /56) from {} networks of {}; by \
         continent: {}; written to {}",
        clients.len(),
        clients.len() - v6_count,
        v6_count,
        located.networks.len(),
        db_path.display(),
        spread.join(", "),
        PathBuf::from(&blob).display(),
    )?;
    Ok(())
}

/// A query as dnsperf builds one from its text files (RD set, EDNS with a 4096-byte payload),
/// plus the ECS option.
fn ecs_query(id: u16, subnet: IpNet) -> Result<Vec<u8>, Failure> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(GSLB_NAME)?, RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::from(subnet)));
    message.set_edns(edns);
    Ok(message.to_vec()?)
}

fn address_inside(network: IpNet, rng: &mut XorShift) -> IpAddr {
    let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    match network {
        IpNet::V4(n) => {
            let host = (random as u32) & !u32::from(n.netmask());
            IpAddr::V4((u32::from(n.network()) | host).into())
        }
        IpNet::V6(n) => {
            let host = random & !u128::from(n.netmask());
            IpAddr::V6((u128::from(n.network()) | host).into())
        }
    }
}

/// The /24 (IPv4) or /56 (IPv6) a resolver would send as ECS for `addr`.
fn resolver_subnet(addr: IpAddr) -> IpNet {
    let prefix = if addr.is_ipv4() { 24 } else { 56 };
    // Both prefixes are valid for their family, so `new` cannot fail; the host route is a
    // harmless fallback rather than a panic path.
    IpNet::new(addr, prefix)
        .unwrap_or_else(|_| IpNet::from(addr))
        .trunc()
}
