//! The export: a confined view of one local directory.
//!
//! [`ExportRoot`] is the server's storage interface. Its methods are plain file
//! system operations named by [`RelPath`] and returning `Result<T, Errno>`; they know
//! nothing of the network, so the same interface could later be backed by something
//! other than a local disk. Every file system call the server makes lives below
//! this module.
//!
//! # Confinement
//!
//! No operation may reach anything outside the export root. The rules:
//!
//! - Every path is checked with [`RelPath::validate`] (paths decoded from the wire
//!   have not been).
//! - An operation on `a/b/c` opens the parent `a/b` with `openat2(2)` and
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` relative to the
//!   root's descriptor, so no component may be `..`-like or a symlink, then acts on
//!   the single name `c` with a `*at` call that does not follow it either. The root
//!   itself is reached as `.` in the root's descriptor.
//! - The server never follows a symlink: the client's kernel resolves symlinks with
//!   `ReadLink`, so every path it sends is physical. Symlinks are created and read
//!   back exactly as stored.
//! - `chmod`, `truncate`, `utimens` and `stat` of a FIFO, socket or device act on
//!   the node without opening it; `Open` refuses such nodes outright (ENXIO), as
//!   opening one would reach the server's own driver or block on a FIFO.

mod locks;
mod sys;
mod xattr;

#[cfg(test)]
mod tests;

pub use locks::LockTable;

use ferry_common::proto::{AttrChanges, DirEntry, Owner, SetTime};
use ferry_common::{Attr, Errno, RelPath, StatFs};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sys::{attr_from_stat, is_kind, Time};

/// The `open(2)` flags a client may pass; everything else is dropped. `O_CREAT`
/// is not among them: files are created only through [`ExportRoot::create`].
const OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_TRUNC
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_NOATIME
    | libc::O_DIRECTORY;

/// How often `create` goes round when the file keeps appearing and vanishing
/// between its exclusive create and its plain open.
const CREATE_RETRIES: usize = 8;

/// The exported directory, held open for the life of the server.
#[derive(Debug)]
pub struct ExportRoot {
    /// `O_PATH | O_DIRECTORY` descriptor every path is resolved beneath.
    root: OwnedFd,
    path: PathBuf,
    /// A server running as root gives new nodes the owner the client names.
    chown_new_nodes: bool,
}

/// A node as an operation reaches it: its parent directory, held open, and its
/// last name. The root is `.` in the root's own descriptor.
struct Node<'a> {
    parent: Parent<'a>,
    name: CString,
}

enum Parent<'a> {
    Root(BorrowedFd<'a>),
    Opened(OwnedFd),
}

impl Node<'_> {
    fn dir(&self) -> BorrowedFd<'_> {
        match &self.parent {
            Parent::Root(fd) => *fd,
            Parent::Opened(fd) => fd.as_fd(),
        }
    }
}

impl ExportRoot {
    /// Opens `path` as the export root. Fails if it is not a directory, or if the
    /// kernel cannot confine paths (`openat2`, Linux 5.6 and later).
    pub fn open(path: &Path) -> io::Result<ExportRoot> {
        let shown = path.display();
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot export {shown}: the path contains a NUL byte"),
            )
        })?;
        // SAFETY: a valid C string; O_PATH opens nothing but a reference.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            let why = match err.raw_os_error() {
                Some(libc::ENOTDIR) => "it is not a directory".to_string(),
                Some(libc::ENOENT) => "no such directory".to_string(),
                _ => err.to_string(),
            };
            return Err(io::Error::new(
                err.kind(),
                format!("cannot export {shown}: {why}"),
            ));
        }
        // SAFETY: a new descriptor nothing else owns.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Err(e) = sys::openat2(root.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0) {
            let why = if e.code() == libc::ENOSYS {
                "this kernel lacks openat2(2), which ferry needs to keep clients inside \
                 the export (Linux 5.6 or later)"
                    .to_string()
            } else {
                e.to_string()
            };
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot export {shown}: {why}"),
            ));
        }
        Ok(ExportRoot {
            root,
            path: path.to_path_buf(),
            // SAFETY: geteuid cannot fail.
            chown_new_nodes: unsafe { libc::geteuid() } == 0,
        })
    }

    /// The directory as given to [`ExportRoot::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Attributes of the root itself.
    pub fn root_attr(&self) -> Result<Attr, Errno> {
        Ok(attr_from_stat(&sys::fstat(self.root.as_fd())?))
    }

    /// `lstat`.
    pub fn stat(&self, path: &RelPath) -> Result<Attr, Errno> {
        let node = self.locate(path)?;
        Ok(attr_from_stat(&sys::fstatat(node.dir(), &node.name)?))
    }

    /// Up to `max` entries of a directory, skipping the first `start` (`.` and `..`
    /// are never listed), in the file system's own order, which is stable while the
    /// directory does not change. The flag says whether entries follow this page.
    pub fn read_dir(
        &self,
        path: &RelPath,
        start: u64,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), Errno> {
        let fd = self.open_beneath(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
        let mut dir = sys::Dir::from_fd(fd)?;
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let end = start.saturating_add(max);
        let mut names = Vec::new();
        let mut index = 0usize;
        let mut more = false;
        while let Some(name) = dir.next_name()? {
            if name == b"." || name == b".." {
                continue;
            }
            if index >= end {
                more = true;
                break;
            }
            if index >= start {
                names.push(name);
            }
            index += 1;
        }
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let c_name = sys::cstring(&name)?;
            match sys::fstatat(dir.fd(), &c_name) {
                Ok(st) => entries.push(DirEntry {
                    name,
                    attr: attr_from_stat(&st),
                }),
                // Removed since it was listed.
                Err(e) if e == Errno::ENOENT => continue,
                Err(e) => return Err(e),
            }
        }
        Ok((entries, more))
    }

    /// The text of a symlink, exactly as stored.
    pub fn read_link(&self, path: &RelPath) -> Result<Vec<u8>, Errno> {
        let node = self.locate(path)?;
        sys::readlinkat(node.dir(), &node.name)
    }

    /// Opens an existing regular file or directory. Flags outside a safe set
    /// (`O_CREAT`, `O_PATH`, `O_DIRECT`, ...) are dropped; a symlink is ELOOP, any
    /// other kind of node ENXIO.
    pub fn open_file(&self, path: &RelPath, flags: i32) -> Result<(OpenFile, Attr), Errno> {
        let node = self.locate(path)?;
        // Look before opening: opening a device would reach the server's own
        // driver, and opening a FIFO can block.
        check_openable(&sys::fstatat(node.dir(), &node.name)?)?;
        let (fd, st) = open_node(&node, flags & OPEN_FLAGS, 0)?;
        Ok((OpenFile::new(fd), attr_from_stat(&st)))
    }

    /// Creates and opens a regular file with permission bits `mode`. Without
    /// `O_EXCL` in `flags` an existing file is opened instead (and keeps its mode
    /// and owner).
    pub fn create(
        &self,
        path: &RelPath,
        flags: i32,
        mode: u32,
        owner: Option<Owner>,
    ) -> Result<(OpenFile, Attr), Errno> {
        let node = self.locate(path)?;
        let exclusive = flags & libc::O_EXCL != 0;
        let flags = flags & OPEN_FLAGS;
        let mut last = Errno::EEXIST;
        // Creating exclusively first tells a new file (which gets the requested
        // mode and owner) from an existing one (which must not).
        for _ in 0..CREATE_RETRIES {
            match open_node(&node, flags | libc::O_CREAT | libc::O_EXCL, mode) {
                Ok((fd, _)) => {
                    let st = self.settle_new_node(&node, fd.as_fd(), Some(mode), owner)?;
                    return Ok((OpenFile::new(fd), attr_from_stat(&st)));
                }
                Err(e) if e == Errno::EEXIST && !exclusive => {}
                Err(e) => return Err(e),
            }
            match sys::fstatat(node.dir(), &node.name) {
                Ok(st) => check_openable(&st)?,
                Err(e) if e == Errno::ENOENT => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(e),
            }
            match open_node(&node, flags, 0) {
                Ok((fd, st)) => return Ok((OpenFile::new(fd), attr_from_stat(&st))),
                Err(e) if e == Errno::ENOENT => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// `mkdir` → the new directory's attributes.
    pub fn mkdir(&self, path: &RelPath, mode: u32, owner: Option<Owner>) -> Result<Attr, Errno> {
        let node = self.locate(path)?;
        sys::mkdirat(node.dir(), &node.name, mode)?;
        self.settle_created(&node, Some(mode), owner)
    }

    /// `mknod`: a FIFO, socket, device node (as the server's privileges allow) or
    /// empty regular file; `mode` carries the kind.
    pub fn mknod(
        &self,
        path: &RelPath,
        mode: u32,
        rdev: u64,
        owner: Option<Owner>,
    ) -> Result<Attr, Errno> {
        let node = self.locate(path)?;
        sys::mknodat(node.dir(), &node.name, mode, rdev)?;
        self.settle_created(&node, Some(mode), owner)
    }

    /// A symlink at `path` whose text is `target`, stored as given.
    pub fn symlink(
        &self,
        path: &RelPath,
        target: &[u8],
        owner: Option<Owner>,
    ) -> Result<Attr, Errno> {
        let node = self.locate(path)?;
        let target = sys::cstring(target)?;
        sys::symlinkat(&target, node.dir(), &node.name)?;
        self.settle_created(&node, None, owner)
    }

    /// A hard link `path` to `existing` (a symlink is linked itself).
    pub fn link(&self, existing: &RelPath, path: &RelPath) -> Result<Attr, Errno> {
        let from = self.locate(existing)?;
        let to = self.locate(path)?;
        sys::linkat(from.dir(), &from.name, to.dir(), &to.name)?;
        Ok(attr_from_stat(&sys::fstatat(to.dir(), &to.name)?))
    }

    pub fn unlink(&self, path: &RelPath) -> Result<(), Errno> {
        let node = self.locate(path)?;
        sys::unlinkat(node.dir(), &node.name, false)
    }

    pub fn rmdir(&self, path: &RelPath) -> Result<(), Errno> {
        let node = self.locate(path)?;
        sys::unlinkat(node.dir(), &node.name, true)
    }

    /// `renameat2`; of its flags only `RENAME_NOREPLACE` and `RENAME_EXCHANGE` are
    /// accepted (EINVAL otherwise).
    pub fn rename(&self, from: &RelPath, to: &RelPath, flags: u32) -> Result<(), Errno> {
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(Errno::EINVAL);
        }
        let old = self.locate(from)?;
        let new = self.locate(to)?;
        sys::renameat2(old.dir(), &old.name, new.dir(), &new.name, flags)
    }

    /// chown, then chmod (so that set-id bits survive, as with `chown; chmod`),
    /// then truncate, then times; returns the new attributes. Acts on the node
    /// itself, never opening it and never following a symlink (a symlink's mode
    /// cannot change: EOPNOTSUPP).
    pub fn set_attr(&self, path: &RelPath, changes: &AttrChanges) -> Result<Attr, Errno> {
        let node = self.locate(path)?;
        let target = sys::openat2(node.dir(), &node.name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let fd = target.as_fd();
        let st = sys::fstat(fd)?;
        if changes.uid.is_some() || changes.gid.is_some() {
            sys::chown_fd(fd, changes.uid, changes.gid)?;
        }
        if let Some(mode) = changes.mode {
            if is_kind(&st, libc::S_IFLNK) {
                return Err(Errno::ENOTSUP);
            }
            sys::chmod_fd(fd, mode)?;
        }
        if let Some(size) = changes.size {
            if is_kind(&st, libc::S_IFDIR) {
                return Err(Errno::EISDIR);
            }
            if !is_kind(&st, libc::S_IFREG) {
                return Err(Errno::EINVAL);
            }
            sys::truncate_fd(fd, size)?;
        }
        if changes.kill_suidgid {
            kill_suidgid(fd)?;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            sys::utimensat(
                node.dir(),
                &node.name,
                &time(changes.atime),
                &time(changes.mtime),
            )?;
        }
        Ok(attr_from_stat(&sys::fstat(fd)?))
    }

    /// Statistics of the file system holding the export.
    pub fn statfs(&self) -> Result<StatFs, Errno> {
        let sv = sys::fstatvfs(self.root.as_fd())?;
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Ok(StatFs {
            blocks: sv.f_blocks as u64,
            bfree: sv.f_bfree as u64,
            bavail: sv.f_bavail as u64,
            files: sv.f_files as u64,
            ffree: sv.f_ffree as u64,
            bsize: u32::try_from(sv.f_bsize as u64).unwrap_or(u32::MAX),
            namelen: u32::try_from(sv.f_namemax as u64).unwrap_or(u32::MAX),
            frsize: u32::try_from(sv.f_frsize as u64).unwrap_or(u32::MAX),
        })
    }

    /// Checks `path` and opens its parent beneath the root.
    fn locate(&self, path: &RelPath) -> Result<Node<'_>, Errno> {
        path.validate()?;
        let Some((parent, name)) = path.split_last() else {
            return Ok(Node {
                parent: Parent::Root(self.root.as_fd()),
                name: c".".to_owned(),
            });
        };
        let name = sys::cstring_os(name)?;
        let parent = if parent.is_root() {
            Parent::Root(self.root.as_fd())
        } else {
            let c_parent = sys::cstring(parent.as_bytes())?;
            Parent::Opened(sys::openat2(
                self.root.as_fd(),
                &c_parent,
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )?)
        };
        Ok(Node { parent, name })
    }

    /// Checks `path` and opens it, whole, beneath the root.
    fn open_beneath(&self, path: &RelPath, flags: i32) -> Result<OwnedFd, Errno> {
        path.validate()?;
        let c_path = if path.is_root() {
            c".".to_owned()
        } else {
            sys::cstring(path.as_bytes())?
        };
        sys::openat2(self.root.as_fd(), &c_path, flags, 0)
    }

    /// Finishes a node just made by mkdir, mknod or symlink; see [`Self::settle_new_node`].
    fn settle_created(
        &self,
        node: &Node<'_>,
        mode: Option<u32>,
        owner: Option<Owner>,
    ) -> Result<Attr, Errno> {
        let fd = sys::openat2(node.dir(), &node.name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        Ok(attr_from_stat(&self.settle_new_node(
            node,
            fd.as_fd(),
            mode,
            owner,
        )?))
    }

    /// Gives a new node the owner the client named (when the server runs as root)
    /// and exactly the permission bits it asked for: the client's kernel already
    /// applied the caller's umask, and the server's own umask must not apply a
    /// second time. Both are best effort: the node exists either way.
    ///
    /// In a set-group-id directory the node keeps the group it inherited from
    /// the directory, as on a local filesystem; only its user changes.
    fn settle_new_node(
        &self,
        node: &Node<'_>,
        fd: BorrowedFd<'_>,
        mode: Option<u32>,
        owner: Option<Owner>,
    ) -> Result<libc::stat, Errno> {
        let mut st = sys::fstat(fd)?;
        if let (true, Some(owner)) = (self.chown_new_nodes, owner) {
            let parent_setgid = sys::fstat(node.dir())?.st_mode & libc::S_ISGID != 0;
            let gid = if parent_setgid { st.st_gid } else { owner.gid };
            if st.st_uid != owner.uid || st.st_gid != gid {
                match sys::chown_fd(fd, Some(owner.uid), Some(gid)) {
                    Ok(()) => st = sys::fstat(fd)?,
                    Err(e) => {
                        log::debug!("cannot give a new node to {}:{}: {e}", owner.uid, owner.gid)
                    }
                }
            }
        }
        if let Some(mode) = mode {
            if !is_kind(&st, libc::S_IFLNK) {
                let mut wanted = mode & 0o7777;
                if is_kind(&st, libc::S_IFDIR) {
                    // Inherited from a set-group-id parent, as mkdir(2) keeps it.
                    wanted |= st.st_mode & libc::S_ISGID;
                }
                if st.st_mode & 0o7777 != wanted {
                    match sys::chmod_fd(fd, wanted) {
                        Ok(()) => st = sys::fstat(fd)?,
                        Err(e) => log::debug!("cannot set mode {wanted:o} on a new node: {e}"),
                    }
                }
            }
        }
        Ok(st)
    }
}

/// Opens `node` (its last name never followed, nothing below the root reached)
/// and checks what was opened. `O_NONBLOCK` during the open means a FIFO swapped
/// in at the last moment cannot block us.
fn open_node(node: &Node<'_>, flags: i32, mode: u32) -> Result<(OwnedFd, libc::stat), Errno> {
    let fd = sys::openat2(
        node.dir(),
        &node.name,
        flags | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY,
        mode,
    )?;
    let st = sys::fstat(fd.as_fd())?;
    check_openable(&st)?;
    // Regular files ignore O_NONBLOCK, but a file system below us might not.
    sys::set_status_flags(fd.as_fd(), flags & !libc::O_NONBLOCK)?;
    Ok((fd, st))
}

/// Only regular files and directories are opened by the server.
fn check_openable(st: &libc::stat) -> Result<(), Errno> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR => Ok(()),
        libc::S_IFLNK => Err(Errno::ELOOP),
        _ => Err(Errno::new(libc::ENXIO)),
    }
}

