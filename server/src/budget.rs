//! What one connection may take of the server's shared resources, and what all
//! of them together may: descriptors (open files and lock descriptors) and
//! memory for requests and replies in flight.
//!
//! Both budgets have the same shape, so that one greedy client meets its
//! limit before the server meets its own and every other client keeps its
//! share:
//!
//! - **Descriptors.** A connection holds at most [`Descriptors::per_connection`]
//!   (EMFILE beyond, ENOLCK for a lock), and all together at most
//!   [`Descriptors::total`], set well below the process's `RLIMIT_NOFILE` with
//!   room left for sockets and the descriptors requests use for a moment
//!   while they resolve paths. A connection that already holds
//!   [`SMALL_HOLDING`] may grow only while a quarter of the total is still
//!   free: that quarter is kept for connections holding little, so a few
//!   greedy ones cannot take the descriptors a well-behaved one needs.
//! - **Memory.** Each request is charged its frame and the reply it will make
//!   (see `connection::cost_kib`) until the reply is written. A connection has
//!   [`OWN_KIB`] of its own (room for a listing's reply and more), and anything beyond
//!   comes from a pool shared by all connections ([`ServerConfig::reply_memory`]);
//!   a connection also never has more than [`CONNECTION_CAP_KIB`] in flight.
//!   A connection that cannot get its share stops being read: a client that
//!   sends requests and does not take the replies stalls itself, and the
//!   server's memory stays bounded by what the pool and the connections' own
//!   shares add up to.
//!
//! [`ServerConfig::reply_memory`]: crate::ServerConfig::reply_memory

use ferry_common::Errno;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// The most descriptors one connection holds, open files and lock descriptors
/// together, however large the server's budget.
pub(crate) const MAX_PER_CONNECTION: usize = 16_384;
/// A connection holding at least this many descriptors grows only while the
/// reserve for connections holding little is untouched.
pub(crate) const SMALL_HOLDING: usize = 64;
/// Descriptors the server keeps for itself per connection (its socket, and
/// its thread's event queue and waker) and per request running at once (a path
/// being resolved holds a few for a moment).
const OVERHEAD_PER_CONNECTION: usize = 6;
const OVERHEAD_FIXED: usize = 2048;

/// A connection's own share of reply memory, in KiB: the costliest request a
/// well-behaved client sends (a listing, whose reply may carry 3 MiB of
/// entries) and some small ones, so that every connection makes progress
/// however the shared pool is used.
pub(crate) const OWN_KIB: u32 = 3200;
/// The most one connection has in flight, in KiB: what ferry's client keeps
/// in flight itself at most (a write window and the kernel's readahead, 32 MiB
/// each on a slow path), so that a client's own streams never make the reader
/// stop and hold up its other requests.
pub(crate) const CONNECTION_CAP_KIB: u32 = 64 * 1024;
/// The smallest shared pool: room for the costliest request, a 4 MiB frame
/// with a 1 MiB reply.
const MIN_POOL_KIB: usize = 8 * 1024;
/// The pool shared by all connections unless configured otherwise.
pub const DEFAULT_REPLY_MEMORY: usize = 256 << 20;

/// The server's descriptor budget.
#[derive(Debug)]
pub(crate) struct Descriptors {
    used: AtomicUsize,
    total: usize,
    per_connection: usize,
    /// What connections holding [`SMALL_HOLDING`] or more may reach together.
    greedy_limit: usize,
}

impl Descriptors {
    /// A budget of `total` descriptors.
    pub(crate) fn new(total: usize) -> Descriptors {
        let total = total.max(1);
        let greedy_limit = total - total / 4;
        Descriptors {
            used: AtomicUsize::new(0),
            total,
            per_connection: MAX_PER_CONNECTION.min(greedy_limit).max(1),
            greedy_limit,
        }
    }

