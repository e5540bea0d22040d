//! `RemoteClient` against scripted peers (to control exactly what the server
//! says and when) and against a real server in this process.

use super::*;
use ferry_common::proto::{HandshakeReply, Welcome, PROTOCOL_VERSION};
use ferry_common::{Attr, FileKind, RelPath};
use ferry_server::{spawn_server, spawn_test_server, ServerConfig};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::Receiver;

/// How long a test waits for anything before calling it a hang.
pub(super) const PATIENCE: Duration = Duration::from_secs(20);

pub(super) fn welcome() -> Welcome {
    Welcome {
        version: PROTOCOL_VERSION,
        max_chunk: frame::MAX_CHUNK,
        read_only: false,
        features: 0,
        root: Attr::blank(FileKind::Directory),
    }
}

/// A peer on a free loopback port that answers one connection's handshake with
/// `greeting` and then runs `script` on the connection, in a thread of its own.
fn scripted_peer(
    greeting: Option<HandshakeReply>,
    script: impl FnOnce(TcpStream) + Send + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("a local address");
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        if let Some(greeting) = greeting {
            let hello = frame::read_frame(&mut stream).ok().flatten();
            assert!(hello.is_some(), "the client opens with Hello");
            frame::write_frame(&mut stream, &greeting).expect("greet");
        }
        script(stream)
    });
    addr
}

/// A peer that welcomes the client and runs `script`.
pub(super) fn ferry_peer(script: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
    scripted_peer(Some(HandshakeReply::Welcome(welcome())), script)
}

pub(super) fn connect(addr: SocketAddr, timeout: Duration) -> RemoteClient {
    RemoteClient::connect_with_timeout(&addr.to_string(), timeout).expect("connect")
}

pub(super) fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let payload = frame::read_frame(stream).ok()??;
    frame::decode(&payload).ok()
}

pub(super) fn answer(stream: &mut TcpStream, id: u64, result: OpResult) {
    let _ = frame::write_frame(stream, &Response { id, result });
}

fn stat(name: &str) -> Op {
    Op::Stat {
        path: RelPath::parse(name).expect("a path"),
    }
}

/// Submits `op` and gives the channel its answer will arrive on.
fn submit(client: &RemoteClient, op: Op) -> Receiver<OpResult> {
    let (tx, rx) = mpsc::channel();
    client.submit(op, move |r| {
        let _ = tx.send(r);
    });
    rx
}

pub(super) fn received<T>(rx: &Receiver<T>) -> T {
    rx.recv_timeout(PATIENCE).expect("an answer, not a hang")
}

#[test]
fn requests_are_pipelined_and_answers_matched_in_any_order() {
    const N: usize = 50;
    // The peer reads every request before answering any, then answers them
    // last first: only a pipelining client whose answers find their request
    // by id gets each its own.
    let addr = ferry_peer(|mut stream| {
        let mut requests = Vec::new();
        while requests.len() < N {
            requests.push(read_request(&mut stream).expect("a request"));
        }
        for request in requests.iter().rev() {
            let Op::Stat { path } = &request.op else {
                panic!("unexpected {request:?}")
            };
            let echo = Reply::Target(path.as_bytes().to_vec());
            answer(&mut stream, request.id, Ok(echo));
        }
        // Hold the connection until the client leaves.
        let _ = read_request(&mut stream);
    });
    let client = connect(addr, PATIENCE);
    let pending: Vec<_> = (0..N)
        .map(|i| (i, submit(&client, stat(&format!("f{i}")))))
        .collect();
    for (i, rx) in pending {
        let expected = Reply::Target(format!("f{i}").into_bytes());
        assert_eq!(received(&rx), Ok(expected));
    }
}

