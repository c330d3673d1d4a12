//! Zone file → validated [`Zone`].
//!
//! hickory's parser does the RFC 1035 text format; this file decides what a *servable* zone
//! is: exactly one SOA, at the apex; NS at the apex; every owner inside the origin; class IN;
//! sane TTLs; CNAMEs alone at their name and never at the apex. The first problem found is
//! reported, located to a line by `source::locate` (error path only).

use std::collections::HashMap;
use std::path::Path;

use hickory_proto::ProtoError;
use hickory_proto::rr::{DNSClass, LowerName, Name, Record, RecordType, RrKey};
use hickory_proto::serialize::binary::DecodeError;
use hickory_proto::serialize::txt::ParseError;

use super::source::{self, ParsedRecords};
use super::{Node, Rrset, SourceLine, Zone, ZoneError};

/// RFC 2181 §8: TTLs are unsigned 31-bit values.
const MAX_TTL: u32 = i32::MAX as u32;

impl Zone {
    /// Reads and parses the zone file at `path` for `origin`.
    pub fn load(origin: &Name, path: &Path) -> Result<Zone, ZoneError> {
        let text = std::fs::read_to_string(path).map_err(|error| ZoneError::Read {
            file: path.to_path_buf(),
            kind: error.kind(),
            reason: error.to_string(),
        })?;
        Zone::parse(origin, &text, Some(path))
    }

    /// Parses zone text for `origin`. `path` names the source in errors and resolves relative
    /// `$INCLUDE`s; without it, relative `$INCLUDE` is an error.
    pub fn parse(origin: &Name, text: &str, path: Option<&Path>) -> Result<Zone, ZoneError> {
        let mut origin = origin.to_lowercase();
        origin.set_fqdn(true);
        let source = Source {
            text,
            path,
            origin: &origin,
        };
        let parsed = source::parse(text, path, &origin).map_err(|error| source.syntax(&error))?;
        if let Some(line) = source::quote_in_group(text) {
            return Err(ZoneError::QuoteInGroup {
                at: source.at(Some(line)),
            });
        }
        build(&source, parsed)
    }
}

/// The zone text, kept to locate problems.
struct Source<'a> {
    text: &'a str,
    path: Option<&'a Path>,
    origin: &'a Name,
}

impl Source<'_> {
    fn at(&self, line: Option<usize>) -> SourceLine {
        SourceLine {
            file: self.path.map(Path::to_path_buf),
            line,
        }
    }

    fn syntax(&self, error: &ParseError) -> ZoneError {
        let message = describe(error);
        // The shortest failing prefix fails at the entry that broke the whole text.
        let line = source::locate(self.text, self.path, self.origin, |result| result.is_err());
        ZoneError::Syntax {
            at: self.at(line),
            message,
        }
    }

    /// The line of the entry that first brings the RRset `key` into the parse.
    fn line_of(&self, name: &Name, rtype: RecordType) -> SourceLine {
        let key = RrKey::new(LowerName::new(name), rtype);
        self.line_where(|records| records.contains_key(&key))
    }

    fn line_where(&self, shows_problem: impl Fn(&ParsedRecords) -> bool) -> SourceLine {
        let line = source::locate(self.text, self.path, self.origin, |result| {
            result.as_ref().is_ok_and(&shows_problem)
        });
        self.at(line)
    }
}

/// hickory's wording, made plainer where operators most often meet it.
fn describe(error: &ParseError) -> String {
    match error {
        ParseError::Proto(ProtoError::Decode(DecodeError::UnknownRecordTypeStr(rtype))) => {
            format!("unknown record type \"{rtype}\"")
        }
        other => other.to_string(),
    }
}

fn build(source: &Source<'_>, parsed: ParsedRecords) -> Result<Zone, ZoneError> {
    let origin = source.origin;
    let mut nodes: HashMap<Name, Node> = HashMap::with_capacity(parsed.len());
    let mut soa = None;
    let mut record_count = 0;

    for (_, set) in parsed {
        let parts = set.into_parts();
        let name = parts.name.to_lowercase();
        let rtype = parts.record_type;
        let mut records = parts.records;
        check_rrset(source, &name, rtype, &records)?;
        for record in &mut records {
            record.name = name.clone();
        }
        if rtype == RecordType::SOA {
            if name != *origin {
                return Err(ZoneError::SoaNotAtApex {
                    at: source.line_of(&name, rtype),
                    name,
                    origin: origin.clone(),
                });
            }
            soa = records.first().cloned();
        }
        record_count += records.len();
        let node = insert_with_ancestors(&mut nodes, origin, &name);
        node.rrsets.push(Rrset { rtype, records });
    }

    let Some(soa) = soa else {
        return Err(ZoneError::MissingSoa {
            at: source.at(None),
            origin: origin.clone(),
        });
    };
    if nodes
        .get(origin)
        .and_then(|apex| apex.rrset(RecordType::NS))
        .is_none_or(<[Record]>::is_empty)
    {
        return Err(ZoneError::MissingApexNs {
            at: source.at(None),
            origin: origin.clone(),
        });
    }

    check_names(source, &nodes)?;
    mark_cuts(origin, &mut nodes);
    for node in nodes.values_mut() {
        node.rrsets.sort_by_key(|set| u16::from(set.rtype));
    }

    Ok(Zone {
        origin: origin.clone(),
        soa,
        nodes,
        record_count,
    })
}

