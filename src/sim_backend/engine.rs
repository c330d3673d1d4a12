//! The simulated inference engine's decisions: batch slots and the FIFO queue in front of them,
//! the token schedule of one generation, injected failures, and the outcome counters.
//!
//! Everything here is plain data driven by the HTTP shell (`super::http`): no IO, no clock, no
//! locks. Time comes in as an `Instant` the caller read, so the tables below can say exactly
//! when each token is due.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// The most tokens one request may ask for: bounds how long a slot can be held.
pub const MAX_TOKENS_CAP: u32 = 4096;

/// How many tokens a `die-mid-stream` generation produces before the connection is cut.
pub const TOKENS_BEFORE_DEATH: u32 = 3;

/// One of the engine's batch slots (llama.cpp numbers them in `/slots`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId(pub u32);

/// A place in the queue, to withdraw it when the client leaves before its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

/// What happened to a request that asked for a slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// A slot was free: the request runs in it from now on.
    Running(SlotId),
    /// Every slot is busy: the request waits its turn. A slot freed later is handed straight to
    /// the head of the queue (see [`Scheduler::release`]).
    Queued(Ticket),
    /// The queue is at its limit: the request is refused (the server answers 503).
    QueueFull,
}

/// Bounded batch slots with a bounded FIFO queue in front, the way vLLM's scheduler looks from
/// outside. `W` is whatever the shell needs to wake a queued request when its slot comes.
#[derive(Debug)]
pub struct Scheduler<W> {
    /// `true` where the slot runs a generation.
    busy: Vec<bool>,
    queue_limit: usize,
    queue: VecDeque<(Ticket, W)>,
    next_ticket: u64,
    max_running_seen: u32,
}

impl<W> Scheduler<W> {
    /// `slots` below 1 is taken as 1: an engine without a slot could never answer.
    pub fn new(slots: u32, queue_limit: u32) -> Self {
        Scheduler {
            busy: vec![false; slots.max(1) as usize],
            queue_limit: queue_limit as usize,
            queue: VecDeque::new(),
            next_ticket: 0,
            max_running_seen: 0,
        }
    }

    /// Gives the request a free slot, or a place in the queue, or refuses it. `waiter` is kept
    /// only when the request is queued.
    pub fn admit(&mut self, waiter: W) -> Admission {
        if let Some(slot) = self.take_free_slot() {
            return Admission::Running(slot);
        }
        if self.queue.len() >= self.queue_limit {
            return Admission::QueueFull;
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.queue.push_back((ticket, waiter));
        Admission::Queued(ticket)
    }

    /// Frees `slot`. If a request waits, the slot passes straight to the head of the queue
    /// (FIFO, no barging by newer arrivals) and its waiter is returned for the shell to wake.
    pub fn release(&mut self, slot: SlotId) -> Option<(W, SlotId)> {
        let index = slot.0 as usize;
        if !self.busy.get(index).copied().unwrap_or(false) {
            // Releasing a slot twice would let two generations share it later.
            debug_assert!(false, "released slot {index} that was not busy");
            return None;
        }
        match self.queue.pop_front() {
            Some((_, waiter)) => Some((waiter, slot)),
            None => {
                self.busy[index] = false;
                None
            }
        }
    }

    /// Takes a queued request out of the queue (its client left). Returns `false` when it is no
    /// longer queued: it was handed a slot already, which the caller now owns and must release.
    pub fn withdraw(&mut self, ticket: Ticket) -> bool {
        match self.queue.iter().position(|(queued, _)| *queued == ticket) {
            Some(position) => {
                self.queue.remove(position);
                true
            }
            None => false,
        }
    }

    pub fn running(&self) -> u32 {
        self.busy.iter().filter(|busy| **busy).count() as u32
    }

    pub fn waiting(&self) -> u32 {
        self.queue.len() as u32
    }

    pub fn max_running_seen(&self) -> u32 {
        self.max_running_seen
    }

    /// Which slots are generating, by slot id.
    pub fn busy_slots(&self) -> &[bool] {
        &self.busy
    }

    fn take_free_slot(&mut self) -> Option<SlotId> {
        let index = self.busy.iter().position(|busy| !busy)?;
        self.busy[index] = true;
        self.max_running_seen = self.max_running_seen.max(self.running());
        Some(SlotId(index as u32))
    }
}

/// How fast a generation goes once it has a slot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Prefill: from getting a slot to the first token.
    pub ttft: Duration,
    /// Between two tokens.
    pub inter_token: Duration,
}

