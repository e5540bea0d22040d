//! The attacks of issue 9 on privilege, made as a hostile client makes them:
//! raw protocol messages with whatever credential it likes to claim, against a
//! server running as root. Each must fail, and the proof is taken on the
//! server: a program made through the protocol is run as `nobody` and its
//! effective uid read, owners and attributes are read from the disk. A
//! well-behaved user must still be able to do everything with what it owns.
//!
//! These tests need root (a server not running as root acts as its own user
//! whoever asks). Without it they skip, and under `CI` they fail instead.

use ferry_common::frame;
use ferry_common::proto::{
    AttrChanges, ByteBuf, Cred, HandshakeReply, Hello, Op, Reply, Request, ServerMessage, Welcome,
    MAX_GROUPS, WELCOME_ACTS_AS_CALLERS, WELCOME_ALL_SQUASHED, WELCOME_ROOT_SQUASHED,
};
use ferry_common::{Errno, RelPath};
use ferry_server::{spawn_server, test_config, Security, ServerConfig, ServerHandle, Squash};
use std::ffi::CString;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

const NOBODY: u32 = 65_534;

/// A client speaking the protocol by hand, claiming any credential.
struct Client {
    stream: TcpStream,
    next_id: u64,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client::welcomed(addr).0
    }

    /// A connection and what the server's welcome said.
    fn welcomed(addr: SocketAddr) -> (Client, Welcome) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        frame::write_frame(&mut stream, &Hello::new()).unwrap();
        let payload = frame::read_frame(&mut stream).unwrap().unwrap();
        match frame::decode(&payload).unwrap() {
            HandshakeReply::Welcome(welcome) => (Client { stream, next_id: 1 }, welcome),
            other => panic!("not welcome: {other:?}"),
        }
    }

    fn call(&mut self, cred: &Cred, op: Op) -> Result<Reply, Errno> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request {
            id,
            cred: cred.clone(),
            op,
        };
        frame::write_frame(&mut self.stream, &request).unwrap();
        let payload = frame::read_frame(&mut self.stream).unwrap().unwrap();
        let ServerMessage::Response(response) = frame::decode(&payload).unwrap() else {
            panic!("a notice on a connection that did not subscribe");
        };
        assert_eq!(response.id, id);
        response.result
    }

    /// Creates `path` with `mode` and writes `data` into it, as `cred`.
    fn make_file(&mut self, cred: &Cred, path: &str, mode: u32, data: &[u8]) -> Result<(), Errno> {
        let create = Op::Create {
            path: p(path),
            flags: libc::O_WRONLY | libc::O_EXCL,
            mode,
        };
        let (handle, _) = self.call(cred, create)?.opened().ok_or(Errno::EPROTO)?;
        let write = Op::Write {
            handle,
            offset: 0,
            data: data.to_vec(),
        };
        let written = self.call(cred, write);
        self.call(cred, Op::Close { handle })?;
        written.map(|_| ())
    }
}

