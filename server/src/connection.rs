//! One client connection: the handshake, then many requests at once.
//!
//! The handshake comes first and has one deadline ([`HANDSHAKE_TIMEOUT`]): TLS
//! (unless the server runs `--insecure`; a client speaking the other way is
//! told so in a plaintext refusal), then the client's `Hello` (at most
//! [`MAX_HELLO`] bytes) with its credential — a proof of the export's token
//! bound to this TLS session, or a client certificate listed in
//! `authorized_clients`. Nothing the client sends is acted on before it is
//! welcomed. A welcomed connection that holds nothing (no open file, no lock)
//! and asks for nothing but pings for the idle timeout is closed.
//!
//! ```text
//!  socket ─► reader (this thread) ─┬─► inline: Session::handle, encode ─────────┐
//!              │                   └─► blocking pool: Session::handle, encode ──┤ mpsc
//!              │ waits for budget        (in its handle's queue, or at once)    ▼
//!              └──────── budget comes back once the reply is written ◄─ writer task ─► socket
//! ```
//!
//! Each connection has a thread of its own, with a small runtime of its own
//! for its socket: the reader waits for the socket there, and the writer is a
//! task on it. The reader decodes each frame and runs its request where
//! [`schedule`](crate::schedule) says: quick ones (metadata, small writes, a
//! small read when it is the only request or the page cache holds it) right
//! on the reader's thread, as a thread hand-off would cost more than the call;
//! anything that may block for long (bulk data, fsync, listings, truncation)
//! on the server's blocking pool, so it never holds up a quick stat. Requests
//! that change an open file run in arrival order per handle (see
//! [`crate::sequencer`]). Replies go, in whatever order they finish, through a
//! channel to the writer task, which writes everything queued at that moment
//! with one system call.
//!
//! **A quick request that is not quick** — a `stat` inside a hung mount within
//! the export, a disk that stalls — holds up only itself: it runs outside the
//! connection's runtime, with the reader's state set down beside it, and if
//! it is still running after [`crate::stalls::STALL`] the server's watchdog
//! hands that state to a new thread, which goes on reading the connection's
//! requests (see [`crate::stalls`]). The stuck thread sends its reply if it
//! ever gets one, and ends. Other connections never share a thread with this
//! one, so they are not held up at all.
//!
//! A subscribed connection (see [`crate::effects`]) is also sent notices,
//! unasked: the writer sends whatever its [`Subscriber`] has waiting each time
//! it wakes, and it wakes for them too.
//!
//! Before reading the next request the reader takes a share of the budget (a
//! number of requests in flight, and memory for the request and its reply:
//! the connection's own, then the server's shared pool; see
//! [`crate::budget`]), which the writer gives back when the reply is on the
//! wire; a client that sends faster than it reads therefore stalls itself and
//! cannot make the server hoard memory.
//!
//! Anything malformed (a frame that does not decode, an oversized or truncated
//! frame) ends this connection only; other clients never notice.

use crate::budget::{
    ConnectionMemory, DescriptorAccount, Descriptors, MemoryShare, ReplyMemory, CONNECTION_CAP_KIB,
};
use crate::dispatch::Session;
use crate::export::ExportRoot;
use crate::exports::Exports;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::recovery::{ClientId, Recovery, Registration};
use crate::registry::{Registries, Registry, Subscriber};
use crate::schedule::{schedule, Company, Schedule};
use crate::security::{Security, TlsServer};
use crate::sequencer::Sequencer;
use crate::stalls::{Baton, Stalls};
use ferry_common::auth::{Fingerprint, EXPORTER_LABEL, SECRET_LEN};
use ferry_common::counters::op_kind;
use ferry_common::frame::{self, FrameError, RequestFrame, MAX_CHUNK};
use ferry_common::proto::{
    Auth, Change, HandshakeReply, Hello, Notice, Op, Reply, Request, Response, ServerMessage,
    Welcome, LISTING_BYTES, MAGIC, MAX_HELLO, MAX_OPEN_DATA, PROTOCOL_VERSION, READ_FILES_BYTES,
    READ_FILES_EACH,
};
use ferry_common::records;
use ferry_common::state::AUTHORIZED_CLIENTS;
use ferry_common::sync::lock;
use ferry_common::tls;
use ferry_common::Errno;
use std::io;
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf,
    WriteHalf,
};
use tokio::net::TcpStream;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long the first bytes of a TLS record may take to follow the first.
const SNIFF_WAIT: Duration = Duration::from_secs(1);
/// How long a new connection may take to send its `Hello`.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Once the first byte of a frame has arrived, the rest must follow within this.
const FRAME_TIMEOUT: Duration = Duration::from_secs(120);
/// A client that does not take its replies for this long is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests of one connection being handled or waiting to be written.
pub(crate) const MAX_IN_FLIGHT: usize = 64;
/// The most bytes (requests plus expected replies) one connection has in
/// flight (see [`CONNECTION_CAP_KIB`]).
pub const CONNECTION_BUDGET: usize = CONNECTION_CAP_KIB as usize * 1024;
/// What a directory page is charged before its size is known.
const READDIR_COST: usize = 64 * 1024;
/// Replies at least this big are written on their own rather than copied into the batch.
const LARGE_FRAME: usize = 64 * 1024;
/// The writer sends its batch once it holds this much.
const BATCH_LIMIT: usize = 256 * 1024;
const READ_BUFFER: usize = 64 * 1024;
/// A notice frame holds about this many bytes of changes at most (well below
/// the frame limit); more changes go in further frames.
const NOTICE_FRAME: usize = 1 << 20;
/// Bytes read from the socket at a time beneath rustls (during the handshake;
/// after it ferry's record layer reads for itself) and in plaintext.
const SOCKET_BUFFER: usize = 256 * 1024;

