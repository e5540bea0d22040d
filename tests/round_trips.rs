//! Round trips saved, seen through a real mount: a small file read with its
//! open, listings in one reply and fetched ahead for a walk — and what this
//! mount writes is read back at once all the same.

mod common;

use common::{run, Fixture};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// `tar c | md5sum` of `tree` under `root`, as a walk reads it.
fn tar_md5(root: &Path, tree: &str) -> String {
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && tar --sort=name --mtime=@0 --owner=0 --group=0 -cf - '{tree}' | md5sum",
        root.display()
    )))
}

/// A tarball of `what` in `source`, in the fixture's temporary directory.
fn tar_of(fx: &Fixture, source: &Path, what: &str) -> std::path::PathBuf {
    let tarball = fx.temp().join("tree.tar");
    run(Command::new("tar")
        .arg("cf")
        .arg(&tarball)
        .arg("-C")
        .arg(source)
        .arg(what));
    tarball
}

/// How many requests of kind `op` the mount has waited for.
fn waited(fx: &Fixture, op: &str) -> u64 {
    fx.stats()
        .waited_by_kind()
        .iter()
        .find(|(name, _)| *name == op)
        .map_or(0, |(_, n)| *n)
}

/// Every path below `dir`, relative to it, sorted, with each file's size.
fn walk(dir: &Path) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).expect("a listing") {
            let entry = entry.expect("an entry");
            let meta = entry.metadata().expect("its attributes");
            let rel = entry
                .path()
                .strip_prefix(dir)
                .unwrap()
                .display()
                .to_string();
            if meta.is_dir() {
                todo.push(entry.path());
                found.push((rel, 0));
            } else {
                found.push((rel, meta.len()));
            }
        }
    }
    found.sort();
    found
}

fn a_small_file_is_read_with_its_open() {
    let Some(fx) = Fixture::new() else { return };
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    fs::write(fx.e("small"), &data).unwrap();
    // The server's news of the file made on it first: arriving after the
    // open, it would rightly void the bytes the open brought (the mount
    // cannot tell it from a change made since), and a read would follow.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(fx.m("small").exists());
    let reads = waited(&fx, "read");
    assert_eq!(fs::read(fx.m("small")).unwrap(), data);
    assert_eq!(waited(&fx, "openread"), 1);
    assert_eq!(waited(&fx, "read"), reads, "no read asked of the server");
    // A large file: its start with the open, the rest by reads, all of it right.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(fx.e("big"), &big).unwrap();
    assert_eq!(fs::read(fx.m("big")).unwrap(), big);
}

