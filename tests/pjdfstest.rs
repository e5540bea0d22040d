//! The whole pjdfstest suite on a fresh ferry mount, through
//! `conformance/pjdfstest/run` (a server running as root over an ext4
//! directory, the mount, pjdfstest, the per-group table). It takes seconds, so
//! every test run includes it. Needs root and the `pjdfstest` binary, which
//! `.ci/run` installs: locally it skips without them, under CI it fails.

mod common;

use std::path::Path;
use std::process::Command;

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Whether pjdfstest is installed where the script looks: on PATH or in
/// cargo's bin directory.
fn have_pjdfstest() -> bool {
    let cargo_bin = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/pjdfstest"));
    let on_path = Command::new("pjdfstest")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    on_path || cargo_bin.is_some_and(|p| p.is_file())
}

#[test]
fn pjdfstest_passes_on_a_ferry_mount() {
    if !common::require_root() {
        return;
    }
    if !have_pjdfstest() {
        assert!(
            !in_ci(),
            "pjdfstest is required under CI: .ci/run installs it"
        );
        eprintln!("SKIPPED: pjdfstest is not installed (cargo install --locked pjdfstest)");
        return;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        assert!(!in_ci(), "FUSE is required under CI: {e}");
        eprintln!("SKIPPED: cannot open /dev/fuse: {e}");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/pjdfstest/run");
    let out = Command::new(&script)
        .arg("--ferry")
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let table = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    eprintln!("{errors}{table}");
    assert!(
        out.status.success(),
        "pjdfstest found failures on ferry ({}); the table above lists them",
        out.status
    );
    // The run must really have run the suite: a total line with every case.
    let total = table
        .lines()
        .find(|l| l.starts_with("total"))
        .expect("the table has a total line");
    let tests: usize = total
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a test count");
    assert!(tests >= 398, "only {tests} cases ran: {total}");
}
