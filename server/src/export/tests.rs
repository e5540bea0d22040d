//! The export on a real temporary directory: confinement first, then the operations.

use super::*;
use ferry_common::frame;
use ferry_common::proto::{AttrChanges, SetTime, LISTED_ENTRY_OVERHEAD};
use ferry_common::{FileKind, Timestamp};
use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use tempfile::TempDir;

pub(super) struct Fixture {
    pub(super) tmp: TempDir,
    pub(super) export: ExportRoot,
}

impl Fixture {
    pub(super) fn export_dir(&self) -> PathBuf {
        self.tmp.path().join("export")
    }
}

/// `export/` with escape hatches, beside an `outside/` that must stay untouched:
///
/// ```text
/// export/file            "hello"
/// export/inner/file      "inner"
/// export/inner/up     -> ../..
/// export/up           -> ..
/// export/root         -> /
/// export/out          -> ../outside
/// export/abs          -> /etc
/// outside/secret         "top secret", mode 0600
/// outside/dir/
/// ```
pub(super) fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    let outside = tmp.path().join("outside");
    fs::create_dir(&export).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::create_dir(outside.join("dir")).unwrap();
    fs::write(outside.join("secret"), "top secret").unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(export.join("file"), "hello").unwrap();
    fs::create_dir(export.join("inner")).unwrap();
    fs::write(export.join("inner/file"), "inner").unwrap();
    symlink("../..", export.join("inner/up")).unwrap();
    symlink("..", export.join("up")).unwrap();
    symlink("/", export.join("root")).unwrap();
    symlink("../outside", export.join("out")).unwrap();
    symlink("/etc", export.join("abs")).unwrap();
    let root = ExportRoot::open(&export).unwrap();
    Fixture { tmp, export: root }
}

pub(super) fn p(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

/// A `RelPath` holding any bytes at all, as a hostile peer could send it: serde
/// decoding does not run the path checks.
pub(super) fn raw(bytes: &[u8]) -> RelPath {
    let encoded = frame::encode(&bytes.to_vec()).unwrap();
    let path: RelPath = frame::decode(&encoded[4..]).unwrap();
    assert_eq!(path.as_bytes(), bytes);
    path
}

/// Everything observable about a tree: per path, kind, mode, owner, size,
/// mtime, ctime and file contents.
type Observed = (u32, u32, u32, u64, i64, i64, i64, i64, Vec<u8>);

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Observed> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let md = fs::symlink_metadata(&path).unwrap();
        let content = if md.is_file() {
            fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        if md.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
        out.insert(
            path,
            (
                md.mode(),
                md.uid(),
                md.gid(),
                md.size(),
                md.mtime(),
                md.mtime_nsec(),
                md.ctime(),
                md.ctime_nsec(),
                content,
            ),
        );
    }
    out
}

