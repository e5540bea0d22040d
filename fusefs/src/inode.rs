//! `InodeTable`: the mapping between the kernel's inode numbers and remote paths.
//!
//! The contract with the kernel, enforced here and nowhere else:
//!
//! - the root is inode 1 and is never forgotten;
//! - every entry handed to the kernel (lookup, create, mkdir, readdirplus, ...)
//!   adds one to that inode's lookup count; `forget` subtracts (saturating), and an
//!   inode whose count reaches zero leaves the table. The table holds what the
//!   kernel holds and no more, so the mount's memory follows the kernel's inode
//!   cache, not the number of files it has ever seen;
//! - a number stands for one server file while the kernel holds it, and is
//!   *derived* from the file's identity on the server, its device and inode
//!   number ([`FileId`]; see [`Numbering`]), so it needs no memory to stay
//!   stable: a file looked up again after the kernel forgot it gets the same
//!   number, hard links share one, and even a new mount numbers the export's
//!   files the same way — except a file this mount created without waiting
//!   for the server (see `core::create_behind`), numbered before its identity
//!   was known and bound to it for the life of the mount ([`Numbering`]).
//!   The number is what `stat` shows as `st_ino` (fuser
//!   ties the two), and tools rely on it staying put: tar refuses to finish a
//!   directory whose `st_ino` changed while it was extracting into it;
//! - numbers are reused exactly when the server's filesystem reuses an inode
//!   number for a new file, as on a local disk. What the kernel must never see
//!   is one number meaning two files while it still holds the first: its cached
//!   attributes and pages would serve the new file. So when this mount removes
//!   a file's last name (or learns that it is gone), the inode is *retired*:
//!   if the same server identity appears again while the kernel still holds
//!   the number, it is a new file, handed out with the next FUSE *generation*;
//!   the kernel then drops the old inode (I/O on it fails) and makes a new one,
//!   which is what generations are for. A file removed by another client or on
//!   the server, whose number the server reuses before this mount notices, is
//!   not seen; nor is a file with other hard links the mount never saw, whose
//!   last known name it removed (it is not retired, as it may live on);
//! - a path maps to at most one inode. Rename moves the inode (and every inode
//!   below it) to the new path; unlink and rename-over *detach* the path from its
//!   inode: an inode with no name left keeps its number until forgotten, but no
//!   path leads to it, so nothing can reach the new occupant of that path through
//!   it. Open files stay usable because the server holds them by handle.

use ferry_common::{Attr, Errno, FileKind, RelPath};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;

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

/// How many low bits of a number are the server's inode number.
const INO_BITS: u32 = 48;
const INO_MASK: u64 = (1 << INO_BITS) - 1;
/// Spaces get indices 1 up to this; index 0 is for spilled files.
const MAX_SPACES: u64 = (1 << (64 - INO_BITS)) - 1;

/// Numbers server files without remembering them: a number is a *space* index
/// in its high 16 bits and the low 48 bits of the server's inode number. A
/// space is a server device together with the high 16 bits of the inode
/// number, so the mapping is one-to-one, and the table of spaces stays tiny
/// (one per filesystem below the export, a few more where a filesystem sets
/// high bits, as overlayfs does with `xino`). Numbers are at least 2^48, so
/// never the root's 1 (the root is 1 by its path, not by its identity: a bind
/// mount that shows the export's root again below it is another inode).
///
/// Only when the table of spaces is full (65,535 of them: a filesystem that
/// hashes its inode numbers over all 64 bits) does a file get a number of its
/// own from a counter below 2^48, remembered for the life of the mount — the
/// one case where memory grows with the files seen.
///
/// A file this mount creates without waiting for the server (see
/// `core::create_behind`) is numbered before its identity is known: from the same
/// counter, and bound to its identity once the server's answer comes, for
/// the life of the mount, so its number never changes while the mount lives.
#[derive(Debug)]
struct Numbering {
    spaces: HashMap<(u64, u64), u64>,
    spilled: HashMap<FileId, u64>,
    next_spilled: u64,
    /// Files numbered before their identity was known, by identity.
    bound: HashMap<FileId, u64>,
}

