//! The command line, as clap parses it. The man pages and shell completions are
//! generated from these same definitions (`ferry generate`).

use clap::{Args, Parser, Subcommand};
use ferry_fusefs::client::{ClientFlags, ConnectOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const ADDRESS_HELP: &str = "\
ADDRESS is HOST[:PORT][/EXPORT][:/DIR]: the port defaults to 7070; /EXPORT names one of the \
server's exports (ferry serve --export NAME=DIR), the default export without it; :/DIR serves a \
directory inside the export as the root. Examples: server, server:7071, server:7070/docs, \
server:7070:/projects/a, [fd00::5]:7070/docs:/manuals.";

const FSTAB_HELP: &str = "\
mount(8) and /etc/fstab run ferry as mount.fuse.ferry (a link to this program):

    server:7070 /mnt/data fuse.ferry _netdev,nofail,x-systemd.automount,token_file=/etc/ferry/data.token 0 0

Mount options: ro (--read-only), allow_other, attr_timeout=SECS, lease=SECS, timeout=SECS, threads=N, \
token_file=FILE, pin=SHA256:..., state_dir=DIR, insecure; \
_netdev, nofail, auto, noauto, user, users, defaults, dev, suid, rw, nodev, nosuid and x-* are \
accepted and left to mount(8) and systemd. The mount goes to the background once it is live.";

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Export a directory over the network and mount it elsewhere as an ordinary folder"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// How a client checks the server and proves who it is. Secrets are never
/// given on the command line: only paths to files (or the environment).
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct ClientArgs {
    /// Where the client keeps known_servers and its identity (default:
    /// ~/.local/state/ferry, or /var/lib/ferry as root).
    #[arg(long, value_name = "DIR", env = "FERRY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Accept only the server whose certificate has this fingerprint (as `ferry serve` prints it).
    #[arg(long, value_name = "SHA256:…")]
    pub pin: Option<String>,
    /// A file holding the export's access token (or set FERRY_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// No TLS, no authentication: only for a server run with --insecure.
    #[arg(long)]
    pub insecure: bool,
}

impl ClientArgs {
    /// How to connect, with requests failing after `timeout`.
    pub fn options(&self, timeout: Duration) -> Result<ConnectOptions, String> {
        let flags = ClientFlags {
            state_dir: self.state_dir.clone(),
            pin: self.pin.clone(),
            token_file: self.token_file.clone(),
            insecure: self.insecure,
        };
        if self.insecure {
            eprintln!(
                "ferry: warning: --insecure: nothing is encrypted and the server is not checked"
            );
        }
        ConnectOptions::from_flags(&flags, timeout)
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Export directories to ferry clients.
    #[command(after_help = "Every option can also be set in the environment \
        (FERRY_LISTEN, FERRY_READ_ONLY, FERRY_MAX_CONNECTIONS, FERRY_METRICS), as the \
        ferry-serve@.service unit does.")]
    Serve(ServeArgs),
    /// Make this client's identity (a key and certificate) for servers that
    /// authorize clients by certificate, and print its fingerprint.
    Keygen {
        /// Where to keep it (default: ~/.local/state/ferry, or /var/lib/ferry as root).
        #[arg(long, value_name = "DIR", env = "FERRY_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Mount an export at MOUNTPOINT (stays in the foreground until unmounted or signalled).
    #[command(after_help = ADDRESS_HELP, after_long_help = format!("{ADDRESS_HELP}\n\n{FSTAB_HELP}"))]
    Mount(MountArgs),
    /// Show a mount's state: server, connection, round trips, requests, bytes, caches.
    Status {
        /// Where a ferry mount is mounted.
        mountpoint: PathBuf,
    },
    /// List a remote directory, like `ls -l`.
    #[command(after_help = ADDRESS_HELP)]
    Ls {
        /// The server (and export, and directory in it): HOST[:PORT][/EXPORT][:/DIR].
        #[arg(value_name = "ADDRESS")]
        addr: String,
        /// The directory or file to list, relative to the export.
        #[arg(default_value = ".")]
        path: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Download a remote file (to ./BASENAME by default).
    #[command(after_help = ADDRESS_HELP)]
    Get {
        /// The server (and export, and directory in it): HOST[:PORT][/EXPORT][:/DIR].
        #[arg(value_name = "ADDRESS")]
        addr: String,
        /// The file to download, relative to the export.
        remote: String,
        /// Where to write it: a file name, or an existing directory to put it in
        /// (a trailing `/` says it must be one). Default: the current directory.
        local: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Upload a file; the remote file appears whole or not at all.
    #[command(after_help = ADDRESS_HELP)]
    Put {
        /// The server (and export, and directory in it): HOST[:PORT][/EXPORT][:/DIR].
        #[arg(value_name = "ADDRESS")]
        addr: String,
        /// The local file to upload.
        local: PathBuf,
        /// Where to put it, relative to the export: a file name, or an existing
        /// directory (a trailing `/` says it must be one). Default: the export's root.
        remote: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Try ferry at once: export DIR/export and mount it at DIR/mnt, in one process.
    Demo {
        /// Where to make the export and the mountpoint.
        #[arg(default_value = "ferry-demo")]
        dir: PathBuf,
    },
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        /// The directory to write man/ and completions/ into.
        out: PathBuf,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// The default export: what clients get when they name none (HOST:PORT).
    pub dir: Option<PathBuf>,
    /// A named export, reached as HOST:PORT/NAME; may be given several times.
    #[arg(long = "export", value_name = "NAME=DIR", value_parser = parse_export)]
    pub exports: Vec<(String, PathBuf)>,
    /// Address to listen on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Refuse every change (clients get EROFS).
    #[arg(long, env = "FERRY_READ_ONLY")]
    pub read_only: bool,
    /// Most clients connected at once.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = ferry_server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Serve the server's counters for Prometheus at http://ADDR/metrics.
    #[arg(long, env = "FERRY_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Let root on a client be root here (by default it acts as the anonymous user).
    #[arg(long, env = "FERRY_NO_ROOT_SQUASH", conflicts_with = "all_squash")]
    pub no_root_squash: bool,
    /// Every client user acts as the anonymous user.
    #[arg(long, env = "FERRY_ALL_SQUASH")]
    pub all_squash: bool,
    /// The anonymous user's id.
    #[arg(long, env = "FERRY_ANON_UID", default_value_t = ferry_server::DEFAULT_ANON_ID)]
    pub anon_uid: u32,
    /// The anonymous group's id.
    #[arg(long, env = "FERRY_ANON_GID", default_value_t = ferry_server::DEFAULT_ANON_ID)]
    pub anon_gid: u32,
    /// Let clients make device nodes (only a client's root, with --no-root-squash, can).
    #[arg(long, env = "FERRY_ALLOW_DEVICES")]
    pub allow_devices: bool,
    /// Most connections from one IP address at once.
    #[arg(long, env = "FERRY_MAX_PER_ADDRESS", default_value_t = ferry_server::DEFAULT_MAX_PER_ADDRESS)]
    pub max_per_address: usize,
    /// Seconds a connection holding no open file or lock may stay idle.
    #[arg(long, env = "FERRY_IDLE_TIMEOUT", default_value_t = ferry_server::DEFAULT_IDLE_TIMEOUT.as_secs_f64())]
    pub idle_timeout: f64,
    /// Seconds after a start during which clients reclaim the locks they held
    /// (no new lock is granted meanwhile; ends early once every client that
    /// held locks is back), and for which the locks of a client whose
    /// connection ended are kept for it. 0: locks end with their connection.
    #[arg(long, env = "FERRY_GRACE_PERIOD", default_value_t = ferry_server::DEFAULT_GRACE.as_secs_f64())]
    pub grace_period: f64,
    /// Where the server keeps its key, certificate, access tokens,
    /// authorized_clients and its record of clients holding locks (default:
    /// ~/.local/state/ferry, or /var/lib/ferry as root); never inside an export.
    #[arg(long, value_name = "DIR", env = "FERRY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// No TLS and no authentication: anyone who reaches the port gets in.
    #[arg(long, env = "FERRY_INSECURE")]
    pub insecure: bool,
    /// With --insecure, listen on an address other than loopback anyway.
    #[arg(long, requires = "insecure")]
    pub allow_insecure_network: bool,
}

#[derive(Args, Clone, Debug, PartialEq)]
pub struct MountArgs {
    /// The server (and export, and directory in it): HOST[:PORT][/EXPORT][:/DIR].
    #[arg(value_name = "ADDRESS")]
    pub addr: String,
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    /// Go to the background once the mount is ready.
    #[arg(long)]
    pub daemon: bool,
    /// Seconds the kernel may cache attributes and names when the server
    /// does not tell this mount of changes (see --lease).
    #[arg(long, default_value_t = 1.0)]
    pub attr_timeout: f64,
    /// Seconds caches live while the server tells this mount of every change
    /// (0: never ask it to; then everything lives --attr-timeout).
    #[arg(long, default_value_t = ferry_fusefs::core::DEFAULT_LEASE.as_secs())]
    pub lease: u64,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Let other users use the mount (allow_other; needs user_allow_other in /etc/fuse.conf unless root).
    #[arg(long)]
    pub allow_other: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Seconds a request may wait for the server before failing with ETIMEDOUT (fsync: ten times that).
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `NAME=DIR`, as `--export` takes it.
fn parse_export(text: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = text
        .split_once('=')
        .ok_or_else(|| format!("--export takes NAME=DIR (like docs=/srv/docs), not {text:?}"))?;
    ferry_common::address::check_export_name(name)?;
    if dir.is_empty() {
        return Err(format!("--export {name}= names no directory"));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exports_are_name_equals_dir() {
        assert_eq!(
            parse_export("docs=/srv/docs").unwrap(),
            ("docs".to_string(), PathBuf::from("/srv/docs"))
        );
        assert!(parse_export("docs").unwrap_err().contains("NAME=DIR"));
        assert!(parse_export("a b=/x").is_err());
        assert!(parse_export("docs=").is_err());
    }
}
