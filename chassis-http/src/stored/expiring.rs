//! [`ExpiringMap`]: the bounded, expiring map behind both in-memory stores.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use tokio::time::Instant;

/// What an [`ExpiringMap`] needs of a value: its weight against the byte bound, and whether it
/// may be evicted before its time (an idempotency key's in-flight lock may not).
pub(crate) trait Held {
    /// Bytes the value counts against the bound.
    fn size(&self) -> usize;

    /// Whether the value may be dropped early to make room.
    fn evictable(&self) -> bool {
        true
    }
}

/// Entries with an expiry each, kept in expiry order so that expiring and evicting take the
/// entries closest to expiry first; tracks the bytes of what it holds. The sequence number
/// makes equal expiry instants distinct keys of the order.
pub(crate) struct ExpiringMap<K, V> {
    map: HashMap<K, ((Instant, u64), V)>,
    expiry: BTreeMap<(Instant, u64), K>,
    seq: u64,
    bytes: usize,
}

impl<K, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            expiry: BTreeMap::new(),
            seq: 0,
            bytes: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Held> ExpiringMap<K, V> {
    /// Entries held (expired ones included until [`expire`](Self::expire)).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes of the values held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(_, value)| value)
    }

    /// Holds `value` under `key` until `expires`, replacing what `key` held.
    pub(crate) fn insert(&mut self, key: K, expires: Instant, value: V) {
        self.remove(&key);
        self.seq += 1;
        let at = (expires, self.seq);
        self.bytes += value.size();
        self.expiry.insert(at, key.clone());
        self.map.insert(key, (at, value));
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let (at, value) = self.map.remove(key)?;
        self.expiry.remove(&at);
        self.bytes -= value.size();
        Some(value)
    }

    /// Drops every entry expired at `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some((_, value)) = self.map.remove(&key) {
                self.bytes -= value.size();
            }
        }
    }

    /// Drops the evictable entry closest to expiry; `false` if no entry is evictable.
    pub(crate) fn evict_one(&mut self) -> bool {
        let victim = self
            .expiry
            .values()
            .find(|key| self.map.get(*key).is_some_and(|(_, v)| v.evictable()))
            .cloned();
        match victim {
            Some(key) => {
                self.remove(&key);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Weight(usize, bool);

    impl Held for Weight {
        fn size(&self) -> usize {
            self.0
        }
        fn evictable(&self) -> bool {
            self.1
        }
    }

    #[test]
    fn expires_in_order_and_counts_bytes() {
        let now = Instant::now();
        let mut map = ExpiringMap::default();
        map.insert("a", now + Duration::from_secs(1), Weight(10, true));
        map.insert("b", now + Duration::from_secs(2), Weight(5, true));
        assert_eq!((map.len(), map.bytes()), (2, 15));
        map.insert("a", now + Duration::from_secs(3), Weight(7, true));
        assert_eq!((map.len(), map.bytes()), (2, 12));
        map.expire(now + Duration::from_secs(2));
        assert!(map.get(&"b").is_none());
        assert_eq!((map.len(), map.bytes()), (1, 7));
    }

    #[test]
    fn evicts_only_evictable_entries_closest_to_expiry_first() {
        let now = Instant::now();
        let mut map = ExpiringMap::default();
        map.insert("locked", now + Duration::from_secs(1), Weight(0, false));
        map.insert("late", now + Duration::from_secs(3), Weight(1, true));
        map.insert("early", now + Duration::from_secs(2), Weight(1, true));
        assert!(map.evict_one());
        assert!(map.get(&"early").is_none() && map.get(&"late").is_some());
        assert!(map.evict_one());
        assert!(!map.evict_one());
        assert!(map.get(&"locked").is_some());
    }
}
