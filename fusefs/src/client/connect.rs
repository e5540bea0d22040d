//! Opening one connection: TCP, then TLS (checking the server's certificate
//! against what the client trusts), then the ferry handshake with the
//! client's credential. Every step has a bound set by the caller, and every
//! failure is a [`ConnectError`] worded for a person.

use super::tls::{Security, Trusted};
use ferry_common::auth::{Fingerprint, EXPORTER_LABEL, SECRET_LEN};
use ferry_common::frame::{self, FrameError};
use ferry_common::proto::{Auth, HandshakeReply, Hello, Welcome};
use ferry_common::records;
use ferry_common::Address;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The largest handshake reply a client reads.
const MAX_REPLY: usize = 64 * 1024;
/// Bytes read from the socket at a time in plaintext, and beneath rustls
/// during the handshake: the frame reader's headers and rustls ask for a few
/// bytes or KiB at a time, and a system call per few KiB costs more than a
/// copy. (After the handshake ferry's record layer reads for itself, see
/// `ferry_common::records`; file data is opened from it straight into the
/// answer's buffer.)
const SOCKET_BUFFER: usize = 256 * 1024;
/// How much of what the server sent first is kept, to recognise a plaintext
/// refusal where a TLS handshake was expected.
const SNIFF: usize = 4096;

