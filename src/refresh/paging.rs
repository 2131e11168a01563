//! Paging through the whole image list of one target, aggregating while pages
//! stream in.
//!
//! Page 1 gives `totalCounts` and the page size the server really uses (it may
//! cap `pageSize`). The planned pages 2..N are then fetched a window at a time
//! (the account's concurrency), each folded into the [`Aggregator`] as it arrives,
//! so memory follows the number of groups and ids, not of items.
//!
//! Nothing the upstream says is trusted to end the pass, so one rule bounds it: the
//! pass stops at the first page, planned or not, that brings no image id not seen
//! before in this pass. An empty page, a page repeated past the end (MyBatis
//! PageHelper's "reasonable" mode), or a page of items without ids all end it, so a
//! `totalCounts` of 10^12 costs the pages really there plus the requests already
//! in flight. A page that ends the pass is never counted: its items were either
//! seen already or cannot be told apart from those that were.
//!
//! When the planned pages bring fewer ids than `totalCounts`, or every page came
//! back full (the end of the list was never seen), paging goes on one page at a
//! time under the same rule, up to a bound derived from `totalCounts`. Whatever
//! looked inconsistent is reported as an [`Anomaly`].
//!
//! An upstream that claims 10^12 images and sends new ids on every page would
//! pass every rule above, so [`Bounds`] caps a pass whatever the upstream says:
//! at most [`MAX_IMAGES`] distinct ids held and [`MAX_PAGES`] pages read. A pass
//! that reaches either fails with [`FetchError::Unbounded`] (reason `limit`,
//! anomaly `page_limit`) instead of publishing a part of a list that does not
//! end; docs/bounds.md says why these numbers.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::aggregate::{Added, Aggregator, DatacenterImages, Field, NamedImage, Options};
use crate::labels::Anomaly;
use crate::lifecycle::Census;
use crate::upstream::{ApiClient, Budget, FetchError, Page};

/// Pages one pass reads at most, whatever `totalCounts` claims (10 million images
/// at the default page size, or [`MAX_IMAGES`] at pages of 10).
pub const MAX_PAGES: u32 = 100_000;

/// Distinct image ids one pass holds at most, whatever the upstream claims: far
/// more than one account's images, and still only tens of MB of ids.
pub const MAX_IMAGES: u64 = 1_000_000;

/// What one pass may read at most; past either bound it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Distinct image ids held (of the datacenter asked for and foreign ones).
    pub max_images: u64,
    /// Pages read, the first one included.
    pub max_pages: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_images: MAX_IMAGES,
            max_pages: MAX_PAGES,
        }
    }
}

/// Label used for items without a readable `datacenterKey` when discovering.
pub const UNKNOWN_DATACENTER: &str = "unknown";

/// The result of a successful pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// Groups per datacenter (one entry for a datacenter target, even when empty).
    pub datacenters: BTreeMap<String, DatacenterImages>,
    /// Pages fetched (the one that ended the pass included).
    pub pages: u32,
    /// Items counted.
    pub items: u64,
    /// `totalCounts` (the largest any page reported).
    pub total: u64,
    /// Items repeated across pages, not counted again.
    pub duplicates: u64,
    /// Items of another datacenter than the one asked for, not counted.
    pub foreign: u64,
    /// The datacenter keys those foreign items named (a few, for the warning).
    pub foreign_keys: Vec<String>,
    /// Counted items with an unreadable field, per field.
    pub invalid: Vec<(Field, u64)>,
    /// What did not add up.
    pub anomalies: Vec<Anomaly>,
    /// Every identified image's status and type, when [`Options::census`] asked
    /// for it (the lifecycle collector).
    pub census: Option<Census>,
    /// The oldest images with names ([`Options::named`]), oldest first.
    pub named: Vec<NamedImage>,
}

/// Foreign datacenter keys remembered for the warning, at most.
const FOREIGN_KEYS_SHOWN: usize = 5;

/// The state of one pass while its pages come in.
struct Pass<'a> {
    /// The datacenter asked for; `None` when discovering.
    datacenter: Option<&'a str>,
    aggregator: Aggregator,
    /// Ids of foreign items: they are not counted, but a page of new foreign ids
    /// is still a new page (the datacenter's own items may follow on later pages).
    foreign_seen: HashSet<u64>,
    foreign: u64,
    foreign_keys: Vec<String>,
    first_total: u64,
    total_changed: bool,
    total: u64,
    pages: u32,
}

/// What one page brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageNews {
    /// At least one id not seen before in this pass: the page counted.
    New,
    /// Nothing new, every item had an id: the list has ended (or repeats).
    NothingNew,
    /// Nothing new, and some items had no id: whether they were seen cannot be told.
    Unknowable,
}

