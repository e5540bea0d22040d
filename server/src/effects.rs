//! What each request lets its client cache, and what it changes: the hooks
//! `Session::handle` runs around every operation for coherent caches (see
//! `registry` for what they guarantee).
//!
//! Before an operation runs ([`Coherence::before`]): the request's start in
//! the change log is taken; the directories its answer depends on are watched
//! (before they are read, so that no change by a process on the server slips
//! between the read and the watch); what it will change is marked busy; and,
//! when anyone listens, the node a removal or rename will take away is looked
//! at. After it ([`Coherence::after`]): the changes are published with the
//! state after them (taken from the answer wherever it carries it), and what
//! the answer told a subscribed connection is learnt by its table.

use crate::export::ExportRoot;
use crate::handles::HandleTable;
use crate::interest::{Event, Fingerprint, Target};
use crate::registry::{BusyGuard, Learned, Registry, Start, Subscriber, Watched};
use ferry_common::proto::{AttrChanges, NodeId, Op, Reply};
use ferry_common::{Attr, Errno, FileKind, RelPath};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

/// One connection's hooks.
#[derive(Debug)]
pub(crate) struct Coherence {
    registry: Arc<Registry>,
    sub: Arc<Subscriber>,
}

/// What an operation is, for the hooks.
#[derive(Debug)]
enum Plan {
    /// Nothing cached, nothing changed.
    Nothing,
    /// `Stat`: the name, and the node it leads to.
    Lookup(RelPath),
    /// `ReadDir`, `List`: the directory as it was before it was read (not
    /// for the further pages of a listing: its first page told that), and its
    /// names.
    List { dir: RelPath, before: Option<Attr> },
    /// `Open`, `OpenRead`: the name and node; with `O_TRUNC`, a change of its
    /// data. An `OpenRead` answered with data tells the data too.
    Open { path: RelPath, trunc: bool },
    /// `Create`, `Mkdir`, `Mknod`, `Symlink`, `Link`: a new name (unless the
    /// file existed: a create without `O_EXCL` opens it).
    Make { path: RelPath, existed: bool },
    /// `Unlink`, `Rmdir`: a name goes, and with it (maybe) a node.
    Remove {
        path: RelPath,
        victim: Option<NodeId>,
    },
    Rename {
        from: RelPath,
        to: RelPath,
        exchange: bool,
        victim: Option<NodeId>,
    },
    /// `SetAttr` by path: the node changes; the answer has its new attributes.
    SetAttr,
    /// `SetXattr`, `RemoveXattr`: the node changes.
    XattrChange(RelPath),
    /// `SetAttr` through an open file: a change, or (no changes) a getattr.
    HandleAttr { changes: bool },
    /// `Read`: the data of this node.
    Read(Option<NodeId>),
    /// `Write`, `Fallocate`, `CopyFileRange`: the data of the file behind `handle`.
    Data { handle: u64, id: Option<NodeId> },
    /// `ReadFiles`: the names, nodes and data of the files read.
    ReadFiles(RelPath),
    /// `GetXattr`, `ListXattr`: the node as it was before it was read.
    Xattr(Option<Attr>),
}

/// What [`Coherence::before`] found, for [`Coherence::after`].
#[derive(Debug)]
pub(crate) struct Ticket {
    start: Start,
    plan: Plan,
    /// This connection is subscribed: its answers are learnt.
    learning: bool,
    /// Someone is subscribed: changes are worth a system call to describe.
    precise: bool,
    _busy: Option<BusyGuard>,
}

fn parent(path: &RelPath) -> Option<RelPath> {
    path.split_last().map(|(dir, _)| dir)
}

fn node_event(attr: &Attr) -> Event {
    Event::Node {
        id: NodeId::of(attr),
        now: Some(Fingerprint::of(attr)),
    }
}

fn node_learned(attr: &Attr) -> Learned {
    Learned::Node(NodeId::of(attr), Some(Fingerprint::of(attr)))
}

impl Coherence {
    pub(crate) fn new(registry: Arc<Registry>) -> Coherence {
        let sub = registry.subscriber();
        Coherence { registry, sub }
    }

    /// This connection's side of the registry (its writer sends the notices).
    pub(crate) fn subscriber(&self) -> Arc<Subscriber> {
        Arc::clone(&self.sub)
    }

    /// `Op::Subscribe`: answers the lease granted.
    pub(crate) fn subscribe(&self, lease_secs: u32) -> u32 {
        self.registry.subscribe(&self.sub, lease_secs)
    }

    fn export(&self) -> &ExportRoot {
        &self.registry.export
    }

