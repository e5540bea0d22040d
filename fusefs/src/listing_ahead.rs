//! `ListingsAhead`: the listings of directories a walk is about to reach,
//! fetched before the kernel asks for them.
//!
//! A walk — `ls -R`, `find`, `du`, `tar c`, `rsync` — lists a directory, then
//! each of its subdirectories, every listing a round trip after the last. Once
//! the mount sees one (a directory listed soon after its parent was), it asks
//! at once for the listings of the parent's other subdirectories and of the new
//! directory's own — at most [`PER_DIRECTORY`] of each, [`IN_FLIGHT`] at a
//! time, of directories that look small enough ([`LARGEST`]), holding at most
//! [`HELD_ENTRIES`] entries in [`HELD_LISTINGS`] listings — and so does
//! every listing fetched ahead that the walk then uses. A walk then costs about
//! a round trip per level of the tree rather than one per directory.
//!
//! A listing fetched ahead answers the kernel only while it is as fresh as the
//! kernel's own caches could be:
//!
//! - it was asked for within the attribute timeout, and its entries are handed
//!   on with what is left of it (see `core::dirs`);
//! - nothing was changed through this mount since it was asked for, nor was
//!   anything changing then, nor did the server tell of a change since
//!   ([`Changes`]): it could show the past;
//! - the directory at that path is the one it was asked for.
//!
//! Otherwise the listing is fetched as always.
//!
//! A walk also looks up, one after another, the names a listing showed it:
//! `tar c` and `cp -r` stat and open each file in turn, and once the kernel's
//! entries from the listing are older than the attribute timeout, every name
//! would cost a round trip of its own. So the names of a directory's latest
//! listing answer lookups while the listing is as fresh as above
//! ([`lookup`](ListingsAhead::lookup)), and when a name is looked up in a
//! listing just gone stale, the listing is asked for again, once: a walk then
//! costs a listing per attribute timeout rather than a lookup per name.
//!
//! Requests go out from a thread of their own (answers arrive on the
//! connection's reader, which must not wait to send), on behalf of the user
//! whose listing or lookup set them off; none is waited for.

use crate::client::{OpResult, RemoteClient};
use crate::inode::FileId;
use ferry_common::proto::{Cred, DirEntry, Op, Reply};
use ferry_common::sync::lock;
use ferry_common::{Attr, FileKind, RelPath};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Subdirectories of one directory fetched ahead at most.
pub(crate) const PER_DIRECTORY: usize = 64;
/// Listings asked for ahead and not answered yet, at most.
pub(crate) const IN_FLIGHT: usize = 16;
/// A directory whose size (as its parent's listing shows it) is above this is
/// left for the kernel to ask for: its listing may be long.
pub(crate) const LARGEST: u64 = 1 << 20;
/// Entries held in listings fetched ahead, over all of them; beyond it the
/// oldest go.
pub(crate) const HELD_ENTRIES: usize = 100_000;
/// Listings fetched ahead held at most.
pub(crate) const HELD_LISTINGS: usize = 1024;
/// Directories whose names are kept for lookups, at most...
pub(crate) const NAMED_DIRECTORIES: usize = 256;
/// ...and names over all of them.
pub(crate) const NAMES: usize = 200_000;
/// A stale listing is asked for again for a lookup only within this long of
/// when it was asked for last (a walk is going on).
const REFRESH_WITHIN: Duration = Duration::from_secs(60);
/// Listings the kernel made lately that are remembered, for their subdirectories.
const REMEMBERED: usize = 256;
/// The longest the kernel's listing waits for one fetched ahead that is on its
/// way (which has a deadline of its own): then it is asked for again.
const LONGEST_WAIT: Duration = Duration::from_secs(10);

/// What this mount is changing or has changed lately, counted: a change
/// through the mount starts ([`begin`](Self::begin)) and is answered
/// ([`end`](Self::end)). A listing is only as new as this mount's own changes
/// if none was under way when it was asked for and none began or ended since.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Beginnings and ends.
    seq: AtomicU64,
    under_way: AtomicU64,
}

