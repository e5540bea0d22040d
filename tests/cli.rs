//! The `ferry` binary as a user runs it: serve, ls/get/put, mount (foreground and
//! --daemon), signals, and the messages people see when something is wrong.

mod common;

use common::binary::{ferry, is_mounted, wait_mounted, wait_timeout, MountGuard, Served};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

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
    // The transfer, not squashing, is under test: root here is root there.
    let served = Served::start(&export, &["--no-root-squash"]);

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
    // Once the bar clears, one line says what was done.
    let done = screen
        .lines()
        .filter(|l| l.contains("get: 20.0 MiB in "))
        .count();
    assert_eq!(done, 1, "{screen:?}");
    assert!(screen.contains("MiB/s) → "), "{screen:?}");
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
        // Mounting, not squashing, is under test: root on the mount is root there.
        let served = Served::start(&export, &["--no-root-squash"]);
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

fn put_with_a_trailing_slash_needs_a_directory_like_cp() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir_all(export.join("dir")).unwrap();
    fs::write(export.join("file"), "old").unwrap();
    let small = t.path().join("small.txt");
    fs::write(&small, "small").unwrap();
    let served = Served::start(&export, &["--no-root-squash"]);
    for (remote, why) in [
        (
            "nosuchdir/",
            "there is no directory nosuchdir on the server",
        ),
        ("file/", "file is not a directory on the server"),
    ] {
        let out = ferry()
            .args(["put", &served.addr])
            .arg(&small)
            .arg(remote)
            .output()
            .unwrap();
        assert!(!out.status.success(), "put to {remote} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Not a directory"), "{err}");
        assert!(err.contains(why), "{err}");
    }
    assert!(
        !export.join("nosuchdir").exists(),
        "no file named nosuchdir"
    );
    assert_eq!(fs::read_to_string(export.join("file")).unwrap(), "old");
    // A directory with a trailing slash is fine.
    let out = ferry()
        .args(["put", &served.addr])
        .arg(&small)
        .arg("dir/")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fs::read_to_string(export.join("dir/small.txt")).unwrap(),
        "small"
    );
}

fn successful_commands_print_no_warning() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    fs::write(export.join("a"), "alpha").unwrap();
    let small = t.path().join("small.txt");
    fs::write(&small, "small").unwrap();
    let served = Served::start(&export, &["--no-root-squash"]);
    let mut runs: Vec<Vec<&str>> = vec![vec!["ls", &served.addr]; 20];
    runs.extend(vec![vec!["ls", &served.addr, "a"]; 5]);
    runs.extend(vec![vec!["put", &served.addr, small.to_str().unwrap()]; 10]);
    let got = t.path().join("got");
    runs.extend(vec![
        vec!["get", &served.addr, "a", got.to_str().unwrap()];
        5
    ]);
    for (i, args) in runs.iter().enumerate() {
        let out = ferry().args(args).env_remove("RUST_LOG").output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        // The first contact says, once, that the server's certificate was
        // recorded (as ssh does); nothing else is printed, ever.
        let expected = if i == 0 {
            err.lines()
                .filter(|l| !l.starts_with("ferry: first connection to "))
                .count()
                == 0
        } else {
            err.is_empty()
        };
        assert!(expected, "{args:?} printed: {err}");
    }
}

