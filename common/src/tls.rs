//! TLS as ferry uses it: TLS 1.3 only, on aws-lc-rs, with self-signed
//! certificates that are trusted by their [`Fingerprint`] rather than by a
//! certificate authority (as ssh trusts host keys, and Syncthing devices).
//!
//! - [`provider`]: the cipher suites (AES-GCM first: the CPU does it in
//!   hardware) and key exchanges.
//! - [`Identity`]: a key and its self-signed certificate, made with rcgen on
//!   the same provider, kept in PEM files only their owner may read.
//! - [`PinnedServer`]: the client's check of the server: the certificate's
//!   fingerprint must be the expected one (or, on first contact, is recorded).
//! - [`AnyClientCertificate`]: the server asks for a client certificate and
//!   checks that the client holds its key; whether that certificate is
//!   authorised is decided after the handshake, by fingerprint.

use crate::auth::{read_private, write_private, Fingerprint};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The one crypto provider both sides use: aws-lc-rs with TLS 1.3's suites,
/// AES-128-GCM first (fastest with AES instructions), then AES-256-GCM, then
/// ChaCha20-Poly1305 for CPUs without them.
pub fn provider() -> Arc<CryptoProvider> {
    use aws_lc_rs::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..aws_lc_rs::default_provider()
    })
}

/// The protocol versions ferry speaks: TLS 1.3 only.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A private key and its self-signed certificate.
#[derive(Debug)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// A new ECDSA P-256 key and a certificate for `name` signed by it.
    pub fn generate(name: &str) -> Result<Identity, String> {
        let made = (|| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key)?;
            Ok::<_, rcgen::Error>((cert, key))
        })();
        let (cert, key) = made.map_err(|e| format!("cannot make a certificate: {e}"))?;
        Ok(Identity {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    /// Reads the identity from `cert_path` and `key_path` (PEM); the key file
    /// must be readable by its owner only.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, String> {
        let cert_pem =
            fs::read(cert_path).map_err(|e| format!("cannot read {}: {e}", cert_path.display()))?;
        let cert = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| format!("{} holds no certificate: {e}", cert_path.display()))?;
        let key_pem = read_private(key_path)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("{} holds no private key: {e}", key_path.display()))?;
        Ok(Identity { cert, key })
    }

    /// Writes the identity to two new files, the key readable by its owner only.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> io::Result<()> {
        let key = match &self.key {
            PrivateKeyDer::Pkcs8(k) => pem("PRIVATE KEY", k.secret_pkcs8_der()),
            _ => return Err(io::Error::other("only PKCS#8 keys are written")),
        };
        write_private(key_path, key.as_bytes())?;
        let cert = pem("CERTIFICATE", &self.cert);
        fs::write(cert_path, cert).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot write {}: {e}", cert_path.display()),
            )
        })
    }

    /// The identity in `dir` (`STEM.crt`, `STEM.key`), made there first if
    /// neither file exists. `true` when it was made now.
    pub fn load_or_create(dir: &Path, stem: &str, name: &str) -> Result<(Identity, bool), String> {
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        if cert_path.exists() || key_path.exists() {
            return Identity::load(&cert_path, &key_path).map(|id| (id, false));
        }
        let identity = Identity::generate(name)?;
        identity
            .save(&cert_path, &key_path)
            .map_err(|e| e.to_string())?;
        Ok((identity, true))
    }
}

