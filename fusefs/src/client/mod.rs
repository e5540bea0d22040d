//! `RemoteClient`: one connection to a ferry server, shared by every caller.
//!
//! Requests are numbered and written as soon as they are submitted; a reader
//! matches each response to its request by id and completes it, in whatever
//! order the server answers. So many requests are in flight at once and nobody
//! waits for anybody else's slow request.
//!
//! A request completes either through a callback ([`RemoteClient::submit`], used by
//! the FUSE adapter so that a kernel request is answered straight from the reader
//! without tying up a FUSE worker) or by blocking ([`RemoteClient::call`]).
//! Every request is made on behalf of someone: its [`Cred`], which the server
//! checks its permissions by.
//!
//! ```text
//!  callers ── write frame (on the caller's thread, under the write half's lock) ──► socket
//!  socket ──► reader task: decode, complete the request's callback
//!  watchdog task: deadlines (ETIMEDOUT), pings, a silent server's connection reset
//!  reconnect task: one attempt at a time, when a caller needs a connection
//! ```
//!
//! The connection runs on a small tokio runtime of the client's own, as TLS
//! (rustls) keeps one state for both directions: a writer waiting for room in
//! the socket must not hold what the reader needs to decrypt. A caller writes
//! its frame itself, with `block_on` on the write half (no thread hand-off
//! when the socket has room), so a request is on its way when `submit`
//! returns, and requests leave in the order they were submitted.
//!
//! **Every call is bounded.** A request fails with ETIMEDOUT at its deadline
//! (`timeout`; fsync and the like ten times that), whether it is waiting for
//! the socket, for room to write or for its answer. A server that stops
//! answering (frozen, or the network silently gone) is noticed by the
//! watchdog: when nothing has been heard for a while although something was
//! asked (a ping, if nothing else), the connection is reset and every request
//! on it fails with EIO.
//!
//! **Reconnecting happens off the request path.** When there is no connection
//! a caller wakes the reconnect task and waits for its attempt for at most
//! [`RECONNECT_GRACE`] (and never past its own deadline); attempts are one at
//! a time, at most one per [`RECONNECT_INTERVAL`] after a failure, and each is
//! bounded, so a server whose kernel accepts connections but which never
//! answers (a frozen process) holds up nobody.
//!
//! Each connection is an *epoch*: server handles belong to the epoch that
//! opened them, so a request carrying a handle is sent with
//! [`RemoteClient::submit_in`] and fails (rather than reaching whatever file
//! that number names on a new connection) when the epoch has changed; its
//! owner re-opens the file by path. The client names itself to the server
//! with the same random id on every connection, and whoever registered with
//! [`RemoteClient::on_reconnect`] hears of each new epoch, to take back the
//! locks it held.
//!
//! A server may also send notices, unasked (see `ferry_common::proto::Notice`).
//! The reader hands each to the one handler registered with
//! [`RemoteClient::on_event`], in the order they arrive among the answers, and
//! the handler also hears when a connection is established and when it breaks
//! ([`ConnEvent`]): what a notice promises holds for its connection only.

mod connect;
mod known_servers;
pub mod listing;
pub mod tls;

pub use connect::ConnectError;
pub use known_servers::{Known, KnownServers};
pub use tls::{ClientFlags, ConnectOptions, Security, TlsOptions, Trust};

use crate::stats::Stats;
use connect::{Connector, Transport};
use ferry_common::frame::{self, ResponseFrame};
use ferry_common::proto::{Cred, DirEntry, Notice, Op, Reply, Request, ServerMessage, Welcome};
use ferry_common::sync::lock;
use ferry_common::Errno;
use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;
use tokio::time::timeout_at;

/// How long an ordinary request may take before it fails with ETIMEDOUT.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// fsync (and fallocate and a server-side copy, which also wait for the disk)
/// may legitimately take long on a busy disk: they get this many times the
/// ordinary timeout.
const FSYNC_TIMEOUT_FACTOR: u32 = 10;
/// The first connection (at mount time) must be made within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed attempt, the next comes no sooner than this; requests in
/// between fail at once with EIO.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a request waits for a reconnection attempt under way: long
/// enough for a handshake with a live server, short enough that calls the
/// kernel runs one after another (in one directory) stay within `timeout`.
pub const RECONNECT_GRACE: Duration = Duration::from_millis(500);
/// How long a reconnection attempt waits for TCP to connect: a lost SYN is
/// sent again by a new attempt rather than by the kernel's slower backoff.
const RECONNECT_TCP: Duration = Duration::from_secs(1);
/// How often deadlines and the server's silence are checked.
const TICK: Duration = Duration::from_millis(100);

