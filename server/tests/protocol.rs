//! The server over a real TCP connection: the handshake, hostile input,
//! pipelining, read-only exports and confinement, byte for byte as a client sends them.
//!
//! These servers run `--insecure` (plaintext, no authentication), so that the
//! protocol can be written and read byte for byte; `security.rs` tests TLS and
//! authentication, in front of the same protocol.

use ferry_common::frame::{self, MAX_CHUNK, MAX_FRAME};
use ferry_common::proto::{
    AttrChanges, Change, Cred, HandshakeReply, Hello, NodeId, Notice, Op, Reply, Request, Response,
    ServerMessage, Welcome, CLIENT_HANDLE, PROTOCOL_VERSION,
};
use ferry_common::proto::{
    ByteBuf, FileRead, LISTED_ENTRY_OVERHEAD, LISTING_BYTES, MAX_OPEN_DATA, READ_FILES_BYTES,
    READ_FILES_EACH, READ_FILES_NAMES,
};
use ferry_common::{Errno, FileKind, RelPath};
use ferry_server::{spawn_server, spawn_test_server, Security, ServerHandle, MAX_COPY};
use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A client speaking the protocol by hand, one request at a time unless told
/// otherwise, on behalf of this test process's user.
struct Client {
    stream: TcpStream,
    next_id: u64,
    /// Notices that came while waiting for answers.
    notices: Vec<Notice>,
}

/// The answer in a frame from the server, which must be one.
fn response(payload: &[u8]) -> Response {
    match frame::decode(payload).unwrap() {
        ServerMessage::Response(response) => response,
        other => panic!("not an answer: {other:?}"),
    }
}