/// What a connection is served: the directory its paths are relative to, and
/// the coherent caches' registry of that directory.
type Served = (Arc<ExportRoot>, Arc<Registry>);

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Context {
    /// The exports a client may ask for (see [`Exports::choose`]).
    pub(crate) exports: Arc<Exports>,
    /// What the server refuses and how it maps identities.
    pub(crate) policy: Policy,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) security: Security,
    /// A connection that holds nothing (no open file, no lock) and sends no
    /// request but pings for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// The server's runtime, whose blocking pool runs the requests that may
    /// take long.
    pub(crate) pool: Handle,
    /// Clients' locks across reconnects and restarts.
    pub(crate) recovery: Arc<Recovery>,
    pub(crate) descriptors: Arc<Descriptors>,
    pub(crate) memory: ReplyMemory,
    /// Connections running a request on their reader's thread, for the watchdog.
    pub(crate) stalls: Stalls,
    /// The coherent caches' registries, one per directory served.
    pub(crate) registries: Arc<Registries>,
}

/// A connection's byte stream once the handshake has settled how it is
/// carried: TLS, or plaintext under `--insecure`.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type Transport = Box<dyn Stream>;
type Reader = BufReader<ReadHalf<Transport>>;
type Writer = WriteHalf<Transport>;

/// How a connection ended: `Err` says why it was closed early.
pub(crate) type Outcome = Result<(), FrameError>;

/// Serves one client on a thread of its own until it leaves, breaks the
/// protocol, idles out, is replaced by a newer connection of the same client,
/// or `stop` turns true; the receiver gets how it ended.
pub(crate) fn spawn(
    stream: TcpStream,
    ctx: Arc<Context>,
    stop: watch::Receiver<bool>,
) -> io::Result<oneshot::Receiver<Outcome>> {
    let stream = stream.into_std()?;
    let (done_tx, done_rx) = oneshot::channel();
    thread::Builder::new()
        .name("ferry-conn".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = done_tx.send(Err(FrameError::Io(e)));
                    return;
                }
            };
            let metrics = Arc::clone(&ctx.metrics);
            let _open = metrics.accepted();
            match runtime.block_on(welcome_client(stream, &ctx, stop)) {
                Ok(Some((transport, session, stop))) => {
                    let (serving, reading) =
                        Serving::start(runtime, ctx, transport, session, stop, done_tx);
                    read_requests(serving, reading);
                }
                Ok(None) => {
                    let _ = done_tx.send(Ok(()));
                }
                Err(e) => {
                    let _ = done_tx.send(Err(e));
                }
            }
        })?;
    Ok(done_rx)
}

/// The handshake, under its deadline: the client's transport and its
/// session, or `None` when it left or was refused (and told why).
async fn welcome_client(
    stream: std::net::TcpStream,
    ctx: &Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<(Transport, Session, watch::Receiver<bool>)>, FrameError> {
    let metrics = &ctx.metrics;
    let stream = TcpStream::from_std(stream)?;
    stream.set_nodelay(true)?;
    // A client that vanished (a laptop put to sleep, a cable pulled) is
    // noticed after a few minutes, and its open files and slot given back.
    let (idle, interval) = (Duration::from_secs(60), Duration::from_secs(15));
    if let Err(e) = ferry_common::socket::set_keepalive(stream.as_fd(), idle, interval, 4) {
        log::debug!("cannot enable TCP keepalive: {e}");
    }
    // The whole handshake, TLS and credentials included, has one deadline: a
    // peer that connects and says nothing holds a slot for that long at most.
    let accepted = tokio::select! {
        biased;
        _ = stop.wait_for(|stopped| *stopped) => return Ok(None),
        accepted = timeout(HANDSHAKE_TIMEOUT, accept(stream, ctx)) => accepted,
    };
    let (transport, (export, registry), client) = match accepted {
        Err(_) => {
            metrics.refused();
            return Err(FrameError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
            )));
        }
        Ok(Ok(Some(welcomed))) => welcomed,
        Ok(Ok(None)) => {
            metrics.refused();
            return Ok(None);
        }
        Ok(Err(e)) => {
            metrics.refused();
            return Err(e);
        }
    };
    let descriptors: Arc<DescriptorAccount> = ctx.descriptors.account();
    let session = Session::new(
        export,
        registry,
        ctx.policy,
        Arc::clone(&ctx.recovery),
        descriptors,
        client,
    );
    Ok(Some((transport, session, stop)))
}

