//! `WriteBehind`: writes and attribute changes the kernel has been told succeeded
//! while they are still on their way to the server.
//!
//! Waiting for the server's answer to every write costs a network round trip per
//! 1 MiB, and per file in an untar (a write, then `futimens`, `fchown`, `fchmod`).
//! So a write through a file opened for writing is answered as soon as it is
//! sent, and so is an attribute change that cannot fail once the kernel has checked
//! permissions (see `Core::defer_setattr`). What makes that safe:
//!
//! - **Order.** The server applies the changes sent through one handle in the
//!   order they were sent (its per-handle sequencer). Across handles of one inode
//!   there is no such order, so a change waits here until no change through
//!   *another* handle that it could conflict with is still in flight.
//! - **Visibility.** Anything that reads the file or its attributes from the
//!   server (read, getattr, truncate, fsync) first waits until the inode has
//!   nothing in flight, so it never sees the file older than the kernel does.
//! - **No lost errors.** When anything in flight fails, every handle open for
//!   writing on the inode at that moment gets the error, and hands it to the
//!   application at its next `flush` (close) or `fsync` — once per open file, as
//!   Linux reports writeback errors. fsync also waits, then asks the server to
//!   sync.
//! - **Bounded memory.** At most one write window of data is in flight for the
//!   whole mount (see [`crate::windows`]: 16 MiB on a fast network, more as the
//!   round trip grows, so that the window covers what the path holds); a writer
//!   beyond that waits, which slows the application down to the server's pace
//!   instead of queueing without end.
//!
//! Waits block the FUSE worker thread that asks; answers arrive on the
//! connection's reader thread, so a wait always ends (every request has a
//! deadline).

use ferry_common::sync::{lock, wait};
use ferry_common::{Attr, Errno, FileKind, Timestamp};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// One change in flight; given back to [`WriteBehind::finish`].
#[derive(Debug)]
#[must_use = "every change begun must be finished"]
pub(crate) struct Ticket {
    ino: u64,
    id: u64,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    /// The kernel handle it was sent through.
    fh: u64,
    start: u64,
    /// Exclusive; `u64::MAX` for an attribute change, which conflicts with everything.
    end: u64,
    bytes: usize,
}

#[derive(Debug, Default)]
struct FileState {
    in_flight: Vec<InFlight>,
    /// Per writing handle, the first failure it has not passed on yet.
    errors: HashMap<u64, Errno>,
    /// The attributes the server will report once everything in flight has
    /// landed: its last answer with this mount's later changes applied.
    attr: Option<Attr>,
    /// When the server last told us the attributes.
    told_at: Option<Instant>,
    /// Data was written since: the projected times are this machine's guesses.
    guessed: bool,
    /// Writing handles that have had setuid/setgid dropped once.
    killed: Vec<u64>,
    /// Kernel handles open for writing on this inode.
    writers: Vec<u64>,
}

impl FileState {
    fn conflicts(&self, fh: u64, start: u64, end: u64) -> bool {
        self.in_flight
            .iter()
            .any(|f| f.fh != fh && f.start < end && start < f.end)
    }

    fn unused(&self) -> bool {
        self.in_flight.is_empty() && self.writers.is_empty()
    }
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<u64, FileState>,
    /// Changes answered so far, over all files (see [`WriteBehind::mark`]).
    finishes: u64,
    bytes: usize,
    next_id: u64,
    /// Threads blocked in a wait right now (tests observe it).
    waiting: usize,
}

#[derive(Debug, Default)]
pub(crate) struct WriteBehind {
    state: Mutex<State>,
    /// Signalled whenever something in flight finishes.
    finished: Condvar,
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

impl WriteBehind {
    pub(crate) fn new() -> WriteBehind {
        WriteBehind::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn wait<'a>(&self, mut guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        guard.waiting += 1;
        let mut guard = wait(&self.finished, guard);
        guard.waiting -= 1;
        guard
    }

    /// A mark to take before asking the server for attributes: an answer is
    /// only as new as the projection if nothing finished after the mark (answers
    /// arrive in any order, so a change may land after the server made the
    /// answer yet be heard of before it).
    pub(crate) fn mark(&self) -> u64 {
        self.lock().finishes
    }

