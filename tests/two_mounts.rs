//! Two mounts of one export, and many requests at once.

mod common;

use common::Setup;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

fn two_mounts_see_each_others_changes_after_the_attribute_timeout() {
    let setup = Setup {
        attr_timeout: Duration::from_millis(300),
        ..Setup::default()
    };
    let mut f = fixture!(setup.clone());
    let other = f.second_mount("mnt2", setup);
    fs::write(f.m("note"), b"from one").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fs::read(other.join("note")).unwrap(), b"from one");
    fs::write(other.join("note"), b"edited by two").unwrap();
    fs::create_dir(other.join("made-by-two")).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(fs::read(f.m("note")).unwrap(), b"edited by two");
    assert!(f.m("made-by-two").is_dir());
    fs::remove_file(f.m("note")).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(!other.join("note").exists());
}

fn many_threads_at_once() {
    let f = fixture!();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let dir = f.m(&format!("t{t}"));
            std::thread::spawn(move || {
                fs::create_dir(&dir).unwrap();
                for i in 0..100 {
                    let p = dir.join(format!("f{i}"));
                    let mut file = fs::File::create(&p).unwrap();
                    file.write_all(format!("{t}-{i}").repeat(100).as_bytes())
                        .unwrap();
                }
                for i in 0..100 {
                    let p = dir.join(format!("f{i}"));
                    assert_eq!(
                        fs::read_to_string(&p).unwrap(),
                        format!("{t}-{i}").repeat(100)
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a worker failed");
    }
    for t in 0..8 {
        assert_eq!(fs::read_dir(f.e(&format!("t{t}"))).unwrap().count(), 100);
    }
}

fn quick_requests_are_answered_during_a_large_read() {
    // A 256 MiB read in 1 MiB requests runs in one thread while another looks up
    // names that do not exist (never cached, so each one reaches the server).
    // Lookups must be answered while the read is still going, not after it.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let f = fixture!();
    fs::write(f.e("big"), vec![7u8; 256 << 20]).unwrap();
    let big = f.m("big");
    let reading = Arc::new(AtomicBool::new(true));
    let flag = reading.clone();
    let reader = std::thread::spawn(move || {
        let n = fs::read(big).unwrap().len();
        flag.store(false, Ordering::SeqCst);
        n
    });
    let mut answered_while_reading = 0;
    for i in 0..2000 {
        let err = fs::metadata(f.m(&format!("absent-{i}"))).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        if reading.load(Ordering::SeqCst) {
            answered_while_reading += 1;
        } else {
            break;
        }
    }
    assert_eq!(reader.join().unwrap(), 256 << 20);
    assert!(
        answered_while_reading > 0,
        "no lookup was answered while the read ran"
    );
}

fn a_name_removed_by_another_mount_is_looked_up_again_on_open() {
    // Long timeouts: the first mount trusts its cached entry throughout.
    let setup = Setup {
        attr_timeout: Duration::from_secs(60),
        ..Setup::default()
    };
    let mut f = fixture!(setup.clone());
    let other = f.second_mount("mnt2", setup);
    fs::write(f.m("journal"), b"old").unwrap();
    assert!(f.m("journal").exists());
    fs::remove_file(other.join("journal")).unwrap();
    // Without O_CREAT: ENOENT, as on a local disk (not ESTALE, not EIO).
    let err = fs::File::open(f.m("journal")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    // With O_CREAT: a new file, although the cached entry said it existed.
    fs::write(other.join("journal2"), b"old").unwrap();
    assert!(f.m("journal2").exists());
    fs::remove_file(other.join("journal2")).unwrap();
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(f.m("journal2"))
        .unwrap();
    file.write_all(b"new").unwrap();
    drop(file);
    assert_eq!(fs::read(f.e("journal2")).unwrap(), b"new");
}

fn a_hard_link_stays_usable_when_another_client_removes_its_other_name() {
    let mut f = fixture!();
    let other = f.second_mount("other", Setup::default());
    fs::write(f.m("a"), b"linked").unwrap();
    fs::hard_link(f.m("a"), f.m("b")).unwrap();
    // This mount knows both names, "b" the newest.
    assert_eq!(fs::read(f.m("b")).unwrap(), b"linked");
    assert_eq!(fs::read(f.m("a")).unwrap(), b"linked");
    fs::remove_file(other.join("b")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(fs::read(f.m("a")).unwrap(), b"linked");
    fs::set_permissions(f.m("a"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(f.e("a")).unwrap().mode() & 0o777, 0o600);
}

fn a_new_file_with_a_reused_inode_number_is_read_afresh() {
    let f = fixture!();
    let stamp = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    for round in 0..6 {
        let old = format!("old{round}");
        let new = format!("new{round}");
        fs::write(f.e(&old), b"AAAA").unwrap();
        File::options()
            .write(true)
            .open(f.e(&old))
            .unwrap()
            .set_modified(stamp)
            .unwrap();
        assert_eq!(fs::read(f.m(&old)).unwrap(), b"AAAA");
        // Behind the mount's back: the server's filesystem may give the new
        // file the old one's inode number; same size, same mtime.
        fs::remove_file(f.e(&old)).unwrap();
        fs::write(f.e(&new), b"BBBB").unwrap();
        File::options()
            .write(true)
            .open(f.e(&new))
            .unwrap()
            .set_modified(stamp)
            .unwrap();
        assert_eq!(fs::read(f.m(&new)).unwrap(), b"BBBB", "round {round}");
    }
}

tests! {
    two_mounts_see_each_others_changes_after_the_attribute_timeout => [Fuse],
    many_threads_at_once => [Fuse],
    quick_requests_are_answered_during_a_large_read => [Fuse],
    a_name_removed_by_another_mount_is_looked_up_again_on_open => [Fuse],
    a_hard_link_stays_usable_when_another_client_removes_its_other_name => [Fuse],
    a_new_file_with_a_reused_inode_number_is_read_afresh => [Fuse],
}
