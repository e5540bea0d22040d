//! The attacks of issue 9 on privilege, made through a real mount by root on
//! the client, against a server running as root with its defaults (root
//! squashed, no device nodes). Each must fail, and the proof is taken on the
//! server's disk: a program copied in is run there as `nobody` and its
//! effective uid read. A user of the mount must still be able to do everything
//! with what it owns. (The same attacks as raw protocol messages, with any
//! credential a hand-made client may claim: `server/tests/privilege.rs`.)

mod common;

use common::{as_nobody, assert_errno, Setup};
use ferry_server::Squash;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

const NOBODY: u32 = 65_534;

/// A mount whose server squashes root, where root on the client may create in
/// the export's top directory (mode 1777, as /tmp), and `nobody` can reach
/// everything on both sides.
fn squashing() -> Option<common::Fixture> {
    let f = common::Fixture::with(Setup {
        squash: Squash::Root,
        allow_other: true,
        ..Setup::default()
    })?;
    fs::set_permissions(f.temp(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&f.export, fs::Permissions::from_mode(0o1777)).unwrap();
    Some(f)
}

macro_rules! squashing {
    () => {
        match squashing() {
            Some(f) => f,
            None => return,
        }
    };
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn setxattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let name = CString::new(name).unwrap();
    // SAFETY: valid C strings; the pointer and length describe `value`.
    let r = unsafe {
        libc::setxattr(
            c_path(path).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> std::io::Result<()> {
    // SAFETY: a valid C string.
    if unsafe { libc::mknod(c_path(path).as_ptr(), mode, dev) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `security.capability` granting `cap_setuid+ep` (struct vfs_cap_data,
/// revision 2).
fn cap_setuid() -> Vec<u8> {
    const REVISION_2: u32 = 0x0200_0000;
    const EFFECTIVE: u32 = 1;
    const CAP_SETUID: u32 = 7;
    [REVISION_2 | EFFECTIVE, 1 << CAP_SETUID, 0, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_le_bytes())
        .collect()
}

/// What `program -u` (id) prints when run as `nobody` on the server.
fn euid_when_nobody_runs(program: &Path) -> String {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program)
        .arg("-u")
        .output()
        .expect("run setpriv (util-linux)");
    assert!(
        out.status.success(),
        "{}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn root_on_the_mount_cannot_make_a_setuid_root_program() {
    let f = squashing!();
    // cp /usr/bin/id mnt/x; chmod 4755 mnt/x
    fs::copy("/usr/bin/id", f.m("x")).unwrap();
    fs::set_permissions(f.m("x"), fs::Permissions::from_mode(0o4755)).unwrap();
    let made = fs::metadata(f.e("x")).unwrap();
    assert_eq!(
        (made.uid(), made.gid(), made.mode() & 0o7777),
        (NOBODY, NOBODY, 0o755),
        "the copy is nobody's, without set-id bits"
    );
    assert_eq!(mode(&f.m("x")), 0o755, "and the mount says so");
    // chown root:root mnt/x, chmod 6755: a squashed root is not root.
    assert_errno(chown(f.m("x"), Some(0), Some(0)), libc::EPERM);
    fs::set_permissions(f.m("x"), fs::Permissions::from_mode(0o6755)).unwrap();
    assert_eq!(mode(&f.e("x")), 0o755);
    // Nor can it touch root's own program.
    fs::copy("/usr/bin/id", f.e("rootid")).unwrap();
    fs::set_permissions(f.e("rootid"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_errno(
        fs::set_permissions(f.m("rootid"), fs::Permissions::from_mode(0o4755)),
        libc::EPERM,
    );
    assert_eq!(mode(&f.e("rootid")), 0o755);
    // Run by nobody on the server, the copy is nobody.
    assert_eq!(euid_when_nobody_runs(&f.e("x")), NOBODY.to_string());
    assert_eq!(euid_when_nobody_runs(&f.e("rootid")), NOBODY.to_string());
}

fn root_on_the_mount_cannot_give_programs_capabilities() {
    let f = squashing!();
    fs::copy("/usr/bin/perl", f.m("perl")).unwrap();
    for file in ["perl", "mine"] {
        if file == "mine" {
            fs::copy("/usr/bin/perl", f.e("mine")).unwrap();
        }
        assert_errno(
            setxattr(&f.m(file), "security.capability", &cap_setuid()),
            libc::EPERM,
        );
        assert_errno(setxattr(&f.m(file), "trusted.note", b"x"), libc::EPERM);
        for name in ["security.capability", "trusted.note"] {
            let name = CString::new(name).unwrap();
            // SAFETY: valid C strings, no buffer (a size query).
            let size = unsafe {
                libc::lgetxattr(
                    c_path(&f.e(file)).as_ptr(),
                    name.as_ptr(),
                    std::ptr::null_mut(),
                    0,
                )
            };
            assert_eq!(size, -1, "{file} has {name:?} on the server");
        }
    }
    // The copy of perl, run by nobody, cannot make itself root.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(f.e("perl"))
        .args(["-e", "$< = 0; $> = 0; print $>"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), NOBODY.to_string());
}

fn device_nodes_cannot_be_made_through_the_mount() {
    let f = squashing!();
    let disk = libc::makedev(254, 0);
    let hwrng = libc::makedev(10, 183);
    assert_errno(
        mknod(&f.m("disk"), libc::S_IFBLK | 0o666, disk),
        libc::EPERM,
    );
    assert_errno(
        mknod(&f.m("hwrng"), libc::S_IFCHR | 0o666, hwrng),
        libc::EPERM,
    );
    assert!(fs::symlink_metadata(f.e("disk")).is_err());
    assert!(fs::symlink_metadata(f.e("hwrng")).is_err());
    // Nor when root on the mount is root on the server, unless the operator
    // allows devices (tests/posix.rs makes them with --allow-devices).
    let trusting = match common::Fixture::with(Setup {
        squash: Squash::None,
        ..Setup::default()
    }) {
        Some(f) => f,
        None => return,
    };
    assert_errno(
        mknod(&trusting.m("disk"), libc::S_IFBLK | 0o666, disk),
        libc::EPERM,
    );
    // A FIFO is no device.
    mknod(&f.m("fifo"), libc::S_IFIFO | 0o644, 0).unwrap();
}

fn root_on_the_mount_reaches_only_what_nobody_may() {
    let f = squashing!();
    fs::write(f.e("secret"), "root only").unwrap();
    fs::set_permissions(f.e("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(f.e("private")).unwrap();
    fs::set_permissions(f.e("private"), fs::Permissions::from_mode(0o700)).unwrap();
    // The client's kernel lets root through; the server does not.
    assert_errno(fs::read(f.m("secret")), libc::EACCES);
    assert_errno(fs::write(f.m("secret"), "mine now"), libc::EACCES);
    assert_errno(fs::write(f.m("private/x"), ""), libc::EACCES);
    assert_errno(fs::remove_file(f.m("secret")), libc::EPERM);
    assert_eq!(fs::read(f.e("secret")).unwrap(), b"root only");
    // What it makes is nobody's.
    fs::create_dir(f.m("d")).unwrap();
    fs::write(f.m("d/f"), "x").unwrap();
    std::os::unix::fs::symlink("f", f.m("d/l")).unwrap();
    for rel in ["d", "d/f", "d/l"] {
        let m = fs::symlink_metadata(f.e(rel)).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{rel}");
    }
}

fn a_user_of_the_mount_does_everything_with_what_it_owns() {
    let f = squashing!();
    fs::create_dir(f.e("home")).unwrap();
    chown(f.e("home"), Some(NOBODY), Some(NOBODY)).unwrap();
    let home = f.m("home");
    let script = format!(
        "set -e; cd {}; mkdir d; echo hello > d/f; chmod 600 d/f; cat d/f >/dev/null; \
         chmod 4700 d/f; test \"$(stat -c %a d/f)\" = 4700; mv d/f d/g; ln -s g d/l; ln d/g d/h; touch -d 2020-01-01 d/g; \
         truncate -s 2 d/g; mkfifo d/p; echo more >> d/g; ls -l d >/dev/null",
        home.display()
    );
    let (ok, err) = as_nobody(&["sh", "-c", &script]);
    assert!(ok, "{err}");
    let g = fs::metadata(f.e("home/d/g")).unwrap();
    assert_eq!((g.uid(), g.gid()), (NOBODY, NOBODY));
    assert_eq!(fs::read(f.e("home/d/g")).unwrap(), b"hemore\n");
    // Its own set-user-id bit was its own to set (and a write dropped it, as
    // on a local disk).
    assert_eq!(g.mode() & 0o7777, 0o700);
    let cleanup = format!("set -e; cd {}; rm d/l d/h d/p d/g; rmdir d", home.display());
    let (ok, err) = as_nobody(&["sh", "-c", &cleanup]);
    assert!(ok, "{err}");
    assert_eq!(fs::read_dir(f.e("home")).unwrap().count(), 0);
}

tests! {
    root_on_the_mount_cannot_make_a_setuid_root_program => [Fuse, Root],
    root_on_the_mount_cannot_give_programs_capabilities => [Fuse, Root],
    device_nodes_cannot_be_made_through_the_mount => [Fuse, Root],
    root_on_the_mount_reaches_only_what_nobody_may => [Fuse, Root],
    a_user_of_the_mount_does_everything_with_what_it_owns => [Fuse, Root],
}
