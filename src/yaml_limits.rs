//! Bounds on a YAML file before it is deserialised: its size, how deep it
//! nests, and how much its aliases expand it.
//!
//! `serde_yaml_ng` reads the whole event stream of a file before it builds
//! anything, and replays an alias's events wherever the alias stands. A small
//! file can therefore nest tens of thousands of levels deep (which its parser
//! takes seconds to minutes to reject) or name a 256 KiB string 300 times
//! (75 MB once expanded; a 1 MB file reached 4 GB). [`check`] walks the file's
//! events once with a streaming parser (`saphyr-parser`), keeping only a stack
//! as deep as the nesting and one number per anchor, and stops at the first
//! bound passed, so a hostile file costs at most [`MAX_FILE_BYTES`] of reading.
//!
//! What it keeps true: a file that passes never expands to more than
//! [`MAX_EXPANDED_BYTES`] and never nests deeper than [`MAX_DEPTH`]. A file the
//! streaming parser cannot read is left to `serde_yaml_ng`, whose error
//! message and position are the ones operators see; `serde_yaml_ng`'s own
//! limits (128 levels, alias replays at most 100 times the events) still hold
//! there. docs/bounds.md says why these numbers.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, Span};

/// Bytes a configuration file (`--config.file`, `--web.config.file`) may
/// have: a file of 2,000 accounts is some 200 KB.
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// Levels of nesting a file may have: the accounts file needs five.
pub const MAX_DEPTH: usize = 32;

/// What a file may expand to once every alias is replaced by what it names,
/// counted as the bytes of every scalar plus one per node.
pub const MAX_EXPANDED_BYTES: u64 = 16 << 20;

/// A bound the file passes, with where it was passed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlLimitError {
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("the file is {size} bytes, more than the {limit} bytes a configuration file may have")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// The file nests deeper than [`MAX_DEPTH`].
    #[error("nested more than {limit} levels deep (the limit for a configuration file; the accounts file needs five)")]
    TooDeep {
        /// The bound.
        limit: usize,
        /// Line and column (from 1) of the node past it.
        at: (usize, usize),
    },
    /// The file's aliases expand it past [`MAX_EXPANDED_BYTES`].
    #[error("its aliases expand it to more than {limit} bytes (the limit for a configuration file); write repeated values out, or repeat large ones less")]
    TooExpanded {
        /// The bound.
        limit: u64,
        /// Line and column (from 1) of the node that passed it.
        at: (usize, usize),
    },
}

impl YamlLimitError {
    /// Line and column (from 1) where the bound was passed, when known.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            YamlLimitError::TooLarge { .. } => None,
            YamlLimitError::TooDeep { at, .. } | YamlLimitError::TooExpanded { at, .. } => {
                Some(*at)
            }
        }
    }
}

/// Reads a configuration file of at most [`MAX_FILE_BYTES`]: a regular file
/// only ([`crate::files::read_regular`]; `/dev/zero` read whole filled 3 GB in
/// six seconds, and a FIFO blocked the start, or the reload worker for good).
pub fn read_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    Ok(crate::files::read_regular(path, MAX_FILE_BYTES as u64)?)
}

/// Checks `text` against [`MAX_FILE_BYTES`], [`MAX_DEPTH`] and
/// [`MAX_EXPANDED_BYTES`].
pub fn check(text: &str) -> Result<(), YamlLimitError> {
    check_within(text, MAX_FILE_BYTES, MAX_DEPTH, MAX_EXPANDED_BYTES)
}

/// [`check`] with other bounds.
pub fn check_within(
    text: &str,
    max_bytes: usize,
    max_depth: usize,
    max_expanded: u64,
) -> Result<(), YamlLimitError> {
    if text.len() > max_bytes {
        return Err(YamlLimitError::TooLarge {
            size: text.len(),
            limit: max_bytes,
        });
    }
    /// An open collection: its anchor (0 for none) and what it expands to so far.
    struct Open {
        anchor: usize,
        weight: u64,
    }
    let mut open: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, u64> = HashMap::new();
    let mut total = 0u64;
    let mut parser = Parser::new_from_str(text);
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(next) => next,
            // The streaming parser counts flow levels in a byte: deeper than
            // 255 is its own "recursion limit".
            Err(err) if err.info().contains("recursion limit") => {
                let at = err.marker();
                return Err(YamlLimitError::TooDeep {
                    limit: max_depth,
                    at: (at.line(), at.col() + 1),
                });
            }
            // Anything else it cannot read is left to serde_yaml_ng, whose
            // messages operators see.
            Err(_) => return Ok(()),
        };
        let weight = match event {
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if open.len() >= max_depth {
                    return Err(YamlLimitError::TooDeep {
                        limit: max_depth,
                        at: position(&span),
                    });
                }
                open.push(Open { anchor, weight: 1 });
                total += 1;
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(closed) = open.pop() else { continue };
                if closed.anchor != 0 {
                    anchors.insert(closed.anchor, closed.weight);
                }
                if let Some(parent) = open.last_mut() {
                    parent.weight = parent.weight.saturating_add(closed.weight);
                }
                continue;
            }
            Event::Scalar(value, _, anchor, _) => {
                let weight = 1 + value.len() as u64;
                if anchor != 0 {
                    anchors.insert(anchor, weight);
                }
                weight
            }
            // An alias of an anchor not closed yet (a cycle) weighs what it
            // has so far: serde_yaml_ng refuses the cycle itself.
            Event::Alias(anchor) => anchors.get(&anchor).copied().unwrap_or(1),
            _ => continue,
        };
        total = total.saturating_add(weight);
        if total > max_expanded {
            return Err(YamlLimitError::TooExpanded {
                limit: max_expanded,
                at: position(&span),
            });
        }
        if let Some(parent) = open.last_mut() {
            parent.weight = parent.weight.saturating_add(weight);
        }
    }
    Ok(())
}

