//! Every system call the export makes, as a thin, safe wrapper.
//!
//! This is the only place in the export with `unsafe`: each wrapper checks what
//! the kernel needs (a NUL-terminated name, a buffer of the length passed, an
//! out-pointer filled only on success) and says so in a SAFETY comment. The
//! path-taking wrappers take a directory descriptor and a single, already-checked
//! name (or a descriptor alone) and never follow a symlink; the confinement rules
//! themselves live in the parent module. The credential calls (file system ids,
//! groups, capabilities) change the calling thread only; `credentials` decides
//! when. Failures are the call's errno; the wrappers of calls that can take long
//! (`openat2`, `reopen`, `pread`, `fallocate`, `copy_file_range`, `flock`, `F_OFD_SETLK`)
//! retry when a signal interrupts them.

use ferry_common::{Attr, Errno, FileKind, Timestamp};
use std::ffi::{CStr, CString, OsStr};
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr::NonNull;

/// How `openat2` resolves every path: below the starting directory, through no
/// symlink at all (in any component), and through no `/proc` magic link.
const RESOLVE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// `openat2` answers EAGAIN when a concurrent rename makes it unsure the walk
/// stayed beneath; a few retries settle it.
const OPENAT2_RETRIES: usize = 8;

fn cvt(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn cvt_long(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// A name or relative path as a C string; a NUL inside is EINVAL (the path checks
/// refuse it earlier, this is the last fence).
pub(super) fn cstring(bytes: &[u8]) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

pub(super) fn cstring_os(name: &OsStr) -> Result<CString, Errno> {
    cstring(name.as_bytes())
}

/// `open(path, flags)` with `O_CLOEXEC` added: unconfined, and following
/// symlinks, so only for paths the server chose itself (the export root given to
/// it, a `/proc/self/fd` link), never for a client's.
pub(super) fn open(path: &CStr, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: `path` is NUL-terminated; without O_CREAT no mode is read.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dir, path, flags, mode)` confined by [`RESOLVE`]. `O_CLOEXEC` is always added.
pub(super) fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let flags = flags | libc::O_CLOEXEC;
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { mem::zeroed() };
    // The flags are a bit set: reinterpret, never sign-extend.
    how.flags = u64::from(flags as u32);
    // The kernel refuses a mode without O_CREAT / O_TMPFILE.
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode & 0o7777)
    } else {
        0
    };
    how.resolve = RESOLVE;
    let mut tries = 0;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` lives across the call; the size
        // passed is the size of the struct pointed to.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                mem::size_of::<libc::open_how>(),
            )
        };
        if ret >= 0 {
            // SAFETY: the kernel returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) });
        }
        let err = Errno::last();
        tries += 1;
        match err.code() {
            libc::EINTR => continue,
            libc::EAGAIN if tries < OPENAT2_RETRIES => continue,
            _ => return Err(err),
        }
    }
}

pub(super) fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat, Errno> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one `struct stat`.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded and filled it.
    Ok(unsafe { st.assume_init() })
}

/// `lstat` of `name` in `dir`.
pub(super) fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> Result<libc::stat, Errno> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid C string and out-pointer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded and filled it.
    Ok(unsafe { st.assume_init() })
}

pub(super) fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: valid C string.
    cvt(unsafe {
        libc::mkdirat(
            dir.as_raw_fd(),
            name.as_ptr(),
            (mode & 0o7777) as libc::mode_t,
        )
    })?;
    Ok(())
}

pub(super) fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> Result<(), Errno> {
    // SAFETY: valid C string.
    cvt(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })?;
    Ok(())
}

pub(super) fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    // SAFETY: valid C strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
    Ok(())
}

