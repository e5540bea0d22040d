//! The filesystem's logic, without the kernel: plain methods that take the
//! caller, inode numbers, names, offsets and flags, and finish with a
//! `Result<T, Errno>` handed to a callback. Every request to the server goes on
//! behalf of the caller whose operation caused it (its [`Caller::cred`]), so
//! the server checks that user's permissions; a file opened again after a
//! reconnect is opened for whoever opened it first. The `fuser` adapter
//! ([`crate::adapter`]) only converts types and answers the kernel; tests drive
//! the same methods against an in-process server, with no `/dev/fuse`.
//!
//! Why callbacks rather than return values: most operations are one request to
//! the server, answered on the connection's reader thread. Finishing there, in
//! the callback, means a FUSE worker thread is never tied up waiting for the
//! network, so the kernel can keep many requests in flight. Only a few
//! operations block their caller: listing a directory (a round trip, more for a
//! very long one, or none when it was fetched ahead: see
//! [`crate::listing_ahead`]), fsync of a directory (until the removals sent
//! behind in it are answered: see [`behind`]) and the waits write-behind
//! imposes for ordering (see [`crate::writeback`]).
//!
//! The core is split by idea:
//!
//! - [`names`]: lookup, forget, create, mknod, mkdir, symlink, link, unlink,
//!   rmdir, rename, readlink;
//! - [`io`]: open, read, write, flush, release, fsync, fallocate, copy_file_range;
//! - [`dirs`]: opendir, readdir(plus), releasedir, statfs; directory snapshots and
//!   names known to be absent;
//! - [`attrs`]: getattr, setattr, and setattr deferred behind writes;
//! - [`reopen`]: finding the server handle behind a kernel handle, opening the
//!   file again after a reconnect;
//! - [`locking`] and [`xattr`]: file locks and extended attributes;
//! - [`coherence`]: the lease, the server's notices applied to the kernel and
//!   to every cache here, and the rule for answers that cross a notice.
//! - [`behind`]: unlink and rmdir answered at once under a directory lease,
//!   sent behind, their failures reported by fsync and close;
//! - [`reclaim`]: after a reconnect, taking back the locks this mount held
//!   (or failing the files whose locks are lost).
//!
//! All state lives in one [`Shared`], behind the cheap-to-clone [`Core`]; a
//! callback that outlives the call holds a clone.

mod attrs;
mod behind;
mod coherence;
mod create_behind;
mod dirs;
mod files_ahead;
mod io;
mod locking;
mod names;
mod reclaim;
mod reopen;
mod xattr;

#[cfg(test)]
mod reclaim_tests;
#[cfg(test)]
mod tests;

pub use dirs::{DirItem, DirItemPlus};
pub use locking::LockAnswer;
pub use xattr::XattrAnswer;

use crate::attrcache::AttrCache;
use crate::client::{OpResult, RemoteClient};
use crate::files::OpenFiles;
use crate::files_ahead::FilesAhead;
use crate::inode::{FileId, InodeTable};
use crate::known::KnownDirs;
use crate::listing_ahead::{changes_listings, Changes, ListingsAhead};
use crate::locks::HeldLocks;
use crate::opened_data::OpenedData;
use crate::space::FreeSpace;
use crate::stats::Stats;
use crate::windows::KernelReadAhead;
use crate::writeback::WriteBehind;
use coherence::{Coherence, Touched};
use dirs::DirSnapshots;
use ferry_common::proto::{
    Cred, Op, WELCOME_ACTS_AS_CALLERS, WELCOME_ALL_SQUASHED, WELCOME_ROOT_SQUASHED,
};
use ferry_common::sync::lock;
use ferry_common::{Attr, Errno, FileKind, RelPath};
use std::ffi::{OsStr, OsString};
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long caches live, by default, while the server tells this mount of
/// every change.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// How the mount behaves; set from the command line.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// How long the kernel may trust attributes and entries without asking
    /// again, when the server does not tell this mount of changes.
    pub attr_timeout: Duration,
    /// How long caches live while the server tells this mount of every
    /// change (see [`coherence`]); zero: never ask it to.
    pub lease: Duration,
    pub read_only: bool,
    /// Ask the kernel for readdirplus (names with attributes in one round trip).
    /// Off only to exercise the plain readdir path.
    pub readdirplus: bool,
    /// While the export's free space (as last reported, less what was sent
    /// since) is below this many bytes, writes go through, so that `write(2)`
    /// itself meets ENOSPC (see [`crate::space`]); 0: write-behind whatever
    /// the free space (a full export is then reported at close or fsync).
    pub write_through_below: u64,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            attr_timeout: Duration::from_secs(1),
            lease: DEFAULT_LEASE,
            read_only: false,
            readdirplus: true,
            write_through_below: crate::space::LOW_WATER,
        }
    }
}

