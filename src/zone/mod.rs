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
//! does no IO; [`Zone::lookup`] sits on the query hot path and decodes only the records it
//! returns.
//!
//! Layout: `load` turns hickory's parser output into validated [`Zone`]s, `source` finds the
//! line of a problem (hickory's parser does not report positions), `store` is the compact
//! form a loaded zone keeps (names as canonical-order keys, records in wire form), `lookup`
//! walks it, `transfer` lists the records a secondary receives (AXFR).

// `ZoneError` carries `Name`s (about 80 bytes each, inline) so diagnoses compare in tests.
// Every fallible function here runs at load or registration time, never per query.
#![allow(clippy::result_large_err, reason = "cold-path errors that carry names")]

mod error;
mod load;
mod lookup;
mod source;
mod store;
#[cfg(test)]
mod tests;
mod transfer;

use std::collections::{HashMap, HashSet};

use hickory_proto::rr::{Name, RData, Record, RecordType};

pub use error::{SourceLine, ZoneError};
pub use lookup::Lookup;
use store::{NodeIdx, Store};

/// One authoritative zone: its records indexed by owner name.
///
/// Every name that exists in the DNS sense is a node of the store: owners of records, the
/// empty non-terminals above them, and registered GSLB names. So "does this name exist" is one
/// probe, and wildcards are blocked exactly where RFC 4592 says.
#[derive(Clone, Debug)]
pub struct Zone {
    /// Lower-case, fully qualified.
    origin: Name,
    /// Labels of `origin`: the part of a name that store keys leave out.
    origin_labels: usize,
    soa: Record,
    store: Store,
    record_count: usize,
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
    pub fn apex_ns(&self) -> Vec<Record> {
        self.store
            .find(&[])
            .and_then(|apex| self.store.rrset(apex, RecordType::NS))
            .map(|set| self.store.records(set, &self.origin))
            .unwrap_or_default()
    }

    /// Number of records loaded from the zone file, glue included.
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// Registers a GSLB name: from now on [`Zone::lookup`] answers it with
    /// [`Lookup::Dynamic`]. See [`Zone::add_dynamic_names`], which registers many at once.
    pub fn add_dynamic_name(&mut self, name: &Name) -> Result<(), ZoneError> {
        self.add_dynamic_names(std::slice::from_ref(name))
            .map_err(|(_, error)| error)
    }

    /// Registers GSLB names, in order, as repeated [`Zone::add_dynamic_name`] calls would, but
    /// rebuilds the index once. Names are lower-cased here.
    ///
    /// Refused when a name is outside the zone, at or below a delegation point, a wildcard,
    /// already registered, or the owner of zone data of any type (one source of truth per
    /// name). An empty non-terminal may become a GSLB name; the names below it keep working.
    /// `Err` holds the position of the refused name in `names`; the names before it are
    /// registered.
    pub fn add_dynamic_names(&mut self, names: &[Name]) -> Result<(), (usize, ZoneError)> {
        let mut added: Vec<Vec<u8>> = Vec::new();
        let mut pending: HashSet<Vec<u8>> = HashSet::new();
        let outcome = names.iter().enumerate().try_for_each(|(index, name)| {
            self.check_dynamic(name, &mut pending, &mut added)
                .map_err(|error| (index, error))
        });
        added.sort_unstable();
        self.store
            .insert_dynamic(&added)
            .map_err(|store::TooLarge| {
                let error = ZoneError::TooLarge {
                    at: SourceLine {
                        file: None,
                        line: None,
                    },
                };
                (0, error)
            })?;
        outcome
    }

    /// One name of [`Zone::add_dynamic_names`]: an existing empty non-terminal is marked at
    /// once, a new name goes to `added` (`pending` holds the same keys, for lookup).
    fn check_dynamic(
        &mut self,
        name: &Name,
        pending: &mut HashSet<Vec<u8>>,
        added: &mut Vec<Vec<u8>>,
    ) -> Result<(), ZoneError> {
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
        let key = self.key_of(&name);
        if let Some(cut) = self.enclosing_cut(&key) {
            return Err(ZoneError::DynamicBelowCut { name, cut });
        }
        match self.store.find(&key) {
            Some(node) if self.store.is_dynamic(node) => Err(ZoneError::DynamicDuplicate { name }),
            Some(node) => match self.store.rrsets(node).first() {
                Some(set) => Err(ZoneError::DynamicHasData {
                    name,
                    rtype: set.rtype(),
                }),
                None => {
                    self.store.set_dynamic(node);
                    Ok(())
                }
            },
            None if pending.contains(&key) => Err(ZoneError::DynamicDuplicate { name }),
            None => {
                pending.insert(key.clone());
                added.push(key);
                Ok(())
            }
        }
    }

    /// The store key of `name`, which must be inside the zone.
    fn key_of(&self, name: &Name) -> Vec<u8> {
        let mut key = Vec::with_capacity(32);
        store::push_key(self.origin_labels, name, &mut key);
        key
    }

    /// The delegation point at or above the name of `key`, even when that name does not
    /// exist.
    fn enclosing_cut(&self, key: &[u8]) -> Option<Name> {
        let mut candidate = Some(key);
        while let Some(key) = candidate {
            if let Some(node) = self.store.find(key) {
                // Nodes carry their cut, and every ancestor of a node is a node too.
                return self
                    .store
                    .cut(node)
                    .map(|cut| self.store.name(cut, &self.origin));
            }
            candidate = store::parent_key(key);
        }
        None
    }

    /// The owner name of a node.
    fn node_name(&self, node: NodeIdx) -> Name {
        self.store.name(node, &self.origin)
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
