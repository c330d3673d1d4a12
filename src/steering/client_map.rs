//! Client maps: every client address → its ordered region preference (its *class*), with the
//! widest ECS scope over which that answer cannot change.
//!
//! Built once per snapshot and per distinct ordering function, in linear passes over the GeoIP
//! networks (gdnsd's approach): each distinct location is classified once, networks become
//! ranges, gaps become the "no data" class, operator overrides are laid over the top (most
//! specific wins), and neighbouring ranges with the same class are merged so the scope is as
//! wide as the data allows. Lookups are one read of a prefix index, a binary search over the
//! few ranges it points at, and O(1) arithmetic.
//!
//! This module knows nothing about health, weights or the wire; it must stay free of IO.

use std::{collections::HashMap, fmt::Debug, net::IpAddr, sync::Arc};

use crate::{
    config::model::{CidrOverride, RegionIdx},
    geo::{LocatedNetworks, Location},
};

use super::Basis;

/// How a client's location maps to a full ordering of a policy's candidates.
pub(crate) trait Preference {
    /// Writes the ordering for a client GeoIP located at `location` into `out` (empty on
    /// entry) and says which rule produced it.
    fn located(&self, location: &Location, out: &mut Vec<RegionIdx>) -> Basis;
    /// The ordering for a client GeoIP knows nothing about.
    fn unlocated(&self, out: &mut Vec<RegionIdx>) -> Basis;
    /// The ordering for a client inside an operator override preferring `regions`; `false`
    /// when none of them is a candidate, so the override does not apply to this policy.
    fn overridden(&self, regions: &[RegionIdx], out: &mut Vec<RegionIdx>) -> bool;
    /// Cost-aware steering by distance: for a located client, writes per candidate position
    /// `i` the bit set of candidate positions whose distance is within the budget of `i`'s.
    /// Writes nothing (the default) when the policy has no distance budget or the location
    /// no coordinates. Part of the class, so ranges differing here do not merge.
    fn reach(&self, _location: &Location, _out: &mut Vec<u64>) {}
}

/// Where a client's class came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapOrigin {
    /// Index into [`crate::config::model::DnsConfig::overrides`].
    Override(u32),
    /// A GeoIP network.
    GeoIp,
    /// No GeoIP network covers the address (or no database is loaded).
    NoGeoData,
}

/// The answer of [`ClientMap::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLookup<'a> {
    /// A full ordering of the policy's candidates, most preferred first.
    pub class: &'a Arc<[RegionIdx]>,
    /// See [`Preference::reach`]; `None` when the client has no coordinates or the policy
    /// no distance budget.
    pub reach: Option<&'a [u64]>,
    /// Shortest prefix length whose aligned block around the address has this class
    /// throughout: the ECS scope before clamping to the source prefix.
    pub scope_len: u8,
    pub origin: MapOrigin,
    pub basis: Basis,
}

/// Everything one range of addresses shares. Ranges merge only when all of it is equal, so
/// the reported origin stays exact while the scope uses the coarser class-only grouping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RangeInfo {
    class: u32,
    origin: MapOrigin,
    basis: Basis,
}

/// A full partition of one address family.
#[derive(Debug, Default)]
struct RangeTable<A> {
    /// Sorted; `starts[0]` is address zero; range `i` ends just before `starts[i + 1]`.
    starts: Vec<A>,
    infos: Vec<RangeInfo>,
    /// For each range, its index in `class_spans`, or [`OWN_SPAN`] when the range is a whole
    /// span by itself: then its own bounds give the scope, which spares a lookup one dependent
    /// read (a cache miss, under traffic spread over the table) for most ranges.
    span_of: Vec<u32>,
    /// Maximal runs of consecutive ranges with the same class: `(first, last)` address. Only
    /// runs of two or more ranges are kept.
    class_spans: Vec<(A, A)>,
    /// Narrows the search over `starts` to the few ranges an address's top bits allow.
    index: StartIndex,
}

/// [`RangeTable::span_of`] for a range whose neighbours both have another class.
const OWN_SPAN: u32 = u32::MAX;

/// Leading address bits that pick a first-level bucket of [`StartIndex`].
const TOP_BITS: u32 = 16;
const TOP_BUCKETS: usize = 1 << TOP_BITS;
/// A bucket holding more range starts than this gets sub-buckets. Searching this many adjacent
/// starts touches one to four neighbouring cache lines; one more index read is cheaper beyond.
const DENSE_BUCKET: usize = 16;
/// Starts per sub-bucket a dense bucket aims at (if the data is even within the bucket).
const SUB_TARGET: usize = 8;
/// At most this many bits after [`TOP_BITS`] pick a sub-bucket (`Bits::field` takes ≤ 16).
const MAX_SUB_BITS: u32 = 16;
/// Flags a first-level entry of a dense bucket: then bits 26..31 are its sub-bucket bit count
/// and bits 0..26 the offset of its block in `StartIndex::blocks`.
const DENSE: u32 = 1 << 31;
const SUB_BITS_SHIFT: u32 = 26;
const OFFSET_MASK: u32 = (1 << SUB_BITS_SHIFT) - 1;
/// Tables this large (GeoLite2-City has ~5 M ranges) are searched without an index, so that
/// positions and offsets always fit beside the flag and bit count.
const MAX_INDEXED: usize = 1 << 24;