impl Numbering {
    /// The root's space comes first, so that files on the export's own
    /// filesystem are numbered the same by every mount.
    fn new(root: FileId) -> Numbering {
        Numbering {
            spaces: HashMap::from([(Self::space_of(root), 1)]),
            spilled: HashMap::new(),
            next_spilled: ROOT_INO + 1,
            bound: HashMap::new(),
        }
    }

    fn space_of(id: FileId) -> (u64, u64) {
        (id.dev, id.ino >> INO_BITS)
    }

    fn derive(index: u64, id: FileId) -> u64 {
        (index << INO_BITS) | (id.ino & INO_MASK)
    }

    /// The number of `id`, making room for its space if it is new.
    fn number(&mut self, id: FileId) -> u64 {
        if let Some(n) = self.peek(id) {
            return n;
        }
        let space = Self::space_of(id);
        let taken = self.spaces.len() as u64;
        if taken < MAX_SPACES {
            let index = taken + 1;
            self.spaces.insert(space, index);
            return Self::derive(index, id);
        }
        let n = self.next_spilled;
        self.next_spilled += 1;
        self.spilled.insert(id, n);
        n
    }

    /// A number for a file whose identity is not known yet.
    fn unbound(&mut self) -> u64 {
        let n = self.next_spilled;
        self.next_spilled += 1;
        n
    }

    /// The number of `id` if it has one already.
    fn peek(&self, id: FileId) -> Option<u64> {
        if let Some(&n) = self.bound.get(&id) {
            return Some(n);
        }
        match self.spaces.get(&Self::space_of(id)) {
            Some(&index) => Some(Self::derive(index, id)),
            None => self.spilled.get(&id).copied(),
        }
    }
}

#[derive(Debug)]
struct Node {
    id: FileId,
    kind: FileKind,
    /// The server's link count when last seen, less the names this mount
    /// removed since: a file with other names may outlive the last one this
    /// mount knows.
    nlink: u32,
    /// Told to the kernel with every entry: raised when the number comes back
    /// for a new file while the kernel holds the old one.
    generation: u64,
    /// The file is gone (see the module documentation): if its identity shows
    /// up again, it is a new file.
    retired: bool,
    /// The names this mount knows for the node, newest last (more than one for
    /// hard links); empty once detached by unlink or rename-over.
    paths: Vec<RelPath>,
    lookups: u64,
    /// The file's attributes when it was last opened, for close-to-open caching.
    opened_as: Option<Attr>,
    /// Server handles open on this inode: a detached inode is reached through one.
    handles: Vec<u64>,
    /// The name it had until detached: what the kernel may still open it by,
    /// through an entry it has not dropped yet (see `Core::open`).
    last: Option<RelPath>,
    /// Its names were only doubted, not known gone (see
    /// [`InodeTable::detach_below`]): the last one still reaches it.
    doubted: bool,
}

impl Node {
    fn new(attr: &Attr) -> Node {
        Node {
            id: FileId::of(attr),
            kind: attr.kind,
            nlink: attr.nlink,
            generation: 0,
            retired: false,
            paths: Vec::new(),
            lookups: 0,
            opened_as: None,
            handles: Vec::new(),
            last: None,
            doubted: false,
        }
    }

    /// Whether the file `attr` describes is another than the one this node was,
    /// although its number is the same. A file open here cannot have been
    /// replaced: the server holds it open, so its inode number is not free.
    fn replaced_by(&self, attr: &Attr) -> bool {
        (self.retired && self.handles.is_empty()) || self.kind != attr.kind
    }
}

