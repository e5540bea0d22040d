//! `InodeTable`: the mapping between the kernel's inode numbers and remote paths.
//!
//! The contract with the kernel, enforced here and nowhere else:
//!
//! - the root is inode 1 and is never forgotten;
//! - every entry handed to the kernel (lookup, create, mkdir, readdirplus, ...)
//!   adds one to that inode's lookup count; `forget` subtracts (saturating), and an
//!   inode whose count reaches zero is dropped;
//! - inode numbers are never reused within a mount, so a stale number can never
//!   name another file;
//! - a path maps to at most one inode. Rename moves the inode (and every inode
//!   below it) to the new path; unlink and rename-over *detach* the inode that lived
//!   at the path: it keeps its number until forgotten, but no longer names a path,
//!   so nothing can reach the new occupant of that path through it. Open files stay
//!   usable because the server holds them by handle.

use ferry_common::{Attr, RelPath};
use std::collections::HashMap;

pub const ROOT_INO: u64 = 1;

#[derive(Debug)]
struct Node {
    /// `None` once detached by unlink or rename-over.
    path: Option<RelPath>,
    lookups: u64,
    /// The file's attributes when it was last opened, for close-to-open caching.
    opened_as: Option<Attr>,
    /// Server handles open on this inode: a detached inode is reached through one.
    handles: Vec<u64>,
}

#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<RelPath, u64>,
    next: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        InodeTable::new()
    }
}

impl InodeTable {
    pub fn new() -> InodeTable {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                path: Some(RelPath::root()),
                lookups: 1,
                opened_as: None,
                handles: Vec::new(),
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(RelPath::root(), ROOT_INO);
        InodeTable {
            nodes,
            by_path,
            next: ROOT_INO + 1,
        }
    }

    /// The path an inode names; `None` for an unknown or detached inode.
    pub fn path(&self, ino: u64) -> Option<&RelPath> {
        self.nodes.get(&ino).and_then(|n| n.path.as_ref())
    }

