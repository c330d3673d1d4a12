//! The latency table: per client prefix (IPv4 /24, IPv6 /48), the round-trip time each
//! region's relay measured to clients from it (design §3), and [`LiveHealth`], the health
//! plane's whole output that carries it into the steering table.
//!
//! Built by the health view from fresh reports, indexed by the position of each region in the
//! list the view was asked about; [`LiveHealth::for_config`] re-indexes it to a config's
//! regions by id, so a reload that reorders regions cannot misapply an update. Lookups are
//! one hash probe. Pure data: no IO, no clock, no health judgement.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use ipnet::IpNet;

use super::status::RegionLive;
use crate::config::model::{DnsConfig, RegionIdx};

/// Prefix length of IPv4 latency data.
pub const V4_PREFIX: u8 = 24;
/// Prefix length of IPv6 latency data.
pub const V6_PREFIX: u8 = 48;

/// The RTT figures of one client prefix: (region, RTT in ms), lowest RTT first, ties by
/// region index.
pub type Figures = Box<[(RegionIdx, f32)]>;

/// Client prefix → measured RTT per region.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyTable {
    /// Keyed by the /24 network address.
    v4: HashMap<u32, Figures>,
    /// Keyed by the top 48 bits.
    v6: HashMap<u64, Figures>,
}

/// The figures for one client.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyLookup<'a> {
    /// The data's prefix, containing the client.
    pub prefix: IpNet,
    pub figures: &'a [(RegionIdx, f32)],
}

impl LatencyLookup<'_> {
    /// The RTT measured from this prefix to `r`, if any.
    pub fn rtt(&self, r: RegionIdx) -> Option<f32> {
        self.figures
            .iter()
            .find(|(x, _)| *x == r)
            .map(|&(_, rtt)| rtt)
    }
}

/// Collects samples into a [`LatencyTable`].
#[derive(Debug, Default)]
pub struct LatencyTableBuilder {
    v4: HashMap<u32, Vec<(RegionIdx, f32)>>,
    v6: HashMap<u64, Vec<(RegionIdx, f32)>>,
}

impl LatencyTableBuilder {
    /// Adds `region`'s figure for `prefix`. Only /24 (IPv4) and /48 (IPv6) networks with a
    /// finite, non-negative RTT are taken; a second figure of the same region for the same
    /// prefix is ignored. Returns whether it was taken.
    pub fn add(&mut self, prefix: IpNet, region: RegionIdx, rtt_ms: f64) -> bool {
        if !(rtt_ms.is_finite() && rtt_ms >= 0.0) {
            return false;
        }
        // Saturates to f32::MAX, which still orders last.
        let rtt = rtt_ms as f32;
        let entry = match prefix {
            IpNet::V4(n) if n.prefix_len() == V4_PREFIX => {
                self.v4.entry(u32::from(n.network())).or_default()
            }
            IpNet::V6(n) if n.prefix_len() == V6_PREFIX => {
                self.v6.entry(v6_key(u128::from(n.network()))).or_default()
            }
            _ => return false,
        };
        if entry.iter().any(|(r, _)| *r == region) {
            return false;
        }
        entry.push((region, rtt));
        true
    }

    pub fn build(self) -> LatencyTable {
        fn finish<K: std::hash::Hash + Eq>(
            map: HashMap<K, Vec<(RegionIdx, f32)>>,
        ) -> HashMap<K, Figures> {
            map.into_iter()
                .map(|(k, mut v)| {
                    v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                    (k, v.into_boxed_slice())
                })
                .collect()
        }
        LatencyTable {
            v4: finish(self.v4),
            v6: finish(self.v6),
        }
    }
}

fn v6_key(network: u128) -> u64 {
    // The top 48 bits; the shift leaves at most 64 bits.
    (network >> (128 - u32::from(V6_PREFIX))) as u64
}

impl LatencyTable {
    /// The figures for a client at `addr` (masked to `source_prefix`), if the client's whole
    /// data prefix is known (the source prefix is at least /24 or /48) and has data.
    pub fn lookup(&self, addr: IpAddr, source_prefix: u8) -> Option<LatencyLookup<'_>> {
        match addr {
            IpAddr::V4(a) if source_prefix >= V4_PREFIX => {
                let key = u32::from(a) & !(u32::MAX >> V4_PREFIX);
                let figures = self.v4.get(&key)?;
                let prefix = IpNet::new(IpAddr::V4(key.into()), V4_PREFIX).ok()?;
                Some(LatencyLookup { prefix, figures })
            }
            IpAddr::V6(a) if source_prefix >= V6_PREFIX => {
                let key = v6_key(u128::from(a));
                let figures = self.v6.get(&key)?;
                let network = u128::from(key) << (128 - u32::from(V6_PREFIX));
                let prefix = IpNet::new(IpAddr::V6(network.into()), V6_PREFIX).ok()?;
                Some(LatencyLookup { prefix, figures })
            }
            _ => None,
        }
    }

    /// Prefix length of the latency data of `addr`'s family.
    pub fn data_prefix(addr: IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => V4_PREFIX,
            IpAddr::V6(_) => V6_PREFIX,
        }
    }

    /// Number of client prefixes with data (IPv4, IPv6): a summary for status pages.
    pub fn prefix_counts(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The same table with region indices mapped through `map` (old index → new); figures of
    /// regions mapped to `None` are dropped.
    fn remapped(&self, map: &[Option<RegionIdx>]) -> LatencyTable {
        fn remap<K: Copy + std::hash::Hash + Eq>(
            table: &HashMap<K, Figures>,
            map: &[Option<RegionIdx>],
        ) -> HashMap<K, Figures> {
            table
                .iter()
                .filter_map(|(&k, figures)| {
                    let mut v: Vec<(RegionIdx, f32)> = figures
                        .iter()
                        .filter_map(|&(r, rtt)| Some((map.get(r.get()).copied()??, rtt)))
                        .collect();
                    v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                    (!v.is_empty()).then(|| (k, v.into_boxed_slice()))
                })
                .collect()
        }
        LatencyTable {
            v4: remap(&self.v4, map),
            v6: remap(&self.v6, map),
        }
    }
}