/// A two-level index over a sorted `starts` array, so that a lookup costs one or two index
/// reads and a binary search over a few dozen starts at most, instead of ~18 dependent probes
/// into megabytes (nearly all cache misses under real traffic).
///
/// Level one has an entry per value of an address's top [`TOP_BITS`]: the position of the first
/// start at or above that bucket. A bucket holding more than [`DENSE_BUCKET`] starts instead
/// gets a block in `blocks` of `2^b + 1` positions, one per value of the next `b` bits and the
/// bucket's end, with `b` sized to the bucket (about [`SUB_TARGET`] starts per sub-bucket), so
/// the index grows with the data (~0.5 byte per range) rather than with the address space. IPv6
/// data clusters in a few dozen /16s under the RIRs' blocks, which the second level splits.
#[derive(Debug, Default)]
struct StartIndex {
    /// `TOP_BUCKETS + 1` entries (the last is `starts.len()`), or empty when not built.
    top: Vec<u32>,
    blocks: Vec<u32>,
}

impl StartIndex {
    /// Empty (every lookup searches all of `starts`) beyond [`MAX_INDEXED`] ranges.
    fn build<A: Bits>(starts: &[A]) -> Self {
        if starts.len() > MAX_INDEXED {
            return Self::default();
        }
        // Positions are ≤ MAX_INDEXED and block offsets below MAX_INDEXED / 4 + 3 × TOP_BUCKETS
        // (a block has < count / 4 + 3 entries), both under 2^26: the fallback is never taken.
        let at = |i: usize| u32::try_from(i).unwrap_or(0) & OFFSET_MASK;
        let mut top = Vec::with_capacity(TOP_BUCKETS + 1);
        let mut blocks = Vec::new();
        let mut i = 0;
        for bucket in 0..TOP_BUCKETS {
            let first = i;
            while starts
                .get(i)
                .is_some_and(|s| s.field(0, TOP_BITS) == bucket)
            {
                i += 1;
            }
            let count = i - first;
            if count <= DENSE_BUCKET {
                top.push(at(first));
                continue;
            }
            let sub_bits = count
                .div_ceil(SUB_TARGET)
                .next_power_of_two()
                .trailing_zeros()
                .clamp(1, MAX_SUB_BITS.min(A::WIDTH - TOP_BITS));
            top.push(DENSE | sub_bits << SUB_BITS_SHIFT | at(blocks.len()));
            let mut j = first;
            for sub in 0..1usize << sub_bits {
                blocks.push(at(j));
                while j < i && starts[j].field(TOP_BITS, sub_bits) == sub {
                    j += 1;
                }
            }
            blocks.push(at(i));
        }
        top.push(at(starts.len()));
        Self { top, blocks }
    }

    /// `[lo, hi)` positions in `starts` (of length `len`) such that every start before `lo` is
    /// ≤ `a` and every start from `hi` on is > `a`; `None` when the index is empty.
    fn bounds<A: Bits>(&self, a: A, len: usize) -> Option<(usize, usize)> {
        let bucket = a.field(0, TOP_BITS);
        let entry = *self.top.get(bucket)?;
        if entry & DENSE == 0 {
            let lo = entry as usize;
            let next = *self.top.get(bucket + 1)?;
            // The next bucket's entry is its first position unless it is dense; a sparse bucket
            // holds at most DENSE_BUCKET starts, so that bounds the slice all the same.
            let hi = if next & DENSE == 0 {
                next as usize
            } else {
                (lo + DENSE_BUCKET).min(len)
            };
            return Some((lo, hi));
        }
        let sub_bits = (entry & !DENSE) >> SUB_BITS_SHIFT;
        let at = (entry & OFFSET_MASK) as usize + a.field(TOP_BITS, sub_bits);
        match *self.blocks.get(at..at + 2)? {
            [lo, hi] => Some((lo as usize, hi as usize)),
            _ => None,
        }
    }

    fn bytes(&self) -> usize {
        (self.top.capacity() + self.blocks.capacity()) * std::mem::size_of::<u32>()
    }
}

/// Per-family range tables of one ordering function. Shared (`Arc`) between all policies
/// with the same ordering function.
#[derive(Debug)]
pub struct ClientMap {
    classes: Vec<Arc<[RegionIdx]>>,
    /// Parallel to `classes`; empty when the class has no reach.
    reaches: Vec<Arc<[u64]>>,
    v4: RangeTable<u32>,
    v6: RangeTable<u128>,
}

