//! The `ferry` binary as a user runs it: serve, ls/get/put, mount (foreground and
//! --daemon), signals, and the messages people see when something is wrong.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

/// `ferry serve DIR --listen 127.0.0.1:0`, killed on drop. Its state
/// directory is DIR's sibling `state`, which its clients share (so
/// `known_servers` lands there too).
struct Served {
    child: Child,
    addr: String,
    state: PathBuf,
}

impl Served {
    fn start(dir: &Path, extra: &[&str]) -> Served {
        let state = dir.parent().unwrap().join("state");
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = ferry()
            .arg("serve")
            .arg(dir)
            .args(listen)
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ferry serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "ferry: exporting /abs/dir on 127.0.0.1:PORT"
        assert!(
            line.starts_with("ferry: exporting "),
            "unexpected first line: {line:?}"
        );
        let addr = line
            .split(" on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        Served { child, addr, state }
    }

    /// `ferry` as a client of this server: its state directory (where the
    /// server is recorded on first contact) and the export's token, from the
    /// environment.
    fn client(&self) -> Command {
        let mut cmd = ferry();
        cmd.envs(self.client_env());
        cmd
    }

    /// The environment that makes `ferry` a client of this server.
    fn client_env(&self) -> Vec<(&'static str, String)> {
        let tokens = self.state.join("tokens");
        let token_file = fs::read_dir(&tokens)
            .unwrap()
            .next()
            .expect("a token file")
            .unwrap()
            .path();
        let token = fs::read_to_string(token_file).unwrap();
        vec![
            ("FERRY_STATE_DIR", self.state.display().to_string()),
            ("FERRY_TOKEN", token.trim().to_string()),
        ]
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status =
            wait_timeout(&mut self.child, Duration::from_secs(10)).expect("serve exits on SIGTERM");
        std::mem::forget(self);
        status
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn is_mounted(p: &Path) -> bool {
    let p = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.to_str().unwrap()))
}

fn wait_mounted(p: &Path, want: bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if is_mounted(p) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Unmounts on drop so that a failing test leaves nothing behind.
struct MountGuard(PathBuf);
impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = ferry_fusefs::mount::lazy_unmount(&self.0);
        }
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferry-cli-")
        .tempdir()
        .unwrap()
}

fn ls_get_put_round_trip_with_a_100_mib_file() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir_all(export.join("docs")).unwrap();
    fs::write(export.join("docs/a.txt"), "alpha").unwrap();
    std::os::unix::fs::symlink("a.txt", export.join("docs/link")).unwrap();
    let served = Served::start(&export, &[]);

    let out = served
        .client()
        .args(["ls", &served.addr, "docs"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("-rw") && l.contains(" 5 ") && l.ends_with("a.txt")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with('l') && l.ends_with("link -> a.txt")),
        "{text}"
    );
    let root = served.client().args(["ls", &served.addr]).output().unwrap();
    assert!(String::from_utf8_lossy(&root.stdout)
        .lines()
        .any(|l| l.starts_with('d') && l.ends_with("docs")));

    // 100 MiB of non-repeating data up and down
    let big = t.path().join("big.bin");
    let data: Vec<u8> = (0..(100u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(&big, &data).unwrap();
    let put = served
        .client()
        .args(["put", &served.addr])
        .arg(&big)
        .arg("docs")
        .output()
        .unwrap();
    assert!(put.status.success(), "{put:?}");
    assert!(
        put.stdout.is_empty(),
        "no progress bar when stdout is not a terminal"
    );
    assert!(fs::read(export.join("docs/big.bin")).unwrap() == data);
    let leftovers: Vec<_> = fs::read_dir(export.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("ferry-part"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary upload files left: {leftovers:?}"
    );

    let down = t.path().join("down.bin");
    let get = served
        .client()
        .args(["get", &served.addr, "docs/big.bin"])
        .arg(&down)
        .output()
        .unwrap();
    assert!(get.status.success(), "{get:?}");
    assert!(fs::read(&down).unwrap() == data);

    // get with no LOCAL writes ./basename
    let cwd = t.path().join("cwd");
    fs::create_dir(&cwd).unwrap();
    let get = served
        .client()
        .current_dir(&cwd)
        .args(["get", &served.addr, "/docs/a.txt"])
        .output()
        .unwrap();
    assert!(get.status.success(), "{get:?}");
    assert_eq!(fs::read_to_string(cwd.join("a.txt")).unwrap(), "alpha");

    // put to an explicit new name replaces atomically
    fs::write(t.path().join("v2"), "beta").unwrap();
    let put = served
        .client()
        .args(["put", &served.addr])
        .arg(t.path().join("v2"))
        .arg("docs/a.txt")
        .output()
        .unwrap();
    assert!(put.status.success(), "{put:?}");
    assert_eq!(
        fs::read_to_string(export.join("docs/a.txt")).unwrap(),
        "beta"
    );
    assert!(served.terminate().success());
}

fn progress_bar_on_a_terminal() {
    // `script` runs the command on a pseudo-terminal, as a person would.
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "script (bsdutils) is needed under CI"
        );
        return;
    }
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    fs::write(export.join("f.bin"), vec![3u8; 20 << 20]).unwrap();
    let served = Served::start(&export, &[]);
    let cmd = format!(
        "{} get {} f.bin {}",
        env!("CARGO_BIN_EXE_ferry"),
        served.addr,
        t.path().join("out.bin").display()
    );
    let out = Command::new("script")
        .envs(served.client_env())
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("MiB"), "no progress shown: {screen:?}");
    assert_eq!(
        fs::metadata(t.path().join("out.bin")).unwrap().len(),
        20 << 20
    );
}

