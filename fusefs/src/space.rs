//! `FreeSpace`: what the mount knows of the free space on the server's export,
//! so that `write(2)` meets ENOSPC as it would on a local disk.
//!
//! Write-behind (see [`crate::writeback`]) answers a write before the server
//! has, so on a full export the application would hear of ENOSPC only at
//! close or fsync. A local disk refuses the write itself. So a write goes
//! through — the application waits for the server's answer, ENOSPC included —
//! whenever the export might not have room for what write-behind may hold:
//! when the space the server last reported, less what this mount has sent
//! since, is below [`LOW_WATER`] plus the write. [`LOW_WATER`] is twice the
//! largest write-behind window (see [`crate::windows`]): one window for the
//! data that may have been in flight, not yet counted, when the server made
//! its report, one for the data that may be in flight after this write. So a
//! write answered early always fits.
//!
//! The report is the server's `statfs` (blocks available to unprivileged
//! users): asked for when the mount starts, then alongside a write, never
//! waited for, when the last one is older than [`FRESH_FOR`], and taken from
//! every `statfs` an application makes. Without a report, writes go through. A write that
//! fails for lack of space sets the known space to nothing, so the writes after
//! it go through until the server reports room again (files removed, another
//! client's data truncated).
//!
//! Other clients writing to the same export are seen only through the
//! reports, a second apart at most while this mount writes; a write answered
//! early that still finds the disk full is reported at close or fsync, as
//! before.

use crate::windows::MAX_WRITE_WINDOW;
use ferry_common::sync::lock;
use ferry_common::StatFs;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Below this much free space (less what was sent since the report), writes
/// go through, unless the mount says otherwise
/// ([`FsOptions::write_through_below`](crate::FsOptions::write_through_below)).
pub const LOW_WATER: u64 = 2 * MAX_WRITE_WINDOW as u64;
/// How long a report of the free space is used before a new one is asked for.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);

/// The server's last word on its free space.
#[derive(Debug, Clone, Copy)]
struct Report {
    /// Bytes available to unprivileged users.
    available: u64,
    at: Instant,
    /// Bytes this mount sent to be written since.
    sent_since: u64,
}

#[derive(Debug, Default)]
struct State {
    report: Option<Report>,
    /// A report has been asked for and not answered yet.
    asking: bool,
}

/// What a write is to do, by [`FreeSpace::before_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The export may be too full to answer this write early.
    pub(crate) through: bool,
    /// Ask the server for a new report (the caller sends the `statfs`, and
    /// passes its answer to [`FreeSpace::told`] or [`FreeSpace::not_told`]).
    pub(crate) ask: bool,
}

#[derive(Debug)]
pub(crate) struct FreeSpace {
    /// Writes go through below this much free space; never for lack of
    /// space when 0.
    low_water: u64,
    state: Mutex<State>,
}

impl FreeSpace {
    /// Writes go through while less than `low_water` bytes are known free
    /// (never for lack of space if 0).
    pub(crate) fn new(low_water: u64) -> FreeSpace {
        FreeSpace {
            low_water,
            state: Mutex::default(),
        }
    }

    /// A write of `len` bytes is about to be sent: whether it must go
    /// through, and whether a new report is due. Counts the bytes as sent.
    pub(crate) fn before_write(&self, len: usize) -> Plan {
        let mut state = lock(&self.state);
        let len = len as u64;
        if self.low_water == 0 {
            return Plan {
                through: false,
                ask: false,
            };
        }
        let (through, stale) = match state.report.as_mut() {
            None => (true, true),
            Some(report) => {
                let left = report.available.saturating_sub(report.sent_since);
                report.sent_since = report.sent_since.saturating_add(len);
                (
                    left < self.low_water.saturating_add(len),
                    report.at.elapsed() >= FRESH_FOR,
                )
            }
        };
        let ask = stale && !state.asking;
        if ask {
            state.asking = true;
        }
        Plan { through, ask }
    }

    /// The server reported its file system's statistics.
    pub(crate) fn told(&self, stats: &StatFs) {
        let available = stats.bavail.saturating_mul(u64::from(stats.frsize.max(1)));
        let mut state = lock(&self.state);
        state.asking = false;
        state.report = Some(Report {
            available,
            at: Instant::now(),
            sent_since: 0,
        });
    }

    /// The report asked for did not come (the connection failed): the next
    /// write asks again.
    pub(crate) fn not_told(&self) {
        lock(&self.state).asking = false;
    }

    /// A write failed for lack of space: until the server reports room again,
    /// writes go through.
    pub(crate) fn full(&self) {
        let mut state = lock(&self.state);
        state.report = Some(Report {
            available: 0,
            at: Instant::now(),
            sent_since: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(available: u64) -> StatFs {
        StatFs {
            blocks: available / 4096 * 2,
            bfree: available / 4096,
            bavail: available / 4096,
            files: 100,
            ffree: 50,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        }
    }

    #[test]
    fn writes_go_through_until_the_server_reports_room() {
        let space = FreeSpace::new(LOW_WATER);
        let first = space.before_write(4096);
        assert_eq!(
            first,
            Plan {
                through: true,
                ask: true
            }
        );
        // Asked once while the answer is on its way.
        assert!(!space.before_write(4096).ask);
        space.told(&stats(1 << 30));
        assert_eq!(
            space.before_write(1 << 20),
            Plan {
                through: false,
                ask: false
            }
        );
    }

    #[test]
    fn what_was_sent_since_the_report_counts_against_it() {
        let space = FreeSpace::new(LOW_WATER);
        space.told(&stats(LOW_WATER + (4 << 20)));
        // Four 1 MiB writes fit; the fifth would leave less than the low water.
        for _ in 0..4 {
            assert!(!space.before_write(1 << 20).through);
        }
        assert!(space.before_write(1 << 20).through);
        // A new report with room answers early again.
        space.told(&stats(1 << 30));
        assert!(!space.before_write(1 << 20).through);
    }

    #[test]
    fn a_full_export_sends_writes_through_until_room_is_reported() {
        let space = FreeSpace::new(LOW_WATER);
        space.told(&stats(1 << 30));
        space.full();
        assert!(space.before_write(1).through);
        space.told(&stats(0));
        assert!(space.before_write(1).through);
        space.told(&stats(1 << 30));
        assert!(!space.before_write(1).through);
    }

    #[test]
    fn a_low_water_of_zero_never_sends_writes_through() {
        let space = FreeSpace::new(0);
        space.full();
        assert_eq!(
            space.before_write(1 << 20),
            Plan {
                through: false,
                ask: false
            }
        );
    }

    #[test]
    fn a_failed_report_is_asked_for_again() {
        let space = FreeSpace::new(LOW_WATER);
        assert!(space.before_write(1).ask);
        space.not_told();
        assert!(space.before_write(1).ask);
    }
}
