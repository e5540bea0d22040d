//! The server's exports, and which one a connection gets.
//!
//! A server has a default export (`ferry serve DIR`), named exports (`ferry
//! serve --export docs=/srv/docs`), or both. A client's `Hello` names an export
//! (or none, for the default) and a directory inside it; [`Exports::choose`]
//! turns that into the root the connection is served from, or the words of a
//! refusal. A directory inside an export is opened beneath the export's root
//! exactly as every other path is (see [`ExportRoot::subtree`]), so a
//! connection confined to it reaches nothing outside it.

use crate::export::ExportRoot;
use ferry_common::address::check_export_name;
use ferry_common::{Errno, RelPath};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Every export of one server, opened once at start.
#[derive(Debug)]
pub(crate) struct Exports {
    default: Option<Arc<ExportRoot>>,
    named: BTreeMap<String, Arc<ExportRoot>>,
}

/// What one connection serves.
#[derive(Debug)]
pub(crate) struct Chosen {
    /// The export's name (`None`: the default export), for logs and for what is
    /// kept per export.
    pub(crate) name: Option<String>,
    /// The connection's root: the export's, or the directory inside it.
    pub(crate) root: Arc<ExportRoot>,
}

impl Exports {
    /// Opens every export: `default` (may be absent) and `named`. Fails with a
    /// message naming the export when one cannot be opened, a name is invalid
    /// or used twice, or there is nothing to export at all.
    pub(crate) fn open(
        default: Option<&PathBuf>,
        named: &[(String, PathBuf)],
    ) -> io::Result<Exports> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        if default.is_none() && named.is_empty() {
            return Err(invalid(
                "nothing to export: give a directory, or --export NAME=DIR".into(),
            ));
        }
        let default = default
            .map(|dir| ExportRoot::open(dir).map(Arc::new))
            .transpose()?;
        let mut opened = BTreeMap::new();
        for (name, dir) in named {
            check_export_name(name).map_err(|why| invalid(format!("--export {name}: {why}")))?;
            let root = ExportRoot::open(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("export {name}: {e}")))?;
            if opened.insert(name.clone(), Arc::new(root)).is_some() {
                return Err(invalid(format!("the export name {name:?} is given twice")));
            }
        }
        Ok(Exports {
            default,
            named: opened,
        })
    }

    /// The default export, if there is one.
    pub(crate) fn default_export(&self) -> Option<&Arc<ExportRoot>> {
        self.default.as_ref()
    }

    /// Whether requests act as the clients' (mapped) users: the server runs as
    /// root (every export shares the server's credentials).
    pub(crate) fn acts_as_clients(&self) -> bool {
        self.default
            .iter()
            .chain(self.named.values())
            .any(|export| export.acts_as_clients())
    }

    /// The named exports, by name.
    pub(crate) fn named(&self) -> impl Iterator<Item = (&str, &Arc<ExportRoot>)> {
        self.named.iter().map(|(name, root)| (name.as_str(), root))
    }

    /// The root a connection is served from: export `name` (the default one if
    /// `None`), or the directory `subtree` inside it. `Err` is the refusal's
    /// message, for the person at the client. Opening a subtree is a system
    /// call: run this on a thread that may block.
    pub(crate) fn choose(&self, name: Option<&str>, subtree: &RelPath) -> Result<Chosen, String> {
        let export = match name {
            None => self.default.as_ref().ok_or_else(|| {
                format!(
                    "this server has no default export; name one in the address, \
                     as in HOST:PORT/{} (its exports: {})",
                    self.named.keys().next().map_or("NAME", |n| n.as_str()),
                    self.list()
                )
            })?,
            Some(name) => self.named.get(name).ok_or_else(|| {
                if self.named.is_empty() {
                    format!(
                        "this server has no export named {name:?}: it serves one directory, \
                         reached without a name (HOST:PORT)"
                    )
                } else {
                    format!(
                        "this server has no export named {name:?} (its exports: {})",
                        self.list()
                    )
                }
            })?,
        };
        let shown = match name {
            Some(name) => format!("export {name}"),
            None => "the export".to_string(),
        };
        let root = if subtree.is_root() {
            Arc::clone(export)
        } else {
            let refused = |why: &str| format!("cannot serve /{subtree} of {shown}: {why}");
            match export.subtree(subtree) {
                Ok(root) => Arc::new(root),
                Err(Errno::ENOENT) => return Err(refused("no such directory")),
                Err(Errno::ENOTDIR) => return Err(refused("it is not a directory")),
                Err(Errno::ELOOP) | Err(Errno::EXDEV) => {
                    return Err(refused(
                        "the path goes through a symlink (name the directory itself)",
                    ))
                }
                Err(e) => return Err(refused(&e.to_string())),
            }
        };
        Ok(Chosen {
            name: name.map(str::to_string),
            root,
        })
    }

    /// The named exports, for messages: `docs, home`.
    fn list(&self) -> String {
        let mut names: Vec<&str> = self.named.keys().map(String::as_str).collect();
        if self.default.is_some() {
            names.insert(0, "the default (no name)");
        }
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn a_connection_gets_the_export_and_directory_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        let (main, docs) = (tmp.path().join("main"), tmp.path().join("docs"));
        fs::create_dir_all(main.join("sub/dir")).unwrap();
        fs::create_dir_all(docs.join("manuals")).unwrap();
        fs::write(docs.join("file"), "x").unwrap();
        std::os::unix::fs::symlink("manuals", docs.join("link")).unwrap();
        let exports = Exports::open(Some(&main), &[("docs".into(), docs.clone())]).unwrap();

        let chosen = exports.choose(None, &RelPath::root()).unwrap();
        assert_eq!((chosen.name, chosen.root.path()), (None, main.as_path()));
        let chosen = exports.choose(None, &p("sub/dir")).unwrap();
        assert_eq!(chosen.root.path(), main.join("sub/dir"));
        let chosen = exports.choose(Some("docs"), &p("manuals")).unwrap();
        assert_eq!(chosen.name.as_deref(), Some("docs"));
        assert_eq!(chosen.root.path(), docs.join("manuals"));

        let err = exports.choose(Some("home"), &RelPath::root()).unwrap_err();
        assert!(err.contains("no export named \"home\""), "{err}");
        assert!(err.contains("docs"), "{err}");
        let err = exports.choose(Some("docs"), &p("file")).unwrap_err();
        assert!(
            err.contains("/file of export docs: it is not a directory"),
            "{err}"
        );
        let err = exports.choose(Some("docs"), &p("nope")).unwrap_err();
        assert!(err.contains("no such directory"), "{err}");
        let err = exports.choose(Some("docs"), &p("link")).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
    }

    #[test]
    fn without_a_default_the_client_must_name_one() {
        let tmp = tempfile::tempdir().unwrap();
        let exports = Exports::open(None, &[("docs".into(), tmp.path().to_path_buf())]).unwrap();
        let err = exports.choose(None, &RelPath::root()).unwrap_err();
        assert!(err.contains("no default export"), "{err}");
        assert!(err.contains("HOST:PORT/docs"), "{err}");
        let only_default = Exports::open(Some(&tmp.path().to_path_buf()), &[]).unwrap();
        let err = only_default
            .choose(Some("docs"), &RelPath::root())
            .unwrap_err();
        assert!(err.contains("reached without a name"), "{err}");
    }

    #[test]
    fn bad_configurations_are_refused_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let err = Exports::open(None, &[]).unwrap_err().to_string();
        assert!(err.contains("nothing to export"), "{err}");
        let twice = [("a".into(), dir.clone()), ("a".into(), dir.clone())];
        let err = Exports::open(None, &twice).unwrap_err().to_string();
        assert!(err.contains("given twice"), "{err}");
        let err = Exports::open(None, &[("a b".into(), dir.clone())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an export name"), "{err}");
        let err = Exports::open(None, &[("x".into(), dir.join("missing"))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("export x: cannot export"), "{err}");
    }
}
