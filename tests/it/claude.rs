//! `claude:` steps end to end, against the stand-in `tests/claude/claude` (the real Claude
//! Code CLI is not installed here; the stand-in honours its arguments and writes its
//! stream-json shapes). Real repositories, worktrees and processes; SIGKILL and resume.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Env, git, transcript};
use crate::runner::{repo_and_marks, wait_for, write};

/// A directory holding `claude`, the stand-in, for the front of `PATH`.
pub(crate) fn standin_bin(env: &Env) -> PathBuf {
    let bin = env.dir.path().join("bin");
    if !bin.exists() {
        std::fs::create_dir_all(&bin).unwrap();
        let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/claude/claude");
        std::os::unix::fs::symlink(standin, bin.join("claude")).unwrap();
    }
    bin
}

pub(crate) fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `prodigy` in `repo` with a git identity for the commits Claude makes (the stand-in's
/// commands commit with the environment they are given).
fn prodigy(env: &Env, repo: &Path) -> std::process::Command {
    let mut cmd = env.std_cmd();
    cmd.current_dir(repo);
    for (k, v) in [("GIT_AUTHOR", "author"), ("GIT_COMMITTER", "committer")] {
        cmd.env(format!("{k}_NAME"), v)
            .env(format!("{k}_EMAIL"), format!("{v}@example.com"));
    }
    cmd
}

/// `prodigy args…` in `repo` with the stand-in on the PATH and `vars` set.
pub(crate) fn run_in(env: &Env, repo: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = prodigy(env, repo);
    cmd.args(args).env("PATH", path_with(&standin_bin(env)));
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub(crate) fn ok(env: &Env, repo: &Path, args: &[&str], vars: &[(&str, &str)]) -> String {
    let out = run_in(env, repo, args, vars);
    assert!(out.status.success(), "{args:?}: {}", transcript(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn json(env: &Env, repo: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(env, repo, args, &[])).unwrap()
}

/// A Claude command of the repository: `.claude/commands/<name>.md` whose `sh` block the
/// stand-in runs.
pub(crate) fn command(repo: &Path, name: &str, script: &str) {
    let dir = repo.join(".claude/commands");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.md")),
        format!("# /{name}\n\nDo the work.\n\n```sh\n{script}\n```\n"),
    )
    .unwrap();
}

pub(crate) fn commit_all(repo: &Path) {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", "workflow"]);
}

/// The `total_cost_usd` of a JSON line, as written, in millionths of a dollar (exact).
fn micro_dollars(text: &str) -> u64 {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let frac = format!("{frac:0<6}");
    assert!(frac.len() == 6, "more than 6 decimals: {text}");
    whole.parse::<u64>().unwrap() * 1_000_000 + frac.parse::<u64>().unwrap()
}

fn cost_field(line: &str) -> Option<&str> {
    let at = line.find("\"total_cost_usd\": ")? + "\"total_cost_usd\": ".len();
    let rest = &line[at..];
    Some(&rest[..rest.find([',', '}']).unwrap()])
}

/// The original's documentation-drift shape: Claude in setup, two Claude steps per agent
/// (the second must commit), a shell capture, and Claude in reduce reading the map.
fn drift_workflow(repo: &Path, marks: &Path, items: usize, pause: &str) {
    command(
        repo,
        "docs-drift-analyze",
        &format!(
            "echo \"$ARGUMENTS\" >> {}/analyze.log\nsleep {pause}\necho \"RESULT: analyzed $ARGUMENTS\"",
            marks.display()
        ),
    );
    command(
        repo,
        "docs-drift-update",
        &format!(
            "area=$(printf %s \"$ARGUMENTS\" | sed -n \"s/.*--area '\\(.*\\)'$/\\1/p\")\n\
             echo \"$area\" >> {}/update-$area\n\
             echo \"fixed $area\" > \"fixed-$area.md\" && git add \"fixed-$area.md\" && \
             git commit -qm \"docs: $area\" && echo \"RESULT: fixed $area\"",
            marks.display()
        ),
    );
    command(
        repo,
        "docs-summary",
        "echo \"RESULT: $(ls fixed-*.md | wc -l | tr -d ' ') areas fixed\"",
    );
    let areas: Vec<String> = (1..=items)
        .map(|n| format!("{{\"name\": \"area{n}\", \"priority\": \"high\"}}"))
        .collect();
    write(
        repo,
        "doc-areas.json",
        &format!("{{\"areas\": [{}]}}", areas.join(", ")),
    );
    write(
        repo,
        "w.yml",
        "name: documentation-drift-parallel\n\
         mode: mapreduce\n\
         setup:\n\
         \x20 - claude: \"/docs-drift-analyze\"\n\
         \x20   commit_required: false\n\
         map:\n\
         \x20 input: doc-areas.json\n\
         \x20 json_path: \"$.areas[*]\"\n\
         \x20 agent_template:\n\
         \x20   - claude: \"/docs-drift-analyze --area '${item.name}'\"\n\
         \x20     commit_required: false\n\
         \x20     timeout: 300\n\
         \x20   - claude: \"/docs-drift-update critical --area '${item.name}'\"\n\
         \x20     commit_required: true\n\
         \x20     timeout: 300\n\
         \x20   - shell: \"echo \\\"${item.name} said ${claude.output}\\\"\"\n\
         \x20     capture_output: true\n\
         \x20 max_parallel: 2\n\
         reduce:\n\
         \x20 - claude: \"/docs-summary\"\n\
         \x20   capture_output: true\n\
         \x20 - shell: \"echo ${map.successful}/${map.total}: ${claude.output} > summary.txt && git add summary.txt && git commit -qm summary\"\n",
    );
    commit_all(repo);
}

#[test]
fn a_claude_mapreduce_runs_with_transcripts_tokens_and_cost_in_the_store() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "docs");
    drift_workflow(&repo, &marks, 3, "0");
    let calls_log = env.dir.path().join("calls.jsonl");
    let log = calls_log.to_str().unwrap();
    let out = ok(
        &env,
        &repo,
        &["run", "w.yml", "--job-id", "d1"],
        &[("STANDIN_LOG", log)],
    );
    assert_eq!(out, "d1\n");
    let show = json(&env, &repo, &["jobs", "show", "d1", "--json"]);
    assert_eq!(show["phase"], "complete", "{show}");
    assert_eq!(show["done"], 3);
    // The agents' commits are merged; reduce read the map and Claude's result.
    let worktree = PathBuf::from(show["worktree"].as_str().unwrap());
    for n in 1..=3 {
        assert!(worktree.join(format!("fixed-area{n}.md")).is_file());
    }
    assert_eq!(
        std::fs::read_to_string(worktree.join("summary.txt")).unwrap(),
        "3/3: 3 areas fixed\n"
    );
    // Each call got the original's arguments, empty stdin (not a terminal), and the
    // environment the original's commands read.
    let calls: Vec<Value> = std::fs::read_to_string(&calls_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 8, "1 setup + 2 × 3 agents + 1 reduce");
    let agent_call = calls
        .iter()
        .find(|c| c["argv"][4] == "/docs-drift-update critical --area 'area2'")
        .expect("the command is one argument, interpolated as written");
    assert_eq!(
        agent_call["argv"],
        serde_json::json!([
            "--output-format",
            "stream-json",
            "--verbose",
            "--dangerously-skip-permissions",
            "/docs-drift-update critical --area 'area2'"
        ])
    );
    assert_eq!(agent_call["stdin_tty"], false);
    assert_eq!(agent_call["stdin"], "");
    assert_eq!(agent_call["env"]["PRODIGY_AUTOMATION"], "true");
    assert_eq!(agent_call["env"]["PRODIGY_WORKTREE"], agent_call["cwd"]);
    assert!(agent_call["env"]["PRODIGY_ITEM_ID"].is_string());
    // `${claude.output}` of the step before, in the agent's result.
    let results = std::fs::read_to_string(worktree.parent().unwrap().join("map-results.json"))
        .unwrap_or_default();
    assert!(results.contains("fixed area2"), "{results}");

    // Transcripts: in the store, one per call, readable by step and item.
    let shown = ok(&env, &repo, &["logs", "d1"], &[]);
    let calls = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("== ") && l.contains(" tokens, "))
            .count()
    };
    assert_eq!(calls(&shown), 8, "{shown}");
    // Beside the calls, every shell step's output: 3 agents' and reduce's.
    assert_eq!(shown.lines().filter(|l| l.starts_with("== ")).count(), 12);
    assert!(
        shown.contains("== reduce/2 reduce attempt 1: exit 0"),
        "{shown}"
    );
    assert!(shown.contains("$ claude /docs-summary"), "{shown}");
    let second = ok(&env, &repo, &["logs", "d1", "--step", "map/2"], &[]);
    assert_eq!(second.lines().filter(|l| l.starts_with("== ")).count(), 3);
    assert!(second.contains("[result: fixed area1]"), "{second}");
    let raw = ok(&env, &repo, &["logs", "d1", "--json"], &[]);
    let lines: Vec<&str> = raw.lines().collect();
    assert!(
        lines
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
    let results: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("\"type\": \"result\""))
        .collect();
    assert_eq!(results.len(), 8);

    // Cost: the sum of the calls' own figures, exactly, in jobs show and events stats.
    let want: u64 = results
        .iter()
        .map(|l| micro_dollars(cost_field(l).unwrap()))
        .sum();
    let total = &show["claude"]["job"];
    assert_eq!(total["calls"], 8);
    assert_eq!(micro_dollars(&total["total_cost_usd"].to_string()), want);
    let stats = json(&env, &repo, &["events", "stats", "d1", "--json"]);
    assert_eq!(stats["claude"]["job"], *total);
    let per_step: u64 = stats["claude"]["steps"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| micro_dollars(&t["total_cost_usd"].to_string()))
        .sum();
    assert_eq!(per_step, want);
    assert_eq!(stats["claude"]["steps"]["map/2"]["calls"], 3);
    let input: u64 = results
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["usage"]["input_tokens"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(total["input_tokens"], input);
    let text = ok(&env, &repo, &["jobs", "show", "d1"], &[]);
    assert!(text.contains("claude:     8 calls (0 failed)"), "{text}");

    // The transcripts are reachable: fsck is clean, and gc keeps them.
    ok(&env, &repo, &["gc", "--prune", "now"], &[]);
    // (fsck exits non-zero on any error.)
    ok(&env, &repo, &["fsck"], &[]);
    assert_eq!(ok(&env, &repo, &["logs", "d1", "--json"], &[]), raw);
}

