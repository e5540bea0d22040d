//! Two mounts of one export, and many requests at once.

mod common;

use common::Setup;
use std::fs;
use std::io::Write;
use std::time::Duration;

#[test]
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

#[test]
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

#[test]
fn a_slow_request_does_not_block_a_quick_one() {
    // A 64 MiB file read in 1 MiB requests while another thread stats in a loop:
    // both complete, and the stats do not wait for the whole read.
    let f = fixture!();
    fs::write(f.e("big"), vec![7u8; 64 << 20]).unwrap();
    fs::write(f.e("small"), b"s").unwrap();
    let big = f.m("big");
    let reader = std::thread::spawn(move || fs::read(big).unwrap().len());
    for _ in 0..200 {
        assert_eq!(fs::metadata(f.m("small")).unwrap().len(), 1);
    }
    assert_eq!(reader.join().unwrap(), 64 << 20);
}
