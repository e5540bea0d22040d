//! The messages of ferry's protocol.
//!
//! A connection starts with a handshake: over TLS (unless both ends run
//! `--insecure`) the client sends [`Hello`] with its credential ([`Auth`]),
//! the server answers [`HandshakeReply`], and answers nothing else before it
//! has welcomed the client. A `Hello` frame is at most [`MAX_HELLO`] bytes. From then on the client sends [`Request`]s, each with
//! an id of its choosing, and the server answers every one with a [`Response`]
//! carrying the same id. Many requests may be in flight on one connection and the
//! server answers them in whatever order they finish, so a slow request (a 1 MiB
//! read, an fsync) never holds up a quick one (a getattr).
//!
//! Nodes are named by [`RelPath`] (relative to the export root); open files by a
//! server-side handle that lives as long as the connection.
//!
//! Every request says who asks ([`Cred`]: user, group and supplementary
//! groups, as NFS's `AUTH_SYS` does). The server maps that to the identity it
//! acts as (a client's root is squashed to an anonymous user by default) and
//! checks permissions, and gives new nodes their owner, as that identity.
//!
//! Everything the server sends after the handshake is a [`ServerMessage`]: the
//! answer to a request, or — only on a connection that asked for them with
//! [`Op::Subscribe`] — a [`Notice`], sent unasked, that something the client
//! may have cached has changed (see [`Notice`] for what the promise is).

use crate::attr::{Attr, StatFs, Timestamp};
use crate::errno::Errno;
use crate::path::RelPath;
use serde::{Deserialize, Serialize};
pub use serde_bytes::ByteBuf;

/// The first bytes of every [`Hello`]: tells a ferry peer from anything else.
pub const MAGIC: [u8; 8] = *b"ferry\0\r\n";
/// Bumped on every incompatible change of the messages below.
pub const PROTOCOL_VERSION: u32 = 7;
/// The largest `Hello` frame a server reads; anything longer ends the
/// connection. Room for a deep subtree path, and no more.
pub const MAX_HELLO: usize = 16 * 1024;

/// The client's opening message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 8],
    pub version: u32,
    /// Optional protocol features the client supports, one bit each. None are
    /// defined yet, so both sides send 0 and ignore what they receive.
    pub features: u64,
    /// How the client shows it may use the export.
    pub auth: Auth,
    /// The export to serve, by name; `None` for the server's default export.
    pub export: Option<String>,
    /// The directory inside that export to serve as this connection's root
    /// (every path of the connection is relative to it); the export's root if empty.
    pub subtree: RelPath,
    /// Who this client is from one connection to the next: a random number a
    /// mount draws once and sends on every connection it makes, so that the
    /// server can tell its locks after a reconnect (see [`Op::ReclaimLock`]).
    /// 0: a client that never takes locks back (`ferry ls|get|put`).
    pub client: u128,
}

/// A client's credential in its [`Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Auth {
    /// Nothing beyond the TLS session: a client certificate the server
    /// authorises by fingerprint, or no authentication at all (`--insecure`).
    Session,
    /// The export's access token, shown without sending it: HMAC-SHA256 keyed
    /// with the token over this TLS session's exporter value (see
    /// [`crate::auth::Token::proof`]), so it is worthless on another connection.
    TokenProof([u8; crate::auth::SECRET_LEN]),
}

impl Hello {
    pub fn new() -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            features: 0,
            auth: Auth::Session,
            export: None,
            subtree: RelPath::root(),
            client: 0,
        }
    }
}

impl Default for Hello {
    fn default() -> Self {
        Hello::new()
    }
}

