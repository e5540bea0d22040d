//! `FilesAhead`: the contents of the small files of a directory a walk is
//! reading, fetched before their opens.
//!
//! `tar c`, `cp -r`, `rsync` and `grep -r` open and read every file of a
//! directory one after the other, and each open would wait a round trip. Once
//! the mount sees a file opened for reading in a directory whose listing it
//! holds, it asks for the attributes and whole contents of that directory's
//! other small regular files ([`LARGEST`] at most, as the listing shows them)
//! with [`Op::ReadFiles`](ferry_common::proto::Op::ReadFiles): a few requests,
//! at most [`IN_FLIGHT`] at a time, each up to a reply's worth. Every later
//! open of the walk in that directory asks for what is still missing. Nothing
//! is fetched for a walk that opens no file (`ls -lR`, `du`, `find`).
//!
//! An open for reading of a file held here is answered by the mount at once,
//! without a server handle: its reads are answered from the bytes (see
//! [`crate::opened_data`]), and anything else — a read past them, a lock, an
//! fstat — opens the file by path first (`core::reopen`). What is held is
//! taken by the open that uses it, and answers an open only while it is as
//! fresh as the kernel's own caches could be:
//!
//! - before the time the answer may be cached until (the lease on a
//!   subscribed connection — the server then tells of every change to these
//!   files — else the attribute timeout);
//! - nothing was changed through this mount since it was asked for, nor was
//!   anything changing then, nor did the server tell of a change since
//!   ([`Changes`]);
//! - on the connection that brought it, for the user who asked for it (whose
//!   permission to read it the server checked).
//!
//! The bytes held and on their way are at most [`HELD_BYTES`] (those on their
//! way at most half of it); the oldest go first to make room, and what went
//! stale goes as soon as anything changes.

use crate::inode::FileId;
use crate::listing_ahead::{Changes, FilesListed};
use ferry_common::proto::{ByteBuf, Cred, FileRead, Op, READ_FILES_BYTES, READ_FILES_NAMES};
use ferry_common::sync::lock;
use ferry_common::{Attr, RelPath};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Files larger than this (as the listing shows them) are left to their opens.
pub(crate) const LARGEST: u64 = 128 << 10;
/// Bytes held and asked for, at most.
pub(crate) const HELD_BYTES: usize = 16 << 20;
/// Requests on their way, at most.
pub(crate) const IN_FLIGHT: usize = 8;
/// Directories whose asked-for names are remembered, at most.
const DIRECTORIES: usize = 256;
/// The longest an open waits for a file on its way (its request has a
/// deadline of its own): then it opens the file itself.
const LONGEST_WAIT: Duration = Duration::from_secs(10);

/// The contents of one file, fetched ahead.
#[derive(Debug)]
struct Held {
    attr: Attr,
    data: Vec<u8>,
    asked: Instant,
    /// Until when the answer may be cached.
    until: Instant,
    /// [`Changes`] when it was asked for.
    mark: u64,
    epoch: u64,
    cred: Cred,
    /// Order of arrival, for giving up the oldest first.
    order: u64,
}

/// A file fetched ahead, taken for an open.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) attr: Attr,
    pub(crate) data: Vec<u8>,
    /// When it was asked for.
    pub(crate) asked: Instant,
}

/// One request to send: the names of `dir` to read, and the bytes expected.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) dir: RelPath,
    pub(crate) names: Vec<ByteBuf>,
    pub(crate) expected: usize,
    /// The files asked for, as the listing showed them.
    ids: Vec<FileId>,
    /// [`Changes`] when it was made.
    pub(crate) mark: u64,
}

