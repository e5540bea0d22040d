//! When the server goes away: calls fail promptly instead of hanging, the mount
//! can still be unmounted, and a restarted server is picked up again — open files
//! included, re-opened by path.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn a_stopped_server_gives_eio_and_a_restarted_one_is_used_again() {
    let mut f = fixture!();
    fs::write(f.m("kept-open"), b"0123456789").unwrap();
    let mut reader = File::open(f.m("kept-open")).unwrap();
    let mut writer = OpenOptions::new()
        .write(true)
        .open(f.m("kept-open"))
        .unwrap();

    f.stop_server();
    let start = Instant::now();
    let err = fs::metadata(f.m("never-seen")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = fs::write(f.m("new-file"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "calls must fail promptly, not hang"
    );

    f.restart_server();
    // The next request after a break reconnects (attempts are spaced by at most
    // half a second), so a few tries settle it. (Opening always asks the server;
    // a stat of a file this mount writes to may be answered locally.)
    let mut attempts = 0;
    while File::open(f.m("kept-open")).is_err() {
        attempts += 1;
        assert!(attempts < 40, "the mount did not reconnect");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Files opened before the restart keep working: re-opened by path.
    writer.write_all(b"ab").unwrap();
    writer.sync_all().unwrap();
    assert_eq!(fs::read(f.e("kept-open")).unwrap(), b"ab23456789");
    let mut buf = String::new();
    reader.seek(SeekFrom::Start(0)).unwrap();
    // The page cache may hold the old bytes; what matters is that reading works.
    reader.read_to_string(&mut buf).unwrap();
    assert_eq!(buf.len(), 10);
    // New work, too.
    fs::write(f.m("after"), b"restart").unwrap();
    assert_eq!(fs::read(f.e("after")).unwrap(), b"restart");
}

fn a_file_truncated_at_open_is_not_truncated_again_on_reopen() {
    let mut f = fixture!();
    let mut w = OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(f.m("t"))
        .unwrap();
    w.write_all(b"before").unwrap();
    // On the server before it restarts (a write still in flight when the
    // connection breaks fails, and close reports it).
    w.sync_all().unwrap();
    f.restart_server();
    let mut ok = false;
    for _ in 0..40 {
        if w.write_all(b"-after").is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "writing did not resume after the restart");
    drop(w);
    let got = fs::read(f.e("t")).unwrap();
    assert!(
        got.starts_with(b"before"),
        "re-opening truncated the file: {got:?}"
    );
}

/// A "server" that completes the handshake (plaintext, as under `--insecure`)
/// and then never answers anything.
fn silent_server() -> (String, std::thread::JoinHandle<()>) {
    use ferry_common::frame;
    use ferry_common::proto::{HandshakeReply, Welcome, PROTOCOL_VERSION};
    use ferry_common::{Attr, FileKind};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let thread = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming().take(1) {
            let mut stream = stream.unwrap();
            let _hello = frame::read_frame(&mut stream).unwrap();
            let welcome = HandshakeReply::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                max_chunk: frame::MAX_CHUNK,
                read_only: false,
                features: 0,
                root: Attr::blank(FileKind::Directory),
                instance: 1,
                grace_ms: 0,
            });
            frame::write_frame(&mut stream, &welcome).unwrap();
            held.push(stream);
        }
        // Keep the connection open and read nothing for a while.
        std::thread::sleep(Duration::from_secs(20));
    });
    (addr, thread)
}

fn a_silent_server_times_out_instead_of_hanging() {
    use ferry_fusefs::mount::{self, MountOptions};
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "FUSE is required under CI"
        );
        return;
    }
    let (addr, _server) = silent_server();
    let dir = tempfile::Builder::new()
        .prefix("ferry-test-")
        .tempdir()
        .unwrap();
    let options =
        ferry_fusefs::client::ConnectOptions::insecure().with_timeout(Duration::from_secs(2));
    let client = ferry_fusefs::RemoteClient::connect(&addr, &options).unwrap();
    let mounted = mount::mount(client, dir.path(), &MountOptions::default()).unwrap();
    let start = Instant::now();
    let err = fs::metadata(dir.path().join("anything")).unwrap_err();
    // ETIMEDOUT at the request's deadline, or EIO if the client gave up on
    // the silent connection first (the kernel's own first requests at mount
    // time were not answered either): both within the timeout and a margin.
    assert!(
        matches!(err.raw_os_error(), Some(libc::ETIMEDOUT | libc::EIO)),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    mounted.unmount().unwrap();
}

tests! {
    a_stopped_server_gives_eio_and_a_restarted_one_is_used_again => [Fuse],
    a_file_truncated_at_open_is_not_truncated_again_on_reopen => [Fuse],
    a_silent_server_times_out_instead_of_hanging => [Fuse],
}
