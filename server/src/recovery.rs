//! Locks across a lost connection and a server restart, as NFSv4 keeps them:
//! a client takes back the locks it held, or learns that it lost them.
//!
//! A client names itself in its `Hello` with a random number it keeps from
//! one connection to the next (`Hello::client`; 0 for clients that never
//! reclaim). Then:
//!
//! - **The connection ends** (the client vanished, or gave up on a silent
//!   connection and is reconnecting): its locks are not dropped but *kept*
//!   for that client for one grace period ([`ServerConfig::grace`]), still
//!   held, so nobody else can take them. If the client connects again within
//!   it, its `ReclaimLock`s take them over; whatever it does not reclaim goes
//!   when it says `ReclaimComplete`, or when the period is over.
//! - **The client connects again while its old connection is still open**
//!   (the server has not noticed that it is dead): the old connection is
//!   closed and its locks are kept as above, for the new one to take over.
//! - **The server restarts**: it lost every lock with its process. It starts
//!   in a *grace period* during which clients reclaim the locks they held and
//!   no new lock is granted to anyone (`SetLock` answers EAGAIN, so waiting
//!   lockers wait on), so a lock can only go back to the client that held it.
//!   A reclaim is granted if nothing conflicts (a local process on the
//!   server may have taken the lock meanwhile; then it is lost). After the
//!   grace period, reclaims are refused with ENOLCK, as are reclaims of a lock
//!   that was not kept: a client that was away longer than the grace period
//!   has lost its locks, and must say so to the processes that held them.
//!
//! So the grace period does not hold up a server that no client held locks
//! of, the server records in a file ([`ServerConfig::lock_record`]) the
//! clients that may hold locks; when it starts, the grace period waits only
//! for those, and ends once each of them has reclaimed (said
//! `ReclaimComplete`), or when its time is up. Without a record it lasts its
//! whole length. The record changes when a connection takes its first lock
//! and when a client's locks are gone, not on every lock.
//!
//! [`ServerConfig::grace`]: crate::ServerConfig::grace
//! [`ServerConfig::lock_record`]: crate::ServerConfig::lock_record

use crate::export::{Kept, LockKey, LockTable};
use ferry_common::sync::lock;
use ferry_common::Errno;
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The grace period unless configured otherwise: NFS's.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(90);

/// A client's id, from its `Hello`.
pub(crate) type ClientId = u128;

/// The server's memory of its clients' locks.
#[derive(Debug)]
pub(crate) struct Recovery {
    instance: u64,
    grace: Duration,
    record: Option<PathBuf>,
    state: Mutex<State>,
    serials: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// When the grace period after the start ends; `None` once it has.
    grace_until: Option<Instant>,
    /// The clients the record named at the start that have not yet said
    /// `ReclaimComplete`; `None` when no record told (the grace period then
    /// lasts its whole length).
    awaited: Option<HashSet<ClientId>>,
    clients: HashMap<ClientId, Client>,
    /// The clients written in the record.
    recorded: HashSet<ClientId>,
}

#[derive(Debug, Default)]
struct Client {
    /// The connection serving it now.
    live: Option<Live>,
    /// Locks of its earlier connections, held for it until `until`.
    kept: Vec<Kept>,
    until: Option<Instant>,
}

#[derive(Debug)]
struct Live {
    serial: u64,
    locks: Weak<LockTable>,
    /// Turned true to close the connection: a newer one replaced it.
    replaced: watch::Sender<bool>,
}

/// A connection registered as its client's live one.
#[derive(Debug)]
pub(crate) struct Registration {
    client: ClientId,
    serial: u64,
    /// Turns true when a newer connection of the same client replaces this one.
    pub(crate) replaced: watch::Receiver<bool>,
}

