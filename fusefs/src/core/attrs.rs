//! Attributes: getattr, setattr, and the setattr that need not wait.
//!
//! `getattr` is answered without the server whenever something here is as new
//! as the server's answer would be: the projection of a file this mount is
//! writing (see [`crate::writeback`]), or the attributes the server sent within
//! the attribute timeout (see [`crate::attrcache`]).

use super::{expect_attr, without_suidgid, Attrs, Caller, Core, Done};
use ferry_common::proto::{AttrChanges, Cred, Op, SetTime};
use ferry_common::{Attr, Errno, RelPath, Timestamp};
use std::time::{Duration, Instant, SystemTime};

impl Core {
    /// The attributes of `ino`; with `fh`, of the open file (which may be unlinked).
    pub fn getattr(&self, caller: &Caller, ino: u64, fh: Option<u64>, done: impl Done<Attrs>) {
        let ttl = self.ttl_since(Instant::now());
        // A file this mount is writing: the server would only say what we know, or
        // less (the kernel asks while changing the owner, after every write).
        if let Some(attr) = self.writes.projected(ino, ttl) {
            log::trace!("getattr {ino}: as written here");
            self.stats.attrs.hit();
            return done(Ok(Attrs { attr, ttl }));
        }
        // (What the server said before this mount's writes is no answer.)
        if self.writes.any_writer(ino).is_none() {
            // A directory's attributes may be projected past removals sent
            // behind until the server answers them (see `behind`): not for
            // the kernel to keep. Asked on both sides of the read, so that
            // a removal begun or answered meanwhile is seen too.
            let before = self.behind.busy(ino);
            if let Some((attr, ttl)) = self.attrs.fresh(ino) {
                log::trace!("getattr {ino}: cached");
                let ttl = if before.0 || self.behind.busy(ino) != before {
                    Duration::ZERO
                } else {
                    ttl
                };
                self.stats.attrs.hit();
                return done(Ok(Attrs { attr, ttl }));
            }
        }
        log::trace!("getattr {ino}: asking");
        self.stats.attrs.miss();
        self.writes.wait_idle(ino);
        // With a handle the server stats the open file, which may be unlinked.
        // (A stat by a name that leads to another file now answers ESTALE: the
        // kernel looks the name up again.)
        match self.attr_target(ino, fh) {
            Ok((path, Some((epoch, handle)))) => {
                let op = Op::SetAttr {
                    path,
                    handle: Some(handle),
                    changes: AttrChanges::default(),
                };
                self.attr_op(&caller.cred, ino, Some(epoch), op, done)
            }
            Ok((path, None)) => self.attr_op(&caller.cred, ino, None, Op::Stat { path }, done),
            // Nothing leads to it any more (see `open`).
            Err(_) => done(Err(Errno::new(libc::ESTALE))),
        }
    }

    /// chmod, chown, truncate and utimens of `ino` in one step; with `fh`,
    /// through the open file. Answers the new attributes.
    pub fn setattr(
        &self,
        caller: &Caller,
        ino: u64,
        fh: Option<u64>,
        mut changes: AttrChanges,
        done: impl Done<Attrs>,
    ) {
        changes.mode = changes.mode.map(|m| m & 0o7777);
        // The kernel leaves this to the filesystem (FUSE_HANDLE_KILLPRIV_V2): a
        // truncation by anyone but root drops setuid/setgid, as locally.
        changes.kill_suidgid |= changes.size.is_some() && caller.cred.uid != 0;
        if let Some(attr) = self.defer_setattr(caller, ino, fh, changes) {
            let ttl = self.ttl_since(Instant::now());
            return done(Ok(Attrs { attr, ttl }));
        }
        // A truncation must not overtake a write; nor may any answer predate them.
        self.writes.wait_idle(ino);
        self.attrs.drop_ino(ino);
        let truncates = changes.size.is_some();
        if truncates {
            self.opened.changed(ino);
        }
        let core = self.clone();
        let done = move |r| {
            if truncates {
                core.opened.changed(ino);
            }
            done(r)
        };
        // With a handle (given, or the only way left to a detached inode) every
        // change goes through the open file.
        match self.attr_target(ino, fh) {
            Ok((path, target)) => {
                let op = Op::SetAttr {
                    path,
                    handle: target.map(|(_, h)| h),
                    changes,
                };
                self.attr_op(&caller.cred, ino, target.map(|(e, _)| e), op, done)
            }
            Err(e) => done(Err(e)),
        }
    }

