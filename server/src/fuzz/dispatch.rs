//! `Session::handle` on programs of operations against a fresh export.

use super::bytes::Bytes;
use super::Fingerprint;
use crate::dispatch::Session;
use crate::export::ExportRoot;
use crate::identity::{IdentityMap, Squash};
use crate::policy::Policy;
use ferry_common::frame;
use ferry_common::proto::{
    AttrChanges, Cred, FileLock, LockKind, LockType, Op, Reply, Request, SetTime, CLIENT_HANDLE,
};
use ferry_common::{RelPath, Timestamp};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The most operations one input runs.
const MAX_OPS: usize = 64;

/// Names the programs use, so that operations meet the same nodes: files,
/// directories, and symlinks that lead out of the export.
const NAMES: &[&str] = &[
    "a",
    "b",
    "d",
    "d/x",
    "d/e",
    "d/e/f",
    "fifo",
    "link",
    "up",
    "up/outside/secret",
    "abs",
    "abs/secret",
    "abs/new",
    "d/up/x",
    "new",
];

/// A directory with `export/` and `outside/` in it, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferry-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let export = dir.join("export");
        let outside = dir.join("outside");
        fs::create_dir_all(export.join("d/e")).expect("scratch export");
        fs::create_dir_all(&outside).expect("scratch outside");
        fs::write(outside.join("secret"), "secret").expect("a secret");
        fs::write(export.join("a"), "hello").expect("a file");
        fs::write(export.join("d/x"), "x").expect("a file");
        symlink("a", export.join("link")).expect("a symlink");
        symlink("..", export.join("up")).expect("a symlink");
        symlink("../..", export.join("d/up")).expect("a symlink");
        symlink(&outside, export.join("abs")).expect("a symlink");
        let fifo = std::ffi::CString::new(export.join("fifo").as_os_str().as_encoded_bytes())
            .expect("a path without NUL");
        // SAFETY: a valid C string.
        unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
        Scratch(dir)
    }

    fn export(&self) -> PathBuf {
        self.0.join("export")
    }

    fn outside(&self) -> PathBuf {
        self.0.join("outside")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What is observed of one node: mode, owner, group, size, mtime, contents.
type Observed = (u32, u32, u32, u64, i64, i64, Vec<u8>);

/// Everything observable of a tree but access times, by path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Observed> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        if md.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
        let content = if md.is_file() {
            fs::read(&path).unwrap_or_default()
        } else {
            Vec::new()
        };
        out.insert(
            path,
            (
                md.mode(),
                md.uid(),
                md.gid(),
                md.size(),
                md.mtime(),
                md.mtime_nsec(),
                content,
            ),
        );
    }
    out
}

/// A path: mostly one of [`NAMES`], sometimes any bytes at all, as a hostile
/// peer may send them (decoding does not check paths).
fn path(input: &mut Bytes<'_>) -> RelPath {
    let choice = input.byte();
    if usize::from(choice) < NAMES.len() * 15 {
        return RelPath::parse(NAMES[usize::from(choice) % NAMES.len()]).expect("a name");
    }
    // A byte vector encodes as a path does: its length, then the bytes.
    let encoded = frame::encode(&input.short()).expect("bytes encode");
    frame::decode(&encoded[4..]).expect("any bytes are a path on the wire")
}

fn handle(input: &mut Bytes<'_>, opened: &[u64]) -> u64 {
    let choice = usize::from(input.byte());
    match opened.get(choice % 8) {
        Some(&h) if choice < 200 => h,
        _ => u64::from(input.byte()),
    }
}

fn flags(input: &mut Bytes<'_>) -> i32 {
    let access = input.pick(&[libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR]);
    let extra = input.pick(&[
        0,
        libc::O_TRUNC,
        libc::O_APPEND,
        libc::O_EXCL,
        libc::O_DIRECTORY,
        libc::O_CREAT,
        libc::O_PATH,
        libc::O_NOFOLLOW,
        libc::O_DIRECT,
        libc::O_SYNC,
    ]);
    if input.byte() == 0xff {
        input.u32() as i32
    } else {
        access | extra
    }
}

