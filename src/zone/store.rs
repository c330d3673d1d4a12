//! The compact in-memory form of one zone: what a loaded zone keeps, and nothing else.
//!
//! A zone of a million records must fit in tens of bytes per record, so the store holds no
//! hickory `Name` or `Record` per entry (an inline `Name` alone is about 80 bytes). Instead:
//!
//! - every node's owner name below the origin is a [`key`](push_key) in one byte arena, in
//!   canonical DNS order (RFC 4034 §6.1), so a subtree is a contiguous run of nodes and a
//!   transfer walks the arena in order;
//! - an open-addressing table of node indices answers "does this name exist" in one probe;
//! - each RRset is a type, a TTL and a range of one RDATA arena holding the records in wire
//!   form (uncompressed names), decoded back to hickory values only for an answer.
//!
//! The store knows names and RRsets, not DNS semantics: what an answer means is `lookup`'s,
//! what a valid zone is, `load`'s. It does no IO.

use std::hash::{BuildHasher, RandomState};

use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{
    BinDecoder, BinEncodable, BinEncoder, NameEncoding, Restrict,
};

/// Index of a node in canonical order.
pub(super) type NodeIdx = u32;

/// No node (an empty hash slot, no enclosing cut).
const NONE: u32 = u32::MAX;

/// One name that exists in the zone: an owner of records, an empty non-terminal, or a GSLB
/// name. Its key and RRsets are the ranges that end here and start where the previous node's
/// end.
#[derive(Clone, Copy, Debug)]
struct Node {
    key_end: u32,
    rrsets_end: u32,
    /// The highest delegation point at or above this node ([`NONE`]: none). Such nodes are
    /// never answered authoritatively; they hold the child's NS (at the cut) and glue.
    cut: NodeIdx,
    /// A GSLB name: answered by the steering core, holds no zone data.
    dynamic: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Rrset {
    rtype: u16,
    pub(super) ttl: u32,
    rdata_start: u32,
    rdata_end: u32,
}

impl Rrset {
    pub(super) fn rtype(&self) -> RecordType {
        RecordType::from(self.rtype)
    }
}

/// Why a zone does not fit the store's 32-bit offsets (about 4 GiB of keys or RDATA, or four
/// billion nodes): far beyond anything a single process should serve.
#[derive(Clone, Copy, Debug)]
pub(super) struct TooLarge;

#[derive(Clone, Debug)]
pub(super) struct Store {
    keys: Vec<u8>,
    nodes: Vec<Node>,
    rrsets: Vec<Rrset>,
    /// Each record as a big-endian `u16` length and its RDATA in wire form.
    rdata: Vec<u8>,
    /// Open addressing with linear probing over node indices, at most half full.
    index: Vec<NodeIdx>,
    /// Keyed per process, so query names cannot be chosen to collide.
    hasher: RandomState,
}

/// Appends the key of `name` relative to `origin_labels` trailing labels: the remaining labels
/// from the top down, each lower-cased, escaped (`0` → `1 1`, `1` → `1 2`) and ended by `0`.
/// Byte order of keys is then canonical name order, a parent's key is a prefix of its
/// children's, and `0` only ever ends a label.
pub(super) fn push_key(origin_labels: usize, name: &Name, key: &mut Vec<u8>) {
    for label in name.iter().rev().skip(origin_labels) {
        push_label(label, key);
    }
}

pub(super) fn push_label(label: &[u8], key: &mut Vec<u8>) {
    for &byte in label {
        match byte.to_ascii_lowercase() {
            0 => key.extend_from_slice(&[1, 1]),
            1 => key.extend_from_slice(&[1, 2]),
            byte => key.push(byte),
        }
    }
    key.push(0);
}

/// The key of the parent name (the apex's key is empty and has none).
pub(super) fn parent_key(key: &[u8]) -> Option<&[u8]> {
    let (_, labels) = key.split_last()?;
    let start = labels
        .iter()
        .rposition(|&b| b == 0)
        .map_or(0, |end| end + 1);
    key.get(..start)
}

/// The labels of `key`, top down, unescaped.
fn key_labels(key: &[u8]) -> Vec<Vec<u8>> {
    let mut labels = Vec::new();
    let mut label = Vec::new();
    let mut escaped = false;
    for &byte in key {
        match (escaped, byte) {
            (true, _) => {
                label.push(byte - 1);
                escaped = false;
            }
            (false, 0) => labels.push(std::mem::take(&mut label)),
            (false, 1) => escaped = true,
            (false, _) => label.push(byte),
        }
    }
    labels
}

/// Encodes `data` as the store keeps it; `None` when the record cannot be kept faithfully
/// (its wire form does not decode back to the same value, or exceeds 65535 bytes).
pub(super) fn encode_rdata(data: &RData, scratch: &mut Vec<u8>, rdata: &mut Vec<u8>) -> Option<()> {
    scratch.clear();
    let mut encoder = BinEncoder::new(scratch);
    // Each record is decoded on its own, so no name may point into another one.
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    data.emit(&mut encoder).ok()?;
    let len = u16::try_from(scratch.len()).ok()?;
    if decode_rdata(data.record_type(), scratch).as_ref() != Some(data) {
        return None;
    }
    rdata.extend_from_slice(&len.to_be_bytes());
    rdata.extend_from_slice(scratch);
    Some(())
}

fn decode_rdata(rtype: RecordType, wire: &[u8]) -> Option<RData> {
    let len = u16::try_from(wire.len()).ok()?;
    let mut decoder = BinDecoder::new(wire);
    let data = RData::read(&mut decoder, rtype, Restrict::new(len)).ok()?;
    decoder.is_empty().then_some(data)
}

/// The RDATA of a staged set's records, decoded.
pub(super) fn staged_rdatas<'a>(
    arena: &'a [u8],
    set: &StagedRrset,
) -> impl Iterator<Item = RData> + 'a {
    rdatas(
        arena,
        RecordType::from(set.rtype),
        set.rdata_start,
        set.rdata_end,
    )
}

