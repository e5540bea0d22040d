//! Framing and codec: how messages travel on a byte stream.
//!
//! A frame is a little-endian `u32` payload length followed by the payload, a
//! bincode 2 (serde) encoding of one message. Three outcomes of reading are kept
//! apart, as a peer must treat them differently:
//!
//! - a clean end of stream *between* frames is a normal close (`Ok(None)`);
//! - an end of stream *inside* a frame is [`FrameError::Truncated`];
//! - a length above [`MAX_FRAME`] is [`FrameError::TooLarge`], refused before any
//!   buffer is allocated, and a payload that does not decode is [`FrameError::Corrupt`].
//!
//! Every decode runs with bincode's `with_limit`, so a hostile length inside the
//! payload (a vector "of 4 billion elements") cannot make us allocate either.
//! This module and its `bulk` part are the only places that know the encoding.
//!
//! File data is the one thing worth not copying: `bulk` sends a read's answer
//! and a write's request as a head plus the data from its own buffer, and reads
//! them back with the data going straight into a buffer of its own
//! ([`read_response`], [`read_request_async`]). On the wire they are ordinary
//! frames.

mod buffers;
mod bulk;

pub use buffers::give_back;
pub use bulk::{
    encode_data_head, encode_write_head, read_request_async, read_response, read_response_async,
    RequestFrame, ResponseFrame,
};

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::io::{self, Read, Write};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest read or write one request carries: 1 MiB, the kernel's largest
/// FUSE request (`max_pages` = 256).
pub const MAX_CHUNK: u32 = 1 << 20;
/// The largest frame either side accepts: a full data chunk or a directory page,
/// with room to spare.
pub const MAX_FRAME: usize = 4 << 20;
/// How many entries one `ReadDir` reply carries at most. 2048 entries with
/// 255-byte names and their attributes stay well under [`MAX_FRAME`].
pub const READDIR_PAGE: usize = 2048;
/// The frame header: the payload's length.
const HEADER: usize = 4;

/// The one codec configuration: bincode's standard (little-endian, variable-length
/// integers), never decoding more than a frame holds.
type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Why a frame could not be read or written.
#[derive(Debug)]
pub enum FrameError {
    Io(io::Error),
    /// The peer closed the stream in the middle of a frame.
    Truncated,
    /// The announced length is above [`MAX_FRAME`].
    TooLarge(u64),
    /// The payload is not a valid message.
    Corrupt(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::Truncated => {
                f.write_str("the connection closed in the middle of a message")
            }
            FrameError::TooLarge(n) => {
                write!(
                    f,
                    "a message of {n} bytes is over the limit of {MAX_FRAME} bytes"
                )
            }
            FrameError::Corrupt(why) => write!(f, "a message could not be decoded: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    }
}

/// Encodes `msg` as a whole frame, header included, ready to be written.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::with_capacity(64);
    encode_into(msg, &mut buf)?;
    Ok(buf)
}

/// Appends `msg` as a whole frame to `buf` (several frames can share one write).
pub fn encode_into<T: Serialize>(msg: &T, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    if let Err(e) = bincode::serde::encode_into_std_write(msg, buf, config()) {
        buf.truncate(start);
        return Err(FrameError::Corrupt(e.to_string()));
    }
    let len = buf.len() - start - HEADER;
    if len > MAX_FRAME {
        buf.truncate(start);
        return Err(FrameError::TooLarge(len as u64));
    }
    buf[start..start + HEADER].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Decodes one payload (the bytes after the header). Trailing bytes are corruption.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| FrameError::Corrupt(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Corrupt(format!(
            "{} bytes left over after the message",
            payload.len() - used
        )));
    }
    Ok(msg)
}

/// The length in a frame's header; `Ok(None)` on a clean end of stream
/// between frames, `Truncated` inside the header.
fn read_len<R: Read>(reader: &mut R) -> Result<Option<usize>, FrameError> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    checked_len(header).map(Some)
}

/// [`read_len`] for an async stream.
async fn read_len_async<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<usize>, FrameError> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match reader.read(&mut header[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    checked_len(header).map(Some)
}

fn checked_len(header: [u8; HEADER]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len as u64));
    }
    Ok(len)
}

/// Appends exactly `n` more bytes from `reader` to `buf`, straight into its
/// spare capacity: zeroing a megabyte first costs as much as copying it.
/// `Truncated` if the stream ends first.
fn read_appending<R: Read>(reader: &mut R, buf: &mut Vec<u8>, n: usize) -> Result<(), FrameError> {
    let before = buf.len();
    buf.reserve_exact(n);
    reader.by_ref().take(n as u64).read_to_end(buf)?;
    if buf.len() - before < n {
        return Err(FrameError::Truncated);
    }
    Ok(())
}

