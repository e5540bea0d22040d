//! `ferry demo`: an export with a sample file, served on a free loopback port and
//! mounted, all in this process, until Ctrl-C.
//!
//! Run by root, the demo shares its directory anonymously (`--all-squash`):
//! every user of the mount, root included, acts as `nobody`, who is given the
//! demo's export directory and sample file. (Letting a client's root be root
//! would let any local user who reaches the port be root on this machine.) Run
//! by anyone else, everything acts as, and belongs to, that user.
//!
//! TLS and authentication are on, as always: the server's identity and the
//! export's token live in DIR/state, and the mount pins the server and uses
//! the token itself.

use crate::mounting::mount_error;
use crate::serve::runtime;
use ferry_fusefs::client::ConnectOptions;
use ferry_fusefs::mount::{self, MountOptions, StopSignals};
use ferry_fusefs::status::StatusServer;
use ferry_fusefs::RemoteClient;
use ferry_server::{Security, Server, ServerConfig, Squash, TlsServer, DEFAULT_ANON_ID};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn run(base: &Path) -> Result<(), String> {
    let export = base.join("export");
    let mnt = base.join("mnt");
    for d in [&export, &mnt] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    // SAFETY: geteuid cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let anon = Some(DEFAULT_ANON_ID);
    let hello = export.join("hello.txt");
    if !hello.exists() {
        std::fs::write(
            &hello,
            "Hello from ferry! This file lives in the exported directory.\n",
        )
        .map_err(|e| format!("cannot write {}: {e}", hello.display()))?;
        if as_root {
            std::os::unix::fs::chown(&hello, anon, anon)
                .map_err(|e| format!("cannot give {} to nobody: {e}", hello.display()))?;
        }
    }
    if as_root {
        std::os::unix::fs::chown(&export, anon, anon)
            .map_err(|e| format!("cannot give {} to nobody: {e}", export.display()))?;
    }
    let mountpoint = mount::check_mountpoint(&mnt)?;
    let tls = Arc::new(TlsServer::open(&base.join("state"), &export)?);
    let token = tls
        .token(None)
        .cloned()
        .ok_or("the demo's export has no access token")?;
    let connect = ConnectOptions::pinned(tls.fingerprint(), Some(token));
    let mut config = ServerConfig::new(
        export.clone(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Security::Tls(Arc::clone(&tls)),
    );
    config.max_connections = 64;
    // The demo's one mount dies with its server, so there are never locks to
    // reclaim after a start; the record says so and spares a grace period.
    config.lock_record = Some(base.join("state").join("lock-clients-demo"));
    if as_root {
        config.identities.squash = Squash::All;
    }
    let rt = runtime()?;
    let server = rt
        .block_on(Server::bind(config))
        .map_err(|e| e.to_string())?;
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let result = (|| {
        let client =
            RemoteClient::connect(&addr.to_string(), &connect).map_err(|e| e.to_string())?;
        let signals = StopSignals::catch().map_err(|e| format!("cannot catch signals: {e}"))?;
        let mounted = mount::mount(client, &mountpoint, &MountOptions::default())
            .map_err(|e| mount_error(&mountpoint, e))?;
        let _status = StatusServer::start(mounted.core().clone(), &mountpoint)
            .map_err(|e| log::warn!("`ferry status` will not work for the demo: {e}"))
            .ok();
        println!(
            "ferry demo: {} is exported on {addr} and mounted at {}",
            export.display(),
            mountpoint.display()
        );
        println!(
            "  try:  ls -l {0}   cat {0}/hello.txt   cp -r /usr/include/linux {0}/",
            mountpoint.display()
        );
        let ferry = this_program();
        println!(
            "  from another terminal: {ferry} ls {addr} --pin {} --token-file {}",
            tls.fingerprint(),
            tls.token_path().display()
        );
        println!("  and:  {ferry} status {}", mountpoint.display());
        if as_root {
            println!("  every user of the mount, root too, acts as nobody, who owns the export");
        }
        println!("Press Ctrl-C to unmount and stop.");
        signals
            .serve(mounted, |_| {})
            .map_err(|e| format!("unmounting {}: {e}", mountpoint.display()))
    })();
    let _ = stop_tx.send(());
    let _ = rt.block_on(serving);
    result
}

/// How to run this program from a shell: `ferry` when that is what PATH
/// finds, else its path (relative to here when below here, as after `cargo run`).
fn this_program() -> String {
    let exe = std::env::current_exe().ok();
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("ferry"))
            .find(|candidate| candidate.is_file())
    });
    if let (Some(exe), Some(found)) = (&exe, on_path) {
        if std::fs::canonicalize(found).ok().as_ref() == Some(exe) {
            return "ferry".to_string();
        }
    }
    let Some(exe) = exe else {
        return "ferry".to_string();
    };
    let relative = std::env::current_dir()
        .ok()
        .and_then(|here| exe.strip_prefix(here).ok().map(PathBuf::from));
    match relative {
        Some(rel) => rel.display().to_string(),
        None => exe.display().to_string(),
    }
}