/// The text of the symlink `name` in `dir`, exactly as stored.
pub(super) fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> Result<Vec<u8>, Errno> {
    // Linux keeps symlink texts below PATH_MAX; grow anyway rather than truncate.
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: the pointer and length describe `buf`.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(Errno::last());
        }
        let n = n as usize;
        if n < buf.len() || buf.len() >= 1 << 16 {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// `linkat` with flags 0: a symlink is linked itself, never followed.
pub(super) fn linkat(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
) -> Result<(), Errno> {
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

pub(super) fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, remove_dir: bool) -> Result<(), Errno> {
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

/// `renameat2` through the raw system call, so that older C libraries work too.
pub(super) fn renameat2(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
    flags: u32,
) -> Result<(), Errno> {
    // SAFETY: valid C strings; renameat2 takes plain integers otherwise.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

/// Opens the inode behind `fd` (an `O_PATH` descriptor, say) anew with `flags`
/// (`O_CLOEXEC` added, `O_CREAT` and `O_NOFOLLOW` dropped), through its
/// `/proc/self/fd` link: the kernel follows that link straight to the inode the
/// descriptor holds, never looking a name up, so what is opened is that node
/// whatever has happened to its names since (even if it was unlinked). The open
/// checks permissions as any open does.
pub(super) fn reopen(fd: BorrowedFd<'_>, flags: i32) -> Result<OwnedFd, Errno> {
    let path = proc_fd_path(fd)?;
    loop {
        match open(&path, flags & !(libc::O_CREAT | libc::O_NOFOLLOW)) {
            Err(e) if e.code() == libc::EINTR => continue,
            other => return other,
        }
    }
}

/// Changes the owner of exactly the node behind `fd` (an `O_PATH` descriptor is
/// fine; a symlink's own owner changes). `None` leaves that id alone.
pub(super) fn chown_fd(
    fd: BorrowedFd<'_>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), Errno> {
    let uid = uid.unwrap_or(u32::MAX) as libc::uid_t;
    let gid = gid.unwrap_or(u32::MAX) as libc::gid_t;
    // SAFETY: valid (empty) C string; AT_EMPTY_PATH makes the call act on `fd` itself.
    cvt(unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) })?;
    Ok(())
}

/// Changes the mode of exactly the node behind `fd`, which may be an `O_PATH`
/// descriptor of a FIFO or device: nothing is opened. Never call it on a symlink
/// (the caller checks): the `/proc` fallback would follow it.
pub(super) fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    let mode = (mode & 0o7777) as libc::mode_t;
    // fchmodat2 (Linux 6.6) acts on the descriptor itself with AT_EMPTY_PATH.
    // SAFETY: valid (empty) C string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode,
            libc::AT_EMPTY_PATH,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let err = Errno::last();
    if err.code() != libc::ENOSYS {
        return Err(err);
    }
    // Older kernels: the /proc magic link names the same inode, without opening it.
    let proc_path = proc_fd_path(fd)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::chmod(proc_path.as_ptr(), mode) })?;
    Ok(())
}

/// Truncates exactly the regular file behind the `O_PATH` descriptor `fd`
/// without opening it (a FIFO would answer EINVAL, never block).
pub(super) fn truncate_fd(fd: BorrowedFd<'_>, size: u64) -> Result<(), Errno> {
    let size = libc::off_t::try_from(size).map_err(|_| Errno::EINVAL)?;
    let proc_path = proc_fd_path(fd)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::truncate(proc_path.as_ptr(), size) })?;
    Ok(())
}

fn proc_fd_path(fd: BorrowedFd<'_>) -> Result<CString, Errno> {
    cstring(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())
}

/// A time for `utimensat`: leave it, the clock now, or a given instant.
pub(super) enum Time {
    Omit,
    Now,
    At(Timestamp),
}

fn timespec(t: &Time) -> libc::timespec {
    // SAFETY: timespec is plain data; all-zero is valid.
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    match t {
        Time::Omit => ts.tv_nsec = libc::UTIME_OMIT,
        Time::Now => ts.tv_nsec = libc::UTIME_NOW,
        Time::At(at) => {
            ts.tv_sec = at.secs as libc::time_t;
            ts.tv_nsec = at.nanos.min(999_999_999) as libc::c_long;
        }
    }
    ts
}

