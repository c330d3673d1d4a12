use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::*;
use crate::relay::config::model::{
    Backend, HealthChecks, Limits, RetryPolicy, Shedding, Timeouts, TlsFiles,
};

pub(crate) fn backend(id: &str, kind: BackendKind, models: &[&str], slots: u32) -> Backend {
    Backend {
        id: id.into(),
        base_url: http::Uri::from_static("http://127.0.0.1:8000"),
        kind,
        models: ModelSource::Declared(models.iter().map(|m| m.to_string()).collect()),
        slots,
        capacity: slots,
        drained: false,
    }
}

pub(crate) fn config(backends: Vec<Backend>) -> RelayConfig {
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    RelayConfig {
        source: PathBuf::from("relay.toml"),
        region: "eu-west".into(),
        listen: local,
        plain_listen: None,
        admin_listen: local,
        admin_token_file: None,
        tls: TlsFiles {
            cert: PathBuf::from("cert.pem"),
            key: PathBuf::from("key.pem"),
        },
        http3: false,
        backends,
        timeouts: Timeouts {
            connect: Duration::from_secs(1),
            first_byte: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(600),
        },
        retry: RetryPolicy {
            max_attempts: 2,
            budget_ratio: 0.2,
            min_retries_per_second: 1,
            max_retry_after: Duration::from_secs(2),
        },
        shedding: Shedding {
            max_saturation: 0.95,
            retry_after: Duration::from_secs(1),
        },
        limits: Limits {
            max_request_body_bytes: 1 << 20,
            max_request_header_bytes: 16 << 10,
            max_response_header_bytes: 16 << 10,
            max_connections: 1000,
            max_streams_per_connection: 100,
            header_read_timeout: Duration::from_secs(5),
        },
        health: HealthChecks {
            interval: Duration::from_secs(5),
            deep_interval: Duration::from_secs(30),
            deep_timeout: Duration::from_secs(10),
            eject_after_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(80),
            healthy_after_successes: 2,
        },
        scrape_interval: Duration::from_secs(1),
        health_channel: None,
    }
}

const M: &str = "llama-3.1-8b";

fn vllm(n: usize) -> RelayConfig {
    config(
        (0..n)
            .map(|i| backend(&format!("b{i}"), BackendKind::Vllm, &[M], 10))
            .collect(),
    )
}

fn running(r: f64) -> BackendSignals {
    BackendSignals {
        running: Some(r),
        ..BackendSignals::default()
    }
}

fn b(i: u16) -> BackendIdx {
    BackendIdx(i)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn probe_n(pool: &Pool, idx: BackendIdx, probe: ProbeKind, ok: bool, n: u32, now: Instant) {
    for _ in 0..n {
        let _ = pool.record_probe(idx, probe, ok, now);
    }
}

fn picks(pool: &Pool, exclude: &[BackendIdx], now: Instant) -> Vec<Option<BackendIdx>> {
    (0..200)
        .map(|seed| pool.pick(M, exclude, seed, now))
        .collect()
}

/// Every seed picks one of `allowed` (and something is always picked when `allowed` is
/// non-empty).
fn assert_picks_within(pool: &Pool, exclude: &[BackendIdx], allowed: &[u16], now: Instant) {
    for (seed, pick) in picks(pool, exclude, now).into_iter().enumerate() {
        match pick {
            Some(p) => assert!(
                allowed.contains(&p.0),
                "seed {seed} picked {p:?}, allowed {allowed:?}"
            ),
            None => assert!(
                allowed.is_empty(),
                "seed {seed} picked nothing, allowed {allowed:?}"
            ),
        }
    }
}

#[test]
fn pick_only_takes_available_backends() {
    let t0 = Instant::now();
    type Setup = fn(&Pool, Instant);
    let cases: &[(&str, Setup, &[BackendIdx], &[u16])] = &[
        ("all fresh: any", |_, _| {}, &[], &[0, 1, 2]),
        ("drained", |p, _| p.set_drained(b(1), true), &[], &[0, 2]),
        (
            "undrained again",
            |p, _| {
                p.set_drained(b(1), true);
                p.set_drained(b(1), false);
            },
            &[],
            &[0, 1, 2],
        ),
        (
            "liveness down",
            |p, t| probe_n(p, b(0), ProbeKind::Liveness, false, 3, t),
            &[],
            &[1, 2],
        ),
        (
            "liveness two bad: not yet down",
            |p, t| probe_n(p, b(0), ProbeKind::Liveness, false, 2, t),
            &[],
            &[0, 1, 2],
        ),
        (
            "deep down while liveness is up",
            |p, t| {
                probe_n(p, b(2), ProbeKind::Liveness, true, 10, t);
                probe_n(p, b(2), ProbeKind::Deep, false, 3, t);
            },
            &[],
            &[0, 1],
        ),
        (
            "passively ejected",
            |p, t| {
                for _ in 0..3 {
                    let _ = p.record_failure(b(1), Failure::Connect, t);
                }
            },
            &[],
            &[0, 2],
        ),
        (
            "overloaded with Retry-After",
            |p, t| {
                let _ = p.record_failure(
                    b(0),
                    Failure::Overloaded {
                        retry_after: Some(secs(5)),
                    },
                    t,
                );
            },
            &[],
            &[1, 2],
        ),
        (
            "excluded by a retry",
            |_, _| {},
            &[BackendIdx(0), BackendIdx(2)],
            &[1],
        ),
        (
            "one left: always it",
            |p, _| {
                p.set_drained(b(0), true);
                p.set_drained(b(2), true);
            },
            &[],
            &[1],
        ),
        (
            "none left",
            |p, _| {
                for i in 0..3 {
                    p.set_drained(b(i), true);
                }
            },
            &[],
            &[],
        ),
    ];
    for (name, setup, exclude, allowed) in cases {
        let pool = Pool::new(&vllm(3));
        setup(&pool, t0);
        eprintln!("case: {name}");
        assert_picks_within(&pool, exclude, allowed, t0);
        assert!(pool.serves(M), "{name}: serving does not depend on health");
    }
}

/// The retry's last resort takes what only passive ejection holds out, and nothing else that
/// `pick` leaves out.
#[test]
fn last_resort_takes_only_ejected_backends() {
    let t0 = Instant::now();
    type Setup = fn(&Pool, Instant);
    fn eject(p: &Pool, i: u16, t: Instant) {
        for _ in 0..3 {
            let _ = p.record_failure(b(i), Failure::Connect, t);
        }
    }
    let cases: &[(&str, Setup, &[u16])] = &[
        (
            "all ejected: any",
            |p, t| (0..3).for_each(|i| eject(p, i, t)),
            &[0, 1, 2],
        ),
        (
            "ejected, drained, liveness down",
            |p, t| {
                eject(p, 0, t);
                p.set_drained(b(1), true);
                probe_n(p, b(2), ProbeKind::Liveness, false, 3, t);
            },
            &[0],
        ),
        (
            "ejected and paused by its Retry-After",
            |p, t| {
                eject(p, 0, t);
                let _ = p.record_failure(
                    b(1),
                    Failure::Overloaded {
                        retry_after: Some(secs(5)),
                    },
                    t,
                );
                p.set_drained(b(2), true);
            },
            &[0],
        ),
        (
            "deep probe down",
            |p, t| {
                probe_n(p, b(0), ProbeKind::Deep, false, 3, t);
                (1..3).for_each(|i| p.set_drained(b(i), true));
            },
            &[],
        ),
    ];
    for (name, setup, allowed) in cases {
        let pool = Pool::new(&vllm(3));
        setup(&pool, t0);
        for seed in 0..200 {
            let pick = pool.pick_held_out(M, &[], seed, t0);
            match pick {
                Some(p) => assert!(allowed.contains(&p.0), "{name}: seed {seed} picked {p:?}"),
                None => assert!(allowed.is_empty(), "{name}: seed {seed} picked nothing"),
            }
        }
    }
    // The retry itself was excluded: never offered again.
    let pool = Pool::new(&vllm(2));
    eject(&pool, 0, t0);
    assert_eq!(pool.pick(M, &[b(1)], 7, t0), None);
    assert_eq!(pool.pick_held_out(M, &[b(1)], 7, t0), Some(b(0)));
    assert_eq!(pool.pick_held_out(M, &[b(0), b(1)], 7, t0), None);
}

#[test]
fn pool_is_shared_across_tasks() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Pool>();
    shared::<InFlight>();
}

