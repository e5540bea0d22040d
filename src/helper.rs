//! `mount.ferry` and `mount.fuse.ferry`: ferry as mount(8) and /etc/fstab run it.
//!
//! mount(8) runs `/sbin/mount.fuse.ferry SPEC DIR [-sfnv] [-o OPTS] [-t TYPE]`
//! for a filesystem of type `fuse.ferry` (and `mount.ferry` for `ferry`). Both
//! are links to the one `ferry` program, which knows by the name it was run
//! under. The helper turns that into a `ferry mount SPEC DIR --daemon ...`
//! command line, one `-o` option at a time through [`OPTIONS`], and hands it to
//! the same code as `ferry mount`; so, like `mount --daemon`, it returns only
//! once the mount is live (or with the reason it is not).

use crate::args::{Cli, Cmd, MountArgs};
use clap::Parser;
use std::ffi::OsString;

/// The names ferry answers to as a mount helper.
pub const HELPER_NAMES: [&str; 2] = ["mount.fuse.ferry", "mount.ferry"];

/// How one `-o` option becomes arguments of `ferry mount`.
#[derive(Clone, Copy, Debug)]
enum Maps {
    /// `-o name` is `--flag`.
    Flag(&'static str),
    /// `-o name=VALUE` is `--option VALUE`.
    Value(&'static str),
}

/// The `ferry mount` options an fstab line may set, one line each. Credentials
/// are only ever file paths (a token file, a key file), never secrets: mount
/// options are visible to every user in /etc/fstab and in process listings.
const OPTIONS: &[(&str, Maps)] = &[
    ("ro", Maps::Flag("--read-only")),
    ("allow_other", Maps::Flag("--allow-other")),
    ("attr_timeout", Maps::Value("--attr-timeout")),
    ("lease", Maps::Value("--lease")),
    ("timeout", Maps::Value("--timeout")),
    ("threads", Maps::Value("--threads")),
    ("token_file", Maps::Value("--token-file")),
    ("pin", Maps::Value("--pin")),
    ("state_dir", Maps::Value("--state-dir")),
    ("insecure", Maps::Flag("--insecure")),
];

/// Options meant for mount(8) or systemd, or what ferry does anyway (it always
/// mounts nodev,nosuid): accepted and ignored, as sshfs does. So are `x-*`.
const IGNORED: &[&str] = &[
    "_netdev", "nofail", "auto", "noauto", "user", "users", "defaults", "dev", "suid", "rw",
    "nodev", "nosuid",
];

/// What mount(8) asked for.
#[derive(Debug, PartialEq)]
pub struct HelperRequest {
    pub mount: MountArgs,
    /// `-f`: check everything, mount nothing.
    pub fake: bool,
    /// `-v`: say more.
    pub verbose: bool,
}

/// Parses the helper's command line (`args[0]` is the program name).
pub fn parse(args: &[OsString]) -> Result<HelperRequest, String> {
    let usage = "usage: mount.fuse.ferry ADDRESS MOUNTPOINT [-sfnv] [-o OPTIONS]";
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut fake, mut verbose, mut sloppy) = (false, false, false);
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let text = arg
            .to_str()
            .ok_or_else(|| format!("{} is not valid UTF-8", arg.to_string_lossy()))?;
        if let Some(opts) = text.strip_prefix("-o") {
            let opts = if opts.is_empty() {
                rest.next()
                    .and_then(|o| o.to_str())
                    .ok_or_else(|| format!("-o needs a list of options; {usage}"))?
            } else {
                opts
            };
            options.extend(
                opts.split(',')
                    .filter(|o| !o.is_empty())
                    .map(str::to_string),
            );
        } else if text == "-t" || text == "-N" {
            // -t fuse.ferry names us; -N asks for another mount namespace.
            let value = rest.next().and_then(|v| v.to_str()).unwrap_or_default();
            if text == "-N" {
                return Err(format!(
                    "mounting in another namespace (-N {value}) is not supported"
                ));
            }
        } else if text.len() > 1 && text.starts_with('-') && !text.starts_with("--") {
            for flag in text[1..].chars() {
                match flag {
                    'f' => fake = true,
                    'v' => verbose = true,
                    's' => sloppy = true,
                    'n' => {} // no /etc/mtab to write
                    other => return Err(format!("unknown flag -{other}; {usage}")),
                }
            }
        } else {
            positional.push(arg.clone());
        }
    }
    let [spec, dir] = positional.as_slice() else {
        return Err(format!("expected an address and a mountpoint; {usage}"));
    };
    let mut argv: Vec<OsString> = vec!["ferry".into(), "mount".into(), "--daemon".into()];
    for option in &options {
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (option.as_str(), None),
        };
        if IGNORED.contains(&name) || name.starts_with("x-") {
            continue;
        }
        match (OPTIONS.iter().find(|(n, _)| *n == name).map(|o| o.1), value) {
            (Some(Maps::Flag(flag)), None) => argv.push(flag.into()),
            (Some(Maps::Value(long)), Some(value)) => {
                argv.push(long.into());
                argv.push(value.into());
            }
            (Some(Maps::Flag(_)), Some(_)) => {
                return Err(format!("mount option {name} takes no value ({option})"))
            }
            (Some(Maps::Value(_)), None) => {
                return Err(format!("mount option {name} needs a value ({name}=...)"))
            }
            (None, _) if sloppy => log::warn!("ignoring unknown mount option {option}"),
            (None, _) => {
                let known: Vec<&str> = OPTIONS.iter().map(|o| o.0).collect();
                return Err(format!(
                    "unknown mount option {option:?} (ferry knows {}; -s ignores unknown ones)",
                    known.join(", ")
                ));
            }
        }
    }
    argv.push("--".into());
    argv.push(spec.clone());
    argv.push(dir.clone());
    let cli = Cli::try_parse_from(&argv).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        format!("bad mount options: {}", first.trim_start_matches("error: "))
    })?;
    match cli.command {
        Cmd::Mount(mount) => Ok(HelperRequest {
            mount,
            fake,
            verbose,
        }),
        _ => Err("the mount helper built a command that is not a mount".into()),
    }
}

