//! `InterestTable`: what one subscribed connection may have cached, and what
//! to tell it when that changes.
//!
//! An answer lets a client cache two kinds of things, and the table keeps one
//! entry for each, until the lease after that answer ends:
//!
//! - a **name**: what `path` leads to — a node, or nothing (a negative entry);
//! - a **node** (by [`NodeId`]): its attributes, and its content — a file's
//!   data, a directory's names — as of a [`Fingerprint`] (or of an unknown
//!   moment: then any change is news).
//!
//! A change arrives as [`Event`]s carrying the state after it. For another
//! connection's change (or a local process's), [`InterestTable::notices_for`]
//! says which of them this connection must hear of and forgets those interests:
//! once told, the client drops what it had, and its next request registers
//! anew. For the connection's own change, [`InterestTable::apply_own`] records
//! the new state instead: its client learns it from the answer.
//!
//! A change to a name is always news to who holds it, even when the name
//! leads to a node with the same number afterwards: file systems hand a freed
//! inode number to the next file at once, and the new file can look just like
//! the old one down to its timestamps. Then the client keeps the name (and its
//! inode number) but drops what it knew of the node and below it, and so does
//! the table. A change to a node is news unless the state after it is what the
//! connection was told (a change it made itself, seen again by the watch).
//!
//! The table knows nothing of the network or the export; it is plain data,
//! bounded by [`MAX_NAMES`] and [`MAX_NODES`] entries.

use ferry_common::proto::{Change, NodeId};
use ferry_common::{Attr, RelPath, Timestamp};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::time::{Duration, Instant};

/// Names one connection may hold interests in at once (about 130 bytes each).
pub(crate) const MAX_NAMES: usize = 500_000;
/// Nodes one connection may hold interests in at once (about 100 bytes each).
pub(crate) const MAX_NODES: usize = 500_000;

/// What tells one state of a node from the next: every change of its
/// attributes or content moves its ctime; mtime and size tell content changes
/// from attribute-only ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    ctime: Timestamp,
    mtime: Timestamp,
    size: u64,
}

impl Fingerprint {
    pub(crate) fn of(attr: &Attr) -> Fingerprint {
        Fingerprint {
            ctime: attr.ctime,
            mtime: attr.mtime,
            size: attr.size,
        }
    }
}

/// What a name leads to, as the connection was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Told at a moment that cannot be pinned down: any change is news.
    Unknown,
    Absent,
    Node(NodeId),
}

impl Target {
    /// The node, if it is one.
    pub(crate) fn node(self) -> Option<NodeId> {
        match self {
            Target::Node(id) => Some(id),
            Target::Absent | Target::Unknown => None,
        }
    }
}

/// A change, with the state after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// `path` now leads to `now`; `dir` is the directory holding it, whose
    /// names changed (when known).
    Name {
        path: RelPath,
        now: Target,
        dir: Option<NodeId>,
    },
    /// Node `id` now looks like `now` (`None`: not known, or gone).
    Node {
        id: NodeId,
        now: Option<Fingerprint>,
    },
    /// `from` was renamed to `to`, which now leads to `now`; the names of
    /// `dirs` changed.
    Moved {
        from: RelPath,
        to: RelPath,
        now: Target,
        dirs: Vec<NodeId>,
    },
}

#[derive(Debug)]
struct NameInterest {
    target: Target,
    /// When the request that told it began: it shows every change seen before.
    since: Instant,
    until: Instant,
}

#[derive(Debug)]
struct NodeInterest {
    fp: Option<Fingerprint>,
    since: Instant,
    until: Instant,
}

/// The table is full even after dropping what expired: the caller resets the
/// connection (it drops everything, and the table starts empty).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

#[derive(Debug)]
pub(crate) struct InterestTable {
    /// How long an interest lasts after the answer that made it.
    lease: Duration,
    /// Ordered, so that a subtree is one range.
    names: BTreeMap<RelPath, NameInterest>,
    nodes: HashMap<NodeId, NodeInterest>,
}

