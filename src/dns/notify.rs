//! NOTIFY (RFC 1996): telling secondaries that a zone changed, so they transfer it now rather
//! than at their next SOA refresh.
//!
//! This module owns which secondaries hear of which change ([`announcements`], pure: a zone
//! whose SOA serial differs between two snapshots, or that is new, is announced to its
//! `[[zone]] notify` targets) and the sending (UDP, retried with doubling waits until the
//! secondary answers, a bounded number of times). It never changes what Meridian serves, and a
//! secondary that never answers costs one short-lived task, nothing else. A zone with a
//! `transfer_key` has its NOTIFYs signed with it (TSIG); the answer's signature is not
//! checked, as an answer only ends the retries. The reload loop
//! calls [`Notifier::after_reload`].

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query as Question, ResponseCode},
    rr::{Name, Record, RecordType},
};
use prometheus_client::{
    encoding::text::encode_registry, metrics::counter::Counter, registry::Registry,
};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use super::tsig::{self, Key};
use crate::{
    config::model::{TsigKey, ZoneSource},
    metrics::MetricsSource,
    zone::Zones,
};

/// How often and how patiently a NOTIFY is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Wait for an answer after the first send; doubled after each unanswered one.
    pub first_wait: Duration,
    /// Sends in all, at least 1.
    pub attempts: u32,
}

/// 1 + 2 + 4 + 8 + 16 s: a secondary that is restarting gets half a minute; one that is
/// gone costs five datagrams. (RFC 1996 §3.6 leaves the schedule to the primary; BIND sends
/// five over about 30 s too.)
pub const DEFAULT_RETRY: Retry = Retry {
    first_wait: Duration::from_secs(1),
    attempts: 5,
};

/// One NOTIFY to deliver: a zone's new SOA, for one secondary.
#[derive(Clone, Debug, PartialEq)]
pub struct Announcement {
    pub origin: Name,
    pub soa: Record,
    pub target: SocketAddr,
    /// The zone's `transfer_key`: the NOTIFY is signed with it (RFC 8945), as a secondary
    /// that transfers with a key usually accepts NOTIFY only signed with it.
    pub key: Option<TsigKey>,
}

/// The NOTIFYs a change from `before` to `after` calls for: each zone of `after` with
/// `notify` targets whose serial differs from the same zone in `before`, or that `before` did
/// not have. `sources` is `after`'s configuration of the zones.
pub fn announcements(before: &Zones, after: &Zones, sources: &[ZoneSource]) -> Vec<Announcement> {
    let mut out = Vec::new();
    for source in sources.iter().filter(|s| !s.notify.is_empty()) {
        let Some(zone) = exact(after, &source.origin) else {
            continue;
        };
        let changed = exact(before, &source.origin).is_none_or(|old| old.serial() != zone.serial());
        if !changed {
            continue;
        }
        for target in &source.notify {
            out.push(Announcement {
                origin: zone.origin().clone(),
                soa: zone.soa().clone(),
                target: *target,
                key: source.transfer_key.clone(),
            });
        }
    }
    out
}

fn exact<'z>(zones: &'z Zones, origin: &Name) -> Option<&'z crate::zone::Zone> {
    zones.find(origin).filter(|zone| zone.origin() == origin)
}

/// How one NOTIFY ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The secondary answered NOERROR after `attempts` sends.
    Acknowledged { attempts: u32 },
    /// The secondary answered with an error (e.g. REFUSED: it does not take NOTIFY from us).
    /// Not retried: it would answer the same.
    Rejected { rcode: ResponseCode },
    /// No answer to any send.
    Unanswered { attempts: u32 },
    /// No socket to send from.
    Failed { reason: String },
}

/// Sends NOTIFYs and counts what became of them.
pub struct Notifier {
    retry: Retry,
    next_id: AtomicU64,
    registry: Registry,
    sent: Counter,
    acknowledged: Counter,
    rejected: Counter,
    unanswered: Counter,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new(DEFAULT_RETRY)
    }
}

impl Notifier {
    pub fn new(retry: Retry) -> Notifier {
        let mut registry = Registry::with_prefix("meridian_dns_notify");
        let (sent, acknowledged, rejected, unanswered) = Default::default();
        registry.register(
            "sent",
            "NOTIFY messages sent, retries included",
            Counter::clone(&sent),
        );
        registry.register(
            "acknowledged",
            "NOTIFYs a secondary acknowledged",
            Counter::clone(&acknowledged),
        );
        registry.register(
            "rejected",
            "NOTIFYs a secondary answered with an error RCODE",
            Counter::clone(&rejected),
        );
        registry.register(
            "unanswered",
            "NOTIFYs given up on after every retry",
            Counter::clone(&unanswered),
        );
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Notifier {
            retry: Retry {
                attempts: retry.attempts.max(1),
                ..retry
            },
            next_id: AtomicU64::new(seed),
            registry,
            sent,
            acknowledged,
            rejected,
            unanswered,
        }
    }

