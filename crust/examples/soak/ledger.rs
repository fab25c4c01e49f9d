//! What every node sent, received and was told, per (sender, receiver) pair, and the
//! verdict at the end. Pure bookkeeping: the churn driver feeds it, nothing here does I/O.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Bytes before the filler of every soak message: sender index, receiver index (u32 each)
/// and the sequence number on the pair (u64), big endian.
pub(crate) const HEADER_LEN: usize = 16;

/// The payload of message `seq` from node `from` to node `to`, `len` bytes in all (at
/// least [`HEADER_LEN`]).
pub(crate) fn encode(from: usize, to: usize, seq: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len.max(HEADER_LEN));
    out.extend_from_slice(&(from as u32).to_be_bytes());
    out.extend_from_slice(&(to as u32).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    // A filler that depends on the sequence number, so a corrupted message is noticed.
    let fill = (seq as u8).wrapping_mul(31).wrapping_add(7);
    out.resize(len.max(HEADER_LEN), fill);
    out
}

/// Parses a soak payload: `(from, to, seq)`, or `None` when it is not one (too short, or
/// its filler is wrong).
pub(crate) fn decode(payload: &[u8]) -> Option<(usize, usize, u64)> {
    let header = payload.get(..HEADER_LEN)?;
    let from = u32::from_be_bytes(header[0..4].try_into().ok()?) as usize;
    let to = u32::from_be_bytes(header[4..8].try_into().ok()?) as usize;
    let seq = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let fill = (seq as u8).wrapping_mul(31).wrapping_add(7);
    payload[HEADER_LEN..]
        .iter()
        .all(|b| *b == fill)
        .then_some((from, to, seq))
}

/// One (sender, receiver) pair. A pair has at most one connection in the soak (only the
/// newer node dials, once), so sequence numbers are per connection lifetime.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pair {
    /// Messages `send` accepted (`Ok`), numbered 0, 1, ...
    pub(crate) accepted: u64,
    /// The length of the prefix received in order: the next expected sequence number.
    pub(crate) received: u64,
    /// Messages received twice.
    pub(crate) duplicates: u64,
    /// Messages received after a later one (a gap opened before them).
    pub(crate) out_of_order: u64,
    /// Messages skipped by a gap (received later ones, never these).
    pub(crate) skipped: u64,
    /// The sum of `MessagesUnconfirmed` counts the sender got for this receiver.
    pub(crate) reported: u64,
    /// How many reports.
    pub(crate) reports: u64,
    /// The sender died abruptly: nobody was left to tell.
    pub(crate) sender_crashed: bool,
}

impl Pair {
    /// Messages accepted and never received.
    pub(crate) fn lost(&self) -> u64 {
        self.accepted.saturating_sub(self.received)
    }

    /// Lost messages no report covers (zero when the sender crashed: it had no
    /// application left to tell).
    pub(crate) fn unreported(&self) -> u64 {
        if self.sender_crashed {
            0
        } else {
            self.lost().saturating_sub(self.reported)
        }
    }

    /// Reported messages that did arrive (a report says "may not have arrived").
    pub(crate) fn over_reported(&self) -> u64 {
        self.reported.saturating_sub(self.lost())
    }
}

/// Every pair, and the totals.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pairs: BTreeMap<(usize, usize), Pair>,
    /// Messages whose payload or sender did not check out.
    pub(crate) corrupt: u64,
    /// Received messages by size class, for the report.
    pub(crate) large_received: u64,
}

impl Ledger {
    /// The pair `from` → `to`.
    pub(crate) fn pair(&mut self, from: usize, to: usize) -> &mut Pair {
        self.pairs.entry((from, to)).or_default()
    }

    /// `send` accepted `n` more messages from `from` to `to`.
    pub(crate) fn accepted(&mut self, from: usize, to: usize, n: u64) {
        self.pair(from, to).accepted += n;
    }

    /// Node `to` received message `seq` from `from`.
    pub(crate) fn received(&mut self, from: usize, to: usize, seq: u64, large: bool) {
        if large {
            self.large_received += 1;
        }
        let pair = self.pair(from, to);
        if seq == pair.received {
            pair.received += 1;
        } else if seq > pair.received {
            pair.skipped += seq - pair.received;
            pair.received = seq + 1;
        } else if pair.skipped > 0 {
            // It was skipped by a gap: late, not lost.
            pair.out_of_order += 1;
        } else {
            pair.duplicates += 1;
        }
    }

