//! `AttrCache`: the attributes the server last reported for each inode, for as
//! long as they may be trusted (the attribute timeout, or the lease while the
//! server tells this mount of every change; see [`crate::cache`]).
//!
//! The kernel keeps attributes for that long itself, but throws them away early
//! in two common cases, and then asks again at once:
//!
//! - after every create, mkdir, unlink or rename in a directory it drops the
//!   directory's attributes, and with `default_permissions` it needs them for the
//!   next name it looks up there. The server sends them along with the change
//!   (like NFS's post-operation attributes), so an untar or `rm -rf` needs no
//!   extra round trip per file;
//! - after every read it drops the access time, and the next `stat` (tar's check
//!   that a file did not change while it was read) needs it.
//!
//! Answering those from here is exactly as fresh as the kernel's own cache would
//! have been. Where the kernel drops attributes because this mount changed the
//! inode in a way the server's answer does not show (a write, an unlink of one
//! of its names, a rename, an xattr change, a lock taken), the core drops the
//! entry here too, so the next `getattr` reaches the server; and so it does
//! when the server says the inode changed elsewhere.

use crate::cache::TimedCache;
use ferry_common::Attr;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct AttrCache {
    entries: TimedCache<u64, Attr>,
}

impl AttrCache {
    pub(crate) fn new() -> AttrCache {
        AttrCache {
            entries: TimedCache::new(),
        }
    }

    /// Records what the server said `ino` looks like now, to be trusted until
    /// `until`. Answers to concurrent changes can arrive out of order: the
    /// older change is ignored.
    pub(crate) fn store(&self, ino: u64, attr: Attr, until: Instant) {
        self.entries.store_with(ino, until, attr, |held, _, new| {
            ((new.ctime, new.mtime) >= (held.ctime, held.mtime)).then_some(new)
        });
    }

    /// Records what the server said `ino` looks like, whatever is held: its
    /// answer to a change this mount had projected (see `core::behind`),
    /// whose times, by this machine's clock, may look newer.
    pub(crate) fn replace(&self, ino: u64, attr: Attr, until: Instant) {
        self.entries.store(ino, attr, until);
    }

    /// The attributes of `ino` and how much longer they may be trusted, if they
    /// arrived within the attribute timeout.
    pub(crate) fn fresh(&self, ino: u64) -> Option<(Attr, Duration)> {
        self.entries.get(&ino)
    }

    /// Drops what is known of `ino` (changed in a way the server did not report,
    /// or forgotten by the kernel).
    pub(crate) fn drop_ino(&self, ino: u64) {
        self.entries.remove(&ino);
    }

    /// Drops everything.
    pub(crate) fn clear(&self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::{FileKind, Timestamp};

    fn dir(ctime: i64) -> Attr {
        let mut a = Attr::blank(FileKind::Directory);
        a.ctime = Timestamp {
            secs: ctime,
            nanos: 0,
        };
        a
    }

    fn minute() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn the_newest_answer_wins_and_a_dropped_one_is_gone() {
        let d = AttrCache::new();
        assert!(d.fresh(2).is_none());
        d.store(2, dir(5), minute());
        d.store(2, dir(4), minute());
        let (a, left) = d.fresh(2).expect("just stored");
        assert_eq!(a.ctime.secs, 5);
        assert!(left <= Duration::from_secs(60));
        d.store(2, dir(6), minute());
        assert_eq!(d.fresh(2).map(|(a, _)| a.ctime.secs), Some(6));
        d.drop_ino(2);
        assert!(d.fresh(2).is_none());
        d.store(3, dir(1), minute());
        d.clear();
        assert!(d.fresh(3).is_none());
    }

    #[test]
    fn a_zero_timeout_keeps_nothing() {
        let d = AttrCache::new();
        d.store(2, dir(5), Instant::now());
        assert!(d.fresh(2).is_none());
    }
}
