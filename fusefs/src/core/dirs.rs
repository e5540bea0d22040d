//! Directories: listings served from snapshots, and names known to be absent.
//!
//! The kernel opens no directory here (opendir answers ENOSYS once, and the
//! kernel stops asking: `FUSE_NO_OPENDIR_SUPPORT`), so listing a directory
//! costs no request when the kernel has it cached, and none for opendir and
//! releasedir either (git status opens every directory of a checkout). The
//! kernel then caches every listing (`FOPEN_CACHE_DIR`, kept from one opendir
//! to the next) and checks it, when reading starts, against the directory's
//! mtime, whose attributes it refreshes once they expire
//! (`FUSE_AUTO_INVAL_DATA`): a listing is as fresh as the directory's
//! attributes — for the lease, while the server tells of every change, and a
//! notice that the directory changed drops the kernel's copy; else for
//! `--attr-timeout`. A repeated `ls -lR` of an unchanged tree never reaches
//! this process.
//!
//! A listing is taken when reading starts at offset 0 and served from a
//! snapshot afterwards, so offsets stay stable while the directory changes.
//! Offsets carry the snapshot's number in their upper half, so two listings
//! of one directory read at once keep theirs; the lower half is the index of
//! the next entry: 0 is `.`, 1 is `..`, then the listing. A snapshot goes once
//! read to its end, or when [`MAX_SNAPSHOTS`] newer ones are being read; an
//! offset whose snapshot has gone is served from a listing taken afresh.
//!
//! A listing is also proof of which names are *not* there (see
//! [`crate::known`]): the server reads it in one pass.
//!
//! A walk's next listings are fetched ahead (see [`crate::listing_ahead`]); one
//! taken from there is as old as when it was asked for, and its entries are
//! trusted only for what is left of the attribute timeout since then (it was
//! not asked for under the rule for answers that cross a notice).

use super::coherence::{Mark, Touched};
use super::{Caller, Core, Done, Entry};
use ferry_common::proto::{DirEntry, Op, Reply};
use ferry_common::sync::lock;
use ferry_common::{Attr, Errno, FileKind, RelPath, StatFs};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Listings being read at once, at most; the oldest goes first.
const MAX_SNAPSHOTS: usize = 64;

/// The bits of an offset that hold the index of the next entry.
const INDEX_BITS: u32 = 32;

/// The offset of entry `index` of snapshot `number`.
fn offset_of(number: u64, index: u64) -> u64 {
    (number << INDEX_BITS) | index
}

/// The snapshot's number and the entry's index an offset names.
fn split_offset(offset: u64) -> (u64, u64) {
    (offset >> INDEX_BITS, offset & ((1 << INDEX_BITS) - 1))
}

/// One listing's snapshot.
struct Snapshot {
    /// The directory listed.
    ino: u64,
    /// The directory's path when the listing was taken.
    path: RelPath,
    entries: Arc<Vec<DirEntry>>,
    /// Until when it may be trusted, and the notices seen when it was asked for.
    until: Instant,
    mark: Mark,
}

/// A listing as read by [`Core::listing`].
struct Listing {
    /// The snapshot's number (for the offsets).
    number: u64,
    path: RelPath,
    entries: Arc<Vec<DirEntry>>,
    /// Until when it may be trusted, and the notices seen when it was asked for.
    until: Instant,
    mark: Mark,
}

/// The snapshots of listings being read, by number.
#[derive(Default)]
pub(super) struct DirSnapshots {
    taken: Mutex<Snapshots>,
}

#[derive(Default)]
struct Snapshots {
    by_number: BTreeMap<u64, Snapshot>,
    last: u64,
}

