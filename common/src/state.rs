//! Where ferry keeps its identities and trust decisions: one state directory
//! per user (per machine, for root), never inside an export.
//!
//! | file | side | what |
//! |---|---|---|
//! | `server.crt`, `server.key` | server | its identity, made on first start |
//! | `tokens/NAME-HASH.token` | server | one export's access token, made on first start |
//! | `authorized_clients` | server | client certificate fingerprints let in, one a line |
//! | `client.crt`, `client.key` | client | its identity, made by `ferry keygen` |
//! | `known_servers` | client | `ADDRESS SHA256:…`, one a line: the servers met before |
//! | `lock-clients-IP-PORT` | server | the clients that may hold locks of the server listening there (see [`lock_record`]) |

use std::path::PathBuf;

pub const SERVER_IDENTITY: &str = "server";
pub const CLIENT_IDENTITY: &str = "client";
pub const AUTHORIZED_CLIENTS: &str = "authorized_clients";
pub const KNOWN_SERVERS: &str = "known_servers";
pub const TOKENS: &str = "tokens";
/// The file, in the state directory, where the server listening on `listen`
/// records the clients that may hold its locks, one id a line: after a restart
/// its grace period waits for those clients to reclaim them, and for no one
/// when there are none.
pub fn lock_record(listen: std::net::SocketAddr) -> String {
    let ip = listen.ip().to_string().replace(':', "_");
    format!("lock-clients-{ip}-{}", listen.port())
}

/// The environment variable a client reads an access token from.
pub const TOKEN_ENV: &str = "FERRY_TOKEN";

/// The state directory when none is given: `/var/lib/ferry` for root,
/// `$XDG_STATE_HOME/ferry` or `~/.local/state/ferry` for anyone else.
/// `None` when neither `XDG_STATE_HOME` nor `HOME` says where that is.
pub fn default_dir() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/var/lib/ferry"));
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").and_then(absolute) {
        return Some(state.join("ferry"));
    }
    std::env::var_os("HOME")
        .and_then(absolute)
        .map(|home| home.join(".local/state/ferry"))
}

/// Creates `dir` (and its parents) if missing; a new state directory is
/// readable by its owner only.
pub fn ensure_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot create the state directory {}: {e}", dir.display()),
            )
        })
}
