//! A job as a user sees it (issue 24): its output on the terminal, `--json` and exit
//! codes, its logs in the store, its worktrees, its status while it runs and after its
//! runner dies, the original's spellings, and the messages of bad arguments.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Env, IDENTITY, git, init_repo, transcript};
use crate::runner::{git_out, in_repo, json_in, ok_in, spawn_in, wait_for, write};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository holding `w.yml` (committed), in the env's scratch directory.
fn repo_with(env: &Env, name: &str, workflow: &str) -> PathBuf {
    let repo = init_repo(env.scratch().join(name));
    write(&repo, "w.yml", workflow);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "workflow"]);
    repo
}

/// Three items; the second fails; setup, agents and reduce print markers.
fn three_items() -> String {
    format!(
        "name: three\n{IDENTITY}setup:\n  - shell: echo SETUP-SAYS-HELLO\n\
         map:\n  input: \"printf 'a\\\\nb\\\\nc\\\\n'\"\n  max_parallel: 1\n  agent_template:\n    \
         - shell: echo AGENT-SAYS-${{item}}; test ${{item}} != b\n\
         reduce:\n  - shell: echo REDUCE-SAYS-${{map.successful}}-of-${{map.total}}\n"
    )
}

#[test]
fn a_run_shows_its_steps_output_and_exits_3_when_items_failed() {
    let env = Env::new();
    let repo = repo_with(&env, "shows", &three_items());
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "s1"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    let said = stderr(&out);
    // The job's result is on the terminal as it runs; agents' output only with -v.
    assert!(said.contains("  | SETUP-SAYS-HELLO"), "{said}");
    assert!(said.contains("  | REDUCE-SAYS-2-of-3"), "{said}");
    assert!(!said.contains("AGENT-SAYS"), "{said}");
    assert!(said.contains("exit code 3: items failed"), "{said}");
    assert_eq!(stdout(&out).trim(), "s1");
    let repo = repo_with(&env, "verbose", &three_items());
    let out = in_repo(&env, &repo, &["-v", "run", "w.yml", "--job-id", "v1"]);
    assert!(
        stderr(&out).contains("[agent-0] AGENT-SAYS-a"),
        "{}",
        stderr(&out)
    );
    // --json: one summary object, nothing else on stdout.
    let repo = repo_with(&env, "json", &three_items());
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "j1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    let summary: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (
            &summary["job"],
            &summary["status"],
            &summary["done"],
            &summary["failed"]
        ),
        (&"j1".into(), &"complete".into(), &2.into(), &1.into()),
        "{summary}"
    );
    assert_eq!(summary["exit_code"], 3);
    assert!(!stderr(&out).contains("SETUP-SAYS"), "{}", stderr(&out));
    // dlq retry --json says the same way: the item still fails, so still exit 3.
    let out = in_repo(&env, &repo, &["dlq", "retry", "j1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    let retried: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(retried["failed"].as_array().unwrap().len(), 1, "{retried}");
    // A job that stops: --json still says which and why.
    let repo = repo_with(
        &env,
        "stops",
        &three_items().replace("reduce:", "error_policy:\n  on_item_failure: stop\nreduce:"),
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "x1", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let summary: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["status"], "failed", "{summary}");
    // Resumed, it runs the item left: complete, one failed, exit 3.
    let out = in_repo(&env, &repo, &["resume", "x1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
}

#[test]
fn every_steps_output_is_in_the_store_after_the_worktrees_are_gone() {
    let env = Env::new();
    let repo = repo_with(&env, "logs", &three_items());
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "l1"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    std::fs::remove_dir_all(env.home().join("worktrees")).unwrap();
    let logs = ok_in(&env, &repo, &["logs", "l1"]);
    for want in [
        "== setup/1 setup attempt 1: exit 0",
        "SETUP-SAYS-HELLO",
        "AGENT-SAYS-a",
        "AGENT-SAYS-c",
        "REDUCE-SAYS-2-of-3",
    ] {
        assert!(logs.contains(want), "{want}: {logs}");
    }
    // The failed item's output is there too, with its exit code.
    assert!(logs.contains("map/1 agent-1 item "), "{logs}");
    assert!(logs.contains("exit 1"), "{logs}");
    let only = ok_in(&env, &repo, &["logs", "l1", "--step", "reduce/1"]);
    assert!(
        only.contains("REDUCE-SAYS") && !only.contains("SETUP-SAYS"),
        "{only}"
    );
    let item = json_in(&env, &repo, &["dlq", "list", "l1", "--json"])[0]["item_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let one = ok_in(&env, &repo, &["logs", "l1", "--item", &item]);
    assert!(
        one.contains("AGENT-SAYS-b") && !one.contains("AGENT-SAYS-a"),
        "{one}"
    );
    // gc keeps what the job's events name, and fsck finds everything whole.
    ok_in(&env, &repo, &["gc", "--prune", "now"]);
    ok_in(&env, &repo, &["fsck"]);
    assert_eq!(ok_in(&env, &repo, &["logs", "l1"]), logs);
}

#[test]
fn logs_and_events_follow_a_running_job_to_its_end() {
    let env = Env::new();
    let repo = repo_with(
        &env,
        "follow",
        "- shell: echo FIRST; sleep 1\n- shell: echo SECOND; sleep 1\n- shell: echo THIRD\n",
    );
    let mut job = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", "f1"]);
    wait_for("the session", Duration::from_secs(30), || {
        json_in(&env, &repo, &["jobs", "--json"])
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    let logs = in_repo(&env, &repo, &["logs", "f1", "--follow"]);
    assert_eq!(logs.status.code(), Some(0), "{}", transcript(&logs));
    let text = stdout(&logs);
    let at = |w: &str| text.find(w).unwrap_or_else(|| panic!("{w}: {text}"));
    assert!(
        at("FIRST") < at("SECOND") && at("SECOND") < at("THIRD"),
        "{text}"
    );
    let events = in_repo(&env, &repo, &["events", "follow", "f1", "--from-start"]);
    assert_eq!(events.status.code(), Some(0), "{}", transcript(&events));
    assert!(
        stdout(&events).contains("job_completed"),
        "{}",
        stdout(&events)
    );
    assert!(job.wait().unwrap().success());
    // An unknown job is refused at once.
    let out = in_repo(&env, &repo, &["events", "follow", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("no events for job nosuch"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn jobs_tell_running_from_interrupted_and_follow_sees_the_runner_die() {
    let env = Env::new();
    let repo = repo_with(&env, "status", "- shell: sleep 60\n");
    let mut job = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", "r1"]);
    let running = || {
        json_in(&env, &repo, &["jobs", "--json"])
            .as_array()
            .and_then(|a| a.first().cloned())
            .unwrap_or_default()
    };
    wait_for("a running job", Duration::from_secs(30), || {
        running()["status"] == "running"
    });
    let row = running();
    assert_eq!(row["runner"]["pid"], job.id(), "{row}");
    assert!(row["runner"]["host"].is_string(), "{row}");
    let follower = spawn_in(&env, &repo, &["events", "follow", "r1"]);
    let pid = rustix::process::Pid::from_raw(job.id() as i32).unwrap();
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = job.wait();
    let follow = follower.wait_with_output().unwrap();
    assert_eq!(follow.status.code(), Some(1), "{}", transcript(&follow));
    assert!(
        stderr(&follow).contains("has no runner now"),
        "{}",
        stderr(&follow)
    );
    assert_eq!(running()["status"], "interrupted");
    let out = in_repo(&env, &repo, &["jobs"]);
    assert!(
        stderr(&out).contains("`prodigy resume r1`"),
        "{}",
        stderr(&out)
    );
    let show = ok_in(&env, &repo, &["jobs", "show", "r1"]);
    assert!(show.contains("runner:     none (interrupted)"), "{show}");
}

#[test]
fn jobs_show_limits_its_checkpoints() {
    let env = Env::new();
    let mut steps = String::new();
    for n in 0..14 {
        steps.push_str(&format!("- shell: echo {n}\n"));
    }
    let repo = repo_with(&env, "limit", &steps);
    ok_in(&env, &repo, &["run", "w.yml", "--job-id", "c1"]);
    let show = json_in(&env, &repo, &["jobs", "show", "c1", "--json"]);
    assert_eq!(show["checkpoints"].as_array().unwrap().len(), 10);
    assert!(show["checkpoint_count"].as_u64().unwrap() > 14, "{show}");
    let all = json_in(
        &env,
        &repo,
        &["jobs", "show", "c1", "--json", "--limit", "0"],
    );
    assert_eq!(
        all["checkpoints"].as_array().unwrap().len() as u64,
        show["checkpoint_count"].as_u64().unwrap()
    );
    let text = ok_in(&env, &repo, &["jobs", "show", "c1", "--limit", "3"]);
    assert!(text.contains("newest 3 of"), "{text}");
}

#[test]
fn worktrees_are_listed_cleaned_merged_and_jobs_removed() {
    let env = Env::new();
    let repo = repo_with(
        &env,
        "trees",
        &format!(
            "name: trees\n{IDENTITY}map:\n  input: \"printf 'a\\\\nb\\\\n'\"\n  agent_template:\n    \
             - shell: echo ${{item}} > out-${{item}}.txt && git add . && git commit -qm ${{item}} && test ${{item}} != b\n"
        ),
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "t1"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    let list = json_in(&env, &repo, &["worktree", "ls", "--json"]);
    let kinds: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["kind"].as_str().unwrap(), w["state"].as_str().unwrap()))
        .collect();
    // The job's worktree, and the failed agent's kept for inspection.
    assert_eq!(kinds, [("job", "complete"), ("agent", "failed")]);
    let failed = PathBuf::from(list[1]["path"].as_str().unwrap());
    assert!(failed.join("out-b.txt").is_file());
    // The job is complete: a clean removes its worktree (asked: no answer on a pipe is
    // no), but not the failed agent's while its item is in the dead-letter queue (its
    // uncommitted work is what the queue's entry points at); --all removes that too.
    let out = in_repo(&env, &repo, &["worktree", "clean"]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(failed.exists());
    let dry = ok_in(&env, &repo, &["worktree", "clean", "--dry-run"]);
    assert_eq!(dry.lines().count(), 1, "{dry}");
    assert!(!dry.contains("failed"), "{dry}");
    ok_in(&env, &repo, &["worktree", "clean", "-y"]);
    assert!(failed.join("out-b.txt").is_file());
    ok_in(&env, &repo, &["worktree", "clean", "--all", "-y"]);
    assert!(!failed.exists());
    assert!(
        json_in(&env, &repo, &["worktree", "ls", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let registered = std::process::Command::new("git")
        .args(["worktree", "list"])
        .current_dir(&repo)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&registered).lines().count(),
        1,
        "{}",
        stdout(&registered)
    );
    // The result comes into the current branch by its original name.
    ok_in(&env, &repo, &["worktree", "merge", "t1"]);
    assert!(repo.join("out-a.txt").is_file());
    // jobs rm: asked, then the refs go (the branch stays).
    ok_in(&env, &repo, &["jobs", "rm", "t1", "-y"]);
    assert_eq!(
        in_repo(&env, &repo, &["jobs", "show", "t1"]).status.code(),
        Some(1)
    );
    assert_eq!(
        in_repo(&env, &repo, &["events", "show", "t1"])
            .status
            .code(),
        Some(1)
    );
    assert!(
        json_in(&env, &repo, &["dlq", "stats", "--json"])["jobs"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    );
    git(&repo, &["rev-parse", "--verify", "-q", "prodigy/t1"]);
}

/// `worktree clean` and `jobs rm` forget git's registrations of the job's own worktrees
/// whose directories are gone, and only those: a user's worktree whose directory is away
/// (on a disk not mounted now) keeps its registration. They ran `git worktree prune`,
/// which forgot it.
#[test]
fn cleaning_a_job_forgets_only_its_own_worktrees() {
    let env = Env::new();
    let repo = repo_with(&env, "own", &three_items());
    let usb = env.scratch().join("usb-wt");
    git(
        &repo,
        &["worktree", "add", "-q", "-b", "usb", usb.to_str().unwrap()],
    );
    std::fs::rename(&usb, env.scratch().join("usb-wt.unmounted")).unwrap();
    let users = |repo: &std::path::Path| {
        git_out(repo, &["worktree", "list", "--porcelain"]).contains("usb-wt\n")
    };
    assert!(users(&repo));
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "c1"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    ok_in(&env, &repo, &["worktree", "clean", "--all", "-y"]);
    assert!(users(&repo));
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "c2"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    // The job's worktrees deleted by hand: their registrations go with the job.
    let list = json_in(&env, &repo, &["worktree", "ls", "--json"]);
    let paths: Vec<PathBuf> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| PathBuf::from(w["path"].as_str().unwrap()))
        .collect();
    assert_eq!(paths.len(), 2, "{list}");
    for p in &paths {
        std::fs::remove_dir_all(p).unwrap();
    }
    ok_in(&env, &repo, &["jobs", "rm", "c2", "-y"]);
    let listed = git_out(&repo, &["worktree", "list", "--porcelain"]);
    assert!(!listed.contains("c2@"), "{listed}");
    assert!(users(&repo), "{listed}");
}

#[test]
fn a_running_jobs_worktrees_are_never_cleaned() {
    let env = Env::new();
    let repo = repo_with(&env, "busy", "- shell: sleep 30\n");
    let mut job = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", "b1"]);
    wait_for("a running job", Duration::from_secs(30), || {
        json_in(&env, &repo, &["jobs", "--json"])
            .as_array()
            .and_then(|a| a.first().cloned())
            .is_some_and(|r| r["status"] == "running")
    });
    let out = in_repo(&env, &repo, &["worktree", "clean", "--job", "b1", "-y"]);
    assert!(
        stderr(&out).contains("job b1 runs now"),
        "{}",
        transcript(&out)
    );
    let list = json_in(&env, &repo, &["worktree", "ls", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let pid = rustix::process::Pid::from_raw(job.id() as i32).unwrap();
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = job.wait();
}

#[test]
fn squashed_merges_put_one_commit_per_agent_on_the_branch() {
    let env = Env::new();
    let repo = repo_with(
        &env,
        "squash",
        &format!(
            "name: squash\n{IDENTITY}map:\n  input: \"printf 'a\\\\nb\\\\nc\\\\n'\"\n  merge: squash\n  agent_template:\n    \
             - shell: echo 1 > ${{item}}.txt && git add . && git commit -qm one\n    \
             - shell: echo 2 >> ${{item}}.txt && git add . && git commit -qm two\n"
        ),
    );
    ok_in(&env, &repo, &["run", "w.yml", "--job-id", "q1"]);
    let log = std::process::Command::new("git")
        .args(["log", "--format=%s", "main..prodigy/q1"])
        .current_dir(&repo)
        .output()
        .unwrap();
    let subjects: Vec<String> = stdout(&log).lines().map(str::to_owned).collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    assert!(
        subjects.iter().all(|s| s.ends_with("2 commits squashed")),
        "{subjects:?}"
    );
    for item in ["a", "b", "c"] {
        let shown = std::process::Command::new("git")
            .args(["show", &format!("prodigy/q1:{item}.txt")])
            .current_dir(&repo)
            .output()
            .unwrap();
        assert_eq!(stdout(&shown), "1\n2\n");
    }
}

#[test]
fn dlq_commands_name_items_and_take_the_job_either_way() {
    let env = Env::new();
    let repo = repo_with(
        &env,
        "names",
        &format!(
            "name: names\n{IDENTITY}map:\n  input: items.json\n  agent_template:\n    - shell: test ${{item.id}} != beta\n"
        ),
    );
    write(&repo, "items.json", r#"[{"id": "alpha"}, {"id": "beta"}]"#);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "items"]);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "n1"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    let list = ok_in(&env, &repo, &["dlq", "list", "n1"]);
    assert!(list.lines().nth(1).unwrap().contains(" beta "), "{list}");
    let key = json_in(&env, &repo, &["dlq", "list", "--job-id", "n1", "--json"])[0]["item_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for args in [
        vec!["dlq", "inspect", &key, "n1"],
        vec!["dlq", "inspect", &key, "--job-id", "n1"],
        vec!["dlq", "inspect", &key, "--job", "n1"],
    ] {
        assert!(ok_in(&env, &repo, &args).contains("item:"), "{args:?}");
    }
    let out = in_repo(&env, &repo, &["dlq", "list", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(stderr(&out).contains("no job 'nosuch'"), "{}", stderr(&out));
    // The original's `dlq clear`: asked, then empty.
    ok_in(&env, &repo, &["dlq", "clear", "n1", "--yes"]);
    assert_eq!(ok_in(&env, &repo, &["dlq", "list", "n1"]), "");
}

#[test]
fn bad_arguments_exit_2_and_unknown_jobs_are_told_from_empty_results() {
    let env = Env::new();
    let repo = repo_with(&env, "args", "- shell: \"true\"\n");
    for (args, says) in [
        (vec!["run", "w.yml", "--job-id", "../x"], "invalid job id"),
        (vec!["run", "w.yml", "--job-id", "a/b"], "invalid job id"),
        (
            vec!["events", "show", "x", "--since", "yesterday"],
            "--since",
        ),
        (vec!["jobs", "show", &"j".repeat(200)], "invalid job id"),
        (vec!["resume", "-"], "invalid job id"),
    ] {
        let out = in_repo(&env, &repo, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", transcript(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    ok_in(&env, &repo, &["run", "w.yml", "--job-id", "e1"]);
    // An empty search exits 1 quietly; an unknown job is an error, exit 2, as grep.
    let empty = in_repo(&env, &repo, &["events", "search", "zzz-no-such-text", "e1"]);
    assert_eq!(empty.status.code(), Some(1), "{}", transcript(&empty));
    assert!(!stderr(&empty).contains("error"), "{}", stderr(&empty));
    let unknown = in_repo(&env, &repo, &["events", "search", "x", "nosuch"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", transcript(&unknown));
    assert!(stderr(&unknown).contains("error: no events for job nosuch"));
    // --version names the commit it was built from.
    let version = ok_in(&env, &repo, &["--version"]);
    assert!(version.contains("(commit "), "{version}");
}

#[test]
fn a_read_only_command_makes_no_store_in_the_repository() {
    let env = Env::new();
    let repo = init_repo(env.scratch().join("local"));
    for args in [
        vec!["jobs"],
        vec!["events", "ls"],
        vec!["dlq", "stats"],
        vec!["worktree", "ls"],
    ] {
        let out = env
            .cmd()
            .current_dir(&repo)
            .env_remove("PRODIGY_HOME")
            .env("PRODIGY_USE_LOCAL_STORAGE", "true")
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", transcript(&out));
        assert!(!repo.join(".prodigy").exists(), "{args:?} made .prodigy/");
    }
}

#[test]
fn the_originals_spellings_are_our_commands() {
    let env = Env::new();
    let repo = repo_with(&env, "spell", "- shell: \"true\"\n");
    ok_in(&env, &repo, &["run", "w.yml", "--job-id", "s1"]);
    let stats = json_in(
        &env,
        &repo,
        &[
            "events",
            "stats",
            "--job-id",
            "s1",
            "--group-by",
            "event_type",
            "--json",
        ],
    );
    assert_eq!(stats["total"]["types"]["job_completed"], 1, "{stats}");
    assert!(ok_in(&env, &repo, &["sessions", "ls"]).contains("s1"));
    assert!(ok_in(&env, &repo, &["sessions", "show", "s1"]).contains("phase:      complete"));
    assert!(ok_in(&env, &repo, &["checkpoints", "list"]).contains("s1"));
    assert!(ok_in(&env, &repo, &["checkpoints", "show", "s1"]).contains("checkpoints ("));
    assert!(ok_in(&env, &repo, &["resume-job", "s1"]).contains("s1"));
    ok_in(&env, &repo, &["clean", "worktrees", "-f"]);
    assert!(
        json_in(&env, &repo, &["worktree", "ls", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    ok_in(&env, &repo, &["clean", "logs", "-f"]);
    ok_in(&env, &repo, &["clean", "dlq", "--dry-run"]);
    ok_in(&env, &repo, &["clean", "events", "--dry-run"]);
    ok_in(&env, &repo, &["sessions", "clean", "-f"]);
    assert_eq!(
        json_in(&env, &repo, &["jobs", "--json"]),
        Value::Array(Vec::new())
    );
}

/// A job whose state ref is broken (garbage in its `HEAD`) or names a missing checkpoint
/// is named and skipped by `jobs`, which lists the others (it failed for the whole repo);
/// `ref delete` without `--old` removes a broken ref, as git does, its reflog saying so;
/// `jobs rm` removes a broken ref too (it reported the job deleted while the ref stayed).
#[test]
fn a_broken_job_is_skipped_by_jobs_and_removed_by_ref_delete_or_jobs_rm() {
    let env = Env::new();
    let repo = repo_with(&env, "broken", "- shell: \"true\"\n");
    for job in ["good", "bad", "gone", "rm"] {
        ok_in(&env, &repo, &["run", "w.yml", "--job-id", job]);
    }
    let head = |job: &str| env.home().join(format!("state/broken/{job}/HEAD"));
    for job in ["bad", "rm"] {
        std::fs::write(head(job), "garbage\n").unwrap();
    }
    std::fs::write(head("gone"), format!("{}\n", "1".repeat(64))).unwrap();
    let out = in_repo(&env, &repo, &["jobs"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let text = stdout(&out);
    let listed: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, ["good"]);
    let warnings = stderr(&out);
    assert!(
        warnings.contains("warning: skipping job bad of repo broken: ref state/broken/bad")
            && warnings.contains("is corrupt")
            && warnings.contains("warning: skipping job gone of repo broken: object 1111")
            && warnings.contains("not found"),
        "{warnings}"
    );
    // With --old there is no value to compare; without, the broken ref goes.
    let zeros = "0".repeat(64);
    let out = in_repo(
        &env,
        &repo,
        &["ref", "delete", "state/broken/bad", "--old", &zeros],
    );
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(stderr(&out).contains("hint: `prodigy ref delete <name>` removes a broken ref"));
    let out = in_repo(&env, &repo, &["ref", "delete", "state/broken/bad"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        stderr(&out)
            .contains("warning: deleted broken ref state/broken/bad (expected 64 hex digits"),
        "{}",
        transcript(&out)
    );
    assert!(!head("bad").exists());
    let log = ok_in(&env, &repo, &["ref", "log", "state/broken/bad"]);
    assert!(
        log.lines()
            .last()
            .unwrap()
            .contains("ref delete (broken: expected 64 hex digits"),
        "{log}"
    );
    // `--all-repos` lists by names, and skips the broken job as the repo's listing does.
    let out = in_repo(&env, &repo, &["jobs", "--all-repos"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("skipping job gone of repo broken"),
        "{}",
        transcript(&out)
    );
    // jobs rm of a job whose state ref and a writer's events ref are broken removes them.
    let writers = ok_in(&env, &repo, &["ref", "list", "events/broken/rm"]);
    let writer_ref = writers.split_whitespace().nth(1).unwrap().to_owned();
    let writer = writer_ref.rsplit('/').next().unwrap();
    let writer_head = env
        .home()
        .join(format!("events/broken/rm/writers/{writer}/HEAD"));
    assert!(writer_head.is_file(), "{}", writer_head.display());
    std::fs::write(&writer_head, "garbage\n").unwrap();
    let registered = |repo: &std::path::Path| {
        git_out(repo, &["worktree", "list", "--porcelain"]).contains("rm@job")
    };
    assert!(registered(&repo));
    let out = in_repo(&env, &repo, &["jobs", "rm", "rm", "-y"]);
    assert!(out.status.success(), "{}", transcript(&out));
    // Without the checkpoint, its worktrees are found in the job's directory, and git's
    // registrations of them pruned (they were left, the files gone).
    assert!(
        stderr(&out).contains("(2 refs, 1 worktrees)"),
        "{}",
        transcript(&out)
    );
    assert!(!registered(&repo));
    assert!(
        stdout(&out).contains("deleted state/broken/rm"),
        "{}",
        transcript(&out)
    );
    assert!(
        stdout(&out).contains(&format!("deleted {writer_ref}")),
        "{}",
        transcript(&out)
    );
    assert!(!head("rm").exists() && !writer_head.exists());
    // A ref that reads fine is deleted by compare-and-swap as ever, not as broken.
    let out = in_repo(&env, &repo, &["ref", "delete", "state/broken/gone"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(!stderr(&out).contains("broken"), "{}", transcript(&out));
    let log = ok_in(&env, &repo, &["ref", "log", "state/broken/gone"]);
    assert!(
        log.lines().last().unwrap().ends_with(" ref delete"),
        "{log}"
    );
    let jobs = json_in(&env, &repo, &["jobs", "--json"]);
    let jobs: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["good"]);
}

/// `events follow` of a complete job that `dlq retry` is running again follows the retry
/// to its end (it said "job is complete" at once and missed the retry's events).
#[test]
fn follow_keeps_following_a_complete_job_while_a_retry_runs() {
    let env = Env::new();
    let marks = env.scratch().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    let repo = repo_with(
        &env,
        "followretry",
        &format!(
            "name: w\n{IDENTITY}map:\n  input: \"printf '1\\\\n2\\\\n'\"\n  agent_template:\n    - shell: \"test ${{item}} = 1 || {{ test -f {m}/fixed && while [ ! -e {m}/go ]; do sleep 0.05; done; }}\"\n"
        ),
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "fr"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    std::fs::write(marks.join("fixed"), "").unwrap();
    let mut retry = spawn_in(&env, &repo, &["dlq", "retry", "fr"]);
    wait_for("the retry's agent", Duration::from_secs(30), || {
        let events = in_repo(&env, &repo, &["events", "show", "fr", "--json"]);
        stdout(&events).matches("\"agent_started\"").count() >= 3
    });
    // From now on, and from the start (which reads the first run's job_completed).
    let mut followers = [
        spawn_in(&env, &repo, &["events", "follow", "fr", "--json"]),
        spawn_in(
            &env,
            &repo,
            &["events", "follow", "fr", "--json", "--from-start"],
        ),
    ];
    // Each asks about the runner about once a second: past two of those, neither ended.
    std::thread::sleep(Duration::from_millis(2500));
    for follower in &mut followers {
        assert!(
            follower.try_wait().unwrap().is_none(),
            "follow ended while the retry ran"
        );
    }
    std::fs::write(marks.join("go"), "").unwrap();
    assert!(retry.wait().unwrap().success());
    let all = stdout(&in_repo(&env, &repo, &["events", "show", "fr", "--json"]));
    for follower in followers {
        let follow = follower.wait_with_output().unwrap();
        assert_eq!(follow.status.code(), Some(0), "{}", transcript(&follow));
        // The retry's own events to the log's last, read after the runner let go.
        let text = stdout(&follow);
        assert!(
            text.contains("\"dlq_items_reprocessed\"") && text.lines().last() == all.lines().last(),
            "{}",
            transcript(&follow)
        );
    }
}