/// The credential of this test process: what a client run by it claims.
fn me() -> Cred {
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Cred {
        uid,
        gid,
        groups: Vec::new(),
    }
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client {
            stream,
            next_id: 1,
            notices: Vec::new(),
        }
    }

    fn hello(&mut self, hello: &Hello) -> HandshakeReply {
        frame::write_frame(&mut self.stream, hello).unwrap();
        let payload = frame::read_frame(&mut self.stream)
            .unwrap()
            .expect("a handshake reply");
        frame::decode(&payload).unwrap()
    }

    fn welcomed(addr: SocketAddr) -> (Client, Welcome) {
        let mut client = Client::connect(addr);
        match client.hello(&Hello::new()) {
            HandshakeReply::Welcome(welcome) => (client, welcome),
            other => panic!("not welcome: {other:?}"),
        }
    }

    fn call(&mut self, op: Op) -> Result<Reply, Errno> {
        self.call_as(me(), op)
    }

    /// [`call`](Self::call), claiming to be `cred`.
    fn call_as(&mut self, cred: Cred, op: Op) -> Result<Reply, Errno> {
        let id = self.next_id;
        self.next_id += 1;
        frame::write_frame(&mut self.stream, &Request { id, cred, op }).unwrap();
        loop {
            let payload = frame::read_frame(&mut self.stream)
                .unwrap()
                .expect("a response");
            match frame::decode(&payload).unwrap() {
                ServerMessage::Response(response) => {
                    assert_eq!(response.id, id);
                    return response.result;
                }
                ServerMessage::Notice(notice) => self.notices.push(notice),
            }
        }
    }

    /// Sends `ops` all at once, then reads their answers (in whatever order
    /// they come), returned in the order of `ops`.
    fn pipeline(&mut self, ops: Vec<Op>) -> Vec<Result<Reply, Errno>> {
        let first = self.next_id;
        for op in ops {
            let id = self.next_id;
            self.next_id += 1;
            let cred = me();
            frame::write_frame(&mut self.stream, &Request { id, cred, op }).unwrap();
        }
        let mut answers = HashMap::new();
        while answers.len() < (self.next_id - first) as usize {
            let payload = frame::read_frame(&mut self.stream)
                .unwrap()
                .expect("a response");
            match frame::decode(&payload).unwrap() {
                ServerMessage::Response(response) => {
                    answers.insert(response.id, response.result);
                }
                ServerMessage::Notice(notice) => self.notices.push(notice),
            }
        }
        (first..self.next_id)
            .map(|id| answers.remove(&id).expect("an answer to every request"))
            .collect()
    }

    /// The changes of the next notices: those that came already, or the next
    /// one to arrive (within the read timeout).
    fn next_changes(&mut self) -> Vec<Change> {
        if self.notices.is_empty() {
            let payload = frame::read_frame(&mut self.stream)
                .unwrap()
                .expect("a notice");
            match frame::decode(&payload).unwrap() {
                ServerMessage::Notice(notice) => self.notices.push(notice),
                other => panic!("not a notice: {other:?}"),
            }
        }
        let mut changes = Vec::new();
        for notice in self.notices.drain(..) {
            match notice {
                Notice::Changed(c) => changes.extend(c),
                other => panic!("unexpected {other:?}"),
            }
        }
        changes
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        // The server may already have closed; that is what the tests look for next.
        let _ = self.stream.write_all(bytes);
    }

    /// Asserts that the server closes the connection (EOF or reset), promptly.
    fn assert_closed(mut self) {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the connection was not closed: {e}"),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

fn p(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

/// A path with any bytes, bypassing the checks, as a hostile client can send it.
fn raw(bytes: &[u8]) -> RelPath {
    let encoded = frame::encode(&bytes.to_vec()).unwrap();
    frame::decode(&encoded[4..]).unwrap()
}

/// A 3 MiB file whose byte at offset `i` is `pattern(i)`.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// `tmp/export` (with `big`, `file`, the symlinks `up -> ..` and `out -> ../outside`)
/// beside `tmp/outside/secret`, and a server for the export.
fn setup(read_only: bool) -> (TempDir, ServerHandle) {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    fs::create_dir(&export).unwrap();
    fs::create_dir(tmp.path().join("outside")).unwrap();
    fs::write(tmp.path().join("outside/secret"), "top secret").unwrap();
    fs::write(export.join("file"), "hello").unwrap();
    let big: Vec<u8> = (0..3 * MAX_CHUNK as u64).map(pattern).collect();
    fs::write(export.join("big"), big).unwrap();
    symlink("..", export.join("up")).unwrap();
    symlink("../outside", export.join("out")).unwrap();
    // Root here is root on the server (--no-root-squash): these tests are
    // about the protocol, not identities (privilege.rs is).
    let mut config = ferry_server::test_config(&export, Security::Insecure);
    config.read_only = read_only;
    let server = spawn_server(config).unwrap();
    (tmp, server)
}

#[test]
fn a_ferry_client_is_welcomed() {
    let (_tmp, server) = setup(false);
    let (mut client, welcome) = Client::welcomed(server.addr());
    assert_eq!(welcome.version, PROTOCOL_VERSION);
    assert_eq!(welcome.max_chunk, MAX_CHUNK);
    assert!(!welcome.read_only);
    assert_eq!(welcome.root.kind, FileKind::Directory);
    match client.call(Op::Stat { path: p("file") }) {
        Ok(Reply::Attr(attr)) => assert_eq!((attr.kind, attr.size), (FileKind::File, 5)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(client.call(Op::StatFs), Ok(Reply::StatFs(_))));
    assert_eq!(
        client.call(Op::Stat { path: p("missing") }),
        Err(Errno::ENOENT)
    );
}

/// A server with a default export (`main/`) and one named `docs` (`docs/`,
/// holding `manuals/guide` and `file`), beside `outside/secret`.
fn named_exports() -> (TempDir, ServerHandle) {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("main")).unwrap();
    fs::create_dir_all(tmp.path().join("docs/manuals")).unwrap();
    fs::create_dir(tmp.path().join("outside")).unwrap();
    fs::write(tmp.path().join("outside/secret"), "top secret").unwrap();
    fs::write(tmp.path().join("docs/manuals/guide"), "read me").unwrap();
    fs::write(tmp.path().join("docs/file"), "x").unwrap();
    let mut config = ferry_server::test_config(&tmp.path().join("main"), Security::Insecure);
    config.exports = vec![("docs".into(), tmp.path().join("docs"))];
    let server = spawn_server(config).unwrap();
    (tmp, server)
}

fn hello_for(export: Option<&str>, subtree: RelPath) -> Hello {
    Hello {
        export: export.map(str::to_string),
        subtree,
        ..Hello::new()
    }
}

#[test]
fn a_client_is_served_the_export_and_directory_it_names() {
    let (tmp, server) = named_exports();
    let mut client = Client::connect(server.addr());
    let welcome = match client.hello(&hello_for(Some("docs"), p("manuals"))) {
        HandshakeReply::Welcome(w) => w,
        other => panic!("{other:?}"),
    };
    let manuals = fs::metadata(tmp.path().join("docs/manuals")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(welcome.root.ino, manuals.ino());
    // Paths are relative to docs/manuals, and nothing above it is reachable.
    match client.call(Op::Stat { path: p("guide") }) {
        Ok(Reply::Attr(attr)) => assert_eq!(attr.size, 7),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.call(Op::Stat { path: p("file") }),
        Err(Errno::ENOENT)
    );
    for hostile in [&b".."[..], b"../file", b"../../outside/secret"] {
        assert!(client.call(Op::Stat { path: raw(hostile) }).is_err());
        assert!(client
            .call(Op::Open {
                path: raw(hostile),
                flags: libc::O_RDONLY
            })
            .is_err());
    }
    // The default export is a different directory.
    let mut other = Client::connect(server.addr());
    assert!(matches!(
        other.hello(&hello_for(None, RelPath::root())),
        HandshakeReply::Welcome(_)
    ));
    assert_eq!(other.call(Op::Stat { path: p("file") }), Err(Errno::ENOENT));
}

#[test]
fn unknown_exports_and_bad_directories_are_refused_in_words() {
    let (_tmp, server) = named_exports();
    let refused = |hello: Hello| {
        let mut client = Client::connect(server.addr());
        match client.hello(&hello) {
            HandshakeReply::Refused { message } => {
                client.assert_closed();
                message
            }
            other => panic!("{other:?}"),
        }
    };
    let message = refused(hello_for(Some("home"), RelPath::root()));
    assert!(message.contains("no export named \"home\""), "{message}");
    assert!(message.contains("docs"), "{message}");
    let message = refused(hello_for(Some("docs"), p("file")));
    assert!(message.contains("not a directory"), "{message}");
    let message = refused(hello_for(Some("docs"), p("absent")));
    assert!(message.contains("no such directory"), "{message}");
    // A subtree is a wire path like any other: `..` gets nowhere.
    let message = refused(hello_for(Some("docs"), raw(b"../outside")));
    assert!(message.contains("cannot serve"), "{message}");
    let message = refused(hello_for(None, raw(b"..")));
    assert!(message.contains("cannot serve"), "{message}");
}

#[test]
fn a_wrong_magic_is_refused() {
    let (_tmp, server) = setup(false);
    let mut client = Client::connect(server.addr());
    let hello = Hello {
        magic: *b"notferry",
        ..Hello::new()
    };
    match client.hello(&hello) {
        HandshakeReply::Refused { message } => assert!(message.contains("ferry"), "{message}"),
        other => panic!("{other:?}"),
    }
    client.assert_closed();
}

#[test]
fn a_wrong_version_is_refused() {
    let (_tmp, server) = setup(false);
    let mut client = Client::connect(server.addr());
    let hello = Hello {
        version: PROTOCOL_VERSION + 1,
        ..Hello::new()
    };
    match client.hello(&hello) {
        HandshakeReply::Refused { message } => assert!(message.contains("version"), "{message}"),
        other => panic!("{other:?}"),
    }
    client.assert_closed();
}

#[test]
fn garbage_closes_only_its_own_connection() {
    let (_tmp, server) = setup(false);
    let (mut bystander, _) = Client::welcomed(server.addr());

    // Before the handshake: "GET " read as a length is far over the limit.
    let mut http = Client::connect(server.addr());
    http.send_raw(b"GET / HTTP/1.1\r\nHost: ferry\r\n\r\n");
    http.assert_closed();

    // A handshake that does not decode.
    let mut bad_hello = Client::connect(server.addr());
    let mut frame = 8u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&[0xff; 8]);
    bad_hello.send_raw(&frame);
    bad_hello.assert_closed();

    // After the handshake: a well-sized frame full of noise.
    let (mut noisy, _) = Client::welcomed(server.addr());
    let mut frame = 64u32.to_le_bytes().to_vec();
    frame.extend((0..64u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 0x80));
    noisy.send_raw(&frame);
    noisy.assert_closed();

    // An operation number no server knows.
    let (mut unknown, _) = Client::welcomed(server.addr());
    unknown.send_raw(&[2, 0, 0, 0, 1, 200]);
    unknown.assert_closed();

    assert!(matches!(
        bystander.call(Op::Stat { path: p("file") }),
        Ok(Reply::Attr(_))
    ));
    let (mut newcomer, _) = Client::welcomed(server.addr());
    assert!(matches!(
        newcomer.call(Op::Stat { path: p("file") }),
        Ok(Reply::Attr(_))
    ));
}

#[test]
fn an_oversized_frame_is_refused_without_waiting_for_it() {
    let (_tmp, server) = setup(false);
    for len in [u32::MAX, (MAX_FRAME + 1) as u32] {
        // Nothing but the header is sent: the server must not wait for (or
        // allocate) the announced gigabytes before closing.
        let (mut client, _) = Client::welcomed(server.addr());
        client.send_raw(&len.to_le_bytes());
        client.assert_closed();

        let mut early = Client::connect(server.addr());
        early.send_raw(&len.to_le_bytes());
        early.assert_closed();
    }
    let (mut client, _) = Client::welcomed(server.addr());
    assert!(client.call(Op::StatFs).is_ok());
}

#[test]
fn a_truncated_frame_closes_the_connection() {
    let (_tmp, server) = setup(false);
    let request = frame::encode(&Request {
        id: 1,
        cred: me(),
        op: Op::Stat { path: p("file") },
    })
    .unwrap();
    for cut in [1, 3, 4, request.len() - 1] {
        let (mut client, _) = Client::welcomed(server.addr());
        client.send_raw(&request[..cut]);
        client.stream.shutdown(Shutdown::Write).unwrap();
        client.assert_closed();
    }
    let mut client = Client::connect(server.addr());
    let hello = frame::encode(&Hello::new()).unwrap();
    client.send_raw(&hello[..hello.len() - 2]);
    client.stream.shutdown(Shutdown::Write).unwrap();
    client.assert_closed();
}

/// Somewhere in the 3 MiB file, different for each request.
fn chunk_offset(id: u64) -> u64 {
    id * 40_009 % (3 * MAX_CHUNK as u64)
}

#[test]
fn pipelined_requests_are_all_answered() {
    let (tmp, server) = setup(false);
    let (mut client, _) = Client::welcomed(server.addr());
    let handle = match client.call(Op::Open {
        path: p("big"),
        flags: libc::O_RDONLY,
    }) {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("{other:?}"),
    };
    let scratch = match client.call(Op::Create {
        path: p("scratch"),
        flags: libc::O_RDWR | libc::O_EXCL,
        mode: 0o644,
    }) {
        Ok(Reply::Created { handle, .. }) => handle,
        other => panic!("{other:?}"),
    };

    // Requests of every speed, sent without waiting for any answer; a writer
    // thread sends while this one reads, as a real client does.
    const N: u64 = 400;
    let op_for = move |id: u64| -> Op {
        match id % 5 {
            0 => Op::Read {
                handle,
                offset: chunk_offset(id),
                len: MAX_CHUNK,
            },
            1 => Op::Stat { path: p("file") },
            2 => Op::Write {
                handle: scratch,
                offset: id * 16,
                data: id.to_le_bytes().repeat(2),
            },
            3 => Op::ReadDir {
                path: RelPath::root(),
                start: 0,
            },
            _ => Op::Read {
                handle,
                offset: id,
                len: 17,
            },
        }
    };
    let mut sender = client.stream.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut buf = Vec::new();
        for id in 1000..1000 + N {
            let request = Request {
                id,
                cred: me(),
                op: op_for(id),
            };
            frame::encode_into(&request, &mut buf).unwrap();
            if buf.len() > 1 << 16 {
                sender.write_all(&buf).unwrap();
                buf.clear();
            }
        }
        sender.write_all(&buf).unwrap();
    });
    let mut answers = HashMap::new();
    let mut order = Vec::new();
    for _ in 0..N {
        let payload = frame::read_frame(&mut client.stream)
            .unwrap()
            .expect("a response");
        let response = response(&payload);
        order.push(response.id);
        assert!(
            answers.insert(response.id, response.result).is_none(),
            "answered twice"
        );
    }
    writer.join().unwrap();
    for id in 1000..1000 + N {
        let result = answers
            .remove(&id)
            .unwrap_or_else(|| panic!("no answer for {id}"));
        match (id % 5, result) {
            (0, Ok(Reply::Data(data))) => {
                let offset = chunk_offset(id);
                let expected = (3 * MAX_CHUNK as u64 - offset).min(MAX_CHUNK as u64);
                assert_eq!(data.len() as u64, expected);
                assert!(data
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == pattern(offset + i as u64)));
            }
            (1, Ok(Reply::Attr(attr))) => assert_eq!(attr.size, 5),
            (2, Ok(Reply::Written(n))) => assert_eq!(n, 16),
            (3, Ok(Reply::Entries { entries, more })) => assert!(entries.len() == 5 && !more),
            (4, Ok(Reply::Data(data))) => {
                assert_eq!(data, (id..id + 17).map(pattern).collect::<Vec<_>>())
            }
            (_, other) => panic!("request {id}: {other:?}"),
        }
    }
    let mut sorted = order.clone();
    sorted.sort();
    if order == sorted {
        eprintln!("note: every answer came in request order this time");
    }
    // Every write landed where it was aimed.
    let written = fs::read(tmp.path().join("export/scratch")).unwrap();
    for id in (1000..1000 + N).filter(|id| id % 5 == 2) {
        let at = (id * 16) as usize;
        assert_eq!(&written[at..at + 16], &id.to_le_bytes().repeat(2)[..]);
    }
}

