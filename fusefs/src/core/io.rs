//! File I/O: open, read, write, flush, release, fsync, fallocate and
//! copy_file_range.
//!
//! Writes, and the attribute changes that follow them, are answered before the
//! server has (write-behind, see [`crate::writeback`]); their errors reach the
//! application at close or fsync. Anything that reads the file from the server
//! first waits for this mount's writes to it, so it never sees the file older
//! than the kernel does.

use super::names::{direct_io, writable};
use super::{Caller, Core, Done, Opened};
use crate::client::OpResult;
use crate::files::RemoteFile;
use crate::opened_data::Served;
use crate::windows;
use ferry_common::frame::MAX_CHUNK;
use ferry_common::proto::{AttrChanges, Op, Reply};
use ferry_common::sync::lock;
use ferry_common::Errno;
use std::time::Instant;

/// Whether writes through a file opened with `flags` must reach the server before
/// `write(2)` returns: an appending write lands wherever the server's end of file
/// is, which depends on the order of arrival, and a synchronous one promises the
/// disk.
fn writes_through(flags: i32) -> bool {
    flags & (libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC) != 0
}

/// Whether a write failed because the export (or the user's quota) is full.
fn out_of_space(e: Errno) -> bool {
    matches!(e.code(), libc::ENOSPC | libc::EDQUOT)
}

/// What an open for reading asks the server to send of the file: all of a
/// file up to this size...
pub(super) const WHOLE_FILE: u32 = 256 << 10;
/// ...and of a larger one (or one of unknown size), its start: the kernel's
/// first read of a file is rarely longer.
pub(super) const FIRST_BYTES: u32 = 128 << 10;

/// Whether an open with `flags` only reads, through the page cache: its first
/// bytes may come with it (see [`crate::opened_data`]). Not with `O_DIRECT`,
/// whose every read means to reach the file.
fn reads_only(flags: i32) -> bool {
    flags & libc::O_ACCMODE == libc::O_RDONLY && flags & (libc::O_TRUNC | libc::O_DIRECT) == 0
}

