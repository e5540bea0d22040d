//! An open file of the export: what a client's handle stands for.
//!
//! Only regular files and directories are ever opened (see
//! [`ExportRoot::open_file`](super::ExportRoot::open_file)). Every access is at
//! an explicit offset (`pread`/`pwrite`), never through the descriptor's own
//! position, so many requests can use one file at once.

use super::sys::{self, attr_from_stat, Wait};
use super::{kill_suidgid, time, SetIdBits};
use ferry_common::frame::MAX_CHUNK;
use ferry_common::proto::AttrChanges;
use ferry_common::{Attr, Errno};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// How far ahead of a sequential reader the disk is asked to read.
const READ_AHEAD: u64 = 8 << 20;

/// An open regular file or directory of the export.
#[derive(Debug)]
pub struct OpenFile {
    file: File,
    /// Where the next read starts if the client reads sequentially.
    next_read: AtomicU64,
}

impl OpenFile {
    pub(super) fn new(fd: OwnedFd) -> OpenFile {
        OpenFile {
            file: File::from(fd),
            next_read: AtomicU64::new(0),
        }
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// A client reading sequentially keeps several chunks in flight, which the
    /// server reads on several threads at once; the kernel's readahead then sees
    /// offsets out of order and reads in small pieces. So the disk is asked
    /// outright for what follows a sequential read.
    fn read_ahead(&self, offset: u64, len: usize) {
        let end = offset.saturating_add(len as u64);
        if self.next_read.swap(end, Ordering::Relaxed) == offset {
            sys::advise_will_need(self.fd(), end, READ_AHEAD);
        }
    }

    /// `fstat`: the file may have been unlinked since it was opened.
    pub fn attr(&self) -> Result<Attr, Errno> {
        Ok(attr_from_stat(&sys::fstat(self.fd())?))
    }

    /// Up to `len` bytes at `offset`; fewer only at the end of the file.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        self.read(offset, len, Wait::ForDisk)
    }

    /// [`read_at`](Self::read_at), but only if the page cache holds all of it:
    /// `None`, having waited for nothing, when some of it is still on the disk
    /// (whose reading the kernel has then started) or the file system cannot
    /// tell without waiting.
    pub fn read_cached(&self, offset: u64, len: usize) -> Option<Result<Vec<u8>, Errno>> {
        match self.read(offset, len, Wait::Never) {
            Err(e) if e.code() == libc::EAGAIN || e.code() == libc::EOPNOTSUPP => None,
            read => Some(read),
        }
    }

    fn read(&self, offset: u64, len: usize, wait: Wait) -> Result<Vec<u8>, Errno> {
        self.read_ahead(offset, len);
        // Filled straight from the page cache: zeroing the buffer first would
        // cost as much as the copy.
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset.checked_add(buf.len() as u64).ok_or(Errno::EINVAL)?;
            let want = len - buf.len();
            // 0 is the end of the file, never a wait.
            if sys::pread_append(self.fd(), &mut buf, want, at, wait)? == 0 {
                break;
            }
        }
        Ok(buf)
    }

    /// Writes all of `data` at `offset` and returns its length; if the disk fails
    /// part way, the count written so far (as `pwrite` would), or the error if
    /// nothing was written.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let mut done = 0;
        while done < data.len() {
            let at = offset.checked_add(done as u64).ok_or(Errno::EINVAL)?;
            match self.file.write_at(&data[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if done == 0 => return Err(e.into()),
                Err(_) => break,
            }
        }
        if done == 0 && !data.is_empty() {
            return Err(Errno::EIO);
        }
        Ok(done)
    }

    /// `fsync`, or `fdatasync` when `data_only`.
    pub fn sync(&self, data_only: bool) -> Result<(), Errno> {
        let result = if data_only {
            self.file.sync_data()
        } else {
            self.file.sync_all()
        };
        result.map_err(Errno::from)
    }

    /// `fallocate(2)` with `mode` 0 (allocate, growing the file),
    /// `FALLOC_FL_KEEP_SIZE`, `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` or
    /// `FALLOC_FL_ZERO_RANGE` (the modes FUSE passes on); others are EOPNOTSUPP.
    pub fn allocate(&self, mode: i32, offset: u64, len: u64) -> Result<(), Errno> {
        const MODES: i32 =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !MODES != 0 {
            return Err(Errno::ENOTSUP);
        }
        sys::fallocate(self.fd(), mode, offset, len)
    }

    /// Copies up to `len` bytes from this file at `offset_in` to `out` at
    /// `offset_out`, on the server: with `copy_file_range(2)` (which may share
    /// or offload the blocks), or by reading and writing here when the two files'
    /// file systems cannot. Returns the bytes copied; fewer than `len` only at the
    /// end of this file or when the output fails part way.
    pub fn copy_to(
        &self,
        offset_in: u64,
        out: &OpenFile,
        offset_out: u64,
        len: u64,
    ) -> Result<u64, Errno> {
        let (fd_in, fd_out) = (self.fd(), out.fd());
        let mut done = 0u64;
        while done < len {
            let at_in = offset_in.checked_add(done).ok_or(Errno::EINVAL)?;
            let at_out = offset_out.checked_add(done).ok_or(Errno::EINVAL)?;
            match sys::copy_file_range(fd_in, at_in, fd_out, at_out, len - done) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e)
                    if done == 0
                        && [libc::EXDEV, libc::EOPNOTSUPP, libc::ENOSYS].contains(&e.code()) =>
                {
                    return self.copy_by_reading(offset_in, out, offset_out, len);
                }
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    /// [`Self::copy_to`] for files `copy_file_range(2)` cannot join: chunk by
    /// chunk. Visible to the export's tests, which cannot make the kernel refuse.
    pub(super) fn copy_by_reading(
        &self,
        offset_in: u64,
        out: &OpenFile,
        offset_out: u64,
        len: u64,
    ) -> Result<u64, Errno> {
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(u64::from(MAX_CHUNK)) as usize;
            let at_in = offset_in.checked_add(done).ok_or(Errno::EINVAL)?;
            let data = match self.read_at(at_in, chunk) {
                Ok(d) => d,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            };
            if data.is_empty() {
                break;
            }
            let at_out = offset_out.checked_add(done).ok_or(Errno::EINVAL)?;
            let written = match out.write_at(at_out, &data) {
                Ok(n) => n,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            };
            done += written as u64;
            if written < data.len() || data.len() < chunk {
                break;
            }
        }
        Ok(done)
    }

    /// [`ExportRoot::set_attr`](super::ExportRoot::set_attr) through the open
    /// file, which may be unlinked. Truncation needs the file open for writing.
    pub fn set_attr(&self, changes: &AttrChanges, setid: SetIdBits) -> Result<Attr, Errno> {
        let fd = self.fd();
        if changes.uid.is_some() || changes.gid.is_some() {
            sys::chown_fd(fd, changes.uid, changes.gid)?;
        }
        if let Some(mode) = changes.mode {
            let setid_asked = mode & (libc::S_ISUID | libc::S_ISGID) != 0;
            let mode = if setid_asked && setid != SetIdBits::AsAsked {
                setid.apply(mode, &sys::fstat(fd)?)
            } else {
                mode
            };
            sys::fchmod(fd, mode)?;
        }
        if let Some(size) = changes.size {
            sys::ftruncate(fd, size)?;
        }
        if changes.kill_suidgid {
            kill_suidgid(fd)?;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            sys::futimens(fd, &time(changes.atime), &time(changes.mtime))?;
        }
        self.attr()
    }
}