#[test]
fn sigkill_mid_map_delete_worktrees_resume_runs_no_finished_call_again() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "docs");
    drift_workflow(&repo, &marks, 8, "0.3");
    let mut cmd = prodigy(&env, &repo);
    cmd.args(["run", "w.yml", "--job-id", "k1"])
        .env("PATH", path_with(&standin_bin(&env)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let updated = |marks: &Path| {
        (1..=8)
            .filter(|n| marks.join(format!("update-area{n}")).exists())
            .count()
    };
    // Mid-map: an agent recorded done, others at work.
    wait_for("an agent recorded done", Duration::from_secs(90), || {
        updated(&marks) >= 3 && !recorded_done(&env).is_empty()
    });
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = child.wait();
    // What the checkpoint says was done before the crash must not run again.
    let before = recorded_done(&env);
    assert!(!before.is_empty() && before.len() < 8, "{before:?}");
    std::fs::remove_dir_all(env.home().join("worktrees")).unwrap();
    let out = ok(&env, &repo, &["resume", "k1"], &[]);
    assert_eq!(out, "k1\n");
    let show = json(&env, &repo, &["jobs", "show", "k1", "--json"]);
    assert_eq!(show["phase"], "complete", "{show}");
    assert_eq!(show["done"], 8);
    // Setup's call ran once (checkpointed), and so did every call of an agent recorded
    // done before the kill.
    let analyzed = std::fs::read_to_string(marks.join("analyze.log")).unwrap();
    assert_eq!(
        analyzed.lines().filter(|l| l.is_empty()).count(),
        1,
        "{analyzed}"
    );
    let finished = ok(
        &env,
        &repo,
        &[
            "events",
            "show",
            "k1",
            "--type",
            "claude_call_finished",
            "--json",
        ],
        &[],
    );
    let finished: Vec<Value> = finished
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for key in &before {
        let calls = finished
            .iter()
            .filter(|r| r["event"]["item_id"] == key.as_str())
            .count();
        assert_eq!(
            calls, 2,
            "item {key} was done before the kill: its 2 calls ran {calls} times"
        );
    }
    // Every call's transcript is still readable from the store, worktrees gone.
    let shown = ok(&env, &repo, &["logs", "k1"], &[]);
    let headers = shown.lines().filter(|l| l.starts_with("== ")).count();
    // Setup, 2 per agent, reduce: at least 18 calls.
    assert!(headers >= 18, "{shown}");
    assert!(!shown.contains("(no transcript was kept)"), "{shown}");
    ok(&env, &repo, &["fsck"], &[]);
}

#[test]
fn on_failure_claude_fixes_a_failing_shell_step() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "fixit");
    command(
        &repo,
        "fix-test",
        "echo \"$ARGUMENTS\" > repaired.txt && echo \"RESULT: repaired\"",
    );
    write(&repo, "items.json", "[{\"n\": 1}, {\"n\": 2}]");
    write(
        &repo,
        "w.yml",
        "name: w\n\
         mode: mapreduce\n\
         map:\n\
         \x20 input: items.json\n\
         \x20 agent_template:\n\
         \x20   - shell: \"test -f repaired.txt && echo passed ${item.n}\"\n\
         \x20     capture_output: true\n\
         \x20     on_failure:\n\
         \x20       claude: \"/fix-test the error was: ${shell.output}\"\n\
         \x20       max_attempts: 2\n",
    );
    commit_all(&repo);
    ok(&env, &repo, &["run", "w.yml", "--job-id", "f1"], &[]);
    let show = json(&env, &repo, &["jobs", "show", "f1", "--json"]);
    assert_eq!(show["phase"], "complete", "{show}");
    assert_eq!(show["done"], 2);
    assert_eq!(show["claude"]["steps"]["map/1/on_failure"]["calls"], 2);
    let logs = ok(
        &env,
        &repo,
        &["logs", "f1", "--step", "map/1/on_failure"],
        &[],
    );
    assert!(logs.contains("$ claude /fix-test the error was:"), "{logs}");
}

