//! Every filesystem operation through a real mount, checked against the
//! server's disk, with the errno an application must see on failure.

mod common;

use common::{as_nobody, assert_errno, Setup};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{
    symlink, DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn create_write_read_at_offsets() {
    let f = fixture!();
    let path = f.m("a.txt");
    fs::write(&path, b"hello world").unwrap();
    assert_eq!(fs::read(f.e("a.txt")).unwrap(), b"hello world");
    assert_eq!(fs::read(&path).unwrap(), b"hello world");

    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.write_all_at(b"WORLD", 6).unwrap();
    file.write_all_at(b"!", 20).unwrap(); // past the end: a hole of zeros
    let mut buf = [0u8; 5];
    file.read_exact_at(&mut buf, 6).unwrap();
    assert_eq!(&buf, b"WORLD");
    drop(file);
    let mut expected = b"hello WORLD".to_vec();
    expected.resize(20, 0);
    expected.push(b'!');
    assert_eq!(fs::read(f.e("a.txt")).unwrap(), expected);
    assert_eq!(fs::metadata(&path).unwrap().len(), 21);
}

fn large_sequential_write_and_read_back() {
    let f = fixture!();
    let data: Vec<u8> = (0..(24u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    fs::write(f.m("big"), &data).unwrap();
    assert_eq!(fs::metadata(f.e("big")).unwrap().len(), data.len() as u64);
    assert!(fs::read(f.e("big")).unwrap() == data, "server copy differs");
    assert!(
        fs::read(f.m("big")).unwrap() == data,
        "read back through the mount differs"
    );
}

fn sparse_file_beyond_4_gib() {
    let f = fixture!();
    let offset = 5u64 << 30;
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(f.m("sparse"))
        .unwrap();
    file.write_all_at(b"far away", offset).unwrap();
    file.sync_all().unwrap();
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, offset).unwrap();
    assert_eq!(&buf, b"far away");
    let mut zeros = [1u8; 16];
    file.read_exact_at(&mut zeros, 1 << 32).unwrap();
    assert_eq!(zeros, [0; 16]);
    drop(file);
    assert_eq!(fs::metadata(f.m("sparse")).unwrap().len(), offset + 8);
    assert_eq!(fs::metadata(f.e("sparse")).unwrap().len(), offset + 8);
}

fn seek_and_append() {
    let f = fixture!();
    fs::write(f.m("log"), b"one\n").unwrap();
    let mut a = OpenOptions::new().append(true).open(f.m("log")).unwrap();
    a.write_all(b"two\n").unwrap();
    drop(a);
    let mut r = File::open(f.m("log")).unwrap();
    r.seek(SeekFrom::Start(4)).unwrap();
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    assert_eq!(s, "two\n");
}

fn truncate_grow_and_shrink() {
    let f = fixture!();
    fs::write(f.m("t"), b"0123456789").unwrap();
    let file = OpenOptions::new().write(true).open(f.m("t")).unwrap();
    file.set_len(4).unwrap();
    assert_eq!(fs::read(f.e("t")).unwrap(), b"0123");
    file.set_len(8).unwrap();
    assert_eq!(fs::read(f.e("t")).unwrap(), b"0123\0\0\0\0");
    drop(file);
    // truncate by path, and O_TRUNC
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(f.m("t"))
        .unwrap();
    assert_eq!(fs::metadata(f.e("t")).unwrap().len(), 0);
}

fn mkdir_readdir_rmdir() {
    let f = fixture!();
    fs::create_dir(f.m("d")).unwrap();
    for i in 0..50 {
        fs::write(f.m(&format!("d/f{i:02}")), i.to_string()).unwrap();
    }
    fs::create_dir(f.m("d/sub")).unwrap();
    let mut names: Vec<String> = fs::read_dir(f.m("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 51);
    assert_eq!(names[0], "f00");
    assert_eq!(names[50], "sub");
    let sub = fs::read_dir(f.m("d"))
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name() == "sub")
        .unwrap();
    assert!(sub.file_type().unwrap().is_dir());

    assert_errno(fs::remove_dir(f.m("d")), libc::ENOTEMPTY);
    assert_errno(fs::create_dir(f.m("d")), libc::EEXIST);
    fs::remove_dir(f.m("d/sub")).unwrap();
    common::fsync_dir(&f.m("d"));
    assert!(!f.e("d/sub").exists());
    fs::remove_dir_all(f.m("d")).unwrap();
    common::fsync_dir(&f.m(""));
    assert!(!f.e("d").exists());
}

fn a_directory_of_thousands_lists_completely() {
    let f = fixture!();
    fs::create_dir(f.e("many")).unwrap();
    for i in 0..5000 {
        File::create(f.e(&format!("many/entry-with-a-longish-name-{i:05}"))).unwrap();
    }
    let n = fs::read_dir(f.m("many")).unwrap().count();
    assert_eq!(n, 5000);
    // and ls -l (readdirplus + attributes) agrees
    let out = common::run(std::process::Command::new("ls").arg("-l").arg(f.m("many")));
    assert_eq!(
        out.lines().filter(|l| l.contains("entry-with")).count(),
        5000
    );
}

fn errors_reach_the_application() {
    let f = fixture!();
    assert_errno(fs::metadata(f.m("missing")), libc::ENOENT);
    assert_errno(File::open(f.m("missing")), libc::ENOENT);
    fs::write(f.m("file"), b"x").unwrap();
    assert_errno(fs::metadata(f.m("file/below")), libc::ENOTDIR);
    assert_errno(fs::create_dir(f.m("file")), libc::EEXIST);
    assert_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(f.m("file")),
        libc::EEXIST,
    );
    fs::create_dir(f.m("dir")).unwrap();
    assert_errno(
        OpenOptions::new().write(true).open(f.m("dir")),
        libc::EISDIR,
    );
    assert_errno(fs::remove_dir(f.m("file")), libc::ENOTDIR);
    assert_errno(fs::remove_file(f.m("dir")), libc::EISDIR);
    assert_errno(fs::remove_file(f.m("missing")), libc::ENOENT);
    assert_errno(fs::rename(f.m("dir"), f.m("file")), libc::ENOTDIR);
    fs::write(f.m("dir/inside"), b"").unwrap();
    fs::create_dir(f.m("dir2")).unwrap();
    fs::write(f.m("dir2/x"), b"").unwrap();
    assert_errno(fs::rename(f.m("dir"), f.m("dir2")), libc::ENOTEMPTY);
    let long = "n".repeat(256);
    assert_errno(fs::write(f.m(&long), b""), libc::ENAMETOOLONG);
}

fn permissions_are_checked_against_the_remote_owner_and_mode() {
    if !common::require_root() {
        return;
    }
    let f = fixture!(Setup {
        allow_other: true,
        ..Setup::default()
    });
    // nobody must be able to reach the mount's parent directories
    fs::set_permissions(f.temp(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(f.m("private"), b"secret").unwrap();
    fs::set_permissions(f.m("private"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(f.m("public"), b"open").unwrap();
    fs::set_permissions(f.m("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&f.mnt, fs::Permissions::from_mode(0o755)).unwrap();

    let private = f.m("private");
    let (ok, err) = as_nobody(&["cat", private.to_str().unwrap()]);
    assert!(
        !ok && err.contains("Permission denied"),
        "nobody read a 0600 root file: {err}"
    );
    let public = f.m("public");
    let (ok, err) = as_nobody(&["cat", public.to_str().unwrap()]);
    assert!(ok, "nobody could not read a 0644 file: {err}");
    let new = f.m("new-by-nobody");
    let (ok, err) = as_nobody(&["touch", new.to_str().unwrap()]);
    assert!(
        !ok && err.contains("Permission denied"),
        "nobody wrote into a 0755 root dir: {err}"
    );
    assert!(!f.e("new-by-nobody").exists());

    // In a directory nobody may write to, the new file belongs to nobody.
    fs::create_dir(f.m("drop")).unwrap();
    fs::set_permissions(f.m("drop"), fs::Permissions::from_mode(0o777)).unwrap();
    let theirs = f.m("drop/theirs");
    let (ok, err) = as_nobody(&["touch", theirs.to_str().unwrap()]);
    assert!(ok, "{err}");
    // Created behind (the mount made "drop"): fsync says it has landed.
    File::open(&theirs).unwrap().sync_all().unwrap();
    assert_eq!(fs::metadata(f.e("drop/theirs")).unwrap().uid(), 65534);
}

fn a_full_disk_is_enospc() {
    if !common::require_root() {
        return;
    }
    // A 1 MiB tmpfs as the export.
    let small = common::SmallDisk::new();
    {
        let f = fixture!(Setup {
            export: Some(small.path().to_path_buf()),
            ..Setup::default()
        });
        let mut file = File::create(f.m("fill")).unwrap();
        let chunk = vec![1u8; 256 << 10];
        let mut result = Ok(());
        for _ in 0..16 {
            result = file.write_all(&chunk);
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| file.sync_all());
        assert_errno(result, libc::ENOSPC);
        drop(file);
        // the filesystem still works, and freeing space lets writes succeed again
        fs::remove_file(f.m("fill")).unwrap();
        fs::write(f.m("small"), b"fits").unwrap();
        assert_eq!(fs::read(f.m("small")).unwrap(), b"fits");
    }
}

fn rename_files_and_directories() {
    let f = fixture!();
    fs::write(f.m("a"), b"A").unwrap();
    fs::write(f.m("b"), b"B").unwrap();
    fs::rename(f.m("a"), f.m("b")).unwrap(); // over an existing file
    assert_eq!(fs::read(f.m("b")).unwrap(), b"A");
    assert!(!f.m("a").exists());
    assert_eq!(fs::read(f.e("b")).unwrap(), b"A");

    fs::create_dir_all(f.m("x/y")).unwrap();
    fs::write(f.m("x/y/z"), b"Z").unwrap();
    let z_before = fs::metadata(f.m("x/y/z")).unwrap().ino();
    fs::rename(f.m("x"), f.m("w")).unwrap();
    assert_eq!(fs::read(f.m("w/y/z")).unwrap(), b"Z");
    assert_eq!(
        fs::metadata(f.m("w/y/z")).unwrap().ino(),
        z_before,
        "moved inode keeps its number"
    );
    assert!(!f.m("x").exists());
    fs::create_dir(f.m("empty")).unwrap();
    fs::rename(f.m("w"), f.m("empty")).unwrap(); // directory over an empty directory
    assert_eq!(fs::read(f.e("empty/y/z")).unwrap(), b"Z");
}

fn rename_over_an_open_file_keeps_it_readable() {
    let f = fixture!();
    fs::write(f.m("victim"), b"old contents").unwrap();
    fs::write(f.m("new"), b"new contents").unwrap();
    let mut open = File::open(f.m("victim")).unwrap();
    fs::rename(f.m("new"), f.m("victim")).unwrap();
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "old contents", "the open file still reads its own data");
    assert_eq!(fs::read(f.m("victim")).unwrap(), b"new contents");
    // fstat on the open, replaced file still works
    assert_eq!(open.metadata().unwrap().len(), 12);
}

fn unlinked_open_file_stays_usable() {
    let f = fixture!();
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(f.m("tmp"))
        .unwrap();
    fs::remove_file(f.m("tmp")).unwrap();
    common::fsync_dir(&f.m(""));
    assert!(!f.e("tmp").exists());
    file.write_all(b"still here").unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    file.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    file.set_len(5).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 5);
}

fn symlinks_are_stored_and_read_as_written() {
    let f = fixture!();
    fs::write(f.m("target"), b"T").unwrap();
    symlink("target", f.m("rel")).unwrap();
    symlink("/etc/hostname", f.m("abs")).unwrap();
    symlink("../../outside", f.m("dangling")).unwrap();
    assert_eq!(fs::read_link(f.m("rel")).unwrap().to_str(), Some("target"));
    assert_eq!(
        fs::read_link(f.e("abs")).unwrap().to_str(),
        Some("/etc/hostname")
    );
    assert_eq!(
        fs::read_link(f.m("dangling")).unwrap().to_str(),
        Some("../../outside")
    );
    assert_eq!(fs::read(f.m("rel")).unwrap(), b"T");
    assert!(fs::symlink_metadata(f.m("abs"))
        .unwrap()
        .file_type()
        .is_symlink());
    // A symlink to a directory is followed by the client's kernel, inside the mount.
    fs::create_dir(f.m("d")).unwrap();
    fs::write(f.m("d/inner"), b"I").unwrap();
    symlink("d", f.m("dlink")).unwrap();
    assert_eq!(fs::read(f.m("dlink/inner")).unwrap(), b"I");
    fs::remove_file(f.m("rel")).unwrap();
    assert!(f.m("target").exists());
}

fn hard_links() {
    let f = fixture!();
    fs::write(f.m("orig"), b"data").unwrap();
    fs::hard_link(f.m("orig"), f.m("link")).unwrap();
    assert_eq!(fs::read(f.m("link")).unwrap(), b"data");
    assert_eq!(fs::metadata(f.e("orig")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(f.m("link")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(f.e("orig")).unwrap().ino(),
        fs::metadata(f.e("link")).unwrap().ino()
    );
    assert_errno(fs::hard_link(f.m("orig"), f.m("link")), libc::EEXIST);
}

fn hard_links_are_one_inode_in_the_mount() {
    // The attribute timeout is long, so only a shared inode (not a fresh
    // getattr) can show a change made through the other name.
    let f = fixture!(Setup {
        attr_timeout: Duration::from_secs(60),
        ..Setup::default()
    });
    fs::write(f.m("orig"), b"data").unwrap();
    let before = fs::symlink_metadata(f.m("orig")).unwrap();
    assert_eq!(before.nlink(), 1);
    std::thread::sleep(Duration::from_millis(20));
    fs::hard_link(f.m("orig"), f.m("link")).unwrap();
    let orig = fs::symlink_metadata(f.m("orig")).unwrap();
    let link = fs::symlink_metadata(f.m("link")).unwrap();
    assert_eq!(orig.ino(), link.ino(), "two names, one inode");
    assert_eq!((orig.nlink(), link.nlink()), (2, 2));
    assert!(
        (orig.ctime(), orig.ctime_nsec()) > (before.ctime(), before.ctime_nsec()),
        "link changes the file's ctime"
    );
    // A name learnt from a directory listing is the same inode too.
    fs::hard_link(f.e("orig"), f.e("made-on-server")).unwrap();
    let listed = fs::read_dir(&f.mnt)
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name() == "made-on-server")
        .expect("listed");
    assert_eq!(listed.metadata().unwrap().ino(), orig.ino());
    fs::set_permissions(f.m("link"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(f.m("orig")).unwrap().mode() & 0o7777, 0o600);
    fs::remove_file(f.m("orig")).unwrap();
    assert_eq!(fs::metadata(f.m("link")).unwrap().nlink(), 2);
    assert_eq!(fs::read(f.m("link")).unwrap(), b"data");
    fs::rename(f.m("link"), f.m("renamed")).unwrap();
    assert_eq!(fs::metadata(f.m("renamed")).unwrap().ino(), orig.ino());
    assert_eq!(fs::read(f.m("made-on-server")).unwrap(), b"data");
}

fn chmod_utimens_chown() {
    let f = fixture!();
    fs::write(f.m("f"), b"x").unwrap();
    fs::set_permissions(f.m("f"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(f.e("f")).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::metadata(f.m("f")).unwrap().mode() & 0o7777, 0o640);

    let when = UNIX_EPOCH + Duration::new(1_234_567_890, 123_456_789);
    let file = File::options().write(true).open(f.m("f")).unwrap();
    file.set_times(fs::FileTimes::new().set_modified(when).set_accessed(when))
        .unwrap();
    drop(file);
    let m = fs::metadata(f.e("f")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_890, 123_456_789));
    assert_eq!(fs::metadata(f.m("f")).unwrap().modified().unwrap(), when);

    // touch (utimens with "now")
    common::run(std::process::Command::new("touch").arg(f.m("f")));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((fs::metadata(f.e("f")).unwrap().mtime() - now).abs() < 60);

    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(f.m("f"), Some(1234), Some(5678)).unwrap();
        let m = fs::metadata(f.e("f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
    } else {
        assert_errno(
            std::os::unix::fs::chown(f.m("f"), Some(0), None),
            libc::EPERM,
        );
    }
}

fn special_files_on_the_server_do_not_block() {
    let f = fixture!();
    let fifo = f.e("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let m = fs::symlink_metadata(f.m("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
    fs::set_permissions(f.m("fifo"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(f.e("fifo")).unwrap().mode() & 0o777, 0o600);
    common::run(
        std::process::Command::new("touch")
            .arg("-h")
            .arg(f.m("fifo")),
    );
    fs::rename(f.m("fifo"), f.m("fifo2")).unwrap();
    assert!(f.e("fifo2").exists());
    // mkfifo through the mount, too
    let c = std::ffi::CString::new(f.m("made").to_str().unwrap()).unwrap();
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "{}",
        std::io::Error::last_os_error()
    );
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::metadata(f.e("made")).unwrap().file_type()
    ));
}

fn statfs_shows_the_servers_filesystem() {
    let f = fixture!();
    let out = common::run(std::process::Command::new("df").arg("-P").arg(&f.mnt));
    let line = out.lines().nth(1).expect("a df line");
    let total: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let server = common::run(std::process::Command::new("df").arg("-P").arg(&f.export));
    let server_total: u64 = server
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(total > 0);
    assert_eq!(total, server_total);
}

fn fsync_and_fdatasync() {
    let f = fixture!();
    let mut file = File::create(f.m("durable")).unwrap();
    file.write_all(b"important").unwrap();
    file.sync_all().unwrap();
    file.sync_data().unwrap();
    assert_eq!(fs::read(f.e("durable")).unwrap(), b"important");
    fs::create_dir(f.m("d")).unwrap();
    File::open(f.m("d")).unwrap().sync_all().unwrap();
}

fn changes_on_the_server_appear_after_the_attribute_timeout() {
    let f = fixture!(Setup {
        attr_timeout: Duration::from_millis(200),
        ..Setup::default()
    });
    fs::write(f.m("shared"), b"v1").unwrap();
    assert_eq!(fs::read(f.m("shared")).unwrap(), b"v1");
    std::thread::sleep(Duration::from_millis(20));
    fs::write(f.e("shared"), b"version 2").unwrap();
    fs::write(f.e("born-on-server"), b"hi").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(fs::read(f.m("shared")).unwrap(), b"version 2");
    assert_eq!(fs::read(f.m("born-on-server")).unwrap(), b"hi");
    fs::remove_file(f.e("born-on-server")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(!f.m("born-on-server").exists());
}

fn read_only_server_answers_erofs() {
    let f = fixture!(Setup {
        read_only_server: true,
        ..Setup::default()
    });
    fs::write(f.e("existing"), b"x").unwrap();
    assert_eq!(fs::read(f.m("existing")).unwrap(), b"x");
    assert_errno(fs::write(f.m("new"), b""), libc::EROFS);
    assert_errno(fs::create_dir(f.m("d")), libc::EROFS);
    assert_errno(fs::remove_file(f.m("existing")), libc::EROFS);
    assert_errno(
        OpenOptions::new().write(true).open(f.m("existing")),
        libc::EROFS,
    );
    assert_eq!(fs::read(f.e("existing")).unwrap(), b"x");
}

fn read_only_server_refuses_writes_from_a_read_write_client() {
    // Even a client that does not mount read-only (here: speaking to the server
    // directly) gets EROFS; the mount adds RO on top.
    let f = fixture!(Setup {
        read_only_server: true,
        ..Setup::default()
    });
    let options = f.connect_options(ferry_fusefs::client::DEFAULT_TIMEOUT);
    let client = ferry_fusefs::RemoteClient::connect(&f.addr(), &options).unwrap();
    let me = ferry_fusefs::creds::own();
    let r = client.call(
        &me,
        ferry_common::proto::Op::Mkdir {
            path: ferry_common::RelPath::parse("d").unwrap(),
            mode: 0o755,
        },
    );
    assert_eq!(r, Err(ferry_common::Errno::EROFS));
    // Reading is no change: nor is the stat of an open file (fstat).
    fs::write(f.e("existing"), b"x").unwrap();
    let path = ferry_common::RelPath::parse("existing").unwrap();
    let opened = client
        .call(
            &me,
            ferry_common::proto::Op::Open {
                path: path.clone(),
                flags: libc::O_RDONLY,
            },
        )
        .unwrap();
    let (handle, _) = opened.opened().unwrap();
    let stat = client.call(
        &me,
        ferry_common::proto::Op::SetAttr {
            path,
            handle: Some(handle),
            changes: ferry_common::proto::AttrChanges::default(),
        },
    );
    assert_eq!(stat.ok().and_then(|r| r.attr()).map(|a| a.size), Some(1));
}

fn read_only_mount_refuses_changes() {
    let f = fixture!(Setup {
        read_only_mount: true,
        ..Setup::default()
    });
    fs::write(f.e("existing"), b"x").unwrap();
    assert_eq!(fs::read(f.m("existing")).unwrap(), b"x");
    assert_errno(fs::write(f.m("new"), b""), libc::EROFS);
    assert_errno(
        OpenOptions::new().write(true).open(f.m("existing")),
        libc::EROFS,
    );
    assert_errno(fs::remove_file(f.m("existing")), libc::EROFS);
    assert_errno(
        fs::set_permissions(f.m("existing"), fs::Permissions::from_mode(0o600)),
        libc::EROFS,
    );
}

fn plain_readdir_without_readdirplus() {
    let f = fixture!(Setup {
        readdirplus: false,
        ..Setup::default()
    });
    fs::create_dir(f.e("d")).unwrap();
    for i in 0..3000 {
        fs::write(f.e(&format!("d/file-{i:04}")), i.to_string()).unwrap();
    }
    std::os::unix::fs::symlink("file-0000", f.e("d/link")).unwrap();
    fs::create_dir(f.e("d/sub")).unwrap();
    let mut names = Vec::new();
    for e in fs::read_dir(f.m("d")).unwrap() {
        let e = e.unwrap();
        let kind = e.file_type().unwrap();
        let name = e.file_name().into_string().unwrap();
        match name.as_str() {
            "link" => assert!(kind.is_symlink()),
            "sub" => assert!(kind.is_dir()),
            _ => assert!(kind.is_file()),
        }
        names.push(name);
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3002);
    let out = common::run(std::process::Command::new("ls").arg("-la").arg(f.m("d")));
    assert!(out.lines().any(|l| l.ends_with(" .")));
    assert!(out.lines().any(|l| l.ends_with(" ..")));
    assert_eq!(fs::read_to_string(f.m("d/file-2999")).unwrap(), "2999");
}

fn mode_bits_are_created_as_asked() {
    let f = fixture!();
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o664)
        .open(f.m("g"))
        .unwrap();
    drop(file);
    // The kernel applies the process umask (022 under cargo): 0664 & !022 = 0644.
    let umask = unsafe {
        let u = libc::umask(0);
        libc::umask(u);
        u
    };
    assert_eq!(
        fs::metadata(f.e("g")).unwrap().mode() & 0o777,
        0o664 & !umask
    );
    fs::DirBuilder::new().mode(0o750).create(f.m("dd")).unwrap();
    assert_eq!(
        fs::metadata(f.e("dd")).unwrap().mode() & 0o777,
        0o750 & !umask
    );
}

fn new_nodes_in_a_setgid_directory_keep_its_group() {
    if !common::require_root() {
        return;
    }
    let f = fixture!(Setup {
        allow_other: true,
        ..Setup::default()
    });
    fs::create_dir(f.e("shared")).unwrap();
    std::os::unix::fs::chown(f.e("shared"), Some(0), Some(4242)).unwrap();
    fs::set_permissions(f.e("shared"), fs::Permissions::from_mode(0o2777)).unwrap();
    fs::set_permissions(f.temp(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&f.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    let file = f.m("shared/by-nobody");
    let (ok, err) = as_nobody(&["touch", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let dir = f.m("shared/dir-by-nobody");
    let (ok, err) = as_nobody(&["mkdir", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let m = fs::metadata(f.e("shared/by-nobody")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 4242));
    let d = fs::metadata(f.e("shared/dir-by-nobody")).unwrap();
    assert_eq!((d.uid(), d.gid()), (65534, 4242));
    assert_ne!(
        d.mode() & libc::S_ISGID,
        0,
        "directories inherit the setgid bit"
    );
}

fn renameat2(from: &std::path::Path, to: &std::path::Path, flags: u32) -> std::io::Result<()> {
    let from = std::ffi::CString::new(from.to_str().unwrap()).unwrap();
    let to = std::ffi::CString::new(to.to_str().unwrap()).unwrap();
    // SAFETY: both paths are NUL-terminated and live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn rename_noreplace_and_exchange() {
    let f = fixture!();
    fs::write(f.m("a"), b"A").unwrap();
    fs::write(f.m("b"), b"B").unwrap();
    assert_errno(
        renameat2(&f.m("a"), &f.m("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
    );
    assert_eq!(fs::read(f.e("b")).unwrap(), b"B");
    renameat2(&f.m("a"), &f.m("c"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(fs::read(f.e("c")).unwrap(), b"A");

    fs::create_dir(f.m("d")).unwrap();
    fs::write(f.m("d/inner"), b"I").unwrap();
    renameat2(&f.m("c"), &f.m("d"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(f.m("d")).unwrap(), b"A", "the file now lives at d");
    assert_eq!(
        fs::read(f.m("c/inner")).unwrap(),
        b"I",
        "the directory now lives at c"
    );
    assert_eq!(fs::read(f.e("c/inner")).unwrap(), b"I");
}

fn unix_sockets_can_be_bound_inside_the_mount() {
    let f = fixture!();
    let path = f.m("sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let meta = fs::symlink_metadata(f.e("sock")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    let kind = fs::read_dir(&f.mnt)
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name() == "sock")
        .unwrap()
        .file_type()
        .unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&kind));
    drop(listener);
    fs::remove_file(&path).unwrap();
}

fn inode_numbers_are_stable_and_shared_by_hard_links() {
    if !common::require_root() {
        return;
    }
    let f = fixture!();
    fs::create_dir(f.m("d")).unwrap();
    fs::write(f.m("d/a"), b"A").unwrap();
    fs::hard_link(f.m("d/a"), f.m("d/b")).unwrap();
    let dir = fs::metadata(f.m("d")).unwrap().ino();
    let a = fs::metadata(f.m("d/a")).unwrap().ino();
    assert_eq!(fs::metadata(f.m("d/b")).unwrap().ino(), a, "hard links");
    assert_ne!(dir, a);
    // Make the kernel forget every unused inode (it sends FORGET), then look again:
    // tar, git and find expect the same numbers.
    fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
    assert_eq!(fs::metadata(f.m("d")).unwrap().ino(), dir);
    assert_eq!(fs::metadata(f.m("d/b")).unwrap().ino(), a);
    // Numbers are the server's files: the low 48 bits are the server's inode
    // number, so a file's number follows it everywhere — except a file this
    // mount created without waiting (d is leased), numbered before the
    // server said which file it is: the mount's own number, for good.
    fs::write(f.e("d/s"), b"S").unwrap();
    let s = fs::metadata(f.m("d/s")).unwrap().ino();
    assert_eq!(s & ((1 << 48) - 1), fs::metadata(f.e("d/s")).unwrap().ino());
    assert!(a < 1 << 48, "created behind: a number of the mount's own");
    // A new file in a removed one's place is a new file, whatever number the
    // server's filesystem gives it (it may reuse the old one, as on a local disk).
    fs::remove_file(f.m("d/a")).unwrap();
    fs::remove_file(f.m("d/b")).unwrap();
    fs::write(f.m("d/c"), b"C").unwrap();
    let c = fs::metadata(f.m("d/c")).unwrap();
    assert_eq!((c.len(), c.nlink()), (1, 1));
    assert_eq!(fs::read(f.m("d/c")).unwrap(), b"C");
}

fn missing_names_and_directory_changes_are_seen_correctly() {
    let f = fixture!();
    fs::create_dir(f.m("d")).unwrap();
    // A name looked up in vain is created through the mount: seen at once.
    assert_errno(fs::metadata(f.m("d/x")), libc::ENOENT);
    fs::write(f.m("d/x"), b"x").unwrap();
    assert_eq!(fs::read(f.m("d/x")).unwrap(), b"x");
    // The directory's attributes once a change has landed are the server's
    // (a create in leased d is sent behind; until answered, its times are
    // projected by this machine's clock).
    for name in ["y", "z"] {
        fs::write(f.m(&format!("d/{name}")), b"").unwrap();
        common::fsync_dir(&f.m("d"));
        let here = fs::metadata(f.m("d")).unwrap();
        let there = fs::metadata(f.e("d")).unwrap();
        assert_eq!(
            (here.mtime(), here.mtime_nsec(), here.nlink()),
            (there.mtime(), there.mtime_nsec(), there.nlink())
        );
    }
    fs::remove_file(f.m("d/y")).unwrap();
    // Sent behind (d is leased): once it has landed, the server's times show.
    common::fsync_dir(&f.m("d"));
    let here = fs::metadata(f.m("d")).unwrap();
    let there = fs::metadata(f.e("d")).unwrap();
    assert_eq!(
        (here.mtime(), here.mtime_nsec()),
        (there.mtime(), there.mtime_nsec())
    );
    // A name created on the server behind the mount's back appears once the
    // (1 s) entry timeout of the remembered miss has run out.
    assert_errno(fs::metadata(f.m("d/late")), libc::ENOENT);
    fs::write(f.e("d/late"), b"late").unwrap();
    let start = std::time::Instant::now();
    while fs::metadata(f.m("d/late")).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a file created on the server stayed invisible"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attributes_after_a_change_match_the_server_at_once() {
    let f = fixture!();
    let same = |rel: &str| {
        let here = fs::symlink_metadata(f.m(rel)).unwrap();
        let there = fs::symlink_metadata(f.e(rel)).unwrap();
        assert_eq!(
            (here.nlink(), here.ctime(), here.ctime_nsec(), here.len()),
            (
                there.nlink(),
                there.ctime(),
                there.ctime_nsec(),
                there.len()
            ),
            "{rel}"
        );
    };
    fs::write(f.m("a"), b"data").unwrap();
    fs::read(f.m("a")).unwrap();
    same("a");
    std::thread::sleep(Duration::from_millis(20));
    fs::hard_link(f.m("a"), f.m("b")).unwrap();
    same("a");
    std::thread::sleep(Duration::from_millis(20));
    fs::remove_file(f.m("b")).unwrap();
    same("a");
    std::thread::sleep(Duration::from_millis(20));
    fs::rename(f.m("a"), f.m("c")).unwrap();
    same("c");
    std::thread::sleep(Duration::from_millis(20));
    fs::set_permissions(f.m("c"), fs::Permissions::from_mode(0o600)).unwrap();
    same("c");
    let mut w = OpenOptions::new().append(true).open(f.m("c")).unwrap();
    w.write_all(b"more").unwrap();
    drop(w);
    same("c");
}

fn setuid_and_setgid_are_dropped_as_on_a_local_disk() {
    if !common::require_root() {
        return;
    }
    let f = fixture!(Setup {
        allow_other: true,
        ..Setup::default()
    });
    // nobody must be able to reach the mount
    fs::set_permissions(f.temp(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&f.mnt, fs::Permissions::from_mode(0o777)).unwrap();
    let mode_here = |rel: &str| fs::metadata(f.m(rel)).unwrap().mode() & 0o7777;
    let mode_there = |rel: &str| fs::metadata(f.e(rel)).unwrap().mode() & 0o7777;
    let path = f.m("s");
    let p = path.to_str().unwrap();
    fs::write(&path, b"x").unwrap();

    // A write by another user drops both (setgid because group-executable)...
    fs::set_permissions(&path, fs::Permissions::from_mode(0o6777)).unwrap();
    let (ok, err) = as_nobody(&["sh", "-c", &format!("echo more >> {p}")]);
    assert!(ok, "{err}");
    assert_eq!((mode_here("s"), mode_there("s")), (0o777, 0o777));
    // ...and setgid without group execute (a mandatory locking mark) goes or
    // stays as the kernel decides for a writer outside the file's group (Linux
    // 6.2 and later drop it): the server writes as nobody, so its kernel
    // decides as for a local file written by nobody.
    let local = f.temp().join("local");
    fs::write(&local, b"x").unwrap();
    for file in [&path, &local] {
        fs::set_permissions(file, fs::Permissions::from_mode(0o2767)).unwrap();
        let (ok, err) = as_nobody(&["sh", "-c", &format!("echo more >> {}", file.display())]);
        assert!(ok, "{err}");
    }
    let on_a_local_disk = fs::metadata(&local).unwrap().mode() & 0o7777;
    assert_eq!(
        (mode_here("s"), mode_there("s")),
        (on_a_local_disk, on_a_local_disk)
    );
    // Root (CAP_FSETID) keeps them when writing or truncating.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o4777)).unwrap();
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"root")
        .unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1)
        .unwrap();
    assert_eq!((mode_here("s"), mode_there("s")), (0o4777, 0o4777));
    // A truncation by another user drops setuid.
    let (ok, err) = as_nobody(&["truncate", "-s", "0", p]);
    assert!(ok, "{err}");
    assert_eq!((mode_here("s"), mode_there("s")), (0o777, 0o777));
    // chown drops them, even by root.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    assert_eq!((mode_here("s"), mode_there("s")), (0o755, 0o755));
}

/// Truncating a program while it runs is refused (ETXTBSY), as on a local
/// disk, and leaves it whole on the server. With FUSE's atomic O_TRUNC the
/// server truncated the file at the open, before the kernel refused it.
fn a_running_program_is_not_truncated_by_an_open() {
    let f = fixture!();
    fs::create_dir(f.m("bin")).unwrap();
    let program = f.m("bin/sleep");
    fs::copy("/bin/sleep", &program).unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    // Created behind (the mount made "bin"): fsync says it has landed.
    File::open(&program).unwrap().sync_all().unwrap();
    let size = fs::metadata("/bin/sleep").unwrap().len();
    assert_eq!(fs::metadata(f.e("bin/sleep")).unwrap().len(), size);
    let mut running = std::process::Command::new(&program)
        .arg("10")
        .spawn()
        .unwrap();
    for (flags, what) in [
        (libc::O_WRONLY, "O_WRONLY"),
        (libc::O_RDWR, "O_RDWR"),
        (libc::O_RDONLY | libc::O_TRUNC, "O_RDONLY|O_TRUNC"),
    ] {
        let opened = OpenOptions::new()
            .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
            .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
            .custom_flags(flags & libc::O_TRUNC)
            .open(&program);
        assert_errno(opened.map(drop), libc::ETXTBSY);
        assert_eq!(
            fs::metadata(f.e("bin/sleep")).unwrap().len(),
            size,
            "{what} changed the program on the server"
        );
    }
    running.kill().unwrap();
    running.wait().unwrap();
}

tests! {
    a_running_program_is_not_truncated_by_an_open => [Fuse],
    create_write_read_at_offsets => [Fuse],
    large_sequential_write_and_read_back => [Fuse],
    sparse_file_beyond_4_gib => [Fuse],
    seek_and_append => [Fuse],
    truncate_grow_and_shrink => [Fuse],
    mkdir_readdir_rmdir => [Fuse],
    a_directory_of_thousands_lists_completely => [Fuse],
    errors_reach_the_application => [Fuse],
    permissions_are_checked_against_the_remote_owner_and_mode => [Fuse, Root],
    a_full_disk_is_enospc => [Fuse, Root],
    rename_files_and_directories => [Fuse],
    rename_over_an_open_file_keeps_it_readable => [Fuse],
    unlinked_open_file_stays_usable => [Fuse],
    symlinks_are_stored_and_read_as_written => [Fuse],
    hard_links => [Fuse],
    hard_links_are_one_inode_in_the_mount => [Fuse],
    chmod_utimens_chown => [Fuse],
    special_files_on_the_server_do_not_block => [Fuse],
    statfs_shows_the_servers_filesystem => [Fuse],
    fsync_and_fdatasync => [Fuse],
    changes_on_the_server_appear_after_the_attribute_timeout => [Fuse],
    read_only_server_answers_erofs => [Fuse],
    read_only_server_refuses_writes_from_a_read_write_client => [Fuse],
    read_only_mount_refuses_changes => [Fuse],
    plain_readdir_without_readdirplus => [Fuse],
    mode_bits_are_created_as_asked => [Fuse],
    new_nodes_in_a_setgid_directory_keep_its_group => [Fuse, Root],
    rename_noreplace_and_exchange => [Fuse],
    unix_sockets_can_be_bound_inside_the_mount => [Fuse],
    inode_numbers_are_stable_and_shared_by_hard_links => [Fuse, Root],
    missing_names_and_directory_changes_are_seen_correctly => [Fuse],
    attributes_after_a_change_match_the_server_at_once => [Fuse],
    setuid_and_setgid_are_dropped_as_on_a_local_disk => [Fuse, Root],
}
