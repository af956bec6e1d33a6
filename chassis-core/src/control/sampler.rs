//! The live feed's one sampler per registry: snapshot, rates, one serialised frame shared by
//! every subscriber.
//!
//! The sampler runs only while someone subscribes: the first subscriber starts it, and it
//! stops at the first sample that finds nobody listening. Subscribing and stopping take the
//! same lock, so a subscriber never joins a sampler that has decided to stop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::sync::{Notify, broadcast};

use super::ControlRegistry;

/// Frames a slow subscriber may fall behind before it skips to the newest.
const BACKLOG: usize = 4;

pub(super) struct Shared {
    frames: broadcast::Sender<Arc<str>>,
    /// Whether a sampler task runs, and the frame it sent last (for new subscribers).
    state: Mutex<(bool, Option<Arc<str>>)>,
    wake: Notify,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            frames: broadcast::channel(BACKLOG).0,
            state: Mutex::new((false, None)),
            wake: Notify::new(),
        }
    }

    /// Makes a running sampler take its next sample now (after an action).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A subscriber's end of the live feed ([`ControlRegistry::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    first: Option<Arc<str>>,
    frames: broadcast::Receiver<Arc<str>>,
}

impl Subscription {
    /// The next frame (the JSON of one sample); `None` once the registry is gone. A
    /// subscriber that fell behind gets the newest frames and loses the ones in between.
    pub async fn next(&mut self) -> Option<Arc<str>> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            match self.frames.recv().await {
                Ok(frame) => return Some(frame),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

pub(super) fn subscribe(registry: &ControlRegistry) -> Subscription {
    let shared = &registry.inner.sampler;
    let mut state = shared.state.lock().expect("control sampler lock");
    let frames = shared.frames.subscribe();
    if !state.0 {
        state.0 = true;
        let interval = *registry
            .inner
            .interval
            .lock()
            .expect("control registry lock");
        tokio::spawn(run(registry.clone(), interval));
    }
    Subscription {
        first: state.1.clone(),
        frames,
    }
}

/// Counter values of the last sample, per component and counter.
type Previous = HashMap<(String, String), Map<String, Value>>;

async fn run(registry: ControlRegistry, interval: Duration) {
    let shared = &registry.inner.sampler;
    let mut previous: Previous = HashMap::new();
    let mut rates: HashMap<(String, String), Value> = HashMap::new();
    let mut previous_at: Option<Instant> = None;
    loop {
        let mut frame = registry.snapshot().await;
        let now = Instant::now();
        // A sample woken early by an action keeps the last rates: a rate over a few
        // milliseconds says nothing.
        let fresh_rates = previous_at.is_none_or(|at| now - at >= interval / 2);
        let elapsed = previous_at.map(|at| (now - at).as_secs_f64());
        if let Some(components) = frame["components"].as_array_mut() {
            for component in components {
                add_rates(component, fresh_rates, elapsed, &mut previous, &mut rates);
            }
        }
        if fresh_rates {
            previous_at = Some(now);
        }
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        frame["at"] = at.into();
        let frame: Arc<str> = frame.to_string().into();
        {
            let mut state = shared.state.lock().expect("control sampler lock");
            if shared.frames.receiver_count() == 0 {
                *state = (false, None);
                return;
            }
            state.1 = Some(frame.clone());
            let _ = shared.frames.send(frame);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shared.wake.notified() => {}
        }
    }
}

/// Puts `rates` (per second) beside the component's `counters`.
fn add_rates(
    component: &mut Value,
    fresh: bool,
    elapsed: Option<f64>,
    previous: &mut Previous,
    rates: &mut HashMap<(String, String), Value>,
) {
    let key = (
        component["kind"].as_str().unwrap_or_default().to_owned(),
        component["name"].as_str().unwrap_or_default().to_owned(),
    );
    let Some(counters) = component["state"]["counters"].as_object().cloned() else {
        return;
    };
    if fresh {
        let before = previous.insert(key.clone(), counters.clone());
        let computed: Map<String, Value> = counters
            .iter()
            .map(|(name, now)| {
                let then = before
                    .as_ref()
                    .and_then(|b| b.get(name))
                    .and_then(Value::as_u64);
                let rate = match (then, now.as_u64(), elapsed) {
                    (Some(then), Some(now), Some(secs)) if secs > 0.0 => {
                        now.saturating_sub(then) as f64 / secs
                    }
                    _ => 0.0,
                };
                (name.clone(), Value::from((rate * 100.0).round() / 100.0))
            })
            .collect();
        rates.insert(key.clone(), Value::Object(computed));
    }
    if let Some(rates) = rates.get(&key) {
        component["rates"] = rates.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerHandle};
    use serde_json::json;

    #[tokio::test(start_paused = true)]
    async fn subscribers_share_one_sampler_that_stops_when_they_leave() {
        let breaker = CircuitBreakerHandle::new(CircuitBreakerConfig::new("inventory")).unwrap();
        let control = ControlRegistry::new("orders");
        control.register_breaker(breaker.clone());

        let mut first = control.subscribe();
        let mut second = control.subscribe();
        let a = first.next().await.unwrap();
        let b = second.next().await.unwrap();
        // One sample, the same bytes for both.
        assert!(Arc::ptr_eq(&a, &b));
        let frame: Value = serde_json::from_str(&a).unwrap();
        assert_eq!(frame["service"], "orders");
        assert_eq!(frame["components"][0]["state"]["state"], "closed");

        // An action wakes the sampler: the change comes before the next interval.
        control
            .act("breaker", "inventory", "force_open", &json!({}))
            .await
            .unwrap()
            .unwrap();
        let frame: Value = serde_json::from_str(&first.next().await.unwrap()).unwrap();
        assert_eq!(frame["components"][0]["state"]["state"], "forced_open");
        assert!(frame["components"][0]["rates"]["not_permitted"].is_number());

        drop(first);
        drop(second);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!control.inner.sampler.state.lock().unwrap().0);
        // A new subscriber starts it again.
        let mut third = control.subscribe();
        assert!(third.next().await.is_some());
    }
}
