//! The rest of the original's workflow language (issue 23) and the `run` flags of
//! sessions (issue 22): each feature run end to end in a real repository, with the
//! stand-in `claude` where a Claude step appears. The workflows are our own, written in
//! the shapes of the original's example files.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::claude::{command, commit_all, ok, run_in};
use crate::common::{Env, IDENTITY, transcript};
use crate::runner::{assert_one_line_error, repo_and_marks, write};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn lines(path: &Path) -> Vec<String> {
    read(path).lines().map(str::to_owned).collect()
}

fn show(env: &Env, repo: &Path, job: &str) -> Value {
    serde_json::from_str(&ok(env, repo, &["jobs", "show", job, "--json"], &[])).unwrap()
}

/// A repository with `w.yml` holding `workflow` (`MARKS` replaced by the marks
/// directory), committed.
fn setup(env: &Env, name: &str, workflow: &str) -> (PathBuf, PathBuf) {
    let (repo, marks) = repo_and_marks(env, name);
    write(
        &repo,
        "w.yml",
        &workflow.replace("MARKS", &marks.display().to_string()),
    );
    commit_all(&repo);
    (repo, marks)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn write_file_writes_inside_the_worktree_and_nowhere_else() {
    let env = Env::new();
    let (repo, marks) = setup(
        &env,
        "writes",
        "- shell: echo hello\n\
         \x20 capture: greeting\n\
         - write_file:\n\
         \x20   path: out/data.json\n\
         \x20   content: '{\"greeting\": \"${greeting}\", \"n\": [1, 2]}'\n\
         \x20   format: json\n\
         \x20   mode: \"0600\"\n\
         \x20   create_dirs: true\n\
         - write_file:\n\
         \x20   path: out/data.yaml\n\
         \x20   content: '{\"a\": 1}'\n\
         \x20   format: yaml\n\
         - shell: cp out/data.json out/data.yaml MARKS/ && stat -c %a out/data.json > MARKS/mode\n",
    );
    ok(&env, &repo, &["run", "w.yml", "--job-id", "w1"], &[]);
    let json: Value = serde_json::from_str(&read(&marks.join("data.json"))).unwrap();
    assert_eq!(json, serde_json::json!({"greeting": "hello", "n": [1, 2]}));
    assert!(
        read(&marks.join("data.json")).contains("\n  \"n\""),
        "pretty"
    );
    assert_eq!(read(&marks.join("data.yaml")).trim(), "a: 1");
    assert_eq!(read(&marks.join("mode")).trim(), "600");
    // A path that leaves the worktree, by `..` or by a link committed in the repository,
    // fails its step and writes nothing.
    std::os::unix::fs::symlink(&marks, repo.join("link")).unwrap();
    for (name, path, says) in [
        ("up", "../escaped.txt", "leaves the worktree"),
        ("abs", "/tmp/escaped.txt", "leaves the worktree"),
        ("link", "link/escaped.txt", "through a symbolic link"),
        // A worktree's `.git` names its repository: rewritten, the agent's commits went
        // to the user's own branch.
        ("git", ".git", "inside git's own files"),
        ("gitdir", "sub/.GIT/config", "inside git's own files"),
    ] {
        write(
            &repo,
            "bad.yml",
            &format!("- write_file:\n    path: {path}\n    content: x\n"),
        );
        commit_all(&repo);
        let out = run_in(&env, &repo, &["run", "bad.yml", "--job-id", name], &[]);
        let err = assert_one_line_error(&out, 1);
        assert!(err.contains(says), "{path}: {err}");
        assert!(
            err.contains("step at line 2 failed: write_file: path"),
            "{err}"
        );
    }
    assert!(!marks.join("escaped.txt").exists());
    assert!(!repo.parent().unwrap().join("escaped.txt").exists());
}

/// The output of a `map.input` command is read whole (it was cut at 1 MiB, a step's
/// capture, and the items past it were lost in silence): 300,000 lines, 2 MB, filtered
/// down to the three that end in five zeros.
#[test]
fn a_map_input_command_is_read_whole() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "bigin");
    write(
        &repo,
        "w.yml",
        &"name: w\n\
         mode: mapreduce\n\
         map:\n\
         \x20 input: seq 1 300000\n\
         \x20 filter: \"item ~ '00000$'\"\n\
         \x20 agent_template:\n\
         \x20   - shell: touch MARKS/item-${item}\n"
            .replace("MARKS", &marks.display().to_string()),
    );
    commit_all(&repo);
    ok(&env, &repo, &["run", "w.yml", "--job-id", "big"], &[]);
    let mut made: Vec<String> = std::fs::read_dir(&marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    made.sort();
    assert_eq!(made, ["item-100000", "item-200000", "item-300000"]);
}

