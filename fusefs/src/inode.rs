//! `InodeTable`: the mapping between the kernel's inode numbers and remote paths.
//!
//! The contract with the kernel, enforced here and nowhere else:
//!
//! - the root is inode 1 and is never forgotten;
//! - every entry handed to the kernel (lookup, create, mkdir, readdirplus, ...)
//!   adds one to that inode's lookup count; `forget` subtracts (saturating), and an
//!   inode whose count reaches zero is dropped;
//! - a number stands for one server file, told apart by the server's device and
//!   inode number ([`FileId`]), for the life of the mount: a file looked up again
//!   after the kernel forgot it gets its old number back, and hard links share one.
//!   The number is what `stat` shows as `st_ino` (fuser ties the two), and tools
//!   rely on it staying put: tar refuses to finish a directory whose `st_ino`
//!   changed while it was extracting into it;
//! - a number is never given to another file: when this mount removes a file's
//!   last known name, its server inode number (which the server's filesystem may
//!   reuse) is dropped from the table, so a later file with that number gets a new
//!   one. (A file removed by *another* client whose number the server reuses is
//!   not seen; the kernel then sees the new file under the old number.)
//! - a path maps to at most one inode. Rename moves the inode (and every inode
//!   below it) to the new path; unlink and rename-over *detach* the path from its
//!   inode: an inode with no name left keeps its number until forgotten, but no
//!   path leads to it, so nothing can reach the new occupant of that path through
//!   it. Open files stay usable because the server holds them by handle.

use ferry_common::{Attr, Errno, RelPath};
use std::collections::{BTreeMap, HashMap};

pub(crate) const ROOT_INO: u64 = 1;

/// What tells server files apart: the device and inode number of the server's
/// filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl FileId {
    pub(crate) fn of(attr: &Attr) -> FileId {
        FileId {
            dev: attr.dev,
            ino: attr.ino,
        }
    }
}

#[derive(Debug)]
struct Node {
    id: FileId,
    /// The names this mount knows for the node, newest last (more than one for
    /// hard links); empty once detached by unlink or rename-over.
    paths: Vec<RelPath>,
    lookups: u64,
    /// The file's attributes when it was last opened, for close-to-open caching.
    opened_as: Option<Attr>,
    /// Server handles open on this inode: a detached inode is reached through one.
    handles: Vec<u64>,
}

impl Node {
    fn new(id: FileId) -> Node {
        Node {
            id,
            paths: Vec::new(),
            lookups: 0,
            opened_as: None,
            handles: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct InodeTable {
    nodes: HashMap<u64, Node>,
    /// Ordered, so that a subtree is one range (see [`subtree`]).
    by_path: BTreeMap<RelPath, u64>,
    /// Every server file seen and not known to be gone, alive in the kernel or not.
    by_id: HashMap<FileId, u64>,
    next: u64,
}

/// The byte range of the paths strictly below `dir`: from `dir/` up to (not
/// including) `dir0`, as `0` follows `/`.
fn below(dir: &RelPath) -> (Vec<u8>, Vec<u8>) {
    let mut low = dir.as_bytes().to_vec();
    low.push(b'/');
    let mut high = dir.as_bytes().to_vec();
    high.push(b'/' + 1);
    (low, high)
}

impl InodeTable {
    /// A table holding only the root, which is the server file `root`.
    pub(crate) fn new(root: FileId) -> InodeTable {
        let mut node = Node::new(root);
        node.paths.push(RelPath::root());
        node.lookups = 1;
        InodeTable {
            nodes: HashMap::from([(ROOT_INO, node)]),
            by_path: BTreeMap::from([(RelPath::root(), ROOT_INO)]),
            by_id: HashMap::from([(root, ROOT_INO)]),
            next: ROOT_INO + 1,
        }
    }

    /// The path an inode names (its newest name); `None` for an unknown or
    /// detached inode.
    pub(crate) fn path(&self, ino: u64) -> Option<&RelPath> {
        self.nodes.get(&ino).and_then(|n| n.paths.last())
    }

    /// The server file `ino` stands for.
    pub(crate) fn file_id(&self, ino: u64) -> Option<FileId> {
        self.nodes.get(&ino).map(|n| n.id)
    }

    /// The inode at `path` without counting a lookup.
    pub(crate) fn ino_of(&self, path: &RelPath) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The number of a server file, if it has one, without counting a lookup.
    pub(crate) fn ino_of_file(&self, attr: &Attr) -> Option<u64> {
        self.by_id.get(&FileId::of(attr)).copied()
    }

    /// Hands an entry for `path`, which the server says is the file `attr`, to the
    /// kernel: that file's number (new, or the one it had), with its lookup count
    /// raised by one.
    pub(crate) fn remember(&mut self, path: &RelPath, attr: &Attr) -> u64 {
        let id = FileId::of(attr);
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                if node.id == id {
                    node.lookups = node.lookups.saturating_add(1);
                    // The name just confirmed is the one to reach it by (a hard
                    // link's other names may be gone).
                    if node.paths.last() != Some(path) {
                        node.paths.retain(|p| p != path);
                        node.paths.push(path.clone());
                    }
                    return ino;
                }
            }
            // The name leads to another file now (replaced by another client).
            self.unbind(path);
        }
        let ino = match self.by_id.get(&id) {
            Some(&ino) => ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.by_id.insert(id, ino);
                ino
            }
        };
        let node = self.nodes.entry(ino).or_insert_with(|| Node::new(id));
        node.lookups = node.lookups.saturating_add(1);
        node.paths.retain(|p| p != path);
        node.paths.push(path.clone());
        self.by_path.insert(path.clone(), ino);
        ino
    }

