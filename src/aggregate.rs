//! Aggregation of image items into groups: pure, no I/O.
//!
//! Items stream in page by page; an [`Aggregator`] keeps one [`GroupStats`] per
//! (datacenter, status, image type) and the hashes of the ids it has seen, so that
//! an item repeated across pages counts once. Its memory grows with the number of
//! groups plus eight bytes per image id, never with the items themselves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Image status, as the upstream codes it (0 creating, 1 available, 2 failed, 3 expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// 0: being created.
    Creating,
    /// 1: usable.
    Available,
    /// 2: creation failed.
    Failed,
    /// 3: expired.
    Expired,
    /// Any other code, or none.
    Unknown,
}

impl Status {
    /// Every status, in label order.
    pub const ALL: [Status; 5] = [
        Status::Creating,
        Status::Available,
        Status::Failed,
        Status::Expired,
        Status::Unknown,
    ];

    /// Maps an upstream status code.
    pub fn from_code(code: i64) -> Status {
        match code {
            0 => Status::Creating,
            1 => Status::Available,
            2 => Status::Failed,
            3 => Status::Expired,
            _ => Status::Unknown,
        }
    }

    /// The upstream code for a known status (used as the `status` filter).
    pub fn code(self) -> Option<u8> {
        match self {
            Status::Creating => Some(0),
            Status::Available => Some(1),
            Status::Failed => Some(2),
            Status::Expired => Some(3),
            Status::Unknown => None,
        }
    }

    /// The `status` label value.
    pub fn label(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Available => "available",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::Unknown => "unknown",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Item fields that can be unreadable; the `field` label of
/// `finovy_api_invalid_items_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// `id`: missing or not a string/number (the item cannot be de-duplicated).
    Id,
    /// `imageType`: not a string.
    ImageType,
    /// `imageSize`: missing, not a non-negative decimal.
    ImageSize,
    /// `datacenterKey`: missing or not a string, when discovering.
    DatacenterKey,
    /// `status`: missing or not an integer.
    Status,
    /// `createTime`: missing or not an integer of milliseconds.
    CreateTime,
}

impl Field {
    /// Every field, in label order.
    pub const ALL: [Field; 6] = [
        Field::Id,
        Field::ImageType,
        Field::ImageSize,
        Field::DatacenterKey,
        Field::Status,
        Field::CreateTime,
    ];

    /// The upstream field name, used as the label value.
    pub fn label(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::ImageType => "imageType",
            Field::ImageSize => "imageSize",
            Field::DatacenterKey => "datacenterKey",
            Field::Status => "status",
            Field::CreateTime => "createTime",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

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
}

impl Item {
    /// Marks `field` as unreadable.
    pub fn mark_invalid(&mut self, field: Field) {
        self.invalid |= field.bit();
    }

    /// The unreadable fields.
    pub fn invalid_fields(&self) -> impl Iterator<Item = Field> + '_ {
        Field::ALL
            .into_iter()
            .filter(move |f| self.invalid & f.bit() != 0)
    }
}

/// Totals of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupStats {
    /// Number of images.
    pub count: u64,
    /// Sum of their sizes, bytes.
    pub size_bytes: u64,
    /// Smallest `createTime` (Unix ms) among them, when any was readable.
    pub oldest_created_ms: Option<i64>,
}

impl GroupStats {
    fn add(&mut self, item: &Item) {
        self.count += 1;
        self.size_bytes = self.size_bytes.saturating_add(item.size_bytes);
        self.note_created(item.created_ms);
    }

    fn merge(&mut self, other: &GroupStats) {
        self.count += other.count;
        self.size_bytes = self.size_bytes.saturating_add(other.size_bytes);
        self.note_created(other.oldest_created_ms);
    }

    fn note_created(&mut self, created: Option<i64>) {
        if let Some(created) = created {
            self.oldest_created_ms =
                Some(self.oldest_created_ms.map_or(created, |o| o.min(created)));
        }
    }
}

/// Equal strings, told quickly when they are the same string (shared labels).
fn same_str(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// Key of a group inside one datacenter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// `status` label.
    pub status: Status,
    /// `image_type` label (`unknown` for an empty type).
    pub image_type: String,
}

/// The result of one datacenter: its groups, in label order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatacenterImages {
    /// Groups, sorted by status then image type.
    pub groups: BTreeMap<GroupKey, GroupStats>,
}

impl DatacenterImages {
    /// Number of images over all groups.
    pub fn total_images(&self) -> u64 {
        self.groups.values().map(|g| g.count).sum()
    }
}

/// Label value for the image type: upstream's `imageType`, `unknown` when empty.
pub fn image_type_label(raw: &str) -> &str {
    if raw.is_empty() {
        "unknown"
    } else {
        raw
    }
}

/// Hasher for ids that are already hashes: passes the u64 through.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A fast, non-keyed hasher for the few short strings used as group keys (the
/// FxHash mixing step). Ids are not hashed with it: they need SipHash's spread.
#[derive(Default)]
struct GroupKeyHasher(u64);

impl Hasher for GroupKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

type IdSet = HashSet<u64, BuildHasherDefault<IdentityHasher>>;
type TypeGroups = HashMap<String, [GroupStats; 5], BuildHasherDefault<GroupKeyHasher>>;

/// What [`Aggregator::add`] did with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Counted.
    New,
    /// Its id was seen before: not counted again.
    Duplicate,
}

