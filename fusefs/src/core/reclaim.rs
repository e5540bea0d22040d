//! After a reconnect, taking back the locks this mount held — or, where that
//! cannot be done, failing the open files that held them, so that no process
//! goes on believing it holds a lock that someone else may now hold.
//!
//! The server keeps a client's locks for it when its connection ends, for a
//! grace period; after a restart it holds a grace period during which only
//! the clients that held locks may take them back (see the server's
//! `recovery`). So when a new connection comes up, this mount asks for every
//! lock it holds again (`ReclaimLock`), through the file opened anew on that
//! connection, and then says it is done (`ReclaimComplete`), which lets the
//! server end its grace period early and let go of anything it kept that
//! was not asked for.
//!
//! That happens twice over, so that it is done before anything relies on it:
//!
//! - **at once**, on a thread of its own, for every file holding locks
//!   ([`Core::take_back_locks_on_reconnect`]) — a process that only holds a
//!   lock (a pid file, a database idle between transactions) gets it back
//!   within the grace period without doing anything: while this mount holds
//!   locks, the client connects again as soon as a connection is lost, and
//!   keeps trying, without waiting for a request to need it;
//! - **before the first request through a file** on the new connection
//!   ([`Core::server_handle`] asks [`Core::take_back_locks`]): a read, a write
//!   or a lock through a file whose locks are not back yet waits for them.
//!
//! A lock the server refuses (the grace period is over, another client or a
//! process on the server took it meanwhile, the file is gone or its path
//! names another file now) is *lost*: every later operation through the
//! handles that held it fails with EIO (closing them too), and the process
//! learns of it at its next call. Opening the file again starts afresh.

use super::Core;
use ferry_common::proto::{Cred, LockKind, Op};
use ferry_common::sync::lock;
use ferry_common::Errno;
use std::sync::{Arc, Mutex};
use std::thread;

impl Core {
    /// Asks the client to tell this core of every new connection, and then
    /// takes back, on a thread of its own, the locks held.
    pub(super) fn take_back_locks_on_reconnect(&self) {
        // A mount whose processes only hold locks (and ask nothing) must
        // still be back within the server's grace period.
        let holder = Arc::downgrade(&self.0);
        self.client.keep_connected_while(Arc::new(move || {
            holder
                .upgrade()
                .is_some_and(|shared| !shared.held.locked().is_empty())
        }));
        let core = Arc::downgrade(&self.0);
        let instance = Mutex::new(self.client.welcome().instance);
        self.client.on_reconnect(Box::new(move |epoch, welcome| {
            let restarted = {
                let mut last = lock(&instance);
                let restarted = *last != welcome.instance;
                *last = welcome.instance;
                restarted
            };
            if restarted {
                log::warn!(
                    "the server restarted{}",
                    match welcome.grace_ms {
                        0 => "; it is not in a grace period, so locks held before cannot be \
                              taken back"
                            .to_string(),
                        ms => format!(
                            "; locks held before may be taken back during its grace period \
                             ({:.0} s left)",
                            ms as f64 / 1000.0
                        ),
                    }
                );
            }
            let Some(shared) = core.upgrade() else {
                return;
            };
            let core = Core(shared);
            let spawned = thread::Builder::new()
                .name("ferry-reclaim".into())
                .spawn(move || core.reclaim_all(epoch));
            if let Err(e) = spawned {
                // Each file's locks are still taken back before it is next used.
                log::warn!("cannot start taking back locks after reconnecting: {e}");
            }
        }));
    }

    /// Takes back every lock held, on connection `epoch`, and tells the
    /// server so.
    fn reclaim_all(&self, epoch: u64) {
        let locked = self.held.locked();
        if !locked.is_empty() {
            log::info!(
                "taking back the locks held on {} file(s) after reconnecting",
                locked.len()
            );
        }
        for (_ino, fh) in locked {
            if let Err(e) = self.server_handle(fh) {
                log::debug!("taking back locks: {e}");
            }
        }
        if self.client.current_epoch() == Some(epoch) {
            let nobody = Cred {
                uid: NOBODY,
                gid: NOBODY,
                groups: Vec::new(),
            };
            if let Err(e) = self.client.call_in(epoch, &nobody, Op::ReclaimComplete) {
                log::debug!("telling the server the locks are taken back: {e}");
            }
        }
    }