/// A `working_dir` made from an item's field runs its step inside the worktree, and one
/// that would leave it (an absolute path, `..`, a committed link) fails its item: item text
/// does not choose where a step runs. One written as an absolute path is taken as written.
#[test]
fn a_working_dir_from_an_item_stays_inside_the_worktree() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "wd");
    std::fs::create_dir(repo.join("sub")).unwrap();
    write(&repo, "sub/keep", "");
    std::os::unix::fs::symlink(&marks, repo.join("link")).unwrap();
    let items = serde_json::json!([
        {"id": "in", "dir": "sub"},
        {"id": "abs", "dir": marks.display().to_string()},
        {"id": "up", "dir": "../.."},
        {"id": "link", "dir": "link"},
    ]);
    write(&repo, "items.json", &items.to_string());
    write(
        &repo,
        "w.yml",
        &"name: w\n\
         mode: mapreduce\n\
         map:\n\
         \x20 input: items.json\n\
         \x20 agent_template:\n\
         \x20   - shell: basename \"$(pwd)\" > MARKS/ran-${item.id}\n\
         \x20     working_dir: ${item.dir}\n\
         \x20   - shell: touch written-as-absolute-${item.id}\n\
         \x20     working_dir: MARKS\n"
            .replace("MARKS", &marks.display().to_string()),
    );
    commit_all(&repo);
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "wd"], &[]);
    assert!(!out.status.success(), "{}", transcript(&out));
    assert_eq!(read(&marks.join("ran-in")).trim(), "sub");
    assert!(marks.join("written-as-absolute-in").exists());
    for id in ["abs", "up", "link"] {
        assert!(!marks.join(format!("ran-{id}")).exists(), "{id} ran");
        assert!(!marks.join(format!("written-as-absolute-{id}")).exists());
    }
    let dlq = ok(
        &env,
        &repo,
        &["dlq", "export", "wd", "--format", "json"],
        &[],
    );
    let dlq: Value = serde_json::from_str(&dlq).unwrap();
    let mut failed: Vec<&str> = dlq
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let message = item["failure_history"][0]["error_message"]
                .as_str()
                .unwrap();
            assert!(
                message.contains("leaves the worktree")
                    && message.contains("one made from variables must stay inside it"),
                "{message}"
            );
            item["item_data"]["id"].as_str().unwrap()
        })
        .collect();
    failed.sort_unstable();
    assert_eq!(failed, ["abs", "link", "up"]);
}

/// `check.sh` writes a validation result whose completion grows by 50 each round that
/// `on_incomplete` counts.
fn validation_repo(env: &Env, name: &str, on_incomplete: &str) -> (PathBuf, PathBuf) {
    let (repo, marks) = repo_and_marks(env, name);
    write(
        &repo,
        "check.sh",
        &format!(
            "n=$(cat {m}/round 2>/dev/null || echo 0)\n\
             printf '{{\"completion_percentage\": %d, \"status\": \"incomplete\", \"missing\": [\"part %d\"], \"gaps\": {{\"g%d\": {{\"description\": \"d\", \"severity\": \"low\"}}}}}}\\n' $((n * 50)) $n $n > result.json\n",
            m = marks.display()
        ),
    );
    write(
        &repo,
        "w.yml",
        &format!(
            "- shell: echo work\n\
             \x20 validate:\n\
             \x20   shell: sh check.sh\n\
             \x20   result_file: result.json\n\
             \x20   threshold: 100\n{on_incomplete}"
        )
        .replace("MARKS", &marks.display().to_string()),
    );
    commit_all(&repo);
    (repo, marks)
}

#[test]
fn validation_runs_on_incomplete_until_the_threshold_and_records_each_result() {
    let env = Env::new();
    let (repo, marks) = validation_repo(
        &env,
        "validates",
        "\x20   on_incomplete:\n\
         \x20     shell: \"echo ${validation.attempt_number} ${validation.completion} ${validation.missing} ${validation.gaps} >> MARKS/rounds; echo $(( $(cat MARKS/round 2>/dev/null || echo 0) + 1 )) > MARKS/round\"\n\
         \x20     max_attempts: 3\n",
    );
    ok(&env, &repo, &["run", "w.yml", "--job-id", "v1"], &[]);
    assert_eq!(
        lines(&marks.join("rounds")),
        [
            "1 0 part 0 {\"g0\":{\"description\":\"d\",\"severity\":\"low\"}}",
            "2 50 part 1 {\"g1\":{\"description\":\"d\",\"severity\":\"low\"}}"
        ]
    );
    // Each result is an event, shown by `jobs show`.
    let job = show(&env, &repo, "v1");
    assert_eq!(job["status"], "complete", "{job}");
    let v: Vec<(f64, bool)> = job["validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["completion"].as_f64().unwrap(),
                v["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(v, [(0.0, false), (50.0, false), (100.0, true)]);
    let text = ok(&env, &repo, &["jobs", "show", "v1"], &[]);
    assert!(
        text.contains("validated:  session/1 session #3: 100% of 100% passed"),
        "{text}"
    );
}

#[test]
fn an_incomplete_validation_fails_its_step_unless_told_to_go_on() {
    let env = Env::new();
    let (repo, _) = validation_repo(
        &env,
        "incomplete",
        "\x20   on_incomplete:\n\
         \x20     shell: \"echo 1 > MARKS/round\"\n\
         \x20     max_attempts: 1\n",
    );
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "v2"], &[]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains(
            "validation: 50.0% complete, under the threshold of 100% after 1 on_incomplete round(s) (missing: part 1)"
        ),
        "{err}"
    );
    // fail_workflow: false lets the session go on.
    let (repo, _) = validation_repo(
        &env,
        "goes-on",
        "\x20   on_incomplete:\n\
         \x20     shell: \"true\"\n\
         \x20     max_attempts: 1\n\
         \x20     fail_workflow: false\n",
    );
    ok(&env, &repo, &["run", "w.yml", "--job-id", "v3"], &[]);
    // A result that is not one is a failed validation, never a pass.
    let (repo, _) = repo_and_marks(&env, "garbage");
    write(
        &repo,
        "w.yml",
        "- shell: echo '[1, 2]' > result.json\n\
         \x20 validate:\n\
         \x20   result_file: result.json\n\
         \x20   threshold: 10\n",
    );
    commit_all(&repo);
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "v4"], &[]);
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("'result.json' is not a JSON object"), "{err}");
}