#[test]
fn unknown_model_is_neither_served_nor_picked() {
    let pool = Pool::new(&vllm(2));
    assert!(!pool.serves("gpt-4o"));
    assert_eq!(pool.pick("gpt-4o", &[], 7, Instant::now()), None);
}

#[test]
fn models_are_the_sorted_union() {
    let pool = Pool::new(&config(vec![
        backend("a", BackendKind::Vllm, &["zeta", "alpha"], 4),
        backend("b", BackendKind::Ollama, &["alpha", "mid"], 4),
    ]));
    assert_eq!(pool.models(), ["alpha", "mid", "zeta"]);
    assert_eq!(pool.models_of(b(0)), ["zeta", "alpha"]);
}

#[test]
fn ejection_and_pause_end_on_time() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(1));
    for n in 1..=3 {
        let ejected = pool.record_failure(b(0), Failure::FirstByteTimeout, t0);
        assert_eq!(ejected, (n == 3).then_some(secs(10)), "failure {n}");
    }
    assert_eq!(pool.pick(M, &[], 0, t0 + secs(9)), None);
    assert_eq!(pool.pick(M, &[], 0, t0 + secs(10)), Some(b(0)));

    let t1 = t0 + secs(100);
    let pause = Failure::Overloaded {
        retry_after: Some(secs(3)),
    };
    assert_eq!(pool.record_failure(b(0), pause, t1), None);
    assert_eq!(pool.pick(M, &[], 0, t1 + secs(2)), None);
    assert_eq!(pool.pick(M, &[], 0, t1 + secs(3)), Some(b(0)));
}

#[test]
fn ejection_backoff_doubles_and_caps() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(1));
    let mut now = t0;
    let mut lengths = Vec::new();
    for _ in 0..6 {
        let mut ejected = None;
        for _ in 0..3 {
            ejected = pool.record_failure(b(0), Failure::Connect, now);
        }
        let length = ejected.unwrap_or_default();
        lengths.push(length.as_secs());
        now += length;
    }
    assert_eq!(lengths, [10, 20, 40, 80, 80, 80]);

    // A success once it is back resets the backoff.
    pool.record_success(b(0), Duration::from_millis(200), now);
    let mut ejected = None;
    for _ in 0..3 {
        ejected = pool.record_failure(b(0), Failure::Connect, now);
    }
    assert_eq!(ejected, Some(secs(10)));
}

#[test]
fn failures_that_do_not_count_toward_ejection() {
    let t0 = Instant::now();
    let cases: &[(&str, Failure, u32)] = &[
        (
            "overload counts once",
            Failure::Overloaded { retry_after: None },
            1,
        ),
        ("503 is overload", Failure::Status { code: 503 }, 1),
        ("429 is overload", Failure::Status { code: 429 }, 1),
        (
            "4xx is the client's fault",
            Failure::Status { code: 400 },
            0,
        ),
        ("500 counts", Failure::Status { code: 500 }, 2),
        ("idle timeout counts", Failure::IdleTimeout, 2),
        ("reset counts", Failure::ResetBeforeResponse, 2),
    ];
    for (name, failure, expected) in cases {
        let pool = Pool::new(&vllm(1));
        let _ = pool.record_failure(b(0), *failure, t0);
        let _ = pool.record_failure(b(0), *failure, t0 + secs(60));
        let view = &pool.views(t0 + secs(60))[0];
        assert_eq!(view.consecutive_failures, *expected, "{name}");
        assert_eq!(view.ejected_for, None, "{name}");
    }
}

#[test]
fn failures_while_ejected_are_the_same_incident() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(1));
    for _ in 0..3 {
        let _ = pool.record_failure(b(0), Failure::Connect, t0);
    }
    for _ in 0..10 {
        assert_eq!(
            pool.record_failure(b(0), Failure::Connect, t0 + secs(1)),
            None
        );
    }
    assert_eq!(pool.views(t0 + secs(1))[0].ejected_for, Some(secs(9)));
}

