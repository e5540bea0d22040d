//! `Watcher`: the export watched for changes that do not come through the
//! server — a process on the server writing in the exported directory — turned
//! into the same [`Event`]s as changes made through it, and published.
//!
//! inotify watches one directory at a time, so the watch covers exactly the
//! directories clients may have cached something under (see `effects`), up to
//! [`MAX_WATCHES`]; a directory is held by a descriptor opened beneath the
//! export root (through no symlink) and watched through `/proc/self/fd`, so
//! nothing outside the export is ever watched. Each event is mapped back to an
//! export-relative path by its watch, and the state after it is read with a
//! confined `lstat`. A rename is one event pair when both directories are
//! watched (then the watches below it move along), two unrelated events
//! otherwise.
//!
//! What cannot be trusted ends in "drop everything": a queue overflow
//! (`IN_Q_OVERFLOW`: events were lost) tells every client to drop its caches;
//! running out of watches does too, and starts over with none (see
//! `Registry::watch_dir`).
//!
//! One thread of its own reads the events. A change made through the server
//! reaches the watch as well. Its name changes (create, remove, rename) were
//! published precisely by the request that made them, and the watch's event
//! for each is taken as its echo (`Registry::take_echo`), once. For a node's
//! change, the thread waits while a request is still busy with the path an
//! event names (see `Registry::is_busy`), after which the request's
//! connection holds the new state and the event is no news to it, and tells
//! it to nobody whose request is changing that node right now (a file written
//! without pause would hold it up otherwise).

use crate::export::ExportRoot;
use crate::interest::{range_of, Event, Fingerprint, Target};
use crate::registry::Registry;
use crate::sys;
use ferry_common::proto::NodeId;
use ferry_common::sync::lock;
use ferry_common::{Errno, RelPath};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::ops::Bound;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// Directories watched at most.
pub(crate) const MAX_WATCHES: usize = 65_536;
/// What each watch reports.
const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;
/// How long the thread waits for events before it looks after the tables.
const POLL_MS: i32 = 200;
/// How often expired interests and unneeded watches are dropped.
const TIDY_EVERY: Duration = Duration::from_secs(5);
/// How long an event waits for a request still busy with its path.
const BUSY_PATIENCE: Duration = Duration::from_secs(1);
/// Once events come, the thread waits this long for more before it looks at
/// them: a burst (an untar through the server) is handled in a few batches
/// rather than one wake-up per event.
const GATHER: Duration = Duration::from_millis(2);
/// The read buffer: many events, and always at least one of the longest.
const BUFFER: usize = 64 * 1024;

/// Why a directory could not be watched.
#[derive(Debug)]
pub(crate) enum EnsureError {
    /// No watch left: [`MAX_WATCHES`], or the system's `max_user_watches`.
    Full,
    /// The directory is gone (or is no directory): nothing to watch.
    Gone,
    Failed(io::Error),
}

impl std::fmt::Display for EnsureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnsureError::Full => f.write_str("no watch left"),
            EnsureError::Gone => f.write_str("the directory is gone"),
            EnsureError::Failed(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Debug)]
struct Watch {
    wd: i32,
    id: NodeId,
    /// When a request last needed it.
    needed: Instant,
}

#[derive(Debug, Default)]
struct Watches {
    /// Ordered, so that a subtree is one range.
    by_path: BTreeMap<RelPath, Watch>,
    by_wd: HashMap<i32, RelPath>,
}

/// One inotify instance and its watches.
#[derive(Debug)]
pub(crate) struct Watcher {
    fd: OwnedFd,
    watches: Mutex<Watches>,
    max: usize,
}

/// An event as read, before it is given meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Raw {
    wd: i32,
    mask: u32,
    cookie: u32,
    name: Vec<u8>,
}

/// The range of paths at and below `dir`.
fn subtree(dir: &RelPath) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    if dir.is_root() {
        return (Bound::Unbounded, Bound::Unbounded);
    }
    let mut high = dir.as_bytes().to_vec();
    high.push(b'/' + 1);
    (
        Bound::Included(dir.as_bytes().to_vec()),
        Bound::Excluded(high),
    )
}

