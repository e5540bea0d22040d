//! Errors as they travel: a positive errno value.
//!
//! The server turns every failed system call into its errno and the FUSE client
//! hands that number to the kernel unchanged, so an application sees exactly the
//! error the server's filesystem gave (ENOENT, EEXIST, ENOTEMPTY, ENOSPC, ...).
//!
//! Unchanged, that is, within what the kernel takes: a FUSE reply's error must
//! lie in 1..=[`MAX_ERRNO`] (values from 512 up are the kernel's own restart
//! codes), and a reply outside it is refused by the kernel, which leaves the
//! application's call waiting. So every value is checked where it is made,
//! decoding from the wire included: anything else reads as EIO.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;

/// The largest errno value the kernel accepts in a FUSE reply.
pub const MAX_ERRNO: i32 = 511;

/// An errno value in 1..=[`MAX_ERRNO`]. `Errno(0)` never travels: a value that is
/// not positive is read as EIO so that a confused peer can never make a failure
/// look like success, and one the kernel would refuse is read as EIO too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "i32", into = "i32")]
pub struct Errno(i32);

impl From<i32> for Errno {
    /// Decoding goes through here: a peer's value is checked like any other.
    fn from(code: i32) -> Errno {
        Errno::new(code)
    }
}

impl From<Errno> for i32 {
    fn from(errno: Errno) -> i32 {
        errno.code()
    }
}

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

    /// Wraps a raw errno value; anything outside 1..=[`MAX_ERRNO`] becomes EIO.
    pub fn new(code: i32) -> Errno {
        if (1..=MAX_ERRNO).contains(&code) {
            Errno(code)
        } else {
            Errno::EIO
        }
    }

    /// The raw value, always in 1..=[`MAX_ERRNO`].
    pub fn code(self) -> i32 {
        if (1..=MAX_ERRNO).contains(&self.0) {
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
    fn values_the_kernel_would_refuse_read_as_eio() {
        for bad in [512, 513, 1000, i32::MAX, i32::MIN, -1, 0] {
            assert_eq!(Errno::new(bad).code(), libc::EIO, "{bad}");
        }
        assert_eq!(Errno::new(MAX_ERRNO).code(), MAX_ERRNO);
        assert_eq!(Errno::new(libc::EHWPOISON), Errno::new(libc::EHWPOISON));
    }

    #[test]
    fn decoding_a_peers_errno_checks_it() {
        for (sent, read) in [
            (600, libc::EIO),
            (512, libc::EIO),
            (0, libc::EIO),
            (-5, libc::EIO),
            (libc::ENOSPC, libc::ENOSPC),
        ] {
            let frame = crate::frame::encode(&sent).unwrap();
            let errno: Errno = crate::frame::decode(&frame[4..]).unwrap();
            assert_eq!(errno.code(), read, "{sent}");
        }
        // And what is sent is the value itself.
        let frame = crate::frame::encode(&Errno::ENOENT).unwrap();
        assert_eq!(
            crate::frame::decode::<i32>(&frame[4..]).unwrap(),
            libc::ENOENT
        );
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let e = io::Error::from_raw_os_error(libc::ENOTEMPTY);
        assert_eq!(Errno::from(e), Errno::ENOTEMPTY);
        let e = io::Error::new(io::ErrorKind::NotFound, "gone");
        assert_eq!(Errno::from(e), Errno::ENOENT);
    }
}