#[test]
fn probe_hysteresis() {
    use Health::*;
    let t0 = Instant::now();
    // eject_after_failures = 3, healthy_after_successes = 2.
    /// (name, probe results in order, health after them, the last result's flip)
    type Case<'a> = (&'a str, &'a [bool], Health, Option<(Health, Health)>);
    let cases: &[Case] = &[
        ("nothing yet", &[], Unknown, None),
        ("one good", &[true], Up, Some((Unknown, Up))),
        ("two bad from unknown", &[false, false], Unknown, None),
        (
            "three bad from unknown",
            &[false, false, false],
            Down,
            Some((Unknown, Down)),
        ),
        (
            "bad streak broken",
            &[true, false, false, true, false, false],
            Up,
            None,
        ),
        (
            "down, one good is not enough",
            &[false, false, false, true],
            Down,
            None,
        ),
        (
            "down, two good",
            &[false, false, false, true, true],
            Up,
            Some((Down, Up)),
        ),
        (
            "down, good streak broken",
            &[false, false, false, true, false, true],
            Down,
            None,
        ),
        (
            "up then down",
            &[true, false, false, false],
            Down,
            Some((Up, Down)),
        ),
    ];
    for probe in [ProbeKind::Liveness, ProbeKind::Deep] {
        for (name, results, expected, last_flip) in cases {
            let pool = Pool::new(&vllm(1));
            let mut flip = None;
            for &ok in *results {
                flip = pool.record_probe(b(0), probe, ok, t0);
            }
            assert_eq!(
                pool.probe_health(b(0), probe),
                *expected,
                "{probe:?} {name}"
            );
            let view = &pool.views(t0)[0];
            assert_eq!(view.health, *expected, "{probe:?} {name}");
            assert_eq!(view.available, *expected != Down, "{probe:?} {name}");
            assert_eq!(
                flip,
                last_flip.map(|(from, to)| HealthFlip { probe, from, to }),
                "{probe:?} {name}"
            );
        }
    }
}

#[test]
fn liveness_successes_do_not_mask_a_hanging_generation() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(1));
    // Liveness runs far more often than the deep probe; its successes interleave.
    for _ in 0..3 {
        probe_n(&pool, b(0), ProbeKind::Liveness, true, 6, t0);
        let _ = pool.record_probe(b(0), ProbeKind::Deep, false, t0);
    }
    assert_eq!(pool.views(t0)[0].health, Health::Down);
    assert_eq!(pool.pick(M, &[], 0, t0), None);
}

#[test]
fn load_scores() {
    let full = |s: BackendSignals| Some(s);
    let cases: &[(&str, u32, u32, Option<BackendSignals>, f64)] = &[
        ("idle", 10, 0, None, 0.0),
        ("in-flight only", 10, 4, None, 0.4),
        (
            "backend busier than our share",
            10,
            1,
            full(running(6.0)),
            0.6,
        ),
        (
            "our count above a lagging scrape",
            10,
            8,
            full(running(2.0)),
            0.8,
        ),
        (
            "queue on top of a full batch",
            10,
            0,
            full(BackendSignals {
                running: Some(10.0),
                waiting: Some(5.0),
                ..BackendSignals::default()
            }),
            1.5,
        ),
        (
            "kv near full dominates",
            10,
            1,
            full(BackendSignals {
                kv_usage: Some(0.81),
                ..BackendSignals::default()
            }),
            0.9,
        ),
        (
            "llama.cpp slots",
            4,
            0,
            full(BackendSignals {
                slots_busy: Some(3.0),
                slots_total: Some(4.0),
                ..BackendSignals::default()
            }),
            0.75,
        ),
        (
            "no slots reported",
            4,
            1,
            full(BackendSignals {
                slots_busy: Some(0.0),
                slots_total: Some(0.0),
                ..BackendSignals::default()
            }),
            0.25,
        ),
        (
            "NaN never wins",
            10,
            3,
            full(BackendSignals {
                kv_usage: Some(f64::NAN),
                ..BackendSignals::default()
            }),
            0.3,
        ),
    ];
    for (name, slots, in_flight, signals, expected) in cases {
        // Scraped while our share was what it is now.
        let scraped = signals.map(|signals| Scraped {
            signals,
            ours_then: *in_flight,
        });
        let score = load_score(*slots, *in_flight, scraped.as_ref());
        assert!(
            (score - expected).abs() < 1e-9,
            "{name}: {score} != {expected}"
        );
    }
}

#[test]
fn a_scrape_counts_only_load_from_elsewhere_against_our_live_share() {
    let running = |r: f64| BackendSignals {
        running: Some(r),
        ..BackendSignals::default()
    };
    // (slots, ours now, ours when scraped, scraped running, expected score)
    let cases: &[(&str, u32, u32, u32, f64, f64)] = &[
        (
            "our requests moved away since the scrape",
            128,
            48,
            80,
            80.0,
            48.0 / 128.0,
        ),
        (
            "our requests arrived since the scrape",
            128,
            80,
            48,
            48.0,
            80.0 / 128.0,
        ),
        ("others' load is kept", 128, 10, 10, 50.0, 50.0 / 128.0),
        (
            "others' load plus ours now",
            128,
            30,
            10,
            50.0,
            70.0 / 128.0,
        ),
        (
            "a scrape below our share then is not negative load",
            128,
            5,
            20,
            3.0,
            5.0 / 128.0,
        ),
    ];
    for (name, slots, now, then, scraped_running, expected) in cases {
        let scraped = Scraped {
            signals: running(*scraped_running),
            ours_then: *then,
        };
        let score = load_score(*slots, *now, Some(&scraped));
        assert!(
            (score - expected).abs() < 1e-9,
            "{name}: {score} != {expected}"
        );
    }
}

#[test]
fn our_requests_finishing_during_a_scrape_are_not_load_from_elsewhere() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(1));
    // 8 of ours were in flight when the scrape was sent and the backend counted them; by the
    // time the answer arrived they had finished.
    let guards: Vec<InFlight> = (0..8).map(|_| pool.begin(b(0))).collect();
    let sent_with = pool.in_flight(b(0));
    drop(guards);
    pool.update_signals_scraped(b(0), running(8.0), t0, sent_with);
    assert!(pool.load_score(b(0), t0).abs() < 1e-9, "no phantom load");
}

#[test]
fn scraped_kv_use_is_scaled_to_the_demand_now() {
    // 64 of 128 running when scraped, KV 0.45 (0.5 of full at KV_FULL = 0.9); since then our
    // share fell from 64 to 32: KV is about half of what was scraped.
    let scraped = Scraped {
        signals: BackendSignals {
            running: Some(64.0),
            kv_usage: Some(0.45),
            ..BackendSignals::default()
        },
        ours_then: 64,
    };
    let score = load_score(128, 32, Some(&scraped));
    assert!((score - 0.25).abs() < 1e-9, "{score}");
}

