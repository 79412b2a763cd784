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