fn rdatas(
    arena: &[u8],
    rtype: RecordType,
    start: u32,
    end: u32,
) -> impl Iterator<Item = RData> + '_ {
    let mut wire = arena.get(start as usize..end as usize).unwrap_or_default();
    std::iter::from_fn(move || {
        let (len, rest) = wire.split_first_chunk::<2>()?;
        let (data, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
        wire = rest;
        // Every stored record was checked to decode to itself when it was encoded.
        decode_rdata(rtype, data)
    })
}

/// One RRset handed to [`Store::build`]: its owner's key in the caller's arena, its records
/// in the RDATA arena.
#[derive(Clone, Copy, Debug)]
pub(super) struct StagedRrset {
    pub key_start: u32,
    pub key_end: u32,
    pub rtype: u16,
    pub ttl: u32,
    pub rdata_start: u32,
    pub rdata_end: u32,
}

impl StagedRrset {
    pub fn key<'k>(&self, keys: &'k [u8]) -> &'k [u8] {
        keys.get(self.key_start as usize..self.key_end as usize)
            .unwrap_or_default()
    }
}

impl Store {
    /// Builds the store from RRsets sorted by (key, type) with distinct (key, type), the apex
    /// (empty key) among them. Empty non-terminals are created here.
    pub fn build(keys: &[u8], staged: &[StagedRrset], rdata: Vec<u8>) -> Result<Store, TooLarge> {
        let mut store = Store {
            keys: Vec::with_capacity(keys.len() + keys.len() / 8),
            nodes: Vec::with_capacity(staged.len()),
            rrsets: Vec::with_capacity(staged.len()),
            rdata,
            index: Vec::new(),
            hasher: RandomState::new(),
        };
        let mut previous: Option<&[u8]> = None;
        for set in staged {
            let key = set.key(keys);
            if previous != Some(key) {
                store.push_node_with_ancestors(previous.unwrap_or_default(), key, false)?;
                previous = Some(key);
            }
            store.rrsets.push(Rrset {
                rtype: set.rtype,
                ttl: set.ttl,
                rdata_start: set.rdata_start,
                rdata_end: set.rdata_end,
            });
            let rrsets_end = offset(store.rrsets.len())?;
            if let Some(node) = store.nodes.last_mut() {
                node.rrsets_end = rrsets_end;
            }
        }
        store.keys.shrink_to_fit();
        store.finish()?;
        Ok(store)
    }

    /// Appends `key` after `previous` (its predecessor in canonical order), preceded by those
    /// of its ancestors that `previous` does not already have. In canonical order every
    /// existing ancestor of `key` is an ancestor of `previous` (or `previous` itself).
    fn push_node_with_ancestors(
        &mut self,
        previous: &[u8],
        key: &[u8],
        dynamic: bool,
    ) -> Result<(), TooLarge> {
        let mut missing = Vec::new();
        let mut ancestor = parent_key(key);
        while let Some(candidate) = ancestor {
            // `candidate` ends at a label boundary, so a prefix of `previous` is its ancestor.
            if !self.nodes.is_empty() && previous.starts_with(candidate) {
                break;
            }
            missing.push(candidate);
            ancestor = parent_key(candidate);
        }
        for ancestor in missing.into_iter().rev() {
            self.push_node(ancestor, false)?;
        }
        self.push_node(key, dynamic)
    }

