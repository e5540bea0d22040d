//! ferry's export server: serves one local directory to ferry clients over TCP.
//!
//! A tour of the modules:
//!
//! - `exports`: the server's exports (a default one, named ones) and the one
//!   function that picks a connection's root from its `Hello`.
//! - `export`: [`ExportRoot`], the confined view of the exported directory and
//!   the server's storage interface, and [`OpenFile`], what a handle stands for.
//!   Every file system call lives there, as plain methods returning
//!   `Result<T, Errno>`; nothing outside the root is reachable (`openat2` with
//!   `RESOLVE_BENEATH`, no symlink ever followed). Calls act as the user the
//!   thread acts as (`export::credentials`: per-thread file system ids, groups
//!   and capabilities, switched around each request). Its raw system calls are
//!   all in `export::sys`.
//! - `identity`: who a request acts as — the client's claimed credential, with
//!   root (or everyone) squashed to an anonymous user, as NFS does.
//! - `policy`: what is refused on top of the kernel's checks (device nodes,
//!   set-id programs from squashed clients, `security.*` and `trusted.*`
//!   attributes from anyone but root, changes to a read-only export).
//! - `handles`: one connection's open files, by handle number.
//! - `budget`: what one connection, and all of them, may hold of the
//!   server's descriptors and of its memory for replies in flight.
//! - `recovery`: clients' locks across a lost connection and a server
//!   restart — locks kept for a reconnecting client, the grace period after a
//!   start, the record of clients that may hold locks.
//! - `listings`: one connection's listings under way, each an open directory
//!   stream (`export::DirStream`) the client goes on with by cursor, bounded in
//!   number and idle time.
//! - `dispatch`: turns each request into an export call, acting as its
//!   identity, and its reply.
//! - `schedule`: where each request runs (on the connection's reader, or on the
//!   blocking pool) and whether it waits for earlier requests on its handle.
//! - `sequencer`: the per-handle queues that keep those requests in order.
//! - `security`: [`TlsServer`], the server's key, certificate and each
//!   export's access token in its state directory, and the
//!   `authorized_clients` it lets in; [`Security`] says whether a server uses
//!   them or runs `--insecure`.
//! - `connection`: one client, on a thread of its own: TLS and
//!   authentication, then a reader that runs each request where `schedule`
//!   says, and a single writer that batches the replies (and sends the
//!   notices of a subscribed connection); idle connections that hold nothing
//!   are closed.
//! - `stalls`: a request stuck in the export holds up only itself — the
//!   watchdog that hands a stuck connection's reading to a new thread.
//! - Coherent caches: `interest` (`InterestTable`: what one connection may
//!   have cached, and what to tell it when that changes), `registry`
//!   (`Registry`: every subscribed connection served from one directory, and
//!   the routing of each change to the others; `Registries`: one per directory
//!   served), `effects` (the hooks around every operation: what it lets its
//!   client cache, what it changes), `watch` (the served directory watched
//!   with inotify for changes made by processes on the server, or through
//!   connections served from another directory).
//! - `metrics`: what the server counts, and the `--metrics` HTTP responder.
//! - `sys`: the few system calls outside the export (descriptor limit, socket
//!   options, inotify).
//! - `fuzz` (in tests, and in builds with `--cfg fuzzing`): the fuzz targets —
//!   the frame decoder, the handshake, the dispatch of operations — which run
//!   as bounded tests on stable and coverage-guided under `fuzz/`.
//! - this file: [`Server`], which accepts connections up to a limit (in all,
//!   and per client address), keeps house (the watchdog, the recovery
//!   sweep, trimming the heap) and stops gracefully, and
//!   [`spawn_test_server`] for tests.
//!
//! The wire format itself belongs to `ferry_common`.

#![warn(unreachable_pub)]

mod budget;
mod connection;
mod dispatch;
mod effects;
mod export;
mod exports;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
mod handles;
mod identity;
mod interest;
mod listings;
mod metrics;
mod policy;
mod recovery;
mod registry;
mod schedule;
mod security;
mod sequencer;
mod stalls;
mod sys;
mod watch;

pub use budget::DEFAULT_REPLY_MEMORY;
pub use connection::CONNECTION_BUDGET;
pub use dispatch::MAX_COPY;
pub use export::{Acting, DirStream, ExportRoot, OpenFile, SetIdBits};
pub use identity::{BadAnonymousId, Identity, IdentityMap, Squash, DEFAULT_ANON_ID};
pub use metrics::{serve_http as serve_metrics, Metrics};
pub use recovery::DEFAULT_GRACE;
pub use security::{Security, TlsServer};
pub use sys::{keep_request_buffers, limit_malloc_arenas};