impl Batch {
    /// The request to send for this batch: its directory and names go into
    /// it, and the batch keeps what [`FilesAhead::answered`] needs.
    pub(crate) fn take_request(&mut self) -> Op {
        Op::ReadFiles {
            dir: std::mem::take(&mut self.dir),
            names: std::mem::take(&mut self.names),
            max_each: LARGEST as u32,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    held: HashMap<FileId, Held>,
    /// Held files, oldest first.
    by_age: BTreeMap<u64, FileId>,
    /// Bytes held.
    bytes: usize,
    /// Bytes asked for and not answered yet.
    coming: usize,
    /// Files asked for and not answered yet, with how many requests ask
    /// for each.
    on_way: HashMap<FileId, usize>,
    in_flight: usize,
    /// Per directory: what was asked for.
    asked: HashMap<RelPath, Asked>,
    seq: u64,
    /// When a walk was last seen opening a file to read it.
    reading: Option<Instant>,
    /// [`Changes`] when stale files were last let go.
    swept: u64,
}

impl State {
    fn drop_file(&mut self, id: &FileId) -> Option<Held> {
        let held = self.held.remove(id)?;
        self.by_age.remove(&held.order);
        self.bytes -= held.data.len();
        Some(held)
    }

    /// Lets go of what can no longer answer an open.
    fn sweep(&mut self, changes: &Changes) {
        let now = Instant::now();
        let stale: Vec<FileId> = self
            .held
            .iter()
            .filter(|(_, h)| h.until <= now || !changes.unchanged_since(h.mark))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.drop_file(&id);
        }
        if let Some(seq) = changes.mark() {
            self.swept = seq;
        }
    }
}

/// What was asked for of one directory.
#[derive(Debug, Default)]
struct Asked {
    /// When it was last asked about.
    at: Option<Instant>,
    /// The names asked for (held, coming or refused).
    names: HashSet<Vec<u8>>,
    /// Every file of the listing asked for at this time is among `names`.
    complete: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct FilesAhead {
    state: Mutex<State>,
    /// Signalled at every answer.
    answered: Condvar,
}

impl FilesAhead {
    pub(crate) fn new() -> FilesAhead {
        FilesAhead {
            state: Mutex::new(State::default()),
            answered: Condvar::new(),
        }
    }

