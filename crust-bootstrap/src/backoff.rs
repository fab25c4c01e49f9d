//! The retry schedule of the bootstrap: exponential backoff with bounded jitter.
//!
//! [`Backoff`] is a plain struct with no clock: it only says how long to wait after a given
//! round, so it is tested with explicit values. [`BootstrapDiscovery`](crate::BootstrapDiscovery)
//! does the waiting with `tokio::time`.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// How quickly the bootstrap retries, as it appears in the `"backoff"` object of the config file.
///
/// Durations are written in milliseconds in JSON (`"initial_delay_ms"`, `"max_delay_ms"`).
///
/// ```
/// use std::time::Duration;
/// use crust_bootstrap::BackoffConfig;
/// let cfg = BackoffConfig::default()
///     .with_initial_delay(Duration::from_millis(100))
///     .with_max_delay(Duration::from_secs(5))
///     .with_jitter(0.0);
/// assert_eq!(cfg.multiplier, 2);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BackoffConfig {
    /// Delay after the first round of candidates. Default: 500 ms. JSON: `initial_delay_ms`.
    #[serde(rename = "initial_delay_ms", with = "millis")]
    pub initial_delay: Duration,
    /// Upper bound of any delay, jitter included. Default: 60 s. JSON: `max_delay_ms`.
    #[serde(rename = "max_delay_ms", with = "millis")]
    pub max_delay: Duration,
    /// Factor by which the delay grows each round (at least 1). Default: 2.
    pub multiplier: u32,
    /// Fraction of each delay that is randomised, in `0.0..=1.0`: a delay `d` becomes a value
    /// in `(d * (1 - jitter), d]`, so nodes started together spread out. Default: 0.5.
    pub jitter: f64,
    /// Number of rounds after which the bootstrap gives up, or `None` to keep trying until a
    /// direct connection succeeds (each round then costs at most one `max_delay`). Default: `None`.
    pub max_rounds: Option<u32>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            multiplier: 2,
            jitter: 0.5,
            max_rounds: None,
        }
    }
}

impl BackoffConfig {
    /// Sets [`initial_delay`](Self::initial_delay).
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets [`max_delay`](Self::max_delay).
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets [`multiplier`](Self::multiplier).
    pub fn with_multiplier(mut self, multiplier: u32) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets [`jitter`](Self::jitter).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`max_rounds`](Self::max_rounds).
    pub fn with_max_rounds(mut self, max_rounds: Option<u32>) -> Self {
        self.max_rounds = max_rounds;
        self
    }

    /// Checks the values; the error names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_delay > self.max_delay {
            return Err(format!(
                "backoff.initial_delay_ms ({} ms) exceeds backoff.max_delay_ms ({} ms)",
                self.initial_delay.as_millis(),
                self.max_delay.as_millis()
            ));
        }
        if self.multiplier == 0 {
            return Err("backoff.multiplier must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "backoff.jitter must be between 0.0 and 1.0, got {}",
                self.jitter
            ));
        }
        Ok(())
    }
}

/// Exponential backoff with jitter: the delay to wait after each round of attempts.
///
/// Round `n` (0-based) is followed by a base delay of
/// `min(initial_delay * multiplier^n, max_delay)`, of which a random fraction of at most
/// `jitter` is taken off. The random source is a seeded PRNG, so [`Backoff::with_seed`] gives
/// a reproducible schedule.
///
/// ```
/// use std::time::Duration;
/// use crust_bootstrap::{Backoff, BackoffConfig};
/// let cfg = BackoffConfig::default()
///     .with_initial_delay(Duration::from_millis(100))
///     .with_max_delay(Duration::from_millis(500))
///     .with_jitter(0.0);
/// let mut backoff = Backoff::with_seed(cfg, 7);
/// let delays: Vec<u128> = (0..5).map(|n| backoff.next_delay(n).as_millis()).collect();
/// assert_eq!(delays, [100, 200, 400, 500, 500]);
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    /// Jitter needs no cryptographic randomness: a small, cloneable PRNG.
    rng: SmallRng,
}