/// What lies outside the export and must not change: the sibling `outside/`, the
/// temp dir's own listing, and a few system files the symlinks point at.
pub(super) fn outside_world(fx: &Fixture) -> Vec<String> {
    let mut seen = vec![format!("{:?}", snapshot(&fx.tmp.path().join("outside")))];
    let mut names: Vec<_> = fs::read_dir(fx.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    seen.push(format!("{names:?}"));
    for sys in ["/etc/passwd", "/etc", "/"] {
        let md = fs::symlink_metadata(sys).unwrap();
        seen.push(format!(
            "{sys} {} {} {} {} {} {}",
            md.mode(),
            md.uid(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime_nsec()
        ));
    }
    seen
}

fn all_changes() -> Vec<AttrChanges> {
    vec![
        AttrChanges {
            mode: Some(0o777),
            ..AttrChanges::default()
        },
        AttrChanges {
            size: Some(0),
            ..AttrChanges::default()
        },
        AttrChanges {
            uid: Some(4321),
            gid: Some(4321),
            ..AttrChanges::default()
        },
        AttrChanges {
            atime: Some(SetTime::At(Timestamp { secs: 1, nanos: 0 })),
            mtime: Some(SetTime::Now),
            ..AttrChanges::default()
        },
    ]
}

/// Runs every operation that names `path` (in each of its roles) and asserts
/// that all of them fail.
pub(super) fn assert_every_op_fails(export: &ExportRoot, path: &RelPath) {
    let file = p("file");
    let what = format!("{path:?}");
    assert!(export.stat(path).is_err(), "stat {what}");
    assert!(export.read_dir(path, 0, 100).is_err(), "readdir {what}");
    assert!(export.open_dir_stream(path).is_err(), "list {what}");
    assert!(export.read_link(path).is_err(), "readlink {what}");
    for flags in [
        libc::O_RDONLY,
        libc::O_RDWR | libc::O_TRUNC,
        libc::O_WRONLY | libc::O_CREAT,
    ] {
        assert!(
            export.open_file(path, flags).is_err(),
            "open {what} {flags:o}"
        );
    }
    for flags in [
        libc::O_RDWR,
        libc::O_RDWR | libc::O_EXCL,
        libc::O_WRONLY | libc::O_TRUNC,
    ] {
        assert!(
            export.create(path, flags, 0o666).is_err(),
            "create {what} {flags:o}"
        );
    }
    assert!(export.mkdir(path, 0o777).is_err(), "mkdir {what}");
    assert!(
        export.mknod(path, libc::S_IFIFO | 0o666, 0).is_err(),
        "mknod {what}"
    );
    assert!(
        export.mknod(path, libc::S_IFREG | 0o666, 0).is_err(),
        "mknod {what}"
    );
    assert!(
        export.symlink(path, b"/etc/passwd").is_err(),
        "symlink {what}"
    );
    assert!(export.unlink(path).is_err(), "unlink {what}");
    assert!(export.rmdir(path).is_err(), "rmdir {what}");
    assert!(
        export.rename(path, &p("moved"), 0).is_err(),
        "rename from {what}"
    );
    assert!(export.rename(&file, path, 0).is_err(), "rename to {what}");
    assert!(
        export.rename(&file, path, libc::RENAME_EXCHANGE).is_err(),
        "exchange {what}"
    );
    assert!(export.link(path, &p("linked")).is_err(), "link from {what}");
    assert!(export.link(&file, path).is_err(), "link to {what}");
    for changes in all_changes() {
        assert!(
            export.set_attr(path, &changes, SetIdBits::AsAsked).is_err(),
            "setattr {what} {changes:?}"
        );
    }
}

const ESCAPES: &[&str] = &[
    "up/outside/secret",
    "up/outside/dir",
    "up/outside/new",
    "up/outside/dir/new",
    "inner/up/outside/secret",
    "inner/up/outside/new",
    "root/etc/passwd",
    "root/etc",
    "root/tmp/ferry-escape",
    "out/secret",
    "out/dir",
    "out/new",
    "abs/passwd",
    "abs/ferry-escape",
];

#[test]
fn symlinks_in_any_component_are_never_followed() {
    let fx = fixture();
    let before = outside_world(&fx);
    for escape in ESCAPES {
        assert_every_op_fails(&fx.export, &p(escape));
    }
    assert_eq!(outside_world(&fx), before);
    assert!(fs::read_dir(fx.export_dir()).unwrap().all(|e| {
        let name = e.unwrap().file_name();
        name != "moved" && name != "linked"
    }));
}

#[test]
fn a_subtree_is_confined_as_firmly_as_the_export() {
    let fx = fixture();
    let before = outside_world(&fx);
    let inner = fx.export.subtree(&p("inner")).unwrap();
    assert_eq!(inner.path(), fx.export_dir().join("inner"));
    // Its root is `inner`, and paths are relative to it.
    assert_eq!(
        inner.root_attr().unwrap(),
        fx.export.stat(&p("inner")).unwrap()
    );
    assert_eq!(inner.stat(&p("file")).unwrap().size, 5);
    let names: Vec<_> = inner.read_dir(&RelPath::root(), 0, 100).unwrap().0;
    let mut names: Vec<_> = names.into_iter().map(|e| e.name).collect();
    names.sort();
    assert_eq!(names, [b"file".to_vec(), b"up".to_vec()]);
    // Nothing beside or above it: not the export's other files, not outside.
    for escape in ["up/file", "up/outside/secret", "up/up/outside/new"] {
        assert_every_op_fails(&inner, &p(escape));
    }
    for hostile in [
        &b".."[..],
        b"../file",
        b"../../outside/secret",
        b"/etc/passwd",
    ] {
        assert_every_op_fails(&inner, &raw(hostile));
    }
    assert_eq!(fs::read(fx.export_dir().join("file")).unwrap(), b"hello");
    assert_eq!(outside_world(&fx), before);
    // A subtree of a subtree, and what cannot be one.
    fs::create_dir(fx.export_dir().join("inner/deeper")).unwrap();
    let deeper = inner.subtree(&p("deeper")).unwrap();
    assert!(deeper
        .read_dir(&RelPath::root(), 0, 10)
        .unwrap()
        .0
        .is_empty());
    assert_eq!(fx.export.subtree(&p("file")).unwrap_err(), Errno::ENOTDIR);
    assert_eq!(fx.export.subtree(&p("absent")).unwrap_err(), Errno::ENOENT);
    for through_a_symlink in ["up", "out", "abs", "inner/up", "up/outside"] {
        assert!(
            fx.export.subtree(&p(through_a_symlink)).is_err(),
            "{through_a_symlink}"
        );
    }
    assert!(fx.export.subtree(&raw(b"..")).is_err());
    assert!(fx.export.subtree(&raw(b"inner/../..")).is_err());
}

#[test]
fn hostile_wire_paths_are_refused() {
    let fx = fixture();
    let before = outside_world(&fx);
    let hostile: &[&[u8]] = &[
        b"..",
        b"../outside/secret",
        b"../outside/new",
        b"inner/../../outside/secret",
        b"inner/../..",
        b"/etc/passwd",
        b"/tmp/ferry-escape",
        b"/",
        b".",
        b"./file",
        b"file/",
        b"inner//file",
        b"file\0/../../outside/secret",
        b"\0",
        b"inner/./file",
    ];
    for bytes in hostile {
        let path = raw(bytes);
        assert_eq!(path.validate().err(), Some(Errno::EINVAL), "{path:?}");
        assert_every_op_fails(&fx.export, &path);
        assert_eq!(fx.export.stat(&path), Err(Errno::EINVAL));
    }
    let long = raw(&vec![b'x'; 300]);
    assert_eq!(fx.export.stat(&long), Err(Errno::ENAMETOOLONG));
    assert_eq!(outside_world(&fx), before);
}

#[test]
fn a_symlink_as_the_last_name_is_the_link_itself() {
    let fx = fixture();
    let before = outside_world(&fx);
    let export = &fx.export;
    for name in ["up", "root", "out", "abs"] {
        let path = p(name);
        assert_eq!(export.stat(&path).unwrap().kind, FileKind::Symlink);
        assert!(export.open_file(&path, libc::O_RDONLY).is_err());
        assert!(export
            .open_file(&path, libc::O_RDWR | libc::O_TRUNC)
            .is_err());
        assert!(export.create(&path, libc::O_RDWR, 0o666).is_err());
        assert!(export.read_dir(&path, 0, 10).is_err());
        let chmod = AttrChanges {
            mode: Some(0o777),
            ..AttrChanges::default()
        };
        assert_eq!(
            export.set_attr(&path, &chmod, SetIdBits::AsAsked),
            Err(Errno::ENOTSUP)
        );
        let truncate = AttrChanges {
            size: Some(0),
            ..AttrChanges::default()
        };
        assert_eq!(
            export.set_attr(&path, &truncate, SetIdBits::AsAsked),
            Err(Errno::EINVAL)
        );
        // Owner and times change on the link, not on what it points at.
        let times = AttrChanges {
            atime: Some(SetTime::At(Timestamp { secs: 7, nanos: 0 })),
            mtime: Some(SetTime::At(Timestamp { secs: 7, nanos: 0 })),
            uid: Some(4321),
            ..AttrChanges::default()
        };
        let attr = export.set_attr(&path, &times, SetIdBits::AsAsked).unwrap();
        assert_eq!(
            (attr.kind, attr.mtime.secs, attr.uid),
            (FileKind::Symlink, 7, 4321)
        );
        // A hard link to a symlink is another symlink.
        let linked = p(&format!("{name}-link"));
        assert_eq!(export.link(&path, &linked).unwrap().kind, FileKind::Symlink);
        assert!(export.open_file(&linked, libc::O_RDONLY).is_err());
    }
    assert_eq!(export.read_link(&p("abs")).unwrap(), b"/etc");
    export.rename(&p("out"), &p("out2"), 0).unwrap();
    export.unlink(&p("out2")).unwrap();
    assert_eq!(outside_world(&fx), before);
}

#[test]
fn a_symlink_created_through_the_export_is_stored_not_followed() {
    let fx = fixture();
    let before = outside_world(&fx);
    let export = &fx.export;
    let attr = export.symlink(&p("evil"), b"../outside/secret").unwrap();
    assert_eq!(attr.kind, FileKind::Symlink);
    assert_eq!(attr.size, b"../outside/secret".len() as u64);
    assert_eq!(export.read_link(&p("evil")).unwrap(), b"../outside/secret");
    assert_eq!(
        export.open_file(&p("evil"), libc::O_RDONLY).err(),
        Some(Errno::ELOOP)
    );
    assert!(export
        .create(&p("evil"), libc::O_WRONLY | libc::O_TRUNC, 0o644)
        .is_err());
    // Text with a NUL cannot be a symlink; an empty one neither.
    assert_eq!(export.symlink(&p("nul"), b"a\0b"), Err(Errno::EINVAL));
    assert!(export.symlink(&p("empty"), b"").is_err());
    assert_eq!(outside_world(&fx), before);
}

#[test]
fn files_are_created_read_written_and_truncated() {
    let fx = fixture();
    let export = &fx.export;
    let path = p("inner/new.txt");
    let (file, attr) = export
        .create(&path, libc::O_RDWR | libc::O_EXCL, 0o640)
        .unwrap();
    assert_eq!(
        (attr.kind, attr.perm, attr.size),
        (FileKind::File, 0o640, 0)
    );
    assert_eq!(file.write_at(0, b"hello world").unwrap(), 11);
    assert_eq!(file.write_at(20, b"!").unwrap(), 1);
    assert_eq!(file.read_at(0, 5).unwrap(), b"hello");
    assert_eq!(file.read_at(6, 100).unwrap().len(), 15);
    assert_eq!(file.read_at(100, 10).unwrap(), b"");
    file.sync(false).unwrap();
    file.sync(true).unwrap();
    assert_eq!(file.attr().unwrap().size, 21);
    assert_eq!(
        export
            .create(&path, libc::O_RDWR | libc::O_EXCL, 0o640)
            .err(),
        Some(Errno::EEXIST)
    );
    // Without O_EXCL the existing file is opened and keeps its mode.
    let (again, attr) = export.create(&path, libc::O_RDONLY, 0o600).unwrap();
    assert_eq!((attr.perm, attr.size), (0o640, 21));
    assert_eq!(again.read_at(0, 5).unwrap(), b"hello");
    // O_CREAT on Open is dropped: a missing file stays missing.
    assert_eq!(
        export
            .open_file(&p("missing"), libc::O_RDWR | libc::O_CREAT)
            .err(),
        Some(Errno::ENOENT)
    );
    // Truncate by path and by handle.
    let shrink = AttrChanges {
        size: Some(5),
        ..AttrChanges::default()
    };
    assert_eq!(
        export
            .set_attr(&path, &shrink, SetIdBits::AsAsked)
            .unwrap()
            .size,
        5
    );
    let grow = AttrChanges {
        size: Some(4096),
        ..AttrChanges::default()
    };
    assert_eq!(file.set_attr(&grow, SetIdBits::AsAsked).unwrap().size, 4096);
    // A handle outlives its name.
    export.unlink(&path).unwrap();
    assert_eq!(file.read_at(0, 5).unwrap(), b"hello");
    assert_eq!(file.set_attr(&shrink, SetIdBits::AsAsked).unwrap().size, 5);
    assert_eq!(export.stat(&path), Err(Errno::ENOENT));
    // A read-only handle cannot write.
    assert!(again.write_at(0, b"x").is_err());
}

/// A read of only what the page cache holds gives exactly the bytes a plain
/// read does, or nothing at all when it would have to wait for the disk.
#[test]
fn a_read_from_the_page_cache_is_whole_or_nothing() {
    let fx = fixture();
    let path = p("cached");
    let (file, _) = fx
        .export
        .create(&path, libc::O_RDWR | libc::O_EXCL, 0o600)
        .unwrap();
    let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
    assert_eq!(file.write_at(0, &data).unwrap(), data.len());
    // Just written: in the page cache.
    assert_eq!(file.read_cached(0, data.len()).unwrap().unwrap(), data);
    assert_eq!(
        file.read_cached(4000, 200).unwrap().unwrap(),
        &data[4000..4200]
    );
    // At and past the end of the file a read is short or empty, never a wait.
    assert_eq!(
        file.read_cached(3 * 4096, 4096).unwrap().unwrap(),
        &data[3 * 4096..]
    );
    // Once out of the page cache, a read of it is nothing: it would wait for
    // the disk. (Only where the test can tell: ext4, as here, drops clean
    // pages when told to; a file system in memory keeps them.)
    file.sync(false).unwrap();
    let fd = file.fd().as_raw_fd();
    // SAFETY: fadvise only drops clean cached pages of this descriptor's file;
    // fstatfs writes into the zeroed struct it is given.
    let on_ext4 = unsafe {
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
        let mut fs: libc::statfs = std::mem::zeroed();
        libc::fstatfs(fd, &mut fs) == 0 && fs.f_type == libc::EXT4_SUPER_MAGIC
    };
    match file.read_cached(4096, 4096) {
        None => {}
        Some(got) if !on_ext4 => assert_eq!(got.unwrap(), &data[4096..8192]),
        Some(_) => panic!("a read of what is on the disk only did not stop short"),
    }
    assert_eq!(file.read_at(4096, 4096).unwrap(), &data[4096..8192]);
}

#[test]
fn new_nodes_get_exactly_the_mode_asked_for() {
    // The client's kernel applied the caller's umask already; the server's own
    // (022 or so) must not strip bits a second time. Changing the umask here would
    // disturb the tests running beside this one, so ask for bits it usually masks.
    let fx = fixture();
    let export = &fx.export;
    let (_, file) = export
        .create(&p("f"), libc::O_WRONLY | libc::O_EXCL, 0o666)
        .unwrap();
    let dir = export.mkdir(&p("d"), 0o777).unwrap();
    let fifo = export.mknod(&p("fifo"), libc::S_IFIFO | 0o666, 0).unwrap();
    assert_eq!(file.perm, 0o666);
    assert_eq!((dir.kind, dir.perm), (FileKind::Directory, 0o777));
    assert_eq!((fifo.kind, fifo.perm), (FileKind::Fifo, 0o666));
    assert_eq!(
        fs::metadata(fx.export_dir().join("f")).unwrap().mode() & 0o7777,
        0o666
    );
    assert_eq!(
        fs::metadata(fx.export_dir().join("d")).unwrap().mode() & 0o7777,
        0o777
    );
}

/// The calling thread's credentials as the kernel shows them: ids (real,
/// effective, saved, file system), groups and effective capabilities.
fn thread_credentials() -> Vec<String> {
    fs::read_to_string("/proc/thread-self/status")
        .unwrap()
        .lines()
        .filter(|l| {
            ["Uid:", "Gid:", "Groups:", "CapEff:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_string)
        .collect()
}

/// A `security.capability` value granting `cap_setuid+ep` (struct
/// vfs_cap_data, revision 2).
fn cap_setuid() -> Vec<u8> {
    const REVISION_2: u32 = 0x0200_0000;
    const EFFECTIVE: u32 = 1;
    const CAP_SETUID: u32 = 7;
    [REVISION_2 | EFFECTIVE, 1 << CAP_SETUID, 0, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_le_bytes())
        .collect()
}

/// A user (not squashed) with a supplementary group.
fn user() -> Identity {
    Identity {
        uid: 1234,
        gid: 5678,
        groups: vec![5679],
        squashed: false,
    }
}

/// Whether this test can switch users; says so when it cannot.
fn can_switch(fx: &Fixture) -> bool {
    if !fx.export.acts_as_clients() {
        eprintln!("skipped: the export acts as a client's user only when run as root");
        return false;
    }
    true
}

#[test]
fn acting_as_a_user_makes_its_nodes_and_checks_its_permissions() {
    let fx = fixture();
    if !can_switch(&fx) {
        return;
    }
    // Open to everyone, with a file only root may read.
    fs::set_permissions(fx.export_dir(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(fx.export_dir().join("secret"), "root only").unwrap();
    fs::set_permissions(
        fx.export_dir().join("secret"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let export = &fx.export;
    // A thread of its own, so that nothing this test does can stick to the
    // test's thread.
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let before = thread_credentials();
                {
                    let _acting = export.act_as(&user()).unwrap();
                    assert_ne!(thread_credentials(), before);
                    let (_, file) = export.create(&p("f"), libc::O_WRONLY, 0o4755).unwrap();
                    // Its own file: set-user-id is the user's to set, and the
                    // group is the user's own.
                    assert_eq!((file.uid, file.gid, file.perm), (1234, 5678, 0o4755));
                    assert_eq!(export.mkdir(&p("d"), 0o755).unwrap().uid, 1234);
                    assert_eq!(export.symlink(&p("l"), b"f").unwrap().gid, 5678);
                    let fifo = export.mknod(&p("n"), libc::S_IFIFO | 0o600, 0).unwrap();
                    assert_eq!(fifo.uid, 1234);
                    // The kernel checks as the user: no reading root's file,
                    // no giving files away, no groups it is not in, no devices,
                    // no privileged attributes.
                    assert_eq!(
                        export.open_file(&p("secret"), libc::O_RDONLY).err(),
                        Some(Errno::EACCES)
                    );
                    let chown = |uid, gid| AttrChanges {
                        uid,
                        gid,
                        ..AttrChanges::default()
                    };
                    let f = p("f");
                    assert_eq!(
                        export.set_attr(&f, &chown(Some(0), None), SetIdBits::AsAsked),
                        Err(Errno::EPERM)
                    );
                    assert_eq!(
                        export.set_attr(&f, &chown(None, Some(9999)), SetIdBits::AsAsked),
                        Err(Errno::EPERM)
                    );
                    let regrouped = export
                        .set_attr(&f, &chown(None, Some(5679)), SetIdBits::AsAsked)
                        .unwrap();
                    assert_eq!(regrouped.gid, 5679);
                    assert_eq!(
                        export.mknod(&p("disk"), libc::S_IFBLK | 0o666, libc::makedev(7, 0)),
                        Err(Errno::EPERM)
                    );
                    for (name, value) in [
                        (b"trusted.a".as_slice(), b"x".as_slice()),
                        (b"security.capability", &cap_setuid()),
                    ] {
                        assert_eq!(
                            export.set_xattr(&f, name, value, 0),
                            Err(Errno::EPERM),
                            "{}",
                            String::from_utf8_lossy(name)
                        );
                    }
                }
                // Back to the server's own: root makes root's nodes, and may
                // set what the user could not (so the value above was valid).
                assert_eq!(thread_credentials(), before);
                export
                    .set_xattr(&p("f"), b"security.capability", &cap_setuid(), 0)
                    .unwrap();
                let (_, mine) = export.create(&p("mine"), libc::O_WRONLY, 0o644).unwrap();
                assert_eq!((mine.uid, mine.gid), (0, 0));
            })
            .join()
            .unwrap();
    });
}

#[test]
fn acting_changes_only_the_calling_thread() {
    let fx = fixture();
    if !can_switch(&fx) {
        return;
    }
    fs::set_permissions(fx.export_dir(), fs::Permissions::from_mode(0o777)).unwrap();
    let export = &fx.export;
    let mine = thread_credentials();
    let (acting_tx, acting_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    thread::scope(|scope| {
        scope.spawn(move || {
            let _acting = export.act_as(&user()).unwrap();
            acting_tx.send(thread_credentials()).unwrap();
            // Holds the identity until the other thread has looked.
            let _ = done_rx.recv_timeout(Duration::from_secs(20));
        });
        let theirs = acting_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_ne!(theirs, mine);
        assert!(theirs
            .iter()
            .any(|l| l.starts_with("Groups:") && l.contains("5679")));
        // Meanwhile this thread is still root, groups and all.
        assert_eq!(thread_credentials(), mine);
        let (_, attr) = export
            .create(&p("made_by_root"), libc::O_WRONLY, 0o644)
            .unwrap();
        assert_eq!(attr.uid, 0);
        done_tx.send(()).unwrap();
    });
}

#[test]
fn a_panic_while_acting_still_puts_the_servers_credentials_back() {
    let fx = fixture();
    if !can_switch(&fx) {
        return;
    }
    let export = &fx.export;
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let before = thread_credentials();
                let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _acting = export.act_as(&user()).unwrap();
                    panic!("a bug in some operation");
                }));
                assert!(unwound.is_err());
                assert_eq!(thread_credentials(), before);
            })
            .join()
            .unwrap();
    });
}

