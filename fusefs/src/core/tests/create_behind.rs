//! Creates sent behind under a directory lease (see [`super::create_behind`]):
//! answered without a round trip, written through at once, their failures
//! reported once by close or fsync of the file or of the directory, and the
//! file's attributes the server's as soon as the kernel asks again.

use super::behind::{chattr, leased, Immutable};
use super::*;

const EXCL: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;

/// Directory `name`, made on the server's disk (and changed there by
/// `prepare`), then listed here until its names are leased.
fn leased_dir(h: &Harness, name: &str, prepare: impl FnOnce(&Path)) -> u64 {
    std::fs::create_dir(h.on_disk(name)).expect("a dir");
    prepare(&h.on_disk(name));
    let dir = h.ino(ROOT_INO, name);
    std::thread::sleep(Duration::from_millis(100));
    // The watch's news of the setup may cross the listing and recall it.
    let deadline = Instant::now() + PATIENCE;
    loop {
        h.list(dir);
        if h.core.dir_leased(dir) {
            return dir;
        }
        assert!(Instant::now() < deadline, "waited in vain for the lease");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn creates_in_a_leased_directory_are_answered_without_waiting_and_land() {
    let h = leased();
    let top = h.mkdir(ROOT_INO, "top").expect("mkdir").ino;
    assert!(h.core.dir_leased(top));
    let waited = h.waited();
    let sent = (h.sent_of("create"), h.sent_of("createas"));
    let mut made = Vec::new();
    for i in 0..20 {
        let name = format!("f{i}");
        let (entry, opened) = h.create(top, &name, EXCL).expect("create");
        assert!(entry.ttl.is_zero(), "the kernel asks again");
        assert_eq!(entry.attr.size, 0);
        assert_eq!(entry.attr.perm, 0o644);
        h.write(entry.ino, opened.fh, 0, name.as_bytes())
            .expect("write");
        h.close(entry.ino, opened.fh).expect("close");
        made.push((name, entry.ino));
    }
    assert_eq!(h.waited(), waited, "nothing waited for");
    assert_eq!(
        (h.sent_of("create"), h.sent_of("createas")),
        (sent.0, sent.1 + 20)
    );
    assert_eq!(h.fsyncdir(top), Ok(()));
    for (name, ino) in &made {
        let on_disk = std::fs::read(h.on_disk(&format!("top/{name}"))).expect("on the server");
        assert_eq!(on_disk, name.as_bytes());
        // The number the kernel was given stays the file's.
        assert_eq!(h.ino(top, name), *ino);
        h.core.forget(*ino, u64::MAX);
        assert_eq!(h.ino(top, name), *ino, "the same number after a forget");
    }
    // The kernel's checks answer from the known names, at once.
    let waited = h.waited();
    assert_eq!(h.create(top, "f0", EXCL).map(|_| ()), Err(Errno::EEXIST));
    assert_eq!(h.waited(), waited, "refused from the known names");
    assert_eq!(std::fs::read(h.on_disk("top/f0")).expect("f0"), b"f0");
    assert!(h.core.finish_behind(PATIENCE));
}

#[test]
fn a_file_created_behind_shows_the_servers_attributes_when_asked_again() {
    let h = leased();
    // Set-group-id, of a group that is not the caller's: the new file is
    // the directory's group, as the server's filesystem makes it.
    let dir = leased_dir(&h, "d", |d| {
        std::os::unix::fs::chown(d, None, Some(4242)).expect("chown");
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o2777)).expect("chmod");
    });
    // As the kernel's permission check does before the create.
    assert_eq!(h.getattr(dir).expect("getattr").gid, 4242);
    let (entry, opened) = h
        .create(dir, "f", libc::O_CREAT | libc::O_EXCL | libc::O_RDWR)
        .expect("create");
    assert_eq!(
        entry.attr.gid, 4242,
        "the guess knows the directory's group"
    );
    h.write(entry.ino, opened.fh, 0, b"12345").expect("write");
    let here = h.getattr(entry.ino).expect("getattr");
    h.close(entry.ino, opened.fh).expect("close");
    let on_disk = std::fs::metadata(h.on_disk("d/f")).expect("f");
    assert_eq!(
        (here.uid, here.gid, here.perm, here.kind),
        (
            on_disk.uid(),
            on_disk.gid(),
            (on_disk.mode() & 0o7777) as u16,
            FileKind::File
        )
    );
    assert_eq!(here.gid, 4242);
    let after = h.getattr(entry.ino).expect("getattr");
    assert_eq!(
        (after.size, after.mtime.secs, after.mtime.nanos),
        (5, on_disk.mtime(), on_disk.mtime_nsec() as u32)
    );
}

