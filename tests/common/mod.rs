//! The end-to-end harness: a real server on 127.0.0.1:0 in its own thread, a real
//! FUSE mount in a temporary directory, and cleanup that runs even when a test
//! fails (the mount is dropped before the directories, and a busy mount is
//! detached lazily rather than left behind).
//!
//! Where FUSE, root or pjdfstest is missing a test is skipped with a SKIPPED
//! line in the test output — unless `CI` is set, where it fails: a green CI run
//! must mean the mount was exercised (see [`skip`]).

#![allow(dead_code)]

pub mod binary;
pub mod harness;

use ferry_fusefs::client::ConnectOptions;
use ferry_fusefs::mount::{self, Mount, MountOptions};
use ferry_fusefs::{FsOptions, RemoteClient};
use ferry_server::{spawn_server, Security, ServerConfig, ServerHandle, Squash};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

pub struct Fixture {
    mounts: Vec<Mount>,
    server: Option<ServerHandle>,
    addr: String,
    /// How the server was started, to start it again the same way.
    config: ServerConfig,
    pub export: PathBuf,
    pub mnt: PathBuf,
    dir: TempDir,
}

/// Options for a fixture beyond the defaults.
#[derive(Clone)]
pub struct Setup {
    pub read_only_server: bool,
    pub read_only_mount: bool,
    pub attr_timeout: Duration,
    /// How long caches live while the server tells the mount of changes
    /// (zero: the mount does not ask it to).
    pub lease: Duration,
    pub readdirplus: bool,
    pub allow_other: bool,
    /// Export this directory instead of a fresh empty one.
    pub export: Option<PathBuf>,
    /// How long a request may wait for the server.
    pub timeout: Duration,
    /// Whose users the server squashes. The tests run as root and most check
    /// what root may do, so by default root on the mount is root on the server
    /// (`--no-root-squash`, as NFS test setups run); tests about squashing set
    /// `Squash::Root` (the server's default) or `Squash::All`.
    pub squash: Squash,
    /// The server lets clients make device nodes (`--allow-devices`).
    pub allow_devices: bool,
    /// The server's grace period for locks (none by default: locks end with
    /// their connection, and a restart loses them).
    pub grace: Duration,
    /// The server records which clients may hold locks (in the fixture's
    /// temporary directory), so its grace period after a restart ends once
    /// they have all reclaimed.
    pub lock_record: bool,
    /// Descriptors all clients together may hold (`None`: the server's own
    /// choice from its open file limit).
    pub max_descriptors: Option<usize>,
    /// Reply memory shared by all connections, in bytes.
    pub reply_memory: usize,
    /// The server runs `--insecure` (plaintext, no authentication), so that a
    /// test can speak the protocol itself.
    pub insecure: bool,
    /// The mount writes through below this much free space on the export
    /// (0: write-behind even on a full export, as when another client fills
    /// it after the mount last heard how much room there was).
    pub write_through_below: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            read_only_server: false,
            read_only_mount: false,
            attr_timeout: Duration::from_secs(1),
            lease: ferry_fusefs::core::DEFAULT_LEASE,
            readdirplus: true,
            allow_other: false,
            export: None,
            timeout: ferry_fusefs::client::DEFAULT_TIMEOUT,
            squash: Squash::None,
            allow_devices: false,
            grace: Duration::ZERO,
            lock_record: false,
            max_descriptors: None,
            reply_memory: ferry_server::DEFAULT_REPLY_MEMORY,
            insecure: false,
            write_through_below: ferry_fusefs::space::LOW_WATER,
        }
    }
}

pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The one skip guard: a test that cannot run here (no usable FUSE, not root,
/// pjdfstest not installed) says SKIPPED in the test output — nextest shows
/// passing tests' output (`success-output` in `.config/nextest.toml`) — and
/// fails instead when `CI` is set, where a green run must mean it ran.
#[track_caller]
pub fn skip(why: &str) {
    if in_ci() {
        panic!("required under CI: {why}");
    }
    eprintln!("SKIPPED: {why} (this test fails under CI instead)");
}

/// Why FUSE cannot be used here, if it cannot: `/dev/fuse` must be the FUSE
/// character device (10, 229), readable and writable.
pub fn fuse_unusable() -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if m.file_type().is_char_device() && m.rdev() == libc::makedev(10, 229) => {}
        Ok(_) => return Some("/dev/fuse is not the FUSE device".into()),
        Err(e) => return Some(format!("no /dev/fuse: {e}")),
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .err()
        .map(|e| format!("cannot open /dev/fuse: {e}"))
}

