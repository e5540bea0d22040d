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

use crate::client::{OpResult, RemoteClient};
use ferry_common::proto::{Cred, FileLock, LockKind, LockType, Op, Reply, LOCK_TO_EOF};
use ferry_common::sync::lock;
use ferry_common::Errno;
use std::collections::HashMap;
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

/// Sends the non-blocking `op` again and again (on a thread of its own) until it
/// succeeds, fails otherwise than EAGAIN, the connection `epoch` is gone, or
/// thread `tid` is signalled (EINTR); then calls `done`.
pub(crate) fn wait_for_lock(
    client: RemoteClient,
    epoch: u64,
    cred: Cred,
    op: Op,
    tid: u32,
    done: impl FnOnce(Result<(), Errno>) + Send + 'static,
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
                match client.call_in(epoch, &cred, op.clone()) {
                    Ok(_) => break Ok(()),
                    Err(e) if e.code() == libc::EAGAIN => continue,
                    Err(e) => break Err(e),
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

/// The POSIX lock owners that may hold locks on the server, by inode and owner,
/// with the connection they were taken on: a flush sends `ReleaseLocks` only for
/// these, so closing a file that was never locked costs no round trip.
#[derive(Debug, Default)]
pub(crate) struct LockOwners {
    held: Mutex<HashMap<(u64, u64), u64>>,
}

impl LockOwners {
    pub(crate) fn new() -> LockOwners {
        LockOwners::default()
    }

    /// `owner` took a lock on `ino` on connection `epoch`.
    pub(crate) fn note(&self, ino: u64, owner: u64, epoch: u64) {
        lock(&self.held).insert((ino, owner), epoch);
    }

    /// Forgets (`ino`, `owner`) and says on which connection its locks were taken.
    pub(crate) fn take(&self, ino: u64, owner: u64) -> Option<u64> {
        lock(&self.held).remove(&(ino, owner))
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

    #[test]
    fn owners_are_released_once() {
        let owners = LockOwners::new();
        owners.note(5, 9, 1);
        owners.note(5, 8, 2);
        assert_eq!(owners.take(5, 9), Some(1));
        assert_eq!(owners.take(5, 9), None);
        assert_eq!(owners.take(5, 8), Some(2));
    }
}
