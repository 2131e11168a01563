//! The usual page, read without the general JSON parser.
//!
//! Nearly every answer has one plain shape: objects whose values are strings
//! without escapes, non-negative integers, `true`, `false` or `null`, and the
//! item array. [`envelope`] reads that shape in a single pass over the bytes and
//! gives up (`None`) at anything else: an escape, a nested value where a field
//! should be, a fraction or a sign, a duplicate field, a syntax error. The body
//! is then read by serde_json exactly as if this module did not exist.
//!
//! What it returns is what the general path returns for the same body, field for
//! field: the differential property test below and the fuzz target hold it to
//! that. It only ever declines; it never decides that an answer is broken.

use std::borrow::Cow;

use super::{decode_item, Data, Envelope, Labels, Loose, PageSeed, RawItem};
use crate::aggregate::Item;

/// Reads `text` as a page of the plain shape, or gives up.
pub(super) fn envelope(text: &str, seed: PageSeed) -> Option<Envelope<'_>> {
    let mut scan = Scanner { text, pos: 0 };
    let mut envelope = Envelope::default();
    let mut seen = 0u8;
    let head = &mut envelope.head;
    scan.object(|scan, key| match key {
        "code" => scan.field(&mut seen, 1, &mut head.code),
        "success" => scan.field(&mut seen, 2, &mut head.success),
        "msg" => scan.field(&mut seen, 4, &mut head.msg),
        "traceId" => scan.field(&mut seen, 8, &mut head.trace_id),
        "data" => {
            first_time(&mut seen, 16)?;
            envelope.data = scan.data(seed)?;
            Some(())
        }
        _ => scan.scalar().map(drop),
    })?;
    scan.skip_whitespace();
    (scan.pos == text.len()).then_some(envelope)
}

