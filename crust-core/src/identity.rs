//! Node identity: a long-lived key pair, the self-signed certificate TLS presents, and the
//! [`PeerId`] derived from the public key.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The identity of a node: SHA-256 of the DER-encoded SubjectPublicKeyInfo of its key.
///
/// Every Crust transport authenticates the peer's key during its TLS handshake, so the
/// `PeerId` a connection reports is proven, not claimed. Its text form is 64 lowercase hex
/// digits; `{:?}` prints a short prefix for logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// Length of a `PeerId` in bytes.
    pub const LEN: usize = 32;

    /// Builds a `PeerId` from its raw 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        PeerId(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Derives the `PeerId` of a DER-encoded SubjectPublicKeyInfo.
    pub fn from_public_key_info(spki_der: &[u8]) -> Self {
        PeerId(Sha256::digest(spki_der).into())
    }

    /// Derives the `PeerId` of the key a DER-encoded X.509 certificate carries.
    ///
    /// Fails with [`Error::Handshake`] when the bytes are not a parseable certificate.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| Error::Handshake(format!("unparseable peer certificate: {e}")))?;
        Ok(Self::from_public_key_info(
            parsed.subject_public_key_info().as_ref(),
        ))
    }

    /// A short form (first 8 hex digits) for logs and human-facing output.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return Err(Error::Parse(format!(
                "peer id must be 64 hex digits, got {} characters",
                s.len()
            )));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hi = hex_value(chunk[0]);
            let lo = hex_value(chunk[1]);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
                _ => return Err(Error::Parse(format!("peer id has a non-hex digit: {s:?}"))),
            }
        }
        Ok(PeerId(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl serde::Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's key pair and the self-signed certificate its transports present.
///
/// Cheap to clone (the key material is shared). The key is Ed25519, generated with `rcgen`;
/// the certificate is re-created from the key when an identity is loaded, so only the key
/// needs to be stored.
///
/// ```
/// let identity = crust_core::Identity::generate()?;
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("node.key");
/// identity.save(&path)?;
/// let again = crust_core::Identity::load(&path)?;
/// assert_eq!(identity.peer_id(), again.peer_id());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Identity {
    inner: Arc<IdentityInner>,
}

struct IdentityInner {
    peer_id: PeerId,
    key_pkcs8_der: Vec<u8>,
    key_pem: String,
    cert_der: CertificateDer<'static>,
}

impl Identity {
    /// Generates a fresh Ed25519 identity.
    pub fn generate() -> Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| Error::Identity(format!("key generation failed: {e}")))?;
        Self::from_key_pair(key)
    }

    /// Builds an identity from a PKCS#8 private key in PEM form (as written by [`Identity::save`]).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = rcgen::KeyPair::from_pem(pem)
            .map_err(|e| Error::Identity(format!("invalid private key: {e}")))?;
        Self::from_key_pair(key)
    }

    fn from_key_pair(key: rcgen::KeyPair) -> Result<Self> {
        let params = rcgen::CertificateParams::new(vec!["crust".to_owned()])
            .map_err(|e| Error::Identity(format!("certificate parameters: {e}")))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::Identity(format!("certificate signing failed: {e}")))?;
        let cert_der = cert.der().clone();
        let peer_id = PeerId::from_certificate(&cert_der)?;
        Ok(Identity {
            inner: Arc::new(IdentityInner {
                peer_id,
                key_pkcs8_der: key.serialize_der(),
                key_pem: key.serialize_pem(),
                cert_der,
            }),
        })
    }

    /// Loads an identity saved with [`Identity::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::Identity(format!("cannot read {}: {e}", path.display())))?;
        Self::from_pem(&pem).map_err(|e| Error::Identity(format!("{}: {e}", path.display())))
    }

    /// Loads the identity at `path`, or generates one and saves it there if the file does not exist.
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.exists() {
            Self::load(path)
        } else {
            let identity = Self::generate()?;
            identity.save(path)?;
            Ok(identity)
        }
    }

    /// Writes the private key (PKCS#8 PEM) to `path` atomically, readable by the owner only
    /// (see [`crate::fs::write_atomic`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        crate::fs::write_atomic(path, self.inner.key_pem.as_bytes(), crate::fs::OWNER_ONLY)
            .map_err(|e| Error::Identity(format!("cannot write {}: {e}", path.display())))
    }

    /// This node's `PeerId`.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// The self-signed certificate (DER) presented in TLS handshakes.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.inner.cert_der
    }

    /// The private key (PKCS#8 DER) for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.inner.key_pkcs8_der.clone()))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.inner.peer_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_text_round_trip() {
        let id = Identity::generate().expect("generate").peer_id();
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<PeerId>().expect("parse"), id);
        assert_eq!(
            text.to_uppercase().parse::<PeerId>().expect("parse upper"),
            id
        );
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(
            serde_json::from_str::<PeerId>(&json).expect("deserialize"),
            id
        );
    }

    #[test]
    fn peer_id_rejects_bad_text() {
        assert!(matches!("abc".parse::<PeerId>(), Err(Error::Parse(_))));
        let bad = "g".repeat(64);
        assert!(matches!(bad.parse::<PeerId>(), Err(Error::Parse(_))));
        let multibyte = "é".repeat(32);
        assert!(matches!(multibyte.parse::<PeerId>(), Err(Error::Parse(_))));
    }

    #[test]
    fn distinct_identities_have_distinct_ids() {
        let a = Identity::generate().expect("a");
        let b = Identity::generate().expect("b");
        assert_ne!(a.peer_id(), b.peer_id());
    }

    #[test]
    fn identity_survives_save_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/node.key");
        let first = Identity::load_or_generate(&path).expect("generate");
        let second = Identity::load_or_generate(&path).expect("load");
        assert_eq!(first.peer_id(), second.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_identity_file_is_a_typed_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        std::fs::write(&path, "not a key").expect("write");
        assert!(matches!(Identity::load(&path), Err(Error::Identity(_))));
    }
}
