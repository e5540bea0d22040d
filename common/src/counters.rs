//! Counters both sides keep for `ferry status` and the server's metrics: cheap
//! atomics, counted on the request path without a lock.
//!
//! - [`OpCounts`]: one counter per kind of [`Op`], named as [`Op::name`] names it.
//! - [`Histogram`]: durations in logarithmic buckets (four per power of two, so a
//!   percentile read from it is within 19 % of the truth), from which `ferry
//!   status` reads percentiles and the server's metrics a Prometheus histogram.

use crate::proto::Op;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many kinds of operation there are.
pub const OP_KINDS: usize = 35;

/// The kind of `op` as an index below [`OP_KINDS`]; [`op_kind_name`] is its name.
pub fn op_kind(op: &Op) -> usize {
    match op {
        Op::Stat { .. } => 0,
        Op::ReadDir { .. } => 1,
        Op::ReadLink { .. } => 2,
        Op::Open { .. } => 3,
        Op::Create { .. } => 4,
        Op::Read { .. } => 5,
        Op::Write { .. } => 6,
        Op::Fsync { .. } => 7,
        Op::Close { .. } => 8,
        Op::SetAttr { .. } => 9,
        Op::Mkdir { .. } => 10,
        Op::Mknod { .. } => 11,
        Op::Symlink { .. } => 12,
        Op::Link { .. } => 13,
        Op::Unlink { .. } => 14,
        Op::Rmdir { .. } => 15,
        Op::Rename { .. } => 16,
        Op::StatFs => 17,
        Op::GetXattr { .. } => 18,
        Op::ListXattr { .. } => 19,
        Op::SetXattr { .. } => 20,
        Op::RemoveXattr { .. } => 21,
        Op::SetLock { .. } => 22,
        Op::GetLock { .. } => 23,
        Op::ReleaseLocks { .. } => 24,
        Op::Fallocate { .. } => 25,
        Op::CopyFileRange { .. } => 26,
        Op::Ping => 27,
        Op::ReclaimLock { .. } => 28,
        Op::ReclaimComplete => 29,
        Op::List { .. } => 30,
        Op::OpenRead { .. } => 31,
        Op::Subscribe { .. } => 32,
        Op::ReadFiles { .. } => 33,
        Op::CreateAs { .. } => 34,
    }
}

/// The name of kind `index` (as [`Op::name`] says it).
pub fn op_kind_name(index: usize) -> &'static str {
    const NAMES: [&str; OP_KINDS] = [
        "stat",
        "readdir",
        "readlink",
        "open",
        "create",
        "read",
        "write",
        "fsync",
        "close",
        "setattr",
        "mkdir",
        "mknod",
        "symlink",
        "link",
        "unlink",
        "rmdir",
        "rename",
        "statfs",
        "getxattr",
        "listxattr",
        "setxattr",
        "removexattr",
        "setlock",
        "getlock",
        "releaselocks",
        "fallocate",
        "copy_file_range",
        "ping",
        "reclaimlock",
        "reclaimcomplete",
        "list",
        "openread",
        "subscribe",
        "readfiles",
        "createas",
    ];
    NAMES.get(index).copied().unwrap_or("?")
}

/// One counter per kind of operation.
#[derive(Debug)]
pub struct OpCounts([AtomicU64; OP_KINDS]);

