//! How a person names what to reach on a server: `HOST[:PORT][/EXPORT][:/DIR]`.
//!
//! - `HOST` is a name, an IPv4 address, or an IPv6 address in brackets
//!   (`[::1]`); `PORT` defaults to [`DEFAULT_PORT`], the port `ferry serve`
//!   listens on by default.
//! - `/EXPORT` names one of the server's exports (`ferry serve --export
//!   NAME=DIR`); without it the client gets the server's default export (`ferry
//!   serve DIR`).
//! - `:/DIR` (as sshfs takes `host:path`) makes a directory inside the export the
//!   root of what the client sees; the server confines the connection to it as
//!   firmly as to the export itself.
//!
//! So `server`, `server:7070`, `server:7070:/projects/a`, `server:7070/docs` and
//! `[fd00::5]:7070/docs:/manuals` are all addresses. The export's name and the
//! directory travel in the handshake's `Hello`.

use crate::path::RelPath;
use std::fmt;

/// The port `ferry serve` listens on, and the one an address without a port means.
pub const DEFAULT_PORT: u16 = 7070;

/// The longest export name.
pub const EXPORT_NAME_MAX: usize = 64;

/// A parsed address: where the server is and what of it to reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// A host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
    /// The export's name; `None` for the server's default export.
    pub export: Option<String>,
    /// The directory inside the export to serve as the root; the root itself if empty.
    pub subtree: RelPath,
}

impl Address {
    /// Parses `HOST[:PORT][/EXPORT][:/DIR]`; the error says what is wrong, for a person.
    pub fn parse(text: &str) -> Result<Address, String> {
        let bad = |why: &str| {
            format!(
                "{text:?} is not a ferry address: {why} \
                 (write HOST[:PORT][/EXPORT][:/DIR], like server:7070 or server:7070/docs:/manuals)"
            )
        };
        let (host, rest) = if let Some(inner) = text.strip_prefix('[') {
            let end = inner
                .find(']')
                .ok_or_else(|| bad("an IPv6 address in brackets lacks its `]`"))?;
            (&inner[..end], &inner[end + 1..])
        } else {
            let end = text.find([':', '/']).unwrap_or(text.len());
            let host = &text[..end];
            if text[end..].starts_with(':') && text[end + 1..].contains(':') && host.is_empty() {
                return Err(bad("put an IPv6 address in brackets, like [::1]:7070"));
            }
            (host, &text[end..])
        };
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        if host.contains(char::is_whitespace) {
            return Err(bad("the host contains a space"));
        }
        let mut rest = rest;
        let mut port = DEFAULT_PORT;
        if let Some(after) = rest.strip_prefix(':') {
            if after.starts_with(|c: char| c.is_ascii_digit()) {
                let end = after.find([':', '/']).unwrap_or(after.len());
                port = after[..end]
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(&format!("{:?} is not a port number", &after[..end])))?;
                rest = &after[end..];
            } else if !after.starts_with('/') {
                return Err(bad(&format!(
                    "expected a port number or `:/DIR` after the host, not {after:?}"
                )));
            }
        }
        let mut export = None;
        if let Some(after) = rest.strip_prefix('/') {
            let end = after.find(':').unwrap_or(after.len());
            let name = &after[..end];
            if let Some((first, _)) = name.split_once('/') {
                return Err(bad(&format!(
                    "an export's name has no `/`; to reach a directory inside export \
                     {first:?}, write HOST:PORT/{first}:/DIR"
                )));
            }
            check_export_name(name).map_err(|why| bad(&why))?;
            export = Some(name.to_string());
            rest = &after[end..];
        }
        let mut subtree = RelPath::root();
        if let Some(dir) = rest.strip_prefix(':') {
            subtree = RelPath::parse(dir).map_err(|_| {
                bad(&format!(
                    "{dir:?} is not a directory inside the export (`..` is not allowed)"
                ))
            })?;
        } else if !rest.is_empty() {
            return Err(bad(&format!("unexpected {rest:?} at the end")));
        }
        Ok(Address {
            host: host.to_string(),
            port,
            export,
            subtree,
        })
    }

    /// `HOST:PORT` as `std::net::ToSocketAddrs` takes it (IPv6 in brackets).
    pub fn socket_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The address written in full: `HOST:PORT[/EXPORT][:/DIR]`.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.socket_addr())?;
        if let Some(export) = &self.export {
            write!(f, "/{export}")?;
        }
        if !self.subtree.is_root() {
            write!(f, ":/{}", self.subtree)?;
        }
        Ok(())
    }
}

