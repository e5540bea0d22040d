//! `RemoteClient`: one TCP connection to a ferry server, shared by every caller.
//!
//! Requests are numbered and written as soon as they are submitted; a single reader
//! thread matches each response to its request by id and completes it, in whatever
//! order the server answers. So many requests are in flight at once and nobody
//! waits for anybody else's slow request.
//!
//! A request completes either through a callback ([`RemoteClient::submit`], used by
//! the FUSE adapter so that a kernel request is answered straight from the reader
//! thread without tying up a FUSE worker) or by blocking ([`RemoteClient::call`]).
//! No request waits forever: a sweeper fails any request past its deadline with
//! ETIMEDOUT, and a broken connection fails every pending request with EIO.
//!
//! Connections break (a server restarts, a laptop sleeps). The next request after
//! a break reconnects, at most once per [`RECONNECT_INTERVAL`]. Each connection
//! is an *epoch*: server handles belong to the epoch that opened them, so a
//! request carrying a handle is sent with [`RemoteClient::submit_in`] and fails
//! (rather than reaching whatever file that number names on a new connection)
//! when the epoch has changed; its owner re-opens the file by path.

pub mod listing;

use ferry_common::frame::{self, ResponseFrame};
use ferry_common::proto::{DirEntry, HandshakeReply, Hello, Op, Reply, Request, Response, Welcome};
use ferry_common::sync::lock;
use ferry_common::Errno;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long an ordinary request may take before it fails with ETIMEDOUT.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// fsync (and fallocate and a server-side copy, which also wait for the disk)
/// may legitimately take long on a busy disk: they get this many times the
/// ordinary timeout.
const FSYNC_TIMEOUT_FACTOR: u32 = 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a broken connection is tried again; requests in between fail at once.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

/// What a caller gets back: the reply or the errno to hand on.
pub type OpResult = Result<Reply, Errno>;
type Callback = Box<dyn FnOnce(OpResult) + Send>;

/// Why a connection could not be opened, worded for a person.
#[derive(Debug)]
pub enum ConnectError {
    Unreachable { addr: String, source: io::Error },
    Refused { addr: String, message: String },
    Protocol { addr: String, detail: String },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Unreachable { addr, source } => {
                let why = match source.kind() {
                    io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".to_string(),
                    _ => source.to_string(),
                };
                write!(
                    f,
                    "cannot reach {addr}: {why} — is `ferry serve` running there?"
                )
            }
            ConnectError::Refused { addr, message } => {
                write!(f, "{addr} refused the connection: {message}")
            }
            ConnectError::Protocol { addr, detail } => write!(
                f,
                "{addr} did not answer as a ferry server ({detail}) — check the address and port"
            ),
        }
    }
}

impl std::error::Error for ConnectError {}

/// One live connection: the writing half (the reader thread owns a clone).
struct Conn {
    stream: TcpStream,
    epoch: u64,
}

struct Waiter {
    deadline: Instant,
    epoch: u64,
    done: Callback,
}

struct Inner {
    addr: String,
    /// `None` while broken.
    conn: Mutex<Option<Conn>>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    /// The newest connection's number; 0 before the first.
    epoch: AtomicU64,
    /// When reconnecting was last tried.
    last_attempt: Mutex<Instant>,
    /// How long a request may wait for its answer.
    timeout: Duration,
    welcome: Welcome,
    /// Requests sent, by operation: what `FERRY_STATS` prints.
    sent: Mutex<BTreeMap<&'static str, u64>>,
}

/// A connection to a ferry server; cheap to clone (all clones share it).
#[derive(Clone)]
pub struct RemoteClient {
    inner: Arc<Inner>,
}

