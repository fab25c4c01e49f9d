//! [`RudpConfig`]: the knobs of the rUDP transport.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crust_core::ConnectionConfig;
use crust_core::limits::FairShare;
use rustls::crypto::CryptoProvider;

/// Default interval between QUIC keep-alive (PING) packets on an idle connection: 10 s.
///
/// Well under the ~30 s after which many NATs forget a UDP mapping, so an idle connection
/// keeps its hole open.
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Default idle timeout: 30 s. A peer that sends nothing (not even keep-alives, i.e. it
/// vanished) for this long is considered gone and its connection fails with
/// [`Error::ConnectionClosed`](crust_core::Error::ConnectionClosed).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default number of incoming handshakes a listener runs at the same time: 64.
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 64;

/// Default number of incoming handshakes a listener runs at the same time for one IP
/// address: 16 (a quarter of [`DEFAULT_MAX_CONCURRENT_HANDSHAKES`]).
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES_PER_IP: usize = 16;

/// Default number of incoming handshakes a listener runs at the same time for one subnet
/// (IPv4 /24, IPv6 /64): 32 (half of [`DEFAULT_MAX_CONCURRENT_HANDSHAKES`]).
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES_PER_SUBNET: usize = 32;

/// Default number of connection attempts waiting for a handshake slot: 256 in all.
pub const DEFAULT_MAX_QUEUED_HANDSHAKES: usize = 256;

/// Default number of connection attempts from one IP address waiting for a handshake
/// slot: 128.
pub const DEFAULT_MAX_QUEUED_HANDSHAKES_PER_IP: usize = 128;

/// Default longest wait for a handshake slot: 5 s.
pub const DEFAULT_HANDSHAKE_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Configuration of a [`RudpTransport`](crate::RudpTransport).
///
/// Build it from [`RudpConfig::default()`] and the `with_*` methods:
///
/// ```
/// use std::time::Duration;
/// use crust_rudp::RudpConfig;
/// use crust_core::ConnectionConfig;
///
/// let config = RudpConfig::default()
///     .with_connection_config(ConnectionConfig::default().with_max_message_size(1 << 20))
///     .with_keep_alive_interval(Duration::from_secs(5))
///     .with_idle_timeout(Duration::from_secs(20))
///     .with_max_concurrent_handshakes(16);
/// assert_eq!(config.connection.max_message_size, 1 << 20);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RudpConfig {
    /// Limits shared with every Crust transport (message size, send queue, handshake
    /// timeout). Default [`ConnectionConfig::default()`]. The handshake timeout bounds the
    /// whole handshake (QUIC/TLS plus the stream-open preamble) and also how long a
    /// graceful close waits for the peer to acknowledge the last data.
    pub connection: ConnectionConfig,
    /// The rustls crypto provider. Default [`crust_core::tls::default_crypto_provider()`]
    /// (*ring*).
    pub crypto_provider: Arc<CryptoProvider>,
    /// Interval between keep-alive packets on an idle connection. Default
    /// [`DEFAULT_KEEP_ALIVE_INTERVAL`] (10 s). Must be shorter than `idle_timeout`.
    pub keep_alive_interval: Duration,
    /// How long a connection may be silent before it is considered dead. Default
    /// [`DEFAULT_IDLE_TIMEOUT`] (30 s). The effective timeout is the smaller of both
    /// peers' values.
    pub idle_timeout: Duration,
    /// Incoming handshakes a listener runs concurrently, over all sources; a slot is held
    /// from the first packet of a connection attempt until its authenticated stream is in
    /// the accept queue, so an application slow to accept holds back new handshakes.
    /// Further connection attempts wait in the listener's queue until a slot frees up.
    /// Default [`DEFAULT_MAX_CONCURRENT_HANDSHAKES`] (64).
    pub max_concurrent_handshakes: usize,
    /// Incoming handshakes run concurrently for one IP address: its fair share, so that one
    /// host that completes QUIC and then stalls (never opens the Crust stream) cannot hold
    /// every slot until the handshake timeout. Attempts beyond it wait (they are not
    /// refused), so honest bursts from one NAT are all served, a share at a time. Default
    /// [`DEFAULT_MAX_CONCURRENT_HANDSHAKES_PER_IP`] (16); `usize::MAX` turns it off.
    pub max_concurrent_handshakes_per_ip: usize,
    /// Incoming handshakes run concurrently for one subnet (IPv4 /24, IPv6 /64), so a host
    /// with many addresses cannot hold every slot either. Default
    /// [`DEFAULT_MAX_CONCURRENT_HANDSHAKES_PER_SUBNET`] (32); `usize::MAX` turns it off.
    pub max_concurrent_handshakes_per_subnet: usize,
    /// Connection attempts waiting for a handshake slot, over all sources. They are served
    /// round-robin across subnets and oldest first within one. When the queue is full a
    /// newcomer takes the place of the newest waiting attempt of the address with the most
    /// waiting (if it has more waiting than the newcomer's address), otherwise the newcomer
    /// is refused (QUIC `CONNECTION_REFUSED`). Default [`DEFAULT_MAX_QUEUED_HANDSHAKES`] (256).
    pub max_queued_handshakes: usize,
    /// Connection attempts from one IP address waiting for a handshake slot; newcomers
    /// beyond it are refused. Default [`DEFAULT_MAX_QUEUED_HANDSHAKES_PER_IP`] (128).
    pub max_queued_handshakes_per_ip: usize,
    /// How long a connection attempt may wait for a handshake slot before it is refused.
    /// Default [`DEFAULT_HANDSHAKE_QUEUE_TIMEOUT`] (5 s).
    pub handshake_queue_timeout: Duration,
    /// Log the TLS secrets of every QUIC connection here (`SSLKEYLOGFILE` format, e.g.
    /// [`crust_core::tls::KeyLogWriter`]), so Wireshark can decrypt a capture.
    ///
    /// **Security warning:** whoever holds the log and a capture reads the traffic. For
    /// debugging only. Default `None`.
    pub key_log: Option<Arc<dyn rustls::KeyLog>>,
}