#[test]
fn stale_signals_are_ignored() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(1));
    let _guards: Vec<InFlight> = (0..2).map(|_| pool.begin(b(0))).collect();
    pool.update_signals(b(0), running(9.0), t0);
    // scrape_interval = 1 s: trusted for 3 s.
    let cases = [(0, 0.9), (3000, 0.9), (3001, 0.2), (60_000, 0.2)];
    for (ms, expected) in cases {
        let now = t0 + Duration::from_millis(ms);
        let score = pool.load_score(b(0), now);
        assert!((score - expected).abs() < 1e-9, "{ms} ms: {score}");
        assert_eq!(
            pool.views(now)[0].signal_age,
            Some(Duration::from_millis(ms))
        );
    }
}

#[test]
fn in_flight_follows_guards() {
    let pool = Pool::new(&vllm(2));
    let now = Instant::now();
    let first = pool.begin(b(1));
    let second = pool.begin(b(1));
    let in_flight = |pool: &Pool| {
        pool.views(now)
            .iter()
            .map(|v| v.in_flight)
            .collect::<Vec<_>>()
    };
    assert_eq!(in_flight(&pool), [0, 2]);
    drop(first);
    assert_eq!(in_flight(&pool), [0, 1]);
    drop(second);
    assert_eq!(in_flight(&pool), [0, 0]);
    // A stray index neither panics nor counts anywhere.
    let stray = pool.begin(BackendIdx(9));
    assert_eq!(in_flight(&pool), [0, 0]);
    drop(stray);
}

#[test]
fn the_less_loaded_of_two_always_wins() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(2));
    pool.update_signals(b(0), running(7.0), t0);
    pool.update_signals(b(1), running(3.0), t0);
    assert_picks_within(&pool, &[], &[1], t0);
}

#[test]
fn equal_scores_go_to_fewer_in_flight() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(2));
    // Both score 0.5 (the scrape dominates), but the relay has more of its own at b0.
    pool.update_signals(b(0), running(5.0), t0);
    pool.update_signals(b(1), running(5.0), t0);
    let _g = [pool.begin(b(0)), pool.begin(b(0)), pool.begin(b(1))];
    assert_picks_within(&pool, &[], &[1], t0);
}

#[test]
fn load_spreads_towards_the_less_loaded() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(3));
    for (i, load) in [(0, 1.0), (1, 5.0), (2, 9.0)] {
        pool.update_signals(b(i), running(load), t0);
    }
    let mut counts = [0u32; 3];
    for seed in 0..3000 {
        if let Some(p) = pool.pick(M, &[], seed, t0) {
            counts[p.get()] += 1;
        }
    }
    // P2C over three: the lightest wins whenever drawn (2/3), the middle one only against
    // the heaviest (1/3), the heaviest never.
    assert_eq!(counts.iter().sum::<u32>(), 3000);
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!((1800..2200).contains(&counts[0]), "{counts:?}");
    assert!((800..1200).contains(&counts[1]), "{counts:?}");
}

#[test]
fn discovery_routes_models() {
    let mut discover = backend("d", BackendKind::Ollama, &[], 2);
    discover.models = ModelSource::Discover;
    let pool = Pool::new(&config(vec![
        backend("v", BackendKind::Vllm, &[M], 4),
        discover,
    ]));
    let now = Instant::now();
    assert!(!pool.serves("qwen"));
    assert!(pool.update_models(b(1), vec!["qwen".into(), M.into(), "qwen".into()]));
    assert!(
        !pool.update_models(b(1), vec![M.into(), "qwen".into()]),
        "same set"
    );
    assert_eq!(pool.models(), [M, "qwen"]);
    assert_eq!(pool.models_of(b(1)), [M, "qwen"]);
    assert_eq!(pool.pick("qwen", &[], 1, now), Some(b(1)));
    // The operator's list wins over what a declared backend says.
    assert!(!pool.update_models(b(0), vec!["other".into()]));
    assert!(!pool.serves("other"));
    // A model that disappears stops being served.
    assert!(pool.update_models(b(1), vec![M.into()]));
    assert!(!pool.serves("qwen"));
    assert_eq!(pool.pick("qwen", &[], 1, now), None);
}

#[test]
fn region_headroom_arithmetic() {
    let t0 = Instant::now();
    let mut big = backend("big", BackendKind::Vllm, &["a", "b"], 30);
    big.capacity = 30;
    let small = backend("small", BackendKind::Vllm, &["a"], 10);
    let ollama = backend("ollama", BackendKind::Ollama, &["b"], 4);
    let drained = Backend {
        drained: true,
        ..backend("drained", BackendKind::Vllm, &["a"], 20)
    };
    let pool = Pool::new(&config(vec![big, small, ollama, drained]));
    pool.update_signals(b(0), running(15.0), t0); // s = 0.5 → h = 15 units
    pool.update_signals(b(1), running(12.0), t0); // s = 1.2 → h = 0, load capped at 1
    let _g = pool.begin(b(2)); // Ollama: in-flight only, always fresh; s = 0.25 → h = 3
    pool.update_signals(b(3), running(0.0), t0); // drained: no headroom, no saturation

    let load = pool.region_load(t0);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert_eq!(load.capacity_units, 64);
    assert!(close(load.headroom_units, 18.0), "{load:?}");
    assert!(close(load.headroom_fraction, 18.0 / 64.0), "{load:?}");
    // (30·0.5 + 10·1 + 4·0.25) / 44
    assert!(close(load.saturation, 26.0 / 44.0), "{load:?}");

    let [a, model_b] = load.models.as_slice() else {
        panic!("two models: {load:?}");
    };
    assert_eq!(
        (a.model.as_str(), a.healthy_backends, a.total_backends),
        ("a", 2, 3)
    );
    assert_eq!(a.capacity_units, 60);
    assert!(
        close(a.headroom_units, 15.0) && close(a.headroom_fraction, 0.25),
        "{a:?}"
    );
    assert!(close(a.saturation, 25.0 / 40.0), "{a:?}");
    assert_eq!(
        (
            model_b.healthy_backends,
            model_b.total_backends,
            model_b.capacity_units
        ),
        (2, 2, 34)
    );
    assert!(close(model_b.headroom_units, 18.0), "{model_b:?}");

    // Ten seconds on, the vLLM signals are stale: their headroom is no longer vouched for,
    // while Ollama's in-flight count still is.
    let later = pool.region_load(t0 + secs(10));
    assert!(close(later.headroom_units, 3.0), "{later:?}");
}