#[test]
fn root_acting_as_root_changes_at_most_its_group() {
    let fx = fixture();
    if !can_switch(&fx) {
        return;
    }
    let export = &fx.export;
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let root = Identity {
                    uid: 0,
                    gid: 4321,
                    groups: vec![1, 2, 3],
                    squashed: false,
                };
                let before = thread_credentials();
                {
                    let _acting = export.act_as(&root).unwrap();
                    let (_, file) = export.create(&p("f"), libc::O_WRONLY, 0o644).unwrap();
                    assert_eq!((file.uid, file.gid), (0, 4321));
                    // Still root: may give the file away.
                    let changes = AttrChanges {
                        uid: Some(42),
                        ..AttrChanges::default()
                    };
                    let attr = export
                        .set_attr(&p("f"), &changes, SetIdBits::AsAsked)
                        .unwrap();
                    assert_eq!(attr.uid, 42);
                }
                assert_eq!(thread_credentials(), before);
            })
            .join()
            .unwrap();
    });
}

#[test]
fn a_chmod_without_set_id_bits_keeps_only_a_directorys_group_bit() {
    let fx = fixture();
    let export = &fx.export;
    let (file, _) = export.create(&p("f"), libc::O_RDWR, 0o755).unwrap();
    export.mkdir(&p("d"), 0o775).unwrap();
    let chmod = |mode| AttrChanges {
        mode: Some(mode),
        ..AttrChanges::default()
    };
    let strict = SetIdBits::DirectoryGroupOnly;
    assert_eq!(
        export
            .set_attr(&p("f"), &chmod(0o6755), strict)
            .unwrap()
            .perm,
        0o755
    );
    assert_eq!(file.set_attr(&chmod(0o6711), strict).unwrap().perm, 0o711);
    assert_eq!(
        export
            .set_attr(&p("d"), &chmod(0o6775), strict)
            .unwrap()
            .perm,
        0o2775
    );
    // As asked: the kernel decides (the owner, in the file's group, may set both).
    assert_eq!(
        export
            .set_attr(&p("f"), &chmod(0o6755), SetIdBits::AsAsked)
            .unwrap()
            .perm,
        0o6755
    );
}

