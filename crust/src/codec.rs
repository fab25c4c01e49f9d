//! Helpers shared by the facade's own control-message codecs (filtering test, hole-punch
//! coordination): big-endian integers, IP addresses, endpoints and peer ids, read with
//! bounds checks so that a short or malformed payload is an error, never a panic.

use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, BytesMut};
use crust_core::{Endpoint, PeerId, Protocol};

/// A control message that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

pub(crate) fn put_ip(out: &mut BytesMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.put_u8(4);
            out.put_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.put_u8(6);
            out.put_slice(&v6.octets());
        }
    }
}

pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    pub(crate) fn take<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let (head, rest) = self.0.split_at_checked(N).ok_or(Malformed)?;
        self.0 = rest;
        head.try_into().map_err(|_| Malformed)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    pub(crate) fn ip(&mut self) -> Result<IpAddr, Malformed> {
        match self.u8()? {
            4 => Ok(IpAddr::from(self.take::<4>()?)),
            6 => Ok(IpAddr::from(self.take::<16>()?)),
            _ => Err(Malformed),
        }
    }

    pub(crate) fn addr(&mut self) -> Result<SocketAddr, Malformed> {
        let ip = self.ip()?;
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    pub(crate) fn endpoint(&mut self) -> Result<Endpoint, Malformed> {
        let protocol = match self.u8()? {
            1 => Protocol::Tcp,
            2 => Protocol::Rudp,
            _ => return Err(Malformed),
        };
        Ok(Endpoint::new(protocol, self.addr()?))
    }

    pub(crate) fn peer(&mut self) -> Result<PeerId, Malformed> {
        Ok(PeerId::from_bytes(self.take::<32>()?))
    }

    /// True when everything was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) fn put_addr(out: &mut BytesMut, addr: SocketAddr) {
    put_ip(out, addr.ip());
    out.put_u16(addr.port());
}

pub(crate) fn put_endpoint(out: &mut BytesMut, endpoint: Endpoint) {
    out.put_u8(match endpoint.protocol() {
        Protocol::Tcp => 1,
        Protocol::Rudp => 2,
        // A protocol this build does not know: decoders refuse 0.
        _ => 0,
    });
    put_addr(out, endpoint.addr());
}

pub(crate) fn put_peer(out: &mut BytesMut, peer: PeerId) {
    out.put_slice(peer.as_bytes());
}
