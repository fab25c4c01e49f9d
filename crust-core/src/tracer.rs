//! Tracer mode's authentication exchange: each side proves its [`PeerId`] without TLS.
//!
//! In [`TransportMode::Tracer`](crate::wire::TransportMode::Tracer) the frames of a TCP
//! connection travel in clear text, so a packet capture shows them, but the peer is still
//! authenticated. Right after the preamble both sides send, in the frame format (a 5-byte
//! header, then the payload):
//!
//! 1. a [`HELLO_KIND`] frame: a fresh 32-byte nonce, then the sender's certificate (DER),
//!    which carries the public key its `PeerId` is derived from;
//! 2. once the peer's hello is in, a [`PROOF_KIND`] frame: the sender's signature, with its
//!    identity key, over a transcript of both nonces and both `PeerId`s
//!    ([`transcript`]), labelled with the signer's role.
//!
//! A proof is bound to both fresh nonces, so a recorded one is worthless in another session,
//! and to the signer's role, so a side cannot reflect the peer's own proof back. A dialler
//! that expects a `PeerId` checks the peer's certificate before it sends its proof
//! ([`Error::PeerIdMismatch`]). Signatures use the connection's rustls
//! [`CryptoProvider`] (the key type of the identity, Ed25519 by default), so no other crypto
//! library is involved.
//!
//! [`TracerAuth`] is the exchange as a plain state machine without I/O; `crust-tcp` drives
//! it over a socket.
//!
//! ```
//! use crust_core::{Identity, PunchRole, tls, tracer::TracerAuth};
//!
//! let (alice, bob) = (Identity::generate()?, Identity::generate()?);
//! let provider = tls::default_crypto_provider();
//! let mut dialler = TracerAuth::new(&alice, provider.clone(), PunchRole::Client, Some(bob.peer_id()))?;
//! let mut listener = TracerAuth::new(&bob, provider, PunchRole::Server, None)?;
//! let to_listener = dialler.on_hello(&listener.hello())?;
//! let to_dialler = listener.on_hello(&dialler.hello())?;
//! assert_eq!(listener.on_proof(&to_listener)?, alice.peer_id());
//! assert_eq!(dialler.on_proof(&to_dialler)?, bob.peer_id());
//! # Ok::<(), crust_core::Error>(())
//! ```

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

use crate::{Error, Identity, PeerId, PunchRole, Result};

/// Frame kind of the hello (nonce and certificate). Only sent in the tracer handshake.
pub const HELLO_KIND: u8 = 24;
/// Frame kind of the proof (signature scheme and signature). Only sent in the tracer
/// handshake.
pub const PROOF_KIND: u8 = 25;
/// Length of each side's nonce in bytes.
pub const NONCE_LEN: usize = 32;
/// Largest hello payload accepted (nonce and certificate), in bytes.
pub const MAX_HELLO_LEN: usize = 16 * 1024;
/// Largest proof payload accepted (scheme and signature), in bytes.
pub const MAX_PROOF_LEN: usize = 1024;
/// The label every signed transcript starts with.
pub const TRANSCRIPT_LABEL: &[u8] = b"crust tracer proof v1\0";

/// The bytes a side signs: [`TRANSCRIPT_LABEL`], the signer's role (`0` client/dialler,
/// `1` server/listener), the client's nonce, the server's nonce, the client's `PeerId`, the
/// server's `PeerId`.
pub fn transcript(
    signer: PunchRole,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    client: &PeerId,
    server: &PeerId,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(TRANSCRIPT_LABEL.len() + 1 + 2 * NONCE_LEN + 64);
    out.extend_from_slice(TRANSCRIPT_LABEL);
    out.push(role_byte(signer));
    out.extend_from_slice(client_nonce);
    out.extend_from_slice(server_nonce);
    out.extend_from_slice(client.as_bytes());
    out.extend_from_slice(server.as_bytes());
    out
}

fn role_byte(role: PunchRole) -> u8 {
    match role {
        PunchRole::Client => 0,
        PunchRole::Server => 1,
    }
}

fn other(role: PunchRole) -> PunchRole {
    match role {
        PunchRole::Client => PunchRole::Server,
        PunchRole::Server => PunchRole::Client,
    }
}

