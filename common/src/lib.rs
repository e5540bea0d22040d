//! ferry's wire protocol, shared by the export server and the clients.
//!
//! A tour of the modules:
//!
//! - [`proto`]: the messages. A connection opens with [`proto::Hello`] /
//!   [`proto::HandshakeReply`]; after that every [`proto::Request`] carries an id and
//!   the server answers each with a [`proto::Response`] of the same id, in any order.
//!   Everything the server sends is a [`proto::ServerMessage`]: an answer, or — to a
//!   connection that subscribed — a [`proto::Notice`] that something it may have
//!   cached has changed (coherent caches).
//! - [`frame`]: how a message travels: a little-endian `u32` length, then a bincode
//!   payload. The length is checked against [`frame::MAX_FRAME`] before anything is
//!   allocated, and every decode runs under the same limit. File data (a read's
//!   answer, a write's request) is sent after its frame's head from the buffer it
//!   is in, and read into a buffer of its own ([`frame::read_response`],
//!   [`frame::read_request_async`]).
//! - [`attr`]: file attributes and filesystem statistics as they cross the wire.
//! - [`errno`]: errors travel as errno values so the FUSE side can hand them
//!   straight to the kernel.
//! - [`path`]: paths relative to the export root, and the checks every
//!   component must pass before the server looks at it.
//! - [`sync`]: the one mutex helper both sides use; [`socket`]: TCP keepalive.
//! - [`lockset`]: the byte ranges one lock owner holds on one file, merged
//!   and split as the kernel does.
//! - [`counters`]: the lock-free counters and latency histograms behind `ferry
//!   status` and the server's metrics.
//! - [`address`]: how a person names a server, an export on it and a directory
//!   in that (`HOST[:PORT][/EXPORT][:/DIR]`).
//! - [`auth`]: fingerprints, access tokens and the session-bound proof of a
//!   token; [`tls`]: TLS 1.3 on aws-lc-rs with pinned self-signed
//!   certificates; [`records`]: TLS 1.3's record layer, which ferry runs
//!   itself once rustls has made the handshake. Every cryptographic choice
//!   lives in these three.
//! - [`state`]: the state directory and the names of the files in it.

#![warn(unreachable_pub)]

pub mod address;
pub mod attr;
pub mod auth;
pub mod counters;
pub mod errno;
pub mod frame;
pub mod lockset;
pub mod path;
pub mod proto;
pub mod records;
pub mod socket;
pub mod state;
pub mod sync;
pub mod tls;

pub use address::Address;
pub use attr::{Attr, FileKind, StatFs, Timestamp};
pub use errno::Errno;
pub use path::RelPath;
