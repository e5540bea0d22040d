//! `KnownDirs`: directories whose every name this mount knows — what a
//! directory lease gives it.
//!
//! Creating a file costs the kernel a lookup first (is the name free?), and in an
//! untar, a `cp -r` or a checkout nearly every name is new. A directory this
//! mount has just created is known to be empty, and one it has just listed in
//! full is known to hold exactly those names; from then on this mount adds every
//! name it creates there and removes every name it removes. While that
//! knowledge holds, a name outside the set is answered "no such entry" at once.
//!
//! How long it holds is decided when it is learnt (see [`crate::cache`]): the
//! attribute timeout, or, while the server tells this mount of every change,
//! the lease — then a change made elsewhere recalls it at once ([`forget`]),
//! because the server's notice says the directory's names changed.
//!
//! The set is exact, not merely a superset: a change this mount could not
//! confirm (a create that failed for any reason but "it exists") forgets the
//! directory instead of guessing.
//!
//! [`forget`]: KnownDirs::forget

use crate::cache::TimedCache;
use ferry_common::path::NAME_MAX;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub(crate) struct KnownDirs {
    dirs: TimedCache<u64, HashSet<Vec<u8>>>,
}

impl KnownDirs {
    pub(crate) fn new() -> KnownDirs {
        KnownDirs::default()
    }

    /// Directory `ino` held exactly `names` when the server answered; this
    /// may be trusted until `until`.
    pub(crate) fn learn<'a>(
        &self,
        ino: u64,
        until: Instant,
        names: impl IntoIterator<Item = &'a [u8]>,
    ) {
        let names: HashSet<Vec<u8>> = names.into_iter().map(<[u8]>::to_vec).collect();
        self.dirs.store(ino, names, until);
    }

    /// A name in `dir` exists from now on (this mount is making it).
    pub(crate) fn add(&self, dir: u64, name: &OsStr) {
        self.dirs.update(&dir, |names| {
            names.insert(name.as_bytes().to_vec());
        });
    }

    /// The name is gone from `dir` (this mount removed it).
    pub(crate) fn remove(&self, dir: u64, name: &OsStr) {
        self.dirs.update(&dir, |names| {
            names.remove(name.as_bytes());
        });
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

    /// Whether `name` is known to be in `dir` right now.
    pub(crate) fn has(&self, dir: u64, name: &OsStr) -> bool {
        self.dirs
            .read(&dir, |names, _| names.contains(name.as_bytes()))
            .unwrap_or(false)
    }

    /// Whether `dir` is known to hold no names right now.
    pub(crate) fn empty(&self, dir: u64) -> bool {
        self.dirs
            .read(&dir, |names, _| names.is_empty())
            .unwrap_or(false)
    }

    /// Whether every name of `dir` is known right now (the directory is leased).
    pub(crate) fn holds(&self, dir: u64) -> bool {
        self.dirs.read(&dir, |_, _| ()).is_some()
    }

    /// What is known of `dir` no longer holds (it changed elsewhere, or the
    /// number is no longer that directory's: see [`crate::inode`]).
    pub(crate) fn forget(&self, dir: u64) {
        self.dirs.remove(&dir);
    }

    /// Nothing is known any more.
    pub(crate) fn clear(&self) {
        self.dirs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn in_secs(s: u64) -> Instant {
        Instant::now() + Duration::from_secs(s)
    }

    #[test]
    fn a_known_directory_answers_for_its_missing_names() {
        let k = KnownDirs::new();
        assert!(k.absent(7, n("a")).is_none(), "nothing known yet");
        assert!(!k.holds(7));
        k.learn(7, in_secs(60), [b"a".as_slice()]);
        assert!(k.holds(7));
        assert!(k.has(7, n("a")) && !k.has(7, n("b")) && !k.empty(7));
        assert!(k.absent(7, n("a")).is_none(), "listed");
        assert!(k.absent(7, n("b")).is_some());
        k.add(7, n("b"));
        assert!(k.absent(7, n("b")).is_none(), "created here");
        k.remove(7, n("a"));
        assert!(k.absent(7, n("a")).is_some(), "removed here");
        k.remove(7, n("b"));
        assert!(k.empty(7));
        assert!(!k.empty(8) && !k.has(8, n("a")), "nothing known of 8");
        k.add(7, n("b"));
        // A new listing is the whole truth.
        k.learn(7, in_secs(60), [b"c".as_slice()]);
        assert!(k.absent(7, n("b")).is_some());
        assert!(k.absent(7, n("c")).is_none());
        k.forget(7);
        assert!(!k.holds(7));
        assert!(k.absent(7, n("z")).is_none());
    }

    #[test]
    fn knowledge_past_its_horizon_vouches_for_nothing() {
        let k = KnownDirs::new();
        k.learn(7, Instant::now(), []);
        assert!(k.absent(7, n("c")).is_none(), "too old to vouch for");
        k.learn(8, in_secs(60), []);
        k.clear();
        assert!(!k.holds(8));
    }

    #[test]
    fn names_added_to_an_unknown_directory_are_ignored() {
        let k = KnownDirs::new();
        k.add(7, n("a"));
        assert!(k.absent(7, n("b")).is_none());
    }

    #[test]
    fn a_name_too_long_is_left_to_the_server() {
        let known = KnownDirs::new();
        known.learn(7, in_secs(60), []);
        let long = "x".repeat(NAME_MAX + 1);
        assert!(known.absent(7, n(&long)).is_none());
        assert!(known.absent(7, n(&"x".repeat(NAME_MAX))).is_some());
    }
}
