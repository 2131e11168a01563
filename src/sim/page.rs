//! One page of the list endpoint: the images of an account that match the
//! request's filters, the window of them its `page` asks for, bent as the
//! faults say, and written out by serde.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Value};

use super::data::SimImage;
use super::faults::{selects, ArrayKey, BadName, Corruption, Effects, ItemBends, TimeBend};

/// An account's images, with the positions of each datacenter's images.
///
/// The index is built once when the images are set, and is what keeps paging
/// through a large inventory linear: without it every page of a datacenter
/// would scan the whole list again, and a million images at 100 a page would
/// cost the simulator 10,000 scans of a million images per pass.
#[derive(Debug)]
pub(crate) struct Inventory {
    images: Arc<Vec<SimImage>>,
    /// Positions in `images`, in list order, per `datacenterKey`.
    by_datacenter: HashMap<String, Vec<u32>>,
}

impl Inventory {
    pub fn new(images: Vec<SimImage>) -> Self {
        let mut by_datacenter: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, im) in images.iter().enumerate() {
            by_datacenter
                .entry(im.datacenter_key.clone())
                .or_default()
                .push(i as u32);
        }
        Inventory {
            images: Arc::new(images),
            by_datacenter,
        }
    }

    pub fn images(&self) -> &Arc<Vec<SimImage>> {
        &self.images
    }

    /// The images the query selects, in list order (by their positions).
    fn select(&self, query: &ListQuery, ignore_datacenter: bool) -> Selection<'_> {
        let datacenter = query.datacenter().filter(|_| !ignore_datacenter);
        let others: Vec<&(String, String)> = query
            .filters
            .iter()
            .filter(|(k, _)| k != "datacenterKey")
            .collect();
        let keep = |i: &u32| {
            others
                .iter()
                .all(|f| filter_holds(f, &self.images[*i as usize]))
        };
        match (datacenter, others.is_empty()) {
            (None, true) => Selection::All(self.images.len()),
            (None, false) => Selection::Listed(Cow::Owned(
                (0..self.images.len() as u32).filter(keep).collect(),
            )),
            (Some(dc), no_others) => {
                let listed = self.by_datacenter.get(dc).map_or(&[][..], Vec::as_slice);
                match no_others {
                    true => Selection::Listed(Cow::Borrowed(listed)),
                    false => {
                        Selection::Listed(Cow::Owned(listed.iter().copied().filter(keep).collect()))
                    }
                }
            }
        }
    }
}

fn filter_holds((key, value): &(String, String), im: &SimImage) -> bool {
    match key.as_str() {
        "datacenterKey" => &im.datacenter_key == value,
        "imageType" => &im.image_type == value,
        "imageName" => im.image_name.contains(value.as_str()),
        "status" => im.status.to_string() == *value,
        _ => true,
    }
}

/// Selected images: all of the list, or these positions in it.
enum Selection<'a> {
    All(usize),
    Listed(Cow<'a, [u32]>),
}

impl Selection<'_> {
    fn len(&self) -> usize {
        match self {
            Selection::All(n) => *n,
            Selection::Listed(positions) => positions.len(),
        }
    }

    /// The position in the list of the selected image of this rank.
    fn position(&self, rank: usize) -> usize {
        match self {
            Selection::All(_) => rank,
            Selection::Listed(positions) => positions[rank] as usize,
        }
    }
}

/// The query parameters the list endpoint reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListQuery {
    pub page: u32,
    pub page_size: usize,
    /// `datacenterKey`, `imageType`, `imageName` and `status`, as given.
    pub filters: Vec<(String, String)>,
}

impl ListQuery {
    pub fn parse(query: &str) -> Self {
        let mut q = ListQuery {
            page: 1,
            page_size: 20,
            filters: Vec::new(),
        };
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "page" => q.page = v.parse().unwrap_or(1),
                "pageSize" => q.page_size = v.parse().unwrap_or(20),
                "datacenterKey" | "imageType" | "imageName" | "status" => {
                    q.filters.push((k.into_owned(), v.into_owned()))
                }
                _ => {}
            }
        }
        q.page = q.page.max(1);
        q
    }

    pub fn datacenter(&self) -> Option<&str> {
        self.filters
            .iter()
            .find(|(k, _)| k == "datacenterKey")
            .map(|(_, v)| v.as_str())
    }
}

/// The success envelope of the API document.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    code: i64,
    success: bool,
    msg: &'a str,
    trace_id: &'a str,
    data: PageData<'a>,
}

