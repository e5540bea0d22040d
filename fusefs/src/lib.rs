//! ferry's clients: the FUSE filesystem and the plain `ls`/`get`/`put` client.
//!
//! A tour, from the kernel down to the network:
//!
//! - [`adapter`]: `FerryFs`, the impl of fuser's `Filesystem`. It only converts the
//!   kernel's types to the core's and answers with `reply.*`.
//! - [`core`]: the filesystem's logic as plain methods (inode numbers, names,
//!   offsets, flags in; `Result<T, Errno>` out, to a callback), split by idea:
//!   names, file I/O, directories, attributes, re-opening after a reconnect,
//!   locks, extended attributes. No `fuser` type below the adapter: tests drive
//!   the core against an in-process server without `/dev/fuse`.
//! - State the core keeps: `inode` (`InodeTable`, the kernel's inode numbers ↔
//!   remote paths), `files` (`OpenFiles`, the kernel's file handles ↔ server
//!   handles), `writeback` (`WriteBehind`, writes and attribute changes answered
//!   before the server has, with their order and errors), `opened_data`
//!   (`OpenedData`, the first bytes of files opened for reading, sent with the
//!   open, answering the kernel's first reads), `listing_ahead`
//!   (`ListingsAhead`, the listings a walk will want next, fetched before the
//!   kernel asks), `attrcache` and
//!   `known` (attributes and absent names the server vouched for recently), all
//!   timed by `cache` (`TimedCache`); `locks` (waiting for file locks, flock
//!   detection); `space` (`FreeSpace`, the export's free space as last
//!   reported, which decides when writes go through so `write(2)` meets ENOSPC).
//! - [`client`]: `RemoteClient`, one pipelined TLS connection to a server
//!   (the server pinned, the client authenticated), with deadlines,
//!   keepalive pings, reconnection off the request path and connection epochs.
//! - [`creds`]: who each request is made for: the mount's caller (groups read
//!   from `/proc` and kept briefly), or the `ls`/`get`/`put` process itself.
//! - [`notify`]: `KernelNotifier`, which carries out the core's requests to drop
//!   kernel caches, through fuser's `Notifier`, on a thread of its own.
//! - [`mount`]: mounting, the mountpoint checks, signals and clean unmounting.
//! - [`cli`]: the plain `ls`/`get`/`put` client, no mount needed.
//! - [`stats`]: what the client counts (requests, round trips, bytes, cache
//!   hits), and [`status`]: `ferry status`, served by the mount on a private
//!   Unix socket.
//! - [`windows`]: how much the mount keeps in flight (write-behind, the
//!   kernel's readahead), sized from the path's measured round-trip time.

#![warn(unreachable_pub)]

pub mod adapter;
mod attrcache;
mod cache;
pub mod cli;
pub mod client;
pub mod core;
pub mod creds;
mod files;
mod files_ahead;
mod inode;
mod known;
mod listing_ahead;
mod locks;
pub mod mount;
pub mod notify;
mod opened_data;
pub mod space;
pub mod stats;
pub mod status;
pub mod units;
pub mod windows;
mod writeback;

pub use adapter::FerryFs;
pub use client::RemoteClient;
pub use core::{Core, FsOptions};
