//! How much data the mount keeps on its way to or from the server: enough to
//! cover the path's bandwidth-delay product, so that a sequential reader or
//! writer is not held to one window's worth per round trip.
//!
//! - The delay is the path's own round-trip time, taken as the shortest round
//!   trip seen lately ([`MinRtt`], as BBR's min_rtt filter): the others include
//!   queueing behind this mount's own data, and a window sized from them would
//!   feed its own growth.
//! - The bandwidth is not measured: the windows are sized for [`TARGET_RATE`]
//!   and rounded up to a power of two, so that they change in steps as the
//!   delay does, not with every jitter — within bounds.
//! - Write-behind ([`write_window`]) keeps at least 16 MiB, what a fast local
//!   network needs, and at most [`MAX_WRITE_WINDOW`]: with the largest
//!   readahead, within the server's per-connection budget, so that this
//!   mount's own streams never make the server stop reading the connection
//!   (which would hold up every other request).
//! - Reads ([`read_ahead_kb`]): the kernel's readahead, which the mount sets
//!   through its backing device (see `crate::mount`), from 4 MiB up to
//!   [`MAX_READ_AHEAD_KB`], half of what FUSE keeps in flight at most (64
//!   background requests of 1 MiB).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The rate, in bytes per second, the windows are sized to sustain.
pub const TARGET_RATE: u64 = 1_000_000_000;
/// The smallest write-behind window.
pub const MIN_WRITE_WINDOW: usize = 16 << 20;
/// The largest write-behind window.
pub const MAX_WRITE_WINDOW: usize = 32 << 20;
/// The smallest readahead: four 1 MiB requests. Even on loopback a read's
/// stages (the server's read of its disk, sealing, the transfer, opening,
/// the kernel's copy) take longer than the round trip the window is sized
/// from; with one request in flight they ran one after another, with four
/// they overlap (loopback, TLS, 1 GiB after dropping caches: a median of
/// 885 MB/s at 1 MiB, 981 at 4 MiB, 869 at 8 MiB, four rounds each).
pub const MIN_READ_AHEAD_KB: u32 = 4 * 1024;
/// The largest readahead.
pub const MAX_READ_AHEAD_KB: u32 = 32 * 1024;
/// How long a round trip counts towards the path's delay.
const RTT_PERIOD: Duration = Duration::from_secs(10);

/// The shortest round trip seen in the last one or two [`RTT_PERIOD`]s.
#[derive(Debug)]
pub struct MinRtt {
    started: Instant,
    /// In microseconds; `u64::MAX` for none.
    current: AtomicU64,
    previous: AtomicU64,
    /// When the current period began, in milliseconds after `started`.
    period_began: AtomicU64,
}

impl Default for MinRtt {
    fn default() -> Self {
        MinRtt {
            started: Instant::now(),
            current: AtomicU64::new(u64::MAX),
            previous: AtomicU64::new(u64::MAX),
            period_began: AtomicU64::new(0),
        }
    }
}

impl MinRtt {
    /// A request took `took` from being sent to being answered.
    pub fn record(&self, took: Duration) {
        self.record_at(took, self.started.elapsed());
    }

    fn record_at(&self, took: Duration, now: Duration) {
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let began = self.period_began.load(Ordering::Relaxed);
        let period = u64::try_from(RTT_PERIOD.as_millis()).unwrap_or(u64::MAX);
        // One thread wins the turn of a period; a lost race only drops a sample.
        if now_ms.saturating_sub(began) >= period
            && self
                .period_began
                .compare_exchange(began, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let ended = self.current.swap(u64::MAX, Ordering::Relaxed);
            self.previous.store(ended, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX - 1);
        self.current.fetch_min(micros, Ordering::Relaxed);
    }

    /// The path's round-trip time, if any request was answered lately.
    pub fn get(&self) -> Option<Duration> {
        let current = self.current.load(Ordering::Relaxed);
        let previous = self.previous.load(Ordering::Relaxed);
        let shortest = current.min(previous);
        (shortest != u64::MAX).then(|| Duration::from_micros(shortest))
    }
}

/// The bytes [`TARGET_RATE`] moves in `rtt`, rounded up to a power of two.
fn product(rtt: Duration) -> u64 {
    let bytes = rtt.as_secs_f64() * TARGET_RATE as f64;
    // `as` saturates; so does the rounding.
    (bytes as u64)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
}

/// How many bytes of writes may be in flight on a path of round-trip time `rtt`.
pub fn write_window(rtt: Option<Duration>) -> usize {
    let wanted = rtt.map_or(0, product);
    usize::try_from(wanted)
        .unwrap_or(usize::MAX)
        .clamp(MIN_WRITE_WINDOW, MAX_WRITE_WINDOW)
}

/// The kernel's readahead, in KiB, for a path of round-trip time `rtt`.
pub fn read_ahead_kb(rtt: Option<Duration>) -> u32 {
    let wanted = rtt.map_or(0, product) / 1024;
    u32::try_from(wanted)
        .unwrap_or(u32::MAX)
        .clamp(MIN_READ_AHEAD_KB, MAX_READ_AHEAD_KB)
}

/// The mount's readahead, kept at [`read_ahead_kb`] of the path's delay.
///
/// The kernel gives each open file the readahead its backing device has at the
/// open, so the core fits it before every open ([`fit`](Self::fit)); it
/// writes to the device only when the figure changes. Only root may: for
/// another user the kernel's default stays (fuser cannot ask for more than
/// 128 KiB at the handshake).
#[derive(Debug, Default)]
pub struct KernelReadAhead {
    /// `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb` of the mount, once mounted.
    setting: OnceLock<PathBuf>,
    /// What it was last set to; 0 before that.
    applied: AtomicU32,
    /// Setting it failed: not tried again.
    refused: std::sync::atomic::AtomicBool,
}

impl KernelReadAhead {
    /// The mount's setting lives at `path`; it is set at once.
    pub fn attach(&self, path: PathBuf, rtt: Option<Duration>) {
        if self.setting.set(path).is_ok() {
            self.fit(rtt);
        }
    }

