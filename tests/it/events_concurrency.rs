//! Many appenders at once, and appenders killed at random moments.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use prodigy::events::query::stream;
use prodigy::events::{EventLog, EventRecord, Filter};

use crate::common::Env;
use crate::events::repo_with_worktree;
use crate::worker;

fn all_records(env: &Env, repo: &str, job: &str) -> Vec<EventRecord> {
    let log = EventLog::new(env.store(), repo, job).unwrap();
    let mut out = Vec::new();
    stream(&log, &Filter::default(), false, true, |line| {
        out.push(line.record.unwrap());
        Ok(true)
    })
    .unwrap();
    out
}

/// Four logger processes, two in each worktree of one repository, each appending 2,000
/// events to the job `shared-job` of repo `api`.
pub fn spawn_four_appenders(env: &Env) -> Vec<std::process::Child> {
    let (main, wt) = repo_with_worktree(env);
    (0..4)
        .map(|w| {
            let dir = if w % 2 == 0 { &main } else { &wt };
            worker::spawn(
                "events",
                &env.home(),
                &env.dir.path().join(format!("ack-{w}")),
                &[
                    ("PRODIGY_IT_ID", format!("agent-{w}")),
                    ("CWD", dir.display().to_string()),
                ],
            )
        })
        .collect()
}

#[test]
fn four_processes_in_two_worktrees_append_8000_events() {
    let env = Env::new();
    let children = spawn_four_appenders(&env);
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let records = all_records(&env, "api", "shared-job");
    assert_eq!(records.len(), 8000);
    let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 8000);
    let mut by_writer: HashMap<&str, Vec<u64>> = HashMap::new();
    for r in &records {
        by_writer.entry(r.writer.as_str()).or_default().push(r.seq);
    }
    assert_eq!(by_writer.len(), 4);
    for seqs in by_writer.values() {
        assert_eq!(
            *seqs,
            (0..2000).collect::<Vec<u64>>(),
            "a writer's seq is not contiguous and in order"
        );
    }
    let worktrees: HashSet<_> = records
        .iter()
        .filter_map(|r| r.metadata.worktree.clone())
        .collect();
    assert_eq!(worktrees.len(), 2, "{worktrees:?}");
    let log = EventLog::new(env.store(), "api", "shared-job").unwrap();
    let totals = log.totals().unwrap().unwrap();
    assert_eq!(totals.total.count, 8000);
    assert_eq!(totals.batches, 160);
    // Each writer appended to its own chain.
    assert_eq!(totals.chains, 4);
}

#[test]
fn sigkilled_appenders_lose_nothing_acknowledged() {
    let env = Env::new();
    let trials: u64 = std::env::var("PRODIGY_TORTURE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(30, |n: u64| n / 5);
    for trial in 0..trials {
        let job = format!("crash-{trial}");
        let ack = env.dir.path().join(format!("ack-{trial}"));
        // Two appenders on one job, killed together.
        let mut children: Vec<_> = (0..2)
            .map(|w| {
                worker::spawn(
                    "events-crash",
                    &env.home(),
                    &ack.with_extension(w.to_string()),
                    &[("PRODIGY_IT_JOB", job.clone())],
                )
            })
            .collect();
        std::thread::sleep(Duration::from_millis(5 + (trial * 7919) % 60));
        for c in &mut children {
            c.kill().unwrap();
        }
        for c in &mut children {
            c.wait().unwrap();
        }
        let exists = prodigy::events::EventLog::new(env.store(), "api", &job)
            .unwrap()
            .exists()
            .unwrap();
        let records = if exists {
            all_records(&env, "api", &job)
        } else {
            Vec::new()
        };
        for w in 0..2 {
            let text =
                std::fs::read_to_string(ack.with_extension(w.to_string())).unwrap_or_default();
            let mut lines = text.lines();
            let Some(writer) = lines.next().and_then(|l| l.strip_prefix("writer ")) else {
                continue;
            };
            let Some(last) = lines.filter_map(|l| l.parse::<u64>().ok()).next_back() else {
                continue;
            };
            let seqs: Vec<u64> = records
                .iter()
                .filter(|r| r.writer == writer)
                .map(|r| r.seq)
                .collect();
            assert!(
                seqs.len() as u64 > last,
                "trial {trial}: acknowledged seq {last} of {writer} lost ({} present)",
                seqs.len()
            );
            assert_eq!(
                seqs,
                (0..seqs.len() as u64).collect::<Vec<_>>(),
                "trial {trial}: seq out of order"
            );
        }
    }
    let out = env.run(&["fsck"], b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("error "), "{stdout}");
}

/// The input files of `writers` writers (`w0`, `w1`, …), each `chunks` files of `per` full
/// records: writer w's record seq s is stamped `base + (s * writers + w)` µs, so the
/// writers interleave in time and no two records share a timestamp.
pub fn writer_inputs(dir: &std::path::Path, writers: usize, chunks: usize, per: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let base = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    for w in 0..writers {
        for c in 0..chunks {
            let mut text = String::new();
            for n in 0..per {
                let seq = (c * per + n) as i64;
                let ts = base + jiff::SignedDuration::from_micros(seq * writers as i64 + w as i64);
                text.push_str(
                    &serde_json::json!({
                        "v": 1,
                        "id": format!("w{w}-{seq}"),
                        "timestamp": prodigy::events::record::format_timestamp(ts),
                        "writer": format!("w{w}"),
                        "seq": seq,
                        "event": {"event_type": "agent_progress", "agent_id": format!("a{w}"), "item_id": format!("i{seq}")},
                        "metadata": {},
                    })
                    .to_string(),
                );
                text.push('\n');
            }
            std::fs::write(dir.join(format!("w{w}-{c:03}.jsonl")), text).unwrap();
        }
    }
}

/// Runs `writers` processes at once, each a shell loop appending its files in order with
/// one `events append` call each, in the environment of `base` (the home, a remote
/// store's configuration); waits for all and checks each acknowledged its `chunks` files.
pub fn run_writers(
    base: &std::process::Command,
    dir: &std::path::Path,
    (writers, chunks): (usize, usize),
    job: &str,
    repo: &str,
) {
    let bin = assert_cmd::cargo::cargo_bin("prodigy");
    let children: Vec<_> = (0..writers)
        .map(|w| {
            let script = format!(
                "for f in {dir}/w{w}-*.jsonl; do \"$PRODIGY\" events append --repo {repo} --job {job} \"$f\" >/dev/null || exit 1; echo \"$f\"; done",
                dir = dir.display()
            );
            let mut sh = std::process::Command::new("sh");
            sh.args(["-c", &script]);
            for (k, v) in base.get_envs() {
                if let Some(v) = v {
                    sh.env(k, v);
                }
            }
            sh.env("PRODIGY", &bin)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", crate::common::transcript(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), chunks);
    }
}

/// What the writers' records must look like read back: each present once, each writer's
/// in seq order, and the whole in (timestamp, writer, seq) order, which the stamps make
/// one order (the writers interleave).
pub fn check_merged(records: &[EventRecord], writers: usize, each: usize) {
    assert_eq!(records.len(), writers * each, "records present");
    let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), writers * each, "a record twice");
    let mut by_writer: HashMap<&str, Vec<u64>> = HashMap::new();
    for r in records {
        by_writer.entry(r.writer.as_str()).or_default().push(r.seq);
    }
    for (w, seqs) in &by_writer {
        assert_eq!(*seqs, (0..each as u64).collect::<Vec<_>>(), "writer {w}");
    }
    let keys: Vec<(&str, &str, u64)> = records
        .iter()
        .map(|r| (r.timestamp.as_str(), r.writer.as_str(), r.seq))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert!(
        keys == sorted,
        "not merged in (timestamp, writer, seq) order"
    );
}