#[test]
fn a_region_with_nothing_available_is_saturated() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(2));
    pool.set_drained(b(0), true);
    probe_n(&pool, b(1), ProbeKind::Liveness, false, 3, t0);
    let load = pool.region_load(t0);
    assert_eq!(load.saturation, 1.0);
    assert_eq!(load.headroom_units, 0.0);
    assert_eq!(load.models[0].healthy_backends, 0);
}

/// A backend's condition, as the property tests draw it.
#[derive(Clone, Copy, Debug)]
struct Condition {
    drained: bool,
    bad_liveness: u32,
    bad_deep: u32,
    failures: u32,
    overloaded: bool,
    running: Option<u8>,
    in_flight: u8,
}

fn condition() -> impl Strategy<Value = Condition> {
    // Weighted so that about a third of backends are available: the interesting cases have
    // several candidates, not none.
    (
        prop::bool::weighted(0.15),
        0u32..4,
        0u32..4,
        0u32..4,
        prop::bool::weighted(0.15),
        prop::option::of(0u8..20),
        0u8..12,
    )
        .prop_map(
            |(drained, bad_liveness, bad_deep, failures, overloaded, running, in_flight)| {
                Condition {
                    drained,
                    bad_liveness,
                    bad_deep,
                    failures,
                    overloaded,
                    running,
                    in_flight,
                }
            },
        )
}

fn apply(pool: &Pool, idx: BackendIdx, c: &Condition, now: Instant) -> Vec<InFlight> {
    pool.set_drained(idx, c.drained);
    probe_n(pool, idx, ProbeKind::Liveness, false, c.bad_liveness, now);
    probe_n(pool, idx, ProbeKind::Deep, false, c.bad_deep, now);
    for _ in 0..c.failures {
        let _ = pool.record_failure(idx, Failure::Connect, now);
    }
    if c.overloaded {
        let retry_after = Some(secs(10));
        let _ = pool.record_failure(idx, Failure::Overloaded { retry_after }, now);
    }
    if let Some(r) = c.running {
        pool.update_signals(idx, running(f64::from(r)), now);
    }
    (0..c.in_flight).map(|_| pool.begin(idx)).collect()
}

fn expected_available(c: &Condition) -> bool {
    !c.drained && c.bad_liveness < 3 && c.bad_deep < 3 && c.failures < 3 && !c.overloaded
}

