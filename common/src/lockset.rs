//! The byte ranges one POSIX lock owner holds on one file, merged and split
//! the way the kernel does it: taking a lock over part of a held range splits
//! it, unlocking the middle of one leaves two, and neighbouring ranges of the
//! same type become one.
//!
//! Both sides keep one per (file, owner): the server to count what a
//! connection holds (the kernel walks every range of a file on every lock
//! call, so a connection may hold only so many), the mount to know what to
//! take back after a reconnect.

use crate::proto::{FileLock, LockType, LOCK_TO_EOF};
use std::collections::BTreeMap;

/// Disjoint ranges `start..=end`, each read or write locked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockSet {
    /// By start: (end, type), never `LockType::Unlock`.
    ranges: BTreeMap<u64, (u64, LockType)>,
}

/// One range and its type, as the pieces of a change are worked out.
type Piece = (u64, u64, LockType);

impl LockSet {
    pub fn new() -> LockSet {
        LockSet::default()
    }

    /// How many separate ranges are held.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The held ranges, in order.
    pub fn locks(&self) -> impl Iterator<Item = FileLock> + '_ {
        self.ranges
            .iter()
            .map(|(&start, &(end, typ))| FileLock { typ, start, end })
    }

    /// How many ranges there would be after [`apply`](Self::apply)ing `lock`.
    pub fn len_after(&self, lock: &FileLock) -> usize {
        let Some((start, end)) = bounds(lock) else {
            return self.len();
        };
        let affected = self.affected(start, end);
        let pieces = pieces(&affected, start, end, lock.typ);
        self.len() - affected.len() + pieces.len()
    }

    /// Takes (read or write) or drops (unlock) `lock`'s range, as the kernel
    /// would for one owner. A range the kernel would refuse (start past
    /// [`LOCK_TO_EOF`], end before start) changes nothing.
    pub fn apply(&mut self, lock: &FileLock) {
        let Some((start, end)) = bounds(lock) else {
            return;
        };
        let affected = self.affected(start, end);
        for (s, _, _) in &affected {
            self.ranges.remove(s);
        }
        for (s, e, typ) in pieces(&affected, start, end, lock.typ) {
            self.ranges.insert(s, (e, typ));
        }
    }

    /// The held ranges that overlap `start..=end` or touch it.
    fn affected(&self, start: u64, end: u64) -> Vec<Piece> {
        let low = start.saturating_sub(1);
        let high = end.saturating_add(1);
        let mut found: Vec<Piece> = self
            .ranges
            .range(..=high)
            .rev()
            .take_while(|(_, &(e, _))| e >= low)
            .map(|(&s, &(e, typ))| (s, e, typ))
            .collect();
        found.reverse();
        found
    }
}

/// `lock`'s range with "to the end of the file" as [`LOCK_TO_EOF`]; `None`
/// for one the kernel refuses.
fn bounds(lock: &FileLock) -> Option<(u64, u64)> {
    if lock.start > LOCK_TO_EOF || lock.end < lock.start {
        return None;
    }
    Some((lock.start, lock.end.min(LOCK_TO_EOF)))
}

/// What replaces the `affected` ranges once `start..=end` is set to `typ`:
/// their parts outside it, the range itself (unless unlocked), neighbours of
/// one type joined.
fn pieces(affected: &[Piece], start: u64, end: u64, typ: LockType) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(affected.len() + 2);
    for &(s, e, t) in affected {
        if s < start {
            out.push((s, e.min(start - 1), t));
        }
        if e > end {
            out.push((s.max(end + 1), e, t));
        }
    }
    if typ != LockType::Unlock {
        out.push((start, end, typ));
    }
    out.sort_unstable_by_key(|&(s, _, _)| s);
    let mut joined: Vec<Piece> = Vec::with_capacity(out.len());
    for piece in out {
        match joined.last_mut() {
            Some(last) if last.2 == piece.2 && last.1.saturating_add(1) >= piece.0 => {
                last.1 = last.1.max(piece.1);
            }
            _ => joined.push(piece),
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(typ: LockType, start: u64, end: u64) -> FileLock {
        FileLock { typ, start, end }
    }

    fn held(set: &LockSet) -> Vec<(u64, u64, LockType)> {
        set.locks().map(|l| (l.start, l.end, l.typ)).collect()
    }

    use LockType::{Read, Unlock, Write};

    #[test]
    fn ranges_split_merge_and_go_as_the_kernel_keeps_them() {
        let mut set = LockSet::new();
        set.apply(&lock(Write, 0, 99));
        // A read lock in the middle of a write lock splits it in three.
        let middle = lock(Read, 40, 59);
        assert_eq!(set.len_after(&middle), 3);
        set.apply(&middle);
        assert_eq!(
            held(&set),
            [(0, 39, Write), (40, 59, Read), (60, 99, Write)]
        );
        // Writing over the middle again joins the three.
        set.apply(&lock(Write, 40, 59));
        assert_eq!(held(&set), [(0, 99, Write)]);
        // Unlocking the middle leaves two.
        set.apply(&lock(Unlock, 10, 19));
        assert_eq!(held(&set), [(0, 9, Write), (20, 99, Write)]);
        // A neighbour of the same type joins; of another type, stays apart.
        set.apply(&lock(Write, 100, 109));
        set.apply(&lock(Read, 110, 119));
        assert_eq!(
            held(&set),
            [(0, 9, Write), (20, 109, Write), (110, 119, Read)]
        );
        // To the end of the file, then everything unlocked.
        set.apply(&lock(Read, 200, u64::MAX));
        assert_eq!(set.locks().last().map(|l| l.end), Some(LOCK_TO_EOF));
        assert_eq!(set.len(), 4);
        let all = lock(Unlock, 0, LOCK_TO_EOF);
        assert_eq!(set.len_after(&all), 0);
        set.apply(&all);
        assert!(set.is_empty());
    }

    #[test]
    fn len_after_agrees_with_apply_and_refused_ranges_change_nothing() {
        let mut set = LockSet::new();
        let ops = [
            lock(Read, 0, 0),
            lock(Read, 2, 2),
            lock(Write, 1, 1),
            lock(Read, 1, 1),
            lock(Unlock, 0, 5),
            lock(Write, 10, 20),
            lock(Read, 15, 30),
            lock(Unlock, 0, 0),
            lock(Write, LOCK_TO_EOF, LOCK_TO_EOF),
            lock(Write, 5, 4),
            lock(Write, LOCK_TO_EOF + 1, u64::MAX),
        ];
        for op in ops {
            let expected = set.len_after(&op);
            set.apply(&op);
            assert_eq!(set.len(), expected, "after {op:?}");
        }
        assert_eq!(
            held(&set),
            [
                (10, 14, Write),
                (15, 30, Read),
                (LOCK_TO_EOF, LOCK_TO_EOF, Write)
            ]
        );
    }

    #[test]
    fn alternate_bytes_stay_apart() {
        let mut set = LockSet::new();
        for i in 0..1000 {
            set.apply(&lock(Read, 2 * i, 2 * i));
        }
        assert_eq!(set.len(), 1000);
        // Filling one gap joins two ranges into one.
        assert_eq!(set.len_after(&lock(Read, 1, 1)), 999);
    }
}
