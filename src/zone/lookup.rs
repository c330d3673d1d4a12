//! Answering one question from one zone: RFC 1034 §4.3.2 with RFC 4592 wildcards, RFC 6604
//! CNAME rcodes and RFC 8482 minimal ANY.

use std::borrow::Cow;

use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::Zone;
use super::store::{self, NodeIdx};

/// Longest CNAME chain followed inside one zone. Real chains inside a zone are one or two
/// links; the bound caps the work a crafted zone can cause per query. Loops are also stopped
/// as soon as a target repeats.
pub(super) const MAX_CNAME_CHAIN: usize = 8;

/// What the zone says about a question. The DNS handler turns it into a response.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// NOERROR, AA. `answers` may begin with a CNAME chain followed inside the zone; a chain
    /// that leaves the zone (or enters a delegation, or loops) ends here and the resolver
    /// continues from its last target.
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// NOERROR, AA, no data of that type (the handler adds the SOA). `chain`: CNAMEs followed
    /// first.
    NoData { chain: Vec<Record> },
    /// NXDOMAIN, AA: the rcode of the last name in the chain (RFC 6604).
    NxDomain { chain: Vec<Record> },
    /// Not authoritative: the qname is at or below a zone cut. `ns` goes to authority, `glue`
    /// (A/AAAA of NS targets inside this zone) to additional.
    Referral { ns: Vec<Record>, glue: Vec<Record> },
    /// `name` (the qname or the end of `chain`) is a GSLB name and the qtype is A, AAAA, CNAME
    /// or ANY: the steering core's answer goes after `chain`.
    Dynamic { chain: Vec<Record>, name: Name },
}

/// Where a name lands in the zone.
enum Resolution {
    /// The name exists, or a wildcard stands in for it (`synthesized`: the records must take
    /// the name as owner).
    Exists {
        node: NodeIdx,
        synthesized: bool,
    },
    /// The name is at or below the delegation whose NS RRset `cut` holds.
    Delegated {
        cut: NodeIdx,
        at_cut: bool,
    },
    NxDomain,
    OutsideZone,
}