proptest! {
    #[test]
    fn pick_never_takes_an_unavailable_backend(
        conditions in prop::collection::vec(condition(), 1..6),
        exclude_mask in any::<u8>(),
        seed in any::<u64>(),
    ) {
        let t0 = Instant::now();
        let pool = Pool::new(&vllm(conditions.len()));
        let _guards: Vec<Vec<InFlight>> = conditions
            .iter()
            .zip(0u16..)
            .map(|(c, i)| apply(&pool, BackendIdx(i), c, t0))
            .collect();
        let exclude: Vec<BackendIdx> = (0u16..conditions.len() as u16)
            .filter(|i| exclude_mask & (1 << i) != 0)
            .map(BackendIdx)
            .collect();
        let eligible: Vec<u16> = conditions
            .iter()
            .zip(0u16..)
            .filter(|&(c, i)| expected_available(c) && !exclude.contains(&BackendIdx(i)))
            .map(|(_, i)| i)
            .collect();

        let picked = pool.pick(M, &exclude, seed, t0);
        match picked {
            Some(p) => prop_assert!(eligible.contains(&p.0), "picked {:?} of {:?}", p, eligible),
            None => prop_assert!(eligible.is_empty()),
        }
        if let [only] = eligible.as_slice() {
            prop_assert_eq!(picked, Some(BackendIdx(*only)));
        }
        // Deterministic for the same input.
        prop_assert_eq!(pool.pick(M, &exclude, seed, t0), picked);
        // Never the worse of two when there are exactly two.
        if let ([x, y], Some(p)) = (eligible.as_slice(), picked) {
            let other = if p.0 == *x { *y } else { *x };
            prop_assert!(pool.load_score(p, t0) <= pool.load_score(BackendIdx(other), t0));
        }
        // The views agree with pick about availability.
        for view in pool.views(t0) {
            prop_assert_eq!(view.available, expected_available(&conditions[view.idx.get()]));
        }
    }

    #[test]
    fn headroom_stays_within_capacity(
        conditions in prop::collection::vec(condition(), 1..6),
        age_ms in 0u64..5000,
    ) {
        let t0 = Instant::now();
        let pool = Pool::new(&vllm(conditions.len()));
        let _guards: Vec<Vec<InFlight>> = conditions
            .iter()
            .zip(0u16..)
            .map(|(c, i)| apply(&pool, BackendIdx(i), c, t0))
            .collect();
        let load = pool.region_load(t0 + Duration::from_millis(age_ms));
        prop_assert!((0.0..=1.0).contains(&load.saturation));
        prop_assert!((0.0..=1.0).contains(&load.headroom_fraction));
        prop_assert!(load.headroom_units <= load.capacity_units as f64);
        if conditions.iter().all(|c| !expected_available(c)) {
            prop_assert_eq!(load.headroom_units, 0.0);
            prop_assert_eq!(load.saturation, 1.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reconfiguration
// ---------------------------------------------------------------------------------------------

fn ids(ids: &[&str]) -> Vec<Arc<str>> {
    ids.iter().map(|&id| Arc::from(id)).collect()
}

fn at(url: &'static str, backend: Backend) -> Backend {
    Backend {
        base_url: http::Uri::from_static(url),
        ..backend
    }
}

fn drained(backend: Backend) -> Backend {
    Backend {
        drained: true,
        ..backend
    }
}

/// `(id, removed)` of every view, in index order.
fn shown(pool: &Pool, now: Instant) -> Vec<(String, bool)> {
    pool.views(now)
        .into_iter()
        .map(|v| (v.id.to_string(), v.removed))
        .collect()
}

fn live_ids(pool: &Pool) -> Vec<String> {
    pool.live()
        .into_iter()
        .map(|l| l.backend.id.to_string())
        .collect()
}

#[test]
fn reconcile_matches_by_id() {
    let v = |id: &str| backend(id, BackendKind::Vllm, &[M], 4);
    struct Case {
        name: &'static str,
        before: Vec<Backend>,
        after: Vec<Backend>,
        summary: ReconcileSummary,
        live: &'static [&'static str],
        models: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "same list",
            before: vec![v("a"), v("b")],
            after: vec![v("a"), v("b")],
            summary: ReconcileSummary::default(),
            live: &["a", "b"],
            models: &[M],
        },
        Case {
            name: "order alone is no change",
            before: vec![v("a"), v("b")],
            after: vec![v("b"), v("a")],
            summary: ReconcileSummary::default(),
            live: &["a", "b"],
            models: &[M],
        },
        Case {
            name: "added",
            before: vec![v("a")],
            after: vec![v("a"), backend("n", BackendKind::Sglang, &["new"], 2)],
            summary: ReconcileSummary {
                added: ids(&["n"]),
                ..ReconcileSummary::default()
            },
            live: &["a", "n"],
            models: &[M, "new"],
        },
        Case {
            name: "removed",
            before: vec![v("a"), backend("o", BackendKind::Vllm, &["old"], 4)],
            after: vec![v("a")],
            summary: ReconcileSummary {
                removed: ids(&["o"]),
                ..ReconcileSummary::default()
            },
            live: &["a"],
            models: &[M],
        },
        Case {
            name: "only drained changed",
            before: vec![v("a"), v("b")],
            after: vec![drained(v("a")), v("b")],
            summary: ReconcileSummary {
                drain_changed: ids(&["a"]),
                ..ReconcileSummary::default()
            },
            live: &["a", "b"],
            models: &[M],
        },
        Case {
            name: "URL changed",
            before: vec![v("a"), v("b")],
            after: vec![at("http://10.0.0.9:8000", v("a")), v("b")],
            summary: ReconcileSummary {
                changed: ids(&["a"]),
                ..ReconcileSummary::default()
            },
            live: &["b", "a"],
            models: &[M],
        },
        Case {
            name: "slots, capacity, kind, models changed",
            before: vec![v("s"), v("c"), v("k"), v("m")],
            after: vec![
                backend("s", BackendKind::Vllm, &[M], 8),
                Backend {
                    capacity: 99,
                    ..v("c")
                },
                backend("k", BackendKind::Tgi, &[M], 4),
                backend("m", BackendKind::Vllm, &[M, "extra"], 4),
            ],
            summary: ReconcileSummary {
                changed: ids(&["s", "c", "k", "m"]),
                ..ReconcileSummary::default()
            },
            live: &["s", "c", "k", "m"],
            models: &["extra", M],
        },
        Case {
            name: "a changed backend that is also drained is replaced, drained",
            before: vec![v("a")],
            after: vec![drained(Backend { slots: 9, ..v("a") })],
            summary: ReconcileSummary {
                changed: ids(&["a"]),
                ..ReconcileSummary::default()
            },
            live: &["a"],
            models: &[M],
        },
        Case {
            name: "everything at once",
            before: vec![v("keep"), v("gone"), v("flip"), v("moved")],
            after: vec![
                v("new"),
                at("http://10.0.0.9:8000", v("moved")),
                drained(v("flip")),
                v("keep"),
            ],
            summary: ReconcileSummary {
                added: ids(&["new"]),
                removed: ids(&["gone"]),
                changed: ids(&["moved"]),
                drain_changed: ids(&["flip"]),
                no_room: Vec::new(),
            },
            live: &["keep", "flip", "new", "moved"],
            models: &[M],
        },
        Case {
            name: "a repeated id counts once",
            before: vec![v("a")],
            after: vec![v("a"), at("http://10.0.0.9:8000", v("a"))],
            summary: ReconcileSummary::default(),
            live: &["a"],
            models: &[M],
        },
        Case {
            name: "nothing left",
            before: vec![v("a")],
            after: vec![],
            summary: ReconcileSummary {
                removed: ids(&["a"]),
                ..ReconcileSummary::default()
            },
            live: &[],
            models: &[],
        },
    ];
    for case in cases {
        let pool = Pool::new(&config(case.before.clone()));
        let summary = pool.reconcile(&case.after);
        assert_eq!(summary, case.summary, "{}", case.name);
        assert_eq!(live_ids(&pool), case.live, "{}", case.name);
        assert_eq!(pool.models(), case.models, "{}", case.name);
        // Every live member carries the config it was given.
        for backend in &case.after {
            if let Some(idx) = pool.find(&backend.id) {
                let config = pool.backend(idx).unwrap();
                let first = case.after.iter().find(|b| b.id == backend.id).unwrap();
                assert_eq!(*config, *first, "{}: {}", case.name, backend.id);
                let view = pool
                    .views(Instant::now())
                    .into_iter()
                    .find(|v| v.idx == idx);
                assert_eq!(view.unwrap().drained, first.drained, "{}", case.name);
            }
        }
        // Applying the same list again changes nothing.
        assert_eq!(
            pool.reconcile(&case.after),
            ReconcileSummary::default(),
            "{}: again",
            case.name
        );
    }
}

#[test]
fn an_unchanged_backend_keeps_its_state_and_a_changed_one_starts_fresh() {
    let t0 = Instant::now();
    let a = backend("a", BackendKind::Vllm, &[M], 10);
    let c = backend("c", BackendKind::Vllm, &[M], 10);
    let pool = Pool::new(&config(vec![a.clone(), c.clone()]));
    for idx in [b(0), b(1)] {
        pool.update_signals(idx, running(5.0), t0);
        probe_n(&pool, idx, ProbeKind::Deep, false, 3, t0);
    }
    let before = pool.views(t0);
    assert!(before.iter().all(|v| v.deep == Health::Down));

    let summary = pool.reconcile(&[a.clone(), Backend { slots: 20, ..c }]);
    assert_eq!(summary.changed, ids(&["c"]));
    let after = pool.views(t0);
    let view = |id: &str| after.iter().find(|v| &*v.id == id && !v.removed).unwrap();
    assert_eq!(view("a").idx, b(0), "an unchanged backend keeps its index");
    assert_eq!(view("a").deep, Health::Down);
    assert_eq!(view("a").signals, Some(running(5.0)));
    assert_eq!(view("c").idx, b(2), "a changed backend gets a new index");
    assert_eq!(view("c").health, Health::Unknown);
    assert_eq!(view("c").signals, None);
    assert!(
        view("c").available,
        "a fresh member is usable before any probe"
    );
    assert_eq!(pool.pick(M, &[], 0, t0), Some(b(2)));
    // The old `c` had no request left: it is gone from the views.
    assert_eq!(after.len(), 2, "{after:?}");
}

#[test]
fn a_drain_from_the_admin_api_survives_a_reload_until_the_file_changes_it() {
    let t0 = Instant::now();
    let a = backend("a", BackendKind::Vllm, &[M], 10);
    let other = backend("x", BackendKind::Vllm, &["x"], 10);
    let pool = Pool::new(&config(vec![a.clone()]));
    pool.set_drained(b(0), true);
    assert_eq!(
        pool.reconcile(&[a.clone(), other.clone()]).added,
        ids(&["x"])
    );
    assert!(
        pool.views(t0)[0].drained,
        "the file said nothing new about `a`"
    );
    assert_eq!(pool.pick(M, &[], 0, t0), None);
    // The file drains it, then undrains it: the file's word wins.
    let summary = pool.reconcile(&[drained(a.clone()), other.clone()]);
    assert_eq!(summary.drain_changed, ids(&["a"]));
    assert!(pool.views(t0)[0].drained);
    let summary = pool.reconcile(&[a, other]);
    assert_eq!(summary.drain_changed, ids(&["a"]));
    assert!(!pool.views(t0)[0].drained);
    assert_eq!(pool.pick(M, &[], 0, t0), Some(b(0)));
}

#[test]
fn an_in_flight_request_on_a_removed_backend_finishes() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(2));
    let stream = pool.begin(b(0));
    let summary = pool.reconcile(&[backend("b1", BackendKind::Vllm, &[M], 10)]);
    assert_eq!(summary.removed, ids(&["b0"]));

    // The tombstone: shown while it carries the request, never picked, not in the region.
    assert_eq!(
        shown(&pool, t0),
        [("b0".to_string(), true), ("b1".to_string(), false)]
    );
    let tombstone = pool.views(t0).remove(0);
    assert_eq!((tombstone.in_flight, tombstone.available), (1, false));
    assert_picks_within(&pool, &[], &[1], t0);
    assert_eq!(pool.find("b0"), None);
    assert_eq!(pool.region_load(t0).capacity_units, 10);
    assert_eq!(pool.region_load(t0).models[0].total_backends, 1);

    // What the request path does with the index it holds still lands on the tombstone.
    assert_eq!(pool.backend(b(0)).unwrap().id.as_ref(), "b0");
    pool.record_success(b(0), Duration::from_millis(5), t0);
    let _ = pool.record_failure(b(0), Failure::IdleTimeout, t0);
    assert_eq!(pool.views(t0)[0].consecutive_failures, 1);
    assert_picks_within(&pool, &[], &[1], t0);

    drop(stream);
    assert_eq!(shown(&pool, t0), [("b1".to_string(), false)]);
    assert_eq!(pool.region_load(t0).capacity_units, 10);
}