    /// Watches `dir` before a subscribed request reads under it.
    fn watch(&self, dir: Option<RelPath>) {
        if let Some(dir) = dir {
            self.registry.watch_dir(&dir);
        }
    }

    /// Runs before `op`.
    pub(crate) fn before(&self, op: &Op, handles: &HandleTable) -> Ticket {
        let start = self.registry.start();
        let learning = self.sub.subscribed();
        let precise = learning || self.registry.has_subscribers();
        let mut busy_paths: Vec<RelPath> = Vec::new();
        let mut busy_ids: Vec<NodeId> = Vec::new();
        let victim = |path: &RelPath| {
            precise
                .then(|| self.export().stat(path).ok().map(|a| NodeId::of(&a)))
                .flatten()
        };
        let plan = match op {
            Op::Stat { path } => {
                if learning {
                    self.watch(parent(path));
                }
                Plan::Lookup(path.clone())
            }
            Op::ReadDir { path, .. } | Op::List { path, cursor: 0 } => {
                let mut before = None;
                if learning {
                    self.watch(Some(path.clone()));
                    before = self.export().stat(path).ok();
                }
                Plan::List {
                    dir: path.clone(),
                    before,
                }
            }
            // A listing's further pages: its directory is watched already.
            Op::List { path, .. } => Plan::List {
                dir: path.clone(),
                before: None,
            },
            Op::Open { path, flags } | Op::OpenRead { path, flags, .. } => {
                let trunc = flags & libc::O_TRUNC != 0;
                if learning {
                    self.watch(parent(path));
                }
                if trunc {
                    busy_paths.push(path.clone());
                }
                Plan::Open {
                    path: path.clone(),
                    trunc,
                }
            }
            Op::Create { path, .. } | Op::CreateAs { path, .. } => {
                if learning {
                    self.watch(parent(path));
                }
                busy_paths.push(path.clone());
                Plan::Make {
                    path: path.clone(),
                    existed: precise && self.export().stat(path).is_ok(),
                }
            }
            Op::Mkdir { path, .. } | Op::Mknod { path, .. } | Op::Symlink { path, .. } => {
                if learning {
                    self.watch(parent(path));
                }
                busy_paths.push(path.clone());
                Plan::Make {
                    path: path.clone(),
                    existed: false,
                }
            }
            Op::Link { existing, path } => {
                if learning {
                    self.watch(parent(path));
                }
                busy_paths.push(path.clone());
                busy_paths.push(existing.clone());
                Plan::Make {
                    path: path.clone(),
                    existed: false,
                }
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                busy_paths.push(path.clone());
                Plan::Remove {
                    path: path.clone(),
                    victim: victim(path),
                }
            }
            Op::Rename { from, to, flags } => {
                busy_paths.push(from.clone());
                busy_paths.push(to.clone());
                Plan::Rename {
                    from: from.clone(),
                    to: to.clone(),
                    exchange: flags & libc::RENAME_EXCHANGE != 0,
                    victim: victim(to),
                }
            }
            Op::SetAttr {
                path, handle: None, ..
            } => {
                busy_paths.push(path.clone());
                Plan::SetAttr
            }
            Op::SetAttr {
                handle: Some(handle),
                changes,
                ..
            } => {
                let changes = *changes != AttrChanges::default();
                if changes {
                    busy_ids.extend(handles.id(*handle));
                }
                Plan::HandleAttr { changes }
            }
            Op::SetXattr { path, .. } | Op::RemoveXattr { path, .. } => {
                busy_paths.push(path.clone());
                Plan::XattrChange(path.clone())
            }
            Op::GetXattr { path, .. } | Op::ListXattr { path } => {
                Plan::Xattr(learning.then(|| self.export().stat(path).ok()).flatten())
            }
            Op::Read { handle, .. } => Plan::Read(handles.id(*handle)),
            Op::Write { handle, .. } | Op::Fallocate { handle, .. } => {
                let id = handles.id(*handle);
                busy_ids.extend(id);
                Plan::Data {
                    handle: *handle,
                    id,
                }
            }
            Op::CopyFileRange { handle_out, .. } => {
                let id = handles.id(*handle_out);
                busy_ids.extend(id);
                Plan::Data {
                    handle: *handle_out,
                    id,
                }
            }
            Op::ReadFiles { dir, .. } => {
                if learning {
                    self.watch(Some(dir.clone()));
                }
                Plan::ReadFiles(dir.clone())
            }
            Op::ReadLink { .. }
            | Op::Fsync { .. }
            | Op::Close { .. }
            | Op::StatFs
            | Op::SetLock { .. }
            | Op::GetLock { .. }
            | Op::ReleaseLocks { .. }
            | Op::ReclaimLock { .. }
            | Op::ReclaimComplete
            | Op::Ping
            | Op::Subscribe { .. } => Plan::Nothing,
        };
        let busy = (precise && !(busy_paths.is_empty() && busy_ids.is_empty()))
            .then(|| self.registry.mark_busy(&self.sub, busy_paths, busy_ids));
        Ticket {
            start,
            plan,
            learning,
            precise,
            _busy: busy,
        }
    }

