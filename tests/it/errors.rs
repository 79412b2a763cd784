//! The error messages a user meets most, each snapshotted whole: one `error:` line saying
//! what happened and to which file, ref or job, then a `hint:` saying what to do next.

use std::os::unix::fs::PermissionsExt;

use crate::common::{Env, assert_one_line_error, init_repo, snapshot, transcript};

/// `prodigy args…` run in `repo`.
fn in_repo(env: &Env, repo: &std::path::Path, args: &[&str]) -> std::process::Output {
    env.cmd().current_dir(repo).args(args).output().unwrap()
}

/// Appends one record of writer `w1` (so its chain is `events/r/<job>/w1`).
fn append(env: &Env, job: &str) {
    env.ok(
        &["events", "append", "--repo", "r", "--job", job],
        br#"{"v":1,"id":"e1","timestamp":"2026-01-01T00:00:00.000000Z","writer":"w1","seq":0,"event":{"event_type":"agent_completed","agent_id":"a","item_id":"i","duration_ms":1},"metadata":{}}"#,
    );
}

#[test]
fn a_corrupt_object_names_it_and_points_at_fsck() {
    let env = Env::new();
    append(&env, "j");
    let id = env.ok(&["ref", "show", "events/r/j/w1"], b"");
    let id = id.trim();
    let file = env.home().join("objects").join(&id[..2]).join(&id[2..]);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[6] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();
    snapshot(
        "error_corrupt_object",
        &env.run(&["events", "show", "j", "--repo", "r"], b""),
        &env.home(),
    );
}

#[test]
fn a_held_lock_says_which_and_how_to_wait_longer() {
    let env = Env::new();
    append(&env, "j");
    // Writer w1's chain is locked (as by a stuck append of w1): w1's next append waits.
    let lock = env.home().join("events/r/j/writers/w1/lock");
    let file = std::fs::File::open(&lock).unwrap();
    file.lock().unwrap();
    let out = env
        .cmd()
        .env("PRODIGY_LOCK_TIMEOUT", "200ms")
        .args(["events", "append", "--repo", "r", "--job", "j"])
        .write_stdin(
            br#"{"v":1,"id":"e2","timestamp":"2026-01-01T00:00:01.000000Z","writer":"w1","seq":1,"event":{"event_type":"x"},"metadata":{}}"#
                .to_vec(),
        )
        .output()
        .unwrap();
    drop(file);
    snapshot("error_lock_timeout", &out, &env.home());
}

#[test]
fn an_unknown_job_points_at_the_job_list() {
    let env = Env::new();
    let repo = init_repo(env.scratch().join("proj"));
    let out = in_repo(&env, &repo, &["resume", "nope"]);
    snapshot("error_unknown_job", &out, &env.home());
}

#[test]
fn a_bad_config_names_the_file() {
    let env = Env::new();
    std::fs::create_dir_all(env.home()).unwrap();
    std::fs::write(
        env.home().join("config.json"),
        "{\"gc\": {\"reflog_expire\": \"soon\"}}",
    )
    .unwrap();
    snapshot("error_bad_config", &env.run(&["gc"], b""), &env.home());
}

