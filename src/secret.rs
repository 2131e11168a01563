//! The access token: a type that cannot be printed, and where it comes from.
//!
//! [`Token`] has no `Display` and a `Debug` that prints `**hidden**`, so no log
//! line, error or panic message can carry it by accident. [`TokenSource`] reads
//! it from the environment once, or from a file at every refresh, so a rotated
//! Kubernetes Secret takes effect without a restart.
//!
//! [`redact_all`] removes every spelling of one or more secrets from text an
//! upstream sent back (JSON escapes, percent escapes, HTML character
//! references, nested up to [`DECODE_LAYERS`] deep), so that echoing a secret
//! in any spelling cannot carry it into a log line or a page.

use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable holding the token when no token file is given.
pub const TOKEN_ENV: &str = "FINOVY_ACCESS_TOKEN";

/// Environment variable holding the secret of `--api.uuid` when no secret file is given.
pub const SECRET_ENV: &str = "FINOVY_API_SECRET";

/// The request header that carries the token.
pub const TOKEN_HEADER: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("finovy-access-token");

/// Largest token file read: a token is a few dozen bytes; a larger file is a mistake.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// A secret string. Only [`Token::expose`] reveals it, for the request header.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token, trimming surrounding whitespace (files end with a newline).
    pub fn new(raw: &str) -> Result<Self, TokenError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(TokenError::Empty);
        }
        if trimmed.chars().any(|c| c.is_control()) {
            return Err(TokenError::Invalid);
        }
        // Copied from an `Authorization` header: the API wants the token alone.
        // Compared as bytes: a token may hold a character that spans byte 7.
        if trimmed.len() > 7 && trimmed.as_bytes()[..7].eq_ignore_ascii_case(b"bearer ") {
            return Err(TokenError::Bearer);
        }
        Ok(Token(trimmed.to_string()))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the token replaced by `**hidden**`.
    ///
    /// Upstream text (`msg`, `traceId`, bodies) passes through here before it is
    /// stored, logged or shown: an upstream that echoes the token back must not
    /// make us publish it.
    pub fn redact(&self, text: &str) -> String {
        redact_all(text, &[self.0.as_str()])
    }

    /// The length of the longest spelling of the token that [`redact_all`]
    /// recognises: a text cut after this many bytes past where the token may
    /// start still holds the whole of it.
    pub fn longest_spelling(&self) -> usize {
        longest_spelling(self.0.len())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**hidden**")
    }
}

/// Why no usable token could be had. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is empty or only whitespace.
    #[error("the token is empty")]
    Empty,
    /// The token has characters a header cannot carry.
    #[error("the token contains control characters")]
    Invalid,
    /// The value starts with `Bearer `, as an `Authorization` header does.
    #[error("the value starts with 'Bearer ': give the token alone (it is sent in the Finovy-Access-Token header, not as a bearer token)")]
    Bearer,
    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token path is not a regular file (a FIFO, a device, a directory), or is
    /// too large: reading it could block a refresh forever or fill the memory.
    #[error("token file {path} is not a regular file of at most 64 KiB ({what}); point --api.token-file at the file holding the token")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
}

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A fixed token (from the environment, or made up for `--demo`).
    Fixed(Token),
    /// A file, read again at every refresh.
    File(PathBuf),
}

impl TokenSource {
    /// The token to use now (reads the file again when there is one).
    pub fn current(&self) -> Result<Token, TokenError> {
        match self {
            TokenSource::Fixed(token) => Ok(token.clone()),
            TokenSource::File(path) => Token::new(&read_token_file(path)?),
        }
    }

    /// True when the token file can be read by users other than its owner.
    pub fn readable_by_others(&self) -> bool {
        #[cfg(unix)]
        if let TokenSource::File(path) = self {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                return meta.permissions().mode() & 0o004 != 0;
            }
        }
        false
    }
}

