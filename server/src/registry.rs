//! `Registry`: the server-wide side of coherent caches. It knows every
//! subscribed connection ([`Subscriber`]: its [`InterestTable`] and the
//! notices waiting for its writer) and routes each change to the others.
//!
//! Three things keep an answer and a change that cross from leaving a client
//! with stale data:
//!
//! - **Interest is taken before the answer is computed, or checked after.**
//!   A request's [`start`](Registry::start) is the number of the last change
//!   published when it began. Changes are recorded in a short log
//!   ([`RECENT`] entries) before they are routed; when a request's answer is
//!   learnt ([`Registry::learn`]), any change published since its start that
//!   touches what it learnt makes that interest unknown and sends the notice
//!   at once — so no change is missed, whichever of the two came first. A log
//!   overrun counts as crossing everything.
//! - **Watches before reads.** A directory whose changes a request's answer
//!   depends on is watched before the request reads it (see `effects`).
//! - **Busy marks.** A change made through the server also reaches the watch
//!   on the export; while the request making it has not yet recorded its new
//!   state, the paths and nodes it changes are marked busy, so that the
//!   connection making the change is not told of it as news: the watcher
//!   waits before it looks at a busy path ([`Registry::is_busy`]), and leaves
//!   out, for a busy node, the connections changing it
//!   ([`Registry::busy_with`]) — a file written without pause would
//!   otherwise hold the watcher up.
//!
//! The client side does the rest (a notice that arrives while a request is on
//! its way makes the client drop what that request brings back).

use crate::export::ExportRoot;
use crate::interest::{Event, Fingerprint, InterestTable, Target};
use crate::watch::Watcher;
use ferry_common::proto::{Change, NodeId};
use ferry_common::sync::lock;
use ferry_common::{Attr, RelPath};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// The longest lease granted, whatever a client asks for.
pub(crate) const MAX_LEASE_SECS: u32 = 600;
/// Interests outlive the lease by this much: the client counts its lease from
/// when it sent the request, the server from when it answered.
pub(crate) const GRACE: Duration = Duration::from_secs(5);
/// Changes waiting for one connection's writer; beyond this the connection is
/// told to drop everything instead (a client that does not read its socket
/// cannot make the server hoard notices).
pub(crate) const MAX_PENDING: usize = 20_000;
/// Changes remembered for the requests in flight.
pub(crate) const RECENT: usize = 4096;
/// How long a name change made through the server waits for the watch to
/// see it too (see [`Registry::expect_echoes`]).
const ECHO_PATIENCE: Duration = Duration::from_secs(10);
/// How long after a request changed a node the watch's view of that node
/// counts as the echo of that change, for the connection that made it (see
/// [`Registry::busy_with`]).
const NODE_ECHO: Duration = Duration::from_secs(2);

/// What an answer told its connection, to be learnt by its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Learned {
    Name(RelPath, Target),
    Node(NodeId, Option<Fingerprint>),
    /// Data read through an open file of this node.
    Touch(NodeId),
}

impl Learned {
    /// The notice to send when a change crossed this answer.
    fn crossed(&self) -> Change {
        match self {
            Learned::Name(path, _) => Change::Name {
                path: path.clone(),
                now: None,
            },
            Learned::Node(id, _) | Learned::Touch(id) => Change::Node {
                id: *id,
                content: true,
            },
        }
    }
}

/// One change in the log: who made it, and the events with the state after them.
/// Where a request began: when, and the number of the last change published
/// then. Its answer shows every change seen before.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Start {
    at: Instant,
    seq: u64,
}

#[derive(Debug)]
struct Recorded {
    seq: u64,
    /// When the changes were seen (they happened no later).
    observed: Instant,
    /// The subscribers whose own changes these are (the connection that made
    /// them; for what the watch saw, those changing the node just then).
    makers: Vec<u64>,
    events: Vec<Event>,
}

