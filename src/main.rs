//! `ferry`: the command line. Thin by design: it parses arguments, sets up
//! logging, and calls into `ferry-server` and `ferry-fusefs`.

use clap::{Parser, Subcommand};
use ferry_fusefs::cli;
use ferry_fusefs::mount::{self, MountOptions, StopSignals};
use ferry_fusefs::{FsOptions, RemoteClient};
use ferry_server::{Server, ServerConfig};
use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

/// Set in the environment of the background child that `mount --daemon` starts.
const DAEMON_CHILD_ENV: &str = "FERRY_DAEMON_CHILD";

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Export a directory over the network and mount it elsewhere as an ordinary folder"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Export DIR to ferry clients.
    Serve {
        /// The directory to export.
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
        /// Refuse every change (clients get EROFS).
        #[arg(long)]
        read_only: bool,
        /// Most clients connected at once.
        #[arg(long, default_value_t = ferry_server::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
    },
    /// Mount an export at MOUNTPOINT (stays in the foreground until unmounted or signalled).
    Mount {
        /// Server address, HOST:PORT.
        addr: String,
        /// An existing, empty directory.
        mountpoint: PathBuf,
        /// Go to the background once the mount is ready.
        #[arg(long)]
        daemon: bool,
        /// Seconds the kernel may cache attributes and names.
        #[arg(long, default_value_t = 1.0)]
        attr_timeout: f64,
        /// Mount read-only.
        #[arg(long)]
        read_only: bool,
        /// Let other users use the mount (allow_other; needs user_allow_other in /etc/fuse.conf unless root).
        #[arg(long)]
        allow_other: bool,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Seconds a request may wait for the server before failing with ETIMEDOUT (fsync: ten times that).
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// List a remote directory, like `ls -l`.
    Ls {
        addr: String,
        #[arg(default_value = ".")]
        path: String,
    },
    /// Download a remote file (to ./BASENAME by default).
    Get {
        addr: String,
        remote: String,
        local: Option<PathBuf>,
    },
    /// Upload a file; the remote file appears whole or not at all.
    Put {
        addr: String,
        local: PathBuf,
        remote: Option<String>,
    },
    /// Try ferry at once: export DIR/export and mount it at DIR/mnt, in one process.
    Demo {
        #[arg(default_value = "ferry-demo")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ferry: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Serve {
            dir,
            listen,
            read_only,
            max_connections,
        } => serve(dir, &listen, read_only, max_connections),
        Cmd::Mount {
            addr,
            mountpoint,
            daemon,
            attr_timeout,
            read_only,
            allow_other,
            threads,
            timeout,
        } => {
            if !(timeout.is_finite() && timeout > 0.0) {
                return Err(format!(
                    "--timeout must be a positive number of seconds, not {timeout}"
                ));
            }
            if !(attr_timeout.is_finite() && attr_timeout >= 0.0) {
                return Err(format!(
                    "--attr-timeout must be a number of seconds, not {attr_timeout}"
                ));
            }
            let opts = MountOptions {
                fs: FsOptions {
                    attr_timeout: Duration::from_secs_f64(attr_timeout),
                    read_only,
                    ..FsOptions::default()
                },
                threads,
                allow_other,
            };
            if daemon && std::env::var_os(DAEMON_CHILD_ENV).is_none() {
                return daemonize();
            }
            mount_foreground(&addr, &mountpoint, &opts, Duration::from_secs_f64(timeout))
        }
        Cmd::Ls { addr, path } => {
            cli::ls(&addr, &path, &mut io::stdout().lock()).map_err(|e| e.to_string())
        }
        Cmd::Get {
            addr,
            remote,
            local,
        } => cli::get(&addr, &remote, local.as_deref())
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Cmd::Put {
            addr,
            local,
            remote,
        } => cli::put(&addr, &local, remote.as_deref())
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Cmd::Demo { dir } => demo(&dir),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the server's runtime: {e}"))
}

