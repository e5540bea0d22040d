//! Paths relative to the export root.
//!
//! Files are named by their path below the root (as sshfs does), which survives a
//! server restart. A [`RelPath`] is a sequence of *components*; the empty path is the
//! root itself. Every component must be a plain name: not empty, not `.` or `..`, no
//! `/`, no NUL, at most 255 bytes. These string checks are the first fence only;
//! the server's confinement (`openat2` with `RESOLVE_BENEATH`) is what actually
//! keeps requests inside the export.
//!
//! # How long a path may be
//!
//! A local disk has no limit on how deep a tree goes: `PATH_MAX` (4096) bounds
//! what one system call takes, and a program that goes deeper works relative to
//! a directory it holds open (`openat`, `chdir`); package managers and backups
//! build such trees. The kernel hands the mount one name at a time, so ferry
//! names nodes by paths of any length up to [`MAX_PATH`], resolved on the server
//! in pieces below `PATH_MAX`. The bounds are there so that one request's work
//! and the memory it takes stay small: [`MAX_PATH`] is far below the largest
//! frame (4 MiB, and a rename carries two paths), and [`MAX_DEPTH`] bounds the
//! lookups one path costs the server and the length of the paths the mount
//! keeps for the nodes the kernel holds.

use crate::errno::Errno;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// The longest single name Linux filesystems accept.
pub const NAME_MAX: usize = 255;
/// The longest path one system call takes (with its NUL): the server resolves a
/// longer path in pieces below it.
pub const PATH_MAX: usize = 4096;
/// The longest relative path accepted: 64 KiB, sixteen times `PATH_MAX`.
pub const MAX_PATH: usize = 64 * 1024;
/// The most components a path may have.
pub const MAX_DEPTH: usize = 8192;

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
        if self.0.len() > MAX_PATH {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.0.is_empty() {
            return Ok(());
        }
        let mut depth = 0;
        for component in self.0.split(|b| *b == b'/') {
            check_name(component)?;
            depth += 1;
        }
        if depth > MAX_DEPTH {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(())
    }

    /// How many components the path has; 0 for the root.
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|b| **b == b'/').count() + 1
        }
    }

    /// The path cut, at component boundaries, into relative paths of at most
    /// `max` bytes each, in order (none for the root); `max` must be at least
    /// [`NAME_MAX`], so that every component fits. For a path that passed
    /// [`validate`](Self::validate).
    pub fn pieces(&self, max: usize) -> Vec<&[u8]> {
        debug_assert!(max >= NAME_MAX);
        let mut pieces = Vec::new();
        let mut rest = self.0.as_slice();
        while rest.len() > max {
            // The last `/` that leaves a piece of at most `max` bytes; every
            // component is at most NAME_MAX <= max long, so there is one.
            match rest[..=max].iter().rposition(|b| *b == b'/') {
                Some(cut) if cut > 0 => {
                    pieces.push(&rest[..cut]);
                    rest = &rest[cut + 1..];
                }
                // A component longer than `max`: unchecked input; keep it whole
                // and let the system call refuse it.
                _ => break,
            }
        }
        if !rest.is_empty() {
            pieces.push(rest);
        }
        pieces
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
        if bytes.len() > MAX_PATH || self.depth() >= MAX_DEPTH {
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
            wire(&[b'x'; MAX_PATH + 1]).validate(),
            Err(Errno::ENAMETOOLONG)
        );
    }

    /// `count` components of `len` bytes each, joined one by one.
    fn deep(count: usize, len: usize) -> Result<RelPath, Errno> {
        let name = "d".repeat(len);
        let mut path = RelPath::root();
        for _ in 0..count {
            path = path.join(OsStr::new(&name))?;
        }
        Ok(path)
    }

    #[test]
    fn paths_reach_far_beyond_path_max_and_stop_at_the_documented_bounds() {
        // 32 KiB: 128 components of 255 bytes.
        let long = deep(128, 255).unwrap();
        assert_eq!(long.as_bytes().len(), 128 * 256 - 1);
        assert!(long.validate().is_ok());
        assert_eq!(long.depth(), 128);
        // The length bound: 64 KiB.
        assert_eq!(deep(257, 255).unwrap_err(), Errno::ENAMETOOLONG);
        assert_eq!(deep(256, 255).unwrap().as_bytes().len(), MAX_PATH - 1);
        // The depth bound, with short names.
        let names = |n: usize| {
            let mut bytes = vec![&b"a/"[..]; n].concat();
            bytes.pop();
            wire(&bytes)
        };
        let deepest = names(MAX_DEPTH);
        assert!(deepest.validate().is_ok());
        assert_eq!(deepest.depth(), MAX_DEPTH);
        assert_eq!(
            deepest.join(OsStr::new("a")).unwrap_err(),
            Errno::ENAMETOOLONG
        );
        assert!(names(MAX_DEPTH - 1).join(OsStr::new("a")).is_ok());
        assert_eq!(names(MAX_DEPTH + 1).validate(), Err(Errno::ENAMETOOLONG));
        assert_eq!(RelPath::root().depth(), 0);
    }

    #[test]
    fn pieces_cut_at_slashes_below_the_limit() {
        let path = deep(100, 200).unwrap();
        let pieces = path.pieces(PATH_MAX - 1);
        assert!(pieces.len() > 1);
        for piece in &pieces {
            assert!(piece.len() < PATH_MAX);
            assert!(!piece.starts_with(b"/") && !piece.ends_with(b"/"));
        }
        assert_eq!(pieces.join(&b'/'), path.as_bytes());
        // Exactly at the limit: one piece; one byte over: two.
        let name = "x".repeat(254);
        let mut exact = RelPath::root();
        while exact.as_bytes().len() + 255 <= 1020 {
            exact = exact.join(OsStr::new(&name)).unwrap();
        }
        assert_eq!(exact.as_bytes().len(), 1019);
        assert_eq!(exact.pieces(1019), vec![exact.as_bytes()]);
        assert_eq!(exact.pieces(1018).len(), 2);
        assert!(RelPath::root().pieces(PATH_MAX - 1).is_empty());
        assert_eq!(p("a").pieces(NAME_MAX), vec![&b"a"[..]]);
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
