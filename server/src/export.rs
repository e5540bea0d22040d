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
//!   opening one would reach the server's own driver or block on a FIFO. The
//!   type is checked on the node itself, not on its name, so that a name
//!   swapped between the check and the open cannot slip another node in (see
//!   [`open_node`]).
//! - Paths longer than one system call takes are resolved in pieces, each
//!   confined as above relative to the directory the previous one reached
//!   (see [`ExportRoot::walk`]).
//!
//! # Whose permissions
//!
//! The methods act with the calling thread's credentials. A caller serving a
//! client first makes the thread act as the client's mapped user
//! ([`ExportRoot::act_as`], see [`credentials`]), so that the kernel checks
//! that user's permissions and new nodes are that user's.

mod credentials;
mod dir_stream;
mod locks;
mod open_file;
mod sys;
mod xattr;

#[cfg(test)]
mod deep_path_tests;
#[cfg(test)]
mod open_race_tests;
#[cfg(test)]
mod tests;

pub use credentials::Acting;
pub use dir_stream::DirStream;
pub(crate) use locks::{Kept, LockKey, LockTable};
pub use open_file::OpenFile;

use crate::identity::Identity;
use credentials::OwnCredentials;
use ferry_common::path::PATH_MAX;
use ferry_common::proto::{AttrChanges, DirEntry, SetTime};
use ferry_common::{Attr, Errno, RelPath, StatFs};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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

/// The longest piece of a path one `openat2` resolves: with its NUL, `PATH_MAX`.
const PIECE: usize = PATH_MAX - 1;

/// How often `create` goes round when the file keeps appearing and vanishing
/// between its exclusive create and its plain open.
const CREATE_RETRIES: usize = 8;

/// The exported directory, held open for the life of the server.
#[derive(Debug)]
pub struct ExportRoot {
    /// `O_PATH | O_DIRECTORY` descriptor every path is resolved beneath.
    root: OwnedFd,
    path: PathBuf,
    /// The server's own credentials, which every request's are swapped for
    /// and back.
    own: OwnCredentials,
}

/// What a chmod may do with the set-user-id and set-group-id bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetIdBits {
    /// Set them as asked (the kernel still decides, as for a local chmod).
    AsAsked,
    /// Never set-user-id, and set-group-id only on a directory, where it only
    /// gives new entries the directory's group.
    DirectoryGroupOnly,
}

