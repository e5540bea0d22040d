//! A walk reading files: the small files of a directory it reads, fetched
//! ahead, answer their opens without a round trip, and only while they may
//! be trusted.

use super::*;
use crate::files_ahead::{HELD_BYTES, LARGEST};

fn harness(attr_timeout: Duration, lease: Duration) -> Harness {
    Harness::with(FsOptions {
        attr_timeout,
        lease,
        ..FsOptions::default()
    })
}

impl Harness {
    /// Reads all of `ino` through `fh` as the kernel does, a readahead
    /// window at a time, until a read comes short (the kernel knows the size
    /// and asks for no more).
    fn read_all(&self, ino: u64, fh: u64) -> Vec<u8> {
        const WINDOW: usize = 128 << 10;
        let mut all = Vec::new();
        loop {
            let chunk = self
                .read(ino, fh, all.len() as u64, WINDOW as u32)
                .expect("read");
            let short = chunk.len() < WINDOW;
            all.extend_from_slice(&chunk);
            if short {
                return all;
            }
        }
    }
}

/// The contents of file `i` of a directory: `i * 997` bytes (0 for the first).
fn contents(i: usize) -> Vec<u8> {
    (0..i * 997).map(|b| ((b + i) % 251) as u8).collect()
}

/// `d` with files `f00`..`f{n-1}` and one larger than is fetched ahead,
/// listed (as a walk lists it first); its inode and the files' inodes.
fn walked_dir(h: &Harness, n: usize) -> (u64, Vec<u64>, u64) {
    std::fs::create_dir(h.on_disk("d")).expect("a directory");
    for i in 0..n {
        std::fs::write(h.on_disk(&format!("d/f{i:02}")), contents(i)).expect("a file");
    }
    let big: Vec<u8> = (0..LARGEST as usize * 3).map(|b| (b % 253) as u8).collect();
    std::fs::write(h.on_disk("d/zbig"), big).expect("a large file");
    // The watch's news of the setup first: it would end the caches below.
    std::thread::sleep(Duration::from_millis(100));
    let d = h.ino(ROOT_INO, "d");
    assert_eq!(names(h.list(d)).len(), n + 1);
    let inos = (0..n).map(|i| h.ino(d, &format!("f{i:02}"))).collect();
    let big = h.ino(d, "zbig");
    (d, inos, big)
}

#[test]
fn a_walk_opens_and_reads_a_directorys_files_without_waiting() {
    let h = harness(Duration::from_secs(60), Duration::ZERO);
    let (_, inos, big) = walked_dir(&h, 40);
    // The first open waits, and sets off the fetching of the others.
    let before = h.waited();
    let first = h.open(inos[0], libc::O_RDONLY).expect("open");
    assert_eq!(h.read_all(inos[0], first.fh), contents(0));
    h.close(inos[0], first.fh).expect("close");
    assert_eq!(h.waited() - before, 1);
    h.core.files_ahead.settle();
    let fetches = h.sent_of("readfiles");
    assert!((1..=2).contains(&fetches), "{fetches} requests");
    // The rest: opened, read whole and right, closed, none waited for.
    let waited = h.waited();
    let closes = h.sent_of("close");
    for (i, &ino) in inos.iter().enumerate().skip(1) {
        let opened = h.open(ino, libc::O_RDONLY).expect("open");
        assert_eq!(h.read_all(ino, opened.fh), contents(i), "f{i:02}");
        h.close(ino, opened.fh).expect("close");
    }
    assert_eq!(h.waited(), waited, "no round trip for the walk's files");
    assert_eq!(h.sent_of("close"), closes, "nothing to close on the server");
    assert_eq!(h.core.files_ahead.held(), (0, 0), "used, let go");
    // A file larger than is fetched ahead is opened as always, and read
    // whole and right.
    let opened = h.open(big, libc::O_RDONLY).expect("open");
    let all = h.read_all(big, opened.fh);
    assert_eq!(all.len(), LARGEST as usize * 3);
    assert!(all.iter().enumerate().all(|(b, x)| *x == (b % 253) as u8));
    h.close(big, opened.fh).expect("close");
    assert!(h.waited() > waited);
}

