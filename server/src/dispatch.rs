//! From a decoded [`Op`] to its [`Reply`]: the one place that knows which
//! export call answers which operation.
//!
//! A [`Session`] is the state one connection's requests share: the export, the
//! connection's open files and whether the export is read-only. Its `handle` runs
//! on a blocking-pool thread, as every branch makes file system calls.

use crate::export::ExportRoot;
use crate::handles::HandleTable;
use ferry_common::frame::{MAX_CHUNK, MAX_COPY, READDIR_PAGE};
use ferry_common::proto::{Op, Reply};
use ferry_common::Errno;
use std::sync::Arc;

pub struct Session {
    export: Arc<ExportRoot>,
    handles: HandleTable,
    read_only: bool,
}

impl Session {
    pub fn new(export: Arc<ExportRoot>, read_only: bool) -> Session {
        Session {
            export,
            handles: HandleTable::new(),
            read_only,
        }
    }

    /// Carries out one operation.
    pub fn handle(&self, op: Op) -> Result<Reply, Errno> {
        if self.read_only && op.is_mutation() {
            return Err(Errno::EROFS);
        }
        let export = &*self.export;
        match op {
            Op::Stat { path } => export.stat(&path).map(Reply::Attr),
            Op::ReadDir { path, start } => {
                let (entries, more) = export.read_dir(&path, start, READDIR_PAGE)?;
                Ok(Reply::Entries { entries, more })
            }
            Op::ReadLink { path } => export.read_link(&path).map(Reply::Target),
            Op::Open { path, flags } => {
                let (file, attr) = export.open_file(&path, flags)?;
                let handle = self.handles.insert(file)?;
                Ok(Reply::Opened { handle, attr })
            }
            Op::Create {
                path,
                flags,
                mode,
                owner,
            } => {
                let (file, attr) = export.create(&path, flags, mode, owner)?;
                let handle = self.handles.insert(file)?;
                Ok(Reply::Opened { handle, attr })
            }
            Op::Read {
                handle,
                offset,
                len,
            } => {
                let len = len.min(MAX_CHUNK) as usize;
                self.handles
                    .get(handle)?
                    .read_at(offset, len)
                    .map(Reply::Data)
            }
            Op::Write {
                handle,
                offset,
                data,
            } => {
                let written = self.handles.get(handle)?.write_at(offset, &data)?;
                // A frame is far below 4 GiB, so this never saturates.
                Ok(Reply::Written(u32::try_from(written).unwrap_or(u32::MAX)))
            }
            Op::Fsync { handle, datasync } => {
                self.handles.get(handle)?.sync(datasync)?;
                Ok(Reply::Done)
            }
            Op::Close { handle } => {
                self.handles.remove(handle)?;
                Ok(Reply::Done)
            }
            Op::SetAttr {
                path,
                handle,
                changes,
            } => match handle {
                Some(handle) => {
                    path.validate()?;
                    self.handles
                        .get(handle)?
                        .set_attr(&changes)
                        .map(Reply::Attr)
                }
                None => export.set_attr(&path, &changes).map(Reply::Attr),
            },
            Op::Mkdir { path, mode, owner } => export.mkdir(&path, mode, owner).map(Reply::Attr),
            Op::Mknod {
                path,
                mode,
                rdev,
                owner,
            } => export.mknod(&path, mode, rdev, owner).map(Reply::Attr),
            Op::Symlink {
                path,
                target,
                owner,
            } => export.symlink(&path, &target, owner).map(Reply::Attr),
            Op::Link { existing, path } => export.link(&existing, &path).map(Reply::Attr),
            Op::Unlink { path } => export.unlink(&path).map(|()| Reply::Done),
            Op::Rmdir { path } => export.rmdir(&path).map(|()| Reply::Done),
            Op::Rename { from, to, flags } => {
                export.rename(&from, &to, flags).map(|()| Reply::Done)
            }
            Op::StatFs => export.statfs().map(Reply::StatFs),
            Op::Fallocate {
                handle,
                offset,
                len,
                mode,
            } => {
                self.handles.get(handle)?.allocate(mode, offset, len)?;
                Ok(Reply::Done)
            }
            Op::CopyFileRange {
                handle_in,
                offset_in,
                handle_out,
                offset_out,
                len,
            } => {
                let input = self.handles.get(handle_in)?;
                let output = self.handles.get(handle_out)?;
                let copied = input.copy_to(offset_in, &output, offset_out, len.min(MAX_COPY))?;
                // MAX_COPY is far below 4 GiB, so this never saturates.
                Ok(Reply::Written(u32::try_from(copied).unwrap_or(u32::MAX)))
            }
            Op::WriteClearingSetId {
                handle,
                offset,
                data,
            } => {
                let file = self.handles.get(handle)?;
                file.clear_set_id()?;
                let written = file.write_at(offset, &data)?;
                // A frame is far below 4 GiB, so this never saturates.
                Ok(Reply::Written(u32::try_from(written).unwrap_or(u32::MAX)))
            }
        }
    }
}
