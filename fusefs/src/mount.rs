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

/// The readahead, in KiB, that lets sequential reads use 1 MiB requests.
const READ_AHEAD_KB: u32 = 1024;

/// Checks that `path` is an existing, empty directory and returns it made absolute.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            format!("{shown} does not exist — create it with `mkdir -p {shown}`")
        }
        _ => format!("cannot use {shown} as a mountpoint: {e}"),
    })?;
    if !meta.is_dir() {
        return Err(format!("{shown} is not a directory"));
    }
    let mut entries = fs::read_dir(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if entries.next().is_some() {
        return Err(format!("{shown} is not an empty directory"));
    }
    fs::canonicalize(path).map_err(|e| format!("cannot resolve {shown}: {e}"))
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
        MountOption::FSName(format!("ferry:{}", client.addr())),
        MountOption::Subtype("ferry".into()),
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
    raise_readahead(mountpoint);
    Ok(Mount {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
        core,
    })
}

/// fuser cannot ask the kernel for more than its 128 KiB readahead offer, but the
/// mount's backing device info can be raised afterwards (as root).
fn raise_readahead(mountpoint: &Path) {
    let Ok(meta) = fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = fs::write(&path, READ_AHEAD_KB.to_string()) {
        log::debug!("cannot raise readahead through {path}: {e}");
    }
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
