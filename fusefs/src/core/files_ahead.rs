//! Opens for reading answered from the contents of files fetched ahead (see
//! [`crate::files_ahead`]), and the fetching itself.

use super::names::direct_io;
use super::{Caller, Core, Opened};
use crate::files::RemoteFile;
use crate::files_ahead::LARGEST;
use crate::listing_ahead::FilesListed;
use ferry_common::proto::{Cred, DirEntry, Op, Reply};
use ferry_common::sync::lock;
use ferry_common::{Attr, FileKind, RelPath};
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

/// The connection epoch of a kernel handle the mount opened without the
/// server: no connection has it (the first is 1), so its first request
/// through the handle opens the file by path (see `core::reopen`), and its
/// release sends nothing.
pub(super) const NO_CONNECTION: u64 = 0;

impl Core {
    /// `ino` opened for reading with `flags` by `caller`, at once, if its
    /// contents were fetched ahead and may still be trusted: the kernel's
    /// reads are answered from them. `told`: the attributes the kernel was
    /// last given; contents that differ from them are not used.
    pub(super) fn open_from_ahead(
        &self,
        caller: &Caller,
        ino: u64,
        flags: i32,
        told: Option<Attr>,
    ) -> Option<Opened> {
        let id = lock(&self.inodes).file_id(ino)?;
        let epoch = self.client.current_epoch()?;
        let waiting = || {
            // The open waits for the request fetching it (counted by kind).
            self.stats.waited_for(&Op::ReadFiles {
                dir: RelPath::root(),
                names: Vec::new(),
                max_each: 0,
            })
        };
        let taken = self
            .files_ahead
            .take(&caller.cred, id, epoch, &self.changes, waiting)?;
        if told.is_some_and(|told| !told.same_content(&taken.attr)) {
            return None;
        }
        let data_mark = self.opened.mark();
        let attr = taken.attr;
        let fh = lock(&self.files).insert(RemoteFile {
            ino,
            flags,
            opener: caller.cred.clone(),
            handle: 0,
            epoch: NO_CONNECTION,
        });
        // Held until release: without a server handle, the file could not be
        // read any more once its name is gone.
        self.opened.keep_whole(fh, ino, data_mark, taken.data);
        self.attrs.store(ino, attr, self.until(taken.asked));
        let keep_cache = {
            let mut inodes = lock(&self.inodes);
            inodes.add_handle(ino, fh);
            inodes.note_open(ino, &attr)
        };
        if keep_cache {
            self.stats.page_cache.hit();
        } else {
            self.stats.page_cache.miss();
        }
        Some(Opened {
            fh,
            keep_cache,
            direct_io: direct_io(flags),
        })
    }

    /// A file at `path` is being opened for reading by `cred`: if its
    /// directory's listing is held, the contents of the directory's other
    /// small files not asked for yet are.
    pub(super) fn fetch_files_near(&self, cred: &Cred, path: &RelPath) {
        let Some((dir, name)) = path.split_last() else {
            return;
        };
        let Some(listing) = self.ahead.listing_asked(&dir) else {
            return;
        };
        let started = self.files_ahead.walk_opens_files(self.ttl());
        // Once every file of this listing was asked for, the walk's later
        // opens in the directory skip the copy of its list (a walk reading
        // n files would otherwise copy it n times).
        if !self.files_ahead.all_asked(&dir, listing) {
            if let Some((listing, mut files)) = self.ahead.files_of(&dir, LARGEST) {
                files.retain(|(n, _)| n.as_slice() != name.as_bytes());
                self.fetch_files(cred, &dir, files, Some(listing));
            }
        }
        if started {
            // The listings fetched ahead so far came before the walk was
            // seen reading: their files are fetched now (later ones', as
            // they come).
            for (dir, entries) in self.ahead.fetched() {
                self.fetch_files_listed_ahead(cred, &dir, &entries);
            }
        }
    }

    /// A listing of `dir` was fetched ahead for `cred`, with `entries`: if a
    /// walk is reading files, the small ones of this directory are fetched
    /// too, before the walk gets there.
    pub(super) fn fetch_files_listed_ahead(
        &self,
        cred: &Cred,
        dir: &RelPath,
        entries: &[DirEntry],
    ) {
        if !self.files_ahead.walk_reads(self.ttl()) {
            return;
        }
        let mut files: FilesListed = entries
            .iter()
            .filter(|e| e.attr.kind == FileKind::File && e.attr.size <= LARGEST)
            .map(|e| (e.name.clone(), e.attr))
            .collect();
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.fetch_files(cred, dir, files, None);
    }

    /// Asks for the contents of `files` of `dir` not asked for yet, as far
    /// as there is room; `listing`: when the listing they are all of was
    /// asked for.
    fn fetch_files(
        &self,
        cred: &Cred,
        dir: &RelPath,
        files: FilesListed,
        listing: Option<Instant>,
    ) {
        let Some(epoch) = self.client.current_epoch() else {
            return;
        };
        for mut batch in self.files_ahead.wanted(dir, files, listing, &self.changes) {
            let op = batch.take_request();
            let core = self.clone();
            let who = cred.clone();
            let asked = Instant::now();
            self.client.submit_in(epoch, cred, op, move |r| {
                let files = match r {
                    Ok(Reply::Files(files)) => files,
                    Ok(_) | Err(_) => Vec::new(),
                };
                let until = core.until(asked);
                core.files_ahead
                    .answered(&batch, &who, epoch, asked, until, files, &core.changes);
            });
        }
    }
}