impl Recorded {
    /// The notice `learned` calls for if this change may postdate the answer
    /// it came from: it touched the same name or node, and the answer does not
    /// already show the state after it.
    fn crossing(&self, learned: &Learned) -> Option<Change> {
        let name = |path: &RelPath, now: Option<NodeId>| Change::Name {
            path: path.clone(),
            now,
        };
        let node = |id: NodeId| Change::Node { id, content: true };
        self.events.iter().find_map(|event| match (learned, event) {
            // A change of a name is news whatever it leads to now (see
            // `interest`: inode numbers are reused).
            (Learned::Name(path, _), Event::Name { path: p, now, .. }) if p == path => {
                Some(name(path, now.node()))
            }
            // Above it: the name may lead elsewhere now.
            (Learned::Name(path, _), Event::Name { path: p, .. }) if path.starts_with(p) => {
                Some(name(path, None))
            }
            (Learned::Name(path, _), Event::Moved { from, to, .. })
                if path.starts_with(from) || path.starts_with(to) =>
            {
                Some(name(path, None))
            }
            (Learned::Node(id, told), Event::Node { id: i, now }) if i == id => {
                (told.is_none() || now != told).then_some(node(*id))
            }
            // Its names changed.
            (Learned::Node(id, _), Event::Name { dir: Some(d), .. }) if d == id => Some(node(*id)),
            (Learned::Node(id, _), Event::Moved { dirs, .. }) if dirs.contains(id) => {
                Some(node(*id))
            }
            (Learned::Touch(id), Event::Node { id: i, .. }) if i == id => Some(node(*id)),
            _ => None,
        })
    }
}

/// Notices waiting for a connection's writer.
#[derive(Debug, Default)]
struct Outbox {
    /// Drop everything first, with this lease from then on.
    reset: Option<u32>,
    changes: Vec<Change>,
}

/// One connection's side of the registry: what it may have cached, and what
/// it is yet to be told.
#[derive(Debug)]
pub(crate) struct Subscriber {
    id: u64,
    /// The lease granted, in seconds; 0 until subscribed.
    lease_secs: std::sync::atomic::AtomicU32,
    table: Mutex<InterestTable>,
    outbox: Mutex<Outbox>,
    wake: tokio::sync::Notify,
}

impl Subscriber {
    /// What the writer is to send: drop everything first (and the lease from
    /// then on), then these changes.
    pub(crate) fn take(&self) -> (Option<u32>, Vec<Change>) {
        let mut outbox = lock(&self.outbox);
        (outbox.reset.take(), std::mem::take(&mut outbox.changes))
    }

    /// Resolves once there is something to send (at once if something came
    /// since the last [`take`](Self::take)).
    pub(crate) async fn ready(&self) {
        self.wake.notified().await
    }

    /// Queues `changes`; false when there are too many waiting already (the
    /// caller resets the connection).
    fn send(&self, changes: Vec<Change>) -> bool {
        if changes.is_empty() {
            return true;
        }
        let fits = {
            let mut outbox = lock(&self.outbox);
            if outbox.changes.len() + changes.len() > MAX_PENDING {
                false
            } else {
                outbox.changes.extend(changes);
                true
            }
        };
        if fits {
            self.wake.notify_one();
        }
        fits
    }

    /// Drops everything this connection may have cached: its table empties
    /// and its client is told to drop everything, with `lease_secs` from then on.
    fn reset(&self, lease_secs: u32) {
        lock(&self.table).clear();
        {
            let mut outbox = lock(&self.outbox);
            outbox.changes.clear();
            outbox.reset = Some(lease_secs);
        }
        self.wake.notify_one();
    }

    /// Whether the connection subscribed (its answers are learnt).
    pub(crate) fn subscribed(&self) -> bool {
        self.lease_secs.load(Ordering::Relaxed) > 0
    }
}

/// Paths and nodes being changed by requests right now.
#[derive(Debug, Default)]
struct Busy {
    paths: HashMap<RelPath, usize>,
    /// By node, the subscriber of each request changing it.
    ids: HashMap<NodeId, Vec<u64>>,
    /// By node, the subscribers whose requests changed it lately, and until
    /// when the watch's view of it counts as their own change's echo.
    lately: HashMap<NodeId, Vec<(u64, Instant)>>,
}

/// Marks paths and nodes busy until dropped.
#[derive(Debug)]
pub(crate) struct BusyGuard {
    registry: Arc<Registry>,
    origin: u64,
    paths: Vec<RelPath>,
    ids: Vec<NodeId>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut busy = lock(&self.registry.busy);
        for path in &self.paths {
            if let Some(n) = busy.paths.get_mut(path) {
                *n -= 1;
                if *n == 0 {
                    busy.paths.remove(path);
                }
            }
        }
        let until = Instant::now() + NODE_ECHO;
        for id in &self.ids {
            if let Some(origins) = busy.ids.get_mut(id) {
                if let Some(at) = origins.iter().position(|o| *o == self.origin) {
                    origins.swap_remove(at);
                }
                if origins.is_empty() {
                    busy.ids.remove(id);
                }
            }
            let lately = busy.lately.entry(*id).or_default();
            lately.retain(|(o, _)| *o != self.origin);
            lately.push((self.origin, until));
        }
    }
}

