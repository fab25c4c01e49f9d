//! Learning how our NAT filters inbound packets, with the help of peers (like libp2p's
//! AutoNAT, on probe datagrams instead of connections).
//!
//! We (A) ask a peer P connected to us over reliable UDP for a filtering test. P sends
//! probe datagrams to the address it sees for that connection (our NAT's mapping of our
//! QUIC socket) **from another port** of its own, and forwards the request to one of its
//! peers Q whose address we never sent to, which probes from **another host**. What gets
//! through tells the filtering behaviour (RFC 4787):
//!
//! | probe from Q (other host) | probe from P's other port | filtering |
//! |---|---|---|
//! | arrives | – | endpoint-independent (full cone) |
//! | lost | arrives | address-dependent (restricted cone) |
//! | lost | lost | address-and-port-dependent (port-restricted cone, symmetric) |
//!
//! P reports which probes it sent, so a test a peer could not run is never read as
//! "filtered". Probes only ever go to the address P itself observes for our connection
//! (never to an address we name), and every node answers few requests, so nobody can turn
//! this into a reflector.
//!
//! The codec and the per-test state here are pure; `probe_driver.rs` runs them.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// How long a test waits for probes after P's report.
pub(crate) const REPORT_GRACE: Duration = Duration::from_secs(2);
/// How long a test may take in all.
pub(crate) const TEST_DEADLINE: Duration = Duration::from_secs(6);
/// Excluded addresses a request may carry.
pub(crate) const MAX_EXCLUDED: usize = 32;
/// Probe datagrams sent per test (probes are UDP: one may be lost).
pub(crate) const PROBES_PER_TEST: usize = 3;

/// How a NAT (or firewall) filters inbound packets to a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FilteringBehaviour {
    /// Not tested yet, or the test was inconclusive.
    Unknown,
    /// Anyone may send to the mapping (full cone, or no NAT and no firewall).
    EndpointIndependent,
    /// Only hosts we sent to (any port): restricted cone.
    AddressDependent,
    /// Only the exact host and port we sent to: port-restricted cone.
    AddressAndPortDependent,
}

impl FilteringBehaviour {
    /// A stable name for scripts.
    pub const fn as_str(&self) -> &'static str {
        match self {
            FilteringBehaviour::Unknown => "unknown",
            FilteringBehaviour::EndpointIndependent => "endpoint_independent",
            FilteringBehaviour::AddressDependent => "address_dependent",
            FilteringBehaviour::AddressAndPortDependent => "address_and_port_dependent",
        }
    }
}

/// A message of the filtering test, carried in the facade's reachability-probe frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProbeMessage {
    /// A → P: probe me from another port, and have a peer not in `exclude` probe me.
    /// P uses `nonce` for its probes and `nonce + 1` for the forwarded ones.
    Request { nonce: u64, exclude: Vec<IpAddr> },
    /// P → Q: probe `target` (the address P sees for A) with `nonce`.
    Forward { nonce: u64, target: SocketAddr },
    /// P → A: which probes went out.
    Report {
        nonce: u64,
        other_port: bool,
        other_host: bool,
    },
}

const REQUEST: u8 = 1;
const FORWARD: u8 = 2;
const REPORT: u8 = 3;

pub(crate) use crate::codec::Malformed;
use crate::codec::{Reader, put_ip};

impl ProbeMessage {
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        match self {
            ProbeMessage::Request { nonce, exclude } => {
                out.put_u8(REQUEST);
                out.put_u64(*nonce);
                let exclude = &exclude[..exclude.len().min(MAX_EXCLUDED)];
                out.put_u8(exclude.len() as u8);
                for ip in exclude {
                    put_ip(&mut out, *ip);
                }
            }
            ProbeMessage::Forward { nonce, target } => {
                out.put_u8(FORWARD);
                out.put_u64(*nonce);
                put_ip(&mut out, target.ip());
                out.put_u16(target.port());
            }
            ProbeMessage::Report {
                nonce,
                other_port,
                other_host,
            } => {
                out.put_u8(REPORT);
                out.put_u64(*nonce);
                out.put_u8(u8::from(*other_port) | (u8::from(*other_host) << 1));
            }
        }
        out.freeze()
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Self, Malformed> {
        let mut reader = Reader(payload);
        let kind = reader.u8()?;
        let nonce = reader.u64()?;
        let message = match kind {
            REQUEST => {
                let n = usize::from(reader.u8()?);
                if n > MAX_EXCLUDED {
                    return Err(Malformed);
                }
                let mut exclude = Vec::with_capacity(n);
                for _ in 0..n {
                    exclude.push(reader.ip()?);
                }
                ProbeMessage::Request { nonce, exclude }
            }
            FORWARD => {
                let ip = reader.ip()?;
                let port = reader.u16()?;
                ProbeMessage::Forward {
                    nonce,
                    target: SocketAddr::new(ip, port),
                }
            }
            REPORT => {
                let flags = reader.u8()?;
                ProbeMessage::Report {
                    nonce,
                    other_port: flags & 1 != 0,
                    other_host: flags & 2 != 0,
                }
            }
            _ => return Err(Malformed),
        };
        if !reader.0.is_empty() {
            return Err(Malformed);
        }
        Ok(message)
    }
}

