//! `ferry mount` (and the mount helper, which ends up here): the foreground
//! mount, and `--daemon`, which returns once a background copy has the mount live.

use crate::args::MountArgs;
use ferry_fusefs::client::ConnectOptions;
use ferry_fusefs::mount::{self, MountOptions, StopSignals};
use ferry_fusefs::status::StatusServer;
use ferry_fusefs::{FsOptions, RemoteClient};
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Set in the environment of the background child that `mount --daemon` starts.
const DAEMON_CHILD_ENV: &str = "FERRY_DAEMON_CHILD";

/// Runs `ferry mount` as `args` say. With `fake`, checks everything a mount
/// needs (the address, the mountpoint, the server) and mounts nothing.
pub fn run(args: &MountArgs, fake: bool) -> Result<(), String> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(format!(
            "--timeout must be a positive number of seconds, not {}",
            args.timeout
        ));
    }
    if !(args.attr_timeout.is_finite() && args.attr_timeout >= 0.0) {
        return Err(format!(
            "--attr-timeout must be a number of seconds, not {}",
            args.attr_timeout
        ));
    }
    let opts = MountOptions {
        fs: FsOptions {
            attr_timeout: Duration::from_secs_f64(args.attr_timeout),
            lease: Duration::from_secs(args.lease),
            read_only: args.read_only,
            ..FsOptions::default()
        },
        threads: args.threads,
        allow_other: args.allow_other,
    };
    let connect = args.client.options(Duration::from_secs_f64(args.timeout))?;
    if fake {
        mount::check_mountpoint(&args.mountpoint)?;
        RemoteClient::connect(&args.addr, &connect)
            .map_err(|e| e.to_string())?
            .shutdown();
        return Ok(());
    }
    if args.daemon && std::env::var_os(DAEMON_CHILD_ENV).is_none() {
        return daemonize(args);
    }
    mount_foreground(&args.addr, &args.mountpoint, &opts, &connect)
}

