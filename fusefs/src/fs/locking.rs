//! `getlk`, `setlk` and the release of POSIX locks on close, over the server's
//! locks (see [`crate::locks`] for how waiting and flock detection work).

use super::{lock as guard, FerryFs};
use crate::convert::errno;
use crate::locks::{self, file_lock, lock_kind, lock_type_code};
use ferry_common::proto::{LockKind, LockType, Op};
use ferry_common::Errno;
use fuser::{FileHandle, INodeNo, LockOwner, ReplyEmpty, ReplyLock};

impl FerryFs {
    /// Whether `fh` is an open file of `ino`. Directories are not opened on the
    /// server, so they have nothing to lock, and their handle numbers are
    /// counted apart from files' (the same number may name an open file).
    fn is_open_file(&self, ino: INodeNo, fh: FileHandle) -> bool {
        guard(&self.files).get(fh.0).is_some_and(|f| f.ino == ino.0)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn lock_test(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        reply: ReplyLock,
    ) {
        let Some(lock) = file_lock(typ, start, end) else {
            return reply.error(errno(Errno::EINVAL));
        };
        if !self.is_open_file(ino, fh) {
            return reply.error(errno(Errno::new(libc::ENOLCK)));
        }
        let make = |handle| Op::GetLock {
            handle,
            owner: owner.0,
            lock,
        };
        self.on_handle(fh, make, move |r| match locks::conflict_of(r) {
            // The holder may be on another machine: its pid means nothing here.
            Ok(Some(c)) => reply.locked(c.start, c.end, lock_type_code(c.typ), 0),
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(errno(e)),
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn lock_set(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        tid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(lock) = file_lock(typ, start, end) else {
            return reply.error(errno(Errno::EINVAL));
        };
        if !self.is_open_file(ino, fh) {
            return reply.error(errno(Errno::new(libc::ENOLCK)));
        }
        let kind = lock_kind(tid, &lock);
        // What was written under a lock must be on the server before the lock is
        // let go (or changed): the next holder reads it from there.
        if let Err(e) = self.writes.drain(ino.0) {
            return reply.error(errno(e));
        }
        let (epoch, handle) = match self.server_handle(fh.0) {
            Ok(h) => h,
            Err(e) => return reply.error(errno(e)),
        };
        let op = Op::SetLock {
            handle,
            owner: owner.0,
            kind,
            lock,
        };
        let owners = self.lock_owners.clone();
        let invalidator = self.invalidator.clone();
        let writes = self.writes.clone();
        let attrs = self.attrs.clone();
        // Records a POSIX owner, and drops cached data before a lock is granted.
        let finish = move |r: Result<(), Errno>| match r {
            Ok(()) if lock.typ == LockType::Unlock => reply.ok(),
            Ok(()) => {
                if kind == LockKind::Posix {
                    owners.note(ino.0, owner.0, epoch);
                }
                writes.doubt(ino.0);
                attrs.drop_ino(ino.0);
                invalidator.invalidate_then(ino.0, move || reply.ok());
            }
            Err(e) => reply.error(errno(e)),
        };
        let client = self.client.clone();
        self.client.submit_in(epoch, op.clone(), move |r| match r {
            Err(e) if e.code() == libc::EAGAIN && sleep => {
                locks::wait_for_lock(client, epoch, op, tid, finish)
            }
            other => finish(other.map(|_| ())),
        });
    }

    /// Drops `owner`'s POSIX locks on `ino` if it may hold any (close(2) does, on
    /// any descriptor of the file), then calls `then`. Locks of a connection that
    /// is gone went with it, so a failure here is logged, not reported.
    pub(super) fn release_posix_locks(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        owner: LockOwner,
        then: impl FnOnce() + Send + 'static,
    ) {
        // Most closes come from owners that never locked: no round trip, and
        // not even a look at the connection.
        let Some(epoch) = self.lock_owners.take(ino.0, owner.0) else {
            return then();
        };
        if self.client.current_epoch() != Some(epoch) {
            return then();
        }
        let make = |handle| Op::ReleaseLocks {
            handle,
            owner: owner.0,
        };
        self.on_handle(fh, make, move |r| {
            if let Err(e) = r {
                log::debug!("releasing locks on close: {e}");
            }
            then()
        });
    }
}
