//! What the server refuses, or tones down, before the kernel is asked.
//!
//! Every request acts as the user its credential maps to (see
//! [`crate::identity`]), so the kernel checks it as it would that user's own
//! process. A few things are refused on top, because they are how access to an
//! export turns into power over the server itself:
//!
//! - **Device nodes**: a node for the server's disk (`b 254:0`) or hardware
//!   random generator made with mode 0666 would let any user of the server read
//!   them. `Mknod` of a block or character device answers EPERM (what a local
//!   user without `CAP_MKNOD` hears) unless the operator allows devices
//!   (`--allow-devices`), and even then only root can make one.
//! - **Set-id programs from squashed clients**: a client's root, squashed, must
//!   not leave a set-user-id or set-group-id program behind for the server's
//!   users to run. The bits are dropped from the modes of what a squashed
//!   identity creates or chmods; set-group-id stays on directories, where it
//!   only hands the directory's group on to new entries.
//! - **`security.*` and `trusted.*` attributes** (file capabilities, SELinux
//!   labels, overlayfs metadata) are changed by root only: anyone else gets
//!   EPERM, and does not see `trusted.*` at all (ENODATA, and left out of
//!   listings), as on a local file system. (The kernel agrees, as an identity
//!   other than root acts without capabilities; this says it without relying
//!   on that.)

use crate::export::SetIdBits;
use crate::identity::{Identity, IdentityMap, Squash};
use ferry_common::proto::{
    Cred, Op, WELCOME_ACTS_AS_CALLERS, WELCOME_ALL_SQUASHED, WELCOME_ROOT_SQUASHED,
};
use ferry_common::Errno;

/// How a server treats its clients, beyond what each file's permissions say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Every mutation answers EROFS.
    pub(crate) read_only: bool,
    pub(crate) identities: IdentityMap,
    /// Device nodes may be made (by root).
    pub(crate) allow_devices: bool,
}

/// A request let through: who it acts as, and what its chmods may do.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) who: Identity,
    pub(crate) setid: SetIdBits,
}

/// Attribute namespaces only root changes (see the module documentation).
const PRIVILEGED_XATTRS: [&[u8]; 2] = [b"security.", b"trusted."];
/// The namespace only root sees.
const TRUSTED: &[u8] = b"trusted.";

fn privileged_name(name: &[u8]) -> bool {
    PRIVILEGED_XATTRS.iter().any(|p| name.starts_with(p))
}

/// Whether `mode` (with its kind bits) is a block or character device.
fn is_device(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFBLK | libc::S_IFCHR)
}

impl Policy {
    /// What the handshake tells clients about their users (the `WELCOME_*`
    /// bits), `acts_as_callers` when the server can act as other users.
    pub(crate) fn welcome_features(&self, acts_as_callers: bool) -> u64 {
        if !acts_as_callers {
            return 0;
        }
        WELCOME_ACTS_AS_CALLERS
            | match self.identities.squash {
                Squash::None => 0,
                Squash::Root => WELCOME_ROOT_SQUASHED,
                Squash::All => WELCOME_ROOT_SQUASHED | WELCOME_ALL_SQUASHED,
            }
    }

    /// The identity a request claiming `cred` acts as, after refusing what it may
    /// not ask and toning `op` down where the module documentation says.
    pub(crate) fn admit(&self, cred: &Cred, op: &mut Op) -> Result<Admitted, Errno> {
        let who = self.identities.map(cred)?;
        match op {
            Op::Mknod { mode, .. } if is_device(*mode) && !self.allow_devices => {
                return Err(Errno::EPERM);
            }
            Op::SetXattr { name, .. } | Op::RemoveXattr { name, .. }
                if privileged_name(name) && !who.is_root() =>
            {
                return Err(Errno::EPERM);
            }
            Op::GetXattr { name, .. } if name.starts_with(TRUSTED) && !who.is_root() => {
                return Err(Errno::new(libc::ENODATA));
            }
            _ => {}
        }
        let setid = if who.squashed {
            strip_setid_on_creation(op);
            SetIdBits::DirectoryGroupOnly
        } else {
            SetIdBits::AsAsked
        };
        Ok(Admitted { who, setid })
    }
}

/// Drops the set-id bits from the mode of a node a squashed identity creates
/// (set-group-id stays on a directory). A chmod is toned down by the export,
/// which knows the node's kind (see [`SetIdBits`]).
fn strip_setid_on_creation(op: &mut Op) {
    const SETID: u32 = libc::S_ISUID | libc::S_ISGID;
    match op {
        Op::Create { mode, .. } | Op::CreateAs { mode, .. } | Op::Mknod { mode, .. } => {
            *mode &= !SETID
        }
        Op::Mkdir { mode, .. } => *mode &= !libc::S_ISUID,
        _ => {}
    }
}