impl Snapshots {
    /// Keeps `snapshot`; its number.
    fn keep(&mut self, snapshot: Snapshot) -> u64 {
        // Offsets stay positive (the kernel's are signed).
        self.last = if self.last >= (1 << 30) {
            1
        } else {
            self.last + 1
        };
        self.by_number.insert(self.last, snapshot);
        while self.by_number.len() > MAX_SNAPSHOTS {
            self.by_number.pop_first();
        }
        self.last
    }
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
    /// Lists directory `ino` from `offset`, handing each entry to `add` until
    /// it answers that the kernel's buffer is full; `finish` answers the kernel.
    pub fn readdir(
        &self,
        caller: &Caller,
        ino: u64,
        offset: u64,
        add: impl FnMut(DirItem<'_>) -> bool,
        finish: impl FnOnce(Result<(), Errno>),
    ) {
        let listed = self.readdir_into(caller, ino, offset, add);
        let crossing = listed.as_ref().ok().map(|(_, mark)| *mark);
        finish(listed.map(|_| ()));
        if let Some(mark) = crossing {
            // The kernel caches the listing.
            self.settle(mark, Touched::default().with_ino(Some(ino)));
        }
    }

    fn readdir_into(
        &self,
        caller: &Caller,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(DirItem<'_>) -> bool,
    ) -> Result<(RelPath, Mark), Errno> {
        let Listing {
            number,
            path,
            entries,
            mark,
            ..
        } = self.listing(caller, ino, offset)?;
        let total = entries.len() as u64 + 2;
        for index in split_offset(offset).1..total {
            let item = match index {
                0 => DirItem {
                    ino,
                    next_offset: offset_of(number, 1),
                    kind: FileKind::Directory,
                    name: b".",
                },
                1 => DirItem {
                    ino: self.parent_ino(&path),
                    next_offset: offset_of(number, 2),
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
                        next_offset: offset_of(number, index + 1),
                        kind: entry.attr.kind,
                        name: &entry.name,
                    }
                }
            };
            if add(item) {
                break;
            }
        }
        Ok((path, mark))
    }

    /// [`readdir`](Self::readdir) with attributes: every entry but `.` and `..`
    /// counts as a lookup, and is uncounted again when it did not fit.
    pub fn readdirplus(
        &self,
        caller: &Caller,
        ino: u64,
        offset: u64,
        add: impl FnMut(DirItemPlus<'_>) -> bool,
        finish: impl FnOnce(Result<(), Errno>),
    ) {
        let listed = self.readdirplus_into(caller, ino, offset, add);
        match listed {
            Ok((mark, handed)) => {
                finish(Ok(()));
                // The kernel caches the entries and their attributes.
                self.settle(
                    mark,
                    Touched {
                        paths: handed,
                        inos: vec![ino],
                    },
                );
            }
            Err(e) => finish(Err(e)),
        }
    }

    /// The entries handed to `add`, by path, and the listing's mark.
    fn readdirplus_into(
        &self,
        caller: &Caller,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(DirItemPlus<'_>) -> bool,
    ) -> Result<(Mark, Vec<RelPath>), Errno> {
        let Listing {
            number,
            path,
            entries,
            until,
            mark,
        } = self.listing(caller, ino, offset)?;
        let ttl = until.saturating_duration_since(Instant::now());
        let mut handed = Vec::new();
        // The kernel counts no lookup for `.` and `..`, nor reads their
        // generation.
        let dot = |ino| Entry {
            ino,
            generation: 0,
            attr: Attr::blank(FileKind::Directory),
            ttl,
        };
        let total = entries.len() as u64 + 2;
        for index in split_offset(offset).1..total {
            let full = match index {
                0 => add(DirItemPlus {
                    entry: dot(ino),
                    next_offset: offset_of(number, 1),
                    name: b".",
                }),
                1 => add(DirItemPlus {
                    entry: dot(self.parent_ino(&path)),
                    next_offset: offset_of(number, 2),
                    name: b"..",
                }),
                _ => {
                    let entry = &entries[(index - 2) as usize];
                    let name = OsStr::from_bytes(&entry.name);
                    let Ok(child) = path.join(name) else { continue };
                    let (child_ino, generation) = self.hand_out(&child, &entry.attr);
                    self.attrs.store(child_ino, entry.attr, until);
                    let attr = self.writes.overlay(child_ino, entry.attr, None);
                    let full = add(DirItemPlus {
                        entry: Entry {
                            ino: child_ino,
                            generation,
                            attr,
                            ttl,
                        },
                        next_offset: offset_of(number, index + 1),
                        name: &entry.name,
                    });
                    if full {
                        lock(&self.inodes).forget(child_ino, 1);
                    } else {
                        handed.push(child);
                    }
                    full
                }
            };
            if full {
                break;
            }
        }
        Ok((mark, handed))
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

    /// The listing of directory `ino` to serve `offset` from: the snapshot
    /// the offset names, or one taken afresh when reading starts (or the
    /// snapshot has gone) — fetched ahead, or asked for now on behalf of
    /// `caller`; with until when it may be trusted, and the notices seen when
    /// it was asked for. A snapshot read to its end goes.
    fn listing(&self, caller: &Caller, ino: u64, offset: u64) -> Result<Listing, Errno> {
        let (number, index) = split_offset(offset);
        if offset != 0 {
            let mut taken = lock(&self.dirs.taken);
            if let Some(snapshot) = taken.by_number.get(&number).filter(|s| s.ino == ino) {
                let listing = Listing {
                    number,
                    path: snapshot.path.clone(),
                    entries: snapshot.entries.clone(),
                    until: snapshot.until,
                    mark: snapshot.mark,
                };
                if index >= listing.entries.len() as u64 + 2 {
                    taken.by_number.remove(&number);
                }
                return Ok(listing);
            }
        }
        let path = self.path_of(ino)?;
        let id = lock(&self.inodes).file_id(ino);
        // Before a listing fetched ahead is taken: a notice after this is
        // applied again once the kernel has it (one before made it stale).
        let mark = self.mark();
        let ahead = id.and_then(|id| self.ahead.take(&path, id));
        let from_ahead = ahead.is_some();
        let (entries, asked, until, changes) = match ahead {
            // A notice since it was asked for makes it stale (see `coherence`).
            Some(taken) => {
                let until = taken.asked + self.ttl();
                (taken.entries, taken.asked, until, Some(taken.mark))
            }
            None => {
                let asked = Instant::now();
                let changes = self.changes.mark();
                let entries = Arc::new(self.client.list_dir(&caller.cred, &path)?);
                (entries, asked, self.until(asked), changes)
            }
        };
        // A listing is one pass over the directory on the server, so it is
        // proof of which names are missing, as of when it was asked for —
        // unless this mount changed names meanwhile: a name made then may be
        // missing from it, and one removed then (behind, see `behind`) still
        // in it; an rmdir sent behind relies on the names being exact.
        let unchanged = changes.is_some_and(|mark| self.changes.unchanged_since(mark));
        if unchanged && lock(&self.inodes).ino_of(&path) == Some(ino) {
            self.known
                .learn(ino, until, entries.iter().map(|e| e.name.as_slice()));
        }
        if let Some(id) = id {
            self.ahead.listed(
                &caller.cred,
                &path,
                id,
                &entries,
                asked,
                changes,
                from_ahead,
            );
        }
        let number = lock(&self.dirs.taken).keep(Snapshot {
            ino,
            path: path.clone(),
            entries: entries.clone(),
            until,
            mark,
        });
        Ok(Listing {
            number,
            path,
            entries,
            until,
            mark,
        })
    }

    /// The inode of the directory holding `path` (the root for the root).
    fn parent_ino(&self, path: &RelPath) -> u64 {
        path.split_last()
            .and_then(|(parent, _)| lock(&self.inodes).ino_of(&parent))
            .unwrap_or(crate::inode::ROOT_INO)
    }
}
