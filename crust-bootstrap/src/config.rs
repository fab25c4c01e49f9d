//! The user-edited bootstrap config file.

use std::io;
use std::path::{Path, PathBuf};

use crust_core::{Endpoint, PeerId};
use serde::{Deserialize, Serialize};

use crate::{BackoffConfig, DEFAULT_MAX_CACHE_ENTRIES, Error, Result};

/// Where the config file lives by default: `<config dir>/crust/bootstrap.json`
/// (e.g. `~/.config/crust/bootstrap.json` on Linux), or `None` when the platform has no
/// config directory.
pub fn default_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("crust").join("bootstrap.json"))
}

/// A hard-coded contact of the config file: a peer worth trying at start-up.
///
/// JSON: `{ "endpoints": ["tcp://203.0.113.7:5483"], "peer_id": "<64 hex digits>" }`;
/// `peer_id` may be omitted, then any peer answering at those endpoints is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Contact {
    /// The peer's identity, when known (dials then insist on it). Default: `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<PeerId>,
    /// Where the peer may be reached, best first. Must not be empty.
    pub endpoints: Vec<Endpoint>,
}

impl Contact {
    /// A contact at `endpoints`, with a known identity or not.
    pub fn new(peer_id: Option<PeerId>, endpoints: Vec<Endpoint>) -> Self {
        Contact { peer_id, endpoints }
    }
}

/// The user-edited bootstrap config (JSON). A missing file means [`BootstrapConfig::default`].
///
/// Every field may be omitted; unknown fields are rejected so that typos are reported rather
/// than silently ignored. A complete file:
///
/// ```json
/// {
///   "contacts": [
///     { "endpoints": ["tcp://203.0.113.7:5483", "rudp://203.0.113.7:5483"],
///       "peer_id": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff" },
///     { "endpoints": ["tcp://198.51.100.2:5483"] }
///   ],
///   "tcp_port": 5483,
///   "rudp_port": 5483,
///   "use_cache": true,
///   "max_cache_entries": 200,
///   "cache_path": "/var/lib/crust/bootstrap-cache.json",
///   "backoff": { "initial_delay_ms": 500, "max_delay_ms": 60000, "multiplier": 2,
///                "jitter": 0.5, "max_rounds": null }
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BootstrapConfig {
    /// Hard-coded contacts, tried after the cached peers. Default: none.
    pub contacts: Vec<Contact>,
    /// TCP port to listen on, or `None` to let the system pick one. Default: `None`.
    pub tcp_port: Option<u16>,
    /// Reliable-UDP (QUIC) port to listen on, or `None` to let the system pick one. Default: `None`.
    pub rudp_port: Option<u16>,
    /// Whether to read and write the cache of directly reached peers. Default: `true`.
    pub use_cache: bool,
    /// Maximum number of peers the cache keeps (the least recently reached are dropped).
    /// Default: 200 ([`DEFAULT_MAX_CACHE_ENTRIES`]).
    pub max_cache_entries: usize,
    /// Where the cache lives, or `None` for [`default_cache_path`](crate::default_cache_path).
    /// Default: `None`.
    pub cache_path: Option<PathBuf>,
    /// The retry schedule. Default: [`BackoffConfig::default`].
    pub backoff: BackoffConfig,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            contacts: Vec::new(),
            tcp_port: None,
            rudp_port: None,
            use_cache: true,
            max_cache_entries: DEFAULT_MAX_CACHE_ENTRIES,
            cache_path: None,
            backoff: BackoffConfig::default(),
        }
    }
}

