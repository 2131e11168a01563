//! Images moving through their life, one step at a time, so a dashboard on the
//! demo shows movement: creation, `creating` → `available` or `failed`,
//! `available` → `expired`, and deletion of failed and expired images.
//!
//! The rates keep the inventory roughly stable around the mix that
//! [`super::generate`] produces.

use std::collections::BTreeSet;

use serde::Serialize;

use super::data::{SimImage, SplitMix};

/// What one step changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Evolution {
    /// New images, in `creating`.
    pub created: usize,
    /// `creating` → `available`.
    pub became_available: usize,
    /// `creating` → `failed`.
    pub failed: usize,
    /// `available` → `expired`.
    pub expired: usize,
    /// Failed or expired images removed.
    pub deleted: usize,
}

impl std::ops::AddAssign for Evolution {
    fn add_assign(&mut self, other: Evolution) {
        self.created += other.created;
        self.became_available += other.became_available;
        self.failed += other.failed;
        self.expired += other.expired;
        self.deleted += other.deleted;
    }
}

const SIZES: [&str; 5] = ["20.00", "40.00", "64.00", "128.00", "256.50"];

/// Applies one step to `images`.
pub(crate) fn step(images: &mut Vec<SimImage>, rng: &mut SplitMix, now_ms: i64) -> Evolution {
    let mut change = Evolution::default();
    // Where new images go: the datacenters and types seen so far.
    let datacenters: Vec<String> = collect_set(images.iter().map(|im| &im.datacenter_key), "HZ");
    let types: Vec<String> = collect_set(images.iter().map(|im| &im.image_type), "Ubuntu");
    let first_new_id = images.iter().map(|im| im.image_id).max().unwrap_or(0) + 1;

    images.retain_mut(|im| match im.status {
        0 => {
            match rng.below(100) {
                0..=39 => {
                    im.status = 1;
                    change.became_available += 1;
                }
                40..=44 => {
                    im.status = 2;
                    change.failed += 1;
                }
                _ => {}
            }
            true
        }
        1 => {
            if rng.below(1000) < 15 {
                im.status = 3;
                change.expired += 1;
            }
            true
        }
        2 | 3 => {
            let keep = rng.below(100) >= 10;
            change.deleted += usize::from(!keep);
            keep
        }
        _ => true,
    });

    let base = (images.len() / 100).max(1);
    let created = base + rng.below(base as u64 + 1) as usize;
    for image_id in first_new_id..first_new_id + created as i64 {
        images.push(SimImage {
            id: format!("ev{:08x}{image_id}", rng.next_u64() as u32),
            image_id,
            image_type: types[rng.below(types.len() as u64) as usize].clone(),
            image_name: format!("image-{image_id}"),
            image_size: SIZES[rng.below(SIZES.len() as u64) as usize].to_string(),
            datacenter_key: datacenters[rng.below(datacenters.len() as u64) as usize].clone(),
            status: 0,
            create_time: now_ms - rng.below(60_000) as i64,
        });
    }
    change.created = created;
    change
}

fn collect_set<'a>(values: impl Iterator<Item = &'a String>, fallback: &str) -> Vec<String> {
    let set: BTreeSet<&String> = values.filter(|v| !v.is_empty()).collect();
    if set.is_empty() {
        vec![fallback.to_string()]
    } else {
        set.into_iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{generate, GenerateOptions};

    #[test]
    fn steps_move_images_through_their_life_and_keep_the_inventory_stable() {
        let mut images = generate(&GenerateOptions {
            images: 1000,
            seed: 3,
            now_ms: 1_700_000_000_000,
            ..Default::default()
        });
        let mut rng = SplitMix::new(9);
        let mut total = Evolution::default();
        for i in 0..50 {
            total += step(&mut images, &mut rng, 1_700_000_000_000 + i * 5_000);
        }
        for (what, n) in [
            ("created", total.created),
            ("became available", total.became_available),
            ("failed", total.failed),
            ("expired", total.expired),
            ("deleted", total.deleted),
        ] {
            assert!(n > 0, "nothing {what} in 50 steps");
        }
        assert!(
            (700..1300).contains(&images.len()),
            "{} images",
            images.len()
        );
        let ids: BTreeSet<&str> = images.iter().map(|im| im.id.as_str()).collect();
        assert_eq!(ids.len(), images.len(), "ids stay unique");
    }

    #[test]
    fn the_same_seed_evolves_the_same_way() {
        let start = generate(&GenerateOptions {
            images: 200,
            now_ms: 1_000_000,
            ..Default::default()
        });
        let run = || {
            let mut images = start.clone();
            let mut rng = SplitMix::new(42);
            for i in 0..10 {
                step(&mut images, &mut rng, 1_000_000 + i);
            }
            images
        };
        assert_eq!(run(), run());
    }
}
