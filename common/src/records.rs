//! TLS 1.3's record layer (RFC 8446 §5), run by ferry once rustls has made the
//! handshake: the same records on the wire, encrypted and decrypted with the
//! keys rustls agreed, but without rustls's buffers in between.
//!
//! Why: rustls's buffered API copies every byte it carries — on the reading
//! side from the socket's buffer into its own, from the decrypted record into
//! its plaintext queue, and from that into the caller's — and writes a MiB as
//! sixteen system calls. For file data that cost a quarter of the read
//! throughput against plaintext. Here a record is decrypted from the socket's
//! buffer straight into the caller's (a data answer's own buffer), and what
//! is written is encrypted straight into one buffer that goes out in one
//! system call per flush. This is what kernel TLS does, in user space (the
//! kernel this runs on may have no `CONFIG_TLS`).
//!
//! What stays rustls's: the handshake, the certificate checks and the RFC 5705
//! exporter the access token is bound to. What becomes ours: sequence numbers,
//! nonces, the inner content type, alerts (close_notify) and key updates
//! (RFC 8446 §4.6.3), which are due before a key has sealed its suite's
//! confidentiality limit of records. Our records are TLS 1.3's to the byte,
//! which tests check against rustls itself (it reads ours, key updates
//! included, and we read its). After the handshake only key updates are
//! taken: ferry's server sends no session tickets, and any other
//! post-handshake message ends the connection.
//!
//! The traffic secrets a key update needs are not in what
//! `dangerous_extract_secrets` gives (a key and an IV), so [`SecretCapture`]
//! takes them from rustls's key log, for one connection; [`take_over`]
//! derives the key and IV from them again and refuses the connection if they
//! differ from rustls's.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use rustls::{CipherSuite, ConnectionTrafficSecrets, KeyLog, SupportedCipherSuite};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use zeroize::Zeroizing;

/// A record's header: type, legacy version (2 bytes), length (2 bytes).
const HEADER: usize = 5;
/// The most plaintext one record carries (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// The longest ciphertext a record may have (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// The AEAD tag of every suite ferry offers.
const TAG: usize = 16;
/// What a record adds to its plaintext: header, inner content type, tag.
const OVERHEAD: usize = HEADER + 1 + TAG;
const NONCE_LEN: usize = aead::NONCE_LEN;

/// Content types (RFC 8446 §5.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// The handshake message of a key update (RFC 8446 §4.6.3), and its one byte.
const KEY_UPDATE: u8 = 24;
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;
/// The alert that ends a connection cleanly: level warning (1), close_notify (0).
const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// Ciphertext read from the socket at a time, at most (more when a record is
/// longer than what is left of it).
const READ_BUFFER: usize = 256 * 1024;
/// Sealed records kept before the writer waits for the socket to take them:
/// a 1 MiB data answer and its head go out in one system call.
const WRITE_BUFFER: usize = 1024 * 1024 + 64 * OVERHEAD + MAX_PLAINTEXT;
/// What the write buffer shrinks back to once [`SHRINK_AFTER`] flushes in a
/// row needed no more: a connection that read a large file once does not keep
/// a MiB for the rest of its life (a server has hundreds).
const SMALL_WRITES: usize = 64 * 1024;
const SHRINK_AFTER: u32 = 64;

/// A suite ferry can run records for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    fn of(suite: SupportedCipherSuite) -> Option<Suite> {
        match suite.suite() {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(Suite::Aes128Gcm),
            CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(Suite::Aes256Gcm),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(Suite::Chacha20Poly1305),
            _ => None,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes256Gcm => hkdf::HKDF_SHA384,
            Suite::Aes128Gcm | Suite::Chacha20Poly1305 => hkdf::HKDF_SHA256,
        }
    }
}

