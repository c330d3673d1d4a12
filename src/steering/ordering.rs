//! Ordering functions: how a policy ranks its candidates for a client (geo map, nearest) or
//! for a query (weighted draw). Pure functions of their inputs; no health, no IO.

use crate::{
    config::model::{Coordinates, GeoMap, RegionIdx},
    geo::Location,
};

use super::{Basis, client_map::Preference};

/// `preferred` restricted to `candidates` (in `preferred`'s order, without repeats), then the
/// remaining candidates in configured order, so every class is a full ordering and the health
/// filter can fall back to the rest before failing open.
pub(crate) fn preferred_then_rest(
    preferred: &[RegionIdx],
    candidates: &[RegionIdx],
    out: &mut Vec<RegionIdx>,
) {
    for r in preferred {
        if candidates.contains(r) && !out.contains(r) {
            out.push(*r);
        }
    }
    for r in candidates {
        if !out.contains(r) {
            out.push(*r);
        }
    }
}

fn overridden(regions: &[RegionIdx], candidates: &[RegionIdx], out: &mut Vec<RegionIdx>) -> bool {
    if !regions.iter().any(|r| candidates.contains(r)) {
        return false;
    }
    preferred_then_rest(regions, candidates, out);
    true
}

/// Geo map lookup order: subdivision, country, continent, default (design §3).
pub(crate) struct GeoMapPreference<'a> {
    pub map: &'a GeoMap,
    pub candidates: &'a [RegionIdx],
}

impl Preference for GeoMapPreference<'_> {
    fn located(&self, location: &Location, out: &mut Vec<RegionIdx>) -> Basis {
        let levels = [
            (
                &location.subdivision,
                &self.map.subdivisions,
                Basis::GeoSubdivision,
            ),
            (&location.country, &self.map.countries, Basis::GeoCountry),
            (
                &location.continent,
                &self.map.continents,
                Basis::GeoContinent,
            ),
        ];
        for (code, table, basis) in levels {
            if let Some(list) = code.as_deref().and_then(|c| table.get(c)) {
                preferred_then_rest(list, self.candidates, out);
                return basis;
            }
        }
        self.unlocated(out)
    }

    fn unlocated(&self, out: &mut Vec<RegionIdx>) -> Basis {
        preferred_then_rest(&self.map.default, self.candidates, out);
        Basis::GeoDefault
    }

    fn overridden(&self, regions: &[RegionIdx], out: &mut Vec<RegionIdx>) -> bool {
        overridden(regions, self.candidates, out)
    }
}

/// Nearest by great-circle distance; ties keep configured order.
pub(crate) struct NearestPreference<'a> {
    pub candidates: &'a [RegionIdx],
    /// Coordinates of each candidate, same order as `candidates`.
    pub coordinates: Vec<Coordinates>,
}

impl Preference for NearestPreference<'_> {
    fn located(&self, location: &Location, out: &mut Vec<RegionIdx>) -> Basis {
        let Some(client) = location
            .coordinates
            .filter(|c| c.latitude.is_finite() && c.longitude.is_finite())
        else {
            return self.unlocated(out);
        };
        let mut ranked: Vec<(f64, usize)> = self
            .coordinates
            .iter()
            .enumerate()
            .map(|(i, c)| (great_circle_km(client, *c), i))
            .collect();
        // Stable on equal distance: configured order breaks ties.
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        out.extend(ranked.iter().map(|&(_, i)| self.candidates[i]));
        Basis::Nearest
    }

    fn unlocated(&self, out: &mut Vec<RegionIdx>) -> Basis {
        out.extend_from_slice(self.candidates);
        Basis::Unlocated
    }

    fn overridden(&self, regions: &[RegionIdx], out: &mut Vec<RegionIdx>) -> bool {
        overridden(regions, self.candidates, out)
    }
}

/// Most candidates a distance budget considers: reaches are one `u64` bit set per
/// candidate. Candidates past it are never moved to the front by cost.
pub(crate) const MAX_REACH: usize = 64;

/// Any ordering, plus the distance budget of cost-aware steering (`cost = { within_km }`):
/// for a located client, which candidates are within `budget_km` of each candidate's
/// distance. Computed per GeoIP location at build time because `decide` never sees
/// coordinates.
pub(crate) struct WithinKm<'a> {
    pub inner: &'a dyn Preference,
    /// Coordinates of each candidate, in the policy's candidate order.
    pub coordinates: Vec<Coordinates>,
    pub budget_km: f64,
}

