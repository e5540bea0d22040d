//! File locks taken on the server, so that clients exclude each other and local
//! processes on the server's machine.
//!
//! - `flock` locks belong to an open file. Each client open is a server handle
//!   of its own, so a client's flock is `flock(2)` on that handle's descriptor:
//!   it conflicts with every other open file, on any client or on the server,
//!   and ends when the handle closes (the client's release) or the connection
//!   ends.
//! - POSIX (`fcntl`) locks belong to a lock owner (a process on the client) and
//!   must not conflict between two descriptors of the same owner. Each (file,
//!   owner) pair gets a descriptor of its own, opened afresh on the same file,
//!   and the owner's locks are open file description locks (`F_OFD_SETLK`) on it:
//!   they conflict with other owners' locks, other clients' and local processes'
//!   `fcntl`/`lockf` locks, merge and split like POSIX locks, and all go at once
//!   when the owner closes any descriptor of the file ([`LockTable::release`],
//!   from the client's flush) or the connection ends (the table is dropped).
//!
//! Nothing here waits for a lock: a conflict answers EAGAIN and the client asks
//! again. Lock requests run on the connection's reader (see `crate::schedule`),
//! so a blocked one would stall every request behind it, and it would keep a
//! dead connection's session (and so its locks) alive.
//!
//! Limits: the owner's descriptor is opened for reading and writing when the
//! server may, else with the access mode of the handle it was first reached
//! through; a write lock through a descriptor of the same owner and file that was
//! opened for writing later then fails with EBADF. `F_GETLK` cannot name the
//! process holding a lock elsewhere and reports pid 0.

use super::sys::{self, RangeLock};
use super::OpenFile;
use ferry_common::proto::{FileLock, LockKind, LockType, LOCK_TO_EOF};
use ferry_common::sync;
use ferry_common::Errno;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// How many (file, owner) descriptors one connection may hold; beyond it locking
/// answers ENOLCK.
pub(super) const MAX_LOCK_OWNERS: usize = 4096;

/// A file as the kernel knows it: device and inode.
type FileId = (u64, u64);

/// The POSIX lock descriptors of one connection, by file and lock owner.
#[derive(Debug, Default)]
pub(crate) struct LockTable {
    owners: Mutex<HashMap<(FileId, u64), Arc<OwnedFd>>>,
}

impl LockTable {
    pub(crate) fn new() -> LockTable {
        LockTable::default()
    }

    /// No lock descriptor is held.
    pub(crate) fn is_empty(&self) -> bool {
        sync::lock(&self.owners).is_empty()
    }

    /// Takes, changes or drops a lock without waiting: EAGAIN on a conflict.
    pub(crate) fn set(
        &self,
        file: &OpenFile,
        owner: u64,
        kind: LockKind,
        lock: FileLock,
    ) -> Result<(), Errno> {
        match kind {
            LockKind::Flock => flock(file.fd(), lock.typ),
            LockKind::Posix => {
                let key = (file_id(file.fd())?, owner);
                let fd = match lock.typ {
                    // Nothing held, nothing to drop.
                    LockType::Unlock => match sync::lock(&self.owners).get(&key) {
                        Some(fd) => fd.clone(),
                        None => return Ok(()),
                    },
                    _ => self.owner_fd(key, file)?,
                };
                ofd_setlk(fd.as_fd(), &lock)
            }
        }
    }

    /// The first lock of another owner that conflicts with `lock`.
    pub(crate) fn test(
        &self,
        file: &OpenFile,
        owner: u64,
        lock: FileLock,
    ) -> Result<Option<FileLock>, Errno> {
        let key = (file_id(file.fd())?, owner);
        let own = sync::lock(&self.owners).get(&key).cloned();
        // Without locks of its own the owner may test through the handle's
        // descriptor, which carries no POSIX locks.
        match own {
            Some(fd) => ofd_getlk(fd.as_fd(), &lock),
            None => ofd_getlk(file.fd(), &lock),
        }
    }

    /// Drops all of `owner`'s POSIX locks on the file behind `file`.
    pub(crate) fn release(&self, file: &OpenFile, owner: u64) -> Result<(), Errno> {
        let key = (file_id(file.fd())?, owner);
        let fd = sync::lock(&self.owners).remove(&key);
        // Closing the owner's descriptor ends its open file description and with
        // it every lock taken there; done outside the table's lock.
        drop(fd);
        Ok(())
    }

    /// The descriptor holding `key`'s locks, opened on first use.
    fn owner_fd(&self, key: (FileId, u64), file: &OpenFile) -> Result<Arc<OwnedFd>, Errno> {
        if let Some(fd) = sync::lock(&self.owners).get(&key) {
            return Ok(fd.clone());
        }
        let fresh = Arc::new(reopen(file.fd())?);
        let mut owners = sync::lock(&self.owners);
        // Another request of the same owner may have opened one meanwhile.
        if let Some(fd) = owners.get(&key) {
            return Ok(fd.clone());
        }
        if owners.len() >= MAX_LOCK_OWNERS {
            return Err(Errno::new(libc::ENOLCK));
        }
        owners.insert(key, fresh.clone());
        Ok(fresh)
    }
}

