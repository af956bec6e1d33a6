//! The partitioned consumer's lane dispatcher: concurrency with per-key order.
//!
//! A consumer configured with [`ConsumerConfig::partition_by_subject`] or
//! [`ConsumerConfig::partition_by`] runs its handlers in [`ConsumerConfig::concurrency`] lanes
//! instead of on a shared pool of permits. Each lane handles one message at a time, in the
//! order the broker delivered them; a message goes to lane `lane_of(key, concurrency)` (FNV-1a
//! of the key, modulo the number of lanes), so all messages of one key are handled one after
//! the other, in arrival order, while different keys run in parallel (MassTransit's
//! `UsePartitioner` does the same).
//!
//! A message without a key goes to the least busy lane (an idle one when there is one) and
//! keeps no order with anything.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Ctx, Delivered, process};
use crate::amqp::incoming::IncomingMessage;
use crate::envelope::SUBJECT;
use crate::message::HeaderValue;

#[cfg(doc)]
use super::ConsumerConfig;

type KeyFn = dyn Fn(&IncomingMessage) -> Option<u64> + Send + Sync;

/// How a consumer partitions its messages into lanes; see [`ConsumerConfig::partition_by`].
///
/// In configuration files it is `"none"` (the default: no partitioning, handlers run
/// concurrently in any order) or `"subject"` (by the CloudEvents subject, the
/// `cloudEvents:subject` header). A key computed by a closure exists only in code; it
/// serializes as `"custom"`, which does not deserialize.
#[derive(Clone, Default)]
pub struct Partitioning(Mode);

#[derive(Clone, Default)]
enum Mode {
    #[default]
    None,
    Subject,
    Custom(Arc<KeyFn>),
}

impl Partitioning {
    /// No partitioning: the consumer's behaviour without lanes.
    pub fn none() -> Self {
        Self(Mode::None)
    }

    /// Partition by the CloudEvents subject (the `cloudEvents:subject` header, the aggregate
    /// id the outbox orders by). Messages without a subject have no key.
    pub fn subject() -> Self {
        Self(Mode::Subject)
    }

    /// Partition by the key `f` computes from each message (`None`: no key).
    pub fn by<F, K>(f: F) -> Self
    where
        F: Fn(&IncomingMessage) -> Option<K> + Send + Sync + 'static,
        K: Hash,
    {
        Self(Mode::Custom(Arc::new(move |msg| f(msg).map(|k| hash(&k)))))
    }

    /// Whether the consumer runs lanes at all.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.0, Mode::None)
    }

    /// The hash of `msg`'s key, `None` without partitioning or without a key.
    fn key_hash(&self, msg: &IncomingMessage) -> Option<u64> {
        match &self.0 {
            Mode::None => None,
            Mode::Subject => match msg.header(SUBJECT) {
                Some(HeaderValue::String(s)) => Some(hash(s.as_str())),
                _ => None,
            },
            Mode::Custom(f) => f(msg),
        }
    }
}

impl std::fmt::Debug for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Mode::None => "Partitioning::None",
            Mode::Subject => "Partitioning::Subject",
            Mode::Custom(_) => "Partitioning::Custom(..)",
        })
    }
}

impl PartialEq for Partitioning {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Mode::None, Mode::None) | (Mode::Subject, Mode::Subject) => true,
            (Mode::Custom(a), Mode::Custom(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
impl Eq for Partitioning {}

impl Serialize for Partitioning {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self.0 {
            Mode::None => "none",
            Mode::Subject => "subject",
            Mode::Custom(_) => "custom",
        })
    }
}

impl<'de> Deserialize<'de> for Partitioning {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "none" => Ok(Self::none()),
            "subject" => Ok(Self::subject()),
            other => Err(serde::de::Error::custom(format!(
                "unknown partitioning {other:?}: expected \"none\" or \"subject\" \
                 (a key computed by a closure is set in code with `partition_by`)"
            ))),
        }
    }
}

/// FNV-1a, 64 bits: stable across processes, platforms and Rust releases (unlike
/// `DefaultHasher`), so a key lands on the same lane in every replica and every run.
struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut h = Fnv1a(0xcbf2_9ce4_8422_2325);
    key.hash(&mut h);
    h.finish()
}

/// The lane (`0..lanes`) a message with partition key `key` is handled on by a consumer with
/// `lanes` lanes (its [`ConsumerConfig::concurrency`]): FNV-1a of the key's [`Hash`] bytes,
/// modulo `lanes`. A subject `"order-42"` and a closure key `"order-42".to_owned()` land on
/// the same lane. Useful to see which keys share a lane (and so wait for each other).
///
/// # Panics
/// When `lanes` is 0.
pub fn lane_of<K: Hash + ?Sized>(key: &K, lanes: usize) -> usize {
    assert!(lanes > 0, "lane_of: no lanes");
    (hash(key) % lanes as u64) as usize
}

/// The lanes of one consumer run: a bounded queue and a worker task per lane.
pub(super) struct Lanes {
    senders: Vec<mpsc::Sender<Delivered>>,
    /// Per lane: deliveries queued plus the one being handled.
    load: Arc<[AtomicUsize]>,
    partitioning: Partitioning,
    /// Where the search for the least busy lane starts, so ties rotate.
    cursor: usize,
    stop: CancellationToken,
}

