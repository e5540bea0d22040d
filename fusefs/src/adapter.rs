//! `FerryFs`: the `fuser::Filesystem` adapter. It converts the kernel's
//! requests into calls of the [`Core`] and the core's results into replies,
//! and decides nothing itself — except what only the kernel cares about: the
//! features asked for at `init`, and the wire types of replies.

use crate::core::{Attrs, Caller, Core, Entry, Lookup, Opened, XattrAnswer};
use crate::creds::CallerCreds;
use ferry_common::frame::{self, MAX_CHUNK};
use ferry_common::proto::{AttrChanges, SetTime};
use ferry_common::{Attr, Errno, FileKind, Timestamp};
use fuser::{
    BsdFileFlags, CopyFileRangeFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

/// What a negative entry carries: no inode, so no generation either.
const NO_GENERATION: Generation = Generation(0);

pub struct FerryFs {
    core: Core,
    callers: CallerCreds,
}

impl FerryFs {
    pub fn new(core: Core) -> FerryFs {
        FerryFs {
            core,
            callers: CallerCreds::new(),
        }
    }

    /// Who sent `req`, with the groups the kernel does not send.
    fn caller(&self, req: &Request) -> Caller {
        Caller {
            pid: req.pid(),
            cred: self.callers.of(req.uid(), req.gid(), req.pid()),
        }
    }
}

fn file_type(kind: FileKind) -> FileType {
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

/// The kernel's view of a remote node: our inode number, the server's
/// attributes. The server is not trusted to send what the kernel can hold: a
/// size beyond `i64::MAX` would be a negative `i_size` there, and permission
/// bits beyond `0o7777` would change the node's type in the mode the kernel
/// builds (which it answers by making the inode bad); times of any value
/// convert without panicking (see [`Timestamp::to_system_time`]).
fn file_attr(ino: u64, attr: &Attr) -> FileAttr {
    const KERNEL_MAX: u64 = i64::MAX as u64;
    FileAttr {
        ino: INodeNo(ino),
        size: attr.size.min(KERNEL_MAX),
        blocks: attr.blocks.min(KERNEL_MAX),
        atime: attr.atime.to_system_time(),
        mtime: attr.mtime.to_system_time(),
        ctime: attr.ctime.to_system_time(),
        crtime: attr.ctime.to_system_time(),
        kind: file_type(attr.kind),
        perm: attr.perm & 0o7777,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev as u32,
        blksize: attr.blksize,
        flags: 0,
    }
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.code())
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(Timestamp::from_system_time(t)),
    }
}