    /// Kernel handle `fh` was opened for writing on `ino`; `attr` is what the
    /// server answered the open with.
    pub(crate) fn opened_for_writing(&self, ino: u64, fh: u64, attr: &Attr) {
        let mark = self.mark();
        self.opened_for_writing_since(ino, fh, attr, mark);
    }

    /// [`opened_for_writing`](Self::opened_for_writing), with the open sent
    /// after `mark`.
    pub(crate) fn opened_for_writing_since(&self, ino: u64, fh: u64, attr: &Attr, mark: u64) {
        let mut state = self.lock();
        let current = state.finishes == mark;
        let file = state.files.entry(ino).or_default();
        file.writers.push(fh);
        // With changes in flight (or landed after the answer was made) the
        // projection is newer than the server's answer.
        if file.in_flight.is_empty() && current {
            file.attr = Some(*attr);
            file.told_at = Some(Instant::now());
            file.guessed = false;
        } else if file.attr.is_none() {
            file.attr = Some(*attr);
            file.told_at = None;
        }
    }

    /// The server answered with the attributes of `ino`, asked after `mark`:
    /// they replace the projection unless changes are in flight or landed since.
    pub(crate) fn told(&self, ino: u64, attr: &Attr, mark: u64) {
        let mut state = self.lock();
        let current = state.finishes == mark;
        if let Some(file) = state.files.get_mut(&ino) {
            if file.in_flight.is_empty() && file.attr.is_some() && current {
                file.attr = Some(*attr);
                file.told_at = Some(Instant::now());
                file.guessed = false;
            }
        }
    }

    /// Whether a write through `fh` by a user without CAP_FSETID must ask the
    /// server to drop setuid/setgid: when the projection shows them, or on the
    /// first such write through the handle (the projection may predate a chmod
    /// made elsewhere).
    pub(crate) fn must_kill_suidgid(&self, ino: u64, fh: u64) -> bool {
        let mut state = self.lock();
        let Some(file) = state.files.get_mut(&ino) else {
            return false;
        };
        let shown = file.attr.is_some_and(|a| {
            a.kind == FileKind::File
                && (a.perm & libc::S_ISUID as u16 != 0
                    || a.perm & (libc::S_ISGID | libc::S_IXGRP) as u16
                        == (libc::S_ISGID | libc::S_IXGRP) as u16)
        });
        let first = !file.killed.contains(&fh);
        if first {
            file.killed.push(fh);
        }
        shown || first
    }

    /// What to tell the kernel of `ino` when the server answered `attr` to a
    /// request sent after `mark` (a lookup; `None` for a listing, which may be
    /// older still): while this mount's changes are in flight, or landed after
    /// the answer was made, the answer is older than what the kernel knows and
    /// would shrink the file it sees.
    pub(crate) fn overlay(&self, ino: u64, attr: Attr, mark: Option<u64>) -> Attr {
        let state = self.lock();
        let stale = mark != Some(state.finishes);
        match state.files.get(&ino) {
            Some(file) if !file.in_flight.is_empty() || stale => file.attr.unwrap_or(attr),
            _ => attr,
        }
    }

    /// `ino` changed on the server in a way the projection does not show (another
    /// client may have written it while this mount did not hold its lock; a
    /// rename, an xattr change, fallocate or a server-side copy changed its
    /// ctime or size): the projection is no answer to `getattr` until the server
    /// has spoken again.
    pub(crate) fn doubt(&self, ino: u64) {
        if let Some(file) = self.lock().files.get_mut(&ino) {
            file.told_at = None;
        }
    }

    /// [`doubt`](Self::doubt) of every file (every cache is being dropped).
    pub(crate) fn doubt_all(&self) {
        for file in self.lock().files.values_mut() {
            file.told_at = None;
        }
    }

    /// The link count of `ino` changed (link, unlink, rename over it): `nlink`
    /// when the server said it, else one fewer than projected. Unlike size and
    /// times, the count does not depend on the writes in flight, so the
    /// projection takes it at once; the ctime changed too, at a time only the
    /// server knows, so once the writes have landed the server is asked again.
    pub(crate) fn links_changed(&self, ino: u64, nlink: Option<u32>) {
        if let Some(file) = self.lock().files.get_mut(&ino) {
            if let Some(attr) = file.attr.as_mut() {
                attr.nlink = nlink.unwrap_or(attr.nlink.saturating_sub(1));
            }
            file.told_at = None;
        }
    }

