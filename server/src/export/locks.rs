//! File locks taken on the server, so that clients exclude each other and local
//! processes on the server's machine.
//!
//! Every lock lives on a descriptor of its own, opened afresh on the file
//! for its (file, kind, owner):
//!
//! - POSIX (`fcntl`) locks belong to a lock owner (a process on the client)
//!   and must not conflict between two descriptors of the same owner. The
//!   owner's locks are open file description locks (`F_OFD_SETLK`) on its
//!   descriptor: they conflict with other owners' locks, other clients' and
//!   local processes' `fcntl`/`lockf` locks, merge and split like POSIX locks,
//!   and all go at once when the owner closes any descriptor of the file
//!   ([`LockTable::release`], from the client's flush).
//! - `flock` locks belong to an open file; the client names it as the owner.
//!   They are `flock(2)` on the owner's descriptor, conflict with every other
//!   open file on any client or on the server, and end when the handle they
//!   were taken through closes ([`LockTable::closed`]).
//!
//! Keeping locks apart from the handles lets them outlive a connection: when
//! a connection ends, its locks can be kept for its client to take back on
//! its next connection ([`LockTable::surrender`], [`LockTable::adopt`]; see
//! `crate::recovery`). Otherwise they go when the table is dropped.
//!
//! Every lock descriptor counts against the connection's descriptor budget
//! (see `crate::budget`; ENOLCK beyond it), and a connection holds at most
//! [`MAX_LOCK_RANGES`] separate POSIX ranges: the kernel walks all of a file's
//! locks on every lock call, so a client holding tens of thousands would slow
//! every other client's locking of that file.
//!
//! Nothing here waits for a lock: a conflict answers EAGAIN and the client asks
//! again. Lock requests run on the connection's reader (see `crate::schedule`),
//! so a blocked one would stall every request behind it.
//!
//! Limits: a lock descriptor is opened for reading and writing when the server
//! may, else with the access mode of the handle it was first reached through;
//! a write lock through a descriptor of the same owner and file that was
//! opened for writing later then fails with EBADF. `F_GETLK` cannot name the
//! process holding a lock elsewhere and reports pid 0.

use super::sys::{self, RangeLock};
use super::OpenFile;
use crate::budget::{Descriptor, DescriptorAccount};
use ferry_common::lockset::LockSet;
use ferry_common::proto::{FileLock, LockKind, LockType, LOCK_TO_EOF};
use ferry_common::sync;
use ferry_common::Errno;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// How many separate POSIX lock ranges one connection may hold; beyond it
/// locking answers ENOLCK.
pub(crate) const MAX_LOCK_RANGES: usize = 1024;

/// A file as the kernel knows it: device and inode.
type FileId = (u64, u64);

/// Whose lock, on what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LockKey {
    file: FileId,
    kind: LockKind,
    owner: u64,
}

impl LockKey {
    /// The key of `owner`'s locks of `kind` on the file behind `file`.
    pub(crate) fn of(file: &OpenFile, kind: LockKind, owner: u64) -> Result<LockKey, Errno> {
        Ok(LockKey {
            file: file_id(file.fd())?,
            kind,
            owner,
        })
    }
}

/// One owner's locks on one file: the descriptor they are taken on, and what
/// is held there.
#[derive(Debug)]
struct Held {
    fd: Arc<OwnedFd>,
    /// POSIX: the ranges held; flock: the whole file, with the lock's type.
    ranges: LockSet,
    /// An flock's handle, which takes the lock with it when it closes.
    handle: Option<u64>,
    _descriptor: Descriptor,
}

/// A lock taken out of a table whose connection ended: kept for its client,
/// it stays held until it is adopted by the client's next connection or
/// dropped.
#[derive(Debug)]
pub(crate) struct Kept {
    key: LockKey,
    fd: Arc<OwnedFd>,
    ranges: LockSet,
}

impl Kept {
    pub(crate) fn key(&self) -> LockKey {
        self.key
    }
}

/// The locks of one connection, by (file, kind, owner).
#[derive(Debug)]
pub(crate) struct LockTable {
    table: Mutex<Table>,
    descriptors: Arc<DescriptorAccount>,
}

#[derive(Debug, Default)]
struct Table {
    held: HashMap<LockKey, Held>,
    /// POSIX ranges held, over every owner and file.
    ranges: usize,
    /// Entries that are flocks (so that closing a handle looks only when some exist).
    flocks: usize,
}

