//! `--timeout` is a bound on every call into the mount, whatever the server
//! does: frozen (SIGSTOP of a `ferry serve` this test started — its kernel
//! still accepts connections, nothing answers) or cut off by a silent
//! partition (a proxy of the test's own that stops forwarding in both
//! directions). Every call returns within the timeout and a margin with
//! ETIMEDOUT or EIO, and once the server answers again calls succeed within
//! two seconds.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ferry_common::auth::{Fingerprint, Token};
use ferry_fusefs::client::ConnectOptions;
use ferry_fusefs::mount::{self, Mount, MountOptions};
use ferry_fusefs::RemoteClient;

/// How much later than its timeout a call may return (a loaded 2-core VM).
const MARGIN: Duration = Duration::from_secs(1);
/// How soon calls must succeed once the server answers again.
const RECOVERY: Duration = Duration::from_secs(2);

/// `ferry serve` in a process of its own, so that it can be frozen.
struct ServeProcess {
    child: Child,
    addr: String,
    fingerprint: Fingerprint,
    token: Token,
}

impl ServeProcess {
    fn start(export: &Path, state: &Path) -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("serve")
            .arg(export)
            // Root on the mount writes as root (the test makes files).
            .args(["--listen", "127.0.0.1:0", "--no-root-squash", "--state-dir"])
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ferry serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = || lines.next().expect("a line").expect("readable");
        // "ferry: exporting DIR on ADDR", then "ferry: server certificate SHA256:… (…)".
        let first = next();
        let addr = first
            .split(" on ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("an address")
            .to_string();
        let second = next();
        let fingerprint = second
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .map(|w| Fingerprint::parse(w).expect("a fingerprint"))
            .expect("the fingerprint line");
        let token_file = fs::read_dir(state.join("tokens"))
            .expect("the tokens")
            .next()
            .expect("a token file")
            .expect("readable")
            .path();
        let token = Token::read_file(&token_file).expect("the token");
        // The rest of what it prints goes nowhere, but is read.
        thread::spawn(move || lines.for_each(drop));
        ServeProcess {
            child,
            addr,
            fingerprint,
            token,
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGSTOP, and wait until every thread of the server has stopped (the
    /// signal is delivered asynchronously).
    fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stopped = fs::read_dir(&tasks)
                .expect("the server's threads")
                .all(|t| {
                    let stat = t
                        .ok()
                        .and_then(|t| fs::read_to_string(t.path().join("stat")).ok())
                        .unwrap_or_default();
                    // The state follows the command name's closing parenthesis.
                    matches!(
                        stat.rsplit_once(") ").map(|(_, rest)| rest.as_bytes()[0]),
                        Some(b'T')
                    )
                });
            if stopped {
                return;
            }
            assert!(Instant::now() < deadline, "the server did not stop");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mount of `addr` in this process, with requests timing out after `timeout`.
fn mount_at(mnt: &Path, addr: &str, options: ConnectOptions) -> Mount {
    let client = RemoteClient::connect(addr, &options).expect("connect");
    mount::mount(client, mnt, &MountOptions::default()).expect("mount")
}

/// `statvfs(2)` of `path`.
fn statvfs(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: c is NUL-terminated; out is a properly sized, writable statvfs.
    let rc = unsafe {
        let mut out: libc::statvfs = std::mem::zeroed();
        libc::statvfs(c.as_ptr(), &mut out)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Calls that must each reach the server, made at once on threads of their
/// own while it does not answer: each must fail with ETIMEDOUT or EIO within
/// `bound`. `tag` keeps names unique (no cache may answer).
fn calls_fail_within(mnt: &Path, tag: &str, bound: Duration) {
    type Call = Box<dyn FnOnce() -> io::Result<()> + Send>;
    let at = |name: &str| mnt.join(format!("{name}-{tag}"));
    let (missing, created, appended) = (at("missing"), at("created"), mnt.join("kept"));
    let root = mnt.to_path_buf();
    let calls: Vec<(&str, Call)> = vec![
        ("stat", Box::new(move || fs::metadata(missing).map(|_| ()))),
        ("create", Box::new(move || fs::write(created, b"x"))),
        ("statfs", Box::new(move || statvfs(&root))),
        (
            "write+fsync",
            Box::new(move || {
                let mut f = fs::OpenOptions::new().append(true).open(appended)?;
                f.write_all(b"more")?;
                f.sync_all()
            }),
        ),
    ];
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    for (name, call) in calls {
        let tx = tx.clone();
        thread::spawn(move || {
            let result = call();
            let _ = tx.send((name, result, started.elapsed()));
        });
    }
    drop(tx);
    for _ in 0..4 {
        let (name, result, took) = rx
            .recv_timeout(bound + Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{tag}: a call hung past {bound:?}"));
        let errno = result.as_ref().err().and_then(io::Error::raw_os_error);
        assert!(
            matches!(errno, Some(libc::ETIMEDOUT | libc::EIO)),
            "{tag}: {name} returned {result:?} (wanted ETIMEDOUT or EIO)"
        );
        assert!(took <= bound, "{tag}: {name} took {took:?}, over {bound:?}");
        eprintln!("{tag}: {name}: {} after {took:.2?}", result.unwrap_err());
    }
}

/// Once the server answers again, a lookup is answered (ENOENT from the
/// server) within [`RECOVERY`]; returns how long it took.
fn calls_succeed_again(mnt: &Path) -> Duration {
    let resumed = Instant::now();
    for i in 0.. {
        match fs::metadata(mnt.join(format!("after-{i}"))) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            other => assert!(
                resumed.elapsed() < RECOVERY,
                "still failing {:?} after the server came back: {other:?}",
                resumed.elapsed()
            ),
        }
        thread::sleep(Duration::from_millis(20));
    }
    let took = resumed.elapsed();
    assert!(took < RECOVERY, "calls succeeded only after {took:?}");
    // And work goes on as before.
    fs::write(mnt.join("after"), b"back").expect("a write after recovery");
    took
}

/// One outage: calls while the connection is still up (they time out), then
/// after the client has given up on it (reconnection attempts hang, calls get
/// EIO), then recovery.
fn outage(mnt: &Path, timeout: Duration, cut: impl FnOnce(), heal: impl FnOnce()) {
    fs::write(mnt.join("kept"), b"start").expect("a file to append to");
    cut();
    let bound = timeout + MARGIN;
    calls_fail_within(mnt, "while-connected", bound);
    // By now the silent connection has been given up (after `timeout` of
    // silence); these calls meet a reconnection that hangs.
    thread::sleep(MARGIN);
    calls_fail_within(mnt, "while-reconnecting", bound);
    heal();
    let took = calls_succeed_again(mnt);
    eprintln!("calls succeeded again {took:.2?} after the server answered");
}

fn a_frozen_server_bounds_every_call_and_is_used_again_when_it_thaws() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-test-")
        .tempdir()
        .expect("a temp dir");
    let (export, mnt, state) = (
        dir.path().join("export"),
        dir.path().join("mnt"),
        dir.path().join("state"),
    );
    for d in [&export, &mnt] {
        fs::create_dir(d).expect("a directory");
    }
    let server = ServeProcess::start(&export, &state);
    let timeout = Duration::from_secs(2);
    let options = ConnectOptions::pinned(server.fingerprint, Some(server.token.clone()))
        .with_timeout(timeout);
    let mounted = mount_at(&mnt, &server.addr, options);
    outage(
        &mnt,
        timeout,
        || server.freeze(),
        || server.signal(libc::SIGCONT),
    );
    assert_eq!(
        fs::read(export.join("after")).expect("on the server"),
        b"back"
    );
    mounted.unmount().expect("unmount");
}

/// A TCP proxy that can stop forwarding, in both directions and for new
/// connections too, without closing anything: a silent partition.
struct Partition {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Partition {
    fn to(upstream: SocketAddr) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("an address");
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&cut), Arc::clone(&stop));
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (c, s) = (Arc::clone(&c), Arc::clone(&s));
                        thread::spawn(move || relay(client, upstream, c, s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Partition { addr, cut, stop }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.cut.store(false, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Forwards one connection while the partition is not cut; a connection
/// made during a cut waits (accepted, unanswered) until it heals.
fn relay(client: TcpStream, upstream: SocketAddr, cut: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    while cut.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(10));
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (cut2, stop2) = (Arc::clone(&cut), Arc::clone(&stop));
    thread::spawn(move || pump(c2, s2, cut2, stop2));
    pump(server, client, cut, stop);
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if cut.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn a_silent_partition_bounds_every_call_at_timeout_10_and_heals() {
    let f = fixture!();
    let partition = Partition::to(f.addr().parse().expect("an address"));
    let mnt: PathBuf = f.temp().join("through-partition");
    fs::create_dir(&mnt).expect("a mountpoint");
    let timeout = Duration::from_secs(10);
    let mounted = mount_at(
        &mnt,
        &partition.addr.to_string(),
        f.connect_options(timeout),
    );
    let cut = Arc::clone(&partition.cut);
    outage(
        &mnt,
        timeout,
        || {
            partition.cut.store(true, Ordering::Relaxed);
            // Let the relays finish what they were forwarding.
            thread::sleep(Duration::from_millis(100));
        },
        move || cut.store(false, Ordering::Relaxed),
    );
    assert_eq!(fs::read(f.e("after")).expect("on the server"), b"back");
    mounted.unmount().expect("unmount");
}

tests! {
    a_frozen_server_bounds_every_call_and_is_used_again_when_it_thaws => [Fuse],
    a_silent_partition_bounds_every_call_at_timeout_10_and_heals => [Fuse],
}
