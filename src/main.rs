//! `ferry`: the command line. Thin by design: it parses arguments, sets up
//! logging, and calls into `ferry-server` and `ferry-fusefs`, one module per
//! subcommand (`serve`, `mounting`, `demo`, `generate`); run as
//! `mount.fuse.ferry` or `mount.ferry` it is mount(8)'s helper (`helper`).

mod args;
mod demo;
mod generate;
mod helper;
mod keygen;
mod mounting;
mod serve;

use args::{Cli, Cmd};
use clap::Parser;
use ferry_fusefs::client::DEFAULT_TIMEOUT;
use ferry_fusefs::{cli, status};
use std::io;
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let as_helper = argv.first().is_some_and(|a| helper::is_helper(a));
    let result = if as_helper {
        run_helper(&argv)
    } else {
        init_logging("warn");
        run(Cli::parse().command)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ferry: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
}

/// As `mount.fuse.ferry ADDRESS MOUNTPOINT [-sfnv] [-o OPTIONS]`, run by mount(8).
fn run_helper(argv: &[std::ffi::OsString]) -> Result<(), String> {
    let request = helper::parse(argv);
    let verbose = request.as_ref().is_ok_and(|r| r.verbose);
    init_logging(if verbose { "info" } else { "warn" });
    let request = request?;
    mounting::run(&request.mount, request.fake)
}

fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Serve(args) => serve::run(args),
        Cmd::Keygen { state_dir } => keygen::run(state_dir),
        Cmd::Mount(args) => mounting::run(&args, false),
        Cmd::Status { mountpoint } => {
            print!("{}", status::query(&mountpoint)?);
            Ok(())
        }
        Cmd::Ls { addr, path, client } => {
            let connect = client.options(DEFAULT_TIMEOUT)?;
            cli::ls(&addr, &connect, &path, &mut io::stdout().lock()).map_err(|e| e.to_string())
        }
        Cmd::Get {
            addr,
            remote,
            local,
            client,
        } => {
            let connect = client.options(DEFAULT_TIMEOUT)?;
            cli::get(&addr, &connect, &remote, local.as_deref())
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Cmd::Put {
            addr,
            local,
            remote,
            client,
        } => {
            let connect = client.options(DEFAULT_TIMEOUT)?;
            cli::put(&addr, &connect, &local, remote.as_deref())
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Cmd::Demo { dir } => demo::run(&dir),
        Cmd::Generate { out } => generate::run(&out),
    }
}
