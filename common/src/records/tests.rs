//! The record layer against rustls itself (so our records are TLS 1.3's),
//! against itself over a real handshake, and against a hostile wire.

use super::*;
use crate::tls::{self, Identity, PinnedServer};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Bytes that differ from offset to offset, so a misplaced record shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Configs for one handshake, each with its own key log.
fn configs(
    suite: rustls::SupportedCipherSuite,
) -> (
    Arc<rustls::ClientConfig>,
    Arc<SecretCapture>,
    Arc<rustls::ServerConfig>,
    Arc<SecretCapture>,
) {
    let identity = Identity::generate("ferry-test").expect("an identity");
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..(*tls::provider()).clone()
    });
    let verifier = Arc::new(PinnedServer::new(
        Some(identity.fingerprint()),
        Arc::clone(&provider),
    ));
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(tls::VERSIONS)
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let client_capture = SecretCapture::new();
    client.key_log = client_capture.clone();
    client.enable_secret_extraction = true;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(tls::VERSIONS)
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .expect("a server config");
    let server_capture = SecretCapture::new();
    server.key_log = server_capture.clone();
    server.enable_secret_extraction = true;
    server.send_tls13_tickets = 0;
    (
        Arc::new(client),
        client_capture,
        Arc::new(server),
        server_capture,
    )
}

type ClientTls = tokio_rustls::client::TlsStream<DuplexStream>;
type ServerTls = tokio_rustls::server::TlsStream<DuplexStream>;

/// A finished handshake over an in-memory pipe, still in rustls's hands.
async fn handshake(
    suite: rustls::SupportedCipherSuite,
) -> (ClientTls, Arc<SecretCapture>, ServerTls, Arc<SecretCapture>) {
    let (client_config, client_capture, server_config, server_capture) = configs(suite);
    let (a, b) = duplex(4 << 20);
    let name = rustls::pki_types::ServerName::try_from("ferry-test").expect("a name");
    let connect = tokio_rustls::TlsConnector::from(client_config).connect(name, a);
    let accept = tokio_rustls::TlsAcceptor::from(server_config).accept(b);
    let (client, server) = tokio::join!(connect, accept);
    let (mut client, mut server) = (client.expect("client side"), server.expect("server side"));
    // One message each way through rustls, as ferry's own handshake does.
    client.write_all(b"hello").await.expect("hello sent");
    client.flush().await.expect("hello flushed");
    let mut hello = [0u8; 5];
    server.read_exact(&mut hello).await.expect("hello read");
    server.write_all(b"welcome").await.expect("welcome sent");
    server.flush().await.expect("welcome flushed");
    let mut welcome = [0u8; 7];
    client.read_exact(&mut welcome).await.expect("welcome read");
    (client, client_capture, server, server_capture)
}

fn take_client(tls: ClientTls, capture: &SecretCapture) -> RecordStream<DuplexStream> {
    let (io, conn) = tls.into_inner();
    take_over(io, Vec::new(), conn, capture).expect("the client's keys")
}

fn take_server(tls: ServerTls, capture: &SecretCapture) -> RecordStream<DuplexStream> {
    let (io, conn) = tls.into_inner();
    take_over(io, Vec::new(), conn, capture).expect("the server's keys")
}

fn suites() -> Vec<rustls::SupportedCipherSuite> {
    tls::provider().cipher_suites.clone()
}

#[test]
fn rustls_reads_our_records_and_key_updates() {
    runtime().block_on(async {
        for suite in suites() {
            let (mut client, _, server, server_capture) = handshake(suite).await;
            let mut ours = take_server(server, &server_capture);
            // A key update every three records, so rustls follows several.
            ours.tx_limit = 3;
            let sent = pattern(300_000);
            let writing = async {
                ours.write_all(&sent).await.expect("written");
                ours.flush().await.expect("flushed");
                ours.shutdown().await.expect("closed");
                ours
            };
            let reading = async {
                let mut got = Vec::new();
                client
                    .read_to_end(&mut got)
                    .await
                    .expect("read to close_notify");
                got
            };
            let (_ours, got) = tokio::join!(writing, reading);
            assert_eq!(got.len(), sent.len(), "{suite:?}");
            assert!(
                got == sent,
                "{suite:?}: rustls read other bytes than were sent"
            );
        }
    });
}

