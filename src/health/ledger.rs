//! Which report of each region the DNS node may act on, and for how long (design §4).
//!
//! The ledger orders each sender's reports by its sequence number and ages them by the
//! *receiver's* clock only: a report is stamped with the `now` at which it was accepted and is
//! fresh for its validity window from then. Clocks of different hosts are never compared.
//!
//! Sequences are ordered per **session**, one session per authenticated connection. A relay
//! numbers its reports from 1 each time it starts, so a single "highest sequence ever" per
//! region would lock a restarted relay out until it caught up. Replays from the network are
//! already impossible inside a QUIC connection (packets are authenticated and numbered, and
//! 0-RTT is not accepted), so what remains to guard against is reordering between the streams
//! of one connection, and an old connection of the region still delivering after a newer one
//! was opened; the first is the sequence check, the second the session check.
//!
//! Pure: no IO, no clock; the caller passes `now` and the region taken from the sender's
//! certificate. It does not decide health (hysteresis, watermarks): it only says which report
//! is current.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::frame::{ReceivedReport, ReportFrame};

/// One authenticated connection of a region's relay. Only the newest session of a region may
/// deliver reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    region: Arc<str>,
    id: u64,
}

impl Session {
    /// The region of the certificate the connection was authenticated with.
    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Why a report was not applied. Each is counted in [`LedgerCounters`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportRejected {
    #[error("report claims region {claimed} on a connection certified for {certified}")]
    RegionMismatch { certified: String, claimed: String },
    #[error("report {sequence} of {region} replays the last accepted one")]
    Replayed { region: String, sequence: u64 },
    #[error("report {sequence} of {region} is older than the last accepted ({last})")]
    OutOfOrder {
        region: String,
        sequence: u64,
        last: u64,
    },
    #[error("report of {region} on session {session}, superseded by session {current}")]
    SupersededSession {
        region: String,
        session: u64,
        current: u64,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerCounters {
    pub accepted: u64,
    pub region_mismatch: u64,
    pub replayed: u64,
    pub out_of_order: u64,
    pub superseded_session: u64,
}

#[derive(Debug)]
struct RegionEntry {
    session: u64,
    /// Highest sequence accepted on `session`; 0 before its first report (relays start at 1).
    last_sequence: u64,
    current: Option<Accepted>,
}

#[derive(Debug)]
struct Accepted {
    report: ReceivedReport,
    received_at: Instant,
    valid_for: Duration,
}

#[derive(Debug)]
pub struct ReportLedger {
    /// Upper bound on any sender's validity claim: a relay cannot keep itself fresh for
    /// longer than the DNS operator allows by claiming a long window.
    max_validity: Duration,
    regions: HashMap<Arc<str>, RegionEntry>,
    next_session: u64,
    counters: LedgerCounters,
}

impl ReportLedger {
    pub fn new(max_validity: Duration) -> ReportLedger {
        ReportLedger {
            max_validity,
            regions: HashMap::new(),
            next_session: 1,
            counters: LedgerCounters::default(),
        }
    }

    /// Starts a session for a newly authenticated connection of `certified_region`; it
    /// supersedes the region's earlier sessions. The current report stays fresh until its
    /// window ends, so a reconnect does not make the region unknown.
    pub fn open_session(&mut self, certified_region: &str) -> Session {
        let id = self.next_session;
        self.next_session += 1;
        let region: Arc<str> = Arc::from(certified_region);
        let entry = self.regions.entry(region.clone()).or_insert(RegionEntry {
            session: id,
            last_sequence: 0,
            current: None,
        });
        entry.session = id;
        entry.last_sequence = 0;
        Session { region, id }
    }

    /// Applies `frame`, received on `session` at `now`, if it is the region's newest report.
    pub fn accept(
        &mut self,
        session: &Session,
        frame: ReportFrame,
        now: Instant,
    ) -> Result<(), ReportRejected> {
        let outcome = self.check_and_apply(session, frame, now);
        let counter = match &outcome {
            Ok(()) => &mut self.counters.accepted,
            Err(ReportRejected::RegionMismatch { .. }) => &mut self.counters.region_mismatch,
            Err(ReportRejected::Replayed { .. }) => &mut self.counters.replayed,
            Err(ReportRejected::OutOfOrder { .. }) => &mut self.counters.out_of_order,
            Err(ReportRejected::SupersededSession { .. }) => &mut self.counters.superseded_session,
        };
        *counter += 1;
        outcome
    }

    fn check_and_apply(
        &mut self,
        session: &Session,
        frame: ReportFrame,
        now: Instant,
    ) -> Result<(), ReportRejected> {
        let region = session.region();
        if frame.report.region != region {
            return Err(ReportRejected::RegionMismatch {
                certified: region.to_string(),
                claimed: frame.report.region,
            });
        }
        // A session only exists through `open_session`, which creates the entry.
        let Some(entry) = self.regions.get_mut(region) else {
            return Err(ReportRejected::SupersededSession {
                region: region.to_string(),
                session: session.id,
                current: 0,
            });
        };
        if entry.session != session.id {
            return Err(ReportRejected::SupersededSession {
                region: region.to_string(),
                session: session.id,
                current: entry.session,
            });
        }
        let sequence = frame.report.sequence;
        if sequence == entry.last_sequence {
            return Err(ReportRejected::Replayed {
                region: region.to_string(),
                sequence,
            });
        }
        if sequence < entry.last_sequence {
            return Err(ReportRejected::OutOfOrder {
                region: region.to_string(),
                sequence,
                last: entry.last_sequence,
            });
        }
        entry.last_sequence = sequence;
        entry.current = Some(Accepted {
            report: frame.report,
            received_at: now,
            valid_for: Duration::from_millis(u64::from(frame.validity_ms)).min(self.max_validity),
        });
        Ok(())
    }

    /// The region's current report if it is still within its validity window at `now`.
    pub fn fresh(&self, region: &str, now: Instant) -> Option<&ReceivedReport> {
        let current = self.regions.get(region)?.current.as_ref()?;
        (now.saturating_duration_since(current.received_at) < current.valid_for)
            .then_some(&current.report)
    }

    /// How long ago the region's current report was accepted, fresh or not (for status and
    /// metrics); `None` if it never sent one.
    pub fn age(&self, region: &str, now: Instant) -> Option<Duration> {
        let current = self.regions.get(region)?.current.as_ref()?;
        Some(now.saturating_duration_since(current.received_at))
    }

    pub fn counters(&self) -> LedgerCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::frame::{ReceivedRates, ReportedState};

    const MAX: Duration = Duration::from_secs(10);

    fn frame(region: &str, sequence: u64, validity_ms: u32) -> ReportFrame {
        ReportFrame {
            validity_ms,
            report: ReceivedReport {
                version: 1,
                region: region.into(),
                sequence,
                state: ReportedState::Ok,
                accept_new: true,
                saturation: 0.1,
                capacity_units: 4,
                headroom_units: 3.6,
                headroom_fraction: 0.9,
                models: Default::default(),
                rates: ReceivedRates::default(),
                client_rtt: vec![],
            },
        }
    }

    fn sequence_of(ledger: &ReportLedger, region: &str, now: Instant) -> Option<u64> {
        ledger.fresh(region, now).map(|r| r.sequence)
    }

    #[test]
    fn orders_by_sequence_within_a_session() {
        let t0 = Instant::now();
        let mut ledger = ReportLedger::new(MAX);
        let eu = ledger.open_session("eu-west");
        // (sequence, expected outcome, fresh sequence afterwards)
        let steps: [(u64, Result<(), ReportRejected>, u64); 5] = [
            (1, Ok(()), 1),
            (3, Ok(()), 3),
            (
                3,
                Err(ReportRejected::Replayed {
                    region: "eu-west".into(),
                    sequence: 3,
                }),
                3,
            ),
            (
                2,
                Err(ReportRejected::OutOfOrder {
                    region: "eu-west".into(),
                    sequence: 2,
                    last: 3,
                }),
                3,
            ),
            (4, Ok(()), 4),
        ];
        for (i, (sequence, want, fresh)) in steps.into_iter().enumerate() {
            let now = t0 + Duration::from_millis(i as u64 * 100);
            assert_eq!(
                ledger.accept(&eu, frame("eu-west", sequence, 3000), now),
                want,
                "step {i}"
            );
            assert_eq!(
                sequence_of(&ledger, "eu-west", now),
                Some(fresh),
                "step {i}"
            );
        }
        assert_eq!(
            ledger.counters(),
            LedgerCounters {
                accepted: 3,
                replayed: 1,
                out_of_order: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn ages_by_receive_time_and_caps_the_claimed_validity() {
        let t0 = Instant::now();
        let mut ledger = ReportLedger::new(MAX);
        let eu = ledger.open_session("eu-west");
        let us = ledger.open_session("us-east");
        ledger.accept(&eu, frame("eu-west", 1, 3000), t0).unwrap();
        // Claims a day; gets the ledger's maximum.
        ledger
            .accept(&us, frame("us-east", 1, 86_400_000), t0)
            .unwrap();
        let cases = [
            ("eu-west", Duration::ZERO, true),
            ("eu-west", Duration::from_millis(2999), true),
            ("eu-west", Duration::from_millis(3000), false),
            ("us-east", Duration::from_millis(9999), true),
            ("us-east", MAX, false),
            ("ap-south", Duration::ZERO, false),
        ];
        for (region, after, fresh) in cases {
            assert_eq!(
                ledger.fresh(region, t0 + after).is_some(),
                fresh,
                "{region} after {after:?}"
            );
        }
        assert_eq!(
            ledger.age("eu-west", t0 + Duration::from_secs(60)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(ledger.age("ap-south", t0), None);
    }

    #[test]
    fn the_body_cannot_claim_another_region() {
        let t0 = Instant::now();
        let mut ledger = ReportLedger::new(MAX);
        let eu = ledger.open_session("eu-west");
        assert_eq!(
            ledger.accept(&eu, frame("us-east", 1, 3000), t0),
            Err(ReportRejected::RegionMismatch {
                certified: "eu-west".into(),
                claimed: "us-east".into(),
            })
        );
        assert_eq!(ledger.fresh("us-east", t0), None);
        assert_eq!(ledger.fresh("eu-west", t0), None);
        assert_eq!(ledger.counters().region_mismatch, 1);
    }

    #[test]
    fn a_restarted_relay_starts_a_new_session_and_the_old_one_is_shut_out() {
        let t0 = Instant::now();
        let mut ledger = ReportLedger::new(MAX);
        let before = ledger.open_session("eu-west");
        ledger
            .accept(&before, frame("eu-west", 500, 3000), t0)
            .unwrap();

        let after = ledger.open_session("eu-west");
        // The previous report stays current until the new session delivers.
        assert_eq!(sequence_of(&ledger, "eu-west", t0), Some(500));
        ledger
            .accept(&after, frame("eu-west", 1, 3000), t0)
            .unwrap();
        assert_eq!(sequence_of(&ledger, "eu-west", t0), Some(1));

        assert_eq!(
            ledger.accept(&before, frame("eu-west", 501, 3000), t0),
            Err(ReportRejected::SupersededSession {
                region: "eu-west".into(),
                session: before.id(),
                current: after.id(),
            })
        );
        assert_eq!(sequence_of(&ledger, "eu-west", t0), Some(1));
        assert_eq!(ledger.counters().superseded_session, 1);
    }
}