/// Notes that field `bit` was read; a second occurrence gives up (the general
/// path reports it).
fn first_time(seen: &mut u8, bit: u8) -> Option<()> {
    (*seen & bit == 0).then(|| *seen |= bit)
}

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn skip_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte that is not whitespace, left in place.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.pos + word.len();
        (self.text.as_bytes().get(self.pos..end)? == word.as_bytes()).then(|| self.pos = end)
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        let bytes = self.text.as_bytes();
        // Eight bytes at a time, up to the first that ends the string or needs
        // a closer look: a quote, a backslash or a control character. In each
        // test the lowest byte flagged is exactly the first such byte (a borrow
        // only runs upwards), so the byte loop below starts right on it.
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
        let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
        while let Some(chunk) = bytes.get(self.pos..self.pos + 8) {
            let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let special = below(x ^ (ONES * u64::from(b'"')), 1)
                | below(x ^ (ONES * u64::from(b'\\')), 1)
                | below(x, 0x20);
            if special != 0 {
                self.pos += (special.trailing_zeros() / 8) as usize;
                break;
            }
            self.pos += 8;
        }
        loop {
            match *bytes.get(self.pos)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.pos += 1,
            }
        }
        // Both ends are ASCII quotes in valid UTF-8, so both are char boundaries.
        let s = &self.text[start..self.pos];
        self.pos += 1;
        Some(s)
    }

    /// A non-negative integer of at most 18 digits (so it cannot overflow), with
    /// no fraction or exponent: what serde_json reads as a `u64`.
    fn integer(&mut self) -> Option<u64> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut value = 0u64;
        while let Some(&digit @ b'0'..=b'9') = bytes.get(self.pos) {
            if self.pos - start == 18 {
                return None;
            }
            value = value * 10 + u64::from(digit - b'0');
            self.pos += 1;
        }
        let leading_zero = bytes[start] == b'0' && self.pos - start > 1;
        let more = matches!(bytes.get(self.pos), Some(b'.' | b'e' | b'E'));
        (!leading_zero && !more).then_some(value)
    }

    /// A field's value as the general path keeps it: `null` is `None`.
    fn scalar(&mut self) -> Option<Option<Loose<'a>>> {
        let value = match self.peek()? {
            b'"' => Loose::Str(Cow::Borrowed(self.string()?)),
            b'0'..=b'9' => Loose::UInt(self.integer()?),
            b't' => self.literal("true").map(|()| Loose::Bool(true))?,
            b'f' => self.literal("false").map(|()| Loose::Bool(false))?,
            b'n' => return self.literal("null").map(|()| None),
            _ => return None,
        };
        Some(Some(value))
    }

    /// A known field's value into `slot`, unless field `bit` was read already.
    fn field(&mut self, seen: &mut u8, bit: u8, slot: &mut Option<Loose<'a>>) -> Option<()> {
        first_time(seen, bit)?;
        *slot = self.scalar()?;
        Some(())
    }

    /// An object, handing each key to `value`, which reads the value.
    fn object(&mut self, mut value: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            value(self, key)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `data`: `null`, or the page object.
    fn data(&mut self, seed: PageSeed) -> Option<Option<Data<'a>>> {
        if self.peek()? == b'n' {
            return self.literal("null").map(|()| None);
        }
        let mut data = Data::default();
        let mut seen = 0u8;
        self.object(|scan, key| match key {
            "data" => {
                first_time(&mut seen, 1)?;
                data.items = scan.items(seed)?;
                Some(())
            }
            "totalCounts" => scan.field(&mut seen, 2, &mut data.total_counts),
            _ => scan.scalar().map(drop),
        })?;
        Some(Some(data))
    }

    /// The item array (`null` reads as empty), each item reduced as it is read.
    fn items(&mut self, seed: PageSeed) -> Option<Vec<Item>> {
        if self.peek()? == b'n' {
            return self.literal("null").map(|()| Vec::new());
        }
        self.eat(b'[')?;
        let mut items = Vec::with_capacity(seed.capacity);
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(items);
        }
        let mut labels = Labels::default();
        loop {
            let raw = self.item()?;
            items.push(decode_item(&raw, seed.unit, &mut labels));
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(items);
                }
                _ => return None,
            }
        }
    }

    fn item(&mut self) -> Option<RawItem<'a>> {
        let mut raw = RawItem::default();
        let mut seen = 0u8;
        self.object(|scan, key| match key {
            "id" => scan.field(&mut seen, 1, &mut raw.id),
            "imageType" => scan.field(&mut seen, 2, &mut raw.image_type),
            "imageSize" => scan.field(&mut seen, 4, &mut raw.image_size),
            "datacenterKey" => scan.field(&mut seen, 8, &mut raw.datacenter_key),
            "status" => scan.field(&mut seen, 16, &mut raw.status),
            "createTime" => scan.field(&mut seen, 32, &mut raw.create_time),
            _ => scan.scalar().map(drop),
        })?;
        Some(raw)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{decode, PageSeed};
    use super::envelope;
    use crate::config::SizeUnit;
    use crate::sim::{generate, GenerateOptions};

    fn seed() -> PageSeed {
        PageSeed {
            unit: SizeUnit::Gib,
            capacity: 0,
        }
    }

    /// Decodes `body` both ways and checks that they agree; returns whether the
    /// fast path took it.
    fn agree(body: &str) -> bool {
        for unit in [SizeUnit::B, SizeUnit::Gib] {
            assert_eq!(
                decode(body.as_bytes(), unit, true),
                decode(body.as_bytes(), unit, false),
                "{body}"
            );
        }
        envelope(body, seed()).is_some()
    }

    #[test]
    fn the_usual_pages_take_the_fast_path() {
        let images = generate(&GenerateOptions {
            images: 100,
            ..Default::default()
        });
        let page = serde_json::json!({
            "code": 0, "success": true, "msg": "success", "traceId": "5eed.1",
            "data": {"totalCounts": 1234, "data": images},
        });
        for body in [
            serde_json::to_string(&page).unwrap(),
            serde_json::to_string_pretty(&page).unwrap(),
            super::super::tests::SEED_EXAMPLE.to_string(),
            r#"{"code":401,"success":false,"msg":"token invalid","data":null}"#.to_string(),
        ] {
            assert!(agree(&body), "{body}");
        }
    }

    #[test]
    fn anything_else_is_left_to_the_general_path() {
        let item = |field: &str| {
            format!(r#"{{"code":0,"data":{{"totalCounts":1,"data":[{{"id":"a",{field}}}]}}}}"#)
        };
        for body in [
            item(r#""imageType":"W\u0069n""#),
            item(r#""imageType":"tab	in""#),
            item(r#""imageSize":1.5"#),
            item(r#""imageSize":1e3"#),
            item(r#""status":-1"#),
            item(r#""status":01"#),
            item(r#""createTime":1234567890123456789"#),
            item(r#""tags":["x"]"#),
            item(r#""id":"b""#),
            item(r#""status":tru"#),
            r#"{"code":0,"code":0,"data":null}"#.to_string(),
            r#"{"code":0,"data":{"data":[],"totalCounts":0}} x"#.to_string(),
            r#"{"code":0,"data":{"data":[1],"totalCounts":1}}"#.to_string(),
            r#"{"code":0,"data":{"data":[{}],"totalCounts":1},}"#.to_string(),
            r#"{"code":0,"data":"none"}"#.to_string(),
            r#"[]"#.to_string(),
        ] {
            assert!(!agree(&body), "{body}");
        }
        // The longest integer taken, and one digit more.
        assert!(agree(&item(r#""createTime":123456789012345678"#)));
        assert!(!agree(&item(r#""createTime":1234567890123456789"#)));
    }

    /// Strings are read eight bytes at a time: put each kind of byte the scan
    /// must notice, and bytes it must not, at every place in and around a word.
    #[test]
    fn special_bytes_are_found_wherever_they_are() {
        let word = "abcdefghijklmnopqrstuvw";
        for special in [
            "\\\"", "\\\\", "\\u00e9", "\t", "\u{1f}", "é", "€", "\u{7f}", "\u{a0}", " ",
        ] {
            for at in 0..=word.len() {
                let text = format!("{}{special}{}", &word[..at], &word[at..]);
                let body = format!(
                    r#"{{"code":0,"data":{{"totalCounts":1,"data":[{{"imageType":"{text}","id":"{text}"}}]}}}}"#
                );
                let plain = !special.starts_with('\\') && special.chars().all(|c| c >= ' ');
                assert_eq!(agree(&body), plain, "{body}");
            }
        }
    }

    /// JSON values as text: mostly of the plain shape, sometimes not.
    fn value() -> impl Strategy<Value = String> {
        let plain = prop::sample::select(vec![
            r#""a""#,
            r#""""#,
            r#""128.00""#,
            r#"" 7 ""#,
            r#""HZ""#,
            r#""ü€""#,
            "0",
            "7",
            "123456789012345678",
            "true",
            "false",
            "null",
        ]);
        let odd = prop::sample::select(vec![
            r#""a\"b""#,
            r#""\u0041""#,
            "01",
            "-3",
            "-0",
            "1.5",
            "2e3",
            "1E1",
            "1234567890123456789",
            "99999999999999999999",
            "[]",
            "[1,2]",
            "{}",
            r#"{"a":1}"#,
            "tru",
            "nul",
            "-",
            "\"open",
        ]);
        prop_oneof![6 => plain, 1 => odd].prop_map(String::from)
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "id",
            "imageId",
            "imageType",
            "imageName",
            "imageSize",
            "datacenterKey",
            "status",
            "createTime",
            "code",
            "success",
            "msg",
            "traceId",
            "data",
            "totalCounts",
            "x",
            "",
        ])
        .prop_map(|k| format!("\"{k}\""))
    }

    fn whitespace() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "", "", " ", "\n  ", "\t", "\r\n"]).prop_map(String::from)
    }

    fn object(fields: Vec<(String, String, String)>) -> String {
        let fields: Vec<_> = fields
            .into_iter()
            .map(|(ws, k, v)| format!("{ws}{k}{ws}:{ws}{v}{ws}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    fn fields(
        keys: impl Strategy<Value = String>,
        values: impl Strategy<Value = String>,
        n: std::ops::Range<usize>,
    ) -> impl Strategy<Value = Vec<(String, String, String)>> {
        prop::collection::vec((whitespace(), keys, values), n)
    }

    fn item() -> impl Strategy<Value = String> {
        // Each field at most once, in any order, with a plain value.
        let keys = [
            "id",
            "imageType",
            "imageSize",
            "datacenterKey",
            "status",
            "createTime",
            "imageName",
        ];
        let plain = prop::sample::select(vec![r#""im-1""#, r#""Linux""#, "1", r#""64.00""#]);
        let usual = prop::sample::subsequence(keys.to_vec(), 0..=keys.len())
            .prop_shuffle()
            .prop_flat_map(move |keys| {
                let n = keys.len();
                (
                    Just(keys),
                    prop::collection::vec((whitespace(), plain.clone()), n),
                )
            })
            .prop_map(|(keys, values)| {
                let fields = keys.iter().zip(values);
                object(
                    fields
                        .map(|(k, (ws, v))| (ws, format!("\"{k}\""), v.to_string()))
                        .collect(),
                )
            });
        prop_oneof![
            6 => usual,
            2 => fields(key(), value(), 0..8).prop_map(object),
            1 => value(),
        ]
    }

    fn page() -> impl Strategy<Value = String> {
        let items = prop_oneof![
            8 => prop::collection::vec(item(), 0..5).prop_map(|items| format!("[{}]", items.join(","))),
            1 => value(),
        ];
        let data = (whitespace(), items, value(), fields(key(), value(), 0..2)).prop_map(
            |(ws, items, total, mut more)| {
                more.push((ws.clone(), "\"data\"".into(), items));
                more.push((ws, "\"totalCounts\"".into(), total));
                let half = more.len() / 2;
                more.rotate_left(half);
                object(more)
            },
        );
        let data = prop_oneof![8 => data, 1 => value()];
        (fields(key(), value(), 0..3), data, whitespace()).prop_map(|(mut envelope, data, ws)| {
            envelope.insert(envelope.len() / 2, (ws.clone(), "\"data\"".into(), data));
            format!("{ws}{}{ws}", object(envelope))
        })
    }

    /// One edit of a body: a byte removed, or one of JSON's own inserted.
    fn edited() -> impl Strategy<Value = String> {
        let edit = (
            any::<prop::sample::Index>(),
            prop::option::of(prop::sample::select(vec![
                '{', '}', '[', ']', '"', ',', ':', '\\', ' ', '0', '-', '.', 'e', 'n',
            ])),
        );
        let edits = prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(edit, 1..3)];
        (page(), edits).prop_map(|(mut body, edits)| {
            for (at, insert) in edits {
                if body.is_empty() {
                    break;
                }
                let mut at = at.index(body.len());
                while !body.is_char_boundary(at) {
                    at -= 1;
                }
                match insert {
                    Some(c) => body.insert(at, c),
                    None => {
                        body.remove(at);
                    }
                }
            }
            body
        })
    }

    /// The generated bodies are neither all plain nor all odd, so that the
    /// property below compares both paths on both kinds.
    #[test]
    fn the_generated_bodies_take_both_paths() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = edited();
        let n = 2000;
        let fast = (0..n)
            .filter(|_| agree(&strategy.new_tree(&mut runner).unwrap().current()))
            .count();
        assert!(
            fast > n / 5 && fast < n * 4 / 5,
            "{fast} of {n} took the fast path"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whatever the body, the fast path and the general one agree.
        #[test]
        fn the_fast_path_agrees_with_the_general_one(body in edited()) {
            agree(&body);
        }
    }
}
