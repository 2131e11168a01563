//! The fault language: what can go wrong with an answer of the list endpoint,
//! and which requests it goes wrong for.
//!
//! A [`Faults`] document is plain data, read from JSON (the `--faults` flag of
//! `finovy-api-sim` and `PUT /_sim/faults`) or built in Rust. Every field is
//! optional:
//!
//! ```json
//! {"latency_ms": 20,
//!  "rules": [{"datacenters": ["SH"], "page": 2, "times": 1,
//!             "action": {"kind": "status", "status": 503}},
//!            {"accounts": ["prod"], "action": {"kind": "ignore_datacenter"}}]}
//! ```
//!
//! Each [`FaultRule`] is scoped to some accounts, some datacenters, a page, the
//! next N requests or a share of them; its [`FaultAction`] (the `kind`) delays,
//! replaces or bends the answer. For every request the rules are tried in
//! order, and the ones in scope fold into what happens to it: any number of
//! delays and bends, and at most one action that replaces the whole answer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::data::SplitMix;
use super::AuthStyle;

/// Ways the simulator misbehaves; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Serve at most this many items per page, whatever `pageSize` asks.
    pub page_cap: Option<usize>,
    /// Repeat the last `overlap` items of the previous page at the start of each
    /// page after the first (as when items shift while a client pages).
    pub overlap: usize,
    /// Refuse every token, in this style.
    pub reject_token: Option<AuthStyle>,
    /// Added to every answer of the list endpoint, milliseconds.
    pub latency_ms: u64,
    /// Scoped misbehaviours, tried in order for every list request.
    pub rules: Vec<FaultRule>,
}

/// One misbehaviour and the requests it applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Only requests of these accounts (by name); empty: every account, and
    /// requests whose token matches none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
    /// Only requests for these `datacenterKey`s; empty: every request, the
    /// unfiltered ones (discovery) included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
    /// Only requests for this page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// Only the next this many matching requests; counts down to 0 (spent).
    /// `None`: for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    /// Only this share (0 to 1) of matching requests, drawn from the seeded
    /// generator. `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// What happens.
    pub action: FaultAction,
}

impl FaultRule {
    /// A rule that applies `action` to every request.
    pub fn always(action: FaultAction) -> Self {
        FaultRule {
            accounts: Vec::new(),
            datacenters: Vec::new(),
            page: None,
            times: None,
            rate: None,
            action,
        }
    }

    /// Limits the rule to one datacenter.
    pub fn datacenter(mut self, dc: &str) -> Self {
        self.datacenters = vec![dc.to_string()];
        self
    }

    /// Limits the rule to one account, by name.
    pub fn account(mut self, name: &str) -> Self {
        self.accounts = vec![name.to_string()];
        self
    }

    /// Limits the rule to one page.
    pub fn page(mut self, page: u32) -> Self {
        self.page = Some(page);
        self
    }

    /// Limits the rule to the next `n` matching requests.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// Limits the rule to a share of the matching requests.
    pub fn rate(mut self, rate: f64) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Whether a request of `account` for `datacenter` and `page` is in the
    /// rule's scope (its count and rate aside).
    fn covers(&self, account: Option<&str>, datacenter: Option<&str>, page: u32) -> bool {
        let account_ok = self.accounts.is_empty()
            || account.is_some_and(|a| self.accounts.iter().any(|n| n == a));
        // The unfiltered list (discovery) is in the scope of unscoped rules only.
        let datacenter_ok = self.datacenters.is_empty()
            || datacenter.is_some_and(|dc| self.datacenters.iter().any(|d| d == dc));
        account_ok && datacenter_ok && self.page.is_none_or(|p| p == page)
    }
}

fn every_item() -> i64 {
    1
}

