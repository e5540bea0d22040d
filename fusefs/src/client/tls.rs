//! How a client proves who it is and checks who the server is.
//!
//! [`ConnectOptions`] says it: TLS (the default) with a [`Trust`] for the
//! server — a pinned fingerprint, or the known-servers file (first contact
//! records the fingerprint, later ones must match it) — and the client's
//! credentials: the export's access token, a client certificate, or both.
//! [`ConnectOptions::from_flags`] builds them from what a user gives `ferry`:
//! paths to files and the environment, never secrets on the command line.
//!
//! [`Trusted`] keeps the expectation across reconnects: once a connection has
//! been made, every later one must present the same certificate, whatever
//! the file says meanwhile.

use super::known_servers::{Known, KnownServers};
use super::ConnectError;
use ferry_common::auth::{Fingerprint, Token};
use ferry_common::records::SecretCapture;
use ferry_common::state;
use ferry_common::sync::lock;
use ferry_common::tls::{self, Identity, PinnedServer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a client connects.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// How long a request may wait for its answer (fsync: ten times that);
    /// also bounds every reconnection attempt.
    pub timeout: Duration,
    pub security: Security,
}

/// TLS with credentials, or none of it.
#[derive(Clone, Debug)]
pub enum Security {
    Tls(TlsOptions),
    /// Plaintext, no authentication: only for a server run with `--insecure`.
    Insecure,
}

/// The client's side of TLS.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    pub trust: Trust,
    /// The export's access token, proven to the server without sending it.
    pub token: Option<Token>,
    /// A client certificate, for servers that list it in `authorized_clients`.
    pub identity: Option<Identity>,
}

/// Which server certificate to accept.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Exactly this one (`--pin`).
    Pinned(Fingerprint),
    /// The one recorded for the address in this known-servers file; on first
    /// contact, any, which is then recorded.
    KnownServers(PathBuf),
}

/// What a user gives `ferry mount|ls|get|put` about security.
#[derive(Clone, Debug, Default)]
pub struct ClientFlags {
    /// `--state-dir`: where `known_servers` and the client identity are.
    pub state_dir: Option<PathBuf>,
    /// `--pin SHA256:…`
    pub pin: Option<String>,
    /// `--token-file FILE`
    pub token_file: Option<PathBuf>,
    /// `--insecure`
    pub insecure: bool,
}

impl ConnectOptions {
    /// TLS against a server whose certificate is `fingerprint`, with `token`.
    pub fn pinned(fingerprint: Fingerprint, token: Option<Token>) -> ConnectOptions {
        ConnectOptions {
            timeout: super::DEFAULT_TIMEOUT,
            security: Security::Tls(TlsOptions {
                trust: Trust::Pinned(fingerprint),
                token,
                identity: None,
            }),
        }
    }