fn time(t: Option<SetTime>) -> Time {
    match t {
        None => Time::Omit,
        Some(SetTime::Now) => Time::Now,
        Some(SetTime::At(ts)) => Time::At(ts),
    }
}

/// An open regular file or directory of the export, read and written at offsets
/// (`pread`/`pwrite`), so many requests can use it at once.
#[derive(Debug)]
pub struct OpenFile {
    file: File,
    /// Where the next read starts if the client reads sequentially.
    next_read: AtomicU64,
}

/// How far ahead of a sequential reader the disk is asked to read.
const READ_AHEAD: i64 = 8 << 20;

impl OpenFile {
    fn new(fd: OwnedFd) -> OpenFile {
        OpenFile {
            file: File::from(fd),
            next_read: AtomicU64::new(0),
        }
    }

    /// A client reading sequentially keeps several chunks in flight, which the
    /// server reads on several threads at once; the kernel's readahead then sees
    /// offsets out of order and reads in small pieces. So the disk is asked
    /// outright for what follows a sequential read.
    fn read_ahead(&self, offset: u64, len: usize) {
        let end = offset.saturating_add(len as u64);
        if self.next_read.swap(end, Ordering::Relaxed) != offset {
            return;
        }
        let Ok(from) = libc::off_t::try_from(end) else {
            return;
        };
        // SAFETY: an advisory call on a valid descriptor; failure is harmless.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                from,
                READ_AHEAD,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// `fstat`: the file may have been unlinked since it was opened.
    pub fn attr(&self) -> Result<Attr, Errno> {
        Ok(attr_from_stat(&sys::fstat(self.file.as_fd())?))
    }

    /// Up to `len` bytes at `offset`; fewer only at the end of the file.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        self.read_ahead(offset, len);
        // Read into uninitialised capacity: zeroing the buffer first would cost
        // as much as the copy out of the page cache.
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let got = buf.len();
            let at = offset.checked_add(got as u64).ok_or(Errno::EINVAL)?;
            let at = libc::off_t::try_from(at).map_err(|_| Errno::EINVAL)?;
            let spare = buf.spare_capacity_mut();
            // SAFETY: `spare` is writable memory of at least `len - got` bytes
            // owned by `buf`; pread writes at most that many.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    len - got,
                    at,
                )
            };
            match n {
                0 => break,
                n if n > 0 => {
                    // SAFETY: pread initialised `n` more bytes after `got`.
                    unsafe { buf.set_len(got + n as usize) }
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e.into());
                    }
                }
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
        sys::fallocate(self.file.as_fd(), mode, offset, len)
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
        let (fd_in, fd_out) = (self.file.as_fd(), out.file.as_fd());
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

    /// [`Self::copy_to`] for files `copy_file_range(2)` cannot join: chunk by chunk.
    fn copy_by_reading(
        &self,
        offset_in: u64,
        out: &OpenFile,
        offset_out: u64,
        len: u64,
    ) -> Result<u64, Errno> {
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(u64::from(ferry_common::frame::MAX_CHUNK)) as usize;
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

    /// [`ExportRoot::set_attr`] through the open file, which may be unlinked.
    /// Truncation needs the file open for writing.
    pub fn set_attr(&self, changes: &AttrChanges) -> Result<Attr, Errno> {
        let fd = self.file.as_fd();
        if changes.uid.is_some() || changes.gid.is_some() {
            sys::chown_fd(fd, changes.uid, changes.gid)?;
        }
        if let Some(mode) = changes.mode {
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

/// Clears the setuid bit, and the setgid bit of a group-executable file, of the
/// regular file `fd` (see [`AttrChanges::kill_suidgid`]).
fn kill_suidgid(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let st = sys::fstat(fd)?;
    if !is_kind(&st, libc::S_IFREG) {
        return Ok(());
    }
    let mode = st.st_mode & 0o7777;
    let mut kept = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        kept &= !libc::S_ISGID;
    }
    if kept != mode {
        sys::chmod_fd(fd, kept)?;
    }
    Ok(())
}
