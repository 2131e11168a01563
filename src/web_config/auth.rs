//! `basic_auth_users`: bcrypt-hashed passwords, and a cache of the credentials
//! already verified so that a scrape does not pay for bcrypt every time.
//!
//! Two promises hold under a flood of wrong passwords (docs/security.md):
//! - A valid login waits for at most one bcrypt run per other name being
//!   tried, never for the flood: verifications queue per name (every unknown
//!   name shares one queue), one at a time each, and the queues take turns at
//!   the single bcrypt slot, first come first served. A name's queue holds at
//!   most [`WAITING_PER_NAME`] attempts; one more is refused at once, unverified.
//! - An unknown name is verified against a hash of the highest configured cost,
//!   so it costs what the costliest user costs.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use base64::Engine as _;
use hyper::header::HeaderValue;
use ring::digest;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tokio::sync::Semaphore;

use super::schema::{feed, Fingerprint};
use super::{invalid, WebConfigError};

/// Successful verifications remembered at most; past that the cache starts over.
const AUTH_CACHE_CAPACITY: usize = 1024;

/// Attempts of one name (or of unknown names together) waiting for bcrypt at
/// most; one more is refused at once. Prometheus sends one scrape at a time
/// per target, so a real client never has more than a few waiting; a flood
/// waits its turn here rather than coming back at once to try again.
pub const WAITING_PER_NAME: usize = 64;

/// The salt and digest of the hash unknown names are checked against: any
/// well-formed pair does, since no password is meant to match it and bcrypt
/// costs the same whatever the digest.
const UNKNOWN_HASH_BODY: &str = "N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

struct User {
    /// SHA-256 of the name: compared in constant time, whatever the lengths.
    name_digest: Fingerprint,
    hash: String,
}

/// The attempts of one name waiting for bcrypt: they run one at a time, and
/// past [`WAITING_PER_NAME`] a new one is refused.
struct NameQueue {
    turn: Semaphore,
    waiting: AtomicUsize,
}