impl Core {
    /// Opens `ino` with the `open(2)` flags `flags`. An open for reading brings
    /// the file's first bytes along, for the reads that follow.
    pub fn open(&self, caller: &Caller, ino: u64, flags: i32, done: impl Done<Opened>) {
        // A name the server said was replaced or removed may still lead the
        // kernel here (its entry is being dropped): the name is opened for
        // what it names now (see below); if nothing, the kernel is to look it
        // up again.
        let path = {
            let inodes = lock(&self.inodes);
            inodes.path(ino).or_else(|| inodes.last_path(ino)).cloned()
        };
        let Some(path) = path else {
            return done(Err(Errno::new(libc::ESTALE)));
        };
        // The kernel gives the file the readahead its device has now.
        self.read_ahead.fit(self.stats.path_rtt());
        let reads_only = reads_only(flags);
        if !reads_only {
            // Writes (or a truncation) follow: bytes held for readers go stale.
            self.opened.changed(ino);
        }
        if flags & libc::O_TRUNC != 0 {
            // Truncating must not be overtaken by writes sent before it.
            self.writes.wait_idle(ino);
        }
        let epoch = match self.client.connected_epoch() {
            Ok(e) => e,
            Err(e) => return done(Err(e)),
        };
        let mark = self.writes.mark();
        let data_mark = self.opened.mark();
        // What the kernel was last told of the file (its size above all: the
        // kernel reads through its page cache no further).
        let told = self.attrs.fresh(ino).map(|(attr, _)| attr);
        // The server's copy lacks this mount's writes in flight: no bytes then.
        let quiet = reads_only && !self.writes.busy(ino);
        if quiet {
            if let Some(opened) = self.open_from_ahead(caller, ino, flags, told) {
                // A walk reads on: what it will open next is fetched.
                self.fetch_files_near(&caller.cred, &path);
                return done(Ok(opened));
            }
        }
        let want = if quiet {
            self.first_bytes_of(ino)
        } else {
            None
        };
        let walk = quiet.then(|| path.clone());
        let core = self.clone();
        let asked = Instant::now();
        let opener = caller.cred.clone();
        let op = match want {
            Some(len) => Op::OpenRead { path, flags, len },
            None => Op::Open { path, flags },
        };
        self.ask_about(Some(ino), Some(epoch), &caller.cred, op, move |r| {
            let (handle, attr, data) = match r {
                Ok(Reply::OpenedWithData { handle, attr, data }) => (handle, attr, Some(data)),
                Ok(Reply::Opened { handle, attr }) => (handle, attr, None),
                Ok(_) => return done(Err(Errno::EPROTO)),
                // The name was cached by the kernel but is gone on the server
                // (another client removed it): ESTALE makes the kernel look the
                // name up again and retry, as for NFS, so an O_CREAT open then
                // creates the file.
                Err(Errno::ENOENT) => return done(Err(Errno::new(libc::ESTALE))),
                Err(e) => return done(Err(e)),
            };
            // The path leads to another file than this inode now: the name
            // was replaced since the kernel looked it up (its entry not yet
            // dropped). The open stands — a name opens the file it names now,
            // as on a local disk — but the kernel's size and pages of this
            // inode are the old file's: the file is read uncached, and they go.
            let replaced = core.replaced(ino, &attr);
            // The same server file as far as its identity goes, but not as
            // the kernel was told: changed, or another file that got the
            // number the server's filesystem freed (a rename over it), before
            // the server's notice has reached the kernel. Its size there is
            // the old one, which a read through the cache would stop at.
            let stale = !replaced && told.is_some_and(|told| !told.same_content(&attr));
            if replaced || stale {
                log::debug!("inode {ino} was replaced or changed at its name; opened uncached");
                core.kernel.forget_inode(ino, true, Vec::new());
            }
            let uncached = replaced || stale;
            let fh = lock(&core.files).insert(RemoteFile {
                ino,
                flags,
                opener,
                handle,
                epoch,
            });
            if let (Some(data), Some(wanted)) = (data, want) {
                let eof = data.len() < wanted as usize || data.len() as u64 >= attr.size;
                core.opened.keep(fh, ino, data_mark, data, eof);
            }
            if writable(flags) {
                core.writes.opened_for_writing_since(ino, fh, &attr, mark);
            }
            if !reads_only {
                core.opened.changed(ino);
            }
            core.attrs.store(ino, attr, core.until(asked));
            // Close-to-open consistency: keep cached pages only when the file is
            // unchanged since it was last opened (or, under a lease, since the
            // server last said it changed).
            let keep_cache = {
                let mut inodes = lock(&core.inodes);
                inodes.add_handle(ino, fh);
                inodes.note_open(ino, &attr) && !uncached
            };
            if keep_cache {
                core.stats.page_cache.hit();
            } else {
                core.stats.page_cache.miss();
            }
            done(Ok(Opened {
                fh,
                keep_cache,
                direct_io: direct_io(flags) || uncached,
            }))
        });
        if let Some(path) = walk {
            // Sent behind the open: if a walk is reading this directory, its
            // next files are on their way.
            self.fetch_files_near(&caller.cred, &path);
        }
    }

    /// How much of `ino` an open for reading asks for (see [`WHOLE_FILE`]):
    /// nothing when the file looks unchanged since this mount last opened it,
    /// as the kernel then keeps the pages it has (close-to-open).
    fn first_bytes_of(&self, ino: u64) -> Option<u32> {
        match self.attrs.fresh(ino) {
            Some((attr, _)) if lock(&self.inodes).unchanged_since_opened(ino, &attr) => None,
            Some((attr, _)) if attr.size <= u64::from(WHOLE_FILE) => Some(WHOLE_FILE),
            _ => Some(FIRST_BYTES),
        }
    }

