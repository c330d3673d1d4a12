//! Response-rate limiting (RRL) of UDP responses, after BIND's design (as Knot and NSD do it).
//!
//! An authoritative server is a reflector: a spoofed-source flood of small queries becomes a
//! flood of larger responses at the victim whose address was spoofed. RRL caps how many
//! *identical* responses one client network gets per second, so the reflected flood is cut
//! while ordinary resolvers, which ask for many different names and rarely repeat one within
//! a TTL, never notice.
//!
//! This module owns the whole decision and nothing around it:
//! - [`classify`] reads a response the handler already encoded and says which bucket it is
//!   charged to ([`Account`]). As in BIND: a positive answer or NODATA is keyed by its question
//!   (name and type); an NXDOMAIN by the owner of its SOA (the zone apex), so a flood of random
//!   names in one zone is one bucket; a referral by the delegation point; every error
//!   (REFUSED, FORMERR, SERVFAIL, ...) by the client prefix alone.
//! - [`RateLimitTable`] keeps one token bucket per (client prefix, account) — the prefix is the
//!   client address cut to `ipv4_prefix` / `ipv6_prefix`, because spoofed floods vary the low
//!   bits — and returns a [`Verdict`]. Each bucket allows `responses_per_second` with a burst of
//!   `burst` on top; past that, every `slip`-th limited response is sent truncated (TC=1,
//!   nothing in it) so a real client behind a spoofed address retries over TCP, and the rest
//!   are dropped. The table holds at most `max_buckets` buckets and forgets the least recently
//!   used one first: the bucket a flood keeps hitting stays, idle ones (full again, so nothing
//!   is lost by forgetting them) go. Time is a parameter; nothing here reads a clock.
//! - [`truncate_for_slip`] turns a response into that minimal TC=1 response, in place.
//! - [`ResponseRateLimiter`] is the thin shared shell the UDP listener calls: the table behind a
//!   mutex, plus the counters it exports as a [`MetricsSource`].
//!
//! It must never be applied to TCP: a TCP client proved its address with the handshake, and
//! TCP is where slipped clients are sent. Only the UDP path calls it.

use std::{
    collections::HashMap,
    fmt::Write as _,
    hash::{BuildHasher, Hash, Hasher, RandomState},
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode_registry},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{config::model::RateLimit, metrics::MetricsSource};

/// DNS header length.
const HEADER_LEN: usize = 12;
/// Header flag bits (second and third octets, big-endian).
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const RCODE_MASK: u16 = 0x000f;
const RCODE_NOERROR: u16 = 0;
const RCODE_NXDOMAIN: u16 = 3;
const TYPE_SOA: u16 = 6;
const TYPE_NS: u16 = 2;
/// A name is at most 255 octets (RFC 1035 §3.1), so no valid name needs more labels or
/// compression hops than this; it bounds the walk over hostile bytes.
const MAX_NAME_STEPS: usize = 128;
/// Sentinel for "no neighbour" in the bucket list.
const NIL: u32 = u32::MAX;

/// What to do with one UDP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: send it as it is.
    Send,
    /// Limited, and this one slips through: send it truncated ([`truncate_for_slip`]).
    Slip,
    /// Limited: send nothing.
    Drop,
}

/// The class of a response; distinct classes never share a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseKind {
    /// NOERROR with records in the answer section.
    Answer,
    /// NOERROR, authoritative, empty answer.
    NoData,
    /// Name does not exist: charged to the zone, not the name.
    NxDomain,
    /// NOERROR, not authoritative, empty answer: a delegation, charged to its NS owner.
    Referral,
    /// Any other RCODE, or a response we cannot read: charged to the client prefix only.
    Error,
}

impl ResponseKind {
    pub const ALL: [ResponseKind; 5] = [
        ResponseKind::Answer,
        ResponseKind::NoData,
        ResponseKind::NxDomain,
        ResponseKind::Referral,
        ResponseKind::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResponseKind::Answer => "answer",
            ResponseKind::NoData => "nodata",
            ResponseKind::NxDomain => "nxdomain",
            ResponseKind::Referral => "referral",
            ResponseKind::Error => "error",
        }
    }
}

impl EncodeLabelValue for ResponseKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Which bucket a response is charged to (besides the client prefix).
#[derive(Clone, Copy, Debug)]
pub struct Account<'a> {
    pub kind: ResponseKind,
    /// The name the response is about: the question for answers and NODATA, the SOA owner for
    /// NXDOMAIN, the NS owner for referrals; `None` for errors.
    name: Option<WireName<'a>>,
    /// The question type for answers and NODATA (an A and an AAAA answer differ); 0 otherwise.
    qtype: u16,
}

/// Classifies an encoded response. Never fails: what cannot be read is an [`ResponseKind::Error`].
pub fn classify(response: &[u8]) -> Account<'_> {
    classify_parts(response).unwrap_or(Account {
        kind: ResponseKind::Error,
        name: None,
        qtype: 0,
    })
}

