//! Removals sent behind under a directory lease (see [`super::behind`]):
//! answered without a round trip, applied by the server in the order sent,
//! their failures reported once by fsync of the directory and close of the
//! file, and never silently lost with a connection.

use super::*;

/// The options of a harness with a lease.
fn lease_options() -> FsOptions {
    FsOptions {
        attr_timeout: Duration::from_secs(1),
        lease: Duration::from_secs(60),
        ..FsOptions::default()
    }
}

/// A harness with a lease, once its connection is subscribed.
pub(super) fn leased() -> Harness {
    subscribed(Harness::with(lease_options()))
}

fn subscribed(h: Harness) -> Harness {
    let deadline = Instant::now() + PATIENCE;
    while !h.core.leased() {
        assert!(Instant::now() < deadline, "waited in vain for the lease");
        std::thread::sleep(Duration::from_millis(5));
    }
    h
}

/// [`leased`], with directory `name` of the files `files` made in the export
/// before the server starts (its watch then has no news of them that could
/// recall the directory's lease in the middle of a test), those in
/// `immutable` made immutable; and the directory, listed in full here so
/// that its names are leased.
fn leased_with_dir(name: &str, files: &[&str], immutable: &[&str]) -> (Harness, u64, Immutable) {
    let mut guard = Immutable(Vec::new());
    let h = subscribed(Harness::serving(lease_options(), |config| {
        let dir = config
            .root
            .as_deref()
            .expect("the default export")
            .join(name);
        std::fs::create_dir(&dir).expect("a dir");
        for f in files {
            std::fs::write(dir.join(f), b"x").expect("a file");
        }
        for f in immutable {
            let path = dir.join(f);
            chattr("+i", &path);
            guard.0.push(path);
        }
    }));
    let dir = h.ino(ROOT_INO, name);
    h.list_until_leased(dir);
    (h, dir, guard)
}

