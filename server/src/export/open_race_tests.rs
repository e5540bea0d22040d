//! `Open` racing a rename that swaps the file for a FIFO or a device node: the
//! server must never open the node swapped in. Every open of those nodes is
//! seen through inotify (`IN_OPEN` is reported for any open of the inode,
//! whatever its name by then), so the test counts them.

use super::tests::{fixture, p, within_seconds};
use super::*;
use ferry_common::FileKind;
use std::ffi::CStr;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long the renamer races the opens.
const RACE: Duration = Duration::from_secs(3);

/// An inotify instance watching nodes for being opened.
struct OpenWatch(OwnedFd);

impl OpenWatch {
    fn new() -> OpenWatch {
        // SAFETY: plain flags; the descriptor is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", Errno::last());
        // SAFETY: a new descriptor nothing else owns.
        OpenWatch(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Watches the inode `path` names now (the watch follows the inode).
    fn add(&self, path: &Path) {
        let c_path = sys::cstring(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        let wd = unsafe {
            libc::inotify_add_watch(
                self.0.as_raw_fd(),
                c_path.as_ptr(),
                libc::IN_OPEN | libc::IN_DONT_FOLLOW,
            )
        };
        assert!(wd >= 0, "inotify_add_watch: {}", Errno::last());
    }

    /// How many opens were reported since the last call.
    fn opens(&self) -> usize {
        let mut count = 0;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: the pointer and length describe `buf`.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return count;
            }
            let mut at = 0;
            while at < n as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes
                // with the byte buffer's alignment.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                if event.mask & libc::IN_OPEN != 0 {
                    count += 1;
                }
                at += std::mem::size_of::<libc::inotify_event>() + event.len as usize;
            }
        }
    }
}

/// Swaps the nodes at the absolute paths `a` and `b` (`RENAME_EXCHANGE`).
fn exchange(a: &CStr, b: &CStr) {
    // SAFETY: valid C strings; renameat2 takes plain integers otherwise.
    unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
}

#[test]
fn an_open_never_reaches_a_fifo_or_device_swapped_in_for_the_file() {
    within_seconds(60, || {
        let fx = fixture();
        let dir = fx.export_dir();
        fs::write(dir.join("race"), "data").unwrap();
        let fifo = dir.join("fifo");
        let c_fifo = sys::cstring(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o666) }, 0);
        let mut swapped = vec![fifo];
        // A device node needs privilege; /dev/null's numbers keep an open harmless.
        let null = p("null");
        if fx
            .export
            .mknod(&null, libc::S_IFCHR | 0o666, libc::makedev(1, 3))
            .is_ok()
        {
            swapped.push(dir.join("null"));
        } else {
            eprintln!("not root: racing a FIFO only");
        }

        let watch = OpenWatch::new();
        for node in &swapped {
            watch.add(node);
        }
        // The detector sees a real open, and does not count what the server
        // does to look at a node without opening it.
        for node in &swapped {
            let c_node = sys::cstring(node.as_os_str().as_bytes()).unwrap();
            drop(sys::open(&c_node, libc::O_PATH).unwrap());
        }
        let name = p(swapped[0].file_name().unwrap().to_str().unwrap());
        fx.export.stat(&name).unwrap();
        assert_eq!(watch.opens(), 0, "O_PATH and stat are no opens");
        drop(sys::open(&c_fifo, libc::O_RDONLY | libc::O_NONBLOCK).unwrap());
        assert_eq!(watch.opens(), 1, "inotify reports a real open");

        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicUsize::new(0));
        let racer = {
            let stop = stop.clone();
            let swaps = swaps.clone();
            let file = sys::cstring(dir.join("race").as_os_str().as_bytes()).unwrap();
            let others: Vec<CString> = swapped
                .iter()
                .map(|n| sys::cstring(n.as_os_str().as_bytes()).unwrap())
                .collect();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for other in &others {
                        exchange(&file, other);
                        swaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let race = p("race");
        let (mut opened, mut refused) = (0usize, 0usize);
        let deadline = Instant::now() + RACE;
        while Instant::now() < deadline {
            for flags in [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR] {
                let outcomes = [
                    fx.export.open_file(&race, flags),
                    fx.export.create(&race, flags, 0o644),
                ];
                for outcome in outcomes {
                    match outcome {
                        Ok((file, attr)) => {
                            assert_eq!(attr.kind, FileKind::File);
                            assert_eq!(file.attr().unwrap().kind, FileKind::File);
                            opened += 1;
                        }
                        Err(e) => {
                            assert_eq!(e, Errno::new(libc::ENXIO), "flags {flags:o}");
                            refused += 1;
                        }
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
        assert!(swaps.load(Ordering::Relaxed) > 1000, "the renamer ran");
        assert!(
            opened > 0 && refused > 0,
            "both sides of the race were seen: {opened} opened, {refused} refused"
        );
        assert_eq!(
            watch.opens(),
            0,
            "the server opened a FIFO or device swapped in for the file"
        );
    });
}
