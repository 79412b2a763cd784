//! The event log end to end: `prodigy events …`, worktrees, bad input, damaged logs.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::common::{Env, append_in_batches_of, assert_one_line_error, git, snapshot};

/// A repository `api` with one commit and a linked worktree `wt`, inside the scratch dir.
pub fn repo_with_worktree(env: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = env.scratch();
    let main = base.join("api");
    fs::create_dir_all(&main).unwrap();
    git(&main, &["init", "-q", "-b", "main"]);
    git(&main, &["commit", "-q", "--allow-empty", "-m", "init"]);
    git(&main, &["worktree", "add", "-q", "../wt", "-b", "wt"]);
    (main, base.join("wt"))
}

const JOB_EVENTS: &str = r#"{"event_type":"job_started","job_id":"mr-1","config":{"max_parallel":2},"total_items":3,"timestamp":"2026-01-01T00:00:00Z"}
{"event_type":"agent_started","job_id":"mr-1","agent_id":"agent-1","item_id":"item-1","worktree":"wt-1","attempt":1}
{"event_type":"agent_completed","job_id":"mr-1","agent_id":"agent-1","item_id":"item-1","duration_ms":1500,"commits":["abc"]}
{"event_type":"agent_started","job_id":"mr-1","agent_id":"agent-2","item_id":"item-2","worktree":"wt-2","attempt":1}
"#;

const WORKTREE_EVENTS: &str = r#"{"event_type":"agent_failed","job_id":"mr-1","agent_id":"agent-2","item_id":"item-2","error":"file /a/b.rs:12 not found","retry_eligible":true}
{"event_type":"some_future_event","job_id":"mr-1","detail":"kept as is"}
{"event_type":"job_completed","job_id":"mr-1","duration_ms":4000,"success_count":1,"failure_count":1}
"#;

