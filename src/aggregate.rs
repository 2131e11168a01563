//! Aggregation of image items into groups: pure, no I/O.
//!
//! Items stream in page by page; an [`Aggregator`] keeps one [`GroupStats`] per
//! (datacenter, status, image type) and, per datacenter, the hashes of the ids it
//! has seen, so that an item repeated across pages counts once. Ids are told apart
//! per datacenter: in discovery, two datacenters whose ids overlap both keep their
//! images. Memory grows with the number of groups plus about sixteen bytes per
//! image id, never with the items themselves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

pub use crate::labels::{Field, Status};
use crate::lifecycle::{Census, CensusBuilder};

/// One image, reduced to what the aggregates need.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Hash of the upstream `id`, for de-duplication; `None` when unreadable.
    pub id: Option<u64>,
    /// Upstream `datacenterKey`, when readable (shared: a page has few).
    pub datacenter_key: Option<Arc<str>>,
    /// Upstream `imageType`; empty when missing (shared: a page has few).
    pub image_type: Arc<str>,
    /// Status.
    pub status: Status,
    /// Size in bytes; 0 when unreadable.
    pub size_bytes: u64,
    /// `createTime` in Unix milliseconds, when readable.
    pub created_ms: Option<i64>,
    /// Fields that could not be read, as a bit set of [`Field`].
    pub invalid: u8,
    /// What `finovy_image_info` names the image by; only decoded for the
    /// statuses that collector asks for, `None` otherwise (memory stays flat).
    pub details: Option<Box<ItemDetails>>,
}

/// The names of one image, for `finovy_image_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemDetails {
    /// The upstream `id`, as text.
    pub id: String,
    /// `imageId`, as its JSON text (empty when missing).
    pub image_id: String,
    /// `imageName` (empty when missing).
    pub image_name: String,
}

/// A bit set of statuses (bit [`Status::index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet(pub u8);

impl StatusSet {
    /// Whether `status` is in the set.
    pub fn contains(self, status: Status) -> bool {
        self.0 & (1 << status.index()) != 0
    }

    /// The set of `statuses`.
    pub fn of(statuses: &[Status]) -> Self {
        StatusSet(statuses.iter().fold(0, |m, s| m | (1 << s.index())))
    }
}

/// One image named by `finovy_image_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedImage {
    /// The datacenter it counts under.
    pub datacenter: String,
    /// `createTime`, Unix milliseconds (`i64::MAX` when unreadable: newest).
    pub created_ms: i64,
    /// Status.
    pub status: Status,
    /// `imageType` label.
    pub image_type: String,
    /// Its names.
    pub details: ItemDetails,
}

impl Item {
    /// Marks `field` as unreadable.
    pub fn mark_invalid(&mut self, field: Field) {
        self.invalid |= bit(field);
    }

    /// The unreadable fields.
    pub fn invalid_fields(&self) -> impl Iterator<Item = Field> + '_ {
        Field::ALL
            .iter()
            .copied()
            .filter(move |f| self.invalid & bit(*f) != 0)
    }
}

fn bit(field: Field) -> u8 {
    1 << field.index()
}

/// Totals of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupStats {
    /// Number of images.
    pub count: u64,
    /// Sum of their sizes, bytes. A sum of 64-bit sizes can pass 2^64 (five
    /// images of 8×10^9 GiB do), so it is kept in 128 bits: it never saturates,
    /// and `finovy_images_size_bytes` prints it exactly (Prometheus keeps the
    /// nearest float64, 15–17 significant digits).
    pub size_bytes: u128,
    /// `createTime` of the oldest image with a valid one, Unix milliseconds.
    pub oldest_created_ms: Option<i64>,
}

impl GroupStats {
    fn add(&mut self, item: &Item) {
        self.count += 1;
        self.size_bytes += u128::from(item.size_bytes);
        self.note_created(item.created_ms);
    }

    /// Adds another group's totals to this one (used when groups are folded).
    pub fn merge(&mut self, other: &GroupStats) {
        self.count += other.count;
        self.size_bytes += other.size_bytes;
        self.note_created(other.oldest_created_ms);
    }

    fn note_created(&mut self, created: Option<i64>) {
        if let Some(created) = created {
            self.oldest_created_ms =
                Some(self.oldest_created_ms.map_or(created, |o| o.min(created)));
        }
    }
}

/// Key of a group inside one datacenter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// `status` label.
    pub status: Status,
    /// `image_type` label (`unknown` for an empty type).
    pub image_type: String,
}

