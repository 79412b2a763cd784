//! The MapReduce runner end to end: real git repositories and worktrees, real processes,
//! SIGKILL of the runner's process group at each phase, `resume` from refs alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Env, IDENTITY, Rng, env_knob, git, init_repo, snapshot, transcript};

/// Asserts exit `code` with exactly one `error:` line (the runner's progress notes may
/// precede it); returns stderr.
pub(crate) fn assert_one_line_error(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{}", transcript(out));
    let errors = stderr.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(errors, 1, "{stderr}");
    // Nothing but hints after it: the error is one line.
    let after: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("error:"))
        .skip(1)
        .filter(|l| !l.starts_with("hint:"))
        .collect();
    assert!(after.is_empty(), "{stderr}");
    assert!(stderr.lines().all(|l| !l.contains("panicked")), "{stderr}");
    stderr
}

/// A repository with one commit, in the env's scratch dir.
fn repo(env: &Env, name: &str) -> PathBuf {
    init_repo(env.scratch().join(name))
}

/// A repository and a directory for marks outside it.
pub(crate) fn repo_and_marks(env: &Env, name: &str) -> (PathBuf, PathBuf) {
    let marks = env.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    (repo(env, name), marks)
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

pub(crate) fn in_repo(env: &Env, repo: &Path, args: &[&str]) -> Output {
    env.cmd().current_dir(repo).args(args).output().unwrap()
}

pub(crate) fn ok_in(env: &Env, repo: &Path, args: &[&str]) -> String {
    let out = in_repo(env, repo, args);
    assert!(out.status.success(), "{args:?}: {}", transcript(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `prodigy args…` in `repo` for a job that ends with failed items: exit 3; stdout.
pub(crate) fn with_failures(env: &Env, repo: &Path, args: &[&str]) -> String {
    let out = in_repo(env, repo, args);
    assert_eq!(out.status.code(), Some(3), "{args:?}: {}", transcript(&out));
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn json_in(env: &Env, repo: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok_in(env, repo, args)).unwrap()
}

/// Starts `prodigy args…` in `repo` as the leader of a new process group.
pub(crate) fn spawn_in(env: &Env, repo: &Path, args: &[&str]) -> Child {
    let mut cmd = env.std_cmd();
    cmd.current_dir(repo)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().unwrap()
}

/// SIGKILL to the whole process group led by `child`.
pub(crate) fn kill_group(child: &mut Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = child.wait();
}

pub(crate) fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

pub(crate) fn job_show(env: &Env, repo: &Path, job: &str) -> Value {
    json_in(env, repo, &["jobs", "show", job, "--json", "--limit", "0"])
}

fn worktrees(repo: &Path) -> Vec<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["worktree", "list", "--porcelain"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("worktree ").map(str::to_owned))
        .collect()
}

fn assert_fsck_clean(env: &Env) {
    let out = env.run(&["fsck"], b"");
    assert!(out.status.success(), "{}", transcript(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.lines().any(|l| l.starts_with("warning")),
        "{stderr}"
    );
}

#[test]
fn runs_a_workflow_end_to_end() {
    let env = Env::new();
    let repo = repo(&env, "api");
    let items = r#"{"files": [{"name": "a", "n": 3}, {"name": "b", "n": 1}, {"name": "c", "n": 5}, {"name": "d", "n": 0}]}"#;
    write(&repo, "items.json", items);
    write(
        &repo,
        "w.yml",
        &format!(
            "name: demo
mode: mapreduce
{IDENTITY}  WHO: world
setup:
  - shell: echo setup-${{workflow.name}}-${{job.id}} > setup.txt
map:
  input: items.json
  json_path: \"$.files[*]\"
  filter: \"n >= 1\"
  sort_by: n DESC
  max_parallel: 2
  agent_template:
    - shell: printf '%s\\n' '${{item.name}}' > out-${{item.name}}.txt && git add . && git commit -qm ${{item_id}}
    - shell: echo ${{item_index}}:${{item.name}}:${{env.WHO}}
      capture_output: true
reduce:
  - shell: echo \"${{map.successful}}/${{map.total}} failed=${{map.failed}}\" > totals.txt
  - shell: printf '%s' '${{map.results_json}}' > results.json
  - shell: cmp results.json \"$PRODIGY_MAP_RESULTS\"
"
        ),
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "workflow"]);
    let run = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "j1"]);
    assert!(run.status.success(), "{}", transcript(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "j1\n");
    // The user is told which branch holds the result and how to merge it; doing so
    // brings the agents' and reduce's files into the repository.
    let stderr = String::from_utf8_lossy(&run.stderr);
    let hint = stderr
        .lines()
        .find(|l| l.starts_with("hint: to bring the result into your branch"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let command = hint.split('`').nth(1).unwrap();
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    assert_eq!(args, ["merge", "prodigy/j1"], "{hint}");
    let show = job_show(&env, &repo, "j1");
    assert_eq!(show["phase"], "complete");
    assert_eq!(show["done"], 3);
    assert_eq!(show["failed"], 0);
    let parent = PathBuf::from(show["worktree"].as_str().unwrap());
    assert!(parent.starts_with(env.home().join("worktrees/api/j1")));
    // Every agent's commit is merged into the job's worktree, where reduce ran.
    for name in ["a", "b", "c"] {
        assert_eq!(
            std::fs::read_to_string(parent.join(format!("out-{name}.txt"))).unwrap(),
            format!("{name}\n")
        );
    }
    assert!(!parent.join("out-d.txt").exists(), "filtered out");
    git(&repo, &["merge", "-q", "--no-edit", "prodigy/j1"]);
    for name in ["out-a.txt", "out-b.txt", "out-c.txt"] {
        assert!(
            repo.join(name).exists(),
            "{name} not merged into the repository"
        );
    }
    assert_eq!(
        std::fs::read_to_string(parent.join("totals.txt")).unwrap(),
        "3/3 failed=0\n"
    );
    assert_eq!(
        std::fs::read_to_string(parent.join("setup.txt")).unwrap(),
        "setup-demo-j1\n"
    );
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(parent.join("results.json")).unwrap())
            .unwrap();
    let outputs: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["output"].as_str().unwrap())
        .collect();
    // Sorted by n descending: c (5), a (3), b (1).
    assert_eq!(outputs, ["0:c:world", "1:a:world", "2:b:world"]);
    // Agents' worktrees are gone; the job's stays; nothing was written into the repository.
    assert_eq!(worktrees(&repo).len(), 2, "{:?}", worktrees(&repo));
    assert!(!repo.join(".prodigy").exists());
    let stats = json_in(&env, &repo, &["events", "stats", "j1", "--json"]);
    let types = &stats["total"]["types"];
    for (t, n) in [
        ("agent_started", 3),
        ("agent_completed", 3),
        ("worktree_cleaned", 3),
        ("worktree_merged", 3),
        ("job_started", 1),
        ("job_completed", 1),
    ] {
        assert_eq!(types[t], n, "{t}: {stats}");
    }
    assert!(types["checkpoint_created"].as_u64().unwrap() >= 3);
    let list = json_in(&env, &repo, &["jobs", "--json"]);
    assert_eq!(list[0]["job"], "j1");
    assert_eq!(list[0]["status"], "complete");
    // From anywhere, with every repository.
    let all: Value = serde_json::from_slice(
        &env.cmd()
            .args(["jobs", "--all-repos", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        (all[0]["repo"].as_str(), all[0]["job"].as_str()),
        (Some("api"), Some("j1"))
    );
    let table = ok_in(&env, &repo, &["jobs"]);
    assert!(table.starts_with("JOB "), "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("j1 "), "{table}");
    let shown = ok_in(&env, &repo, &["jobs", "show", "j1"]);
    assert!(shown.contains("phase:      complete"), "{shown}");
    // A finished job has nothing to resume (and says so); its id cannot be reused.
    let again = in_repo(&env, &repo, &["resume", "j1"]);
    assert!(again.status.success(), "{}", transcript(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("job j1 was already complete"));
    let again = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "j1"]);
    let err = assert_one_line_error(&again, 1);
    assert!(err.contains("already exists"), "{err}");
    assert_fsck_clean(&env);
}

/// The workflow of the crash test: item n fails while `fail-<n>` exists outside the
/// repository; every finished agent appends a line to its counter.
fn counting_workflow(repo: &Path, marks: &Path, items: usize, agent_sleep: &str) {
    let m = marks.display();
    write(
        repo,
        "w.yml",
        &format!(
            "name: count
{IDENTITY}map:
  input: seq 1 {items}
  max_parallel: 4
  agent_template:
    - shell: sleep {agent_sleep}; test ! -e {m}/fail-${{item}}
    - shell: echo ${{item}} > f-${{item}}.txt && git add . && git commit -qm 'item ${{item}}' && date +%s%N >> {m}/count-${{item}}
reduce:
  - shell: ls f-*.txt | wc -l > n.txt && echo \"${{map.successful}} ${{map.failed}} ${{map.total}}\" >> {m}/reduce
error_policy:
  on_item_failure: dlq
"
        ),
    );
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", "workflow"]);
}

fn done_keys(env: &Env, repo_name: &str, job: &str) -> Vec<String> {
    let states = prodigy::state::JobStateManager::new(env.store(), repo_name).unwrap();
    let state = states.load(job).unwrap();
    state
        .results
        .iter()
        .filter(|(_, r)| r.status == prodigy::state::ItemStatus::Done)
        .map(|(k, _)| k.clone())
        .collect()
}

fn key_of(n: usize) -> String {
    prodigy::state::item_key(n - 1, &Value::String(n.to_string()))
}

#[test]
fn sigkill_mid_map_delete_worktrees_resume_and_retry() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "svc");
    let failing = [7, 17, 27, 37];
    for n in failing {
        write(&marks, &format!("fail-{n}"), "");
    }
    counting_workflow(&repo, &marks, 40, "0.2");
    let mut child = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", "c1"]);
    // Ten agents ran, and five are recorded done: under load the checkpoint lags the
    // agents' commands (a CI run beside another build saw ten run and four recorded).
    let recorded = || {
        prodigy::state::JobStateManager::new(env.store(), "svc")
            .ok()
            .and_then(|states| states.load("c1").ok())
            .map_or(0, |state| {
                state
                    .results
                    .values()
                    .filter(|r| r.status == prodigy::state::ItemStatus::Done)
                    .count()
            })
    };
    wait_for(
        "ten finished agents, five recorded",
        Duration::from_secs(60),
        || {
            (1..=40)
                .filter(|n| marks.join(format!("count-{n}")).exists())
                .count()
                >= 10
                && recorded() >= 5
        },
    );
    // Not at the very moment an agent's last command ran (which no runner can tell from
    // "about to run"), but while others are mid-step.
    std::thread::sleep(Duration::from_millis(90));
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    kill_group(&mut child);
    // What the checkpoint says was done before the crash never runs again.
    let before = done_keys(&env, "svc", "c1");
    assert!(before.len() >= 5, "{before:?}");
    assert!(before.len() < 40);
    // Every worktree goes, the job's own too.
    std::fs::remove_dir_all(env.home().join("worktrees")).unwrap();
    let out = with_failures(&env, &repo, &["resume", "c1"]);
    assert_eq!(out, "c1\n");
    let show = job_show(&env, &repo, "c1");
    assert_eq!(show["phase"], "complete", "{show}");
    let dlq = ok_in(&env, &repo, &["dlq", "list", "c1"]);
    assert_eq!(show["done"], 36, "{dlq}");
    assert_eq!(show["failed"], 4);
    for n in 1..=40 {
        let count = lines(&marks.join(format!("count-{n}")));
        if failing.contains(&n) {
            assert_eq!(count, 0, "item {n}");
        } else if count != 1 {
            // Done before the crash, or finished but not yet recorded (adopted from its
            // done marker): never run again — unless the kill came while the agent's last
            // command had just run and the agent was still ending (no runner can tell that
            // from "about to run"). The counter lines are times: allow only that.
            let text = std::fs::read_to_string(marks.join(format!("count-{n}"))).unwrap();
            let first: u128 = text.lines().next().unwrap().trim().parse().unwrap();
            assert_eq!(count, 2, "item {n} ran {count} times");
            assert!(
                !before.contains(&key_of(n)),
                "item {n} was recorded done, yet ran again"
            );
            assert!(
                killed_at.saturating_sub(first) < 200_000_000,
                "item {n} had finished {} ms before the kill, yet ran again",
                killed_at.saturating_sub(first) / 1_000_000
            );
        }
    }
    // Reduce ran once, with the right totals, in the recreated job worktree.
    assert_eq!(
        std::fs::read_to_string(marks.join("reduce")).unwrap(),
        "36 4 40\n"
    );
    let parent = PathBuf::from(show["worktree"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(parent.join("n.txt"))
            .unwrap()
            .trim(),
        "36"
    );
    // The DLQ holds exactly the failing items.
    let dlq = json_in(&env, &repo, &["dlq", "list", "c1", "--json"]);
    let mut in_dlq: Vec<String> = dlq
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_id"].as_str().unwrap().to_owned())
        .collect();
    in_dlq.sort();
    let mut want: Vec<String> = failing.iter().map(|n| key_of(*n)).collect();
    want.sort();
    assert_eq!(in_dlq, want);
    let item = json_in(
        &env,
        &repo,
        &["dlq", "inspect", &want[0], "--job", "c1", "--json"],
    );
    let failure = &item["failure_history"][0];
    assert_eq!(failure["exit_code"], 1, "{item}");
    assert!(failure["log_location"].as_str().unwrap().ends_with(".log"));
    assert!(failure["step"].as_str().unwrap().starts_with("line "));
    // Fix the cause; retry empties the queue and merges the new work.
    for n in failing {
        std::fs::remove_file(marks.join(format!("fail-{n}"))).unwrap();
    }
    let out = ok_in(&env, &repo, &["dlq", "retry", "c1", "--parallel", "2"]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok")).count(),
        4,
        "{out}"
    );
    let dlq = json_in(&env, &repo, &["dlq", "list", "c1", "--json"]);
    assert_eq!(dlq.as_array().unwrap().len(), 0);
    for n in failing {
        assert_eq!(lines(&marks.join(format!("count-{n}"))), 1);
        assert!(parent.join(format!("f-{n}.txt")).exists());
    }
    let show = job_show(&env, &repo, "c1");
    assert_eq!(show["done"], 40);
    let stats = json_in(&env, &repo, &["events", "stats", "c1", "--json"]);
    assert_eq!(stats["total"]["types"]["dlq_item_removed"], 4, "{stats}");
    assert_eq!(stats["total"]["types"]["job_resumed"], 1);
    // No agent survived the runner's death: nothing of ours is still running.
    assert_eq!(worktrees(&repo).len(), 2, "{:?}", worktrees(&repo));
    assert_fsck_clean(&env);
}

/// Issue 25's scenario: 40 items, 4 agents, SIGKILL of the runner's process group once
/// some items started, every worktree deleted and pruned, resume. An item whose
/// `agent_completed` event was in the store when the runner died never runs again (the log
/// is the durable record; the done markers went with the worktrees), whether its agent
/// committed (odd items: the commit is merged once) or not (even items).
///
/// A completion is durable in the log a moment before the checkpoint records it (the
/// runner flushes its events, then writes the checkpoint). To kill inside that moment for
/// certain, the test freezes the process group (SIGSTOP), reads the store, and kills it
/// when the log holds a completion the checkpoint lacks, else lets it go on (SIGCONT) and
/// looks again; at least one trial must have killed it there. The suite runs 3 trials,
/// `PRODIGY_RUNNER_TRIALS=N` more.
/// Agents share a worker's worktree one after another: each must start from exactly the
/// map's base, whatever the one before it left (edits, untracked and ignored files, new
/// directories, commits), and a worktree git cannot reset safely (a branch checked out,
/// a bisect in progress) is made again, its branch untouched.
#[test]
fn each_agent_starts_from_the_base_whatever_the_agent_before_it_left() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "slots");
    let m = marks.display();
    write(&repo, "t.txt", "base\n");
    write(&repo, ".gitignore", "build/\n");
    write(
        &repo,
        "w.yml",
        &format!(
            "name: slots
{IDENTITY}map:
  input: seq 1 6
  max_parallel: 1
  agent_template:
    - shell: test -z \"$(git status --porcelain --ignored)\" && test \"$(git rev-parse HEAD)\" = \"$(git rev-parse base)\" && test \"$(git rev-parse --abbrev-ref HEAD)\" = HEAD && echo ${{item}} >> {m}/clean
    - shell: |
        echo dirty > t.txt; echo u > untracked.txt; mkdir -p build new/sub && echo o > build/out && echo n > new/sub/f
        case ${{item}} in
          2) git checkout -q -b side && git commit -qam side ;;
          3) git bisect start ;;
          4) echo c > c.txt && git add c.txt && git commit -qm c ;;
        esac
"
        ),
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "workflow"]);
    git(&repo, &["tag", "base"]);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "s1"]);
    assert!(out.status.success(), "{}", transcript(&out));
    // Every agent found the base, clean: items 2 to 6 after an agent that left a mess.
    assert_eq!(
        std::fs::read_to_string(marks.join("clean")).unwrap(),
        "1\n2\n3\n4\n5\n6\n"
    );
    // The branch an agent made is where it left it.
    assert_eq!(
        git_out(&repo, &["log", "-1", "--format=%s", "side"]),
        "side"
    );
    assert_eq!(
        git_out(&repo, &["rev-parse", "side~1"]),
        git_out(&repo, &["rev-parse", "base"])
    );
    // The commits were merged; the workers' worktrees are gone.
    assert_eq!(git_out(&repo, &["show", "prodigy/s1:c.txt"]), "c");
    assert_eq!(worktrees(&repo).len(), 2, "{:?}", worktrees(&repo));
    assert_fsck_clean(&env);
}