impl<'a> Pass<'a> {
    fn new(datacenter: Option<&'a str>, first: &Page, options: Options) -> Self {
        Pass {
            datacenter,
            aggregator: Aggregator::with_options(options),
            foreign_seen: HashSet::new(),
            foreign: 0,
            foreign_keys: Vec::new(),
            first_total: first.total,
            total_changed: false,
            total: first.total,
            pages: 0,
        }
    }

    /// Whether `page` brings an id not seen before in this pass (without
    /// counting anything).
    fn news(&self, page: &Page) -> PageNews {
        let mut anonymous = false;
        for item in &page.items {
            let Some(id) = item.id else {
                anonymous = true;
                continue;
            };
            let dc = self.datacenter_of(item);
            let seen = match dc {
                Some(dc) => self.aggregator.has_seen(dc, id),
                None => self.foreign_seen.contains(&id),
            };
            if !seen {
                return PageNews::New;
            }
        }
        if anonymous {
            PageNews::Unknowable
        } else {
            PageNews::NothingNew
        }
    }

    /// The datacenter an item counts under, or `None` for a foreign item.
    fn datacenter_of<'i>(&self, item: &'i crate::aggregate::Item) -> Option<&'i str>
    where
        'a: 'i,
    {
        match self.datacenter {
            Some(asked) => match item.datacenter_key.as_deref() {
                Some(key) if key != asked => None,
                _ => Some(asked),
            },
            None => Some(item.datacenter_key.as_deref().unwrap_or(UNKNOWN_DATACENTER)),
        }
    }

    /// Counts a page.
    fn absorb(&mut self, page: &Page) {
        self.pages += 1;
        self.note_total(page);
        for item in &page.items {
            match self.datacenter_of(item) {
                Some(dc) => {
                    let _: Added = self.aggregator.add(dc, item);
                }
                None => {
                    if item.id.is_none_or(|id| self.foreign_seen.insert(id)) {
                        self.foreign += 1;
                        let key = item.datacenter_key.as_deref().unwrap_or_default();
                        if self.foreign_keys.len() < FOREIGN_KEYS_SHOWN
                            && !self.foreign_keys.iter().any(|k| k == key)
                        {
                            self.foreign_keys.push(key.to_string());
                        }
                    }
                }
            }
        }
    }

    /// Distinct ids held by the pass.
    fn held(&self) -> u64 {
        self.aggregator.unique() + self.foreign
    }

    /// The error of a pass stopped at one of its bounds.
    fn unbounded(&self, what: &'static str, limit: u64) -> FetchError {
        FetchError::Unbounded {
            what,
            limit,
            total: self.total,
        }
    }

    /// Notes a page that ended the pass: fetched, but not counted.
    fn note_end(&mut self, page: &Page) {
        self.pages += 1;
        self.note_total(page);
    }

    fn note_total(&mut self, page: &Page) {
        self.total = self.total.max(page.total);
        self.total_changed |= page.total != self.first_total;
    }

    fn finish(mut self, cut_off: bool) -> Collected {
        let mut anomalies = Vec::new();
        if self.aggregator.duplicates() > 0 {
            anomalies.push(Anomaly::DuplicateItems);
        }
        if self.total_changed {
            anomalies.push(Anomaly::TotalChanged);
        }
        if self.aggregator.unique() + self.foreign != self.total {
            anomalies.push(Anomaly::TotalMismatch);
        }
        if cut_off {
            anomalies.push(Anomaly::PageLimit);
        }
        if self.foreign > 0 {
            anomalies.push(Anomaly::ForeignItems);
        }
        let census = self.aggregator.take_census();
        let named = self.aggregator.take_named();
        let items = self.aggregator.unique();
        let duplicates = self.aggregator.duplicates();
        let invalid = self.aggregator.invalid().filter(|(_, n)| *n > 0).collect();
        let mut datacenters = self.aggregator.finish();
        if let Some(dc) = self.datacenter {
            datacenters.entry(dc.to_string()).or_default();
        }
        Collected {
            datacenters,
            pages: self.pages,
            items,
            total: self.total,
            duplicates,
            foreign: self.foreign,
            foreign_keys: self.foreign_keys,
            invalid,
            anomalies,
            census,
            named,
        }
    }
}

/// What paging needs: the client, the account's budget, and how many pages it may
/// ask for at once (the account's configured concurrency).
#[derive(Clone)]
pub struct Pager {
    /// The account's client.
    pub client: Arc<ApiClient>,
    /// The account's request budget.
    pub budget: Arc<Budget>,
    /// Pages requested at once at most.
    pub window: usize,
}

impl Pager {
    /// Pages through the list of `datacenter` (all of them when `None`) and
    /// aggregates it.
    pub async fn collect(&self, datacenter: Option<&str>) -> Result<Collected, FetchError> {
        self.collect_with(datacenter, Options::default()).await
    }

