//! `ferry status MOUNTPOINT`: a running mount describes itself.
//!
//! The mount process listens on a Unix socket named after its mountpoint, in a
//! runtime directory only its user can enter (`/run/ferry` for root,
//! `$XDG_RUNTIME_DIR/ferry` or `/tmp/ferry-UID` otherwise, mode 0700 and checked
//! to be so), so the status of a mount is private to the user who mounted it
//! and root. `ferry status` connects and prints what it is sent: the report is
//! rendered by the mount, from its counters ([`crate::stats`]) now and as they
//! were about ten seconds ago (sampled once a second), which gives the rates.

use crate::core::Core;
use crate::mount::{self, FSTYPE};
use crate::stats::Snapshot;
use crate::units;
use ferry_common::counters::{op_kind_name, OP_KINDS};
use ferry_common::sync::lock;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Rates are over this many one-second samples.
const WINDOW: usize = 10;
/// How long `ferry status` waits for the mount's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory holding this user's mount sockets, created private if missing.
/// Refuses one that others could enter.
fn runtime_dir() -> io::Result<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let dir = if euid == 0 {
        PathBuf::from("/run/ferry")
    } else {
        match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(run) if run.is_absolute() => run.join("ferry"),
            _ => PathBuf::from(format!("/tmp/ferry-{euid}")),
        }
    };
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", dir.display()),
            ))
        }
    }
    let meta = fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != euid || meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory of yours that no one else can enter (mode 0700)",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

/// The socket of the mount at `mountpoint` (absolute, without symlinks): named
/// by a hash of the path, as a socket's path is limited to 107 bytes. The
/// report's first line names the mountpoint, so a collision would be noticed.
pub fn socket_path(mountpoint: &Path) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a: stable across releases, unlike std's hasher.
    let hash = mountpoint
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    Ok(runtime_dir()?.join(format!("mount-{hash:016x}.sock")))
}

/// Serves the status of one mount until dropped.
pub struct StatusServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Dropping it ends the sampler.
    _sampling: mpsc::Sender<()>,
    listener: Option<thread::JoinHandle<()>>,
}

impl StatusServer {
    /// Starts answering `ferry status` for the mount of `core` at `mountpoint`.
    pub fn start(core: Core, mountpoint: &Path) -> io::Result<StatusServer> {
        let path = socket_path(mountpoint)?;
        // A socket left by a mount that was killed: nobody answers on it.
        if path.exists() && UnixStream::connect(&path).is_err() {
            let _ = fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", path.display()),
            )
        })?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        let samples = Arc::new(Mutex::new(VecDeque::with_capacity(WINDOW + 1)));
        let (sampling, stopped) = mpsc::channel::<()>();
        {
            let (core, samples) = (core.clone(), Arc::clone(&samples));
            thread::Builder::new()
                .name("ferry-status-sampler".into())
                .spawn(move || loop {
                    {
                        let mut samples = lock(&samples);
                        if samples.len() > WINDOW {
                            samples.pop_front();
                        }
                        samples.push_back(core.stats().snapshot());
                    }
                    match stopped.recv_timeout(Duration::from_secs(1)) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => return,
                    }
                })?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mountpoint = mountpoint.to_path_buf();
        let stopping = Arc::clone(&stop);
        let listener = thread::Builder::new()
            .name("ferry-status".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let earliest = lock(&samples).front().cloned();
                    let text = report(&core, &mountpoint, earliest.as_ref());
                    let _ = conn.set_write_timeout(Some(ANSWER_TIMEOUT));
                    let _ = conn.write_all(text.as_bytes());
                }
            })?;
        Ok(StatusServer {
            path,
            stop,
            _sampling: sampling,
            listener: Some(listener),
        })
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the listener from accept, so that it sees the flag.
        let _ = UnixStream::connect(&self.path);
        let _ = fs::remove_file(&self.path);
        if let Some(listener) = self.listener.take() {
            let _ = listener.join();
        }
    }
}

/// `ferry status MOUNTPOINT`: the report of the mount there, or why there is none.
pub fn query(mountpoint: &Path) -> Result<String, String> {
    let shown = mountpoint.display();
    let absolute =
        absolute_without_entering(mountpoint).map_err(|e| format!("cannot find {shown}: {e}"))?;
    match mount::mounted_at(&absolute) {
        Some(m) if m.fstype == FSTYPE => {}
        Some(m) => return Err(format!("{shown} is not a ferry mount (it is {})", m.fstype)),
        None => return Err(format!("nothing is mounted at {shown}")),
    }
    let path = socket_path(&absolute).map_err(|e| e.to_string())?;
    let mut conn = UnixStream::connect(&path).map_err(|e| {
        format!(
            "{shown} is a ferry mount, but no mount process of yours answers for it \
             ({}: {e}) — was it mounted by another user? If its process has ended, \
             detach it with `fusermount3 -u {shown}`",
            path.display()
        )
    })?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    conn.read_to_string(&mut text)
        .map_err(|e| format!("the mount process of {shown} did not answer: {e}"))?;
    let first = text.lines().next().unwrap_or_default();
    if !first.ends_with(&format!(" {}", absolute.display())) {
        return Err(format!(
            "{} answered for another mount ({first:?})",
            path.display()
        ));
    }
    Ok(text)
}

/// `path` made absolute and free of symlinks, without looking inside it (a
/// dead mount there would answer ENOTCONN, a hung one not at all).
fn absolute_without_entering(path: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => Ok(fs::canonicalize(parent)?.join(name)),
        _ => Ok(absolute),
    }
}