/// Who made a request: the calling process's credential (its ids as the kernel
/// reports them, with its groups; see [`crate::creds`]) and thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The calling thread (the kernel's "pid" of a request is its thread id).
    pub pid: u32,
    pub cred: Cred,
}

/// A name the kernel may cache: the node's inode number and attributes, trusted
/// for `ttl`. Every entry handed to the kernel counts one lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    /// Tells the kernel a number reused for a new file from the file it held
    /// under that number (see [`crate::inode`]).
    pub generation: u64,
    pub attr: Attr,
    pub ttl: Duration,
}

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Entry),
    /// No such name, and the kernel may remember that for this long.
    Missing(Duration),
}

/// Attributes and how long the kernel may trust them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub attr: Attr,
    pub ttl: Duration,
}

/// An opened file: the handle to give the kernel and how it should cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// The file is unchanged since this mount last opened it: cached pages stay.
    pub keep_cache: bool,
    /// Reads and writes bypass the page cache (see [`io`] on `O_APPEND`).
    pub direct_io: bool,
}

/// How an operation finishes: with its result, exactly once, on whichever
/// thread the answer arrives.
pub trait Done<T>: FnOnce(Result<T, Errno>) + Send + 'static {}
impl<T, F: FnOnce(Result<T, Errno>) + Send + 'static> Done<T> for F {}

/// What the core asks of the kernel's own caches. An implementation carries
/// the requests out on a thread of its own, in the order asked — never inside
/// a FUSE request, as the kernel may wait, during an invalidation, for a
/// request still in flight. An inode or name the kernel does not hold is no
/// error.
pub trait KernelCache: Send + Sync {
    /// Drops the kernel's entry `name` in directory `parent`, positive or negative.
    fn forget_entry(&self, parent: u64, name: &OsStr);
    /// Drops the kernel's cached attributes of `ino`; with `data`, its pages
    /// too (a file's data, a directory's cached listing, a symlink's target).
    /// When the kernel holds no such inode, it drops the entries `names`
    /// (directory, name) instead: its lookup may be under way, answered
    /// before the change, the inode not made yet — and a lookup holds its
    /// directory's lock until the entry is in place, which dropping an entry
    /// waits for.
    fn forget_inode(&self, ino: u64, data: bool, names: Vec<(u64, OsString)>);
    /// Drops the kernel's cached attributes and pages of `ino`, then runs `then`.
    fn forget_data_then(&self, ino: u64, then: Box<dyn FnOnce() + Send>);
}

/// A kernel with nothing to invalidate (before mounting, and in tests that do
/// not look at invalidations).
#[derive(Debug, Default)]
pub struct NoKernel;

impl KernelCache for NoKernel {
    fn forget_entry(&self, _parent: u64, _name: &OsStr) {}
    fn forget_inode(&self, _ino: u64, _data: bool, _names: Vec<(u64, OsString)>) {}
    fn forget_data_then(&self, _ino: u64, then: Box<dyn FnOnce() + Send>) {
        then()
    }
}

/// Everything the core knows, shared by every request in flight.
pub struct Shared {
    client: RemoteClient,
    opts: FsOptions,
    inodes: Mutex<InodeTable>,
    files: Mutex<OpenFiles>,
    writes: WriteBehind,
    /// The export's free space as last reported: writes go through when it
    /// runs low (see [`crate::space`]).
    space: FreeSpace,
    /// The first bytes of files opened for reading, for their first reads.
    opened: OpenedData,
    /// The contents of small files a walk is about to open, fetched ahead.
    files_ahead: FilesAhead,
    attrs: AttrCache,
    known: KnownDirs,
    dirs: DirSnapshots,
    /// Changes through this mount under way and made lately, counted.
    changes: Arc<Changes>,
    /// Listings a walk will want next, fetched ahead.
    ahead: ListingsAhead,
    /// The locks this mount holds on the server, and the open files whose
    /// locks were lost.
    held: HeldLocks,
    /// Taken while locks are taken back after a reconnect (see [`reclaim`]).
    reclaiming: Mutex<()>,
    /// Answers for `security.capability` (see [`xattr`]).
    file_caps: xattr::FileCapCache,
    kernel: Arc<dyn KernelCache>,
    /// The lease and the server's notices.
    coherence: Coherence,
    /// Removals answered before the server had them (see [`behind`]).
    behind: behind::Behind,
    /// The client's counters, which the core adds to (what applications waited
    /// for, cache hits).
    stats: Arc<Stats>,
    /// The mount's readahead, fitted to the path before every open.
    read_ahead: KernelReadAhead,
}

