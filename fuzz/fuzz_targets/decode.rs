//! Fuzzes the decoder of the upstream's answers: whatever the bytes, it returns
//! a page or an error, never panics, and a page it returns is well-formed.

#![no_main]

use finovy_image_exporter::config::SizeUnit;
use finovy_image_exporter::upstream::wire::decode_page;
use libfuzzer_sys::fuzz_target;

/// 2000-01-01T00:00:00Z in Unix ms: no `createTime` before is kept.
const EARLIEST_CREATE_MS: i64 = 946_684_800_000;

fuzz_target!(|data: &[u8]| {
    // The unit only scales `imageSize`: the smallest and the largest cover it.
    for unit in [SizeUnit::B, SizeUnit::Tib] {
        if let Ok(page) = decode_page(data, unit) {
            for item in &page.items {
                assert!(
                    item.invalid < 1 << 6,
                    "only the six fields can be unreadable"
                );
                assert!(item.size_bytes < 9_200_000_000_000_000_000);
                assert!(item.created_ms.is_none_or(|ms| ms >= EARLIEST_CREATE_MS));
                assert!(item
                    .datacenter_key
                    .as_deref()
                    .is_none_or(|dc| !dc.is_empty()));
            }
        }
    }
});
