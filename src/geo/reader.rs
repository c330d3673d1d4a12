//! The MaxMind DB reader: client address → [`GeoMatch`], and the whole database as
//! [`LocatedNetworks`] for the steering core's precomputed client maps.
//!
//! This is the only module that speaks `maxminddb`'s API, so an upgrade of that crate touches
//! one file. It decodes just the fields steering uses (country, first subdivision, continent,
//! coordinates) through a small borrowed record; it never decides anything about steering.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use maxminddb::{MaxMindDbError, Mmap, Reader, WithinOptions};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};

use super::error::GeoError;
use super::location::{GeoMatch, LocatedNetworks, Location, LocationId};
use crate::config::model::Coordinates;

/// Record shapes we can read: GeoIP2/GeoLite2 City and Country (and Enterprise, a City
/// superset), and our own demo database, which is City-shaped.
const SUPPORTED_DATABASE_KINDS: [&str; 3] = ["City", "Country", "Enterprise"];

/// IPv6 ranges that MaxMind databases point at the IPv4 tree. They are not reported by
/// [`GeoDb::located_networks`]: every IPv4 network would otherwise appear four times.
/// `::/96` is the IPv4 tree itself and is reported as IPv4.
const IPV4_MIRRORS: [(u128, u8); 4] = [
    (0, 96),                                         // ::/96, IPv4 itself
    (0x0000_0000_0000_0000_0000_ffff_0000_0000, 96), // ::ffff:0:0/96, IPv4-mapped
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 32), // 2001::/32, Teredo
    (0x2002_0000_0000_0000_0000_0000_0000_0000, 16), // 2002::/16, 6to4
];

/// What a database says about itself, for logs and `meridian check` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeoDbInfo {
    pub database_type: String,
    /// Seconds since the Unix epoch at which the vendor built the file.
    pub build_epoch: u64,
    /// 4 or 6.
    pub ip_version: u16,
    pub node_count: u32,
}

/// An open GeoIP database (memory-mapped).
pub struct GeoDb {
    path: PathBuf,
    reader: Reader<Mmap>,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb")
            .field("path", &self.path)
            .field("info", &self.info())
            .finish_non_exhaustive()
    }
}

