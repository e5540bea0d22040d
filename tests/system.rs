//! ferry as a citizen of the system: mount(8) and fstab through the mount
//! helper, `ferry status`, subtree mounts, and what a person sees when a
//! mountpoint is taken or dead.

mod common;

use common::binary::{
    ferry, is_mounted, lock_mount_helper, run_ok, state_dir, wait_mounted, wait_timeout,
    MountGuard, Served,
};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferry-system-")
        .tempdir()
        .unwrap()
}

/// An export holding `hello` and `sub/inner`, served by the binary, and an
/// empty mountpoint unmounted on drop whatever happens.
struct Setup {
    t: tempfile::TempDir,
    export: PathBuf,
    mnt: PathBuf,
    served: Served,
    _guard: MountGuard,
}

impl Setup {
    fn new() -> Setup {
        let t = tmp();
        let export = t.path().join("export");
        let mnt = t.path().join("mnt");
        fs::create_dir_all(export.join("sub")).unwrap();
        fs::create_dir(&mnt).unwrap();
        fs::write(export.join("hello"), "hi").unwrap();
        fs::write(export.join("sub/inner"), "inside").unwrap();
        // Root on these mounts writes as root, as the tests check what it made.
        let served = Served::start(&export, &["--no-root-squash"]);
        let _guard = MountGuard(mnt.clone());
        Setup {
            t,
            export,
            mnt,
            served,
            _guard,
        }
    }
}

/// The mount option that gives the helper this test's client state directory
/// (mount(8) runs helpers without the caller's environment).
fn credentials() -> String {
    format!("state_dir={}", state_dir().display())
}

/// `/sbin/mount.fuse.ferry` and `/sbin/mount.ferry` pointing at the built
/// binary while this lives, as a package or the README's `ln -s` installs
/// them; whatever was there before is put back. Held under a lock (which
/// tests/package.rs takes too), so that test processes running at once do not
/// swap the links under each other.
struct HelperLinks {
    saved: Vec<(PathBuf, Option<PathBuf>)>,
    _lock: fs::File,
}

impl HelperLinks {
    /// Links to the binary the tests were built with.
    fn install() -> HelperLinks {
        HelperLinks::to(Path::new(env!("CARGO_BIN_EXE_ferry")))
    }

    fn to(binary: &Path) -> HelperLinks {
        let lock = lock_mount_helper();
        let mut saved = Vec::new();
        for name in ["mount.fuse.ferry", "mount.ferry"] {
            let link = Path::new("/sbin").join(name);
            let before = fs::read_link(&link).ok();
            let _ = fs::remove_file(&link);
            symlink(binary, &link).expect("link the helper into /sbin");
            saved.push((link, before));
        }
        HelperLinks { saved, _lock: lock }
    }
}

impl Drop for HelperLinks {
    fn drop(&mut self) {
        for (link, before) in &self.saved {
            let _ = fs::remove_file(link);
            if let Some(target) = before {
                let _ = symlink(target, link);
            }
        }
    }
}

/// The mounts at `mnt` in /proc/mounts, as (source, type).
fn mounts_at(mnt: &Path) -> Vec<(String, String)> {
    let mnt = fs::canonicalize(mnt).unwrap();
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&mnt.to_str().unwrap())).then(|| (f[0].to_string(), f[2].to_string()))
        })
        .collect()
}

fn umount(mnt: &Path) {
    run_ok(Command::new("umount").arg(mnt));
    assert!(wait_mounted(mnt, false), "umount left {}", mnt.display());
}