    /// Up to `size` bytes of `ino` at `offset`, through kernel handle `fh`:
    /// from the bytes its open brought, as far as they go, else from the server.
    pub fn read(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        done: impl Done<Vec<u8>>,
    ) {
        let size = size.min(MAX_CHUNK);
        // A file whose locks were lost answers nothing more, not even what
        // came with its open (see `reclaim`).
        if self.held.is_lost(fh) {
            return done(Err(Errno::EIO));
        }
        let head = match self.opened.read(fh, offset, size) {
            Served::Whole(data) => return done(Ok(data)),
            Served::Head(head) => head,
            Served::Nothing => Vec::new(),
        };
        // The server must not be asked before it has this mount's writes.
        self.writes.wait_idle(ino);
        // What the held bytes lack follows them.
        let offset = offset + head.len() as u64;
        let len = size - head.len() as u32;
        let read = |handle| Op::Read {
            handle,
            offset,
            len,
        };
        self.on_handle(fh, &caller.cred, read, move |r| match r {
            Ok(Reply::Data(data)) if head.is_empty() => done(Ok(data)),
            Ok(Reply::Data(data)) => {
                let mut whole = head;
                whole.extend_from_slice(&data);
                done(Ok(whole))
            }
            Ok(_) => done(Err(Errno::EPROTO)),
            Err(e) => done(Err(e)),
        });
    }