/// What a caller gets back: the reply or the errno to hand on.
pub type OpResult = Result<Reply, Errno>;
type Callback = Box<dyn FnOnce(OpResult) + Send>;
/// Told of every new connection after the first: its epoch, and what the
/// server said in its handshake. Runs on the client's runtime: it must not
/// block.
pub type ReconnectHook = Box<dyn Fn(u64, &Welcome) + Send + Sync>;

/// Whether the client must connect again at once when its connection is
/// lost, rather than when a caller next needs it: while it holds something
/// the server keeps for it only for a while (locks, to be taken back within
/// the server's grace period). Runs on the client's runtime, holding none of
/// the client's locks: it must not block.
pub type KeepConnected = Arc<dyn Fn() -> bool + Send + Sync>;

/// What happens to the connection, for the handler registered with
/// [`RemoteClient::on_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// Connection `epoch` is up (the first one, or a reconnect).
    Established(u64),
    /// The server sent a notice on connection `epoch`.
    Notice(u64, Notice),
    /// Connection `epoch` broke (or was shut down); its requests failed.
    Lost(u64),
}

type EventHandler = Arc<dyn Fn(ConnEvent) + Send + Sync>;

/// How often a quiet server is pinged, and after how much silence it is
/// given up, for a client whose requests time out after `timeout`. A server
/// that has said nothing for half the timeout (1 to 30 s) although something
/// was asked of it — if nothing else, a ping, sent after a quarter of that
/// without a word — is gone: a live one answers a ping at once, even while it
/// works on a slow request. Giving up before the timeout keeps calls the
/// kernel makes one after another (in one directory) within it, too.
fn liveness(timeout: Duration) -> (Duration, Duration) {
    let dead_after = (timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    (dead_after / 4, dead_after)
}

struct Waiter {
    sent_at: Instant,
    deadline: Instant,
    epoch: u64,
    op: &'static str,
    done: Callback,
}

/// The state of the connection, as callers and tasks see it.
#[derive(Clone)]
enum Link {
    Up(Arc<Conn>),
    Down {
        /// The reconnect task is trying now.
        attempting: bool,
        /// When the last attempt failed.
        failed_at: Option<Instant>,
    },
    /// [`RemoteClient::shutdown`]: no more connections.
    Closed,
}

/// One live connection.
struct Conn {
    epoch: u64,
    /// Callers take turns writing whole frames; the lock is async, so waiting
    /// for it is bounded by the waiter's deadline, and only a frame's writer
    /// holds it.
    writer: tokio::sync::Mutex<WriteHalf<Transport>>,
    /// Turns true when the connection is given up: writers stop waiting.
    closed: watch::Sender<bool>,
    silence: Mutex<Silence>,
    reader: Mutex<Option<AbortHandle>>,
}

/// What the watchdog needs to tell a silent server from a quiet one.
struct Silence {
    /// When the server was last heard from (or the connection made).
    heard: Instant,
    /// Requests sent and not answered yet (timed-out ones included: the
    /// server answers every request), pings too.
    outstanding: u64,
    /// When the last ping was sent.
    pinged: Option<Instant>,
}

impl Conn {
    fn sent(&self) {
        lock(&self.silence).outstanding += 1;
    }

    /// A request that was registered but never written.
    fn unsent(&self) {
        let mut s = lock(&self.silence);
        s.outstanding = s.outstanding.saturating_sub(1);
    }

    fn heard(&self) {
        let mut s = lock(&self.silence);
        s.heard = Instant::now();
        s.outstanding = s.outstanding.saturating_sub(1);
    }

    /// The server sent something unasked (a notice): alive, and nothing it
    /// was asked is answered by it.
    fn heard_unasked(&self) {
        lock(&self.silence).heard = Instant::now();
    }

    fn close(&self) {
        self.closed.send_replace(true);
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
    }
}

static RUNTIMES: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Which client runtime this thread belongs to (0: none).
    static RUNTIME_OF: Cell<u64> = const { Cell::new(0) };
}

struct Inner {
    addr: String,
    /// How long a request may wait for its answer.
    timeout: Duration,
    welcome: Welcome,
    /// This client's runtime, and its number (see [`RUNTIME_OF`]).
    handle: Handle,
    runtime_id: u64,
    runtime: Mutex<Option<Runtime>>,
    link: watch::Sender<Link>,
    /// Wakes the reconnect task.
    want_connection: Arc<Notify>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    /// The newest connection's number; 0 before the first.
    epochs: AtomicU64,
    /// What `ferry status` and `FERRY_STATS` show.
    stats: Arc<Stats>,
    /// Hears of notices and of connections made and lost.
    events: Mutex<Option<EventHandler>>,
    /// Hears of every reconnection.
    on_reconnect: Mutex<Option<ReconnectHook>>,
    /// Says whether a lost connection is made again at once.
    keep_connected: Mutex<Option<KeepConnected>>,
}

