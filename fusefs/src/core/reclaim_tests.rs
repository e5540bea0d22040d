//! Locks across a lost connection and a server restart, with the core against
//! a real server in this process: taken back in the grace period, excluded
//! meanwhile, waited for across the restart, and failing loudly (EIO) when
//! they cannot be taken back.

use super::tests::{me, wait, Harness, PATIENCE};
use super::*;
use crate::inode::ROOT_INO;
use std::ffi::OsStr;
use std::sync::mpsc;
use std::time::Instant;

const OWNER: u64 = 7;
const THEIR_OWNER: u64 = 8;

/// A server with grace periods of `grace` and a record of the clients
/// holding locks (kept in `state`), and a core connected to it.
fn serving(grace: Duration, state: &tempfile::TempDir) -> Harness {
    let record = state.path().join("lock-clients");
    let opts = FsOptions {
        attr_timeout: Duration::from_secs(60),
        ..FsOptions::default()
    };
    Harness::serving(opts, |config| {
        config.grace = grace;
        config.lock_record = Some(record);
    })
}

/// `F_SETLK` (or `F_SETLKW` with `sleep`) of bytes 0..=99 by `owner`.
fn setlk(core: &Core, ino: u64, fh: u64, owner: u64, typ: i32, sleep: bool) -> Result<(), Errno> {
    wait(|d| core.setlk(&me(), ino, fh, owner, 0, 99, typ, sleep, d))
}

/// The other client's inode and open handle of `name`.
fn open_elsewhere(other: &Core, name: &str) -> (u64, u64) {
    let ino = match wait(|d| other.lookup(&me(), ROOT_INO, OsStr::new(name), d)) {
        Ok(Lookup::Found(e)) => e.ino,
        x => panic!("lookup {name}: {x:?}"),
    };
    let opened = wait(|d| other.open(&me(), ino, libc::O_RDWR, d)).expect("open");
    (ino, opened.fh)
}

/// close(2) by `owner`, then the kernel's release.
fn close_as(h: &Harness, ino: u64, fh: u64, owner: u64) -> Result<(), Errno> {
    let flushed = wait(|d| h.core.flush(&me(), ino, fh, owner, d));
    h.core.release(&me(), ino, fh);
    flushed
}

/// Waits until `core` is connected again after a restart (a request by path,
/// not through an open file, goes through).
fn reconnected(core: &Core) {
    once_connected(|| wait(|d| core.statfs(&me(), d))).expect("reconnected");
}

/// Repeats `attempt` while it fails because a connection is being made again
/// (EIO on a broken one), and answers its first other result.
fn once_connected<T>(mut attempt: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match attempt() {
            Err(Errno::EIO) if Instant::now() < deadline => {
                std::thread::sleep(crate::client::RECONNECT_INTERVAL / 5)
            }
            other => return other,
        }
    }
}

