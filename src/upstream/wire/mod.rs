//! The upstream's JSON: the envelope, the page, the items, and how each is read.
//!
//! Strict where it matters, lenient where the API document is vague. The envelope's
//! `code` and `success` decide whether the call worked, and `totalCounts` must be a
//! count, since paging depends on it. Item fields are read one by one from raw JSON,
//! accepting a number or a string where the document is unclear (`imageSize`,
//! `createTime`, `status`, `id`); a field that still cannot be read marks the item
//! (it is counted all the same) instead of failing the page. Fields the aggregates
//! don't need (`imageName`, `imageId`) are skipped without being kept.
//!
//! The usual page, plain strings and integers in the documented shape, is read by
//! a small scanner (the private module `scan`), about a third faster than going
//! through serde; anything else is read by serde_json, and both give the same
//! result for every body (a differential property test and the fuzz target).

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::aggregate::{Field, Item, Status};
use crate::config::SizeUnit;

mod scan;

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

/// Any JSON value, kept only as far as the decoder needs it: one pass over the
/// body, no second parse of a field, strings borrowed where they have no escapes.
#[derive(Debug, Clone, PartialEq)]
enum Loose<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    /// An array or an object, skipped.
    Nested,
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LooseVisitor;
        impl<'de> Visitor<'de> for LooseVisitor {
            type Value = Loose<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Loose::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Loose::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                Loose::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Loose::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Loose::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Loose::UInt(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Loose::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose::Nested)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Nested)
            }
        }
        deserializer.deserialize_any(LooseVisitor)
    }
}

/// The envelope's fields besides `data`. Read on their own when an answer is
/// not a page, to tell an API error (error answers carry anything in `data`)
/// from a broken answer.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Head<'a> {
    #[serde(borrow, default)]
    code: Option<Loose<'a>>,
    #[serde(borrow, default)]
    success: Option<Loose<'a>>,
    #[serde(borrow, default)]
    msg: Option<Loose<'a>>,
    #[serde(borrow, default)]
    trace_id: Option<Loose<'a>>,
}

/// The envelope of a page, read in one pass: the items are reduced to [`Item`]s
/// as the parser meets them, never held as JSON values.
#[derive(Default)]
struct Envelope<'a> {
    head: Head<'a>,
    data: Option<Data<'a>>,
}

#[derive(Default)]
struct Data<'a> {
    items: Vec<Item>,
    total_counts: Option<Loose<'a>>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum EnvelopeKey {
    Code,
    Success,
    Data,
    Msg,
    TraceId,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum DataKey {
    Data,
    TotalCounts,
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawItem<'a> {
    #[serde(borrow, default)]
    id: Option<Loose<'a>>,
    #[serde(borrow, default)]
    image_type: Option<Loose<'a>>,
    #[serde(borrow, default)]
    image_size: Option<Loose<'a>>,
    #[serde(borrow, default)]
    datacenter_key: Option<Loose<'a>>,
    #[serde(borrow, default)]
    status: Option<Loose<'a>>,
    #[serde(borrow, default)]
    create_time: Option<Loose<'a>>,
}

/// How to read a page: the size unit, and room for the items expected.
#[derive(Clone, Copy)]
struct PageSeed {
    unit: SizeUnit,
    capacity: usize,
}

/// Notes that field `bit` was read; a second occurrence is an error, as with
/// derived decoders.
fn first_time<E: serde::de::Error>(seen: &mut u8, bit: u8, name: &'static str) -> Result<(), E> {
    if *seen & bit != 0 {
        return Err(E::duplicate_field(name));
    }
    *seen |= bit;
    Ok(())
}