impl Timing {
    /// `tokens_per_s` that is not a positive finite number means "as fast as possible".
    pub fn new(ttft_ms: u64, tokens_per_s: f64) -> Timing {
        let inter_token = if tokens_per_s.is_finite() && tokens_per_s > 0.0 {
            Duration::try_from_secs_f64(1.0 / tokens_per_s).unwrap_or(Duration::ZERO)
        } else {
            Duration::ZERO
        };
        Timing {
            ttft: Duration::from_millis(ttft_ms),
            inter_token,
        }
    }
}

/// When each token of one generation is due: the first `ttft` after the slot was granted, the
/// rest `inter_token` apart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenSchedule {
    granted_at: Instant,
    timing: Timing,
    tokens: u32,
}

impl TokenSchedule {
    pub fn new(granted_at: Instant, timing: Timing, tokens: u32) -> TokenSchedule {
        TokenSchedule {
            granted_at,
            timing,
            tokens,
        }
    }

    /// When token `index` (0-based) is due.
    pub fn due(&self, index: u32) -> Instant {
        self.granted_at + self.timing.ttft + self.timing.inter_token.saturating_mul(index)
    }

    /// When the last token is due: a non-streaming answer is sent then.
    pub fn finished_at(&self) -> Instant {
        self.due(self.tokens.saturating_sub(1))
    }
}

/// Turns a failure rate into which requests fail, deterministically: the fraction carries over
/// from one request to the next (error diffusion), so over `n` requests `floor(n·rate)` fail and
/// tests can count them exactly, with no random source.
#[derive(Clone, Debug, Default)]
pub struct FailureInjector {
    debt: f64,
}

impl FailureInjector {
    /// Whether the next request fails at `rate` (clamped to 0..=1; NaN is 0).
    pub fn next_fails(&mut self, rate: f64) -> bool {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.debt += rate;
        // The epsilon absorbs float error so that e.g. ten steps of 0.1 make exactly one failure.
        if self.debt >= 1.0 - 1e-9 {
            self.debt = (self.debt - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}

/// How a request that got past validation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The whole answer was handed to the connection.
    Completed,
    /// The client went away first (while queued, generating, or hanging).
    Cancelled,
    /// An injected failure: `fail-rate` 500, `unavailable-before-body` 503, `die-mid-stream`.
    Failed,
    /// Refused because the queue was full (503).
    Rejected,
    /// The request itself was wrong: bad JSON, unknown model, too large (4xx).
    Invalid,
}

/// What `GET /sim/stats` returns, so tests can assert what the backend saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests to the generation and embedding endpoints, counted on arrival.
    pub received: u64,
    pub completed: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub rejected: u64,
    pub invalid: u64,
    pub running: u32,
    pub waiting: u32,
    pub max_running_seen: u32,
}

/// The outcome counters, bumped by the shell as requests end.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    received: u64,
    completed: u64,
    cancelled: u64,
    failed: u64,
    rejected: u64,
    invalid: u64,
}

impl Counters {
    pub fn received(&mut self) {
        self.received += 1;
    }

    pub fn ended(&mut self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Completed => &mut self.completed,
            Outcome::Cancelled => &mut self.cancelled,
            Outcome::Failed => &mut self.failed,
            Outcome::Rejected => &mut self.rejected,
            Outcome::Invalid => &mut self.invalid,
        };
        *counter += 1;
    }

    pub fn stats<W>(&self, scheduler: &Scheduler<W>) -> SimStats {
        SimStats {
            received: self.received,
            completed: self.completed,
            cancelled: self.cancelled,
            failed: self.failed,
            rejected: self.rejected,
            invalid: self.invalid,
            running: scheduler.running(),
            waiting: scheduler.waiting(),
            max_running_seen: scheduler.max_running_seen(),
        }
    }
}