use budget::{Descriptors, ReplyMemory};
use connection::Context;
use exports::Exports;
use policy::Policy;
use recovery::Recovery;
use registry::Registries;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;
use std::thread;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

/// How many clients a server serves at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// How many of those may come from one address unless told otherwise: a
/// quarter, so one host cannot take every slot.
pub const DEFAULT_MAX_PER_ADDRESS: usize = DEFAULT_MAX_CONNECTIONS / 4;
/// How long a connection that holds nothing may stay idle unless told otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// After shutdown is asked for, connections get this long to finish the requests
/// they are running and send the replies.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after an accept error that means "out of resources" (EMFILE, ENOBUFS, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What to serve, where, and how.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The default export: what a client that names no export gets (`ferry serve DIR`).
    pub root: Option<PathBuf>,
    /// Named exports (`--export NAME=DIR`), reached as `HOST:PORT/NAME`.
    pub exports: Vec<(String, PathBuf)>,
    /// The address to listen on; port 0 picks a free one (see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Every mutation answers EROFS.
    pub read_only: bool,
    /// Clients served at once; further ones wait in the listen queue until a slot frees.
    pub max_connections: usize,
    /// Connections from one IP address at once; a further one is closed at once.
    pub max_per_address: usize,
    /// A connection that holds no open file and no lock, and asks nothing but
    /// pings for this long, is closed (its client reconnects when it needs to).
    pub idle_timeout: Duration,
    /// TLS and client authentication, or `--insecure`.
    pub security: Security,
    /// Which clients' users act as the anonymous user, and who that is (a
    /// client's root, by default). Takes effect when the server runs as root;
    /// otherwise every request acts as the server's own user.
    pub identities: IdentityMap,
    /// Clients may make device nodes (root only; refused with EPERM otherwise).
    pub allow_devices: bool,
    /// How long, after the server starts, clients may reclaim the locks they
    /// held before (no new lock is granted meanwhile), and how long the locks
    /// of a client whose connection ended are kept for it to reclaim. Zero:
    /// locks end with their connection, and none survive a restart.
    pub grace: Duration,
    /// Where the server records which clients may hold locks, so that the
    /// grace period after a restart waits only for them (and is skipped when
    /// none did). Without it the grace period lasts its whole length.
    pub lock_record: Option<PathBuf>,
    /// Memory for requests and replies in flight shared by all connections,
    /// beyond each connection's own small share (see `budget`).
    pub reply_memory: usize,
    /// Descriptors (open files and lock descriptors) all clients together may
    /// hold; `None`: what the open file limit leaves once the server's own
    /// needs are set aside.
    pub max_descriptors: Option<usize>,
}

impl ServerConfig {
    /// Exporting `root` on `listen` with `security`, and the defaults: writable,
    /// root squashed, no device nodes, the default limits.
    pub fn new(root: PathBuf, listen: SocketAddr, security: Security) -> ServerConfig {
        ServerConfig {
            root: Some(root),
            exports: Vec::new(),
            listen,
            read_only: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_address: DEFAULT_MAX_PER_ADDRESS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            security,
            identities: IdentityMap::default(),
            allow_devices: false,
            grace: DEFAULT_GRACE,
            lock_record: None,
            reply_memory: DEFAULT_REPLY_MEMORY,
            max_descriptors: None,
        }
    }
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    context: Arc<Context>,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// One permit per connection being served.
    slots: Arc<Semaphore>,
    max_per_address: usize,
}

