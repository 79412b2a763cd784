//! Sequential workflows run as sessions: the shapes, a run, SIGKILL + worktree deletion +
//! resume with no finished step run again, `--args`, `--dry-run`.

use std::path::Path;
use std::time::Duration;

use crate::common::{Env, IDENTITY, git, transcript};
use crate::runner::{
    assert_one_line_error, git_out, in_repo, job_show, json_in, ok_in, repo_and_marks, spawn_in,
    wait_for, write,
};

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn commit(repo: &Path) {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", "workflow"]);
}

#[test]
fn a_bare_list_of_steps_runs_as_a_session_and_resumes_after_sigkill() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "seq");
    // The original's test-sequential-resume.yml, writing its marks outside the repository:
    // each step records itself when it ends.
    let mut text = String::new();
    for n in 1..=6 {
        text.push_str(&format!(
            "- shell: |\n    echo \"Step {n}\"\n    sleep 0.4\n    echo step{n} >> {m}/steps.log\n    echo {n} > step{n}.txt && git add step{n}.txt && git -c user.name=t -c user.email=t@t commit -qm step{n}\n",
            m = marks.display()
        ));
    }
    write(&repo, "w.yml", &text);
    commit(&repo);
    let mut child = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", "s1"]);
    wait_for("two finished steps", Duration::from_secs(60), || {
        lines(&marks.join("steps.log")).len() >= 2
    });
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = child.wait();
    let states = prodigy::state::JobStateManager::new(env.store(), "seq").unwrap();
    let done = states.load("s1").unwrap().checkpoint.setup_done;
    assert!((1..6).contains(&done), "{done} steps recorded done");
    std::fs::remove_dir_all(env.home().join("worktrees")).unwrap();
    assert_eq!(ok_in(&env, &repo, &["resume", "s1"]), "s1\n");
    let show = job_show(&env, &repo, "s1");
    assert_eq!(show["phase"], "complete", "{show}");
    let log = lines(&marks.join("steps.log"));
    for n in 1..=6 {
        let runs = log.iter().filter(|l| **l == format!("step{n}")).count();
        if n <= done {
            assert_eq!(runs, 1, "step {n} was finished before the kill: {log:?}");
        } else {
            // The step under way when the kill came may have ended unrecorded.
            assert!(runs == 1 || (runs == 2 && n == done + 1), "{log:?}");
        }
    }
    // The session's commits are on its branch, in its recreated worktree.
    let worktree = std::path::PathBuf::from(show["worktree"].as_str().unwrap());
    for n in 1..=6 {
        assert!(worktree.join(format!("step{n}.txt")).is_file());
    }
    // `jobs` lists the session beside MapReduce jobs.
    let jobs = json_in(&env, &repo, &["jobs", "--json"]);
    assert_eq!(jobs[0]["job"], "s1");
    assert_eq!(jobs[0]["status"], "complete");
    let events = json_in(&env, &repo, &["events", "stats", "s1", "--json"]);
    assert_eq!(events["total"]["types"]["job_completed"], 1, "{events}");
}

#[test]
fn commands_with_args_run_one_session_per_value() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "args");
    write(
        &repo,
        "w.yml",
        &format!(
            "name: per-spec\nmode: standard\ndescription: once per spec\ncommands:\n  - shell: echo \"spec $ARG ${{ARG}} $PRODIGY_ARG\" >> {}/args.log\n",
            marks.display()
        ),
    );
    commit(&repo);
    let out = ok_in(&env, &repo, &["run", "w.yml", "--args", "7", "--args", "8"]);
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 2, "{out}");
    assert!(ids.iter().all(|id| id.starts_with("prodigy-session-")));
    assert_ne!(ids[0], ids[1]);
    assert_eq!(lines(&marks.join("args.log")), ["spec 7 7 7", "spec 8 8 8"]);
    let out = in_repo(
        &env,
        &repo,
        &[
            "run", "w.yml", "--args", "1", "--args", "2", "--job-id", "x",
        ],
    );
    assert_one_line_error(&out, 2);
    // A value whose session does not complete ends the run, as the original's loop ends:
    // the values after it are named, with the command that runs them (they were dropped
    // without a word).
    write(
        &repo,
        "w.yml",
        &format!(
            "commands:\n  - shell: echo \"$ARG\" >> {}/stops.log; test \"$ARG\" != b\n",
            marks.display()
        ),
    );
    commit(&repo);
    let out = in_repo(
        &env,
        &repo,
        &[
            "run", "w.yml", "--args", "a", "--args", "b", "--args", "c d",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not run: --args 'c d'; `prodigy run w.yml --args 'c d'` runs them"),
        "{stderr}"
    );
    assert_eq!(lines(&marks.join("stops.log")), ["a", "b"]);
}

