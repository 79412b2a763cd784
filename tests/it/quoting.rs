//! An item's text is data (issue 19): in every place of a shell command a `${…}` can stand,
//! the command receives the item's exact bytes and runs none of them; `when:` is parsed
//! once, so a value cannot change it; `|raw` opts out; the item is in the environment too;
//! a stopped step gets SIGTERM and a grace period before SIGKILL.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Env, transcript};
use crate::runner::{
    assert_one_line_error, in_repo, job_show, kill_group, ok_in, repo_and_marks, spawn_in,
    wait_for, write,
};

/// The processes whose command line matches `pattern` (`pgrep -f`), one pid a line.
fn running(pattern: &str) -> String {
    let ps = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ps.stdout).into_owned()
}

/// Texts that would run, split, or change a condition if pasted raw.
fn hostile(marks: &Path) -> Vec<String> {
    let pwned = marks.join("pwned").display().to_string();
    let mut mixed = String::new();
    let metas = [
        "'", "\"", "$(", ")", "`", "\\", "$HOME", ";", "||", "&&", "==", "\n", "#", "*", "?", "~",
        "<<", ">", "|", "&", "{", "}", "${item}", "é", "✓", "\t", "!", "%s",
    ];
    let mut i = 0;
    while mixed.len() < 4096 {
        mixed.push_str(metas[i % metas.len()]);
        mixed.push_str(&format!("{i}"));
        i += 7;
    }
    vec![
        format!("a'; touch {pwned}; echo '"),
        format!("\"; touch {pwned}; echo \""),
        format!("$(touch {pwned})"),
        format!("`touch {pwned}`"),
        format!("line one\ntouch {pwned}"),
        "back\\slash \\\\ \\n \\$HOME".to_owned(),
        "$HOME and ${HOME}".to_owned(),
        format!("; touch {pwned}"),
        format!("|| touch {pwned}"),
        "true || x".to_owned(),
        "a == a".to_owned(),
        "banana".to_owned(),
        "héllo ✓ 日本語".to_owned(),
        "  leading and trailing spaces  ".to_owned(),
        "*".to_owned(),
        "-n".to_owned(),
        "".to_owned(),
        mixed,
    ]
}

/// Every context once, each writing what the command received to `marks/<index>.<ctx>`.
fn workflow(marks: &Path) -> String {
    let m = marks.display();
    format!(
        r#"name: quoting
map:
  input: items.json
  max_parallel: 2
  agent_template:
    - shell: |
        printf '%s' ${{item}} > {m}/${{item_index}}.bare
    - shell: |
        printf '%s' "${{item}}" > {m}/${{item_index}}.double
    - shell: |
        printf '%s' '${{item}}' > {m}/${{item_index}}.single
    - shell: |
        printf '%s' "$(printf '%s' ${{item}})" > {m}/${{item_index}}.sub
    - shell: |
        printf '%s' x${{item}}y > {m}/${{item_index}}.joined
    - shell: |
        cat > {m}/${{item_index}}.doc <<EOF
        ${{item}}
        EOF
    - shell: |
        cat > {m}/${{item_index}}.qdoc <<-'END'
        	${{item}}
        	END
    - shell: |
        printf '%s' "$PRODIGY_ITEM" > {m}/${{item_index}}.env  # ${{item}}
    - shell: touch {m}/${{item_index}}.banana
      when: "${{item}} == 'banana'"
    - shell: touch {m}/${{item_index}}.same
      when: "${{item}} == ${{item}} && !(${{item}} != ${{item}})"
"#
    )
}

