//! Mounting: checks on the mountpoint, the fuser session, raising readahead, and
//! unmounting cleanly — on request, on SIGINT/SIGTERM, or when dropped.

use crate::adapter::FerryFs;
use crate::client::RemoteClient;
use crate::core::{Core, FsOptions};
use crate::notify::KernelNotifier;
use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Everything about a mount that the user can choose.
#[derive(Clone, Debug)]
pub struct MountOptions {
    pub fs: FsOptions,
    /// FUSE worker threads reading kernel requests.
    pub threads: usize,
    /// Let users other than the one who mounted use the mount (`allow_other`).
    pub allow_other: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fs: FsOptions::default(),
            threads: 4,
            allow_other: false,
        }
    }
}

/// Checks that `path` is an existing, empty directory with nothing mounted on
/// it, and returns it made absolute. Each refusal says what to do instead.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    let dead = |e: &io::Error| {
        format!(
            "cannot use {shown} as a mountpoint: {e} — the process of a FUSE mount there \
             has ended (killed or crashed); detach it with `fusermount3 -u {shown}` \
             (or `umount -l {shown}`) and mount again"
        )
    };
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            format!("{shown} does not exist — create it with `mkdir -p {shown}`")
        }
        _ if e.raw_os_error() == Some(libc::ENOTCONN) => dead(&e),
        _ => format!("cannot use {shown} as a mountpoint: {e}"),
    })?;
    if !meta.is_dir() {
        return Err(format!("{shown} is not a directory"));
    }
    let absolute = fs::canonicalize(path).map_err(|e| format!("cannot resolve {shown}: {e}"))?;
    // Before the emptiness check: the root of an empty export is empty too.
    if let Some(mounted) = mounted_at(&absolute) {
        let fuse = mounted.fstype == "fuse" || mounted.fstype.starts_with("fuse.");
        // The kernel may answer `stat` of a dead mount's root from its cache;
        // listing it reaches the mount's process, or finds it gone.
        if fuse {
            if let Err(e) = fs::read_dir(path) {
                if e.raw_os_error() == Some(libc::ENOTCONN) {
                    return Err(dead(&e));
                }
            }
        }
        if mounted.fstype == FSTYPE {
            return Err(format!(
                "{shown} is already a ferry mount (of {}) — unmount it first with \
                 `fusermount3 -u {shown}`, or choose another mountpoint",
                mounted.source
            ));
        }
        if fuse {
            return Err(format!(
                "{shown} is already a FUSE mount ({} of {}) — unmount it first, or choose \
                 another mountpoint",
                mounted.fstype, mounted.source
            ));
        }
    }
    let mut entries = fs::read_dir(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if entries.next().is_some() {
        return Err(format!("{shown} is not an empty directory"));
    }
    Ok(absolute)
}

/// The filesystem type of a ferry mount in /proc/mounts, as mount(8) and fstab
/// name it.
pub const FSTYPE: &str = "fuse.ferry";

/// What is mounted on a directory, as /proc/self/mountinfo tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    /// `fuse.ferry` for a ferry mount.
    pub fstype: String,
    /// For a ferry mount, the address it was mounted from.
    pub source: String,
}

/// The topmost mount on `mountpoint` (an absolute path without symlinks), if
/// something is mounted there. Reads only /proc, so a dead mount cannot hang it.
pub fn mounted_at(mountpoint: &Path) -> Option<Mounted> {
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    find_mount(&table, mountpoint.as_os_str().as_bytes())
}

