//! A TCP proxy that adds round-trip time: every chunk read from either side is
//! written to the other side `delay` after it was read, in order, with no
//! bandwidth cap. The benchmark puts it in front of the ferry server and the
//! private sshd, because this kernel has no netem.
//!
//! Each direction of a connection has a reader and a writer thread. The reader
//! stamps every chunk with the time it arrived and queues it; the writer sleeps
//! until that time plus the delay and writes it. Chunks are never slept on one
//! after another, so throughput is not `chunk / delay`: any number of chunks can
//! be on their way at once, up to `max_in_flight` bytes per direction (after
//! which the reader stops reading and TCP pushes back on the sender, as a real
//! network's buffers would). End of stream travels like data: a half-close
//! (FIN) reaches the other side `delay` after it was seen, after all data before
//! it. With a zero delay the reader writes each chunk itself (no queue, no
//! second thread): a plain relay, as cheap as the proxy can be.
//!
//! Threads, not tokio: `std::thread::sleep` wakes within tens of microseconds,
//! where tokio's timer works in whole milliseconds, which matters for the
//! half-millisecond one-way delay of a 1 ms RTT.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes asked of the socket per read.
pub const CHUNK: usize = 512 * 1024;
/// Default bytes on their way per direction and connection (64 MiB: 1.3 GB/s at 50 ms one way).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64 << 20;
/// How long to wait for the upstream server to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one-way delay accepted (a typo guard: a minute).
pub const MAX_DELAY: Duration = Duration::from_secs(60);

const STACK: usize = 256 * 1024;
// Linux errno values of accept failures that pass (no libc dependency for four numbers).
const ENOMEM: i32 = 12;
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;
const ENOBUFS: i32 = 105;

/// What the proxy does with every connection it accepts.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where connections go (the first address that accepts).
    pub to: Vec<SocketAddr>,
    /// Added in each direction; the round-trip time grows by twice this.
    pub delay: Duration,
    /// Bytes read but not yet written, per direction of a connection.
    pub max_in_flight: usize,
    /// A line on stderr per connection opened and closed.
    pub verbose: bool,
}

impl Config {
    pub fn new(to: Vec<SocketAddr>, delay: Duration) -> Config {
        Config {
            to,
            delay,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            verbose: false,
        }
    }
}

/// A one-way delay given in milliseconds, fractions allowed ("0.5"): 0 to 60,000.
pub fn parse_delay_ms(text: &str) -> Result<Duration, String> {
    let ms: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of milliseconds (e.g. 5 or 0.5)"))?;
    if !ms.is_finite() || ms < 0.0 {
        return Err(format!(
            "'{text}': the delay must be 0 or more milliseconds"
        ));
    }
    let delay = Duration::from_secs_f64(ms / 1000.0);
    if delay > MAX_DELAY {
        return Err(format!(
            "'{text}': more than {} ms is surely a mistake",
            MAX_DELAY.as_millis()
        ));
    }
    Ok(delay)
}

/// `host:port` resolved to at least one address.
pub fn resolve(text: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("'{text}' is not an address (HOST:PORT): {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("'{text}' resolves to no address"));
    }
    Ok(addrs)
}