/// Upper bounds of the age buckets, seconds: 1h, 6h, 1d, 7d, 30d, 90d, 180d,
/// 365d (and `+Inf` beyond).
pub const AGE_BUCKETS_SECONDS: [u64; 8] = [
    3600,
    6 * 3600,
    86_400,
    7 * 86_400,
    30 * 86_400,
    90 * 86_400,
    180 * 86_400,
    365 * 86_400,
];

/// The ages of a status's images at one pass: a histogram of now − createTime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgeHistogram {
    /// Images per bucket (not cumulative); the last is beyond the last bound.
    pub buckets: [u64; AGE_BUCKETS_SECONDS.len() + 1],
    /// Sum of the ages, milliseconds (128 bits: no sum saturates).
    pub sum_ms: u128,
}

impl AgeHistogram {
    /// Counts one image of `age_ms` (a negative age, clocks apart, counts as 0).
    pub fn observe(&mut self, age_ms: i64) {
        let age_ms = age_ms.max(0) as u64;
        let i = AGE_BUCKETS_SECONDS
            .iter()
            .position(|b| age_ms <= b * 1000)
            .unwrap_or(AGE_BUCKETS_SECONDS.len());
        self.buckets[i] += 1;
        self.sum_ms += u128::from(age_ms);
    }

    /// Adds another histogram (used when datacenters are folded).
    pub fn merge(&mut self, other: &AgeHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ms += other.sum_ms;
    }

    /// Images observed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// The result of one datacenter: its groups, in label order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatacenterImages {
    /// Groups, sorted by status then image type.
    pub groups: BTreeMap<GroupKey, GroupStats>,
    /// Ages per status of the images with a readable `createTime`; empty unless
    /// the age collector is on ([`Options::ages_at_ms`]).
    pub ages: BTreeMap<Status, AgeHistogram>,
}

impl DatacenterImages {
    /// Number of images over all groups.
    pub fn total_images(&self) -> u64 {
        self.groups.values().map(|g| g.count).sum()
    }
}

pub use crate::labels::image_type_label;

/// Hasher for ids that are already hashes: passes the u64 through.
/// What adding one item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Its id was not seen before in this datacenter: it counts, and it makes its
    /// page "new" (paging goes on).
    New,
    /// Its id was seen before: it does not count again.
    Duplicate,
    /// It has no id: it counts, but it cannot tell whether the page is new, so it
    /// never keeps paging going by itself.
    Anonymous,
}

/// The sums of one datacenter during a pass.
#[derive(Debug, Default)]
struct DatacenterSums {
    /// Id hashes seen so far in this datacenter.
    seen: HashSet<u64>,
    /// Per image type label, one total per status (indexed by [`Status::index`]).
    types: HashMap<String, [GroupStats; Status::ALL.len()]>,
    /// Ages per status (indexed by [`Status::index`]), when asked for.
    ages: [AgeHistogram; Status::ALL.len()],
}

/// What a pass gathers beyond the groups. Both are off by default, and then
/// cost nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Keep a [`Census`] of every identified image (the lifecycle collector).
    pub census: bool,
    /// Histogram the ages of the images as of this time, Unix milliseconds
    /// (the age collector).
    pub ages_at_ms: Option<i64>,
    /// Keep the names of at most this many images with [`Item::details`],
    /// oldest first (the image-info collector); 0: none.
    pub named: usize,
}

/// Sums items into groups, counting each id once per datacenter.
#[derive(Debug, Default)]
pub struct Aggregator {
    datacenters: HashMap<String, DatacenterSums>,
    unique: u64,
    duplicates: u64,
    invalid: [u64; Field::ALL.len()],
    census: Option<CensusBuilder>,
    ages_at_ms: Option<i64>,
    named_limit: usize,
    /// The oldest named images so far: a max-heap on (createTime, order seen),
    /// so the newest is dropped first when it is over the limit.
    named: std::collections::BinaryHeap<(i64, u64, NamedOrd)>,
}

/// A [`NamedImage`] in the heap, ordered by the heap's key alone.
#[derive(Debug)]
struct NamedOrd(NamedImage);

impl PartialEq for NamedOrd {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for NamedOrd {}
impl PartialOrd for NamedOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for NamedOrd {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty aggregator that also gathers what `options` ask for.
    pub fn with_options(options: Options) -> Self {
        Aggregator {
            census: options.census.then(CensusBuilder::new),
            ages_at_ms: options.ages_at_ms,
            named_limit: options.named,
            ..Self::default()
        }
    }