#[test]
fn dry_run_checks_and_prints_the_plan_and_runs_nothing() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "dry");
    let touch = format!("touch {}/ran", marks.display());
    write(
        &repo,
        "seq.yml",
        &format!("commands:\n  - shell: {touch}\n  - claude: /lint --fix\n"),
    );
    write(
        &repo,
        "mr.yml",
        &format!(
            "name: mr\nmode: mapreduce\nmap:\n  input: seq 1 3\n  agent_template:\n    - shell: {touch}\nreduce:\n  - shell: echo ${{map.total}}\n"
        ),
    );
    let out = ok_in(&env, &repo, &["run", "seq.yml", "--dry-run"]);
    assert!(out.starts_with("sequential workflow seq: 2 steps"), "{out}");
    assert!(out.contains("  session/2  claude: /lint --fix"), "{out}");
    let out = ok_in(&env, &repo, &["run", "mr.yml", "--dry-run"]);
    assert!(out.contains("  map: items from \"seq 1 3\""), "{out}");
    assert!(
        out.contains("  reduce/1  shell: echo ${map.total}"),
        "{out}"
    );
    assert!(!marks.join("ran").exists());
    assert!(!env.home().join("worktrees").exists());
    // A variable that does not exist is found without running anything.
    write(&repo, "bad.yml", "- shell: echo ${map.total}\n");
    let out = in_repo(&env, &repo, &["run", "bad.yml", "--dry-run"]);
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("bad.yml:1: "), "{err}");
    // Neither shape: say what the two are.
    write(&repo, "neither.yml", "name: x\nenv:\n  A: b\n");
    let out = in_repo(&env, &repo, &["run", "neither.yml"]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains("neither workflow shape") && err.contains("`commands:`"),
        "{}",
        transcript(&out)
    );
}

/// `-n N`: the steps N times over in one session; as the original, a pass after which no
/// `commit_required` step of the session has made a commit is the last, whatever other
/// steps committed (it ran every pass).
#[test]
fn max_iterations_repeats_the_steps_in_one_session() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "loop");
    write(
        &repo,
        "w.yml",
        &format!(
            "- shell: echo \"pass $PRODIGY_MAX_ITERATIONS\" >> {m}/loop.log\n- shell: echo second >> {m}/loop.log && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m pass\n  commit_required: true\n",
            m = marks.display()
        ),
    );
    // Its step commits, but is not commit_required: the original counted no change.
    write(
        &repo,
        "still.yml",
        &format!(
            "- shell: echo still >> {m}/still.log && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m still\n",
            m = marks.display()
        ),
    );
    write(
        &repo,
        "mr.yml",
        "name: m\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: 'true'\n",
    );
    commit(&repo);
    assert_eq!(
        ok_in(&env, &repo, &["run", "w.yml", "-n", "3", "--job-id", "n3"]),
        "n3\n"
    );
    assert_eq!(
        lines(&marks.join("loop.log")),
        ["pass 3", "second", "pass 3", "second", "pass 3", "second"]
    );
    let states = prodigy::state::JobStateManager::new(env.store(), "loop").unwrap();
    assert_eq!(states.load("n3").unwrap().checkpoint.setup_done, 6);
    let out = in_repo(
        &env,
        &repo,
        &["run", "still.yml", "-n", "3", "--job-id", "s3"],
    );
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        transcript(&out)
            .contains("stopping after pass 1 of 3: no commit_required step has made a commit"),
        "{}",
        transcript(&out)
    );
    assert_eq!(lines(&marks.join("still.log")), ["still"]);
    // A commit_required first step that made no commit (forgiven) is no change either.
    write(
        &repo,
        "none.yml",
        &format!(
            "- shell: echo none >> {m}/none.log\n  commit_required: true\n  fail_workflow: false\n",
            m = marks.display()
        ),
    );
    commit(&repo);
    ok_in(
        &env,
        &repo,
        &["run", "none.yml", "-n", "3", "--job-id", "s4"],
    );
    assert_eq!(lines(&marks.join("none.log")), ["none"]);
    assert_eq!(job_show(&env, &repo, "s3")["phase"], "complete");
    let out = in_repo(&env, &repo, &["run", "mr.yml", "-n", "2"]);
    assert_one_line_error(&out, 2);
}