/// Streams items into per-datacenter groups, counting each id once.
#[derive(Debug, Default)]
pub struct Aggregator {
    datacenters: HashMap<String, TypeGroups, BuildHasherDefault<GroupKeyHasher>>,
    seen: IdSet,
    unique: u64,
    duplicates: u64,
    invalid: [u64; Field::ALL.len()],
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prepares room for about `n` ids, so the set does not grow in steps.
    pub fn reserve(&mut self, n: usize) {
        self.seen.reserve(n.saturating_sub(self.seen.len()));
    }

    /// Adds one item to `datacenter`'s groups unless its id was seen already.
    pub fn add(&mut self, datacenter: &str, item: &Item) -> Added {
        let duplicates = self.duplicates;
        self.add_page([(datacenter, item)]);
        if self.duplicates > duplicates {
            Added::Duplicate
        } else {
            Added::New
        }
    }

    /// Adds a page of items, each to the groups of the datacenter paired with it,
    /// skipping ids seen already. Items are first summed per group within the
    /// page (a page has few groups, and items of one group share their strings),
    /// so the group tables are looked up once per group rather than per item.
    pub fn add_page<'a>(&mut self, items: impl IntoIterator<Item = (&'a str, &'a Item)>) {
        // Past this many groups in one page, sums are moved to the tables early.
        const PAGE_GROUPS: usize = 32;
        let mut page: Vec<(&str, &str, [GroupStats; 5])> = Vec::new();
        for (datacenter, item) in items {
            if let Some(id) = item.id {
                if !self.seen.insert(id) {
                    self.duplicates += 1;
                    continue;
                }
            }
            self.unique += 1;
            if item.invalid != 0 {
                for field in item.invalid_fields() {
                    self.invalid[field as usize] += 1;
                }
            }
            let label = image_type_label(&item.image_type);
            let slot = match page
                .iter()
                .position(|(dc, ty, _)| same_str(dc, datacenter) && same_str(ty, label))
            {
                Some(slot) => slot,
                None => {
                    if page.len() == PAGE_GROUPS {
                        self.merge(page.drain(..));
                    }
                    page.push((datacenter, label, Default::default()));
                    page.len() - 1
                }
            };
            page[slot].2[item.status.index()].add(item);
        }
        self.merge(page);
    }

    fn merge<'a>(&mut self, groups: impl IntoIterator<Item = (&'a str, &'a str, [GroupStats; 5])>) {
        for (datacenter, label, sums) in groups {
            let types = match self.datacenters.get_mut(datacenter) {
                Some(types) => types,
                None => self.datacenters.entry(datacenter.to_string()).or_default(),
            };
            let stats = match types.get_mut(label) {
                Some(stats) => stats,
                None => types.entry(label.to_string()).or_default(),
            };
            for (total, sum) in stats.iter_mut().zip(&sums) {
                total.merge(sum);
            }
        }
    }

    /// Whether `item` would count if added now: its id was not seen, or it has none.
    pub fn is_new(&self, item: &Item) -> bool {
        item.id.is_none_or(|id| !self.seen.contains(&id))
    }

    /// Items counted (unique ids, plus items without a readable id).
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Items skipped because their id was seen before.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Counted items with an unreadable field, per field.
    pub fn invalid(&self) -> impl Iterator<Item = (Field, u64)> + '_ {
        Field::ALL.into_iter().zip(self.invalid.iter().copied())
    }

    /// The result, one entry per datacenter seen.
    pub fn finish(self) -> BTreeMap<String, DatacenterImages> {
        self.datacenters
            .into_iter()
            .map(|(dc, types)| {
                let mut images = DatacenterImages::default();
                for (image_type, per_status) in types {
                    for status in Status::ALL {
                        let stats = per_status[status.index()];
                        if stats.count > 0 {
                            let key = GroupKey {
                                status,
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
    fn a_page_of_many_groups_sums_like_items_one_by_one() {
        // 3 datacenters × 30 types × 2 statuses: more groups than a page sums
        // locally before moving them to the tables, and items of a group spread
        // over the page.
        let items: Vec<(String, Item)> = (0..720u64)
            .map(|i| {
                let dc = format!("DC{}", i % 3);
                let ty = format!("T{}", (i / 3) % 30);
                let status = if i % 7 == 0 {
                    Status::Failed
                } else {
                    Status::Available
                };
                let it = item(i % 700, &dc, &ty, status, i, 1_000 - i as i64);
                (dc, it)
            })
            .collect();
        let mut by_page = Aggregator::new();
        by_page.add_page(items.iter().map(|(dc, it)| (dc.as_str(), it)));
        let mut one_by_one = Aggregator::new();
        for (dc, it) in &items {
            one_by_one.add(dc, it);
        }
        assert_eq!(by_page.unique(), 700);
        assert_eq!(by_page.duplicates(), 20);
        let (by_page, one_by_one) = (by_page.finish(), one_by_one.finish());
        assert_eq!(by_page.values().map(|d| d.groups.len()).sum::<usize>(), 180);
        assert_eq!(by_page, one_by_one);
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
        agg.add("HZ", &no_id);
        agg.add("HZ", &no_id);
        assert_eq!(agg.unique(), 3);
        assert_eq!(agg.duplicates(), 1);
        assert_eq!(agg.invalid().find(|(f, _)| *f == Field::Id).unwrap().1, 2);
        assert_eq!(agg.finish()["HZ"].total_images(), 3);
    }

    #[test]
    fn is_new_tells_whether_an_item_would_count() {
        let mut agg = Aggregator::new();
        let a = item(7, "HZ", "W", Status::Available, 1, 1);
        assert!(agg.is_new(&a));
        agg.add("HZ", &a);
        assert!(!agg.is_new(&a));
        let mut no_id = a.clone();
        no_id.id = None;
        assert!(agg.is_new(&no_id), "an item without id always counts");
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
}
