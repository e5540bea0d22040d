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

use ferry_common::frame;
use ferry_common::proto::{HandshakeReply, Hello, Op, Reply, Request, Response, Welcome};
use ferry_common::Errno;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How long an ordinary request may take before it fails with ETIMEDOUT.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// fsync may legitimately take long on a busy disk.
const FSYNC_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

struct Pending {
    waiting: HashMap<u64, (Instant, Callback)>,
    /// Set once the connection is gone; every later request fails at once.
    broken: bool,
}

struct Inner {
    addr: String,
    stream: Mutex<TcpStream>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    welcome: Welcome,
}

/// A connection to a ferry server; cheap to clone (all clones share it).
#[derive(Clone)]
pub struct RemoteClient {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data behind
    // (every critical section is a single map operation), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RemoteClient {
    /// Connects to `addr` (HOST:PORT) and performs the handshake.
    pub fn connect(addr: &str) -> Result<RemoteClient, ConnectError> {
        let unreachable = |source| ConnectError::Unreachable {
            addr: addr.to_string(),
            source,
        };
        let protocol = |detail: String| ConnectError::Protocol {
            addr: addr.to_string(),
            detail,
        };
        let mut last_err =
            io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
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
            .set_write_timeout(Some(DEFAULT_TIMEOUT))
            .map_err(unreachable)?;

        let reader = stream.try_clone().map_err(unreachable)?;
        let inner = Arc::new(Inner {
            addr: addr.to_string(),
            stream: Mutex::new(stream),
            pending: Mutex::new(Pending {
                waiting: HashMap::new(),
                broken: false,
            }),
            next_id: AtomicU64::new(1),
            welcome,
        });
        let weak = Arc::downgrade(&inner);
        thread::Builder::new()
            .name("ferry-reader".into())
            .spawn(move || read_loop(reader, weak))
            .map_err(unreachable)?;
        let weak = Arc::downgrade(&inner);
        thread::Builder::new()
            .name("ferry-sweeper".into())
            .spawn(move || sweep_loop(weak))
            .map_err(unreachable)?;
        Ok(RemoteClient { inner })
    }

    /// What the server said about itself in the handshake.
    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Sends `op`; `done` runs exactly once, on the reader thread (or the caller's,
    /// if the connection is already broken), with the server's answer.
    pub fn submit(&self, op: Op, done: impl FnOnce(OpResult) + Send + 'static) {
        let timeout = match op {
            Op::Fsync { .. } => FSYNC_TIMEOUT,
            _ => DEFAULT_TIMEOUT,
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = match frame::encode(&Request { id, op }) {
            Ok(b) => b,
            Err(e) => {
                log::error!("cannot encode a request: {e}");
                return done(Err(Errno::EINVAL));
            }
        };
        {
            let mut pending = lock(&self.inner.pending);
            if pending.broken {
                drop(pending);
                return done(Err(Errno::EIO));
            }
            pending
                .waiting
                .insert(id, (Instant::now() + timeout, Box::new(done)));
        }
        // Registered before writing, so a fast answer always finds its callback.
        let mut stream = lock(&self.inner.stream);
        if let Err(e) = stream.write_all(&bytes) {
            // A partly written frame leaves the stream unusable: close it.
            let _ = stream.shutdown(Shutdown::Both);
            drop(stream);
            log::warn!("lost the connection to {}: {e}", self.inner.addr);
            self.inner.fail_all();
        }
    }

    /// Sends `op` and waits for its answer (at most the request's deadline).
    pub fn call(&self, op: Op) -> OpResult {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(op, move |r| {
            let _ = tx.send(r);
        });
        // The sweeper guarantees an answer by the deadline; the extra margin only
        // guards against a bug there turning into a hang.
        rx.recv_timeout(FSYNC_TIMEOUT + Duration::from_secs(5))
            .unwrap_or(Err(Errno::ETIMEDOUT))
    }

    /// Closes the connection; pending requests fail with EIO.
    pub fn shutdown(&self) {
        let _ = lock(&self.inner.stream).shutdown(Shutdown::Both);
        self.inner.fail_all();
    }
}

impl Inner {
    fn complete(&self, id: u64, result: OpResult) {
        let waiter = lock(&self.pending).waiting.remove(&id);
        match waiter {
            Some((_, done)) => done(result),
            None => log::debug!("an answer to request {id}, which nobody waits for (timed out?)"),
        }
    }

    fn fail_all(&self) {
        let waiting: Vec<_> = {
            let mut pending = lock(&self.pending);
            pending.broken = true;
            pending.waiting.drain().collect()
        };
        for (_, (_, done)) in waiting {
            done(Err(Errno::EIO));
        }
    }
}

fn read_loop(mut stream: TcpStream, inner: std::sync::Weak<Inner>) {
    let mut reader = io::BufReader::with_capacity(256 * 1024, &mut stream);
    loop {
        let outcome = frame::read_frame(&mut reader);
        let Some(inner) = inner.upgrade() else { return };
        let payload = match outcome {
            Ok(Some(p)) => p,
            Ok(None) => {
                log::warn!("{} closed the connection", inner.addr);
                return inner.fail_all();
            }
            Err(e) => {
                if !lock(&inner.pending).broken {
                    log::warn!("connection to {} failed: {e}", inner.addr);
                }
                return inner.fail_all();
            }
        };
        match frame::decode::<Response>(&payload) {
            Ok(resp) => inner.complete(resp.id, resp.result),
            Err(e) => {
                log::error!("{} sent an answer that cannot be decoded: {e}", inner.addr);
                let _ = lock(&inner.stream).shutdown(Shutdown::Both);
                return inner.fail_all();
            }
        }
    }
}

fn sweep_loop(inner: std::sync::Weak<Inner>) {
    loop {
        thread::sleep(Duration::from_millis(500));
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<_> = {
            let mut pending = lock(&inner.pending);
            if pending.broken && pending.waiting.is_empty() {
                return;
            }
            let ids: Vec<u64> = pending
                .waiting
                .iter()
                .filter(|(_, (deadline, _))| *deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.waiting.remove(&id))
                .collect()
        };
        for (_, done) in expired {
            log::warn!("a request to {} timed out", inner.addr);
            done(Err(Errno::ETIMEDOUT));
        }
    }
}
