//! Extended attributes through the mount: values, listings, the size protocol
//! (ERANGE), each errno, and agreement with the server's own filesystem.

mod common;

use common::{assert_errno, run};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn cn(name: &str) -> CString {
    CString::new(name).unwrap()
}

fn check(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn set(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: valid C strings and a slice.
    let r = unsafe {
        libc::lsetxattr(
            c(p).as_ptr(),
            cn(name).as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    check(r as isize).map(|_| ())
}

/// `lgetxattr` with a buffer of `size` bytes (0: ask for the size).
fn get_sized(p: &Path, name: &str, size: usize) -> io::Result<(usize, Vec<u8>)> {
    let mut buf = vec![0u8; size];
    // SAFETY: valid C strings; pointer and length describe `buf`.
    let n = check(unsafe {
        libc::lgetxattr(
            c(p).as_ptr(),
            cn(name).as_ptr(),
            if size == 0 {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            size,
        )
    })?;
    buf.truncate(n.min(size));
    Ok((n, buf))
}

fn get(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    get_sized(p, name, 65536).map(|(_, v)| v)
}

fn list_sized(p: &Path, size: usize) -> io::Result<(usize, Vec<u8>)> {
    let mut buf = vec![0u8; size];
    // SAFETY: as above.
    let n = check(unsafe {
        libc::llistxattr(
            c(p).as_ptr(),
            if size == 0 {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            size,
        )
    })?;
    buf.truncate(n.min(size));
    Ok((n, buf))
}

fn names(p: &Path) -> Vec<String> {
    let (_, list) = list_sized(p, 65536).unwrap();
    let mut v: Vec<String> = list
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    v.sort();
    v
}

fn remove(p: &Path, name: &str) -> io::Result<()> {
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(c(p).as_ptr(), cn(name).as_ptr()) } as isize).map(|_| ())
}

fn set_get_list_remove_and_the_server_agrees() {
    let f = fixture!();
    let file = f.m("file");
    fs::write(&file, b"x").unwrap();
    set(&file, "user.colour", b"blue", 0).unwrap();
    set(&file, "user.empty", b"", 0).unwrap();
    assert_eq!(get(&file, "user.colour").unwrap(), b"blue");
    assert_eq!(get(&file, "user.empty").unwrap(), b"");
    // Stored on the server's disk, and set there is seen here.
    assert_eq!(get(&f.e("file"), "user.colour").unwrap(), b"blue");
    set(&f.e("file"), "user.from-server", b"hi", 0).unwrap();
    assert_eq!(get(&file, "user.from-server").unwrap(), b"hi");
    assert_eq!(
        names(&file),
        ["user.colour", "user.empty", "user.from-server"]
    );
    // Replace a value, then remove it.
    set(&file, "user.colour", b"a much longer value", 0).unwrap();
    assert_eq!(get(&file, "user.colour").unwrap(), b"a much longer value");
    remove(&file, "user.colour").unwrap();
    assert_errno(get(&file, "user.colour"), libc::ENODATA);
    assert_errno(get(&f.e("file"), "user.colour"), libc::ENODATA);
    assert_errno(remove(&file, "user.colour"), libc::ENODATA);
    assert_eq!(names(&file), ["user.empty", "user.from-server"]);
    // Directories and the root carry attributes too.
    fs::create_dir(f.m("dir")).unwrap();
    set(&f.m("dir"), "user.d", b"1", 0).unwrap();
    assert_eq!(get(&f.e("dir"), "user.d").unwrap(), b"1");
    set(&f.mnt, "user.root", b"r", 0).unwrap();
    assert_eq!(get(&f.export, "user.root").unwrap(), b"r");
}

fn the_size_protocol_and_erange() {
    let f = fixture!();
    let file = f.m("file");
    fs::write(&file, b"x").unwrap();
    let value = vec![b'v'; 1000];
    set(&file, "user.big", &value, 0).unwrap();
    set(&file, "user.second", b"2", 0).unwrap();
    // Size 0 asks for the size.
    assert_eq!(get_sized(&file, "user.big", 0).unwrap().0, 1000);
    assert_errno(get_sized(&file, "user.big", 999), libc::ERANGE);
    assert_eq!(get_sized(&file, "user.big", 1000).unwrap().1, value);
    let (len, _) = list_sized(&file, 0).unwrap();
    assert_eq!(len, "user.big\0user.second\0".len());
    assert_errno(list_sized(&file, len - 1), libc::ERANGE);
    assert_eq!(list_sized(&file, len).unwrap().0, len);
    // Nothing at all: an empty list.
    fs::write(f.m("bare"), b"").unwrap();
    assert_eq!(list_sized(&f.m("bare"), 0).unwrap().0, 0);
}

fn create_and_replace_flags() {
    let f = fixture!();
    let file = f.m("file");
    fs::write(&file, b"x").unwrap();
    assert_errno(
        set(&file, "user.a", b"1", libc::XATTR_REPLACE),
        libc::ENODATA,
    );
    set(&file, "user.a", b"1", libc::XATTR_CREATE).unwrap();
    assert_errno(set(&file, "user.a", b"2", libc::XATTR_CREATE), libc::EEXIST);
    set(&file, "user.a", b"3", libc::XATTR_REPLACE).unwrap();
    assert_eq!(get(&file, "user.a").unwrap(), b"3");
}

fn errors_match_the_servers_filesystem() {
    let f = fixture!();
    fs::write(f.m("file"), b"x").unwrap();
    fs::write(f.e("local"), b"x").unwrap();
    // Beyond XATTR_SIZE_MAX: E2BIG.
    assert_errno(
        set(&f.m("file"), "user.huge", &vec![0u8; 65537], 0),
        libc::E2BIG,
    );
    // A name longer than 255 bytes: ERANGE.
    let long = format!("user.{}", "n".repeat(300));
    assert_errno(set(&f.m("file"), &long, b"1", 0), libc::ERANGE);
    // Whatever the server's filesystem says about a value too large for it
    // (ENOSPC or E2BIG on ext4, success where values may be large) reaches the
    // application unchanged.
    for size in [8000usize, 65536] {
        let value = vec![1u8; size];
        let here = set(&f.m("file"), "user.large", &value, 0).map_err(|e| e.raw_os_error());
        let there = set(&f.e("local"), "user.large", &value, 0).map_err(|e| e.raw_os_error());
        assert_eq!(here, there, "a {size}-byte value");
    }
    // A missing file.
    assert_errno(get(&f.m("absent"), "user.a"), libc::ENOENT);
    // user.* on a symlink is refused by Linux itself, here as on the server.
    std::os::unix::fs::symlink("file", f.m("link")).unwrap();
    std::os::unix::fs::symlink("local", f.e("local-link")).unwrap();
    let here = set(&f.m("link"), "user.a", b"1", 0).map_err(|e| e.raw_os_error());
    let there = set(&f.e("local-link"), "user.a", b"1", 0).map_err(|e| e.raw_os_error());
    assert_eq!(here, there);
    assert!(here.is_err());
    assert_errno(get(&f.m("link"), "user.a"), libc::ENODATA);
    // And the link's target is untouched.
    assert_errno(get(&f.m("file"), "user.a"), libc::ENODATA);
}

fn fifos_are_never_opened() {
    let f = fixture!();
    run(Command::new("mkfifo").arg(f.m("fifo")));
    // Reading attributes of a FIFO must not block on it (nobody writes).
    assert_errno(get(&f.m("fifo"), "user.a"), libc::ENODATA);
    assert_eq!(list_sized(&f.m("fifo"), 0).unwrap().0, 0);
    let here = set(&f.m("fifo"), "user.a", b"1", 0).map_err(|e| e.raw_os_error());
    run(Command::new("mkfifo").arg(f.e("local-fifo")));
    let there = set(&f.e("local-fifo"), "user.a", b"1", 0).map_err(|e| e.raw_os_error());
    assert_eq!(here, there);
}

fn acls_are_not_supported() {
    let f = fixture!();
    fs::write(f.m("file"), b"x").unwrap();
    assert_errno(
        set(&f.m("file"), "system.posix_acl_access", b"\x02\0\0\0", 0),
        libc::EOPNOTSUPP,
    );
    assert_errno(
        get(&f.m("file"), "system.posix_acl_access"),
        libc::EOPNOTSUPP,
    );
}

fn trusted_namespace_as_root() {
    let f = fixture!();
    if !common::require_root() {
        return;
    }
    fs::write(f.m("file"), b"x").unwrap();
    set(&f.m("file"), "trusted.t", b"secret", 0).unwrap();
    assert_eq!(get(&f.e("file"), "trusted.t").unwrap(), b"secret");
    assert_eq!(names(&f.m("file")), ["trusted.t"]);
}

fn cp_preserves_xattrs_through_the_mount() {
    let f = fixture!();
    let src = f.temp().join("src");
    fs::write(&src, b"data").unwrap();
    set(&src, "user.kept", b"yes", 0).unwrap();
    run(Command::new("cp")
        .arg("--preserve=xattr")
        .arg(&src)
        .arg(f.m("copy")));
    assert_eq!(get(&f.e("copy"), "user.kept").unwrap(), b"yes");
}

fn selinux_labels_are_not_supported_through_the_mount() {
    let f = fixture!();
    fs::write(f.m("file"), b"x").unwrap();
    assert_errno(get(&f.m("file"), "security.selinux"), libc::EOPNOTSUPP);
    assert_errno(
        set(
            &f.m("file"),
            "security.selinux",
            b"system_u:object_r:x:s0",
            0,
        ),
        libc::EOPNOTSUPP,
    );
    // Other security.* names still pass through.
    set(&f.m("file"), "user.kept", b"1", 0).unwrap();
    assert!(!names(&f.m("file")).iter().any(|n| n == "security.selinux"));
}

tests! {
    set_get_list_remove_and_the_server_agrees => [Fuse],
    the_size_protocol_and_erange => [Fuse],
    create_and_replace_flags => [Fuse],
    errors_match_the_servers_filesystem => [Fuse],
    fifos_are_never_opened => [Fuse],
    acls_are_not_supported => [Fuse],
    trusted_namespace_as_root => [Fuse, Root],
    cp_preserves_xattrs_through_the_mount => [Fuse],
    selinux_labels_are_not_supported_through_the_mount => [Fuse],
}
