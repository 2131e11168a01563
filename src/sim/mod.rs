//! A simulator of the Finovy "my image list" API, for `--demo`, the tests and the
//! `finovy-api-sim` binary.
//!
//! It implements the contract of the API document: `GET` with the
//! `Finovy-Access-Token` header, the `imageName`, `imageType`, `datacenterKey` and
//! `status` filters, `page`/`pageSize` paging, the success envelope, and
//! authentication failures either as HTTP 401 or as HTTP 200 with `"code":401`.
//!
//! It serves one or more accounts, each with its own token and images: a
//! request sees the images of the account its token belongs to, and a token
//! that belongs to none is refused. [`Simulator::new`] makes the one account of
//! most tests; [`Simulator::with_accounts`] makes several.
//!
//! [`Faults`] make it misbehave the way real servers do (the fault language is
//! in [`faults`]). [`Simulator::evolve`] moves the images through their life
//! (created, available or failed, expired, deleted), and
//! [`Simulator::set_alternates`] makes every pass see another data set. A
//! control API under `/_sim/` reads and replaces the images, the alternates and
//! the faults, steps the evolution and lists the requests received, so tests
//! can drive it from outside the process.
//!
//! # Layout
//!
//! - [`faults`]: the fault language and what it makes of one request.
//! - `data`: synthetic images; `evolve`: their life, step by step.
//! - `page`: one page of the list, selected, bent and written by serde.
//! - `server`: the HTTP side, the misbehaviours on the wire, and `/_sim/`.

mod data;
mod evolve;
pub mod faults;
mod login;
mod page;
mod server;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use data::{generate, GenerateOptions, SimImage, SplitMix};
pub use evolve::Evolution;
pub use faults::{
    BadName, Corruption, EchoPlace, FaultAction, FaultRule, Faults, Spelling, TimeBend,
};
pub use server::SimServer;

use faults::{Effects, Scope};
use page::Inventory;

/// The name of the one account that [`Simulator::new`] serves, the name the
/// exporter gives the account its flags describe.
pub const DEFAULT_ACCOUNT: &str = "default";

/// How an authentication failure is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthStyle {
    /// HTTP 401 with the error envelope.
    #[default]
    Http,
    /// HTTP 200 with `"code":401` in the envelope.
    Body,
}

/// One request the simulator received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string, undecoded.
    pub query: String,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// When it arrived, Unix microseconds.
    #[serde(default)]
    pub received_us: u64,
    /// The fault actions applied to it, by [`FaultAction::label`].
    #[serde(default)]
    pub faults: Vec<String>,
    /// The account its token belongs to; `None` when it belongs to none.
    #[serde(default)]
    pub account: Option<String>,
}

impl RecordedRequest {
    /// The decoded value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The `page` asked for (1 when absent or unreadable).
    pub fn page(&self) -> u32 {
        self.param("page").and_then(|p| p.parse().ok()).unwrap_or(1)
    }

    /// The `datacenterKey` asked for (`None` for the unfiltered list).
    pub fn datacenter(&self) -> Option<String> {
        self.param("datacenterKey")
    }
}

/// Options of [`Simulator::new`], fixed at start.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// The token to require; `None` accepts any non-empty token.
    pub token: Option<String>,
    /// How a wrong token is answered.
    pub auth_style: AuthStyle,
}

/// One account of [`Simulator::with_accounts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimAccount {
    /// Its name, which the request log records.
    pub name: String,
    /// The token that opens it.
    pub token: String,
    /// Its images.
    pub images: Vec<SimImage>,
    /// A uuid and secret that log in to it (`POST /v1/auth/getToken`), if any.
    pub credentials: Option<(String, String)>,
}

impl SimAccount {
    /// An account named `name`, opened by `token`, holding `images`.
    pub fn new(name: &str, token: &str, images: Vec<SimImage>) -> Self {
        SimAccount {
            name: name.to_string(),
            token: token.to_string(),
            images,
            credentials: None,
        }
    }

    /// The account, which `uuid` with `secret` can also log in to.
    pub fn with_login(mut self, uuid: &str, secret: &str) -> Self {
        self.credentials = Some((uuid.to_string(), secret.to_string()));
        self
    }
}

