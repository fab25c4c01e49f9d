//! rustls configuration shared by every Crust transport: TLS 1.3 only, mutual authentication
//! with self-signed certificates, and verifiers that pin the peer's key instead of trusting a
//! certificate authority.
//!
//! A certificate is accepted when it parses and the peer proves possession of its key (the
//! TLS 1.3 `CertificateVerify` signature). Its [`PeerId`] is the SHA-256 of its public key;
//! when dialling with an expected `PeerId`, any other key is refused during the handshake,
//! before we send our own certificate or any data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{Error, Identity, PeerId, Result};

/// The server name Crust dialers put in the TLS ClientHello. Verifiers ignore it: identity
/// is the key, not a name.
pub const SERVER_NAME: &str = "crust";

/// The crypto provider Crust uses unless told otherwise: *ring*.
///
/// Measured on the 2-core reference machine (loopback, TLS 1.3 bulk data), *ring* moved
/// 16 Gbit/s against 10.6 Gbit/s for `aws-lc-rs`, so it is the default. Any other
/// `rustls` provider can be passed to the transports' configs instead.
pub fn default_crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls server (accepting side) configuration for `identity`.
///
/// Client certificates are mandatory; the caller reads the peer's `PeerId` after the
/// handshake with [`peer_id_from_certificates`].
pub fn server_config(
    identity: &Identity,
    provider: Arc<CryptoProvider>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig> {
    let algorithms = provider.signature_verification_algorithms;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_config_error)?
        .with_client_cert_verifier(Arc::new(PeerKeyVerifier::new(algorithms, None)))
        .with_single_cert(vec![identity.certificate().clone()], identity.private_key())
        .map_err(tls_config_error)?;
    // Every handshake is a full one, so the key is always verified.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Builds the rustls client (dialling side) configuration for `identity`.
///
/// With `expected` set, only a peer whose key hashes to that `PeerId` is accepted. The
/// returned [`PeerKeyVerifier`] remembers which key a refused peer presented, so the dialler
/// can report [`Error::PeerIdMismatch`] with both ids.
pub fn client_config(
    identity: &Identity,
    provider: Arc<CryptoProvider>,
    expected: Option<PeerId>,
    alpn: &[&[u8]],
) -> Result<(rustls::ClientConfig, Arc<PeerKeyVerifier>)> {
    let verifier = Arc::new(PeerKeyVerifier::new(
        provider.signature_verification_algorithms,
        expected,
    ));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_config_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(vec![identity.certificate().clone()], identity.private_key())
        .map_err(tls_config_error)?;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((config, verifier))
}

/// The client (dialling side) configurations of one identity, built once: the private key is
/// parsed once, and a dial that names an expected [`PeerId`] gets a cheap copy with its own
/// [`PeerKeyVerifier`] instead of a configuration rebuilt from scratch.
#[derive(Clone, Debug)]
pub struct ClientConfigs {
    /// For dials that accept any peer (its verifier never refuses a key for being unexpected).
    any_peer: (Arc<rustls::ClientConfig>, Arc<PeerKeyVerifier>),
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientConfigs {
    /// Builds the configurations for `identity` (see [`client_config`]).
    pub fn new(identity: &Identity, provider: Arc<CryptoProvider>, alpn: &[&[u8]]) -> Result<Self> {
        let algorithms = provider.signature_verification_algorithms;
        let (config, verifier) = client_config(identity, provider, None, alpn)?;
        Ok(ClientConfigs {
            any_peer: (Arc::new(config), verifier),
            algorithms,
        })
    }

    /// The same configurations, logging the TLS secrets of every session to `key_log`
    /// (see [`KeyLogWriter`]).
    pub fn with_key_log(mut self, key_log: Arc<dyn rustls::KeyLog>) -> Self {
        let mut config = rustls::ClientConfig::clone(&self.any_peer.0);
        config.key_log = key_log;
        self.any_peer.0 = Arc::new(config);
        self
    }

    /// The configuration for one dial: with `expected` set, only a peer whose key hashes to
    /// that `PeerId` is accepted, and the returned verifier remembers a refused key (see
    /// [`dial_handshake_error`]). Same result as [`client_config`], without parsing the key.
    pub fn for_dial(
        &self,
        expected: Option<PeerId>,
    ) -> (Arc<rustls::ClientConfig>, Arc<PeerKeyVerifier>) {
        match expected {
            None => (self.any_peer.0.clone(), self.any_peer.1.clone()),
            Some(id) => {
                let verifier = Arc::new(PeerKeyVerifier::new(self.algorithms, Some(id)));
                let mut config = rustls::ClientConfig::clone(&self.any_peer.0);
                config
                    .dangerous()
                    .set_certificate_verifier(verifier.clone());
                (Arc::new(config), verifier)
            }
        }
    }
}

/// The TLS server name to dial with.
pub fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from(SERVER_NAME)
            .expect("static server name is a valid DNS name")
            .to_owned(),
    )
}