    fn push_node(&mut self, key: &[u8], dynamic: bool) -> Result<(), TooLarge> {
        self.keys.extend_from_slice(key);
        let node = Node {
            key_end: offset(self.keys.len())?,
            // No RRsets yet: an empty range where the previous node's ends.
            rrsets_end: self.nodes.last().map_or(0, |n| n.rrsets_end),
            cut: NONE,
            dynamic,
        };
        self.nodes.push(node);
        Ok(())
    }

    /// Marks cuts and indexes the nodes.
    fn finish(&mut self) -> Result<(), TooLarge> {
        offset(self.nodes.len())?;
        offset(self.rdata.len())?;
        self.mark_cuts();
        self.reindex();
        Ok(())
    }

    /// A node below the apex with NS records is a delegation point; it and every node below
    /// it belong to the highest such point above them. Subtrees are contiguous in canonical
    /// order, so one pass with the current cut suffices.
    fn mark_cuts(&mut self) {
        let mut current: Option<(NodeIdx, std::ops::Range<usize>)> = None;
        for idx in 0..self.nodes.len() {
            let range = self.key_range(idx as NodeIdx);
            let key = self.keys.get(range.clone()).unwrap_or_default();
            if let Some((_, cut_range)) = &current
                && !key.starts_with(self.keys.get(cut_range.clone()).unwrap_or_default())
            {
                current = None;
            }
            if current.is_none()
                && !key.is_empty()
                && self.rrset(idx as NodeIdx, RecordType::NS).is_some()
            {
                current = Some((idx as NodeIdx, range));
            }
            if let Some(node) = self.nodes.get_mut(idx) {
                node.cut = current.as_ref().map_or(NONE, |(cut, _)| *cut);
            }
        }
    }

    fn reindex(&mut self) {
        let slots = (self.nodes.len() * 2).next_power_of_two().max(8);
        self.index = vec![NONE; slots];
        let mask = slots - 1;
        for idx in 0..self.nodes.len() as NodeIdx {
            let key = self.key(idx);
            let mut slot = self.hasher.hash_one(key) as usize & mask;
            while self.index[slot] != NONE {
                slot = (slot + 1) & mask;
            }
            self.index[slot] = idx;
        }
    }

    /// Adds GSLB names (keys sorted and distinct, none of them a node yet) and the empty
    /// non-terminals above them. One merge however many names: loading registers thousands.
    pub fn insert_dynamic(&mut self, added: &[Vec<u8>]) -> Result<(), TooLarge> {
        if added.is_empty() {
            return Ok(());
        }
        let merged = Store {
            keys: Vec::with_capacity(self.keys.len()),
            nodes: Vec::with_capacity(self.nodes.len() + added.len() * 2),
            rrsets: std::mem::take(&mut self.rrsets),
            rdata: std::mem::take(&mut self.rdata),
            index: Vec::new(),
            hasher: self.hasher.clone(),
        };
        let old = std::mem::replace(self, merged);
        let mut added = added.iter().peekable();
        let mut previous: Vec<u8> = Vec::new();
        for idx in 0..old.nodes.len() as NodeIdx {
            let key = old.key(idx);
            while let Some(new) = added.next_if(|new| new.as_slice() < key) {
                self.push_node_with_ancestors(&previous, new, true)?;
                previous.clone_from(new);
            }
            let node = old.nodes[idx as usize];
            self.keys.extend_from_slice(key);
            self.nodes.push(Node {
                key_end: offset(self.keys.len())?,
                ..node
            });
            previous = key.to_vec();
        }
        for new in added {
            self.push_node_with_ancestors(&previous, new, true)?;
            previous.clone_from(new);
        }
        self.finish()
    }

    pub fn set_dynamic(&mut self, idx: NodeIdx) {
        if let Some(node) = self.nodes.get_mut(idx as usize) {
            node.dynamic = true;
        }
    }

