//! A GeoIP database of realistic size for benchmarks, generated deterministically.
//!
//! The bundled demo database has a few dozen networks; GeoLite2-City has roughly 3.5 million
//! IPv4 and 1 million IPv6 rows, of which a few hundred thousand distinct networks survive the
//! writer's merging of same-location siblings. This module generates something in between the
//! two that exercises the same code paths at the same orders of magnitude: ~300k IPv4 networks
//! of /16–/24 carved out of the public IPv4 space, ~100k IPv6 networks of /29–/48 under the
//! RIRs' real top-level blocks, ~250 synthetic countries over the 7 MaxMind continents, and a
//! few thousand cities with coordinates and subdivisions.
//!
//! Everything comes from one fixed-seed xorshift generator: no clock, no network, no files
//! other than the one the caller asks for. Country codes are synthetic (`AA`, `AB`, ...), so a
//! code may collide with a real ISO code whose continent differs; steering only sees the
//! continent, which is consistent with the coordinates.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use meridian::{config::model::Coordinates, geo::Location};

/// How big a database to generate.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub ipv4_networks: usize,
    pub ipv6_networks: usize,
    pub countries: usize,
}

impl Size {
    /// The realistic size the performance figures are quoted for.
    pub const REALISTIC: Size = Size {
        ipv4_networks: 300_000,
        ipv6_networks: 100_000,
        countries: 250,
    };

    /// A fiftieth of it: enough to exercise every path when the bench runs as a smoke test.
    pub const SMOKE: Size = Size {
        ipv4_networks: 6_000,
        ipv6_networks: 2_000,
        countries: 250,
    };
}

/// Marsaglia's xorshift64: fast, deterministic, and good enough to scatter networks.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // Zero is the one state xorshift never leaves.
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// MaxMind continent code, how many of the countries it gets (per 250), its rough bounding
/// box (latitude, longitude ranges) and the first hextets of its RIR's IPv6 allocations.
struct Continent {
    code: &'static str,
    share: usize,
    latitude: (f64, f64),
    longitude: (f64, f64),
    ipv6_blocks: &'static [u16],
}

const CONTINENTS: [Continent; 7] = [
    Continent {
        code: "AF",
        share: 58,
        latitude: (-35.0, 37.0),
        longitude: (-17.0, 51.0),
        ipv6_blocks: &[0x2c0f, 0x2001],
    },
    Continent {
        code: "AN",
        share: 2,
        latitude: (-90.0, -60.0),
        longitude: (-180.0, 180.0),
        ipv6_blocks: &[0x2001],
    },
    Continent {
        code: "AS",
        share: 53,
        latitude: (-10.0, 55.0),
        longitude: (26.0, 145.0),
        ipv6_blocks: &[
            0x2400, 0x2401, 0x2402, 0x2403, 0x2404, 0x2405, 0x2406, 0x2407,
        ],
    },
    Continent {
        code: "EU",
        share: 53,
        latitude: (36.0, 70.0),
        longitude: (-10.0, 40.0),
        ipv6_blocks: &[
            0x2a00, 0x2a01, 0x2a02, 0x2a03, 0x2a04, 0x2a05, 0x2a06, 0x2a0e,
        ],
    },
    Continent {
        code: "NA",
        share: 41,
        latitude: (7.0, 70.0),
        longitude: (-168.0, -52.0),
        ipv6_blocks: &[
            0x2600, 0x2601, 0x2602, 0x2603, 0x2604, 0x2605, 0x2606, 0x2607,
        ],
    },
    Continent {
        code: "OC",
        share: 27,
        latitude: (-47.0, 0.0),
        longitude: (110.0, 180.0),
        ipv6_blocks: &[0x2401, 0x2403, 0x2404],
    },
    Continent {
        code: "SA",
        share: 16,
        latitude: (-55.0, 12.0),
        longitude: (-81.0, -35.0),
        ipv6_blocks: &[0x2800, 0x2801, 0x2803, 0x2804],
    },
];

