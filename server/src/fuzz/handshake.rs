//! A real server on loopback, sent any bytes as the first thing on a new
//! connection.

use super::Fingerprint;
use crate::{spawn_server, test_config, Security, ServerHandle};
use ferry_common::frame;
use ferry_common::proto::{HandshakeReply, Hello, ServerMessage};
use std::io::{Cursor, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

/// How long the server may take to answer and close after the peer's last byte.
const ANSWER_TIME: Duration = Duration::from_secs(5);

/// Panics anywhere in the process since the hook was installed: a server task
/// that panics is caught by tokio (or by the connection's own guard), which
/// would hide it from the fuzzer.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// One server per export directory, for the life of the process.
fn server_for(export: &Path) -> SocketAddr {
    static SERVERS: Mutex<Vec<(PathBuf, ServerHandle)>> = Mutex::new(Vec::new());
    let mut servers = ferry_common::sync::lock(&SERVERS);
    if let Some((_, server)) = servers.iter().find(|(p, _)| p == export) {
        return server.addr();
    }
    // Plaintext: what is fuzzed is ferry's own handshake (TLS records are
    // rustls's to parse; bytes that look like one start a TLS handshake and
    // fail it, as on a TLS server).
    let server =
        spawn_server(test_config(export, Security::Insecure)).expect("a server for the fuzzer");
    let addr = server.addr();
    servers.push((export.to_path_buf(), server));
    addr
}

/// Sends `data`, then ends the connection's sending side, and reads what comes
/// back until the server closes.
fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("the server accepts");
    stream
        .set_read_timeout(Some(ANSWER_TIME))
        .expect("a read timeout");
    // The server may close before taking everything (it refused, or the bytes
    // broke the protocol): what it answered is still to be read.
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server neither answered nor closed within {ANSWER_TIME:?}: {e}"),
    }
    answer
}

/// [`handshake`] against a server exporting `export` (made on first use).
pub(super) fn handshake_in(export: &Path, data: &[u8]) -> u64 {
    count_panics();
    let before = PANICS.load(Ordering::SeqCst);
    let addr = server_for(export);
    let mut seen = Fingerprint::default();

    let answer = exchange(addr, data);
    let mut reader = Cursor::new(answer.as_slice());
    match frame::read_frame(&mut reader) {
        Ok(Some(payload)) => {
            let reply: HandshakeReply =
                frame::decode(&payload).expect("the server's first frame is a handshake reply");
            let welcomed = matches!(reply, HandshakeReply::Welcome(_));
            seen.add(welcomed);
            // Then answers to whatever requests followed the Hello, and nothing else.
            let mut answers = 0usize;
            while let Some(payload) = frame::read_frame(&mut reader).expect("whole frames") {
                assert!(welcomed, "a refused peer got more than the refusal");
                // Notices come only to a connection that subscribed (a fuzzed
                // peer may), and are no answers.
                match frame::decode(&payload).expect("answers and notices") {
                    ServerMessage::Response(response) => {
                        seen.add(response.result.as_ref().map(std::mem::discriminant).err());
                    }
                    ServerMessage::Notice(_) => {
                        seen.add("notice");
                        continue;
                    }
                }
                answers += 1;
            }
            seen.add(answers.min(8));
        }
        // Closed without a word: the first frame was malformed or never came.
        Ok(None) => seen.add("closed"),
        Err(e) => panic!("the server sent a broken frame: {e}"),
    }

    // The next honest client is still welcome.
    let hello = frame::encode(&Hello::new()).expect("a hello");
    let answer = exchange(addr, &hello);
    let payload = frame::read_frame(&mut Cursor::new(answer.as_slice()))
        .expect("a frame")
        .expect("an answer to an honest hello");
    assert!(matches!(
        frame::decode::<HandshakeReply>(&payload),
        Ok(HandshakeReply::Welcome(_))
    ));
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        before,
        "something panicked while the server handled the input"
    );
    seen.finish()
}

/// `data` as the first bytes of a connection to a server exporting a
/// directory of its own (made on first use, for the life of the process).
pub fn handshake(data: &[u8]) -> u64 {
    static EXPORT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let export = EXPORT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-fuzz-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("an export directory for the fuzzer");
        dir
    });
    handshake_in(export, data)
}