fn clear_errors_and_nonzero_exit() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    let served = Served::start(&export, &[]);

    let out = served
        .client()
        .current_dir(t.path())
        .args(["get", &served.addr, "docs/x.txt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such remote file: docs/x.txt"), "{err}");
    assert!(
        !t.path().join("x.txt").exists(),
        "nothing is created locally on failure"
    );

    let out = served
        .client()
        .args(["ls", &served.addr, "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such remote path: nope"));

    let out = served
        .client()
        .args(["put", &served.addr, "/definitely/not/here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /definitely/not/here"));

    let out = served
        .client()
        .args(["get", &served.addr, "../etc/passwd"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid remote path"));
    drop(served);

    // Nobody listens on this port any more.
    let out = ferry().args(["ls", "127.0.0.1:1"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "cannot reach 127.0.0.1:1: connection refused — is `ferry serve` running there?"
        ),
        "{err}"
    );

    let out = ferry()
        .args(["serve"])
        .arg(t.path().join("missing-dir"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot export"));
}

fn read_only_serve_refuses_put() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    let served = Served::start(&export, &["--read-only"]);
    fs::write(t.path().join("f"), "x").unwrap();
    let out = served
        .client()
        .args(["put", &served.addr])
        .arg(t.path().join("f"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-only"),
        "{out:?}"
    );
    assert!(fs::read_dir(&export).unwrap().next().is_none());
}

/// An export holding `hello`, served by the binary, and an empty mountpoint
/// that is unmounted on drop whatever happens.
struct Mountable {
    t: tempfile::TempDir,
    export: PathBuf,
    mnt: PathBuf,
    served: Served,
    _guard: MountGuard,
}

impl Mountable {
    fn new() -> Mountable {
        let t = tmp();
        let export = t.path().join("export");
        let mnt = t.path().join("mnt");
        fs::create_dir(&export).unwrap();
        fs::create_dir(&mnt).unwrap();
        fs::write(export.join("hello"), "hi").unwrap();
        let served = Served::start(&export, &[]);
        let _guard = MountGuard(mnt.clone());
        Mountable {
            t,
            export,
            mnt,
            served,
            _guard,
        }
    }
}

fn mount_in_the_foreground_and_stop_with_sigterm_or_sigint() {
    if !common::fuse_usable() {
        return;
    }
    let Mountable {
        t: _t,
        export,
        mnt,
        served,
        _guard,
    } = Mountable::new();
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut child = served
            .client()
            .args(["mount", &served.addr])
            .arg(&mnt)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_mounted(&mnt, true), "the mount did not appear");
        assert_eq!(fs::read_to_string(mnt.join("hello")).unwrap(), "hi");
        fs::write(mnt.join("back"), name).unwrap();
        assert_eq!(fs::read_to_string(export.join("back")).unwrap(), name);
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = wait_timeout(&mut child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("mount did not exit on {name}"));
        assert!(status.success(), "{name}: {status:?}");
        assert!(!is_mounted(&mnt), "{name} must leave no mount behind");
    }
}

fn mount_daemon_returns_when_ready_and_exits_on_unmount() {
    if !common::fuse_usable() {
        return;
    }
    let Mountable {
        t: _t,
        export: _,
        mnt,
        served,
        _guard,
    } = Mountable::new();
    let out = served
        .client()
        .args(["mount", "--daemon", &served.addr])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Ready means ready: no waiting needed.
    assert!(is_mounted(&mnt));
    assert_eq!(fs::read_to_string(mnt.join("hello")).unwrap(), "hi");
    let umount = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    if !matches!(umount, Ok(s) if s.success()) {
        Command::new("umount").arg(&mnt).status().unwrap();
    }
    assert!(wait_mounted(&mnt, false));
}

fn mount_refuses_a_bad_mountpoint() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    let served = Served::start(&export, &[]);
    let full = t.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), "").unwrap();
    let out = served
        .client()
        .args(["mount", &served.addr])
        .arg(&full)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not an empty directory"),
        "{out:?}"
    );
    let out = served
        .client()
        .args(["mount", &served.addr])
        .arg(t.path().join("absent"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );
    let out = ferry()
        .args(["mount", "127.0.0.1:1"])
        .arg(t.path().join("full"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

fn insecure_is_refused_off_loopback_without_a_second_flag() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    fs::write(export.join("f"), "x").unwrap();
    let out = ferry()
        .arg("serve")
        .arg(&export)
        .args(["--listen", "0.0.0.0:0", "--insecure"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-insecure-network"), "{err}");
    // Repeating the intent lets it start (this test only talks to 127.0.0.1).
    let served = Served::start(
        &export,
        &[
            "--insecure",
            "--allow-insecure-network",
            "--listen",
            "0.0.0.0:0",
        ],
    );
    let port = served.addr.rsplit_once(':').unwrap().1;
    let out = ferry()
        .args(["ls", &format!("127.0.0.1:{port}"), "--insecure"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(" f"));
    // A client that expects TLS is told what the server runs.
    let out = ferry()
        .args(["ls", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(t.path().join("client-state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without TLS"), "{err}");
}

fn keygen_then_authorize_and_revoke_a_client_certificate() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    fs::write(export.join("f"), "x").unwrap();
    let served = Served::start(&export, &[]);
    let client_state = t.path().join("client-state");
    let keygen = ferry()
        .args(["keygen", "--state-dir"])
        .arg(&client_state)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let printed = String::from_utf8_lossy(&keygen.stdout).into_owned();
    // The last line is the one to add on the server.
    let line = printed.lines().last().unwrap().to_string();
    assert!(line.starts_with("SHA256:"), "{printed}");
    let ls = || {
        ferry()
            .env_remove("FERRY_TOKEN")
            .args(["ls", &served.addr, "--state-dir"])
            .arg(&client_state)
            .output()
            .unwrap()
    };
    let out = ls();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not authorized"), "{err}");
    // The first contact recorded the server for this client.
    let known = fs::read_to_string(client_state.join("known_servers")).unwrap();
    assert!(known.starts_with(&served.addr), "{known}");

    let authorized = served.state.join("authorized_clients");
    fs::write(&authorized, format!("{line}\n")).unwrap();
    let out = ls();
    assert!(out.status.success(), "{out:?}");
    fs::write(&authorized, "").unwrap();
    let out = ls();
    assert!(!out.status.success(), "revoked, yet {out:?}");
    // keygen again keeps the identity.
    let again = ferry()
        .args(["keygen", "--state-dir"])
        .arg(&client_state)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains(line.split_whitespace().next().unwrap())
    );
}

tests! {
    insecure_is_refused_off_loopback_without_a_second_flag => [],
    keygen_then_authorize_and_revoke_a_client_certificate => [],
    ls_get_put_round_trip_with_a_100_mib_file => [],
    progress_bar_on_a_terminal => [],
    clear_errors_and_nonzero_exit => [],
    read_only_serve_refuses_put => [],
    mount_in_the_foreground_and_stop_with_sigterm_or_sigint => [Fuse],
    mount_daemon_returns_when_ready_and_exits_on_unmount => [Fuse],
    mount_refuses_a_bad_mountpoint => [],
}
