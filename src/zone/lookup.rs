//! Answering one question from one zone: RFC 1034 §4.3.2 with RFC 4592 wildcards, RFC 6604
//! CNAME rcodes and RFC 8482 minimal ANY.

use std::borrow::Cow;

use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::{Node, Zone};

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
enum Resolution<'z> {
    /// The name exists, or a wildcard stands in for it (`synthesized`: the records must take
    /// the name as owner).
    Exists {
        node: &'z Node,
        synthesized: bool,
    },
    /// The name is at or below the delegation whose NS RRset `cut` holds.
    Delegated {
        cut: &'z Node,
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
        loop {
            let (node, synthesized) = match self.resolve(&current) {
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

            if node.dynamic {
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

            let owner = synthesized.then_some(current.as_ref());
            let answer_set = if qtype == RecordType::ANY {
                node.rrsets.first()
            } else {
                node.rrsets.iter().find(|set| set.rtype == qtype)
            };
            if let Some(set) = answer_set {
                let additionals = self.additionals(set.rtype, &set.records);
                chain.extend(answer_records(&set.records, owner));
                return Lookup::Answer {
                    answers: chain,
                    additionals,
                };
            }

            let Some(cname) = node
                .rrset(RecordType::CNAME)
                .and_then(|records| records.first())
            else {
                return Lookup::NoData { chain };
            };
            let RData::CNAME(target) = &cname.data else {
                return Lookup::NoData { chain };
            };
            let target = target.0.to_lowercase();
            chain.extend(answer_records(std::slice::from_ref(cname), owner));
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

    fn resolve(&self, name: &Name) -> Resolution<'_> {
        if !self.origin.zone_of(name) {
            return Resolution::OutsideZone;
        }
        // The common case, an existing name, costs one probe and no allocation.
        if let Some(node) = self.nodes.get(name) {
            return self.existing(node, name);
        }
        // The closest encloser (RFC 4592 §3.3.1): the nearest existing ancestor. It exists
        // because the apex does.
        let mut encloser = name.base_name();
        loop {
            if let Some(node) = self.nodes.get(&encloser) {
                if node.cut.is_some() {
                    return self.existing(node, name);
                }
                let Ok(wildcard) = encloser.prepend_label("*") else {
                    return Resolution::NxDomain;
                };
                return match self.nodes.get(&wildcard) {
                    Some(node) => Resolution::Exists {
                        node,
                        synthesized: true,
                    },
                    None => Resolution::NxDomain,
                };
            }
            if encloser.is_root() {
                return Resolution::NxDomain;
            }
            encloser = encloser.base_name();
        }
    }

    /// `node` exists at or above `name`; is it ours to answer?
    fn existing<'z>(&'z self, node: &'z Node, name: &Name) -> Resolution<'z> {
        match &node.cut {
            None => Resolution::Exists {
                node,
                synthesized: false,
            },
            Some(cut_name) => match self.nodes.get(cut_name) {
                Some(cut) => Resolution::Delegated {
                    cut,
                    at_cut: cut_name == name,
                },
                // Every cut name is a node; unreachable, but never answer glue as data.
                None => Resolution::NxDomain,
            },
        }
    }

    fn referral(&self, cut: &Node) -> Lookup {
        let ns = cut.rrset(RecordType::NS).unwrap_or(&[]);
        let targets = ns.iter().filter_map(|record| match &record.data {
            RData::NS(ns) => Some(&ns.0),
            _ => None,
        });
        Lookup::Referral {
            ns: ns.to_vec(),
            glue: self.addresses_of(targets),
        }
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
        // Name comparison and hashing ignore case, so targets need no lower-casing here.
        let mut seen: Vec<&Name> = Vec::new();
        let mut addresses = Vec::new();
        for target in targets {
            if !self.origin.zone_of(target) || seen.contains(&target) {
                continue;
            }
            if let Some(node) = self.nodes.get(target) {
                for rtype in [RecordType::A, RecordType::AAAA] {
                    addresses.extend_from_slice(node.rrset(rtype).unwrap_or(&[]));
                }
            }
            seen.push(target);
        }
        addresses
    }
}

/// Clones an RRset for the answer, rewriting the owner when a wildcard synthesized it.
fn answer_records<'a>(
    records: &'a [Record],
    synthesized_owner: Option<&'a Name>,
) -> impl Iterator<Item = Record> + 'a {
    records.iter().map(move |record| {
        let mut record = record.clone();
        if let Some(owner) = synthesized_owner {
            record.name = owner.clone();
        }
        record
    })
}