/// `data`: the total, and the items under the key the faults choose.
struct PageData<'a> {
    total_counts: i64,
    array: &'a ArrayKey,
    items: Items<'a>,
}

impl Serialize for PageData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("totalCounts", &self.total_counts)?;
        match self.array {
            ArrayKey::Documented => map.serialize_entry("data", &self.items)?,
            ArrayKey::Renamed(key) => map.serialize_entry(key, &self.items)?,
            ArrayKey::Missing => {}
        }
        map.end()
    }
}

/// A page's items: the images as they are, or bent into JSON values.
#[derive(Serialize)]
#[serde(untagged)]
enum Items<'a> {
    Plain(Vec<&'a SimImage>),
    Bent(Vec<Value>),
}

/// Stand-ins that [`FaultAction::BadName`](super::FaultAction::BadName)
/// appends to a name, which serde writes as they are (characters of the
/// private use area, which no generated name holds) and which are then
/// replaced by bytes serde would never write.
const LATIN1_MARK: (&str, &[u8]) = ("\u{f8fe}", b"-caf\xe9");
const SURROGATE_MARK: (&str, &[u8]) = ("\u{f8ff}", b"-\\ud800");

/// The byte order mark that [`FaultAction::Bom`](super::FaultAction::Bom) puts first.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// The body of a successful list answer: page `query.page` of the images of
/// `inventory` that match the query, as `effects` bend it.
pub(crate) fn write(
    inventory: &Inventory,
    query: &ListQuery,
    effects: &Effects,
    trace_id: &str,
) -> Vec<u8> {
    let selection = inventory.select(query, effects.ignore_datacenter);
    let per_page = effects
        .page_cap
        .map_or(query.page_size, |cap| query.page_size.min(cap))
        .max(1);
    let len = selection.len();
    let page = query.page as usize;
    let mut start = (page - 1).saturating_mul(per_page);
    if page > 1 {
        start = start.saturating_add(effects.skip);
    }
    if effects.clamp && start >= len && len > 0 {
        start = (len - 1) / per_page * per_page;
    }
    let start = start.min(len);
    let end = start.saturating_add(per_page).min(len);
    let from = match page {
        1 => start,
        _ => start.saturating_sub(effects.repeat),
    };
    let ranks = if start < end { from..end } else { 0..0 };
    let images = inventory.images();
    let chosen = ranks.map(|rank| &images[selection.position(rank)]);
    let items = match effects.bends.is_none() {
        true => Items::Plain(chosen.collect()),
        false => Items::Bent(chosen.map(|im| bend(im, &effects.bends)).collect()),
    };
    let total_counts = effects
        .claim_total
        .unwrap_or_else(|| (len as i64).saturating_add(effects.total_offset))
        .max(0);
    if effects.invent && start >= len {
        return super::faults::invented_page(query, per_page, total_counts, trace_id);
    }
    let envelope = Envelope {
        code: 0,
        success: true,
        msg: "success",
        trace_id,
        data: PageData {
            total_counts,
            array: &effects.array,
            items,
        },
    };
    let mut body = Vec::with_capacity(256 * (end - start) + 256);
    if effects.bom {
        body.extend_from_slice(BOM);
    }
    serde_json::to_writer(&mut body, &envelope).expect("a page serializes");
    if effects.bends.bad_name.is_some() {
        for (mark, bytes) in [LATIN1_MARK, SURROGATE_MARK] {
            body = replace(&body, mark.as_bytes(), bytes);
        }
    }
    body
}

/// An image as the faults bend it.
fn bend(im: &SimImage, bends: &ItemBends) -> Value {
    let mut im = im.clone();
    if let Some(types) = bends.types {
        im.image_type = format!("type-{}", im.image_id.rem_euclid(types as i64));
    }
    if let Some(suffix) = bends.key_suffix {
        im.datacenter_key = format!("{}-{suffix}", im.datacenter_key);
    }
    match bends.create_time {
        Some((TimeBend::Seconds, every)) if selects(every, im.image_id) => {
            im.create_time = im.create_time.div_euclid(1000)
        }
        Some((TimeBend::FarFuture, every)) if selects(every, im.image_id) => {
            im.create_time = 9_000_000_000_000_000
        }
        _ => {}
    }
    match bends.bad_name {
        Some((BadName::Latin1, every)) if selects(every, im.image_id) => {
            im.image_name.push_str(LATIN1_MARK.0)
        }
        Some((BadName::LoneSurrogate, every)) if selects(every, im.image_id) => {
            im.image_name.push_str(SURROGATE_MARK.0)
        }
        _ => {}
    }
    let mut value = match bends.corrupt {
        Some((every, how)) if selects(every, im.image_id) => corrupt(&im, how),
        _ => serde_json::to_value(&im).expect("an image serializes"),
    };
    if bends
        .id_less
        .is_some_and(|every| selects(every, im.image_id))
    {
        if let Some(fields) = value.as_object_mut() {
            fields.remove("id");
        }
    }
    value
}

