//! ferry's export server: serves one local directory to ferry clients over TCP.
//!
//! A tour of the modules:
//!
//! - `export`: [`ExportRoot`], the confined view of the exported directory and
//!   the server's storage interface, and [`OpenFile`], what a handle stands for.
//!   Every file system call lives there, as plain methods returning
//!   `Result<T, Errno>`; nothing outside the root is reachable (`openat2` with
//!   `RESOLVE_BENEATH`, no symlink ever followed). Its raw system calls are all
//!   in `export::sys`.
//! - `handles`: one connection's open files, by handle number.
//! - `dispatch`: turns each protocol operation into an export call and its reply;
//!   a read-only export answers every mutation with EROFS.
//! - `schedule`: where each request runs (on the connection's reader, or on the
//!   blocking pool) and whether it waits for earlier requests on its handle.
//! - `sequencer`: the per-handle queues that keep those requests in order.
//! - `connection`: one client: the handshake, a reader that runs each request
//!   where `schedule` says, and a single writer that batches the replies.
//! - `sys`: the few system calls outside the export (descriptor limit, socket
//!   options).
//! - `fuzz` (in tests, and in builds with `--cfg fuzzing`): the fuzz targets —
//!   the frame decoder, the handshake, the dispatch of operations — which run
//!   as bounded tests on stable and coverage-guided under `fuzz/`.
//! - this file: [`Server`], which accepts connections up to a limit and stops
//!   gracefully, and [`spawn_test_server`] for tests.
//!
//! The wire format itself belongs to `ferry_common`.

#![warn(unreachable_pub)]

mod connection;
mod dispatch;
mod export;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
mod handles;
mod schedule;
mod sequencer;
mod sys;

pub use dispatch::MAX_COPY;
pub use export::{ExportRoot, OpenFile};

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
    /// The directory to export.
    pub root: PathBuf,
    /// The address to listen on; port 0 picks a free one (see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Every mutation answers EROFS.
    pub read_only: bool,
    /// Clients served at once; further ones wait in the listen queue until a slot frees.
    pub max_connections: usize,
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    export: Arc<ExportRoot>,
    listener: TcpListener,
    local_addr: SocketAddr,
    read_only: bool,
    /// One permit per connection being served.
    slots: Arc<Semaphore>,
}

impl Server {
    /// Opens the export root (fails with a clear error if it is not a directory)
    /// and binds the listener.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        if config.max_connections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connection limit must be at least 1",
            ));
        }
        let export = ExportRoot::open(&config.root)?;
        raise_open_file_limit();
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let local_addr = listener.local_addr()?;
        log::debug!(
            "exporting {}{} on {local_addr}",
            export.path().display(),
            if config.read_only { " read-only" } else { "" }
        );
        Ok(Server {
            export: Arc::new(export),
            listener,
            local_addr,
            read_only: config.read_only,
            slots: Arc::new(Semaphore::new(config.max_connections)),
        })
    }

    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets connections
    /// finish the requests they are running (for a few seconds at most), and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Server {
            export,
            listener,
            read_only,
            slots,
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
            let export = Arc::clone(&export);
            let stop = stop_rx.clone();
            connections.spawn(async move {
                let _slot = slot;
                match connection::serve(stream, export, read_only, stop).await {
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

/// Starts a server for `root` on 127.0.0.1 with a free port, in its own thread
/// and tokio runtime, and returns once it listens.
pub fn spawn_test_server(root: &Path, read_only: bool) -> io::Result<ServerHandle> {
    spawn_server(ServerConfig {
        root: root.to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        read_only,
        max_connections: 64,
    })
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