    /// Runs after the operation of `ticket` answered `result`.
    pub(crate) fn after(
        &self,
        ticket: Ticket,
        result: &Result<Reply, Errno>,
        handles: &HandleTable,
    ) {
        let Ticket {
            start,
            plan,
            learning,
            precise,
            _busy,
        } = ticket;
        let mut events: Vec<Event> = Vec::new();
        let mut learned: Vec<Learned> = Vec::new();
        // Name changes the watch will see too.
        let mut echoes: Vec<RelPath> = Vec::new();
        // A directory this connection is told of and now caches: watched
        // after the fact, so it is looked at again once watched.
        let mut new_dir: Option<(RelPath, Attr)> = None;
        match (plan, result) {
            (Plan::Nothing, _) => {}
            (Plan::Lookup(path), Ok(Reply::Attr(attr))) => {
                learned.push(Learned::Name(path.clone(), Target::Node(NodeId::of(attr))));
                learned.push(node_learned(attr));
                if attr.kind == FileKind::Directory {
                    new_dir = Some((path, *attr));
                }
            }
            (Plan::Lookup(path), Err(e)) if *e == Errno::ENOENT => {
                learned.push(Learned::Name(path, Target::Absent));
            }
            (
                Plan::List { dir, before },
                Ok(Reply::Entries { entries, .. } | Reply::Listing { entries, .. }),
            ) => {
                if let Some(before) = before {
                    learned.push(node_learned(&before));
                }
                for entry in entries {
                    let Ok(path) = dir.join(OsStr::from_bytes(&entry.name)) else {
                        continue;
                    };
                    learned.push(Learned::Name(path, Target::Node(NodeId::of(&entry.attr))));
                    learned.push(node_learned(&entry.attr));
                }
            }
            (Plan::Open { path, trunc }, Ok(reply)) => {
                if let Some((_, attr)) = reply.opened() {
                    if trunc {
                        events.push(node_event(&attr));
                    }
                    learned.push(Learned::Name(path, Target::Node(NodeId::of(&attr))));
                    learned.push(node_learned(&attr));
                    if matches!(reply, Reply::OpenedWithData { .. }) {
                        learned.push(Learned::Touch(NodeId::of(&attr)));
                    }
                }
            }
            (Plan::ReadFiles(dir), Ok(Reply::Files(files))) => {
                for file in files {
                    let (Ok(path), Ok(contents)) =
                        (dir.join(OsStr::from_bytes(&file.name)), &file.result)
                    else {
                        continue;
                    };
                    let id = NodeId::of(&contents.attr);
                    learned.push(Learned::Name(path, Target::Node(id)));
                    learned.push(node_learned(&contents.attr));
                    learned.push(Learned::Touch(id));
                }
            }
            (Plan::Make { path, existed }, Ok(reply)) => {
                let (attr, dir) = match reply {
                    Reply::Created { attr, dir, .. } | Reply::Entry { attr, dir } => {
                        (Some(*attr), Some(*dir))
                    }
                    Reply::Attr(attr) | Reply::Opened { attr, .. } => (Some(*attr), None),
                    _ => (None, None),
                };
                if let Some(attr) = attr {
                    let id = NodeId::of(&attr);
                    if !existed {
                        events.push(Event::Name {
                            path: path.clone(),
                            now: Target::Node(id),
                            dir: dir.as_ref().map(NodeId::of),
                        });
                        echoes.push(path.clone());
                    }
                    events.push(node_event(&attr));
                    learned.push(Learned::Name(path.clone(), Target::Node(id)));
                    learned.push(node_learned(&attr));
                    if attr.kind == FileKind::Directory {
                        new_dir = Some((path, attr));
                    }
                }
                if let Some(dir) = dir {
                    events.push(node_event(&dir));
                    learned.push(node_learned(&dir));
                }
            }
            (Plan::Remove { path, victim }, Ok(reply)) => {
                let dirs = changed_dirs(reply);
                events.push(Event::Name {
                    path: path.clone(),
                    now: Target::Absent,
                    dir: dirs.first().map(NodeId::of),
                });
                echoes.push(path.clone());
                learned.push(Learned::Name(path, Target::Absent));
                if let Some(victim) = victim {
                    // One name fewer (or gone): its link count and ctime moved.
                    events.push(Event::Node {
                        id: victim,
                        now: None,
                    });
                }
                for dir in &dirs {
                    events.push(node_event(dir));
                    learned.push(node_learned(dir));
                }
            }
            (
                Plan::Rename {
                    from,
                    to,
                    exchange,
                    victim,
                },
                Ok(reply),
            ) => {
                let dirs = changed_dirs(reply);
                let same_dir = parent(&from) == parent(&to);
                let dir_from = dirs.first().map(NodeId::of);
                let dir_to = if same_dir {
                    dir_from
                } else {
                    dirs.get(1).map(NodeId::of)
                };
                let look = |path: &RelPath| -> Option<Attr> {
                    precise.then(|| self.export().stat(path).ok()).flatten()
                };
                let target =
                    |a: Option<Attr>| a.map_or(Target::Unknown, |a| Target::Node(NodeId::of(&a)));
                if exchange {
                    // Each name now leads where the other did (the watch sees
                    // two renames: two events at each name).
                    for (path, dir) in [(&from, dir_from), (&to, dir_to)] {
                        events.push(Event::Name {
                            path: path.clone(),
                            now: target(look(path)),
                            dir,
                        });
                        echoes.extend([path.clone(), path.clone()]);
                    }
                } else {
                    let moved = look(&to);
                    self.registry.moved(&from, &to);
                    let now = target(moved);
                    events.push(Event::Moved {
                        from: from.clone(),
                        to: to.clone(),
                        now,
                        dirs: dir_from.into_iter().chain(dir_to).collect(),
                    });
                    echoes.extend([from.clone(), to.clone()]);
                    learned.push(Learned::Name(from.clone(), Target::Absent));
                    learned.push(Learned::Name(to.clone(), now));
                    if let Some(moved) = moved {
                        events.push(node_event(&moved));
                        learned.push(node_learned(&moved));
                    }
                }
                if let Some(victim) = victim {
                    events.push(Event::Node {
                        id: victim,
                        now: None,
                    });
                }
                for dir in &dirs {
                    events.push(node_event(dir));
                    learned.push(node_learned(dir));
                }
            }
            (Plan::SetAttr, Ok(Reply::Attr(attr))) => {
                events.push(node_event(attr));
                learned.push(node_learned(attr));
            }
            (Plan::XattrChange(path), Ok(_)) if precise => {
                if let Ok(attr) = self.export().stat(&path) {
                    events.push(node_event(&attr));
                    learned.push(node_learned(&attr));
                }
            }
            (Plan::HandleAttr { changes }, Ok(Reply::Attr(attr))) => {
                if changes {
                    events.push(node_event(attr));
                }
                learned.push(node_learned(attr));
            }
            (Plan::Read(Some(id)), Ok(_)) => learned.push(Learned::Touch(id)),
            (
                Plan::Data {
                    handle,
                    id: Some(id),
                },
                Ok(_),
            ) => {
                let now = precise
                    .then(|| handles.get(handle).and_then(|f| f.attr()).ok())
                    .flatten();
                events.push(Event::Node {
                    id,
                    now: now.as_ref().map(Fingerprint::of),
                });
            }
            (Plan::Xattr(Some(before)), Ok(_)) => learned.push(node_learned(&before)),
            _ => {}
        }
        self.registry.publish(Some(&self.sub), &events);
        self.registry.expect_echoes(&echoes);
        if learning {
            self.registry.learn(&self.sub, start, learned);
            if let Some((path, attr)) = new_dir {
                self.watch_new_dir(&path, &attr);
            }
        }
    }

    /// Watches a directory this connection now caches (its attributes, or
    /// that it is empty); one watched only now is looked at again, and a
    /// change made before the watch existed is told as news.
    fn watch_new_dir(&self, path: &RelPath, told: &Attr) {
        if self.registry.watch_dir(path) != Watched::New {
            return;
        }
        let now = self.export().stat(path).ok();
        if now.map(|a| Fingerprint::of(&a)) != Some(Fingerprint::of(told)) {
            self.registry.publish(
                None,
                &[Event::Node {
                    id: NodeId::of(told),
                    now: now.as_ref().map(Fingerprint::of),
                }],
            );
        }
    }
}

/// The directories whose attributes a removal or rename answered with.
fn changed_dirs(reply: &Reply) -> Vec<Attr> {
    match reply {
        Reply::DirsChanged(dirs) => dirs.clone(),
        _ => Vec::new(),
    }
}

impl Drop for Coherence {
    fn drop(&mut self) {
        self.registry.unsubscribe(&self.sub);
    }
}