/// Every file under the home holding `needle`, loose objects decoded.
fn home_files_with(home: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![home.to_owned()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                dirs.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let object = path
                .strip_prefix(home.join("objects"))
                .ok()
                .map(|rel| rel.to_string_lossy().replace('/', ""))
                .and_then(|hex| hex.parse::<prodigy::ObjectId>().ok());
            let content = match object {
                Some(id) => prodigy::store::object::decode(&id, &path, &bytes)
                    .map(|o| o.payload)
                    .unwrap_or(bytes),
                None => bytes,
            };
            if content.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn the_environment_computed_profiled_and_secret_with_secrets_masked_everywhere() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "environment");
    command(
        &repo,
        "show-key",
        "echo \"the key is $ARGUMENTS\"\necho \"RESULT: used $ARGUMENTS\"",
    );
    write(
        &repo,
        ".env.test",
        "# from a file\nFROM_FILE=\"file value\"\nPLAIN=overridden\n",
    );
    write(
        &repo,
        "w.yml",
        &"name: environment\n\
          env:\n\
          \x20 MARKS: MARKS\n\
          \x20 PLAIN: plain\n\
          \x20 COUNT: 3\n\
          \x20 WORKERS:\n\
          \x20   command: \"echo 4\"\n\
          \x20   cache: true\n\
          \x20 DEPLOY:\n\
          \x20   condition: \"${branch} == 'main'\"\n\
          \x20   when_true: production\n\
          \x20   when_false: staging\n\
          \x20 TOKEN:\n\
          \x20   secret: true\n\
          \x20   value: \"${TOKEN_SOURCE}\"\n\
          secrets:\n\
          \x20 API_KEY: \"${env:API_KEY_SOURCE}\"\n\
          env_files:\n\
          \x20 - .env.test\n\
          \x20 - .env.missing\n\
          profiles:\n\
          \x20 dev:\n\
          \x20   description: development\n\
          \x20   COUNT: 30\n\
          commands:\n\
          \x20 - shell: echo $PLAIN $COUNT $WORKERS $DEPLOY \"$FROM_FILE\" > $MARKS/env.txt\n\
          \x20 - shell: echo token=$TOKEN key=$API_KEY\n\
          \x20   capture: shown\n\
          \x20 - shell: echo ${shown} > $MARKS/capture.txt\n\
          \x20 - shell: echo oops $API_KEY >&2; exit 3\n\
          \x20   allow_failure: true\n\
          \x20 - claude: /show-key ${env.API_KEY}\n\
          \x20 - shell: test -f $MARKS/go && test $(printf %s \"$API_KEY\" | wc -c) = 12 && echo resumed > $MARKS/resumed\n"
            .replace("MARKS: MARKS", &format!("MARKS: {}", marks.display())),
    );
    commit_all(&repo);
    let secrets = [
        ("TOKEN_SOURCE", "tok-S3CRET-1"),
        ("API_KEY_SOURCE", "key-S3CRET-2"),
        ("branch", "main"),
    ];
    let out = run_in(
        &env,
        &repo,
        &["run", "w.yml", "--job-id", "e1", "--profile", "dev"],
        &secrets,
    );
    // The last step fails until `go` exists: the job stops there.
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let said = stderr(&out);
    assert!(
        said.contains("env_files: '.env.missing' is not in the repository; skipped"),
        "{said}"
    );
    // Files under plain values, the profile over them, computed values over all.
    assert_eq!(
        read(&marks.join("env.txt")).trim(),
        "plain 30 4 production file value"
    );
    assert_eq!(read(&marks.join("capture.txt")).trim(), "token=*** key=***");
    // A resume reads the secrets again: without them it refuses, saying why.
    std::fs::write(marks.join("go"), "").unwrap();
    let out = run_in(&env, &repo, &["resume", "e1"], &[("TOKEN_SOURCE", "t")]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains("secret API_KEY: the variable API_KEY_SOURCE is not set"),
        "{err}"
    );
    ok(&env, &repo, &["resume", "e1"], &secrets);
    assert_eq!(read(&marks.join("resumed")).trim(), "resumed");
    assert_eq!(show(&env, &repo, "e1")["status"], "complete");
    // No secret is anywhere in the home: logs, events, checkpoints, transcripts.
    for (_, secret) in &secrets[..2] {
        assert_eq!(
            home_files_with(&env.home(), secret.as_bytes()),
            Vec::<String>::new(),
            "{secret}"
        );
    }
    // What is shown of the job says *** where they were.
    let transcript = ok(&env, &repo, &["logs", "e1", "--json"], &[]);
    assert!(transcript.contains("the key is ***"), "{transcript}");
    let events = ok(&env, &repo, &["events", "show", "e1", "--json"], &[]);
    assert!(!events.contains("S3CRET"));
    assert!(events.contains("/show-key ***"), "{events}");
    let log = std::fs::read_dir(env.home().join("worktrees/environment/e1/logs"))
        .unwrap()
        .flatten()
        .map(|e| read(&e.path()))
        .collect::<String>();
    assert!(log.contains("oops ***"), "{log}");
    // And in the store, where `prodigy logs` reads each step's output.
    let stored = ok(&env, &repo, &["logs", "e1"], &[]);
    assert!(
        stored.contains("oops ***") && !stored.contains("S3CRET"),
        "{stored}"
    );
}