impl Table {
    fn remove(&mut self, key: &LockKey) -> Option<Held> {
        let held = self.held.remove(key)?;
        match key.kind {
            LockKind::Posix => self.ranges -= held.ranges.len(),
            LockKind::Flock => self.flocks -= 1,
        }
        Some(held)
    }

    fn insert(&mut self, key: LockKey, held: Held) {
        match key.kind {
            LockKind::Posix => self.ranges += held.ranges.len(),
            LockKind::Flock => self.flocks += 1,
        }
        self.held.insert(key, held);
    }
}

impl LockTable {
    /// A table whose descriptors count against `descriptors`.
    pub(crate) fn new(descriptors: Arc<DescriptorAccount>) -> LockTable {
        LockTable {
            table: Mutex::new(Table::default()),
            descriptors,
        }
    }

    /// No lock is held.
    pub(crate) fn is_empty(&self) -> bool {
        sync::lock(&self.table).held.is_empty()
    }

    /// Whether locks of `key` are held here.
    pub(crate) fn holds(&self, key: &LockKey) -> bool {
        sync::lock(&self.table).held.contains_key(key)
    }

    /// Takes, changes or drops a lock through `handle` (`file`) without
    /// waiting: EAGAIN on a conflict, ENOLCK past this connection's budget.
    pub(crate) fn set(
        &self,
        file: &OpenFile,
        handle: u64,
        owner: u64,
        kind: LockKind,
        lock: FileLock,
    ) -> Result<(), Errno> {
        let key = LockKey::of(file, kind, owner)?;
        let lock = match kind {
            // An flock covers the whole file, whatever range came with it.
            LockKind::Flock => FileLock {
                typ: lock.typ,
                start: 0,
                end: LOCK_TO_EOF,
            },
            LockKind::Posix => {
                to_range(&lock)?;
                lock
            }
        };
        if lock.typ != LockType::Unlock && !self.holds(&key) {
            self.open_for(key, file, handle)?;
        }
        let mut table = sync::lock(&self.table);
        let ranges_now = table.ranges;
        let Some(held) = table.held.get_mut(&key) else {
            // Unlocking what is not held (or was dropped meanwhile).
            return Ok(());
        };
        let before = held.ranges.len();
        let outcome = match kind {
            LockKind::Posix => {
                let after = held.ranges.len_after(&lock);
                if after > before && ranges_now - before + after > MAX_LOCK_RANGES {
                    Err(Errno::new(libc::ENOLCK))
                } else {
                    ofd_setlk(held.fd.as_fd(), &lock)
                }
            }
            LockKind::Flock => flock(held.fd.as_fd(), lock.typ),
        };
        if outcome.is_ok() {
            match kind {
                LockKind::Posix => held.ranges.apply(&lock),
                LockKind::Flock => held.ranges = whole(lock.typ),
            }
        }
        let (after, empty) = (held.ranges.len(), held.ranges.is_empty());
        if kind == LockKind::Posix {
            table.ranges = ranges_now - before + after;
        }
        if empty {
            // Nothing held: the descriptor goes (a fresh one that could not
            // take its lock, or everything unlocked).
            table.remove(&key);
        }
        outcome
    }

    /// Opens `key`'s descriptor on `file`, unless another request did meanwhile.
    fn open_for(&self, key: LockKey, file: &OpenFile, handle: u64) -> Result<(), Errno> {
        let descriptor = self
            .descriptors
            .take()
            .map_err(|_| Errno::new(libc::ENOLCK))?;
        // Opened outside the table's lock: an open may take a while.
        let fd = Arc::new(reopen(file.fd())?);
        let mut table = sync::lock(&self.table);
        if !table.held.contains_key(&key) {
            let held = Held {
                fd,
                ranges: LockSet::new(),
                handle: (key.kind == LockKind::Flock).then_some(handle),
                _descriptor: descriptor,
            };
            table.insert(key, held);
        }
        Ok(())
    }

    /// The first lock of another owner that conflicts with `lock`.
    pub(crate) fn test(
        &self,
        file: &OpenFile,
        owner: u64,
        lock: FileLock,
    ) -> Result<Option<FileLock>, Errno> {
        let key = LockKey::of(file, LockKind::Posix, owner)?;
        let own = sync::lock(&self.table).held.get(&key).map(|h| h.fd.clone());
        // Without locks of its own the owner may test through the handle's
        // descriptor, which carries no POSIX locks.
        match own {
            Some(fd) => ofd_getlk(fd.as_fd(), &lock),
            None => ofd_getlk(file.fd(), &lock),
        }
    }