    /// What `getattr` of `ino` can be answered with without asking the server:
    /// the projection, while changes are in flight (the server's answer would be
    /// older than what the kernel knows), or while the server's last word on them
    /// is younger than `ttl` and no data was written since (whose times would be
    /// guesses). Only for files this mount writes to.
    pub(crate) fn projected(&self, ino: u64, ttl: Duration) -> Option<Attr> {
        let state = self.lock();
        let file = state.files.get(&ino)?;
        let recent = file.told_at.is_some_and(|t| t.elapsed() < ttl);
        let settled = file.in_flight.is_empty();
        if file.writers.is_empty() || (settled && (!recent || file.guessed)) {
            return None;
        }
        file.attr
    }

    /// Kernel handle `fh` of `ino` was released. An error it did not pass on
    /// (its close came before the failure) can only be logged now.
    ///
    /// Waits until nothing sent (or about to be sent) through `fh` is in flight:
    /// the caller forgets the handle next, and an attribute change another
    /// thread registered on it must still find it.
    pub(crate) fn released(&self, ino: u64, fh: u64) {
        let mut state = self.lock();
        if let Some(file) = state.files.get_mut(&ino) {
            file.writers.retain(|&w| w != fh);
            file.killed.retain(|&w| w != fh);
            if let Some(e) = file.errors.remove(&fh) {
                log::warn!("a write to a file closed meanwhile failed: {e}");
            }
        }
        while state
            .files
            .get(&ino)
            .is_some_and(|f| f.in_flight.iter().any(|i| i.fh == fh))
        {
            state = self.wait(state);
        }
        Self::tidy(&mut state, ino);
    }

    /// Whether `fh` writes to `ino` through write-behind.
    pub(crate) fn is_writer(&self, ino: u64, fh: u64) -> bool {
        self.lock()
            .files
            .get(&ino)
            .is_some_and(|f| f.writers.contains(&fh))
    }

    /// Some handle open for writing on `ino`, if any.
    pub(crate) fn any_writer(&self, ino: u64) -> Option<u64> {
        self.lock()
            .files
            .get(&ino)
            .and_then(|f| f.writers.first().copied())
    }

    /// Registers a write of `len` bytes at `offset` through `fh`, once it can no
    /// longer conflict with another handle's write and the mount's data in flight
    /// leaves room for it within `window` bytes.
    pub(crate) fn begin_write(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        len: usize,
        window: usize,
    ) -> Ticket {
        let end = offset.saturating_add(len as u64);
        let mut state = self.lock();
        loop {
            let crowded = state.bytes > 0 && state.bytes + len > window;
            let conflict = state
                .files
                .get(&ino)
                .is_some_and(|f| f.conflicts(fh, offset, end));
            if !crowded && !conflict {
                break;
            }
            state = self.wait(state);
        }
        state.bytes += len;
        let id = state.next_id;
        state.next_id += 1;
        let file = state.files.entry(ino).or_default();
        file.in_flight.push(InFlight {
            id,
            fh,
            start: offset,
            end,
            bytes: len,
        });
        file.guessed = true;
        if let Some(attr) = file.attr.as_mut() {
            attr.size = attr.size.max(end);
            let t = now();
            attr.mtime = t;
            attr.ctime = t;
        }
        Ticket { ino, id }
    }

    /// Registers an attribute change of `ino` through `fh`, once nothing in flight
    /// through another handle remains: `change` applies it to the projected
    /// attributes, which are returned. `None`, and nothing registered, when the
    /// attributes are not known or `change` answers false (it cannot be projected).
    pub(crate) fn begin_setattr(
        &self,
        ino: u64,
        fh: u64,
        change: impl FnOnce(&mut Attr) -> bool,
    ) -> Option<(Ticket, Attr)> {
        let mut state = self.lock();
        loop {
            let file = state.files.get(&ino)?;
            file.attr?;
            // A released handle takes no more changes (see `released`).
            if !file.writers.contains(&fh) {
                return None;
            }
            if !file.conflicts(fh, 0, u64::MAX) {
                break;
            }
            state = self.wait(state);
        }
        let id = state.next_id;
        state.next_id += 1;
        let file = state.files.get_mut(&ino)?;
        let mut projected = file.attr?;
        if !change(&mut projected) {
            return None;
        }
        projected.ctime = now();
        file.attr = Some(projected);
        file.in_flight.push(InFlight {
            id,
            fh,
            start: 0,
            end: u64::MAX,
            bytes: 0,
        });
        Some((Ticket { ino, id }, projected))
    }