    /// The contents of file `id` for an open by `cred` on connection `epoch`,
    /// if held and still trustworthy; taken either way. A file on its way is
    /// waited for (it is the sooner answer), and `waiting` is called first.
    pub(crate) fn take(
        &self,
        cred: &Cred,
        id: FileId,
        epoch: u64,
        changes: &Changes,
        waiting: impl FnOnce(),
    ) -> Option<Taken> {
        let mut state = lock(&self.state);
        let started = Instant::now();
        let mut waiting = Some(waiting);
        while !state.held.contains_key(&id)
            && state.on_way.contains_key(&id)
            && started.elapsed() < LONGEST_WAIT
        {
            if let Some(waiting) = waiting.take() {
                waiting();
            }
            // Bounded by the request's own deadline, and by LONGEST_WAIT.
            state = self
                .answered
                .wait_timeout(state, LONGEST_WAIT)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let held = state.drop_file(&id)?;
        let fresh = held.until > Instant::now()
            && changes.unchanged_since(held.mark)
            && held.epoch == epoch
            && held.cred == *cred;
        fresh.then_some(Taken {
            attr: held.attr,
            data: held.data,
            asked: held.asked,
        })
    }

    /// A walk opens files to read them: the listings it will reach next are
    /// worth their files' contents too. Whether none was seen within `within`.
    pub(crate) fn walk_opens_files(&self, within: Duration) -> bool {
        let mut state = lock(&self.state);
        let new = state.reading.is_none_or(|at| at.elapsed() >= within);
        state.reading = Some(Instant::now());
        new
    }

    /// Whether a walk was seen opening files within `within`.
    pub(crate) fn walk_reads(&self, within: Duration) -> bool {
        lock(&self.state)
            .reading
            .is_some_and(|at| at.elapsed() < within)
    }

    /// Whether every file of `dir`'s listing asked for at `listing` has
    /// been asked for.
    pub(crate) fn all_asked(&self, dir: &RelPath, listing: Instant) -> bool {
        lock(&self.state)
            .asked
            .get(dir)
            .is_some_and(|asked| asked.complete == Some(listing))
    }

    /// A file of `dir` was opened for reading by `cred`, and the directory's
    /// listing shows `files` (name and attributes): the requests to send for
    /// those of them not asked for yet, as far as there is room. Each batch
    /// sent must be [`answered`](Self::answered). `listing`: when the listing
    /// `files` are all of was asked for, if they are (see
    /// [`all_asked`](Self::all_asked)).
    pub(crate) fn wanted(
        &self,
        dir: &RelPath,
        files: FilesListed,
        listing: Option<Instant>,
        changes: &Changes,
    ) -> Vec<Batch> {
        let Some(mark) = changes.mark() else {
            // Worthless while this mount changes things.
            return Vec::new();
        };
        let mut state = lock(&self.state);
        if state.swept != mark || state.bytes + state.coming > HELD_BYTES / 2 {
            state.sweep(changes);
        }
        if !state.asked.contains_key(dir) && state.asked.len() >= DIRECTORIES {
            let oldest = state
                .asked
                .iter()
                .min_by_key(|(_, asked)| asked.at)
                .map(|(p, _)| p.clone());
            if let Some(oldest) = oldest {
                state.asked.remove(&oldest);
            }
        }
        let mut asked = state.asked.remove(dir).unwrap_or_default();
        let mut complete = true;
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        let mut ids = Vec::new();
        let mut expected = 0;
        for (name, attr) in files {
            if attr.size > LARGEST || asked.names.contains(&name) {
                continue;
            }
            let size = attr.size as usize;
            if batch.len() >= READ_FILES_NAMES || expected + size > READ_FILES_BYTES {
                batches.push(Batch {
                    dir: dir.clone(),
                    names: std::mem::take(&mut batch),
                    expected: std::mem::take(&mut expected),
                    ids: std::mem::take(&mut ids),
                    mark,
                });
            }
            if state.in_flight + batches.len() >= IN_FLIGHT || state.coming + size > HELD_BYTES / 2
            {
                complete = false;
                break;
            }
            // The walk has moved on: what it passed by goes first.
            while state.bytes + state.coming + size > HELD_BYTES {
                let Some((_, oldest)) = state.by_age.pop_first() else {
                    break;
                };
                state.drop_file(&oldest);
            }
            state.coming += size;
            expected += size;
            let id = FileId::of(&attr);
            *state.on_way.entry(id).or_default() += 1;
            ids.push(id);
            asked.names.insert(name.clone());
            batch.push(ByteBuf::from(name));
        }
        if !batch.is_empty() {
            batches.push(Batch {
                dir: dir.clone(),
                names: batch,
                expected,
                ids,
                mark,
            });
        }
        state.in_flight += batches.len();
        asked.at = Some(Instant::now());
        if !complete {
            asked.complete = None;
        } else if listing.is_some() {
            asked.complete = listing;
        }
        state.asked.insert(dir.clone(), asked);
        batches
    }

    /// The answer to `batch`, asked for at `asked` on connection `epoch` by
    /// `cred`, which may be cached until `until`: `files`, or nothing when it
    /// failed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn answered(
        &self,
        batch: &Batch,
        cred: &Cred,
        epoch: u64,
        asked: Instant,
        until: Instant,
        files: Vec<FileRead>,
        changes: &Changes,
    ) {
        let mut state = lock(&self.state);
        state.in_flight -= 1;
        state.coming -= batch.expected;
        for id in &batch.ids {
            if let Some(n) = state.on_way.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    state.on_way.remove(id);
                }
            }
        }
        self.keep(&mut state, batch, cred, epoch, asked, until, files, changes);
        drop(state);
        self.answered.notify_all();
    }