fn corrupt(im: &SimImage, how: Corruption) -> Value {
    match how {
        Corruption::WrongType => json!({
            "id": {"value": im.id},
            "imageId": im.image_id,
            "imageType": 7,
            "imageName": im.image_name,
            "imageSize": true,
            "datacenterKey": [im.datacenter_key],
            "status": "x",
            "createTime": "yesterday",
        }),
        Corruption::Missing => json!({
            "imageId": im.image_id,
            "imageName": im.image_name,
        }),
        Corruption::Loose => json!({
            "id": im.id,
            "imageId": im.image_id.to_string(),
            "imageType": im.image_type,
            "imageName": im.image_name,
            "imageSize": im.image_size.parse::<f64>().map_or(Value::Null, |v| json!(v)),
            "datacenterKey": im.datacenter_key,
            "status": im.status.to_string(),
            "createTime": im.create_time.to_string(),
        }),
    }
}

/// `haystack` with every `needle` replaced by `with`.
fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Appends made-up image `n`, which pads an oversized or endless answer, as
/// serde writes it (a test checks the bytes), but formatted directly: an 8 MiB
/// answer holds some 55,000 of them, and an unoptimised build that goes
/// through serde for each spends seconds on them, on the runtime that the
/// exporter under test shares with the simulator.
pub(crate) fn push_filler(out: &mut Vec<u8>, n: u64) {
    use std::io::Write as _;
    let _ = write!(
        out,
        r#"{{"id":"pad{n}","imageId":{n},"imageType":"Padding","imageName":"padding-{n}","imageSize":"1.00","datacenterKey":"PAD","status":1,"createTime":0}}"#
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::faults::ItemBends;

    fn image(n: i64, dc: &str) -> SimImage {
        SimImage {
            id: format!("im-{n}"),
            image_id: n,
            image_type: "Ubuntu".into(),
            image_name: format!("image-{n}"),
            image_size: "1.00".into(),
            datacenter_key: dc.into(),
            status: 1,
            create_time: 1_700_000_000_000,
        }
    }

    fn inventory() -> Inventory {
        Inventory::new(
            (0..7)
                .map(|i| image(i, if i % 3 == 0 { "A" } else { "B" }))
                .collect(),
        )
    }

    fn page(inventory: &Inventory, query: &str, effects: &Effects) -> Value {
        serde_json::from_slice(&write(inventory, &ListQuery::parse(query), effects, "t")).unwrap()
    }

    fn ids(page: &Value) -> Vec<&str> {
        page["data"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|im| im["id"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn a_page_is_the_envelope_of_the_api_document_written_by_serde() {
        let inventory = inventory();
        let body = write(
            &inventory,
            &ListQuery::parse("datacenterKey=B&page=2&pageSize=3"),
            &Effects::default(),
            "t",
        );
        let images = inventory.images();
        let expected = format!(
            r#"{{"code":0,"success":true,"msg":"success","traceId":"t","data":{{"totalCounts":4,"data":[{}]}}}}"#,
            serde_json::to_string(&images[5]).unwrap()
        );
        assert_eq!(String::from_utf8(body).unwrap(), expected);
    }

    #[test]
    fn filters_select_through_the_index_and_beyond_it() {
        let inventory = inventory();
        let none = Effects::default();
        let all = page(&inventory, "pageSize=100", &none);
        assert_eq!(all["data"]["totalCounts"], 7);
        let b = page(&inventory, "datacenterKey=B&pageSize=100", &none);
        assert_eq!(ids(&b), ["im-1", "im-2", "im-4", "im-5"]);
        let named = page(&inventory, "datacenterKey=B&imageName=image-4", &none);
        assert_eq!(ids(&named), ["im-4"]);
        let unknown = page(&inventory, "datacenterKey=ZZ", &none);
        assert_eq!(unknown["data"]["totalCounts"], 0);
        let ignoring = Effects {
            ignore_datacenter: true,
            ..Effects::default()
        };
        let asked_zz = page(&inventory, "datacenterKey=ZZ&pageSize=100", &ignoring);
        assert_eq!(asked_zz, all, "the whole account, whatever key is asked");
    }

    #[test]
    fn a_clamped_page_past_the_end_is_the_last_page_with_the_claimed_total() {
        let inventory = inventory();
        let effects = Effects {
            clamp: true,
            claim_total: Some(1_000_000_000_000),
            ..Effects::default()
        };
        let last = page(&inventory, "page=3&pageSize=3", &effects);
        for past in [4, 50, 1000] {
            let again = page(&inventory, &format!("page={past}&pageSize=3"), &effects);
            assert_eq!(again["data"]["data"], last["data"]["data"], "page {past}");
        }
        assert_eq!(ids(&last), ["im-6"]);
        assert_eq!(last["data"]["totalCounts"], 1_000_000_000_000i64);
    }

    #[test]
    fn bends_change_only_what_they_name() {
        let inventory = inventory();
        let effects = Effects {
            bends: ItemBends {
                id_less: Some(2),
                types: Some(3),
                key_suffix: Some(9),
                create_time: Some((TimeBend::Seconds, 1)),
                ..ItemBends::default()
            },
            ..Effects::default()
        };
        let bent = page(&inventory, "datacenterKey=A&pageSize=100", &effects);
        let items = bent["data"]["data"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        for item in items {
            let n = item["imageId"].as_i64().unwrap();
            assert_eq!(item.get("id").is_none(), n % 2 == 0, "{item}");
            assert_eq!(item["imageType"], format!("type-{}", n % 3));
            assert_eq!(item["datacenterKey"], "A-9");
            assert_eq!(item["createTime"], 1_700_000_000);
            assert_eq!(item["imageName"], format!("image-{n}"));
        }
    }

    #[test]
    fn bad_names_carry_bytes_that_serde_never_writes() {
        let inventory = inventory();
        let with = |how| Effects {
            bends: ItemBends {
                bad_name: Some((how, 1)),
                ..ItemBends::default()
            },
            bom: true,
            ..Effects::default()
        };
        let query = ListQuery::parse("datacenterKey=A&pageSize=1");
        let latin1 = write(&inventory, &query, &with(BadName::Latin1), "t");
        assert!(latin1.starts_with(BOM));
        assert!(std::str::from_utf8(&latin1).is_err());
        assert!(latin1
            .windows(16)
            .any(|w| w == b"\"image-0-caf\xe9\",\"".as_slice()));
        let surrogate = write(&inventory, &query, &with(BadName::LoneSurrogate), "t");
        let text = std::str::from_utf8(&surrogate[BOM.len()..]).unwrap();
        assert!(text.contains(r#""imageName":"image-0-\ud800""#), "{text}");
        assert!(serde_json::from_str::<Value>(text).is_err());
    }

    #[test]
    fn the_item_array_can_be_renamed_or_missing() {
        let inventory = inventory();
        let renamed = Effects {
            array: ArrayKey::Renamed("items".into()),
            ..Effects::default()
        };
        let page1 = page(&inventory, "datacenterKey=A", &renamed);
        assert_eq!(page1["data"]["items"].as_array().unwrap().len(), 3);
        assert!(page1["data"].get("data").is_none());
        let missing = Effects {
            array: ArrayKey::Missing,
            ..Effects::default()
        };
        let page1 = page(&inventory, "datacenterKey=A", &missing);
        assert_eq!(page1["data"], json!({"totalCounts": 3}));
    }

    /// The made-up image `n`, which pads an oversized or endless answer.
    fn filler(n: u64) -> SimImage {
        SimImage {
            id: format!("pad{n}"),
            image_id: n as i64,
            image_type: "Padding".into(),
            image_name: format!("padding-{n}"),
            image_size: "1.00".into(),
            datacenter_key: "PAD".into(),
            status: 1,
            create_time: 0,
        }
    }
    #[test]
    fn filler_items_are_written_as_serde_writes_them() {
        for n in [0, 7, u32::MAX as u64, i64::MAX as u64] {
            let mut written = Vec::new();
            push_filler(&mut written, n);
            assert_eq!(written, serde_json::to_vec(&filler(n)).unwrap());
        }
    }

    #[test]
    fn replace_swaps_every_occurrence() {
        assert_eq!(replace(b"axbxxc", b"x", b"yz"), b"ayzbyzyzc");
        assert_eq!(replace(b"abc", b"zz", b"y"), b"abc");
    }
}