/// The original's bare strings: in a sequential workflow's steps a Claude command (its `/`
/// optional, arguments kept), as a top-level list too; in an on_failure list each a
/// command, Claude when it starts with `/`, else shell. Elsewhere a string is refused
/// naming its line (before, every bare string was "invalid type").
#[test]
fn bare_strings_are_the_originals_claude_and_handler_commands() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "bare");
    let f = marks.join("seen.txt");
    let f = f.display();
    // As the original's, a bare command must commit, all but prodigy-lint.
    command(
        &repo,
        "code-review",
        &format!("echo \"review $ARGUMENTS\" >> {f}; git commit -q --allow-empty -m review"),
    );
    command(&repo, "prodigy-lint", &format!("echo lint >> {f}"));
    command(&repo, "no-commit", &format!("echo no-commit >> {f}"));
    write(
        &repo,
        "w.yml",
        &format!(
            "commands:\n\
             \x20 - code-review --focus tests\n\
             \x20 - /prodigy-lint\n\
             \x20 - shell: exit 2\n\
             \x20   on_failure:\n\
             \x20     - echo cleanup >> {f}\n\
             \x20     - /prodigy-lint\n"
        ),
    );
    write(&repo, "list.yml", "- prodigy-lint\n- shell: 'true'\n");
    write(&repo, "none.yml", "- no-commit\n");
    write(
        &repo,
        "m.yml",
        "name: m\nmap:\n  input: \"echo a\"\n  agent_template:\n    - shell: 'true'\n    - lint\n",
    );
    commit_all(&repo);
    ok(&env, &repo, &["run", "w.yml", "--job-id", "b1"], &[]);
    let seen = std::fs::read_to_string(marks.join("seen.txt")).unwrap();
    // Three attempts of the failing step, its handlers between them.
    assert_eq!(
        seen,
        "review --focus tests\nlint\ncleanup\nlint\ncleanup\nlint\n"
    );
    ok(&env, &repo, &["run", "list.yml", "--job-id", "b2"], &[]);
    let seen = std::fs::read_to_string(marks.join("seen.txt")).unwrap();
    assert!(seen.ends_with("lint\nlint\n"), "{seen}");
    let out = run_in(&env, &repo, &["run", "m.yml", "--job-id", "b3"], &[]);
    let e = crate::common::assert_one_line_error(&out, 1);
    assert!(e.contains("m.yml:6: step 2 is the string \"lint\""), "{e}");
    let out = run_in(&env, &repo, &["run", "none.yml", "--job-id", "b4"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let said = transcript(&out);
    assert!(
        said.contains("commit_required: the step succeeded but made no commit"),
        "{said}"
    );
}

/// A Claude step's `on_failure` in a sequential workflow, as the original's sessions run
/// it (`OnFailureConfig::Advanced`, `max_retries: max_attempts - 1`): the handler once,
/// after the first failure (with `max_attempts: 1` too), then the step alone; the
/// workflow goes on unless `fail_workflow: true`. (It ran the handler between attempts,
/// as for a shell step, and never with one attempt.)
#[test]
fn a_claude_steps_handler_runs_once_then_the_step_alone() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "claudefix");
    let f = marks.join("calls.txt");
    let f = f.display();
    command(&repo, "flaky", &format!("echo flaky >> {f}; exit 1"));
    let args = marks.join("fix-args.txt");
    command(
        &repo,
        "fix",
        &format!("echo fix >> {f}; echo \"$ARGUMENTS\" >> {}", args.display()),
    );
    let run = |job: &str, extra: &str| {
        write(
            &repo,
            "w.yml",
            &format!(
                "commands:\n\
                 \x20 - claude: /flaky\n\
                 \x20   on_failure:\n\
                 \x20     claude: /fix ${{shell.output}}\n{extra}\
                 \x20 - shell: echo after >> {f}\n"
            ),
        );
        commit_all(&repo);
        ok(&env, &repo, &["run", "w.yml", "--job-id", job], &[]);
        let calls = std::fs::read_to_string(marks.join("calls.txt")).unwrap();
        std::fs::remove_file(marks.join("calls.txt")).unwrap();
        calls
    };
    assert_eq!(run("c1", ""), "flaky\nfix\nflaky\nflaky\nafter\n");
    assert_eq!(
        run("c2", "\x20     max_attempts: 1\n"),
        "flaky\nfix\nafter\n"
    ); // The handler read the call's result, not the stream-json it came in.
    let said = std::fs::read_to_string(&args).unwrap();
    assert!(!said.is_empty() && !said.contains("\"type\""), "{said}");
}

