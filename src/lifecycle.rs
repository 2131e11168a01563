//! What changed between two complete passes of a target: pure, no I/O.
//!
//! A pass with the lifecycle collector on hands out a [`Census`]: for every image
//! id it counted, per datacenter, the image's status and type. The census of the
//! last complete pass is kept (by the target's task) until the next complete pass,
//! and [`diff`] of the two says which images were created, which were deleted, and
//! which moved from one status to another.
//!
//! A census is kept for the whole interval, so it is compact: one [`Entry`] of
//! twelve bytes per image (the id's 64-bit hash and, packed into 32 bits, the
//! status and the index of the image type in the census's own table of types), in
//! a vector sorted by id. Diffing is one merge of two sorted vectors, allocating
//! nothing per image. Items without a readable id cannot be followed from one pass
//! to the next, so they are in no census and count nowhere here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::labels::image_type_label;
use crate::labels::Status;

/// One image of a census: its id hash, status and image type, in twelve bytes
/// (three `u32`, so that a vector of them has no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    id: [u32; 2],
    /// Status index in the low [`STATUS_BITS`] bits, the type index above them.
    packed: u32,
}

const STATUS_BITS: u32 = 3;
const _: () = assert!(Status::ALL.len() <= 1 << STATUS_BITS);
const _: () = assert!(std::mem::size_of::<Entry>() == 12);

/// Image types a census tells apart at most; beyond, types share the last index
/// (the limits fold them into `other` long before).
const MAX_TYPES: u32 = (1 << (32 - STATUS_BITS)) - 1;

impl Entry {
    fn new(id: u64, status: Status, type_index: u32) -> Self {
        Entry {
            id: [(id >> 32) as u32, id as u32],
            packed: (type_index << STATUS_BITS) | status.index() as u32,
        }
    }

    /// The id hash.
    pub fn id(&self) -> u64 {
        (u64::from(self.id[0]) << 32) | u64::from(self.id[1])
    }

    /// The status.
    pub fn status(&self) -> Status {
        Status::ALL[(self.packed & ((1 << STATUS_BITS) - 1)) as usize]
    }

    fn type_index(&self) -> usize {
        (self.packed >> STATUS_BITS) as usize
    }
}

/// Every identified image of one complete pass, per datacenter, sorted by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Census {
    /// The image types the entries point into (raw upstream values).
    types: Vec<Arc<str>>,
    /// Per datacenter, the images sorted by id.
    datacenters: BTreeMap<String, Vec<Entry>>,
}

impl Census {
    /// Images in the census, over all datacenters.
    pub fn len(&self) -> usize {
        self.datacenters.values().map(Vec::len).sum()
    }

    /// Whether the census holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes the census holds (entries and type table), for measuring.
    pub fn heap_bytes(&self) -> usize {
        let entries: usize = self
            .datacenters
            .iter()
            .map(|(dc, v)| v.capacity() * std::mem::size_of::<Entry>() + dc.len())
            .sum();
        entries + self.types.iter().map(|t| t.len() + 16).sum::<usize>()
    }

    /// The image type label of an entry (`unknown` for an empty type).
    fn type_label(&self, entry: &Entry) -> &str {
        image_type_label(self.types.get(entry.type_index()).map_or("", |t| t))
    }
}

/// Builds a [`Census`] while a pass's items stream in. With the lifecycle
/// collector on it is also the pass's de-duplication (the aggregator asks it
/// instead of keeping a set of ids beside it): one map entry of sixteen bytes
/// per id during the pass, turned into twelve-byte entries at its end.
#[derive(Debug, Default)]
pub struct CensusBuilder {
    types: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
    /// Per datacenter, id hash → packed status and type.
    datacenters: HashMap<String, HashMap<u64, u32>>,
}

