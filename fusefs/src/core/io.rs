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
use ferry_common::frame::MAX_CHUNK;
use ferry_common::proto::{AttrChanges, Op, Reply};
use ferry_common::sync::lock;
use ferry_common::Errno;

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

impl Core {
    /// Opens `ino` with the `open(2)` flags `flags`.
    pub fn open(&self, caller: &Caller, ino: u64, flags: i32, done: impl Done<Opened>) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return done(Err(e)),
        };
        if flags & libc::O_TRUNC != 0 {
            // Truncating must not be overtaken by writes sent before it.
            self.writes.wait_idle(ino);
        }
        let epoch = match self.client.connected_epoch() {
            Ok(e) => e,
            Err(e) => return done(Err(e)),
        };
        let mark = self.writes.mark();
        let core = self.clone();
        let opener = caller.cred.clone();
        let op = Op::Open { path, flags };
        self.ask(Some(epoch), &caller.cred, op, move |r| {
            let (handle, attr) = match r.map(|reply| reply.opened()) {
                Ok(Some(opened)) => opened,
                Ok(None) => return done(Err(Errno::EPROTO)),
                // The name was cached by the kernel but is gone on the server
                // (another client removed it): ESTALE makes the kernel look the
                // name up again and retry, as for NFS, so an O_CREAT open then
                // creates the file.
                Err(Errno::ENOENT) => return done(Err(Errno::new(libc::ESTALE))),
                Err(e) => return done(Err(e)),
            };
            let fh = lock(&core.files).insert(RemoteFile {
                ino,
                flags,
                opener,
                handle,
                epoch,
            });
            if writable(flags) {
                core.writes.opened_for_writing_since(ino, fh, &attr, mark);
            }
            core.attrs.store(ino, attr);
            // Close-to-open consistency: keep cached pages only when the file is
            // unchanged since it was last opened.
            let keep_cache = {
                let mut inodes = lock(&core.inodes);
                inodes.add_handle(ino, fh);
                inodes.note_open(ino, &attr)
            };
            if keep_cache {
                core.stats.page_cache.hit();
            } else {
                core.stats.page_cache.miss();
            }
            done(Ok(Opened {
                fh,
                keep_cache,
                direct_io: direct_io(flags),
            }))
        });
    }

    /// Up to `size` bytes of `ino` at `offset`, through kernel handle `fh`.
    pub fn read(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        done: impl Done<Vec<u8>>,
    ) {
        // The server must not be asked before it has this mount's writes.
        self.writes.wait_idle(ino);
        let len = size.min(MAX_CHUNK);
        let read = |handle| Op::Read {
            handle,
            offset,
            len,
        };
        self.on_handle(fh, &caller.cred, read, move |r| match r {
            Ok(Reply::Data(data)) => done(Ok(data)),
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
        let ticket = self.writes.begin_write(ino, fh, offset, len);
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
            self.kernel.forget_attrs(ino);
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
        let mut written = self.writes.settle(ino, fh);
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
        lock(&self.inodes).remove_handle(ino, fh);
        self.held.released(ino, fh);
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
        // Errors go to the handles that were writing; a read-only one only waits.
        if let Err(e) = self.writes.settle(ino, fh) {
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
        let fallocate = |handle| Op::Fallocate {
            handle,
            offset,
            len,
            mode,
        };
        let core = self.clone();
        self.on_handle(fh, &caller.cred, fallocate, move |r| {
            // The size (mode 0) and ctime changed on the server.
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
