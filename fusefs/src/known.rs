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

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Past this many directories, the ones known too long ago are dropped.
const TIDY_AT: usize = 4096;

/// The longest name Linux file systems hold (`NAME_MAX`).
const NAME_MAX: usize = 255;

#[derive(Debug)]
struct Known {
    since: Instant,
    names: HashSet<Vec<u8>>,
}

#[derive(Debug)]
pub struct KnownDirs {
    ttl: Duration,
    dirs: Mutex<HashMap<u64, Known>>,
}

impl KnownDirs {
    pub fn new(ttl: Duration) -> KnownDirs {
        KnownDirs {
            ttl,
            dirs: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Known>> {
        // Single map updates: a poisoned lock still guards a consistent map.
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Directory `ino` held exactly `names` at `since` (a time no later than the
    /// server's answer was produced: when the request was sent).
    pub fn learn<'a>(&self, ino: u64, since: Instant, names: impl IntoIterator<Item = &'a [u8]>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut dirs = self.lock();
        if dirs.len() >= TIDY_AT {
            let ttl = self.ttl;
            dirs.retain(|_, k| k.since.elapsed() < ttl);
        }
        let names = names.into_iter().map(<[u8]>::to_vec);
        match dirs.get_mut(&ino) {
            // Names this mount added meanwhile may be missing from a listing that
            // was read before they were made: keep both.
            Some(known) if known.since.elapsed() < self.ttl => {
                known.names.extend(names);
                known.since = known.since.max(since);
            }
            _ => {
                let names = names.collect();
                dirs.insert(ino, Known { since, names });
            }
        }
    }

    /// A name in `dir` may exist from now on (this mount created it, or tried to).
    pub fn add(&self, dir: u64, name: &OsStr) {
        if let Some(known) = self.lock().get_mut(&dir) {
            known.names.insert(name.as_bytes().to_vec());
        }
    }

    /// Whether `name` is known not to be in `dir`; if so, for how much longer.
    /// A name longer than a file system allows is never "absent": the server
    /// answers ENAMETOOLONG for it.
    pub fn absent(&self, dir: u64, name: &OsStr) -> Option<Duration> {
        if name.len() > NAME_MAX {
            return None;
        }
        let mut dirs = self.lock();
        let known = dirs.get(&dir)?;
        let left = self.ttl.checked_sub(known.since.elapsed());
        match left {
            Some(left) if !left.is_zero() => {
                (!known.names.contains(name.as_bytes())).then_some(left)
            }
            _ => {
                dirs.remove(&dir);
                None
            }
        }
    }

    /// Forgets what is known of `dir`.
    pub fn forget(&self, dir: u64) {
        self.lock().remove(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_known_directory_answers_for_its_missing_names_until_the_timeout() {
        let k = KnownDirs::new(Duration::from_millis(200));
        assert!(k.absent(7, n("a")).is_none(), "nothing known yet");
        k.learn(7, Instant::now(), [b"a".as_slice()]);
        assert!(k.absent(7, n("a")).is_none(), "listed");
        assert!(k.absent(7, n("b")).is_some());
        k.add(7, n("b"));
        assert!(k.absent(7, n("b")).is_none(), "created here");
        std::thread::sleep(Duration::from_millis(250));
        assert!(k.absent(7, n("c")).is_none(), "too old to vouch for");
    }

    #[test]
    fn names_added_to_an_unknown_directory_are_ignored() {
        let k = KnownDirs::new(Duration::from_secs(5));
        k.add(7, n("a"));
        assert!(k.absent(7, n("b")).is_none());
        k.learn(7, Instant::now(), []);
        k.forget(7);
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
