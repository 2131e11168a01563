//! Properties that hold for any input, checked with proptest:
//!
//! - the response decoder never panics, whatever the bytes, reads any
//!   JSON-shaped envelope consistently, and ignores any bytes in a field the
//!   aggregates don't read;
//! - aggregation conserves counts and sizes, and counts each id once;
//! - paging through the simulator, with any page size, server cap, overlap and
//!   past-the-end behaviour, yields the aggregates of the whole list read at once.
//!
//! Case counts are modest so that the suite stays fast on a small machine.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use finovy_image_exporter::aggregate::{
    Aggregator, DatacenterImages, Field, GroupStats, Item, Status,
};
use finovy_image_exporter::labels::Anomaly;
use finovy_image_exporter::refresh::paging::Pager;
use finovy_image_exporter::secret::{Token, TokenSource};
use finovy_image_exporter::settings::SizeUnit;
use finovy_image_exporter::sim::{
    self, FaultAction, FaultRule, Faults, SimImage, SimOptions, SimServer, Simulator,
};
use finovy_image_exporter::telemetry::Telemetry;
use finovy_image_exporter::upstream::wire::{decode_page, WireError};
use finovy_image_exporter::upstream::{ApiClient, Auth, Budget, ClientConfig, Filters};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Value};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

// ---------------------------------------------------------------------------
// The decoder.

/// Names the decoder looks for, so that generated objects often hit them.
const KEYS: [&str; 14] = [
    "code",
    "success",
    "data",
    "msg",
    "traceId",
    "totalCounts",
    "id",
    "imageId",
    "imageType",
    "imageName",
    "imageSize",
    "datacenterKey",
    "status",
    "createTime",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(&KEYS[..]).prop_map(String::from),
        1 => "[a-zA-Z]{0,6}",
    ]
}

/// Any JSON value, with strings that often look like numbers.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        " ?-?[0-9]{0,20}(\\.[0-9]{0,4})?([eE][+-]?[0-9]{1,3})? ?".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Either a plausible value or anything at all.
fn or_anything(good: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![3 => good, 1 => any_json()].boxed()
}

fn plausible_item() -> impl Strategy<Value = Value> {
    (
        or_anything("[a-z0-9]{1,10}".prop_map(Value::from)),
        or_anything("(Windows|Ubuntu|)".prop_map(Value::from)),
        or_anything("[0-9]{1,4}\\.[0-9]{2}".prop_map(Value::from)),
        or_anything("(HZ|SH)".prop_map(Value::from)),
        or_anything((0i64..5).prop_map(Value::from)),
        or_anything((0i64..2_000_000_000_000).prop_map(Value::from)),
        prop::collection::vec(any::<bool>(), 6),
    )
        .prop_map(|(id, ty, size, dc, status, created, keep)| {
            let mut item = serde_json::Map::new();
            for (i, (k, v)) in [
                ("id", id),
                ("imageType", ty),
                ("imageSize", size),
                ("datacenterKey", dc),
                ("status", status),
                ("createTime", created),
            ]
            .into_iter()
            .enumerate()
            {
                if keep[i] {
                    item.insert(k.into(), v);
                }
            }
            Value::Object(item)
        })
}

