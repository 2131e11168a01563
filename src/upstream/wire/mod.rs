//! The upstream's JSON: the envelope, the page, the items, and how each is read.
//!
//! Strict where it matters, lenient where the API document is vague (SPEC, "Bounds on
//! what the upstream can make us do"):
//!
//! - The envelope's `code` and `success` decide whether the call worked. A successful
//!   answer must hold `data.data`, the item array, and `data.totalCounts`, a count,
//!   since paging depends on both; without them the answer is a [`WireError::Decode`]
//!   that names what is missing, never a page of nothing.
//! - Item fields accept a number or a string where the document is unclear
//!   (`imageSize`, `createTime`, `status`, `id`). A field that still cannot be read
//!   marks the item ([`Item::mark_invalid`]) instead of failing the page: the item is
//!   counted all the same.
//! - Bytes that are not UTF-8, and lone surrogate escapes such as `"\ud800"`, fail
//!   nothing. In a field the aggregates don't use (`imageName`, `imageId`, anything
//!   unknown) they are skipped unseen; in a used one they read as U+FFFD and mark the
//!   field. A UTF-8 byte order mark before the JSON is skipped.
//! - A `createTime` before 2000 or more than a day ahead is not a time this API can
//!   mean (seconds instead of milliseconds, or garbage): it marks the field and is
//!   left out, so it never becomes the oldest image of a group.
//!
//! How: the wire types below are derived with serde. Every field read leniently is
//! first taken as a borrowed [`RawValue`], the exact JSON text of the value, and then
//! read by the small functions at the end of this file, because serde_json fails the
//! whole body on a string it cannot read as UTF-8, and only its byte-string reader
//! (which cannot take numbers) accepts lone surrogates. Fields not declared are
//! skipped by serde's `IgnoredAny`, which checks neither.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::RangeInclusive;
use std::sync::Arc;

use serde::de::{IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::aggregate::{Field, Item, ItemDetails, Status, StatusSet};
use crate::settings::SizeUnit;

/// One decoded page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// `totalCounts`: items the whole list has, as the server says.
    pub total: u64,
    /// The items of this page.
    pub items: Vec<Item>,
    /// The upstream `traceId`, for logs.
    pub trace_id: Option<String>,
}

/// Why an answer is not a page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The envelope says the call failed (`code` ≠ 0 or `success` false).
    #[error("API error code {code}: {msg}")]
    Api {
        /// The envelope's `code` (0 when only `success` was false).
        code: i64,
        /// The envelope's `msg`, shortened.
        msg: String,
        /// The upstream `traceId`.
        trace_id: Option<String>,
    },
    /// Not the JSON we expect.
    #[error("{0}")]
    Decode(String),
}

/// The answer envelope, with `data` read as `D`: as the page ([`PageData`]) first,
/// and skipped ([`IgnoredAny`]) when that fails, to learn whether the answer was an
/// API error (whose `data` may be anything) or a broken page.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, D> {
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow)]
    success: Option<&'a RawValue>,
    #[serde(borrow)]
    msg: Option<&'a RawValue>,
    #[serde(borrow)]
    trace_id: Option<&'a RawValue>,
    data: Option<D>,
}

/// `data` of a successful answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageData<'a> {
    /// Missing (`None`), `null` (`Some(None)`), or the item array.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<Option<Vec<WireItem<'a>>>>,
    #[serde(borrow)]
    total_counts: Option<&'a RawValue>,
}

/// One element of `data.data`: the fields the aggregates use, each as its JSON text.
///
/// A field given twice (`"status":1,"status":2`) is read as missing, whatever
/// the two values: which one the upstream meant cannot be known, so the field
/// is unreadable and marked like any other ([`Item::mark_invalid`]), and the
/// item still counts. serde's derived reader would fail the whole page instead.
#[derive(Default)]
struct WireItem<'a> {
    id: Option<&'a RawValue>,
    image_type: Option<&'a RawValue>,
    image_size: Option<&'a RawValue>,
    datacenter_key: Option<&'a RawValue>,
    status: Option<&'a RawValue>,
    create_time: Option<&'a RawValue>,
    image_id: Option<&'a RawValue>,
    image_name: Option<&'a RawValue>,
}

/// The keys of an item that are read, and every other key.
enum ItemKey {
    Id,
    ImageType,
    ImageSize,
    DatacenterKey,
    Status,
    CreateTime,
    ImageId,
    ImageName,
    Other,
}