#[test]
fn a_lock_survives_a_server_restart_and_excludes_others_meanwhile() {
    let state = tempfile::tempdir().expect("a state dir");
    let mut h = serving(Duration::from_secs(60), &state);
    std::fs::write(h.on_disk("db"), b"data").expect("a file");
    let ino = h.ino(ROOT_INO, "db");
    let mine = h.open(ino, libc::O_RDWR).expect("open");
    setlk(&h.core, ino, mine.fh, OWNER, libc::F_WRLCK, false).expect("lock");
    let other = h.another_client();
    let (their_ino, theirs) = open_elsewhere(&other, "db");
    // The other client waits for the lock, across the restart.
    let (tx, rx) = mpsc::channel();
    other.setlk(
        &me(),
        their_ino,
        theirs,
        THEIR_OWNER,
        0,
        99,
        libc::F_WRLCK,
        true,
        move |r| {
            let _ = tx.send(r);
        },
    );
    h.restart_server();
    // The holder's next write reconnects, takes the lock back first, and lands.
    once_connected(|| h.write(ino, mine.fh, 0, b"MINE")).expect("a write under the lock");
    // The other client cannot take it: it is held again.
    let taken = once_connected(|| setlk(&other, their_ino, theirs, 9, libc::F_RDLCK, false));
    assert_eq!(taken, Err(Errno::new(libc::EAGAIN)));
    if let Ok(got) = rx.recv_timeout(Duration::from_millis(500)) {
        panic!("the waiter ended while the lock is held: {got:?}");
    }
    // The grace period ends once the only client that held locks is back:
    // a range nobody holds is granted well before its 60 s are over.
    let free = wait(|d| {
        other.setlk(
            &me(),
            their_ino,
            theirs,
            9,
            200,
            299,
            libc::F_RDLCK,
            true,
            d,
        )
    });
    assert_eq!(free, Ok(()));
    // The holder lets go: the waiter, which waited across the restart, gets it.
    setlk(&h.core, ino, mine.fh, OWNER, libc::F_UNLCK, false).expect("unlock");
    assert_eq!(rx.recv_timeout(PATIENCE), Ok(Ok(())));
    assert_eq!(std::fs::read(h.on_disk("db")).expect("on disk"), b"MINE");
}

#[test]
fn a_lock_kept_across_a_broken_connection_stays_its_holders() {
    let state = tempfile::tempdir().expect("a state dir");
    let h = serving(Duration::from_secs(60), &state);
    std::fs::write(h.on_disk("f"), b"data").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let mine = h.open(ino, libc::O_RDWR).expect("open");
    setlk(&h.core, ino, mine.fh, OWNER, libc::F_WRLCK, false).expect("lock");
    let other = h.another_client();
    let (their_ino, theirs) = open_elsewhere(&other, "f");
    // The holder's connection breaks; the server keeps its lock for it.
    h.core.client().break_connection();
    assert_eq!(
        setlk(&other, their_ino, theirs, THEIR_OWNER, libc::F_WRLCK, false),
        Err(Errno::new(libc::EAGAIN))
    );
    once_connected(|| h.write(ino, mine.fh, 0, b"x")).expect("write after reconnecting");
    assert_eq!(
        setlk(&other, their_ino, theirs, THEIR_OWNER, libc::F_WRLCK, false),
        Err(Errno::new(libc::EAGAIN))
    );
    // Closing drops it on the new connection, as on the old.
    close_as(&h, ino, mine.fh, OWNER).expect("close");
    setlk(&other, their_ino, theirs, THEIR_OWNER, libc::F_WRLCK, false).expect("lock");
}

#[test]
fn a_lock_taken_by_another_client_after_the_grace_period_fails_its_holder_with_eio() {
    let state = tempfile::tempdir().expect("a state dir");
    let mut h = serving(Duration::from_secs(1), &state);
    std::fs::write(h.on_disk("f"), b"data").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let mine = h.open(ino, libc::O_RDWR).expect("open");
    setlk(&h.core, ino, mine.fh, OWNER, libc::F_WRLCK, false).expect("lock");
    let other = h.another_client();
    let (their_ino, theirs) = open_elsewhere(&other, "f");
    // The holder stays away (as a machine asleep would): it does not connect
    // again by itself.
    h.core
        .client()
        .keep_connected_while(std::sync::Arc::new(|| false));
    h.restart_server();
    // Once the grace period is over the other client gets the lock (waiting
    // meanwhile: the server grants nothing new).
    let taken =
        once_connected(|| setlk(&other, their_ino, theirs, THEIR_OWNER, libc::F_WRLCK, true));
    assert_eq!(taken, Ok(()));
    // The holder cannot take it back: everything through its file fails.
    reconnected(&h.core);
    assert_eq!(h.write(ino, mine.fh, 0, b"x"), Err(Errno::EIO));
    assert_eq!(h.read(ino, mine.fh, 0, 4), Err(Errno::EIO));
    assert_eq!(
        setlk(&h.core, ino, mine.fh, OWNER, libc::F_WRLCK, false),
        Err(Errno::EIO)
    );
    assert_eq!(close_as(&h, ino, mine.fh, OWNER), Err(Errno::EIO));
    assert_eq!(std::fs::read(h.on_disk("f")).expect("on disk"), b"data");
    // Opening the file again starts afresh.
    let again = h.open(ino, libc::O_RDWR).expect("open again");
    assert_eq!(h.read(ino, again.fh, 0, 4), Ok(b"data".to_vec()));
    h.close(ino, again.fh).expect("close");
}

