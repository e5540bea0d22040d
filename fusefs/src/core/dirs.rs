//! Directories: listings served from snapshots, and names known to be absent.
//!
//! A listing is taken when reading starts at offset 0 (opendir or rewinddir)
//! and served from memory afterwards, so the kernel's offsets stay stable while
//! the directory changes. A listing is also proof of which names are *not*
//! there (see [`crate::known`]): the server reads it in one pass. Offsets name
//! the *next* entry: 0 is `.`, 1 is `..`, then the listing.
//!
//! A walk's next listings are fetched ahead (see [`crate::listing_ahead`]); one
//! taken from there is as old as when it was asked for, and its entries are
//! trusted only for what is left of the attribute timeout since then.

use super::{Caller, Core, Done, Entry};
use ferry_common::proto::{DirEntry, Op, Reply};
use ferry_common::sync::lock;
use ferry_common::{Attr, Errno, FileKind, RelPath, StatFs};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One open directory's snapshot.
struct Snapshot {
    /// The directory's path when the listing was taken.
    path: RelPath,
    entries: Arc<Vec<DirEntry>>,
    /// When the listing was asked for.
    asked: Instant,
}

/// The snapshots of open directories, by the handle given to the kernel
/// (numbered apart from files').
#[derive(Default)]
pub(super) struct DirSnapshots {
    open: Mutex<HashMap<u64, Snapshot>>,
    next: AtomicU64,
}

/// One name of a plain listing, and the offset of the entry after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirItem<'a> {
    /// Informational only: the kernel looks the name up for the real inode.
    pub ino: u64,
    pub next_offset: u64,
    pub kind: FileKind,
    pub name: &'a [u8],
}

/// One entry of a listing with attributes (readdirplus).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirItemPlus<'a> {
    /// For every entry but `.` and `..`, the kernel counts this as a lookup.
    pub entry: Entry,
    pub next_offset: u64,
    pub name: &'a [u8],
}