    /// No TLS, no authentication.
    pub fn insecure() -> ConnectOptions {
        ConnectOptions {
            timeout: super::DEFAULT_TIMEOUT,
            security: Security::Insecure,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.timeout = timeout;
        self
    }

    /// The options `flags` and the environment ask for: the token from
    /// `--token-file` or `FERRY_TOKEN`; the client identity in the state
    /// directory if one was made (`ferry keygen`); `--pin`, else the
    /// known-servers file of the state directory.
    pub fn from_flags(flags: &ClientFlags, timeout: Duration) -> Result<ConnectOptions, String> {
        if flags.insecure {
            if flags.pin.is_some() || flags.token_file.is_some() {
                return Err(
                    "--insecure turns TLS and authentication off: --pin and --token-file \
                     cannot be used with it"
                        .into(),
                );
            }
            return Ok(ConnectOptions::insecure().with_timeout(timeout));
        }
        let state_dir = match &flags.state_dir {
            Some(dir) => dir.clone(),
            None => state::default_dir()
                .ok_or("there is no default state directory (HOME is not set): give --state-dir")?,
        };
        let token = match &flags.token_file {
            Some(path) => Some(Token::read_file(path)?),
            None => match std::env::var(state::TOKEN_ENV) {
                Ok(text) if !text.trim().is_empty() => {
                    Some(Token::parse(&text).map_err(|e| format!("{}: {e}", state::TOKEN_ENV))?)
                }
                _ => None,
            },
        };
        let identity = client_identity(&state_dir)?;
        let trust = match &flags.pin {
            Some(pin) => Trust::Pinned(Fingerprint::parse(pin)?),
            None => Trust::KnownServers(state_dir.join(state::KNOWN_SERVERS)),
        };
        Ok(ConnectOptions {
            timeout,
            security: Security::Tls(TlsOptions {
                trust,
                token,
                identity,
            }),
        })
    }
}

/// The client identity in `state_dir`, if `ferry keygen` made one.
fn client_identity(state_dir: &Path) -> Result<Option<Identity>, String> {
    let cert = state_dir.join(format!("{}.crt", state::CLIENT_IDENTITY));
    let key = state_dir.join(format!("{}.key", state::CLIENT_IDENTITY));
    if !cert.exists() && !key.exists() {
        return Ok(None);
    }
    Identity::load(&cert, &key).map(Some)
}

/// Makes the client identity in `state_dir` (`ferry keygen`); an existing one
/// is kept. Returns it, and whether it was made now.
pub fn keygen(state_dir: &Path) -> Result<(Identity, bool), String> {
    state::ensure_dir(state_dir).map_err(|e| e.to_string())?;
    let name = format!("ferry-client-{}", hostname());
    Identity::load_or_create(state_dir, state::CLIENT_IDENTITY, &name)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Where the expected fingerprint of a server came from, for messages.
#[derive(Clone, Debug)]
enum Source {
    Pin,
    File { path: PathBuf, line: usize },
}

/// What the next connection must present.
#[derive(Clone, Debug)]
enum Expect {
    Exactly(Fingerprint, Source),
    /// First contact: anything, then recorded in the file.
    FirstContact(KnownServers),
}

/// A client's trust in one server, kept across its connections.
#[derive(Debug)]
pub(super) struct Trusted {
    addr: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    token: Option<Token>,
    identity: Option<Identity>,
    expect: Mutex<Expect>,
}

/// One TLS handshake's set-up, and the verifier to ask afterwards.
pub(super) struct Attempt {
    pub(super) config: Arc<rustls::ClientConfig>,
    pub(super) verifier: Arc<PinnedServer>,
    /// The session's traffic secrets, for ferry's record layer.
    pub(super) capture: Arc<SecretCapture>,
}

impl Trusted {
    pub(super) fn new(addr: &str, options: &TlsOptions) -> Result<Trusted, ConnectError> {
        let expect = match &options.trust {
            Trust::Pinned(fp) => Expect::Exactly(*fp, Source::Pin),
            Trust::KnownServers(path) => {
                let known = KnownServers::new(path.clone());
                match known.lookup(addr).map_err(ConnectError::Local)? {
                    Known::Recorded { fingerprint, line } => Expect::Exactly(
                        fingerprint,
                        Source::File {
                            path: path.clone(),
                            line,
                        },
                    ),
                    Known::Unknown => Expect::FirstContact(known),
                }
            }
        };
        Ok(Trusted {
            addr: addr.to_string(),
            provider: tls::provider(),
            token: options.token.clone(),
            identity: options.identity.clone(),
            expect: Mutex::new(expect),
        })
    }

    pub(super) fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// The TLS set-up for one connection attempt.
    pub(super) fn attempt(&self) -> Result<Attempt, ConnectError> {
        let expected = match &*lock(&self.expect) {
            Expect::Exactly(fp, _) => Some(*fp),
            Expect::FirstContact(_) => None,
        };
        let verifier = Arc::new(PinnedServer::new(expected, Arc::clone(&self.provider)));
        let setup = |e: rustls::Error| ConnectError::Local(format!("cannot set up TLS: {e}"));
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(tls::VERSIONS)
            .map_err(setup)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        let mut config = match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
                .map_err(setup)?,
            None => builder.with_no_client_auth(),
        };
        // Every connection is a full handshake: nothing is resumed.
        config.resumption = rustls::client::Resumption::disabled();
        // After the handshake ferry runs the records itself.
        let capture = SecretCapture::new();
        config.key_log = capture.clone();
        config.enable_secret_extraction = true;
        Ok(Attempt {
            config: Arc::new(config),
            verifier,
            capture,
        })
    }

    /// Why the server's certificate was refused, if it was: it presented
    /// another than the expected one.
    pub(super) fn refusal(&self, verifier: &PinnedServer) -> Option<ConnectError> {
        let presented = verifier.presented()?;
        match &*lock(&self.expect) {
            Expect::Exactly(expected, source) if *expected != presented => {
                Some(ConnectError::ServerChanged {
                    addr: self.addr.clone(),
                    expected: *expected,
                    presented,
                    remedy: match source {
                        Source::Pin => "if the server's identity was changed on purpose, pin \
                                        the new fingerprint (check it on the server: `ferry serve` \
                                        prints it)"
                            .to_string(),
                        Source::File { path, line } => format!(
                            "if the server's identity was changed on purpose, remove line {line} \
                             of {} (sed -i '{line}d' {}) and connect again",
                            path.display(),
                            path.display()
                        ),
                    },
                })
            }
            _ => None,
        }
    }

    /// After a successful handshake with a server that presented
    /// `fingerprint`: a first contact is recorded, and from now on only this
    /// certificate is accepted.
    pub(super) fn confirm(&self, fingerprint: Fingerprint) -> Result<(), ConnectError> {
        let mut expect = lock(&self.expect);
        if let Expect::FirstContact(known) = &*expect {
            let line = known
                .record(&self.addr, &fingerprint)
                .map_err(ConnectError::Local)?;
            eprintln!(
                "ferry: first connection to {}: its certificate {fingerprint} is now recorded in \
                 {} (line {line}); later connections must present the same one",
                self.addr,
                known.path().display()
            );
            let path = known.path().to_path_buf();
            *expect = Expect::Exactly(fingerprint, Source::File { path, line });
        }
        Ok(())
    }
}