/// Opens a TCP connection and performs the handshake.
fn handshake(addr: &str, timeout: Duration) -> Result<(TcpStream, Welcome), ConnectError> {
    let unreachable = |source| ConnectError::Unreachable {
        addr: addr.to_string(),
        source,
    };
    let protocol = |detail: String| ConnectError::Protocol {
        addr: addr.to_string(),
        detail,
    };
    let mut last_err = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
    let mut stream = None;
    for sa in addr.to_socket_addrs().map_err(unreachable)? {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let mut stream = stream.ok_or_else(|| unreachable(last_err))?;
    stream.set_nodelay(true).map_err(unreachable)?;

    // The handshake runs under a read timeout so a silent peer cannot hang us.
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(unreachable)?;
    frame::write_frame(&mut stream, &Hello::new()).map_err(|e| protocol(e.to_string()))?;
    let payload = match frame::read_frame(&mut stream) {
        Ok(Some(p)) => p,
        Ok(None) => return Err(protocol("it closed the connection".into())),
        Err(e) => return Err(protocol(e.to_string())),
    };
    let welcome = match frame::decode::<HandshakeReply>(&payload) {
        Ok(HandshakeReply::Welcome(w)) => w,
        Ok(HandshakeReply::Refused { message }) => {
            return Err(ConnectError::Refused {
                addr: addr.to_string(),
                message,
            })
        }
        Err(e) => return Err(protocol(e.to_string())),
    };
    stream.set_read_timeout(None).map_err(unreachable)?;
    // A server that stops reading must not block writers forever: a write that
    // cannot progress for this long breaks the connection instead.
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    Ok((stream, welcome))
}

impl RemoteClient {
    /// Connects to `addr` (HOST:PORT) and performs the handshake.
    pub fn connect(addr: &str) -> Result<RemoteClient, ConnectError> {
        RemoteClient::connect_with_timeout(addr, DEFAULT_TIMEOUT)
    }

    /// [`connect`](Self::connect), with requests failing with ETIMEDOUT after
    /// `timeout` (fsync after ten times that).
    pub fn connect_with_timeout(
        addr: &str,
        timeout: Duration,
    ) -> Result<RemoteClient, ConnectError> {
        let timeout = timeout.max(Duration::from_millis(100));
        let (stream, welcome) = handshake(addr, timeout)?;
        let inner = Arc::new(Inner {
            addr: addr.to_string(),
            conn: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
            last_attempt: Mutex::new(Instant::now()),
            timeout,
            welcome,
            sent: Mutex::new(BTreeMap::new()),
        });
        {
            let mut conn = lock(&inner.conn);
            inner
                .start(&mut conn, stream)
                .map_err(|source| ConnectError::Unreachable {
                    addr: addr.to_string(),
                    source,
                })?;
        }
        let weak = Arc::downgrade(&inner);
        thread::Builder::new()
            .name("ferry-sweeper".into())
            .spawn(move || sweep_loop(weak))
            .map_err(|source| ConnectError::Unreachable {
                addr: addr.to_string(),
                source,
            })?;
        Ok(RemoteClient { inner })
    }

    /// What the server said about itself in the first handshake.
    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The number of the live connection, reconnecting first if it is broken.
    /// EIO when the server cannot be reached.
    pub fn connected_epoch(&self) -> Result<u64, Errno> {
        let mut conn = lock(&self.inner.conn);
        self.inner.ensure(&mut conn).map(|c| c.epoch)
    }

    /// The number of the live connection, if there is one (never reconnects).
    pub fn current_epoch(&self) -> Option<u64> {
        lock(&self.inner.conn).as_ref().map(|c| c.epoch)
    }

    /// Sends `op`; `done` runs exactly once, on the reader thread (or the caller's,
    /// when the request cannot be sent), with the server's answer.
    pub fn submit(&self, op: Op, done: impl FnOnce(OpResult) + Send + 'static) {
        self.send(None, op, Box::new(done));
    }

    /// Like [`submit`](Self::submit) for an operation on a server handle opened in
    /// connection `epoch`: fails with EIO if that connection is gone.
    pub fn submit_in(&self, epoch: u64, op: Op, done: impl FnOnce(OpResult) + Send + 'static) {
        self.send(Some(epoch), op, Box::new(done));
    }

    fn send(&self, epoch: Option<u64>, op: Op, done: Callback) {
        let timeout = match op {
            Op::Fsync { .. } | Op::Fallocate { .. } | Op::CopyFileRange { .. } => {
                self.inner.timeout * FSYNC_TIMEOUT_FACTOR
            }
            _ => self.inner.timeout,
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        *lock(&self.inner.sent).entry(op.name()).or_default() += 1;
        let bytes = match frame::encode(&Request { id, op }) {
            Ok(b) => b,
            Err(e) => {
                log::error!("cannot encode a request: {e}");
                return done(Err(Errno::EINVAL));
            }
        };
        self.transmit(epoch, id, timeout, &[&bytes], done);
    }

    /// [`submit_in`](Self::submit_in) of `Op::Write` with the data sent from the
    /// caller's buffer, after a small head, instead of being copied into a frame.
    pub fn submit_write_in(
        &self,
        epoch: u64,
        handle: u64,
        offset: u64,
        data: &[u8],
        done: impl FnOnce(OpResult) + Send + 'static,
    ) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        *lock(&self.inner.sent).entry("write").or_default() += 1;
        let head = match frame::encode_write_head(id, handle, offset, data.len()) {
            Ok(h) => h,
            Err(e) => {
                log::error!("cannot encode a write: {e}");
                return done(Err(Errno::EINVAL));
            }
        };
        self.transmit(
            Some(epoch),
            id,
            self.inner.timeout,
            &[&head, data],
            Box::new(done),
        );
    }

    /// Writes the frame made of `parts` as request `id`, with its answer due
    /// within `timeout`.
    fn transmit(
        &self,
        epoch: Option<u64>,
        id: u64,
        timeout: Duration,
        parts: &[&[u8]],
        done: Callback,
    ) {
        let mut conn = lock(&self.inner.conn);
        let live = match self.inner.ensure(&mut conn) {
            Ok(c) if epoch.is_none_or(|e| e == c.epoch) => c,
            Ok(_) | Err(_) => {
                drop(conn);
                return done(Err(Errno::EIO));
            }
        };
        let live_epoch = live.epoch;
        // Registered before writing, so a fast answer always finds its callback.
        let waiter = Waiter {
            deadline: Instant::now() + timeout,
            epoch: live_epoch,
            done,
        };
        lock(&self.inner.pending).insert(id, waiter);
        if let Err(e) = write_all_parts(&mut live.stream, parts) {
            // A partly written frame leaves the stream unusable: close it.
            log::warn!("lost the connection to {}: {e}", self.inner.addr);
            let failed = self.inner.break_conn(&mut conn, live_epoch);
            drop(conn);
            fail(failed);
        }
    }

    /// Sends `op` and waits for its answer (at most the request's deadline).
    pub fn call(&self, op: Op) -> OpResult {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(op, move |r| {
            let _ = tx.send(r);
        });
        self.wait(rx)
    }

    /// [`call`](Self::call) for an operation on a handle of connection `epoch`.
    pub fn call_in(&self, epoch: u64, op: Op) -> OpResult {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_in(epoch, op, move |r| {
            let _ = tx.send(r);
        });
        self.wait(rx)
    }

    fn wait(&self, rx: mpsc::Receiver<OpResult>) -> OpResult {
        // The sweeper guarantees an answer by the deadline; the extra margin only
        // guards against a bug there turning into a hang.
        let limit = self.inner.timeout * FSYNC_TIMEOUT_FACTOR + Duration::from_secs(5);
        rx.recv_timeout(limit).unwrap_or(Err(Errno::ETIMEDOUT))
    }

    /// All entries of a remote directory, fetched page by page, within the
    /// bounds of [`listing`]: at most [`listing::MAX_ENTRIES`] (EFBIG beyond),
    /// each name once and valid, and done within the time the slowest calls
    /// get (ETIMEDOUT after it), however the server answers.
    pub fn list_dir(&self, path: &ferry_common::RelPath) -> Result<Vec<DirEntry>, Errno> {
        let deadline = Instant::now() + self.inner.timeout * FSYNC_TIMEOUT_FACTOR;
        let mut listing = listing::Listing::new();
        loop {
            if Instant::now() > deadline {
                return Err(Errno::ETIMEDOUT);
            }
            let op = Op::ReadDir {
                path: path.clone(),
                start: listing.next_start(),
            };
            match self.call(op)? {
                Reply::Entries { entries, more } => {
                    let got = entries.len();
                    listing.add_page(entries)?;
                    if !more || got == 0 {
                        return Ok(listing.finish(path));
                    }
                }
                _ => return Err(Errno::EPROTO),
            }
        }
    }

    /// How many requests of each operation were sent so far.
    pub fn sent(&self) -> Vec<(&'static str, u64)> {
        lock(&self.inner.sent)
            .iter()
            .map(|(name, n)| (*name, *n))
            .collect()
    }

    /// Closes the connection; pending requests fail with EIO.
    pub fn shutdown(&self) {
        let epoch = self.inner.epoch.load(Ordering::Relaxed);
        let failed = self.inner.break_conn(&mut lock(&self.inner.conn), epoch);
        fail(failed);
    }
}

impl Inner {
    /// Installs `stream` as the live connection of a new epoch and starts its reader.
    fn start(self: &Arc<Self>, conn: &mut Option<Conn>, stream: TcpStream) -> io::Result<()> {
        let reader = stream.try_clone()?;
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let weak = Arc::downgrade(self);
        thread::Builder::new()
            .name(format!("ferry-reader-{epoch}"))
            .spawn(move || read_loop(reader, epoch, weak))?;
        *conn = Some(Conn { stream, epoch });
        Ok(())
    }

    /// The live connection, reconnecting if it is broken and the last attempt is
    /// old enough.
    fn ensure<'a>(self: &Arc<Self>, conn: &'a mut Option<Conn>) -> Result<&'a mut Conn, Errno> {
        if conn.is_none() {
            let mut last = lock(&self.last_attempt);
            if last.elapsed() < RECONNECT_INTERVAL {
                return Err(Errno::EIO);
            }
            *last = Instant::now();
            drop(last);
            match handshake(&self.addr, self.timeout) {
                Ok((stream, _)) => {
                    self.start(conn, stream).map_err(Errno::from)?;
                    log::warn!("reconnected to {}", self.addr);
                }
                Err(e) => {
                    log::debug!("reconnecting: {e}");
                    return Err(Errno::EIO);
                }
            }
        }
        conn.as_mut().ok_or(Errno::EIO)
    }

    fn complete(&self, id: u64, result: OpResult) {
        let waiter = lock(&self.pending).remove(&id);
        match waiter {
            Some(w) => (w.done)(result),
            None => log::debug!("an answer to request {id}, which nobody waits for (timed out?)"),
        }
    }

    /// Closes connection `epoch` if it is still the live one, and returns every
    /// request that was sent on it, to be failed (by [`fail`]) once the caller has
    /// released the connection lock: a callback may send a new request.
    #[must_use]
    fn break_conn(&self, conn: &mut Option<Conn>, epoch: u64) -> Vec<Waiter> {
        if conn.as_ref().is_some_and(|c| c.epoch == epoch) {
            if let Some(c) = conn.take() {
                let _ = c.stream.shutdown(Shutdown::Both);
            }
            // The next attempt may come at once: the break may be a server restart.
            *lock(&self.last_attempt) = Instant::now() - RECONNECT_INTERVAL;
        }
        let mut pending = lock(&self.pending);
        let ids: Vec<u64> = pending
            .iter()
            .filter(|(_, w)| w.epoch == epoch)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| pending.remove(&id))
            .collect()
    }

    /// Breaks connection `epoch` (from its reader thread) and fails its requests.
    fn lose(&self, epoch: u64) {
        let failed = self.break_conn(&mut lock(&self.conn), epoch);
        fail(failed);
    }
}