    /// Drops all of `owner`'s POSIX locks on the file behind `file`.
    pub(crate) fn release(&self, file: &OpenFile, owner: u64) -> Result<(), Errno> {
        let key = LockKey::of(file, LockKind::Posix, owner)?;
        let held = sync::lock(&self.table).remove(&key);
        // Closing the owner's descriptor ends its open file description and with
        // it every lock taken there; done outside the table's lock.
        drop(held);
        Ok(())
    }

    /// Handle `handle` closed: the flocks taken through it go.
    pub(crate) fn closed(&self, handle: u64) {
        let gone: Vec<Held> = {
            let mut table = sync::lock(&self.table);
            if table.flocks == 0 {
                return;
            }
            let keys: Vec<LockKey> = table
                .held
                .iter()
                .filter(|(_, h)| h.handle == Some(handle))
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| table.remove(k)).collect()
        };
        drop(gone);
    }

    /// Every lock, taken out of this table still held (its connection ends,
    /// or is replaced by a newer one of the same client).
    pub(crate) fn surrender(&self) -> Vec<Kept> {
        let mut table = sync::lock(&self.table);
        table.ranges = 0;
        table.flocks = 0;
        table
            .held
            .drain()
            .map(|(key, held)| Kept {
                key,
                fd: held.fd,
                ranges: held.ranges,
            })
            .collect()
    }

    /// Takes over `kept`, a lock of an earlier connection of this client,
    /// reached now through `handle`. Its descriptor counts against this
    /// connection from now on, whatever its budget.
    pub(crate) fn adopt(&self, kept: Kept, handle: u64) {
        let held = Held {
            fd: kept.fd,
            ranges: kept.ranges,
            handle: (kept.key.kind == LockKind::Flock).then_some(handle),
            _descriptor: self.descriptors.take_anyway(),
        };
        let replaced = {
            let mut table = sync::lock(&self.table);
            let replaced = table.remove(&kept.key);
            table.insert(kept.key, held);
            replaced
        };
        drop(replaced);
    }
}