/// The byte range of the paths strictly below `dir`: from `dir/` up to, not
/// including, `dir0` (`0` follows `/`). Everything, for the root.
fn below(dir: &RelPath) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    if dir.is_root() {
        return (Bound::Excluded(Vec::new()), Bound::Unbounded);
    }
    let mut low = dir.as_bytes().to_vec();
    low.push(b'/');
    let mut high = dir.as_bytes().to_vec();
    high.push(b'/' + 1);
    (Bound::Included(low), Bound::Excluded(high))
}

impl InterestTable {
    /// A table whose interests last `lease` after each answer.
    pub(crate) fn new(lease: Duration) -> InterestTable {
        InterestTable {
            lease,
            names: BTreeMap::new(),
            nodes: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.names.len() + self.nodes.len()
    }

    /// Forgets everything (the connection was told to drop everything).
    pub(crate) fn clear(&mut self) {
        self.names.clear();
        self.nodes.clear();
    }

    /// Drops the interests whose lease has ended.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.names.retain(|_, n| n.until > now);
        self.nodes.retain(|_, n| n.until > now);
    }

    /// An answer to a request that began at `since` told the connection that
    /// `path` leads to `target`.
    pub(crate) fn learn_name(
        &mut self,
        path: &RelPath,
        target: Target,
        since: Instant,
    ) -> Result<(), Full> {
        if !self.names.contains_key(path) && self.names.len() >= MAX_NAMES {
            self.expire(since);
            if self.names.len() >= MAX_NAMES {
                return Err(Full);
            }
        }
        let until = since + self.lease;
        self.names.insert(
            path.clone(),
            NameInterest {
                target,
                since,
                until,
            },
        );
        Ok(())
    }

    /// An answer told the connection what node `id` looks like (`None`: at an
    /// unknown moment, as a read through an open file does).
    pub(crate) fn learn_node(
        &mut self,
        id: NodeId,
        fp: Option<Fingerprint>,
        since: Instant,
    ) -> Result<(), Full> {
        let (fp, since) = match self.nodes.get(&id) {
            // The connection learnt another state than it held, and was not
            // told of the change between: its client may keep both (the
            // kernel the old attributes, a listing fetched ahead the new
            // ones), so the next change is news whatever it looks like.
            Some(held) if held.until > since && held.fp != fp => (None, held.since.min(since)),
            _ => (fp, since),
        };
        self.hold_node(id, fp, since)
    }

    /// The connection holds node `id` as `fp` from `since` on.
    fn hold_node(
        &mut self,
        id: NodeId,
        fp: Option<Fingerprint>,
        since: Instant,
    ) -> Result<(), Full> {
        if !self.nodes.contains_key(&id) && self.nodes.len() >= MAX_NODES {
            self.expire(since);
            if self.nodes.len() >= MAX_NODES {
                return Err(Full);
            }
        }
        let until = since + self.lease;
        self.nodes.insert(id, NodeInterest { fp, since, until });
        Ok(())
    }

    /// Keeps the interest in node `id` alive (data read through an open file);
    /// an unknown node is learnt as of an unknown moment.
    pub(crate) fn touch_node(&mut self, id: NodeId, since: Instant) -> Result<(), Full> {
        let until = since + self.lease;
        match self.nodes.get_mut(&id) {
            Some(held) if held.until > since => {
                held.until = held.until.max(until);
                Ok(())
            }
            _ => self.learn_node(id, None, since),
        }
    }