/// A worker keeps its worktree from one agent to the next (the same directory: inode and
/// birth time), also when the home is reached through a symlink (git records the real
/// path), and each agent still finds it at the base.
#[test]
fn a_worker_keeps_its_worktree_also_through_a_symlinked_home() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "kept");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            "name: kept
map:
  input: seq 1 4
  max_parallel: 1
  agent_template:
    - shell: test -z \"$(git status --porcelain --ignored)\" && stat -c '%i %.9W' . >> {m}/dirs && touch scratch-${{item}}
"
        ),
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "workflow"]);
    let link = env.scratch().join("home-link");
    std::fs::create_dir_all(env.home()).unwrap();
    std::os::unix::fs::symlink(env.home(), &link).unwrap();
    let out = env
        .std_cmd()
        .env("PRODIGY_HOME", &link)
        .current_dir(&repo)
        .args(["run", "w.yml", "--job-id", "k2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", transcript(&out));
    let dirs = std::fs::read_to_string(marks.join("dirs")).unwrap();
    let distinct: std::collections::BTreeSet<&str> = dirs.lines().collect();
    assert_eq!((dirs.lines().count(), distinct.len()), (4, 1), "{dirs}");
}

/// A worker's worktree that neither git nor a recursive delete can remove (an agent left
/// an immutable file in it) is set aside: the worker's next agents still get a fresh
/// worktree at the same path, and the job finishes.
#[test]
fn a_worktree_nothing_can_delete_does_not_stop_its_worker() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "stuck");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            "name: stuck
map:
  input: seq 1 3
  max_parallel: 1
  agent_template:
    - shell: test ! -e keep && echo ${{item}} >> {m}/ran
    - shell: if [ ${{item}} = 1 ]; then mkdir keep && echo x > keep/f && chattr +i keep/f; fi