#[test]
fn a_file_opened_from_ahead_is_read_from_memory_and_locked_through_a_handle_opened_on_demand() {
    let h = harness(Duration::from_secs(60), Duration::ZERO);
    let (_, inos, _) = walked_dir(&h, 4);
    let first = h.open(inos[0], libc::O_RDONLY).expect("open");
    h.close(inos[0], first.fh).expect("close");
    h.core.files_ahead.settle();
    let opens = h.sent_of("open") + h.sent_of("openread");
    let opened = h.open(inos[3], libc::O_RDONLY).expect("open");
    assert_eq!(h.sent_of("open") + h.sent_of("openread"), opens);
    assert_eq!(h.read_all(inos[3], opened.fh), contents(3));
    // Read again: the bytes are held until release.
    assert_eq!(
        h.read(inos[3], opened.fh, 10, 5),
        Ok(contents(3)[10..15].to_vec())
    );
    assert_eq!(h.sent_of("open") + h.sent_of("openread"), opens);
    // A lock needs a server handle: the file is opened by its path for it,
    // and reads go to the server from then on, through that handle.
    wait(|d| {
        h.core
            .setlk(&h.me, inos[3], opened.fh, 7, 0, 99, libc::F_RDLCK, false, d)
    })
    .expect("lock");
    assert_eq!(h.sent_of("open") + h.sent_of("openread"), opens + 1);
    let reads = h.sent_of("read");
    assert_eq!(
        h.read(inos[3], opened.fh, 10, 5),
        Ok(contents(3)[10..15].to_vec())
    );
    assert_eq!(h.sent_of("read"), reads + 1);
    wait(|d| h.core.flush(&h.me, inos[3], opened.fh, 7, d)).expect("close");
    let closes = h.sent_of("close");
    h.core.release(&h.me, inos[3], opened.fh);
    assert_eq!(
        h.sent_of("close"),
        closes + 1,
        "the handle opened on demand"
    );
}