/// The last line of a mountinfo `table` whose mount point is `mountpoint`.
fn find_mount(table: &str, mountpoint: &[u8]) -> Option<Mounted> {
    table.lines().rev().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        if unescape_mountinfo(point) != mountpoint {
            return None;
        }
        let mut right = right.split(' ');
        let fstype = right.next()?.to_string();
        let source = String::from_utf8_lossy(&unescape_mountinfo(right.next()?)).into_owned();
        Some(Mounted { fstype, source })
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` (octal).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// A live mount; unmounted by [`Mount::unmount`] or when dropped.
pub struct Mount {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    core: Core,
}

/// Mounts a ferry filesystem backed by `client` at `mountpoint`. Returns once the
/// kernel has completed its handshake, so the mount is usable at once.
pub fn mount(client: RemoteClient, mountpoint: &Path, opts: &MountOptions) -> io::Result<Mount> {
    let mut config = Config::default();
    config.mount_options = vec![
        // The address as given, as sshfs does: mount(8) compares it with fstab's
        // to know that a line is mounted already.
        MountOption::FSName(fsname(client.addr())),
        // /proc/mounts then says fuse.ferry, as mount(8) and fstab name it. As
        // root fuser calls mount(2) itself, and passes only kernel options to it.
        if is_root() {
            MountOption::CUSTOM("subtype=ferry".into())
        } else {
            MountOption::Subtype("ferry".into())
        },
        // The kernel checks permissions against the remote owners and modes, as
        // it would for a local filesystem.
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    let read_only = opts.fs.read_only || client.welcome().read_only;
    if read_only {
        config.mount_options.push(MountOption::RO);
    }
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let kernel = Arc::new(KernelNotifier::default());
    let slot = kernel.slot();
    let core = Core::new(client, opts.fs.clone(), kernel);
    let session = fuser::spawn_mount(FerryFs::new(core.clone()), mountpoint, &config)?;
    let _ = slot.set(session.notifier());
    if let Some(setting) = readahead_setting(mountpoint) {
        let rtt = core.stats().path_rtt();
        core.read_ahead().attach(setting, rtt);
    }
    Ok(Mount {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
        core,
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What /proc/mounts shows as the mount's source: the address, unless it holds
/// what would break the mount options it travels in.
fn fsname(addr: &str) -> String {
    if addr.contains([',', ' ', '\t', '\n', '\\']) {
        "ferry".to_string()
    } else {
        addr.to_string()
    }
}

/// Where the mount's readahead is set: fuser cannot ask the kernel for more
/// than its 128 KiB offer, but the mount's backing device info can be raised
/// afterwards (as root; see [`crate::windows::KernelReadAhead`]).
fn readahead_setting(mountpoint: &Path) -> Option<PathBuf> {
    let dev = fs::metadata(mountpoint).ok()?.dev();
    Some(PathBuf::from(format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    )))
}

impl Mount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The filesystem core serving the mount (its statistics, its client).
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Whether the kernel still serves this mount (false once someone ran
    /// `fusermount3 -u` on it, or the session failed).
    pub fn is_alive(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Unmounts and waits for the session to end. A busy mount is detached
    /// lazily rather than left behind.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let alive = !session.guard.is_finished();
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(_) if !alive => Ok(()),
            Err(e) => {
                log::warn!(
                    "unmounting {} failed ({e}); detaching it lazily",
                    self.mountpoint.display()
                );
                lazy_unmount(&self.mountpoint)
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_now() {
            log::error!("could not unmount {}: {e}", self.mountpoint.display());
        }
    }
}

/// SIGINT and SIGTERM, caught from the moment this is made (and SIGUSR1,
/// which asks for a report). Make it before mounting: a signal that arrived
/// while mounting would otherwise kill the process with the mount still in
/// place.
pub struct StopSignals {
    runtime: tokio::runtime::Runtime,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn catch() -> io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (int, term, usr1) = {
            let _context = runtime.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::user_defined1())?,
            )
        };
        Ok(StopSignals {
            runtime,
            int,
            term,
            usr1,
        })
    }

    /// Serves `mount` until a stop signal arrives or the mount goes away
    /// (someone ran `fusermount3 -u`), then unmounts it. SIGUSR1 calls
    /// `report` meanwhile.
    pub fn serve(mut self, mount: Mount, report: impl Fn(&Core)) -> io::Result<()> {
        let StopSignals {
            runtime,
            int,
            term,
            usr1,
        } = &mut self;
        runtime.block_on(async {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = usr1.recv() => report(mount.core()),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if !mount.is_alive() { break; }
                    }
                }
            }
        });
        mount.unmount()
    }
}

/// Detaches a mount even while it is busy: `umount2(MNT_DETACH)` as root,
/// `fusermount3 -uz` otherwise.
pub fn lazy_unmount(mountpoint: &Path) -> io::Result<()> {
    let mut c_path = mountpoint.as_os_str().as_bytes().to_vec();
    c_path.push(0);
    // SAFETY: c_path is NUL-terminated and outlives the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr().cast(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(());
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mountpoint)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "fusermount3 -uz {} failed",
            mountpoint.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topmost_mount_on_a_directory_is_found_in_mountinfo() {
        let table = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
98 22 0:50 / /tmp/a\\040b rw,nosuid,nodev - fuse.ferry 127.0.0.1:7070/docs rw,user_id=0
99 98 0:51 / /tmp/a\\040b rw,nosuid,nodev shared:5 - fuse.sshfs me@host:/x rw
100 1 0:52 / /mnt/data rw - fuse.ferry server:7070 rw
";
        assert_eq!(
            find_mount(table, b"/tmp/a b"),
            Some(Mounted {
                fstype: "fuse.sshfs".into(),
                source: "me@host:/x".into()
            })
        );
        assert_eq!(
            find_mount(table, b"/mnt/data").unwrap().source,
            "server:7070"
        );
        assert_eq!(find_mount(table, b"/mnt"), None);
        assert_eq!(unescape_mountinfo("a\\134b\\011"), b"a\\b\t");
    }

    #[test]
    fn the_source_is_the_address_as_given() {
        assert_eq!(fsname("server:7070/docs:/sub"), "server:7070/docs:/sub");
        assert_eq!(fsname("server:/a,b"), "ferry");
    }
}
