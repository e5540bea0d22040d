//! Coherent caches, the client's side: the lease, the server's notices, and
//! the rule that keeps an answer and a notice that cross from leaving stale
//! data behind.
//!
//! - **The lease.** On every connection the core subscribes
//!   (`Op::Subscribe`); once the server has answered, and until that
//!   connection breaks, what an answer to a request sent after that moment
//!   says may be cached for the lease (default 60 s) — in the kernel (entry
//!   and attribute timeouts, negative entries, the listing of a directory
//!   leased in full), in [`crate::attrcache`], [`crate::known`] and the
//!   `security.capability` cache — because the server will say when it
//!   changes. Otherwise everything lives for the short attribute timeout, as
//!   before. [`Core::until`] is the one place that decides.
//! - **Notices** ([`Core::on_event`], on the connection's reader thread) are
//!   applied at once to this mount's own caches and queued for the kernel
//!   ([`KernelCache`], carried out on a thread of its own).
//! - **Crossing.** A notice and an answer may pass each other on the way. Each
//!   notice moves a generation counter *before* it is applied, and is logged
//!   with what it touched (paths and inodes); every request that may cache
//!   something takes the generation before it is sent ([`Core::mark`]) and,
//!   once it has stored what it learnt and answered the kernel, looks again
//!   ([`Core::settle`]): if a notice that touched what the request concerns
//!   came in between (or the log no longer reaches back), what the request
//!   touched is invalidated once more, after its own stores. (The server does
//!   its part: it registers a request's interest before it reads, and tells of
//!   any change that crossed an answer; see the server's `registry`.)
//! - **Dropping everything** when the connection breaks (its promises end
//!   with it) or the server asks for it (its watch overflowed): every name
//!   and inode the kernel may hold, every negative entry handed out, and
//!   every cache of the core; from then on the short timeout holds until the
//!   next connection is subscribed.

use super::{Core, Shared};
use crate::client::{nobody, ConnEvent};
use crate::inode::FileId;
use ferry_common::proto::{Change, Notice, Op, Reply};
use ferry_common::sync::lock;
use ferry_common::RelPath;
use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Negative entries handed to the kernel for long, at most: each is
/// remembered so that it can be taken back.
pub(crate) const MAX_NEGATIVES: usize = 65_536;
/// Notices remembered for the requests in flight (see [`Core::settle`]).
const RECENT: usize = 1024;

/// What one notice (or break) touched, for the requests it crossed.
#[derive(Debug)]
struct Seen {
    generation: u64,
    /// Everything (a break, or the server's reset).
    all: bool,
    paths: Vec<RelPath>,
    inos: Vec<u64>,
}

/// The connection whose notices flow.
#[derive(Clone, Copy, Debug)]
struct Live {
    epoch: u64,
    /// Answers to requests sent from then on may be cached for the lease.
    since: Instant,
    lease: Duration,
}

#[derive(Debug, Default)]
struct LeaseState {
    live: Option<Live>,
    /// Connections up to this number are known to have broken.
    lost_upto: u64,
}

/// Negative entries the kernel holds for long, by directory.
#[derive(Debug, Default)]
struct Negatives {
    by_dir: HashMap<u64, HashMap<OsString, Instant>>,
    count: usize,
}

impl Negatives {
    /// Remembers one, unless full (of entries that have not expired).
    fn note(&mut self, dir: u64, name: &OsStr, until: Instant) -> bool {
        if self.count >= MAX_NEGATIVES {
            let now = Instant::now();
            for names in self.by_dir.values_mut() {
                names.retain(|_, until| *until > now);
            }
            self.by_dir.retain(|_, names| !names.is_empty());
            self.count = self.by_dir.values().map(HashMap::len).sum();
            if self.count >= MAX_NEGATIVES {
                return false;
            }
        }
        if self
            .by_dir
            .entry(dir)
            .or_default()
            .insert(name.to_os_string(), until)
            .is_none()
        {
            self.count += 1;
        }
        true
    }

    fn remove(&mut self, dir: u64, name: &OsStr) {
        if let Some(names) = self.by_dir.get_mut(&dir) {
            if names.remove(name).is_some() {
                self.count -= 1;
            }
            if names.is_empty() {
                self.by_dir.remove(&dir);
            }
        }
    }