/// Line and column, both from 1, as `serde_yaml_ng` gives them.
fn position(span: &Span) -> (usize, usize) {
    (span.start.line(), span.start.col() + 1)
}

/// The position (line and column from 1) of every element of the sequence
/// under `key` in the top-level mapping, in one pass over the file; empty when
/// there is no such sequence or the file cannot be read this way.
pub fn sequence_item_positions(text: &str, key: &str) -> Vec<(usize, usize)> {
    let mut positions = Vec::new();
    let mut depth = 0usize;
    let mut expect_key = true;
    let mut next_is_key = false;
    let mut in_sequence = false;
    let mut parser = Parser::new_from_str(text);
    while let Some(Ok((event, span))) = parser.next_event() {
        let starts = matches!(event, Event::SequenceStart(..) | Event::MappingStart(..));
        match event {
            Event::SequenceEnd | Event::MappingEnd => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    // A collection value of the top-level mapping has ended.
                    in_sequence = false;
                    expect_key = true;
                }
                continue;
            }
            Event::DocumentEnd => break,
            Event::Scalar(..)
            | Event::Alias(_)
            | Event::SequenceStart(..)
            | Event::MappingStart(..) => {}
            _ => continue,
        }
        if depth == 2 && in_sequence {
            positions.push(position(&span));
        }
        if depth == 1 {
            if expect_key {
                next_is_key = matches!(&event, Event::Scalar(v, ..) if v == key);
                expect_key = false;
            } else {
                in_sequence = next_is_key && matches!(event, Event::SequenceStart(..));
                next_is_key = false;
                expect_key = !starts;
            }
        }
        if starts {
            depth += 1;
        }
    }
    positions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_file_of_bounded_size_is_read() {
        let err = read_file(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = read_file(std::path::Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        let dir = std::env::temp_dir().join(format!("finovy-yaml-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES + 1]).unwrap();
        let err = read_file(&big).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        let small = dir.join("small.yaml");
        std::fs::write(&small, "accounts: []\n").unwrap();
        assert_eq!(read_file(&small).unwrap(), b"accounts: []\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_ordinary_file_passes_and_its_accounts_are_found_where_they_start() {
        let text = "defaults:\n  api: {url: 'http://x'}\naccounts:\n  - name: a\n    token_file: t\n  - {name: b, token_env: B}\n  - &c\n    name: c\n    token_env: C\nother: [1, 2]\n";
        assert_eq!(check(text), Ok(()));
        assert_eq!(
            sequence_item_positions(text, "accounts"),
            [(4, 5), (6, 5), (7, 5)]
        );
        assert_eq!(sequence_item_positions(text, "missing"), []);
        assert_eq!(sequence_item_positions("accounts: 3\n", "accounts"), []);
        assert_eq!(sequence_item_positions("{[", "accounts"), []);
    }

    #[test]
    fn aliases_are_counted_at_their_expanded_size() {
        let big = "x".repeat(1000);
        let text = format!("a: &big {big}\nb: [*big, *big, *big]\n");
        // 4 copies of 1,000 bytes, plus the keys and nodes.
        assert_eq!(check_within(&text, 1 << 20, 8, 4100), Ok(()));
        let err = check_within(&text, 1 << 20, 8, 3500).unwrap_err();
        assert!(
            matches!(
                err,
                YamlLimitError::TooExpanded {
                    limit: 3500,
                    at: (2, _)
                }
            ),
            "{err:?}"
        );
        // Nested anchors multiply: ten aliases of ten aliases of 1,000 bytes.
        let laughs = format!(
            "a: &a {big}\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        );
        // a is 1,001, b ten of them (10,011), c ten of b (100,111).
        assert!(check_within(&laughs, 1 << 20, 8, 112_000).is_ok());
        assert!(check_within(&laughs, 1 << 20, 8, 110_000).is_err());
    }

    #[test]
    fn depth_size_and_their_messages() {
        let flood = format!("{}1{}", "[".repeat(45_000), "]".repeat(45_000));
        assert!(matches!(check(&flood), Err(YamlLimitError::TooDeep { .. })));
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let err = check(&deep).unwrap_err();
        assert_eq!(
            err,
            YamlLimitError::TooDeep {
                limit: MAX_DEPTH,
                at: (1, MAX_DEPTH + 1)
            }
        );
        assert!(err.to_string().contains("32 levels"), "{err}");
        let block = "- ".repeat(40) + "x\n";
        assert!(matches!(check(&block), Err(YamlLimitError::TooDeep { .. })));
        let shallow = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(check(&shallow), Ok(()));
        let err = check_within("a: b\n", 4, 8, 100).unwrap_err();
        assert!(
            err.to_string().contains("5 bytes, more than the 4 bytes"),
            "{err}"
        );
        assert_eq!(err.position(), None);
    }
}