/// What a fault does to an answer of the list endpoint.
///
/// Actions that bend items (`corrupt`, `id_less`, `bad_name`, `create_time`)
/// choose them by `imageId`: the items with `imageId % every == 0` (all of them
/// when `every` is 1, its default where it has one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultAction {
    /// Answer `ms` milliseconds later (then normally, unless another rule says
    /// otherwise). A long one is an upstream that answers after the client
    /// gave up.
    Delay {
        /// Milliseconds.
        ms: u64,
    },
    /// Never answer: no status line, no headers (for an hour, then the connection closes).
    Hang,
    /// Answer this HTTP status with a short error body, and `Retry-After` when given.
    Status {
        /// The status, e.g. 500, 502, 503 or 429.
        status: u16,
        /// `Retry-After` in seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
    /// Send the headers and half of the body (its `Content-Length` promising all
    /// of it), then close the connection.
    CloseMidBody,
    /// Send the headers and half of the body, then nothing more (for an hour).
    StallMidBody,
    /// HTTP 200 with a body that is not JSON (a proxy's HTML error page).
    Malformed,
    /// HTTP 200 with the first half of the JSON, correctly framed.
    Truncated,
    /// HTTP 200 with `"success":false` and this `code`.
    ApiError {
        /// The envelope's `code` (0 gives `success:false` alone).
        code: i64,
        /// The envelope's `msg`.
        #[serde(default)]
        msg: String,
    },
    /// An authentication failure in this style.
    Unauthorized {
        /// HTTP 401, or `"code":401` in a 200.
        #[serde(default)]
        style: AuthStyle,
    },
    /// `totalCounts` off by `offset` (never below 0); the items are right.
    TotalCounts {
        /// Added to the true count.
        offset: i64,
    },
    /// `totalCounts` is this number, whatever the true count (a lie such as
    /// 1,000,000,000,000 that no offset from a small inventory reaches); the
    /// items are right. With `clamp_page` it is PageHelper's flood: a huge
    /// total and the last page again for every page past the end.
    ClaimTotal {
        /// The claimed count.
        total: i64,
    },
    /// Pages after the first start `items` later: those items are never served
    /// (as when images before the cursor are deleted while a client pages).
    Skip {
        /// Items skipped.
        items: usize,
    },
    /// Pages after the first begin with the last `items` of the previous page.
    Repeat {
        /// Items repeated.
        items: usize,
    },
    /// Pages past the end answer the last page again (as MyBatis PageHelper's
    /// "reasonable" mode does) instead of an empty one.
    ClampPage,
    /// The `datacenterKey` filter is ignored (a proxy that strips it, a renamed
    /// parameter): every datacenter asked for answers the whole account, the
    /// other filters still applied.
    IgnoreDatacenter,
    /// Items have their fields bent.
    Corrupt {
        /// Which items: `imageId % every == 0`.
        every: i64,
        /// How.
        how: Corruption,
    },
    /// Items are sent without their `id`, so that repeated pages cannot be told
    /// apart from new ones.
    IdLess {
        /// Which items: `imageId % every == 0`.
        #[serde(default = "every_item")]
        every: i64,
    },
    /// Items' `imageName` holds bytes that are not valid text.
    BadName {
        /// Which bytes.
        how: BadName,
        /// Which items: `imageId % every == 0`.
        #[serde(default = "every_item")]
        every: i64,
    },
    /// Items' `createTime` is out of the documented range.
    CreateTime {
        /// How.
        how: TimeBend,
        /// Which items: `imageId % every == 0`.
        #[serde(default = "every_item")]
        every: i64,
    },
    /// Every item's `imageType` is one of `types` made-up values
    /// (`type-<imageId % types>`), so that a large inventory shows that many
    /// distinct types.
    TypeExplosion {
        /// Distinct values (at least 1).
        types: u64,
    },
    /// Every item's `datacenterKey` gets a suffix that changes on every pass
    /// (each request for page 1 of a list starts one), or on every request:
    /// an upstream whose datacenter keys never stay the same, so that
    /// discovery sees new datacenters all the time.
    KeyChurn {
        /// A new suffix on every request rather than on every pass.
        #[serde(default)]
        per_request: bool,
    },
    /// The page's item array is under another key (e.g. `data.items` instead
    /// of `data.data`).
    RenameArray {
        /// The key it is under.
        to: String,
    },
    /// The page has `data.totalCounts` but no item array at all.
    NoArray,
    /// The body starts with a UTF-8 byte order mark (`EF BB BF`).
    Bom,
    /// A well-formed page padded with made-up items to `bytes` bytes, with its
    /// `Content-Length`.
    Oversized {
        /// Body size, bytes.
        bytes: usize,
    },
    /// A page whose item list never ends (chunked, no `Content-Length`).
    Endless,
    /// An error that repeats the token the request carried, in `spelling`, in
    /// `place`: an upstream that echoes what it was sent.
    EchoToken {
        /// How the token is written.
        spelling: Spelling,
        /// Where it is written.
        place: EchoPlace,
    },
    /// Pages past the end are made-up items never served before, with the
    /// claimed `totalCounts` of another rule if any: a list that never ends.
    Invent,
}