    fn take_dir(&mut self, dir: u64) -> Vec<OsString> {
        let names = self.by_dir.remove(&dir).unwrap_or_default();
        self.count -= names.len();
        names.into_keys().collect()
    }

    fn take_all(&mut self) -> Vec<(u64, OsString)> {
        self.count = 0;
        std::mem::take(&mut self.by_dir)
            .into_iter()
            .flat_map(|(dir, names)| names.into_keys().map(move |n| (dir, n)))
            .collect()
    }
}

/// The client's coherence state, one per mount.
#[derive(Debug)]
pub(crate) struct Coherence {
    /// The lease to ask for; zero: do not subscribe.
    wanted: Duration,
    state: Mutex<LeaseState>,
    /// Moves before each notice (or break) is applied.
    generation: AtomicU64,
    /// What the last [`RECENT`] notices touched, by generation.
    recent: Mutex<VecDeque<Seen>>,
    negatives: Mutex<Negatives>,
}

impl Coherence {
    pub(crate) fn new(wanted: Duration) -> Coherence {
        Coherence {
            wanted,
            state: Mutex::new(LeaseState::default()),
            generation: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            negatives: Mutex::new(Negatives::default()),
        }
    }

    /// Logs what a notice touches and moves the generation past it (before
    /// it is applied).
    fn seen(&self, all: bool, paths: Vec<RelPath>, inos: Vec<u64>) {
        let mut recent = lock(&self.recent);
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        recent.push_back(Seen {
            generation,
            all,
            paths,
            inos,
        });
        while recent.len() > RECENT {
            recent.pop_front();
        }
        // Under the log's lock: whoever sees the new generation finds the entry.
        self.generation.store(generation, Ordering::SeqCst);
    }

    /// Whether a notice logged after generation `mark` touched `paths` or
    /// `inos` (or everything, or the log no longer reaches back to `mark`).
    fn crossed(&self, mark: u64, paths: &[RelPath], inos: &[u64]) -> bool {
        let recent = lock(&self.recent);
        if recent
            .front()
            .is_none_or(|oldest| oldest.generation > mark + 1)
        {
            return true;
        }
        recent.iter().filter(|s| s.generation > mark).any(|s| {
            s.all
                || s.inos.iter().any(|i| inos.contains(i))
                || s.paths
                    .iter()
                    .any(|q| paths.iter().any(|p| p.starts_with(q) || q.starts_with(p)))
        })
    }
}

/// The generation a request was sent at (see [`Core::settle`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark(u64);

/// What a request's answer may have let this mount cache: names (paths) and
/// inodes (attributes and data).
#[derive(Debug, Default)]
pub(crate) struct Touched {
    pub(crate) paths: Vec<RelPath>,
    pub(crate) inos: Vec<u64>,
}

impl Touched {
    /// The paths `op` names.
    pub(crate) fn of(op: &Op) -> Touched {
        let paths = match op {
            Op::Stat { path }
            | Op::ReadDir { path, .. }
            | Op::ReadLink { path }
            | Op::Open { path, .. }
            | Op::Create { path, .. }
            | Op::CreateAs { path, .. }
            | Op::SetAttr {
                path, handle: None, ..
            }
            | Op::Mkdir { path, .. }
            | Op::Mknod { path, .. }
            | Op::Symlink { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::GetXattr { path, .. }
            | Op::ListXattr { path }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. } => vec![path.clone()],
            Op::Link { existing, path } => vec![existing.clone(), path.clone()],
            Op::Rename { from, to, .. } => vec![from.clone(), to.clone()],
            _ => Vec::new(),
        };
        Touched {
            paths,
            inos: Vec::new(),
        }
    }

    pub(crate) fn with_ino(mut self, ino: Option<u64>) -> Touched {
        self.inos.extend(ino);
        self
    }

    fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.inos.is_empty()
    }
}