/// Why a connection could not be opened, worded for a person.
#[derive(Debug)]
pub enum ConnectError {
    /// The address does not parse; the message says why.
    Address(String),
    /// The peer took the connection but never answered the handshake.
    Silent {
        addr: String,
        waited: Duration,
    },
    Unreachable {
        addr: String,
        source: io::Error,
    },
    Refused {
        addr: String,
        message: String,
    },
    Protocol {
        addr: String,
        detail: String,
    },
    /// The server's certificate is not the one trusted for it.
    ServerChanged {
        addr: String,
        expected: Fingerprint,
        presented: Fingerprint,
        /// What to do if the change is intended.
        remedy: String,
    },
    /// Something on this side: a file that cannot be read or written.
    Local(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Address(message) => f.write_str(message),
            ConnectError::Silent { addr, waited } => write!(
                f,
                "{addr} accepted the connection but did not answer within {} s — is it \
                 `ferry serve` listening there, and not another program? check the address and port",
                waited.as_secs()
            ),
            ConnectError::Unreachable { addr, source } => {
                let why = match source.kind() {
                    io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".to_string(),
                    _ => source.to_string(),
                };
                write!(
                    f,
                    "cannot reach {addr}: {why} — is `ferry serve` running there?"
                )
            }
            ConnectError::Refused { addr, message } => {
                write!(f, "{addr} refused the connection: {message}")
            }
            ConnectError::Protocol { addr, detail } => write!(
                f,
                "{addr} did not answer as a ferry server ({detail}) — check the address and port"
            ),
            ConnectError::ServerChanged {
                addr,
                expected,
                presented,
                remedy,
            } => write!(
                f,
                "the server at {addr} presented certificate {presented}, but {expected} was \
                 expected: someone may be intercepting the connection, or the server's identity \
                 was replaced. Not connecting. {remedy}"
            ),
            ConnectError::Local(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A connection's byte stream: TLS, or plaintext under `--insecure`.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub(super) type Transport = Box<dyn Stream>;

/// How a client opens its connections to one address.
pub(super) struct Connector {
    /// `HOST:PORT`: where to connect, and what the server is known as.
    addr: String,
    /// The export and directory in it to ask for.
    target: Address,
    tls: Option<Trusted>,
    /// This client's id in every `Hello` (see `Hello::client`).
    client: u128,
}

impl Connector {
    /// For `address` (`HOST[:PORT][/EXPORT][:/DIR]`), as client `client`
    /// (see `Hello::client`).
    pub(super) fn new(
        address: &str,
        security: &Security,
        client: u128,
    ) -> Result<Connector, ConnectError> {
        let target = Address::parse(address).map_err(ConnectError::Address)?;
        let addr = target.socket_addr();
        let tls = match security {
            Security::Tls(options) => Some(Trusted::new(&addr, options)?),
            Security::Insecure => None,
        };
        Ok(Connector {
            addr,
            target,
            tls,
            client,
        })
    }

    /// The `HOST:PORT` connected to.
    pub(super) fn socket_addr(&self) -> &str {
        &self.addr
    }

    /// Opens a connection and completes the handshake. The TCP connection
    /// must be made within `tcp_bound`, the handshakes (TLS and ferry's)
    /// within `handshake_bound` after it: a peer that takes the connection
    /// and says nothing is [`ConnectError::Silent`].
    pub(super) async fn open(
        &self,
        tcp_bound: Duration,
        handshake_bound: Duration,
    ) -> Result<(Transport, Welcome), ConnectError> {
        let tcp = self.tcp(tcp_bound).await?;
        let handshake = async {
            match &self.tls {
                None => {
                    let mut plain: Transport =
                        Box::new(BufReader::with_capacity(SOCKET_BUFFER, tcp));
                    let welcome = self.hello(&mut plain, Auth::Session).await?;
                    Ok((plain, welcome))
                }
                Some(trusted) => self.tls(tcp, trusted).await,
            }
        };
        match timeout(handshake_bound, handshake).await {
            Ok(opened) => opened,
            Err(_) => Err(ConnectError::Silent {
                addr: self.addr.clone(),
                waited: handshake_bound,
            }),
        }
    }

    async fn tcp(&self, bound: Duration) -> Result<TcpStream, ConnectError> {
        let unreachable = |source| ConnectError::Unreachable {
            addr: self.addr.clone(),
            source,
        };
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "timed out");
        let addrs = match timeout(bound, tokio::net::lookup_host(&self.addr)).await {
            Ok(found) => found.map_err(unreachable)?,
            Err(_) => return Err(unreachable(timed_out())),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
        for sa in addrs {
            match timeout(bound, TcpStream::connect(sa)).await {
                Ok(Ok(stream)) => {
                    stream.set_nodelay(true).map_err(unreachable)?;
                    // Besides the client's own pings (which notice a frozen
                    // server too), the kernel notices one that vanished.
                    let (idle, interval) = (Duration::from_secs(30), Duration::from_secs(10));
                    let socket = std::os::fd::AsFd::as_fd(&stream);
                    if let Err(e) = ferry_common::socket::set_keepalive(socket, idle, interval, 3) {
                        log::debug!("cannot enable TCP keepalive: {e}");
                    }
                    return Ok(stream);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = timed_out(),
            }
        }
        Err(unreachable(last))
    }

    async fn tls(
        &self,
        tcp: TcpStream,
        trusted: &Trusted,
    ) -> Result<(Transport, Welcome), ConnectError> {
        let attempt = trusted.attempt()?;
        let capture = Arc::clone(&attempt.capture);
        let connector = tokio_rustls::TlsConnector::from(attempt.config);
        let sniffed = Sniff::new(BufReader::with_capacity(SOCKET_BUFFER, tcp));
        let handshake = connector.connect(server_name(&self.addr), sniffed);
        let mut tls = match handshake.into_fallible().await {
            Ok(tls) => tls,
            Err((e, sniffed)) => {
                if let Some(refusal) = trusted.refusal(&attempt.verifier) {
                    return Err(refusal);
                }
                return Err(self.tls_failed(e, &sniffed.seen));
            }
        };
        tls.get_mut().0.stop();
        let presented = attempt
            .verifier
            .presented()
            .ok_or_else(|| ConnectError::Protocol {
                addr: self.addr.clone(),
                detail: "the server presented no certificate".into(),
            })?;
        let auth = match trusted.token() {
            Some(token) => {
                let exporter = tls
                    .get_ref()
                    .1
                    .export_keying_material([0u8; SECRET_LEN], EXPORTER_LABEL, None)
                    .map_err(|e| ConnectError::Protocol {
                        addr: self.addr.clone(),
                        detail: format!("no TLS exporter: {e}"),
                    })?;
                Auth::TokenProof(token.proof(&exporter))
            }
            None => Auth::Session,
        };
        let answered = self.hello(&mut tls, auth).await;
        // A server that answered as a ferry server is recorded on first
        // contact even when it refused the credentials (as ssh records a host
        // before authenticating): the next attempt must meet the same one.
        if matches!(answered, Ok(_) | Err(ConnectError::Refused { .. })) {
            trusted.confirm(presented)?;
        }
        let welcome = answered?;
        // From here on the records are ferry's to seal and open (see
        // `ferry_common::records`); the server sends nothing after its welcome
        // until asked, so rustls holds nothing unread.
        let (sniffed, conn) = tls.into_inner();
        let unread = sniffed.inner.buffer().to_vec();
        let tcp = sniffed.inner.into_inner();
        let records = records::take_over(tcp, unread, conn, &capture).map_err(|detail| {
            ConnectError::Protocol {
                addr: self.addr.clone(),
                detail,
            }
        })?;
        Ok((Box::new(records), welcome))
    }

    /// What a failed TLS handshake means: a plaintext ferry server refusing
    /// (it runs `--insecure`) says so in a frame the sniffer kept; anything
    /// else is a peer that is not a ferry server, or a broken connection.
    fn tls_failed(&self, e: io::Error, seen: &[u8]) -> ConnectError {
        match plaintext_reply(seen) {
            Some(HandshakeReply::Refused { message }) => ConnectError::Refused {
                addr: self.addr.clone(),
                message,
            },
            Some(HandshakeReply::Welcome(_)) => ConnectError::Refused {
                addr: self.addr.clone(),
                message: "this server runs without TLS (ferry serve --insecure): connect with \
                          --insecure, or restart the server without it"
                    .into(),
            },
            None if seen.is_empty() && e.kind() == io::ErrorKind::UnexpectedEof => {
                ConnectError::Protocol {
                    addr: self.addr.clone(),
                    detail: "it closed the connection during the TLS handshake; it may be at \
                             its limit of connections from this address"
                        .into(),
                }
            }
            None => ConnectError::Protocol {
                addr: self.addr.clone(),
                detail: format!("TLS handshake failed: {e}"),
            },
        }
    }

    /// Sends `Hello` with `auth` and reads the server's answer.
    async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        auth: Auth,
    ) -> Result<Welcome, ConnectError> {
        let protocol = |detail: String| ConnectError::Protocol {
            addr: self.addr.clone(),
            detail,
        };
        let hello = Hello {
            auth,
            export: self.target.export.clone(),
            subtree: self.target.subtree.clone(),
            client: self.client,
            ..Hello::new()
        };
        frame::write_frame_async(stream, &hello)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let payload = match frame::read_frame_limited_async(stream, MAX_REPLY).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(protocol(
                    "it closed the connection during the handshake; it may be at its limit of \
                     connections from this address"
                        .into(),
                ))
            }
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(protocol(
                    "it reset the connection during the handshake".into(),
                ))
            }
            Err(e) => return Err(protocol(e.to_string())),
        };
        match frame::decode::<HandshakeReply>(&payload) {
            Ok(HandshakeReply::Welcome(w)) => Ok(w),
            Ok(HandshakeReply::Refused { message }) => Err(ConnectError::Refused {
                addr: self.addr.clone(),
                message,
            }),
            Err(e) => Err(protocol(e.to_string())),
        }
    }
}

