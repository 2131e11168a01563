//! Synthetic images: a seeded, reproducible inventory over several datacenters,
//! every status and several image types.

use serde::{Deserialize, Serialize};

/// One image, in the upstream's wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimImage {
    /// `id`.
    pub id: String,
    /// `imageId`.
    pub image_id: i64,
    /// `imageType`.
    pub image_type: String,
    /// `imageName`.
    pub image_name: String,
    /// `imageSize`, a decimal string in GiB.
    pub image_size: String,
    /// `datacenterKey`.
    pub datacenter_key: String,
    /// `status` code.
    pub status: u8,
    /// `createTime`, Unix milliseconds.
    pub create_time: i64,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Number of images.
    pub images: usize,
    /// Datacenter keys.
    pub datacenters: Vec<String>,
    /// Image types.
    pub image_types: Vec<String>,
    /// Seed: the same options give the same images.
    pub seed: u64,
    /// "Now", Unix milliseconds; images are created up to 90 days before.
    pub now_ms: i64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            images: 600,
            datacenters: vec!["HZ".into(), "SH".into(), "HK".into()],
            image_types: vec![
                "Windows".into(),
                "Ubuntu".into(),
                "CentOS".into(),
                "Debian".into(),
            ],
            seed: 1,
            now_ms: now_ms(),
        }
    }
}

/// The wall clock, Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// SplitMix64: a tiny, well-known generator; reproducibility is all we need.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Generates images: mostly available, some creating, failed and expired, and
/// now and then a status code the API document does not list.
pub fn generate(options: &GenerateOptions) -> Vec<SimImage> {
    let mut rng = SplitMix::new(options.seed);
    let sizes = ["20.00", "40.00", "64.00", "128.00", "256.50"];
    (0..options.images)
        .map(|i| {
            let status = match rng.below(100) {
                0..=69 => 1,
                70..=79 => 0,
                80..=89 => 2,
                90..=98 => 3,
                _ => 7,
            };
            let age_ms = rng.below(90 * 24 * 3600 * 1000) as i64;
            let dc = &options.datacenters[rng.below(options.datacenters.len() as u64) as usize];
            let ty = &options.image_types[rng.below(options.image_types.len() as u64) as usize];
            SimImage {
                id: format!("im{:08x}{i}", rng.next_u64() as u32),
                image_id: 100_000_000 + i as i64,
                image_type: ty.clone(),
                image_name: format!("image-{i}"),
                image_size: sizes[rng.below(sizes.len() as u64) as usize].to_string(),
                datacenter_key: dc.clone(),
                status,
                create_time: options.now_ms - age_ms,
            }
        })
        .collect()
}