impl CensusBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `id` was recorded under `datacenter` already.
    pub fn contains(&self, datacenter: &str, id: u64) -> bool {
        self.datacenters
            .get(datacenter)
            .is_some_and(|ids| ids.contains_key(&id))
    }

    /// Records one image under `datacenter`; returns whether its id is new there
    /// (a repeated id keeps what it was first recorded with).
    pub fn record(
        &mut self,
        datacenter: &str,
        id: u64,
        status: Status,
        image_type: &Arc<str>,
    ) -> bool {
        let type_index = match self.index.get(&**image_type) {
            Some(i) => *i,
            None => {
                let i = (self.types.len() as u32).min(MAX_TYPES);
                if i < MAX_TYPES {
                    self.types.push(Arc::clone(image_type));
                    self.index.insert(Arc::clone(image_type), i);
                }
                i
            }
        };
        let ids = match self.datacenters.get_mut(datacenter) {
            Some(ids) => ids,
            None => self.datacenters.entry(datacenter.to_string()).or_default(),
        };
        match ids.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Entry::new(id, status, type_index).packed);
                true
            }
        }
    }

    /// The census, each datacenter's entries sorted by id. One datacenter's map
    /// is turned into its vector at a time, so both forms of the whole census are
    /// never held at once.
    pub fn finish(self) -> Census {
        let datacenters = self
            .datacenters
            .into_iter()
            .map(|(dc, ids)| {
                let mut entries = Vec::with_capacity(ids.len());
                entries.extend(ids.into_iter().map(|(id, packed)| Entry {
                    id: [(id >> 32) as u32, id as u32],
                    packed,
                }));
                entries.sort_unstable_by_key(Entry::id);
                (dc, entries)
            })
            .collect();
        Census {
            types: self.types,
            datacenters,
        }
    }
}

/// What changed in one datacenter between two passes, by label values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Images that appeared, per image type label.
    pub created: BTreeMap<String, u64>,
    /// Images that vanished, per (status they last had, image type label).
    pub deleted: BTreeMap<(Status, String), u64>,
    /// Images whose status moved, per (image type label, from, to). The type is
    /// the one of the later pass.
    pub transitions: BTreeMap<(String, Status, Status), u64>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.deleted.is_empty() && self.transitions.is_empty()
    }
}

/// The changes from `before` to `after`, per datacenter of either. A datacenter
/// only in `after` had all its images created; one only in `before` had all its
/// images deleted. An image whose type changed but whose status did not is no
/// change (no family counts type changes).
pub fn diff(before: &Census, after: &Census) -> BTreeMap<String, Changes> {
    const NONE: &[Entry] = &[];
    let mut out = BTreeMap::new();
    let mut keys: Vec<&String> = before
        .datacenters
        .keys()
        .chain(after.datacenters.keys())
        .collect();
    keys.sort();
    keys.dedup();
    for dc in keys {
        let old = before.datacenters.get(dc).map_or(NONE, Vec::as_slice);
        let new = after.datacenters.get(dc).map_or(NONE, Vec::as_slice);
        let changes = diff_sorted(before, old, after, new);
        if !changes.is_empty() {
            out.insert(dc.clone(), changes);
        }
    }
    out
}

