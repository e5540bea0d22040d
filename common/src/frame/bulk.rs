//! Bulk frames: file data kept out of copies.
//!
//! A read's answer (`ServerMessage::Response(Response { id, result:
//! Ok(Reply::Data(data)) })`) and a write's request (`Request { id, cred, op:
//! Op::Write { handle, offset, data } }`)
//! end with the file's data. The sender writes the frame's head
//! ([`encode_data_head`], [`encode_write_head`]) and then the data from the
//! buffer it already has; the receiver reads the data straight into a buffer of
//! its own ([`read_response`], [`read_request_async`]). On the wire these are
//! ordinary frames, byte for byte what [`encode`](super::encode) builds.
//!
//! Both readers make the same decision: read the frame's first [`PEEK`] bytes,
//! see whether they are exactly the prefix of a bulk message with a data length
//! that ends the frame, and read the rest either after the data already peeked
//! or after the whole head (see [`Peeked`]). Anything else is read whole, for
//! [`decode`](super::decode) to judge.

use super::{
    buffers, config, read_appending, read_appending_async, read_exactly, read_exactly_async,
    read_len, read_len_async, FrameError, HEADER, MAX_FRAME,
};
use crate::proto::{Cred, Op, Reply, Request, Response, ServerMessage};
use std::io::Read;
use std::sync::OnceLock;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How many bytes of a frame are read before deciding whether it is a bulk
/// frame. A write's prefix (id, credential, variant, handle, offset, length)
/// fits whenever its credential lists up to 41 supplementary groups (69 with
/// group ids below 65536); a write with more comes whole, decoded as any other
/// frame at the cost of one copy of its data.
const PEEK: usize = 256;

/// A frame from the server: a whole payload to [`decode`](super::decode) as a
/// [`ServerMessage`], or — read apart from the rest, without copying it again —
/// the bytes of a `Reply::Data` answer.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseFrame {
    Whole(Vec<u8>),
    Data { id: u64, data: Vec<u8> },
}

/// A request frame: a whole payload to [`decode`](super::decode), or a `Write`
/// whose data was read into a buffer of its own (no copy out of the frame).
#[derive(Debug, PartialEq, Eq)]
pub enum RequestFrame {
    Whole(Vec<u8>),
    Write {
        id: u64,
        cred: Cred,
        handle: u64,
        offset: u64,
        data: Vec<u8>,
        /// The frame's whole payload length: the prefix, then `data`.
        payload_len: usize,
    },
}