impl Default for OpCounts {
    fn default() -> Self {
        OpCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl OpCounts {
    pub fn add(&self, op: &Op) {
        self.add_kind(op_kind(op));
    }

    pub fn add_kind(&self, kind: usize) {
        if let Some(counter) = self.0.get(kind) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every kind's count, by index.
    pub fn snapshot(&self) -> [u64; OP_KINDS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }

    /// The kinds counted at least once, by name, in kind order.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        self.snapshot()
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (op_kind_name(i), *n))
            .collect()
    }
}

/// Buckets below 8 µs hold one microsecond each; above, four per power of two.
pub const BUCKETS: usize = 8 + 4 * 40;

/// Durations in logarithmic buckets of microseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

/// The bucket `micros` falls in.
fn bucket_of(micros: u64) -> usize {
    if micros < 8 {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros() as usize; // 3 or more
    let quarter = ((micros >> (exp - 2)) & 3) as usize;
    (8 + (exp - 3) * 4 + quarter).min(BUCKETS - 1)
}

/// The first duration, in microseconds, of the bucket after `index`: every
/// duration in bucket `index` is below it.
pub fn bucket_end(index: usize) -> u64 {
    let next = index + 1;
    if next < 8 {
        return next as u64;
    }
    let exp = (next - 8) / 4 + 3;
    let quarter = ((next - 8) % 4) as u64;
    (4 + quarter) << (exp - 2)
}

impl Histogram {
    pub fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment; two of them subtract to what happened
/// in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub buckets: [u64; BUCKETS],
    pub sum_micros: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot {
            buckets: [0; BUCKETS],
            sum_micros: 0,
        }
    }
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What was recorded after `earlier`.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_micros: self.sum_micros.saturating_sub(earlier.sum_micros),
        }
    }

    /// The duration below which a fraction `q` (0 to 1) of the recorded ones
    /// fall, as the end of the bucket that holds it; `None` if nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_end(i)));
            }
        }
        None
    }

    /// How many recorded durations were below `micros`, exactly when `micros`
    /// is a bucket boundary (a power of two is one).
    pub fn count_below(&self, micros: u64) -> u64 {
        self.buckets
            .iter()
            .enumerate()
            .take_while(|(i, _)| bucket_end(*i) <= micros)
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RelPath;

    #[test]
    fn every_op_kind_has_its_own_index_and_name() {
        let p = RelPath::root;
        let lock = crate::proto::FileLock {
            typ: crate::proto::LockType::Read,
            start: 0,
            end: 0,
        };
        let ops = [
            Op::Stat { path: p() },
            Op::ReadDir {
                path: p(),
                start: 0,
            },
            Op::ReadLink { path: p() },
            Op::Open {
                path: p(),
                flags: 0,
            },
            Op::Create {
                path: p(),
                flags: 0,
                mode: 0,
            },
            Op::Read {
                handle: 0,
                offset: 0,
                len: 0,
            },
            Op::Write {
                handle: 0,
                offset: 0,
                data: Vec::new(),
            },
            Op::Fsync {
                handle: 0,
                datasync: false,
            },
            Op::Close { handle: 0 },
            Op::SetAttr {
                path: p(),
                handle: None,
                changes: Default::default(),
            },
            Op::Mkdir { path: p(), mode: 0 },
            Op::Mknod {
                path: p(),
                mode: 0,
                rdev: 0,
            },
            Op::Symlink {
                path: p(),
                target: Vec::new(),
            },
            Op::Link {
                existing: p(),
                path: p(),
            },
            Op::Unlink { path: p() },
            Op::Rmdir { path: p() },
            Op::Rename {
                from: p(),
                to: p(),
                flags: 0,
            },
            Op::StatFs,
            Op::GetXattr {
                path: p(),
                name: Vec::new(),
            },
            Op::ListXattr { path: p() },
            Op::SetXattr {
                path: p(),
                name: Vec::new(),
                value: Vec::new(),
                flags: 0,
            },
            Op::RemoveXattr {
                path: p(),
                name: Vec::new(),
            },
            Op::SetLock {
                handle: 0,
                owner: 0,
                kind: crate::proto::LockKind::Posix,
                lock,
            },
            Op::GetLock {
                handle: 0,
                owner: 0,
                lock,
            },
            Op::ReleaseLocks {
                handle: 0,
                owner: 0,
            },
            Op::Fallocate {
                handle: 0,
                offset: 0,
                len: 0,
                mode: 0,
            },
            Op::CopyFileRange {
                handle_in: 0,
                offset_in: 0,
                handle_out: 0,
                offset_out: 0,
                len: 0,
            },
            Op::Ping,
            Op::ReclaimLock {
                handle: 0,
                owner: 0,
                kind: crate::proto::LockKind::Flock,
                lock,
            },
            Op::ReclaimComplete,
            Op::List {
                path: p(),
                cursor: 0,
            },
            Op::OpenRead {
                path: p(),
                flags: 0,
                len: 0,
            },
            Op::Subscribe { lease_secs: 60 },
            Op::ReadFiles {
                dir: p(),
                names: Vec::new(),
                max_each: 0,
            },
            Op::CreateAs {
                path: p(),
                flags: 0,
                mode: 0,
                handle: 0,
            },
        ];
        assert_eq!(ops.len(), OP_KINDS);
        let mut seen = [false; OP_KINDS];
        for op in &ops {
            let kind = op_kind(op);
            assert!(!seen[kind], "{} shares index {kind}", op.name());
            seen[kind] = true;
            assert_eq!(op_kind_name(kind), op.name());
        }
        let counts = OpCounts::default();
        counts.add(&ops[5]);
        counts.add(&ops[5]);
        counts.add(&ops[0]);
        assert_eq!(counts.nonzero(), [("stat", 1), ("read", 2)]);
    }

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        let mut start = 0;
        for i in 0..BUCKETS - 1 {
            let end = bucket_end(i);
            assert!(end > start, "bucket {i}");
            assert_eq!(bucket_of(start), i, "the start of bucket {i}");
            assert_eq!(bucket_of(end - 1), i, "the end of bucket {i}");
            // Never wider than a quarter of a power of two above 8 µs.
            assert!(
                end - start <= (start / 4).max(1),
                "bucket {i}: {start}..{end}"
            );
            start = end;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for power in 3..40 {
            assert_eq!(bucket_end(bucket_of(1 << power) - 1), 1 << power);
        }
    }

    #[test]
    fn quantiles_and_differences() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(10));
        h.record(Duration::from_millis(10));
        let before = h.snapshot();
        let p50 = before.quantile(0.5).unwrap();
        assert!(p50 >= Duration::from_micros(100) && p50 <= Duration::from_micros(120));
        let p99 = before.quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_millis(10) && p99 <= Duration::from_millis(12));
        assert_eq!(before.count(), 100);
        assert_eq!(before.sum_micros, 98 * 100 + 2 * 10_000);
        assert_eq!(before.count_below(128), 98);
        assert_eq!(before.count_below(1 << 14), 100);
        h.record(Duration::from_secs(1));
        let after = h.snapshot().since(&before);
        assert_eq!(after.count(), 1);
        assert!(after.quantile(0.5).unwrap() >= Duration::from_secs(1));
    }
}
