//! The per-account intake limit: a token bucket on accepted messages, `rate`
//! messages a second sustained, up to `burst` at once.

use std::fmt;

/// Fastest rate an operator may set, in messages a second.
pub const MAX_RATE: u32 = 1_000_000;
/// Largest burst an operator may set, in messages.
pub const MAX_BURST: u32 = 100_000_000;

/// One account's limit: its own (`kurir accounts limit`), or the API's
/// default (`KURIR_INTAKE_RATE`, `KURIR_INTAKE_BURST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeLimit {
    /// Messages a second the bucket refills with; 0 is no limit.
    pub rate: u32,
    /// The bucket's size: the most messages accepted at once (at least 1).
    pub burst: u32,
}

impl IntakeLimit {
    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Whole seconds an empty bucket takes to fill (at least 1): the window
    /// of `RateLimit-Policy`, over which `burst` messages are the quota.
    pub fn window_secs(&self) -> u64 {
        if self.is_unlimited() {
            return 1;
        }
        u64::from(self.burst).div_ceil(u64::from(self.rate)).max(1)
    }
}

impl fmt::Display for IntakeLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unlimited() {
            write!(f, "no limit")
        } else {
            write!(f, "{} messages/s, burst {}", self.rate, self.burst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_time_an_empty_bucket_takes_to_fill() {
        let limit = |rate, burst| IntakeLimit { rate, burst };
        assert_eq!(limit(1000, 10_000).window_secs(), 10);
        assert_eq!(limit(3, 10).window_secs(), 4);
        assert_eq!(limit(1000, 10).window_secs(), 1);
        assert_eq!(
            limit(1000, 10_000).to_string(),
            "1000 messages/s, burst 10000"
        );
        assert_eq!(limit(0, 10).to_string(), "no limit");
    }
}
