//! Translations between ferry's wire types and fuser's.

use ferry_common::proto::SetTime;
use ferry_common::{Attr, Errno, FileKind, Timestamp};
use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};

pub fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// The kernel's view of a remote node: our inode number, the server's attributes.
pub fn file_attr(ino: u64, attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: attr.size,
        blocks: attr.blocks,
        atime: attr.atime.to_system_time(),
        mtime: attr.mtime.to_system_time(),
        ctime: attr.ctime.to_system_time(),
        crtime: attr.ctime.to_system_time(),
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev as u32,
        blksize: attr.blksize,
        flags: 0,
    }
}

pub fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.code())
}

pub fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(Timestamp::from_system_time(t)),
    }
}
