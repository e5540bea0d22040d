//! The server as an attacker meets it: TLS in front of everything, and no
//! request answered — no file touched — before the client has shown the
//! export's token (bound to its session) or an authorised certificate.
//! The client here is written by hand over rustls, so that it can send what a
//! real client never would.

use ferry_common::auth::{Fingerprint, Token, EXPORTER_LABEL, SECRET_LEN};
use ferry_common::frame;
use ferry_common::proto::{Auth, Cred, HandshakeReply, Hello, Op, Reply, Request, ServerMessage};
use ferry_common::tls::{self, Identity, PinnedServer};
use ferry_common::RelPath;
use ferry_server::{spawn_server, spawn_test_server, Security, ServerConfig, ServerHandle};
use rustls::{ClientConnection, StreamOwned};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A TLS connection to the server, handshake done, nothing sent yet.
struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsClient {
    /// Connects to `server`, checking its certificate, presenting `identity`.
    fn connect(server: &ServerHandle, identity: Option<&Identity>) -> TlsClient {
        let fingerprint = server.tls().expect("a TLS server").fingerprint();
        let provider = tls::provider();
        let verifier = Arc::new(PinnedServer::new(Some(fingerprint), Arc::clone(&provider)));
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(tls::VERSIONS)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match identity {
            Some(id) => builder
                .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let name = rustls::pki_types::ServerName::try_from("ferry").unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let sock = TcpStream::connect(server.addr()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut stream = StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        TlsClient { stream }
    }

    /// This session's exporter value, which a token proof is bound to.
    fn exporter(&self) -> [u8; SECRET_LEN] {
        self.stream
            .conn
            .export_keying_material([0u8; SECRET_LEN], EXPORTER_LABEL, None)
            .unwrap()
    }

    fn send(&mut self, bytes: &[u8]) {
        // The server may have closed already; the tests look at what follows.
        let _ = self.stream.write_all(bytes);
        let _ = self.stream.flush();
    }

    /// Sends `Hello` with `auth` and, right behind it without waiting, `then`.
    fn hello_then(&mut self, auth: Auth, then: &[Op]) -> HandshakeReply {
        let mut bytes = frame::encode(&Hello {
            auth,
            ..Hello::new()
        })
        .unwrap();
        for (i, op) in then.iter().enumerate() {
            let request = Request {
                id: i as u64 + 1,
                cred: Cred::default(),
                op: op.clone(),
            };
            frame::encode_into(&request, &mut bytes).unwrap();
        }
        self.send(&bytes);
        let payload = frame::read_frame(&mut self.stream)
            .unwrap()
            .expect("a handshake reply");
        frame::decode(&payload).unwrap()
    }

    fn hello(&mut self, auth: Auth) -> HandshakeReply {
        self.hello_then(auth, &[])
    }

    fn call(&mut self, id: u64, op: Op) -> Result<Reply, ferry_common::Errno> {
        let cred = Cred::default();
        frame::write_frame(&mut self.stream, &Request { id, cred, op }).unwrap();
        self.stream.flush().unwrap();
        let payload = frame::read_frame(&mut self.stream)
            .unwrap()
            .expect("an answer");
        let ServerMessage::Response(response) = frame::decode(&payload).unwrap() else {
            panic!("a notice on a connection that did not subscribe");
        };
        assert_eq!(response.id, id);
        response.result
    }

    /// Asserts that the server says nothing more and closes, promptly.
    fn assert_closed(mut self) {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("the server sent {n} more bytes"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::UnexpectedEof
                        | ErrorKind::BrokenPipe
                        | ErrorKind::ConnectionAborted
                ),
                "the connection was not closed: {e}"
            ),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

fn served() -> (TempDir, ServerHandle) {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("file"), "hello").unwrap();
    let server = spawn_test_server(tmp.path(), false).unwrap();
    (tmp, server)
}

fn token(server: &ServerHandle) -> Token {
    server.tls().unwrap().token(None).cloned().expect("a token")
}

fn stat() -> Op {
    Op::Stat {
        path: RelPath::parse("file").unwrap(),
    }
}

/// What an attacker would do first if let in: make a file.
fn create(name: &str) -> Op {
    Op::Create {
        path: RelPath::parse(name).unwrap(),
        flags: libc::O_WRONLY,
        mode: 0o644,
    }
}

fn refused(reply: HandshakeReply) -> String {
    match reply {
        HandshakeReply::Refused { message } => message,
        HandshakeReply::Welcome(_) => panic!("welcomed, not refused"),
    }
}

#[test]
fn the_token_proof_lets_a_client_in() {
    let (_tmp, server) = served();
    let mut client = TlsClient::connect(&server, None);
    let proof = token(&server).proof(&client.exporter());
    assert!(matches!(
        client.hello(Auth::TokenProof(proof)),
        HandshakeReply::Welcome(_)
    ));
    assert!(matches!(client.call(1, stat()), Ok(Reply::Attr(_))));
}

#[test]
fn a_recorded_handshake_replayed_on_another_connection_is_refused() {
    let (tmp, server) = served();
    // The proof a genuine client sent on its connection...
    let mut genuine = TlsClient::connect(&server, None);
    let recorded = token(&server).proof(&genuine.exporter());
    assert!(matches!(
        genuine.hello(Auth::TokenProof(recorded)),
        HandshakeReply::Welcome(_)
    ));
    // ...is worthless on any other: its session has another exporter value.
    let mut replay = TlsClient::connect(&server, None);
    let message = refused(replay.hello_then(Auth::TokenProof(recorded), &[create("replayed")]));
    assert!(message.contains("access token"), "{message}");
    replay.assert_closed();
    assert!(!tmp.path().join("replayed").exists());
    // The genuine client is undisturbed.
    assert!(matches!(genuine.call(1, stat()), Ok(Reply::Attr(_))));
}

#[test]
fn a_wrong_or_missing_token_is_refused_before_any_file_operation() {
    let (tmp, server) = served();
    // A token of another export, bound correctly to this session.
    let mut wrong = TlsClient::connect(&server, None);
    let other = Token::generate().unwrap().proof(&wrong.exporter());
    let message = refused(wrong.hello_then(Auth::TokenProof(other), &[create("wrong-token")]));
    assert!(message.contains("access token"), "{message}");
    wrong.assert_closed();

    // No credential at all.
    let mut none = TlsClient::connect(&server, None);
    let message = refused(none.hello_then(Auth::Session, &[create("no-token")]));
    assert!(message.contains("needs credentials"), "{message}");
    assert!(message.contains("--token-file"), "{message}");
    none.assert_closed();

    // No Hello at all: a request straight after TLS is no handshake.
    let mut rude = TlsClient::connect(&server, None);
    let mut bytes = Vec::new();
    frame::encode_into(
        &Request {
            id: 1,
            cred: Cred::default(),
            op: create("no-hello"),
        },
        &mut bytes,
    )
    .unwrap();
    rude.send(&bytes);
    rude.assert_closed();

    // Not one of the requests sent behind the handshakes ran.
    for name in ["wrong-token", "no-token", "no-hello"] {
        assert!(!tmp.path().join(name).exists(), "{name} was created");
    }
    let mut names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["file"]);
}

#[test]
fn an_oversized_hello_is_refused_before_it_is_read() {
    let (_tmp, server) = served();
    let mut client = TlsClient::connect(&server, None);
    // A "hello" of 3 MiB: only its length is sent; the server must not wait
    // for (or allocate) the rest.
    let started = Instant::now();
    client.send(&(3u32 << 20).to_le_bytes());
    client.assert_closed();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn client_certificates_are_let_in_by_fingerprint_and_revoked_by_removing_the_line() {
    let (_tmp, server) = served();
    let tls = server.tls().unwrap();
    let identity = Identity::generate("a-client").unwrap();
    let fingerprint = identity.fingerprint();

    let mut unknown = TlsClient::connect(&server, Some(&identity));
    let message = refused(unknown.hello(Auth::Session));
    assert!(message.contains(&fingerprint.to_string()), "{message}");
    assert!(message.contains("authorized_clients"), "{message}");

    let listed = format!("# laptops\n{} alice@laptop\n", fingerprint);
    fs::write(tls.authorized_clients_path(), &listed).unwrap();
    let mut known = TlsClient::connect(&server, Some(&identity));
    assert!(matches!(
        known.hello(Auth::Session),
        HandshakeReply::Welcome(_)
    ));
    assert!(matches!(known.call(1, stat()), Ok(Reply::Attr(_))));

    // Another certificate is still a stranger.
    let other = Identity::generate("b-client").unwrap();
    let mut stranger = TlsClient::connect(&server, Some(&other));
    refused(stranger.hello(Auth::Session));

    // Revoked: new connections are refused at once...
    fs::write(tls.authorized_clients_path(), "# laptops\n").unwrap();
    let mut revoked = TlsClient::connect(&server, Some(&identity));
    let message = refused(revoked.hello(Auth::Session));
    assert!(message.contains("not authorized"), "{message}");
    // ...while the connection made before keeps what it has.
    assert!(matches!(known.call(2, stat()), Ok(Reply::Attr(_))));
}

#[test]
fn a_plaintext_client_of_a_tls_server_is_told_to_use_tls() {
    let (tmp, server) = served();
    let mut plain = TcpStream::connect(server.addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut bytes = frame::encode(&Hello::new()).unwrap();
    frame::encode_into(
        &Request {
            id: 1,
            cred: Cred::default(),
            op: create("plaintext"),
        },
        &mut bytes,
    )
    .unwrap();
    plain.write_all(&bytes).unwrap();
    let payload = frame::read_frame(&mut plain).unwrap().expect("a refusal");
    let message = refused(frame::decode(&payload).unwrap());
    assert!(message.contains("requires TLS"), "{message}");
    assert!(!tmp.path().join("plaintext").exists());
}

#[test]
fn a_tls_client_of_a_plaintext_server_is_told_it_runs_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let config = ServerConfig::new(
        tmp.path().to_path_buf(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Security::Insecure,
    );
    let server = spawn_server(config).unwrap();
    // The first bytes of a TLS ClientHello, as any TLS client sends them.
    let mut sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    sock.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .unwrap();
    let payload = frame::read_frame(&mut sock).unwrap().expect("a refusal");
    let message = refused(frame::decode(&payload).unwrap());
    assert!(message.contains("without TLS"), "{message}");
    assert!(message.contains("--insecure"), "{message}");
}

#[test]
fn a_server_keeps_its_identity_and_token_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    fs::create_dir(&export).unwrap();
    let state = tmp.path().join("state");
    let first = ferry_server::TlsServer::open(&state, &export).unwrap();
    let second = ferry_server::TlsServer::open(&state, &export).unwrap();
    assert_eq!(first.fingerprint(), second.fingerprint());
    assert_eq!(first.token(None), second.token(None));
    let shown: Fingerprint = Fingerprint::parse(&first.fingerprint().to_string()).unwrap();
    assert_eq!(shown, second.fingerprint());
}