#[test]
fn a_sessions_merge_steps_wait_for_a_yes_and_see_the_branches() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "merging");
    write(
        &repo,
        "w.yml",
        &format!(
            "name: with-merge\ncommands:\n  - shell: echo work > work-$PRODIGY_JOB_ID.txt && git add . && git -c user.name=t -c user.email=t@t commit -qm work\nmerge:\n  - shell: echo \"${{merge.source_branch}} ${{merge.target_branch}} ${{merge.worktree}}\" >> {m}/merge.log\n  - shell: git -C {r} merge -q --no-edit ${{merge.source_branch}}\n",
            m = marks.display(),
            r = repo.display()
        ),
    );
    commit(&repo);
    // Not a terminal and no -y: the steps run, the merge waits.
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "m1"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("prodigy resume m1 -y"),
        "{}",
        transcript(&out)
    );
    assert!(!marks.join("merge.log").exists());
    assert!(!repo.join("work-m1.txt").exists());
    // The original's spelling of resume.
    assert_eq!(
        ok_in(&env, &repo, &["run", "w.yml", "--resume", "m1", "-y"]),
        "m1\n"
    );
    let show = job_show(&env, &repo, "m1");
    assert_eq!(show["phase"], "complete", "{show}");
    let log = lines(&marks.join("merge.log"));
    let worktree = show["worktree"].as_str().unwrap();
    assert_eq!(log, [format!("prodigy/m1 main {worktree}")]);
    // The merge steps merged the session into the branch it started from.
    assert!(repo.join("work-m1.txt").is_file());
    // With -y, at once.
    assert_eq!(
        ok_in(&env, &repo, &["run", "w.yml", "-y", "--job-id", "m2"]),
        "m2\n"
    );
    assert_eq!(lines(&marks.join("merge.log")).len(), 2);
}

/// SIGINT stops a session's running step (SIGTERM to its group, SIGKILL after the grace)
/// and saves the session as interrupted; it ran on to the step's end (20 s for a
/// `sleep 20`), then wrote "interrupted" after "complete". `resume` finishes it.
#[test]
fn sigint_stops_a_sessions_running_step() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "sigint");
    write(
        &repo,
        "w.yml",
        &format!(
            "- shell: \"test -f {m}/started && exit 0; touch {m}/started; sleep 60\"\n",
            m = marks.display()
        ),
    );
    commit(&repo);
    let mut child = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", "s1"]);
    wait_for("the step to start", Duration::from_secs(60), || {
        marks.join("started").exists()
    });
    let signalled = std::time::Instant::now();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    // The grace period (PRODIGY_KILL_GRACE's default) and a margin, far below 60 s.
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "the step ran on for {:?}",
        signalled.elapsed()
    );
    assert_eq!(job_show(&env, &repo, "s1")["status"], "interrupted");
    assert_eq!(ok_in(&env, &repo, &["resume", "s1"]), "s1\n");
    assert_eq!(job_show(&env, &repo, "s1")["phase"], "complete");
}

/// The files of `branch`'s last commit's tree, by name.
fn tree_of(repo: &Path, branch: &str) -> Vec<String> {
    git_out(repo, &["ls-tree", "--name-only", branch])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Loses job `job`'s worktree (in repo `name`) and its branch, as a user cleaning up
/// would.
fn lose_branch(env: &Env, repo: &Path, name: &str, job: &str) {
    std::fs::remove_dir_all(env.home().join(format!("worktrees/{name}/{job}/{job}@job"))).unwrap();
    git(repo, &["worktree", "prune"]);
    git(repo, &["branch", "-D", &format!("prodigy/{job}")]);
}

/// Prunes every commit nothing in `repo` reaches any more.
fn prune_unreachable(repo: &Path) {
    git(repo, &["reflog", "expire", "--expire=now", "--all"]);
    git(repo, &["gc", "-q", "--prune=now"]);
}

/// A step that switches the session's worktree to a branch of its own brings the job's
/// branch along (the result was left off `prodigy/<job>`: a third hostile sweep); one that
/// goes where the job's commits are not fails, saying so.
#[test]
fn a_step_that_switches_branch_keeps_the_result_on_the_jobs_branch() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "switch");
    let commit_file = |name: &str| {
        format!(
            "echo {name} > {name} && git add {name} && git -c user.name=t -c user.email=t@t commit -qm {name}"
        )
    };
    write(
        &repo,
        "w.yml",
        &format!(
            "- shell: \"git checkout -q -b feature && {}\"\n  commit_required: true\n- shell: \"{}\"\n",
            commit_file("a"),
            commit_file("c")
        ),
    );
    commit(&repo);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "q1"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        transcript(&out).contains("switched the worktree to branch feature: prodigy/q1 moved up"),
        "{}",
        transcript(&out)
    );
    let files = tree_of(&repo, "prodigy/q1");
    assert!(
        files.contains(&"a".to_owned()) && files.contains(&"c".to_owned()),
        "{files:?}"
    );
    // The step's own branch stays where it left it.
    assert!(tree_of(&repo, "feature").contains(&"a".to_owned()));

    // To a branch at main, which holds none of the job's commits: the step fails.
    write(
        &repo,
        "w2.yml",
        &format!(
            "- shell: \"{}\"\n- shell: git checkout -q -b elsewhere main\n",
            commit_file("b")
        ),
    );
    commit(&repo);
    let out = in_repo(&env, &repo, &["run", "w2.yml", "--job-id", "q2"]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains("switched the worktree to branch elsewhere at")
            && err.contains("which does not hold prodigy/q2's commits")
            && err.contains("checked out again"),
        "{err}"
    );
    // The job's worktree is back on its branch, and a resume rewinding it moves that
    // branch, never the one the step went to.
    let worktree = env.home().join("worktrees/switch/q2/q2@job");
    assert_eq!(
        git_out(&worktree, &["rev-parse", "--symbolic-full-name", "HEAD"]),
        "refs/heads/prodigy/q2"
    );
    let elsewhere = git_out(&repo, &["rev-parse", "elsewhere"]);
    // A step left a branch checked out and failed (as a killed runner could leave it):
    // the start puts the job's branch back first.
    git(&worktree, &["checkout", "-q", "elsewhere"]);
    let out = in_repo(&env, &repo, &["resume", "q2", "--from", "1"]);
    assert!(
        transcript(&out).contains(
            "a step had switched the worktree to branch elsewhere: prodigy/q2 checked out again"
        ),
        "{}",
        transcript(&out)
    );
    assert_eq!(git_out(&repo, &["rev-parse", "elsewhere"]), elsewhere);
}

