//! One peer cannot starve the others: each attack on the server's shared
//! resources is refused or contained, and a well-behaved client — a real
//! mount — keeps working while it goes on (with a generous deadline; no
//! timing is asserted).
//!
//! - a connection opening handles until its descriptor budget: only it gets
//!   EMFILE (and ENOLCK for locks);
//! - a connection taking lock ranges until its cap: only it gets ENOLCK;
//! - a write above `max_chunk`: refused with EINVAL, nothing written;
//! - peers that ask for reads and never take the replies: the server stops
//!   reading them, and its memory stays bounded (measured in /proc);
//! - a `stat` stuck inside a hung FUSE mount within the export (one this test
//!   makes, and aborts through fusectl at the end): only that request waits.

mod common;

use common::{assert_errno, Setup};
use ferry_common::frame;
use ferry_common::proto::{
    Cred, FileLock, HandshakeReply, Hello, LockKind, LockType, Op, Reply, Request, ServerMessage,
};
use ferry_common::{Errno, RelPath};
use ferry_fusefs::RemoteClient;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long the well-behaved client's work may take under attack: generous
/// (a loaded 2-core machine), yet far below "starved".
const DEADLINE: Duration = Duration::from_secs(30);

fn root() -> Cred {
    Cred {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
    }
}

fn path(p: &str) -> RelPath {
    RelPath::parse(p).expect("a relative path")
}

/// A client of the fixture's server in this process, speaking the protocol
/// directly (no mount).
fn raw_client(f: &common::Fixture) -> RemoteClient {
    RemoteClient::connect(&f.addr(), &f.connect_options(Duration::from_secs(30)))
        .expect("a raw client connects")
}

/// Opens `p` on `client`, answering the server handle.
fn open(client: &RemoteClient, p: &str, flags: i32) -> Result<u64, Errno> {
    let reply = client.call(
        &root(),
        Op::Open {
            path: path(p),
            flags,
        },
    )?;
    Ok(reply.opened().expect("an Opened reply").0)
}