impl ClientMap {
    pub(crate) fn build(
        preference: &dyn Preference,
        networks: Option<&LocatedNetworks>,
        overrides: &[CidrOverride],
    ) -> ClientMap {
        let mut classes = ClassInterner::default();
        let mut scratch = Vec::new();
        let mut no_reach = Vec::new();

        let mut classify = |scratch: &mut Vec<RegionIdx>,
                            reach: &[u64],
                            basis: Basis,
                            origin: MapOrigin| RangeInfo {
            class: classes.intern(scratch, reach),
            origin,
            basis,
        };

        scratch.clear();
        let basis = preference.unlocated(&mut scratch);
        let unlocated = classify(&mut scratch, &no_reach, basis, MapOrigin::NoGeoData);
        let mut reach = Vec::new();

        let empty = LocatedNetworks::default();
        let networks = networks.unwrap_or(&empty);
        let by_location: Vec<RangeInfo> = networks
            .locations
            .iter()
            .map(|location| {
                scratch.clear();
                reach.clear();
                let basis = preference.located(location, &mut scratch);
                preference.reach(location, &mut reach);
                classify(&mut scratch, &reach, basis, MapOrigin::GeoIp)
            })
            .collect();
        let info_of = |id: crate::geo::LocationId| -> RangeInfo {
            // A dangling id is a reader bug; treat the network as unlocated rather than panic.
            usize::try_from(id.0)
                .ok()
                .and_then(|i| by_location.get(i).copied())
                .unwrap_or(unlocated)
        };

        let mut over_v4 = Vec::new();
        let mut over_v6 = Vec::new();
        for (i, o) in overrides.iter().enumerate() {
            scratch.clear();
            if !preference.overridden(&o.regions, &mut scratch) {
                continue;
            }
            let Ok(idx) = u32::try_from(i) else { break };
            no_reach.clear();
            let info = classify(
                &mut scratch,
                &no_reach,
                Basis::Override,
                MapOrigin::Override(idx),
            );
            match o.network {
                ipnet::IpNet::V4(n) => {
                    over_v4.push((u32::from(n.network()), u32::from(n.broadcast()), info, idx))
                }
                ipnet::IpNet::V6(n) => over_v6.push((
                    u128::from(n.network()),
                    u128::from(n.broadcast()),
                    info,
                    idx,
                )),
            }
        }

        let v4 = RangeTable::build(
            networks.networks.iter().filter_map(|(net, id)| match net {
                ipnet::IpNet::V4(n) => Some((
                    u32::from(n.network()),
                    u32::from(n.broadcast()),
                    info_of(*id),
                )),
                ipnet::IpNet::V6(_) => None,
            }),
            unlocated,
            over_v4,
        );
        let v6 = RangeTable::build(
            networks.networks.iter().filter_map(|(net, id)| match net {
                ipnet::IpNet::V6(n) => Some((
                    u128::from(n.network()),
                    u128::from(n.broadcast()),
                    info_of(*id),
                )),
                ipnet::IpNet::V4(_) => None,
            }),
            unlocated,
            over_v6,
        );
        ClientMap {
            classes: classes.classes,
            reaches: classes.reaches,
            v4,
            v6,
        }
    }

    /// The class of `addr` (already masked to the client's source prefix).
    pub fn lookup(&self, addr: IpAddr) -> MapLookup<'_> {
        let (info, scope_len) = match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        };
        let reach = self
            .reaches
            .get(info.class as usize)
            .filter(|r| !r.is_empty())
            .map(|r| &r[..]);
        MapLookup {
            // Class ids come from the interner that filled `classes`; the fallback is never
            // taken but keeps the query path free of panics.
            class: self
                .classes
                .get(info.class as usize)
                .unwrap_or(&self.classes[0]),
            reach,
            scope_len,
            origin: info.origin,
            basis: info.basis,
        }
    }

    /// Number of distinct ranges (IPv4, IPv6) after merging: a size figure for logs.
    pub fn range_counts(&self) -> (usize, usize) {
        (self.v4.starts.len(), self.v6.starts.len())
    }

    /// Heap bytes of the prefix indexes over both families' ranges: a size figure for logs.
    pub fn index_bytes(&self) -> usize {
        self.v4.index.bytes() + self.v6.index.bytes()
    }

    /// Number of distinct preference lists.
    pub fn class_count(&self) -> usize {
        self.classes.len()
    }
}

/// The reaches seen with one ordering, each with its class id (almost always one).
type ReachesOf = Vec<(Arc<[u64]>, u32)>;

/// Interns (ordering, reach) pairs: a class is both, since either can change the answer.
#[derive(Default)]
struct ClassInterner {
    classes: Vec<Arc<[RegionIdx]>>,
    reaches: Vec<Arc<[u64]>>,
    index: HashMap<Arc<[RegionIdx]>, ReachesOf>,
}

impl ClassInterner {
    fn intern(&mut self, list: &[RegionIdx], reach: &[u64]) -> u32 {
        if let Some(seen) = self.index.get(list)
            && let Some(&(_, id)) = seen.iter().find(|(r, _)| **r == *reach)
        {
            return id;
        }
        // More distinct classes than u32 cannot come from ≤ u16 regions' orderings in practice;
        // saturate rather than panic.
        let id = u32::try_from(self.classes.len()).unwrap_or(u32::MAX);
        let class: Arc<[RegionIdx]> = match self.index.get_key_value(list) {
            Some((class, _)) => Arc::clone(class),
            None => Arc::from(list),
        };
        let reach: Arc<[u64]> = Arc::from(reach);
        self.classes.push(Arc::clone(&class));
        self.reaches.push(Arc::clone(&reach));
        self.index.entry(class).or_default().push((reach, id));
        id
    }
}

/// An address family's integer form.
pub(crate) trait Bits: Copy + Ord + Debug {
    const WIDTH: u32;
    const ZERO: Self;
    const MAX: Self;
    fn checked_inc(self) -> Option<Self>;
    /// Only called on values known to be > 0.
    fn dec(self) -> Self;
    fn leading_zeros(self) -> u32;
    fn trailing_zeros(self) -> u32;
    fn trailing_ones(self) -> u32;
    fn xor(self, other: Self) -> Self;
    /// The `len` bits that follow the leading `skip` bits, as an index (`skip + len` ≤ WIDTH,
    /// 0 < `len` ≤ 16).
    fn field(self, skip: u32, len: u32) -> usize;
}