#[test]
fn a_merge_conflict_goes_to_claude_and_else_to_the_dlq_as_merge_conflict() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "clash");
    // Every agent writes the same file: the second merge conflicts.
    command(
        &repo,
        "write-shared",
        "echo \"$ARGUMENTS\" > shared.txt && git add shared.txt && git commit -qm \"write $ARGUMENTS\" && echo RESULT: written",
    );
    // The original's merge command, as a project ships it: merge, keep both sides.
    command(
        &repo,
        "prodigy-merge-worktree",
        "git merge --no-edit \"$ARGUMENTS\" >/dev/null 2>&1 || { \
         git show \"$ARGUMENTS\":shared.txt >> shared.txt.theirs; \
         git checkout --ours shared.txt && cat shared.txt.theirs >> shared.txt && rm shared.txt.theirs && \
         git add shared.txt && git commit -qm \"merge $ARGUMENTS\" --no-edit; }\n\
         echo \"RESULT: merged $ARGUMENTS\"",
    );
    write(&repo, "items.json", "[\"left\", \"right\"]");
    write(
        &repo,
        "w.yml",
        "name: w\n\
         mode: mapreduce\n\
         map:\n\
         \x20 input: items.json\n\
         \x20 agent_template:\n\
         \x20   - claude: \"/write-shared ${item}\"\n\
         \x20     commit_required: true\n\
         \x20 max_parallel: 1\n",
    );
    commit_all(&repo);
    ok(&env, &repo, &["run", "w.yml", "--job-id", "m1"], &[]);
    let show = json(&env, &repo, &["jobs", "show", "m1", "--json"]);
    assert_eq!(show["done"], 2, "{show}");
    assert_eq!(show["failed"], 0);
    let shared = std::fs::read_to_string(
        PathBuf::from(show["worktree"].as_str().unwrap()).join("shared.txt"),
    )
    .unwrap();
    assert!(
        shared.contains("left") && shared.contains("right"),
        "{shared}"
    );
    let logs = ok(&env, &repo, &["logs", "m1", "--step", "merge"], &[]);
    assert!(
        logs.contains("$ claude /prodigy-merge-worktree prodigy-agent/m1/"),
        "{logs}"
    );

    // Turned off, the conflict is the item's: dead-lettered as merge_conflict.
    let out = run_in(
        &env,
        &repo,
        &["run", "w.yml", "--job-id", "m2"],
        &[("PRODIGY_CLAUDE_MERGE", "false")],
    );
    let _ = out;
    let show = json(&env, &repo, &["jobs", "show", "m2", "--json"]);
    assert_eq!(show["failed"], 1, "{show}");
    let dlq = json(&env, &repo, &["dlq", "list", "m2", "--json"]);
    assert_eq!(dlq[0]["error_type"]["type"], "merge_conflict", "{dlq}");
    assert!(ok(&env, &repo, &["logs", "m2", "--step", "merge"], &[]).is_empty());
}

