//! `ferry serve`: the export server in the foreground until SIGINT or SIGTERM,
//! and its `--metrics` endpoint beside it.

use crate::args::ServeArgs;
use crate::keygen::state_dir_or_default;
use ferry_server::{IdentityMap, Security, Server, ServerConfig, Squash, TlsServer};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the server's runtime: {e}"))
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    let listen: SocketAddr = args.listen.parse().map_err(|_| {
        format!(
            "--listen takes IP:PORT (like 127.0.0.1:7070), not {:?}",
            args.listen
        )
    })?;
    if !(args.idle_timeout.is_finite() && args.idle_timeout > 0.0) {
        return Err(format!(
            "--idle-timeout must be a positive number of seconds, not {}",
            args.idle_timeout
        ));
    }
    if !(args.grace_period.is_finite() && args.grace_period >= 0.0) {
        return Err(format!(
            "--grace-period must be a number of seconds, 0 or more, not {}",
            args.grace_period
        ));
    }
    // A thread per connection, and the blocking pool's: without a limit glibc
    // gives contended threads arenas of their own, each keeping its peak.
    ferry_server::limit_malloc_arenas(MALLOC_ARENAS);
    ferry_server::keep_request_buffers();
    let security = server_security(&args, listen)?;
    let lock_record = lock_record(&args, listen);
    let squash = match (args.no_root_squash, args.all_squash) {
        (true, _) => Squash::None,
        (_, true) => Squash::All,
        _ => Squash::Root,
    };
    let identities = IdentityMap {
        squash,
        anon_uid: args.anon_uid,
        anon_gid: args.anon_gid,
    };
    let rt = runtime()?;
    rt.block_on(async {
        let server = Server::bind(ServerConfig {
            root: args.dir.clone(),
            exports: args.exports.clone(),
            listen,
            read_only: args.read_only,
            max_connections: args.max_connections,
            max_per_address: args.max_per_address,
            idle_timeout: Duration::from_secs_f64(args.idle_timeout),
            security: security.clone(),
            identities,
            allow_devices: args.allow_devices,
            grace: Duration::from_secs_f64(args.grace_period),
            lock_record,
            reply_memory: ferry_server::DEFAULT_REPLY_MEMORY,
            max_descriptors: None,
        })
        .await
        .map_err(|e| e.to_string())?;
        // Beside the one line on stdout, which scripts read (and may stop reading).
        let _ = writeln!(
            io::stderr(),
            "ferry: {}",
            identity_note(server.acts_as_clients(), &identities)
        );
        let addr = server.local_addr();
        let shown = |dir: &std::path::Path| {
            std::fs::canonicalize(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .display()
                .to_string()
        };
        let mut what: Vec<String> = args.dir.iter().map(|d| shown(d)).collect();
        what.extend(
            args.exports
                .iter()
                .map(|(name, dir)| format!("{} as {name}", shown(dir))),
        );
        let what = what.join(", ");
        let metrics = match args.metrics {
            Some(at) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .map_err(|e| format!("--metrics: cannot listen on {at}: {e}"))?;
                let at = listener.local_addr().map_err(|e| e.to_string())?;
                tokio::spawn(ferry_server::serve_metrics(
                    listener,
                    server.metrics(),
                    std::future::pending(),
                ));
                format!("; metrics on http://{at}/metrics")
            }
            None => String::new(),
        };
        // Whoever started the server may stop reading its output (a script
        // that wanted the address): that must not stop the server.
        let say = |line: String| {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        };
        say(format!(
            "ferry: exporting {what} on {addr}{}{metrics}",
            if args.read_only { " (read-only)" } else { "" }
        ));
        if let Security::Tls(tls) = &security {
            say(format!(
                "ferry: server certificate {} (clients record it on first contact, or take it \
                 with --pin)",
                tls.fingerprint()
            ));
            for (export, token) in tls.token_paths() {
                say(format!(
                    "ferry: clients of {} authenticate with the access token in {} (copy it to \
                     them: --token-file FILE) or a client certificate listed in {}",
                    export.map_or("the default export".to_string(), |n| format!("export {n}")),
                    token.display(),
                    tls.authorized_clients_path().display()
                ));
            }
        }
        server
            .run(shutdown_signal())
            .await
            .map_err(|e| format!("server failed: {e}"))
    })
}

/// How many malloc arenas the server's threads share.
const MALLOC_ARENAS: i32 = 4;

/// The file in the state directory that records the clients holding locks
/// (see `ferry_common::state::lock_record`); `None`, with a warning, when
/// there is no state directory to keep it in.
fn lock_record(args: &ServeArgs, listen: SocketAddr) -> Option<PathBuf> {
    if args.grace_period == 0.0 {
        return None;
    }
    let dir = match state_dir_or_default(args.state_dir.clone()) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!(
                "ferry: {e}; without a record of clients holding locks, every start waits \
                 the whole grace period for them"
            );
            return None;
        }
    };
    if let Err(e) = ferry_common::state::ensure_dir(&dir) {
        eprintln!("ferry: {e}; every start waits the whole grace period for lock holders");
        return None;
    }
    Some(dir.join(ferry_common::state::lock_record(listen)))
}

/// TLS with the identity and each export's token in the state directory (made
/// on first start), or `--insecure` where it is allowed.
fn server_security(args: &ServeArgs, listen: SocketAddr) -> Result<Security, String> {
    let mut exports: Vec<(Option<String>, PathBuf)> =
        args.dir.iter().map(|d| (None, d.clone())).collect();
    exports.extend(
        args.exports
            .iter()
            .map(|(name, dir)| (Some(name.clone()), dir.clone())),
    );
    let shown: Vec<String> = exports
        .iter()
        .map(|(_, d)| d.display().to_string())
        .collect();
    if args.insecure {
        if !listen.ip().is_loopback() && !args.allow_insecure_network {
            return Err(format!(
                "--insecure on {listen} would let anyone who can reach that address read and \
                 change {} with no credentials and no encryption; listen on 127.0.0.1, or, if \
                 every machine on that network is trusted, add --allow-insecure-network",
                shown.join(", ")
            ));
        }
        eprintln!(
            "ferry: WARNING: --insecure: no TLS and no authentication; anyone who can reach \
             {listen} can read and change {}",
            shown.join(", ")
        );
        return Ok(Security::Insecure);
    }
    let state = state_dir_or_default(args.state_dir.clone())?;
    let tls = TlsServer::open_exports(&state, &exports)?;
    for made in tls.made() {
        eprintln!("ferry: {made}");
    }
    Ok(Security::Tls(Arc::new(tls)))
}

/// Whose permissions the server's clients get, in one line for the operator.
fn identity_note(acts_as_clients: bool, identities: &IdentityMap) -> String {
    let anon = format!("{}:{}", identities.anon_uid, identities.anon_gid);
    if !acts_as_clients {
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        return format!(
            "not running as root, so every client acts as uid {me}: what clients create \
             belongs to it, and clients reach what it can"
        );
    }
    match identities.squash {
        Squash::Root => format!(
            "clients act as their own users; root on a client acts as {anon} \
             (--no-root-squash to let it be root)"
        ),
        Squash::All => format!("every client user acts as {anon} (--all-squash)"),
        Squash::None => {
            "clients act as their own users, and root on a client is root here (--no-root-squash)"
                .to_string()
        }
    }
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