#[test]
fn we_read_rustls_records_and_key_updates() {
    runtime().block_on(async {
        for suite in suites() {
            let (mut client, _, server, server_capture) = handshake(suite).await;
            let mut ours = take_server(server, &server_capture);
            let sent = pattern(200_000);
            let writing = async {
                for (i, piece) in sent.chunks(50_000).enumerate() {
                    if i > 0 {
                        // Asked of us in return the second time: we then update ours.
                        client
                            .get_mut()
                            .1
                            .refresh_traffic_keys()
                            .expect("a key update");
                    }
                    client.write_all(piece).await.expect("written");
                    client.flush().await.expect("flushed");
                }
                client.shutdown().await.expect("closed");
                client
            };
            let reading = async {
                let mut got = Vec::new();
                ours.read_to_end(&mut got)
                    .await
                    .expect("read to close_notify");
                got
            };
            let (_client, got) = tokio::join!(writing, reading);
            assert!(
                got == sent,
                "{suite:?}: we read other bytes than rustls sent"
            );
        }
    });
}

#[test]
fn a_key_update_rustls_asks_for_is_answered() {
    runtime().block_on(async {
        let (mut client, _, server, server_capture) = handshake(suites()[0]).await;
        let mut ours = take_server(server, &server_capture);
        // rustls's key update asks for ours in return (update_requested).
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("a key update");
        client.write_all(b"after").await.expect("written");
        client.flush().await.expect("flushed");
        let mut five = [0u8; 5];
        ours.read_exact(&mut five).await.expect("read");
        assert_eq!(&five, b"after");
        assert!(ours.update_requested, "the request was noticed");
        ours.write_all(b"answer").await.expect("written");
        ours.flush().await.expect("flushed");
        assert!(!ours.update_requested, "our key update went out first");
        assert_eq!(
            ours.tx.seq, 1,
            "the answer is the first record under the new key"
        );
        let mut six = [0u8; 6];
        client.read_exact(&mut six).await.expect("rustls read it");
        assert_eq!(&six, b"answer");
    });
}