/// The report: the mount's counters now, and rates since `earlier`.
fn report(core: &Core, mountpoint: &Path, earlier: Option<&Snapshot>) -> String {
    let now = core.stats().snapshot();
    let client = core.client();
    let welcome = client.welcome();
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        let _ = writeln!(out, "{label:<13}{text}");
    };
    line("ferry mount", format!("at {}", mountpoint.display()));
    line(
        "server",
        format!(
            "{} ({})",
            client.addr(),
            if welcome.read_only || core.options().read_only {
                "read-only"
            } else {
                "read-write"
            }
        ),
    );
    let state = match client.current_epoch() {
        Some(_) => format!(
            "connected for {}",
            units::duration(now.uptime.saturating_sub(now.connected_at))
        ),
        None => "disconnected: the next request reconnects (at most every 0.5 s)".to_string(),
    };
    line(
        "connection",
        format!(
            "{state}; {} reconnect{}, {} request{} timed out; up {}",
            now.reconnects,
            plural(now.reconnects),
            now.timeouts,
            plural(now.timeouts),
            units::duration(now.uptime)
        ),
    );

    let window = earlier.filter(|e| now.at > e.at);
    let since = window.map(|e| now.at.duration_since(e.at));
    let total = |counts: &[u64; OP_KINDS]| counts.iter().sum::<u64>();
    let percentiles =
        |h: &ferry_common::counters::HistogramSnapshot| match (h.quantile(0.5), h.quantile(0.99)) {
            (Some(p50), Some(p99)) => format!(
                "p50 {}, p99 {} ({} answer{})",
                units::latency(p50),
                units::latency(p99),
                h.count(),
                plural(h.count())
            ),
            _ => "none".to_string(),
        };
    let recent = match (window, since) {
        (Some(e), Some(d)) => {
            let h = now.round_trips.since(&e.round_trips);
            format!("last {:.1} s: {}", d.as_secs_f64(), percentiles(&h))
        }
        _ => "last seconds: not sampled yet".to_string(),
    };
    line(
        "round trips",
        format!(
            "{recent}; since mounting: {}",
            percentiles(&now.round_trips)
        ),
    );

    match (window, since) {
        (Some(e), Some(d)) if total(&now.sent) > total(&e.sent) => {
            let secs = d.as_secs_f64();
            let mut kinds: Vec<(usize, u64)> = (0..OP_KINDS)
                .map(|i| (i, now.sent[i].saturating_sub(e.sent[i])))
                .filter(|(_, n)| *n > 0)
                .collect();
            kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
            let by_kind: Vec<String> = kinds
                .iter()
                .map(|(i, n)| format!("{} {:.1}", op_kind_name(*i), *n as f64 / secs))
                .collect();
            let all = (total(&now.sent) - total(&e.sent)) as f64 / secs;
            line(
                "requests/s",
                format!("{all:.1} over the last {secs:.1} s: {}", by_kind.join(", ")),
            );
        }
        _ => line("requests/s", "0 (idle)".to_string()),
    }
    let mut kinds: Vec<(usize, u64)> = (0..OP_KINDS)
        .map(|i| (i, now.sent[i]))
        .filter(|(_, n)| *n > 0)
        .collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    let by_kind: Vec<String> = kinds
        .iter()
        .map(|(i, n)| format!("{} {n}", op_kind_name(*i)))
        .collect();
    line(
        "requests",
        format!(
            "{} sent since mounting ({} waited for by applications): {}",
            total(&now.sent),
            total(&now.waited),
            if by_kind.is_empty() {
                "none".to_string()
            } else {
                by_kind.join(", ")
            }
        ),
    );
    let rates = match (window, since) {
        (Some(e), Some(d)) => format!(
            "; now {} out, {} in",
            units::rate(now.bytes_sent.saturating_sub(e.bytes_sent), d),
            units::rate(now.bytes_received.saturating_sub(e.bytes_received), d)
        ),
        _ => String::new(),
    };
    line(
        "bytes",
        format!(
            "{} sent, {} received since mounting{rates}",
            units::size(now.bytes_sent),
            units::size(now.bytes_received)
        ),
    );
    line(
        "caches",
        format!(
            "attributes {} answered here; absent names {} answered here; page cache kept on {} of opens",
            hit_rate(now.attrs),
            hit_rate(now.absent_names),
            hit_rate(now.page_cache)
        ),
    );
    let (changes, bytes) = core.queued_writes();
    line(
        "write-behind",
        format!(
            "{changes} change{} queued ({})",
            plural(changes as u64),
            units::size(bytes as u64)
        ),
    );
    out
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `97.0% (9700 of 10000)`.
fn hit_rate((hits, misses): (u64, u64)) -> String {
    let all = hits + misses;
    if all == 0 {
        return "none of 0".to_string();
    }
    format!("{:.1}% ({hits} of {all})", hits as f64 * 100.0 / all as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_named_by_mountpoint_in_a_private_directory() {
        let a = socket_path(Path::new("/mnt/a")).unwrap();
        let b = socket_path(Path::new("/mnt/b")).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, socket_path(Path::new("/mnt/a")).unwrap());
        assert!(a.as_os_str().len() < 100, "{}", a.display());
        let dir = fs::metadata(a.parent().unwrap()).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn hit_rates_read_as_percentages() {
        assert_eq!(hit_rate((0, 0)), "none of 0");
        assert_eq!(hit_rate((97, 3)), "97.0% (97 of 100)");
    }
}