/// What reads a connection's requests, passed from thread to thread when a
/// request gets stuck (see [`crate::stalls`]).
pub(crate) struct Reading {
    reader: Reader,
    /// When the client last asked for anything but a ping.
    active: Instant,
    stop: watch::Receiver<bool>,
    replaced: Option<watch::Receiver<bool>>,
}

/// One welcomed connection, shared by the thread reading it now and any
/// thread still finishing a request that got stuck.
pub(crate) struct Serving {
    /// The connection's own runtime: its socket, its writer task.
    runtime: Runtime,
    ctx: Arc<Context>,
    session: Arc<Session>,
    sequencer: Arc<Sequencer>,
    /// Taken (and so closed) when the connection ends.
    tx: Mutex<Option<mpsc::Sender<Outgoing>>>,
    writer: Mutex<Option<JoinHandle<io::Result<()>>>>,
    requests: Arc<Semaphore>,
    memory: ConnectionMemory,
    registration: Option<Registration>,
    /// The reader's state while a request runs inline (see [`crate::stalls`]).
    pub(crate) baton: Baton<Reading>,
    done: Mutex<Option<oneshot::Sender<Outcome>>>,
}

/// What the reader got next.
enum Next {
    Request(Box<Incoming>),
    End(Outcome),
}

/// A request read, with its budget.
struct Incoming {
    request: Request,
    budget: Budget,
    /// What else the connection had going when it was read.
    company: Company,
}

impl Serving {
    /// Sets a welcomed connection up: its writer, its budgets, its place
    /// among its client's connections and in the watchdog's list.
    fn start(
        runtime: Runtime,
        ctx: Arc<Context>,
        transport: Transport,
        session: Session,
        stop: watch::Receiver<bool>,
        done: oneshot::Sender<Outcome>,
    ) -> (Arc<Serving>, Reading) {
        let (read_half, write_half) = tokio::io::split(transport);
        let reader = BufReader::with_capacity(READ_BUFFER, read_half);
        let (tx, rx) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT);
        let writer = {
            let _entered = runtime.enter();
            tokio::spawn(write_replies(
                write_half,
                rx,
                Arc::clone(&ctx.metrics),
                session.subscriber(),
            ))
        };
        let session = Arc::new(session);
        let registration = ctx.recovery.connected(session.client(), session.locks());
        let replaced = registration.as_ref().map(|r| r.replaced.clone());
        let serving = Arc::new(Serving {
            runtime,
            memory: ctx.memory.connection(),
            ctx: Arc::clone(&ctx),
            session,
            sequencer: Arc::new(Sequencer::new()),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            requests: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            registration,
            baton: Baton::new(),
            done: Mutex::new(Some(done)),
        });
        ctx.stalls.watch(&serving);
        let reading = Reading {
            reader,
            active: Instant::now(),
            stop,
            replaced,
        };
        (serving, reading)
    }

    /// Reads the next request and takes its budget, within the connection's
    /// runtime; ends the connection when it closes, idles out, is replaced,
    /// breaks the protocol or the server stops.
    async fn next_request(&self, r: &mut Reading) -> Next {
        let Some(tx) = lock(&self.tx).clone() else {
            return Next::End(Ok(()));
        };
        let Reading {
            reader,
            active,
            stop,
            replaced,
        } = r;
        // Each wait below also ends when the server stops, a newer connection
        // of the client replaces this one, or the writer is gone.
        let slot = tokio::select! {
            biased;
            _ = closing(stop, replaced) => return Next::End(Ok(())),
            _ = tx.closed() => return Next::End(Ok(())),
            slot = Arc::clone(&self.requests).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return Next::End(Ok(())),
            },
        };
        // A client holding nothing, with nothing in flight, may be idle only
        // so long: connections are a shared budget.
        let holds_nothing = || {
            self.session.holds_nothing() && self.requests.available_permits() == MAX_IN_FLIGHT - 1
        };
        let idle_timeout = self.ctx.idle_timeout;
        let idle_until = *active + idle_timeout;
        let read = tokio::select! {
            biased;
            _ = closing(stop, replaced) => return Next::End(Ok(())),
            _ = tx.closed() => return Next::End(Ok(())),
            read = next_frame(reader, idle_until, idle_timeout, holds_nothing) => read,
        };
        let incoming = match read {
            Ok(Some(incoming)) => incoming,
            Ok(None) => return Next::End(Ok(())),
            Err(NextFrame::Idle) => {
                log::debug!(
                    "closing a connection idle for {} s that holds nothing",
                    idle_timeout.as_secs()
                );
                return Next::End(Ok(()));
            }
            Err(NextFrame::Failed(e)) => return Next::End(Err(e)),
        };
        let size = incoming.len();
        let request: Request = match incoming {
            // A write's data was read into its own buffer: no copy out of a frame.
            RequestFrame::Write {
                id,
                cred,
                handle,
                offset,
                data,
                ..
            } => Request {
                id,
                cred,
                op: Op::Write {
                    handle,
                    offset,
                    data,
                },
            },
            RequestFrame::Whole(payload) => match frame::decode(&payload) {
                Ok(request) => request,
                Err(e) => return Next::End(Err(e)),
            },
        };
        if request.op != Op::Ping {
            *active = Instant::now();
        }
        self.ctx.metrics.request(&request.op, size + 4);
        let cost = cost_kib(size, &request.op);
        let share = tokio::select! {
            biased;
            _ = closing(stop, replaced) => return Next::End(Ok(())),
            _ = tx.closed() => return Next::End(Ok(())),
            share = self.memory.acquire(cost) => match share {
                Ok(share) => share,
                Err(_) => return Next::End(Ok(())),
            },
        };
        let company = Company {
            behind: !reader.buffer().is_empty(),
            // A request's slot is given back once its reply is written.
            in_flight: self.requests.available_permits() < MAX_IN_FLIGHT - 1,
        };
        Next::Request(Box::new(Incoming {
            request,
            budget: (slot, share),
            company,
        }))
    }

    /// Queues a reply for the writer (from outside the connection's runtime).
    fn send(&self, outgoing: Outgoing) {
        let tx = lock(&self.tx).clone();
        if let Some(tx) = tx {
            // Never full: it holds as many replies as there are request slots.
            // If the writer is gone the connection is closing; nobody reads it.
            let _ = tx.blocking_send(outgoing);
        }
    }

    /// Starts `request` on the blocking pool; its reply goes to the writer.
    fn to_pool(&self, request: Request, budget: Budget) {
        let Some(tx) = lock(&self.tx).clone() else {
            return;
        };
        let job = job(&self.session, &self.ctx.metrics, tx, request, budget);
        drop(self.ctx.pool.spawn_blocking(job));
    }

    /// Ends the connection: its locks are kept for its client (or let go),
    /// the replies of requests already started are written, and whoever
    /// waits for the connection hears how it ended.
    fn finish(&self, outcome: Outcome) {
        if let Some(registration) = &self.registration {
            self.ctx
                .recovery
                .disconnected(registration, self.session.locks());
        }
        // The writer ends once the last request still running has sent its
        // reply and dropped its sender.
        drop(lock(&self.tx).take());
        let writer = lock(&self.writer).take();
        let written = match writer {
            None => Ok(()),
            Some(writer) => self.runtime.block_on(async {
                match timeout(WRITE_TIMEOUT, writer).await {
                    Ok(Ok(result)) => result.map_err(FrameError::from),
                    Ok(Err(e)) => Err(FrameError::Io(io::Error::other(format!(
                        "the reply writer failed: {e}"
                    )))),
                    Err(_) => Err(FrameError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "replies still unwritten when the connection closed",
                    ))),
                }
            }),
        };
        self.ctx.memory.returned();
        if let Some(done) = lock(&self.done).take() {
            let _ = done.send(outcome.and(written));
        }
    }
}