macro_rules! impl_bits {
    ($t:ty) => {
        impl Bits for $t {
            const WIDTH: u32 = <$t>::BITS;
            const ZERO: Self = 0;
            const MAX: Self = <$t>::MAX;
            fn checked_inc(self) -> Option<Self> {
                self.checked_add(1)
            }
            fn dec(self) -> Self {
                self.wrapping_sub(1)
            }
            fn leading_zeros(self) -> u32 {
                <$t>::leading_zeros(self)
            }
            fn trailing_zeros(self) -> u32 {
                <$t>::trailing_zeros(self)
            }
            fn trailing_ones(self) -> u32 {
                <$t>::trailing_ones(self)
            }
            fn xor(self, other: Self) -> Self {
                self ^ other
            }
            fn field(self, skip: u32, len: u32) -> usize {
                // Truncation is the point: the mask keeps `len` bits, all of which fit.
                ((self >> (Self::WIDTH - skip - len)) & ((1 << len) - 1)) as usize
            }
        }
    };
}
impl_bits!(u32);
impl_bits!(u128);

/// Shortest prefix length `p` such that the aligned `/p` block containing `a` lies inside
/// `[lo, hi]` (which contains `a`).
///
/// With `k = WIDTH - p` host bits, the block starts at `a` with its low `k` bits cleared. That
/// start stays ≥ `lo` for every `k` up to the highest bit where `a` and `lo` differ, and beyond
/// that only while `lo`'s low `k` bits are zero; symmetrically for the end and `hi` with ones.
pub(crate) fn scope_len<A: Bits>(a: A, lo: A, hi: A) -> u8 {
    let highest_difference = |x: A, y: A| A::WIDTH - 1 - x.xor(y).leading_zeros();
    let k_lo = if a == lo {
        lo.trailing_zeros()
    } else {
        highest_difference(a, lo).max(lo.trailing_zeros())
    };
    let k_hi = if a == hi {
        hi.trailing_ones()
    } else {
        highest_difference(a, hi).max(hi.trailing_ones())
    };
    let k = k_lo.min(k_hi).min(A::WIDTH);
    // WIDTH ≤ 128, so this always fits.
    u8::try_from(A::WIDTH - k).unwrap_or(u8::MAX)
}

/// A growing full partition from address zero; pushes must be contiguous. Neighbours with an
/// equal payload are merged as they arrive, so memory follows the merged size, not the input.
struct Coverage<A, P> {
    starts: Vec<A>,
    payloads: Vec<P>,
    /// First address not yet covered; `None` once the family is fully covered.
    next: Option<A>,
}

impl<A: Bits, P: Copy + PartialEq> Coverage<A, P> {
    fn new() -> Self {
        Self {
            starts: Vec::new(),
            payloads: Vec::new(),
            next: Some(A::ZERO),
        }
    }

    fn push(&mut self, start: A, end: A, payload: P) {
        debug_assert_eq!(Some(start), self.next);
        if self.payloads.last() != Some(&payload) {
            self.starts.push(start);
            self.payloads.push(payload);
        }
        self.next = end.checked_inc();
    }

    fn end_of(&self, i: usize) -> A {
        self.starts.get(i + 1).map_or(A::MAX, |s| s.dec())
    }

    /// Covers the gap up to `start` with `gap`, then `[start, end]` with `payload`; input that
    /// overlaps what is already covered is clipped (the reader promises sorted, disjoint
    /// networks; a broken promise must not corrupt the table).
    fn push_after_gap(&mut self, start: A, end: A, payload: P, gap: P) {
        let Some(next) = self.next else { return };
        if end < next {
            return;
        }
        let start = start.max(next);
        if start > next {
            self.push(next, start.dec(), gap);
        }
        self.push(start, end, payload);
    }

    fn finish(mut self, gap: P) -> Self {
        if let Some(next) = self.next {
            self.push(next, A::MAX, gap);
        }
        self
    }
}

/// Flattens nested-or-disjoint CIDR ranges into disjoint ones where the most specific wins;
/// among identical networks the one listed first in the config wins.
fn flatten_nested<A: Bits, P: Copy>(mut ranges: Vec<(A, A, P, u32)>) -> Vec<(A, A, P)> {
    // Wider first at the same start, so a narrower one always nests inside the stack top;
    // identical networks: later config index first, so the first-listed ends up on top.
    ranges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(b.3.cmp(&a.3)));
    let mut out = Vec::with_capacity(ranges.len());
    let mut stack: Vec<(A, P)> = Vec::new();
    let mut cursor: Option<A> = Some(A::ZERO);
    for (start, end, payload, _) in ranges {
        while let Some(&(top_end, top_payload)) = stack.last() {
            if top_end >= start {
                break;
            }
            if let Some(c) = cursor.filter(|&c| c <= top_end) {
                out.push((c, top_end, top_payload));
            }
            // top_end < start ≤ MAX, so this cannot overflow.
            cursor = top_end.checked_inc();
            stack.pop();
        }
        if let (Some(&(_, top_payload)), Some(c)) = (stack.last(), cursor)
            && c < start
        {
            out.push((c, start.dec(), top_payload));
        }
        cursor = Some(start);
        stack.push((end, payload));
    }
    while let Some((top_end, top_payload)) = stack.pop() {
        if let Some(c) = cursor.filter(|&c| c <= top_end) {
            out.push((c, top_end, top_payload));
            cursor = top_end.checked_inc();
        }
    }
    out
}

impl<A: Bits> RangeTable<A> {
    fn build(
        located: impl Iterator<Item = (A, A, RangeInfo)>,
        unlocated: RangeInfo,
        overrides: Vec<(A, A, RangeInfo, u32)>,
    ) -> Self {
        let mut base = Coverage::new();
        for (start, end, info) in located {
            base.push_after_gap(start, end, info, unlocated);
        }
        let base = base.finish(unlocated);

        let overrides = flatten_nested(overrides);
        let merged = if overrides.is_empty() {
            base
        } else {
            overlay(&base, &overrides)
        };
        Self::group(merged)
    }