#[derive(Debug)]
pub(crate) struct InodeTable {
    /// The inodes the kernel holds, and the root.
    nodes: HashMap<u64, Node>,
    /// Ordered, so that a subtree is one range (see [`subtree`]).
    by_path: BTreeMap<RelPath, u64>,
    /// The export root's identity on the server.
    root: FileId,
    numbers: Numbering,
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
        let mut attr = Attr::blank(FileKind::Directory);
        (attr.dev, attr.ino) = (root.dev, root.ino);
        let mut node = Node::new(&attr);
        node.paths.push(RelPath::root());
        node.lookups = 1;
        InodeTable {
            nodes: HashMap::from([(ROOT_INO, node)]),
            by_path: BTreeMap::from([(RelPath::root(), ROOT_INO)]),
            root,
            numbers: Numbering::new(root),
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

    /// The number of a server file the kernel holds, without counting a lookup.
    pub(crate) fn ino_of_file(&self, attr: &Attr) -> Option<u64> {
        if FileId::of(attr) == self.root {
            return Some(ROOT_INO);
        }
        let ino = self.numbers.peek(FileId::of(attr))?;
        let node = self.nodes.get(&ino)?;
        (node.id == FileId::of(attr) && !node.replaced_by(attr)).then_some(ino)
    }

    /// Whether `ino` stands for the server file `attr` describes. A path can
    /// lead to another file than the inode the kernel looked it up as, when
    /// the name was replaced since (the kernel's entry not yet dropped).
    pub(crate) fn is_file(&self, ino: u64, attr: &Attr) -> bool {
        self.nodes
            .get(&ino)
            .is_none_or(|node| node.id == FileId::of(attr))
    }

    /// The number of the server file `id` if the kernel holds it (what a
    /// server's notice about that file concerns).
    pub(crate) fn ino_of_id(&self, id: FileId) -> Option<u64> {
        let ino = if id == self.root {
            ROOT_INO
        } else {
            self.numbers.peek(id)?
        };
        self.nodes
            .get(&ino)
            .is_some_and(|node| node.id == id)
            .then_some(ino)
    }

    /// Every name the kernel may hold an entry for: the directory's inode and
    /// the name in it (the root has none).
    pub(crate) fn names(&self) -> Vec<(u64, OsString)> {
        self.by_path
            .keys()
            .filter_map(|path| self.entry_of(path))
            .collect()
    }

    /// The kernel's entry for `path`: its directory's inode and its name.
    fn entry_of(&self, path: &RelPath) -> Option<(u64, OsString)> {
        let (dir, name) = path.split_last()?;
        Some((*self.by_path.get(&dir)?, name.to_os_string()))
    }

    /// Whether `ino` is a directory.
    pub(crate) fn is_dir(&self, ino: u64) -> bool {
        self.nodes
            .get(&ino)
            .is_some_and(|n| n.kind == FileKind::Directory)
    }

    /// The entries (directory, name) the kernel may reach `ino` by.
    pub(crate) fn entries_of(&self, ino: u64) -> Vec<(u64, OsString)> {
        let Some(node) = self.nodes.get(&ino) else {
            return Vec::new();
        };
        node.paths.iter().filter_map(|p| self.entry_of(p)).collect()
    }

    /// Every inode the kernel may hold.
    pub(crate) fn inos(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The number a server file would be handed out with, for listings that
    /// hand out no entries (plain readdir's `d_ino`); `None` for a file of a
    /// space not seen yet.
    pub(crate) fn number_of_file(&self, attr: &Attr) -> Option<u64> {
        self.numbers.peek(FileId::of(attr))
    }

    /// The generation the kernel knows `ino` by (0 for an unknown inode).
    pub(crate) fn generation(&self, ino: u64) -> u64 {
        self.nodes.get(&ino).map_or(0, |n| n.generation)
    }

    /// How many inodes the table holds (the root included): what the mount's
    /// memory grows with.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Hands an entry for `path`, which the server says is the file `attr`, to the
    /// kernel: that file's number, with its lookup count raised by one. Ask
    /// [`generation`](Self::generation) for the generation to hand with it.
    pub(crate) fn remember(&mut self, path: &RelPath, attr: &Attr) -> u64 {
        let id = FileId::of(attr);
        let ino = if path.is_root() {
            ROOT_INO
        } else {
            self.numbers.number(id)
        };
        if let Some(&at_path) = self.by_path.get(path) {
            if at_path != ino {
                // The name leads to another file now (replaced by another client).
                self.unbind(path, false);
            }
        }
        if self.nodes.get(&ino).is_some_and(|n| n.replaced_by(attr)) {
            self.renew(ino, attr);
        }
        let node = self.nodes.entry(ino).or_insert_with(|| Node::new(attr));
        node.lookups = node.lookups.saturating_add(1);
        node.nlink = attr.nlink;
        // A name leads to it: whatever was thought, it is not gone.
        node.retired = false;
        // The name just confirmed is the one to reach it by (a hard link's other
        // names may be gone).
        if node.paths.last() != Some(path) {
            node.paths.retain(|p| p != path);
            node.paths.push(path.clone());
        }
        self.by_path.insert(path.clone(), ino);
        ino
    }

    /// Hands the kernel an entry for `path`, a file this mount is creating
    /// whose identity on the server is not known yet (`attr` is this mount's
    /// guess): a number of its own, which [`bind`](Self::bind) ties to the
    /// identity once the server answers.
    pub(crate) fn remember_unbound(&mut self, path: &RelPath, attr: &Attr) -> u64 {
        let ino = self.numbers.unbound();
        if self.by_path.contains_key(path) {
            self.unbind(path, false);
        }
        let mut node = Node::new(attr);
        // No server file has this identity (numbers below 2^48 are this
        // mount's own), until bound.
        node.id = FileId { dev: u64::MAX, ino };
        node.lookups = 1;
        node.paths.push(path.clone());
        self.nodes.insert(ino, node);
        self.by_path.insert(path.clone(), ino);
        ino
    }

    /// The server says the file numbered `ino` by
    /// [`remember_unbound`](Self::remember_unbound) is `attr`: that identity
    /// has this number from now on, even after the kernel forgets it.
    pub(crate) fn bind(&mut self, ino: u64, attr: &Attr) {
        let id = FileId::of(attr);
        self.numbers.bound.insert(id, ino);
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.id = id;
            node.nlink = attr.nlink;
        }
    }

    /// The number `ino` comes back for a new file (`attr`) while the kernel
    /// still holds the old one: the next generation, and nothing of the old
    /// file but the kernel's lookups (it forgets them by number).
    fn renew(&mut self, ino: u64, attr: &Attr) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        let stale = std::mem::take(&mut node.paths);
        node.id = FileId::of(attr);
        node.kind = attr.kind;
        node.generation += 1;
        node.retired = false;
        node.doubted = false;
        node.opened_as = None;
        for path in stale {
            if self.by_path.get(&path) == Some(&ino) {
                self.by_path.remove(&path);
            }
        }
    }