impl Core {
    /// Opens directory `ino` for listing; answers the handle for the kernel.
    pub fn opendir(&self, ino: u64, done: impl Done<u64>) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return done(Err(e)),
        };
        let fh = self.dirs.next.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = Snapshot {
            path,
            entries: Arc::default(),
            asked: Instant::now(),
        };
        lock(&self.dirs.open).insert(fh, snapshot);
        done(Ok(fh))
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs.open).remove(&fh);
    }

    /// Lists directory `ino` from `offset`, handing each entry to `add` until
    /// it answers that the kernel's buffer is full.
    pub fn readdir(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirItem<'_>) -> bool,
    ) -> Result<(), Errno> {
        let (path, entries, _) = self.listing(caller, ino, fh, offset)?;
        let total = entries.len() as u64 + 2;
        for index in offset..total {
            let item = match index {
                0 => DirItem {
                    ino,
                    next_offset: 1,
                    kind: FileKind::Directory,
                    name: b".",
                },
                1 => DirItem {
                    ino: self.parent_ino(&path),
                    next_offset: 2,
                    kind: FileKind::Directory,
                    name: b"..",
                },
                _ => {
                    let entry = &entries[(index - 2) as usize];
                    // Informational: the number the entry would be handed out
                    // with, or the server's own before its space is known.
                    let ino = lock(&self.inodes)
                        .number_of_file(&entry.attr)
                        .unwrap_or(entry.attr.ino.max(2));
                    DirItem {
                        ino,
                        next_offset: index + 1,
                        kind: entry.attr.kind,
                        name: &entry.name,
                    }
                }
            };
            if add(item) {
                break;
            }
        }
        Ok(())
    }

    /// [`readdir`](Self::readdir) with attributes: every entry but `.` and `..`
    /// counts as a lookup, and is uncounted again when it did not fit.
    pub fn readdirplus(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirItemPlus<'_>) -> bool,
    ) -> Result<(), Errno> {
        let (path, entries, asked) = self.listing(caller, ino, fh, offset)?;
        // Trusted for as long as a listing asked for then may be.
        let ttl = self.ttl().saturating_sub(asked.elapsed());
        // The kernel counts no lookup for `.` and `..`, nor reads their
        // generation.
        let dot = |ino| Entry {
            ino,
            generation: 0,
            attr: Attr::blank(FileKind::Directory),
            ttl,
        };
        let total = entries.len() as u64 + 2;
        for index in offset..total {
            let full = match index {
                0 => add(DirItemPlus {
                    entry: dot(ino),
                    next_offset: 1,
                    name: b".",
                }),
                1 => add(DirItemPlus {
                    entry: dot(self.parent_ino(&path)),
                    next_offset: 2,
                    name: b"..",
                }),
                _ => {
                    let entry = &entries[(index - 2) as usize];
                    let name = OsStr::from_bytes(&entry.name);
                    let Ok(child) = path.join(name) else { continue };
                    let (child_ino, generation) = self.hand_out(&child, &entry.attr);
                    self.attrs.store_asked(child_ino, entry.attr, asked);
                    let attr = self.writes.overlay(child_ino, entry.attr, None);
                    let full = add(DirItemPlus {
                        entry: Entry {
                            ino: child_ino,
                            generation,
                            attr,
                            ttl,
                        },
                        next_offset: index + 1,
                        name: &entry.name,
                    });
                    if full {
                        lock(&self.inodes).forget(child_ino, 1);
                    }
                    full
                }
            };
            if full {
                break;
            }
        }
        Ok(())
    }

    /// Statistics of the server's file system.
    pub fn statfs(&self, caller: &Caller, done: impl Done<StatFs>) {
        let core = self.clone();
        self.ask(None, &caller.cred, Op::StatFs, move |r| match r {
            Ok(Reply::StatFs(s)) => {
                core.space.told(&s);
                done(Ok(s))
            }
            Ok(_) => done(Err(Errno::EPROTO)),
            Err(e) => done(Err(e)),
        });
    }

    /// The listing of an open directory, taken afresh when reading restarts:
    /// its path, its entries and when they were asked for.
    fn listing(
        &self,
        caller: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<(RelPath, Arc<Vec<DirEntry>>, Instant), Errno> {
        let opened_as = {
            let open = lock(&self.dirs.open);
            let snapshot = open.get(&fh).ok_or(Errno::EBADF)?;
            if offset != 0 {
                let Snapshot {
                    path,
                    entries,
                    asked,
                } = snapshot;
                return Ok((path.clone(), entries.clone(), *asked));
            }
            snapshot.path.clone()
        };
        // The directory's path now: it may have been renamed since opendir.
        let path = self.path_of(ino).unwrap_or(opened_as);
        let id = lock(&self.inodes).file_id(ino);
        let ahead = id.and_then(|id| self.ahead.take(&path, id));
        let from_ahead = ahead.is_some();
        let (entries, asked, mark) = match ahead {
            Some(taken) => (taken.entries, taken.asked, Some(taken.mark)),
            None => {
                let asked = Instant::now();
                let mark = self.changes.mark();
                let entries = Arc::new(self.client.list_dir(&caller.cred, &path)?);
                (entries, asked, mark)
            }
        };
        // A listing is one pass over the directory on the server, so it is
        // proof of which names are missing, as of when it was asked for.
        if lock(&self.inodes).ino_of(&path) == Some(ino) {
            self.known
                .learn(ino, asked, entries.iter().map(|e| e.name.as_slice()));
        }
        if let Some(snapshot) = lock(&self.dirs.open).get_mut(&fh) {
            snapshot.path = path.clone();
            snapshot.entries = entries.clone();
            snapshot.asked = asked;
        }
        if let Some(id) = id {
            self.ahead
                .listed(&caller.cred, &path, id, &entries, asked, mark, from_ahead);
        }
        Ok((path, entries, asked))
    }

    /// The inode of the directory holding `path` (the root for the root).
    fn parent_ino(&self, path: &RelPath) -> u64 {
        path.split_last()
            .and_then(|(parent, _)| lock(&self.inodes).ino_of(&parent))
            .unwrap_or(crate::inode::ROOT_INO)
    }
}
