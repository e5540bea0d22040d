//! File locks on the mount, held by the server (see the server's `export::locks`).
//!
//! The kernel sends `flock` and `fcntl` locks alike as `setlk`; fuser 0.18 drops
//! the flag that tells them apart, so [`lock_kind`] asks `/proc` which system call
//! the requesting thread is in. Where `/proc` does not say (a mount not running as
//! root cannot read another user's `/proc/<tid>/syscall`), a whole-file lock is
//! taken as a POSIX lock — the way NFS emulates flock: mounts still exclude each
//! other, but not `flock(2)` of local processes on the server.
//!
//! # Waiting (`F_SETLKW`, `flock` without `LOCK_NB`)
//!
//! The server never blocks: on a conflict it answers EAGAIN, and [`wait_for_lock`]
//! asks again, first after a millisecond, then backing off to
//! [`MAX_BACKOFF`]. So a wait may last as long as the holder likes without
//! meeting the request timeout, holds no server thread, and ends with the
//! connection. Waiters are not served in order, and a lock freed and taken again
//! between two polls is missed; an application that needs fairness under heavy
//! contention will notice, a database will not.
//!
//! A signal for the waiting thread ends the wait with EINTR (the kernel restarts
//! the call when the handler allows it), as on a local disk. fuser 0.18 ignores
//! the kernel's interrupt requests, so each poll looks at the thread's pending
//! signals in `/proc/<tid>/status`.

use crate::client::OpResult;
use ferry_common::lockset::LockSet;
use ferry_common::proto::{FileLock, LockKind, LockType, Reply, LOCK_TO_EOF};
use ferry_common::sync::lock as lock_mutex;
use ferry_common::Errno;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

/// The longest pause between two attempts of a waiting lock.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(100);
const FIRST_BACKOFF: Duration = Duration::from_millis(1);

/// A lock request from the kernel in wire form; `None` for a type it never sends.
pub(crate) fn file_lock(typ: i32, start: u64, end: u64) -> Option<FileLock> {
    let typ = match typ {
        libc::F_RDLCK => LockType::Read,
        libc::F_WRLCK => LockType::Write,
        libc::F_UNLCK => LockType::Unlock,
        _ => return None,
    };
    Some(FileLock { typ, start, end })
}

/// The kernel's `F_*` value of a lock type.
pub(crate) fn lock_type_code(typ: LockType) -> i32 {
    match typ {
        LockType::Read => libc::F_RDLCK,
        LockType::Write => libc::F_WRLCK,
        LockType::Unlock => libc::F_UNLCK,
    }
}

/// Whether the request of thread `tid` for `lock` is an `flock` (whole file, and
/// the thread is inside `flock(2)`) or a POSIX lock.
pub(crate) fn lock_kind(tid: u32, lock: &FileLock) -> LockKind {
    if lock.start != 0 || lock.end < LOCK_TO_EOF || tid == 0 {
        return LockKind::Posix;
    }
    // The thread is between queueing its request and going to sleep for a
    // moment ("running"); it is asleep in the system call soon after.
    for _ in 0..SYSCALL_TRIES {
        match std::fs::read_to_string(format!("/proc/{tid}/syscall")) {
            Ok(text) => match syscall_number(&text) {
                Some(libc::SYS_flock) => return LockKind::Flock,
                Some(_) => return LockKind::Posix,
                None => thread::sleep(Duration::from_micros(100)),
            },
            Err(_) => return LockKind::Posix,
        }
    }
    LockKind::Posix
}

/// How often [`lock_kind`] looks at a thread that is still running.
const SYSCALL_TRIES: usize = 20;

/// The first field of `/proc/<tid>/syscall`: the number of the system call the
/// thread is blocked in ("running" or "-1 ..." otherwise).
fn syscall_number(text: &str) -> Option<libc::c_long> {
    text.split_whitespace().next()?.parse().ok()
}

/// Whether thread `tid` has a signal waiting that it does not block, or is gone.
pub(crate) fn signal_pending(tid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => pending_in_status(&status),
        Err(_) => tid != 0,
    }
}