/// First octets that are not public unicast space.
const RESERVED_FIRST_OCTETS: [u8; 3] = [0, 10, 127];

struct City {
    location: Location,
    continent: usize,
}

/// The generated entries, and some of their networks to pick query addresses from.
pub struct SyntheticDb {
    pub entries: Vec<(IpNet, Location)>,
    pub ipv4_count: usize,
    pub ipv6_count: usize,
    pub location_count: usize,
}

impl SyntheticDb {
    /// `count` client addresses inside generated networks, alternating 3 IPv4 : 1 IPv6 as
    /// resolvers roughly send them.
    pub fn sample_addresses(&self, count: usize, rng: &mut XorShift) -> Vec<IpAddr> {
        let (v4, v6) = self.entries.split_at(self.ipv4_count);
        (0..count)
            .map(|i| {
                let pool = if i % 4 == 3 && !v6.is_empty() { v6 } else { v4 };
                let (network, _) = &pool[rng.below(pool.len() as u64) as usize];
                address_inside(*network, rng)
            })
            .collect()
    }
}

fn address_inside(network: IpNet, rng: &mut XorShift) -> IpAddr {
    match network {
        IpNet::V4(n) => {
            let host_bits = 32 - u32::from(n.prefix_len());
            let offset = (rng.next_u64() as u32) & low_mask_u32(host_bits);
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | offset))
        }
        IpNet::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix_len());
            let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            let offset = random & low_mask_u128(host_bits);
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | offset))
        }
    }
}

fn low_mask_u32(bits: u32) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else {
        (1 << bits) - 1
    }
}

fn low_mask_u128(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1 << bits) - 1
    }
}

/// Generates the entries for [`meridian::geo::build_database`].
pub fn generate(size: Size, seed: u64) -> SyntheticDb {
    let mut rng = XorShift::new(seed);
    let cities = cities(size.countries, &mut rng);
    let mut entries = Vec::with_capacity(size.ipv4_networks + size.ipv6_networks);

    for network in ipv4_networks(size.ipv4_networks, &mut rng) {
        let city = pick_city(&cities, &mut rng);
        entries.push((IpNet::V4(network), city.location.clone()));
    }
    let ipv4_count = entries.len();

    let mut seen = HashSet::with_capacity(size.ipv6_networks);
    // Bounded: collisions are rare, so twice the target is far more attempts than needed.
    for _ in 0..size.ipv6_networks * 2 {
        if seen.len() == size.ipv6_networks {
            break;
        }
        let city = pick_city(&cities, &mut rng);
        let network = ipv6_network(&CONTINENTS[city.continent], &mut rng);
        if seen.insert(network) {
            entries.push((IpNet::V6(network), city.location.clone()));
        }
    }
    let ipv6_count = entries.len() - ipv4_count;

    SyntheticDb {
        entries,
        ipv4_count,
        ipv6_count,
        location_count: cities.len(),
    }
}

/// Countries spread over the continents by [`Continent::share`], each with 1–40 cities.
fn cities(countries: usize, rng: &mut XorShift) -> Vec<City> {
    let total_share: usize = CONTINENTS.iter().map(|c| c.share).sum();
    let mut cities = Vec::new();
    for country in 0..countries {
        // Countries are laid out continent by continent in share proportion.
        let mut position = country * total_share / countries.max(1);
        let continent = CONTINENTS
            .iter()
            .position(|c| {
                if position < c.share {
                    true
                } else {
                    position -= c.share;
                    false
                }
            })
            .unwrap_or(CONTINENTS.len() - 1);
        let bounds = &CONTINENTS[continent];
        let code = country_code(country);
        let centre = (
            between(rng, bounds.latitude),
            between(rng, bounds.longitude),
        );
        let city_count = 1 + rng.below(40) as usize;
        let subdivisions = 1 + city_count / 3;
        for _ in 0..city_count {
            let subdivision = 1 + rng.below(subdivisions as u64);
            let latitude = (centre.0 + between(rng, (-4.0, 4.0))).clamp(-90.0, 90.0);
            let longitude = (centre.1 + between(rng, (-4.0, 4.0))).clamp(-180.0, 180.0);
            cities.push(City {
                location: Location {
                    country: Some(code.clone().into_boxed_str()),
                    subdivision: Some(format!("{code}-S{subdivision}").into_boxed_str()),
                    continent: Some(bounds.code.into()),
                    coordinates: Some(Coordinates {
                        latitude,
                        longitude,
                    }),
                },
                continent,
            });
        }
    }
    cities
}

