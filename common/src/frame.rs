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
//! This module is the only place that knows the encoding.

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
const HEADER: usize = 4;

fn config() -> impl bincode::config::Config {
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

/// Reads one frame's payload from a blocking stream; `Ok(None)` on a clean end of
/// stream before the first byte of a frame.
pub fn read_frame<R: Read>(reader: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_len(reader)? else {
        return Ok(None);
    };
    // Read into uninitialised capacity: zeroing a megabyte first costs as much
    // as copying it.
    let mut payload = Vec::with_capacity(len);
    reader.take(len as u64).read_to_end(&mut payload)?;
    if payload.len() < len {
        return Err(FrameError::Truncated);
    }
    Ok(Some(payload))
}

/// [`read_frame`] for an async stream.
pub async fn read_frame_async<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_len_async(reader).await? else {
        return Ok(None);
    };
    let mut payload = Vec::with_capacity(len);
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut payload)
        .await?;
    if payload.len() < len {
        return Err(FrameError::Truncated);
    }
    Ok(Some(payload))
}

/// A frame from the server: a whole payload to [`decode`], or — read apart from
/// the rest, without copying it again — the bytes of a `Reply::Data` answer.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseFrame {
    Whole(Vec<u8>),
    Data { id: u64, data: Vec<u8> },
}

/// How many bytes of a frame are read before deciding whether it is a data
/// answer: more than the longest prefix (id, result, variant, length).
const PEEK: usize = 32;

/// The bincode prefix of `Response { id, result: Ok(Reply::Data(..)) }` before
/// the data's length, found by encoding an empty one (so it follows the
/// message types and the codec's configuration instead of copying them).
fn data_prefix(id: u64) -> Result<Vec<u8>, FrameError> {
    let empty = crate::proto::Response {
        id,
        result: Ok(crate::proto::Reply::Data(Vec::new())),
    };
    let mut prefix = bincode::serde::encode_to_vec(&empty, config())
        .map_err(|e| FrameError::Corrupt(e.to_string()))?;
    // The last byte is the empty length.
    prefix.pop();
    Ok(prefix)
}

/// The frame of `Response { id, result: Ok(Reply::Data(data)) }` without the
/// data: sent first, and the data after it as it is, the two make exactly the
/// frame [`encode`] would have built by copying the data.
pub fn encode_data_head(id: u64, data_len: usize) -> Result<Vec<u8>, FrameError> {
    with_length(data_prefix(id)?, data_len)
}

/// The bincode prefix of `Request { id, op: Op::Write { handle, offset, .. } }`
/// before the data's length (see [`data_prefix`]).
fn write_prefix(id: u64, handle: u64, offset: u64) -> Result<Vec<u8>, FrameError> {
    let empty = crate::proto::Request {
        id,
        op: crate::proto::Op::Write {
            handle,
            offset,
            data: Vec::new(),
        },
    };
    let mut prefix = bincode::serde::encode_to_vec(&empty, config())
        .map_err(|e| FrameError::Corrupt(e.to_string()))?;
    prefix.pop();
    Ok(prefix)
}

/// The frame of a `Write` request without its data, which is sent right after
/// it from the caller's buffer: together they are exactly what [`encode`]
/// would have built by copying the data.
pub fn encode_write_head(
    id: u64,
    handle: u64,
    offset: u64,
    data_len: usize,
) -> Result<Vec<u8>, FrameError> {
    with_length(write_prefix(id, handle, offset)?, data_len)
}

/// `prefix` framed for `data_len` bytes of data to follow: the frame header, the
/// prefix and the data's encoded length.
fn with_length(prefix: Vec<u8>, data_len: usize) -> Result<Vec<u8>, FrameError> {
    let mut head = vec![0; HEADER];
    head.extend_from_slice(&prefix);
    let len = bincode::serde::encode_to_vec(data_len as u64, config())
        .map_err(|e| FrameError::Corrupt(e.to_string()))?;
    head.extend_from_slice(&len);
    let total = head.len() - HEADER + data_len;
    if total > MAX_FRAME {
        return Err(FrameError::TooLarge(total as u64));
    }
    head[..HEADER].copy_from_slice(&(total as u32).to_le_bytes());
    Ok(head)
}

/// Splits a `Write` request's prefix off `head` (the first bytes of a payload
/// of `len` bytes): id, handle, offset, and where the data starts. The prefix is
/// encoded again and compared, so only an exact bincode `Write` is taken.
fn split_write(head: &[u8], len: usize) -> Option<(u64, u64, u64, usize)> {
    // The variant index of `Write`, as bincode writes it (after an id of 0).
    static INDEX: std::sync::OnceLock<Option<u8>> = std::sync::OnceLock::new();
    let index = (*INDEX.get_or_init(|| write_prefix(0, 0, 0).ok()?.get(1).copied()))?;
    let (id, mut at) = varint(head)?;
    if *head.get(at)? != index {
        return None;
    }
    at += 1;
    let (handle, n) = varint(head.get(at..)?)?;
    at += n;
    let (offset, n) = varint(head.get(at..)?)?;
    at += n;
    let (data_len, n) = varint(head.get(at..)?)?;
    at += n;
    if at as u64 + data_len != len as u64 {
        return None;
    }
    let prefix = write_prefix(id, handle, offset).ok()?;
    let mut expected = prefix;
    expected.extend_from_slice(&head[expected.len()..at]);
    (head.get(..at)? == expected.as_slice()).then_some((id, handle, offset, at))
}