/// A connection to a ferry server; cheap to clone (all clones share it).
#[derive(Clone)]
pub struct RemoteClient {
    inner: Arc<Inner>,
}

/// Why a frame could not be written.
enum WriteFailure {
    /// Its deadline passed before it could start: the connection is fine.
    NotStarted,
    /// The connection broke (or the frame could not be finished in time,
    /// which leaves the stream unusable).
    Broken(io::Error),
}

impl RemoteClient {
    /// Connects to `addr` (`HOST[:PORT][/EXPORT][:/DIR]`, see
    /// [`ferry_common::address`]) as `options` say and performs the handshake; requests then fail with ETIMEDOUT after `options.timeout`
    /// (fsync after ten times that).
    pub fn connect(addr: &str, options: &ConnectOptions) -> Result<RemoteClient, ConnectError> {
        let timeout = options.timeout.max(Duration::from_millis(100));
        let local = |e: io::Error| ConnectError::Local(format!("cannot start the client: {e}"));
        let runtime_id = RUNTIMES.fetch_add(1, Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(2)
            .thread_name("ferry-client")
            .on_thread_start(move || RUNTIME_OF.with(|r| r.set(runtime_id)))
            .enable_all()
            .build()
            .map_err(local)?;
        let client_id = random_client_id().map_err(local)?;
        let connector = Arc::new(Connector::new(addr, &options.security, client_id)?);
        let first = runtime.block_on(async {
            // Each step is bounded inside `open`; this bound only catches a bug there.
            let bound = CONNECT_TIMEOUT * 2 + Duration::from_secs(1);
            match tokio::time::timeout(bound, connector.open(CONNECT_TIMEOUT, CONNECT_TIMEOUT))
                .await
            {
                Ok(opened) => opened,
                Err(_) => Err(ConnectError::Unreachable {
                    addr: connector.socket_addr().to_string(),
                    source: io::Error::new(io::ErrorKind::TimedOut, "timed out"),
                }),
            }
        });
        let (transport, welcome) = first?;
        let (link, _) = watch::channel(Link::Down {
            attempting: false,
            failed_at: None,
        });
        let inner = Arc::new(Inner {
            addr: addr.to_string(),
            timeout,
            welcome,
            handle: runtime.handle().clone(),
            runtime_id,
            runtime: Mutex::new(None),
            link,
            want_connection: Arc::new(Notify::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            epochs: AtomicU64::new(0),
            stats: Arc::new(Stats::default()),
            events: Mutex::new(None),
            on_reconnect: Mutex::new(None),
            keep_connected: Mutex::new(None),
        });
        inner.install(transport);
        let weak = Arc::downgrade(&inner);
        runtime.spawn(watchdog(weak.clone()));
        runtime.spawn(reconnect_loop(
            weak,
            Arc::clone(&inner.want_connection),
            connector,
            timeout,
        ));
        *lock(&inner.runtime) = Some(runtime);
        Ok(RemoteClient { inner })
    }

    /// How long a request may wait for its answer.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// What the server said about itself in the first handshake.
    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    /// Calls `hook` with the epoch and the handshake of every connection made
    /// from now on after a lost one (see [`ReconnectHook`]).
    pub fn on_reconnect(&self, hook: ReconnectHook) {
        *lock(&self.inner.on_reconnect) = Some(hook);
    }

    /// Makes a lost connection again at once, and keeps trying (one attempt
    /// per [`RECONNECT_INTERVAL`]), while `wanted` says so — without waiting
    /// for a caller to need it (see [`KeepConnected`]).
    pub fn keep_connected_while(&self, wanted: KeepConnected) {
        *lock(&self.inner.keep_connected) = Some(wanted);
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Registers the one handler of [`ConnEvent`]s (a second call replaces the
    /// first). It is told at once of the connection that is up, if one is. It
    /// runs on the client's reader task for notices, on whichever thread
    /// notices a break or makes a connection (a task of the client's runtime,
    /// or a caller's), never with a lock of this client held, and must not
    /// block for long: answers wait behind it.
    pub fn on_event(&self, handler: impl Fn(ConnEvent) + Send + Sync + 'static) {
        let handler: EventHandler = Arc::new(handler);
        *lock(&self.inner.events) = Some(Arc::clone(&handler));
        if let Some(epoch) = self.current_epoch() {
            handler(ConnEvent::Established(epoch));
        }
    }

    /// The number of the live connection, waiting (briefly, see the module
    /// docs) for a reconnection if there is none. EIO when the server cannot
    /// be reached.
    pub fn connected_epoch(&self) -> Result<u64, Errno> {
        let deadline = Instant::now() + self.inner.timeout;
        self.inner.conn_for(None, deadline).map(|c| c.epoch)
    }

    /// The number of the live connection, if there is one (never waits).
    pub fn current_epoch(&self) -> Option<u64> {
        match &*self.inner.link.borrow() {
            Link::Up(conn) => Some(conn.epoch),
            _ => None,
        }
    }

    /// Sends `op` on behalf of `cred`; `done` runs exactly once, with the
    /// server's answer: on the client's reader (or the caller's thread, when
    /// the request cannot be sent). It may submit further requests.
    pub fn submit(&self, cred: &Cred, op: Op, done: impl FnOnce(OpResult) + Send + 'static) {
        self.send(None, cred, op, Box::new(done));
    }

    /// Like [`submit`](Self::submit) for an operation on a server handle opened in
    /// connection `epoch`: fails with EIO if that connection is gone.
    pub fn submit_in(
        &self,
        epoch: u64,
        cred: &Cred,
        op: Op,
        done: impl FnOnce(OpResult) + Send + 'static,
    ) {
        self.send(Some(epoch), cred, op, Box::new(done));
    }

    fn send(&self, epoch: Option<u64>, cred: &Cred, op: Op, done: Callback) {
        let timeout = match op {
            Op::Fsync { .. } | Op::Fallocate { .. } | Op::CopyFileRange { .. } => {
                self.inner.timeout * FSYNC_TIMEOUT_FACTOR
            }
            _ => self.inner.timeout,
        };
        let name = op.name();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            id,
            cred: cred.clone(),
            op,
        };
        let bytes = match frame::encode(&request) {
            Ok(b) => b,
            Err(e) => {
                log::error!("cannot encode a request: {e}");
                return done(Err(Errno::EINVAL));
            }
        };
        self.inner.stats.sent(&request.op, bytes.len());
        self.inner
            .transmit(epoch, id, name, timeout, &[&bytes], done);
    }

    /// [`submit_in`](Self::submit_in) of `Op::Write` with the data sent from the
    /// caller's buffer, after a small head, instead of being copied into a frame.
    pub fn submit_write_in(
        &self,
        epoch: u64,
        cred: &Cred,
        handle: u64,
        offset: u64,
        data: &[u8],
        done: impl FnOnce(OpResult) + Send + 'static,
    ) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let head = match frame::encode_write_head(id, cred, handle, offset, data.len()) {
            Ok(h) => h,
            Err(e) => {
                log::error!("cannot encode a write: {e}");
                return done(Err(Errno::EINVAL));
            }
        };
        let write = Op::Write {
            handle,
            offset,
            data: Vec::new(),
        };
        self.inner.stats.sent(&write, head.len() + data.len());
        self.inner.transmit(
            Some(epoch),
            id,
            "write",
            self.inner.timeout,
            &[&head, data],
            Box::new(done),
        );
    }

    /// Sends `op` on behalf of `cred` and waits for its answer (at most the
    /// request's deadline).
    pub fn call(&self, cred: &Cred, op: Op) -> OpResult {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(cred, op, move |r| {
            let _ = tx.send(r);
        });
        self.wait(rx)
    }

    /// [`call`](Self::call) for an operation on a handle of connection `epoch`.
    pub fn call_in(&self, epoch: u64, cred: &Cred, op: Op) -> OpResult {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_in(epoch, cred, op, move |r| {
            let _ = tx.send(r);
        });
        self.wait(rx)
    }

    fn wait(&self, rx: mpsc::Receiver<OpResult>) -> OpResult {
        // The watchdog guarantees an answer by the deadline; the extra margin
        // only guards against a bug there turning into a hang.
        let limit = self.inner.timeout * FSYNC_TIMEOUT_FACTOR + Duration::from_secs(5);
        rx.recv_timeout(limit).unwrap_or(Err(Errno::ETIMEDOUT))
    }

    /// All entries of a remote directory, on behalf of `cred`: in one reply
    /// when they fit, else through the listing the server keeps open for it,
    /// reply after reply (the caller waits for each) — within the bounds of
    /// [`listing`]: at most [`listing::MAX_ENTRIES`] (EFBIG beyond), each name
    /// once and valid, and done within the time the slowest calls get
    /// (ETIMEDOUT after it), however the server answers.
    pub fn list_dir(
        &self,
        cred: &Cred,
        path: &ferry_common::RelPath,
    ) -> Result<Vec<DirEntry>, Errno> {
        let deadline = Instant::now() + self.inner.timeout * FSYNC_TIMEOUT_FACTOR;
        let mut listing = listing::Listing::new();
        let mut cursor = 0;
        loop {
            if Instant::now() > deadline {
                return Err(Errno::ETIMEDOUT);
            }
            let op = Op::List {
                path: path.clone(),
                cursor,
            };
            self.inner.stats.waited_for(&op);
            match self.call(cred, op)? {
                Reply::Listing {
                    entries,
                    cursor: next,
                } => {
                    listing.add_page(entries)?;
                    if next == 0 {
                        return Ok(listing.finish(path));
                    }
                    cursor = next;
                }
                _ => return Err(Errno::EPROTO),
            }
        }
    }

    /// What this client has counted: requests, round trips, bytes, reconnects.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// Gives the live connection up as if it had broken (tests of what a
    /// reconnect does).
    #[cfg(test)]
    pub(crate) fn break_connection(&self) {
        if let Some(epoch) = self.current_epoch() {
            self.inner.lose(epoch, "broken by a test");
        }
    }

    /// Closes the connection for good; pending and later requests fail with EIO.
    pub fn shutdown(&self) {
        let old = self.inner.link.send_replace(Link::Closed);
        if let Link::Up(conn) = old {
            conn.close();
            self.inner.tell(ConnEvent::Lost(conn.epoch));
        }
        let failed: Vec<Waiter> = lock(&self.inner.pending).drain().map(|(_, w)| w).collect();
        fail(failed);
    }
}

/// Where the calling thread is, which decides how it may wait.
enum Caller {
    /// An ordinary thread: it may block.
    Outside,
    /// A thread of this client's runtime (a callback that submits): it may
    /// block only by handing its other tasks to another thread first.
    OwnRuntime,
    /// A thread of some other runtime: it must not block at all.
    OtherRuntime,
}

impl Inner {
    fn caller(&self) -> Caller {
        if RUNTIME_OF.with(Cell::get) == self.runtime_id {
            Caller::OwnRuntime
        } else if Handle::try_current().is_ok() {
            Caller::OtherRuntime
        } else {
            Caller::Outside
        }
    }

    /// Runs `fut` to completion on this thread, on the client's runtime.
    fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        match self.caller() {
            Caller::OwnRuntime => tokio::task::block_in_place(|| self.handle.block_on(fut)),
            _ => self.handle.block_on(fut),
        }
    }

    /// Makes `transport` the live connection of a new epoch and starts its reader.
    fn install(self: &Arc<Self>, transport: Transport) -> Arc<Conn> {
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        let (read_half, write_half) = tokio::io::split(transport);
        let conn = Arc::new(Conn {
            epoch,
            writer: tokio::sync::Mutex::new(write_half),
            closed: watch::channel(false).0,
            silence: Mutex::new(Silence {
                heard: Instant::now(),
                outstanding: 0,
                pinged: None,
            }),
            reader: Mutex::new(None),
        });
        // The transport buffers its socket reads already (see `connect`): the
        // reader reads from it straight into each answer's own buffer.
        let reader = self.handle.spawn(read_loop(
            read_half,
            Arc::clone(&conn),
            Arc::downgrade(self),
        ));
        *lock(&conn.reader) = Some(reader.abort_handle());
        self.link.send_replace(Link::Up(Arc::clone(&conn)));
        self.stats.connected(epoch == 1);
        self.tell(ConnEvent::Established(epoch));
        conn
    }

    /// Tells the event handler, if there is one, of `event`.
    fn tell(&self, event: ConnEvent) {
        let handler = lock(&self.events).clone();
        if let Some(handler) = handler {
            handler(event);
        }
    }

    /// The connection a request may go on: the live one (which must be
    /// `epoch`, if given), or, when there is none and the request is not tied
    /// to an old one, the one a reconnection brings within
    /// [`RECONNECT_GRACE`] and `deadline`. EIO otherwise.
    fn conn_for(&self, epoch: Option<u64>, deadline: Instant) -> Result<Arc<Conn>, Errno> {
        let mut rx = self.link.subscribe();
        let give_up = deadline.min(Instant::now() + RECONNECT_GRACE);
        loop {
            let (attempting, failed_at) = match &*rx.borrow_and_update() {
                Link::Up(conn) if epoch.is_none_or(|e| e == conn.epoch) => {
                    return Ok(Arc::clone(conn))
                }
                Link::Up(_) | Link::Closed => return Err(Errno::EIO),
                Link::Down {
                    attempting,
                    failed_at,
                } => (*attempting, *failed_at),
            };
            self.want_connection.notify_one();
            // A handle's connection never comes back; a recent failure is
            // not retried for this request.
            let recently_failed =
                !attempting && failed_at.is_some_and(|t| t.elapsed() < RECONNECT_INTERVAL);
            if epoch.is_some() || recently_failed || !matches!(self.caller(), Caller::Outside) {
                return Err(Errno::EIO);
            }
            let changed = self
                .handle
                .block_on(async { timeout_at(give_up.into(), rx.changed()).await });
            if !matches!(changed, Ok(Ok(()))) {
                return Err(Errno::EIO);
            }
        }
    }

    /// Writes the frame made of `parts` as request `id`, with its answer due
    /// within `timeout`; `done` gets the answer or the reason there is none.
    fn transmit(
        self: &Arc<Self>,
        epoch: Option<u64>,
        id: u64,
        op: &'static str,
        timeout: Duration,
        parts: &[&[u8]],
        done: Callback,
    ) {
        let deadline = Instant::now() + timeout;
        let conn = match self.conn_for(epoch, deadline) {
            Ok(conn) => conn,
            Err(e) => return done(Err(e)),
        };
        // Registered before writing, so a fast answer always finds its callback.
        let waiter = Waiter {
            sent_at: Instant::now(),
            deadline,
            epoch: conn.epoch,
            op,
            done,
        };
        lock(&self.pending).insert(id, waiter);
        conn.sent();
        match self.caller() {
            Caller::OtherRuntime => {
                // This thread must not block: the frame goes from a task of
                // the client's runtime instead (after any frame already queued).
                let frame = parts.concat();
                let inner = Arc::clone(self);
                self.handle.spawn(async move {
                    let written = write_frame(&conn, &[&frame], deadline).await;
                    inner.after_write(&conn, id, written);
                });
            }
            Caller::Outside | Caller::OwnRuntime => {
                let written = self.block_on(write_frame(&conn, parts, deadline));
                self.after_write(&conn, id, written);
            }
        }
    }

    fn after_write(&self, conn: &Conn, id: u64, written: Result<(), WriteFailure>) {
        match written {
            Ok(()) => {}
            Err(WriteFailure::NotStarted) => {
                conn.unsent();
                let waiter = lock(&self.pending).remove(&id);
                if let Some(w) = waiter {
                    log::warn!(
                        "a {} request to {} could not be sent in time",
                        w.op,
                        self.addr
                    );
                    (w.done)(Err(Errno::ETIMEDOUT));
                }
            }
            Err(WriteFailure::Broken(e)) => {
                self.lose(conn.epoch, &format!("sending failed: {e}"));
            }
        }
    }

    /// Hands the answer to request `id` (`bytes` long on the wire) to its waiter.
    fn complete(&self, id: u64, result: OpResult, bytes: usize) {
        let waiter = lock(&self.pending).remove(&id);
        match waiter {
            Some(w) => {
                if w.op != "ping" {
                    self.stats.answered(w.sent_at.elapsed(), bytes);
                }
                (w.done)(result)
            }
            None => log::debug!("an answer to request {id}, which nobody waits for (timed out?)"),
        }
    }

    /// Gives up connection `epoch` if it is still the live one, and fails
    /// every request sent on it with EIO.
    fn lose(&self, epoch: u64, why: &str) {
        let mut lost = None;
        self.link.send_if_modified(|link| match link {
            Link::Up(conn) if conn.epoch == epoch => {
                lost = Some(Arc::clone(conn));
                // The next attempt may come at once: the break may be a restart.
                *link = Link::Down {
                    attempting: false,
                    failed_at: None,
                };
                true
            }
            _ => false,
        });
        let failed: Vec<Waiter> = {
            let mut pending = lock(&self.pending);
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, w)| w.epoch == epoch)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id))
                .collect()
        };
        if let Some(conn) = lost {
            conn.close();
            self.tell(ConnEvent::Lost(epoch));
            self.stats.connection_lost();
            // Asked on the runtime: whoever lost the connection may hold the
            // locks the question needs.
            if let Some(keep) = lock(&self.keep_connected).clone() {
                let want = Arc::clone(&self.want_connection);
                self.handle.spawn(async move {
                    if keep() {
                        want.notify_one();
                    }
                });
            }
            if failed.is_empty() {
                log::info!("connection to {} closed: {why}", self.addr);
            } else {
                log::warn!(
                    "lost the connection to {} ({why}); {} request(s) fail with EIO",
                    self.addr,
                    failed.len()
                );
            }
        }
        fail(failed);
    }

    /// Sends a ping on `conn` without waiting (from the watchdog).
    fn ping(self: &Arc<Self>, conn: Arc<Conn>, dead_after: Duration) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A ping acts as nobody: the server answers it before looking at who asks.
        let ping = Request {
            id,
            cred: nobody(),
            op: Op::Ping,
        };
        let Ok(bytes) = frame::encode(&ping) else {
            return;
        };
        let deadline = Instant::now() + dead_after;
        let waiter = Waiter {
            sent_at: Instant::now(),
            deadline,
            epoch: conn.epoch,
            op: "ping",
            done: Box::new(|_| {}),
        };
        lock(&self.pending).insert(id, waiter);
        conn.sent();
        let inner = Arc::clone(self);
        self.handle.spawn(async move {
            let written = write_frame(&conn, &[&bytes], deadline).await;
            inner.after_write(&conn, id, written);
        });
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Link::Up(conn) = self.link.send_replace(Link::Closed) {
            conn.close();
        }
        if let Some(runtime) = lock(&self.runtime).take() {
            // A runtime cannot wait for its own threads from one of them.
            if Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(Duration::from_secs(1));
            }
        }
    }
}