"
        ),
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "workflow"]);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "k1"]);
    // Whatever happened, the immutable file must not outlive the test's directory.
    let stuck: Vec<PathBuf> = walk(&env.home().join("worktrees"))
        .into_iter()
        .filter(|p| p.ends_with("keep/f"))
        .collect();
    for f in &stuck {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(f)
            .status();
    }
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(
        std::fs::read_to_string(marks.join("ran")).unwrap(),
        "1\n2\n3\n"
    );
    assert_eq!(worktrees(&repo).len(), 2, "{:?}", worktrees(&repo));
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn resume_never_reruns_a_completion_the_log_kept() {
    use rustix::process::{Pid, Signal, kill_process_group};
    let mut in_window = 0;
    let trials = env_knob("PRODIGY_RUNNER_TRIALS", 3) as usize;
    for trial in 0..trials {
        let env = Env::new();
        let (repo, marks) = repo_and_marks(&env, "svc");
        let m = marks.display();
        write(
            &repo,
            "w.yml",
            &format!(
                "name: resume
{IDENTITY}map:
  input: seq 1 40
  max_parallel: 4
  agent_template:
    - shell: touch {m}/start-${{item}}; sleep 0.1
    - shell: if [ $((${{item}} % 2)) = 1 ]; then echo ${{item}} > f-${{item}}.txt && git add . && git commit -qm ${{item}}; fi
    - shell: date +%s%N >> {m}/count-${{item}}
"
            ),
        );
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "workflow"]);
        let job = format!("t{trial}");
        let mut child = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", &job]);
        let group = Pid::from_raw(child.id() as i32).unwrap();
        let started = 10 + (trial * 3) % 8;
        wait_for("items to start", Duration::from_secs(60), || {
            (1..=40)
                .filter(|n| marks.join(format!("start-{n}")).exists())
                .count()
                >= started
        });
        // What the store holds while the runner is frozen: the log's completions and the
        // checkpoint's done items.
        let durable = || {
            let log = prodigy::events::EventLog::new(env.store(), "svc", &job).unwrap();
            let filter = prodigy::events::query::Filter {
                types: vec!["agent_completed".into()],
                ..Default::default()
            };
            let mut keys = Vec::new();
            prodigy::events::query::stream(&log, &filter, false, true, |line| {
                keys.push(line.record.unwrap().item_id().unwrap().to_owned());
                Ok(true)
            })
            .unwrap();
            keys
        };
        let mut completed;
        let mut looks = 0;
        loop {
            let _ = kill_process_group(group, Signal::STOP);
            completed = durable();
            let before = done_keys(&env, "svc", &job);
            looks += 1;
            if completed.iter().any(|k| !before.contains(k)) {
                in_window += 1;
                break;
            }
            if looks >= 200 || completed.len() >= 36 {
                break;
            }
            let _ = kill_process_group(group, Signal::CONT);
            std::thread::sleep(Duration::from_millis(3));
        }
        kill_group(&mut child);
        let _ = kill_process_group(group, Signal::CONT);
        std::fs::remove_dir_all(env.home().join("worktrees")).unwrap();
        git(&repo, &["worktree", "prune"]);
        let out = ok_in(&env, &repo, &["resume", &job]);
        assert_eq!(out, format!("{job}\n"));
        let show = job_show(&env, &repo, &job);
        assert_eq!(show["done"], 40, "{show}");
        for n in 1..=40 {
            let count = lines(&marks.join(format!("count-{n}")));
            assert!(count >= 1, "trial {trial}: item {n} never ran");
            if completed.contains(&key_of(n)) {
                assert_eq!(
                    count, 1,
                    "trial {trial}: item {n} ran again though its completion was in the log"
                );
            }
        }
        // The committed items' work is in the result, each commit once.
        let result = PathBuf::from(show["worktree"].as_str().unwrap());
        let subjects = String::from_utf8(
            std::process::Command::new("git")
                .arg("-C")
                .arg(&result)
                .args(["log", "--format=%s"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        for n in (1..=40).step_by(2) {
            assert!(
                result.join(format!("f-{n}.txt")).exists(),
                "trial {trial}: f-{n}"
            );
            let made = subjects.lines().filter(|l| *l == n.to_string()).count();
            assert_eq!(made, 1, "trial {trial}: item {n}'s commit {made} times");
        }
    }
    assert!(
        in_window > 0,
        "no trial froze the runner between a durable completion and its checkpoint"
    );
}

/// Runs a job, kills its process group once `marker` exists, deletes every worktree,
/// creates `release` (so the step that waited runs through), and resumes the job to
/// completion.
fn kill_when(env: &Env, repo: &Path, job: &str, marker: &Path, release: &Path) {
    let mut child = spawn_in(env, repo, &["run", "w.yml", "--job-id", job]);
    wait_for(
        &marker.display().to_string(),
        Duration::from_secs(60),
        || marker.exists(),
    );
    kill_group(&mut child);
    let name = repo.file_name().unwrap().to_str().unwrap();
    std::fs::remove_dir_all(env.home().join("worktrees").join(name).join(job)).unwrap();
    std::fs::write(release, "").unwrap();
    let out = ok_in(env, repo, &["resume", job]);
    assert_eq!(out, format!("{job}\n"));
}

#[test]
fn kill_at_each_phase_and_resume() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "phases");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            "name: phases
{IDENTITY}setup:
  - shell: echo x >> {m}/setup1-$PRODIGY_JOB_ID && echo s > setup.txt && git add . && git commit -qm setup
  - shell: touch {m}/in-setup2-$PRODIGY_JOB_ID; test -e {m}/go-$PRODIGY_JOB_ID || sleep 30; echo x >> {m}/setup2-$PRODIGY_JOB_ID
map:
  input: seq 1 6
  max_parallel: 3
  agent_template:
    - shell: test -e setup.txt && echo ${{item}} > f-${{item}}.txt && git add . && git commit -qm 'item ${{item}}'
reduce:
  - shell: touch {m}/in-reduce-$PRODIGY_JOB_ID; test -e {m}/go-reduce-$PRODIGY_JOB_ID || sleep 30; ls f-*.txt | wc -l > n.txt; echo x >> {m}/reduce-$PRODIGY_JOB_ID
"
        ),
    );
    // Merges are slowed down by a hook (shared by every worktree) that, once armed,
    // marks them.
    let hook = repo.join(".git/hooks/post-merge");
    write(
        &repo.join(".git/hooks"),
        "post-merge",
        &format!("#!/bin/sh\nif test -e {m}/arm-merge; then touch {m}/in-merge; sleep 0.2; fi\n"),
    );
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    git(&repo, &["add", "w.yml"]);
    git(&repo, &["commit", "-q", "-m", "workflow"]);

    // During setup's second step (after the first finished): step 1 does not run again.
    write(&marks, "go-reduce-s", "");
    kill_when(
        &env,
        &repo,
        "s",
        &marks.join("in-setup2-s"),
        &marks.join("go-s"),
    );
    // During reduce.
    write(&marks, "go-r", "");
    kill_when(
        &env,
        &repo,
        "r",
        &marks.join("in-reduce-r"),
        &marks.join("go-reduce-r"),
    );
    // During the merges.
    write(&marks, "go-m", "");
    write(&marks, "go-reduce-m", "");
    write(&marks, "arm-merge", "");
    kill_when(
        &env,
        &repo,
        "m",
        &marks.join("in-merge"),
        &marks.join("unused"),
    );

    for job in ["s", "r", "m"] {
        let show = job_show(&env, &repo, job);
        assert_eq!(show["phase"], "complete", "{job}: {show}");
        assert_eq!(show["done"], 6, "{job}");
        let parent = PathBuf::from(show["worktree"].as_str().unwrap());
        assert_eq!(
            std::fs::read_to_string(parent.join("n.txt"))
                .unwrap()
                .trim(),
            "6",
            "{job}"
        );
        assert_eq!(lines(&marks.join(format!("setup1-{job}"))), 1, "{job}");
        assert_eq!(lines(&marks.join(format!("reduce-{job}"))), 1, "{job}");
        // Each agent's commit is merged exactly once.
        let log = std::process::Command::new("git")
            .arg("-C")
            .arg(&parent)
            .args(["log", "--format=%s"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&log.stdout);
        for n in 1..=6 {
            assert_eq!(
                log.lines().filter(|l| *l == format!("item {n}")).count(),
                1,
                "{job}: {log}"
            );
        }
    }
    assert_eq!(lines(&marks.join("setup2-s")), 1);
    assert_fsck_clean(&env);
}