/// Reads and runs `serving`'s requests on this thread until the connection
/// ends, or until a request run here got stuck and another thread took over
/// the reading.
pub(crate) fn read_requests(serving: Arc<Serving>, mut reading: Reading) {
    loop {
        let next = serving.runtime.block_on(serving.next_request(&mut reading));
        let Incoming {
            request,
            budget,
            company,
        } = match next {
            Next::Request(incoming) => *incoming,
            Next::End(outcome) => return serving.finish(outcome),
        };
        let ctx = &serving.ctx;
        let session = &serving.session;
        let sequencer = &serving.sequencer;
        // Only this thread adds work to the sequencer, so a handle found idle
        // here stays idle while its request runs inline.
        match schedule(&request.op, company, |handle| sequencer.is_idle(handle)) {
            Schedule::Inline => {
                // Outside the runtime, the reading set down beside it: should
                // the call get stuck, another thread takes it up.
                let ticket = serving.baton.set_down(reading);
                let frame = answer(session, &ctx.metrics, request);
                serving.send(Outgoing { frame, budget });
                match serving.baton.take_back(ticket) {
                    Some(back) => reading = back,
                    None => return,
                }
            }
            Schedule::InlineIfCached => {
                let ticket = serving.baton.set_down(reading);
                match answer_from_cache(session, &ctx.metrics, &request) {
                    Some(frame) => serving.send(Outgoing { frame, budget }),
                    None => serving.to_pool(request, budget),
                }
                match serving.baton.take_back(ticket) {
                    Some(back) => reading = back,
                    None => return,
                }
            }
            Schedule::Pool => serving.to_pool(request, budget),
            Schedule::Ordered(handle) => {
                let Some(tx) = lock(&serving.tx).clone() else {
                    continue;
                };
                sequencer.run(
                    &ctx.pool,
                    handle,
                    job(session, &ctx.metrics, tx, request, budget),
                );
            }
        }
    }
}

