//! The zone's side of a zone transfer (RFC 5936): which records a secondary receives, in
//! which order. Access control, message splitting and the wire are `dns::transfer`'s.

use hickory_proto::rr::{Record, RecordType};

use super::Zone;
use super::store::NodeIdx;

impl Zone {
    /// Every record loaded from the zone file except the apex SOA, in canonical name order
    /// (RFC 4034 §6.1), RRsets of one name by type code: delegation NS records and their glue
    /// included, as a secondary must serve the same referrals. GSLB names hold no zone data
    /// and contribute nothing here. `record_count() - 1` records.
    ///
    /// A transfer is this body between two copies of [`Zone::soa`]. The order is
    /// deterministic, so two transfers of one snapshot are identical. Records are decoded
    /// from the compact store as the iterator goes.
    pub fn transfer_body(&self) -> impl Iterator<Item = Record> + '_ {
        (0..self.store.len()).flat_map(move |node| {
            let node = node as NodeIdx;
            let rrsets = self.store.rrsets(node);
            if rrsets.is_empty() {
                return Vec::new();
            }
            let owner = self.node_name(node);
            rrsets
                .iter()
                .filter(|set| set.rtype() != RecordType::SOA)
                .flat_map(|set| self.store.records(set, &owner))
                .collect()
        })
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
        let body: Vec<_> = zone.transfer_body().collect();
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
        assert_eq!(
            body,
            example().transfer_body().collect::<Vec<_>>(),
            "deterministic"
        );
    }
}