fn classify_parts(response: &[u8]) -> Option<Account<'_>> {
    let header = Header::read(response)?;
    let error = Account {
        kind: ResponseKind::Error,
        name: None,
        qtype: 0,
    };
    let rcode = header.flags & RCODE_MASK;
    if header.qdcount != 1 || (rcode != RCODE_NOERROR && rcode != RCODE_NXDOMAIN) {
        return Some(error);
    }
    let question = WireName {
        message: response,
        start: HEADER_LEN,
    };
    let after_name = skip_name(response, HEADER_LEN)?;
    let qtype = read_u16(response, after_name)?;
    let mut at = after_name + 4;
    if rcode == RCODE_NOERROR && header.ancount > 0 {
        return Some(Account {
            kind: ResponseKind::Answer,
            name: Some(question),
            qtype,
        });
    }
    if rcode == RCODE_NOERROR && header.flags & FLAG_AA != 0 {
        return Some(Account {
            kind: ResponseKind::NoData,
            name: Some(question),
            qtype,
        });
    }
    // NXDOMAIN (possibly after a CNAME chain) or a referral: the authority section names the
    // zone or the delegation point. Skip the answers to reach it.
    for _ in 0..header.ancount {
        at = skip_record(response, at)?.next;
    }
    let wanted = if rcode == RCODE_NXDOMAIN {
        TYPE_SOA
    } else {
        TYPE_NS
    };
    let mut owner = None;
    for _ in 0..header.nscount {
        let record = skip_record(response, at)?;
        if record.rtype == wanted {
            owner = Some(WireName {
                message: response,
                start: at,
            });
            break;
        }
        at = record.next;
    }
    let kind = if rcode == RCODE_NXDOMAIN {
        ResponseKind::NxDomain
    } else if owner.is_some() {
        ResponseKind::Referral
    } else {
        // Not authoritative, nothing answered, no delegation: not one of ours to tell apart.
        return Some(error);
    };
    Some(Account {
        kind,
        // An NXDOMAIN without an SOA (never sent by our handler) falls back to its question.
        name: Some(owner.unwrap_or(question)),
        qtype: 0,
    })
}

/// Rewrites `response` as a minimal truncated response: the same header (ID, opcode, RCODE)
/// with TC=1, the question if it can be found, and no records (no OPT either: the client will
/// ask again over TCP anyway). Returns `false` when the bytes are not a readable response, in
/// which case the caller should drop rather than send.
pub fn truncate_for_slip(response: &mut Vec<u8>) -> bool {
    let Some(header) = Header::read(response) else {
        return false;
    };
    let question_end = if header.qdcount == 1 {
        skip_name(response, HEADER_LEN)
            .map(|end| end + 4)
            .filter(|&end| end <= response.len())
    } else {
        None
    };
    let flags = header.flags | FLAG_TC;
    response[2..4].copy_from_slice(&flags.to_be_bytes());
    let qdcount: u16 = if question_end.is_some() { 1 } else { 0 };
    response[4..6].copy_from_slice(&qdcount.to_be_bytes());
    response[6..HEADER_LEN].fill(0);
    response.truncate(question_end.unwrap_or(HEADER_LEN));
    true
}

/// The fixed header of a response.
struct Header {
    flags: u16,
    qdcount: u16,
    ancount: u16,
    nscount: u16,
}

impl Header {
    fn read(message: &[u8]) -> Option<Header> {
        let flags = read_u16(message, 2)?;
        if message.len() < HEADER_LEN || flags & FLAG_QR == 0 {
            return None;
        }
        Some(Header {
            flags,
            qdcount: read_u16(message, 4)?,
            ancount: read_u16(message, 6)?,
            nscount: read_u16(message, 8)?,
        })
    }
}

fn read_u16(message: &[u8], at: usize) -> Option<u16> {
    let bytes = message.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// Offset just past the name at `at` (a compression pointer ends it), without following
/// pointers.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..MAX_NAME_STEPS {
        let length = *message.get(at)?;
        match length {
            0 => return Some(at + 1),
            1..=63 => at += 1 + usize::from(length),
            0xc0..=0xff => return message.get(at + 1).map(|_| at + 2),
            _ => return None, // 0x40 and 0x80 label types are obsolete or unassigned
        }
    }
    None
}

struct SkippedRecord {
    rtype: u16,
    next: usize,
}

fn skip_record(message: &[u8], at: usize) -> Option<SkippedRecord> {
    let after_name = skip_name(message, at)?;
    let rtype = read_u16(message, after_name)?;
    let rdlength = read_u16(message, after_name + 8)?;
    let next = after_name + 10 + usize::from(rdlength);
    (next <= message.len()).then_some(SkippedRecord { rtype, next })
}

