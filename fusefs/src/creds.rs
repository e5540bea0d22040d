//! Who a request is made for: the [`Cred`] sent with it, which the server
//! checks permissions by (after mapping it, see the server's `identity`).
//!
//! - `ferry ls`, `get` and `put` send their own process's ids and groups
//!   ([`own`]).
//! - The mount sends its caller's: the kernel gives the file system uid and gid
//!   and the thread id of the process behind each FUSE request, but not its
//!   supplementary groups, which are read from `/proc/<pid>/status`
//!   ([`CallerCreds`]). That read costs tens of microseconds, as much as a
//!   round trip to the kernel, so its answer is kept for [`GROUPS_TTL`] per
//!   thread and ids. A process that may change its groups at will (one holding
//!   `CAP_SETGID`, like a test suite switching users) is read afresh every
//!   time: an unprivileged process cannot change its groups, so what is kept
//!   stays true until the thread ends (or, within the second, its id is reused
//!   by a process of the same user and group). Root's groups are never read:
//!   on the server a client's root is either squashed to the anonymous user,
//!   who gets none, or root, whose capabilities make them irrelevant.

use ferry_common::proto::Cred;
use ferry_common::sync::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a caller's groups are trusted without reading them again.
pub const GROUPS_TTL: Duration = Duration::from_secs(1);
/// Callers remembered at most; beyond it the stale ones go, or all of them.
const MAX_CALLERS: usize = 4096;
/// `CAP_SETGID`'s bit in a capability set: a process with it in its permitted
/// set can change its supplementary groups whenever it likes.
const CAP_SETGID: u32 = 6;

/// This process's own credential: its effective ids and supplementary groups.
pub fn own() -> Cred {
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    Cred {
        uid,
        gid,
        groups: own_groups(),
    }
}

/// `getgroups(2)`; empty if it fails (the server then knows fewer groups,
/// which can only refuse more, never allow more).
fn own_groups() -> Vec<u32> {
    for _ in 0..4 {
        // SAFETY: a size of 0 asks for the count and writes nothing.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let Ok(len) = usize::try_from(n) else {
            break;
        };
        let mut groups = vec![0 as libc::gid_t; len];
        // SAFETY: the pointer and length describe `groups`.
        let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
        if let Ok(got) = usize::try_from(got) {
            groups.truncate(got);
            return groups;
        }
        // The list grew in between: ask again.
    }
    Vec::new()
}

/// What `/proc/<pid>/status` says that matters here.
#[derive(Debug, PartialEq, Eq)]
struct Status {
    groups: Vec<u32>,
    /// `CAP_SETGID` is in the permitted set: the groups may change any time.
    may_change_groups: bool,
}

/// Reads `Groups:` and `CapPrm:` from the text of `/proc/<pid>/status`.
fn parse_status(text: &str) -> Option<Status> {
    let mut groups = None;
    let mut permitted = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Groups:") {
            let parsed: Result<Vec<u32>, _> = rest.split_whitespace().map(str::parse).collect();
            groups = Some(parsed.ok()?);
        } else if let Some(rest) = line.strip_prefix("CapPrm:") {
            permitted = Some(u64::from_str_radix(rest.trim(), 16).ok()?);
        }
    }
    Some(Status {
        groups: groups?,
        may_change_groups: permitted? & (1 << CAP_SETGID) != 0,
    })
}

/// The supplementary groups of thread `pid`, if it can be read.
fn read_status(pid: u32) -> Option<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&text)
}

struct Cached {
    groups: Vec<u32>,
    read_at: Instant,
}

/// The credentials of the mount's callers, with their groups kept briefly (see
/// the module documentation).
#[derive(Default)]
pub struct CallerCreds {
    /// By thread id, uid and gid.
    kept: Mutex<HashMap<(u32, u32, u32), Cached>>,
}

impl CallerCreds {
    pub fn new() -> CallerCreds {
        CallerCreds::default()
    }

