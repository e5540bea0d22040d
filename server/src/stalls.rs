//! A request stuck in the export holds up only itself.
//!
//! Quick requests run right on their connection's reader thread (see
//! `crate::schedule`: a hand-off to another thread would cost more than the
//! call). But "quick" is a guess: a `stat` that meets a hung mount inside the
//! export, or a disk that stalls, may not return for a minute, or ever. So
//! the reader sets its state down (the socket's read half, the connection's
//! idle clock) in the connection's [`Baton`] before such a call and takes it
//! back after. The server's watchdog looks at every connection's baton each
//! [`TICK`]: one set down for longer than [`STALL`] is taken by a new thread,
//! which goes on reading the connection's requests. The stuck thread finds
//! the baton gone when its call returns, sends its reply, and ends.
//!
//! A connection's thread serves only that connection, so a stuck call never
//! holds up another client; with the baton it does not hold up its own
//! client's other requests for longer than [`STALL`] either.

use crate::connection::{read_requests, Reading, Serving};
use ferry_common::sync::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// How long a request may run on its reader's thread before another thread
/// takes the reading over.
pub(crate) const STALL: Duration = Duration::from_millis(200);
/// How often the watchdog looks.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// Something a thread sets down while it runs a call that may get stuck, so
/// that another thread can carry on with it.
#[derive(Debug)]
pub(crate) struct Baton<T> {
    slot: Mutex<Option<SetDown<T>>>,
    tickets: AtomicU64,
}

#[derive(Debug)]
struct SetDown<T> {
    value: T,
    since: Instant,
    ticket: u64,
}

/// What a thread that set the baton down takes it back with: only the same
/// setting-down, never one made by a thread that took over since.
#[derive(Debug)]
#[must_use = "a baton set down is taken back"]
pub(crate) struct Ticket(u64);

impl<T> Baton<T> {
    pub(crate) fn new() -> Baton<T> {
        Baton {
            slot: Mutex::new(None),
            tickets: AtomicU64::new(1),
        }
    }

    /// Sets `value` down while this thread runs a call.
    pub(crate) fn set_down(&self, value: T) -> Ticket {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        *lock(&self.slot) = Some(SetDown {
            value,
            since: Instant::now(),
            ticket,
        });
        Ticket(ticket)
    }

    /// Takes back what was set down with `ticket`; `None` if another thread
    /// took it over meanwhile.
    pub(crate) fn take_back(&self, ticket: Ticket) -> Option<T> {
        let mut slot = lock(&self.slot);
        match &*slot {
            Some(down) if down.ticket == ticket.0 => slot.take().map(|d| d.value),
            _ => None,
        }
    }

    /// Takes what was set down at least `stall` ago.
    fn take_if_stalled(&self, stall: Duration) -> Option<SetDown<T>> {
        let mut slot = lock(&self.slot);
        match &*slot {
            Some(down) if down.since.elapsed() >= stall => slot.take(),
            _ => None,
        }
    }

    /// Puts back what [`take_if_stalled`](Self::take_if_stalled) took, as it was.
    fn restore(&self, down: SetDown<T>) {
        *lock(&self.slot) = Some(down);
    }
}

/// The connections the watchdog looks after.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    connections: Mutex<Vec<Weak<Serving>>>,
}

impl Stalls {
    /// Looks after `serving` from now on (until it is gone).
    pub(crate) fn watch(&self, serving: &Arc<Serving>) {
        lock(&self.connections).push(Arc::downgrade(serving));
    }

    /// Hands the reading of every connection stuck in a call for [`STALL`]
    /// to a new thread, and forgets connections that are gone.
    pub(crate) fn check(&self) {
        let live: Vec<Arc<Serving>> = {
            let mut connections = lock(&self.connections);
            connections.retain(|w| w.strong_count() > 0);
            connections.iter().filter_map(Weak::upgrade).collect()
        };
        for serving in live {
            if let Some(down) = serving.baton.take_if_stalled(STALL) {
                log::warn!(
                    "a request has run for over {} ms on its connection's reader (stuck in \
                     the export?); another thread reads that connection's requests now",
                    STALL.as_millis()
                );
                carry_on(serving, down);
            }
        }
    }
}

/// Reads `serving`'s requests on a new thread, from the reading set down.
fn carry_on(serving: Arc<Serving>, down: SetDown<Reading>) {
    let (tx, rx) = mpsc::channel::<(Arc<Serving>, Reading)>();
    let spawned = thread::Builder::new()
        .name("ferry-conn".into())
        .spawn(move || {
            if let Ok((serving, reading)) = rx.recv() {
                read_requests(serving, reading);
            }
        });
    match spawned {
        Ok(_) => {
            let _ = tx.send((serving, down.value));
        }
        Err(e) => {
            // The connection waits for its stuck call after all (or the next look).
            log::warn!("cannot start a thread to carry on a stuck connection: {e}");
            serving.baton.restore(down);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baton_goes_back_only_to_whoever_set_it_down() {
        let baton = Baton::new();
        let first = baton.set_down(1);
        assert!(baton.take_if_stalled(Duration::from_secs(60)).is_none());
        assert_eq!(baton.take_back(first), Some(1));
        // Stuck: another thread takes it over, and sets it down itself later.
        let stuck = baton.set_down(2);
        thread::sleep(Duration::from_millis(5));
        let taken = baton.take_if_stalled(Duration::from_millis(1)).unwrap();
        assert_eq!(taken.value, 2);
        let theirs = baton.set_down(3);
        // The stuck thread's call returns: the baton is not its any more.
        assert_eq!(baton.take_back(stuck), None);
        assert_eq!(baton.take_back(theirs), Some(3));
    }
}