    /// Adds one item under `datacenter`.
    pub fn add(&mut self, datacenter: &str, item: &Item) -> Added {
        let sums = match self.datacenters.get_mut(datacenter) {
            Some(sums) => sums,
            None => self.datacenters.entry(datacenter.to_string()).or_default(),
        };
        // With a census, it is the set of ids seen (see [`CensusBuilder`]).
        let added = match item.id {
            Some(id) => {
                let new = match self.census.as_mut() {
                    Some(census) => census.record(datacenter, id, item.status, &item.image_type),
                    None => sums.seen.insert(id),
                };
                if !new {
                    self.duplicates += 1;
                    return Added::Duplicate;
                }
                Added::New
            }
            None => Added::Anonymous,
        };
        self.unique += 1;
        for field in item.invalid_fields() {
            self.invalid[field.index()] += 1;
        }
        let label = image_type_label(&item.image_type);
        let per_status = match sums.types.get_mut(label) {
            Some(per_status) => per_status,
            None => sums.types.entry(label.to_string()).or_default(),
        };
        per_status[item.status.index()].add(item);
        if let (Some(now), Some(created)) = (self.ages_at_ms, item.created_ms) {
            sums.ages[item.status.index()].observe(now - created);
        }
        if let Some(details) = item.details.as_deref().filter(|_| self.named_limit > 0) {
            let created = item.created_ms.unwrap_or(i64::MAX);
            let newest_kept = self.named.peek().map(|(c, _, _)| *c);
            if self.named.len() < self.named_limit || newest_kept.is_some_and(|n| created < n) {
                let named = NamedImage {
                    datacenter: datacenter.to_string(),
                    created_ms: created,
                    status: item.status,
                    image_type: image_type_label(&item.image_type).to_string(),
                    details: details.clone(),
                };
                self.named.push((created, self.unique, NamedOrd(named)));
                if self.named.len() > self.named_limit {
                    self.named.pop();
                }
            }
        }
        added
    }

    /// Takes out the named images, oldest first.
    pub fn take_named(&mut self) -> Vec<NamedImage> {
        let mut named: Vec<_> = std::mem::take(&mut self.named).into_vec();
        named.sort_by_key(|(c, seq, _)| (*c, *seq));
        named.into_iter().map(|(_, _, n)| n.0).collect()
    }

    /// Whether `id` was counted in `datacenter` already.
    pub fn has_seen(&self, datacenter: &str, id: u64) -> bool {
        if let Some(census) = &self.census {
            return census.contains(datacenter, id);
        }
        self.datacenters
            .get(datacenter)
            .is_some_and(|sums| sums.seen.contains(&id))
    }

    /// Items counted (each id once per datacenter, items without id always).
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Items not counted because their id was seen before.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Counted items with an unreadable field, per field.
    pub fn invalid(&self) -> impl Iterator<Item = (Field, u64)> + '_ {
        Field::ALL.iter().copied().zip(self.invalid.iter().copied())
    }

    /// Takes the census out (`None` unless [`Options::census`]); call before
    /// [`Aggregator::finish`].
    pub fn take_census(&mut self) -> Option<Census> {
        self.census.take().map(CensusBuilder::finish)
    }