fn mount_t_fuse_ferry_and_umount() {
    let s = Setup::new();
    let _links = HelperLinks::install();
    // mount(8) finds /sbin/mount.fuse.ferry for the type fuse.ferry.
    run_ok(
        Command::new("mount")
            .args(["-t", "fuse.ferry", "-o"])
            .arg(format!("ro,attr_timeout=2,{}", credentials()))
            .arg(format!("{}:/sub", s.served.addr))
            .arg(&s.mnt),
    );
    // The helper returned once the mount was live.
    assert_eq!(
        mounts_at(&s.mnt),
        [(format!("{}:/sub", s.served.addr), "fuse.ferry".to_string())]
    );
    assert_eq!(fs::read_to_string(s.mnt.join("inner")).unwrap(), "inside");
    let refused = fs::write(s.mnt.join("new"), "x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "-o ro");
    umount(&s.mnt);
    // mount.ferry for the type ferry.
    run_ok(
        Command::new("mount")
            .args(["-t", "ferry", "-o"])
            .arg(credentials())
            .arg(&s.served.addr)
            .arg(&s.mnt),
    );
    assert_eq!(fs::read_to_string(s.mnt.join("hello")).unwrap(), "hi");
    umount(&s.mnt);
    // A mistake in the options is named, and nothing is mounted.
    let out = Command::new("mount")
        .args(["-t", "fuse.ferry", "-o", "bogus"])
        .arg(&s.served.addr)
        .arg(&s.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown mount option \"bogus\""),
        "{out:?}"
    );
    assert!(!is_mounted(&s.mnt));
}

fn mount_a_with_the_documented_fstab_line() {
    let s = Setup::new();
    // The README's way: `cargo install --path .`, then the link into /sbin.
    // (--debug and the tests' own target directory, so that it installs the
    // build the tests just made instead of making a release build.)
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_ferry")).parent().unwrap();
    let root = s.t.path().join("cargo-root");
    run_ok(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "--locked", "--offline", "--debug", "--path"])
            .arg(env!("CARGO_MANIFEST_DIR"))
            .arg("--root")
            .arg(&root)
            .env("CARGO_TARGET_DIR", bin_dir.parent().unwrap()),
    );
    let _links = HelperLinks::to(&root.join("bin/ferry"));
    // The README's line, with this test's server and mountpoint.
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let documented = "server:7070 /mnt/data fuse.ferry \
        _netdev,nofail,x-systemd.automount,token_file=/etc/ferry/data.token 0 0";
    assert!(
        readme.contains(documented),
        "README.md documents {documented:?}"
    );
    // The state directory too, so that the server is recorded in this test's
    // known_servers rather than in the machine's (/var/lib/ferry).
    let token = fs::read_dir(state_dir().join("tokens"))
        .unwrap()
        .next()
        .expect("a token file")
        .unwrap()
        .path();
    let line = documented
        .replace("server:7070", &s.served.addr)
        .replace("/mnt/data", s.mnt.to_str().unwrap())
        .replace(
            "/etc/ferry/data.token",
            &format!("{},state_dir={}", token.display(), state_dir().display()),
        );
    let fstab = s.t.path().join("fstab");
    fs::write(&fstab, format!("# ferry\n{line}\n")).unwrap();
    run_ok(Command::new("mount").arg("-a").arg("-T").arg(&fstab));
    assert_eq!(fs::read_to_string(s.mnt.join("hello")).unwrap(), "hi");
    fs::write(s.mnt.join("from-fstab"), "written").unwrap();
    assert_eq!(
        fs::read_to_string(s.export.join("from-fstab")).unwrap(),
        "written"
    );
    // Mounted already: a second `mount -a` sees it by its source and leaves it.
    run_ok(Command::new("mount").arg("-a").arg("-T").arg(&fstab));
    assert_eq!(mounts_at(&s.mnt).len(), 1, "{:?}", mounts_at(&s.mnt));
    umount(&s.mnt);
    // The mount's process is gone with it: nothing answers for it any more.
    let status = ferry().arg("status").arg(&s.mnt).output().unwrap();
    assert!(!status.status.success());
}

/// The value after `label` on the line of `ferry status` that starts with it.
fn status_line(report: &str, label: &str) -> String {
    report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in\n{report}"))
        .to_string()
}

/// The first number after `word` in `text`.
fn number_after(text: &str, word: &str) -> f64 {
    let rest = &text[text
        .find(word)
        .unwrap_or_else(|| panic!("{word} in {text}"))
        + word.len()..];
    let number: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("a number after {word} in {text}"))
}