impl Changes {
    pub(crate) fn begin(&self) {
        self.under_way.fetch_add(1, Ordering::SeqCst);
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn end(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        self.under_way.fetch_sub(1, Ordering::SeqCst);
    }

    /// Something changed that this mount did not change (the server said
    /// so): no listing asked for before is as new as that.
    pub(crate) fn elsewhere(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    /// A change was sent without waiting for its answer (see
    /// `core::behind`), which the server applies before anything sent after
    /// it on the connection: a listing asked for from now on shows it, one
    /// asked for before may not. Called once the change is on its way.
    pub(crate) fn sent_in_order(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    /// A mark for a listing asked for now; `None` while changes are under way.
    pub(crate) fn mark(&self) -> Option<u64> {
        let seq = self.seq.load(Ordering::SeqCst);
        (self.under_way.load(Ordering::SeqCst) == 0).then_some(seq)
    }

    pub(crate) fn unchanged_since(&self, mark: u64) -> bool {
        self.seq.load(Ordering::SeqCst) == mark
    }
}

/// Whether `op` may change what a listing shows: names, or the attributes of
/// what they name.
pub(crate) fn changes_listings(op: &Op) -> bool {
    match op {
        Op::Create { .. }
        | Op::CreateAs { .. }
        | Op::Write { .. }
        | Op::Mkdir { .. }
        | Op::Mknod { .. }
        | Op::Symlink { .. }
        | Op::Link { .. }
        | Op::Unlink { .. }
        | Op::Rmdir { .. }
        | Op::Rename { .. }
        | Op::SetXattr { .. }
        | Op::RemoveXattr { .. }
        | Op::Fallocate { .. }
        | Op::CopyFileRange { .. } => true,
        // Without changes it asks for an open file's attributes.
        Op::SetAttr { changes, .. } => *changes != Default::default(),
        Op::Open { flags, .. } | Op::OpenRead { flags, .. } => flags & libc::O_TRUNC != 0,
        Op::Stat { .. }
        | Op::ReadDir { .. }
        | Op::List { .. }
        | Op::ReadLink { .. }
        | Op::Read { .. }
        | Op::Fsync { .. }
        | Op::Close { .. }
        | Op::StatFs
        | Op::GetXattr { .. }
        | Op::ListXattr { .. }
        | Op::SetLock { .. }
        | Op::GetLock { .. }
        | Op::ReleaseLocks { .. }
        | Op::ReclaimLock { .. }
        | Op::ReclaimComplete
        | Op::Ping
        | Op::Subscribe { .. }
        | Op::ReadFiles { .. } => false,
    }
}

/// A listing fetched ahead, taken for the kernel.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) entries: Arc<Vec<DirEntry>>,
    /// When it was asked for.
    pub(crate) asked: Instant,
    /// [`Changes`] then.
    pub(crate) mark: u64,
}

/// A listing fetched ahead.
#[derive(Debug)]
struct Fetched {
    /// The directory it was asked for.
    id: FileId,
    entries: Arc<Vec<DirEntry>>,
    asked: Instant,
    /// [`Changes`] when it was asked for.
    mark: u64,
}

/// A directory to fetch the listing of.
#[derive(Debug)]
struct Wanted {
    path: RelPath,
    id: FileId,
    cred: Cred,
    /// For the names it holds (lookups), not for the kernel's listing.
    for_names: bool,
}

/// The names of a directory as its latest listing showed them.
#[derive(Debug)]
struct Names {
    id: FileId,
    asked: Instant,
    /// [`Changes`] when the listing was asked for; `None`: changes were under way.
    mark: Option<u64>,
    attrs: HashMap<Vec<u8>, Attr>,
    /// Asked for again and not answered yet.
    refreshing: bool,
}

/// Regular files of a directory, by name, with their attributes.
pub(crate) type FilesListed = Vec<(Vec<u8>, Attr)>;

/// A listing the kernel made (or took from here) lately.
#[derive(Debug)]
struct Listed {
    at: Instant,
    /// Its subdirectories that look small enough to fetch.
    subdirs: Vec<(RelPath, FileId)>,
}

/// Told of each listing fetched ahead: who asked, the directory, its entries.
pub(crate) type OnFetched = Box<dyn Fn(&Cred, &RelPath, &[DirEntry]) + Send + Sync>;

/// The state, and a signal for each answer.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    answered: Condvar,
    /// Told of each listing fetched ahead (on the sending thread).
    on_fetched: std::sync::OnceLock<OnFetched>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .finish()
    }
}

