//! From a decoded [`Op`] to its [`Reply`]: the one place that knows which
//! export call answers which operation.
//!
//! A [`Session`] is the state one connection's requests share: the export, the
//! connection's open files and locks (and the budget of descriptors they
//! count against), its side of coherent caches ([`crate::effects`], run
//! around every operation), the server's memory of its clients' locks
//! ([`Recovery`]: the grace period, locks kept for a reconnecting client)
//! and the server's [`Policy`] (a read-only export answers every request that
//! would change it with EROFS). `handle`
//! maps the request's credential to the identity it acts as, lets the policy
//! refuse or tone it down, and carries it out with the thread acting as that
//! identity. It makes blocking file system calls; [`crate::schedule`] decides
//! which thread each request makes them on, the connection's reader or the
//! blocking pool.

use crate::budget::DescriptorAccount;
#[cfg(any(test, fuzzing))]
use crate::budget::Descriptors;
use crate::effects::Coherence;
use crate::export::{ExportRoot, LockKey, LockTable, SetIdBits};
use crate::handles::HandleTable;
use crate::identity::Identity;
use crate::listings::Listings;
use crate::policy::{self, Policy};
use crate::recovery::{ClientId, Recovery};
use crate::registry::{Registry, Subscriber};
use ferry_common::frame::{self, MAX_CHUNK, READDIR_PAGE};
use ferry_common::proto::{
    AttrChanges, FileContents, FileRead, LockType, NodeId, Op, Reply, Request, LISTING_BYTES,
    MAX_OPEN_DATA, READ_FILES_BYTES, READ_FILES_EACH, READ_FILES_NAMES,
};
use ferry_common::FileKind;
use ferry_common::{Attr, Errno, RelPath};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The most one `CopyFileRange` copies: large enough that a copy takes few
/// round trips, small enough to finish well within a request's timeout. The
/// reply says how much was copied, and the kernel hands that shorter count to
/// the application, which copies the rest.
pub const MAX_COPY: u64 = 64 << 20;

/// Whether `op` changes the export: a read-only export answers it with EROFS.
/// Opening for writing, or with `O_TRUNC`, counts; locks do not (they change
/// nothing stored, and a reader may lock a file to read it consistently).
fn is_mutation(op: &Op) -> bool {
    match op {
        Op::Stat { .. }
        | Op::ReadDir { .. }
        | Op::List { .. }
        | Op::ReadLink { .. }
        | Op::Read { .. }
        | Op::Fsync { .. }
        | Op::Close { .. }
        | Op::StatFs
        | Op::Ping
        | Op::GetXattr { .. }
        | Op::ListXattr { .. }
        | Op::SetLock { .. }
        | Op::GetLock { .. }
        | Op::ReleaseLocks { .. }
        | Op::ReclaimLock { .. }
        | Op::ReclaimComplete
        | Op::Subscribe { .. }
        | Op::ReadFiles { .. } => false,
        Op::Open { flags, .. } | Op::OpenRead { flags, .. } => {
            flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
        }
        // No changes: the attributes of an open file (fstat).
        Op::SetAttr { changes, .. } => *changes != AttrChanges::default(),
        Op::Create { .. }
        | Op::CreateAs { .. }
        | Op::Write { .. }
        | Op::Mkdir { .. }
        | Op::Mknod { .. }
        | Op::Symlink { .. }
        | Op::Link { .. }
        | Op::Unlink { .. }
        | Op::Rmdir { .. }
        | Op::Rename { .. }
        | Op::SetXattr { .. }
        | Op::RemoveXattr { .. }
        | Op::Fallocate { .. }
        | Op::CopyFileRange { .. } => true,
    }
}

pub(crate) struct Session {
    export: Arc<ExportRoot>,
    handles: HandleTable,
    /// Listings under way, each reading one open directory (`Op::List`).
    listings: Listings,
    /// Locks by file, kind and owner.
    locks: Arc<LockTable>,
    /// What handles and lock descriptors count against.
    descriptors: Arc<DescriptorAccount>,
    coherence: Coherence,
    policy: Policy,
    recovery: Arc<Recovery>,
    /// The client's id from its `Hello` (0: it never reclaims locks).
    client: ClientId,
    /// This connection took a lock, and so its client is in the lock record.
    recorded: AtomicBool,
}

