//! The work-item list: `map.input` read (a file) or run (a command), then `json_path`,
//! `filter`, `sort_by`, `offset` and `max_items`, and every item checked against the
//! `${item.…}` paths the agent steps read, before any agent starts.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::template::lookup;
use super::{MapSpec, Plan};

/// Where items come from, as `map.input` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A JSON file (relative to the job's worktree).
    File(std::path::PathBuf),
    /// A command whose standard output holds the items.
    Command(String),
}

/// Decides whether `map.input` names a file in `worktree` or is a command: an existing
/// file, or one word ending in `.json` (missing: an error that says so, not a command that
/// is not found), is a file. `$VAR` and `${VAR}` of the job's `env` in a file's name are
/// its values (a command's shell reads them from its environment).
pub fn source(map: &MapSpec, worktree: &Path, env: &BTreeMap<String, String>) -> Source {
    let input = map.input.value.trim();
    let name = expand(input, env);
    let path = worktree.join(&name);
    let looks_like_a_file = name.ends_with(".json") && !name.contains(char::is_whitespace);
    if path.is_file() || looks_like_a_file {
        Source::File(path)
    } else {
        Source::Command(input.to_owned())
    }
}

/// `text` with `$NAME` and `${NAME}` of `env` replaced by their values (others stay).
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        match env.get(name) {
            Some(value) if !name.is_empty() => {
                out.push_str(value);
                rest = &after[len..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Turns the input's bytes into the final item list. `from_file` says whether they came
/// from a file (which must be JSON) or a command (JSON, or one item per line).
pub fn items(
    plan: &Plan,
    map: &MapSpec,
    bytes: &[u8],
    what: &str,
    from_file: bool,
) -> Result<Vec<Value>, String> {
    let parsed: Option<Value> = match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if from_file || v.is_array() || v.is_object() => Some(v),
        // A command printing `1` or `"x"` prints one item per line, like any other.
        Ok(_) => None,
        Err(e) if from_file => return Err(format!("{what} is not JSON: {e}")),
        Err(_) => None,
    };
    let mut items: Vec<Value> = match (parsed, &plan.json_path) {
        (Some(doc), Some(path)) => {
            let found: Vec<Value> = path.query(&doc).all().into_iter().cloned().collect();
            if found.is_empty() {
                return Err(format!(
                    "map.json_path {:?} matches nothing in {what}",
                    map.json_path.as_ref().map_or("", |p| &p.value)
                ));
            }
            found
        }
        (Some(Value::Array(items)), None) => items,
        (Some(other @ Value::Object(_)), None) => vec![other],
        (Some(other), None) => {
            return Err(format!(
                "{what} is a JSON {}, not an array or object (set map.json_path to pick items)",
                match other {
                    Value::String(_) => "string",
                    Value::Number(_) => "number",
                    Value::Bool(_) => "boolean",
                    _ => "null",
                }
            ));
        }
        (None, Some(_)) => {
            return Err(format!(
                "{what} is not JSON, so map.json_path cannot select from it"
            ));
        }
        (None, None) => lines(bytes, what)?,
    };
    if let Some(filter) = &plan.filter {
        items.retain(|item| filter.matches_data(item));
    }
    if !plan.sort_by.is_empty() {
        // Stable, key by key; a missing field is null, placed as the key says (last by
        // default, whichever the direction).
        items.sort_by(|a, b| {
            for k in &plan.sort_by {
                let key = |v: &Value| {
                    k.path
                        .iter()
                        .try_fold(v, |v, f| v.get(f))
                        .filter(|v| !v.is_null())
                        .cloned()
                };
                let o = match (key(a), key(b)) {
                    (None, None) => Ordering::Equal,
                    (None, _) if k.nulls_first => Ordering::Less,
                    (None, _) => Ordering::Greater,
                    (_, None) if k.nulls_first => Ordering::Greater,
                    (_, None) => Ordering::Less,
                    (Some(x), Some(y)) => {
                        let o = compare(&x, &y);
                        if k.desc { o.reverse() } else { o }
                    }
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
    if let Some(field) = &map.distinct {
        let path: Vec<&str> = distinct_path(&field.value).collect();
        let mut seen = std::collections::HashSet::new();
        items.retain(|item| {
            match path.iter().try_fold(item, |v, f| v.get(*f)) {
                // Compared as JSON text: 1 and "1" differ, {"a":1,"b":2} is one value.
                Some(value) => seen.insert(value.to_string()),
                None => true,
            }
        });
    }
    let offset = map.offset.min(items.len());
    items.drain(..offset);
    if let Some(max) = map.max_items {
        items.truncate(max);
    }
    for (index, item) in items.iter().enumerate() {
        for (path, line) in plan.item_paths() {
            lookup(item, &path).map_err(|e| {
                format!(
                    "item {index} ({}) cannot be used by the step at line {line}: {e}",
                    preview(item)
                )
            })?;
        }
    }
    Ok(items)
}

/// The field path of `map.distinct`: dotted, with the original's `item.` in front allowed.
pub fn distinct_path(text: &str) -> impl Iterator<Item = &str> {
    let text = text.trim();
    text.strip_prefix("item.").unwrap_or(text).split('.')
}

/// One item per line, trimmed, blank lines skipped; a line that is not UTF-8 is refused
/// by number, its bytes shown escaped (an item is its exact text or an error, never a
/// guess such as U+FFFD).
fn lines(bytes: &[u8], what: &str) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let text = std::str::from_utf8(line).map_err(|_| {
            format!(
                "line {} of {what} is not UTF-8: \"{}\" (an item is text; encode such \
                 names, e.g. with `ls | iconv -f latin1 -t utf-8`, or print JSON)",
                n + 1,
                line[..line.len().min(80)].escape_ascii()
            )
        })?;
        let text = text.trim();
        if !text.is_empty() {
            items.push(Value::String(text.to_owned()));
        }
    }
    Ok(items)
}

fn preview(item: &Value) -> String {
    let text = item.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (x, y) => x.to_string().cmp(&y.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(map_extra: &str, step: &str) -> Plan {
        let text = format!(
            "name: t\nmap:\n  input: x.json\n{map_extra}  agent_template:\n    - shell: {step}\n"
        );
        Plan::parse(Path::new("w.yml"), &text).unwrap()
    }

    #[test]
    fn selects_filters_sorts_and_slices() {
        let p = plan(
            "  json_path: \"$.items[*]\"\n  filter: \"n >= 2\"\n  sort_by: n DESC\n  offset: 1\n  max_items: 2\n",
            "echo ${item.n}",
        );
        let doc = json!({"items": [{"n": 1}, {"n": 5}, {"n": 3}, {"n": 2}, {"n": 4}]});
        assert_eq!(json_items(&p, &doc), vec![json!({"n": 4}), json!({"n": 3})]);
    }

    /// The items of `doc`, a JSON file's, as plan `p` reads them.
    fn json_items(p: &Plan, doc: &Value) -> Vec<Value> {
        let text = doc.to_string();
        items(p, p.map_spec().unwrap(), text.as_bytes(), "x.json", true).unwrap()
    }

    /// `distinct` keeps the first item of each value (after the sort, before the slice);
    /// the original's `item.` in front is read; an item without the field is kept; a path
    /// that is none is a load error.
    #[test]
    fn distinct_keeps_the_first_of_each_value() {
        let doc = json!([
            {"id": 1, "n": 1}, {"id": "1", "n": 2}, {"id": 1, "n": 3},
            {"n": 4}, {"n": 5}, {"id": 2, "n": 6}, {"id": 2, "n": 7}
        ]);
        for field in ["id", "item.id"] {
            let p = plan(
                &format!("  distinct: {field}\n  sort_by: n DESC\n  offset: 1\n"),
                "echo ${item.n}",
            );
            let got = json_items(&p, &doc);
            let ns: Vec<&Value> = got.iter().map(|i| &i["n"]).collect();
            assert_eq!(ns, [5, 4, 3, 2], "{field}");
        }
        let text = "name: t\nmap:\n  input: x.json\n  distinct: \"a..b\"\n  agent_template:\n    - shell: 'true'\n";
        let e = Plan::parse(Path::new("w.yml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("w.yml:4: map.distinct \"a..b\" is not a field path"),
            "{e}"
        );
    }

    #[test]
    fn lines_and_errors() {
        let p = plan("", "echo ${item}");
        let got = items(
            &p,
            p.map_spec().unwrap(),
            b"a\n\n b \n",
            "the command",
            false,
        )
        .unwrap();
        assert_eq!(got, vec![json!("a"), json!("b")]);
        let got = items(&p, p.map_spec().unwrap(), b"1\n", "the command", false).unwrap();
        assert_eq!(got, vec![json!("1")]);
        assert!(
            items(&p, p.map_spec().unwrap(), b"a\n", "x.json", true)
                .unwrap_err()
                .contains("not JSON")
        );
        let p = plan("  json_path: \"$.nope[*]\"\n", "echo ${item}");
        let e = items(
            &p,
            p.map_spec().unwrap(),
            b"{\"items\": []}",
            "x.json",
            true,
        )
        .unwrap_err();
        assert!(e.contains("matches nothing"), "{e}");
        let p = plan("", "echo ${item.name}");
        let e = items(&p, p.map_spec().unwrap(), b"[\"plain\"]", "x.json", true).unwrap_err();
        assert!(e.contains("item 0") && e.contains("line 5"), "{e}");
    }
}
