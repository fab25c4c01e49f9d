//! [`RudpConfig`]: the knobs of the rUDP transport.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crust_core::ConnectionConfig;
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
    /// Incoming handshakes a listener runs concurrently; further connection attempts wait
    /// in QUIC's queue until a slot frees up. Default [`DEFAULT_MAX_CONCURRENT_HANDSHAKES`]
    /// (64).
    pub max_concurrent_handshakes: usize,
}

impl Default for RudpConfig {
    fn default() -> Self {
        RudpConfig {
            connection: ConnectionConfig::default(),
            crypto_provider: crust_core::tls::default_crypto_provider(),
            keep_alive_interval: DEFAULT_KEEP_ALIVE_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrent_handshakes: DEFAULT_MAX_CONCURRENT_HANDSHAKES,
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
            .finish_non_exhaustive()
    }
}

impl RudpConfig {
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

    /// Sets [`RudpConfig::max_concurrent_handshakes`] (at least 1).
    pub fn with_max_concurrent_handshakes(mut self, handshakes: usize) -> Self {
        self.max_concurrent_handshakes = handshakes.max(1);
        self
    }
}