/// The authenticated `PeerId` of a finished handshake's peer certificate chain.
pub fn peer_id_from_certificates(certs: Option<&[CertificateDer<'_>]>) -> Result<PeerId> {
    match certs {
        Some([end_entity]) => PeerId::from_certificate(end_entity),
        Some(_) => Err(Error::Handshake(
            "peer presented a certificate chain instead of one certificate".into(),
        )),
        None => Err(Error::Handshake("peer presented no certificate".into())),
    }
}

/// Maps a failed dial's handshake error to the most precise `Error`: a [`Error::PeerIdMismatch`]
/// when `verifier` refused the peer's key, otherwise [`Error::Handshake`] with `detail`.
pub fn dial_handshake_error(verifier: &PeerKeyVerifier, detail: impl std::fmt::Display) -> Error {
    match (verifier.expected, verifier.refused_peer()) {
        (Some(expected), Some(actual)) => Error::PeerIdMismatch { expected, actual },
        _ => Error::Handshake(detail.to_string()),
    }
}

fn tls_config_error(e: rustls::Error) -> Error {
    Error::Handshake(format!("tls configuration: {e}"))
}

/// A TLS key log in the `SSLKEYLOGFILE` format (NSS key log): one line per secret,
/// `LABEL <client random, hex> <secret, hex>`, appended to a file that Wireshark reads
/// (`tls.keylog_file`) to decrypt captured sessions, TCP and QUIC alike.
///
/// **Security warning:** anyone who can read this file and a capture of the traffic can
/// decrypt every session logged in it, and the file is not deleted or rotated by Crust. Use
/// it only for debugging, on machines and peers you control, and delete it afterwards. It
/// is created readable by its owner only (mode `0600` on Unix). Off unless configured
/// (`TcpConfig::key_log`, `RudpConfig::key_log`, `ServiceConfig::key_log_file`,
/// `crust-peer --key-log FILE`); the `SSLKEYLOGFILE` environment variable is never read by
/// Crust itself.
pub struct KeyLogWriter {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl KeyLogWriter {
    /// Opens (creating it if needed) the key log at `path` for appending, and warns in the
    /// log that secrets are being written.
    pub fn create(path: impl AsRef<Path>) -> Result<Arc<Self>> {
        let path = path.as_ref().to_path_buf();
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path)?;
        tracing::warn!(path = %path.display(), "TLS KEY LOG ENABLED: the secrets of every TLS session are written to this file; anyone holding it and a capture can decrypt the traffic");
        Ok(Arc::new(KeyLogWriter {
            path,
            file: Mutex::new(file),
        }))
    }

    /// The file the secrets go to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for KeyLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLogWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl rustls::KeyLog for KeyLogWriter {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let mut line =
            String::with_capacity(label.len() + 2 * (client_random.len() + secret.len()) + 3);
        line.push_str(label);
        line.push(' ');
        push_hex(&mut line, client_random);
        line.push(' ');
        push_hex(&mut line, secret);
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write per line, so concurrent handshakes never interleave within a line.
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the TLS key log");
        }
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Certificate verifier for both directions: accepts exactly one self-signed certificate,
/// optionally only the one whose key has the expected [`PeerId`].
#[derive(Debug)]
pub struct PeerKeyVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    expected: Option<PeerId>,
    refused: Mutex<Option<PeerId>>,
}

impl PeerKeyVerifier {
    fn new(algorithms: WebPkiSupportedAlgorithms, expected: Option<PeerId>) -> Self {
        PeerKeyVerifier {
            algorithms,
            expected,
            refused: Mutex::new(None),
        }
    }

    /// The `PeerId` of a key this verifier refused because it was not the expected one.
    pub fn refused_peer(&self) -> Option<PeerId> {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> std::result::Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        let actual = PeerId::from_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if let Some(expected) = self.expected {
            if expected != actual {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(actual);
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(())
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for PeerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("crust speaks tls 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PeerKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("crust speaks tls 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::KeyLog;

    #[test]
    fn key_log_lines_are_nss_format_and_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.log");
        let log = KeyLogWriter::create(&path).expect("create");
        log.log(
            "CLIENT_TRAFFIC_SECRET_0",
            &[0x01, 0xab],
            &[0xff, 0x00, 0x10],
        );
        log.log("SERVER_TRAFFIC_SECRET_0", &[0x02], &[0x0e]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            "CLIENT_TRAFFIC_SECRET_0 01ab ff0010\nSERVER_TRAFFIC_SECRET_0 02 0e\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second writer appends.
        KeyLogWriter::create(&path)
            .expect("reopen")
            .log("EXPORTER_SECRET", &[3], &[4]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.ends_with("EXPORTER_SECRET 03 04\n"), "{text}");
    }
}
