//! One client connection: the handshake, then many requests at once.
//!
//! ```text
//!  socket ─► reader (this task) ─┬─► inline: Session::handle, encode ───────────┐
//!              │                 └─► blocking pool: Session::handle, encode ────┤ mpsc
//!              │ waits for budget      (in its handle's queue, or at once)      ▼
//!              └──────── budget comes back once the reply is written ◄─ writer task ─► socket
//! ```
//!
//! The reader decodes each frame and runs its request where
//! [`schedule`](crate::schedule) says: quick ones (metadata, small writes, a
//! small read with nothing behind it) right on the reader, as a thread hand-off
//! would cost more than the call; anything that may block for long (bulk data,
//! fsync, listings, truncation) on tokio's blocking pool, so it never holds up a
//! quick stat. Requests that change an open file run in arrival order per handle
//! (see [`crate::sequencer`]). Replies go, in whatever order they finish, through
//! a channel to a single writer task, which writes everything queued at that
//! moment with one system call.
//!
//! Before reading the next request the reader takes a share of the connection's
//! budget (a number of requests and of bytes in flight), which the writer gives
//! back when the reply is on the wire; a client that sends faster than it reads
//! therefore stalls itself and cannot make the server hoard memory.
//!
//! Anything malformed (a frame that does not decode, an oversized or truncated
//! frame) ends this connection only; other clients never notice.

use crate::dispatch::Session;
use crate::export::ExportRoot;
use crate::exports::Exports;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::schedule::{schedule, Schedule};
use crate::sequencer::Sequencer;
use crate::sys;
use ferry_common::counters::op_kind;
use ferry_common::frame::{self, FrameError, RequestFrame, MAX_CHUNK};
use ferry_common::proto::{
    HandshakeReply, Hello, Op, Reply, Request, Response, Welcome, LISTING_BYTES, MAGIC,
    MAX_OPEN_DATA, PROTOCOL_VERSION,
};
use ferry_common::Errno;
use std::io;
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

/// How long a new connection may take to send its `Hello`.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Once the first byte of a frame has arrived, the rest must follow within this.
const FRAME_TIMEOUT: Duration = Duration::from_secs(120);
/// A client that does not take its replies for this long is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests of one connection being handled or waiting to be written.
pub(crate) const MAX_IN_FLIGHT: usize = 64;
/// Bytes (requests plus expected replies) in flight on one connection, counted in
/// KiB: what ferry's client keeps in flight itself at most (a write window and
/// the kernel's readahead, 32 MiB each on a slow path), so that a client's own
/// streams never make the reader stop and hold up its other requests.
const IN_FLIGHT_KIB: u32 = 64 * 1024;
/// [`IN_FLIGHT_KIB`] in bytes.
pub const CONNECTION_BUDGET: usize = IN_FLIGHT_KIB as usize * 1024;
/// What a directory page is charged before its size is known.
const READDIR_COST: usize = 64 * 1024;
/// Replies at least this big are written on their own rather than copied into the batch.
const LARGE_FRAME: usize = 64 * 1024;
/// The writer sends its batch once it holds this much.
const BATCH_LIMIT: usize = 256 * 1024;
const READ_BUFFER: usize = 64 * 1024;

