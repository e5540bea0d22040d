//! Where a request runs, and after what: the connection's one scheduling decision.
//!
//! A request runs either on the connection's reader task, right after it was read
//! ("inline"), or on tokio's blocking pool. Inline is cheaper for what takes
//! microseconds: handing a request to another thread and its reply back costs two
//! thread wake-ups, which on a VM take longer than a stat or a small write into
//! the page cache. But whatever runs inline holds up every request behind it, so
//! anything that may wait for the disk (data, fsync, listings, truncation) goes
//! to the pool.
//!
//! Requests that change an open file also carry an order key, their handle: a
//! client that does not wait for each write before sending the next
//! (write-behind) relies on the writes, and the setattr that follows them (tar
//! sets a file's times after writing it), reaching the file in the order it sent
//! them. Such a request runs inline only when nothing of its handle is queued, or
//! it would overtake what came before it; otherwise it waits in its handle's
//! queue (see [`crate::sequencer`]).
//!
//! Operations on names (create, mkdir, mknod, symlink, link, unlink, rmdir,
//! rename) always run inline, whatever is queued: each has taken effect
//! before the next request of the connection is even read. A client relies on
//! that to send them without waiting for the answer (the mount's removals
//! under a directory lease): whatever it sends next on the same connection —
//! a stat, a listing, a create of the same name, an rmdir of the directory
//! just emptied — sees them applied, in the order sent. Moving one of them to
//! the pool would break that promise.

use ferry_common::proto::Op;

/// The largest write carried out inline: it only copies into the page cache.
pub(crate) const INLINE_WRITE_MAX: usize = 128 * 1024;
/// The largest read answered inline, and then only when no other request is
/// waiting behind it (see [`Cost::QuickAlone`]).
pub(crate) const INLINE_READ_MAX: u32 = 64 * 1024;

/// The largest first read an `OpenRead` may ask for and still be answered
/// inline (when alone): a client asks for a small file whole, and most are far
/// smaller than this.
pub(crate) const INLINE_OPEN_READ_MAX: u32 = 256 * 1024;

/// What the connection does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// Answered on the reader task before the next request is read.
    Inline,
    /// Started on the blocking pool at once, beside whatever else runs.
    Pool,
    /// Run on the blocking pool after everything queued before it under this
    /// handle.
    Ordered(u64),
}

/// How long a request may take, as far as the request itself tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cost {
    /// Microseconds: metadata on a local disk, a small write into the page cache.
    Quick,
    /// Quick from the page cache but may wait for the disk: a small read. It runs
    /// inline only when no request is waiting behind it (one read at a time, as
    /// at queue depth 1), so that reads sent together still reach the disk
    /// together.
    QuickAlone,
    /// May take long: bulk data, fsync, listings (thousands of stats), truncation
    /// or allocation (gigabytes of blocks).
    Slow,
}