#[test]
fn claude_failures_fail_their_step_clearly_and_keep_the_transcript() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "bad");
    // The item says how the call goes wrong (the stand-in reads `STANDIN:` lines).
    command(
        &repo,
        "act",
        "case \"$ARGUMENTS\" in broken) echo failing; exit 4;; ok) ;; *) echo \"STANDIN:$ARGUMENTS\";; esac\necho RESULT: acted",
    );
    write(
        &repo,
        "items.json",
        "[\"exit=3\", \"garbage\", \"is_error\", \"hang\", \"broken\", \"ok\"]",
    );
    write(
        &repo,
        "w.yml",
        "name: w\n\
         mode: mapreduce\n\
         map:\n\
         \x20 input: items.json\n\
         \x20 agent_template:\n\
         \x20   - claude: \"/act ${item}\"\n\
         \x20     timeout: 2\n",
    );
    commit_all(&repo);
    let out = run_in(
        &env,
        &repo,
        &["run", "w.yml", "--job-id", "b1"],
        &[("PRODIGY_KILL_GRACE", "200ms")],
    );
    let show = json(&env, &repo, &["jobs", "show", "b1", "--json"]);
    assert_eq!(show["done"], 1, "{show}\n{}", transcript(&out));
    assert_eq!(show["failed"], 5);
    let messages = dlq_messages(&env, &repo, "b1");
    let find = |needle: &str| {
        assert!(
            messages.iter().any(|m| m.contains(needle)),
            "no DLQ message has {needle:?}: {messages:#?}"
        )
    };
    find("claude /act exit=3 exited with code 3: stand-in: dying without a result");
    find("claude /act garbage: its output is not stream-json: line ");
    find("claude /act is_error reported an error (error_during_execution)");
    find("timed out after 2s");
    find("claude /act broken exited with code 1");
    // Every call's transcript is kept, the failed ones too.
    let logs = ok(&env, &repo, &["logs", "b1"], &[]);
    assert_eq!(logs.lines().filter(|l| l.starts_with("== ")).count(), 6);
    assert!(!logs.contains("(no transcript was kept)"), "{logs}");
    assert_eq!(show["claude"]["job"]["failed"], 5);

    // No claude at all: the step fails naming what to do.
    prodigy(&env, &repo)
        .args(["run", "w.yml", "--job-id", "b2"])
        .output()
        .unwrap();
    let messages = dlq_messages(&env, &repo, "b2");
    assert_eq!(messages.len(), 6);
    assert!(
        messages[0].contains("cannot start claude: 'claude' is not on the PATH"),
        "{messages:?}"
    );
}