/// Who a request claims to come from.
fn cred(input: &mut Bytes<'_>) -> Cred {
    Cred {
        uid: input.pick(&[0, 1000, 65534, u32::MAX]),
        gid: input.pick(&[0, 1000, 65534, u32::MAX]),
        groups: if input.bool() {
            vec![0, 1000]
        } else {
            Vec::new()
        },
    }
}

fn time(input: &mut Bytes<'_>) -> Option<SetTime> {
    match input.byte() % 3 {
        0 => None,
        1 => Some(SetTime::Now),
        _ => Some(SetTime::At(Timestamp {
            secs: input.u64() as i64,
            nanos: input.u32(),
        })),
    }
}

fn lock(input: &mut Bytes<'_>) -> FileLock {
    FileLock {
        typ: input.pick(&[LockType::Read, LockType::Write, LockType::Unlock]),
        start: input.int(2),
        end: if input.bool() { u64::MAX } else { input.int(2) },
    }
}

fn small(input: &mut Bytes<'_>) -> u64 {
    if input.byte() == 0xff {
        input.u64()
    } else {
        input.int(2)
    }
}

/// The next operation of the program.
fn op(input: &mut Bytes<'_>, opened: &[u64]) -> Op {
    match input.byte() % 29 {
        0 => Op::Stat { path: path(input) },
        1 => Op::ReadDir {
            path: path(input),
            start: small(input),
        },
        2 => Op::ReadLink { path: path(input) },
        3 => Op::Open {
            path: path(input),
            flags: flags(input),
        },
        4 => Op::Create {
            path: path(input),
            flags: flags(input),
            mode: input.u32() & 0o177777,
        },
        5 => Op::Read {
            handle: handle(input, opened),
            offset: small(input),
            len: input.u32(),
        },
        6 => Op::Write {
            handle: handle(input, opened),
            offset: small(input),
            data: input.short(),
        },
        7 => Op::Fsync {
            handle: handle(input, opened),
            datasync: input.bool(),
        },
        8 => Op::Close {
            handle: handle(input, opened),
        },
        9 => Op::SetAttr {
            path: path(input),
            handle: input.bool().then(|| handle(input, opened)),
            changes: AttrChanges {
                mode: input.bool().then(|| input.u32()),
                uid: input.bool().then(|| input.pick(&[0, 1000, u32::MAX])),
                gid: input.bool().then(|| input.pick(&[0, 1000, u32::MAX])),
                size: input.bool().then(|| small(input)),
                atime: time(input),
                mtime: time(input),
                kill_suidgid: input.bool(),
            },
        },
        10 => Op::Mkdir {
            path: path(input),
            mode: input.u32(),
        },
        11 => Op::Mknod {
            path: path(input),
            mode: input.pick(&[libc::S_IFIFO, libc::S_IFREG, libc::S_IFSOCK, libc::S_IFCHR])
                | (input.u32() & 0o7777),
            // /dev/null's numbers: a device node that would be harmless even
            // if something opened it (which the server never does).
            rdev: if input.bool() { libc::makedev(1, 3) } else { 0 },
        },
        12 => Op::Symlink {
            path: path(input),
            target: input.short(),
        },
        13 => Op::Link {
            existing: path(input),
            path: path(input),
        },
        14 => Op::Unlink { path: path(input) },
        15 => Op::Rmdir { path: path(input) },
        16 => Op::Rename {
            from: path(input),
            to: path(input),
            flags: input.pick(&[
                0,
                libc::RENAME_NOREPLACE,
                libc::RENAME_EXCHANGE,
                4,
                u32::MAX,
            ]),
        },
        17 => Op::StatFs,
        18 => Op::GetXattr {
            path: path(input),
            name: input.short(),
        },
        19 => Op::ListXattr { path: path(input) },
        20 => Op::SetXattr {
            path: path(input),
            name: input.short(),
            value: input.short(),
            flags: input.pick(&[0, libc::XATTR_CREATE, libc::XATTR_REPLACE, -1]),
        },
        21 => Op::RemoveXattr {
            path: path(input),
            name: input.short(),
        },
        22 => Op::SetLock {
            handle: handle(input, opened),
            owner: u64::from(input.byte() % 4),
            kind: input.pick(&[LockKind::Posix, LockKind::Flock]),
            lock: lock(input),
        },
        23 => Op::GetLock {
            handle: handle(input, opened),
            owner: u64::from(input.byte() % 4),
            lock: lock(input),
        },
        24 => Op::ReleaseLocks {
            handle: handle(input, opened),
            owner: u64::from(input.byte() % 4),
        },
        25 => Op::Fallocate {
            handle: handle(input, opened),
            offset: small(input),
            len: small(input),
            mode: input.pick(&[
                0,
                libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE,
                libc::FALLOC_FL_COLLAPSE_RANGE,
                -1,
            ]),
        },
        26 => Op::ReadFiles {
            dir: path(input),
            names: (0..input.byte() % 4)
                .map(|_| {
                    let name = input.pick(&["a", "x", "e", "fifo", "link", "secret", "..", "a/b"]);
                    ferry_common::proto::ByteBuf::from(name.as_bytes().to_vec())
                })
                .collect(),
            max_each: small(input) as u32,
        },
        // Sometimes a number with the client bit (which may be taken, or
        // below one chosen before), sometimes one without.
        27 => Op::CreateAs {
            path: path(input),
            flags: flags(input),
            mode: input.u32() & 0o177777,
            handle: if input.bool() {
                CLIENT_HANDLE | small(input)
            } else {
                small(input)
            },
        },
        _ => Op::CopyFileRange {
            handle_in: handle(input, opened),
            offset_in: small(input),
            handle_out: handle(input, opened),
            offset_out: small(input),
            len: small(input),
        },
    }
}