    /// Announces what changed between two snapshots' zones, each NOTIFY on a task of its own
    /// (the caller does not wait). Must run inside a tokio runtime.
    pub fn after_reload(self: &Arc<Self>, before: &Zones, after: &Zones, sources: &[ZoneSource]) {
        for announcement in announcements(before, after, sources) {
            let notifier = self.clone();
            tokio::spawn(async move {
                notifier.deliver(&announcement).await;
            });
        }
    }

    /// Sends one NOTIFY until it is answered or the retries run out; logs and counts the end.
    pub async fn deliver(&self, announcement: &Announcement) -> Delivery {
        let delivery = self.send(announcement).await;
        let (zone, target, serial) = (
            &announcement.origin,
            announcement.target,
            match &announcement.soa.data {
                hickory_proto::rr::RData::SOA(soa) => soa.serial,
                _ => 0,
            },
        );
        match &delivery {
            Delivery::Acknowledged { attempts } => {
                self.acknowledged.inc();
                info!(%zone, %target, serial, attempts, "NOTIFY acknowledged");
            }
            Delivery::Rejected { rcode } => {
                self.rejected.inc();
                warn!(%zone, %target, serial, %rcode, "NOTIFY rejected by the secondary");
            }
            Delivery::Unanswered { attempts } => {
                self.unanswered.inc();
                warn!(%zone, %target, serial, attempts, "NOTIFY unanswered; the secondary will catch up at its SOA refresh");
            }
            Delivery::Failed { reason } => {
                self.unanswered.inc();
                warn!(%zone, %target, serial, %reason, "cannot send NOTIFY");
            }
        }
        delivery
    }

    async fn send(&self, announcement: &Announcement) -> Delivery {
        let local: SocketAddr = match announcement.target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = match UdpSocket::bind(local).await {
            Ok(socket) => socket,
            Err(error) => {
                return Delivery::Failed {
                    reason: error.to_string(),
                };
            }
        };
        // Connected: the kernel drops datagrams from anyone but the secondary.
        if let Err(error) = socket.connect(announcement.target).await {
            return Delivery::Failed {
                reason: error.to_string(),
            };
        }
        let id = self.id();
        let mut packet = match notify_message(id, announcement).to_vec() {
            Ok(packet) => packet,
            Err(error) => {
                return Delivery::Failed {
                    reason: error.to_string(),
                };
            }
        };
        if let Some(spec) = &announcement.key {
            // Read per NOTIFY, like the transfer side: a rotated secret needs no reload.
            match Key::load(spec) {
                // Retries resend the same signature: they all fall within its fudge.
                Ok(key) => {
                    tsig::sign_request(&key, &mut packet, tsig::unix_now());
                }
                Err(error) => {
                    return Delivery::Failed {
                        reason: error.to_string(),
                    };
                }
            }
        }
        let mut wait = self.retry.first_wait;
        let mut buffer = vec![0u8; 4096];
        for attempt in 1..=self.retry.attempts {
            self.sent.inc();
            if let Err(error) = socket.send(&packet).await {
                // e.g. ICMP unreachable from an earlier send: the secondary is not up yet.
                debug!(%error, target = %announcement.target, attempt, "NOTIFY send failed");
            }
            let deadline = Instant::now() + wait;
            // Bounded: each round consumes a datagram or ends at the deadline.
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match tokio::time::timeout(left, socket.recv(&mut buffer)).await {
                    Err(_) => break,
                    // ECONNREFUSED: nothing listens there (yet); wait out this round.
                    Ok(Err(_)) => {
                        tokio::time::sleep(left).await;
                        break;
                    }
                    Ok(Ok(length)) => {
                        if let Some(rcode) = answer_to(id, &buffer[..length]) {
                            return if rcode == ResponseCode::NoError {
                                Delivery::Acknowledged { attempts: attempt }
                            } else {
                                Delivery::Rejected { rcode }
                            };
                        }
                    }
                }
            }
            wait = wait.saturating_mul(2);
        }
        Delivery::Unanswered {
            attempts: self.retry.attempts,
        }
    }

    /// Message ids spread over the 16-bit space; not a secret (the socket is connected, and a
    /// forged answer could only end the retries early).
    fn id(&self) -> u16 {
        let state = self
            .next_id
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let mixed = (state ^ (state >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (mixed >> 48) as u16
    }
}

impl MetricsSource for Notifier {
    fn encode_into(&self, out: &mut String) {
        if let Err(error) = encode_registry(out, &self.registry) {
            debug!(%error, "cannot encode NOTIFY metrics");
        }
    }
}

/// RFC 1996 §3.7: opcode NOTIFY, AA, the zone's SOA as the question, and the new SOA in the
/// answer section (a hint the secondary may use to skip its SOA query).
pub fn notify_message(id: u16, announcement: &Announcement) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Notify);
    message.metadata.authoritative = true;
    message.add_query(Question::query(
        announcement.origin.clone(),
        RecordType::SOA,
    ));
    message.add_answer(announcement.soa.clone());
    message
}