impl RequestFrame {
    /// The frame's payload length in bytes (the header not counted), whichever
    /// way it was read.
    pub fn len(&self) -> usize {
        match self {
            RequestFrame::Whole(payload) => payload.len(),
            RequestFrame::Write { payload_len, .. } => *payload_len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The frame of the answer `Response { id, result: Ok(Reply::Data(data)) }`
/// without the data: sent first, and the data after it as it is, the two make exactly the
/// frame [`encode`](super::encode) would have built by copying the data.
pub fn encode_data_head(id: u64, data_len: usize) -> Result<Vec<u8>, FrameError> {
    with_length(data_prefix(id)?, data_len)
}

/// The frame of a `Write` request without its data, which is sent right after
/// it from the caller's buffer: together they are exactly what
/// [`encode`](super::encode) would have built by copying the data.
pub fn encode_write_head(
    id: u64,
    cred: &Cred,
    handle: u64,
    offset: u64,
    data_len: usize,
) -> Result<Vec<u8>, FrameError> {
    with_length(write_prefix(id, cred, handle, offset)?, data_len)
}

/// Reads one frame from the server; `Ok(None)` on a clean end of stream. A data
/// answer's bytes are read straight into their own buffer, which becomes the
/// `Reply::Data` without a copy.
pub fn read_response<R: Read>(reader: &mut R) -> Result<Option<ResponseFrame>, FrameError> {
    read_bulk(reader)
}

/// [`read_response`] for an async stream.
pub async fn read_response_async<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<ResponseFrame>, FrameError> {
    read_bulk_async(reader).await
}

/// [`read_frame_async`](super::read_frame_async) for requests, with a `Write`'s
/// data read apart.
pub async fn read_request_async<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<RequestFrame>, FrameError> {
    read_bulk_async(reader).await
}

/// A kind of frame that may carry file data after a short prefix.
trait Bulk: Sized {
    /// The prefix's fields besides the data's length.
    type Prefix;
    /// Splits a bulk message's prefix off `head`, the first bytes of a payload of
    /// `len` bytes: its fields, and where the data starts. `None` unless `head`
    /// starts with exactly such a prefix and its data ends the payload.
    fn split(head: &[u8], len: usize) -> Option<(Self::Prefix, usize)>;
    /// The frame read apart: its prefix's fields, its data, its payload's length.
    fn bulk(prefix: Self::Prefix, data: Vec<u8>, len: usize) -> Self;
    /// Any other frame: the payload, whole.
    fn whole(payload: Vec<u8>) -> Self;
}

impl Bulk for ResponseFrame {
    type Prefix = u64;

    fn split(head: &[u8], len: usize) -> Option<(u64, usize)> {
        split_data(head, len)
    }

    fn bulk(id: u64, data: Vec<u8>, _len: usize) -> Self {
        ResponseFrame::Data { id, data }
    }

    fn whole(payload: Vec<u8>) -> Self {
        ResponseFrame::Whole(payload)
    }
}

/// A write's prefix: id, credential, handle, offset.
type WritePrefix = (u64, Cred, u64, u64);

impl Bulk for RequestFrame {
    type Prefix = WritePrefix;

    fn split(head: &[u8], len: usize) -> Option<(WritePrefix, usize)> {
        split_write(head, len)
    }

    fn bulk((id, cred, handle, offset): WritePrefix, data: Vec<u8>, len: usize) -> Self {
        RequestFrame::Write {
            id,
            cred,
            handle,
            offset,
            data,
            payload_len: len,
        }
    }

    fn whole(payload: Vec<u8>) -> Self {
        RequestFrame::Whole(payload)
    }
}

/// A frame whose first bytes have been read, with the buffer the rest goes into.
/// The one decision both readers share.
struct Peeked<F: Bulk> {
    /// The prefix's fields if this is a bulk frame; `buf` then holds data only.
    prefix: Option<F::Prefix>,
    buf: Vec<u8>,
    /// The payload's length.
    len: usize,
    /// Where the rest of the payload goes in `buf`.
    rest: Rest,
}

/// Where the unread part of a frame goes.
enum Rest {
    /// Appended to the buffer, so many bytes.
    Append(usize),
    /// Into the buffer from this offset to its end: it has its full length
    /// already (a data buffer given back, see [`super::buffers`]).
    Fill(usize),
}

impl<F: Bulk> Peeked<F> {
    /// `head` is the first `min(len, PEEK)` bytes of a payload of `len` bytes.
    /// A frame no longer than the peek is all in `head` already and is taken
    /// whole: splitting it would save nothing.
    fn new(head: &[u8], len: usize) -> Peeked<F> {
        let split = if len > PEEK {
            F::split(head, len)
        } else {
            None
        };
        // Each buffer gets the capacity for the whole of what it will hold, so
        // the rest is read into it without a reallocation.
        let unread = len - head.len();
        let (prefix, buf, rest) = match split {
            Some((prefix, start)) => {
                let peeked = &head[start..];
                match buffers::take(len - start) {
                    Some(mut data) => {
                        data[..peeked.len()].copy_from_slice(peeked);
                        (Some(prefix), data, Rest::Fill(peeked.len()))
                    }
                    None => {
                        let mut data = Vec::with_capacity(len - start);
                        data.extend_from_slice(peeked);
                        (Some(prefix), data, Rest::Append(unread))
                    }
                }
            }
            None => {
                let mut whole = Vec::with_capacity(len);
                whole.extend_from_slice(head);
                (None, whole, Rest::Append(unread))
            }
        };
        Peeked {
            prefix,
            buf,
            len,
            rest,
        }
    }

    /// Reads the rest of the frame from a blocking stream.
    fn read_rest<R: Read>(&mut self, reader: &mut R) -> Result<(), FrameError> {
        match self.rest {
            Rest::Fill(at) => read_exactly(reader, &mut self.buf[at..]),
            Rest::Append(n) => read_appending(reader, &mut self.buf, n),
        }
    }

    /// Reads the rest of the frame from an async stream.
    async fn read_rest_async<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<(), FrameError> {
        match self.rest {
            Rest::Fill(at) => read_exactly_async(reader, &mut self.buf[at..]).await,
            Rest::Append(n) => read_appending_async(reader, &mut self.buf, n).await,
        }
    }

    /// The frame, once `rest` more bytes have been read into `buf`.
    fn finish(self) -> F {
        match self.prefix {
            Some(prefix) => F::bulk(prefix, self.buf, self.len),
            None => F::whole(self.buf),
        }
    }
}

/// Reads one frame of kind `F` from a blocking stream; `Ok(None)` on a clean
/// end of stream.
fn read_bulk<F: Bulk, R: Read>(reader: &mut R) -> Result<Option<F>, FrameError> {
    let Some(len) = read_len(reader)? else {
        return Ok(None);
    };
    let mut head = [0u8; PEEK];
    let head = &mut head[..len.min(PEEK)];
    reader.read_exact(head)?;
    let mut peeked = Peeked::<F>::new(head, len);
    peeked.read_rest(reader)?;
    Ok(Some(peeked.finish()))
}

/// [`read_bulk`] for an async stream.
async fn read_bulk_async<F: Bulk, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<F>, FrameError> {
    let Some(len) = read_len_async(reader).await? else {
        return Ok(None);
    };
    let mut head = [0u8; PEEK];
    let head = &mut head[..len.min(PEEK)];
    reader.read_exact(head).await?;
    let mut peeked = Peeked::<F>::new(head, len);
    peeked.read_rest_async(reader).await?;
    Ok(Some(peeked.finish()))
}

/// The bincode prefix of the answer `Response { id, result:
/// Ok(Reply::Data(..)) }` before the data's length, found by encoding an empty
/// one (so it follows the message types and the codec's configuration instead
/// of copying them).
fn data_prefix(id: u64) -> Result<Vec<u8>, FrameError> {
    let empty = ServerMessage::Response(Response {
        id,
        result: Ok(Reply::Data(Vec::new())),
    });
    let mut prefix = bincode::serde::encode_to_vec(&empty, config())
        .map_err(|e| FrameError::Corrupt(e.to_string()))?;
    // The last byte is the empty length.
    prefix.pop();
    Ok(prefix)
}

/// The bincode prefix of `Request { id, cred, op: Op::Write { handle, offset, .. } }`
/// before the data's length (see [`data_prefix`]).
fn write_prefix(id: u64, cred: &Cred, handle: u64, offset: u64) -> Result<Vec<u8>, FrameError> {
    let empty = Request {
        id,
        cred: cred.clone(),
        op: Op::Write {
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

/// Splits a data answer's prefix off `head` (the first bytes of a payload of
/// `len` bytes): the request id and where the data starts. The id follows the
/// one byte of the message's variant (an answer, not a notice); the whole
/// prefix is then compared with the one encoded for that id.
fn split_data(head: &[u8], len: usize) -> Option<(u64, usize)> {
    let (id, _) = varint(head.get(1..)?)?;
    let prefix = data_prefix(id).ok()?;
    if head.get(..prefix.len())? != prefix.as_slice() {
        return None;
    }
    let (data_len, len_len) = varint(&head[prefix.len()..])?;
    let start = prefix.len() + len_len;
    // The length is the peer's: it may be anything, up to u64::MAX.
    ((start as u64).checked_add(data_len) == Some(len as u64)).then_some((id, start))
}

/// Splits a `Write` request's prefix off `head` (the first bytes of a payload
/// of `len` bytes): id, credential, handle and offset, and where the data
/// starts. The prefix is encoded again and compared, so only an exact bincode
/// `Write` is taken.
fn split_write(head: &[u8], len: usize) -> Option<(WritePrefix, usize)> {
    // The variant index of `Write`, as bincode writes it after an id of 0 and
    // an empty credential.
    static INDEX: OnceLock<Option<u8>> = OnceLock::new();
    let index = (*INDEX.get_or_init(|| {
        let lead = encoded_len(&(0u64, Cred::default()))?;
        let prefix = write_prefix(0, &Cred::default(), 0, 0).ok()?;
        prefix.get(lead).copied()
    }))?;
    let (id, mut at) = varint(head)?;
    // The credential decodes as itself: its layout follows its type. A head cut
    // inside it (too many groups for the peek) fails here and comes whole.
    let limited = config().with_limit::<PEEK>();
    let (cred, n): (Cred, usize) =
        bincode::serde::decode_from_slice(head.get(at..)?, limited).ok()?;
    at += n;
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
    if (at as u64).checked_add(data_len) != Some(len as u64) {
        return None;
    }
    let mut expected = write_prefix(id, &cred, handle, offset).ok()?;
    expected.extend_from_slice(head.get(expected.len()..at)?);
    (head.get(..at)? == expected.as_slice()).then_some(((id, cred, handle, offset), at))
}

/// How many bytes bincode writes for `value`.
fn encoded_len(value: &impl serde::Serialize) -> Option<usize> {
    bincode::serde::encode_to_vec(value, config())
        .ok()
        .map(|v| v.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errno::Errno;
    use crate::frame::{decode, encode, give_back, MAX_CHUNK};
    use crate::proto::{Change, NodeId, Notice};
    use std::io::Cursor;

    fn answer(id: u64, result: Result<Reply, Errno>) -> ServerMessage {
        ServerMessage::Response(Response { id, result })
    }

    /// An ordinary user's credential.
    fn cred() -> Cred {
        Cred {
            uid: 1000,
            gid: 1000,
            groups: vec![4, 24, 27, 1000],
        }
    }

    /// A frame whose prefix is a data answer's or a write's, but whose data
    /// length is `u64::MAX` (found by the fuzzer: the sum overflowed). Both
    /// readers take it whole, and decoding it fails.
    #[test]
    fn a_data_length_near_u64_max_is_no_bulk_frame() {
        let mut data_head = data_prefix(7).unwrap();
        let mut write_head = write_prefix(7, &cred(), 1, 0).unwrap();
        for head in [&mut data_head, &mut write_head] {
            head.push(253);
            head.extend_from_slice(&u64::MAX.to_le_bytes());
            head.resize(64, 0);
            let mut frame = (head.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(head);
            let response = read_response(&mut Cursor::new(&frame)).unwrap().unwrap();
            assert!(matches!(response, ResponseFrame::Whole(_)), "{response:?}");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let request = runtime
                .block_on(read_request_async(&mut Cursor::new(&frame)))
                .unwrap()
                .unwrap();
            assert!(matches!(request, RequestFrame::Whole(_)), "{request:?}");
            assert!(decode::<ServerMessage>(head).is_err());
        }
    }

    #[test]
    fn a_write_head_and_its_data_make_the_whole_frame_and_split_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let creds = [
            Cred::default(),
            cred(),
            Cred {
                uid: u32::MAX,
                gid: u32::MAX,
                groups: vec![u32::MAX; 8],
            },
        ];
        for ((id, handle, offset), cred) in [
            (0u64, 0u64, 0u64),
            (300, 70_000, 5 << 30),
            (u64::MAX, 1, u64::MAX),
        ]
        .into_iter()
        .zip(creds)
        {
            for n in [0usize, 31, 250, 251, 70_000, MAX_CHUNK as usize] {
                let data = vec![0xcd; n];
                let mut split = encode_write_head(id, &cred, handle, offset, n).unwrap();
                split.extend_from_slice(&data);
                let request = Request {
                    id,
                    cred: cred.clone(),
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
                assert_eq!(got.len(), whole.len() - HEADER, "id {id}, {n} bytes");
                match got {
                    RequestFrame::Write {
                        id: i,
                        cred: c,
                        handle: h,
                        offset: o,
                        data: d,
                        ..
                    } => assert_eq!((i, c, h, o, d), (id, cred.clone(), handle, offset, data)),
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
            cred: cred(),
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
        let frame = encode_write_head(1, &cred(), 2, 3, 1000).unwrap();
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
    fn a_write_whose_credential_outgrows_the_peek_comes_whole() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let data = vec![0xab; 4096];
        // 41 of the largest group ids fit the peek, with the largest id, handle
        // and offset; many more do not.
        for (groups, splits) in [(41usize, true), (1000, false)] {
            let request = Request {
                id: u64::MAX,
                cred: Cred {
                    uid: u32::MAX,
                    gid: u32::MAX,
                    groups: vec![u32::MAX; groups],
                },
                op: Op::Write {
                    handle: u64::MAX,
                    offset: u64::MAX,
                    data: data.clone(),
                },
            };
            let Op::Write { handle, offset, .. } = request.op else {
                unreachable!()
            };
            let mut split =
                encode_write_head(request.id, &request.cred, handle, offset, data.len()).unwrap();
            split.extend_from_slice(&data);
            let whole = encode(&request).unwrap();
            assert_eq!(split, whole, "{groups} groups");
            let got = rt
                .block_on(read_request_async(&mut whole.as_slice()))
                .unwrap()
                .unwrap();
            match got {
                RequestFrame::Write { cred, data: d, .. } => {
                    assert!(splits, "{groups} groups split");
                    assert_eq!((cred, d), (request.cred.clone(), data.clone()));
                }
                RequestFrame::Whole(payload) => {
                    assert!(!splits, "{groups} groups came whole");
                    assert_eq!(decode::<Request>(&payload).unwrap(), request);
                }
            }
        }
    }

    #[test]
    fn a_data_head_and_its_data_make_the_whole_frame() {
        for id in [0u64, 300, u64::MAX] {
            for n in [0usize, 250, 251, 70_000, MAX_CHUNK as usize] {
                let data = vec![0xab; n];
                let mut split = encode_data_head(id, n).unwrap();
                split.extend_from_slice(&data);
                let whole = encode(&answer(id, Ok(Reply::Data(data)))).unwrap();
                assert_eq!(split, whole, "id {id}, {n} bytes");
            }
        }
        assert!(matches!(
            encode_data_head(1, MAX_FRAME),
            Err(FrameError::TooLarge(_))
        ));
    }

    /// A chunk is read into a buffer an earlier one was given back in (see
    /// `buffers`): nothing of the earlier chunk shows, whatever the lengths.
    #[test]
    fn a_chunk_read_into_a_buffer_given_back_is_only_itself() {
        let full = MAX_CHUNK as usize;
        let lengths = [full, full - 4096, full / 2 + 1, full, full / 2 + 1];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (round, &n) in lengths.iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|i| (i + round * 7) as u8).collect();
            let frame = encode(&answer(9, Ok(Reply::Data(data.clone())))).unwrap();
            let got = read_response(&mut Cursor::new(&frame)).unwrap().unwrap();
            let ResponseFrame::Data { data: got, .. } = got else {
                panic!("a {n}-byte answer was not read apart");
            };
            assert!(got == data, "round {round}: {n} bytes");
            give_back(got);
            // Async too, and for writes.
            let write = Request {
                id: 3,
                cred: cred(),
                op: Op::Write {
                    handle: 1,
                    offset: 0,
                    data: data.clone(),
                },
            };
            let frame = encode(&write).unwrap();
            let got = runtime
                .block_on(read_request_async(&mut Cursor::new(&frame)))
                .unwrap()
                .unwrap();
            let RequestFrame::Write { data: got, .. } = got else {
                panic!("a {n}-byte write was not read apart");
            };
            assert!(got == data, "round {round}: a write of {n} bytes");
            give_back(got);
        }
    }

    #[test]
    fn data_answers_are_read_apart_and_everything_else_whole() {
        let sizes = [0usize, 1, 31, 250, 251, 65_535, 65_536, MAX_CHUNK as usize];
        for id in [0u64, 250, 251, 70_000, u64::MAX] {
            for &n in &sizes {
                let data: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
                let resp = answer(id, Ok(Reply::Data(data.clone())));
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
                        assert_eq!(decode::<ServerMessage>(&payload).unwrap(), resp);
                    }
                }
            }
        }
        // Other answers, errors included, come whole and decode as before.
        let others = [
            answer(7, Ok(Reply::Target(vec![1; 100]))),
            answer(8, Err(Errno::ENOENT)),
            answer(9, Ok(Reply::Written(1 << 20))),
        ];
        for resp in others {
            let frame = encode(&resp).unwrap();
            match read_response(&mut Cursor::new(&frame)).unwrap().unwrap() {
                ResponseFrame::Whole(payload) => {
                    assert_eq!(decode::<ServerMessage>(&payload).unwrap(), resp)
                }
                other => panic!("{other:?}"),
            }
        }
        // So do notices, even one whose bytes after its variant look like a
        // data answer's.
        let notices = [
            ServerMessage::Notice(Notice::Reset { lease_secs: 60 }),
            ServerMessage::Notice(Notice::Changed(vec![
                Change::Name {
                    path: crate::RelPath::parse("a/b").unwrap(),
                    now: None,
                },
                Change::Node {
                    id: NodeId { dev: 1, ino: 5 },
                    content: true,
                },
            ])),
        ];
        for notice in notices {
            let frame = encode(&notice).unwrap();
            match read_response(&mut Cursor::new(&frame)).unwrap().unwrap() {
                ResponseFrame::Whole(payload) => {
                    assert_eq!(decode::<ServerMessage>(&payload).unwrap(), notice)
                }
                other => panic!("{other:?}"),
            }
        }
        let mut look_alike = encode(&answer(3, Ok(Reply::Data(vec![9; 100])))).unwrap();
        look_alike[HEADER] = 1; // the Notice variant
        assert!(matches!(
            read_response(&mut Cursor::new(&look_alike))
                .unwrap()
                .unwrap(),
            ResponseFrame::Whole(_)
        ));
        // A truncated data answer is an error, a clean end is none.
        let frame = encode(&answer(1, Ok(Reply::Data(vec![5; 1000])))).unwrap();
        assert!(matches!(
            read_response(&mut Cursor::new(&frame[..500])),
            Err(FrameError::Truncated)
        ));
        assert!(read_response(&mut Cursor::new(&[] as &[u8]))
            .unwrap()
            .is_none());
    }

    /// A frame built by hand: the header for `payload`, then `payload`.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn both_readers_share_one_decision_for_both_kinds() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let write = encode(&Request {
            id: 9,
            cred: cred(),
            op: Op::Write {
                handle: 4,
                offset: 1 << 40,
                data: vec![7; 5000],
            },
        })
        .unwrap();
        let data = encode(&answer(9, Ok(Reply::Data(vec![8; 5000])))).unwrap();
        // Each kind through the other kind's reader: the same frames, the same split.
        let sync_write: RequestFrame = read_bulk(&mut write.as_slice()).unwrap().unwrap();
        let async_write = rt
            .block_on(read_request_async(&mut write.as_slice()))
            .unwrap()
            .unwrap();
        assert_eq!(sync_write, async_write);
        assert!(matches!(sync_write, RequestFrame::Write { ref data, .. } if data.len() == 5000));
        let async_data: ResponseFrame = rt
            .block_on(read_bulk_async(&mut data.as_slice()))
            .unwrap()
            .unwrap();
        let sync_data = read_response(&mut data.as_slice()).unwrap().unwrap();
        assert_eq!(sync_data, async_data);
        assert_eq!(
            sync_data,
            ResponseFrame::Data {
                id: 9,
                data: vec![8; 5000]
            }
        );
        // A write is no data answer, and a data answer no write: both come whole.
        assert_eq!(
            read_response(&mut write.as_slice()).unwrap().unwrap(),
            ResponseFrame::Whole(write[HEADER..].to_vec())
        );
        let got: RequestFrame = read_bulk(&mut data.as_slice()).unwrap().unwrap();
        assert_eq!(got, RequestFrame::Whole(data[HEADER..].to_vec()));
        assert_eq!(got.len(), data.len() - HEADER);
    }

    #[test]
    fn look_alikes_come_whole_and_fail_to_decode() {
        // A write whose data length does not end the frame: one byte too many.
        let mut payload = encode(&Request {
            id: 1,
            cred: cred(),
            op: Op::Write {
                handle: 2,
                offset: 3,
                data: vec![1; 100],
            },
        })
        .unwrap()[HEADER..]
            .to_vec();
        payload.push(0);
        let got: RequestFrame = read_bulk(&mut framed(&payload).as_slice())
            .unwrap()
            .unwrap();
        assert_eq!(got, RequestFrame::Whole(payload.clone()));
        assert!(matches!(
            decode::<Request>(&payload),
            Err(FrameError::Corrupt(_))
        ));
        // A data answer whose length claims more than the frame holds.
        let mut payload =
            encode(&answer(1, Ok(Reply::Data(vec![1; 100])))).unwrap()[HEADER..].to_vec();
        payload.truncate(payload.len() - 1);
        let got = read_response(&mut framed(&payload).as_slice())
            .unwrap()
            .unwrap();
        assert_eq!(got, ResponseFrame::Whole(payload.clone()));
        assert!(matches!(
            decode::<ServerMessage>(&payload),
            Err(FrameError::Corrupt(_))
        ));
        // A varint tag no integer has, where the id should be.
        let mut payload = vec![0xff; 64];
        payload[1] = 0;
        let got = read_response(&mut framed(&payload).as_slice())
            .unwrap()
            .unwrap();
        assert_eq!(got, ResponseFrame::Whole(payload));
    }

    #[test]
    fn a_frame_cut_short_is_truncated_for_both_readers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let write = encode(&Request {
            id: 1,
            cred: cred(),
            op: Op::Write {
                handle: 2,
                offset: 3,
                data: vec![1; 1000],
            },
        })
        .unwrap();
        let data = encode(&answer(1, Ok(Reply::Data(vec![1; 1000])))).unwrap();
        // Inside the header, inside the peek, inside the data.
        for cut in [2, HEADER + 10, 500] {
            assert!(
                matches!(
                    rt.block_on(read_request_async(&mut &write[..cut])),
                    Err(FrameError::Truncated)
                ),
                "request cut at {cut}"
            );
            assert!(
                matches!(read_response(&mut &data[..cut]), Err(FrameError::Truncated)),
                "answer cut at {cut}"
            );
        }
    }

    #[test]
    fn an_oversized_length_is_refused_by_both_readers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut frame = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&[0; PEEK]);
        assert!(matches!(
            read_response(&mut frame.as_slice()),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            rt.block_on(read_request_async(&mut frame.as_slice())),
            Err(FrameError::TooLarge(_))
        ));
    }
}