    /// Sets the readahead for a path of round-trip time `rtt`, if it differs.
    pub fn fit(&self, rtt: Option<Duration>) {
        let kb = read_ahead_kb(rtt);
        if self.applied.load(Ordering::Relaxed) == kb || self.refused.load(Ordering::Relaxed) {
            return;
        }
        let Some(path) = self.setting.get() else {
            return;
        };
        // Two opens racing here both write; the figure is the same.
        match std::fs::write(path, kb.to_string()) {
            Ok(()) => {
                self.applied.store(kb, Ordering::Relaxed);
                log::debug!("readahead {kb} KiB for a round trip of {rtt:?}");
            }
            Err(e) => {
                self.refused.store(true, Ordering::Relaxed);
                log::debug!("cannot set the readahead through {}: {e}", path.display());
            }
        }
    }

    /// What the readahead was last set to, in KiB (0: never).
    pub fn applied_kb(&self) -> u32 {
        self.applied.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(n / 1000.0))
    }

    #[test]
    fn windows_grow_with_the_delay_within_their_bounds() {
        const MIB: usize = 1 << 20;
        // Unknown, loopback and a LAN: the floors.
        for rtt in [None, ms(0.05), ms(1.0)] {
            assert_eq!(write_window(rtt), MIN_WRITE_WINDOW);
            assert_eq!(read_ahead_kb(rtt), MIN_READ_AHEAD_KB);
        }
        // 10 ms carry 10 MB at the target rate.
        assert_eq!(write_window(ms(10.0)), 16 * MIB);
        assert_eq!(read_ahead_kb(ms(10.0)), 16 * 1024);
        assert_eq!(read_ahead_kb(ms(3.0)), 4 * 1024);
        assert_eq!(write_window(ms(20.0)), 32 * MIB);
        // Beyond the bounds, the bounds.
        for rtt in [ms(50.0), ms(1000.0), Some(Duration::MAX)] {
            assert_eq!(write_window(rtt), MAX_WRITE_WINDOW);
            assert_eq!(read_ahead_kb(rtt), MAX_READ_AHEAD_KB);
        }
        // Growing with the delay, never shrinking.
        let mut last = (0, 0);
        for tenth in 0..1000 {
            let rtt = ms(f64::from(tenth) / 10.0);
            let now = (write_window(rtt), read_ahead_kb(rtt));
            assert!(now.0 >= last.0 && now.1 >= last.1);
            last = now;
        }
    }

    #[test]
    fn the_largest_window_leaves_the_servers_budget_room_for_reads() {
        let reads = MAX_READ_AHEAD_KB as usize * 1024;
        assert!(MAX_WRITE_WINDOW + reads <= ferry_server::CONNECTION_BUDGET);
    }

    #[test]
    fn the_readahead_is_written_when_it_changes_and_not_after_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let setting = dir.path().join("read_ahead_kb");
        let ra = KernelReadAhead::default();
        ra.fit(ms(10.0));
        assert_eq!(ra.applied_kb(), 0, "nothing to write to yet");
        ra.attach(setting.clone(), None);
        assert_eq!(std::fs::read_to_string(&setting).unwrap(), "4096");
        ra.fit(ms(10.0));
        assert_eq!(std::fs::read_to_string(&setting).unwrap(), "16384");
        std::fs::write(&setting, "written elsewhere").unwrap();
        ra.fit(ms(11.0));
        assert_eq!(
            std::fs::read_to_string(&setting).unwrap(),
            "written elsewhere",
            "the same figure is not written again"
        );
        // A setting that cannot be written is given up.
        let refused = KernelReadAhead::default();
        refused.attach(dir.path().join("missing/read_ahead_kb"), ms(10.0));
        std::fs::create_dir(dir.path().join("missing")).unwrap();
        refused.fit(ms(50.0));
        assert!(!dir.path().join("missing/read_ahead_kb").exists());
        assert_eq!(refused.applied_kb(), 0);
    }

    #[test]
    fn the_path_delay_is_the_shortest_recent_round_trip() {
        let rtt = MinRtt::default();
        assert_eq!(rtt.get(), None);
        let at = Duration::from_secs;
        rtt.record_at(Duration::from_millis(12), at(1));
        rtt.record_at(Duration::from_millis(10), at(2));
        rtt.record_at(Duration::from_millis(300), at(3));
        assert_eq!(rtt.get(), Some(Duration::from_millis(10)));
        // A period later the old minimum still counts...
        rtt.record_at(Duration::from_millis(50), at(11));
        assert_eq!(rtt.get(), Some(Duration::from_millis(10)));
        // ...two periods later only what was seen since.
        rtt.record_at(Duration::from_millis(60), at(22));
        assert_eq!(rtt.get(), Some(Duration::from_millis(50)));
        rtt.record_at(Duration::from_millis(70), at(33));
        assert_eq!(rtt.get(), Some(Duration::from_millis(60)));
    }
}