/// The items job k1's checkpoint records done (none before its first checkpoint).
fn recorded_done(env: &Env) -> Vec<String> {
    let Ok(states) = prodigy::state::JobStateManager::new(env.store(), "docs") else {
        return Vec::new();
    };
    let Ok(state) = states.load("k1") else {
        return Vec::new();
    };
    state
        .results
        .iter()
        .filter(|(_, r)| r.status == prodigy::state::ItemStatus::Done)
        .map(|(k, _)| k.clone())
        .collect()
}

/// The last failure message of each dead-lettered item of `job`.
fn dlq_messages(env: &Env, repo: &Path, job: &str) -> Vec<String> {
    let list = json(env, repo, &["dlq", "list", job, "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let id = i["item_id"].as_str().unwrap();
            let item = json(env, repo, &["dlq", "inspect", id, "--job", job, "--json"]);
            let history = item["failure_history"].as_array().unwrap();
            history.last().unwrap()["error_message"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn print_mode_and_a_wrapper_program_are_honoured() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "plain");
    command(&repo, "say", "echo \"RESULT: said $ARGUMENTS\"");
    write(
        &repo,
        "w.yml",
        "name: w\n\
         mode: mapreduce\n\
         env:\n\
         \x20 PRODIGY_CLAUDE_STREAMING: \"false\"\n\
         setup:\n\
         \x20 - claude: /say hello\n\
         \x20   capture: greeting\n\
         \x20 - shell: test \"${greeting}\" = \"said hello\"\n\
         map:\n\
         \x20 input: items.json\n\
         \x20 agent_template:\n\
         \x20   - shell: \"true\"\n",
    );
    write(&repo, "items.json", "[1]");
    commit_all(&repo);
    let calls_log = env.dir.path().join("calls.jsonl");
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/claude/claude");
    // No claude on the PATH: the wrapper variable names the program.
    let out = prodigy(&env, &repo)
        .args(["run", "w.yml", "--job-id", "p1"])
        .env("PRODIGY_CLAUDE_PATH", &standin)
        .env("STANDIN_LOG", &calls_log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", transcript(&out));
    let call: Value =
        serde_json::from_str(std::fs::read_to_string(&calls_log).unwrap().trim()).unwrap();
    assert_eq!(
        call["argv"],
        serde_json::json!(["--print", "--dangerously-skip-permissions", "/say hello"])
    );
    let logs = ok(&env, &repo, &["logs", "p1"], &[]);
    assert!(logs.contains("said hello"), "{logs}");
}

#[test]
fn progress_is_in_the_events_while_a_call_runs_and_item_text_stays_data() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "live");
    // The call says what it will do, then works for a while.
    command(
        &repo,
        "slow",
        &format!(
            "while [ ! -e {}/go ]; do sleep 0.05; done\necho RESULT: slow done",
            marks.display()
        ),
    );
    // An item whose text would run as code in a shell.
    write(
        &repo,
        "items.json",
        "[\"$(touch pwned); `touch pwned2` 'q\\\"\"]",
    );
    write(
        &repo,
        "w.yml",
        "name: w\n\
         mode: mapreduce\n\
         map:\n\
         \x20 input: items.json\n\
         \x20 agent_template:\n\
         \x20   - claude: \"/slow ${item}\"\n",
    );
    commit_all(&repo);
    let calls_log = env.dir.path().join("calls.jsonl");
    let mut cmd = prodigy(&env, &repo);
    cmd.args(["run", "w.yml", "--job-id", "l1"])
        .env("PATH", path_with(&standin_bin(&env)))
        .env("STANDIN_LOG", &calls_log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // The assistant's first message is an event before the call ends.
    wait_for("a live claude_message", Duration::from_secs(60), || {
        let out = run_in(
            &env,
            &repo,
            &["events", "show", "l1", "--type", "claude_message", "--json"],
            &[],
        );
        String::from_utf8_lossy(&out.stdout).contains("I'll run /slow")
    });
    assert!(child.try_wait().unwrap().is_none(), "the call had ended");
    std::fs::write(marks.join("go"), "").unwrap();
    assert!(child.wait().unwrap().success());
    // The item reached claude as one argument, byte for byte, and nothing ran.
    let call: Value =
        serde_json::from_str(std::fs::read_to_string(&calls_log).unwrap().trim()).unwrap();
    assert_eq!(call["argv"][4], "/slow $(touch pwned); `touch pwned2` 'q\"");
    let worktrees = env.home().join("worktrees");
    let found = std::process::Command::new("find")
        .arg(&worktrees)
        .arg(&repo)
        .args(["-name", "pwned*"])
        .output()
        .unwrap();
    assert!(found.stdout.is_empty(), "{}", transcript(&found));
}

/// An item's text that starts with `-` reaches the CLI as the prompt, after `--`, never as
/// its options (`--version` printed the stand-in's version, `-p` changed its mode; with the
/// real CLI `--settings=…` or `--mcp-config=…` could start commands).
#[test]
fn item_text_is_never_an_option_of_the_cli() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "opts");
    write(&repo, "items.json", "[\"--version\", \"-p\", \"update\"]");
    write(
        &repo,
        "w.yml",
        "name: w\n\
         mode: mapreduce\n\
         map:\n\
         \x20 input: items.json\n\
         \x20 agent_template:\n\
         \x20   - claude: \"${item}\"\n",
    );
    commit_all(&repo);
    let calls_log = env.dir.path().join("calls.jsonl");
    let out = run_in(
        &env,
        &repo,
        &["run", "w.yml", "--job-id", "o1"],
        &[("STANDIN_LOG", calls_log.to_str().unwrap())],
    );
    // Exit code 3: items failed.
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    let mut tails: Vec<(String, String)> = std::fs::read_to_string(&calls_log)
        .unwrap()
        .lines()
        .map(|l| {
            let call: Value = serde_json::from_str(l).unwrap();
            let argv = call["argv"].as_array().unwrap();
            let tail = |n: usize| argv[argv.len() - n].as_str().unwrap().to_owned();
            (tail(2), tail(1))
        })
        .collect();
    tails.sort();
    assert_eq!(
        tails,
        [
            ("--".to_owned(), "--version".to_owned()),
            ("--".to_owned(), "-p".to_owned())
        ]
    );
    // The stand-in took each as its prompt: no slash command of that name. A bare word,
    // which the CLI would run as its subcommand (`claude update`) even after `--`, is
    // never passed at all.
    let messages = dlq_messages(&env, &repo, "o1");
    assert_eq!(messages.len(), 3);
    assert!(
        messages.iter().any(|m| m.contains(
            "cannot start claude: the command \"update\" is one bare word, which the CLI would run as its own subcommand"
        )),
        "{messages:?}"
    );
    let shown = ok(&env, &repo, &["logs", "o1"], &[]);
    assert!(
        shown.contains("Unknown slash command: --version")
            && shown.contains("Unknown slash command: -p"),
        "{shown}"
    );
}

