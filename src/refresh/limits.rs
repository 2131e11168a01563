//! Cardinality bounds: whatever labels the upstream invents, a pass publishes a
//! bounded number of series with bounded label values. Pure functions.
//!
//! Beyond `--limit.image-types` image types per datacenter (or
//! `--limit.datacenters` datacenters per discovery pass) the smallest groups fold
//! into `image_type="other"` (`datacenter_key="other"`), so the totals stay exact
//! while the series stay few; label values longer than `--limit.label-length`
//! bytes are cut. Cutting can make two values equal, so their groups are merged,
//! never emitted twice.

use std::collections::BTreeMap;

use crate::aggregate::{DatacenterImages, GroupKey, GroupStats};

pub use crate::labels::OTHER;

/// The bounds of one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Image types per datacenter.
    pub image_types: usize,
    /// Datacenters per discovery pass.
    pub datacenters: usize,
    /// Bytes per label value.
    pub label_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            image_types: 200,
            datacenters: 200,
            label_length: 128,
        }
    }
}

/// `value` cut to at most `max` bytes, at a character boundary.
pub fn cut(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// Per datacenter, how many groups were folded under which label name.
pub type Folded = BTreeMap<String, Vec<(&'static str, u64)>>;

/// Applies the bounds to a pass's datacenters. Returns them with what was folded.
pub fn apply(
    datacenters: BTreeMap<String, DatacenterImages>,
    limits: &Limits,
    discovery: bool,
) -> (BTreeMap<String, DatacenterImages>, Folded) {
    let mut folded = Folded::new();
    let mut out: BTreeMap<String, DatacenterImages> = BTreeMap::new();
    let cut_keys = datacenters
        .into_iter()
        .map(|(dc, images)| (cut(&dc, limits.label_length).to_string(), images));
    for (dc, images) in cut_keys {
        let entry = out.entry(dc).or_default();
        merge_into(entry, images);
    }
    if discovery && out.len() > limits.datacenters {
        let mut by_size: Vec<(String, u64)> = out
            .iter()
            .map(|(dc, images)| (dc.clone(), images.total_images()))
            .collect();
        // Largest first; equal sizes by key, so the choice is stable.
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let keep = limits.datacenters.saturating_sub(1).max(1);
        let mut other = out.remove(OTHER).unwrap_or_default();
        let mut n = 0u64;
        for (dc, _) in by_size.into_iter().skip(keep) {
            if dc == OTHER {
                continue;
            }
            if let Some(images) = out.remove(&dc) {
                merge_into(&mut other, images);
                n += 1;
            }
        }
        out.insert(OTHER.to_string(), other);
        folded
            .entry(OTHER.to_string())
            .or_default()
            .push(("datacenter_key", n));
    }
    for (dc, images) in out.iter_mut() {
        let n = fold_image_types(images, limits);
        if n > 0 {
            folded
                .entry(dc.clone())
                .or_default()
                .push(("image_type", n));
        }
    }
    (out, folded)
}

/// Cuts the image type labels and folds the smallest types beyond the limit into
/// `other`; returns how many types were folded.
fn fold_image_types(images: &mut DatacenterImages, limits: &Limits) -> u64 {
    let groups = std::mem::take(&mut images.groups);
    let mut per_type: BTreeMap<String, Vec<(GroupKey, GroupStats)>> = BTreeMap::new();
    for (key, stats) in groups {
        let label = cut(&key.image_type, limits.label_length).to_string();
        per_type.entry(label).or_default().push((key, stats));
    }
    let mut n = 0;
    if per_type.len() > limits.image_types {
        let mut by_size: Vec<(String, u64)> = per_type
            .iter()
            .map(|(t, groups)| (t.clone(), groups.iter().map(|(_, s)| s.count).sum()))
            .collect();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let keep = limits.image_types.saturating_sub(1).max(1);
        let mut other = per_type.remove(OTHER).unwrap_or_default();
        for (t, _) in by_size.into_iter().skip(keep) {
            if t == OTHER {
                continue;
            }
            if let Some(groups) = per_type.remove(&t) {
                other.extend(groups);
                n += 1;
            }
        }
        per_type.insert(OTHER.to_string(), other);
    }
    for (label, groups) in per_type {
        for (key, stats) in groups {
            let key = GroupKey {
                status: key.status,
                image_type: label.clone(),
            };
            images.groups.entry(key).or_default().merge(&stats);
        }
    }
    n
}

fn merge_into(target: &mut DatacenterImages, images: DatacenterImages) {
    for (key, stats) in images.groups {
        target.groups.entry(key).or_default().merge(&stats);
    }
    for (status, ages) in images.ages {
        target.ages.entry(status).or_default().merge(&ages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Status;

    fn images(types: &[(&str, u64)]) -> DatacenterImages {
        let mut d = DatacenterImages::default();
        for (t, n) in types {
            d.groups.insert(
                GroupKey {
                    status: Status::Available,
                    image_type: t.to_string(),
                },
                GroupStats {
                    count: *n,
                    size_bytes: u128::from(*n) * 10,
                    oldest_created_ms: Some(*n as i64),
                },
            );
        }
        d
    }

    #[test]
    fn the_smallest_types_fold_into_other_and_totals_stay_exact() {
        let limits = Limits {
            image_types: 3,
            ..Limits::default()
        };
        let input = BTreeMap::from([(
            "HZ".to_string(),
            images(&[("a", 50), ("b", 40), ("c", 3), ("d", 2), ("e", 1)]),
        )]);
        let (out, folded) = apply(input, &limits, false);
        let hz = &out["HZ"];
        let types: Vec<&str> = hz.groups.keys().map(|k| k.image_type.as_str()).collect();
        assert_eq!(types, ["a", "b", "other"]);
        assert_eq!(hz.total_images(), 96);
        let other = hz.groups.values().last().unwrap();
        assert_eq!(
            (other.count, other.size_bytes, other.oldest_created_ms),
            (6, 60, Some(1))
        );
        assert_eq!(folded["HZ"], vec![("image_type", 3)]);
    }

    #[test]
    fn discovered_datacenters_beyond_the_limit_fold_into_other() {
        let limits = Limits {
            datacenters: 2,
            ..Limits::default()
        };
        let input: BTreeMap<String, DatacenterImages> = (0..5u64)
            .map(|i| (format!("DC{i}"), images(&[("t", i + 1)])))
            .collect();
        let (out, folded) = apply(input, &limits, true);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["DC4", "other"]);
        assert_eq!(out["other"].total_images(), 1 + 2 + 3 + 4);
        assert_eq!(folded["other"], vec![("datacenter_key", 4)]);
    }

    #[test]
    fn long_labels_are_cut_and_values_made_equal_merge() {
        let limits = Limits {
            label_length: 8,
            ..Limits::default()
        };
        let long_a = "abcdefgh-one";
        let long_b = "abcdefgh-two";
        let input = BTreeMap::from([("HZ".to_string(), images(&[(long_a, 1), (long_b, 2)]))]);
        let (out, _) = apply(input, &limits, false);
        let hz = &out["HZ"];
        assert_eq!(hz.groups.len(), 1);
        let (key, stats) = hz.groups.iter().next().unwrap();
        assert_eq!((key.image_type.as_str(), stats.count), ("abcdefgh", 3));
        assert_eq!(cut("héllo", 2), "h", "never inside a character");
    }
}