/// `utimensat` on `name` in `dir`, never following a symlink.
pub(super) fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: &Time,
    mtime: &Time,
) -> Result<(), Errno> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: valid C string and a two-element timespec array.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// `futimens` on an open (not `O_PATH`) descriptor.
pub(super) fn futimens(fd: BorrowedFd<'_>, atime: &Time, mtime: &Time) -> Result<(), Errno> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: a two-element timespec array.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
    Ok(())
}

pub(super) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), (mode & 0o7777) as libc::mode_t) })?;
    Ok(())
}

pub(super) fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> Result<(), Errno> {
    let size = libc::off_t::try_from(size).map_err(|_| Errno::EINVAL)?;
    // SAFETY: plain integers.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })?;
    Ok(())
}

/// `fallocate(2)`, retried when a signal interrupts it.
pub(super) fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> Result<(), Errno> {
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::new(libc::EFBIG))?;
    let len = libc::off_t::try_from(len).map_err(|_| Errno::new(libc::EFBIG))?;
    loop {
        // SAFETY: plain integers.
        match cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) }) {
            Err(e) if e.code() == libc::EINTR => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// One `copy_file_range(2)` call at explicit offsets (the descriptors' own
/// offsets are neither used nor moved): the bytes copied, 0 at the end of the input.
pub(super) fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    offset_in: u64,
    fd_out: BorrowedFd<'_>,
    offset_out: u64,
    len: u64,
) -> Result<u64, Errno> {
    let mut off_in = libc::loff_t::try_from(offset_in).map_err(|_| Errno::new(libc::EFBIG))?;
    let mut off_out = libc::loff_t::try_from(offset_out).map_err(|_| Errno::new(libc::EFBIG))?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    loop {
        // SAFETY: the offsets are valid in/out pointers for the call's duration.
        let n = unsafe {
            libc::copy_file_range(
                fd_in.as_raw_fd(),
                &mut off_in,
                fd_out.as_raw_fd(),
                &mut off_out,
                len,
                0,
            )
        };
        if n >= 0 {
            return Ok(n as u64);
        }
        let err = Errno::last();
        if err.code() != libc::EINTR {
            return Err(err);
        }
    }
}

/// Whether a read may wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// A plain `pread(2)`.
    ForDisk,
    /// Only what the page cache holds (`preadv2` with `RWF_NOWAIT`): EAGAIN
    /// rather than waiting, after the kernel has started reading what was
    /// missing; fewer bytes than asked when only part was cached; EOPNOTSUPP
    /// where the file system cannot say.
    Never,
}

/// `pread(2)` of up to `max` bytes at `offset`, appended to `buf` without
/// zeroing its spare capacity first: the count read, 0 at the end of the file.
pub(super) fn pread_append(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    offset: u64,
    wait: Wait,
) -> Result<usize, Errno> {
    let flags = match wait {
        Wait::ForDisk => 0,
        Wait::Never => libc::RWF_NOWAIT,
    };
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)?;
    buf.reserve(max);
    let filled = buf.len();
    loop {
        let spare = buf.spare_capacity_mut();
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: max,
        };
        // SAFETY: `iov` points into writable memory owned by `buf`, at least
        // `max` bytes long after the reserve; preadv2 writes at most `max`
        // bytes into it.
        let n = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, offset, flags) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: preadv2 initialised `n` (at most `max`) bytes after `filled`.
            unsafe { buf.set_len(filled + n) };
            return Ok(n);
        }
        let err = Errno::last();
        if err.code() != libc::EINTR {
            return Err(err);
        }
    }
}