/// Resolves when the server stops or a newer connection of the same client
/// replaces this one.
async fn closing(stop: &mut watch::Receiver<bool>, replaced: &mut Option<watch::Receiver<bool>>) {
    let replaced = async {
        match replaced {
            Some(rx) => {
                if rx.wait_for(|r| *r).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = stop.wait_for(|stopped| *stopped) => {}
        _ = replaced => {}
    }
}

/// Settles how the client is carried and whether it is let in: TLS and its
/// credentials (or plaintext under `--insecure`), then its `Hello`, which
/// names the export (and directory in it) the connection is served from.
/// `Ok(None)`: it left, or was refused and told why.
async fn accept(
    stream: TcpStream,
    ctx: &Context,
) -> Result<Option<(Transport, Served, ClientId)>, FrameError> {
    // The first bytes tell TLS from plaintext; they may come in pieces. A
    // peer that sends part of them and then nothing (or closes: a peek
    // cannot tell) is waited for a moment only, then read as plaintext,
    // whose reader sees the end or the garbage.
    let mut first = [0u8; tls::TLS_SNIFF];
    let mut seen = stream.peek(&mut first).await?;
    let sniff_until = Instant::now() + SNIFF_WAIT;
    while seen > 0
        && seen < first.len()
        && first[0] == tls::TLS_HANDSHAKE_RECORD
        && Instant::now() < sniff_until
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
        seen = stream.peek(&mut first).await?;
    }
    if seen == 0 {
        return Ok(None);
    }
    let speaks_tls = tls::opens_tls(&first[..seen]);
    // Beneath TLS, reads from the socket are buffered: rustls asks for a few
    // KiB at a time, and a system call per few KiB would cost more than a copy.
    let buffered = || BufReader::with_capacity(SOCKET_BUFFER, stream);
    match (&ctx.security, speaks_tls) {
        (Security::Tls(server), true) => {
            let capture = records::SecretCapture::new();
            let acceptor = tokio_rustls::TlsAcceptor::from(server.config_capturing(&capture));
            let mut tls = match acceptor.accept(buffered()).await {
                Ok(tls) => tls,
                Err(e) => {
                    return Err(FrameError::Io(io::Error::new(
                        e.kind(),
                        format!("TLS handshake failed: {e}"),
                    )))
                }
            };
            let Some(hello) = read_hello(&mut tls).await? else {
                return Ok(None);
            };
            let verdict = check_hello(&hello).and_then(|()| {
                authenticate(
                    server,
                    tls.get_ref().1,
                    &hello.auth,
                    hello.export.as_deref(),
                )
            });
            let Some(served) = welcome(&mut tls, ctx, &hello, verdict).await? else {
                return Ok(None);
            };
            // From here on the records are ferry's to seal and open (see
            // `ferry_common::records`). The client sent nothing after its
            // hello, so rustls holds nothing unread.
            let (buffered, conn) = tls.into_inner();
            let unread = buffered.buffer().to_vec();
            let records = records::take_over(buffered.into_inner(), unread, conn, &capture)
                .map_err(|e| FrameError::Io(io::Error::other(e)))?;
            Ok(Some((Box::new(records) as Transport, served, hello.client)))
        }
        (Security::Tls(_), false) => {
            let mut plain = buffered();
            if read_hello(&mut plain).await?.is_some() {
                let message = "this server requires TLS, and the client connected without it \
                           (--insecure): connect without --insecure";
                refuse_plaintext(plain, message).await;
            }
            Ok(None)
        }
        (Security::Insecure, true) => {
            let message = "this server runs without TLS (ferry serve --insecure): connect \
                           with --insecure, or restart the server without it";
            refuse_plaintext(buffered(), message).await;
            Ok(None)
        }
        (Security::Insecure, false) => {
            let mut plain = buffered();
            let Some(hello) = read_hello(&mut plain).await? else {
                return Ok(None);
            };
            let verdict = check_hello(&hello);
            Ok(welcome(&mut plain, ctx, &hello, verdict)
                .await?
                .map(|served| (Box::new(plain) as Transport, served, hello.client)))
        }
    }
}

/// The client's `Hello`, at most [`MAX_HELLO`] bytes; `None` if it left first.
async fn read_hello<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<Hello>, FrameError> {
    match frame::read_frame_limited_async(stream, MAX_HELLO).await? {
        Some(payload) => frame::decode(&payload).map(Some),
        None => Ok(None),
    }
}

/// Whether `hello` is a ferry client of this protocol version; the refusal
/// says what to do otherwise.
fn check_hello(hello: &Hello) -> Result<(), String> {
    if hello.magic != MAGIC {
        Err("this is a ferry server and the peer does not speak the ferry protocol".to_string())
    } else if hello.version != PROTOCOL_VERSION {
        Err(format!(
            "this server speaks ferry protocol version {PROTOCOL_VERSION} and the client \
             version {}; use the same ferry release on both sides",
            hello.version
        ))
    } else {
        Ok(())
    }
}

/// Whether the client on `conn` may come in: with a proof of the token of
/// the export it asks for (`export`: a name, or the default one) bound to
/// this session, or a client certificate listed in `authorized_clients`.
fn authenticate(
    server: &TlsServer,
    conn: &rustls::ServerConnection,
    auth: &Auth,
    export: Option<&str>,
) -> Result<(), String> {
    let certificate = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| Fingerprint::of(cert));
    if let Auth::TokenProof(proof) = auth {
        match conn.export_keying_material([0u8; SECRET_LEN], EXPORTER_LABEL, None) {
            Ok(exporter)
                if server
                    .token(export)
                    .is_some_and(|token| token.verify(&exporter, proof)) =>
            {
                return Ok(())
            }
            Ok(_) => {}
            Err(e) => log::warn!("cannot derive the session's exporter value: {e}"),
        }
    }
    if let Some(fingerprint) = certificate {
        match server.is_authorized(&fingerprint) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => log::warn!(
                "cannot read {}: {e}; no client certificate is let in",
                server.authorized_clients_path().display()
            ),
        }
    }
    Err(match (auth, certificate) {
        (Auth::TokenProof(_), _) => "the access token is not this export's: check the client's \
            --token-file or FERRY_TOKEN against the token file `ferry serve` printed"
            .to_string(),
        (Auth::Session, Some(fingerprint)) => format!(
            "this client's certificate {fingerprint} is not authorized: on the server, add the \
             line `{fingerprint}` to {}, or give the client the export's access token",
            AUTHORIZED_CLIENTS
        ),
        (Auth::Session, None) => "this server needs credentials: the export's access token \
            (--token-file FILE, or FERRY_TOKEN) or a client certificate listed in the server's \
            authorized_clients (make one with `ferry keygen`)"
            .to_string(),
    })
}

