//! Paths longer than one system call takes: every operation works at 8 KiB and
//! 32 KiB, and confinement holds at every component of a long path — a symlink
//! anywhere in it, or swapped in for a directory while the server walks it,
//! never leads outside.

use super::tests::{assert_every_op_fails, fixture, outside_world, p, Fixture};
use super::*;
use ferry_common::path::MAX_PATH;
use ferry_common::FileKind;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Long enough that a few make a path of kilobytes, short enough to leave room.
const NAME_LEN: usize = 200;

fn component(i: usize) -> String {
    format!("{i:03}{}", "d".repeat(NAME_LEN - 3))
}

fn join(path: &RelPath, name: &str) -> RelPath {
    path.join(OsStr::new(name)).unwrap()
}

/// Makes `base` and directories below it through the export until the path is
/// at least `total` bytes long; answers every directory made below `base`,
/// deepest last.
fn dig(export: &ExportRoot, base: &RelPath, total: usize) -> Vec<RelPath> {
    export.mkdir(base, 0o755).unwrap();
    let mut made = Vec::new();
    let mut path = base.clone();
    while path.as_bytes().len() < total {
        path = join(&path, &component(made.len()));
        export.mkdir(&path, 0o755).unwrap();
        made.push(path.clone());
    }
    made
}

/// The directory `rel` below `root` opened component by component with plain
/// `openat` (what the test believes, independent of the export's walk).
fn local_dir(root: &Path, rel: &RelPath) -> OwnedFd {
    let mut dir = sys::open(
        &sys::cstring(root.as_os_str().as_bytes()).unwrap(),
        libc::O_PATH | libc::O_DIRECTORY,
    )
    .unwrap();
    if rel.is_root() {
        return dir;
    }
    for name in rel.as_bytes().split(|b| *b == b'/') {
        let name = sys::cstring(name).unwrap();
        // SAFETY: a valid C string; the descriptor returned is owned below.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        assert!(fd >= 0, "openat {rel:?}: {}", Errno::last());
        // SAFETY: a new descriptor nothing else owns.
        dir = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    }
    dir
}

/// `lstat` of `rel` below `root`, walked locally; `None` when it does not exist.
fn local_stat(root: &Path, rel: &RelPath) -> Option<libc::stat> {
    let (parent, name) = rel.split_last().unwrap();
    let dir = local_dir(root, &parent);
    sys::fstatat(dir.as_fd(), &sys::cstring_os(name).unwrap()).ok()
}

fn names(export: &ExportRoot, dir: &RelPath) -> Vec<Vec<u8>> {
    let (entries, more) = export.read_dir(dir, 0, 1000).unwrap();
    assert!(!more);
    let mut names: Vec<_> = entries.into_iter().map(|e| e.name).collect();
    names.sort();
    names
}