#[test]
fn one_runner_per_job() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "lock");
    counting_workflow(&repo, &marks, 6, "0.5");
    let mut first = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", "L"]);
    wait_for("the first agent", Duration::from_secs(30), || {
        env.home().join("worktrees/lock/L/L@slot-0").exists()
    });
    // While it runs: a second run of the same job and two resumes are refused.
    let out = in_repo(&env, &repo, &["resume", "L"]);
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("is running in another process"), "{err}");
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "L"]);
    assert_one_line_error(&out, 1);
    kill_group(&mut first);
    // The killed runner's lock does not block; of two resumes at once, one runs.
    let a = spawn_in(&env, &repo, &["resume", "L"]);
    let b = spawn_in(&env, &repo, &["resume", "L"]);
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes.contains(&Some(0)),
        "{}\n{}",
        transcript(&a),
        transcript(&b)
    );
    // The other waited up to a second for the run lock: it is refused, or (the job
    // having finished meanwhile) finds it complete.
    let loser = if a.status.success()
        && !String::from_utf8_lossy(&a.stderr).contains("was already complete")
    {
        &b
    } else {
        &a
    };
    if loser.status.success() {
        let stderr = String::from_utf8_lossy(&loser.stderr);
        assert!(stderr.contains("was already complete"), "{stderr}");
    } else {
        let err = assert_one_line_error(loser, 1);
        assert!(err.contains("is running in another process"), "{err}");
    }
    assert_eq!(job_show(&env, &repo, "L")["phase"], "complete");
}

#[test]
fn sigterm_checkpoints_and_resume_finishes() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "term");
    counting_workflow(&repo, &marks, 8, "0.3");
    let child = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", "t"]);
    wait_for("two finished agents", Duration::from_secs(30), || {
        std::fs::read_dir(&marks).unwrap().count() >= 2
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("was interrupted"), "{err}");
    let show = job_show(&env, &repo, "t");
    assert_eq!(show["phase"], "map");
    assert_eq!(show["checkpoints"][0]["reason"], "interrupted");
    ok_in(&env, &repo, &["resume", "t"]);
    assert_eq!(job_show(&env, &repo, "t")["done"], 8);
    let stats = json_in(&env, &repo, &["events", "stats", "t", "--json"]);
    assert_eq!(stats["total"]["types"]["job_paused"], 1);
    // --from an older checkpoint: what finished after it runs again (here: everything
    // after the work list was made), and the job completes again.
    let show = job_show(&env, &repo, "t");
    let map_start = show["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["reason"] == "phase map")
        .unwrap()["version"]
        .to_string();
    let out = in_repo(&env, &repo, &["resume", "t", "--from", "999999"]);
    assert_one_line_error(&out, 2);
    let resumed = ok_in(&env, &repo, &["resume", "t", "--from", &map_start]);
    let show = job_show(&env, &repo, "t");
    // (Seen once, in a loaded CI run: 7. The state and the queue say why, if it recurs.)
    assert_eq!(
        show["done"],
        8,
        "{resumed}\n{show}\n{}",
        ok_in(&env, &repo, &["dlq", "list", "t"])
    );
    let log = git_out(&repo, &["log", "--format=%s", "prodigy/t"]);
    for n in 1..=8 {
        assert!(lines(&marks.join(format!("count-{n}"))) >= 2, "item {n}");
        // The branch was put back to the checkpoint: each item's work is merged once.
        let merged = log.lines().filter(|l| *l == format!("item {n}")).count();
        assert_eq!(merged, 1, "item {n}: {log}");
    }
    // Versions keep counting after --from.
    let versions: Vec<u64> = job_show(&env, &repo, "t")["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["version"].as_u64().unwrap())
        .collect();
    let mut unique = versions.clone();
    unique.dedup();
    assert_eq!(unique, versions);
}

#[test]
fn error_policy_stop_then_resume() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "policy");
    write(&marks, "fail-3", "");
    counting_workflow(&repo, &marks, 6, "0");
    let text = std::fs::read_to_string(repo.join("w.yml"))
        .unwrap()
        .replace("on_item_failure: dlq", "on_item_failure: stop")
        .replace("max_parallel: 4", "max_parallel: 1");
    write(&repo, "w.yml", &text);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "p"]);
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("on_item_failure is stop"), "{err}");
    let list = json_in(&env, &repo, &["jobs", "--json"]);
    assert_eq!(list[0]["status"], "failed:map", "{list}");
    // Items 1 and 2 were done; the agent already at work when item 3 failed finishes.
    let done = list[0]["done"].as_u64().unwrap();
    assert!((2..=3).contains(&done), "{list}");
    assert_eq!(list[0]["failed"], 1);
    // `stop` does not dead-letter; a failed item stays failed on resume, the rest run.
    let dlq = json_in(&env, &repo, &["dlq", "list", "p", "--json"]);
    assert_eq!(dlq.as_array().unwrap().len(), 0, "{dlq}");
    with_failures(&env, &repo, &["resume", "p"]);
    let show = job_show(&env, &repo, "p");
    assert_eq!(show["phase"], "complete");
    assert_eq!(
        (show["done"].as_u64(), show["failed"].as_u64()),
        (Some(5), Some(1))
    );
    // A malformed retry filter is a usage error, never "all".
    let out = in_repo(
        &env,
        &repo,
        &["dlq", "retry", "p", "--filter", "error_type =="],
    );
    assert_one_line_error(&out, 2);
}

#[test]
fn a_step_past_its_timeout_dies_with_its_process_group() {
    let env = Env::new();
    let repo = repo(&env, "slow");
    let pids = env.dir.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    write(
        &repo,
        "w.yml",
        &format!(
            "name: slow
map:
  input: seq 1 2
  agent_template:
    - shell: sleep 60 & echo $! > {}/${{item}}; wait
      timeout: 1
error_policy:
  on_item_failure: dlq
  retry_config:
    max_attempts: 2
    initial_delay: 10ms
",
            pids.display()
        ),
    );
    let started = Instant::now();
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "slow"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
    for n in 1..=2 {
        let pid: i32 = std::fs::read_to_string(pids.join(n.to_string()))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep was in the step's group: it is gone (or a zombie that
        // nobody reaped, which the container's init may leave).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .chars()
            .next();
        assert!(
            matches!(state, None | Some('Z' | 'X')),
            "pid {pid} survived its step's time-out: {stat}"
        );
    }
    let dlq = json_in(&env, &repo, &["dlq", "list", "slow", "--json"]);
    assert_eq!(dlq.as_array().unwrap().len(), 2);
    assert_eq!(dlq[0]["error_type"]["type"], "timeout");
    let stats = json_in(&env, &repo, &["events", "stats", "slow", "--json"]);
    assert_eq!(stats["total"]["types"]["agent_retrying"], 2);
    assert_eq!(stats["total"]["types"]["agent_failed"], 4);
}

#[test]
fn bad_workflows_fail_before_any_agent_with_file_and_line() {
    let env = Env::new();
    let repo = repo(&env, "bad");
    let too_big = "name: x\nmap:\n  input: seq 1 2\n  agent_template:\n".to_owned()
        + &"    - shell: 'true'\n".repeat(130_000);
    let cases: [(&str, &str); 9] = [
        ("yaml", "name: x\nmap: [unclosed\n"),
        (
            "duplicate-key",
            "name: x\nname: y\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: echo\n",
        ),
        ("too-big", &too_big),
        (
            "shell-and-claude",
            "name: x\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: echo\n      claude: /fix ${item}\n",
        ),
        (
            "missing-input",
            "name: x\nmap:\n  agent_template:\n    - shell: echo\n",
        ),
        (
            "unknown-key",
            "name: x\nmap:\n  input: seq 1 2\n  max_paralel: 2\n  agent_template:\n    - shell: echo\n",
        ),
        (
            "json-path-nothing",
            "name: x\nmap:\n  input: items.json\n  json_path: \"$.nope[*]\"\n  agent_template:\n    - shell: echo ${item}\n",
        ),
        (
            "not-an-object",
            "name: x\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: echo ${item.name}\n",
        ),
        (
            "wrong-phase",
            "name: x\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: echo\nreduce:\n  - shell: echo ${item.name}\n",
        ),
    ];
    write(&repo, "items.json", r#"{"items": [1, 2]}"#);
    git(&repo, &["add", "items.json"]);
    git(&repo, &["commit", "-q", "-m", "items"]);
    for (name, text) in cases {
        write(&repo, "w.yml", text);
        let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", name]);
        assert_one_line_error(&out, 1);
        snapshot(&format!("run-bad-{name}"), &out, &env.home());
        // No agent ever started.
        for dir in ["agent-0", "slot-0"] {
            assert!(
                !env.home()
                    .join(format!("worktrees/bad/{name}/{name}@{dir}"))
                    .exists()
            );
        }
        let events = env.home().join(format!("events/bad/{name}"));
        if events.exists() {
            let stats = json_in(&env, &repo, &["events", "stats", name, "--json"]);
            assert!(
                stats["total"]["types"].get("agent_started").is_none(),
                "{stats}"
            );
        }
    }
    // Outside git; hostile job ids; a missing workflow file.
    let outside = env.scratch().join("plain");
    std::fs::create_dir_all(&outside).unwrap();
    write(
        &outside,
        "w.yml",
        "name: x\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: echo\n",
    );
    let out = in_repo(&env, &outside, &["run", "w.yml"]);
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("not inside a git repository"), "{err}");
    write(
        &repo,
        "w.yml",
        "name: x\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: echo\n",
    );
    let long = "x".repeat(200);
    for id in ["../x", "a/b", long.as_str(), "", "x.lock"] {
        // A hostile id is a bad argument: exit 2.
        let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", id]);
        assert_one_line_error(&out, 2);
        let out = in_repo(&env, &repo, &["resume", id]);
        assert_ne!(out.status.code(), Some(0));
    }
    let out = in_repo(&env, &repo, &["run", "nope.yml"]);
    assert_one_line_error(&out, 1);
    // An input file that is not committed is not in the job's worktree: said plainly.
    write(
        &repo,
        "w.yml",
        "name: x\nmap:\n  input: new.json\n  agent_template:\n    - shell: echo\n",
    );
    write(&repo, "new.json", "[1]");
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "uncommitted"]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains("'new.json' is not in the job's worktree"),
        "{err}"
    );
    let out = in_repo(&env, &repo, &["resume", "never-ran"]);
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("no job 'never-ran'"), "{err}");
}

