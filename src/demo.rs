//! `ferry demo`: an export with a sample file, served on a free loopback port and
//! mounted, all in this process, until Ctrl-C.

use crate::mounting::mount_error;
use crate::serve::runtime;
use ferry_fusefs::mount::{self, MountOptions, StopSignals};
use ferry_fusefs::status::StatusServer;
use ferry_fusefs::RemoteClient;
use ferry_server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub fn run(base: &Path) -> Result<(), String> {
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
            root: Some(export.clone()),
            exports: Vec::new(),
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
        println!("  from another terminal: {ferry} ls {addr}");
        println!("  and:  {ferry} status {}", mountpoint.display());
        println!("Press Ctrl-C to unmount and stop.");
        signals
            .serve(mounted)
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