/// The name TLS is asked for: the host of `addr` (ferry checks the
/// certificate's fingerprint, not its names).
fn server_name(addr: &str) -> rustls::pki_types::ServerName<'static> {
    let host = addr
        .rsplit_once(':')
        .map(|(host, _)| host)
        .unwrap_or(addr)
        .trim_start_matches('[')
        .trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::try_from("ferry").expect("a valid name"))
}

/// A stream that keeps the first bytes read from it until told to stop: a
/// plaintext server refuses a TLS client with a plaintext frame, which TLS
/// cannot read but the client can, from here.
struct Sniff<S> {
    inner: S,
    seen: Vec<u8>,
    recording: bool,
}

impl<S> Sniff<S> {
    fn new(inner: S) -> Sniff<S> {
        Sniff {
            inner,
            seen: Vec::new(),
            recording: true,
        }
    }

    /// The handshake is done: nothing more is kept.
    fn stop(&mut self) {
        self.recording = false;
        self.seen = Vec::new();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.recording {
            if let Poll::Ready(Ok(())) = polled {
                let new = &buf.filled()[before..];
                let room = SNIFF.saturating_sub(this.seen.len());
                this.seen.extend_from_slice(&new[..new.len().min(room)]);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A ferry handshake reply at the start of `bytes`, if that is what they are.
fn plaintext_reply(bytes: &[u8]) -> Option<HandshakeReply> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    frame::decode(bytes.get(4..4 + len)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_refusal_is_recognised_in_raw_bytes() {
        let refusal = HandshakeReply::Refused {
            message: "this server runs without TLS".into(),
        };
        let mut bytes = frame::encode(&refusal).unwrap();
        assert_eq!(plaintext_reply(&bytes), Some(refusal));
        bytes.truncate(bytes.len() - 1);
        assert_eq!(plaintext_reply(&bytes), None);
        assert_eq!(plaintext_reply(b"\x16\x03\x03\x00\x02\x02\x28"), None);
    }

    #[test]
    fn server_names_come_from_the_host() {
        use rustls::pki_types::ServerName;
        assert!(matches!(
            server_name("127.0.0.1:7070"),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7070"),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("files.example:7070"),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("bad_name!:7070"),
            ServerName::DnsName(_)
        ));
    }
}