    /// The result, one entry per datacenter seen.
    pub fn finish(self) -> BTreeMap<String, DatacenterImages> {
        let ages = self.ages_at_ms.is_some();
        self.datacenters
            .into_iter()
            .map(|(dc, sums)| {
                let mut images = DatacenterImages::default();
                if ages {
                    for status in Status::ALL {
                        let h = sums.ages[status.index()];
                        if h.count() > 0 {
                            images.ages.insert(*status, h);
                        }
                    }
                }
                for (image_type, per_status) in sums.types {
                    for status in Status::ALL {
                        let stats = per_status[status.index()];
                        if stats.count > 0 {
                            let key = GroupKey {
                                status: *status,
                                image_type: image_type.clone(),
                            };
                            images.groups.insert(key, stats);
                        }
                    }
                }
                (dc, images)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, dc: &str, ty: &str, status: Status, size: u64, created: i64) -> Item {
        Item {
            id: Some(id),
            datacenter_key: Some(dc.into()),
            image_type: ty.into(),
            status,
            size_bytes: size,
            created_ms: Some(created),
            invalid: 0,
            details: None,
        }
    }

    #[test]
    fn groups_sum_counts_sizes_and_keep_the_oldest() {
        let mut agg = Aggregator::new();
        agg.add("HZ", &item(1, "HZ", "Windows", Status::Available, 10, 500));
        agg.add("HZ", &item(2, "HZ", "Windows", Status::Available, 5, 100));
        agg.add("HZ", &item(3, "HZ", "", Status::Creating, 7, 900));
        agg.add("SH", &item(4, "SH", "Linux", Status::Unknown, 1, 1));
        let out = agg.finish();
        let hz = &out["HZ"].groups;
        let win = hz[&GroupKey {
            status: Status::Available,
            image_type: "Windows".into(),
        }];
        assert_eq!(
            win,
            GroupStats {
                count: 2,
                size_bytes: 15,
                oldest_created_ms: Some(100)
            }
        );
        let unknown = hz[&GroupKey {
            status: Status::Creating,
            image_type: "unknown".into(),
        }];
        assert_eq!(unknown.count, 1);
        assert_eq!(out["SH"].total_images(), 1);
    }

    #[test]
    fn a_repeated_id_counts_once_and_items_without_id_always_count() {
        let mut agg = Aggregator::new();
        let a = item(7, "HZ", "W", Status::Available, 1, 1);
        assert_eq!(agg.add("HZ", &a), Added::New);
        assert_eq!(agg.add("HZ", &a), Added::Duplicate);
        let mut no_id = a.clone();
        no_id.id = None;
        no_id.mark_invalid(Field::Id);
        assert_eq!(agg.add("HZ", &no_id), Added::Anonymous);
        assert_eq!(agg.add("HZ", &no_id), Added::Anonymous);
        assert_eq!(agg.unique(), 3);
        assert_eq!(agg.duplicates(), 1);
        assert_eq!(agg.invalid().find(|(f, _)| *f == Field::Id).unwrap().1, 2);
        assert_eq!(agg.finish()["HZ"].total_images(), 3);
    }

    #[test]
    fn the_same_id_in_two_datacenters_counts_in_both() {
        let mut agg = Aggregator::new();
        let a = item(7, "HZ", "W", Status::Available, 1, 1);
        let b = item(7, "SH", "W", Status::Available, 1, 1);
        assert_eq!(agg.add("HZ", &a), Added::New);
        assert_eq!(agg.add("SH", &b), Added::New);
        assert_eq!(agg.add("SH", &b), Added::Duplicate);
        let out = agg.finish();
        assert_eq!(out["HZ"].total_images(), 1);
        assert_eq!(out["SH"].total_images(), 1);
    }

    #[test]
    fn missing_create_time_does_not_become_the_oldest() {
        let mut agg = Aggregator::new();
        let mut a = item(1, "HZ", "W", Status::Creating, 1, 50);
        agg.add("HZ", &a);
        a.id = Some(2);
        a.created_ms = None;
        agg.add("HZ", &a);
        let out = agg.finish();
        let g = out["HZ"].groups.values().next().unwrap();
        assert_eq!((g.count, g.oldest_created_ms), (2, Some(50)));
    }

    #[test]
    fn ages_fall_into_their_buckets_bounds_included() {
        let now = 1_000_000_000_000;
        let mut agg = Aggregator::with_options(Options {
            ages_at_ms: Some(now),
            ..Options::default()
        });
        let hour = 3_600_000;
        let created = [now - hour, now - hour - 1, now + 5, now - 400 * 24 * hour];
        for (i, c) in created.iter().enumerate() {
            agg.add("HZ", &item(i as u64, "HZ", "W", Status::Available, 1, *c));
        }
        let mut no_time = item(99, "HZ", "W", Status::Available, 1, 0);
        no_time.created_ms = None;
        agg.add("HZ", &no_time);
        let h = agg.finish()["HZ"].ages[&Status::Available];
        assert_eq!(h.buckets, [2, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(h.sum_ms as i64, 2 * hour + 1 + 400 * 24 * hour);
    }

    #[test]
    fn the_census_holds_each_counted_id_once() {
        let mut agg = Aggregator::with_options(Options {
            census: true,
            ..Options::default()
        });
        let a = item(7, "HZ", "W", Status::Creating, 1, 1);
        agg.add("HZ", &a);
        agg.add("HZ", &a);
        let mut no_id = a.clone();
        no_id.id = None;
        agg.add("HZ", &no_id);
        let census = agg.take_census().unwrap();
        assert_eq!(census.len(), 1);
        assert!(agg.finish()["HZ"].ages.is_empty());
        assert!(Aggregator::new().take_census().is_none());
    }

    #[test]
    fn named_images_are_the_oldest_up_to_the_limit() {
        let mut agg = Aggregator::with_options(Options {
            named: 2,
            ..Options::default()
        });
        for (id, created) in [(1, 500), (2, 100), (3, 900), (4, 300)] {
            let mut a = item(id, "HZ", "W", Status::Creating, 1, created);
            a.details = Some(Box::new(ItemDetails {
                id: format!("i-{id}"),
                image_id: id.to_string(),
                image_name: String::new(),
            }));
            agg.add("HZ", &a);
        }
        agg.add("HZ", &item(5, "HZ", "W", Status::Creating, 1, 1));
        let ids: Vec<String> = agg.take_named().into_iter().map(|n| n.details.id).collect();
        assert_eq!(
            ids,
            ["i-2", "i-4"],
            "oldest first; items without details never"
        );
    }
}