/// Tells the kernel `len` bytes from `offset` will be read soon
/// (`POSIX_FADV_WILLNEED`). Advice only: a failure changes nothing and is ignored.
pub(super) fn advise_will_need(fd: BorrowedFd<'_>, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: plain integers on a descriptor `fd` keeps open.
    unsafe { libc::posix_fadvise(fd.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
}

/// The file status flags and access mode of an open descriptor (`F_GETFL`).
pub(super) fn status_flags(fd: BorrowedFd<'_>) -> Result<i32, Errno> {
    // SAFETY: plain integers.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// `flock(2)` with `operation` (`LOCK_SH`, `LOCK_EX`, `LOCK_UN`, with or
/// without `LOCK_NB`).
pub(super) fn flock(fd: BorrowedFd<'_>, operation: i32) -> Result<(), Errno> {
    loop {
        // SAFETY: plain integers.
        match cvt(unsafe { libc::flock(fd.as_raw_fd(), operation) }) {
            Err(e) if e.code() == libc::EINTR => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// A byte-range lock as `fcntl(2)` takes and reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RangeLock {
    /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
    pub typ: i32,
    pub start: libc::off_t,
    /// 0 reaches to the end of the file, however long it grows.
    pub len: libc::off_t,
}

impl RangeLock {
    fn to_flock(self) -> libc::flock {
        // SAFETY: plain data; all-zero is valid, and l_pid must be 0 for OFD locks.
        let mut fl: libc::flock = unsafe { mem::zeroed() };
        fl.l_type = self.typ as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = self.start;
        fl.l_len = self.len;
        fl
    }
}

/// Takes, changes or drops an open file description lock (`F_OFD_SETLK`),
/// never waiting: EAGAIN or EACCES when another holds a conflicting lock.
pub(super) fn ofd_setlk(fd: BorrowedFd<'_>, lock: RangeLock) -> Result<(), Errno> {
    let fl = lock.to_flock();
    loop {
        // SAFETY: a valid flock structure for the duration of the call.
        match cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) }) {
            Err(e) if e.code() == libc::EINTR => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// The first lock held through another open file description that conflicts
/// with `lock` (`F_OFD_GETLK`); its `typ` is `F_UNLCK` when there is none.
pub(super) fn ofd_getlk(fd: BorrowedFd<'_>, lock: RangeLock) -> Result<RangeLock, Errno> {
    let mut fl = lock.to_flock();
    // SAFETY: a valid flock structure, which the kernel fills, for the duration
    // of the call.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) })?;
    Ok(RangeLock {
        typ: i32::from(fl.l_type),
        start: fl.l_start,
        len: fl.l_len,
    })
}

/// `buf` as the kernel takes an xattr buffer: a null pointer when it is empty,
/// which asks for the size the answer needs.
fn xattr_buf(buf: &mut [u8]) -> *mut libc::c_void {
    if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    }
}

fn cvt_size(ret: libc::ssize_t) -> Result<usize, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

/// `lgetxattr(2)`: the value's length, written into `buf` unless `buf` is
/// empty; ERANGE when it does not fit.
pub(super) fn lgetxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: valid C strings; the pointer and length describe `buf` (or are
    // null and 0).
    cvt_size(unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), xattr_buf(buf), buf.len()) })
}

/// `llistxattr(2)`: the length of the name list, written into `buf` unless
/// `buf` is empty; ERANGE when it does not fit.
pub(super) fn llistxattr(path: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: as in `lgetxattr`.
    cvt_size(unsafe { libc::llistxattr(path.as_ptr(), xattr_buf(buf).cast(), buf.len()) })
}

pub(super) fn lsetxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> Result<(), Errno> {
    // SAFETY: valid C strings; the pointer and length describe `value`.
    cvt(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })?;
    Ok(())
}

pub(super) fn lremovexattr(path: &CStr, name: &CStr) -> Result<(), Errno> {
    // SAFETY: valid C strings.
    cvt(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) })?;
    Ok(())
}