/// Writes one whole frame on `conn` before `deadline`.
async fn write_frame(conn: &Conn, parts: &[&[u8]], deadline: Instant) -> Result<(), WriteFailure> {
    let mut closed = conn.closed.subscribe();
    let gone = || {
        WriteFailure::Broken(io::Error::new(
            io::ErrorKind::NotConnected,
            "connection lost",
        ))
    };
    let mut writer = tokio::select! {
        _ = closed.wait_for(|c| *c) => return Err(gone()),
        locked = timeout_at(deadline.into(), conn.writer.lock()) => match locked {
            Ok(writer) => writer,
            Err(_) => return Err(WriteFailure::NotStarted),
        },
    };
    let written = tokio::select! {
        _ = closed.wait_for(|c| *c) => return Err(gone()),
        written = timeout_at(deadline.into(), write_parts(&mut writer, parts)) => written,
    };
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteFailure::Broken(e)),
        Err(_) => Err(WriteFailure::Broken(io::Error::new(
            io::ErrorKind::TimedOut,
            "a request could not be sent before its deadline (the server takes nothing)",
        ))),
    }
}

/// Writes every byte of `parts`, in order, with as few writes as the stream
/// allows, and flushes (TLS may hold the last record back otherwise).
async fn write_parts(writer: &mut WriteHalf<Transport>, parts: &[&[u8]]) -> io::Result<()> {
    frame::write_parts_async(writer, parts).await
}

