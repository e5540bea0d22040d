//! flock and fcntl locks held by the server: two mounts exclude each other, a
//! mount and a local process on the server's directory exclude each other, and
//! locks end when their holder closes, is signalled while waiting, or loses its
//! connection.

mod common;

use common::{assert_errno, Setup};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn flock_struct(typ: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: plain data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// `fcntl(F_SETLK or F_SETLKW)` on `start..start+len` (len 0: to the end).
fn setlk(f: &File, cmd: i32, typ: i32, start: i64, len: i64) -> io::Result<()> {
    let fl = flock_struct(typ, start, len);
    // SAFETY: a valid descriptor and flock structure.
    if unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getlk(f: &File, typ: i32, start: i64, len: i64) -> libc::flock {
    let mut fl = flock_struct(typ, start, len);
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    assert_eq!(r, 0, "F_GETLK: {}", io::Error::last_os_error());
    fl
}

fn flock(f: &File, op: i32) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Retries a non-blocking lock until it succeeds; fails the test after a minute.
fn eventually(what: &str, mut attempt: impl FnMut() -> io::Result<()>) {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
            Err(e) => panic!("{what}: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: still locked after a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A python3 process that takes a lock on `path` and holds it until dropped.
struct Holder(Child);

const HOLD_LOCKF: &str = "import fcntl,sys\nf=open(sys.argv[1],'r+')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\nsys.stdin.read()\n";
const HOLD_FLOCK: &str = "import fcntl,sys\nf=open(sys.argv[1],'r+')\nfcntl.flock(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\nsys.stdin.read()\n";

impl Holder {
    fn start(script: &str, path: &Path) -> Holder {
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the lock tests");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "locked", "the holder did not get its lock");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a python3 snippet with `path` as argv[1] and returns its trimmed stdout.
fn python(script: &str, path: &Path) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python3 is needed for the lock tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const TRY_LOCKF: &str = "import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n    fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\n    print('got')\nexcept OSError:\n    print('busy')\n";
const TRY_FLOCK: &str = "import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n    fcntl.flock(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\n    print('got')\nexcept OSError:\n    print('busy')\n";

fn posix_locks_exclude_between_two_mounts_and_getlk_names_the_conflict() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    fs::write(f.m("db"), vec![0u8; 4096]).unwrap();
    let a = open_rw(&f.m("db"));
    let b = open_rw(&other.join("db"));
    setlk(&a, libc::F_SETLK, libc::F_WRLCK, 0, 100).unwrap();
    // Overlapping: refused. Beside it: fine.
    assert_errno(
        setlk(&b, libc::F_SETLK, libc::F_WRLCK, 50, 10),
        libc::EAGAIN,
    );
    assert_errno(setlk(&b, libc::F_SETLK, libc::F_RDLCK, 99, 1), libc::EAGAIN);
    setlk(&b, libc::F_SETLK, libc::F_WRLCK, 100, 100).unwrap();
    // F_GETLK from the other mount reports the holder's range and type.
    let fl = getlk(&b, libc::F_WRLCK, 10, 1);
    assert_eq!(i32::from(fl.l_type), libc::F_WRLCK);
    assert_eq!((fl.l_start, fl.l_len), (0, 100));
    // And nothing where nobody holds a lock.
    let fl = getlk(&b, libc::F_WRLCK, 300, 10);
    assert_eq!(i32::from(fl.l_type), libc::F_UNLCK);
    // Read locks share.
    setlk(&a, libc::F_SETLK, libc::F_RDLCK, 1000, 10).unwrap();
    setlk(&b, libc::F_SETLK, libc::F_RDLCK, 1000, 10).unwrap();
    assert_errno(
        setlk(&b, libc::F_SETLK, libc::F_WRLCK, 1000, 1),
        libc::EAGAIN,
    );
    // Unlocking part of a range frees that part only.
    setlk(&a, libc::F_SETLK, libc::F_UNLCK, 0, 50).unwrap();
    setlk(&b, libc::F_SETLK, libc::F_WRLCK, 0, 50).unwrap();
    assert_errno(setlk(&b, libc::F_SETLK, libc::F_WRLCK, 60, 1), libc::EAGAIN);
    // Closing the holder's descriptor releases its locks.
    drop(a);
    setlk(&b, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
}

fn one_process_does_not_conflict_with_itself_and_any_close_releases() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    fs::write(f.m("file"), b"data").unwrap();
    // Two descriptors of one process: one lock owner, as on a local disk.
    let first = open_rw(&f.m("file"));
    let second = open_rw(&f.m("file"));
    setlk(&first, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    setlk(&second, libc::F_SETLK, libc::F_WRLCK, 0, 10).unwrap();
    let b = open_rw(&other.join("file"));
    assert_errno(setlk(&b, libc::F_SETLK, libc::F_RDLCK, 0, 1), libc::EAGAIN);
    // POSIX: closing any descriptor of the file drops all of the process's locks.
    drop(second);
    setlk(&b, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    // Now `first` is refused: its lock went with the close.
    assert_errno(
        setlk(&first, libc::F_SETLK, libc::F_RDLCK, 0, 1),
        libc::EAGAIN,
    );
}

fn posix_locks_exclude_a_local_process_on_the_server() {
    let f = fixture!();
    fs::write(f.e("file"), b"data").unwrap();
    // A local process holds the lock: the mount is refused.
    {
        let _holder = Holder::start(HOLD_LOCKF, &f.e("file"));
        let m = open_rw(&f.m("file"));
        assert_errno(setlk(&m, libc::F_SETLK, libc::F_WRLCK, 0, 0), libc::EAGAIN);
        let fl = getlk(&m, libc::F_RDLCK, 0, 1);
        assert_eq!(i32::from(fl.l_type), libc::F_WRLCK);
    }
    // The holder has gone: the mount gets it, and a local process is refused.
    let m = open_rw(&f.m("file"));
    eventually("lock after the local holder left", || {
        setlk(&m, libc::F_SETLK, libc::F_WRLCK, 0, 0)
    });
    assert_eq!(python(TRY_LOCKF, &f.e("file")), "busy");
    drop(m);
    assert_eq!(python(TRY_LOCKF, &f.e("file")), "got");
}

fn flock_excludes_between_mounts_and_with_the_server() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    fs::write(f.m("file"), b"data").unwrap();
    let a = open_rw(&f.m("file"));
    flock(&a, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    let b = open_rw(&other.join("file"));
    assert_errno(flock(&b, libc::LOCK_SH | libc::LOCK_NB), libc::EWOULDBLOCK);
    // A second open of the same mount is another open file: refused too.
    let a2 = open_rw(&f.m("file"));
    assert_errno(flock(&a2, libc::LOCK_EX | libc::LOCK_NB), libc::EWOULDBLOCK);
    // A local process on the server is refused...
    assert_eq!(python(TRY_FLOCK, &f.e("file")), "busy");
    // ...while fcntl locks are a separate family, as on Linux.
    setlk(&b, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    // Downgrade to shared: other shared locks may join.
    flock(&a, libc::LOCK_SH | libc::LOCK_NB).unwrap();
    flock(&b, libc::LOCK_SH | libc::LOCK_NB).unwrap();
    assert_errno(flock(&a2, libc::LOCK_EX | libc::LOCK_NB), libc::EWOULDBLOCK);
    flock(&a, libc::LOCK_UN).unwrap();
    flock(&b, libc::LOCK_UN).unwrap();
    flock(&a2, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    drop(a2);
    // And a local holder keeps the mounts out.
    let _holder = {
        // Wait for the released lock to be gone on the server (release is
        // asynchronous, as it is for the kernel).
        eventually("local flock after release", || {
            match python(TRY_FLOCK, &f.e("file")).as_str() {
                "got" => Ok(()),
                _ => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            }
        });
        Holder::start(HOLD_FLOCK, &f.e("file"))
    };
    assert_errno(flock(&b, libc::LOCK_EX | libc::LOCK_NB), libc::EWOULDBLOCK);
}

fn a_waiting_lock_is_granted_when_the_holder_lets_go() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    fs::write(f.m("file"), b"data").unwrap();
    let a = open_rw(&f.m("file"));
    setlk(&a, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    let granted = Arc::new(AtomicBool::new(false));
    let flag = granted.clone();
    let path = other.join("file");
    let waiter = std::thread::spawn(move || {
        let b = open_rw(&path);
        setlk(&b, libc::F_SETLKW, libc::F_WRLCK, 0, 0).unwrap();
        flag.store(true, Ordering::SeqCst);
        b
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !granted.load(Ordering::SeqCst),
        "granted while another mount held it"
    );
    setlk(&a, libc::F_SETLK, libc::F_UNLCK, 0, 0).unwrap();
    let b = waiter.join().expect("the waiter failed");
    assert!(granted.load(Ordering::SeqCst));
    // Now the first mount is refused until the waiter closes.
    assert_errno(setlk(&a, libc::F_SETLK, libc::F_RDLCK, 0, 1), libc::EAGAIN);
    drop(b);
    setlk(&a, libc::F_SETLKW, libc::F_RDLCK, 0, 1).unwrap();
}

fn a_waiting_flock_is_granted_when_the_holder_closes() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    fs::write(f.m("file"), b"data").unwrap();
    let a = open_rw(&f.m("file"));
    flock(&a, libc::LOCK_EX).unwrap();
    let granted = Arc::new(AtomicBool::new(false));
    let flag = granted.clone();
    let path = other.join("file");
    let waiter = std::thread::spawn(move || {
        let b = open_rw(&path);
        flock(&b, libc::LOCK_EX).unwrap();
        flag.store(true, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!granted.load(Ordering::SeqCst));
    drop(a);
    waiter.join().expect("the waiter failed");
}

fn a_signal_ends_a_wait() {
    let f = fixture!();
    fs::write(f.m("file"), b"data").unwrap();
    let a = open_rw(&f.m("file"));
    setlk(&a, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    // Another process waits for the lock; an alarm whose handler raises ends
    // the wait (Python retries EINTR otherwise).
    let script = "import fcntl,signal,sys\nclass Alarm(Exception): pass\ndef ring(*_): raise Alarm()\nsignal.signal(signal.SIGALRM, ring)\nf=open(sys.argv[1],'r+')\nsignal.alarm(1)\ntry:\n    fcntl.lockf(f,fcntl.LOCK_EX)\n    print('got')\nexcept Alarm:\n    print('interrupted')\n";
    assert_eq!(python(script, &f.m("file")), "interrupted");
    // SIGKILL ends a wait as well.
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import fcntl,sys\nf=open(sys.argv[1],'r+')\nprint('waiting',flush=True)\nfcntl.lockf(f,fcntl.LOCK_EX)\n",
        ])
        .arg(f.m("file"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
    // The lock is still ours and still works.
    let fl = getlk(&open_rw(&f.e("file")), libc::F_RDLCK, 0, 1);
    assert_eq!(i32::from(fl.l_type), libc::F_WRLCK);
    drop(a);
}

/// A `ferry mount` process, killed (and its mount detached) on drop.
struct MountProcess {
    child: Child,
    mnt: PathBuf,
}

impl MountProcess {
    fn start(addr: &str, credentials: &[std::ffi::OsString], mnt: &Path) -> MountProcess {
        fs::create_dir_all(mnt).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["mount", addr])
            .arg(mnt)
            .args(credentials)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let m = MountProcess {
            child,
            mnt: mnt.to_path_buf(),
        };
        let start = Instant::now();
        while !mounted(mnt) {
            assert!(start.elapsed() < Duration::from_secs(30), "never mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }
}

fn mounted(p: &Path) -> bool {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == p.to_str())
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if mounted(&self.mnt) {
            let _ = ferry_fusefs::mount::lazy_unmount(&self.mnt);
        }
    }
}

fn locks_end_when_the_holders_connection_dies() {
    let f = fixture!();
    fs::write(f.m("file"), b"data").unwrap();
    let mnt2 = f.temp().join("killed");
    let mut mount = MountProcess::start(&f.addr(), &f.client_args(), &mnt2);
    let holder = Holder::start(HOLD_LOCKF, &mnt2.join("file"));
    let flocker = Holder::start(HOLD_FLOCK, &mnt2.join("file"));
    let a = open_rw(&f.m("file"));
    assert_errno(setlk(&a, libc::F_SETLK, libc::F_WRLCK, 0, 0), libc::EAGAIN);
    assert_errno(flock(&a, libc::LOCK_EX | libc::LOCK_NB), libc::EWOULDBLOCK);
    // The client dies without closing anything: its connection closes, and the
    // server lets go of everything it held.
    mount.child.kill().unwrap();
    mount.child.wait().unwrap();
    eventually("fcntl lock after the client died", || {
        setlk(&a, libc::F_SETLK, libc::F_WRLCK, 0, 0)
    });
    eventually("flock after the client died", || {
        flock(&a, libc::LOCK_EX | libc::LOCK_NB)
    });
    drop(holder);
    drop(flocker);
    drop(mount);
    let _ = std::io::stdout().flush();
}

fn directory_locks_stay_local_and_never_reach_a_file() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    fs::create_dir(f.m("dir")).unwrap();
    fs::write(f.m("file"), b"data").unwrap();
    // An open file and an open directory; their handle numbers may coincide.
    let file = open_rw(&f.m("file"));
    let dir = File::open(f.m("dir")).unwrap();
    // The kernel keeps directory flocks to itself (FUSE has no directory locks).
    flock(&dir, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    let dir2 = File::open(f.m("dir")).unwrap();
    assert_errno(
        flock(&dir2, libc::LOCK_EX | libc::LOCK_NB),
        libc::EWOULDBLOCK,
    );
    // The file was not locked in the directory's stead.
    let b = open_rw(&other.join("file"));
    flock(&b, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    setlk(&b, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    drop(file);
}

fn a_wait_longer_than_the_request_timeout_is_not_a_timeout() {
    let short = Setup {
        timeout: Duration::from_millis(500),
        ..Setup::default()
    };
    let mut f = fixture!(short.clone());
    let other = f.second_mount("mnt2", short);
    fs::write(f.m("file"), b"data").unwrap();
    let a = open_rw(&f.m("file"));
    setlk(&a, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    flock(&a, libc::LOCK_EX).unwrap();
    let path = other.join("file");
    let waiter = std::thread::spawn(move || {
        let b = open_rw(&path);
        setlk(&b, libc::F_SETLKW, libc::F_WRLCK, 0, 0)?;
        flock(&b, libc::LOCK_EX)
    });
    // Several request timeouts pass while the other mount waits.
    std::thread::sleep(Duration::from_millis(2000));
    drop(a);
    waiter
        .join()
        .expect("the waiter panicked")
        .expect("a long wait must end with the lock, not ETIMEDOUT");
}

tests! {
    posix_locks_exclude_between_two_mounts_and_getlk_names_the_conflict => [Fuse],
    one_process_does_not_conflict_with_itself_and_any_close_releases => [Fuse],
    posix_locks_exclude_a_local_process_on_the_server => [Fuse],
    flock_excludes_between_mounts_and_with_the_server => [Fuse],
    a_waiting_lock_is_granted_when_the_holder_lets_go => [Fuse],
    a_waiting_flock_is_granted_when_the_holder_closes => [Fuse],
    a_signal_ends_a_wait => [Fuse],
    locks_end_when_the_holders_connection_dies => [Fuse],
    directory_locks_stay_local_and_never_reach_a_file => [Fuse],
    a_wait_longer_than_the_request_timeout_is_not_a_timeout => [Fuse],
}
