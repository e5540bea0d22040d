//! A directory listing put together from the server's pages, without trusting
//! the server to end it or to send names a directory can hold.
//!
//! A server that always answers "more" must not grow the client without limit
//! (one did to 6 GB): a listing holds at most [`MAX_ENTRIES`] entries, and takes
//! at most as long as the connection gives its slowest calls (the caller keeps
//! that deadline). A name the kernel would refuse in a listing (empty, `.`,
//! `..`, with a `/` or NUL, over 255 bytes) is dropped, and so is a name already
//! listed: a directory holds each name once, and the kernel's offsets and the
//! mount's negative-entry cache rely on that.

use ferry_common::path::check_name;
use ferry_common::proto::DirEntry;
use ferry_common::Errno;

/// The most entries one listing holds: over a million names, which take from
/// about 150 MB (short names) to 400 MB (255-byte names) of the mount's memory
/// while the listing is open. A larger directory answers EFBIG ("too large"):
/// a listing the client cannot hold whole.
pub const MAX_ENTRIES: usize = 1 << 20;

/// The pages of one listing so far.
pub(super) struct Listing {
    entries: Vec<DirEntry>,
    /// Entries dropped as invalid or repeated (for one warning at the end).
    dropped: usize,
    max: usize,
}

impl Listing {
    pub(super) fn new() -> Listing {
        Listing::with_limit(MAX_ENTRIES)
    }

    fn with_limit(max: usize) -> Listing {
        Listing {
            entries: Vec::new(),
            dropped: 0,
            max,
        }
    }

    /// Adds one page; EFBIG once the listing would exceed its limit (repeated
    /// names count until [`finish`](Self::finish) drops them, so they cannot
    /// grow it either).
    pub(super) fn add_page(&mut self, page: Vec<DirEntry>) -> Result<(), Errno> {
        for entry in page {
            if check_name(&entry.name).is_err() {
                self.dropped += 1;
                continue;
            }
            if self.entries.len() >= self.max {
                return Err(Errno::EFBIG);
            }
            self.entries.push(entry);
        }
        Ok(())
    }

    /// The entries, in the server's order, each name once (its first).
    pub(super) fn finish(mut self, what: &dyn std::fmt::Display) -> Vec<DirEntry> {
        // Sorting positions rather than names finds repeats without a second
        // copy of every name.
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by(|&a, &b| {
            self.entries[a]
                .name
                .cmp(&self.entries[b].name)
                .then(a.cmp(&b))
        });
        let mut repeated = vec![false; self.entries.len()];
        for pair in order.windows(2) {
            if self.entries[pair[0]].name == self.entries[pair[1]].name {
                repeated[pair[1]] = true;
            }
        }
        let mut index = 0;
        self.entries.retain(|_| {
            index += 1;
            !repeated[index - 1]
        });
        self.dropped += repeated.iter().filter(|r| **r).count();
        if self.dropped > 0 {
            log::warn!(
                "the server listed {} invalid or repeated names in {what}; they were left out",
                self.dropped
            );
        }
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::{Attr, FileKind};

    fn entry(name: &[u8]) -> DirEntry {
        DirEntry {
            name: name.to_vec(),
            attr: Attr::blank(FileKind::File),
        }
    }

    fn names(entries: &[DirEntry]) -> Vec<&[u8]> {
        entries.iter().map(|e| e.name.as_slice()).collect()
    }

    #[test]
    fn repeated_and_impossible_names_are_dropped() {
        let mut listing = Listing::new();
        let long = vec![b'x'; 256];
        let page = [
            &b"a"[..],
            b"b",
            b"a",
            b"",
            b".",
            b"..",
            b"x/y",
            b"nul\0",
            &long,
        ];
        listing
            .add_page(page.iter().map(|n| entry(n)).collect())
            .unwrap();
        listing.add_page(vec![entry(b"b"), entry(b"c")]).unwrap();
        let entries = listing.finish(&"d");
        assert_eq!(names(&entries), [&b"a"[..], b"b", b"c"]);
    }

    #[test]
    fn a_listing_stops_at_its_limit_repeats_included() {
        let mut listing = Listing::with_limit(3);
        listing
            .add_page(vec![entry(b"a"), entry(b"b"), entry(b"..")])
            .unwrap();
        listing.add_page(vec![entry(b"a")]).unwrap();
        assert_eq!(listing.add_page(vec![entry(b"c")]), Err(Errno::EFBIG));
    }
}