#[derive(Debug, Default)]
struct State {
    ready: HashMap<RelPath, Fetched>,
    held_entries: usize,
    /// Wanted (queued or asked for) and not answered yet.
    pending: HashSet<RelPath>,
    /// Asked for and not answered yet.
    asking: HashSet<RelPath>,
    queue: VecDeque<Wanted>,
    in_flight: usize,
    listed: HashMap<RelPath, Listed>,
    /// By directory path.
    names: HashMap<RelPath, Names>,
    /// Names held in `names`.
    held_names: usize,
}

impl State {
    /// Keeps the names of `path`, directory `id`, as `entries` show them;
    /// the oldest directories go to make room.
    fn keep_names(
        &mut self,
        path: &RelPath,
        id: FileId,
        asked: Instant,
        mark: Option<u64>,
        entries: &[DirEntry],
    ) {
        if let Some(old) = self.names.remove(path) {
            self.held_names -= old.attrs.len();
        }
        if entries.len() > NAMES {
            return;
        }
        while self.held_names + entries.len() > NAMES || self.names.len() >= NAMED_DIRECTORIES {
            let oldest = self
                .names
                .iter()
                .min_by_key(|(_, n)| n.asked)
                .map(|(p, _)| p.clone());
            let Some(oldest) = oldest else { break };
            if let Some(old) = self.names.remove(&oldest) {
                self.held_names -= old.attrs.len();
            }
        }
        let attrs: HashMap<Vec<u8>, Attr> =
            entries.iter().map(|e| (e.name.clone(), e.attr)).collect();
        self.held_names += attrs.len();
        self.names.insert(
            path.clone(),
            Names {
                id,
                asked,
                mark,
                attrs,
                refreshing: false,
            },
        );
    }

    fn take_ready(&mut self, path: &RelPath) -> Option<Fetched> {
        let fetched = self.ready.remove(path)?;
        self.held_entries -= fetched.entries.len();
        Some(fetched)
    }

    /// Makes room for one more listing of `n` entries, the oldest listings
    /// going first; false if `n` alone is too many.
    fn room_for(&mut self, n: usize) -> bool {
        if n > HELD_ENTRIES {
            return false;
        }
        while self.held_entries + n > HELD_ENTRIES || self.ready.len() >= HELD_LISTINGS {
            let oldest = self
                .ready
                .iter()
                .min_by_key(|(_, f)| f.asked)
                .map(|(p, _)| p.clone());
            match oldest {
                Some(path) => {
                    self.take_ready(&path);
                }
                None => break,
            }
        }
        true
    }
}

/// The answer to one request for the listing of `want.path`.
struct Answer {
    want: Wanted,
    /// [`Changes`] when the listing was asked for.
    mark: u64,
    asked: Instant,
    /// What earlier replies of a long listing brought.
    entries: Vec<DirEntry>,
    result: OpResult,
}

/// Messages to the thread that sends the requests.
enum Job {
    Want(Wanted),
    Answered(Box<Answer>),
    /// The mount is going: the thread ends (answers still on their way are
    /// dropped with the channel).
    Stop,
}

pub(crate) struct ListingsAhead {
    shared: Arc<Shared>,
    changes: Arc<Changes>,
    ttl: Duration,
    /// To the sending thread, started with the first listing wanted.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    client: RemoteClient,
}

