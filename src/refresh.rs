//! Paging through the whole image list of one datacenter (or of all, to discover
//! them), aggregating while pages stream in.
//!
//! Page 1 gives `totalCounts` and the page size the server really uses (it may
//! cap `pageSize`). The remaining pages are then fetched concurrently, within the
//! client's shared limit, and each is folded into the [`Aggregator`] as it arrives,
//! so memory follows the number of groups, not of images. A real server can shift
//! items between pages while we read, so ids are counted once and, when fewer
//! unique items than `totalCounts` have been seen, paging goes on one page at a
//! time until the count is reached, a page comes back empty, or a bound derived
//! from `totalCounts` is hit. Whatever looked inconsistent is reported as an
//! [`Anomaly`].

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::aggregate::{Aggregator, DatacenterImages, Field};
use crate::secret::Token;
use crate::upstream::{ApiClient, FetchError, Page};

/// Why a refresh failed: the `reason` label of `finovy_refresh_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The token was refused (HTTP 401/403 or `"code":401`) or could not be read.
    Auth,
    /// No answer within `--api.timeout`.
    Timeout,
    /// The connection failed or broke.
    Connect,
    /// An HTTP status other than 200.
    Http,
    /// The envelope reported an error.
    Api,
    /// The answer could not be read, or was too large.
    Decode,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 6] = [
        Reason::Auth,
        Reason::Timeout,
        Reason::Connect,
        Reason::Http,
        Reason::Api,
        Reason::Decode,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Auth => "auth",
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::Http => "http",
            Reason::Api => "api",
            Reason::Decode => "decode",
        }
    }
}

/// A sign that the pages did not add up: the `kind` label of
/// `finovy_pagination_anomalies_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Anomaly {
    /// An id came back on more than one page (counted once).
    DuplicateItems,
    /// `totalCounts` changed between pages.
    TotalChanged,
    /// The unique items seen differ from `totalCounts` at the end.
    TotalMismatch,
    /// Paging was cut off at the bound derived from `totalCounts`.
    PageLimit,
}

impl Anomaly {
    /// Every kind, in label order.
    pub const ALL: [Anomaly; 4] = [
        Anomaly::DuplicateItems,
        Anomaly::TotalChanged,
        Anomaly::TotalMismatch,
        Anomaly::PageLimit,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Anomaly::DuplicateItems => "duplicate_items",
            Anomaly::TotalChanged => "total_changed",
            Anomaly::TotalMismatch => "total_mismatch",
            Anomaly::PageLimit => "page_limit",
        }
    }
}

/// What one pass through the list is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One datacenter (`datacenterKey=…`); every item counts under its key.
    Datacenter(String),
    /// All datacenters, grouped by each item's `datacenterKey`.
    Discover,
}

/// Pages one pass reads at most, whatever `totalCounts` claims (10 million images
/// at the default page size).
pub const MAX_PAGES: u32 = 100_000;

/// Label used for items without a readable `datacenterKey` when discovering.
pub const UNKNOWN_DATACENTER: &str = "unknown";

/// The result of a successful pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// Groups per datacenter (one entry for [`Scope::Datacenter`], even when empty).
    pub datacenters: BTreeMap<String, DatacenterImages>,
    /// Pages fetched.
    pub pages: u32,
    /// Items counted.
    pub items: u64,
    /// `totalCounts` (the largest any page reported).
    pub total: u64,
    /// Items repeated across pages, not counted again.
    pub duplicates: u64,
    /// Counted items with an unreadable field, per field.
    pub invalid: Vec<(Field, u64)>,
    /// What did not add up.
    pub anomalies: Vec<Anomaly>,
}

struct Pass {
    scope: Scope,
    aggregator: Aggregator,
    first_total: u64,
    total_changed: bool,
    total: u64,
    pages: u32,
}

impl Pass {
    fn absorb(&mut self, page: &Page) {
        self.pages += 1;
        self.total = self.total.max(page.total);
        self.total_changed |= page.total != self.first_total;
        let scope = &self.scope;
        self.aggregator.add_page(page.items.iter().map(|item| {
            let dc = match scope {
                Scope::Datacenter(dc) => dc.as_str(),
                Scope::Discover => item.datacenter_key.as_deref().unwrap_or(UNKNOWN_DATACENTER),
            };
            (dc, item)
        }));
    }

    fn finish(self, cut_off: bool) -> Collected {
        let mut anomalies = Vec::new();
        if self.aggregator.duplicates() > 0 {
            anomalies.push(Anomaly::DuplicateItems);
        }
        if self.total_changed {
            anomalies.push(Anomaly::TotalChanged);
        }
        if self.aggregator.unique() != self.total {
            anomalies.push(Anomaly::TotalMismatch);
        }
        if cut_off {
            anomalies.push(Anomaly::PageLimit);
        }
        let items = self.aggregator.unique();
        let duplicates = self.aggregator.duplicates();
        let invalid = self.aggregator.invalid().filter(|(_, n)| *n > 0).collect();
        let mut datacenters = self.aggregator.finish();
        if let Scope::Datacenter(dc) = self.scope {
            datacenters.entry(dc).or_default();
        }
        Collected {
            datacenters,
            pages: self.pages,
            items,
            total: self.total,
            duplicates,
            invalid,
            anomalies,
        }
    }
}