#[test]
fn reads_are_capped_at_one_chunk_and_exact_at_the_end() {
    let (_tmp, server) = setup(false);
    let (mut client, _) = Client::welcomed(server.addr());
    let handle = match client.call(Op::Open {
        path: p("big"),
        flags: libc::O_RDONLY,
    }) {
        Ok(Reply::Opened { handle, attr }) => {
            assert_eq!(attr.size, 3 * MAX_CHUNK as u64);
            handle
        }
        other => panic!("{other:?}"),
    };
    let read = |client: &mut Client, offset: u64, len: u32| match client.call(Op::Read {
        handle,
        offset,
        len,
    }) {
        Ok(Reply::Data(data)) => data,
        other => panic!("{other:?}"),
    };
    assert_eq!(read(&mut client, 0, u32::MAX).len(), MAX_CHUNK as usize);
    let end = 3 * MAX_CHUNK as u64;
    assert_eq!(
        read(&mut client, end - 10, 100),
        (end - 10..end).map(pattern).collect::<Vec<_>>()
    );
    assert_eq!(read(&mut client, end, 100), b"");
    assert_eq!(read(&mut client, 1 << 40, 100), b"");
    assert!(client
        .call(Op::Read {
            handle,
            offset: u64::MAX,
            len: 1
        })
        .is_err());
    // Writes through a handle opened read-only fail; closed handles are gone.
    assert!(client
        .call(Op::Write {
            handle,
            offset: 0,
            data: vec![1]
        })
        .is_err());
    assert_eq!(client.call(Op::Close { handle }), Ok(Reply::Done));
    assert_eq!(client.call(Op::Close { handle }), Err(Errno::EBADF));
    assert_eq!(
        client.call(Op::Read {
            handle,
            offset: 0,
            len: 1
        }),
        Err(Errno::EBADF)
    );
    assert_eq!(
        client.call(Op::Fsync {
            handle: 999,
            datasync: true
        }),
        Err(Errno::EBADF)
    );
}