#[test]
fn a_holder_that_asks_nothing_is_back_within_the_grace_period() {
    let state = tempfile::tempdir().expect("a state dir");
    let mut h = serving(Duration::from_secs(3), &state);
    std::fs::write(h.on_disk("f"), b"data").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let mine = h.open(ino, libc::O_RDWR).expect("open");
    setlk(&h.core, ino, mine.fh, OWNER, libc::F_WRLCK, false).expect("lock");
    let other = h.another_client();
    let (their_ino, theirs) = open_elsewhere(&other, "f");
    h.restart_server();
    // The holder makes no request at all; the other client waits for the
    // lock past the grace period, and does not get it: the holder's mount
    // connected again by itself and took its lock back.
    let asked = Instant::now();
    let (tx, rx) = mpsc::channel();
    let waiter = other.clone();
    std::thread::spawn(move || {
        let _ = tx.send(once_connected(|| {
            setlk(&waiter, their_ino, theirs, THEIR_OWNER, libc::F_WRLCK, true)
        }));
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(6)).is_err(),
        "the other client took the lock of a holder that asked nothing"
    );
    assert!(asked.elapsed() >= Duration::from_secs(6));
    // The holder still has it, and lets go: the waiter gets it.
    assert_eq!(h.write(ino, mine.fh, 0, b"x"), Ok(1));
    close_as(&h, ino, mine.fh, OWNER).expect("close");
    let taken = rx.recv_timeout(PATIENCE).expect("the waiter's answer");
    assert_eq!(taken, Ok(()));
}

#[test]
fn a_lock_on_a_file_replaced_while_the_server_was_down_is_lost() {
    let state = tempfile::tempdir().expect("a state dir");
    let mut h = serving(Duration::from_secs(60), &state);
    std::fs::write(h.on_disk("f"), b"old").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let mine = h.open(ino, libc::O_RDWR).expect("open");
    setlk(&h.core, ino, mine.fh, OWNER, libc::F_WRLCK, false).expect("lock");
    h.stop_server();
    // Another file takes the name (as an editor's save does).
    std::fs::write(h.on_disk("f.new"), b"new").expect("a file");
    std::fs::rename(h.on_disk("f.new"), h.on_disk("f")).expect("rename");
    h.start_server();
    reconnected(&h.core);
    assert_eq!(h.write(ino, mine.fh, 0, b"x"), Err(Errno::EIO));
    assert_eq!(std::fs::read(h.on_disk("f")).expect("on disk"), b"new");
    let _ = h.close(ino, mine.fh);
}

#[test]
fn without_a_grace_period_no_lock_survives_a_restart() {
    let state = tempfile::tempdir().expect("a state dir");
    let mut h = serving(Duration::ZERO, &state);
    std::fs::write(h.on_disk("f"), b"data").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let mine = h.open(ino, libc::O_RDWR).expect("open");
    setlk(&h.core, ino, mine.fh, OWNER, libc::F_RDLCK, false).expect("lock");
    h.restart_server();
    reconnected(&h.core);
    assert_eq!(h.read(ino, mine.fh, 0, 4), Err(Errno::EIO));
    // A file that held no lock goes on as before.
    let other = h.open(ino, libc::O_RDONLY).expect("open");
    assert_eq!(h.read(ino, other.fh, 0, 4), Ok(b"data".to_vec()));
}