/// A session resumed after its worktree and its branch were deleted starts from the commit
/// its checkpoint recorded, so the finished steps' commits stay in the result (they were
/// dropped: the branch was made again from the base commit); when that commit is gone
/// too, resume refuses instead of finishing without them.
#[test]
fn a_resume_after_the_branch_was_deleted_keeps_the_finished_steps_commits() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "lost");
    write(
        &repo,
        "w.yml",
        &format!(
            "- shell: \"echo $PRODIGY_JOB_ID > one.txt && git add one.txt && git -c user.name=t -c user.email=t@t commit -qm one\"\n  commit_required: true\n- shell: test -f {}/ok\n- shell: echo three\n",
            marks.display()
        ),
    );
    commit(&repo);
    // q3 ends its steps and waits for a yes to its merge step (past setup).
    write(
        &repo,
        "merging.yml",
        "commands:\n  - shell: \"echo $PRODIGY_JOB_ID > three.txt && git add three.txt && git -c user.name=t -c user.email=t@t commit -qm three\"\nmerge:\n  - shell: echo merged\n",
    );
    commit(&repo);
    let out = in_repo(&env, &repo, &["run", "merging.yml", "--job-id", "q3"]);
    assert!(out.status.success(), "{}", transcript(&out));
    lose_branch(&env, &repo, "lost", "q3");
    for job in ["q1", "q2"] {
        let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", job]);
        assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
        lose_branch(&env, &repo, "lost", job);
    }
    std::fs::write(marks.join("ok"), "").unwrap();
    let out = in_repo(&env, &repo, &["resume", "q1"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        transcript(&out)
            .contains("branch prodigy/q1 was gone: made again at its last recorded commit"),
        "{}",
        transcript(&out)
    );
    assert!(tree_of(&repo, "prodigy/q1").contains(&"one.txt".to_owned()));
    // With the commit pruned from the repository, nothing can bring step 1's back.
    prune_unreachable(&repo);
    for job in ["q2", "q3"] {
        let out = in_repo(&env, &repo, &["resume", job, "-y"]);
        let err = assert_one_line_error(&out, 1);
        assert!(
            err.contains(&format!(
                "branch prodigy/{job} is gone and its last recorded commit"
            )) && err.contains("so the commits of its finished steps are not here"),
            "{err}"
        );
    }
}

/// A MapReduce job whose branch and setup commit are gone, and whose items made no commit
/// (no agent branch holds setup's work), refuses to resume: it would finish without
/// setup's commit.
#[test]
fn a_mapreduce_resume_without_setups_commit_refuses() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "lostsetup");
    write(
        &repo,
        "w.yml",
        &format!(
            "name: w\nmode: mapreduce\nsetup:\n  - shell: \"echo $PRODIGY_JOB_ID > setup.txt && git add setup.txt && git -c user.name=t -c user.email=t@t commit -qm setup\"\nmap:\n  input: items.json\n  agent_template:\n    - shell: \"true\"\nreduce:\n  - shell: test -f {}/ok\n",
            marks.display()
        ),
    );
    write(&repo, "items.json", "[1, 2]");
    commit(&repo);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "m1"]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    lose_branch(&env, &repo, "lostsetup", "m1");
    prune_unreachable(&repo);
    std::fs::write(marks.join("ok"), "").unwrap();
    let out = in_repo(&env, &repo, &["resume", "m1"]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains("branch prodigy/m1 is gone and its last recorded commit"),
        "{err}"
    );
}

