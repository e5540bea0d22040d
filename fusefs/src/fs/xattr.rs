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
//! trip. Its answers are therefore kept for the attribute timeout, like
//! attributes, and a file this mount has just created is known to have none.
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

use super::FerryFs;
use crate::convert::errno;
use ferry_common::proto::{Op, Reply};
use ferry_common::Errno;
use fuser::{INodeNo, ReplyEmpty, ReplyXattr, Request};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The attribute whose answers are kept; see the module documentation.
const CAPABILITY: &[u8] = b"security.capability";
/// The SELinux label; see the module documentation.
const SELINUX: &[u8] = b"security.selinux";
/// Entries beyond this many make the cache drop its stale ones.
const CACHE_PRUNE_AT: usize = 4096;

/// When an answer was fetched, and what it was.
type Answer = (Instant, Result<Vec<u8>, Errno>);

/// Recent answers for `security.capability`, by inode.
#[derive(Debug, Default)]
pub struct CapabilityCache {
    answers: Mutex<HashMap<u64, Answer>>,
}

impl CapabilityCache {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Answer>> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, ino: u64, ttl: Duration) -> Option<Result<Vec<u8>, Errno>> {
        let map = self.map();
        let (at, answer) = map.get(&ino)?;
        (at.elapsed() < ttl).then(|| answer.clone())
    }

    fn put(&self, ino: u64, answer: Result<Vec<u8>, Errno>, ttl: Duration) {
        let mut map = self.map();
        if map.len() >= CACHE_PRUNE_AT {
            map.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        map.insert(ino, (Instant::now(), answer));
    }

    /// `ino` was just created by this mount: it has no capability.
    pub fn note_new_file(&self, ino: u64, ttl: Duration) {
        self.put(ino, Err(Errno::new(libc::ENODATA)), ttl);
    }

    fn forget(&self, ino: u64) {
        self.map().remove(&ino);
    }
}

/// Answers a get or list request of buffer size `size` with `data`.
fn reply_sized(data: &[u8], size: u32, reply: ReplyXattr) {
    let Ok(len) = u32::try_from(data.len()) else {
        return reply.error(errno(Errno::new(libc::E2BIG)));
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(errno(Errno::ERANGE));
    } else {
        reply.data(data);
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

impl FerryFs {
    pub(super) fn xattr_get(&self, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if name.as_bytes() == SELINUX {
            return reply.error(errno(Errno::ENOTSUP));
        }
        let ttl = self.opts.attr_timeout;
        let capability = name.as_bytes() == CAPABILITY;
        if capability {
            match self.capabilities.get(ino.0, ttl) {
                Some(Ok(value)) => return reply_sized(&value, size, reply),
                Some(Err(e)) => return reply.error(errno(e)),
                None => {}
            }
        }
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(e)),
        };
        let op = Op::GetXattr {
            path,
            name: name.as_bytes().to_vec(),
        };
        let cache = self.capabilities.clone();
        self.client.submit(op, move |r| {
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
                cache.put(ino.0, answer.clone(), ttl);
            }
            match answer {
                Ok(value) => reply_sized(&value, size, reply),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    pub(super) fn xattr_list(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(e)),
        };
        let privileged = req.uid() == 0;
        self.client
            .submit(Op::ListXattr { path }, move |r| match r {
                Ok(Reply::Xattr(list)) => reply_sized(&visible(&list, privileged), size, reply),
                Ok(_) => reply.error(errno(Errno::EPROTO)),
                Err(e) => reply.error(errno(e)),
            });
    }

    pub(super) fn xattr_set(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        // `position` is for macOS resource forks only.
        if position != 0 {
            return reply.error(errno(Errno::EINVAL));
        }
        if name.as_bytes() == SELINUX {
            return reply.error(errno(Errno::ENOTSUP));
        }
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(e)),
        };
        if name.as_bytes() == CAPABILITY {
            self.capabilities.forget(ino.0);
        }
        let op = Op::SetXattr {
            path: path.clone(),
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            flags,
        };
        // The ctime changes: cached attributes go.
        self.empty_op(op, vec![path], reply, |_| {});
    }

    pub(super) fn xattr_remove(&self, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(e)),
        };
        if name.as_bytes() == CAPABILITY {
            self.capabilities.forget(ino.0);
        }
        let op = Op::RemoveXattr {
            path: path.clone(),
            name: name.as_bytes().to_vec(),
        };
        self.empty_op(op, vec![path], reply, |_| {});
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
}