#[test]
fn the_readme_example_runs() {
    let env = Env::new();
    let repo = repo(&env, "example");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    write(&repo, "src/a.rs", "// one\nfn a() {}\n");
    write(&repo, "src/b.rs", "fn b() {}\n");
    std::fs::create_dir_all(repo.join("examples")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/file-stats.yml"),
        repo.join("examples/file-stats.yml"),
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "sources"]);
    // From outside the repository, pointing at it with -p.
    let out = env
        .cmd()
        .args(["run", "example/examples/file-stats.yml", "-p", "example"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", transcript(&out));
    let job = String::from_utf8(out.stdout).unwrap();
    let job = job.trim();
    assert!(job.starts_with("mr-"), "{job}");
    let show = job_show(&env, &repo, job);
    assert_eq!(show["done"], 2, "{show}");
    let parent = PathBuf::from(show["worktree"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(parent.join("STATS.tsv")).unwrap(),
        "lines\tcomments\tfile\n2\t1\tsrc/a.rs\n1\t0\tsrc/b.rs\n"
    );
    // The result is committed on the job's branch, in the user's repository.
    let log = git_out(
        &repo,
        &["log", "--format=%s", "-1", &format!("prodigy/{job}")],
    );
    assert_eq!(log, "file-stats: 2 of 2 files");
}

/// What git prints in `dir` (trimmed), failing or not.
pub(crate) fn git_out(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// SIGKILL at random moments, again and again, each time resuming (and sometimes deleting
/// every worktree first): the job always ends with every item merged exactly once and
/// the same result. A step in flight at a kill runs again, so the job-level steps here
/// are idempotent, as they must be in any workflow that wants the same result. `PRODIGY_RUNNER_TRIALS=N` runs more trials (3 in the suite),
/// `PRODIGY_TORTURE_SEED` replays.
#[test]
fn sigkill_at_random_moments_then_resume() {
    let trials = env_knob("PRODIGY_RUNNER_TRIALS", 3);
    let mut rng = Rng(env_knob("PRODIGY_TORTURE_SEED", 0x5eed));
    for trial in 0..trials {
        let env = Env::new();
        let (repo, marks) = repo_and_marks(&env, "torture");
        let m = marks.display();
        write(
            &repo,
            "w.yml",
            &format!(
                "name: torture
{IDENTITY}setup:
  - shell: echo s > setup.txt && git add . && (git diff --cached --quiet || git commit -qm setup)
map:
  input: seq 1 10
  max_parallel: 3
  agent_template:
    - shell: sleep 0.0$(( ${{item}} % 7 )); echo ${{item}} > f-${{item}}.txt && git add . && git commit -qm 'item ${{item}}'
reduce:
  - shell: ls f-*.txt | wc -l > n.txt && git add n.txt && (git diff --cached --quiet || git commit -qm reduce) && echo x >> {m}/reduce
"
            ),
        );
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "workflow"]);
        let mut args = vec!["run", "w.yml", "--job-id", "t"];
        let mut kills = 0;
        loop {
            let mut child = spawn_in(&env, &repo, &args);
            let delay = rng.below(1500);
            let start = Instant::now();
            let mut finished = None;
            while start.elapsed() < Duration::from_millis(delay) {
                if let Some(status) = child.try_wait().unwrap() {
                    finished = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some(status) = finished {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                assert!(status.success(), "trial {trial}: {args:?} failed: {stderr}");
                break;
            }
            kill_group(&mut child);
            kills += 1;
            if rng.below(2) == 0 {
                let _ = std::fs::remove_dir_all(env.home().join("worktrees/torture/t"));
            }
            // A kill before the first checkpoint leaves no job: run it again.
            let created = env.home().join("state/torture/t/HEAD").exists();
            args = if created {
                vec!["resume", "t"]
            } else {
                vec!["run", "w.yml", "--job-id", "t"]
            };
            if kills > 8 {
                let out = in_repo(&env, &repo, &args);
                assert!(out.status.success(), "trial {trial}: {}", transcript(&out));
                break;
            }
        }
        let show = job_show(&env, &repo, "t");
        assert_eq!(show["phase"], "complete", "trial {trial}: {show}");
        let dlq = ok_in(&env, &repo, &["dlq", "list", "t", "--json"]);
        assert_eq!(show["done"], 10, "trial {trial}: {dlq}");
        let log = git_out(&repo, &["log", "--format=%s", "prodigy/t"]);
        for n in 1..=10 {
            let merged = log.lines().filter(|l| *l == format!("item {n}")).count();
            assert_eq!(merged, 1, "trial {trial}: item {n} in\n{log}");
        }
        assert_eq!(
            log.lines().filter(|l| *l == "setup").count(),
            1,
            "trial {trial}"
        );
        // Reduce finished once, unless a kill fell between its end and its checkpoint.
        let reduced = lines(&marks.join("reduce"));
        assert!(
            (1..=2).contains(&reduced),
            "trial {trial}: reduce ran {reduced} times"
        );
        // (The job's worktree may be gone: killed after completing, then deleted.)
        assert_eq!(
            git_out(&repo, &["show", "prodigy/t:n.txt"]),
            "10",
            "trial {trial}"
        );
        assert_fsck_clean(&env);
    }
}

#[test]
fn captures_survive_a_resume_and_errors_stay_one_line() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "cap");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            "name: cap
map:
  input: seq 1 2
  agent_template:
    - shell: \"true\"
reduce:
  - shell: echo captured-value
    capture_output: X
  - shell: test -e {m}/go || {{ echo first line >&2; echo second line >&2; exit 3; }}; echo \"X=${{X}}\" > {m}/out
"
        ),
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "c"]);
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("exit code 3: second line"), "{err}");
    write(&marks, "go", "");
    ok_in(&env, &repo, &["resume", "c"]);
    assert_eq!(
        std::fs::read_to_string(marks.join("out")).unwrap(),
        "X=captured-value\n"
    );
}

#[test]
fn a_step_that_leaves_a_daemon_does_not_hang_the_runner() {
    let env = Env::new();
    let repo = repo(&env, "daemon");
    write(
        &repo,
        "w.yml",
        "name: d\nmap:\n  input: seq 1 1\n  agent_template:\n    - shell: setsid sleep 8 > /dev/null 2>&1 & setsid sleep 8 & sleep 30\n      timeout: 1\n",
    );
    let started = Instant::now();
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "d"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(job_show(&env, &repo, "d")["failed"], 1);
}

#[test]
fn a_retry_that_conflicts_stays_in_the_queue() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "conflict");
    let m = marks.display();
    // Item 2 fails at first; on retry it writes the file item 1 wrote, differently.
    write(
        &repo,
        "w.yml",
        &format!(
            "name: conflict
{IDENTITY}map:
  input: seq 1 2
  max_parallel: 1
  agent_template:
    - shell: test ${{item}} = 1 || test -e {m}/go
    - shell: echo ${{item}} > same.txt && git add . && git commit -qm 'item ${{item}}'
"
        ),
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "workflow"]);
    with_failures(&env, &repo, &["run", "w.yml", "--job-id", "k"]);
    write(&marks, "go", "");
    let out = in_repo(&env, &repo, &["dlq", "retry", "k"]);
    // Still in the queue: exit 3, as a run that leaves items there.
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("failed "));
    let dlq = json_in(&env, &repo, &["dlq", "list", "k", "--json"]);
    assert_eq!(dlq[0]["failure_count"], 2, "{dlq}");
    assert_eq!(dlq[0]["error_type"]["type"], "merge_conflict");
    let show = job_show(&env, &repo, "k");
    assert_eq!(
        (show["done"].as_u64(), show["failed"].as_u64()),
        (Some(1), Some(1))
    );
    // The job's worktree is left clean, on item 1's work.
    let parent = PathBuf::from(show["worktree"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(parent.join("same.txt")).unwrap(),
        "1\n"
    );
    assert_eq!(git_out(&parent, &["status", "--porcelain"]), "");
}

#[test]
fn a_command_too_long_for_the_system_is_a_clear_failure() {
    let env = Env::new();
    let repo = repo(&env, "long");
    let big = "x".repeat(200 * 1024);
    write(
        &repo,
        "items.json",
        &serde_json::to_string(&vec![big]).unwrap(),
    );
    write(
        &repo,
        "w.yml",
        "name: long\nmap:\n  input: items.json\n  agent_template:\n    - shell: echo '${item}'\n",
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "long"]);
    with_failures(&env, &repo, &["run", "w.yml", "--job-id", "l"]);
    let dlq = json_in(&env, &repo, &["dlq", "list", "l", "--json"]);
    let sig = dlq[0]["error_signature"].as_str().unwrap();
    assert!(sig.contains("after interpolation"), "{sig}");
}

