//! Names: looking them up, making and removing them, moving them.
//!
//! Every entry handed to the kernel counts one lookup in the inode table, and
//! is counted only once the answer is in hand (see [`crate::inode`]). Local
//! state (the inode table, cached attributes, known directories) is updated
//! before the kernel hears of the answer, so a request the kernel sends next
//! already sees it.

use super::{Caller, Core, Done, Entry, Lookup, Opened};
use crate::client::OpResult;
use crate::files::RemoteFile;
use crate::inode::InodeTable;
use ferry_common::proto::{Cred, Op, Reply};
use ferry_common::sync::lock;
use ferry_common::{Errno, RelPath};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

/// Whether a file opened with `flags` may be written to.
pub(super) fn writable(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// Whether a file opened with `flags` bypasses the page cache. Through the cache
/// the kernel splits a write that starts in a partly cached page into one
/// request per page, and each request would be a separate append on the server,
/// where another client's append can land in between. Uncached, every write(2)
/// up to 1 MiB is one append (the server's descriptor has `O_APPEND`, so it lands
/// at the real end of the file whatever this client believes the size to be).
pub(super) fn direct_io(flags: i32) -> bool {
    flags & libc::O_APPEND != 0
}

impl Core {
    /// The entry `name` in `parent`.
    pub fn lookup(&self, caller: &Caller, parent: u64, name: &OsStr, done: impl Done<Lookup>) {
        if let Some(left) = self.known.absent(parent, name) {
            self.stats.absent_names.hit();
            let ttl = self.negative(parent, name, Instant::now() + left);
            return done(Ok(Lookup::Missing(ttl)));
        }
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return done(Err(e)),
        };
        if let Some(entry) = self.listed_entry(caller, parent, &path, name) {
            return done(Ok(Lookup::Found(entry)));
        }
        let op = Op::Stat { path: path.clone() };
        let core = self.clone();
        let name = name.to_os_string();
        let asked = Instant::now();
        self.entry_op(&caller.cred, path.clone(), op, move |r| match r {
            Ok(entry) => done(Ok(Lookup::Found(entry))),
            // A name that does not exist is remembered by the kernel as a
            // negative entry for as long as a positive one would be: compilers,
            // git and shells look for the same missing files again and again.
            Err(Errno::ENOENT) => {
                core.stats.absent_names.miss();
                // The name is gone (another client removed or moved it).
                lock(&core.inodes).lose(&path);
                done(Ok(core.missing(parent, &name, asked)))
            }
            Err(e) => done(Err(e)),
        });
    }

    /// The entry for `name` in `parent` (whose path is `path`) that a recent
    /// listing of `parent` gives, trusted for what is left of the attribute
    /// timeout since it was asked for (see [`crate::listing_ahead`]).
    fn listed_entry(
        &self,
        caller: &Caller,
        parent: u64,
        path: &RelPath,
        name: &OsStr,
    ) -> Option<Entry> {
        let (dir, _) = path.split_last()?;
        let id = lock(&self.inodes).file_id(parent)?;
        let (attr, asked) = self.ahead.lookup(&caller.cred, &dir, id, name.as_bytes())?;
        let (ino, generation) = self.hand_out(path, &attr);
        self.attrs.store(ino, attr, asked + self.ttl());
        let attr = self.writes.overlay(ino, attr, None);
        self.stats.listed_names.hit();
        Some(Entry {
            ino,
            generation,
            attr,
            ttl: self.ttl().saturating_sub(asked.elapsed()),
        })
    }

    /// The kernel dropped `nlookup` references to `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        log::trace!("forget inode {ino} by {nlookup}");
        if lock(&self.inodes).forget(ino, nlookup) {
            self.drop_cached(ino);
        }
    }

    pub fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        done: impl Done<Entry>,
    ) {
        self.new_entry(&caller.cred, parent, name, done, |path| Op::Mknod {
            path,
            mode,
            rdev: u64::from(rdev),
        });
    }

    pub fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        done: impl Done<Entry>,
    ) {
        self.new_entry(&caller.cred, parent, name, done, |path| Op::Mkdir {
            path,
            mode,
        });
    }

    pub fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        target: &Path,
        done: impl Done<Entry>,
    ) {
        let target = target.as_os_str().as_bytes().to_vec();
        self.new_entry(&caller.cred, parent, name, done, |path| Op::Symlink {
            path,
            target,
        });
    }

    /// A hard link `newname` in `newparent` to `ino`.
    pub fn link(
        &self,
        caller: &Caller,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        done: impl Done<Entry>,
    ) {
        match (self.path_of(ino), self.child(newparent, newname)) {
            (Ok(existing), Ok(path)) => {
                self.known.add(newparent, newname);
                let done = self.confirm_name(newparent, done);
                let op = Op::Link {
                    existing,
                    path: path.clone(),
                };
                self.entry_op(&caller.cred, path, op, done)
            }
            (Err(e), _) | (_, Err(e)) => done(Err(e)),
        }
    }

    /// `done`, after forgetting the names of `dir` when a name added there
    /// before asking the server may not exist after all (the request failed
    /// for any reason but "it exists").
    fn confirm_name<T: Send + 'static>(&self, dir: u64, done: impl Done<T>) -> impl Done<T> {
        let core = self.clone();
        move |r: Result<T, Errno>| {
            if r.as_ref().is_err_and(|e| *e != Errno::EEXIST) {
                core.known.forget(dir);
            }
            done(r)
        }
    }

    /// Under a directory lease, answered at once and sent behind (see
    /// [`super::behind`]).
    pub fn unlink(&self, caller: &Caller, parent: u64, name: &OsStr, done: impl Done<()>) {
        if let Some(removal) = self.may_remove_behind(caller, parent, name, false) {
            return self.remove_behind(caller, parent, name, removal, done);
        }
        self.remove(&caller.cred, parent, name, done, |path| Op::Unlink { path });
    }

    /// Like [`unlink`](Self::unlink), for an empty directory.
    pub fn rmdir(&self, caller: &Caller, parent: u64, name: &OsStr, done: impl Done<()>) {
        if let Some(removal) = self.may_remove_behind(caller, parent, name, true) {
            return self.remove_behind(caller, parent, name, removal, done);
        }
        self.remove(&caller.cred, parent, name, done, |path| Op::Rmdir { path });
    }

    /// `done`, after taking `name` out of the names known of `dir` once the
    /// server confirmed it is gone.
    fn name_gone(&self, dir: u64, name: &OsStr, done: impl Done<()>) -> impl Done<()> {
        let core = self.clone();
        let name = name.to_os_string();
        move |r: Result<(), Errno>| {
            if r.is_ok() {
                core.known.remove(dir, &name);
            }
            done(r)
        }
    }

    /// `renameat2` with its flags (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        done: impl Done<()>,
    ) {
        let (from, to) = match (self.child(parent, name), self.child(newparent, newname)) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(e), _) | (_, Err(e)) => return done(Err(e)),
        };
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        self.known.add(newparent, newname);
        let done = self.confirm_name(newparent, done);
        let done = if exchange {
            // Both names stay.
            Box::new(done) as Box<dyn FnOnce(Result<(), Errno>) + Send>
        } else {
            Box::new(self.name_gone(parent, name, done))
        };
        let op = Op::Rename {
            from: from.clone(),
            to: to.clone(),
            flags,
        };
        let changed = vec![(from.clone(), false), (to.clone(), !exchange)];
        self.name_op(&caller.cred, op, changed, done, move |t| {
            if exchange {
                t.exchange(&from, &to)
            } else {
                t.rename(&from, &to)
            }
        });
    }

    /// The text of the symlink `ino`.
    pub fn readlink(&self, caller: &Caller, ino: u64, done: impl Done<Vec<u8>>) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return done(Err(e)),
        };
        self.ask(
            None,
            &caller.cred,
            Op::ReadLink { path },
            move |r| match r {
                Ok(Reply::Target(t)) => done(Ok(t)),
                Ok(_) => done(Err(Errno::EPROTO)),
                Err(e) => done(Err(e)),
            },
        );
    }

    /// Creates (or, without `O_EXCL`, opens) the file `name` in `parent`;
    /// under a directory lease, without waiting (see [`super::create_behind`]).
    pub fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        done: impl Done<(Entry, Opened)>,
    ) {
        // Under a lease, an exclusive create of a name the directory holds
        // fails here, as the server would fail it.
        if flags & libc::O_EXCL != 0 && self.dir_leased(parent) && self.known.has(parent, name) {
            return done(Err(Errno::EEXIST));
        }
        if let Some(creation) = self.may_create_behind(caller, parent, name) {
            return self.create_behind(caller, parent, name, mode, flags, creation, done);
        }
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return done(Err(e)),
        };
        let epoch = match self.client.connected_epoch() {
            Ok(e) => e,
            Err(e) => return done(Err(e)),
        };
        self.known.add(parent, name);
        let done = self.confirm_name(parent, done);
        // The name may be a file this mount is writing (O_CREAT of an existing
        // name, maybe with O_TRUNC): what was sent before comes first.
        let existing = lock(&self.inodes).ino_of(&path);
        if let Some(ino) = existing {
            self.writes.wait_idle(ino);
            self.opened.changed(ino);
        }
        let op = Op::Create {
            path: path.clone(),
            flags,
            mode,
        };
        let core = self.clone();
        let asked = Instant::now();
        let opener = caller.cred.clone();
        self.ask(Some(epoch), &caller.cred, op, move |r: OpResult| {
            let (handle, attr) = match r.as_ref().map(Reply::opened) {
                Ok(Some(opened)) => opened,
                Ok(None) => return done(Err(Errno::EPROTO)),
                Err(e) => return done(Err(*e)),
            };
            if let Ok(Reply::Created { dir, .. }) = &r {
                core.note_dirs(&[*dir], asked);
            }
            let until = core.until(asked);
            let (ino, generation) = core.hand_out(&path, &attr);
            let fh = {
                let mut inodes = lock(&core.inodes);
                core.attrs.store(ino, attr, until);
                inodes.note_open(ino, &attr);
                let fh = lock(&core.files).insert(RemoteFile {
                    ino,
                    flags,
                    opener,
                    handle,
                    epoch,
                });
                inodes.add_handle(ino, fh);
                fh
            };
            if writable(flags) {
                core.writes.opened_for_writing(ino, fh, &attr);
            }
            // An existing file opened this way may have been truncated.
            core.opened.changed(ino);
            core.file_caps.note_new_file(ino, until);
            let entry = Entry {
                ino,
                generation,
                attr,
                ttl: core.ttl_since(asked),
            };
            let opened = Opened {
                fh,
                keep_cache: false,
                direct_io: direct_io(flags),
            };
            done(Ok((entry, opened)))
        });
    }

    /// Creates the entry `name` in `parent` with the operation `make_op` builds
    /// from its path.
    fn new_entry(
        &self,
        cred: &Cred,
        parent: u64,
        name: &OsStr,
        done: impl Done<Entry>,
        make_op: impl FnOnce(RelPath) -> Op,
    ) {
        match self.child(parent, name) {
            Ok(path) => {
                // Before the server has it, so no lookup can miss it.
                self.known.add(parent, name);
                let done = self.confirm_name(parent, done);
                let op = make_op(path.clone());
                self.entry_op(cred, path, op, done)
            }
            Err(e) => done(Err(e)),
        }
    }

    /// Sends an operation whose answer is an entry for `path` (lookup, mkdir,
    /// symlink, ...): the inode is counted only once the answer is in.
    fn entry_op(&self, cred: &Cred, path: RelPath, op: Op, done: impl Done<Entry>) {
        // A directory made here is known to be empty.
        let made_dir = matches!(op, Op::Mkdir { .. });
        let is_link = matches!(op, Op::Link { .. });
        let mark = self.writes.mark();
        let asked = Instant::now();
        let core = self.clone();
        self.ask(None, cred, op, move |r| {
            let reply = match r {
                Ok(reply) => reply,
                Err(e) => {
                    log::trace!("entry {path:?}: {e}");
                    return done(Err(e));
                }
            };
            let Some(attr) = reply.attr() else {
                return done(Err(Errno::EPROTO));
            };
            if let Reply::Entry { dir, .. } = reply {
                core.note_dirs(&[dir], asked);
            }
            let until = core.until(asked);
            let (ino, generation) = core.hand_out(&path, &attr);
            core.attrs.store(ino, attr, until);
            if is_link {
                // A file being written has one more name.
                core.writes.links_changed(ino, Some(attr.nlink));
            }
            let attr = core.writes.overlay(ino, attr, Some(mark));
            if made_dir {
                core.known.learn(ino, until, []);
            }
            log::trace!("entry {path:?} is inode {ino}");
            done(Ok(Entry {
                ino,
                generation,
                attr,
                ttl: core.ttl_since(asked),
            }))
        });
    }

    /// Removes `name` from `parent` with the operation `make_op` builds.
    fn remove(
        &self,
        cred: &Cred,
        parent: u64,
        name: &OsStr,
        done: impl Done<()>,
        make_op: impl FnOnce(RelPath) -> Op,
    ) {
        match self.child(parent, name) {
            Ok(path) => {
                let op = make_op(path.clone());
                let done = self.name_gone(parent, name, done);
                self.name_op(cred, op, vec![(path.clone(), true)], done, move |t| {
                    t.detach(&path)
                })
            }
            Err(e) => done(Err(e)),
        }
    }

    /// Sends an operation on names answered with success or an errno;
    /// `on_success` updates the inode table before the kernel hears of it. The
    /// cached attributes of the nodes at `changed` (their ctime changes, and
    /// their link count where the flag says they lose a name) are dropped, and
    /// the projection of a file being written is corrected.
    pub(super) fn name_op(
        &self,
        cred: &Cred,
        op: Op,
        changed: Vec<(RelPath, bool)>,
        done: impl Done<()>,
        on_success: impl FnOnce(&mut InodeTable) + Send + 'static,
    ) {
        let core = self.clone();
        let asked = Instant::now();
        self.ask(None, cred, op, move |r| match r {
            Ok(answer) => {
                for (path, loses_link) in &changed {
                    let ino = lock(&core.inodes).ino_of(path);
                    if let Some(ino) = ino {
                        core.attrs.drop_ino(ino);
                        if *loses_link {
                            core.writes.links_changed(ino, None);
                        } else {
                            core.writes.doubt(ino);
                        }
                    }
                }
                on_success(&mut lock(&core.inodes));
                if let Reply::DirsChanged(dirs) = answer {
                    core.note_dirs(&dirs, asked);
                }
                done(Ok(()))
            }
            Err(e) => done(Err(e)),
        });
    }
}
