//! The `ferry` binary run as a user runs it: a server process, mounts in
//! other processes, and guards that leave nothing behind.
//!
//! Servers and clients started with [`ferry`] share one state directory per
//! test process ([`state_dir`]): the server keeps its identity and tokens
//! there, and the clients their known servers and a client certificate the
//! server's `authorized_clients` lists, so every client of the test is let in
//! to every server of the test, over TLS, as a user who ran `ferry keygen`
//! and had it authorised would be. Tests about credentials set their own.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `ferry`, with this test process's state directory.
pub fn ferry() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.env("FERRY_STATE_DIR", state_dir());
    cmd
}

/// The state directory servers and clients of this test process share, made
/// (with an authorised client identity) on first use; the harness removes it
/// when the test ends ([`remove_state_dir`]).
pub fn state_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-test-state-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("a state directory");
        let (identity, _) = ferry_fusefs::client::tls::keygen(&dir).expect("a client identity");
        fs::write(
            dir.join(ferry_common::state::AUTHORIZED_CLIENTS),
            format!("{} the test's clients\n", identity.fingerprint()),
        )
        .expect("authorize the test's client");
        dir
    })
}

/// Removes [`state_dir`], if this process made it.
pub fn remove_state_dir() {
    let dir = std::env::temp_dir().join(format!("ferry-test-state-{}", std::process::id()));
    let _ = fs::remove_dir_all(dir);
}

/// `ferry serve DIR --listen 127.0.0.1:0`, killed on drop.
pub struct Served {
    pub child: Child,
    pub addr: String,
    /// The rest of the first line `ferry serve` printed.
    pub banner: String,
    /// Its state directory (this test process's, see [`state_dir`]).
    pub state: PathBuf,
}

impl Served {
    pub fn start(dir: &Path, extra: &[&str]) -> Served {
        let mut args = vec![dir.to_str().expect("a UTF-8 path")];
        args.extend_from_slice(extra);
        Served::with_args(&args)
    }

    /// `ferry serve ARGS --listen 127.0.0.1:0` (unless ARGS name an address).
    pub fn with_args(args: &[&str]) -> Served {
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = ferry()
            .arg("serve")
            .args(listen)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ferry serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "ferry: exporting /abs/dir on 127.0.0.1:PORT"
        assert!(
            line.starts_with("ferry: exporting "),
            "unexpected first line: {line:?}"
        );
        let addr = line
            .split(" on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(';')
            .to_string();
        Served {
            child,
            addr,
            banner: line,
            state: state_dir().to_path_buf(),
        }
    }

    /// `ferry` as a client of this server.
    pub fn client(&self) -> Command {
        ferry()
    }

    /// The environment that makes `ferry` a client of this server (for
    /// commands started some other way).
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![("FERRY_STATE_DIR", self.state.display().to_string())]
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status =
            wait_timeout(&mut self.child, Duration::from_secs(10)).expect("serve exits on SIGTERM");
        std::mem::forget(self);
        status
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

pub fn is_mounted(p: &Path) -> bool {
    let p = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.to_str().unwrap()))
}

pub fn wait_mounted(p: &Path, want: bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if is_mounted(p) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Unmounts on drop so that a failing test leaves nothing behind.
pub struct MountGuard(pub PathBuf);
impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = ferry_fusefs::mount::lazy_unmount(&self.0);
        }
    }
}

/// Runs `cmd` and returns its output; fails the test, with what it printed, if it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Holds the lock under which a test may change `/sbin/mount.fuse.ferry` and
/// `/sbin/mount.ferry` (tests/system.rs links them, tests/package.rs installs
/// them), so that test processes running at once do not swap them under each
/// other; released when the file is dropped.
pub fn lock_mount_helper() -> fs::File {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/lock/ferry-test-mount-helper.lock")
        .expect("open the helper lock");
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    lock
}
