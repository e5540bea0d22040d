//! A client that distrusts its server: scripted peers that answer what no
//! honest server would, and what the client makes of it — never a panic, a
//! hang or unbounded memory, and nothing the kernel would refuse.

use super::tests::{answer, connect, ferry_peer, me, read_request, received, PATIENCE};
use super::*;
use ferry_common::frame::READDIR_PAGE;
use ferry_common::{Attr, FileKind, RelPath, Timestamp};
use serde::Serialize;
use std::thread;

/// A response as a peer may encode it, with any errno value at all.
#[derive(Serialize)]
struct RawResponse {
    id: u64,
    result: Result<Reply, i32>,
}

/// What a server sends, as a peer may encode it: the same variants as
/// `ServerMessage`, an answer first.
#[derive(Serialize)]
enum RawMessage {
    Response(RawResponse),
}

fn entry(name: &str) -> DirEntry {
    DirEntry {
        name: name.as_bytes().to_vec(),
        attr: Attr::blank(FileKind::File),
    }
}

fn root() -> RelPath {
    RelPath::root()
}

#[test]
fn an_errno_the_kernel_would_refuse_arrives_as_eio() {
    const SENT: [i32; 5] = [600, 512, 0, -3, libc::ENOSPC];
    let addr = ferry_peer(|mut stream| {
        for errno in SENT {
            let Some(request) = read_request(&mut stream) else {
                return;
            };
            let raw = RawMessage::Response(RawResponse {
                id: request.id,
                result: Err(errno),
            });
            let _ = frame::write_frame(&mut stream, &raw);
        }
        let _ = read_request(&mut stream);
    });
    let client = connect(addr, PATIENCE);
    for errno in SENT {
        let got = client.call(&me(), Op::Stat { path: root() });
        let expected = if errno == libc::ENOSPC {
            Errno::ENOSPC
        } else {
            Errno::EIO
        };
        assert_eq!(got, Err(expected), "the server sent {errno}");
        assert!(got.unwrap_err().code() <= ferry_common::errno::MAX_ERRNO);
    }
}

#[test]
fn a_listing_that_always_says_more_stops_at_its_limit() {
    let addr = ferry_peer(|mut stream| {
        let mut next = 0usize;
        while let Some(request) = read_request(&mut stream) {
            let entries = (next..next + READDIR_PAGE)
                .map(|i| entry(&format!("n{i}")))
                .collect();
            next += READDIR_PAGE;
            answer(
                &mut stream,
                request.id,
                Ok(Reply::Listing { entries, cursor: 1 }),
            );
        }
    });
    let client = connect(addr, PATIENCE);
    assert_eq!(client.list_dir(&me(), &root()), Err(Errno::EFBIG));
    let pages = client
        .stats()
        .sent_by_kind()
        .iter()
        .find(|(op, _)| *op == "list")
        .map_or(0, |x| x.1);
    assert_eq!(pages as usize, listing::MAX_ENTRIES / READDIR_PAGE + 1);
}

#[test]
fn a_listing_that_trickles_forever_ends_at_its_deadline() {
    let addr = ferry_peer(|mut stream| {
        let mut next = 0;
        while let Some(request) = read_request(&mut stream) {
            thread::sleep(Duration::from_millis(20));
            next += 1;
            let page = Reply::Listing {
                entries: vec![entry(&format!("n{next}"))],
                cursor: 1,
            };
            answer(&mut stream, request.id, Ok(page));
        }
    });
    // Each page comes well within the timeout; the listing as a whole gets
    // FSYNC_TIMEOUT_FACTOR of them.
    let timeout = Duration::from_millis(100);
    let client = connect(addr, timeout);
    let started = Instant::now();
    assert_eq!(client.list_dir(&me(), &root()), Err(Errno::ETIMEDOUT));
    let took = started.elapsed();
    assert!(took >= timeout * FSYNC_TIMEOUT_FACTOR, "{took:?}");
    assert!(took < PATIENCE, "{took:?}");
}