impl BootstrapConfig {
    /// Reads the config at `path`; a missing file yields the defaults.
    ///
    /// Errors: [`Error::Read`] when the file exists but cannot be read,
    /// [`Error::ConfigSyntax`] (with line and column) when it is not valid JSON of the right
    /// shape, [`Error::ConfigValue`] when a value is out of range.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "no bootstrap config, using defaults");
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let config = Self::parse(&text).map_err(|e| match e {
            Error::ConfigSyntax {
                line,
                column,
                source,
                ..
            } => Error::ConfigSyntax {
                path: path.to_owned(),
                line,
                column,
                source,
            },
            Error::ConfigValue { reason, .. } => Error::ConfigValue {
                path: Some(path.to_owned()),
                reason,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Reads the config at [`default_config_path`]; defaults when there is no such file
    /// (or no config directory on this platform).
    pub fn load_default() -> Result<Self> {
        match default_config_path() {
            Some(path) => Self::load(path),
            None => Ok(Self::default()),
        }
    }

    /// Parses config text. Errors name no file (their path is empty, shown as `(in memory)`).
    pub fn parse(text: &str) -> Result<Self> {
        // serde also accepts a struct written as a JSON array; a config file must be an object.
        let start = text.len() - text.trim_start().len();
        if text[start..].starts_with('[') {
            let line = text[..start].matches('\n').count() + 1;
            let column = start - text[..start].rfind('\n').map_or(0, |i| i + 1) + 1;
            let source = <serde_json::Error as serde::de::Error>::custom(format!(
                "the config must be a JSON object, not an array (line {line}, column {column})"
            ));
            return Err(Error::ConfigSyntax {
                path: PathBuf::new(),
                line,
                column,
                source,
            });
        }
        let config: Self = serde_json::from_str(text).map_err(|source| Error::ConfigSyntax {
            path: PathBuf::new(),
            line: source.line(),
            column: source.column(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values (ranges, non-empty contacts); the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Error::ConfigValue { path: None, reason };
        self.backoff.validate().map_err(invalid)?;
        if let Some(i) = self.contacts.iter().position(|c| c.endpoints.is_empty()) {
            return Err(invalid(format!("contacts[{i}] has no endpoints")));
        }
        if self
            .cache_path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid("cache_path is empty".to_owned()));
        }
        Ok(())
    }

    /// Writes the config as pretty JSON at `path` (atomically, like the cache), e.g. to create
    /// a template for the user to edit.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(Error::Encode)?;
        crate::cache::write_atomically(path.as_ref(), &json)
    }

    /// The cache path to use: [`cache_path`](Self::cache_path), else the platform default.
    pub fn resolved_cache_path(&self) -> Option<PathBuf> {
        self.cache_path.clone().or_else(crate::default_cache_path)
    }

    /// Adds a hard-coded contact.
    pub fn with_contact(mut self, contact: Contact) -> Self {
        self.contacts.push(contact);
        self
    }

    /// Sets [`tcp_port`](Self::tcp_port).
    pub fn with_tcp_port(mut self, port: Option<u16>) -> Self {
        self.tcp_port = port;
        self
    }

    /// Sets [`rudp_port`](Self::rudp_port).
    pub fn with_rudp_port(mut self, port: Option<u16>) -> Self {
        self.rudp_port = port;
        self
    }

    /// Sets [`use_cache`](Self::use_cache).
    pub fn with_use_cache(mut self, use_cache: bool) -> Self {
        self.use_cache = use_cache;
        self
    }

    /// Sets [`max_cache_entries`](Self::max_cache_entries).
    pub fn with_max_cache_entries(mut self, max: usize) -> Self {
        self.max_cache_entries = max;
        self
    }

    /// Sets [`cache_path`](Self::cache_path).
    pub fn with_cache_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache_path = Some(path.into());
        self
    }

    /// Sets [`backoff`](Self::backoff).
    pub fn with_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn empty_object_is_the_default() {
        assert_eq!(
            BootstrapConfig::parse("{}").expect("parse"),
            BootstrapConfig::default()
        );
    }

    #[test]
    fn full_config_parses() {
        let text = r#"{
            "contacts": [
                { "endpoints": ["tcp://192.0.2.1:5483"],
                  "peer_id": "0101010101010101010101010101010101010101010101010101010101010101" },
                { "endpoints": ["rudp://[2001:db8::1]:9000"] }
            ],
            "tcp_port": 5483,
            "use_cache": false,
            "max_cache_entries": 10,
            "backoff": { "initial_delay_ms": 100, "max_delay_ms": 1000 }
        }"#;
        let c = BootstrapConfig::parse(text).expect("parse");
        assert_eq!(c.contacts.len(), 2);
        assert_eq!(c.contacts[0].peer_id, Some(PeerId::from_bytes([1; 32])));
        assert_eq!(c.contacts[1].peer_id, None);
        assert_eq!(c.tcp_port, Some(5483));
        assert_eq!(c.rudp_port, None);
        assert!(!c.use_cache);
        assert_eq!(c.max_cache_entries, 10);
        assert_eq!(c.backoff.initial_delay, Duration::from_millis(100));
        assert_eq!(c.backoff.multiplier, 2);
    }

    #[test]
    fn round_trips_through_json() {
        let c = BootstrapConfig::default()
            .with_contact(Contact::new(
                None,
                vec!["tcp://127.0.0.1:1".parse().expect("ep")],
            ))
            .with_tcp_port(Some(1))
            .with_cache_path("/tmp/x.json");
        let text = serde_json::to_string(&c).expect("ser");
        assert_eq!(BootstrapConfig::parse(&text).expect("parse"), c);
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err =
            BootstrapConfig::parse("{\n  \"use_cache\": yes\n}").expect_err("must be rejected");
        match err {
            Error::ConfigSyntax { line, column, .. } => {
                assert_eq!(line, 2);
                assert!(column > 0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn value_errors_name_the_field() {
        let err = BootstrapConfig::parse(r#"{"contacts":[{"endpoints":[]}]}"#)
            .expect_err("must be rejected");
        assert!(err.to_string().contains("contacts[0]"), "{err}");
        assert!(err.to_string().contains("(in memory)"), "{err}");
        let err = BootstrapConfig::parse("{").expect_err("must be rejected");
        assert!(
            err.to_string()
                .starts_with("invalid bootstrap config (in memory): "),
            "{err}"
        );
    }
}
