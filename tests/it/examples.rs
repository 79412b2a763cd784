//! Every workflow in `examples/` runs as it is, in a scratch repository, and does what its
//! comment says (`examples/file-stats.yml` is run by `runner::the_readme_example_runs`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{Env, git, init_repo, transcript};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// `prodigy args…` in `repo`, with extra variables; must succeed; stdout.
fn ok_in(env: &Env, repo: &Path, vars: &[(&str, &str)], args: &[&str]) -> String {
    let out = env
        .cmd()
        .current_dir(repo)
        .envs(vars.iter().copied())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", transcript(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs an example in `repo`; its job id.
fn run_example(env: &Env, repo: &Path, name: &str) -> String {
    let out = ok_in(env, repo, &[], &["run", example(name).to_str().unwrap()]);
    out.trim().to_owned()
}

fn job_show(env: &Env, repo: &Path, job: &str) -> Value {
    serde_json::from_str(&ok_in(env, repo, &[], &["jobs", "show", job, "--json"])).unwrap()
}

#[test]
fn every_example_is_run_by_a_test() {
    let mut found: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yml"))
            .collect();
    found.sort();
    assert_eq!(
        found,
        ["dlq-retry.yml", "file-stats.yml", "quick-start.yml"]
    );
}

#[test]
fn the_quick_start_example_runs() {
    let env = Env::new();
    let repo = init_repo(env.scratch().join("proj"));
    let job = run_example(&env, &repo, "quick-start.yml");
    let job = job.as_str();
    let show = job_show(&env, &repo, job);
    assert_eq!(
        (show["phase"].as_str(), show["done"].as_u64()),
        (Some("complete"), Some(3)),
        "{show}"
    );
    let stats = ok_in(&env, &repo, &[], &["events", "stats", job]);
    assert!(
        stats
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["agent_completed", "3"])),
        "{stats}"
    );
}

#[test]
fn the_dlq_example_fails_two_items_then_retries_them() {
    let env = Env::new();
    let repo = init_repo(env.scratch().join("proj"));
    // Items left in the queue: exit 3.
    let out = env
        .cmd()
        .current_dir(&repo)
        .args(["run", example("dlq-retry.yml").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    let job = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let job = job.as_str();
    let show = job_show(&env, &repo, job);
    assert_eq!(
        (show["done"].as_u64(), show["failed"].as_u64()),
        (Some(4), Some(2)),
        "{show}"
    );
    let queued = ok_in(&env, &repo, &[], &["dlq", "list", job]);
    assert_eq!(queued.lines().count(), 3, "{queued}");
    assert!(queued.contains("the input is not ready"), "{queued}");
    let analyze = ok_in(&env, &repo, &[], &["dlq", "analyze", job]);
    assert!(analyze.contains("2 items"), "{analyze}");
    let retried = ok_in(&env, &repo, &[("FIXED", "1")], &["dlq", "retry", job]);
    assert_eq!(
        retried.lines().filter(|l| l.starts_with("ok")).count(),
        2,
        "{retried}"
    );
    // The queue is empty (the note saying so goes to stderr).
    let empty = ok_in(&env, &repo, &[], &["dlq", "list", job]);
    assert!(empty.is_empty(), "{empty}");
    // Every item's commit is on the job's branch.
    let out = std::process::Command::new("git")
        .args(["ls-tree", "--name-only", &format!("prodigy/{job}")])
        .current_dir(&repo)
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&out.stdout);
    for n in 1..=6 {
        assert!(files.contains(&format!("done-{n}.txt")), "{files}");
    }
    git(&repo, &["merge", "-q", &format!("prodigy/{job}")]);
    assert!(repo.join("done-6.txt").is_file());
}
