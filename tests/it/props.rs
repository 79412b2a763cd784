//! Property tests: any payload round-trips; any single-byte corruption is detected.

use std::path::Path;

use proptest::prelude::*;

use prodigy::store::object::{self, ObjectId, ObjectType};

fn any_type() -> impl Strategy<Value = ObjectType> {
    prop::sample::select(ObjectType::ALL.to_vec())
}

proptest! {
    // PROPTEST_CASES=N runs more (the long version); 512 in the suite.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn any_payload_round_trips(kind in any_type(), payload in prop::collection::vec(any::<u8>(), 0..4096)) {
        let (id, frame) = object::encode(kind, &payload).unwrap();
        prop_assert_eq!(id, ObjectId::hash(kind, &payload));
        let back = object::decode(&id, Path::new("x"), &frame).unwrap();
        prop_assert_eq!(back.kind, kind);
        prop_assert_eq!(back.payload, payload);
    }

    #[test]
    fn any_single_byte_corruption_is_detected(
        payload in prop::collection::vec(any::<u8>(), 0..2048),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let (id, mut frame) = object::encode(ObjectType::Blob, &payload).unwrap();
        let i = at.index(frame.len());
        frame[i] ^= xor;
        let result = object::decode(&id, Path::new("x"), &frame);
        prop_assert!(result.is_err(), "byte {} ^ {:#x} of {} went unnoticed", i, xor, frame.len());
    }

    #[test]
    fn any_truncation_is_detected(payload in prop::collection::vec(any::<u8>(), 0..2048), cut in any::<prop::sample::Index>()) {
        let (id, frame) = object::encode(ObjectType::Blob, &payload).unwrap();
        let keep = cut.index(frame.len());
        prop_assert!(object::decode(&id, Path::new("x"), &frame[..keep]).is_err());
    }
}

#[test]
fn corruption_on_disk_is_detected_for_every_byte() {
    // Exhaustive over one real object file: every position, one bit flipped.
    let dir = tempfile::tempdir().unwrap();
    let home = prodigy::Home::at(dir.path()).unwrap();
    let store = prodigy::ObjectStore::new(&home);
    let payload = br#"{"event_type":"agent_completed","item_id":"item-7","duration_ms":1234}"#;
    let id = store.write(ObjectType::Item, payload).unwrap();
    let path = store.path(&id);
    let good = std::fs::read(&path).unwrap();
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= bit;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                store.read(&id).is_err(),
                "byte {i} bit {bit:#x} went unnoticed"
            );
        }
    }
}

/// Every parser of user text, given up to 1 MiB of one nesting or negation token (and
/// long `&&`/`||` chains, which must still evaluate): an `Err` of one short line, or a
/// value, and never a stack overflow (the test thread has the default 2 MiB stack, less
/// than the runner's main thread). `when:` conditions, DLQ and item filters, a workflow's
/// `map.filter` and `map.json_path`, and the workflow's YAML itself.
mod nesting {
    use std::path::Path;

    use proptest::prelude::*;

    use prodigy::dlq::filter::ItemFilter;
    use prodigy::workflow::{Plan, template};

    fn one_line<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<(), TestCaseError> {
        if let Err(e) = r {
            let text = e.to_string();
            prop_assert!(!text.contains('\n'), "{}: {}", what, text);
            prop_assert!(text.len() < 400, "{}: {} bytes of error", what, text.len());
        }
        Ok(())
    }

    fn workflow(map_extra: &str) -> String {
        format!(
            "name: t\nmap:\n  input: seq 1 2\n{map_extra}  agent_template:\n    - shell: 'true'\n"
        )
    }

    /// A workflow whose one step has `when: TEXT`.
    fn when_workflow(text: &str) -> String {
        let quoted = serde_json::to_string(text).unwrap();
        format!(
            "name: t\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: 'true'\n      when: {quoted}\n"
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12)
        ))]

        #[test]
        fn deep_nesting_is_a_clean_error(
            token in prop::sample::select(vec!["(", "!", "not ", "[", "{", "!(", "$[?(", "'", "\\"])
            , kib in prop::sample::select(vec![1usize, 16, 256, 1024])
        ) {
            let n = kib * 1024 / token.len();
            let deep = token.repeat(n);
            one_line("filter", ItemFilter::parse(&format!("{deep}failure_count > 1")))?;
            one_line("item filter", ItemFilter::parse_data(&format!("{deep}n > 1")))?;
            one_line("when", Plan::parse(Path::new("w.yml"), &when_workflow(&format!("{deep}true"))))?;
            let quoted = serde_json::to_string(&deep).unwrap();
            one_line("map.filter", Plan::parse(Path::new("w.yml"), &workflow(&format!("  filter: {quoted}\n"))))?;
            one_line("map.json_path", Plan::parse(Path::new("w.yml"), &workflow(&format!("  json_path: {quoted}\n"))))?;
            one_line("yaml", Plan::parse(Path::new("w.yml"), &format!("name: {deep}\n")))?;
        }
    }

    #[test]
    fn long_chains_parse_and_evaluate() {
        for join in [" && ", " || ", " and "] {
            let expr = vec!["n == 1"; 100_000].join(join);
            let f = ItemFilter::parse_data(&expr).unwrap();
            assert!(f.matches_data(&serde_json::json!({"n": 1})));
            drop(f);
        }
        let env = std::collections::BTreeMap::new();
        let notes = Default::default();
        let ctx = template::Context {
            scope: template::Scope::Agent,
            captured: &[],
            json: &[],
            env: &env,
            open: &[],
            notes: &notes,
        };
        let condition = |text: &str| {
            template::Condition::compile(text, &ctx)
                .unwrap()
                .eval(&template::Vars::default())
        };
        let when = vec!["1 == 1"; 100_000].join(" && ");
        assert_eq!(condition(&when), Ok(true));
        // Within the bounds, nesting still means what it says.
        let f = ItemFilter::parse_data(&format!("{}n == 1{}", "!(".repeat(63), ")".repeat(63)))
            .unwrap();
        assert!(f.matches_data(&serde_json::json!({"n": 2})));
        assert_eq!(condition(&format!("{}true", "!".repeat(64))), Ok(true));
    }
}

