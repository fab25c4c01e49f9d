//! [`TcpConfig`]: limits, handshake admission, keep-alive, tracer mode and the key log.

use std::sync::Arc;
use std::time::Duration;

use crust_core::limits::FairShare;
use crust_core::wire::TransportMode;
use crust_core::{ConnectionConfig, tls};
use rustls::crypto::CryptoProvider;

#[cfg(doc)]
use crate::TcpTransport;
#[cfg(doc)]
use crust_core::{Error, Listener};

/// Configuration of a [`TcpTransport`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TcpConfig {
    /// Message size limit, send queue and handshake timeout. Default: [`ConnectionConfig::default`].
    pub connection: ConnectionConfig,
    /// The rustls crypto provider. Default: [`tls::default_crypto_provider`] (*ring*).
    pub crypto_provider: Arc<CryptoProvider>,
    /// Dial from the port we listen on (SO_REUSEADDR + SO_REUSEPORT), as TCP hole punching
    /// by simultaneous open needs. Default: `false` (dial from an ephemeral port).
    pub dial_from_listen_port: bool,
    /// Incoming handshakes in flight at once, over all sources. Connections beyond it wait
    /// for a slot in the listener's queue (see [`TcpConfig::max_queued_handshakes`]). A slot
    /// is held from the start of the handshake until the authenticated connection is in the
    /// accept queue, so an application that is slow to [`Listener::accept`] holds back new
    /// handshakes instead of letting finished ones pile up. Default 256.
    pub max_pending_handshakes: usize,
    /// Incoming handshakes in flight at once from one IP address: its fair share of the
    /// slots, so that one host that opens connections and stalls them cannot take every
    /// slot. Connections beyond it wait in the queue (they are not dropped), so honest bursts
    /// from one address (a NAT, a proxy) are all served, a share at a time. Default 64 (a
    /// quarter of the default slots); `usize::MAX` turns the per-address share off.
    pub max_pending_handshakes_per_ip: usize,
    /// Incoming handshakes in flight at once from one subnet (an IPv4 /24, an IPv6 /64), so
    /// that a host with many addresses cannot take every slot either. Connections beyond it
    /// wait in the queue. Default 128 (half of the default slots); `usize::MAX` turns it off.
    pub max_pending_handshakes_per_subnet: usize,
    /// Connections waiting for a handshake slot, over all sources. Waiting connections are
    /// served round-robin across subnets and oldest first within one. When the queue is full
    /// a newcomer takes the place of the newest waiting connection of the address with the
    /// most waiting (if it has more waiting than the newcomer's address), otherwise the
    /// newcomer is closed at once. Default 1024.
    pub max_queued_handshakes: usize,
    /// Connections from one IP address waiting for a handshake slot; newcomers beyond it
    /// are closed at once. Default 512.
    pub max_queued_handshakes_per_ip: usize,
    /// How long a connection may wait for a handshake slot before it is closed. A dialler
    /// gives up after its own handshake timeout anyway, which includes this wait. Default 5 s.
    pub handshake_queue_timeout: Duration,
    /// Authenticated connections waiting for [`Listener::accept`]. Default 128.
    pub accept_queue_len: usize,
    /// TCP keep-alive idle time, so vanished peers are noticed on idle connections.
    /// Default 30 s; `None` disables it.
    pub tcp_keepalive: Option<Duration>,
    /// Listen backlog. Default 1024.
    pub listen_backlog: u32,
    /// **Tracer mode** (for debugging): the preamble announces it, each side proves its
    /// `PeerId` by signing both sides' fresh nonces with its identity key, and then the
    /// frames travel in **clear text**, exactly as they would inside TLS, so a packet
    /// capture (with `tools/wireshark/crust.lua`) shows them. Authenticated, not secret.
    /// A tracer node and a normal node refuse each other with [`Error::ModeMismatch`]; there
    /// is no fallback. Enabling it logs a warning; in a release build (without
    /// `debug_assertions`) [`TcpTransport::new`] refuses it unless
    /// [`TcpConfig::allow_tracer_in_release`] is set too. Default `false`.
    pub tracer: bool,
    /// Lets a release build use [`TcpConfig::tracer`]. Default `false`.
    pub allow_tracer_in_release: bool,
    /// Log the TLS secrets of every session here (`SSLKEYLOGFILE` format, e.g.
    /// [`tls::KeyLogWriter`]), so Wireshark can decrypt a capture.
    ///
    /// **Security warning:** whoever holds the log and a capture reads the traffic. For
    /// debugging only. Default `None`.
    pub key_log: Option<Arc<dyn rustls::KeyLog>>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        // 256 slots; a quarter per address, half per subnet; a queue of 1024 (512 per
        // address) and a wait of at most 5 s.
        let share = FairShare::new(256);
        TcpConfig {
            connection: ConnectionConfig::default(),
            crypto_provider: tls::default_crypto_provider(),
            dial_from_listen_port: false,
            max_pending_handshakes: share.max_in_flight,
            max_pending_handshakes_per_ip: share.max_in_flight_per_ip,
            max_pending_handshakes_per_subnet: share.max_in_flight_per_subnet,
            max_queued_handshakes: share.max_queued,
            max_queued_handshakes_per_ip: share.max_queued_per_ip,
            handshake_queue_timeout: share.max_wait,
            accept_queue_len: 128,
            tcp_keepalive: Some(Duration::from_secs(30)),
            listen_backlog: 1024,
            tracer: false,
            allow_tracer_in_release: false,
            key_log: None,
        }
    }
}