#[test]
fn directories_are_listed_in_stable_pages() {
    let fx = fixture();
    let export = &fx.export;
    export.mkdir(&p("many"), 0o755).unwrap();
    for i in 0..25 {
        fs::write(fx.export_dir().join(format!("many/f{i:02}")), [b'x'; 3]).unwrap();
    }
    let mut seen = Vec::new();
    let mut start = 0;
    loop {
        let (entries, more) = export.read_dir(&p("many"), start, 10).unwrap();
        assert!(entries.len() <= 10);
        start += entries.len() as u64;
        seen.extend(entries.into_iter().map(|e| {
            assert_eq!((e.attr.kind, e.attr.size), (FileKind::File, 3));
            String::from_utf8(e.name).unwrap()
        }));
        if !more {
            break;
        }
    }
    seen.sort();
    let expected: Vec<_> = (0..25).map(|i| format!("f{i:02}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(
        export.read_dir(&p("many"), 25, 10).unwrap(),
        (Vec::new(), false)
    );
    assert_eq!(
        export.read_dir(&p("many"), u64::MAX, 10).unwrap(),
        (Vec::new(), false)
    );
    // The root lists its own entries, symlinks as symlinks.
    let (root, more) = export.read_dir(&RelPath::root(), 0, 100).unwrap();
    assert!(!more);
    let up = root.iter().find(|e| e.name == b"up").unwrap();
    assert_eq!(up.attr.kind, FileKind::Symlink);
    assert_eq!(root.len(), 7);
    assert_eq!(
        export.read_dir(&p("file"), 0, 10).err(),
        Some(Errno::ENOTDIR)
    );
}

#[test]
fn a_listing_stream_goes_on_where_it_stopped() {
    let fx = fixture();
    let export = &fx.export;
    let dir = fx.export_dir().join("many");
    export.mkdir(&p("many"), 0o755).unwrap();
    let names = |entries: Vec<DirEntry>| -> Vec<String> {
        entries
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect()
    };
    for i in 0..60 {
        fs::write(dir.join(format!("f{i:02}")), "x").unwrap();
    }
    let mut stream = export.open_dir_stream(&p("many")).unwrap();
    // Room for seven entries with 3-byte names per reply.
    let budget = 7 * (3 + LISTED_ENTRY_OVERHEAD);
    let mut seen: Vec<String> = Vec::new();
    let mut replies = 0;
    loop {
        let (entries, more) = stream.next_entries(budget, usize::MAX).unwrap();
        assert!(entries.len() <= 7, "{} entries", entries.len());
        assert!(entries.iter().all(|e| e.attr.kind == FileKind::File));
        replies += 1;
        seen.extend(names(entries));
        if replies == 2 {
            // Others change the directory in the middle of the listing.
            fs::remove_file(dir.join(&seen[0])).unwrap();
            fs::write(dir.join("new"), "n").unwrap();
        }
        if !more {
            break;
        }
    }
    assert!(replies >= 9, "{replies} replies");
    // Every name there throughout the listing is listed exactly once (a new
    // one may or may not be).
    seen.retain(|n| n != "new");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        seen.len(),
        "a name was listed twice: {seen:?}"
    );
    let all: Vec<String> = (0..60).map(|i| format!("f{i:02}")).collect();
    assert_eq!(sorted, all);
    // Past its end a stream stays ended.
    assert_eq!(
        stream.next_entries(budget, 10).unwrap(),
        (Vec::new(), false)
    );

    // Every reply makes progress, however small the budget; `max` caps it too.
    let mut small = export.open_dir_stream(&p("many")).unwrap();
    let (one, more) = small.next_entries(0, usize::MAX).unwrap();
    assert_eq!((one.len(), more), (1, true));
    let (two, more) = small.next_entries(usize::MAX, 2).unwrap();
    assert_eq!((two.len(), more), (2, true));
    let (rest, more) = small.next_entries(usize::MAX, usize::MAX).unwrap();
    assert!(!more);
    let mut again = names(one);
    again.extend(names(two));
    again.extend(names(rest));
    again.sort();
    let mut expected = all.clone();
    expected.push("new".to_string());
    expected.retain(|n| *n != seen[0]);
    expected.sort();
    assert_eq!(again, expected);

    assert_eq!(
        export.open_dir_stream(&p("file")).err(),
        Some(Errno::ENOTDIR)
    );
    // A symlink to a directory is not listed through.
    assert!(export.open_dir_stream(&p("up")).is_err());
}

