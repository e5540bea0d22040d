//! `FerryFs`: the `fuser::Filesystem` adapter.
//!
//! Each kernel request becomes one remote operation. The adapter resolves the
//! inode to a path (see [`InodeTable`]), submits the operation, and answers the
//! kernel from the completion callback, on the connection's reader thread; a FUSE
//! worker thread is therefore never tied up waiting for the network, and the
//! kernel can keep many requests in flight. Only directory listing, which may take
//! several round trips, is done synchronously.
//!
//! Writes, and the attribute changes that follow them, are answered before the
//! server has (write-behind, see [`crate::writeback`]); their errors reach the
//! application at close or fsync.

mod locking;
mod xattr;

use crate::attrcache::AttrCache;
use crate::client::{OpResult, RemoteClient};
use crate::convert::{errno, file_attr, file_type, set_time};
use crate::files::{OpenFile, OpenFiles};
use crate::inode::{FileId, InodeTable, ROOT_INO};
use crate::known::KnownDirs;
use crate::locks::{CacheInvalidator, LockOwners};
use crate::writeback::WriteBehind;
use ferry_common::frame::{MAX_CHUNK, READDIR_PAGE};
use ferry_common::proto::{AttrChanges, DirEntry, Op, Owner, Reply, SetTime};
use ferry_common::{Attr, Errno, FileKind, RelPath, Timestamp};
use fuser::{
    BsdFileFlags, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Inode numbers are never reused, so every entry has generation 0.
const GENERATION: Generation = Generation(0);

/// How the mount behaves; set from the command line.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// How long the kernel may trust attributes and entries without asking again.
    pub attr_timeout: Duration,
    pub read_only: bool,
    /// Ask the kernel for readdirplus (names with attributes in one round trip).
    /// Off only to exercise the plain readdir path.
    pub readdirplus: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            attr_timeout: Duration::from_secs(1),
            read_only: false,
            readdirplus: true,
        }
    }
}

/// One open directory: the listing is taken when reading starts at offset 0
/// (opendir or rewinddir) and served from memory, so offsets stay stable while
/// the directory changes.
struct OpenDir {
    path: RelPath,
    entries: Arc<Vec<DirEntry>>,
}