    fn group(c: Coverage<A, RangeInfo>) -> Self {
        let class_at = |i: usize| c.payloads.get(i).map(|info| info.class);
        let mut span_of = Vec::with_capacity(c.starts.len());
        let mut class_spans: Vec<(A, A)> = Vec::new();
        for (i, info) in c.payloads.iter().enumerate() {
            let end = c.end_of(i);
            let joins_previous = i > 0 && class_at(i - 1) == Some(info.class);
            let joins_next = class_at(i + 1) == Some(info.class);
            if joins_previous {
                if let Some(span) = class_spans.last_mut() {
                    span.1 = end;
                }
            } else if joins_next {
                class_spans.push((c.starts[i], end));
            } else {
                span_of.push(OWN_SPAN);
                continue;
            }
            // Fewer spans than ranges, and ranges are ≤ MAX_INDEXED or searched unindexed;
            // a count past u32 would need 4 G ranges.
            span_of.push(u32::try_from(class_spans.len() - 1).unwrap_or(OWN_SPAN - 1));
        }
        Self {
            index: StartIndex::build(&c.starts),
            starts: c.starts,
            infos: c.payloads,
            span_of,
            class_spans,
        }
    }

    /// The range containing `a`: the last one starting at or below it.
    fn position(&self, a: A) -> usize {
        let (lo, candidates) = self
            .index
            .bounds(a, self.starts.len())
            .and_then(|(lo, hi)| Some((lo, self.starts.get(lo..hi)?)))
            .unwrap_or((0, &self.starts));
        // starts[0] is zero, so the partition point is ≥ 1.
        (lo + candidates.partition_point(|&s| s <= a)).saturating_sub(1)
    }

    fn lookup(&self, a: A) -> (RangeInfo, u8) {
        let i = self.position(a);
        let info = self.infos[i];
        let (lo, hi) = match self.span_of[i] {
            OWN_SPAN => (self.starts[i], self.end_of(i)),
            span => self.class_spans[span as usize],
        };
        (info, scope_len(a, lo, hi))
    }

    /// The last address of range `i`.
    fn end_of(&self, i: usize) -> A {
        self.starts.get(i + 1).map_or(A::MAX, |s| s.dec())
    }
}