/// One filtering test we asked for.
#[derive(Clone, Debug)]
pub(crate) struct FilterTest {
    /// P's probes carry this nonce, Q's `nonce + 1`.
    pub(crate) nonce: u64,
    started: Instant,
    reported_at: Option<Instant>,
    sent_other_port: bool,
    sent_other_host: bool,
    got_other_port: bool,
    got_other_host: bool,
}

impl FilterTest {
    pub(crate) fn new(nonce: u64, now: Instant) -> Self {
        FilterTest {
            nonce,
            started: now,
            reported_at: None,
            sent_other_port: false,
            sent_other_host: false,
            got_other_port: false,
            got_other_host: false,
        }
    }

    /// A probe with `nonce` arrived.
    pub(crate) fn on_probe(&mut self, nonce: u64) {
        if nonce == self.nonce {
            self.got_other_port = true;
        } else if nonce == self.nonce.wrapping_add(1) {
            self.got_other_host = true;
        }
    }

    /// P reported which probes it sent.
    pub(crate) fn on_report(
        &mut self,
        nonce: u64,
        other_port: bool,
        other_host: bool,
        now: Instant,
    ) {
        if nonce == self.nonce && self.reported_at.is_none() {
            self.reported_at = Some(now);
            self.sent_other_port = other_port;
            self.sent_other_host = other_host;
        }
    }

    /// When to look again.
    pub(crate) fn deadline(&self) -> Instant {
        let overall = self.started + TEST_DEADLINE;
        match self.reported_at {
            Some(at) => (at + REPORT_GRACE).min(overall),
            None => overall,
        }
    }

    /// The verdict, once there is one: at once when a probe from another host got through,
    /// otherwise at the deadline.
    pub(crate) fn verdict(&self, now: Instant) -> Option<FilteringBehaviour> {
        if self.got_other_host {
            return Some(FilteringBehaviour::EndpointIndependent);
        }
        if now < self.deadline() {
            return None;
        }
        Some(if self.got_other_port && self.sent_other_host {
            FilteringBehaviour::AddressDependent
        } else if !self.got_other_port && self.sent_other_port {
            FilteringBehaviour::AddressAndPortDependent
        } else {
            // P could not run the tests that would tell.
            FilteringBehaviour::Unknown
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_and_refuses_garbage() {
        let messages = [
            ProbeMessage::Request {
                nonce: 7,
                exclude: vec!["192.0.2.1".parse().expect("ip"), "::1".parse().expect("ip")],
            },
            ProbeMessage::Forward {
                nonce: 8,
                target: "198.51.100.7:4000".parse().expect("addr"),
            },
            ProbeMessage::Report {
                nonce: 9,
                other_port: true,
                other_host: false,
            },
        ];
        for message in messages {
            assert_eq!(ProbeMessage::decode(&message.encode()), Ok(message));
        }
        for bad in [
            &b""[..],
            &[9, 0, 0, 0, 0, 0, 0, 0, 1],
            &[1, 0, 0, 0, 0, 0, 0, 0, 1, 200],
        ] {
            assert_eq!(ProbeMessage::decode(bad), Err(Malformed), "{bad:?}");
        }
        let mut trailing = ProbeMessage::Report {
            nonce: 1,
            other_port: false,
            other_host: false,
        }
        .encode()
        .to_vec();
        trailing.push(0);
        assert_eq!(ProbeMessage::decode(&trailing), Err(Malformed));
    }

    proptest::proptest! {
        /// Whatever a peer sends, decoding never panics, and what decodes re-encodes to
        /// the same bytes.
        #[test]
        fn decoding_arbitrary_bytes_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(message) = ProbeMessage::decode(&bytes) {
                proptest::prop_assert_eq!(message.encode().to_vec(), bytes);
            }
        }
    }

    #[test]
    fn verdicts() {
        let t0 = Instant::now();
        let late = t0 + TEST_DEADLINE;
        // Full cone: Q's probe arrives; decided at once.
        let mut test = FilterTest::new(10, t0);
        test.on_probe(11);
        assert_eq!(
            test.verdict(t0),
            Some(FilteringBehaviour::EndpointIndependent)
        );
        // Restricted cone: only P's other-port probe, and Q did probe.
        let mut test = FilterTest::new(10, t0);
        test.on_report(10, true, true, t0);
        test.on_probe(10);
        assert_eq!(test.verdict(t0), None, "wait for Q's probe");
        assert_eq!(
            test.verdict(t0 + REPORT_GRACE),
            Some(FilteringBehaviour::AddressDependent)
        );
        // Port-restricted: nothing arrives although P probed.
        let mut test = FilterTest::new(10, t0);
        test.on_report(10, true, true, t0);
        assert_eq!(
            test.verdict(late),
            Some(FilteringBehaviour::AddressAndPortDependent)
        );
        // P could not probe (no report): inconclusive, never "filtered".
        let test = FilterTest::new(10, t0);
        assert_eq!(test.verdict(late), Some(FilteringBehaviour::Unknown));
        // Only P's probe and no Q available: cannot tell full cone from restricted.
        let mut test = FilterTest::new(10, t0);
        test.on_report(10, true, false, t0);
        test.on_probe(10);
        assert_eq!(test.verdict(late), Some(FilteringBehaviour::Unknown));
        // Stray nonces change nothing.
        let mut test = FilterTest::new(10, t0);
        test.on_probe(99);
        test.on_report(98, true, true, t0);
        assert_eq!(test.verdict(late), Some(FilteringBehaviour::Unknown));
    }
}
