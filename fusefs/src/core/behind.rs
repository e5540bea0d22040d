//! Removing without waiting, under a directory lease.
//!
//! In a directory whose every name this mount knows and on which the server
//! will say when anything changes (a directory lease: [`Core::dir_leased`]),
//! `unlink` and `rmdir` are answered to the kernel at once and sent *behind*,
//! as CephFS does while its client holds a directory's capabilities. What makes
//! that safe:
//!
//! - the checks the kernel expects from the filesystem are answered here from
//!   what the lease guarantees: the name exists (it is among the known names),
//!   a directory removed is empty (its own names are known, and there are
//!   none). The kernel itself checks permissions and the sticky bit from the
//!   attributes it caches (the mount runs with `default_permissions`), which
//!   the lease keeps current; a caller the server acts for as another user
//!   (squashed) might be refused there where the kernel allowed, so it waits;
//! - the server applies them in the order they were sent: a name operation
//!   runs on the connection's reader as it arrives, before the next request is
//!   read (see the server's `schedule`), so whatever this mount sends later on
//!   the same connection — a stat, a listing, a create of the same name —
//!   sees the removal, without waiting for it here. Each goes on the
//!   connection that holds the lease, never on a later one;
//! - a failure is never lost. The first failure not yet reported is kept for
//!   the directory (and for the removed inode, if the kernel still holds it):
//!   `fsync` of that directory (`fsyncdir`) returns it once, as the next
//!   `close` or `fsync` of the file does, as Linux reports a writeback error
//!   nobody has seen yet. A request whose connection broke, or that timed
//!   out, may or may not have been applied: that is reported as EIO. The
//!   mount's caches of the directory are dropped, so the name is asked of
//!   the server again, and an operation that depended on the removal (an
//!   `rmdir` of the directory, sent behind it) fails on the server, in order,
//!   and is reported the same way.
//!
//! `syncfs(2)` does not reach a FUSE filesystem (the kernel sends `FUSE_SYNCFS`
//! only to virtiofs, and fuser 0.18 has no hook for it): a failure behind is
//! reported by `fsync`/`fsyncdir` and close, and logged.
//!
//! Unmounting waits (for a bounded time) for every operation still behind.

use super::{Caller, Core, Done};
use crate::inode::FileId;
use ferry_common::proto::{Op, Reply, CLIENT_HANDLE};
use ferry_common::sync::lock;
use ferry_common::{Attr, Errno, RelPath, Timestamp};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Operations sent behind and not answered yet, and the failures not reported yet.
#[derive(Default)]
pub(super) struct Behind {
    state: Mutex<State>,
    answered: Condvar,
    /// The last handle number chosen, without the client bit.
    chosen: AtomicU64,
}

#[derive(Default)]
struct State {
    /// In flight, by directory.
    in_flight: HashMap<u64, usize>,
    /// Removals started and answered, counted.
    moves: u64,
    /// The first failure not yet reported, by directory...
    dir_errors: HashMap<u64, Errno>,
    /// ...and by the inode the operation removed a name of.
    file_errors: HashMap<u64, Errno>,
    /// Kernel handles of files created behind, not released yet, with the
    /// directory each was made in.
    made: HashMap<u64, u64>,
}

impl State {
    /// An operation in `dir` (about inode `ino`, when known) failed with `e`:
    /// kept unless a failure not reported yet is there already.
    fn failed(&mut self, dir: u64, ino: Option<u64>, e: Errno) {
        self.dir_errors.entry(dir).or_insert(e);
        if let Some(ino) = ino {
            self.file_errors.entry(ino).or_insert(e);
        }
    }
}

