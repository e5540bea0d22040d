//! File attributes and filesystem statistics as they cross the wire.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What kind of node a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The kind encoded in a `st_mode`.
    pub fn from_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => FileKind::File,
        }
    }

    /// The `ls -l` type letter.
    pub fn letter(self) -> char {
        match self {
            FileKind::File => '-',
            FileKind::Directory => 'd',
            FileKind::Symlink => 'l',
            FileKind::Fifo => 'p',
            FileKind::Socket => 's',
            FileKind::CharDevice => 'c',
            FileKind::BlockDevice => 'b',
        }
    }
}

/// A point in time as seconds and nanoseconds since the Unix epoch. Seconds are
/// signed: files may carry times before 1970.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    /// The same instant as a `SystemTime`. Any value a peer sends converts
    /// without panicking: one `SystemTime` cannot hold saturates to the nearest
    /// instant it can (and, where even that fails, to the epoch).
    pub fn to_system_time(self) -> SystemTime {
        let nanos = Duration::from_nanos(u64::from(self.nanos.min(999_999_999)));
        let secs = Duration::from_secs(self.secs.unsigned_abs());
        let exact = if self.secs >= 0 {
            UNIX_EPOCH.checked_add(secs)
        } else {
            UNIX_EPOCH.checked_sub(secs)
        }
        .and_then(|t| t.checked_add(nanos));
        exact.unwrap_or_else(|| {
            let furthest = Duration::from_secs(i64::MAX.unsigned_abs());
            let end = if self.secs >= 0 {
                UNIX_EPOCH.checked_add(furthest)
            } else {
                UNIX_EPOCH.checked_sub(furthest)
            };
            end.unwrap_or(UNIX_EPOCH)
        })
    }

    pub fn from_system_time(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(before) => {
                let d = before.duration();
                // Normalise to a non-negative nanosecond part.
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }
}

/// The attributes of one node, as `lstat` sees them on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u64,
    pub blksize: u32,
    /// The server's inode number: with `dev`, what tells one file from another
    /// (hard links share it). Never used as the FUSE inode number.
    pub ino: u64,
    /// The server's device number of the filesystem holding the node.
    pub dev: u64,
}

impl Attr {
    /// All-zero attributes of the given kind (permissions 0o755 for a directory,
    /// 0o644 otherwise): a stand-in where the kernel ignores the attributes, and
    /// a base for tests.
    pub fn blank(kind: FileKind) -> Attr {
        let t = Timestamp { secs: 0, nanos: 0 };
        Attr {
            kind,
            perm: if kind == FileKind::Directory {
                0o755
            } else {
                0o644
            },
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
            blksize: 4096,
            ino: 0,
            dev: 0,
        }
    }

    /// Whether the data of a file is unchanged between two observations
    /// (the test close-to-open consistency uses to keep the page cache). The
    /// ctime tells a file apart from a new one that got the same inode number,
    /// size and mtime (an untar does that).
    pub fn same_content(&self, other: &Attr) -> bool {
        self.ino == other.ino
            && self.dev == other.dev
            && self.size == other.size
            && self.mtime == other.mtime
            && self.ctime == other.ctime
    }
}

/// What `statfs` reports for the export's filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_before_and_after_the_epoch() {
        for ts in [
            Timestamp { secs: 0, nanos: 0 },
            Timestamp {
                secs: 1_700_000_000,
                nanos: 123_456_789,
            },
            Timestamp {
                secs: -1,
                nanos: 500_000_000,
            },
            Timestamp {
                secs: -86_400,
                nanos: 0,
            },
        ] {
            assert_eq!(Timestamp::from_system_time(ts.to_system_time()), ts);
        }
    }

    #[test]
    fn any_timestamp_converts_without_panicking() {
        for secs in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
            for nanos in [0, 999_999_999, 1_000_000_000, u32::MAX] {
                let t = Timestamp { secs, nanos }.to_system_time();
                // The order of instants is kept at the extremes.
                assert_eq!(t >= UNIX_EPOCH, secs >= 0, "{secs} {nanos}");
            }
        }
        let before_1970 = Timestamp {
            secs: -86_400 * 365,
            nanos: 7,
        };
        assert!(before_1970.to_system_time() < UNIX_EPOCH);
    }

    #[test]
    fn kinds_come_from_mode_bits() {
        assert_eq!(
            FileKind::from_mode(libc::S_IFDIR | 0o755),
            FileKind::Directory
        );
        assert_eq!(
            FileKind::from_mode(libc::S_IFLNK | 0o777),
            FileKind::Symlink
        );
        assert_eq!(FileKind::from_mode(libc::S_IFREG | 0o644), FileKind::File);
        assert_eq!(FileKind::from_mode(libc::S_IFIFO), FileKind::Fifo);
    }
}
