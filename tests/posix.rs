//! POSIX calls beyond plain reads and writes, through a real mount: fallocate,
//! copy_file_range, O_APPEND from two clients, O_EXCL, O_TRUNC, files used
//! after unlink, shared writable mappings, and special files. Each result is
//! checked on the server's disk as well as through the mount.

mod common;

use common::{assert_errno, Setup};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in test paths")
}

fn fallocate(file: &File, mode: i32, offset: i64, len: i64) -> std::io::Result<()> {
    // SAFETY: an open descriptor and plain integers.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bytes that differ at every offset a test might get wrong.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
}

fn fallocate_allocates_keeps_size_and_punches_holes() {
    let f = fixture!();
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(f.m("alloc"))
        .unwrap();
    // Mode 0 grows the file and allocates its blocks on the server.
    fallocate(&file, 0, 0, 1 << 20).unwrap();
    let server = fs::metadata(f.e("alloc")).unwrap();
    assert_eq!(server.len(), 1 << 20);
    assert!(server.blocks() * 512 >= 1 << 20, "blocks were allocated");
    assert_eq!(file.metadata().unwrap().len(), 1 << 20);
    assert_eq!(fs::metadata(f.m("alloc")).unwrap().len(), 1 << 20);
    // KEEP_SIZE allocates beyond the end without growing the file.
    fallocate(&file, libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20).unwrap();
    assert_eq!(fs::metadata(f.e("alloc")).unwrap().len(), 1 << 20);
    assert_eq!(fs::metadata(f.m("alloc")).unwrap().len(), 1 << 20);
    // A punched hole reads back as zeros and leaves the rest alone.
    let data = pattern(1 << 20);
    file.write_all_at(&data, 0).unwrap();
    fallocate(
        &file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        4096,
        8192,
    )
    .unwrap();
    let on_server = fs::read(f.e("alloc")).unwrap();
    assert_eq!(&on_server[..4096], &data[..4096]);
    assert!(on_server[4096..12288].iter().all(|&b| b == 0));
    assert_eq!(&on_server[12288..], &data[12288..]);
    let mut through_mount = vec![0u8; 8192];
    file.read_exact_at(&mut through_mount, 4096).unwrap();
    assert!(
        through_mount.iter().all(|&b| b == 0),
        "no stale cached pages"
    );
    // posix_fallocate (glibc calls fallocate mode 0) grows a file.
    // SAFETY: an open descriptor and plain integers.
    assert_eq!(
        unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, 3 << 20) },
        0
    );
    assert_eq!(fs::metadata(f.e("alloc")).unwrap().len(), 3 << 20);
    // Errors reach the application: a read-only descriptor is EBADF.
    let ro = File::open(f.m("alloc")).unwrap();
    assert_errno(fallocate(&ro, 0, 0, 4096), libc::EBADF);
    assert_errno(fallocate(&file, 0, 0, 0), libc::EINVAL);
}