/// A merge killed after it staged an agent's file (no MERGE_HEAD yet) leaves "Your local
/// changes … would be overwritten by merge … Merge with strategy ort failed.": those are
/// the merge's own leftovers, put back, and the merge succeeds (found by the SIGKILL test).
/// What a merge stopped half-way leaves (a file staged, another written but untracked):
/// `restore` puts the worktree back to `HEAD`, keeping the untracked files it is told to
/// keep, and the merge then succeeds.
#[test]
fn restore_undoes_a_half_merge_and_keeps_what_was_there() {
    let env = Env::new();
    let repo = env.scratch().join("leftovers");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("base.txt"), "base\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "base"]);
    git(&repo, &["checkout", "-q", "-b", "agent"]);
    std::fs::create_dir_all(repo.join("d/e")).unwrap();
    std::fs::write(repo.join("f-4.txt"), "4\n").unwrap();
    std::fs::write(repo.join("d/e/g.txt"), "g\n").unwrap();
    std::fs::write(repo.join("base.txt"), "changed\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "item 4"]);
    git(&repo, &["checkout", "-q", "main"]);
    // The job's branch moved on (an earlier merge), so this is a real merge.
    std::fs::write(repo.join("other.txt"), "x\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "other"]);
    // Setup left a file untracked: it stays.
    std::fs::write(repo.join("setup-output.json"), "[]\n").unwrap();
    let keep = prodigy::runner::git::untracked(&repo).unwrap();
    assert_eq!(keep.len(), 1, "{keep:?}");
    // What the stopped merge left: one file staged, one cut short, one tracked file
    // rewritten.
    std::fs::write(repo.join("f-4.txt"), "4\n").unwrap();
    git(&repo, &["add", "f-4.txt"]);
    std::fs::create_dir_all(repo.join("d/e")).unwrap();
    std::fs::write(repo.join("d/e/g.txt"), "").unwrap();
    std::fs::write(repo.join("base.txt"), "chan").unwrap();
    let env_vars = std::collections::BTreeMap::from([
        ("GIT_AUTHOR_NAME".to_owned(), "t".to_owned()),
        ("GIT_AUTHOR_EMAIL".to_owned(), "t@example.com".to_owned()),
        ("GIT_COMMITTER_NAME".to_owned(), "t".to_owned()),
        ("GIT_COMMITTER_EMAIL".to_owned(), "t@example.com".to_owned()),
    ]);
    assert!(prodigy::runner::git::merge(&repo, "agent", "merge item 4", &env_vars).is_err());
    prodigy::runner::git::restore(&repo, &keep).unwrap();
    assert!(!repo.join("d").exists());
    assert_eq!(
        std::fs::read_to_string(repo.join("base.txt")).unwrap(),
        "base\n"
    );
    prodigy::runner::git::merge(&repo, "agent", "merge item 4", &env_vars).unwrap();
    assert_eq!(
        std::fs::read_to_string(repo.join("f-4.txt")).unwrap(),
        "4\n"
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("d/e/g.txt")).unwrap(),
        "g\n"
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("setup-output.json")).unwrap(),
        "[]\n"
    );
    assert!(prodigy::runner::git::is_merged(&repo, "agent"));
}

/// A `git` in front of the real one that SIGKILLs the runner's process group once, at
/// `$KILL_AT`: `merge` (after writing part of a file the merge brings, as git writes files
/// before its index) or `checkout` (after the job worktree's files are out, before its
/// index is). Returns the PATH to run with.
fn killing_git(env: &Env) -> String {
    let bin = env.dir.path().join("kill-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let script = format!(
        r#"#!/bin/sh
real={real}
once="$KILL_MARKS/killed-$KILL_AT"
if [ -n "$KILL_AT" ] && [ ! -e "$once" ] && [ "$1" = "-C" ]; then
  dir=$2
  case "$3 $4 $KILL_AT" in
    "merge --no-edit merge")
      touch "$once"
      last=$(eval "echo \${{$#}}")
      f=$("$real" -C "$dir" diff --name-only HEAD "$last" | head -n 1)
      printf 'partial' > "$dir/$f"
      kill -s KILL 0 ;;
    "worktree add checkout")
      path=
      for a in "$@"; do case "$a" in *@job) path=$a ;; esac; done
      [ -n "$path" ] || exec "$real" "$@"
      touch "$once"
      "$real" "$@"
      rm -f "$("$real" -C "$path" rev-parse --absolute-git-dir)/index"
      kill -s KILL 0 ;;
  esac
fi
exec "$real" "$@"
"#,
        real = real.trim()
    );
    let path = bin.join("git");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A SIGKILL while git merges an agent's commits (a file of it half written), and one while
/// the job's worktree is checked out again after it was deleted (files without an index):
/// each `resume` puts the worktree back and the job completes, every item merged once.
#[test]
fn a_kill_inside_a_merge_or_a_checkout_is_repaired_by_resume() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "halfway");
    write(
        &repo,
        "w.yml",
        &format!(
            "name: halfway
{IDENTITY}setup:
  - shell: echo s > setup.txt && git add setup.txt && git commit -qm setup && echo keep > untracked.txt
map:
  input: seq 1 4
  max_parallel: 2
  agent_template:
    - shell: echo ${{item}} > f-${{item}}.txt && git add . && git commit -qm 'item ${{item}}'
reduce:
  - shell: (test ! -e untracked.txt || test \"$(cat untracked.txt)\" = keep) && ls f-*.txt | wc -l > n.txt && git add n.txt && git commit -qm reduce
"
        ),
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "workflow"]);
    let path = killing_git(&env);
    let run = |args: &[&str], kill_at: &str| {
        let mut cmd = env.std_cmd();
        cmd.current_dir(&repo)
            .args(args)
            .env("PATH", &path)
            .env("KILL_AT", kill_at)
            .env("KILL_MARKS", &marks);
        // Its own process group: the kill takes the runner and its children only.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.output().unwrap()
    };
    let out = run(&["run", "w.yml", "--job-id", "t"], "merge");
    assert!(!out.status.success(), "{}", transcript(&out));
    assert!(marks.join("killed-merge").exists());
    let show = job_show(&env, &repo, "t");
    assert_eq!(show["phase"], "merge", "{show}");
    // Resumed with the half-written file in place: undone, merged, done.
    let out = run(&["resume", "t"], "");
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(job_show(&env, &repo, "t")["phase"], "complete");
    let log = git_out(&repo, &["log", "--format=%s", "prodigy/t"]);
    for n in 1..=4 {
        let merged = log.lines().filter(|l| *l == format!("item {n}")).count();
        assert_eq!(merged, 1, "item {n} in\n{log}");
    }
    assert_eq!(git_out(&repo, &["show", "prodigy/t:n.txt"]), "4");

    // Another job: killed at its first merge, then its worktrees deleted (setup's
    // untracked file with them) and the checkout of the job's worktree killed half-way.
    std::fs::remove_file(marks.join("killed-merge")).unwrap();
    let out = run(&["run", "w.yml", "--job-id", "v"], "merge");
    assert!(!out.status.success(), "{}", transcript(&out));
    std::fs::remove_dir_all(env.home().join("worktrees/halfway/v")).unwrap();
    let out = run(&["resume", "v"], "checkout");
    assert!(!out.status.success(), "{}", transcript(&out));
    assert!(marks.join("killed-checkout").exists());
    let out = run(&["resume", "v"], "");
    assert!(out.status.success(), "{}", transcript(&out));
    let log = git_out(&repo, &["log", "--format=%s", "prodigy/v"]);
    for n in 1..=4 {
        let merged = log.lines().filter(|l| *l == format!("item {n}")).count();
        assert_eq!(merged, 1, "item {n} in\n{log}");
    }
    assert_fsck_clean(&env);
}