impl TcpConfig {
    /// Sets [`TcpConfig::connection`].
    pub fn with_connection_config(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }

    /// Sets [`TcpConfig::crypto_provider`].
    pub fn with_crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.crypto_provider = provider;
        self
    }

    /// Sets [`TcpConfig::dial_from_listen_port`].
    pub fn with_dial_from_listen_port(mut self, enabled: bool) -> Self {
        self.dial_from_listen_port = enabled;
        self
    }

    /// Sets [`TcpConfig::max_pending_handshakes`] (at least 1); the shares per address and
    /// per subnet are left as they are.
    pub fn with_max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending_handshakes = n.max(1);
        self
    }

    /// Sets [`TcpConfig::max_pending_handshakes_per_ip`] (at least 1).
    pub fn with_max_pending_handshakes_per_ip(mut self, n: usize) -> Self {
        self.max_pending_handshakes_per_ip = n.max(1);
        self
    }

    /// Sets [`TcpConfig::max_pending_handshakes_per_subnet`] (at least 1).
    pub fn with_max_pending_handshakes_per_subnet(mut self, n: usize) -> Self {
        self.max_pending_handshakes_per_subnet = n.max(1);
        self
    }

    /// Sets [`TcpConfig::max_queued_handshakes`] and
    /// [`TcpConfig::max_queued_handshakes_per_ip`] (each at least 1).
    pub fn with_max_queued_handshakes(mut self, total: usize, per_ip: usize) -> Self {
        self.max_queued_handshakes = total.max(1);
        self.max_queued_handshakes_per_ip = per_ip.max(1);
        self
    }

    /// Sets [`TcpConfig::handshake_queue_timeout`].
    pub fn with_handshake_queue_timeout(mut self, wait: Duration) -> Self {
        self.handshake_queue_timeout = wait;
        self
    }

    /// Sets [`TcpConfig::accept_queue_len`] (at least 1).
    pub fn with_accept_queue_len(mut self, n: usize) -> Self {
        self.accept_queue_len = n.max(1);
        self
    }

    /// The handshake slots' fair share as configured here.
    pub(crate) fn fair_share(&self) -> FairShare {
        let mut share = FairShare::new(self.max_pending_handshakes);
        share.max_in_flight_per_ip = self.max_pending_handshakes_per_ip;
        share.max_in_flight_per_subnet = self.max_pending_handshakes_per_subnet;
        share.max_queued = self.max_queued_handshakes;
        share.max_queued_per_ip = self.max_queued_handshakes_per_ip;
        share.max_wait = self.handshake_queue_timeout;
        share
    }

    /// Sets [`TcpConfig::tcp_keepalive`].
    pub fn with_tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.tcp_keepalive = idle;
        self
    }

    /// Sets [`TcpConfig::tracer`].
    pub fn with_tracer(mut self, enabled: bool) -> Self {
        self.tracer = enabled;
        self
    }

    /// Sets [`TcpConfig::allow_tracer_in_release`].
    pub fn with_tracer_allowed_in_release(mut self, allowed: bool) -> Self {
        self.allow_tracer_in_release = allowed;
        self
    }

    /// Sets [`TcpConfig::key_log`].
    pub fn with_key_log(mut self, key_log: Arc<dyn rustls::KeyLog>) -> Self {
        self.key_log = Some(key_log);
        self
    }

    /// The mode the connections of this configuration use.
    pub fn mode(&self) -> TransportMode {
        if self.tracer {
            TransportMode::Tracer
        } else {
            TransportMode::Tls
        }
    }
}

/// Whether tracer mode may run: always in a debug build, in a release build only when
/// explicitly allowed.
pub fn tracer_permitted(debug_build: bool, allowed_in_release: bool) -> bool {
    debug_build || allowed_in_release
}