    /// The budget for a process allowed `limit` open descriptors, serving at
    /// most `connections` clients: what is left once the server's own needs
    /// are set aside, and at least half the limit.
    pub(crate) fn for_limit(limit: u64, connections: usize) -> Descriptors {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let overhead = OVERHEAD_FIXED.saturating_add(connections * OVERHEAD_PER_CONNECTION);
        Descriptors::new(limit.saturating_sub(overhead).max(limit / 2))
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    pub(crate) fn per_connection(&self) -> usize {
        self.per_connection
    }

    /// How many are held now, over all connections.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A connection's account against this budget.
    pub(crate) fn account(self: &Arc<Self>) -> Arc<DescriptorAccount> {
        Arc::new(DescriptorAccount {
            server: Arc::clone(self),
            used: AtomicUsize::new(0),
        })
    }
}

/// One connection's descriptors.
#[derive(Debug)]
pub(crate) struct DescriptorAccount {
    server: Arc<Descriptors>,
    used: AtomicUsize,
}

impl DescriptorAccount {
    /// A descriptor's place in the budget, or EMFILE when this connection (or,
    /// for one holding much, the server) has none left. Taken before the
    /// descriptor is opened; given back when the [`Descriptor`] is dropped.
    pub(crate) fn take(self: &Arc<Self>) -> Result<Descriptor, Errno> {
        let own = self.used.fetch_add(1, Ordering::Relaxed);
        let limit = if own >= SMALL_HOLDING {
            self.server.greedy_limit
        } else {
            self.server.total
        };
        let all = self.server.used.fetch_add(1, Ordering::Relaxed);
        if own >= self.server.per_connection || all >= limit {
            self.used.fetch_sub(1, Ordering::Relaxed);
            self.server.used.fetch_sub(1, Ordering::Relaxed);
            return Err(Errno::new(libc::EMFILE));
        }
        Ok(Descriptor {
            account: Arc::clone(self),
        })
    }

    /// A place for a descriptor that is open already and must stay so (a lock
    /// taken over from an earlier connection of the same client): counted,
    /// never refused.
    pub(crate) fn take_anyway(self: &Arc<Self>) -> Descriptor {
        self.used.fetch_add(1, Ordering::Relaxed);
        self.server.used.fetch_add(1, Ordering::Relaxed);
        Descriptor {
            account: Arc::clone(self),
        }
    }

    /// How many this connection holds.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// One descriptor's place in the budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Descriptor {
    account: Arc<DescriptorAccount>,
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        self.account.used.fetch_sub(1, Ordering::Relaxed);
        self.account.server.used.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The reply memory all connections share, in KiB.
#[derive(Debug)]
pub(crate) struct ReplyMemory {
    shared: Arc<Semaphore>,
    /// A connection ended since the heap was last trimmed.
    returned: AtomicBool,
}

impl ReplyMemory {
    /// A pool of `bytes` (at least [`MIN_POOL_KIB`], so that the largest
    /// request — a full frame and a full read — can always be granted).
    pub(crate) fn new(bytes: usize) -> ReplyMemory {
        let kib = (bytes / 1024).max(MIN_POOL_KIB);
        ReplyMemory {
            shared: Arc::new(Semaphore::new(kib.min(Semaphore::MAX_PERMITS))),
            returned: AtomicBool::new(false),
        }
    }

    /// A connection ended: what it had in flight is free again.
    pub(crate) fn returned(&self) {
        self.returned.store(true, Ordering::Relaxed);
    }

    /// Gives the memory freed by connections that ended back to the system
    /// (the allocator keeps freed memory for reuse otherwise, and a burst of
    /// greedy clients would leave the server large for good). Called now and
    /// then, off every connection's thread.
    pub(crate) fn trim_if_returned(&self) {
        if self.returned.swap(false, Ordering::Relaxed) {
            crate::sys::trim_heap();
        }
    }

    /// KiB of the pool not in use.
    #[cfg(test)]
    pub(crate) fn available_kib(&self) -> usize {
        self.shared.available_permits()
    }

