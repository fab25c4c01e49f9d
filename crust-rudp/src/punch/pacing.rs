//! The pure part of a hole punch: how fast and where probes go. Everything here works on
//! explicit instants, so the limits are tested without sockets or clocks.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crust_core::limits::TokenBucket;

/// How soon a probe the socket could not take (its buffer full, or its readiness not yet
/// known to the runtime) is tried again.
const BLOCKED_RETRY: Duration = Duration::from_millis(2);

/// Keeps a punch's packets within its plan: at most `total` in all, and at most
/// `per_second` in any half-open one-second window.
///
/// A token bucket holding up to 20 ms worth of packets (so that a coarse timer does not
/// throttle the pace), refilled at `per_second - burst + 1` per second: a window of one
/// second then sees at most the burst plus fewer than `per_second - burst + 1` refilled
/// tokens, i.e. at most `per_second` packets.
#[derive(Debug)]
pub(crate) struct Pacer {
    bucket: TokenBucket,
    refill: f64,
    sent: usize,
    total: usize,
}

impl Pacer {
    pub(crate) fn new(per_second: u32, total: usize, now: Instant) -> Self {
        let per_second = per_second.max(1);
        let burst = (per_second / 50).max(1);
        let refill = f64::from(per_second - burst + 1);
        Pacer {
            bucket: TokenBucket::new(refill, f64::from(burst), now),
            refill,
            sent: 0,
            total,
        }
    }

    /// Whether a packet may go at `now` ([`Pacer::try_take`] then succeeds at `now`).
    pub(crate) fn can_take(&self, now: Instant) -> bool {
        self.sent < self.total && self.bucket.available(now) >= 1.0
    }

    /// Takes the right to send one packet at `now`, if the limits allow it.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        if self.sent >= self.total || !self.bucket.try_take(now, 1.0) {
            return false;
        }
        self.sent += 1;
        true
    }

    /// When the next packet may go; `None` once the budget is spent.
    pub(crate) fn ready_at(&self, now: Instant) -> Option<Instant> {
        if self.sent >= self.total {
            return None;
        }
        let missing = 1.0 - self.bucket.available(now);
        if missing <= 0.0 {
            return Some(now);
        }
        Some(now + Duration::from_secs_f64(missing / self.refill))
    }

    /// Packets sent so far.
    pub(crate) fn sent(&self) -> usize {
        self.sent
    }
}

/// The ports a birthday search probes: the predicted ones first, then up to `probes`
/// distinct random ones from an inclusive range (never port 0, never one already probed).
#[derive(Debug)]
pub(crate) struct PortSearch {
    predicted: VecDeque<u16>,
    random_left: usize,
    low: u16,
    span: u32,
    /// Ports handed out (and port 0): at most the predicted ports plus `probes`, and the
    /// punch pulls one per packet it sends, so its budget bounds this too.
    used: HashSet<u16>,
    /// How many of `used` lie in the range.
    used_in_range: u32,
    key: RandomState,
    counter: u64,
}

impl PortSearch {
    pub(crate) fn new(predicted: Vec<u16>, probes: usize, range: (u16, u16)) -> Self {
        let (low, high) = (range.0.min(range.1), range.0.max(range.1));
        let span = u32::from(high) - u32::from(low) + 1;
        let mut search = PortSearch {
            predicted: predicted.into(),
            random_left: probes,
            low,
            span,
            used: HashSet::new(),
            used_in_range: 0,
            key: RandomState::new(),
            counter: 0,
        };
        search.mark_used(0);
        search
    }

    fn in_range(&self, port: u16) -> bool {
        port >= self.low && u32::from(port - self.low) < self.span
    }

    /// Marks `port` as probed; false if it was already.
    fn mark_used(&mut self, port: u16) -> bool {
        if !self.used.insert(port) {
            return false;
        }
        if self.in_range(port) {
            self.used_in_range += 1;
        }
        true
    }

    fn random_port(&mut self) -> Option<u16> {
        if self.used_in_range >= self.span {
            return None;
        }
        self.counter += 1;
        let draw = u32::try_from(self.key.hash_one(self.counter) % u64::from(self.span)).ok()?;
        // On a collision take the next free port of the range (wrapping): one exists, as
        // not every port of the range is used.
        for step in 0..self.span {
            let offset = (draw + step) % self.span;
            let port = u16::try_from(u32::from(self.low) + offset).ok()?;
            if self.mark_used(port) {
                return Some(port);
            }
        }
        None
    }
}

impl Iterator for PortSearch {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        while let Some(port) = self.predicted.pop_front() {
            if self.mark_used(port) {
                return Some(port);
            }
        }
        if self.random_left == 0 {
            return None;
        }
        self.random_left -= 1;
        let port = self.random_port();
        if port.is_none() {
            self.random_left = 0;
        }
        port
    }
}

