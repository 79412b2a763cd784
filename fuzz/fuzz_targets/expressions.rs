//! Expressions of user text: DLQ and item filters, `when:` conditions and a workflow's
//! `map.json_path` and `map.filter`, nesting included. Any text gives a value or a
//! one-line error, never a panic or a stack overflow; what parses evaluates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodigy::dlq::filter::ItemFilter;
use prodigy::workflow::Plan;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let item = serde_json::json!({"n": 3, "name": "a b", "tags": ["x"], "meta": {"lang": "rust"}});
    for parsed in [ItemFilter::parse(text), ItemFilter::parse_data(text)] {
        match parsed {
            Ok(f) => {
                let _ = f.matches_data(&item);
            }
            Err(e) => assert!(!e.to_string().contains('\n')),
        }
    }
    let quoted = serde_json::to_string(text).unwrap();
    let when = format!(
        "name: t\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: 'true'\n      when: {quoted}\n"
    );
    if let Err(e) = Plan::parse(std::path::Path::new("fuzz.yml"), &when) {
        assert!(!e.to_string().contains('\n'));
    }
    for field in ["json_path", "filter"] {
        let workflow = format!(
            "name: t\nmap:\n  input: seq 1 2\n  {field}: {quoted}\n  agent_template:\n    - shell: 'true'\n"
        );
        if let Err(e) = Plan::parse(std::path::Path::new("fuzz.yml"), &workflow) {
            assert!(!e.to_string().contains('\n'));
        }
    }
});