impl Harness {
    /// Lists `dir` until its names are leased (news of a change crossing a
    /// listing recalls the lease it would have brought).
    fn list_until_leased(&self, dir: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.list(dir);
            if self.core.dir_leased(dir) {
                return;
            }
            assert!(Instant::now() < deadline, "waited in vain for the lease");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn unlink(&self, parent: u64, name: &str) -> Result<(), Errno> {
        wait(|d| self.core.unlink(&self.me, parent, OsStr::new(name), d))
    }

    fn rmdir(&self, parent: u64, name: &str) -> Result<(), Errno> {
        wait(|d| self.core.rmdir(&self.me, parent, OsStr::new(name), d))
    }

    pub(super) fn fsyncdir(&self, ino: u64) -> Result<(), Errno> {
        wait(|d| self.core.fsyncdir(ino, d))
    }

    /// An empty file `name` made in `parent` through the core (closed).
    fn make_file(&self, parent: u64, name: &str) -> u64 {
        let (entry, opened) = self
            .create(parent, name, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY)
            .expect("create");
        self.close(entry.ino, opened.fh).expect("close");
        entry.ino
    }
}

/// Files made immutable on the server's disk (the server's unlink of them
/// fails with EPERM, which the kernel's checks here cannot foresee), made
/// mutable again when the test ends so the temporary export can go.
pub(super) struct Immutable(pub(super) Vec<PathBuf>);

impl Drop for Immutable {
    fn drop(&mut self) {
        for path in &self.0 {
            chattr("-i", path);
        }
    }
}

pub(super) fn chattr(flag: &str, path: &Path) {
    let ok = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chattr {flag} {} (needs root)", path.display());
}

#[test]
fn removals_in_a_leased_directory_are_answered_without_waiting() {
    let h = leased();
    let top = h.mkdir(ROOT_INO, "top").expect("mkdir").ino;
    let d = h.mkdir(top, "d").expect("mkdir").ino;
    assert!(h.core.dir_leased(top) && h.core.dir_leased(d));
    for name in ["a", "b", "c"] {
        h.make_file(d, name);
    }
    let waited = h.waited();
    let sent = h.sent_of("unlink") + h.sent_of("rmdir");
    for name in ["a", "b", "c"] {
        h.unlink(d, name).expect("unlink");
        // The kernel's permission check before the next removal asks for
        // the directory's attributes: answered here, projected if the
        // server has not answered yet (then not to be kept by the kernel).
        let attrs = wait(|r| h.core.getattr(&h.me, d, None, r)).expect("getattr");
        assert_eq!(attrs.attr.perm & 0o777, 0o755);
        assert!(attrs.ttl.is_zero() || !h.core.behind.busy(d).0);
    }
    h.rmdir(top, "d")
        .expect("rmdir of a directory emptied behind");
    assert_eq!(h.waited(), waited, "nothing waited for");
    assert_eq!(h.sent_of("unlink") + h.sent_of("rmdir"), sent + 4);
    // The kernel's checks answer from the known names, at once.
    assert!(matches!(h.lookup(top, "d"), Ok(Lookup::Missing(_))));
    assert_eq!(h.fsyncdir(top), Ok(()));
    assert_eq!(h.fsyncdir(d), Ok(()));
    assert!(!h.on_disk("top/d").exists(), "applied on the server");
    // Once answered, the directory's attributes are the server's.
    let on_disk = std::fs::metadata(h.on_disk("top")).expect("top");
    let here = h.getattr(top).expect("getattr");
    assert_eq!(
        (here.mtime.secs, here.mtime.nanos, here.nlink),
        (on_disk.mtime(), on_disk.mtime_nsec() as u32, 2)
    );
    assert!(h.core.finish_behind(PATIENCE));
    assert_eq!(h.core.behind.pending(), 0);
}

#[test]
fn a_directory_not_known_empty_is_removed_by_waiting_for_the_server() {
    let h = leased();
    let top = h.mkdir(ROOT_INO, "top").expect("mkdir").ino;
    std::fs::create_dir(h.on_disk("top/d")).expect("a dir made on the server");
    std::fs::write(h.on_disk("top/d/f"), b"x").expect("a file in it");
    // Made on the server: the name recalls top's lease; once looked up and
    // listed again it is leased, but d's own names are not known.
    let deadline = Instant::now() + PATIENCE;
    while !(h.list(top).contains(&"d".to_string()) && h.core.dir_leased(top)) {
        assert!(Instant::now() < deadline, "waited in vain for the lease");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = h.ino(top, "d");
    let waited = h.waited();
    assert_eq!(h.rmdir(top, "d"), Err(Errno::ENOTEMPTY));
    assert_eq!(h.waited(), waited + 1, "asked the server");
}

#[test]
fn the_server_applies_removals_sent_behind_in_order() {
    let h = leased();
    let top = h.mkdir(ROOT_INO, "top").expect("mkdir").ino;
    let (f, opened) = h
        .create(top, "f", libc::O_CREAT | libc::O_EXCL | libc::O_RDWR)
        .expect("create");
    h.write(f.ino, opened.fh, 0, b"first").expect("write");
    h.close(f.ino, opened.fh).expect("close");
    wait(|d| {
        h.core
            .rename(&h.me, top, OsStr::new("f"), top, OsStr::new("g"), 0, d)
    })
    .expect("rename");
    let waited = h.waited();
    h.unlink(top, "g").expect("unlink");
    assert_eq!(h.waited(), waited, "sent behind");
    // Sent after the unlink on the same connection: the server has the
    // unlink first, so the exclusive create of the same name succeeds.
    let (g, opened) = h
        .create(top, "g", libc::O_CREAT | libc::O_EXCL | libc::O_RDWR)
        .expect("the name is free on the server");
    h.write(g.ino, opened.fh, 0, b"second").expect("write");
    h.close(g.ino, opened.fh).expect("close");
    h.unlink(top, "g").expect("unlink again");
    h.make_file(top, "g");
    assert_eq!(h.fsyncdir(top), Ok(()));
    assert_eq!(names(h.list(top)), ["g"]);
    assert_eq!(std::fs::read(h.on_disk("top/g")).expect("g"), b"");
}

#[test]
fn a_failure_behind_is_reported_once_by_fsync_of_the_directory_and_close_of_the_file() {
    let (h, dir, _immutable) = leased_with_dir("d", &["f", "g"], &["f"]);
    let f = h.ino(dir, "f");
    let opened = h.open(f, libc::O_RDONLY).expect("open");
    lock(&h.kernel.entries).clear();
    let waited = h.waited();
    // The kernel's checks pass; the server refuses (the file is immutable).
    assert_eq!(h.unlink(dir, "f"), Ok(()), "answered before the server");
    h.unlink(dir, "g").expect("unlink");
    assert_eq!(h.waited(), waited);
    assert_eq!(h.fsyncdir(dir), Err(Errno::EPERM));
    assert_eq!(h.fsyncdir(dir), Ok(()), "reported once");
    assert_eq!(
        h.close(f, opened.fh),
        Err(Errno::EPERM),
        "the open file hears too"
    );
    // The name is asked of the server again: it is still there.
    assert!(!h.core.dir_leased(dir));
    assert!(lock(&h.kernel.entries).contains(&(dir, "f".into())));
    assert!(matches!(h.lookup(dir, "f"), Ok(Lookup::Found(_))));
    assert!(!h.on_disk("d/g").exists());
}

#[test]
fn an_operation_that_depends_on_a_failed_one_fails_too() {
    let (h, dir, _immutable) = leased_with_dir("d", &["f"], &["f"]);
    let root_leased = {
        let deadline = Instant::now() + PATIENCE;
        loop {
            h.list(ROOT_INO);
            if h.core.dir_leased(ROOT_INO) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(root_leased, "the root listed in full and leased");
    let waited = h.waited();
    h.unlink(dir, "f").expect("answered before the server");
    assert_eq!(h.waited(), waited);
    match h.rmdir(ROOT_INO, "d") {
        // d was known empty: its rmdir went behind too, and fails on the
        // server, in order, as the unlink it relied on did.
        Ok(()) => {
            assert_eq!(h.waited(), waited);
            assert_eq!(h.fsyncdir(ROOT_INO), Err(Errno::ENOTEMPTY));
        }
        // The unlink's failure came back first (the in-process server is
        // quick): d's names were forgotten with it, so the rmdir asked the
        // server, which refused.
        Err(e) => assert_eq!(e, Errno::ENOTEMPTY),
    }
    assert_eq!(
        h.fsyncdir(dir),
        Err(Errno::EPERM),
        "the unlink in d failed first"
    );
    assert!(h.on_disk("d/f").exists());
    assert!(matches!(h.lookup(ROOT_INO, "d"), Ok(Lookup::Found(_))));
}

#[test]
fn without_a_lease_a_removal_waits_for_the_server() {
    let h = Harness::with(FsOptions {
        lease: Duration::ZERO,
        ..FsOptions::default()
    });
    let top = h.mkdir(ROOT_INO, "top").expect("mkdir").ino;
    h.make_file(top, "f");
    let waited = h.waited();
    h.unlink(top, "f").expect("unlink");
    assert_eq!(h.waited(), waited + 1);
    assert_eq!(h.unlink(top, "f"), Err(Errno::ENOENT));
}

#[test]
fn a_removal_behind_a_lost_connection_is_reported_as_eio() {
    let mut h = leased();
    let top = h.mkdir(ROOT_INO, "top").expect("mkdir").ino;
    h.make_file(top, "f");
    // Its create went behind too: landed before the server stops.
    assert_eq!(h.fsyncdir(top), Ok(()));
    // Decided under the lease; the connection breaks before it is sent.
    let removal = h
        .core
        .may_remove_behind(&h.me, top, OsStr::new("f"), false)
        .expect("may go behind");
    h.stop_server();
    h.start_server();
    let answered = wait(|d| {
        h.core
            .remove_behind(&h.me, top, OsStr::new("f"), removal, d)
    });
    assert_eq!(answered, Ok(()));
    assert_eq!(h.fsyncdir(top), Err(Errno::EIO), "its outcome is unknown");
    assert_eq!(h.fsyncdir(top), Ok(()));
    assert!(
        h.on_disk("top/f").exists(),
        "never sent on another connection"
    );
}

#[test]
fn a_failure_outlives_the_kernels_memory_of_the_directory() {
    let (h, dir, _immutable) = leased_with_dir("d", &["f"], &["f"]);
    h.unlink(dir, "f").expect("answered before the server");
    assert!(h.core.finish_behind(PATIENCE));
    // The kernel lets go of the directory before anyone fsyncs it; the next
    // fsync, through a new open, still hears of the failure.
    h.core.forget(dir, u64::MAX);
    assert_eq!(h.ino(ROOT_INO, "d"), dir, "the same number again");
    assert_eq!(h.fsyncdir(dir), Err(Errno::EPERM));
    assert_eq!(h.fsyncdir(dir), Ok(()));
}

#[test]
fn a_listing_crossed_by_a_change_here_is_no_proof_of_the_names() {
    let h = leased();
    std::fs::create_dir(h.on_disk("d")).expect("a dir");
    std::fs::write(h.on_disk("d/f"), b"x").expect("a file");
    let d = h.ino(ROOT_INO, "d");
    std::thread::sleep(Duration::from_millis(100));
    // A create in d under way while it is listed: the listing may lack the
    // new name, and an rmdir sent behind on the strength of it would be
    // answered wrongly.
    h.core.changes.begin();
    assert_eq!(names(h.list(d)), ["f"]);
    h.core.changes.end();
    assert!(!h.core.dir_leased(d));
    // Listed with nothing crossing it: proof again.
    h.list_until_leased(d);
}
