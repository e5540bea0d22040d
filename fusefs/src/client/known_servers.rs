//! The servers a client has met: `known_servers` in its state directory, like
//! ssh's `known_hosts`. One line per server address, `ADDRESS SHA256:…`; the
//! first contact with an address records the fingerprint its certificate has,
//! and every later connection to that address must present the same one.
//! Lines starting with `#` and blank lines are skipped.

use ferry_common::auth::Fingerprint;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A known-servers file.
#[derive(Clone, Debug)]
pub struct KnownServers {
    path: PathBuf,
}

/// What the file says about one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// Recorded on line `line` (counting from 1).
    Recorded {
        fingerprint: Fingerprint,
        line: usize,
    },
    Unknown,
}

impl KnownServers {
    pub fn new(path: PathBuf) -> KnownServers {
        KnownServers { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprint recorded for `addr` (the first line naming it).
    pub fn lookup(&self, addr: &str) -> Result<Known, String> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Known::Unknown),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        Ok(find(&text, &key(addr)))
    }

    /// Records `fingerprint` for `addr` at the end of the file (made if missing).
    pub fn record(&self, addr: &str, fingerprint: &Fingerprint) -> Result<usize, String> {
        let failed =
            |e: io::Error| format!("cannot record the server in {}: {e}", self.path.display());
        if let Some(dir) = self.path.parent() {
            ferry_common::state::ensure_dir(dir).map_err(|e| e.to_string())?;
        }
        let existing = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(failed(e)),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(failed)?;
        // A file whose last line lacks its newline gets one first.
        let mut line = String::new();
        if !existing.is_empty() && !existing.ends_with('\n') {
            line.push('\n');
        }
        line.push_str(&format!("{} {fingerprint}\n", key(addr)));
        file.write_all(line.as_bytes()).map_err(failed)?;
        Ok(existing.lines().count() + 1)
    }
}

/// How an address is written in the file: as given, host in lower case.
fn key(addr: &str) -> String {
    addr.trim().to_ascii_lowercase()
}

/// The first well-formed line for `addr` in `text`.
fn find(text: &str, addr: &str) -> Known {
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(first), Some(second)) = (words.next(), words.next()) else {
            continue;
        };
        if first.starts_with('#') || first != addr {
            continue;
        }
        match Fingerprint::parse(second) {
            Ok(fingerprint) => {
                return Known::Recorded {
                    fingerprint,
                    line: n + 1,
                }
            }
            Err(_) => log::warn!(
                "line {} of the known servers names {addr} with no fingerprint",
                n + 1
            ),
        }
    }
    Known::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_found_by_address_with_their_number() {
        let a = Fingerprint::of(b"a");
        let b = Fingerprint::of(b"b");
        let text = format!(
            "# servers\n\n10.0.0.5:7070 {a}\nfileserver:7070 {b} a comment\n10.0.0.5:7070 {b}\n"
        );
        assert_eq!(
            find(&text, "10.0.0.5:7070"),
            Known::Recorded {
                fingerprint: a,
                line: 3
            }
        );
        assert_eq!(
            find(&text, "fileserver:7070"),
            Known::Recorded {
                fingerprint: b,
                line: 4
            }
        );
        assert_eq!(find(&text, "10.0.0.5:7071"), Known::Unknown);
        assert_eq!(find("# 10.0.0.5:7070 x\n", "10.0.0.5:7070"), Known::Unknown);
        // A malformed line for the address is skipped, not trusted.
        let text = format!("h:1 nonsense\nh:1 {a}\n");
        assert_eq!(
            find(&text, "h:1"),
            Known::Recorded {
                fingerprint: a,
                line: 2
            }
        );
    }

    #[test]
    fn recording_appends_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownServers::new(dir.path().join("state/known_servers"));
        assert_eq!(known.lookup("Host:7070"), Ok(Known::Unknown));
        let a = Fingerprint::of(b"a");
        assert_eq!(known.record("Host:7070", &a), Ok(1));
        let b = Fingerprint::of(b"b");
        // A last line without its newline is finished first.
        let mut text = fs::read_to_string(known.path()).unwrap();
        text.push_str("# no newline");
        fs::write(known.path(), &text).unwrap();
        assert_eq!(known.record("other:1", &b), Ok(3));
        assert_eq!(
            known.lookup("host:7070"),
            Ok(Known::Recorded {
                fingerprint: a,
                line: 1
            })
        );
        assert_eq!(
            known.lookup("other:1"),
            Ok(Known::Recorded {
                fingerprint: b,
                line: 3
            })
        );
        let text = fs::read_to_string(known.path()).unwrap();
        assert_eq!(text, format!("host:7070 {a}\n# no newline\nother:1 {b}\n"));
    }
}