/// Accepts connections on `listener` and relays each one to `cfg.to`; returns
/// only if accepting fails for good.
pub fn serve(listener: TcpListener, cfg: Config) -> io::Error {
    let cfg = Arc::new(cfg);
    loop {
        match listener.accept() {
            Ok((client, peer)) => {
                let cfg = Arc::clone(&cfg);
                let spawned = thread::Builder::new()
                    .name(format!("conn {peer}"))
                    .stack_size(STACK)
                    .spawn(move || connection(client, peer, &cfg));
                if let Err(e) = spawned {
                    // The connection is dropped (closed); the next one may fare better.
                    eprintln!("ferry-delay-proxy: cannot start a thread for {peer}: {e}");
                }
            }
            // A connection that went away before we took it, or a signal: try again.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) => {}
            // Out of file descriptors or memory: wait for connections to close.
            Err(e) if matches!(e.raw_os_error(), Some(ENFILE | EMFILE | ENOBUFS | ENOMEM)) => {
                eprintln!("ferry-delay-proxy: accept: {e}; retrying");
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return e,
        }
    }
}

fn connect(to: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
    for addr in to {
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn connection(client: TcpStream, peer: SocketAddr, cfg: &Config) {
    let upstream = match connect(&cfg.to) {
        Ok(s) => s,
        Err(e) => {
            // Dropping `client` closes it: the client sees the server refuse.
            eprintln!(
                "ferry-delay-proxy: {peer}: cannot connect to {:?}: {e}",
                cfg.to
            );
            return;
        }
    };
    if cfg.verbose {
        eprintln!("ferry-delay-proxy: {peer}: connected");
    }
    for s in [&client, &upstream] {
        // Chunks leave when they are due, not when the previous one is acknowledged.
        let _ = s.set_nodelay(true);
    }
    let result = relay_both(&client, &upstream, cfg);
    if let Err(e) = result {
        eprintln!("ferry-delay-proxy: {peer}: {e}");
    }
    if cfg.verbose {
        eprintln!("ferry-delay-proxy: {peer}: closed");
    }
}

/// Both directions of one connection; returns when both have ended.
fn relay_both(client: &TcpStream, upstream: &TcpStream, cfg: &Config) -> io::Result<()> {
    let mut threads = Vec::new();
    let mut start = || -> io::Result<()> {
        threads.extend(direction(client.try_clone()?, upstream.try_clone()?, cfg)?);
        threads.extend(direction(upstream.try_clone()?, client.try_clone()?, cfg)?);
        Ok(())
    };
    let started = start();
    if started.is_err() {
        // No half-working connection: whatever did start sees both sockets end.
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
    }
    for t in threads {
        let _ = t.join();
    }
    started
}

/// Starts the threads that carry `src`'s bytes to `dst`.
fn direction(
    src: TcpStream,
    dst: TcpStream,
    cfg: &Config,
) -> io::Result<Vec<thread::JoinHandle<()>>> {
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        thread::Builder::new()
            .name(name.to_string())
            .stack_size(STACK)
            .spawn(f)
    };
    if cfg.delay.is_zero() {
        return Ok(vec![spawn("relay", Box::new(move || relay(src, dst)))?]);
    }
    let (tx, rx) = mpsc::channel();
    let budget = Arc::new(Budget::new(cfg.max_in_flight));
    let delay = cfg.delay;
    let (src2, dst2) = (src.try_clone()?, dst.try_clone()?);
    let b2 = Arc::clone(&budget);
    let writer = spawn(
        "writer",
        Box::new(move || write_when_due(rx, dst2, src2, &b2)),
    )?;
    let reader = match spawn(
        "reader",
        Box::new(move || read_and_stamp(src, tx, delay, &budget)),
    ) {
        Ok(r) => r,
        Err(e) => {
            // The writer ends when its queue's sender (dropped with the closure) is gone.
            let _ = dst.shutdown(Shutdown::Both);
            return Err(e);
        }
    };
    Ok(vec![reader, writer])
}

/// Zero delay: read and write on one thread.
fn relay(mut src: TcpStream, mut dst: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match src.read(&mut buf) {
            Ok(0) => {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if dst.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // One side failed: the connection is over in both directions.
    let _ = src.shutdown(Shutdown::Both);
    let _ = dst.shutdown(Shutdown::Both);
}

enum Msg {
    Data(Vec<u8>),
    /// The source half-closed: pass the FIN on.
    Eof,
    /// Reading the source failed (reset): end the connection.
    Failed,
}

fn read_and_stamp(
    mut src: TcpStream,
    tx: mpsc::Sender<(Instant, Msg)>,
    delay: Duration,
    budget: &Budget,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let (msg, last) = match src.read(&mut buf) {
            Ok(0) => (Msg::Eof, true),
            Ok(n) => (Msg::Data(buf[..n].to_vec()), false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => (Msg::Failed, true),
        };
        let due = Instant::now() + delay;
        if let Msg::Data(d) = &msg {
            budget.take(d.len());
        }
        if tx.send((due, msg)).is_err() || last {
            return;
        }
    }
}

fn write_when_due(
    rx: mpsc::Receiver<(Instant, Msg)>,
    mut dst: TcpStream,
    src: TcpStream,
    budget: &Budget,
) {
    let mut failed = false;
    for (due, msg) in rx {
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        match msg {
            Msg::Data(d) => {
                if !failed && dst.write_all(&d).is_err() {
                    // The destination is gone: so is the connection. The reader
                    // sees the end of `src` and stops; what it queued is dropped.
                    failed = true;
                    let _ = src.shutdown(Shutdown::Both);
                    let _ = dst.shutdown(Shutdown::Both);
                }
                budget.give(d.len());
            }
            Msg::Eof => {
                if !failed {
                    let _ = dst.shutdown(Shutdown::Write);
                }
                return;
            }
            Msg::Failed => {
                let _ = src.shutdown(Shutdown::Both);
                let _ = dst.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Bytes read but not yet written, capped: the proxy's buffer, like a network's.
struct Budget {
    used: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

impl Budget {
    fn new(max: usize) -> Budget {
        Budget {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.used
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `n` more bytes fit (a chunk always fits when nothing is on its way).
    fn take(&self, n: usize) {
        let mut used = self.lock();
        while *used > 0 && *used + n > self.max {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *used += n;
    }

    fn give(&self, n: usize) {
        let mut used = self.lock();
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_with_fractions_and_clear_errors() {
        assert_eq!(parse_delay_ms("0"), Ok(Duration::ZERO));
        assert_eq!(parse_delay_ms("0.5"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_delay_ms(" 25 "), Ok(Duration::from_millis(25)));
        for bad in ["", "abc", "-1", "NaN", "inf", "5ms", "60001"] {
            let err = parse_delay_ms(bad).expect_err(bad);
            assert!(err.contains(bad.trim()), "{err}");
        }
    }

    #[test]
    fn addresses_resolve_or_say_why_not() {
        assert_eq!(
            resolve("127.0.0.1:9").map(|a| a.len()),
            Ok(1),
            "a literal address"
        );
        assert!(resolve("127.0.0.1").is_err_and(|e| e.contains("HOST:PORT")));
        assert!(resolve("127.0.0.1:notaport").is_err());
    }

    #[test]
    fn the_budget_lets_one_chunk_through_even_when_it_is_larger() {
        let b = Budget::new(10);
        b.take(100); // nothing on its way: it fits
        b.give(100);
        b.take(6);
        b.take(4);
        assert_eq!(*b.lock(), 10);
        b.give(10);
        assert_eq!(*b.lock(), 0);
    }
}