/// The filesystem core; cheap to clone (clones share one [`Shared`]).
#[derive(Clone)]
pub struct Core(Arc<Shared>);

impl Deref for Core {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Core {
    /// The core of a mount on `client`'s server. Unless `opts.lease` is zero,
    /// it asks every connection for notices (see [`coherence`]).
    pub fn new(client: RemoteClient, opts: FsOptions, kernel: Arc<dyn KernelCache>) -> Core {
        let root = FileId::of(&client.welcome().root);
        let stats = Arc::clone(client.stats());
        let ttl = opts.attr_timeout;
        let changes = Arc::new(Changes::default());
        let ahead = ListingsAhead::new(client.clone(), Arc::clone(&changes), ttl);
        let core = Core(Arc::new(Shared {
            client,
            inodes: Mutex::new(InodeTable::new(root)),
            files: Mutex::new(OpenFiles::new()),
            writes: WriteBehind::new(),
            space: FreeSpace::new(opts.write_through_below),
            opened: OpenedData::new(ttl),
            files_ahead: FilesAhead::new(),
            attrs: AttrCache::new(),
            known: KnownDirs::new(),
            dirs: DirSnapshots::default(),
            changes,
            ahead,
            held: HeldLocks::new(),
            reclaiming: Mutex::new(()),
            file_caps: xattr::FileCapCache::new(),
            kernel,
            coherence: Coherence::new(opts.lease),
            behind: behind::Behind::default(),
            stats,
            read_ahead: KernelReadAhead::default(),
            opts,
        }));
        // A walk that reads files gets the files of the listings it will
        // reach next fetched too (on the listings' own thread).
        let weak = Arc::downgrade(&core.0);
        core.ahead.on_fetched(Box::new(move |cred, path, entries| {
            if let Some(shared) = weak.upgrade() {
                Core(shared).fetch_files_listed_ahead(cred, path, entries);
            }
        }));
        Core::listen(&core.0);
        core.take_back_locks_on_reconnect();
        core.learn_free_space();
        core
    }

    pub fn options(&self) -> &FsOptions {
        &self.opts
    }

    pub fn client(&self) -> &RemoteClient {
        &self.client
    }

    /// What the client and the core have counted.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The mount's readahead (see [`crate::windows`]).
    pub fn read_ahead(&self) -> &KernelReadAhead {
        &self.read_ahead
    }

    /// Writes and attribute changes sent ahead and not yet answered, and the
    /// bytes of data they carry.
    pub fn queued_writes(&self) -> (usize, usize) {
        self.writes.queued()
    }

    /// How many inodes the mount holds, the root included: no more than the
    /// kernel holds (see [`crate::inode`]).
    pub fn inodes_held(&self) -> usize {
        lock(&self.inodes).len()
    }

    fn ttl(&self) -> Duration {
        self.opts.attr_timeout
    }

    /// Sends `op` on behalf of `cred` for an answer an application waits for;
    /// `epoch` pins it to the connection of a server handle it carries. Once
    /// `done` has stored what the answer says and answered the kernel, a
    /// notice that crossed it is applied again to what it named (see
    /// [`Core::settle`]).
    fn ask(
        &self,
        epoch: Option<u64>,
        cred: &Cred,
        op: Op,
        done: impl Done<ferry_common::proto::Reply>,
    ) {
        self.ask_about(None, epoch, cred, op, done)
    }

    /// [`ask`](Self::ask) for an operation whose answer is about inode `ino`
    /// (besides the paths it names): its data or attributes through a handle.
    fn ask_about(
        &self,
        ino: Option<u64>,
        epoch: Option<u64>,
        cred: &Cred,
        op: Op,
        done: impl Done<ferry_common::proto::Reply>,
    ) {
        self.stats.waited_for(&op);
        let touched = Touched::of(&op).with_ino(ino);
        let mark = self.mark();
        let core = self.clone();
        let changes = changes_listings(&op).then(|| {
            self.changes.begin();
            Arc::clone(&self.changes)
        });
        let done = move |r: OpResult| {
            if let Some(changes) = changes {
                changes.end();
            }
            done(r);
            core.settle(mark, touched);
        };
        match epoch {
            Some(epoch) => self.client.submit_in(epoch, cred, op, done),
            None => self.client.submit(cred, op, done),
        }
    }