    pub fn find(&self, key: &[u8]) -> Option<NodeIdx> {
        let mask = self.index.len().checked_sub(1)?;
        let mut slot = self.hasher.hash_one(key) as usize & mask;
        loop {
            let idx = *self.index.get(slot)?;
            if idx == NONE {
                return None;
            }
            if self.key(idx) == key {
                return Some(idx);
            }
            slot = (slot + 1) & mask;
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn key_range(&self, idx: NodeIdx) -> std::ops::Range<usize> {
        let start = match idx.checked_sub(1) {
            Some(previous) => self.nodes.get(previous as usize).map_or(0, |n| n.key_end),
            None => 0,
        };
        let end = self.nodes.get(idx as usize).map_or(start, |n| n.key_end);
        start as usize..end as usize
    }

    pub fn key(&self, idx: NodeIdx) -> &[u8] {
        self.keys.get(self.key_range(idx)).unwrap_or_default()
    }

    /// The owner name of a node: its key's labels on top of `origin`.
    pub fn name(&self, idx: NodeIdx, origin: &Name) -> Name {
        let mut labels = key_labels(self.key(idx));
        labels.reverse();
        let labels = labels
            .iter()
            .map(Vec::as_slice)
            .chain(origin.iter())
            .collect::<Vec<_>>();
        // Labels taken from a valid name make a valid name.
        Name::from_labels(labels).unwrap_or_else(|_| origin.clone())
    }

    pub fn is_dynamic(&self, idx: NodeIdx) -> bool {
        self.nodes.get(idx as usize).is_some_and(|n| n.dynamic)
    }

    pub fn cut(&self, idx: NodeIdx) -> Option<NodeIdx> {
        self.nodes
            .get(idx as usize)
            .map(|n| n.cut)
            .filter(|&cut| cut != NONE)
    }

    /// The RRsets of a node, by type code.
    pub fn rrsets(&self, idx: NodeIdx) -> &[Rrset] {
        let start = match idx.checked_sub(1) {
            Some(previous) => self
                .nodes
                .get(previous as usize)
                .map_or(0, |n| n.rrsets_end),
            None => 0,
        };
        let end = self.nodes.get(idx as usize).map_or(start, |n| n.rrsets_end);
        self.rrsets
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    pub fn rrset(&self, idx: NodeIdx, rtype: RecordType) -> Option<&Rrset> {
        let code = u16::from(rtype);
        self.rrsets(idx).iter().find(|set| set.rtype == code)
    }

    /// The RDATA of a set's records, decoded.
    pub fn rdatas<'s>(&'s self, set: &'s Rrset) -> impl Iterator<Item = RData> + 's {
        rdatas(&self.rdata, set.rtype(), set.rdata_start, set.rdata_end)
    }

    /// A set's records with `owner` as their name.
    pub fn records(&self, set: &Rrset, owner: &Name) -> Vec<Record> {
        self.rdatas(set)
            .map(|data| Record::from_rdata(owner.clone(), set.ttl, data))
            .collect()
    }
}

/// A position in one of the store's arenas.
fn offset(len: usize) -> Result<u32, TooLarge> {
    u32::try_from(len)
        .ok()
        .filter(|&len| len != NONE)
        .ok_or(TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Vec<u8> {
        let mut key = Vec::new();
        push_key(2, &Name::from_ascii(name).unwrap(), &mut key);
        key
    }

    /// Byte order of keys is canonical name order (RFC 4034 §6.1's example, below an origin),
    /// case is ignored, and a parent's key is its children's prefix.
    #[test]
    fn key_order_is_canonical_order() {
        let labels: [&[&[u8]]; 9] = [
            &[],
            &[b"a"],
            &[b"yljkjljk", b"a"],
            &[b"Z", b"a"],
            &[b"zABC", b"a"],
            &[b"z"],
            &[b"\x01", b"z"],
            &[b"*", b"z"],
            &[b"\xc8", b"z"],
        ];
        let names: Vec<Name> = labels
            .iter()
            .map(|l| {
                let all = l.iter().copied().chain([&b"example"[..], b"test"]);
                Name::from_labels(all).unwrap()
            })
            .collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "hickory agrees");
        let keys: Vec<_> = names
            .iter()
            .map(|n| {
                let mut key = Vec::new();
                push_key(2, n, &mut key);
                key
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert_eq!(key("A.Example.Test."), key("a.example.test."));
        assert_eq!(
            parent_key(&key("x.a.example.test.")),
            Some(&key("a.example.test.")[..])
        );
        assert_eq!(parent_key(&key("a.example.test.")), Some(&[][..]));
        assert_eq!(parent_key(&[]), None);
        let odd = Name::from_labels(vec![&b"\x00\x01x"[..], b"example", b"test"]).unwrap();
        let mut odd_key = Vec::new();
        push_key(2, &odd, &mut odd_key);
        assert_eq!(key_labels(&odd_key), vec![b"\x00\x01x".to_vec()]);
    }
}