impl Recovery {
    /// The recovery state of a server just started: grace periods of `grace`
    /// (none at all when zero), and the clients that may hold locks read
    /// from `record`, if given.
    pub(crate) fn start(grace: Duration, record: Option<PathBuf>) -> Recovery {
        let awaited = match &record {
            None => None,
            Some(path) => match read_record(path) {
                Ok(ids) => Some(ids),
                Err(e) => {
                    log::warn!(
                        "cannot read the lock record {}: {e}; waiting the whole grace period \
                         for clients to reclaim their locks",
                        path.display()
                    );
                    None
                }
            },
        };
        let in_grace = !grace.is_zero() && awaited.as_ref().is_none_or(|a| !a.is_empty());
        let recorded = if grace.is_zero() {
            HashSet::new()
        } else {
            awaited.clone().unwrap_or_default()
        };
        if in_grace {
            let whom = match &awaited {
                Some(ids) => format!("{} client(s) that held locks", ids.len()),
                None => "clients".to_string(),
            };
            log::info!(
                "grace period of {} s: {whom} may reclaim their locks; no new lock is granted \
                 meanwhile",
                grace.as_secs()
            );
        }
        let recovery = Recovery {
            instance: random_u64(),
            grace,
            record,
            state: Mutex::new(State {
                grace_until: in_grace.then(|| Instant::now() + grace),
                awaited,
                clients: HashMap::new(),
                recorded,
            }),
            serials: AtomicU64::new(1),
        };
        // The record of the last run has been read; this run's starts as
        // what it still waits for.
        let state = lock(&recovery.state);
        recovery.write_record(&state);
        drop(state);
        recovery
    }

    /// This run of the server (see `Welcome::instance`).
    pub(crate) fn instance(&self) -> u64 {
        self.instance
    }

    /// How long the grace period still lasts (zero: not in grace).
    pub(crate) fn grace_left(&self) -> Duration {
        let mut state = lock(&self.state);
        self.grace_check(&mut state)
    }

    /// Whether no new lock may be granted: the server is in its grace period.
    pub(crate) fn in_grace(&self) -> bool {
        !self.grace_left().is_zero()
    }