impl Preference for WithinKm<'_> {
    fn located(&self, location: &Location, out: &mut Vec<RegionIdx>) -> Basis {
        self.inner.located(location, out)
    }

    fn unlocated(&self, out: &mut Vec<RegionIdx>) -> Basis {
        self.inner.unlocated(out)
    }

    fn overridden(&self, regions: &[RegionIdx], out: &mut Vec<RegionIdx>) -> bool {
        self.inner.overridden(regions, out)
    }

    fn reach(&self, location: &Location, out: &mut Vec<u64>) {
        let Some(client) = location
            .coordinates
            .filter(|c| c.latitude.is_finite() && c.longitude.is_finite())
        else {
            return;
        };
        let distances: Vec<f64> = self
            .coordinates
            .iter()
            .take(MAX_REACH)
            .map(|c| great_circle_km(client, *c))
            .collect();
        out.extend(distances.iter().map(|&from| {
            distances
                .iter()
                .enumerate()
                .filter(|&(_, &d)| d <= from + self.budget_km)
                .fold(0u64, |mask, (j, _)| mask | (1 << j))
        }));
    }
}

/// Haversine distance on a spherical Earth (mean radius), in km. Good to ~0.5 %, far finer
/// than GeoIP accuracy.
pub fn great_circle_km(a: Coordinates, b: Coordinates) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0088;
    let (lat1, lat2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.longitude - a.longitude).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// SplitMix64: a tiny, well-mixed generator so that consecutive seeds give independent draws.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound > 0`), by multiply-shift (bias < bound / 2^64).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// Appends to `out`, until it holds `limit` regions, a weighted random permutation of the
