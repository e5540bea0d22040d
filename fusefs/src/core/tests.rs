//! The core against a real server in this process, with no kernel and no
//! `/dev/fuse`: every operation, its errno, write-behind's order and errors,
//! and re-opening after a server restart.

use super::*;
use crate::client::ConnectOptions;
use crate::inode::ROOT_INO;
use ferry_common::proto::{AttrChanges, SetTime};
use ferry_common::Timestamp;
use ferry_server::{spawn_server, ServerHandle};
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

mod files_ahead;
mod round_trips;

/// How long a test waits for an answer before calling it a hang.
pub(super) const PATIENCE: Duration = Duration::from_secs(20);

/// What the core asked of the kernel's caches.
#[derive(Default)]
struct RecordingKernel {
    asked: Mutex<Vec<(&'static str, u64)>>,
    /// Entries dropped: directory and name.
    entries: Mutex<Vec<(u64, std::ffi::OsString)>>,
}

impl KernelCache for RecordingKernel {
    fn forget_entry(&self, parent: u64, name: &OsStr) {
        lock(&self.entries).push((parent, name.to_os_string()));
    }
    fn forget_inode(&self, ino: u64, data: bool, _names: Vec<(u64, std::ffi::OsString)>) {
        lock(&self.asked).push((if data { "data" } else { "attrs" }, ino));
    }
    fn forget_data_then(&self, ino: u64, then: Box<dyn FnOnce() + Send>) {
        lock(&self.asked).push(("data", ino));
        then()
    }
}

/// A server exporting a fresh directory, and a core connected to it.
pub(super) struct Harness {
    pub(super) core: Core,
    /// Who the tests' requests come from: this process's ids.
    pub(super) me: Caller,
    kernel: Arc<RecordingKernel>,
    server: Option<ServerHandle>,
    addr: std::net::SocketAddr,
    /// How clients reach the server (which keeps its identity across restarts).
    options: ConnectOptions,
    /// How the server was started, to start it again the same way.
    config: ferry_server::ServerConfig,
    dir: tempfile::TempDir,
}

impl Harness {
    pub(super) fn new() -> Harness {
        Harness::with(FsOptions {
            attr_timeout: Duration::from_secs(60),
            ..FsOptions::default()
        })
    }

    fn with(opts: FsOptions) -> Harness {
        Harness::serving(opts, |_| {})
    }

    /// A harness whose server's configuration `tune` changes first (the tests'
    /// default: root is not squashed).
    pub(super) fn serving(
        opts: FsOptions,
        tune: impl FnOnce(&mut ferry_server::ServerConfig),
    ) -> Harness {
        let dir = tempfile::tempdir().expect("a temp dir");
        let security = ferry_server::test_security(dir.path()).expect("a server identity");
        let mut config = ferry_server::test_config(dir.path(), security);
        tune(&mut config);
        let server = spawn_server(config.clone()).expect("a server");
        let addr = server.addr();
        config.listen = addr;
        let tls = server.tls().expect("a TLS server");
        let options = ConnectOptions::pinned(
            tls.fingerprint(),
            Some(tls.token(None).cloned().expect("a token")),
        )
        .with_timeout(PATIENCE);
        let client = RemoteClient::connect(&addr.to_string(), &options).expect("connect");
        let kernel = Arc::new(RecordingKernel::default());
        let core = Core::new(client, opts, kernel.clone());
        Harness {
            core,
            me: me(),
            kernel,
            server: Some(server),
            addr,
            options,
            config,
            dir,
        }
    }

    /// A second core (another client) on the same server.
    pub(super) fn another_client(&self) -> Core {
        let client = RemoteClient::connect(&self.addr.to_string(), &self.options).expect("connect");
        Core::new(client, FsOptions::default(), Arc::new(NoKernel))
    }

    /// The file `name` on the server's disk.
    pub(super) fn on_disk(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops the server and starts it again, the same way, on the same port.
    pub(super) fn restart_server(&mut self) {
        self.stop_server();
        self.start_server();
    }

    pub(super) fn stop_server(&mut self) {
        self.server = None;
    }

    pub(super) fn start_server(&mut self) {
        self.server = Some(spawn_server(self.config.clone()).expect("restart on the same port"));
    }

    fn lookup(&self, parent: u64, name: &str) -> Result<Lookup, Errno> {
        wait(|d| self.core.lookup(&self.me, parent, OsStr::new(name), d))
    }

    /// The inode of `name` in `parent`, which must exist.
    pub(super) fn ino(&self, parent: u64, name: &str) -> u64 {
        match self.lookup(parent, name) {
            Ok(Lookup::Found(e)) => e.ino,
            other => panic!("lookup {name}: {other:?}"),
        }
    }

    pub(super) fn create(
        &self,
        parent: u64,
        name: &str,
        flags: i32,
    ) -> Result<(Entry, Opened), Errno> {
        wait(|d| {
            self.core
                .create(&self.me, parent, OsStr::new(name), 0o644, flags, d)
        })
    }

    fn mkdir(&self, parent: u64, name: &str) -> Result<Entry, Errno> {
        wait(|d| {
            self.core
                .mkdir(&self.me, parent, OsStr::new(name), 0o755, d)
        })
    }

    pub(super) fn open(&self, ino: u64, flags: i32) -> Result<Opened, Errno> {
        wait(|d| self.core.open(&self.me, ino, flags, d))
    }

    pub(super) fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        wait(|d| {
            self.core
                .write(&self.me, ino, fh, offset, data, libc::O_RDWR, false, d)
        })
    }