/// A name inside a message, read lazily: compression pointers are followed when it is hashed.
#[derive(Clone, Copy, Debug)]
struct WireName<'a> {
    message: &'a [u8],
    start: usize,
}

impl WireName<'_> {
    /// Calls `label` with each label in order, as it is on the wire; `None` if the name is
    /// malformed (out of bounds, too long, a pointer loop).
    fn for_each_label(&self, mut label: impl FnMut(&[u8])) -> Option<()> {
        let mut at = self.start;
        let mut total = 0usize;
        for _ in 0..MAX_NAME_STEPS {
            let length = *self.message.get(at)?;
            match length {
                0 => return Some(()),
                1..=63 => {
                    let bytes = self.message.get(at + 1..at + 1 + usize::from(length))?;
                    total += bytes.len() + 1;
                    if total > 255 {
                        return None;
                    }
                    label(bytes);
                    at += 1 + bytes.len();
                }
                0xc0..=0xff => {
                    let low = *self.message.get(at + 1)?;
                    at = usize::from(u16::from_be_bytes([length & 0x3f, low]));
                }
                _ => return None,
            }
        }
        None
    }

    /// Feeds the name, case-folded, into `hasher`: `WWW.example` and `www.Example` are one name.
    fn hash_into(&self, hasher: &mut impl Hasher) -> Option<()> {
        self.for_each_label(|label| {
            hasher.write_u8(label.len() as u8);
            for byte in label {
                hasher.write_u8(byte.to_ascii_lowercase());
            }
        })?;
        hasher.write_u8(0);
        Some(())
    }
}

/// The client network a bucket is kept for: the address cut to the configured prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientPrefix {
    network: u128,
    length: u8,
    ipv6: bool,
}

impl ClientPrefix {
    pub fn of(address: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> ClientPrefix {
        // A v4-mapped v6 source is the v4 client it stands for.
        match address.to_canonical() {
            IpAddr::V4(v4) => {
                let length = ipv4_prefix.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(length)).unwrap_or(0);
                ClientPrefix {
                    network: u128::from(u32::from(v4) & mask),
                    length,
                    ipv6: false,
                }
            }
            IpAddr::V6(v6) => {
                let length = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0);
                ClientPrefix {
                    network: u128::from(v6) & mask,
                    length,
                    ipv6: true,
                }
            }
        }
    }
}

/// The rate parameters of one check, derived from [`RateLimit`].
#[derive(Clone, Copy, Debug)]
struct Rate {
    /// Time one response costs: 1 s / `responses_per_second`.
    interval: Duration,
    /// How far ahead of `now` a bucket may have spent: (rate + burst − 1) intervals.
    tolerance: Duration,
    slip: u32,
}

impl Rate {
    fn of(config: &RateLimit) -> Rate {
        // A rate of 0 is refused by validation; if one gets here it means "1 per second"
        // rather than a division by zero.
        let per_second = config.responses_per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        let capacity = per_second.saturating_add(config.burst);
        Rate {
            interval,
            tolerance: interval.checked_mul(capacity - 1).unwrap_or(Duration::MAX),
            slip: config.slip,
        }
    }
}

/// One (client prefix, account) bucket, as a generic cell rate algorithm: instead of a token
/// count and a refill time it keeps the one instant at which the bucket would be full again,
/// which is exact in integer time and needs no refill step.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    key: u64,
    /// Theoretical arrival time: the bucket is full when this is not after `now`.
    full_at: Instant,
    /// Limited responses so far, for slip.
    limited: u32,
    /// Neighbours in recency order (`NIL` at either end).
    newer: u32,
    older: u32,
}

/// The pure core: every bucket, bounded, in recency order. See the module docs.
pub struct RateLimitTable {
    /// Keyed per table (SipHash with a random key), so nobody can aim for hash collisions.
    hasher: RandomState,
    index: HashMap<u64, u32>,
    buckets: Vec<Bucket>,
    newest: u32,
    oldest: u32,
    evicted: u64,
}

impl Default for RateLimitTable {
    fn default() -> Self {
        RateLimitTable::new()
    }
}

impl RateLimitTable {
    pub fn new() -> RateLimitTable {
        RateLimitTable {
            hasher: RandomState::new(),
            index: HashMap::new(),
            buckets: Vec::new(),
            newest: NIL,
            oldest: NIL,
            evicted: 0,
        }
    }