#[test]
fn item_text_reaches_the_command_byte_for_byte_in_every_context() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "quoting");
    let items = hostile(&marks);
    write(&repo, "items.json", &serde_json::to_string(&items).unwrap());
    crate::common::git(&repo, &["add", "items.json"]);
    crate::common::git(&repo, &["commit", "-q", "-m", "items"]);
    write(&repo, "w.yml", &workflow(&marks));
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "q"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let show = job_show(&env, &repo, "q");
    assert_eq!(show["done"], items.len(), "{show}");
    let read =
        |name: String| std::fs::read(marks.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    for (i, item) in items.iter().enumerate() {
        for ctx in ["bare", "double", "single", "sub", "env"] {
            let got = read(format!("{i}.{ctx}"));
            let want = match ctx {
                "env" => serde_json::to_vec(&Value::String(item.clone())).unwrap(),
                // `$(…)` drops trailing line breaks, as it always does.
                "sub" => item.trim_end_matches('\n').as_bytes().to_vec(),
                _ => item.as_bytes().to_vec(),
            };
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "item {i} in {ctx}"
            );
        }
        assert_eq!(
            read(format!("{i}.joined")),
            format!("x{item}y").into_bytes()
        );
        assert_eq!(read(format!("{i}.doc")), format!("{item}\n").into_bytes());
        assert_eq!(read(format!("{i}.qdoc")), format!("{item}\n").into_bytes());
        // Only the item that is `banana` is; every item equals itself.
        assert_eq!(marks.join(format!("{i}.banana")).exists(), item == "banana");
        assert!(marks.join(format!("{i}.same")).exists(), "item {i}");
    }
    assert!(!marks.join("pwned").exists(), "an item ran");
}

/// A value with the line that ends the here-document it stands in would end it early and
/// run the rest: the item fails, naming why, and nothing runs.
#[test]
fn a_value_that_would_end_its_here_document_fails_its_item() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "heredoc");
    let pwned = marks.join("pwned");
    let item = format!("x\nEOF\ntouch {}", pwned.display());
    write(
        &repo,
        "items.json",
        &serde_json::to_string(&[&item]).unwrap(),
    );
    crate::common::git(&repo, &["add", "items.json"]);
    crate::common::git(&repo, &["commit", "-q", "-m", "items"]);
    write(
        &repo,
        "w.yml",
        "name: h\nmap:\n  input: items.json\n  agent_template:\n    - shell: |\n        cat <<EOF\n        ${item}\n        EOF\nerror_policy:\n  on_item_failure: dlq\n",
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "h"]);
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    assert_eq!(job_show(&env, &repo, "h")["failed"], 1);
    let dlq = ok_in(&env, &repo, &["dlq", "list", "h", "--json"]);
    assert!(dlq.contains("would end the here-document"), "{dlq}");
    assert!(!pwned.exists());
}

/// Where a value cannot be quoted, the workflow does not load: the error names the file
/// and line and what to do.
#[test]
fn a_variable_the_scanner_cannot_place_is_a_load_error() {
    let env = Env::new();
    let (repo, _) = repo_and_marks(&env, "place");
    for (shell, want) in [
        ("echo `cat ${item}`", "inside backticks"),
        ("echo ${HOME:-${item}}", "inside the shell's own"),
        ("echo \\${item}", "after a backslash"),
        ("echo '${item}", "leaves a quote open"),
        (
            "echo \"$(case x in x) echo ${item};; esac)\"",
            "after a `case` inside $(…)",
        ),
        // A second shell would run the value as code (a sixth sweep made a file so).
        (
            "sh -c 'echo ${item}'",
            "in the command string of `sh -c` would run as code",
        ),
        ("eval \"echo ${item}\"", "among the arguments of eval"),
    ] {
        let text = format!(
            "name: p\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: {}\n",
            serde_json::to_string(shell).unwrap()
        );
        write(&repo, "w.yml", &text);
        let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "p"]);
        let stderr = assert_one_line_error(&out, 1);
        assert!(
            stderr.contains("w.yml:5:") && stderr.contains(want),
            "{shell}: {stderr}"
        );
    }
    // A condition is checked when loaded too.
    write(
        &repo,
        "w.yml",
        "name: p\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: 'true'\n      when: \"${item} = 3\"\n",
    );
    let stderr = assert_one_line_error(&in_repo(&env, &repo, &["run", "w.yml"]), 1);
    assert!(stderr.contains("w.yml:6: when:"), "{stderr}");
}