/// `candidates` that pass `keep`: each next pick is drawn with probability proportional to its
/// weight among those not yet picked. Zero-weight regions come last, in configured order (they
/// take traffic only when nothing weighted is left). `out` doubles as the "already picked" set,
/// so the query path allocates nothing beyond it.
pub(crate) fn weighted_permutation(
    candidates: &[RegionIdx],
    keep: impl Fn(RegionIdx) -> bool,
    weight: impl Fn(RegionIdx) -> u64,
    seed: u64,
    limit: usize,
    out: &mut Vec<RegionIdx>,
) {
    let mut rng = SplitMix64::new(seed);
    let start = out.len();
    let open = |r: RegionIdx, out: &[RegionIdx]| keep(r) && !out[start..].contains(&r);
    while out.len() < limit {
        let total: u64 = candidates
            .iter()
            .filter(|&&r| open(r, out))
            .map(|&r| weight(r))
            .fold(0u64, u64::saturating_add);
        if total == 0 {
            for &r in candidates {
                if out.len() >= limit {
                    break;
                }
                if open(r, out) {
                    out.push(r);
                }
            }
            return;
        }
        let mut x = rng.below(total);
        let mut picked = None;
        for &r in candidates {
            if !open(r, out) {
                continue;
            }
            let w = weight(r);
            if x < w {
                picked = Some(r);
                break;
            }
            x -= w;
        }
        match picked {
            Some(r) => out.push(r),
            // Only reachable if weights changed between the two passes; they cannot.
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn r(i: u16) -> RegionIdx {
        RegionIdx(i)
    }

    #[test]
    fn preferred_then_rest_table() {
        let cases: &[(&[u16], &[u16], &[u16])] = &[
            (&[2], &[0, 1, 2], &[2, 0, 1]),
            (&[2, 0], &[0, 1, 2], &[2, 0, 1]),
            (&[5, 1], &[0, 1, 2], &[1, 0, 2]),
            (&[], &[0, 1], &[0, 1]),
            (&[1, 1], &[0, 1], &[1, 0]),
        ];
        for (preferred, candidates, want) in cases {
            let p: Vec<_> = preferred.iter().map(|&i| r(i)).collect();
            let c: Vec<_> = candidates.iter().map(|&i| r(i)).collect();
            let mut out = Vec::new();
            preferred_then_rest(&p, &c, &mut out);
            let got: Vec<u16> = out.iter().map(|x| x.0).collect();
            assert_eq!(&got, want, "{preferred:?} {candidates:?}");
        }
    }

    #[test]
    fn geo_map_levels() {
        let mut map = GeoMap::default();
        map.subdivisions.insert("US-CA".into(), vec![r(1)]);
        map.countries.insert("US".into(), vec![r(0)]);
        map.continents.insert("EU".into(), vec![r(2), r(0)]);
        map.default = vec![r(0)];
        let candidates = [r(0), r(1), r(2)];
        let pref = GeoMapPreference {
            map: &map,
            candidates: &candidates,
        };
        let loc = |c: Option<&str>, s: Option<&str>, k: Option<&str>| Location {
            country: c.map(Into::into),
            subdivision: s.map(Into::into),
            continent: k.map(Into::into),
            coordinates: None,
        };
        let cases = [
            (
                loc(Some("US"), Some("US-CA"), Some("NA")),
                Basis::GeoSubdivision,
                [1, 0, 2],
            ),
            (
                loc(Some("US"), Some("US-NY"), Some("NA")),
                Basis::GeoCountry,
                [0, 1, 2],
            ),
            (
                loc(Some("FR"), None, Some("EU")),
                Basis::GeoContinent,
                [2, 0, 1],
            ),
            (
                loc(Some("JP"), None, Some("AS")),
                Basis::GeoDefault,
                [0, 1, 2],
            ),
            (loc(None, None, None), Basis::GeoDefault, [0, 1, 2]),
        ];
        for (location, basis, want) in cases {
            let mut out = Vec::new();
            assert_eq!(pref.located(&location, &mut out), basis, "{location:?}");
            assert_eq!(out, want.map(r), "{location:?}");
        }
    }

    #[test]
    fn nearest_orders_by_distance_with_ties_in_configured_order() {
        let c = |lat, lon| Coordinates {
            latitude: lat,
            longitude: lon,
        };
        let candidates = [r(0), r(1), r(2), r(3)];
        let pref = NearestPreference {
            candidates: &candidates,
            // us-east, eu-west, ap-south, and a second eu-west at the same spot.
            coordinates: vec![c(39.0, -77.5), c(53.3, -6.3), c(19.1, 72.9), c(53.3, -6.3)],
        };
        let at = |lat, lon| Location {
            coordinates: Some(c(lat, lon)),
            ..Location::default()
        };
        let cases = [
            (at(51.5, -0.1), Basis::Nearest, [1, 3, 0, 2]), // London
            (at(40.7, -74.0), Basis::Nearest, [0, 1, 3, 2]), // New York
            (at(1.35, 103.8), Basis::Nearest, [2, 1, 3, 0]), // Singapore
            (at(f64::NAN, 0.0), Basis::Unlocated, [0, 1, 2, 3]),
            (Location::default(), Basis::Unlocated, [0, 1, 2, 3]),
        ];
        for (location, basis, want) in cases {
            let mut out = Vec::new();
            assert_eq!(pref.located(&location, &mut out), basis, "{location:?}");
            assert_eq!(out, want.map(r), "{location:?}");
        }
    }

    #[test]
    fn reach_marks_candidates_within_the_budget_of_each() {
        let c = |lat, lon| Coordinates {
            latitude: lat,
            longitude: lon,
        };
        let candidates = [r(0), r(1), r(2)];
        let nearest = NearestPreference {
            candidates: &candidates,
            coordinates: vec![c(53.3, -6.3), c(39.0, -77.5), c(50.1, 8.7)],
        };
        let pref = WithinKm {
            inner: &nearest,
            coordinates: nearest.coordinates.clone(),
            budget_km: 1500.0,
        };
        // London: Dublin ≈ 460 km, Frankfurt ≈ 640 km, Ashburn ≈ 5900 km.
        let london = Location {
            coordinates: Some(c(51.5, -0.1)),
            ..Location::default()
        };
        let mut reach = Vec::new();
        pref.reach(&london, &mut reach);
        assert_eq!(reach, [0b101, 0b111, 0b101]);
        reach.clear();
        pref.reach(&Location::default(), &mut reach);
        assert!(reach.is_empty());
    }

    #[test]
    fn great_circle_known_distances() {
        let c = |lat, lon| Coordinates {
            latitude: lat,
            longitude: lon,
        };
        // London–New York ≈ 5570 km; antipodes ≈ half the circumference.
        let d = great_circle_km(c(51.5074, -0.1278), c(40.7128, -74.0060));
        assert!((d - 5570.0).abs() < 15.0, "{d}");
        let d = great_circle_km(c(0.0, 0.0), c(0.0, 180.0));
        assert!((d - 20015.1).abs() < 1.0, "{d}");
        assert_eq!(great_circle_km(c(10.0, 10.0), c(10.0, 10.0)), 0.0);
    }

    #[test]
    fn weighted_permutation_is_a_permutation_with_zero_weights_last() {
        let candidates = [r(0), r(1), r(2), r(3)];
        let weights: HashMap<u16, u64> = [(0, 0), (1, 5), (2, 1), (3, 0)].into();
        for seed in 0..200 {
            let mut out = Vec::new();
            weighted_permutation(&candidates, |_| true, |x| weights[&x.0], seed, 4, &mut out);
            let mut sorted = out.clone();
            sorted.sort();
            assert_eq!(sorted, candidates);
            assert_eq!(&out[2..], &[r(0), r(3)], "seed {seed}");
        }
        let mut out = Vec::new();
        weighted_permutation(
            &candidates,
            |x| x != r(1),
            |x| weights[&x.0],
            7,
            2,
            &mut out,
        );
        assert_eq!(out, vec![r(2), r(0)]);
    }

    #[test]
    fn weighted_permutation_prefix_is_stable_across_limits() {
        // Explaining draws the whole permutation; the answer must be its prefix.
        let candidates = [r(0), r(1), r(2), r(3), r(4)];
        for seed in 0..500 {
            let mut short = Vec::new();
            let mut full = Vec::new();
            let w = |x: RegionIdx| u64::from(x.0) + 1;
            weighted_permutation(&candidates, |_| true, w, seed, 2, &mut short);
            weighted_permutation(&candidates, |_| true, w, seed, 5, &mut full);
            assert_eq!(short[..], full[..2], "seed {seed}");
        }
    }
}