/// Reads a token file without ever blocking on it: only a regular file of at
/// most [`MAX_TOKEN_FILE_BYTES`] is read ([`crate::files::read_regular`]).
fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let read_error = |source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = match crate::files::read_regular(path, MAX_TOKEN_FILE_BYTES) {
        Ok(bytes) => bytes,
        Err(crate::files::FileError::NotRegular(what)) => {
            return Err(TokenError::NotRegular {
                path: path.to_path_buf(),
                what,
            })
        }
        Err(crate::files::FileError::TooLarge(_)) => {
            return Err(TokenError::NotRegular {
                path: path.to_path_buf(),
                what: "larger than 64 KiB",
            })
        }
        Err(crate::files::FileError::Io(source)) => return Err(read_error(source)),
    };
    String::from_utf8(bytes).map_err(|_| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// What a redacted secret is replaced with.
const HIDDEN: &str = "**hidden**";

/// Layers of escaping undone while looking for a secret: a JSON string inside a
/// JSON string inside a URL is three; no upstream nests deeper by accident.
pub const DECODE_LAYERS: usize = 3;

/// Bytes of a secret's start that, found at the very end of a text, are taken
/// as the secret cut off there (a text shortened before it reached us).
/// Shorter ends are left alone: a few bytes are likely to be a coincidence.
const MIN_CUT_SECRET: usize = 8;

/// The widest a byte grows in one layer of escaping: `\u0041` for `A`.
const WIDEST_ESCAPE: usize = 6;

/// The length of the longest spelling of a `secret_len`-byte secret that
/// [`redact_all`] recognises.
pub fn longest_spelling(secret_len: usize) -> usize {
    let mut len = secret_len;
    for _ in 0..DECODE_LAYERS {
        len = len.saturating_mul(WIDEST_ESCAPE);
    }
    len
}

/// `text` with every spelling of each of `secrets` replaced by `**hidden**`.
///
/// An upstream may send a secret back as it was sent, or escaped: JSON escapes
/// (`\/`, `\u003d`, every character as `\uXXXX`, in either case of hex),
/// percent escapes (`%2F`, `%2f`), HTML character references (`&#61;`,
/// `&#x3D;`), and any of these nested up to [`DECODE_LAYERS`] deep (a JSON
/// string inside a JSON string). The text is decoded layer by layer into
/// normalised copies whose every byte remembers the range of the original text
/// it came from; a secret found in any layer has that original range replaced,
/// so the rest of the text is kept as it was sent. A text that ends with at
/// least the first 8 bytes of a secret (before an incomplete escape, if any)
/// has that end replaced too: the text may have been cut inside the secret.
///
/// Within one layer every escape is undone, so a secret that itself contains
/// `\`, `%` or `&#` followed by what reads as an escape is found only where it
/// is spelled literally throughout or escaped throughout.
pub fn redact_all(text: &str, secrets: &[&str]) -> String {
    let secrets: Vec<&[u8]> = secrets
        .iter()
        .map(|s| s.as_bytes())
        .filter(|s| !s.is_empty())
        .collect();
    if secrets.is_empty() || text.is_empty() {
        return text.to_string();
    }
    let mut hits = Vec::new();
    let mut layer = Layer::original(text.as_bytes());
    for depth in 0..=DECODE_LAYERS {
        for secret in &secrets {
            layer.find(secret, text.len(), &mut hits);
        }
        if depth == DECODE_LAYERS {
            break;
        }
        match layer.decode() {
            Some(next) => layer = next,
            None => break,
        }
    }
    replace_ranges(text, hits)
}

/// One decoding of the text: its bytes, and for each the range of the original
/// text it stands for.
struct Layer {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl Layer {
    fn original(text: &[u8]) -> Self {
        Layer {
            bytes: text.to_vec(),
            spans: (0..text.len()).map(|i| (i, i + 1)).collect(),
        }
    }

    /// The original range of this layer's bytes `from..to` (`to > from`).
    fn span(&self, from: usize, to: usize) -> (usize, usize) {
        (self.spans[from].0, self.spans[to - 1].1)
    }

    /// Adds the original ranges of every whole `secret`, and of a cut one at
    /// the end, to `hits`.
    fn find(&self, secret: &[u8], original_len: usize, hits: &mut Vec<(usize, usize)>) {
        let bytes = &self.bytes;
        if bytes.len() >= secret.len() {
            for start in 0..=bytes.len() - secret.len() {
                if bytes[start] == secret[0] && &bytes[start..start + secret.len()] == secret {
                    hits.push(self.span(start, start + secret.len()));
                }
            }
        }
        // A secret cut off at the end, possibly followed by half an escape.
        let end = bytes.len() - incomplete_escape_len(bytes);
        let longest = secret.len().saturating_sub(1).min(end);
        for len in (MIN_CUT_SECRET..=longest).rev() {
            if bytes[end - len..end] == secret[..len] {
                hits.push((self.span(end - len, end).0, original_len));
                break;
            }
        }
    }

    /// This layer with one level of escapes undone; `None` when it has none.
    fn decode(&self) -> Option<Layer> {
        let b = &self.bytes;
        let mut out = Layer {
            bytes: Vec::with_capacity(b.len()),
            spans: Vec::with_capacity(b.len()),
        };
        let mut decoded = false;
        let mut i = 0;
        while i < b.len() {
            let (value, used) = match b[i] {
                b'\\' => json_escape(&b[i..]),
                b'%' => percent_escape(&b[i..]),
                b'&' => html_reference(&b[i..]),
                _ => (None, 1),
            };
            let advance = if value.is_some() { used } else { 1 };
            match value {
                Some(value) => {
                    decoded = true;
                    let span = self.span(i, i + used);
                    let (buf, len) = value.encoded();
                    for &byte in &buf[..len] {
                        out.bytes.push(byte);
                        out.spans.push(span);
                    }
                }
                None => {
                    out.bytes.push(b[i]);
                    out.spans.push(self.spans[i]);
                }
            }
            i += advance;
        }
        decoded.then_some(out)
    }
}

/// Decoded bytes: a character's UTF-8, or one raw byte of a percent escape.
enum Decoded {
    Char(char),
    Byte(u8),
}

impl Decoded {
    /// The decoded bytes, in a buffer, and how many of them there are.
    fn encoded(&self) -> ([u8; 4], usize) {
        let mut buf = [0u8; 4];
        let len = match self {
            Decoded::Char(c) => c.encode_utf8(&mut buf).len(),
            Decoded::Byte(b) => {
                buf[0] = *b;
                1
            }
        };
        (buf, len)
    }
}

fn hex_value(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// A JSON escape at the start of `b` (which starts with a backslash): what it
/// stands for and its length. A lone surrogate stands for nothing.
fn json_escape(b: &[u8]) -> (Option<Decoded>, usize) {
    let simple = match b.get(1) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'\'') => '\'',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => return unicode_escape(b),
        _ => return (None, 1),
    };
    (Some(Decoded::Char(simple)), 2)
}

fn unicode_escape(b: &[u8]) -> (Option<Decoded>, usize) {
    let Some(unit) = b.get(2..6).and_then(hex_value) else {
        return (None, 1);
    };
    if (0xD800..0xDC00).contains(&unit) {
        let low = (b.get(6..8) == Some(b"\\u"))
            .then(|| b.get(8..12).and_then(hex_value))
            .flatten()
            .filter(|low| (0xDC00..0xE000).contains(low));
        return match low {
            Some(low) => {
                let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                (char::from_u32(c).map(Decoded::Char), 12)
            }
            None => (None, 1),
        };
    }
    (char::from_u32(unit).map(Decoded::Char), 6)
}

/// A percent escape at the start of `b` (which starts with `%`).
fn percent_escape(b: &[u8]) -> (Option<Decoded>, usize) {
    match b.get(1..3).and_then(hex_value) {
        Some(v) => (Some(Decoded::Byte(v as u8)), 3),
        None => (None, 1),
    }
}

/// An HTML numeric character reference at the start of `b` (which starts
/// with `&`): `&#61;` or `&#x3D;`.
fn html_reference(b: &[u8]) -> (Option<Decoded>, usize) {
    if b.get(1) != Some(&b'#') {
        return (None, 1);
    }
    let (digits_from, radix) = match b.get(2) {
        Some(b'x' | b'X') => (3, 16),
        _ => (2, 10),
    };
    let Some(len) = b[digits_from..].iter().take(8).position(|&c| c == b';') else {
        return (None, 1);
    };
    let digits = &b[digits_from..digits_from + len];
    let value = std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_hexdigit()))
        .and_then(|d| u32::from_str_radix(d, radix).ok())
        .and_then(char::from_u32);
    match value {
        Some(c) => (Some(Decoded::Char(c)), digits_from + len + 1),
        None => (None, 1),
    }
}