impl Default for RudpConfig {
    fn default() -> Self {
        RudpConfig {
            connection: ConnectionConfig::default(),
            crypto_provider: crust_core::tls::default_crypto_provider(),
            keep_alive_interval: DEFAULT_KEEP_ALIVE_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrent_handshakes: DEFAULT_MAX_CONCURRENT_HANDSHAKES,
            max_concurrent_handshakes_per_ip: DEFAULT_MAX_CONCURRENT_HANDSHAKES_PER_IP,
            max_concurrent_handshakes_per_subnet: DEFAULT_MAX_CONCURRENT_HANDSHAKES_PER_SUBNET,
            max_queued_handshakes: DEFAULT_MAX_QUEUED_HANDSHAKES,
            max_queued_handshakes_per_ip: DEFAULT_MAX_QUEUED_HANDSHAKES_PER_IP,
            handshake_queue_timeout: DEFAULT_HANDSHAKE_QUEUE_TIMEOUT,
            key_log: None,
        }
    }
}

impl fmt::Debug for RudpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The crypto provider's Debug lists every cipher suite and key-exchange group.
        f.debug_struct("RudpConfig")
            .field("connection", &self.connection)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_concurrent_handshakes", &self.max_concurrent_handshakes)
            .field(
                "max_concurrent_handshakes_per_ip",
                &self.max_concurrent_handshakes_per_ip,
            )
            .field(
                "max_concurrent_handshakes_per_subnet",
                &self.max_concurrent_handshakes_per_subnet,
            )
            .field("max_queued_handshakes", &self.max_queued_handshakes)
            .field(
                "max_queued_handshakes_per_ip",
                &self.max_queued_handshakes_per_ip,
            )
            .field("handshake_queue_timeout", &self.handshake_queue_timeout)
            .field("key_log", &self.key_log)
            .finish_non_exhaustive()
    }
}

impl RudpConfig {
    /// Sets [`RudpConfig::key_log`].
    pub fn with_key_log(mut self, key_log: Arc<dyn rustls::KeyLog>) -> Self {
        self.key_log = Some(key_log);
        self
    }

    /// Sets [`RudpConfig::connection`].
    pub fn with_connection_config(mut self, connection: ConnectionConfig) -> Self {
        self.connection = connection;
        self
    }

    /// Sets [`RudpConfig::crypto_provider`].
    pub fn with_crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.crypto_provider = provider;
        self
    }

    /// Sets [`RudpConfig::keep_alive_interval`].
    pub fn with_keep_alive_interval(mut self, interval: Duration) -> Self {
        self.keep_alive_interval = interval;
        self
    }

    /// Sets [`RudpConfig::idle_timeout`].
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`RudpConfig::max_concurrent_handshakes`] (at least 1); the shares per address
    /// and per subnet are left as they are.
    pub fn with_max_concurrent_handshakes(mut self, handshakes: usize) -> Self {
        self.max_concurrent_handshakes = handshakes.max(1);
        self
    }

    /// Sets [`RudpConfig::max_concurrent_handshakes_per_ip`] (at least 1).
    pub fn with_max_concurrent_handshakes_per_ip(mut self, handshakes: usize) -> Self {
        self.max_concurrent_handshakes_per_ip = handshakes.max(1);
        self
    }

    /// Sets [`RudpConfig::max_concurrent_handshakes_per_subnet`] (at least 1).
    pub fn with_max_concurrent_handshakes_per_subnet(mut self, handshakes: usize) -> Self {
        self.max_concurrent_handshakes_per_subnet = handshakes.max(1);
        self
    }

    /// Sets [`RudpConfig::max_queued_handshakes`] and
    /// [`RudpConfig::max_queued_handshakes_per_ip`] (each at least 1).
    pub fn with_max_queued_handshakes(mut self, total: usize, per_ip: usize) -> Self {
        self.max_queued_handshakes = total.max(1);
        self.max_queued_handshakes_per_ip = per_ip.max(1);
        self
    }

    /// Sets [`RudpConfig::handshake_queue_timeout`].
    pub fn with_handshake_queue_timeout(mut self, wait: Duration) -> Self {
        self.handshake_queue_timeout = wait;
        self
    }

    /// The handshake slots' fair share as configured here.
    pub(crate) fn fair_share(&self) -> FairShare {
        let mut share = FairShare::new(self.max_concurrent_handshakes);
        share.max_in_flight_per_ip = self.max_concurrent_handshakes_per_ip;
        share.max_in_flight_per_subnet = self.max_concurrent_handshakes_per_subnet;
        share.max_queued = self.max_queued_handshakes;
        share.max_queued_per_ip = self.max_queued_handshakes_per_ip;
        share.max_wait = self.handshake_queue_timeout;
        share
    }
}
