//! Retention: `events clean` keeps exactly the newest events a policy allows, archives or
//! removes the rest, and a repository's policy in config.json applies after a job.

use serde_json::Value;

use crate::common::{Env, git, transcript};

/// Appends 1,000 full records (writer w1, seq 0…999), one a minute up to about now, in
/// batches of 128 so that limits fall inside batches. Returns their ids, oldest first.
fn append_1000(env: &Env, job: &str) -> Vec<String> {
    let base = jiff::Timestamp::now();
    let mut input = String::new();
    let mut ids = Vec::new();
    for i in 0..1000i64 {
        let ts = base - jiff::SignedDuration::from_secs((1000 - i) * 60 - 30);
        let id = format!("r{i:04}");
        input.push_str(&format!(
            r#"{{"id":"{id}","timestamp":"{ts}","writer":"w1","seq":{i},"event":{{"event_type":"agent_progress","job_id":"{job}","agent_id":"a{}","item_id":"i{i}","step":"s","progress_pct":{}}}}}"#,
            i % 7,
            i % 100
        ));
        input.push('\n');
        ids.push(id);
    }
    env.ok(
        &[
            "events",
            "append",
            "--job",
            job,
            "--repo",
            "api",
            "--batch-size",
            "128",
        ],
        input.as_bytes(),
    );
    ids
}

fn shown(env: &Env, job: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["events", "show", job, "--repo", "api", "--json"];
    args.extend_from_slice(extra);
    env.ok(&args, b"")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn clean(env: &Env, extra: &[&str]) -> Value {
    let mut args = vec!["events", "clean", "--repo", "api", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&env.ok(&args, b"")).unwrap()
}

#[test]
fn max_events_keeps_exactly_the_newest_and_archives_the_rest() {
    let env = Env::new();
    let all = append_1000(&env, "j");
    // A dry run says exactly what would go, and changes nothing.
    let dry = clean(&env, &["--max-events", "300", "--archive", "--dry-run"]);
    assert_eq!(dry[0]["events_removed"], 700, "{dry}");
    assert_eq!(shown(&env, "j", &[]).len(), 1000);
    let report = clean(&env, &["--max-events", "300", "--archive", "--job", "j"]);
    assert_eq!(report[0]["events_kept"], 300, "{report}");
    assert_eq!(ids(&shown(&env, "j", &[])), all[700..].to_vec());
    // Nothing is lost: the archive holds the rest, oldest first, in order.
    assert_eq!(ids(&shown(&env, "j", &["--archived"])), all);
    let stats: Value =
        serde_json::from_str(&env.ok(&["events", "stats", "j", "--repo", "api", "--json"], b""))
            .unwrap();
    assert_eq!(stats["total"]["count"], 300, "{stats}");
    // Idempotent; a smaller limit without --archive drops (the archive keeps what it had).
    assert_eq!(
        clean(&env, &["--max-events", "300"])[0]["events_removed"],
        0
    );
    clean(&env, &["--max-events", "100"]);
    assert_eq!(ids(&shown(&env, "j", &[])), all[900..].to_vec());
    let archived = ids(&shown(&env, "j", &["--archived"]));
    assert_eq!(archived.len(), 800);
    assert_eq!(archived[..700].to_vec(), all[..700].to_vec());
    let out = env.run(&["fsck"], b"");
    assert!(out.status.success(), "{}", transcript(&out));
}

#[test]
fn older_than_and_max_size_are_exact() {
    let env = Env::new();
    let all = append_1000(&env, "t");
    // One event a minute, the newest 30 s old: 300 are younger than 300 minutes.
    clean(&env, &["--older-than", "300m", "--job", "t"]);
    assert_eq!(ids(&shown(&env, "t", &[])), all[700..].to_vec());
    // The newest 50 lines' bytes keep exactly those 50.
    let lines = env.ok(&["events", "show", "t", "--repo", "api", "--json"], b"");
    let newest: Vec<&str> = lines.lines().rev().take(50).collect();
    let size: usize = newest.iter().map(|l| l.len() + 1).sum();
    clean(&env, &["--max-size", &size.to_string(), "--job", "t"]);
    assert_eq!(ids(&shown(&env, "t", &[])), all[950..].to_vec());
    // Bad limits are usage errors.
    for bad in [["--max-size", "10 apples"], ["--older-than", "soon"]] {
        let out = env.run(&["events", "clean", "--repo", "api", bad[0], bad[1]], b"");
        assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    }
    // With no limit and no policy, nothing happens.
    let out = env.run(&["events", "clean", "--repo", "api"], b"");
    assert!(out.status.success());
    assert_eq!(shown(&env, "t", &[]).len(), 50);
}

#[test]
fn a_repository_policy_applies_when_a_job_completes() {
    let env = Env::new();
    let repo = env.scratch().join("svc");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "init"]);
    std::fs::create_dir_all(env.home()).unwrap();
    std::fs::write(
        env.home().join("config.json"),
        r#"{"retention": {"repos": {"svc": {"max_events": 5, "archive": true, "auto": true}}}}"#,
    )
    .unwrap();
    std::fs::write(
        repo.join("w.yml"),
        "name: r\nmap:\n  input: seq 1 6\n  agent_template:\n    - shell: \"true\"\n",
    )
    .unwrap();
    let out = env
        .cmd()
        .current_dir(&repo)
        .args(["run", "w.yml", "--job-id", "a"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", transcript(&out));
    let show = |extra: &[&str]| {
        let mut args = vec!["events", "show", "a", "--json"];
        args.extend_from_slice(extra);
        let out = env.cmd().current_dir(&repo).args(&args).output().unwrap();
        String::from_utf8(out.stdout).unwrap().lines().count()
    };
    assert_eq!(show(&[]), 5);
    assert!(show(&["--archived"]) > 20);
    // A malformed config is an error naming the file, when a command needs it.
    std::fs::write(env.home().join("config.json"), "{").unwrap();
    let out = env
        .cmd()
        .current_dir(&repo)
        .args(["events", "clean"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}
