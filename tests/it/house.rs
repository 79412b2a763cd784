//! The house's shape (issue 20): no import circle among the library's modules. A module's
//! imports are the `crate::…` and `super::…` paths in its code (not its comments, not its
//! tests); a module and the modules inside it are one place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn modules(dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            modules(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix("src").unwrap().with_extension("");
            let name = rel
                .to_string_lossy()
                .trim_end_matches("/mod")
                .replace('/', "::");
            let text = std::fs::read_to_string(&path).unwrap();
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(name, code);
        }
    }
}

/// The paths after `prefix` in `code`: `a::b::c` for `prefix` `crate::`.
fn paths<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    code.match_indices(prefix)
        .filter(|(at, _)| {
            code[..*at]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric() && c != '_')
        })
        .map(|(at, _)| {
            let rest = &code[at + prefix.len()..];
            let end = rest
                .find(|c: char| {
                    !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')
                })
                .unwrap_or(rest.len());
            rest[..end].trim_end_matches(':')
        })
        .collect()
}

#[test]
fn no_import_circle_among_the_modules() {
    let mut code = BTreeMap::new();
    modules(Path::new("src"), &mut code);
    let names: BTreeSet<String> = code.keys().cloned().collect();
    let resolve = |path: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|c| names.contains(c))
    };
    let inside =
        |a: &str, b: &str| a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"));
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &code {
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        let targets = paths(text, "crate::")
            .into_iter()
            .filter_map(&resolve)
            .chain(paths(text, "super::").into_iter().filter_map(|p| {
                resolve(&if parent.is_empty() {
                    p.to_owned()
                } else {
                    format!("{parent}::{p}")
                })
            }));
        for target in targets {
            if target != *module && !inside(module, &target) {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    // A circle is a path from a module back to itself.
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    panic!("import circle: {} -> {start}", trail.join(" -> "));
                }
                if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    assert!(
        edges.len() > 20,
        "the scan found the modules' imports: {}",
        edges.len()
    );
}

/// Nothing outside `src/store/` names the S3 client or the bucket's key layout: every
/// other layer reaches the store through its objects, refs and bucket view.
#[test]
fn only_the_store_knows_the_backends() {
    let mut code = BTreeMap::new();
    modules(Path::new("src"), &mut code);
    let mut offenders = Vec::new();
    for (module, text) in &code {
        if module == "store" || module.starts_with("store::") {
            continue;
        }
        for path in paths(text, "crate::store::") {
            if ["s3", "keys"].contains(&path.split("::").next().unwrap_or_default()) {
                offenders.push(format!("{module} names crate::store::{path}"));
            }
        }
        for word in ["object_store::", "Remote::", "s3::Remote"] {
            if text.contains(word) {
                offenders.push(format!("{module} names {word}"));
            }
        }
    }
    assert!(code.contains_key("store::s3"), "the scan sees the store");
    assert!(offenders.is_empty(), "{offenders:#?}");
}