    /// Buckets held now (never more than the largest `max_buckets` checked with since the
    /// last insert).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Buckets forgotten to stay within `max_buckets`, since the table was made.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Charges one response for `client` to its bucket and says what to do with it.
    pub fn check(
        &mut self,
        config: &RateLimit,
        client: IpAddr,
        account: &Account<'_>,
        now: Instant,
    ) -> Verdict {
        let prefix = ClientPrefix::of(client, config.ipv4_prefix, config.ipv6_prefix);
        let key = self.key(prefix, account);
        let rate = Rate::of(config);
        let slot = match self.index.get(&key) {
            Some(&slot) => {
                self.touch(slot);
                slot
            }
            None => self.insert(key, now, config.max_buckets),
        };
        let bucket = &mut self.buckets[slot as usize];
        let start = bucket.full_at.max(now);
        if start.saturating_duration_since(now) <= rate.tolerance {
            bucket.full_at = start.checked_add(rate.interval).unwrap_or(start);
            return Verdict::Send;
        }
        bucket.limited = bucket.limited.wrapping_add(1);
        if rate.slip != 0 && bucket.limited.is_multiple_of(rate.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }

    fn key(&self, prefix: ClientPrefix, account: &Account<'_>) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        prefix.hash(&mut hasher);
        account.kind.hash(&mut hasher);
        account.qtype.hash(&mut hasher);
        // A malformed name is hashed as far as it goes: still one bucket per bytes sent.
        if let Some(name) = account.name
            && name.hash_into(&mut hasher).is_none()
        {
            hasher.write_u8(0xff);
        }
        hasher.finish()
    }

    fn insert(&mut self, key: u64, now: Instant, max_buckets: usize) -> u32 {
        let max = max_buckets.clamp(1, NIL as usize - 1);
        while self.buckets.len() >= max && self.oldest != NIL {
            self.remove(self.oldest);
            self.evicted += 1;
        }
        let slot = self.buckets.len() as u32;
        self.buckets.push(Bucket {
            key,
            full_at: now,
            limited: 0,
            newer: NIL,
            older: NIL,
        });
        self.index.insert(key, slot);
        self.link_newest(slot);
        slot
    }

    fn touch(&mut self, slot: u32) {
        if self.newest != slot {
            self.unlink(slot);
            self.link_newest(slot);
        }
    }

    fn link_newest(&mut self, slot: u32) {
        let previous = self.newest;
        {
            let bucket = &mut self.buckets[slot as usize];
            bucket.newer = NIL;
            bucket.older = previous;
        }
        if previous != NIL {
            self.buckets[previous as usize].newer = slot;
        }
        self.newest = slot;
        if self.oldest == NIL {
            self.oldest = slot;
        }
    }

    fn unlink(&mut self, slot: u32) {
        let Bucket { newer, older, .. } = self.buckets[slot as usize];
        match newer {
            NIL => self.newest = older,
            n => self.buckets[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.buckets[o as usize].newer = newer,
        }
    }

    /// Removes a bucket, keeping `buckets` dense: the last one moves into its slot.
    fn remove(&mut self, slot: u32) {
        self.unlink(slot);
        self.index.remove(&self.buckets[slot as usize].key);
        let last = (self.buckets.len() - 1) as u32;
        self.buckets.swap_remove(slot as usize);
        if slot == last {
            return;
        }
        let Bucket {
            key, newer, older, ..
        } = self.buckets[slot as usize];
        self.index.insert(key, slot);
        match newer {
            NIL => self.newest = slot,
            n => self.buckets[n as usize].older = slot,
        }
        match older {
            NIL => self.oldest = slot,
            o => self.buckets[o as usize].newer = slot,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerdictLabels {
    kind: ResponseKind,
}

/// The shell the UDP listeners share: the table behind a mutex (held for a hash lookup and a
/// few comparisons), and the counters.
pub struct ResponseRateLimiter {
    table: Mutex<RateLimitTable>,
    registry: Registry,
    checked: Counter,
    limited: Family<VerdictLabels, Counter>,
    slipped: Counter,
    dropped: Counter,
    buckets: Gauge,
    evicted: Counter,
}

impl Default for ResponseRateLimiter {
    fn default() -> Self {
        ResponseRateLimiter::new()
    }
}

impl ResponseRateLimiter {
    pub fn new() -> ResponseRateLimiter {
        let mut registry = Registry::with_prefix("meridian_dns_rrl");
        let checked = Counter::default();
        let limited = Family::<VerdictLabels, Counter>::default();
        let slipped = Counter::default();
        let dropped = Counter::default();
        let buckets = Gauge::default();
        let evicted = Counter::default();
        registry.register(
            "checked",
            "UDP responses the rate limiter decided on",
            checked.clone(),
        );
        registry.register(
            "limited",
            "UDP responses over their rate limit (slipped + dropped), by response kind",
            limited.clone(),
        );
        registry.register(
            "slipped",
            "Rate-limited UDP responses sent truncated (TC=1) so the client retries over TCP",
            slipped.clone(),
        );
        registry.register(
            "dropped",
            "Rate-limited UDP responses not sent",
            dropped.clone(),
        );
        registry.register(
            "buckets",
            "Rate-limit buckets held (bounded by rrl.max_buckets)",
            buckets.clone(),
        );
        registry.register(
            "evicted",
            "Rate-limit buckets forgotten, least recently used first, to stay within max_buckets",
            evicted.clone(),
        );
        ResponseRateLimiter {
            table: Mutex::new(RateLimitTable::new()),
            registry,
            checked,
            limited,
            slipped,
            dropped,
            buckets,
            evicted,
        }
    }

    /// Decides on one encoded UDP `response` to `client`. Call it after the handler answered
    /// and before sending; on [`Verdict::Slip`] send what [`truncate_for_slip`] makes of the
    /// response, on [`Verdict::Drop`] send nothing.
    pub fn check(
        &self,
        config: &RateLimit,
        client: IpAddr,
        response: &[u8],
        now: Instant,
    ) -> Verdict {
        let account = classify(response);
        let (verdict, evicted) = {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            let before = table.evicted();
            let verdict = table.check(config, client, &account, now);
            (verdict, table.evicted() - before)
        };
        self.checked.inc();
        if evicted > 0 {
            self.evicted.inc_by(evicted);
        }
        match verdict {
            Verdict::Send => {}
            Verdict::Slip => {
                self.limited
                    .get_or_create(&VerdictLabels { kind: account.kind })
                    .inc();
                self.slipped.inc();
            }
            Verdict::Drop => {
                self.limited
                    .get_or_create(&VerdictLabels { kind: account.kind })
                    .inc();
                self.dropped.inc();
            }
        }
        verdict
    }

    /// Buckets held now.
    pub fn buckets(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The counters so far; for tests and the status page.
    pub fn counts(&self) -> RrlCounts {
        RrlCounts {
            checked: self.checked.get(),
            limited: ResponseKind::ALL
                .into_iter()
                .map(|kind| self.limited.get_or_create(&VerdictLabels { kind }).get())
                .sum(),
            slipped: self.slipped.get(),
            dropped: self.dropped.get(),
        }
    }
}

/// What the limiter did so far (`limited` = `slipped` + `dropped`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RrlCounts {
    pub checked: u64,
    pub limited: u64,
    pub slipped: u64,
    pub dropped: u64,
}

impl MetricsSource for ResponseRateLimiter {
    fn encode_into(&self, out: &mut String) {
        self.buckets.set(self.buckets() as i64);
        if let Err(error) = encode_registry(out, &self.registry) {
            tracing::debug!(%error, "cannot encode rate-limit metrics");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        str::FromStr,
    };

    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
        rr::{Name, RData, Record, RecordType, rdata},
    };
    use proptest::prelude::*;

    use super::*;

    fn config(rate: u32, burst: u32, slip: u32) -> RateLimit {
        RateLimit {
            responses_per_second: rate,
            burst,
            slip,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            max_buckets: 1000,
        }
    }

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    /// What the authority section of a test response holds.
    enum Authority {
        None,
        Soa(&'static str),
        Ns(&'static str),
    }

    /// A response to `qname`/`qtype` as our handler would encode it.
    fn response(
        qname: &str,
        qtype: RecordType,
        rcode: ResponseCode,
        authoritative: bool,
        answers: usize,
        authority: Authority,
    ) -> Vec<u8> {
        let mut message = Message::new(0xbeef, MessageType::Response, OpCode::Query);
        message.metadata.authoritative = authoritative;
        message.metadata.response_code = rcode;
        message.add_query(Query::query(name(qname), qtype));
        for i in 0..answers {
            message.add_answer(Record::from_rdata(
                name(qname),
                30,
                RData::A(rdata::A(Ipv4Addr::new(192, 0, 2, i as u8))),
            ));
        }
        match authority {
            Authority::None => {}
            Authority::Soa(zone) => {
                message.add_authority(Record::from_rdata(
                    name(zone),
                    300,
                    RData::SOA(rdata::SOA::new(
                        name("ns1.example.test."),
                        name("hostmaster.example.test."),
                        1,
                        3600,
                        600,
                        86400,
                        300,
                    )),
                ));
            }
            Authority::Ns(owner) => {
                message.add_authority(Record::from_rdata(
                    name(owner),
                    300,
                    RData::NS(rdata::NS(name("ns.elsewhere.test."))),
                ));
            }
        }
        message.set_edns(Edns::new());
        message.to_vec().unwrap()
    }

    fn answer(qname: &str) -> Vec<u8> {
        response(
            qname,
            RecordType::A,
            ResponseCode::NoError,
            true,
            1,
            Authority::None,
        )
    }

    fn nxdomain(qname: &str) -> Vec<u8> {
        response(
            qname,
            RecordType::A,
            ResponseCode::NXDomain,
            true,
            0,
            Authority::Soa("example.test."),
        )
    }

    fn client(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The bucket key one table gives a response from `client`.
    fn key_of(table: &RateLimitTable, from: &str, response: &[u8]) -> u64 {
        table.key(ClientPrefix::of(client(from), 24, 56), &classify(response))
    }

    #[test]
    fn responses_are_charged_as_bind_charges_them() {
        let table = RateLimitTable::new();
        let key = |r: &[u8]| key_of(&table, "192.0.2.1", r);
        let refused = |q: &str| {
            response(
                q,
                RecordType::A,
                ResponseCode::Refused,
                false,
                0,
                Authority::None,
            )
        };
        let referral = |q: &str| {
            response(
                q,
                RecordType::A,
                ResponseCode::NoError,
                false,
                0,
                Authority::Ns("child.example.test."),
            )
        };
        let nodata = |q: &str, t| {
            response(
                q,
                t,
                ResponseCode::NoError,
                true,
                0,
                Authority::Soa("example.test."),
            )
        };
        let cases: [(&str, Vec<u8>, ResponseKind); 6] = [
            ("answer", answer("www.example.test."), ResponseKind::Answer),
            (
                "nodata",
                nodata("www.example.test.", RecordType::AAAA),
                ResponseKind::NoData,
            ),
            (
                "nxdomain",
                nxdomain("nope.example.test."),
                ResponseKind::NxDomain,
            ),
            (
                "referral",
                referral("a.child.example.test."),
                ResponseKind::Referral,
            ),
            ("refused", refused("elsewhere.test."), ResponseKind::Error),
            ("garbage", vec![0xbe, 0xef, 0x80], ResponseKind::Error),
        ];
        for (label, bytes, kind) in &cases {
            assert_eq!(classify(bytes).kind, *kind, "{label}");
        }
        // One answer, whatever the case of the question.
        assert_eq!(
            key(&answer("www.example.test.")),
            key(&answer("WWW.Example.TEST."))
        );
        // Different answers, different buckets; A and AAAA NODATA differ.
        assert_ne!(
            key(&answer("www.example.test.")),
            key(&answer("api.example.test."))
        );
        assert_ne!(
            key(&nodata("www.example.test.", RecordType::A)),
            key(&nodata("www.example.test.", RecordType::AAAA))
        );
        // Random names in one zone are one NXDOMAIN bucket; below one delegation, one referral.
        assert_eq!(
            key(&nxdomain("x1.example.test.")),
            key(&nxdomain("y2.z.example.test."))
        );
        assert_eq!(
            key(&referral("a.child.example.test.")),
            key(&referral("b.c.child.example.test."))
        );
        // Every error to one client prefix is one bucket.
        assert_eq!(key(&refused("a.test.")), key(&refused("b.other.")));
        // ... but an NXDOMAIN is not an answer for the zone apex.
        assert_ne!(
            key(&nxdomain("x.example.test.")),
            key(&answer("example.test."))
        );
    }

    #[test]
    fn a_bucket_allows_rate_plus_burst_then_slips_every_nth() {
        let mut table = RateLimitTable::new();
        let config = config(10, 5, 2);
        let bytes = answer("www.example.test.");
        let account = classify(&bytes);
        let start = Instant::now();
        let verdicts: Vec<Verdict> = (0..21)
            .map(|_| table.check(&config, client("192.0.2.7"), &account, start))
            .collect();
        assert!(
            verdicts[..15].iter().all(|v| *v == Verdict::Send),
            "{verdicts:?}"
        );
        assert_eq!(
            verdicts[15..],
            [
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip
            ]
        );
        // A tenth of a second buys one response back, not more.
        let later = start + Duration::from_millis(100);
        assert_eq!(
            table.check(&config, client("192.0.2.7"), &account, later),
            Verdict::Send
        );
        assert_ne!(
            table.check(&config, client("192.0.2.7"), &account, later),
            Verdict::Send
        );
    }

    #[test]
    fn slip_zero_drops_all_and_slip_one_slips_all() {
        let bytes = answer("www.example.test.");
        let account = classify(&bytes);
        let now = Instant::now();
        for (slip, expected) in [(0, Verdict::Drop), (1, Verdict::Slip)] {
            let mut table = RateLimitTable::new();
            let config = config(1, 0, slip);
            assert_eq!(
                table.check(&config, client("192.0.2.7"), &account, now),
                Verdict::Send
            );
            for _ in 0..5 {
                assert_eq!(
                    table.check(&config, client("192.0.2.7"), &account, now),
                    expected
                );
            }
        }
    }

    #[test]
    fn clients_are_grouped_by_prefix() {
        let same = [
            ("192.0.2.1", "192.0.2.254"),
            ("::ffff:192.0.2.1", "192.0.2.9"),
            ("2001:db8:0:ff::1", "2001:db8:0:1::2"),
        ];
        let different = [
            ("192.0.2.1", "192.0.3.1"),
            ("2001:db8:0:100::1", "2001:db8::1"),
        ];
        let v4 = |a: &str| ClientPrefix::of(client(a), 24, 56);
        for (a, b) in same {
            assert_eq!(v4(a), v4(b), "{a} {b}");
        }
        for (a, b) in different {
            assert_ne!(v4(a), v4(b), "{a} {b}");
        }
        // Full-length and zero-length prefixes are accepted, and out-of-range ones clamped.
        let ip = client("192.0.2.1");
        assert_eq!(
            ClientPrefix::of(ip, 0, 0),
            ClientPrefix::of(client("10.0.0.1"), 0, 0)
        );
        assert_eq!(ClientPrefix::of(ip, 32, 0), ClientPrefix::of(ip, 99, 0));
        assert_ne!(
            ClientPrefix::of(ip, 32, 128),
            ClientPrefix::of(client("192.0.2.2"), 32, 128)
        );
        let v6 = client("2001:db8::1");
        assert_eq!(ClientPrefix::of(v6, 0, 128), ClientPrefix::of(v6, 0, 200));
    }

    #[test]
    fn the_least_recently_used_bucket_is_forgotten_first() {
        let mut table = RateLimitTable::new();
        let mut config = config(1, 0, 0);
        config.max_buckets = 3;
        let now = Instant::now();
        let names = [
            "a.example.test.",
            "b.example.test.",
            "c.example.test.",
            "d.example.test.",
        ];
        let responses: Vec<Vec<u8>> = names.iter().map(|n| answer(n)).collect();
        let check = |table: &mut RateLimitTable, i: usize| {
            table.check(&config, client("192.0.2.1"), &classify(&responses[i]), now)
        };
        assert_eq!(check(&mut table, 0), Verdict::Send); // a: spent
        assert_eq!(check(&mut table, 1), Verdict::Send); // b
        assert_eq!(check(&mut table, 2), Verdict::Send); // c
        assert_eq!(check(&mut table, 0), Verdict::Drop); // a again: now the newest
        assert_eq!(check(&mut table, 3), Verdict::Send); // d evicts b, the oldest
        assert_eq!((table.len(), table.evicted()), (3, 1));
        assert_eq!(check(&mut table, 0), Verdict::Drop, "a's state survived");
        assert_eq!(
            check(&mut table, 1),
            Verdict::Send,
            "b was forgotten (evicts c)"
        );
        assert_eq!(check(&mut table, 3), Verdict::Drop, "d's state survived");

        // A smaller limit (a reload) is enforced at the next new bucket.
        config.max_buckets = 1;
        let e = answer("e.example.test.");
        table.check(&config, client("192.0.2.1"), &classify(&e), now);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn slipped_responses_are_minimal_truncated_responses() {
        let nx = nxdomain("nope.example.test.");
        let big = response(
            "www.example.test.",
            RecordType::A,
            ResponseCode::NoError,
            true,
            20,
            Authority::Soa("example.test."),
        );
        for original in [answer("www.example.test."), nx, big] {
            let mut slipped = original.clone();
            assert!(truncate_for_slip(&mut slipped));
            let parsed = Message::from_vec(&slipped).unwrap();
            let before = Message::from_vec(&original).unwrap();
            assert_eq!(parsed.metadata.id, before.metadata.id);
            assert_eq!(parsed.metadata.message_type, MessageType::Response);
            assert!(parsed.metadata.truncation);
            assert_eq!(parsed.metadata.response_code, before.metadata.response_code);
            assert_eq!(parsed.queries, before.queries);
            assert!(parsed.answers.is_empty() && parsed.authorities.is_empty());
            assert!(parsed.additionals.is_empty() && parsed.edns.is_none());
            assert!(slipped.len() < original.len());
        }
        // A header without a question (FORMERR to a packet without one) stays a header.
        let mut formerr = vec![0x12, 0x34, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 41];
        assert!(truncate_for_slip(&mut formerr));
        assert_eq!(formerr, [0x12, 0x34, 0x82, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Not a response, or not even a header: nothing to send.
        for mut bad in [
            vec![0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0],
            vec![0x80; 11],
        ] {
            assert!(!truncate_for_slip(&mut bad));
        }
    }

    #[test]
    fn the_shell_counts_and_exports() {
        let limiter = ResponseRateLimiter::new();
        let config = config(1, 0, 2);
        let now = Instant::now();
        let bytes = nxdomain("x.example.test.");
        let verdicts: Vec<Verdict> = (0..5)
            .map(|_| limiter.check(&config, client("192.0.2.1"), &bytes, now))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Send,
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip
            ]
        );
        assert_eq!(
            limiter.counts(),
            RrlCounts {
                checked: 5,
                limited: 4,
                slipped: 2,
                dropped: 2
            }
        );
        let mut text = String::new();
        limiter.encode_into(&mut text);
        for line in [
            "meridian_dns_rrl_checked_total 5",
            "meridian_dns_rrl_limited_total{kind=\"nxdomain\"} 4",
            "meridian_dns_rrl_slipped_total 2",
            "meridian_dns_rrl_dropped_total 2",
            "meridian_dns_rrl_buckets 1",
            "meridian_dns_rrl_evicted_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(!text.contains("# EOF"));
    }

    /// A query name among a few, and a client among many.
    fn any_v4() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A client asking no faster than the rate is never limited, whatever a flood from
        /// other networks does to the same answer meanwhile.
        #[test]
        fn a_client_under_the_rate_is_never_limited(
            rate in 1u32..=500,
            burst in 0u32..=20,
            slack in proptest::collection::vec(0u64..3_000_000, 1..200),
            flood in proptest::collection::vec((any_v4(), 0u64..1_000_000), 0..200),
        ) {
            let mut table = RateLimitTable::new();
            let config = config(rate, burst, 2);
            let bytes = answer("api.example.test.");
            let account = classify(&bytes);
            let interval = 1_000_000_000 / u64::from(rate);
            let start = Instant::now();
            let mut at = 0u64;
            let mut flood = flood.into_iter();
            for extra in slack {
                at += interval + extra;
                let now = start + Duration::from_nanos(at);
                prop_assert_eq!(table.check(&config, client("198.51.100.20"), &account, now), Verdict::Send);
                if let Some((source, offset)) = flood.next() {
                    // Anything but the client's own /24.
                    if source.octets()[..3] != [198, 51, 100] {
                        let when = start + Duration::from_nanos(at + offset % interval);
                        table.check(&config, IpAddr::V4(source), &account, when);
                    }
                }
            }
        }

        /// A spoofed-source flood at one answer: each client prefix gets at most its allowance
        /// (rate × time + rate + burst) however many addresses in it are spoofed, and exactly
        /// every slip-th limited response is slipped.
        #[test]
        fn a_spoofed_flood_is_limited_per_prefix(
            rate in 1u32..=100,
            burst in 0u32..=20,
            slip in 0u32..=4,
            prefixes in 1usize..=4,
            packets in proptest::collection::vec((0usize..4, any::<u8>(), 0u64..2_000_000_000), 1..800),
        ) {
            let mut table = RateLimitTable::new();
            let config = config(rate, burst, slip);
            let bytes = answer("api.example.test.");
            let account = classify(&bytes);
            let start = Instant::now();
            let mut packets = packets;
            packets.sort_by_key(|p| p.2);
            let mut sent = [0u64; 4];
            let mut limited = [0u64; 4];
            let mut slipped = [0u64; 4];
            let mut last = 0u64;
            for (prefix, host, at) in packets {
                let prefix = prefix % prefixes;
                let source = IpAddr::V4(Ipv4Addr::new(203, 0, prefix as u8, host));
                match table.check(&config, source, &account, start + Duration::from_nanos(at)) {
                    Verdict::Send => sent[prefix] += 1,
                    Verdict::Slip => { limited[prefix] += 1; slipped[prefix] += 1; }
                    Verdict::Drop => limited[prefix] += 1,
                }
                last = at;
            }
            let allowance = u64::from(rate) * last / 1_000_000_000 + u64::from(rate + burst);
            for p in 0..prefixes {
                prop_assert!(sent[p] <= allowance, "prefix {} sent {} > {}", p, sent[p], allowance);
                let expected = if slip == 0 { 0 } else { limited[p] / u64::from(slip) };
                prop_assert_eq!(slipped[p], expected);
            }
            prop_assert!(table.len() <= prefixes);
        }

        /// However many clients and names, the table never holds more than max_buckets.
        #[test]
        fn memory_is_bounded(
            max_buckets in 1usize..=64,
            queries in proptest::collection::vec((any::<u128>(), any::<bool>(), 0u8..100), 1..500),
        ) {
            let mut table = RateLimitTable::new();
            let mut config = config(5, 0, 2);
            config.max_buckets = max_buckets;
            let responses: Vec<Vec<u8>> =
                (0..100).map(|i| answer(&format!("n{i}.example.test."))).collect();
            let now = Instant::now();
            for (address, v6, name) in queries {
                let client = if v6 {
                    IpAddr::V6(Ipv6Addr::from(address))
                } else {
                    IpAddr::V4(Ipv4Addr::from(address as u32))
                };
                table.check(&config, client, &classify(&responses[usize::from(name)]), now);
                prop_assert!(table.len() <= max_buckets);
                prop_assert_eq!(table.index.len(), table.len());
            }
        }

        /// Classification and slipping never panic on arbitrary bytes, and a slip of anything
        /// is no larger than what it replaces.
        #[test]
        fn arbitrary_bytes_are_safe(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = classify(&bytes);
            let mut slipped = bytes.clone();
            if truncate_for_slip(&mut slipped) {
                prop_assert!(slipped.len() <= bytes.len());
                prop_assert_eq!(&slipped[..2], &bytes[..2]);
            }
        }
    }
}