    pub(super) fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        wait(|d| self.core.read(&self.me, ino, fh, offset, size, d))
    }

    /// close(2) then the kernel's release.
    pub(super) fn close(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        let flushed = wait(|d| self.core.flush(&self.me, ino, fh, 1, d));
        self.core.release(&self.me, ino, fh);
        flushed
    }

    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        wait(|d| self.core.getattr(&self.me, ino, None, d)).map(|a| a.attr)
    }

    fn setattr(&self, ino: u64, fh: Option<u64>, changes: AttrChanges) -> Result<Attr, Errno> {
        wait(|d| self.core.setattr(&self.me, ino, fh, changes, d)).map(|a| a.attr)
    }

    /// Names listed by readdir of directory `ino`.
    fn list(&self, ino: u64) -> Vec<String> {
        let mut names = Vec::new();
        let mut offset = 0;
        // As the kernel reads: until a read hands nothing.
        loop {
            let before = names.len();
            readdir(&self.core, ino, offset, |item| {
                names.push(String::from_utf8_lossy(item.name).into_owned());
                offset = item.next_offset;
                false
            })
            .expect("readdir");
            if names.len() == before {
                return names;
            }
        }
    }

    /// Requests an application waited for so far.
    fn waited(&self) -> u64 {
        self.core
            .stats()
            .waited_by_kind()
            .iter()
            .map(|(_, n)| n)
            .sum()
    }

    /// How many requests named `op` were sent so far.
    pub(super) fn sent_of(&self, op: &str) -> u64 {
        self.core
            .stats()
            .sent_by_kind()
            .iter()
            .find(|(name, _)| *name == op)
            .map_or(0, |(_, n)| *n)
    }
}

/// This process's user as a caller (no thread: a lock wait is never interrupted).
pub(super) fn me() -> Caller {
    Caller {
        pid: 0,
        cred: crate::creds::own(),
    }
}

