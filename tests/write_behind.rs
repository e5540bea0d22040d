//! Write-behind keeps POSIX's promises: writes and the attribute changes after
//! them land in order, reads see them at once, and a failure the kernel was not
//! told of at write(2) is told at close(2) or fsync(2) — never lost.

mod common;

use common::Setup;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

/// close(2) with its result, which dropping a `File` throws away.
fn close(file: File) -> std::io::Result<()> {
    // SAFETY: the descriptor is owned by `file` and handed over here.
    if unsafe { libc::close(file.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes 4 MiB into a 1 MiB disk; returns the first write error, if any.
fn overfill(file: &mut File) -> std::io::Result<()> {
    let chunk = vec![7u8; 256 << 10];
    for _ in 0..16 {
        file.write_all(&chunk)?;
    }
    Ok(())
}

fn a_failed_write_is_reported_at_close_at_the_latest() {
    if !common::require_root() {
        return;
    }
    let disk = common::SmallDisk::new();
    let f = fixture!(Setup {
        export: Some(disk.path().to_path_buf()),
        // Written behind although the disk is small, as when another
        // client fills it after this mount last heard how much room it had.
        write_through_below: 0,
        ..Setup::default()
    });
    let mut file = File::create(f.m("fill")).unwrap();
    let result = overfill(&mut file).and_then(|()| close(file));
    common::assert_errno(result, libc::ENOSPC);
    // Told once: the mount goes on working, and freed space is usable again.
    fs::remove_file(f.m("fill")).unwrap();
    let mut file = File::create(f.m("small")).unwrap();
    file.write_all(b"fits").unwrap();
    close(file).unwrap();
    assert_eq!(fs::read(f.e("small")).unwrap(), b"fits");
}

fn a_failed_write_is_reported_by_fsync() {
    if !common::require_root() {
        return;
    }
    let disk = common::SmallDisk::new();
    let f = fixture!(Setup {
        export: Some(disk.path().to_path_buf()),
        // Written behind although the disk is small, as when another
        // client fills it after this mount last heard how much room it had.
        write_through_below: 0,
        ..Setup::default()
    });
    let mut file = File::create(f.m("fill")).unwrap();
    let result = overfill(&mut file).and_then(|()| file.sync_all());
    common::assert_errno(result, libc::ENOSPC);
    // The error was handed over once; after freeing space the file syncs again.
    file.set_len(0).unwrap();
    file.write_all_at(b"again", 0).unwrap();
    file.sync_all().unwrap();
    close(file).unwrap();
    assert_eq!(fs::read(f.e("fill")).unwrap(), b"again");
}

/// Writes `chunk`-sized pieces until write(2) fails (or `limit` bytes are
/// written); answers how much was written and the failure.
fn write_until_refused(file: &mut File, chunk: usize, limit: u64) -> (u64, std::io::Error) {
    let data = vec![3u8; chunk];
    let mut written = 0u64;
    while written < limit {
        match file.write(&data) {
            Ok(n) => written += n as u64,
            Err(e) => return (written, e),
        }
    }
    panic!("{written} bytes written to a disk too small for them, with no error");
}

fn write_2_meets_enospc_on_a_full_export() {
    if !common::require_root() {
        return;
    }
    let disk = common::SmallDisk::of_mib(4);
    let f = fixture!(Setup {
        export: Some(disk.path().to_path_buf()),
        ..Setup::default()
    });
    // A program's write(2) is refused, as on a local disk: dd reports the
    // error writing, not closing.
    let dd = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", f.m("dd").display()))
        .args(["bs=64k", "count=256"])
        .output()
        .expect("run dd");
    let said = String::from_utf8_lossy(&dd.stderr);
    assert!(
        !dd.status.success(),
        "dd filled a 4 MiB disk with 16 MiB: {said}"
    );
    assert!(
        said.contains("error writing") && said.contains("No space left on device"),
        "dd did not meet ENOSPC at write(2): {said}"
    );
    fs::remove_file(f.m("dd")).unwrap();
    // The same through a file of this test's own: the refusal comes from
    // write(2), once the disk is full, and close has nothing left to report.
    let mut file = File::create(f.m("fill")).unwrap();
    let (written, refused) = write_until_refused(&mut file, 64 << 10, 16 << 20);
    assert_eq!(common::errno_of(&refused), libc::ENOSPC, "{refused}");
    assert!(
        written > 3 << 20 && written <= 4 << 20,
        "{written} bytes written to a 4 MiB disk"
    );
    close(file).expect("close after write(2) reported the full disk");
    assert_eq!(fs::metadata(f.e("fill")).unwrap().len(), written);
    // Freed space is used again.
    fs::remove_file(f.m("fill")).unwrap();
    let mut file = File::create(f.m("small")).unwrap();
    file.write_all(b"fits").unwrap();
    close(file).unwrap();
    assert_eq!(fs::read(f.e("small")).unwrap(), b"fits");
}

fn write_2_meets_enospc_when_an_export_with_room_fills_up() {
    if !common::require_root() {
        return;
    }
    // Room for write-behind at first (more than the mount's low-water mark
    // of free space), then not.
    let disk = common::SmallDisk::of_mib(96);
    let f = fixture!(Setup {
        export: Some(disk.path().to_path_buf()),
        ..Setup::default()
    });
    let mut file = File::create(f.m("fill")).unwrap();
    let (written, refused) = write_until_refused(&mut file, 1 << 20, 256 << 20);
    eprintln!("write(2) refused after {written} bytes: {refused}");
    assert_eq!(common::errno_of(&refused), libc::ENOSPC, "{refused}");
    assert!(
        written > 80 << 20 && written <= 96 << 20,
        "{written} bytes written to a 96 MiB disk"
    );
    // Nothing answered early failed later: close has nothing to report.
    close(file).expect("close after write(2) reported the full disk");
    assert_eq!(fs::metadata(f.e("fill")).unwrap().len(), written);
}

fn a_lost_connection_fails_the_close_of_a_written_file() {
    let mut f = fixture!();
    let mut file = File::create(f.m("doomed")).unwrap();
    file.write_all(b"first").unwrap();
    f.stop_server();
    // The write may fail at once (EIO) or be taken and fail later; either way
    // the application hears of it before close returns.
    let result = file
        .write_all(&vec![1u8; 1 << 20])
        .and_then(|()| close(file));
    common::assert_errno(result, libc::EIO);
}

fn attribute_changes_land_after_the_writes_before_them() {
    let f = fixture!();
    let mtime = libc::timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 123_456_789,
    };
    // Big enough that the last write is still being written on the server when
    // the changes after it arrive.
    const SIZE: usize = (4 << 20) + 1000;
    for round in 0..10 {
        let name = format!("f{round}");
        // What tar does to every file it extracts.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(f.m(&name))
            .unwrap();
        (&file).write_all(&vec![b'x'; SIZE]).unwrap();
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            mtime,
        ];
        // SAFETY: a valid descriptor and two timespecs.
        assert_eq!(
            unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) },
            0
        );
        let me = f.export.metadata().unwrap();
        std::os::unix::fs::fchown(&file, Some(me.uid()), Some(me.gid())).unwrap();
        file.set_permissions(fs::Permissions::from_mode(0o640))
            .unwrap();
        // The kernel's view right away...
        let seen = fs::metadata(f.m(&name)).unwrap();
        assert_eq!((seen.len(), seen.mode() & 0o7777), (SIZE as u64, 0o640));
        assert_eq!(
            (seen.mtime(), seen.mtime_nsec()),
            (1_000_000_000, 123_456_789)
        );
        close(file).unwrap();
        // ...and the server's after close: the write did not bump the mtime
        // after futimens set it.
        let server = fs::metadata(f.e(&name)).unwrap();
        assert_eq!(server.len(), SIZE as u64);
        assert_eq!(server.mode() & 0o7777, 0o640);
        assert_eq!(
            (server.mtime(), server.mtime_nsec()),
            (1_000_000_000, 123_456_789),
            "round {round}"
        );
    }
}

