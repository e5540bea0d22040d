//! `ferry keygen`: this client's identity (made if missing), and the line that
//! lets it into a server that authorizes clients by certificate.

use std::path::PathBuf;

pub fn run(state_dir: Option<PathBuf>) -> Result<(), String> {
    let state = state_dir_or_default(state_dir)?;
    let (identity, made) = ferry_fusefs::client::tls::keygen(&state)?;
    let fingerprint = identity.fingerprint();
    println!(
        "ferry: {} client identity {fingerprint} in {}",
        if made {
            "made the"
        } else {
            "this client already has the"
        },
        state.display()
    );
    println!(
        "ferry: to let this client in, add this line to authorized_clients in the server's state \
         directory (remove it to revoke):"
    );
    println!("{fingerprint} {}", whoami());
    Ok(())
}

/// The state directory given, or the default one.
pub fn state_dir_or_default(given: Option<PathBuf>) -> Result<PathBuf, String> {
    given
        .or_else(ferry_common::state::default_dir)
        .ok_or_else(|| {
            "there is no default state directory (HOME is not set): give --state-dir".into()
        })
}

/// "user@host", for the comment of an authorized_clients line.
fn whoami() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{user}@{host}")
}