impl<'de> Deserialize<'de> for ItemKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = ItemKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<ItemKey, E> {
                Ok(match key {
                    "id" => ItemKey::Id,
                    "imageType" => ItemKey::ImageType,
                    "imageSize" => ItemKey::ImageSize,
                    "datacenterKey" => ItemKey::DatacenterKey,
                    "status" => ItemKey::Status,
                    "createTime" => ItemKey::CreateTime,
                    "imageId" => ItemKey::ImageId,
                    "imageName" => ItemKey::ImageName,
                    _ => ItemKey::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for WireItem<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ItemVisitor<'a> {
            type Value = WireItem<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an image object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<WireItem<'a>, A::Error> {
                let mut item = WireItem::default();
                // The keys seen, one bit each: a second one empties its field.
                let mut seen = 0u8;
                while let Some(key) = map.next_key::<ItemKey>()? {
                    let (bit, field) = match key {
                        ItemKey::Id => (0, &mut item.id),
                        ItemKey::ImageType => (1, &mut item.image_type),
                        ItemKey::ImageSize => (2, &mut item.image_size),
                        ItemKey::DatacenterKey => (3, &mut item.datacenter_key),
                        ItemKey::Status => (4, &mut item.status),
                        ItemKey::CreateTime => (5, &mut item.create_time),
                        ItemKey::ImageId => (6, &mut item.image_id),
                        ItemKey::ImageName => (7, &mut item.image_name),
                        ItemKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let value = map.next_value::<Option<&'de RawValue>>()?;
                    *field = match seen & (1 << bit) {
                        0 => value,
                        _ => None,
                    };
                    seen |= 1 << bit;
                }
                Ok(item)
            }
        }
        d.deserialize_map(ItemVisitor(std::marker::PhantomData))
    }
}

/// Reads a field that is present, so that a missing field (left to `default`) and
/// one that is `null` are told apart.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The byte order mark some servers put before a UTF-8 body.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// 2000-01-01T00:00:00Z in Unix milliseconds: no image of this API was made before.
const EARLIEST_CREATE_MS: i64 = 946_684_800_000;

/// How far ahead of our clock a `createTime` may be (clocks differ, a little).
const CREATE_MS_AHEAD: i64 = 24 * 3600 * 1000;

/// Decodes one answer body into a page, or says why it is not one.
pub fn decode_page(body: &[u8], unit: SizeUnit) -> Result<Page, WireError> {
    decode_page_naming(body, unit, StatusSet::default())
}

/// [`decode_page`], keeping [`Item::details`] of the items whose status is in
/// `named` (the image-info collector).
pub fn decode_page_naming(
    body: &[u8],
    unit: SizeUnit,
    named: StatusSet,
) -> Result<Page, WireError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    decode_naming(body, unit, i64::try_from(now_ms).unwrap_or(i64::MAX), named)
}

/// [`decode_page`] as of `now_ms`, the clock `createTime` is checked against.
#[cfg(test)]
fn decode(body: &[u8], unit: SizeUnit, now_ms: i64) -> Result<Page, WireError> {
    decode_naming(body, unit, now_ms, StatusSet::default())
}

/// [`decode_page_naming`] as of `now_ms`.
fn decode_naming(
    body: &[u8],
    unit: SizeUnit,
    now_ms: i64,
    named: StatusSet,
) -> Result<Page, WireError> {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    // Borrowed when the body is UTF-8, as it should be. Otherwise each bad byte
    // becomes U+FFFD: harmless in a skipped field, a mark on a used one, and a
    // syntax error outside strings, as it should be.
    let text = lossy(body);
    let envelope = match serde_json::from_str::<Envelope<PageData>>(&text) {
        Ok(envelope) => envelope,
        Err(page_error) => {
            let head: Envelope<IgnoredAny> = serde_json::from_str(&text)
                .map_err(|e| WireError::Decode(shorten(&format!("invalid JSON: {e}"), 300)))?;
            head.check()?;
            return Err(WireError::Decode(shorten(
                &format!("`data` is not a page: {page_error}"),
                300,
            )));
        }
    };
    let trace_id = envelope.check()?;
    let data = envelope
        .data
        .ok_or_else(|| WireError::Decode("success without `data` (missing or null)".into()))?;
    let total = match data.total_counts {
        None => return Err(WireError::Decode("`data.totalCounts` is missing".into())),
        Some(raw) => integer(&json(raw))
            .and_then(|t| u64::try_from(t).ok())
            .ok_or_else(|| {
                WireError::Decode(format!(
                    "`data.totalCounts` is not a count: {}",
                    shorten(raw.get(), 40)
                ))
            })?,
    };
    let wire_items = match data.data {
        Some(Some(items)) => items,
        // An empty list written as `null` hides nothing when the total agrees.
        Some(None) if total == 0 => Vec::new(),
        Some(None) => {
            return Err(WireError::Decode(format!(
                "`data.data` is null, but `data.totalCounts` is {total}"
            )))
        }
        None => {
            return Err(WireError::Decode(
                "`data.data`, the item array, is missing".into(),
            ))
        }
    };
    let mut reader = ItemReader {
        unit,
        created: EARLIEST_CREATE_MS..=now_ms.saturating_add(CREATE_MS_AHEAD),
        labels: BTreeSet::new(),
        named,
    };
    let items = wire_items.iter().map(|item| reader.item(item)).collect();
    Ok(Page {
        total,
        items,
        trace_id,
    })
}

