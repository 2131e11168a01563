//! `basic_auth_users`: bcrypt-hashed passwords, and a cache of the credentials
//! already verified so that a scrape does not pay for bcrypt every time.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
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

struct User {
    /// SHA-256 of the name: compared in constant time, whatever the lengths.
    name_digest: Fingerprint,
    hash: String,
}

/// The `basic_auth_users`, and a cache of the credentials already verified.
///
/// A bcrypt verification costs tens of milliseconds by design; Prometheus sends
/// the same credentials at every scrape, so a successful verification is
/// remembered under a SHA-256 of (user, hash, password) and later scrapes pay a
/// hash instead (exporter-toolkit does the same). Failures are not cached, so
/// the cache cannot be filled by someone who does not know a password. Every
/// verification that does reach bcrypt runs on the blocking pool, one at a
/// time, so wrong passwords cannot take every core.
pub struct BasicAuth {
    users: Vec<User>,
    cache: Mutex<HashSet<Fingerprint>>,
    bcrypt_gate: Semaphore,
    bcrypt_runs: AtomicU64,
}

impl BasicAuth {
    /// Checks every hash; names that can never log in are reported in `warnings`.
    pub(super) fn new(
        users: BTreeMap<String, String>,
        warnings: &mut Vec<String>,
    ) -> Result<Self, WebConfigError> {
        let mut out = Vec::with_capacity(users.len());
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
            out.push(User {
                name_digest: sha256(&[name.as_bytes()]),
                hash,
            });
        }
        Ok(BasicAuth {
            users: out,
            cache: Mutex::new(HashSet::new()),
            bcrypt_gate: Semaphore::new(1),
            bcrypt_runs: AtomicU64::new(0),
        })
    }

    /// How many bcrypt verifications were run (the others were cache hits).
    pub fn bcrypt_runs(&self) -> u64 {
        self.bcrypt_runs.load(Ordering::Relaxed)
    }

    /// Whether the `Authorization` header carries the credentials of a user.
    pub async fn verify(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        // Find the user without a map lookup or an early exit: the time taken
        // does not tell whether, or which, user name matched. An unknown user
        // is checked against the first user's hash, so it costs as much.
        let digest = sha256(&[user.as_bytes()]);
        let mut index = 0u32;
        let mut found = Choice::from(0);
        for (i, candidate) in self.users.iter().enumerate() {
            let same = candidate.name_digest.ct_eq(&digest);
            index.conditional_assign(&(i as u32), same);
            found |= same;
        }
        let found = bool::from(found);
        let hash = &self.users[index as usize].hash;
        let key = sha256(&[user.as_bytes(), hash.as_bytes(), password.as_bytes()]);
        let cached = self.lock_cache().contains(&key);
        if found && cached {
            return true;
        }
        let Ok(_permit) = self.bcrypt_gate.acquire().await else {
            return false;
        };
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let hash = hash.clone();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
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
}