#[test]
fn the_originals_capture_spellings_work_for_claude_steps() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "caps");
    command(&repo, "count", "echo \"RESULT: {\\\"n\\\": 3}\"");
    write(
        &repo,
        "w.yml",
        "name: w\n\
         mode: mapreduce\n\
         setup:\n\
         \x20 - shell: echo started\n\
         \x20   capture: \"shell.output\"\n\
         \x20 - claude: /count\n\
         \x20   capture: counted\n\
         \x20   capture_format: json\n\
         \x20 - shell: test ${counted.n} = 3 && case \"${claude.output}\" in *3*) true;; *) false;; esac\n\
         map:\n\
         \x20 input: items.json\n\
         \x20 agent_template:\n\
         \x20   - shell: test ${counted.n} = 3\n",
    );
    write(&repo, "items.json", "[1]");
    commit_all(&repo);
    ok(&env, &repo, &["run", "w.yml", "--job-id", "c1"], &[]);
    let show = json(&env, &repo, &["jobs", "show", "c1", "--json"]);
    assert_eq!(show["done"], 1, "{show}");
}

#[test]
fn an_event_naming_a_missing_transcript_is_refused_and_changes_nothing() {
    let env = Env::new();
    let missing = "ab".repeat(32);
    let event = format!(
        "{{\"event_type\":\"claude_call_finished\",\"job_id\":\"j\",\"agent_id\":\"a\",\"step\":\"map/1\",\"attempt\":1,\"exit_code\":0,\"duration_ms\":1,\"is_error\":false,\"transcript\":\"{missing}\"}}\n"
    );
    let out = env.run(
        &["events", "append", "--repo", "r", "--job", "j"],
        event.as_bytes(),
    );
    let err = crate::common::assert_one_line_error(&out, 1);
    assert!(
        err.contains(&format!("names object {missing}, which is not stored")),
        "{err}"
    );
    assert!(env.ok(&["ref", "list"], b"").is_empty());
}