fn fopen_flags(opened: &Opened) -> FopenFlags {
    let mut flags = FopenFlags::empty();
    if opened.keep_cache {
        flags |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if opened.direct_io {
        flags |= FopenFlags::FOPEN_DIRECT_IO;
    }
    flags
}

fn reply_entry(reply: ReplyEntry, r: Result<Entry, Errno>) {
    match r {
        Ok(e) => reply.entry(&e.ttl, &file_attr(e.ino, &e.attr), Generation(e.generation)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_attr(reply: ReplyAttr, ino: INodeNo, r: Result<Attrs, Errno>) {
    match r {
        Ok(a) => reply.attr(&a.ttl, &file_attr(ino.0, &a.attr)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty_dir(reply: ReplyDirectory, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_xattr(reply: ReplyXattr, r: Result<XattrAnswer, Errno>) {
    match r {
        Ok(XattrAnswer::Size(n)) => reply.size(n),
        Ok(XattrAnswer::Data(d)) => reply.data(&d),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for FerryFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Ask for what makes a network filesystem fast; each is optional, so a
        // kernel that lacks one still mounts.
        if self.core.options().readdirplus {
            if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
                log::info!("the kernel does not offer {missing:?}");
            }
        }
        for flag in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            // Not FUSE_ATOMIC_O_TRUNC: with it the server truncates at the
            // open, before the kernel's own checks, so an O_TRUNC open of a
            // running program truncated it on the server and then failed with
            // ETXTBSY (pjdfstest open::etxtbsy, some runs). Without it the
            // kernel truncates (a setattr) only once the open is allowed.
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_ASYNC_DIO,
            // Locks are taken on the server, so clients exclude each other.
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
            // setuid/setgid are dropped by ferry on write, truncate and chown
            // rather than by the kernel, which would otherwise ask for the file's
            // security.capability before every write and refresh its attributes
            // before every chown: two round trips to this process each time.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // Shared mappings of files opened uncached (O_APPEND).
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            // A symlink's text never changes in place (a new one is a new
            // inode), so the kernel may keep it: `ls -l` needs no readlink.
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if let Err(missing) = config.add_capabilities(flag) {
                log::info!("the kernel does not offer {missing:?}");
            }
        }
        let _ = config.set_max_write(MAX_CHUNK);
        // The kernel caps this at what it offered (128 KiB); the mount's bdi
        // read_ahead_kb is raised after mounting.
        if let Err(max) = config.set_max_readahead(MAX_CHUNK) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn destroy(&mut self) {
        // What was answered before the server had it reaches the server
        // before the mount goes (see `core::behind`).
        self.core.finish_behind(self.core.client().timeout());
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.core
            .lookup(&self.caller(req), parent.0, name, move |r| match r {
                Ok(Lookup::Found(e)) => reply_entry(reply, Ok(e)),
                // Inode number 0: a negative entry, for that long.
                Ok(Lookup::Missing(ttl)) => reply.entry(
                    &ttl,
                    &file_attr(0, &Attr::blank(FileKind::File)),
                    NO_GENERATION,
                ),
                Err(e) => reply.error(errno(e)),
            });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.core
            .getattr(&self.caller(req), ino.0, fh.map(|h| h.0), move |r| {
                reply_attr(reply, ino, r)
            });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            kill_suidgid: false,
        };
        self.core.setattr(
            &self.caller(req),
            ino.0,
            fh.map(|h| h.0),
            changes,
            move |r| reply_attr(reply, ino, r),
        );
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.core
            .readlink(&self.caller(req), ino.0, move |r| match r {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(e)),
            });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.core
            .mknod(&self.caller(req), parent.0, name, mode, rdev, move |r| {
                reply_entry(reply, r)
            });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.core
            .mkdir(&self.caller(req), parent.0, name, mode, move |r| {
                reply_entry(reply, r)
            });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.core
            .unlink(&self.caller(req), parent.0, name, move |r| {
                reply_empty(reply, r)
            });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.core
            .rmdir(&self.caller(req), parent.0, name, move |r| {
                reply_empty(reply, r)
            });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.core
            .symlink(&self.caller(req), parent.0, link_name, target, move |r| {
                reply_entry(reply, r)
            });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.core.rename(
            &self.caller(req),
            parent.0,
            name,
            newparent.0,
            newname,
            flags.bits(),
            move |r| reply_empty(reply, r),
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.core
            .link(&self.caller(req), ino.0, newparent.0, newname, move |r| {
                reply_entry(reply, r)
            });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.core
            .open(&self.caller(req), ino.0, flags.0, move |r| match r {
                Ok(opened) => reply.opened(FileHandle(opened.fh), fopen_flags(&opened)),
                Err(e) => reply.error(errno(e)),
            });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.core.read(
            &self.caller(req),
            ino.0,
            fh.0,
            offset,
            size,
            move |r| match r {
                Ok(data) => {
                    reply.data(&data);
                    // Delivered: the buffer may take the next chunk read.
                    frame::give_back(data);
                }
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        self.core.write(
            &self.caller(req),
            ino.0,
            fh.0,
            offset,
            data,
            flags.0,
            kill,
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.core
            .flush(&self.caller(req), ino.0, fh.0, lock_owner.0, move |r| {
                reply_empty(reply, r)
            });
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(&self.caller(req), ino.0, fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.core
            .fsync(&self.caller(req), ino.0, fh.0, datasync, move |r| {
                reply_empty(reply, r)
            });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.core.fallocate(
            &self.caller(req),
            ino.0,
            fh.0,
            offset,
            length,
            mode,
            move |r| reply_empty(reply, r),
        );
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.core.copy_file_range(
            &self.caller(req),
            ino_in.0,
            fh_in.0,
            offset_in,
            ino_out.0,
            fh_out.0,
            offset_out,
            len,
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel opens directories itself from now on, caching and keeping
        // every listing (`FUSE_NO_OPENDIR_SUPPORT`; see `core::dirs`).
        reply.error(fuser::Errno::ENOSYS)
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let reply = std::cell::RefCell::new(Some(reply));
        self.core.readdir(
            &self.caller(req),
            ino.0,
            offset,
            |item| {
                let name = OsStr::from_bytes(item.name);
                reply.borrow_mut().as_mut().is_none_or(|reply| {
                    reply.add(
                        INodeNo(item.ino),
                        item.next_offset,
                        file_type(item.kind),
                        name,
                    )
                })
            },
            |r| {
                if let Some(reply) = reply.borrow_mut().take() {
                    reply_empty_dir(reply, r)
                }
            },
        );
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let reply = std::cell::RefCell::new(Some(reply));
        self.core.readdirplus(
            &self.caller(req),
            ino.0,
            offset,
            |item| {
                let e = item.entry;
                reply.borrow_mut().as_mut().is_none_or(|reply| {
                    reply.add(
                        INodeNo(e.ino),
                        item.next_offset,
                        OsStr::from_bytes(item.name),
                        &e.ttl,
                        &file_attr(e.ino, &e.attr),
                        Generation(e.generation),
                    )
                })
            },
            |r| {
                if let Some(reply) = reply.borrow_mut().take() {
                    match r {
                        Ok(()) => reply.ok(),
                        Err(e) => reply.error(errno(e)),
                    }
                }
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        // Never sent: no directory is opened here (see `opendir`).
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Waits for the removals sent behind in it, and reports their failure.
        self.core.fsyncdir(ino.0, move |r| reply_empty(reply, r));
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.core.statfs(&self.caller(req), move |r| match r {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.core
            .getxattr(&self.caller(req), ino.0, name, size, move |r| {
                reply_xattr(reply, r)
            });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.core
            .listxattr(&self.caller(req), ino.0, size, move |r| {
                reply_xattr(reply, r)
            });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        self.core.setxattr(
            &self.caller(req),
            ino.0,
            name,
            value,
            flags,
            position,
            move |r| reply_empty(reply, r),
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.core
            .removexattr(&self.caller(req), ino.0, name, move |r| {
                reply_empty(reply, r)
            });
    }

    fn getlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        self.core.getlk(
            &self.caller(req),
            ino.0,
            fh.0,
            lock_owner.0,
            start,
            end,
            typ,
            move |r| match r {
                Ok(l) => reply.locked(l.start, l.end, l.typ, l.pid),
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.core.setlk(
            &self.caller(req),
            ino.0,
            fh.0,
            lock_owner.0,
            start,
            end,
            typ,
            sleep,
            move |r| reply_empty(reply, r),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.core.create(
            &self.caller(req),
            parent.0,
            name,
            mode,
            flags,
            move |r| match r {
                Ok((e, opened)) => reply.created(
                    &e.ttl,
                    &file_attr(e.ino, &e.attr),
                    Generation(e.generation),
                    FileHandle(opened.fh),
                    fopen_flags(&opened),
                ),
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    /// No ioctl is supported; ENOTTY is what a local file answers to one it does
    /// not know (`sed -i` asks for `FS_IOC_GETFLAGS`), and fuser's default would
    /// log a warning for each.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(errno(Errno::new(libc::ENOTTY)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_attributes_a_server_sends_become_a_valid_kernel_attr() {
        let mut attr = Attr::blank(FileKind::File);
        attr.size = u64::MAX;
        attr.blocks = u64::MAX;
        attr.perm = u16::MAX;
        attr.rdev = u64::MAX;
        attr.blksize = 0;
        for (secs, nanos) in [(i64::MIN, u32::MAX), (-1, 0), (i64::MAX, u32::MAX)] {
            let t = Timestamp { secs, nanos };
            (attr.atime, attr.mtime, attr.ctime) = (t, t, t);
            let kernel = file_attr(7, &attr);
            assert_eq!(kernel.size, i64::MAX as u64);
            assert_eq!(kernel.blocks, i64::MAX as u64);
            assert_eq!(kernel.perm, 0o7777);
            assert_eq!(kernel.kind, FileType::RegularFile);
            assert_eq!(kernel.mtime >= std::time::UNIX_EPOCH, secs >= 0);
        }
    }

    #[test]
    fn errnos_reach_the_kernel_only_in_its_range() {
        assert_eq!(errno(Errno::new(600)).code(), libc::EIO);
        assert_eq!(errno(Errno::new(0)).code(), libc::EIO);
        assert_eq!(errno(Errno::ENOENT).code(), libc::ENOENT);
    }
}
