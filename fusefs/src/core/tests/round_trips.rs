//! Round trips saved: the bytes an open for reading brings (and when they may
//! no longer answer a read), and listings in one reply.
//!
//! Without a lease: what is counted here is what the mount does when the
//! server does not tell it of changes (the short attribute timeout); under a
//! lease the server's notices end these caches sooner (see `coherence`).

use super::*;

/// A harness without a lease, whose caches live `attr_timeout`.
fn unleased(attr_timeout: Duration) -> Harness {
    Harness::with(FsOptions {
        attr_timeout,
        lease: Duration::ZERO,
        ..FsOptions::default()
    })
}

impl Harness {
    /// The other client's inode and a handle of `name`, opened with `flags`.
    fn open_elsewhere(&self, other: &Core, name: &str, flags: i32) -> (u64, u64) {
        let ino = match wait(|d| other.lookup(&self.me, ROOT_INO, OsStr::new(name), d)) {
            Ok(Lookup::Found(e)) => e.ino,
            x => panic!("{x:?}"),
        };
        let opened = wait(|d| other.open(&self.me, ino, flags, d)).expect("open");
        (ino, opened.fh)
    }
}

/// Bytes 0..n of a file whose byte `i` is `i % 251`.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_small_file_is_read_with_its_open_in_one_round_trip() {
    let h = unleased(Duration::from_secs(60));
    std::fs::write(h.on_disk("f"), pattern(10_000)).expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let before = h.waited();
    let opened = h.open(ino, libc::O_RDONLY).expect("open");
    // The kernel reads whole pages; the file ends before the last one does.
    assert_eq!(h.read(ino, opened.fh, 0, 12_288), Ok(pattern(10_000)));
    assert_eq!(h.waited() - before, 1, "one round trip: the open");
    assert_eq!((h.sent_of("openread"), h.sent_of("read")), (1, 0));
    // The kernel has those bytes now: read again, they come from the server.
    assert_eq!(
        h.read(ino, opened.fh, 4096, 10),
        Ok(pattern(4106)[4096..].to_vec())
    );
    assert_eq!(h.sent_of("read"), 1);
    h.close(ino, opened.fh).expect("close");
    assert_eq!(h.sent_of("close"), 1);
    assert_eq!(h.core.opened.bytes(), 0);
}

#[test]
fn reopening_an_unchanged_file_brings_no_bytes_as_the_kernel_keeps_its_pages() {
    let h = unleased(Duration::from_secs(60));
    std::fs::write(h.on_disk("f"), b"version 1").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let first = h.open(ino, libc::O_RDONLY).expect("open");
    assert_eq!(h.read(ino, first.fh, 0, 4096), Ok(b"version 1".to_vec()));
    h.close(ino, first.fh).expect("close");
    let again = h.open(ino, libc::O_RDONLY).expect("open");
    assert!(again.keep_cache);
    assert_eq!((h.sent_of("openread"), h.sent_of("open")), (1, 1));
    h.close(ino, again.fh).expect("close");
    // Changed, as a lookup shows: its bytes come with the open again.
    std::fs::write(h.on_disk("f"), b"version 22").expect("rewrite");
    assert_eq!(h.ino(ROOT_INO, "f"), ino);
    let changed = h.open(ino, libc::O_RDONLY).expect("open");
    assert!(!changed.keep_cache);
    assert_eq!(h.read(ino, changed.fh, 0, 4096), Ok(b"version 22".to_vec()));
    assert_eq!((h.sent_of("openread"), h.sent_of("read")), (2, 0));
    h.close(ino, changed.fh).expect("close");
}