impl Session {
    /// The session of a connection of `client` to `export` (whose coherent
    /// caches' registry is `registry`).
    pub(crate) fn new(
        export: Arc<ExportRoot>,
        registry: Arc<Registry>,
        policy: Policy,
        recovery: Arc<Recovery>,
        descriptors: Arc<DescriptorAccount>,
        client: ClientId,
    ) -> Session {
        Session {
            export,
            handles: HandleTable::new(),
            listings: Listings::new(),
            locks: Arc::new(LockTable::new(Arc::clone(&descriptors))),
            descriptors,
            coherence: Coherence::new(registry),
            policy,
            recovery,
            client,
            recorded: AtomicBool::new(false),
        }
    }

    /// This connection's side of coherent caches: the notices its writer sends.
    pub(crate) fn subscriber(&self) -> Arc<Subscriber> {
        self.coherence.subscriber()
    }

    /// A session on its own (no grace periods, no other connections, a
    /// generous budget), for the fuzz target.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn standalone(export: Arc<ExportRoot>, policy: Policy) -> Session {
        let recovery = Arc::new(Recovery::start(std::time::Duration::ZERO, None));
        let descriptors = Arc::new(Descriptors::new(1 << 16)).account();
        // Unwatched: a watch thread per session would cost more than it runs.
        let registry = Registry::new(Arc::clone(&export), false);
        Session::new(export, registry, policy, recovery, descriptors, 0)
    }

    /// Whether this client holds nothing here (no open file, no lock): then
    /// closing its connection loses it nothing but the connection.
    pub(crate) fn holds_nothing(&self) -> bool {
        self.handles.is_empty() && self.locks.is_empty()
    }

    /// The client's id from its `Hello` (0: it never reclaims locks).
    pub(crate) fn client(&self) -> ClientId {
        self.client
    }

    /// This connection's locks (kept for its client when it ends).
    pub(crate) fn locks(&self) -> &Arc<LockTable> {
        &self.locks
    }

    /// The connection took a lock: its client goes in the lock record, once.
    fn took_lock(&self) {
        if !self.recorded.swap(true, Ordering::Relaxed) {
            self.recovery.holds_locks(self.client);
        }
    }

    /// The attributes of the directory holding `path`, after a change to it; `None`
    /// if they cannot be read (the change itself succeeded, so that is no error).
    fn dir_of(&self, path: &RelPath) -> Option<Attr> {
        let (dir, _) = path.split_last()?;
        self.export.stat(&dir).ok()
    }

    fn entry(&self, path: &RelPath, attr: Attr) -> Reply {
        match self.dir_of(path) {
            Some(dir) => Reply::Entry { attr, dir },
            None => Reply::Attr(attr),
        }
    }

    /// The directories of `paths` after a change, in order (one directory once).
    fn dirs_changed(&self, paths: &[&RelPath]) -> Reply {
        let mut dirs: Vec<Attr> = Vec::new();
        for path in paths {
            match self.dir_of(path) {
                Some(dir) if dirs.last() == Some(&dir) => {}
                Some(dir) => dirs.push(dir),
                None => return Reply::Done,
            }
        }
        Reply::DirsChanged(dirs)
    }

    /// The next entries of a listing: the first of a listing of `path` (cursor
    /// 0), or those after what listing `cursor` has sent.
    fn list(&self, path: &RelPath, cursor: u64, who: &Identity) -> Result<Reply, Errno> {
        // A new listing's directory is a descriptor in the budget.
        let (mut stream, place) = match cursor {
            0 => {
                let place = self.descriptors.take()?;
                (self.export.open_dir_stream(path)?, Some(place))
            }
            cursor => (self.listings.take(cursor, who)?, None),
        };
        match stream.next_entries(LISTING_BYTES, usize::MAX) {
            Ok((entries, true)) => {
                // Only a new listing comes with a place of its own.
                let cursor = match place {
                    Some(place) => self.listings.keep(stream, place, who),
                    None => {
                        self.listings.put_back(cursor, stream);
                        cursor
                    }
                };
                Ok(Reply::Listing { entries, cursor })
            }
            Ok((entries, false)) => {
                self.listings.end(cursor);
                Ok(Reply::Listing { entries, cursor: 0 })
            }
            Err(e) => {
                self.listings.end(cursor);
                Err(e)
            }
        }
    }

    /// The files `names` of `dir`, each opened for reading (as the identity
    /// acting already), read up to `max_each` bytes and closed, until the
    /// answer is full (see [`Op::ReadFiles`]). What cannot be read answers
    /// with its error, never with its bytes.
    fn read_files(
        &self,
        dir: &RelPath,
        names: &[ferry_common::proto::ByteBuf],
        max_each: u32,
    ) -> Result<Reply, Errno> {
        if names.len() > READ_FILES_NAMES {
            return Err(Errno::EINVAL);
        }
        let max_each = max_each.min(READ_FILES_EACH) as usize;
        let mut files = Vec::with_capacity(names.len());
        let mut bytes = 0;
        for name in names {
            if bytes >= READ_FILES_BYTES {
                break;
            }
            let result = dir
                .join(OsStr::from_bytes(name))
                .and_then(|path| self.read_whole(&path, max_each));
            if let Ok(contents) = &result {
                bytes += contents.data.len();
            }
            files.push(FileRead {
                name: name.to_vec(),
                result,
            });
        }
        Ok(Reply::Files(files))
    }

    /// Up to `max` bytes of the regular file at `path`, with its attributes
    /// when it was opened. The descriptor counts against the budget while open.
    fn read_whole(&self, path: &RelPath, max: usize) -> Result<FileContents, Errno> {
        let _descriptor = self.descriptors.take()?;
        let (file, attr) = self.export.open_file(path, libc::O_RDONLY)?;
        if attr.kind != FileKind::File {
            return Err(Errno::EISDIR);
        }
        let data = file.read_at(0, max)?;
        Ok(FileContents { attr, data })
    }

    /// Creates (or opens) the file at `path` and opens a handle on it: the
    /// next of the connection's, or `chosen` by the client (`CreateAs`).
    fn create(
        &self,
        path: &RelPath,
        flags: i32,
        mode: u32,
        chosen: Option<u64>,
    ) -> Result<Reply, Errno> {
        if let Some(handle) = chosen {
            // Checked before anything is made: a refused one leaves no file behind.
            self.handles.claim(handle)?;
        }
        let descriptor = self.descriptors.take()?;
        let (file, attr) = self.export.create(path, flags, mode)?;
        let id = NodeId::of(&attr);
        let handle = match chosen {
            Some(handle) => {
                self.handles.insert_as(handle, file, id, descriptor);
                handle
            }
            None => self.handles.insert(file, id, descriptor),
        };
        Ok(match self.dir_of(path) {
            Some(dir) => Reply::Created { handle, attr, dir },
            None => Reply::Opened { handle, attr },
        })
    }

    /// Carries out one request, as the identity its credential maps to.
    pub(crate) fn handle(&self, request: Request) -> Result<Reply, Errno> {
        let Request { cred, mut op, .. } = request;
        // A ping touches nothing: no identity to act as.
        if op == Op::Ping {
            return Ok(Reply::Done);
        }
        if self.policy.read_only && is_mutation(&op) {
            return Err(Errno::EROFS);
        }
        // The handshake said how much one request may carry.
        if matches!(&op, Op::Write { data, .. } if data.len() > MAX_CHUNK as usize) {
            return Err(Errno::EINVAL);
        }
        let admitted = self.policy.admit(&cred, &mut op)?;
        // The hooks look as the server itself: what they see goes into the
        // notices of what changed, never into an answer.
        let ticket = self.coherence.before(&op, &self.handles);
        let result = self.act_and_carry_out(op, &admitted.who, admitted.setid);
        self.coherence.after(ticket, &result, &self.handles);
        result
    }

    /// [`handle`](Self::handle) of a `Read`, but only if the page cache holds
    /// all it asks for: `None`, having done nothing, when it would have to wait
    /// for the disk (see [`crate::schedule::Schedule::InlineIfCached`]).
    pub(crate) fn read_cached(&self, request: &Request) -> Option<Result<Reply, Errno>> {
        let Op::Read {
            handle,
            offset,
            len,
        } = request.op
        else {
            return None;
        };
        let mut op = request.op.clone();
        // Admitted as `handle` would; a read acts as no one (see
        // `act_and_carry_out`).
        if let Err(e) = self.policy.admit(&request.cred, &mut op) {
            return Some(Err(e));
        }
        let file = match self.handles.get(handle) {
            Ok(file) => file,
            Err(e) => return Some(Err(e)),
        };
        let ticket = self.coherence.before(&op, &self.handles);
        let len = len.min(MAX_CHUNK) as usize;
        // A read that would wait drops its ticket unused: a read changes nothing.
        let result = file.read_cached(offset, len)?.map(Reply::Data);
        self.coherence.after(ticket, &result, &self.handles);
        Some(result)
    }

    fn act_and_carry_out(&self, op: Op, who: &Identity, setid: SetIdBits) -> Result<Reply, Errno> {
        // Reading an open descriptor is not checked against whoever reads:
        // its permissions were checked when it was opened. Acting as a user
        // costs eight credential changes, more than a read from the page cache.
        if matches!(op, Op::Read { .. }) {
            return self.carry_out(op, who, setid);
        }
        // Until dropped, on every way out of here, unwinding included.
        let _acting = self.export.act_as(who)?;
        self.carry_out(op, who, setid)
    }

    /// Carries out one operation, the thread acting as `who` already.
    fn carry_out(&self, op: Op, who: &Identity, setid: SetIdBits) -> Result<Reply, Errno> {
        let export = &*self.export;
        match op {
            Op::Stat { path } => export.stat(&path).map(Reply::Attr),
            Op::ReadDir { path, start } => {
                let (entries, more) = export.read_dir(&path, start, READDIR_PAGE)?;
                Ok(Reply::Entries { entries, more })
            }
            Op::List { path, cursor } => self.list(&path, cursor, who),
            Op::ReadLink { path } => export.read_link(&path).map(Reply::Target),
            Op::Open { path, flags } => {
                let descriptor = self.descriptors.take()?;
                let (file, attr) = export.open_file(&path, flags)?;
                let handle = self.handles.insert(file, NodeId::of(&attr), descriptor);
                Ok(Reply::Opened { handle, attr })
            }
            Op::ReadFiles {
                dir,
                names,
                max_each,
            } => self.read_files(&dir, &names, max_each),
            Op::OpenRead { path, flags, len } => {
                let descriptor = self.descriptors.take()?;
                let (file, attr) = export.open_file(&path, flags)?;
                let len = len.min(MAX_OPEN_DATA) as usize;
                // A read that fails leaves a plain open: the client's reads
                // then meet the error themselves, as they would have.
                let data = match attr.kind {
                    FileKind::File => file.read_at(0, len).ok(),
                    _ => None,
                };
                let handle = self.handles.insert(file, NodeId::of(&attr), descriptor);
                Ok(match data {
                    Some(data) => Reply::OpenedWithData { handle, attr, data },
                    None => Reply::Opened { handle, attr },
                })
            }
            Op::Create { path, flags, mode } => self.create(&path, flags, mode, None),
            Op::CreateAs {
                path,
                flags,
                mode,
                handle,
            } => self.create(&path, flags, mode, Some(handle)),
            Op::Read {
                handle,
                offset,
                len,
            } => {
                let len = len.min(MAX_CHUNK) as usize;
                self.handles
                    .get(handle)?
                    .read_at(offset, len)
                    .map(Reply::Data)
            }
            Op::Write {
                handle,
                offset,
                data,
            } => {
                let written = self.handles.get(handle)?.write_at(offset, &data);
                // Written: the buffer may take the next chunk read.
                frame::give_back(data);
                let written = written?;
                // A frame is far below 4 GiB, so this never saturates.
                Ok(Reply::Written(u32::try_from(written).unwrap_or(u32::MAX)))
            }
            Op::Fsync { handle, datasync } => {
                self.handles.get(handle)?.sync(datasync)?;
                Ok(Reply::Done)
            }
            Op::Close { handle } => {
                self.handles.remove(handle)?;
                self.locks.closed(handle);
                Ok(Reply::Done)
            }
            Op::SetAttr {
                path,
                handle,
                changes,
            } => match handle {
                Some(handle) => {
                    path.validate()?;
                    self.handles
                        .get(handle)?
                        .set_attr(&changes, setid)
                        .map(Reply::Attr)
                }
                None => export.set_attr(&path, &changes, setid).map(Reply::Attr),
            },
            Op::Mkdir { path, mode } => {
                let attr = export.mkdir(&path, mode)?;
                Ok(self.entry(&path, attr))
            }
            Op::Mknod { path, mode, rdev } => {
                let attr = export.mknod(&path, mode, rdev)?;
                Ok(self.entry(&path, attr))
            }
            Op::Symlink { path, target } => {
                let attr = export.symlink(&path, &target)?;
                Ok(self.entry(&path, attr))
            }
            Op::Link { existing, path } => {
                let attr = export.link(&existing, &path)?;
                Ok(self.entry(&path, attr))
            }
            Op::Unlink { path } => {
                export.unlink(&path)?;
                Ok(self.dirs_changed(&[&path]))
            }
            Op::Rmdir { path } => {
                export.rmdir(&path)?;
                Ok(self.dirs_changed(&[&path]))
            }
            Op::Rename { from, to, flags } => {
                export.rename(&from, &to, flags)?;
                Ok(self.dirs_changed(&[&from, &to]))
            }
            Op::StatFs => export.statfs().map(Reply::StatFs),
            Op::Ping => Ok(Reply::Done),
            Op::GetXattr { path, name } => export.get_xattr(&path, &name).map(Reply::Xattr),
            Op::ListXattr { path } => export
                .list_xattr(&path)
                .map(|names| Reply::Xattr(policy::visible_xattrs(names, who))),
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => export
                .set_xattr(&path, &name, &value, flags)
                .map(|()| Reply::Done),
            Op::RemoveXattr { path, name } => {
                export.remove_xattr(&path, &name).map(|()| Reply::Done)
            }
            Op::SetLock {
                handle,
                owner,
                kind,
                lock,
            } => {
                let file = self.handles.get(handle)?;
                // In the grace period after a restart only reclaims are
                // granted: the client waits and asks again.
                if lock.typ != LockType::Unlock && self.recovery.in_grace() {
                    return Err(Errno::new(libc::EAGAIN));
                }
                self.locks.set(&file, handle, owner, kind, lock)?;
                if lock.typ != LockType::Unlock {
                    self.took_lock();
                }
                Ok(Reply::Done)
            }
            Op::ReclaimLock {
                handle,
                owner,
                kind,
                lock,
            } => {
                if lock.typ == LockType::Unlock {
                    return Err(Errno::EINVAL);
                }
                let file = self.handles.get(handle)?;
                let key = LockKey::of(&file, kind, owner)?;
                let take = || self.locks.set(&file, handle, owner, kind, lock);
                self.recovery
                    .reclaim(self.client, &self.locks, key, handle, take)?;
                self.took_lock();
                Ok(Reply::Done)
            }
            Op::ReclaimComplete => {
                self.recovery.reclaim_complete(self.client);
                Ok(Reply::Done)
            }
            Op::GetLock {
                handle,
                owner,
                lock,
            } => {
                let file = self.handles.get(handle)?;
                self.locks.test(&file, owner, lock).map(Reply::LockConflict)
            }
            Op::ReleaseLocks { handle, owner } => {
                let file = self.handles.get(handle)?;
                self.locks.release(&file, owner).map(|()| Reply::Done)
            }
            Op::Fallocate {
                handle,
                offset,
                len,
                mode,
            } => {
                self.handles.get(handle)?.allocate(mode, offset, len)?;
                Ok(Reply::Done)
            }
            Op::CopyFileRange {
                handle_in,
                offset_in,
                handle_out,
                offset_out,
                len,
            } => {
                let input = self.handles.get(handle_in)?;
                let output = self.handles.get(handle_out)?;
                let copied = input.copy_to(offset_in, &output, offset_out, len.min(MAX_COPY))?;
                // MAX_COPY is far below 4 GiB, so this never saturates.
                Ok(Reply::Written(u32::try_from(copied).unwrap_or(u32::MAX)))
            }
            Op::Subscribe { lease_secs } => Ok(Reply::Subscribed {
                lease_secs: self.coherence.subscribe(lease_secs),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::proto::{AttrChanges, FileLock, LockKind, LockType};

    #[test]
    fn what_a_read_only_export_refuses() {
        let path = RelPath::parse("f").unwrap();
        let lock = FileLock {
            typ: LockType::Write,
            start: 0,
            end: 0,
        };
        let open = |flags| Op::Open {
            path: path.clone(),
            flags,
        };
        let reads = [
            Op::Stat { path: path.clone() },
            Op::ReadDir {
                path: path.clone(),
                start: 0,
            },
            Op::ReadLink { path: path.clone() },
            open(libc::O_RDONLY),
            open(libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOATIME),
            Op::OpenRead {
                path: path.clone(),
                flags: libc::O_RDONLY,
                len: 1,
            },
            Op::List {
                path: path.clone(),
                cursor: 0,
            },
            Op::Read {
                handle: 1,
                offset: 0,
                len: 1,
            },
            Op::Fsync {
                handle: 1,
                datasync: true,
            },
            Op::Close { handle: 1 },
            Op::StatFs,
            Op::Ping,
            Op::GetXattr {
                path: path.clone(),
                name: b"user.a".to_vec(),
            },
            Op::ListXattr { path: path.clone() },
            Op::SetLock {
                handle: 1,
                owner: 1,
                kind: LockKind::Flock,
                lock,
            },
            Op::GetLock {
                handle: 1,
                owner: 1,
                lock,
            },
            Op::ReleaseLocks {
                handle: 1,
                owner: 1,
            },
            Op::Subscribe { lease_secs: 60 },
            // No changes: the attributes of an open file (fstat).
            Op::SetAttr {
                path: path.clone(),
                handle: Some(1),
                changes: AttrChanges::default(),
            },
            Op::ReclaimLock {
                handle: 1,
                owner: 1,
                kind: LockKind::Posix,
                lock,
            },
            Op::ReclaimComplete,
            Op::ReadFiles {
                dir: path.clone(),
                names: Vec::new(),
                max_each: 1,
            },
        ];
        for op in &reads {
            assert!(!is_mutation(op), "{op:?}");
        }
        let changes = [
            open(libc::O_WRONLY),
            open(libc::O_RDWR),
            open(libc::O_RDONLY | libc::O_TRUNC),
            Op::OpenRead {
                path: path.clone(),
                flags: libc::O_WRONLY,
                len: 1,
            },
            Op::Create {
                path: path.clone(),
                flags: libc::O_RDONLY,
                mode: 0o644,
            },
            Op::CreateAs {
                path: path.clone(),
                flags: libc::O_RDONLY,
                mode: 0o644,
                handle: ferry_common::proto::CLIENT_HANDLE | 1,
            },
            Op::Write {
                handle: 1,
                offset: 0,
                data: Vec::new(),
            },
            Op::SetAttr {
                path: path.clone(),
                handle: None,
                changes: AttrChanges {
                    mode: Some(0o644),
                    ..AttrChanges::default()
                },
            },
            Op::Mkdir {
                path: path.clone(),
                mode: 0o755,
            },
            Op::Mknod {
                path: path.clone(),
                mode: libc::S_IFIFO | 0o644,
                rdev: 0,
            },
            Op::Symlink {
                path: path.clone(),
                target: b"t".to_vec(),
            },
            Op::Link {
                existing: path.clone(),
                path: path.clone(),
            },
            Op::Unlink { path: path.clone() },
            Op::Rmdir { path: path.clone() },
            Op::Rename {
                from: path.clone(),
                to: path.clone(),
                flags: 0,
            },
            Op::SetXattr {
                path: path.clone(),
                name: b"user.a".to_vec(),
                value: Vec::new(),
                flags: 0,
            },
            Op::RemoveXattr {
                path: path.clone(),
                name: b"user.a".to_vec(),
            },
            Op::Fallocate {
                handle: 1,
                offset: 0,
                len: 1,
                mode: 0,
            },
            Op::CopyFileRange {
                handle_in: 1,
                offset_in: 0,
                handle_out: 2,
                offset_out: 0,
                len: 1,
            },
        ];
        for op in &changes {
            assert!(is_mutation(op), "{op:?}");
        }
        let mut kinds: Vec<&str> = reads.iter().chain(&changes).map(Op::name).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(
            kinds.len(),
            ferry_common::counters::OP_KINDS,
            "every kind of Op is classified: {kinds:?}"
        );
    }
}