/// The tokens a request gets: what it asked for (or the server default), capped at
/// [`MAX_TOKENS_CAP`]. Zero is the caller's error, checked where the request is parsed.
pub fn effective_max_tokens(requested: Option<u32>, default: u32) -> u32 {
    requested.unwrap_or(default).clamp(1, MAX_TOKENS_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[derive(Clone, Copy, Debug)]
    enum Step {
        Admit(&'static str),
        Release(u32),
        Withdraw(u64),
    }

    #[derive(Debug, PartialEq)]
    enum Seen {
        Admission(Admission),
        Handed(Option<(&'static str, SlotId)>),
        Withdrawn(bool),
    }

    #[test]
    fn scheduler_table() {
        use Step::*;
        // (name, slots, queue limit, steps, what each step saw, (running, waiting, max seen))
        type Case = (
            &'static str,
            u32,
            u32,
            &'static [Step],
            &'static [Seen],
            (u32, u32, u32),
        );
        let cases: &[Case] = &[
            (
                "free slots are taken lowest first",
                2,
                4,
                &[Admit("a"), Admit("b")],
                &[
                    Seen::Admission(Admission::Running(SlotId(0))),
                    Seen::Admission(Admission::Running(SlotId(1))),
                ],
                (2, 0, 2),
            ),
            (
                "beyond the slots requests queue, beyond the queue they are refused",
                1,
                1,
                &[Admit("a"), Admit("b"), Admit("c")],
                &[
                    Seen::Admission(Admission::Running(SlotId(0))),
                    Seen::Admission(Admission::Queued(Ticket(0))),
                    Seen::Admission(Admission::QueueFull),
                ],
                (1, 1, 1),
            ),
            (
                "a freed slot goes to the head of the queue, FIFO",
                1,
                4,
                &[Admit("a"), Admit("b"), Admit("c"), Release(0), Release(0)],
                &[
                    Seen::Admission(Admission::Running(SlotId(0))),
                    Seen::Admission(Admission::Queued(Ticket(0))),
                    Seen::Admission(Admission::Queued(Ticket(1))),
                    Seen::Handed(Some(("b", SlotId(0)))),
                    Seen::Handed(Some(("c", SlotId(0)))),
                ],
                (1, 0, 1),
            ),
            (
                "a withdrawn request is never handed a slot",
                1,
                4,
                &[Admit("a"), Admit("b"), Admit("c"), Withdraw(0), Release(0)],
                &[
                    Seen::Admission(Admission::Running(SlotId(0))),
                    Seen::Admission(Admission::Queued(Ticket(0))),
                    Seen::Admission(Admission::Queued(Ticket(1))),
                    Seen::Withdrawn(true),
                    Seen::Handed(Some(("c", SlotId(0)))),
                ],
                (1, 0, 1),
            ),
            (
                "withdrawing after the slot was handed over says so",
                1,
                4,
                &[Admit("a"), Admit("b"), Release(0), Withdraw(0)],
                &[
                    Seen::Admission(Admission::Running(SlotId(0))),
                    Seen::Admission(Admission::Queued(Ticket(0))),
                    Seen::Handed(Some(("b", SlotId(0)))),
                    Seen::Withdrawn(false),
                ],
                (1, 0, 1),
            ),
            (
                "releasing with nobody waiting frees the slot for the next arrival",
                2,
                0,
                &[Admit("a"), Admit("b"), Release(0), Admit("c"), Admit("d")],
                &[
                    Seen::Admission(Admission::Running(SlotId(0))),
                    Seen::Admission(Admission::Running(SlotId(1))),
                    Seen::Handed(None),
                    Seen::Admission(Admission::Running(SlotId(0))),
                    Seen::Admission(Admission::QueueFull),
                ],
                (2, 0, 2),
            ),
            (
                "zero slots is one slot",
                0,
                0,
                &[Admit("a"), Admit("b")],
                &[
                    Seen::Admission(Admission::Running(SlotId(0))),
                    Seen::Admission(Admission::QueueFull),
                ],
                (1, 0, 1),
            ),
        ];
        for (name, slots, queue_limit, steps, expected, (running, waiting, max_seen)) in cases {
            let mut scheduler = Scheduler::new(*slots, *queue_limit);
            let seen: Vec<Seen> = steps
                .iter()
                .map(|step| match *step {
                    Admit(waiter) => Seen::Admission(scheduler.admit(waiter)),
                    Release(slot) => Seen::Handed(scheduler.release(SlotId(slot))),
                    Withdraw(ticket) => Seen::Withdrawn(scheduler.withdraw(Ticket(ticket))),
                })
                .collect();
            assert_eq!(&seen, expected, "{name}");
            assert_eq!(
                (
                    scheduler.running(),
                    scheduler.waiting(),
                    scheduler.max_running_seen()
                ),
                (*running, *waiting, *max_seen),
                "{name}"
            );
        }
    }

    proptest! {
        /// Whatever arrives and leaves, running never exceeds the slots, the queue never exceeds
        /// its limit, and nobody waits while a slot is free.
        #[test]
        fn scheduler_bounds(slots in 1u32..4, limit in 0u32..4, ops in prop::collection::vec(0u8..3, 0..64)) {
            let mut scheduler = Scheduler::new(slots, limit);
            let mut running: Vec<SlotId> = Vec::new();
            let mut queued: Vec<Ticket> = Vec::new();
            for op in ops {
                match op {
                    0 => match scheduler.admit(()) {
                        Admission::Running(slot) => running.push(slot),
                        Admission::Queued(ticket) => queued.push(ticket),
                        Admission::QueueFull => {}
                    },
                    1 => if let Some(slot) = running.pop()
                        && let Some(((), handed)) = scheduler.release(slot)
                    {
                        // The handed slot now runs the oldest queued request.
                        queued.remove(0);
                        running.push(handed);
                    },
                    _ => if let Some(ticket) = queued.pop() {
                        prop_assert!(scheduler.withdraw(ticket));
                    },
                }
                prop_assert!(scheduler.running() <= slots);
                prop_assert!(scheduler.waiting() <= limit);
                prop_assert_eq!(scheduler.running() as usize, running.len());
                prop_assert_eq!(scheduler.waiting() as usize, queued.len());
                prop_assert!(scheduler.waiting() == 0 || scheduler.running() == slots);
                prop_assert!(scheduler.max_running_seen() >= scheduler.running());
            }
        }
    }

    #[test]
    fn token_schedule_table() {
        let base = Instant::now();
        let ms = Duration::from_millis;
        // (ttft ms, tokens/s, tokens, due(1) ms, finished at ms)
        let cases: &[(u64, f64, u32, u64, u64)] = &[
            (50, 10.0, 4, 150, 350),
            (0, 2.0, 3, 500, 1000),
            (20, 4.0, 2, 270, 270),
            // Not a positive rate: as fast as possible (the flags refuse it anyway).
            (20, f64::INFINITY, 5, 20, 20),
            (20, 0.0, 5, 20, 20),
            (0, 1000.0, 1, 1, 0),
            (7, 1.0, 0, 1007, 7),
        ];
        for &(ttft, rate, tokens, due1, finished) in cases {
            let schedule = TokenSchedule::new(base, Timing::new(ttft, rate), tokens);
            let case = (ttft, rate, tokens);
            assert_eq!(schedule.due(0), base + ms(ttft), "{case:?}");
            assert_eq!(schedule.due(1), base + ms(due1), "{case:?}");
            assert_eq!(schedule.finished_at(), base + ms(finished), "{case:?}");
        }
    }

    proptest! {
        /// Tokens are due in order, none before the prefill, the last one when it finishes.
        #[test]
        fn token_schedule_is_monotonic(ttft in 0u64..500, rate in 0.5f64..10_000.0, tokens in 1u32..64) {
            let base = Instant::now();
            let schedule = TokenSchedule::new(base, Timing::new(ttft, rate), tokens);
            prop_assert_eq!(schedule.due(0), base + Duration::from_millis(ttft));
            for index in 1..tokens {
                prop_assert!(schedule.due(index) > schedule.due(index - 1));
            }
            prop_assert_eq!(schedule.finished_at(), schedule.due(tokens - 1));
        }
    }

    #[test]
    fn failure_injection_table() {
        // (rate, requests, which fail)
        let cases: &[(f64, usize, &[usize])] = &[
            (0.0, 5, &[]),
            (1.0, 3, &[0, 1, 2]),
            (0.5, 6, &[1, 3, 5]),
            (0.25, 8, &[3, 7]),
            (0.1, 10, &[9]),
            (f64::NAN, 4, &[]),
            (7.0, 2, &[0, 1]),
            (-1.0, 2, &[]),
        ];
        for &(rate, requests, failing) in cases {
            let mut injector = FailureInjector::default();
            let failed: Vec<usize> = (0..requests)
                .filter(|_| injector.next_fails(rate))
                .collect();
            assert_eq!(failed, failing, "rate {rate}");
        }
    }

    proptest! {
        #[test]
        fn failure_fraction_is_exact(rate in 0.0f64..=1.0, requests in 0usize..500) {
            let mut injector = FailureInjector::default();
            let failed = (0..requests).filter(|_| injector.next_fails(rate)).count() as f64;
            let expected = requests as f64 * rate;
            prop_assert!((failed - expected).abs() <= 1.0, "{failed} vs {expected}");
        }
    }

    #[test]
    fn max_tokens_table() {
        let cases = [
            (None, 16, 16),
            (Some(5), 16, 5),
            (Some(100_000), 16, MAX_TOKENS_CAP),
            (None, 100_000, MAX_TOKENS_CAP),
            (None, 0, 1),
        ];
        for (requested, default, expected) in cases {
            assert_eq!(
                effective_max_tokens(requested, default),
                expected,
                "{requested:?} {default}"
            );
        }
    }

    #[test]
    fn counters_count_each_outcome_once() {
        let mut counters = Counters::default();
        let scheduler: Scheduler<()> = Scheduler::new(1, 1);
        for outcome in [
            Outcome::Completed,
            Outcome::Cancelled,
            Outcome::Cancelled,
            Outcome::Failed,
            Outcome::Rejected,
            Outcome::Invalid,
        ] {
            counters.received();
            counters.ended(outcome);
        }
        let stats = counters.stats(&scheduler);
        assert_eq!(
            stats,
            SimStats {
                received: 6,
                completed: 1,
                cancelled: 2,
                failed: 1,
                rejected: 1,
                invalid: 1,
                running: 0,
                waiting: 0,
                max_running_seen: 0,
            }
        );
    }
}