/// The effective user id of the server.
pub(super) fn geteuid() -> u32 {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// The effective group id of the server.
pub(super) fn getegid() -> u32 {
    // SAFETY: getegid takes nothing and cannot fail.
    unsafe { libc::getegid() }
}

// Per-thread credentials.
//
// Linux keeps credentials per thread; the raw system calls below change the
// calling thread's only. (The C library's `setgroups` changes every thread of
// the process, which is why it is not used.) 32-bit x86 and ARM have 32-bit id
// variants of these calls under other numbers.

#[cfg(any(target_arch = "x86", target_arch = "arm"))]
mod nr {
    pub(super) const SETFSUID: libc::c_long = libc::SYS_setfsuid32;
    pub(super) const SETFSGID: libc::c_long = libc::SYS_setfsgid32;
    pub(super) const SETGROUPS: libc::c_long = libc::SYS_setgroups32;
}
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
mod nr {
    pub(super) const SETFSUID: libc::c_long = libc::SYS_setfsuid;
    pub(super) const SETFSGID: libc::c_long = libc::SYS_setfsgid;
    pub(super) const SETGROUPS: libc::c_long = libc::SYS_setgroups;
}

/// An id no user or group has; `setfsuid(NO_ID)` changes nothing and answers
/// the current id.
const NO_ID: u32 = u32::MAX;

/// Sets the calling thread's file system user id (`setfsuid(2)`), which the
/// kernel checks permissions and gives new nodes' owners by. The call reports no
/// failure, only the id before it, so the id is read back to know it took.
pub(super) fn set_thread_fsuid(uid: u32) -> Result<(), Errno> {
    set_fs_id(nr::SETFSUID, uid)
}

/// [`set_thread_fsuid`] for the group id (`setfsgid(2)`).
pub(super) fn set_thread_fsgid(gid: u32) -> Result<(), Errno> {
    set_fs_id(nr::SETFSGID, gid)
}

fn set_fs_id(call: libc::c_long, id: u32) -> Result<(), Errno> {
    if id == NO_ID {
        return Err(Errno::EINVAL);
    }
    // SAFETY: setfs[ug]id take one integer and change only the calling
    // thread's credentials; they cannot fail in a way that needs handling here.
    unsafe { libc::syscall(call, id) };
    // SAFETY: as above; NO_ID changes nothing and answers the current id.
    let now = unsafe { libc::syscall(call, NO_ID) };
    if now as u32 == id {
        Ok(())
    } else {
        Err(Errno::EPERM)
    }
}

/// Sets the calling thread's supplementary groups (the raw `setgroups(2)`).
pub(super) fn set_thread_groups(groups: &[u32]) -> Result<(), Errno> {
    // SAFETY: the pointer and length describe `groups` (gid_t is a u32), which
    // the kernel copies before returning; only the calling thread changes.
    cvt_long(unsafe { libc::syscall(nr::SETGROUPS, groups.len(), groups.as_ptr()) })?;
    Ok(())
}

/// The calling thread's supplementary groups (`getgroups(2)`).
pub(super) fn thread_groups() -> Result<Vec<u32>, Errno> {
    loop {
        // SAFETY: a size of 0 asks for the count and writes nothing.
        let n = cvt(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
        let mut groups = vec![0 as libc::gid_t; n as usize];
        // SAFETY: the pointer and length describe `groups`.
        match cvt(unsafe { libc::getgroups(n, groups.as_mut_ptr()) }) {
            Ok(got) => {
                groups.truncate(got as usize);
                return Ok(groups);
            }
            // The list grew in between: ask again.
            Err(e) if e.code() == libc::EINVAL => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `_LINUX_CAPABILITY_VERSION_3`: capability sets as two 32-bit words each.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    /// 0: the calling thread.
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one 32-bit word of each set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A thread's capability sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Capabilities([CapData; 2]);

impl Capabilities {
    /// The same sets with nothing effective: what an ordinary user's process
    /// has. Permitted capabilities stay, so the effective ones can come back.
    pub(super) fn without_effective(self) -> Capabilities {
        let mut sets = self.0;
        for word in &mut sets {
            word.effective = 0;
        }
        Capabilities(sets)
    }
}

/// The calling thread's capability sets (`capget(2)`).
pub(super) fn thread_capabilities() -> Result<Capabilities, Errno> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a version 3 header and the two data words that version reads and writes.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    })?;
    Ok(Capabilities(data))
}

/// Sets the calling thread's capability sets (`capset(2)`, which changes only
/// the calling thread).
pub(super) fn set_thread_capabilities(caps: &Capabilities) -> Result<(), Errno> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: a version 3 header and the two data words that version reads.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            caps.0.as_ptr(),
        )
    })?;
    Ok(())
}

