//! Acting as a client's user: the file system credentials each export call
//! runs under.
//!
//! A server running as root switches the calling thread, for the length of one
//! request, to the [`Identity`] the request was mapped to: its file system user
//! and group (`setfsuid`, `setfsgid`), its supplementary groups, and — unless it
//! is root — no effective capabilities, as an ordinary process of that user
//! has. The kernel then checks the request's permissions, and gives new nodes
//! their owner, exactly as for that user's own process: a `nobody` cannot read
//! root's 0600 file, chown a file to root, or set `trusted.*` or
//! `security.capability` attributes. Credentials are per thread in Linux, so
//! requests of different users run at once on different threads; [`Acting`]
//! puts the server's own back when it is dropped, on every path out of the
//! request, a panic's unwinding included. Whatever thread runs a request (the
//! connection's reader, a blocking-pool thread) switches around it.
//!
//! A server not running as root cannot switch: every request acts as the
//! server's user, whose permissions the kernel checks, and every new node is
//! that user's (as with sshfs).
//!
//! Should putting the server's own credentials back ever fail, the thread is
//! marked, and it tries again before its next request; until that succeeds its
//! requests fail with EIO rather than run as the wrong user.

use super::sys::{self, Capabilities};
use crate::identity::Identity;
use ferry_common::Errno;
use std::cell::Cell;

/// The server's own credentials, as they were when the export was opened.
#[derive(Clone, Debug)]
pub(super) struct OwnCredentials {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// `None` when the server is not root: it cannot act as anyone else.
    capabilities: Option<Capabilities>,
}

thread_local! {
    /// This thread still holds a request's credentials: putting the server's
    /// own back failed.
    static TAINTED: Cell<bool> = const { Cell::new(false) };
}

/// What a switch changed, so that only that is put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Switched {
    /// Nothing: the server acts as itself.
    Nothing,
    /// The file system group only (root with another group).
    Group,
    /// Everything: user, group, groups and capabilities.
    All,
}

/// While alive, the thread acts as a request's identity; dropping it puts the
/// server's own credentials back.
#[must_use = "the identity lasts only as long as this guard"]
#[derive(Debug)]
pub struct Acting<'a> {
    own: &'a OwnCredentials,
    switched: Switched,
}

impl OwnCredentials {
    /// Notes the calling thread's credentials (at start-up, before any request).
    pub(super) fn capture() -> Result<OwnCredentials, Errno> {
        let uid = sys::geteuid();
        let capabilities = if uid == 0 {
            Some(sys::thread_capabilities()?)
        } else {
            None
        };
        Ok(OwnCredentials {
            uid,
            gid: sys::getegid(),
            groups: sys::thread_groups()?,
            capabilities,
        })
    }

    /// Whether requests can act as other users (the server runs as root).
    pub(super) fn can_switch(&self) -> bool {
        self.capabilities.is_some()
    }

    /// Makes the calling thread act as `who` until the guard is dropped.
    pub(super) fn act_as(&self, who: &Identity) -> Result<Acting<'_>, Errno> {
        if TAINTED.get() {
            self.restore(Switched::All);
            if TAINTED.get() {
                return Err(Errno::EIO);
            }
        }
        let Some(capabilities) = self.capabilities else {
            return Ok(Acting {
                own: self,
                switched: Switched::Nothing,
            });
        };
        let switched = if who.is_root() {
            // Root's capabilities make groups irrelevant; only the group new
            // nodes get can differ.
            if who.gid == self.gid {
                Switched::Nothing
            } else {
                Switched::Group
            }
        } else {
            Switched::All
        };
        // From here on, dropping the guard undoes whatever part succeeded.
        let acting = Acting {
            own: self,
            switched,
        };
        match switched {
            Switched::Nothing => {}
            Switched::Group => sys::set_thread_fsgid(who.gid)?,
            Switched::All => {
                // Groups and ids first: changing them needs the capabilities
                // the last step gives up.
                sys::set_thread_groups(&who.groups)?;
                sys::set_thread_fsgid(who.gid)?;
                sys::set_thread_fsuid(who.uid)?;
                sys::set_thread_capabilities(&capabilities.without_effective())?;
            }
        }
        Ok(acting)
    }

    /// Puts back what `switched` changed; on failure, marks the thread.
    fn restore(&self, switched: Switched) {
        let result = match switched {
            Switched::Nothing => Ok(()),
            Switched::Group => sys::set_thread_fsgid(self.gid),
            Switched::All => self.restore_all(),
        };
        match result {
            Ok(()) => TAINTED.set(false),
            Err(e) => {
                log::error!(
                    "cannot put the server's own credentials back on this thread ({e}); its \
                     requests fail until that succeeds"
                );
                TAINTED.set(true);
            }
        }
    }

    fn restore_all(&self) -> Result<(), Errno> {
        // Capabilities first: the other calls need them.
        if let Some(capabilities) = &self.capabilities {
            sys::set_thread_capabilities(capabilities)?;
        }
        sys::set_thread_fsuid(self.uid)?;
        sys::set_thread_fsgid(self.gid)?;
        sys::set_thread_groups(&self.groups)
    }
}

impl Drop for Acting<'_> {
    fn drop(&mut self) {
        self.own.restore(self.switched);
    }
}