/// Everything the health plane knows at one moment, by region id: what
/// `SnapshotStore::update_health` publishes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveHealth {
    /// Region ids; `regions` and the latency table's region indices follow this order.
    pub ids: Vec<Arc<str>>,
    pub regions: Vec<RegionLive>,
    pub latency: Arc<LatencyTable>,
}

impl LiveHealth {
    /// The per-region states and latency table re-indexed to `config`'s regions. Regions the
    /// config has and this does not are unknown; regions this has and the config does not
    /// are dropped.
    pub fn for_config(&self, config: &DnsConfig) -> (Vec<RegionLive>, Arc<LatencyTable>) {
        let same_order = config.regions.len() == self.ids.len()
            && config
                .regions
                .iter()
                .zip(&self.ids)
                .all(|(region, id)| region.id == *id);
        if same_order {
            return (self.regions.clone(), Arc::clone(&self.latency));
        }
        let by_id: HashMap<&str, usize> = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (&**id, i))
            .collect();
        let regions = config
            .regions
            .iter()
            .map(|region| {
                by_id
                    .get(&*region.id)
                    .and_then(|&i| self.regions.get(i).copied())
                    .unwrap_or_default()
            })
            .collect();
        let map: Vec<Option<RegionIdx>> =
            self.ids.iter().map(|id| config.region_by_id(id)).collect();
        (regions, Arc::new(self.latency.remapped(&map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(i: u16) -> RegionIdx {
        RegionIdx(i)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn only_whole_data_prefixes_with_sane_figures_are_taken() {
        let mut b = LatencyTableBuilder::default();
        let cases = [
            ("203.0.113.0/24", 0, 12.0, true),
            ("203.0.113.0/24", 1, 8.5, true),
            ("203.0.113.0/24", 1, 3.0, false), // second figure of the same region
            ("203.0.0.0/16", 0, 1.0, false),
            ("203.0.113.7/32", 0, 1.0, false),
            ("198.51.100.0/24", 0, f64::NAN, false),
            ("198.51.100.0/24", 0, -1.0, false),
            ("2001:db8:1::/48", 2, 40.0, true),
            ("2001:db8::/32", 2, 40.0, false),
        ];
        for (prefix, region, rtt, taken) in cases {
            assert_eq!(b.add(net(prefix), r(region), rtt), taken, "{prefix} {rtt}");
        }
        let table = b.build();
        assert_eq!(table.prefix_counts(), (1, 1));

        let l = table.lookup("203.0.113.77".parse().unwrap(), 32).unwrap();
        assert_eq!(l.prefix, net("203.0.113.0/24"));
        assert_eq!(l.figures, &[(r(1), 8.5), (r(0), 12.0)]);
        assert_eq!(l.rtt(r(0)), Some(12.0));
        assert_eq!(l.rtt(r(2)), None);
        // A source prefix shorter than the data's says nothing about which /24 it is.
        assert!(table.lookup("203.0.113.0".parse().unwrap(), 23).is_none());
        assert!(table.lookup("203.0.113.0".parse().unwrap(), 24).is_some());
        let l6 = table.lookup("2001:db8:1::".parse().unwrap(), 56).unwrap();
        assert_eq!(l6.prefix, net("2001:db8:1::/48"));
        assert!(table.lookup("2001:db8:2::".parse().unwrap(), 56).is_none());
    }

    #[test]
    fn live_health_is_reindexed_by_region_id() {
        let mut config = crate::steering::tests::config_with_regions(&["a", "b", "c"]);
        let mut b = LatencyTableBuilder::default();
        b.add(net("192.0.2.0/24"), r(0), 5.0); // "c"
        b.add(net("192.0.2.0/24"), r(1), 9.0); // "gone"
        b.add(net("192.0.2.0/24"), r(2), 7.0); // "a"
        let down = RegionLive {
            health: super::super::Health::Down,
            ..RegionLive::default()
        };
        let live = LiveHealth {
            ids: vec!["c".into(), "gone".into(), "a".into()],
            regions: vec![down, RegionLive::default(), RegionLive::default()],
            latency: Arc::new(b.build()),
        };
        let (regions, latency) = live.for_config(&config);
        assert_eq!(
            regions,
            [RegionLive::default(), RegionLive::default(), down]
        );
        let l = latency.lookup("192.0.2.0".parse().unwrap(), 24).unwrap();
        assert_eq!(l.figures, &[(r(2), 5.0), (r(0), 7.0)]);

        // Same order: shared, not copied.
        config.regions.truncate(0);
        let same = LiveHealth {
            ids: Vec::new(),
            ..live
        };
        assert!(Arc::ptr_eq(&same.for_config(&config).1, &same.latency));
    }
}