impl<D> Envelope<'_, D> {
    /// The API error the envelope reports, if any; otherwise its `traceId`.
    fn check(&self) -> Result<Option<String>, WireError> {
        let trace_id = self.trace_id.and_then(|raw| text_of(raw, TRACE_ID_CHARS));
        let code = match self.code {
            Some(raw) => Some(
                integer(&json(raw))
                    .ok_or_else(|| WireError::Decode("`code` is not an integer".into()))?,
            ),
            None => None,
        };
        let success = match self.success.map(RawValue::get) {
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err(WireError::Decode("`success` is not a boolean".into())),
            None => None,
        };
        if code.is_none() && success.is_none() {
            return Err(WireError::Decode(
                "neither `code` nor `success` in the answer".into(),
            ));
        }
        if code.is_some_and(|c| c != 0) || success == Some(false) {
            return Err(WireError::Api {
                code: code.unwrap_or(0),
                msg: self
                    .msg
                    .and_then(|raw| text_of(raw, MSG_CHARS))
                    .unwrap_or_default(),
                trace_id,
            });
        }
        Ok(trace_id)
    }
}

/// Turns the wire items of one page into [`Item`]s.
struct ItemReader {
    unit: SizeUnit,
    /// The `createTime`s taken as times.
    created: RangeInclusive<i64>,
    /// The page's distinct `imageType` and `datacenterKey` values: a page has a
    /// handful, which its items share instead of each allocating its own.
    labels: BTreeSet<Arc<str>>,
    /// The statuses whose items keep their id, imageId and imageName (the
    /// image-info collector); empty, nothing is kept.
    named: StatusSet,
}

impl ItemReader {
    /// The item as the aggregates see it; every field that cannot be read, or is
    /// read lossily, is marked.
    fn item(&mut self, wire: &WireItem<'_>) -> Item {
        let id = value(wire.id);
        let image_type = value(wire.image_type);
        let key = value(wire.datacenter_key);
        let status = integer(&value(wire.status));
        let size = decimal(&value(wire.image_size)).and_then(|v| to_bytes(v, self.unit));
        let created = integer(&value(wire.create_time)).filter(|ms| self.created.contains(ms));
        let mut item = Item {
            id: id_hash(&id),
            datacenter_key: string(&key)
                .filter(|k| !k.is_empty())
                .map(|k| self.label(k)),
            image_type: self.label(string(&image_type).unwrap_or_default()),
            status: status.map_or(Status::Unknown, Status::from_code),
            size_bytes: size.unwrap_or(0),
            created_ms: created,
            invalid: 0,
            details: None,
        };
        if self.named.contains(item.status) && item.id.is_some() {
            let id_text = match &id {
                Json::Text(t) => t.trim().to_string(),
                Json::Number(n) => n.to_string(),
                Json::Other => String::new(),
            };
            item.details = Some(Box::new(ItemDetails {
                id: id_text,
                image_id: match value(wire.image_id) {
                    Json::Number(n) => n.to_string(),
                    Json::Text(t) => t.into_owned(),
                    Json::Other => String::new(),
                },
                image_name: string(&value(wire.image_name))
                    .unwrap_or_default()
                    .to_string(),
            }));
        }
        for (field, read) in [
            (Field::Id, item.id.is_some() && !id.is_lossy()),
            (
                Field::ImageType,
                string(&image_type).is_some() && !image_type.is_lossy(),
            ),
            (
                Field::DatacenterKey,
                item.datacenter_key.is_some() && !key.is_lossy(),
            ),
            (Field::Status, status.is_some()),
            (Field::ImageSize, size.is_some()),
            (Field::CreateTime, created.is_some()),
        ] {
            if !read {
                item.mark_invalid(field);
            }
        }
        item
    }

    fn label(&mut self, text: &str) -> Arc<str> {
        if let Some(label) = self.labels.get(text) {
            return Arc::clone(label);
        }
        let label = Arc::<str>::from(text);
        self.labels.insert(Arc::clone(&label));
        label
    }
}

/// A leniently read field, told apart by its JSON type.
enum Json<'a> {
    /// A number, as its JSON text.
    Number(&'a str),
    /// A string's text.
    Text(Cow<'a, str>),
    /// Anything else: `true`, an array, an object (`null` is a missing field).
    Other,
}

impl Json<'_> {
    /// Whether characters were lost reading it: bytes that were not UTF-8, or a lone
    /// surrogate, both now U+FFFD (as is one the upstream sent, which means the
    /// same: the upstream lost them).
    fn is_lossy(&self) -> bool {
        matches!(self, Json::Text(t) if !t.is_ascii() && t.contains(char::REPLACEMENT_CHARACTER))
    }
}

/// Reads a field, missing or not.
fn value(raw: Option<&RawValue>) -> Json<'_> {
    raw.map_or(Json::Other, json)
}

/// Reads one value from its JSON text.
fn json(raw: &RawValue) -> Json<'_> {
    let raw = raw.get();
    match raw.as_bytes().first() {
        Some(b'"') => Json::Text(text(raw)),
        Some(b'-' | b'0'..=b'9') => Json::Number(raw),
        _ => Json::Other,
    }
}

