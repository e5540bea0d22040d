//! The Debian package, built as `packaging/build-deb` builds it (here from the
//! debug build, so the test takes seconds rather than a release build's
//! minutes) and installed with dpkg: the binary, the mount helper links that
//! `mount -t fuse.ferry` goes through, the man pages and completions, and the
//! `ferry-serve@` unit — checked by `systemd-analyze verify` (PID 1 here is not
//! systemd) and by running its ExecStart line, which must serve. The package
//! is purged afterwards, whatever happens.

mod common;

use common::binary::{lock_mount_helper, run_ok, state_dir, wait_mounted, MountGuard, Served};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const UNIT: &str = "/lib/systemd/system/ferry-serve@.service";

/// The package installed while this lives (purged on drop), under the lock
/// the mount helper tests take too, as both touch `/sbin/mount.fuse.ferry`.
struct Installed {
    /// Says a test installed the package, so that `.ci/run` purges it should
    /// the test be killed before its own cleanup.
    marker: PathBuf,
    _lock: fs::File,
}

impl Installed {
    fn install(deb: &Path) -> Installed {
        let lock = lock_mount_helper();
        let installed = Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", "ferry"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
            .unwrap_or(false);
        assert!(
            !installed,
            "a ferry package is installed on this machine already; this test installs \
             and purges its own, so remove that one first (dpkg -P ferry)"
        );
        let marker = deb.with_file_name(".installed-by-test");
        fs::write(&marker, "").unwrap();
        let guard = Installed {
            marker,
            _lock: lock,
        };
        run_ok(Command::new("dpkg").arg("-i").arg(deb));
        guard
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["-P", "ferry"])
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_file(&self.marker);
    }
}

/// The unit's `ExecStart=` command line for the instance serving `dir`, with
/// the specifiers systemd would fill in.
fn exec_start(unit: &str, dir: &Path, instance: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart line");
    line.split_whitespace()
        .map(|word| {
            word.replace("%f", dir.to_str().unwrap())
                .replace("%i", instance)
        })
        .collect()
}

fn the_debian_package_installs_and_serves() {
    if !common::require_root() {
        return;
    }
    if Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        common::skip(
            "cargo-deb is not installed (cargo install --locked cargo-deb; .ci/run does it)",
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = run_ok(
        Command::new(root.join("packaging/build-deb"))
            .arg("--debug")
            .env("FERRY_DEB_FAST", "1"),
    );
    let deb = PathBuf::from(
        built
            .lines()
            .last()
            .expect("build-deb names the .deb")
            .trim(),
    );
    assert!(deb.extension().is_some_and(|e| e == "deb"), "{built}");
    let contents = run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/ferry",
        "./usr/sbin/mount.fuse.ferry -> ../bin/ferry",
        "./usr/sbin/mount.ferry -> ../bin/ferry",
        "./lib/systemd/system/ferry-serve@.service",
        "./usr/share/man/man1/ferry.1",
        "./usr/share/man/man1/ferry-mount.1",
        "./usr/share/man/man1/ferry-serve.1",
        "./usr/share/bash-completion/completions/ferry",
        "./usr/share/zsh/vendor-completions/_ferry",
        "./usr/share/fish/vendor_completions.d/ferry.fish",
    ] {
        assert!(
            contents.contains(path),
            "the package lacks {path}:\n{contents}"
        );
    }

    let _installed = Installed::install(&deb);
    let version = run_ok(Command::new("/usr/bin/ferry").arg("--version"));
    assert!(version.starts_with("ferry "), "{version}");
    assert_eq!(
        fs::read_link("/sbin/mount.fuse.ferry").unwrap(),
        Path::new("../bin/ferry")
    );
    let page = run_ok(Command::new("man").args(["-w", "ferry-mount"]));
    assert!(page.contains("ferry-mount.1"), "{page}");
    let manual = run_ok(
        Command::new("man")
            .args(["-P", "cat", "ferry-mount"])
            .env("MANWIDTH", "200"),
    );
    assert!(manual.contains("fuse.ferry"), "{manual}");

    let t = tempfile::Builder::new()
        .prefix("ferry-package-")
        .tempdir()
        .unwrap();
    let export = t.path().join("export");
    let mnt = t.path().join("mnt");
    fs::create_dir(&export).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(export.join("hello"), "from the package").unwrap();

    // mount(8) through the package's helper link, and umount.
    {
        let served = Served::start(&export, &[]);
        let _guard = MountGuard(mnt.clone());
        // This test's client state (mount(8) passes no environment on), so
        // that nothing lands in the machine's /var/lib/ferry.
        run_ok(
            Command::new("mount")
                .args(["-t", "fuse.ferry", "-o"])
                .arg(format!("state_dir={}", state_dir().display()))
                .arg(&served.addr)
                .arg(&mnt),
        );
        assert_eq!(
            fs::read_to_string(mnt.join("hello")).unwrap(),
            "from the package"
        );
        run_ok(Command::new("umount").arg(&mnt));
        assert!(wait_mounted(&mnt, false));
    }

    // The unit: systemd accepts it (syntax, the binary, its man page) ...
    let unit = fs::read_to_string(UNIT).unwrap();
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=%f",
    ] {
        assert!(
            unit.lines().any(|l| l == hardening),
            "{UNIT} lacks {hardening}"
        );
    }
    let instance = run_ok(Command::new("systemd-escape").arg("--path").arg(&export));
    let instance = instance.trim();
    let name = format!("ferry-serve@{instance}.service");
    run_ok(Command::new("systemd-analyze").args(["verify", &name]));
    // ... and its ExecStart serves the export the instance names.
    let argv = exec_start(&unit, &export, instance);
    assert_eq!(argv[0], "/usr/bin/ferry");
    // The unit's state directory is /var/lib/ferry; this one is the test's.
    let mut server = Command::new(&argv[0])
        .args(&argv[1..])
        .env("FERRY_LISTEN", "127.0.0.1:0")
        .env("FERRY_STATE_DIR", state_dir())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    let addr = banner
        .split(" on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|a| a.trim_end_matches(';').to_string())
        .unwrap_or_else(|| panic!("unexpected banner {banner:?}"));
    let listing = Command::new("/usr/bin/ferry")
        .env("FERRY_STATE_DIR", state_dir())
        .args(["ls", &addr])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(listing.status.success(), "{listing:?}");
    assert!(String::from_utf8_lossy(&listing.stdout).contains(" hello"));
}

tests! {
    the_debian_package_installs_and_serves => [Fuse, Root],
}
