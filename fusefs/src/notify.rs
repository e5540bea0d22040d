//! `KernelNotifier`: the core's [`KernelCache`] requests, carried out through
//! fuser's `Notifier` on a thread of its own.
//!
//! The kernel carries out an invalidation before the notification's write
//! returns, and may wait for a page whose read is still in flight — a read
//! answered by the connection's reader thread, or by a FUSE worker — or for a
//! directory's lock held by a request in flight. So no notification is ever
//! sent from inside a FUSE request or from the reader: they queue here, and one
//! thread sends them in order, then runs whatever was to happen afterwards
//! (granting a lock once its file's pages are gone). The queue is unbounded:
//! what fills it (the server's notices, dropping every cache) is bounded by the
//! names and inodes the kernel holds.

use crate::core::KernelCache;
use ferry_common::sync::lock;
use fuser::{INodeNo, Notifier};
use std::ffi::{OsStr, OsString};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;

/// Work for the notification thread.
enum Job {
    /// Drop the kernel's attributes of an inode, or with `data` its pages too
    /// (or, when the kernel has no such inode, the entries `names`), then run
    /// `then`.
    Inode {
        ino: u64,
        data: bool,
        names: Vec<(u64, OsString)>,
        then: Option<Box<dyn FnOnce() + Send>>,
    },
    /// Drop the kernel's entry `name` in directory `parent`.
    Entry { parent: u64, name: OsString },
}

/// See the module documentation.
#[derive(Default)]
pub struct KernelNotifier {
    /// Set once the session is mounted (the notifier exists only then).
    notifier: Arc<OnceLock<Notifier>>,
    /// The thread's queue, started with the first job.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl KernelNotifier {
    /// Where the mount puts the session's notifier.
    pub fn slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Queues `job`; when there is no kernel to tell (not mounted yet) or no
    /// thread can be started, what was to follow runs at once.
    fn queue(&self, job: Job) {
        if self.notifier.get().is_none() {
            return finish(job);
        }
        let mut jobs = lock(&self.jobs);
        if jobs.is_none() {
            let (tx, rx) = mpsc::channel::<Job>();
            let notifier = self.notifier.clone();
            let started = thread::Builder::new()
                .name("ferry-notify".into())
                .spawn(move || {
                    for job in rx {
                        if let Some(n) = notifier.get() {
                            send(n, &job);
                        }
                        finish(job);
                    }
                });
            match started {
                Ok(_) => *jobs = Some(tx),
                Err(e) => {
                    log::warn!("cannot start the kernel notification thread: {e}");
                    drop(jobs);
                    return finish(job);
                }
            }
        }
        if let Some(tx) = jobs.as_ref() {
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                *jobs = None;
                drop(jobs);
                finish(job);
            }
        }
    }
}

/// Tells the kernel what `job` says.
fn send(notifier: &Notifier, job: &Job) {
    match job {
        Job::Inode {
            ino, data, names, ..
        } => {
            // Offset -1: attributes only; 0 with length 0: every page too.
            let offset = if *data { 0 } else { -1 };
            let result = notifier.inval_inode(INodeNo(*ino), offset, 0);
            log::trace!("invalidated inode {ino}: {result:?}");
            match result {
                Ok(()) => {}
                // The kernel has forgotten the inode (nothing cached), or a
                // lookup is making it from an answer older than the change:
                // its entry goes once in place.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    for (parent, name) in names {
                        if let Err(e) = notifier.inval_entry(INodeNo(*parent), name) {
                            log::debug!("invalidating {name:?} in inode {parent}: {e}");
                        }
                    }
                }
                Err(e) => log::debug!("invalidating inode {ino}: {e}"),
            }
        }
        Job::Entry { parent, name } => {
            log::trace!("invalidating {name:?} in inode {parent}");
            // An unknown directory or name: nothing cached.
            if let Err(e) = notifier.inval_entry(INodeNo(*parent), name) {
                log::debug!("invalidating {name:?} in inode {parent}: {e}");
            }
        }
    }
}

/// Runs what was to follow `job`.
fn finish(job: Job) {
    match job {
        Job::Inode { then, .. } => {
            if let Some(then) = then {
                then()
            }
        }
        Job::Entry { .. } => {}
    }
}

impl KernelCache for KernelNotifier {
    fn forget_entry(&self, parent: u64, name: &OsStr) {
        self.queue(Job::Entry {
            parent,
            name: name.to_os_string(),
        });
    }

    fn forget_inode(&self, ino: u64, data: bool, names: Vec<(u64, OsString)>) {
        self.queue(Job::Inode {
            ino,
            data,
            names,
            then: None,
        });
    }

    fn forget_data_then(&self, ino: u64, then: Box<dyn FnOnce() + Send>) {
        self.queue(Job::Inode {
            ino,
            data: true,
            names: Vec::new(),
            then: Some(then),
        });
    }
}
