//! `DirStream`: a directory being listed, held open from one reply of a listing
//! to the next so that each reply goes on where the last one stopped.
//!
//! A listing read through one stream is one pass of `readdir(3)`: an entry that
//! exists throughout the listing is listed exactly once, whatever is created or
//! removed beside it, and the server reads each name once. Going on by position
//! instead (reading the directory again from its start and skipping what was
//! sent) costs a directory of n entries n²/page name reads, and lists a name
//! twice, or never, when an entry before it goes or comes meanwhile.

use super::sys::{self, attr_from_stat};
use ferry_common::proto::{DirEntry, LISTED_ENTRY_OVERHEAD};
use ferry_common::Errno;

/// An open directory and how far its listing has got.
#[derive(Debug)]
pub struct DirStream {
    dir: sys::Dir,
    /// A name read but not listed yet: it did not fit in the last reply.
    held: Option<Vec<u8>>,
}

impl DirStream {
    pub(super) fn new(dir: sys::Dir) -> DirStream {
        DirStream { dir, held: None }
    }

    /// The next name, `.` and `..` left out; `None` at the end.
    fn next_name(&mut self) -> Result<Option<Vec<u8>>, Errno> {
        if let Some(name) = self.held.take() {
            return Ok(Some(name));
        }
        loop {
            match self.dir.next_name()? {
                Some(name) if name == b"." || name == b".." => continue,
                other => return Ok(other),
            }
        }
    }

    /// Passes over the next `n` names without listing them.
    pub(super) fn skip(&mut self, n: u64) -> Result<(), Errno> {
        for _ in 0..n {
            if self.next_name()?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// The next entries with their attributes: at most `max`, and no more than
    /// fit in `budget` bytes at their name's length plus
    /// [`LISTED_ENTRY_OVERHEAD`] each (but always one, if any is left). The flag
    /// says whether entries follow. A name removed between being read and being
    /// looked at is left out.
    pub fn next_entries(
        &mut self,
        budget: usize,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), Errno> {
        let mut entries = Vec::new();
        let mut used = 0usize;
        while let Some(name) = self.next_name()? {
            let cost = name.len() + LISTED_ENTRY_OVERHEAD;
            if entries.len() >= max || (!entries.is_empty() && used + cost > budget) {
                self.held = Some(name);
                return Ok((entries, true));
            }
            let c_name = sys::cstring(&name)?;
            match sys::fstatat(self.dir.fd(), &c_name) {
                Ok(st) => {
                    used += cost;
                    entries.push(DirEntry {
                        name,
                        attr: attr_from_stat(&st),
                    });
                }
                Err(e) if e == Errno::ENOENT => continue,
                Err(e) => return Err(e),
            }
        }
        Ok((entries, false))
    }
}
