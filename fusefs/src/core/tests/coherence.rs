//! The lease and the server's notices, against a real server in this process:
//! caches live long while the server tells of changes; a change made through
//! another client, or by a process on the server, reaches this core's caches
//! and the kernel's; an answer crossed by a notice is invalidated again; a
//! break or a reset drops everything and the short timeout holds until the
//! next subscription.

use super::*;
use crate::client::ConnEvent;
use ferry_common::proto::{Change, Notice};
use ferry_common::RelPath;

/// A harness whose caches live one second without a lease, a minute with one,
/// once its first connection is subscribed.
fn leased() -> Harness {
    leased_with(|_| {})
}

/// [`leased`], serving an export `setup` fills before the server starts: the
/// server's watch then has no news of the setup that could arrive in the
/// middle of a test.
fn leased_with(setup: impl FnOnce(&std::path::Path)) -> Harness {
    let opts = FsOptions {
        attr_timeout: Duration::from_secs(1),
        lease: Duration::from_secs(60),
        ..FsOptions::default()
    };
    let h = Harness::serving(opts, |config| {
        setup(config.root.as_deref().expect("the default export"))
    });
    until(|| h.core.leased(), "the lease");
    h
}

/// Waits (at most [`PATIENCE`]) until `cond` holds.
#[track_caller]
fn until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "waited in vain for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Harness {
    /// Whether the kernel was asked to drop entry `name` of `dir`.
    fn entry_dropped(&self, dir: u64, name: &str) -> bool {
        lock(&self.kernel.entries).contains(&(dir, name.into()))
    }

    /// Whether the kernel was asked to drop the attributes (`"attrs"`: alone
    /// or with the data) or also the data (`"data"`) of `ino`.
    fn inode_dropped(&self, what: &'static str, ino: u64) -> bool {
        let asked = lock(&self.kernel.asked);
        asked.contains(&(what, ino)) || (what == "attrs" && asked.contains(&("data", ino)))
    }

    fn forget_kernel_asks(&self) {
        lock(&self.kernel.asked).clear();
        lock(&self.kernel.entries).clear();
    }

    fn caller_owner(&self) -> Caller {
        self.me.clone()
    }
}

fn about_a_minute(ttl: Duration) -> bool {
    ttl > Duration::from_secs(50) && ttl <= Duration::from_secs(60)
}

#[test]
fn under_a_lease_caches_live_long_and_a_change_elsewhere_ends_them() {
    let h = leased_with(|export| std::fs::write(export.join("f"), b"one").expect("a file"));
    let Ok(Lookup::Found(entry)) = h.lookup(ROOT_INO, "f") else {
        panic!("lookup")
    };
    assert!(about_a_minute(entry.ttl), "{:?}", entry.ttl);
    // Answered from the cache, for long.
    let before = h.waited();
    let attrs = wait(|d| h.core.getattr(&h.me, entry.ino, None, d)).expect("getattr");
    assert!(about_a_minute(attrs.ttl), "{:?}", attrs.ttl);
    assert_eq!(h.waited(), before, "no round trip");
    // Another client changes the mode: the kernel and the core hear of it.
    let other = h.another_client();
    let ino = match wait(|d| other.lookup(&h.me, ROOT_INO, OsStr::new("f"), d)) {
        Ok(Lookup::Found(e)) => e.ino,
        other => panic!("{other:?}"),
    };
    let chmod = AttrChanges {
        mode: Some(0o600),
        ..AttrChanges::default()
    };
    let caller = h.caller_owner();
    wait(|d| other.setattr(&caller, ino, None, chmod, d)).expect("chmod elsewhere");
    until(|| h.inode_dropped("attrs", entry.ino), "the notice");
    // A file's entry goes too (the kernel may be taking in an older answer).
    assert!(h.entry_dropped(ROOT_INO, "f"));
    assert_eq!(h.getattr(entry.ino).map(|a| a.perm), Ok(0o600));
    assert!(h.waited() > before, "asked the server again");
}

