//! The shape of the code itself: no module of the library imports one that imports
//! it back, directly or through others, so data flows one way (configuration →
//! targets → upstream → state → HTTP) and a change can be followed down that line.
//! And no `unsafe` anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module of every `crate::name` a file's code (comments and test
/// modules left out) refers to.
fn references(code: &str) -> BTreeSet<String> {
    let code = code.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            // A lower-case name followed by `::` or `}`/`;`/`,` is a module path;
            // crate-root functions (`crate::random_fraction()`) are followed by `(`.
            let after = rest[name.len()..].chars().next();
            if !name.is_empty() && after != Some('(') {
                out.insert(name);
            }
        }
    }
    out
}

fn modules() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = top.trim_end_matches(".rs").to_string();
            if module == "lib" || module == "bin" {
                continue;
            }
            let code = std::fs::read_to_string(&path).unwrap();
            let refs = graph.entry(module.clone()).or_default();
            refs.extend(references(&code).into_iter().filter(|m| *m != module));
        }
    }
    graph
}

/// The first cycle in `graph`, as a path from a module back to itself.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    for start in graph.keys() {
        let mut stack = vec![vec![start.clone()]];
        while let Some(path) = stack.pop() {
            let last = path.last().unwrap();
            for next in graph.get(last).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                if !path.contains(next) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
    None
}

#[test]
fn the_cycle_finder_finds_a_cycle_through_three_modules() {
    let edge = |a: &str, b: &str| (a.to_string(), BTreeSet::from([b.to_string()]));
    let graph = BTreeMap::from([edge("a", "b"), edge("b", "c"), edge("c", "a")]);
    assert_eq!(find_cycle(&graph).map(|c| c.len()), Some(4));
    let acyclic = BTreeMap::from([edge("a", "b"), edge("b", "c")]);
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = modules();
    assert!(graph.len() > 10, "found only {:?}", graph.keys());
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_code_has_no_unsafe_block() {
    let graph_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![graph_root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let code = std::fs::read_to_string(&path).unwrap();
                for (n, line) in code.lines().enumerate() {
                    let code_part = line.split("//").next().unwrap_or("");
                    assert!(
                        !code_part.contains("unsafe ") && !code_part.contains("unsafe{"),
                        "{}:{}: unsafe",
                        path.display(),
                        n + 1
                    );
                }
            }
        }
    }
}

#[test]
fn references_are_module_paths_outside_comments_and_not_root_functions() {
    assert_eq!(
        references("use crate::state::State;\n// crate::app\nlet x = crate::random_fraction();"),
        BTreeSet::from(["state".to_string()])
    );
}
