//! The simulator's shared state and the guards that account for every request however it ends.
//!
//! One `std` mutex holds the engine (scheduler, counters, failure injector, control); it is
//! never held across an await. A request that got past admission is owned by a guard:
//! [`Queued`] until its slot comes, then [`InFlight`]. Dropping a guard — the client went away,
//! hyper dropped the body or the handler — withdraws it from the queue or frees its slot and
//! counts it cancelled, unless it was finished with another outcome first.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::{oneshot, watch};

use super::{
    Control, ControlChange, ControlError, FaultMode, SimBackendArgs, SimKind, SimStats,
    engine::{
        Admission, Counters, FailureInjector, Outcome, Scheduler, SlotId, Ticket, Timing,
        TokenSchedule,
    },
    exposition::Load,
};

/// How a queued request learns which slot it was handed.
type Grant = oneshot::Sender<SlotId>;

struct Engine {
    scheduler: Scheduler<Grant>,
    counters: Counters,
    injector: FailureInjector,
    control: Control,
}

impl Engine {
    /// Frees `slot`, handing it to the next queued request that still listens.
    fn release(&mut self, slot: SlotId) {
        let mut slot = slot;
        while let Some((grant, handed)) = self.scheduler.release(slot) {
            match grant.send(handed) {
                Ok(()) => return,
                // The waiter is gone without withdrawing (cannot happen while `Queued` holds
                // its receiver under this lock, but a leaked slot would be worse): pass it on.
                Err(returned) => slot = returned,
            }
        }
    }
}

/// What the configuration fixed at start-up.
pub struct Fixed {
    pub kind: SimKind,
    pub models: Vec<String>,
    pub default_max_tokens: u32,
}

pub struct Shared {
    pub fixed: Fixed,
    engine: Mutex<Engine>,
    /// Bumped on every change to the counters or the queue, for [`Shared::wait_for`].
    changes: watch::Sender<u64>,
    next_request_id: AtomicU64,
}

/// What to do with a request that passed validation, decided on arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `unavailable-before-body`: 503 with `Retry-After`.
    Unavailable,
    /// The failure rate picked this one: 500.
    InjectedError,
    /// Serve it, under this fault (never `UnavailableBeforeBody`).
    Serve(FaultMode),
}

impl Shared {
    pub fn new(args: &SimBackendArgs) -> Shared {
        Shared {
            fixed: Fixed {
                kind: args.kind,
                models: args.models.clone(),
                default_max_tokens: args.max_tokens,
            },
            engine: Mutex::new(Engine {
                scheduler: Scheduler::new(args.slots, args.queue_limit),
                counters: Counters::default(),
                injector: FailureInjector::default(),
                control: Control {
                    fault: args.fault,
                    fail_rate: args.fail_rate,
                    ttft_ms: args.ttft_ms,
                    tokens_per_s: args.tokens_per_s,
                },
            }),
            changes: watch::channel(0).0,
            next_request_id: AtomicU64::new(1),
        }
    }