/// A secret is masked in every form a job writes it in (a third hostile sweep found each
/// one in clear): quoted into a shell command (`'` as `'\''`, `"` and `$` escaped), escaped
/// in Claude's stream-json (`\"`, `\\`, `\u00f6`) and decoded again for its events, result
/// and capture, and a secret of several lines printed a line at a time.
#[test]
fn secrets_with_quotes_escapes_and_line_breaks_are_masked_in_every_form() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "forms");
    command(
        &repo,
        "show-key",
        "echo \"the key is $ARGUMENTS\"\necho \"RESULT: used $ARGUMENTS\"",
    );
    write(
        &repo,
        "w.yml",
        "name: forms\n\
         secrets:\n\
         \x20 API_KEY: \"${env:API_KEY_SOURCE}\"\n\
         \x20 PEM: \"${env:PEM_SOURCE}\"\n\
         commands:\n\
         \x20 - claude: /show-key ${env.API_KEY}\n\
         \x20   capture_output: out\n\
         \x20 - shell: echo \"captured ${out}\"\n\
         \x20 - shell: \"test -n '${env.API_KEY}' && echo single\"\n\
         \x20 - shell: test -n \"${env.API_KEY}\" && echo double\n\
         \x20 - shell: printf '%s\\n' \"$PEM\" | while IFS= read -r l; do echo \"$l\"; sleep 0.1; done\n",
    );
    commit_all(&repo);
    let secrets = [
        ("API_KEY_SOURCE", "it's \"pa$s\\w\u{f6}rd-S3CRET"),
        (
            "PEM_SOURCE",
            "-----BEGIN KEY-----\nMIIEsecretbody1\nMIIEsecretbody2\n-----END KEY-----",
        ),
    ];
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "f1"], &secrets);
    assert!(out.status.success(), "{}", transcript(&out));
    let said = transcript(&out);
    assert!(
        !said.contains("S3CRET") && !said.contains("secretbody"),
        "{said}"
    );
    for needle in ["S3CRET", "secretbody", "rd-S3"] {
        assert_eq!(
            home_files_with(&env.home(), needle.as_bytes()),
            Vec::<String>::new(),
            "{needle}"
        );
    }
    let shown = ok(&env, &repo, &["logs", "f1"], &[]);
    assert!(
        shown.contains("[result: used ***]") && shown.contains("captured used ***"),
        "{shown}"
    );
    assert!(
        !shown.contains("S3CRET") && !shown.contains("secretbody"),
        "{shown}"
    );
    assert!(shown.contains("test -n '***' && echo single"), "{shown}");
    assert!(shown.contains("test -n \"***\" && echo double"), "{shown}");
}

/// `on_failure:` as the original reads it. In a session (its `TestDebugConfig`): three
/// attempts unless told, the handler between attempts only, its failure no matter, and
/// the workflow goes on after the last failed attempt unless `fail_workflow: true`; the
/// steps after read what the failed step printed. In an agent: a handler that succeeds
/// handles the failure, one that fails fails the item. (A session stopped on a handler's
/// failure, and ran the handler after the last attempt too.)
#[test]
fn on_failure_reads_as_the_original_in_sessions_and_agents() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "handled");
    let f = marks.join("handled.txt");
    let session = |job: &str, handler: &str, extra: &str| {
        write(
            &repo,
            "w.yml",
            &format!(
                "env:\n  F: {}\n\
                 commands:\n\
                 \x20 - shell: echo try >> $F; echo broke-{job}; exit 3\n\
                 \x20   capture: out\n\
                 \x20   on_failure:\n\
                 \x20     shell: {handler}\n{extra}\
                 \x20 - shell: echo after ${{out}} >> $F\n",
                f.display()
            ),
        );
        commit_all(&repo);
        run_in(&env, &repo, &["run", "w.yml", "--job-id", job], &[])
    };
    // `${shell.attempt}`: which attempt failed, as the original's.
    let out = session("s1", "echo handler ${shell.attempt} >> $F", "");
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(
        lines(&f),
        [
            "try",
            "handler 1",
            "try",
            "handler 2",
            "try",
            "after broke-s1"
        ]
    );
    std::fs::remove_file(&f).unwrap();
    // A handler that fails: the attempts go on, and so does the workflow.
    let out = session("s2", "echo handler >> $F; exit 1", "");
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(
        lines(&f),
        ["try", "handler", "try", "handler", "try", "after broke-s2"]
    );
    std::fs::remove_file(&f).unwrap();
    let out = session(
        "s3",
        "echo handler >> $F",
        "\x20     fail_workflow: true\n\x20     max_attempts: 2\n",
    );
    assert!(assert_one_line_error(&out, 1).contains("exit code 3"));
    assert_eq!(lines(&f), ["try", "handler", "try"]);
    std::fs::remove_file(&f).unwrap();
    // One attempt: no handler runs (it runs between attempts).
    let out = session("s4", "echo handler >> $F", "\x20     max_attempts: 1\n");
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(lines(&f), ["try", "after broke-s4"]);
    std::fs::remove_file(&f).unwrap();
    // The original's short forms: a command as the value (a shell command, or a Claude
    // one when it starts with `/`), `true` (go on) and `false` (fail).
    let short = |job: &str, last: &str| {
        write(
            &repo,
            "w.yml",
            &format!(
                "env:\n  F: {}\n\
                 commands:\n\
                 \x20 - shell: exit 3\n\
                 \x20   on_failure: \"echo short-handler >> $F\"\n\
                 \x20 - shell: exit 4\n\
                 \x20   on_failure: {last}\n\
                 \x20 - shell: echo after >> $F\n",
                f.display()
            ),
        );
        commit_all(&repo);
        run_in(&env, &repo, &["run", "w.yml", "--job-id", job], &[])
    };
    let out = short("s5", "true");
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(lines(&f), ["short-handler", "short-handler", "after"]);
    std::fs::remove_file(&f).unwrap();
    let out = short("s6", "false");
    assert!(assert_one_line_error(&out, 1).contains("exit code 4"));
    assert_eq!(lines(&f), ["short-handler", "short-handler"]);
    std::fs::remove_file(&f).unwrap();
    // An agent: b's handler handles its failure, c's fails and so does c.
    write(
        &repo,
        "m.yml",
        &format!(
            "name: m\nmode: mapreduce\nenv:\n  F: {}\n\
             map:\n  input: \"printf 'a\\\\nb\\\\nc\\\\n'\"\n  max_parallel: 1\n  agent_template:\n\
             \x20   - shell: test ${{item}} = a\n\
             \x20     on_failure:\n\
             \x20       shell: test ${{item}} = b && echo fixed-${{item}} >> $F\n\
             \x20   - shell: echo next-${{item}} >> $F\n",
            f.display()
        ),
    );
    commit_all(&repo);
    let out = run_in(&env, &repo, &["run", "m.yml", "--job-id", "m1"], &[]);
    assert!(!out.status.success(), "{}", transcript(&out));
    assert_eq!(lines(&f), ["next-a", "fixed-b", "next-b"]);
}