/// `base` (a full partition) with `overrides` (sorted, disjoint) laid on top.
fn overlay<A: Bits, P: Copy + PartialEq>(
    base: &Coverage<A, P>,
    overrides: &[(A, A, P)],
) -> Coverage<A, P> {
    let mut out = Coverage::new();
    let mut i = 0;
    let emit_base = |out: &mut Coverage<A, P>, i: &mut usize, lo: A, hi: A| {
        while base.end_of(*i) < lo {
            *i += 1;
        }
        let mut cur = lo;
        loop {
            let end = base.end_of(*i).min(hi);
            out.push(cur, end, base.payloads[*i]);
            if end == hi {
                break;
            }
            cur = end.checked_inc().unwrap_or(hi);
            *i += 1;
        }
    };
    for &(start, end, payload) in overrides {
        let Some(next) = out.next else { break };
        if start > next {
            emit_base(&mut out, &mut i, next, start.dec());
        }
        out.push(start, end, payload);
    }
    if let Some(next) = out.next {
        emit_base(&mut out, &mut i, next, A::MAX);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ipnet::IpNet;
    use proptest::prelude::*;

    use super::*;
    use crate::geo::LocationId;

    /// Country code "R<n>" → region n; anything else → unlocated order [0].
    struct ByCountry;

    impl Preference for ByCountry {
        fn located(&self, location: &Location, out: &mut Vec<RegionIdx>) -> Basis {
            match location
                .country
                .as_deref()
                .and_then(|c| c.strip_prefix('R'))
                .and_then(|n| n.parse().ok())
            {
                Some(n) => {
                    out.push(RegionIdx(n));
                    Basis::GeoCountry
                }
                None => self.unlocated(out),
            }
        }
        fn unlocated(&self, out: &mut Vec<RegionIdx>) -> Basis {
            out.push(RegionIdx(0));
            Basis::GeoDefault
        }
        fn overridden(&self, regions: &[RegionIdx], out: &mut Vec<RegionIdx>) -> bool {
            out.extend_from_slice(regions);
            !regions.is_empty()
        }
    }

    fn located(nets: &[(&str, u16)]) -> LocatedNetworks {
        let mut ln = LocatedNetworks::default();
        for (net, region) in nets {
            let loc = Location {
                country: Some(format!("R{region}").into()),
                ..Location::default()
            };
            let id = match ln.locations.iter().position(|l| *l == loc) {
                Some(i) => i,
                None => {
                    ln.locations.push(loc);
                    ln.locations.len() - 1
                }
            };
            ln.networks
                .push((net.parse().unwrap(), LocationId(id as u32)));
        }
        ln.networks.sort_by_key(|(n, _)| *n);
        ln
    }

    fn overrides(list: &[(&str, &[u16])]) -> Vec<CidrOverride> {
        list.iter()
            .map(|(net, regions)| CidrOverride {
                network: net.parse().unwrap(),
                regions: regions.iter().map(|&r| RegionIdx(r)).collect(),
            })
            .collect()
    }

    fn first(l: &MapLookup<'_>) -> u16 {
        l.class[0].0
    }

    #[test]
    fn scope_merging_table() {
        let map = ClientMap::build(
            &ByCountry,
            Some(&located(&[
                // Bounded below by "no data", above by an override.
                ("10.0.0.0/16", 1),
                ("10.1.0.0/16", 1),
                // A /24 next to a different class: bounded by its neighbour.
                ("10.2.0.0/24", 2),
                ("10.2.1.0/24", 3),
                // Same class but not aligned: 10.4.0.0–10.5.255.255 ∪ 10.6.0.0/16.
                ("10.4.0.0/15", 4),
                ("10.6.0.0/16", 4),
                // Two halves of 10.8.0.0/15 with the same class merge into one /15.
                ("10.8.0.0/16", 1),
                ("10.9.0.0/16", 1),
                ("2001:db8::/32", 5),
                ("2001:db9::/32", 6),
            ])),
            &overrides(&[
                ("10.1.2.0/24", &[7]),
                ("10.1.0.0/16", &[8]),
                ("2001:db8:1::/48", &[9]),
            ]),
        );
        let cases: &[(&str, u16, u8, MapOrigin)] = &[
            ("10.0.0.0", 1, 16, MapOrigin::GeoIp),
            ("10.0.200.1", 1, 16, MapOrigin::GeoIp),
            ("10.1.2.7", 7, 24, MapOrigin::Override(0)),
            ("10.1.3.0", 8, 24, MapOrigin::Override(1)),
            ("10.1.128.0", 8, 17, MapOrigin::Override(1)),
            ("10.2.0.9", 2, 24, MapOrigin::GeoIp),
            ("10.2.1.9", 3, 24, MapOrigin::GeoIp),
            ("10.2.2.0", 0, 23, MapOrigin::NoGeoData),
            ("10.3.0.0", 0, 16, MapOrigin::NoGeoData),
            ("10.4.0.0", 4, 15, MapOrigin::GeoIp),
            ("10.6.1.1", 4, 16, MapOrigin::GeoIp),
            ("10.7.0.0", 0, 16, MapOrigin::NoGeoData),
            ("10.9.1.1", 1, 15, MapOrigin::GeoIp),
            ("192.0.2.1", 0, 1, MapOrigin::NoGeoData),
            ("0.0.0.0", 0, 5, MapOrigin::NoGeoData),
            ("2001:db8::1", 5, 48, MapOrigin::GeoIp),
            ("2001:db8:1::1", 9, 48, MapOrigin::Override(2)),
            ("2001:db8:2::", 5, 47, MapOrigin::GeoIp),
            ("2001:db9:ffff::", 6, 32, MapOrigin::GeoIp),
            ("2001:dba::", 0, 31, MapOrigin::NoGeoData),
            ("::", 0, 3, MapOrigin::NoGeoData),
        ];
        for &(addr, region, scope, origin) in cases {
            let l = map.lookup(addr.parse().unwrap());
            assert_eq!(
                (first(&l), l.scope_len, l.origin),
                (region, scope, origin),
                "{addr}"
            );
        }
    }

    #[test]
    fn empty_map_is_one_class_with_scope_zero() {
        let map = ClientMap::build(&ByCountry, None, &[]);
        for addr in ["1.2.3.4", "255.255.255.255", "::1"] {
            let l = map.lookup(addr.parse().unwrap());
            assert_eq!((first(&l), l.scope_len), (0, 0), "{addr}");
        }
        assert_eq!(map.range_counts(), (1, 1));
    }

    #[test]
    fn identical_overrides_first_listed_wins_and_inapplicable_ones_are_skipped() {
        let map = ClientMap::build(
            &ByCountry,
            None,
            &overrides(&[
                ("10.0.0.0/8", &[1]),
                ("10.0.0.0/8", &[2]),
                ("10.1.0.0/16", &[]),
            ]),
        );
        let l = map.lookup("10.1.0.0".parse().unwrap());
        assert_eq!(
            (first(&l), l.origin, l.scope_len),
            (1, MapOrigin::Override(0), 8)
        );
    }

    #[test]
    fn same_class_from_different_origins_still_merges_for_scope() {
        // 10.0.0.0/9 from GeoIP and 10.128.0.0/9 from an override, both preferring region 1.
        let map = ClientMap::build(
            &ByCountry,
            Some(&located(&[("10.0.0.0/9", 1)])),
            &overrides(&[("10.128.0.0/9", &[1])]),
        );
        let geo = map.lookup("10.0.0.1".parse().unwrap());
        let ovr = map.lookup("10.200.0.1".parse().unwrap());
        assert_eq!((geo.origin, geo.scope_len), (MapOrigin::GeoIp, 8));
        assert_eq!((ovr.origin, ovr.scope_len), (MapOrigin::Override(0), 8));
    }

    #[test]
    fn scope_len_edges() {
        assert_eq!(scope_len::<u32>(0, 0, u32::MAX), 0);
        assert_eq!(scope_len::<u32>(u32::MAX, u32::MAX, u32::MAX), 32);
        assert_eq!(scope_len::<u32>(5, 5, 5), 32);
        assert_eq!(scope_len::<u32>(4, 4, 7), 30);
        assert_eq!(scope_len::<u32>(5, 4, 7), 30);
        assert_eq!(scope_len::<u32>(5, 3, 7), 30);
        assert_eq!(scope_len::<u32>(3, 3, 7), 32);
        assert_eq!(scope_len::<u128>(0, 0, u128::MAX), 0);
        assert_eq!(scope_len::<u128>(1 << 127, 1 << 127, u128::MAX), 1);
    }

    // ---- brute-force reference ----
    //
    // Random networks and overrides inside 10.0.0.0/24 (so every block can be enumerated),
    // everything outside is "no data". The reference classifies one address at a time from
    // the raw inputs, independently of the range machinery.

    const UNIVERSE: u32 = 0x0a00_0000;

    fn reference_class(nets: &[(u32, u8, u16)], overs: &[(u32, u8, u16)], a: u32) -> u16 {
        let contains = |base: u32, len: u8| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            a & mask == base & mask
        };
        // Most specific override; ties → first listed.
        let mut best: Option<(u8, u16)> = None;
        for &(base, len, r) in overs {
            if contains(base, len) && best.is_none_or(|(l, _)| len > l) {
                best = Some((len, r));
            }
        }
        if let Some((_, r)) = best {
            return r;
        }
        nets.iter()
            .find(|&&(base, len, _)| contains(base, len))
            .map_or(0, |&(_, _, r)| r)
    }

    fn block_is_single_class(
        nets: &[(u32, u8, u16)],
        overs: &[(u32, u8, u16)],
        start: u32,
        end: u32,
    ) -> bool {
        let class = |a| reference_class(nets, overs, a);
        let (u_lo, u_hi) = (UNIVERSE, UNIVERSE | 0xff);
        if end < u_lo || start > u_hi {
            return true; // entirely outside: all default
        }
        let lo = start.max(u_lo);
        let hi = end.min(u_hi);
        let c = class(lo);
        let inside_same = (lo..=hi).all(|a| class(a) == c);
        let outside_default = if start < u_lo || end > u_hi {
            c == 0
        } else {
            true
        };
        inside_same && outside_default
    }

    /// Disjoint random networks: pick random prefixes and drop any overlapping an earlier one.
    fn disjoint(raw: Vec<(u8, u8, u16)>) -> Vec<(u32, u8, u16)> {
        let mut out: Vec<(u32, u8, u16)> = Vec::new();
        for (host, len, r) in raw {
            let len = 24 + len % 9;
            let mask = u32::MAX << (32 - len);
            let base = (UNIVERSE | u32::from(host)) & mask;
            let end = base | !mask;
            let overlaps = out.iter().any(|&(b, l, _)| {
                let e = b | !(u32::MAX << (32 - l));
                b <= end && base <= e
            });
            if !overlaps {
                out.push((base, len, r));
            }
        }
        out
    }

    proptest! {
        #[test]
        fn lookup_agrees_with_brute_force(
            raw_nets in prop::collection::vec((any::<u8>(), any::<u8>(), 0u16..4), 0..12),
            raw_overs in prop::collection::vec((any::<u8>(), 24u8..33, 0u16..4), 0..4),
            probes in prop::collection::vec(any::<u8>(), 1..16),
            outside in any::<u32>(),
        ) {
            let nets = disjoint(raw_nets);
            let overs: Vec<(u32, u8, u16)> = raw_overs
                .into_iter()
                .map(|(h, len, r)| {
                    let mask = u32::MAX << (32 - len);
                    ((UNIVERSE | u32::from(h)) & mask, len, r)
                })
                .collect();
            let mut ln = LocatedNetworks::default();
            for r in 0..4u16 {
                ln.locations.push(Location { country: Some(format!("R{r}").into()), ..Location::default() });
            }
            let mut sorted = nets.clone();
            sorted.sort();
            ln.networks = sorted
                .iter()
                .map(|&(b, len, r)| (IpNet::new(Ipv4Addr::from(b).into(), len).unwrap(), LocationId(u32::from(r))))
                .collect();
            let ovs: Vec<CidrOverride> = overs
                .iter()
                .map(|&(b, len, r)| CidrOverride {
                    network: IpNet::new(Ipv4Addr::from(b).into(), len).unwrap(),
                    regions: vec![RegionIdx(r)],
                })
                .collect();
            let map = ClientMap::build(&ByCountry, Some(&ln), &ovs);

            let addrs = probes.iter().map(|&p| UNIVERSE | u32::from(p)).chain([outside]);
            for a in addrs {
                let l = map.lookup(IpAddr::V4(Ipv4Addr::from(a)));
                prop_assert_eq!(first(&l), reference_class(&nets, &overs, a), "class of {}", Ipv4Addr::from(a));
                let p = u32::from(l.scope_len);
                let block = |p: u32| {
                    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                    (a & mask, a | !mask)
                };
                let (s, e) = block(p);
                prop_assert!(block_is_single_class(&nets, &overs, s, e), "scope /{} of {} mixes classes", p, Ipv4Addr::from(a));
                if p > 0 {
                    let (s, e) = block(p - 1);
                    prop_assert!(!block_is_single_class(&nets, &overs, s, e), "scope /{} of {} is not the widest", p, Ipv4Addr::from(a));
                }
            }
        }

        #[test]
        fn scope_len_agrees_with_search(a in any::<u128>(), d1 in any::<u128>(), d2 in any::<u128>(), shift in 0u32..128) {
            let lo = a.saturating_sub(d1 >> shift);
            let hi = a.saturating_add(d2 >> shift);
            let naive = (0..=128u32)
                .find(|&p| {
                    let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                    (a & mask) >= lo && (a | !mask) <= hi
                })
                .unwrap();
            prop_assert_eq!(u32::from(scope_len(a, lo, hi)), naive);
        }
    }

    // ---- the prefix index ----

    /// `starts` (plus address zero, sorted, deduplicated) as a table with its index.
    fn indexed<A: Bits + Default>(mut starts: Vec<A>) -> RangeTable<A> {
        starts.push(A::ZERO);
        starts.sort();
        starts.dedup();
        RangeTable {
            index: StartIndex::build(&starts),
            starts,
            ..RangeTable::default()
        }
    }

    fn plain_position<A: Bits>(starts: &[A], a: A) -> usize {
        starts.partition_point(|&s| s <= a) - 1
    }

    /// Each start, its neighbours, and the edges of its first- and second-level buckets, where
    /// an off-by-one in the index would show.
    fn probes_around<A: Bits>(starts: &[A], edges: impl Fn(A) -> [A; 4]) -> Vec<A> {
        let mut probes = vec![A::ZERO, A::MAX];
        for &s in starts {
            probes.push(s);
            probes.extend(s.checked_inc());
            if s > A::ZERO {
                probes.push(s.dec());
            }
            probes.extend(edges(s));
        }
        probes
    }

    fn u32_edges(s: u32) -> [u32; 4] {
        [s & 0xffff_0000, s | 0xffff, s & 0xffff_ff00, s | 0xff]
    }

    fn u128_edges(s: u128) -> [u128; 4] {
        let (top, sub) = (u128::MAX >> 16, u128::MAX >> 24);
        [s & !top, s | top, s & !sub, s | sub]
    }

    /// Starts clustered around a few bases, sharing from 0 to 27 leading bits with one, so
    /// that some first-level buckets are empty, some sparse and some dense. `mix(base, r, keep)`
    /// is `base`'s leading `keep` bits followed by `r`'s other bits.
    fn clustered<A: Bits + Arbitrary>(mix: fn(A, A, u32) -> A) -> impl Strategy<Value = Vec<A>> {
        (
            prop::collection::vec(any::<A>(), 1..4),
            prop::collection::vec((any::<A>(), any::<prop::sample::Index>(), 0u32..28), 0..400),
        )
            .prop_map(move |(bases, raw)| {
                raw.into_iter()
                    .map(|(r, base, keep)| mix(*base.get(&bases), r, keep))
                    .collect()
            })
    }

    fn mix_u32(base: u32, r: u32, keep: u32) -> u32 {
        let host = u32::MAX >> keep;
        (base & !host) | (r & host)
    }

    fn mix_u128(base: u128, r: u128, keep: u32) -> u128 {
        let host = u128::MAX >> keep;
        (base & !host) | (r & host)
    }

    proptest! {
        #[test]
        fn indexed_position_agrees_with_plain_search_v4(
            starts in clustered::<u32>(mix_u32),
            random in prop::collection::vec(any::<u32>(), 0..32),
        ) {
            let table = indexed(starts);
            let mut probes = probes_around(&table.starts, u32_edges);
            probes.extend(random);
            for a in probes {
                prop_assert_eq!(table.position(a), plain_position(&table.starts, a), "{}", Ipv4Addr::from(a));
            }
        }

        #[test]
        fn indexed_position_agrees_with_plain_search_v6(
            starts in clustered::<u128>(mix_u128),
            random in prop::collection::vec(any::<u128>(), 0..32),
        ) {
            let table = indexed(starts);
            let mut probes = probes_around(&table.starts, u128_edges);
            probes.extend(random);
            for a in probes {
                prop_assert_eq!(table.position(a), plain_position(&table.starts, a), "{}", Ipv6Addr::from(a));
            }
        }
    }

    #[test]
    fn dense_bucket_is_split_by_the_next_bits() {
        // 10.0.0.0/16 holds 300 starts (dense), 10.1.0.0/16 five, 10.2.0.0/16 none,
        // 10.3.0.0/16 one right before the dense 10.4.0.0/16 (so its slice is bounded by the
        // sparse-bucket limit, not by the next entry).
        let mut starts: Vec<u32> = (0..300u32).map(|i| 0x0a00_0000 | (i * 211)).collect();
        starts.extend((1..=5u32).map(|i| 0x0a01_0000 | (i << 12)));
        starts.extend((0..40u32).map(|i| 0x0a04_0000 | (i << 9)));
        starts.push(0x0a03_ffff);
        let table = indexed(starts);
        assert_eq!(table.index.top.len(), TOP_BUCKETS + 1);
        // 300 starts → 2^6 sub-buckets, 40 → 2^3.
        assert_eq!(table.index.blocks.len(), (64 + 1) + (8 + 1));
        assert_eq!(table.index.top[0x0a00] & DENSE, DENSE);
        assert_eq!(table.index.top[0x0a01] & DENSE, 0);
        for a in probes_around(&table.starts, u32_edges) {
            assert_eq!(
                table.position(a),
                plain_position(&table.starts, a),
                "{}",
                Ipv4Addr::from(a)
            );
        }
    }

    #[test]
    fn ipv6_scope_bounded_by_neighbours() {
        let map = ClientMap::build(
            &ByCountry,
            Some(&located(&[("2a00::/12", 1), ("2a10::/12", 2)])),
            &[],
        );
        let a: Ipv6Addr = "2a0f:1::".parse().unwrap();
        let l = map.lookup(a.into());
        assert_eq!((first(&l), l.scope_len), (1, 12));
        let l = map.lookup("2a20::".parse().unwrap());
        assert_eq!((first(&l), l.scope_len), (0, 11));
    }
}