#[test]
fn a_large_file_brings_its_start_and_the_rest_follows_from_the_server() {
    let h = unleased(Duration::from_secs(60));
    let size = 3 * io::FIRST_BYTES as usize;
    std::fs::write(h.on_disk("big"), pattern(size)).expect("a file");
    let ino = h.ino(ROOT_INO, "big");
    let opened = h.open(ino, libc::O_RDONLY).expect("open");
    // A read within the bytes the open brought, then one that runs past them:
    // the held head and the server's rest, in one answer.
    assert_eq!(h.read(ino, opened.fh, 0, 4096), Ok(pattern(4096)));
    assert_eq!(h.sent_of("read"), 0);
    let long = h.read(ino, opened.fh, 4096, 2 * io::FIRST_BYTES);
    assert_eq!(
        long,
        Ok(pattern(4096 + 2 * io::FIRST_BYTES as usize)[4096..].to_vec())
    );
    assert_eq!(h.sent_of("read"), 1);
    h.close(ino, opened.fh).expect("close");
}

#[test]
fn opens_that_write_truncate_or_bypass_the_cache_bring_no_bytes() {
    let h = unleased(Duration::from_secs(60));
    std::fs::write(h.on_disk("f"), b"data").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    for flags in [
        libc::O_RDWR,
        libc::O_WRONLY,
        libc::O_RDONLY | libc::O_DIRECT,
        libc::O_RDONLY | libc::O_TRUNC,
    ] {
        let opened = h.open(ino, flags).expect("open");
        h.close(ino, opened.fh).expect("close");
    }
    assert_eq!((h.sent_of("open"), h.sent_of("openread")), (4, 0));
}

#[test]
fn a_write_here_through_another_handle_is_read_not_the_bytes_the_open_brought() {
    let h = unleased(Duration::from_secs(60));
    std::fs::write(h.on_disk("f"), b"old content").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let reader = h.open(ino, libc::O_RDONLY).expect("open");
    let writer = h.open(ino, libc::O_RDWR).expect("open");
    assert_eq!(h.write(ino, writer.fh, 0, b"NEW"), Ok(3));
    assert_eq!(h.read(ino, reader.fh, 0, 4096), Ok(b"NEW content".to_vec()));
    h.close(ino, writer.fh).expect("close");
    h.close(ino, reader.fh).expect("close");
    // And a reader opened while a writer is open sees each write that follows.
    let writer = h.open(ino, libc::O_RDWR).expect("open");
    let reader = h.open(ino, libc::O_RDONLY).expect("open");
    assert_eq!(h.write(ino, writer.fh, 0, b"new"), Ok(3));
    assert_eq!(h.read(ino, reader.fh, 0, 4096), Ok(b"new content".to_vec()));
    h.close(ino, writer.fh).expect("close");
    h.close(ino, reader.fh).expect("close");
}

#[test]
fn a_truncation_here_is_read_not_the_bytes_the_open_brought() {
    let h = unleased(Duration::from_secs(60));
    std::fs::write(h.on_disk("f"), b"0123456789").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let reader = h.open(ino, libc::O_RDONLY).expect("open");
    let shrink = AttrChanges {
        size: Some(4),
        ..AttrChanges::default()
    };
    assert_eq!(h.setattr(ino, None, shrink).map(|a| a.size), Ok(4));
    assert_eq!(h.read(ino, reader.fh, 0, 4096), Ok(b"0123".to_vec()));
    h.close(ino, reader.fh).expect("close");
    // An open with O_TRUNC (or for writing at all) voids what another reader holds.
    std::fs::write(h.on_disk("f"), b"0123456789").expect("rewrite");
    let reader = h.open(ino, libc::O_RDONLY).expect("open");
    let truncating = h.open(ino, libc::O_WRONLY | libc::O_TRUNC).expect("open");
    assert_eq!(h.read(ino, reader.fh, 0, 4096), Ok(Vec::new()));
    h.close(ino, truncating.fh).expect("close");
    h.close(ino, reader.fh).expect("close");
}

