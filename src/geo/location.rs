//! Where a client is, as far as steering cares: the vocabulary shared by the GeoIP reader
//! (which produces it) and the steering core (which consumes it). No IO here.

use std::hash::{Hash, Hasher};

use ipnet::IpNet;

use crate::config::model::Coordinates;

/// A client location from GeoIP. Codes are upper-case: ISO 3166-1 alpha-2 country (`GB`),
/// ISO 3166-2 subdivision including its country (`US-CA`), MaxMind continent code (`EU`).
#[derive(Clone, Debug, Default)]
pub struct Location {
    pub country: Option<Box<str>>,
    pub subdivision: Option<Box<str>>,
    pub continent: Option<Box<str>>,
    pub coordinates: Option<Coordinates>,
}

// Coordinates are compared bit for bit: two locations are "the same" for interning only when
// the database stored the same numbers.
impl PartialEq for Location {
    fn eq(&self, other: &Self) -> bool {
        self.country == other.country
            && self.subdivision == other.subdivision
            && self.continent == other.continent
            && coordinate_bits(self.coordinates) == coordinate_bits(other.coordinates)
    }
}

impl Eq for Location {}

impl Hash for Location {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.country.hash(state);
        self.subdivision.hash(state);
        self.continent.hash(state);
        coordinate_bits(self.coordinates).hash(state);
    }
}

fn coordinate_bits(c: Option<Coordinates>) -> Option<(u64, u64)> {
    c.map(|c| (c.latitude.to_bits(), c.longitude.to_bits()))
}

/// A GeoIP lookup result: the location and the database network it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeoMatch {
    pub location: Location,
    pub network: IpNet,
}

/// Index into [`LocatedNetworks::locations`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocationId(pub u32);

/// Every network of a GeoIP database with its (interned) location, for precomputing
/// per-policy client maps. `networks` is sorted by address and non-overlapping; IPv4
/// networks appear as IPv4 (never as `::/96` or its aliases).
#[derive(Clone, Debug, Default)]
pub struct LocatedNetworks {
    pub networks: Vec<(IpNet, LocationId)>,
    pub locations: Vec<Location>,
}