fn serve(
    dir: PathBuf,
    listen: &str,
    read_only: bool,
    max_connections: usize,
) -> Result<(), String> {
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| format!("--listen takes IP:PORT (like 127.0.0.1:7070), not {listen:?}"))?;
    let rt = runtime()?;
    rt.block_on(async {
        let server = Server::bind(ServerConfig {
            root: dir.clone(),
            listen,
            read_only,
            max_connections,
        })
        .await
        .map_err(|e| e.to_string())?;
        let shown = std::fs::canonicalize(&dir).unwrap_or(dir);
        if !server.local_addr().ip().is_loopback() {
            log::warn!(
                "listening on {} without authentication or encryption: anyone who can reach \
                 this port can read{} {}",
                server.local_addr(),
                if read_only { "" } else { " and change" },
                shown.display()
            );
        }
        println!(
            "ferry: exporting {} on {}{}",
            shown.display(),
            server.local_addr(),
            if read_only { " (read-only)" } else { "" }
        );
        server
            .run(shutdown_signal())
            .await
            .map_err(|e| format!("server failed: {e}"))
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
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

fn mount_foreground(
    addr: &str,
    mountpoint: &Path,
    opts: &MountOptions,
    timeout: Duration,
) -> Result<(), String> {
    let mountpoint = mount::check_mountpoint(mountpoint)?;
    limit_malloc_arenas();
    let client = RemoteClient::connect_with_timeout(addr, timeout).map_err(|e| e.to_string())?;
    let signals = StopSignals::catch().map_err(|e| format!("cannot catch signals: {e}"))?;
    let mounted =
        mount::mount(client, &mountpoint, opts).map_err(|e| mount_error(&mountpoint, e))?;
    let core = mounted.core().clone();
    if std::env::var_os(DAEMON_CHILD_ENV).is_some() {
        detach_from_parent();
    } else {
        eprintln!(
            "ferry: mounted {addr} at {} — Ctrl-C or `fusermount3 -u {}` to unmount",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let served = signals
        .serve(mounted)
        .map_err(|e| format!("unmounting {}: {e}", mountpoint.display()));
    if std::env::var_os("FERRY_STATS").is_some() {
        let line = |counts: Vec<(&str, u64)>| {
            let counts: Vec<String> = counts.iter().map(|(op, n)| format!("{op} {n}")).collect();
            counts.join(", ")
        };
        eprintln!(
            "ferry: requests sent to the server: {}",
            line(core.client().sent())
        );
        eprintln!(
            "ferry: requests waited for: {}",
            line(core.stats().waited())
        );
    }
    served
}

fn mount_error(mountpoint: &Path, e: io::Error) -> String {
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

/// `mount --daemon`: starts this same command again in the background and
/// returns once the child reports the mount ready (or fails, with its message).
fn daemonize() -> Result<(), String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the ferry executable: {e}"))?;
    let args: Vec<_> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    let mut cmd = Command::new(exe);
    cmd.args(args)
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

/// `ferry demo`: an export with a sample file, served on a free loopback port and
/// mounted, all in this process, until Ctrl-C.
fn demo(base: &Path) -> Result<(), String> {
    let export = base.join("export");
    let mnt = base.join("mnt");
    for d in [&export, &mnt] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let hello = export.join("hello.txt");
    if !hello.exists() {
        std::fs::write(
            &hello,
            "Hello from ferry! This file lives in the exported directory.\n",
        )
        .map_err(|e| format!("cannot write {}: {e}", hello.display()))?;
    }
    let mountpoint = mount::check_mountpoint(&mnt)?;
    let rt = runtime()?;
    let server = rt
        .block_on(Server::bind(ServerConfig {
            root: export.clone(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            read_only: false,
            max_connections: 64,
        }))
        .map_err(|e| e.to_string())?;
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let result = (|| {
        let client = RemoteClient::connect(&addr.to_string()).map_err(|e| e.to_string())?;
        let signals = StopSignals::catch().map_err(|e| format!("cannot catch signals: {e}"))?;
        let mounted = mount::mount(client, &mountpoint, &MountOptions::default())
            .map_err(|e| mount_error(&mountpoint, e))?;
        println!(
            "ferry demo: {} is exported on {addr} and mounted at {}",
            export.display(),
            mountpoint.display()
        );
        println!(
            "  try:  ls -l {0}   cat {0}/hello.txt   cp -r /usr/include/linux {0}/",
            mountpoint.display()
        );
        println!("  from another terminal: ferry ls {addr}");
        println!("Press Ctrl-C to unmount and stop.");
        signals
            .serve(mounted)
            .map_err(|e| format!("unmounting {}: {e}", mountpoint.display()))
    })();
    let _ = stop_tx.send(());
    let _ = rt.block_on(serving);
    result
}