/// Serves one client until it leaves, breaks the protocol, or `stop` turns true.
/// An `Err` says why the connection was closed early.
pub(crate) async fn serve(
    stream: TcpStream,
    exports: Arc<Exports>,
    policy: Policy,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), FrameError> {
    let _open = metrics.accepted();
    stream.set_nodelay(true)?;
    if let Err(e) = set_keepalive(&stream) {
        log::debug!("cannot enable TCP keepalive: {e}");
    }
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER, read_half);

    let Some(export) = handshake(&mut reader, &mut write_half, &exports, &policy).await? else {
        metrics.refused();
        return Ok(());
    };

    let session = Arc::new(Session::new(export, policy));
    let sequencer = Arc::new(Sequencer::new());
    let (tx, rx) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_replies(write_half, rx, Arc::clone(&metrics)));
    let requests = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let bytes = Arc::new(Semaphore::new(IN_FLIGHT_KIB as usize));

    let outcome = loop {
        // Each wait below also ends when the server stops or the writer is gone.
        let slot = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break Ok(()),
            _ = tx.closed() => break Ok(()),
            slot = requests.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break Ok(()),
            },
        };
        let read = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break Ok(()),
            _ = tx.closed() => break Ok(()),
            read = next_frame(&mut reader) => read,
        };
        let incoming = match read {
            Ok(Some(incoming)) => incoming,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
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
                Err(e) => break Err(e),
            },
        };
        metrics.request(&request.op, size + 4);
        let cost = cost_kib(size, &request.op);
        let share = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break Ok(()),
            _ = tx.closed() => break Ok(()),
            share = bytes.clone().acquire_many_owned(cost) => match share {
                Ok(share) => share,
                Err(_) => break Ok(()),
            },
        };
        // Only this task adds work to the sequencer, so a handle found idle here
        // stays idle while its request runs inline.
        let alone = reader.buffer().is_empty();
        let budget = (slot, share);
        match schedule(&request.op, alone, |handle| sequencer.is_idle(handle)) {
            Schedule::Inline => {
                let frame = answer(&session, &metrics, request);
                if tx.send(Outgoing { frame, budget }).await.is_err() {
                    break Ok(());
                }
            }
            Schedule::Pool => {
                drop(tokio::task::spawn_blocking(job(
                    &session, &metrics, &tx, request, budget,
                )));
            }
            Schedule::Ordered(handle) => {
                sequencer.run(handle, job(&session, &metrics, &tx, request, budget));
            }
        }
    };

    // Requests already started still get their replies: the writer ends once the
    // last of them has sent its reply and dropped its sender.
    drop(tx);
    let written = match writer.await {
        Ok(result) => result.map_err(FrameError::from),
        Err(e) => Err(FrameError::Io(io::Error::other(format!(
            "the reply writer failed: {e}"
        )))),
    };
    outcome.and(written)
}

/// Reads `Hello` and answers it. `Ok(Some(root))`: the client is welcome and
/// served from `root`; `Ok(None)`: it left or was refused, and the connection ends.
async fn handshake(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    exports: &Arc<Exports>,
    policy: &Policy,
) -> Result<Option<Arc<ExportRoot>>, FrameError> {
    let payload = match timeout(HANDSHAKE_TIMEOUT, frame::read_frame_async(reader)).await {
        Err(_) => {
            return Err(FrameError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
            )))
        }
        Ok(read) => match read? {
            Some(payload) => payload,
            None => return Ok(None),
        },
    };
    let hello: Hello = frame::decode(&payload)?;
    let refusal = if hello.magic != MAGIC {
        Some("this is a ferry server and the peer does not speak the ferry protocol".to_string())
    } else if hello.version != PROTOCOL_VERSION {
        Some(format!(
            "this server speaks ferry protocol version {PROTOCOL_VERSION} and the client \
             version {}; use the same ferry release on both sides",
            hello.version
        ))
    } else {
        None
    };
    let mut served = None;
    let reply = match refusal {
        Some(message) => HandshakeReply::Refused { message },
        None => {
            let exports = Arc::clone(exports);
            let chosen = tokio::task::spawn_blocking(move || {
                let chosen = exports.choose(hello.export.as_deref(), &hello.subtree)?;
                let attr = chosen
                    .root
                    .root_attr()
                    .map_err(|e| format!("the server cannot read its export directory: {e}"))?;
                Ok::<_, String>((chosen, attr))
            })
            .await
            .unwrap_or_else(|e| Err(format!("the server failed to open the export: {e}")));
            match chosen {
                Ok((chosen, root)) => {
                    let root_acts_as_clients = chosen.root.acts_as_clients();
                    log::debug!(
                        "serving {} (export {}) to a client",
                        chosen.root.path().display(),
                        chosen.name.as_deref().unwrap_or("by default")
                    );
                    served = Some(chosen.root);
                    HandshakeReply::Welcome(Welcome {
                        version: PROTOCOL_VERSION,
                        max_chunk: MAX_CHUNK,
                        read_only: policy.read_only,
                        features: policy.welcome_features(root_acts_as_clients),
                        root,
                    })
                }
                Err(message) => HandshakeReply::Refused { message },
            }
        }
    };
    write_timed(writer, &frame::encode(&reply)?).await?;
    if let HandshakeReply::Refused { message } = reply {
        log::info!("refused a client: {message}");
        let _ = writer.shutdown().await;
    }
    Ok(served)
}