    /// A poisoned lock only means another request panicked mid-update; the counters are still
    /// the best numbers there are.
    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    fn update<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        let result = f(&mut self.engine());
        self.changed();
        result
    }

    pub fn request_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn received(&self) {
        self.update(|engine| engine.counters.received());
    }

    pub fn ended(&self, outcome: Outcome) {
        self.update(|engine| engine.counters.ended(outcome));
    }

    pub fn stats(&self) -> SimStats {
        let engine = self.engine();
        engine.counters.stats(&engine.scheduler)
    }

    pub fn load(&self) -> Load {
        let engine = self.engine();
        Load {
            running: engine.scheduler.running(),
            waiting: engine.scheduler.waiting(),
            busy_slots: engine.scheduler.busy_slots().to_vec(),
        }
    }

    pub fn control(&self) -> Control {
        self.engine().control
    }

    pub fn change_control(&self, change: ControlChange) -> Result<Control, ControlError> {
        let mut engine = self.engine();
        engine.control = engine.control.apply(change)?;
        Ok(engine.control)
    }

    /// Decides how to treat a valid request, counting it failed when a fault refuses it.
    pub fn verdict(&self) -> Verdict {
        self.update(|engine| {
            let control = engine.control;
            let verdict = if control.fault == FaultMode::UnavailableBeforeBody {
                Verdict::Unavailable
            } else if engine.injector.next_fails(control.fail_rate) {
                Verdict::InjectedError
            } else {
                Verdict::Serve(control.fault)
            };
            if verdict != Verdict::Serve(control.fault) {
                engine.counters.ended(Outcome::Failed);
            }
            verdict
        })
    }

    /// Asks for a slot. `None` when the queue is full (counted as rejected).
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let (grant, granted) = oneshot::channel();
        self.update(|engine| match engine.scheduler.admit(grant) {
            Admission::Running(slot) => Some(Admitted::Running(InFlight::new(
                self.clone(),
                Some(slot),
                engine.control,
            ))),
            Admission::Queued(ticket) => Some(Admitted::Queued(Queued {
                shared: self.clone(),
                ticket,
                granted,
                waiting: true,
            })),
            Admission::QueueFull => {
                engine.counters.ended(Outcome::Rejected);
                None
            }
        })
    }

    /// A request served without a slot (`hang-after-headers`), still counted when it ends.
    pub fn unslotted(self: &Arc<Self>) -> InFlight {
        let control = self.control();
        InFlight::new(self.clone(), None, control)
    }

    pub async fn wait_for(&self, mut done: impl FnMut(&SimStats) -> bool) -> SimStats {
        // Subscribing before reading means no change between the read and the wait is missed.
        let mut changes = self.changes.subscribe();
        loop {
            let stats = self.stats();
            if done(&stats) {
                return stats;
            }
            if changes.changed().await.is_err() {
                // `self` owns the sender, so this cannot happen; never spin if it does.
                return std::future::pending().await;
            }
        }
    }
}

/// A request past admission: running, or queued for a slot.
pub enum Admitted {
    Running(InFlight),
    Queued(Queued),
}

impl Admitted {
    /// Waits for the slot. Dropping this future while queued withdraws the request.
    pub async fn into_running(self) -> InFlight {
        match self {
            Admitted::Running(in_flight) => in_flight,
            Admitted::Queued(queued) => queued.granted().await,
        }
    }
}

/// A request waiting in the queue. Dropped before its slot comes: withdrawn, cancelled.
pub struct Queued {
    shared: Arc<Shared>,
    ticket: Ticket,
    granted: oneshot::Receiver<SlotId>,
    waiting: bool,
}

impl Queued {
    async fn granted(mut self) -> InFlight {
        let slot = match (&mut self.granted).await {
            Ok(slot) => slot,
            // The scheduler dropped the grant without sending: only when the whole state goes
            // away, and then nobody will ever answer.
            Err(_) => std::future::pending().await,
        };
        self.waiting = false;
        let control = self.shared.control();
        InFlight::new(self.shared.clone(), Some(slot), control)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if !self.waiting {
            return;
        }
        let granted = &mut self.granted;
        let ticket = self.ticket;
        self.shared.update(|engine| {
            if !engine.scheduler.withdraw(ticket) {
                // Handed a slot between the last poll and now: the slot is ours to give back.
                if let Ok(slot) = granted.try_recv() {
                    engine.release(slot);
                }
            }
            engine.counters.ended(Outcome::Cancelled);
        });
    }
}

/// A request that holds a slot (or, hanging after headers, none) until it is dropped. It ends
/// cancelled unless [`InFlight::finish`] says otherwise.
pub struct InFlight {
    shared: Arc<Shared>,
    slot: Option<SlotId>,
    /// Read when the slot was granted: a control change applies from the next grant.
    timing: Timing,
    granted_at: Instant,
    outcome: Outcome,
}

impl InFlight {
    fn new(shared: Arc<Shared>, slot: Option<SlotId>, control: Control) -> InFlight {
        InFlight {
            shared,
            slot,
            timing: Timing::new(control.ttft_ms, control.tokens_per_s),
            granted_at: Instant::now(),
            outcome: Outcome::Cancelled,
        }
    }

    /// When each of `tokens` tokens is due, counted from getting the slot.
    pub fn schedule(&self, tokens: u32) -> TokenSchedule {
        TokenSchedule::new(self.granted_at, self.timing, tokens)
    }

    /// Ends the request with `outcome` and frees its slot.
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let slot = self.slot;
        let outcome = self.outcome;
        self.shared.update(|engine| {
            if let Some(slot) = slot {
                engine.release(slot);
            }
            engine.counters.ended(outcome);
        });
    }
}
