//! The server's identity and who it lets in, kept in its state directory.
//!
//! On first start [`TlsServer::open_exports`] makes the server's key and
//! self-signed certificate (`server.key`, `server.crt`) and each export's
//! access token (`tokens/NAME-HASH.token`); later starts read them back, so the
//! fingerprint clients pinned stays the same. Clients get in with the token
//! (its proof, see [`ferry_common::auth`]) or with a client certificate whose
//! fingerprint is a line of `authorized_clients` — read again for every new
//! connection, so adding or removing a line takes effect at once.
//!
//! The state directory must not lie inside the export: clients could read the
//! key and the token.

use ferry_common::auth::{Fingerprint, Token};
use ferry_common::records;
use ferry_common::state;
use ferry_common::tls::{self, AnyClientCertificate, Identity};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a server meets its clients.
#[derive(Clone, Debug)]
pub enum Security {
    /// TLS 1.3 with the server's identity, and authenticated clients.
    Tls(Arc<TlsServer>),
    /// Plaintext, and anyone who can connect is let in (`--insecure`).
    Insecure,
}

/// The server's TLS set-up and its record of who may connect.
pub struct TlsServer {
    config: Arc<rustls::ServerConfig>,
    fingerprint: Fingerprint,
    /// One per export: the default one (named `None`) and the named ones.
    tokens: Vec<ExportToken>,
    authorized_clients: PathBuf,
    /// What this start made for the first time, for the operator to hear of.
    made: Vec<String>,
    /// A state directory made for a test server, removed with it.
    _scratch: Option<tempfile::TempDir>,
}

/// An export's access token, and the file it is kept in.
struct ExportToken {
    export: Option<String>,
    token: Token,
    path: PathBuf,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let paths: Vec<&Path> = self.tokens.iter().map(|t| t.path.as_path()).collect();
        f.debug_struct("TlsServer")
            .field("fingerprint", &self.fingerprint)
            .field("token_paths", &paths)
            .field("authorized_clients", &self.authorized_clients)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// The identity in `state_dir` and the token of the one export `export`,
    /// made there first when missing (see [`open_exports`](Self::open_exports)).
    pub fn open(state_dir: &Path, export: &Path) -> Result<TlsServer, String> {
        TlsServer::open_exports(state_dir, &[(None, export.to_path_buf())])
    }

    /// The identity in `state_dir` and a token for each of `exports` (the
    /// default one named `None`), made there first when missing. Refuses a
    /// state directory inside an export.
    pub fn open_exports(
        state_dir: &Path,
        exports: &[(Option<String>, PathBuf)],
    ) -> Result<TlsServer, String> {
        state::ensure_dir(state_dir).map_err(|e| e.to_string())?;
        let state_dir = fs::canonicalize(state_dir)
            .map_err(|e| format!("cannot resolve {}: {e}", state_dir.display()))?;
        let mut resolved = Vec::with_capacity(exports.len());
        for (name, export) in exports {
            let export = fs::canonicalize(export)
                .map_err(|e| format!("cannot export {}: {e}", export.display()))?;
            if state_dir.starts_with(&export) {
                return Err(format!(
                    "the state directory {} is inside the export {}: clients could read the \
                     server's key and access token; choose another with --state-dir",
                    state_dir.display(),
                    export.display()
                ));
            }
            resolved.push((name.clone(), export));
        }
        let mut made = Vec::new();
        let (identity, created) =
            Identity::load_or_create(&state_dir, state::SERVER_IDENTITY, "ferry-server")?;
        if created {
            made.push(format!(
                "made the server's identity {} in {}",
                identity.fingerprint(),
                state_dir.display()
            ));
        }
        let token_dir = state_dir.join(state::TOKENS);
        state::ensure_dir(&token_dir).map_err(|e| e.to_string())?;
        let mut tokens = Vec::with_capacity(resolved.len());
        for (name, export) in resolved {
            let path = token_dir.join(token_file_name(&export));
            let token = if path.exists() {
                Token::read_file(&path)?
            } else {
                let token = Token::generate().map_err(|e| e.to_string())?;
                token.write_new_file(&path).map_err(|e| e.to_string())?;
                made.push(format!(
                    "made the access token of {} in {}",
                    export.display(),
                    path.display()
                ));
                token
            };
            tokens.push(ExportToken {
                export: name,
                token,
                path,
            });
        }
        let fingerprint = identity.fingerprint();
        let provider = tls::provider();
        let verifier = Arc::new(AnyClientCertificate::new(Arc::clone(&provider)));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(tls::VERSIONS)
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
            .map_err(|e| format!("cannot use the server's key: {e}"))?;
        // Nothing is resumed (clients never ask), and after the handshake
        // ferry runs the records itself (see `config_capturing`).
        let mut config = config;
        config.send_tls13_tickets = 0;
        config.enable_secret_extraction = true;
        Ok(TlsServer {
            config: Arc::new(config),
            fingerprint,
            tokens,
            authorized_clients: state_dir.join(state::AUTHORIZED_CLIENTS),
            made,
            _scratch: None,
        })
    }

    /// [`open`](Self::open) in a fresh temporary state directory, which goes
    /// with this: a test server's identity and token.
    pub fn scratch(export: &Path) -> Result<TlsServer, String> {
        let state = tempfile::Builder::new()
            .prefix("ferry-test-state-")
            .tempdir()
            .map_err(|e| format!("cannot make a state directory: {e}"))?;
        let mut tls = TlsServer::open(state.path(), export)?;
        tls._scratch = Some(state);
        Ok(tls)
    }