impl Behind {
    /// A handle number for a file this mount creates (see
    /// [`super::create_behind`]): with the client bit, and never one chosen
    /// before, on whatever connection.
    pub(super) fn choose_handle(&self) -> u64 {
        CLIENT_HANDLE | (self.chosen.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub(super) fn begin(&self, dir: u64) {
        let mut state = lock(&self.state);
        *state.in_flight.entry(dir).or_default() += 1;
        state.moves += 1;
    }

    /// The operation in `dir` (about inode `ino`, when known) was answered.
    pub(super) fn end(&self, dir: u64, ino: Option<u64>, result: Result<(), Errno>) {
        let mut state = lock(&self.state);
        state.moves += 1;
        if let Some(n) = state.in_flight.get_mut(&dir) {
            *n -= 1;
            if *n == 0 {
                state.in_flight.remove(&dir);
            }
        }
        if let Err(e) = result {
            state.failed(dir, ino, e);
        }
        drop(state);
        self.answered.notify_all();
    }

    /// Whether removals sent behind in `dir` are unanswered (its cached
    /// attributes may be a projection, see `project_name_change`, which the
    /// kernel is told to ask for again rather than keep), and a stamp that
    /// moves whenever a removal starts or is answered.
    pub(super) fn busy(&self, dir: u64) -> (bool, u64) {
        let state = lock(&self.state);
        (state.in_flight.contains_key(&dir), state.moves)
    }

    /// How many operations are behind, in all.
    pub(super) fn pending(&self) -> usize {
        lock(&self.state).in_flight.values().sum()
    }

    /// Waits until nothing is behind in `dir` (every directory: `None`), or
    /// until `deadline`; whether everything was answered.
    fn wait(&self, dir: Option<u64>, deadline: Instant) -> bool {
        let mut state = lock(&self.state);
        loop {
            let busy = match dir {
                Some(dir) => state.in_flight.contains_key(&dir),
                None => !state.in_flight.is_empty(),
            };
            if !busy {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match self.answered.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Kernel handle `fh` is that of a file created behind in `dir`.
    pub(super) fn made(&self, fh: u64, dir: u64) {
        lock(&self.state).made.insert(fh, dir);
    }

    /// The directory `fh` was created behind in, if it was.
    pub(super) fn made_in(&self, fh: u64) -> Option<u64> {
        lock(&self.state).made.get(&fh).copied()
    }

    /// `fh` was released: the directory it was created behind in, if it was.
    pub(super) fn unmade(&self, fh: u64) -> Option<u64> {
        lock(&self.state).made.remove(&fh)
    }

    /// A failure through a file created behind in `dir` that came after its
    /// close: for the next fsync of the file or of the directory.
    pub(super) fn record(&self, dir: u64, ino: u64, e: Errno) {
        lock(&self.state).failed(dir, Some(ino), e);
    }

    /// The failure behind not yet reported for directory `dir`, reported now.
    fn take_dir_error(&self, dir: u64) -> Option<Errno> {
        lock(&self.state).dir_errors.remove(&dir)
    }

    /// The failure behind not yet reported for inode `ino`, reported now.
    pub(super) fn take_file_error(&self, ino: u64) -> Option<Errno> {
        lock(&self.state).file_errors.remove(&ino)
    }

    /// The kernel no longer holds `ino`: nobody is left to hear of its
    /// failures as a file (its directory still does). A directory's stay for
    /// the next fsync of it, which may come through a new open.
    pub(super) fn forget(&self, ino: u64) {
        lock(&self.state).file_errors.remove(&ino);
    }
}

/// What an operation behind that failed with `e` tells the application: a
/// request whose connection broke or that timed out may or may not have been
/// applied.
pub(super) fn reported(e: Errno) -> Errno {
    if e == Errno::ETIMEDOUT {
        Errno::EIO
    } else {
        e
    }
}

/// A removal that may be sent behind.
#[derive(Debug)]
pub(super) struct Removal {
    /// The connection that holds the lease: it goes on that one or fails.
    epoch: u64,
    path: RelPath,
    /// rmdir rather than unlink.
    dir: bool,
}

impl Core {
    /// An operation sent behind in `parent` was answered, with the server's
    /// attributes of the directories it changed (`dirs`): they replace the
    /// projection of `parent` (see `project_name_change`), even where this
    /// machine's clock ran ahead of them; without them the projection goes.
    pub(super) fn settle_projection(&self, parent: u64, dirs: &[Attr], asked: Instant) {
        let parent_id = lock(&self.inodes).file_id(parent);
        match dirs.iter().find(|d| Some(FileId::of(d)) == parent_id) {
            Some(attr) => self.attrs.replace(parent, *attr, self.until(asked)),
            None => self.attrs.drop_ino(parent),
        }
        self.note_dirs(dirs, asked);
    }

    /// An operation sent behind on `name` in `parent` failed: whatever the
    /// server has now is asked of it again.
    pub(super) fn forget_name_behind(&self, parent: u64, name: &OsStr) {
        self.known.forget(parent);
        self.attrs.drop_ino(parent);
        self.kernel.forget_entry(parent, name);
    }

    /// The removal of `name` from `parent`, if it may go behind (see the
    /// module docs); `dir`: the name is a directory (rmdir), which must be
    /// known empty.
    pub(super) fn may_remove_behind(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        dir: bool,
    ) -> Option<Removal> {
        if self.opts.read_only
            || !self.checked_alike(caller)
            || !self.dir_leased(parent)
            || !self.known.has(parent, name)
        {
            return None;
        }
        let path = self.child(parent, name).ok()?;
        if dir {
            let child = lock(&self.inodes).ino_of(&path)?;
            if !(self.dir_leased(child) && self.known.empty(child)) {
                return None;
            }
        }
        let epoch = self.client.current_epoch()?;
        Some(Removal { epoch, path, dir })
    }

    /// Carries out `removal` of `name` from `parent`, sent behind: the kernel
    /// hears of success now.
    pub(super) fn remove_behind(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        removal: Removal,
        done: impl Done<()>,
    ) {
        let Removal { epoch, path, dir } = removal;
        let op = if dir {
            Op::Rmdir { path: path.clone() }
        } else {
            Op::Unlink { path: path.clone() }
        };
        // What the server will do, done here first, as a removal confirmed by
        // the server is (see `name_op`).
        let ino = lock(&self.inodes).ino_of(&path);
        if let Some(ino) = ino {
            self.attrs.drop_ino(ino);
            self.writes.links_changed(ino, None);
            self.known.forget(ino);
        }
        lock(&self.inodes).detach(&path);
        self.known.remove(parent, name);
        // Counted first: whoever reads the projection sees it counted.
        self.behind.begin(parent);
        self.project_name_change(parent, if dir { -1 } else { 0 });
        let core = self.clone();
        let name = name.to_os_string();
        let asked = Instant::now();
        self.client.submit_in(epoch, &caller.cred, op, move |r| {
            let result = match r {
                Ok(Reply::DirsChanged(dirs)) => {
                    core.settle_projection(parent, &dirs, asked);
                    Ok(())
                }
                Ok(_) => {
                    core.settle_projection(parent, &[], asked);
                    Ok(())
                }
                Err(e) => Err(reported(e)),
            };
            if let Err(e) = result {
                log::warn!(
                    "removing {path:?} failed on the server after it was answered ({e}); \
                     reported by the next fsync of its directory"
                );
                core.forget_name_behind(parent, &name);
            }
            core.behind.end(parent, ino, result);
        });
        // Not a change under way that every listing must wait out: one asked
        // for from now on goes after it and shows it.
        self.changes.sent_in_order();
        done(Ok(()))
    }

    /// Keeps the attributes of `parent` as the removal or creation of a name
    /// leaves them, until the server's answer replaces them: its times are
    /// now (by this machine's clock), its link count moves by `links` (a
    /// directory removed takes one with it). The kernel drops its copy of a
    /// directory's attributes after each removal and asks again for its
    /// permission check before the next: without this, that would wait for
    /// the server. Owner and mode, which the check reads, are unchanged. The
    /// kernel keeps none of this (see [`Behind::busy`]).
    pub(super) fn project_name_change(&self, parent: u64, links: i32) {
        let Some((mut attr, left)) = self.attrs.fresh(parent) else {
            return;
        };
        let now = Timestamp::from_system_time(SystemTime::now());
        attr.mtime = now;
        attr.ctime = now;
        attr.nlink = attr.nlink.saturating_add_signed(links);
        self.attrs.store(parent, attr, Instant::now() + left);
    }

    /// fsync(2) of directory `ino`: every removal sent behind in it has been
    /// answered, and the first failure among them not yet reported is.
    pub fn fsyncdir(&self, ino: u64, done: impl Done<()>) {
        let deadline = Instant::now() + self.client.timeout();
        if !self.behind.wait(Some(ino), deadline) {
            return done(Err(Errno::EIO));
        }
        match self.behind.take_dir_error(ino) {
            Some(e) => done(Err(e)),
            None => done(Ok(())),
        }
    }

    /// Waits, at most `limit`, until every operation sent behind, and every
    /// write, has been answered (when unmounting); whether all were.
    pub fn finish_behind(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut all = self.behind.wait(None, deadline);
        // Writes through files created behind, whose close did not wait.
        while all && self.writes.queued().0 > 0 {
            if Instant::now() >= deadline {
                log::warn!("writes were still in flight when unmounting");
                all = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if !all {
            log::warn!(
                "{} operations sent behind were not answered before unmounting",
                self.behind.pending()
            );
        }
        all
    }
}