impl Zone {
    /// Answers `qname`/`qtype` from this zone. `qname` must be lower-case (the handler
    /// lowercases once per query).
    ///
    /// ANY (RFC 8482): the answer is one RRset, the one with the lowest type code at the name
    /// (e.g. A before NS before MX before TXT before AAAA); a CNAME is returned, not followed.
    ///
    /// A `qname` outside the zone yields `NxDomain`; callers choose the zone with
    /// [`super::Zones::find`] first.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let mut chain = Vec::new();
        let mut current = Cow::Borrowed(qname);
        let mut key = Vec::with_capacity(64);
        loop {
            let (node, synthesized) = match self.resolve(&current, &mut key) {
                Resolution::Exists { node, synthesized } => (node, synthesized),
                Resolution::Delegated { cut, at_cut } => {
                    return if !chain.is_empty() {
                        // The child zone answers for the target; the resolver follows on.
                        Lookup::Answer {
                            answers: chain,
                            additionals: Vec::new(),
                        }
                    } else if at_cut && qtype == RecordType::DS {
                        // DS lives on the parent side of the cut; we sign nothing.
                        Lookup::NoData { chain }
                    } else {
                        self.referral(cut)
                    };
                }
                Resolution::NxDomain | Resolution::OutsideZone => {
                    return Lookup::NxDomain { chain };
                }
            };

            if self.store.is_dynamic(node) {
                return match qtype {
                    RecordType::A | RecordType::AAAA | RecordType::CNAME | RecordType::ANY => {
                        Lookup::Dynamic {
                            chain,
                            name: current.into_owned(),
                        }
                    }
                    _ => Lookup::NoData { chain },
                };
            }

            // A synthesized answer takes the name asked for; a stored one its (lower-case)
            // owner, which is that name.
            let owner = if synthesized {
                current.as_ref().clone()
            } else {
                lower_case(&current)
            };
            let rrsets = self.store.rrsets(node);
            let answer_set = if qtype == RecordType::ANY {
                rrsets.first()
            } else {
                let code = u16::from(qtype);
                rrsets.iter().find(|set| u16::from(set.rtype()) == code)
            };
            if let Some(set) = answer_set {
                let records = self.store.records(set, &owner);
                let additionals = self.additionals(set.rtype(), &records);
                chain.extend(records);
                return Lookup::Answer {
                    answers: chain,
                    additionals,
                };
            }

            let Some(cname) = self
                .store
                .rrset(node, RecordType::CNAME)
                .and_then(|set| self.store.records(set, &owner).into_iter().next())
            else {
                return Lookup::NoData { chain };
            };
            let RData::CNAME(target) = &cname.data else {
                return Lookup::NoData { chain };
            };
            let target = target.0.to_lowercase();
            chain.push(cname);
            let looped = chain.iter().any(|record| record.name == target);
            if looped || chain.len() >= MAX_CNAME_CHAIN || !self.origin.zone_of(&target) {
                return Lookup::Answer {
                    answers: chain,
                    additionals: Vec::new(),
                };
            }
            current = Cow::Owned(target);
        }
    }

    /// `key` is scratch space for the name's store key.
    fn resolve(&self, name: &Name, key: &mut Vec<u8>) -> Resolution {
        if !self.origin.zone_of(name) {
            return Resolution::OutsideZone;
        }
        key.clear();
        store::push_key(self.origin_labels, name, key);
        // The common case, an existing name, costs one probe.
        if let Some(node) = self.store.find(key) {
            return self.existing(node, key);
        }
        // The closest encloser (RFC 4592 §3.3.1): the nearest existing ancestor. It exists
        // because the apex does.
        let mut encloser = store::parent_key(key);
        while let Some(candidate) = encloser {
            if let Some(node) = self.store.find(candidate) {
                if self.store.cut(node).is_some() {
                    return self.existing(node, key);
                }
                let mut wildcard = candidate.to_vec();
                store::push_label(b"*", &mut wildcard);
                return match self.store.find(&wildcard) {
                    Some(node) => Resolution::Exists {
                        node,
                        synthesized: true,
                    },
                    None => Resolution::NxDomain,
                };
            }
            encloser = store::parent_key(candidate);
        }
        Resolution::NxDomain
    }

    /// `node` exists at or above the name of `key`; is it ours to answer?
    fn existing(&self, node: NodeIdx, key: &[u8]) -> Resolution {
        match self.store.cut(node) {
            None => Resolution::Exists {
                node,
                synthesized: false,
            },
            Some(cut) => Resolution::Delegated {
                cut,
                at_cut: self.store.key(cut) == key,
            },
        }
    }

    fn referral(&self, cut: NodeIdx) -> Lookup {
        let ns = match self.store.rrset(cut, RecordType::NS) {
            Some(set) => self.store.records(set, &self.node_name(cut)),
            None => Vec::new(),
        };
        let targets = ns.iter().filter_map(|record| match &record.data {
            RData::NS(ns) => Some(&ns.0),
            _ => None,
        });
        let glue = self.addresses_of(targets);
        Lookup::Referral { ns, glue }
    }

    /// Additional-section processing (RFC 1035 §3.3.9, §3.3.11; RFC 2782): addresses of the
    /// MX, SRV and NS targets that this zone holds.
    fn additionals(&self, rtype: RecordType, records: &[Record]) -> Vec<Record> {
        if !matches!(rtype, RecordType::MX | RecordType::SRV | RecordType::NS) {
            return Vec::new();
        }
        let targets = records.iter().filter_map(|record| match &record.data {
            RData::MX(mx) => Some(&mx.exchange),
            RData::SRV(srv) => Some(&srv.target),
            RData::NS(ns) => Some(&ns.0),
            _ => None,
        });
        self.addresses_of(targets)
    }

    /// A and AAAA records owned by exactly these names (no wildcard synthesis, as resolvers
    /// would not trust it there anyway), glue included; each name once.
    fn addresses_of<'a>(&self, targets: impl Iterator<Item = &'a Name>) -> Vec<Record> {
        // Name comparison and store keys ignore case, so targets need no lower-casing here.
        let mut seen: Vec<&Name> = Vec::new();
        let mut addresses = Vec::new();
        let mut key = Vec::new();
        for target in targets {
            if !self.origin.zone_of(target) || seen.contains(&target) {
                continue;
            }
            key.clear();
            store::push_key(self.origin_labels, target, &mut key);
            if let Some(node) = self.store.find(&key) {
                let owner = lower_case(target);
                for rtype in [RecordType::A, RecordType::AAAA] {
                    if let Some(set) = self.store.rrset(node, rtype) {
                        addresses.extend(self.store.records(set, &owner));
                    }
                }
            }
            seen.push(target);
        }
        addresses
    }
}

/// `name` in lower case: the owner a stored record has. Names on the query path are lower
/// case already (the handler lowercases the qname, CNAME targets are lowercased here), so
/// this is usually a plain copy.
fn lower_case(name: &Name) -> Name {
    if name.iter().flatten().any(u8::is_ascii_uppercase) {
        name.to_lowercase()
    } else {
        name.clone()
    }
}
