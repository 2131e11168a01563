//! How much one account may ask of the upstream: requests in flight, requests per
//! second, and backing off when the upstream says it is overloaded.
//!
//! Every datacenter target of an account shares its [`Budget`]. Each request
//! attempt (a retry too) takes a [`Permit`] first, so the limit holds whatever the
//! targets do; a retry waiting out its backoff holds no permit. On an HTTP 429 the
//! limit halves (never below 1); after each pass of the account's targets that saw
//! no 429 it grows back by one, up to the configured value. The current limit is
//! the gauge `finovy_api_concurrency_limit{account}`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

use crate::telemetry::Upstream;

/// The request budget of one account.
#[derive(Debug)]
pub struct Budget {
    state: Mutex<Slots>,
    freed: Notify,
    /// Set by a 429, cleared when a pass ends; see [`Budget::pass_finished`].
    throttled: AtomicBool,
    rate: Option<DefaultDirectRateLimiter>,
    /// Where the current limit is shown.
    shown: Arc<Upstream>,
}

#[derive(Debug)]
struct Slots {
    /// What the configuration allows.
    configured: u32,
    /// What is allowed now (halved by 429s).
    limit: u32,
    /// Attempts holding a permit.
    in_flight: u32,
}

/// A slot for one request attempt; given back on drop.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut slots = self.budget.lock();
        slots.in_flight -= 1;
        drop(slots);
        self.budget.freed.notify_waiters();
    }
}

impl Budget {
    /// A budget of `concurrency` requests in flight and, when `requests_per_second`
    /// is positive, at most that many request attempts per second (bursts of one
    /// second's worth). The current concurrency limit is shown in `shown`.
    pub fn new(concurrency: u32, requests_per_second: f64, shown: Arc<Upstream>) -> Self {
        let concurrency = concurrency.max(1);
        shown.set_concurrency_limit(concurrency);
        let rate = (requests_per_second > 0.0).then(|| {
            // governor counts whole cells per period: a fractional rate becomes
            // one request every 1/rate seconds.
            let quota = if requests_per_second >= 1.0 {
                let per_second =
                    NonZeroU32::new(requests_per_second.round() as u32).unwrap_or(NonZeroU32::MIN);
                Quota::per_second(per_second)
            } else {
                // The settings refuse a rate below 0.001, but a period that does
                // not fit a Duration must not panic whoever builds a budget.
                std::time::Duration::try_from_secs_f64(1.0 / requests_per_second)
                    .ok()
                    .and_then(Quota::with_period)
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            };
            RateLimiter::direct(quota)
        });
        Budget {
            state: Mutex::new(Slots {
                configured: concurrency,
                limit: concurrency,
                in_flight: 0,
            }),
            freed: Notify::new(),
            throttled: AtomicBool::new(false),
            rate,
            shown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot (and for the rate limit), then holds it until the permit drops.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            // Registered before the check, so a slot freed in between still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut slots = self.lock();
                if slots.in_flight < slots.limit {
                    slots.in_flight += 1;
                    break;
                }
            }
            freed.await;
        }
        let permit = Permit {
            budget: Arc::clone(self),
        };
        if let Some(rate) = &self.rate {
            rate.until_ready().await;
        }
        permit
    }

    /// The upstream answered 429: halve the limit, not below 1.
    pub fn note_throttled(&self) {
        self.throttled.store(true, Ordering::Relaxed);
        let mut slots = self.lock();
        slots.limit = (slots.limit / 2).max(1);
        self.shown.set_concurrency_limit(slots.limit);
    }

    /// A pass of one of the account's targets has ended: with no 429 since the last
    /// one, the limit grows back by one.
    pub fn pass_finished(&self) {
        if self.throttled.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut slots = self.lock();
        if slots.limit < slots.configured {
            slots.limit += 1;
            self.shown.set_concurrency_limit(slots.limit);
            drop(slots);
            self.freed.notify_waiters();
        }
    }

    /// The current concurrency limit.
    pub fn limit(&self) -> u32 {
        self.lock().limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> Arc<Upstream> {
        crate::telemetry::Telemetry::new().upstream("test")
    }

    #[tokio::test]
    async fn permits_never_exceed_the_limit() {
        let budget = Arc::new(Budget::new(2, 0.0, gauge()));
        let a = budget.acquire().await;
        let _b = budget.acquire().await;
        let third = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move {
                let _c = budget.acquire().await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "a third permit was handed out");
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(5), third)
            .await
            .expect("a freed slot wakes the waiter")
            .unwrap();
    }

    #[test]
    fn any_rate_makes_a_budget_without_a_panic() {
        // 1e-300 requests a second is a period no Duration holds.
        for rate in [
            1e-300,
            f64::MIN_POSITIVE,
            0.001,
            0.5,
            1.0,
            2.5,
            1e308,
            f64::INFINITY,
        ] {
            let budget = Budget::new(1, rate, gauge());
            assert!(budget.rate.is_some(), "{rate}");
        }
        assert!(Budget::new(1, 0.0, gauge()).rate.is_none());
    }

    #[test]
    fn a_429_halves_the_limit_and_quiet_passes_grow_it_back() {
        let g = gauge();
        let budget = Budget::new(8, 0.0, Arc::clone(&g));
        budget.note_throttled();
        assert_eq!((budget.limit(), g.concurrency_limit().unwrap()), (4, 4));
        budget.note_throttled();
        budget.note_throttled();
        budget.note_throttled();
        assert_eq!(budget.limit(), 1, "never below one");
        budget.pass_finished();
        assert_eq!(
            budget.limit(),
            1,
            "the pass that saw the 429 does not grow it"
        );
        for expected in 2..=8 {
            budget.pass_finished();
            assert_eq!(budget.limit(), expected);
        }
        budget.pass_finished();
        assert_eq!(
            (budget.limit(), g.concurrency_limit().unwrap()),
            (8, 8),
            "not above the configured value"
        );
    }
}
