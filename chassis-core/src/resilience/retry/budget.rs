//! [`RetryBudget`]: a lock-free retry budget with the semantics of tower's `TpsBudget`.
//!
//! Every call deposits, every retry withdraws; retries may spend what the calls of the last
//! `ttl` earned (`retry_ratio` per call) plus a reserve of `min_retries_per_sec × ttl`. That
//! is Finagle's budget, as tower implements it in [`tower::retry::budget::TpsBudget`].
//!
//! Written by hand because tower's version sits on every call's hot path with a mutex and a
//! clock read per deposit (it expires old slots under the lock first). Here a deposit is one
//! read of the (coarse, by default) [clock](crate::resilience::clock) and one atomic add on a
//! bucket counter of the calling thread's own stripe, so threads calling through one budget
//! never share a written cache line. Withdrawals (only on retries, i.e. failures) sum the
//! window. The window is `ttl` split in 10 slots, as in tower.
//!
//! A withdrawal checks the balance, then records itself: two threads racing for the last unit
//! may both get it, so the budget can be overdrawn by at most one retry per concurrent
//! withdrawer. Budgets bound load amplification; they are not exact quotas.

use std::fmt;

use tower::retry::budget::Budget;

use crate::resilience::clock::ClockSource;
use crate::resilience::striped::{Padded, TaggedCounter, stripe_count, stripe_index, tagged};

/// Slots per `ttl` (tower uses 10 as well).
const SLOTS: u64 = 10;

/// The deposits of one thread stripe: one tagged counter per slot.
struct Stripe {
    slots: [TaggedCounter; SLOTS as usize],
}

impl Stripe {
    fn new(slot: u64) -> Self {
        Self {
            slots: std::array::from_fn(|_| {
                TaggedCounter(std::sync::atomic::AtomicU64::new(tagged(slot)))
            }),
        }
    }
}

/// A retry budget; see the [retry module](super).
pub struct RetryBudget {
    clock: ClockSource,
    slot_nanos: u64,
    deposits: Box<[Padded<Stripe>]>,
    withdrawals: Padded<Stripe>,
    /// Units always available over one ttl.
    reserve: i64,
    /// Units one call deposits and one retry withdraws (integers, as in tower: a ratio of 0.2
    /// is "deposit 1, withdraw 5").
    deposit_amount: i64,
    withdraw_amount: i64,
}

impl RetryBudget {
    /// A budget over `ttl` (1 s to 60 s) allowing `min_per_sec` retries per second plus
    /// `retry_ratio` (0 to 1000) retries per call, reading time from `clock`.
    pub(crate) fn new(
        ttl: std::time::Duration,
        min_per_sec: u32,
        retry_ratio: f32,
        clock: ClockSource,
    ) -> Self {
        // The same integer scaling as tower's TpsBudget (from Finagle).
        let (deposit_amount, withdraw_amount) = if retry_ratio == 0.0 {
            (0, 1)
        } else if retry_ratio <= 1.0 {
            (1, (1.0 / retry_ratio) as i64)
        } else {
            (1000, (1000.0 / retry_ratio) as i64)
        };
        let ttl_secs = ttl.as_secs().max(1) as i64;
        let reserve = i64::from(min_per_sec)
            .saturating_mul(ttl_secs)
            .saturating_mul(withdraw_amount);
        let slot_nanos = (u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX) / SLOTS).max(1);
        let slot = clock.now_nanos() / slot_nanos;
        Self {
            clock,
            slot_nanos,
            deposits: (0..stripe_count())
                .map(|_| Padded(Stripe::new(slot)))
                .collect(),
            withdrawals: Padded(Stripe::new(slot)),
            reserve,
            deposit_amount,
            withdraw_amount,
        }
    }

    #[inline]
    fn slot(&self) -> u64 {
        self.clock.now_nanos() / self.slot_nanos
    }

    /// Units counted in the window ending at `slot`.
    fn sum(stripe: &Stripe, slot: u64) -> i64 {
        stripe
            .slots
            .iter()
            .map(|c| c.count_within(slot, SLOTS) as i64)
            .sum()
    }

    /// Retries the budget would allow right now.
    pub fn available_retries(&self) -> u64 {
        u64::try_from(self.balance(self.slot()) / self.withdraw_amount.max(1)).unwrap_or(0)
    }

    /// Retries spent within the budget's window (its `ttl`).
    pub fn spent_retries(&self) -> u64 {
        u64::try_from(Self::sum(&self.withdrawals, self.slot())).unwrap_or(0)
    }

    /// The balance now, in withdraw units (how many retries it allows is
    /// `balance / withdraw_amount`).
    fn balance(&self, slot: u64) -> i64 {
        let deposited: i64 = self.deposits.iter().map(|s| Self::sum(s, slot)).sum();
        let withdrawn = Self::sum(&self.withdrawals, slot);
        self.reserve
            .saturating_add(deposited.saturating_mul(self.deposit_amount))
            .saturating_sub(withdrawn.saturating_mul(self.withdraw_amount))
    }
}