impl<'de> DeserializeSeed<'de> for PageSeed {
    type Value = Envelope<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct EnvelopeVisitor(PageSeed);
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the answer envelope")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut envelope = Envelope::default();
                let mut seen = 0u8;
                while let Some(key) = map.next_key::<EnvelopeKey>()? {
                    match key {
                        EnvelopeKey::Code => {
                            first_time(&mut seen, 1, "code")?;
                            envelope.head.code = map.next_value()?;
                        }
                        EnvelopeKey::Success => {
                            first_time(&mut seen, 2, "success")?;
                            envelope.head.success = map.next_value()?;
                        }
                        EnvelopeKey::Msg => {
                            first_time(&mut seen, 4, "msg")?;
                            envelope.head.msg = map.next_value()?;
                        }
                        EnvelopeKey::TraceId => {
                            first_time(&mut seen, 8, "traceId")?;
                            envelope.head.trace_id = map.next_value()?;
                        }
                        EnvelopeKey::Data => {
                            first_time(&mut seen, 16, "data")?;
                            envelope.data = map.next_value_seed(DataSeed(self.0))?;
                        }
                        EnvelopeKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(envelope)
            }
        }
        d.deserialize_map(EnvelopeVisitor(self))
    }
}

/// `data`: `null`, or the page object.
struct DataSeed(PageSeed);

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = Option<Data<'de>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for DataSeed {
    type Value = Option<Data<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the page object or null")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut data = Data::default();
        let mut seen = 0u8;
        while let Some(key) = map.next_key::<DataKey>()? {
            match key {
                DataKey::Data => {
                    first_time(&mut seen, 1, "data")?;
                    data.items = map.next_value_seed(ItemsSeed(self.0))?;
                }
                DataKey::TotalCounts => {
                    first_time(&mut seen, 2, "totalCounts")?;
                    data.total_counts = map.next_value()?;
                }
                DataKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(data))
    }
}

/// The item array (`null` reads as empty), each item reduced as it is read.
struct ItemsSeed(PageSeed);

impl<'de> DeserializeSeed<'de> for ItemsSeed {
    type Value = Vec<Item>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed {
    type Value = Vec<Item>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of items or null")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let PageSeed { unit, capacity } = self.0;
        let mut items = Vec::with_capacity(capacity);
        let mut labels = Labels::default();
        while let Some(raw) = seq.next_element::<RawItem<'de>>()? {
            items.push(decode_item(&raw, unit, &mut labels));
        }
        Ok(items)
    }
}

/// Decodes one answer body into a page, or says why it is not one.
pub fn decode_page(body: &[u8], unit: SizeUnit) -> Result<Page, WireError> {
    decode(body, unit, true)
}

/// [`decode_page`] without the fast path for the usual page: the reference the
/// fast path is fuzzed against.
#[cfg(fuzzing)]
pub fn decode_page_general(body: &[u8], unit: SizeUnit) -> Result<Page, WireError> {
    decode(body, unit, false)
}

fn decode(body: &[u8], unit: SizeUnit, fast: bool) -> Result<Page, WireError> {
    // Checked once here, so the parsers need not check each string again.
    let body = std::str::from_utf8(body)
        .map_err(|e| WireError::Decode(format!("invalid JSON: not UTF-8: {e}")))?;
    // Room for the items a body this long can hold, about; bounded, as the
    // body's length is the server's to choose.
    let seed = PageSeed {
        unit,
        capacity: (body.len() / 128).min(4096),
    };
    let (envelope, data_error) = match fast.then(|| scan::envelope(body, seed)).flatten() {
        Some(envelope) => (envelope, None),
        None => parse(body, seed)?,
    };
    let head = &envelope.head;
    let trace_id = head
        .trace_id
        .as_ref()
        .and_then(text)
        .map(|t| shorten(t, 128));
    let code = match &head.code {
        Some(raw) => {
            Some(integer(raw).ok_or_else(|| WireError::Decode("`code` is not an integer".into()))?)
        }
        None => None,
    };
    let success = match &head.success {
        Some(Loose::Bool(b)) => Some(*b),
        Some(_) => return Err(WireError::Decode("`success` is not a boolean".into())),
        None => None,
    };
    let failed = match (code, success) {
        (None, None) => {
            return Err(WireError::Decode(
                "neither `code` nor `success` in the answer".into(),
            ))
        }
        (code, success) => code.is_some_and(|c| c != 0) || success == Some(false),
    };
    if failed {
        let msg = head.msg.as_ref().and_then(text).unwrap_or_default();
        return Err(WireError::Api {
            code: code.unwrap_or(0),
            msg: shorten(msg, 200),
            trace_id,
        });
    }
    if let Some(e) = data_error {
        return Err(WireError::Decode(format!("`data` is not a page: {e}")));
    }
    let data = envelope
        .data
        .ok_or_else(|| WireError::Decode("success without `data`".into()))?;
    let total = data
        .total_counts
        .as_ref()
        .and_then(integer)
        .and_then(|t| u64::try_from(t).ok())
        .ok_or_else(|| WireError::Decode("`totalCounts` is missing or not a count".into()))?;
    let items = data.items;
    Ok(Page {
        total,
        items,
        trace_id,
    })
}

