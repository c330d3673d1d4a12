//! The last few GSLB decisions, for the status page and `GET /v1/decisions`.
//!
//! The query path records into a small ring and must never wait for it: a record that finds
//! the ring busy (the admin API reading it, or another listener recording) is dropped and
//! counted. Slots are reused, so once the ring is full a record allocates nothing: names and
//! region ids are `Arc` clones from the snapshot. Client addresses are kept only as their
//! network (at most /24 for IPv4, /48 for IPv6), since the page is readable without a token.

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex, TryLockError,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use ipnet::IpNet;

use crate::{
    dns::{
        handler::{AnswerSource, Summary},
        wire::parse_query,
    },
    snapshot::Snapshot,
};

/// How many decisions the status page shows by default.
pub const DEFAULT_CAPACITY: usize = 64;

/// Longest prefix kept of a client's address.
const MAX_V4_PREFIX: u8 = 24;
const MAX_V6_PREFIX: u8 = 48;

/// One answered GSLB query.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentDecision {
    pub at: SystemTime,
    /// The client's network, truncated to at most /24 or /48.
    pub client: IpNet,
    /// The GSLB name asked for.
    pub name: Arc<str>,
    /// Region ids answered, in answer order.
    pub regions: Vec<Arc<str>>,
    /// The steering reason label (`geo-country`, `failover+fail-open`, …).
    pub reason: &'static str,
}

/// A bounded ring of recent decisions; see the module docs.
#[derive(Debug)]
pub struct RecentDecisions {
    capacity: usize,
    ring: Mutex<Ring>,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Ring {
    slots: Vec<RecentDecision>,
    /// Where the next record goes once `slots` is full.
    next: usize,
}

impl Default for RecentDecisions {
    fn default() -> Self {
        RecentDecisions::new(DEFAULT_CAPACITY)
    }
}

impl RecentDecisions {
    /// A ring holding the last `capacity` decisions (at least one).
    pub fn new(capacity: usize) -> RecentDecisions {
        let capacity = capacity.max(1);
        RecentDecisions {
            capacity,
            ring: Mutex::new(Ring {
                slots: Vec::with_capacity(capacity),
                next: 0,
            }),
            dropped: AtomicU64::new(0),
        }
    }

    /// The query path's call, after answering: records GSLB answers, ignores everything else.
    /// `client` is the ECS source network when the query carried one, else the peer address
    /// (as a host network); it is truncated here. Never blocks.
    pub fn record_answer(&self, client: IpNet, summary: &Summary, snapshot: &Snapshot) {
        let AnswerSource::Gslb {
            policy,
            regions,
            reason,
        } = &summary.source
        else {
            return;
        };
        let Some(name) = snapshot.steering_names().get(policy.0 as usize) else {
            return;
        };
        let ids = regions
            .iter()
            .filter(|r| r.get() < snapshot.config.regions.len())
            .map(|r| &snapshot.config.region(*r).id);
        self.record(SystemTime::now(), client, name, ids, reason.as_str());
    }

    /// Records one decision unless the ring is busy. Never blocks.
    pub fn record<'a>(
        &self,
        at: SystemTime,
        client: IpNet,
        name: &Arc<str>,
        regions: impl IntoIterator<Item = &'a Arc<str>>,
        reason: &'static str,
    ) {
        let mut ring = match self.ring.try_lock() {
            Ok(ring) => ring,
            // A panic elsewhere while holding the lock leaves a ring of valid entries.
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let client = truncate(client);
        if ring.slots.len() < self.capacity {
            ring.slots.push(RecentDecision {
                at,
                client,
                name: Arc::clone(name),
                regions: regions.into_iter().cloned().collect(),
                reason,
            });
            return;
        }
        let index = ring.next;
        ring.next = (index + 1) % self.capacity;
        let slot = &mut ring.slots[index];
        slot.at = at;
        slot.client = client;
        slot.name = Arc::clone(name);
        slot.regions.clear();
        slot.regions.extend(regions.into_iter().cloned());
        slot.reason = reason;
    }

    /// The recorded decisions, newest first.
    pub fn entries(&self) -> Vec<RecentDecision> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let (older, newer) = if ring.slots.len() < self.capacity {
            (&ring.slots[..], &[][..])
        } else {
            let (newer, older) = ring.slots.split_at(ring.next);
            (older, newer)
        };
        // `older` then `newer` is oldest-first; reverse for the page.
        older.iter().chain(newer).rev().cloned().collect()
    }