fn p(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

fn cred(uid: u32, gid: u32, groups: &[u32]) -> Cred {
    Cred {
        uid,
        gid,
        groups: groups.to_vec(),
    }
}

fn root() -> Cred {
    cred(0, 0, &[0])
}

fn chmod(mode: u32) -> AttrChanges {
    AttrChanges {
        mode: Some(mode),
        ..AttrChanges::default()
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this test can run: it needs root. Skips locally, fails under CI.
/// `group-only` in the export: root's, readable by group 4242 alone (0640).
fn group_only_file(site: &Site) {
    fs::write(site.e("group-only"), "for group 4242").unwrap();
    chown(site.e("group-only"), Some(0), Some(4242)).unwrap();
    fs::set_permissions(site.e("group-only"), fs::Permissions::from_mode(0o640)).unwrap();
}

fn needs_root() -> bool {
    if is_root() {
        return true;
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(!ci, "required under CI: this test needs root");
    eprintln!("SKIPPED: this test needs root (it fails under CI instead)");
    false
}

/// An export for the attacks, reachable by `nobody` so that what is made in
/// it can be run as `nobody` on the server:
///
/// ```text
/// export/         root 0755
/// export/pub/     root 1777 (anyone may create here, as in /tmp)
/// export/secret   root 0600 "root only"
/// export/id       root 0755, a copy of /usr/bin/id
/// export/home/    1000:1000 0755, a user's own directory
/// ```
struct Site {
    tmp: TempDir,
}

impl Site {
    fn new() -> Site {
        let tmp = tempfile::Builder::new()
            .prefix("ferry-privilege-")
            .tempdir()
            .unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let site = Site { tmp };
        let export = site.export();
        fs::create_dir(&export).unwrap();
        fs::create_dir(export.join("pub")).unwrap();
        fs::set_permissions(export.join("pub"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(export.join("secret"), "root only").unwrap();
        fs::set_permissions(export.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::copy("/usr/bin/id", export.join("id")).unwrap();
        fs::set_permissions(export.join("id"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(export.join("home")).unwrap();
        chown(export.join("home"), Some(1000), Some(1000)).unwrap();
        site
    }

    fn export(&self) -> PathBuf {
        self.tmp.path().join("export")
    }

    /// `export/rel` on the server's disk.
    fn e(&self, rel: &str) -> PathBuf {
        self.export().join(rel)
    }

    /// A server for the export: `tune` changes the default configuration
    /// (root squashed, no devices).
    fn serve(&self, tune: impl FnOnce(&mut ServerConfig)) -> ServerHandle {
        // Plaintext: the raw client here writes frames by hand.
        let mut config = test_config(&self.export(), Security::Insecure);
        config.identities.squash = Squash::Root;
        tune(&mut config);
        spawn_server(config).unwrap()
    }
}

/// Runs `program` as `nobody` on the server and returns what it printed.
fn run_as_nobody(program: &Path, args: &[&str]) -> String {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program)
        .args(args)
        .output()
        .expect("run setpriv (util-linux)");
    assert!(
        out.status.success(),
        "{} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of extended attribute `name` of `path` on the server's disk, if any.
fn xattr_on_disk(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let c_name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings; the pointer and length describe `buf`.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// `security.capability` granting `cap_setuid+ep` (struct vfs_cap_data,
/// revision 2): what makes a copy of perl turn root.
fn cap_setuid() -> Vec<u8> {
    const REVISION_2: u32 = 0x0200_0000;
    const EFFECTIVE: u32 = 1;
    const CAP_SETUID: u32 = 7;
    [REVISION_2 | EFFECTIVE, 1 << CAP_SETUID, 0, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_le_bytes())
        .collect()
}

#[test]
fn a_squashed_root_cannot_leave_a_setuid_root_program_behind() {
    if !needs_root() {
        return;
    }
    let site = Site::new();
    let server = site.serve(|_| {});
    let mut client = Client::connect(server.addr());
    let id = fs::read("/usr/bin/id").unwrap();
    // Create{mode: 04755} with id's bytes, as "root".
    client.make_file(&root(), "pub/x", 0o4755, &id).unwrap();
    let made = fs::metadata(site.e("pub/x")).unwrap();
    assert_eq!(
        (made.uid(), made.gid(), made.mode() & 0o7777),
        (NOBODY, NOBODY, 0o755),
        "owned by nobody, without set-id bits"
    );
    // SetAttr{uid: 0, mode: 06755}: a squashed root gives nothing to root...
    let to_root = AttrChanges {
        uid: Some(0),
        gid: Some(0),
        mode: Some(0o6755),
        ..AttrChanges::default()
    };
    let on = |path: &str| Op::SetAttr {
        path: p(path),
        handle: None,
        changes: to_root,
    };
    assert_eq!(client.call(&root(), on("pub/x")), Err(Errno::EPERM));
    // ...nor changes root's files...
    assert_eq!(client.call(&root(), on("id")), Err(Errno::EPERM));
    let id_mode = |site: &Site| fs::metadata(site.e("id")).unwrap().mode() & 0o7777;
    assert_eq!(id_mode(&site), 0o755);
    let setattr = |path: &str, changes| Op::SetAttr {
        path: p(path),
        handle: None,
        changes,
    };
    assert_eq!(
        client.call(&root(), setattr("id", chmod(0o4755))),
        Err(Errno::EPERM)
    );
    // ...and its chmod of its own file drops set-id bits, by path or by handle.
    let attr = client
        .call(&root(), setattr("pub/x", chmod(0o6755)))
        .unwrap()
        .attr()
        .unwrap();
    assert_eq!(attr.perm, 0o755);
    let opened = client
        .call(
            &root(),
            Op::Open {
                path: p("pub/x"),
                flags: libc::O_RDWR,
            },
        )
        .unwrap();
    let (handle, _) = opened.opened().unwrap();
    let by_handle = Op::SetAttr {
        path: p("pub/x"),
        handle: Some(handle),
        changes: chmod(0o4711),
    };
    assert_eq!(
        client
            .call(&root(), by_handle)
            .unwrap()
            .attr()
            .unwrap()
            .perm,
        0o711
    );
    client.call(&root(), Op::Close { handle }).unwrap();
    // Run by nobody on the server, it is nobody.
    let said = run_as_nobody(&site.e("pub/x"), &["-u"]);
    assert_eq!(said.trim(), NOBODY.to_string(), "euid of the program");
    assert_eq!(id_mode(&site), 0o755);
}

#[test]
fn file_capabilities_and_trusted_attributes_are_roots_alone() {
    if !needs_root() {
        return;
    }
    let site = Site::new();
    let server = site.serve(|_| {});
    let mut client = Client::connect(server.addr());
    fs::copy("/usr/bin/perl", site.e("pub/perl")).unwrap();
    chown(site.e("pub/perl"), Some(NOBODY), Some(NOBODY)).unwrap();
    client
        .make_file(&cred(1000, 1000, &[]), "home/mine", 0o755, b"#!/bin/sh\n")
        .unwrap();
    let set = |path: &str, name: &str, value: Vec<u8>| Op::SetXattr {
        path: p(path),
        name: name.as_bytes().to_vec(),
        value,
        flags: 0,
    };
    // cap_setuid+ep on a copy of perl: by a squashed root on nobody's file, by
    // a user on its own file, on root's file.
    for (who, path) in [
        (root(), "pub/perl"),
        (cred(1000, 1000, &[]), "home/mine"),
        (root(), "id"),
    ] {
        for name in ["security.capability", "trusted.overlay.opaque"] {
            let value = if name == "security.capability" {
                cap_setuid()
            } else {
                b"y".to_vec()
            };
            assert_eq!(
                client.call(&who, set(path, name, value)),
                Err(Errno::EPERM),
                "{name} on {path} by uid {}",
                who.uid
            );
            assert_eq!(xattr_on_disk(&site.e(path), name), None, "{name} on {path}");
        }
        let remove = Op::RemoveXattr {
            path: p(path),
            name: b"security.capability".to_vec(),
        };
        assert_eq!(client.call(&who, remove), Err(Errno::EPERM));
    }
    // The copy of perl, run by nobody, cannot become root.
    let said = run_as_nobody(
        &site.e("pub/perl"),
        &["-e", "$< = 0; $> = 0; print $>, qq(\\n)"],
    );
    assert_eq!(
        said.trim(),
        NOBODY.to_string(),
        "perl's euid after setuid(0)"
    );
    // Root's trusted attributes are out of sight for anyone but root.
    let trusted = site.e("id");
    let c_path = CString::new(trusted.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C strings and a one-byte value.
    let set_here = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c"trusted.mark".as_ptr(),
            b"x".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(set_here, 0, "root sets a trusted attribute on the server");
    let get = Op::GetXattr {
        path: p("id"),
        name: b"trusted.mark".to_vec(),
    };
    assert_eq!(
        client.call(&root(), get.clone()),
        Err(Errno::new(libc::ENODATA))
    );
    let list = client
        .call(&root(), Op::ListXattr { path: p("id") })
        .unwrap();
    assert_eq!(list, Reply::Xattr(Vec::new()));
    // With --no-root-squash, root is root.
    let trusting = site.serve(|c| c.identities.squash = Squash::None);
    let mut admin = Client::connect(trusting.addr());
    assert_eq!(admin.call(&root(), get), Ok(Reply::Xattr(b"x".to_vec())));
    admin
        .call(&root(), set("id", "security.capability", cap_setuid()))
        .unwrap();
    assert_eq!(
        xattr_on_disk(&site.e("id"), "security.capability"),
        Some(cap_setuid())
    );
}

#[test]
fn device_nodes_need_the_operators_leave_and_root() {
    if !needs_root() {
        return;
    }
    let site = Site::new();
    let disk = libc::makedev(254, 0);
    let hwrng = libc::makedev(10, 183);
    let mknod = |path: &str, kind: u32, rdev| Op::Mknod {
        path: p(path),
        mode: kind | 0o666,
        rdev,
    };
    let squashing = site.serve(|_| {});
    let trusting = site.serve(|c| c.identities.squash = Squash::None);
    let allowing = site.serve(|c| c.allow_devices = true);
    for server in [&squashing, &trusting, &allowing] {
        let mut client = Client::connect(server.addr());
        for (name, kind, rdev) in [
            ("pub/disk", libc::S_IFBLK, disk),
            ("pub/hwrng", libc::S_IFCHR, hwrng),
        ] {
            for who in [root(), cred(1000, 1000, &[])] {
                assert_eq!(
                    client.call(&who, mknod(name, kind, rdev)),
                    Err(Errno::EPERM),
                    "{name} by uid {}",
                    who.uid
                );
                assert!(fs::symlink_metadata(site.e(name)).is_err());
            }
        }
        // FIFOs are no devices.
        let fifo = format!("pub/fifo{}", server.addr().port());
        assert!(client.call(&root(), mknod(&fifo, libc::S_IFIFO, 0)).is_ok());
    }
    // The operator's leave and root on the server, together, make one.
    let both = site.serve(|c| {
        c.identities.squash = Squash::None;
        c.allow_devices = true;
    });
    let mut client = Client::connect(both.addr());
    client
        .call(
            &root(),
            mknod("pub/null", libc::S_IFCHR, libc::makedev(1, 3)),
        )
        .unwrap();
    assert_eq!(
        fs::symlink_metadata(site.e("pub/null")).unwrap().rdev(),
        libc::makedev(1, 3)
    );
}

#[test]
fn new_nodes_belong_to_the_mapped_user_whoever_is_claimed() {
    if !needs_root() {
        return;
    }
    let site = Site::new();
    let owner = |site: &Site, rel: &str| {
        let m = fs::symlink_metadata(site.e(rel)).unwrap();
        (m.uid(), m.gid())
    };
    let squashing = site.serve(|_| {});
    let mut client = Client::connect(squashing.addr());
    // Root, claimed: nobody.
    client.make_file(&root(), "pub/r", 0o644, b"").unwrap();
    client
        .call(
            &root(),
            Op::Mkdir {
                path: p("pub/rd"),
                mode: 0o755,
            },
        )
        .unwrap();
    client
        .call(
            &root(),
            Op::Symlink {
                path: p("pub/rl"),
                target: b"r".to_vec(),
            },
        )
        .unwrap();
    for rel in ["pub/r", "pub/rd", "pub/rl"] {
        assert_eq!(owner(&site, rel), (NOBODY, NOBODY), "{rel}");
    }
    // Root's group, claimed by a user: the anonymous group.
    client
        .make_file(&cred(1000, 0, &[0]), "pub/g", 0o644, b"")
        .unwrap();
    assert_eq!(owner(&site, "pub/g"), (1000, NOBODY));
    // Any other user, claimed, is that user (as with NFS's AUTH_SYS: who may
    // connect at all is the handshake's to decide).
    client
        .make_file(&cred(1000, 1000, &[]), "pub/u", 0o644, b"")
        .unwrap();
    assert_eq!(owner(&site, "pub/u"), (1000, 1000));
    // --all-squash: everyone is nobody, with a chosen anonymous id.
    let anonymous = site.serve(|c| {
        c.identities.squash = Squash::All;
        c.identities.anon_uid = 4000;
        c.identities.anon_gid = 4001;
    });
    let mut client = Client::connect(anonymous.addr());
    client
        .make_file(&cred(1000, 1000, &[]), "pub/a", 0o4755, b"")
        .unwrap();
    let a = fs::metadata(site.e("pub/a")).unwrap();
    assert_eq!((a.uid(), a.gid(), a.mode() & 0o7777), (4000, 4001, 0o755));
}

#[test]
fn permissions_are_checked_as_the_mapped_user() {
    if !needs_root() {
        return;
    }
    let site = Site::new();
    group_only_file(&site);
    let open = |path: &str| Op::Open {
        path: p(path),
        flags: libc::O_RDONLY,
    };
    let squashing = site.serve(|_| {});
    let mut client = Client::connect(squashing.addr());
    // Root's 0600 file: not for nobody, nor for a squashed root.
    for who in [cred(NOBODY, NOBODY, &[]), root(), cred(1000, 1000, &[])] {
        assert_eq!(
            client.call(&who, open("secret")),
            Err(Errno::EACCES),
            "uid {}",
            who.uid
        );
    }
    // Anyone may still see that it is there.
    assert!(client
        .call(&cred(NOBODY, NOBODY, &[]), Op::Stat { path: p("secret") })
        .is_ok());
    // Supplementary groups count, as the client claims them.
    assert!(client
        .call(&cred(1000, 1000, &[4242]), open("group-only"))
        .is_ok());
    assert_eq!(
        client.call(&cred(1000, 1000, &[]), open("group-only")),
        Err(Errno::EACCES)
    );
    // --all-squash: even a user's own private file is out of reach.
    client
        .make_file(&cred(1000, 1000, &[]), "home/private", 0o600, b"mine")
        .unwrap();
    let anonymous = site.serve(|c| c.identities.squash = Squash::All);
    let mut client = Client::connect(anonymous.addr());
    assert_eq!(
        client.call(&cred(1000, 1000, &[]), open("home/private")),
        Err(Errno::EACCES)
    );
    // --no-root-squash: root reads root's file.
    let trusting = site.serve(|c| c.identities.squash = Squash::None);
    let mut client = Client::connect(trusting.addr());
    let (handle, _) = client
        .call(&root(), open("secret"))
        .unwrap()
        .opened()
        .unwrap();
    let read = Op::Read {
        handle,
        offset: 0,
        len: 100,
    };
    assert_eq!(
        client.call(&root(), read),
        Ok(Reply::Data(b"root only".to_vec()))
    );
}

#[test]
fn files_read_together_are_read_as_the_mapped_user() {
    if !needs_root() {
        return;
    }
    let site = Site::new();
    group_only_file(&site);
    fs::write(site.e("open"), "for all").unwrap();
    fs::set_permissions(site.e("open"), fs::Permissions::from_mode(0o644)).unwrap();
    let read = || Op::ReadFiles {
        dir: RelPath::root(),
        names: ["secret", "group-only", "open"]
            .iter()
            .map(|n| ByteBuf::from(n.as_bytes().to_vec()))
            .collect(),
        max_each: 1 << 10,
    };
    // What each name answered: its bytes, or its error.
    let outcome = |reply: Result<Reply, Errno>| -> Vec<Result<Vec<u8>, Errno>> {
        match reply {
            Ok(Reply::Files(files)) => files
                .into_iter()
                .map(|f| f.result.map(|c| c.data))
                .collect(),
            other => panic!("{other:?}"),
        }
    };
    let squashing = site.serve(|_| {});
    let mut client = Client::connect(squashing.addr());
    // Root's 0600 file is refused to nobody and to a squashed root, each
    // file on its own, and the rest is read.
    for who in [cred(NOBODY, NOBODY, &[]), root()] {
        assert_eq!(
            outcome(client.call(&who, read())),
            [
                Err(Errno::EACCES),
                Err(Errno::EACCES),
                Ok(b"for all".to_vec())
            ],
            "uid {}",
            who.uid
        );
    }
    assert_eq!(
        outcome(client.call(&cred(1000, 1000, &[4242]), read())),
        [
            Err(Errno::EACCES),
            Ok(b"for group 4242".to_vec()),
            Ok(b"for all".to_vec())
        ]
    );
    // --no-root-squash: root reads root's file.
    let trusting = site.serve(|c| c.identities.squash = Squash::None);
    let mut client = Client::connect(trusting.addr());
    assert_eq!(
        outcome(client.call(&root(), read()))[0],
        Ok(b"root only".to_vec())
    );
}

#[test]
fn a_user_can_still_do_everything_with_what_it_owns() {
    if !needs_root() {
        return;
    }
    let site = Site::new();
    let server = site.serve(|_| {});
    let mut client = Client::connect(server.addr());
    let me = cred(1000, 1000, &[4242]);
    let mut ok = |op: Op| -> Reply {
        let name = op.name();
        client
            .call(&me, op)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    ok(Op::Mkdir {
        path: p("home/d"),
        mode: 0o750,
    });
    let created = ok(Op::Create {
        path: p("home/d/f"),
        flags: libc::O_RDWR | libc::O_EXCL,
        mode: 0o600,
    });
    let (handle, _) = created.opened().unwrap();
    ok(Op::Write {
        handle,
        offset: 0,
        data: b"hello".to_vec(),
    });
    assert_eq!(
        ok(Op::Read {
            handle,
            offset: 0,
            len: 10
        }),
        Reply::Data(b"hello".to_vec())
    );
    ok(Op::Fsync {
        handle,
        datasync: false,
    });
    ok(Op::Close { handle });
    let truncated = ok(Op::SetAttr {
        path: p("home/d/f"),
        handle: None,
        changes: AttrChanges {
            size: Some(2),
            ..AttrChanges::default()
        },
    });
    assert_eq!(truncated.attr().unwrap().size, 2);
    // Its own set-user-id program, in a group it is in, is its own business,
    // as on a local disk.
    let attr = ok(Op::SetAttr {
        path: p("home/d/f"),
        handle: None,
        changes: AttrChanges {
            mode: Some(0o4750),
            gid: Some(4242),
            ..AttrChanges::default()
        },
    })
    .attr()
    .unwrap();
    assert_eq!((attr.perm, attr.gid), (0o4750, 4242));
    ok(Op::SetXattr {
        path: p("home/d/f"),
        name: b"user.note".to_vec(),
        value: b"mine".to_vec(),
        flags: 0,
    });
    assert_eq!(
        ok(Op::GetXattr {
            path: p("home/d/f"),
            name: b"user.note".to_vec(),
        }),
        Reply::Xattr(b"mine".to_vec())
    );
    ok(Op::Symlink {
        path: p("home/d/l"),
        target: b"f".to_vec(),
    });
    ok(Op::Link {
        existing: p("home/d/f"),
        path: p("home/d/h"),
    });
    ok(Op::Mknod {
        path: p("home/d/fifo"),
        mode: libc::S_IFIFO | 0o600,
        rdev: 0,
    });
    ok(Op::Rename {
        from: p("home/d/f"),
        to: p("home/d/g"),
        flags: 0,
    });
    let made = fs::metadata(site.e("home/d/g")).unwrap();
    assert_eq!(
        (made.uid(), made.gid(), made.mode() & 0o7777),
        (1000, 4242, 0o4750)
    );
    for name in ["g", "h", "l", "fifo"] {
        ok(Op::Unlink {
            path: p(&format!("home/d/{name}")),
        });
    }
    ok(Op::Rmdir { path: p("home/d") });
    assert_eq!(fs::read_dir(site.e("home")).unwrap().count(), 0);
}

#[test]
fn impossible_credentials_are_refused() {
    if !needs_root() {
        return;
    }
    let site = Site::new();
    let server = site.serve(|c| c.identities.squash = Squash::None);
    let mut client = Client::connect(server.addr());
    let stat = || Op::Stat { path: p("id") };
    for bad in [
        cred(u32::MAX, 0, &[]),
        cred(0, u32::MAX, &[]),
        cred(1000, 1000, &[u32::MAX]),
        cred(1000, 1000, &vec![1; MAX_GROUPS + 1]),
    ] {
        assert_eq!(client.call(&bad, stat()), Err(Errno::EINVAL));
    }
    // The connection goes on.
    assert!(client.call(&root(), stat()).is_ok());
}

#[test]
fn the_welcome_says_whom_client_users_act_as() {
    if !needs_root() {
        return;
    }
    let site = Site::new();
    let acts = WELCOME_ACTS_AS_CALLERS;
    for (squash, expected) in [
        (Squash::None, acts),
        (Squash::Root, acts | WELCOME_ROOT_SQUASHED),
        (
            Squash::All,
            acts | WELCOME_ROOT_SQUASHED | WELCOME_ALL_SQUASHED,
        ),
    ] {
        let server = site.serve(|c| c.identities.squash = squash);
        let (_, welcome) = Client::welcomed(server.addr());
        assert_eq!(welcome.features, expected, "{squash:?}");
    }
}