/// The peer as its hello presented it (not yet proven).
#[derive(Debug)]
struct PeerHello {
    nonce: [u8; NONCE_LEN],
    certificate: CertificateDer<'static>,
    peer_id: PeerId,
}

/// One side of the tracer authentication exchange (see the [module docs](self)).
///
/// Use: send [`TracerAuth::hello`]; when the peer's hello arrives, send what
/// [`TracerAuth::on_hello`] returns (our proof); when the peer's proof arrives,
/// [`TracerAuth::on_proof`] returns its authenticated `PeerId`.
#[derive(Debug)]
pub struct TracerAuth {
    identity: Identity,
    provider: Arc<CryptoProvider>,
    role: PunchRole,
    nonce: [u8; NONCE_LEN],
    expected: Option<PeerId>,
    peer: Option<PeerHello>,
}

impl TracerAuth {
    /// Starts the exchange for `identity` taking `role` (the dialler is the client), with a
    /// fresh nonce from the provider's random source. With `expected` set, only that peer
    /// is accepted.
    pub fn new(
        identity: &Identity,
        provider: Arc<CryptoProvider>,
        role: PunchRole,
        expected: Option<PeerId>,
    ) -> Result<Self> {
        let mut nonce = [0u8; NONCE_LEN];
        provider
            .secure_random
            .fill(&mut nonce)
            .map_err(|_| Error::Handshake("no random nonce available".into()))?;
        Ok(Self::with_nonce(identity, provider, role, expected, nonce))
    }

    /// [`TracerAuth::new`] with a given nonce (tests replay sessions with it).
    pub fn with_nonce(
        identity: &Identity,
        provider: Arc<CryptoProvider>,
        role: PunchRole,
        expected: Option<PeerId>,
        nonce: [u8; NONCE_LEN],
    ) -> Self {
        TracerAuth {
            identity: identity.clone(),
            provider,
            role,
            nonce,
            expected,
            peer: None,
        }
    }

    /// Our hello's payload: our nonce, then our certificate.
    pub fn hello(&self) -> Vec<u8> {
        let cert = self.identity.certificate();
        let mut out = Vec::with_capacity(NONCE_LEN + cert.len());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(cert);
        out
    }

    /// Takes the peer's hello payload and returns our proof's payload. Fails on a malformed
    /// hello ([`Error::Authentication`]), an unparseable certificate ([`Error::Handshake`]),
    /// an unexpected peer ([`Error::PeerIdMismatch`]), a second hello, or a peer that echoes
    /// our own nonce (a reflection).
    pub fn on_hello(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        if self.peer.is_some() {
            return Err(Error::Authentication("second hello".into()));
        }
        if payload.len() > MAX_HELLO_LEN {
            return Err(Error::Authentication("hello too large".into()));
        }
        let (nonce, cert) = payload
            .split_first_chunk::<NONCE_LEN>()
            .ok_or_else(|| Error::Authentication("hello shorter than its nonce".into()))?;
        if *nonce == self.nonce {
            return Err(Error::Authentication(
                "peer's nonce is ours (a reflected hello)".into(),
            ));
        }
        let certificate = CertificateDer::from(cert.to_vec());
        let peer_id = PeerId::from_certificate(&certificate)?;
        if let Some(expected) = self.expected {
            if expected != peer_id {
                return Err(Error::PeerIdMismatch {
                    expected,
                    actual: peer_id,
                });
            }
        }
        self.peer = Some(PeerHello {
            nonce: *nonce,
            certificate,
            peer_id,
        });
        self.sign()
    }