/// Pages through the list for `scope` and aggregates it.
pub async fn collect(
    client: &Arc<ApiClient>,
    token: &Token,
    scope: Scope,
) -> Result<Collected, FetchError> {
    let dc = match &scope {
        Scope::Datacenter(dc) => Some(dc.clone()),
        Scope::Discover => None,
    };
    let first = client.fetch_page(token, dc.as_deref(), 1).await?;
    let mut pass = Pass {
        scope,
        aggregator: Aggregator::new(),
        first_total: first.total,
        total_changed: false,
        total: first.total,
        pages: 0,
    };
    pass.absorb(&first);
    let served = first.items.len() as u64;
    if served == 0 {
        return Ok(pass.finish(false));
    }
    // The server's page size is what page 1 held, when that is less than the
    // total: a server may cap pageSize, or ignore it.
    let per_page = if first.total > served {
        served
    } else {
        u64::from(client.page_size()).max(served)
    };
    let planned = u32::try_from(first.total.div_ceil(per_page).max(1))
        .unwrap_or(u32::MAX)
        .min(MAX_PAGES);
    let limit = planned.saturating_mul(2).saturating_add(1).min(MAX_PAGES);
    // Page 1 of every datacenter goes out at once; the rest of the lists is read
    // a few at a time, which keeps every request slot busy while only those few
    // hold a growing id set (memory stays flat with the number of datacenters).
    let mut turn = client.paging_turn(planned.saturating_sub(1)).await;
    // Room for every id at once rather than growing in steps (bounded, since
    // totalCounts may lie).
    pass.aggregator.reserve(
        usize::try_from(first.total)
            .unwrap_or(usize::MAX)
            .min(1 << 20),
    );
    // Whether a page shorter than the server's page size was seen: only then
    // is the end of the list known (see the probe below).
    let mut saw_short = served < per_page;
    drop(first);

    // Pages 2..=planned, at most `window` spawned at a time: the client's
    // semaphore bounds what is really in flight; the window bounds memory.
    let window = client.concurrency().max(1) as usize;
    let mut in_flight = JoinSet::new();
    let mut next = 2u32;
    let mut saw_empty = false;
    while (next <= planned && !saw_empty) || !in_flight.is_empty() {
        while in_flight.len() < window && next <= planned && !saw_empty {
            let client = Arc::clone(client);
            let token = token.clone();
            let dc = dc.clone();
            let page_no = next;
            in_flight.spawn(async move { client.fetch_page(&token, dc.as_deref(), page_no).await });
            next += 1;
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let page = match joined {
            Ok(Ok(page)) => page,
            Ok(Err(err)) => {
                in_flight.abort_all();
                return Err(err);
            }
            Err(join_err) => std::panic::resume_unwind(join_err.into_panic()),
        };
        saw_empty |= page.items.is_empty();
        saw_short |= (page.items.len() as u64) < per_page;
        pass.absorb(&page);
        // Near the end of the list, fewer requests remain than the turn's share:
        // the rest of it goes to the next list at once, so no slot waits for
        // this one to finish. One is kept to the end (the id set lives on).
        let outstanding = (planned.saturating_add(1).saturating_sub(next) as usize)
            .saturating_add(in_flight.len())
            .max(1);
        let excess = turn.num_permits().saturating_sub(outstanding);
        if excess > 0 {
            drop(turn.split(excess));
        }
    }

    // Read on, one page at a time, past the planned pages when
    // - fewer unique items than `totalCounts` were seen (items shifted or
    //   repeated), until the count is reached; or
    // - every page came back full, so the end of the list was never seen:
    //   `totalCounts` may lag behind the list by whole pages, and trusting it
    //   would drop those pages without any sign (the regression test
    //   `a_total_lying_low_by_whole_pages_is_detected`). This costs one request
    //   when the count is a multiple of the page size, and is skipped for a
    //   server that ignores `pageSize`, where the plan rests on `totalCounts` alone.
    // A page there that brings no new item is the end: an empty page, or a
    // server answering past the end with the last page again (MyBatis
    // PageHelper's "reasonable" mode), which is not an anomaly.
    let honours_page_size = per_page <= u64::from(client.page_size());
    let mut page_no = planned.saturating_add(1);
    let mut cut_off = false;
    while !saw_empty && (pass.aggregator.unique() < pass.total || (!saw_short && honours_page_size))
    {
        if page_no > limit {
            cut_off = true;
            break;
        }
        let page = client.fetch_page(token, dc.as_deref(), page_no).await?;
        page_no += 1;
        if !page.items.iter().any(|item| pass.aggregator.is_new(item)) {
            break;
        }
        saw_short |= (page.items.len() as u64) < per_page;
        pass.absorb(&page);
    }
    Ok(pass.finish(cut_off))
}