impl Budget for RetryBudget {
    #[inline]
    fn deposit(&self) {
        if self.deposit_amount == 0 {
            return;
        }
        let slot = self.slot();
        let stripe = &self.deposits[stripe_index(self.deposits.len())];
        stripe.slots[(slot % SLOTS) as usize].add(slot, None);
    }

    fn withdraw(&self) -> bool {
        let slot = self.slot();
        if self.balance(slot) < self.withdraw_amount {
            return false;
        }
        self.withdrawals.slots[(slot % SLOTS) as usize].add(slot, None);
        true
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("deposit", &self.deposit_amount)
            .field("withdraw", &self.withdraw_amount)
            .field("balance", &self.balance(self.slot()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::resilience::clock::Clock;

    /// A clock the test moves by hand.
    #[derive(Debug, Default)]
    struct ManualClock(AtomicU64);

    impl Clock for ManualClock {
        fn now_nanos(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn budget(ttl_secs: u64, min: u32, ratio: f32) -> (RetryBudget, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let source = ClockSource::Custom(clock.clone());
        (
            RetryBudget::new(Duration::from_secs(ttl_secs), min, ratio, source),
            clock,
        )
    }

    fn advance(clock: &ManualClock, d: Duration) {
        clock.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }

    fn drain(b: &RetryBudget) -> usize {
        let mut n = 0;
        while b.withdraw() {
            n += 1;
            assert!(n < 1_000_000, "budget never runs out");
        }
        n
    }

    #[test]
    fn reserve_allows_min_per_sec_times_ttl() {
        let (b, _) = budget(10, 3, 0.0);
        assert_eq!(drain(&b), 30);
    }

    #[test]
    fn deposits_fund_retries_at_the_ratio() {
        let (b, _) = budget(10, 0, 0.2);
        for _ in 0..50 {
            b.deposit();
        }
        assert_eq!(drain(&b), 10);
        let (b, _) = budget(10, 0, 2.0);
        for _ in 0..5 {
            b.deposit();
        }
        assert_eq!(drain(&b), 10);
    }

    #[test]
    fn deposits_and_withdrawals_age_out_after_ttl() {
        let (b, clock) = budget(1, 0, 1.0);
        for _ in 0..4 {
            b.deposit();
        }
        assert!(b.withdraw());
        advance(&clock, Duration::from_millis(500));
        for _ in 0..2 {
            b.deposit();
        }
        assert_eq!(
            b.balance(b.slot()),
            5,
            "4 + 2 deposited, 1 withdrawn, all in the window"
        );
        advance(&clock, Duration::from_millis(600));
        // The first 4 deposits and the withdrawal left the 1 s window; the 2 later deposits stay.
        assert_eq!(drain(&b), 2);
        advance(&clock, Duration::from_secs(5));
        assert!(!b.withdraw(), "an idle window empties");
    }

    #[test]
    fn deposits_from_many_threads_all_count() {
        let (b, _) = budget(10, 0, 1.0);
        let b = Arc::new(b);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        b.deposit();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(drain(&b), 4000);
    }

    #[test]
    fn matches_tower_tps_budget_on_a_sequence() {
        // Same parameters, same operations, same answers as tower's implementation (both
        // within one slot, so the clocks do not matter).
        let ours = budget(10, 1, 0.25).0;
        let theirs = tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 1, 0.25);
        let mut answers = (Vec::new(), Vec::new());
        for i in 0..200 {
            if i % 3 == 0 {
                ours.deposit();
                theirs.deposit();
            } else {
                answers.0.push(ours.withdraw());
                answers.1.push(theirs.withdraw());
            }
        }
        assert_eq!(answers.0, answers.1);
        assert!(answers.0.contains(&true) && answers.0.contains(&false));
    }
}
