//! The README and the operator documentation hold together: the README fits on a
//! few screens, and every relative link in it and in the documents it leads to
//! reaches a file of the repository, and every `#anchor` a heading of that file
//! (GitHub's heading slugs).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The README's budget: an operator reads it on a few screens.
const README_MAX_BYTES: usize = 20 * 1024;

/// The documents whose links are checked.
const DOCUMENTS: &[&str] = &[
    "README.md",
    "CHANGELOG.md",
    "docs/accounts.md",
    "docs/configuration.md",
    "docs/dependencies.md",
    "docs/deploying.md",
    "docs/design.md",
    "docs/failures.md",
    "docs/metrics.md",
    "docs/testing.md",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of a document outside fenced code blocks, line by line, with
/// inline code spans blanked (a link written as code is not a link).
fn prose(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            lines.push(String::new());
            continue;
        }
        if fenced {
            lines.push(String::new());
            continue;
        }
        let mut out = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                out.push(' ');
            } else {
                out.push(if in_code { ' ' } else { c });
            }
        }
        lines.push(out);
    }
    lines
}

/// Every `[text](target)` of a line: its target, without a title.
fn links(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        found.push(target.to_owned());
        rest = &after[end..];
    }
    found
}

/// GitHub's anchor for a heading: the rendered text lowercased, punctuation
/// dropped (letters, digits, `_`, `-` and spaces stay), spaces as `-`.
fn slug(heading: &str) -> String {
    // Rendered text: a link shows its text, code spans and emphasis their content.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](") {
            Some(mid) if rest[open + mid..].contains(')') => {
                let close = open + mid + rest[open + mid..].find(')').unwrap();
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..open + mid]);
                rest = &rest[close + 1..];
            }
            _ => break,
        }
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file: one per heading, `-1`, `-2`… for repeats.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading.trim());
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// The broken links of one document, each as `file:line: target: why`.
fn broken_links(document: &str) -> Vec<String> {
    let path = root().join(document);
    let text = read(&path);
    let dir = path.parent().expect("a document has a directory");
    let mut broken = Vec::new();
    for (number, line) in prose(&text).iter().enumerate() {
        for target in links(line) {
            let at = format!("{document}:{}: {target}", number + 1);
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() {
                path.clone()
            } else if file.starts_with('/') {
                broken.push(format!("{at}: an absolute path"));
                continue;
            } else {
                dir.join(file)
            };
            if !resolved.exists() {
                broken.push(format!("{at}: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                if !resolved.is_file() || resolved.extension().is_none_or(|e| e != "md") {
                    broken.push(format!("{at}: an anchor into a file that is not Markdown"));
                } else if !anchors(&read(&resolved)).contains(anchor) {
                    broken.push(format!("{at}: no heading with that anchor"));
                }
            }
        }
    }
    broken
}

#[test]
fn readme_fits_in_twenty_kilobytes() {
    let size = read(&root().join("README.md")).len();
    assert!(
        size <= README_MAX_BYTES,
        "README.md is {size} bytes, over {README_MAX_BYTES}: move depth into docs/"
    );
}

#[test]
fn readme_opens_with_the_demo_and_the_test_command() {
    let readme = read(&root().join("README.md"));
    let first_block = readme
        .split("```")
        .nth(1)
        .expect("a code block near the top");
    assert!(
        first_block.contains("cargo run --release -- --demo"),
        "{first_block}"
    );
    // CI runs exactly this command (.ci/run).
    assert!(
        first_block
            .lines()
            .any(|line| line.trim() == "./scripts/test"),
        "{first_block}"
    );
    let ci = read(&root().join(".ci/run"));
    assert!(
        ci.lines().any(|line| line.trim() == "./scripts/test"),
        "{ci}"
    );
}

#[test]
fn every_link_of_the_documentation_resolves() {
    let broken: Vec<String> = DOCUMENTS.iter().flat_map(|d| broken_links(d)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("Testing credentials: `check`"),
        "testing-credentials-check"
    );
    assert_eq!(slug("The API path"), "the-api-path");
    assert_eq!(slug("`benches/fleet.py`"), "benchesfleetpy");
    assert_eq!(slug("A [link](x.md) in it"), "a-link-in-it");
    assert_eq!(
        slug("Many exporters for one fleet"),
        "many-exporters-for-one-fleet"
    );
    let repeated = anchors("# Notes\n## Notes\n```\n# not a heading\n```\n#hashtag\n");
    let expected: HashSet<String> = ["notes", "notes-1"].map(String::from).into();
    assert_eq!(repeated, expected);
}

#[test]
fn links_are_found_outside_code() {
    let lines = prose("see [a](a.md) and `[b](b.md)`\n```\n[c](c.md)\n```\n![pic](p.png \"t\")");
    let found: Vec<String> = lines.iter().flat_map(|l| links(l)).collect();
    assert_eq!(found, ["a.md", "p.png"]);
}
