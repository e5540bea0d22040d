//! Extended attributes on the mount: each call is one request to the server,
//! which decides what the namespaces allow (see the server's `export::xattr`).
//!
//! The kernel asks with a buffer size; 0 means "how big is it?". The server
//! always sends the whole value (at most 64 KiB), and the size protocol is
//! answered here: the size, the data, or ERANGE when the caller's buffer is too
//! small.
//!
//! # `security.capability`
//!
//! The kernel asks for `security.capability` before every `write(2)` (to drop
//! file capabilities from a changed file), which would cost each write a round
//! trip. Its answers are therefore kept as long as attributes (the attribute
//! timeout, or the lease: a change of the file's attributes, which an xattr
//! change is, drops them), and a file this mount has just created is known to
//! have none.
//! Nothing is lost by the shortcut: the server's own kernel drops the
//! capability when the server writes the file, and this mount is `nosuid`, so
//! its kernel never reads capabilities to run a program.
//!
//! # `security.selinux`
//!
//! Answered "not supported" here, without asking: the client's kernel labels
//! files of a FUSE mount by its own policy and never reads this attribute, and
//! SELinux-aware tools (`ls -l` among them) ask for it once per file unless told
//! it is unsupported — a round trip for every name listed. It is also left out
//! of listings and cannot be set through the mount.
//!
//! # `system.*`
//!
//! POSIX ACLs are refused by the server (see its `export::xattr`: the client's
//! kernel checks permissions from the mode bits, so an ACL would not be
//! enforced here), so reading one is answered "not supported" here, without
//! asking: `ls -l` asks for `system.posix_acl_access` every time it runs.

use super::{Caller, Core, Done};
use crate::cache::TimedCache;
use ferry_common::proto::{Op, Reply};
use ferry_common::Errno;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

/// The attribute whose answers are kept; see the module documentation.
const CAPABILITY: &[u8] = b"security.capability";
/// The SELinux label; see the module documentation.
const SELINUX: &[u8] = b"security.selinux";
/// POSIX ACLs and other system attributes; see the module documentation.
const SYSTEM: &[u8] = b"system.";

/// Recent answers for `security.capability`, by inode.
#[derive(Debug)]
pub(crate) struct FileCapCache {
    answers: TimedCache<u64, Result<Vec<u8>, Errno>>,
}

impl FileCapCache {
    pub(crate) fn new() -> FileCapCache {
        FileCapCache {
            answers: TimedCache::new(),
        }
    }

    /// `ino` was just created by this mount: it has no capability (which may
    /// be trusted until `until`).
    pub(crate) fn note_new_file(&self, ino: u64, until: Instant) {
        self.answers
            .store(ino, Err(Errno::new(libc::ENODATA)), until);
    }

    /// What is known of `ino` no longer holds.
    pub(crate) fn forget(&self, ino: u64) {
        self.answers.remove(&ino);
    }

    /// Nothing is known any more.
    pub(crate) fn clear(&self) {
        self.answers.clear();
    }
}

/// What `getxattr` and `listxattr` answer: the size asked for, or the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrAnswer {
    Size(u32),
    Data(Vec<u8>),
}

/// The answer to a get or list request of buffer size `size` with `data`.
fn sized(data: Vec<u8>, size: u32) -> Result<XattrAnswer, Errno> {
    let len = u32::try_from(data.len()).map_err(|_| Errno::new(libc::E2BIG))?;
    if size == 0 {
        Ok(XattrAnswer::Size(len))
    } else if len > size {
        Err(Errno::ERANGE)
    } else {
        Ok(XattrAnswer::Data(data))
    }
}