/// Whether this program was run as a mount helper, by the name in `argv0`.
pub fn is_helper(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| HELPER_NAMES.contains(&n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn helper(args: &[&str]) -> Result<HelperRequest, String> {
        let args: Vec<OsString> = std::iter::once("mount.fuse.ferry")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        parse(&args)
    }

    #[test]
    fn the_documented_fstab_line_mounts_in_the_background() {
        let r = helper(&[
            "server:7070",
            "/mnt/data",
            "-o",
            "rw,_netdev,nofail,x-systemd.automount,nodev,nosuid",
            "-t",
            "fuse.ferry",
        ])
        .unwrap();
        assert_eq!(r.mount.addr, "server:7070");
        assert_eq!(r.mount.mountpoint, PathBuf::from("/mnt/data"));
        assert!(r.mount.daemon, "returns once the mount is live");
        assert!(!r.mount.read_only && !r.mount.allow_other);
        assert!(!r.fake && !r.verbose);
    }

    #[test]
    fn ferry_options_map_to_mount_flags() {
        let r = helper(&[
            "server:7070/docs:/sub",
            "/mnt/docs",
            "-sv",
            "-n",
            "-oro,allow_other,attr_timeout=5,timeout=2.5,threads=8",
        ])
        .unwrap();
        assert!(r.mount.read_only && r.mount.allow_other && r.verbose);
        assert_eq!(
            (r.mount.attr_timeout, r.mount.timeout, r.mount.threads),
            (5.0, 2.5, 8)
        );
        assert!(helper(&["a", "/m", "-f"]).unwrap().fake);
        assert!(helper(&["a", "/m", "-x"])
            .unwrap_err()
            .contains("unknown flag -x"));
    }

    #[test]
    fn mistakes_are_named() {
        let err = helper(&["a", "/m", "-o", "bogus"]).unwrap_err();
        assert!(err.contains("unknown mount option \"bogus\""), "{err}");
        assert!(err.contains("attr_timeout"), "{err}");
        // Sloppy (-s) lets unknown options pass.
        assert!(helper(&["a", "/m", "-s", "-o", "bogus"]).is_ok());
        let err = helper(&["a", "/m", "-o", "ro=1"]).unwrap_err();
        assert!(err.contains("takes no value"), "{err}");
        let err = helper(&["a", "/m", "-o", "timeout"]).unwrap_err();
        assert!(err.contains("needs a value"), "{err}");
        let err = helper(&["a", "/m", "-o", "threads=many"]).unwrap_err();
        assert!(err.contains("bad mount options"), "{err}");
        assert!(helper(&["a"]).unwrap_err().contains("expected an address"));
        assert!(helper(&["a", "/m", "-N", "/proc/1/ns/mnt"])
            .unwrap_err()
            .contains("namespace"));
    }

    #[test]
    fn recognised_by_name() {
        assert!(is_helper("/sbin/mount.fuse.ferry".as_ref()));
        assert!(is_helper("mount.ferry".as_ref()));
        assert!(!is_helper("/usr/bin/ferry".as_ref()));
    }
}