/// `${…|raw}` pastes the value as code (the workflow says so); the item is in the
/// environment of every step; benign values read exactly as before, so the original's
/// patterns give the same output.
#[test]
fn raw_opts_out_and_the_original_patterns_are_unchanged() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "raw");
    let m = marks.display();
    let items = json!([
        {"name": "alpha", "cmd": format!("echo ran > {m}/raw-alpha")},
        {"name": "beta-2.txt", "cmd": format!("echo ran > {m}/raw-beta")},
    ]);
    write(&repo, "items.json", &items.to_string());
    crate::common::git(&repo, &["add", "items.json"]);
    crate::common::git(&repo, &["commit", "-q", "-m", "items"]);
    write(
        &repo,
        "w.yml",
        &format!(
            r#"name: raw
setup:
  - shell: |
      echo "$PRODIGY_AUTOMATION $PRODIGY_WORKTREE" > {m}/setup-env
map:
  input: items.json
  max_parallel: 1
  agent_template:
    - shell: ${{item.cmd|raw}}
    - shell: |
        echo "Processing ${{item.name}}" > {m}/output-${{item.name}}.txt
    - shell: |
        echo '{{"area": "${{item.name}}"}}' >> {m}/output-${{item.name}}.txt
    - shell: |
        echo "$PRODIGY_ITEM_ID|$PRODIGY_AUTOMATION|$PRODIGY_WORKTREE|$PRODIGY_ITEM" > {m}/env-${{item_index}}
"#
        ),
    );
    let out = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "r"]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(marks.join("raw-alpha").exists() && marks.join("raw-beta").exists());
    for name in ["alpha", "beta-2.txt"] {
        assert_eq!(
            std::fs::read_to_string(marks.join(format!("output-{name}.txt"))).unwrap(),
            format!("Processing {name}\n{{\"area\": \"{name}\"}}\n")
        );
    }
    let setup = std::fs::read_to_string(marks.join("setup-env")).unwrap();
    assert!(
        setup.starts_with("true ") && setup.contains("r@job"),
        "{setup}"
    );
    let agent = std::fs::read_to_string(marks.join("env-0")).unwrap();
    let fields: Vec<&str> = agent.trim_end().splitn(4, '|').collect();
    assert!(!fields[0].is_empty(), "{agent}");
    assert_eq!(fields[1], "true");
    assert!(fields[2].contains("@slot-0"), "{agent}");
    assert_eq!(serde_json::from_str::<Value>(fields[3]).unwrap(), items[0]);
}

/// A step stopped for its time limit gets SIGTERM, the grace, then SIGKILL: one that
/// ignores SIGTERM is killed after the grace, one that traps it cleans up first.
#[test]
fn a_timed_out_step_gets_sigterm_then_sigkill_after_the_grace() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "grace");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            r#"name: grace
map:
  input: seq 1 2
  agent_template:
    - shell: |
        if [ ${{item}} = 1 ]; then
          trap '' TERM
          sleep 617
        else
          trap 'echo cleaned > {m}/cleaned; exit 3' TERM
          sleep 617 &
          wait
        fi
      timeout: 1
error_policy:
  on_item_failure: dlq
