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
//! - `listings`: one connection's listings under way, each an open directory
//!   stream (`export::DirStream`) the client goes on with by cursor, bounded in
//!   number and idle time.
//! - `dispatch`: turns each request into an export call, acting as its
//!   identity, and its reply.
//! - `schedule`: where each request runs (on the connection's reader, or on the
//!   blocking pool) and whether it waits for earlier requests on its handle.
//! - `sequencer`: the per-handle queues that keep those requests in order.
//! - `connection`: one client: the handshake, a reader that runs each request
//!   where `schedule` says, and a single writer that batches the replies.
//! - `metrics`: what the server counts, and the `--metrics` HTTP responder.
//! - `sys`: the few system calls outside the export (descriptor limit, socket
//!   options).
//! - this file: [`Server`], which accepts connections up to a limit and stops
//!   gracefully, and [`spawn_test_server`] for tests.
//!
//! The wire format itself belongs to `ferry_common`.

#![warn(unreachable_pub)]

mod connection;
mod dispatch;
mod export;
mod exports;
mod handles;
mod identity;
mod listings;
mod metrics;
mod policy;
mod schedule;
mod sequencer;
mod sys;

pub use connection::CONNECTION_BUDGET;
pub use dispatch::MAX_COPY;
pub use export::{Acting, DirStream, ExportRoot, OpenFile, SetIdBits};
pub use identity::{BadAnonymousId, Identity, IdentityMap, Squash, DEFAULT_ANON_ID};
pub use metrics::{serve_http as serve_metrics, Metrics};

use exports::Exports;
use policy::Policy;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;

/// How many clients a server serves at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
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
    /// Which clients' users act as the anonymous user, and who that is (a
    /// client's root, by default). Takes effect when the server runs as root;
    /// otherwise every request acts as the server's own user.
    pub identities: IdentityMap,
    /// Clients may make device nodes (root only; refused with EPERM otherwise).
    pub allow_devices: bool,
}

impl ServerConfig {
    /// Serving `root` on `listen` with the defaults: writable, root squashed,
    /// no device nodes, [`DEFAULT_MAX_CONNECTIONS`].
    pub fn new(root: PathBuf, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            root: Some(root),
            exports: Vec::new(),
            listen,
            read_only: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            identities: IdentityMap::default(),
            allow_devices: false,
        }
    }
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    exports: Arc<Exports>,
    listener: TcpListener,
    local_addr: SocketAddr,
    policy: Policy,
    /// One permit per connection being served.
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Opens the exports (fails with a clear error if one is not a directory)
    /// and binds the listener.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        if config.max_connections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connection limit must be at least 1",
            ));
        }
        let identities = config
            .identities
            .checked()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let exports = Exports::open(config.root.as_ref(), &config.exports)?;
        raise_open_file_limit();
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let local_addr = listener.local_addr()?;
        if let Some(export) = exports.default_export() {
            log::debug!("exporting {} on {local_addr}", export.path().display());
        }
        for (name, export) in exports.named() {
            log::debug!(
                "exporting {} as {name} on {local_addr}",
                export.path().display()
            );
        }
        Ok(Server {
            exports: Arc::new(exports),
            listener,
            local_addr,
            policy: Policy {
                read_only: config.read_only,
                identities,
                allow_devices: config.allow_devices,
            },
            slots: Arc::new(Semaphore::new(config.max_connections)),
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What this server counts, for `--metrics` (see [`serve_metrics`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Whether requests act as the clients' (mapped) users: the server runs as
    /// root. If not, every request acts as the server's own user.
    pub fn acts_as_clients(&self) -> bool {
        self.exports.acts_as_clients()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets connections
    /// finish the requests they are running (for a few seconds at most), and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server {
            exports,
            listener,
            policy,
            slots,
            metrics,
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);

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
            log::debug!("{peer}: connected");
            let exports = Arc::clone(&exports);
            let metrics = Arc::clone(&metrics);
            let stop = stop_rx.clone();
            connections.spawn(async move {
                let _slot = slot;
                match connection::serve(stream, exports, policy, metrics, stop).await {
                    Ok(()) => log::debug!("{peer}: disconnected"),
                    Err(e) => log::info!("{peer}: connection closed: {e}"),
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
fn raise_open_file_limit() {
    let Ok((soft, hard)) = sys::open_file_limit() else {
        return;
    };
    if soft < hard {
        if let Err(e) = sys::set_open_file_limit(hard, hard) {
            log::debug!("cannot raise the open file limit: {e}");
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
}

impl ServerHandle {
    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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

/// The configuration of a server for tests: `root` on 127.0.0.1 with a free
/// port, and a client's root is root on the server (`--no-root-squash`, as NFS
/// test setups run), since tests run as root and check what root may do.
/// Tests about squashing set [`ServerConfig::identities`] back.
pub fn test_config(root: &Path) -> ServerConfig {
    let mut config = ServerConfig::new(root.to_path_buf(), SocketAddr::from(([127, 0, 0, 1], 0)));
    config.max_connections = 64;
    config.identities.squash = Squash::None;
    config
}

/// Starts a server with [`test_config`] in its own thread and tokio runtime,
/// and returns once it listens.
pub fn spawn_test_server(root: &Path, read_only: bool) -> io::Result<ServerHandle> {
    let mut config = test_config(root);
    config.read_only = read_only;
    spawn_server(config)
}

/// Starts a server with `config` in its own thread and tokio runtime, and returns
/// once it listens (tests use it to restart a server on the same address).
pub fn spawn_server(config: ServerConfig) -> io::Result<ServerHandle> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
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
    };
    handle.addr = addr?;
    Ok(handle)
}
