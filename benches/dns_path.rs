//! Micro-benchmarks of the DNS tier's query path: bytes in → bytes out, without sockets.
//!
//! Two sets, each a criterion group:
//! - `bundled/*`: the shipped example (`zones/meridian.toml` with the demo GeoIP database):
//!   `respond` for a static A record, a GSLB A answer with and without ECS, an NXDOMAIN;
//!   `steering::decide` alone (the step inside a GSLB answer); and `GeoDb::lookup` alone, which
//!   the query path avoids through the precomputed client maps (only `_why` queries use it).
//! - `large_geoip/*`: the same config over a generated GeoIP database of realistic size
//!   (`support/synthetic_geoip.rs`). Before benchmarking it prints what such a database costs
//!   at start-up: `Snapshot::load` time (which includes walking the database and precomputing
//!   the client maps) and the growth of the process's resident memory.
//!
//! Query packets are encoded once, outside the timed loops; every iteration hands one packet
//! to `respond` with a reused output buffer, as the UDP listener does. Each group checks the
//! answers once before timing them, so a benchmark can never measure an error path by mistake.
//!
//! Run with `cargo bench --bench dns_path`; `docs/performance.md` has the commands and the
//! figures. Without `--bench` (a smoke run through `cargo test --benches`) the generated
//! database is a fiftieth of the realistic size.

#[path = "support/synthetic_geoip.rs"]
mod synthetic_geoip;

use std::{
    hint::black_box,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, measurement::WallTime};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RecordType,
        rdata::opt::{ClientSubnet, EdnsOption},
    },
};
use ipnet::IpNet;
use meridian::{
    config,
    dns::handler::{AnswerCache, AnswerSource, Summary, Transport, respond, respond_cached},
    geo::{self, GeoDb},
    operator_state::OperatorState,
    snapshot::Snapshot,
    steering::{self, ClientInput, ClientSource, Outcome, PolicyIdx, SteeringTable, Want},
};
use synthetic_geoip::{Size, SyntheticDb, XorShift};

type Group<'a> = BenchmarkGroup<'a, WallTime>;

const GSLB_NAME: &str = "api.example.test.";

/// The ECS subnets the README's examples use: GB, US, JP and an IPv6 network in Europe.
const ECS_SUBNETS: [&str; 4] = [
    "81.2.69.0/24",
    "8.8.8.0/24",
    "133.242.0.0/16",
    "2a02:2e0::/32",
];

/// The packet's source: a public resolver that the demo database locates, so the no-ECS GSLB
/// case is steered by its network rather than by the default.
const RESOLVER: &str = "8.8.8.8:41000";

/// Client addresses per cycle in the large-database benchmarks: enough that lookups miss the
/// caches as real traffic does, few enough that building their packets is instant.
const LARGE_SAMPLE: usize = 4096;

/// Fixed seed of the synthetic database, so every run benchmarks the same bytes.
const SYNTHETIC_SEED: u64 = 0x6d65_7269_6469_616e;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn query_packet(id: u16, name: &str, qtype: RecordType, subnet: Option<IpNet>) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(
        Name::from_ascii(name).expect("query name"),
        qtype,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    if let Some(subnet) = subnet {
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::from(subnet)));
    }
    message.set_edns(edns);
    message.to_vec().expect("encode query")
}

fn assert_gslb_answer(summary: &Summary, what: &str) {
    assert_eq!(summary.rcode, ResponseCode::NoError, "{what}");
    assert!(
        matches!(&summary.source, AnswerSource::Gslb { regions, .. } if !regions.is_empty()),
        "{what}: {summary:?}"
    );
}

/// What every `respond` call of a group shares: the snapshot, the packet's source and `now`.
struct Fixture<'a> {
    snapshot: &'a Snapshot,
    resolver: SocketAddr,
    now: Instant,
}

impl Fixture<'_> {
    /// Runs one packet through the handler, for the checks before timing.
    fn answer(&self, packet: &[u8]) -> Summary {
        let mut out = Vec::new();
        respond(
            self.snapshot,
            packet,
            self.resolver,
            Transport::Udp,
            1,
            self.now,
            &mut out,
        )
        .expect("a query gets a response")
    }

    /// Times `respond` over `packets` in turn, one packet per iteration.
    fn bench_respond(&self, group: &mut Group<'_>, id: &str, packets: &[Vec<u8>]) {
        group.bench_function(id, |b| {
            let mut out = Vec::with_capacity(1232);
            let mut next = 0usize;
            let mut seed = 0u64;
            b.iter(|| {
                next = (next + 1) % packets.len();
                seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                respond(
                    self.snapshot,
                    black_box(&packets[next]),
                    self.resolver,
                    Transport::Udp,
                    seed,
                    self.now,
                    &mut out,
                )
            });
        });
    }
}