    /// [`Pager::collect`], gathering also what `options` ask for.
    pub async fn collect_with(
        &self,
        datacenter: Option<&str>,
        options: Options,
    ) -> Result<Collected, FetchError> {
        self.collect_bounded(datacenter, options, Bounds::default())
            .await
    }

    /// [`Pager::collect_with`] within `bounds` rather than the default ones.
    pub async fn collect_bounded(
        &self,
        datacenter: Option<&str>,
        options: Options,
        bounds: Bounds,
    ) -> Result<Collected, FetchError> {
        let max_pages = bounds.max_pages.max(1);
        let first = self.fetch(datacenter, 1).await?;
        let mut pass = Pass::new(datacenter, &first, options);
        pass.absorb(&first);
        if pass.held() > bounds.max_images {
            return Err(pass.unbounded("images", bounds.max_images));
        }
        let served = first.items.len() as u64;
        if served == 0 {
            return Ok(pass.finish(false));
        }
        let page_size = u64::from(self.client.page_size());
        // The server's page size is what page 1 held, when that is less than the
        // total: a server may cap pageSize, or ignore it.
        let per_page = if first.total > served {
            served
        } else {
            page_size.max(served)
        };
        let planned = u32::try_from(first.total.div_ceil(per_page).max(1))
            .unwrap_or(u32::MAX)
            .min(max_pages);
        let limit = planned.saturating_mul(2).saturating_add(1).min(max_pages);
        // Whether a page shorter than the server's page size was seen: only then
        // is the end of the list known (see the probe below).
        let mut saw_short = served < per_page;
        drop(first);

        // Pages 2..=planned, at most `window` requested at a time; the budget
        // bounds what is really in flight over all of the account's targets.
        let mut in_flight = JoinSet::new();
        let mut next = 2u32;
        while next <= planned || !in_flight.is_empty() {
            while in_flight.len() < self.window.max(1) && next <= planned {
                let pager = self.clone();
                let dc = datacenter.map(str::to_string);
                let page_no = next;
                in_flight.spawn(async move { pager.fetch(dc.as_deref(), page_no).await });
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
            match pass.news(&page) {
                PageNews::New => {
                    saw_short |= (page.items.len() as u64) < per_page;
                    pass.absorb(&page);
                    if pass.held() > bounds.max_images {
                        in_flight.abort_all();
                        return Err(pass.unbounded("images", bounds.max_images));
                    }
                }
                news => {
                    // The end, earlier than planned: what is still in flight is
                    // not waited for, and nothing after it is asked.
                    in_flight.abort_all();
                    pass.note_end(&page);
                    let before_plan = pass.pages < planned;
                    return end_early(pass, news, before_plan);
                }
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
        //   server that ignores `pageSize`, where the plan rests on `totalCounts`.
        let honours_page_size = per_page <= page_size;
        let mut page_no = planned.saturating_add(1);
        loop {
            let counted = pass.aggregator.unique() + pass.foreign;
            if !(counted < pass.total || (!saw_short && honours_page_size)) {
                return Ok(pass.finish(false));
            }
            if page_no > limit {
                // Cut off by the plan (twice the planned pages) the pass still
                // publishes, with an anomaly; cut off by the bound it fails.
                if limit >= max_pages {
                    return Err(pass.unbounded("pages", u64::from(max_pages)));
                }
                return Ok(pass.finish(true));
            }
            let page = self.fetch(datacenter, page_no).await?;
            page_no += 1;
            match pass.news(&page) {
                PageNews::New => {
                    saw_short |= (page.items.len() as u64) < per_page;
                    pass.absorb(&page);
                    if pass.held() > bounds.max_images {
                        return Err(pass.unbounded("images", bounds.max_images));
                    }
                }
                news => {
                    pass.note_end(&page);
                    return end_early(pass, news, false);
                }
            }
        }
    }

    async fn fetch(&self, datacenter: Option<&str>, page: u32) -> Result<Page, FetchError> {
        self.client.fetch_page(&self.budget, datacenter, page).await
    }
}

/// Ends a pass at a page that brought nothing new. With every item identified,
/// that is the end of the list (cut short of the plan when `before_plan`); with
/// items without id, repeated pages cannot be told from new ones, and counting
/// either way could publish a wrong number, so the pass fails instead.
fn end_early(pass: Pass<'_>, news: PageNews, before_plan: bool) -> Result<Collected, FetchError> {
    if news == PageNews::Unknowable {
        return Err(FetchError::Decode {
            status: 200,
            msg: format!(
                "page {} brought no id not seen before and has items without an id: \
                 repeated pages cannot be told from new ones, so the numbers cannot be trusted",
                pass.pages
            ),
            body: None,
        });
    }
    Ok(pass.finish(before_plan))
}