fn copy_file_range(
    from: &File,
    off_in: i64,
    to: &File,
    off_out: i64,
    len: usize,
) -> std::io::Result<usize> {
    let (mut off_in, mut off_out) = (off_in, off_out);
    // SAFETY: open descriptors and valid offset pointers.
    let n = unsafe {
        libc::copy_file_range(
            from.as_raw_fd(),
            &mut off_in,
            to.as_raw_fd(),
            &mut off_out,
            len,
            0,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn copy_file_range_copies_on_the_server() {
    let f = fixture!();
    let data = pattern((3 << 20) + 12345);
    fs::write(f.m("src"), &data).unwrap();
    let src = File::open(f.m("src")).unwrap();
    let dst = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(f.m("dst"))
        .unwrap();
    // The whole file, as `cp` would: short counts are continued.
    let mut done = 0;
    while done < data.len() {
        let n = copy_file_range(&src, done as i64, &dst, done as i64, data.len() - done).unwrap();
        assert!(n > 0, "copy_file_range stopped at {done}");
        done += n;
    }
    assert_eq!(fs::read(f.e("dst")).unwrap(), data);
    assert_eq!(fs::read(f.m("dst")).unwrap(), data);
    // A range into the middle of an existing file, through the mount's cache too.
    let mut head = vec![0u8; 4096];
    dst.read_exact_at(&mut head, 100_000).unwrap();
    assert_eq!(copy_file_range(&src, 0, &dst, 100_000, 5000).unwrap(), 5000);
    let mut expect = data.clone();
    expect[100_000..105_000].copy_from_slice(&data[..5000]);
    assert_eq!(fs::read(f.e("dst")).unwrap(), expect);
    dst.read_exact_at(&mut head, 100_000).unwrap();
    assert_eq!(
        &head[..],
        &data[..4096],
        "the kernel dropped its stale pages"
    );
    // Past the end of the input nothing is copied.
    assert_eq!(
        copy_file_range(&src, data.len() as i64, &dst, 0, 100).unwrap(),
        0
    );
    // Overlapping ranges of one file are refused, as on a local disk.
    let same = OpenOptions::new()
        .read(true)
        .write(true)
        .open(f.m("src"))
        .unwrap();
    assert_errno(copy_file_range(&same, 0, &same, 10, 100), libc::EINVAL);
}

fn o_append_from_two_clients_loses_no_line() {
    // Long attribute caching: each client's idea of the file size is stale
    // almost all the time, so only appends made by the server can be right.
    let setup = Setup {
        attr_timeout: Duration::from_secs(60),
        ..Setup::default()
    };
    let mut f = fixture!(setup.clone());
    let other = f.second_mount("mnt2", setup);
    fs::write(f.m("log"), b"").unwrap();
    const LINES: usize = 300;
    let writers: Vec<_> = [("a", f.m("log")), ("b", other.join("log"))]
        .into_iter()
        .map(|(who, path)| {
            std::thread::spawn(move || {
                let mut file = OpenOptions::new().append(true).open(path).unwrap();
                for i in 0..LINES {
                    // One write per line: each arrives whole at the server.
                    file.write_all(format!("{who}-{i:04}-{}\n", "x".repeat(i % 50)).as_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("a writer failed");
    }
    let text = fs::read_to_string(f.e("log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for who in ["a", "b"] {
        let mine: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with(who))
            .collect();
        for (i, line) in mine.iter().enumerate() {
            let expected = format!("{who}-{i:04}-{}", "x".repeat(i % 50));
            assert_eq!(
                *line, expected,
                "{who}'s line {i}: torn, lost or out of order"
            );
        }
        assert_eq!(mine.len(), LINES, "{who}'s lines");
    }
    assert_eq!(lines.len(), 2 * LINES, "every line is one of theirs");
    // A client that opens the file again sees all of it.
    assert_eq!(fs::read_to_string(other.join("log")).unwrap(), text);
}

fn o_excl_create_fails_on_any_existing_name() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    let excl = |p: &Path| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
    };
    let mut first = excl(&f.m("once")).unwrap();
    first.write_all(b"mine").unwrap();
    assert_errno(excl(&f.m("once")), libc::EEXIST);
    // Another client's O_EXCL create finds it too, even if it never looked.
    assert_errno(excl(&other.join("once")), libc::EEXIST);
    // A directory, a symlink (even a dangling one) and a FIFO are names too.
    fs::create_dir(f.m("dir")).unwrap();
    std::os::unix::fs::symlink("nowhere", f.m("dangling")).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c_path(&f.m("fifo")).as_ptr(), 0o644) },
        0
    );
    for name in ["dir", "dangling", "fifo"] {
        assert_errno(excl(&f.m(name)), libc::EEXIST);
    }
    assert!(!f.e("nowhere").exists(), "O_EXCL never follows a symlink");
    assert_eq!(fs::read(f.e("once")).unwrap(), b"mine");
    assert_eq!(fs::metadata(f.e("once")).unwrap().mode() & 0o777, 0o600);
}

fn o_trunc_empties_the_file_for_every_client() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    fs::write(f.m("t"), b"some old content").unwrap();
    assert_eq!(fs::read(other.join("t")).unwrap(), b"some old content");
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(f.m("t"))
        .unwrap();
    assert_eq!(fs::metadata(f.e("t")).unwrap().len(), 0);
    assert_eq!(file.metadata().unwrap().len(), 0);
    file.write_all(b"new").unwrap();
    drop(file);
    assert_eq!(fs::read(f.e("t")).unwrap(), b"new");
    // The other client re-opens (close-to-open) and must not serve old pages.
    assert_eq!(fs::read(other.join("t")).unwrap(), b"new");
    // Linux truncates on O_RDONLY | O_TRUNC too (the caller needs write permission).
    let _ = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(f.m("t"))
        .unwrap();
    assert_eq!(fs::metadata(f.e("t")).unwrap().len(), 0);
}

fn an_unlinked_file_stays_usable_while_open() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(f.m("scratch"))
        .unwrap();
    file.write_all(b"before").unwrap();
    fs::remove_file(f.m("scratch")).unwrap();
    common::fsync_dir(&f.m(""));
    assert!(!f.e("scratch").exists());
    // A new file under the old name is another file.
    fs::write(f.m("scratch"), b"the new one").unwrap();
    file.write_all(b" and after").unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta.nlink(), 0, "fstat of an unlinked file");
    assert_eq!(meta.len(), 16);
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    file.read_to_string(&mut s).unwrap();
    assert_eq!(s, "before and after");
    file.set_len(6).unwrap();
    file.sync_all().unwrap();
    assert_eq!(file.metadata().unwrap().len(), 6);
    assert_eq!(fs::read(f.m("scratch")).unwrap(), b"the new one");
    assert_eq!(fs::read(other.join("scratch")).unwrap(), b"the new one");
    // A file open for writing that gains a name shows its new link count.
    let mut held = OpenOptions::new().write(true).open(f.m("scratch")).unwrap();
    held.write_all(b"!").unwrap();
    assert_eq!(held.metadata().unwrap().nlink(), 1);
    fs::hard_link(f.m("scratch"), f.m("second-name")).unwrap();
    assert_eq!(held.metadata().unwrap().nlink(), 2);
    fs::remove_file(f.m("second-name")).unwrap();
    assert_eq!(held.metadata().unwrap().nlink(), 1);
    drop(held);
    // Unlinked by another client while open here: still readable here.
    let mut kept = File::open(f.m("scratch")).unwrap();
    fs::remove_file(other.join("scratch")).unwrap();
    let mut s = String::new();
    kept.read_to_string(&mut s).unwrap();
    assert_eq!(s, "!he new one");
}