/// A request frame: a whole payload to [`decode`], or a `Write` whose data was
/// read into a buffer of its own (no copy out of the frame).
#[derive(Debug, PartialEq, Eq)]
pub enum RequestFrame {
    Whole(Vec<u8>),
    Write {
        id: u64,
        handle: u64,
        offset: u64,
        data: Vec<u8>,
    },
}

impl RequestFrame {
    /// How many bytes the frame's payload took.
    pub fn len(&self) -> usize {
        match self {
            RequestFrame::Whole(p) => p.len(),
            RequestFrame::Write { data, .. } => data.len() + PEEK,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`read_frame_async`] for requests, with a `Write`'s data read apart.
pub async fn read_request_async<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<RequestFrame>, FrameError> {
    let Some(len) = read_len_async(reader).await? else {
        return Ok(None);
    };
    let mut head = Vec::with_capacity(len.min(PEEK));
    (&mut *reader)
        .take(len.min(PEEK) as u64)
        .read_to_end(&mut head)
        .await?;
    if head.len() < len.min(PEEK) {
        return Err(FrameError::Truncated);
    }
    let split = split_write(&head, len).filter(|_| len > PEEK);
    let mut buf = match split {
        Some((_, _, _, start)) => {
            let mut data = Vec::with_capacity(len - start);
            data.extend_from_slice(&head[start..]);
            data
        }
        None => {
            let mut whole = Vec::with_capacity(len);
            whole.extend_from_slice(&head);
            whole
        }
    };
    let rest = len - head.len();
    let before = buf.len();
    (&mut *reader)
        .take(rest as u64)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() - before < rest {
        return Err(FrameError::Truncated);
    }
    Ok(Some(match split {
        Some((id, handle, offset, _)) => RequestFrame::Write {
            id,
            handle,
            offset,
            data: buf,
        },
        None => RequestFrame::Whole(buf),
    }))
}

/// Reads a bincode variable-length integer (unsigned, little-endian) at the
/// start of `bytes`: its value and its size.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let wide = |n: usize| -> Option<u64> {
        let raw = bytes.get(1..1 + n)?;
        let mut le = [0u8; 8];
        le[..n].copy_from_slice(raw);
        Some(u64::from_le_bytes(le))
    };
    match first {
        0..=250 => Some((u64::from(first), 1)),
        251 => Some((wide(2)?, 3)),
        252 => Some((wide(4)?, 5)),
        253 => Some((wide(8)?, 9)),
        _ => None,
    }
}

/// Splits a data answer's prefix off `head` (the first bytes of a payload of
/// `len` bytes): the request id and where the data starts.
fn split_data(head: &[u8], len: usize) -> Option<(u64, usize)> {
    let (id, _) = varint(head)?;
    let prefix = data_prefix(id).ok()?;
    if head.get(..prefix.len())? != prefix.as_slice() {
        return None;
    }
    let (data_len, len_len) = varint(&head[prefix.len()..])?;
    let start = prefix.len() + len_len;
    (start as u64 + data_len == len as u64).then_some((id, start))
}

