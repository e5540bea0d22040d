//! Errors as they travel: a positive errno value.
//!
//! The server turns every failed system call into its errno and the FUSE client
//! hands that number to the kernel unchanged, so an application sees exactly the
//! error the server's filesystem gave (ENOENT, EEXIST, ENOTEMPTY, ENOSPC, ...).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;

/// A positive errno value. `Errno(0)` never travels: a value that is not positive
/// is read as EIO so that a confused peer can never make a failure look like success.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Errno(i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ELOOP: Errno = Errno(libc::ELOOP);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ENOTCONN: Errno = Errno(libc::ENOTCONN);
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);
    pub const EPROTO: Errno = Errno(libc::EPROTO);

    /// Wraps a raw errno value; anything not positive becomes EIO.
    pub fn new(code: i32) -> Errno {
        if code > 0 {
            Errno(code)
        } else {
            Errno::EIO
        }
    }

    /// The raw value, always positive.
    pub fn code(self) -> i32 {
        if self.0 > 0 {
            self.0
        } else {
            libc::EIO
        }
    }

    /// The errno of the last failed libc call on this thread.
    pub fn last() -> Errno {
        Errno::from(io::Error::last_os_error())
    }
}

impl From<io::Error> for Errno {
    fn from(err: io::Error) -> Errno {
        match err.raw_os_error() {
            Some(code) => Errno::new(code),
            None => match err.kind() {
                io::ErrorKind::NotFound => Errno::ENOENT,
                io::ErrorKind::PermissionDenied => Errno::EACCES,
                io::ErrorKind::AlreadyExists => Errno::EEXIST,
                io::ErrorKind::InvalidInput => Errno::EINVAL,
                io::ErrorKind::TimedOut => Errno::ETIMEDOUT,
                _ => Errno::EIO,
            },
        }
    }
}

impl From<Errno> for io::Error {
    fn from(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno.code())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.code()))
    }
}

impl std::error::Error for Errno {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_positive_values_read_as_eio() {
        assert_eq!(Errno::new(0).code(), libc::EIO);
        assert_eq!(Errno::new(-5).code(), libc::EIO);
        assert_eq!(Errno::new(libc::ENOENT), Errno::ENOENT);
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let e = io::Error::from_raw_os_error(libc::ENOTEMPTY);
        assert_eq!(Errno::from(e), Errno::ENOTEMPTY);
        let e = io::Error::new(io::ErrorKind::NotFound, "gone");
        assert_eq!(Errno::from(e), Errno::ENOENT);
    }
}