/// Runs `work` (the well-behaved client's) on a thread of its own and fails
/// the test if it does not finish within [`DEADLINE`].
fn within_deadline(what: &str, work: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    thread::spawn(move || {
        work();
        let _ = tx.send(());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(()) => eprintln!("{what}: done in {:.2?}", started.elapsed()),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: the well-behaved client was held up past {DEADLINE:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the work panicked"),
    }
}

/// What a well-behaved mount does meanwhile: makes, writes, reads back and
/// lists files, and holds `held` of them open at once.
fn ordinary_work(mnt: &Path, tag: &str, held: usize) {
    let dir = mnt.join(format!("work-{tag}"));
    fs::create_dir_all(&dir).expect("mkdir on the mount");
    let mut open = Vec::new();
    for i in 0..held {
        let p = dir.join(format!("f{i}"));
        let mut file = File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        file.write_all(format!("file {i}").as_bytes())
            .expect("write on the mount");
        open.push(file);
    }
    for (i, file) in open.into_iter().enumerate() {
        file.sync_all().expect("fsync on the mount");
        drop(file);
        let back = fs::read_to_string(dir.join(format!("f{i}"))).expect("read on the mount");
        assert_eq!(back, format!("file {i}"));
    }
    assert_eq!(fs::read_dir(&dir).expect("list on the mount").count(), held);
}

fn one_connection_at_its_descriptor_budget_gets_emfile_and_others_keep_opening() {
    // A budget of 400 descriptors: one connection may hold 300 of them.
    let f = fixture!(Setup {
        max_descriptors: Some(400),
        ..Setup::default()
    });
    fs::write(f.e("file"), b"data").unwrap();
    let greedy = raw_client(&f);
    let mut handles = Vec::new();
    let refused = loop {
        match open(&greedy, "file", libc::O_RDONLY) {
            Ok(h) => handles.push(h),
            Err(e) => break e,
        }
        assert!(
            handles.len() <= 400,
            "no budget: {} handles open",
            handles.len()
        );
    };
    eprintln!(
        "the greedy connection: {} handles, then {refused}",
        handles.len()
    );
    assert_eq!(
        refused.code(),
        libc::EMFILE,
        "the greedy connection's refusal"
    );
    assert!(
        (250..=300).contains(&handles.len()),
        "the greedy connection held {} handles",
        handles.len()
    );
    // A lock needs a descriptor of its own: refused too, with ENOLCK.
    let lock = FileLock {
        typ: LockType::Read,
        start: 0,
        end: 0,
    };
    let locked = greedy.call(
        &root(),
        Op::SetLock {
            handle: handles[0],
            owner: 1,
            kind: LockKind::Posix,
            lock,
        },
    );
    assert_eq!(locked.err().map(Errno::code), Some(libc::ENOLCK));
    // The mount keeps opening (50 files open at once), and locking.
    let mnt = f.mnt.clone();
    within_deadline("opening beside a greedy connection", move || {
        ordinary_work(&mnt, "emfile", 50);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(mnt.join("file"))
            .expect("open");
        flock(&file, libc::LOCK_EX).expect("a lock beside a greedy connection");
    });
    // Its descriptors come back when it lets them go.
    for h in handles.drain(..) {
        greedy
            .call(&root(), Op::Close { handle: h })
            .expect("close");
    }
    open(&greedy, "file", libc::O_RDONLY).expect("an open once its budget is free");
}

fn flock(f: &File, op: i32) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `fcntl(F_SETLK)` of `start..start+len` through a mount.
fn setlk(f: &File, typ: i32, start: i64, len: i64) -> io::Result<()> {
    // SAFETY: plain data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: a valid descriptor and flock structure.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn a_connection_at_its_lock_range_cap_gets_enolck_and_others_keep_locking() {
    let f = fixture!();
    fs::write(f.e("db"), b"data").unwrap();
    let greedy = raw_client(&f);
    let handle = open(&greedy, "db", libc::O_RDWR).expect("open");
    let take = |i: u64| {
        greedy.call(
            &root(),
            Op::SetLock {
                handle,
                owner: 1,
                kind: LockKind::Posix,
                lock: FileLock {
                    typ: LockType::Write,
                    start: 2 * i,
                    end: 2 * i,
                },
            },
        )
    };
    // Separate ranges (one byte apart, so none merge) up to the cap...
    let mut taken = 0u64;
    let refused = loop {
        match take(taken) {
            Ok(_) => taken += 1,
            Err(e) => break e,
        }
        assert!(taken <= 4096, "no cap: {taken} lock ranges held");
    };
    assert_eq!(refused.code(), libc::ENOLCK);
    assert_eq!(taken, 1024, "the cap on lock ranges per connection");
    // ...while a mount locks other ranges of the same file, and sees the
    // greedy connection's.
    let mnt = f.mnt.clone();
    within_deadline("locking beside a connection at its cap", move || {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(mnt.join("db"))
            .expect("open");
        for i in 0..200 {
            setlk(&file, libc::F_WRLCK, 100_000 + 2 * i, 1).expect("a lock of a free range");
        }
        assert_errno(setlk(&file, libc::F_WRLCK, 0, 1), libc::EAGAIN);
        setlk(&file, libc::F_UNLCK, 0, 0).expect("unlock");
    });
    // Letting go of a range makes room for another.
    greedy
        .call(
            &root(),
            Op::SetLock {
                handle,
                owner: 1,
                kind: LockKind::Posix,
                lock: FileLock {
                    typ: LockType::Unlock,
                    start: 0,
                    end: 0,
                },
            },
        )
        .expect("unlock one range");
    take(5000).expect("a range once one was let go");
}

fn a_write_above_max_chunk_is_refused_and_nothing_is_written() {
    let f = fixture!();
    fs::write(f.e("target"), b"before").unwrap();
    let peer = raw_client(&f);
    assert_eq!(peer.welcome().max_chunk, frame::MAX_CHUNK);
    let handle = open(&peer, "target", libc::O_RDWR).expect("open");
    let too_big = frame::MAX_CHUNK as usize * 2;
    let written = peer.call(
        &root(),
        Op::Write {
            handle,
            offset: 0,
            data: vec![b'x'; too_big],
        },
    );
    assert_eq!(written.err().map(Errno::code), Some(libc::EINVAL));
    assert_eq!(fs::read(f.e("target")).unwrap(), b"before");
    // The connection goes on: a write of max_chunk is taken.
    let full = frame::MAX_CHUNK as usize;
    let written = peer.call(
        &root(),
        Op::Write {
            handle,
            offset: 0,
            data: vec![b'y'; full],
        },
    );
    assert!(matches!(written, Ok(Reply::Written(n)) if n as usize == full));
    let mnt = f.mnt.clone();
    within_deadline(
        "the mount beside a peer sending oversized writes",
        move || {
            ordinary_work(&mnt, "chunk", 10);
            assert_eq!(fs::metadata(mnt.join("target")).unwrap().len(), full as u64);
        },
    );
}

/// The resident memory of this process (the server's, which runs in it), in bytes.
fn rss() -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// A peer speaking the protocol in plaintext (the server runs `--insecure`),
/// which sends requests and never reads the replies.
struct Greedy {
    /// Kept open, never read; closed when dropped.
    _stream: TcpStream,
}

impl Greedy {
    /// Connects, opens `p` (reading that reply), and asks for `reads` reads
    /// of a whole chunk of it, taking none of the replies.
    fn start(addr: &str, p: &str, reads: u64) -> Greedy {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        frame::write_frame(&mut stream, &Hello::new()).expect("hello");
        let welcome: HandshakeReply =
            frame::decode(&frame::read_frame(&mut stream).unwrap().expect("a welcome"))
                .expect("a handshake reply");
        assert!(matches!(welcome, HandshakeReply::Welcome(_)), "{welcome:?}");
        let request = |id, op| Request {
            id,
            cred: root(),
            op,
        };
        let open = request(
            1,
            Op::Open {
                path: path(p),
                flags: libc::O_RDONLY,
            },
        );
        frame::write_frame(&mut stream, &open).expect("open");
        // A connection that did not subscribe is sent answers only.
        let ServerMessage::Response(opened) =
            frame::decode(&frame::read_frame(&mut stream).unwrap().expect("a response"))
                .expect("a response")
        else {
            panic!("a notice on a connection that did not subscribe");
        };
        let handle = opened
            .result
            .ok()
            .and_then(|r| r.opened())
            .expect("opened")
            .0;
        for id in 0..reads {
            let read = request(
                2 + id,
                Op::Read {
                    handle,
                    offset: 0,
                    len: frame::MAX_CHUNK,
                },
            );
            frame::write_frame(&mut stream, &read).expect("a read request");
        }
        Greedy { _stream: stream }
    }
}

fn peers_that_never_read_their_replies_leave_the_servers_memory_bounded() {
    const PEERS: usize = 24;
    const READS: u64 = 40;
    let pool = 32 << 20;
    let mut f = fixture!(Setup {
        insecure: true,
        reply_memory: pool,
        ..Setup::default()
    });
    let other = f.second_mount("other", Setup::default());
    // As `ferry serve` runs: few malloc arenas, each keeping its own peak.
    ferry_server::limit_malloc_arenas(4);
    fs::write(f.e("big"), vec![7u8; frame::MAX_CHUNK as usize]).unwrap();
    fs::write(f.e("big4"), vec![9u8; 4 * frame::MAX_CHUNK as usize]).unwrap();
    // What both mounts do: read 4 MiB, write and read back files. Done once
    // before measuring, so that the mounts' own buffers (they run in this
    // process too) are in the baseline.
    let work = |tag: &'static str| {
        let (mnt, other) = (f.mnt.clone(), other.clone());
        move || {
            for mnt in [&mnt, &other] {
                let data = fs::read(mnt.join("big4")).expect("a 4 MiB read");
                assert_eq!(data.len(), 4 * frame::MAX_CHUNK as usize);
                ordinary_work(mnt, tag, 5);
            }
        }
    };
    within_deadline("mounts before the peers came", work("before"));
    let before = rss();
    // Unbounded, the replies asked for would take PEERS * READS MiB (960 MiB).
    let peers: Vec<Greedy> = (0..PEERS)
        .map(|_| Greedy::start(&f.addr(), "big", READS))
        .collect();
    // Both mounts keep reading and writing meanwhile.
    within_deadline("mounts beside peers that never read", work("beside"));
    // The server has had all the time it wants to grow; it did not.
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(rss());
        thread::sleep(Duration::from_millis(100));
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "RSS {} MiB before, {} MiB at the peak with {PEERS} peers not reading",
        before >> 20,
        peak >> 20
    );
    // The pool, each connection's own share (3.1 MiB) and buffers, with room
    // to spare: a quarter of what unbounded replies would take.
    let bound = 256u64 << 20;
    assert!(
        grown < bound,
        "the server grew by {} MiB with {PEERS} peers not reading (bound {} MiB)",
        grown >> 20,
        bound >> 20
    );
    // Once they leave, most of the memory goes back (the server trims its
    // heap): what stays is far from what was asked for.
    drop(peers);
    let left = Instant::now();
    while rss().saturating_sub(before) > 96 << 20 {
        assert!(
            left.elapsed() < DEADLINE,
            "the server kept {} MiB after the peers left",
            rss().saturating_sub(before) >> 20
        );
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "RSS {} MiB {:.1?} after the peers left",
        rss() >> 20,
        left.elapsed()
    );
    drop(other);
}