#[test]
fn rename_link_unlink_and_rmdir_stay_inside() {
    let fx = fixture();
    let export = &fx.export;
    export.mkdir(&p("a"), 0o755).unwrap();
    export.rename(&p("file"), &p("a/file"), 0).unwrap();
    assert_eq!(export.stat(&p("a/file")).unwrap().size, 5);
    assert_eq!(
        export.link(&p("a/file"), &p("inner/hard")).unwrap().nlink,
        2
    );
    assert_eq!(
        export.rename(&p("inner/hard"), &p("a/file"), libc::RENAME_NOREPLACE),
        Err(Errno::EEXIST)
    );
    export
        .rename(&p("inner/file"), &p("a/file"), libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(fs::read(fx.export_dir().join("a/file")).unwrap(), b"inner");
    assert_eq!(export.rename(&p("a"), &p("b"), 4), Err(Errno::EINVAL));
    assert_eq!(export.rmdir(&p("a")), Err(Errno::ENOTEMPTY));
    export.unlink(&p("a/file")).unwrap();
    export.rmdir(&p("a")).unwrap();
    assert_eq!(export.unlink(&p("inner")), Err(Errno::EISDIR));
    // The root cannot be removed, renamed or replaced.
    assert!(export.rmdir(&RelPath::root()).is_err());
    assert!(export.rename(&RelPath::root(), &p("x"), 0).is_err());
    assert!(export.rename(&p("inner"), &RelPath::root(), 0).is_err());
    assert!(export.unlink(&RelPath::root()).is_err());
    assert!(export.mkdir(&RelPath::root(), 0o755).is_err());
    assert_eq!(
        export.stat(&RelPath::root()).unwrap().kind,
        FileKind::Directory
    );
    assert_eq!(
        export.root_attr().unwrap(),
        export.stat(&RelPath::root()).unwrap()
    );
    assert!(export.statfs().unwrap().bsize > 0);
}

/// Runs `f` on another thread and fails if it does not finish in time: an
/// operation that opens a FIFO would block forever.
pub(super) fn within_seconds<T: Send + 'static>(
    secs: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("the operation blocked")
}