    /// The sender `from` was told `count` messages to `to` were not confirmed.
    pub(crate) fn reported(&mut self, from: usize, to: usize, count: u64) {
        let pair = self.pair(from, to);
        pair.reported += count;
        pair.reports += 1;
    }

    /// Node `from` died abruptly.
    pub(crate) fn sender_crashed(&mut self, from: usize) {
        for ((f, _), pair) in self.pairs.iter_mut() {
            if *f == from {
                pair.sender_crashed = true;
            }
        }
    }

    /// The totals and the verdict on delivery.
    pub(crate) fn summary(&self) -> Summary {
        let mut s = Summary {
            pairs: self.pairs.len() as u64,
            corrupt: self.corrupt,
            large_received: self.large_received,
            ..Summary::default()
        };
        for pair in self.pairs.values() {
            s.accepted += pair.accepted;
            s.received += pair.received - pair.skipped;
            s.duplicates += pair.duplicates;
            s.out_of_order += pair.out_of_order + pair.skipped;
            s.reported += pair.reported;
            s.reports += pair.reports;
            s.lost += pair.lost();
            s.unreported += pair.unreported();
            s.over_reported += pair.over_reported();
            if pair.sender_crashed {
                s.lost_with_crashed_sender += pair.lost();
            }
            if pair.received > pair.accepted {
                s.received_beyond_accepted += pair.received - pair.accepted;
            }
        }
        s
    }
}

/// Totals over every pair.
#[derive(Clone, Debug, Default)]
pub(crate) struct Summary {
    pub(crate) pairs: u64,
    pub(crate) accepted: u64,
    pub(crate) received: u64,
    pub(crate) large_received: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) corrupt: u64,
    /// Accepted but never received.
    pub(crate) lost: u64,
    /// Of those, the ones whose sender died abruptly (nobody to tell).
    pub(crate) lost_with_crashed_sender: u64,
    /// Lost and not covered by a report: must be zero.
    pub(crate) unreported: u64,
    pub(crate) reported: u64,
    pub(crate) reports: u64,
    /// Reported as unconfirmed but received all the same.
    pub(crate) over_reported: u64,
    /// Received more than `send` accepted: must be zero.
    pub(crate) received_beyond_accepted: u64,
}

impl Summary {
    /// What is wrong, in words; empty when delivery held.
    pub(crate) fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, n) in [
            ("unreported losses", self.unreported),
            ("duplicates", self.duplicates),
            ("out-of-order or skipped messages", self.out_of_order),
            ("corrupt messages", self.corrupt),
            (
                "messages received beyond what send accepted",
                self.received_beyond_accepted,
            ),
        ] {
            if n > 0 {
                out.push(format!("{n} {what}"));
            }
        }
        out
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "pairs": self.pairs,
            "accepted": self.accepted,
            "received": self.received,
            "large_received": self.large_received,
            "lost": self.lost,
            "lost_with_crashed_sender": self.lost_with_crashed_sender,
            "reported": self.reported,
            "reports": self.reports,
            "over_reported": self.over_reported,
            "unreported": self.unreported,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "corrupt": self.corrupt,
            "received_beyond_accepted": self.received_beyond_accepted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_corruption_is_seen() {
        let p = encode(3, 9, 1234, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(decode(&p), Some((3, 9, 1234)));
        let mut bad = p.clone();
        bad[50] ^= 1;
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(&p[..10]), None);
    }

    #[test]
    fn a_reported_tail_is_no_failure_an_unreported_one_is() {
        let mut l = Ledger::default();
        l.accepted(0, 1, 10);
        for seq in 0..7 {
            l.received(0, 1, seq, false);
        }
        l.reported(0, 1, 2);
        assert_eq!(l.summary().unreported, 1);
        l.reported(0, 1, 2);
        let s = l.summary();
        assert_eq!((s.unreported, s.over_reported, s.lost), (0, 1, 3));
        assert!(s.failures().is_empty());
        l.received(0, 1, 3, false);
        assert_eq!(l.summary().duplicates, 1);
        assert!(!l.summary().failures().is_empty());
    }
}