/// Whether FUSE can be used here; if not, the test skips (see [`skip`]).
#[track_caller]
pub fn fuse_usable() -> bool {
    match fuse_unusable() {
        None => true,
        Some(why) => {
            skip(&format!("FUSE is unavailable: {why}"));
            false
        }
    }
}

/// Whether pjdfstest is installed where `conformance/pjdfstest/run` looks: on
/// PATH or in cargo's bin directory.
pub fn pjdfstest_on_path() -> bool {
    let cargo_bin = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/pjdfstest"));
    let on_path = std::process::Command::new("pjdfstest")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    on_path || cargo_bin.is_some_and(|p| p.is_file())
}

/// [`pjdfstest_on_path`]; if not, the test skips.
#[track_caller]
pub fn pjdfstest_installed() -> bool {
    if pjdfstest_on_path() {
        return true;
    }
    skip("pjdfstest is not installed (cargo install --locked pjdfstest; .ci/run does it)");
    false
}

impl Fixture {
    pub fn new() -> Option<Fixture> {
        Fixture::with(Setup::default())
    }

    pub fn with(setup: Setup) -> Option<Fixture> {
        if !fuse_usable() {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ferry-test-")
            .tempdir()
            .expect("temp dir");
        let export = match &setup.export {
            Some(e) => e.clone(),
            None => {
                let e = dir.path().join("export");
                std::fs::create_dir(&e).expect("create export dir");
                e
            }
        };
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("create mount dir");
        let security = if setup.insecure {
            Security::Insecure
        } else {
            ferry_server::test_security(&export).expect("a server identity")
        };
        let mut config = ferry_server::test_config(&export, security);
        config.read_only = setup.read_only_server;
        config.identities.squash = setup.squash;
        config.allow_devices = setup.allow_devices;
        config.grace = setup.grace;
        config.lock_record = setup.lock_record.then(|| dir.path().join("lock-clients"));
        config.max_descriptors = setup.max_descriptors;
        config.reply_memory = setup.reply_memory;
        let server = spawn_server(config.clone()).expect("start server");
        let addr = server.addr().to_string();
        config.listen = server.addr();
        let mut fixture = Fixture {
            mounts: Vec::new(),
            server: Some(server),
            addr,
            config,
            export,
            mnt: mnt.clone(),
            dir,
        };
        match fixture.mount_at(&mnt, &setup) {
            Ok(m) => fixture.mounts.push(m),
            Err(e) => {
                skip(&format!("FUSE is unavailable: mounting failed: {e}"));
                return None;
            }
        }
        Some(fixture)
    }

    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// How an in-process client reaches this fixture's server: TLS, the
    /// server pinned, the export's token.
    pub fn connect_options(&self, timeout: Duration) -> ConnectOptions {
        match &self.config.security {
            Security::Tls(tls) => ConnectOptions::pinned(
                tls.fingerprint(),
                Some(tls.token(None).cloned().expect("a token")),
            )
            .with_timeout(timeout),
            Security::Insecure => ConnectOptions::insecure().with_timeout(timeout),
        }
    }

    /// The arguments that let `ferry mount|ls|get|put` (the binary) reach this
    /// fixture's server: its pin, its token file and a state directory of
    /// the test's own.
    pub fn client_args(&self) -> Vec<OsString> {
        let Security::Tls(tls) = &self.config.security else {
            return vec!["--insecure".into()];
        };
        vec![
            "--pin".into(),
            tls.fingerprint().to_string().into(),
            "--token-file".into(),
            tls.token_path().into(),
            "--state-dir".into(),
            self.dir.path().join("client-state").into(),
        ]
    }

    /// Stops the server (the mounts stay).
    pub fn stop_server(&mut self) {
        self.server.take();
    }

    /// Starts the server again on the same address, the same way.
    pub fn restart_server(&mut self) {
        self.stop_server();
        self.server = Some(spawn_server(self.config.clone()).expect("restart the server"));
    }

    fn mount_at(&self, mnt: &Path, setup: &Setup) -> std::io::Result<Mount> {
        let client = RemoteClient::connect(&self.addr(), &self.connect_options(setup.timeout))
            .map_err(std::io::Error::other)?;
        let opts = MountOptions {
            fs: FsOptions {
                attr_timeout: setup.attr_timeout,
                lease: setup.lease,
                read_only: setup.read_only_mount,
                readdirplus: setup.readdirplus,
                write_through_below: setup.write_through_below,
            },
            allow_other: setup.allow_other,
            ..MountOptions::default()
        };
        mount::mount(client, mnt, &opts)
    }

    /// A second mount of the same export, at `<tmp>/NAME`.
    pub fn second_mount(&mut self, name: &str, setup: Setup) -> PathBuf {
        let mnt = self.dir.path().join(name);
        std::fs::create_dir(&mnt).expect("create second mount dir");
        let m = self.mount_at(&mnt, &setup).expect("second mount");
        self.mounts.push(m);
        mnt
    }

    /// `mnt/rel`.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `export/rel`: the same file seen directly on the server's disk.
    pub fn e(&self, rel: &str) -> PathBuf {
        self.export.join(rel)
    }

    /// The core serving mount `index` (0: the first), to look at its
    /// statistics and lease.
    pub fn core(&self, index: usize) -> &ferry_fusefs::Core {
        self.mounts[index].core()
    }

    pub fn temp(&self) -> &Path {
        self.dir.path()
    }

    /// What the first mount's client has counted (requests sent and waited for).
    pub fn stats(&self) -> &ferry_fusefs::stats::Stats {
        self.mounts[0].core().stats()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Mounts first (while the server still answers), then the server; the
        // temporary directory goes last, when nothing is mounted on it.
        for m in self.mounts.drain(..).rev() {
            let at = m.mountpoint().to_path_buf();
            if let Err(e) = m.unmount() {
                eprintln!("unmount {} failed: {e}; detaching", at.display());
                let _ = mount::lazy_unmount(&at);
            }
        }
        self.server.take();
    }
}

/// Gets a fixture or returns from the test (skip) when FUSE is unavailable locally.
#[macro_export]
macro_rules! fixture {
    () => {
        match common::Fixture::new() {
            Some(f) => f,
            None => return,
        }
    };
    ($setup:expr) => {
        match common::Fixture::with($setup) {
            Some(f) => f,
            None => return,
        }
    };
}

/// Whether this process is root (some tests need to switch users or mount).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root: skip locally, fail under CI (which runs as root).
#[track_caller]
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    skip("this test needs root");
    false
}

