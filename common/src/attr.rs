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
    pub fn to_system_time(self) -> SystemTime {
        let nanos = Duration::from_nanos(u64::from(self.nanos.min(999_999_999)));
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.secs as u64) + nanos
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs()) + nanos
        }
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
    /// (the test close-to-open consistency uses to keep the page cache).
    pub fn same_content(&self, other: &Attr) -> bool {
        self.ino == other.ino && self.size == other.size && self.mtime == other.mtime
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