    /// Writes `data` at `offset` of `ino` through kernel handle `fh`, opened
    /// with `flags`. `kill_suidgid`: the writer lacks CAP_FSETID, so setuid and
    /// setgid go (the kernel leaves that to us, `FUSE_HANDLE_KILLPRIV_V2`).
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        flags: i32,
        kill_suidgid: bool,
        done: impl Done<u32>,
    ) {
        let len = data.len();
        // Dropped after the write and through the same handle.
        let kill = kill_suidgid && self.writes.must_kill_suidgid(ino, fh);
        let space = self.space.before_write(len);
        if space.ask {
            self.ask_free_space(&caller.cred);
        }
        // On an export that may be full, the application hears ENOSPC from
        // write(2) itself, as from a local disk (see `crate::space`).
        let through = writes_through(flags) || !self.writes.is_writer(ino, fh) || space.through;
        if through {
            // An appending write lands at the server's end of file: every write
            // before it, through any handle, must be there first.
            self.writes.wait_idle(ino);
        }
        // Fails at once (rather than at close) when the server is unreachable.
        let (epoch, handle) = match self.server_handle(fh) {
            Ok(h) => h,
            Err(e) => return done(Err(e)),
        };
        let window = windows::write_window(self.stats.path_rtt());
        let ticket = self.writes.begin_write(ino, fh, offset, len, window);
        // Registered first: an open for reading sent from now on either sees the
        // write in flight or hears of it (see `crate::opened_data`).
        self.opened.changed(ino);
        self.changes.begin();
        let written = |r: OpResult| match r {
            Ok(Reply::Written(n)) => Ok(n),
            Ok(_) => Err(Errno::EPROTO),
            Err(e) => Err(e),
        };
        let core = self.clone();
        if through {
            self.stats.waited_for(&Op::Write {
                handle,
                offset,
                data: Vec::new(),
            });
            self.client
                .submit_write_in(epoch, &caller.cred, handle, offset, data, move |r| {
                    core.writes.finish(ticket, Ok(None));
                    let r = written(r);
                    if matches!(r, Err(e) if out_of_space(e)) {
                        core.space.full();
                    }
                    core.opened.changed(ino);
                    core.changes.end();
                    done(r)
                });
        } else {
            // Write-behind: the kernel hears of success now, of a failure at
            // flush or fsync.
            self.client
                .submit_write_in(epoch, &caller.cred, handle, offset, data, move |r| {
                    let result = match written(r) {
                        Ok(n) if n as usize == len => Ok(None),
                        // A short write on a local disk means it is full.
                        Ok(_) => Err(Errno::ENOSPC),
                        Err(e) => Err(e),
                    };
                    if matches!(result, Err(e) if out_of_space(e)) {
                        core.space.full();
                    }
                    core.writes.finish(ticket, result);
                    core.opened.changed(ino);
                    core.changes.end();
                });
            done(Ok(u32::try_from(len).unwrap_or(u32::MAX)));
        }
        if kill {
            let changes = AttrChanges {
                kill_suidgid: true,
                ..AttrChanges::default()
            };
            // A squashed caller writes as an ordinary user on the server, whose
            // kernel drops the bits with the write.
            if self.checked_alike(caller)
                && self.defer_setattr(caller, ino, Some(fh), changes).is_none()
            {
                log::warn!("could not drop setuid/setgid of inode {ino} after a write");
            }
            // The kernel still holds the old mode.
            self.kernel.forget_inode(ino, false, Vec::new());
        }
    }

    /// Learns how much room the export has, before the first write (so that
    /// a mount of a full export refuses even its first write): one round
    /// trip when the mount starts. Without an answer, writes go through
    /// until one comes.
    pub(super) fn learn_free_space(&self) {
        if self.opts.write_through_below == 0 {
            return;
        }
        match self.client.call(&crate::creds::own(), Op::StatFs) {
            Ok(Reply::StatFs(s)) => self.space.told(&s),
            Ok(_) => log::debug!("the server answered statfs with something else"),
            Err(e) => log::debug!("cannot learn the export's free space: {e}"),
        }
    }

    /// Asks the server how much room its export has left, for
    /// [`crate::space`]; nothing waits for the answer.
    fn ask_free_space(&self, cred: &ferry_common::proto::Cred) {
        let core = self.clone();
        self.client.submit(cred, Op::StatFs, move |r| match r {
            Ok(Reply::StatFs(s)) => core.space.told(&s),
            _ => core.space.not_told(),
        });
    }

    /// close(2) of a descriptor of `ino` (one of possibly several per handle):
    /// where write-behind owes the application its errors. Then the closer's
    /// POSIX locks go, once what was written under them is on the server
    /// (through any handle: locks belong to the process).
    pub fn flush(&self, caller: &Caller, ino: u64, fh: u64, lock_owner: u64, done: impl Done<()>) {
        let settled = match self.behind.made_in(fh) {
            // Created behind: its close does not wait for its writes (see
            // `create_behind`); a failure they meet later is kept at release.
            Some(_) => self.writes.take_error(ino, fh),
            None => self.writes.settle(ino, fh),
        };
        // Its creation, or a removal of one of its names, sent behind, failed
        // (see `behind`): that comes first (writes through the handle of a
        // file never created failed for that reason).
        let mut written = match self.behind.take_file_error(ino) {
            Some(e) => Err(e),
            None => settled,
        };
        // A file whose locks were lost says so when it is closed, too.
        if written.is_ok() && self.held.is_lost(fh) {
            written = Err(Errno::EIO);
        }
        self.release_posix_locks(caller, ino, fh, lock_owner, move || done(written));
    }

    /// The kernel's last reference to handle `fh` of `ino` went. Release errors
    /// go nowhere (close(2) has returned), so this does not wait for the server.
    /// Changes still in flight through this handle reach the server before its
    /// Close does: the server runs a handle's requests in order.
    pub fn release(&self, caller: &Caller, ino: u64, fh: u64) {
        self.opened.release(fh);
        lock(&self.inodes).remove_handle(ino, fh);
        self.held.released(ino, fh);
        if let Some(dir) = self.behind.unmade(fh) {
            // Its close did not wait for its writes: this does, and keeps
            // what failed for the next fsync of the file or the directory.
            if self.writes.is_writer(ino, fh) {
                if let Err(e) = self.writes.drain(ino, fh) {
                    log::warn!(
                        "a write to a file created behind failed after its close ({e}); \
                         reported by the next fsync of the file or its directory"
                    );
                    self.behind.record(dir, ino, e);
                }
            }
        }
        if self.writes.is_writer(ino, fh) {
            // What the server says now differs from what the kernel was last told.
            self.attrs.drop_ino(ino);
        }
        self.writes.released(ino, fh);
        let file = lock(&self.files).remove(fh);
        // A handle of a connection that is gone was closed with it.
        if let Some(file) = file.filter(|f| self.client.current_epoch() == Some(f.epoch)) {
            let close = Op::Close {
                handle: file.handle,
            };
            self.client.submit_in(file.epoch, &caller.cred, close, |r| {
                if let Err(e) = r {
                    log::debug!("closing a remote file: {e}");
                }
            });
        }
    }

    /// fsync(2) or fdatasync(2) through `fh`: the data reaches the server's disk.
    pub fn fsync(&self, caller: &Caller, ino: u64, fh: u64, datasync: bool, done: impl Done<()>) {
        // Errors go to the handles that were writing; a read-only one only
        // waits. A failure behind comes first (see `flush`).
        let settled = self.writes.settle(ino, fh);
        if let Some(e) = self.behind.take_file_error(ino) {
            return done(Err(e));
        }
        if let Err(e) = settled {
            return done(Err(e));
        }
        let fsync = |handle| Op::Fsync { handle, datasync };
        self.on_handle(fh, &caller.cred, fsync, move |r| done(r.map(|_| ())));
    }

    /// fallocate(2) on the server's file (modes 0, keep-size, punch-hole, zero-range).
    #[allow(clippy::too_many_arguments)]
    pub fn fallocate(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        done: impl Done<()>,
    ) {
        // Writes still in flight land first, as they would on a local disk.
        self.writes.wait_idle(ino);
        self.opened.changed(ino);
        let fallocate = |handle| Op::Fallocate {
            handle,
            offset,
            len,
            mode,
        };
        let core = self.clone();
        self.on_handle(fh, &caller.cred, fallocate, move |r| {
            // The size (mode 0) and ctime changed on the server.
            core.opened.changed(ino);
            core.writes.doubt(ino);
            core.attrs.drop_ino(ino);
            done(r.map(|_| ()))
        });
    }

    /// Copies up to `len` bytes between two open files on the server, so the
    /// data never crosses the network; answers how many were copied.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &self,
        caller: &Caller,
        ino_in: u64,
        fh_in: u64,
        offset_in: u64,
        ino_out: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
        done: impl Done<u32>,
    ) {
        // The server copies what it has: writes in flight to either file land
        // first. (Their errors stay for close and fsync to report.)
        for ino in [ino_in, ino_out] {
            self.writes.wait_idle(ino);
        }
        // Both handles must belong to one connection; after a reconnect between
        // the two look-ups, the first is looked up (re-opened) again.
        let handles = || -> Result<(u64, u64, u64), Errno> {
            let (epoch_in, handle_in) = self.server_handle(fh_in)?;
            let (epoch_out, handle_out) = self.server_handle(fh_out)?;
            if epoch_in == epoch_out {
                return Ok((epoch_in, handle_in, handle_out));
            }
            match self.server_handle(fh_in)? {
                (epoch, handle_in) if epoch == epoch_out => Ok((epoch, handle_in, handle_out)),
                _ => Err(Errno::EIO),
            }
        };
        let (epoch, handle_in, handle_out) = match handles() {
            Ok(h) => h,
            Err(e) => return done(Err(e)),
        };
        self.opened.changed(ino_out);
        let op = Op::CopyFileRange {
            handle_in,
            offset_in,
            handle_out,
            offset_out,
            len,
        };
        let core = self.clone();
        self.ask(Some(epoch), &caller.cred, op, move |r| {
            // The output's data, size and times changed on the server.
            core.opened.changed(ino_out);
            core.writes.doubt(ino_out);
            core.attrs.drop_ino(ino_out);
            match r {
                Ok(Reply::Written(n)) => done(Ok(n)),
                Ok(_) => done(Err(Errno::EPROTO)),
                Err(e) => done(Err(e)),
            }
        });
    }
}