/// What the server says it is and allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u32,
    /// The largest read or write a single request may carry.
    pub max_chunk: u32,
    /// Every mutation answers EROFS.
    pub read_only: bool,
    /// Optional protocol features the server supports, and facts about how it
    /// treats its clients, one bit each (the `WELCOME_*` constants).
    pub features: u64,
    /// Attributes of the connection's root (the export's, or its subtree's).
    pub root: Attr,
    /// This run of the server, a random number drawn when it started: a client
    /// that reconnects and meets another number knows the server restarted,
    /// and that the locks it held are kept only if it reclaims them in time.
    pub instance: u64,
    /// How long the server's grace period still lasts, in milliseconds (0:
    /// none): while it does, clients reclaim the locks they held before the
    /// server restarted, and no other lock is granted.
    pub grace_ms: u64,
}

/// [`Welcome::features`]: requests act as the (mapped) user of their [`Cred`],
/// so the server checks each caller's permissions itself (it runs as root).
/// Without it every request acts as the server's own user.
pub const WELCOME_ACTS_AS_CALLERS: u64 = 1 << 0;
/// [`Welcome::features`]: a client's root acts as the anonymous user.
pub const WELCOME_ROOT_SQUASHED: u64 = 1 << 1;
/// [`Welcome::features`]: every client user acts as the anonymous user.
pub const WELCOME_ALL_SQUASHED: u64 = 1 << 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeReply {
    Welcome(Welcome),
    /// The connection is closed after this; `message` says why, for a person.
    Refused {
        message: String,
    },
}

/// Who asks: the calling process's user, group and supplementary groups as the
/// client knows them, carried by every request (NFS's `AUTH_SYS` credential).
///
/// A client can claim any ids, so this identifies, it does not authenticate:
/// who may connect at all is settled before the first request. What a claim can
/// reach is the server's to limit: it maps a claimed root to an anonymous user
/// unless told otherwise, and checks every request's permissions as the user it
/// maps the claim to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, at most [`MAX_GROUPS`]; they need not repeat `gid`.
    pub groups: Vec<u32>,
}

/// The most supplementary groups a [`Cred`] may list: Linux's `NGROUPS_MAX`.
/// The server refuses a request claiming more with EINVAL.
pub const MAX_GROUPS: usize = 65_536;

/// A time to set: the server's clock, or a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Timestamp),
}

/// The changes a `SetAttr` makes; `None` leaves that attribute alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// After the other changes, clear the setuid bit, and the setgid bit of a
    /// group-executable file, of a regular file: what a write or truncation by a
    /// user without CAP_FSETID does on a local disk. The client decides, as it
    /// knows the writer (the kernel leaves it to FUSE); a server acting as the
    /// writer's root would otherwise keep them.
    pub kill_suidgid: bool,
}

/// One request, numbered by the client, made on behalf of `cred`.
///
/// `cred` comes before `op` so that a `Write`'s data still ends the frame (see
/// `frame::encode_write_head`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub cred: Cred,
    pub op: Op,
}