#[test]
fn a_removed_backend_is_never_picked_whatever_its_state() {
    let t0 = Instant::now();
    let pool = Pool::new(&vllm(3));
    // Make the one to be removed the most attractive by far.
    pool.update_signals(b(1), running(9.0), t0);
    pool.update_signals(b(2), running(9.0), t0);
    let keep = [
        backend("b1", BackendKind::Vllm, &[M], 10),
        backend("b2", BackendKind::Vllm, &[M], 10),
    ];
    pool.reconcile(&keep);
    assert_picks_within(&pool, &[], &[1, 2], t0);
    assert_eq!(pool.pick(M, &[b(1), b(2)], 0, t0), None);
    // Removing the last backend of a model takes the model away.
    pool.reconcile(&keep[..1]);
    pool.reconcile(&[backend("b1", BackendKind::Vllm, &["other"], 10)]);
    assert!(!pool.serves(M));
    assert_eq!(pool.pick(M, &[], 0, t0), None);
}

#[test]
fn blue_green_add_v2_drain_v1_remove_v1() {
    let t0 = Instant::now();
    let v1 = backend("v1", BackendKind::Vllm, &[M], 10);
    let v2 = at(
        "http://10.0.0.2:8000",
        backend("v2", BackendKind::Vllm, &[M], 10),
    );
    let pool = Pool::new(&config(vec![v1.clone()]));
    let mut changes = pool.changes();
    changes.borrow_and_update();
    let stream_on_v1 = pool.begin(b(0));

    // 1. v2 joins, v1 drains: new work goes to v2 only, v1 keeps its stream.
    let summary = pool.reconcile(&[drained(v1.clone()), v2.clone()]);
    assert_eq!(summary.added, ids(&["v2"]));
    assert_eq!(summary.drain_changed, ids(&["v1"]));
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    assert_picks_within(&pool, &[], &[1], t0);
    assert_eq!(pool.models(), [M]);
    assert_eq!(pool.views(t0)[0].in_flight, 1);

    // 2. v1 goes while its stream still runs.
    let summary = pool.reconcile(std::slice::from_ref(&v2));
    assert_eq!(summary.removed, ids(&["v1"]));
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    assert_eq!(live_ids(&pool), ["v2"]);
    assert_eq!(
        shown(&pool, t0),
        [("v1".to_string(), true), ("v2".to_string(), false)]
    );
    assert_picks_within(&pool, &[], &[1], t0);
    assert_eq!(pool.models(), [M]);

    // 3. The stream ends: only v2 is left anywhere.
    drop(stream_on_v1);
    assert_eq!(shown(&pool, t0), [("v2".to_string(), false)]);

    // A reload that changes nothing does not wake the prober.
    assert_eq!(pool.reconcile(&[v2]), ReconcileSummary::default());
    assert!(!changes.has_changed().unwrap());
}

#[test]
fn discovered_models_follow_their_member() {
    let mut d = backend("d", BackendKind::Ollama, &[], 2);
    d.models = ModelSource::Discover;
    let pool = Pool::new(&config(vec![d.clone()]));
    assert!(pool.update_models(b(0), vec!["qwen".into()]));
    // Unchanged through a reload that touches another backend.
    pool.reconcile(&[d.clone(), backend("v", BackendKind::Vllm, &[M], 4)]);
    assert_eq!(pool.models(), [M, "qwen"]);
    // Replaced: the new member has discovered nothing yet.
    pool.reconcile(&[
        Backend { slots: 3, ..d },
        backend("v", BackendKind::Vllm, &[M], 4),
    ]);
    assert_eq!(pool.models(), [M]);
    assert!(
        !pool.update_models(b(0), vec!["late".into()]),
        "a tombstone's late discovery is dropped"
    );
    assert!(!pool.serves("late"));
    assert!(pool.update_models(b(2), vec!["qwen".into()]));
    assert_eq!(pool.models(), [M, "qwen"]);
}