/// Times `respond_cached` over `packets` in turn with one warm cache, as a UDP worker runs:
/// every packet after the first of its shape patches a template.
fn bench_respond_cached(
    group: &mut Group<'_>,
    id: &str,
    snapshot: &Arc<Snapshot>,
    resolver: SocketAddr,
    now: Instant,
    packets: &[Vec<u8>],
) {
    group.bench_function(id, |b| {
        let mut cache = AnswerCache::new();
        let mut out = Vec::with_capacity(1232);
        let mut next = 0usize;
        let mut seed = 0u64;
        b.iter(|| {
            next = (next + 1) % packets.len();
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            respond_cached(
                snapshot,
                &mut cache,
                black_box(&packets[next]),
                resolver,
                Transport::Udp,
                seed,
                now,
                &mut out,
            )
        });
    });
}

fn bench_decide(group: &mut Group<'_>, snapshot: &Snapshot, clients: &[ClientInput], now: Instant) {
    let policy = gslb_policy(snapshot);
    let question = steering::Question {
        want: Want::V4,
        explain: false,
    };
    for client in clients {
        let decision = steering::decide(&snapshot.steering, policy, client, &question, now);
        assert!(
            matches!(decision.outcome, Outcome::Regions(_)),
            "decide for {client:?}: {decision:?}"
        );
    }
    group.bench_function("decide", |b| {
        let mut next = 0usize;
        b.iter(|| {
            next = (next + 1) % clients.len();
            steering::decide(
                &snapshot.steering,
                policy,
                black_box(&clients[next]),
                &question,
                now,
            )
        });
    });
}

fn bench_geo_lookup(group: &mut Group<'_>, db: &GeoDb, addresses: &[IpAddr]) {
    group.bench_function("geo_lookup", |b| {
        let mut next = 0usize;
        b.iter(|| {
            next = (next + 1) % addresses.len();
            db.lookup(black_box(addresses[next]))
        });
    });
}

fn gslb_policy(snapshot: &Snapshot) -> PolicyIdx {
    *snapshot
        .gslb_by_name
        .get(&Name::from_ascii(GSLB_NAME).expect("GSLB name"))
        .expect("the bundled config has api.example.test")
}

fn ecs_client(subnet: IpNet, seed: u64) -> ClientInput {
    ClientInput {
        addr: subnet.network(),
        source_prefix: subnet.prefix_len(),
        source: ClientSource::Ecs,
        seed,
        location: None,
    }
}

/// The /24 (IPv4) or /56 (IPv6) a resolver would send as ECS for `addr`.
fn resolver_subnet(addr: IpAddr) -> IpNet {
    let prefix = if addr.is_ipv4() { 24 } else { 56 };
    IpNet::new(addr, prefix).expect("valid prefix").trunc()
}

fn bundled(c: &mut Criterion) {
    let snapshot = Arc::new(
        Snapshot::load(&repo().join("zones/meridian.toml"), 1).expect("bundled config loads"),
    );
    let now = Instant::now();
    let resolver: SocketAddr = RESOLVER.parse().expect("resolver address");
    let subnets: Vec<IpNet> = ECS_SUBNETS
        .iter()
        .map(|s| s.parse().expect("ECS subnet"))
        .collect();

    let static_a = vec![query_packet(1, "www.example.test.", RecordType::A, None)];
    let gslb_a = vec![query_packet(2, GSLB_NAME, RecordType::A, None)];
    let gslb_a_ecs: Vec<Vec<u8>> = subnets
        .iter()
        .map(|&s| query_packet(3, GSLB_NAME, RecordType::A, Some(s)))
        .collect();
    let nxdomain = vec![query_packet(4, "nope.example.test.", RecordType::A, None)];

    let fixture = Fixture {
        snapshot: &snapshot,
        resolver,
        now,
    };
    let summary = fixture.answer(&static_a[0]);
    assert_eq!(
        (summary.rcode, &summary.source),
        (ResponseCode::NoError, &AnswerSource::Zone)
    );
    assert_gslb_answer(&fixture.answer(&gslb_a[0]), "GSLB A");
    for packet in &gslb_a_ecs {
        assert_gslb_answer(&fixture.answer(packet), "GSLB A + ECS");
    }
    let summary = fixture.answer(&nxdomain[0]);
    assert_eq!(
        (summary.rcode, &summary.source),
        (ResponseCode::NXDomain, &AnswerSource::Zone)
    );

    let mut group = c.benchmark_group("bundled");
    group.throughput(Throughput::Elements(1));
    fixture.bench_respond(&mut group, "respond/static_a", &static_a);
    fixture.bench_respond(&mut group, "respond/gslb_a", &gslb_a);
    fixture.bench_respond(&mut group, "respond/gslb_a_ecs", &gslb_a_ecs);
    fixture.bench_respond(&mut group, "respond/nxdomain", &nxdomain);
    for (id, packets) in [
        ("respond_cached/static_a", &static_a),
        ("respond_cached/gslb_a", &gslb_a),
        ("respond_cached/gslb_a_ecs", &gslb_a_ecs),
        ("respond_cached/nxdomain", &nxdomain),
    ] {
        bench_respond_cached(&mut group, id, &snapshot, resolver, now, packets);
    }

    let clients: Vec<ClientInput> = subnets.iter().map(|&s| ecs_client(s, 7)).collect();
    bench_decide(&mut group, &snapshot, &clients, now);

    let db = snapshot
        .geo
        .as_ref()
        .expect("the bundled config has a GeoIP database");
    let addresses: Vec<IpAddr> = subnets.iter().map(IpNet::addr).collect();
    for &addr in &addresses {
        assert!(
            db.lookup(addr).is_some(),
            "the demo database locates {addr}"
        );
    }
    bench_geo_lookup(&mut group, db, &addresses);
    group.finish();
}

