//! `prodigy migrate-events`, the legacy warning, the compatibility mode and the fallback
//! (issue 7), against the committed fixture of the original tool's `.prodigy/`
//! (`tests/fixtures/legacy-local/`, from `../shared/fixtures/legacy-local/`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::{Env, assert_one_line_error, copy_dir, git, transcript};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/legacy-local");

/// The fixture's `.prodigy/`, committed as `dot-prodigy/` (no `.prodigy/` is committed
/// inside this repository); tests copy it to a scratch repository's `.prodigy/`.
fn fixture_dot() -> PathBuf {
    Path::new(FIXTURE).join("repo/dot-prodigy")
}

/// A copy of the fixture's repository in the scratch directory.
fn legacy_repo(env: &Env, name: &str) -> PathBuf {
    let dir = env.scratch().join(name);
    copy_dir(&fixture_dot(), &dir.join(".prodigy"));
    dir
}

fn expected() -> Value {
    serde_json::from_str(&fs::read_to_string(Path::new(FIXTURE).join("expected.json")).unwrap())
        .unwrap()
}

fn migrate_json(env: &Env, args: &[&str]) -> (Value, std::process::Output) {
    let mut all = vec!["migrate-events", "--json"];
    all.extend_from_slice(args);
    let out = env.run(&all, b"");
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", transcript(&out)));
    (report, out)
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(read) = fs::read_dir(&d) else { continue };
        for e in read {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// The records of a job's event log.
fn events(env: &Env, repo: &str, job: &str) -> Vec<Value> {
    env.ok(&["events", "show", job, "--repo", repo, "--json"], b"")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_fixture_imports_with_every_expected_total() {
    let env = Env::new();
    let repo = legacy_repo(&env, "widget-service");
    let (r, out) = migrate_json(&env, &[repo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", transcript(&out));
    let x = expected();
    let (e, xe) = (&r["events"], &x["events"]);
    assert_eq!(r["repo"], "widget-service");
    for key in [
        "records_read",
        "imported",
        "duplicates_skipped",
        "blank_lines_skipped",
        "rejected_total",
        "rejected_by_reason",
    ] {
        assert_eq!(e[key], xe[key], "events.{key}");
    }
    assert_eq!(e["already_present"], 0);
    // Per file: lines, records, blank, refused; the misnamed .gz is plain text.
    let by_path: BTreeMap<&str, &Value> = e["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f))
        .collect();
    assert_eq!(by_path.len(), xe["files"].as_array().unwrap().len());
    for xf in xe["files"].as_array().unwrap() {
        let f = by_path[xf["path"].as_str().unwrap()];
        for key in ["lines", "records", "blank", "rejected"] {
            assert_eq!(f[key], xf[key], "{} {key}", xf["path"]);
        }
        let encoding = if xf["encoding"] == "gzip" {
            "gzip"
        } else {
            "plain"
        };
        assert_eq!(f["encoding"], encoding, "{}", xf["path"]);
    }
    for (job, n) in xe["per_job"].as_object().unwrap() {
        assert_eq!(e["per_job"][job]["imported"], *n, "{job}");
        assert_eq!(
            e["per_job_event_types"][job], xe["per_job_event_types"][job],
            "{job}"
        );
    }
    let kinds: BTreeSet<&str> = e["per_job_event_types"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|t| t.as_object().unwrap().keys().map(String::as_str))
        .collect();
    let want: BTreeSet<&str> = xe["event_types_present"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(kinds, want);
    // DLQ and checkpoints.
    assert_eq!(r["dlq"]["imported"], x["dlq"]["imported"]);
    assert_eq!(r["dlq"]["rejected_total"], x["dlq"]["rejected_total"]);
    for (job, n) in x["dlq"]["per_job"].as_object().unwrap() {
        assert_eq!(r["dlq"]["per_job"][job]["imported"], *n, "{job}");
    }
    let c = &r["checkpoints"];
    assert_eq!(c["imported"], x["checkpoints"]["imported"]);
    assert_eq!(c["rejected_total"], x["checkpoints"]["rejected_total"]);
    assert_eq!(c["versions_per_job"], x["checkpoints"]["versions_per_job"]);
    assert_eq!(
        c["latest_version_per_job"],
        x["checkpoints"]["latest_version_per_job"]
    );
    assert_eq!(r["rejected"], json!([]));
    assert_eq!(r["verified"], true);

    // The store holds exactly the original ids, in time order, mapped to our shapes.
    let want_ids: BTreeSet<String> =
        fs::read_to_string(Path::new(FIXTURE).join("expected_event_ids.txt"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
    let mut got_ids = BTreeSet::new();
    for (job, n) in xe["per_job"].as_object().unwrap() {
        let records = events(&env, "widget-service", job);
        assert_eq!(records.len() as u64, n.as_u64().unwrap(), "{job}");
        let times: Vec<&str> = records
            .iter()
            .map(|r| r["timestamp"].as_str().unwrap())
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{job}: out of order"
        );
        for r in &records {
            assert_eq!(
                r["timestamp"].as_str().unwrap().len(),
                27,
                "microseconds: {r}"
            );
            let t = r["event"]["event_type"].as_str().unwrap();
            assert!(!t.starts_with("d_l_q_"), "{r}");
            assert!(r["event"].get("duration").is_none(), "{r}");
            if t == "job_completed" || t == "agent_completed" {
                assert!(r["event"]["duration_ms"].is_u64(), "{r}");
            }
            assert_eq!(r["metadata"]["host"], "localhost");
            assert!(r["metadata"]["pid"].is_u64());
            assert!(got_ids.insert(r["id"].as_str().unwrap().to_owned()));
        }
    }
    assert_eq!(got_ids, want_ids);
    // A known record, field by field: job_completed of the first job, 769 s 118968725 ns.
    let done = events(&env, "widget-service", "mapreduce-1736420000000")
        .into_iter()
        .find(|r| r["event"]["event_type"] == "job_completed")
        .unwrap();
    assert_eq!(done["event"]["duration_ms"], 769_118);
    assert_eq!(done["event"]["success_count"], 8);

    // DLQ: the items of each index.json, never the evicted or reprocessed ones.
    for (job, _) in x["dlq"]["per_job"].as_object().unwrap() {
        let index: Value = serde_json::from_str(
            &fs::read_to_string(repo.join(format!(".prodigy/mapreduce/dlq/{job}/index.json")))
                .unwrap(),
        )
        .unwrap();
        let want: BTreeSet<&str> = index["item_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap())
            .collect();
        let list: Value = serde_json::from_str(&env.ok(
            &["dlq", "list", job, "--repo", "widget-service", "--json"],
            b"",
        ))
        .unwrap();
        let got: BTreeSet<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["item_id"].as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{job}");
        for gone in ["2010", "2003"] {
            assert!(!got.contains(gone));
        }
    }
    let item: Value = serde_json::from_str(&env.ok(
        &[
            "dlq",
            "inspect",
            "item_5",
            "--job",
            "mapreduce-1736420000000",
            "--repo",
            "widget-service",
            "--json",
        ],
        b"",
    ))
    .unwrap();
    let item = item.get("item").unwrap_or(&item);
    assert_eq!(item["failure_count"], 3);
    assert_eq!(item["failure_history"].as_array().unwrap().len(), 3);
    assert_eq!(
        item["failure_history"][0]["error_type"]["type"],
        "resource_exhausted"
    );
    assert_eq!(item["failure_history"][2]["step"], "step_3");

    // The job: complete, 8 done, 2 failed of 10, checkpoint v13; resume refuses clearly.
    let jobs: Value =
        serde_json::from_str(&env.ok(&["jobs", "--repo", "widget-service", "--json"], b""))
            .unwrap();
    let job = &jobs.as_array().unwrap()[0];
    assert_eq!(job["job"], "mapreduce-1736420000000");
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64(),
            job["total"].as_u64()
        ),
        (Some("complete"), Some(8), Some(2), Some(10))
    );
    assert_eq!(job["version"], 13);
    let out = env.run(
        &[
            "resume",
            "mapreduce-1736420000000",
            "--repo",
            "widget-service",
        ],
        b"",
    );
    let err = assert_one_line_error(&out, 1);
    assert!(err.contains("imported from the original tool"), "{err}");
    // The original checkpoint is kept byte for byte.
    let show: Value = serde_json::from_str(&env.ok(
        &[
            "jobs",
            "show",
            "mapreduce-1736420000000",
            "--repo",
            "widget-service",
            "--json",
        ],
        b"",
    ))
    .unwrap();
    let head = show["checkpoint"].as_str().unwrap();
    let checkpoint: Value =
        serde_json::from_str(&env.ok(&["cat-object", "-p", head], b"")).unwrap();
    let original = env.run(
        &["cat-object", "-p", checkpoint["original"].as_str().unwrap()],
        b"",
    );
    assert_eq!(
        original.stdout,
        fs::read(repo.join(".prodigy/mapreduce/jobs/mapreduce-1736420000000/checkpoint-v13.json"))
            .unwrap()
    );
    env.ok(&["fsck"], b"");
}

#[test]
fn a_second_run_imports_nothing_and_writes_nothing() {
    let env = Env::new();
    let repo = legacy_repo(&env, "svc");
    let (first, _) = migrate_json(&env, &[repo.to_str().unwrap()]);
    assert_eq!(first["events"]["imported"], 322);
    let before = files(&env.home());
    let snapshot: BTreeMap<String, Vec<u8>> = before
        .iter()
        .map(|f| (f.clone(), fs::read(env.home().join(f)).unwrap()))
        .collect();
    let (second, out) = migrate_json(&env, &[repo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(second["events"]["imported"], 0);
    assert_eq!(second["events"]["already_present"], 322);
    assert_eq!(second["dlq"]["imported"], 0);
    assert_eq!(second["dlq"]["already_present"], 6);
    assert_eq!(second["checkpoints"]["imported"], 0);
    assert_eq!(second["checkpoints"]["already_present"], 3);
    // Not one file of the home changed: no object, no ref move, no reflog line.
    let after = files(&env.home());
    assert_eq!(before, after);
    for (f, bytes) in &snapshot {
        assert_eq!(&fs::read(env.home().join(f)).unwrap(), bytes, "{f} changed");
    }
    // A dry run on a fresh home writes no object either, and counts the same.
    let env2 = Env::new();
    let repo2 = legacy_repo(&env2, "svc");
    let (dry, _) = migrate_json(&env2, &["--dry-run", repo2.to_str().unwrap()]);
    assert_eq!(dry["events"]["imported"], 322);
    assert_eq!(dry["dlq"]["imported"], 6);
    assert_eq!(dry["checkpoints"]["imported"], 3);
    assert!(!env2.home().join("objects").exists());
}

#[test]
fn remove_local_deletes_what_was_imported_and_nothing_else() {
    let env = Env::new();
    let repo = legacy_repo(&env, "svc");
    fs::write(repo.join(".prodigy/notes.txt"), "mine").unwrap();
    fs::create_dir_all(repo.join(".prodigy/events/empty-job")).unwrap();
    fs::write(
        repo.join(".prodigy/events/empty-job/events-20250101_000000.jsonl"),
        "\n",
    )
    .unwrap();
    let legacy_before = files(&repo.join(".prodigy"));
    // A dry run lists and removes nothing.
    let (dry, _) = migrate_json(
        &env,
        &["--dry-run", "--remove-local", repo.to_str().unwrap()],
    );
    assert_eq!(
        dry["removed"].as_array().unwrap().len(),
        legacy_before.len() - 1
    );
    assert_eq!(files(&repo.join(".prodigy")), legacy_before);
    let (r, out) = migrate_json(&env, &["--remove-local", repo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(r["events"]["imported"], 322);
    // Only the unknown file stays (with its directory).
    assert_eq!(
        files(&repo.join(".prodigy")),
        BTreeSet::from(["notes.txt".to_owned()])
    );
    assert!(!repo.join(".prodigy/mapreduce").exists());
    assert!(!repo.join(".prodigy/events").exists());
    assert_eq!(r["unknown"], json!([".prodigy/notes.txt"]));
    // Everything is still in the store.
    assert_eq!(events(&env, "svc", "mapreduce-20250109_143000").len(), 178);
    assert_eq!(
        env.ok(&["jobs", "--repo", "svc", "--json"], b"")
            .matches("mapreduce-1736420000000")
            .count(),
        1
    );
    // Once it is gone, there is nothing to migrate.
    let out = env.run(&["migrate-events", repo.to_str().unwrap()], b"");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to migrate"),
        "{}",
        transcript(&out)
    );
    fs::remove_file(repo.join(".prodigy/notes.txt")).unwrap();
}

fn gzip(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

fn line(id: &str, job: &str, event_type: &str) -> String {
    format!(
        r#"{{"id":"{id}","timestamp":"2025-01-09T10:00:0{}.123456789Z","correlation_id":"c","event":{{"event_type":"{event_type}","job_id":"{job}","duration":[1,500000000]}},"metadata":{{"host":"h","pid":1,"thread":"main"}}}}"#,
        id.len() % 10
    )
}

/// A legacy tree with every kind of bad input beside good records.
fn hostile_repo(env: &Env) -> PathBuf {
    let repo = env.scratch().join("hostile");
    let dot = repo.join(".prodigy");
    let global = dot.join("mapreduce/events/global");
    fs::create_dir_all(&global).unwrap();
    let evil = line("e-evil", "../../x", "job_started");
    let lines = [
        line("e-1", "job-a", "job_started"),
        String::new(),
        "{not json".to_owned(),
        r#"{"foo": 1}"#.to_owned(),
        evil,
        line("e-1", "job-a", "job_started"),
        line("e-2", "job-a", "d_l_q_item_added"),
        line("e-3", "x".repeat(200).as_str(), "job_started"),
    ];
    let mut text = lines.join("\n");
    text.push('\n');
    text.push_str(&line("e-4", "job-a", "job_completed")[..60]);
    fs::write(global.join("events.jsonl"), text).unwrap();
    // A real gzip archive, and a damaged one.
    let archive = dot.join("events/archive");
    fs::create_dir_all(&archive).unwrap();
    let gz = gzip(&format!(
        "{}\n{}\n",
        line("e-5", "job-b", "agent_completed"),
        line("e-6", "job-b", "job_completed")
    ));
    fs::write(archive.join("events_archive_20250101_000000.jsonl.gz"), &gz).unwrap();
    fs::write(
        archive.join("events_archive_20250102_000000.jsonl.gz"),
        &gz[..gz.len() / 2],
    )
    .unwrap();
    // A DLQ item that is not JSON beside a good one; a checkpoint naming an unsafe job.
    let items = dot.join("mapreduce/dlq/job-a/items");
    fs::create_dir_all(&items).unwrap();
    fs::write(items.join("bad.json"), "{").unwrap();
    fs::copy(
        fixture_dot().join("mapreduce/dlq/mapreduce-1736420000000/items/item_5.json"),
        items.join("item_5.json"),
    )
    .unwrap();
    let jobs = dot.join("mapreduce/jobs/evil");
    fs::create_dir_all(&jobs).unwrap();
    let mut checkpoint: Value = serde_json::from_slice(
        &fs::read(fixture_dot().join("mapreduce/jobs/mapreduce-1736420000000/checkpoint-v13.json"))
            .unwrap(),
    )
    .unwrap();
    checkpoint["job_id"] = json!("../../x");
    fs::write(jobs.join("checkpoint-v1.json"), checkpoint.to_string()).unwrap();
    repo
}

#[test]
fn bad_input_is_reported_by_file_and_line_and_the_rest_imports() {
    let env = Env::new();
    let repo = hostile_repo(&env);
    let (r, out) = migrate_json(&env, &[repo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let refused: BTreeSet<(String, Option<u64>, String)> = r["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["path"].as_str().unwrap().to_owned(),
                x["line"].as_u64(),
                x["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let g = ".prodigy/mapreduce/events/global/events.jsonl".to_owned();
    let want: BTreeSet<(String, Option<u64>, String)> = [
        (g.clone(), Some(3), "invalid_json"),
        (g.clone(), Some(4), "not_an_event_record"),
        (g.clone(), Some(5), "unsafe_job_id"),
        (g.clone(), Some(8), "unsafe_job_id"),
        (g.clone(), Some(9), "truncated_line"),
        (
            ".prodigy/events/archive/events_archive_20250102_000000.jsonl.gz".into(),
            None,
            "unreadable_file",
        ),
        // What the damaged stream gave before it broke ends mid-line.
        (
            ".prodigy/events/archive/events_archive_20250102_000000.jsonl.gz".into(),
            Some(1),
            "truncated_line",
        ),
        (
            ".prodigy/mapreduce/dlq/job-a/items/bad.json".into(),
            None,
            "invalid_json",
        ),
        (
            ".prodigy/mapreduce/jobs/evil/checkpoint-v1.json".into(),
            None,
            "unsafe_job_id",
        ),
    ]
    .into_iter()
    .map(|(p, l, r)| (p, l, r.to_owned()))
    .collect();
    assert_eq!(refused, want);
    // The good records went in: e-1 once (its duplicate skipped), e-2 mapped, e-5 and
    // e-6 from the real gzip (and the damaged archive's whole first half).
    assert_eq!(r["events"]["duplicates_skipped"], 1);
    assert_eq!(r["events"]["blank_lines_skipped"], 1);
    let a = events(&env, "hostile", "job-a");
    let ids: Vec<&str> = a.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["e-1", "e-2"]);
    assert_eq!(a[1]["event"]["event_type"], "dlq_item_added");
    assert_eq!(a[0]["event"]["duration_ms"], 1500);
    let b = events(&env, "hostile", "job-b");
    assert_eq!(b.iter().filter(|r| r["id"] == "e-5").count(), 1);
    assert_eq!(r["dlq"]["imported"], 1);
    // The unsafe id never became a path or a ref.
    assert!(!env.scratch().join("x").exists());
    assert!(!env.dir.path().join("x").exists());
    let refs = env.ok(&["ref", "list"], b"");
    assert!(!refs.contains("x\n") && !refs.contains(".."), "{refs}");
    // --remove-local refuses while anything was refused; --force removes only the clean.
    let before = files(&repo.join(".prodigy"));
    let out = env.run(
        &["migrate-events", "--remove-local", repo.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--remove-local refused"));
    assert_eq!(files(&repo.join(".prodigy")), before);
    let out = env.run(
        &[
            "migrate-events",
            "--remove-local",
            "--force",
            repo.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let left = files(&repo.join(".prodigy"));
    let want_left: BTreeSet<String> = [
        "mapreduce/events/global/events.jsonl",
        "events/archive/events_archive_20250102_000000.jsonl.gz",
        "mapreduce/dlq/job-a/items/bad.json",
        "mapreduce/dlq/job-a/index.json",
        "mapreduce/jobs/evil/checkpoint-v1.json",
    ]
    .into_iter()
    .map(str::to_owned)
    .filter(|f| before.contains(f))
    .collect();
    assert_eq!(left, want_left);
    // --force alone is a usage error.
    let out = env.run(&["migrate-events", "--force"], b"");
    assert_eq!(out.status.code(), Some(2));
}

fn git_repo(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    fs::write(dir.join("README"), "x").unwrap();
    git(dir, &["add", "README"]);
    git(dir, &["commit", "-q", "-m", "init"]);
}

#[test]
fn the_legacy_warning_is_given_once_per_repository() {
    let env = Env::new();
    let a = legacy_repo(&env, "a");
    git_repo(&a);
    let b = legacy_repo(&env, "b");
    let warned = |dir: &Path, args: &[&str]| {
        let out = env.cmd().current_dir(dir).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        stderr.matches("prodigy migrate-events").count()
    };
    assert_eq!(warned(&a, &["-q", "jobs"]), 0, "quiet hides it");
    assert_eq!(warned(&a, &["jobs"]), 1);
    assert_eq!(warned(&a, &["jobs"]), 0);
    assert_eq!(warned(&a.join(".prodigy/mapreduce"), &["events", "ls"]), 0);
    assert_eq!(warned(&b, &["events", "ls"]), 1, "another repository");
    assert_eq!(
        warned(&env.scratch(), &["events", "ls"]),
        0,
        "no legacy data"
    );
}

#[test]
fn use_local_storage_keeps_the_store_in_the_repository() {
    let env = Env::new();
    let repo = env.scratch().join("app");
    git_repo(&repo);
    git(&repo, &["worktree", "add", "-q", "../app-wt", "-b", "wt"]);
    let run = |dir: &Path, args: &[&str], stdin: &str| {
        env.cmd()
            .current_dir(dir)
            .env("PRODIGY_USE_LOCAL_STORAGE", "true")
            .args(args)
            .write_stdin(stdin)
            .output()
            .unwrap()
    };
    let out = run(
        &repo,
        &["events", "append", "--job", "j1"],
        r#"{"event_type":"job_started","job_id":"j1"}"#,
    );
    assert!(out.status.success(), "{}", transcript(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PRODIGY_USE_LOCAL_STORAGE is deprecated"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}", repo.join(".prodigy").display()))
            || stderr.contains("app/.prodigy"),
        "{stderr}"
    );
    // The store is <repo>/.prodigy, in the global format; PRODIGY_HOME stays untouched.
    assert!(repo.join(".prodigy/objects").is_dir());
    assert!(repo.join(".prodigy/events/app/j1/writers").is_dir());
    assert!(!env.home().join("objects").exists());
    // Every worktree shares it.
    let wt = env.scratch().join("app-wt");
    let out = run(&wt, &["events", "show", "j1", "--json"], "");
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let out = run(&repo, &["fsck"], "");
    assert!(out.status.success(), "{}", transcript(&out));
    // Without the variable, the global home is used and the local store is not seen.
    let out = env
        .cmd()
        .current_dir(&repo)
        .args(["events", "ls", "--json"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("j1"),
        "{}",
        transcript(&out)
    );

    // Legacy data in the same directory migrates into the local store, and
    // --remove-local leaves the store itself alone.
    copy_dir(&fixture_dot(), &repo.join(".prodigy"));
    let out = run(&repo, &["migrate-events", "--remove-local"], "");
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(!repo.join(".prodigy/mapreduce").exists());
    let out = run(&repo, &["events", "ls", "--json"], "");
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(
        ls.contains("j1") && ls.contains("mapreduce-20250109_143000"),
        "{ls}"
    );
    let out = run(&repo, &["fsck"], "");
    assert!(out.status.success(), "{}", transcript(&out));
}

#[test]
fn an_uncreatable_global_home_falls_back_to_the_local_store() {
    let env = Env::new();
    let repo = env.scratch().join("app");
    git_repo(&repo);
    // HOME is a file: ~/.prodigy cannot be created (a read-only home, for root too).
    let home_file = env.dir.path().join("home-is-a-file");
    fs::write(&home_file, "").unwrap();
    let out = env
        .cmd()
        .current_dir(&repo)
        .env_remove("PRODIGY_HOME")
        .env("HOME", &home_file)
        .args(["events", "append", "--job", "j1"])
        .write_stdin(r#"{"event_type":"job_started","job_id":"j1"}"#)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", transcript(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the global store cannot be used"),
        "{stderr}"
    );
    assert!(stderr.contains("using the repo-local store"), "{stderr}");
    assert!(repo.join(".prodigy/events/app/j1/writers").is_dir());
    // An explicit PRODIGY_HOME that cannot be created is an error, not a fallback.
    let out = env
        .cmd()
        .current_dir(&repo)
        .env("PRODIGY_HOME", home_file.join("store"))
        .args(["events", "append", "--job", "j2"])
        .write_stdin(r#"{"event_type":"job_started","job_id":"j2"}"#)
        .output()
        .unwrap();
    assert_one_line_error(&out, 1);
    assert!(!repo.join(".prodigy/events/app/j2").exists());
}

#[test]
fn the_report_names_every_refusal() {
    let env = Env::new();
    let repo = hostile_repo(&env);
    let out = env.run(&["migrate-events", repo.to_str().unwrap()], b"");
    crate::common::snapshot("migrate_hostile_report", &out, &env.home());
}

/// SIGKILL at random moments of a migration, then a second run: every event exactly once,
/// the DLQ and checkpoints whole, fsck clean. `PRODIGY_MIGRATE_TRIALS=N` for more.
#[test]
fn sigkill_during_a_migration_then_a_rerun_imports_everything_once() {
    let trials = crate::common::env_knob("PRODIGY_MIGRATE_TRIALS", 4);
    let seed = crate::common::env_knob("PRODIGY_TORTURE_SEED", 0x5eed7);
    let mut rng = crate::common::Rng(seed | 1);
    for trial in 0..trials {
        let env = Env::new();
        let repo = legacy_repo(&env, "big");
        // Beside the fixture, 12 per-job files of 1,500 events each.
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for j in 0..12 {
            let job = format!("job-{j}");
            let dir = repo.join(".prodigy/events").join(&job);
            fs::create_dir_all(&dir).unwrap();
            let text: String = (0..1500)
                .map(|i| line(&format!("{job}-{i:05}"), &job, "agent_progress") + "\n")
                .collect();
            fs::write(dir.join("events-20250101_000000.jsonl"), text).unwrap();
            want.insert(job, 1500);
        }
        want.insert("mapreduce-1736420000000".into(), 144);
        want.insert("mapreduce-20250109_143000".into(), 178);
        // A whole run takes ~0.8 s in a debug build: kills land in every phase.
        let delay = rng.below(900);
        let mut child = env
            .std_cmd()
            .args(["migrate-events", "--remove-local", repo.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (r, out) = migrate_json(&env, &["--remove-local", repo.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "trial {trial} (delay {delay} ms): {}",
            transcript(&out)
        );
        for (job, n) in &want {
            let records = events(&env, "big", job);
            let ids: BTreeSet<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
            assert_eq!(
                (records.len(), ids.len()),
                (*n, *n),
                "trial {trial} (delay {delay} ms), job {job}: {r}"
            );
        }
        let dlq = env.ok(
            &[
                "dlq",
                "list",
                "mapreduce-20250109_143000",
                "--repo",
                "big",
                "--json",
            ],
            b"",
        );
        assert_eq!(
            serde_json::from_str::<Value>(&dlq)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            4
        );
        let jobs = env.ok(&["jobs", "--repo", "big", "--json"], b"");
        assert!(jobs.contains("\"version\": 13"), "{jobs}");
        env.ok(&["fsck"], b"");
        // Everything was imported, so everything local is gone.
        assert!(
            !repo.join(".prodigy").exists(),
            "trial {trial}: {:?}",
            files(&repo)
        );
    }
}

/// A repository can ship symlinks in `.prodigy` (`.prodigy` itself, `.prodigy/events`,
/// `.prodigy/mapreduce`, a job directory, an event file) pointing at data outside it:
/// `migrate-events --remove-local`, with `--force` too, follows none of them: each is
/// refused by name, nothing is imported through it, and the victim outside is untouched.
#[test]
fn symlinks_in_the_legacy_tree_are_refused_and_nothing_outside_is_removed() {
    let env = Env::new();
    let victim = env.dir.path().join("victim");
    let log = format!("{}\n", line("v1", "jobz", "agent_started"));
    // Each case: the link (relative to the repository) and the victim tree it points at.
    let cases: [(&str, &str); 6] = [
        (".prodigy", ".prodigy"),
        (".prodigy/events", ".prodigy/events"),
        (".prodigy/mapreduce", ".prodigy/mapreduce"),
        (".prodigy/events/jobz", ".prodigy/events/jobz"),
        (
            ".prodigy/events/jobz/events-1.jsonl",
            ".prodigy/events/jobz/events-1.jsonl",
        ),
        (".prodigy/mapreduce/dlq/jobz", ".prodigy/mapreduce/dlq/jobz"),
    ];
    for (n, (link, _)) in cases.iter().enumerate() {
        let repo = env.scratch().join(format!("r{n}"));
        let outside = victim.join(format!("c{n}"));
        // The victim: a valid legacy tree of its own, outside the repository.
        let vdot = outside.join("dot");
        fs::create_dir_all(vdot.join("events/jobz")).unwrap();
        fs::write(vdot.join("events/jobz/events-1.jsonl"), &log).unwrap();
        copy_dir(&fixture_dot().join("mapreduce"), &vdot.join("mapreduce"));
        fs::create_dir_all(vdot.join("mapreduce/dlq/jobz/items")).unwrap();
        let before = files(&outside);
        // The repository: the link stands where `link` is, aiming at the same place in
        // the victim's tree.
        let target = vdot.join(link.trim_start_matches(".prodigy").trim_start_matches('/'));
        let at = repo.join(link);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, &at).unwrap();
        for args in [vec!["--remove-local"], vec!["--remove-local", "--force"]] {
            let mut all = args.clone();
            all.push(repo.to_str().unwrap());
            let (r, out) = migrate_json(&env, &all);
            let refused: Vec<&Value> = r["rejected"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["reason"] == "symlink")
                .collect();
            assert_eq!(refused.len(), 1, "{link} {args:?}: {}", transcript(&out));
            assert_eq!(refused[0]["path"], *link, "{r}");
            assert_eq!(
                files(&outside),
                before,
                "{link} {args:?}: the victim changed"
            );
            assert!(
                fs::symlink_metadata(&at).is_ok(),
                "{link}: the link was removed"
            );
            if args.len() == 1 {
                assert!(!out.status.success(), "{link}: {}", transcript(&out));
            }
        }
        // Nothing came in through the link.
        let stored = files(&env.home());
        assert!(
            !stored
                .iter()
                .any(|f| f.contains("jobz") || f.contains("mapreduce-")),
            "{link}: {stored:?}"
        );
    }
}

/// Two imports of one legacy job at once import each event once: each found nothing
/// stored and appended everything under a writer of its own (every event twice). The
/// second waits for the first's run lock, then finds them.
#[test]
fn two_imports_at_once_import_each_event_once() {
    let env = Env::new();
    let repo = env.scratch().join("twice");
    let dir = repo.join(".prodigy/events/legjob");
    fs::create_dir_all(&dir).unwrap();
    let text: String = (0..20_000)
        .map(|i| format!("{}\n", line(&format!("ev-{i}"), "legjob", "agent_started")))
        .collect();
    fs::write(dir.join("events-1.jsonl"), text).unwrap();
    let runs: Vec<std::process::Child> = (0..2)
        .map(|_| {
            env.std_cmd()
                .args(["migrate-events", "--json", repo.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", transcript(&out));
    }
    let records = events(&env, "twice", "legjob");
    let ids: BTreeSet<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!((records.len(), ids.len()), (20_000, 20_000));
}