impl Lanes {
    /// Starts `lanes` workers on `tracker`, each with a queue of `capacity` deliveries.
    pub(super) fn start(
        ctx: &Arc<Ctx>,
        partitioning: Partitioning,
        lanes: usize,
        capacity: usize,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let load: Arc<[AtomicUsize]> = (0..lanes).map(|_| AtomicUsize::new(0)).collect();
        let senders = (0..lanes)
            .map(|i| {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                tracker.spawn(lane(
                    Arc::clone(ctx),
                    rx,
                    Arc::clone(&load),
                    i,
                    stop.clone(),
                ));
                tx
            })
            .collect();
        Self {
            senders,
            load,
            partitioning,
            cursor: 0,
            stop,
        }
    }

    /// Queues `d` on its key's lane (or the least busy lane without a key), waiting while that
    /// lane's queue is full.
    pub(super) async fn dispatch(&mut self, d: Delivered) {
        let n = self.senders.len();
        let i = match self.partitioning.key_hash(&d.msg) {
            Some(h) => (h % n as u64) as usize,
            None => self.least_busy(),
        };
        self.load[i].fetch_add(1, Ordering::SeqCst);
        if self.senders[i].send(d).await.is_err() {
            // The lane stopped (shutdown): the delivery is dropped unacked and returns to the
            // queue when the channel closes.
            self.load[i].fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn least_busy(&mut self) -> usize {
        let n = self.senders.len();
        let start = self.cursor;
        self.cursor = (self.cursor + 1) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.load[i].load(Ordering::SeqCst))
            .unwrap_or(0)
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // Queued deliveries were not started: they go back to the broker with the channel.
        self.stop.cancel();
    }
}

async fn lane(
    ctx: Arc<Ctx>,
    mut rx: mpsc::Receiver<Delivered>,
    load: Arc<[AtomicUsize]>,
    index: usize,
    stop: CancellationToken,
) {
    loop {
        let d = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            d = rx.recv() => match d {
                Some(d) => d,
                None => break,
            },
        };
        if ctx.current_channel.load(Ordering::SeqCst) == d.channel_id {
            process(&ctx, d).await;
        } else {
            // Its channel was replaced while it waited: the ack could not go out, and the
            // broker redelivers it (in order, on the new channel), so handling it now would
            // only do the work twice.
            tracing::debug!(queue = %ctx.queue.name, lane = index, "skipping a delivery of a replaced channel");
        }
        load[index].fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::OutgoingMessage;

    fn with_subject(s: &str) -> IncomingMessage {
        IncomingMessage::from_outgoing(
            OutgoingMessage::new("x", "k", vec![]).header(SUBJECT, s.to_owned()),
        )
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // FNV-1a 64 test vectors (the `Hash` of a byte slice adds its length, so the raw
        // writer is checked here).
        let raw = |b: &[u8]| {
            let mut h = Fnv1a(0xcbf2_9ce4_8422_2325);
            h.write(b);
            h.finish()
        };
        assert_eq!(raw(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raw(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raw(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn subject_and_closure_keys_agree_and_spread() {
        let by_subject = Partitioning::subject();
        let by_closure = Partitioning::by(|m: &IncomingMessage| match m.header(SUBJECT) {
            Some(HeaderValue::String(s)) => Some(s.clone()),
            _ => None,
        });
        let mut used = std::collections::BTreeSet::new();
        for i in 0..100 {
            let key = format!("order-{i}");
            let m = with_subject(&key);
            let h = by_subject.key_hash(&m).unwrap();
            assert_eq!(Some(h), by_closure.key_hash(&m));
            assert_eq!((h % 8) as usize, lane_of(key.as_str(), 8));
            assert_eq!(lane_of(key.as_str(), 8), lane_of(&key, 8));
            used.insert(lane_of(&key, 8));
        }
        assert_eq!(used.len(), 8, "100 keys use every one of 8 lanes");
        let bare = IncomingMessage::from_outgoing(OutgoingMessage::new("x", "k", vec![]));
        assert_eq!(by_subject.key_hash(&bare), None);
        assert_eq!(Partitioning::none().key_hash(&with_subject("a")), None);
    }

    #[test]
    fn config_values() {
        #[derive(Deserialize, Serialize)]
        struct C {
            p: Partitioning,
        }
        let c: C = toml::from_str("p = \"subject\"").unwrap();
        assert_eq!(c.p, Partitioning::subject());
        let c: C = toml::from_str("p = \"none\"").unwrap();
        assert!(!c.p.is_enabled());
        let e = toml::from_str::<C>("p = \"custom\"").err().unwrap();
        assert!(e.to_string().contains("partition_by"), "{e}");
        let custom = Partitioning::by(|_m: &IncomingMessage| Some(1u8));
        assert_eq!(custom, custom.clone());
        assert_ne!(custom, Partitioning::by(|_m: &IncomingMessage| Some(1u8)));
        assert_eq!(
            toml::to_string(&C { p: custom }).unwrap().trim(),
            "p = \"custom\""
        );
    }
}