#[test]
fn another_clients_write_is_seen_by_the_next_open_or_under_a_lock() {
    let h = unleased(Duration::from_secs(60));
    std::fs::write(h.on_disk("f"), b"version 1").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let other = h.another_client();
    let reader = h.open(ino, libc::O_RDONLY).expect("open");
    let (their_ino, theirs) = h.open_elsewhere(&other, "f", libc::O_RDWR);
    wait(|d| other.write(&h.me, their_ino, theirs, 8, b"2", libc::O_RDWR, false, d))
        .expect("write");
    wait(|d| other.flush(&h.me, their_ino, theirs, 1, d)).expect("close");
    other.release(&h.me, their_ino, theirs);
    // Close-to-open: the open before their close reads the file as it opened it...
    assert_eq!(h.read(ino, reader.fh, 0, 4096), Ok(b"version 1".to_vec()));
    h.close(ino, reader.fh).expect("close");
    // ...an open after it, the new version.
    let reader = h.open(ino, libc::O_RDONLY).expect("open");
    assert!(!reader.keep_cache);
    assert_eq!(h.read(ino, reader.fh, 0, 4096), Ok(b"version 2".to_vec()));
    h.close(ino, reader.fh).expect("close");
    // A lock taken after another client's change reads the change.
    let reader = h.open(ino, libc::O_RDONLY).expect("open");
    std::fs::write(h.on_disk("f"), b"version 3").expect("rewrite");
    wait(|d| {
        h.core
            .setlk(&h.me, ino, reader.fh, 7, 0, 99, libc::F_RDLCK, false, d)
    })
    .expect("lock");
    assert_eq!(h.read(ino, reader.fh, 0, 4096), Ok(b"version 3".to_vec()));
    wait(|d| h.core.flush(&h.me, ino, reader.fh, 7, d)).expect("close");
    h.core.release(&h.me, ino, reader.fh);
}

#[test]
fn a_listing_is_one_reply_and_proof_of_missing_names() {
    let h = unleased(Duration::from_secs(60));
    let dir = h.on_disk("d");
    std::fs::create_dir(&dir).expect("a directory");
    // Far more entries than one page of the old paged listing (2,048).
    for i in 0..5000 {
        std::fs::write(dir.join(format!("f{i}")), b"").expect("a file");
    }
    let d = h.ino(ROOT_INO, "d");
    let before = h.waited();
    assert_eq!(names(h.list(d)).len(), 5000);
    assert_eq!(h.waited() - before, 1, "one reply");
    assert!(matches!(h.lookup(d, "f5000"), Ok(Lookup::Missing(_))));
    assert_eq!(
        h.waited() - before,
        1,
        "the listing answered for a missing name"
    );
}

/// `top/{a,b,c}`, `top/a/x`, with a file in each, and their inodes (looked up).
fn tree(h: &Harness) -> [u64; 5] {
    for dir in ["top/a/x", "top/b", "top/c"] {
        std::fs::create_dir_all(h.on_disk(dir)).expect("a directory");
    }
    for dir in ["top", "top/a", "top/a/x", "top/b", "top/c"] {
        std::fs::write(h.on_disk(&format!("{dir}/f")), b"f").expect("a file");
    }
    let top = h.ino(ROOT_INO, "top");
    let a = h.ino(top, "a");
    [top, a, h.ino(top, "b"), h.ino(top, "c"), h.ino(a, "x")]
}

#[test]
fn a_walk_finds_its_next_listings_fetched_ahead() {
    let h = unleased(Duration::from_secs(60));
    let [top, a, b, c, x] = tree(&h);
    h.list(ROOT_INO);
    // Not a walk yet: nothing asked for ahead.
    h.core.ahead.settle();
    assert_eq!(h.sent_of("list"), 1);
    // The root, then a directory in it: a walk. Its subdirectories' listings
    // are fetched ahead, and not waited for.
    let before = h.waited();
    assert_eq!(names(h.list(top)), ["a", "b", "c", "f"]);
    assert_eq!(h.waited() - before, 1);
    h.core.ahead.settle();
    assert_eq!(h.sent_of("list"), 5);
    assert_eq!(names(h.list(a)), ["f", "x"]);
    assert_eq!(names(h.list(b)), ["f"]);
    assert_eq!(names(h.list(c)), ["f"]);
    // A listing taken from there goes on with the walk: its own
    // subdirectories come ahead too.
    h.core.ahead.settle();
    assert_eq!(names(h.list(x)), ["f"]);
    assert_eq!(h.waited() - before, 1, "no other listing was waited for");
    assert_eq!(h.sent_of("list"), 6);
    // They answer for missing names as any listing does.
    assert!(matches!(h.lookup(b, "nope"), Ok(Lookup::Missing(_))));
    assert_eq!(h.waited() - before, 1);
}