/// Answers the handshake with a welcome — serving the export and directory
/// `hello` names (see [`Exports::choose`]) — or with the refusal in `verdict`
/// (or the one choosing gives). `Ok(Some(root))`: the client is welcome.
async fn welcome<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &Context,
    hello: &Hello,
    verdict: Result<(), String>,
) -> Result<Option<Served>, FrameError> {
    let mut served = None;
    let reply = match verdict {
        Err(message) => HandshakeReply::Refused { message },
        Ok(()) => {
            let exports = Arc::clone(&ctx.exports);
            let registries = Arc::clone(&ctx.registries);
            let (name, subtree) = (hello.export.clone(), hello.subtree.clone());
            // Opening a subtree is a system call: off the async workers.
            let chosen =
                ctx.pool
                    .spawn_blocking(move || {
                        let chosen = exports.choose(name.as_deref(), &subtree)?;
                        let attr = chosen.root.root_attr().map_err(|e| {
                            format!("the server cannot read its export directory: {e}")
                        })?;
                        let registry = registries.for_root(&chosen.root, &attr);
                        Ok::<_, String>((chosen, registry, attr))
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("the server failed to open the export: {e}")));
            match chosen {
                Ok((chosen, registry, root)) => {
                    log::debug!(
                        "serving {} (export {}) to a client",
                        chosen.root.path().display(),
                        chosen.name.as_deref().unwrap_or("by default")
                    );
                    let acts_as_clients = chosen.root.acts_as_clients();
                    served = Some((chosen.root, registry));
                    HandshakeReply::Welcome(Welcome {
                        version: PROTOCOL_VERSION,
                        max_chunk: MAX_CHUNK,
                        read_only: ctx.policy.read_only,
                        features: ctx.policy.welcome_features(acts_as_clients),
                        root,
                        instance: ctx.recovery.instance(),
                        grace_ms: u64::try_from(ctx.recovery.grace_left().as_millis())
                            .unwrap_or(u64::MAX),
                    })
                }
                Err(message) => HandshakeReply::Refused { message },
            }
        }
    };
    frame::write_frame_async(stream, &reply).await?;
    match reply {
        HandshakeReply::Welcome(_) => Ok(served),
        HandshakeReply::Refused { message } => {
            log::info!("refused a client: {message}");
            let _ = stream.shutdown().await;
            drain(stream).await;
            Ok(None)
        }
    }
}

/// Tells a client that cannot be spoken to as it expects (TLS against a
/// plaintext server, or the reverse) why, in a plaintext handshake reply —
/// which the client recognises even where it expected TLS — and closes.
async fn refuse_plaintext<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, message: &str) {
    log::info!("refused a client: {message}");
    let reply = HandshakeReply::Refused {
        message: message.to_string(),
    };
    if frame::write_frame_async(&mut stream, &reply).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    drain(&mut stream).await;
}

/// Reads (and drops) what the client still sends, until it closes or for two
/// seconds at most: closing with unread data resets the connection, and the
/// reset could overtake the refusal just sent. Nothing read here is acted on.
async fn drain<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 4096];
    let _ = timeout(Duration::from_secs(2), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Why no request frame came.
enum NextFrame {
    /// The connection stayed idle past its deadline.
    Idle,
    Failed(FrameError),
}

/// The next request frame; `Ok(None)` when the client closed between frames.
/// Waiting for a frame to start takes as long as the client likes while it
/// holds something (an idle mount with open files), but past `idle_until`
/// (and each `idle_timeout` after) a client that `holds_nothing` is let go;
/// once a frame has started the rest must arrive within [`FRAME_TIMEOUT`].
async fn next_frame(
    reader: &mut Reader,
    idle_until: Instant,
    idle_timeout: Duration,
    holds_nothing: impl Fn() -> bool,
) -> Result<Option<RequestFrame>, NextFrame> {
    let mut deadline = idle_until;
    let started = loop {
        match tokio::time::timeout_at(deadline.into(), reader.fill_buf()).await {
            Ok(filled) => break filled.map(|b| !b.is_empty()),
            Err(_) if holds_nothing() => return Err(NextFrame::Idle),
            Err(_) => deadline = Instant::now() + idle_timeout,
        }
    };
    match started {
        Ok(false) => return Ok(None),
        Ok(true) => {}
        Err(e) => return Err(NextFrame::Failed(e.into())),
    }
    match timeout(FRAME_TIMEOUT, frame::read_request_async(reader)).await {
        Ok(read) => read.map_err(NextFrame::Failed),
        Err(_) => Err(NextFrame::Failed(FrameError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "a request frame did not complete within {} s",
                FRAME_TIMEOUT.as_secs()
            ),
        )))),
    }
}