    #[allow(clippy::too_many_arguments)]
    fn keep(
        &self,
        state: &mut State,
        batch: &Batch,
        cred: &Cred,
        epoch: u64,
        asked: Instant,
        until: Instant,
        files: Vec<FileRead>,
        changes: &Changes,
    ) {
        if !changes.unchanged_since(batch.mark) {
            return;
        }
        for file in files {
            let Ok(contents) = file.result else { continue };
            // What grew since its listing is left to its open.
            if contents.data.len() as u64 != contents.attr.size {
                continue;
            }
            let id = FileId::of(&contents.attr);
            state.drop_file(&id);
            while state.bytes + contents.data.len() > HELD_BYTES {
                let Some((_, oldest)) = state.by_age.pop_first() else {
                    break;
                };
                state.drop_file(&oldest);
            }
            state.seq += 1;
            let order = state.seq;
            state.bytes += contents.data.len();
            state.by_age.insert(order, id);
            state.held.insert(
                id,
                Held {
                    attr: contents.attr,
                    data: contents.data,
                    asked,
                    until,
                    mark: batch.mark,
                    epoch,
                    cred: cred.clone(),
                    order,
                },
            );
        }
    }

    /// Waits until no request is on its way (for tests).
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while lock(&self.state).in_flight > 0 {
            assert!(Instant::now() < deadline, "files ahead never settled");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Bytes held, and requests on their way (for tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> (usize, usize) {
        let state = lock(&self.state);
        assert_eq!(state.by_age.len(), state.held.len());
        (state.bytes, state.in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::proto::FileContents;
    use ferry_common::FileKind;
    use std::time::Duration;

    fn file(ino: u64, size: u64) -> Attr {
        let mut attr = Attr::blank(FileKind::File);
        attr.ino = ino;
        attr.size = size;
        attr
    }

    fn read(name: &[u8], attr: Attr) -> FileRead {
        FileRead {
            name: name.to_vec(),
            result: Ok(FileContents {
                attr,
                data: vec![7; attr.size as usize],
            }),
        }
    }

    /// The server's answer to `batch`: every name read whole, with its
    /// attributes from `attrs`.
    fn answer_to(batch: &Batch, attrs: &HashMap<Vec<u8>, Attr>) -> Vec<FileRead> {
        batch
            .names
            .iter()
            .map(|n| read(n, attrs[&n.to_vec()]))
            .collect()
    }

    /// `ahead` asked for file `name` of directory `dir` and was answered
    /// (asked at `asked` by connection 1, trusted until `until`).
    fn fetched(
        ahead: &FilesAhead,
        dir: &str,
        name: &[u8],
        attr: Attr,
        asked: Instant,
        until: Instant,
        changes: &Changes,
    ) {
        let batch = ahead
            .wanted(
                &RelPath::parse(dir).unwrap(),
                vec![(name.to_vec(), attr)],
                None,
                changes,
            )
            .remove(0);
        let answer = vec![read(name, attr)];
        ahead.answered(&batch, &me(), 1, asked, until, answer, changes);
    }

    fn me() -> Cred {
        Cred {
            uid: 1000,
            gid: 1000,
            groups: Vec::new(),
        }
    }

    #[test]
    fn a_directory_is_asked_for_once_and_in_bounded_batches() {
        let ahead = FilesAhead::new();
        let changes = Changes::default();
        let dir = RelPath::parse("d").unwrap();
        let big = LARGEST;
        let mut files: Vec<(Vec<u8>, Attr)> = (0..10)
            .map(|i| (format!("f{i}").into_bytes(), file(i, big)))
            .collect();
        files.push((b"huge".to_vec(), file(99, LARGEST + 1)));
        let batches = ahead.wanted(&dir, files.clone(), None, &changes);
        let names: usize = batches.iter().map(|b| b.names.len()).sum();
        assert_eq!(names, 10, "not the file above LARGEST");
        assert!(batches.len() <= IN_FLIGHT);
        assert!(batches.iter().all(|b| b.expected <= READ_FILES_BYTES));
        assert!(
            ahead.wanted(&dir, files, None, &changes).is_empty(),
            "asked once"
        );
        assert_eq!(ahead.held(), (0, batches.len()));
    }

    #[test]
    fn a_listing_is_all_asked_for_only_once_every_file_of_it_was() {
        let ahead = FilesAhead::new();
        let changes = Changes::default();
        let dir = RelPath::parse("d").unwrap();
        let listing = Instant::now();
        // More than may be on its way at once.
        let files: Vec<(Vec<u8>, Attr)> = (0..100)
            .map(|i| (format!("f{i:03}").into_bytes(), file(i, LARGEST)))
            .collect();
        let attrs: HashMap<Vec<u8>, Attr> = files.iter().cloned().collect();
        let mut rounds = 0;
        loop {
            let batches = ahead.wanted(&dir, files.clone(), Some(listing), &changes);
            if batches.is_empty() {
                break;
            }
            rounds += 1;
            let done = ahead.all_asked(&dir, listing);
            for batch in &batches {
                let now = Instant::now();
                let answer = answer_to(batch, &attrs);
                ahead.answered(batch, &me(), 1, now, now, answer, &changes);
            }
            if done {
                break;
            }
        }
        assert!(rounds > 1, "the room ran out before the last file");
        assert!(ahead.all_asked(&dir, listing));
        assert!(
            !ahead.all_asked(&dir, Instant::now()),
            "a later listing may show more"
        );
        assert!(!ahead.all_asked(&RelPath::parse("e").unwrap(), listing));
    }

    #[test]
    fn what_is_held_answers_one_open_of_its_user_while_nothing_changes() {
        let ahead = FilesAhead::new();
        let changes = Changes::default();
        let dir = RelPath::parse("d").unwrap();
        let files = vec![(b"a".to_vec(), file(1, 3)), (b"b".to_vec(), file(2, 4))];
        let batch = ahead.wanted(&dir, files, None, &changes).remove(0);
        let now = Instant::now();
        let until = now + Duration::from_secs(60);
        let answer = vec![read(b"a", file(1, 3)), read(b"b", file(2, 4))];
        ahead.answered(&batch, &me(), 1, now, until, answer, &changes);
        assert_eq!(ahead.held(), (7, 0));
        let id = |ino| FileId { dev: 0, ino };
        let other = Cred { uid: 0, ..me() };
        assert!(
            ahead.take(&other, id(1), 1, &changes, || {}).is_none(),
            "another user"
        );
        assert!(
            ahead.take(&me(), id(1), 1, &changes, || {}).is_none(),
            "taken"
        );
        assert!(
            ahead.take(&me(), id(2), 2, &changes, || {}).is_none(),
            "another connection"
        );
        // Anything changed: nothing answers.
        fetched(&ahead, "e", b"c", file(3, 1), now, until, &changes);
        changes.elsewhere();
        assert!(ahead.take(&me(), id(3), 1, &changes, || {}).is_none());
        // Nor what was past its time.
        fetched(&ahead, "f", b"g", file(4, 2), now, now, &changes);
        assert!(ahead.take(&me(), id(4), 1, &changes, || {}).is_none());
        // A fresh one does.
        fetched(&ahead, "h", b"i", file(5, 2), now, until, &changes);
        let taken = ahead.take(&me(), id(5), 1, &changes, || {}).expect("held");
        assert_eq!(taken.data, vec![7; 2]);
        assert_eq!(ahead.held(), (0, 0));
    }

    #[test]
    fn an_open_waits_for_its_file_on_the_way_and_not_for_others() {
        let ahead = std::sync::Arc::new(FilesAhead::new());
        let changes = std::sync::Arc::new(Changes::default());
        let dir = RelPath::parse("d").unwrap();
        let batch = ahead
            .wanted(&dir, vec![(b"a".to_vec(), file(1, 3))], None, &changes)
            .remove(0);
        let id = |ino| FileId { dev: 0, ino };
        let mut waited = false;
        assert!(ahead
            .take(&me(), id(2), 1, &changes, || waited = true)
            .is_none());
        assert!(!waited, "not on its way");
        let answering = {
            let (ahead, changes) = (ahead.clone(), changes.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let now = Instant::now();
                let until = now + Duration::from_secs(60);
                let answer = vec![read(b"a", file(1, 3))];
                ahead.answered(&batch, &me(), 1, now, until, answer, &changes);
            })
        };
        let taken = ahead.take(&me(), id(1), 1, &changes, || waited = true);
        assert!(waited);
        assert_eq!(taken.map(|t| t.data), Some(vec![7; 3]));
        answering.join().unwrap();
        // A failed request: the open waits no longer, and opens it itself.
        let batch = ahead
            .wanted(
                &RelPath::parse("e").unwrap(),
                vec![(b"b".to_vec(), file(3, 1))],
                None,
                &changes,
            )
            .remove(0);
        let now = Instant::now();
        ahead.answered(&batch, &me(), 1, now, now, Vec::new(), &changes);
        assert!(ahead.take(&me(), id(3), 1, &changes, || {}).is_none());
        assert_eq!(ahead.held(), (0, 0));
    }

    #[test]
    fn an_answer_to_a_request_made_before_a_change_is_not_kept() {
        let ahead = FilesAhead::new();
        let changes = Changes::default();
        let dir = RelPath::parse("d").unwrap();
        let batch = ahead
            .wanted(&dir, vec![(b"a".to_vec(), file(1, 3))], None, &changes)
            .remove(0);
        changes.begin();
        assert!(
            ahead
                .wanted(
                    &RelPath::parse("e").unwrap(),
                    vec![(b"b".to_vec(), file(2, 1))],
                    None,
                    &changes
                )
                .is_empty(),
            "nothing is asked for while a change is under way"
        );
        changes.end();
        let now = Instant::now();
        let until = now + Duration::from_secs(60);
        ahead.answered(
            &batch,
            &me(),
            1,
            now,
            until,
            vec![read(b"a", file(1, 3))],
            &changes,
        );
        assert_eq!(ahead.held(), (0, 0));
    }

    #[test]
    fn the_bytes_held_and_coming_stay_within_the_cap() {
        let ahead = FilesAhead::new();
        let changes = Changes::default();
        let now = Instant::now();
        let until = now + Duration::from_secs(60);
        let size = LARGEST;
        let per_dir = (HELD_BYTES as u64 / size) as usize;
        let mut ino = 0;
        for d in 0..4 {
            let dir = RelPath::parse(&format!("d{d}")).unwrap();
            let files: Vec<(Vec<u8>, Attr)> = (0..per_dir)
                .map(|i| {
                    ino += 1;
                    (format!("f{i}").into_bytes(), file(ino, size))
                })
                .collect();
            let attrs: HashMap<Vec<u8>, Attr> = files.iter().cloned().collect();
            // Answered as asked, as long as anything is asked.
            loop {
                let batches = ahead.wanted(&dir, files.clone(), None, &changes);
                if batches.is_empty() {
                    break;
                }
                let (bytes, in_flight) = ahead.held();
                assert!(in_flight <= IN_FLIGHT);
                let coming: usize = batches.iter().map(|b| b.expected).sum();
                assert!(bytes + coming <= HELD_BYTES);
                for batch in &batches {
                    let answer = answer_to(batch, &attrs);
                    ahead.answered(batch, &me(), 1, now, until, answer, &changes);
                }
                assert!(ahead.held().0 <= HELD_BYTES);
            }
        }
        assert!(ahead.held().0 <= HELD_BYTES);
        assert!(ahead.held().0 > 0);
    }
}
