//! The faults and their schedule.
//!
//! A round is every fault once: each of the six services killed (`SIGKILL`, then started again
//! on the same port with the same database file or ledger) and the broker restarted (the whole
//! node stopped and started again; its durable queues and persistent messages come back). The
//! order within a round is a seeded shuffle, so a seed replays the same schedule; the gaps
//! between faults are seeded too.

use std::fmt;
use std::time::Duration;

use rand::Rng as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// `SIGKILL` a service, wait `downtime`, start it again and wait until it is ready.
    Kill(&'static str),
    /// Stop the RabbitMQ node, wait `downtime`, start it again.
    BrokerRestart,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(service) => write!(f, "kill {service}"),
            Fault::BrokerRestart => f.write_str("broker restart"),
        }
    }
}

/// Every fault once, in the order the services start (the shuffle reorders them).
pub fn round() -> Vec<Fault> {
    let mut faults: Vec<Fault> = shop_launcher::SERVICES
        .iter()
        .map(|s| Fault::Kill(s))
        .collect();
    faults.push(Fault::BrokerRestart);
    faults
}

/// The seeded schedule: rounds of [`round`], each shuffled.
#[derive(Debug)]
pub struct Schedule {
    rng: StdRng,
    pending: Vec<Fault>,
    /// Mean gap between two faults.
    interval: Duration,
    /// Rounds handed out completely.
    pub rounds_done: usize,
}

impl Schedule {
    /// A schedule drawing from `rng`, with a mean gap of `interval`.
    pub fn new(rng: StdRng, interval: Duration) -> Self {
        Self {
            rng,
            pending: Vec::new(),
            interval,
            rounds_done: 0,
        }
    }

    /// The next fault (a new shuffled round when the last one is used up).
    pub fn next_fault(&mut self) -> Fault {
        if self.pending.is_empty() {
            self.pending = round();
            self.pending.shuffle(&mut self.rng);
        }
        let fault = self.pending.remove(0);
        if self.pending.is_empty() {
            self.rounds_done += 1;
        }
        fault
    }

    /// Whether the current round is complete (no fault of it left).
    pub fn round_complete(&self) -> bool {
        self.pending.is_empty()
    }

    /// The gap before the next fault: `interval` × 0.5..1.5.
    pub fn gap(&mut self) -> Duration {
        self.interval.mul_f64(self.rng.random_range(0.5..1.5))
    }

    /// How long the victim stays down: 0.2..2 s for a service, 1..3 s for the broker.
    pub fn downtime(&mut self, fault: Fault) -> Duration {
        let ms = match fault {
            Fault::Kill(_) => self.rng.random_range(200..2000),
            Fault::BrokerRestart => self.rng.random_range(1000..3000),
        };
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn each_round_has_every_fault_once_and_a_seed_replays_it() {
        let mut a = Schedule::new(StdRng::seed_from_u64(7), Duration::from_secs(1));
        let mut b = Schedule::new(StdRng::seed_from_u64(7), Duration::from_secs(1));
        let first: Vec<Fault> = (0..7).map(|_| a.next_fault()).collect();
        assert!(a.round_complete());
        assert_eq!(a.rounds_done, 1);
        let mut sorted = first.clone();
        sorted.sort();
        let mut all = round();
        all.sort();
        assert_eq!(sorted, all);
        let replay: Vec<Fault> = (0..7).map(|_| b.next_fault()).collect();
        assert_eq!(first, replay);
        assert_eq!(Fault::Kill("orders").to_string(), "kill orders");
    }
}