/// `Core::readdir`, finished before it returns.
fn readdir(
    core: &Core,
    ino: u64,
    offset: u64,
    add: impl FnMut(DirItem<'_>) -> bool,
) -> Result<(), Errno> {
    let mut out = None;
    core.readdir(&me(), ino, offset, add, |r| out = Some(r));
    out.expect("readdir finishes before returning")
}

/// `Core::readdirplus`, finished before it returns.
fn readdirplus(
    core: &Core,
    ino: u64,
    offset: u64,
    add: impl FnMut(DirItemPlus<'_>) -> bool,
) -> Result<(), Errno> {
    let mut out = None;
    core.readdirplus(&me(), ino, offset, add, |r| out = Some(r));
    out.expect("readdirplus finishes before returning")
}

/// Starts an operation with a callback and waits for its result.
pub(super) fn wait<T: Send + 'static>(
    start: impl FnOnce(Box<dyn FnOnce(Result<T, Errno>) + Send>),
) -> Result<T, Errno> {
    let (tx, rx) = mpsc::channel();
    start(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(PATIENCE).expect("an answer, not a hang")
}

fn names(mut v: Vec<String>) -> Vec<String> {
    v.retain(|n| n != "." && n != "..");
    v.sort();
    v
}

#[test]
fn lookup_finds_files_and_remembers_missing_names() {
    let h = Harness::new();
    std::fs::write(h.on_disk("there"), b"x").expect("a file");
    let Ok(Lookup::Found(entry)) = h.lookup(ROOT_INO, "there") else {
        panic!("not found")
    };
    assert_eq!(entry.attr.size, 1);
    // Trusted for the timeout, counted from when the question was asked.
    let about_a_minute =
        |ttl: Duration| ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(55);
    assert!(about_a_minute(entry.ttl), "{:?}", entry.ttl);
    assert_ne!(entry.ino, ROOT_INO);
    // The same file keeps its number.
    assert_eq!(h.ino(ROOT_INO, "there"), entry.ino);
    match h.lookup(ROOT_INO, "missing") {
        Ok(Lookup::Missing(ttl)) => assert!(about_a_minute(ttl), "{ttl:?}"),
        other => panic!("{other:?}"),
    }
    // Invalid names are refused before the server is asked.
    assert_eq!(h.lookup(ROOT_INO, ".."), Err(Errno::EINVAL));
    let long = "x".repeat(256);
    assert_eq!(h.lookup(ROOT_INO, &long), Err(Errno::ENAMETOOLONG));
    // An inode the kernel does not know.
    assert_eq!(h.lookup(999, "there"), Err(Errno::ENOENT));
}

#[test]
fn a_directory_made_here_answers_for_its_missing_names_without_asking() {
    let h = Harness::new();
    let dir = h.mkdir(ROOT_INO, "d").expect("mkdir");
    let before = h.waited();
    assert!(matches!(h.lookup(dir.ino, "nope"), Ok(Lookup::Missing(_))));
    assert_eq!(h.waited(), before, "no round trip");
    // A name created there is no longer known to be absent.
    h.create(dir.ino, "f", libc::O_WRONLY).expect("create");
    assert!(matches!(h.lookup(dir.ino, "f"), Ok(Lookup::Found(_))));
}

#[test]
fn a_listing_in_full_answers_for_missing_names_too() {
    let h = Harness::new();
    std::fs::create_dir(h.on_disk("d")).expect("a dir");
    std::fs::write(h.on_disk("d/a"), b"").expect("a file");
    let d = h.ino(ROOT_INO, "d");
    // The server's news of the setup (made on its disk, seen by its watch) may
    // cross the listing and rightly end what it proved: listed again until a
    // listing stands. Without the feature, every lookup waits, and this fails.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(names(h.list(d)), ["a"]);
        let before = h.waited();
        assert!(matches!(h.lookup(d, "b"), Ok(Lookup::Missing(_))));
        if h.waited() == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a missing name in a directory listed in full still asked the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn create_write_close_and_read_back() {
    let h = Harness::new();
    let (entry, opened) = h.create(ROOT_INO, "f", libc::O_RDWR).expect("create");
    assert!(!opened.keep_cache && !opened.direct_io);
    assert_eq!(h.write(entry.ino, opened.fh, 0, b"hello"), Ok(5));
    assert_eq!(h.write(entry.ino, opened.fh, 5, b" world"), Ok(6));
    // Reads wait for the writes before them.
    assert_eq!(
        h.read(entry.ino, opened.fh, 0, 100),
        Ok(b"hello world".to_vec())
    );
    assert_eq!(h.getattr(entry.ino).map(|a| a.size), Ok(11));
    h.close(entry.ino, opened.fh).expect("close");
    assert_eq!(
        std::fs::read(h.on_disk("f")).expect("on disk"),
        b"hello world"
    );
    // O_EXCL of an existing name.
    assert_eq!(
        h.create(ROOT_INO, "f", libc::O_RDWR | libc::O_EXCL).err(),
        Some(Errno::EEXIST)
    );
}

#[test]
fn reopening_an_unchanged_file_keeps_the_kernels_pages() {
    // Made before the server starts: news of it from the server's watch,
    // arriving between the opens below, would rightly drop the pages.
    let opts = FsOptions {
        attr_timeout: Duration::from_secs(60),
        ..FsOptions::default()
    };
    let h = Harness::serving(opts, |config| {
        let export = config.root.as_deref().expect("the default export");
        std::fs::write(export.join("f"), b"data").expect("a file");
    });
    let ino = h.ino(ROOT_INO, "f");
    let first = h.open(ino, libc::O_RDONLY).expect("open");
    assert!(!first.keep_cache, "nothing cached yet");
    h.close(ino, first.fh).expect("close");
    let second = h.open(ino, libc::O_RDONLY).expect("open");
    assert!(second.keep_cache);
    h.close(ino, second.fh).expect("close");
    // Changed on the server meanwhile: the pages go.
    std::fs::write(h.on_disk("f"), b"other data").expect("rewrite");
    let third = h.open(ino, libc::O_RDONLY).expect("open");
    assert!(!third.keep_cache);
    // An appending file bypasses the page cache.
    let appending = h.open(ino, libc::O_WRONLY | libc::O_APPEND).expect("open");
    assert!(appending.direct_io);
}

#[test]
fn opening_a_name_removed_elsewhere_is_estale_so_the_kernel_looks_again() {
    let h = Harness::new();
    std::fs::write(h.on_disk("f"), b"").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    std::fs::remove_file(h.on_disk("f")).expect("remove");
    assert_eq!(h.open(ino, libc::O_RDONLY), Err(Errno::new(libc::ESTALE)));
}

#[test]
fn a_failed_write_behind_is_reported_by_close_once() {
    let h = Harness::new();
    let (entry, opened) = h.create(ROOT_INO, "f", libc::O_RDWR).expect("create");
    // Beyond the largest file the server's file system holds: the server fails
    // it (EFBIG), after the write was answered.
    let far = i64::MAX as u64 - 10;
    assert_eq!(
        h.write(entry.ino, opened.fh, far, b"0123456789abcdef"),
        Ok(16)
    );
    let err = h
        .close(entry.ino, opened.fh)
        .expect_err("close reports the failure");
    assert!(
        [libc::EFBIG, libc::EINVAL].contains(&err.code()),
        "unexpected {err}"
    );
}

#[test]
fn fsync_reports_a_write_failure_and_every_writer_hears_of_it_once() {
    let h = Harness::new();
    let (entry, first) = h.create(ROOT_INO, "f", libc::O_RDWR).expect("create");
    let second = h.open(entry.ino, libc::O_RDWR).expect("open");
    let far = i64::MAX as u64 - 10;
    h.write(entry.ino, first.fh, far, b"0123456789abcdef")
        .expect("answered at once");
    let fsync = |fh| wait(|d| h.core.fsync(&h.me, entry.ino, fh, false, d));
    assert!(fsync(first.fh).is_err());
    assert_eq!(fsync(first.fh), Ok(()), "told once");
    assert!(
        h.close(entry.ino, second.fh).is_err(),
        "the other writer too"
    );
    assert_eq!(h.close(entry.ino, first.fh), Ok(()));
}

#[test]
fn writes_through_one_handle_land_in_the_order_they_were_made() {
    let h = Harness::new();
    let (entry, opened) = h.create(ROOT_INO, "f", libc::O_RDWR).expect("create");
    for i in 0..200u8 {
        // Each overlaps the one before: only the order of arrival gives the result.
        h.write(entry.ino, opened.fh, u64::from(i), &[i; 8])
            .expect("write");
    }
    // tar's futimens right after writing: deferred, and applied after the writes.
    let mtime = Timestamp {
        secs: 1_000_000_000,
        nanos: 0,
    };
    let changes = AttrChanges {
        mtime: Some(SetTime::At(mtime)),
        ..AttrChanges::default()
    };
    let before = h.waited();
    let attr = h
        .setattr(entry.ino, Some(opened.fh), changes)
        .expect("setattr");
    assert_eq!(attr.mtime, mtime);
    assert_eq!(
        h.waited(),
        before,
        "answered without waiting for the server"
    );
    h.close(entry.ino, opened.fh).expect("close");
    let on_disk = std::fs::read(h.on_disk("f")).expect("on disk");
    let expected: Vec<u8> = (0..200u8).chain([199; 7]).collect();
    assert_eq!(on_disk, expected);
    let meta = std::fs::metadata(h.on_disk("f")).expect("stat");
    assert_eq!(
        meta.mtime(),
        1_000_000_000,
        "the time set after the writes stays"
    );
}

#[test]
fn stat_of_a_file_being_written_shows_what_was_written() {
    let h = Harness::new();
    let (entry, opened) = h.create(ROOT_INO, "f", libc::O_RDWR).expect("create");
    h.write(entry.ino, opened.fh, 0, &[1; 4096]).expect("write");
    assert_eq!(h.getattr(entry.ino).map(|a| a.size), Ok(4096));
    // A listing answered from before the write must not shrink it either.
    let mut sizes = Vec::new();
    readdirplus(&h.core, ROOT_INO, 0, |item| {
        if item.name == b"f" {
            sizes.push(item.entry.attr.size);
        }
        false
    })
    .expect("readdirplus");
    assert_eq!(sizes, [4096]);
    h.close(entry.ino, opened.fh).expect("close");
}

#[test]
fn truncation_waits_for_the_writes_before_it() {
    let h = Harness::new();
    let (entry, opened) = h.create(ROOT_INO, "f", libc::O_RDWR).expect("create");
    h.write(entry.ino, opened.fh, 0, &[7; 1000]).expect("write");
    let shrink = AttrChanges {
        size: Some(10),
        ..AttrChanges::default()
    };
    assert_eq!(
        h.setattr(entry.ino, Some(opened.fh), shrink)
            .map(|a| a.size),
        Ok(10)
    );
    h.close(entry.ino, opened.fh).expect("close");
    assert_eq!(std::fs::read(h.on_disk("f")).expect("on disk"), [7; 10]);
}

#[test]
fn setattr_by_path_changes_mode_and_times() {
    let h = Harness::new();
    std::fs::write(h.on_disk("f"), b"abc").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let changes = AttrChanges {
        mode: Some(0o100600),
        atime: Some(SetTime::Now),
        ..AttrChanges::default()
    };
    let attr = h.setattr(ino, None, changes).expect("setattr");
    assert_eq!(attr.perm, 0o600);
    let mode = std::fs::metadata(h.on_disk("f"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    // A chmod of a symlink is refused, as on Linux.
    std::os::unix::fs::symlink("f", h.on_disk("l")).expect("a symlink");
    let link = h.ino(ROOT_INO, "l");
    let chmod = AttrChanges {
        mode: Some(0o600),
        ..AttrChanges::default()
    };
    assert_eq!(h.setattr(link, None, chmod), Err(Errno::ENOTSUP));
}

#[test]
fn mkdir_rmdir_and_their_errors() {
    let h = Harness::new();
    let d = h.mkdir(ROOT_INO, "d").expect("mkdir");
    assert_eq!(d.attr.kind, FileKind::Directory);
    assert_eq!(h.mkdir(ROOT_INO, "d"), Err(Errno::EEXIST));
    h.create(d.ino, "f", libc::O_WRONLY).expect("create");
    let rmdir = |name: &str| wait(|done| h.core.rmdir(&h.me, ROOT_INO, OsStr::new(name), done));
    assert_eq!(rmdir("d"), Err(Errno::ENOTEMPTY));
    assert_eq!(rmdir("nope"), Err(Errno::ENOENT));
    let unlink =
        |parent, name: &str| wait(|done| h.core.unlink(&h.me, parent, OsStr::new(name), done));
    assert_eq!(unlink(ROOT_INO, "d"), Err(Errno::EISDIR));
    unlink(d.ino, "f").expect("unlink");
    assert_eq!(unlink(d.ino, "f"), Err(Errno::ENOENT));
    rmdir("d").expect("rmdir");
    assert!(!h.on_disk("d").exists());
    assert!(matches!(h.lookup(ROOT_INO, "d"), Ok(Lookup::Missing(_))));
}

#[test]
fn rename_moves_the_inode_with_its_subtree() {
    let h = Harness::new();
    let d = h.mkdir(ROOT_INO, "d").expect("mkdir");
    let (f, opened) = h.create(d.ino, "f", libc::O_RDWR).expect("create");
    h.close(f.ino, opened.fh).expect("close");
    let rename = |from: &str, to: &str, flags| {
        wait(|done| {
            h.core.rename(
                &h.me,
                ROOT_INO,
                OsStr::new(from),
                ROOT_INO,
                OsStr::new(to),
                flags,
                done,
            )
        })
    };
    rename("d", "e", 0).expect("rename");
    assert!(h.on_disk("e/f").exists());
    // The file is reached by its new path: open goes to e/f.
    let reopened = h.open(f.ino, libc::O_RDONLY).expect("open after rename");
    h.close(f.ino, reopened.fh).expect("close");
    assert_eq!(h.ino(ROOT_INO, "e"), d.ino);
    std::fs::create_dir(h.on_disk("x")).expect("a dir");
    assert_eq!(rename("e", "x", libc::RENAME_NOREPLACE), Err(Errno::EEXIST));
    rename("e", "x", libc::RENAME_EXCHANGE).expect("exchange");
    assert!(h.on_disk("x/f").exists() && h.on_disk("e").is_dir());
    assert_eq!(rename("nope", "y", 0), Err(Errno::ENOENT));
}

#[test]
fn links_symlinks_and_readlink() {
    let h = Harness::new();
    let (f, opened) = h.create(ROOT_INO, "f", libc::O_RDWR).expect("create");
    h.close(f.ino, opened.fh).expect("close");
    let link = wait(|d| h.core.link(&h.me, f.ino, ROOT_INO, OsStr::new("g"), d)).expect("link");
    assert_eq!(link.ino, f.ino, "hard links share a number");
    assert_eq!(link.attr.nlink, 2);
    let target = Path::new("/somewhere/absolute");
    let sym =
        wait(|d| h.core.symlink(&h.me, ROOT_INO, OsStr::new("s"), target, d)).expect("symlink");
    assert_eq!(sym.attr.kind, FileKind::Symlink);
    assert_eq!(
        wait(|d| h.core.readlink(&h.me, sym.ino, d)),
        Ok(b"/somewhere/absolute".to_vec())
    );
    assert_eq!(
        wait(|d| h.core.readlink(&h.me, f.ino, d)),
        Err(Errno::EINVAL),
        "not a symlink"
    );
}

#[test]
fn mknod_makes_a_fifo_the_server_never_opens() {
    let h = Harness::new();
    let fifo = wait(|d| {
        h.core.mknod(
            &h.me,
            ROOT_INO,
            OsStr::new("p"),
            libc::S_IFIFO | 0o644,
            0,
            d,
        )
    })
    .expect("mknod");
    assert_eq!(fifo.attr.kind, FileKind::Fifo);
    assert_eq!(
        h.open(fifo.ino, libc::O_RDONLY),
        Err(Errno::new(libc::ENXIO))
    );
}

#[test]
fn readdir_and_readdirplus_stop_when_the_kernels_buffer_is_full() {
    let h = Harness::new();
    for name in ["a", "b", "c"] {
        std::fs::write(h.on_disk(name), b"").expect("a file");
    }
    // Take three items (., .., one name), refuse the fourth.
    let mut taken = Vec::new();
    readdirplus(&h.core, ROOT_INO, 0, |item| {
        if taken.len() == 3 {
            return true;
        }
        taken.push((item.entry.ino, item.next_offset));
        false
    })
    .expect("readdirplus");
    assert_eq!(taken.len(), 3);
    // Go on from the offset of the last one taken: the rest, no repeats.
    let mut rest = Vec::new();
    readdirplus(&h.core, ROOT_INO, taken[2].1, |item| {
        rest.push(String::from_utf8_lossy(item.name).into_owned());
        false
    })
    .expect("readdirplus");
    assert_eq!(rest.len(), 2);
    // The one entry refused was uncounted again: a forget of what was counted
    // drops every inode but the root.
    let inodes = lock(&h.core.inodes);
    assert_eq!(inodes.lookups(taken[2].0), Some(1));
}

/// Reads directory `ino` from `offset`, taking `n` items: their names, and
/// the offset to go on from.
fn take(h: &Harness, ino: u64, offset: u64, n: usize) -> (Vec<String>, u64) {
    let (mut names, mut next) = (Vec::new(), offset);
    readdir(&h.core, ino, offset, |item| {
        if names.len() == n {
            return true;
        }
        names.push(String::from_utf8_lossy(item.name).into_owned());
        next = item.next_offset;
        false
    })
    .expect("readdir");
    (names, next)
}

#[test]
fn two_listings_of_one_directory_read_at_once_keep_their_own_snapshots() {
    let h = Harness::new();
    for name in ["a", "b", "c"] {
        std::fs::write(h.on_disk(name), b"").expect("a file");
    }
    let (first, at) = take(&h, ROOT_INO, 0, 3);
    assert_eq!(first.len(), 3);
    // Meanwhile a name goes and another comes, and a second listing starts.
    let gone = first[2].clone();
    std::fs::remove_file(h.on_disk(&gone)).expect("unlink");
    std::fs::write(h.on_disk("d"), b"").expect("a file");
    let mut second = h.list(ROOT_INO);
    second.sort();
    assert!(second.contains(&"d".to_string()) && !second.contains(&gone));
    // The first goes on where it was, in its own snapshot: every name it had
    // not handed yet, once each.
    let (rest, at) = take(&h, ROOT_INO, at, 10);
    let mut all: Vec<String> = first.into_iter().chain(rest).collect();
    all.sort();
    assert_eq!(all, [".", "..", "a", "b", "c"]);
    // Read to its end, the snapshot went: that offset lists afresh.
    let (again, _) = take(&h, ROOT_INO, at, 10);
    assert!(again.is_empty());
    let (afresh, _) = take(&h, ROOT_INO, at & !0xffff_ffff | 2, 10);
    assert!(afresh.contains(&"d".to_string()), "{afresh:?}");
}

#[test]
fn after_a_server_restart_open_files_are_opened_again_by_path() {
    let mut h = Harness::new();
    std::fs::write(h.on_disk("kept"), b"0123456789").expect("a file");
    let ino = h.ino(ROOT_INO, "kept");
    let writer = h.open(ino, libc::O_WRONLY | libc::O_TRUNC).expect("open");
    h.write(ino, writer.fh, 0, b"ab").expect("write");
    wait(|d| h.core.fsync(&h.me, ino, writer.fh, false, d)).expect("fsync");
    h.restart_server();
    // The first request after the break notices it; later ones reconnect.
    let deadline = Instant::now() + PATIENCE;
    while h.write(ino, writer.fh, 2, b"cd").is_err() {
        assert!(Instant::now() < deadline, "never reconnected");
        std::thread::sleep(crate::client::RECONNECT_INTERVAL / 5);
    }
    h.close(ino, writer.fh).expect("close");
    // Re-opened without O_TRUNC: what was written before the restart stays.
    assert_eq!(std::fs::read(h.on_disk("kept")).expect("on disk"), b"abcd");
}

#[test]
fn a_file_unlinked_while_open_cannot_be_opened_again_after_a_restart() {
    let mut h = Harness::new();
    let (f, opened) = h.create(ROOT_INO, "gone", libc::O_RDWR).expect("create");
    wait(|d| h.core.unlink(&h.me, ROOT_INO, OsStr::new("gone"), d)).expect("unlink");
    // Still usable on its own connection.
    assert_eq!(h.write(f.ino, opened.fh, 0, b"x"), Ok(1));
    assert_eq!(h.read(f.ino, opened.fh, 0, 10), Ok(b"x".to_vec()));
    h.restart_server();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match h.read(f.ino, opened.fh, 0, 10) {
            Err(Errno::EIO) if h.core.client().current_epoch().is_some() => break,
            Err(_) => {}
            Ok(data) => panic!("read an unlinked file after a restart: {data:?}"),
        }
        assert!(Instant::now() < deadline, "never reconnected");
        std::thread::sleep(crate::client::RECONNECT_INTERVAL / 5);
    }
    let _ = h.close(f.ino, opened.fh);
}

#[test]
fn fallocate_and_a_server_side_copy() {
    let h = Harness::new();
    std::fs::write(h.on_disk("src"), b"copy me please").expect("a file");
    let src = h.ino(ROOT_INO, "src");
    let input = h.open(src, libc::O_RDONLY).expect("open");
    let (dst, output) = h.create(ROOT_INO, "dst", libc::O_RDWR).expect("create");
    wait(|d| h.core.fallocate(&h.me, dst.ino, output.fh, 0, 4096, 0, d)).expect("fallocate");
    assert_eq!(h.getattr(dst.ino).map(|a| a.size), Ok(4096));
    let copied = wait(|d| {
        h.core
            .copy_file_range(&h.me, src, input.fh, 5, dst.ino, output.fh, 0, 100, d)
    });
    assert_eq!(copied, Ok(9));
    h.close(dst.ino, output.fh).expect("close");
    let on_disk = std::fs::read(h.on_disk("dst")).expect("on disk");
    assert_eq!(&on_disk[..9], b"me please");
    assert_eq!(
        wait(|d| h.core.fallocate(&h.me, dst.ino, 999, 0, 1, 0, d)),
        Err(Errno::EBADF)
    );
}

#[test]
fn statfs_describes_the_servers_file_system() {
    let h = Harness::new();
    let s = wait(|d| h.core.statfs(&h.me, d)).expect("statfs");
    assert!(s.blocks > 0 && s.bsize > 0 && s.namelen >= 255);
}

#[test]
fn extended_attributes_and_the_size_protocol() {
    let h = Harness::new();
    let (f, opened) = h.create(ROOT_INO, "f", libc::O_RDWR).expect("create");
    let name = OsStr::new("user.colour");
    let set =
        |value: &[u8], flags| wait(|d| h.core.setxattr(&h.me, f.ino, name, value, flags, 0, d));
    if let Err(e) = set(b"blue", 0) {
        // tmpfs before Linux 6.6 has no user xattrs; nothing else to check here.
        assert_eq!(e, Errno::ENOTSUP);
        return;
    }
    assert_eq!(set(b"red", libc::XATTR_CREATE), Err(Errno::EEXIST));
    let get = |size| wait(|d| h.core.getxattr(&h.me, f.ino, name, size, d));
    assert_eq!(get(0), Ok(XattrAnswer::Size(4)));
    assert_eq!(get(2), Err(Errno::ERANGE));
    assert_eq!(get(64), Ok(XattrAnswer::Data(b"blue".to_vec())));
    let list = wait(|d| h.core.listxattr(&h.me, f.ino, 1024, d)).expect("list");
    assert!(matches!(list, XattrAnswer::Data(ref l) if l.starts_with(b"user.colour\0")));
    wait(|d| h.core.removexattr(&h.me, f.ino, name, d)).expect("remove");
    assert_eq!(get(64), Err(Errno::new(libc::ENODATA)));
    // SELinux labels and ACLs are answered here, never asked for.
    let before = h.waited();
    for refused in ["security.selinux", "system.posix_acl_access"] {
        assert_eq!(
            wait(|d| h.core.getxattr(&h.me, f.ino, OsStr::new(refused), 64, d)),
            Err(Errno::ENOTSUP)
        );
    }
    // A file made here has no capability: the kernel's question before each
    // write costs no round trip.
    let cap = OsStr::new("security.capability");
    assert_eq!(
        wait(|d| h.core.getxattr(&h.me, f.ino, cap, 64, d)),
        Err(Errno::new(libc::ENODATA))
    );
    assert_eq!(h.waited(), before);
    assert_eq!(
        wait(|d| h.core.setxattr(&h.me, f.ino, name, b"x", 0, 1, d)),
        Err(Errno::EINVAL),
        "positions are for macOS resource forks"
    );
    h.close(f.ino, opened.fh).expect("close");
}

#[test]
fn locks_exclude_another_client_and_taking_one_drops_cached_pages() {
    let h = Harness::new();
    std::fs::write(h.on_disk("f"), b"data").expect("a file");
    let ino = h.ino(ROOT_INO, "f");
    let mine = h.open(ino, libc::O_RDWR).expect("open");
    let other = h.another_client();
    let their_ino = match wait(|d| other.lookup(&h.me, ROOT_INO, OsStr::new("f"), d)) {
        Ok(Lookup::Found(e)) => e.ino,
        x => panic!("{x:?}"),
    };
    let theirs = wait(|d| other.open(&h.me, their_ino, libc::O_RDWR, d)).expect("open");
    let whole = (0, ferry_common::proto::LOCK_TO_EOF);
    wait(|d| {
        h.core
            .setlk(&h.me, ino, mine.fh, 7, 0, 99, libc::F_WRLCK, false, d)
    })
    .expect("lock");
    assert!(lock(&h.kernel.asked).contains(&("data", ino)));
    // The other client sees the conflict and cannot take it.
    let seen = wait(|d| {
        other.getlk(
            &h.me,
            their_ino,
            theirs.fh,
            8,
            whole.0,
            whole.1,
            libc::F_WRLCK,
            d,
        )
    })
    .expect("getlk");
    assert_eq!((seen.start, seen.end, seen.typ), (0, 99, libc::F_WRLCK));
    let taken = wait(|d| {
        other.setlk(
            &h.me,
            their_ino,
            theirs.fh,
            8,
            50,
            60,
            libc::F_RDLCK,
            false,
            d,
        )
    });
    assert_eq!(taken, Err(Errno::new(libc::EAGAIN)));
    // A waiting request is granted once the holder closes.
    let (tx, rx) = mpsc::channel();
    other.setlk(
        &h.me,
        their_ino,
        theirs.fh,
        8,
        50,
        60,
        libc::F_RDLCK,
        true,
        move |r| {
            let _ = tx.send(r);
        },
    );
    // close(2) by the holder (lock owner 7) drops its locks.
    wait(|d| h.core.flush(&h.me, ino, mine.fh, 7, d)).expect("close");
    h.core.release(&h.me, ino, mine.fh);
    assert_eq!(rx.recv_timeout(PATIENCE), Ok(Ok(())));
    // Not an open file of that inode: no locks.
    assert_eq!(
        wait(|d| h
            .core
            .setlk(&h.me, ino, 999, 7, 0, 1, libc::F_WRLCK, false, d)),
        Err(Errno::new(libc::ENOLCK))
    );
}

#[test]
fn a_write_that_drops_setuid_tells_the_kernel_its_mode_changed() {
    let h = Harness::new();
    let (f, opened) = h.create(ROOT_INO, "f", libc::O_RDWR).expect("create");
    let setuid = AttrChanges {
        mode: Some(0o4755),
        ..AttrChanges::default()
    };
    h.setattr(f.ino, Some(opened.fh), setuid).expect("chmod");
    let written = wait(|d| {
        h.core
            .write(&h.me, f.ino, opened.fh, 0, b"x", libc::O_RDWR, true, d)
    });
    assert_eq!(written, Ok(1));
    assert!(lock(&h.kernel.asked).contains(&("attrs", f.ino)));
    h.close(f.ino, opened.fh).expect("close");
    let mode = std::fs::metadata(h.on_disk("f"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

/// The lease and the server's notices (see [`super::coherence`]).
mod coherence;

/// Removals sent behind (see [`super::behind`]).
mod behind;

/// Creates sent behind (see [`super::create_behind`]).
mod create_behind;

#[test]
fn a_file_changed_since_the_kernel_was_told_its_size_opens_uncached() {
    // No lease: nothing tells this core that the file grew.
    let h = Harness::with(FsOptions {
        attr_timeout: Duration::from_secs(60),
        lease: Duration::ZERO,
        ..FsOptions::default()
    });
    std::fs::write(h.on_disk("f"), b"12").expect("a file");
    let f = h.ino(ROOT_INO, "f");
    // The same inode on the server, longer now (as when the server's
    // filesystem gives a freed inode number to the file renamed over it).
    std::fs::write(h.on_disk("f"), b"123").expect("rewritten in place");
    let opened = h.open(f, libc::O_RDONLY).expect("open");
    // The kernel's size is the old one: reads bypass it, and it goes.
    assert!(opened.direct_io && !opened.keep_cache);
    assert!(lock(&h.kernel.asked).contains(&("data", f)));
    assert_eq!(h.read(f, opened.fh, 0, 100), Ok(b"123".to_vec()));
    h.close(f, opened.fh).expect("close");
    // Told now: the next open is cached as usual.
    let again = h.open(f, libc::O_RDONLY).expect("open");
    assert!(!again.direct_io);
    h.close(f, again.fh).expect("close");
}

#[test]
fn a_name_replaced_behind_an_inode_opens_the_new_file_uncached() {
    // No lease: nothing tells this core that the name was replaced.
    let h = Harness::with(FsOptions {
        attr_timeout: Duration::from_secs(60),
        lease: Duration::ZERO,
        ..FsOptions::default()
    });
    let replace = |name: &str| {
        std::fs::write(h.on_disk("new"), b"new, longer").expect("another file");
        std::fs::rename(h.on_disk("new"), h.on_disk(name)).expect("replace");
    };
    // Opening the old inode reaches the new file by its name: it opens, but
    // bypasses the kernel's size and pages of the old one, which go.
    std::fs::write(h.on_disk("g"), b"old").expect("a file");
    let g = h.ino(ROOT_INO, "g");
    replace("g");
    let opened = h.open(g, libc::O_RDONLY).expect("open");
    assert!(opened.direct_io && !opened.keep_cache);
    assert!(lock(&h.kernel.asked).contains(&("data", g)));
    assert_eq!(h.read(g, opened.fh, 0, 100), Ok(b"new, longer".to_vec()));
    // Its attributes are the open file's.
    h.core.attrs.drop_ino(g);
    assert_eq!(h.getattr(g).map(|a| a.size), Ok(11));
    h.close(g, opened.fh).expect("close");
    // Asking for the attributes of an old inode by its name: ESTALE (the
    // kernel looks the name up again and retries), never another file's.
    std::fs::write(h.on_disk("f"), b"old").expect("a file");
    let f = h.ino(ROOT_INO, "f");
    replace("f");
    h.core.attrs.drop_ino(f);
    assert_eq!(h.getattr(f).map(|a| a.size), Err(Errno::new(libc::ESTALE)));
    // Looked up again: the new file, under another number.
    let again = h.ino(ROOT_INO, "f");
    assert_ne!(again, f);
    assert_eq!(h.getattr(again).map(|a| a.size), Ok(11));
}

#[test]
fn a_squashed_roots_attribute_changes_wait_for_the_servers_verdict() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the server squashes only when it runs as root");
        return;
    }
    let h = Harness::serving(FsOptions::default(), |c| {
        c.identities.squash = ferry_server::Squash::Root;
    });
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let root = Caller {
        pid: 0,
        cred: ferry_common::proto::Cred::default(),
    };
    let (f, opened) = wait(|d| {
        h.core
            .create(&root, ROOT_INO, OsStr::new("f"), 0o644, libc::O_RDWR, d)
    })
    .expect("create");
    assert_eq!(f.attr.uid, 65_534, "made as nobody");
    // Written, so that a chmod could go behind the write without waiting; but
    // the server acts as nobody for this root, and strips the set-id bits.
    let written = wait(|d| {
        h.core
            .write(&root, f.ino, opened.fh, 0, b"x", libc::O_RDWR, false, d)
    });
    assert_eq!(written, Ok(1));
    let setuid = AttrChanges {
        mode: Some(0o4755),
        ..AttrChanges::default()
    };
    let attr = wait(|d| h.core.setattr(&root, f.ino, Some(opened.fh), setuid, d))
        .expect("chmod")
        .attr;
    assert_eq!(attr.perm, 0o755, "the server's answer, not a projection");
    // Someone the server checks as the kernel did still goes behind the write.
    let user = Caller {
        pid: 0,
        cred: ferry_common::proto::Cred {
            uid: 65_534,
            gid: 65_534,
            groups: Vec::new(),
        },
    };
    let before = h.waited();
    let times = AttrChanges {
        mtime: Some(SetTime::Now),
        ..AttrChanges::default()
    };
    wait(|d| h.core.setattr(&user, f.ino, Some(opened.fh), times, d)).expect("utimens");
    assert_eq!(h.waited(), before, "not waited for");
    wait(|d| h.core.flush(&root, f.ino, opened.fh, 1, d)).expect("close");
    h.core.release(&root, f.ino, opened.fh);
}