impl Backoff {
    /// A schedule whose jitter is seeded from the operating system.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            rng: rand::make_rng(),
        }
    }

    /// A schedule whose jitter comes from a PRNG seeded with `seed` (reproducible).
    pub fn with_seed(config: BackoffConfig, seed: u64) -> Self {
        Backoff {
            config,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// The delay after round `round` before jitter: `min(initial * multiplier^round, max)`.
    pub fn base_delay(&self, round: u32) -> Duration {
        let c = &self.config;
        c.multiplier
            .max(1)
            .checked_pow(round)
            .and_then(|factor| c.initial_delay.checked_mul(factor))
            .map_or(c.max_delay, |d| d.min(c.max_delay))
    }

    /// The delay after round `round` for a given random draw `unit` in `[0, 1)`:
    /// `base_delay(round) * (1 - jitter * unit)`, rounded down to whole milliseconds (the
    /// resolution of tokio timers). Pure; [`Backoff::next_delay`] draws `unit`.
    pub fn delay_for(&self, round: u32, unit: f64) -> Duration {
        let base = self.base_delay(round);
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let jittered = base.mul_f64(1.0 - jitter * unit).min(base);
        Duration::from_millis(u64::try_from(jittered.as_millis()).unwrap_or(u64::MAX))
    }

    /// The delay to wait after round `round`, with a fresh jitter draw. Never more than
    /// `max_delay`, never less than `base_delay(round) * (1 - jitter)` (less the rounding down
    /// to whole milliseconds).
    pub fn next_delay(&mut self, round: u32) -> Duration {
        let unit: f64 = self.rng.random();
        self.delay_for(round, unit)
    }
}

/// Serde helper: a `Duration` as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config(initial: u64, max: u64, jitter: f64) -> BackoffConfig {
        BackoffConfig::default()
            .with_initial_delay(ms(initial))
            .with_max_delay(ms(max))
            .with_jitter(jitter)
    }

    #[test]
    fn base_delays_double_then_cap() {
        let b = Backoff::with_seed(config(250, 3_000, 0.5), 1);
        let got: Vec<_> = (0..7).map(|n| b.base_delay(n)).collect();
        assert_eq!(
            got,
            [
                ms(250),
                ms(500),
                ms(1_000),
                ms(2_000),
                ms(3_000),
                ms(3_000),
                ms(3_000)
            ]
        );
        assert_eq!(b.base_delay(u32::MAX), ms(3_000));
    }

    #[test]
    fn other_multiplier() {
        let b = Backoff::with_seed(config(10, 10_000, 0.0).with_multiplier(3), 1);
        let got: Vec<_> = (0..4).map(|n| b.base_delay(n)).collect();
        assert_eq!(got, [ms(10), ms(30), ms(90), ms(270)]);
    }

    #[test]
    fn jitter_takes_off_a_fraction() {
        let b = Backoff::with_seed(config(100, 10_000, 0.5), 1);
        // Round 2: base 400 ms; half jitter; a draw of 0.5 takes off 25 %.
        assert_eq!(b.delay_for(2, 0.5), ms(300));
        assert_eq!(b.delay_for(2, 0.0), ms(400));
        assert_eq!(b.delay_for(2, 1.0), ms(200));
        assert_eq!(b.delay_for(2, f64::NAN), ms(400));
        // Round 1: base 200 ms; 200 * (1 - 0.5 * 0.333) = 166.7 ms, rounded down.
        assert_eq!(b.delay_for(1, 0.333), ms(166));
    }

    #[test]
    fn no_jitter_is_exact() {
        let mut b = Backoff::with_seed(config(100, 500, 0.0), 99);
        let got: Vec<_> = (0..5).map(|n| b.next_delay(n)).collect();
        assert_eq!(got, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
    }

    #[test]
    fn same_seed_same_schedule() {
        let mut a = Backoff::with_seed(BackoffConfig::default(), 42);
        let mut b = Backoff::with_seed(BackoffConfig::default(), 42);
        for n in 0..20 {
            assert_eq!(a.next_delay(n), b.next_delay(n));
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(BackoffConfig::default().validate().is_ok());
        let e = config(10, 5, 0.1).validate().expect_err("must be rejected");
        assert!(e.contains("initial_delay_ms"), "{e}");
        let e = config(1, 5, 1.5).validate().expect_err("must be rejected");
        assert!(e.contains("jitter"), "{e}");
        let e = config(1, 5, f64::NAN)
            .validate()
            .expect_err("must be rejected");
        assert!(e.contains("jitter"), "{e}");
        let e = config(1, 5, 0.0)
            .with_multiplier(0)
            .validate()
            .expect_err("must be rejected");
        assert!(e.contains("multiplier"), "{e}");
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(
            initial in 0u64..10_000,
            extra in 0u64..100_000,
            jitter in 0.0f64..=1.0,
            seed in any::<u64>(),
            round in any::<u32>(),
        ) {
            let cfg = config(initial, initial + extra, jitter);
            let mut b = Backoff::with_seed(cfg, seed);
            let base = b.base_delay(round);
            let d = b.next_delay(round);
            prop_assert!(d <= base);
            prop_assert!(base <= ms(initial + extra));
            prop_assert!(d + ms(1) > base.mul_f64(1.0 - jitter));
            prop_assert_eq!(d.subsec_nanos() % 1_000_000, 0);
        }
    }
}