/// A handler's `${shell.output}` is what the failed step printed, as the original's
/// sessions give it: both streams (`STDOUT:`/`STDERR:`; a test runner's report is on
/// stdout), one alone when the other is empty, and of a long output its end, from a
/// line's start (before, it was always the standard error's tail: `boom` here).
#[test]
fn a_handler_reads_what_the_failed_step_printed() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "printed");
    let f = marks.join("seen.txt");
    write(
        &repo,
        "w.yml",
        &format!(
            "env:\n  F: {}\n\
             commands:\n\
             \x20 - shell: printf 'detail one\\ndetail two\\n'; echo boom >&2; exit 1\n\
             \x20   on_failure:\n\
             \x20     shell: printf '%s\\n' ${{shell.output}} >> $F\n\
             \x20     max_attempts: 2\n\
             \x20 - shell: echo only-err >&2; exit 1\n\
             \x20   on_failure:\n\
             \x20     shell: printf '%s\\n' ${{shell.output}} >> $F\n\
             \x20     max_attempts: 2\n\
             \x20 - shell: seq 1 20000; exit 1\n\
             \x20   on_failure:\n\
             \x20     shell: printf '%s\\n' ${{shell.output}} >> $F\n\
             \x20     max_attempts: 2\n\
             \x20 - shell: seq 1 300000; echo SUMMARY 1 failed; exit 1\n\
             \x20   on_failure:\n\
             \x20     shell: printf '%s\\n' ${{shell.output}} > $F.big\n\
             \x20     max_attempts: 2\n",
            f.display()
        ),
    );
    commit_all(&repo);
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "p1"], &[]);
    assert!(out.status.success(), "{}", transcript(&out));
    let seen = lines(&f);
    // Both streams, as the original's sessions give them; one alone when the other is
    // empty.
    assert_eq!(
        seen[..7],
        [
            "STDOUT:",
            "detail one",
            "detail two",
            "",
            "STDERR:",
            "boom",
            "only-err"
        ]
    );
    // The end of `seq 1 20000`, whole lines, at most 32 KiB.
    let numbers: Vec<u32> = seen[7..].iter().map(|l| l.parse().unwrap()).collect();
    let first = numbers[0];
    assert!(first > 1, "the whole output: {first}");
    assert_eq!(numbers, (first..=20000).collect::<Vec<_>>());
    let bytes: usize = seen[7..].iter().map(|l| l.len() + 1).sum();
    assert!(bytes <= 32 * 1024 && bytes > 32 * 1024 - 7, "{bytes}");
    // Past the 1 MiB a capture holds (2 MB here): still the end, where the summary is.
    let big = lines(&marks.join("seen.txt.big"));
    assert_eq!(big.last().unwrap(), "SUMMARY 1 failed");
    let numbers: Vec<u32> = big[..big.len() - 1]
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    let first = numbers[0];
    // Whole lines: from a line's start to the last, nothing cut (said briefly: 4,000+).
    let whole = numbers == (first..=300000).collect::<Vec<_>>();
    assert!(whole, "from {first}, {} lines", numbers.len());
    assert!(first > 290000, "{first}");
}

/// A git list unquoted in a shell command is a word per file, as the original's
/// space-joined list was split there (its book: `for file in ${step.files_added}`, `git add
/// ${workflow.files_modified}`), a name with spaces still one word and an empty list
/// nothing; inside quotes it stays one string. (It was one word: the loop ran once over
/// "a b.txt c.txt", git add was given one pathspec of every name.)
#[test]
fn an_unquoted_git_list_is_a_word_per_file() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "gitwords");
    let f = marks.join("words.txt");
    write(
        &repo,
        "w.yml",
        &format!(
            "{IDENTITY}  F: {}\n\
             commands:\n\
             \x20 - shell: \"touch 'a b.txt' c.txt -- -n && git add . && git commit -qm two\"\n\
             \x20 - shell: for f in ${{step.files_added}}; do echo \"[$f]\" >> $F; done; echo \"${{step.files_added}}\" >> $F; X=${{step.files_added}}; echo \"x=$X\" >> $F\n\
             \x20 - shell: for f in ${{step.files_deleted}}; do echo \"del $f\" >> $F; done; echo none >> $F\n\
             \x20 - shell: echo more > c.txt && git add ${{workflow.files_added:*.txt}} && git commit -qm more\n",
            f.display()
        ),
    );
    commit_all(&repo);
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "g1"], &[]);
    assert!(out.status.success(), "{}", transcript(&out));
    // A name like an option is the path it is; in an assignment the list stays one
    // word (split, `X=a b` would run `b`).
    assert_eq!(
        lines(&f),
        [
            "[./-n]",
            "[a b.txt]",
            "[c.txt]",
            "-n a b.txt c.txt",
            "x=-n a b.txt c.txt",
            "none"
        ]
    );
}