/// A `listxattr` answer as `who` may see it: without `trusted.*` unless root.
pub(crate) fn visible_xattrs(list: Vec<u8>, who: &Identity) -> Vec<u8> {
    if who.is_root() {
        return list;
    }
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(TRUSTED) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Squash;
    use ferry_common::proto::{AttrChanges, CLIENT_HANDLE};
    use ferry_common::RelPath;

    fn path() -> RelPath {
        RelPath::parse("f").unwrap()
    }

    fn cred(uid: u32) -> Cred {
        Cred {
            uid,
            gid: uid,
            groups: Vec::new(),
        }
    }

    fn policy(squash: Squash, allow_devices: bool) -> Policy {
        Policy {
            identities: IdentityMap {
                squash,
                ..IdentityMap::default()
            },
            allow_devices,
            ..Policy::default()
        }
    }

    fn mknod(kind: u32) -> Op {
        Op::Mknod {
            path: path(),
            mode: kind | 0o666,
            rdev: libc::makedev(254, 0),
        }
    }

    #[test]
    fn device_nodes_only_where_allowed() {
        for squash in [Squash::Root, Squash::None] {
            for uid in [0, 1000] {
                let strict = policy(squash, false);
                for kind in [libc::S_IFBLK, libc::S_IFCHR] {
                    assert_eq!(
                        strict.admit(&cred(uid), &mut mknod(kind)).unwrap_err(),
                        Errno::EPERM
                    );
                    // Allowed: the kernel decides (only root has CAP_MKNOD).
                    assert!(policy(squash, true)
                        .admit(&cred(uid), &mut mknod(kind))
                        .is_ok());
                }
                for kind in [libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFREG, 0] {
                    assert!(strict.admit(&cred(uid), &mut mknod(kind)).is_ok());
                }
            }
        }
    }

    #[test]
    fn squashed_creations_lose_their_setid_bits() {
        let squashing = policy(Squash::Root, false);
        let mut ops = [
            Op::Create {
                path: path(),
                flags: libc::O_WRONLY,
                mode: 0o6755,
            },
            Op::Mknod {
                path: path(),
                mode: libc::S_IFREG | 0o6755,
                rdev: 0,
            },
            Op::Mkdir {
                path: path(),
                mode: 0o6775,
            },
            Op::CreateAs {
                path: path(),
                flags: libc::O_WRONLY,
                mode: 0o6755,
                handle: CLIENT_HANDLE | 1,
            },
        ];
        for op in &mut ops {
            let admitted = squashing.admit(&cred(0), op).unwrap();
            assert!(admitted.who.squashed);
            assert_eq!(admitted.setid, SetIdBits::DirectoryGroupOnly);
        }
        let modes: Vec<u32> = ops
            .iter()
            .map(|op| match op {
                Op::Create { mode, .. }
                | Op::CreateAs { mode, .. }
                | Op::Mknod { mode, .. }
                | Op::Mkdir { mode, .. } => *mode,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(modes, [0o755, libc::S_IFREG | 0o755, 0o2775, 0o755]);
        // Someone not squashed keeps them (the kernel decides, as locally).
        let mut create = Op::Create {
            path: path(),
            flags: libc::O_WRONLY,
            mode: 0o4755,
        };
        let admitted = squashing.admit(&cred(1000), &mut create).unwrap();
        assert_eq!(admitted.setid, SetIdBits::AsAsked);
        assert!(matches!(create, Op::Create { mode: 0o4755, .. }));
        // A squashed chmod is left to the export, which knows the node's kind.
        let mut chmod = Op::SetAttr {
            path: path(),
            handle: None,
            changes: AttrChanges {
                mode: Some(0o6755),
                ..AttrChanges::default()
            },
        };
        let admitted = squashing.admit(&cred(0), &mut chmod).unwrap();
        assert_eq!(admitted.setid, SetIdBits::DirectoryGroupOnly);
    }

    #[test]
    fn privileged_attributes_are_roots_alone() {
        let set = |name: &[u8]| Op::SetXattr {
            path: path(),
            name: name.to_vec(),
            value: vec![1],
            flags: 0,
        };
        let remove = |name: &[u8]| Op::RemoveXattr {
            path: path(),
            name: name.to_vec(),
        };
        let get = |name: &[u8]| Op::GetXattr {
            path: path(),
            name: name.to_vec(),
        };
        let squashing = policy(Squash::Root, false);
        let trusting = policy(Squash::None, false);
        for name in [
            b"security.capability".as_slice(),
            b"security.selinux",
            b"trusted.overlay.opaque",
        ] {
            for uid in [0, 1000] {
                assert_eq!(
                    squashing.admit(&cred(uid), &mut set(name)).unwrap_err(),
                    Errno::EPERM
                );
                assert_eq!(
                    squashing.admit(&cred(uid), &mut remove(name)).unwrap_err(),
                    Errno::EPERM
                );
            }
            assert!(trusting.admit(&cred(0), &mut set(name)).is_ok());
            assert!(trusting.admit(&cred(0), &mut remove(name)).is_ok());
        }
        assert_eq!(
            squashing
                .admit(&cred(0), &mut get(b"trusted.a"))
                .unwrap_err(),
            Errno::new(libc::ENODATA)
        );
        assert!(squashing
            .admit(&cred(1000), &mut get(b"security.capability"))
            .is_ok());
        assert!(squashing.admit(&cred(1000), &mut set(b"user.a")).is_ok());
        assert!(trusting.admit(&cred(0), &mut get(b"trusted.a")).is_ok());
    }

    #[test]
    fn the_welcome_tells_clients_whom_their_users_act_as() {
        let acts = WELCOME_ACTS_AS_CALLERS;
        // A server not running as root acts as itself, whatever the mapping.
        assert_eq!(policy(Squash::Root, false).welcome_features(false), 0);
        assert_eq!(policy(Squash::None, false).welcome_features(true), acts);
        assert_eq!(
            policy(Squash::Root, false).welcome_features(true),
            acts | WELCOME_ROOT_SQUASHED
        );
        assert_eq!(
            policy(Squash::All, false).welcome_features(true),
            acts | WELCOME_ROOT_SQUASHED | WELCOME_ALL_SQUASHED
        );
    }

    #[test]
    fn trusted_names_are_listed_to_root_only() {
        let list = b"user.a\0trusted.b\0security.c\0".to_vec();
        let map = IdentityMap {
            squash: Squash::None,
            ..IdentityMap::default()
        };
        let root = map.map(&cred(0)).unwrap();
        let user = map.map(&cred(1000)).unwrap();
        assert_eq!(visible_xattrs(list.clone(), &root), list);
        assert_eq!(visible_xattrs(list, &user), b"user.a\0security.c\0");
    }
}