/// What a request costs of the byte budget, in KiB: its frame's payload length
/// plus the reply it will produce, as far as that is known up front.
fn cost_kib(request_len: usize, op: &Op) -> u32 {
    let reply = match op {
        Op::Read { len, .. } => (*len).min(MAX_CHUNK) as usize,
        Op::ReadDir { .. } => READDIR_COST,
        Op::List { .. } => LISTING_BYTES,
        Op::OpenRead { len, .. } => (*len).min(MAX_OPEN_DATA) as usize,
        Op::ReadFiles { .. } => READ_FILES_BYTES + READ_FILES_EACH as usize,
        _ => 0,
    };
    let kib = (request_len + reply) / 1024 + 1;
    u32::try_from(kib)
        .unwrap_or(u32::MAX)
        .min(CONNECTION_CAP_KIB)
}

/// `request` as work for a blocking-pool thread: answer it, then queue the reply.
fn job(
    session: &Arc<Session>,
    metrics: &Arc<Metrics>,
    tx: mpsc::Sender<Outgoing>,
    request: Request,
    budget: Budget,
) -> impl FnOnce() + Send + 'static {
    let session = Arc::clone(session);
    let metrics = Arc::clone(metrics);
    move || {
        let frame = answer(&session, &metrics, request);
        // If the writer is gone the connection is closing; the reply has no reader.
        let _ = tx.blocking_send(Outgoing { frame, budget });
    }
}

/// Handles one request and encodes its reply frame, on whichever thread the
/// request was scheduled on.
fn answer(session: &Session, metrics: &Metrics, request: Request) -> Encoded {
    let id = request.id;
    let kind = op_kind(&request.op);
    let started = Instant::now();
    // A bug in one operation must not leave its request unanswered.
    let result =
        panic::catch_unwind(AssertUnwindSafe(|| session.handle(request))).unwrap_or_else(|_| {
            log::error!("request {id} panicked; answering EIO");
            Err(Errno::EIO)
        });
    metrics.handled(kind, started.elapsed(), result.is_err());
    encode_reply(id, result)
}

/// [`answer`] of a read the page cache holds all of; `None`, having done
/// nothing, when it would have to wait for the disk.
fn answer_from_cache(session: &Session, metrics: &Metrics, request: &Request) -> Option<Encoded> {
    let id = request.id;
    let started = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(|| session.read_cached(request)))
        .unwrap_or_else(|_| {
            log::error!("request {id} panicked; answering EIO");
            Some(Err(Errno::EIO))
        })?;
    metrics.handled(op_kind(&request.op), started.elapsed(), result.is_err());
    Some(encode_reply(id, result))
}

/// The reply frame of request `id`.
fn encode_reply(id: u64, result: Result<Reply, Errno>) -> Encoded {
    // File data is sent from its own buffer, after a head, not copied into a frame.
    let result = match result {
        Ok(Reply::Data(data)) => match frame::encode_data_head(id, data.len()) {
            Ok(head) => return Encoded { head, data },
            Err(e) => {
                log::warn!("the reply to request {id} cannot be encoded ({e}); answering EIO");
                Err(Errno::EIO)
            }
        },
        other => other,
    };
    let head = match frame::encode(&ServerMessage::Response(Response { id, result })) {
        Ok(frame) => frame,
        Err(e) => {
            log::warn!("the reply to request {id} cannot be encoded ({e}); answering EIO");
            frame::encode(&ServerMessage::Response(Response {
                id,
                result: Err(Errno::EIO),
            }))
            .unwrap_or_default()
        }
    };
    Encoded {
        head,
        data: Vec::new(),
    }
}

/// A reply ready to write: its frame, or for file data the frame's head and the
/// data that completes it.
struct Encoded {
    head: Vec<u8>,
    data: Vec<u8>,
}

/// A request's share of the connection's budget: one request slot and its
/// cost in KiB of memory. Given back (dropped) once its reply is written.
type Budget = (OwnedSemaphorePermit, MemoryShare);

/// An encoded reply, and the budget its request held.
struct Outgoing {
    frame: Encoded,
    budget: Budget,
}