/// Fills `buf` from `reader`; `Truncated` if the stream ends first.
fn read_exactly<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    reader.read_exact(buf).map_err(truncated)
}

/// [`read_exactly`] for an async stream.
async fn read_exactly_async<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), FrameError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) => Err(truncated(e)),
    }
}

/// An end of stream inside a frame is `Truncated`; any other failure is itself.
fn truncated(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

/// [`read_appending`] for an async stream.
async fn read_appending_async<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<(), FrameError> {
    let before = buf.len();
    buf.reserve_exact(n);
    (&mut *reader).take(n as u64).read_to_end(buf).await?;
    if buf.len() - before < n {
        return Err(FrameError::Truncated);
    }
    Ok(())
}

/// Reads one frame's payload from a blocking stream; `Ok(None)` on a clean end of
/// stream before the first byte of a frame.
pub fn read_frame<R: Read>(reader: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_len(reader)? else {
        return Ok(None);
    };
    let mut payload = Vec::new();
    read_appending(reader, &mut payload, len)?;
    Ok(Some(payload))
}

/// [`read_frame`] for an async stream.
pub async fn read_frame_async<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    read_frame_limited_async(reader, MAX_FRAME).await
}

/// [`read_frame`] with a tighter limit than [`MAX_FRAME`]: a frame announcing
/// more than `limit` bytes is [`FrameError::TooLarge`], refused before
/// anything is allocated (a handshake message is small).
pub fn read_frame_limited<R: Read>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_len(reader)? else {
        return Ok(None);
    };
    if len > limit {
        return Err(FrameError::TooLarge(len as u64));
    }
    let mut payload = Vec::new();
    read_appending(reader, &mut payload, len)?;
    Ok(Some(payload))
}

/// [`read_frame_limited`] for an async stream.
pub async fn read_frame_limited_async<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_len_async(reader).await? else {
        return Ok(None);
    };
    if len > limit {
        return Err(FrameError::TooLarge(len as u64));
    }
    let mut payload = Vec::new();
    read_appending_async(reader, &mut payload, len).await?;
    Ok(Some(payload))
}

/// Writes one message as a frame to an async stream and flushes it.
pub async fn write_frame_async<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    use tokio::io::AsyncWriteExt;
    writer.write_all(&encode(msg)?).await?;
    writer.flush().await?;
    Ok(())
}