impl GeoDb {
    /// Opens a City or Country MaxMind DB file.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        // An empty file fails in the mmap call with an unhelpful EINVAL; say what it is.
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() && meta.len() == 0 => {
                return Err(GeoError::NotMaxMindDb {
                    path: path.to_owned(),
                    reason: "the file is empty".to_owned(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(GeoError::Missing {
                    path: path.to_owned(),
                });
            }
            Err(e) => {
                return Err(GeoError::Unreadable {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
            }
        }

        // SAFETY: the mapping is undefined behaviour if the file is truncated or rewritten
        // while it is mapped. Operators must replace a GeoIP database by writing a new file
        // and renaming it over the old path (what `geoipupdate` does): the old inode stays
        // intact and mapped until the last reader of it is dropped. Reload re-opens the path,
        // mapping the new inode. Never rewrite the file in place (`cp` onto it, truncate it).
        #[allow(unsafe_code)]
        let opened = unsafe { Reader::open_mmap(path) };
        let reader = opened.map_err(|e| open_error(path, e))?;

        let database_type = &reader.metadata().database_type;
        if !SUPPORTED_DATABASE_KINDS
            .iter()
            .any(|kind| database_type.contains(kind))
        {
            return Err(GeoError::UnsupportedDatabaseType {
                path: path.to_owned(),
                database_type: database_type.clone(),
            });
        }
        Ok(GeoDb {
            path: path.to_owned(),
            reader,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn info(&self) -> GeoDbInfo {
        let meta = self.reader.metadata();
        GeoDbInfo {
            database_type: meta.database_type.clone(),
            build_epoch: meta.build_epoch,
            ip_version: meta.ip_version,
            node_count: meta.node_count,
        }
    }

    /// Where `ip` is, and the database network it matched. `None` when the database has no
    /// data for the address. IPv4-mapped IPv6 addresses are looked up, and answered, as IPv4;
    /// an IPv4 client always gets an IPv4 network.
    pub fn lookup(&self, ip: IpAddr) -> Option<GeoMatch> {
        let ip = ip.to_canonical();
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            return None;
        }
        let found = match self.reader.lookup(ip) {
            Ok(found) => found,
            Err(error) => {
                tracing::debug!(%ip, %error, path = ?self.path, "GeoIP lookup failed");
                return None;
            }
        };
        if !found.has_data() {
            return None;
        }
        let (record, network) = match (found.decode::<CityRecord<'_>>(), found.network()) {
            (Ok(Some(record)), Ok(network)) => (record, network),
            (Ok(None), _) => return None,
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%ip, %error, path = ?self.path, "GeoIP record unreadable");
                return None;
            }
        };
        let network = match (ip, network.ip()) {
            // Only when the database has no IPv4 tree of its own: the match is an IPv6
            // network covering (part of) ::/96.
            (IpAddr::V4(_), IpAddr::V6(base)) => IpNet::V4(embedded_ipv4(base, network.prefix())),
            (_, base) => IpNet::new(base, network.prefix()).ok()?.trunc(),
        };
        Some(GeoMatch {
            location: record.to_location(),
            network,
        })
    }

    /// Every network that has data, exactly once: IPv4 networks (as IPv4) first, then IPv6,
    /// each sorted by address and non-overlapping. IPv6 ranges that mirror IPv4 (IPv4-mapped,
    /// 6to4, Teredo) are left out. Identical locations share one [`LocationId`].
    pub fn located_networks(&self) -> Result<LocatedNetworks, GeoError> {
        let mut collected = Collector::default();
        self.collect_within(IpNet::V4(Ipv4Net::default()), &mut collected)?;
        if self.reader.metadata().ip_version == 6 {
            // Walk IPv6 minus the IPv4 mirrors rather than the whole tree with maxminddb's
            // alias skipping: that recognises an alias by the IPv4 root's node number, which
            // misfires in a database without an IPv4 tree (IPv6 networks sharing the IPv4
            // record vanish), and misses writers that store copies rather than pointers.
            for piece in ipv6_without_ipv4_mirrors() {
                self.collect_within(IpNet::V6(piece), &mut collected)?;
            }
        }
        debug_assert!(sorted_disjoint(&collected.networks.networks));
        Ok(collected.networks)
    }

    /// Appends the networks with data inside `query`, clipped to it: a record covering more
    /// than `query` is reported as `query`, so the partition pieces never overlap.
    fn collect_within(&self, query: IpNet, collected: &mut Collector) -> Result<(), GeoError> {
        let cidr =
            parse_cidr(&query).ok_or_else(|| self.corrupt(format!("cannot query {query}")))?;
        // The queries already exclude the IPv4 mirrors (see `located_networks`).
        let options = WithinOptions::default().include_aliased_networks();
        let networks = self
            .reader
            .within(cidr, options)
            .map_err(|e| self.corrupt(e.to_string()))?;
        for found in networks {
            let found = found.map_err(|e| self.corrupt(e.to_string()))?;
            let Some(offset) = found.offset() else {
                continue;
            };
            let network = found.network().map_err(|e| self.corrupt(e.to_string()))?;
            let network = clip(query, network.ip(), network.prefix());
            let id = match collected.by_offset.entry(offset) {
                Entry::Occupied(seen) => *seen.get(),
                Entry::Vacant(slot) => {
                    let record = found
                        .decode::<CityRecord<'_>>()
                        .map_err(|e| self.corrupt(format!("record of {network}: {e}")))?
                        .ok_or_else(|| self.corrupt(format!("record of {network} vanished")))?;
                    let id = collected
                        .interned
                        .intern(record.to_location(), &mut collected.networks.locations);
                    *slot.insert(id)
                }
            };
            collected.networks.networks.push((network, id));
        }
        Ok(())
    }

    fn corrupt(&self, reason: String) -> GeoError {
        GeoError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

#[derive(Default)]
struct Collector {
    networks: LocatedNetworks,
    /// Many networks share one data record; decode each record once.
    by_offset: HashMap<usize, LocationId>,
    /// Different records (say, with different postal codes) can still be the same location
    /// as far as steering cares.
    interned: Interner,
}

#[derive(Default)]
struct Interner(HashMap<Location, LocationId>);

impl Interner {
    fn intern(&mut self, location: Location, locations: &mut Vec<Location>) -> LocationId {
        match self.0.entry(location) {
            Entry::Occupied(seen) => *seen.get(),
            Entry::Vacant(slot) => {
                // More than 2^32 distinct locations cannot come out of a MaxMind DB (its
                // records are addressed with at most 32 bits).
                let id = LocationId(u32::try_from(locations.len()).unwrap_or(u32::MAX));
                locations.push(slot.key().clone());
                *slot.insert(id)
            }
        }
    }
}

/// IPv4 before IPv6, each family in address order, no two networks overlapping.
fn sorted_disjoint(networks: &[(IpNet, LocationId)]) -> bool {
    networks
        .windows(2)
        .all(|pair| match (pair[0].0, pair[1].0) {
            (IpNet::V4(a), IpNet::V4(b)) => a.broadcast() < b.network(),
            (IpNet::V6(a), IpNet::V6(b)) => a.broadcast() < b.network(),
            (IpNet::V4(_), IpNet::V6(_)) => true,
            (IpNet::V6(_), IpNet::V4(_)) => false,
        })
}

fn open_error(path: &Path, error: MaxMindDbError) -> GeoError {
    let path = path.to_owned();
    match error {
        MaxMindDbError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            GeoError::Missing { path }
        }
        MaxMindDbError::Io(e) | MaxMindDbError::Mmap(e) => GeoError::Unreadable {
            path,
            reason: e.to_string(),
        },
        other => GeoError::NotMaxMindDb {
            path,
            reason: other.to_string(),
        },
    }
}

/// maxminddb takes networks as `ipnetwork` values. Going through their text form keeps that
/// crate out of our dependency list; it happens a few hundred times per walk, not per network.
fn parse_cidr<T: FromStr>(network: &IpNet) -> Option<T> {
    network.to_string().parse().ok()
}

/// The IPv4 part of an IPv6 network in the `::/96` embedding; a network wider than `::/96`
/// covers all of IPv4.
fn embedded_ipv4(base: Ipv6Addr, prefix: u8) -> Ipv4Net {
    let Some(v4_prefix) = prefix.checked_sub(96) else {
        return Ipv4Net::default();
    };
    // The low 32 bits are the IPv4 address; truncation is the point.
    #[allow(clippy::cast_possible_truncation)]
    let addr = Ipv4Addr::from(u128::from(base) as u32);
    Ipv4Net::new(addr, v4_prefix).map_or_else(|_| Ipv4Net::default(), |n| n.trunc())
}

/// The network `within(query)` reported, as seen from inside `query`.
fn clip(query: IpNet, base: IpAddr, prefix: u8) -> IpNet {
    let found = match (query, base) {
        (IpNet::V4(_), IpAddr::V4(v4)) => Ipv4Net::new(v4, prefix).map(IpNet::V4).ok(),
        // No IPv4 tree: the record covering ::/96 covers the whole IPv4 query.
        (IpNet::V4(_), IpAddr::V6(_)) => None,
        (IpNet::V6(_), IpAddr::V6(v6)) => Ipv6Net::new(v6, prefix).map(IpNet::V6).ok(),
        // The IPv6 queries exclude ::/96, so maxminddb has no reason to format as IPv4.
        (IpNet::V6(_), IpAddr::V4(v4)) => {
            Ipv6Net::new(v4.to_ipv6_compatible(), prefix.saturating_add(96))
                .map(IpNet::V6)
                .ok()
        }
    };
    match found {
        Some(found) if query.contains(&found) => found.trunc(),
        _ => query,
    }
}

/// `::/0` minus [`IPV4_MIRRORS`], as the fewest CIDR blocks, in address order.
fn ipv6_without_ipv4_mirrors() -> Vec<Ipv6Net> {
    fn split(base: u128, len: u8, out: &mut Vec<(u128, u8)>) {
        let contains = |outer: (u128, u8), inner: (u128, u8)| {
            outer.1 <= inner.1 && (outer.1 == 0 || (outer.0 ^ inner.0) >> (128 - outer.1) == 0)
        };
        if IPV4_MIRRORS.iter().any(|&m| contains(m, (base, len))) {
            return;
        }
        if !IPV4_MIRRORS.iter().any(|&m| contains((base, len), m)) {
            out.push((base, len));
            return;
        }
        // Only reached with len < 96 (a mirror lies strictly inside).
        split(base, len + 1, out);
        split(base | (1u128 << (127 - len)), len + 1, out);
    }
    let mut pieces = Vec::new();
    split(0, 0, &mut pieces);
    pieces
        .into_iter()
        .filter_map(|(base, len)| Ipv6Net::new(Ipv6Addr::from(base), len).ok())
        .collect()
}

/// The fields of a GeoIP2 City (or Country) record that steering uses, borrowed from the
/// mapped file. Everything else in the record is skipped without being decoded.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    /// Where the network is registered; used only when `country` is absent (GeoLite2 leaves
    /// it out for, e.g., some anycast networks), which beats falling to the policy default.
    #[serde(borrow, default)]
    registered_country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    continent: Option<ContinentCode<'a>>,
    /// The largest subdivision only: geo maps key on `US-CA`, not on counties.
    #[serde(borrow, default, deserialize_with = "first_element")]
    subdivisions: Option<IsoCode<'a>>,
    #[serde(default)]
    location: Option<Point>,
}

#[derive(Clone, Copy, Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Clone, Copy, Deserialize)]
struct ContinentCode<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Clone, Copy, Deserialize)]
struct Point {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

impl<'a> CityRecord<'a> {
    fn to_location(&self) -> Location {
        let code = |c: Option<IsoCode<'a>>| c.and_then(|c| c.iso_code).filter(|s| !s.is_empty());
        let country = code(self.country).or_else(|| code(self.registered_country));
        let subdivision = country.zip(code(self.subdivisions)).map(|(country, sub)| {
            let mut joined = String::with_capacity(country.len() + 1 + sub.len());
            joined.push_str(country);
            joined.push('-');
            joined.push_str(sub);
            upper(joined.into_boxed_str())
        });
        let continent = self
            .continent
            .and_then(|c| c.code)
            .filter(|s| !s.is_empty());
        let coordinates = self.location.and_then(|p| {
            let (latitude, longitude) = (p.latitude?, p.longitude?);
            (latitude.is_finite() && longitude.is_finite()).then_some(Coordinates {
                latitude,
                longitude,
            })
        });
        Location {
            country: country.map(|c| upper(c.into())),
            subdivision,
            continent: continent.map(|c| upper(c.into())),
            coordinates,
        }
    }
}

fn upper(mut code: Box<str>) -> Box<str> {
    code.make_ascii_uppercase();
    code
}

/// Deserializes the first element of a sequence and skips the rest, so reading
/// `subdivisions` allocates nothing.
fn first_element<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct First<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for First<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let first = seq.next_element::<T>()?;
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }

    deserializer.deserialize_seq(First(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mmdb_writer::{IpVersion, Value, Writer};
    use proptest::prelude::*;

    use super::*;
    use crate::geo::build_database;
    use crate::geo::test_support::{TempFile, location, repo_file};

    fn net(s: &str) -> IpNet {
        s.parse().expect("network")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn demo() -> GeoDb {
        GeoDb::open(&repo_file("geoip/demo.mmdb")).expect("demo database opens")
    }

    /// Writes `entries` as a database and opens it; the file lives as long as the guard.
    fn open_built(entries: &[(IpNet, Location)]) -> (GeoDb, TempFile) {
        let bytes =
            build_database("Test-City", entries, crate::geo::CSV_BUILD_EPOCH).expect("build");
        let file = TempFile::with_contents(&bytes);
        let db = GeoDb::open(&file.path).expect("open");
        (db, file)
    }

    #[test]
    fn demo_places_real_networks_where_geolite2_does() {
        // (address looked up, country, continent, network it must match)
        let table = [
            ("81.2.69.142", "GB", "EU", "81.2.69.0/24"),
            ("185.199.108.153", "NL", "EU", "185.199.108.0/24"),
            ("2a02:2e0:3fe:1001:302::", "DE", "EU", "2a02:2e0::/32"),
            ("8.8.8.8", "US", "NA", "8.8.8.0/24"),
            ("2001:4860:4860::8888", "US", "NA", "2001:4860::/32"),
            ("200.160.2.3", "BR", "SA", "200.160.0.0/20"),
            ("49.36.128.1", "IN", "AS", "49.36.0.0/16"),
            ("133.242.0.3", "JP", "AS", "133.242.0.0/16"),
            ("1.1.1.1", "AU", "OC", "1.1.1.0/24"),
            ("41.0.255.254", "ZA", "AF", "41.0.0.0/16"),
        ];
        let db = demo();
        for (addr, country, continent, network) in table {
            let found = db
                .lookup(ip(addr))
                .unwrap_or_else(|| panic!("{addr} not found"));
            assert_eq!(found.location.country.as_deref(), Some(country), "{addr}");
            assert_eq!(
                found.location.continent.as_deref(),
                Some(continent),
                "{addr}"
            );
            assert_eq!(found.network, net(network), "{addr}");
            assert!(found.location.coordinates.is_some(), "{addr}");
        }
    }

    #[test]
    fn demo_london_has_subdivision_and_coordinates() {
        let found = demo().lookup(ip("81.2.69.160")).expect("found");
        assert_eq!(
            found.location,
            location("EU", "GB", Some("GB-ENG"), Some((51.5142, -0.0931)))
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_looked_up_as_ipv4() {
        let db = demo();
        let mapped = db.lookup(ip("::ffff:81.2.69.142")).expect("found");
        let plain = db.lookup(ip("81.2.69.142")).expect("found");
        assert_eq!(mapped, plain);
        assert_eq!(mapped.network, net("81.2.69.0/24"));
    }

    #[test]
    fn addresses_without_data_are_not_found() {
        let db = demo();
        for addr in [
            "192.0.2.1",
            "81.2.88.1",
            "2001:db8::1",
            "::1",
            "::ffff:192.0.2.1",
        ] {
            assert_eq!(db.lookup(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn six_to_four_addresses_resolve_through_the_alias() {
        // 2002:5102:4501:: embeds 81.2.69.1.
        let found = demo().lookup(ip("2002:5102:4501::1")).expect("found");
        assert_eq!(found.location.country.as_deref(), Some("GB"));
        assert_eq!(found.network, net("2002:5102:4500::/40"));
    }

    #[test]
    fn info_reports_metadata() {
        let info = demo().info();
        assert_eq!(
            info,
            GeoDbInfo {
                database_type: crate::geo::CSV_DATABASE_TYPE.to_owned(),
                build_epoch: crate::geo::CSV_BUILD_EPOCH,
                ip_version: 6,
                node_count: info.node_count,
            }
        );
        assert!(info.node_count > 0);
    }

    #[test]
    fn located_networks_round_trip() {
        let london = location("EU", "GB", Some("GB-ENG"), Some((51.5142, -0.0931)));
        let reading = location("EU", "GB", Some("GB-ENG"), Some((51.4543, -0.9781)));
        let edinburgh = location("EU", "GB", Some("GB-SCT"), Some((55.9521, -3.1965)));
        let dublin = location("EU", "IE", Some("IE-L"), None);
        let us = location("NA", "US", None, Some((37.751, -97.822)));
        // Sorted, adjacent networks with different locations (so the writer cannot merge
        // them), identical locations far apart (so they must be interned).
        let entries = vec![
            (net("8.8.8.0/24"), us.clone()),
            (net("81.2.68.0/24"), reading.clone()),
            (net("81.2.69.0/24"), london.clone()),
            (net("81.2.70.0/23"), edinburgh.clone()),
            (net("81.2.72.0/21"), dublin.clone()),
            (net("2001:4860::/32"), us.clone()),
            (net("2a00:1450:4009::/48"), london.clone()),
            (net("2a00:1450:400a::/47"), dublin.clone()),
        ];
        let (db, _file) = open_built(&entries);
        let located = db.located_networks().expect("walk");

        assert_eq!(located.locations.len(), 5, "{:?}", located.locations);
        let resolved: Vec<(IpNet, Location)> = located
            .networks
            .iter()
            .map(|(n, id)| (*n, located.locations[id.0 as usize].clone()))
            .collect();
        assert_eq!(resolved, entries);
        let id_of = |n: &str| {
            located
                .networks
                .iter()
                .find(|(found, _)| *found == net(n))
                .map(|(_, id)| *id)
        };
        assert_eq!(id_of("8.8.8.0/24"), id_of("2001:4860::/32"));
        assert_eq!(id_of("81.2.69.0/24"), id_of("2a00:1450:4009::/48"));
    }

    #[test]
    fn demo_networks_are_reported_once_each() {
        let located = demo().located_networks().expect("walk");
        assert!(sorted_disjoint(&located.networks));
        let csv_rows = std::fs::read_to_string(repo_file("geoip/demo.csv"))
            .expect("csv")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("network,") && !l.is_empty())
            .count();
        // The demo has no sibling networks with equal locations, so nothing merges.
        assert_eq!(located.networks.len(), csv_rows);
        let mirrors = ["::/96", "::ffff:0:0/96", "2001::/32", "2002::/16"].map(net);
        for (network, _) in &located.networks {
            assert!(
                !mirrors.iter().any(|m| m.contains(network)),
                "{network} is an IPv4 mirror"
            );
        }
    }

    #[test]
    fn ipv6_default_route_is_partitioned_around_ipv4_mirrors() {
        let anywhere = location("EU", "DE", None, None);
        let london = location("EU", "GB", Some("GB-ENG"), None);
        let (db, _file) = open_built(&[
            (net("::/0"), anywhere.clone()),
            (net("81.2.69.0/24"), london.clone()),
        ]);
        let located = db.located_networks().expect("walk");
        assert!(sorted_disjoint(&located.networks));

        let size = |n: &IpNet| match n {
            IpNet::V4(v4) => 1u128 << (32 - v4.prefix_len()),
            IpNet::V6(v6) => 1u128 << (128 - v6.prefix_len()),
        };
        let (v4, v6): (Vec<_>, Vec<_>) = located
            .networks
            .iter()
            .partition(|(n, _)| matches!(n, IpNet::V4(_)));
        assert_eq!(v4.iter().map(|(n, _)| size(n)).sum::<u128>(), 1 << 32);
        let v6_total = v6
            .iter()
            .map(|(n, _)| size(n))
            .try_fold(0u128, u128::checked_add)
            .expect("no overflow");
        // All of IPv6 but ::/96, ::ffff:0:0/96, 2001::/32 and 2002::/16.
        let expected = u128::MAX - (2u128 << 32) - (1u128 << 96) - (1u128 << 112) + 1;
        assert_eq!(v6_total, expected);

        let london_id = located
            .networks
            .iter()
            .find(|(n, _)| *n == net("81.2.69.0/24"))
            .map(|(_, id)| *id)
            .expect("London reported");
        assert_eq!(located.locations[london_id.0 as usize], london);
        assert_eq!(located.locations.len(), 2);
    }

    #[test]
    fn database_without_an_ipv4_tree_reports_ipv4_as_one_network() {
        // 0.0.0.0/0 is a single record at ::/96: there is no IPv4 tree below it. With the
        // same location on the IPv6 network, both share one data record (which maxminddb's
        // alias skipping would mistake for an alias).
        let everywhere = location("EU", "GB", None, None);
        for ipv6_location in [location("EU", "DE", None, None), everywhere.clone()] {
            let entries = [
                (net("0.0.0.0/0"), everywhere.clone()),
                (net("2a02::/16"), ipv6_location),
            ];
            let (db, _file) = open_built(&entries);
            let found = db.lookup(ip("198.51.100.7")).expect("found");
            assert_eq!(found.network, net("0.0.0.0/0"));
            assert_eq!(found.location, everywhere);

            let located = db.located_networks().expect("walk");
            let resolved: Vec<(IpNet, Location)> = located
                .networks
                .iter()
                .map(|(n, id)| (*n, located.locations[id.0 as usize].clone()))
                .collect();
            assert_eq!(resolved, entries);
        }
    }

    fn city_value(country: &str) -> Value {
        Value::map([("country", Value::map([("iso_code", Value::from(country))]))])
    }

    #[test]
    fn ipv4_only_databases_are_read() {
        let mut writer = Writer::builder("GeoIP2-Country")
            .ip_version(IpVersion::V4)
            .build();
        writer
            .insert_value(net("81.2.69.0/24"), city_value("GB"))
            .expect("insert");
        let file = TempFile::with_contents(&writer.to_bytes().expect("bytes"));
        let db = GeoDb::open(&file.path).expect("open");

        assert_eq!(
            db.lookup(ip("81.2.69.1")).map(|m| m.network),
            Some(net("81.2.69.0/24"))
        );
        assert_eq!(
            db.lookup(ip("::ffff:81.2.69.1")).map(|m| m.network),
            Some(net("81.2.69.0/24"))
        );
        assert_eq!(db.lookup(ip("2a02::1")), None);
        let located = db.located_networks().expect("walk");
        assert_eq!(located.networks, vec![(net("81.2.69.0/24"), LocationId(0))]);
        assert_eq!(located.locations[0].country.as_deref(), Some("GB"));
    }

    #[test]
    fn registered_country_stands_in_for_a_missing_country() {
        let mut writer = Writer::new("GeoLite2-City");
        let record = Value::map([
            ("continent", Value::map([("code", Value::from("OC"))])),
            (
                "registered_country",
                Value::map([("iso_code", Value::from("AU"))]),
            ),
            (
                "subdivisions",
                Value::Array(vec![
                    Value::map([("iso_code", Value::from("NSW"))]),
                    Value::map([("iso_code", Value::from("XX"))]),
                ]),
            ),
            ("location", Value::map([("latitude", Value::from(-33.0))])),
            ("names", Value::Map(BTreeMap::new())),
        ]);
        writer
            .insert_value(net("1.1.1.0/24"), record)
            .expect("insert");
        let file = TempFile::with_contents(&writer.to_bytes().expect("bytes"));
        let found = GeoDb::open(&file.path)
            .expect("open")
            .lookup(ip("1.1.1.1"))
            .expect("found");
        // Half a coordinate is no coordinate; the first subdivision is the one we keep.
        assert_eq!(found.location, location("OC", "AU", Some("AU-NSW"), None));
    }

    #[test]
    fn open_names_the_path_and_the_problem() {
        let missing = repo_file("geoip/no-such-file.mmdb");
        assert_eq!(
            GeoDb::open(&missing).map(|_| ()),
            Err(GeoError::Missing {
                path: missing.clone()
            })
        );

        let garbage = TempFile::with_contents(b"this is not a MaxMind database\n");
        assert!(matches!(
            GeoDb::open(&garbage.path),
            Err(GeoError::NotMaxMindDb { path, .. }) if path == garbage.path
        ));

        let empty = TempFile::with_contents(b"");
        assert_eq!(
            GeoDb::open(&empty.path).map(|_| ()),
            Err(GeoError::NotMaxMindDb {
                path: empty.path.clone(),
                reason: "the file is empty".to_owned()
            })
        );

        let mut asn = Writer::new("GeoLite2-ASN");
        asn.insert_value(
            net("8.8.8.0/24"),
            Value::map([("autonomous_system_number", Value::from(15169u32))]),
        )
        .expect("insert");
        let asn = TempFile::with_contents(&asn.to_bytes().expect("bytes"));
        assert_eq!(
            GeoDb::open(&asn.path).map(|_| ()),
            Err(GeoError::UnsupportedDatabaseType {
                path: asn.path.clone(),
                database_type: "GeoLite2-ASN".to_owned()
            })
        );
    }

    #[test]
    fn ipv6_partition_covers_everything_but_the_mirrors() {
        let pieces = ipv6_without_ipv4_mirrors();
        assert!(pieces.windows(2).all(|w| w[0].broadcast() < w[1].network()));
        let total = pieces
            .iter()
            .map(|p| 1u128 << (128 - p.prefix_len()))
            .try_fold(0u128, u128::checked_add)
            .expect("no overflow");
        assert_eq!(
            total,
            u128::MAX - (2u128 << 32) - (1u128 << 96) - (1u128 << 112) + 1
        );
        for mirror in IPV4_MIRRORS {
            let mirror = Ipv6Net::new(Ipv6Addr::from(mirror.0), mirror.1).expect("net");
            assert!(!pieces.iter().any(|p| p.contains(&mirror.network())));
        }
    }

    /// The most specific entry containing `addr`, as the writer promises.
    fn naive(entries: &[(IpNet, Location)], addr: IpAddr) -> Option<&Location> {
        entries
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, l)| l)
    }

    fn arb_entries() -> impl Strategy<Value = Vec<(IpNet, Location)>> {
        let pool = [
            location("EU", "GB", Some("GB-ENG"), Some((51.5, -0.1))),
            location("EU", "GB", Some("GB-SCT"), None),
            location("NA", "US", None, Some((37.751, -97.822))),
        ];
        let v4 = (any::<u32>(), 8u8..=28).prop_map(|(bits, len)| {
            let addr = Ipv4Addr::from(0x0a00_0000 | (bits & 0x00ff_ffff));
            IpNet::V4(Ipv4Net::new(addr, len).expect("len").trunc())
        });
        let v6 = (any::<u128>(), 12u8..=64).prop_map(|(bits, len)| {
            let addr = Ipv6Addr::from((0x2a00u128 << 112) | (bits >> 12));
            IpNet::V6(Ipv6Net::new(addr, len).expect("len").trunc())
        });
        prop::collection::btree_map(prop_oneof![v4, v6], 0..3usize, 1..12)
            .prop_map(move |m| m.into_iter().map(|(n, i)| (n, pool[i].clone())).collect())
    }

    fn edges(n: IpNet) -> [IpAddr; 2] {
        [n.network(), n.broadcast()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the entries (overlapping or not), lookups agree with "most specific
        /// entry wins", matched networks are uniform, and `located_networks` tiles exactly
        /// the addresses that have data.
        #[test]
        fn reader_agrees_with_the_entries(entries in arb_entries(), probes in prop::collection::vec(any::<u32>(), 8)) {
            let (db, _file) = open_built(&entries);

            let mut addrs: Vec<IpAddr> = entries.iter().flat_map(|(n, _)| edges(*n)).collect();
            addrs.extend(probes.iter().map(|p| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (p & 0x00ff_ffff)))));
            addrs.extend(probes.iter().map(|p| IpAddr::V6(Ipv6Addr::from((0x2a00u128 << 112) | (u128::from(*p) << 80)))));
            for addr in addrs {
                let found = db.lookup(addr);
                prop_assert_eq!(found.as_ref().map(|m| &m.location), naive(&entries, addr), "{}", addr);
                if let Some(found) = found {
                    prop_assert!(found.network.contains(&addr));
                    prop_assert_eq!(matches!(found.network, IpNet::V4(_)), addr.is_ipv4());
                    for edge in edges(found.network) {
                        prop_assert_eq!(naive(&entries, edge), Some(&found.location), "{} edge {}", found.network, edge);
                    }
                }
            }

            let located = db.located_networks().expect("walk");
            prop_assert!(sorted_disjoint(&located.networks));
            let distinct: std::collections::HashSet<&Location> = located.locations.iter().collect();
            prop_assert_eq!(distinct.len(), located.locations.len());
            for (network, id) in &located.networks {
                for edge in edges(*network) {
                    prop_assert_eq!(naive(&entries, edge), Some(&located.locations[id.0 as usize]));
                }
            }
            for (entry, _) in &entries {
                for edge in edges(*entry) {
                    prop_assert!(located.networks.iter().any(|(n, _)| n.contains(&edge)), "{} not covered", edge);
                }
            }
        }
    }
}