#[test]
fn repeated_and_impossible_names_never_reach_the_caller() {
    let addr = ferry_peer(|mut stream| {
        let pages = [
            (vec!["a", "b", "a", "../x", ".", "", "x/y"], true),
            (vec!["b", "c"], false),
        ];
        for (names, more) in pages {
            let Some(request) = read_request(&mut stream) else {
                return;
            };
            let entries = names.into_iter().map(entry).collect();
            let cursor = u64::from(more);
            answer(
                &mut stream,
                request.id,
                Ok(Reply::Listing { entries, cursor }),
            );
        }
        let _ = read_request(&mut stream);
    });
    let client = connect(addr, PATIENCE);
    let names: Vec<Vec<u8>> = client
        .list_dir(&me(), &root())
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

/// Attributes no honest file has: times at both ends of the range and before
/// 1970, sizes and counts at their maximum, every mode bit.
fn outlandish(name: &str, secs: i64) -> DirEntry {
    let mut attr = Attr::blank(FileKind::File);
    let t = Timestamp {
        secs,
        nanos: u32::MAX,
    };
    (attr.atime, attr.mtime, attr.ctime) = (t, t, t);
    attr.size = u64::MAX;
    attr.blocks = u64::MAX;
    attr.nlink = u32::MAX;
    attr.perm = u16::MAX;
    DirEntry {
        name: name.as_bytes().to_vec(),
        attr,
    }
}

#[test]
fn ferry_ls_prints_any_attributes_without_panicking() {
    let addr = ferry_peer(|mut stream| {
        while let Some(request) = read_request(&mut stream) {
            let reply = match request.op {
                Op::Stat { .. } => Reply::Attr(Attr::blank(FileKind::Directory)),
                Op::List { .. } => Reply::Listing {
                    entries: vec![
                        outlandish("ancient", i64::MIN),
                        outlandish("before-1970", -86_400 * 365 * 30),
                        outlandish("far-future", i64::MAX),
                    ],
                    cursor: 0,
                },
                _ => return,
            };
            answer(&mut stream, request.id, Ok(reply));
        }
    });
    let mut out = Vec::new();
    crate::cli::ls(&addr.to_string(), &ConnectOptions::insecure(), "", &mut out)
        .expect("a listing");
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].contains("1940-01-") && lines[1].ends_with(" before-1970"),
        "{out}"
    );
    assert!(
        lines.iter().all(|l| l.contains(&u64::MAX.to_string())),
        "{out}"
    );
}

#[test]
fn ferry_get_of_a_file_shorter_than_announced_ends_where_the_data_does() {
    let addr = ferry_peer(|mut stream| {
        while let Some(request) = read_request(&mut stream) {
            let reply = match request.op {
                Op::Open { .. } => {
                    let mut attr = Attr::blank(FileKind::File);
                    attr.size = u64::MAX;
                    Reply::Opened { handle: 1, attr }
                }
                Op::Read { offset: 0, .. } => Reply::Data(b"short".to_vec()),
                Op::Read { .. } => Reply::Data(Vec::new()),
                Op::Close { .. } => Reply::Done,
                _ => return,
            };
            answer(&mut stream, request.id, Ok(reply));
        }
    });
    let dir = tempfile::tempdir().expect("a temp dir");
    let dest = dir.path().join("got");
    let (tx, rx) = mpsc::channel();
    let addr = addr.to_string();
    let dest_for_get = dest.clone();
    thread::spawn(move || {
        let _ = tx.send(
            crate::cli::get(
                &addr,
                &ConnectOptions::insecure(),
                "f",
                Some(dest_for_get.as_path()),
            )
            .map_err(|e| e.0),
        );
    });
    let got = received(&rx).expect("the download ends");
    assert_eq!(got, dest);
    assert_eq!(std::fs::read(&dest).unwrap(), b"short");
}
