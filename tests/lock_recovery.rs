//! Locks across a server restart, through real mounts: a lock held when the
//! server restarts stays its holder's — during the grace period nobody else
//! gets it (nor any new lock), and after it the holder still has it — and a
//! lock that cannot be taken back fails its holder loudly: the next operation
//! through the file answers EIO, so two processes never both believe they
//! hold it.

mod common;

use common::{assert_errno, Setup};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the tests give anything that should eventually happen.
const PATIENCE: Duration = Duration::from_secs(60);

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn flock_struct(typ: i32) -> libc::flock {
    // SAFETY: plain data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

/// `fcntl(F_SETLK)` of the whole file.
fn setlk(f: &File, typ: i32) -> io::Result<()> {
    let fl = flock_struct(typ);
    // SAFETY: a valid descriptor and flock structure.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The lock type `F_GETLK` reports for a write lock on the whole file.
fn getlk(f: &File) -> i32 {
    let mut fl = flock_struct(libc::F_WRLCK);
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    assert_eq!(r, 0, "F_GETLK: {}", io::Error::last_os_error());
    i32::from(fl.l_type)
}

/// Retries `attempt` while it fails with EAGAIN or EIO (a mount still
/// reconnecting), until it succeeds; fails the test after [`PATIENCE`].
fn eventually(what: &str, mut attempt: impl FnMut() -> io::Result<()>) {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(()) => return,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EIO)) => {
                assert!(
                    start.elapsed() < PATIENCE,
                    "{what}: still {e} after {PATIENCE:?}"
                );
            }
            Err(e) => panic!("{what}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the mount at `mnt` reaches the server again (opening always
/// asks the server).
fn reconnected(mnt: &Path) {
    eventually("reconnecting", || File::open(mnt.join("probe")).map(drop));
}

fn a_lock_held_across_a_server_restart_is_kept_and_excluded_during_the_grace_period() {
    let grace = Duration::from_secs(4);
    let setup = Setup {
        grace,
        ..Setup::default()
    };
    let mut f = fixture!(setup.clone());
    let other = f.second_mount("other", setup);
    for name in ["db", "free", "probe"] {
        fs::write(f.m(name), b"0123456789").unwrap();
    }
    let mut held = open_rw(&f.m("db"));
    // A server starts in a grace period (it may have restarted); no lock
    // is granted before it ends.
    eventually("the first lock", || setlk(&held, libc::F_WRLCK));
    let theirs = open_rw(&other.join("db"));
    assert_errno(setlk(&theirs, libc::F_WRLCK), libc::EAGAIN);

    f.restart_server();
    let restarted = Instant::now();
    // The grace period (no record of lock holders: it lasts its whole
    // length): neither the held lock nor any new one is granted to the other
    // mount, which hears EAGAIN (EIO while it is still reconnecting).
    let unrelated = open_rw(&other.join("free"));
    let mut refused_in_grace = 0;
    while restarted.elapsed() < grace - Duration::from_secs(1) {
        for (what, file) in [("the held lock", &theirs), ("a new lock", &unrelated)] {
            match setlk(file, libc::F_WRLCK) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => refused_in_grace += 1,
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
                other => panic!(
                    "{what} in the grace period, {:?} after the restart: {other:?}",
                    restarted.elapsed()
                ),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        refused_in_grace > 0,
        "the other mount never reached the restarted server during its grace period"
    );
    // After it, new locks are granted again...
    eventually("a new lock after the grace period", || {
        setlk(&unrelated, libc::F_WRLCK)
    });
    // ...but the held one is still its holder's: the other mount, and a
    // process on the server itself, see it held.
    assert_errno(setlk(&theirs, libc::F_WRLCK), libc::EAGAIN);
    assert_eq!(getlk(&theirs), libc::F_WRLCK);
    assert_eq!(getlk(&open_rw(&f.e("db"))), libc::F_WRLCK);
    // The holder goes on working under it, with no error.
    held.write_all_at(b"held", 0)
        .expect("a write under the kept lock");
    held.sync_all().expect("fsync under the kept lock");
    let mut back = String::new();
    held.seek(SeekFrom::Start(0)).unwrap();
    held.read_to_string(&mut back)
        .expect("a read under the kept lock");
    assert_eq!(fs::read(f.e("db")).unwrap(), b"held456789");
    // Once it lets go, the other mount gets it.
    setlk(&held, libc::F_UNLCK).expect("unlock");
    eventually("the lock once its holder let go", || {
        setlk(&theirs, libc::F_WRLCK)
    });
    drop((held, theirs, unrelated));
}

fn a_lock_that_cannot_be_taken_back_fails_its_holder_with_eio() {
    // No grace period: a restarted server lost every lock, and grants them
    // to whoever asks first.
    let mut f = fixture!();
    let other = f.second_mount("other", Setup::default());
    for name in ["db", "probe"] {
        fs::write(f.m(name), b"0123456789").unwrap();
    }
    let held = open_rw(&f.m("db"));
    setlk(&held, libc::F_WRLCK).expect("the first lock");
    let theirs = open_rw(&other.join("db"));
    assert_errno(setlk(&theirs, libc::F_WRLCK), libc::EAGAIN);

    f.restart_server();
    reconnected(&f.mnt);
    reconnected(&other);
    // The other mount takes the lock: the holder's is lost for good.
    eventually("the lock after the restart", || {
        setlk(&theirs, libc::F_WRLCK)
    });
    // Every later operation through the holder's file says so — not once,
    // every time — and nothing it writes lands.
    assert_errno(held.write_at(b"lost", 0), libc::EIO);
    assert_errno(held.write_at(b"lost", 0), libc::EIO);
    assert_errno(held.sync_all(), libc::EIO);
    assert_errno(setlk(&held, libc::F_WRLCK), libc::EIO);
    assert_eq!(fs::read(f.e("db")).unwrap(), b"0123456789");
    // The other mount's lock holds, and it writes under it.
    theirs
        .write_all_at(b"mine", 0)
        .expect("a write under the new lock");
    theirs.sync_all().unwrap();
    assert_eq!(fs::read(f.e("db")).unwrap(), b"mine456789");
    // Closing the lost file reports it too; opening the file again starts afresh.
    let fd = held.as_raw_fd();
    std::mem::forget(held);
    // SAFETY: `fd` is the descriptor `held` owned, forgotten above, closed once.
    let closed = unsafe { libc::close(fd) };
    assert_eq!(closed, -1, "closing a file whose lock was lost succeeded");
    assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EIO));
    let again = open_rw(&f.m("db"));
    assert_errno(setlk(&again, libc::F_WRLCK), libc::EAGAIN);
    drop(theirs);
    eventually("the lock once the other mount let go", || {
        setlk(&again, libc::F_WRLCK)
    });
    let mut buf = [0u8; 4];
    again.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"mine");
    drop(again);
    // Nothing else was disturbed.
    let mut probe = OpenOptions::new().append(true).open(f.m("probe")).unwrap();
    probe.write_all(b"!").unwrap();
}

tests! {
    a_lock_held_across_a_server_restart_is_kept_and_excluded_during_the_grace_period => [Fuse],
    a_lock_that_cannot_be_taken_back_fails_its_holder_with_eio => [Fuse],
}