fn overlapping_writes_land_in_program_order() {
    let f = fixture!();
    let a = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(f.m("o"))
        .unwrap();
    let b = OpenOptions::new().write(true).open(f.m("o")).unwrap();
    for round in 0..10u8 {
        // Through one handle, then through another, over the same bytes.
        a.write_all_at(&vec![round; 1 << 20], 0).unwrap();
        a.write_all_at(&[b'A'; 100], 10).unwrap();
        b.write_all_at(&vec![round + 100; 512 << 10], 256 << 10)
            .unwrap();
    }
    close(a).unwrap();
    close(b).unwrap();
    let data = fs::read(f.e("o")).unwrap();
    assert_eq!(data.len(), 1 << 20);
    assert!(data[..10].iter().all(|&x| x == 9));
    assert!(data[10..110].iter().all(|&x| x == b'A'));
    assert!(data[110..256 << 10].iter().all(|&x| x == 9));
    assert!(data[256 << 10..768 << 10].iter().all(|&x| x == 109));
    assert!(data[768 << 10..].iter().all(|&x| x == 9));
}

fn reads_and_truncation_see_the_writes_before_them() {
    let f = fixture!();
    let w = File::create(f.m("r")).unwrap();
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    w.write_all_at(&data, 0).unwrap();
    // O_DIRECT goes to the server, past the page cache.
    let r = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(f.m("r"))
        .unwrap();
    let mut back = vec![0u8; data.len()];
    r.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data, "a read overtook the writes before it");
    // A truncation does not overtake a write either.
    w.write_all_at(&[1u8; 4096], 8 << 20).unwrap();
    w.set_len(5).unwrap();
    close(w).unwrap();
    assert_eq!(fs::read(f.e("r")).unwrap(), &data[..5]);
}