/// Any text, in every place of a shell command a variable can stand, reaches the command
/// byte for byte and runs nothing (issue 19): the rendered command is run by `sh`.
mod quoting {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use prodigy::workflow::template::{Context, Scope, Template, Vars};

    /// Each context, printing what it received; `$(…)` drops trailing line breaks.
    const CONTEXTS: [(&str, &str); 7] = [
        ("bare", "printf '%s' ${item}"),
        ("double", "printf '%s' \"${item}\""),
        ("single", "printf '%s' '${item}'"),
        ("joined", "printf '%s' a${item}b"),
        ("sub", "printf '%s' \"$(printf '%s' ${item})\""),
        ("heredoc", "cat <<EOF\n${item}\nEOF"),
        ("quoted heredoc", "cat <<'EOF'\n${item}\nEOF"),
    ];

    fn run(context: &str, item: &str) -> Result<Vec<u8>, String> {
        let env = BTreeMap::new();
        let notes = Default::default();
        let ctx = Context {
            scope: Scope::Agent,
            captured: &[],
            json: &[],
            env: &env,
            open: &[],
            notes: &notes,
        };
        let template = Template::compile(context, &ctx).unwrap();
        let value = serde_json::Value::String(item.to_owned());
        let command = template.render(&Vars {
            item: Some(&value),
            ..Vars::default()
        })?;
        let out = std::process::Command::new("sh")
            .args(["-c", &command])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
        ))]

        #[test]
        fn any_text_is_received_exactly(
            item in prop_oneof![
                "[^\u{0}]{0,40}",
                prop::collection::vec(prop::sample::select(vec![
                    "'", "\"", "\\", "$", "`", "(", ")", "{", "}", ";", "|", "&", "\n", " ",
                    "#", "*", "<<", "EOF", "$(", "${item}", "~", "!", "\t", "é",
                ]), 0..30).prop_map(|parts| parts.concat()),
            ]
        ) {
            for (name, context) in CONTEXTS {
                let got = match run(context, &item) {
                    Ok(got) => got,
                    // A value holding the line that ends its here-document is refused, and
                    // one dash would misread (a line starting `E`, `EO` or `EOF` and a byte
                    // that is not ASCII).
                    Err(e) if name.contains("heredoc") => {
                        let misread = |l: &str| {
                            ["E", "EO", "EOF"].iter().any(|p| {
                                l.strip_prefix(p).is_some_and(|r| !r.is_empty() && !r.starts_with(|c: char| c.is_ascii()))
                            })
                        };
                        prop_assert!(item.split('\n').any(|l| l == "EOF" || misread(l)), "{}", e);
                        continue;
                    }
                    Err(e) => return Err(TestCaseError::fail(e)),
                };
                let want = match name {
                    "sub" => item.trim_end_matches('\n').to_owned(),
                    "joined" => format!("a{item}b"),
                    n if n.contains("heredoc") => format!("{item}\n"),
                    _ => item.clone(),
                };
                prop_assert_eq!(String::from_utf8_lossy(&got), want, "in {}", name);
            }
        }
    }
}

/// Masking a text in pieces (`Masker::piece`, as a step's long line is masked) gives what
/// masking it whole gives, wherever the pieces are cut, for secrets that overlap one
/// another and themselves.
mod masking {
    use proptest::prelude::*;

    use prodigy::workflow::env::Masker;

    fn text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!['a', 'b', '\n']), 0..max)
            .prop_map(|c| c.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
        ))]

        #[test]
        fn pieces_mask_as_the_whole(
            secrets in prop::collection::vec("[ab]{2,5}", 1..4),
            text in text(200),
            cuts in prop::collection::vec((1usize..40, 0usize..8), 0..20),
        ) {
            let mask = Masker::new(&secrets);
            let bytes = text.as_bytes();
            let longest = mask.longest();
            let (mut at, mut head, mut out) = (0, 0, Vec::new());
            for (step, more) in cuts {
                // What is held: at least every secret begun before the cut, whole.
                let cut = (at + step).min(bytes.len());
                let held = &bytes[at..(cut + longest - 1 + more).min(bytes.len())];
                let (piece, next) = mask.piece(held, head, cut - at);
                out.extend_from_slice(&piece);
                (at, head) = (cut, next);
            }
            let (piece, next) = mask.piece(&bytes[at..], head, bytes.len() - at);
            out.extend_from_slice(&piece);
            prop_assert_eq!(next, 0);
            prop_assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(mask.bytes(bytes)).unwrap());
        }
    }
}
