//! `TimedCache`: values that may be trusted until a moment fixed when they
//! were learnt, the one shape of every cache in the mount (attributes, the
//! names of known directories, `security.capability` answers).
//!
//! How long a value may be trusted depends on how it was learnt: for the
//! attribute timeout, or — while the server tells this mount of every change
//! (see [`crate::core`]'s coherence) — for the lease. The caller works that
//! out from the moment the question was *asked*, where that is earlier than
//! the answer, so that a value is never trusted beyond what the server vouched
//! for, and stores the value with it. A value is dropped when found stale; one
//! that is stale already is not stored. Past [`PRUNE_AT`] entries, a store
//! first drops every stale one, so a long-lived mount does not accumulate what
//! it cannot use; the next such sweep waits until the cache has doubled again,
//! so that a cache full of fresh entries (a listing of 10,000 files, or
//! anything cached under a lease) is not swept on every store.

use ferry_common::sync::lock;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries beyond this many make the next store drop the stale ones.
pub(crate) const PRUNE_AT: usize = 4096;

#[derive(Debug)]
struct Entries<K, V> {
    map: HashMap<K, Timed<V>>,
    /// The size at which the next store sweeps out stale entries: at least
    /// [`PRUNE_AT`], and twice what the last sweep kept, so sweeps cost
    /// O(1) per store however many entries are fresh.
    prune_at: usize,
}

#[derive(Debug)]
struct Timed<V> {
    until: Instant,
    value: V,
}

#[derive(Debug)]
pub(crate) struct TimedCache<K, V> {
    entries: Mutex<Entries<K, V>>,
}

impl<K, V> Default for TimedCache<K, V> {
    fn default() -> Self {
        TimedCache {
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }
}

/// How much longer something trusted until `until` may be trusted; `None`
/// once stale.
fn left(until: Instant) -> Option<Duration> {
    until
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
}

impl<K: Eq + Hash, V> TimedCache<K, V> {
    pub(crate) fn new() -> TimedCache<K, V> {
        TimedCache::default()
    }

    /// Stores `value` for `key`, to be trusted until `until`, unless
    /// `keep_held` says the value already held (and still fresh) is to be
    /// kept, or changes it in place: it is given the held value and its
    /// horizon and the new one, and answers whether the held one stays.
    pub(crate) fn store_with(
        &self,
        key: K,
        until: Instant,
        value: V,
        keep_held: impl FnOnce(&mut V, &mut Instant, V) -> Option<V>,
    ) {
        if left(until).is_none() {
            return;
        }
        let mut guard = lock(&self.entries);
        let Entries {
            map: entries,
            prune_at,
        } = &mut *guard;
        if entries.len() >= *prune_at {
            let now = Instant::now();
            entries.retain(|_, t| t.until > now);
            *prune_at = PRUNE_AT.max(2 * entries.len());
        }
        let value = match entries.get_mut(&key) {
            Some(held) if left(held.until).is_some() => {
                match keep_held(&mut held.value, &mut held.until, value) {
                    None => return,
                    Some(value) => value,
                }
            }
            _ => value,
        };
        entries.insert(key, Timed { until, value });
    }

    /// Stores `value` for `key`, to be trusted until `until`.
    pub(crate) fn store(&self, key: K, value: V, until: Instant) {
        self.store_with(key, until, value, |_, _, new| Some(new));
    }

    /// Looks at the fresh value of `key` with `read`, which also learns how much
    /// longer it may be trusted.
    pub(crate) fn read<T>(&self, key: &K, read: impl FnOnce(&V, Duration) -> T) -> Option<T> {
        let mut guard = lock(&self.entries);
        let entries = &mut guard.map;
        let held = entries.get(key)?;
        match left(held.until) {
            Some(left) => Some(read(&held.value, left)),
            None => {
                entries.remove(key);
                None
            }
        }
    }

    /// Changes the fresh value of `key` in place, if there is one.
    pub(crate) fn update(&self, key: &K, change: impl FnOnce(&mut V)) {
        let mut guard = lock(&self.entries);
        if let Some(held) = guard.map.get_mut(key) {
            if left(held.until).is_some() {
                change(&mut held.value);
            }
        }
    }

    /// Forgets `key`.
    pub(crate) fn remove(&self, key: &K) {
        lock(&self.entries).map.remove(key);
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        lock(&self.entries).map.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.entries).map.len()
    }
}

impl<K: Eq + Hash, V: Clone> TimedCache<K, V> {
    /// The fresh value of `key` and how much longer it may be trusted.
    pub(crate) fn get(&self, key: &K) -> Option<(V, Duration)> {
        self.read(key, |value, left| (value.clone(), left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_secs(n: u64) -> Instant {
        Instant::now() + Duration::from_secs(n)
    }

    #[test]
    fn values_are_fresh_until_their_horizon() {
        let cache = TimedCache::new();
        cache.store(1, "a", in_secs(60));
        let (value, left) = cache.get(&1).expect("just stored");
        assert_eq!(value, "a");
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
        cache.remove(&1);
        assert!(cache.get(&1).is_none());
        cache.store(3, "c", in_secs(60));
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_stale_value_is_not_kept() {
        let cache = TimedCache::new();
        cache.store(1, 1, Instant::now());
        assert!(cache.get(&1).is_none());
        assert_eq!(cache.len(), 0);
        // Stored fresh, found stale: dropped when found.
        lock(&cache.entries).map.insert(
            2,
            Timed {
                until: Instant::now(),
                value: 2,
            },
        );
        assert!(cache.get(&2).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_held_value_decides_what_a_store_does() {
        let cache = TimedCache::new();
        cache.store(1, 5, in_secs(60));
        // Keep the larger one.
        let keep_larger = |held: &mut i32, _: &mut Instant, new: i32| (new > *held).then_some(new);
        cache.store_with(1, in_secs(60), 3, keep_larger);
        assert_eq!(cache.get(&1).map(|(v, _)| v), Some(5));
        cache.store_with(1, in_secs(60), 7, keep_larger);
        assert_eq!(cache.get(&1).map(|(v, _)| v), Some(7));
        cache.update(&1, |v| *v += 1);
        assert_eq!(cache.get(&1).map(|(v, _)| v), Some(8));
    }

    #[test]
    fn a_full_cache_drops_its_stale_entries() {
        let cache = TimedCache::new();
        let past = Instant::now();
        for key in 0..PRUNE_AT {
            // Stale from the start (stored bypassing freshness).
            lock(&cache.entries).map.insert(
                key,
                Timed {
                    until: past,
                    value: key,
                },
            );
        }
        cache.store(PRUNE_AT, PRUNE_AT, in_secs(60));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_cache_of_fresh_entries_is_swept_only_each_time_it_doubles() {
        let cache = TimedCache::new();
        for key in 0..=PRUNE_AT {
            cache.store(key, key, in_secs(60));
        }
        // The sweep at PRUNE_AT kept every (fresh) entry, and waits for twice
        // as many before the next.
        assert_eq!(cache.len(), PRUNE_AT + 1);
        assert_eq!(lock(&cache.entries).prune_at, 2 * PRUNE_AT);
        // Stale entries go at the next sweep all the same.
        let past = Instant::now();
        for key in PRUNE_AT + 1..2 * PRUNE_AT {
            lock(&cache.entries).map.insert(
                key,
                Timed {
                    until: past,
                    value: key,
                },
            );
        }
        cache.store(2 * PRUNE_AT, 0, in_secs(60));
        assert_eq!(cache.len(), PRUNE_AT + 2);
    }
}
