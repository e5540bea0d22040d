//! `AttrCache`: the attributes the server last reported for each inode, for the
//! attribute timeout.
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
//! entry here too, so the next `getattr` reaches the server.

use crate::cache::TimedCache;
use ferry_common::Attr;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct AttrCache {
    entries: TimedCache<u64, Attr>,
}

impl AttrCache {
    pub(crate) fn new(ttl: Duration) -> AttrCache {
        AttrCache {
            entries: TimedCache::new(ttl),
        }
    }

    /// Records what the server said `ino` looks like now. Answers to concurrent
    /// changes can arrive out of order: the older change is ignored.
    pub(crate) fn store(&self, ino: u64, attr: Attr) {
        self.store_asked(ino, attr, Instant::now());
    }

    /// [`store`](Self::store) of an answer to a question asked at `asked`.
    pub(crate) fn store_asked(&self, ino: u64, attr: Attr, asked: Instant) {
        self.entries.store_with(ino, asked, attr, |held, _, new| {
            ((new.ctime, new.mtime) >= (held.ctime, held.mtime)).then_some(new)
        });
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

    #[test]
    fn the_newest_answer_wins_and_a_dropped_one_is_gone() {
        let d = AttrCache::new(Duration::from_secs(60));
        assert!(d.fresh(2).is_none());
        d.store(2, dir(5));
        d.store(2, dir(4));
        let (a, left) = d.fresh(2).expect("just stored");
        assert_eq!(a.ctime.secs, 5);
        assert!(left <= Duration::from_secs(60));
        d.store(2, dir(6));
        assert_eq!(d.fresh(2).map(|(a, _)| a.ctime.secs), Some(6));
        d.drop_ino(2);
        assert!(d.fresh(2).is_none());
    }

    #[test]
    fn a_zero_timeout_keeps_nothing() {
        let d = AttrCache::new(Duration::ZERO);
        d.store(2, dir(5));
        assert!(d.fresh(2).is_none());
    }
}