/// A home that is a file, or under one, is named as such by every command (the error was
/// about `config.json`, "Not a directory").
#[test]
fn a_home_that_is_a_file_says_so() {
    let env = Env::new();
    let file = env.scratch().join("afile");
    std::fs::write(&file, "x").unwrap();
    for home in [file.clone(), file.join("sub")] {
        for args in [
            &["jobs"][..],
            &["events", "append", "--repo", "a", "--job", "j"],
        ] {
            let out = env
                .cmd()
                .env("PRODIGY_HOME", &home)
                .args(args)
                .write_stdin("{\"event_type\":\"x\"}")
                .output()
                .unwrap();
            let line = assert_one_line_error(&out, 1);
            assert!(
                line.contains(&format!(
                    "the store '{}' is not a directory",
                    home.display()
                )),
                "{line}"
            );
        }
        let out = env
            .cmd()
            .arg("--home")
            .arg(&home)
            .arg("fsck")
            .output()
            .unwrap();
        assert!(assert_one_line_error(&out, 1).contains("is not a directory"));
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

/// config.json must be a JSON object: an array (which serde would read by position, the
/// second element as the gc section) or a string is refused by every command, the one that
/// reads only its `store` included, with one line naming the file.
#[test]
fn a_config_that_is_not_an_object_is_refused() {
    let env = Env::new();
    std::fs::create_dir_all(env.home()).unwrap();
    for body in [
        r#"[{}, {"reflog_expire": "now"}, "s3://bucket/p"]"#,
        r#""s3://bucket/p""#,
    ] {
        std::fs::write(env.home().join("config.json"), body).unwrap();
        for args in [&["gc", "--dry-run"][..], &["jobs"]] {
            let out = env.run(args, b"");
            let line = assert_one_line_error(&out, 1);
            assert!(line.contains("config.json"), "{line}");
            assert!(line.contains("must be a JSON object"), "{line}");
        }
    }
}

/// `events clean` refuses a store it cannot use even when no limit applies (it said
/// "nothing to do" and exited 0), and a repository with no events is an error, as an
/// unknown job is (it exited 0 in silence).
#[test]
fn events_clean_refuses_a_bad_store_and_an_unknown_repo() {
    let env = Env::new();
    std::fs::create_dir_all(env.home()).unwrap();
    std::fs::write(env.home().join("config.json"), r#"{"store": "ftp://x"}"#).unwrap();
    let out = env.run(&["events", "clean", "--repo", "api"], b"");
    let line = assert_one_line_error(&out, 1);
    assert!(line.contains("ftp://x"), "{line}");
    std::fs::remove_file(env.home().join("config.json")).unwrap();
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        br#"{"event_type":"agent_started","agent_id":"a"}"#,
    );
    let out = env.run(
        &["events", "clean", "--repo", "apx", "--older-than", "1d"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: no events in repo apx"), "{stderr}");
    assert!(stderr.contains("events ls"), "{stderr}");
    let report = env.ok(
        &["events", "clean", "--repo", "api", "--older-than", "1d"],
        b"",
    );
    assert!(report.contains("api/j: removed 0 of 1 events"), "{report}");
}

#[test]
fn an_unknown_workflow_key_names_the_line_and_the_guide() {
    let env = Env::new();
    let repo = init_repo(env.scratch().join("proj"));
    std::fs::write(
        repo.join("w.yml"),
        "name: w\nmode: mapreduce\nmap:\n  input: seq 1 2\n  agent_template:\n    - shel: echo hi\n",
    )
    .unwrap();
    let out = in_repo(&env, &repo, &["run", "w.yml"]);
    snapshot("error_unknown_workflow_key", &out, &env.home());
}

#[test]
fn running_an_existing_job_id_points_at_resume_not_at_deleting_its_branch() {
    let env = Env::new();
    let repo = init_repo(env.scratch().join("proj"));
    std::fs::write(
        repo.join("w.yml"),
        "name: w\nmap:\n  input: seq 1 2\n  agent_template:\n    - shell: 'true'\n",
    )
    .unwrap();
    let first = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "j"]);
    assert!(
        first.status.success(),
        "{}",
        crate::common::transcript(&first)
    );
    let again = in_repo(&env, &repo, &["run", "w.yml", "--job-id", "j"]);
    snapshot("error_existing_job_id", &again, &env.home());
}

/// A home may be a symlink (to a bigger disk): through one to a directory everything
/// works; a dangling one is one clear line, and nothing is made at its target.
#[test]
fn a_home_behind_a_symlink_works_and_a_dangling_one_says_so() {
    let env = Env::new();
    let target = env.scratch().join("disk/home");
    let link = env.scratch().join("home-link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let run = |stdin: &[u8], args: &[&str]| {
        let mut cmd = env.std_cmd();
        cmd.env("PRODIGY_HOME", &link)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let event = br#"{"event_type":"agent_started"}"#;
    let out = run(event, &["events", "append", "--repo", "r", "--job", "j"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1
    );
    assert!(
        stderr.contains("home-link")
            && stderr.contains("is a symlink to")
            && stderr.contains("disk/home"),
        "{stderr}"
    );
    assert!(!target.exists());
    std::fs::create_dir_all(&target).unwrap();
    let out = run(event, &["events", "append", "--repo", "r", "--job", "j"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(b"", &["events", "show", "j", "--repo", "r", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(target.join("objects").is_dir());
}
