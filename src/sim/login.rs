//! The simulator's login: `POST …/v1/auth/getToken` as the provider documents it.
//!
//! An account may have credentials (a uuid and a secret) besides its static
//! token. A login with known credentials issues a new token that opens the
//! account for the configured lifetime (`effectiveTime`); an unknown pair is
//! answered `code` 401. Tests make the tokens expire early
//! ([`Logins::revoke_all`]) and make the next logins answer other codes
//! ([`Logins::fail_next`]: 1005, 500 and 503 are the provider's transient codes,
//! 1001 its "no permission").

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The provider's example lifetime: 30 minutes.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Tokens kept at most; the oldest are forgotten (and so refused) beyond.
const MAX_ISSUED: usize = 100_000;

/// Logins: the credentials of each account, the tokens issued, the counts.
#[derive(Debug)]
pub(crate) struct Logins {
    /// (uuid, secret) → account name.
    credentials: HashMap<(String, String), String>,
    lifetime: Duration,
    /// The `effectiveTime` the answers claim, when it is not the real lifetime
    /// (an upstream that lies about it).
    claimed: Option<Duration>,
    /// Token → (account name, expiry).
    issued: HashMap<String, (String, Instant)>,
    order: VecDeque<String>,
    /// Codes the next logins answer with, in order, before any check.
    forced: VecDeque<i64>,
    /// Successful logins per account.
    successes: BTreeMap<String, u64>,
    /// Every login request, whatever its answer.
    attempts: u64,
    next: u64,
}

impl Default for Logins {
    fn default() -> Self {
        Logins {
            credentials: HashMap::new(),
            lifetime: DEFAULT_LIFETIME,
            claimed: None,
            issued: HashMap::new(),
            order: VecDeque::new(),
            forced: VecDeque::new(),
            successes: BTreeMap::new(),
            attempts: 0,
            next: 0,
        }
    }
}

impl Logins {
    /// Lets `uuid` with `secret` log in to `account`.
    pub fn add(&mut self, account: &str, uuid: &str, secret: &str) {
        self.credentials
            .insert((uuid.to_string(), secret.to_string()), account.to_string());
    }

    /// The lifetime of the tokens issued from now on.
    pub fn set_lifetime(&mut self, lifetime: Duration) {
        self.lifetime = lifetime;
    }

    /// Makes the answers claim this `effectiveTime` whatever the tokens' real
    /// lifetime (`None`: the truth).
    pub fn set_claimed_lifetime(&mut self, claimed: Option<Duration>) {
        self.claimed = claimed;
    }

    /// Makes every token issued so far invalid at once.
    pub fn revoke_all(&mut self) {
        // Kept, expired: a revoked token is refused, never taken for another.
        let now = Instant::now();
        for (_, expiry) in self.issued.values_mut() {
            *expiry = now;
        }
    }

    /// The next logins answer with these envelope codes, in order.
    pub fn fail_next(&mut self, codes: &[i64]) {
        self.forced.extend(codes);
    }

    /// Successful logins per account.
    pub fn successes(&self) -> BTreeMap<String, u64> {
        self.successes.clone()
    }

    /// Login requests so far.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// The account an issued token opens: `Some(None)` for a token that was
    /// issued but expired or revoked, `None` for one never issued.
    pub fn account_of(&self, token: &str) -> Option<Option<&str>> {
        match self.issued.get(token)? {
            (account, expiry) if Instant::now() < *expiry => Some(Some(account)),
            _ => Some(None),
        }
    }

    /// The answer to a login with this request body: the envelope to send
    /// with HTTP 200, and whether it refused the credentials.
    pub fn answer(&mut self, body: &[u8], random: u64, trace_id: &str) -> (Value, bool) {
        self.attempts += 1;
        if let Some(code) = self.forced.pop_front() {
            let msg = match code {
                401 => "身份认证失败",
                1001 => "无权限",
                1005 => "请求处理中",
                1007 => "缺少必要参数",
                503 => "接口异常",
                _ => "系统异常",
            };
            return (
                json!({"code": code, "success": false, "data": null, "msg": msg, "traceId": trace_id}),
                matches!(code, 401 | 1001),
            );
        }
        let asked: Option<(String, String)> =
            serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                Some((
                    v.get("uuid")?.as_str()?.to_string(),
                    v.get("secret")?.as_str()?.to_string(),
                ))
            });
        let Some(account) = asked.and_then(|key| self.credentials.get(&key).cloned()) else {
            return (
                json!({"code": 401, "success": false, "data": null, "msg": "账号或密钥错误", "traceId": trace_id}),
                true,
            );
        };
        self.next += 1;
        let token = format!("sim-{:06x}-{random:016x}", self.next);
        self.issued.insert(
            token.clone(),
            (account.clone(), Instant::now() + self.lifetime),
        );
        self.order.push_back(token.clone());
        if self.order.len() > MAX_ISSUED {
            if let Some(old) = self.order.pop_front() {
                self.issued.remove(&old);
            }
        }
        *self.successes.entry(account).or_default() += 1;
        let claimed = self.claimed.unwrap_or(self.lifetime);
        let ms = u64::try_from(claimed.as_millis()).unwrap_or(u64::MAX);
        (
            json!({"code": 0, "success": true, "msg": "success", "traceId": trace_id,
                   "data": {"token": token, "effectiveTime": ms}}),
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_credentials_get_a_token_that_opens_their_account_until_revoked() {
        let mut logins = Logins::default();
        logins.add("prod", "A1", "s1");
        let (answer, refused) = logins.answer(br#"{"uuid":"A1","secret":"s1"}"#, 7, "t");
        assert!(!refused);
        let token = answer["data"]["token"].as_str().unwrap().to_string();
        assert_eq!(answer["data"]["effectiveTime"], 1_800_000);
        assert_eq!(logins.account_of(&token), Some(Some("prod")));
        logins.revoke_all();
        assert_eq!(logins.account_of(&token), Some(None));
        let (answer, refused) = logins.answer(br#"{"uuid":"A1","secret":"no"}"#, 7, "t");
        assert!(refused);
        assert_eq!(answer["code"], 401);
        logins.fail_next(&[503]);
        let (answer, refused) = logins.answer(br#"{"uuid":"A1","secret":"s1"}"#, 7, "t");
        assert_eq!((answer["code"].as_i64(), refused), (Some(503), false));
        assert_eq!(logins.successes()["prod"], 1);
        assert_eq!(logins.attempts(), 3);
    }
}
