//! What the client counts, for `ferry status` and `FERRY_STATS`: requests by
//! kind (sent, and those an application waited for), round-trip times, bytes
//! each way, connection breaks and reconnects, and how often a cache answered
//! instead of the server. Plain atomics, counted on the request path without a
//! lock; one [`Stats`] per [`RemoteClient`](crate::RemoteClient), shared with
//! the core that uses it.

use crate::windows::MinRtt;
use ferry_common::counters::{Histogram, HistogramSnapshot, OpCounts, OP_KINDS};
use ferry_common::proto::Op;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A cache's hits and misses.
#[derive(Debug, Default)]
pub struct HitRate {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl HitRate {
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// (hits, misses).
    pub fn get(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// Everything the client counts.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    sent: OpCounts,
    waited: OpCounts,
    /// From sending a request to its answer, for every answered request.
    round_trips: Histogram,
    /// The shortest of those lately: the path's own delay.
    path_rtt: MinRtt,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// Requests that got no answer in time (ETIMEDOUT).
    timeouts: AtomicU64,
    /// Live connections lost (the server closed, a write failed, ...).
    breaks: AtomicU64,
    /// Connections made after the first.
    reconnects: AtomicU64,
    /// Milliseconds from `started` to the newest connection.
    connected_at_ms: AtomicU64,
    /// `getattr` answered here (the attribute cache, or a file being written).
    pub attrs: HitRate,
    /// Lookups of absent names answered here.
    pub absent_names: HitRate,
    /// Lookups of names answered from a recent listing (hits only).
    pub listed_names: HitRate,
    /// Opens that kept the kernel's cached pages (the file had not changed).
    pub page_cache: HitRate,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            sent: OpCounts::default(),
            waited: OpCounts::default(),
            round_trips: Histogram::default(),
            path_rtt: MinRtt::default(),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            breaks: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connected_at_ms: AtomicU64::new(0),
            attrs: HitRate::default(),
            absent_names: HitRate::default(),
            listed_names: HitRate::default(),
            page_cache: HitRate::default(),
        }
    }
}

impl Stats {
    /// A request of `op`'s kind, `bytes` long on the wire, was sent.
    pub fn sent(&self, op: &Op, bytes: usize) {
        self.sent.add(op);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A request of kind `kind` was sent (for requests built without an [`Op`]).
    pub fn sent_kind(&self, kind: usize, bytes: usize) {
        self.sent.add_kind(kind);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// An application waited for the answer to `op`.
    pub fn waited_for(&self, op: &Op) {
        self.waited.add(op);
    }

    /// An answer `bytes` long arrived, `took` after its request was sent.
    pub fn answered(&self, took: Duration, bytes: usize) {
        self.round_trips.record(took);
        self.path_rtt.record(took);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn timed_out(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_lost(&self) {
        self.breaks.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was made: the first (`first`) or a reconnection.
    pub fn connected(&self, first: bool) {
        if !first {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.connected_at_ms.store(ms, Ordering::Relaxed);
    }

    /// The path's round-trip time: the shortest round trip lately (see
    /// [`crate::windows`]); `None` before any answer.
    pub fn path_rtt(&self) -> Option<Duration> {
        self.path_rtt.get()
    }

    /// Requests sent, by kind (those sent at least once).
    pub fn sent_by_kind(&self) -> Vec<(&'static str, u64)> {
        self.sent.nonzero()
    }

    /// Requests an application waited for, by kind (the rest were write-behind).
    pub fn waited_by_kind(&self) -> Vec<(&'static str, u64)> {
        self.waited.nonzero()
    }

    /// Every counter now.
    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            at: Instant::now(),
            uptime: self.started.elapsed(),
            sent: self.sent.snapshot(),
            waited: self.waited.snapshot(),
            round_trips: self.round_trips.snapshot(),
            bytes_sent: load(&self.bytes_sent),
            bytes_received: load(&self.bytes_received),
            timeouts: load(&self.timeouts),
            breaks: load(&self.breaks),
            reconnects: load(&self.reconnects),
            connected_at: Duration::from_millis(load(&self.connected_at_ms)),
            attrs: self.attrs.get(),
            absent_names: self.absent_names.get(),
            page_cache: self.page_cache.get(),
        }
    }
}

/// The counters at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at: Instant,
    /// Since the client was made.
    pub uptime: Duration,
    pub sent: [u64; OP_KINDS],
    pub waited: [u64; OP_KINDS],
    pub round_trips: HistogramSnapshot,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub timeouts: u64,
    pub breaks: u64,
    pub reconnects: u64,
    /// When (after the start) the newest connection was made.
    pub connected_at: Duration,
    pub attrs: (u64, u64),
    pub absent_names: (u64, u64),
    pub page_cache: (u64, u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::RelPath;

    #[test]
    fn counters_add_up() {
        let stats = Stats::default();
        let stat = Op::Stat {
            path: RelPath::root(),
        };
        stats.sent(&stat, 30);
        stats.sent(&stat, 30);
        stats.waited_for(&stat);
        stats.answered(Duration::from_micros(200), 100);
        stats.attrs.hit();
        stats.attrs.miss();
        stats.attrs.hit();
        stats.connected(true);
        stats.connection_lost();
        stats.connected(false);
        let s = stats.snapshot();
        assert_eq!(stats.sent_by_kind(), [("stat", 2)]);
        assert_eq!(stats.waited_by_kind(), [("stat", 1)]);
        assert_eq!((s.bytes_sent, s.bytes_received), (60, 100));
        assert_eq!(s.round_trips.count(), 1);
        assert_eq!((s.breaks, s.reconnects), (1, 1));
        assert_eq!(s.attrs, (2, 1));
    }
}