/// `events show JOB --repo api --json EXTRA…` as parsed records (the command must succeed).
fn records(env: &Env, job: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["events", "show", job, "--repo", "api", "--json"];
    args.extend_from_slice(extra);
    env.ok(&args, b"")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `events stats JOB --repo api --group-by agent --json`, parsed.
fn agent_stats(env: &Env, job: &str) -> serde_json::Value {
    let args = [
        "events",
        "stats",
        job,
        "--repo",
        "api",
        "--group-by",
        "agent",
        "--json",
    ];
    serde_json::from_str(&env.ok(&args, b"")).unwrap()
}

fn run_in(env: &Env, dir: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    env.cmd()
        .current_dir(dir)
        .args(args)
        .write_stdin(stdin.as_bytes().to_vec())
        .output()
        .unwrap()
}

#[test]
fn appends_from_two_worktrees_make_one_log() {
    let env = Env::new();
    let (main, wt) = repo_with_worktree(&env);
    let out = run_in(
        &env,
        &main,
        &["events", "append", "--job", "mr-1"],
        JOB_EVENTS,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "appended 4 events to events/api/mr-1\n"
    );
    let out = run_in(
        &env,
        &wt,
        &["events", "append", "--job", "mr-1", "-"],
        WORKTREE_EVENTS,
    );
    assert!(out.status.success());
    // Both worktrees see the same 7 events, in append order.
    for dir in [&main, &wt] {
        let out = run_in(&env, dir, &["events", "show", "mr-1", "--json"], "");
        let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let types: Vec<&str> = records
            .iter()
            .map(|r| r["event"]["event_type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "job_started",
                "agent_started",
                "agent_completed",
                "agent_started",
                "agent_failed",
                "some_future_event",
                "job_completed"
            ]
        );
        assert_eq!(records[0]["v"], 1);
        assert_eq!(
            records[0]["metadata"]["worktree"],
            fs::canonicalize(&main).unwrap().to_str().unwrap()
        );
        assert_eq!(
            records[4]["metadata"]["worktree"],
            fs::canonicalize(&wt).unwrap().to_str().unwrap()
        );
        assert!(records[4]["metadata"]["pid"].as_u64().is_some());
        assert_eq!(records[0]["timestamp"].as_str().unwrap().len(), 27);
    }
    // Filters.
    let show = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["events", "show", "mr-1", "--json"];
        all.extend_from_slice(args);
        let out = run_in(&env, &wt, &all, "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    };
    assert_eq!(show(&["--type", "agent_started"]).len(), 2);
    assert_eq!(
        show(&["--type", "agent_started", "--type", "agent_failed"]).len(),
        3
    );
    assert_eq!(show(&["--agent", "agent-2"]).len(), 2);
    assert_eq!(show(&["--limit", "2"]).len(), 2);
    assert!(show(&["--limit", "1"])[0].contains("job_completed"));
    assert_eq!(show(&["--since", "1h"]).len(), 7);
    assert_eq!(show(&["--until", "1h"]).len(), 0);
    assert_eq!(
        show(&[
            "--since",
            "2000-01-01T00:00:00Z",
            "--until",
            "2100-01-01T00:00:00+02:00"
        ])
        .len(),
        7
    );
    let out = run_in(
        &env,
        &wt,
        &["events", "show", "mr-1", "--since", "yesterday"],
        "",
    );
    // A bad argument is a usage error.
    assert_one_line_error(&out, 2);
    // From outside the repository, --repo reaches it.
    let out = env.run(&["events", "show", "mr-1", "--repo", "api", "--json"], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 7);
    // Human output.
    snapshot(
        "events_show",
        &run_in(&env, &wt, &["events", "show", "mr-1"], ""),
        &env.home(),
    );
    snapshot(
        "events_ls",
        &run_in(&env, &wt, &["events", "ls"], ""),
        &env.home(),
    );
    snapshot(
        "events_stats",
        &run_in(&env, &wt, &["events", "stats"], ""),
        &env.home(),
    );
    snapshot(
        "events_stats_agent",
        &run_in(
            &env,
            &main,
            &["events", "stats", "mr-1", "--group-by", "agent"],
            "",
        ),
        &env.home(),
    );
    let json: serde_json::Value =
        serde_json::from_slice(&run_in(&env, &main, &["events", "stats", "--json"], "").stdout)
            .unwrap();
    assert_eq!(json["total"]["count"], 7);
    assert_eq!(json["agents_completed"], 1);
    assert_eq!(json["agents_failed"], 1);
    assert_eq!(
        json["total"]["durations"]["agent_completed"]["total_ms"],
        1500
    );
    let all: serde_json::Value = serde_json::from_slice(
        &env.run(&["events", "ls", "--all-repos", "--json"], b"")
            .stdout,
    )
    .unwrap();
    assert_eq!(all[0]["repo"], "api");
    assert_eq!(all[0]["total"]["count"], 7);
}

#[test]
fn search_and_export() {
    let env = Env::new();
    let (main, _) = repo_with_worktree(&env);
    run_in(
        &env,
        &main,
        &["events", "append", "--job", "mr-1"],
        JOB_EVENTS,
    );
    run_in(
        &env,
        &main,
        &["events", "append", "--job", "mr-2"],
        WORKTREE_EVENTS,
    );
    let out = run_in(
        &env,
        &main,
        &[
            "events",
            "search",
            r"/a/b\.rs:\d+",
            "--field",
            "event.error",
        ],
        "",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("mr-2  "), "{text}");
    let out = run_in(
        &env,
        &main,
        &["events", "search", "agent-1", "mr-1", "--json"],
        "",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let out = run_in(&env, &main, &["events", "search", "no such thing"], "");
    assert_eq!(out.status.code(), Some(1));
    let out = run_in(&env, &main, &["events", "search", "(unclosed"], "");
    assert_one_line_error(&out, 2);

    let out = run_in(
        &env,
        &main,
        &["events", "export", "mr-1", "--format", "json"],
        "",
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 4);
    let file = env.scratch().join("out.csv");
    let out = run_in(
        &env,
        &main,
        &[
            "events",
            "export",
            "mr-1",
            "--format",
            "csv",
            "-o",
            file.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success());
    let csv = fs::read_to_string(&file).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "id,timestamp,event_type,agent_id,item_id,correlation_id,writer,seq,event"
    );
    // The event column is quoted JSON with doubled quotes.
    let row = lines.nth(2).unwrap();
    assert!(
        row.contains(",agent_completed,agent-1,item-1,,") && row.contains(r#""{""agent_id"""#),
        "{row}"
    );
    let out = run_in(
        &env,
        &main,
        &["events", "export", "mr-1", "--format", "markdown"],
        "",
    );
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.starts_with("| time | type | agent | item | event |\n|---|---|---|---|---|\n"));
    assert_eq!(md.lines().count(), 6);
    let out = run_in(
        &env,
        &main,
        &["events", "export", "mr-1", "--format", "jsonl"],
        "",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
}

#[test]
fn bad_lines_append_nothing() {
    let env = Env::new();
    let cases = [
        (
            "{\"event_type\":\"job_started\"}\nnot json\n",
            "line 2: invalid JSON",
        ),
        (
            "{\"event_type\":\"job_started\"}\n{\"no_type\":1}\n",
            "line 2: not an event: no event_type",
        ),
        ("[1,2]\n", "line 1: not a JSON object"),
        ("[\"agent_started\"]\n", "line 1: not a JSON object"),
        (
            "{\"id\":\"x\",\"timestamp\":\"2025-01-09T14:32:53Z\",\"writer\":\"w\",\"seq\":0,\"event\":[\"a\"]}\n",
            "line 1: the record's event has no string event_type",
        ),
        (
            "{\"id\":\"x\",\"timestamp\":\"2025-01-09T14:32:53Z\",\"writer\":\"w\",\"seq\":0,\"event\":{\"event_type\":\"a\"},\"metadata\":null}\n",
            "line 1: not a valid record",
        ),
        (
            "{\"v\":null,\"id\":\"x\",\"timestamp\":\"2025-01-09T14:32:53Z\",\"writer\":\"w\",\"seq\":0,\"event\":{\"event_type\":\"a\"}}\n",
            "line 1: not a valid record",
        ),
        (
            "{\"event_type\":7}\n",
            "line 1: event_type must be a string",
        ),
        (
            "{\"v\":1,\"id\":\"x\",\"timestamp\":\"2025-01-09T14:32:53.000000Z\",\"writer\":\"w\",\"seq\":0,\"event\":[\"a\"],\"metadata\":{}}\n",
            "line 1: the record's event has no string event_type",
        ),
        (
            "{\"id\":\"x\",\"timestamp\":\"nope\",\"writer\":\"w\",\"seq\":0,\"event\":{\"event_type\":\"a\"}}\n",
            "line 1: invalid timestamp",
        ),
        (
            "{\"id\":\"x\",\"event\":{\"event_type\":\"a\"}}\n",
            "line 1: a full record needs a string \"timestamp\"",
        ),
    ];
    for (input, want) in cases {
        let out = env.run(
            &["events", "append", "--job", "j", "--repo", "api"],
            input.as_bytes(),
        );
        let stderr = assert_one_line_error(&out, 1);
        assert!(
            stderr.contains(want) && stderr.contains("nothing was appended"),
            "{stderr}"
        );
    }
    assert!(!env.home().join("events/api/j/HEAD").exists());
    let out = env.run(&["events", "show", "j", "--repo", "api"], b"");
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("no events for job j in repo api"),
        "{stderr}"
    );
    for bad in ["../x", "a/b", &"j".repeat(200)] {
        let out = env.run(
            &["events", "append", "--job", bad, "--repo", "api"],
            b"{\"event_type\":\"x\"}\n",
        );
        assert_one_line_error(&out, 2);
    }
    assert!(!env.home().join("events").exists());
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files
}

#[test]
fn a_bad_line_after_stored_batches_leaves_no_object_behind() {
    // Sealed batches are compressed and written while later lines are read; a line
    // refused afterwards must still leave nothing: no ref, no object, no temp file.
    let env = Env::new();
    let mut input = String::new();
    for n in 0..7 {
        input.push_str(&format!(
            "{{\"event_type\":\"agent_started\",\"item_id\":\"i{n}\"}}\n"
        ));
    }
    input.push_str("{\"event_type\":\"agent_started\"\n");
    let append = |input: &str| env.run(&append_in_batches_of("2"), input.as_bytes());
    let out = append(&input);
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("line 8: invalid JSON") && stderr.contains("nothing was appended"),
        "{stderr}"
    );
    assert!(!env.home().join("events/api/j").exists());
    assert_eq!(
        files_under(&env.home().join("objects")),
        Vec::<std::path::PathBuf>::new()
    );
    // The same lines without the bad one: four batches, each its own object and node.
    let good: String = input.lines().take(7).map(|l| format!("{l}\n")).collect();
    let out = append(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(records(&env, "j", &[]).len(), 7);
    assert_eq!(files_under(&env.home().join("objects")).len(), 8);
}

#[test]
fn an_append_of_many_batches_writes_a_pack_of_batches_and_one_of_nodes() {
    use prodigy::store::object::PACK_MIN_OBJECTS;
    let env = Env::new();
    // As many batches of 2 as a pack needs, and one more.
    let count = 2 * (PACK_MIN_OBJECTS + 1);
    let input: String = (0..count)
        .map(|n| format!("{{\"event_type\":\"agent_started\",\"item_id\":\"i{n}\"}}\n"))
        .collect();
    env.ok(&append_in_batches_of("2"), input.as_bytes());
    // The batches make one pack, the nodes the other, and nothing is loose.
    let packs = crate::common::packs(&env);
    let sizes: Vec<u64> = packs.iter().map(|p| p.len()).collect();
    let batches = (PACK_MIN_OBJECTS + 1) as u64;
    assert_eq!(
        sizes,
        vec![batches, batches],
        "a pack of batches, one of nodes"
    );
    let loose: Vec<_> = files_under(&env.home().join("objects"))
        .into_iter()
        .filter(|p| !p.starts_with(env.home().join("objects/pack")))
        .collect();
    assert_eq!(loose, Vec::<std::path::PathBuf>::new());
    let items = |env: &Env| -> Vec<String> {
        records(env, "j", &[])
            .iter()
            .map(|r| r["event"]["item_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let want: Vec<String> = (0..count).map(|n| format!("i{n}")).collect();
    assert_eq!(items(&env), want);
    let fsck = env.run(&["fsck"], b"");
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    // gc keeps every reachable object of the packs; the log reads the same after it.
    env.ok(&["gc", "--prune", "now"], b"");
    assert_eq!(items(&env), want);
    // A small append after it is loose, and read with the rest.
    env.ok(
        &append_in_batches_of("2"),
        b"{\"event_type\":\"agent_started\",\"item_id\":\"last\"}\n",
    );
    assert_eq!(items(&env).len(), count + 1);
}

/// 12,000 lines, parsed in chunks of 1,000 on several threads (each thread gets several
/// chunks): blocks of 100 bare events (whose `n` is their line's index) between full
/// records of two writers taking turns every 300 lines (whose `seq` is) — writer `w1`'s
/// in the stored form, as `events show --json` prints them, its agent in its metadata —
/// and at line 2,200 line 106's record once more, at line 2,500 line 306's.
const MANY: u64 = 12_000;

/// The lines of [`many_lines`] that repeat an earlier one.
const REPEATED: [u64; 2] = [2199, 2499];

fn many_lines() -> Vec<String> {
    let mut lines: Vec<String> = (0..MANY)
        .map(|n| match ((n / 100) % 5, (n / 300) % 2) {
            (0, _) => format!(r#"{{"event_type":"tick","n":{n}}}"#),
            (_, 0) => format!(
                r#"{{"v":1,"id":"r{n}","timestamp":"2026-01-01T00:00:00Z","writer":"w0","seq":{n},"event":{{"event_type":"step","agent_id":"a{}"}}}}"#,
                n % 7
            ),
            _ => format!(
                r#"{{"v":1,"id":"r{n}","timestamp":"2026-01-01T00:00:00.000000Z","writer":"w1","seq":{n},"event":{{"event_type":"step"}},"metadata":{{"agent_id":"a{}"}}}}"#,
                n % 7
            ),
        })
        .collect();
    lines[2199] = lines[105].clone();
    lines[2499] = lines[305].clone();
    lines
}

#[test]
fn lines_parsed_in_chunks_are_added_in_order_with_repeats_found_across_chunks() {
    let env = Env::new();
    let input: String = many_lines().iter().map(|l| format!("{l}\n")).collect();
    let out = env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        input.as_bytes(),
    );
    assert_eq!(
        out.trim(),
        format!(
            "appended {} events to events/api/j; skipped 2 records already there (same writer, seq and content)",
            MANY - 2
        )
    );
    let all = records(&env, "j", &[]);
    assert_eq!(all.len() as u64, MANY - 2);
    let of = |writer: &str| -> Vec<u64> {
        all.iter()
            .filter(|r| r["writer"] == writer)
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    };
    let want = |writer: u64| -> Vec<u64> {
        (0..MANY)
            .filter(|n| (n / 100) % 5 != 0 && (n / 300) % 2 == writer && !REPEATED.contains(n))
            .collect()
    };
    assert_eq!(of("w0"), want(0));
    assert_eq!(of("w1"), want(1));
    // The bare events: this call's writer, seqs in input order.
    let bare: Vec<(u64, u64)> = all
        .iter()
        .filter(|r| r["event"]["event_type"] == "tick")
        .map(|r| {
            (
                r["seq"].as_u64().unwrap(),
                r["event"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    let n: Vec<u64> = (0..MANY).filter(|n| (n / 100) % 5 == 0).collect();
    assert_eq!(
        bare,
        n.iter()
            .copied()
            .enumerate()
            .map(|(s, n)| (s as u64, n))
            .collect::<Vec<_>>()
    );
    // Each record's agent is found by the filter, and counted in its batch's summary
    // (`w1`'s from its metadata).
    let a6 = (0..MANY)
        .filter(|n| (n / 100) % 5 != 0 && n % 7 == 6 && !REPEATED.contains(n))
        .count();
    assert_eq!(records(&env, "j", &["--agent", "a6"]).len(), a6);
    let stats = agent_stats(&env, "j");
    assert_eq!(stats["by_agent"]["a6"], a6, "{stats}");
}

/// A record repeated long after its first line, whose batch has released its lines by
/// then (`--batch-size 1`: the storing thread is done with a batch five batches later),
/// is told apart by the line decoded from the batch's frame: the same record, as
/// written or written another way, is skipped; other content is refused, with nothing
/// appended and nothing stored.
#[test]
fn a_record_repeated_after_its_batch_released_its_lines_is_told_from_its_frame() {
    let env = Env::new();
    let line = |seq: u64, event: &str| {
        format!(
            r#"{{"v":1,"id":"r{seq}","timestamp":"2026-01-01T00:00:00.000000Z","writer":"w","seq":{seq},"event":{event},"metadata":{{}}}}"#
        )
    };
    let step = r#"{"event_type":"step","n":1}"#;
    let mut lines: Vec<String> = (0..20).map(|seq| line(seq, step)).collect();
    lines.push(line(0, step));
    // Record 1 written another way: its event's keys in another order.
    lines.push(line(1, r#"{"n":1,"event_type":"step"}"#));
    let input = |lines: &[String]| -> String { lines.iter().map(|l| format!("{l}\n")).collect() };
    let append = |lines: &[String]| env.run(&append_in_batches_of("1"), input(lines).as_bytes());
    let appended = |lines: &[String]| env.ok(&append_in_batches_of("1"), input(lines).as_bytes());
    assert_eq!(
        appended(&lines).trim(),
        "appended 20 events to events/api/j; skipped 2 records already there (same writer, seq and content)"
    );
    // The same input again: its batches are the stored objects (no frame is kept), and
    // the repeats are read back from the store.
    assert_eq!(
        appended(&lines).trim(),
        "appended 0 events to events/api/j; skipped 22 records already there (same writer, seq and content)"
    );
    // Another writer's 20 records, then its record 3 again with another payload.
    let mut other: Vec<String> = (0..20)
        .map(|seq| line(seq, step).replace(r#""writer":"w""#, r#""writer":"v""#))
        .collect();
    other.push(
        line(3, r#"{"event_type":"step","n":2}"#).replace(r#""writer":"w""#, r#""writer":"v""#),
    );
    let objects = env.home().join("objects");
    let before = files_under(&objects);
    let stderr = assert_one_line_error(&append(&other), 1);
    assert!(
        stderr.contains("line 21: record r3 has writer v and seq 3 as line 4 with other content")
            && stderr.contains("nothing was appended"),
        "{stderr}"
    );
    assert_eq!(records(&env, "j", &[]).len(), 20);
    assert_eq!(files_under(&objects), before);
}

/// A retry that overlaps what an earlier append stored, long enough that its batches
/// have let go of their lines by the append (`--batch-size 10`, 20 batches): the batch
/// straddling the stored records is read back from its object, its stored records
/// skipped and the rest appended; a stored record with other content in such a batch is
/// refused, and nothing is appended.
#[test]
fn a_retry_overlapping_stored_records_reads_its_released_batches_back() {
    let env = Env::new();
    let line = |seq: u64, n: u64| {
        format!(
            r#"{{"v":1,"id":"r{seq}","timestamp":"2026-01-01T00:00:00.000000Z","writer":"w","seq":{seq},"event":{{"event_type":"step","n":{n}}},"metadata":{{}}}}"#
        )
    };
    let input = |seqs: std::ops::Range<u64>, changed: Option<u64>| -> String {
        seqs.map(|s| line(s, u64::from(Some(s) == changed)) + "\n")
            .collect()
    };
    assert_eq!(
        env.ok(&append_in_batches_of("10"), input(0..15, None).as_bytes())
            .trim(),
        "appended 15 events to events/api/j"
    );
    // Record 12 with other content, in the batch of 10..20: refused, nothing appended.
    let stderr = assert_one_line_error(
        &env.run(
            &append_in_batches_of("10"),
            input(0..200, Some(12)).as_bytes(),
        ),
        1,
    );
    assert!(
        stderr.contains(
            "record r12 (writer w, seq 12) differs from the record r12 the log events/api/j/w already holds"
        ) && stderr.contains("nothing was appended"),
        "{stderr}"
    );
    assert_eq!(records(&env, "j", &[]).len(), 15);
    assert_eq!(
        env.ok(&append_in_batches_of("10"), input(0..200, None).as_bytes())
            .trim(),
        "appended 185 events to events/api/j; skipped 15 records already there (same writer, seq and content)"
    );
    let seqs: Vec<u64> = records(&env, "j", &[])
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
}

/// An event nested as deep as a stored record may be (serde_json's limit, one level of
/// it the record's own) is appended and read back; one level deeper is refused with its
/// line, and the log stays readable (it was stored, and hid every event of its batch).
#[test]
fn an_event_nested_deeper_than_reads_go_is_refused() {
    let env = Env::new();
    let event = |depth: usize| {
        format!(
            "{{\"event_type\":\"deep\",\"x\":{}{}}}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    let append = |input: String| {
        env.run(
            &["events", "append", "--job", "j", "--repo", "api"],
            input.as_bytes(),
        )
    };
    // The record nests the event's `x` two levels down: 125 + 2 = 127.
    let ok = append(format!("{{\"event_type\":\"first\"}}\n{}", event(125)));
    assert!(ok.status.success(), "{}", crate::common::transcript(&ok));
    let stderr = assert_one_line_error(&append(event(126)), 1);
    assert!(
        stderr.contains("line 1: record seq 0 nests 128 levels deep, and reads stop at 127")
            && stderr.contains("nothing was appended"),
        "{stderr}"
    );
    let shown = records(&env, "j", &[]);
    assert_eq!(shown.len(), 2);
    assert_eq!(shown[1]["event"]["event_type"], "deep");
}

#[test]
fn the_first_bad_line_of_many_is_the_one_reported() {
    let env = Env::new();
    let mut lines = many_lines();
    lines[1499] = "{\"event_type\":".into();
    lines[2399] = "not json".into();
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let append =
        |input: &[u8]| env.run(&["events", "append", "--job", "j", "--repo", "api"], input);
    let stderr = assert_one_line_error(&append(input.as_bytes()), 1);
    assert!(
        stderr.contains("line 1500: invalid JSON") && stderr.contains("nothing was appended"),
        "{stderr}"
    );
    // A line too long to read, after the bad one: the bad one is still the one reported.
    let mut input = lines[..2000].join("\n").into_bytes();
    input.push(b'\n');
    input.extend(std::iter::repeat_n(b' ', 17 << 20));
    let stderr = assert_one_line_error(&append(&input), 1);
    assert!(stderr.contains("line 1500: invalid JSON"), "{stderr}");
    assert!(!env.home().join("events/api/j").exists());
    assert_eq!(
        files_under(&env.home().join("objects")),
        Vec::<std::path::PathBuf>::new()
    );
}

/// `events append --job j --repo api` started with piped streams, and its standard input.
fn append_child(env: &Env) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = env
        .std_cmd()
        .args(["events", "append", "--job", "j", "--repo", "api"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// A refused line is reported once the lines before it are read, without waiting for
/// more input or its end: the caller may keep the pipe open. Whether the bad line ends a
/// chunk (handed to a parsing thread), is in the chunk being read, or fills one alone.
#[test]
fn a_bad_line_is_reported_while_the_input_stays_open() {
    let env = Env::new();
    let good: Vec<String> = many_lines().iter().map(|l| format!("{l}\n")).collect();
    let bad = "{\"event_type\":\n".to_owned();
    let long_bad = format!("{{\"event_type\":\"{}\n", "a".repeat(3 << 19));
    let cases = [
        (good[..2500].concat() + &bad, 2501),
        (good[..1999].concat() + &bad, 2000),
        (long_bad, 1),
        // A bad line, then the start of the next one.
        (good[..10].concat() + &bad + "{\"event_t", 11),
    ];
    for (input, number) in cases {
        let (mut child, mut stdin) = append_child(&env);
        stdin.write_all(input.as_bytes()).unwrap();
        stdin.flush().unwrap();
        // The pipe stays open until the command has exited (or 60 s have passed).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let exited_while_open = child.try_wait().unwrap().is_some();
        drop(stdin);
        assert!(exited_while_open, "line {number}: it waited for more input");
        let out = child.wait_with_output().unwrap();
        let stderr = assert_one_line_error(&out, 1);
        assert!(
            stderr.contains(&format!("line {number}: invalid JSON")),
            "{stderr}"
        );
    }
}

#[test]
fn a_huge_line_is_refused_without_being_read_whole() {
    let env = Env::new();
    let (child, mut stdin) = append_child(&env);
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(b"{\"event_type\":\"ok\"}\n{\"event_type\":\"x\",\"blob\":\"");
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..100 {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = stdin.write_all(b"\"}\n");
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("line 2 is longer than 16777216 bytes"),
        "{stderr}"
    );
    assert!(!env.home().join("events/api/j/HEAD").exists());
}

#[test]
fn full_records_keep_their_identity() {
    let env = Env::new();
    let input = concat!(
        r#"{"id":"r1","timestamp":"2025-01-09T14:32:53.346192243Z","writer":"w1","seq":0,"correlation_id":"c1","event":{"event_type":"agent_started","agent_id":"a","item_id":"i"},"metadata":{"host":"h","pid":7}}"#,
        "\n",
        r#"{"id":"r2","timestamp":"2025-01-09T14:32:54Z","writer":"w1","seq":1,"event":{"event_type":"agent_completed","agent_id":"a","item_id":"i","duration_ms":5}}"#,
        "\n"
    );
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        input.as_bytes(),
    );
    let all = records(&env, "j", &[]);
    assert_eq!(all[0]["id"], "r1");
    assert_eq!(all[0]["timestamp"], "2025-01-09T14:32:53.346192Z");
    assert_eq!(all[0]["metadata"]["host"], "h");
    assert_eq!(all[1]["seq"], 1);
    assert_eq!(records(&env, "j", &["--correlation", "c1"]).len(), 1);
    // Out-of-order seq from one writer is refused.
    let bad = input.replace(r#""seq":1"#, r#""seq":0"#);
    let out = env.run(
        &["events", "append", "--job", "k", "--repo", "api"],
        bad.as_bytes(),
    );
    assert_one_line_error(&out, 1);
}

/// A retried append of full records adds nothing twice: a record is known by its writer
/// and seq; the same record is skipped and counted, another one under them is refused.
#[test]
fn appends_of_full_records_are_idempotent() {
    let env = Env::new();
    let rec = |id: &str, writer: &str, seq: u64, item: &str| {
        format!(
            r#"{{"id":"{id}","timestamp":"2025-01-09T14:32:{:02}Z","writer":"{writer}","seq":{seq},"event":{{"event_type":"agent_started","agent_id":"a","item_id":"{item}"}}}}"#,
            seq % 60
        ) + "\n"
    };
    let append = |input: &str| {
        env.ok(
            &["events", "append", "--job", "j", "--repo", "api"],
            input.as_bytes(),
        )
    };
    let ab = rec("r0", "w1", 0, "i0") + &rec("r1", "w1", 1, "i1");
    assert_eq!(append(&ab), "appended 2 events to events/api/j\n");
    assert_eq!(
        append(&ab),
        "appended 0 events to events/api/j; skipped 2 records already there (same writer, seq and content)\n"
    );
    let abc = ab.clone() + &rec("r2", "w1", 2, "i2");
    assert_eq!(
        append(&abc),
        "appended 1 event to events/api/j; skipped 2 records already there (same writer, seq and content)\n"
    );
    let ids = |env: &Env| -> Vec<String> {
        records(env, "j", &[])
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&env), ["r0", "r1", "r2"]);
    // The same id, writer and seq with another payload is refused, and nothing of its call
    // is appended.
    let other = rec("r1", "w1", 1, "changed") + &rec("r3", "w1", 3, "i3");
    let out = env.run(
        &["events", "append", "--job", "j", "--repo", "api"],
        other.as_bytes(),
    );
    assert_one_line_error(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("record r1 (writer w1, seq 1) differs") && stderr.contains("nothing"),
        "{stderr}"
    );
    assert_eq!(ids(&env), ["r0", "r1", "r2"]);
    // Within one call too.
    let twice = rec("q0", "w2", 0, "x") + &rec("q0", "w2", 0, "x");
    assert!(append(&twice).starts_with("appended 1 event to events/api/j; skipped 1 record"));
    let out = env.run(
        &["events", "append", "--job", "j", "--repo", "api"],
        (rec("q1", "w2", 1, "x") + &rec("q1", "w2", 1, "y")).as_bytes(),
    );
    assert_one_line_error(&out, 1);
    // Bare events have no identity of their own: each append adds them.
    for _ in 0..2 {
        append("{\"event_type\":\"agent_started\",\"agent_id\":\"a\"}\n");
    }
    assert_eq!(records(&env, "j", &[]).len(), 6);

    // Four processes retrying one append at once: each record lands once.
    let input: String = (0..50)
        .map(|s| rec(&format!("c{s}"), "w3", s, "c"))
        .collect();
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut child = env
                .std_cmd()
                .args(["events", "append", "--job", "c", "--repo", "api"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
            child
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stored = records(&env, "c", &[]);
    assert_eq!(stored.len(), 50);
    for (s, r) in stored.iter().enumerate() {
        assert_eq!(r["seq"], s as u64);
    }
}

#[test]
fn a_damaged_log_names_the_object_and_best_effort_prints_the_rest() {
    let env = Env::new();
    let best_effort = || {
        env.run(
            &[
                "events",
                "show",
                "j",
                "--repo",
                "api",
                "--json",
                "--best-effort",
            ],
            b"",
        )
    };
    // One writer, three batches: one chain of three nodes.
    let lines: String = (0..3)
        .map(|n| format!("{{\"event_type\":\"step\",\"n\":{n}}}\n"))
        .collect();
    env.ok(&append_in_batches_of("1"), lines.as_bytes());
    let refs = env.store();
    let log = prodigy::events::EventLog::new(refs.clone(), "api", "j").unwrap();
    let chains = log.chains().unwrap();
    assert_eq!(chains.len(), 1);
    let nodes = chains[0].0.nodes().unwrap();
    let middle = nodes[1].1.batch;
    let path = refs.objects().path(&middle);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() - 2;
    bytes[at] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let out = env.run(&["events", "show", "j", "--repo", "api", "--json"], b"");
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains(&format!("broken at batch {middle}")),
        "{stderr}"
    );
    let out = best_effort();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("warning: the event log events/api/j/")
    );
    // A missing node: the newer part is still shown.
    fs::remove_file(refs.objects().path(&nodes[0].0)).unwrap();
    let out = best_effort();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("broken at log node {}", nodes[0].0))
    );
}

/// `events follow JOB --repo api --json --from-start`, polling every 20 ms, and its lines.
fn follow_from_start(
    env: &Env,
    job: &str,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut child = env
        .std_cmd()
        .args(["events", "follow", job, "--repo", "api", "--json"])
        .args(["--interval", "20ms", "--from-start"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[test]
fn follow_prints_appends_as_they_land() {
    let env = Env::new();
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        b"{\"event_type\":\"before\"}\n",
    );
    let (mut child, mut lines) = follow_from_start(&env, "j");
    // What was there before is printed first; then each append as it lands.
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["event"]["event_type"], "before");
    for n in 0..3 {
        env.ok(
            &["events", "append", "--job", "j", "--repo", "api"],
            format!("{{\"event_type\":\"live\",\"n\":{n}}}\n").as_bytes(),
        );
        let line = lines.next().unwrap().unwrap();
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["event"]["n"], n);
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn events_survive_in_fsck() {
    let env = Env::new();
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        JOB_EVENTS.as_bytes(),
    );
    let out = env.run(&["fsck"], b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_logger_flushes_on_time_on_drop_and_on_size() {
    use prodigy::events::{EventLog, EventLogger, MapReduceEvent, Thresholds};
    use std::time::{Duration, Instant};
    let env = Env::new();
    let home = prodigy::Home::at(env.home()).unwrap();
    let count = || {
        EventLog::new(env.store(), "api", "j")
            .unwrap()
            .totals()
            .unwrap()
            .map_or(0, |t| t.total.count)
    };
    let event = |n: u32| MapReduceEvent::CheckpointLoaded {
        job_id: "j".into(),
        version: n,
    };
    let thresholds = Thresholds {
        max_events: 5,
        max_bytes: 1 << 20,
        max_delay: Duration::from_millis(100),
        ..Thresholds::default()
    };
    let logger = EventLogger::new(&home, "api", "j", thresholds).unwrap();
    logger.set_correlation_id(Some("corr-1".into()));
    logger.log(event(0)).unwrap();
    // The time threshold flushes without any further call.
    let start = Instant::now();
    while count() < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the time threshold never flushed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The size threshold seals the batch and the flusher appends it, with no flush().
    for n in 1..=5 {
        logger.log(event(n)).unwrap();
    }
    let start = Instant::now();
    while count() < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the size threshold never flushed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    logger.log(event(6)).unwrap();
    drop(logger);
    assert_eq!(count(), 7, "drop did not flush");
    assert_eq!(records(&env, "j", &["--correlation", "corr-1"]).len(), 7);
    let logger = EventLogger::new(&home, "api", "j", Thresholds::default()).unwrap();
    logger.log(event(7)).unwrap();
    logger.shutdown().unwrap();
    assert_eq!(count(), 8);
}

#[test]
fn a_job_whose_head_is_not_a_log_node_does_not_hide_the_others() {
    let env = Env::new();
    env.ok(
        &["events", "append", "--job", "good", "--repo", "api"],
        JOB_EVENTS.as_bytes(),
    );
    let blob = crate::common::blob(&env, "not a log node");
    env.ok(&["ref", "update", "events/api/odd", &blob], b"");
    let out = env.run(&["events", "ls", "--repo", "api"], b"");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("good") && !stdout.contains("odd"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("warning: the event log events/api/odd is broken at log node"),
        "{stderr}"
    );
    assert!(stderr.contains("it is a blob object"), "{stderr}");
    let out = env.run(&["events", "show", "odd", "--repo", "api"], b"");
    assert_one_line_error(&out, 1);
}

#[test]
fn a_failed_append_keeps_the_events_for_the_next_flush() {
    use prodigy::events::{EventLog, EventLogger, MapReduceEvent, Thresholds};
    use prodigy::lock::LockOptions;
    use std::time::Duration;
    let env = Env::new();
    let home = prodigy::Home::at(env.home()).unwrap();
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        b"{\"event_type\":\"first\"}\n",
    );
    let opts = LockOptions {
        timeout: Duration::from_millis(200),
        on_wait: None,
    };
    let logger = EventLogger::with_refs(
        prodigy::RefStore::new(&home, opts),
        "api",
        "j",
        Thresholds::default(),
    )
    .unwrap();
    // The logger's own chain is locked (as by a process stuck holding it).
    let dir = env
        .home()
        .join("events/api/j/writers")
        .join(logger.writer());
    fs::create_dir_all(&dir).unwrap();
    let lock = fs::File::create(dir.join("lock")).unwrap();
    lock.lock().unwrap();
    for n in 0..3 {
        logger
            .log(MapReduceEvent::CheckpointLoaded {
                job_id: "j".into(),
                version: n,
            })
            .unwrap();
    }
    let err = logger.flush().unwrap_err().to_string();
    assert!(err.contains("timed out"), "{err}");
    assert!(logger.flush().is_err(), "still locked");
    drop(lock);
    logger.flush().unwrap();
    logger.shutdown().unwrap();
    let seqs: Vec<u64> = records(&env, "j", &[])
        .iter()
        .skip(1)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [0, 1, 2]);
    let totals = EventLog::new(env.store(), "api", "j")
        .unwrap()
        .totals()
        .unwrap()
        .unwrap();
    assert_eq!(totals.total.count, 4);
}

#[test]
fn fsck_follows_event_chains_and_dlq_snapshots() {
    let env = Env::new();
    for n in 0..3 {
        env.ok(
            &["events", "append", "--job", "j", "--repo", "api"],
            format!("{{\"event_type\":\"e{n}\"}}\n").as_bytes(),
        );
    }
    env.ok(
        &[
            "dlq", "add", "--repo", "api", "--job", "j", "--item", "i1", "--error", "boom",
        ],
        b"",
    );
    assert_eq!(env.run(&["fsck"], b"").status.code(), Some(0));
    let refs = env.store();
    // The first append's chain (a writer's ids count up with time).
    let (chain, _) = prodigy::events::EventLog::new(refs.clone(), "api", "j")
        .unwrap()
        .chains()
        .unwrap()
        .remove(0);
    let nodes = chain.nodes().unwrap();
    // The oldest batch, reachable only through the chain, goes missing.
    std::fs::remove_file(refs.objects().path(&nodes[0].1.batch)).unwrap();
    // And the DLQ item, reachable only through the snapshot's shard.
    let item = prodigy::dlq::DeadLetterQueue::new(refs.clone(), "api", "j")
        .unwrap()
        .snapshot()
        .unwrap()
        .items["i1"]
        .object;
    std::fs::remove_file(refs.objects().path(&item)).unwrap();
    let out = env.run(&["fsck"], b"");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "ref {} reaches missing object {} (named by {})",
            chain.name(),
            nodes[0].1.batch,
            nodes[0].0
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("ref dlq/api/j reaches missing object {item}")),
        "{stdout}"
    );
}

/// `events clean` rewrites the chain under a running `follow`: follow prints each event
/// once (it tracks writers' sequence numbers, not the position in the chain), old and new
/// alike, and the event appended after the clean.
#[test]
fn follow_prints_each_event_once_across_a_clean() {
    let env = Env::new();
    for n in 0..6 {
        env.ok(
            &["events", "append", "--job", "f", "--repo", "api"],
            format!("{{\"event_type\":\"e\",\"n\":{n}}}\n").as_bytes(),
        );
    }
    let (mut child, mut lines) = follow_from_start(&env, "f");
    let n_of = |line: String| -> u64 {
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        record["event"]["n"].as_u64().unwrap()
    };
    let first: Vec<u64> = (0..6)
        .map(|_| n_of(lines.next().unwrap().unwrap()))
        .collect();
    assert_eq!(first, vec![0, 1, 2, 3, 4, 5]);
    let cleaned = env.ok(
        &[
            "events",
            "clean",
            "--repo",
            "api",
            "--job",
            "f",
            "--max-events",
            "3",
            "--json",
        ],
        b"",
    );
    assert!(cleaned.contains('3'), "{cleaned}");
    // Long enough for follow to see the rewritten head on its own.
    std::thread::sleep(std::time::Duration::from_millis(300));
    env.ok(
        &["events", "append", "--job", "f", "--repo", "api"],
        b"{\"event_type\":\"e\",\"n\":6}\n",
    );
    let next = n_of(lines.next().unwrap().unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(next, 6, "an event was printed again after the clean");
}

/// A job whose log began in the layout before writers had refs (one chain under
/// `events/<repo>/<job>`, many writers in it) and then gained writers' refs: read as one
/// log, merged by time; a record the old chain holds is not appended again; stats add
/// both; retention keeps the newest N over both exactly; gc and fsck keep and check both.
#[test]
fn the_old_layout_is_read_beside_writers_refs_and_retention_counts_over_both() {
    use prodigy::events::{Batch, Chain, EventRecord};
    use prodigy::store::refs::{RefKind, RefName};
    let env = Env::new();
    let refs = env.store();
    // Every record: writer "old" at even microseconds, writer "new" at odd ones.
    let record = |writer: &str, seq: u64, us: u64| EventRecord {
        v: 1,
        id: format!("{writer}-{seq}"),
        timestamp: format!("2026-01-01T00:00:00.{us:06}Z"),
        writer: writer.into(),
        seq,
        correlation_id: None,
        event: serde_json::json!({"event_type": "agent_progress", "item_id": format!("{writer}-{seq}")}),
        metadata: Default::default(),
    };
    let old = Chain::new(
        refs.clone(),
        RefName::new(RefKind::Events, "api", "j").unwrap(),
    );
    let mut batches = Vec::new();
    for b in 0..3u64 {
        let mut batch = Batch::new();
        for seq in b * 4..b * 4 + 4 {
            batch.push(&record("old", seq, seq * 2)).unwrap();
        }
        batches.push(batch);
    }
    old.append(&batches).unwrap();
    let new: String = (0..12u64)
        .map(|seq| serde_json::to_string(&record("new", seq, seq * 2 + 1)).unwrap() + "\n")
        .collect();
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        new.as_bytes(),
    );
    let refs_list = env.ok(&["ref", "list", "events/api/j"], b"");
    assert_eq!(refs_list.lines().count(), 2, "{refs_list}");
    let shown: Vec<String> = records(&env, "j", &[])
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..12)
        .flat_map(|s| [format!("old-{s}"), format!("new-{s}")])
        .collect();
    assert_eq!(shown, want);
    // The old chain's records, appended again as a retry would: skipped.
    let again: String = (0..4u64)
        .map(|seq| serde_json::to_string(&record("old", seq, seq * 2)).unwrap() + "\n")
        .collect();
    let out = env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        again.as_bytes(),
    );
    assert!(
        out.contains("appended 0 events") && out.contains("skipped 4"),
        "{out}"
    );
    assert_eq!(records(&env, "j", &[]).len(), 24);
    let stats: serde_json::Value =
        serde_json::from_str(&env.ok(&["events", "stats", "j", "--repo", "api", "--json"], b""))
            .unwrap();
    assert_eq!(stats["total"]["count"], 24, "{stats}");
    assert_eq!(env.run(&["fsck"], b"").status.code(), Some(0));
    env.ok(&["gc", "--prune", "now"], b"");
    // Keep the newest 7: over both chains, by time (new-8, old-9 … new-11).
    env.ok(
        &[
            "events",
            "clean",
            "--job",
            "j",
            "--repo",
            "api",
            "--max-events",
            "7",
        ],
        b"",
    );
    let kept: Vec<String> = records(&env, "j", &[])
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kept, want[17..].to_vec());
    assert_eq!(env.run(&["fsck"], b"").status.code(), Some(0));
}

/// Bare events are stored as written when nothing of them moves into the envelope (the
/// fast path of `events append`), and otherwise as before: `metadata` and
/// `correlation_id` leave the event for the envelope, odd types of the summarised fields
/// are kept in the event and left out of the summary.
#[test]
fn bare_events_keep_their_fields_whichever_way_they_are_read() {
    let env = Env::new();
    let lines = [
        r#"{"event_type":"plain","agent_id":"a1","duration_ms":7,"nested":{"k":[1,2]}}"#,
        r#"{"event_type":"odd","agent_id":5,"duration_ms":1.5}"#,
        r#"{"event_type":"moved","metadata":{"agent_id":"m1"},"correlation_id":"c1"}"#,
        r#"{"event_type":"nulls","metadata":null}"#,
    ];
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        (lines.join("\n") + "\n").as_bytes(),
    );
    let stored = records(&env, "j", &[]);
    assert_eq!(stored.len(), 4);
    assert_eq!(
        stored[0]["event"],
        serde_json::json!({"event_type":"plain","agent_id":"a1","duration_ms":7,"nested":{"k":[1,2]}})
    );
    assert_eq!(stored[1]["event"]["agent_id"], 5);
    assert_eq!(
        stored[2]["event"],
        serde_json::json!({"event_type":"moved"})
    );
    assert_eq!(stored[2]["metadata"]["agent_id"], "m1");
    assert_eq!(stored[2]["correlation_id"], "c1");
    assert_eq!(
        stored[3]["event"],
        serde_json::json!({"event_type":"nulls"})
    );
    for (seq, r) in stored.iter().enumerate() {
        assert_eq!(r["seq"], seq as u64);
    }
    let stats = agent_stats(&env, "j");
    let agents = stats["by_agent"].to_string();
    assert!(agents.contains("a1") && agents.contains("m1"), "{stats}");
    assert_eq!(
        stats["total"]["durations"]["plain"]["total_ms"], 7,
        "{stats}"
    );
    assert!(stats["total"]["durations"].get("odd").is_none(), "{stats}");
}

/// Full records take a fast path (the envelope typed, the event stored as written) unless
/// something in them needs the general one: both store the same records, read back alike,
/// and an export appended elsewhere is stored byte for byte as it was.
#[test]
fn full_records_read_back_the_same_whichever_path_stored_them() {
    let env = Env::new();
    let fast = [
        r#"{"v":1,"id":"r0","timestamp":"2025-01-09T14:32:53.346192243Z","writer":"w","seq":0,"correlation_id":"c","event":{"event_type":"agent_started","agent_id":"a","item_id":"i","z":[1,{"k":null}]},"metadata":{"host":"h","pid":7,"extra":{"x":1}},"unknown":5}"#,
        r#"{"id":"r1","timestamp":"2025-01-09T15:32:54+01:00","writer":"w","seq":1,"event":{"duration_ms":5,"event_type":"agent_completed","item_id":"i"},"metadata":{"agent_id":"m"}}"#,
        r#"{"id":"r2","timestamp":"2025-01-09T14:32:55Z","writer":"w","seq":2,"event":{"event_type":"odd","agent_id":5,"duration_ms":1.5}}"#,
        r#"{"v":2,"id":"r3","timestamp":"2025-01-09T14:32:56Z","writer":"w","seq":3,"event":{"event_type":"later"}}"#,
        // In the stored form, stored as it is, and so read back: the agent in the
        // metadata only. (With a null correlation id the envelope is written anew.)
        r#"{"v":1,"id":"r4","timestamp":"2025-01-09T14:32:57.000001Z","writer":"w","seq":4,"event":{"event_type":"agent_progress","item_id":"i1"},"metadata":{"agent_id":"m2","host":"h"}}"#,
        r#"{"v":1,"id":"r5","timestamp":"2025-01-09T14:32:58.000000Z","writer":"w","seq":5,"correlation_id":null,"event":{"event_type":"x"},"metadata":{}}"#,
    ];
    // The same records, each with a repeated key (which the typed read refuses), so the
    // general path stores them.
    let general: Vec<String> = fast
        .iter()
        .map(|l| l.replacen(r#""writer":"w""#, r#""writer":"x","writer":"w""#, 1))
        .collect();
    let append = |job: &str, lines: &[String]| {
        env.ok(
            &["events", "append", "--job", job, "--repo", "api"],
            (lines.join("\n") + "\n").as_bytes(),
        )
    };
    let fast: Vec<String> = fast.iter().map(|l| (*l).to_owned()).collect();
    append("fast", &fast);
    append("general", &general);
    let (a, b) = (records(&env, "fast", &[]), records(&env, "general", &[]));
    assert_eq!(a, b);
    assert_eq!(a.len(), 6);
    assert_eq!(a[4]["event"]["item_id"], "i1");
    assert_eq!(a[0]["timestamp"], "2025-01-09T14:32:53.346192Z");
    assert_eq!(a[1]["timestamp"], "2025-01-09T14:32:54.000000Z");
    assert!(a[0].get("unknown").is_none());
    assert_eq!(a[3]["v"], 2);
    // Summaries agree: agents (the event's, else the metadata's), durations.
    let stats = |job: &str| agent_stats(&env, job);
    assert_eq!(stats("fast"), stats("general"));
    assert!(stats("fast")["by_agent"].to_string().contains("\"m2\""));
    // A repeat written another way (keys in another order) is the same record.
    let reordered = r#"{"writer":"w","seq":1,"id":"r1","event":{"item_id":"i","event_type":"agent_completed","duration_ms":5},"timestamp":"2025-01-09T14:32:54Z","metadata":{"agent_id":"m"}}"#;
    assert_eq!(
        append("fast", &[reordered.to_owned()]),
        "appended 0 events to events/api/fast; skipped 1 record already there (same writer, seq and content)\n"
    );
    assert!(
        append("twice", &[fast[1].clone(), reordered.to_owned()])
            .starts_with("appended 1 event to events/api/twice; skipped 1 record")
    );
    // A record in the stored form is kept as it is, read once (the path that writes the
    // envelope would put `timestamp` before `writer`).
    let kept = r#"{"v":1,"id":"k0","writer":"k","timestamp":"2025-01-09T14:32:59.000000Z","seq":0,"event":{"event_type":"x"},"metadata":{}}"#;
    append("kept", &[kept.to_owned()]);
    assert_eq!(
        env.ok(&["events", "show", "kept", "--repo", "api", "--json"], b""),
        format!("{kept}\n")
    );
    // An export appended to another job is stored as it was, byte for byte.
    let export = env.ok(&["events", "show", "fast", "--repo", "api", "--json"], b"");
    env.ok(
        &["events", "append", "--job", "copy", "--repo", "api"],
        export.as_bytes(),
    );
    assert_eq!(
        env.ok(&["events", "show", "copy", "--repo", "api", "--json"], b""),
        export
    );
}

/// A job with more writers than get a read-ahead thread (8) is read by the caller itself,
/// chain by chain, in the same merged order.
#[test]
fn a_log_of_many_writers_reads_back_whole_and_in_order() {
    let env = Env::new();
    for w in 0..12 {
        let input: String = (0..3)
            .map(|n| format!("{{\"event_type\":\"e{}\",\"n\":{}}}\n", n % 2, w * 3 + n))
            .collect();
        env.ok(
            &["events", "append", "--job", "j", "--repo", "api"],
            input.as_bytes(),
        );
    }
    let all = records(&env, "j", &[]);
    assert_eq!(all.len(), 36);
    let keys: Vec<(String, String, u64)> = all
        .iter()
        .map(|r| {
            (
                r["timestamp"].as_str().unwrap().to_owned(),
                r["writer"].as_str().unwrap().to_owned(),
                r["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    let mut ns: Vec<u64> = all
        .iter()
        .map(|r| r["event"]["n"].as_u64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, (0..36).collect::<Vec<_>>());
    assert_eq!(records(&env, "j", &["--type", "e1"]).len(), 12);
}