impl ListingsAhead {
    pub(crate) fn new(client: RemoteClient, changes: Arc<Changes>, ttl: Duration) -> ListingsAhead {
        ListingsAhead {
            shared: Arc::default(),
            changes,
            ttl,
            jobs: Mutex::new(None),
            client,
        }
    }

    /// The listing of `path`, directory `id`, if one fetched ahead may answer
    /// for it: its entries and when it was asked for. One on its way is waited
    /// for (it is the sooner answer); one only wanted yet is not asked for
    /// any more (the caller asks now).
    pub(crate) fn take(&self, path: &RelPath, id: FileId) -> Option<Taken> {
        let mut state = lock(&self.shared.state);
        let started = Instant::now();
        let mut waited = false;
        let fetched = loop {
            if let Some(fetched) = state.take_ready(path) {
                break fetched;
            }
            if !state.asking.contains(path) || started.elapsed() >= LONGEST_WAIT {
                state.queue.retain(|w| w.path != *path);
                state.pending.remove(path);
                return None;
            }
            if !waited {
                // The kernel's listing waits for this request now.
                self.client.stats().waited_for(&Op::List {
                    path: path.clone(),
                    cursor: 0,
                });
                waited = true;
            }
            // Bounded by the request's own deadline, and by LONGEST_WAIT.
            state = self
                .shared
                .answered
                .wait_timeout(state, LONGEST_WAIT)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        };
        drop(state);
        let fresh = fetched.asked.elapsed() < self.ttl;
        (fresh && fetched.id == id && self.changes.unchanged_since(fetched.mark)).then_some(Taken {
            entries: fetched.entries,
            asked: fetched.asked,
            mark: fetched.mark,
        })
    }

    /// The attributes of `name` in directory `dir` (the server file `id`) as
    /// the directory's latest listing shows them, and when it was asked for,
    /// if that listing is as fresh as the kernel's caches may be. When it has
    /// gone stale but had the name, it is asked for again on `cred`'s behalf
    /// (once at a time): the lookups of a walk go on with it.
    pub(crate) fn lookup(
        &self,
        cred: &Cred,
        dir: &RelPath,
        id: FileId,
        name: &[u8],
    ) -> Option<(Attr, Instant)> {
        if self.ttl.is_zero() {
            return None;
        }
        let mut state = lock(&self.shared.state);
        let names = state.names.get_mut(dir).filter(|n| n.id == id)?;
        let attr = *names.attrs.get(name)?;
        let age = names.asked.elapsed();
        let unchanged = names
            .mark
            .is_some_and(|mark| self.changes.unchanged_since(mark));
        if age < self.ttl && unchanged {
            return Some((attr, names.asked));
        }
        if names.refreshing || age >= REFRESH_WITHIN {
            return None;
        }
        names.refreshing = true;
        if !state.pending.insert(dir.clone()) {
            return None;
        }
        drop(state);
        self.send(Job::Want(Wanted {
            path: dir.clone(),
            id,
            cred: cred.clone(),
            for_names: true,
        }));
        None
    }

    /// The listings fetched ahead and not taken yet that may still answer:
    /// each directory and its entries.
    pub(crate) fn fetched(&self) -> Vec<(RelPath, Arc<Vec<DirEntry>>)> {
        let state = lock(&self.shared.state);
        let mut fetched: Vec<(RelPath, Arc<Vec<DirEntry>>)> = state
            .ready
            .iter()
            .filter(|(_, f)| f.asked.elapsed() < self.ttl && self.changes.unchanged_since(f.mark))
            .map(|(p, f)| (p.clone(), Arc::clone(&f.entries)))
            .collect();
        fetched.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        fetched
    }

    /// `hook` is told of every listing fetched ahead from now on (once set,
    /// for good).
    pub(crate) fn on_fetched(&self, hook: OnFetched) {
        let _ = self.shared.on_fetched.set(hook);
    }