/// A MapReduce job whose branch and last commit are gone while setup's commit is still in
/// the repository (a failed agent's kept worktree holds it), and no merged item holds it:
/// the branch is made again at setup's commit, so reduce runs with it (it was made at the
/// base commit, and the result lacked setup's work).
#[test]
fn a_mapreduce_resume_keeps_setups_commit_when_only_it_is_left() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "keepsetup");
    let committing = |file: &str| {
        format!(
            "echo $PRODIGY_JOB_ID > {file} && git add {file} && git -c user.name=t -c user.email=t@t commit -qm {file}"
        )
    };
    write(
        &repo,
        "w.yml",
        &format!(
            "name: w\nmode: mapreduce\nsetup:\n  - shell: \"{}\"\nmap:\n  input: items.json\n  agent_template:\n    - shell: \"test ${{item}} = 1\"\nreduce:\n  - shell: \"{}\"\n  - shell: test -f {}/ok\n",
            committing("setup.txt"),
            committing("reduce.txt"),
            marks.display()
        ),
    );
    write(&repo, "items.json", "[1, 2]");
    commit(&repo);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "k1"]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    lose_branch(&env, &repo, "keepsetup", "k1");
    prune_unreachable(&repo);
    std::fs::write(marks.join("ok"), "").unwrap();
    let out = in_repo(&env, &repo, &["resume", "k1"]);
    // Exit code 3: item 2 failed, as designed.
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    assert!(
        transcript(&out).contains("branch prodigy/k1 was gone: made again at setup's last commit"),
        "{}",
        transcript(&out)
    );
    let files = tree_of(&repo, "prodigy/k1");
    assert!(
        files.contains(&"setup.txt".to_owned()) && files.contains(&"reduce.txt".to_owned()),
        "{files:?}"
    );
}

