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
//! A small read is the exception: it may wait for the disk, but is usually
//! answered from the page cache in microseconds. When nothing else of the
//! connection waits (queue depth 1) it runs inline, waiting for the disk if
//! it must, as nobody waits behind it. Otherwise it is answered inline only if
//! the page cache holds all of it (`RWF_NOWAIT`), and goes to the pool when it
//! would wait: a disk read on the reader would hold up the replies and
//! requests of the others, and would read the disk one request at a time.
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
/// The largest read answered inline: from the page cache, or from the disk
/// when nothing else of the connection waits (see [`Cost::SmallRead`]).
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
    /// Answered on the reader task if the page cache holds all it asks for
    /// (`Session::read_cached`), else started on the blocking pool.
    InlineIfCached,
    /// Run on the blocking pool after everything queued before it under this
    /// handle.
    Ordered(u64),
}

/// What else the connection has going when a request is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Company {
    /// Other requests are already buffered behind this one.
    pub(crate) behind: bool,
    /// Requests read before this one are not answered yet.
    pub(crate) in_flight: bool,
}

impl Company {
    /// No other request of the connection is read or waiting: queue depth 1.
    pub(crate) const ALONE: Company = Company {
        behind: false,
        in_flight: false,
    };
}

/// How long a request may take, as far as the request itself tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cost {
    /// Microseconds: metadata on a local disk, a small write into the page cache.
    Quick,
    /// Quick from the page cache but may wait for the disk: an open with a
    /// small first read. It runs inline only when no request is waiting behind
    /// it, so that opens sent together still reach the disk together.
    QuickAlone,
    /// A small read: inline at queue depth 1, else inline only from the page
    /// cache (see the module docs).
    SmallRead,
    /// May take long: bulk data, fsync, listings (thousands of stats), truncation
    /// or allocation (gigabytes of blocks).
    Slow,
}

/// Decides where `op` runs and in which handle's order.
///
/// `company`: what else the connection has going.
/// `handle_idle(handle)`: nothing is queued or running under `handle`; asked
/// only of a request that would otherwise run inline.
pub(crate) fn schedule(
    op: &Op,
    company: Company,
    handle_idle: impl FnOnce(u64) -> bool,
) -> Schedule {
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
        Op::Read { len, .. } if *len <= INLINE_READ_MAX => (Cost::SmallRead, None),
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
        Cost::QuickAlone => !company.behind,
        Cost::SmallRead if company == Company::ALONE => true,
        // Reads carry no order key.
        Cost::SmallRead => return Schedule::InlineIfCached,
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
            for company in [Company::ALONE, CROWDED, IN_FLIGHT] {
                let mut asked = false;
                let got = schedule(op, company, |_| {
                    asked = true;
                    false
                });
                assert_eq!(got, Schedule::Inline, "{op:?}, {company:?}");
                assert!(!asked, "{op:?} waits for no handle");
            }
        }
    }

    /// Requests wait behind this one, and others before it are unanswered.
    const CROWDED: Company = Company {
        behind: true,
        in_flight: true,
    };
    /// Nothing waits behind this one, but others before it are unanswered.
    const IN_FLIGHT: Company = Company {
        behind: false,
        in_flight: true,
    };

    /// Every kind of operation, with its schedule when it is alone and its
    /// handle idle, when requests wait behind it, when only requests before it
    /// are unanswered, and when it is alone but its handle is busy.
    fn every_op() -> Vec<(Op, [Schedule; 4])> {
        use Schedule::{Inline, InlineIfCached, Ordered, Pool};
        let quick = [Inline; 4];
        let slow = [Pool; 4];
        let ordered_quick = [Inline, Inline, Inline, Ordered(H)];
        let ordered_slow = [Ordered(H); 4];
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
            (read(4096), [Inline, InlineIfCached, InlineIfCached, Inline]),
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
            (
                open_read(libc::O_RDONLY, 128 << 10),
                [Inline, Pool, Inline, Inline],
            ),
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
        for (op, [alone_idle, crowded_idle, in_flight_idle, alone_busy]) in ops {
            let name = op.name();
            let idle = |h| h == H;
            assert_eq!(
                schedule(&op, Company::ALONE, idle),
                alone_idle,
                "{name} alone"
            );
            assert_eq!(schedule(&op, CROWDED, idle), crowded_idle, "{name} crowded");
            assert_eq!(
                schedule(&op, IN_FLIGHT, idle),
                in_flight_idle,
                "{name} in flight"
            );
            assert_eq!(
                schedule(&op, Company::ALONE, |_| false),
                alone_busy,
                "{name} busy"
            );
        }
    }

    #[test]
    fn small_reads_and_writes_end_at_their_thresholds() {
        let idle = |_| true;
        let alone = Company::ALONE;
        assert_eq!(
            schedule(&read(INLINE_READ_MAX), alone, idle),
            Schedule::Inline
        );
        assert_eq!(
            schedule(&read(INLINE_READ_MAX), IN_FLIGHT, idle),
            Schedule::InlineIfCached
        );
        assert_eq!(
            schedule(&read(INLINE_READ_MAX + 1), alone, idle),
            Schedule::Pool
        );
        assert_eq!(
            schedule(&read(INLINE_READ_MAX + 1), IN_FLIGHT, idle),
            Schedule::Pool
        );
        assert_eq!(schedule(&read(0), CROWDED, idle), Schedule::InlineIfCached);
        assert_eq!(
            schedule(&write(INLINE_WRITE_MAX), CROWDED, idle),
            Schedule::Inline
        );
        assert_eq!(
            schedule(&write(INLINE_WRITE_MAX + 1), alone, idle),
            Schedule::Ordered(H)
        );
        assert_eq!(schedule(&write(0), alone, idle), Schedule::Inline);
    }

    #[test]
    fn the_handle_queue_is_asked_only_about_what_could_run_inline() {
        let never = |_| -> bool { panic!("the queue was asked about a request for the pool") };
        assert_eq!(
            schedule(&write(1 << 20), Company::ALONE, never),
            Schedule::Ordered(H)
        );
        assert_eq!(
            schedule(&read(4096), CROWDED, never),
            Schedule::InlineIfCached
        );
        assert_eq!(
            schedule(&Op::StatFs, Company::ALONE, never),
            Schedule::Inline
        );
        let mut asked = None;
        let got = schedule(&Op::Close { handle: 9 }, CROWDED, |h| {
            asked = Some(h);
            true
        });
        assert_eq!((got, asked), (Schedule::Inline, Some(9)));
    }
}