/// HKDF-Expand-Label(secret, label, "", len) (RFC 8446 §7.1).
fn expand_label(suite: Suite, secret: &[u8], label: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Prk::new_less_safe(suite.hkdf(), secret);
    // struct { uint16 length; opaque label<7..255> = "tls13 " + label; opaque context<0..255> = ""; }
    let length = (len as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    let mut out = Zeroizing::new(vec![0u8; len]);
    // Only a length past 255 hashes could fail; ferry asks for at most one hash.
    if let Ok(okm) = prk.expand(&info, Len(len)) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// One direction's traffic key: its secret (for the next key update), the
/// AEAD key and IV derived from it, and the records sealed or opened with it.
struct TrafficKey {
    suite: Suite,
    /// Wiped when dropped, as the key is by aws-lc.
    secret: Zeroizing<Vec<u8>>,
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl TrafficKey {
    fn new(suite: Suite, secret: Zeroizing<Vec<u8>>, seq: u64) -> Result<TrafficKey, String> {
        let aead = suite.aead();
        let key_bytes = expand_label(suite, &secret, b"key", aead.key_len());
        let iv_bytes = expand_label(suite, &secret, b"iv", NONCE_LEN);
        let key = UnboundKey::new(aead, &key_bytes)
            .map_err(|_| "cannot make a traffic key from the session's secret".to_string())?;
        let mut iv = [0u8; NONCE_LEN];
        iv.copy_from_slice(&iv_bytes);
        Ok(TrafficKey {
            suite,
            secret,
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The key and IV this key was derived as, to check against rustls's.
    fn derived(&self) -> (Zeroizing<Vec<u8>>, [u8; NONCE_LEN]) {
        let key = expand_label(
            self.suite,
            &self.secret,
            b"key",
            self.suite.aead().key_len(),
        );
        (key, self.iv)
    }

    /// The next record's nonce (RFC 8446 §5.3): the IV XOR the sequence
    /// number; counts the record.
    fn next_nonce(&mut self) -> Result<Nonce, io::Error> {
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| broken("the TLS record sequence number wrapped"))?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// The next generation of this key (RFC 8446 §7.2), from record 0.
    fn update(&mut self) -> Result<(), io::Error> {
        let hash_len = hkdf::KeyType::len(&self.suite.hkdf());
        let secret = expand_label(self.suite, &self.secret, b"traffic upd", hash_len);
        *self = TrafficKey::new(self.suite, secret, 0).map_err(broken)?;
        Ok(())
    }
}

fn broken(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Takes one connection's application traffic secrets from rustls's key log.
/// Give each connection's config its own (set `key_log` and
/// `enable_secret_extraction`).
#[derive(Debug, Default)]
pub struct SecretCapture {
    secrets: Mutex<Captured>,
}

#[derive(Debug, Default)]
struct Captured {
    client: Option<Zeroizing<Vec<u8>>>,
    server: Option<Zeroizing<Vec<u8>>>,
}

const CLIENT_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

impl KeyLog for SecretCapture {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut captured = crate::sync::lock(&self.secrets);
        match label {
            CLIENT_SECRET => captured.client = Some(Zeroizing::new(secret.to_vec())),
            SERVER_SECRET => captured.server = Some(Zeroizing::new(secret.to_vec())),
            _ => {}
        }
    }

    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_SECRET || label == SERVER_SECRET
    }
}

impl SecretCapture {
    pub fn new() -> Arc<SecretCapture> {
        Arc::new(SecretCapture::default())
    }
}

/// Takes a connection over from rustls once its handshake (and ferry's, which
/// rides on it) is done: `io` is the socket rustls wrote to and read from,
/// `unread` what was read from it but not given to rustls, `conn` the
/// connection and `capture` its key log. Nothing rustls read may still wait
/// in it: the peer must have sent nothing after the last message read.
pub fn take_over<S>(
    io: S,
    unread: Vec<u8>,
    conn: impl Into<rustls::Connection>,
    capture: &SecretCapture,
) -> Result<RecordStream<S>, String> {
    let mut conn = conn.into();
    let suite = conn
        .negotiated_cipher_suite()
        .ok_or("the TLS handshake did not finish")?;
    let limit = suite
        .tls13()
        .map(|s| s.common.confidentiality_limit)
        .ok_or("the connection is not TLS 1.3")?;
    let suite = Suite::of(suite).ok_or("the negotiated cipher suite is not one ferry offers")?;
    let state = conn
        .process_new_packets()
        .map_err(|e| format!("TLS failed: {e}"))?;
    if state.plaintext_bytes_to_read() > 0 {
        return Err("the peer sent more than the handshake before ferry took over TLS".into());
    }
    if state.peer_has_closed() {
        return Err("the peer closed the TLS session right after the handshake".into());
    }
    let is_client = matches!(conn, rustls::Connection::Client(_));
    let extracted = conn
        .dangerous_extract_secrets()
        .map_err(|e| format!("cannot take the TLS session's keys: {e}"))?;
    let (client, server) = {
        let captured = crate::sync::lock(&capture.secrets);
        match (&captured.client, &captured.server) {
            (Some(c), Some(s)) => (c.clone(), s.clone()),
            _ => return Err("the TLS session's traffic secrets were not captured".into()),
        }
    };
    let (tx_secret, rx_secret) = if is_client {
        (client, server)
    } else {
        (server, client)
    };
    let (tx_seq, tx_rustls) = extracted.tx;
    let (rx_seq, rx_rustls) = extracted.rx;
    let tx = TrafficKey::new(suite, tx_secret, tx_seq)?;
    let rx = TrafficKey::new(suite, rx_secret, rx_seq)?;
    // The secrets come from a log, the keys from the record layer: they must
    // be the same session's, and our derivation rustls's.
    for (key, theirs) in [(&tx, &tx_rustls), (&rx, &rx_rustls)] {
        let (k, iv) = match theirs {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return Err("the negotiated cipher suite is not one ferry offers".into()),
        };
        let (ours, our_iv) = key.derived();
        if ours.as_slice() != k.as_ref() || our_iv[..] != *iv.as_ref() {
            return Err("the TLS session's keys do not match its logged secrets".into());
        }
    }
    Ok(RecordStream::new(io, unread, tx, rx, limit))
}

/// A byte stream carried in TLS 1.3 records over `S`.
///
/// Written bytes are sealed into records at once and kept until a flush (or
/// until about a MiB waits): callers flush after each message, as with any
/// TLS stream. Shutting down sends close_notify; a close_notify read is the
/// end of the stream, and so is the socket's end between two records.
pub struct RecordStream<S> {
    io: S,
    tx: TrafficKey,
    rx: TrafficKey,
    /// Records a key seals before it is replaced (its suite's confidentiality
    /// limit).
    tx_limit: u64,
    /// The peer asked for a key update in return.
    update_requested: bool,
    /// Ciphertext read: `input[start..end]` is not yet opened.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// Plaintext of a record opened in place, not yet read: `input[plain]`.
    plain: std::ops::Range<usize>,
    /// close_notify came, or the socket ended between records.
    eof: bool,
    /// Why reading failed: every later read fails the same way (a record
    /// that failed is consumed, and the next one cannot be trusted).
    failed: Option<(io::ErrorKind, String)>,
    /// Sealed records not yet written: `output[sent..end_out]`. The buffer
    /// only grows, and is not cleared between uses: zeroing a MiB for every
    /// MiB sent cost more than the copies saved.
    output: Vec<u8>,
    sent: usize,
    end_out: usize,
    close_sent: bool,
    /// Why sealing failed: every later write fails the same way.
    write_failed: Option<(io::ErrorKind, String)>,
    /// Flushes in a row that needed no more than [`SMALL_WRITES`].
    small_flushes: u32,
}

impl<S> RecordStream<S> {
    fn new(io: S, unread: Vec<u8>, tx: TrafficKey, rx: TrafficKey, tx_limit: u64) -> Self {
        let end = unread.len();
        let mut input = unread;
        input.resize(input.len().max(READ_BUFFER), 0);
        RecordStream {
            io,
            tx,
            rx,
            tx_limit,
            update_requested: false,
            input,
            start: 0,
            end,
            plain: 0..0,
            eof: false,
            failed: None,
            output: Vec::new(),
            sent: 0,
            end_out: 0,
            close_sent: false,
            write_failed: None,
            small_flushes: 0,
        }
    }

    /// Seals `payload` as one record of content type `kind` onto the output;
    /// first a key update, if one is due (the key has sealed all but one of
    /// the records its limit allows, or the peer asked for one).
    fn seal(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        debug_assert!(payload.len() <= MAX_PLAINTEXT);
        let limit_reached = self.tx.seq.saturating_add(1) >= self.tx_limit;
        if kind != HANDSHAKE && (limit_reached || self.update_requested) {
            self.update_requested = false;
            self.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED])?;
            self.tx.update()?;
        }
        let len = payload.len() + 1 + TAG;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let at = self.end_out;
        self.end_out = at + HEADER + len;
        if self.output.len() < self.end_out {
            self.output.resize(self.end_out, 0);
        }
        self.output[at..at + HEADER].copy_from_slice(&header);
        let record = &mut self.output[at + HEADER..self.end_out];
        let (body, extra) = record.split_at_mut(payload.len());
        let sealed = self.tx.next_nonce().and_then(|nonce| {
            self.tx
                .key
                .seal_out_of_place_scatter(nonce, Aad::from(header), payload, body, &[kind], extra)
                .map_err(|_| broken("cannot seal a TLS record"))
        });
        if sealed.is_err() {
            // Nothing half-made goes out.
            self.end_out = at;
        }
        sealed
    }

    /// Why writing cannot go on, if it cannot: an earlier failure, or the
    /// close_notify already sealed.
    fn write_refused(&self) -> Option<io::Error> {
        if let Some((kind, why)) = &self.write_failed {
            return Some(io::Error::new(*kind, why.clone()));
        }
        self.close_sent
            .then(|| io::Error::new(io::ErrorKind::BrokenPipe, "the TLS session was closed"))
    }

    /// Seals as much of `data` as the output has room for; how much. A
    /// failure after some was sealed is kept for the next write.
    fn seal_data(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        while taken < data.len() {
            let room = WRITE_BUFFER.saturating_sub(self.end_out + OVERHEAD);
            let n = (data.len() - taken).min(MAX_PLAINTEXT).min(room);
            if n == 0 {
                break;
            }
            if let Err(e) = self.seal(APPLICATION_DATA, &data[taken..taken + n]) {
                self.write_failed = Some((e.kind(), e.to_string()));
                if taken == 0 {
                    return Err(e);
                }
                break;
            }
            taken += n;
        }
        Ok(taken)
    }

    /// Acts on a handshake record: after the handshake only a key update
    /// may come, and it ends its record (what follows is under the new key).
    fn handshake(&mut self, message: &[u8]) -> io::Result<()> {
        match message {
            [KEY_UPDATE, 0, 0, 1, request] => {
                match *request {
                    UPDATE_NOT_REQUESTED => {}
                    UPDATE_REQUESTED => self.update_requested = true,
                    _ => return Err(broken("a malformed TLS key update")),
                }
                self.rx.update()
            }
            [kind, ..] => Err(broken(format!(
                "an unexpected TLS handshake message (type {kind}, {} bytes) after the handshake",
                message.len()
            ))),
            [] => Err(broken("an empty TLS handshake record")),
        }
    }

    /// Acts on an alert: close_notify ends the stream (whatever level it
    /// claims, which RFC 8446 §6 says to ignore); any other ends it in error.
    fn alert(&mut self, alert: &[u8]) -> io::Result<()> {
        match alert {
            [_, description] if *description == CLOSE_NOTIFY[1] => {
                self.eof = true;
                Ok(())
            }
            [_, description] => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the peer ended TLS with alert {description}"),
            )),
            _ => Err(broken("a malformed TLS alert")),
        }
    }

    /// The whole record at the front of the input, if there is one: its
    /// header and ciphertext length.
    fn whole_record(&self) -> io::Result<Option<([u8; HEADER], usize)>> {
        let buffered = &self.input[self.start..self.end];
        if buffered.len() < HEADER {
            return Ok(None);
        }
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&buffered[..HEADER]);
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if header[0] != APPLICATION_DATA || header[1..3] != [3, 3] {
            return Err(broken(format!(
                "not a TLS 1.3 record (type {}, version {}.{})",
                header[0], header[1], header[2]
            )));
        }
        // An inner plaintext (content, type, padding) is at most 2^14 + 1
        // bytes (RFC 8446 §5.4: record_overflow otherwise).
        if !(TAG + 1..=MAX_PLAINTEXT + 1 + TAG).contains(&len) {
            return Err(broken(format!("a TLS record of impossible length {len}")));
        }
        Ok((buffered.len() >= HEADER + len).then_some((header, len)))
    }

    /// Opens the record at the front of the input: into `out` when it has
    /// room for the whole plaintext (file data, straight into its buffer),
    /// else in place. Returns how many bytes of application data went to `out`.
    fn open_record(
        &mut self,
        header: [u8; HEADER],
        len: usize,
        out: &mut ReadBuf<'_>,
    ) -> io::Result<usize> {
        let body = self.start + HEADER..self.start + HEADER + len;
        self.start = body.end;
        let inner_len = len - TAG;
        let nonce = self.rx.next_nonce()?;
        let bad = |_| broken("a TLS record failed authentication (corrupted or tampered with)");
        if out.remaining() >= inner_len {
            let dest = &mut out.initialize_unfilled_to(inner_len)[..inner_len];
            let (ciphertext, tag) = self.input[body].split_at(inner_len);
            let opened =
                self.rx
                    .key
                    .open_separate_gather(nonce, Aad::from(header), ciphertext, tag, dest);
            if let Err(e) = opened {
                // Whatever was written there is not the caller's (aws-lc
                // clears it too).
                dest.fill(0);
                return Err(bad(e));
            }
            let (kind, content) = inner_content(dest)?;
            if kind == APPLICATION_DATA {
                out.advance(content);
                return Ok(content);
            }
            let message = dest[..content].to_vec();
            self.control(kind, &message)?;
            return Ok(0);
        }
        let opened = self
            .rx
            .key
            .open_in_place(nonce, Aad::from(header), &mut self.input[body.clone()])
            .map_err(bad)?;
        let (kind, content) = inner_content(opened)?;
        if kind == APPLICATION_DATA {
            self.plain = body.start..body.start + content;
            return Ok(0);
        }
        let message = opened[..content].to_vec();
        self.control(kind, &message)?;
        Ok(0)
    }

    fn control(&mut self, kind: u8, message: &[u8]) -> io::Result<()> {
        match kind {
            HANDSHAKE => self.handshake(message),
            ALERT => self.alert(message),
            other => Err(broken(format!(
                "a TLS record of unexpected content type {other}"
            ))),
        }
    }

    /// Makes room in the input for a whole record after what is buffered.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.input.len() - self.start < HEADER + MAX_CIPHERTEXT {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// A TLS 1.3 inner plaintext's content type and the length of its content:
/// the last byte that is not padding.
fn inner_content(inner: &[u8]) -> io::Result<(u8, usize)> {
    match inner.iter().rposition(|&b| b != 0) {
        Some(at) => Ok((inner[at], at)),
        None => Err(broken("a TLS record without a content type")),
    }
}

impl<S: AsyncRead + Unpin> RecordStream<S> {
    /// Reads into `buf`, adding to `given` what it gets; `Pending` only when
    /// nothing was given.
    fn poll_read_records(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        given: &mut usize,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.plain.is_empty() {
                let n = self.plain.len().min(buf.remaining());
                buf.put_slice(&self.input[self.plain.start..self.plain.start + n]);
                self.plain.start += n;
                *given += n;
            }
            if buf.remaining() == 0 || self.eof {
                return Poll::Ready(Ok(()));
            }
            if let Some((header, len)) = self.whole_record()? {
                *given += self.open_record(header, len, buf)?;
                continue;
            }
            if *given > 0 {
                return Poll::Ready(Ok(()));
            }
            self.make_room();
            let mut free = ReadBuf::new(&mut self.input[self.end..]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut free))?;
            let n = free.filled().len();
            if n == 0 {
                if self.start == self.end {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection ended in the middle of a TLS record",
                )));
            }
            self.end += n;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RecordStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((kind, why)) = &this.failed {
            return Poll::Ready(Err(io::Error::new(*kind, why.clone())));
        }
        let mut given = 0;
        match ready!(this.poll_read_records(cx, buf, &mut given)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => {
                this.failed = Some((e.kind(), e.to_string()));
                // What was read before the failure is the caller's; the
                // failure comes with the next read.
                if given > 0 {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(e))
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> RecordStream<S> {
    /// Writes out every sealed record.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.end_out {
            let unsent = &self.output[self.sent..self.end_out];
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, unsent))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.end_out > SMALL_WRITES {
            self.small_flushes = 0;
        } else if self.output.len() > SMALL_WRITES {
            self.small_flushes += 1;
            if self.small_flushes >= SHRINK_AFTER {
                self.output.truncate(SMALL_WRITES);
                self.output.shrink_to_fit();
            }
        }
        self.sent = 0;
        self.end_out = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RecordStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(refused) = this.write_refused() {
            return Poll::Ready(Err(refused));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.end_out + OVERHEAD >= WRITE_BUFFER {
            ready!(this.poll_drain(cx))?;
        }
        Poll::Ready(this.seal_data(data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(refused) = this.write_refused() {
            return Poll::Ready(Err(refused));
        }
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        if this.end_out + OVERHEAD >= WRITE_BUFFER {
            ready!(this.poll_drain(cx))?;
        }
        let mut taken = 0;
        for buf in bufs {
            let n = match this.seal_data(buf) {
                Ok(n) => n,
                // Kept for the next write; what was sealed is reported.
                Err(_) if taken > 0 => break,
                Err(e) => return Poll::Ready(Err(e)),
            };
            taken += n;
            if n < buf.len() {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && this.write_failed.is_none() {
            this.seal(ALERT, &CLOSE_NOTIFY)?;
            this.close_sent = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