/// One merge over two id-sorted runs.
fn diff_sorted(before: &Census, old: &[Entry], after: &Census, new: &[Entry]) -> Changes {
    let mut changes = Changes::default();
    let (mut i, mut j) = (0, 0);
    let created = |e: &Entry, c: &mut Changes| bump(&mut c.created, after.type_label(e));
    let deleted = |e: &Entry, c: &mut Changes| {
        *c.deleted
            .entry((e.status(), before.type_label(e).to_string()))
            .or_default() += 1;
    };
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.id() == n.id() => {
                if o.status() != n.status() {
                    *changes
                        .transitions
                        .entry((after.type_label(n).to_string(), o.status(), n.status()))
                        .or_default() += 1;
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.id() < n.id() => {
                deleted(o, &mut changes);
                i += 1;
            }
            (Some(o), None) => {
                deleted(o, &mut changes);
                i += 1;
            }
            (_, Some(n)) => {
                created(n, &mut changes);
                j += 1;
            }
            (None, None) => break,
        }
    }
    changes
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

/// The lifecycle counters of one datacenter.
#[derive(Debug, Clone, Default)]
pub struct LifecycleCounters {
    /// Passes that changed no counter.
    pub skipped: u64,
    /// `finovy_images_created_total`, per image type.
    pub created: BTreeMap<String, u64>,
    /// `finovy_images_deleted_total`, per (status, image type).
    pub deleted: BTreeMap<(Status, String), u64>,
    /// `finovy_image_status_transitions_total`, per (image type, from, to).
    pub transitions: BTreeMap<(String, Status, Status), u64>,
}

impl LifecycleCounters {
    /// Starts at 0 the series an alert needs before their first increase (an
    /// `increase()` over a series that appears at 1 sees nothing): per image type,
    /// created and the moves out of `creating`; per group, deleted.
    /// `groups` are a pass's (status, image type) groups.
    pub fn start<'a>(&mut self, groups: impl IntoIterator<Item = (Status, &'a String)>) {
        for (status, ty) in groups {
            self.created.entry(ty.clone()).or_default();
            self.deleted.entry((status, ty.clone())).or_default();
            for to in [Status::Available, Status::Failed] {
                self.transitions
                    .entry((ty.clone(), Status::Creating, to))
                    .or_default();
            }
        }
    }

    /// Adds `changes`, keeping at most `type_cap` image types (the rest count
    /// under `other`, as folded groups do).
    pub fn add(&mut self, changes: Changes, type_cap: usize) {
        let mut types: std::collections::BTreeSet<String> = self
            .created
            .keys()
            .cloned()
            .chain(self.deleted.keys().map(|k| k.1.clone()))
            .chain(self.transitions.keys().map(|k| k.0.clone()))
            .collect();
        let mut label = |ty: String| -> String {
            if types.contains(&ty) || types.len() < type_cap.saturating_sub(1).max(1) {
                types.insert(ty.clone());
                ty
            } else {
                crate::labels::OTHER.to_string()
            }
        };
        for (ty, n) in changes.created {
            *self.created.entry(label(ty)).or_default() += n;
        }
        for ((status, ty), n) in changes.deleted {
            *self.deleted.entry((status, label(ty))).or_default() += n;
        }
        for ((ty, from, to), n) in changes.transitions {
            *self.transitions.entry((label(ty), from, to)).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census(images: &[(&str, u64, Status, &str)]) -> Census {
        let mut b = CensusBuilder::new();
        for (dc, id, status, ty) in images {
            b.record(dc, *id, *status, &Arc::from(*ty));
        }
        b.finish()
    }

    use Status::{Available as A, Creating as C, Expired as E, Failed as F};

    #[test]
    fn an_entry_keeps_its_id_status_and_type_in_twelve_bytes() {
        let e = Entry::new(u64::MAX - 5, Status::Expired, 1234);
        assert_eq!(
            (e.id(), e.status(), e.type_index()),
            (u64::MAX - 5, E, 1234)
        );
        assert_eq!(std::mem::size_of::<Entry>(), 12);
    }

    #[test]
    fn a_repeated_id_is_recorded_once_with_what_it_first_had() {
        let mut b = CensusBuilder::new();
        let ty: Arc<str> = Arc::from("L");
        assert!(b.record("HZ", 1, C, &ty));
        assert!(!b.record("HZ", 1, A, &ty));
        assert!(b.record("SH", 1, A, &ty));
        assert!(b.contains("HZ", 1) && !b.contains("HZ", 2));
        let c = b.finish();
        let later = census(&[("HZ", 1, A, "L"), ("SH", 1, A, "L")]);
        let d = diff(&c, &later);
        assert_eq!(d["HZ"].transitions[&("L".to_string(), C, A)], 1);
    }

    #[test]
    fn the_same_census_twice_changes_nothing() {
        let c = census(&[("HZ", 3, A, "Linux"), ("HZ", 1, C, ""), ("SH", 3, F, "W")]);
        assert!(diff(&c, &c).is_empty());
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn creations_deletions_and_moves_are_told_apart() {
        let before = census(&[
            ("HZ", 1, C, "Linux"),
            ("HZ", 2, A, "Linux"),
            ("HZ", 3, C, "Windows"),
            ("HZ", 9, E, ""),
        ]);
        let after = census(&[
            ("HZ", 1, F, "Linux"),
            ("HZ", 2, A, "Linux"),
            ("HZ", 3, A, "Windows"),
            ("HZ", 4, C, "Windows"),
            ("HZ", 5, C, "Windows"),
        ]);
        let hz = &diff(&before, &after)["HZ"];
        assert_eq!(hz.created, BTreeMap::from([("Windows".to_string(), 2)]));
        assert_eq!(
            hz.deleted,
            BTreeMap::from([((E, "unknown".to_string()), 1)])
        );
        assert_eq!(
            hz.transitions,
            BTreeMap::from([
                (("Linux".to_string(), C, F), 1),
                (("Windows".to_string(), C, A), 1)
            ])
        );
    }

    #[test]
    fn churn_with_equal_counts_is_seen() {
        // One image replaced by another of the same status and type: the groups
        // look the same, the census does not.
        let before = census(&[("HZ", 10, A, "Linux"), ("HZ", 20, A, "Linux")]);
        let after = census(&[("HZ", 10, A, "Linux"), ("HZ", 30, A, "Linux")]);
        let hz = &diff(&before, &after)["HZ"];
        assert_eq!(hz.created["Linux"], 1);
        assert_eq!(hz.deleted[&(A, "Linux".to_string())], 1);
        assert!(hz.transitions.is_empty());
    }

    #[test]
    fn a_datacenter_that_appears_or_vanishes_creates_or_deletes_all_its_images() {
        let before = census(&[("HZ", 1, A, "L"), ("OLD", 1, A, "L"), ("OLD", 2, C, "L")]);
        let after = census(&[("HZ", 1, A, "L"), ("NEW", 7, A, "L")]);
        let d = diff(&before, &after);
        assert!(!d.contains_key("HZ"));
        assert_eq!(d["NEW"].created["L"], 1);
        assert_eq!(d["OLD"].deleted.values().sum::<u64>(), 2);
        assert_eq!(d["OLD"].deleted[&(C, "L".to_string())], 1);
    }

    #[test]
    fn ids_are_told_apart_per_datacenter() {
        let before = census(&[("HZ", 1, A, "L")]);
        let after = census(&[("SH", 1, A, "L")]);
        let d = diff(&before, &after);
        assert_eq!(d["HZ"].deleted.values().sum::<u64>(), 1);
        assert_eq!(d["SH"].created["L"], 1);
    }

    #[test]
    fn a_type_change_alone_is_no_change_and_a_move_takes_the_new_type() {
        let before = census(&[("HZ", 1, A, "L"), ("HZ", 2, C, "L")]);
        let after = census(&[("HZ", 1, A, "W"), ("HZ", 2, A, "W")]);
        let hz = &diff(&before, &after)["HZ"];
        assert!(hz.created.is_empty() && hz.deleted.is_empty());
        assert_eq!(
            hz.transitions,
            BTreeMap::from([(("W".to_string(), C, A), 1)])
        );
    }

    #[test]
    fn a_census_costs_about_twelve_bytes_per_image() {
        let mut b = CensusBuilder::new();
        let ty: Arc<str> = Arc::from("Linux");
        for id in 0..100_000u64 {
            b.record("HZ", id.wrapping_mul(0x9E37_79B9_7F4A_7C15), A, &ty);
        }
        let c = b.finish();
        assert_eq!(c.len(), 100_000);
        let per_image = c.heap_bytes() as f64 / 100_000.0;
        assert!((12.0..12.1).contains(&per_image), "{per_image}");
    }
}