    /// What is left of the grace period; ends it (and forgets the clients
    /// that did not come back in time) once it is over.
    fn grace_check(&self, state: &mut State) -> Duration {
        let Some(until) = state.grace_until else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let waiting = state.awaited.as_ref().is_none_or(|a| !a.is_empty());
        if now < until && waiting {
            return until - now;
        }
        state.grace_until = None;
        let missing = state.awaited.take().unwrap_or_default();
        log::info!(
            "grace period over{}",
            if missing.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} client(s) did not reclaim their locks in time",
                    missing.len()
                )
            }
        );
        let before = state.recorded.len();
        state
            .recorded
            .retain(|id| !missing.contains(id) || state.clients.contains_key(id));
        if state.recorded.len() != before {
            self.write_record(state);
        }
        Duration::ZERO
    }

    /// A connection of `client` was welcomed with `locks` as its lock table.
    /// An older connection of the client still open is replaced: told to
    /// close, its locks kept for this one to reclaim. `None` for a client
    /// that never reclaims (id 0).
    pub(crate) fn connected(
        &self,
        client: ClientId,
        locks: &Arc<LockTable>,
    ) -> Option<Registration> {
        if client == 0 {
            return None;
        }
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let (replaced, watch_rx) = watch::channel(false);
        let old = {
            let mut state = lock(&self.state);
            let entry = state.clients.entry(client).or_default();
            entry.live.replace(Live {
                serial,
                locks: Arc::downgrade(locks),
                replaced,
            })
        };
        if let Some(old) = old {
            log::info!("a client connected again while its old connection was open; closing that");
            old.replaced.send_replace(true);
            if let Some(table) = old.locks.upgrade() {
                self.keep(client, table.surrender());
            }
        }
        Some(Registration {
            client,
            serial,
            replaced: watch_rx,
        })
    }

    /// The connection of `registration` ended; `locks` is its table. If it
    /// was still its client's live connection, its locks are kept for the
    /// client's next one; if a newer one replaced it, whatever it still holds
    /// goes (the client knows nothing of it).
    pub(crate) fn disconnected(&self, registration: &Registration, locks: &LockTable) {
        let client = registration.client;
        let current = {
            let mut state = lock(&self.state);
            match state.clients.get_mut(&client) {
                Some(c)
                    if c.live
                        .as_ref()
                        .is_some_and(|l| l.serial == registration.serial) =>
                {
                    c.live = None;
                    true
                }
                _ => false,
            }
        };
        let surrendered = locks.surrender();
        if current {
            self.keep(client, surrendered);
            self.forget_if_idle(client);
        } else {
            drop(surrendered);
        }
    }

    /// Keeps `locks` of `client` for one grace period (or lets them go at
    /// once when grace periods are off).
    fn keep(&self, client: ClientId, locks: Vec<Kept>) {
        if locks.is_empty() {
            return;
        }
        if self.grace.is_zero() {
            drop(locks);
            return;
        }
        log::info!(
            "keeping {} lock(s) of a client that lost its connection, for {} s",
            locks.len(),
            self.grace.as_secs()
        );
        let mut state = lock(&self.state);
        let entry = state.clients.entry(client).or_default();
        entry.kept.extend(locks);
        entry.until = Some(Instant::now() + self.grace);
    }

    /// Takes back for a connection of `client` (whose table is `locks`) the
    /// lock of `key`: a kept one is adopted (reached now through `handle`);
    /// `Ok(false)` when none was kept, and then `take` (the caller's way of
    /// taking a lock anew) decides — allowed in the grace period only.
    pub(crate) fn reclaim(
        &self,
        client: ClientId,
        locks: &LockTable,
        key: LockKey,
        handle: u64,
        take: impl FnOnce() -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        if client == 0 {
            return Err(Errno::new(libc::ENOLCK));
        }
        if locks.holds(&key) {
            // Adopted already by an earlier reclaim of another of its ranges.
            return take();
        }
        let kept = {
            let mut state = lock(&self.state);
            state.clients.get_mut(&client).and_then(|c| {
                let at = c.kept.iter().position(|k| k.key() == key)?;
                Some(c.kept.swap_remove(at))
            })
        };
        match kept {
            Some(kept) => {
                locks.adopt(kept, handle);
                take()
            }
            None if self.in_grace() => take(),
            None => Err(Errno::new(libc::ENOLCK)),
        }
    }

    /// `client` has reclaimed what it holds: the rest of what was kept for it
    /// goes, and the grace period no longer waits for it.
    pub(crate) fn reclaim_complete(&self, client: ClientId) {
        if client == 0 {
            return;
        }
        let dropped = {
            let mut state = lock(&self.state);
            if let Some(awaited) = state.awaited.as_mut() {
                awaited.remove(&client);
            }
            self.grace_check(&mut state);
            state
                .clients
                .get_mut(&client)
                .map(|c| {
                    c.until = None;
                    std::mem::take(&mut c.kept)
                })
                .unwrap_or_default()
        };
        if !dropped.is_empty() {
            log::info!(
                "a client did not reclaim {} lock(s) kept for it; they are let go",
                dropped.len()
            );
        }
    }

    /// `client` took a lock: it goes in the record, so that after a restart
    /// the grace period waits for it.
    pub(crate) fn holds_locks(&self, client: ClientId) {
        if client == 0 || self.grace.is_zero() {
            return;
        }
        let mut state = lock(&self.state);
        if state.recorded.insert(client) {
            self.write_record(&state);
        }
    }

    /// Lets go of kept locks whose time is up, and ends the grace period when
    /// it is over; run every second or so.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let (expired, idle): (Vec<Kept>, Vec<ClientId>) = {
            let mut state = lock(&self.state);
            self.grace_check(&mut state);
            let mut expired = Vec::new();
            let mut idle = Vec::new();
            for (id, client) in state.clients.iter_mut() {
                if client.until.is_some_and(|t| t <= now) {
                    client.until = None;
                    expired.append(&mut client.kept);
                }
                if client.live.is_none() && client.kept.is_empty() {
                    idle.push(*id);
                }
            }
            (expired, idle)
        };
        if !expired.is_empty() {
            log::info!(
                "{} lock(s) kept for a client that did not come back are let go",
                expired.len()
            );
        }
        drop(expired);
        for id in idle {
            self.forget_if_idle(id);
        }
    }

    /// Forgets `client` if it has no connection and nothing kept, and takes it
    /// off the record (unless the grace period still waits for it).
    fn forget_if_idle(&self, client: ClientId) {
        let mut state = lock(&self.state);
        let idle = state
            .clients
            .get(&client)
            .is_none_or(|c| c.live.is_none() && c.kept.is_empty());
        if !idle {
            return;
        }
        state.clients.remove(&client);
        let awaited = state.awaited.as_ref().is_some_and(|a| a.contains(&client));
        if !awaited && state.recorded.remove(&client) {
            self.write_record(&state);
        }
    }

    /// Writes the record (if there is one) as `state` has it: a temporary
    /// file renamed over the old one, so that a crash leaves one or the other.
    fn write_record(&self, state: &State) {
        let Some(path) = &self.record else {
            return;
        };
        let mut ids: Vec<&ClientId> = state.recorded.iter().collect();
        ids.sort_unstable();
        let text: String = ids.iter().map(|id| format!("{id:032x}\n")).collect();
        if let Err(e) = write_atomically(path, text.as_bytes()) {
            log::warn!(
                "cannot write the lock record {}: {e}; after a restart, clients may find \
                 their locks lost",
                path.display()
            );
        }
    }
}

