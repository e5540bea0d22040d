//! Data buffers used again: a chunk of file data read off the wire goes into a
//! buffer that already held one.
//!
//! A data answer (on the mount) or a write (on the server) is read into a
//! buffer of its own, which then travels on as the answer's or the request's
//! data. Opening TLS records into a fresh buffer means zeroing it first (the
//! cipher writes only into initialised memory): 7 % of the mount's CPU in a
//! sequential read, 3 % of the server's in a sequential write (`perf`). A
//! buffer given back once its data has been delivered ([`give_back`]) is
//! initialised already, and the next chunk is read into it as it is; being
//! warm in the caches helps too.
//!
//! Only chunks of the size sequential transfers use are kept (more than half of
//! [`MAX_CHUNK`], at most [`MAX_CHUNK`]), a few of them: a smaller frame is
//! read into a fresh buffer's spare capacity, which costs no zeroing as long
//! as the stream is plaintext, and little for small frames when it is not.

use super::MAX_CHUNK;
use crate::sync::lock;
use std::sync::Mutex;

/// The size of a kept buffer: the largest chunk.
const SIZE: usize = MAX_CHUNK as usize;
/// How many buffers are kept, at most (16 MiB for the process): a sequential
/// reader or writer has a few chunks in flight (16 MiB of write-behind is 16).
const KEEP: usize = 16;

/// Buffers given back, each of length (and capacity) [`SIZE`], initialised.
struct Spare {
    kept: Mutex<Vec<Vec<u8>>>,
}

/// The process's buffers: the mount's answers, or the server's writes.
static SPARE: Spare = Spare::new();

/// Whether a chunk of `len` bytes is read into a kept buffer.
fn kept_size(len: usize) -> bool {
    len > SIZE / 2 && len <= SIZE
}

/// For a chunk of a kept size, a buffer of `len` initialised bytes to read it
/// into: one given back if there is one (its bytes are what it held before,
/// all to be overwritten), else a fresh one. `None` for any other size: that
/// is read into a buffer's spare capacity, as it needs no zeroing either.
pub(super) fn take(len: usize) -> Option<Vec<u8>> {
    SPARE.take(len)
}

/// Gives `buf` back once its data has been delivered, to be read into again:
/// kept if it is of the kept size and there is room, else freed.
pub fn give_back(buf: Vec<u8>) {
    SPARE.give_back(buf)
}

impl Spare {
    const fn new() -> Spare {
        Spare {
            kept: Mutex::new(Vec::new()),
        }
    }

    fn take(&self, len: usize) -> Option<Vec<u8>> {
        if !kept_size(len) {
            return None;
        }
        let mut buf = lock(&self.kept).pop().unwrap_or_else(|| vec![0; SIZE]);
        buf.truncate(len);
        Some(buf)
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() != SIZE || !kept_size(buf.len()) {
            return;
        }
        // What a shorter chunk left past its end was initialised by an earlier
        // one, but the vector no longer counts it: zeroed again (at most half).
        buf.resize(SIZE, 0);
        let mut kept = lock(&self.kept);
        if kept.len() < KEEP {
            kept.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Spare {
        fn len(&self) -> usize {
            lock(&self.kept).len()
        }
    }

    #[test]
    fn a_chunk_buffer_given_back_is_taken_again_with_the_length_asked() {
        let spare = Spare::new();
        let mut buf = spare.take(SIZE).unwrap();
        assert_eq!(buf.len(), SIZE);
        buf[0] = 7;
        let at = buf.as_ptr();
        spare.give_back(buf);
        assert_eq!(spare.len(), 1);
        let again = spare.take(SIZE - 100).unwrap();
        assert_eq!(again.as_ptr(), at, "the same allocation");
        assert_eq!(again.len(), SIZE - 100);
        assert_eq!(spare.len(), 0);
        // Shorter: its tail is counted again before it is kept.
        spare.give_back(again);
        assert_eq!(lock(&spare.kept)[0].len(), SIZE);
    }

    #[test]
    fn small_or_foreign_buffers_are_not_kept() {
        let spare = Spare::new();
        assert_eq!(spare.take(4096), None);
        assert_eq!(spare.take(SIZE + 1), None);
        spare.give_back(vec![0; 4096]);
        // Data buffers of another origin (a cache's, a joined answer's).
        spare.give_back(Vec::with_capacity(SIZE));
        spare.give_back(vec![1; SIZE + 1]);
        assert_eq!(spare.len(), 0);
    }

    #[test]
    fn only_a_few_are_kept() {
        let spare = Spare::new();
        for _ in 0..KEEP + 3 {
            spare.give_back(vec![0; SIZE]);
        }
        assert_eq!(spare.len(), KEEP);
    }
}