// Regressions found in review: each of these lost data or an error once.

fn an_appending_write_lands_after_other_handles_writes() {
    let f = fixture!();
    for round in 0..5 {
        let name = format!("a{round}");
        let plain = File::create(f.m(&name)).unwrap();
        let appender = OpenOptions::new().append(true).open(f.m(&name)).unwrap();
        for i in 0..4u64 {
            plain.write_all_at(&vec![b'x'; 1 << 20], i << 20).unwrap();
        }
        (&appender).write_all(b"APPENDED").unwrap();
        close(plain).unwrap();
        close(appender).unwrap();
        let data = fs::read(f.e(&name)).unwrap();
        assert_eq!(data.len(), (4 << 20) + 8, "round {round}");
        assert!(data.ends_with(b"APPENDED"), "round {round}");
    }
}

fn a_truncating_open_lands_after_other_handles_writes() {
    let f = fixture!();
    for round in 0..5 {
        let name = format!("t{round}");
        let w = File::create(f.m(&name)).unwrap();
        w.write_all_at(&vec![b'x'; 8 << 20], 0).unwrap();
        let t = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(f.m(&name))
            .unwrap();
        close(w).unwrap();
        close(t).unwrap();
        assert_eq!(fs::metadata(f.e(&name)).unwrap().len(), 0, "round {round}");
    }
}

fn every_writing_handle_hears_of_a_failure_once() {
    if !common::require_root() {
        return;
    }
    let disk = common::SmallDisk::new();
    let f = fixture!(Setup {
        export: Some(disk.path().to_path_buf()),
        // Written behind although the disk is small, as when another
        // client fills it after this mount last heard how much room it had.
        write_through_below: 0,
        ..Setup::default()
    });
    let mut writer = File::create(f.m("fill")).unwrap();
    let other = OpenOptions::new().write(true).open(f.m("fill")).unwrap();
    let reader = File::open(f.m("fill")).unwrap();
    let failed = overfill(&mut writer);
    // A reader's fsync waits but takes nothing away; the other writer hears of
    // it at its close; the writer still hears of it at its own.
    reader.sync_all().unwrap();
    common::assert_errno(close(other), libc::ENOSPC);
    let result = failed.and_then(|()| close(writer));
    common::assert_errno(result, libc::ENOSPC);
}