/// A random id for this client (see `Hello::client`), never 0.
fn random_client_id() -> io::Result<u128> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(io::Error::from)?;
    Ok(u128::from_le_bytes(bytes).max(1))
}

fn fail(waiters: Vec<Waiter>) {
    for w in waiters {
        (w.done)(Err(Errno::EIO));
    }
}

/// About how long the head of a data answer is on the wire (length, id, tag),
/// for counting bytes received.
const DATA_HEAD: usize = 16;

/// The id pings claim to come from (`nobody`): a ping acts as no one.
const NOBODY: u32 = 65534;

/// The credential of a request made for the mount itself rather than for a
/// user (a ping, a subscription): `nobody`, which may touch nothing.
pub fn nobody() -> Cred {
    Cred {
        uid: NOBODY,
        gid: NOBODY,
        groups: Vec::new(),
    }
}

/// Reads answers on `conn` until it breaks, completing each request.
async fn read_loop(mut reader: ReadHalf<Transport>, conn: Arc<Conn>, inner: Weak<Inner>) {
    loop {
        let outcome = frame::read_response_async(&mut reader).await;
        let Some(inner) = inner.upgrade() else { return };
        let payload = match outcome {
            // File data arrives in a buffer of its own: no copy out of the frame.
            Ok(Some(ResponseFrame::Data { id, data })) => {
                conn.heard();
                let bytes = DATA_HEAD + data.len();
                inner.complete(id, Ok(Reply::Data(data)), bytes);
                continue;
            }
            Ok(Some(ResponseFrame::Whole(p))) => p,
            Ok(None) => return inner.lose(conn.epoch, "the server closed it"),
            Err(e) => return inner.lose(conn.epoch, &e.to_string()),
        };
        match frame::decode::<ServerMessage>(&payload) {
            Ok(ServerMessage::Response(resp)) => {
                conn.heard();
                inner.complete(resp.id, resp.result, 4 + payload.len());
            }
            Ok(ServerMessage::Notice(notice)) => {
                conn.heard_unasked();
                inner.tell(ConnEvent::Notice(conn.epoch, notice));
            }
            Err(e) => {
                let why = format!("an answer could not be decoded: {e}");
                return inner.lose(conn.epoch, &why);
            }
        }
    }
}

