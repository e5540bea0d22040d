//! The whole pjdfstest suite on a fresh ferry mount, through
//! `conformance/pjdfstest/run` (a server running as root over an ext4
//! directory, the mount, pjdfstest, the per-group table). It takes seconds, so
//! every test run includes it. Needs root and the `pjdfstest` binary, which
//! `.ci/run` installs: locally it skips without them, under CI it fails.

mod common;

use std::path::Path;
use std::process::Command;

fn pjdfstest_passes_on_a_ferry_mount() {
    if !common::require_root() || !common::pjdfstest_installed() || !common::fuse_usable() {
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

tests! {
    pjdfstest_passes_on_a_ferry_mount => [Fuse, Root, Pjdfstest],
}