/// A shared mapping of `len` bytes of `file`.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(file: &File, len: usize, writable: bool) -> Mapping {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping of an open descriptor; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapping {
            ptr: ptr.cast(),
            len,
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes long and lives as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn msync(&self) {
        // SAFETY: the whole mapping.
        let rc = unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) };
        assert_eq!(rc, 0, "msync: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Runs `f` in a child process and fails if it fails. A process must never touch
/// a mapping of a FUSE file while it also serves that mount, as this test process
/// does: a page fault or munmap holds the process's memory map lock while it
/// waits for the FUSE server, whose threads need the same lock to allocate.
fn in_child(what: &str, f: impl FnOnce()) {
    // SAFETY: the child runs `f` and exits without returning into the test
    // harness; glibc keeps malloc usable in the child of a threaded process.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
        // SAFETY: leaves the child at once, running no destructor of the parent's state.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what} failed in the child process (its message is above)"
    );
}

fn shared_writable_mappings_reach_the_server() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    const LEN: usize = 3 * 4096 + 100;
    fs::write(f.m("mapped"), vec![b'.'; LEN]).unwrap();
    let (mounted, on_server) = (f.m("mapped"), f.e("mapped"));
    in_child("writing through a shared mapping", || {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&mounted)
            .unwrap();
        let mut map = Mapping::new(&file, LEN, true);
        map.bytes()[..5].copy_from_slice(b"first");
        map.bytes()[LEN - 4..].copy_from_slice(b"last");
        map.msync();
        let seen = fs::read(&on_server).unwrap();
        assert_eq!(&seen[..5], b"first", "msync wrote the page back");
        assert_eq!(&seen[LEN - 4..], b"last");
        assert_eq!(seen.len(), LEN);
        // munmap and close write back whatever msync did not see.
        map.bytes()[4096..4096 + 6].copy_from_slice(b"second");
    });
    let seen = fs::read(f.e("mapped")).unwrap();
    assert_eq!(&seen[4096..4096 + 6], b"second", "written back on munmap");
    assert_eq!(&seen[..5], b"first");

    // Changed by another client: a new mapping after close-to-open shows it.
    in_child("reading through a mapping", || {
        let file = File::open(&mounted).unwrap();
        let mut map = Mapping::new(&file, LEN, false);
        assert_eq!(&map.bytes()[..5], b"first");
    });
    let theirs = OpenOptions::new()
        .write(true)
        .open(other.join("mapped"))
        .unwrap();
    theirs.write_all_at(b"THEIRS", 0).unwrap();
    drop(theirs);
    in_child("mapping a file another client changed", || {
        let file = File::open(&mounted).unwrap();
        let mut map = Mapping::new(&file, LEN, false);
        assert_eq!(&map.bytes()[..6], b"THEIRS");
        assert_eq!(&map.bytes()[4096..4096 + 6], b"second");
    });
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> std::io::Result<()> {
    // SAFETY: a valid C string.
    if unsafe { libc::mknod(c_path(path).as_ptr(), mode, dev) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn special_files_have_their_types_in_stat_and_readdir() {
    let f = fixture!(Setup {
        allow_devices: true,
        ..Setup::default()
    });
    let as_root = common::is_root();
    mknod(&f.m("fifo"), libc::S_IFIFO | 0o640, 0).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(f.m("socket")).unwrap();
    fs::write(f.m("file"), b"").unwrap();
    mknod(&f.m("empty"), libc::S_IFREG | 0o600, 0).unwrap();
    let mut expected = vec![
        ("fifo", libc::S_IFIFO),
        ("socket", libc::S_IFSOCK),
        ("file", libc::S_IFREG),
        ("empty", libc::S_IFREG),
    ];
    let null = libc::makedev(1, 3);
    let loop0 = libc::makedev(7, 0);
    if as_root {
        // Root on the mount is root on the server in these tests, and this
        // server allows devices, so device nodes can be made (the mount is
        // nodev: they cannot be opened through it).
        mknod(&f.m("chr"), libc::S_IFCHR | 0o600, null).unwrap();
        mknod(&f.m("blk"), libc::S_IFBLK | 0o600, loop0).unwrap();
        expected.push(("chr", libc::S_IFCHR));
        expected.push(("blk", libc::S_IFBLK));
    } else {
        assert_errno(mknod(&f.m("chr"), libc::S_IFCHR | 0o600, null), libc::EPERM);
    }
    let listed: std::collections::HashMap<String, fs::FileType> = fs::read_dir(&f.mnt)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), e.file_type().unwrap()))
        .collect();
    for (name, kind) in expected {
        let mode = fs::symlink_metadata(f.m(name)).unwrap().mode();
        assert_eq!(mode & libc::S_IFMT, kind, "stat type of {name}");
        assert_eq!(
            fs::symlink_metadata(f.e(name)).unwrap().mode() & libc::S_IFMT,
            kind,
            "{name} on the server"
        );
        let t = listed[name];
        let listed_kind = if t.is_fifo() {
            libc::S_IFIFO
        } else if t.is_socket() {
            libc::S_IFSOCK
        } else if t.is_char_device() {
            libc::S_IFCHR
        } else if t.is_block_device() {
            libc::S_IFBLK
        } else if t.is_file() {
            libc::S_IFREG
        } else {
            0
        };
        assert_eq!(listed_kind, kind, "readdir type of {name}");
    }
    assert_eq!(
        fs::symlink_metadata(f.m("fifo")).unwrap().mode() & 0o777,
        0o640
    );
    if as_root {
        let rdev = fs::symlink_metadata(f.m("chr")).unwrap().rdev();
        assert_eq!(rdev, null, "device numbers survive the trip");
        assert_eq!(fs::symlink_metadata(f.m("blk")).unwrap().rdev(), loop0);
        // nodev: the device cannot be opened through the mount.
        assert_errno(File::open(f.m("chr")), libc::EACCES);
    }
    // A FIFO in the mount is a FIFO of the mount's machine: two processes here
    // talk through it without reaching the server.
    let fifo = f.m("fifo");
    let writer = std::thread::spawn(move || {
        let mut w = OpenOptions::new().write(true).open(fifo).unwrap();
        w.write_all(b"through the pipe").unwrap();
    });
    let mut got = String::new();
    File::open(f.m("fifo"))
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    writer.join().unwrap();
    assert_eq!(got, "through the pipe");
}