    /// The fingerprint clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The access token of export `export` (`None`: the default one).
    pub fn token(&self, export: Option<&str>) -> Option<&Token> {
        self.tokens
            .iter()
            .find(|t| t.export.as_deref() == export)
            .map(|t| &t.token)
    }

    /// The file holding the first export's access token (the default one's,
    /// when there is one), to copy to clients.
    pub fn token_path(&self) -> &Path {
        self.tokens
            .first()
            .map_or(Path::new(""), |t| t.path.as_path())
    }

    /// Each export (`None`: the default one) and the file holding its token.
    pub fn token_paths(&self) -> impl Iterator<Item = (Option<&str>, &Path)> {
        self.tokens
            .iter()
            .map(|t| (t.export.as_deref(), t.path.as_path()))
    }

    /// The file of authorised client certificate fingerprints.
    pub fn authorized_clients_path(&self) -> &Path {
        &self.authorized_clients
    }

    /// What this start made for the first time (identity, token), in words.
    pub fn made(&self) -> &[String] {
        &self.made
    }

    /// The config for one connection, whose traffic secrets go to `capture`
    /// (for ferry's record layer, which takes over after the handshake).
    pub(crate) fn config_capturing(
        &self,
        capture: &Arc<records::SecretCapture>,
    ) -> Arc<rustls::ServerConfig> {
        let mut config = (*self.config).clone();
        config.key_log = capture.clone();
        Arc::new(config)
    }

    /// Whether the client certificate `fingerprint` is authorised now.
    pub(crate) fn is_authorized(&self, fingerprint: &Fingerprint) -> io::Result<bool> {
        let text = match fs::read_to_string(&self.authorized_clients) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(authorized(&text, &self.authorized_clients).contains(fingerprint))
    }
}

/// The fingerprints listed in an `authorized_clients` file's `text`: one a
/// line, optionally followed by a comment (`SHA256:… alice's laptop`);
/// blank lines and lines starting with `#` are skipped, and a malformed line
/// is skipped with a warning naming it.
pub(crate) fn authorized(text: &str, path: &Path) -> Vec<Fingerprint> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or_default();
        match Fingerprint::parse(first) {
            Ok(fp) => found.push(fp),
            Err(e) => log::warn!("{} line {}: skipped: {e}", path.display(), n + 1),
        }
    }
    found
}

/// The token file of `export`: its name (readable) and a hash of its whole
/// path (unique), as two exports may share a name.
fn token_file_name(export: &Path) -> String {
    let name: String = export
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let hash = Fingerprint::of(export.as_os_str().as_encoded_bytes()).to_string();
    let short: String = hash
        .trim_start_matches(ferry_common::auth::FINGERPRINT_PREFIX)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    format!("{name}-{short}.token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_and_token_are_made_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let export = tmp.path().join("export");
        fs::create_dir(&export).unwrap();
        let state = tmp.path().join("state");
        let first = TlsServer::open(&state, &export).unwrap();
        assert_eq!(first.made().len(), 2, "{:?}", first.made());
        let again = TlsServer::open(&state, &export).unwrap();
        assert!(again.made().is_empty(), "{:?}", again.made());
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(first.token(None), again.token(None));
        assert!(first.token_path().starts_with(state.join("tokens")));
        // Another export on the same server gets a token of its own.
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        let second = TlsServer::open(&state, &other).unwrap();
        assert_eq!(second.fingerprint(), first.fingerprint());
        assert_ne!(second.token(None), first.token(None));
        assert_ne!(second.token_path(), first.token_path());
    }

    #[test]
    fn every_export_has_a_token_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["main", "docs"] {
            fs::create_dir(tmp.path().join(dir)).unwrap();
        }
        let exports = [
            (None, tmp.path().join("main")),
            (Some("docs".to_string()), tmp.path().join("docs")),
        ];
        let server = TlsServer::open_exports(&tmp.path().join("state"), &exports).unwrap();
        let (main, docs) = (
            server.token(None).unwrap(),
            server.token(Some("docs")).unwrap(),
        );
        assert_ne!(main, docs);
        assert!(server.token(Some("other")).is_none());
        assert_eq!(server.token_paths().count(), 2);
    }

    #[test]
    fn a_state_directory_inside_the_export_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = TlsServer::open(&tmp.path().join("sub/state"), tmp.path()).unwrap_err();
        assert!(err.contains("inside the export"), "{err}");
        assert!(!tmp.path().join("sub/state/server.key").exists());
    }

    #[test]
    fn authorized_clients_lists_fingerprints_with_comments() {
        let a = Fingerprint::of(b"a");
        let b = Fingerprint::of(b"b");
        let text = format!("# clients\n\n{a} alice's laptop\n  {b}\nnot a fingerprint\n");
        assert_eq!(authorized(&text, Path::new("x")), vec![a, b]);
    }

    #[test]
    fn token_file_names_are_readable_and_distinct() {
        let a = token_file_name(Path::new("/srv/my export"));
        let b = token_file_name(Path::new("/home/my export"));
        assert!(a.starts_with("my_export-") && a.ends_with(".token"), "{a}");
        assert_ne!(a, b);
    }
}