#[test]
fn fifos_are_changed_without_being_opened() {
    within_seconds(20, || {
        let fx = fixture();
        let export = &fx.export;
        let fifo = p("inner/fifo");
        export.mknod(&fifo, libc::S_IFIFO | 0o644, 0).unwrap();
        assert_eq!(export.stat(&fifo).unwrap().kind, FileKind::Fifo);
        let chmod = AttrChanges {
            mode: Some(0o600),
            ..AttrChanges::default()
        };
        assert_eq!(
            export
                .set_attr(&fifo, &chmod, SetIdBits::AsAsked)
                .unwrap()
                .perm,
            0o600
        );
        let times = AttrChanges {
            atime: Some(SetTime::At(Timestamp {
                secs: 1000,
                nanos: 5,
            })),
            mtime: Some(SetTime::At(Timestamp {
                secs: 2000,
                nanos: 6,
            })),
            ..AttrChanges::default()
        };
        let attr = export.set_attr(&fifo, &times, SetIdBits::AsAsked).unwrap();
        assert_eq!(
            (attr.atime.secs, attr.mtime),
            (
                1000,
                Timestamp {
                    secs: 2000,
                    nanos: 6
                }
            )
        );
        let truncate = AttrChanges {
            size: Some(0),
            ..AttrChanges::default()
        };
        assert_eq!(
            export.set_attr(&fifo, &truncate, SetIdBits::AsAsked),
            Err(Errno::EINVAL)
        );
        for flags in [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR] {
            assert_eq!(
                export.open_file(&fifo, flags).err(),
                Some(Errno::new(libc::ENXIO))
            );
            assert_eq!(
                export.create(&fifo, flags, 0o644).err(),
                Some(Errno::new(libc::ENXIO))
            );
        }
        export.rename(&fifo, &p("fifo2"), 0).unwrap();
        export.link(&p("fifo2"), &p("fifo3")).unwrap();
        let (entries, _) = export.read_dir(&RelPath::root(), 0, 100).unwrap();
        assert!(entries
            .iter()
            .any(|e| e.name == b"fifo3" && e.attr.kind == FileKind::Fifo));
        export.unlink(&p("fifo2")).unwrap();
    });
}