impl Core {
    /// Subscribes to the client's connection events (from the mount's start).
    pub(super) fn listen(shared: &Arc<Shared>) {
        if shared.coherence.wanted.is_zero() {
            return;
        }
        let weak: Weak<Shared> = Arc::downgrade(shared);
        shared.client.on_event(move |event| {
            if let Some(shared) = weak.upgrade() {
                Core(shared).on_event(event);
            }
        });
    }

    /// Whether this mount holds a lease: the server tells it of every change
    /// to what it caches, and caches live for the lease.
    pub fn leased(&self) -> bool {
        lock(&self.coherence.state)
            .live
            .is_some_and(|l| !l.lease.is_zero())
    }

    /// Whether every name of directory `ino` is known and the server will
    /// say when that changes: lookups of names it lacks, and its listing,
    /// need no round trip. (Creating and removing in it without waiting builds
    /// on this.)
    pub fn dir_leased(&self, ino: u64) -> bool {
        self.leased() && self.known.holds(ino)
    }

    /// Until when what an answer to a request sent at `asked` says may be
    /// cached: for the lease if the request went out on a subscribed
    /// connection, else for the attribute timeout.
    pub(super) fn until(&self, asked: Instant) -> Instant {
        let live = lock(&self.coherence.state).live;
        let ttl = match live {
            Some(l) if asked >= l.since && !l.lease.is_zero() => l.lease,
            _ => self.opts.attr_timeout,
        };
        asked + ttl
    }

    /// How long the kernel may cache what an answer to a request sent at
    /// `asked` says.
    pub(super) fn ttl_since(&self, asked: Instant) -> Duration {
        self.until(asked).saturating_duration_since(Instant::now())
    }

    /// The generation before a request is sent.
    pub(super) fn mark(&self) -> Mark {
        Mark(self.coherence.generation.load(Ordering::SeqCst))
    }

    /// After a request sent at `mark` has stored what it learnt and answered
    /// the kernel: if a notice (or a break) came meanwhile, what it touched
    /// may be older than that notice, and is invalidated again.
    pub(super) fn settle(&self, mark: Mark, touched: Touched) {
        if touched.is_empty() || self.coherence.generation.load(Ordering::SeqCst) == mark.0 {
            return;
        }
        let mut inos = touched.inos.clone();
        {
            let inodes = lock(&self.inodes);
            inos.extend(touched.paths.iter().filter_map(|p| inodes.ino_of(p)));
        }
        if !self.coherence.crossed(mark.0, &touched.paths, &inos) {
            return;
        }
        log::trace!("an answer crossed a notice: invalidating {touched:?}");
        for path in &touched.paths {
            self.doubt_path(path);
        }
        for &ino in &touched.inos {
            self.doubt_ino(ino, true);
        }
    }

    /// Drops what is cached about the name `path` and the inode it leads to,
    /// without forgetting which inode that is (a lookup will tell).
    fn doubt_path(&self, path: &RelPath) {
        let (parent, ino) = {
            let inodes = lock(&self.inodes);
            let parent = path
                .split_last()
                .and_then(|(dir, name)| Some((inodes.ino_of(&dir)?, name.to_os_string())));
            (parent, inodes.ino_of(path))
        };
        if let Some((dir, name)) = parent {
            lock(&self.coherence.negatives).remove(dir, &name);
            self.kernel.forget_entry(dir, &name);
        }
        if let Some(ino) = ino {
            self.doubt_ino(ino, true);
        }
    }

    /// Drops what is cached about inode `ino`: its attributes; with `content`,
    /// also its data (a file) or names (a directory).
    fn doubt_ino(&self, ino: u64, content: bool) {
        log::trace!("doubting inode {ino} (content: {content})");
        self.attrs.drop_ino(ino);
        self.file_caps.forget(ino);
        self.writes.doubt(ino);
        if content {
            lock(&self.inodes).forget_opened(ino);
            // The first bytes an open brought are the old data now.
            self.opened.changed_elsewhere(ino);
            self.known.forget(ino);
            let names = lock(&self.coherence.negatives).take_dir(ino);
            for name in names {
                self.kernel.forget_entry(ino, &name);
            }
        }
        let (names, dir) = {
            let inodes = lock(&self.inodes);
            (inodes.entries_of(ino), inodes.is_dir(ino))
        };
        // A file's entries go too: the kernel may be taking in an answer from
        // before the change (a lookup under way) after the invalidation, and
        // keep it — a lookup holds its directory's lock until its entry is in
        // place, which dropping the entry waits for. (Not a directory's: what
        // the kernel holds below it would go as well.)
        if !dir {
            for (parent, name) in &names {
                self.kernel.forget_entry(*parent, name);
            }
        }
        self.kernel.forget_inode(ino, content, names);
    }