/// Reads the envelope with serde_json. An answer whose `data` is not a page is
/// read again for the envelope alone (error answers carry anything in `data`),
/// with the reason `data` was not a page.
fn parse(
    body: &str,
    seed: PageSeed,
) -> Result<(Envelope<'_>, Option<serde_json::Error>), WireError> {
    let mut parser = serde_json::Deserializer::from_str(body);
    let parsed = seed
        .deserialize(&mut parser)
        .and_then(|envelope| parser.end().map(|()| envelope));
    match parsed {
        Ok(envelope) => Ok((envelope, None)),
        Err(data_error) => {
            let head = serde_json::from_str(body)
                .map_err(|e| WireError::Decode(format!("invalid JSON: {e}")))?;
            Ok((Envelope { head, data: None }, Some(data_error)))
        }
    }
}

/// The distinct `imageType` and `datacenterKey` values of one page, shared by its
/// items: a page holds a handful, so each item costs no allocation of its own.
#[derive(Default)]
struct Labels(Vec<Arc<str>>);

impl Labels {
    /// Past this many distinct values a page is odd; stop looking them up.
    const MAX: usize = 32;

    fn get(&mut self, value: &str) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|known| ***known == *value) {
            return Arc::clone(known);
        }
        let label: Arc<str> = Arc::from(value);
        if self.0.len() < Self::MAX {
            self.0.push(Arc::clone(&label));
        }
        label
    }
}

fn decode_item(raw: &RawItem<'_>, unit: SizeUnit, labels: &mut Labels) -> Item {
    let image_type = raw.image_type.as_ref().and_then(text);
    let mut item = Item {
        id: None,
        datacenter_key: None,
        image_type: labels.get(image_type.unwrap_or("")),
        status: Status::Unknown,
        size_bytes: 0,
        created_ms: None,
        invalid: 0,
    };
    if image_type.is_none() {
        item.mark_invalid(Field::ImageType);
    }
    match raw.id.as_ref().and_then(id_hash) {
        Some(id) => item.id = Some(id),
        None => item.mark_invalid(Field::Id),
    }
    match raw
        .datacenter_key
        .as_ref()
        .and_then(text)
        .filter(|k| !k.is_empty())
    {
        Some(k) => item.datacenter_key = Some(labels.get(k)),
        None => item.mark_invalid(Field::DatacenterKey),
    }
    match raw.status.as_ref().and_then(integer) {
        Some(code) => item.status = Status::from_code(code),
        None => item.mark_invalid(Field::Status),
    }
    match raw
        .image_size
        .as_ref()
        .and_then(decimal)
        .and_then(|v| to_bytes(v, unit))
    {
        Some(bytes) => item.size_bytes = bytes,
        None => item.mark_invalid(Field::ImageSize),
    }
    match raw
        .create_time
        .as_ref()
        .and_then(integer)
        .filter(|ms| *ms >= 0)
    {
        Some(ms) => item.created_ms = Some(ms),
        None => item.mark_invalid(Field::CreateTime),
    }
    item
}

/// A JSON string's text.
fn text<'a>(value: &'a Loose<'_>) -> Option<&'a str> {
    match value {
        Loose::Str(s) => Some(s),
        _ => None,
    }
}