/// How [`FaultAction::EchoToken`] writes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spelling {
    /// As it was sent.
    Literal,
    /// `/` written `\/`, as JSON allows.
    JsonSolidus,
    /// Every character as a JSON `\uXXXX` escape, lower-case hex.
    JsonUnicode,
    /// Every character as a JSON `\uXXXX` escape, hex in alternating case.
    JsonUnicodeMixedCase,
    /// Every byte percent-encoded, upper-case hex.
    PercentUpper,
    /// Every byte percent-encoded, lower-case hex.
    PercentLower,
}

impl Spelling {
    /// `token` written this way. Every spelling but `Literal` can stand inside
    /// a JSON string as it is.
    pub fn spell(self, token: &str) -> String {
        let units = || token.encode_utf16();
        match self {
            Spelling::Literal => token.to_string(),
            Spelling::JsonSolidus => token.replace('/', "\\/"),
            Spelling::JsonUnicode => units().map(|u| format!("\\u{u:04x}")).collect(),
            Spelling::JsonUnicodeMixedCase => units()
                .enumerate()
                .map(|(i, u)| match i % 2 {
                    0 => format!("\\u{u:04X}"),
                    _ => format!("\\u{u:04x}"),
                })
                .collect(),
            Spelling::PercentUpper => token.bytes().map(|b| format!("%{b:02X}")).collect(),
            Spelling::PercentLower => token.bytes().map(|b| format!("%{b:02x}")).collect(),
        }
    }
}

/// Where [`FaultAction::EchoToken`] writes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EchoPlace {
    /// The `msg` of an API error (HTTP 200, `"success":false`).
    Msg,
    /// The `traceId` of an API error.
    TraceId,
    /// The plain-text body of an HTTP 500.
    Body,
}

/// A page of [`FaultAction::Invent`]: `per_page` items whose ids belong to
/// this page number alone, in the datacenter asked for (`INV` when none was).
pub(crate) fn invented_page(
    query: &super::page::ListQuery,
    per_page: usize,
    total_counts: i64,
    trace_id: &str,
) -> Vec<u8> {
    use std::io::Write as _;
    let dc = query.datacenter().unwrap_or("INV");
    let dc = serde_json::to_string(dc).unwrap_or_else(|_| "\"INV\"".into());
    let mut body = Vec::with_capacity(200 * per_page + 200);
    let _ = write!(
        body,
        r#"{{"code":0,"success":true,"msg":"success","traceId":"{trace_id}","data":{{"totalCounts":{total_counts},"data":["#
    );
    for k in 0..per_page {
        if k > 0 {
            body.push(b',');
        }
        let n = u64::from(query.page) * per_page as u64 + k as u64;
        let _ = write!(
            body,
            r#"{{"id":"invented-{n}","imageId":{n},"imageType":"Invented","imageName":"invented-{n}","imageSize":"1.00","datacenterKey":{dc},"status":1,"createTime":1700000000000}}"#
        );
    }
    body.extend_from_slice(b"]}}");
    body
}

/// The answer of [`FaultAction::EchoToken`]: status, content type and body,
/// written by hand so that the escapes reach the wire as they are.
pub(crate) fn echo(
    token: &str,
    spelling: Spelling,
    place: EchoPlace,
) -> (u16, &'static str, String) {
    let spelled = spelling.spell(token);
    match place {
        EchoPlace::Msg => (
            200,
            "application/json",
            format!(
                r#"{{"code":500,"success":false,"data":null,"msg":"token {spelled} is not valid here","traceId":"echo-1"}}"#
            ),
        ),
        EchoPlace::TraceId => (
            200,
            "application/json",
            format!(
                r#"{{"code":500,"success":false,"data":null,"msg":"refused","traceId":"t-{spelled}"}}"#
            ),
        ),
        EchoPlace::Body => (
            500,
            "text/plain",
            format!("upstream error: request with token {spelled} was refused\n"),
        ),
    }
}