/// Eight `events append` processes on one job, each a writer streaming its records in 10
/// calls: every record is there once, in order per writer, merged in one stable order; each
/// writer has its own ref; a retried call adds nothing, and one that changed a stored
/// record is refused whole.
#[test]
fn eight_writers_append_to_their_own_refs_and_read_back_merged() {
    let env = Env::new();
    let (writers, chunks, per) = (8, 10, 50);
    let inputs = env.dir.path().join("inputs");
    writer_inputs(&inputs, writers, chunks, per);
    run_writers(&env.std_cmd(), &inputs, (writers, chunks), "j", "api");
    let records = all_records(&env, "api", "j");
    check_merged(&records, writers, chunks * per);
    // Stable: read again, and through the command, the same order.
    assert_eq!(all_records(&env, "api", "j"), records);
    let shown = env.ok(&["events", "show", "j", "--repo", "api", "--json"], b"");
    let ids: Vec<String> = shown
        .lines()
        .map(|l| serde_json::from_str::<EventRecord>(l).unwrap().id)
        .collect();
    assert_eq!(
        ids,
        records.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    // One ref per writer, none for the job itself.
    let refs = env.ok(&["ref", "list", "events/api/j"], b"");
    assert_eq!(refs.lines().count(), writers, "{refs}");
    assert!(
        refs.lines().all(|l| l.contains(" events/api/j/w")),
        "{refs}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&env.ok(&["events", "stats", "j", "--repo", "api", "--json"], b""))
            .unwrap();
    assert_eq!(
        stats["total"]["count"],
        (writers * chunks * per) as u64,
        "{stats}"
    );
    // A retried call: nothing added.
    let file = inputs.join("w3-004.jsonl");
    let out = env.run(
        &[
            "events",
            "append",
            "--repo",
            "api",
            "--job",
            "j",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", crate::common::transcript(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("skipped {per}")),
        "{}",
        crate::common::transcript(&out)
    );
    // A call with a new record of w1 and a changed stored one of w2: refused, nothing of
    // it appended (w1's new record neither).
    let mut changed = std::fs::read_to_string(inputs.join("w2-000.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .replace("agent_progress", "agent_failed");
    changed.push('\n');
    let fresh = std::fs::read_to_string(inputs.join("w1-000.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .replace("\"seq\":0", "\"seq\":500")
        .replace("\"w1-0\"", "\"w1-500\"");
    let out = env.run(
        &["events", "append", "--repo", "api", "--job", "j"],
        format!("{fresh}\n{changed}").as_bytes(),
    );
    crate::common::assert_one_line_error(&out, 1);
    assert_eq!(all_records(&env, "api", "j"), records);
}