/// The original's step fields `name` and `commit_required`, and its spellings of the agent
/// time limit (`timeout_per_agent: 1s`, `timeout_config.agent_timeout_secs`): a step that
/// must commit and does not fails its item; an agent over its limit is killed.
#[test]
fn commit_required_and_the_original_agent_time_limits() {
    let env = Env::new();
    let repo = repo(&env, "original-fields");
    write(
        &repo,
        "w.yml",
        "name: commits
mode: mapreduce
env:
  GIT_AUTHOR_NAME: t
  GIT_AUTHOR_EMAIL: t@example.com
  GIT_COMMITTER_NAME: t
  GIT_COMMITTER_EMAIL: t@example.com
map:
  input: seq 1 3
  timeout_per_agent: 20s
  agent_template:
    - name: write the item
      shell: echo ${item} > f-${item}.txt && git add f-${item}.txt
    - name: commit it, except item 2
      shell: test ${item} = 2 || git commit -qm 'item ${item}'
      commit_required: true
reduce:
  - shell: ls f-*.txt | wc -l > n.txt
",
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "commits"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    let dlq = json_in(&env, &repo, &["dlq", "list", "commits", "--json"]);
    let items = dlq.as_array().unwrap();
    assert_eq!(items.len(), 1, "{dlq}");
    let item = json_in(
        &env,
        &repo,
        &[
            "dlq",
            "inspect",
            items[0]["item_id"].as_str().unwrap(),
            "--job",
            "commits",
            "--json",
        ],
    );
    let text = item.to_string();
    assert!(
        text.contains("commit_required: the step succeeded but made no commit"),
        "{text}"
    );
    let job = job_show(&env, &repo, "commits");
    assert_eq!(
        (job["done"].as_u64(), job["failed"].as_u64()),
        (Some(2), Some(1))
    );

    // timeout_config.agent_timeout_secs kills a slow agent; `${VAR}` of the env gives it,
    // as the original's docs write it (it was refused: "invalid u64").
    write(
        &repo,
        "slow.yml",
        "name: slow
env:
  AGENT_TIMEOUT: 1
map:
  input: seq 1 1
  timeout_config:
    agent_timeout_secs: ${AGENT_TIMEOUT}
  agent_template:
    - shell: sleep 30
error_policy:
  on_item_failure: skip
",
    );
    let started = Instant::now();
    let out = in_repo(&env, &repo, &["run", "slow.yml", "--job-id", "slow"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the agent was not killed"
    );
    assert_eq!(job_show(&env, &repo, "slow")["failed"], 1);

    // Two spellings at once, or a duration that is none, are refused with their line.
    for (body, want) in [
        (
            "  timeout_per_agent: 5\n  agent_timeout_secs: 5\n",
            "given twice",
        ),
        ("  timeout_per_agent: soon\n", "is not a duration"),
        (
            "  agent_timeout_secs: ${PRODIGY_IT_NOPE}\n",
            "map.agent_timeout_secs ${PRODIGY_IT_NOPE}: PRODIGY_IT_NOPE is set neither",
        ),
    ] {
        write(
            &repo,
            "bad.yml",
            &format!(
                "name: bad\nmap:\n  input: seq 1 1\n{body}  agent_template:\n    - shell: 'true'\n"
            ),
        );
        let out = in_repo(&env, &repo, &["run", "bad.yml"]);
        let stderr = assert_one_line_error(&out, 1);
        assert!(
            stderr.contains("bad.yml:") && stderr.contains(want),
            "{stderr}"
        );
    }
}

/// A workflow in the original tool's own shape — `commands:` lists, an unquoted
/// `json_path: $[*]`, `|` blocks, named steps, `commit_required`, `timeout_per_agent` —
/// runs unchanged, also when the runner is SIGKILLed in the middle of the map phase and
/// the job is resumed.
#[test]
fn a_workflow_in_the_original_shape_runs_and_resumes_after_sigkill() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "original-shape");
    write(
        &repo,
        "w.yml",
        &format!(
            "name: original-shape
mode: mapreduce
{IDENTITY}setup:
  - shell: |
      echo '[
        {{\"id\": 1, \"name\": \"one\"}},
        {{\"id\": 2, \"name\": \"two\"}},
        {{\"id\": 3, \"name\": \"three\"}},
        {{\"id\": 4, \"name\": \"four\"}}
      ]' > items.json
map:
  input: items.json
  json_path: $[*]
  max_parallel: 2
  timeout_per_agent: 60s
  agent_template:
    commands:
      - name: write
        shell: |
          echo \"Processed ${{item.name}}\" > output-${{item.name}}.txt
          echo \"Item ID: ${{item.id}}\" >> output-${{item.name}}.txt
          echo ${{item.name}} >> {marks}/started
          sleep 0.3
      - shell: git add output-${{item.name}}.txt
      - shell: git commit -qm \"Process ${{item.name}} (id=${{item.id}})\"
        commit_required: true
reduce:
  commands:
    - shell: |
        count=$(ls output-*.txt | wc -l)
        test \"$count\" -eq 4 && echo \"${{map.successful}}/${{map.total}}\" > summary.txt
",
            marks = marks.display()
        ),
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "workflow"]);
    let mut child = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", "shape"]);
    wait_for("an agent at work", Duration::from_secs(30), || {
        lines(&marks.join("started")) >= 1
    });
    kill_group(&mut child); // SIGKILL mid-map
    let out = in_repo(&env, &repo, &["resume", "shape"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let show = job_show(&env, &repo, "shape");
    assert_eq!(
        (show["phase"].as_str(), show["done"].as_u64()),
        (Some("complete"), Some(4))
    );
    let parent = PathBuf::from(show["worktree"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(parent.join("summary.txt")).unwrap(),
        "4/4\n"
    );
    assert_eq!(
        std::fs::read_to_string(parent.join("output-two.txt")).unwrap(),
        "Processed two\nItem ID: 2\n"
    );
    assert_fsck_clean(&env);
}

/// The original's `capture:` with `capture_format` (string, number, boolean, json, lines):
/// setup's captures reach the agents and reduce, `${NAME.field}` reads JSON, and output
/// that is not of its format fails the step with a message saying so.
#[test]
fn captures_with_formats_reach_agents_and_reduce() {
    let env = Env::new();
    let repo = repo(&env, "captures");
    write(
        &repo,
        "w.yml",
        "name: captures
setup:
  - shell: echo 3
    capture: count
    capture_format: number
  - shell: |
      echo '{\"mode\": \"fast\", \"tags\": [\"a\", \"b\"]}'
    capture: cfg
    capture_format: json
  - shell: printf 'x\\ny\\n'
    capture: names
    capture_format: lines
  - shell: echo true
    capture: flag
    capture_format: boolean
map:
  input: seq 1 2
  agent_template:
    - shell: echo ${item}:${count}:${cfg.mode}:${cfg.tags.1}:${flag} > out-${item}.txt
    - shell: cat out-${item}.txt
      capture: line
    - shell: test '${line}' = '${item}:3:fast:b:true'
reduce:
  - shell: echo '${count} ${names} ${cfg.mode}' > summary.txt
",
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "caps"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let show = job_show(&env, &repo, "caps");
    assert_eq!(
        (show["done"].as_u64(), show["failed"].as_u64()),
        (Some(2), Some(0)),
        "{show}"
    );
    let parent = PathBuf::from(show["worktree"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(parent.join("summary.txt")).unwrap(),
        "3 [\"x\",\"y\"] fast\n"
    );
    // A value that is not of its format fails the step, naming the format.
    write(
        &repo,
        "bad.yml",
        "name: bad
setup:
  - shell: echo many
    capture: count
    capture_format: number
map:
  input: seq 1 1
  agent_template:
    - shell: echo ${count}
",
    );
    let out = in_repo(&env, &repo, &["run", "bad.yml", "--job-id", "bad"]);
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("capture_format number: the output \"many\" is not a number"),
        "{stderr}"
    );
    // An unknown format, or a field of a capture that is not JSON, is refused at load.
    for (yaml, want) in [
        (
            "    capture_format: yaml\n",
            "capture_format 'yaml' is not one of",
        ),
        ("    capture_format: string\n", "${count.x}"),
    ] {
        write(
            &repo,
            "load.yml",
            &format!(
                "name: load\nsetup:\n  - shell: echo 1\n    capture: count\n{yaml}map:\n  input: seq 1 1\n  agent_template:\n    - shell: echo ${{count.x}}\n"
            ),
        );
        let out = in_repo(&env, &repo, &["run", "load.yml"]);
        let stderr = assert_one_line_error(&out, 1);
        assert!(
            stderr.contains("load.yml:") && stderr.contains(want),
            "{stderr}"
        );
    }
}

/// `when:` runs a step only when its condition (after interpolation) is true; a condition
/// that is neither true, false nor a comparison fails the step, naming it.
#[test]
fn when_skips_steps_whose_condition_is_false() {
    let env = Env::new();
    let repo = repo(&env, "when");
    write(
        &repo,
        "w.yml",
        "name: when
setup:
  - shell: echo high
    capture: level
  - shell: exit 1
    when: \"${level} == 'low'\"
map:
  input: seq 1 4
  agent_template:
    - shell: echo big > mark-${item}.txt
      when: \"${item} > 2 && ${level} == high\"
    - shell: test -e mark-${item}.txt && echo yes || echo no
      capture: seen
    - shell: test ${seen} = yes
      when: \"${item} >= 3\"
    - shell: test ${seen} = no
      when: \"!${item} >= 3\"
",
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "when"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let show = job_show(&env, &repo, "when");
    assert_eq!(
        (show["done"].as_u64(), show["failed"].as_u64()),
        (Some(4), Some(0)),
        "{show}"
    );
    write(
        &repo,
        "bad.yml",
        "name: bad\nmap:\n  input: seq 1 1\n  agent_template:\n    - shell: 'true'\n      when: \"${item} maybe\"\nerror_policy:\n  on_item_failure: dlq\n",
    );
    // A condition that does not parse is refused when the workflow loads.
    let out = in_repo(&env, &repo, &["run", "bad.yml", "--job-id", "bad"]);
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("bad.yml:6: when:") && stderr.contains("unexpected \"maybe\""),
        "{stderr}"
    );
}

/// `${last.output}` and `${last.exit_code}` (and, as in the original, `${shell.output}`
/// without a capture): the output and exit code of the step before
/// (the exit code is non-zero after a failure its `on_failure` forgave); in a phase's first
/// step they are an error at load.
#[test]
fn last_output_and_exit_code_name_the_step_before() {
    let env = Env::new();
    let repo = repo(&env, "last");
    write(
        &repo,
        "w.yml",
        "name: last
map:
  input: seq 1 2
  agent_template:
    - shell: echo hello-${item}
    - shell: test '${last.output}' = hello-${item} && test ${last.exit_code} = 0
    - shell: echo again-${item}
    - shell: test '${shell.output}' = again-${item}
    - shell: exit 3
      on_failure:
        shell: 'true'
        fail_workflow: false
    - shell: test ${last.exit_code} = 3
reduce:
  - shell: echo ${map.successful}
  - shell: test '${last.output}' = 2
  - shell: test '${map.results}' = '${map.results_json}' && echo '${map.results}' | grep -q status
",
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "last"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let show = job_show(&env, &repo, "last");
    assert_eq!(
        (show["done"].as_u64(), show["failed"].as_u64()),
        (Some(2), Some(0)),
        "{show}"
    );
    assert_eq!(show["phase"], "complete");
    write(
        &repo,
        "first.yml",
        "name: first\nmap:\n  input: seq 1 1\n  agent_template:\n    - shell: echo ${last.output}\n",
    );
    let out = in_repo(&env, &repo, &["run", "first.yml"]);
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("first.yml:5") && stderr.contains("${last.output}"),
        "{stderr}"
    );
}

/// The home on a small file system, filled by the merges (each agent commits 200 KB): the
/// merge fails on the full disk; once there is room again, `resume` finishes the job with
/// every item merged once (git's half-written file is undone, not in the way).
#[test]
fn a_full_disk_during_the_merges_then_resume_finishes() {
    let env = Env::new();
    crate::common::on_tmpfs(&env.home(), "size=3m", || {
        let (repo, _) = repo_and_marks(&env, "full");
        write(
            &repo,
            "w.yml",
            &format!(
                "name: full
{IDENTITY}map:
  input: seq 1 24
  max_parallel: 2
  agent_template:
    - shell: head -c 200000 /dev/urandom > f-${{item}}.bin && git add . && git commit -qm 'item ${{item}}'
"
            ),
        );
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "workflow"]);
        let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "t"]);
        assert!(!out.status.success(), "{}", transcript(&out));
        let stderr = assert_one_line_error(&out, 1);
        assert!(
            stderr.contains("unable to write") || stderr.contains("No space left"),
            "{stderr}"
        );
        let status = std::process::Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(env.home())
            .status()
            .unwrap();
        assert!(status.success());
        let out = in_repo(&env, &repo, &["resume", "t"]);
        assert!(out.status.success(), "{}", transcript(&out));
        let show = job_show(&env, &repo, "t");
        assert_eq!(show["phase"], "complete", "{show}");
        assert_eq!(show["done"], 24, "{show}");
        let log = git_out(&repo, &["log", "--format=%s", "prodigy/t"]);
        for n in 1..=24 {
            let merged = log.lines().filter(|l| *l == format!("item {n}")).count();
            assert_eq!(merged, 1, "item {n} in\n{log}");
        }
        assert_fsck_clean(&env);
    });
}

/// Data that would nest too deep as a condition (10,000 `!` in an item used as `when:`)
/// is a value, never parsed (issue 19): its item fails into the DLQ with a one-line reason
/// (the value is neither true nor false), as does `!true`; the other items run, and
/// `resume` has nothing left to trip on. Filters of 50,000 `!` or 10,000 `(` are one-line
/// errors.
#[test]
fn a_condition_too_deep_fails_its_item_and_the_job_goes_on() {
    let env = Env::new();
    let repo = repo(&env, "deep");
    let flag = format!("{}true", "!".repeat(10_000));
    let items = serde_json::json!([{"id": 1, "flag": "true"}, {"id": 2, "flag": flag}, {"id": 3, "flag": "!true"}]);
    write(&repo, "items.json", &items.to_string());
    write(
        &repo,
        "w.yml",
        "name: deep\nmap:\n  input: items.json\n  agent_template:\n    - shell: echo ran-${item.id}\n      when: \"${item.flag}\"\nerror_policy:\n  on_item_failure: dlq\n",
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "items"]);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "d"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("overflow"), "{}", transcript(&out));
    let show = job_show(&env, &repo, "d");
    assert_eq!(show["phase"], "complete", "{show}");
    assert_eq!(
        (show["done"].as_u64(), show["failed"].as_u64()),
        (Some(1), Some(2)),
        "{show}"
    );
    let dlq = ok_in(&env, &repo, &["dlq", "list", "d", "--json"]);
    assert_eq!(dlq.matches("is neither true nor false").count(), 2, "{dlq}");
    let out = in_repo(&env, &repo, &["resume", "d"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    for filter in [
        format!("{}failure_count > 0", "!".repeat(50_000)),
        format!("{}failure_count > 0", "(".repeat(10_000)),
    ] {
        let out = in_repo(&env, &repo, &["dlq", "list", "d", "--filter", &filter]);
        let stderr = assert_one_line_error(&out, 2);
        assert!(stderr.len() < 400, "{stderr}");
    }
    // And in the workflow: a load error naming the line.
    let deep = "(".repeat(10_000);
    write(
        &repo,
        "f.yml",
        &format!(
            "name: f\nmap:\n  input: items.json\n  filter: \"{deep}id > 1\"\n  agent_template:\n    - shell: 'true'\n"
        ),
    );
    let out = in_repo(&env, &repo, &["run", "f.yml", "--job-id", "f"]);
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("f.yml:4") && stderr.contains("nested deeper than 64"),
        "{stderr}"
    );
    write(
        &repo,
        "j.yml",
        &format!(
            "name: j\nmap:\n  input: items.json\n  json_path: \"$[?{deep}@.id > 1\"\n  agent_template:\n    - shell: 'true'\n"
        ),
    );
    let out = in_repo(&env, &repo, &["run", "j.yml", "--job-id", "j"]);
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("j.yml:4") && stderr.contains("nested deeper than 64"),
        "{stderr}"
    );
}

/// An agent's capture reaches reduce whole (200 KB then `END`, past the old 64 KiB cut),
/// and a capture over the 1 MiB limit (3 MB, and 1.1 MB of `capture_format: json`) fails
/// its item naming the limit instead of being cut.
#[test]
fn captures_are_whole_or_an_error_naming_the_limit() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "big");
    write(
        &repo,
        "w.yml",
        &format!(
            "name: big
map:
  input: seq 1 2
  agent_template:
    - shell: n=200000; [ ${{item}} = 1 ] || n=3000000; head -c $n /dev/zero | tr '\\0' a; echo END
      capture_output: out
error_policy:
  on_item_failure: dlq
reduce:
  - shell: python3 -c \"import json,os; r=json.load(open(os.environ['PRODIGY_MAP_RESULTS'])); d=[x for x in r if x['status']=='done']; print(len(d), len(d[0]['output']), d[0]['output'].endswith('END'))\" > {}/reduce
",
            marks.display()
        ),
    );
    write(
        &repo,
        "j.yml",
        "name: j
map:
  input: seq 1 1
  agent_template:
    - shell: printf '\"'; head -c 1100000 /dev/zero | tr '\\0' c; printf '\"'
      capture_output: out
      capture_format: json
error_policy:
  on_item_failure: dlq
",
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "b"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    // Item 1 printed 200,000 bytes and END (whole in reduce); item 2 3,000,000 (failed).
    let show = job_show(&env, &repo, "b");
    assert_eq!(
        (show["done"].as_u64(), show["failed"].as_u64()),
        (Some(1), Some(1)),
        "{show}"
    );
    assert_eq!(
        std::fs::read_to_string(marks.join("reduce"))
            .unwrap()
            .trim(),
        "1 200003 True"
    );
    let dlq = ok_in(&env, &repo, &["dlq", "list", "b", "--json"]);
    assert!(dlq.contains("MiB a capture holds"), "{dlq}");
    let out = in_repo(&env, &repo, &["run", "j.yml", "--job-id", "j"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    let dlq = ok_in(&env, &repo, &["dlq", "list", "j", "--json"]);
    assert!(dlq.contains("MiB a capture holds"), "{dlq}");
    assert!(!dlq.contains("EOF while parsing"), "{dlq}");
}

/// Bytes that are not UTF-8 are never replaced (U+FFFD): a line item is refused by number
/// with its bytes shown, a capture fails its item naming the byte, and text that is UTF-8
/// beside them goes through unchanged.
#[test]
fn bytes_that_are_not_utf8_are_refused_by_name_never_altered() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "bytes");
    write(
        &repo,
        "names.yml",
        "name: names
map:
  input: printf 'caf\\351.txt\\nok.txt\\n'
  agent_template:
    - shell: 'true'
",
    );
    let out = in_repo(&env, &repo, &["run", "names.yml", "--job-id", "n"]);
    assert_one_line_error(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 1 of the output of") && stderr.contains(r#"caf\xe9.txt"#),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{fffd}'), "{stderr}");
    write(
        &repo,
        "out.yml",
        &format!(
            "name: out
map:
  input: seq 1 2
  agent_template:
    - shell: if [ ${{item}} = 1 ]; then printf '\\377\\376'; else printf 'caf\\303\\251'; fi
      capture_output: out
error_policy:
  on_item_failure: dlq
reduce:
  - shell: python3 -c \"import json,os; r=json.load(open(os.environ['PRODIGY_MAP_RESULTS'])); print([x['output'] for x in r if x['status']=='done'])\" > {}/reduce
",
            marks.display()
        ),
    );
    let out = in_repo(&env, &repo, &["run", "out.yml", "--job-id", "o"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    let show = job_show(&env, &repo, "o");
    assert_eq!(
        (show["done"].as_u64(), show["failed"].as_u64()),
        (Some(1), Some(1)),
        "{show}"
    );
    assert_eq!(
        std::fs::read_to_string(marks.join("reduce"))
            .unwrap()
            .trim(),
        "['café']"
    );
    let dlq = ok_in(&env, &repo, &["dlq", "list", "o", "--json"]);
    assert!(
        dlq.contains(r#"capture out: the output is not UTF-<n> at byte <n> (\"\\xff\\xfe\")"#),
        "{dlq}"
    );
}

/// A step whose environment or command is over what Linux starts (E2BIG) fails the job
/// as failed, naming the variable that is too big and what to do — never a job left in
/// `setup` with no error.
#[test]
fn an_environment_too_big_to_start_a_step_fails_the_job_with_a_hint() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "e2big");
    let big = "a".repeat(200_000);
    for (name, setup) in [("input", ""), ("setup", "setup:\n  - shell: echo hi\n")] {
        write(
            &repo,
            &format!("{name}.yml"),
            &format!(
                "name: {name}\nenv:\n  BIG: {big}\n{setup}map:\n  input: seq 1 2\n  agent_template:\n    - shell: 'true'\n"
            ),
        );
        let out = in_repo(
            &env,
            &repo,
            &["run", &format!("{name}.yml"), "--job-id", name],
        );
        assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("too big to start a program")
                && stderr.contains("the largest is the variable BIG (200004 bytes)")
                && stderr.contains("pass big values in a file"),
            "{stderr}"
        );
        let show = job_show(&env, &repo, name);
        assert_eq!(show["status"], "failed:setup", "{show}");
        assert!(
            show["error"].as_str().is_some_and(|e| e.contains("BIG")),
            "{show}"
        );
    }
}