    /// [`ask`](Self::ask), waiting here for the answer.
    fn ask_now(&self, epoch: Option<u64>, cred: &Cred, op: Op) -> OpResult {
        self.stats.waited_for(&op);
        let changes = changes_listings(&op);
        if changes {
            self.changes.begin();
        }
        let answer = match epoch {
            Some(epoch) => self.client.call_in(epoch, cred, op),
            None => self.client.call(cred, op),
        };
        if changes {
            self.changes.end();
        }
        answer
    }

    /// Whether the server checks `caller`'s requests as this machine's kernel
    /// did before passing them on: not when the server acts as another user for
    /// it (a squashed root, or anyone under `--all-squash`), whose requests may
    /// then fail there although the kernel allowed them.
    fn checked_alike(&self, caller: &Caller) -> bool {
        let features = self.client.welcome().features;
        let squashed = features & WELCOME_ALL_SQUASHED != 0
            || (features & WELCOME_ROOT_SQUASHED != 0 && caller.cred.uid == 0);
        features & WELCOME_ACTS_AS_CALLERS == 0 || !squashed
    }

    /// Keeps the directory attributes the server sent along with a change
    /// asked for at `asked`, for the directories this mount has numbers for.
    fn note_dirs(&self, dirs: &[Attr], asked: Instant) {
        for dir in dirs {
            if let Some(ino) = lock(&self.inodes).ino_of_file(dir) {
                self.attrs.store(ino, *dir, self.until(asked));
            }
        }
    }

    /// Whether the server file `attr` describes, reached through the path of
    /// `ino`, is another file than `ino` (the name was replaced since the
    /// kernel looked it up): if so, the path is taken from `ino`.
    fn replaced(&self, ino: u64, attr: &Attr) -> bool {
        let mut inodes = lock(&self.inodes);
        if inodes.is_file(ino, attr) {
            return false;
        }
        if let Some(path) = inodes.path(ino).cloned() {
            if inodes.ino_of(&path) == Some(ino) {
                inodes.detach(&path);
            }
        }
        true
    }

    /// Counts one kernel lookup of `path`, which the server says is the file
    /// `attr`: answers the inode number and generation to hand the kernel. A
    /// number handed out for a new file (see [`crate::inode`]) keeps nothing
    /// the caches learnt under it about the old one.
    fn hand_out(&self, path: &RelPath, attr: &Attr) -> (u64, u64) {
        let mut inodes = lock(&self.inodes);
        let before = inodes
            .number_of_file(attr)
            .map(|ino| (ino, inodes.generation(ino)));
        let ino = inodes.remember(path, attr);
        let generation = inodes.generation(ino);
        drop(inodes);
        if before.is_some_and(|held| held != (ino, generation)) {
            self.drop_cached(ino);
        }
        (ino, generation)
    }

    /// Forgets what the caches hold under the number `ino`.
    fn drop_cached(&self, ino: u64) {
        self.attrs.drop_ino(ino);
        self.known.forget(ino);
        self.file_caps.forget(ino);
        self.behind.forget(ino);
    }

    /// The path `ino` names now.
    fn path_of(&self, ino: u64) -> Result<ferry_common::RelPath, Errno> {
        lock(&self.inodes).reach(ino).cloned().ok_or(Errno::ENOENT)
    }

    /// The path of `name` in directory `parent`.
    fn child(&self, parent: u64, name: &std::ffi::OsStr) -> Result<ferry_common::RelPath, Errno> {
        self.path_of(parent)?.join(name)
    }

    /// A negative entry for `name` in `dir`: "no such name", as the server
    /// answered a request sent at `asked`.
    fn missing(&self, dir: u64, name: &OsStr, asked: Instant) -> Lookup {
        Lookup::Missing(self.negative(dir, name, self.until(asked)))
    }
}

/// `perm` without what a write or chown by an unprivileged user drops: setuid,
/// and setgid when group-executable, of a regular file.
fn without_suidgid(kind: FileKind, perm: u16) -> u16 {
    if kind != FileKind::File {
        return perm;
    }
    let mut kept = perm & !(libc::S_ISUID as u16);
    if perm & libc::S_IXGRP as u16 != 0 {
        kept &= !(libc::S_ISGID as u16);
    }
    kept
}

/// The answer `r` to an operation whose reply carries attributes.
fn expect_attr(r: OpResult) -> Result<Attr, Errno> {
    match r {
        Ok(ferry_common::proto::Reply::Attr(attr)) => Ok(attr),
        Ok(_) => Err(Errno::EPROTO),
        Err(e) => Err(e),
    }
}
