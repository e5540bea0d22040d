//! Who is on the other end: certificate fingerprints, the access token and
//! the proof of it a client sends, and the files these secrets live in.
//!
//! - A [`Fingerprint`] is the SHA-256 of a certificate (its DER bytes), shown as
//!   `SHA256:` and unpadded base64, as ssh shows host keys. Servers are pinned
//!   by it (the client's known-servers file, `--pin`) and clients authorised by
//!   it (the server's `authorized_clients`).
//! - A [`Token`] is 32 random bytes per export. It never crosses the wire: the
//!   client sends [`Token::proof`], an HMAC-SHA256 keyed with the token over
//!   the TLS session's RFC 5705 exporter value ([`EXPORTER_LABEL`]). Both ends
//!   compute the exporter from their own session, so a proof recorded on one
//!   connection is worthless on any other.
//!
//! Every cryptographic choice of ferry (these, and the TLS set-up in
//! [`crate::tls`]) is made in these two modules, on aws-lc-rs alone.

use aws_lc_rs::{digest, hmac, rand};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// How a fingerprint starts when written down.
pub const FINGERPRINT_PREFIX: &str = "SHA256:";
/// The label of the RFC 5705 exporter value a token proof is bound to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-ferry-token-v1";
/// Bytes of the exporter value, of a token and of a proof.
pub const SECRET_LEN: usize = 32;

/// The SHA-256 of a certificate: what ferry pins and authorises.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; SECRET_LEN]);

impl Fingerprint {
    /// The fingerprint of the certificate `cert_der` (DER bytes).
    pub fn of(cert_der: &[u8]) -> Fingerprint {
        let hash = digest::digest(&digest::SHA256, cert_der);
        let mut bytes = [0u8; SECRET_LEN];
        bytes.copy_from_slice(hash.as_ref());
        Fingerprint(bytes)
    }

    /// Reads `SHA256:<base64>`, as [`Display`](fmt::Display) writes it.
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let bad = || {
            format!(
                "{text:?} is not a certificate fingerprint (they look like \
                 SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU, as `ferry serve` prints)"
            )
        };
        let encoded = text
            .trim()
            .strip_prefix(FINGERPRINT_PREFIX)
            .ok_or_else(bad)?;
        let bytes = STANDARD_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| bad())?;
        let bytes: [u8; SECRET_LEN] = bytes.try_into().map_err(|_| bad())?;
        Ok(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{FINGERPRINT_PREFIX}{}", STANDARD_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An export's access token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; SECRET_LEN]);

impl Token {
    /// A new random token.
    pub fn generate() -> io::Result<Token> {
        let mut bytes = [0u8; SECRET_LEN];
        rand::fill(&mut bytes).map_err(|_| io::Error::other("the system gave no random bytes"))?;
        Ok(Token(bytes))
    }

    /// Reads a token as [`Token::to_text`] writes it (64 hex digits); whitespace
    /// around it is ignored.
    pub fn parse(text: &str) -> Result<Token, String> {
        let text = text.trim();
        let bad = || {
            "an access token is 64 hexadecimal digits (the contents of the token file \
             `ferry serve` made)"
                .to_string()
        };
        if text.len() != 2 * SECRET_LEN || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; SECRET_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Token(bytes))
    }

    /// The token as 64 hex digits.
    pub fn to_text(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads the token in `path`, which only its owner may read.
    pub fn read_file(path: &Path) -> Result<Token, String> {
        let text = read_private(path)?;
        Token::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the token to a new file `path` that only its owner can read.
    pub fn write_new_file(&self, path: &Path) -> io::Result<()> {
        write_private(path, format!("{}\n", self.to_text()).as_bytes())
    }

    /// What a client sends to show it has the token: HMAC-SHA256 keyed with
    /// the token over `exporter`, its TLS session's exporter value.
    pub fn proof(&self, exporter: &[u8; SECRET_LEN]) -> [u8; SECRET_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&key, exporter);
        let mut proof = [0u8; SECRET_LEN];
        proof.copy_from_slice(tag.as_ref());
        proof
    }

    /// Whether `proof` is [`Token::proof`] of `exporter`, compared in constant time.
    pub fn verify(&self, exporter: &[u8; SECRET_LEN], proof: &[u8; SECRET_LEN]) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        hmac::verify(&key, exporter, proof).is_ok()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Creates `path` (it must not exist) with `bytes`, readable and writable by
/// its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// Reads a secret file, refusing one that others may read (as ssh refuses a
/// private key they could read): a secret anyone can copy is no secret.
pub fn read_private(path: &Path) -> Result<String, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} may be read by other users (mode {:o}); it holds a secret: chmod 600 {}",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        ));
    }
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_reads_back_as_written() {
        let fp = Fingerprint::of(b"a certificate");
        let text = fp.to_string();
        assert!(text.starts_with("SHA256:"), "{text}");
        // 32 bytes in unpadded base64, as ssh writes them.
        assert_eq!(text.len(), "SHA256:".len() + 43, "{text}");
        assert!(!text.ends_with('='));
        assert_eq!(Fingerprint::parse(&text), Ok(fp));
        assert_eq!(Fingerprint::parse(&format!("  {text}=\n")), Ok(fp));
        assert_ne!(Fingerprint::of(b"another"), fp);
        // The SHA-256 of nothing, as `ssh-keygen -l` would print it.
        assert_eq!(
            Fingerprint::of(b"").to_string(),
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
        );
    }

    #[test]
    fn malformed_fingerprints_are_refused_with_an_example() {
        for bad in [
            "",
            "SHA256:",
            "MD5:abc",
            "SHA256:not base64!",
            "SHA256:AAAA",
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
        ] {
            let err = Fingerprint::parse(bad).unwrap_err();
            assert!(err.contains("SHA256:47DEQ"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn tokens_read_back_and_never_show_in_debug() {
        let token = Token::generate().unwrap();
        assert_ne!(token, Token::generate().unwrap());
        let text = token.to_text();
        assert_eq!(text.len(), 64);
        assert_eq!(Token::parse(&format!("{text}\n")), Ok(token.clone()));
        assert!(!format!("{token:?}").contains(&text[..8]));
        assert!(Token::parse("abc").is_err());
        assert!(Token::parse(&"g".repeat(64)).is_err());
        assert!(Token::parse(&"é".repeat(32)).is_err());
    }

    #[test]
    fn a_proof_binds_the_token_to_one_session() {
        let token = Token::generate().unwrap();
        let session = [7u8; SECRET_LEN];
        let proof = token.proof(&session);
        assert!(token.verify(&session, &proof));
        // The same proof on another session (another exporter value) fails.
        assert!(!token.verify(&[8u8; SECRET_LEN], &proof));
        // Another token's proof fails.
        let other = Token::generate().unwrap();
        assert!(!token.verify(&session, &other.proof(&session)));
        // A proof is an HMAC: RFC 4231 test case 2 has a short key, so check
        // the construction against aws-lc's own HMAC instead.
        let key = hmac::Key::new(hmac::HMAC_SHA256, &token.0);
        assert_eq!(hmac::sign(&key, &session).as_ref(), &proof);
    }

    #[test]
    fn secret_files_are_private_and_refused_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let token = Token::generate().unwrap();
        token.write_new_file(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(Token::read_file(&path), Ok(token.clone()));
        // Never overwritten.
        assert!(token.write_new_file(&path).is_err());
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Token::read_file(&path).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