impl Server {
    /// Opens the exports (fails with a clear error if one is not a directory)
    /// and binds the listener.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        if config.max_connections == 0 || config.max_per_address == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connection limits must be at least 1",
            ));
        }
        let identities = config
            .identities
            .checked()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let exports = Exports::open(config.root.as_ref(), &config.exports)?;
        let limit = raise_open_file_limit();
        let descriptors = match config.max_descriptors {
            Some(total) => Descriptors::new(total),
            None => Descriptors::for_limit(limit, config.max_connections),
        };
        log::debug!(
            "descriptor budget: {} for all clients, {} per connection",
            descriptors.total(),
            descriptors.per_connection()
        );
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let local_addr = listener.local_addr()?;
        let how = match config.security {
            Security::Tls(_) => "",
            Security::Insecure => " without TLS or authentication",
        };
        if let Some(export) = exports.default_export() {
            log::debug!("exporting {} on {local_addr}{how}", export.path().display());
        }
        for (name, export) in exports.named() {
            log::debug!(
                "exporting {} as {name} on {local_addr}{how}",
                export.path().display()
            );
        }
        let registries = Registries::new(
            exports
                .default_export()
                .into_iter()
                .chain(exports.named().map(|(_, root)| root)),
        );
        Ok(Server {
            context: Arc::new(Context {
                exports: Arc::new(exports),
                policy: Policy {
                    read_only: config.read_only,
                    identities,
                    allow_devices: config.allow_devices,
                },
                metrics: Arc::new(Metrics::default()),
                security: config.security,
                idle_timeout: config.idle_timeout,
                registries: Arc::new(registries),
                pool: tokio::runtime::Handle::current(),
                recovery: Arc::new(Recovery::start(config.grace, config.lock_record)),
                descriptors: Arc::new(descriptors),
                memory: ReplyMemory::new(config.reply_memory),
                stalls: stalls::Stalls::default(),
            }),
            listener,
            local_addr,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            max_per_address: config.max_per_address,
        })
    }

    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What this server counts, for `--metrics` (see [`serve_metrics`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.context.metrics)
    }

    /// Whether requests act as the clients' (mapped) users: the server runs as
    /// root. If not, every request acts as the server's own user.
    pub fn acts_as_clients(&self) -> bool {
        self.context.exports.acts_as_clients()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets connections
    /// finish the requests they are running (for a few seconds at most), and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server {
            context,
            listener,
            slots,
            max_per_address,
            ..
        } = self;
        let per_address = Arc::new(PerAddress::default());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        let _housekeeping = Housekeeping::start(&context)?;

        loop {
            // A free slot first, then a client: at the limit, new clients wait in
            // the listen queue rather than being accepted and left hanging.
            let slot = tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = connections.join_next() => {
                    report_panic(done);
                    continue;
                }
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = connections.join_next() => {
                    report_panic(done);
                    continue;
                }
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        accept_failed(e).await?;
                        continue;
                    }
                },
            };
            let Some(counted) = PerAddress::enter(&per_address, peer.ip(), max_per_address) else {
                log::info!(
                    "{peer}: refused: already {max_per_address} connections from {}",
                    peer.ip()
                );
                continue;
            };
            log::debug!("{peer}: connected");
            let served = match connection::spawn(stream, Arc::clone(&context), stop_rx.clone()) {
                Ok(served) => served,
                Err(e) => {
                    log::warn!("{peer}: cannot serve the connection: {e}");
                    continue;
                }
            };
            connections.spawn(async move {
                let _slot = slot;
                let _counted = counted;
                match served.await {
                    Ok(Ok(())) => log::debug!("{peer}: disconnected"),
                    Ok(Err(e)) => log::info!("{peer}: connection closed: {e}"),
                    Err(_) => log::warn!("{peer}: the connection's thread ended without a word"),
                }
            });
        }

        drop(listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(done) = connections.join_next().await {
                report_panic(done);
            }
        })
        .await;
        if drained.is_err() {
            log::warn!(
                "{} connection(s) still busy after {} s; closing them",
                connections.len(),
                SHUTDOWN_GRACE.as_secs()
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

/// Connections being served, by client address.
#[derive(Debug, Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted against its address; uncounted when dropped.
struct Counted {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// Counts a connection from `ip`, unless `limit` are there already.
    fn enter(table: &Arc<PerAddress>, ip: IpAddr, limit: usize) -> Option<Counted> {
        let mut counts = ferry_common::sync::lock(&table.0);
        let count = counts.entry(ip).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Counted {
            table: Arc::clone(table),
            ip,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = ferry_common::sync::lock(&self.table.0);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

fn report_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            log::error!("a connection task panicked: {e}");
        }
    }
}

/// Decides whether the accept loop goes on after `e`: errors about one
/// connection or about a momentary lack of resources are logged and survived.
async fn accept_failed(e: io::Error) -> io::Result<()> {
    match e.raw_os_error() {
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EINTR | libc::EAGAIN | libc::EPROTO) => {
            log::debug!("accept: {e}");
            Ok(())
        }
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            log::warn!("cannot accept a connection: {e}; retrying shortly");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            Ok(())
        }
        _ => Err(io::Error::new(
            e.kind(),
            format!("cannot accept connections: {e}"),
        )),
    }
}