fn a_reader_opened_before_a_write_here_reads_the_write() {
    let Some(fx) = Fixture::new() else { return };
    fs::write(fx.e("f"), b"0123456789abcdef").unwrap();
    let mut reader = File::open(fx.m("f")).unwrap();
    let writer = OpenOptions::new().write(true).open(fx.m("f")).unwrap();
    // Part of a page: the kernel asks the mount for the rest of it.
    writer.write_all_at(b"XYZ", 5).unwrap();
    drop(writer);
    let mut seen = Vec::new();
    reader.read_to_end(&mut seen).unwrap();
    assert_eq!(seen, b"01234XYZ89abcdef");
    // And a truncation through another descriptor.
    let mut reader = File::open(fx.m("f")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(fx.m("f"))
        .unwrap()
        .set_len(4)
        .unwrap();
    let mut seen = Vec::new();
    reader.read_to_end(&mut seen).unwrap();
    assert_eq!(seen, b"0123");
}

fn a_walk_sees_the_whole_tree_and_what_this_mount_changes() {
    let Some(fx) = Fixture::new() else { return };
    for d in 0..6 {
        for s in 0..4 {
            let dir = fx.e(&format!("tree/d{d}/s{s}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..5 {
                fs::write(dir.join(format!("f{f}")), vec![b'x'; f]).unwrap();
            }
        }
    }
    // A directory far longer than a page of the old paged listing.
    fs::create_dir(fx.e("tree/many")).unwrap();
    for i in 0..5000 {
        fs::write(fx.e(&format!("tree/many/n{i}")), b"").unwrap();
    }
    let expected = walk(&fx.e("tree"));
    assert_eq!(walk(&fx.m("tree")), expected);
    // Walked again at once (the listings fetched ahead the first time may be
    // used now): a file made and one removed here show at once.
    fs::write(fx.m("tree/d3/s2/new"), b"new!").unwrap();
    fs::remove_file(fx.m("tree/d4/s1/f0")).unwrap();
    let mut now = expected.clone();
    now.push(("d3/s2/new".into(), 4));
    now.retain(|(p, _)| p != "d4/s1/f0");
    now.sort();
    assert_eq!(walk(&fx.m("tree")), now);
    common::fsync_dir(&fx.m("tree/d4/s1"));
    assert_eq!(walk(&fx.e("tree")), now);
}

fn tar_of_a_tree_reads_every_file_right_and_few_opens_wait() {
    let Some(fx) = Fixture::new() else { return };
    let mut files = 0u64;
    for d in 0..4 {
        let dir = fx.e(&format!("tree/d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..40usize {
            // Empty, small, and a few above what is fetched ahead (128 KiB).
            let len = match f % 10 {
                0 => 0,
                9 => 200_000 + f,
                _ => f * 331 + d,
            };
            let data: Vec<u8> = (0..len).map(|i| ((i * 7 + f + d) % 251) as u8).collect();
            fs::write(dir.join(format!("f{f:02}")), data).unwrap();
            files += 1;
        }
    }
    // The server's news of the files made on it first.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let local = tar_md5(&fx.e(""), "tree");
    let opens = waited(&fx, "openread") + waited(&fx, "open");
    assert_eq!(tar_md5(&fx.m(""), "tree"), local);
    let waited_opens = waited(&fx, "openread") + waited(&fx, "open") - opens;
    // One per directory (the one that sets the fetching off) and one per
    // large file, give or take a few that arrive while it is on its way.
    assert!(
        waited_opens < files / 3,
        "{waited_opens} of {files} opens waited for"
    );
    // Changed on the server between two walks: read new.
    fs::write(fx.e("tree/d2/f03"), b"changed on the server").unwrap();
    fs::write(fx.e("tree/d1/f05"), vec![9u8; 5000]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let local = tar_md5(&fx.e(""), "tree");
    assert_eq!(tar_md5(&fx.m(""), "tree"), local);
    assert_eq!(
        fs::read(fx.m("tree/d2/f03")).unwrap(),
        b"changed on the server"
    );
}

/// fsync(2) of directory `dir` on the mount: what was removed in it behind
/// has reached the server, and a failure is reported.
fn try_fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn an_untarred_tree_removed_by_rm_lands_exactly_on_the_server() {
    let Some(fx) = Fixture::new() else { return };
    // A tarball made outside the mount, extracted into a directory made on it
    // (so this mount knows its every name, under the lease).
    let source = fx.temp().join("source");
    for d in 0..3 {
        for s in 0..3 {
            let dir = source.join(format!("d{d}/s{s}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..6 {
                fs::write(dir.join(format!("f{f}")), vec![b'a' + f as u8; f * 100]).unwrap();
            }
        }
    }
    let tarball = tar_of(&fx, &source, ".");
    fs::create_dir(fx.m("tree")).unwrap();
    run(Command::new("tar")
        .arg("xf")
        .arg(&tarball)
        .arg("-C")
        .arg(fx.m("tree")));
    let expected = walk(&source);
    assert_eq!(walk(&fx.m("tree")), expected);
    assert_eq!(walk(&fx.e("tree")), expected);
    for (rel, _) in expected.iter().filter(|(_, size)| *size > 0) {
        assert_eq!(
            fs::read(fx.e(&format!("tree/{rel}"))).unwrap(),
            fs::read(source.join(rel)).unwrap(),
            "{rel}"
        );
    }
    // rm -rf: every unlink and rmdir below the tree is answered at once.
    let unlinks = waited(&fx, "unlink");
    let rmdirs = waited(&fx, "rmdir");
    let stats = waited(&fx, "stat");
    run(Command::new("rm").arg("-rf").arg(fx.m("tree")));
    assert_eq!(waited(&fx, "unlink"), unlinks, "no unlink waited for");
    // Nor the kernel's permission checks between them (a directory's
    // attributes are projected past the removals until the server answers).
    assert_eq!(waited(&fx, "stat"), stats, "no stat waited for");
    assert!(
        waited(&fx, "rmdir") <= rmdirs + 1,
        "at most the top directory's rmdir waited for (the root's names may not be leased)"
    );
    assert!(!fx.m("tree").exists());
    // The server applies them in order: once the last is answered, all are.
    common::fsync_dir(&fx.m(""));
    assert!(!fx.e("tree").exists(), "removed on the server");
}

fn a_removal_the_server_refuses_is_reported_by_fsync_of_its_directory() {
    let Some(fx) = Fixture::new() else { return };
    fs::create_dir(fx.m("d")).unwrap();
    fs::write(fx.m("d/f"), b"keep").unwrap();
    fs::write(fx.m("d/g"), b"go").unwrap();
    // Both were created behind: on the server's disk, with their contents,
    // before anything is done to them there.
    for name in ["d/f", "d/g"] {
        File::open(fx.m(name)).unwrap().sync_all().unwrap();
    }
    // Made immutable on the server's disk: its unlink fails there, which
    // nothing on this machine can foresee.
    let immutable = fx.e("d/f");
    run(Command::new("chattr").arg("+i").arg(&immutable));
    struct Mutable(std::path::PathBuf);
    impl Drop for Mutable {
        fn drop(&mut self) {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        }
    }
    let _mutable = Mutable(immutable);
    std::thread::sleep(std::time::Duration::from_millis(100));
    fs::remove_file(fx.m("d/f")).expect("answered before the server refuses");
    fs::remove_file(fx.m("d/g")).unwrap();
    let failed = try_fsync_dir(&fx.m("d")).expect_err("the refusal, reported");
    assert_eq!(failed.raw_os_error(), Some(libc::EPERM), "{failed}");
    try_fsync_dir(&fx.m("d")).expect("reported once");
    // The file is still there, on the server and seen through the mount.
    assert_eq!(fs::read(fx.m("d/f")).unwrap(), b"keep");
    assert!(!fx.e("d/g").exists());
}

/// Untar into a directory made on the mount: every file is created without
/// waiting (see `core::create_behind`), and the tree lands exactly.
fn an_untarred_tree_lands_exactly_and_no_create_waits() {
    let Some(fx) = Fixture::new() else { return };
    let source = fx.temp().join("source");
    for d in 0..3 {
        let dir = source.join(format!("tree/d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..20 {
            let file = dir.join(format!("f{f}"));
            fs::write(&file, vec![b'a' + (f % 26) as u8; f * 333]).unwrap();
            let mode = if f % 3 == 0 { 0o755 } else { 0o640 };
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let tarball = tar_of(&fx, &source, "tree");
    fs::create_dir(fx.m("x")).unwrap();
    let creates = waited(&fx, "create") + waited(&fx, "createas");
    run(Command::new("tar")
        .arg("xpf")
        .arg(&tarball)
        .arg("-C")
        .arg(fx.m("x")));
    assert_eq!(
        waited(&fx, "create") + waited(&fx, "createas"),
        creates,
        "no create waited for"
    );
    assert!(fx
        .stats()
        .sent_by_kind()
        .iter()
        .any(|(name, n)| *name == "createas" && *n >= 60));
    common::fsync_dir(&fx.m("x"));
    let expected = tar_md5(&source, "tree");
    assert_eq!(
        tar_md5(&fx.m("x"), "tree"),
        expected,
        "seen through the mount"
    );
    assert_eq!(tar_md5(&fx.e("x"), "tree"), expected, "on the server");
    assert_eq!(walk(&fx.e("x/tree")), walk(&source.join("tree")));
}

/// A thousand exclusive creates of empty files, none waited for.
fn a_thousand_exclusive_creates_land_without_waiting() {
    let Some(fx) = Fixture::new() else { return };
    fs::create_dir(fx.m("many")).unwrap();
    let creates = waited(&fx, "create") + waited(&fx, "createas");
    for i in 0..1000 {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(fx.m(&format!("many/f{i}")))
            .unwrap();
        drop(f);
    }
    assert_eq!(
        waited(&fx, "create") + waited(&fx, "createas"),
        creates,
        "no create waited for"
    );
    // O_EXCL of a name made behind fails at once.
    let again = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(fx.m("many/f7"))
        .expect_err("exists");
    assert_eq!(again.raw_os_error(), Some(libc::EEXIST));
    common::fsync_dir(&fx.m("many"));
    assert_eq!(fs::read_dir(fx.e("many")).unwrap().count(), 1000);
    assert_eq!(fs::read_dir(fx.m("many")).unwrap().count(), 1000);
    let meta = fs::metadata(fx.m("many/f999")).unwrap();
    let on_server = fs::metadata(fx.e("many/f999")).unwrap();
    assert_eq!(
        (meta.len(), meta.mode(), meta.uid(), meta.gid()),
        (0, on_server.mode(), on_server.uid(), on_server.gid())
    );
}

tests! {
    an_untarred_tree_lands_exactly_and_no_create_waits => [Fuse],
    a_thousand_exclusive_creates_land_without_waiting => [Fuse],
    an_untarred_tree_removed_by_rm_lands_exactly_on_the_server => [Fuse],
    a_removal_the_server_refuses_is_reported_by_fsync_of_its_directory => [Fuse, Root],
    a_small_file_is_read_with_its_open => [Fuse],
    a_reader_opened_before_a_write_here_reads_the_write => [Fuse],
    a_walk_sees_the_whole_tree_and_what_this_mount_changes => [Fuse],
    tar_of_a_tree_reads_every_file_right_and_few_opens_wait => [Fuse],
}