/// Why a set of accounts cannot be served. Tokens are never part of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// No account at all.
    #[error("no account to serve")]
    NoAccounts,
    /// An account without a name.
    #[error("an account has an empty name")]
    EmptyName,
    /// Two accounts with one name.
    #[error("account '{0}' is declared twice")]
    DuplicateName(String),
    /// An account without a token.
    #[error("account '{0}' has an empty token")]
    EmptyToken(String),
    /// Two accounts with one token: a request could not tell them apart.
    #[error("accounts '{0}' and '{1}' have the same token")]
    DuplicateToken(String, String),
    /// No account of this name.
    #[error("no account named '{0}'")]
    Unknown(String),
}

const MAX_RECORDED: usize = 1000;

/// One account as served: its token, its images, and where its passes are.
#[derive(Debug)]
struct Account {
    name: String,
    /// `None`: any non-empty token that no other account claims.
    token: Option<String>,
    inventory: Arc<Inventory>,
    alternates: Vec<Arc<Inventory>>,
    /// Page-1 requests seen per `datacenterKey` ("" for unfiltered): the pass
    /// a request belongs to, which picks an alternate and a churned key.
    passes: HashMap<String, u64>,
}

impl Account {
    fn new(name: &str, token: Option<String>, images: Vec<SimImage>) -> Self {
        Account {
            name: name.to_string(),
            token,
            inventory: Arc::new(Inventory::new(images)),
            alternates: Vec::new(),
            passes: HashMap::new(),
        }
    }
}

/// Everything the simulator's handles share, behind one lock.
#[derive(Debug)]
struct SimState {
    accounts: Vec<Account>,
    faults: Faults,
    /// The last [`MAX_RECORDED`] list requests.
    requests: VecDeque<RecordedRequest>,
    /// Every list request since the last clearing, per (account, datacenter):
    /// unlike the log, never cut, so a flood can be counted.
    counts: BTreeMap<(String, String), u64>,
    /// List requests so far, which numbers them for [`FaultAction::KeyChurn`].
    sequence: u64,
    rng: SplitMix,
    logins: login::Logins,
}

impl SimState {
    /// The account `token` opens: the one it is the token of, else the one a
    /// login issued it for (while it is valid), else the one that takes any token.
    fn account_of(&self, token: &str) -> Option<usize> {
        if token.is_empty() {
            return None;
        }
        match self.logins.account_of(token) {
            Some(Some(name)) => return self.accounts.iter().position(|a| a.name == name),
            Some(None) => return None,
            None => {}
        }
        let exact = self
            .accounts
            .iter()
            .position(|a| a.token.as_deref() == Some(token));
        exact.or_else(|| self.accounts.iter().position(|a| a.token.is_none()))
    }

    fn account_mut(&mut self, name: &str) -> Result<&mut Account, AccountError> {
        self.accounts
            .iter_mut()
            .find(|a| a.name == name)
            .ok_or_else(|| AccountError::Unknown(name.to_string()))
    }
}

/// What the simulator makes of one list request: the faults' effects, and the
/// images it pages through.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub effects: Effects,
    /// The images of the account the token opens; `None`: it opens none.
    inventory: Option<Arc<Inventory>>,
}

/// The simulated upstream: accounts, faults and options, shared with its server.
#[derive(Debug, Clone)]
pub struct Simulator {
    auth_style: AuthStyle,
    state: Arc<Mutex<SimState>>,
    held: Arc<Held>,
}

/// How long list answers were held, from the request's arrival to the answer:
/// the latency the simulator really adds (timers fire late, by up to a couple
/// of milliseconds), which a benchmark's best possible schedule should use.
#[derive(Debug, Default)]
struct Held {
    answers: AtomicU64,
    total_us: AtomicU64,
}

impl Simulator {
    /// A simulator serving `images` as one account, [`DEFAULT_ACCOUNT`],
    /// opened by `options.token` (or by any non-empty token when it is `None`).
    pub fn new(images: Vec<SimImage>, options: SimOptions) -> Self {
        let account = Account::new(DEFAULT_ACCOUNT, options.token, images);
        Simulator::serving(vec![account], options.auth_style)
    }