    /// The regular files of directory `dir` no larger than `largest`, with
    /// their attributes, as its latest listing shows them, if that listing is
    /// as fresh as the kernel's caches may be (see [`lookup`](Self::lookup)).
    /// Returns when that listing was asked for too, which tells it from a
    /// later one.
    pub(crate) fn files_of(&self, dir: &RelPath, largest: u64) -> Option<(Instant, FilesListed)> {
        let state = lock(&self.shared.state);
        let names = self.fresh_names(&state, dir)?;
        let mut files: FilesListed = names
            .attrs
            .iter()
            .filter(|(_, a)| a.kind == FileKind::File && a.size <= largest)
            .map(|(n, a)| (n.clone(), *a))
            .collect();
        // In name order, as `tar --sort=name` and most walks that sort read them.
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some((names.asked, files))
    }

    /// When the latest listing of `dir` was asked for, if it is as fresh as
    /// [`files_of`](Self::files_of) needs: a cheap look before the copy.
    pub(crate) fn listing_asked(&self, dir: &RelPath) -> Option<Instant> {
        let state = lock(&self.shared.state);
        self.fresh_names(&state, dir).map(|names| names.asked)
    }

    fn fresh_names<'a>(&self, state: &'a State, dir: &RelPath) -> Option<&'a Names> {
        if self.ttl.is_zero() {
            return None;
        }
        let names = state.names.get(dir)?;
        let unchanged = names
            .mark
            .is_some_and(|mark| self.changes.unchanged_since(mark));
        (names.asked.elapsed() < self.ttl && unchanged).then_some(names)
    }

    /// The kernel listed `path` (directory `id`) for `cred`, and got `entries`;
    /// `ahead`: from a listing fetched ahead. If that is a step of a walk, the
    /// listings it will want next are asked for.
    ///
    /// `id`, `asked` and `mark` ([`Changes`] when it was asked for, `None` if
    /// changes were under way) say what the listing is of and how fresh: its
    /// names answer lookups from now on (see [`lookup`](Self::lookup)).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn listed(
        &self,
        cred: &Cred,
        path: &RelPath,
        id: FileId,
        entries: &[DirEntry],
        asked: Instant,
        mark: Option<u64>,
        ahead: bool,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        lock(&self.shared.state).keep_names(path, id, asked, mark, entries);
        let subdirs: Vec<(RelPath, FileId)> = entries
            .iter()
            .filter(|e| e.attr.kind == FileKind::Directory && e.attr.size <= LARGEST)
            .filter_map(|e| {
                Some((
                    path.join(OsStr::from_bytes(&e.name)).ok()?,
                    FileId::of(&e.attr),
                ))
            })
            .take(PER_DIRECTORY)
            .collect();
        let wanted: Vec<(RelPath, FileId)> = {
            let mut state = lock(&self.shared.state);
            let parent = path.split_last().map(|(parent, _)| parent);
            let walk = ahead
                || parent
                    .as_ref()
                    .and_then(|p| state.listed.get(p))
                    .is_some_and(|l| l.at.elapsed() < self.ttl);
            let mut wanted = Vec::new();
            if walk {
                if let Some(siblings) = parent.as_ref().and_then(|p| state.listed.get(p)) {
                    wanted.extend(siblings.subdirs.iter().filter(|(p, _)| p != path).cloned());
                }
                wanted.extend(subdirs.iter().cloned());
            }
            if state.listed.len() >= REMEMBERED {
                let ttl = self.ttl;
                state.listed.retain(|_, l| l.at.elapsed() < ttl);
                if state.listed.len() >= REMEMBERED {
                    state.listed.clear();
                }
            }
            state.listed.insert(
                path.clone(),
                Listed {
                    at: Instant::now(),
                    subdirs,
                },
            );
            // Not what is here already, nor what the walk has been through.
            let ttl = self.ttl;
            wanted.retain(|(p, _)| {
                let fetched = state.ready.get(p).is_some_and(|f| f.asked.elapsed() < ttl);
                let walked = state.listed.get(p).is_some_and(|l| l.at.elapsed() < ttl);
                !fetched && !walked && state.pending.insert(p.clone())
            });
            wanted
        };
        for (path, id) in wanted {
            self.send(Job::Want(Wanted {
                path,
                id,
                cred: cred.clone(),
                for_names: false,
            }));
        }
    }

    fn send(&self, job: Job) {
        let mut jobs = lock(&self.jobs);
        if jobs.is_none() {
            let (tx, rx) = mpsc::channel();
            let sender = Sender {
                shared: Arc::clone(&self.shared),
                changes: Arc::clone(&self.changes),
                client: self.client.clone(),
                jobs: tx.clone(),
            };
            let started = thread::Builder::new()
                .name("ferry-listing-ahead".into())
                .spawn(move || sender.run(rx));
            if let Err(e) = started {
                log::warn!("cannot start fetching listings ahead: {e}");
                return;
            }
            *jobs = Some(tx);
        }
        if let Some(tx) = jobs.as_ref() {
            let _ = tx.send(job);
        }
    }

    /// Waits until nothing is wanted or under way (for tests).
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let state = lock(&self.shared.state);
                if state.pending.is_empty() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "listings ahead never settled");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ListingsAhead {
    fn drop(&mut self) {
        if let Some(tx) = lock(&self.jobs).take() {
            let _ = tx.send(Job::Stop);
        }
    }
}