    /// The kernel dropped `n` references to `ino`; true when that was the last.
    /// The number stays reserved for its file.
    pub(crate) fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            if let Some(node) = self.nodes.remove(&ino) {
                for path in node.paths {
                    if self.by_path.get(&path) == Some(&ino) {
                        self.by_path.remove(&path);
                    }
                }
            }
            return true;
        }
        false
    }

    /// Takes `path` away from its inode. When that was the file's last known
    /// name, the file is taken to be gone and its number retired.
    fn unbind(&mut self, path: &RelPath) {
        let Some(ino) = self.by_path.remove(path) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.paths.retain(|p| p != path);
        if node.paths.is_empty() && ino != ROOT_INO && self.by_id.get(&node.id) == Some(&ino) {
            self.by_id.remove(&node.id);
        }
    }

    /// `path` and the known paths below it, with their inodes.
    fn subtree(&self, path: &RelPath) -> Vec<(RelPath, u64)> {
        let mut found: Vec<(RelPath, u64)> = Vec::new();
        if path.is_root() {
            return self.by_path.iter().map(|(p, i)| (p.clone(), *i)).collect();
        }
        if let Some(&ino) = self.by_path.get(path) {
            found.push((path.clone(), ino));
        }
        let (low, high) = below(path);
        found.extend(
            self.by_path
                .range::<[u8], _>((
                    std::ops::Bound::Included(low.as_slice()),
                    std::ops::Bound::Excluded(high.as_slice()),
                ))
                .map(|(p, i)| (p.clone(), *i)),
        );
        found
    }

    /// The node at `path` (and anything below it) was removed on the server.
    pub(crate) fn detach(&mut self, path: &RelPath) {
        for (p, _) in self.subtree(path) {
            self.unbind(&p);
        }
    }

    /// Moves every entry of `moved` from its old path to the one `rebase` gives.
    fn relocate(
        &mut self,
        moved: Vec<(RelPath, u64)>,
        rebase: impl Fn(&RelPath) -> Option<RelPath>,
    ) {
        for (old, _) in &moved {
            self.by_path.remove(old);
        }
        for (old, ino) in moved {
            let Some(new) = rebase(&old) else { continue };
            if let Some(node) = self.nodes.get_mut(&ino) {
                match node.paths.iter_mut().find(|p| **p == old) {
                    Some(p) => *p = new.clone(),
                    None => node.paths.push(new.clone()),
                }
            }
            self.by_path.insert(new, ino);
        }
    }

    /// `from` was renamed to `to` on the server: whatever lived at `to` is detached
    /// and every inode at or below `from` moves along.
    pub(crate) fn rename(&mut self, from: &RelPath, to: &RelPath) {
        if from == to {
            return;
        }
        self.detach(to);
        let moved = self.subtree(from);
        self.relocate(moved, |p| p.rebase(from, to));
    }

    /// `a` and `b` swapped places (RENAME_EXCHANGE).
    pub(crate) fn exchange(&mut self, a: &RelPath, b: &RelPath) {
        let mut moved = self.subtree(a);
        moved.extend(self.subtree(b));
        self.relocate(moved, |p| p.rebase(a, b).or_else(|| p.rebase(b, a)));
    }

    /// Records the attributes a file had when it was opened; returns whether its
    /// content is unchanged since the previous open (so the kernel may keep its
    /// cached pages).
    pub(crate) fn note_open(&mut self, ino: u64, attr: &Attr) -> bool {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        let unchanged = node.opened_as.is_some_and(|old| old.same_content(attr));
        node.opened_as = Some(*attr);
        unchanged
    }

    /// Whether `ino` was opened before and `attr` shows the same content as it
    /// had then: the kernel may still hold its pages.
    pub(crate) fn unchanged_since_opened(&self, ino: u64, attr: &Attr) -> bool {
        self.nodes
            .get(&ino)
            .and_then(|n| n.opened_as)
            .is_some_and(|old| old.same_content(attr))
    }

    /// A server handle was opened on `ino`.
    pub(crate) fn add_handle(&mut self, ino: u64, handle: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.handles.push(handle);
        }
    }

    /// The handle was closed.
    pub(crate) fn remove_handle(&mut self, ino: u64, handle: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.handles.retain(|h| *h != handle);
        }
    }

    /// How to reach `ino` on the server: its path, and a handle to use instead
    /// when the inode is detached (unlinked or renamed over while open).
    /// `Err(ENOENT)` when neither exists.
    pub(crate) fn locate(&self, ino: u64) -> Result<(RelPath, Option<u64>), Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        match (node.paths.last(), node.handles.first()) {
            (Some(path), _) => Ok((path.clone(), None)),
            (None, Some(&h)) => Ok((RelPath::root(), Some(h))),
            (None, None) => Err(Errno::ENOENT),
        }
    }

    /// The lookup count of an inode (for tests).
    #[cfg(test)]
    pub(crate) fn lookups(&self, ino: u64) -> Option<u64> {
        self.nodes.get(&ino).map(|n| n.lookups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::{FileKind, Timestamp};

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    /// Attributes of server file number `n`.
    fn f(n: u64) -> Attr {
        let mut a = Attr::blank(FileKind::File);
        a.dev = 1;
        a.ino = n;
        a
    }

    fn table() -> InodeTable {
        InodeTable::new(FileId { dev: 1, ino: 2 })
    }

    #[test]
    fn root_is_one_and_survives_forget() {
        let mut t = table();
        assert_eq!(t.path(ROOT_INO), Some(&RelPath::root()));
        t.forget(ROOT_INO, 1000);
        assert_eq!(t.path(ROOT_INO), Some(&RelPath::root()));
    }

    #[test]
    fn lookups_count_and_forget_saturates() {
        let mut t = table();
        let a = t.remember(&p("a"), &f(10));
        assert_eq!(t.remember(&p("a"), &f(10)), a);
        assert_eq!(t.lookups(a), Some(2));
        t.forget(a, 1);
        assert_eq!(t.path(a), Some(&p("a")));
        t.forget(a, 5);
        assert_eq!(t.path(a), None);
        assert_eq!(t.ino_of(&p("a")), None);
        t.forget(a, 1); // forgetting an unknown inode is harmless
    }

    #[test]
    fn a_file_keeps_its_number_after_the_kernel_forgets_it() {
        let mut t = table();
        let a = t.remember(&p("d/a"), &f(10));
        t.forget(a, 1);
        assert_eq!(t.lookups(a), None);
        assert_eq!(t.remember(&p("d/a"), &f(10)), a);
        assert_eq!(t.lookups(a), Some(1));
    }

    #[test]
    fn hard_links_share_a_number_and_outlive_one_name() {
        let mut t = table();
        let a = t.remember(&p("a"), &f(10));
        assert_eq!(t.remember(&p("b"), &f(10)), a);
        assert_eq!(t.lookups(a), Some(2));
        assert_eq!(t.path(a), Some(&p("b")));
        // Looking a name up again makes it the one used.
        t.remember(&p("a"), &f(10));
        assert_eq!(t.path(a), Some(&p("a")));
        t.remember(&p("b"), &f(10));
        t.detach(&p("b"));
        assert_eq!(t.path(a), Some(&p("a")));
        assert_eq!(t.ino_of_file(&f(10)), Some(a));
        // The same inode number on another device is another file.
        let mut other = f(10);
        other.dev = 9;
        assert_ne!(t.remember(&p("c"), &other), a);
    }

    #[test]
    fn numbers_of_removed_files_are_never_given_to_others() {
        let mut t = table();
        let a = t.remember(&p("a"), &f(10));
        t.detach(&p("a"));
        t.forget(a, 1);
        // The server reused inode number 10 for a new file.
        let again = t.remember(&p("a"), &f(10));
        assert_ne!(a, again);
        assert!(again > a);
    }

    #[test]
    fn a_name_replaced_behind_our_back_leads_to_the_new_file() {
        let mut t = table();
        let a = t.remember(&p("a"), &f(10));
        let b = t.remember(&p("a"), &f(11));
        assert_ne!(a, b);
        assert_eq!(t.path(a), None);
        assert_eq!(t.ino_of(&p("a")), Some(b));
        t.forget(a, 1);
        assert_eq!(t.ino_of(&p("a")), Some(b));
    }

    #[test]
    fn rename_moves_the_subtree_and_detaches_the_target() {
        let mut t = table();
        let d = t.remember(&p("d"), &f(10));
        let sub = t.remember(&p("d/sub"), &f(11));
        let x = t.remember(&p("d/sub/f"), &f(12));
        let victim = t.remember(&p("e"), &f(13));
        let bystander = t.remember(&p("dd"), &f(14));
        let sibling = t.remember(&p("d0"), &f(15));
        t.rename(&p("d"), &p("e"));
        assert_eq!(t.path(d), Some(&p("e")));
        assert_eq!(t.path(sub), Some(&p("e/sub")));
        assert_eq!(t.path(x), Some(&p("e/sub/f")));
        assert_eq!(t.path(victim), None, "the old occupant is detached");
        assert_eq!(
            t.lookups(victim),
            Some(1),
            "but keeps its number until forgotten"
        );
        assert_eq!(t.path(bystander), Some(&p("dd")));
        assert_eq!(t.path(sibling), Some(&p("d0")));
        assert_eq!(t.ino_of(&p("e")), Some(d));
        assert_eq!(t.ino_of(&p("d")), None);
        // Forgetting the detached victim must not disturb the new occupant.
        t.forget(victim, 1);
        assert_eq!(t.ino_of(&p("e")), Some(d));
    }

    #[test]
    fn unlink_detaches_only_the_subtree() {
        let mut t = table();
        let f1 = t.remember(&p("f"), &f(10));
        let below = t.remember(&p("f/x"), &f(11));
        let beside = t.remember(&p("f.txt"), &f(12));
        t.detach(&p("f"));
        assert_eq!(t.path(f1), None);
        assert_eq!(t.path(below), None);
        assert_eq!(t.path(beside), Some(&p("f.txt")));
        let g = t.remember(&p("f"), &f(20));
        assert_ne!(f1, g);
        t.forget(f1, 1);
        assert_eq!(t.ino_of(&p("f")), Some(g));
    }

    #[test]
    fn a_detached_inode_is_reached_through_an_open_handle() {
        let mut t = table();
        let x = t.remember(&p("f"), &f(10));
        t.add_handle(x, 7);
        assert_eq!(t.locate(x).unwrap(), (p("f"), None));
        t.detach(&p("f"));
        assert_eq!(t.locate(x).unwrap().1, Some(7));
        t.remove_handle(x, 7);
        assert!(t.locate(x).is_err());
    }

    #[test]
    fn exchange_swaps_both_subtrees() {
        let mut t = table();
        let a = t.remember(&p("a"), &f(10));
        let ax = t.remember(&p("a/x"), &f(11));
        let b = t.remember(&p("b"), &f(12));
        t.exchange(&p("a"), &p("b"));
        assert_eq!(t.path(a), Some(&p("b")));
        assert_eq!(t.path(ax), Some(&p("b/x")));
        assert_eq!(t.path(b), Some(&p("a")));
    }

    #[test]
    fn close_to_open_keeps_cache_only_when_unchanged() {
        let mut attr = f(5);
        attr.size = 10;
        attr.mtime = Timestamp { secs: 1, nanos: 0 };
        let mut t = table();
        let x = t.remember(&p("f"), &attr);
        assert!(!t.note_open(x, &attr), "first open has nothing cached");
        assert!(t.note_open(x, &attr));
        attr.mtime = Timestamp { secs: 2, nanos: 0 };
        assert!(!t.note_open(x, &attr), "changed on the server");
    }
}