/// The RCODE of `packet` if it answers NOTIFY `id`.
fn answer_to(id: u16, packet: &[u8]) -> Option<ResponseCode> {
    let message = Message::from_vec(packet).ok()?;
    let metadata = &message.metadata;
    (metadata.id == id
        && metadata.message_type == MessageType::Response
        && metadata.op_code == OpCode::Notify)
        .then_some(metadata.response_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::Zone;

    fn zone(origin: &str, serial: u32) -> Zone {
        let text = format!("@ 300 SOA ns. host. {serial} 2 3 4 5\n@ 300 NS ns.other.\n");
        Zone::parse(&Name::from_ascii(origin).unwrap(), &text, None).unwrap()
    }

    fn source(origin: &str, notify: &[&str]) -> ZoneSource {
        ZoneSource {
            origin: Name::from_ascii(origin).unwrap(),
            file: "unused".into(),
            transfer_to: Vec::new(),
            notify: notify.iter().map(|t| t.parse().unwrap()).collect(),
            transfer_key: None,
        }
    }

    #[test]
    fn only_zones_whose_serial_changed_or_that_are_new_are_announced() {
        let before = Zones::new(vec![zone("a.test.", 1), zone("b.test.", 7)]).unwrap();
        let after = Zones::new(vec![
            zone("a.test.", 2),
            zone("b.test.", 7),
            zone("c.test.", 1),
            zone("d.test.", 1),
        ])
        .unwrap();
        let sources = [
            source("a.test.", &["192.0.2.1:53", "[2001:db8::1]:5300"]),
            source("b.test.", &["192.0.2.1:53"]),
            source("c.test.", &["192.0.2.2:53"]),
            source("d.test.", &[]),
        ];
        let got: Vec<(String, u32, String)> = announcements(&before, &after, &sources)
            .into_iter()
            .map(|a| {
                let serial = match a.soa.data {
                    hickory_proto::rr::RData::SOA(soa) => soa.serial,
                    _ => 0,
                };
                (a.origin.to_string(), serial, a.target.to_string())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a.test.".into(), 2, "192.0.2.1:53".into()),
                ("a.test.".into(), 2, "[2001:db8::1]:5300".into()),
                ("c.test.".into(), 1, "192.0.2.2:53".into()),
            ]
        );
        assert!(announcements(&after, &after, &sources).is_empty());
    }

    #[test]
    fn only_a_notify_answer_with_our_id_counts() {
        let announcement = Announcement {
            origin: Name::from_ascii("a.test.").unwrap(),
            soa: zone("a.test.", 3).soa().clone(),
            target: "127.0.0.1:53".parse().unwrap(),
            key: None,
        };
        let query = notify_message(42, &announcement);
        assert_eq!(
            answer_to(42, &query.to_vec().unwrap()),
            None,
            "a query is no answer"
        );
        let mut answer = query.clone();
        answer.metadata.message_type = MessageType::Response;
        assert_eq!(
            answer_to(42, &answer.to_vec().unwrap()),
            Some(ResponseCode::NoError)
        );
        assert_eq!(answer_to(43, &answer.to_vec().unwrap()), None);
        answer.metadata.op_code = OpCode::Query;
        assert_eq!(answer_to(42, &answer.to_vec().unwrap()), None);
    }

    /// A secondary that answers the third send: the retries are what got it through.
    #[tokio::test]
    async fn unanswered_sends_are_retried_until_acknowledged() {
        let secondary = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = secondary.local_addr().unwrap();
        let answering = tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            for round in 1..=3 {
                let (length, from) = secondary.recv_from(&mut buffer).await.unwrap();
                if round < 3 {
                    continue; // "lost"
                }
                let mut answer = Message::from_vec(&buffer[..length]).unwrap();
                answer.metadata.message_type = MessageType::Response;
                secondary
                    .send_to(&answer.to_vec().unwrap(), from)
                    .await
                    .unwrap();
            }
        });
        let notifier = Notifier::new(Retry {
            first_wait: Duration::from_millis(50),
            attempts: 5,
        });
        let announcement = Announcement {
            origin: Name::from_ascii("a.test.").unwrap(),
            soa: zone("a.test.", 3).soa().clone(),
            target,
            key: None,
        };
        assert_eq!(
            notifier.deliver(&announcement).await,
            Delivery::Acknowledged { attempts: 3 }
        );
        answering.await.unwrap();
        let mut text = String::new();
        notifier.encode_into(&mut text);
        assert!(text.contains("meridian_dns_notify_sent_total 3"), "{text}");
        assert!(
            text.contains("meridian_dns_notify_acknowledged_total 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_silent_secondary_is_given_up_on_after_the_last_attempt() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let notifier = Notifier::new(Retry {
            first_wait: Duration::from_millis(10),
            attempts: 3,
        });
        let announcement = Announcement {
            origin: Name::from_ascii("a.test.").unwrap(),
            soa: zone("a.test.", 3).soa().clone(),
            target: silent.local_addr().unwrap(),
            key: None,
        };
        assert_eq!(
            notifier.deliver(&announcement).await,
            Delivery::Unanswered { attempts: 3 }
        );
    }
}