    /// Checks the peer's proof payload and returns its `PeerId`, now proven. Fails with
    /// [`Error::Authentication`] when the proof is malformed or its signature does not
    /// verify with the key of the peer's certificate over this session's transcript.
    pub fn on_proof(&self, payload: &[u8]) -> Result<PeerId> {
        let peer = self
            .peer
            .as_ref()
            .ok_or_else(|| Error::Authentication("proof before hello".into()))?;
        if payload.len() > MAX_PROOF_LEN {
            return Err(Error::Authentication("proof too large".into()));
        }
        let (scheme, signature) = payload
            .split_first_chunk::<2>()
            .ok_or_else(|| Error::Authentication("proof shorter than its scheme".into()))?;
        let scheme = SignatureScheme::from(u16::from_be_bytes(*scheme));
        let message = self.transcript_signed_by(other(self.role), peer);
        let cert = webpki::EndEntityCert::try_from(&peer.certificate)
            .map_err(|e| Error::Handshake(format!("unparseable peer certificate: {e}")))?;
        let algorithms = self
            .provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, algs)| *algs)
            .ok_or_else(|| {
                Error::Authentication(format!("unsupported signature scheme {scheme:?}"))
            })?;
        if algorithms
            .iter()
            .any(|alg| cert.verify_signature(*alg, &message, signature).is_ok())
        {
            Ok(peer.peer_id)
        } else {
            Err(Error::Authentication(format!(
                "signature of {} does not verify over this session's nonces",
                peer.peer_id.short()
            )))
        }
    }

    /// Our proof: our signature over the transcript as we sign it.
    fn sign(&self) -> Result<Vec<u8>> {
        let peer = self
            .peer
            .as_ref()
            .ok_or_else(|| Error::Authentication("proof before hello".into()))?;
        let key = self
            .provider
            .key_provider
            .load_private_key(self.identity.private_key())
            .map_err(|e| Error::Identity(format!("cannot load the signing key: {e}")))?;
        let schemes = self
            .provider
            .signature_verification_algorithms
            .supported_schemes();
        let signer = key
            .choose_scheme(&schemes)
            .ok_or_else(|| Error::Identity("no signature scheme for the identity key".into()))?;
        let message = self.transcript_signed_by(self.role, peer);
        let signature = signer
            .sign(&message)
            .map_err(|e| Error::Identity(format!("signing failed: {e}")))?;
        let mut out = Vec::with_capacity(2 + signature.len());
        out.extend_from_slice(&u16::from(signer.scheme()).to_be_bytes());
        out.extend_from_slice(&signature);
        Ok(out)
    }

    /// The transcript `signer` signs in this session.
    fn transcript_signed_by(&self, signer: PunchRole, peer: &PeerHello) -> Vec<u8> {
        let ours = self.identity.peer_id();
        match self.role {
            PunchRole::Client => transcript(signer, &self.nonce, &peer.nonce, &ours, &peer.peer_id),
            PunchRole::Server => transcript(signer, &peer.nonce, &self.nonce, &peer.peer_id, &ours),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::default_crypto_provider;

    fn pair(
        a: &Identity,
        b: &Identity,
        expected: Option<PeerId>,
        nonces: ([u8; 32], [u8; 32]),
    ) -> (TracerAuth, TracerAuth) {
        let p = default_crypto_provider();
        (
            TracerAuth::with_nonce(a, p.clone(), PunchRole::Client, expected, nonces.0),
            TracerAuth::with_nonce(b, p, PunchRole::Server, None, nonces.1),
        )
    }

    #[test]
    fn honest_exchange_proves_both_sides() {
        let (a, b) = (
            Identity::generate().expect("a"),
            Identity::generate().expect("b"),
        );
        let (mut client, mut server) = pair(&a, &b, Some(b.peer_id()), ([1; 32], [2; 32]));
        let client_proof = client.on_hello(&server.hello()).expect("server hello");
        let server_proof = server.on_hello(&client.hello()).expect("client hello");
        assert_eq!(
            server.on_proof(&client_proof).expect("client proof"),
            a.peer_id()
        );
        assert_eq!(
            client.on_proof(&server_proof).expect("server proof"),
            b.peer_id()
        );
        let hello = client.hello();
        assert_eq!(&hello[..32], &[1; 32]);
        assert_eq!(&hello[32..], &a.certificate()[..]);
    }

    #[test]
    fn unexpected_peer_is_refused_before_our_proof() {
        let (a, b, c) = (
            Identity::generate().expect("a"),
            Identity::generate().expect("b"),
            Identity::generate().expect("c"),
        );
        let (mut client, server) = pair(&a, &b, Some(c.peer_id()), ([1; 32], [2; 32]));
        match client.on_hello(&server.hello()) {
            Err(Error::PeerIdMismatch { expected, actual }) => {
                assert_eq!((expected, actual), (c.peer_id(), b.peer_id()));
            }
            other => panic!("{other:?}"),
        }
    }

    /// An impostor presents the victim's certificate but signs with its own key.
    #[test]
    fn impostor_with_someone_elses_certificate_is_refused() {
        let (a, victim, impostor) = (
            Identity::generate().expect("a"),
            Identity::generate().expect("victim"),
            Identity::generate().expect("impostor"),
        );
        let p = default_crypto_provider();
        let mut client = TracerAuth::with_nonce(&a, p.clone(), PunchRole::Client, None, [1; 32]);
        let mut fake = TracerAuth::with_nonce(&impostor, p, PunchRole::Server, None, [2; 32]);
        // The impostor's hello carries the victim's certificate.
        let mut hello = [2u8; 32].to_vec();
        hello.extend_from_slice(victim.certificate());
        client.on_hello(&hello).expect("hello parses");
        let forged = fake.on_hello(&client.hello()).expect("impostor signs");
        assert!(matches!(
            client.on_proof(&forged),
            Err(Error::Authentication(_))
        ));
    }

    /// A proof recorded in one session does not pass in another (fresh nonces), nor does a
    /// side's own proof reflected back at it, nor a tampered one.
    #[test]
    fn replayed_reflected_and_tampered_proofs_are_refused() {
        let (a, b) = (
            Identity::generate().expect("a"),
            Identity::generate().expect("b"),
        );
        let (mut client, mut server) = pair(&a, &b, None, ([1; 32], [2; 32]));
        let recorded = client.on_hello(&server.hello()).expect("first session");
        server.on_hello(&client.hello()).expect("first session");
        assert!(server.on_proof(&recorded).is_ok());
        // Second session: the server's nonce is fresh; the attacker replays the recording.
        let (_, mut server2) = pair(&a, &b, None, ([1; 32], [3; 32]));
        server2.on_hello(&client.hello()).expect("replayed hello");
        assert!(matches!(
            server2.on_proof(&recorded),
            Err(Error::Authentication(_))
        ));
        // Reflection: the server's own proof sent back to it.
        let (mut client3, mut server3) = pair(&a, &b, None, ([4; 32], [5; 32]));
        let own = server3.on_hello(&client3.hello()).expect("hello");
        client3.on_hello(&server3.hello()).expect("hello");
        assert!(matches!(
            server3.on_proof(&own),
            Err(Error::Authentication(_))
        ));
        // Tampered signature, unknown scheme, truncated, oversized.
        let good = {
            let (mut c, mut s) = pair(&a, &b, None, ([6; 32], [7; 32]));
            let proof = c.on_hello(&s.hello()).expect("hello");
            s.on_hello(&c.hello()).expect("hello");
            (s, proof)
        };
        let (server4, mut tampered) = good;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            server4.on_proof(&tampered),
            Err(Error::Authentication(_))
        ));
        assert!(matches!(
            server4.on_proof(&[0xff, 0xff, 1]),
            Err(Error::Authentication(_))
        ));
        assert!(matches!(
            server4.on_proof(&[1]),
            Err(Error::Authentication(_))
        ));
        assert!(matches!(
            server4.on_proof(&vec![0; MAX_PROOF_LEN + 1]),
            Err(Error::Authentication(_))
        ));
    }

    #[test]
    fn malformed_hellos_are_refused() {
        let (a, b) = (
            Identity::generate().expect("a"),
            Identity::generate().expect("b"),
        );
        let (mut client, server) = pair(&a, &b, None, ([1; 32], [2; 32]));
        assert!(matches!(
            client.on_hello(&[0; 31]),
            Err(Error::Authentication(_))
        ));
        assert!(matches!(
            client.on_hello(&[9; 40]),
            Err(Error::Handshake(_))
        ));
        assert!(matches!(
            client.on_hello(&vec![9; MAX_HELLO_LEN + 1]),
            Err(Error::Authentication(_))
        ));
        // Our own hello reflected back.
        assert!(matches!(
            client.on_hello(&client.hello()),
            Err(Error::Authentication(_))
        ));
        assert!(matches!(
            client.on_proof(&[0; 10]),
            Err(Error::Authentication(_))
        ));
        client.on_hello(&server.hello()).expect("hello");
        assert!(matches!(
            client.on_hello(&server.hello()),
            Err(Error::Authentication(_))
        ));
    }
}