    /// A negative entry for `name` in `dir`, known to hold until `until`: how
    /// long the kernel may keep it. One handed out under the lease is
    /// remembered, to be taken back when the directory changes or the lease
    /// ends; past [`MAX_NEGATIVES`] the attribute timeout is used instead.
    pub(super) fn negative(&self, dir: u64, name: &OsStr, until: Instant) -> Duration {
        let ttl = until.saturating_duration_since(Instant::now());
        if !self.leased() || !lock(&self.coherence.negatives).note(dir, name, until) {
            return ttl.min(self.opts.attr_timeout);
        }
        ttl
    }

    /// What the connection says, applied.
    pub(super) fn on_event(&self, event: ConnEvent) {
        match event {
            ConnEvent::Established(epoch) => self.subscribe(epoch),
            ConnEvent::Lost(epoch) => {
                let was_live = {
                    let mut state = lock(&self.coherence.state);
                    state.lost_upto = state.lost_upto.max(epoch);
                    let live = state.live.filter(|l| l.epoch <= epoch);
                    if live.is_some() {
                        state.live = None;
                    }
                    live.is_some()
                };
                if was_live {
                    log::info!("the lease ended with the connection; dropping every cache");
                    self.drop_everything();
                }
            }
            // A notice of a connection that broke meanwhile does no harm: its
            // break drops everything anyway. (Its epoch is not checked against
            // the client's: this runs on the reader thread, which must never
            // wait for the connection's lock.)
            ConnEvent::Notice(_, notice) => match notice {
                Notice::Changed(changes) => {
                    log::debug!("the server tells of {} changes", changes.len());
                    log::trace!("changes: {changes:?}");
                    self.log_changes(&changes);
                    for change in &changes {
                        self.apply(change);
                    }
                }
                Notice::Reset { lease_secs } => {
                    log::info!("the server asks to drop every cache");
                    if let Some(live) = lock(&self.coherence.state).live.as_mut() {
                        live.lease = self.lease_of(lease_secs);
                    }
                    self.drop_everything();
                }
            },
        }
    }

    /// The lease to use when the server grants `secs`.
    fn lease_of(&self, secs: u32) -> Duration {
        Duration::from_secs(u64::from(secs)).min(self.coherence.wanted)
    }

    /// Asks connection `epoch` for notices; the lease starts with the answer.
    fn subscribe(&self, epoch: u64) {
        if lock(&self.coherence.state).lost_upto >= epoch {
            return;
        }
        let secs = u32::try_from(self.coherence.wanted.as_secs().max(1)).unwrap_or(u32::MAX);
        let core = self.clone();
        self.client.submit_in(
            epoch,
            &nobody(),
            Op::Subscribe { lease_secs: secs },
            move |r| {
                let granted = match r {
                    Ok(Reply::Subscribed { lease_secs }) => lease_secs,
                    Ok(_) => {
                        log::warn!("the server answered a subscription with something else");
                        return;
                    }
                    Err(e) => {
                        log::debug!("subscribing to the server's notices: {e}");
                        return;
                    }
                };
                // On the reader thread: the lease state says whether the
                // connection broke meanwhile, not the client (whose lock
                // the reader must never wait for).
                let mut state = lock(&core.coherence.state);
                if state.lost_upto >= epoch {
                    return;
                }
                state.live = Some(Live {
                    epoch,
                    since: Instant::now(),
                    lease: core.lease_of(granted),
                });
                if granted == 0 {
                    log::info!(
                        "the server cannot watch its export: caches live {:?}",
                        core.opts.attr_timeout
                    );
                }
            },
        );
    }

