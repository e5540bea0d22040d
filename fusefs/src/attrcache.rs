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
//! of its names, a rename, an xattr change, a lock taken), the adapter drops the
//! entry here too, so the next `getattr` reaches the server.

use ferry_common::Attr;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct AttrCache {
    ttl: Duration,
    entries: Mutex<HashMap<u64, (Attr, Instant)>>,
}

impl AttrCache {
    pub fn new(ttl: Duration) -> AttrCache {
        AttrCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (Attr, Instant)>> {
        // Single map operations: a poisoned lock still holds a consistent map.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what the server said `ino` looks like now. Answers to concurrent
    /// changes can arrive out of order: the older change is ignored.
    pub fn store(&self, ino: u64, attr: Attr) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.lock();
        if let Some((held, _)) = entries.get(&ino) {
            if (held.ctime, held.mtime) > (attr.ctime, attr.mtime) {
                return;
            }
        }
        entries.insert(ino, (attr, Instant::now()));
    }

    /// The attributes of `ino` and how much longer they may be trusted, if they
    /// arrived within the attribute timeout.
    pub fn fresh(&self, ino: u64) -> Option<(Attr, Duration)> {
        let mut entries = self.lock();
        let (attr, at) = *entries.get(&ino)?;
        match self.ttl.checked_sub(at.elapsed()) {
            Some(left) if !left.is_zero() => Some((attr, left)),
            _ => {
                entries.remove(&ino);
                None
            }
        }
    }

    /// Drops what is known of `ino` (changed in a way the server did not report,
    /// or forgotten by the kernel).
    pub fn drop_ino(&self, ino: u64) {
        self.lock().remove(&ino);
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
    fn fresh_until_the_timeout_and_newest_wins() {
        let d = AttrCache::new(Duration::from_millis(200));
        assert!(d.fresh(2).is_none());
        d.store(2, dir(5));
        d.store(2, dir(4));
        let (a, left) = d.fresh(2).expect("just stored");
        assert_eq!(a.ctime.secs, 5);
        assert!(left <= Duration::from_millis(200));
        std::thread::sleep(Duration::from_millis(250));
        assert!(d.fresh(2).is_none());
        d.store(2, dir(6));
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
