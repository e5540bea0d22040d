//! From a kernel handle to the server handle behind it — opening the file again,
//! by path, when the connection it was opened on is gone.
//!
//! A server handle lives as long as its connection (its *epoch*); the kernel's
//! handle lives until release. After a reconnect the first request through a
//! kernel handle opens the file again, without the flags that only make sense
//! once (`O_CREAT`, `O_EXCL`, `O_TRUNC`), and for whoever opened it first (the
//! permission to open it was theirs); every later request uses the new handle. A request carrying a server handle is only ever sent on that
//! handle's connection, so an old number can never reach another file.

use super::{Core, Done};
use ferry_common::proto::{Cred, Op, Reply};
use ferry_common::sync::lock;
use ferry_common::{Errno, RelPath};

impl Core {
    /// The server handle (and its connection epoch) behind the kernel's handle
    /// `fh`. After a reconnect the file is first opened again by its path, and
    /// the locks held on it are taken back (see [`super::reclaim`]); EIO for a
    /// handle whose locks were lost.
    pub(super) fn server_handle(&self, fh: u64) -> Result<(u64, u64), Errno> {
        if self.held.is_lost(fh) {
            return Err(Errno::EIO);
        }
        let epoch = self.client.connected_epoch()?;
        let file = lock(&self.files).get(fh).ok_or(Errno::EBADF)?;
        if !self.held.needs_reclaim(file.ino, epoch) && file.epoch == epoch {
            return Ok((epoch, file.handle));
        }
        let reached = self.handle_on(fh, epoch);
        let handle = self.take_back_locks(file.ino, epoch, fh, &file.opener, reached)?;
        if self.held.is_lost(fh) {
            return Err(Errno::EIO);
        }
        Ok((epoch, handle))
    }

    /// The server handle of `fh` on connection `epoch`, opening the file
    /// again by path if it was opened on an earlier one; with whether what
    /// was opened is the same file (the path may name another one now).
    pub(super) fn handle_on(&self, fh: u64, epoch: u64) -> Result<(u64, bool), Errno> {
        let file = lock(&self.files).get(fh).ok_or(Errno::EBADF)?;
        if file.epoch == epoch {
            return Ok((file.handle, true));
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
        let (handle, same) = match self.ask_now(Some(epoch), &file.opener, op)? {
            Reply::Opened { handle, attr } => {
                let same = lock(&self.inodes).ino_of_file(&attr) == Some(file.ino);
                (handle, same)
            }
            _ => return Err(Errno::EPROTO),
        };
        let mut files = lock(&self.files);
        let outcome = match files.get(fh) {
            // Another thread re-opened it meanwhile: keep theirs, close ours.
            Some(theirs) if theirs.epoch == epoch => Ok((theirs.handle, same)),
            Some(_) => {
                // A file opened from bytes fetched ahead has had no server
                // handle yet: opening it now is routine, not a reconnection.
                if file.epoch == super::files_ahead::NO_CONNECTION {
                    log::debug!("opened a file fetched ahead on the server (handle {fh})");
                } else {
                    log::info!("re-opened a file after reconnecting (handle {fh})");
                }
                files.reopened(fh, handle, epoch);
                return Ok((handle, same));
            }
            // Released meanwhile.
            None => Err(Errno::EBADF),
        };
        drop(files);
        self.client
            .submit_in(epoch, &file.opener, Op::Close { handle }, |_| {});
        outcome
    }

    /// Sends the operation `make_op` builds for the server handle behind the
    /// kernel's `fh`, on that handle's connection, on behalf of `cred`.
    pub(super) fn on_handle(
        &self,
        fh: u64,
        cred: &Cred,
        make_op: impl FnOnce(u64) -> Op,
        done: impl Done<Reply>,
    ) {
        match self.server_handle(fh) {
            Ok((epoch, handle)) => {
                let ino = lock(&self.files).get(fh).map(|f| f.ino);
                self.ask_about(ino, Some(epoch), cred, make_op(handle), done)
            }
            Err(e) => done(Err(e)),
        }
    }

    /// How to reach `ino` for an attribute operation: through a server handle
    /// when the kernel gave one (`fh`) or the inode is detached (unlinked or
    /// renamed over while open; then the path is not used), else by path.
    pub(super) fn attr_target(
        &self,
        ino: u64,
        fh: Option<u64>,
    ) -> Result<(RelPath, Option<(u64, u64)>), Errno> {
        let (path, handle) = lock(&self.inodes).locate(ino)?;
        match fh.or(handle) {
            Some(fh) => Ok((path, Some(self.server_handle(fh)?))),
            None => Ok((path, None)),
        }
    }
}
