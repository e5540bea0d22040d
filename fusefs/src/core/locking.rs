//! `getlk`, `setlk` and the release of POSIX locks on close, over the server's
//! locks (see [`crate::locks`] for how waiting and flock detection work).
//! What is granted is recorded, so that it can be taken back after a
//! reconnect (see [`super::reclaim`]).

use super::{Caller, Core, Done};
use crate::locks::{self, file_lock, lock_kind, lock_type_code, Attempt};
use ferry_common::proto::{FileLock, LockType, Op};
use ferry_common::sync::lock;
use ferry_common::Errno;

/// The answer to `F_GETLK`: the conflicting lock, or the range asked about with
/// type `F_UNLCK` when nothing conflicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockAnswer {
    pub start: u64,
    pub end: u64,
    /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
    pub typ: i32,
    /// The holder may be on another machine: its pid means nothing here, 0.
    pub pid: u32,
}

impl Core {
    /// The lock the kernel asks about, in wire form: EINVAL for a type it never
    /// sends, ENOLCK unless `fh` is an open file of `ino` (directories are not
    /// opened on the server, so they have nothing to lock, and their handle
    /// numbers are counted apart from files': the same number may name a file).
    fn lock_request(
        &self,
        ino: u64,
        fh: u64,
        typ: i32,
        start: u64,
        end: u64,
    ) -> Result<FileLock, Errno> {
        let wanted = file_lock(typ, start, end).ok_or(Errno::EINVAL)?;
        if lock(&self.files).get(fh).is_none_or(|f| f.ino != ino) {
            return Err(Errno::new(libc::ENOLCK));
        }
        Ok(wanted)
    }

    /// `F_GETLK` of `owner` for the range `start..=end` of type `typ` (`F_*`).
    #[allow(clippy::too_many_arguments)]
    pub fn getlk(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        done: impl Done<LockAnswer>,
    ) {
        let lock = match self.lock_request(ino, fh, typ, start, end) {
            Ok(lock) => lock,
            Err(e) => return done(Err(e)),
        };
        let make = |handle| Op::GetLock {
            handle,
            owner,
            lock,
        };
        self.on_handle(fh, &caller.cred, make, move |r| {
            done(locks::conflict_of(r).map(|conflict| match conflict {
                Some(c) => LockAnswer {
                    start: c.start,
                    end: c.end,
                    typ: lock_type_code(c.typ),
                    pid: 0,
                },
                None => LockAnswer {
                    start,
                    end,
                    typ: libc::F_UNLCK,
                    pid: 0,
                },
            }))
        });
    }

    /// `F_SETLK` (or, with `sleep`, `F_SETLKW`; also `flock`) by the caller's
    /// thread, of lock owner `owner`.
    #[allow(clippy::too_many_arguments)]
    pub fn setlk(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        sleep: bool,
        done: impl Done<()>,
    ) {
        let tid = caller.pid;
        let lock = match self.lock_request(ino, fh, typ, start, end) {
            Ok(lock) => lock,
            Err(e) => return done(Err(e)),
        };
        let kind = lock_kind(tid, &lock);
        // What was written under a lock must be on the server before the lock is
        // let go (or changed): the next holder reads it from there. (A write
        // error stays for close and fsync to report.)
        self.writes.wait_idle(ino);
        let (epoch, handle) = match self.server_handle(fh) {
            Ok(h) => h,
            Err(e) => return done(Err(e)),
        };
        let make = move |handle| Op::SetLock {
            handle,
            owner,
            kind,
            lock,
        };
        let core = self.clone();
        // Records what the server granted, and drops cached data before a lock
        // is granted: another client may have changed the file while this one
        // did not hold the lock, and a database reading stale pages under its
        // lock would corrupt itself.
        let finish = move |r: Result<u64, Errno>| match r {
            Ok(epoch) => {
                core.held.granted(ino, fh, owner, kind, lock, epoch);
                if lock.typ == LockType::Unlock {
                    return done(Ok(()));
                }
                core.writes.doubt(ino);
                core.attrs.drop_ino(ino);
                core.opened.changed(ino);
                core.kernel
                    .forget_data_then(ino, Box::new(move || done(Ok(()))));
            }
            Err(e) => done(Err(e)),
        };
        let waiter = self.clone();
        let cred = caller.cred.clone();
        self.ask(Some(epoch), &caller.cred, make(handle), move |r| match r {
            // Held elsewhere, or the connection went before the answer came:
            // a waiting lock waits on.
            Err(e)
                if sleep
                    && (e.code() == libc::EAGAIN
                        || (matches!(e, Errno::EIO | Errno::ETIMEDOUT)
                            && waiter.client.current_epoch() != Some(epoch))) =>
            {
                let attempt = move || waiter.try_lock(fh, &cred, make);
                locks::wait_for_lock(tid, attempt, finish)
            }
            other => finish(other.map(|_| epoch)),
        });
    }

    /// One attempt of a waiting lock through kernel handle `fh`: on whatever
    /// connection is up, the file opened again there if need be. With no
    /// connection, or a lost one, it waits on.
    fn try_lock(
        &self,
        fh: u64,
        cred: &ferry_common::proto::Cred,
        make: impl Fn(u64) -> Op,
    ) -> Attempt {
        // A failure because the connection is down or went meanwhile says
        // nothing about the lock; any other ends the wait.
        let before = self.client.current_epoch();
        let went = |e: Errno| {
            matches!(e, Errno::EIO | Errno::ETIMEDOUT)
                && !self.held.is_lost(fh)
                && (before.is_none() || self.client.current_epoch() != before)
        };
        let (epoch, handle) = match self.server_handle(fh) {
            Ok(h) => h,
            Err(e) if went(e) => return Attempt::Busy,
            Err(e) => return Attempt::Failed(e),
        };
        match self.client.call_in(epoch, cred, make(handle)) {
            Ok(_) => Attempt::Granted(epoch),
            Err(e) if e.code() == libc::EAGAIN => Attempt::Busy,
            Err(e) if self.client.current_epoch() != Some(epoch) => {
                log::debug!("a waiting lock's connection went ({e}); waiting on");
                Attempt::Busy
            }
            Err(e) => Attempt::Failed(e),
        }
    }

    /// Drops `owner`'s POSIX locks on `ino` if it may hold any (close(2) does, on
    /// any descriptor of the file), then calls `then`. Locks of a connection that
    /// is gone went with it, so a failure here is logged, not reported.
    pub(super) fn release_posix_locks(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        owner: u64,
        then: impl FnOnce() + Send + 'static,
    ) {
        // Most closes come from owners that never locked: no round trip, and
        // not even a look at the connection.
        let Some(epoch) = self.held.take(ino, owner) else {
            return then();
        };
        if self.client.current_epoch() != Some(epoch) {
            return then();
        }
        let make = |handle| Op::ReleaseLocks { handle, owner };
        self.on_handle(fh, &caller.cred, make, move |r| {
            if let Err(e) = r {
                log::debug!("releasing locks on close: {e}");
            }
            then()
        });
    }
}
