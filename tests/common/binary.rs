//! The `ferry` binary run as a user runs it: a server process, mounts in
//! other processes, and guards that leave nothing behind.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

/// `ferry serve DIR --listen 127.0.0.1:0`, killed on drop.
pub struct Served {
    pub child: Child,
    pub addr: String,
    /// The rest of the first line `ferry serve` printed.
    pub banner: String,
}

impl Served {
    pub fn start(dir: &Path, extra: &[&str]) -> Served {
        let mut args = vec![dir.to_str().expect("a UTF-8 path")];
        args.extend_from_slice(extra);
        Served::with_args(&args)
    }

    /// `ferry serve ARGS --listen 127.0.0.1:0`.
    pub fn with_args(args: &[&str]) -> Served {
        let mut child = ferry()
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
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
        }
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