/// Decides which probe goes where and when: every `interval` a round of probes to the
/// round's targets; between rounds, targets from an optional search (a birthday search's
/// ports); everything within the [`Pacer`]'s limits. A round that is still being sent when
/// the next one is due is not restarted, so under a tight rate every target gets its turn.
pub(crate) struct Prober<T> {
    pacer: Pacer,
    interval: Duration,
    next_round: Instant,
    round: Vec<T>,
    pending: VecDeque<T>,
    search: Option<Box<dyn Iterator<Item = T> + Send>>,
    peeked: Option<T>,
}

impl<T: Copy> Prober<T> {
    /// A prober whose first round is due at once.
    pub(crate) fn new(
        pacer: Pacer,
        interval: Duration,
        round: Vec<T>,
        search: Option<Box<dyn Iterator<Item = T> + Send>>,
        now: Instant,
    ) -> Self {
        Prober {
            pacer,
            interval: interval.max(Duration::from_millis(1)),
            next_round: now,
            round,
            pending: VecDeque::new(),
            search,
            peeked: None,
        }
    }

    /// Probes only `target` from now on, a round every interval starting at once.
    pub(crate) fn adopt(&mut self, target: T, now: Instant) {
        self.round = vec![target];
        self.pending.clear();
        self.search = None;
        self.peeked = None;
        self.next_round = now;
    }

    /// The pacer, to carry the budget over to another prober.
    pub(crate) fn into_pacer(self) -> Pacer {
        self.pacer
    }

    /// Probes sent so far.
    pub(crate) fn sent(&self) -> usize {
        self.pacer.sent()
    }

    /// Hands every probe due at `now` to `send`, and returns when to call again: `None`
    /// once the packet budget is spent. `send` returns false when the socket would block:
    /// that probe is neither counted nor dropped, and is tried again a little later.
    pub(crate) fn poll(
        &mut self,
        now: Instant,
        mut send: impl FnMut(T) -> bool,
    ) -> Option<Instant> {
        if now >= self.next_round {
            if self.pending.is_empty() {
                self.pending.extend(self.round.iter().copied());
            }
            self.next_round += self.interval;
            if self.next_round <= now {
                self.next_round = now + self.interval;
            }
        }
        loop {
            let from_round = !self.pending.is_empty();
            let target = match self.pending.front() {
                Some(target) => *target,
                None => match self.peek_search() {
                    Some(target) => target,
                    None => return self.pacer.ready_at(now).map(|_| self.next_round),
                },
            };
            let ready = self.pacer.ready_at(now)?;
            if ready > now || !self.pacer.can_take(now) {
                // Rounding can leave a hair of a token missing: look again a bit later.
                let ready = ready.max(now + Duration::from_micros(100));
                return Some(ready.min(self.next_round));
            }
            if !send(target) {
                return Some(now + BLOCKED_RETRY);
            }
            self.pacer.try_take(now);
            if from_round {
                self.pending.pop_front();
            } else {
                self.peeked = None;
            }
        }
    }