/// The thread that sends the requests: it owns the queue's pace.
struct Sender {
    shared: Arc<Shared>,
    changes: Arc<Changes>,
    client: RemoteClient,
    /// Given to each request's callback, which hands the answer back here.
    jobs: mpsc::Sender<Job>,
}

impl Sender {
    /// Runs until the mount goes (see `Drop for ListingsAhead`).
    fn run(self, jobs: mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Want(want) => lock(&self.shared.state).queue.push_back(want),
                Job::Answered(answer) => self.answered(*answer),
                Job::Stop => return,
            }
            self.pump();
        }
    }

    fn answered(&self, answer: Answer) {
        let Answer {
            want,
            mark,
            asked,
            mut entries,
            result,
        } = answer;
        match result {
            Ok(Reply::Listing {
                entries: more,
                cursor,
            }) => {
                entries.extend(more);
                if cursor != 0 && entries.len() <= HELD_ENTRIES {
                    // The rest of a long listing: sent again, still counted in flight.
                    return self.ask(want, mark, asked, entries, cursor);
                }
                let mut state = lock(&self.shared.state);
                state.in_flight -= 1;
                state.pending.remove(&want.path);
                state.asking.remove(&want.path);
                if want.for_names {
                    if cursor == 0 {
                        state.keep_names(&want.path, want.id, asked, Some(mark), &entries);
                    } else if let Some(names) = state.names.get_mut(&want.path) {
                        names.refreshing = false;
                    }
                } else if cursor == 0 && state.room_for(entries.len()) {
                    state.held_entries += entries.len();
                    let entries = Arc::new(entries);
                    state.ready.insert(
                        want.path.clone(),
                        Fetched {
                            id: want.id,
                            entries: Arc::clone(&entries),
                            asked,
                            mark,
                        },
                    );
                    drop(state);
                    if let Some(hook) = self.shared.on_fetched.get() {
                        hook(&want.cred, &want.path, &entries);
                    }
                }
            }
            Ok(_) | Err(_) => {
                let mut state = lock(&self.shared.state);
                state.in_flight -= 1;
                state.pending.remove(&want.path);
                state.asking.remove(&want.path);
                if let Some(names) = state.names.get_mut(&want.path) {
                    names.refreshing = false;
                }
            }
        }
        self.shared.answered.notify_all();
    }

    /// Sends what is queued, as far as there is room in flight.
    fn pump(&self) {
        loop {
            let want = {
                let mut state = lock(&self.shared.state);
                if state.in_flight >= IN_FLIGHT {
                    return;
                }
                let Some(want) = state.queue.pop_front() else {
                    return;
                };
                // Worthless while this mount changes things: dropped.
                let Some(mark) = self.changes.mark() else {
                    state.pending.remove(&want.path);
                    if let Some(names) = state.names.get_mut(&want.path) {
                        names.refreshing = false;
                    }
                    continue;
                };
                state.in_flight += 1;
                state.asking.insert(want.path.clone());
                (want, mark)
            };
            let (want, mark) = want;
            self.ask(want, mark, Instant::now(), Vec::new(), 0);
        }
    }

    fn ask(&self, want: Wanted, mark: u64, asked: Instant, entries: Vec<DirEntry>, cursor: u64) {
        let op = Op::List {
            path: want.path.clone(),
            cursor,
        };
        let cred = want.cred.clone();
        let back = self.jobs.clone();
        self.client.submit(&cred, op, move |result| {
            // The thread is gone only when the mount is: nothing to keep then.
            let _ = back.send(Job::Answered(Box::new(Answer {
                want,
                mark,
                asked,
                entries,
                result,
            })));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::proto::AttrChanges;

    #[test]
    fn a_mark_holds_only_while_nothing_changes() {
        let changes = Changes::default();
        let mark = changes.mark().expect("nothing under way");
        assert!(changes.unchanged_since(mark));
        changes.begin();
        assert_eq!(changes.mark(), None, "a change under way");
        assert!(!changes.unchanged_since(mark));
        changes.end();
        let later = changes.mark().expect("nothing under way");
        assert!(!changes.unchanged_since(mark));
        assert!(changes.unchanged_since(later));
    }

    #[test]
    fn what_is_held_is_bounded_and_the_oldest_goes_first() {
        let mut state = State::default();
        let start = Instant::now();
        let entries = |n: usize| {
            let entry = DirEntry {
                name: b"e".to_vec(),
                attr: ferry_common::Attr::blank(FileKind::File),
            };
            Arc::new(vec![entry; n])
        };
        let hold = |state: &mut State, i: u64, n: usize| {
            assert!(state.room_for(n));
            state.held_entries += n;
            let fetched = Fetched {
                id: FileId { dev: 1, ino: i },
                entries: entries(n),
                asked: start + Duration::from_millis(i),
                mark: 0,
            };
            state
                .ready
                .insert(RelPath::parse(&format!("d{i}")).unwrap(), fetched);
        };
        let half = HELD_ENTRIES / 2;
        hold(&mut state, 1, half);
        hold(&mut state, 2, half);
        hold(&mut state, 3, 1);
        assert!(!state.ready.contains_key(&RelPath::parse("d1").unwrap()));
        assert_eq!(state.held_entries, half + 1);
        assert!(
            !state.room_for(HELD_ENTRIES + 1),
            "never more than the whole"
        );
        // Empty listings count against their own limit.
        for i in 10..10 + HELD_LISTINGS as u64 {
            hold(&mut state, i, 0);
        }
        assert_eq!(state.ready.len(), HELD_LISTINGS);
        assert!(!state.ready.contains_key(&RelPath::parse("d2").unwrap()));
        assert_eq!(
            state
                .take_ready(&RelPath::parse("d10").unwrap())
                .map(|f| f.id.ino),
            Some(10)
        );
    }

    #[test]
    fn what_changes_a_listing() {
        let path = RelPath::root();
        let setattr = |changes| Op::SetAttr {
            path: path.clone(),
            handle: Some(1),
            changes,
        };
        assert!(!changes_listings(&setattr(AttrChanges::default())));
        assert!(changes_listings(&setattr(AttrChanges {
            mode: Some(0o600),
            ..AttrChanges::default()
        })));
        let open = |flags| Op::Open {
            path: path.clone(),
            flags,
        };
        assert!(!changes_listings(&open(libc::O_RDWR)));
        assert!(changes_listings(&open(libc::O_RDWR | libc::O_TRUNC)));
        assert!(changes_listings(&Op::Unlink { path: path.clone() }));
        assert!(!changes_listings(&Op::Stat { path: path.clone() }));
        assert!(!changes_listings(&Op::List { path, cursor: 0 }));
    }
}
