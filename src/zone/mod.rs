//! Zone data: RFC 1035 zone files loaded into an index that answers lookups with
//! authoritative semantics.
//!
//! This module owns what a name *means* inside one of our zones: which RRset answers a
//! question, CNAME chains followed inside the zone, wildcard synthesis (RFC 4592), empty
//! non-terminals, delegations (zone cuts) and their glue, minimal ANY (RFC 8482), and which
//! names belong to the steering core (GSLB names, [`Lookup::Dynamic`]).
//!
//! It must not touch the wire: header bits, RCODEs, the SOA in the authority section,
//! EDNS and truncation are the DNS handler's. Apart from [`Zone::load`] reading its file, it
//! does no IO; [`Zone::lookup`] sits on the query hot path and clones only the records it
//! returns.
//!
//! Layout: `load` turns hickory's parser output into validated [`Zone`]s, `source` finds the
//! line of a problem (hickory's parser does not report positions), `lookup` walks the index,
//! `transfer` lists the records a secondary receives (AXFR).

// `ZoneError` carries `Name`s (about 80 bytes each, inline) so diagnoses compare in tests.
// Every fallible function here runs at load or registration time, never per query.
#![allow(clippy::result_large_err, reason = "cold-path errors that carry names")]

mod error;
mod load;
mod lookup;
mod source;
#[cfg(test)]
mod tests;
mod transfer;

use std::collections::HashMap;

use hickory_proto::rr::{Name, RData, Record, RecordType};

pub use error::{SourceLine, ZoneError};
pub use lookup::Lookup;

/// One authoritative zone: its records indexed by owner name.
///
/// Every name that exists in the DNS sense has a `Node`: owners of records, the empty
/// non-terminals above them, and registered GSLB names. So "does this name exist" is one map
/// probe, and wildcards are blocked exactly where RFC 4592 says.
#[derive(Clone, Debug)]
pub struct Zone {
    /// Lower-case, fully qualified.
    origin: Name,
    soa: Record,
    nodes: HashMap<Name, Node>,
    record_count: usize,
}

#[derive(Clone, Debug, Default)]
struct Node {
    /// Sorted by type code: minimal ANY answers with the first one.
    rrsets: Vec<Rrset>,
    /// The highest delegation point at or above this name, if any. Such nodes are never
    /// answered authoritatively; they hold the child's NS (at the cut) and glue (below it).
    cut: Option<Name>,
    /// A GSLB name: answered by the steering core, holds no zone data.
    dynamic: bool,
}

#[derive(Clone, Debug)]
struct Rrset {
    rtype: RecordType,
    records: Vec<Record>,
}

impl Node {
    fn rrset(&self, rtype: RecordType) -> Option<&[Record]> {
        self.rrsets
            .iter()
            .find(|set| set.rtype == rtype)
            .map(|set| set.records.as_slice())
    }
}

impl Zone {
    /// The zone apex, lower-case and fully qualified.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    pub fn serial(&self) -> u32 {
        match &self.soa.data {
            RData::SOA(soa) => soa.serial,
            // The loader only stores an SOA record here.
            _ => 0,
        }
    }

    /// The apex SOA as written in the zone.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// The SOA for the authority section of NXDOMAIN / NODATA answers: its TTL is
    /// min(SOA TTL, SOA MINIMUM), the negative-caching TTL of RFC 2308 §3.
    pub fn negative_soa(&self) -> Record {
        let mut soa = self.soa.clone();
        if let RData::SOA(data) = &self.soa.data {
            soa.ttl = soa.ttl.min(data.minimum);
        }
        soa
    }

    /// The apex NS RRset (never empty: the loader rejects a zone without it).
    pub fn apex_ns(&self) -> &[Record] {
        self.nodes
            .get(&self.origin)
            .and_then(|apex| apex.rrset(RecordType::NS))
            .unwrap_or(&[])
    }

    /// Number of records loaded from the zone file, glue included.
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// Registers a GSLB name: from now on [`Zone::lookup`] answers it with
    /// [`Lookup::Dynamic`]. `name` is lower-cased here.
    ///
    /// Refused when the name is outside the zone, at or below a delegation point, a wildcard,
    /// already registered, or the owner of zone data of any type (one source of truth per
    /// name). An empty non-terminal may become a GSLB name; the names below it keep working.
    pub fn add_dynamic_name(&mut self, name: &Name) -> Result<(), ZoneError> {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        if !self.origin.zone_of(&name) {
            return Err(ZoneError::DynamicOutsideZone {
                name,
                origin: self.origin.clone(),
            });
        }
        if name.is_wildcard() {
            return Err(ZoneError::DynamicWildcard { name });
        }
        if let Some(cut) = self.enclosing_cut(&name) {
            return Err(ZoneError::DynamicBelowCut { name, cut });
        }
        if let Some(node) = self.nodes.get(&name) {
            if node.dynamic {
                return Err(ZoneError::DynamicDuplicate { name });
            }
            if let Some(set) = node.rrsets.first() {
                return Err(ZoneError::DynamicHasData {
                    name,
                    rtype: set.rtype,
                });
            }
        }
        load::insert_with_ancestors(&mut self.nodes, &self.origin, &name).dynamic = true;
        Ok(())
    }

    /// The delegation point at or above `name` (in the zone), even when `name` itself does not
    /// exist.
    fn enclosing_cut(&self, name: &Name) -> Option<Name> {
        let mut candidate = name.clone();
        while self.origin.zone_of(&candidate) {
            if let Some(node) = self.nodes.get(&candidate) {
                // Nodes carry their cut, and every ancestor of a node is a node too.
                return node.cut.clone();
            }
            if candidate.is_root() {
                break;
            }
            candidate = candidate.base_name();
        }
        None
    }
}

/// All zones of one snapshot.
#[derive(Clone, Debug, Default)]
pub struct Zones {
    /// Sorted by origin, so iteration is deterministic.
    zones: Vec<Zone>,
    by_origin: HashMap<Name, usize>,
}

impl Zones {
    /// Rejects two zones with the same origin. Nested zones are fine: the longest origin wins.
    pub fn new(mut zones: Vec<Zone>) -> Result<Zones, ZoneError> {
        zones.sort_by(|a, b| a.origin.cmp(&b.origin));
        let mut by_origin = HashMap::with_capacity(zones.len());
        for (index, zone) in zones.iter().enumerate() {
            if by_origin.insert(zone.origin.clone(), index).is_some() {
                return Err(ZoneError::DuplicateOrigin {
                    origin: zone.origin.clone(),
                });
            }
        }
        Ok(Zones { zones, by_origin })
    }

    /// The zone with the longest origin that contains `qname`; `None` means REFUSED.
    pub fn find(&self, qname: &Name) -> Option<&Zone> {
        if let Some(&index) = self.by_origin.get(qname) {
            return self.zones.get(index);
        }
        let mut candidate = qname.clone();
        while !candidate.is_root() {
            candidate = candidate.base_name();
            if let Some(&index) = self.by_origin.get(&candidate) {
                return self.zones.get(index);
            }
        }
        None
    }

    /// The zone loaded at exactly `origin`, e.g. to register its GSLB names.
    pub fn get_mut(&mut self, origin: &Name) -> Option<&mut Zone> {
        let index = *self.by_origin.get(origin)?;
        self.zones.get_mut(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Zone> {
        self.zones.iter()
    }

    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
}
