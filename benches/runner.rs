//! The runner's costs (issue 5), on the real binary and a real git repository:
//!
//! 1. orchestration overhead per item: a 1,000-item job whose agents run `true` with
//!    `max_parallel` 8 (worktree create + remove, supervised step, events, checkpoints),
//!    beside git alone doing one `worktree add` + `remove` per item;
//! 2. resume of a 10,000-item job with 9,000 items done: the time from starting
//!    `prodigy resume` to its first agent's step;
//! 3. checkpoint growth: bytes stored per finished item, checkpointing after every item,
//!    for jobs of 1,000 and 10,000 items, beside a checkpoint that copies every result.
//!
//! `cargo bench --bench runner`; knobs: ITEMS (1000), PARALLEL (8), RUNS (3),
//! RESUME_ITEMS (10000), RESUME_DONE (9000).

#![allow(clippy::print_stdout)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use prodigy::home::Home;
use prodigy::lock::LockOptions;
use prodigy::state::{ItemResult, ItemStatus, JobSpec, JobStateManager, Phase, item_key};
use prodigy::store::refs::RefStore;
use serde_json::Value;
use support::{env_number, git, median, scratch_dir};

const EXE: &str = env!("CARGO_BIN_EXE_prodigy");

/// A repository of 20 small files, like a small project.
fn repo(root: &Path) -> PathBuf {
    let dir = root.join("repo");
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    for i in 0..20 {
        std::fs::write(dir.join(format!("file{i}.txt")), format!("{i}\n")).unwrap();
    }
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "init"]);
    dir
}