#[test]
fn device_nodes_are_never_opened() {
    within_seconds(20, || {
        let fx = fixture();
        let export = &fx.export;
        // /dev/null's numbers: 1, 3. Creating it needs privilege.
        let rdev = libc::makedev(1, 3);
        match export.mknod(&p("null"), libc::S_IFCHR | 0o666, rdev) {
            Ok(attr) => assert_eq!(attr.kind, FileKind::CharDevice),
            Err(e) => {
                eprintln!("skipped: cannot create a device node: {e}");
                return;
            }
        }
        assert_eq!(
            export.open_file(&p("null"), libc::O_RDONLY).err(),
            Some(Errno::new(libc::ENXIO))
        );
        let chmod = AttrChanges {
            mode: Some(0o600),
            ..AttrChanges::default()
        };
        assert_eq!(
            export
                .set_attr(&p("null"), &chmod, SetIdBits::AsAsked)
                .unwrap()
                .perm,
            0o600
        );
    });
}

#[test]
fn opening_the_root_or_a_missing_root_fails_clearly() {
    let fx = fixture();
    let err = ExportRoot::open(&fx.export_dir().join("file")).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    let err = ExportRoot::open(&fx.export_dir().join("nope")).unwrap_err();
    assert!(err.to_string().contains("no such directory"), "{err}");
    let (dir, attr) = fx
        .export
        .open_file(&RelPath::root(), libc::O_RDONLY)
        .unwrap();
    assert_eq!(attr.kind, FileKind::Directory);
    assert!(dir.read_at(0, 10).is_err());
    assert_eq!(
        fx.export.open_file(&p("inner"), libc::O_WRONLY).err(),
        Some(Errno::EISDIR)
    );
}