impl FaultAction {
    /// A short name, recorded with each request it applied to.
    pub fn label(&self) -> String {
        match self {
            FaultAction::Delay { ms } => format!("delay {ms}ms"),
            FaultAction::Hang => "hang".into(),
            FaultAction::Status { status, .. } => format!("status {status}"),
            FaultAction::CloseMidBody => "close_mid_body".into(),
            FaultAction::StallMidBody => "stall_mid_body".into(),
            FaultAction::Malformed => "malformed".into(),
            FaultAction::Truncated => "truncated".into(),
            FaultAction::ApiError { code, .. } => format!("api_error {code}"),
            FaultAction::Unauthorized { style } => format!("unauthorized {style:?}"),
            FaultAction::TotalCounts { offset } => format!("total_counts {offset:+}"),
            FaultAction::ClaimTotal { total } => format!("claim_total {total}"),
            FaultAction::Skip { items } => format!("skip {items}"),
            FaultAction::Repeat { items } => format!("repeat {items}"),
            FaultAction::ClampPage => "clamp_page".into(),
            FaultAction::IgnoreDatacenter => "ignore_datacenter".into(),
            FaultAction::Corrupt { every, how } => format!("corrupt {how:?} every {every}"),
            FaultAction::IdLess { every } => format!("id_less every {every}"),
            FaultAction::BadName { how, every } => format!("bad_name {how:?} every {every}"),
            FaultAction::CreateTime { how, every } => format!("create_time {how:?} every {every}"),
            FaultAction::TypeExplosion { types } => format!("type_explosion {types}"),
            FaultAction::KeyChurn { per_request } => match per_request {
                true => "key_churn per request".into(),
                false => "key_churn per pass".into(),
            },
            FaultAction::RenameArray { to } => format!("rename_array {to}"),
            FaultAction::NoArray => "no_array".into(),
            FaultAction::Bom => "bom".into(),
            FaultAction::Oversized { bytes } => format!("oversized {bytes}"),
            FaultAction::Endless => "endless".into(),
            FaultAction::EchoToken { spelling, place } => {
                format!("echo_token {spelling:?} in {place:?}")
            }
            FaultAction::Invent => "invent".into(),
        }
    }
}

/// How [`FaultAction::Corrupt`] bends an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corruption {
    /// Every field the exporter reads has a type it cannot read (`"imageSize":true`,
    /// `"status":"x"`, an object for `id`…).
    WrongType,
    /// Only `imageName` and `imageId` are left.
    Missing,
    /// Readable, but not as documented: numbers as strings and strings as numbers.
    Loose,
}

/// What [`FaultAction::BadName`] puts at the end of an `imageName`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadName {
    /// `caf` and the Latin-1 byte `E9` (é), which is not UTF-8.
    Latin1,
    /// The escape `\ud800`: half of a UTF-16 surrogate pair, which JSON allows
    /// to be written but no text can hold.
    LoneSurrogate,
}

/// How [`FaultAction::CreateTime`] bends a `createTime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeBend {
    /// Unix seconds instead of milliseconds (a date in January 1970).
    Seconds,
    /// Milliseconds in the year 287,000 or so: `9_000_000_000_000_000`.
    FarFuture,
}

/// Where a page's items are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ArrayKey {
    /// `data.data`, as documented.
    #[default]
    Documented,
    /// Under another key.
    Renamed(String),
    /// Nowhere.
    Missing,
}

/// How the items of a page are bent; each applies to the items it selects.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ItemBends {
    /// [`FaultAction::Corrupt`]: its `every` and how.
    pub corrupt: Option<(i64, Corruption)>,
    /// [`FaultAction::IdLess`]: its `every`.
    pub id_less: Option<i64>,
    /// [`FaultAction::BadName`]: how, and its `every`.
    pub bad_name: Option<(BadName, i64)>,
    /// [`FaultAction::CreateTime`]: how, and its `every`.
    pub create_time: Option<(TimeBend, i64)>,
    /// [`FaultAction::TypeExplosion`]: distinct types.
    pub types: Option<u64>,
    /// [`FaultAction::KeyChurn`]: the suffix of every `datacenterKey`.
    pub key_suffix: Option<u64>,
}