#[test]
fn a_change_here_leaves_listings_fetched_ahead_unused() {
    let h = unleased(Duration::from_secs(60));
    let [top, _, b, c, _] = tree(&h);
    h.list(ROOT_INO);
    h.list(top);
    h.core.ahead.settle();
    let before = h.waited();
    // A file made in one directory: no listing fetched before it is used, in
    // that directory or any other (it could show this mount's past).
    let (made, opened) = h.create(b, "new", libc::O_RDWR).expect("create");
    h.close(made.ino, opened.fh).expect("close");
    let after_create = h.waited();
    assert_eq!(names(h.list(b)), ["f", "new"]);
    assert_eq!(names(h.list(c)), ["f"]);
    assert_eq!(h.waited() - after_create, 2, "both were asked for again");
    assert!(after_create > before);
    // A write through this mount (never waited for) counts as a change too.
    h.list(top);
    h.core.ahead.settle();
    let opened = h.open(made.ino, libc::O_RDWR).expect("open");
    assert_eq!(h.write(made.ino, opened.fh, 0, b"grown"), Ok(5));
    h.close(made.ino, opened.fh).expect("close");
    let waited = h.waited();
    let mut sizes = Vec::new();
    readdirplus(&h.core, b, 0, |item| {
        if item.name == b"new" {
            sizes.push(item.entry.attr.size);
        }
        false
    })
    .expect("readdirplus");
    assert_eq!(sizes, [5]);
    assert_eq!(h.waited() - waited, 1);
}

#[test]
fn listings_fetched_ahead_go_stale_with_the_attribute_timeout() {
    let h = unleased(Duration::from_secs(1));
    let [top, _, b, _, _] = tree(&h);
    h.list(ROOT_INO);
    h.list(top);
    h.core.ahead.settle();
    assert_eq!(h.sent_of("list"), 5);
    std::thread::sleep(Duration::from_millis(1100));
    let before = h.waited();
    h.list(b);
    assert_eq!(h.waited() - before, 1, "too old: asked for again");
}

#[test]
fn a_walks_lookups_are_answered_by_the_listing_asked_again_once_stale() {
    let h = unleased(Duration::from_secs(1));
    std::fs::create_dir(h.on_disk("d")).expect("a directory");
    for i in 0..10 {
        std::fs::write(h.on_disk(&format!("d/f{i}")), vec![b'x'; i]).expect("a file");
    }
    let d = h.ino(ROOT_INO, "d");
    assert_eq!(names(h.list(d)).len(), 10);
    // Within the timeout: the listing answers, with what is left of it.
    let before = h.waited();
    match h.lookup(d, "f3") {
        Ok(Lookup::Found(e)) => {
            assert_eq!(e.attr.size, 3);
            assert!(e.ttl <= Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.waited(), before);
    // Stale: this lookup asks the server, and the listing is asked for again...
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(h.on_disk("d/f5"), [b'y'; 50]).expect("rewrite");
    assert!(matches!(h.lookup(d, "f4"), Ok(Lookup::Found(_))));
    assert_eq!(h.waited() - before, 1);
    h.core.ahead.settle();
    assert_eq!(h.sent_of("list"), 2);
    // ...which answers the next ones, as the server has them now.
    match h.lookup(d, "f5") {
        Ok(Lookup::Found(e)) => assert_eq!(e.attr.size, 50),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.waited() - before, 1);
    // A change through this mount: the server is asked again.
    let (made, opened) = h.create(d, "new", libc::O_RDWR).expect("create");
    h.close(made.ino, opened.fh).expect("close");
    let waited = h.waited();
    assert!(matches!(h.lookup(d, "f6"), Ok(Lookup::Found(_))));
    assert_eq!(h.waited() - waited, 1);
}