/// An integer given as a JSON integer, an integral float, or a string of either.
fn integer(value: &Loose<'_>) -> Option<i64> {
    let integral =
        |f: f64| (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64);
    match value {
        Loose::Int(i) => Some(*i),
        Loose::UInt(u) => i64::try_from(*u).ok(),
        Loose::Float(f) => integral(*f),
        Loose::Str(s) => {
            let s = trim(s);
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(integral))
        }
        _ => None,
    }
}

/// A decimal given as a JSON number or a string such as `"128.00"`.
fn decimal(value: &Loose<'_>) -> Option<f64> {
    match value {
        Loose::Int(i) => Some(*i as f64),
        Loose::UInt(u) => Some(*u as f64),
        Loose::Float(f) => Some(*f),
        Loose::Str(s) => {
            let s = trim(s);
            plain_decimal(s)
                .or_else(|| s.parse::<f64>().ok())
                .filter(|v| v.is_finite())
        }
        _ => None,
    }
}

/// `s` without surrounding whitespace, as [`str::trim`]; the usual value has
/// none, which is checked on its two end bytes.
fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

/// The value of a plain decimal such as `128.00` (digits, then optionally a
/// point and more digits), when it is exact to compute: the digits read as one
/// integer of at most 15 digits, divided by a power of ten, is then the correctly
/// rounded value, the same that [`str::parse`] gives. `None` for anything else,
/// which is left to [`str::parse`].
fn plain_decimal(s: &str) -> Option<f64> {
    const POWERS: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || int.len() + frac.len() > 15 || (s.len() > int.len() && frac.is_empty()) {
        return None;
    }
    let mut digits = 0u64;
    for b in int.bytes().chain(frac.bytes()) {
        if !b.is_ascii_digit() {
            return None;
        }
        digits = digits * 10 + u64::from(b - b'0');
    }
    Some(digits as f64 / POWERS[frac.len()])
}

fn to_bytes(value: f64, unit: SizeUnit) -> Option<u64> {
    let bytes = (value * unit.bytes()).round();
    // Beyond 2^63 bytes is not an image size but a broken field.
    (0.0..9.2e18).contains(&bytes).then_some(bytes as u64)
}

/// The id as a stable 64-bit hash: `"7"` and `7` are the same id.
fn id_hash(value: &Loose<'_>) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match value {
        Loose::Str(s) => match trim(s) {
            "" => return None,
            s => s.hash(&mut hasher),
        },
        Loose::Int(i) => i.to_string().hash(&mut hasher),
        Loose::UInt(u) => u.to_string().hash(&mut hasher),
        _ => return None,
    }
    Some(hasher.finish())
}