/// One [`Registry`] per directory served: the connections served from one
/// directory (an export's root, or a directory inside an export) share one,
/// since their paths mean the same nodes. Connections served from different
/// directories of one file system learn of each other's changes through the
/// watch, as of a process on the server's.
#[derive(Debug, Default)]
pub(crate) struct Registries {
    /// By the served directory's node; a registry lives as long as a
    /// connection uses it (its watch thread ends after it), or the server
    /// for an export's root (see [`Registries::new`]).
    by_root: Mutex<HashMap<NodeId, Weak<Registry>>>,
    /// The registries of the exports' roots, made at start and kept: most
    /// connections are served from one, and a watch made and dropped with
    /// each connection would cost an inotify instance and a thread each time.
    _kept: Vec<Arc<Registry>>,
}

impl Registries {
    /// The registries of `roots` (the exports' roots), made now and kept for
    /// the server's life; those of directories inside exports come and go
    /// with their connections. A root that cannot be read gets none (its
    /// connections are refused anyway).
    pub(crate) fn new<'a>(roots: impl Iterator<Item = &'a Arc<ExportRoot>>) -> Registries {
        let registries = Registries::default();
        let mut kept = Vec::new();
        for root in roots {
            if let Ok(attr) = root.root_attr() {
                kept.push(registries.for_root(root, &attr));
            }
        }
        Registries {
            _kept: kept,
            ..registries
        }
    }

    /// The registry of the directory `root` serves (its attributes `root_attr`),
    /// made if no connection uses one. Watching is a system call: run this on a
    /// thread that may block.
    pub(crate) fn for_root(&self, root: &Arc<ExportRoot>, root_attr: &Attr) -> Arc<Registry> {
        let key = NodeId::of(root_attr);
        let mut by_root = lock(&self.by_root);
        by_root.retain(|_, registry| registry.strong_count() > 0);
        if let Some(registry) = by_root.get(&key).and_then(Weak::upgrade) {
            return registry;
        }
        let registry = Registry::new(Arc::clone(root), true);
        by_root.insert(key, Arc::downgrade(&registry));
        registry
    }
}

/// How a directory's watch stands (see [`Registry::watch_dir`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// Watched already, or gone (nothing to watch).
    Yes,
    /// Watched just now: changes made before this may have been missed.
    New,
    /// Cannot be watched: nothing learnt under it may be cached for long.
    No,
}

#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) export: Arc<ExportRoot>,
    subscribers: RwLock<Vec<Arc<Subscriber>>>,
    next_id: AtomicU64,
    /// The number of the last change published.
    seq: AtomicU64,
    recent: Mutex<VecDeque<Recorded>>,
    busy: Mutex<Busy>,
    /// Name changes made through the server that the watch is yet to see,
    /// by path: until when each is waited for.
    echoes: Mutex<HashMap<RelPath, Vec<Instant>>>,
    watcher: Option<Arc<Watcher>>,
    /// The watch failed for good: leases are not granted (notices of changes
    /// made through the server still flow).
    blind: AtomicBool,
}

impl Registry {
    /// A registry for `export`, watching it when the system allows; `watch`
    /// false leaves it unwatched (no leases are granted then).
    pub(crate) fn new(export: Arc<ExportRoot>, watch: bool) -> Arc<Registry> {
        let watcher = if watch {
            match Watcher::new() {
                Ok(w) => Some(Arc::new(w)),
                Err(e) => {
                    log::warn!(
                        "cannot watch {} for changes made on this machine ({e}); clients will \
                         cache for short times only (is fs.inotify.max_user_instances reached?)",
                        export.path().display()
                    );
                    None
                }
            }
        } else {
            None
        };
        let registry = Arc::new(Registry {
            export,
            subscribers: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            seq: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            busy: Mutex::new(Busy::default()),
            echoes: Mutex::new(HashMap::new()),
            blind: AtomicBool::new(watcher.is_none()),
            watcher,
        });
        if let Some(watcher) = &registry.watcher {
            match watcher.ensure(&registry.export, &RelPath::root()) {
                Ok(_) => crate::watch::spawn(Arc::downgrade(&registry), Arc::clone(watcher)),
                Err(e) => {
                    log::warn!("cannot watch the export's root: {e}; clients will cache for short times only");
                    registry.blind.store(true, Ordering::Relaxed);
                }
            }
        }
        registry
    }