/// Writes replies as they come, and the notices waiting for this connection
/// whenever it wakes. Whatever is queued when the writer wakes goes out in one
/// batch, so a burst of small replies costs one system call, not one each.
async fn write_replies(
    mut sink: Writer,
    mut replies: mpsc::Receiver<Outgoing>,
    metrics: Arc<Metrics>,
    notices: Arc<Subscriber>,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(BATCH_LIMIT);
    let mut written = Vec::new();
    // Nothing goes out before the first reply: the client's TLS hands over
    // to ferry's record layer right after the welcome, and what rustls would
    // read behind it would be lost (see `ferry_common::records::take_over`).
    let mut first_reply = replies.recv().await;
    if first_reply.is_none() {
        let _ = timeout(WRITE_TIMEOUT, sink.shutdown()).await;
        return Ok(());
    }
    loop {
        let first = match first_reply.take() {
            Some(reply) => Some(reply),
            None => tokio::select! {
                reply = replies.recv() => match reply {
                    Some(reply) => Some(reply),
                    None => break,
                },
                () = notices.ready() => None,
            },
        };
        encode_notices(&notices, &mut batch);
        let mut next = first;
        while let Some(Outgoing { frame, budget }) = next {
            let Encoded { head, data } = frame;
            metrics.sent(head.len() + data.len());
            if head.len() + data.len() >= LARGE_FRAME {
                // A big reply is written as it is rather than copied into the batch
                // (file data after its small head, which goes with the batch).
                if data.is_empty() {
                    flush(&mut sink, &mut batch).await?;
                    write_timed(&mut sink, &[&head]).await?;
                } else {
                    // File data after its head (and what else waits), in one
                    // system call: a vectored write, or one flush of records.
                    batch.extend_from_slice(&head);
                    write_timed(&mut sink, &[&batch, &data]).await?;
                    batch.clear();
                }
            } else {
                batch.extend_from_slice(&head);
                batch.extend_from_slice(&data);
                if batch.len() >= BATCH_LIMIT {
                    flush(&mut sink, &mut batch).await?;
                }
            }
            written.push(budget);
            next = replies.try_recv().ok();
        }
        flush(&mut sink, &mut batch).await?;
        written.clear();
    }
    // The client may be gone already; there is nothing left to tell it either way.
    let _ = timeout(WRITE_TIMEOUT, sink.shutdown()).await;
    Ok(())
}

async fn flush(sink: &mut Writer, batch: &mut Vec<u8>) -> io::Result<()> {
    if !batch.is_empty() {
        write_timed(sink, &[batch]).await?;
        batch.clear();
    }
    Ok(())
}

/// Writes `parts` in order, with as few writes as the stream allows, and
/// flushes (TLS records wait until then), within [`WRITE_TIMEOUT`].
async fn write_timed<W: AsyncWrite + Unpin>(sink: &mut W, parts: &[&[u8]]) -> io::Result<()> {
    match timeout(WRITE_TIMEOUT, frame::write_parts_async(sink, parts)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no data for {} s", WRITE_TIMEOUT.as_secs()),
        )),
    }
}

/// Appends the notices waiting in `notices` to `batch`, as frames of at most
/// about [`NOTICE_FRAME`] bytes: first "drop everything" if that is due, then
/// the changes.
fn encode_notices(notices: &Subscriber, batch: &mut Vec<u8>) {
    let (reset, changes) = notices.take();
    let mut push = |notice: Notice| {
        if let Err(e) = frame::encode_into(&ServerMessage::Notice(notice), batch) {
            log::warn!("a notice cannot be encoded: {e}");
        }
    };
    if let Some(lease_secs) = reset {
        push(Notice::Reset { lease_secs });
    }
    let mut chunk: Vec<Change> = Vec::new();
    let mut size = 0;
    for change in changes {
        size += match &change {
            Change::Name { path, .. } => path.as_bytes().len() + 24,
            Change::Moved { from, to } => from.as_bytes().len() + to.as_bytes().len() + 8,
            Change::Node { .. } => 24,
        };
        chunk.push(change);
        if size >= NOTICE_FRAME {
            push(Notice::Changed(std::mem::take(&mut chunk)));
            size = 0;
        }
    }
    if !chunk.is_empty() {
        push(Notice::Changed(chunk));
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::RelPath;

    #[test]
    fn requests_are_charged_their_frame_and_their_expected_reply() {
        let mib = 1 << 20;
        let write = Op::Write {
            handle: 1,
            offset: 0,
            data: Vec::new(),
        };
        // A full write: its payload, a few bytes more than its data.
        assert_eq!(cost_kib(mib + 20, &write), 1025);
        // A full read: a small frame and a chunk to come.
        let read = |len| Op::Read {
            handle: 1,
            offset: 0,
            len,
        };
        assert_eq!(cost_kib(12, &read(MAX_CHUNK)), 1025);
        // Asking for more than a chunk is charged for the chunk the reply holds.
        assert_eq!(cost_kib(12, &read(u32::MAX)), 1025);
        let list = Op::ReadDir {
            path: RelPath::root(),
            start: 0,
        };
        assert_eq!(cost_kib(10, &list), 65);
        // A listing's reply may carry its whole budget of entries.
        let list = Op::List {
            path: RelPath::root(),
            cursor: 0,
        };
        assert_eq!(cost_kib(10, &list), 3073);
        // An open with data: what it may read.
        let open_read = |len| Op::OpenRead {
            path: RelPath::root(),
            flags: libc::O_RDONLY,
            len,
        };
        assert_eq!(cost_kib(30, &open_read(128 << 10)), 129);
        assert_eq!(cost_kib(30, &open_read(u32::MAX)), 1025);
        assert_eq!(cost_kib(10, &Op::StatFs), 1);
        // Never more than the whole budget, or it could never be granted.
        assert_eq!(cost_kib(usize::MAX / 2, &Op::StatFs), CONNECTION_CAP_KIB);
    }
}
