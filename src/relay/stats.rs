//! Recent request statistics the region report needs: relay-measured time to first byte and
//! between chunks (p50/p95 per model), error / timeout / shed rates, and client RTT per prefix.
//!
//! Windows are bounded in time and in memory (a ring of samples per model, one-second buckets
//! for rates, a capped prefix table), so a busy relay cannot grow them. Time comes in as
//! `now`; a short mutex per table is the only synchronisation (the request path writes one
//! sample under it; the report reads once a second).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use ipnet::IpNet;

/// How far back percentiles and rates look.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Samples kept per model and measure; older ones fall out first.
const SAMPLES_PER_MODEL: usize = 1024;
/// Rates are counted in one-second buckets over this many seconds.
const RATE_SECONDS: usize = 10;
/// Client prefixes tracked for RTT; the least recently seen is forgotten first.
const MAX_PREFIXES: usize = 4096;
/// Weight of a new RTT sample in a prefix's moving average.
const RTT_EWMA_WEIGHT: f64 = 0.2;

#[derive(Default)]
pub struct RequestStats {
    first_byte: Mutex<HashMap<String, VecDeque<(Instant, Duration)>>>,
    inter_chunk: Mutex<HashMap<String, VecDeque<(Instant, Duration)>>>,
    events: Mutex<EventBuckets>,
    rtt: Mutex<HashMap<IpNet, PrefixRtt>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct PrefixRtt {
    ewma_ms: f64,
    samples: u64,
    last_seen: Instant,
}

#[derive(Default)]
struct EventBuckets {
    /// (second since `origin`, requests, errors, timeouts, sheds)
    buckets: VecDeque<(u64, [u64; 4])>,
    origin: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Event {
    Request = 0,
    Error = 1,
    Timeout = 2,
    Shed = 3,
}

/// Percentiles of one measure, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub samples: usize,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ModelLatency {
    pub ttft: Percentiles,
    pub inter_token: Percentiles,
}

/// Events per second over the last [`RATE_SECONDS`] seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Rates {
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    pub timeouts_per_s: f64,
    pub sheds_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClientRtt {
    pub prefix: String,
    pub rtt_ms: f64,
    pub samples: u64,
}

impl RequestStats {
    pub fn record_first_byte(&self, model: &str, took: Duration, now: Instant) {
        push_sample(&self.first_byte, model, took, now);
        self.count(Event::Request, now);
    }

    pub fn record_inter_chunk(&self, model: &str, gap: Duration, now: Instant) {
        push_sample(&self.inter_chunk, model, gap, now);
    }

    pub fn record_error(&self, now: Instant) {
        self.count(Event::Error, now);
    }

    pub fn record_timeout(&self, now: Instant) {
        self.count(Event::Timeout, now);
    }

    pub fn record_shed(&self, now: Instant) {
        self.count(Event::Shed, now);
    }

    /// RTT measured on a client connection, aggregated per /24 (IPv4) or /48 (IPv6) — the
    /// granularity the DNS tier's latency map steers by. Returns whether a new prefix pushed
    /// out the least recently seen one (the table holds `MAX_PREFIXES`).
    #[must_use = "an eviction is counted by the caller's metrics"]
    pub fn record_client_rtt(&self, client: IpAddr, rtt: Duration, now: Instant) -> bool {
        let prefix = client_prefix(client);
        let mut table = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        let sample = rtt.as_secs_f64() * 1000.0;
        if let Some(entry) = table.get_mut(&prefix) {
            entry.ewma_ms += RTT_EWMA_WEIGHT * (sample - entry.ewma_ms);
            entry.samples += 1;
            entry.last_seen = now;
            return false;
        }
        let mut evicted = false;
        if table.len() >= MAX_PREFIXES
            && let Some(oldest) = table
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(prefix, _)| *prefix)
        {
            table.remove(&oldest);
            evicted = true;
        }
        table.insert(
            prefix,
            PrefixRtt {
                ewma_ms: sample,
                samples: 1,
                last_seen: now,
            },
        );
        evicted
    }

    pub fn latency(&self, now: Instant) -> HashMap<String, ModelLatency> {
        let mut out: HashMap<String, ModelLatency> = HashMap::new();
        for (model, samples) in self
            .first_byte
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            out.entry(model.clone()).or_default().ttft = percentiles(samples, now);
        }
        for (model, samples) in self
            .inter_chunk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            out.entry(model.clone()).or_default().inter_token = percentiles(samples, now);
        }
        out
    }

    pub fn rates(&self, now: Instant) -> Rates {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let Some(origin) = events.origin else {
            return Rates::default();
        };
        let current = now.saturating_duration_since(origin).as_secs();
        let oldest = current.saturating_sub(RATE_SECONDS as u64 - 1);
        let mut sums = [0u64; 4];
        for (second, counts) in &events.buckets {
            if *second >= oldest {
                for (sum, count) in sums.iter_mut().zip(counts) {
                    *sum += count;
                }
            }
        }
        let per_second = |n: u64| n as f64 / RATE_SECONDS as f64;
        Rates {
            requests_per_s: per_second(sums[Event::Request as usize]),
            errors_per_s: per_second(sums[Event::Error as usize]),
            timeouts_per_s: per_second(sums[Event::Timeout as usize]),
            sheds_per_s: per_second(sums[Event::Shed as usize]),
        }
    }

    /// Client RTT per prefix seen within [`WINDOW`], highest sample count first.
    pub fn client_rtt(&self, now: Instant) -> Vec<ClientRtt> {
        let table = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ClientRtt> = table
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_seen) <= WINDOW)
            .map(|(prefix, e)| ClientRtt {
                prefix: prefix.to_string(),
                rtt_ms: (e.ewma_ms * 100.0).round() / 100.0,
                samples: e.samples,
            })
            .collect();
        out.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.prefix.cmp(&b.prefix)));
        out
    }

    fn count(&self, event: Event, now: Instant) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let origin = *events.origin.get_or_insert(now);
        let second = now.saturating_duration_since(origin).as_secs();
        match events.buckets.back_mut() {
            Some((last, counts)) if *last == second => counts[event as usize] += 1,
            _ => {
                let mut counts = [0u64; 4];
                counts[event as usize] = 1;
                events.buckets.push_back((second, counts));
                while events.buckets.len() > RATE_SECONDS {
                    events.buckets.pop_front();
                }
            }
        }
    }
}

