//! `OpenFiles`: the files the kernel holds open, by the handle number ferry gave it.
//!
//! A server handle lives only as long as the connection that opened it, while the
//! kernel's handle lives until release. So the kernel is given ferry's own number,
//! and each entry remembers how to open the file again — its inode (hence its
//! current path), its open flags and who opened it — along with the server
//! handle and the connection epoch it belongs to. After a reconnect the file is re-opened by
//! path, without the flags that only make sense once (`O_CREAT`, `O_EXCL`,
//! `O_TRUNC`).

use ferry_common::proto::Cred;
use std::collections::HashMap;

/// One open file as the server knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RemoteFile {
    pub(crate) ino: u64,
    /// The `open(2)` flags to re-open with.
    pub(crate) flags: i32,
    /// Who opened it, and so whom it is opened again for.
    pub(crate) opener: Cred,
    pub(crate) handle: u64,
    pub(crate) epoch: u64,
}

impl RemoteFile {
    /// The flags for opening the same file again: creating or truncating twice
    /// would be wrong.
    pub(crate) fn reopen_flags(&self) -> i32 {
        self.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC)
    }
}

#[derive(Debug, Default)]
pub(crate) struct OpenFiles {
    files: HashMap<u64, RemoteFile>,
    next: u64,
}

impl OpenFiles {
    pub(crate) fn new() -> OpenFiles {
        OpenFiles {
            files: HashMap::new(),
            next: 1,
        }
    }

    /// Records a newly opened file and returns the number to give the kernel.
    pub(crate) fn insert(&mut self, file: RemoteFile) -> u64 {
        let fh = self.next;
        self.next += 1;
        self.files.insert(fh, file);
        fh
    }

    pub(crate) fn get(&self, fh: u64) -> Option<RemoteFile> {
        self.files.get(&fh).cloned()
    }

    /// The file was opened again on connection `epoch` as `handle`.
    pub(crate) fn reopened(&mut self, fh: u64, handle: u64, epoch: u64) {
        if let Some(f) = self.files.get_mut(&fh) {
            f.handle = handle;
            f.epoch = epoch;
        }
    }

    pub(crate) fn remove(&mut self, fh: u64) -> Option<RemoteFile> {
        self.files.remove(&fh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_distinct_and_entries_update() {
        let mut t = OpenFiles::new();
        let f = RemoteFile {
            ino: 2,
            flags: libc::O_RDWR,
            opener: Cred::default(),
            handle: 1,
            epoch: 1,
        };
        let a = t.insert(f.clone());
        let b = t.insert(f);
        assert_ne!(a, b);
        t.reopened(a, 9, 2);
        assert_eq!(t.get(a).map(|f| (f.handle, f.epoch)), Some((9, 2)));
        assert_eq!(t.get(b).map(|f| (f.handle, f.epoch)), Some((1, 1)));
        assert!(t.remove(a).is_some());
        assert!(t.get(a).is_none());
        assert_eq!(t.files.len(), 1);
    }

    #[test]
    fn reopening_never_creates_or_truncates() {
        let f = RemoteFile {
            ino: 2,
            flags: libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_APPEND,
            opener: Cred::default(),
            handle: 1,
            epoch: 1,
        };
        assert_eq!(f.reopen_flags(), libc::O_WRONLY | libc::O_APPEND);
    }
}