/// A listing as the caller may see it: without the `trusted.*` names unless
/// privileged (as on a local filesystem), and never with `security.selinux`.
fn visible(list: &[u8], privileged: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if (privileged || !name.starts_with(b"trusted.")) && name != SELINUX {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

impl Core {
    pub fn getxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &OsStr,
        size: u32,
        done: impl Done<XattrAnswer>,
    ) {
        if name.as_bytes() == SELINUX || name.as_bytes().starts_with(SYSTEM) {
            return done(Err(Errno::ENOTSUP));
        }
        let capability = name.as_bytes() == CAPABILITY;
        if capability {
            if let Some((answer, _)) = self.file_caps.answers.get(&ino) {
                return done(answer.and_then(|value| sized(value, size)));
            }
        }
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return done(Err(e)),
        };
        let op = Op::GetXattr {
            path,
            name: name.as_bytes().to_vec(),
        };
        let core = self.clone();
        let asked = Instant::now();
        self.ask_about(Some(ino), None, &caller.cred, op, move |r| {
            let answer = match r {
                Ok(Reply::Xattr(value)) => Ok(value),
                Ok(_) => Err(Errno::EPROTO),
                Err(e) => Err(e),
            };
            let lasting = match &answer {
                Ok(_) => true,
                Err(e) => matches!(e.code(), libc::ENODATA | libc::ENOTSUP),
            };
            if capability && lasting {
                core.file_caps
                    .answers
                    .store(ino, answer.clone(), core.until(asked));
            }
            done(answer.and_then(|value| sized(value, size)))
        });
    }

    pub fn listxattr(&self, caller: &Caller, ino: u64, size: u32, done: impl Done<XattrAnswer>) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return done(Err(e)),
        };
        let privileged = caller.cred.uid == 0;
        self.ask(
            None,
            &caller.cred,
            Op::ListXattr { path },
            move |r| match r {
                Ok(Reply::Xattr(list)) => done(sized(visible(&list, privileged), size)),
                Ok(_) => done(Err(Errno::EPROTO)),
                Err(e) => done(Err(e)),
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub fn setxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        done: impl Done<()>,
    ) {
        // `position` is for macOS resource forks only.
        if position != 0 {
            return done(Err(Errno::EINVAL));
        }
        if name.as_bytes() == SELINUX {
            return done(Err(Errno::ENOTSUP));
        }
        let op = |path| Op::SetXattr {
            path,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            flags,
        };
        self.xattr_change(caller, ino, name, done, op);
    }

    pub fn removexattr(&self, caller: &Caller, ino: u64, name: &OsStr, done: impl Done<()>) {
        let op = |path| Op::RemoveXattr {
            path,
            name: name.as_bytes().to_vec(),
        };
        self.xattr_change(caller, ino, name, done, op);
    }

    /// Sends the change of attribute `name` of `ino` that `make_op` builds.
    fn xattr_change(
        &self,
        caller: &Caller,
        ino: u64,
        name: &OsStr,
        done: impl Done<()>,
        make_op: impl FnOnce(ferry_common::RelPath) -> Op,
    ) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return done(Err(e)),
        };
        if name.as_bytes() == CAPABILITY {
            self.file_caps.answers.remove(&ino);
        }
        // By path, so not ordered with writes in flight: a write landing after
        // it would make the server's kernel drop a capability just set.
        self.writes.wait_idle(ino);
        // The ctime changes: cached attributes go.
        let changed = vec![(path.clone(), false)];
        self.name_op(&caller.cred, make_op(path), changed, done, |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_names_are_hidden_and_selinux_labels_never_listed() {
        let list = b"user.a\0trusted.b\0security.c\0security.selinux\0";
        assert_eq!(visible(list, false), b"user.a\0security.c\0");
        assert_eq!(visible(list, true), b"user.a\0trusted.b\0security.c\0");
    }

    #[test]
    fn the_size_protocol() {
        assert_eq!(sized(b"abc".to_vec(), 0), Ok(XattrAnswer::Size(3)));
        assert_eq!(sized(b"abc".to_vec(), 2), Err(Errno::ERANGE));
        assert_eq!(
            sized(b"abc".to_vec(), 3),
            Ok(XattrAnswer::Data(b"abc".to_vec()))
        );
    }
}