fn pending_in_status(status: &str) -> bool {
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

/// One attempt of a waiting lock.
pub(crate) enum Attempt {
    /// Granted, on the connection of this epoch.
    Granted(u64),
    /// Held elsewhere, or the server cannot be asked right now (no
    /// connection, or the server in its grace period): ask again later.
    Busy,
    Failed(Errno),
}

/// Makes `attempt` again and again (on a thread of its own), first after a
/// millisecond and backing off to [`MAX_BACKOFF`], until it is granted or
/// fails, or thread `tid` is signalled (EINTR); then calls `done` with the
/// epoch it was granted on. A wait goes on across a lost connection: the
/// attempt finds the file again on the next one.
pub(crate) fn wait_for_lock(
    tid: u32,
    mut attempt: impl FnMut() -> Attempt + Send + 'static,
    done: impl FnOnce(Result<u64, Errno>) + Send + 'static,
) {
    let spawned = thread::Builder::new()
        .name("ferry-lock-wait".into())
        .spawn(move || {
            let mut pause = FIRST_BACKOFF;
            let outcome = loop {
                if signal_pending(tid) {
                    break Err(Errno::new(libc::EINTR));
                }
                thread::sleep(pause);
                pause = (pause * 2).min(MAX_BACKOFF);
                match attempt() {
                    Attempt::Granted(epoch) => break Ok(epoch),
                    Attempt::Busy => continue,
                    Attempt::Failed(e) => break Err(e),
                }
            };
            done(outcome)
        });
    if let Err(e) = spawned {
        log::warn!("cannot start waiting for a lock: {e}");
        // The closure (and `done`) went down with the failed spawn; the kernel's
        // reply object answers EIO when dropped.
    }
}

/// What this mount holds on the server, to take it back after a reconnect,
/// and the open files whose locks could not be taken back.
///
/// - POSIX locks by (inode, owner): the ranges held (merged and split as the
///   kernel does, see [`LockSet`]) and the kernel handles they were taken
///   through;
/// - flocks by kernel handle: the inode, the owner the kernel named and the type;
/// - per inode with locks, the connection they are known to be held on;
/// - the *lost* handles: their locks are gone (the server restarted and the
///   grace period was over, another client took the lock meanwhile, the file
///   is gone), so every operation through them fails with EIO, and no process
///   goes on believing it holds a lock it does not.
#[derive(Debug, Default)]
pub(crate) struct HeldLocks {
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    posix: HashMap<(u64, u64), PosixHeld>,
    flocks: HashMap<u64, FlockHeld>,
    /// Per inode with locks: the epoch they are held on.
    on: HashMap<u64, u64>,
    lost: HashSet<u64>,
}

#[derive(Debug, Default)]
struct PosixHeld {
    ranges: LockSet,
    via: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
struct FlockHeld {
    ino: u64,
    owner: u64,
    typ: LockType,
}

/// One lock to take back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ToReclaim {
    pub(crate) kind: LockKind,
    pub(crate) owner: u64,
    pub(crate) lock: FileLock,
    /// The kernel handle an flock belongs to (POSIX: none).
    pub(crate) fh: Option<u64>,
}

impl Held {
    fn has_locks(&self, ino: u64) -> bool {
        self.posix.keys().any(|(i, _)| *i == ino) || self.flocks.values().any(|f| f.ino == ino)
    }

    /// Forgets the epoch of an inode that holds nothing any more.
    fn tidy(&mut self, ino: u64) {
        if !self.has_locks(ino) {
            self.on.remove(&ino);
        }
    }
}

impl HeldLocks {
    pub(crate) fn new() -> HeldLocks {
        HeldLocks::default()
    }

    /// The server granted `lock` (of `kind`, for `owner`, through kernel
    /// handle `fh` of `ino`) on connection `epoch`; an unlock drops it.
    pub(crate) fn granted(
        &self,
        ino: u64,
        fh: u64,
        owner: u64,
        kind: LockKind,
        lock: FileLock,
        epoch: u64,
    ) {
        let mut held = lock_mutex(&self.held);
        match kind {
            LockKind::Posix => {
                let entry = held.posix.entry((ino, owner)).or_default();
                entry.ranges.apply(&lock);
                if !entry.via.contains(&fh) {
                    entry.via.push(fh);
                }
                if entry.ranges.is_empty() {
                    held.posix.remove(&(ino, owner));
                }
            }
            LockKind::Flock if lock.typ == LockType::Unlock => {
                held.flocks.remove(&fh);
            }
            LockKind::Flock => {
                held.flocks.insert(
                    fh,
                    FlockHeld {
                        ino,
                        owner,
                        typ: lock.typ,
                    },
                );
            }
        }
        if held.has_locks(ino) {
            let on = held.on.entry(ino).or_insert(epoch);
            *on = (*on).max(epoch);
        } else {
            held.on.remove(&ino);
        }
    }

    /// `owner` dropped its POSIX locks on `ino` (it closed a descriptor of
    /// it): the epoch they were held on, if it held any.
    pub(crate) fn take(&self, ino: u64, owner: u64) -> Option<u64> {
        let mut held = lock_mutex(&self.held);
        held.posix.remove(&(ino, owner))?;
        let epoch = held.on.get(&ino).copied();
        held.tidy(ino);
        epoch
    }

    /// Kernel handle `fh` of `ino` was released: its flock went with it, and
    /// whether it had lost its locks no longer matters.
    pub(crate) fn released(&self, ino: u64, fh: u64) {
        let mut held = lock_mutex(&self.held);
        held.flocks.remove(&fh);
        held.lost.remove(&fh);
        for entry in held.posix.values_mut() {
            entry.via.retain(|&v| v != fh);
        }
        held.tidy(ino);
    }

    /// Whether the locks of kernel handle `fh` were lost.
    pub(crate) fn is_lost(&self, fh: u64) -> bool {
        lock_mutex(&self.held).lost.contains(&fh)
    }

    /// Whether `ino` holds locks not known to be held on connection `epoch`:
    /// they must be taken back there before anything else is done with it.
    pub(crate) fn needs_reclaim(&self, ino: u64, epoch: u64) -> bool {
        lock_mutex(&self.held)
            .on
            .get(&ino)
            .is_some_and(|&on| on != epoch)
    }

    /// The locks of `ino` to take back.
    pub(crate) fn to_reclaim(&self, ino: u64) -> Vec<ToReclaim> {
        let held = lock_mutex(&self.held);
        let mut all: Vec<ToReclaim> = Vec::new();
        for ((i, owner), entry) in &held.posix {
            if *i == ino {
                all.extend(entry.ranges.locks().map(|lock| ToReclaim {
                    kind: LockKind::Posix,
                    owner: *owner,
                    lock,
                    fh: None,
                }));
            }
        }
        for (fh, f) in &held.flocks {
            if f.ino == ino {
                all.push(ToReclaim {
                    kind: LockKind::Flock,
                    owner: f.owner,
                    lock: FileLock {
                        typ: f.typ,
                        start: 0,
                        end: LOCK_TO_EOF,
                    },
                    fh: Some(*fh),
                });
            }
        }
        all
    }

    /// Every lock of `ino` is held on connection `epoch` now.
    pub(crate) fn settle(&self, ino: u64, epoch: u64) {
        let mut held = lock_mutex(&self.held);
        if held.has_locks(ino) {
            held.on.insert(ino, epoch);
        }
    }

    /// `lost` could not be taken back: the handles it was held through fail
    /// from now on, and it is forgotten. Returns how many handles that is.
    pub(crate) fn lose(&self, ino: u64, lost: &ToReclaim) -> usize {
        let mut held = lock_mutex(&self.held);
        let handles: Vec<u64> = match lost.kind {
            LockKind::Posix => held
                .posix
                .remove(&(ino, lost.owner))
                .map(|entry| entry.via)
                .unwrap_or_default(),
            LockKind::Flock => lost
                .fh
                .filter(|fh| held.flocks.remove(fh).is_some())
                .into_iter()
                .collect(),
        };
        held.lost.extend(&handles);
        held.tidy(ino);
        handles.len()
    }

    /// Every inode holding locks, with a kernel handle of it to reach it by.
    pub(crate) fn locked(&self) -> Vec<(u64, u64)> {
        let held = lock_mutex(&self.held);
        let mut found: HashMap<u64, u64> = HashMap::new();
        for ((ino, _), entry) in &held.posix {
            if let Some(&fh) = entry.via.first() {
                found.entry(*ino).or_insert(fh);
            }
        }
        for (fh, f) in &held.flocks {
            found.entry(f.ino).or_insert(*fh);
        }
        found.into_iter().collect()
    }
}

/// The kernel's answer for a `GetLock` result.
pub(crate) fn conflict_of(result: OpResult) -> Result<Option<FileLock>, Errno> {
    match result {
        Ok(Reply::LockConflict(c)) => Ok(c),
        Ok(_) => Err(Errno::EPROTO),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_signals_count_unless_blocked_or_ignored() {
        let status = "Name:\tx\nSigQ:\t0/1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n\
                      SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n";
        assert!(pending_in_status(status));
        let blocked = status.replace("SigBlk:\t0000000000000000", "SigBlk:\t0000000000000100");
        assert!(!pending_in_status(&blocked));
        let none = status.replace("ShdPnd:\t0000000000000100", "ShdPnd:\t0000000000000000");
        assert!(!pending_in_status(&none));
    }

    #[test]
    fn only_whole_file_locks_can_be_flocks() {
        let part = FileLock {
            typ: LockType::Write,
            start: 0,
            end: 99,
        };
        assert_eq!(lock_kind(std::process::id(), &part), LockKind::Posix);
        assert_eq!(syscall_number("73 0x3 0x2 0x0"), Some(73));
        assert_eq!(syscall_number("running"), None);
    }

    fn range(typ: LockType, start: u64, end: u64) -> FileLock {
        FileLock { typ, start, end }
    }

    #[test]
    fn owners_are_released_once() {
        let held = HeldLocks::new();
        held.granted(5, 1, 9, LockKind::Posix, range(LockType::Read, 0, 0), 1);
        held.granted(5, 1, 8, LockKind::Posix, range(LockType::Read, 1, 1), 1);
        assert_eq!(held.take(5, 9), Some(1));
        assert_eq!(held.take(5, 9), None);
        assert_eq!(held.take(5, 8), Some(1));
        assert!(held.locked().is_empty());
    }

    #[test]
    fn what_is_held_is_what_is_taken_back_and_losing_it_fails_its_handles() {
        let held = HeldLocks::new();
        let all = LOCK_TO_EOF;
        held.granted(5, 1, 9, LockKind::Posix, range(LockType::Write, 0, 99), 1);
        held.granted(5, 2, 9, LockKind::Posix, range(LockType::Unlock, 10, 19), 1);
        held.granted(5, 3, 3, LockKind::Flock, range(LockType::Read, 0, all), 1);
        held.granted(6, 4, 9, LockKind::Posix, range(LockType::Read, 0, 0), 1);
        assert!(!held.needs_reclaim(5, 1));
        assert!(held.needs_reclaim(5, 2));
        let mut back = held.to_reclaim(5);
        back.sort_by_key(|r| (r.lock.start, r.fh));
        assert_eq!(back.len(), 3);
        assert_eq!((back[0].kind, back[0].fh), (LockKind::Posix, None));
        assert_eq!((back[1].kind, back[1].fh), (LockKind::Flock, Some(3)));
        assert_eq!((back[2].lock.start, back[2].lock.end), (20, 99));
        held.settle(5, 2);
        assert!(!held.needs_reclaim(5, 2));
        // The POSIX owner's locks are lost: both handles it locked through fail.
        assert_eq!(held.lose(5, &back[0]), 2);
        assert!(held.is_lost(1) && held.is_lost(2) && !held.is_lost(3));
        // A released handle is forgotten, lost or not.
        held.released(5, 1);
        assert!(!held.is_lost(1));
        let mut locked = held.locked();
        locked.sort_unstable();
        assert_eq!(locked, [(5, 3), (6, 4)]);
        held.released(5, 3);
        assert_eq!(held.locked(), [(6, 4)]);
        assert!(!held.needs_reclaim(5, 7));
    }
}