    /// A simulator serving several accounts, each opened by its own token
    /// only; a token that opens none is answered in `auth_style`. The first
    /// account is the one [`Simulator::images`] and its siblings act on.
    pub fn with_accounts(
        accounts: Vec<SimAccount>,
        auth_style: AuthStyle,
    ) -> Result<Self, AccountError> {
        if accounts.is_empty() {
            return Err(AccountError::NoAccounts);
        }
        for (i, a) in accounts.iter().enumerate() {
            if a.name.is_empty() {
                return Err(AccountError::EmptyName);
            }
            if a.token.is_empty() {
                return Err(AccountError::EmptyToken(a.name.clone()));
            }
            if let Some(b) = accounts[..i].iter().find(|b| b.name == a.name) {
                return Err(AccountError::DuplicateName(b.name.clone()));
            }
            if let Some(b) = accounts[..i].iter().find(|b| b.token == a.token) {
                return Err(AccountError::DuplicateToken(b.name.clone(), a.name.clone()));
            }
        }
        let mut logins = login::Logins::default();
        for a in &accounts {
            if let Some((uuid, secret)) = &a.credentials {
                logins.add(&a.name, uuid, secret);
            }
        }
        let accounts = accounts
            .into_iter()
            .map(|a| Account::new(&a.name, Some(a.token), a.images))
            .collect();
        let sim = Simulator::serving(accounts, auth_style);
        sim.lock().logins = logins;
        Ok(sim)
    }

    fn serving(accounts: Vec<Account>, auth_style: AuthStyle) -> Self {
        Simulator {
            auth_style,
            state: Arc::new(Mutex::new(SimState {
                accounts,
                faults: Faults::default(),
                requests: VecDeque::new(),
                counts: BTreeMap::new(),
                sequence: 0,
                rng: SplitMix::new(0x5eed),
                logins: login::Logins::default(),
            })),
            held: Arc::default(),
        }
    }

    /// Notes that a list answer was held `held` after its request arrived.
    pub(crate) fn note_held(&self, held: Duration) {
        self.held.answers.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.held.total_us.fetch_add(us, Ordering::Relaxed);
    }