    /// The credential of the thread `pid` whose file system ids are `uid` and
    /// `gid`. A thread that is gone (or a request from the kernel itself, pid 0)
    /// gets no supplementary groups.
    pub fn of(&self, uid: u32, gid: u32, pid: u32) -> Cred {
        let groups = if uid == 0 || pid == 0 {
            Vec::new()
        } else {
            self.groups(uid, gid, pid)
        };
        Cred { uid, gid, groups }
    }

    fn groups(&self, uid: u32, gid: u32, pid: u32) -> Vec<u32> {
        let key = (pid, uid, gid);
        if let Some(kept) = lock(&self.kept).get(&key) {
            if kept.read_at.elapsed() < GROUPS_TTL {
                return kept.groups.clone();
            }
        }
        let Some(status) = read_status(pid) else {
            return Vec::new();
        };
        if !status.may_change_groups {
            let mut kept = lock(&self.kept);
            if kept.len() >= MAX_CALLERS {
                kept.retain(|_, c| c.read_at.elapsed() < GROUPS_TTL);
                if kept.len() >= MAX_CALLERS {
                    kept.clear();
                }
            }
            let cached = Cached {
                groups: status.groups.clone(),
                read_at: Instant::now(),
            };
            kept.insert(key, cached);
        }
        status.groups
    }

    /// How many callers are remembered (for tests).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        lock(&self.kept).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tbash\nUmask:\t0022\nState:\tS (sleeping)\n\
        Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nFDSize:\t256\n\
        Groups:\t4 24 27 1000 \nNStgid:\t4242\nCapInh:\t0000000000000000\n\
        CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n";

    #[test]
    fn groups_and_the_power_to_change_them_are_read_from_status() {
        assert_eq!(
            parse_status(STATUS),
            Some(Status {
                groups: vec![4, 24, 27, 1000],
                may_change_groups: false,
            })
        );
        let root = STATUS
            .replace("Groups:\t4 24 27 1000 ", "Groups:\t")
            .replace("CapPrm:\t0000000000000000", "CapPrm:\t000001ffffffffff");
        assert_eq!(
            parse_status(&root),
            Some(Status {
                groups: Vec::new(),
                may_change_groups: true,
            })
        );
        // Only CAP_SETGID counts.
        let setuid_only = STATUS.replace("CapPrm:\t0000000000000000", "CapPrm:\t0000000000000080");
        assert!(!parse_status(&setuid_only).unwrap().may_change_groups);
        assert_eq!(parse_status("Name:\tx\n"), None);
        assert_eq!(parse_status(&STATUS.replace("27", "x")), None);
    }

    #[test]
    fn a_caller_is_read_from_proc() {
        let callers = CallerCreds::new();
        // SAFETY: gettid, geteuid and getegid cannot fail.
        let (tid, uid, gid) = unsafe { (libc::gettid() as u32, libc::geteuid(), libc::getegid()) };
        let mine = read_status(tid).expect("this thread's status");
        // As a user other than root, with this thread's groups.
        let user = callers.of(uid.max(1), gid, tid);
        assert_eq!(user.groups, mine.groups);
        // Kept only if this thread could not change its groups.
        assert_eq!(callers.remembered(), usize::from(!mine.may_change_groups));
        // Root's groups are never read; nor are a vanished thread's.
        assert!(callers.of(0, 0, tid).groups.is_empty());
        assert!(callers.of(1000, 1000, u32::MAX).groups.is_empty());
        assert!(callers.of(1000, 1000, 0).groups.is_empty());
    }

    #[test]
    fn own_credentials_are_this_process() {
        let me = own();
        // SAFETY: geteuid cannot fail.
        assert_eq!(me.uid, unsafe { libc::geteuid() });
        // The groups are the kernel's for this thread.
        // SAFETY: gettid cannot fail.
        let tid = unsafe { libc::gettid() } as u32;
        assert_eq!(me.groups, read_status(tid).unwrap().groups);
    }
}
