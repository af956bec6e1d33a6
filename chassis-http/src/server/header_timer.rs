//! [`HeaderReadTimer`]: the timer behind the HTTP/1 header-read timeout, coarse and cheap.
//!
//! hyper enforces `header_read_timeout` with a fresh timer for every request head: on a
//! keep-alive connection it creates a sleep when it starts reading the next head, polls it while
//! the head has not arrived, and drops it once the head is parsed. With hyper-util's
//! `TokioTimer` each of those is a tokio `Sleep`: a runtime-handle lookup, a timer-wheel insert
//! and remove under the driver's lock, about 500 instructions per request for a timer that
//! almost never fires (a 30 s limit on heads that arrive in microseconds).
//!
//! This timer keeps its sleeps in one slot list instead: registering is a push under an
//! uncontended mutex, dropping marks the slot free, and a sweeper task wakes the expired ones a
//! few times per timeout (every `timeout / 8`, at most every 250 ms). A head that never
//! completes is therefore cut off between the timeout and the timeout plus one tick, which is
//! what slowloris protection needs; nothing else in the server uses this timer (HTTP/2 keeps
//! tokio's).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A hyper [`Timer`](hyper::rt::Timer) with coarse sleeps; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderReadTimer {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Slot>,
    free: Vec<usize>,
}

#[derive(Debug)]
enum Slot {
    Free,
    Waiting { deadline: Instant, waker: Waker },
    Fired,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HeaderReadTimer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// How often the sweeper should look for expired sleeps for a given timeout.
    pub(crate) fn tick_for(timeout: Duration) -> Duration {
        (timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(250))
    }

    /// Wakes the expired sleeps every `tick`, for as long as it runs (the server aborts it
    /// when it stops).
    pub(crate) async fn sweep(self, tick: Duration) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.fire_due(Instant::now());
        }
    }

    /// Marks every sleep whose deadline is at or before `now` as fired and wakes its task.
    fn fire_due(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut slots = self.shared.slots();
            for slot in &mut slots.entries {
                if matches!(slot, Slot::Waiting { deadline, .. } if *deadline <= now)
                    && let Slot::Waiting { waker, .. } = std::mem::replace(slot, Slot::Fired)
                {
                    due.push(waker);
                }
            }
        }
        // Woken outside the lock: a woken connection may poll its sleep at once.
        due.into_iter().for_each(Waker::wake);
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        let slots = self.shared.slots();
        slots.entries.len() - slots.free.len()
    }
}

impl hyper::rt::Timer for HeaderReadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeaderSleep {
            shared: Arc::clone(&self.shared),
            deadline,
            slot: None,
        })
    }
}

/// One sleep of a [`HeaderReadTimer`]: registered on its first poll, freed on drop.
#[derive(Debug)]
struct HeaderSleep {
    shared: Arc<Shared>,
    deadline: Instant,
    slot: Option<usize>,
}

impl Future for HeaderSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut slots = this.shared.slots();
        let Some(index) = this.slot else {
            let waiting = Slot::Waiting {
                deadline: this.deadline,
                waker: cx.waker().clone(),
            };
            let index = match slots.free.pop() {
                Some(index) => {
                    slots.entries[index] = waiting;
                    index
                }
                None => {
                    slots.entries.push(waiting);
                    slots.entries.len() - 1
                }
            };
            this.slot = Some(index);
            return Poll::Pending;
        };
        match &mut slots.entries[index] {
            Slot::Waiting { waker, .. } => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
                Poll::Pending
            }
            Slot::Fired | Slot::Free => Poll::Ready(()),
        }
    }
}

impl Drop for HeaderSleep {
    fn drop(&mut self) {
        if let Some(index) = self.slot {
            let mut slots = self.shared.slots();
            slots.entries[index] = Slot::Free;
            slots.free.push(index);
        }
    }
}

impl hyper::rt::Sleep for HeaderSleep {}

#[cfg(test)]
mod tests {
    use hyper::rt::Timer as _;

    use super::*;

    #[tokio::test]
    async fn a_sleep_completes_within_one_tick_after_its_deadline() {
        let timer = HeaderReadTimer::new();
        let tick = Duration::from_millis(10);
        let sweeper = tokio::spawn(timer.clone().sweep(tick));
        let start = Instant::now();
        timer.sleep(Duration::from_millis(50)).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(50) + 20 * tick, "{took:?}");
        sweeper.abort();
    }

    #[tokio::test]
    async fn dropped_sleeps_free_their_slot_for_the_next() {
        let timer = HeaderReadTimer::new();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..3 {
            let mut sleep = timer.sleep(Duration::from_secs(30));
            assert!(sleep.as_mut().poll(&mut cx).is_pending());
            assert_eq!(timer.registered(), 1);
            drop(sleep);
            assert_eq!(timer.registered(), 0);
        }
        assert_eq!(timer.shared.slots().entries.len(), 1, "the slot is reused");
    }

    #[test]
    fn only_expired_sleeps_fire() {
        let timer = HeaderReadTimer::new();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let now = Instant::now();
        let mut soon = timer.sleep_until(now + Duration::from_millis(5));
        let mut later = timer.sleep_until(now + Duration::from_secs(30));
        assert!(soon.as_mut().poll(&mut cx).is_pending());
        assert!(later.as_mut().poll(&mut cx).is_pending());
        timer.fire_due(now + Duration::from_millis(5));
        assert!(soon.as_mut().poll(&mut cx).is_ready());
        assert!(later.as_mut().poll(&mut cx).is_pending());
    }

    #[test]
    fn ticks_are_an_eighth_of_the_timeout_within_bounds() {
        assert_eq!(
            HeaderReadTimer::tick_for(Duration::from_secs(30)),
            Duration::from_millis(250)
        );
        assert_eq!(
            HeaderReadTimer::tick_for(Duration::from_millis(400)),
            Duration::from_millis(50)
        );
        assert_eq!(
            HeaderReadTimer::tick_for(Duration::from_micros(10)),
            Duration::from_millis(1)
        );
    }
}
