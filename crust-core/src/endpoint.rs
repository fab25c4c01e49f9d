//! Endpoints: a transport protocol plus a socket address, e.g. `tcp://203.0.113.7:4321`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::{Error, Result};

/// The transport protocols Crust speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP carrying TLS 1.3 (`crust-tcp`). Text form `tcp`.
    Tcp,
    /// Reliable UDP: QUIC (`crust-rudp`). Text form `rudp`.
    Rudp,
}

impl Protocol {
    /// The URL-scheme style name: `tcp` or `rudp`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Rudp => "rudp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "rudp" | "udp" | "quic" => Ok(Protocol::Rudp),
            other => Err(Error::Parse(format!(
                "unknown protocol {other:?} (expected tcp or rudp)"
            ))),
        }
    }
}

/// Where a peer can be reached: a protocol and a socket address.
///
/// ```
/// use crust_core::{Endpoint, Protocol};
/// let ep: Endpoint = "tcp://203.0.113.7:4321".parse()?;
/// assert_eq!(ep.protocol(), Protocol::Tcp);
/// assert_eq!(ep.to_string(), "tcp://203.0.113.7:4321");
/// let v6: Endpoint = "rudp://[2001:db8::1]:9000".parse()?;
/// assert_eq!(v6.addr().port(), 9000);
/// # Ok::<(), crust_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    protocol: Protocol,
    addr: SocketAddr,
}

impl Endpoint {
    /// An endpoint of the given protocol at `addr`.
    pub const fn new(protocol: Protocol, addr: SocketAddr) -> Self {
        Endpoint { protocol, addr }
    }

    /// A TCP endpoint.
    pub const fn tcp(addr: SocketAddr) -> Self {
        Self::new(Protocol::Tcp, addr)
    }

    /// A reliable-UDP (QUIC) endpoint.
    pub const fn rudp(addr: SocketAddr) -> Self {
        Self::new(Protocol::Rudp, addr)
    }

    /// The protocol.
    pub const fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The socket address.
    pub const fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.protocol, self.addr)
    }
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            Error::Parse(format!("endpoint {s:?} lacks a scheme (tcp:// or rudp://)"))
        })?;
        let protocol = scheme.parse()?;
        let addr = rest
            .parse::<SocketAddr>()
            .map_err(|e| Error::Parse(format!("endpoint {s:?}: bad socket address: {e}")))?;
        Ok(Endpoint { protocol, addr })
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        for text in [
            "tcp://127.0.0.1:1",
            "rudp://[::1]:65535",
            "tcp://[fe80::1]:80",
        ] {
            let ep: Endpoint = text.parse().expect("parse");
            assert_eq!(ep.to_string(), text);
        }
        let ep: Endpoint = "QUIC://10.0.0.1:5".parse().expect("alias");
        assert_eq!(ep.protocol(), Protocol::Rudp);
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "tcp:/1.2.3.4:5",
            "sctp://1.2.3.4:5",
            "tcp://1.2.3.4",
            "tcp://host:5",
        ] {
            assert!(
                matches!(text.parse::<Endpoint>(), Err(Error::Parse(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn serde_uses_text_form() {
        let ep: Endpoint = "tcp://192.0.2.1:7".parse().expect("parse");
        let json = serde_json::to_string(&ep).expect("ser");
        assert_eq!(json, "\"tcp://192.0.2.1:7\"");
        assert_eq!(serde_json::from_str::<Endpoint>(&json).expect("de"), ep);
    }

    proptest! {
        #[test]
        fn any_endpoint_round_trips(addr in any::<SocketAddr>(), tcp in any::<bool>()) {
            let ep = if tcp { Endpoint::tcp(addr) } else { Endpoint::rudp(addr) };
            let parsed: Endpoint = ep.to_string().parse().expect("round trip");
            // Scope ids and flow info of IPv6 addresses are not part of the text form.
            prop_assert_eq!(parsed.protocol(), ep.protocol());
            prop_assert_eq!(parsed.addr().ip(), ep.addr().ip());
            prop_assert_eq!(parsed.addr().port(), ep.addr().port());
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,64}") {
            let _ = text.parse::<Endpoint>();
        }
    }
}
