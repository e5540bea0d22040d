//! Trees deeper than one system call's path (`PATH_MAX`, 4096 bytes) work as on
//! a local disk: a program reaches them relative to a directory it holds open,
//! and the kernel hands the mount one name at a time. Create, stat, rename,
//! readdir and unlink at 8 KiB and 32 KiB below the mount, checked against the
//! server's disk; and `ferry ls|get|put` with remote paths that long.

mod common;

use ferry_fusefs::cli;
use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Long enough that a few make kilobytes, short enough to leave room.
const NAME_LEN: usize = 200;

fn component(i: usize) -> CString {
    CString::new(format!("{i:03}{}", "d".repeat(NAME_LEN - 3))).unwrap()
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open_dir(path: &Path) -> OwnedFd {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string; the descriptor is owned below.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) }).unwrap();
    // SAFETY: a new descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn openat(dir: &OwnedFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: a valid C string; the descriptor is owned below.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstatat(dir: &OwnedFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid C string and out-pointer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded and filled it.
    Ok(unsafe { st.assume_init() })
}

fn renameat(from_dir: &OwnedFd, from: &CStr, to_dir: &OwnedFd, to: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
        )
    })
    .map(drop)
}

fn unlinkat(dir: &OwnedFd, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: a valid C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

fn write_all(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: the pointer and length describe `data`.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize, "{}", io::Error::last_os_error());
}

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: the pointer and length describe `buf`.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(n >= 0, "{}", io::Error::last_os_error());
    buf.truncate(n as usize);
    buf
}

/// The names in the directory `dir` (a descriptor opened for reading), sorted,
/// without `.` and `..`.
fn list(dir: &OwnedFd) -> Vec<Vec<u8>> {
    // fdopendir takes the descriptor it is given: hand it a duplicate.
    // SAFETY: a descriptor `dir` keeps open.
    let dup = cvt(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) }).unwrap();
    // SAFETY: `dup` is ours; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(dup) };
    assert!(!stream.is_null());
    // SAFETY: the stream is open; rewinding makes the listing start afresh.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    loop {
        // SAFETY: the stream is open; the entry is valid until the next call.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    // SAFETY: the stream is open and closed once.
    unsafe { libc::closedir(stream) };
    names.sort();
    names
}

/// Descends from `top` through directories named by [`component`], making them
/// with `mkdirat` when `make`, until the path below `top` is at least `total`
/// bytes long; answers the descriptors of every directory on the way (`top`
/// first) and the length reached.
fn descend(top: OwnedFd, total: usize, make: bool) -> (Vec<OwnedFd>, usize) {
    let mut dirs = vec![top];
    let mut len = 0;
    while len < total {
        let name = component(dirs.len() - 1);
        let parent = dirs.last().unwrap();
        if make {
            // SAFETY: a valid C string.
            cvt(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) }).unwrap();
        }
        let next = openat(parent, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        len += usize::from(len > 0) + name.as_bytes().len();
        dirs.push(next);
    }
    (dirs, len)
}