    /// The inode at `path` without counting a lookup.
    pub fn ino_of(&self, path: &RelPath) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// Hands an entry for `path` to the kernel: the existing inode or a new one,
    /// with its lookup count raised by one.
    pub fn remember(&mut self, path: &RelPath) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.lookups = node.lookups.saturating_add(1);
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                path: Some(path.clone()),
                lookups: 1,
                opened_as: None,
                handles: Vec::new(),
            },
        );
        self.by_path.insert(path.clone(), ino);
        ino
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            if let Some(node) = self.nodes.remove(&ino) {
                if let Some(path) = node.path {
                    if self.by_path.get(&path) == Some(&ino) {
                        self.by_path.remove(&path);
                    }
                }
            }
        }
    }

    /// The node at `path` (and anything below it) was removed on the server.
    pub fn detach(&mut self, path: &RelPath) {
        let gone: Vec<RelPath> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in gone {
            if let Some(ino) = self.by_path.remove(&p) {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.path = None;
                }
            }
        }
    }

    /// `from` was renamed to `to` on the server: whatever lived at `to` is detached
    /// and every inode at or below `from` moves along.
    pub fn rename(&mut self, from: &RelPath, to: &RelPath) {
        if from == to {
            return;
        }
        self.detach(to);
        let moved: Vec<(RelPath, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, ino)| (p.clone(), *ino))
            .collect();
        for (old, _) in &moved {
            self.by_path.remove(old);
        }
        for (old, ino) in moved {
            if let Some(new) = old.rebase(from, to) {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.path = Some(new.clone());
                }
                self.by_path.insert(new, ino);
            }
        }
    }

    /// `a` and `b` swapped places (RENAME_EXCHANGE).
    pub fn exchange(&mut self, a: &RelPath, b: &RelPath) {
        let a_side: Vec<(RelPath, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(a))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        let b_side: Vec<(RelPath, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(b))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, _) in a_side.iter().chain(b_side.iter()) {
            self.by_path.remove(p);
        }
        for (old, ino, from, to) in a_side
            .into_iter()
            .map(|(p, i)| (p, i, a, b))
            .chain(b_side.into_iter().map(|(p, i)| (p, i, b, a)))
        {
            if let Some(new) = old.rebase(from, to) {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.path = Some(new.clone());
                }
                self.by_path.insert(new, ino);
            }
        }
    }

    /// Records the attributes a file had when it was opened; returns whether its
    /// content is unchanged since the previous open (so the kernel may keep its
    /// cached pages).
    pub fn note_open(&mut self, ino: u64, attr: &Attr) -> bool {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        let unchanged = node.opened_as.is_some_and(|old| old.same_content(attr));
        node.opened_as = Some(*attr);
        unchanged
    }

    /// A server handle was opened on `ino`.
    pub fn add_handle(&mut self, ino: u64, handle: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.handles.push(handle);
        }
    }

    /// The handle was closed.
    pub fn remove_handle(&mut self, ino: u64, handle: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.handles.retain(|h| *h != handle);
        }
    }

    /// How to reach `ino` on the server: its path, and a handle to use instead
    /// when the inode is detached (unlinked or renamed over while open).
    /// `Err(ENOENT)` when neither exists.
    pub fn locate(&self, ino: u64) -> Result<(RelPath, Option<u64>), ferry_common::Errno> {
        let node = self.nodes.get(&ino).ok_or(ferry_common::Errno::ENOENT)?;
        match (&node.path, node.handles.first()) {
            (Some(path), _) => Ok((path.clone(), None)),
            (None, Some(&h)) => Ok((RelPath::root(), Some(h))),
            (None, None) => Err(ferry_common::Errno::ENOENT),
        }
    }

    /// The lookup count of an inode (for tests and diagnostics).
    pub fn lookups(&self, ino: u64) -> Option<u64> {
        self.nodes.get(&ino).map(|n| n.lookups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn root_is_one_and_survives_forget() {
        let mut t = InodeTable::new();
        assert_eq!(t.path(ROOT_INO), Some(&RelPath::root()));
        t.forget(ROOT_INO, 1000);
        assert_eq!(t.path(ROOT_INO), Some(&RelPath::root()));
    }

    #[test]
    fn lookups_count_and_forget_saturates() {
        let mut t = InodeTable::new();
        let a = t.remember(&p("a"));
        assert_eq!(t.remember(&p("a")), a);
        assert_eq!(t.lookups(a), Some(2));
        t.forget(a, 1);
        assert_eq!(t.path(a), Some(&p("a")));
        t.forget(a, 5);
        assert_eq!(t.path(a), None);
        assert_eq!(t.ino_of(&p("a")), None);
        t.forget(a, 1); // forgetting an unknown inode is harmless
    }

    #[test]
    fn numbers_are_never_reused() {
        let mut t = InodeTable::new();
        let a = t.remember(&p("a"));
        t.forget(a, 1);
        let again = t.remember(&p("a"));
        assert_ne!(a, again);
        assert!(again > a);
    }

    #[test]
    fn rename_moves_the_subtree_and_detaches_the_target() {
        let mut t = InodeTable::new();
        let d = t.remember(&p("d"));
        let f = t.remember(&p("d/sub/f"));
        let victim = t.remember(&p("e"));
        let bystander = t.remember(&p("dd"));
        t.rename(&p("d"), &p("e"));
        assert_eq!(t.path(d), Some(&p("e")));
        assert_eq!(t.path(f), Some(&p("e/sub/f")));
        assert_eq!(t.path(victim), None, "the old occupant is detached");
        assert_eq!(
            t.lookups(victim),
            Some(1),
            "but keeps its number until forgotten"
        );
        assert_eq!(t.path(bystander), Some(&p("dd")));
        assert_eq!(t.ino_of(&p("e")), Some(d));
        assert_eq!(t.ino_of(&p("d")), None);
        // Forgetting the detached victim must not disturb the new occupant.
        t.forget(victim, 1);
        assert_eq!(t.ino_of(&p("e")), Some(d));
    }

    #[test]
    fn unlink_detaches() {
        let mut t = InodeTable::new();
        let f = t.remember(&p("f"));
        t.detach(&p("f"));
        assert_eq!(t.path(f), None);
        let g = t.remember(&p("f"));
        assert_ne!(f, g);
        t.forget(f, 1);
        assert_eq!(t.ino_of(&p("f")), Some(g));
    }

    #[test]
    fn a_detached_inode_is_reached_through_an_open_handle() {
        let mut t = InodeTable::new();
        let f = t.remember(&p("f"));
        t.add_handle(f, 7);
        assert_eq!(t.locate(f).unwrap(), (p("f"), None));
        t.detach(&p("f"));
        assert_eq!(t.locate(f).unwrap().1, Some(7));
        t.remove_handle(f, 7);
        assert!(t.locate(f).is_err());
    }

    #[test]
    fn exchange_swaps_both_subtrees() {
        let mut t = InodeTable::new();
        let a = t.remember(&p("a"));
        let ax = t.remember(&p("a/x"));
        let b = t.remember(&p("b"));
        t.exchange(&p("a"), &p("b"));
        assert_eq!(t.path(a), Some(&p("b")));
        assert_eq!(t.path(ax), Some(&p("b/x")));
        assert_eq!(t.path(b), Some(&p("a")));
    }

    #[test]
    fn close_to_open_keeps_cache_only_when_unchanged() {
        use ferry_common::{FileKind, Timestamp};
        let mut attr = Attr::blank(FileKind::File);
        attr.size = 10;
        attr.mtime = Timestamp { secs: 1, nanos: 0 };
        attr.ino = 5;
        let mut t = InodeTable::new();
        let f = t.remember(&p("f"));
        assert!(!t.note_open(f, &attr), "first open has nothing cached");
        assert!(t.note_open(f, &attr));
        attr.mtime = Timestamp { secs: 2, nanos: 0 };
        assert!(!t.note_open(f, &attr), "changed on the server");
    }
}