#[test]
fn fallocate_modes_and_copies_between_open_files() {
    let fx = fixture();
    let (out, _) = fx.export.create(&p("copy"), libc::O_RDWR, 0o644).unwrap();
    out.allocate(0, 0, 8192).unwrap();
    assert_eq!(out.attr().unwrap().size, 8192);
    out.allocate(libc::FALLOC_FL_KEEP_SIZE, 8192, 4096).unwrap();
    assert_eq!(out.attr().unwrap().size, 8192);
    assert_eq!(
        out.allocate(libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096),
        Err(Errno::ENOTSUP),
        "modes FUSE never passes are refused"
    );
    let (input, _) = fx.export.open_file(&p("file"), libc::O_RDONLY).unwrap();
    assert_eq!(
        input.copy_to(1, &out, 100, 1000).unwrap(),
        4,
        "up to the end of the input"
    );
    assert_eq!(
        input.copy_to(5, &out, 0, 10).unwrap(),
        0,
        "nothing past the end"
    );
    // The fallback, for file systems copy_file_range cannot join.
    assert_eq!(input.copy_by_reading(0, &out, 200, 1000).unwrap(), 5);
    let data = fs::read(fx.export_dir().join("copy")).unwrap();
    assert_eq!(&data[100..104], b"ello");
    assert_eq!(&data[200..205], b"hello");
    // A descriptor opened read-only cannot be written to.
    assert_eq!(out.copy_to(0, &input, 0, 10), Err(Errno::EBADF));
}