fn shorten(s: &str, max_chars: usize) -> String {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect();
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const SEED_EXAMPLE: &str = r#"{
        "code": 0, "success": true,
        "data": {"data": [{"id": "7sEdkaZ0T8", "imageId": 164471562, "imageType": "Windows",
            "imageName": "aaaaaaaa", "imageSize": "128.00", "datacenterKey": "HZ",
            "status": 1, "createTime": 1708330251000}], "totalCounts": 1},
        "msg": "success", "traceId": "1d54261079ac4063b7e97f2548b18510.3561.17083313961692799"}"#;

    proptest::proptest! {
        #[test]
        fn plain_decimals_read_as_the_standard_parser_reads_them(
            s in "[0-9]{0,17}(\\.[0-9]{0,17})?|[ +-]?[0-9.eE]{1,8} ?"
        ) {
            if let Some(v) = plain_decimal(&s) {
                proptest::prop_assert_eq!(Some(v), s.parse::<f64>().ok(), "{:?}", s);
            }
        }

        #[test]
        fn trimming_is_the_standard_trim(s in "\\PC{0,4}|[ \t\u{a0}\u{3000}]?[a-z0-9]{0,3}[ \n\u{2003}]?") {
            proptest::prop_assert_eq!(trim(&s), s.trim());
        }
    }

    #[test]
    fn usual_decimals_take_the_exact_path() {
        for (s, v) in [
            ("128.00", 128.0),
            ("256.50", 256.5),
            ("0.1", 0.1),
            ("7", 7.0),
        ] {
            assert_eq!(plain_decimal(s), Some(v), "{s}");
        }
        for s in ["1.", ".5", "-1", "1e3", "1234567890.123456", "", "1.2.3"] {
            assert_eq!(plain_decimal(s), None, "{s}");
        }
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
            {"id":5,"imageType":"Linux","imageSize":1.5,"datacenterKey":"SH","status":"3","createTime":"1000"},
            {"id":"5","imageType":"Linux","imageSize":" 2 ","datacenterKey":"SH","status":2.0,"createTime":1e3}]}}"#;
        let page = decode_page(body.as_bytes(), SizeUnit::Kib).unwrap();
        assert_eq!(page.total, 2);
        let [a, b] = &page.items[..] else { panic!() };
        assert_eq!((a.invalid, b.invalid), (0, 0));
        assert_eq!(a.id, b.id, "7 and \"7\" are one id");
        assert_eq!((a.size_bytes, b.size_bytes), (1536, 2048));
        assert_eq!((a.status, b.status), (Status::Expired, Status::Failed));
        assert_eq!(b.created_ms, Some(1000));
    }

    #[test]
    fn unreadable_fields_mark_the_item_but_keep_it() {
        let body = r#"{"code":0,"success":true,"data":{"totalCounts":1,"data":[
            {"imageType":7,"imageSize":"big","status":"x","createTime":-5,"datacenterKey":null}]}}"#;
        let page = decode_page(body.as_bytes(), SizeUnit::Gib).unwrap();
        let item = &page.items[0];
        let fields: Vec<_> = item.invalid_fields().collect();
        assert_eq!(fields, Field::ALL);
        assert_eq!(item.status, Status::Unknown);
        assert_eq!(item.size_bytes, 0);
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
    }

    #[test]
    fn null_items_unknown_fields_and_nesting_are_read_as_expected() {
        let body = r#"{"extra":{"a":[1,{"b":null}]},"code":0,"data":{"pageNum":[2],
            "data":null,"totalCounts":0},"success":true}"#;
        let page = decode_page(body.as_bytes(), SizeUnit::Gib).unwrap();
        assert_eq!((page.total, page.items.len()), (0, 0));
        let body = r#"{"code":0,"data":{"totalCounts":2,"data":[
            {"id":"a","imageType":"W\u0069n","tags":{"x":["y"]},"datacenterKey":"HZ","status":1,"imageSize":1,"createTime":1},
            {"id":"b","imageType":"Win","datacenterKey":"HZ","status":1,"imageSize":1,"createTime":1}]}}"#;
        let page = decode_page(body.as_bytes(), SizeUnit::Gib).unwrap();
        let [a, b] = &page.items[..] else { panic!() };
        assert_eq!((&*a.image_type, a.invalid), ("Win", 0));
        assert!(
            Arc::ptr_eq(&a.image_type, &b.image_type),
            "one label per page"
        );
    }

    #[test]
    fn structural_problems_are_decode_errors() {
        for body in [
            &b"not json"[..],
            br#"{"code":0,"success":true,"data":{"data":[]"#,
            br#"{"code":0,"success":true}"#,
            br#"{"code":0,"data":{"data":[]}}"#,
            br#"{"code":0,"data":{"data":[],"totalCounts":-1}}"#,
            br#"{"code":"zero","data":{"data":[],"totalCounts":0}}"#,
            br#"{"data":{"data":[],"totalCounts":0}}"#,
            br#"{"code":0,"data":{"data":[],"totalCounts":0,"totalCounts":1}}"#,
            br#"{"code":0,"data":{"data":[],"totalCounts":0}} trailing"#,
            b"{\"code\":0,\"data\":{\"data\":[],\"totalCounts\":0},\"msg\":\"\xff\"}",
            br#"[]"#,
        ] {
            let e = decode_page(body, SizeUnit::Gib).unwrap_err();
            assert!(
                matches!(e, WireError::Decode(_)),
                "{}: {e:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
