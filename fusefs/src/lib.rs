//! ferry's clients.
//!
//! - [`client`]: `RemoteClient`, one pipelined connection to a server.
//! - [`known`]: `KnownDirs`, directories whose every name is known, briefly.
//! - [`inode`]: `InodeTable`, the kernel's inode numbers ↔ remote paths.
//! - [`files`]: `OpenFiles`, the kernel's file handles ↔ server handles, re-opened
//!   by path after a reconnect.
//! - [`writeback`]: `WriteBehind`, writes and attribute changes answered before
//!   the server has, with their order, visibility and errors kept.
//! - [`locks`]: file locks held by the server: flock detection, waiting.
//! - [`fs`]: `FerryFs`, the `fuser::Filesystem` adapter over a `RemoteClient`.
//! - [`mount`]: mounting, the mountpoint checks, signals and clean unmounting.
//! - [`cli`]: the plain `ls`/`get`/`put` client, no mount needed.
//! - [`attrcache`]: `AttrCache`, the server's last word on each inode's attributes.
//! - [`convert`]: translations between wire types and fuser's.

pub mod attrcache;
pub mod cli;
pub mod client;
pub mod convert;
pub mod files;
pub mod fs;
pub mod inode;
pub mod known;
pub mod locks;
pub mod mount;
pub mod writeback;

pub use client::RemoteClient;
pub use fs::{FerryFs, FsOptions};