/// The length of an escape cut off at the end of `b`: `\`, `\u00`, `%2`…
fn incomplete_escape_len(b: &[u8]) -> usize {
    let tail_from = b.len().saturating_sub(5);
    for start in tail_from..b.len() {
        let tail = &b[start..];
        let hex = |from: usize| tail[from..].iter().all(u8::is_ascii_hexdigit);
        let incomplete = match tail {
            [b'\\'] => true,
            [b'\\', b'u', ..] => tail.len() < 6 && hex(2),
            [b'%', ..] => tail.len() < 3 && hex(1),
            _ => false,
        };
        if incomplete {
            return tail.len();
        }
    }
    0
}

/// `text` with each of `ranges` (merged where they meet, widened to whole
/// characters) replaced by [`HIDDEN`].
fn replace_ranges(text: &str, mut ranges: Vec<(usize, usize)>) -> String {
    if ranges.is_empty() {
        return text.to_string();
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut kept_to = 0;
    let mut i = 0;
    while i < ranges.len() {
        let (mut start, mut end) = ranges[i];
        i += 1;
        while i < ranges.len() && ranges[i].0 <= end {
            end = end.max(ranges[i].1);
            i += 1;
        }
        if end <= kept_to {
            continue;
        }
        start = start.max(kept_to);
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        end = end.min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push_str(&text[kept_to..start]);
        out.push_str(HIDDEN);
        kept_to = end;
    }
    out.push_str(&text[kept_to..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let t = Token::new("  s3cr3t-value\n").unwrap();
        assert_eq!(t.expose(), "s3cr3t-value");
        assert_eq!(format!("{t:?}"), "**hidden**");
        let source = TokenSource::Fixed(t);
        assert!(!format!("{source:?}").contains("s3cr3t"));
    }

    #[test]
    fn empty_and_control_tokens_are_refused() {
        assert!(matches!(Token::new(" \n"), Err(TokenError::Empty)));
        assert!(matches!(Token::new("a\u{0}b"), Err(TokenError::Invalid)));
    }

    #[test]
    fn a_token_with_a_character_across_its_seventh_byte_is_a_token() {
        // 'é' is two bytes: bytes 6 and 7. Slicing the text at byte 7 panicked
        // (with the token in the panic message).
        for raw in ["abcdeé-token", "abcdef日本語-token", "日本語-token"] {
            assert_eq!(Token::new(raw).unwrap().expose(), raw);
        }
        assert!(matches!(Token::new("BeArEr x"), Err(TokenError::Bearer)));
    }

    #[test]
    fn file_is_read_again_each_time() {
        let dir = std::env::temp_dir().join(format!("finovy-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first\n").unwrap();
        let source = TokenSource::File(path.clone());
        assert_eq!(source.current().unwrap().expose(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(source.current().unwrap().expose(), "second");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_token_file_replaced_by_a_fifo_fails_at_once_instead_of_blocking() {
        let dir = std::env::temp_dir().join(format!("finovy-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        if !made.is_ok_and(|s| s.success()) {
            std::fs::remove_dir_all(&dir).unwrap();
            panic!("mkfifo is part of coreutils and must work here");
        }
        let err = TokenSource::File(path.clone()).current().unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        assert!(err.to_string().contains("token"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redact_removes_every_copy_of_the_token() {
        let t = Token::new("s3cr3t").unwrap();
        assert_eq!(
            t.redact("bad token s3cr3t (s3cr3t)"),
            "bad token **hidden** (**hidden**)"
        );
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    const SECRET: &str = "aB3/x+Yz=9_q-ToKen";

    /// Every character as `\uXXXX`, hex in the given case.
    fn unicode_escaped(s: &str, upper: bool) -> String {
        s.encode_utf16()
            .map(|u| match upper {
                true => format!("\\u{u:04X}"),
                false => format!("\\u{u:04x}"),
            })
            .collect()
    }

    fn percent_encoded(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| match upper {
                true => format!("%{b:02X}"),
                false => format!("%{b:02x}"),
            })
            .collect()
    }

    #[test]
    fn every_spelling_of_a_secret_is_hidden_and_the_rest_kept() {
        let spellings = [
            SECRET.to_string(),
            SECRET.replace('/', "\\/"),
            SECRET.replace('=', "\\u003d"),
            SECRET.replace('=', "\\u003D"),
            unicode_escaped(SECRET, false),
            unicode_escaped(SECRET, true),
            percent_encoded(SECRET, true),
            percent_encoded(SECRET, false),
            SECRET
                .replace('/', "%2F")
                .replace('+', "%2b")
                .replace('=', "%3D"),
            SECRET.replace('=', "&#61;").replace('/', "&#x2F;"),
            // A JSON string inside a JSON string, and a JSON escape inside a URL.
            unicode_escaped(SECRET, false).replace('\\', "\\\\"),
            SECRET.replace('/', "%5C%2F"),
        ];
        for spelled in spellings {
            let text = format!("refused token {spelled} (traceId {spelled}).");
            let redacted = redact_all(&text, &[SECRET]);
            assert_eq!(
                redacted, "refused token **hidden** (traceId **hidden**).",
                "{spelled}"
            );
        }
    }

    #[test]
    fn several_secrets_are_hidden_and_text_without_them_is_untouched() {
        let text = "a=%41%42 b=secret-one c=\\u0073ecret-two d=\\u00e9t\u{e9} \u{1F600}";
        assert_eq!(
            redact_all(text, &["secret-one", "secret-two", ""]),
            "a=%41%42 b=**hidden** c=**hidden** d=\\u00e9t\u{e9} \u{1F600}"
        );
        assert_eq!(redact_all(text, &[]), text);
        assert_eq!(redact_all(text, &["absent-secret"]), text);
        // Lone surrogates, cut escapes and stray markers pass through.
        let odd = "\\ud800 \\u12 %G1 &#xZZ; &#; % \\";
        assert_eq!(redact_all(odd, &["whatever-secret"]), odd);
    }

    #[test]
    fn non_ascii_secrets_are_found_in_utf16_and_utf8_escapes() {
        let secret = "s\u{e9}cr\u{e8}t-\u{1F511}-key";
        for spelled in [
            unicode_escaped(secret, false),
            percent_encoded(secret, true),
            secret.to_string(),
        ] {
            assert_eq!(
                redact_all(&format!("[{spelled}]"), &[secret]),
                "[**hidden**]"
            );
        }
    }

    #[test]
    fn a_secret_cut_off_at_the_end_of_a_text_is_hidden() {
        let cut = &SECRET[..10];
        assert_eq!(
            redact_all(&format!("token {cut}"), &[SECRET]),
            "token **hidden**"
        );
        // Escaped, and cut inside an escape.
        let escaped = unicode_escaped(SECRET, false);
        let cut = &escaped[..escaped.len() / 2 + 3];
        assert_eq!(
            redact_all(&format!("token {cut}"), &[SECRET]),
            "token **hidden**"
        );
        // A few bytes of the secret's start are a coincidence, not a secret.
        assert_eq!(redact_all("ends with aB3/", &[SECRET]), "ends with aB3/");
    }

    #[test]
    fn the_longest_spelling_holds_the_deepest_escape() {
        let mut spelled = SECRET.to_string();
        for _ in 0..DECODE_LAYERS {
            spelled = unicode_escaped(&spelled, false);
        }
        assert!(spelled.len() <= longest_spelling(SECRET.len()));
        assert_eq!(redact_all(&spelled, &[SECRET]), "**hidden**");
        let token = Token::new(SECRET).unwrap();
        assert_eq!(token.longest_spelling(), longest_spelling(SECRET.len()));
        assert_eq!(token.redact(&format!("x{spelled}x")), "x**hidden**x");
    }
}