/// Envelopes near the documented shape, any part of which may be missing or wrong.
fn envelope() -> impl Strategy<Value = Value> {
    let items = prop::collection::vec(or_anything(plausible_item()), 0..8);
    let data = or_anything(
        (items, or_anything((0i64..20).prop_map(Value::from)))
            .prop_map(|(items, total)| json!({"data": items, "totalCounts": total})),
    );
    (
        or_anything(prop_oneof![
            Just(json!(0)),
            Just(json!(401)),
            Just(json!(500))
        ]),
        or_anything(any::<bool>().prop_map(Value::Bool)),
        data,
        any_json(),
        prop::collection::vec(any::<bool>(), 5),
    )
        .prop_map(|(code, success, data, msg, keep)| {
            let mut env = serde_json::Map::new();
            for (i, (k, v)) in [
                ("code", code),
                ("success", success),
                ("data", data),
                ("msg", msg.clone()),
                ("traceId", msg),
            ]
            .into_iter()
            .enumerate()
            {
                if keep[i] {
                    env.insert(k.into(), v);
                }
            }
            Value::Object(env)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn the_decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_page(&bytes, SizeUnit::Gib);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Whatever the envelope, decoding does not panic; when it succeeds there is
    /// one item per element of `data.data`, each field is either read or marked.
    #[test]
    fn the_decoder_reads_any_envelope_consistently(env in envelope(), unit in prop::sample::select(vec![SizeUnit::B, SizeUnit::Gib, SizeUnit::Tib])) {
        let body = serde_json::to_vec(&env).unwrap();
        match decode_page(&body, unit) {
            Ok(page) => {
                let listed = env["data"]["data"].as_array().map_or(0, Vec::len);
                prop_assert_eq!(page.items.len(), listed);
                prop_assert!(reads_as_zero(&env["code"]), "a page despite code {}", env["code"]);
                prop_assert!(env["success"] != json!(false));
                for (item, listed) in page.items.iter().zip(env["data"]["data"].as_array().unwrap()) {
                    if item.invalid_fields().any(|f| f == Field::ImageSize) {
                        prop_assert_eq!(item.size_bytes, 0);
                    }
                    if item.invalid_fields().any(|f| f == Field::Id) {
                        // No id, or one read lossily (text holding U+FFFD).
                        let lossy = listed["id"].as_str().is_some_and(|id| id.contains('\u{FFFD}'));
                        prop_assert!(item.id.is_none() || lossy, "{:?}", listed);
                    }
                    match item.created_ms {
                        Some(ms) => prop_assert!(
                            (EARLIEST_CREATE_MS..=now_ms() + DAY_MS).contains(&ms),
                            "createTime {} kept", ms
                        ),
                        None => prop_assert!(item.invalid_fields().any(|f| f == Field::CreateTime)),
                    }
                }
            }
            Err(WireError::Api { code, .. }) => {
                prop_assert!(code != 0 || env["success"] == json!(false));
            }
            Err(WireError::Decode(_)) => {}
        }
    }

    /// A page cut anywhere is never taken for a page.
    #[test]
    fn a_truncated_page_is_always_a_decode_error(images in images(1..6), cut in any::<prop::sample::Index>()) {
        let body = page_json(&images, images.len() as i64);
        let cut = cut.index(body.len());
        match decode_page(&body.as_bytes()[..cut], SizeUnit::Gib) {
            Err(WireError::Decode(_)) => {}
            other => prop_assert!(false, "{:?} from {:?}", other, &body[..cut]),
        }
    }

    /// What the simulator sends is read back exactly.
    #[test]
    fn a_page_of_documented_items_reads_back_exactly(images in images(0..20)) {
        let body = page_json(&images, images.len() as i64);
        let page = decode_page(body.as_bytes(), SizeUnit::Gib).unwrap();
        prop_assert_eq!(page.total, images.len() as u64);
        for (im, item) in images.iter().zip(&page.items) {
            prop_assert_eq!(item.invalid, 0, "{:?}", im);
            prop_assert_eq!(item.datacenter_key.as_deref(), Some(im.datacenter_key.as_str()));
            prop_assert_eq!(&*item.image_type, im.image_type.as_str());
            prop_assert_eq!(item.status, Status::from_code(i64::from(im.status)));
            prop_assert_eq!(item.size_bytes as f64, (im.image_size.parse::<f64>().unwrap() * GIB).round());
            prop_assert_eq!(item.created_ms, Some(im.create_time));
        }
    }
}

/// Bytes in the value of `imageName`, a field the aggregates don't read, change
/// nothing, whatever they are (but the quote and backslash that would end or
/// escape the string, and control characters, which JSON forbids there). The
/// simulator's images all have a name.
#[test]
fn any_bytes_in_an_unused_field_change_nothing() {
    let mut runner = TestRunner::new(ProptestConfig::with_cases(300));
    let strategy = (
        images(1..4),
        prop::collection::vec(
            any::<u8>().prop_filter("ends or escapes the string", |b| {
                *b >= 0x20 && *b != b'"' && *b != b'\\'
            }),
            0..16,
        ),
        prop::sample::select(vec![&b""[..], b"\\ud800", b"\\udfff\\ud800", b"\\u00e9"]),
    );
    let result = runner.run(&strategy, |(images, mut bytes, escape)| {
        bytes.extend_from_slice(escape);
        let body = page_json(&images, images.len() as i64);
        let clean = decode_page(body.as_bytes(), SizeUnit::Gib).unwrap();
        let mut odd = Vec::new();
        let mut rest = body.as_bytes();
        while let Some(at) = find(rest, b"\"imageName\":\"") {
            let start = at + b"\"imageName\":\"".len();
            odd.extend_from_slice(&rest[..start]);
            odd.extend_from_slice(&bytes);
            let end = start + find(&rest[start..], b"\"").unwrap();
            rest = &rest[end..];
        }
        odd.extend_from_slice(rest);
        prop_assert_eq!(
            decode_page(&odd, SizeUnit::Gib),
            Ok(clean),
            "{:?}",
            String::from_utf8_lossy(&odd)
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// 2000-01-01T00:00:00Z: a `createTime` before is not kept (SPEC).
const EARLIEST_CREATE_MS: i64 = 946_684_800_000;
/// A `createTime` more than a day ahead is not kept either.
const DAY_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Whether a `code` can be read as 0 (absent, or a number or numeric string
/// equal to zero): the only codes of a successful answer.
fn reads_as_zero(code: &Value) -> bool {
    match code {
        Value::Null => true,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.trim().parse::<f64>() == Ok(0.0),
        _ => false,
    }
}

fn page_json(images: &[SimImage], total: i64) -> String {
    json!({
        "code": 0, "success": true, "msg": "success", "traceId": "t",
        "data": {"data": images, "totalCounts": total},
    })
    .to_string()
}

/// Documented items, with unusual but valid values (any status code, any type
/// name, sizes with up to two decimals, any time from 2000 to now).
fn images(count: std::ops::Range<usize>) -> impl Strategy<Value = Vec<SimImage>> {
    prop::collection::vec(
        (
            "[A-Za-z0-9]{1,12}",
            // U+FFFD is text the upstream lost: it marks the type.
            "\\PC{0,8}".prop_filter("lost text", |t| !t.contains('\u{FFFD}')),
            (0u64..100_000, 0u64..100),
            "[A-Z]{1,3}",
            any::<u8>(),
            EARLIEST_CREATE_MS..1_764_547_200_000,
        ),
        count,
    )
    .prop_map(|fields| {
        fields
            .into_iter()
            .enumerate()
            .map(
                |(i, (id, ty, (whole, cents), dc, status, created))| SimImage {
                    id: format!("{id}-{i}"),
                    image_id: i as i64,
                    image_type: ty,
                    image_name: format!("image-{i}"),
                    image_size: format!("{whole}.{cents:02}"),
                    datacenter_key: dc,
                    status,
                    create_time: created,
                },
            )
            .collect()
    })
}

// ---------------------------------------------------------------------------
// Aggregation.

fn item() -> impl Strategy<Value = Item> {
    (
        prop::option::weighted(0.9, 0u64..40),
        prop::sample::select(vec!["HZ", "SH"]),
        prop::sample::select(vec!["", "Windows", "Linux"]),
        -1i64..6,
        0u64..(1 << 42),
        prop::option::of(0i64..1_000_000),
        0u8..64,
    )
        .prop_map(|(id, dc, ty, status, size, created, invalid)| Item {
            id,
            datacenter_key: Some(dc.into()),
            image_type: ty.into(),
            status: Status::from_code(status),
            size_bytes: size,
            created_ms: created,
            invalid,
            details: None,
        })
}

type Groups = BTreeMap<(String, Status, String), GroupStats>;

fn flatten(result: BTreeMap<String, DatacenterImages>) -> Groups {
    result
        .into_iter()
        .flat_map(|(dc, images)| {
            images
                .groups
                .into_iter()
                .map(move |(k, v)| ((dc.clone(), k.status, k.image_type), v))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Counts and sizes are conserved: every item counts once per id (items
    /// without an id always count), in exactly one group.
    #[test]
    fn aggregation_conserves_counts_and_sizes(
        items in prop::collection::vec(item(), 0..200),
        page_size in 1usize..60,
    ) {
        let mut agg = Aggregator::new();
        for page in items.chunks(page_size) {
            for it in page {
                agg.add(it.datacenter_key.as_deref().unwrap(), it);
            }
        }
        // The same, naively: ids are told apart per datacenter.
        let mut seen = HashSet::new();
        let mut want = Groups::new();
        let mut invalid = [0u64; 6];
        let counted: Vec<&Item> = items
            .iter()
            .filter(|it| it.id.is_none_or(|id| seen.insert((it.datacenter_key.clone(), id))))
            .collect();
        for it in &counted {
            let ty = if it.image_type.is_empty() { "unknown" } else { &it.image_type };
            let g = want.entry((it.datacenter_key.as_deref().unwrap().to_string(), it.status, ty.to_string())).or_default();
            g.count += 1;
            g.size_bytes += u128::from(it.size_bytes);
            if let Some(c) = it.created_ms {
                g.oldest_created_ms = Some(g.oldest_created_ms.map_or(c, |o| o.min(c)));
            }
            for f in it.invalid_fields() {
                invalid[Field::ALL.iter().position(|x| *x == f).unwrap()] += 1;
            }
        }
        prop_assert_eq!(agg.unique(), counted.len() as u64);
        prop_assert_eq!(agg.unique() + agg.duplicates(), items.len() as u64);
        let got_invalid: Vec<u64> = agg.invalid().map(|(_, n)| n).collect();
        prop_assert_eq!(&got_invalid[..], &invalid[..]);
        let got = flatten(agg.finish());
        prop_assert_eq!(got.values().map(|g| g.count).sum::<u64>(), counted.len() as u64);
        prop_assert_eq!(
            got.values().map(|g| g.size_bytes).sum::<u128>(),
            counted.iter().map(|it| u128::from(it.size_bytes)).sum::<u128>()
        );
        prop_assert!(got.values().all(|g| g.count > 0), "no empty group");
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------
// Paging through the simulator.

/// A simulator on loopback, serving from a runtime of its own.
struct Upstream {
    runtime: tokio::runtime::Runtime,
    sim: Simulator,
    addr: SocketAddr,
}

impl Upstream {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sim = Simulator::new(Vec::new(), SimOptions::default());
        let server = runtime
            .block_on(SimServer::bind(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                sim.clone(),
            ))
            .unwrap();
        let addr = server.local_addr();
        runtime.spawn(server.serve(std::future::pending()));
        Upstream { runtime, sim, addr }
    }

    fn pager(&self, page_size: u32) -> Pager {
        let config = ClientConfig {
            url: format!("http://{}/v1/open/image/personal/getList", self.addr)
                .parse()
                .unwrap(),
            timeout: Duration::from_secs(10),
            page_size,
            headers: Vec::new(),
            params: Vec::new(),
            filters: Filters::default(),
            size_unit: SizeUnit::Gib,
            max_retries: 0,
            tls: Default::default(),
            proxy_url: None,
        };
        let telemetry = Telemetry::new();
        Pager {
            client: Arc::new(
                ApiClient::new(
                    "default",
                    config,
                    &Auth::Token {
                        source: TokenSource::Fixed(Token::new("t0ken").unwrap()),
                        from: "a test".into(),
                    },
                    telemetry.clone(),
                )
                .unwrap(),
            ),
            budget: Arc::new(Budget::new(4, 0.0, telemetry.upstream("default"))),
            window: 4,
        }
    }
}

/// How the server pages.
#[derive(Debug, Clone)]
struct Paging {
    page_size: u32,
    cap: Option<usize>,
    overlap: usize,
    clamp: bool,
}

fn paging() -> impl Strategy<Value = Paging> {
    (
        1u32..=30,
        prop::option::of(1usize..=30),
        prop_oneof![3 => Just(0usize), 1 => 1usize..4],
        any::<bool>(),
    )
        .prop_map(|(page_size, cap, overlap, clamp)| Paging {
            page_size,
            cap,
            overlap,
            clamp,
        })
}

fn dataset() -> impl Strategy<Value = Vec<SimImage>> {
    (0usize..120, any::<u64>(), 1usize..=3).prop_map(|(n, seed, dcs)| {
        sim::generate(&sim::GenerateOptions {
            images: n,
            datacenters: ["HZ", "SH", "HK"][..dcs]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            seed,
            now_ms: 1_790_000_000_000,
            ..Default::default()
        })
    })
}

/// The whole list, read at once and aggregated.
fn aggregate_at_once(
    images: &[SimImage],
    scope: Option<&str>,
) -> BTreeMap<String, DatacenterImages> {
    let page = decode_page(
        page_json(images, images.len() as i64).as_bytes(),
        SizeUnit::Gib,
    )
    .unwrap();
    let mut agg = Aggregator::new();
    for item in &page.items {
        match scope {
            Some(dc) if item.datacenter_key.as_deref() == Some(dc) => {
                agg.add(dc, item);
            }
            Some(_) => {}
            None => {
                agg.add(item.datacenter_key.as_deref().unwrap(), item);
            }
        }
    }
    let mut out = agg.finish();
    if let Some(dc) = scope {
        out.entry(dc.to_string()).or_default();
    }
    out
}

fn paging_equals_reading_at_once(scope: Option<&str>, cases: u32) {
    let upstream = Upstream::start();
    let mut runner = TestRunner::new(ProptestConfig::with_cases(cases));
    let result = runner.run(&(dataset(), paging()), |(images, paging)| {
        // A page that repeats only items seen before ends the pass (the bound on
        // what a lying upstream can make us ask), so every page must bring at
        // least one new item: the overlap stays below what a page holds.
        let per_page = paging.cap.map_or(paging.page_size as usize, |c| {
            c.min(paging.page_size as usize)
        });
        prop_assume!(paging.overlap < per_page);
        upstream.sim.set_images(images.clone());
        upstream.sim.set_faults(Faults {
            page_cap: paging.cap,
            overlap: paging.overlap,
            rules: if paging.clamp {
                vec![FaultRule::always(FaultAction::ClampPage)]
            } else {
                Vec::new()
            },
            ..Faults::default()
        });
        let pager = upstream.pager(paging.page_size);
        let collected = upstream
            .runtime
            .block_on(pager.collect(scope))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want = aggregate_at_once(&images, scope);
        let count: u64 = want.values().map(DatacenterImages::total_images).sum();
        prop_assert_eq!(&collected.datacenters, &want, "{:?}", paging);
        prop_assert_eq!(collected.items, count);
        prop_assert_eq!(collected.total, count);
        for anomaly in &collected.anomalies {
            prop_assert!(
                *anomaly == Anomaly::DuplicateItems && paging.overlap > 0,
                "{:?} with {:?}",
                anomaly,
                paging
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn paging_one_datacenter_through_the_simulator_equals_reading_it_at_once() {
    paging_equals_reading_at_once(Some("HZ"), 48);
}

#[test]
fn discovering_through_the_simulator_equals_reading_it_at_once() {
    paging_equals_reading_at_once(None, 32);
}
