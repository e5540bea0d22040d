//! The server's system calls outside the export, as safe wrappers: the process's
//! descriptor limit and the allocator's trimming. (The export's file system
//! calls are in `export::sys`; socket options in `ferry_common::socket`.)

use std::io;

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