fn get_into_a_device_or_fifo_writes_into_it_as_cp_does() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    fs::write(export.join("a"), "alpha").unwrap();
    let served = Served::start(&export, &[]);
    // A FIFO stands for /dev/null and its kind: renaming a file over it would
    // replace the node (as root, /dev/null itself).
    let fifo = t.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read_to_string(fifo).unwrap())
    };
    let out = ferry()
        .args(["get", &served.addr, "a"])
        .arg(&fifo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(reader.join().unwrap(), "alpha");
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    let leftovers: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("ferry-part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn an_address_without_a_port_means_7070() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    fs::write(export.join("seven"), "x").unwrap();
    // A loopback address of this test's own, so that port 7070 is free on it.
    let pid = std::process::id();
    let host = format!(
        "127.{}.{}.{}",
        70 + pid % 100,
        (pid >> 8) % 250 + 1,
        pid % 250 + 1
    );
    let mut child = ferry()
        .arg("serve")
        .arg(&export)
        .args(["--listen", &format!("{host}:7070")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains(&format!("{host}:7070")), "{line}");
    let out = ferry().args(["ls", &host]).output().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("seven"));
    // And with the server gone, the message names the port it tried.
    let out = ferry().args(["ls", &host]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot reach {host}:7070")), "{err}");
}

fn a_server_that_never_answers_is_reported_in_words() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Accepts, then says nothing until the test ends.
    let holder = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let out = ferry().args(["ls", &addr]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("accepted the connection but did not answer within 10 s"),
        "{err}"
    );
    assert!(!err.contains("temporarily unavailable"), "{err}");
    drop(holder.join());
}

fn get_into_a_missing_directory_names_the_file_asked_for() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    fs::write(export.join("a.txt"), "alpha").unwrap();
    let served = Served::start(&export, &[]);
    let target = t.path().join("nodir/out.txt");
    let out = ferry()
        .args(["get", &served.addr, "a.txt"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot create {}: No such file", target.display())),
        "{err}"
    );
    assert!(!err.contains("ferry-part"), "{err}");
    let out = ferry()
        .args(["get", &served.addr, "a.txt"])
        .arg(format!("{}/nodir/", t.path().display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Not a directory"));
}

fn help_describes_every_argument() {
    for (cmd, words) in [
        (
            "ls",
            &[
                "<ADDRESS>",
                "HOST[:PORT][/EXPORT][:/DIR]",
                "[PATH]",
                "relative to the export",
            ][..],
        ),
        (
            "get",
            &[
                "<REMOTE>",
                "The file to download",
                "[LOCAL]",
                "Where to write it",
            ],
        ),
        (
            "put",
            &[
                "<LOCAL>",
                "The local file to upload",
                "[REMOTE]",
                "Where to put it",
            ],
        ),
        ("mount", &["<MOUNTPOINT>", "fuse.ferry", "_netdev"]),
        ("status", &["<MOUNTPOINT>"]),
        ("serve", &["--export <NAME=DIR>", "--metrics <ADDR>"]),
    ] {
        let out = ferry().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for word in words {
            assert!(
                help.contains(word),
                "ferry {cmd} --help lacks {word:?}:\n{help}"
            );
        }
    }
}

fn named_exports_and_subtrees_from_the_command_line() {
    let t = tmp();
    let (main, docs) = (t.path().join("main"), t.path().join("docs"));
    fs::create_dir_all(main.join("projects/a")).unwrap();
    fs::write(main.join("projects/a/plan"), "plan").unwrap();
    fs::create_dir_all(docs.join("manuals")).unwrap();
    fs::write(docs.join("manuals/guide"), "guide").unwrap();
    let export_docs = format!("docs={}", docs.display());
    let served = Served::with_args(&[main.to_str().unwrap(), "--export", &export_docs]);
    assert!(served.banner.contains("as docs"), "{}", served.banner);
    let ls = |addr: String| {
        let out = ferry().args(["ls", &addr]).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, listing, _) = ls(format!("{}/docs:/manuals", served.addr));
    assert!(ok && listing.trim_end().ends_with(" guide"), "{listing}");
    let (ok, listing, _) = ls(format!("{}:/projects/a", served.addr));
    assert!(ok && listing.trim_end().ends_with(" plan"), "{listing}");
    let (ok, _, err) = ls(format!("{}/home", served.addr));
    assert!(!ok && err.contains("no export named \"home\""), "{err}");
    let (ok, _, err) = ls(format!("{}/docs:/manuals/guide", served.addr));
    assert!(!ok && err.contains("not a directory"), "{err}");
    let (ok, _, err) = ls(format!("{}:/../etc", served.addr));
    assert!(!ok && err.contains("not a ferry address"), "{err}");
    // Only named exports: a client must name one.
    let only = Served::with_args(&["--export", &export_docs]);
    let (ok, _, err) = ls(only.addr.clone());
    assert!(!ok && err.contains("no default export"), "{err}");
}

/// An HTTP GET by hand: the body of `url`'s answer.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

fn metrics_count_what_the_server_does() {
    let t = tmp();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    let served = Served::start(&export, &["--metrics", "127.0.0.1:0", "--no-root-squash"]);
    let url = served
        .banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the banner names the metrics address")
        .to_string();
    let before = http_get(&url);
    assert_eq!(metric(&before, "ferry_requests_total{op=\"write\"}"), 0);
    let big = t.path().join("big");
    fs::write(&big, vec![7u8; 10 << 20]).unwrap();
    for _ in 0..3 {
        let out = ferry()
            .args(["put", &served.addr])
            .arg(&big)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let out = ferry()
        .args(["ls", &served.addr, "missing"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let after = http_get(&url);
    assert_eq!(metric(&after, "ferry_requests_total{op=\"write\"}"), 30);
    assert_eq!(metric(&after, "ferry_requests_total{op=\"rename\"}"), 3);
    assert!(metric(&after, "ferry_request_errors_total{op=\"stat\"}") >= 1);
    assert!(metric(&after, "ferry_received_bytes_total") > 30 << 20);
    assert!(metric(&after, "ferry_connections_accepted_total") >= 4);
    assert!(
        metric(&after, "ferry_request_duration_seconds_count")
            > metric(&before, "ferry_request_duration_seconds_count")
    );
}

/// The access token of `served`'s export.
fn token_of(served: &Served) -> String {
    let tokens = served.state.join("tokens");
    let file = fs::read_dir(&tokens)
        .unwrap()
        .next()
        .expect("a token file")
        .unwrap()
        .path();
    fs::read_to_string(file).unwrap().trim().to_string()
}

/// `ferry get` and `put` meet the permissions of the user running them, checked
/// on the server: nobody cannot download root's private file, and root on a
/// client is nobody there unless the server says otherwise.
fn get_and_put_meet_the_servers_permissions() {
    if !common::require_root() {
        return;
    }
    let t = tmp();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let export = t.path().join("export");
    fs::create_dir(&export).unwrap();
    fs::write(export.join("secret"), "root only").unwrap();
    fs::set_permissions(export.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(export.join("public"), "for all").unwrap();
    fs::create_dir(export.join("drop")).unwrap();
    fs::set_permissions(export.join("drop"), fs::Permissions::from_mode(0o777)).unwrap();
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let served = Served::start(&export, &[]);
    let ferry_bin = env!("CARGO_BIN_EXE_ferry");
    // nobody's own state directory (for known_servers), and the export's token.
    let nobody_state = t.path().join("nobody-state");
    fs::create_dir(&nobody_state).unwrap();
    std::os::unix::fs::chown(&nobody_state, Some(65534), Some(65534)).unwrap();
    let token = token_of(&served);
    let state_env = format!("FERRY_STATE_DIR={}", nobody_state.display());
    let token_env = format!("FERRY_TOKEN={token}");
    let get_as_nobody = |remote: &str| {
        let dest = out.join(remote);
        common::as_nobody(&[
            "env",
            &state_env,
            &token_env,
            ferry_bin,
            "get",
            &served.addr,
            remote,
            dest.to_str().unwrap(),
        ])
    };
    // nobody, on a client: EACCES from the server, said as such.
    let (ok, err) = get_as_nobody("secret");
    assert!(!ok, "nobody downloaded root's 0600 file");
    assert!(
        err.contains("permission denied on the server: secret"),
        "{err}"
    );
    assert!(!out.join("secret").exists());
    let (ok, err) = get_as_nobody("public");
    assert!(ok, "{err}");
    assert_eq!(fs::read(out.join("public")).unwrap(), b"for all");
    // root, on a client, is squashed: neither root's file nor root's directory.
    let as_root = |args: &[&str]| ferry().current_dir(&out).args(args).output().unwrap();
    let got = as_root(&["get", &served.addr, "secret", "root-got"]);
    assert!(!got.status.success());
    assert!(String::from_utf8_lossy(&got.stderr).contains("permission denied on the server"));
    let local = t.path().join("upload");
    fs::write(&local, "up").unwrap();
    let put = as_root(&["put", &served.addr, local.to_str().unwrap()]);
    assert!(
        !put.status.success(),
        "a squashed root wrote into root's directory"
    );
    let put = as_root(&["put", &served.addr, local.to_str().unwrap(), "drop"]);
    assert!(put.status.success(), "{put:?}");
    let owner = fs::metadata(export.join("drop/upload")).unwrap();
    assert_eq!((owner.uid(), owner.gid()), (65534, 65534));
    drop(served);
    // With --no-root-squash, root is root.
    let trusting = Served::start(&export, &["--no-root-squash"]);
    let got = as_root(&["get", &trusting.addr, "secret", "root-got"]);
    assert!(got.status.success(), "{got:?}");
    assert_eq!(fs::read(out.join("root-got")).unwrap(), b"root only");
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
    get_and_put_meet_the_servers_permissions => [Root],
    progress_bar_on_a_terminal => [],
    clear_errors_and_nonzero_exit => [],
    read_only_serve_refuses_put => [],
    mount_in_the_foreground_and_stop_with_sigterm_or_sigint => [Fuse],
    mount_daemon_returns_when_ready_and_exits_on_unmount => [Fuse],
    mount_refuses_a_bad_mountpoint => [],
    put_with_a_trailing_slash_needs_a_directory_like_cp => [],
    successful_commands_print_no_warning => [],
    get_into_a_device_or_fifo_writes_into_it_as_cp_does => [],
    an_address_without_a_port_means_7070 => [],
    a_server_that_never_answers_is_reported_in_words => [],
    get_into_a_missing_directory_names_the_file_asked_for => [],
    help_describes_every_argument => [],
    named_exports_and_subtrees_from_the_command_line => [],
    metrics_count_what_the_server_does => [],
}