fn in_subtree(path: &RelPath, dir: &RelPath) -> bool {
    path.starts_with(dir)
}

impl Watcher {
    pub(crate) fn new() -> io::Result<Watcher> {
        Ok(Watcher {
            fd: sys::inotify_init()?,
            watches: Mutex::new(Watches::default()),
            max: MAX_WATCHES,
        })
    }

    /// How many directories are watched.
    pub(crate) fn len(&self) -> usize {
        lock(&self.watches).by_path.len()
    }

    /// Watches directory `dir` of `export` if it is not watched yet: whether it
    /// was just now.
    pub(crate) fn ensure(&self, export: &ExportRoot, dir: &RelPath) -> Result<bool, EnsureError> {
        let mut w = lock(&self.watches);
        if let Some(watch) = w.by_path.get_mut(dir) {
            watch.needed = Instant::now();
            return Ok(false);
        }
        if w.by_path.len() >= self.max {
            return Err(EnsureError::Full);
        }
        let (fd, attr) = export.open_dir_ref(dir).map_err(|e| match e.code() {
            libc::ENOENT | libc::ENOTDIR | libc::ELOOP => EnsureError::Gone,
            _ => EnsureError::Failed(e.into()),
        })?;
        let wd = sys::inotify_watch_fd(self.fd.as_fd(), fd.as_fd(), MASK).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ENOSPC) => EnsureError::Full,
                Some(libc::ENOENT) => EnsureError::Gone,
                _ => EnsureError::Failed(e),
            }
        })?;
        // The same directory under an older path (moved while unseen): one watch.
        if let Some(old) = w.by_wd.remove(&wd) {
            w.by_path.remove(&old);
        }
        w.by_wd.insert(wd, dir.clone());
        w.by_path.insert(
            dir.clone(),
            Watch {
                wd,
                id: NodeId::of(&attr),
                needed: Instant::now(),
            },
        );
        Ok(true)
    }

    /// Whether directory `dir` is watched.
    pub(crate) fn watches(&self, dir: &RelPath) -> bool {
        lock(&self.watches).by_path.contains_key(dir)
    }

    /// Stops watching everything.
    pub(crate) fn clear(&self) {
        let mut w = lock(&self.watches);
        for watch in w.by_path.values() {
            let _ = sys::inotify_unwatch(self.fd.as_fd(), watch.wd);
        }
        w.by_path.clear();
        w.by_wd.clear();
    }

    /// The watched directory of `wd`: its path and node.
    fn dir_of(&self, wd: i32) -> Option<(RelPath, NodeId)> {
        let w = lock(&self.watches);
        let path = w.by_wd.get(&wd)?;
        let watch = w.by_path.get(path)?;
        Some((path.clone(), watch.id))
    }

    /// `from` was renamed to `to`: the watches at and below it follow.
    pub(crate) fn rebase(&self, from: &RelPath, to: &RelPath) {
        let mut w = lock(&self.watches);
        let Watches { by_path, by_wd } = &mut *w;
        // Whatever `to` held is gone (the kernel drops those watches itself).
        let replaced: Vec<RelPath> = by_path
            .range::<[u8], _>(range_of(&subtree(to)))
            .map(|(p, _)| p.clone())
            .filter(|p| in_subtree(p, to))
            .collect();
        for path in replaced {
            if let Some(watch) = by_path.remove(&path) {
                by_wd.remove(&watch.wd);
            }
        }
        let moved: Vec<RelPath> = by_path
            .range::<[u8], _>(range_of(&subtree(from)))
            .map(|(p, _)| p.clone())
            .filter(|p| in_subtree(p, from))
            .collect();
        for old in moved {
            let Some(new) = old.rebase(from, to) else {
                continue;
            };
            if let Some(watch) = by_path.remove(&old) {
                by_wd.insert(watch.wd, new.clone());
                by_path.insert(new, watch);
            }
        }
    }

    /// Stops watching `dir` and everything below it (moved out of sight).
    fn forget_below(&self, dir: &RelPath) {
        let mut w = lock(&self.watches);
        let Watches { by_path, by_wd } = &mut *w;
        let gone: Vec<RelPath> = by_path
            .range::<[u8], _>(range_of(&subtree(dir)))
            .map(|(p, _)| p.clone())
            .filter(|p| in_subtree(p, dir) && !p.is_root())
            .collect();
        for path in gone {
            if let Some(watch) = by_path.remove(&path) {
                by_wd.remove(&watch.wd);
                let _ = sys::inotify_unwatch(self.fd.as_fd(), watch.wd);
            }
        }
    }

    /// The kernel dropped watch `wd` (its directory is gone).
    fn dropped(&self, wd: i32) {
        let mut w = lock(&self.watches);
        if let Some(path) = w.by_wd.remove(&wd) {
            if w.by_path.get(&path).is_some_and(|watch| watch.wd == wd) {
                w.by_path.remove(&path);
            }
        }
    }

    /// Stops watching what no request needed since `cutoff` (the root stays).
    fn tidy(&self, cutoff: Instant) {
        let mut w = lock(&self.watches);
        let Watches { by_path, by_wd } = &mut *w;
        let stale: Vec<RelPath> = by_path
            .iter()
            .filter(|(p, watch)| !p.is_root() && watch.needed < cutoff)
            .map(|(p, _)| p.clone())
            .collect();
        for path in stale {
            if let Some(watch) = by_path.remove(&path) {
                by_wd.remove(&watch.wd);
                let _ = sys::inotify_unwatch(self.fd.as_fd(), watch.wd);
            }
        }
        if let Some(root) = by_path.get_mut(&RelPath::root()) {
            root.needed = Instant::now();
        }
    }

    /// The events that arrive within `timeout_ms` (none when nothing did).
    fn read(&self, timeout_ms: i32) -> io::Result<Vec<Raw>> {
        let mut raws = Vec::new();
        if !sys::wait_readable(self.fd.as_fd(), timeout_ms)? {
            return Ok(raws);
        }
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = sys::read_nonblocking(self.fd.as_fd(), &mut buf)?;
            if n == 0 {
                return Ok(raws);
            }
            raws.extend(parse(&buf[..n]));
        }
    }
}

