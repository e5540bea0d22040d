//! The mount's memory follows what the kernel holds: inodes the kernel forgets
//! leave the table (files removed, or dropped from the kernel's caches), while
//! their numbers stay what they were.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

const FILES: usize = 1000;

/// Waits until the mount holds at most `most` inodes (the kernel's forgets
/// arrive asynchronously); answers how many it holds then.
fn settles_to(f: &common::Fixture, most: usize) -> usize {
    let started = Instant::now();
    let mut asked = None;
    loop {
        let held = f.core(0).inodes_held();
        if held <= most || started.elapsed() > Duration::from_secs(20) {
            eprintln!("{held} inodes held after {:?}", started.elapsed());
            return held;
        }
        // Ask the kernel to free the inodes nobody uses (as memory pressure
        // would), now and then: it is the whole machine's cache.
        if asked.is_none_or(|at: Instant| at.elapsed() > Duration::from_secs(2)) {
            fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
            asked = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn the_mount_forgets_what_the_kernel_forgets() {
    if !common::require_root() {
        return;
    }
    let f = fixture!();
    let base = f.core(0).inodes_held();
    fs::create_dir(f.m("d")).unwrap();
    // Files created and removed: the kernel forgets each once it is gone.
    for round in 0..2 {
        // Kept open while counted: another test asking the kernel to free
        // unused inodes (as `settles_to` does) cannot take them meanwhile.
        let open: Vec<fs::File> = (0..FILES)
            .map(|i| {
                let mut file = fs::File::create(f.m(&format!("d/{round}-{i}"))).unwrap();
                file.write_all(b"x").unwrap();
                file
            })
            .collect();
        assert!(
            f.core(0).inodes_held() >= base + FILES,
            "the kernel holds them"
        );
        drop(open);
        for i in 0..FILES {
            fs::remove_file(f.m(&format!("d/{round}-{i}"))).unwrap();
        }
    }
    let held = settles_to(&f, base + 10);
    assert!(
        held <= base + 10,
        "{held} inodes held after removing all, {base} before"
    );

    // Files kept, and dropped from the kernel's caches: gone from the table
    // too, and their numbers the same when they are looked up again.
    let mut numbers = BTreeMap::new();
    for i in 0..FILES {
        let path = f.m(&format!("d/kept-{i}"));
        fs::write(&path, b"y").unwrap();
        numbers.insert(i, fs::metadata(&path).unwrap().ino());
    }
    assert!(f.core(0).inodes_held() >= base + FILES);
    let held = settles_to(&f, base + 10);
    assert!(
        held <= base + 10,
        "{held} inodes held after drop_caches, {base} before"
    );
    for (i, ino) in &numbers {
        let again = fs::metadata(f.m(&format!("d/kept-{i}"))).unwrap().ino();
        assert_eq!(again, *ino, "d/kept-{i} changed its number");
    }
}

tests! {
    the_mount_forgets_what_the_kernel_forgets => [Fuse, Root],
}