/// A place in a name's queue, given back on drop: also when the client goes
/// away while it waits, so that a queue never stays full of attempts gone.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// A place, or `None` when [`WAITING_PER_NAME`] are taken.
    fn join(count: &'a AtomicUsize) -> Option<Self> {
        let before = count.fetch_add(1, Ordering::AcqRel);
        let place = Waiting(count);
        (before < WAITING_PER_NAME).then_some(place)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl NameQueue {
    fn new() -> Self {
        NameQueue {
            turn: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// The `basic_auth_users`, and a cache of the credentials already verified.
///
/// A bcrypt verification costs tens of milliseconds by design; Prometheus sends
/// the same credentials at every scrape, so a successful verification is
/// remembered under a SHA-256 of (user, hash, password) and later scrapes pay a
/// hash instead (exporter-toolkit does the same). Failures are not cached, so
/// the cache cannot be filled by someone who does not know a password. Every
/// verification that does reach bcrypt runs on the blocking pool, one at a
/// time, so wrong passwords cannot take every core; see the module doc for
/// how the waiting is shared out.
pub struct BasicAuth {
    users: Vec<User>,
    /// What an unknown name is checked against: the highest configured cost.
    unknown_hash: String,
    /// One queue per user, then one for every unknown name.
    queues: Vec<NameQueue>,
    cache: Mutex<HashSet<Fingerprint>>,
    bcrypt_gate: Semaphore,
    bcrypt_runs: AtomicU64,
    last_cost: AtomicU32,
}

impl BasicAuth {
    /// Checks every hash; names that can never log in are reported in `warnings`.
    pub(super) fn new(
        users: BTreeMap<String, String>,
        warnings: &mut Vec<String>,
    ) -> Result<Self, WebConfigError> {
        let mut out = Vec::with_capacity(users.len());
        // The lowest cost bcrypt takes, for a list without users.
        let mut highest_cost = 4;
        for (name, hash) in users {
            let field = format!("basic_auth_users.{name}");
            // Accepted, as exporter-toolkit accepts it; but `Authorization:
            // Basic` ends the name at the first ':', so no request can match.
            if name.contains(':') {
                warnings.push(format!(
                    "{field}: a user name with ':' can never log in (basic auth ends the name at the first ':')"
                ));
            }
            let parts: bcrypt::HashParts = hash.parse().map_err(|_| {
                invalid(
                    &field,
                    "not a bcrypt hash (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')",
                )
            })?;
            if parts.get_cost() < 4 || parts.get_cost() > 31 {
                return Err(invalid(field, "bcrypt cost must be between 4 and 31"));
            }
            highest_cost = highest_cost.max(parts.get_cost());
            out.push(User {
                name_digest: sha256(&[name.as_bytes()]),
                hash,
            });
        }
        Ok(BasicAuth {
            queues: (0..=out.len()).map(|_| NameQueue::new()).collect(),
            users: out,
            unknown_hash: format!("$2b${highest_cost:02}${UNKNOWN_HASH_BODY}"),
            cache: Mutex::new(HashSet::new()),
            bcrypt_gate: Semaphore::new(1),
            bcrypt_runs: AtomicU64::new(0),
            last_cost: AtomicU32::new(0),
        })
    }

    /// How many bcrypt verifications were run (the others were cache hits).
    pub fn bcrypt_runs(&self) -> u64 {
        self.bcrypt_runs.load(Ordering::Relaxed)
    }

    /// The bcrypt cost of the last verification run (0 before the first): what
    /// an attempt cost, for tests of what timing can tell.
    pub fn last_bcrypt_cost(&self) -> u32 {
        self.last_cost.load(Ordering::Relaxed)
    }

    /// Whether the `Authorization` header carries the credentials of a user.
    pub async fn verify(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        // Find the user without a map lookup or an early exit: the time taken
        // does not tell whether, or which, user name matched.
        let digest = sha256(&[user.as_bytes()]);
        let mut index = 0u32;
        let mut found = Choice::from(0);
        for (i, candidate) in self.users.iter().enumerate() {
            let same = candidate.name_digest.ct_eq(&digest);
            index.conditional_assign(&(i as u32), same);
            found |= same;
        }
        let found = bool::from(found);
        // An unknown name is checked against a hash of the highest configured
        // cost, in the queue all unknown names share.
        let (hash, queue) = match found {
            true => (
                &self.users[index as usize].hash,
                &self.queues[index as usize],
            ),
            false => (&self.unknown_hash, &self.queues[self.users.len()]),
        };
        let key = sha256(&[user.as_bytes(), hash.as_bytes(), password.as_bytes()]);
        let cached = self.lock_cache().contains(&key);
        if found && cached {
            return true;
        }
        // A name with its queue full is refused unverified, so a flood of
        // attempts neither grows a queue nor costs bcrypt runs.
        let Some(_waiting) = Waiting::join(&queue.waiting) else {
            return false;
        };
        let matches = self.run_bcrypt(queue, password, hash).await;
        let ok = found && matches;
        if ok {
            let mut cache = self.lock_cache();
            if cache.len() >= AUTH_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }

    /// One bcrypt verification, when it is the name's turn and the slot is free.
    /// The name's turn is held while waiting for the slot, so the slot's queue
    /// (first come, first served) has at most one attempt of each name.
    async fn run_bcrypt(&self, queue: &NameQueue, password: String, hash: &str) -> bool {
        let Ok(_turn) = queue.turn.acquire().await else {
            return false;
        };
        let Ok(_slot) = self.bcrypt_gate.acquire().await else {
            return false;
        };
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let cost = hash
            .parse::<bcrypt::HashParts>()
            .map_or(0, |p| p.get_cost());
        self.last_cost.store(cost, Ordering::Relaxed);
        let hash = hash.to_string();
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashSet<Fingerprint>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// SHA-256 over length-prefixed parts (so part boundaries cannot shift).
pub(super) fn sha256(parts: &[&[u8]]) -> Fingerprint {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        feed(&mut ctx, part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web_config::tests::{parse, HASH};

    fn basic(user: &str, pass: &str) -> HeaderValue {
        let raw = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {raw}")).unwrap()
    }

    #[test]
    fn authorization_parsing() {
        assert_eq!(
            parse_basic(&basic("al:ice", "p:w")),
            Some(("al".into(), "ice:p:w".into()))
        );
        let lower = HeaderValue::from_static("basic YTpi");
        assert_eq!(parse_basic(&lower), Some(("a".into(), "b".into())));
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer YTpi")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!!")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic YWI=")), None);
    }

    #[tokio::test]
    async fn verification_is_cached_only_on_success() {
        let c = parse(&format!(
            "basic_auth_users:\n  alice: {HASH}\n  bob: {HASH}\n"
        ))
        .unwrap();
        let auth = c.basic_auth().unwrap();
        assert!(!auth.verify(None).await);
        assert!(!auth.verify(Some(&basic("alice", "wrong"))).await);
        assert!(!auth.verify(Some(&basic("mallory", "secret"))).await);
        assert_eq!(auth.bcrypt_runs(), 2);
        for _ in 0..5 {
            assert!(auth.verify(Some(&basic("alice", "secret"))).await);
        }
        assert_eq!(auth.bcrypt_runs(), 3, "one bcrypt run, then cache hits");
        assert!(!auth.verify(Some(&basic("alice", "wrong"))).await);
        assert!(auth.verify(Some(&basic("bob", "secret"))).await);
        assert!(!auth.verify(Some(&basic("mallory", "secret"))).await);
        assert_eq!(auth.bcrypt_runs(), 6);
    }

    #[tokio::test]
    async fn an_unknown_name_is_checked_at_the_highest_configured_cost() {
        let costly = bcrypt::hash("other", 6).unwrap();
        let c = parse(&format!(
            "basic_auth_users:\n  alice: {HASH}\n  zed: {costly}\n"
        ))
        .unwrap();
        let auth = c.basic_auth().unwrap();
        assert!(!auth.verify(Some(&basic("alice", "wrong"))).await);
        assert_eq!(auth.last_bcrypt_cost(), 4, "alice's own cost");
        assert!(!auth.verify(Some(&basic("mallory", "secret"))).await);
        assert_eq!(
            auth.last_bcrypt_cost(),
            6,
            "the highest cost, not the first user's"
        );
        assert!(!auth.verify(Some(&basic("zed", "wrong"))).await);
        assert_eq!(auth.last_bcrypt_cost(), 6);
        assert!(auth.verify(Some(&basic("zed", "other"))).await);
    }

    #[test]
    fn a_full_queue_refuses_and_a_place_is_given_back_when_dropped() {
        let count = AtomicUsize::new(0);
        let places: Vec<_> = (0..WAITING_PER_NAME)
            .map(|_| Waiting::join(&count).expect("room"))
            .collect();
        assert!(Waiting::join(&count).is_none(), "one more is refused");
        assert_eq!(count.load(Ordering::Relaxed), WAITING_PER_NAME);
        drop(places);
        assert_eq!(count.load(Ordering::Relaxed), 0);
        assert!(Waiting::join(&count).is_some());
    }
}