    /// Before anything is done through kernel handle `fh` of `ino` on
    /// connection `epoch`: takes back the locks held on `ino`, through the
    /// server handle `reached` (the file opened on that connection, and
    /// whether it is still the same file), on behalf of `cred` (who opened
    /// it). Answers the server handle; an error when the file could not be
    /// reached (EIO when that lost its locks).
    pub(super) fn take_back_locks(
        &self,
        ino: u64,
        epoch: u64,
        fh: u64,
        cred: &Cred,
        reached: Result<(u64, bool), Errno>,
    ) -> Result<u64, Errno> {
        let (handle, same_file) = match reached {
            Ok(reached) => reached,
            Err(e) if self.transient(e, epoch) || !self.held.needs_reclaim(ino, epoch) => {
                return Err(e)
            }
            Err(e) => {
                // The file cannot be found again: whatever was held on it is lost.
                let _one = lock(&self.reclaiming);
                for held in self.held.to_reclaim(ino) {
                    self.lost(ino, &held, e);
                }
                return Err(if self.held.is_lost(fh) { Errno::EIO } else { e });
            }
        };
        if !self.held.needs_reclaim(ino, epoch) {
            return Ok(handle);
        }
        let _one = lock(&self.reclaiming);
        if !self.held.needs_reclaim(ino, epoch) {
            return Ok(handle);
        }
        for held in self.held.to_reclaim(ino) {
            if !same_file {
                self.lost(ino, &held, Errno::new(libc::ESTALE));
                continue;
            }
            // An flock belongs to its own open file: it is taken back through
            // that file's handle, which takes it along when it closes.
            let through = match held.fh {
                Some(own) if own != fh => match self.handle_on(own, epoch) {
                    Ok((h, true)) => Ok(h),
                    Ok((_, false)) => Err(Errno::new(libc::ESTALE)),
                    Err(e) => Err(e),
                },
                _ => Ok(handle),
            };
            let asked = through.and_then(|h| {
                let op = Op::ReclaimLock {
                    handle: h,
                    owner: held.owner,
                    kind: held.kind,
                    lock: held.lock,
                };
                self.ask_now(Some(epoch), cred, op).map(|_| h)
            });
            match asked {
                Ok(_) => {}
                // The connection went again: the next one takes them back.
                Err(e) if self.transient(e, epoch) => return Err(e),
                Err(e) => {
                    self.lost(ino, &held, e);
                    if held.kind == LockKind::Posix {
                        // Whatever of the owner's ranges was taken back goes too.
                        let release = Op::ReleaseLocks {
                            handle,
                            owner: held.owner,
                        };
                        self.client.submit_in(epoch, cred, release, |_| {});
                    }
                }
            }
        }
        self.held.settle(ino, epoch);
        // Another client may have written the file while this one was away.
        self.writes.doubt(ino);
        self.attrs.drop_ino(ino);
        self.kernel.forget_data_then(ino, Box::new(|| {}));
        Ok(handle)
    }

    /// Marks `held`, a lock of `ino`, lost because of `why`.
    fn lost(&self, ino: u64, held: &crate::locks::ToReclaim, why: Errno) {
        let handles = self.held.lose(ino, held);
        if handles > 0 {
            let path = lock(&self.inodes)
                .path(ino)
                .map_or_else(|| format!("inode {ino}"), |p| p.to_string());
            log::warn!(
                "a lock on {path} could not be taken back after reconnecting ({why}); \
                 {handles} open file(s) that held it fail with EIO from now on"
            );
        }
    }

    /// Whether `e`, met on connection `epoch`, says nothing about the lock
    /// (the connection went, or the answer did not come in time): then it
    /// is asked for again on the next connection.
    fn transient(&self, e: Errno, epoch: u64) -> bool {
        e == Errno::ETIMEDOUT || self.client.current_epoch() != Some(epoch)
    }
}

/// The id a request that acts as nobody claims.
const NOBODY: u32 = 65534;
