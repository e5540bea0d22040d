//! The open files of one connection, by handle number.
//!
//! Handles are numbered from 1 and never reused on a connection, so a late
//! request with a closed handle gets EBADF instead of reaching another file.
//! A client may also choose the number of a file it creates (`CreateAs`, so
//! that it can write through it before the answer is back): such a number
//! carries [`CLIENT_HANDLE`], which the server's own never reach, and must
//! not be open. Not reusing its own numbers is then the client's part (ferry
//! counts them up): a client that does harms only its own files. Increasing
//! order is not required: a mount's threads choose and send concurrently.
//! Each file sits behind an `Arc`: `Close` removes it from the table while a read
//! already running keeps its own reference, and the descriptor is closed when the
//! last user lets go. Dropping the table (the connection ended) closes them all.
//! Each handle also remembers which server file it is ([`NodeId`]): what a
//! change through it is published as (see `effects`).
//!
//! Each file holds its place in the connection's descriptor budget (see
//! `crate::budget`), taken before it was opened and given back when it leaves
//! the table.

use crate::budget::Descriptor;
use crate::export::OpenFile;
use ferry_common::proto::{NodeId, CLIENT_HANDLE};
use ferry_common::sync::lock;
use ferry_common::Errno;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One open file: the file, which server file it is, and its place in the
/// descriptor budget (given back when it leaves the table).
#[derive(Debug)]
struct Held {
    file: Arc<OpenFile>,
    id: NodeId,
    _descriptor: Descriptor,
}

impl Held {
    fn new(file: OpenFile, id: NodeId, descriptor: Descriptor) -> Held {
        Held {
            file: Arc::new(file),
            id,
            _descriptor: descriptor,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct HandleTable {
    // A std mutex, not tokio's: it is held for a map operation only, never across
    // an await, so the reader task may take it as well as blocking-pool threads.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last: u64,
    files: HashMap<u64, Held>,
}

impl HandleTable {
    pub(crate) fn new() -> HandleTable {
        HandleTable::default()
    }

    /// Whether the client may choose `handle` for a file it is about to
    /// create: EINVAL without [`CLIENT_HANDLE`], EEXIST while it is open.
    /// Then [`insert_as`](Self::insert_as) (the connection's name operations
    /// run one at a time, in order, so nothing takes it in between).
    pub(crate) fn claim(&self, handle: u64) -> Result<(), Errno> {
        let inner = lock(&self.inner);
        if handle & CLIENT_HANDLE == 0 || handle == CLIENT_HANDLE {
            return Err(Errno::EINVAL);
        }
        if inner.files.contains_key(&handle) {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    /// Stores `file` (as [`insert`](Self::insert)) under `handle`, which the
    /// client chose and [`claim`](Self::claim) granted.
    pub(crate) fn insert_as(
        &self,
        handle: u64,
        file: OpenFile,
        id: NodeId,
        descriptor: Descriptor,
    ) {
        lock(&self.inner)
            .files
            .insert(handle, Held::new(file, id, descriptor));
    }

    /// Stores `file`, which is the server file `id` and holds `descriptor` of
    /// the budget, and returns its new handle.
    pub(crate) fn insert(&self, file: OpenFile, id: NodeId, descriptor: Descriptor) -> u64 {
        let mut inner = lock(&self.inner);
        inner.last += 1;
        let handle = inner.last;
        inner.files.insert(handle, Held::new(file, id, descriptor));
        handle
    }

    /// No file is open.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.inner).files.is_empty()
    }

    pub(crate) fn get(&self, handle: u64) -> Result<Arc<OpenFile>, Errno> {
        lock(&self.inner)
            .files
            .get(&handle)
            .map(|held| Arc::clone(&held.file))
            .ok_or(Errno::EBADF)
    }

    /// The server file behind `handle`, if it is open.
    pub(crate) fn id(&self, handle: u64) -> Option<NodeId> {
        lock(&self.inner).files.get(&handle).map(|held| held.id)
    }

    /// Forgets `handle`; the file closes once no request still uses it.
    pub(crate) fn remove(&self, handle: u64) -> Result<(), Errno> {
        let file = lock(&self.inner)
            .files
            .remove(&handle)
            .ok_or(Errno::EBADF)?;
        // Dropped outside the lock: the close(2) it may trigger can take a while.
        drop(file);
        Ok(())
    }
}
