use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
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
            max_queue_per_slot: 1.0,
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
        let score = load_score(*slots, *in_flight, signals.as_ref());
        assert!(
            (score - expected).abs() < 1e-9,
            "{name}: {score} != {expected}"
        );
    }
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