/// Reads one frame from the server; `Ok(None)` on a clean end of stream. A data
/// answer's bytes are read straight into their own buffer, which becomes the
/// `Reply::Data` without a copy.
pub fn read_response<R: Read>(reader: &mut R) -> Result<Option<ResponseFrame>, FrameError> {
    let Some(len) = read_len(reader)? else {
        return Ok(None);
    };
    let mut head = Vec::with_capacity(len.min(PEEK));
    reader.take(len.min(PEEK) as u64).read_to_end(&mut head)?;
    if head.len() < len.min(PEEK) {
        return Err(FrameError::Truncated);
    }
    let (mut buf, id) = match split_data(&head, len).filter(|_| len > PEEK) {
        Some((id, start)) => {
            let mut data = Vec::with_capacity(len - start);
            data.extend_from_slice(&head[start..]);
            (data, Some(id))
        }
        None => {
            let mut whole = Vec::with_capacity(len);
            whole.extend_from_slice(&head);
            (whole, None)
        }
    };
    let rest = len - head.len();
    let before = buf.len();
    reader.take(rest as u64).read_to_end(&mut buf)?;
    if buf.len() - before < rest {
        return Err(FrameError::Truncated);
    }
    Ok(Some(match id {
        Some(id) => ResponseFrame::Data { id, data: buf },
        None => ResponseFrame::Whole(buf),
    }))
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

    #[test]
    fn a_write_head_and_its_data_make_the_whole_frame_and_split_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (id, handle, offset) in [
            (0u64, 0u64, 0u64),
            (300, 70_000, 5 << 30),
            (u64::MAX, 1, u64::MAX),
        ] {
            for n in [0usize, 31, 250, 251, 70_000, MAX_CHUNK as usize] {
                let data = vec![0xcd; n];
                let mut split = encode_write_head(id, handle, offset, n).unwrap();
                split.extend_from_slice(&data);
                let request = Request {
                    id,
                    op: Op::Write {
                        handle,
                        offset,
                        data: data.clone(),
                    },
                };
                let whole = encode(&request).unwrap();
                assert_eq!(split, whole, "id {id}, {n} bytes");
                let got = rt
                    .block_on(read_request_async(&mut whole.as_slice()))
                    .unwrap()
                    .unwrap();
                match got {
                    RequestFrame::Write {
                        id: i,
                        handle: h,
                        offset: o,
                        data: d,
                    } => assert_eq!((i, h, o, d), (id, handle, offset, data)),
                    RequestFrame::Whole(p) => {
                        assert!(p.len() <= PEEK);
                        assert_eq!(decode::<Request>(&p).unwrap(), request);
                    }
                }
            }
        }
        // Anything else comes whole.
        let other = Request {
            id: 5,
            op: Op::Read {
                handle: 1,
                offset: 2,
                len: 3,
            },
        };
        let frame = encode(&other).unwrap();
        let got = rt
            .block_on(read_request_async(&mut frame.as_slice()))
            .unwrap()
            .unwrap();
        assert_eq!(got, RequestFrame::Whole(frame[HEADER..].to_vec()));
        // Truncated: an error; empty: none.
        let frame = encode_write_head(1, 2, 3, 1000).unwrap();
        assert!(matches!(
            rt.block_on(read_request_async(&mut frame.as_slice())),
            Err(FrameError::Truncated)
        ));
        assert!(rt
            .block_on(read_request_async(&mut (&[] as &[u8])))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_data_head_and_its_data_make_the_whole_frame() {
        for id in [0u64, 300, u64::MAX] {
            for n in [0usize, 250, 251, 70_000, MAX_CHUNK as usize] {
                let data = vec![0xab; n];
                let mut split = encode_data_head(id, n).unwrap();
                split.extend_from_slice(&data);
                let whole = encode(&Response {
                    id,
                    result: Ok(Reply::Data(data)),
                })
                .unwrap();
                assert_eq!(split, whole, "id {id}, {n} bytes");
            }
        }
        assert!(matches!(
            encode_data_head(1, MAX_FRAME),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn data_answers_are_read_apart_and_everything_else_whole() {
        let sizes = [0usize, 1, 31, 250, 251, 65_535, 65_536, MAX_CHUNK as usize];
        for id in [0u64, 250, 251, 70_000, u64::MAX] {
            for &n in &sizes {
                let data: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
                let resp = Response {
                    id,
                    result: Ok(Reply::Data(data.clone())),
                };
                let frame = encode(&resp).unwrap();
                let got = read_response(&mut Cursor::new(&frame)).unwrap().unwrap();
                match got {
                    ResponseFrame::Data {
                        id: got_id,
                        data: got,
                    } => {
                        assert_eq!((got_id, got), (id, data));
                    }
                    ResponseFrame::Whole(payload) => {
                        // Only frames no longer than the peek are read whole.
                        assert!(payload.len() <= PEEK, "id {id}, {n} bytes");
                        assert_eq!(decode::<Response>(&payload).unwrap(), resp);
                    }
                }
            }
        }
        // Other answers, errors included, come whole and decode as before.
        let others = [
            Response {
                id: 7,
                result: Ok(Reply::Target(vec![1; 100])),
            },
            Response {
                id: 8,
                result: Err(Errno::ENOENT),
            },
            Response {
                id: 9,
                result: Ok(Reply::Written(1 << 20)),
            },
        ];
        for resp in others {
            let frame = encode(&resp).unwrap();
            match read_response(&mut Cursor::new(&frame)).unwrap().unwrap() {
                ResponseFrame::Whole(payload) => {
                    assert_eq!(decode::<Response>(&payload).unwrap(), resp)
                }
                other => panic!("{other:?}"),
            }
        }
        // A truncated data answer is an error, a clean end is none.
        let frame = encode(&Response {
            id: 1,
            result: Ok(Reply::Data(vec![5; 1000])),
        })
        .unwrap();
        assert!(matches!(
            read_response(&mut Cursor::new(&frame[..500])),
            Err(FrameError::Truncated)
        ));
        assert!(read_response(&mut Cursor::new(&[] as &[u8]))
            .unwrap()
            .is_none());
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
        ] {
            round_trip(Request { id: 9, op });
        }
        round_trip(Response {
            id: 1,
            result: Err(Errno::ENOTEMPTY),
        });
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
    fn clean_eof_between_frames_is_not_an_error() {
        assert!(read_frame(&mut Cursor::new(Vec::<u8>::new()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        let frame = encode(&Request {
            id: 1,
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
                op: Op::StatFs,
            },
            &mut buf,
        )
        .unwrap();
        encode_into(
            &Request {
                id: 2,
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