/// A plain `env:` value reads `${env.NAME}` (the environment prodigy runs in) and
/// `${NAME}` (another plain value), as the original's; anything else in `${…}` is refused
/// at load, and a value the run adds (`--param`) is data, never read. (Each went to the
/// steps as the literal text `${env.HOME}/.cache`.)
#[test]
fn env_values_read_the_environment_and_each_other() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "envrefs");
    let f = marks.join("env.txt");
    let workflow = |extra: &str| {
        write(
            &repo,
            "w.yml",
            &format!(
                "env:\n  F: {}\n  CACHE: \"${{env.HOME}}/.cache/x\"\n  A: foo\n  B: \"${{A}}-bar\"\n{extra}\
                 commands:\n\
                 \x20 - shell: echo $CACHE $B ${{B}} $P >> $F\n",
                f.display()
            ),
        );
        commit_all(&repo);
    };
    workflow("");
    let out = run_in(
        &env,
        &repo,
        &["run", "w.yml", "--job-id", "e1", "--param", "P=${env.HOME}"],
        &[],
    );
    assert!(out.status.success(), "{}", transcript(&out));
    let home = env.dir.path().display().to_string();
    assert_eq!(
        lines(&f),
        [format!("{home}/.cache/x foo-bar foo-bar ${{env.HOME}}")]
    );
    for (extra, says) in [
        ("  C: \"${nope}\"\n", "env C: ${nope}: an env value reads"),
        (
            "  C: \"${env.PRODIGY_IT_UNSET}\"\n",
            "PRODIGY_IT_UNSET is not set",
        ),
        ("  C: \"${B}\"\n", "env C: ${B}: an env value reads"),
        ("  C: \"${A\"\n", "without its `}`"),
    ] {
        workflow(extra);
        let out = run_in(&env, &repo, &["run", "w.yml"], &[]);
        let line = assert_one_line_error(&out, 1);
        assert!(line.contains("w.yml:") && line.contains(says), "{line}");
    }
}

/// A capture has `NAME.exit_code`, `.success` and `.duration` without `capture_streams`,
/// as the original's (its docs' `when: "${build.success}"`); a JSON capture's own fields
/// stay its output's. (They were refused at load, "build is not JSON".)
#[test]
fn a_capture_tells_its_exit_code_success_and_duration() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "meta");
    let f = marks.join("meta.txt");
    write(
        &repo,
        "w.yml",
        &format!(
            "env:\n  F: {}\n\
             commands:\n\
             \x20 - shell: echo built\n\
             \x20   capture_output: build\n\
             \x20 - shell: echo ${{build.success}} ${{build.exit_code}} >> $F\n\
             \x20   when: \"${{build.success}}\"\n\
             \x20 - shell: echo ${{build.duration}} >> $F\n\
             \x20 - shell: \"echo '{{\\\"success\\\": \\\"field\\\"}}'\"\n\
             \x20   capture: data\n\
             \x20   capture_format: json\n\
             \x20 - shell: echo ${{data.success}} >> $F\n",
            f.display()
        ),
    );
    commit_all(&repo);
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "m1"], &[]);
    assert!(out.status.success(), "{}", transcript(&out));
    let got = lines(&f);
    assert_eq!(got[0], "true 0");
    assert!(got[1].parse::<f64>().is_ok_and(|d| d >= 0.0), "{got:?}");
    assert_eq!(got[2], "field");
}

#[test]
fn step_fields_of_the_original_run_as_written() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "fields");
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    write(&repo, "sub/.keep", "");
    write(
        &repo,
        "w.yml",
        &"env:\n\
          \x20 F: MARKS/fields.txt\n\
          \x20 PLAIN: visible\n\
          \x20 GIT_AUTHOR_NAME: t\n\
          \x20 GIT_AUTHOR_EMAIL: t@example.com\n\
          \x20 GIT_COMMITTER_NAME: t\n\
          \x20 GIT_COMMITTER_EMAIL: t@example.com\n\
          commands:\n\
          \x20 - shell: exit 3\n\
          \x20   on_exit_code:\n\
          \x20     3:\n\
          \x20       shell: echo handled ${shell.exit_code} >> $F\n\
          \x20 - shell: exit 5\n\
          \x20   allow_failure: true\n\
          \x20 - shell: echo code ${last.exit_code} >> $F\n\
          \x20 - shell: echo out; echo err >&2; exit 2\n\
          \x20   capture: streams\n\
          \x20   capture_streams:\n\
          \x20     stdout: true\n\
          \x20     stderr: true\n\
          \x20     exit_code: true\n\
          \x20     success: true\n\
          \x20   fail_workflow: false\n\
          \x20 - shell: echo ${streams} ${streams.stderr} ${streams.exit_code} ${streams.success} >> $F\n\
          \x20 - shell: mkdir -p specs && echo x > specs/7-feature.md && git add specs && git commit -qm spec\n\
          \x20   id: made\n\
          \x20   outputs:\n\
          \x20     spec:\n\
          \x20       file_pattern: \"*-feature.md\"\n\
          \x20 - shell: echo ${made.spec} / ${step.files_added} / ${workflow.files_added:specs/*.md} / ${step.commit_count} >> $F\n\
          \x20 - shell: echo first\n\
          \x20   on_success:\n\
          \x20     shell: echo after ${last.output} >> $F\n\
          \x20 - shell: echo $STEP_VAR $(basename $(pwd)) >> $F\n\
          \x20   working_dir: sub\n\
          \x20   env:\n\
          \x20     STEP_VAR: v-${made.spec}\n\
          \x20 - shell: \"echo cleared:$PLAIN:$F: >> MARKS/fields.txt\"\n\
          \x20   clear_env: true\n\
          \x20 - shell: echo warning text; exit 1\n\
          \x20   capture: lint\n\
          \x20   on_failure:\n\
          \x20     shell: echo fix ${lint} >> $F\n\
          \x20     fail_workflow: false\n\
          \x20 - shell: echo later ${lint} >> $F\n\
          \x20   when: \"${lint|default:none} != none\"\n\
          \x20 - shell: printf 'abcd'\n\
          \x20   capture: word\n\
          \x20 - shell: echo ${word|length} chars >> $F\n"
            .replace("MARKS", &marks.display().to_string()),
    );
    commit_all(&repo);
    ok(&env, &repo, &["run", "w.yml", "--job-id", "f1"], &[]);
    assert_eq!(
        lines(&marks.join("fields.txt")),
        [
            "handled 3",
            "code 5",
            "out err 2 false",
            "specs/7-feature.md / specs/7-feature.md / specs/7-feature.md / 1",
            "after first",
            "v-specs/7-feature.md sub",
            "cleared:::",
            // Three attempts, the handler between them.
            "fix warning text",
            "fix warning text",
            // What a forgiven step printed is its capture, as the original keeps it.
            "later warning text",
            "4 chars",
        ]
    );
}