"#
        ),
    );
    let started = Instant::now();
    let out = env
        .cmd()
        .current_dir(&repo)
        .env("PRODIGY_KILL_GRACE", "1s")
        .args(["run", "w.yml", "--job-id", "g"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", transcript(&out));
    // Not 617 s: the step that ignores SIGTERM was killed after the grace.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(job_show(&env, &repo, "g")["failed"], 2);
    assert_eq!(
        std::fs::read_to_string(marks.join("cleaned")).unwrap(),
        "cleaned\n"
    );
    let dlq = ok_in(&env, &repo, &["dlq", "list", "g", "--json"]);
    assert!(dlq.contains("SIGTERM, then SIGKILL"), "{dlq}");
    // No `sleep 617` is left behind.
    let left = running("sleep 617");
    assert!(left.is_empty(), "{left}");
    // A grace that is not a duration is a usage error before anything runs.
    let out = env
        .cmd()
        .current_dir(&repo)
        .env("PRODIGY_KILL_GRACE", "soon")
        .args(["run", "w.yml", "--job-id", "bad"])
        .output()
        .unwrap();
    let stderr = assert_one_line_error(&out, 2);
    assert!(stderr.contains("PRODIGY_KILL_GRACE"), "{stderr}");
}

/// An interrupted run stops its steps the same way: the step that traps SIGTERM cleans up
/// before the run checkpoints and exits.
#[test]
fn an_interrupted_run_gives_its_steps_sigterm_and_the_grace() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "stop");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            r#"name: stop
map:
  input: seq 1 1
  agent_template:
    - shell: |
        trap 'echo cleaned > {m}/cleaned; exit 3' TERM
        touch {m}/started
        sleep 619 &
        wait
"#
        ),
    );
    let child = spawn_in(&env, &repo, &["run", "w.yml", "--job-id", "s"]);
    wait_for("the step", Duration::from_secs(30), || {
        marks.join("started").exists()
    });
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("was interrupted"));
    assert_eq!(
        std::fs::read_to_string(marks.join("cleaned")).unwrap(),
        "cleaned\n"
    );
    assert_eq!(job_show(&env, &repo, "s")["phase"], "map");
}

/// Nothing of a step outlives a runner killed with SIGKILL (the runner alone, not its
/// process group): the supervisor stops every step's group, SIGTERM first (a step that
/// traps it cleans up), then SIGKILL after the grace (a step that ignores it goes too),
/// background children included.
#[test]
fn the_steps_of_a_runner_killed_alone_are_stopped_with_the_grace() {
    let env = Env::new();
    let (repo, marks) = repo_and_marks(&env, "orphans");
    let m = marks.display();
    write(
        &repo,
        "w.yml",
        &format!(
            r#"name: orphans
map:
  input: seq 1 2
  max_parallel: 2
  agent_template:
    - shell: |
        if [ ${{item}} = 1 ]; then
          trap 'echo cleaned > {m}/cleaned; exit 3' TERM
          sleep 4281 &
          touch {m}/started-1
          wait
        else
          trap '' TERM
          sleep 4282 &
          touch {m}/started-2
          sleep 4283
        fi
"#
        ),
    );
    let mut cmd = env.std_cmd();
    cmd.current_dir(&repo)
        .env("PRODIGY_KILL_GRACE", "1s")
        .args(["run", "w.yml", "--job-id", "o"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    wait_for("both steps", Duration::from_secs(30), || {
        marks.join("started-1").exists() && marks.join("started-2").exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("the steps to end", Duration::from_secs(20), || {
        running("sleep 428[123]").is_empty()
    });
    assert_eq!(
        std::fs::read_to_string(marks.join("cleaned")).unwrap(),
        "cleaned\n"
    );
}

/// A step the runner had not yet told its supervisor of when it died (it started a moment
/// before) is stopped too: the supervisor finds it by its own id in the step's
/// environment. A process naming another supervisor is left alone.
#[test]
fn the_supervisor_stops_a_step_it_was_not_told_of() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Command, Stdio};
    let env = Env::new();
    let mut supervisor = env
        .std_cmd()
        .args(["__supervise", "1000"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let start = |seconds: &str, supervisor_id: String| {
        Command::new("sh")
            .args(["-c", &format!("sleep {seconds}; true")])
            .env("PRODIGY_STEP_SUPERVISOR", supervisor_id)
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let mut step = start("4291", supervisor.id().to_string());
    let mut other = start("4292", "1".into());
    // The runner dies: its end of the pipe closes.
    drop(supervisor.stdin.take());
    assert!(supervisor.wait().unwrap().success());
    let still_running = other.try_wait().unwrap().is_none();
    kill_group(&mut other);
    assert!(still_running, "a process of another supervisor was stopped");
    let limit = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = step.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > limit {
            kill_group(&mut step);
            panic!("the step was not stopped");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(15));
}