    /// List answers so far, and the microseconds they were held in all.
    pub fn held(&self) -> (u64, u64) {
        (
            self.held.answers.load(Ordering::Relaxed),
            self.held.total_us.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How a wrong token is answered.
    pub fn auth_style(&self) -> AuthStyle {
        self.auth_style
    }

    /// Seeds the generator behind fault rates and evolution, for reproducible runs.
    pub fn reseed(&self, seed: u64) {
        self.lock().rng = SplitMix::new(seed);
    }

    /// The names of the accounts, in the order they were declared.
    pub fn accounts(&self) -> Vec<String> {
        self.lock()
            .accounts
            .iter()
            .map(|a| a.name.clone())
            .collect()
    }

    /// The images the first account serves now (when no alternates are set).
    pub fn images(&self) -> Arc<Vec<SimImage>> {
        Arc::clone(self.lock().accounts[0].inventory.images())
    }

    /// Replaces the images of the first account.
    pub fn set_images(&self, images: Vec<SimImage>) {
        self.lock().accounts[0].inventory = Arc::new(Inventory::new(images));
    }

    /// The images account `name` serves now (when no alternates are set).
    pub fn account_images(&self, name: &str) -> Result<Arc<Vec<SimImage>>, AccountError> {
        Ok(Arc::clone(
            self.lock().account_mut(name)?.inventory.images(),
        ))
    }

    /// Replaces the images of account `name`.
    pub fn set_account_images(
        &self,
        name: &str,
        images: Vec<SimImage>,
    ) -> Result<(), AccountError> {
        self.lock().account_mut(name)?.inventory = Arc::new(Inventory::new(images));
        Ok(())
    }

    /// Serves the first account's data sets in turn instead of its images:
    /// each request for page 1 of a datacenter (or of the unfiltered list)
    /// moves that list on to the next set, and its other pages come from the
    /// same set. An exporter that pages one pass at a time thus sees every
    /// pass whole, each from another set. An empty list goes back to the images.
    pub fn set_alternates(&self, sets: Vec<Vec<SimImage>>) {
        let mut state = self.lock();
        let account = &mut state.accounts[0];
        account.alternates = sets
            .into_iter()
            .map(|set| Arc::new(Inventory::new(set)))
            .collect();
        account.passes.clear();
    }

    /// The first account's alternating data sets (empty when off).
    pub fn alternates(&self) -> Vec<Arc<Vec<SimImage>>> {
        let state = self.lock();
        let alternates = &state.accounts[0].alternates;
        alternates
            .iter()
            .map(|set| Arc::clone(set.images()))
            .collect()
    }

    /// The faults in force (with the rules' remaining `times`).
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The last list requests received (at most 1000), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    /// Every list request received since the last [`Simulator::clear_requests`],
    /// counted per (account, `datacenterKey`): "" for a token that opens no
    /// account and for the unfiltered list. Unlike [`Simulator::requests`],
    /// never cut short.
    pub fn request_counts(&self) -> BTreeMap<(String, String), u64> {
        self.lock().counts.clone()
    }

    /// The lifetime (`effectiveTime`) of the tokens logins issue from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.lock().logins.set_lifetime(lifetime);
    }

    /// Makes login answers claim this `effectiveTime` whatever the tokens' real
    /// lifetime (`None`: the truth), as an upstream that lies about it would.
    pub fn set_claimed_token_lifetime(&self, claimed: Option<Duration>) {
        self.lock().logins.set_claimed_lifetime(claimed);
    }

    /// Makes every token issued by a login so far invalid at once (an early
    /// revocation): the requests that carry one are refused.
    pub fn revoke_tokens(&self) {
        self.lock().logins.revoke_all();
    }

    /// The next logins answer with these envelope codes, in order, whatever
    /// their credentials.
    pub fn fail_next_logins(&self, codes: &[i64]) {
        self.lock().logins.fail_next(codes);
    }

    /// Successful logins per account name.
    pub fn logins(&self) -> BTreeMap<String, u64> {
        self.lock().logins.successes()
    }

    /// Login requests received, whatever their answer.
    pub fn login_attempts(&self) -> u64 {
        self.lock().logins.attempts()
    }

    /// Answers a login request's body (see [`login`]).
    pub(crate) fn login(&self, body: &[u8], trace_id: &str) -> (serde_json::Value, bool) {
        let mut state = self.lock();
        let random = state.rng.next_u64();
        state.logins.answer(body, random, trace_id)
    }

    /// Forgets the requests received so far, and their counts.
    pub fn clear_requests(&self) {
        let mut state = self.lock();
        state.requests.clear();
        state.counts.clear();
    }

    /// Moves every account's images one step through their life, as of
    /// `now_ms` (Unix ms): some are created (`creating`), some of those become
    /// `available` or `failed`, some available ones expire, some failed or
    /// expired ones are deleted. Reproducible for a given seed (see
    /// [`Simulator::reseed`]). Returns the changes of all accounts together.
    pub fn evolve(&self, now_ms: i64) -> Evolution {
        let mut state = self.lock();
        let state = &mut *state;
        let mut change = Evolution::default();
        for account in &mut state.accounts {
            let mut images = (**account.inventory.images()).clone();
            change += evolve::step(&mut images, &mut state.rng, now_ms);
            account.inventory = Arc::new(Inventory::new(images));
        }
        change
    }

    /// Calls [`Simulator::evolve`] every `every`, for ever (spawn it, or select it
    /// against a shutdown signal).
    pub async fn evolve_every(self, every: Duration) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let change = self.evolve(data::now_ms());
            tracing::debug!(?change, "simulated images evolved");
        }
    }

    /// Records `request`, made with `token`, and works out what the faults
    /// make of it.
    pub(crate) fn admit(
        &self,
        mut request: RecordedRequest,
        token: &str,
        datacenter: Option<&str>,
        page: u32,
    ) -> Plan {
        let mut state = self.lock();
        let state = &mut *state;
        let account = state.account_of(token);
        let name = account.map(|i| state.accounts[i].name.clone());
        let scope = Scope {
            account: name.as_deref(),
            datacenter,
            page,
        };
        let (mut effects, labels) = state.faults.apply(scope, &mut state.rng);
        state.sequence += 1;
        let inventory = account.map(|i| {
            let account = &mut state.accounts[i];
            let pass = account
                .passes
                .entry(datacenter.unwrap_or("").to_string())
                .or_insert(0);
            if page == 1 {
                *pass += 1;
            }
            let pass = *pass;
            if effects.bends.key_suffix.is_some() {
                let suffix = if effects.churn_per_request {
                    state.sequence
                } else {
                    pass
                };
                effects.bends.key_suffix = Some(suffix);
            }
            match account.alternates.len() {
                0 => Arc::clone(&account.inventory),
                n => Arc::clone(&account.alternates[(pass.saturating_sub(1) % n as u64) as usize]),
            }
        });
        let key = (
            name.clone().unwrap_or_default(),
            datacenter.unwrap_or("").to_string(),
        );
        *state.counts.entry(key).or_insert(0) += 1;
        request.faults = labels;
        request.account = name;
        if state.requests.len() == MAX_RECORDED {
            state.requests.pop_front();
        }
        state.requests.push_back(request);
        Plan { effects, inventory }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RecordedRequest {
        RecordedRequest {
            method: "GET".into(),
            path: "/list".into(),
            query: String::new(),
            headers: Vec::new(),
            received_us: 0,
            faults: Vec::new(),
            account: None,
        }
    }

    fn image(id: &str, dc: &str) -> SimImage {
        SimImage {
            id: id.into(),
            image_id: 1,
            image_type: "Ubuntu".into(),
            image_name: id.into(),
            image_size: "1.00".into(),
            datacenter_key: dc.into(),
            status: 1,
            create_time: 0,
        }
    }

    fn served(plan: &Plan) -> Vec<SimImage> {
        (**plan.inventory.as_ref().expect("an account").images()).clone()
    }

    #[test]
    fn alternates_change_at_page_one_per_datacenter() {
        let sim = Simulator::new(Vec::new(), SimOptions::default());
        let a = vec![image("a", "HZ")];
        let b = vec![image("b", "HZ"), image("b2", "HZ")];
        sim.set_alternates(vec![a.clone(), b.clone()]);
        let served = |dc: Option<&str>, page| served(&sim.admit(request(), "t", dc, page));
        assert_eq!(served(Some("HZ"), 1), a);
        assert_eq!(
            served(Some("HZ"), 2),
            a,
            "the other pages from the same set"
        );
        assert_eq!(served(Some("SH"), 1), a, "each datacenter on its own");
        assert_eq!(served(Some("HZ"), 1), b);
        assert_eq!(served(Some("HZ"), 3), b);
        assert_eq!(served(Some("HZ"), 1), a);
        sim.set_alternates(Vec::new());
        sim.set_images(b.clone());
        assert_eq!(served(Some("HZ"), 1), b);
    }

    #[test]
    fn one_account_takes_its_token_or_any_when_it_has_none() {
        let strict = Simulator::new(
            vec![image("a", "HZ")],
            SimOptions {
                token: Some("secret".into()),
                ..SimOptions::default()
            },
        );
        assert!(strict
            .admit(request(), "secret", None, 1)
            .inventory
            .is_some());
        assert!(strict
            .admit(request(), "other", None, 1)
            .inventory
            .is_none());
        let lenient = Simulator::new(vec![image("a", "HZ")], SimOptions::default());
        assert!(lenient.admit(request(), "any", None, 1).inventory.is_some());
        assert!(lenient.admit(request(), "", None, 1).inventory.is_none());
        let log = lenient.requests();
        assert_eq!(log[0].account.as_deref(), Some(DEFAULT_ACCOUNT));
        assert_eq!(log[1].account, None);
    }

    #[test]
    fn each_token_opens_its_own_account_and_is_counted_under_it() {
        let sim = Simulator::with_accounts(
            vec![
                SimAccount::new("a", "token-a", vec![image("a1", "HZ")]),
                SimAccount::new("b", "token-b", vec![image("b1", "HZ"), image("b2", "SH")]),
            ],
            AuthStyle::Body,
        )
        .unwrap();
        assert_eq!(sim.accounts(), ["a", "b"]);
        assert_eq!(
            served(&sim.admit(request(), "token-a", Some("HZ"), 1)).len(),
            1
        );
        assert_eq!(
            served(&sim.admit(request(), "token-b", Some("HZ"), 1)).len(),
            2
        );
        sim.admit(request(), "token-b", Some("HZ"), 2);
        assert!(sim
            .admit(request(), "token-c", Some("HZ"), 1)
            .inventory
            .is_none());
        let counts = sim.request_counts();
        let count = |a: &str, dc: &str| counts.get(&(a.into(), dc.into())).copied();
        assert_eq!(count("a", "HZ"), Some(1));
        assert_eq!(count("b", "HZ"), Some(2));
        assert_eq!(count("", "HZ"), Some(1), "the unknown token");
        let accounts: Vec<Option<String>> = sim.requests().into_iter().map(|r| r.account).collect();
        assert_eq!(
            accounts,
            [Some("a".into()), Some("b".into()), Some("b".into()), None]
        );
        sim.set_account_images("a", Vec::new()).unwrap();
        assert!(sim.account_images("a").unwrap().is_empty());
        assert_eq!(sim.account_images("b").unwrap().len(), 2);
        assert_eq!(
            sim.set_account_images("c", Vec::new()),
            Err(AccountError::Unknown("c".into()))
        );
        sim.clear_requests();
        assert!(sim.request_counts().is_empty());
    }

    #[test]
    fn accounts_that_cannot_be_told_apart_are_refused_without_their_tokens() {
        let two = |a: (&str, &str), b: (&str, &str)| {
            Simulator::with_accounts(
                vec![
                    SimAccount::new(a.0, a.1, Vec::new()),
                    SimAccount::new(b.0, b.1, Vec::new()),
                ],
                AuthStyle::Http,
            )
            .map(|_| ())
        };
        assert_eq!(
            two(("a", "t1"), ("a", "t2")),
            Err(AccountError::DuplicateName("a".into()))
        );
        let same = two(("a", "s3cret"), ("b", "s3cret")).unwrap_err();
        assert_eq!(same, AccountError::DuplicateToken("a".into(), "b".into()));
        assert!(!same.to_string().contains("s3cret"));
        assert_eq!(
            two(("a", "t1"), ("b", "")),
            Err(AccountError::EmptyToken("b".into()))
        );
        assert_eq!(
            Simulator::with_accounts(Vec::new(), AuthStyle::Http).map(|_| ()),
            Err(AccountError::NoAccounts)
        );
    }

    #[test]
    fn key_churn_numbers_passes_or_requests() {
        let sim = Simulator::new(vec![image("a", "HZ")], SimOptions::default());
        sim.set_faults(Faults {
            rules: vec![FaultRule::always(FaultAction::KeyChurn {
                per_request: false,
            })],
            ..Faults::default()
        });
        let suffix = |page| {
            sim.admit(request(), "t", None, page)
                .effects
                .bends
                .key_suffix
        };
        assert_eq!(
            [suffix(1), suffix(2), suffix(1)],
            [Some(1), Some(1), Some(2)]
        );
        sim.set_faults(Faults {
            rules: vec![FaultRule::always(FaultAction::KeyChurn {
                per_request: true,
            })],
            ..Faults::default()
        });
        let (first, second) = (suffix(2), suffix(2));
        assert_ne!(first, second);
    }

    #[test]
    fn evolution_moves_every_account() {
        let images = generate(&GenerateOptions {
            images: 300,
            now_ms: 1_000_000,
            ..GenerateOptions::default()
        });
        let sim = Simulator::with_accounts(
            vec![
                SimAccount::new("a", "ta", images.clone()),
                SimAccount::new("b", "tb", images.clone()),
            ],
            AuthStyle::Http,
        )
        .unwrap();
        let change = sim.evolve(2_000_000);
        assert!(change.created >= 2, "{change:?}");
        for name in ["a", "b"] {
            assert_ne!(*sim.account_images(name).unwrap(), images, "{name}");
        }
    }
}
