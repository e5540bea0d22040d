//! The codec on any bytes: every reader either side uses, and what they must
//! agree on.

use super::Fingerprint;
use ferry_common::frame::{self, FrameError, RequestFrame, ResponseFrame, MAX_FRAME};
use ferry_common::proto::{HandshakeReply, Hello, Op, Reply, Request, Response, ServerMessage};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::io::Cursor;
use std::sync::OnceLock;

/// What decodes must encode and decode back to itself; answers whether it decoded.
fn round_trip<T>(payload: &[u8]) -> bool
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let Ok(msg) = frame::decode::<T>(payload) else {
        return false;
    };
    let encoded = frame::encode(&msg).expect("a decoded message encodes");
    assert!(encoded.len() - 4 <= MAX_FRAME);
    let again: T = frame::decode(&encoded[4..]).expect("an encoded message decodes");
    assert_eq!(again, msg, "a message changed on its way through the codec");
    true
}

fn kind(e: &FrameError) -> u8 {
    match e {
        FrameError::Io(_) => 0,
        FrameError::Truncated => 1,
        FrameError::TooLarge(_) => 2,
        FrameError::Corrupt(_) => 3,
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

/// `data` as a stream of frames, read by the plain reader, the client's bulk
/// reader and the server's bulk reader; each payload decoded as every message.
pub fn frame(data: &[u8]) -> u64 {
    let mut seen = Fingerprint::default();
    let mut plain = Cursor::new(data);
    let mut responses = Cursor::new(data);
    let mut requests = Cursor::new(data);
    loop {
        let whole = frame::read_frame(&mut plain);
        let response = frame::read_response(&mut responses);
        let request = runtime().block_on(frame::read_request_async(&mut requests));
        let payload = match whole {
            Ok(Some(payload)) => payload,
            Ok(None) => {
                assert!(matches!(response, Ok(None)), "{response:?}");
                assert!(matches!(request, Ok(None)), "{request:?}");
                seen.add("end");
                break;
            }
            Err(e) => {
                // The same bytes fail the same way for every reader.
                let other = [response.err(), request.err()].map(|r| r.map(|e| kind(&e)));
                assert_eq!(other, [Some(kind(&e)); 2], "{e}");
                seen.add(("error", kind(&e)));
                break;
            }
        };
        assert!(payload.len() <= MAX_FRAME);
        // A frame the bulk readers split is the message the plain decoder reads.
        match response.expect("the plain reader read this frame") {
            Some(ResponseFrame::Whole(p)) => assert_eq!(p, payload),
            Some(ResponseFrame::Data { id, data }) => {
                let expected = ServerMessage::Response(Response {
                    id,
                    result: Ok(Reply::Data(data)),
                });
                assert_eq!(
                    frame::decode::<ServerMessage>(&payload).ok(),
                    Some(expected)
                );
                seen.add("data");
            }
            None => panic!("the client's reader saw an end the plain reader did not"),
        }
        match request.expect("the plain reader read this frame") {
            Some(RequestFrame::Whole(p)) => assert_eq!(p, payload),
            Some(RequestFrame::Write {
                id,
                cred,
                handle,
                offset,
                data,
                payload_len,
            }) => {
                assert_eq!(payload_len, payload.len());
                let expected = Request {
                    id,
                    cred,
                    op: Op::Write {
                        handle,
                        offset,
                        data,
                    },
                };
                assert_eq!(frame::decode::<Request>(&payload).ok(), Some(expected));
                seen.add("write");
            }
            None => panic!("the server's reader saw an end the plain reader did not"),
        }
        seen.add((
            round_trip::<Request>(&payload),
            round_trip::<ServerMessage>(&payload),
            round_trip::<Hello>(&payload),
            round_trip::<HandshakeReply>(&payload),
        ));
        if let Ok(request) = frame::decode::<Request>(&payload) {
            seen.add(request.op.name());
        }
    }
    seen.finish()
}