/// Writes every byte of `parts`, in order, with as few writes as `writer`
/// allows (one vectored write where it takes them all), and flushes: a TLS
/// stream holds its last record back until then.
pub async fn write_parts_async<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    parts: &[&[u8]],
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
    let mut bufs = slices.as_mut_slice();
    while !bufs.is_empty() {
        match writer.write_vectored(bufs).await {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    writer.flush().await
}

/// Writes one message as a frame to a blocking stream.
pub fn write_frame<W: Write, T: Serialize>(writer: &mut W, msg: &T) -> Result<(), FrameError> {
    writer.write_all(&encode(msg)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::{Attr, FileKind, Timestamp};
    use crate::errno::Errno;
    use crate::path::RelPath;
    use crate::proto::*;
    use std::io::Cursor;

    fn attr() -> Attr {
        let t = Timestamp {
            secs: 1_700_000_000,
            nanos: 42,
        };
        Attr {
            kind: FileKind::File,
            perm: 0o644,
            nlink: 1,
            uid: 1000,
            gid: 1000,
            size: 5 << 30,
            blocks: 8,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
            blksize: 4096,
            ino: 77,
            dev: 2049,
        }
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(msg: T) {
        let frame = encode(&msg).unwrap();
        let payload = read_frame(&mut Cursor::new(&frame)).unwrap().unwrap();
        assert_eq!(payload.len() + HEADER, frame.len());
        let back: T = decode(&payload).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn messages_round_trip() {
        round_trip(Hello::new());
        round_trip(HandshakeReply::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            max_chunk: MAX_CHUNK,
            read_only: true,
            features: 0,
            root: attr(),
            instance: u64::MAX,
            grace_ms: 90_000,
        }));
        let path = RelPath::parse("dir/file").unwrap();
        for op in [
            Op::Stat { path: path.clone() },
            Op::ReadDir {
                path: RelPath::root(),
                start: 4096,
            },
            Op::Write {
                handle: 3,
                offset: 5 << 30,
                data: vec![7; 1 << 20],
            },
            Op::SetAttr {
                path: path.clone(),
                handle: Some(1),
                changes: AttrChanges {
                    mode: Some(0o600),
                    size: Some(0),
                    mtime: Some(SetTime::At(Timestamp { secs: -5, nanos: 1 })),
                    atime: Some(SetTime::Now),
                    ..AttrChanges::default()
                },
            },
            Op::Rename {
                from: path.clone(),
                to: RelPath::parse("x").unwrap(),
                flags: 1,
            },
            Op::StatFs,
            Op::List {
                path: path.clone(),
                cursor: u64::MAX,
            },
            Op::OpenRead {
                path: path.clone(),
                flags: libc::O_RDONLY,
                len: 128 << 10,
            },
            Op::ReadFiles {
                dir: path.clone(),
                names: vec![crate::proto::ByteBuf::from(b"a".to_vec())],
                max_each: 128 << 10,
            },
        ] {
            round_trip(Request {
                id: 9,
                cred: Cred {
                    uid: 1000,
                    gid: 100,
                    groups: vec![4, 24, 27, 70_000],
                },
                op,
            });
        }
        round_trip(Response {
            id: 1,
            result: Err(Errno::ENOTEMPTY),
        });
        round_trip(Request {
            id: 3,
            cred: Cred::default(),
            op: Op::Subscribe { lease_secs: 60 },
        });
        round_trip(ServerMessage::Response(Response {
            id: 3,
            result: Ok(Reply::Subscribed { lease_secs: 60 }),
        }));
        round_trip(ServerMessage::Notice(Notice::Changed(vec![
            Change::Moved {
                from: path.clone(),
                to: RelPath::parse("elsewhere").unwrap(),
            },
            Change::Node {
                id: NodeId { dev: 2049, ino: 77 },
                content: false,
            },
        ])));
        round_trip(ServerMessage::Notice(Notice::Reset { lease_secs: 0 }));
        round_trip(ServerMessage::Response(Response {
            id: 4,
            result: Ok(Reply::Files(vec![
                crate::proto::FileRead {
                    name: b"a".to_vec(),
                    result: Ok(crate::proto::FileContents {
                        attr: crate::Attr::blank(crate::FileKind::File),
                        data: b"abc".to_vec(),
                    }),
                },
                crate::proto::FileRead {
                    name: b"b".to_vec(),
                    result: Err(Errno::EACCES),
                },
            ])),
        }));
        round_trip(Response {
            id: u64::MAX,
            result: Ok(Reply::Data(vec![1, 2, 3])),
        });
        round_trip(Response {
            id: 2,
            result: Ok(Reply::Entries {
                entries: vec![DirEntry {
                    name: b"a".to_vec(),
                    attr: attr(),
                }],
                more: false,
            }),
        });
        round_trip(Response {
            id: 3,
            result: Ok(Reply::Listing {
                entries: vec![DirEntry {
                    name: b"b".to_vec(),
                    attr: attr(),
                }],
                cursor: 7,
            }),
        });
        round_trip(Response {
            id: 4,
            result: Ok(Reply::OpenedWithData {
                handle: 1,
                attr: attr(),
                data: vec![9; 1000],
            }),
        });
    }

    /// Attributes with every field as long as its encoding gets.
    fn widest_attr() -> Attr {
        let t = Timestamp {
            secs: i64::MIN,
            nanos: u32::MAX,
        };
        Attr {
            kind: FileKind::BlockDevice,
            perm: u16::MAX,
            nlink: u32::MAX,
            uid: u32::MAX,
            gid: u32::MAX,
            size: u64::MAX,
            blocks: u64::MAX,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: u64::MAX,
            blksize: u32::MAX,
            ino: u64::MAX,
            dev: u64::MAX,
        }
    }

    #[test]
    fn the_fullest_listing_and_open_data_fit_in_a_frame() {
        let widest = |name_len: usize| DirEntry {
            name: vec![b'n'; name_len],
            attr: widest_attr(),
        };
        // The per-entry allowance covers the widest entry of any name length.
        for name_len in [1, 127, 128, 255, 16_383, 16_384] {
            let alone = encode(&widest(name_len)).unwrap().len() - HEADER;
            assert!(
                alone <= name_len + LISTED_ENTRY_OVERHEAD,
                "{alone} bytes for a {name_len}-byte name"
            );
        }
        // A reply filled to the listing budget by the server's rule, in the
        // worst case, is still a frame.
        for name_len in [1, 255] {
            let count = LISTING_BYTES / (name_len + LISTED_ENTRY_OVERHEAD);
            let reply = Response {
                id: u64::MAX,
                result: Ok(Reply::Listing {
                    entries: vec![widest(name_len); count],
                    cursor: u64::MAX,
                }),
            };
            assert!(
                encode(&reply).is_ok(),
                "{count} entries of {name_len} bytes"
            );
        }
        let data = Response {
            id: u64::MAX,
            result: Ok(Reply::OpenedWithData {
                handle: u64::MAX,
                attr: widest_attr(),
                data: vec![0; MAX_OPEN_DATA as usize],
            }),
        };
        assert!(encode(&data).is_ok());
    }

    #[test]
    fn file_data_travels_as_raw_bytes() {
        // A sequence of u8 elements would cost up to two bytes per byte under varint
        // encoding; raw bytes cost one plus a small length prefix.
        let frame = encode(&Op::Write {
            handle: 1,
            offset: 0,
            data: vec![0xff; 65536],
        })
        .unwrap();
        assert!(frame.len() < 65536 + 32, "{} bytes", frame.len());
    }

    #[test]
    fn a_limited_read_refuses_a_longer_frame_before_reading_it() {
        let frame = encode(&Hello::new()).unwrap();
        let payload = read_frame_limited(&mut Cursor::new(&frame), MAX_HELLO)
            .unwrap()
            .unwrap();
        assert_eq!(decode::<Hello>(&payload).unwrap(), Hello::new());
        // A 3 MiB "hello" is refused by its header alone.
        let mut big = ((3u32 << 20).to_le_bytes()).to_vec();
        big.extend_from_slice(&[0; 64]);
        assert!(matches!(
            read_frame_limited(&mut Cursor::new(&big), MAX_HELLO),
            Err(FrameError::TooLarge(n)) if n == 3 << 20
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(matches!(
            rt.block_on(read_frame_limited_async(&mut big.as_slice(), MAX_HELLO)),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn a_hello_with_a_token_proof_is_small() {
        let hello = Hello {
            auth: Auth::TokenProof([0xff; 32]),
            ..Hello::new()
        };
        let frame = encode(&hello).unwrap();
        assert!(frame.len() < MAX_HELLO / 8, "{} bytes", frame.len());
        round_trip(hello);
        round_trip(Request {
            id: 3,
            cred: Cred::default(),
            op: Op::Ping,
        });
    }

    #[test]
    fn clean_eof_between_frames_is_not_an_error() {
        assert!(read_frame(&mut Cursor::new(Vec::<u8>::new()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        let frame = encode(&Request {
            id: 1,
            cred: Cred::default(),
            op: Op::StatFs,
        })
        .unwrap();
        for cut in 1..frame.len() {
            let err = read_frame(&mut Cursor::new(&frame[..cut])).unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let err = read_frame(&mut Cursor::new(bytes)).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(n) if n == u32::MAX as u64));
        let just_over = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(matches!(
            read_frame(&mut Cursor::new(just_over)).unwrap_err(),
            FrameError::TooLarge(_)
        ));
    }

    #[test]
    fn garbage_payloads_are_corrupt_not_panics() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for len in 0..512 {
            let payload: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            // Any outcome but a panic or a huge allocation is fine; most are errors.
            let _ = decode::<Request>(&payload);
            let _ = decode::<Response>(&payload);
            let _ = decode::<ServerMessage>(&payload);
            let _ = decode::<Hello>(&payload);
        }
        assert!(matches!(
            decode::<Request>(&[0xff; 8]),
            Err(FrameError::Corrupt(_))
        ));
    }

    #[test]
    fn hostile_inner_lengths_are_bounded() {
        // A Data reply whose byte-string length claims u64::MAX bytes: varint tag 253
        // announces a u64. The decode must fail rather than try to allocate.
        let mut payload = vec![1u8]; // id = 1
        payload.push(0); // Ok
        payload.push(5); // Reply::Data
        payload.push(253);
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Response>(&payload),
            Err(FrameError::Corrupt(_))
        ));
    }

    #[test]
    fn trailing_bytes_are_corrupt() {
        let mut frame = encode(&Request {
            id: 1,
            cred: Cred::default(),
            op: Op::StatFs,
        })
        .unwrap();
        frame.push(0);
        assert!(matches!(
            decode::<Request>(&frame[HEADER..]),
            Err(FrameError::Corrupt(_))
        ));
    }

    #[test]
    fn unknown_operation_is_corrupt() {
        let mut payload = vec![1u8]; // id
        payload.extend_from_slice(&[0, 0, 0]); // uid, gid, no groups
        payload.push(200); // no such Op variant
        assert!(matches!(
            decode::<Request>(&payload),
            Err(FrameError::Corrupt(_))
        ));
    }

    #[test]
    fn several_frames_share_a_buffer() {
        let mut buf = Vec::new();
        encode_into(
            &Request {
                id: 1,
                cred: Cred::default(),
                op: Op::StatFs,
            },
            &mut buf,
        )
        .unwrap();
        encode_into(
            &Request {
                id: 2,
                cred: Cred::default(),
                op: Op::StatFs,
            },
            &mut buf,
        )
        .unwrap();
        let mut cur = Cursor::new(buf);
        let a: Request = decode(&read_frame(&mut cur).unwrap().unwrap()).unwrap();
        let b: Request = decode(&read_frame(&mut cur).unwrap().unwrap()).unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert!(read_frame(&mut cur).unwrap().is_none());
    }
}