/// The text of a JSON string, from its JSON text.
fn text(raw: &str) -> Cow<'_, str> {
    // The usual string has no escape: it is the text between the quotes (serde_json
    // has checked that `raw` is one JSON string).
    if !raw.as_bytes().contains(&b'\\') {
        if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            return Cow::Borrowed(inner);
        }
    }
    // Otherwise it is read as a byte string, where serde_json writes a lone
    // surrogate escape as WTF-8 instead of failing, and turned into text lossily.
    struct Lossy;
    impl<'de> Visitor<'de> for Lossy {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
            Ok(lossy(v))
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
            Ok(Cow::Owned(lossy(v).into_owned()))
        }
    }
    // `raw` is a JSON string serde_json has already checked: this cannot fail.
    serde_json::Deserializer::from_str(raw)
        .deserialize_bytes(Lossy)
        .unwrap_or_default()
}

/// `bytes` as text, each byte that is not UTF-8 as U+FFFD. The same as
/// [`String::from_utf8_lossy`], whose check of valid text is a few times slower
/// than [`std::str::from_utf8`]'s.
fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// A string's text; `None` for any other type.
fn string<'a>(value: &'a Json<'_>) -> Option<&'a str> {
    match value {
        Json::Text(t) => Some(t),
        _ => None,
    }
}

/// A string field's text, shortened for logs; `None` for any other type.
fn text_of(raw: &RawValue, max_chars: usize) -> Option<String> {
    string(&json(raw)).map(|t| shorten(t, max_chars))
}

/// The text of a number or of a string that may hold one (around spaces allowed).
fn numeric<'a>(value: &'a Json<'_>) -> Option<&'a str> {
    match value {
        Json::Number(n) => Some(n),
        Json::Text(t) => Some(t.trim()),
        Json::Other => None,
    }
}

