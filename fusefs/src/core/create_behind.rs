//! Creating a file without waiting, under a directory lease.
//!
//! Where a removal may go behind (see [`super::behind`]: the directory is
//! leased, the caller is not squashed, the mount is writable, the connection
//! that holds the lease is up), so may the creation of a file whose name is
//! known to be absent: the kernel hears at once, and the server is sent
//! `CreateAs`, which opens the new file under a handle this mount chose
//! (with [`CLIENT_HANDLE`]), so that writes, setattrs and the close through
//! it go right behind the create on the same connection, where the server
//! applies them in order.
//!
//! What the kernel is told until the server answers:
//!
//! - a number of the mount's own for the file ([`InodeTable::remember_unbound`]),
//!   bound to the server's identity when the answer comes, so `st_ino` never
//!   changes while the mount lives;
//! - attributes that are this mount's best guess (a regular file, the mode
//!   asked for, owned by the caller — the directory's group if it is
//!   set-group-id —, empty, its times now), with a timeout of zero, so the
//!   kernel asks again, and what it gets then is the server's truth: the
//!   stat is sent after the create on the same connection;
//! - the name is among the directory's known names at once.
//!
//! A failure is kept as a removal's is ([`super::behind`]): returned by the
//! close of the file if it is known by then, else by the next `fsync` of the
//! file or of its directory, once; a request whose connection broke is EIO.
//! The name is then forgotten, so it is asked of the server again.
//!
//! Nor does the close of such a file wait for its writes to be answered (an
//! untar would wait a round trip per file): it returns a failure already
//! known; one that comes later is kept, once the kernel releases the file
//! (its release waits for them), for the next `fsync` of the file or of its
//! directory. Other clients may therefore open the file before its data has
//! landed — as they may before the create itself has.
//!
//! [`CLIENT_HANDLE`]: ferry_common::proto::CLIENT_HANDLE
//! [`InodeTable::remember_unbound`]: crate::inode::InodeTable::remember_unbound

use super::behind::reported;
use super::names::{direct_io, writable};
use super::{Caller, Core, Done, Entry, Opened};
use crate::files::RemoteFile;
use ferry_common::proto::{Op, Reply};
use ferry_common::sync::lock;
use ferry_common::{Attr, Errno, FileKind, RelPath, Timestamp};
use std::ffi::OsStr;
use std::time::{Duration, Instant, SystemTime};

/// A create that may be sent behind.
#[derive(Debug)]
pub(super) struct Creation {
    /// The connection that holds the lease: it goes on that one or fails.
    epoch: u64,
    path: RelPath,
}

impl Core {
    /// The creation of `name` in `parent`, if it may go behind (see the
    /// module docs).
    pub(super) fn may_create_behind(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
    ) -> Option<Creation> {
        if self.opts.read_only
            || !self.checked_alike(caller)
            || !self.dir_leased(parent)
            || self.known.absent(parent, name).is_none()
        {
            return None;
        }
        let path = self.child(parent, name).ok()?;
        let epoch = self.client.current_epoch()?;
        Some(Creation { epoch, path })
    }

    /// Carries out `creation` of the file `name` in `parent`, sent behind:
    /// the kernel hears of it now.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_behind(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        creation: Creation,
        done: impl Done<(Entry, Opened)>,
    ) {
        let Creation { epoch, path } = creation;
        let handle = self.behind.choose_handle();
        let guess = self.guess_new_file(caller, parent, mode);
        self.known.add(parent, name);
        let (ino, generation, fh) = {
            let mut inodes = lock(&self.inodes);
            let ino = inodes.remember_unbound(&path, &guess);
            let fh = lock(&self.files).insert(RemoteFile {
                ino,
                flags,
                opener: caller.cred.clone(),
                handle,
                epoch,
            });
            inodes.add_handle(ino, fh);
            (ino, inodes.generation(ino), fh)
        };
        if writable(flags) {
            self.writes.opened_for_writing(ino, fh, &guess);
        }
        self.behind.made(fh, parent);
        self.file_caps
            .note_new_file(ino, self.until(Instant::now()));
        // Counted first: whoever reads the projection sees it counted.
        self.behind.begin(parent);
        self.project_name_change(parent, 0);
        let op = Op::CreateAs {
            path: path.clone(),
            flags,
            mode,
            handle,
        };
        let core = self.clone();
        let name = name.to_os_string();
        let asked = Instant::now();
        self.client.submit_in(epoch, &caller.cred, op, move |r| {
            let result = match r {
                Ok(Reply::Created { attr, dir, .. }) => {
                    core.bind_created(ino, attr, asked);
                    core.settle_projection(parent, &[dir], asked);
                    Ok(())
                }
                Ok(Reply::Opened { attr, .. }) => {
                    core.bind_created(ino, attr, asked);
                    core.settle_projection(parent, &[], asked);
                    Ok(())
                }
                Ok(_) => Err(Errno::EPROTO),
                Err(e) => Err(reported(e)),
            };
            if let Err(e) = result {
                log::warn!(
                    "creating {path:?} failed on the server after it was answered ({e}); \
                     reported by the file's close or next fsync, or its directory's"
                );
                // Whatever the server has now is asked of it again.
                lock(&core.inodes).lose(&path);
                core.attrs.drop_ino(ino);
                core.forget_name_behind(parent, &name);
            }
            core.behind.end(parent, Some(ino), result);
        });
        // Not a change under way that every listing must wait out: one asked
        // for from now on goes after it and shows it.
        self.changes.sent_in_order();
        let entry = Entry {
            ino,
            generation,
            attr: guess,
            // The kernel asks again, and hears the server's truth.
            ttl: Duration::ZERO,
        };
        let opened = Opened {
            fh,
            keep_cache: false,
            direct_io: direct_io(flags),
        };
        done(Ok((entry, opened)))
    }

    /// What a new file made by `caller` in `parent` with `mode` looks like,
    /// as far as this mount can tell before the server says.
    fn guess_new_file(&self, caller: &Caller, parent: u64, mode: u32) -> Attr {
        let now = Timestamp::from_system_time(SystemTime::now());
        let mut attr = Attr::blank(FileKind::File);
        attr.perm = (mode & 0o7777) as u16;
        attr.uid = caller.cred.uid;
        attr.gid = caller.cred.gid;
        if let Some((dir, _)) = self.attrs.fresh(parent) {
            if u32::from(dir.perm) & libc::S_ISGID != 0 {
                attr.gid = dir.gid;
            }
        }
        attr.atime = now;
        attr.mtime = now;
        attr.ctime = now;
        attr.blksize = 4096;
        attr
    }

    /// The server created the file numbered `ino`: it is `attr`.
    fn bind_created(&self, ino: u64, attr: Attr, asked: Instant) {
        let mut inodes = lock(&self.inodes);
        inodes.bind(ino, &attr);
        inodes.note_open(ino, &attr);
        self.attrs.store(ino, attr, self.until(asked));
    }
}
