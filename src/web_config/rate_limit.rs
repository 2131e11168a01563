//! `rate_limit`: requests beyond a token bucket are answered 429, as with
//! exporter-toolkit (which uses Go's `x/time/rate` the same way).

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::schema::RawRateLimit;

/// One bucket for the whole listener: a token comes back every `interval`, at
/// most `burst` are saved up.
///
/// It is shared by every connection and request, so it bounds what all clients
/// together can ask for. A reload that leaves `rate_limit` as it was keeps the
/// same bucket, so rewriting the file does not refill it.
pub struct RateLimit {
    settings: RawRateLimit,
    /// `None` when `burst` is 0: as in Go, a bucket that holds no token lets
    /// nothing through.
    limiter: Option<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("burst", &self.settings.burst)
            .field("interval", &self.settings.interval)
            .finish()
    }
}

impl RateLimit {
    /// The limiter `rate_limit` asks for; `None` when `interval` is 0, which
    /// exporter-toolkit takes as no limit.
    pub(super) fn new(settings: RawRateLimit, warnings: &mut Vec<String>) -> Option<Self> {
        if settings.interval.is_zero() {
            return None;
        }
        let limiter = match NonZeroU32::new(settings.burst) {
            Some(burst) => Quota::with_period(settings.interval)
                .map(|quota| RateLimiter::direct(quota.allow_burst(burst))),
            None => {
                warnings.push(
                    "rate_limit: burst is 0, so every request is answered 429 Too Many Requests"
                        .into(),
                );
                None
            }
        };
        Some(RateLimit { settings, limiter })
    }

    /// Whether these are the settings of `self`.
    pub(super) fn is(&self, settings: &RawRateLimit) -> bool {
        self.settings == *settings
    }

    /// Takes a token if one is left; `false` means answer 429.
    pub fn allow(&self) -> bool {
        self.limiter.as_ref().is_some_and(|l| l.check().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(interval: Duration, burst: u32) -> Option<RateLimit> {
        RateLimit::new(RawRateLimit { burst, interval }, &mut Vec::new())
    }

    #[test]
    fn a_zero_interval_is_no_limit() {
        assert!(limit(Duration::ZERO, 0).is_none());
        assert!(limit(Duration::ZERO, 5).is_none());
    }

    #[test]
    fn the_burst_passes_then_requests_are_refused() {
        let limit = limit(Duration::from_secs(3600), 3).unwrap();
        let allowed = (0..10).filter(|_| limit.allow()).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn a_zero_burst_refuses_everything() {
        let mut warnings = Vec::new();
        let settings = RawRateLimit {
            burst: 0,
            interval: Duration::from_secs(1),
        };
        let limit = RateLimit::new(settings, &mut warnings).unwrap();
        assert!(!limit.allow());
        assert!(warnings[0].contains("burst is 0"), "{warnings:?}");
    }
}