    /// The change `ticket` stands for has been answered with `result`. An error
    /// is kept for the next flush or fsync; attributes the server sent replace
    /// the projection when nothing else is in flight.
    pub(crate) fn finish(&self, ticket: Ticket, result: Result<Option<Attr>, Errno>) {
        let mut state = self.lock();
        let mut freed = 0;
        if let Some(file) = state.files.get_mut(&ticket.ino) {
            if let Some(pos) = file.in_flight.iter().position(|f| f.id == ticket.id) {
                freed = file.in_flight.swap_remove(pos).bytes;
            }
            match result {
                Err(e) => {
                    log::debug!("a write-behind change of inode {} failed: {e}", ticket.ino);
                    for &fh in &file.writers {
                        file.errors.entry(fh).or_insert(e);
                    }
                }
                Ok(Some(attr)) if file.in_flight.is_empty() => {
                    file.attr = Some(attr);
                    file.told_at = Some(Instant::now());
                    file.guessed = false;
                }
                Ok(_) => {}
            }
        }
        state.bytes -= freed;
        state.finishes += 1;
        Self::tidy(&mut state, ticket.ino);
        drop(state);
        self.finished.notify_all();
    }

    /// How many changes are in flight, and the bytes of data they carry.
    pub(crate) fn queued(&self) -> (usize, usize) {
        let state = self.lock();
        let changes = state.files.values().map(|f| f.in_flight.len()).sum();
        (changes, state.bytes)
    }

    /// Whether anything is in flight for `ino`.
    pub(crate) fn busy(&self, ino: u64) -> bool {
        self.lock()
            .files
            .get(&ino)
            .is_some_and(|f| !f.in_flight.is_empty())
    }

    /// Waits until nothing is in flight for `ino`.
    pub(crate) fn wait_idle(&self, ino: u64) {
        let mut state = self.lock();
        while state
            .files
            .get(&ino)
            .is_some_and(|f| !f.in_flight.is_empty())
        {
            state = self.wait(state);
        }
    }

    /// Waits until nothing is in flight for `ino`, then hands over (and forgets)
    /// the first error that handle `fh` has not passed on yet.
    pub(crate) fn drain(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        self.wait_idle(ino);
        let mut state = self.lock();
        let error = state.files.get_mut(&ino).and_then(|f| f.errors.remove(&fh));
        Self::tidy(&mut state, ino);
        error.map_or(Ok(()), Err)
    }

    /// The first error handle `fh` of `ino` has not passed on yet, handed over
    /// now, without waiting for what is in flight.
    pub(crate) fn take_error(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        let mut state = self.lock();
        let error = state.files.get_mut(&ino).and_then(|f| f.errors.remove(&fh));
        Self::tidy(&mut state, ino);
        error.map_or(Ok(()), Err)
    }

    /// What close and fsync through `fh` owe the application: for a handle that
    /// writes, the wait for everything in flight and then its error, if any; for
    /// any other, only the wait.
    pub(crate) fn settle(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        if self.is_writer(ino, fh) {
            self.drain(ino, fh)
        } else {
            self.wait_idle(ino);
            Ok(())
        }
    }

