//! The server's system calls outside the export, as safe wrappers: the process's
//! descriptor limit, the allocator's trimming, and inotify (the watch on the
//! export, see `watch`). (The export's file system calls are in `export::sys`;
//! socket options in `ferry_common::socket`.)

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The soft and hard limits on open descriptors (`RLIMIT_NOFILE`).
pub(crate) fn open_file_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer to one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Sets the soft and hard limits on open descriptors; on failure the old ones
/// stay.
pub(crate) fn set_open_file_limit(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a valid pointer to one rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the allocator's free memory to the system (glibc keeps it in its
/// arenas otherwise).
pub(crate) fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// At most `arenas` malloc arenas: glibc gives threads that meet contention
/// arenas of their own (up to eight per core), each keeping its own peak of
/// freed memory; a server with a thread per connection would keep many.
pub fn limit_malloc_arenas(arenas: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator settings; it takes plain integers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = arenas;
}

/// Keeps the allocator from giving request and reply buffers back to the
/// system between requests. glibc serves a block of 128 KiB or more with an
/// mmap of its own (until a free raises that threshold) and gives back the
/// free top of a heap beyond 128 KiB: a server reading 1 MiB per request on
/// several threads then got fresh pages, which the kernel zeroes, for about a
/// fifth of its reads (62,000–71,000 page faults per GiB read; 6,000–7,000
/// with these settings). Blocks up to the largest frame now come from the heaps, and each
/// heap keeps up to 16 MiB free at its top. What ended connections leave is
/// still given back (see `ReplyMemory::trim_if_returned`).
pub fn keep_request_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator settings; it takes plain integers.
    unsafe {
        libc::mallopt(
            libc::M_MMAP_THRESHOLD,
            ferry_common::frame::MAX_FRAME as i32,
        );
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

/// A new inotify instance, non-blocking and closed on exec.
pub(crate) fn inotify_init() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; the flags are valid for inotify_init1.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watches the directory open as `dir` (any descriptor, `O_PATH` included)
/// for the events in `mask`; returns the watch descriptor. The directory is
/// named through `/proc/self/fd`, so the watch lands on exactly the directory
/// that descriptor holds, whatever its path has become.
pub(crate) fn inotify_watch_fd(
    inotify: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    mask: u32,
) -> io::Result<i32> {
    let path = CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is NUL-terminated and outlives the call; `inotify` is an
    // open descriptor borrowed for the call.
    let wd = unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), path.as_ptr(), mask) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(wd)
}

/// Removes a watch; one the kernel already dropped (its directory is gone)
/// answers EINVAL, which callers may ignore.
pub(crate) fn inotify_unwatch(inotify: BorrowedFd<'_>, wd: i32) -> io::Result<()> {
    // SAFETY: no pointers; `inotify` is an open descriptor borrowed for the call.
    if unsafe { libc::inotify_rm_watch(inotify.as_raw_fd(), wd) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout_ms` for `fd` to become readable; whether it did. A
/// signal ends the wait early (answered as not readable).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, borrowed for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(n > 0 && pfd.revents & libc::POLLIN != 0)
}

/// `read(2)` into `buf` from a non-blocking descriptor: how many bytes came;
/// 0 when nothing is waiting.
pub(crate) fn read_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length for the call.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}