    /// A connection's subscriber, not yet subscribed.
    pub(crate) fn subscriber(&self) -> Arc<Subscriber> {
        Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            lease_secs: std::sync::atomic::AtomicU32::new(0),
            table: Mutex::new(InterestTable::new(GRACE)),
            outbox: Mutex::new(Outbox::default()),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The lease granted for one asked for: at most [`MAX_LEASE_SECS`], and
    /// none while the export cannot be watched.
    pub(crate) fn lease_for(&self, asked: u32) -> u32 {
        if self.blind.load(Ordering::Relaxed) {
            0
        } else {
            asked.min(MAX_LEASE_SECS)
        }
    }

    /// Subscribes `sub` with the lease it asked for; answers the lease granted
    /// (0: notices of changes made through the server only).
    pub(crate) fn subscribe(&self, sub: &Arc<Subscriber>, asked: u32) -> u32 {
        let granted = self.lease_for(asked);
        // Interests are kept at least as long as the longest lease, so a
        // client whose lease the server withdrew and granted again finds them.
        let kept = Duration::from_secs(u64::from(asked.clamp(1, MAX_LEASE_SECS))) + GRACE;
        *lock(&sub.table) = InterestTable::new(kept);
        let was = sub.lease_secs.swap(asked.max(1), Ordering::Relaxed);
        if was == 0 {
            self.subscribers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::clone(sub));
        }
        granted
    }