/// The events in a buffer read from inotify: each a `struct inotify_event`
/// (descriptor, mask, cookie, name length) and its NUL-padded name. A
/// truncated tail (which the kernel never produces) is ignored.
fn parse(buf: &[u8]) -> Vec<Raw> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
    };
    let mut raws = Vec::new();
    let mut at = 0;
    while let (Some(wd), Some(mask), Some(cookie), Some(len)) =
        (word(at), word(at + 4), word(at + 8), word(at + 12))
    {
        let start = at + 16;
        let Some(name) = buf.get(start..start + len as usize) else {
            break;
        };
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        raws.push(Raw {
            wd: wd as i32,
            mask,
            cookie,
            name: name[..end].to_vec(),
        });
        at = start + len as usize;
    }
    raws
}

/// Starts the thread that reads the watch's events and publishes them.
pub(crate) fn spawn(registry: Weak<Registry>, watcher: Arc<Watcher>) {
    let started = thread::Builder::new()
        .name("ferry-watch".into())
        .spawn(move || run(registry, watcher));
    if let Err(e) = started {
        log::warn!("cannot start the thread watching the export: {e}");
    }
}

fn run(registry: Weak<Registry>, watcher: Arc<Watcher>) {
    let mut tidied = Instant::now();
    loop {
        let mut read = watcher.read(POLL_MS);
        // What was read happened before this.
        let mut observed = Instant::now();
        if matches!(&read, Ok(raws) if !raws.is_empty()) {
            thread::sleep(GATHER);
            if let (Ok(raws), Ok(more)) = (&mut read, watcher.read(0)) {
                raws.extend(more);
                observed = Instant::now();
            }
        }
        let Some(reg) = registry.upgrade() else {
            return;
        };
        match read {
            Ok(raws) if !raws.is_empty() => handle(&reg, &watcher, raws, observed),
            Ok(_) => {}
            Err(e) => {
                log::warn!("reading the watch on the export failed: {e}");
                reg.go_blind();
                drop(reg);
                thread::sleep(Duration::from_secs(1));
                continue;
            }
        }
        if tidied.elapsed() >= TIDY_EVERY {
            reg.expire();
            if let Some(cutoff) = Instant::now().checked_sub(reg.longest_interest()) {
                watcher.tidy(cutoff);
            }
            reg.recover();
            tidied = Instant::now();
        }
    }
}

