//! Paths relative to the export root.
//!
//! Files are named by their path below the root (as sshfs does), which survives a
//! server restart. A [`RelPath`] is a sequence of *components*; the empty path is the
//! root itself. Every component must be a plain name: not empty, not `.` or `..`, no
//! `/`, no NUL, at most 255 bytes. These string checks are the first fence only;
//! the server's confinement (`openat2` with `RESOLVE_BENEATH`) is what actually
//! keeps requests inside the export.

use crate::errno::Errno;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// The longest single name Linux filesystems accept.
pub const NAME_MAX: usize = 255;
/// The longest relative path accepted, as `PATH_MAX`.
pub const PATH_MAX: usize = 4096;

/// A path relative to the export root: components joined by `/`, no leading or
/// trailing slash, empty for the root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct RelPath(#[serde(with = "serde_bytes")] Vec<u8>);

/// Lets ordered maps of paths be searched by raw byte ranges (a subtree is the
/// range between `dir/` and `dir0`); the order is the same, bytewise.
impl std::borrow::Borrow<[u8]> for RelPath {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl RelPath {
    /// The export root.
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    /// Parses a user-facing path such as `docs/a.txt`, `/docs/a.txt` or `./docs//a.txt`:
    /// leading and repeated slashes and `.` components are dropped; `..` is refused.
    pub fn parse(text: &str) -> Result<RelPath, Errno> {
        let mut path = RelPath::root();
        for part in text.split('/') {
            if part.is_empty() || part == "." {
                continue;
            }
            path = path.join(OsStr::new(part))?;
        }
        Ok(path)
    }

    /// Checks the invariants listed in the module documentation. A path decoded
    /// from the wire has not been checked (deserializing takes the bytes as they
    /// come), so the server validates every one before it looks at it.
    pub fn validate(&self) -> Result<(), Errno> {
        if self.0.len() > PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.0.is_empty() {
            return Ok(());
        }
        for component in self.0.split(|b| *b == b'/') {
            check_name(component)?;
        }
        Ok(())
    }

    /// `self/name`, refusing a name that is not a single plain component.
    pub fn join(&self, name: &OsStr) -> Result<RelPath, Errno> {
        let name = name.as_bytes();
        check_name(name)?;
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        if bytes.len() > PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(RelPath(bytes))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    /// The parent directory and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &OsStr)> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => Some((
                RelPath(self.0[..i].to_vec()),
                OsStr::from_bytes(&self.0[i + 1..]),
            )),
            None => Some((RelPath::root(), OsStr::from_bytes(&self.0))),
        }
    }

    /// The last component; empty for the root.
    pub fn file_name(&self) -> &OsStr {
        self.split_last().map(|(_, name)| name).unwrap_or_default()
    }

    /// Whether `self` is `ancestor` or lies below it.
    pub fn starts_with(&self, ancestor: &RelPath) -> bool {
        if ancestor.0.is_empty() {
            return true;
        }
        self.0.starts_with(&ancestor.0)
            && (self.0.len() == ancestor.0.len() || self.0[ancestor.0.len()] == b'/')
    }

    /// Replaces the prefix `from` by `to`; `None` when `self` is not below `from`.
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> Option<RelPath> {
        if !self.starts_with(from) {
            return None;
        }
        let rest = &self.0[from.0.len()..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        let mut bytes = to.0.clone();
        if !bytes.is_empty() && !rest.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(rest);
        Some(RelPath(bytes))
    }
}

/// The checks one name must pass.
pub fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name == b"." || name == b".." {
        return Err(Errno::EINVAL);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&String::from_utf8_lossy(&self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    /// A path as decoding builds it from the wire: any bytes, unchecked.
    fn wire(bytes: &[u8]) -> RelPath {
        let frame = crate::frame::encode(&serde_bytes::Bytes::new(bytes)).unwrap();
        let path: RelPath = crate::frame::decode(&frame[4..]).unwrap();
        assert_eq!(path.as_bytes(), bytes);
        path
    }

    #[test]
    fn parse_drops_slashes_and_dots() {
        assert_eq!(p("/a//b/./c/").as_bytes(), b"a/b/c");
        assert!(p("/").is_root());
        assert!(p("").is_root());
        assert_eq!(RelPath::parse("a/../b"), Err(Errno::EINVAL));
    }

    #[test]
    fn wire_paths_are_checked_component_by_component() {
        for bad in [
            &b"/etc/passwd"[..],
            b"..",
            b"a/../../etc",
            b"a//b",
            b"a/",
            b"./a",
            b"a/\0b",
            b"a/./b",
        ] {
            assert!(wire(bad).validate().is_err(), "{:?}", bad);
        }
        assert!(wire(b"a/b c/.hidden/..x").validate().is_ok());
        assert!(wire(b"").validate().is_ok());
        assert_eq!(wire(&[b'x'; 256]).validate(), Err(Errno::ENAMETOOLONG));
        assert_eq!(
            wire(&[b'x'; PATH_MAX + 1]).validate(),
            Err(Errno::ENAMETOOLONG)
        );
    }

    #[test]
    fn join_refuses_anything_but_one_name() {
        let root = RelPath::root();
        assert_eq!(root.join(OsStr::new("a")).unwrap().as_bytes(), b"a");
        assert!(root.join(OsStr::new("a/b")).is_err());
        assert!(root.join(OsStr::new("..")).is_err());
        assert!(root.join(OsStr::new("")).is_err());
        assert!(root.join(OsStr::from_bytes(b"a\0")).is_err());
    }

    #[test]
    fn split_and_rebase() {
        let abc = p("a/b/c");
        let (parent, name) = abc.split_last().unwrap();
        assert_eq!(parent, p("a/b"));
        assert_eq!(name, "c");
        let c = p("c");
        let (parent, name) = c.split_last().unwrap();
        assert!(parent.is_root());
        assert_eq!(name, "c");
        assert!(RelPath::root().split_last().is_none());

        assert!(p("a/b").starts_with(&p("a")));
        assert!(!p("ab/c").starts_with(&p("a")));
        assert_eq!(p("a/b/c").rebase(&p("a/b"), &p("x")), Some(p("x/c")));
        assert_eq!(p("a/b").rebase(&p("a/b"), &p("y/z")), Some(p("y/z")));
        assert_eq!(p("ab").rebase(&p("a"), &p("x")), None);
    }
}