/// Decides where `op` runs and in which handle's order.
///
/// `alone`: no other request is already buffered behind this one.
/// `handle_idle(handle)`: nothing is queued or running under `handle`; asked
/// only of a request that would otherwise run inline.
pub(crate) fn schedule(op: &Op, alone: bool, handle_idle: impl FnOnce(u64) -> bool) -> Schedule {
    let (cost, key) = match op {
        Op::Stat { .. }
        | Op::ReadLink { .. }
        | Op::Create { .. }
        | Op::CreateAs { .. }
        | Op::Mkdir { .. }
        | Op::Mknod { .. }
        | Op::Symlink { .. }
        | Op::Link { .. }
        | Op::Unlink { .. }
        | Op::Rmdir { .. }
        | Op::Rename { .. }
        | Op::StatFs
        | Op::Ping
        | Op::Subscribe { .. }
        | Op::GetXattr { .. }
        | Op::ListXattr { .. }
        | Op::SetXattr { .. }
        | Op::RemoveXattr { .. }
        | Op::SetLock { .. }
        | Op::GetLock { .. }
        | Op::ReleaseLocks { .. }
        | Op::ReclaimLock { .. }
        | Op::ReclaimComplete => (Cost::Quick, None),
        Op::ReadDir { .. } | Op::List { .. } | Op::ReadFiles { .. } => (Cost::Slow, None),
        // Opening with O_TRUNC may free gigabytes of blocks.
        Op::Open { flags, .. } if flags & libc::O_TRUNC != 0 => (Cost::Slow, None),
        Op::Open { .. } => (Cost::Quick, None),
        // An open, then a read of what is usually a small file.
        Op::OpenRead { flags, .. } if flags & libc::O_TRUNC != 0 => (Cost::Slow, None),
        Op::OpenRead { len, .. } if *len <= INLINE_OPEN_READ_MAX => (Cost::QuickAlone, None),
        Op::OpenRead { .. } => (Cost::Slow, None),
        Op::Read { len, .. } if *len <= INLINE_READ_MAX => (Cost::QuickAlone, None),
        Op::Read { .. } => (Cost::Slow, None),
        Op::Write { handle, data, .. } if data.len() <= INLINE_WRITE_MAX => {
            (Cost::Quick, Some(*handle))
        }
        Op::Write { handle, .. } => (Cost::Slow, Some(*handle)),
        Op::Close { handle } => (Cost::Quick, Some(*handle)),
        Op::Fsync { handle, .. } | Op::Fallocate { handle, .. } => (Cost::Slow, Some(*handle)),
        // The copy changes the output file only.
        Op::CopyFileRange { handle_out, .. } => (Cost::Slow, Some(*handle_out)),
        // A truncation may free gigabytes of blocks. By path, nothing open changes
        // through this request, so it needs no order.
        Op::SetAttr {
            handle, changes, ..
        } => {
            let cost = match changes.size {
                Some(_) => Cost::Slow,
                None => Cost::Quick,
            };
            (cost, *handle)
        }
    };
    let inline = match cost {
        Cost::Quick => true,
        Cost::QuickAlone => alone,
        Cost::Slow => false,
    };
    match key {
        None if inline => Schedule::Inline,
        None => Schedule::Pool,
        Some(handle) if inline && handle_idle(handle) => Schedule::Inline,
        Some(handle) => Schedule::Ordered(handle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::proto::{AttrChanges, FileLock, LockKind, LockType};
    use ferry_common::RelPath;

    const H: u64 = 7;

    fn path() -> RelPath {
        RelPath::parse("d/f").unwrap()
    }

    fn read(len: u32) -> Op {
        Op::Read {
            handle: H,
            offset: 0,
            len,
        }
    }

    fn open_read(flags: i32, len: u32) -> Op {
        Op::OpenRead {
            path: path(),
            flags,
            len,
        }
    }

    fn write(len: usize) -> Op {
        Op::Write {
            handle: H,
            offset: 0,
            data: vec![0; len],
        }
    }

    fn set_attr(handle: Option<u64>, size: Option<u64>) -> Op {
        Op::SetAttr {
            path: path(),
            handle,
            changes: AttrChanges {
                size,
                mode: Some(0o600),
                ..AttrChanges::default()
            },
        }
    }

    fn lock() -> FileLock {
        FileLock {
            typ: LockType::Write,
            start: 0,
            end: 9,
        }
    }

    /// Name operations are applied before the next request is read, whatever
    /// waits behind them and however busy any handle is (see the module docs).
    #[test]
    fn name_operations_always_run_inline_in_the_order_they_arrive() {
        let names = [
            Op::Create {
                path: path(),
                flags: libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                mode: 0o644,
            },
            Op::CreateAs {
                path: path(),
                flags: libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                mode: 0o644,
                handle: ferry_common::proto::CLIENT_HANDLE | 1,
            },
            Op::Mkdir {
                path: path(),
                mode: 0o755,
            },
            Op::Mknod {
                path: path(),
                mode: libc::S_IFIFO | 0o644,
                rdev: 0,
            },
            Op::Symlink {
                path: path(),
                target: b"t".to_vec(),
            },
            Op::Link {
                existing: path(),
                path: path(),
            },
            Op::Unlink { path: path() },
            Op::Rmdir { path: path() },
            Op::Rename {
                from: path(),
                to: path(),
                flags: 0,
            },
        ];
        for op in &names {
            for alone in [true, false] {
                let mut asked = false;
                let got = schedule(op, alone, |_| {
                    asked = true;
                    false
                });
                assert_eq!(got, Schedule::Inline, "{op:?}, alone: {alone}");
                assert!(!asked, "{op:?} waits for no handle");
            }
        }
    }

    /// Every kind of operation, with its schedule when it is alone and its
    /// handle idle, when requests wait behind it, and when its handle is busy.
    fn every_op() -> Vec<(Op, [Schedule; 3])> {
        use Schedule::{Inline, Ordered, Pool};
        let quick = [Inline; 3];
        let slow = [Pool; 3];
        let ordered_quick = [Inline, Inline, Ordered(H)];
        let ordered_slow = [Ordered(H); 3];
        vec![
            (Op::Stat { path: path() }, quick),
            (
                Op::ReadDir {
                    path: path(),
                    start: 0,
                },
                slow,
            ),
            (Op::ReadLink { path: path() }, quick),
            (
                Op::Open {
                    path: path(),
                    flags: libc::O_RDWR,
                },
                quick,
            ),
            (
                Op::Open {
                    path: path(),
                    flags: libc::O_RDWR | libc::O_TRUNC,
                },
                slow,
            ),
            (
                Op::Create {
                    path: path(),
                    flags: libc::O_RDWR | libc::O_TRUNC,
                    mode: 0o644,
                },
                quick,
            ),
            (
                Op::CreateAs {
                    path: path(),
                    flags: libc::O_RDWR | libc::O_TRUNC,
                    mode: 0o644,
                    handle: ferry_common::proto::CLIENT_HANDLE | 1,
                },
                quick,
            ),
            (read(4096), [Inline, Pool, Inline]),
            (read(1 << 20), slow),
            (
                Op::List {
                    path: path(),
                    cursor: 0,
                },
                slow,
            ),
            (
                Op::ReadFiles {
                    dir: path(),
                    names: Vec::new(),
                    max_each: 1,
                },
                slow,
            ),
            (open_read(libc::O_RDONLY, 128 << 10), [Inline, Pool, Inline]),
            (open_read(libc::O_RDONLY, INLINE_OPEN_READ_MAX + 1), slow),
            (open_read(libc::O_RDONLY | libc::O_TRUNC, 0), slow),
            (write(4096), ordered_quick),
            (write(1 << 20), ordered_slow),
            (
                Op::Fsync {
                    handle: H,
                    datasync: false,
                },
                ordered_slow,
            ),
            (Op::Close { handle: H }, ordered_quick),
            (set_attr(Some(H), None), ordered_quick),
            (set_attr(Some(H), Some(0)), ordered_slow),
            (set_attr(None, None), quick),
            (set_attr(None, Some(0)), slow),
            (
                Op::Mkdir {
                    path: path(),
                    mode: 0o755,
                },
                quick,
            ),
            (
                Op::Mknod {
                    path: path(),
                    mode: libc::S_IFIFO | 0o644,
                    rdev: 0,
                },
                quick,
            ),
            (
                Op::Symlink {
                    path: path(),
                    target: b"t".to_vec(),
                },
                quick,
            ),
            (
                Op::Link {
                    existing: path(),
                    path: path(),
                },
                quick,
            ),
            (Op::Unlink { path: path() }, quick),
            (Op::Rmdir { path: path() }, quick),
            (
                Op::Rename {
                    from: path(),
                    to: path(),
                    flags: 0,
                },
                quick,
            ),
            (Op::StatFs, quick),
            (Op::Ping, quick),
            (Op::Subscribe { lease_secs: 60 }, quick),
            (
                Op::GetXattr {
                    path: path(),
                    name: b"user.a".to_vec(),
                },
                quick,
            ),
            (Op::ListXattr { path: path() }, quick),
            (
                Op::SetXattr {
                    path: path(),
                    name: b"user.a".to_vec(),
                    value: b"v".to_vec(),
                    flags: 0,
                },
                quick,
            ),
            (
                Op::RemoveXattr {
                    path: path(),
                    name: b"user.a".to_vec(),
                },
                quick,
            ),
            (
                Op::SetLock {
                    handle: H,
                    owner: 1,
                    kind: LockKind::Posix,
                    lock: lock(),
                },
                quick,
            ),
            (
                Op::GetLock {
                    handle: H,
                    owner: 1,
                    lock: lock(),
                },
                quick,
            ),
            (
                Op::ReleaseLocks {
                    handle: H,
                    owner: 1,
                },
                quick,
            ),
            (
                Op::ReclaimLock {
                    handle: H,
                    owner: 1,
                    kind: LockKind::Flock,
                    lock: lock(),
                },
                quick,
            ),
            (Op::ReclaimComplete, quick),
            (
                Op::Fallocate {
                    handle: H,
                    offset: 0,
                    len: 1 << 30,
                    mode: 0,
                },
                ordered_slow,
            ),
            (
                Op::CopyFileRange {
                    handle_in: 1,
                    offset_in: 0,
                    handle_out: H,
                    offset_out: 0,
                    len: 1 << 20,
                },
                ordered_slow,
            ),
        ]
    }

    #[test]
    fn every_operation_has_its_place() {
        let ops = every_op();
        let mut kinds: Vec<&str> = ops.iter().map(|(op, _)| op.name()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(
            kinds.len(),
            ferry_common::counters::OP_KINDS,
            "one row (or more) per kind of Op: {kinds:?}"
        );
        for (op, [alone_idle, crowded_idle, alone_busy]) in ops {
            let name = op.name();
            assert_eq!(schedule(&op, true, |h| h == H), alone_idle, "{name} alone");
            assert_eq!(
                schedule(&op, false, |h| h == H),
                crowded_idle,
                "{name} crowded"
            );
            assert_eq!(schedule(&op, true, |_| false), alone_busy, "{name} busy");
        }
    }

    #[test]
    fn small_reads_and_writes_end_at_their_thresholds() {
        let idle = |_| true;
        assert_eq!(
            schedule(&read(INLINE_READ_MAX), true, idle),
            Schedule::Inline
        );
        assert_eq!(
            schedule(&read(INLINE_READ_MAX + 1), true, idle),
            Schedule::Pool
        );
        assert_eq!(schedule(&read(0), false, idle), Schedule::Pool);
        assert_eq!(
            schedule(&write(INLINE_WRITE_MAX), false, idle),
            Schedule::Inline
        );
        assert_eq!(
            schedule(&write(INLINE_WRITE_MAX + 1), true, idle),
            Schedule::Ordered(H)
        );
        assert_eq!(schedule(&write(0), true, idle), Schedule::Inline);
    }

    #[test]
    fn the_handle_queue_is_asked_only_about_what_could_run_inline() {
        let never = |_| -> bool { panic!("the queue was asked about a request for the pool") };
        assert_eq!(schedule(&write(1 << 20), true, never), Schedule::Ordered(H));
        assert_eq!(schedule(&read(4096), false, never), Schedule::Pool);
        assert_eq!(schedule(&Op::StatFs, true, never), Schedule::Inline);
        let mut asked = None;
        let got = schedule(&Op::Close { handle: 9 }, false, |h| {
            asked = Some(h);
            true
        });
        assert_eq!((got, asked), (Schedule::Inline, Some(9)));
    }
}
