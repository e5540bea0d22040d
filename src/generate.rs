//! `ferry generate DIR` (hidden): the man pages and shell completions, made from
//! the command line's own definitions so they never go stale. The Debian
//! package is built from what this writes (see `packaging/build-deb`).

use crate::args::Cli;
use clap::CommandFactory;
use clap_complete::Shell;
use std::fs;
use std::path::Path;

pub fn run(out: &Path) -> Result<(), String> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let cmd = Cli::command();
    // ferry.1, and ferry-serve.1, ferry-mount.1, ... for the subcommands.
    clap_mangen::generate_to(cmd.clone(), &man)
        .map_err(|e| format!("cannot write the man pages in {}: {e}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "ferry", &completions).map_err(
            |e| {
                format!(
                    "cannot write the {shell} completions in {}: {e}",
                    completions.display()
                )
            },
        )?;
    }
    Ok(())
}