    /// The connection of `sub` ended.
    pub(crate) fn unsubscribe(&self, sub: &Subscriber) {
        self.subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.id != sub.id);
    }

    /// Whether any connection is subscribed (changes are then worth extra
    /// system calls to describe precisely).
    pub(crate) fn has_subscribers(&self) -> bool {
        !self
            .subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn each_subscriber(&self) -> Vec<Arc<Subscriber>> {
        self.subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Where a request begins: now, and the number of the last change published.
    pub(crate) fn start(&self) -> Start {
        Start {
            at: Instant::now(),
            seq: self.seq.load(Ordering::SeqCst),
        }
    }

    /// Marks `paths` and `ids` busy, changed by a request of `origin`, until
    /// the guard is dropped.
    pub(crate) fn mark_busy(
        self: &Arc<Self>,
        origin: &Subscriber,
        paths: Vec<RelPath>,
        ids: Vec<NodeId>,
    ) -> BusyGuard {
        {
            let mut busy = lock(&self.busy);
            for path in &paths {
                *busy.paths.entry(path.clone()).or_default() += 1;
            }
            for id in &ids {
                busy.ids.entry(*id).or_default().push(origin.id);
            }
        }
        BusyGuard {
            registry: Arc::clone(self),
            origin: origin.id,
            paths,
            ids,
        }
    }

    /// Whether a request is changing any of `paths` right now.
    pub(crate) fn is_busy(&self, paths: &[RelPath]) -> bool {
        let busy = lock(&self.busy);
        paths.iter().any(|p| busy.paths.contains_key(p))
    }

    /// The subscribers whose requests are changing any of `ids` right now, or
    /// did within [`NODE_ECHO`]: the watch's view of those nodes is their own
    /// change's echo. (A process on the server changing the same file in the
    /// same moment is then not told to them: two writers of one file without
    /// a lock get no promise.)
    pub(crate) fn busy_with(&self, ids: &[NodeId]) -> Vec<u64> {
        let mut busy = lock(&self.busy);
        let now = Instant::now();
        let mut with: Vec<u64> = ids
            .iter()
            .filter_map(|i| busy.ids.get(i))
            .flatten()
            .copied()
            .collect();
        for id in ids {
            if let Some(lately) = busy.lately.get_mut(id) {
                lately.retain(|(_, until)| *until > now);
                with.extend(lately.iter().map(|(o, _)| *o));
                if lately.is_empty() {
                    busy.lately.remove(id);
                }
            }
        }
        with.sort_unstable();
        with.dedup();
        with
    }

    /// The watch will see the name changes at `paths` (made through the
    /// server, already published precisely): one event each, to be taken for
    /// an echo rather than news ([`take_echo`](Self::take_echo)). Only paths
    /// in watched directories are expected; the others' events never come.
    pub(crate) fn expect_echoes(&self, paths: &[RelPath]) {
        let Some(watcher) = &self.watcher else { return };
        let until = Instant::now() + ECHO_PATIENCE;
        let mut echoes = lock(&self.echoes);
        for path in paths {
            if path
                .split_last()
                .is_some_and(|(dir, _)| watcher.watches(&dir))
            {
                echoes.entry(path.clone()).or_default().push(until);
            }
        }
    }

    /// Whether the watch's name event at `path` is the echo of a change made
    /// through the server (and takes it: each is expected once).
    pub(crate) fn take_echo(&self, path: &RelPath) -> bool {
        let mut echoes = lock(&self.echoes);
        let Some(waiting) = echoes.get_mut(path) else {
            return false;
        };
        let now = Instant::now();
        waiting.retain(|until| *until > now);
        let found = !waiting.is_empty();
        if found {
            waiting.remove(0);
        }
        if waiting.is_empty() {
            echoes.remove(path);
        }
        found
    }

    /// Publishes changes made by `origin` (a connection, or `None` for a
    /// process on the server): recorded, then told to every other subscribed
    /// connection that may have cached what they change, and learnt by the
    /// origin's own table.
    pub(crate) fn publish(&self, origin: Option<&Subscriber>, events: &[Event]) {
        self.publish_except(origin, &[], events, Instant::now())
    }

    /// [`publish`](Self::publish), telling the subscribers in `skip` nothing
    /// (the watcher's view of a change they are making themselves).
    pub(crate) fn publish_except(
        &self,
        origin: Option<&Subscriber>,
        skip: &[u64],
        events: &[Event],
        observed: Instant,
    ) {
        if events.is_empty() {
            return;
        }
        let origin = origin.map(|s| s.id);
        log::trace!("changes by {origin:?} (skipping {skip:?}): {events:?}");
        self.record(
            origin.iter().chain(skip).copied().collect(),
            events,
            observed,
        );
        let now = Instant::now();
        for sub in self.each_subscriber() {
            if skip.contains(&sub.id) {
                continue;
            }
            if Some(sub.id) == origin {
                let full = lock(&sub.table).apply_own(events, now).is_err();
                if full {
                    self.reset_one(&sub);
                }
            } else {
                let changes = lock(&sub.table).notices_for(events, observed);
                log::trace!("connection {}: told {changes:?}", sub.id);
                if !sub.send(changes) {
                    self.reset_one(&sub);
                }
            }
        }
    }

    fn record(&self, makers: Vec<u64>, events: &[Event], observed: Instant) {
        let mut recent = lock(&self.recent);
        let seq = self.seq.load(Ordering::SeqCst) + 1;
        recent.push_back(Recorded {
            seq,
            observed,
            makers,
            events: events.to_vec(),
        });
        while recent.len() > RECENT {
            recent.pop_front();
        }
        // Published under the log's lock, so a request that sees this number
        // finds the entry.
        self.seq.store(seq, Ordering::SeqCst);
    }

    /// `sub` learns what an answer told it, for a request that began at
    /// `start`. What a change published since then touches is learnt as
    /// unknown and told at once (the answer may predate the change).
    pub(crate) fn learn(&self, sub: &Subscriber, start: Start, learned: Vec<Learned>) {
        if learned.is_empty() || !sub.subscribed() {
            return;
        }
        let crossed = self.crossed(start, sub.id, &learned);
        log::trace!(
            "connection {}: learnt {learned:?}, crossed by {crossed:?}",
            sub.id
        );
        // The answer shows every change seen before the request began.
        let now = start.at;
        let mut notices = Vec::new();
        let full = {
            let mut table = lock(&sub.table);
            let mut full = false;
            for (item, crossing) in learned.iter().zip(crossed) {
                let hit = crossing.is_some();
                notices.extend(crossing);
                let outcome = match item {
                    Learned::Name(path, target) => {
                        let target = if hit { Target::Unknown } else { *target };
                        table.learn_name(path, target, now)
                    }
                    Learned::Node(id, fp) => {
                        table.learn_node(*id, if hit { None } else { *fp }, now)
                    }
                    Learned::Touch(id) if hit => table.learn_node(*id, None, now),
                    Learned::Touch(id) => table.touch_node(*id, now),
                };
                if outcome.is_err() {
                    full = true;
                    break;
                }
            }
            full
        };
        if full || !sub.send(notices) {
            self.reset_one(sub);
        }
    }

    /// For each of `learned`, the notice a change published since `start` (by
    /// anyone but `me`) calls for, if any; when the log no longer reaches back
    /// that far, one for each.
    fn crossed(&self, start: Start, me: u64, learned: &[Learned]) -> Vec<Option<Change>> {
        let Start { at, seq: start } = start;
        let mut notices: Vec<Option<Change>> = vec![None; learned.len()];
        if self.seq.load(Ordering::SeqCst) == start {
            return notices;
        }
        let recent = lock(&self.recent);
        let Some(oldest) = recent.front().map(|e| e.seq).filter(|s| *s <= start + 1) else {
            return learned.iter().map(|l| Some(l.crossed())).collect();
        };
        // Numbered without gaps: the entries after `start` are the last ones.
        let after = usize::try_from(start + 1 - oldest).unwrap_or(usize::MAX);
        for entry in recent
            .iter()
            .skip(after)
            // Seen before the request began: the answer shows it.
            .filter(|e| !e.makers.contains(&me) && e.observed >= at)
        {
            for (notice, item) in notices.iter_mut().zip(learned) {
                if notice.is_none() {
                    *notice = entry.crossing(item);
                }
            }
        }
        notices
    }

    /// Tells `sub` to drop everything (its table is full, or its notices pile up).
    fn reset_one(&self, sub: &Subscriber) {
        log::info!("a client's cache interests overflowed; telling it to drop its caches");
        sub.reset(self.lease_for(sub.lease_secs.load(Ordering::Relaxed)));
    }

    /// Tells every connection to drop everything: changes may have been missed.
    pub(crate) fn reset_all(&self) {
        for sub in self.each_subscriber() {
            sub.reset(self.lease_for(sub.lease_secs.load(Ordering::Relaxed)));
        }
    }

    /// Makes sure changes below directory `dir` are seen (a request is about
    /// to read it, or to answer with what it holds).
    pub(crate) fn watch_dir(&self, dir: &RelPath) -> Watched {
        let Some(watcher) = &self.watcher else {
            return Watched::No;
        };
        if self.blind.load(Ordering::Relaxed) {
            return Watched::No;
        }
        match watcher.ensure(&self.export, dir) {
            Ok(true) => Watched::New,
            Ok(false) => Watched::Yes,
            Err(crate::watch::EnsureError::Gone) => Watched::Yes,
            Err(crate::watch::EnsureError::Full) => {
                // Out of watches: start again from nothing (every client drops
                // its caches, every watch goes), then watch this one.
                log::warn!(
                    "out of watches on the export ({} directories); clients drop their caches",
                    watcher.len()
                );
                watcher.clear();
                self.reset_all();
                let _ = watcher.ensure(&self.export, &RelPath::root());
                match watcher.ensure(&self.export, dir) {
                    Ok(_) | Err(crate::watch::EnsureError::Gone) => Watched::New,
                    Err(_) => self.go_blind(),
                }
            }
            Err(crate::watch::EnsureError::Failed(e)) => {
                log::debug!("cannot watch {dir}: {e}");
                Watched::No
            }
        }
    }

    /// The watch cannot go on: no more leases, and every client drops what it
    /// cached under one.
    pub(crate) fn go_blind(&self) -> Watched {
        if !self.blind.swap(true, Ordering::Relaxed) {
            log::warn!(
                "the watch on {} failed; clients will cache for short times only (raise \
                 fs.inotify.max_user_watches, then restart ferry serve)",
                self.export.path().display()
            );
            self.reset_all();
        }
        Watched::No
    }

    /// Tries to watch the export again after [`go_blind`](Self::go_blind).
    pub(crate) fn recover(&self) {
        let Some(watcher) = &self.watcher else { return };
        if !self.blind.load(Ordering::Relaxed) {
            return;
        }
        watcher.clear();
        if watcher.ensure(&self.export, &RelPath::root()).is_ok() {
            self.blind.store(false, Ordering::Relaxed);
            log::info!(
                "watching {} again; clients may cache for long again",
                self.export.path().display()
            );
            self.reset_all();
        }
    }

    /// `from` was renamed to `to` through the server: the watches below it follow.
    pub(crate) fn moved(&self, from: &RelPath, to: &RelPath) {
        if let Some(watcher) = &self.watcher {
            watcher.rebase(from, to);
        }
    }

    /// Drops every interest whose lease has ended, and echoes never seen.
    pub(crate) fn expire(&self) {
        let now = Instant::now();
        lock(&self.busy).lately.retain(|_, lately| {
            lately.retain(|(_, until)| *until > now);
            !lately.is_empty()
        });
        lock(&self.echoes).retain(|_, waiting| {
            waiting.retain(|until| *until > now);
            !waiting.is_empty()
        });
        for sub in self.each_subscriber() {
            lock(&sub.table).expire(now);
        }
    }

    /// The longest interest any connection may hold.
    pub(crate) fn longest_interest(&self) -> Duration {
        Duration::from_secs(u64::from(MAX_LEASE_SECS)) + GRACE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interest::Event;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    fn id(n: u64) -> NodeId {
        NodeId { dev: 1, ino: n }
    }

    fn registry() -> (tempfile::TempDir, Arc<Registry>) {
        let dir = tempfile::tempdir().unwrap();
        let export = Arc::new(ExportRoot::open(dir.path()).unwrap());
        (dir, Registry::new(export, false))
    }

    fn subscribed(r: &Registry) -> Arc<Subscriber> {
        let sub = r.subscriber();
        assert_eq!(r.subscribe(&sub, 60), 0, "no leases without a watch");
        sub
    }

    #[test]
    fn changes_reach_the_others_and_not_their_maker() {
        let (_d, r) = registry();
        let (a, b) = (subscribed(&r), subscribed(&r));
        let start = r.start();
        for s in [&a, &b] {
            r.learn(s, start, vec![Learned::Name(p("f"), Target::Absent)]);
        }
        let made = [Event::Name {
            path: p("f"),
            now: Target::Node(id(3)),
            dir: None,
        }];
        r.publish(Some(&a), &made);
        assert_eq!(a.take(), (None, vec![]));
        assert_eq!(
            b.take(),
            (
                None,
                vec![Change::Name {
                    path: p("f"),
                    now: Some(id(3))
                }]
            )
        );
        // A process on the server: everyone who holds it (a learnt the new state).
        r.learn(
            &b,
            r.start(),
            vec![Learned::Name(p("f"), Target::Node(id(3)))],
        );
        let removed = [Event::Name {
            path: p("f"),
            now: Target::Absent,
            dir: None,
        }];
        r.publish(None, &removed);
        let gone = vec![Change::Name {
            path: p("f"),
            now: None,
        }];
        assert_eq!(a.take().1, gone);
        assert_eq!(b.take().1, gone);
        r.unsubscribe(&b);
        assert!(r.has_subscribers());
    }

    #[test]
    fn an_answer_crossed_by_a_change_is_told_at_once() {
        let (_d, r) = registry();
        let (a, b) = (subscribed(&r), subscribed(&r));
        // b's request begins; a changes the node and the name before b's
        // answer is learnt.
        let start = r.start();
        r.publish(
            Some(&a),
            &[
                Event::Node {
                    id: id(7),
                    now: None,
                },
                Event::Moved {
                    from: p("d"),
                    to: p("e"),
                    now: Target::Unknown,
                    dirs: Vec::new(),
                },
            ],
        );
        assert_eq!(b.take().1, vec![], "b held nothing yet");
        r.learn(
            &b,
            start,
            vec![
                Learned::Node(id(7), None),
                Learned::Name(p("d/x"), Target::Node(id(8))),
                Learned::Name(p("other"), Target::Absent),
            ],
        );
        assert_eq!(
            b.take().1,
            vec![
                Change::Node {
                    id: id(7),
                    content: true
                },
                Change::Name {
                    path: p("d/x"),
                    now: None
                }
            ]
        );
        // The maker's own answers are not crossed by its own changes.
        r.learn(&a, start, vec![Learned::Node(id(7), None)]);
        assert_eq!(a.take().1, vec![]);
    }

    #[test]
    fn a_change_seen_before_a_request_began_crosses_nothing() {
        let (_d, r) = registry();
        let b = subscribed(&r);
        // The watch reads a change, then b's request begins, then the change
        // is published (the watch waited for a busy path): b's answer shows it.
        let seen = Instant::now();
        let start = r.start();
        let change = [Event::Node {
            id: id(7),
            now: None,
        }];
        r.publish_except(None, &[], &change, seen);
        r.learn(&b, start, vec![Learned::Node(id(7), None)]);
        assert_eq!(b.take().1, vec![]);
        // Seen after it began: the answer may predate it.
        let start = r.start();
        let change = [Event::Node {
            id: id(8),
            now: None,
        }];
        r.publish_except(None, &[], &change, Instant::now());
        r.learn(&b, start, vec![Learned::Node(id(8), None)]);
        assert_eq!(
            b.take().1,
            vec![Change::Node {
                id: id(8),
                content: true
            }]
        );
    }

    #[test]
    fn a_crossed_answer_is_told_what_changed_and_a_node_as_it_is_now_is_not() {
        let (_d, r) = registry();
        let (a, b) = (subscribed(&r), subscribed(&r));
        let start = r.start();
        // A process on the server made the file while both looked.
        let fp = Fingerprint::of(&ferry_common::Attr::blank(ferry_common::FileKind::File));
        r.publish(
            None,
            &[
                Event::Name {
                    path: p("f"),
                    now: Target::Node(id(5)),
                    dir: None,
                },
                Event::Node {
                    id: id(5),
                    now: Some(fp),
                },
            ],
        );
        // A name's answer cannot show which file it saw (numbers are
        // reused): told what the name leads to now.
        r.learn(
            &b,
            start,
            vec![
                Learned::Name(p("f"), Target::Node(id(5))),
                Learned::Node(id(5), Some(fp)),
            ],
        );
        assert_eq!(
            b.take().1,
            vec![Change::Name {
                path: p("f"),
                now: Some(id(5))
            }],
            "the node as it is now is no news"
        );
        r.learn(&a, start, vec![Learned::Node(id(5), None)]);
        assert_eq!(
            a.take().1,
            vec![Change::Node {
                id: id(5),
                content: true
            }]
        );
    }

    #[test]
    fn a_log_overrun_crosses_everything() {
        let (_d, r) = registry();
        let (a, b) = (subscribed(&r), subscribed(&r));
        let start = r.start();
        for n in 0..(RECENT as u64 + 2) {
            r.publish(
                Some(&a),
                &[Event::Node {
                    id: id(n),
                    now: None,
                }],
            );
        }
        r.learn(
            &b,
            start,
            vec![Learned::Name(p("far/away"), Target::Absent)],
        );
        assert_eq!(
            b.take().1,
            vec![Change::Name {
                path: p("far/away"),
                now: None
            }]
        );
    }

    #[test]
    fn too_many_waiting_notices_become_a_reset() {
        let (_d, r) = registry();
        let (a, b) = (subscribed(&r), subscribed(&r));
        for n in 0..(MAX_PENDING as u64 + 1) {
            r.learn(&b, r.start(), vec![Learned::Node(id(n), None)]);
        }
        for n in 0..(MAX_PENDING as u64 + 1) {
            r.publish(
                Some(&a),
                &[Event::Node {
                    id: id(n),
                    now: None,
                }],
            );
        }
        let (reset, changes) = b.take();
        assert_eq!(reset, Some(0));
        assert!(changes.len() < MAX_PENDING);
        // After a reset the table is empty: nothing more to tell of the past.
        r.publish(
            Some(&a),
            &[Event::Node {
                id: id(1),
                now: None,
            }],
        );
        assert!(b.take().1.is_empty());
    }

    #[test]
    fn busy_marks_last_as_long_as_their_guard() {
        let (_d, r) = registry();
        let (a, b) = (subscribed(&r), subscribed(&r));
        let guard = r.mark_busy(&a, vec![p("a")], vec![id(1)]);
        let second = r.mark_busy(&b, vec![p("a")], vec![id(1)]);
        assert!(r.is_busy(&[p("a")]));
        let mut with = r.busy_with(&[id(1), id(2)]);
        with.sort_unstable();
        assert_eq!(with, vec![a.id, b.id]);
        drop(guard);
        assert!(r.is_busy(&[p("a")]), "still marked by the second");
        drop(second);
        assert!(!r.is_busy(&[p("a")]));
        // Done, but changed lately: the watch's view of it is their echo.
        let mut with = r.busy_with(&[id(1)]);
        with.sort_unstable();
        assert_eq!(with, vec![a.id, b.id]);
        assert!(r.busy_with(&[id(2)]).is_empty());
        // A change published past its makers tells them nothing, now or as
        // the crossing of an answer in flight.
        let start = r.start();
        r.learn(&a, start, vec![Learned::Node(id(1), None)]);
        r.publish_except(
            None,
            &[a.id],
            &[Event::Node {
                id: id(1),
                now: None,
            }],
            Instant::now(),
        );
        r.learn(&a, start, vec![Learned::Node(id(1), None)]);
        assert!(a.take().1.is_empty());
        r.learn(&b, start, vec![Learned::Node(id(1), None)]);
        assert_eq!(b.take().1.len(), 1, "crossed for anyone else");
    }
}
