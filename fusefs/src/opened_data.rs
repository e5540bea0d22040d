//! `OpenedData`: the first bytes of files opened for reading, which the server
//! sends with the open (`Op::OpenRead`), held to answer the kernel's first reads
//! without asking again. Reading a small file then costs one round trip.
//!
//! The bytes are the file as it was when it was opened: what close-to-open
//! consistency promises a reader, and what the kernel's page cache would hold
//! had it read them then. They are given up, and the server asked instead:
//!
//! - when this mount changes the file's data or size — a write through any
//!   handle, a truncation, fallocate, a server-side copy into it — or opens it
//!   for writing: the kernel's next read must see the change. Each such change
//!   is [`changed`](OpenedData::changed) when it starts and when it is answered,
//!   and an open's bytes are only kept when no change started or ended after
//!   the open was sent ([`mark`](OpenedData::mark)) and none was in flight then
//!   (the caller checks that);
//! - when a lock on the file is granted (another client may have written it);
//! - once a read has taken them through to their end (the kernel keeps them in
//!   its page cache; should it drop and read them again, the server answers);
//! - when older than the attribute timeout: by then the kernel may have learned
//!   that the file changed and dropped its pages, and must not be given the old
//!   bytes back;
//! - at release, and when the mount holds more than [`BUDGET`] of them (the
//!   oldest go first).
//!
//! A file opened without a server handle, from the whole contents fetched
//! ahead for a walk (`crate::files_ahead`), keeps its bytes until release
//! instead ([`keep_whole`](OpenedData::keep_whole)): whatever the kernel
//! reads again, however late, comes from them — the file as it was opened,
//! even once its name is gone, as a server handle would read it. Only a
//! change through this mount, a lock or the budget lets them go.

use ferry_common::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most bytes held for all open files together.
pub(crate) const BUDGET: usize = 32 << 20;

/// Inodes whose last change is remembered; beyond that, every open in flight
/// forgets what it brings (see [`State::floor`]).
const REMEMBERED_CHANGES: usize = 4096;

/// The bytes an open brought, for one kernel handle.
#[derive(Debug)]
struct Held {
    ino: u64,
    data: Vec<u8>,
    /// The file ended where the bytes do.
    eof: bool,
    /// Kept until release: the handle has no server handle behind it, and
    /// the file may not be found by its path again (see
    /// [`keep_whole`](OpenedData::keep_whole)).
    pinned: bool,
    at: Instant,
    /// Order of arrival, for giving up the oldest first.
    order: u64,
}

#[derive(Debug, Default)]
struct State {
    held: HashMap<u64, Held>,
    /// Kernel handles with bytes held, oldest first.
    by_age: BTreeMap<u64, u64>,
    /// Kernel handles with bytes held, by inode.
    by_ino: HashMap<u64, Vec<u64>>,
    bytes: usize,
    /// Counts changes (and arrivals, for `order`).
    seq: u64,
    /// Per inode, `seq` at its last change.
    changed: HashMap<u64, u64>,
    /// Marks below this are too old to tell (the changes before it were forgotten).
    floor: u64,
}

impl State {
    /// Counts a change to `ino`; the kernel handles holding its bytes.
    fn note_change(&mut self, ino: u64) -> Vec<u64> {
        self.seq += 1;
        let seq = self.seq;
        if self.changed.len() >= REMEMBERED_CHANGES && !self.changed.contains_key(&ino) {
            self.changed.clear();
            self.floor = seq;
        }
        self.changed.insert(ino, seq);
        self.by_ino.get(&ino).cloned().unwrap_or_default()
    }

    fn drop_fh(&mut self, fh: u64) {
        if let Some(held) = self.held.remove(&fh) {
            self.by_age.remove(&held.order);
            self.bytes -= held.data.len();
            if let Some(fhs) = self.by_ino.get_mut(&held.ino) {
                fhs.retain(|&f| f != fh);
                if fhs.is_empty() {
                    self.by_ino.remove(&held.ino);
                }
            }
        }
    }
}

/// What a read can be answered with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// All of it (shorter than asked at the end of the file).
    Whole(Vec<u8>),
    /// Its start; the rest, from where these bytes end, is the server's to give.
    Head(Vec<u8>),
    /// Nothing held: ask the server.
    Nothing,
}

#[derive(Debug)]
pub(crate) struct OpenedData {
    state: Mutex<State>,
    /// How long bytes may be held (the attribute timeout).
    max_age: Duration,
}

impl OpenedData {
    pub(crate) fn new(max_age: Duration) -> OpenedData {
        OpenedData {
            state: Mutex::new(State::default()),
            max_age,
        }
    }

    /// A mark to take before sending an open whose bytes are to be held.
    pub(crate) fn mark(&self) -> u64 {
        lock(&self.state).seq
    }

    /// `ino`'s data or size is changing, or has just changed, through this mount.
    pub(crate) fn changed(&self, ino: u64) {
        let mut state = lock(&self.state);
        for fh in state.note_change(ino) {
            state.drop_fh(fh);
        }
    }