/// Fails requests past their deadline with ETIMEDOUT, pings a quiet server,
/// and resets the connection to a silent one.
async fn watchdog(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<Waiter> = {
            let mut pending = lock(&inner.pending);
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, w)| w.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id))
                .collect()
        };
        for w in expired {
            if w.op != "ping" {
                inner.stats.timed_out();
                log::warn!(
                    "a {} request to {} timed out after {} s",
                    w.op,
                    inner.addr,
                    inner.timeout.as_secs_f32()
                );
            }
            (w.done)(Err(Errno::ETIMEDOUT));
        }
        let Link::Up(conn) = inner.link.borrow().clone() else {
            continue;
        };
        let (ping_every, dead_after) = liveness(inner.timeout);
        let (silent, quiet) = {
            let mut s = lock(&conn.silence);
            let silent = s.outstanding > 0 && now - s.heard >= dead_after;
            let quiet =
                now - s.heard >= ping_every && s.pinged.is_none_or(|t| now - t >= ping_every);
            if quiet {
                s.pinged = Some(now);
            }
            (silent, quiet)
        };
        if silent {
            let why = format!(
                "no answer, not even to a ping, for {} s",
                dead_after.as_secs_f32()
            );
            inner.lose(conn.epoch, &why);
        } else if quiet {
            inner.ping(conn, dead_after);
        }
    }
}