impl ItemBends {
    /// Whether no item is bent, so that images are written as they are.
    pub fn is_none(&self) -> bool {
        *self == ItemBends::default()
    }
}

/// Whether `every` selects the item with `image_id`.
pub(crate) fn selects(every: i64, image_id: i64) -> bool {
    every > 0 && image_id.rem_euclid(every) == 0
}

/// What the rules in force make of one request, before the answer is built.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Effects {
    pub delay: Duration,
    /// The action that replaces the answer, if any.
    pub replace: Option<FaultAction>,
    pub total_offset: i64,
    pub claim_total: Option<i64>,
    pub skip: usize,
    pub repeat: usize,
    pub clamp: bool,
    pub ignore_datacenter: bool,
    pub page_cap: Option<usize>,
    pub reject_token: Option<AuthStyle>,
    pub bends: ItemBends,
    pub array: ArrayKey,
    pub bom: bool,
    /// Whether [`FaultAction::KeyChurn`] changes keys on every request.
    pub churn_per_request: bool,
    /// [`FaultAction::Invent`]: pages past the end are made up.
    pub invent: bool,
}

/// A request as the rules see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    /// The account its token belongs to.
    pub account: Option<&'a str>,
    /// Its `datacenterKey`, `None` for the unfiltered list.
    pub datacenter: Option<&'a str>,
    pub page: u32,
}

impl Faults {
    /// Works out what the rules make of a request in `scope`, spending their
    /// counts and drawing their rates from `rng`; returns the effects and the
    /// labels of the actions applied.
    pub(crate) fn apply(&mut self, scope: Scope<'_>, rng: &mut SplitMix) -> (Effects, Vec<String>) {
        let mut effects = Effects {
            delay: Duration::from_millis(self.latency_ms),
            page_cap: self.page_cap,
            repeat: self.overlap,
            reject_token: self.reject_token,
            ..Effects::default()
        };
        let mut labels = Vec::new();
        for rule in &mut self.rules {
            if !rule.covers(scope.account, scope.datacenter, scope.page)
                || rule.times == Some(0)
                || (effects.replace.is_some() && replaces_answer(&rule.action))
            {
                continue;
            }
            if let Some(rate) = rule.rate {
                let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                if draw >= rate {
                    continue;
                }
            }
            if let Some(n) = rule.times.as_mut() {
                *n -= 1;
            }
            labels.push(rule.action.label());
            let bends = &mut effects.bends;
            match &rule.action {
                FaultAction::Delay { ms } => effects.delay += Duration::from_millis(*ms),
                FaultAction::TotalCounts { offset } => effects.total_offset += offset,
                FaultAction::ClaimTotal { total } => effects.claim_total = Some(*total),
                FaultAction::Skip { items } => effects.skip += items,
                FaultAction::Repeat { items } => effects.repeat += items,
                FaultAction::ClampPage => effects.clamp = true,
                FaultAction::IgnoreDatacenter => effects.ignore_datacenter = true,
                FaultAction::Corrupt { every, how } => bends.corrupt = Some((*every, *how)),
                FaultAction::IdLess { every } => bends.id_less = Some(*every),
                FaultAction::BadName { how, every } => bends.bad_name = Some((*how, *every)),
                FaultAction::CreateTime { how, every } => bends.create_time = Some((*how, *every)),
                FaultAction::TypeExplosion { types } => bends.types = Some((*types).max(1)),
                // The suffix itself depends on the pass, which the caller knows.
                FaultAction::KeyChurn { per_request } => {
                    bends.key_suffix = Some(0);
                    effects.churn_per_request = *per_request;
                }
                FaultAction::RenameArray { to } => effects.array = ArrayKey::Renamed(to.clone()),
                FaultAction::NoArray => effects.array = ArrayKey::Missing,
                FaultAction::Bom => effects.bom = true,
                FaultAction::Invent => effects.invent = true,
                other => effects.replace = Some(other.clone()),
            }
        }
        (effects, labels)
    }
}