    /// A connection's share: its own KiB, the pool beyond them, and its cap.
    pub(crate) fn connection(&self) -> ConnectionMemory {
        ConnectionMemory {
            cap: Arc::new(Semaphore::new(CONNECTION_CAP_KIB as usize)),
            own: Arc::new(Semaphore::new(OWN_KIB as usize)),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// One connection's reply memory.
#[derive(Debug)]
pub(crate) struct ConnectionMemory {
    cap: Arc<Semaphore>,
    own: Arc<Semaphore>,
    shared: Arc<Semaphore>,
}

/// KiB held for one request until its reply is written (dropped).
#[derive(Debug)]
pub(crate) struct MemoryShare {
    _cap: OwnedSemaphorePermit,
    _from: OwnedSemaphorePermit,
}

impl ConnectionMemory {
    /// `kib` for one request (at most [`CONNECTION_CAP_KIB`]): from the
    /// connection's own share if it has them, else from the shared pool,
    /// waiting until there is room in either. Waiting on the pool alone would
    /// let greedy peers that hold it stall this connection for good, its own
    /// share free again.
    pub(crate) async fn acquire(&self, kib: u32) -> Result<MemoryShare, AcquireError> {
        let kib = kib.min(CONNECTION_CAP_KIB);
        let cap = Arc::clone(&self.cap).acquire_many_owned(kib).await?;
        let from = match Arc::clone(&self.own).try_acquire_many_owned(kib) {
            Ok(own) => own,
            // A request larger than the own share can only come from the pool.
            Err(_) if kib > OWN_KIB => Arc::clone(&self.shared).acquire_many_owned(kib).await?,
            // Whichever frees first; the other wait is dropped, holding nothing.
            Err(_) => tokio::select! {
                own = Arc::clone(&self.own).acquire_many_owned(kib) => own?,
                shared = Arc::clone(&self.shared).acquire_many_owned(kib) => shared?,
            },
        };
        Ok(MemoryShare {
            _cap: cap,
            _from: from,
        })
    }

    /// Whether nothing of this connection is in flight.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        self.cap.available_permits() == CONNECTION_CAP_KIB as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_greedy_connection_meets_its_limit_and_leaves_the_reserve_to_others() {
        let server = Arc::new(Descriptors::new(400));
        assert_eq!(server.per_connection(), 300);
        let greedy = server.account();
        let mut held = Vec::new();
        while let Ok(d) = greedy.take() {
            held.push(d);
        }
        assert_eq!(held.len(), 300);
        assert_eq!(greedy.take().unwrap_err().code(), libc::EMFILE);
        // Another greedy one gets its small holding from the reserve, no more.
        let second = server.account();
        let mut more = Vec::new();
        while let Ok(d) = second.take() {
            more.push(d);
        }
        assert_eq!(more.len(), SMALL_HOLDING);
        // A connection holding little still gets descriptors.
        let modest = server.account();
        let mine: Vec<Descriptor> = (0..30).map(|_| modest.take().unwrap()).collect();
        assert_eq!(server.used(), 300 + SMALL_HOLDING + 30);
        // Everything comes back when dropped.
        drop((held, more, mine));
        assert_eq!(server.used(), 0);
        assert_eq!(greedy.used(), 0);
        assert!(greedy.take().is_ok());
    }

    #[test]
    fn the_budget_leaves_the_server_room_below_its_limit() {
        let budget = Descriptors::for_limit(20_000, 256);
        assert_eq!(budget.total(), 20_000 - 2048 - 256 * 6);
        assert!(budget.per_connection() < budget.total());
        // A small limit still leaves clients half of it.
        assert_eq!(Descriptors::for_limit(1024, 256).total(), 512);
        assert_eq!(
            Descriptors::for_limit(1 << 20, 256).per_connection(),
            MAX_PER_CONNECTION
        );
    }

    #[test]
    fn memory_beyond_a_connections_own_share_comes_from_the_pool() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pool = ReplyMemory::new(MIN_POOL_KIB * 1024);
            let total = pool.available_kib();
            let greedy = pool.connection();
            // Its own share first, then the pool until it is empty.
            let mut shares = vec![greedy.acquire(OWN_KIB).await.unwrap()];
            assert_eq!(pool.available_kib(), total);
            for _ in 0..(total / 1025) {
                shares.push(greedy.acquire(1025).await.unwrap());
            }
            let left = pool.available_kib();
            assert!(left < 1025);
            // The next request of the greedy one waits...
            let waits =
                tokio::time::timeout(std::time::Duration::from_millis(50), greedy.acquire(1025))
                    .await;
            assert!(waits.is_err());
            // ...while another connection still gets its own share at once.
            let other = pool.connection();
            let mine = other.acquire(1025).await.unwrap();
            drop(mine);
            assert!(other.idle());
            drop(shares);
            assert_eq!(pool.available_kib(), total);
            assert!(greedy.idle());
        });
    }

    #[test]
    fn a_connection_waiting_on_an_empty_pool_is_served_from_its_own_share_once_free() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pool = ReplyMemory::new(MIN_POOL_KIB * 1024);
            // Greedy peers hold the whole pool, and never give it back.
            let hog = pool.connection();
            let mut held = vec![hog.acquire(OWN_KIB).await.unwrap()];
            while pool.available_kib() >= 1025 {
                held.push(hog.acquire(1025).await.unwrap());
            }
            // A well-behaved connection: its own share in use, the next
            // request waiting (the pool is empty)...
            let modest = Arc::new(pool.connection());
            let first = modest.acquire(OWN_KIB).await.unwrap();
            let waiter = Arc::clone(&modest);
            let next = tokio::spawn(async move { waiter.acquire(1025).await.map(drop) });
            tokio::task::yield_now().await;
            assert!(!next.is_finished());
            // ...is served once the first reply is written.
            drop(first);
            let served = tokio::time::timeout(std::time::Duration::from_secs(5), next).await;
            assert!(matches!(served, Ok(Ok(Ok(())))), "{served:?}");
            drop(held);
        });
    }
}