fn exercise_every_operation_at(fx: &Fixture, total: usize) {
    let export = &fx.export;
    let root = fx.export_dir();
    let chain = dig(export, &p(&format!("t{total}")), total);
    let deep = chain.last().unwrap().clone();
    assert!(deep.as_bytes().len() >= total && deep.as_bytes().len() < total + NAME_LEN + 1);
    assert!(deep.pieces(PIECE).len() > total / PATH_MAX);

    // create, write, stat, read back.
    let file = join(&deep, "file");
    let (f, attr) = export
        .create(&file, libc::O_RDWR | libc::O_EXCL, 0o640)
        .unwrap();
    assert_eq!((attr.kind, attr.perm), (FileKind::File, 0o640));
    assert_eq!(f.write_at(0, b"deep data").unwrap(), 9);
    drop(f);
    let attr = export.stat(&file).unwrap();
    assert_eq!(attr.size, 9);
    let local = local_stat(&root, &file).expect("the file exists on disk");
    assert_eq!(attr.ino, local.st_ino as u64, "the very file, seen locally");
    let (f, _) = export.open_file(&file, libc::O_RDONLY).unwrap();
    assert_eq!(f.read_at(0, 100).unwrap(), b"deep data");

    // readdir of the deepest directory and of one halfway down.
    export.mkdir(&join(&deep, "sub"), 0o755).unwrap();
    export.symlink(&join(&deep, "link"), b"file").unwrap();
    export.link(&file, &join(&deep, "hard")).unwrap();
    export
        .mknod(&join(&deep, "fifo"), libc::S_IFIFO | 0o600, 0)
        .unwrap();
    assert_eq!(
        names(export, &deep),
        [&b"fifo"[..], b"file", b"hard", b"link", b"sub"]
    );
    let half = &chain[chain.len() / 2];
    assert_eq!(
        names(export, half),
        [component(chain.len() / 2 + 1).into_bytes()]
    );
    assert_eq!(export.read_link(&join(&deep, "link")).unwrap(), b"file");

    // Attributes and extended attributes.
    let changes = AttrChanges {
        mode: Some(0o600),
        size: Some(4),
        ..AttrChanges::default()
    };
    let attr = export
        .set_attr(&file, &changes, SetIdBits::AsAsked)
        .unwrap();
    assert_eq!((attr.perm, attr.size), (0o600, 4));
    export.set_xattr(&file, b"user.deep", b"yes", 0).unwrap();
    assert_eq!(export.get_xattr(&file, b"user.deep").unwrap(), b"yes");

    // rename: within the deep directory, out to the root and back, and a
    // directory halfway up, which moves everything below it.
    let renamed = join(&deep, "renamed");
    export.rename(&file, &renamed, 0).unwrap();
    assert_eq!(export.stat(&file), Err(Errno::ENOENT));
    let top = p(&format!("top{total}"));
    export.rename(&renamed, &top, 0).unwrap();
    assert_eq!(export.stat(&top).unwrap().size, 4);
    export.rename(&top, &file, 0).unwrap();
    let mid = &chain[chain.len() / 2];
    let moved_mid = join(&mid.split_last().unwrap().0, "moved");
    export.rename(mid, &moved_mid, 0).unwrap();
    let moved_file = file.rebase(mid, &moved_mid).unwrap();
    assert_eq!(export.stat(&moved_file).unwrap().size, 4);
    assert_eq!(export.stat(&file), Err(Errno::ENOENT));
    export.rename(&moved_mid, mid, 0).unwrap();
    assert!(local_stat(&root, &file).is_some());

    // unlink and rmdir, all the way up.
    for name in ["file", "hard", "link", "fifo"] {
        export.unlink(&join(&deep, name)).unwrap();
    }
    export.rmdir(&join(&deep, "sub")).unwrap();
    assert_eq!(local_stat(&root, &file).map(|s| s.st_ino), None);
    assert!(names(export, &deep).is_empty());
    for dir in chain.iter().rev() {
        export.rmdir(dir).unwrap();
    }
    assert_eq!(
        export.stat(&p(&format!("t{total}"))).unwrap().kind,
        FileKind::Directory
    );
    assert!(fs::read_dir(root.join(format!("t{total}")))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn every_operation_works_at_8_and_32_kib() {
    let fx = fixture();
    let before = outside_world(&fx);
    exercise_every_operation_at(&fx, 8 * 1024);
    exercise_every_operation_at(&fx, 32 * 1024);
    assert_eq!(outside_world(&fx), before);
}

#[test]
fn a_path_over_the_wire_limit_is_refused() {
    let fx = fixture();
    let mut path = RelPath::root();
    while path.as_bytes().len() + 256 <= MAX_PATH {
        path = join(&path, &"x".repeat(255));
    }
    // Valid, and simply not there.
    assert_eq!(fx.export.stat(&path), Err(Errno::ENOENT));
    let mut bytes = path.as_bytes().to_vec();
    bytes.extend_from_slice(b"/");
    bytes.extend_from_slice("y".repeat(255).as_bytes());
    let over = super::tests::raw(&bytes);
    assert_eq!(fx.export.stat(&over), Err(Errno::ENAMETOOLONG));
}

#[test]
fn a_symlink_at_any_component_of_a_long_path_is_never_followed() {
    let fx = fixture();
    let export = &fx.export;
    let outside = fx.tmp.path().join("outside");
    let before = outside_world(&fx);
    // About 12 KiB: three pieces, so the symlinks below sit in each piece and
    // on both sides of each boundary.
    let chain = dig(export, &p("long"), 12 * 1024);
    let mut tried = 0;
    for (depth, dir) in chain.iter().enumerate() {
        // One absolute symlink and one that climbs exactly out of the export.
        let climb = "../".repeat(depth + 2) + "outside";
        let abs = join(dir, "abs");
        let up = join(dir, "up");
        export
            .symlink(&abs, outside.as_os_str().as_bytes())
            .unwrap();
        export.symlink(&up, climb.as_bytes()).unwrap();
        for link in [&abs, &up] {
            for tail in ["secret", "dir", "new", "dir/new"] {
                let mut path = link.clone();
                for name in tail.split('/') {
                    path = join(&path, name);
                }
                assert_every_op_fails(export, &path);
                tried += 1;
            }
        }
    }
    assert!(tried >= 4 * 2 * 60);
    assert_eq!(outside_world(&fx), before);
}

/// Swaps `a` and `b` in the directory `dir` (`RENAME_EXCHANGE`).
fn exchange(dir: BorrowedFd<'_>, a: &CString, b: &CString) {
    // SAFETY: valid C strings; renameat2 takes plain integers otherwise.
    unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            dir.as_raw_fd(),
            a.as_ptr(),
            dir.as_raw_fd(),
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
}

/// While another thread keeps swapping the directory `chain[k]` of a long path
/// with a symlink to a decoy of its subtree outside the export, operations on
/// the long path act inside the export or fail; the decoy never changes. `k`
/// is given relative to the piece boundary: `pick(b)` where `b` is the index of
/// the last directory of the first piece.
fn swapped_mid_walk(pick: impl Fn(usize) -> usize) {
    let fx = fixture();
    let export = &fx.export;
    let outside = fx.tmp.path().join("outside");
    let chain = dig(export, &p("long"), 5000);
    let boundary = chain
        .iter()
        .rposition(|d| d.as_bytes().len() <= PIECE)
        .unwrap();
    let mid = chain[pick(boundary)].clone();
    let (mid_parent, mid_name) = mid.split_last().unwrap();
    // Below `mid`: a 200-byte name, then `file`; the same in the decoy.
    let tail_name = "t".repeat(NAME_LEN);
    let tail = join(&mid, &tail_name);
    export.mkdir(&tail, 0o755).unwrap();
    let file = join(&tail, "file");
    assert!(file.as_bytes().len() > PIECE, "a long path");
    drop(export.create(&file, libc::O_RDWR, 0o644).unwrap());
    fs::create_dir(outside.join(&tail_name)).unwrap();
    fs::write(outside.join(&tail_name).join("file"), "decoy").unwrap();
    let decoy = join(&mid_parent, "decoy");
    export
        .symlink(&decoy, outside.as_os_str().as_bytes())
        .unwrap();
    let before = outside_world(&fx);

    let parent_fd = local_dir(&fx.export_dir(), &mid_parent);
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let racer = {
        let stop = stop.clone();
        let swaps = swaps.clone();
        let a = sys::cstring_os(mid_name).unwrap();
        let b = c"decoy".to_owned();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                exchange(parent_fd.as_fd(), &a, &b);
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (mut inside, mut refused) = (0, 0);
    let changes = AttrChanges {
        mode: Some(0o777),
        size: Some(0),
        ..AttrChanges::default()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut i = 0;
    while Instant::now() < deadline {
        i += 1;
        let new = join(&tail, &format!("new{i}"));
        let renamed = join(&tail, "renamed");
        let outcomes = [
            // The decoy has 5 bytes, the file inside none.
            export
                .stat(&file)
                .map(|a| assert_eq!(a.size, 0, "the decoy was reached")),
            export
                .set_attr(&file, &changes, SetIdBits::AsAsked)
                .map(drop),
            export.create(&new, libc::O_RDWR, 0o644).map(drop),
            export
                .open_file(&file, libc::O_WRONLY | libc::O_TRUNC)
                .map(drop),
            export.rename(&new, &renamed, 0),
            export.unlink(&renamed),
            export.mkdir(&new, 0o755).map(drop),
            export.rmdir(&new),
            export.read_dir(&tail, 0, 10).map(drop),
        ];
        for outcome in outcomes {
            match outcome {
                Ok(()) => inside += 1,
                Err(_) => refused += 1,
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 100, "the race ran");
    assert!(
        inside > 0 && refused > 0,
        "{inside} inside, {refused} refused"
    );
    assert_eq!(outside_world(&fx), before, "nothing outside changed");
}

#[test]
fn a_directory_swapped_for_a_symlink_at_a_piece_boundary_leads_nowhere() {
    // The directory the first piece ends on, and the first the next one names.
    swapped_mid_walk(|boundary| boundary);
    swapped_mid_walk(|boundary| boundary + 1);
}

#[test]
fn a_directory_swapped_for_a_symlink_inside_a_piece_leads_nowhere() {
    swapped_mid_walk(|boundary| boundary + 3);
}
