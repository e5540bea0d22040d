//! The listings one connection has under way: a [`DirStream`] each, numbered
//! by the cursor the client goes on with (see `Op::List`).
//!
//! Bounded in number and in time, so that a client cannot hold the server's
//! descriptors by starting listings it never finishes: a listing ends when its
//! last entry is sent, when it has not been used for [`LISTING_IDLE`], or when
//! the connection goes (the table goes with the session); starting one more
//! than [`MAX_LISTINGS`] ends the one used longest ago. A client that goes on
//! with an ended listing gets EBADF, as for a closed handle. Each listing's
//! directory descriptor counts against the connection's descriptor budget
//! (see `crate::budget`), as its open files do. Cursors are never
//! reused on a connection, and only the user who started a listing may go on
//! with it (the directory was opened with that user's permissions).

use crate::budget::Descriptor;
use crate::export::DirStream;
use crate::identity::Identity;
use ferry_common::sync::lock;
use ferry_common::Errno;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Listings one connection may have under way at once.
pub(crate) const MAX_LISTINGS: usize = 64;
/// How long a listing may wait for the client to go on with it.
pub(crate) const LISTING_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct Listings {
    // A std mutex: held for a map operation only, never while a directory is read.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last: u64,
    open: HashMap<u64, Listing>,
}

#[derive(Debug)]
struct Listing {
    /// `None` while a request reads from it.
    stream: Option<DirStream>,
    owner: Identity,
    used: Instant,
    /// The stream's place in the descriptor budget.
    _place: Descriptor,
}

impl Inner {
    /// Ends listings idle for too long, then the oldest while there is no room
    /// for one more.
    fn make_room(&mut self, now: Instant) {
        self.open
            .retain(|_, l| now.duration_since(l.used) < LISTING_IDLE);
        while self.open.len() >= MAX_LISTINGS {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(cursor, l)| (l.used, **cursor))
                .map(|(cursor, _)| *cursor);
            match oldest {
                Some(cursor) => {
                    self.open.remove(&cursor);
                }
                None => break,
            }
        }
    }
}

impl Listings {
    pub(crate) fn new() -> Listings {
        Listings::default()
    }

    /// Keeps `stream`, a listing `owner` started and that has more to send,
    /// with its `place` in the descriptor budget, and returns the cursor to go
    /// on with it (never 0).
    pub(crate) fn keep(&self, stream: DirStream, place: Descriptor, owner: &Identity) -> u64 {
        self.keep_at(stream, place, owner, Instant::now())
    }

    fn keep_at(&self, stream: DirStream, place: Descriptor, owner: &Identity, now: Instant) -> u64 {
        let mut inner = lock(&self.inner);
        inner.make_room(now);
        inner.last += 1;
        let cursor = inner.last;
        inner.open.insert(
            cursor,
            Listing {
                stream: Some(stream),
                owner: owner.clone(),
                used: now,
                _place: place,
            },
        );
        cursor
    }

    /// The stream of listing `cursor`, for `who` to read on with; given back
    /// with [`put_back`](Self::put_back) if it has more, or dropped if not.
    /// EBADF for a listing that ended, is being read by another request, or
    /// was started by someone else.
    pub(crate) fn take(&self, cursor: u64, who: &Identity) -> Result<DirStream, Errno> {
        self.take_at(cursor, who, Instant::now())
    }

    fn take_at(&self, cursor: u64, who: &Identity, now: Instant) -> Result<DirStream, Errno> {
        let mut inner = lock(&self.inner);
        let listing = inner.open.get_mut(&cursor).ok_or(Errno::EBADF)?;
        if listing.owner != *who {
            return Err(Errno::EBADF);
        }
        if now.duration_since(listing.used) >= LISTING_IDLE {
            let expired = inner.open.remove(&cursor);
            drop(inner);
            drop(expired);
            return Err(Errno::EBADF);
        }
        let stream = listing.stream.take().ok_or(Errno::EBADF)?;
        listing.used = now;
        Ok(stream)
    }

    /// Gives back the stream of listing `cursor`, which has more to send.
    pub(crate) fn put_back(&self, cursor: u64, stream: DirStream) {
        let mut inner = lock(&self.inner);
        if let Some(listing) = inner.open.get_mut(&cursor) {
            listing.stream = Some(stream);
            listing.used = Instant::now();
        }
    }

    /// Listing `cursor` is over (sent in full, or failed).
    pub(crate) fn end(&self, cursor: u64) {
        // Dropped outside the lock: closedir may take a moment.
        let ended = lock(&self.inner).open.remove(&cursor);
        drop(ended);
    }

    /// How many listings are under way.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.inner).open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Descriptors;
    use crate::export::ExportRoot;
    use ferry_common::RelPath;
    use std::sync::Arc;

    fn user(uid: u32) -> Identity {
        Identity {
            uid,
            gid: uid,
            groups: Vec::new(),
            squashed: false,
        }
    }

    #[test]
    fn listings_are_bounded_in_number_and_idle_time_and_kept_for_their_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let export = ExportRoot::open(tmp.path()).unwrap();
        let stream = || export.open_dir_stream(&RelPath::root()).unwrap();
        let account = Arc::new(Descriptors::new(1000)).account();
        let place = || account.take().unwrap();
        let (alice, bob) = (user(1000), user(1001));
        let listings = Listings::new();
        let start = Instant::now();
        let first = listings.keep_at(stream(), place(), &alice, start);
        assert_ne!(first, 0);
        // Only its owner goes on with it, and not twice at once.
        assert_eq!(
            listings.take_at(first, &bob, start).err(),
            Some(Errno::EBADF)
        );
        let taken = listings.take_at(first, &alice, start).unwrap();
        assert_eq!(
            listings.take_at(first, &alice, start).err(),
            Some(Errno::EBADF)
        );
        listings.put_back(first, taken);
        // One more than the limit ends the one used longest ago.
        let later = |i: u32| start + Duration::from_millis(u64::from(i) + 1);
        let others: Vec<u64> = (0..MAX_LISTINGS as u32)
            .map(|i| listings.keep_at(stream(), place(), &alice, later(i)))
            .collect();
        assert_eq!(listings.len(), MAX_LISTINGS);
        assert_eq!(
            listings.take_at(first, &alice, later(100)).err(),
            Some(Errno::EBADF)
        );
        let mut cursors = others.clone();
        cursors.sort_unstable();
        cursors.dedup();
        assert_eq!(cursors.len(), MAX_LISTINGS, "cursors are never reused");
        assert!(!cursors.contains(&first));
        // A listing left idle too long is over.
        let idle = later(MAX_LISTINGS as u32) + LISTING_IDLE;
        assert_eq!(
            listings.take_at(others[5], &alice, idle).err(),
            Some(Errno::EBADF)
        );
        assert_eq!(listings.len(), MAX_LISTINGS - 1);
        // Starting another drops every idle one.
        listings.keep_at(stream(), place(), &bob, idle);
        assert_eq!(listings.len(), 1);
        listings.end(others[0]);
        let survivor = *lock(&listings.inner).open.keys().next().unwrap();
        listings.end(survivor);
        assert_eq!(listings.len(), 0);
        // Every listing's place in the budget came back with it.
        assert_eq!(account.used(), 0);
    }
}