/// The next request frame; `Ok(None)` when the client closed between frames.
/// Waiting for a frame to start takes as long as the client likes (an idle mount),
/// but once it has started the rest must arrive within [`FRAME_TIMEOUT`].
async fn next_frame(
    reader: &mut BufReader<OwnedReadHalf>,
) -> Result<Option<RequestFrame>, FrameError> {
    if reader.fill_buf().await?.is_empty() {
        return Ok(None);
    }
    match timeout(FRAME_TIMEOUT, frame::read_request_async(reader)).await {
        Ok(read) => read,
        Err(_) => Err(FrameError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "a request frame did not complete within {} s",
                FRAME_TIMEOUT.as_secs()
            ),
        ))),
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
        _ => 0,
    };
    let kib = (request_len + reply) / 1024 + 1;
    u32::try_from(kib).unwrap_or(u32::MAX).min(IN_FLIGHT_KIB)
}

/// `request` as work for a blocking-pool thread: answer it, then queue the reply.
fn job(
    session: &Arc<Session>,
    metrics: &Arc<Metrics>,
    tx: &mpsc::Sender<Outgoing>,
    request: Request,
    budget: Budget,
) -> impl FnOnce() + Send + 'static {
    let session = Arc::clone(session);
    let metrics = Arc::clone(metrics);
    let tx = tx.clone();
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
    let head = match frame::encode(&Response { id, result }) {
        Ok(frame) => frame,
        Err(e) => {
            log::warn!("the reply to request {id} cannot be encoded ({e}); answering EIO");
            frame::encode(&Response {
                id,
                result: Err(Errno::EIO),
            })
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
/// cost in KiB. Given back (dropped) once its reply is written.
type Budget = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// An encoded reply, and the budget its request held.
struct Outgoing {
    frame: Encoded,
    budget: Budget,
}

/// Writes replies as they come. Whatever is queued when the writer wakes goes out
/// in one batch, so a burst of small replies costs one system call, not one each.
async fn write_replies(
    mut sink: OwnedWriteHalf,
    mut replies: mpsc::Receiver<Outgoing>,
    metrics: Arc<Metrics>,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(BATCH_LIMIT);
    let mut written = Vec::new();
    while let Some(first) = replies.recv().await {
        let mut next = Some(first);
        while let Some(Outgoing { frame, budget }) = next {
            let Encoded { head, data } = frame;
            metrics.sent(head.len() + data.len());
            if head.len() + data.len() >= LARGE_FRAME {
                // A big reply is written as it is rather than copied into the batch
                // (file data after its small head, which goes with the batch).
                if data.is_empty() {
                    flush(&mut sink, &mut batch).await?;
                    write_timed(&mut sink, &head).await?;
                } else {
                    batch.extend_from_slice(&head);
                    flush(&mut sink, &mut batch).await?;
                    write_timed(&mut sink, &data).await?;
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
    let _ = sink.shutdown().await;
    Ok(())
}

async fn flush(sink: &mut OwnedWriteHalf, batch: &mut Vec<u8>) -> io::Result<()> {
    if !batch.is_empty() {
        write_timed(sink, batch).await?;
        batch.clear();
    }
    Ok(())
}

async fn write_timed(sink: &mut OwnedWriteHalf, bytes: &[u8]) -> io::Result<()> {
    match timeout(WRITE_TIMEOUT, sink.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no data for {} s", WRITE_TIMEOUT.as_secs()),
        )),
    }
}

/// Lets the kernel notice a client that vanished (a laptop put to sleep, a cable
/// pulled) after a few minutes, so its open files and its slot are given back.
fn set_keepalive(stream: &TcpStream) -> io::Result<()> {
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 15),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4),
    ] {
        sys::set_socket_option(stream.as_fd(), level, name, value)?;
    }
    Ok(())
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
        assert_eq!(cost_kib(usize::MAX / 2, &Op::StatFs), IN_FLIGHT_KIB);
    }
}
