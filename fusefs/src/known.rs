//! `KnownDirs`: directories whose every name this mount knows, for the attribute
//! timeout, so that a lookup of a name that is not there needs no round trip.
//!
//! Creating a file costs the kernel a lookup first (is the name free?), and in an
//! untar, a `cp -r` or a checkout nearly every name is new. A directory this
//! mount has just created is known to be empty, and one it has just listed in
//! full is known to hold exactly those names; from then on this mount adds every
//! name it creates there. Within the attribute timeout a name outside that set
//! is answered "no such entry" at once — the same promise a negative entry in the
//! kernel's cache makes (a name created meanwhile by another client is seen once
//! the timeout has run out). Names removed meanwhile stay in the set, which only
//! costs a lookup.

use crate::cache::TimedCache;
use ferry_common::path::NAME_MAX;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct KnownDirs {
    dirs: TimedCache<u64, HashSet<Vec<u8>>>,
}

impl KnownDirs {
    pub(crate) fn new(ttl: Duration) -> KnownDirs {
        KnownDirs {
            dirs: TimedCache::new(ttl),
        }
    }

    /// Directory `ino` held exactly `names` at `since` (a time no later than the
    /// server's answer was produced: when the request was sent).
    pub(crate) fn learn<'a>(
        &self,
        ino: u64,
        since: Instant,
        names: impl IntoIterator<Item = &'a [u8]>,
    ) {
        let names: HashSet<Vec<u8>> = names.into_iter().map(<[u8]>::to_vec).collect();
        // Names this mount added meanwhile may be missing from a listing that
        // was read before they were made: keep both.
        self.dirs
            .store_with(ino, since, names, |held, held_since, new| {
                held.extend(new);
                *held_since = (*held_since).max(since);
                None
            });
    }

    /// A name in `dir` may exist from now on (this mount created it, or tried to).
    pub(crate) fn add(&self, dir: u64, name: &OsStr) {
        self.dirs.update(&dir, |names| {
            names.insert(name.as_bytes().to_vec());
        });
    }

    /// Nothing is known of `dir` any more: the number is no longer that
    /// directory's (see [`crate::inode`]).
    pub(crate) fn forget(&self, dir: u64) {
        self.dirs.remove(&dir);
    }

    /// Whether `name` is known not to be in `dir`; if so, for how much longer.
    /// A name longer than a file system allows is never "absent": the server
    /// answers ENAMETOOLONG for it.
    pub(crate) fn absent(&self, dir: u64, name: &OsStr) -> Option<Duration> {
        if name.len() > NAME_MAX {
            return None;
        }
        self.dirs
            .read(&dir, |names, left| {
                (!names.contains(name.as_bytes())).then_some(left)
            })
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_known_directory_answers_for_its_missing_names() {
        let k = KnownDirs::new(Duration::from_secs(60));
        assert!(k.absent(7, n("a")).is_none(), "nothing known yet");
        k.learn(7, Instant::now(), [b"a".as_slice()]);
        assert!(k.absent(7, n("a")).is_none(), "listed");
        assert!(k.absent(7, n("b")).is_some());
        k.add(7, n("b"));
        assert!(k.absent(7, n("b")).is_none(), "created here");
        // A second listing adds to what is known: names made meanwhile stay.
        k.learn(7, Instant::now(), [b"c".as_slice()]);
        assert!(k.absent(7, n("b")).is_none());
        assert!(k.absent(7, n("c")).is_none());
    }

    #[test]
    fn knowledge_older_than_the_timeout_vouches_for_nothing() {
        let k = KnownDirs::new(Duration::from_secs(60));
        k.learn(7, Instant::now() - Duration::from_secs(61), []);
        assert!(k.absent(7, n("c")).is_none(), "too old to vouch for");
    }

    #[test]
    fn names_added_to_an_unknown_directory_are_ignored() {
        let k = KnownDirs::new(Duration::from_secs(5));
        k.add(7, n("a"));
        assert!(k.absent(7, n("b")).is_none());
    }

    #[test]
    fn a_zero_timeout_knows_nothing() {
        let k = KnownDirs::new(Duration::ZERO);
        k.learn(7, Instant::now(), []);
        assert!(k.absent(7, n("b")).is_none());
    }

    #[test]
    fn a_name_too_long_is_left_to_the_server() {
        let known = KnownDirs::new(Duration::from_secs(60));
        known.learn(7, Instant::now(), []);
        let long = "x".repeat(NAME_MAX + 1);
        assert!(known.absent(7, n(&long)).is_none());
        assert!(known.absent(7, n(&"x".repeat(NAME_MAX))).is_some());
    }
}
