//! `DirAttrs`: the attributes of directories as the server reported them right
//! after this mount changed them.
//!
//! Every create, mkdir, unlink or rename makes the kernel drop the attributes it
//! holds for the directory, and it needs them again at once: with
//! `default_permissions` it checks search permission on the directory before the
//! next name in it is looked up. Asking the server would cost a round trip per
//! file in an untar or `rm -rf`; so the server sends the directory's attributes
//! along with the change (like NFS's post-operation attributes), and `getattr`
//! answers from here while they are younger than the attribute timeout — exactly
//! as fresh as a `getattr` sent at that moment would have been.

use ferry_common::Attr;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct DirAttrs {
    ttl: Duration,
    entries: Mutex<HashMap<u64, (Attr, Instant)>>,
}

impl DirAttrs {
    pub fn new(ttl: Duration) -> DirAttrs {
        DirAttrs {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (Attr, Instant)>> {
        // Single map operations: a poisoned lock still holds a consistent map.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what the server said directory `ino` looks like now. Answers to
    /// concurrent changes can arrive out of order: the older change is ignored.
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
        let d = DirAttrs::new(Duration::from_millis(200));
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
        let d = DirAttrs::new(Duration::ZERO);
        d.store(2, dir(5));
        assert!(d.fresh(2).is_none());
    }
}
