//! Payload codecs of control frames.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{Error, Result};

/// Encodes the payload of an [`FrameKind::ObservedAddress`](super::FrameKind::ObservedAddress) frame: the address at which the
/// sender sees the receiver. `4 | ipv4 (4 bytes) | port (2)` or `6 | ipv6 (16) | port (2)`,
/// big endian.
pub fn encode_observed_address(addr: std::net::SocketAddr) -> Bytes {
    let mut out = BytesMut::with_capacity(19);
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(addr.port());
    out.freeze()
}

/// Decodes an [`FrameKind::ObservedAddress`](super::FrameKind::ObservedAddress) payload; anything else than exactly one
/// well-formed address is [`Error::MalformedFrame`].
pub fn decode_observed_address(payload: &[u8]) -> Result<std::net::SocketAddr> {
    let bad = || Error::MalformedFrame("bad observed-address payload");
    let (&family, rest) = payload.split_first().ok_or_else(bad)?;
    let ip_len = match family {
        4 => 4,
        6 => 16,
        _ => return Err(bad()),
    };
    if rest.len() != ip_len + 2 {
        return Err(bad());
    }
    let (ip, port) = rest.split_at(ip_len);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let ip = if family == 4 {
        let octets: [u8; 4] = ip.try_into().map_err(|_| bad())?;
        std::net::IpAddr::from(octets)
    } else {
        let octets: [u8; 16] = ip.try_into().map_err(|_| bad())?;
        std::net::IpAddr::from(octets)
    };
    Ok(std::net::SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_addresses_round_trip_and_garbage_is_refused() {
        for text in ["203.0.113.7:4321", "[2001:db8::1]:65535", "0.0.0.0:0"] {
            let addr: std::net::SocketAddr = text.parse().expect("addr");
            let payload = encode_observed_address(addr);
            assert_eq!(decode_observed_address(&payload).expect("decode"), addr);
        }
        for bad in [
            &b""[..],
            b"\x04\x01\x02\x03",
            b"\x05\x01\x02\x03\x04\x00\x01",
            b"\x04\x01\x02\x03\x04\x00\x01\xff",
        ] {
            assert!(matches!(
                decode_observed_address(bad),
                Err(Error::MalformedFrame(_))
            ));
        }
    }
}
