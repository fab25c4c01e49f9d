//! The handshake that turns a connected TCP stream into an authenticated Crust stream, in
//! the transport's mode: the preamble, then TLS 1.3 (normal) or the tracer authentication
//! exchange (frames in clear text afterwards). Dials, the accept loop and hole punches all
//! go through [`Handshaker`].

use std::sync::Arc;

use crust_core::tracer::{self, TracerAuth};
use crust_core::wire::{self, TransportMode};
use crust_core::{BoxedReader, BoxedWriter, Error, Identity, PeerId, PunchRole, Result, tls};
use rustls::crypto::CryptoProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What a finished handshake yields: the proven peer and the stream's two halves.
pub(crate) struct Secured {
    pub(crate) peer_id: PeerId,
    pub(crate) reader: BoxedReader,
    pub(crate) writer: BoxedWriter,
}

/// Runs handshakes for one identity in one mode. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Handshaker {
    identity: Identity,
    provider: Arc<CryptoProvider>,
    mode: TransportMode,
    acceptor: TlsAcceptor,
    /// Client configs (key parsed once; a per-dial verifier only when a `PeerId` is expected).
    client_configs: tls::ClientConfigs,
}

impl Handshaker {
    pub(crate) fn new(
        identity: Identity,
        provider: Arc<CryptoProvider>,
        mode: TransportMode,
        key_log: Option<Arc<dyn rustls::KeyLog>>,
    ) -> Result<Self> {
        let mut server = tls::server_config(&identity, provider.clone(), &[])?;
        let mut client_configs = tls::ClientConfigs::new(&identity, provider.clone(), &[])?;
        if let Some(key_log) = key_log {
            server.key_log = key_log.clone();
            client_configs = client_configs.with_key_log(key_log);
        }
        Ok(Handshaker {
            identity,
            provider,
            mode,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            client_configs,
        })
    }

    pub(crate) fn mode(&self) -> TransportMode {
        self.mode
    }

    /// The client (dialling) side. With `pipelined`, a TLS dial sends its preamble with the
    /// ClientHello and checks the listener's as the first bytes TLS reads; otherwise (a
    /// punched stream) the preambles are exchanged first. Tracer mode always sends its
    /// preamble and hello in one write.
    pub(crate) async fn client(
        &self,
        tcp: TcpStream,
        expected: Option<PeerId>,
        pipelined: bool,
    ) -> Result<Secured> {
        if self.mode == TransportMode::Tracer {
            return self.tracer(tcp, PunchRole::Client, expected).await;
        }
        let (client, verifier) = self.client_configs.for_dial(expected);
        let connector = TlsConnector::from(client);
        if pipelined {
            let tls = connector
                .connect(tls::server_name(), wire::PreambleStream::new(tcp))
                .await
                .map_err(|e| match wire::preamble_error(e) {
                    Ok(preamble) => preamble,
                    Err(e) => tls::dial_handshake_error(&verifier, e),
                })?;
            client_secured(tls, expected)
        } else {
            let mut tcp = tcp;
            wire::exchange_preamble(&mut tcp).await?;
            let tls = connector
                .connect(tls::server_name(), tcp)
                .await
                .map_err(|e| tls::dial_handshake_error(&verifier, e))?;
            client_secured(tls, expected)
        }
    }

    /// The server (listening) side. With `expected` set (a punched stream), any other
    /// peer is refused.
    pub(crate) async fn server(
        &self,
        mut tcp: TcpStream,
        expected: Option<PeerId>,
    ) -> Result<Secured> {
        if self.mode == TransportMode::Tracer {
            return self.tracer(tcp, PunchRole::Server, expected).await;
        }
        wire::exchange_preamble(&mut tcp).await?;
        let tls = self
            .acceptor
            .accept(tcp)
            .await
            .map_err(|e| Error::Handshake(e.to_string()))?;
        let peer_id = tls::peer_id_from_certificates(tls.get_ref().1.peer_certificates())?;
        check_expected(expected, peer_id)?;
        let (reader, writer) = tokio::io::split(tokio_rustls::TlsStream::Server(tls));
        Ok(Secured {
            peer_id,
            reader: Box::new(reader),
            writer: Box::new(writer),
        })
    }