    /// Logs what `changes` touch, for the requests they cross, and moves the
    /// generation past them.
    fn log_changes(&self, changes: &[Change]) {
        let mut paths = Vec::new();
        let mut inos = Vec::new();
        {
            let inodes = lock(&self.inodes);
            for change in changes {
                match change {
                    Change::Name { path, .. } => paths.push(path.clone()),
                    Change::Moved { from, to } => {
                        paths.push(from.clone());
                        paths.push(to.clone());
                    }
                    Change::Node { id, .. } => inos.extend(inodes.ino_of_id(FileId {
                        dev: id.dev,
                        ino: id.ino,
                    })),
                }
            }
        }
        self.coherence.seen(false, paths, inos);
        // Listings fetched ahead may show what changed.
        self.changes.elsewhere();
    }

    /// Applies one change the server told of.
    fn apply(&self, change: &Change) {
        match change {
            Change::Name { path, now } => {
                let Some((dir_path, name)) = path.split_last() else {
                    return;
                };
                let (dir, old) = {
                    let mut inodes = lock(&self.inodes);
                    let old = inodes.ino_of(path);
                    let same = now.and_then(|id| {
                        inodes.ino_of_id(FileId {
                            dev: id.dev,
                            ino: id.ino,
                        })
                    });
                    log::trace!("name {path:?}: inode {old:?} here, the server's file is {same:?}");
                    if let Some(ino) = old.filter(|_| old == same) {
                        // The same server file's number, but maybe another
                        // file (numbers are reused): the name and its inode
                        // number stay, what is known of the node and below
                        // it goes.
                        let below = inodes.detach_below(path);
                        drop(inodes);
                        for (dir, name) in below {
                            self.kernel.forget_entry(dir, &name);
                        }
                        self.doubt_ino(ino, true);
                        return;
                    }
                    inodes.detach(path);
                    (inodes.ino_of(&dir_path), old)
                };
                if let Some(dir) = dir {
                    self.known.forget(dir);
                    lock(&self.coherence.negatives).remove(dir, name);
                    self.kernel.forget_entry(dir, name);
                }
                if let Some(old) = old {
                    self.doubt_ino(old, false);
                }
            }
            Change::Moved { from, to } => {
                let (dirs, moved, replaced) = {
                    let mut inodes = lock(&self.inodes);
                    let mut dirs = Vec::new();
                    for path in [from, to] {
                        if let Some((dir, name)) = path.split_last() {
                            if let Some(ino) = inodes.ino_of(&dir) {
                                dirs.push((ino, name.to_os_string()));
                            }
                        }
                    }
                    let moved = inodes.ino_of(from);
                    let replaced = inodes.ino_of(to);
                    // (The server tells of each rename once: whatever `to`
                    // named here is gone.)
                    inodes.rename(from, to);
                    (dirs, moved, replaced)
                };
                for (dir, name) in dirs {
                    self.known.forget(dir);
                    lock(&self.coherence.negatives).remove(dir, &name);
                    self.kernel.forget_entry(dir, &name);
                }
                // The moved node's ctime changed; the replaced one lost a name.
                for ino in moved.into_iter().chain(replaced) {
                    self.doubt_ino(ino, false);
                }
            }
            Change::Node { id, content } => {
                let ino = lock(&self.inodes).ino_of_id(FileId {
                    dev: id.dev,
                    ino: id.ino,
                });
                if let Some(ino) = ino {
                    self.doubt_ino(ino, *content);
                }
            }
        }
    }

    /// Drops every cache: this mount's, and every name, inode and negative
    /// entry the kernel may hold.
    pub(super) fn drop_everything(&self) {
        self.coherence.seen(true, Vec::new(), Vec::new());
        self.changes.elsewhere();
        self.attrs.clear();
        self.known.clear();
        self.file_caps.clear();
        self.writes.doubt_all();
        let (names, inos) = {
            let mut inodes = lock(&self.inodes);
            inodes.forget_all_opened();
            (inodes.names(), inodes.inos())
        };
        let negatives = lock(&self.coherence.negatives).take_all();
        for (dir, name) in names.iter().chain(&negatives) {
            self.kernel.forget_entry(*dir, name);
        }
        for ino in inos {
            // (Every entry is being dropped already.)
            self.kernel.forget_inode(ino, true, Vec::new());
        }
    }
}