/// Resident memory of this process, from `/proc/self/status`, in KiB: (total, anonymous,
/// file-backed). The GeoIP database is memory-mapped, so its pages show up as file-backed.
fn resident_kib() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

/// The bundled config, pointed at `database`, with the zone file named absolutely and no
/// metrics listener (so a server started on it binds nothing but what `--listen` says).
fn large_db_config(database: &Path) -> String {
    let bundled =
        std::fs::read_to_string(repo().join("zones/meridian.toml")).expect("bundled config");
    let replacements = [
        (
            "database = \"../geoip/demo.mmdb\"".to_owned(),
            format!("database = {:?}", database.display().to_string()),
        ),
        (
            "file = \"example.test.zone\"".to_owned(),
            format!(
                "file = {:?}",
                repo().join("zones/example.test.zone").display().to_string()
            ),
        ),
        (
            "metrics_listen = \"127.0.0.1:9153\"".to_owned(),
            "# metrics_listen: none for benchmarks".to_owned(),
        ),
    ];
    replacements.iter().fold(bundled, |text, (from, to)| {
        assert!(text.contains(from.as_str()), "bundled config lost `{from}`");
        text.replacen(from.as_str(), to, 1)
    })
}

/// Where the generated database and config go: `$MERIDIAN_BENCH_DIR` when set (kept, so the
/// real server can be started on them), else a temporary folder removed at exit.
fn bench_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("MERIDIAN_BENCH_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("create $MERIDIAN_BENCH_DIR");
            (dir, None)
        }
        None => {
            let temporary = tempfile::tempdir().expect("temporary folder");
            (temporary.path().to_owned(), Some(temporary))
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Generates and writes the database; returns client addresses inside it.
fn write_large_db(size: Size, database: &Path) -> Vec<IpAddr> {
    let started = Instant::now();
    let synthetic: SyntheticDb = synthetic_geoip::generate(size, SYNTHETIC_SEED);
    let generated = started.elapsed();
    let started = Instant::now();
    let bytes = geo::build_database(
        "Meridian-Synthetic-City",
        &synthetic.entries,
        geo::CSV_BUILD_EPOCH,
    )
    .expect("synthetic entries are valid");
    let built = started.elapsed();
    // Written beside and renamed, as operators must replace a mapped database.
    let partial = database.with_extension("partial");
    std::fs::write(&partial, &bytes).expect("write database");
    std::fs::rename(&partial, database).expect("rename database");
    println!(
        "large_geoip: {} IPv4 + {} IPv6 networks, {} locations; generated in {:.0} ms, \
         written as MaxMind DB ({:.1} MiB) in {:.0} ms",
        synthetic.ipv4_count,
        synthetic.ipv6_count,
        synthetic.location_count,
        millis(generated),
        bytes.len() as f64 / (1024.0 * 1024.0),
        millis(built),
    );
    synthetic.sample_addresses(LARGE_SAMPLE, &mut XorShift::new(SYNTHETIC_SEED ^ 1))
}

/// Prints how long the pieces of `Snapshot::load` take on their own (each on a fresh reader).
fn print_load_breakdown(config_path: &Path, database: &Path) {
    let config = config::load_dns_config(config_path).expect("config");
    let started = Instant::now();
    let db = GeoDb::open(database).expect("database opens");
    let networks = db.located_networks().expect("database walks");
    let walked = started.elapsed();
    let started = Instant::now();
    let table = SteeringTable::build(&config, Some(&networks), &OperatorState::default());
    let compiled = started.elapsed();
    let ranges = (0..config.gslb.len() as u32)
        .filter_map(|i| table.client_map(PolicyIdx(i)))
        .map(|m| m.range_counts())
        .max()
        .unwrap_or_default();
    println!(
        "large_geoip: of which: walking the database {:.0} ms ({} networks, {} distinct \
         locations), building {} client maps {:.0} ms (largest: {} IPv4 + {} IPv6 ranges)",
        millis(walked),
        networks.networks.len(),
        networks.locations.len(),
        table.client_map_count(),
        millis(compiled),
        ranges.0,
        ranges.1,
    );
}

fn large_geoip(c: &mut Criterion) {
    let size = if std::env::args().any(|a| a == "--bench") {
        Size::REALISTIC
    } else {
        Size::SMOKE
    };
    let (dir, _temporary) = bench_dir();
    let database = dir.join("synthetic-city.mmdb");
    let config_path = dir.join("meridian-large.toml");
    let addresses = write_large_db(size, &database);
    std::fs::write(&config_path, large_db_config(&database)).expect("write config");

    measure_start_up(&config_path);
    print_load_breakdown(&config_path, &database);

    let snapshot = Arc::new(Snapshot::load(&config_path, 1).expect("large config loads"));
    let now = Instant::now();
    let resolver: SocketAddr = RESOLVER.parse().expect("resolver address");
    let subnets: Vec<IpNet> = addresses.iter().map(|&a| resolver_subnet(a)).collect();
    let packets: Vec<Vec<u8>> = subnets
        .iter()
        .enumerate()
        .map(|(i, &s)| query_packet(i as u16, GSLB_NAME, RecordType::A, Some(s)))
        .collect();
    let fixture = Fixture {
        snapshot: &snapshot,
        resolver,
        now,
    };
    for packet in &packets {
        assert_gslb_answer(&fixture.answer(packet), "large GSLB A + ECS");
    }
    let db = snapshot
        .geo
        .as_ref()
        .expect("the large config has a GeoIP database");
    let located = addresses
        .iter()
        .filter(|&&a| db.lookup(a).is_some())
        .count();
    assert_eq!(located, addresses.len(), "every sampled address is located");

    let mut group = c.benchmark_group("large_geoip");
    group.throughput(Throughput::Elements(1));
    bench_geo_lookup(&mut group, db, &addresses);
    let clients: Vec<ClientInput> = subnets.iter().map(|&s| ecs_client(s, 7)).collect();
    bench_decide(&mut group, &snapshot, &clients, now);
    fixture.bench_respond(&mut group, "respond/gslb_a_ecs", &packets);
    bench_respond_cached(
        &mut group,
        "respond_cached/gslb_a_ecs",
        &snapshot,
        fixture.resolver,
        now,
        &packets,
    );
    group.finish();
}

/// Set in the environment of a child copy of this bench binary that only loads a snapshot.
const START_UP_PROBE: &str = "MERIDIAN_BENCH_START_UP_PROBE";

/// Runs [`start_up_probe`] in a fresh copy of this process, so that the memory figure is not
/// flattered by heap the generator freed and the allocator kept.
fn measure_start_up(config_path: &Path) {
    let exe = std::env::current_exe().expect("path of the bench binary");
    let status = std::process::Command::new(exe)
        .env(START_UP_PROBE, config_path)
        .stdin(std::process::Stdio::null())
        .status()
        .expect("start-up probe runs");
    assert!(status.success(), "start-up probe failed: {status}");
}

/// What a server pays at start-up: `Snapshot::load` time (the config, zones, GeoIP database
/// walk and client-map precomputation) and the resident memory it adds.
fn start_up_probe(config_path: &Path) {
    let before = resident_kib();
    let started = Instant::now();
    let snapshot = Snapshot::load(config_path, 1).expect("config loads");
    let loaded = started.elapsed();
    let after = resident_kib();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "large_geoip: Snapshot::load {:.0} ms; resident memory +{:.1} MiB \
         (anonymous +{:.1} MiB, file-backed +{:.1} MiB), {:.1} MiB in all",
        millis(loaded),
        mib(after.0.saturating_sub(before.0)),
        mib(after.1.saturating_sub(before.1)),
        mib(after.2.saturating_sub(before.2)),
        mib(after.0),
    );
    drop(snapshot);
}

criterion_group!(benches, bundled, large_geoip);

// `criterion_main!`, plus the start-up probe mode.
fn main() {
    if let Some(config_path) = std::env::var_os(START_UP_PROBE) {
        start_up_probe(Path::new(&config_path));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