    /// The server said `ino`'s data changed, or its name went: bytes held for
    /// reads go, but for those of handles without a server handle (see
    /// [`keep_whole`](Self::keep_whole)), which read the file as it was
    /// opened until closed — what close-to-open promises a reader, and all
    /// that is left to read of a file whose name went.
    pub(crate) fn changed_elsewhere(&self, ino: u64) {
        let mut state = lock(&self.state);
        for fh in state.note_change(ino) {
            if !state.held.get(&fh).is_some_and(|h| h.pinned) {
                state.drop_fh(fh);
            }
        }
    }

    /// Holds `data`, the first bytes of `ino` that the open of kernel handle
    /// `fh` brought, unless the file changed here since `mark`. `eof`: the file
    /// ended there.
    pub(crate) fn keep(&self, fh: u64, ino: u64, mark: u64, data: Vec<u8>, eof: bool) {
        self.hold(fh, ino, mark, data, eof, false)
    }

    /// Holds `data`, the whole of `ino` as the kernel handle `fh` opened it
    /// without a server handle (from files fetched ahead), until release:
    /// reads through it are answered from these bytes however often the
    /// kernel asks and however long the file stays open — as a server handle
    /// would go on reading the file even once it is unlinked. Only a change
    /// through this mount, a lock or the budget lets them go; reads then
    /// open the file by its path.
    pub(crate) fn keep_whole(&self, fh: u64, ino: u64, mark: u64, data: Vec<u8>) {
        self.hold(fh, ino, mark, data, true, true)
    }

    fn hold(&self, fh: u64, ino: u64, mark: u64, data: Vec<u8>, eof: bool, pinned: bool) {
        let mut state = lock(&self.state);
        let changed_since = state.changed.get(&ino).is_some_and(|&at| at > mark);
        if mark < state.floor || changed_since || data.len() > BUDGET {
            return;
        }
        state.drop_fh(fh);
        while state.bytes + data.len() > BUDGET {
            let Some((_, oldest)) = state.by_age.pop_first() else {
                break;
            };
            state.drop_fh(oldest);
        }
        state.seq += 1;
        let order = state.seq;
        state.bytes += data.len();
        state.by_age.insert(order, fh);
        state.by_ino.entry(ino).or_default().push(fh);
        state.held.insert(
            fh,
            Held {
                ino,
                data,
                eof,
                pinned,
                at: Instant::now(),
                order,
            },
        );
    }

    /// `len` bytes at `offset` of the file behind kernel handle `fh`, as far as
    /// the held bytes have them.
    pub(crate) fn read(&self, fh: u64, offset: u64, len: u32) -> Served {
        let mut state = lock(&self.state);
        let Some(held) = state.held.get(&fh) else {
            return Served::Nothing;
        };
        let have = held.data.len();
        let pinned = held.pinned;
        let fresh = pinned || held.at.elapsed() < self.max_age;
        if have == 0 && held.eof && fresh {
            // An empty file: nothing to read, and nothing to ask.
            if !pinned {
                state.drop_fh(fh);
            }
            return Served::Whole(Vec::new());
        }
        let start = match usize::try_from(offset) {
            Ok(start) if start < have && fresh => start,
            // Too old, or beyond the held bytes (the file grew since, as
            // the kernel has heard): the server knows more.
            _ => {
                if !fresh {
                    state.drop_fh(fh);
                }
                return Served::Nothing;
            }
        };
        let end = start.saturating_add(len as usize);
        if end < have {
            return Served::Whole(held.data[start..end].to_vec());
        }
        let eof = held.eof;
        let bytes = held.data[start..].to_vec();
        // Read through to their end: the kernel has them now.
        if !pinned {
            state.drop_fh(fh);
        }
        if eof || end == have {
            Served::Whole(bytes)
        } else {
            Served::Head(bytes)
        }
    }

    /// Kernel handle `fh` is gone.
    pub(crate) fn release(&self, fh: u64) {
        lock(&self.state).drop_fh(fh);
    }

    /// Bytes held for all open files.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        let state = lock(&self.state);
        let by_ino: usize = state.by_ino.values().map(Vec::len).sum();
        assert_eq!(
            (state.by_age.len(), by_ino),
            (state.held.len(), state.held.len())
        );
        state.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn reads_are_answered_until_the_bytes_are_read_through() {
        let held = OpenedData::new(LONG);
        let mark = held.mark();
        held.keep(1, 5, mark, b"0123456789".to_vec(), true);
        assert_eq!(held.read(1, 2, 3), Served::Whole(b"234".to_vec()));
        assert_eq!(held.read(2, 0, 3), Served::Nothing, "another handle");
        // Past the end of a file that ended there: short, and then let go.
        assert_eq!(held.read(1, 4, 4096), Served::Whole(b"456789".to_vec()));
        assert_eq!(held.read(1, 0, 3), Served::Nothing);
        assert_eq!(held.bytes(), 0);
    }