fn client_prefix(client: IpAddr) -> IpNet {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    let length = if client.is_ipv4() { 24 } else { 48 };
    IpNet::new(client, length).map_or_else(|_| IpNet::from(client), |n| n.trunc())
}

fn push_sample(
    table: &Mutex<HashMap<String, VecDeque<(Instant, Duration)>>>,
    model: &str,
    value: Duration,
    now: Instant,
) {
    let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
    let samples = match table.get_mut(model) {
        Some(samples) => samples,
        None => table.entry(model.to_string()).or_default(),
    };
    if samples.len() == SAMPLES_PER_MODEL {
        samples.pop_front();
    }
    samples.push_back((now, value));
}

fn percentiles(samples: &VecDeque<(Instant, Duration)>, now: Instant) -> Percentiles {
    let mut recent: Vec<f64> = samples
        .iter()
        .filter(|(at, _)| now.saturating_duration_since(*at) <= WINDOW)
        .map(|(_, d)| d.as_secs_f64() * 1000.0)
        .collect();
    if recent.is_empty() {
        return Percentiles::default();
    }
    recent.sort_by(f64::total_cmp);
    let rank = |q: f64| recent[((recent.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50_ms: rank(0.50),
        p95_ms: rank(0.95),
        samples: recent.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_recent_samples_only() {
        let stats = RequestStats::default();
        let start = Instant::now();
        for ms in 1..=100 {
            stats.record_first_byte("m", Duration::from_millis(ms), start);
        }
        let latency = stats.latency(start);
        assert_eq!(latency["m"].ttft.p50_ms, 51.0);
        assert_eq!(latency["m"].ttft.p95_ms, 95.0);
        assert_eq!(latency["m"].ttft.samples, 100);
        let later = stats.latency(start + WINDOW + Duration::from_secs(1));
        assert_eq!(later["m"].ttft.samples, 0);
    }

    #[test]
    fn sample_rings_are_bounded() {
        let stats = RequestStats::default();
        let now = Instant::now();
        for _ in 0..(SAMPLES_PER_MODEL * 3) {
            stats.record_inter_chunk("m", Duration::from_millis(5), now);
        }
        assert_eq!(
            stats.latency(now)["m"].inter_token.samples,
            SAMPLES_PER_MODEL
        );
    }

    #[test]
    fn rates_cover_the_last_ten_seconds() {
        let stats = RequestStats::default();
        let start = Instant::now();
        for second in 0..20u64 {
            let at = start + Duration::from_secs(second);
            stats.record_first_byte("m", Duration::from_millis(1), at);
            stats.record_error(at);
            if second % 2 == 0 {
                stats.record_shed(at);
            }
        }
        let rates = stats.rates(start + Duration::from_secs(19));
        assert_eq!(rates.requests_per_s, 1.0);
        assert_eq!(rates.errors_per_s, 1.0);
        assert_eq!(rates.sheds_per_s, 0.5);
        assert_eq!(rates.timeouts_per_s, 0.0);
    }

    #[test]
    fn rtt_is_averaged_per_prefix_and_the_table_is_capped() {
        let stats = RequestStats::default();
        let now = Instant::now();
        let _ =
            stats.record_client_rtt("192.0.2.1".parse().unwrap(), Duration::from_millis(10), now);
        let _ = stats.record_client_rtt(
            "192.0.2.99".parse().unwrap(),
            Duration::from_millis(20),
            now,
        );
        let _ = stats.record_client_rtt(
            "::ffff:192.0.2.7".parse().unwrap(),
            Duration::from_millis(10),
            now,
        );
        let table = stats.client_rtt(now);
        assert_eq!(table.len(), 1);
        assert_eq!(table[0].prefix, "192.0.2.0/24");
        assert_eq!(table[0].samples, 3);
        assert!(table[0].rtt_ms > 10.0 && table[0].rtt_ms < 20.0);

        let mut evictions = 0;
        for i in 0..(MAX_PREFIXES as u32 + 10) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8));
            evictions +=
                u32::from(stats.record_client_rtt(IpAddr::V4(ip), Duration::from_millis(1), now));
        }
        assert!(stats.client_rtt(now).len() <= MAX_PREFIXES);
        // The table already held 192.0.2.0/24: 1 + 4106 prefixes for 4096 places.
        assert_eq!(evictions, 11);
    }
}