/// The errno of an io::Error, for assertions.
pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Asserts that `r` failed with `errno`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: std::io::Result<T>, errno: i32) {
    match r {
        Ok(v) => panic!("expected errno {errno}, got success: {v:?}"),
        Err(e) => assert_eq!(errno_of(&e), errno, "expected errno {errno}, got {e}"),
    }
}

/// fsync(2) of the directory `dir` on a mount, which must succeed: the
/// removals the mount sent behind in it (without waiting, under a directory
/// lease) have reached the server.
#[track_caller]
pub fn fsync_dir(dir: &std::path::Path) {
    let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
    if let Err(e) = synced {
        panic!("fsync of directory {}: {e}", dir.display());
    }
}

/// Runs a command and returns its stdout; panics with its stderr on failure.
#[track_caller]
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small tmpfs (1 MiB unless told), unmounted when dropped.
pub struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    pub fn new() -> SmallDisk {
        SmallDisk::of_mib(1)
    }

    pub fn of_mib(mib: u32) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("ferry-small-")
            .tempdir()
            .unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m"),
                "ferry-test-tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot mount a tmpfs for the test");
        SmallDisk(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Runs `cmd` as the user `nobody` and returns whether it succeeded and its stderr.
pub fn as_nobody(cmd: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(cmd)
        .output()
        .expect("run setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
