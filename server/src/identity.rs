//! Who a request acts as: the credential a client claims, mapped as an NFS
//! server maps it (exports(5): `root_squash`, `no_root_squash`, `all_squash`,
//! `anonuid`, `anongid`).
//!
//! A client can claim any ids (see [`Cred`]), so the mapping is what keeps a
//! client's root from being root here: by default a claimed uid 0 becomes the
//! anonymous user, with the anonymous group and no supplementary groups, and
//! group 0 claimed by anyone else becomes the anonymous group. The export then
//! acts as the mapped [`Identity`] (see `export::credentials`), so the kernel
//! checks every request's permissions as that user.

use ferry_common::proto::{Cred, MAX_GROUPS};
use ferry_common::Errno;
use std::fmt;

/// The anonymous user and group unless told otherwise: `nobody` and `nogroup`.
pub const DEFAULT_ANON_ID: u32 = 65_534;

/// Whose claimed ids are replaced by the anonymous user's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Squash {
    /// Nobody's: a client's root is root here (`--no-root-squash`; what
    /// conformance tests need, as for NFS).
    None,
    /// Root's (uid 0, and group 0 wherever it is claimed): the default.
    #[default]
    Root,
    /// Everybody's (`--all-squash`): every request acts as the anonymous user.
    All,
}

/// How claimed credentials become identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityMap {
    pub squash: Squash,
    pub anon_uid: u32,
    pub anon_gid: u32,
}

impl Default for IdentityMap {
    fn default() -> Self {
        IdentityMap {
            squash: Squash::Root,
            anon_uid: DEFAULT_ANON_ID,
            anon_gid: DEFAULT_ANON_ID,
        }
    }
}

/// What an identity map cannot be built from, worded for the operator.
#[derive(Debug, PartialEq, Eq)]
pub struct BadAnonymousId(String);

impl fmt::Display for BadAnonymousId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadAnonymousId {}

/// The user (or group) requests act as on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The claimed user was replaced by the anonymous one.
    pub squashed: bool,
}

impl Identity {
    /// Root on the server: only a client's root with `--no-root-squash`.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// `u32::MAX` is `(uid_t) -1`, which no user has: the system calls read it as
/// "leave unchanged".
fn valid(id: u32) -> bool {
    id != u32::MAX
}

impl IdentityMap {
    /// Checks the anonymous ids: they must be real ids, and not root's, or
    /// squashing would make a client's root root again.
    pub fn checked(self) -> Result<IdentityMap, BadAnonymousId> {
        if self.anon_uid == 0 || self.anon_gid == 0 {
            return Err(BadAnonymousId(
                "the anonymous user and group must not be root (0): squashed clients would \
                 be root again; to let a client's root be root, use --no-root-squash"
                    .into(),
            ));
        }
        if !valid(self.anon_uid) || !valid(self.anon_gid) {
            return Err(BadAnonymousId(format!(
                "{} is no user or group id; pick the anonymous ids below it",
                u32::MAX
            )));
        }
        Ok(self)
    }

    /// The identity a request claiming `cred` acts as. EINVAL for a claim no
    /// process could make: an id of -1, or more groups than Linux allows.
    pub fn map(&self, cred: &Cred) -> Result<Identity, Errno> {
        if !valid(cred.uid)
            || !valid(cred.gid)
            || cred.groups.len() > MAX_GROUPS
            || !cred.groups.iter().all(|&g| valid(g))
        {
            return Err(Errno::EINVAL);
        }
        let anonymous = Identity {
            uid: self.anon_uid,
            gid: self.anon_gid,
            groups: Vec::new(),
            squashed: true,
        };
        Ok(match self.squash {
            Squash::All => anonymous,
            Squash::Root if cred.uid == 0 => anonymous,
            Squash::Root => {
                let unroot = |g: u32| if g == 0 { self.anon_gid } else { g };
                let mut groups: Vec<u32> = cred.groups.iter().map(|&g| unroot(g)).collect();
                groups.sort_unstable();
                groups.dedup();
                Identity {
                    uid: cred.uid,
                    gid: unroot(cred.gid),
                    groups,
                    squashed: false,
                }
            }
            Squash::None => Identity {
                uid: cred.uid,
                gid: cred.gid,
                groups: cred.groups.clone(),
                squashed: false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(uid: u32, gid: u32, groups: &[u32]) -> Cred {
        Cred {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    fn nobody() -> Identity {
        Identity {
            uid: DEFAULT_ANON_ID,
            gid: DEFAULT_ANON_ID,
            groups: Vec::new(),
            squashed: true,
        }
    }

    #[test]
    fn root_is_squashed_by_default_and_everyone_else_is_themselves() {
        let map = IdentityMap::default();
        assert_eq!(map.map(&cred(0, 0, &[0, 6, 42])), Ok(nobody()));
        // Root's group, claimed by anyone, is the anonymous group.
        assert_eq!(
            map.map(&cred(1000, 0, &[0, 27, 1000])),
            Ok(Identity {
                uid: 1000,
                gid: DEFAULT_ANON_ID,
                groups: vec![27, 1000, DEFAULT_ANON_ID],
                squashed: false,
            })
        );
        let user = map.map(&cred(1000, 1000, &[27])).unwrap();
        assert_eq!((user.uid, user.gid, user.groups), (1000, 1000, vec![27]));
        assert!(!user.squashed);
    }

    #[test]
    fn all_squash_and_no_root_squash() {
        let all = IdentityMap {
            squash: Squash::All,
            anon_uid: 500,
            anon_gid: 501,
        };
        let anon = all.map(&cred(1000, 1000, &[27])).unwrap();
        assert_eq!((anon.uid, anon.gid, anon.squashed), (500, 501, true));
        assert!(anon.groups.is_empty());
        let none = IdentityMap {
            squash: Squash::None,
            ..IdentityMap::default()
        };
        let root = none.map(&cred(0, 0, &[0, 6])).unwrap();
        assert!(root.is_root() && !root.squashed);
        assert_eq!(root.groups, vec![0, 6]);
    }

    #[test]
    fn impossible_claims_are_refused() {
        let map = IdentityMap::default();
        assert_eq!(map.map(&cred(u32::MAX, 1, &[])), Err(Errno::EINVAL));
        assert_eq!(map.map(&cred(1, u32::MAX, &[])), Err(Errno::EINVAL));
        assert_eq!(map.map(&cred(1, 1, &[u32::MAX])), Err(Errno::EINVAL));
        let many = vec![7; MAX_GROUPS + 1];
        assert_eq!(map.map(&cred(1, 1, &many)), Err(Errno::EINVAL));
        assert!(map.map(&cred(1, 1, &many[1..])).is_ok());
    }

    #[test]
    fn anonymous_ids_must_be_unprivileged_and_real() {
        let with = |anon_uid, anon_gid| IdentityMap {
            squash: Squash::Root,
            anon_uid,
            anon_gid,
        };
        assert!(with(0, 65_534).checked().is_err());
        assert!(with(65_534, 0).checked().is_err());
        assert!(with(u32::MAX, 1).checked().is_err());
        assert!(with(1000, 1000).checked().is_ok());
    }
}