/// Export names are 1 to [`EXPORT_NAME_MAX`] letters, digits, `.`, `_` and `-`,
/// not starting with `.` or `-`: they appear in addresses, file names and logs.
pub fn check_export_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the export name after `/` is empty".into());
    }
    if name.len() > EXPORT_NAME_MAX {
        return Err(format!(
            "export names are at most {EXPORT_NAME_MAX} characters"
        ));
    }
    if name.starts_with(['.', '-'])
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{name:?} is not an export name (letters, digits, `.`, `_` and `-`, \
             not starting with `.` or `-`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Address {
        Address::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn path(text: &str) -> RelPath {
        RelPath::parse(text).unwrap()
    }

    #[test]
    fn host_and_port() {
        let a = parse("127.0.0.1:7071");
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 7071));
        assert_eq!(a.export, None);
        assert!(a.subtree.is_root());
        assert_eq!(a.socket_addr(), "127.0.0.1:7071");
        assert_eq!(a.to_string(), "127.0.0.1:7071");
    }

    #[test]
    fn the_port_defaults_to_7070() {
        let a = parse("fileserver");
        assert_eq!((a.host.as_str(), a.port), ("fileserver", DEFAULT_PORT));
        assert_eq!(parse("127.0.0.1").socket_addr(), "127.0.0.1:7070");
        let a = parse("fileserver:/projects/a");
        assert_eq!(a.port, DEFAULT_PORT);
        assert_eq!(a.subtree, path("projects/a"));
        let a = parse("fileserver/docs");
        assert_eq!(a.export.as_deref(), Some("docs"));
    }

    #[test]
    fn subtrees_and_named_exports() {
        let a = parse("server:7070:/some/dir");
        assert_eq!(a.export, None);
        assert_eq!(a.subtree, path("some/dir"));
        assert_eq!(a.to_string(), "server:7070:/some/dir");
        let a = parse("server:7070/docs");
        assert_eq!(a.export.as_deref(), Some("docs"));
        assert!(a.subtree.is_root());
        let a = parse("server:7070/docs:/sub/dir/");
        assert_eq!(a.export.as_deref(), Some("docs"));
        assert_eq!(a.subtree, path("sub/dir"));
        assert_eq!(a.to_string(), "server:7070/docs:/sub/dir");
        // `:dir` after a port, without the slash, is the same directory.
        assert_eq!(parse("server:7070:sub").subtree, path("sub"));
        // `:/` is the root.
        assert!(parse("server:7070:/").subtree.is_root());
    }

    #[test]
    fn ipv6_in_brackets() {
        let a = parse("[::1]:7072/home:/alice");
        assert_eq!(a.host, "::1");
        assert_eq!(a.port, 7072);
        assert_eq!(a.socket_addr(), "[::1]:7072");
        assert_eq!(a.to_string(), "[::1]:7072/home:/alice");
        assert_eq!(parse("[fd00::5]").port, DEFAULT_PORT);
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| Address::parse(text).unwrap_err();
        assert!(err("::1:7070").contains("brackets"), "{}", err("::1:7070"));
        assert!(err("[::1:7070").contains("`]`"));
        assert!(err(":7070").contains("host is missing"));
        assert!(err("server:70x").contains("not a port number"));
        assert!(err("server:99999").contains("not a port number"));
        assert!(err("server:0").contains("not a port number"));
        assert!(err("server:abc").contains("expected a port number"));
        assert!(err("server:7070/").contains("empty"));
        assert!(err("server:7070/docs/sub").contains("HOST:PORT/docs:/DIR"));
        assert!(err("server:7070/.hidden").contains("not an export name"));
        assert!(err("server:7070:/../etc").contains("`..` is not allowed"));
        assert!(err("server:7070x").contains("not a port number"));
        assert!(err("my server").contains("space"));
    }

    #[test]
    fn export_names() {
        for good in ["docs", "home-shared", "v1.2", "a_b", "X"] {
            assert!(check_export_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(EXPORT_NAME_MAX + 1);
        for bad in ["", ".x", "-x", "a b", "a/b", "a:b", "é", long.as_str()] {
            assert!(check_export_name(bad).is_err(), "{bad}");
        }
    }
}