    fn peek_search(&mut self) -> Option<T> {
        if self.peeked.is_none() {
            self.peeked = self.search.as_mut().and_then(|search| search.next());
            if self.peeked.is_none() {
                self.search = None;
            }
        }
        self.peeked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives `prober` on a virtual clock in 100 µs steps for `span`, returning the
    /// instants packets went out and their targets.
    fn run<T: Copy>(prober: &mut Prober<T>, start: Instant, span: Duration) -> Vec<(Instant, T)> {
        let mut sent = Vec::new();
        let mut now = start;
        let mut wake = Some(start);
        while now < start + span {
            if wake.is_some_and(|at| at <= now) {
                wake = prober.poll(now, |target| {
                    sent.push((now, target));
                    true
                });
                if let Some(at) = wake {
                    assert!(at > now, "a prober never asks to be polled again at once");
                }
            }
            now += Duration::from_micros(100);
        }
        sent
    }

    fn max_in_any_second(times: &[Instant]) -> usize {
        let mut best = 0;
        let mut first = 0;
        for (last, t) in times.iter().enumerate() {
            while *t >= times[first] + Duration::from_secs(1) {
                first += 1;
            }
            best = best.max(last - first + 1);
        }
        best
    }

    #[test]
    fn the_rate_holds_in_every_second_and_the_budget_overall() {
        for (rate, total) in [
            (1u32, 100usize),
            (7, 100),
            (50, 1000),
            (1000, 100_000),
            (3000, 2500),
        ] {
            let start = Instant::now();
            let search =
                Box::new((0..u32::MAX).map(|_| 0u8)) as Box<dyn Iterator<Item = u8> + Send>;
            let mut prober = Prober::new(
                Pacer::new(rate, total, start),
                ms(50),
                vec![1, 2],
                Some(search),
                start,
            );
            let sent = run(&mut prober, start, Duration::from_secs(4));
            let times: Vec<Instant> = sent.iter().map(|(t, _)| *t).collect();
            let peak = max_in_any_second(&times);
            assert!(
                peak <= rate as usize,
                "rate {rate}: {peak} packets in one second"
            );
            assert!(
                sent.len() <= total,
                "rate {rate}: {} packets, budget {total}",
                sent.len()
            );
            assert_eq!(sent.len(), prober.sent());
            // The pace is not wasted either: about the rate (minus the burst), or the budget.
            let expected = (rate as usize * 4 * 9 / 10).min(total);
            assert!(
                sent.len() >= expected,
                "rate {rate}: only {} packets",
                sent.len()
            );
        }
    }

    #[test]
    fn the_budget_ends_the_probing() {
        let start = Instant::now();
        let mut prober = Prober::new(
            Pacer::new(1000, 5, start),
            ms(10),
            vec!['a', 'b'],
            None,
            start,
        );
        let sent = run(&mut prober, start, ms(200));
        assert_eq!(sent.len(), 5);
        assert_eq!(
            prober.poll(start + ms(300), |_| panic!("over budget")),
            None
        );
    }

    #[test]
    fn a_blocked_send_is_retried_soon_and_not_counted() {
        let start = Instant::now();
        let mut prober = Prober::new(
            Pacer::new(1000, 2, start),
            ms(50),
            vec!['a', 'b'],
            None,
            start,
        );
        let mut tried = Vec::new();
        let again = prober.poll(start, |target| {
            tried.push(target);
            false
        });
        assert_eq!(tried, ['a'], "no spinning on a blocked socket");
        assert_eq!(again, Some(start + BLOCKED_RETRY));
        assert_eq!(prober.sent(), 0);
        let later = start + BLOCKED_RETRY;
        prober.poll(later, |target| {
            tried.push(target);
            true
        });
        assert_eq!(tried, ['a', 'a', 'b'], "the blocked probe goes first");
        assert_eq!(prober.sent(), 2);
    }

    #[test]
    fn rounds_come_every_interval_and_adoption_narrows_them() {
        let start = Instant::now();
        let mut prober = Prober::new(
            Pacer::new(1000, 1000, start),
            ms(50),
            vec![1, 2, 3],
            None,
            start,
        );
        let sent = run(&mut prober, start, ms(120));
        let targets: Vec<i32> = sent.iter().map(|(_, t)| *t).collect();
        assert_eq!(
            targets,
            [1, 2, 3, 1, 2, 3, 1, 2, 3],
            "rounds at 0, 50 and 100 ms"
        );
        let later = start + ms(120);
        prober.adopt(9, later);
        let sent = run(&mut prober, later, ms(101));
        let targets: Vec<i32> = sent.iter().map(|(_, t)| *t).collect();
        assert_eq!(
            targets,
            [9, 9, 9],
            "only the adopted target, at once and every round"
        );
    }

    #[test]
    fn round_targets_come_before_the_search_and_every_one_gets_its_turn() {
        let start = Instant::now();
        let search = Box::new(100..) as Box<dyn Iterator<Item = i32> + Send>;
        // Ten packets a second, a round of three every 10 ms: the round is never finished
        // before the next is due, but is not restarted either.
        let mut prober = Prober::new(
            Pacer::new(10, 1000, start),
            ms(10),
            vec![1, 2, 3],
            Some(search),
            start,
        );
        let sent = run(&mut prober, start, Duration::from_secs(2));
        let targets: Vec<i32> = sent.iter().map(|(_, t)| *t).collect();
        assert!(targets.len() >= 9, "{targets:?}");
        assert_eq!(targets[..9], [1, 2, 3, 1, 2, 3, 1, 2, 3]);
        assert!(
            !targets.contains(&100),
            "the search waits for spare packets"
        );

        let mut prober = Prober::new(
            Pacer::new(1000, 1000, start),
            ms(50),
            vec![1],
            Some(Box::new(100..103)),
            start,
        );
        let sent = run(&mut prober, start, ms(60));
        let targets: Vec<i32> = sent.iter().map(|(_, t)| *t).collect();
        assert_eq!(targets, [1, 100, 101, 102, 1]);
    }

    #[test]
    fn port_search_tries_predicted_ports_then_distinct_random_ones_in_range() {
        let ports: Vec<u16> =
            PortSearch::new(vec![5000, 0, 5001, 5000], 50, (40_000, 40_099)).collect();
        assert_eq!(
            ports[..2],
            [5000, 5001],
            "predicted first, port 0 and repeats skipped"
        );
        let random = &ports[2..];
        assert_eq!(random.len(), 50);
        assert!(random.iter().all(|p| (40_000..=40_099).contains(p)));
        let distinct: HashSet<u16> = random.iter().copied().collect();
        assert_eq!(distinct.len(), 50, "no port twice");
    }

    #[test]
    fn port_search_stops_when_the_range_is_exhausted() {
        // Reversed bounds are accepted; port 0 and predicted ports are never drawn again.
        let ports: Vec<u16> = PortSearch::new(vec![3], 100, (5, 0)).collect();
        assert_eq!(ports[0], 3);
        let mut random = ports[1..].to_vec();
        random.sort_unstable();
        assert_eq!(random, [1, 2, 4, 5]);
        let all: Vec<u16> = PortSearch::new(vec![], 70_000, (0, u16::MAX)).collect();
        assert_eq!(all.len(), 65_535, "every port but 0, once");
    }
}