#[test]
fn a_change_elsewhere_drops_what_is_held_and_the_next_open_reads_it() {
    let h = harness(Duration::from_secs(1), Duration::from_secs(60));
    let deadline = Instant::now() + PATIENCE;
    while !h.core.leased() {
        assert!(Instant::now() < deadline, "no lease");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (_, inos, _) = walked_dir(&h, 6);
    let first = h.open(inos[0], libc::O_RDONLY).expect("open");
    h.close(inos[0], first.fh).expect("close");
    h.core.files_ahead.settle();
    // Under the lease, beyond the attribute timeout, what is held answers.
    std::thread::sleep(Duration::from_millis(1100));
    let waited = h.waited();
    let opened = h.open(inos[1], libc::O_RDONLY).expect("open");
    assert_eq!(h.read_all(inos[1], opened.fh), contents(1));
    h.close(inos[1], opened.fh).expect("close");
    assert_eq!(
        h.waited(),
        waited,
        "held under the lease: {:?}",
        h.core.stats().waited_by_kind()
    );
    // Another client rewrites f02: the server's notice ends what is held.
    let other = h.another_client();
    let d_there = match wait(|d| other.lookup(&h.me, ROOT_INO, OsStr::new("d"), d)) {
        Ok(Lookup::Found(e)) => e.ino,
        x => panic!("{x:?}"),
    };
    let theirs = match wait(|d| other.lookup(&h.me, d_there, OsStr::new("f02"), d)) {
        Ok(Lookup::Found(e)) => e.ino,
        x => panic!("{x:?}"),
    };
    let fh = wait(|d| other.open(&h.me, theirs, libc::O_RDWR, d))
        .expect("open")
        .fh;
    wait(|d| other.write(&h.me, theirs, fh, 0, b"NEW", libc::O_RDWR, false, d)).expect("write");
    wait(|d| other.flush(&h.me, theirs, fh, 1, d)).expect("close");
    other.release(&h.me, theirs, fh);
    let deadline = Instant::now() + PATIENCE;
    while !lock(&h.kernel.asked).contains(&("data", inos[2])) {
        assert!(Instant::now() < deadline, "no notice");
        std::thread::sleep(Duration::from_millis(5));
    }
    let waited = h.waited();
    let opened = h.open(inos[2], libc::O_RDONLY).expect("open");
    let mut expected = contents(2);
    expected[..3].copy_from_slice(b"NEW");
    assert_eq!(h.read_all(inos[2], opened.fh), expected);
    h.close(inos[2], opened.fh).expect("close");
    assert!(h.waited() > waited, "asked the server");
}

#[test]
fn without_a_lease_what_is_held_is_trusted_only_the_attribute_timeout() {
    let h = harness(Duration::from_secs(1), Duration::ZERO);
    let (d, inos, _) = walked_dir(&h, 3);
    let first = h.open(inos[0], libc::O_RDONLY).expect("open");
    h.close(inos[0], first.fh).expect("close");
    h.core.files_ahead.settle();
    assert!(h.core.files_ahead.held().0 > 0);
    std::thread::sleep(Duration::from_millis(1100));
    // Changed on the server, and no one says so.
    std::fs::write(h.on_disk("d/f01"), b"changed").expect("rewrite");
    h.list(d);
    let ino = h.ino(d, "f01");
    let waited = h.waited();
    let opened = h.open(ino, libc::O_RDONLY).expect("open");
    assert_eq!(h.read_all(ino, opened.fh), b"changed");
    h.close(ino, opened.fh).expect("close");
    assert!(h.waited() > waited, "too old: asked the server");
}

#[test]
fn a_walk_that_opens_nothing_fetches_nothing_and_what_is_held_stays_bounded() {
    let h = harness(Duration::from_secs(60), Duration::ZERO);
    let (_, inos, _) = walked_dir(&h, 8);
    h.core.files_ahead.settle();
    assert_eq!(
        h.sent_of("readfiles"),
        0,
        "listing and looking up fetch no contents"
    );
    // A directory of more than the cap: never more held than it.
    std::fs::create_dir(h.on_disk("many")).expect("a directory");
    let n = 2 * HELD_BYTES / LARGEST as usize;
    for i in 0..n {
        std::fs::write(
            h.on_disk(&format!("many/f{i:04}")),
            vec![1; LARGEST as usize],
        )
        .expect("a file");
    }
    let many = h.ino(ROOT_INO, "many");
    h.list(many);
    for i in 0..n {
        let ino = h.ino(many, &format!("f{i:04}"));
        let opened = h.open(ino, libc::O_RDONLY).expect("open");
        assert_eq!(h.read_all(ino, opened.fh).len(), LARGEST as usize);
        h.close(ino, opened.fh).expect("close");
        assert!(h.core.files_ahead.held().0 <= HELD_BYTES);
    }
    h.core.files_ahead.settle();
    assert!(h.core.files_ahead.held().0 <= HELD_BYTES);
    let _ = inos;
}

#[test]
fn a_file_opened_from_ahead_reads_on_once_unlinked_here_or_elsewhere() {
    let h = harness(Duration::from_secs(1), Duration::from_secs(60));
    let deadline = Instant::now() + PATIENCE;
    while !h.core.leased() {
        assert!(Instant::now() < deadline, "no lease");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (d, inos, _) = walked_dir(&h, 4);
    let first = h.open(inos[0], libc::O_RDONLY).expect("open");
    h.close(inos[0], first.fh).expect("close");
    h.core.files_ahead.settle();
    let opens = h.sent_of("open") + h.sent_of("openread");
    let here = h.open(inos[2], libc::O_RDONLY).expect("open");
    let there = h.open(inos[3], libc::O_RDONLY).expect("open");
    assert_eq!(
        h.sent_of("open") + h.sent_of("openread"),
        opens,
        "from ahead"
    );
    assert_eq!(h.read_all(inos[2], here.fh), contents(2));
    // Unlinked through this mount, and on the server.
    wait(|done| h.core.unlink(&h.me, d, OsStr::new("f02"), done)).expect("unlink");
    std::fs::remove_file(h.on_disk("d/f03")).expect("unlink on the server");
    let deadline = Instant::now() + PATIENCE;
    while !lock(&h.kernel.entries).contains(&(d, "f03".into())) {
        assert!(Instant::now() < deadline, "no notice");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Read again (the kernel dropped its pages), past the attribute timeout:
    // as a server handle would, they read the file as it was opened.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(h.read_all(inos[2], here.fh), contents(2));
    assert_eq!(h.read_all(inos[3], there.fh), contents(3));
    h.close(inos[2], here.fh).expect("close");
    h.close(inos[3], there.fh).expect("close");
    assert_eq!(h.core.opened.bytes(), 0, "let go at release");
}

#[test]
fn a_walk_reading_files_gets_the_files_of_the_listings_fetched_ahead_too() {
    let h = harness(Duration::from_secs(60), Duration::ZERO);
    for dir in ["top", "top/a", "top/b", "top/a/x"] {
        std::fs::create_dir_all(h.on_disk(dir)).expect("a directory");
        for i in 0..5 {
            std::fs::write(h.on_disk(&format!("{dir}/f{i}")), contents(i + 1)).expect("a file");
        }
    }
    let top = h.ino(ROOT_INO, "top");
    h.list(ROOT_INO);
    h.list(top);
    h.core.ahead.settle();
    // The walk opens a file: the files of its directory, and of the
    // listings fetched ahead, are fetched.
    let f0 = h.ino(top, "f0");
    let opened = h.open(f0, libc::O_RDONLY).expect("open");
    h.close(f0, opened.fh).expect("close");
    h.core.files_ahead.settle();
    let waited = h.waited();
    let a = h.ino(top, "a");
    h.list(a);
    h.core.ahead.settle();
    h.core.files_ahead.settle();
    let x = h.ino(a, "x");
    let b = h.ino(top, "b");
    h.list(x);
    h.list(b);
    for dir in [a, x, b] {
        for i in 0..5 {
            let ino = h.ino(dir, &format!("f{i}"));
            let opened = h.open(ino, libc::O_RDONLY).expect("open");
            assert_eq!(h.read_all(ino, opened.fh), contents(i + 1));
            h.close(ino, opened.fh).expect("close");
        }
    }
    assert_eq!(h.waited(), waited, "{:?}", h.core.stats().waited_by_kind());
}