#[test]
fn an_unhandled_exit_code_and_a_missing_output_fail_their_steps() {
    let env = Env::new();
    let (repo, _) = setup(
        &env,
        "unhandled",
        "- shell: exit 4\n\
         \x20 on_exit_code:\n\
         \x20   3:\n\
         \x20     shell: echo never\n",
    );
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "u1"], &[]);
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("step at line 1 failed: exit code 4"), "{err}");
    let (repo, _) = setup(
        &env,
        "nooutput",
        "- shell: echo nothing committed\n\
         \x20 id: x\n\
         \x20 outputs:\n\
         \x20   spec:\n\
         \x20     file_pattern: \"*.md\"\n",
    );
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "u2"], &[]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains(
            "outputs: ${x.spec}: no file the step committed matches \"*.md\" (it committed nothing)"
        ),
        "{err}"
    );
}

#[test]
fn mapreduce_filters_sorts_limits_setup_and_merges_as_the_original_writes_them() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "mr");
    write(
        &repo,
        "items.json",
        r#"[{"path": "a.rs", "has_issues": true, "prio": 1},
            {"path": "b.py", "has_issues": true, "prio": 5},
            {"path": "c.rs", "has_issues": false, "prio": 9},
            {"path": "d.rs", "has_issues": true},
            {"path": "e.rs", "has_issues": true, "prio": 7}]"#,
    );
    write(
        &repo,
        "w.yml",
        &"name: mr\n\
          mode: mapreduce\n\
          env:\n\
          \x20 PAR: \"1\"\n\
          setup:\n\
          \x20 timeout: 60\n\
          \x20 commands:\n\
          \x20   - shell: echo setup\n\
          map:\n\
          \x20 input: items.json\n\
          \x20 filter: \"path matches '\\\\.rs$' AND has_issues == true\"\n\
          \x20 sort_by: \"prio DESC NULLS LAST, path\"\n\
          \x20 max_parallel: ${PAR}\n\
          \x20 agent_template:\n\
          \x20   - shell: echo ${item.path} >> MARKS/order.txt\n\
          reduce:\n\
          \x20 - shell: echo reduce ${map.total} > MARKS/reduce.txt\n\
          merge:\n\
          \x20 commands:\n\
          \x20   - shell: echo ${merge.source_branch} ${merge.target_branch} ${merge.session_id} > MARKS/merge.txt\n"
            .replace("MARKS", &marks.display().to_string()),
    );
    commit_all(&repo);
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "m1"], &[]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(lines(&marks.join("order.txt")), ["e.rs", "a.rs", "d.rs"]);
    assert_eq!(read(&marks.join("reduce.txt")).trim(), "reduce 3");
    // The merge waits for a yes (none on a pipe).
    assert!(!marks.join("merge.txt").exists());
    assert!(
        stderr(&out).contains("prodigy resume m1 -y"),
        "{}",
        stderr(&out)
    );
    ok(&env, &repo, &["resume", "m1", "-y"], &[]);
    assert_eq!(read(&marks.join("merge.txt")).trim(), "prodigy/m1 main m1");
    assert_eq!(show(&env, &repo, "m1")["status"], "complete");
}

#[test]
fn setup_timeouts_and_the_error_policy_stop_a_job_as_written() {
    let env = Env::new();
    let (repo, _) = setup(
        &env,
        "slow",
        "name: slow\n\
         setup:\n\
         \x20 timeout: 2\n\
         \x20 commands:\n\
         \x20   - shell: \"true\"\n\
         \x20   - shell: sleep 30\n\
         map:\n\
         \x20 input: \"echo x\"\n\
         \x20 agent_template:\n\
         \x20   - shell: echo ${item}\n",
    );
    let out = crate::runner::in_repo(&env, &repo, &["run", "w.yml", "--job-id", "t1"]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains("setup step at line 6 failed: timed out: the time limit of its phase"),
        "{err}"
    );
    let (repo, _) = setup(
        &env,
        "policy",
        "name: policy\n\
         map:\n\
         \x20 input: \"printf 'bad\\nok1\\nok2\\n'\"\n\
         \x20 max_parallel: 1\n\
         \x20 agent_template:\n\
         \x20   - shell: test ${item} != bad\n\
         error_policy:\n\
         \x20 continue_on_failure: false\n\
         \x20 error_collection: immediate\n",
    );
    let out = crate::runner::in_repo(&env, &repo, &["run", "w.yml", "--job-id", "p1"]);
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("more than max_failures (0)"), "{err}");
    assert!(err.contains("item 0 ("), "told at once: {err}");
    let job = crate::runner::job_show(&env, &repo, "p1");
    // No item starts after a failure before the policy has judged it (one more did: a
    // sixth sweep).
    assert_eq!(job["failed"], 1, "{job}");
    assert_eq!(job["done"], 0, "{job}");
    let (repo, _) = setup(
        &env,
        "policy2",
        "name: policy\n\
         map:\n\
         \x20 input: \"printf 'ok1\\nbad1\\nbad2\\nok2\\nok3\\n'\"\n\
         \x20 max_parallel: 1\n\
         \x20 agent_template:\n\
         \x20   - shell: test ${item} != bad1 && test ${item} != bad2\n\
         error_policy:\n\
         \x20 max_failures: 1\n",
    );
    let out = crate::runner::in_repo(&env, &repo, &["run", "w.yml", "--job-id", "p2"]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains("2 items failed, more than max_failures (1)"),
        "{err}"
    );
    let job = crate::runner::job_show(&env, &repo, "p2");
    assert_eq!(
        (&job["done"], &job["failed"]),
        (&1.into(), &2.into()),
        "{job}"
    );
}