    /// Drops the state of an inode nobody writes to any more.
    fn tidy(state: &mut State, ino: u64) {
        if state.files.get(&ino).is_some_and(FileState::unused) {
            state.files.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::FileKind;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    const WINDOW: usize = crate::windows::MIN_WRITE_WINDOW;

    fn attr() -> Attr {
        Attr::blank(FileKind::File)
    }

    /// Waits (at most ten seconds) until `n` threads are blocked in `wb`.
    fn until_waiting(wb: &WriteBehind, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while wb.lock().waiting < n {
            assert!(std::time::Instant::now() < deadline, "nobody waits");
            thread::yield_now();
        }
    }

    #[test]
    fn errors_wait_for_the_next_drain_and_are_told_once() {
        let wb = WriteBehind::new();
        wb.opened_for_writing(5, 1, &attr());
        let a = wb.begin_write(5, 1, 0, 10, WINDOW);
        let b = wb.begin_write(5, 1, 10, 10, WINDOW);
        wb.opened_for_writing(5, 2, &attr());
        wb.finish(a, Err(Errno::ENOSPC));
        wb.finish(b, Err(Errno::EIO));
        // Every writer hears of it, once.
        assert_eq!(wb.drain(5, 1), Err(Errno::ENOSPC));
        assert_eq!(wb.drain(5, 1), Ok(()));
        assert_eq!(wb.drain(5, 2), Err(Errno::ENOSPC));
        assert_eq!(wb.drain(5, 2), Ok(()));
        // A handle opened after the failure does not.
        wb.opened_for_writing(5, 3, &attr());
        assert_eq!(wb.drain(5, 3), Ok(()));
        assert_eq!(wb.lock().bytes, 0);
    }

    #[test]
    fn link_counts_follow_at_once_even_with_writes_in_flight() {
        let wb = WriteBehind::new();
        wb.opened_for_writing(5, 1, &attr());
        let t = wb.begin_write(5, 1, 0, 10, WINDOW);
        wb.links_changed(5, Some(3));
        assert_eq!(
            wb.projected(5, Duration::from_secs(60)).map(|a| a.nlink),
            Some(3)
        );
        wb.links_changed(5, None);
        assert_eq!(
            wb.projected(5, Duration::from_secs(60)).map(|a| a.nlink),
            Some(2)
        );
        wb.finish(t, Ok(None));
        // Settled: the ctime changed at a time only the server knows.
        assert!(wb.projected(5, Duration::from_secs(60)).is_none());
        assert_eq!(wb.drain(5, 1), Ok(()));
    }

    #[test]
    fn writes_grow_the_projected_size() {
        let wb = WriteBehind::new();
        wb.opened_for_writing(5, 1, &attr());
        let t = wb.begin_write(5, 1, 4096, 100, WINDOW);
        let (s, projected) = wb
            .begin_setattr(5, 1, |a| {
                a.perm = 0o600;
                true
            })
            .expect("attributes are known");
        assert_eq!((projected.size, projected.perm), (4196, 0o600));
        wb.finish(t, Ok(None));
        wb.finish(s, Ok(None));
        assert_eq!(wb.drain(5, 1), Ok(()));
    }

    #[test]
    fn getattr_is_answered_from_the_projection_while_it_is_current() {
        let wb = WriteBehind::new();
        // The server's last word is recent for a long time to live, and old for
        // a time to live of zero.
        let (recent, old) = (Duration::from_secs(60), Duration::ZERO);
        assert!(wb.projected(5, recent).is_none());
        wb.opened_for_writing(5, 1, &attr());
        assert_eq!(wb.projected(5, recent).map(|a| a.size), Some(0));
        let t = wb.begin_write(5, 1, 0, 10, WINDOW);
        // Old, but changes are in flight: the server knows less than we do.
        assert_eq!(wb.projected(5, old).map(|a| a.size), Some(10));
        wb.finish(t, Ok(None));
        assert!(
            wb.projected(5, old).is_none(),
            "old and settled: ask the server"
        );
        // Written since the server's answer: the times are guesses.
        wb.told(5, &attr(), wb.mark());
        let t = wb.begin_write(5, 1, 0, 10, WINDOW);
        assert!(wb.projected(5, recent).is_some(), "in flight");
        wb.finish(t, Ok(None));
        assert!(
            wb.projected(5, recent).is_none(),
            "settled with guessed times"
        );
        let mut fresh = attr();
        fresh.size = 10;
        wb.told(5, &fresh, wb.mark());
        assert_eq!(wb.projected(5, recent).map(|a| a.size), Some(10));
        wb.released(5, 1);
        assert!(wb.projected(5, recent).is_none());
    }

    #[test]
    fn unknown_attributes_are_not_projected() {
        let wb = WriteBehind::new();
        assert!(wb.begin_setattr(5, 1, |_| true).is_none());
        assert!(wb.lock().files.is_empty());
        wb.opened_for_writing(5, 1, &attr());
        assert!(wb.begin_setattr(5, 1, |_| false).is_none());
        assert!(wb.lock().files[&5].in_flight.is_empty());
    }

    #[test]
    fn state_goes_with_the_last_writer_once_its_changes_are_answered() {
        let wb = Arc::new(WriteBehind::new());
        wb.opened_for_writing(5, 1, &attr());
        assert!(wb.is_writer(5, 1));
        assert_eq!(wb.any_writer(5), Some(1));
        let t = wb.begin_write(5, 1, 0, 1, WINDOW);
        let wb2 = Arc::clone(&wb);
        let releaser = thread::spawn(move || wb2.released(5, 1));
        until_waiting(&wb, 1);
        // Still in flight through the handle: release waits, the state stays.
        assert!(!releaser.is_finished());
        assert!(wb.lock().files.contains_key(&5));
        // No new change is taken through a handle being released.
        assert!(wb.begin_setattr(5, 1, |_| true).is_none());
        wb.finish(t, Ok(None));
        releaser.join().expect("release ends");
        assert!(wb.lock().files.is_empty());
    }

    #[test]
    fn overlapping_writes_of_another_handle_wait() {
        let wb = Arc::new(WriteBehind::new());
        let first = wb.begin_write(5, 1, 0, 100, WINDOW);
        // Same handle, or no overlap: no wait.
        let same = wb.begin_write(5, 1, 50, 100, WINDOW);
        let apart = wb.begin_write(5, 2, 200, 100, WINDOW);
        let wb2 = Arc::clone(&wb);
        let waiter = thread::spawn(move || wb2.begin_write(5, 2, 90, 20, WINDOW));
        until_waiting(&wb, 1);
        assert!(!waiter.is_finished());
        wb.finish(first, Ok(None));
        // Still overlaps `same`: it cannot have gone on.
        until_waiting(&wb, 1);
        assert!(!waiter.is_finished());
        wb.finish(same, Ok(None));
        let late = waiter.join().expect("the waiter ends");
        wb.finish(late, Ok(None));
        wb.finish(apart, Ok(None));
        assert_eq!(wb.drain(5, 1), Ok(()));
    }

    #[test]
    fn a_full_window_holds_the_next_write_back() {
        let wb = Arc::new(WriteBehind::new());
        let big = wb.begin_write(1, 1, 0, WINDOW, WINDOW);
        let wb2 = Arc::clone(&wb);
        let waiter = thread::spawn(move || wb2.begin_write(2, 2, 0, 1, WINDOW));
        until_waiting(&wb, 1);
        assert!(!waiter.is_finished());
        wb.finish(big, Ok(None));
        let t = waiter.join().expect("the waiter ends");
        wb.finish(t, Ok(None));
        assert_eq!(wb.lock().bytes, 0);
    }

    #[test]
    fn a_wider_window_lets_more_through() {
        let wb = WriteBehind::new();
        let full = wb.begin_write(1, 1, 0, WINDOW, WINDOW);
        // A path with a longer round trip has a wider window: no wait.
        let more = wb.begin_write(2, 2, 0, WINDOW, 2 * WINDOW);
        assert_eq!(wb.lock().bytes, 2 * WINDOW);
        wb.finish(full, Ok(None));
        wb.finish(more, Ok(None));
        // A single write larger than the window is never held back for ever.
        let huge = wb.begin_write(1, 1, 0, 3 * WINDOW, WINDOW);
        wb.finish(huge, Ok(None));
        assert_eq!(wb.lock().bytes, 0);
    }

    #[test]
    fn drain_waits_for_everything_in_flight() {
        let wb = Arc::new(WriteBehind::new());
        wb.opened_for_writing(5, 1, &attr());
        let t = wb.begin_write(5, 1, 0, 1, WINDOW);
        let wb2 = Arc::clone(&wb);
        let drainer = thread::spawn(move || wb2.drain(5, 1));
        until_waiting(&wb, 1);
        assert!(!drainer.is_finished());
        wb.finish(t, Err(Errno::EIO));
        assert_eq!(drainer.join().ok(), Some(Err(Errno::EIO)));
    }
}
