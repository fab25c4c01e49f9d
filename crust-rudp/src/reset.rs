//! QUIC stateless resets that survive a restart: the keys come from the node's identity.
//!
//! A QUIC endpoint that receives a packet for a connection it does not know answers with a
//! *stateless reset* (RFC 9000, 10.3): a packet ending in a token computed from the
//! connection ID with the endpoint's secret key. The peer compares it with the token the
//! endpoint announced for that connection ID, and on a match drops the connection at once
//! instead of waiting for the idle timeout (30 s by default).
//!
//! quinn draws that key at random per endpoint, so a node that crashed and came back on the
//! same port could never produce the token its previous run announced: the peer kept
//! "sending" into a dead connection, silently. Here the key is derived from the node's
//! private key (HMAC-SHA256 with a fixed label), so every run of the same identity makes
//! the same tokens. The label keeps this key independent of every other use of the private
//! key; the token reveals nothing about it (HMAC).
//!
//! Connection IDs are random ([`RandomCids`]); quinn's default generator signs them with a
//! key drawn at random per endpoint and silently drops packets whose connection ID another
//! run issued, so a restarted node would not even answer them.

use std::sync::Arc;

use crust_core::Identity;
use quinn::{ConnectionId, ConnectionIdGenerator};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Label of the stateless-reset key derivation.
const RESET_KEY_LABEL: &[u8] = b"crust/quic stateless-reset key v1";
/// Length of the connection IDs we issue.
const CID_LEN: usize = 8;

/// The endpoint configuration of every QUIC endpoint of `identity`: stateless-reset key
/// derived from the identity, random connection IDs.
pub(crate) fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let private_key = identity.private_key();
    let master = hmac::Key::new(hmac::HMAC_SHA256, private_key.secret_der());
    let reset_key = hmac::sign(&master, RESET_KEY_LABEL);
    let mut config = quinn::EndpointConfig::new(Arc::new(hmac::Key::new(
        hmac::HMAC_SHA256,
        reset_key.as_ref(),
    )));
    config.cid_generator(|| Box::new(RandomCids::default()));
    config
}

/// Random connection IDs that any run of the endpoint accepts as its own (so packets for a
/// connection of an earlier run are answered with a stateless reset, not dropped).
#[derive(Debug)]
pub(crate) struct RandomCids {
    rng: SystemRandom,
}

impl Default for RandomCids {
    fn default() -> Self {
        RandomCids {
            rng: SystemRandom::new(),
        }
    }
}

impl ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        if self.rng.fill(&mut bytes).is_err() {
            // The system RNG failed (it does not on supported platforms): fall back to the
            // standard library's randomly keyed hasher rather than panicking.
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_usize(std::process::id() as usize);
            bytes = hasher.finish().to_le_bytes();
        }
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_random_and_of_the_announced_length() {
        let mut cids = RandomCids::default();
        let (a, b) = (cids.generate_cid(), cids.generate_cid());
        assert_eq!(a.len(), CID_LEN);
        assert_ne!(a, b);
    }
}