#[test]
fn indices_are_reused_only_when_all_are_taken_and_only_from_finished_tombstones() {
    let t0 = Instant::now();
    let v = |id: &str| backend(id, BackendKind::Vllm, &[M], 4);
    let pool = Pool::with_index_limit(&config(vec![v("a"), v("b")]), 3);
    let on_a = pool.begin(b(0));
    pool.reconcile(&[v("b"), v("c")]); // a → tombstone at 0 (streaming), c at 2
    assert_eq!(pool.find("c"), Some(b(2)));
    pool.reconcile(&[v("c")]); // b → tombstone at 1 (finished)

    // Full: the finished tombstone's index is taken, the streaming one is not.
    let summary = pool.reconcile(&[v("c"), v("d"), v("e")]);
    assert_eq!(summary.added, ids(&["d"]));
    assert_eq!(summary.no_room, ids(&["e"]));
    assert_eq!(pool.find("d"), Some(b(1)));
    assert_eq!(pool.backend(b(0)).unwrap().id.as_ref(), "a");
    let incarnations: HashSet<u64> = pool.live().iter().map(|l| l.incarnation).collect();
    assert_eq!(incarnations.len(), 2);

    // A changed backend with no index left keeps running as it was.
    let summary = pool.reconcile(&[Backend { slots: 8, ..v("c") }, v("d")]);
    assert_eq!(summary.no_room, ids(&["c"]));
    assert_eq!(pool.backend(b(2)).unwrap().slots, 4);
    assert_picks_within(&pool, &[], &[1, 2], t0);

    drop(on_a);
    let summary = pool.reconcile(&[v("c"), v("d"), v("e")]);
    assert_eq!(summary.added, ids(&["e"]));
    assert_eq!(pool.find("e"), Some(b(0)));
}

/// One backend of a generated config: a few ids, each in a few shapes.
fn generated_backend() -> impl Strategy<Value = Backend> {
    (0u8..5, 0u8..3, any::<bool>(), 1u32..3).prop_map(|(id, model, drained, slots)| Backend {
        drained,
        ..backend(
            &format!("g{id}"),
            BackendKind::Vllm,
            &[["m0", "m1", "m2"][usize::from(model)]],
            slots,
        )
    })
}

proptest! {
    #[test]
    fn reconcile_always_ends_at_the_new_list(
        configs in prop::collection::vec(prop::collection::vec(generated_backend(), 0..6), 1..6),
        streams in prop::collection::vec(0u16..40, 0..6),
        seed in any::<u64>(),
    ) {
        let t0 = Instant::now();
        let pool = Pool::new(&config(Vec::new()));
        let mut guards = Vec::new();
        for backends in &configs {
            // Some requests in flight somewhere, so tombstones linger.
            for &s in &streams {
                if pool.backend(BackendIdx(s)).is_some() {
                    guards.push(pool.begin(BackendIdx(s)));
                }
            }
            pool.reconcile(backends);
            // The first of each id is what is live, with that config.
            let mut expected: Vec<&Backend> = Vec::new();
            for b in backends {
                if !expected.iter().any(|e| e.id == b.id) {
                    expected.push(b);
                }
            }
            let live = pool.live();
            prop_assert_eq!(live.len(), expected.len());
            for e in &expected {
                let idx = pool.find(&e.id);
                prop_assert!(idx.is_some());
                let config = pool.backend(idx.unwrap()).unwrap();
                prop_assert_eq!(&*config, *e);
            }
            let mut models: Vec<String> = expected
                .iter()
                .flat_map(|e| match &e.models {
                    ModelSource::Declared(m) => m.clone(),
                    ModelSource::Discover => Vec::new(),
                })
                .collect();
            models.sort();
            models.dedup();
            prop_assert_eq!(pool.models(), models.clone());
            // Picks land on live, undrained members of the model only.
            for model in &models {
                if let Some(p) = pool.pick(model, &[], seed, t0) {
                    let config = pool.backend(p).unwrap();
                    prop_assert!(live.iter().any(|l| l.idx == p));
                    prop_assert!(!config.drained);
                    prop_assert!(matches!(&config.models, ModelSource::Declared(m) if m.contains(model)));
                }
            }
            // Views: every live member, plus removed ones only while something runs there.
            for view in pool.views(t0) {
                prop_assert!(!view.removed || view.in_flight > 0);
                prop_assert_eq!(view.removed, !live.iter().any(|l| l.idx == view.idx));
            }
            prop_assert_eq!(
                pool.region_load(t0).capacity_units,
                expected.iter().map(|e| u64::from(e.capacity)).sum::<u64>()
            );
        }
        drop(guards);
        prop_assert_eq!(pool.views(t0).len(), pool.live().len());
    }
}

#[test]
fn the_first_scrape_is_awaited_only_from_backends_that_publish_signals() {
    let t0 = Instant::now();
    let ollama = backend("ollama", BackendKind::Ollama, &[M], 4);
    let drained = Backend {
        drained: true,
        ..backend("drained", BackendKind::Vllm, &[M], 10)
    };
    let pool = Pool::new(&config(vec![
        backend("v0", BackendKind::Vllm, &[M], 10),
        backend("v1", BackendKind::Vllm, &[M], 10),
        ollama,
        drained,
    ]));
    assert!(pool.awaiting_first_scrape(), "nothing scraped yet");
    pool.update_signals(b(0), running(1.0), t0);
    assert!(pool.awaiting_first_scrape(), "v1 not scraped yet");
    pool.update_signals(b(1), running(1.0), t0);
    // Ollama publishes nothing (its in-flight count is always fresh) and a drained backend
    // adds no headroom either way: neither is waited for.
    assert!(!pool.awaiting_first_scrape());
    let only_ollama = Pool::new(&config(vec![backend(
        "ollama",
        BackendKind::Ollama,
        &[M],
        4,
    )]));
    assert!(!only_ollama.awaiting_first_scrape());
}