fn deep_tree_at(f: &common::Fixture, total: usize) {
    let base = format!("t{total}");
    fs::create_dir(f.m(&base)).unwrap();
    let (dirs, len) = descend(open_dir(&f.m(&base)), total, true);
    assert!(len >= total);
    let deep = dirs.last().unwrap();

    // create and write, then stat.
    let file = openat(
        deep,
        c"file",
        libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
        0o640,
    )
    .unwrap();
    write_all(&file, b"at the bottom");
    drop(file);
    let st = fstatat(deep, c"file").unwrap();
    assert_eq!((st.st_size, st.st_mode & 0o7777), (13, 0o640));
    let file = openat(deep, c"file", libc::O_RDONLY, 0).unwrap();
    assert_eq!(read_all(&file), b"at the bottom");
    drop(file);

    // The server's disk, walked on its own: the same file, the same bytes.
    let (server_dirs, _) = descend(open_dir(&f.e(&base)), total, false);
    let server_deep = server_dirs.last().unwrap();
    let on_disk = openat(server_deep, c"file", libc::O_RDONLY, 0).unwrap();
    assert_eq!(read_all(&on_disk), b"at the bottom");

    // readdir, at the bottom and halfway.
    // SAFETY: a valid C string.
    cvt(unsafe { libc::mkdirat(deep.as_raw_fd(), c"sub".as_ptr(), 0o755) }).unwrap();
    assert_eq!(list(deep), [b"file".to_vec(), b"sub".to_vec()]);
    let half = dirs.len() / 2;
    assert_eq!(list(&dirs[half]), [component(half).as_bytes().to_vec()]);

    // rename: within the deep directory, up to the mount's root and back.
    renameat(deep, c"file", deep, c"renamed").unwrap();
    assert_eq!(
        fstatat(deep, c"file").unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    let root = open_dir(&f.m(""));
    let up = CString::new(format!("up{total}")).unwrap();
    renameat(deep, c"renamed", &root, &up).unwrap();
    assert_eq!(
        fs::read(f.e(&format!("up{total}"))).unwrap(),
        b"at the bottom"
    );
    renameat(&root, &up, deep, c"file").unwrap();
    assert_eq!(fstatat(deep, c"file").unwrap().st_size, 13);
    assert!(fstatat(server_deep, c"file").is_ok());
    // A directory halfway down changes its name: everything below moves along.
    renameat(
        &dirs[half - 1],
        &component(half - 1),
        &dirs[half - 1],
        c"moved",
    )
    .unwrap();
    assert_eq!(fstatat(deep, c"file").unwrap().st_size, 13);
    renameat(
        &dirs[half - 1],
        c"moved",
        &dirs[half - 1],
        &component(half - 1),
    )
    .unwrap();

    // unlink and rmdir, all the way up. In a directory this mount made they
    // are sent behind: fsync of the directory is what says they have landed.
    unlinkat(deep, c"file", 0).unwrap();
    unlinkat(deep, c"sub", libc::AT_REMOVEDIR).unwrap();
    assert!(list(deep).is_empty());
    fsync_dir(deep);
    assert!(list(server_deep).is_empty());
    for (i, dir) in dirs.iter().enumerate().rev().skip(1) {
        unlinkat(dir, &component(i), libc::AT_REMOVEDIR).unwrap();
    }
    fsync_dir(&dirs[0]);
    assert!(fs::read_dir(f.e(&base)).unwrap().next().is_none());
}

/// fsync(2) of a directory on the mount, which must succeed.
fn fsync_dir(dir: &OwnedFd) {
    // SAFETY: a descriptor `dir` keeps open.
    cvt(unsafe { libc::fsync(dir.as_raw_fd()) }).unwrap();
}

fn deep_trees_work_through_the_mount() {
    let f = fixture!();
    deep_tree_at(&f, 8 * 1024);
    deep_tree_at(&f, 32 * 1024);
}

/// A tree the server has and the mount has never seen: the kernel looks every
/// name up on the way down.
fn a_deep_tree_made_on_the_server_is_found_through_the_mount() {
    let f = fixture!();
    fs::create_dir(f.e("srv")).unwrap();
    let (dirs, _) = descend(open_dir(&f.e("srv")), 32 * 1024, true);
    let file = openat(
        dirs.last().unwrap(),
        c"made-there",
        libc::O_CREAT | libc::O_WRONLY,
        0o644,
    )
    .unwrap();
    write_all(&file, b"server side");
    drop(file);
    let (mount_dirs, _) = descend(open_dir(&f.m("srv")), 32 * 1024, false);
    let deep = mount_dirs.last().unwrap();
    assert_eq!(list(deep), [b"made-there".to_vec()]);
    let file = openat(deep, c"made-there", libc::O_RDONLY, 0).unwrap();
    assert_eq!(read_all(&file), b"server side");
}

/// `ferry ls|get|put` with remote paths of 32 KiB.
fn the_plain_client_takes_long_remote_paths() {
    let export = tempfile::tempdir().unwrap();
    let server = ferry_server::spawn_test_server(export.path(), false).unwrap();
    let addr = server.addr().to_string();
    let tls = server.tls().expect("a TLS server");
    let options = ferry_fusefs::client::ConnectOptions::pinned(
        tls.fingerprint(),
        Some(tls.token(None).cloned().expect("a token")),
    );
    let (dirs, _) = descend(open_dir(export.path()), 32 * 1024, true);
    let remote: Vec<String> = (0..dirs.len() - 1)
        .map(|i| component(i).into_string().unwrap())
        .collect();
    let remote = remote.join("/");
    assert!(remote.len() >= 32 * 1024);

    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("up.txt");
    fs::write(&source, b"uploaded deep").unwrap();
    let put = cli::put(&addr, &options, &source, Some(&remote)).unwrap();
    assert_eq!(put.as_os_str(), OsStr::new(&format!("{remote}/up.txt")));
    let deep = dirs.last().unwrap();
    assert_eq!(
        read_all(&openat(deep, c"up.txt", libc::O_RDONLY, 0).unwrap()),
        b"uploaded deep"
    );

    let mut out = Vec::new();
    cli::ls(&addr, &options, &remote, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.trim_end().ends_with(" up.txt"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");

    let fetched = cli::get(
        &addr,
        &options,
        &format!("{remote}/up.txt"),
        Some(&local.path().join("down.txt")),
    )
    .unwrap();
    assert_eq!(fs::read(fetched).unwrap(), b"uploaded deep");
}

tests! {
    deep_trees_work_through_the_mount => [Fuse],
    a_deep_tree_made_on_the_server_is_found_through_the_mount => [Fuse],
    the_plain_client_takes_long_remote_paths => [],
}