    /// Tracer mode: our preamble and hello in one write, the peer's preamble (mode checked
    /// first), its hello, our proof, its proof; then the bare TCP stream carries the frames.
    async fn tracer(
        &self,
        mut tcp: TcpStream,
        role: PunchRole,
        expected: Option<PeerId>,
    ) -> Result<Secured> {
        let mut auth = TracerAuth::new(&self.identity, self.provider.clone(), role, expected)?;
        let mut first = wire::mode_preamble(
            TransportMode::Tracer,
            wire::PROTOCOL_VERSION,
            wire::MIN_PROTOCOL_VERSION,
        )
        .to_vec();
        put_frame(&mut first, tracer::HELLO_KIND, &auth.hello())?;
        tcp.write_all(&first).await?;
        let mut theirs = [0u8; wire::PREAMBLE_LEN];
        match tcp.read_exact(&mut theirs).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Error::NotCrust),
            Err(e) => return Err(e.into()),
        }
        wire::negotiate(
            &theirs,
            TransportMode::Tracer,
            wire::PROTOCOL_VERSION,
            wire::MIN_PROTOCOL_VERSION,
        )?;
        let hello = read_frame(&mut tcp, tracer::HELLO_KIND, tracer::MAX_HELLO_LEN).await?;
        let proof = auth.on_hello(&hello)?;
        let mut out = Vec::with_capacity(wire::FRAME_HEADER_LEN + proof.len());
        put_frame(&mut out, tracer::PROOF_KIND, &proof)?;
        tcp.write_all(&out).await?;
        let proof = read_frame(&mut tcp, tracer::PROOF_KIND, tracer::MAX_PROOF_LEN).await?;
        let peer_id = auth.on_proof(&proof)?;
        tracing::debug!(peer = %peer_id, ?role, "tracer handshake done: frames travel in clear text");
        let (reader, writer) = tcp.into_split();
        Ok(Secured {
            peer_id,
            reader: Box::new(reader),
            writer: Box::new(writer),
        })
    }
}

/// The peer of a finished client-side TLS handshake, checked against `expected`.
fn client_secured<S>(
    tls: tokio_rustls::client::TlsStream<S>,
    expected: Option<PeerId>,
) -> Result<Secured>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
{
    let peer_id = tls::peer_id_from_certificates(tls.get_ref().1.peer_certificates())?;
    check_expected(expected, peer_id)?;
    let (reader, writer) = tokio::io::split(tokio_rustls::TlsStream::Client(tls));
    Ok(Secured {
        peer_id,
        reader: Box::new(reader),
        writer: Box::new(writer),
    })
}

impl std::fmt::Debug for Handshaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshaker")
            .field("peer_id", &self.identity.peer_id())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn check_expected(expected: Option<PeerId>, actual: PeerId) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => Err(Error::PeerIdMismatch { expected, actual }),
        _ => Ok(()),
    }
}

/// Appends one frame (header and payload) to `out`.
fn put_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) -> Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| Error::Handshake("tracer handshake frame too large".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    Ok(())
}

/// Reads one handshake frame of `kind` with a payload of at most `max` bytes (checked
/// before anything is reserved).
async fn read_frame(tcp: &mut TcpStream, kind: u8, max: usize) -> Result<Vec<u8>> {
    let mut header = [0u8; wire::FRAME_HEADER_LEN];
    read_exact(tcp, &mut header).await?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if header[4] != kind {
        return Err(Error::Authentication(format!(
            "expected a tracer handshake frame of kind {kind}, got kind {}",
            header[4]
        )));
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(Error::Authentication(format!(
            "tracer handshake frame of {len} bytes (at most {max})"
        )));
    }
    let mut payload = vec![0u8; len];
    read_exact(tcp, &mut payload).await?;
    Ok(payload)
}

async fn read_exact(tcp: &mut TcpStream, buf: &mut [u8]) -> Result<()> {
    match tcp.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::ConnectionClosed),
        Err(e) => Err(e.into()),
    }
}