#[test]
fn a_full_chunk_travels_both_ways() {
    let (tmp, server) = setup(false);
    let (mut client, _) = Client::welcomed(server.addr());
    let handle = match client.call(Op::Create {
        path: p("chunk"),
        flags: libc::O_RDWR,
        mode: 0o600,
    }) {
        Ok(Reply::Created { handle, .. }) => handle,
        other => panic!("{other:?}"),
    };
    let data: Vec<u8> = (0..MAX_CHUNK as u64).map(|i| pattern(i * 7)).collect();
    let written = client.call(Op::Write {
        handle,
        offset: 10,
        data: data.clone(),
    });
    assert_eq!(written, Ok(Reply::Written(MAX_CHUNK)));
    assert_eq!(
        client.call(Op::Fsync {
            handle,
            datasync: false
        }),
        Ok(Reply::Done)
    );
    assert_eq!(
        client.call(Op::Read {
            handle,
            offset: 10,
            len: MAX_CHUNK
        }),
        Ok(Reply::Data(data.clone()))
    );
    // Truncation through the handle.
    let changes = AttrChanges {
        size: Some(3),
        ..AttrChanges::default()
    };
    match client.call(Op::SetAttr {
        path: p("chunk"),
        handle: Some(handle),
        changes,
    }) {
        Ok(Reply::Attr(attr)) => assert_eq!(attr.size, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fs::read(tmp.path().join("export/chunk")).unwrap(),
        vec![0; 3]
    );
}

/// `CreateAs`: the file is registered under the handle the client chose,
/// which must carry the client bit and not be open.
#[test]
fn a_file_created_as_a_chosen_handle_is_reached_by_it() {
    let (tmp, server) = setup(false);
    let (mut client, _) = Client::welcomed(server.addr());
    let create_as = |name: &str, handle: u64| Op::CreateAs {
        path: p(name),
        flags: libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
        mode: 0o640,
        handle,
    };
    let chosen = CLIENT_HANDLE | 5;
    // Writes sent right behind the create, before its answer is read, go
    // through the chosen handle: name operations run in arrival order.
    let answers = client.pipeline(vec![
        create_as("mine", chosen),
        Op::Write {
            handle: chosen,
            offset: 0,
            data: b"written at once".to_vec(),
        },
        Op::Close { handle: chosen },
    ]);
    match &answers[0] {
        Ok(Reply::Created { handle, attr, .. }) => {
            assert_eq!(*handle, chosen);
            assert_eq!(attr.perm & 0o7777, 0o640);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(answers[1], Ok(Reply::Written(15)));
    assert_eq!(answers[2], Ok(Reply::Done));
    assert_eq!(
        fs::read(tmp.path().join("export/mine")).unwrap(),
        b"written at once"
    );
    // Without the client bit (a number the server could hand out), or the
    // bit alone: refused, and nothing is made.
    for handle in [5, 1 << 62, CLIENT_HANDLE] {
        assert_eq!(client.call(create_as("bad", handle)), Err(Errno::EINVAL));
    }
    assert!(!tmp.path().join("export/bad").exists());
    // Taken while open: refused before anything is made. Numbers need not
    // come in order (a mount's threads send them concurrently).
    let open = CLIENT_HANDLE | 10;
    assert!(matches!(
        client.call(create_as("ten", open)),
        Ok(Reply::Created { .. })
    ));
    assert_eq!(client.call(create_as("again", open)), Err(Errno::EEXIST));
    assert!(!tmp.path().join("export/again").exists());
    assert!(matches!(
        client.call(create_as("seven", CLIENT_HANDLE | 7)),
        Ok(Reply::Created { .. })
    ));
    // The server's own handles never carry the bit, and both kinds work
    // side by side.
    match client.call(Op::Create {
        path: p("theirs"),
        flags: libc::O_RDWR,
        mode: 0o600,
    }) {
        Ok(Reply::Created { handle, .. }) => assert_eq!(handle & CLIENT_HANDLE, 0),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.call(Op::Write {
            handle: open,
            offset: 0,
            data: b"ten".to_vec(),
        }),
        Ok(Reply::Written(3))
    );
}

/// A handle the client chooses holds a descriptor of the same budget as
/// any other.
#[test]
fn files_created_as_chosen_handles_count_in_the_descriptor_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = ferry_server::test_config(tmp.path(), Security::Insecure);
    config.max_descriptors = Some(4);
    let server = spawn_server(config).unwrap();
    let (mut client, _) = Client::welcomed(server.addr());
    let mut refused = None;
    for i in 1..=10u64 {
        let answer = client.call(Op::CreateAs {
            path: p(&format!("f{i}")),
            flags: libc::O_CREAT | libc::O_WRONLY,
            mode: 0o644,
            handle: CLIENT_HANDLE | i,
        });
        if let Err(e) = answer {
            assert_eq!(e, Errno::new(libc::EMFILE));
            assert!(!tmp.path().join(format!("f{i}")).exists());
            refused = Some(i);
            break;
        }
    }
    let refused = refused.expect("a budget of 4 descriptors refuses a tenth open file");
    // Closing one makes room again.
    assert_eq!(
        client.call(Op::Close {
            handle: CLIENT_HANDLE | 1
        }),
        Ok(Reply::Done)
    );
    assert!(matches!(
        client.call(Op::CreateAs {
            path: p("after"),
            flags: libc::O_CREAT | libc::O_WRONLY,
            mode: 0o644,
            handle: CLIENT_HANDLE | (refused + 1),
        }),
        Ok(Reply::Created { .. })
    ));
}

#[test]
fn a_read_only_export_refuses_every_change() {
    let (tmp, server) = setup(true);
    let (mut client, welcome) = Client::welcomed(server.addr());
    assert!(welcome.read_only);
    let before = fs::read_dir(tmp.path().join("export")).unwrap().count();
    let mutations = [
        Op::Create {
            path: p("new"),
            flags: libc::O_WRONLY,
            mode: 0o644,
        },
        Op::Open {
            path: p("file"),
            flags: libc::O_WRONLY,
        },
        Op::Open {
            path: p("file"),
            flags: libc::O_RDWR,
        },
        Op::Open {
            path: p("file"),
            flags: libc::O_RDONLY | libc::O_TRUNC,
        },
        Op::OpenRead {
            path: p("file"),
            flags: libc::O_RDWR,
            len: 100,
        },
        Op::Mkdir {
            path: p("dir"),
            mode: 0o755,
        },
        Op::Mknod {
            path: p("fifo"),
            mode: libc::S_IFIFO | 0o644,
            rdev: 0,
        },
        Op::Symlink {
            path: p("link"),
            target: b"file".to_vec(),
        },
        Op::Link {
            existing: p("file"),
            path: p("hard"),
        },
        Op::Unlink { path: p("file") },
        Op::Rmdir { path: p("up") },
        Op::Rename {
            from: p("file"),
            to: p("moved"),
            flags: 0,
        },
        Op::SetAttr {
            path: p("file"),
            handle: None,
            changes: AttrChanges {
                mode: Some(0o777),
                ..AttrChanges::default()
            },
        },
        Op::Write {
            handle: 1,
            offset: 0,
            data: b"x".to_vec(),
        },
        Op::Fallocate {
            handle: 1,
            offset: 0,
            len: 10,
            mode: 0,
        },
        Op::CopyFileRange {
            handle_in: 1,
            offset_in: 0,
            handle_out: 1,
            offset_out: 10,
            len: 10,
        },
    ];
    for op in mutations {
        assert_eq!(client.call(op.clone()), Err(Errno::EROFS), "{op:?}");
    }
    assert_eq!(
        fs::read_dir(tmp.path().join("export")).unwrap().count(),
        before
    );
    assert_eq!(fs::read(tmp.path().join("export/file")).unwrap(), b"hello");
    let handle = match client.call(Op::Open {
        path: p("file"),
        flags: libc::O_RDONLY,
    }) {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        client.call(Op::Read {
            handle,
            offset: 0,
            len: 100
        }),
        Ok(Reply::Data(b"hello".to_vec()))
    );
    let listing = client.call(Op::ReadDir {
        path: RelPath::root(),
        start: 0,
    });
    assert!(matches!(listing, Ok(Reply::Entries { .. })), "{listing:?}");
    let listing = client.call(Op::List {
        path: RelPath::root(),
        cursor: 0,
    });
    assert!(matches!(listing, Ok(Reply::Listing { .. })), "{listing:?}");
    let opened = client.call(Op::OpenRead {
        path: p("file"),
        flags: libc::O_RDONLY,
        len: 100,
    });
    assert!(
        matches!(&opened, Ok(Reply::OpenedWithData { data, .. }) if data == b"hello"),
        "{opened:?}"
    );
}

#[test]
fn requests_cannot_leave_the_export() {
    let (tmp, server) = setup(false);
    let secret = tmp.path().join("outside/secret");
    let (mut client, _) = Client::welcomed(server.addr());
    let chmod = AttrChanges {
        mode: Some(0o777),
        ..AttrChanges::default()
    };
    let escapes = [
        Op::Stat {
            path: p("up/outside/secret"),
        },
        Op::Open {
            path: p("out/secret"),
            flags: libc::O_RDONLY,
        },
        Op::Open {
            path: raw(b"../outside/secret"),
            flags: libc::O_RDONLY,
        },
        Op::Open {
            path: raw(b"/etc/passwd"),
            flags: libc::O_RDONLY,
        },
        Op::ReadDir {
            path: p("out"),
            start: 0,
        },
        Op::ReadDir {
            path: raw(b".."),
            start: 0,
        },
        Op::List {
            path: p("out"),
            cursor: 0,
        },
        Op::List {
            path: raw(b".."),
            cursor: 0,
        },
        Op::OpenRead {
            path: p("out/secret"),
            flags: libc::O_RDONLY,
            len: 100,
        },
        Op::OpenRead {
            path: raw(b"../outside/secret"),
            flags: libc::O_RDONLY,
            len: 100,
        },
        Op::Create {
            path: raw(b"../outside/new"),
            flags: libc::O_RDWR,
            mode: 0o644,
        },
        Op::Create {
            path: p("up/outside/new"),
            flags: libc::O_RDWR,
            mode: 0o644,
        },
        Op::SetAttr {
            path: p("out/secret"),
            handle: None,
            changes: chmod,
        },
        Op::SetAttr {
            path: raw(b"up/../../outside/secret"),
            handle: None,
            changes: chmod,
        },
        Op::Rename {
            from: p("file"),
            to: p("out/stolen"),
            flags: 0,
        },
        Op::Rename {
            from: p("out/secret"),
            to: p("stolen"),
            flags: 0,
        },
        Op::Link {
            existing: p("up/outside/secret"),
            path: p("stolen"),
        },
        Op::Unlink {
            path: p("out/secret"),
        },
        Op::Symlink {
            path: raw(b"file\0x"),
            target: b"x".to_vec(),
        },
    ];
    for op in escapes {
        assert!(client.call(op.clone()).is_err(), "{op:?}");
    }
    // A symlink pointing out can be made and read back, never followed.
    let evil = Op::Symlink {
        path: p("evil"),
        target: b"../outside/secret".to_vec(),
    };
    assert!(matches!(client.call(evil), Ok(Reply::Entry { .. })));
    assert_eq!(
        client.call(Op::ReadLink { path: p("evil") }),
        Ok(Reply::Target(b"../outside/secret".to_vec()))
    );
    assert_eq!(
        client.call(Op::Open {
            path: p("evil"),
            flags: libc::O_RDONLY
        }),
        Err(Errno::ELOOP)
    );
    assert_eq!(fs::read(&secret).unwrap(), b"top secret");
    let mut outside: Vec<_> = fs::read_dir(tmp.path().join("outside"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    outside.sort();
    assert_eq!(outside, ["secret"]);
    assert!(!tmp.path().join("export/stolen").exists());
}

/// Lists `path` through `Op::List` to its end: the names in the server's
/// order, and the cursors of the replies after the first.
fn list_all(client: &mut Client, path: &RelPath) -> (Vec<Vec<u8>>, Vec<u64>) {
    let mut names = Vec::new();
    let mut cursors = Vec::new();
    let mut cursor = 0;
    loop {
        match client.call(Op::List {
            path: path.clone(),
            cursor,
        }) {
            Ok(Reply::Listing {
                entries,
                cursor: next,
            }) => {
                names.extend(entries.into_iter().map(|e| e.name));
                if next == 0 {
                    return (names, cursors);
                }
                assert!(cursor == 0 || next == cursor, "a listing keeps its cursor");
                cursors.push(next);
                cursor = next;
            }
            other => panic!("listing {path:?}: {other:?}"),
        }
    }
}

#[test]
fn a_listing_comes_in_one_reply_when_it_fits_and_by_cursor_when_not() {
    let (tmp, server) = setup(false);
    let (mut client, _) = Client::welcomed(server.addr());
    // The export's root fits in one reply, with nothing left open.
    let (names, cursors) = list_all(&mut client, &RelPath::root());
    let mut names: Vec<String> = names
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["big", "file", "out", "up"]);
    assert!(cursors.is_empty());
    // Long names, so that the listing outgrows one reply.
    let dir = tmp.path().join("export/many");
    fs::create_dir(&dir).unwrap();
    let name = |i: usize| format!("{i:0250}");
    let count = 2 * LISTING_BYTES / (250 + LISTED_ENTRY_OVERHEAD) + 10;
    for i in 0..count {
        fs::File::create(dir.join(name(i))).unwrap();
    }
    let (mut names, cursors) = list_all(&mut client, &p("many"));
    assert!(cursors.len() >= 2, "{} replies", cursors.len() + 1);
    names.sort();
    let expected: Vec<Vec<u8>> = (0..count).map(|i| name(i).into_bytes()).collect();
    assert_eq!(names, expected, "every name once");
    // A listing that ended, or never was, cannot be gone on with.
    for cursor in [cursors[0], 999_999] {
        assert_eq!(
            client.call(Op::List {
                path: p("many"),
                cursor
            }),
            Err(Errno::EBADF)
        );
    }
    // Nor can another user's.
    let first = match client.call(Op::List {
        path: p("many"),
        cursor: 0,
    }) {
        Ok(Reply::Listing { cursor, .. }) => cursor,
        other => panic!("{other:?}"),
    };
    assert_ne!(first, 0);
    let stranger = Cred {
        uid: me().uid + 1,
        gid: me().gid + 1,
        groups: Vec::new(),
    };
    let cursor = first;
    assert_eq!(
        client.call_as(
            stranger,
            Op::List {
                path: p("many"),
                cursor
            }
        ),
        Err(Errno::EBADF)
    );
    assert!(matches!(
        client.call(Op::List {
            path: p("many"),
            cursor
        }),
        Ok(Reply::Listing { .. })
    ));
    assert_eq!(
        client.call(Op::List {
            path: p("file"),
            cursor: 0
        }),
        Err(Errno::ENOTDIR)
    );
}

#[test]
fn an_open_for_reading_brings_the_first_bytes() {
    let (tmp, server) = setup(false);
    let (mut client, _) = Client::welcomed(server.addr());
    let open_read = |client: &mut Client, path: &str, len: u32| {
        client.call(Op::OpenRead {
            path: p(path),
            flags: libc::O_RDONLY,
            len,
        })
    };
    // A small file comes whole, with the attributes it was opened with, and
    // the handle reads like any other.
    let handle = match open_read(&mut client, "file", 128 << 10) {
        Ok(Reply::OpenedWithData { handle, attr, data }) => {
            assert_eq!(
                (attr.size, attr.kind, data.as_slice()),
                (5, FileKind::File, &b"hello"[..])
            );
            handle
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        client.call(Op::Read {
            handle,
            offset: 1,
            len: 100
        }),
        Ok(Reply::Data(b"ello".to_vec()))
    );
    assert_eq!(client.call(Op::Close { handle }), Ok(Reply::Done));
    // A large one brings what was asked for, at most MAX_OPEN_DATA.
    for (asked, got) in [
        (0, 0),
        (100_000, 100_000),
        (u32::MAX, MAX_OPEN_DATA as usize),
    ] {
        match open_read(&mut client, "big", asked) {
            Ok(Reply::OpenedWithData { attr, data, .. }) => {
                assert_eq!(attr.size, 3 * u64::from(MAX_CHUNK));
                assert_eq!(data.len(), got);
                assert!(data
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == pattern(i as u64)));
            }
            other => panic!("{other:?}"),
        }
    }
    // A directory opens without data; what cannot be opened is refused as by Open.
    fs::create_dir(tmp.path().join("export/dir")).unwrap();
    assert!(matches!(
        open_read(&mut client, "dir", 100),
        Ok(Reply::Opened { .. })
    ));
    assert_eq!(open_read(&mut client, "missing", 100), Err(Errno::ENOENT));
    assert_eq!(open_read(&mut client, "up", 100), Err(Errno::ELOOP));
}

fn names(names: &[&[u8]]) -> Vec<ByteBuf> {
    names.iter().map(|n| ByteBuf::from(n.to_vec())).collect()
}

/// A name asked for, and its bytes or its error.
type Outcome<'a> = (&'a [u8], Result<&'a [u8], Errno>);

fn files_read(reply: Result<Reply, Errno>) -> Vec<FileRead> {
    match reply {
        Ok(Reply::Files(files)) => files,
        other => panic!("{other:?}"),
    }
}

#[test]
fn files_read_together_stay_in_the_export_and_in_bounds() {
    let (tmp, server) = setup(false);
    let export = tmp.path().join("export");
    fs::create_dir(export.join("dir")).unwrap();
    fs::write(export.join("dir/inner"), "inner").unwrap();
    symlink("../file", export.join("dir/link")).unwrap();
    let (mut client, _) = Client::welcomed(server.addr());
    // Each name on its own: a file comes whole with its attributes; a
    // symlink (leading out or not), a directory, a path of several
    // components, `..` and a missing name come as errors, in order.
    let asked: &[&[u8]] = &[b"file", b"up", b"out", b"dir", b"..", b"dir/inner", b"none"];
    let files = files_read(client.call(Op::ReadFiles {
        dir: RelPath::root(),
        names: names(asked),
        max_each: 100,
    }));
    let got: Vec<Outcome<'_>> = files
        .iter()
        .map(|f| {
            (
                f.name.as_slice(),
                f.result.as_ref().map(|c| c.data.as_slice()).map_err(|e| *e),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (&b"file"[..], Ok(&b"hello"[..])),
            (b"up", Err(Errno::ELOOP)),
            (b"out", Err(Errno::ELOOP)),
            (b"dir", Err(Errno::EISDIR)),
            (b"..", Err(Errno::EINVAL)),
            (b"dir/inner", Err(Errno::EINVAL)),
            (b"none", Err(Errno::ENOENT)),
        ]
    );
    match &files[0].result {
        Ok(c) => assert_eq!((c.attr.size, c.attr.kind), (5, FileKind::File)),
        other => panic!("{other:?}"),
    }
    // A directory that leads out is not read from.
    for dir in [p("out"), p("up/outside"), raw(b"../outside")] {
        match client.call(Op::ReadFiles {
            dir,
            names: names(&[b"secret"]),
            max_each: 100,
        }) {
            Ok(Reply::Files(files)) => {
                assert!(files.iter().all(|f| f.result.is_err()), "{files:?}")
            }
            Err(_) => {}
            other => panic!("{other:?}"),
        }
    }
    // Not through a symlink within the export either.
    let files = files_read(client.call(Op::ReadFiles {
        dir: p("dir"),
        names: names(&[b"inner", b"link"]),
        max_each: 100,
    }));
    assert!(files[0].result.is_ok());
    assert_eq!(files[1].result, Err(Errno::ELOOP));
    // Bounds: each file to max_each, and READ_FILES_EACH at most...
    for (asked, got) in [(10, 10), (u32::MAX, READ_FILES_EACH as usize)] {
        let files = files_read(client.call(Op::ReadFiles {
            dir: RelPath::root(),
            names: names(&[b"big"]),
            max_each: asked,
        }));
        match &files[0].result {
            Ok(c) => {
                assert_eq!(c.data.len(), got);
                assert!(c
                    .data
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == pattern(i as u64)));
                assert_eq!(c.attr.size, 3 * u64::from(MAX_CHUNK));
            }
            other => panic!("{other:?}"),
        }
    }
    // ...the answer stops once it holds READ_FILES_BYTES...
    let many = vec![&b"big"[..]; 2 * READ_FILES_BYTES / READ_FILES_EACH as usize];
    let files = files_read(client.call(Op::ReadFiles {
        dir: RelPath::root(),
        names: names(&many),
        max_each: READ_FILES_EACH,
    }));
    let bytes: usize = files
        .iter()
        .map(|f| f.result.as_ref().map_or(0, |c| c.data.len()))
        .sum();
    assert!(files.len() < many.len(), "{} files", files.len());
    assert!(bytes >= READ_FILES_BYTES && bytes < READ_FILES_BYTES + READ_FILES_EACH as usize);
    // ...and too many names are refused.
    let too_many = vec![&b"file"[..]; READ_FILES_NAMES + 1];
    assert_eq!(
        client.call(Op::ReadFiles {
            dir: RelPath::root(),
            names: names(&too_many),
            max_each: 1,
        }),
        Err(Errno::EINVAL)
    );
    // Nothing stays open.
    assert_eq!(descriptors_on(&export.join("big")), 0);
    assert_eq!(descriptors_on(&export.join("file")), 0);
}

/// Descriptors of this process (the test server runs in it) open on `path`.
fn descriptors_on(path: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

#[test]
fn open_files_close_with_their_connection() {
    let (tmp, server) = setup(false);
    let marker = tmp.path().join("export/marker");
    fs::write(&marker, "m").unwrap();
    let (mut client, _) = Client::welcomed(server.addr());
    for _ in 0..10 {
        let opened = client.call(Op::Open {
            path: p("marker"),
            flags: libc::O_RDONLY,
        });
        assert!(matches!(opened, Ok(Reply::Opened { .. })));
    }
    assert_eq!(descriptors_on(&marker), 10);
    drop(client);
    let started = Instant::now();
    while descriptors_on(&marker) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "handles still open"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dropping_the_server_closes_its_connections() {
    let (_tmp, server) = setup(false);
    let (mut client, _) = Client::welcomed(server.addr());
    assert!(client.call(Op::StatFs).is_ok());
    let addr = server.addr();
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    client.assert_closed();
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn a_file_is_no_export_root() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let err = spawn_test_server(&file, false).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn copies_between_handles_stay_on_the_server_and_are_capped() {
    let (tmp, server) = setup(false);
    let (mut client, _) = Client::welcomed(server.addr());
    let open = |client: &mut Client, op: Op| match client.call(op) {
        Ok(Reply::Opened { handle, .. } | Reply::Created { handle, .. }) => handle,
        other => panic!("{other:?}"),
    };
    let input = open(
        &mut client,
        Op::Open {
            path: p("big"),
            flags: libc::O_RDONLY,
        },
    );
    let output = open(
        &mut client,
        Op::Create {
            path: p("copy"),
            flags: libc::O_RDWR,
            mode: 0o644,
        },
    );
    let copy = |client: &mut Client, offset: u64, len: u64| {
        client.call(Op::CopyFileRange {
            handle_in: input,
            offset_in: offset,
            handle_out: output,
            offset_out: offset,
            len,
        })
    };
    let size = 3 * u64::from(MAX_CHUNK);
    assert_eq!(copy(&mut client, 0, 1000), Ok(Reply::Written(1000)));
    // Asking for more than the file holds copies up to its end.
    assert_eq!(
        copy(&mut client, 1000, u64::MAX),
        Ok(Reply::Written((size - 1000) as u32))
    );
    assert_eq!(copy(&mut client, size, 10), Ok(Reply::Written(0)));
    let copied = fs::read(tmp.path().join("export/copy")).unwrap();
    assert_eq!(copied.len() as u64, size);
    assert!(copied
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i as u64)));
    // Unknown handles are EBADF; the read-only input cannot be allocated.
    assert_eq!(
        client.call(Op::CopyFileRange {
            handle_in: input,
            offset_in: 0,
            handle_out: 999,
            offset_out: 0,
            len: 10,
        }),
        Err(Errno::EBADF)
    );
    assert_eq!(
        client.call(Op::Fallocate {
            handle: input,
            offset: 0,
            len: 10,
            mode: 0,
        }),
        Err(Errno::EBADF)
    );
    assert_eq!(
        client.call(Op::Fallocate {
            handle: output,
            offset: size,
            len: 4096,
            mode: 0,
        }),
        Ok(Reply::Done)
    );
    assert_eq!(
        fs::metadata(tmp.path().join("export/copy")).unwrap().len(),
        size + 4096
    );
    // One request copies at most MAX_COPY; the kernel hands the application a
    // short count and it asks for the rest.
    fs::File::create(tmp.path().join("export/sparse"))
        .unwrap()
        .set_len(MAX_COPY + 4096)
        .unwrap();
    let sparse = open(
        &mut client,
        Op::Open {
            path: p("sparse"),
            flags: libc::O_RDONLY,
        },
    );
    assert_eq!(
        client.call(Op::CopyFileRange {
            handle_in: sparse,
            offset_in: 0,
            handle_out: output,
            offset_out: 0,
            len: u64::MAX,
        }),
        Ok(Reply::Written(MAX_COPY as u32))
    );
}

#[test]
fn changes_to_a_directory_come_with_its_new_attributes() {
    let (tmp, server) = setup(false);
    let (mut client, _) = Client::welcomed(server.addr());
    let dir_attr = |path: &str| {
        let md = fs::metadata(tmp.path().join("export").join(path)).unwrap();
        use std::os::unix::fs::MetadataExt;
        (
            md.ino(),
            md.nlink() as u32,
            md.mtime(),
            md.mtime_nsec() as u32,
        )
    };
    let seen = |a: &ferry_common::Attr| (a.ino, a.nlink, a.mtime.secs, a.mtime.nanos);
    match client.call(Op::Mkdir {
        path: p("d"),
        mode: 0o755,
    }) {
        Ok(Reply::Entry { attr, dir }) => {
            assert_eq!(attr.kind, FileKind::Directory);
            assert_eq!(seen(&dir), dir_attr("."));
        }
        other => panic!("{other:?}"),
    }
    match client.call(Op::Create {
        path: p("d/f"),
        flags: libc::O_WRONLY,
        mode: 0o644,
    }) {
        Ok(Reply::Created { dir, .. }) => assert_eq!(seen(&dir), dir_attr("d")),
        other => panic!("{other:?}"),
    }
    match client.call(Op::Rename {
        from: p("d/f"),
        to: p("g"),
        flags: 0,
    }) {
        Ok(Reply::DirsChanged(dirs)) => {
            let dirs: Vec<_> = dirs.iter().map(seen).collect();
            assert_eq!(dirs, vec![dir_attr("d"), dir_attr(".")]);
        }
        other => panic!("{other:?}"),
    }
    match client.call(Op::Unlink { path: p("g") }) {
        Ok(Reply::DirsChanged(dirs)) => {
            let dirs: Vec<_> = dirs.iter().map(seen).collect();
            assert_eq!(dirs, vec![dir_attr(".")]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscribed_connections_hear_of_changes_unasked() {
    let (tmp, server) = setup(false);
    let export = tmp.path().join("export");
    let (mut reader, _) = Client::welcomed(server.addr());
    let (mut writer, _) = Client::welcomed(server.addr());
    match reader.call(Op::Subscribe { lease_secs: 60 }) {
        Ok(Reply::Subscribed { lease_secs }) => assert_eq!(lease_secs, 60),
        other => panic!("{other:?}"),
    }
    // What the reader may cache: an attribute, a missing name, a listing.
    let Ok(Reply::Attr(file)) = reader.call(Op::Stat { path: p("file") }) else {
        panic!("stat")
    };
    assert_eq!(reader.call(Op::Stat { path: p("new") }), Err(Errno::ENOENT));
    // Another connection changes them.
    let chmod = AttrChanges {
        mode: Some(0o600),
        ..AttrChanges::default()
    };
    writer
        .call(Op::SetAttr {
            path: p("file"),
            handle: None,
            changes: chmod,
        })
        .unwrap();
    assert_eq!(
        reader.next_changes(),
        vec![Change::Node {
            id: NodeId::of(&file),
            content: false
        }]
    );
    writer
        .call(Op::Mkdir {
            path: p("new"),
            mode: 0o755,
        })
        .unwrap();
    assert!(reader
        .next_changes()
        .iter()
        .any(|c| matches!(c, Change::Name { path, now: Some(_) } if *path == p("new"))));
    // The maker hears nothing of its own changes (it did not subscribe
    // anyway), and a change told once is not told again until asked anew.
    writer
        .call(Op::SetAttr {
            path: p("file"),
            handle: None,
            changes: chmod,
        })
        .unwrap();
    // A process on the server: a file written in place, a name made.
    let Ok(Reply::Attr(file)) = reader.call(Op::Stat { path: p("file") }) else {
        panic!("stat")
    };
    reader.call(Op::Stat { path: p("local") }).unwrap_err();
    fs::write(export.join("file"), "changed on the server").unwrap();
    fs::write(export.join("local"), "made on the server").unwrap();
    let mut changes = Vec::new();
    while !(changes.contains(&Change::Node {
        id: NodeId::of(&file),
        content: true,
    }) && changes
        .iter()
        .any(|c| matches!(c, Change::Name { path, .. } if *path == p("local"))))
    {
        changes.extend(reader.next_changes());
    }
}

#[test]
fn a_connection_that_does_not_subscribe_hears_nothing() {
    let (tmp, server) = setup(false);
    let (mut plain, _) = Client::welcomed(server.addr());
    plain.call(Op::Stat { path: p("file") }).unwrap();
    fs::write(tmp.path().join("export/file"), "changed").unwrap();
    // Any frame now would be a notice; the next one must be this answer.
    plain.call(Op::Stat { path: p("file") }).unwrap();
    thread::sleep(Duration::from_millis(300));
    plain.call(Op::StatFs).unwrap();
    assert!(plain.notices.is_empty());
}

/// A server with the given limits, exporting a directory holding `file`.
fn limited(
    idle_timeout: Duration,
    max_connections: usize,
    max_per_address: usize,
) -> (TempDir, ServerHandle) {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("file"), "hello").unwrap();
    let mut config = ferry_server::test_config(tmp.path(), Security::Insecure);
    config.idle_timeout = idle_timeout;
    config.max_connections = max_connections;
    config.max_per_address = max_per_address;
    let server = spawn_server(config).unwrap();
    (tmp, server)
}

impl Client {
    /// A connection from the loopback address `from` (another "host").
    fn connect_from(from: [u8; 4], addr: SocketAddr) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = rt
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from((from, 0)))?;
                socket.connect(addr).await?.into_std()
            })
            .unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client {
            stream,
            next_id: 1,
            notices: Vec::new(),
        }
    }

    /// The handshake, or `None` if the server closed the connection instead.
    fn try_hello(&mut self) -> Option<HandshakeReply> {
        frame::write_frame(&mut self.stream, &Hello::new()).ok()?;
        let payload = frame::read_frame(&mut self.stream).ok()??;
        frame::decode(&payload).ok()
    }

    /// A request's answer, or `None` if the connection is gone.
    fn try_call(&mut self, op: Op) -> Option<Result<Reply, Errno>> {
        let id = self.next_id;
        self.next_id += 1;
        let cred = me();
        frame::write_frame(&mut self.stream, &Request { id, cred, op }).ok()?;
        let payload = frame::read_frame(&mut self.stream).ok()??;
        let ServerMessage::Response(response) = frame::decode(&payload).ok()? else {
            return None;
        };
        Some(response.result)
    }
}

#[test]
fn an_idle_connection_holding_nothing_is_closed_and_one_holding_a_file_is_kept() {
    let idle = Duration::from_secs(1);
    let (_tmp, server) = limited(idle, 8, 8);
    let started = Instant::now();
    let (silent, _) = Client::welcomed(server.addr());
    let (mut pinging, _) = Client::welcomed(server.addr());
    let (mut holder, _) = Client::welcomed(server.addr());
    let handle = match holder.call(Op::Open {
        path: p("file"),
        flags: libc::O_RDONLY,
    }) {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("{other:?}"),
    };
    // Pings keep nothing alive: only requests that do something count.
    let mut pings = 0;
    while pinging.try_call(Op::Ping).is_some() {
        pings += 1;
        assert!(
            started.elapsed() < idle + Duration::from_secs(5),
            "a connection that only pings was never closed"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(pings > 0);
    assert!(started.elapsed() >= idle - Duration::from_millis(100));
    silent.assert_closed();
    assert!(started.elapsed() < idle + Duration::from_secs(5));
    // The client holding an open file is still served, past the idle time.
    thread::sleep(idle);
    assert!(matches!(
        holder.call(Op::Read {
            handle,
            offset: 0,
            len: 5
        }),
        Ok(Reply::Data(d)) if d == b"hello"
    ));
    // Once it holds nothing, it may idle out too.
    assert_eq!(holder.call(Op::Close { handle }), Ok(Reply::Done));
    holder.assert_closed();
    // And a newcomer is served as ever.
    let (mut newcomer, _) = Client::welcomed(server.addr());
    assert!(matches!(newcomer.call(Op::StatFs), Ok(Reply::StatFs(_))));
}

#[test]
fn one_address_cannot_take_every_connection() {
    // 8 connections in all, 4 from any one address; connections from a
    // greedy "host" (127.0.0.2) that never do anything.
    let (_tmp, server) = limited(Duration::from_secs(600), 8, 4);
    let greedy_host = [127, 0, 0, 2];
    let mut greedy = Vec::new();
    let mut turned_away = 0;
    for _ in 0..12 {
        let mut client = Client::connect_from(greedy_host, server.addr());
        match client.try_hello() {
            Some(HandshakeReply::Welcome(_)) => greedy.push(client),
            Some(other) => panic!("{other:?}"),
            None => turned_away += 1,
        }
    }
    assert_eq!(greedy.len(), 4);
    assert_eq!(turned_away, 8);
    // Everyone else still gets in and is served.
    let mut others: Vec<Client> = (0..3).map(|_| Client::welcomed(server.addr()).0).collect();
    for other in &mut others {
        assert!(matches!(
            other.call(Op::Stat { path: p("file") }),
            Ok(Reply::Attr(_))
        ));
    }
    // When the greedy host's connections go, it may connect again.
    drop(greedy);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Client::connect_from(greedy_host, server.addr());
        if matches!(again.try_hello(), Some(HandshakeReply::Welcome(_))) {
            break;
        }
        assert!(Instant::now() < deadline, "the address stayed locked out");
        thread::sleep(Duration::from_millis(50));
    }
}