/// An operation on the export. Paths never follow a symlink: the client (the
/// kernel) resolves symlinks itself, one component at a time, with `ReadLink`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `lstat` → [`Reply::Attr`].
    Stat { path: RelPath },
    /// One page of a directory's entries with their attributes, starting at entry
    /// number `start` (`.` and `..` are not listed) → [`Reply::Entries`].
    ReadDir { path: RelPath, start: u64 },
    /// A directory's entries with their attributes, read through a stream the
    /// server keeps open for this listing, so that a listing costs the server
    /// time in proportion to its size however many replies it takes →
    /// [`Reply::Listing`]. `cursor` 0 starts a listing of `path`; any other
    /// continues the listing the server numbered so (by the same user; `path`
    /// is then not used). `.` and `..` are not listed.
    List { path: RelPath, cursor: u64 },
    /// → [`Reply::Target`].
    ReadLink { path: RelPath },
    /// Opens an existing file with `open(2)` flags (`O_CREAT` is refused; use
    /// `Create`) → [`Reply::Opened`].
    Open { path: RelPath, flags: i32 },
    /// `Open`, then the file's first `len` bytes (at most [`MAX_OPEN_DATA`]) read
    /// in the same step, so that a small file costs one round trip →
    /// [`Reply::OpenedWithData`].
    OpenRead { path: RelPath, flags: i32, len: u32 },
    /// Creates and opens a file, owned by the identity the request acts as →
    /// [`Reply::Created`] (or [`Reply::Opened`]).
    Create {
        path: RelPath,
        flags: i32,
        mode: u32,
    },
    /// → [`Reply::Data`], shorter than `len` only at end of file.
    Read { handle: u64, offset: u64, len: u32 },
    /// → [`Reply::Written`].
    Write {
        handle: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Data (and metadata unless `datasync`) reaches the server's disk → [`Reply::Done`].
    Fsync { handle: u64, datasync: bool },
    /// Closes a handle → [`Reply::Done`].
    Close { handle: u64 },
    /// chmod, chown, truncate, utimens in one step → [`Reply::Attr`] (the new attributes).
    /// With a handle, truncation uses the open file (which may be unlinked).
    SetAttr {
        path: RelPath,
        handle: Option<u64>,
        changes: AttrChanges,
    },
    /// → [`Reply::Entry`] (or [`Reply::Attr`]) of the new directory.
    Mkdir { path: RelPath, mode: u32 },
    /// A FIFO, socket, empty regular file or — where the server allows them —
    /// device node → [`Reply::Entry`] (or [`Reply::Attr`]).
    Mknod { path: RelPath, mode: u32, rdev: u64 },
    /// A symlink at `path` whose text is `target`, stored as given → [`Reply::Entry`]
    /// (or [`Reply::Attr`]).
    Symlink {
        path: RelPath,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// A hard link `path` to the existing `existing` → [`Reply::Entry`] (or [`Reply::Attr`]).
    Link { existing: RelPath, path: RelPath },
    /// → [`Reply::DirsChanged`] (or [`Reply::Done`]).
    Unlink { path: RelPath },
    /// → [`Reply::DirsChanged`] (or [`Reply::Done`]).
    Rmdir { path: RelPath },
    /// `renameat2` with its flags (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`) →
    /// [`Reply::DirsChanged`] (or [`Reply::Done`]).
    Rename {
        from: RelPath,
        to: RelPath,
        flags: u32,
    },
    /// Statistics of the export's filesystem → [`Reply::StatFs`].
    StatFs,
    /// The value of the extended attribute `name` → [`Reply::Xattr`]; ENODATA
    /// when the node has no such attribute.
    GetXattr {
        path: RelPath,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// The names of the node's extended attributes, each followed by a NUL, as
    /// `listxattr(2)` gives them → [`Reply::Xattr`].
    ListXattr { path: RelPath },
    /// `setxattr(2)`; `flags` is 0, `XATTR_CREATE` or `XATTR_REPLACE` → [`Reply::Done`].
    SetXattr {
        path: RelPath,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: i32,
    },
    /// → [`Reply::Done`]; ENODATA when the node has no such attribute.
    RemoveXattr {
        path: RelPath,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// Takes, changes or drops a lock on the file behind `handle`, never waiting:
    /// EAGAIN when a conflicting lock is held elsewhere, or while the server is
    /// in its grace period (the client waits and asks again) → [`Reply::Done`].
    /// `owner` is the client's lock owner: POSIX locks of one owner never
    /// conflict with each other; an flock's owner is the open file it was
    /// taken through. ENOLCK when the connection holds too many locks.
    SetLock {
        handle: u64,
        owner: u64,
        kind: LockKind,
        lock: FileLock,
    },
    /// The first POSIX lock held by another owner that conflicts with `lock`
    /// → [`Reply::LockConflict`].
    GetLock {
        handle: u64,
        owner: u64,
        lock: FileLock,
    },
    /// Drops every POSIX lock `owner` holds on the file behind `handle`, as
    /// closing any descriptor of a file does → [`Reply::Done`].
    ReleaseLocks { handle: u64, owner: u64 },
    /// `fallocate(2)` on an open file: `mode` 0 allocates (growing the file),
    /// `FALLOC_FL_KEEP_SIZE`, `FALLOC_FL_PUNCH_HOLE` and `FALLOC_FL_ZERO_RANGE` as
    /// in fallocate(2); other modes answer EOPNOTSUPP → [`Reply::Done`].
    Fallocate {
        handle: u64,
        offset: u64,
        len: u64,
        mode: i32,
    },
    /// Copies up to `len` bytes between two open files of this connection on the
    /// server (`copy_file_range(2)`, or reads and writes there when the files'
    /// file systems cannot) → [`Reply::Written`]: how many bytes were copied,
    /// fewer than asked at the end of the input or when `len` is above what the
    /// server copies in one request (64 MiB for ferry's own).
    CopyFileRange {
        handle_in: u64,
        offset_in: u64,
        handle_out: u64,
        offset_out: u64,
        len: u64,
    },
    /// Answered at once with [`Reply::Done`], without touching the export: the
    /// client's keepalive, which tells a live server from one that stopped.
    Ping,
    /// Takes back a lock this client (its [`Hello::client`]) held on an earlier
    /// connection, through `handle`, a handle of the same file opened on this
    /// one; `lock` is a read or write lock → [`Reply::Done`]. Granted when the
    /// server kept the lock for the client (its connection ended less than a
    /// grace period ago, or it is still open and now replaced by this one), or
    /// when the server is in its grace period after a restart and nothing
    /// conflicts; otherwise ENOLCK (or EAGAIN on a conflict): the lock is lost.
    ReclaimLock {
        handle: u64,
        owner: u64,
        kind: LockKind,
        lock: FileLock,
    },
    /// The client has reclaimed every lock it holds → [`Reply::Done`]: what the
    /// server still kept for it is let go, and a grace period after a restart
    /// need not wait for it any more.
    ReclaimComplete,
    /// Asks the server to tell this connection, with [`Notice`]s, of every change
    /// to what its requests from now on let it cache, for `lease_secs` after each
    /// answer → [`Reply::Subscribed`]. Sent once per connection, before the
    /// requests whose answers the client means to cache for long.
    Subscribe { lease_secs: u32 },
    /// The attributes and contents of regular files of the directory `dir`,
    /// each named in `names` and read as an `OpenRead` of it for reading would
    /// (as the caller, never following a symlink), then closed: up to
    /// `max_each` bytes of each (at most [`READ_FILES_EACH`]), in order, until
    /// the answer holds [`READ_FILES_BYTES`] → [`Reply::Files`]. At most
    /// [`READ_FILES_NAMES`] names. What a walk reads, fetched ahead in a few
    /// round trips for a whole directory.
    ReadFiles {
        dir: RelPath,
        names: Vec<ByteBuf>,
        max_each: u32,
    },
    /// `Create`, with the file registered under `handle`, which the client
    /// chose so that it can write through the file before the answer comes
    /// back: it must carry [`CLIENT_HANDLE`] (server-assigned handles never
    /// do, EINVAL otherwise) and not be open (EEXIST); never reusing a number
    /// is the client's part → [`Reply::Created`] (or [`Reply::Opened`]), with
    /// `handle`.
    CreateAs {
        path: RelPath,
        flags: i32,
        mode: u32,
        handle: u64,
    },
}

/// The bit every handle a client chooses (see [`Op::CreateAs`]) carries and
/// no handle the server assigns does.
pub const CLIENT_HANDLE: u64 = 1 << 63;

/// The most bytes of one file an [`Op::ReadFiles`] reads.
pub const READ_FILES_EACH: u32 = 256 << 10;
/// The most bytes of files one [`Reply::Files`] carries (the last file read
/// may take it up to [`READ_FILES_EACH`] beyond).
pub const READ_FILES_BYTES: usize = 1 << 20;
/// The most names one [`Op::ReadFiles`] may ask for.
pub const READ_FILES_NAMES: usize = 1024;

/// One file of a [`Reply::Files`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRead {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Its attributes and first bytes (all of it when shorter than asked),
    /// or why it could not be read (EACCES, ENOENT, EISDIR for what is not a
    /// regular file...).
    pub result: Result<FileContents, Errno>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContents {
    pub attr: Attr,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Which family a lock belongs to. The two are independent, as on Linux.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockKind {
    /// `fcntl` byte-range locks, owned by the lock owner (a process).
    Posix,
    /// `flock(2)` whole-file locks, owned by the open file.
    Flock,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockType {
    Read,
    Write,
    Unlock,
}

/// A byte range `start..=end` and what to do with it; `end` at or beyond
/// [`LOCK_TO_EOF`] means "to the end of the file, however long it grows".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    pub typ: LockType,
    pub start: u64,
    pub end: u64,
}

/// The most data an [`Op::OpenRead`] asks for (a larger `len` is read as this).
pub const MAX_OPEN_DATA: u32 = 1 << 20;

/// The most bytes of entries one [`Reply::Listing`] carries: well inside a
/// frame, yet the whole of nearly every directory (some 20,000 entries with
/// 30-byte names).
pub const LISTING_BYTES: usize = 3 << 20;

/// What one listed entry adds to a [`Reply::Listing`] at most, beyond its
/// name's bytes: the name's length and the encoded attributes.
pub const LISTED_ENTRY_OVERHEAD: usize = 128;

/// The kernel's `OFFSET_MAX`: a lock ending here covers the rest of the file.
pub const LOCK_TO_EOF: u64 = i64::MAX as u64;

impl Op {
    /// The operation's name, for logs and statistics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Stat { .. } => "stat",
            Op::ReadDir { .. } => "readdir",
            Op::List { .. } => "list",
            Op::ReadLink { .. } => "readlink",
            Op::Open { .. } => "open",
            Op::OpenRead { .. } => "openread",
            Op::Create { .. } => "create",
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Fsync { .. } => "fsync",
            Op::Close { .. } => "close",
            Op::SetAttr { .. } => "setattr",
            Op::Mkdir { .. } => "mkdir",
            Op::Mknod { .. } => "mknod",
            Op::Symlink { .. } => "symlink",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::StatFs => "statfs",
            Op::GetXattr { .. } => "getxattr",
            Op::ListXattr { .. } => "listxattr",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::SetLock { .. } => "setlock",
            Op::GetLock { .. } => "getlock",
            Op::ReleaseLocks { .. } => "releaselocks",
            Op::Fallocate { .. } => "fallocate",
            Op::CopyFileRange { .. } => "copy_file_range",
            Op::Ping => "ping",
            Op::ReclaimLock { .. } => "reclaimlock",
            Op::ReclaimComplete => "reclaimcomplete",
            Op::Subscribe { .. } => "subscribe",
            Op::ReadFiles { .. } => "readfiles",
            Op::CreateAs { .. } => "createas",
        }
    }
}

/// One directory entry with its attributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub attr: Attr,
}

/// A successful answer; which variant depends on the operation (see [`Op`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Attr(Attr),
    Entries {
        entries: Vec<DirEntry>,
        /// More entries follow from `start + entries.len()`.
        more: bool,
    },
    Target(#[serde(with = "serde_bytes")] Vec<u8>),
    Opened {
        handle: u64,
        attr: Attr,
    },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The answer to [`Op::OpenRead`]: the open file, its attributes when it was
    /// opened, and its first bytes: all that were asked for, or fewer when the
    /// file ended first.
    OpenedWithData {
        handle: u64,
        attr: Attr,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The answer to [`Op::List`]: the next entries, and the cursor to ask for
    /// the rest with, 0 when the listing is complete (the server has closed its
    /// stream then).
    Listing {
        entries: Vec<DirEntry>,
        cursor: u64,
    },
    Written(u32),
    StatFs(StatFs),
    /// A new node, with the attributes of its directory after the change, which
    /// spares the client asking for them (the kernel wants them next, for its
    /// permission checks).
    Entry {
        attr: Attr,
        dir: Attr,
    },
    /// A created and opened file, with its directory's attributes after the change.
    Created {
        handle: u64,
        attr: Attr,
        dir: Attr,
    },
    /// A name was removed or moved: the attributes of the directories changed
    /// (the parent; for a rename, the source's and then the target's parent).
    DirsChanged(Vec<Attr>),
    /// An extended attribute's value, or a list of names (see [`Op::ListXattr`]).
    Xattr(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The answer to [`Op::GetLock`]: the conflicting lock, or `None`.
    LockConflict(Option<FileLock>),
    /// The answer to [`Op::Subscribe`]: notices will come, and for how long
    /// after each answer what it says may be cached. 0: notices come for changes
    /// made through other connections only (the server cannot watch its
    /// export), so nothing may be cached for long.
    Subscribed {
        lease_secs: u32,
    },
    /// The answer to [`Op::ReadFiles`]: the files read, in the order asked,
    /// possibly fewer than asked (the answer was full).
    Files(Vec<FileRead>),
}

impl Reply {
    /// The handle and attributes of an opened (or created) file.
    pub fn opened(&self) -> Option<(u64, Attr)> {
        match self {
            Reply::Opened { handle, attr }
            | Reply::Created { handle, attr, .. }
            | Reply::OpenedWithData { handle, attr, .. } => Some((*handle, *attr)),
            _ => None,
        }
    }

    /// The attributes of a new node (or any node, for `Stat` and `SetAttr`).
    pub fn attr(&self) -> Option<Attr> {
        match self {
            Reply::Attr(attr) | Reply::Entry { attr, .. } => Some(*attr),
            _ => None,
        }
    }
}

/// The answer to the request with the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub result: Result<Reply, Errno>,
}

/// Everything the server sends after the handshake.
// Answers are nearly every message: boxing them to shrink the rare notice
// would cost an allocation per answer.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    Response(Response),
    Notice(Notice),
}

/// A server file: the device and inode number of the server's filesystem, as
/// in [`Attr::dev`] and [`Attr::ino`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    pub dev: u64,
    pub ino: u64,
}

