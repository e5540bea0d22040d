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
//! - one inode per server file: every hard link of a file (the same server device
//!   and inode number, [`FileId`]) is the same inode, so `stat` shows one inode with
//!   its link count and a change through one name is seen through all. An inode
//!   therefore has one or more paths; a path maps to at most one inode. Directories
//!   cannot be hard linked and always have exactly one path;
//! - rename moves a path (and every path below it) to its new place; unlink and
//!   rename-over remove the path from its inode. An inode left with no path is
//!   *detached*: it keeps its number until forgotten, but nothing can reach the new
//!   occupant of its old path through it. Open files stay usable because the server
//!   holds them by handle;
//! - a lookup that finds another server file at a known path (replaced by another
//!   client) moves the path to a new inode rather than changing what the old
//!   inode names.

use ferry_common::{Attr, Errno, FileId, FileKind, RelPath};
use std::collections::HashMap;

pub const ROOT_INO: u64 = 1;

#[derive(Debug)]
struct Node {
    /// The names of this node, the most recently confirmed first; empty once
    /// detached by unlink or rename-over.
    paths: Vec<RelPath>,
    /// The server file; `None` only for the root.
    id: Option<FileId>,
    kind: FileKind,
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
    /// Non-directory nodes that still have a path, by server file: how a new name
    /// of a known file (a hard link) finds its inode.
    by_id: HashMap<FileId, u64>,
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
                paths: vec![RelPath::root()],
                id: None,
                kind: FileKind::Directory,
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
            by_id: HashMap::new(),
            next: ROOT_INO + 1,
        }
    }

    /// The path an inode names (its most recently confirmed one); `None` for an
    /// unknown or detached inode.
    pub fn path(&self, ino: u64) -> Option<&RelPath> {
        self.nodes.get(&ino).and_then(|n| n.paths.first())
    }

    /// The inode at `path` without counting a lookup.
    pub fn ino_of(&self, path: &RelPath) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// Hands an entry for `path`, whose attributes the server just gave as
    /// `attr`, to the kernel: the inode of that server file (found by path, or by
    /// its identity when `path` is another hard link of a known file) or a new
    /// one, with its lookup count raised by one.
    pub fn remember(&mut self, path: &RelPath, attr: &Attr) -> u64 {
        let id = attr.file_id();
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                if node.id.is_none_or(|known| known == id) && node.kind == attr.kind {
                    node.id = Some(id);
                    node.lookups = node.lookups.saturating_add(1);
                    Self::confirm(node, path);
                    return ino;
                }
            }
            // Another file lives at this path now (replaced on the server).
            self.detach(path);
        }
        if attr.kind != FileKind::Directory {
            if let Some(&ino) = self.by_id.get(&id) {
                if let Some(node) = self.nodes.get_mut(&ino).filter(|n| n.kind == attr.kind) {
                    node.lookups = node.lookups.saturating_add(1);
                    Self::confirm(node, path);
                    self.by_path.insert(path.clone(), ino);
                    return ino;
                }
            }
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                paths: vec![path.clone()],
                id: Some(id),
                kind: attr.kind,
                lookups: 1,
                opened_as: None,
                handles: Vec::new(),
            },
        );
        self.by_path.insert(path.clone(), ino);
        if attr.kind != FileKind::Directory {
            self.by_id.insert(id, ino);
        }
        ino
    }

    /// Puts `path` first among the node's paths: the name just seen to work is
    /// the one to use.
    fn confirm(node: &mut Node, path: &RelPath) {
        node.paths.retain(|p| p != path);
        node.paths.insert(0, path.clone());
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
                for path in node.paths {
                    if self.by_path.get(&path) == Some(&ino) {
                        self.by_path.remove(&path);
                    }
                }
                self.unindex(ino, node.id);
            }
        }
    }

    fn unindex(&mut self, ino: u64, id: Option<FileId>) {
        if let Some(id) = id {
            if self.by_id.get(&id) == Some(&ino) {
                self.by_id.remove(&id);
            }
        }
    }

    /// Removes `path` from the node it names, if any.
    fn drop_path(&mut self, path: &RelPath) -> Option<u64> {
        let ino = self.by_path.remove(path)?;
        let node = self.nodes.get_mut(&ino)?;
        node.paths.retain(|p| p != path);
        if node.paths.is_empty() {
            // Detached: a later lookup of another name of the file makes a new
            // inode, so a server inode number reused for a new file is never
            // confused with this one.
            let id = node.id;
            self.unindex(ino, id);
        }
        Some(ino)
    }

    /// The name at `path` (and anything below it) was removed on the server.
    pub fn detach(&mut self, path: &RelPath) {
        let gone: Vec<RelPath> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in gone {
            self.drop_path(&p);
        }
    }

    /// Gives the node at `old` the path `new` instead.
    fn move_path(&mut self, old: &RelPath, new: RelPath, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            // One occurrence: exchanging two names of one file moves each once.
            if let Some(p) = node.paths.iter_mut().find(|p| *p == old) {
                *p = new.clone();
            }
        }
        self.by_path.insert(new, ino);
    }

    /// The paths at or below `top`, with their inodes, taken out of `by_path`.
    fn take_subtree(&mut self, top: &RelPath) -> Vec<(RelPath, u64)> {
        let taken: Vec<(RelPath, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(top))
            .map(|(p, ino)| (p.clone(), *ino))
            .collect();
        for (p, _) in &taken {
            self.by_path.remove(p);
        }
        taken
    }

    /// `from` was renamed to `to` on the server: whatever lived at `to` is detached
    /// and every path at or below `from` moves along.
    pub fn rename(&mut self, from: &RelPath, to: &RelPath) {
        if from == to {
            return;
        }
        self.detach(to);
        for (old, ino) in self.take_subtree(from) {
            if let Some(new) = old.rebase(from, to) {
                self.move_path(&old, new, ino);
            }
        }
    }

    /// `a` and `b` swapped places (RENAME_EXCHANGE).
    pub fn exchange(&mut self, a: &RelPath, b: &RelPath) {
        let a_side = self.take_subtree(a);
        let b_side = self.take_subtree(b);
        for (old, ino, from, to) in a_side
            .into_iter()
            .map(|(p, i)| (p, i, a, b))
            .chain(b_side.into_iter().map(|(p, i)| (p, i, b, a)))
        {
            if let Some(new) = old.rebase(from, to) {
                self.move_path(&old, new, ino);
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
    pub fn locate(&self, ino: u64) -> Result<(RelPath, Option<u64>), Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        match (node.paths.first(), node.handles.first()) {
            (Some(path), _) => Ok((path.clone(), None)),
            (None, Some(&h)) => Ok((RelPath::root(), Some(h))),
            (None, None) => Err(Errno::ENOENT),
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

    /// Attributes of the server file at `s` — a directory when its last name
    /// starts with `d` or is `sub`, a regular file otherwise — with an inode
    /// number of its own.
    fn a(s: &str) -> Attr {
        let last = s.rsplit('/').next().unwrap_or(s);
        let kind = if last.starts_with('d') || last == "sub" {
            FileKind::Directory
        } else {
            FileKind::File
        };
        let mut attr = Attr::blank(kind);
        // Distinct paths, distinct files, unless a test says otherwise.
        attr.ino = s
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        attr
    }

    /// `remember` with the attributes of a distinct server file per path.
    fn r(t: &mut InodeTable, s: &str) -> u64 {
        t.remember(&p(s), &a(s))
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
        let a = r(&mut t, "a");
        assert_eq!(r(&mut t, "a"), a);
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
        let a = r(&mut t, "a");
        t.forget(a, 1);
        let again = r(&mut t, "a");
        assert_ne!(a, again);
        assert!(again > a);
    }

    #[test]
    fn rename_moves_the_subtree_and_detaches_the_target() {
        let mut t = InodeTable::new();
        let d = r(&mut t, "d");
        let f = r(&mut t, "d/sub/f");
        let victim = r(&mut t, "e");
        let bystander = r(&mut t, "dd");
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
        let f = r(&mut t, "f");
        t.detach(&p("f"));
        assert_eq!(t.path(f), None);
        let g = r(&mut t, "f");
        assert_ne!(f, g);
        t.forget(f, 1);
        assert_eq!(t.ino_of(&p("f")), Some(g));
    }

    #[test]
    fn a_detached_inode_is_reached_through_an_open_handle() {
        let mut t = InodeTable::new();
        let f = r(&mut t, "f");
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
        let a = r(&mut t, "a");
        let ax = r(&mut t, "a/x");
        let b = r(&mut t, "b");
        t.exchange(&p("a"), &p("b"));
        assert_eq!(t.path(a), Some(&p("b")));
        assert_eq!(t.path(ax), Some(&p("b/x")));
        assert_eq!(t.path(b), Some(&p("a")));
    }

    #[test]
    fn hard_links_share_one_inode() {
        let mut t = InodeTable::new();
        let f = r(&mut t, "f");
        let link = t.remember(&p("g"), &a("f"));
        assert_eq!(f, link, "another name of the same server file");
        assert_eq!(t.lookups(f), Some(2));
        assert_eq!(t.path(f), Some(&p("g")), "the newest name is used");
        // Unlinking one name leaves the inode reachable through the other.
        t.detach(&p("g"));
        assert_eq!(t.path(f), Some(&p("f")));
        assert_eq!(t.ino_of(&p("g")), None);
        // Renaming one name moves only that name.
        let h = t.remember(&p("h"), &a("f"));
        assert_eq!(h, f);
        t.rename(&p("h"), &p("k"));
        assert_eq!(t.ino_of(&p("k")), Some(f));
        assert_eq!(t.ino_of(&p("f")), Some(f));
        // Once every name is gone, the file's identity no longer finds the inode.
        t.detach(&p("f"));
        t.detach(&p("k"));
        assert_eq!(t.path(f), None);
        assert_ne!(t.remember(&p("m"), &a("f")), f);
    }

    #[test]
    fn exchanging_two_names_of_one_file_keeps_both() {
        let mut t = InodeTable::new();
        let f = r(&mut t, "a");
        assert_eq!(t.remember(&p("b"), &a("a")), f);
        t.exchange(&p("a"), &p("b"));
        t.detach(&p("a"));
        assert_eq!(t.path(f), Some(&p("b")));
    }

    #[test]
    fn a_path_replaced_on_the_server_gets_a_new_inode() {
        let mut t = InodeTable::new();
        let d = r(&mut t, "d");
        let below = r(&mut t, "d/x");
        let mut other = a("d");
        other.ino += 1;
        let d2 = t.remember(&p("d"), &other);
        assert_ne!(d, d2);
        assert_eq!(t.path(d), None, "the old directory is detached");
        assert_eq!(t.path(below), None, "and so is everything below it");
        assert_eq!(t.ino_of(&p("d")), Some(d2));
    }

    #[test]
    fn directories_are_never_merged_by_identity() {
        let mut t = InodeTable::new();
        let d = r(&mut t, "d");
        assert_ne!(t.remember(&p("dd"), &a("d")), d);
    }

    #[test]
    fn close_to_open_keeps_cache_only_when_unchanged() {
        use ferry_common::Timestamp;
        let mut attr = Attr::blank(FileKind::File);
        attr.size = 10;
        attr.mtime = Timestamp { secs: 1, nanos: 0 };
        attr.ino = 5;
        let mut t = InodeTable::new();
        let f = r(&mut t, "f");
        assert!(!t.note_open(f, &attr), "first open has nothing cached");
        assert!(t.note_open(f, &attr));
        attr.mtime = Timestamp { secs: 2, nanos: 0 };
        assert!(!t.note_open(f, &attr), "changed on the server");
    }
}