    /// The connection made these changes itself: its client learns the new
    /// state from the answer, so the table takes it too (for names and nodes it
    /// holds, and for what the answer adds).
    pub(crate) fn apply_own(&mut self, events: &[Event], now: Instant) -> Result<(), Full> {
        for event in events {
            match event {
                Event::Name {
                    path, now: target, ..
                } => {
                    self.drop_below(path, None);
                    self.learn_name(path, *target, now)?;
                }
                // Its own change: the client knows the state it made.
                Event::Node { id, now: fp } => self.hold_node(*id, *fp, now)?,
                Event::Moved {
                    from,
                    to,
                    now: target,
                    ..
                } => {
                    self.move_names(from, to, None);
                    self.learn_name(from, Target::Absent, now)?;
                    if !matches!(self.names.get(to), Some(n) if n.target == *target) {
                        self.drop_below(to, None);
                        self.learn_name(to, *target, now)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Another connection (or a process on the server) made these changes,
    /// seen at `observed` (they happened no later): what this connection must
    /// be told. The interests told of end. One learnt from a request that
    /// began after that shows them already.
    pub(crate) fn notices_for(&mut self, events: &[Event], observed: Instant) -> Vec<Change> {
        let now = observed;
        let mut changes = Vec::new();
        for event in events {
            match event {
                Event::Name {
                    path,
                    now: target,
                    dir,
                } => {
                    changes.extend(self.name_changed(path, *target, now));
                    if let Some(dir) = dir {
                        changes.extend(self.names_of_changed(*dir, now));
                    }
                }
                Event::Node { id, now: fp } => {
                    let Some(held) = self.nodes.get(id) else {
                        continue;
                    };
                    if held.since > now {
                        continue;
                    }
                    if held.until <= now {
                        self.nodes.remove(id);
                        continue;
                    }
                    // Only a new ctime with the same data is attributes alone.
                    let content = match (held.fp, fp) {
                        (Some(old), Some(new)) if old == *new => continue,
                        (Some(old), Some(new)) => old.mtime != new.mtime || old.size != new.size,
                        _ => true,
                    };
                    self.nodes.remove(id);
                    changes.push(Change::Node { id: *id, content });
                }
                Event::Moved {
                    from,
                    to,
                    now: target,
                    dirs,
                } => {
                    let moved = self.names.get(from).map(|n| n.target);
                    if self.move_names(from, to, Some(now)) {
                        // The moved node's ctime changed; its client drops its attributes.
                        if let Some(Target::Node(id)) = moved {
                            self.nodes.remove(&id);
                        }
                        changes.push(Change::Moved {
                            from: from.clone(),
                            to: to.clone(),
                        });
                    } else {
                        // Only what `to` named before is held: it is gone.
                        changes.extend(self.name_changed(to, *target, now));
                    }
                    for dir in dirs {
                        changes.extend(self.names_of_changed(*dir, now));
                    }
                }
            }
        }
        changes
    }

    /// `path` was changed and leads to `target` now: the notice, if this
    /// connection holds it or anything below. Held as the same node, the name
    /// stays held (its client keeps it) but that node, and what is below, do
    /// not (it may be another file with the same number).
    fn name_changed(&mut self, path: &RelPath, target: Target, now: Instant) -> Option<Change> {
        let held = match self.names.get(path) {
            // Learnt since: it shows the change already.
            Some(n) if n.since > now => {
                return self.drop_below(path, Some(now)).then_some(Change::Name {
                    path: path.clone(),
                    now: target.node(),
                })
            }
            Some(n) if n.until > now => Some(n.target),
            _ => None,
        };
        let below = self.drop_below(path, Some(now));
        let notice = Change::Name {
            path: path.clone(),
            now: target.node(),
        };
        match (held, target) {
            (Some(Target::Node(was)), Target::Node(is)) if was == is => {
                self.nodes.remove(&is);
                Some(notice)
            }
            (held, _) => {
                self.names.remove(path);
                (held.is_some() || below).then_some(notice)
            }
        }
    }

    /// The names of directory `dir` changed: the notice, if this connection
    /// holds what the directory looks like.
    fn names_of_changed(&mut self, dir: NodeId, now: Instant) -> Option<Change> {
        if self.nodes.get(&dir).is_some_and(|n| n.since > now) {
            return None;
        }
        self.nodes
            .remove(&dir)
            .is_some_and(|n| n.until > now)
            .then_some(Change::Node {
                id: dir,
                content: true,
            })
    }

    /// Renames the names at and below `from` to below `to`, after dropping
    /// those at and below `to`; whether any were held at or below `from`.
    /// Holding none there, nothing moves: what `to` leads to now is for the
    /// name event that comes with every rename to tell (so a rename seen twice
    /// — through the server, then by the watch — is moved once).
    fn move_names(&mut self, from: &RelPath, to: &RelPath, seen: Option<Instant>) -> bool {
        if from == to || !self.holds_at_or_below(from) {
            return false;
        }
        if self
            .names
            .get(to)
            .is_none_or(|n| seen.is_none_or(|t| n.since <= t))
        {
            self.names.remove(to);
        }
        self.drop_below(to, seen);
        let mut moved: Vec<(RelPath, NameInterest)> = Vec::new();
        if let Some(n) = self.names.remove(from) {
            moved.push((from.clone(), n));
        }
        let keys: Vec<RelPath> = self
            .names
            .range::<[u8], _>(range_of(&below(from)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(n) = self.names.remove(&key) {
                moved.push((key, n));
            }
        }
        for (old, n) in moved {
            if let Some(new) = old.rebase(from, to) {
                // What was learnt there since the rename was seen stays.
                self.names.entry(new).or_insert(n);
            }
        }
        true
    }

    /// Whether a node at or below `path` is held (a negative entry at
    /// `path` moves nothing).
    fn holds_at_or_below(&self, path: &RelPath) -> bool {
        self.names
            .get(path)
            .is_some_and(|n| n.target != Target::Absent)
            || self
                .names
                .range::<[u8], _>(range_of(&below(path)))
                .next()
                .is_some()
    }

    /// Forgets the names strictly below `dir` (those learnt no later than
    /// `seen`, when given); whether there were any.
    fn drop_below(&mut self, dir: &RelPath, seen: Option<Instant>) -> bool {
        let keys: Vec<RelPath> = self
            .names
            .range::<[u8], _>(range_of(&below(dir)))
            .filter(|(_, n)| seen.is_none_or(|t| n.since <= t))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            self.names.remove(key);
        }
        !keys.is_empty()
    }

    /// What the connection holds about `path` (for tests).
    #[cfg(test)]
    fn name(&self, path: &str) -> Option<Target> {
        let path = RelPath::parse(path).ok()?;
        self.names.get(&path).map(|n| n.target)
    }
}

/// `bounds` as a range over byte strings.
pub(crate) fn range_of(bounds: &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> (Bound<&[u8]>, Bound<&[u8]>) {
    fn side(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        match b {
            Bound::Included(v) => Bound::Included(v.as_slice()),
            Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        }
    }
    (side(&bounds.0), side(&bounds.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::FileKind;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    fn id(n: u64) -> NodeId {
        NodeId { dev: 1, ino: n }
    }

    fn fp(ctime: i64, mtime: i64, size: u64) -> Fingerprint {
        let mut a = Attr::blank(FileKind::File);
        a.ctime = Timestamp {
            secs: ctime,
            nanos: 0,
        };
        a.mtime = Timestamp {
            secs: mtime,
            nanos: 0,
        };
        a.size = size;
        Fingerprint::of(&a)
    }

    fn table() -> InterestTable {
        InterestTable::new(Duration::from_secs(60))
    }

    fn name(path: &str, now: Target) -> Event {
        Event::Name {
            path: p(path),
            now,
            dir: None,
        }
    }

    #[test]
    fn a_node_change_is_told_once_and_only_when_it_is_news() {
        let now = Instant::now();
        let mut t = table();
        t.learn_node(id(5), Some(fp(1, 1, 10)), now).unwrap();
        // What the connection was told already: no news.
        let same = [Event::Node {
            id: id(5),
            now: Some(fp(1, 1, 10)),
        }];
        assert!(t.notices_for(&same, now).is_empty());
        // A chmod: attributes only.
        let chmod = [Event::Node {
            id: id(5),
            now: Some(fp(2, 1, 10)),
        }];
        assert_eq!(
            t.notices_for(&chmod, now),
            vec![Change::Node {
                id: id(5),
                content: false
            }]
        );
        // Told once: the interest ended.
        assert!(t.notices_for(&chmod, now).is_empty());
        // A write: content.
        t.learn_node(id(5), Some(fp(2, 1, 10)), now).unwrap();
        let write = [Event::Node {
            id: id(5),
            now: Some(fp(3, 3, 10)),
        }];
        assert_eq!(
            t.notices_for(&write, now),
            vec![Change::Node {
                id: id(5),
                content: true
            }]
        );
        // Unknown either side: content too.
        t.learn_node(id(5), None, now).unwrap();
        assert_eq!(
            t.notices_for(&write, now),
            vec![Change::Node {
                id: id(5),
                content: true
            }]
        );
        // Nodes nobody holds are nobody's news.
        assert!(t
            .notices_for(
                &[Event::Node {
                    id: id(9),
                    now: None
                }],
                now
            )
            .is_empty());
    }

    #[test]
    fn a_name_change_is_news_even_when_it_leads_to_the_same_number() {
        let now = Instant::now();
        let mut t = table();
        t.learn_name(&p("d"), Target::Node(id(1)), now).unwrap();
        t.learn_name(&p("d/x"), Target::Node(id(2)), now).unwrap();
        t.learn_node(id(1), Some(fp(1, 1, 0)), now).unwrap();
        // `d` was replaced by a directory that got the freed number back.
        assert_eq!(
            t.notices_for(&[name("d", Target::Node(id(1)))], now),
            vec![Change::Name {
                path: p("d"),
                now: Some(id(1))
            }]
        );
        // The name stays held (its client keeps it); the node and what is
        // below it do not.
        assert_eq!(t.name("d"), Some(Target::Node(id(1))));
        assert_eq!(t.name("d/x"), None);
        assert!(t.nodes.is_empty());
        // Another node: the name goes too.
        assert_eq!(
            t.notices_for(&[name("d", Target::Node(id(3)))], now),
            vec![Change::Name {
                path: p("d"),
                now: Some(id(3))
            }]
        );
        assert_eq!(t.name("d"), None);
        assert!(t
            .notices_for(&[name("d", Target::Node(id(3)))], now)
            .is_empty());
    }

    #[test]
    fn negative_entries_hear_of_creation_and_removal_takes_the_subtree() {
        let now = Instant::now();
        let mut t = table();
        t.learn_name(&p("d/new"), Target::Absent, now).unwrap();
        assert_eq!(
            t.notices_for(&[name("d/new", Target::Node(id(7)))], now),
            vec![Change::Name {
                path: p("d/new"),
                now: Some(id(7))
            }]
        );
        // A directory's children go with it, even when the directory's own
        // name was not held.
        t.learn_name(&p("gone/a"), Target::Node(id(2)), now)
            .unwrap();
        t.learn_name(&p("gone/a/b"), Target::Node(id(3)), now)
            .unwrap();
        t.learn_name(&p("gone0"), Target::Node(id(4)), now).unwrap();
        assert_eq!(
            t.notices_for(&[name("gone", Target::Absent)], now),
            vec![Change::Name {
                path: p("gone"),
                now: None
            }]
        );
        assert_eq!(t.name("gone/a"), None);
        assert_eq!(t.name("gone/a/b"), None);
        assert_eq!(
            t.name("gone0"),
            Some(Target::Node(id(4))),
            "a sibling stays"
        );
    }

    #[test]
    fn a_new_name_in_a_directory_is_news_to_who_holds_its_names() {
        let now = Instant::now();
        let mut t = table();
        // A listing: the directory and its one name.
        t.learn_node(id(1), Some(fp(1, 1, 0)), now).unwrap();
        t.learn_name(&p("d/a"), Target::Node(id(2)), now).unwrap();
        let new = [Event::Name {
            path: p("d/theirs"),
            now: Target::Node(id(4)),
            dir: Some(id(1)),
        }];
        assert_eq!(
            t.notices_for(&new, now),
            vec![Change::Node {
                id: id(1),
                content: true
            }]
        );
        assert_eq!(t.name("d/a"), Some(Target::Node(id(2))), "the others stay");
    }

    #[test]
    fn a_rename_moves_the_interests_along() {
        let now = Instant::now();
        let mut t = table();
        t.learn_name(&p("a"), Target::Node(id(1)), now).unwrap();
        t.learn_name(&p("a/x"), Target::Node(id(2)), now).unwrap();
        t.learn_name(&p("b"), Target::Node(id(3)), now).unwrap();
        t.learn_name(&p("b/y"), Target::Node(id(4)), now).unwrap();
        t.learn_node(id(1), Some(fp(1, 1, 0)), now).unwrap();
        t.learn_node(id(9), Some(fp(1, 1, 0)), now).unwrap();
        let moved = [Event::Moved {
            from: p("a"),
            to: p("b"),
            now: Target::Node(id(1)),
            dirs: vec![id(9)],
        }];
        assert_eq!(
            t.notices_for(&moved, now),
            vec![
                Change::Moved {
                    from: p("a"),
                    to: p("b")
                },
                Change::Node {
                    id: id(9),
                    content: true
                }
            ]
        );
        assert_eq!(t.name("a"), None);
        assert_eq!(t.name("b"), Some(Target::Node(id(1))));
        assert_eq!(t.name("b/x"), Some(Target::Node(id(2))));
        assert_eq!(
            t.name("b/y"),
            None,
            "the replaced directory's names are gone"
        );
        // The moved node's attributes (its ctime) are no longer held.
        assert!(t.nodes.is_empty());
        // Holding only the target: what it named is gone.
        let mut t = table();
        t.learn_name(&p("b"), Target::Node(id(3)), now).unwrap();
        assert_eq!(
            t.notices_for(&moved, now),
            vec![Change::Name {
                path: p("b"),
                now: Some(id(1))
            }]
        );
        // Nothing held on either side: no news.
        assert!(t.notices_for(&moved, now).is_empty());
    }

    #[test]
    fn own_changes_are_learnt_not_told() {
        let now = Instant::now();
        let mut t = table();
        t.learn_name(&p("f"), Target::Absent, now).unwrap();
        t.learn_name(&p("d"), Target::Node(id(1)), now).unwrap();
        t.learn_name(&p("d/x"), Target::Node(id(2)), now).unwrap();
        t.learn_node(id(8), Some(fp(1, 1, 0)), now).unwrap();
        let own = [
            name("f", Target::Node(id(8))),
            Event::Node {
                id: id(8),
                now: Some(fp(5, 5, 0)),
            },
            Event::Moved {
                from: p("d"),
                to: p("e"),
                now: Target::Node(id(1)),
                dirs: Vec::new(),
            },
        ];
        t.apply_own(&own, now).unwrap();
        assert_eq!(t.name("f"), Some(Target::Node(id(8))));
        assert_eq!(t.name("d"), Some(Target::Absent));
        assert_eq!(t.name("e"), Some(Target::Node(id(1))));
        assert_eq!(t.name("e/x"), Some(Target::Node(id(2))));
        // The node as changed, seen again (the watch): no news.
        let echo = [Event::Node {
            id: id(8),
            now: Some(fp(5, 5, 0)),
        }];
        assert!(t.notices_for(&echo, now).is_empty());
        // Removing a directory here forgets what was below it.
        t.apply_own(&[name("e", Target::Absent)], now).unwrap();
        assert_eq!(t.name("e/x"), None);
    }

    #[test]
    fn interests_end_with_their_lease() {
        let now = Instant::now();
        let mut t = InterestTable::new(Duration::from_secs(5));
        t.learn_name(&p("f"), Target::Absent, now).unwrap();
        t.learn_node(id(1), None, now).unwrap();
        let later = now + Duration::from_secs(6);
        let events = [
            Event::Name {
                path: p("f"),
                now: Target::Node(id(2)),
                dir: None,
            },
            Event::Node {
                id: id(1),
                now: None,
            },
        ];
        assert!(t.notices_for(&events, later).is_empty());
        t.learn_node(id(3), None, now).unwrap();
        t.expire(later);
        assert_eq!(t.len(), 0);
        // Reading through an open file keeps an interest alive.
        t.learn_node(id(4), Some(fp(1, 1, 1)), now).unwrap();
        t.touch_node(id(4), now + Duration::from_secs(4)).unwrap();
        let events = [Event::Node {
            id: id(4),
            now: Some(fp(2, 2, 2)),
        }];
        assert_eq!(t.notices_for(&events, later).len(), 1);
    }

    #[test]
    fn what_was_learnt_after_a_change_was_seen_shows_it_already() {
        let seen = Instant::now();
        let after = seen + Duration::from_millis(1);
        let mut t = table();
        // Answers to requests that began after the watch read the change,
        // published only later (the watch waits for busy paths).
        t.learn_node(id(5), Some(fp(1, 1, 10)), after).unwrap();
        t.learn_name(&p("d"), Target::Node(id(1)), after).unwrap();
        t.learn_name(&p("d/x"), Target::Node(id(2)), seen).unwrap();
        let write = [Event::Node {
            id: id(5),
            now: Some(fp(2, 2, 20)),
        }];
        assert!(t.notices_for(&write, seen).is_empty());
        // The interest stays: a change seen later is news.
        assert_eq!(t.notices_for(&write, after).len(), 1);
        // The name is not news; what was learnt below it before is.
        assert_eq!(
            t.notices_for(&[name("d", Target::Node(id(3)))], seen),
            vec![Change::Name {
                path: p("d"),
                now: Some(id(3))
            }]
        );
        assert_eq!(t.name("d"), Some(Target::Node(id(1))));
        assert_eq!(t.name("d/x"), None);
        assert!(t
            .notices_for(&[name("d", Target::Node(id(3)))], seen)
            .is_empty());
    }

    /// A listing fetched ahead may show a node changed (read after a chmod
    /// the watch has not published yet) while the kernel keeps the attributes
    /// an earlier answer gave it: the chmod, published next, must be told.
    #[test]
    fn a_node_learnt_anew_without_a_notice_between_hears_of_the_next_change() {
        let now = Instant::now();
        let later = now + Duration::from_millis(1);
        let mut t = table();
        t.learn_node(id(5), Some(fp(1, 1, 10)), now).unwrap();
        t.learn_node(id(5), Some(fp(2, 1, 10)), later).unwrap();
        let chmod = [Event::Node {
            id: id(5),
            now: Some(fp(2, 1, 10)),
        }];
        assert_eq!(
            t.notices_for(&chmod, later),
            vec![Change::Node {
                id: id(5),
                content: true
            }]
        );
        // The same state learnt again is no news.
        t.learn_node(id(5), Some(fp(2, 1, 10)), later).unwrap();
        t.learn_node(id(5), Some(fp(2, 1, 10)), later).unwrap();
        assert!(t.notices_for(&chmod, later).is_empty());
    }

    #[test]
    fn a_full_table_first_drops_what_expired_then_refuses() {
        let now = Instant::now();
        let mut t = InterestTable::new(Duration::from_secs(5));
        for n in 0..MAX_NODES as u64 {
            t.learn_node(id(n), None, now).unwrap();
        }
        assert_eq!(t.learn_node(id(u64::MAX), None, now), Err(Full));
        // Known ones can still be renewed.
        t.learn_node(id(1), None, now).unwrap();
        let later = now + Duration::from_secs(6);
        t.learn_node(id(u64::MAX), None, later).unwrap();
        assert_eq!(t.len(), 1);
    }
}