fn a_lock_is_released_even_after_a_failed_write() {
    if !common::require_root() {
        return;
    }
    let disk = common::SmallDisk::new();
    let f = fixture!(Setup {
        export: Some(disk.path().to_path_buf()),
        // Written behind although the disk is small, as when another
        // client fills it after this mount last heard how much room it had.
        write_through_below: 0,
        ..Setup::default()
    });
    let mut writer = File::create(f.m("fill")).unwrap();
    // SAFETY: flock on a valid descriptor.
    assert_eq!(unsafe { libc::flock(writer.as_raw_fd(), libc::LOCK_EX) }, 0);
    let failed = overfill(&mut writer);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::flock(writer.as_raw_fd(), libc::LOCK_UN) }, 0);
    let second = File::open(f.m("fill")).unwrap();
    // SAFETY: as above.
    let got = unsafe { libc::flock(second.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(got, 0, "the lock was not released");
    common::assert_errno(failed.and_then(|()| close(writer)), libc::ENOSPC);
}

fn stat_and_listing_never_shrink_a_file_being_written() {
    let f = fixture!();
    for round in 0..8 {
        let name = format!("s{round}");
        let w = File::create(f.m(&name)).unwrap();
        w.write_all_at(&vec![b'y'; 8 << 20], 0).unwrap();
        let _ = fs::read_dir(&f.mnt).unwrap().count();
        assert_eq!(fs::metadata(f.m(&name)).unwrap().len(), 8 << 20);
        assert_eq!(w.metadata().unwrap().len(), 8 << 20);
        let mut last = [0u8; 16];
        w.sync_all().unwrap();
        File::open(f.m(&name))
            .unwrap()
            .read_exact_at(&mut last, (8 << 20) - 16)
            .unwrap();
        assert_eq!(last, [b'y'; 16]);
        close(w).unwrap();
    }
}

fn an_unlinked_file_being_written_has_no_links() {
    let f = fixture!();
    let w = File::create(f.m("gone")).unwrap();
    w.write_all_at(&vec![b'z'; 2 << 20], 0).unwrap();
    fs::remove_file(f.m("gone")).unwrap();
    assert_eq!(w.metadata().unwrap().nlink(), 0);
    w.write_all_at(b"more", 0).unwrap();
    close(w).unwrap();
}

fn a_capability_set_after_writing_is_kept() {
    if !common::require_root() {
        return;
    }
    let f = fixture!();
    // struct vfs_cap_data, revision 2: effective, permitted CAP_NET_BIND_SERVICE.
    let mut cap = Vec::new();
    cap.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    cap.extend_from_slice(&(1u32 << 10).to_le_bytes());
    cap.extend_from_slice(&[0u8; 12]);
    for round in 0..5 {
        let name = format!("bin{round}");
        let w = File::create(f.m(&name)).unwrap();
        w.write_all_at(&vec![0x90; 4 << 20], 0).unwrap();
        let c = std::ffi::CString::new(b"security.capability".to_vec()).unwrap();
        // SAFETY: valid descriptor, name and buffer.
        let set = unsafe {
            libc::fsetxattr(w.as_raw_fd(), c.as_ptr(), cap.as_ptr().cast(), cap.len(), 0)
        };
        assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
        close(w).unwrap();
        let path =
            std::ffi::CString::new(f.e(&name).into_os_string().into_encoded_bytes()).unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: valid path, name and buffer.
        let got = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(got, cap.len() as isize, "round {round}: capability lost");
    }
}

tests! {
    a_failed_write_is_reported_at_close_at_the_latest => [Fuse, Root],
    a_failed_write_is_reported_by_fsync => [Fuse, Root],
    write_2_meets_enospc_on_a_full_export => [Fuse, Root],
    write_2_meets_enospc_when_an_export_with_room_fills_up => [Fuse, Root],
    a_lost_connection_fails_the_close_of_a_written_file => [Fuse],
    attribute_changes_land_after_the_writes_before_them => [Fuse],
    overlapping_writes_land_in_program_order => [Fuse],
    reads_and_truncation_see_the_writes_before_them => [Fuse],
    an_appending_write_lands_after_other_handles_writes => [Fuse],
    a_truncating_open_lands_after_other_handles_writes => [Fuse],
    every_writing_handle_hears_of_a_failure_once => [Fuse, Root],
    a_lock_is_released_even_after_a_failed_write => [Fuse, Root],
    stat_and_listing_never_shrink_a_file_being_written => [Fuse],
    an_unlinked_file_being_written_has_no_links => [Fuse],
    a_capability_set_after_writing_is_kept => [Fuse, Root],
}
