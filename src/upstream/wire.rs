//! The upstream's JSON: the envelope, the page, the items, and how each is read.
//!
//! Strict where it matters, lenient where the API document is vague. The envelope's
//! `code` and `success` decide whether the call worked, and `totalCounts` must be a
//! count, since paging depends on it. Item fields are read one by one from raw JSON,
//! accepting a number or a string where the document is unclear (`imageSize`,
//! `createTime`, `status`, `id`); a field that still cannot be read marks the item
//! (it is counted all the same) instead of failing the page. Fields the aggregates
//! don't need (`imageName`, `imageId`) are skipped without being kept.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::aggregate::{Field, Item, Status};
use crate::config::SizeUnit;

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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(borrow, default)]
    code: Option<&'a RawValue>,
    #[serde(borrow, default)]
    success: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    msg: Option<&'a RawValue>,
    #[serde(borrow, default)]
    trace_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    #[serde(borrow, default)]
    data: Option<Vec<RawItem<'a>>>,
    #[serde(borrow, default)]
    total_counts: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawItem<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    image_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    image_size: Option<&'a RawValue>,
    #[serde(borrow, default)]
    datacenter_key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<&'a RawValue>,
    #[serde(borrow, default)]
    create_time: Option<&'a RawValue>,
}

/// Decodes one answer body into a page, or says why it is not one.
pub fn decode_page(body: &[u8], unit: SizeUnit) -> Result<Page, WireError> {
    let envelope: Envelope<'_> = serde_json::from_slice(body)
        .map_err(|e| WireError::Decode(format!("invalid JSON: {e}")))?;
    let trace_id = envelope.trace_id.and_then(text).map(|t| shorten(&t, 128));
    let code = match envelope.code {
        Some(raw) => {
            Some(integer(raw).ok_or_else(|| WireError::Decode("`code` is not an integer".into()))?)
        }
        None => None,
    };
    let success = match envelope.success {
        Some(raw) => Some(
            serde_json::from_str::<bool>(raw.get())
                .map_err(|_| WireError::Decode("`success` is not a boolean".into()))?,
        ),
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
        let msg = envelope.msg.and_then(text).unwrap_or_default();
        return Err(WireError::Api {
            code: code.unwrap_or(0),
            msg: shorten(&msg, 200),
            trace_id,
        });
    }
    let data = envelope
        .data
        .filter(|raw| raw.get() != "null")
        .ok_or_else(|| WireError::Decode("success without `data`".into()))?;
    let data: Data<'_> = serde_json::from_str(data.get())
        .map_err(|e| WireError::Decode(format!("`data` is not a page: {e}")))?;
    let total = data
        .total_counts
        .and_then(integer)
        .and_then(|t| u64::try_from(t).ok())
        .ok_or_else(|| WireError::Decode("`totalCounts` is missing or not a count".into()))?;
    let items = data
        .data
        .unwrap_or_default()
        .iter()
        .map(|raw| decode_item(raw, unit))
        .collect();
    Ok(Page {
        total,
        items,
        trace_id,
    })
}

fn decode_item(raw: &RawItem<'_>, unit: SizeUnit) -> Item {
    let mut item = Item {
        id: None,
        datacenter_key: None,
        image_type: String::new(),
        status: Status::Unknown,
        size_bytes: 0,
        created_ms: None,
        invalid: 0,
    };
    match raw.id.and_then(id_hash) {
        Some(id) => item.id = Some(id),
        None => item.mark_invalid(Field::Id),
    }
    match raw.image_type.and_then(text) {
        Some(t) => item.image_type = t.into_owned(),
        None => item.mark_invalid(Field::ImageType),
    }
    match raw.datacenter_key.and_then(text).filter(|k| !k.is_empty()) {
        Some(k) => item.datacenter_key = Some(k.into_owned()),
        None => item.mark_invalid(Field::DatacenterKey),
    }
    match raw.status.and_then(integer) {
        Some(code) => item.status = Status::from_code(code),
        None => item.mark_invalid(Field::Status),
    }
    match raw
        .image_size
        .and_then(decimal)
        .and_then(|v| to_bytes(v, unit))
    {
        Some(bytes) => item.size_bytes = bytes,
        None => item.mark_invalid(Field::ImageSize),
    }
    match raw.create_time.and_then(integer).filter(|ms| *ms >= 0) {
        Some(ms) => item.created_ms = Some(ms),
        None => item.mark_invalid(Field::CreateTime),
    }
    item
}

/// A JSON string's text.
fn text<'a>(raw: &'a RawValue) -> Option<Cow<'a, str>> {
    if raw.get().starts_with('"') {
        serde_json::from_str::<Cow<'a, str>>(raw.get()).ok()
    } else {
        None
    }
}

/// A number, or a string holding one, as text.
fn numeric_text<'a>(raw: &'a RawValue) -> Option<Cow<'a, str>> {
    let s = raw.get();
    match s.as_bytes().first()? {
        b'"' => text(raw).map(|t| match t {
            Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
            Cow::Owned(o) => Cow::Owned(o.trim().to_string()),
        }),
        b'-' | b'0'..=b'9' => Some(Cow::Borrowed(s)),
        _ => None,
    }
}

/// An integer given as a JSON integer, an integral float, or a string of either.
fn integer(raw: &RawValue) -> Option<i64> {
    let t = numeric_text(raw)?;
    if let Ok(i) = t.parse::<i64>() {
        return Some(i);
    }
    let f = t.parse::<f64>().ok()?;
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

/// A decimal given as a JSON number or a string such as `"128.00"`.
fn decimal(raw: &RawValue) -> Option<f64> {
    numeric_text(raw)?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

fn to_bytes(value: f64, unit: SizeUnit) -> Option<u64> {
    let bytes = (value * unit.bytes()).round();
    // Beyond 2^63 bytes is not an image size but a broken field.
    (0.0..9.2e18).contains(&bytes).then_some(bytes as u64)
}

/// The id as a stable 64-bit hash: `"7"` and `7` are the same id.
fn id_hash(raw: &RawValue) -> Option<u64> {
    let t = numeric_text(raw)?;
    if t.is_empty() {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut hasher);
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

    const SEED_EXAMPLE: &str = r#"{
        "code": 0, "success": true,
        "data": {"data": [{"id": "7sEdkaZ0T8", "imageId": 164471562, "imageType": "Windows",
            "imageName": "aaaaaaaa", "imageSize": "128.00", "datacenterKey": "HZ",
            "status": 1, "createTime": 1708330251000}], "totalCounts": 1},
        "msg": "success", "traceId": "1d54261079ac4063b7e97f2548b18510.3561.17083313961692799"}"#;

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
        assert_eq!(item.image_type, "Windows");
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
    fn structural_problems_are_decode_errors() {
        for body in [
            &b"not json"[..],
            br#"{"code":0,"success":true,"data":{"data":[]"#,
            br#"{"code":0,"success":true}"#,
            br#"{"code":0,"data":{"data":[]}}"#,
            br#"{"code":0,"data":{"data":[],"totalCounts":-1}}"#,
            br#"{"code":"zero","data":{"data":[],"totalCounts":0}}"#,
            br#"{"data":{"data":[],"totalCounts":0}}"#,
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