/// One raw event placed in the export.
#[derive(Clone, Debug)]
struct Placed {
    mask: u32,
    cookie: u32,
    /// The watched directory and its node.
    dir: RelPath,
    dir_id: NodeId,
    /// The directory's child the event is about, or `None` for the directory itself.
    child: Option<RelPath>,
}

impl Placed {
    fn path(&self) -> &RelPath {
        self.child.as_ref().unwrap_or(&self.dir)
    }
}

/// Gives a batch of events meaning, waits for the requests still busy with
/// what they touch, and publishes them.
fn handle(reg: &Registry, watcher: &Watcher, raws: Vec<Raw>, observed: Instant) {
    if raws.iter().any(|r| r.mask & libc::IN_Q_OVERFLOW != 0) {
        log::info!("the watch on the export overflowed; clients drop their caches");
        reg.reset_all();
    }
    let mut placed = Vec::new();
    for raw in raws {
        if raw.mask & libc::IN_IGNORED != 0 {
            watcher.dropped(raw.wd);
            continue;
        }
        let Some((dir, dir_id)) = watcher.dir_of(raw.wd) else {
            continue;
        };
        let child = if raw.name.is_empty() {
            None
        } else {
            match dir.join(OsStr::from_bytes(&raw.name)) {
                Ok(p) => Some(p),
                Err(_) => continue,
            }
        };
        placed.push(Placed {
            mask: raw.mask,
            cookie: raw.cookie,
            dir,
            dir_id,
            child,
        });
    }
    if placed.is_empty() {
        return;
    }
    let paths: Vec<RelPath> = placed.iter().map(|p| p.path().clone()).collect();
    let waited = Instant::now();
    while reg.is_busy(&paths) && waited.elapsed() < BUSY_PATIENCE {
        thread::sleep(Duration::from_millis(1));
    }
    // A name change made through the server was published precisely then.
    let mut events = translate(reg, watcher, &placed);
    events.retain(|e| match e {
        Event::Name { path, .. } => !reg.take_echo(path),
        Event::Moved { from, to, .. } => !(reg.take_echo(from) & reg.take_echo(to)),
        Event::Node { .. } => true,
    });
    let ids: Vec<NodeId> = events
        .iter()
        .filter_map(|e| match e {
            Event::Node { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    reg.publish_except(None, &reg.busy_with(&ids), &events, observed);
}

/// What `path` leads to now, and what it looks like.
fn look(export: &ExportRoot, path: &RelPath) -> (Target, Option<(NodeId, Fingerprint)>) {
    match export.stat(path) {
        Ok(attr) => (
            Target::Node(NodeId::of(&attr)),
            Some((NodeId::of(&attr), Fingerprint::of(&attr))),
        ),
        Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => (Target::Absent, None),
        // Unreadable: whatever it was, anyone who held it must look again.
        Err(_) => (Target::Unknown, None),
    }
}

/// The events a batch stands for, with the state after it as it is now.
fn translate(reg: &Registry, watcher: &Watcher, placed: &[Placed]) -> Vec<Event> {
    let export = &*reg.export;
    let mut events = Vec::new();
    let mut looked_at: HashSet<RelPath> = HashSet::new();
    let node = |events: &mut Vec<Event>, path: &RelPath| {
        if let (_, Some((id, fp))) = look(export, path) {
            events.push(Event::Node { id, now: Some(fp) });
        }
    };
    let mut i = 0;
    while i < placed.len() {
        let p = &placed[i];
        i += 1;
        let is_dir = p.mask & libc::IN_ISDIR != 0;
        let Some(child) = &p.child else {
            // About the watched directory itself.
            if p.mask & libc::IN_ATTRIB != 0 && looked_at.insert(p.dir.clone()) {
                node(&mut events, &p.dir);
            }
            if p.mask & libc::IN_MOVE_SELF != 0 {
                // Still where the watch says? If not, its place is unknown.
                let here = export.stat(&p.dir).ok().map(|a| NodeId::of(&a));
                if here != Some(p.dir_id) {
                    watcher.forget_below(&p.dir);
                }
            }
            continue;
        };
        if p.mask & libc::IN_MOVED_FROM != 0 {
            let pair = placed
                .get(i)
                .filter(|q| q.mask & libc::IN_MOVED_TO != 0 && q.cookie == p.cookie);
            match pair.and_then(|q| Some((q, q.child.clone()?))) {
                Some((q, to)) => {
                    i += 1;
                    if is_dir {
                        watcher.rebase(child, &to);
                    }
                    let (target, moved) = look(export, &to);
                    events.push(Event::Moved {
                        from: child.clone(),
                        to: to.clone(),
                        now: target,
                        dirs: vec![p.dir_id, q.dir_id],
                    });
                    if let Some((id, fp)) = moved {
                        events.push(Event::Node { id, now: Some(fp) });
                    }
                }
                None => {
                    if is_dir {
                        watcher.forget_below(child);
                    }
                    events.push(Event::Name {
                        path: child.clone(),
                        now: Target::Absent,
                        dir: Some(p.dir_id),
                    });
                }
            }
            continue;
        }
        if p.mask & (libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO) != 0 {
            if p.mask & libc::IN_DELETE != 0 && is_dir {
                watcher.forget_below(child);
            }
            let (target, _) = look(export, child);
            events.push(Event::Name {
                path: child.clone(),
                now: target,
                dir: Some(p.dir_id),
            });
            continue;
        }
        if p.mask & (libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_CLOSE_WRITE) != 0
            && looked_at.insert(child.clone())
        {
            node(&mut events, child);
        }
    }
    // (A directory whose names changed has a new mtime too: each name event
    // carries its directory, which is news to whoever holds what it looks
    // like. Looking at it here would tell the connection making the changes,
    // mid-way, of its own.)
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_bytes(wd: i32, mask: u32, cookie: u32, name: &[u8], pad: usize) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&wd.to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&cookie.to_ne_bytes());
        b.extend_from_slice(&((name.len() + pad) as u32).to_ne_bytes());
        b.extend_from_slice(name);
        b.extend(std::iter::repeat_n(0, pad));
        b
    }

    #[test]
    fn events_are_parsed_with_their_padding_and_a_cut_tail_is_ignored() {
        let mut buf = raw_bytes(3, libc::IN_CREATE, 0, b"a.txt", 11);
        buf.extend(raw_bytes(1, libc::IN_ATTRIB, 0, b"", 0));
        buf.extend(raw_bytes(3, libc::IN_MOVED_FROM, 77, b"x", 3));
        let whole = parse(&buf);
        assert_eq!(
            whole,
            vec![
                Raw {
                    wd: 3,
                    mask: libc::IN_CREATE,
                    cookie: 0,
                    name: b"a.txt".to_vec()
                },
                Raw {
                    wd: 1,
                    mask: libc::IN_ATTRIB,
                    cookie: 0,
                    name: Vec::new()
                },
                Raw {
                    wd: 3,
                    mask: libc::IN_MOVED_FROM,
                    cookie: 77,
                    name: b"x".to_vec()
                },
            ]
        );
        assert_eq!(parse(&buf[..buf.len() - 2]).len(), 2);
        assert!(parse(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn watches_follow_renames_and_go_with_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::create_dir_all(dir.path().join("ab")).unwrap();
        let export = ExportRoot::open(dir.path()).unwrap();
        let w = Watcher::new().unwrap();
        let p = |s: &str| RelPath::parse(s).unwrap();
        assert!(w.ensure(&export, &p("a")).unwrap());
        assert!(w.ensure(&export, &p("a/b")).unwrap());
        assert!(w.ensure(&export, &p("ab")).unwrap());
        assert!(!w.ensure(&export, &p("a")).unwrap(), "watched already");
        assert!(matches!(
            w.ensure(&export, &p("nope")),
            Err(EnsureError::Gone)
        ));
        w.rebase(&p("a"), &p("z"));
        let paths: Vec<RelPath> = lock(&w.watches).by_path.keys().cloned().collect();
        assert_eq!(paths, vec![p("ab"), p("z"), p("z/b")]);
        w.forget_below(&p("z"));
        assert_eq!(w.len(), 1);
        // A symlink is never followed into.
        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).unwrap();
        assert!(w.ensure(&export, &p("link")).is_err());
        w.clear();
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn an_overflowing_queue_makes_every_client_drop_everything() {
        let dir = tempfile::tempdir().unwrap();
        let export = std::sync::Arc::new(ExportRoot::open(dir.path()).unwrap());
        let reg = Registry::new(std::sync::Arc::clone(&export), false);
        let sub = reg.subscriber();
        reg.subscribe(&sub, 60);
        let w = Watcher::new().unwrap();
        w.ensure(&export, &RelPath::root()).unwrap();
        // More events than the kernel queues, none read meanwhile.
        let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16_384);
        for i in 0..=limit {
            std::fs::File::create(dir.path().join(format!("f{i}"))).unwrap();
        }
        let raws = w.read(1000).unwrap();
        assert!(raws.iter().any(|r| r.mask & libc::IN_Q_OVERFLOW != 0));
        handle(&reg, &w, raws, Instant::now());
        // Told to drop everything (with no lease: this registry has no watch).
        assert_eq!(sub.take().0, Some(0));
    }

    #[test]
    fn events_become_the_changes_clients_are_told_of() {
        use crate::registry::Learned;
        use ferry_common::proto::Change;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/x"), b"x").unwrap();
        let export = std::sync::Arc::new(ExportRoot::open(dir.path()).unwrap());
        let reg = Registry::new(std::sync::Arc::clone(&export), false);
        let sub = reg.subscriber();
        reg.subscribe(&sub, 60);
        let p = |s: &str| RelPath::parse(s).unwrap();
        let x = export.stat(&p("d/x")).unwrap();
        reg.learn(
            &sub,
            reg.start(),
            vec![
                Learned::Name(p("d/x"), Target::Node(NodeId::of(&x))),
                Learned::Node(NodeId::of(&x), Some(Fingerprint::of(&x))),
                Learned::Name(p("d/new"), Target::Absent),
            ],
        );
        let w = Watcher::new().unwrap();
        w.ensure(&export, &p("d")).unwrap();
        // A process on the server: a rename, a new file, a write.
        std::fs::rename(dir.path().join("d/x"), dir.path().join("d/y")).unwrap();
        std::fs::write(dir.path().join("d/new"), b"").unwrap();
        std::fs::write(dir.path().join("d/y"), b"longer").unwrap();
        let raws = w.read(1000).unwrap();
        handle(&reg, &w, raws, Instant::now());
        let (_, changes) = sub.take();
        assert!(
            changes.contains(&Change::Moved {
                from: p("d/x"),
                to: p("d/y")
            }),
            "{changes:?}"
        );
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::Name { path, now: Some(_) } if *path == p("d/new"))),
            "{changes:?}"
        );
        // The moved file's attributes were dropped with the rename; what it
        // is now is no news to who did not hold it since.
        assert!(!changes.contains(&Change::Name {
            path: p("d/x"),
            now: None
        }));
    }

    #[test]
    fn a_full_watcher_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let export = ExportRoot::open(dir.path()).unwrap();
        let mut w = Watcher::new().unwrap();
        w.max = 1;
        w.ensure(&export, &RelPath::root()).unwrap();
        assert!(matches!(
            w.ensure(&export, &RelPath::parse("a").unwrap()),
            Err(EnsureError::Full)
        ));
    }
}