    #[test]
    fn a_whole_file_without_a_server_handle_is_held_until_release() {
        let held = OpenedData::new(Duration::ZERO);
        held.keep_whole(1, 5, held.mark(), b"0123".to_vec());
        for _ in 0..2 {
            assert_eq!(held.read(1, 0, 100), Served::Whole(b"0123".to_vec()));
            assert_eq!(held.read(1, 2, 100), Served::Whole(b"23".to_vec()));
            assert_eq!(held.read(1, 4, 100), Served::Nothing, "grown since?");
        }
        held.release(1);
        assert_eq!(held.read(1, 0, 1), Served::Nothing);
        // A change here lets them go (reads then ask the server).
        held.keep_whole(2, 5, held.mark(), b"0123".to_vec());
        held.changed_elsewhere(5);
        assert_eq!(
            held.read(2, 0, 4),
            Served::Whole(b"0123".to_vec()),
            "as opened"
        );
        held.changed(5);
        assert_eq!(held.read(2, 0, 1), Served::Nothing);
        assert_eq!(held.bytes(), 0);
    }

    #[test]
    fn an_empty_file_reads_empty_without_asking() {
        let held = OpenedData::new(LONG);
        held.keep(1, 5, held.mark(), Vec::new(), true);
        assert_eq!(held.read(1, 0, 4096), Served::Whole(Vec::new()));
        assert_eq!(held.read(1, 0, 4096), Served::Nothing, "then let go");
        held.keep(2, 6, held.mark(), Vec::new(), false);
        assert_eq!(
            held.read(2, 0, 4096),
            Served::Nothing,
            "not known to be empty"
        );
    }

    #[test]
    fn bytes_short_of_the_end_answer_the_head_of_a_longer_read() {
        let held = OpenedData::new(LONG);
        held.keep(1, 5, held.mark(), b"0123".to_vec(), false);
        assert_eq!(held.read(1, 1, 100), Served::Head(b"123".to_vec()));
        assert_eq!(held.read(1, 0, 1), Served::Nothing);
        held.keep(1, 5, held.mark(), b"0123".to_vec(), false);
        assert_eq!(held.read(1, 4, 100), Served::Nothing, "beyond them");
        assert_eq!(held.read(1, 0, 4), Served::Whole(b"0123".to_vec()));
    }

    #[test]
    fn a_change_here_voids_what_is_held_and_what_is_on_its_way() {
        let held = OpenedData::new(LONG);
        held.keep(1, 5, held.mark(), b"old".to_vec(), true);
        held.keep(2, 6, held.mark(), b"other".to_vec(), true);
        held.changed(5);
        assert_eq!(held.read(1, 0, 3), Served::Nothing);
        assert_eq!(held.read(2, 0, 1), Served::Whole(b"o".to_vec()));
        // An open sent before a change (or its answer) brings nothing to hold.
        let mark = held.mark();
        held.changed(5);
        held.keep(3, 5, mark, b"old".to_vec(), true);
        assert_eq!(held.read(3, 0, 3), Served::Nothing);
        // One sent after it does.
        held.keep(3, 5, held.mark(), b"new".to_vec(), true);
        assert_eq!(held.read(3, 0, 3), Served::Whole(b"new".to_vec()));
    }

    #[test]
    fn forgotten_changes_void_every_open_on_its_way() {
        let held = OpenedData::new(LONG);
        let mark = held.mark();
        for ino in 100..100 + REMEMBERED_CHANGES as u64 + 1 {
            held.changed(ino);
        }
        held.keep(1, 5, mark, b"x".to_vec(), true);
        assert_eq!(held.read(1, 0, 1), Served::Nothing);
        held.keep(1, 5, held.mark(), b"x".to_vec(), true);
        assert_eq!(held.read(1, 0, 1), Served::Whole(b"x".to_vec()));
    }

    #[test]
    fn old_bytes_and_released_handles_are_let_go() {
        let held = OpenedData::new(Duration::ZERO);
        held.keep(1, 5, held.mark(), b"x".to_vec(), true);
        assert_eq!(held.read(1, 0, 1), Served::Nothing);
        assert_eq!(held.bytes(), 0);
        let held = OpenedData::new(LONG);
        held.keep(1, 5, held.mark(), b"x".to_vec(), true);
        held.release(1);
        assert_eq!(held.read(1, 0, 1), Served::Nothing);
        assert_eq!(held.bytes(), 0);
    }

    #[test]
    fn the_budget_gives_up_the_oldest_first() {
        let held = OpenedData::new(LONG);
        let chunk = BUDGET / 4;
        for fh in 1..=5 {
            held.keep(fh, fh, held.mark(), vec![fh as u8; chunk], false);
        }
        assert_eq!(held.bytes(), 4 * chunk);
        assert_eq!(held.read(1, 0, 1), Served::Nothing, "the oldest went");
        for fh in 2..=5 {
            assert_eq!(held.read(fh, 0, 1), Served::Whole(vec![fh as u8]));
        }
        // More than the whole budget is never held.
        held.keep(9, 9, held.mark(), vec![0; BUDGET + 1], true);
        assert_eq!(held.read(9, 0, 1), Served::Nothing);
    }
}