pub(super) fn fstatvfs(fd: BorrowedFd<'_>) -> Result<libc::statvfs, Errno> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid out-pointer.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded and filled it.
    Ok(unsafe { st.assume_init() })
}

/// An open directory stream (`fdopendir`), read entry by entry.
pub(super) struct Dir(NonNull<libc::DIR>);

// SAFETY: a `DIR` stream belongs to no thread; what it must not be is used by
// two at once, which `&mut self` on every read rules out.
unsafe impl Send for Dir {}

impl std::fmt::Debug for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Dir").field(&self.fd()).finish()
    }
}

impl Dir {
    /// Takes ownership of `fd`, a directory opened for reading.
    pub(super) fn from_fd(fd: OwnedFd) -> Result<Dir, Errno> {
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is an open descriptor we own; on success the stream owns it.
        let ptr = unsafe { libc::fdopendir(raw) };
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Dir(ptr)),
            None => {
                let err = Errno::last();
                // SAFETY: fdopendir failed, so the descriptor is still ours to close.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                Err(err)
            }
        }
    }

    /// The next entry's name, `.` and `..` included; `None` at the end.
    pub(super) fn next_name(&mut self) -> Result<Option<Vec<u8>>, Errno> {
        // readdir reports errors only through errno, so clear it first.
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: the stream is open; the entry stays valid until the next call.
        let entry = unsafe { libc::readdir(self.0.as_ptr()) };
        if entry.is_null() {
            // SAFETY: as above.
            let code = unsafe { *libc::__errno_location() };
            return if code == 0 {
                Ok(None)
            } else {
                Err(Errno::new(code))
            };
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        Ok(Some(name.to_bytes().to_vec()))
    }

    /// The stream's descriptor, for `fstatat` on its entries.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor stays open as long as the stream, which `self` borrows.
        unsafe { BorrowedFd::borrow_raw(libc::dirfd(self.0.as_ptr())) }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: the stream is open and closed exactly once.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

pub(super) fn is_kind(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

fn timestamp(secs: i64, nanos: i64) -> Timestamp {
    Timestamp {
        secs,
        nanos: nanos.clamp(0, 999_999_999) as u32,
    }
}

/// The wire attributes of a `struct stat`. The field types differ between
/// architectures, hence the casts.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
pub(super) fn attr_from_stat(st: &libc::stat) -> Attr {
    Attr {
        kind: FileKind::from_mode(st.st_mode as u32),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: u32::try_from(st.st_nlink as u64).unwrap_or(u32::MAX),
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        size: (st.st_size as i64).max(0) as u64,
        blocks: (st.st_blocks as i64).max(0) as u64,
        atime: timestamp(st.st_atime as i64, st.st_atime_nsec as i64),
        mtime: timestamp(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: timestamp(st.st_ctime as i64, st.st_ctime_nsec as i64),
        rdev: st.st_rdev as u64,
        blksize: u32::try_from((st.st_blksize as i64).max(0)).unwrap_or(u32::MAX),
        ino: st.st_ino as u64,
        dev: st.st_dev as u64,
    }
}