#[test]
fn a_request_past_its_deadline_fails_with_etimedout() {
    let addr = ferry_peer(|mut stream| {
        // Reads, never answers, keeps the connection open.
        while read_request(&mut stream).is_some() {}
    });
    let client = connect(addr, Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(client.call(stat("x")), Err(Errno::ETIMEDOUT));
    assert!(started.elapsed() < PATIENCE);
}

#[test]
fn a_broken_connection_fails_every_pending_request_with_eio() {
    let addr = ferry_peer(|mut stream| {
        for _ in 0..3 {
            read_request(&mut stream);
        }
        let _ = stream.shutdown(Shutdown::Both);
    });
    let client = connect(addr, PATIENCE);
    let pending: Vec<_> = (0..3).map(|_| submit(&client, stat("x"))).collect();
    for rx in pending {
        assert_eq!(received(&rx), Err(Errno::EIO));
    }
}

#[test]
fn an_answer_that_cannot_be_decoded_breaks_the_connection() {
    let addr = ferry_peer(|mut stream| {
        read_request(&mut stream);
        // A well-framed payload that is no Response.
        let _ = stream.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        let _ = read_request(&mut stream);
    });
    let client = connect(addr, PATIENCE);
    assert_eq!(client.call(stat("x")), Err(Errno::EIO));
}

#[test]
fn an_error_answer_reaches_the_caller_unchanged() {
    let addr = ferry_peer(|mut stream| {
        let request = read_request(&mut stream).expect("a request");
        answer(&mut stream, request.id, Err(Errno::ENAMETOOLONG));
        let _ = read_request(&mut stream);
    });
    let client = connect(addr, PATIENCE);
    assert_eq!(client.call(stat("x")), Err(Errno::ENAMETOOLONG));
}

#[test]
fn a_refused_handshake_says_why() {
    let refusal = HandshakeReply::Refused {
        message: "wrong protocol version".into(),
    };
    let addr = scripted_peer(Some(refusal), |_| {});
    let err = RemoteClient::connect(&addr.to_string())
        .err()
        .expect("refused");
    assert!(matches!(err, ConnectError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("wrong protocol version"), "{err}");
}

#[test]
fn a_peer_that_does_not_speak_ferry_is_named_as_such() {
    let addr = scripted_peer(None, |mut stream| {
        let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
    });
    let err = RemoteClient::connect(&addr.to_string())
        .err()
        .expect("not ferry");
    assert!(matches!(err, ConnectError::Protocol { .. }), "{err:?}");
    assert!(err.to_string().contains("did not answer as a ferry server"));
}

#[test]
fn nobody_listening_is_reported_with_the_fix() {
    // A port that was free a moment ago.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let err = RemoteClient::connect(&addr.to_string())
        .err()
        .expect("refused");
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("connection refused") && text.contains("ferry serve"),
        "{text}"
    );
}

/// A real server exporting a fresh directory.
struct Served {
    dir: tempfile::TempDir,
    server: Option<ferry_server::ServerHandle>,
}

impl Served {
    fn new() -> Served {
        let dir = tempfile::tempdir().expect("a temp dir");
        let server = spawn_test_server(dir.path(), false).expect("a server");
        Served {
            dir,
            server: Some(server),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("running").addr()
    }

    fn restart(&mut self) {
        let addr = self.addr();
        self.server = None;
        let config = ServerConfig {
            root: self.dir.path().to_path_buf(),
            listen: addr,
            read_only: false,
            max_connections: 8,
        };
        self.server = Some(spawn_server(config).expect("restart on the same port"));
    }
}

fn open(client: &RemoteClient, epoch: u64, name: &str) -> u64 {
    let op = Op::Open {
        path: RelPath::parse(name).expect("a path"),
        flags: libc::O_RDONLY,
    };
    match client.call_in(epoch, op) {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("open {name}: {other:?}"),
    }
}

fn read_all(client: &RemoteClient, epoch: u64, handle: u64) -> OpResult {
    client.call_in(
        epoch,
        Op::Read {
            handle,
            offset: 0,
            len: 100,
        },
    )
}

#[test]
fn after_a_restart_the_client_reconnects_and_old_handles_never_reach_new_files() {
    let mut served = Served::new();
    std::fs::write(served.dir.path().join("a"), b"file a").expect("write a");
    std::fs::write(served.dir.path().join("b"), b"file b").expect("write b");
    let client = connect(served.addr(), PATIENCE);
    let first = client.connected_epoch().expect("connected");
    let a = open(&client, first, "a");

    served.restart();
    // The old connection is gone: the first request notices and fails.
    let deadline = Instant::now() + PATIENCE;
    while client.current_epoch() == Some(first) {
        let _ = client.call(stat("a"));
        assert!(Instant::now() < deadline, "the break went unnoticed");
    }
    // Reconnecting is tried again at most every RECONNECT_INTERVAL.
    let second = loop {
        match client.connected_epoch() {
            Ok(epoch) => break epoch,
            Err(_) => thread::sleep(RECONNECT_INTERVAL / 5),
        }
        assert!(Instant::now() < deadline, "no reconnect");
    };
    assert_ne!(first, second);
    // The new connection numbers its handles from 1 again: b gets a's number.
    let b = open(&client, second, "b");
    assert_eq!(a, b, "the server reuses the number on a new connection");
    // A request for a's handle on its old connection fails instead of reading b.
    assert_eq!(read_all(&client, first, a), Err(Errno::EIO));
    assert_eq!(
        read_all(&client, second, b),
        Ok(Reply::Data(b"file b".to_vec()))
    );
}

#[test]
fn a_stopped_server_fails_calls_at_once_with_eio() {
    let mut served = Served::new();
    let client = connect(served.addr(), PATIENCE);
    served.server = None;
    let started = Instant::now();
    // The first call may still find the dead connection, the next cannot reconnect.
    let _ = client.call(stat("x"));
    assert_eq!(client.call(stat("x")), Err(Errno::EIO));
    assert!(started.elapsed() < PATIENCE);
}

#[test]
fn writes_sent_from_the_callers_buffer_arrive_whole() {
    let served = Served::new();
    let client = connect(served.addr(), PATIENCE);
    let epoch = client.connected_epoch().expect("connected");
    let create = Op::Create {
        path: RelPath::parse("big").expect("a path"),
        flags: libc::O_RDWR,
        mode: 0o644,
        owner: None,
    };
    let handle = match client.call_in(epoch, create) {
        Ok(reply) => reply.opened().expect("opened").0,
        Err(e) => panic!("create: {e}"),
    };
    let data: Vec<u8> = (0..frame::MAX_CHUNK).map(|i| (i % 251) as u8).collect();
    let (tx, rx) = mpsc::channel();
    client.submit_write_in(epoch, handle, 7, &data, move |r| {
        let _ = tx.send(r);
    });
    assert_eq!(received(&rx), Ok(Reply::Written(frame::MAX_CHUNK)));
    let on_disk = std::fs::read(served.dir.path().join("big")).expect("read back");
    assert_eq!(&on_disk[..7], &[0; 7]);
    assert_eq!(&on_disk[7..], &data[..]);
    assert_eq!(
        client.sent().iter().find(|(op, _)| *op == "write"),
        Some(&("write", 1))
    );
}

#[test]
fn a_listing_longer_than_a_page_is_fetched_whole() {
    let served = Served::new();
    let count = frame::READDIR_PAGE * 2 + 10;
    for i in 0..count {
        std::fs::write(served.dir.path().join(format!("n{i}")), b"").expect("a file");
    }
    let client = connect(served.addr(), PATIENCE);
    let entries = client.list_dir(&RelPath::root()).expect("a listing");
    assert_eq!(entries.len(), count);
    let readdirs = client
        .sent()
        .iter()
        .find(|(op, _)| *op == "readdir")
        .map(|x| x.1);
    assert_eq!(readdirs, Some(3));
}