fn status_shows_counters_that_move_under_load() {
    let s = Setup::new();
    run_ok(
        ferry()
            .args(["mount", "--daemon", &s.served.addr])
            .arg(&s.mnt),
    );
    let status = || run_ok(ferry().arg("status").arg(&s.mnt));
    let before = status();
    assert!(
        before.starts_with(&format!("ferry mount  at {}", s.mnt.display())),
        "{before}"
    );
    assert!(
        status_line(&before, "server").contains(&s.served.addr),
        "{before}"
    );
    assert!(
        status_line(&before, "connection").contains("connected for"),
        "{before}"
    );
    let sent_before = number_after(&status_line(&before, "requests "), "requests");
    // 32 MiB written and read back, and a tree listed twice.
    let data = vec![5u8; 32 << 20];
    fs::write(s.mnt.join("big"), &data).unwrap();
    assert!(fs::read(s.mnt.join("big")).unwrap() == data);
    for _ in 0..2 {
        for entry in fs::read_dir(&s.mnt).unwrap() {
            fs::metadata(entry.unwrap().path()).unwrap();
        }
    }
    let after = status();
    let requests = status_line(&after, "requests ");
    assert!(
        number_after(&requests, "requests") > sent_before + 32.0,
        "{after}"
    );
    assert!(requests.contains("write 3"), "32 1-MiB writes: {after}");
    let bytes = status_line(&after, "bytes");
    assert!(bytes.contains("MiB sent"), "{after}");
    let rate = status_line(&after, "requests/s");
    assert!(
        rate.contains("write"),
        "the last seconds saw writes: {after}"
    );
    assert!(!rate.contains("idle"), "{after}");
    let trips = status_line(&after, "round trips");
    assert!(trips.contains("p50") && trips.contains("p99"), "{after}");
    let caches = status_line(&after, "caches");
    assert!(
        number_after(&caches, "attributes") > 0.0,
        "attribute hits: {after}"
    );
    assert!(
        status_line(&after, "write-behind").contains("queued"),
        "{after}"
    );
    umount(&s.mnt);
    // Not a mount, or not a ferry one: said so.
    let out = ferry().arg("status").arg(&s.mnt).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing is mounted at"),
        "{out:?}"
    );
    let out = ferry().arg("status").arg("/proc").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a ferry mount"),
        "{out:?}"
    );
}

fn a_subtree_mount_sees_only_its_directory() {
    let s = Setup::new();
    run_ok(
        ferry()
            .args(["mount", "--daemon", &format!("{}:/sub", s.served.addr)])
            .arg(&s.mnt),
    );
    let names: Vec<_> = fs::read_dir(&s.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["inner"]);
    fs::write(s.mnt.join("made-here"), "x").unwrap();
    // Created behind (the mount listed its root just now): fsync says it has
    // landed.
    fs::File::open(s.mnt.join("made-here"))
        .unwrap()
        .sync_all()
        .unwrap();
    assert!(s.export.join("sub/made-here").exists());
    // A symlink that points up is stored, and the kernel resolves it on the
    // client, never the server: it cannot lead the server out.
    symlink("../hello", s.mnt.join("up")).unwrap();
    assert_eq!(
        fs::read_link(s.export.join("sub/up")).unwrap(),
        Path::new("../hello")
    );
    umount(&s.mnt);
    let out = ferry()
        .args(["mount", &format!("{}:/hello", s.served.addr)])
        .arg(&s.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/hello of the export: it is not a directory"),
        "{out:?}"
    );
}

fn a_second_mount_on_the_same_mountpoint_is_refused() {
    let s = Setup::new();
    run_ok(
        ferry()
            .args(["mount", "--daemon", &s.served.addr])
            .arg(&s.mnt),
    );
    // The export's root is empty of nothing but the mount root; still refused.
    fs::remove_file(s.export.join("hello")).unwrap();
    fs::remove_file(s.export.join("sub/inner")).unwrap();
    fs::remove_dir(s.export.join("sub")).unwrap();
    for daemon in [true, false] {
        let mut cmd = ferry();
        cmd.arg("mount");
        if daemon {
            cmd.arg("--daemon");
        }
        let out = cmd.arg(&s.served.addr).arg(&s.mnt).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "is already a ferry mount (of {}) — unmount it first with `fusermount3 -u",
                s.served.addr
            )),
            "{err}"
        );
    }
    assert_eq!(mounts_at(&s.mnt).len(), 1, "{:?}", mounts_at(&s.mnt));
    umount(&s.mnt);
}