/// The client ids in the record at `path`; none if there is no record.
fn read_record(path: &Path) -> io::Result<HashSet<ClientId>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            u128::from_str_radix(l, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a client id: {l:?}"),
                )
            })
        })
        .collect()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A random number from the kernel (a server's run; a client's id).
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if let Err(e) = getrandom::getrandom(&mut bytes) {
        log::warn!("cannot read random bytes: {e}; using the clock");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return nanos ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Descriptors;
    use crate::export::ExportRoot;
    use ferry_common::proto::{FileLock, LockKind, LockType};
    use ferry_common::RelPath;

    const A: ClientId = 0xa;
    const B: ClientId = 0xb;

    fn write(start: u64) -> FileLock {
        FileLock {
            typ: LockType::Write,
            start,
            end: start,
        }
    }

    struct Setup {
        _tmp: tempfile::TempDir,
        export: ExportRoot,
        budget: Arc<Descriptors>,
        record: PathBuf,
    }

    impl Setup {
        fn new() -> Setup {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::create_dir(tmp.path().join("export")).unwrap();
            std::fs::write(tmp.path().join("export/f"), b"x").unwrap();
            let export = ExportRoot::open(&tmp.path().join("export")).unwrap();
            let record = tmp.path().join("record");
            Setup {
                _tmp: tmp,
                export,
                budget: Arc::new(Descriptors::new(100)),
                record,
            }
        }

        fn table(&self) -> Arc<LockTable> {
            Arc::new(LockTable::new(self.budget.account()))
        }

        fn file(&self) -> crate::export::OpenFile {
            let path = RelPath::parse("f").unwrap();
            self.export.open_file(&path, libc::O_RDWR).unwrap().0
        }
    }

    #[test]
    fn locks_of_a_lost_connection_are_kept_for_its_client_only() {
        let s = Setup::new();
        let recovery = Recovery::start(Duration::from_secs(60), Some(s.record.clone()));
        assert!(!recovery.in_grace(), "an empty record: no grace period");
        let file = s.file();
        let first = s.table();
        let reg = recovery.connected(A, &first).unwrap();
        first.set(&file, 1, 1, LockKind::Posix, write(0)).unwrap();
        recovery.holds_locks(A);
        assert_eq!(read_record(&s.record).unwrap(), HashSet::from([A]));
        recovery.disconnected(&reg, &first);
        drop(first);
        // Kept: nobody else gets it.
        let other = s.table();
        let err = other
            .set(&file, 1, 2, LockKind::Posix, write(0))
            .unwrap_err();
        assert_eq!(err.code(), libc::EAGAIN);
        // Another client cannot reclaim what was kept for A.
        let _b = recovery.connected(B, &other).unwrap();
        let key = LockKey::of(&file, LockKind::Posix, 1).unwrap();
        let taken = recovery.reclaim(B, &other, key, 1, || Ok(()));
        assert_eq!(taken.unwrap_err().code(), libc::ENOLCK);
        // A's next connection takes it over.
        let second = s.table();
        let _a = recovery.connected(A, &second).unwrap();
        recovery
            .reclaim(A, &second, key, 4, || {
                second.set(&file, 4, 1, LockKind::Posix, write(0))
            })
            .unwrap();
        assert!(second.holds(&key));
        // A lock that was never kept cannot be reclaimed outside grace.
        let unknown = LockKey::of(&file, LockKind::Posix, 99).unwrap();
        let err = recovery.reclaim(A, &second, unknown, 4, || Ok(()));
        assert_eq!(err.unwrap_err().code(), libc::ENOLCK);
    }

    #[test]
    fn a_new_connection_of_a_client_replaces_its_old_one_and_takes_its_locks() {
        let s = Setup::new();
        let recovery = Recovery::start(Duration::from_secs(60), None);
        let file = s.file();
        let old = s.table();
        let old_reg = recovery.connected(A, &old).unwrap();
        old.set(&file, 1, 1, LockKind::Flock, write(0)).unwrap();
        let new = s.table();
        let new_reg = recovery.connected(A, &new).unwrap();
        assert!(
            *old_reg.replaced.borrow(),
            "the old connection is told to close"
        );
        assert!(old.is_empty());
        // The old connection ending now takes nothing with it.
        recovery.disconnected(&old_reg, &old);
        let key = LockKey::of(&file, LockKind::Flock, 1).unwrap();
        recovery
            .reclaim(A, &new, key, 2, || {
                new.set(&file, 2, 1, LockKind::Flock, write(0))
            })
            .unwrap();
        recovery.disconnected(&new_reg, &new);
    }

    #[test]
    fn after_a_restart_the_grace_period_waits_for_the_recorded_clients() {
        let s = Setup::new();
        std::fs::write(&s.record, format!("{A:032x}\n{B:032x}\n")).unwrap();
        let recovery = Recovery::start(Duration::from_secs(60), Some(s.record.clone()));
        assert!(recovery.in_grace());
        let file = s.file();
        let table = s.table();
        let _reg = recovery.connected(A, &table).unwrap();
        // In grace, a lock nobody kept may be reclaimed anew.
        let key = LockKey::of(&file, LockKind::Posix, 1).unwrap();
        recovery
            .reclaim(A, &table, key, 1, || {
                table.set(&file, 1, 1, LockKind::Posix, write(0))
            })
            .unwrap();
        recovery.reclaim_complete(A);
        assert!(recovery.in_grace(), "B has not reclaimed yet");
        // B comes back holding nothing, says so, and leaves.
        let b_table = s.table();
        let b = recovery.connected(B, &b_table).unwrap();
        recovery.reclaim_complete(B);
        assert!(
            !recovery.in_grace(),
            "everyone is back: the grace period ends"
        );
        recovery.disconnected(&b, &b_table);
        // Afterwards, reclaiming without a kept lock is refused.
        let late = LockKey::of(&file, LockKind::Posix, 2).unwrap();
        let err = recovery.reclaim(A, &table, late, 1, || Ok(()));
        assert_eq!(err.unwrap_err().code(), libc::ENOLCK);
        // B holds nothing any more: it left the record.
        assert_eq!(read_record(&s.record).unwrap(), HashSet::from([A]));
    }

    #[test]
    fn kept_locks_go_when_their_time_is_up_and_grace_periods_can_be_off() {
        let s = Setup::new();
        let recovery = Recovery::start(Duration::from_millis(50), Some(s.record.clone()));
        let file = s.file();
        let table = s.table();
        let reg = recovery.connected(A, &table).unwrap();
        table.set(&file, 1, 1, LockKind::Posix, write(0)).unwrap();
        recovery.holds_locks(A);
        recovery.disconnected(&reg, &table);
        std::thread::sleep(Duration::from_millis(100));
        recovery.sweep();
        let other = s.table();
        other.set(&file, 1, 2, LockKind::Posix, write(0)).unwrap();
        assert!(read_record(&s.record).unwrap().is_empty());

        let off = Recovery::start(Duration::ZERO, None);
        assert!(!off.in_grace());
        let t = s.table();
        let reg = off.connected(A, &t).unwrap();
        t.set(&file, 1, 3, LockKind::Posix, write(5)).unwrap();
        off.disconnected(&reg, &t);
        other.set(&file, 1, 2, LockKind::Posix, write(5)).unwrap();
    }
}