fn mount_foreground(
    addr: &str,
    mountpoint: &Path,
    opts: &MountOptions,
    connect: &ConnectOptions,
) -> Result<(), String> {
    let mountpoint = mount::check_mountpoint(mountpoint)?;
    limit_malloc_arenas();
    let client = RemoteClient::connect(addr, connect).map_err(|e| e.to_string())?;
    let signals = StopSignals::catch().map_err(|e| format!("cannot catch signals: {e}"))?;
    let mounted =
        mount::mount(client, &mountpoint, opts).map_err(|e| mount_error(&mountpoint, e))?;
    let core = mounted.core().clone();
    // Before saying the mount is ready, so that `ferry status` works at once.
    let status = match StatusServer::start(core.clone(), &mountpoint) {
        Ok(status) => Some(status),
        Err(e) => {
            log::warn!("`ferry status` will not work for this mount: {e}");
            None
        }
    };
    if std::env::var_os(DAEMON_CHILD_ENV).is_some() {
        detach_from_parent();
    } else {
        eprintln!(
            "ferry: mounted {addr} at {} — Ctrl-C or `fusermount3 -u {}` to unmount",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let stats = std::env::var_os("FERRY_STATS").is_some();
    let served = signals
        .serve(mounted, |core| {
            if stats {
                print_stats(core, "so far")
            }
        })
        .map_err(|e| format!("unmounting {}: {e}", mountpoint.display()));
    drop(status);
    if stats {
        print_stats(&core, "");
    }
    served
}

/// `FERRY_STATS`: the requests sent to the server and waited for, by
/// operation — at unmount, and (`when` = "so far") on SIGUSR1.
fn print_stats(core: &ferry_fusefs::Core, when: &str) {
    let line = |counts: Vec<(&str, u64)>| {
        let counts: Vec<String> = counts.iter().map(|(op, n)| format!("{op} {n}")).collect();
        counts.join(", ")
    };
    let when = if when.is_empty() {
        String::new()
    } else {
        format!(" {when}")
    };
    eprintln!(
        "ferry: requests sent to the server{when}: {}",
        line(core.stats().sent_by_kind())
    );
    eprintln!(
        "ferry: requests waited for{when}: {}",
        line(core.stats().waited_by_kind())
    );
}

/// A mount lives long and its memory should follow the inodes the kernel
/// holds. glibc gives threads that meet contention arenas of their own (up to
/// eight per core), each keeping the peak of what its threads once held; the
/// mount's FUSE workers, reader and notifier would spread their memory over
/// many. Two arenas keep its resident memory close to its working set; the
/// small allocations of a request come from each thread's own cache anyway.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator settings; it takes plain integers.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
}

pub fn mount_error(mountpoint: &Path, e: io::Error) -> String {
    // SAFETY: geteuid and access have no preconditions; the path is NUL-terminated.
    let root = unsafe { libc::geteuid() } == 0;
    let dev_fuse_usable =
        unsafe { libc::access(c"/dev/fuse".as_ptr(), libc::R_OK | libc::W_OK) } == 0;
    let hint = if !Path::new("/dev/fuse").exists() {
        " — this machine has no /dev/fuse: load the fuse module (modprobe fuse)".to_string()
    } else if !root && !dev_fuse_usable {
        " — /dev/fuse is not readable and writable by you; Debian's default is mode 0666 \
         (as root: chmod 666 /dev/fuse), and non-root mounts also need fusermount3 (apt-get install fuse3)"
            .to_string()
    } else if !root && e.kind() == io::ErrorKind::NotFound {
        " — non-root mounts need fusermount3: apt-get install fuse3".to_string()
    } else if !root {
        " — check that you own the mountpoint and that fusermount3 is installed (apt-get install fuse3)"
            .to_string()
    } else {
        String::new()
    };
    format!("cannot mount at {}: {e}{hint}", mountpoint.display())
}

/// The `ferry mount` command line that mounts as `args` say, in the foreground.
fn foreground_args(args: &MountArgs) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![
        "mount".into(),
        "--attr-timeout".into(),
        args.attr_timeout.to_string().into(),
        "--lease".into(),
        args.lease.to_string().into(),
        "--timeout".into(),
        args.timeout.to_string().into(),
        "--threads".into(),
        args.threads.to_string().into(),
    ];
    if args.read_only {
        argv.push("--read-only".into());
    }
    if args.allow_other {
        argv.push("--allow-other".into());
    }
    // Credentials travel as file paths, as they came.
    let client = &args.client;
    if let Some(dir) = &client.state_dir {
        argv.push("--state-dir".into());
        argv.push(dir.clone().into());
    }
    if let Some(pin) = &client.pin {
        argv.push("--pin".into());
        argv.push(pin.clone().into());
    }
    if let Some(file) = &client.token_file {
        argv.push("--token-file".into());
        argv.push(file.clone().into());
    }
    if client.insecure {
        argv.push("--insecure".into());
    }
    argv.push("--".into());
    argv.push(args.addr.clone().into());
    argv.push(args.mountpoint.clone().into());
    argv
}

/// `mount --daemon`: starts the same mount again in the background and returns
/// once the child reports the mount ready (or fails, with its message).
fn daemonize(args: &MountArgs) -> Result<(), String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the ferry executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(foreground_args(args))
        .env(DAEMON_CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal
    // session so that closing the terminal does not kill the mount.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the background mount: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() == "ready" {
        println!("ferry: mounted in the background (pid {})", child.id());
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = child.wait();
    let err = err.trim().trim_start_matches("ferry: ").to_string();
    Err(if err.is_empty() {
        "the background mount exited without mounting".into()
    } else {
        err
    })
}

/// In the daemon child: tell the parent the mount is ready, then let go of the
/// pipes it reads (later output goes nowhere rather than to a closed pipe).
fn detach_from_parent() {
    println!("ready");
    // SAFETY: plain fd calls; /dev/null is opened and duplicated over stdout/stderr.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Cmd};
    use clap::Parser;

    #[test]
    fn the_background_child_mounts_exactly_what_was_asked() {
        let cli = Cli::try_parse_from([
            "ferry",
            "mount",
            "--daemon",
            "--read-only",
            "--attr-timeout",
            "2.5",
            "--threads",
            "3",
            "server:7070/docs:/sub",
            "/mnt/x",
        ])
        .unwrap();
        let Cmd::Mount(asked) = cli.command else {
            panic!("not a mount")
        };
        let child_args = std::iter::once(OsString::from("ferry")).chain(foreground_args(&asked));
        let Cmd::Mount(child) = Cli::try_parse_from(child_args).unwrap().command else {
            panic!("not a mount")
        };
        assert_eq!(
            child,
            MountArgs {
                daemon: false,
                ..asked
            }
        );
    }
}