/// Per-RRset checks: owner inside the origin, class IN, TTLs.
fn check_rrset(
    source: &Source<'_>,
    name: &Name,
    rtype: RecordType,
    records: &[Record],
) -> Result<(), ZoneError> {
    if !source.origin.zone_of(name) {
        return Err(ZoneError::OutsideOrigin {
            at: source.line_of(name, rtype),
            name: name.clone(),
            origin: source.origin.clone(),
        });
    }
    let Some(first) = records.first() else {
        return Ok(());
    };
    for record in records {
        if record.dns_class != DNSClass::IN {
            return Err(ZoneError::NotInClass {
                at: source.line_of(name, rtype),
                name: name.clone(),
                rtype,
                class: record.dns_class,
            });
        }
        if record.ttl > MAX_TTL {
            return Err(ZoneError::TtlTooLarge {
                at: source.line_of(name, rtype),
                name: name.clone(),
                rtype,
                ttl: record.ttl,
            });
        }
        if record.ttl != first.ttl {
            let key = RrKey::new(LowerName::new(name), rtype);
            return Err(ZoneError::TtlMismatch {
                at: source.line_where(|parsed| {
                    parsed.get(&key).is_some_and(|set| {
                        set.records_without_rrsigs()
                            .any(|record| record.ttl != first.ttl)
                    })
                }),
                name: name.clone(),
                rtype,
                first: first.ttl,
                other: record.ttl,
            });
        }
    }
    Ok(())
}

/// Per-name checks that need all RRsets of a name. Names are visited in canonical order so
/// the error reported for a broken zone does not depend on hash order.
fn check_names(source: &Source<'_>, nodes: &HashMap<Name, Node>) -> Result<(), ZoneError> {
    let mut names: Vec<&Name> = nodes.keys().collect();
    names.sort();
    for name in names {
        let Some(node) = nodes.get(name) else {
            continue;
        };
        let has = |rtype| node.rrset(rtype).is_some();
        if has(RecordType::CNAME) {
            if name == source.origin {
                return Err(ZoneError::CnameAtApex {
                    at: source.line_of(name, RecordType::CNAME),
                    name: name.clone(),
                });
            }
            if let Some(other) = node
                .rrsets
                .iter()
                .find(|set| set.rtype != RecordType::CNAME)
            {
                let cname = RrKey::new(LowerName::new(name), RecordType::CNAME);
                let other_key = RrKey::new(LowerName::new(name), other.rtype);
                return Err(ZoneError::CnameAndOtherData {
                    at: source.line_where(|parsed| {
                        parsed.contains_key(&cname) && parsed.contains_key(&other_key)
                    }),
                    name: name.clone(),
                    other: other.rtype,
                });
            }
        }
        if name.is_wildcard() && has(RecordType::NS) {
            return Err(ZoneError::WildcardDelegation {
                at: source.line_of(name, RecordType::NS),
                name: name.clone(),
            });
        }
    }
    Ok(())
}

/// Returns the node for `name`, creating it and any missing ancestors down from the origin
/// as empty non-terminals. `name` must be lower-case and inside `origin`.
pub(super) fn insert_with_ancestors<'n>(
    nodes: &'n mut HashMap<Name, Node>,
    origin: &Name,
    name: &Name,
) -> &'n mut Node {
    let mut ancestor = name.clone();
    while ancestor != *origin && !ancestor.is_root() {
        ancestor = ancestor.base_name();
        if nodes.contains_key(&ancestor) {
            // Ancestors of an existing node already exist.
            break;
        }
        nodes.insert(ancestor.clone(), Node::default());
    }
    nodes.entry(name.clone()).or_default()
}

/// Marks every node at or below a non-apex NS RRset with its (highest) delegation point.
fn mark_cuts(origin: &Name, nodes: &mut HashMap<Name, Node>) {
    let delegated = |name: &Name| {
        name != origin
            && nodes
                .get(name)
                .is_some_and(|node| node.rrset(RecordType::NS).is_some())
    };
    if !nodes.keys().any(delegated) {
        return;
    }
    let apex_labels = origin.iter().len();
    let below_cuts: Vec<(Name, Name)> = nodes
        .keys()
        .filter_map(|name| {
            // Top-down, so a cut below another cut is attributed to the upper one.
            (apex_labels + 1..=name.iter().len())
                .map(|labels| name.trim_to(labels))
                .find(delegated)
                .map(|cut| (name.clone(), cut))
        })
        .collect();
    for (name, cut) in below_cuts {
        if let Some(node) = nodes.get_mut(&name) {
            node.cut = Some(cut);
        }
    }
}