/// Whether the action replaces the whole answer (only one such rule applies
/// to a request) rather than delaying or bending the page.
fn replaces_answer(action: &FaultAction) -> bool {
    matches!(
        action,
        FaultAction::Hang
            | FaultAction::Status { .. }
            | FaultAction::CloseMidBody
            | FaultAction::StallMidBody
            | FaultAction::Malformed
            | FaultAction::Truncated
            | FaultAction::ApiError { .. }
            | FaultAction::Unauthorized { .. }
            | FaultAction::Oversized { .. }
            | FaultAction::Endless
            | FaultAction::EchoToken { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope<'a>(account: Option<&'a str>, datacenter: Option<&'a str>, page: u32) -> Scope<'a> {
        Scope {
            account,
            datacenter,
            page,
        }
    }

    #[test]
    fn faults_read_from_sparse_json_and_refuse_unknown_fields() {
        let faults: Faults = serde_json::from_str("{}").unwrap();
        assert_eq!(faults, Faults::default());
        let faults: Faults = serde_json::from_str(
            r#"{"latency_ms":5,"rules":[{"datacenters":["SH"],"page":2,"times":1,
                "action":{"kind":"status","status":429,"retry_after_secs":3}},
                {"action":{"kind":"corrupt","every":2,"how":"wrong_type"}},
                {"accounts":["b"],"action":{"kind":"bad_name","how":"lone_surrogate"}},
                {"action":{"kind":"rename_array","to":"items"}}]}"#,
        )
        .unwrap();
        assert_eq!(faults.latency_ms, 5);
        assert_eq!(
            faults.rules[0],
            FaultRule::always(FaultAction::Status {
                status: 429,
                retry_after_secs: Some(3)
            })
            .datacenter("SH")
            .page(2)
            .times(1)
        );
        assert_eq!(
            faults.rules[2],
            FaultRule::always(FaultAction::BadName {
                how: BadName::LoneSurrogate,
                every: 1
            })
            .account("b")
        );
        let round_trip: Faults =
            serde_json::from_str(&serde_json::to_string(&faults).unwrap()).unwrap();
        assert_eq!(round_trip, faults);
        for bad in [
            r#"{"latency":5}"#,
            r#"{"rules":[{"action":{"kind":"explode"}}]}"#,
            r#"{"rules":[{"datacenter":"SH","action":{"kind":"hang"}}]}"#,
            r#"{"rules":[{"action":{"kind":"rename_array"}}]}"#,
            r#"{"rules":[{"action":{"kind":"create_time","how":"yesterday"}}]}"#,
        ] {
            assert!(serde_json::from_str::<Faults>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_action_reads_back_from_its_own_json() {
        let actions = [
            FaultAction::Delay { ms: 1 },
            FaultAction::Hang,
            FaultAction::Status {
                status: 503,
                retry_after_secs: None,
            },
            FaultAction::CloseMidBody,
            FaultAction::StallMidBody,
            FaultAction::Malformed,
            FaultAction::Truncated,
            FaultAction::ApiError {
                code: 500,
                msg: "x".into(),
            },
            FaultAction::Unauthorized {
                style: AuthStyle::Body,
            },
            FaultAction::TotalCounts { offset: -3 },
            FaultAction::ClaimTotal {
                total: 1_000_000_000_000,
            },
            FaultAction::Skip { items: 2 },
            FaultAction::Repeat { items: 2 },
            FaultAction::ClampPage,
            FaultAction::IgnoreDatacenter,
            FaultAction::Corrupt {
                every: 3,
                how: Corruption::Loose,
            },
            FaultAction::IdLess { every: 1 },
            FaultAction::BadName {
                how: BadName::Latin1,
                every: 2,
            },
            FaultAction::CreateTime {
                how: TimeBend::FarFuture,
                every: 5,
            },
            FaultAction::TypeExplosion { types: 50_000 },
            FaultAction::KeyChurn { per_request: true },
            FaultAction::RenameArray { to: "items".into() },
            FaultAction::NoArray,
            FaultAction::Bom,
            FaultAction::Oversized { bytes: 10 },
            FaultAction::Endless,
            FaultAction::EchoToken {
                spelling: Spelling::JsonUnicodeMixedCase,
                place: EchoPlace::TraceId,
            },
            FaultAction::Invent,
        ];
        for action in actions {
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(serde_json::from_str::<FaultAction>(&json).unwrap(), action);
        }
        let defaulted: FaultAction = serde_json::from_str(r#"{"kind":"id_less"}"#).unwrap();
        assert_eq!(defaulted, FaultAction::IdLess { every: 1 });
    }

    #[test]
    fn rules_apply_by_account_datacenter_page_and_count() {
        let mut faults = Faults {
            rules: vec![
                FaultRule::always(FaultAction::Hang)
                    .datacenter("SH")
                    .page(2)
                    .times(1),
                FaultRule::always(FaultAction::Delay { ms: 7 }),
                FaultRule::always(FaultAction::Malformed).datacenter("HZ"),
                FaultRule::always(FaultAction::IgnoreDatacenter).account("b"),
            ],
            ..Faults::default()
        };
        let mut rng = SplitMix::new(1);
        let mut apply = |s| faults.apply(s, &mut rng);
        let (effects, _) = apply(scope(None, Some("SH"), 1));
        assert_eq!(effects.replace, None);
        assert_eq!(effects.delay, Duration::from_millis(7));
        let (effects, labels) = apply(scope(None, Some("SH"), 2));
        assert_eq!(effects.replace, Some(FaultAction::Hang));
        assert_eq!(labels, ["hang", "delay 7ms"]);
        let (effects, _) = apply(scope(None, Some("SH"), 2));
        assert_eq!(effects.replace, None, "spent after one request");
        // Only one rule replaces the answer; the unfiltered list matches only
        // unscoped rules.
        let (effects, _) = apply(scope(None, Some("HZ"), 2));
        assert_eq!(effects.replace, Some(FaultAction::Malformed));
        let (effects, _) = apply(scope(None, None, 2));
        assert_eq!(effects.replace, None);
        // An account scope takes only that account's requests.
        assert!(apply(scope(Some("b"), Some("SH"), 1)).0.ignore_datacenter);
        assert!(!apply(scope(Some("a"), Some("SH"), 1)).0.ignore_datacenter);
        assert!(!apply(scope(None, Some("SH"), 1)).0.ignore_datacenter);
        assert_eq!(faults.rules[0].times, Some(0));
    }

    #[test]
    fn bends_add_up_and_one_replacement_wins() {
        let mut faults = Faults {
            rules: vec![
                FaultRule::always(FaultAction::ClaimTotal { total: 1 << 40 }),
                FaultRule::always(FaultAction::ClampPage),
                FaultRule::always(FaultAction::IdLess { every: 1 }),
                FaultRule::always(FaultAction::Bom),
                FaultRule::always(FaultAction::NoArray),
                FaultRule::always(FaultAction::Truncated),
                FaultRule::always(FaultAction::Endless),
            ],
            ..Faults::default()
        };
        let (effects, labels) = faults.apply(scope(None, None, 1), &mut SplitMix::new(1));
        assert_eq!(effects.claim_total, Some(1 << 40));
        assert!(effects.clamp && effects.bom);
        assert_eq!(effects.bends.id_less, Some(1));
        assert_eq!(effects.array, ArrayKey::Missing);
        assert_eq!(effects.replace, Some(FaultAction::Truncated));
        assert_eq!(labels.len(), 6, "{labels:?}");
    }

    #[test]
    fn a_rate_applies_to_about_that_share_of_requests() {
        let mut faults = Faults {
            rules: vec![FaultRule::always(FaultAction::Malformed).rate(0.25)],
            ..Faults::default()
        };
        let mut rng = SplitMix::new(1);
        let hits = (0..4000)
            .filter(|_| {
                faults
                    .apply(scope(None, None, 1), &mut rng)
                    .0
                    .replace
                    .is_some()
            })
            .count();
        assert!((800..1200).contains(&hits), "{hits} of 4000");
    }
}