/// Makes a new connection when a caller wants one and there is none: one
/// attempt at a time, at most one per [`RECONNECT_INTERVAL`] after a failure,
/// each bounded by the client's timeout (at most [`CONNECT_TIMEOUT`]).
async fn reconnect_loop(
    inner: Weak<Inner>,
    wanted: Arc<Notify>,
    connector: Arc<Connector>,
    timeout: Duration,
) {
    let bound = timeout.min(CONNECT_TIMEOUT);
    loop {
        wanted.notified().await;
        let failed_at = {
            let Some(inner) = inner.upgrade() else { return };
            let link = inner.link.borrow().clone();
            match link {
                Link::Down { failed_at, .. } => failed_at,
                Link::Up(_) => continue,
                Link::Closed => return,
            }
        };
        if let Some(at) = failed_at {
            tokio::time::sleep_until((at + RECONNECT_INTERVAL).into()).await;
        }
        {
            let Some(inner) = inner.upgrade() else { return };
            let started = inner.link.send_if_modified(|link| match link {
                Link::Down { attempting, .. } => {
                    *attempting = true;
                    true
                }
                _ => false,
            });
            if !started {
                continue;
            }
        }
        let opened =
            tokio::time::timeout(bound, connector.open(RECONNECT_TCP.min(bound), bound)).await;
        let Some(inner) = inner.upgrade() else { return };
        match opened {
            Ok(Ok((transport, welcome))) => {
                if matches!(*inner.link.borrow(), Link::Closed) {
                    return;
                }
                let conn = inner.install(transport);
                log::warn!("reconnected to {}", inner.addr);
                if let Some(hook) = &*lock(&inner.on_reconnect) {
                    hook(conn.epoch, &welcome);
                }
            }
            failed => {
                match failed {
                    Ok(Err(e)) => log::info!("reconnecting: {e}"),
                    _ => log::info!(
                        "reconnecting to {}: no handshake within {} s",
                        inner.addr,
                        bound.as_secs_f32()
                    ),
                }
                inner.link.send_if_modified(|link| match link {
                    Link::Down { .. } => {
                        *link = Link::Down {
                            attempting: false,
                            failed_at: Some(Instant::now()),
                        };
                        true
                    }
                    _ => false,
                });
                // Tried again after the interval, even with nobody asking.
                let keep = lock(&inner.keep_connected).clone();
                if keep.is_some_and(|keep| keep()) {
                    wanted.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