fn file_id(fd: BorrowedFd<'_>) -> Result<FileId, Errno> {
    let st = sys::fstat(fd)?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// A new open file description of the file behind `fd` (which may be unlinked),
/// through its `/proc/self/fd` link: reading and writing when the server may,
/// else `fd`'s own access mode.
fn reopen(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let own_mode = sys::status_flags(fd)? & libc::O_ACCMODE;
    let st = sys::fstat(fd)?;
    let mut modes = vec![own_mode];
    if sys::is_kind(&st, libc::S_IFREG) && own_mode != libc::O_RDWR {
        modes.insert(0, libc::O_RDWR);
    }
    let mut last = Errno::EBADF;
    for mode in modes {
        // Only regular files and directories are ever handles, so opening cannot
        // block; O_NONBLOCK guards that anyway.
        match sys::reopen(fd, mode | libc::O_NOCTTY | libc::O_NONBLOCK) {
            Ok(fd) => return Ok(fd),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn flock(fd: BorrowedFd<'_>, typ: LockType) -> Result<(), Errno> {
    let operation = match typ {
        LockType::Read => libc::LOCK_SH | libc::LOCK_NB,
        LockType::Write => libc::LOCK_EX | libc::LOCK_NB,
        LockType::Unlock => libc::LOCK_UN,
    };
    // A conflict is EWOULDBLOCK, which is EAGAIN on Linux.
    sys::flock(fd, operation)
}

fn to_range(lock: &FileLock) -> Result<RangeLock, Errno> {
    if lock.start > LOCK_TO_EOF || lock.end < lock.start {
        return Err(Errno::EINVAL);
    }
    let typ = match lock.typ {
        LockType::Read => libc::F_RDLCK,
        LockType::Write => libc::F_WRLCK,
        LockType::Unlock => libc::F_UNLCK,
    };
    Ok(RangeLock {
        typ,
        start: lock.start as libc::off_t,
        // Length 0 locks to the end of the file, however long it grows.
        len: if lock.end >= LOCK_TO_EOF {
            0
        } else {
            (lock.end - lock.start + 1) as libc::off_t
        },
    })
}

fn ofd_setlk(fd: BorrowedFd<'_>, lock: &FileLock) -> Result<(), Errno> {
    match sys::ofd_setlk(fd, to_range(lock)?) {
        // POSIX lets F_SETLK say EACCES for a conflict; clients expect EAGAIN.
        Err(e) if e.code() == libc::EACCES => Err(Errno::new(libc::EAGAIN)),
        other => other,
    }
}

fn ofd_getlk(fd: BorrowedFd<'_>, lock: &FileLock) -> Result<Option<FileLock>, Errno> {
    let found = sys::ofd_getlk(fd, to_range(lock)?)?;
    let typ = match found.typ {
        libc::F_UNLCK => return Ok(None),
        libc::F_RDLCK => LockType::Read,
        _ => LockType::Write,
    };
    #[allow(clippy::unnecessary_cast)]
    let start = (found.start as i64).max(0) as u64;
    let end = if found.len <= 0 {
        LOCK_TO_EOF
    } else {
        start.saturating_add(found.len as u64 - 1).min(LOCK_TO_EOF)
    };
    Ok(Some(FileLock { typ, start, end }))
}

#[cfg(test)]
mod tests {
    use super::super::ExportRoot;
    use super::*;
    use ferry_common::RelPath;

    fn lock(typ: LockType, start: u64, end: u64) -> FileLock {
        FileLock { typ, start, end }
    }

    #[test]
    fn owners_exclude_each_other_but_not_themselves() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"data").unwrap();
        let export = ExportRoot::open(tmp.path()).unwrap();
        let path = RelPath::parse("f").unwrap();
        let (one, _) = export.open_file(&path, libc::O_RDWR).unwrap();
        let (two, _) = export.open_file(&path, libc::O_RDONLY).unwrap();
        let table = LockTable::new();
        let write = lock(LockType::Write, 0, 9);
        table.set(&one, 1, LockKind::Posix, write).unwrap();
        // The same owner through another handle: no conflict.
        table.set(&two, 1, LockKind::Posix, write).unwrap();
        // Another owner: refused, and told who holds what.
        let err = table.set(&two, 2, LockKind::Posix, lock(LockType::Read, 5, 5));
        assert_eq!(err.unwrap_err().code(), libc::EAGAIN);
        assert_eq!(
            table
                .test(&two, 2, lock(LockType::Read, 0, LOCK_TO_EOF))
                .unwrap(),
            Some(write)
        );
        assert_eq!(table.test(&two, 1, write).unwrap(), None);
        table
            .set(
                &two,
                2,
                LockKind::Posix,
                lock(LockType::Read, 10, LOCK_TO_EOF),
            )
            .unwrap();
        // Releasing the owner frees everything it held.
        table.release(&one, 1).unwrap();
        table
            .set(&one, 2, LockKind::Posix, lock(LockType::Write, 0, 9))
            .unwrap();
        // flocks are per handle and independent of POSIX locks.
        table.set(&one, 1, LockKind::Flock, write).unwrap();
        let err = table.set(
            &two,
            1,
            LockKind::Flock,
            lock(LockType::Read, 0, LOCK_TO_EOF),
        );
        assert_eq!(err.unwrap_err().code(), libc::EAGAIN);
        table
            .set(
                &one,
                1,
                LockKind::Flock,
                lock(LockType::Unlock, 0, LOCK_TO_EOF),
            )
            .unwrap();
        table
            .set(
                &two,
                1,
                LockKind::Flock,
                lock(LockType::Read, 0, LOCK_TO_EOF),
            )
            .unwrap();
    }
}