fn a_write_by_another_user_clears_the_set_id_bits() {
    if !common::require_root() {
        return;
    }
    let f = fixture!(Setup {
        allow_other: true,
        ..Setup::default()
    });
    // nobody must be able to reach the mount's parent directories
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(f.temp(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&f.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    // Changes reach the server by the next fsync at the latest (write-behind).
    let settle = |name: &str| File::open(f.m(name)).unwrap().sync_all().unwrap();
    for name in ["prog", "other"] {
        fs::write(f.m(name), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(f.m(name), fs::Permissions::from_mode(0o6777)).unwrap();
        settle(name);
        assert_eq!(fs::metadata(f.e(name)).unwrap().mode() & 0o7777, 0o6777);
    }
    let as_nobody = |script: &str, file: &Path| {
        let file = file.to_str().expect("a UTF-8 test path");
        let (ok, err) = common::as_nobody(&["sh", "-c", script, "sh", file]);
        assert!(ok, "{err}");
    };
    // Appending (uncached writes) and writing in place (through the page cache).
    as_nobody("echo 'echo changed' >> \"$1\"", &f.m("prog"));
    as_nobody(
        "printf X | dd of=\"$1\" conv=notrunc status=none",
        &f.m("other"),
    );
    assert_eq!(fs::read(f.e("prog")).unwrap(), b"#!/bin/sh\necho changed\n");
    assert_eq!(fs::read(f.e("other")).unwrap(), b"X!/bin/sh\n");
    for name in ["prog", "other"] {
        settle(name);
        assert_eq!(
            fs::metadata(f.e(name)).unwrap().mode() & 0o7777,
            0o777,
            "setuid and setgid of {name} are gone on the server"
        );
        assert_eq!(fs::metadata(f.m(name)).unwrap().mode() & 0o7777, 0o777);
    }
}

tests! {
    fallocate_allocates_keeps_size_and_punches_holes => [Fuse],
    copy_file_range_copies_on_the_server => [Fuse],
    o_append_from_two_clients_loses_no_line => [Fuse],
    o_excl_create_fails_on_any_existing_name => [Fuse],
    o_trunc_empties_the_file_for_every_client => [Fuse],
    an_unlinked_file_stays_usable_while_open => [Fuse],
    shared_writable_mappings_reach_the_server => [Fuse],
    special_files_have_their_types_in_stat_and_readdir => [Fuse],
    a_write_by_another_user_clears_the_set_id_bits => [Fuse, Root],
}