#[test]
fn params_profiles_and_their_errors() {
    let env = Env::new();
    let (repo, marks) = setup(
        &env,
        "params",
        "- shell: echo $NAME $COUNT $LIST > MARKS/params.txt\n\
         - shell: test -f MARKS/go\n\
         - shell: echo again $NAME >> MARKS/params.txt\n",
    );
    write(&repo, "p.yaml", "NAME: from-file\nCOUNT: 2\nLIST: [1, 2]\n");
    let out = run_in(
        &env,
        &repo,
        &[
            "run",
            "w.yml",
            "--job-id",
            "p1",
            "--param-file",
            "p.yaml",
            "--param",
            "NAME=cli",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert_eq!(read(&marks.join("params.txt")).trim(), "cli 2 [1,2]");
    // Recorded with the job: resume sees them.
    std::fs::write(marks.join("go"), "").unwrap();
    ok(&env, &repo, &["resume", "p1"], &[]);
    assert_eq!(lines(&marks.join("params.txt"))[1], "again cli");
    for (args, says) in [
        (vec!["--param", "NOEQUALS"], "expected NAME=VALUE"),
        (vec!["--param", "1X=y"], "must be letters, digits and _"),
        (vec!["--param", "ARG=y"], "set by prodigy itself"),
        (
            vec!["--param-file", "missing.yaml"],
            "cannot read --param-file",
        ),
    ] {
        let mut all = vec!["run", "w.yml", "--dry-run"];
        all.extend(args);
        let out = run_in(&env, &repo, &all, &[]);
        assert_ne!(out.status.code(), Some(0));
        assert!(stderr(&out).contains(says), "{all:?}: {}", stderr(&out));
    }
    let out = run_in(
        &env,
        &repo,
        &["run", "w.yml", "--dry-run", "--profile", "nope"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(stderr(&out).contains("no such profile"), "{}", stderr(&out));
}

#[test]
fn what_the_original_ignores_or_lost_is_said_not_skipped() {
    let env = Env::new();
    let (repo, _) = setup(
        &env,
        "legacy",
        "- claude: /lint\n\
         \x20 analysis:\n\
         \x20   max_cache_age: 300\n\
         \x20 options:\n\
         \x20   fix: true\n\
         - analyze:\n\
         \x20   max_cache_age: 300\n\
         - shell: echo hi\n\
         \x20 capture: x\n\
         - shell: echo ${env.SURELY_UNSET_PRODIGY_VAR_Q} ${x|length:9}\n",
    );
    let out = run_in(&env, &repo, &["run", "w.yml", "--dry-run"], &[]);
    assert!(out.status.success(), "{}", transcript(&out));
    let said = stderr(&out);
    for (line, what) in [
        ("w.yml:3:", "analysis: is ignored"),
        ("w.yml:5:", "options: is ignored"),
        (
            "w.yml:7:",
            "analyze: steps ran the original tool's project analysis",
        ),
        ("w.yml:10:", "SURELY_UNSET_PRODIGY_VAR_Q is set neither"),
        ("w.yml:10:", "the argument \"9\" is ignored"),
    ] {
        assert!(
            said.lines().any(|l| l.contains(line) && l.contains(what)),
            "{line} {what}: {said}"
        );
    }
    // `run` refuses the unset variable, naming its line.
    let out = run_in(&env, &repo, &["run", "w.yml"], &[]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains("w.yml:10: ${env.SURELY_UNSET_PRODIGY_VAR_Q}"),
        "{err}"
    );
    // A dry run looks for the files the workflow names.
    write(
        &repo,
        "mr.yml",
        "name: mr\nenv_files: [.env.nowhere]\nmap:\n  input: made-by-setup.json\n  agent_template:\n    - shell: echo ${item}\n",
    );
    let out = run_in(&env, &repo, &["run", "mr.yml", "--dry-run"], &[]);
    assert!(out.status.success(), "{}", transcript(&out));
    let said = stderr(&out);
    assert!(
        said.contains("env_files: '.env.nowhere' is not in the repository"),
        "{said}"
    );
    assert!(
        said.contains("map.input 'made-by-setup.json' is not in the repository now"),
        "{said}"
    );
    // An analyze step fails when it runs, saying why.
    let (repo, _) = setup(&env, "analyze", "- analyze:\n    save: true\n");
    let out = run_in(&env, &repo, &["run", "w.yml", "--job-id", "a1"], &[]);
    let err = assert_one_line_error(&out, 1);
    assert!(
        err.contains("analyze: steps ran the original tool's project analysis"),
        "{err}"
    );
}
