//! Extended attributes of the export's nodes.
//!
//! A node is reached as `/proc/self/fd/<parent>/<name>`: the parent directory is
//! a descriptor opened beneath the root with the usual confinement, and the last
//! name is a single checked component that the `l*xattr` calls do not follow.
//! So nothing is opened — a FIFO cannot block us, a device's driver is never
//! reached — and a symlink's own attributes are meant, never its target's.
//!
//! # Namespaces
//!
//! `user.*`, `trusted.*` and `security.*` pass through with whatever the
//! server's privileges allow (a server not running as root gets EPERM for the
//! last two, as a local caller would). The client's kernel has already checked
//! the caller: only a privileged caller reaches `trusted.*`, and setting
//! `security.capability` needs CAP_SETFCAP there.
//!
//! `system.*` — POSIX ACLs — is refused with EOPNOTSUPP and left out of
//! listings. The client's kernel checks permissions from the mode bits alone
//! (`default_permissions`, no FUSE_POSIX_ACL), so an ACL set through the mount
//! would be enforced on the server but not on the client; better that `setfacl`
//! and `cp -a` hear "not supported" than believe in a grant nobody applies.

use super::{sys, ExportRoot, Node};
use ferry_common::{Errno, RelPath};
use std::ffi::CString;
use std::os::fd::AsRawFd;

/// The largest value (and name list) Linux allows: `XATTR_SIZE_MAX`.
pub(super) const XATTR_SIZE_MAX: usize = 65_536;

/// Names in this namespace are refused; see the module documentation.
const REFUSED_PREFIX: &[u8] = b"system.";

fn check_name(name: &[u8]) -> Result<CString, Errno> {
    if name.starts_with(REFUSED_PREFIX) {
        return Err(Errno::ENOTSUP);
    }
    if name.is_empty() {
        return Err(Errno::EINVAL);
    }
    sys::cstring(name)
}

/// `/proc/self/fd/<parent>/<name>`: the node itself, reached through its
/// already-confined parent.
fn node_path(node: &Node<'_>) -> Result<CString, Errno> {
    let mut path = format!("/proc/self/fd/{}/", node.dir().as_raw_fd()).into_bytes();
    path.extend_from_slice(node.name.to_bytes());
    sys::cstring(&path)
}

/// Calls `get` with a buffer until the answer fits: first asking for the size
/// (with an empty buffer), then reading, and asking again if the value grew in
/// between.
fn read_sized(mut get: impl FnMut(&mut [u8]) -> Result<usize, Errno>) -> Result<Vec<u8>, Errno> {
    for _ in 0..4 {
        let size = get(&mut [])?;
        let mut buf = vec![0u8; size.min(XATTR_SIZE_MAX)];
        match get(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e == Errno::ERANGE => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::ERANGE)
}

/// The names in a `listxattr` answer without the refused namespace.
fn visible_names(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(REFUSED_PREFIX) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

impl ExportRoot {
    /// The value of the extended attribute `name` of `path` (never following a
    /// symlink); ENODATA when there is none.
    pub fn get_xattr(&self, path: &RelPath, name: &[u8]) -> Result<Vec<u8>, Errno> {
        let name = check_name(name)?;
        let node = self.locate(path)?;
        let target = node_path(&node)?;
        read_sized(|buf| sys::lgetxattr(&target, &name, buf))
    }

    /// The node's attribute names, each followed by a NUL.
    pub fn list_xattr(&self, path: &RelPath) -> Result<Vec<u8>, Errno> {
        let node = self.locate(path)?;
        let target = node_path(&node)?;
        let names = read_sized(|buf| sys::llistxattr(&target, buf))?;
        Ok(visible_names(&names))
    }

    /// `lsetxattr`; of the flags only `XATTR_CREATE` and `XATTR_REPLACE` are
    /// accepted (EINVAL otherwise).
    pub fn set_xattr(
        &self,
        path: &RelPath,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return Err(Errno::EINVAL);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(Errno::new(libc::E2BIG));
        }
        let name = check_name(name)?;
        let node = self.locate(path)?;
        sys::lsetxattr(&node_path(&node)?, &name, value, flags)
    }

    pub fn remove_xattr(&self, path: &RelPath, name: &[u8]) -> Result<(), Errno> {
        let name = check_name(name)?;
        let node = self.locate(path)?;
        sys::lremovexattr(&node_path(&node)?, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_leave_out_the_refused_namespace() {
        let list = b"user.a\0system.posix_acl_access\0security.selinux\0user.b\0";
        assert_eq!(visible_names(list), b"user.a\0security.selinux\0user.b\0");
        assert_eq!(visible_names(b""), b"");
    }

    #[test]
    fn refused_and_empty_names() {
        assert_eq!(
            check_name(b"system.posix_acl_access").unwrap_err(),
            Errno::ENOTSUP
        );
        assert_eq!(check_name(b"").unwrap_err(), Errno::EINVAL);
        assert!(check_name(b"user.x").is_ok());
    }
}