/// A whole-file lock of type `typ`, as an flock is kept.
fn whole(typ: LockType) -> LockSet {
    let mut set = LockSet::new();
    set.apply(&FileLock {
        typ,
        start: 0,
        end: LOCK_TO_EOF,
    });
    set
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
    use crate::budget::Descriptors;
    use ferry_common::RelPath;

    fn lock(typ: LockType, start: u64, end: u64) -> FileLock {
        FileLock { typ, start, end }
    }

    fn table(budget: &Arc<Descriptors>) -> LockTable {
        LockTable::new(budget.account())
    }

    fn setup() -> (tempfile::TempDir, ExportRoot) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"data").unwrap();
        let export = ExportRoot::open(tmp.path()).unwrap();
        (tmp, export)
    }

    #[test]
    fn owners_exclude_each_other_but_not_themselves() {
        let (_tmp, export) = setup();
        let path = RelPath::parse("f").unwrap();
        let (one, _) = export.open_file(&path, libc::O_RDWR).unwrap();
        let (two, _) = export.open_file(&path, libc::O_RDONLY).unwrap();
        let budget = Arc::new(Descriptors::new(100));
        let table = table(&budget);
        let write = lock(LockType::Write, 0, 9);
        table.set(&one, 1, 1, LockKind::Posix, write).unwrap();
        // The same owner through another handle: no conflict.
        table.set(&two, 2, 1, LockKind::Posix, write).unwrap();
        // Another owner: refused, and told who holds what.
        let err = table.set(&two, 2, 2, LockKind::Posix, lock(LockType::Read, 5, 5));
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
                2,
                LockKind::Posix,
                lock(LockType::Read, 10, LOCK_TO_EOF),
            )
            .unwrap();
        // Releasing the owner frees everything it held.
        table.release(&one, 1).unwrap();
        table
            .set(&one, 1, 2, LockKind::Posix, lock(LockType::Write, 0, 9))
            .unwrap();
        // flocks are per owner (open file) and independent of POSIX locks.
        let all = |typ| lock(typ, 0, LOCK_TO_EOF);
        table
            .set(&one, 1, 1, LockKind::Flock, all(LockType::Write))
            .unwrap();
        let err = table.set(&two, 2, 2, LockKind::Flock, all(LockType::Read));
        assert_eq!(err.unwrap_err().code(), libc::EAGAIN);
        table
            .set(&one, 1, 1, LockKind::Flock, all(LockType::Unlock))
            .unwrap();
        table
            .set(&two, 2, 2, LockKind::Flock, all(LockType::Read))
            .unwrap();
        // Closing the handle an flock came through ends it.
        table.closed(2);
        table
            .set(&one, 1, 1, LockKind::Flock, all(LockType::Write))
            .unwrap();
        // Every lock descriptor is counted, and given back.
        assert_eq!(budget.used(), 2);
        drop(table);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_connection_holds_only_so_many_ranges() {
        let (_tmp, export) = setup();
        let (file, _) = export
            .open_file(&RelPath::parse("f").unwrap(), libc::O_RDWR)
            .unwrap();
        let budget = Arc::new(Descriptors::new(100));
        let table = table(&budget);
        for i in 0..MAX_LOCK_RANGES as u64 {
            let owner = i % 2;
            table
                .set(
                    &file,
                    1,
                    owner,
                    LockKind::Posix,
                    lock(LockType::Read, 2 * i, 2 * i),
                )
                .unwrap();
        }
        let one_more = lock(LockType::Read, 1 << 40, 1 << 40);
        let err = table.set(&file, 1, 0, LockKind::Posix, one_more);
        assert_eq!(err.unwrap_err().code(), libc::ENOLCK);
        // Splitting a range by unlocking its middle would add one too.
        table
            .set(&file, 1, 0, LockKind::Posix, lock(LockType::Unlock, 0, 0))
            .unwrap();
        table
            .set(
                &file,
                1,
                0,
                LockKind::Posix,
                lock(LockType::Read, 100_000, 100_009),
            )
            .unwrap();
        let split = lock(LockType::Unlock, 100_004, 100_004);
        let err = table.set(&file, 1, 0, LockKind::Posix, split);
        assert_eq!(err.unwrap_err().code(), libc::ENOLCK);
        // Joining ranges is always allowed, and frees room.
        table
            .set(
                &file,
                1,
                0,
                LockKind::Posix,
                lock(LockType::Read, 0, 100_009),
            )
            .unwrap();
        table.set(&file, 1, 0, LockKind::Posix, one_more).unwrap();
    }

    #[test]
    fn a_surrendered_lock_stays_held_until_adopted_or_dropped() {
        let (_tmp, export) = setup();
        let path = RelPath::parse("f").unwrap();
        let (file, _) = export.open_file(&path, libc::O_RDWR).unwrap();
        let budget = Arc::new(Descriptors::new(100));
        let first = table(&budget);
        let write = lock(LockType::Write, 0, 9);
        first.set(&file, 1, 7, LockKind::Posix, write).unwrap();
        first
            .set(&file, 1, 8, LockKind::Flock, lock(LockType::Read, 0, 0))
            .unwrap();
        let kept = first.surrender();
        assert_eq!(kept.len(), 2);
        assert!(first.is_empty());
        drop(first);
        // Still held: another table cannot take them.
        let other = table(&budget);
        let err = other.set(&file, 3, 9, LockKind::Posix, write);
        assert_eq!(err.unwrap_err().code(), libc::EAGAIN);
        let err = other.set(&file, 3, 9, LockKind::Flock, lock(LockType::Write, 0, 0));
        assert_eq!(err.unwrap_err().code(), libc::EAGAIN);
        // The next connection takes them over: the owner changes its lock
        // there as its own, and a closed handle takes the flock with it.
        let next = table(&budget);
        for k in kept {
            next.adopt(k, 5);
        }
        next.set(&file, 5, 7, LockKind::Posix, lock(LockType::Read, 0, 9))
            .unwrap();
        assert_eq!(
            other
                .test(&file, 9, lock(LockType::Write, 0, 0))
                .unwrap()
                .map(|l| l.typ),
            Some(LockType::Read)
        );
        next.closed(5);
        other
            .set(&file, 3, 9, LockKind::Flock, lock(LockType::Write, 0, 0))
            .unwrap();
    }
}