/// Each open file of each client is a descriptor; lift the soft limit to the
/// hard one, as the default of 1024 is easily reached by a few busy clients.
/// Returns the soft limit in force afterwards.
fn raise_open_file_limit() -> u64 {
    let Ok((soft, hard)) = sys::open_file_limit() else {
        return 1024;
    };
    if soft < hard {
        if let Err(e) = sys::set_open_file_limit(hard, hard) {
            log::debug!("cannot raise the open file limit: {e}");
            return soft;
        }
    }
    hard.max(soft)
}

/// The server's housekeeping, on a thread of its own while it runs: the
/// watchdog of stuck requests (see `stalls`), and every second the sweep of
/// kept locks and the trimming of memory given back.
struct Housekeeping {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// How often the recovery sweep and the heap trimming run.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Housekeeping {
    fn start(context: &Arc<Context>) -> io::Result<Housekeeping> {
        let stop = Arc::new(AtomicBool::new(false));
        let context: Weak<Context> = Arc::downgrade(context);
        let stopped = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("ferry-housekeeping".into())
            .spawn(move || {
                let mut swept = Instant::now();
                while !stopped.load(Ordering::Relaxed) {
                    thread::sleep(stalls::TICK);
                    let Some(context) = context.upgrade() else {
                        return;
                    };
                    context.stalls.check();
                    if swept.elapsed() >= SWEEP_EVERY {
                        swept = Instant::now();
                        context.recovery.sweep();
                        context.memory.trim_if_returned();
                    }
                }
            })?;
        Ok(Housekeeping {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Housekeeping {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A server running in its own thread with its own runtime, for tests. Dropping
/// the handle shuts the server down and waits for its thread.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    security: Security,
}

impl ServerHandle {
    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How the server meets clients (to restart it with the same identity).
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// The server's TLS set-up, unless it runs `--insecure`.
    pub fn tls(&self) -> Option<&TlsServer> {
        match &self.security {
            Security::Tls(tls) => Some(tls),
            Security::Insecure => None,
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the test server thread panicked");
            }
        }
    }
}

/// TLS and authentication for a test server of `root`, as `ferry serve` sets
/// them up on first start, with the state directory in a temporary one that
/// goes with the last reference to it.
pub fn test_security(root: &Path) -> io::Result<Security> {
    let tls = TlsServer::scratch(root).map_err(io::Error::other)?;
    Ok(Security::Tls(Arc::new(tls)))
}

/// The configuration of a server for tests: `root` on 127.0.0.1 with a free
/// port, meeting clients as `security` says, and a client's root is root on
/// the server (`--no-root-squash`, as NFS test setups run), since tests run as
/// root and check what root may do. Tests about squashing set
/// [`ServerConfig::identities`] back.
pub fn test_config(root: &Path, security: Security) -> ServerConfig {
    let mut config = ServerConfig::new(
        root.to_path_buf(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        security,
    );
    config.max_connections = 64;
    config.identities.squash = Squash::None;
    // Locks end with their connection, as most tests expect; the tests of
    // lock recovery set a grace period (and a record) of their own.
    config.grace = Duration::ZERO;
    config
}

/// Starts a server for `root` on 127.0.0.1 with a free port, in its own thread
/// and tokio runtime, and returns once it listens. It has TLS and client
/// authentication, as `ferry serve` does, with an identity and a token made for
/// it in a temporary state directory ([`ServerHandle::tls`] gives them); see
/// [`test_config`] for the rest.
pub fn spawn_test_server(root: &Path, read_only: bool) -> io::Result<ServerHandle> {
    let mut config = test_config(root, test_security(root)?);
    config.read_only = read_only;
    spawn_server(config)
}

/// Starts a server with `config` in its own thread and tokio runtime, and returns
/// once it listens (tests use it to restart a server on the same address).
pub fn spawn_server(config: ServerConfig) -> io::Result<ServerHandle> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let security = config.security.clone();
    let thread = thread::Builder::new()
        .name("ferry-test-server".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("ferry-test-server")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let server = match Server::bind(config).await {
                    Ok(server) => server,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(server.local_addr()));
                // A dropped handle (sender gone) stops the server as surely as a sent stop.
                let stopped = async move {
                    let _ = stop_rx.await;
                };
                if let Err(e) = server.run(stopped).await {
                    log::error!("test server: {e}");
                }
            });
            runtime.shutdown_timeout(SHUTDOWN_GRACE);
        })?;
    let addr = match ready_rx.recv() {
        Ok(result) => result,
        Err(_) => Err(io::Error::other(
            "the test server thread ended before it listened",
        )),
    };
    let mut handle = ServerHandle {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        stop: Some(stop_tx),
        thread: Some(thread),
        security,
    };
    handle.addr = addr?;
    Ok(handle)
}