    /// Records dropped because the ring was busy.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The network a query was decided for: its ECS source network when it carries a valid one,
/// else the sender's address (the resolver's, for a resolver without ECS). Decodes the packet
/// again, so the query path calls it only for the decisions it samples into the ring.
pub fn decided_for(packet: &[u8], peer: IpAddr) -> IpNet {
    let subnet = parse_query(packet)
        .ok()
        .and_then(|query| query.edns?.client_subnet);
    subnet
        .and_then(|s| IpNet::new(s.address, s.source_prefix).ok())
        .unwrap_or_else(|| IpNet::from(peer))
}

fn truncate(client: IpNet) -> IpNet {
    let max = match client.addr() {
        IpAddr::V4(_) => MAX_V4_PREFIX,
        IpAddr::V6(_) => MAX_V6_PREFIX,
    };
    // The prefix is at most the family's maximum, so `new` cannot fail; keep the input if it did.
    IpNet::new(client.addr(), client.prefix_len().min(max))
        .map(|n| n.trunc())
        .unwrap_or(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ring: &RecentDecisions, n: u32) {
        let name: Arc<str> = Arc::from(format!("n{n}.example.test."));
        let region: Arc<str> = Arc::from("eu-west");
        ring.record(
            SystemTime::UNIX_EPOCH,
            "192.0.2.77/32".parse().unwrap(),
            &name,
            [&region],
            "geo-country",
        );
    }

    #[test]
    fn keeps_the_newest_entries_newest_first() {
        let ring = RecentDecisions::new(3);
        assert!(ring.entries().is_empty());
        for n in 0..2 {
            record(&ring, n);
        }
        let names = |r: &RecentDecisions| -> Vec<String> {
            r.entries().iter().map(|e| e.name.to_string()).collect()
        };
        assert_eq!(names(&ring), ["n1.example.test.", "n0.example.test."]);
        for n in 2..7 {
            record(&ring, n);
        }
        assert_eq!(
            names(&ring),
            ["n6.example.test.", "n5.example.test.", "n4.example.test."]
        );
    }

    #[test]
    fn clients_are_truncated_to_their_network() {
        let cases = [
            ("192.0.2.77/32", "192.0.2.0/24"),
            ("10.1.2.3/16", "10.1.0.0/16"),
            ("2001:db8:1:2:3::1/128", "2001:db8:1::/48"),
            ("2001:db8::/32", "2001:db8::/32"),
        ];
        for (given, kept) in cases {
            assert_eq!(
                truncate(given.parse().unwrap()).to_string(),
                kept,
                "{given}"
            );
        }
    }

    #[test]
    fn decisions_are_shown_for_the_ecs_network_not_the_resolver() {
        use hickory_proto::{
            op::{Edns, Message, Query},
            rr::{
                Name, RecordType,
                rdata::opt::{ClientSubnet, EdnsOption},
            },
        };
        let resolver: IpAddr = "192.0.2.53".parse().unwrap();
        let query = |subnet: Option<&str>| {
            let mut message = Message::query();
            message.add_query(Query::query(
                Name::from_ascii("api.example.test.").unwrap(),
                RecordType::A,
            ));
            if let Some(subnet) = subnet {
                let mut edns = Edns::new();
                let net: IpNet = subnet.parse().unwrap();
                edns.options_mut()
                    .insert(EdnsOption::Subnet(ClientSubnet::from(net)));
                message.set_edns(edns);
            }
            message.to_vec().unwrap()
        };
        let cases = [
            (query(Some("81.2.69.0/24")), "81.2.69.0/24"),
            (query(Some("2001:db8:aa00::/40")), "2001:db8:aa00::/40"),
            (query(None), "192.0.2.53/32"),
            (b"garbage".to_vec(), "192.0.2.53/32"),
        ];
        for (packet, shown) in cases {
            assert_eq!(decided_for(&packet, resolver).to_string(), shown);
        }
    }

    #[test]
    fn a_busy_ring_drops_instead_of_waiting() {
        let ring = RecentDecisions::new(4);
        let held = ring.ring.lock().unwrap();
        record(&ring, 1);
        drop(held);
        assert_eq!(ring.dropped(), 1);
        assert!(ring.entries().is_empty());
    }
}