    /// Sends an operation answered with the attributes of `ino`; `epoch` pins it
    /// to the connection of the server handle it carries.
    fn attr_op(&self, cred: &Cred, ino: u64, epoch: Option<u64>, op: Op, done: impl Done<Attrs>) {
        let mark = self.writes.mark();
        let core = self.clone();
        let asked = Instant::now();
        self.ask_about(Some(ino), epoch, cred, op, move |r| match expect_attr(r) {
            Ok(attr) if epoch.is_none() && core.replaced(ino, &attr) => {
                done(Err(Errno::new(libc::ESTALE)))
            }
            Ok(attr) => {
                core.writes.told(ino, &attr, mark);
                core.attrs.store(ino, attr, core.until(asked));
                done(Ok(Attrs {
                    attr,
                    ttl: core.ttl_since(asked),
                }))
            }
            Err(e) => done(Err(e)),
        });
    }

    /// Sends an attribute change without waiting for the server, when it is safe:
    /// the file is open for writing on this mount (so the change is ordered with
    /// the writes and its error, if any, reaches the writer at close), it is not a
    /// truncation, and it does not change the owner. The kernel has already checked
    /// permissions (`default_permissions`) as the server will (not so for a
    /// squashed caller, whose changes wait), so the server can only fail it for
    /// reasons close reports (a broken connection, a full or failing disk). This is
    /// what `tar` and `cp -p` do to each file they write: `futimens`, `fchown` to
    /// the owner it already has, `fchmod`. Returns the attributes to answer with.
    pub(super) fn defer_setattr(
        &self,
        caller: &Caller,
        ino: u64,
        fh: Option<u64>,
        changes: AttrChanges,
    ) -> Option<Attr> {
        if changes.size.is_some() || !self.checked_alike(caller) {
            return None;
        }
        let writer = match fh {
            Some(fh) if self.writes.is_writer(ino, fh) => fh,
            _ => self.writes.any_writer(ino)?,
        };
        let (ticket, attr) = self
            .writes
            .begin_setattr(ino, writer, |attr| project(attr, &changes))?;
        // The server ignores the path when given a handle; a detached inode has none.
        let path = self.path_of(ino).unwrap_or_else(|_| RelPath::root());
        let op = |handle| Op::SetAttr {
            path,
            handle: Some(handle),
            changes,
        };
        let core = self.clone();
        let crossing = self.mark();
        self.changes.begin();
        let sent = move |r| {
            core.writes.finish(ticket, expect_attr(r).map(Some));
            core.changes.end();
            // The projection takes the server's answer: a notice that crossed
            // it says the file changed since.
            core.settle(crossing, super::Touched::default().with_ino(Some(ino)));
        };
        // Not waited for: the kernel has its answer already.
        match self.server_handle(writer) {
            Ok((epoch, handle)) => self.client.submit_in(epoch, &caller.cred, op(handle), sent),
            Err(e) => sent(Err(e)),
        }
        Some(attr)
    }
}

/// Applies `changes` to the projected attributes `attr`, as the server will;
/// false (and `attr` untouched in what matters) when the change cannot be
/// projected: a change of owner.
fn project(attr: &mut Attr, changes: &AttrChanges) -> bool {
    if changes.uid.is_some_and(|uid| uid != attr.uid)
        || changes.gid.is_some_and(|gid| gid != attr.gid)
    {
        return false;
    }
    if let Some(mode) = changes.mode {
        attr.perm = (mode & 0o7777) as u16;
    }
    // A chown drops setuid/setgid on the server, as on a local disk.
    if changes.kill_suidgid || changes.uid.is_some() || changes.gid.is_some() {
        attr.perm = without_suidgid(attr.kind, attr.perm);
    }
    let resolve = |t| match t {
        SetTime::Now => Timestamp::from_system_time(SystemTime::now()),
        SetTime::At(t) => t,
    };
    if let Some(t) = changes.atime {
        attr.atime = resolve(t);
    }
    if let Some(t) = changes.mtime {
        attr.mtime = resolve(t);
    }
    true
}