impl SetIdBits {
    /// `mode` for a node of `st`'s kind.
    fn apply(self, mode: u32, st: &libc::stat) -> u32 {
        match self {
            SetIdBits::AsAsked => mode,
            SetIdBits::DirectoryGroupOnly if is_kind(st, libc::S_IFDIR) => mode & !libc::S_ISUID,
            SetIdBits::DirectoryGroupOnly => mode & !(libc::S_ISUID | libc::S_ISGID),
        }
    }
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
        // O_PATH opens nothing but a reference; the path is the operator's own,
        // not a client's, so it may go through symlinks.
        let root = sys::open(&c_path, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
            let why = match e.code() {
                libc::ENOTDIR => "it is not a directory".to_string(),
                libc::ENOENT => "no such directory".to_string(),
                _ => e.to_string(),
            };
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot export {shown}: {why}"),
            )
        })?;
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
        let own = OwnCredentials::capture().map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot read the server's own credentials: {e}"),
            )
        })?;
        Ok(ExportRoot {
            root,
            path: path.to_path_buf(),
            own,
        })
    }

    /// The directory `path` inside this export, as an export of its own: a root
    /// descriptor opened beneath this one exactly as every other path is
    /// (`openat2` with `RESOLVE_BENEATH`, through no symlink), so that nothing
    /// outside it is reachable from it. ENOTDIR when `path` is not a directory,
    /// ENOENT when it does not exist, ELOOP when a component is a symlink.
    pub fn subtree(&self, path: &RelPath) -> Result<ExportRoot, Errno> {
        let root = self.open_beneath(path, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok(ExportRoot {
            root,
            path: self.path.join(path.as_os_str()),
            own: self.own.clone(),
        })
    }

    /// Makes the calling thread act as `who` — check permissions as that user,
    /// give new nodes that owner — until the guard returned is dropped. A server
    /// not running as root acts as itself whoever asks.
    pub fn act_as(&self, who: &Identity) -> Result<Acting<'_>, Errno> {
        self.own.act_as(who)
    }

    /// Whether [`act_as`](Self::act_as) can act as other users: the server runs as root.
    pub fn acts_as_clients(&self) -> bool {
        self.own.can_switch()
    }

    /// The directory as given to [`ExportRoot::open`] (with the subtree appended,
    /// for a [`subtree`](Self::subtree)).
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
    /// (Each call reads the directory from its start: a listing in many pages
    /// reads through a [`DirStream`] instead.)
    pub fn read_dir(
        &self,
        path: &RelPath,
        start: u64,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), Errno> {
        let mut stream = self.open_dir_stream(path)?;
        stream.skip(start)?;
        stream.next_entries(usize::MAX, max)
    }

    /// Opens directory `path` for a listing read in several steps.
    pub fn open_dir_stream(&self, path: &RelPath) -> Result<DirStream, Errno> {
        let fd = self.open_beneath(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
        Ok(DirStream::new(sys::Dir::from_fd(fd)?))
    }

    /// The text of a symlink, exactly as stored.
    pub fn read_link(&self, path: &RelPath) -> Result<Vec<u8>, Errno> {
        let node = self.locate(path)?;
        sys::readlinkat(node.dir(), &node.name)
    }

    /// Opens an existing regular file or directory. Flags outside a safe set
    /// (`O_CREAT`, `O_PATH`, `O_DIRECT`, ...) are dropped; a symlink is ELOOP, any
    /// other kind of node ENXIO, and neither is ever opened (see [`open_node`]).
    pub fn open_file(&self, path: &RelPath, flags: i32) -> Result<(OpenFile, Attr), Errno> {
        let node = self.locate(path)?;
        let (fd, st) = open_node(&node, flags & OPEN_FLAGS)?;
        Ok((OpenFile::new(fd), attr_from_stat(&st)))
    }

    /// Creates and opens a regular file with permission bits `mode`. Without
    /// `O_EXCL` in `flags` an existing file is opened instead (and keeps its mode
    /// and owner), under the same rules as [`Self::open_file`].
    pub fn create(&self, path: &RelPath, flags: i32, mode: u32) -> Result<(OpenFile, Attr), Errno> {
        let node = self.locate(path)?;
        let exclusive = flags & libc::O_EXCL != 0;
        let flags = flags & OPEN_FLAGS;
        let mut last = Errno::EEXIST;
        // Creating exclusively first tells a new file (which gets the requested
        // mode) from an existing one (which must not). An exclusive
        // create opens nothing but the regular file it has just made: whatever
        // already has the name, even a dangling symlink, makes it fail.
        for _ in 0..CREATE_RETRIES {
            let created = sys::openat2(
                node.dir(),
                &node.name,
                flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_NOCTTY,
                mode,
            );
            match created {
                Ok(fd) => {
                    let st = settle_new_node(fd.as_fd(), Some(mode))?;
                    return Ok((OpenFile::new(fd), attr_from_stat(&st)));
                }
                Err(e) if e == Errno::EEXIST && !exclusive => {}
                Err(e) => return Err(e),
            }
            match open_node(&node, flags) {
                Ok((fd, st)) => return Ok((OpenFile::new(fd), attr_from_stat(&st))),
                // Gone again since the create found it: try creating once more.
                Err(e) if e == Errno::ENOENT => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// `mkdir` → the new directory's attributes.
    pub fn mkdir(&self, path: &RelPath, mode: u32) -> Result<Attr, Errno> {
        let node = self.locate(path)?;
        sys::mkdirat(node.dir(), &node.name, mode)?;
        settle_created(&node, Some(mode))
    }

    /// `mknod`: a FIFO, socket, device node (as the caller's privileges allow) or
    /// empty regular file; `mode` carries the kind.
    pub fn mknod(&self, path: &RelPath, mode: u32, rdev: u64) -> Result<Attr, Errno> {
        let node = self.locate(path)?;
        sys::mknodat(node.dir(), &node.name, mode, rdev)?;
        settle_created(&node, Some(mode))
    }

    /// A symlink at `path` whose text is `target`, stored as given.
    pub fn symlink(&self, path: &RelPath, target: &[u8]) -> Result<Attr, Errno> {
        let node = self.locate(path)?;
        let target = sys::cstring(target)?;
        sys::symlinkat(&target, node.dir(), &node.name)?;
        settle_created(&node, None)
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

    /// chown, then chmod (so that set-id bits survive, as with `chown; chmod`;
    /// `setid` says which may be set at all), then truncate, then times;
    /// returns the new attributes. Acts on the node itself, never opening it and
    /// never following a symlink (a symlink's mode cannot change: EOPNOTSUPP).
    pub fn set_attr(
        &self,
        path: &RelPath,
        changes: &AttrChanges,
        setid: SetIdBits,
    ) -> Result<Attr, Errno> {
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
            sys::chmod_fd(fd, setid.apply(mode, &st))?;
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

    /// Opens the directory `path` as a reference only (`O_PATH`), beneath the
    /// root and through no symlink, with its attributes: what the watch on the
    /// export (see `watch`) holds a directory by.
    pub(crate) fn open_dir_ref(&self, path: &RelPath) -> Result<(OwnedFd, Attr), Errno> {
        let fd = self.open_beneath(path, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
        let st = sys::fstat(fd.as_fd())?;
        Ok((fd, attr_from_stat(&st)))
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
            Parent::Opened(self.walk(&parent, libc::O_PATH | libc::O_DIRECTORY)?)
        };
        Ok(Node { parent, name })
    }

    /// Checks `path` and opens it, whole, beneath the root.
    fn open_beneath(&self, path: &RelPath, flags: i32) -> Result<OwnedFd, Errno> {
        path.validate()?;
        if path.is_root() {
            return sys::openat2(self.root.as_fd(), c".", flags, 0);
        }
        self.walk(path, flags)
    }

    /// Opens the validated, non-root `path` beneath the root with `flags`, in
    /// pieces of at most [`PIECE`] bytes: `openat2` takes no more than
    /// `PATH_MAX` at once, and paths go deeper (see [`RelPath`]). Each piece is
    /// resolved with the same confinement as a whole path would be, relative
    /// to the directory the previous piece gave, so the walk stays below the
    /// root: every piece lands on a descendant of the directory it started
    /// from, as no piece holds `..` and none may pass a symlink. Between two
    /// pieces a directory already reached could be moved elsewhere, but only
    /// within the export by a client (every rename a client asks for is itself
    /// confined), and a local process on the server could as well move the
    /// parent a single `openat2` gave before the last name is acted on.
    fn walk(&self, path: &RelPath, flags: i32) -> Result<OwnedFd, Errno> {
        let pieces = path.pieces(PIECE);
        let Some((last, leading)) = pieces.split_last() else {
            return Err(Errno::EINVAL);
        };
        let mut dir: Option<OwnedFd> = None;
        for piece in leading {
            let from = dir.as_ref().map_or(self.root.as_fd(), |fd| fd.as_fd());
            let next = sys::openat2(
                from,
                &sys::cstring(piece)?,
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )?;
            dir = Some(next);
        }
        let from = dir.as_ref().map_or(self.root.as_fd(), |fd| fd.as_fd());
        sys::openat2(from, &sys::cstring(last)?, flags, 0)
    }
}

/// Finishes a node just made by mkdir, mknod or symlink; see [`settle_new_node`].
fn settle_created(node: &Node<'_>, mode: Option<u32>) -> Result<Attr, Errno> {
    let fd = sys::openat2(node.dir(), &node.name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    Ok(attr_from_stat(&settle_new_node(fd.as_fd(), mode)?))
}

/// Gives a new node exactly the permission bits the client asked for: the
/// client's kernel already applied the caller's umask, and the server's own
/// umask must not apply a second time. Best effort: the node exists either way.
/// (Its owner is whoever the thread acts as, and in a set-group-id directory its
/// group is the directory's, as on a local filesystem.)
fn settle_new_node(fd: BorrowedFd<'_>, mode: Option<u32>) -> Result<libc::stat, Errno> {
    let mut st = sys::fstat(fd)?;
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

/// Opens the node `node` names with `flags`, and only if it is a regular file
/// or a directory; answers the descriptor and the node's attributes after the
/// open (an `O_TRUNC` shows).
///
/// Checking the name and then opening it would leave a window in which a
/// rename (`RENAME_EXCHANGE` with a FIFO or a device node) puts another node
/// under the name, and the open would then reach that node: block on the FIFO
/// or run the device driver's open. So the name is resolved once, by
/// `O_PATH | O_NOFOLLOW`, which opens nothing (no driver is called, a FIFO does
/// not wait for a partner, a symlink is the link itself); the type is checked
/// on that descriptor; and then that very inode is opened with `flags` through
/// the descriptor's `/proc/self/fd` link ([`sys::reopen`]). That link is not a
/// name looked up again: the kernel goes straight to the inode the descriptor
/// holds, so nothing renamed in the meantime can change what is opened, and it
/// is confined because it reaches nothing but the node already reached beneath
/// the root. Permissions are checked by that open as by any other.
fn open_node(node: &Node<'_>, flags: i32) -> Result<(OwnedFd, libc::stat), Errno> {
    let target = sys::openat2(node.dir(), &node.name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    check_openable(&sys::fstat(target.as_fd())?)?;
    let fd = sys::reopen(target.as_fd(), flags | libc::O_NOCTTY)?;
    let st = sys::fstat(fd.as_fd())?;
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
