//! The retry budget: how many retries the relay may spend, so retrying can never multiply
//! the load of a region that is already failing (the retry-storm failure mode).
//!
//! A token bucket: every first attempt deposits `budget_ratio` of a retry, and
//! `min_retries_per_second` trickle in with time so a quiet relay can still retry; a retry
//! withdraws one. The bucket holds at most ten seconds' worth, so a long quiet spell cannot
//! bank a burst. Pure apart from a mutex: time comes in as `now`.

use std::{sync::Mutex, time::Instant};

use super::config::model::RetryPolicy;

pub struct RetryBudget {
    ratio: f64,
    per_second: f64,
    cap: f64,
    state: Mutex<Bucket>,
}

struct Bucket {
    balance: f64,
    last_refill: Instant,
}

impl RetryBudget {
    pub fn new(policy: &RetryPolicy, now: Instant) -> RetryBudget {
        let per_second = f64::from(policy.min_retries_per_second);
        let cap = (per_second * 10.0).max(10.0);
        RetryBudget {
            ratio: policy.budget_ratio,
            per_second,
            cap,
            state: Mutex::new(Bucket {
                balance: per_second.min(cap),
                last_refill: now,
            }),
        }
    }

    /// A first attempt was made.
    pub fn deposit(&self, now: Instant) {
        let mut bucket = self.bucket(now);
        bucket.balance = (bucket.balance + self.ratio).min(self.cap);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut bucket = self.bucket(now);
        if bucket.balance >= 1.0 {
            bucket.balance -= 1.0;
            true
        } else {
            false
        }
    }

    fn bucket(&self, now: Instant) -> std::sync::MutexGuard<'_, Bucket> {
        // The state is two numbers; a panic elsewhere cannot leave them inconsistent.
        let mut bucket = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now
            .saturating_duration_since(bucket.last_refill)
            .as_secs_f64();
        bucket.balance = (bucket.balance + elapsed * self.per_second).min(self.cap);
        bucket.last_refill = now.max(bucket.last_refill);
        bucket
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(ratio: f64, per_second: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            budget_ratio: ratio,
            min_retries_per_second: per_second,
            max_retry_after: Duration::from_secs(2),
        }
    }

    #[test]
    fn retries_are_bounded_by_the_ratio_of_requests() {
        let start = Instant::now();
        let budget = RetryBudget::new(&policy(0.2, 0), start);
        let mut allowed = 0;
        for _ in 0..1000 {
            budget.deposit(start);
            if budget.try_withdraw(start) {
                allowed += 1;
            }
        }
        // 1000 requests at 20 % allow about 200 retries, never more.
        assert!((195..=200).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_quiet_relay_gets_its_minimum_back_with_time() {
        let start = Instant::now();
        let budget = RetryBudget::new(&policy(0.0, 5), start);
        let spent = (0..100).filter(|_| budget.try_withdraw(start)).count();
        assert_eq!(spent, 5);
        assert!(!budget.try_withdraw(start));
        let later = start + Duration::from_secs(1);
        let refilled = (0..100).filter(|_| budget.try_withdraw(later)).count();
        assert_eq!(refilled, 5);
    }

    #[test]
    fn the_bucket_never_banks_more_than_its_cap() {
        let start = Instant::now();
        let budget = RetryBudget::new(&policy(0.5, 1), start);
        for _ in 0..10_000 {
            budget.deposit(start);
        }
        let much_later = start + Duration::from_secs(3600);
        let spent = (0..1000)
            .filter(|_| budget.try_withdraw(much_later))
            .count();
        assert_eq!(spent, 10);
    }
}
