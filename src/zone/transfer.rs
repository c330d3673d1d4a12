//! The zone's side of a zone transfer (RFC 5936): which records a secondary receives, in
//! which order. Access control, message splitting and the wire are `dns::transfer`'s.

use hickory_proto::rr::{Record, RecordType};

use super::Zone;

impl Zone {
    /// Every record loaded from the zone file except the apex SOA, in canonical name order
    /// (RFC 4034 §6.1), RRsets of one name by type code: delegation NS records and their glue
    /// included, as a secondary must serve the same referrals. GSLB names hold no zone data
    /// and contribute nothing here.
    ///
    /// A transfer is this body between two copies of [`Zone::soa`]. The order is
    /// deterministic, so two transfers of one snapshot are identical.
    pub fn transfer_body(&self) -> Vec<&Record> {
        let mut owners: Vec<_> = self
            .nodes
            .iter()
            .filter(|(_, node)| !node.rrsets.is_empty())
            .collect();
        owners.sort_unstable_by_key(|(name, _)| *name);
        let mut records = Vec::with_capacity(self.record_count);
        for (_, node) in owners {
            for set in &node.rrsets {
                if set.rtype != RecordType::SOA {
                    records.extend(set.records.iter());
                }
            }
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::Name;

    use super::*;

    fn example() -> Zone {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/example.test.zone");
        Zone::load(&Name::from_ascii("example.test.").unwrap(), &path).unwrap()
    }

    #[test]
    fn the_body_is_every_record_but_the_soa_in_canonical_order() {
        let mut zone = example();
        // A GSLB name adds a node but no records.
        zone.add_dynamic_name(&Name::from_ascii("api.example.test.").unwrap())
            .unwrap();
        let body = zone.transfer_body();
        assert_eq!(body.len(), zone.record_count() - 1);
        assert!(body.iter().all(|r| r.record_type() != RecordType::SOA));
        assert!(
            body.windows(2).all(|pair| pair[0].name <= pair[1].name),
            "canonical name order"
        );
        let has = |name: &str, rtype: RecordType| {
            let name = Name::from_ascii(name).unwrap();
            body.iter()
                .any(|r| r.name == name && r.record_type() == rtype)
        };
        assert!(has("lab.example.test.", RecordType::NS));
        assert!(has("ns.lab.example.test.", RecordType::AAAA), "glue");
        assert!(has("*.apps.example.test.", RecordType::A));
        assert!(
            !body
                .iter()
                .any(|r| r.name.to_string() == "api.example.test.")
        );
        assert_eq!(body, example().transfer_body(), "deterministic");
    }
}