#[test]
fn both_ends_ours_carry_big_and_small_reads_across_key_updates() {
    runtime().block_on(async {
        let (client, client_capture, server, server_capture) = handshake(suites()[0]).await;
        let mut client = take_client(client, &client_capture);
        let mut server = take_server(server, &server_capture);
        client.tx_limit = 5;
        server.tx_limit = 7;
        let sent = pattern(3 << 20);
        let writing = async {
            // Writes of every size: partial records, many records, vectored.
            let mut at = 0;
            for (i, size) in [1usize, 13, 16_384, 16_385, 1 << 20, 100_000]
                .iter()
                .cycle()
                .enumerate()
            {
                if at == sent.len() {
                    break;
                }
                let end = (at + size).min(sent.len());
                if i % 3 == 0 {
                    let mid = (at + end) / 2;
                    let mut parts = [
                        io::IoSlice::new(&sent[at..mid]),
                        io::IoSlice::new(&sent[mid..end]),
                    ];
                    let mut bufs = &mut parts[..];
                    while !bufs.is_empty() {
                        let n = server.write_vectored(bufs).await.expect("written");
                        io::IoSlice::advance_slices(&mut bufs, n);
                    }
                } else {
                    server.write_all(&sent[at..end]).await.expect("written");
                }
                server.flush().await.expect("flushed");
                at = end;
            }
            server.shutdown().await.expect("closed");
        };
        let reading = async {
            // Reads of every size: into a record's middle, and whole MiBs.
            let mut got = Vec::new();
            let mut sizes = [7usize, 1 << 20, 100, 40_000].iter().cycle();
            loop {
                let mut chunk = vec![0u8; *sizes.next().expect("cycles")];
                let n = client.read(&mut chunk).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            got
        };
        let ((), got) = tokio::join!(writing, reading);
        assert!(got == sent, "the bytes read are not the bytes sent");
        assert!(server.tx.seq < 7 && client.rx.seq < 7, "keys were updated");
        // And the other way, on the same connection.
        client.write_all(b"thanks").await.expect("written");
        client.flush().await.expect("flushed");
        let mut six = [0u8; 6];
        server.read_exact(&mut six).await.expect("read");
        assert_eq!(&six, b"thanks");
    });
}

/// Two streams over fixed keys (no handshake): `writer`'s records are what
/// `reader` reads. For wire-level tests.
fn keyed_pair<W, R>(writer: W, reader: R) -> (RecordStream<W>, RecordStream<R>) {
    let suite = Suite::Aes128Gcm;
    let key = || TrafficKey::new(suite, Zeroizing::new(vec![0x42u8; 32]), 0).expect("a key");
    let other = || TrafficKey::new(suite, Zeroizing::new(vec![0x24u8; 32]), 0).expect("a key");
    (
        RecordStream::new(writer, Vec::new(), key(), other(), u64::MAX),
        RecordStream::new(reader, Vec::new(), other(), key(), u64::MAX),
    )
}

/// The records `messages` are sealed into, one flush each.
fn records_of(messages: &[&[u8]], close: bool) -> Vec<u8> {
    runtime().block_on(async {
        let (mut writer, _) = keyed_pair(Vec::new(), &[0u8; 0][..]);
        for m in messages {
            writer.write_all(m).await.expect("sealed");
            writer.flush().await.expect("flushed");
        }
        if close {
            writer.shutdown().await.expect("closed");
        }
        writer.io
    })
}

/// What a reader makes of `wire`.
fn read_wire(wire: &[u8]) -> io::Result<Vec<u8>> {
    runtime().block_on(async {
        let (_, mut reader) = keyed_pair(Vec::<u8>::new(), wire);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.map(|_| got)
    })
}

#[test]
fn the_write_buffer_shrinks_back_after_a_large_write() {
    runtime().block_on(async {
        let (mut writer, _) = keyed_pair(Vec::new(), &[0u8; 0][..]);
        writer.write_all(&pattern(1 << 20)).await.expect("sealed");
        writer.flush().await.expect("flushed");
        assert!(writer.output.len() > 1 << 20, "a MiB sealed at once");
        for _ in 0..SHRINK_AFTER - 1 {
            writer.write_all(b"small").await.expect("sealed");
            writer.flush().await.expect("flushed");
        }
        assert!(
            writer.output.len() > 1 << 20,
            "kept while writes may be large again"
        );
        writer.write_all(b"small").await.expect("sealed");
        writer.flush().await.expect("flushed");
        assert!(writer.output.capacity() <= SMALL_WRITES);
        // And it still seals and grows as needed.
        writer.write_all(&pattern(200_000)).await.expect("sealed");
        writer.flush().await.expect("flushed");
        let wire = writer.io;
        let (_, mut reader) = keyed_pair(Vec::<u8>::new(), &wire[..]);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.expect("read");
        let small = SHRINK_AFTER as usize * 5;
        assert_eq!(got.len(), (1 << 20) + small + 200_000);
        assert!(got[(1 << 20) + small..] == pattern(200_000)[..]);
    });
}

#[test]
fn the_wire_format_is_tls_1_3_records() {
    let wire = records_of(&[b"abc"], false);
    // One record: application_data, 3.3, length 3 + 1 + 16, then ciphertext.
    assert_eq!(&wire[..5], &[23, 3, 3, 0, 20]);
    assert_eq!(wire.len(), 5 + 20);
    assert_eq!(read_wire(&wire).expect("read"), b"abc");
}

#[test]
fn a_flipped_bit_anywhere_in_a_record_is_refused() {
    let wire = records_of(&[b"some file data"], true);
    for at in 0..wire.len() {
        let mut bad = wire.clone();
        bad[at] ^= 0x01;
        let read = read_wire(&bad);
        assert!(
            read.is_err(),
            "a flipped bit at {at} was accepted: {read:?}"
        );
    }
}

#[test]
fn records_replayed_reordered_or_dropped_are_refused() {
    let wire = records_of(&[b"first", b"second", b"third"], true);
    let record = |n: usize| {
        let mut at = 0;
        for _ in 0..n {
            at += 5 + u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize;
        }
        let len = 5 + u16::from_be_bytes([wire[at + 3], wire[at + 4]]) as usize;
        wire[at..at + len].to_vec()
    };
    let replayed = [record(0), record(0)].concat();
    let reordered = [record(1), record(0)].concat();
    let dropped = [record(0), record(2)].concat();
    for (what, bad) in [
        ("replayed", replayed),
        ("reordered", reordered),
        ("dropped", dropped),
    ] {
        let read = read_wire(&bad);
        assert!(read.is_err(), "a {what} record was accepted: {read:?}");
    }
}

#[test]
fn the_end_of_the_stream_is_close_notify_or_a_record_boundary_never_a_records_middle() {
    let closed = records_of(&[b"all of it"], true);
    assert_eq!(read_wire(&closed).expect("read"), b"all of it");
    // After close_notify, nothing more is read (even if more came).
    let more = [closed.clone(), records_of(&[b"x"], false)].concat();
    assert_eq!(read_wire(&more).expect("read"), b"all of it");
    let open = records_of(&[b"all of it"], false);
    assert_eq!(read_wire(&open).expect("read"), b"all of it");
    let cut = &open[..open.len() - 1];
    let read = read_wire(cut);
    assert!(
        matches!(&read, Err(e) if e.kind() == io::ErrorKind::UnexpectedEof),
        "a truncated record: {read:?}"
    );
}

#[test]
fn headers_that_are_not_tls_1_3_application_data_are_refused() {
    let wire = records_of(&[b"abc"], false);
    // Another outer type, another version, a length too long or too short.
    for (at, value) in [
        (0, 22u8),
        (0, 21),
        (1, 2),
        (2, 1),
        (3, 0x48),
        (4, 0),
        (4, 16),
    ] {
        let mut bad = wire.clone();
        bad[at] = value;
        let read = read_wire(&bad);
        assert!(read.is_err(), "byte {at} set to {value} was accepted");
    }
}

#[test]
fn keys_are_derived_as_rfc_8446_says() {
    // RFC 8448 §3 (simple 1-RTT handshake): the server's application traffic
    // secret, and the key and IV derived from it.
    let secret = hex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643");
    let key = TrafficKey::new(Suite::Aes128Gcm, Zeroizing::new(secret), 0).expect("a key");
    let (k, iv) = key.derived();
    assert_eq!(*k, hex("9f02283b6c9c07efc26bb9f2ac92e356"));
    assert_eq!(iv.to_vec(), hex("cf782b88dd83549aadf1e984"));
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// One record whose inner plaintext (content, type, padding) is exactly
/// `inner`, sealed under `key` as a peer would: lets a test send what our
/// writer never would (padding, odd types, oversize inner plaintexts).
fn raw_record(key: &mut TrafficKey, inner: &[u8]) -> Vec<u8> {
    let len = inner.len() + TAG;
    let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
    let mut body = inner.to_vec();
    let nonce = key.next_nonce().expect("a nonce");
    let tag = key
        .key
        .seal_in_place_separate_tag(nonce, Aad::from(header), &mut body)
        .expect("sealed");
    [&header[..], &body, tag.as_ref()].concat()
}

/// The key `keyed_pair`'s reader opens with.
fn peer_key() -> TrafficKey {
    TrafficKey::new(Suite::Aes128Gcm, Zeroizing::new(vec![0x42u8; 32]), 0).expect("a key")
}

/// Reads `wire` with reads of random sizes (both the direct and the in-place
/// path): the bytes read before the end or the first error.
fn read_wire_in_pieces(wire: &[u8], rng: &mut fastrand::Rng) -> (Vec<u8>, io::Result<()>) {
    runtime().block_on(async {
        let (_, mut reader) = keyed_pair(Vec::<u8>::new(), wire);
        let mut got = Vec::new();
        loop {
            let mut chunk = vec![0u8; 1 + rng.usize(..40_000)];
            match reader.read(&mut chunk).await {
                Ok(0) => return (got, Ok(())),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => return (got, Err(e)),
            }
        }
    })
}

#[test]
fn arbitrary_wire_bytes_and_authenticated_garbage_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    // Raw random bytes, and valid records with bytes changed or cut off:
    // refused or read, never a panic.
    let valid = records_of(&[b"abc", &pattern(40_000), b""], true);
    for _ in 0..300 {
        let wire: Vec<u8> = match rng.usize(..3) {
            0 => (0..rng.usize(..70_000)).map(|_| rng.u8(..)).collect(),
            1 => {
                let mut w = valid.clone();
                for _ in 0..1 + rng.usize(..4) {
                    let at = rng.usize(..w.len());
                    w[at] = rng.u8(..);
                }
                w
            }
            _ => valid[..rng.usize(..valid.len() + 1)].to_vec(),
        };
        let _ = read_wire_in_pieces(&wire, &mut rng);
    }
    // Records that authenticate (sealed with the reader's key) but whose
    // inner plaintext is anything: any content type, padding and length up to
    // what the header allows, handshake messages and alerts of any shape.
    // Only what was sealed as application data is read.
    for _ in 0..300 {
        let mut key = peer_key();
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        let mut clean = true;
        for _ in 0..1 + rng.usize(..6) {
            let inner: Vec<u8> = match rng.usize(..6) {
                0 => {
                    // Application data with zero padding, within 2^14 + 1.
                    let d = rng.usize(..MAX_PLAINTEXT + 1);
                    let mut v: Vec<u8> = (0..d).map(|_| rng.u8(..)).collect();
                    if clean {
                        expected.extend_from_slice(&v);
                    }
                    v.push(APPLICATION_DATA);
                    v.resize(v.len() + rng.usize(..MAX_PLAINTEXT + 1 - d), 0);
                    v
                }
                1 => vec![0u8; rng.usize(..50)],
                2 => {
                    // A handshake message, well-formed or not.
                    let mut v: Vec<u8> = (0..rng.usize(..8)).map(|_| rng.u8(..)).collect();
                    if rng.usize(..2) == 0 {
                        v = vec![KEY_UPDATE, 0, 0, 1, rng.usize(..3) as u8];
                    }
                    v.push(HANDSHAKE);
                    v
                }
                3 => {
                    let mut v: Vec<u8> = (0..rng.usize(..4)).map(|_| rng.u8(..)).collect();
                    v.push(ALERT);
                    v
                }
                4 => {
                    let mut v: Vec<u8> = (0..rng.usize(..100)).map(|_| rng.u8(..)).collect();
                    v.push([1u8, 20, 24, 255][rng.usize(..4)]);
                    v
                }
                _ => {
                    // Longer than RFC 8446 lets an inner plaintext be.
                    let over = rng.usize(..MAX_CIPHERTEXT - TAG - MAX_PLAINTEXT - 1);
                    vec![1u8; MAX_PLAINTEXT + 2 + over]
                }
            };
            let is_key_update =
                inner.len() == 6 && inner[0] == KEY_UPDATE && inner[5] == HANDSHAKE && inner[4] < 2;
            let kind = inner.iter().rev().find(|&&b| b != 0).copied();
            let stop = !(kind == Some(APPLICATION_DATA) || is_key_update);
            wire.extend_from_slice(&raw_record(&mut key, &inner));
            if is_key_update {
                key.update().expect("the next key");
            }
            if stop {
                clean = false;
            }
        }
        let (got, _) = read_wire_in_pieces(&wire, &mut rng);
        // Never more than, nor other than, the application data sealed
        // before the first record that is neither data nor a key update; all
        // of it when there is none.
        assert!(expected.starts_with(&got), "bytes read that were not sent");
        if clean {
            assert!(got == expected, "application data lost");
        }
    }
}

#[test]
fn an_inner_plaintext_longer_than_2_14_plus_1_is_refused() {
    // RFC 8446 §5.2 and §5.4: record_overflow.
    let mut key = peer_key();
    let mut inner = vec![7u8; MAX_PLAINTEXT + 100];
    inner.push(APPLICATION_DATA);
    assert!(read_wire(&raw_record(&mut key, &inner)).is_err());
    // The largest allowed is read.
    let mut key = peer_key();
    let mut inner = vec![7u8; MAX_PLAINTEXT];
    inner.push(APPLICATION_DATA);
    assert_eq!(
        read_wire(&raw_record(&mut key, &inner))
            .expect("read")
            .len(),
        MAX_PLAINTEXT
    );
}

#[test]
fn close_notify_ends_the_stream_whatever_its_level_and_other_alerts_are_errors() {
    for (alert, ends_cleanly) in [
        ([1u8, 0u8], true),
        ([2, 0], true),
        ([2, 40], false),
        ([1, 90], false),
    ] {
        let mut key = peer_key();
        let wire = [
            raw_record(&mut key, b"data\x17"),
            raw_record(&mut key, &[alert[0], alert[1], ALERT]),
        ]
        .concat();
        let read = read_wire(&wire);
        assert_eq!(read.is_ok(), ends_cleanly, "alert {alert:?}: {read:?}");
    }
}

#[test]
fn nothing_is_written_after_close_notify() {
    let wire = runtime().block_on(async {
        let (mut writer, _) = keyed_pair(Vec::new(), &[0u8; 0][..]);
        writer.write_all(b"last").await.expect("sealed");
        writer.shutdown().await.expect("closed");
        let after = writer.write_all(b"more").await;
        assert!(
            matches!(&after, Err(e) if e.kind() == io::ErrorKind::BrokenPipe),
            "{after:?}"
        );
        writer.io
    });
    assert_eq!(read_wire(&wire).expect("read"), b"last");
}