impl NodeId {
    pub fn of(attr: &Attr) -> NodeId {
        NodeId {
            dev: attr.dev,
            ino: attr.ino,
        }
    }
}

/// Sent unasked to a subscribed connection (see [`Op::Subscribe`]).
///
/// The promise: whatever an answer to this connection said about a name, a
/// node's attributes, a file's data or a directory's names, the server sends a
/// notice once that changes — through another connection or by a process on the
/// server — for as long as the lease after that answer lasts. A notice may cross
/// an answer on the way (an answer computed before a change can arrive after the
/// notice of it): the client treats an answer to a request sent before a notice
/// arrived as possibly older than that notice. Changes the connection made
/// itself are not announced to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    Changed(Vec<Change>),
    /// Drop everything cached from this server: it can no longer say what
    /// changed (its watch on the export overflowed, or it forgot this
    /// connection's interests). From now on answers may be cached for
    /// `lease_secs` (0: not for long).
    Reset {
        lease_secs: u32,
    },
}

/// One change in a [`Notice`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The name `path` was created or removed, or names another node now:
    /// `now`, or nothing (`None` also when the server cannot say).
    Name { path: RelPath, now: Option<NodeId> },
    /// `from` was renamed to `to`, with everything below it; whatever `to`
    /// named before is gone.
    Moved { from: RelPath, to: RelPath },
    /// The node's attributes changed; with `content`, also its data (a file)
    /// or its names (a directory).
    Node { id: NodeId, content: bool },
}