/// An integer given as a JSON integer, an integral float, or a string of either.
fn integer(value: &Json<'_>) -> Option<i64> {
    let n = numeric(value)?;
    n.parse::<i64>().ok().or_else(|| {
        let f = n.parse::<f64>().ok()?;
        (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
    })
}

/// A decimal given as a JSON number or a string such as `"128.00"`.
fn decimal(value: &Json<'_>) -> Option<f64> {
    numeric(value)?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

fn to_bytes(value: f64, unit: SizeUnit) -> Option<u64> {
    let bytes = (value * unit.bytes()).round();
    // Beyond 2^63 bytes is not an image size but a broken field.
    (0.0..9.2e18).contains(&bytes).then_some(bytes as u64)
}

/// The id as a stable 64-bit hash of its text: `"7"` and `7` are the same id. An
/// empty string, a fraction or any other type is no id.
fn id_hash(value: &Json<'_>) -> Option<u64> {
    let id = match value {
        Json::Text(t) => t.trim(),
        Json::Number(n) if n.bytes().all(|b| b.is_ascii_digit() || b == b'-') => n,
        _ => return None,
    };
    if id.is_empty() {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut hasher);
    Some(hasher.finish())
}

/// Characters of an answer's `msg` kept: it is logged, and copied into the last
/// error of every target that failed with it.
pub(crate) const MSG_CHARS: usize = 200;

/// Characters of an answer's `traceId` kept.
pub(crate) const TRACE_ID_CHARS: usize = 128;

/// At most `max_chars` of `s`, without control characters (the text goes to logs).
pub(crate) fn shorten(s: &str, max_chars: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_EXAMPLE: &str = r#"{
        "code": 0, "success": true,
        "data": {"data": [{"id": "7sEdkaZ0T8", "imageId": 164471562, "imageType": "Windows",
            "imageName": "aaaaaaaa", "imageSize": "128.00", "datacenterKey": "HZ",
            "status": 1, "createTime": 1708330251000}], "totalCounts": 1},
        "msg": "success", "traceId": "1d54261079ac4063b7e97f2548b18510.3561.17083313961692799"}"#;

    /// 2024-03-01T00:00:00Z: the clock of the tests that check `createTime`.
    const NOW_MS: i64 = 1_709_251_200_000;

    /// A successful page of the given items (JSON text, joined by commas).
    fn page_of(items: &str) -> Vec<u8> {
        format!(r#"{{"code":0,"success":true,"data":{{"totalCounts":1,"data":[{items}]}}}}"#)
            .into_bytes()
    }

    /// An item whose fields are all readable, with `field` (`"name":value`) added
    /// or replacing the one of that name.
    fn item_with(field: &str) -> String {
        let mut fields = vec![
            r#""id":"a1""#.to_string(),
            r#""imageType":"Linux""#.to_string(),
            r#""imageName":"base""#.to_string(),
            r#""imageSize":"1.00""#.to_string(),
            r#""datacenterKey":"HZ""#.to_string(),
            r#""status":1"#.to_string(),
            r#""createTime":1708330251000"#.to_string(),
        ];
        let name = field.split(':').next().unwrap();
        fields.retain(|f| !f.starts_with(name));
        fields.push(field.to_string());
        format!("{{{}}}", fields.join(","))
    }

    /// Decodes a page of one item (bytes), which must succeed.
    fn one_item(item: &[u8]) -> Item {
        let mut body = br#"{"code":0,"data":{"totalCounts":1,"data":["#.to_vec();
        body.extend_from_slice(item);
        body.extend_from_slice(b"]}}");
        let page = decode(&body, SizeUnit::Gib, NOW_MS)
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&body)));
        assert_eq!(page.items.len(), 1);
        page.items.into_iter().next().unwrap()
    }

    fn invalid(item: &Item) -> Vec<Field> {
        item.invalid_fields().collect()
    }

    fn decode_error(body: &[u8]) -> String {
        match decode(body, SizeUnit::Gib, NOW_MS) {
            Err(WireError::Decode(msg)) => msg,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
        }
    }

    #[test]
    fn names_are_kept_only_for_the_statuses_asked() {
        let body = page_of(
            r#"{"id":" a-1 ","imageId":42,"imageName":"web","status":0,"imageType":"W","datacenterKey":"HZ"},
               {"id":7,"imageName":"db","status":1,"imageType":"W","datacenterKey":"HZ"}"#,
        );
        let creating = StatusSet::of(&[Status::Creating]);
        let page = decode_naming(&body, SizeUnit::Gib, NOW_MS, creating).unwrap();
        let details = page.items[0].details.as_deref().unwrap();
        assert_eq!(
            (
                details.id.as_str(),
                details.image_id.as_str(),
                details.image_name.as_str()
            ),
            ("a-1", "42", "web")
        );
        assert!(page.items[1].details.is_none());
        let plain = decode(&body, SizeUnit::Gib, NOW_MS).unwrap();
        assert!(plain.items.iter().all(|i| i.details.is_none()));
    }

    #[test]
    fn the_documented_example_decodes() {
        let page = decode_page(SEED_EXAMPLE.as_bytes(), SizeUnit::Gib).unwrap();
        assert_eq!(page.total, 1);
        assert_eq!(
            page.trace_id.as_deref(),
            Some("1d54261079ac4063b7e97f2548b18510.3561.17083313961692799")
        );
        let item = &page.items[0];
        assert_eq!(item.invalid, 0);
        assert_eq!(item.size_bytes, 128 * (1 << 30));
        assert_eq!(item.status, Status::Available);
        assert_eq!(item.created_ms, Some(1_708_330_251_000));
        assert_eq!(item.datacenter_key.as_deref(), Some("HZ"));
        assert_eq!(&*item.image_type, "Windows");
    }

    #[test]
    fn numbers_and_strings_are_both_accepted() {
        let body = r#"{"code":"0","data":{"totalCounts":"2","data":[
            {"id":5,"imageType":"Linux","imageSize":1.5,"datacenterKey":"SH","status":"3","createTime":"1708330251000"},
            {"id":" 5 ","imageType":"Linux","imageSize":" 2 ","datacenterKey":"SH","status":2.0,"createTime":1.708330251e12}]}}"#;
        let page = decode(body.as_bytes(), SizeUnit::Kib, NOW_MS).unwrap();
        assert_eq!(page.total, 2);
        let [a, b] = &page.items[..] else { panic!() };
        assert_eq!((a.invalid, b.invalid), (0, 0));
        assert_eq!(a.id, b.id, "5 and \" 5 \" are one id");
        assert_eq!((a.size_bytes, b.size_bytes), (1536, 2048));
        assert_eq!((a.status, b.status), (Status::Expired, Status::Failed));
        assert_eq!(a.created_ms, Some(1_708_330_251_000));
        assert_eq!(b.created_ms, Some(1_708_330_251_000));
    }

    #[test]
    fn unreadable_fields_mark_the_item_but_keep_it() {
        let body = r#"{"code":0,"success":true,"data":{"totalCounts":1,"data":[
            {"imageType":7,"imageSize":"big","status":"x","createTime":-5,"datacenterKey":null}]}}"#;
        let page = decode_page(body.as_bytes(), SizeUnit::Gib).unwrap();
        let item = &page.items[0];
        assert_eq!(invalid(item), Field::ALL);
        assert_eq!(item.status, Status::Unknown);
        assert_eq!(item.size_bytes, 0);
        assert_eq!(item.created_ms, None);
        for odd in [
            r#""id":{"value":"a1"}"#,
            r#""id":"  ""#,
            r#""id":1.5"#,
            r#""imageType":["Linux"]"#,
            r#""imageSize":true"#,
            r#""imageSize":"-1""#,
            r#""imageSize":1e400"#,
            r#""datacenterKey":"""#,
            r#""status":"1.5""#,
            r#""createTime":"yesterday""#,
        ] {
            let item = one_item(item_with(odd).as_bytes());
            assert_eq!(invalid(&item).len(), 1, "{odd}");
        }
    }

    #[test]
    fn an_item_without_an_id_counts_and_is_marked() {
        let page = decode(
            &page_of(r#"{"imageType":"Linux","imageSize":"1","datacenterKey":"HZ","status":1,"createTime":1708330251000}"#),
            SizeUnit::Gib,
            NOW_MS,
        )
        .unwrap();
        let [item] = &page.items[..] else { panic!() };
        assert_eq!(item.id, None);
        assert_eq!(invalid(item), [Field::Id]);
        assert_eq!(item.size_bytes, 1 << 30);
    }

    #[test]
    fn a_failed_envelope_is_an_api_error_in_either_form() {
        let e = decode_page(
            br#"{"code":401,"success":false,"msg":"token invalid","traceId":"t1"}"#,
            SizeUnit::Gib,
        )
        .unwrap_err();
        assert_eq!(
            e,
            WireError::Api {
                code: 401,
                msg: "token invalid".into(),
                trace_id: Some("t1".into())
            }
        );
        let e =
            decode_page(br#"{"code":0,"success":false,"data":null}"#, SizeUnit::Gib).unwrap_err();
        assert!(matches!(e, WireError::Api { code: 0, .. }));
        // An error answer's `data` may be anything.
        let e = decode_page(
            br#"{"code":"500","data":"none","msg":"busy\u0007 now"}"#,
            SizeUnit::Gib,
        )
        .unwrap_err();
        assert_eq!(
            e,
            WireError::Api {
                code: 500,
                msg: "busy now".into(),
                trace_id: None
            }
        );
    }

    #[test]
    fn null_items_unknown_fields_and_nesting_are_read_as_expected() {
        let body = r#"{"extra":{"a":[1,{"b":null}]},"code":0,"data":{"pageNum":[2],
            "data":null,"totalCounts":0},"success":true}"#;
        let page = decode_page(body.as_bytes(), SizeUnit::Gib).unwrap();
        assert_eq!((page.total, page.items.len()), (0, 0));
        let body = page_of(&item_with(
            r#""imageType":"W\u0069n\"s\"","tags":{"x":["y"]}"#,
        ));
        let page = decode(&body, SizeUnit::Gib, NOW_MS).unwrap();
        assert_eq!(
            (&*page.items[0].image_type, page.items[0].invalid),
            ("Win\"s\"", 0)
        );
        // Items of a page share their labels.
        let body = page_of(&[item_with(r#""id":"a""#), item_with(r#""id":"b""#)].join(","));
        let page = decode(&body, SizeUnit::Gib, NOW_MS).unwrap();
        let [a, b] = &page.items[..] else { panic!() };
        assert!(Arc::ptr_eq(&a.image_type, &b.image_type));
        assert!(Arc::ptr_eq(
            a.datacenter_key.as_ref().unwrap(),
            b.datacenter_key.as_ref().unwrap()
        ));
    }

    #[test]
    fn structural_problems_are_decode_errors() {
        for body in [
            &b"not json"[..],
            br#"{"code":0,"success":true,"data":{"data":[]"#,
            br#"{"code":0,"data":{"data":[],"totalCounts":-1}}"#,
            br#"{"code":0,"data":{"data":[],"totalCounts":1.5}}"#,
            br#"{"code":"zero","data":{"data":[],"totalCounts":0}}"#,
            br#"{"code":0,"success":"yes","data":{"data":[],"totalCounts":0}}"#,
            br#"{"data":{"data":[],"totalCounts":0}}"#,
            br#"{"code":0,"data":{"data":[],"totalCounts":0,"totalCounts":1}}"#,
            br#"{"code":0,"data":{"data":[],"totalCounts":0}} trailing"#,
            br#"{"code":0,"data":{"data":[1],"totalCounts":1}}"#,
            br#"{"code":0,"data":"none"}"#,
            b"{\"code\":0,\xff\"data\":{\"data\":[],\"totalCounts\":0}}",
            br#"[]"#,
            b"",
        ] {
            decode_error(body);
        }
    }

    /// SPEC: a page must hold `data.data` (an array) and `data.totalCounts`; without
    /// them the pass fails, naming what is missing, instead of publishing nothing.
    #[test]
    fn a_page_without_its_array_or_total_names_what_is_missing() {
        for (body, names) in [
            (r#"{"code":0,"success":true}"#, "`data`"),
            (r#"{"code":0,"success":true,"data":null}"#, "`data`"),
            (
                r#"{"code":0,"data":{"list":[{"id":"a"}],"totalCounts":1}}"#,
                "`data.data`, the item array, is missing",
            ),
            (
                r#"{"code":0,"data":{"totalCounts":0}}"#,
                "`data.data`, the item array, is missing",
            ),
            (
                r#"{"code":0,"data":{"data":null,"totalCounts":3}}"#,
                "`data.data` is null",
            ),
            (
                r#"{"code":0,"data":{"data":{"id":"a"},"totalCounts":1}}"#,
                "`data` is not a page",
            ),
            (
                r#"{"code":0,"data":{"data":[]}}"#,
                "`data.totalCounts` is missing",
            ),
            (
                r#"{"code":0,"data":{"data":[],"totalCounts":null}}"#,
                "`data.totalCounts` is missing",
            ),
            (
                r#"{"code":0,"data":{"data":[],"totalCounts":"many"}}"#,
                "`data.totalCounts` is not a count",
            ),
        ] {
            let msg = decode_error(body.as_bytes());
            assert!(msg.contains(names), "{body}: {msg}");
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let mut body = BOM.to_vec();
        body.extend_from_slice(SEED_EXAMPLE.as_bytes());
        let page = decode_page(&body, SizeUnit::Gib).unwrap();
        assert_eq!(page.items[0].invalid, 0);
        // Only at the start.
        let mut body = SEED_EXAMPLE.as_bytes().to_vec();
        body.extend_from_slice(BOM);
        decode_error(&body);
    }

    /// Bytes that are not UTF-8 (here a Latin-1 `é`) in a field the aggregates don't
    /// read change nothing; in one they read, they read as U+FFFD and mark it.
    #[test]
    fn bytes_that_are_not_utf8_fail_no_page() {
        let clean = one_item(item_with(r#""imageName":"cafe""#).as_bytes());
        for unused in [
            &b"\"imageName\":\"caf\xe9\""[..],
            b"\"imageId\":\"\xff\xfe\"",
            b"\"unknown\":[\"\xc3\"]",
        ] {
            let body = replace_lossy(
                item_with(&String::from_utf8_lossy(unused)).as_bytes(),
                unused,
            );
            assert_eq!(
                one_item(&body),
                clean,
                "{}",
                String::from_utf8_lossy(unused)
            );
        }
        let mut body = page_of(&item_with(r#""imageName":"cafe""#));
        body.splice(..0, b"{\"msg\":\"\xe9\",\"x\":".iter().copied());
        body.push(b'}');
        assert!(decode_page(&body, SizeUnit::Gib).is_err(), "outer object");
        for (used, field, read) in [
            (&b"\"id\":\"a\xe91\""[..], Field::Id, "a\u{FFFD}1"),
            (
                b"\"imageType\":\"Linu\xe9\"",
                Field::ImageType,
                "Linu\u{FFFD}",
            ),
            (
                b"\"datacenterKey\":\"H\xe9Z\"",
                Field::DatacenterKey,
                "H\u{FFFD}Z",
            ),
            (b"\"imageSize\":\"1\xe9\"", Field::ImageSize, ""),
            (b"\"status\":\"\xe9\"", Field::Status, ""),
            (b"\"createTime\":\"\xe9\"", Field::CreateTime, ""),
        ] {
            let body = replace_lossy(item_with(&String::from_utf8_lossy(used)).as_bytes(), used);
            let item = one_item(&body);
            assert_eq!(invalid(&item), [field], "{}", String::from_utf8_lossy(used));
            match field {
                Field::Id => assert!(item.id.is_some(), "read lossily, still an id"),
                Field::ImageType => assert_eq!(&*item.image_type, read),
                Field::DatacenterKey => assert_eq!(item.datacenter_key.as_deref(), Some(read)),
                _ => {}
            }
        }
    }

    /// `item_with` takes text; the bytes under test are not text. This puts `raw`
    /// back in place of its lossy form.
    fn replace_lossy(body: &[u8], raw: &[u8]) -> Vec<u8> {
        let lossy = String::from_utf8_lossy(raw).into_owned().into_bytes();
        let at = body
            .windows(lossy.len())
            .position(|w| w == lossy)
            .expect("the field is in the body");
        let mut out = body[..at].to_vec();
        out.extend_from_slice(raw);
        out.extend_from_slice(&body[at + lossy.len()..]);
        out
    }

    /// A lone surrogate escape is valid JSON text but no character: serde_json
    /// refuses it in a string it reads as text. It fails no page either.
    #[test]
    fn a_lone_surrogate_escape_fails_no_page() {
        let clean = one_item(item_with(r#""imageName":"x""#).as_bytes());
        for unused in [
            r#""imageName":"\ud800""#,
            r#""imageName":"a\udc00b""#,
            r#""imageId":"\ud83d\u0041""#,
        ] {
            assert_eq!(one_item(item_with(unused).as_bytes()), clean, "{unused}");
        }
        for (used, field) in [
            (r#""id":"a\ud800""#, Field::Id),
            (r#""imageType":"\udfff""#, Field::ImageType),
            (r#""datacenterKey":"HZ\ud800""#, Field::DatacenterKey),
            (r#""imageSize":"\ud800""#, Field::ImageSize),
        ] {
            let item = one_item(item_with(used).as_bytes());
            assert_eq!(invalid(&item), [field], "{used}");
        }
        // The surrogate's three WTF-8 bytes read as three U+FFFD.
        let item = one_item(item_with(r#""imageType":"\udfff""#).as_bytes());
        assert_eq!(&*item.image_type, "\u{FFFD}".repeat(3));
        // A pair is one character, read exactly.
        let item = one_item(item_with(r#""imageType":"rocket \ud83d\ude80""#).as_bytes());
        assert_eq!((&*item.image_type, item.invalid), ("rocket 🚀", 0));
        // In the envelope's text, too.
        let e = decode_page(
            br#"{"code":1,"msg":"\ud800 down","traceId":"\udc00"}"#,
            SizeUnit::Gib,
        )
        .unwrap_err();
        assert!(matches!(e, WireError::Api { code: 1, .. }), "{e:?}");
    }

    /// Why the used fields go through [`RawValue`]: serde_json refuses both kinds of
    /// bad string when it reads them as text, and skips them when it ignores them.
    #[test]
    fn serde_json_refuses_bad_strings_only_when_it_reads_them_as_text() {
        for bad in [&b"\"caf\xe9\""[..], br#""\ud800""#] {
            assert!(serde_json::from_slice::<String>(bad).is_err());
            assert!(serde_json::from_slice::<IgnoredAny>(bad).is_ok());
        }
        assert!(serde_json::from_slice::<&RawValue>(br#""\ud800""#).is_ok());
        assert!(serde_json::from_slice::<&RawValue>(b"\"caf\xe9\"").is_err());
    }

    /// SPEC: a `createTime` before 2000-01-01 or more than a day ahead is invalid and
    /// left out, so seconds taken for milliseconds, or the year 287,000, never
    /// become the oldest image.
    #[test]
    fn create_times_out_of_range_are_marked_and_left_out() {
        let day = 24 * 3600 * 1000;
        for (created, kept) in [
            ("1708330251000", true),
            ("946684800000", true),
            ("946684799999", false),
            ("1708330251", false),
            ("\"1708330251\"", false),
            ("0", false),
            ("9000000000000000", false),
            ("9.2e18", false),
            (&(NOW_MS + day).to_string(), true),
            (&(NOW_MS + day + 1).to_string(), false),
        ] {
            let item = one_item(item_with(&format!(r#""createTime":{created}"#)).as_bytes());
            if kept {
                assert_eq!(item.created_ms, Some(created.parse().unwrap()));
                assert_eq!(item.invalid, 0, "{created}");
            } else {
                assert_eq!(item.created_ms, None, "{created}");
                assert_eq!(invalid(&item), [Field::CreateTime], "{created}");
            }
        }
        // Checked against the real clock by the public entry point.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for (created, kept) in [(now - day, true), (now + 2 * day, false)] {
            let body = page_of(&item_with(&format!(r#""createTime":{created}"#)));
            let page = decode_page(&body, SizeUnit::Gib).unwrap();
            assert_eq!(page.items[0].created_ms.is_some(), kept, "{created}");
        }
    }

    #[test]
    fn long_or_odd_envelope_text_is_shortened_for_logs() {
        let long = "x".repeat(1000);
        let body = format!(r#"{{"code":1,"msg":"{long}","traceId":"{long}"}}"#);
        let Err(WireError::Api { msg, trace_id, .. }) = decode_page(body.as_bytes(), SizeUnit::Gib)
        else {
            panic!()
        };
        assert_eq!((msg.len(), trace_id.unwrap().len()), (200, 128));
        let body = format!(r#"{{"code":0,"data":{{"data":[],"totalCounts":"{long}"}}}}"#);
        assert!(decode_error(body.as_bytes()).len() < 100);
        let body = format!(r#"{{"code":0,"data":{{"data":"{long}","totalCounts":1}}}}"#);
        assert!(decode_error(body.as_bytes()).len() <= 300 * 4);
    }

    #[test]
    fn a_key_given_twice_makes_that_field_unreadable_not_the_page() {
        let item = |n: u32, extra: &str| {
            format!(
                r#"{{"id":"i{n}","imageType":"Linux","imageSize":"1.00","datacenterKey":"HZ","status":1,"createTime":1708330251000{extra}}}"#
            )
        };
        let mut items: Vec<String> = (0..50).map(|n| item(n, "")).collect();
        items[17] = item(17, r#","status":2"#);
        items[18] = item(18, r#","id":"other","id":"third","unknown":1,"unknown":2"#);
        let body = format!(
            r#"{{"code":0,"success":true,"data":{{"totalCounts":50,"data":[{}]}}}}"#,
            items.join(",")
        );
        let page = decode_page(body.as_bytes(), SizeUnit::Gib).expect("the page is read");
        assert_eq!(page.items.len(), 50);
        let fields = |i: usize| page.items[i].invalid_fields().collect::<Vec<_>>();
        assert_eq!(page.items[17].status, Status::Unknown);
        assert_eq!(fields(17), [Field::Status]);
        assert!(page.items[17].id.is_some());
        assert_eq!(page.items[18].id, None);
        assert_eq!(fields(18), [Field::Id]);
        assert_eq!(page.items[18].status, Status::Available);
        assert!((0..50)
            .filter(|i| ![17, 18].contains(i))
            .all(|i| fields(i).is_empty()));
    }
}