#[test]
fn a_create_the_server_refuses_is_reported_by_close_or_else_by_fsync() {
    let h = leased();
    let dir = leased_dir(&h, "d", |d| chattr("+i", d));
    let _mutable_again = Immutable(vec![h.on_disk("d")]);
    let waited = h.waited();
    // The kernel's checks pass; the server refuses (the directory is immutable).
    let (a, opened_a) = h
        .create(dir, "a", EXCL)
        .expect("answered before the server");
    assert_eq!(h.waited(), waited);
    assert!(h.core.finish_behind(PATIENCE));
    assert_eq!(
        h.close(a.ino, opened_a.fh),
        Err(Errno::EPERM),
        "known by the close"
    );
    assert_eq!(
        h.fsyncdir(dir),
        Err(Errno::EPERM),
        "and by the directory's fsync"
    );
    assert_eq!(h.fsyncdir(dir), Ok(()), "once");
    // Not known yet at the close: the file's fsync hears of it.
    let deadline = Instant::now() + PATIENCE;
    while !h.core.dir_leased(dir) {
        h.list(dir);
        assert!(Instant::now() < deadline, "waited in vain for the lease");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = h.waited();
    let (b, opened_b) = h
        .create(dir, "b", EXCL)
        .expect("answered before the server");
    assert_eq!(h.waited(), waited);
    assert!(h.core.finish_behind(PATIENCE));
    assert_eq!(
        wait(|d| h.core.fsync(&h.me, b.ino, opened_b.fh, false, d)),
        Err(Errno::EPERM)
    );
    assert_eq!(h.close(b.ino, opened_b.fh), Ok(()), "reported once");
    assert_eq!(h.fsyncdir(dir), Err(Errno::EPERM));
    // The names are asked of the server again: they are not there.
    assert!(matches!(h.lookup(dir, "a"), Ok(Lookup::Missing(_))));
    assert!(matches!(h.lookup(dir, "b"), Ok(Lookup::Missing(_))));
    assert!(!h.on_disk("d/a").exists() && !h.on_disk("d/b").exists());
}

#[test]
fn a_create_behind_a_lost_connection_is_reported_as_eio() {
    let mut h = leased();
    let top = h.mkdir(ROOT_INO, "top").expect("mkdir").ino;
    // Decided under the lease; the connection breaks before it is sent.
    let creation = h
        .core
        .may_create_behind(&h.me, top, OsStr::new("f"))
        .expect("may go behind");
    h.stop_server();
    h.start_server();
    let (entry, opened) = wait(|d| {
        h.core
            .create_behind(&h.me, top, OsStr::new("f"), 0o644, EXCL, creation, d)
    })
    .expect("answered at once");
    assert!(h.core.finish_behind(PATIENCE));
    assert_eq!(
        h.close(entry.ino, opened.fh),
        Err(Errno::EIO),
        "its outcome is unknown"
    );
    assert_eq!(h.fsyncdir(top), Err(Errno::EIO));
    assert_eq!(h.fsyncdir(top), Ok(()));
    assert!(
        !h.on_disk("top/f").exists(),
        "never sent on another connection"
    );
}

#[test]
fn without_a_lease_a_create_waits_for_the_server() {
    let h = Harness::with(FsOptions {
        lease: Duration::ZERO,
        ..FsOptions::default()
    });
    let top = h.mkdir(ROOT_INO, "top").expect("mkdir").ino;
    let waited = h.waited();
    let (entry, opened) = h.create(top, "f", EXCL).expect("create");
    assert_eq!(h.waited(), waited + 1);
    assert!(!entry.ttl.is_zero());
    h.close(entry.ino, opened.fh).expect("close");
    assert_eq!(h.sent_of("createas"), 0);
}

#[test]
fn a_write_that_fails_after_the_close_of_a_file_created_behind_is_reported_once() {
    let h = leased();
    let top = h.mkdir(ROOT_INO, "top").expect("mkdir").ino;
    let (entry, opened) = h.create(top, "f", EXCL).expect("create");
    // The create has landed; the file then refuses writes on the server.
    assert_eq!(h.fsyncdir(top), Ok(()));
    chattr("+i", &h.on_disk("top/f"));
    let _mutable_again = Immutable(vec![h.on_disk("top/f")]);
    h.write(entry.ino, opened.fh, 0, b"refused")
        .expect("answered before the server");
    // The close does not wait for the write: it returns the failure if it
    // is known by then; if not, the release keeps it for the directory's
    // fsync. Either way it is told once.
    let closed = h.close(entry.ino, opened.fh);
    let synced = h.fsyncdir(top);
    assert!(
        matches!(
            (closed, synced),
            (Err(Errno::EPERM), Ok(())) | (Ok(()), Err(Errno::EPERM))
        ),
        "{closed:?} {synced:?}"
    );
    assert_eq!(h.fsyncdir(top), Ok(()));
    assert_eq!(std::fs::read(h.on_disk("top/f")).expect("f"), b"");
}

#[test]
fn the_close_of_a_file_created_behind_does_not_wait_for_its_writes() {
    let h = leased();
    let top = h.mkdir(ROOT_INO, "top").expect("mkdir").ino;
    let waited = h.waited();
    for i in 0..10 {
        let (entry, opened) = h.create(top, &format!("f{i}"), EXCL).expect("create");
        h.write(entry.ino, opened.fh, 0, &vec![b'x'; 1000 * i])
            .expect("write");
        h.close(entry.ino, opened.fh).expect("close");
    }
    assert_eq!(h.waited(), waited, "nothing waited for");
    assert!(h.core.finish_behind(PATIENCE), "everything lands");
    assert_eq!(h.core.writes.queued(), (0, 0));
    for i in 0..10 {
        let on_disk = std::fs::read(h.on_disk(&format!("top/f{i}"))).expect("f");
        assert_eq!(on_disk, vec![b'x'; 1000 * i]);
    }
}