pub struct FerryFs {
    client: RemoteClient,
    inodes: Arc<Mutex<InodeTable>>,
    opts: FsOptions,
    files: Arc<Mutex<OpenFiles>>,
    writes: Arc<WriteBehind>,
    attrs: Arc<AttrCache>,
    known: Arc<KnownDirs>,
    dirs: Mutex<HashMap<u64, OpenDir>>,
    next_dir: AtomicU64,
    /// POSIX lock owners that may hold locks on the server.
    lock_owners: Arc<LockOwners>,
    capabilities: Arc<xattr::CapabilityCache>,
    invalidator: Arc<CacheInvalidator>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single table updates that leave consistent data even
    // if a panic interrupted another thread, so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// Whether a file opened with `flags` may be written to.
fn writable(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// Whether writes through a file opened with `flags` must reach the server before
/// `write(2)` returns: an appending write lands wherever the server's end of file
/// is, which depends on the order of arrival, and a synchronous one promises the
/// disk.
fn writes_through(flags: i32) -> bool {
    flags & (libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC) != 0
}

/// How the kernel should treat a file opened with `flags`. An `O_APPEND` file
/// bypasses the page cache: through the cache the kernel splits a write that
/// starts in a partly cached page into one request per page, and each request
/// would be a separate append on the server, where another client's append can
/// land in between. Uncached, every write(2) up to 1 MiB is one append (the
/// server's descriptor has `O_APPEND`, so it lands at the real end of the file
/// whatever this client believes the size to be).
fn append_mode(flags: i32) -> FopenFlags {
    if flags & libc::O_APPEND != 0 {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

/// Keeps the directory attributes the server sent along with a change, for the
/// directories this mount has numbers for.
fn note_dirs(inodes: &Mutex<InodeTable>, attrs: &AttrCache, dirs: &[Attr]) {
    for dir in dirs {
        if let Some(ino) = lock(inodes).ino_of_file(dir) {
            attrs.store(ino, *dir);
        }
    }
}

fn owner(req: &Request) -> Option<Owner> {
    Some(Owner {
        uid: req.uid(),
        gid: req.gid(),
    })
}

impl FerryFs {
    pub fn new(client: RemoteClient, opts: FsOptions) -> FerryFs {
        let root = FileId::of(&client.welcome().root);
        let attrs = Arc::new(AttrCache::new(opts.attr_timeout));
        let known_ttl = opts.attr_timeout;
        FerryFs {
            client,
            inodes: Arc::new(Mutex::new(InodeTable::new(root))),
            opts,
            files: Arc::new(Mutex::new(OpenFiles::new())),
            writes: Arc::new(WriteBehind::new()),
            attrs,
            known: Arc::new(KnownDirs::new(known_ttl)),
            dirs: Mutex::new(HashMap::new()),
            next_dir: AtomicU64::new(1),
            lock_owners: Arc::new(LockOwners::new()),
            capabilities: Arc::default(),
            invalidator: Arc::default(),
        }
    }

    /// Where the mount puts the session's notifier once mounted, so that taking
    /// a lock can drop cached data (see [`CacheInvalidator`]).
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.invalidator.slot()
    }

    fn path_of(&self, ino: INodeNo) -> Result<RelPath, Errno> {
        lock(&self.inodes).path(ino.0).cloned().ok_or(Errno::ENOENT)
    }

    /// The path of `ino`, and the handle to use for it: the kernel's, when it
    /// gave one, or any open handle when the inode no longer names a path.
    fn locate(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
    ) -> Result<(RelPath, Option<u64>), Errno> {
        let (path, handle) = lock(&self.inodes).locate(ino.0)?;
        Ok((path, fh.map(|h| h.0).or(handle)))
    }

    /// The server handle (and its connection epoch) behind the kernel's handle
    /// `fh`. After a reconnect the file is first opened again by its path.
    fn server_handle(&self, fh: u64) -> Result<(u64, u64), Errno> {
        let epoch = self.client.connected_epoch()?;
        let file = lock(&self.files).get(fh).ok_or(Errno::EBADF)?;
        if file.epoch == epoch {
            return Ok((epoch, file.handle));
        }
        // A file unlinked while open cannot be found again on a new connection.
        let path = lock(&self.inodes)
            .path(file.ino)
            .cloned()
            .ok_or(Errno::EIO)?;
        let op = Op::Open {
            path,
            flags: file.reopen_flags(),
        };
        match self.client.call_in(epoch, op)? {
            Reply::Opened { handle, .. } => {
                let mut files = lock(&self.files);
                match files.get(fh) {
                    // Another thread re-opened it meanwhile: keep theirs, close ours.
                    Some(theirs) if theirs.epoch == epoch => {
                        drop(files);
                        self.client.submit_in(epoch, Op::Close { handle }, |_| {});
                        Ok((epoch, theirs.handle))
                    }
                    Some(_) => {
                        log::info!("re-opened a file after reconnecting (handle {fh})");
                        files.reopened(fh, handle, epoch);
                        Ok((epoch, handle))
                    }
                    // Released meanwhile.
                    None => {
                        drop(files);
                        self.client.submit_in(epoch, Op::Close { handle }, |_| {});
                        Err(Errno::EBADF)
                    }
                }
            }
            _ => Err(Errno::EPROTO),
        }
    }

    /// Submits the operation `make_op` builds for the server handle behind the
    /// kernel's `fh`, on that handle's connection.
    fn on_handle(
        &self,
        fh: FileHandle,
        make_op: impl FnOnce(u64) -> Op,
        done: impl FnOnce(OpResult) + Send + 'static,
    ) {
        match self.server_handle(fh.0) {
            Ok((epoch, handle)) => self.client.submit_in(epoch, make_op(handle), done),
            Err(e) => done(Err(e)),
        }
    }

    /// An attribute operation on `ino`: through a server handle when the kernel
    /// gave one or the inode is detached (then the path is not used), else by path.
    fn attr_target(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
    ) -> Result<(RelPath, Option<(u64, u64)>), Errno> {
        let (path, fh) = self.locate(ino, fh)?;
        match fh {
            Some(fh) => Ok((path, Some(self.server_handle(fh)?))),
            None => Ok((path, None)),
        }
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<RelPath, Errno> {
        self.path_of(parent)?.join(name)
    }

    /// Submits an operation whose answer is an entry for `path` (lookup, mkdir,
    /// symlink, ...): the inode is counted only when the kernel receives it.
    fn entry_op(&self, path: RelPath, op: Op, reply: ReplyEntry) {
        let inodes = self.inodes.clone();
        let attrs = self.attrs.clone();
        let ttl = self.opts.attr_timeout;
        // A name that does not exist is remembered by the kernel as a negative
        // entry for as long as a positive one would be: compilers, git and shells
        // look for the same missing files again and again.
        let negative = matches!(op, Op::Stat { .. });
        // A directory made here is known to be empty.
        let made_dir = matches!(op, Op::Mkdir { .. });
        let is_link = matches!(op, Op::Link { .. });
        let known = self.known.clone();
        let writes = self.writes.clone();
        let mark = writes.mark();
        let asked = Instant::now();
        self.client
            .submit(op, move |r| match r.map(|reply| (reply.attr(), reply)) {
                Ok((Some(attr), reply_to_op)) => {
                    if let Reply::Entry { dir, .. } = reply_to_op {
                        note_dirs(&inodes, &attrs, &[dir]);
                    }
                    let ino = lock(&inodes).remember(&path, &attr);
                    attrs.store(ino, attr);
                    if is_link {
                        // A file being written has one more name.
                        writes.links_changed(ino, Some(attr.nlink));
                    }
                    let attr = writes.overlay(ino, attr, Some(mark));
                    if made_dir {
                        known.learn(ino, asked, []);
                    }
                    log::trace!("entry {path:?} is inode {ino}");
                    reply.entry(&ttl, &file_attr(ino, &attr), GENERATION);
                }
                Ok(_) => reply.error(errno(Errno::EPROTO)),
                Err(Errno::ENOENT) if negative => {
                    // The name is gone (another client removed it).
                    lock(&inodes).detach(&path);
                    // Inode number 0 tells the kernel "no such entry, for ttl".
                    let none = file_attr(0, &Attr::blank(FileKind::File));
                    reply.entry(&ttl, &none, GENERATION);
                }
                Err(e) => {
                    log::trace!("entry {path:?}: {e}");
                    reply.error(errno(e))
                }
            });
    }

    /// Creates (or looks up) the entry `name` in `parent` with the operation
    /// `make_op` builds from its path.
    fn new_entry(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
        make_op: impl FnOnce(RelPath) -> Op,
    ) {
        match self.child(parent, name) {
            Ok(path) => {
                let op = make_op(path.clone());
                if !matches!(op, Op::Stat { .. }) {
                    // Before the server has it, so no lookup can miss it.
                    self.known.add(parent.0, name);
                }
                self.entry_op(path, op, reply)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Submits an operation answered with nothing but success or an errno;
    /// `on_success` updates local state before the kernel hears of it. The
    /// cached attributes of the nodes at `changed` (their ctime changes, and
    /// their link count where the flag says they lose a name) are dropped, and
    /// the projection of a file being written is corrected.
    fn empty_op(
        &self,
        op: Op,
        changed: Vec<(RelPath, bool)>,
        reply: ReplyEmpty,
        on_success: impl FnOnce(&mut InodeTable) + Send + 'static,
    ) {
        let inodes = self.inodes.clone();
        let attrs = self.attrs.clone();
        let writes = self.writes.clone();
        self.client.submit(op, move |r| match r {
            Ok(answer) => {
                for (path, loses_link) in &changed {
                    if let Some(ino) = lock(&inodes).ino_of(path) {
                        attrs.drop_ino(ino);
                        if *loses_link {
                            writes.links_changed(ino, None);
                        } else {
                            writes.doubt(ino);
                        }
                    }
                }
                on_success(&mut lock(&inodes));
                if let Reply::DirsChanged(dirs) = answer {
                    note_dirs(&inodes, &attrs, &dirs);
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        });
    }

    /// Submits an operation answered with attributes; `epoch` pins it to the
    /// connection of the server handle it carries.
    fn attr_op(&self, ino: INodeNo, epoch: Option<u64>, op: Op, reply: ReplyAttr) {
        let ttl = self.opts.attr_timeout;
        let writes = self.writes.clone();
        let attrs = self.attrs.clone();
        let mark = writes.mark();
        let done = move |r: OpResult| match r {
            Ok(Reply::Attr(attr)) => {
                writes.told(ino.0, &attr, mark);
                attrs.store(ino.0, attr);
                reply.attr(&ttl, &file_attr(ino.0, &attr))
            }
            Ok(_) => reply.error(errno(Errno::EPROTO)),
            Err(e) => reply.error(errno(e)),
        };
        match epoch {
            Some(epoch) => self.client.submit_in(epoch, op, done),
            None => self.client.submit(op, done),
        }
    }

    /// Sends an attribute change without waiting for the server, when it is safe:
    /// the file is open for writing on this mount (so the change is ordered with
    /// the writes and its error, if any, reaches the writer at close), it is not a
    /// truncation, and it does not change the owner. The kernel has already checked
    /// permissions (`default_permissions`), so the server can only fail it for
    /// reasons close reports (a broken connection, a full or failing disk). This is
    /// what `tar` and `cp -p` do to each file they write: `futimens`, `fchown` to
    /// the owner it already has, `fchmod`. Returns the attributes to answer with.
    fn defer_setattr(
        &self,
        ino: u64,
        fh: Option<FileHandle>,
        changes: AttrChanges,
    ) -> Option<Attr> {
        if changes.size.is_some() {
            return None;
        }
        let writer = match fh {
            Some(fh) if self.writes.is_writer(ino, fh.0) => fh.0,
            _ => self.writes.any_writer(ino)?,
        };
        let (ticket, attr) = self.writes.begin_setattr(ino, writer, |attr| {
            if changes.uid.is_some_and(|uid| uid != attr.uid)
                || changes.gid.is_some_and(|gid| gid != attr.gid)
            {
                return false;
            }
            if let Some(mode) = changes.mode {
                attr.perm = (mode & 0o7777) as u16;
            }
            // A chown drops setuid/setgid on the server, as on a local disk.
            if changes.kill_suidgid || changes.uid.is_some() || changes.gid.is_some() {
                attr.perm = without_suidgid(attr.kind, attr.perm);
            }
            let resolve = |t| match t {
                SetTime::Now => Timestamp::from_system_time(SystemTime::now()),
                SetTime::At(t) => t,
            };
            if let Some(t) = changes.atime {
                attr.atime = resolve(t);
            }
            if let Some(t) = changes.mtime {
                attr.mtime = resolve(t);
            }
            true
        })?;
        // The server ignores the path when given a handle; a detached inode has none.
        let path = self
            .path_of(INodeNo(ino))
            .unwrap_or_else(|_| RelPath::root());
        let writes = self.writes.clone();
        let op = |handle| Op::SetAttr {
            path,
            handle: Some(handle),
            changes,
        };
        self.on_handle(FileHandle(writer), op, move |r| {
            let result = match r {
                Ok(Reply::Attr(attr)) => Ok(Some(attr)),
                Ok(_) => Err(Errno::EPROTO),
                Err(e) => Err(e),
            };
            writes.finish(ticket, result);
        });
        Some(attr)
    }

    /// The listing of an open directory, fetched afresh when reading restarts.
    fn listing(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
    ) -> Result<(RelPath, Arc<Vec<DirEntry>>), Errno> {
        let opened_as = {
            let dirs = lock(&self.dirs);
            let dir = dirs.get(&fh.0).ok_or(Errno::EBADF)?;
            if offset != 0 {
                return Ok((dir.path.clone(), dir.entries.clone()));
            }
            dir.path.clone()
        };
        // The directory's path now: it may have been renamed since opendir.
        let path = self.path_of(ino).unwrap_or(opened_as);
        let asked = Instant::now();
        let entries = Arc::new(self.client.list_dir(&path)?);
        // One page is one read of the directory on the server; between pages
        // others may remove entries and shift the rest, so a longer listing is
        // no proof of what is missing.
        let whole = entries.len() < READDIR_PAGE;
        if whole && lock(&self.inodes).ino_of(&path) == Some(ino.0) {
            self.known
                .learn(ino.0, asked, entries.iter().map(|e| e.name.as_slice()));
        }
        if let Some(dir) = lock(&self.dirs).get_mut(&fh.0) {
            dir.path = path.clone();
            dir.entries = entries.clone();
        }
        Ok((path, entries))
    }

    fn parent_ino(&self, path: &RelPath) -> u64 {
        path.split_last()
            .and_then(|(parent, _)| lock(&self.inodes).ino_of(&parent))
            .unwrap_or(ROOT_INO)
    }
}

impl Filesystem for FerryFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Ask for what makes a network filesystem fast; each is optional, so a
        // kernel that lacks one still mounts.
        if self.opts.readdirplus {
            if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
                log::info!("the kernel does not offer {missing:?}");
            }
        }
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_ASYNC_DIO,
            // Locks are taken on the server, so clients exclude each other.
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
            // setuid/setgid are dropped here on write, truncate and chown rather
            // than by the kernel, which would otherwise ask for the file's
            // security.capability before every write and refresh its attributes
            // before every chown: two round trips to this process each time.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // Shared mappings of files opened uncached (O_APPEND, see `append_mode`).
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            if let Err(missing) = config.add_capabilities(cap) {
                log::info!("the kernel does not offer {missing:?}");
            }
        }
        let _ = config.set_max_write(MAX_CHUNK);
        // The kernel caps this at what it offered (128 KiB); the mount's bdi
        // read_ahead_kb is raised after mounting.
        if let Err(max) = config.set_max_readahead(MAX_CHUNK) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Some(left) = self.known.absent(parent.0, name) {
            // Inode number 0: a negative entry, for as long as the knowledge lasts.
            let none = file_attr(0, &Attr::blank(FileKind::File));
            return reply.entry(&left, &none, GENERATION);
        }
        self.new_entry(parent, name, reply, |path| Op::Stat { path });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        log::trace!("forget inode {ino} by {nlookup}");
        if lock(&self.inodes).forget(ino.0, nlookup) {
            self.attrs.drop_ino(ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // A file this mount is writing: the server would only say what we know, or
        // less (the kernel asks while changing the owner, after every write).
        if let Some(attr) = self.writes.projected(ino.0, self.opts.attr_timeout) {
            return reply.attr(&self.opts.attr_timeout, &file_attr(ino.0, &attr));
        }
        // (What the server said before this mount's writes is no answer.)
        if self.writes.any_writer(ino.0).is_none() {
            if let Some((attr, left)) = self.attrs.fresh(ino.0) {
                return reply.attr(&left, &file_attr(ino.0, &attr));
            }
        }
        self.writes.wait_idle(ino.0);
        // With a handle the server stats the open file, which may be unlinked.
        let (epoch, op) = match self.attr_target(ino, fh) {
            Ok((path, Some((epoch, handle)))) => (
                Some(epoch),
                Op::SetAttr {
                    path,
                    handle: Some(handle),
                    changes: AttrChanges::default(),
                },
            ),
            Ok((path, None)) => (None, Op::Stat { path }),
            Err(e) => return reply.error(errno(e)),
        };
        self.attr_op(ino, epoch, op, reply);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = AttrChanges {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            // The kernel leaves this to the filesystem (FUSE_HANDLE_KILLPRIV_V2):
            // a truncation by anyone but root drops setuid/setgid, as locally.
            kill_suidgid: size.is_some() && req.uid() != 0,
        };
        if let Some(attr) = self.defer_setattr(ino.0, fh, changes) {
            return reply.attr(&self.opts.attr_timeout, &file_attr(ino.0, &attr));
        }
        // A truncation must not overtake a write; nor may any answer predate them.
        self.writes.wait_idle(ino.0);
        self.attrs.drop_ino(ino.0);
        // With a handle (given, or the only way left to a detached inode) every
        // change goes through the open file.
        match self.attr_target(ino, fh) {
            Ok((path, target)) => {
                let op = Op::SetAttr {
                    path,
                    handle: target.map(|(_, h)| h),
                    changes,
                };
                self.attr_op(ino, target.map(|(e, _)| e), op, reply)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(e)),
        };
        self.client.submit(Op::ReadLink { path }, move |r| match r {
            Ok(Reply::Target(t)) => reply.data(&t),
            Ok(_) => reply.error(errno(Errno::EPROTO)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let owner = owner(req);
        self.new_entry(parent, name, reply, |path| Op::Mknod {
            path,
            mode,
            rdev: u64::from(rdev),
            owner,
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let owner = owner(req);
        self.new_entry(parent, name, reply, |path| Op::Mkdir { path, mode, owner });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name) {
            Ok(path) => {
                let op = Op::Unlink { path: path.clone() };
                self.empty_op(op, vec![(path.clone(), true)], reply, move |t| {
                    t.detach(&path)
                })
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name) {
            Ok(path) => {
                let op = Op::Rmdir { path: path.clone() };
                self.empty_op(op, vec![(path.clone(), true)], reply, move |t| {
                    t.detach(&path)
                })
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes().to_vec();
        let owner = owner(req);
        self.new_entry(parent, link_name, reply, |path| Op::Symlink {
            path,
            target,
            owner,
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (from, to) = match (self.child(parent, name), self.child(newparent, newname)) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(e), _) | (_, Err(e)) => return reply.error(errno(e)),
        };
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        self.known.add(newparent.0, newname);
        let op = Op::Rename {
            from: from.clone(),
            to: to.clone(),
            flags: flags.bits(),
        };
        let changed = vec![(from.clone(), false), (to.clone(), !exchange)];
        self.empty_op(op, changed, reply, move |t| {
            if exchange {
                t.exchange(&from, &to)
            } else {
                t.rename(&from, &to)
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match (self.path_of(ino), self.child(newparent, newname)) {
            (Ok(existing), Ok(path)) => {
                self.known.add(newparent.0, newname);
                self.entry_op(path.clone(), Op::Link { existing, path }, reply)
            }
            (Err(e), _) | (_, Err(e)) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(e)),
        };
        if flags.0 & libc::O_TRUNC != 0 {
            // Truncating must not be overtaken by writes sent before it.
            self.writes.wait_idle(ino.0);
        }
        let epoch = match self.client.connected_epoch() {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        let inodes = self.inodes.clone();
        let files = self.files.clone();
        let writes = self.writes.clone();
        let attrs = self.attrs.clone();
        let mark = writes.mark();
        let op = Op::Open {
            path,
            flags: flags.0,
        };
        self.client
            .submit_in(epoch, op, move |r| match r.map(|reply| reply.opened()) {
                Ok(Some((handle, attr))) => {
                    let fh = lock(&files).insert(OpenFile {
                        ino: ino.0,
                        flags: flags.0,
                        handle,
                        epoch,
                    });
                    if writable(flags.0) {
                        writes.opened_for_writing_since(ino.0, fh, &attr, mark);
                    }
                    attrs.store(ino.0, attr);
                    // Close-to-open consistency: keep cached pages only when the file
                    // is unchanged since it was last opened.
                    let unchanged = {
                        let mut t = lock(&inodes);
                        t.add_handle(ino.0, fh);
                        t.note_open(ino.0, &attr)
                    };
                    let fopen = if unchanged {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), fopen | append_mode(flags.0));
                }
                Ok(_) => reply.error(errno(Errno::EPROTO)),
                // The name was cached by the kernel but is gone on the server (another
                // client removed it): ESTALE makes the kernel look the name up again
                // and retry, as for NFS, so an O_CREAT open then creates the file.
                Err(e) if e == Errno::ENOENT => reply.error(errno(Errno::new(libc::ESTALE))),
                Err(e) => reply.error(errno(e)),
            });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // The server must not be asked before it has this mount's writes.
        self.writes.wait_idle(ino.0);
        let len = size.min(MAX_CHUNK);
        let read = |handle| Op::Read {
            handle,
            offset,
            len,
        };
        self.on_handle(fh, read, move |r| match r {
            Ok(Reply::Data(data)) => reply.data(&data),
            Ok(_) => reply.error(errno(Errno::EPROTO)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let len = data.len();
        // A write by a user without CAP_FSETID drops setuid/setgid, after the
        // write and through the same handle (FUSE_HANDLE_KILLPRIV_V2).
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && self.writes.must_kill_suidgid(ino.0, fh.0);
        let through = writes_through(flags.0) || !self.writes.is_writer(ino.0, fh.0);
        if through {
            // An appending write lands at the server's end of file: every write
            // before it, through any handle, must be there first.
            self.writes.wait_idle(ino.0);
        }
        // Fails at once (rather than at close) when the server is unreachable.
        let (epoch, handle) = match self.server_handle(fh.0) {
            Ok(h) => h,
            Err(e) => return reply.error(errno(e)),
        };
        let ticket = self.writes.begin_write(ino.0, fh.0, offset, len);
        let writes = self.writes.clone();
        let written = move |r: OpResult| match r {
            Ok(Reply::Written(n)) => Ok(n),
            Ok(_) => Err(Errno::EPROTO),
            Err(e) => Err(e),
        };
        if through {
            self.client
                .submit_write_in(epoch, handle, offset, data, move |r| {
                    writes.finish(ticket, Ok(None));
                    match written(r) {
                        Ok(n) => reply.written(n),
                        Err(e) => reply.error(errno(e)),
                    }
                });
        } else {
            // Write-behind: the kernel hears of success now, of a failure at
            // flush or fsync.
            self.client
                .submit_write_in(epoch, handle, offset, data, move |r| {
                    let result = match written(r) {
                        Ok(n) if n as usize == len => Ok(None),
                        // A short write on a local disk means it is full.
                        Ok(_) => Err(Errno::ENOSPC),
                        Err(e) => Err(e),
                    };
                    writes.finish(ticket, result);
                });
            reply.written(u32::try_from(len).unwrap_or(u32::MAX));
        }
        if kill {
            let changes = AttrChanges {
                kill_suidgid: true,
                ..AttrChanges::default()
            };
            if self.defer_setattr(ino.0, Some(fh), changes).is_none() {
                log::warn!("could not drop setuid/setgid of inode {ino} after a write");
            }
            // The kernel still holds the old mode.
            self.invalidator.invalidate_attrs(ino.0);
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is where write-behind owes the application its errors; then
        // the closer's POSIX locks go, once what was written under them is on
        // the server (through any handle: locks belong to the process).
        let written = self.writes.settle(ino.0, fh.0);
        self.release_posix_locks(ino, fh, lock_owner, move || match written {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // close(2) has already returned to the application and release errors go
        // nowhere, so the kernel need not wait for the server.
        // Changes still in flight through this handle reach the server before its
        // Close does: the server runs a handle's requests in order.
        lock(&self.inodes).remove_handle(ino.0, fh.0);
        if self.writes.is_writer(ino.0, fh.0) {
            // What the server says now differs from what the kernel was last told.
            self.attrs.drop_ino(ino.0);
        }
        self.writes.released(ino.0, fh.0);
        let file = lock(&self.files).remove(fh.0);
        // A handle of a connection that is gone was closed with it.
        if let Some(file) = file.filter(|f| self.client.current_epoch() == Some(f.epoch)) {
            self.client.submit_in(
                file.epoch,
                Op::Close {
                    handle: file.handle,
                },
                |r| {
                    if let Err(e) = r {
                        log::debug!("closing a remote file: {e}");
                    }
                },
            );
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Errors go to the handles that were writing; a read-only one only waits.
        if let Err(e) = self.writes.settle(ino.0, fh.0) {
            return reply.error(errno(e));
        }
        let fsync = |handle| Op::Fsync { handle, datasync };
        self.on_handle(fh, fsync, move |r| match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Writes still in flight land first, as they would on a local disk.
        self.writes.wait_idle(ino.0);
        let fallocate = |handle| Op::Fallocate {
            handle,
            offset,
            len: length,
            mode,
        };
        let (writes, attrs) = (self.writes.clone(), self.attrs.clone());
        self.on_handle(fh, fallocate, move |r| {
            // The size (mode 0) and ctime changed on the server.
            writes.doubt(ino.0);
            attrs.drop_ino(ino.0);
            match r {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    /// The copy is made on the server, between the two files' server handles, so
    /// the data never crosses the network.
    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The server copies what it has: writes in flight to either file land first.
        // (Their errors stay for close and fsync to report.)
        for ino in [ino_in, ino_out] {
            self.writes.wait_idle(ino.0);
        }
        // Both handles must belong to one connection; after a reconnect between
        // the two look-ups, the first is looked up (re-opened) again.
        let handles = || -> Result<(u64, u64, u64), Errno> {
            let (epoch_in, handle_in) = self.server_handle(fh_in.0)?;
            let (epoch_out, handle_out) = self.server_handle(fh_out.0)?;
            if epoch_in == epoch_out {
                return Ok((epoch_in, handle_in, handle_out));
            }
            match self.server_handle(fh_in.0)? {
                (epoch, handle_in) if epoch == epoch_out => Ok((epoch, handle_in, handle_out)),
                _ => Err(Errno::EIO),
            }
        };
        let (epoch, handle_in, handle_out) = match handles() {
            Ok(h) => h,
            Err(e) => return reply.error(errno(e)),
        };
        let op = Op::CopyFileRange {
            handle_in,
            offset_in,
            handle_out,
            offset_out,
            len,
        };
        let (writes, attrs) = (self.writes.clone(), self.attrs.clone());
        self.client.submit_in(epoch, op, move |r| {
            // The output's data, size and times changed on the server.
            writes.doubt(ino_out.0);
            attrs.drop_ino(ino_out.0);
            match r {
                Ok(Reply::Written(n)) => reply.written(n),
                Ok(_) => reply.error(errno(Errno::EPROTO)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(e)),
        };
        let fh = self.next_dir.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(
            fh,
            OpenDir {
                path,
                entries: Arc::new(Vec::new()),
            },
        );
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (path, entries) = match self.listing(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        // Offsets name the *next* entry: index 0 is ".", 1 is "..", then the listing.
        let total = entries.len() as u64 + 2;
        for index in offset..total {
            let full = match index {
                0 => reply.add(ino, 1, fuser::FileType::Directory, "."),
                1 => reply.add(
                    INodeNo(self.parent_ino(&path)),
                    2,
                    fuser::FileType::Directory,
                    "..",
                ),
                _ => {
                    let entry = &entries[(index - 2) as usize];
                    // d_ino is informational; the kernel looks the name up for the real one.
                    let ino = lock(&self.inodes)
                        .ino_of_file(&entry.attr)
                        .unwrap_or(entry.attr.ino.max(2));
                    reply.add(
                        INodeNo(ino),
                        index + 1,
                        file_type(entry.attr.kind),
                        OsStr::from_bytes(&entry.name),
                    )
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (path, entries) = match self.listing(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        let ttl = self.opts.attr_timeout;
        let total = entries.len() as u64 + 2;
        for index in offset..total {
            let full = match index {
                0 => reply.add(
                    ino,
                    1,
                    ".",
                    &ttl,
                    &file_attr(ino.0, &Attr::blank(FileKind::Directory)),
                    GENERATION,
                ),
                1 => {
                    let parent = self.parent_ino(&path);
                    reply.add(
                        INodeNo(parent),
                        2,
                        "..",
                        &ttl,
                        &file_attr(parent, &Attr::blank(FileKind::Directory)),
                        GENERATION,
                    )
                }
                _ => {
                    let entry = &entries[(index - 2) as usize];
                    let name = OsStr::from_bytes(&entry.name);
                    let Ok(child) = path.join(name) else { continue };
                    // Every entry but . and .. counts as a lookup, so it is counted
                    // here and uncounted if it does not fit in this reply.
                    let child_ino = lock(&self.inodes).remember(&child, &entry.attr);
                    self.attrs.store(child_ino, entry.attr);
                    let attr = self.writes.overlay(child_ino, entry.attr, None);
                    let full = reply.add(
                        INodeNo(child_ino),
                        index + 1,
                        name,
                        &ttl,
                        &file_attr(child_ino, &attr),
                        GENERATION,
                    );
                    if full {
                        lock(&self.inodes).forget(child_ino, 1);
                    }
                    full
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory operations are synchronous on the server: each has completed
        // (and reached the server's filesystem) before the kernel heard of it.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.client.submit(Op::StatFs, move |r| match r {
            Ok(Reply::StatFs(s)) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Ok(_) => reply.error(errno(Errno::EPROTO)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.xattr_get(ino, name, size, reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.xattr_list(req, ino, size, reply);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        self.xattr_set(ino, name, value, flags, position, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.xattr_remove(ino, name, reply);
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        self.lock_test(ino, fh, lock_owner, start, end, typ, reply);
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let tid = req.pid();
        self.lock_set(ino, fh, lock_owner, start, end, typ, tid, sleep, reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(e)),
        };
        let epoch = match self.client.connected_epoch() {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        self.known.add(parent.0, name);
        // The name may be a file this mount is writing (O_CREAT of an existing
        // name, maybe with O_TRUNC): what was sent before comes first.
        if let Some(ino) = lock(&self.inodes).ino_of(&path) {
            self.writes.wait_idle(ino);
        }
        let inodes = self.inodes.clone();
        let files = self.files.clone();
        let writes = self.writes.clone();
        let attrs = self.attrs.clone();
        let ttl = self.opts.attr_timeout;
        let capabilities = self.capabilities.clone();
        let op = Op::Create {
            path: path.clone(),
            flags,
            mode,
            owner: owner(req),
        };
        self.client
            .submit_in(epoch, op, move |r: OpResult| match r {
                Ok(Reply::Opened { handle, attr }) | Ok(Reply::Created { handle, attr, .. }) => {
                    if let Ok(Reply::Created { dir, .. }) = r {
                        note_dirs(&inodes, &attrs, &[dir]);
                    }
                    let (ino, fh) = {
                        let mut t = lock(&inodes);
                        let ino = t.remember(&path, &attr);
                        attrs.store(ino, attr);
                        t.note_open(ino, &attr);
                        let fh = lock(&files).insert(OpenFile {
                            ino,
                            flags,
                            handle,
                            epoch,
                        });
                        t.add_handle(ino, fh);
                        (ino, fh)
                    };
                    if writable(flags) {
                        writes.opened_for_writing(ino, fh, &attr);
                    }
                    capabilities.note_new_file(ino, ttl);
                    reply.created(
                        &ttl,
                        &file_attr(ino, &attr),
                        GENERATION,
                        FileHandle(fh),
                        append_mode(flags),
                    );
                }
                Ok(_) => reply.error(errno(Errno::EPROTO)),
                Err(e) => reply.error(errno(e)),
            });
    }
}