fn overhead() {
    let items = env_number("ITEMS", 1000);
    let parallel = env_number("PARALLEL", 8);
    let runs = env_number("RUNS", 3) as usize;
    let scratch = scratch_dir("prodigy-bench-runner-");
    let repo = repo(scratch.path());
    let workflow = scratch.path().join("w.yml");
    std::fs::write(
        &workflow,
        format!(
            "name: bench\nmap:\n  input: seq 1 {items}\n  max_parallel: {parallel}\n  agent_template:\n    - shell: \"true\"\n"
        ),
    )
    .unwrap();
    let mut ours = Vec::new();
    for run in 0..runs {
        let home = scratch.path().join(format!("home{run}"));
        let start = Instant::now();
        let out = Command::new(EXE)
            .current_dir(&repo)
            .args([
                "run",
                &workflow.to_string_lossy(),
                "--job-id",
                &format!("b{run}"),
            ])
            .env("PRODIGY_HOME", &home)
            .output()
            .unwrap();
        ours.push(start.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Git alone: the same worktrees made and removed one after another, no step.
    let mut bare = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        for i in 0..items {
            let wt = scratch.path().join(format!("wt{i}"));
            git(
                &repo,
                &[
                    "worktree",
                    "add",
                    "-q",
                    "--detach",
                    &wt.to_string_lossy(),
                    "HEAD",
                ],
            );
            git(
                &repo,
                &["worktree", "remove", "--force", &wt.to_string_lossy()],
            );
        }
        bare.push(start.elapsed());
    }
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / items as f64;
    let (ours, bare) = (median(ours), median(bare));
    println!(
        "runner: {items} items of `true`, max_parallel {parallel}: {:.2} s, {:.1} ms per item (budget 30 ms)",
        ours.as_secs_f64(),
        per(ours)
    );
    println!(
        "git alone, worktree add + remove per item, one at a time: {:.2} s, {:.1} ms per item",
        bare.as_secs_f64(),
        per(bare)
    );
}

fn spec(repo_root: &Path, home: &Path, repo_name: &str, job: &str, source: &str) -> JobSpec {
    let dir = home.join("worktrees").join(repo_name).join(job);
    JobSpec {
        target_branch: None,
        id: job.into(),
        repo: repo_name.into(),
        repo_root: repo_root.to_owned(),
        workflow_path: repo_root.join("w.yml"),
        workflow: Value::Null,
        base_commit: git(repo_root, &["rev-parse", "HEAD"]),
        branch: format!("prodigy/{job}"),
        worktree: dir.join("parent"),
        agents_dir: dir,
        env: BTreeMap::new(),
        started: prodigy::events::record::now_timestamp(),
        workflow_source: source.into(),
        imported_from: None,
    }
}

fn result(index: usize) -> ItemResult {
    ItemResult {
        index,
        status: ItemStatus::Done,
        agent_id: format!("agent-{index}"),
        attempts: 1,
        duration_ms: 12,
        commits: Vec::new(),
        merged: false,
        output: None,
        error: None,
    }
}

fn resume() {
    let items = env_number("RESUME_ITEMS", 10_000) as usize;
    let done = env_number("RESUME_DONE", 9_000) as usize;
    let runs = env_number("RUNS", 3) as usize;
    let scratch = scratch_dir("prodigy-bench-resume-");
    let repo = repo(scratch.path());
    let home_dir = scratch.path().join("home");
    let home = Home::at(&home_dir).unwrap();
    let repo_name = prodigy::repo::resolve_repo_name(&home, &repo).unwrap();
    let marker = scratch.path().join("first-agent");
    let source = format!(
        "name: resume\nmap:\n  input: seq 1 {items}\n  max_parallel: 8\n  agent_template:\n    - shell: date +%s%N >> {}; sleep 30\n",
        marker.display()
    );
    let states =
        JobStateManager::new(RefStore::new(&home, LockOptions::default()), &repo_name).unwrap();
    let mut state = states
        .create(spec(&repo, &home_dir, &repo_name, "r", &source))
        .unwrap();
    let work: Vec<Value> = (1..=items).map(|i| Value::String(i.to_string())).collect();
    state.checkpoint.items = Some(states.store_items(&work).unwrap());
    state.checkpoint.counters.total = items;
    state.checkpoint.map_base = Some(state.spec.base_commit.clone());
    state.checkpoint.phase = Phase::Map;
    states.save(&mut state, "phase map").unwrap();
    // Finished items arrive a few at a time, as under load (coalesced checkpoints).
    for (i, item) in work.iter().enumerate().take(done) {
        state.record(&item_key(i, item), result(i));
        if i % 10 == 9 {
            states.save(&mut state, "items finished").unwrap();
        }
    }
    states.save(&mut state, "items finished").unwrap();
    let chain = states.history("r").unwrap().len();
    let mut times = Vec::new();
    for _ in 0..runs {
        let _ = std::fs::remove_file(&marker);
        let start = Instant::now();
        let mut child = Command::new(EXE)
            .current_dir(&repo)
            .args(["resume", "r"])
            .env("PRODIGY_HOME", &home_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        while !marker.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no agent started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(start.elapsed());
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let _ = child.wait();
    }
    println!(
        "resume: {items} items, {done} done ({chain} checkpoints): first agent after {:.0} ms (budget 1 s)",
        median(times).as_secs_f64() * 1000.0
    );
}

fn dir_bytes(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .map(|p| p.metadata().map_or(0, |m| m.len()))
        .sum()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn growth() {
    for items in [1_000usize, 10_000] {
        let scratch = scratch_dir("prodigy-bench-growth-");
        let home_dir = scratch.path().join("home");
        let home = Home::at(&home_dir).unwrap();
        let states =
            JobStateManager::new(RefStore::new(&home, LockOptions::default()), "g").unwrap();
        let repo_root = scratch.path().to_owned();
        let mut s = JobSpec {
            target_branch: None,
            base_commit: "0".repeat(40),
            ..spec_fixed(&repo_root, &home_dir)
        };
        s.id = "g".into();
        let mut state = states.create(s).unwrap();
        let work: Vec<Value> = (0..items)
            .map(|i| serde_json::json!({"path": format!("src/file{i}.rs"), "size": i}))
            .collect();
        state.checkpoint.items = Some(states.store_items(&work).unwrap());
        state.checkpoint.counters.total = items;
        state.checkpoint.phase = Phase::Map;
        states.save(&mut state, "phase map").unwrap();
        let before = dir_bytes(&home_dir.join("objects"));
        let start = Instant::now();
        for (i, item) in work.iter().enumerate() {
            state.record(&item_key(i, item), result(i));
            states.save(&mut state, "item finished").unwrap();
        }
        let elapsed = start.elapsed();
        let added = dir_bytes(&home_dir.join("objects")) - before;
        // The original's way: every checkpoint holds every result so far (and the input).
        let full = {
            let mut all = BTreeMap::new();
            for (i, item) in work.iter().enumerate() {
                all.insert(item_key(i, item), result(i));
            }
            let bytes = serde_json::to_vec(&all).unwrap();
            zstd::bulk::compress(&bytes, 1).unwrap().len() as u64
        };
        println!(
            "checkpoints: {items} items, one checkpoint per finished item: {:.0} bytes stored per item ({:.2} ms per checkpoint); a checkpoint copying every result would end at {} bytes each ({:.0} bytes per item over the job)",
            added as f64 / items as f64,
            elapsed.as_secs_f64() * 1000.0 / items as f64,
            full,
            full as f64 / 2.0,
        );
    }
}

fn spec_fixed(repo_root: &Path, home: &Path) -> JobSpec {
    JobSpec {
        target_branch: None,
        id: "g".into(),
        repo: "g".into(),
        repo_root: repo_root.to_owned(),
        workflow_path: repo_root.join("w.yml"),
        workflow: Value::Null,
        base_commit: String::new(),
        branch: "prodigy/g".into(),
        worktree: home.join("worktrees/g/g/parent"),
        agents_dir: home.join("worktrees/g/g"),
        env: BTreeMap::new(),
        started: prodigy::events::record::now_timestamp(),
        workflow_source: String::new(),
        imported_from: None,
    }
}

fn main() {
    let which = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let all = which.is_none();
    let want = |name: &str| all || which.as_deref() == Some(name);
    if want("growth") {
        growth();
    }
    if want("resume") {
        resume();
    }
    if want("overhead") {
        overhead();
    }
}