fn a_killed_mount_is_met_with_the_fix() {
    let s = Setup::new();
    let mut child = ferry()
        .args(["mount", &s.served.addr])
        .arg(&s.mnt)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_mounted(&s.mnt, true));
    assert_eq!(fs::read_to_string(s.mnt.join("hello")).unwrap(), "hi");
    child.kill().unwrap();
    child.wait().unwrap();
    let out = ferry()
        .args(["mount", &s.served.addr])
        .arg(&s.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Transport endpoint is not connected"), "{err}");
    assert!(
        err.contains(&format!("fusermount3 -u {}", s.mnt.display())),
        "{err}"
    );
    // The fix it names works.
    run_ok(Command::new("fusermount3").arg("-u").arg(&s.mnt));
    assert!(wait_mounted(&s.mnt, false));
    run_ok(
        ferry()
            .args(["mount", "--daemon", &s.served.addr])
            .arg(&s.mnt),
    );
    umount(&s.mnt);
}

fn sed_in_place_on_a_mount_logs_nothing() {
    let s = Setup::new();
    let log = s.t.path().join("mount.log");
    let mut child = ferry()
        .args(["mount", &s.served.addr])
        .arg(&s.mnt)
        .env_remove("RUST_LOG")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(wait_mounted(&s.mnt, true));
    fs::write(s.mnt.join("text"), "one two\n").unwrap();
    for _ in 0..3 {
        run_ok(
            Command::new("sed")
                .args(["-i", "s/one/1/"])
                .arg(s.mnt.join("text")),
        );
    }
    assert_eq!(
        fs::read_to_string(s.export.join("text")).unwrap(),
        "1 two\n"
    );
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("the mount exits");
    assert!(status.success());
    let logged = fs::read_to_string(&log).unwrap();
    let noise: Vec<&str> = logged
        .lines()
        .filter(|l| !l.starts_with("ferry: mounted "))
        // A server met for the first time is recorded, once, as ssh does.
        .filter(|l| !l.starts_with("ferry: first connection to "))
        .collect();
    assert!(noise.is_empty(), "the mount logged: {logged}");
}

fn the_demo_prints_a_command_that_works() {
    let t = tmp();
    let dir = t.path().join("demo");
    // PATH without ferry on it, as after a fresh clone and `cargo run`.
    let mut demo = ferry()
        .arg("demo")
        .arg(&dir)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = MountGuard(dir.join("mnt"));
    let mut out = std::io::BufReader::new(demo.stdout.take().unwrap());
    let started = Instant::now();
    let command = loop {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "the demo ended early"
        );
        if let Some(cmd) = line.trim().strip_prefix("from another terminal: ") {
            break cmd.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(30));
    };
    let run = Command::new("sh")
        .args(["-c", &command])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(demo.id() as i32, libc::SIGINT) };
    let status = wait_timeout(&mut demo, Duration::from_secs(10)).expect("the demo stops");
    assert!(status.success());
    assert!(run.status.success(), "{command}: {run:?}");
    assert!(String::from_utf8_lossy(&run.stdout).contains("hello.txt"));
}

tests! {
    mount_t_fuse_ferry_and_umount => [Fuse, Root],
    mount_a_with_the_documented_fstab_line => [Fuse, Root],
    status_shows_counters_that_move_under_load => [Fuse],
    a_subtree_mount_sees_only_its_directory => [Fuse],
    a_second_mount_on_the_same_mountpoint_is_refused => [Fuse],
    a_killed_mount_is_met_with_the_fix => [Fuse],
    sed_in_place_on_a_mount_logs_nothing => [Fuse],
    the_demo_prints_a_command_that_works => [Fuse],
}