fn country_code(index: usize) -> String {
    let letter = |i: usize| char::from(b'A' + (i % 26) as u8);
    [letter(index / 26), letter(index)].iter().collect()
}

fn between(rng: &mut XorShift, (low, high): (f64, f64)) -> f64 {
    low + rng.unit() * (high - low)
}

/// Skewed towards the first cities, as address space is towards a few large countries.
fn pick_city<'a>(cities: &'a [City], rng: &mut XorShift) -> &'a City {
    let u = rng.unit();
    &cities[((u * u) * cities.len() as f64) as usize % cities.len()]
}

/// Disjoint IPv4 networks of /16–/24: /16 blocks are visited in a scattered order over the
/// whole public space and each is split at random, the way allocations get subdivided.
fn ipv4_networks(target: usize, rng: &mut XorShift) -> Vec<Ipv4Net> {
    const SPLIT_PERCENT: u64 = 60;
    const UNALLOCATED_PERCENT: u64 = 10;
    let mut networks = Vec::with_capacity(target);
    let mut pending: Vec<(u32, u8)> = Vec::with_capacity(16);
    for step in 0u32..65_536 {
        if networks.len() >= target {
            break;
        }
        // An odd multiplier permutes the 2^16 blocks, scattering them over the space.
        let block = step.wrapping_mul(40_503) & 0xffff;
        let first_octet = (block >> 8) as u8;
        if RESERVED_FIRST_OCTETS.contains(&first_octet) || first_octet >= 224 {
            continue;
        }
        pending.push((block << 16, 16));
        // At most 2^8 leaves per /16, so the inner loop is bounded by 511 iterations.
        while let Some((base, prefix)) = pending.pop() {
            if prefix < 24 && rng.below(100) < SPLIT_PERCENT {
                let half = 1u32 << (32 - u32::from(prefix) - 1);
                pending.push((base | half, prefix + 1));
                pending.push((base, prefix + 1));
            } else if rng.below(100) >= UNALLOCATED_PERCENT
                && networks.len() < target
                && let Ok(network) = Ipv4Net::new(Ipv4Addr::from(base), prefix)
            {
                networks.push(network);
            }
        }
    }
    networks
}

/// One IPv6 network of /29–/48 inside the continent's RIR blocks, avoiding the ranges MaxMind
/// databases alias to IPv4 (`2001::/32`, `2002::/16`) and documentation space.
fn ipv6_network(continent: &Continent, rng: &mut XorShift) -> Ipv6Net {
    const PREFIXES: [u8; 9] = [29, 32, 32, 32, 36, 40, 44, 48, 48];
    let first = continent.ipv6_blocks[rng.below(continent.ipv6_blocks.len() as u64) as usize];
    let mut second = rng.next_u64() as u16;
    if first == 0x2001 && (second < 0x0200 || second == 0x0db8) {
        // 2001:0000::/23 is IETF protocol space (Teredo lives there); RIRs start at 2001:200.
        second = second.wrapping_add(0x0200).max(0x0200);
        if second == 0x0db8 {
            second = 0x0db9;
        }
    }
    let prefix = PREFIXES[rng.below(PREFIXES.len() as u64) as usize];
    let high = (u128::from(first) << 112) | (u128::from(second) << 96);
    let random_low = u128::from(rng.next_u64()) << 32;
    let address = (high | random_low) & !low_mask_u128(128 - u32::from(prefix));
    Ipv6Net::new(Ipv6Addr::from(address), prefix).expect("prefixes are at most /48")
}