/// Writes every byte of `parts`, in order, with as few system calls as the
/// socket allows.
fn write_all_parts(stream: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
    let mut bufs = slices.as_mut_slice();
    while !bufs.is_empty() {
        match stream.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn fail(waiters: Vec<Waiter>) {
    for w in waiters {
        (w.done)(Err(Errno::EIO));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.conn).take() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }
}

fn read_loop(stream: TcpStream, epoch: u64, inner: std::sync::Weak<Inner>) {
    let mut reader = io::BufReader::with_capacity(256 * 1024, stream);
    loop {
        let outcome = frame::read_response(&mut reader);
        let Some(inner) = inner.upgrade() else { return };
        let payload = match outcome {
            // File data arrives in a buffer of its own: no copy out of the frame.
            Ok(Some(ResponseFrame::Data { id, data })) => {
                inner.complete(id, Ok(Reply::Data(data)));
                continue;
            }
            Ok(Some(ResponseFrame::Whole(p))) => p,
            Ok(None) => {
                log::warn!("{} closed the connection", inner.addr);
                return inner.lose(epoch);
            }
            Err(e) => {
                log::warn!("connection to {} failed: {e}", inner.addr);
                return inner.lose(epoch);
            }
        };
        match frame::decode::<Response>(&payload) {
            Ok(resp) => inner.complete(resp.id, resp.result),
            Err(e) => {
                log::error!("{} sent an answer that cannot be decoded: {e}", inner.addr);
                return inner.lose(epoch);
            }
        }
    }
}

fn sweep_loop(inner: std::sync::Weak<Inner>) {
    loop {
        thread::sleep(Duration::from_millis(500));
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
            log::warn!("a request to {} timed out", inner.addr);
            (w.done)(Err(Errno::ETIMEDOUT));
        }
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