/// A FUSE file system mounted by this test that never answers anything (not
/// even the kernel's INIT): every call into it waits. Aborted through fusectl,
/// then detached, when dropped.
struct HungMount {
    at: PathBuf,
    /// Its connection under /sys/fs/fuse/connections.
    connection: String,
    device: Option<File>,
}

impl HungMount {
    fn at(at: &Path) -> HungMount {
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("/dev/fuse");
        let c = |s: &[u8]| CString::new(s).expect("no NUL");
        let target = c(at.as_os_str().as_bytes());
        let options = c(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            device.as_raw_fd()
        )
        .as_bytes());
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c(b"ferry-test-hung").as_ptr(),
                target.as_ptr(),
                c(b"fuse").as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount a hung FUSE: {}", io::Error::last_os_error());
        // Its device number names its connection (read from mountinfo: a
        // stat of the mountpoint would hang).
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let connection = mountinfo
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(4).map(Path::new) == Some(at))
            .and_then(|f| f[2].split(':').nth(1).map(str::to_string))
            .expect("the hung mount in mountinfo");
        HungMount {
            at: at.to_path_buf(),
            connection,
            device: Some(device),
        }
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        let connections = Path::new("/sys/fs/fuse/connections");
        let mounted = fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/fuse/connections"));
        // Mounted here only for the abort, and detached after it: a test
        // leaves no mount behind.
        let mounted_here = !mounted
            && std::process::Command::new("mount")
                .args(["-t", "fusectl", "none"])
                .arg(connections)
                .status()
                .is_ok_and(|s| s.success());
        let abort = connections.join(&self.connection).join("abort");
        if let Err(e) = fs::write(&abort, b"1") {
            eprintln!("cannot abort {}: {e}", abort.display());
        }
        // Closing the device ends the connection too.
        self.device.take();
        let target = CString::new(self.at.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if mounted_here {
            let control = CString::new(connections.as_os_str().as_bytes()).expect("no NUL");
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(control.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn a_stat_stuck_in_a_hung_mount_inside_the_export_holds_up_only_itself() {
    let mut f = fixture!();
    let other = f.second_mount("other", Setup::default());
    fs::create_dir(f.e("hung")).unwrap();
    fs::write(f.e("plain"), b"plain data").unwrap();
    // Opened before anything hangs: the stuck connection's other requests.
    let plain = File::open(f.m("plain")).unwrap();
    let hung = HungMount::at(&f.e("hung"));
    let (tx, rx) = mpsc::channel();
    let stuck_path = f.m("hung/anything");
    thread::spawn(move || {
        let _ = tx.send(fs::metadata(stuck_path));
    });
    // Well past the server's hand-over of a stuck connection (200 ms).
    thread::sleep(Duration::from_secs(1));
    assert!(
        rx.try_recv().is_err(),
        "the stat inside the hung mount did not get stuck"
    );
    // Another client works as usual...
    let mnt = other.clone();
    within_deadline("another client beside a stuck stat", move || {
        ordinary_work(&mnt, "stuck", 10);
        assert_eq!(fs::read(mnt.join("plain")).unwrap(), b"plain data");
    });
    // ...and so does the stuck client itself, through a file it has open.
    let mut buf = [0u8; 5];
    within_deadline("the stuck client's other requests", move || {
        plain
            .read_exact_at(&mut buf, 0)
            .expect("a read beside the stuck stat");
        assert_eq!(&buf, b"plain");
    });
    // Ending the hung mount ends the stuck call (with an error).
    drop(hung);
    let stuck = rx
        .recv_timeout(DEADLINE)
        .expect("the stuck stat ended once the hung mount was aborted");
    assert!(stuck.is_err(), "a stat inside an aborted mount: {stuck:?}");
}

tests! {
    one_connection_at_its_descriptor_budget_gets_emfile_and_others_keep_opening => [Fuse],
    a_connection_at_its_lock_range_cap_gets_enolck_and_others_keep_locking => [Fuse],
    a_write_above_max_chunk_is_refused_and_nothing_is_written => [Fuse],
    peers_that_never_read_their_replies_leave_the_servers_memory_bounded => [Fuse],
    a_stat_stuck_in_a_hung_mount_inside_the_export_holds_up_only_itself => [Fuse, Root],
}
