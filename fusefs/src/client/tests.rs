//! `RemoteClient` against scripted peers (to control exactly what the server
//! says and when) and against a real server in this process.

use super::*;
use ferry_common::proto::{
    Change, HandshakeReply, Notice, Response, Welcome, LISTED_ENTRY_OVERHEAD, LISTING_BYTES,
    PROTOCOL_VERSION,
};
use ferry_common::{Attr, FileKind, RelPath};
use ferry_server::{spawn_server, spawn_test_server, ServerConfig};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::Receiver;
use std::thread;

/// How long a test waits for anything before calling it a hang.
pub(super) const PATIENCE: Duration = Duration::from_secs(20);

pub(super) fn welcome() -> Welcome {
    Welcome {
        version: PROTOCOL_VERSION,
        max_chunk: frame::MAX_CHUNK,
        read_only: false,
        features: 0,
        root: Attr::blank(FileKind::Directory),
        instance: 1,
        grace_ms: 0,
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

/// A client of a scripted peer: plaintext, as the peers speak the protocol
/// bare (`--insecure`).
pub(super) fn connect(addr: SocketAddr, timeout: Duration) -> RemoteClient {
    let options = ConnectOptions::insecure().with_timeout(timeout);
    RemoteClient::connect(&addr.to_string(), &options).expect("connect")
}

/// A client of a real (TLS) server.
fn connect_to(server: &ferry_server::ServerHandle, timeout: Duration) -> RemoteClient {
    RemoteClient::connect(&server.addr().to_string(), &options_for(server, timeout))
        .expect("connect")
}

fn options_for(server: &ferry_server::ServerHandle, timeout: Duration) -> ConnectOptions {
    let tls = server.tls().expect("a TLS server");
    ConnectOptions::pinned(
        tls.fingerprint(),
        Some(tls.token(None).cloned().expect("a token")),
    )
    .with_timeout(timeout)
}

pub(super) fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let payload = frame::read_frame(stream).ok()??;
    frame::decode(&payload).ok()
}

pub(super) fn answer(stream: &mut TcpStream, id: u64, result: OpResult) {
    let _ = frame::write_frame(stream, &ServerMessage::Response(Response { id, result }));
}

fn stat(name: &str) -> Op {
    Op::Stat {
        path: RelPath::parse(name).expect("a path"),
    }
}

/// Who the tests' requests are made for: this process.
pub(super) fn me() -> Cred {
    crate::creds::own()
}

/// Submits `op` and gives the channel its answer will arrive on.
fn submit(client: &RemoteClient, op: Op) -> Receiver<OpResult> {
    let (tx, rx) = mpsc::channel();
    client.submit(&me(), op, move |r| {
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
fn every_request_carries_the_credential_it_is_made_for() {
    let (tx, rx) = mpsc::channel();
    let addr = ferry_peer(move |mut stream| {
        while let Some(request) = read_request(&mut stream) {
            let _ = tx.send((request.cred.clone(), request.op.name()));
            answer(&mut stream, request.id, Ok(Reply::Written(0)));
        }
    });
    let client = connect(addr, PATIENCE);
    let alice = Cred {
        uid: 1000,
        gid: 1000,
        groups: vec![24, 27],
    };
    let bob = Cred {
        uid: 1001,
        gid: 100,
        groups: Vec::new(),
    };
    assert!(client.call(&alice, stat("x")).is_ok());
    let (done_tx, done_rx) = mpsc::channel();
    let epoch = client.connected_epoch().expect("connected");
    client.submit_write_in(epoch, &bob, 1, 0, b"data", move |r| {
        let _ = done_tx.send(r);
    });
    assert!(received(&done_rx).is_ok());
    assert_eq!(received(&rx), (alice, "stat"));
    assert_eq!(received(&rx), (bob, "write"));
}

#[test]
fn a_request_past_its_deadline_fails_with_etimedout() {
    let addr = ferry_peer(|mut stream| {
        // Reads, never answers, keeps the connection open.
        while read_request(&mut stream).is_some() {}
    });
    let client = connect(addr, Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(client.call(&me(), stat("x")), Err(Errno::ETIMEDOUT));
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
    assert_eq!(client.call(&me(), stat("x")), Err(Errno::EIO));
}

#[test]
fn an_error_answer_reaches_the_caller_unchanged() {
    let addr = ferry_peer(|mut stream| {
        let request = read_request(&mut stream).expect("a request");
        answer(&mut stream, request.id, Err(Errno::ENAMETOOLONG));
        let _ = read_request(&mut stream);
    });
    let client = connect(addr, PATIENCE);
    assert_eq!(client.call(&me(), stat("x")), Err(Errno::ENAMETOOLONG));
}

#[test]
fn a_refused_handshake_says_why() {
    let refusal = HandshakeReply::Refused {
        message: "wrong protocol version".into(),
    };
    let addr = scripted_peer(Some(refusal), |_| {});
    let err = RemoteClient::connect(&addr.to_string(), &ConnectOptions::insecure())
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
    let err = RemoteClient::connect(&addr.to_string(), &ConnectOptions::insecure())
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
    let err = RemoteClient::connect(&addr.to_string(), &ConnectOptions::insecure())
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

    fn server(&self) -> &ferry_server::ServerHandle {
        self.server.as_ref().expect("running")
    }

    fn client(&self) -> RemoteClient {
        connect_to(self.server(), PATIENCE)
    }

    fn restart(&mut self) {
        let addr = self.server().addr();
        let security = self.server().security().clone();
        self.server = None;
        let mut config = ferry_server::test_config(self.dir.path(), security);
        config.listen = addr;
        self.server = Some(spawn_server(config).expect("restart on the same port"));
    }
}

fn open(client: &RemoteClient, epoch: u64, name: &str) -> u64 {
    let op = Op::Open {
        path: RelPath::parse(name).expect("a path"),
        flags: libc::O_RDONLY,
    };
    match client.call_in(epoch, &me(), op) {
        Ok(Reply::Opened { handle, .. }) => handle,
        other => panic!("open {name}: {other:?}"),
    }
}

fn read_all(client: &RemoteClient, epoch: u64, handle: u64) -> OpResult {
    client.call_in(
        epoch,
        &me(),
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
    let client = served.client();
    let first = client.connected_epoch().expect("connected");
    let a = open(&client, first, "a");

    served.restart();
    // The old connection is gone: the first request notices and fails.
    let deadline = Instant::now() + PATIENCE;
    while client.current_epoch() == Some(first) {
        let _ = client.call(&me(), stat("a"));
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
    let client = served.client();
    served.server = None;
    let started = Instant::now();
    // The first call may still find the dead connection, the next cannot reconnect.
    let _ = client.call(&me(), stat("x"));
    assert_eq!(client.call(&me(), stat("x")), Err(Errno::EIO));
    assert!(started.elapsed() < PATIENCE);
}

#[test]
fn writes_sent_from_the_callers_buffer_arrive_whole() {
    let served = Served::new();
    let client = served.client();
    let epoch = client.connected_epoch().expect("connected");
    let create = Op::Create {
        path: RelPath::parse("big").expect("a path"),
        flags: libc::O_RDWR,
        mode: 0o644,
    };
    let handle = match client.call_in(epoch, &me(), create) {
        Ok(reply) => reply.opened().expect("opened").0,
        Err(e) => panic!("create: {e}"),
    };
    let data: Vec<u8> = (0..frame::MAX_CHUNK).map(|i| (i % 251) as u8).collect();
    let (tx, rx) = mpsc::channel();
    client.submit_write_in(epoch, &me(), handle, 7, &data, move |r| {
        let _ = tx.send(r);
    });
    assert_eq!(received(&rx), Ok(Reply::Written(frame::MAX_CHUNK)));
    let on_disk = std::fs::read(served.dir.path().join("big")).expect("read back");
    assert_eq!(&on_disk[..7], &[0; 7]);
    assert_eq!(&on_disk[7..], &data[..]);
    assert_eq!(
        client
            .stats()
            .sent_by_kind()
            .iter()
            .find(|(op, _)| *op == "write"),
        Some(&("write", 1))
    );
}

#[test]
fn a_listing_comes_in_one_reply_when_it_fits_and_whole_when_not() {
    let served = Served::new();
    let lists = |client: &RemoteClient| {
        client
            .stats()
            .sent_by_kind()
            .iter()
            .find(|(op, _)| *op == "list")
            .map_or(0, |x| x.1)
    };
    // Thousands of short names: one reply.
    let small = served.dir.path().join("small");
    std::fs::create_dir(&small).expect("a directory");
    for i in 0..5000 {
        std::fs::write(small.join(format!("n{i}")), b"").expect("a file");
    }
    let client = served.client();
    let path = RelPath::parse("small").expect("a path");
    let entries = client.list_dir(&me(), &path).expect("a listing");
    assert_eq!(entries.len(), 5000);
    assert_eq!(lists(&client), 1);
    // Long names beyond one reply's budget: on by cursor, every name once.
    let name = |i: usize| format!("{i:0250}");
    let count = LISTING_BYTES / (250 + LISTED_ENTRY_OVERHEAD) + 10;
    for i in 0..count {
        std::fs::write(served.dir.path().join(name(i)), b"").expect("a file");
    }
    let entries = client.list_dir(&me(), &RelPath::root()).expect("a listing");
    let mut names: Vec<Vec<u8>> = entries.into_iter().map(|e| e.name).collect();
    names.sort();
    let mut expected: Vec<Vec<u8>> = (0..count).map(|i| name(i).into_bytes()).collect();
    expected.push(b"small".to_vec());
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(lists(&client), 3);
    assert_eq!(
        client.stats().waited_by_kind(),
        client.stats().sent_by_kind(),
        "an application waits for every reply of a listing"
    );
}

/// A man in the middle: accepts TLS with a certificate of its own on a free
/// port, as an attacker who took the server's address would. It reports
/// whether a client completed the handshake with it.
fn impostor() -> (SocketAddr, mpsc::Receiver<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("a local address");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let identity = ferry_common::tls::Identity::generate("ferry-server").expect("a key");
        let config = rustls::ServerConfig::builder_with_provider(ferry_common::tls::provider())
            .with_protocol_versions(ferry_common::tls::VERSIONS)
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![identity.cert], identity.key)
            .expect("a config");
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let accepted = rt.block_on(async move {
            stream.set_nonblocking(true).ok()?;
            let stream = tokio::net::TcpStream::from_std(stream).ok()?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let accepted = tokio::time::timeout(PATIENCE, acceptor.accept(stream)).await;
            Some(matches!(accepted, Ok(Ok(_))))
        });
        let _ = tx.send(accepted.unwrap_or(false));
    });
    (addr, rx)
}

#[test]
fn a_man_in_the_middle_with_its_own_certificate_is_refused() {
    let served = Served::new();
    let (mitm, handshakes) = impostor();
    // The client expects the real server's certificate (pinned)...
    let err = RemoteClient::connect(&mitm.to_string(), &options_for(served.server(), PATIENCE))
        .err()
        .expect("refused");
    let ConnectError::ServerChanged {
        expected,
        presented,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*expected, served.server().tls().unwrap().fingerprint());
    assert_ne!(presented, expected);
    let text = err.to_string();
    assert!(text.contains(&expected.to_string()) && text.contains(&presented.to_string()));
    // ...and aborts the handshake: the impostor never got a session, so it
    // never saw the token's proof or a request.
    assert_eq!(handshakes.recv_timeout(PATIENCE), Ok(false));
}

#[test]
fn a_changed_server_certificate_is_refused_naming_the_line_to_remove() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let known = dir.path().join("client-state/known_servers");
    let mut served = Served::new();
    let token = served
        .server()
        .tls()
        .unwrap()
        .token(None)
        .cloned()
        .expect("a token");
    let options = |token: &ferry_common::auth::Token| ConnectOptions {
        timeout: PATIENCE,
        security: Security::Tls(TlsOptions {
            trust: Trust::KnownServers(known.clone()),
            token: Some(token.clone()),
            identity: None,
        }),
    };
    let addr = served.server().addr().to_string();
    // First contact: trusted and recorded.
    let client = RemoteClient::connect(&addr, &options(&token)).expect("first contact");
    client.shutdown();
    let recorded = std::fs::read_to_string(&known).expect("known_servers was written");
    let first = served.server().tls().unwrap().fingerprint();
    assert_eq!(recorded, format!("{addr} {first}\n"));
    // Again: the same certificate passes.
    RemoteClient::connect(&addr, &options(&token)).expect("the same server");

    // The server comes back on the same address with a new identity.
    let port = served.server().addr();
    served.server = None;
    let security = ferry_server::test_security(served.dir.path()).expect("identity");
    let new_token = match &security {
        ferry_server::Security::Tls(tls) => tls.token(None).cloned().expect("a token"),
        ferry_server::Security::Insecure => unreachable!(),
    };
    let config = ServerConfig::new(served.dir.path().to_path_buf(), port, security);
    served.server = Some(spawn_server(config).expect("a new server"));
    let err = RemoteClient::connect(&addr, &options(&new_token))
        .err()
        .expect("a changed certificate is refused");
    let text = err.to_string();
    let now = served.server().tls().unwrap().fingerprint();
    assert!(matches!(err, ConnectError::ServerChanged { .. }), "{err:?}");
    assert!(text.contains(&first.to_string()), "{text}");
    assert!(text.contains(&now.to_string()), "{text}");
    assert!(
        text.contains(&format!("remove line 1 of {}", known.display())),
        "{text}"
    );
    // Done as told, the new server is met as a first contact.
    std::fs::write(&known, "").expect("remove the line");
    RemoteClient::connect(&addr, &options(&new_token)).expect("the new server, trusted anew");
}

#[test]
fn plaintext_and_tls_ends_that_do_not_match_say_so() {
    // A plaintext client of a TLS server.
    let served = Served::new();
    let insecure = ConnectOptions::insecure().with_timeout(PATIENCE);
    let err = RemoteClient::connect(&served.server().addr().to_string(), &insecure)
        .err()
        .expect("refused");
    assert!(matches!(err, ConnectError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("requires TLS"), "{err}");

    // A TLS client of a plaintext (--insecure) server.
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = ServerConfig::new(
        dir.path().to_path_buf(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ferry_server::Security::Insecure,
    );
    let plain = spawn_server(config).expect("an insecure server");
    let tls = ConnectOptions::pinned(ferry_common::auth::Fingerprint::of(b"x"), None);
    let err = RemoteClient::connect(&plain.addr().to_string(), &tls)
        .err()
        .expect("refused");
    assert!(matches!(err, ConnectError::Refused { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("without TLS") && text.contains("--insecure"),
        "{text}"
    );
}

#[test]
fn a_client_certificate_alone_gets_in_once_authorized() {
    let served = Served::new();
    let tls = served.server().tls().unwrap();
    let identity = ferry_common::tls::Identity::generate("ferry-client").expect("a key");
    let options = ConnectOptions {
        timeout: PATIENCE,
        security: Security::Tls(TlsOptions {
            trust: Trust::Pinned(tls.fingerprint()),
            token: None,
            identity: Some(identity.clone()),
        }),
    };
    let addr = served.server().addr().to_string();
    let err = RemoteClient::connect(&addr, &options)
        .err()
        .expect("not yet");
    assert!(err.to_string().contains("not authorized"), "{err}");
    std::fs::write(
        tls.authorized_clients_path(),
        format!("{} test\n", identity.fingerprint()),
    )
    .expect("authorize");
    let client = RemoteClient::connect(&addr, &options).expect("authorized");
    let root = Op::Stat {
        path: RelPath::root(),
    };
    assert!(matches!(client.call(&me(), root), Ok(Reply::Attr(_))));
}

#[test]
fn a_request_that_cannot_be_sent_fails_at_its_deadline() {
    // The peer welcomes the client, then never reads: once the socket's
    // buffers are full, no frame can be written.
    let (release, held) = mpsc::channel::<()>();
    let addr = ferry_peer(move |stream| {
        let _ = held.recv_timeout(PATIENCE);
        drop(stream);
    });
    let timeout = Duration::from_secs(1);
    let client = connect(addr, timeout);
    let epoch = client.connected_epoch().expect("connected");
    let chunk = vec![0u8; frame::MAX_CHUNK as usize];
    let started = Instant::now();
    let mut answers = Vec::new();
    // Far more than the kernel buffers on both ends hold.
    for _ in 0..64 {
        let (tx, rx) = mpsc::channel();
        client.submit_write_in(epoch, &me(), 1, 0, &chunk, move |r| {
            let _ = tx.send(r);
        });
        answers.push(rx);
        assert!(
            started.elapsed() < timeout + Duration::from_secs(2),
            "a submit blocked for {:?}",
            started.elapsed()
        );
    }
    for rx in answers {
        let answer = received(&rx);
        assert!(
            matches!(answer, Err(Errno::ETIMEDOUT | Errno::EIO)),
            "{answer:?}"
        );
    }
    assert!(started.elapsed() < timeout + Duration::from_secs(2));
    let _ = release.send(());
}

#[test]
fn reconnecting_to_a_server_that_accepts_but_never_answers_holds_up_nobody() {
    // The first connection is welcomed and then closed; every later one is
    // accepted by the kernel and never answered, as a frozen server's are.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("an address");
    let (stop, stopped) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Ok((mut first, _)) = listener.accept() {
            let _ = frame::read_frame(&mut first);
            let greeting = HandshakeReply::Welcome(welcome());
            let _ = frame::write_frame(&mut first, &greeting);
            thread::sleep(Duration::from_millis(200));
            drop(first);
        }
        // Later connections stay in the backlog, unanswered.
        let _ = stopped.recv_timeout(PATIENCE);
        drop(listener);
    });
    let timeout = Duration::from_secs(2);
    let client = connect(addr, timeout);
    // Wait for the break to be noticed.
    let deadline = Instant::now() + PATIENCE;
    while client.current_epoch().is_some() {
        assert!(Instant::now() < deadline, "the close went unnoticed");
        thread::sleep(Duration::from_millis(20));
    }
    // Callers on several threads while an attempt hangs: each gives up
    // within the reconnect grace, none waits for the attempt's bound.
    let started = Instant::now();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            thread::spawn(move || {
                let t = Instant::now();
                let r = client.call(&me(), stat("x"));
                (r, t.elapsed())
            })
        })
        .collect();
    for caller in callers {
        let (result, took) = caller.join().expect("a caller");
        assert_eq!(result, Err(Errno::EIO));
        assert!(
            took < RECONNECT_GRACE + Duration::from_millis(500),
            "a call waited {took:?}"
        );
    }
    assert!(started.elapsed() < timeout + Duration::from_secs(1));
    let _ = stop.send(());
}

#[test]
fn notices_and_connections_reach_the_event_handler_in_order() {
    let notice = Notice::Changed(vec![Change::Name {
        now: None,
        path: RelPath::parse("a").expect("a path"),
    }]);
    let sent = notice.clone();
    let addr = ferry_peer(move |mut stream| {
        // A notice, then the answer to the first request, then a break.
        let request = read_request(&mut stream).expect("a request");
        let _ = frame::write_frame(&mut stream, &ServerMessage::Notice(sent));
        answer(&mut stream, request.id, Ok(Reply::Done));
        let _ = stream.shutdown(std::net::Shutdown::Both);
    });
    let client = connect(addr, PATIENCE);
    let (tx, rx) = mpsc::channel();
    let events = tx.clone();
    client.on_event(move |e| {
        let _ = events.send(e);
    });
    // Told at once of the connection that is up.
    assert_eq!(received(&rx), ConnEvent::Established(1));
    client.submit(&me(), Op::StatFs, move |r| {
        let _ = tx.send(ConnEvent::Notice(0, Notice::Reset { lease_secs: 0 }));
        assert_eq!(r, Ok(Reply::Done));
    });
    // The notice before the answer it came before, then the break.
    assert_eq!(received(&rx), ConnEvent::Notice(1, notice));
    assert_eq!(
        received(&rx),
        ConnEvent::Notice(0, Notice::Reset { lease_secs: 0 }),
        "the answer's callback"
    );
    assert_eq!(received(&rx), ConnEvent::Lost(1));
}

#[test]
fn a_reconnect_is_told_to_the_event_handler() {
    let mut served = Served::new();
    let client = served.client();
    let (tx, rx) = mpsc::channel();
    client.on_event(move |e| {
        let _ = tx.send(e);
    });
    assert_eq!(received(&rx), ConnEvent::Established(1));
    served.restart();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let _ = client.call(&me(), stat("a"));
        if client.current_epoch() == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect");
        thread::sleep(RECONNECT_INTERVAL / 5);
    }
    assert_eq!(received(&rx), ConnEvent::Lost(1));
    assert_eq!(received(&rx), ConnEvent::Established(2));
    client.shutdown();
    assert_eq!(received(&rx), ConnEvent::Lost(2));
}