    /// The kernel dropped `n` references to `ino`; true when that was the last,
    /// and the inode has left the table.
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

    /// Takes `path` away from its inode. With `removed` (this mount removed the
    /// file at `path`), when that was the file's last known name and it has no
    /// other, the file is gone: its inode is retired.
    fn unbind(&mut self, path: &RelPath, removed: bool) {
        let Some(ino) = self.by_path.remove(path) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.paths.retain(|p| p != path);
        node.doubted = false;
        if node.paths.is_empty() {
            node.last = Some(path.clone());
        }
        if !removed || ino == ROOT_INO {
            return;
        }
        let gone = if node.kind == FileKind::Directory {
            true
        } else {
            // The server's count dropped by the name this mount removed.
            node.nlink = node.nlink.saturating_sub(1);
            node.nlink == 0
        };
        if node.paths.is_empty() && gone {
            node.retired = true;
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

    /// This mount removed the node at `path` on the server (unlink, rmdir, a
    /// rename over it): the path and those below it lead nowhere, and the node
    /// itself is gone (retired, if that was its last name). What the table
    /// still had below it may have been moved away by others, so it is only
    /// detached.
    pub(crate) fn detach(&mut self, path: &RelPath) {
        for (p, _) in self.subtree(path) {
            let removed = p == *path;
            self.unbind(&p, removed);
        }
    }

    /// The server says nothing is at `path`: another client removed or moved
    /// it. The names lead nowhere; the files may live on under other names, so
    /// none is retired.
    pub(crate) fn lose(&mut self, path: &RelPath) {
        for (p, _) in self.subtree(path) {
            self.unbind(&p, false);
        }
    }

    /// What was below `path` is no longer known to be there (the node at
    /// `path` may be another file with the same number): detached, none
    /// retired, and answered as the entries (directory, name) the kernel may
    /// hold for them.
    pub(crate) fn detach_below(&mut self, path: &RelPath) -> Vec<(u64, OsString)> {
        let below: Vec<RelPath> = self
            .subtree(path)
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p != path)
            .collect();
        let entries = below.iter().filter_map(|p| self.entry_of(p)).collect();
        for p in &below {
            let ino = self.by_path.get(p).copied();
            self.unbind(p, false);
            if let Some(node) = ino.and_then(|ino| self.nodes.get_mut(&ino)) {
                node.doubted = node.paths.is_empty();
            }
        }
        entries
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

    /// `ino` changed since it was last opened: its cached pages are not to be
    /// kept at the next open.
    pub(crate) fn forget_opened(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.opened_as = None;
        }
    }

    /// [`forget_opened`](Self::forget_opened) of every inode.
    pub(crate) fn forget_all_opened(&mut self) {
        for node in self.nodes.values_mut() {
            node.opened_as = None;
        }
    }

    /// The path to reach `ino` by on the server: its newest name, or, when
    /// its names were only doubted (a notice said a name above it changed,
    /// and the node there may be another with the same number), the last
    /// one — the server checks on the way that it still leads to this file
    /// (an open or stat by path compares the file's identity). `None` for an
    /// unknown inode, or one whose names are known gone.
    pub(crate) fn reach(&self, ino: u64) -> Option<&RelPath> {
        let node = self.nodes.get(&ino)?;
        node.paths
            .last()
            .or_else(|| node.doubted.then_some(node.last.as_ref()).flatten())
    }

    /// The name `ino` had when it was detached, if it has none now.
    pub(crate) fn last_path(&self, ino: u64) -> Option<&RelPath> {
        let node = self.nodes.get(&ino)?;
        node.paths
            .is_empty()
            .then_some(node.last.as_ref())
            .flatten()
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
        match (self.reach(ino), node.handles.first()) {
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

    /// A file created behind keeps the number it was given before the
    /// server said which file it is, after the kernel forgets it too.
    #[test]
    fn a_number_given_before_the_identity_is_bound_to_it_for_good() {
        let mut t = table();
        let ino = t.remember_unbound(&p("new"), &Attr::blank(FileKind::File));
        assert!(ino < 1 << INO_BITS, "the mount's own");
        assert_eq!(t.ino_of(&p("new")), Some(ino));
        assert_eq!(t.ino_of_file(&f(77)), None, "not bound yet");
        t.bind(ino, &f(77));
        assert_eq!(t.ino_of_file(&f(77)), Some(ino));
        assert!(t.forget(ino, 1));
        assert_eq!(
            t.remember(&p("new"), &f(77)),
            ino,
            "the same after a forget"
        );
        // Another one gets another number; files made on the server are
        // numbered as always.
        let other = t.remember_unbound(&p("other"), &Attr::blank(FileKind::File));
        assert_ne!(other, ino);
        assert_eq!(t.remember(&p("server"), &f(78)) & INO_MASK, 78);
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

    /// The number file `ino` of device 1 (the root's) gets: its space is the
    /// first.
    fn derived(ino: u64) -> u64 {
        (1 << INO_BITS) | ino
    }

    #[test]
    fn numbers_derive_from_the_server_identity() {
        let mut t = table();
        assert_eq!(t.remember(&p("a"), &f(10)), derived(10));
        assert_eq!(t.remember(&p("b"), &f(11)), derived(11));
        // Another device, and high bits of an inode number, are other spaces.
        let mut other_dev = f(10);
        other_dev.dev = 9;
        assert_eq!(t.remember(&p("c"), &other_dev), (2 << INO_BITS) | 10);
        let high = f((5 << INO_BITS) | 10);
        assert_eq!(t.remember(&p("d"), &high), (3 << INO_BITS) | 10);
        // Without a table entry per file: forgotten, the same again, and a
        // fresh table (another mount) numbers the export's own files the same
        // way, whatever it meets first.
        t.forget(derived(10), 1);
        assert_eq!(t.lookups(derived(10)), None);
        assert_eq!(t.remember(&p("a"), &f(10)), derived(10));
        let mut fresh = table();
        fresh.remember(&p("d"), &high);
        assert_eq!(fresh.remember(&p("b"), &f(11)), derived(11));
        // Only the root is 1: the root's identity met below it (a bind mount
        // of the export into itself) is another inode, and the root keeps its path.
        assert!(derived(0) > ROOT_INO);
        assert_eq!(t.remember(&p("root-again"), &f(2)), derived(2));
        assert_eq!(t.path(ROOT_INO), Some(&RelPath::root()));
        assert_eq!(t.remember(&RelPath::root(), &f(2)), ROOT_INO);
        assert_eq!(t.ino_of_file(&f(2)), Some(ROOT_INO));
    }

    #[test]
    fn the_table_holds_only_what_the_kernel_holds() {
        let mut t = table();
        let dir = t.remember(&p("d"), &f(3));
        let mut numbers = Vec::new();
        for i in 0..10_000 {
            numbers.push(t.remember(&p(&format!("d/f{i}")), &f(100 + i)));
        }
        assert_eq!(t.len(), 10_002);
        for (i, ino) in numbers.iter().enumerate() {
            if i % 2 == 0 {
                t.detach(&p(&format!("d/f{i}")));
            }
            assert!(t.forget(*ino, 1));
        }
        t.forget(dir, 1);
        assert_eq!(t.len(), 1, "only the root is left");
        assert_eq!(t.by_path.len(), 1);
        assert_eq!(t.numbers.spaces.len(), 1);
        assert!(t.numbers.spilled.is_empty());
        // And every file still has its number.
        assert_eq!(t.remember(&p("d/f7"), &f(107)), numbers[7]);
    }

    #[test]
    fn a_removed_files_number_comes_back_as_a_new_generation() {
        let mut t = table();
        let a = t.remember(&p("a"), &f(10));
        assert_eq!(t.generation(a), 0);
        t.detach(&p("a"));
        // The kernel still holds `a` when the server reuses inode 10 for a new file.
        let again = t.remember(&p("b"), &f(10));
        assert_eq!(again, a, "the server's numbering, as on a local disk");
        assert_eq!(t.generation(again), 1, "which the kernel tells apart");
        assert_eq!(
            t.lookups(a),
            Some(2),
            "the old lookups are forgotten by number"
        );
        assert_eq!(t.path(again), Some(&p("b")));
        // Looked up again, the new file is the same generation.
        assert_eq!(t.remember(&p("b"), &f(10)), a);
        assert_eq!(t.generation(a), 1);
        // Once the kernel forgets it, nothing of it is kept.
        t.forget(a, 3);
        assert_eq!(t.len(), 1);
        assert_eq!(t.remember(&p("b"), &f(10)), a);
        assert_eq!(t.generation(a), 0);
    }

    #[test]
    fn only_what_is_surely_gone_is_retired() {
        let mut t = table();
        // Another client removed or moved it: it may live on under another name.
        let moved = t.remember(&p("old"), &f(10));
        t.lose(&p("old"));
        assert_eq!(t.remember(&p("new"), &f(10)), moved);
        assert_eq!(t.generation(moved), 0);
        // A file with other hard links outlives the last name this mount knew.
        let mut linked = f(11);
        linked.nlink = 2;
        let l = t.remember(&p("one"), &linked);
        t.detach(&p("one"));
        linked.nlink = 1;
        t.remember(&p("two"), &linked);
        assert_eq!(t.generation(l), 0);
        // Both of its names removed here: gone, although the count seen was 2.
        let mut both = f(14);
        both.nlink = 2;
        let b = t.remember(&p("x"), &both);
        t.remember(&p("y"), &both);
        t.detach(&p("x"));
        t.detach(&p("y"));
        t.remember(&p("z"), &f(14));
        assert_eq!(t.generation(b), 1);
        // A file open here is held open by the server: its number is not free.
        let open = t.remember(&p("open"), &f(12));
        t.add_handle(open, 7);
        t.detach(&p("open"));
        t.remember(&p("open-again"), &f(12));
        assert_eq!(t.generation(open), 0);
        // A number that now names another kind of node is surely another file.
        let file = t.remember(&p("kind"), &f(13));
        let mut dir = f(13);
        dir.kind = FileKind::Directory;
        assert_eq!(t.remember(&p("kind"), &dir), file);
        assert_eq!(t.generation(file), 1);
    }

    #[test]
    fn a_full_table_of_spaces_spills_without_collisions() {
        let mut t = table();
        let mut seen = std::collections::HashSet::new();
        // Every space but the root's, each a device of its own.
        for dev in 2..=MAX_SPACES {
            let mut a = f(10);
            a.dev = dev;
            let ino = t.remember(&p(&format!("f{dev}")), &a);
            assert!(seen.insert(ino));
            t.forget(ino, 1);
        }
        assert_eq!(
            t.numbers.spaces.len() as u64,
            MAX_SPACES,
            "the root's and these"
        );
        let mut spilled = Vec::new();
        for dev in MAX_SPACES + 2..MAX_SPACES + 5 {
            let mut a = f(10);
            a.dev = dev;
            let ino = t.remember(&p(&format!("s{dev}")), &a);
            assert!(ino > ROOT_INO && ino < 1 << INO_BITS, "{ino}");
            assert!(seen.insert(ino));
            spilled.push((a, ino));
        }
        for (attr, ino) in spilled {
            assert_eq!(t.number_of_file(&attr), Some(ino), "remembered for good");
        }
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
        assert_eq!(t.last_path(x), Some(&p("f")));
        t.remove_handle(x, 7);
        assert!(t.locate(x).is_err());
    }

    #[test]
    fn what_is_below_a_name_can_be_let_go_of_alone() {
        let mut t = table();
        let mut dir = f(10);
        dir.kind = FileKind::Directory;
        let d = t.remember(&p("d"), &dir);
        let mut sub = f(11);
        sub.kind = FileKind::Directory;
        let x = t.remember(&p("d/x"), &sub);
        t.remember(&p("d/x/y"), &f(12));
        let mut dropped = t.detach_below(&p("d"));
        dropped.sort();
        assert_eq!(
            dropped,
            vec![(d, OsString::from("x")), (x, OsString::from("y"))]
        );
        assert_eq!(t.path(d), Some(&p("d")));
        assert_eq!(t.path(x), None);
        assert_eq!(t.ino_of(&p("d/x/y")), None);
        // Not known gone either: the kernel may still reach it by inode (a
        // process's current directory), by its last name.
        assert_eq!(t.reach(x), Some(&p("d/x")));
        assert_eq!(t.locate(x).map(|(path, _)| path), Ok(p("d/x")));
        // Not known to be gone: found again, it is the same inode, same generation.
        assert_eq!(t.remember(&p("d/x"), &sub), x);
        assert_eq!(t.generation(x), 0);
        // Removed for real, it is reached no more.
        t.detach(&p("d/x"));
        assert_eq!(t.reach(x), None);
    }

    #[test]
    fn every_name_and_inode_is_listed_for_a_full_drop() {
        let mut t = table();
        let mut dir = f(10);
        dir.kind = FileKind::Directory;
        let d = t.remember(&p("d"), &dir);
        let x = t.remember(&p("d/x"), &f(11));
        let mut names = t.names();
        names.sort();
        assert_eq!(
            names,
            vec![(ROOT_INO, OsString::from("d")), (d, OsString::from("x"))]
        );
        let mut inos = t.inos();
        inos.sort();
        let mut expected = vec![ROOT_INO, d, x];
        expected.sort();
        assert_eq!(inos, expected);
        assert_eq!(t.ino_of_id(FileId { dev: 1, ino: 11 }), Some(x));
        assert_eq!(t.ino_of_id(FileId { dev: 1, ino: 2 }), Some(ROOT_INO));
        assert_eq!(t.ino_of_id(FileId { dev: 1, ino: 99 }), None);
        assert!(t.is_dir(d) && t.is_dir(ROOT_INO) && !t.is_dir(x));
        assert_eq!(t.entries_of(x), vec![(d, OsString::from("x"))]);
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
        // The server said it changed: whatever the attributes say next.
        assert!(t.note_open(x, &attr));
        t.forget_opened(x);
        assert!(!t.note_open(x, &attr), "told of a change");
        t.forget_all_opened();
        assert!(!t.note_open(x, &attr));
    }
}