#[test]
fn a_name_made_elsewhere_recalls_the_directory_lease_and_its_negative_entries() {
    let h = leased();
    let dir = h.mkdir(ROOT_INO, "d").expect("mkdir");
    assert!(
        h.core.dir_leased(dir.ino),
        "a directory made here is leased"
    );
    // Its missing names are answered here, for long, and remembered.
    let before = h.waited();
    match h.lookup(dir.ino, "x") {
        Ok(Lookup::Missing(ttl)) => assert!(about_a_minute(ttl), "{ttl:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.waited(), before);
    // Another client makes the name.
    let other = h.another_client();
    let d = match wait(|r| other.lookup(&h.me, ROOT_INO, OsStr::new("d"), r)) {
        Ok(Lookup::Found(e)) => e.ino,
        other => panic!("{other:?}"),
    };
    wait(|r| other.mkdir(&h.caller_owner(), d, OsStr::new("x"), 0o755, r)).expect("mkdir x");
    until(
        || h.entry_dropped(dir.ino, "x"),
        "the negative entry taken back",
    );
    assert!(
        !h.core.dir_leased(dir.ino),
        "the lease on its names is recalled"
    );
    assert!(matches!(h.lookup(dir.ino, "x"), Ok(Lookup::Found(_))));
}

#[test]
fn a_change_by_a_process_on_the_server_reaches_the_core() {
    let h = leased();
    std::fs::write(h.on_disk("f"), b"one").expect("a file");
    let f = h.ino(ROOT_INO, "f");
    assert!(matches!(h.lookup(ROOT_INO, "new"), Ok(Lookup::Missing(_))));
    // Listed in full: the root's names are leased — once the watch's news
    // of the setup (which may cross the listing, and recall it) is in.
    until(
        || {
            h.list(ROOT_INO);
            h.core.dir_leased(ROOT_INO)
        },
        "the root listed in full and leased",
    );
    h.forget_kernel_asks();
    std::fs::write(h.on_disk("f"), b"changed, longer").expect("write on the server");
    until(|| h.inode_dropped("data", f), "the file's data dropped");
    assert_eq!(h.getattr(f).map(|a| a.size), Ok(15));
    std::fs::write(h.on_disk("new"), b"").expect("create on the server");
    until(
        || h.entry_dropped(ROOT_INO, "new"),
        "the negative entry taken back",
    );
    assert!(!h.core.dir_leased(ROOT_INO));
    assert!(matches!(h.lookup(ROOT_INO, "new"), Ok(Lookup::Found(_))));
}

#[test]
fn a_rename_elsewhere_keeps_inode_numbers() {
    let h = leased_with(|export| {
        std::fs::create_dir(export.join("a")).expect("a dir");
        std::fs::write(export.join("a/f"), b"x").expect("a file");
    });
    let a = h.ino(ROOT_INO, "a");
    let f = h.ino(a, "f");
    let other = h.another_client();
    let oa = match wait(|r| other.lookup(&h.me, ROOT_INO, OsStr::new("a"), r)) {
        Ok(Lookup::Found(e)) => e.ino,
        other => panic!("{other:?}"),
    };
    let _ = oa;
    wait(|r| {
        other.rename(
            &h.me,
            ROOT_INO,
            OsStr::new("a"),
            ROOT_INO,
            OsStr::new("b"),
            0,
            r,
        )
    })
    .expect("rename elsewhere");
    // The two names are dropped one after the other, on the notice's thread.
    until(|| h.entry_dropped(ROOT_INO, "a"), "the old name dropped");
    until(|| h.entry_dropped(ROOT_INO, "b"), "the new name dropped");
    // The directory and what is below it keep their numbers, at the new path.
    assert_eq!(h.core.path_of(a), Ok(RelPath::parse("b").expect("path")));
    assert_eq!(h.core.path_of(f), Ok(RelPath::parse("b/f").expect("path")));
    assert_eq!(h.ino(ROOT_INO, "b"), a);
    assert_eq!(h.ino(a, "f"), f);
}

#[test]
fn an_answer_crossed_by_a_notice_is_invalidated_again() {
    // Made before the lease: the server's own notices of their creation would
    // otherwise come at any time below, and drop what it checks is kept.
    let h = leased_with(|export| {
        std::fs::write(export.join("f"), b"x").expect("a file");
        std::fs::write(export.join("g"), b"x").expect("a file");
    });
    let f = h.ino(ROOT_INO, "f");
    let epoch = h.core.client().current_epoch().expect("connected");
    let f_path = RelPath::parse("f").expect("path");
    // A request sent before a notice about what it concerns...
    let mark = h.core.mark();
    h.core.on_event(ConnEvent::Notice(
        epoch,
        Notice::Changed(vec![Change::Name {
            now: None,
            path: f_path.clone(),
        }]),
    ));
    h.forget_kernel_asks();
    // ...has what it brought invalidated again once it is stored.
    h.core.settle(
        mark,
        Touched {
            paths: vec![f_path],
            inos: Vec::new(),
        },
    );
    assert!(h.entry_dropped(ROOT_INO, "f"));
    // One about something else leaves it alone.
    let g = h.ino(ROOT_INO, "g");
    h.forget_kernel_asks();
    let mark = h.core.mark();
    h.core.on_event(ConnEvent::Notice(
        epoch,
        Notice::Changed(vec![Change::Name {
            now: None,
            path: RelPath::parse("elsewhere").expect("path"),
        }]),
    ));
    h.core.settle(mark, Touched::default().with_ino(Some(g)));
    assert!(!h.inode_dropped("data", g) && !h.inode_dropped("attrs", g));
    assert!(!h.entry_dropped(ROOT_INO, "g"));
    let _ = f;
}

#[test]
fn a_reset_drops_everything_and_the_lease_goes_on() {
    let h = leased_with(|export| std::fs::write(export.join("f"), b"x").expect("a file"));
    let f = h.ino(ROOT_INO, "f");
    assert!(matches!(
        h.lookup(ROOT_INO, "missing"),
        Ok(Lookup::Missing(_))
    ));
    h.list(ROOT_INO);
    h.forget_kernel_asks();
    let epoch = h.core.client().current_epoch().expect("connected");
    h.core
        .on_event(ConnEvent::Notice(epoch, Notice::Reset { lease_secs: 60 }));
    // Every name, inode and negative entry the kernel may hold.
    assert!(h.entry_dropped(ROOT_INO, "f"));
    assert!(h.entry_dropped(ROOT_INO, "missing"));
    assert!(h.inode_dropped("data", f));
    assert!(h.inode_dropped("data", ROOT_INO));
    assert!(!h.core.dir_leased(ROOT_INO));
    let before = h.waited();
    h.getattr(f).expect("getattr");
    assert_eq!(h.waited(), before + 1, "attributes asked for again");
    assert!(h.core.leased());
}

#[test]
fn a_broken_connection_ends_the_lease_until_the_next_one() {
    let mut h = leased();
    std::fs::write(h.on_disk("f"), b"x").expect("a file");
    let f = h.ino(ROOT_INO, "f");
    h.forget_kernel_asks();
    h.stop_server();
    // The lease ends with the connection, and every cache goes.
    until(|| !h.core.leased(), "the lease to end");
    until(|| h.inode_dropped("data", f), "every cache dropped");
    assert!(h.entry_dropped(ROOT_INO, "f"));
    assert_eq!(
        h.getattr(f),
        Err(Errno::EIO),
        "nothing answered from a cache"
    );
    // Back: long-lived answers once the server answers the new subscription.
    h.start_server();
    until(
        || h.getattr(f).is_ok() && h.core.leased(),
        "the next connection's lease",
    );
    match h.lookup(ROOT_INO, "f") {
        Ok(Lookup::Found(e)) => assert!(about_a_minute(e.ttl), "{:?}", e.ttl),
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_a_lease_everything_lives_the_attribute_timeout() {
    let h = Harness::with(FsOptions {
        attr_timeout: Duration::from_secs(1),
        lease: Duration::ZERO,
        ..FsOptions::default()
    });
    std::fs::write(h.on_disk("f"), b"x").expect("a file");
    let Ok(Lookup::Found(entry)) = h.lookup(ROOT_INO, "f") else {
        panic!("lookup")
    };
    assert!(entry.ttl <= Duration::from_secs(1));
    assert!(!h.core.leased());
    let sent: Vec<&str> = h
        .core
        .client()
        .stats()
        .sent_by_kind()
        .iter()
        .map(|(op, _)| *op)
        .collect();
    assert!(!sent.contains(&"subscribe"), "never asked for notices");
}

#[test]
fn a_listing_changed_elsewhere_is_dropped_from_the_kernel() {
    let h = leased_with(|export| std::fs::write(export.join("f"), b"x").expect("a file"));
    assert_eq!(names(h.list(ROOT_INO)), ["f"]);
    assert!(h.core.dir_leased(ROOT_INO), "listed in full, leased");
    h.forget_kernel_asks();
    std::fs::write(h.on_disk("g"), b"x").expect("a file made on the server");
    until(|| !h.core.dir_leased(ROOT_INO), "the listing recalled");
    // The kernel's copy of the listing goes with the directory's pages.
    until(
        || h.inode_dropped("data", ROOT_INO),
        "the kernel's listing dropped",
    );
    assert_eq!(names(h.list(ROOT_INO)), ["f", "g"]);
}

#[test]
fn a_directory_below_a_doubted_name_is_still_reached_by_inode() {
    let h = leased_with(|export| {
        std::fs::create_dir_all(export.join("a/b")).expect("directories");
        std::fs::write(export.join("a/b/f"), b"x").expect("a file");
    });
    let a = h.ino(ROOT_INO, "a");
    let b = h.ino(a, "b");
    // The server says the name `a` changed, and still leads to the same
    // server file (which could be another with the same number): what is
    // below it is doubted, and the kernel's entries there go...
    let id = lock(&h.core.inodes).file_id(a).expect("a server file");
    let epoch = h.core.client().current_epoch().expect("connected");
    h.core.on_event(ConnEvent::Notice(
        epoch,
        Notice::Changed(vec![Change::Name {
            path: RelPath::parse("a").expect("path"),
            now: Some(ferry_common::proto::NodeId {
                dev: id.dev,
                ino: id.ino,
            }),
        }]),
    ));
    assert!(h.entry_dropped(a, "b"));
    // ...but a process inside `a/b` (which the kernel reaches by inode) still
    // lists it, looks names up in it, and stats it.
    assert_eq!(names(h.list(b)), ["f"]);
    assert!(matches!(h.lookup(b, "f"), Ok(Lookup::Found(_))));
    assert!(h.getattr(b).is_ok());
}
