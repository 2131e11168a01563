//! Fuzzes the decoder of the upstream's answers: whatever the bytes, it returns
//! a page or an error, never panics, a page it returns is well-formed, and the
//! fast path for the usual page agrees with the general one.

#![no_main]

use finovy_image_exporter::config::SizeUnit;
use finovy_image_exporter::upstream::wire::{decode_page, decode_page_general};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The unit only scales `imageSize`: the smallest and the largest cover it.
    for unit in [SizeUnit::B, SizeUnit::Tib] {
        let decoded = decode_page(data, unit);
        assert_eq!(decoded, decode_page_general(data, unit));
        if let Ok(page) = decoded {
            for item in &page.items {
                assert!(
                    item.invalid < 1 << 6,
                    "only the six fields can be unreadable"
                );
                assert!(item.size_bytes < 9_200_000_000_000_000_000);
                assert!(item.created_ms.is_none_or(|ms| ms >= 0));
                assert!(item
                    .datacenter_key
                    .as_deref()
                    .is_none_or(|dc| !dc.is_empty()));
            }
        }
    }
});