/// A `resume --from` killed after it moved the branch back, before any agent finished:
/// the rewound checkpoint is the head already, so the job is not "complete" with its
/// result gone from the branch, and a resume finishes it (it said complete, and the
/// branch stayed empty).
#[test]
fn a_rewind_killed_midway_leaves_a_job_that_resume_finishes() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "rewind");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            "name: w\n{IDENTITY}mode: mapreduce\nmap:\n  input: items.json\n  agent_template:\n    - shell: \"if [ -e {m}/hold ]; then while [ ! -e {m}/go ]; do sleep 0.05; done; fi; echo ${{item}} > f-${{item}}.txt && git add f-${{item}}.txt && git -c user.name=t -c user.email=t@t commit -qm ${{item}}\"\n"
        ),
    );
    write(&repo, "items.json", "[1, 2, 3]");
    commit(&repo);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "r1"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let files = || tree_of(&repo, "prodigy/r1");
    assert!(files().contains(&"f-3.txt".to_owned()));
    let base = git_out(&repo, &["rev-parse", "main"]);
    let tip = || git_out(&repo, &["rev-parse", "prodigy/r1"]);
    std::fs::write(marks.join("hold"), "").unwrap();
    let mut resume = spawn_in(&env, &repo, &["resume", "r1", "--from", "2"]);
    wait_for("the branch moved back", Duration::from_secs(30), || {
        tip() == base
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid = rustix::process::Pid::from_raw(resume.id() as i32).unwrap();
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = resume.wait();
    let show = job_show(&env, &repo, "r1");
    assert_ne!(show["phase"], "complete", "{show}");
    std::fs::write(marks.join("go"), "").unwrap();
    let out = in_repo(&env, &repo, &["resume", "r1"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let files = files();
    for n in 1..=3 {
        assert!(files.contains(&format!("f-{n}.txt")), "{files:?}");
    }
}

/// A symbolic link in place of the job's worktree (to the user's checkout) is removed,
/// never followed, and the worktree made again: a resume ran the job in the checkout the
/// link named, and reset its uncommitted work. A file there is removed the same way.
#[test]
fn a_link_or_a_file_in_place_of_the_jobs_worktree_is_never_used() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "linked");
    write(
        &repo,
        "w.yml",
        &format!(
            "- shell: test -f {}/ok\n- shell: \"echo z > zz.txt && git add zz.txt && git -c user.name=t -c user.email=t@t commit -qm z\"\n",
            marks.display()
        ),
    );
    commit(&repo);
    std::fs::write(marks.join("ok"), "").unwrap();
    for (job, link) in [("l1", true), ("l2", false)] {
        std::fs::remove_file(marks.join("ok")).ok();
        let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", job]);
        assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
        let worktree = env.home().join(format!("worktrees/linked/{job}/{job}@job"));
        std::fs::remove_dir_all(&worktree).unwrap();
        if link {
            std::os::unix::fs::symlink(&repo, &worktree).unwrap();
        } else {
            std::fs::write(&worktree, "not a worktree").unwrap();
        }
        std::fs::write(repo.join("README"), "uncommitted work\n").unwrap();
        std::fs::write(marks.join("ok"), "").unwrap();
        let out = in_repo(&env, &repo, &["resume", job, "--from", "1"]);
        assert!(out.status.success(), "{}", transcript(&out));
        assert!(
            transcript(&out).contains("was not a directory: removed, the worktree is made again"),
            "{}",
            transcript(&out)
        );
        assert_eq!(
            std::fs::read_to_string(repo.join("README")).unwrap(),
            "uncommitted work\n"
        );
        assert_eq!(git_out(&repo, &["symbolic-ref", "--short", "HEAD"]), "main");
        assert!(tree_of(&repo, &format!("prodigy/{job}")).contains(&"zz.txt".to_owned()));
        git(&repo, &["checkout", "-q", "--", "README"]);
    }
}

/// `resume --from` a checkpoint before the map runs the items finished after it again,
/// even when their agents' done markers are still beside their worktrees (a job stopped
/// in reduce keeps them): it adopted them and ran nothing.
#[test]
fn a_rewind_before_the_map_runs_its_items_again() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "rerun");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            "name: w\n{IDENTITY}mode: mapreduce\nmap:\n  input: items.json\n  agent_template:\n    - shell: echo ${{item}} >> {m}/runs\nreduce:\n  - shell: test -f {m}/ok\n"
        ),
    );
    write(&repo, "items.json", "[1, 2, 3]");
    commit(&repo);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "x1"]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert_eq!(lines(&marks.join("runs")).len(), 3);
    std::fs::write(marks.join("ok"), "").unwrap();
    let out = in_repo(&env, &repo, &["resume", "x1", "--from", "2"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let mut runs = lines(&marks.join("runs"));
    runs.sort();
    assert_eq!(runs, ["1", "1", "2", "2", "3", "3"], "{}", transcript(&out));
}

/// Killed right after the rewound checkpoint was saved, before the branch moved back
/// (`PRODIGY_CRASH_AT=rewound`, a real SIGKILL at that point): the next start moves the
/// branch back first, whether it is a `resume` or a `dlq retry` (which merged onto the
/// branch the rewind was to undo), and every item's commit is on the branch once.
#[test]
fn a_kill_between_the_rewound_save_and_the_branch_is_finished_by_the_next_start() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "pending");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            "name: w\n{IDENTITY}mode: mapreduce\nmap:\n  input: items.json\n  agent_template:\n    - shell: \"echo ${{item}} >> {m}/runs-$PRODIGY_JOB_ID; (test ${{item}} != 3 || test -f {m}/fixed) && echo ${{item}} $(date +%N) > f-${{item}}.txt && git add f-${{item}}.txt && git -c user.name=t -c user.email=t@t commit -qm item-${{item}}\"\n"
        ),
    );
    write(&repo, "items.json", "[1, 2, 3]");
    commit(&repo);
    let log_of = |branch: &str| {
        git_out(&repo, &["log", "--format=%s", branch])
            .lines()
            .filter(|l| l.starts_with("item-"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    for (job, then) in [("p1", "resume"), ("p2", "retry")] {
        // Item 3 fails into the queue; 1 and 2 are merged.
        let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", job]);
        assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
        assert_eq!(log_of(&format!("prodigy/{job}")).len(), 2);
        let mut cmd = env.std_cmd();
        cmd.current_dir(&repo)
            .args(["resume", job, "--from", "2"])
            .env("PRODIGY_CRASH_AT", "rewound");
        let out = cmd.output().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "{}",
            transcript(&out)
        );
        // Not moved yet.
        assert_eq!(log_of(&format!("prodigy/{job}")).len(), 2);
        std::fs::write(marks.join("fixed"), "").unwrap();
        let out = match then {
            "resume" => in_repo(&env, &repo, &["resume", job]),
            _ => in_repo(&env, &repo, &["dlq", "retry", job]),
        };
        assert!(out.status.success(), "{then}: {}", transcript(&out));
        let mut commits = log_of(&format!("prodigy/{job}"));
        commits.sort();
        let want: &[&str] = match then {
            "resume" => &["item-1", "item-2", "item-3"],
            // The retry runs item 3 alone, on the branch moved back to checkpoint 2.
            _ => &["item-3"],
        };
        assert_eq!(commits, want, "{then}: {}", transcript(&out));
        // The rewind was finished: the items after checkpoint 2 ran again (adopted from
        // their done markers, they did not), the retry's item alone.
        let runs = std::fs::read_to_string(marks.join(format!("runs-{job}"))).unwrap();
        let ones = runs.lines().filter(|l| *l == "1").count();
        assert_eq!(ones, if then == "resume" { 2 } else { 1 }, "{runs}");
        std::fs::remove_file(marks.join("fixed")).unwrap();
    }
}

/// An item dead-lettered by a run, then run again by `resume --from` and successful,
/// leaves the queue (`dlq list` showed it as a failure until a `dlq retry` dropped it).
#[test]
fn a_rewound_item_that_succeeds_leaves_the_dead_letter_queue() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "requeue");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            "name: w\n{IDENTITY}mode: mapreduce\nmap:\n  input: items.json\n  agent_template:\n    - shell: test ${{item}} != 2 || test -f {m}/fixed\n"
        ),
    );
    write(&repo, "items.json", "[1, 2]");
    commit(&repo);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "q1"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    assert_eq!(
        json_in(&env, &repo, &["dlq", "list", "q1", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    std::fs::write(marks.join("fixed"), "").unwrap();
    let out = in_repo(&env, &repo, &["resume", "q1", "--from", "2"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let left = json_in(&env, &repo, &["dlq", "list", "q1", "--json"]);
    assert_eq!(left.as_array().unwrap().len(), 0, "{left}");
    let events = ok_in(
        &env,
        &repo,
        &["events", "show", "q1", "--type", "dlq_item_removed"],
    );
    assert_eq!(events.lines().count(), 1, "{events}");
}

/// `run -y` brings the result back, as the original merges it when told yes: the job's
/// branch is merged into the branch the repository was on, in its worktree. Without a yes
/// (no terminal) the hint says how; a workflow's own `merge:` steps do it instead; a
/// changed tracked file, a detached HEAD or a conflict leave the repository as it was,
/// saying why. (The result stayed on `prodigy/<job>` in every case.)
#[test]
fn run_yes_merges_the_result_back_unless_that_would_touch_your_work() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "back");
    // The user's identity, for the merge commits made in their repository.
    git(&repo, &["config", "user.name", "u"]);
    git(&repo, &["config", "user.email", "u@example.com"]);
    write(&repo, "notes.txt", "mine\n");
    let step = |file: &str, text: &str| {
        format!(
            "{IDENTITY}commands:\n  - shell: echo {text} > {file} && git add {file} && git commit -qm {file}\n"
        )
    };
    write(&repo, "w.yml", &step("result.txt", "done"));
    commit(&repo);
    let head = || git_out(&repo, &["rev-parse", "HEAD"]);
    // No yes and no terminal: the hint, nothing merged.
    let before = head();
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "b1"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        transcript(&out).contains("run `git merge prodigy/b1` in your repository (or run with -y)"),
        "{}",
        transcript(&out)
    );
    assert_eq!(head(), before);
    // -y: merged into main, here.
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "b2", "-y"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        transcript(&out).contains("merged prodigy/b2 into main in"),
        "{}",
        transcript(&out)
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("result.txt")).unwrap(),
        "done\n"
    );
    assert_eq!(
        git_out(&repo, &["rev-parse", "HEAD"]),
        git_out(&repo, &["rev-parse", "prodigy/b2"])
    );
    // Once merged, a yes again says so and does nothing.
    let out = in_repo(&env, &repo, &["resume", "b2", "-y"]);
    assert!(
        transcript(&out).contains("prodigy/b2 is already merged into main"),
        "{}",
        transcript(&out)
    );
    // The user's own merge underway: left alone, its MERGE_HEAD kept.
    git(&repo, &["checkout", "-qb", "side"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "side"]);
    git(&repo, &["checkout", "-q", "main"]);
    git(
        &repo,
        &["merge", "--no-commit", "--no-ff", "-s", "ours", "side"],
    );
    let out = in_repo(&env, &repo, &["resume", "b1", "-y"]);
    assert!(
        transcript(&out).contains("is in the middle of a merge (MERGE_HEAD)"),
        "{}",
        transcript(&out)
    );
    assert!(repo.join(".git/MERGE_HEAD").exists());
    git(&repo, &["merge", "--abort"]);
    // The job's worktree holds a change it never committed: it would not come along.
    let job_tree =
        std::path::PathBuf::from(job_show(&env, &repo, "b1")["worktree"].as_str().unwrap());
    write(&job_tree, "result.txt", "uncommitted\n");
    let out = in_repo(&env, &repo, &["resume", "b1", "-y"]);
    assert!(
        transcript(&out).contains("has uncommitted changes, which are not on prodigy/b1"),
        "{}",
        transcript(&out)
    );
    git(&job_tree, &["checkout", "--", "result.txt"]);
    // An ignored file of the user's that the job's branch adds: not overwritten.
    write(&repo, ".gitignore", "local.cfg\n");
    write(
        &repo,
        "w.yml",
        &format!(
            "{IDENTITY}commands:\n  - shell: echo job > local.cfg && git add -f local.cfg && git commit -qm cfg\n"
        ),
    );
    commit(&repo);
    write(&repo, "local.cfg", "mine\n");
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "b7", "-y"]);
    assert!(
        transcript(&out).contains("git merge refused, nothing changed"),
        "{}",
        transcript(&out)
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("local.cfg")).unwrap(),
        "mine\n"
    );
    std::fs::remove_file(repo.join("local.cfg")).unwrap();
    // A tracked file changed: left, and the change kept.
    write(&repo, "w.yml", &step("other.txt", "x"));
    commit(&repo);
    write(&repo, "notes.txt", "mine, changed\n");
    let before = head();
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "b3", "-y"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        transcript(&out).contains("not merged into your branch: '")
            && transcript(&out).contains("has uncommitted changes to tracked files"),
        "{}",
        transcript(&out)
    );
    assert_eq!(head(), before);
    assert_eq!(
        std::fs::read_to_string(repo.join("notes.txt")).unwrap(),
        "mine, changed\n"
    );
    git(&repo, &["checkout", "--", "notes.txt"]);
    // A conflict: b4 writes result.txt from a base where main then changes it too; the
    // merge is aborted and the repository is as it was.
    write(&repo, "w.yml", &step("result.txt", "theirs"));
    commit(&repo);
    ok_in(&env, &repo, &["run", "w.yml", "--job-id", "b4"]);
    write(&repo, "result.txt", "ours\n");
    commit(&repo);
    let before = head();
    let out = in_repo(&env, &repo, &["resume", "b4", "-y"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        transcript(&out).contains("not merged into your branch: git merge failed, and was aborted"),
        "{}",
        transcript(&out)
    );
    assert_eq!(head(), before);
    assert_eq!(
        git_out(&repo, &["status", "--porcelain", "--untracked-files=no"]),
        ""
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("result.txt")).unwrap(),
        "ours\n"
    );
    // Started on a detached HEAD: no branch to merge into.
    git(&repo, &["checkout", "-q", "--detach"]);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "b5", "-y"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        transcript(&out).contains("(a detached HEAD)"),
        "{}",
        transcript(&out)
    );
    git(&repo, &["checkout", "-q", "main"]);
    // The workflow's own merge: steps merge; prodigy adds nothing.
    write(
        &repo,
        "w.yml",
        &format!(
            "{}merge:\n  - shell: echo merge-step ran\n",
            step("third.txt", "3")
        ),
    );
    commit(&repo);
    let before = head();
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "b6", "-y"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        !transcript(&out).contains("git merge prodigy/b6"),
        "{}",
        transcript(&out)
    );
    assert!(
        !transcript(&out).contains("merged prodigy/b6"),
        "{}",
        transcript(&out)
    );
    assert_eq!(head(), before);
    // A step that changes a tracked file and commits nothing: said at the end, and the
    // change is not merged as if it were on the branch.
    write(
        &repo,
        "w.yml",
        "commands:\n  - shell: echo more >> notes.txt\n",
    );
    commit(&repo);
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "b8", "-y"]);
    let said = transcript(&out);
    assert!(
        said.contains("holds changes no step committed; they are not on prodigy/b8"),
        "{said}"
    );
    assert!(
        said.contains("has uncommitted changes, which are not on prodigy/b8"),
        "{said}"
    );
    // --json says where the result went.
    write(&repo, "w.yml", &step("json.txt", "j"));
    commit(&repo);
    let out = in_repo(
        &env,
        &repo,
        &["run", "w.yml", "--job-id", "b9", "-y", "--json"],
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["merged_into"], "main", "{summary}");
    assert_eq!(
        std::fs::read_to_string(repo.join("json.txt")).unwrap(),
        "j\n"
    );
}
