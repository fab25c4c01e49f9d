//! [`PeerAddr`]: a peer and the ways to reach it.

use std::fmt;
use std::str::FromStr;

use crate::{Endpoint, Error, PeerId};

/// Names a peer and the ways to reach it: its [`PeerId`], the endpoints at which it may be
/// dialled directly (best first), and peers that may relay to it (room for relay hints;
/// not used for dialling yet).
///
/// Its text form is `<peer-id>` or `<peer-id>@<endpoint>,<endpoint>…`:
///
/// ```
/// use crust_core::PeerAddr;
/// let text = format!("{}@tcp://192.0.2.7:4321,rudp://192.0.2.7:4322", "ab".repeat(32));
/// let addr: PeerAddr = text.parse()?;
/// assert_eq!(addr.endpoints.len(), 2);
/// assert_eq!(addr.to_string(), text);
/// # Ok::<(), crust_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct PeerAddr {
    /// Who.
    pub peer_id: PeerId,
    /// Where it may be dialled directly, best first.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Peers through which it may be reached when no direct path works.
    #[serde(default)]
    pub relays: Vec<PeerId>,
}

impl PeerAddr {
    /// A peer with no known address yet.
    pub fn new(peer_id: PeerId) -> Self {
        PeerAddr {
            peer_id,
            endpoints: Vec::new(),
            relays: Vec::new(),
        }
    }

    /// Sets the direct endpoints.
    pub fn with_endpoints(mut self, endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        self.endpoints = endpoints.into_iter().collect();
        self
    }
}

impl From<PeerId> for PeerAddr {
    fn from(peer_id: PeerId) -> Self {
        PeerAddr::new(peer_id)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.peer_id)?;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            f.write_str(if i == 0 { "@" } else { "," })?;
            write!(f, "{endpoint}")?;
        }
        Ok(())
    }
}

impl FromStr for PeerAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (id, rest) = match s.split_once('@') {
            Some((id, rest)) => (id, Some(rest)),
            None => (s, None),
        };
        let mut addr = PeerAddr::new(id.trim().parse()?);
        if let Some(rest) = rest {
            for endpoint in rest.split(',') {
                addr.endpoints.push(endpoint.trim().parse()?);
            }
        }
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let id = PeerId::from_bytes([7; 32]);
        let bare = PeerAddr::new(id);
        assert_eq!(bare.to_string().parse::<PeerAddr>().ok(), Some(bare));
        let full = PeerAddr::new(id).with_endpoints([
            "tcp://10.0.0.1:1".parse().expect("endpoint"),
            "rudp://[::1]:2".parse().expect("endpoint"),
        ]);
        assert_eq!(full.to_string().parse::<PeerAddr>().ok(), Some(full));
    }

    #[test]
    fn bad_text_is_a_parse_error() {
        for bad in [
            "",
            "xyz",
            "@tcp://1.2.3.4:5",
            &format!("{}@", "ab".repeat(32)),
        ] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad:?}");
        }
    }
}