/// `der` as a PEM block with `label`.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The client's check of the server's certificate: its fingerprint must be
/// `expected`; with no expectation (first contact) any certificate passes.
/// Either way the presented fingerprint is kept, so that a refusal can name
/// it and a first contact can record it.
#[derive(Debug)]
pub struct PinnedServer {
    expected: Option<Fingerprint>,
    presented: Mutex<Option<Fingerprint>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedServer {
    pub fn new(expected: Option<Fingerprint>, provider: Arc<CryptoProvider>) -> PinnedServer {
        PinnedServer {
            expected,
            presented: Mutex::new(None),
            provider,
        }
    }

    /// The fingerprint of the certificate the server presented, once it has.
    pub fn presented(&self) -> Option<Fingerprint> {
        *crate::sync::lock(&self.presented)
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let presented = Fingerprint::of(end_entity);
        *crate::sync::lock(&self.presented) = Some(presented);
        match self.expected {
            Some(expected) if expected != presented => Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Only TLS 1.3 is offered.
        Err(Error::General("TLS 1.2 is not used by ferry".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
    }
}

/// The server's check of a client certificate during the handshake: any
/// certificate, as long as the client proves it holds its key. A client may
/// also send none (it then needs the token). Which certificates are welcome is
/// decided after the handshake, by fingerprint (`authorized_clients`).
#[derive(Debug)]
pub struct AnyClientCertificate {
    provider: Arc<CryptoProvider>,
}

impl AnyClientCertificate {
    pub fn new(provider: Arc<CryptoProvider>) -> AnyClientCertificate {
        AnyClientCertificate { provider }
    }
}

impl ClientCertVerifier for AnyClientCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("TLS 1.2 is not used by ferry".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
    }
}

/// That the peer holding `cert` signed `message` (both verifiers check this
/// alike: the proof of the key, whatever is decided about the certificate).
fn verify_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// The signature schemes the provider verifies.
fn schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

/// The first byte of every TLS record that opens a connection (a handshake
/// record).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How many bytes [`opens_tls`] looks at.
pub const TLS_SNIFF: usize = 3;

/// Whether a connection that begins with `first` (its first [`TLS_SNIFF`]
/// bytes) speaks TLS: a handshake record of TLS 1.0 to 1.3 (`16 03 01`..`04`;
/// clients send `03 01` as the record version of their first message). A
/// plaintext ferry frame begins with its length, little-endian, and a `Hello`
/// is far shorter than 64 KiB, so its third byte is 0: a length whose first
/// byte happens to be 0x16 is no TLS.
pub fn opens_tls(first: &[u8]) -> bool {
    matches!(first, [TLS_HANDSHAKE_RECORD, 0x03, 0x01..=0x04, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_frame_that_starts_like_a_record_is_no_tls() {
        assert!(opens_tls(&[0x16, 0x03, 0x01]));
        assert!(opens_tls(&[0x16, 0x03, 0x03, 0x00]));
        // A 22-byte (or 790-byte) plaintext frame.
        assert!(!opens_tls(&[0x16, 0x00, 0x00]));
        assert!(!opens_tls(&[0x16, 0x03, 0x00]));
        assert!(!opens_tls(&[0x16]));
    }

    #[test]
    fn an_identity_survives_its_files_and_keeps_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (made, created) = Identity::load_or_create(dir.path(), "server", "ferry").unwrap();
        assert!(created);
        let (loaded, created) = Identity::load_or_create(dir.path(), "server", "ferry").unwrap();
        assert!(!created);
        assert_eq!(made.fingerprint(), loaded.fingerprint());
        assert_eq!(made.key.secret_der(), loaded.key.secret_der());
        use std::os::unix::fs::MetadataExt;
        let mode = fs::metadata(dir.path().join("server.key")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        let cert = fs::read_to_string(dir.path().join("server.crt")).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----\n"), "{cert}");
        // Two identities differ.
        assert_ne!(
            Identity::generate("ferry").unwrap().fingerprint(),
            made.fingerprint()
        );
    }

    #[test]
    fn a_half_missing_identity_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path(), "server", "ferry").unwrap();
        fs::remove_file(dir.path().join("server.key")).unwrap();
        let err = Identity::load_or_create(dir.path(), "server", "ferry").unwrap_err();
        assert!(err.contains("server.key"), "{err}");
    }

    #[test]
    fn the_pin_check_keeps_what_was_presented() {
        let id = Identity::generate("ferry").unwrap();
        let other = Identity::generate("ferry").unwrap();
        let name = ServerName::try_from("ferry").unwrap();
        let now = UnixTime::now();
        let check = |expected| {
            let v = PinnedServer::new(expected, provider());
            let r = v.verify_server_cert(&id.cert, &[], &name, &[], now);
            (r.is_ok(), v.presented())
        };
        assert_eq!(check(None), (true, Some(id.fingerprint())));
        assert_eq!(
            check(Some(id.fingerprint())),
            (true, Some(id.fingerprint()))
        );
        assert_eq!(
            check(Some(other.fingerprint())),
            (false, Some(id.fingerprint()))
        );
    }
}