/// A program decoded from `data` (its first byte says whether the export is
/// read-only), run against a fresh export.
pub fn dispatch(data: &[u8]) -> u64 {
    let mut input = Bytes::new(data);
    let settings = input.byte();
    let read_only = settings & 1 == 1;
    let squash = match (settings >> 1) % 3 {
        0 => Squash::Root,
        1 => Squash::None,
        _ => Squash::All,
    };
    let scratch = Scratch::new();
    let export = Arc::new(ExportRoot::open(&scratch.export()).expect("the scratch export"));
    let outside_before = snapshot(&scratch.outside());
    let export_before = read_only.then(|| snapshot(&scratch.export()));
    let policy = Policy {
        read_only,
        identities: IdentityMap {
            squash,
            ..IdentityMap::default()
        },
        allow_devices: settings & 8 != 0,
    };
    // Unwatched, and subscribed, so the coherence hooks learn what every
    // answer tells.
    let session = Session::standalone(export, policy);
    let subscribed = session.handle(Request {
        id: 0,
        cred: Cred::default(),
        op: Op::Subscribe { lease_secs: 60 },
    });
    assert!(
        matches!(subscribed, Ok(Reply::Subscribed { .. })),
        "{subscribed:?}"
    );
    let mut opened = Vec::new();
    let mut seen = Fingerprint::default();
    seen.add(read_only);
    let mut outcomes = std::collections::BTreeSet::new();
    for id in 0..MAX_OPS as u64 {
        if input.is_empty() {
            break;
        }
        let cred = cred(&mut input);
        let op = op(&mut input, &opened);
        let name = op.name();
        let result = session.handle(Request { id, cred, op });
        if let Ok(Reply::Opened { handle, .. } | Reply::Created { handle, .. }) = &result {
            opened.push(*handle);
        }
        outcomes.insert((
            name,
            result
                .map(|r| format!("{:?}", std::mem::discriminant(&r)))
                .map_err(|e| e.code()),
        ));
    }
    // What happened, not in which order: an input is new when it made some
    // operation end in a way none did before.
    seen.add(&outcomes);
    drop(session);
    assert_eq!(
        snapshot(&scratch.outside()),
        outside_before,
        "an operation changed something outside the export"
    );
    if let Some(before) = export_before {
        assert_eq!(
            snapshot(&scratch.export()),
            before,
            "a read-only export was changed"
        );
    }
    seen.finish()
}
