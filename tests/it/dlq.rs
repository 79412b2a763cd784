//! The dead-letter queue end to end: `prodigy dlq …`, grouping, bad input.

use std::collections::BTreeMap;

use prodigy::dlq::{classify, signature};

use crate::common::{Env, assert_one_line_error, snapshot};

fn add(env: &Env, job: &str, item: &str, error: &str, exit: &str, agent: &str) {
    env.ok(
        &[
            "dlq",
            "add",
            "--repo",
            "api",
            "--job",
            job,
            "--item",
            item,
            "--error",
            error,
            "--exit-code",
            exit,
            "--agent",
            agent,
            "--data",
            &format!("{{\"id\":\"{item}\",\"path\":\"src/{item}.rs\"}}"),
            "--step",
            "test",
        ],
        b"",
    );
}

fn fill(env: &Env) {
    add(
        env,
        "mr-1",
        "item-1",
        "file /a/b.rs:12 not found",
        "1",
        "agent-1",
    );
    add(
        env,
        "mr-1",
        "item-2",
        "file /c/d.rs:99 not found",
        "1",
        "agent-2",
    );
    add(
        env,
        "mr-1",
        "item-3",
        "agent agent-3 timed out after 600s",
        "124",
        "agent-3",
    );
    add(
        env,
        "mr-1",
        "item-3",
        "agent agent-4 timed out after 900s",
        "124",
        "agent-4",
    );
    add(
        env,
        "mr-1",
        "item-4",
        "CONFLICT (content): Merge conflict in src/lib.rs",
        "1",
        "agent-1",
    );
}

#[test]
fn a_second_failure_appends_to_the_history() {
    let env = Env::new();
    fill(&env);
    let out = env.ok(
        &["dlq", "inspect", "item-3", "--repo", "api", "--json"],
        b"",
    );
    let item: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(item["failure_count"], 2);
    let history = item["failure_history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["attempt"], 1);
    assert_eq!(history[1]["attempt"], 2);
    assert_eq!(history[0]["agent_id"], "agent-3");
    assert_eq!(history[1]["error_type"]["type"], "timeout");
    assert_eq!(item["first_attempt"], history[0]["timestamp"]);
    assert_eq!(item["last_attempt"], history[1]["timestamp"]);
    assert_eq!(
        item["error_signature"],
        "timeout: agent agent-<n> timed out after <n>s"
    );
    assert_eq!(item["item_data"]["path"], "src/item-3.rs");
    // Merge conflicts need a person and are not retried.
    let conflict: serde_json::Value = serde_json::from_str(&env.ok(
        &["dlq", "inspect", "item-4", "--repo", "api", "--json"],
        b"",
    ))
    .unwrap();
    assert_eq!(conflict["reprocess_eligible"], false);
    assert_eq!(conflict["manual_review_required"], true);
    assert_eq!(env.run(&["fsck"], b"").status.code(), Some(0));
}

#[test]
fn list_inspect_analyze_stats_output() {
    let env = Env::new();
    fill(&env);
    // Events about the item show up in inspect.
    env.ok(
        &["events", "append", "--repo", "api", "--job", "mr-1"],
        b"{\"event_type\":\"agent_failed\",\"job_id\":\"mr-1\",\"agent_id\":\"agent-3\",\"item_id\":\"item-3\",\"error\":\"timed out\",\"retry_eligible\":true}\n",
    );
    snapshot(
        "dlq_list",
        &env.run(&["dlq", "list", "--repo", "api"], b""),
        &env.home(),
    );
    snapshot(
        "dlq_list_by_signature",
        &env.run(
            &["dlq", "list", "--repo", "api", "--group-by", "signature"],
            b"",
        ),
        &env.home(),
    );
    snapshot(
        "dlq_inspect",
        &env.run(&["dlq", "inspect", "item-3", "--repo", "api"], b""),
        &env.home(),
    );
    snapshot(
        "dlq_analyze",
        &env.run(&["dlq", "analyze", "mr-1", "--repo", "api"], b""),
        &env.home(),
    );
    snapshot(
        "dlq_stats",
        &env.run(&["dlq", "stats", "--repo", "api"], b""),
        &env.home(),
    );
    let out = env.ok(
        &["dlq", "list", "--repo", "api", "--eligible", "--json"],
        b"",
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["item-1", "item-2", "item-3"]);
    let out = env.ok(
        &[
            "dlq",
            "list",
            "--repo",
            "api",
            "--filter",
            "failure_count >= 2 || item.path ~ '1\\.rs$'",
            "--json",
        ],
        b"",
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["item-1", "item-3"]);
    let out = env.ok(
        &["dlq", "list", "--repo", "api", "--limit", "1", "--json"],
        b"",
    );
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&out)
            .unwrap()
            .len(),
        1
    );
    let analysis: serde_json::Value =
        serde_json::from_str(&env.ok(&["dlq", "analyze", "--repo", "api", "--json"], b"")).unwrap();
    assert_eq!(analysis["patterns"][0]["items"], 2);
    assert_eq!(
        analysis["patterns"][0]["signature"],
        "command_failed: file <path>:<n> not found"
    );
    assert_eq!(analysis["error_types"]["timeout"], 1);
}

#[test]
fn export_json_and_csv() {
    let env = Env::new();
    fill(&env);
    let doc: serde_json::Value =
        serde_json::from_str(&env.ok(&["dlq", "export", "mr-1", "--repo", "api"], b"")).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 4);
    assert_eq!(doc[2]["failure_history"].as_array().unwrap().len(), 2);
    let file = env.scratch().join("dlq.csv");
    env.ok(
        &[
            "dlq",
            "export",
            "mr-1",
            "--repo",
            "api",
            "--format",
            "csv",
            "-o",
            file.to_str().unwrap(),
        ],
        b"",
    );
    let csv = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("item_id,error_type,failure_count,"));
    // Item data with quotes and commas is quoted the CSV way.
    assert!(
        lines[1].starts_with("item-1,command_failed(1),1,")
            && lines[1].ends_with(r#","{""id"":""item-1"",""path"":""src/item-1.rs""}""#),
        "{}",
        lines[1]
    );
    assert!(lines[4].contains("merge_conflict"), "{}", lines[4]);
    // `-o` through a symbolic link writes the file it names (the link stays), to a FIFO
    // or device in place (the rename replaced them: `-o /dev/full` made it a file), and
    // over a file keeping its mode.
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let export = |to: &std::path::Path| {
        env.run(
            &[
                "dlq",
                "export",
                "mr-1",
                "--repo",
                "api",
                "-o",
                to.to_str().unwrap(),
            ],
            b"",
        )
    };
    let real = env.scratch().join("real.json");
    std::fs::write(&real, "old").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = env.scratch().join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(export(&link).status.success());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::read_to_string(&real).unwrap().starts_with('['));
    let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let fifo = env.scratch().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // A reader that does not wait for a writer: the export finds it there.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nonblock)
        .open(&fifo)
        .unwrap();
    assert!(export(&fifo).status.success());
    let mut got = String::new();
    std::io::Read::read_to_string(&mut reader, &mut got).unwrap();
    assert!(got.starts_with('['), "{got:?}");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn purge_asks_and_dry_run_changes_nothing() {
    let env = Env::new();
    fill(&env);
    let out = env.run(&["dlq", "purge", "--repo", "api"], b"");
    assert_eq!(
        out.status.code(),
        Some(2),
        "purge without --older-than is a usage error"
    );
    let out = env.ok(
        &[
            "dlq",
            "purge",
            "--repo",
            "api",
            "--older-than",
            "0s",
            "--dry-run",
        ],
        b"",
    );
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.starts_with("would remove mr-1 item-1\n"));
    let out = env.run(
        &["dlq", "purge", "--repo", "api", "--older-than", "0s"],
        b"n\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("remove 4 items from 1 jobs? [y/N]\nerror: nothing was removed"),
        "{stderr}"
    );
    let out = env.run(
        &[
            "dlq",
            "purge",
            "--repo",
            "api",
            "--older-than",
            "1h",
            "--yes",
        ],
        b"",
    );
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(
            &env.ok(&["dlq", "list", "--repo", "api", "--json"], b"")
        )
        .unwrap()
        .len(),
        4
    );
    let out = env.run(
        &["dlq", "purge", "--repo", "api", "--older-than", "0s"],
        b"y\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.run(&["dlq", "list", "mr-1", "--repo", "api", "--json"], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    // The items are gone from the queue, not from history.
    let log = env.ok(&["ref", "log", "dlq/api/mr-1"], b"");
    assert!(
        log.lines().last().unwrap().ends_with("dlq remove 4 items"),
        "{log}"
    );
}

#[test]
fn bad_input_is_refused() {
    let env = Env::new();
    fill(&env);
    let out = env.run(
        &[
            "dlq",
            "list",
            "--repo",
            "api",
            "--filter",
            "error_type = 'timeout'",
        ],
        b"",
    );
    let stderr = assert_one_line_error(&out, 2);
    assert!(stderr.contains("column 12"), "{stderr}");
    for bad in [
        "failure_count >",
        "bogus == 1",
        "item_id == 'x",
        "(item_id == 'x'",
    ] {
        let out = env.run(&["dlq", "list", "--repo", "api", "--filter", bad], b"");
        let stderr = assert_one_line_error(&out, 2);
        assert!(stderr.contains("invalid filter"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = env.run(&["dlq", "inspect", "nope", "--repo", "api"], b"");
    assert_one_line_error(&out, 1);
    // A job that does not exist is an error, not an empty list.
    let out = env.run(&["dlq", "list", "nojob", "--repo", "api"], b"");
    let stderr = assert_one_line_error(&out, 1);
    assert!(stderr.contains("no job 'nojob'"), "{stderr}");
    for hostile in ["../x", "a/b", &"j".repeat(200)] {
        let out = env.run(&["dlq", "list", hostile, "--repo", "api"], b"");
        assert_one_line_error(&out, 2);
        let out = env.run(
            &[
                "dlq", "add", "--repo", "api", "--job", hostile, "--item", "i", "--error", "e",
            ],
            b"",
        );
        assert_one_line_error(&out, 2);
    }
    // Several jobs with items: name one.
    add(&env, "mr-2", "item-9", "boom", "1", "agent-9");
    let out = env.run(&["dlq", "list", "--repo", "api"], b"");
    let stderr = assert_one_line_error(&out, 2);
    assert!(stderr.contains("mr-1, mr-2"), "{stderr}");
    let out = env.run(&["dlq", "stats", "--repo", "api", "--json"], b"");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["total"]["items"], 5);
    assert_eq!(stats["total"]["failures"], 6);
}

#[test]
fn signatures_group_the_committed_corpus() {
    let corpus = include_str!("../fixtures/dlq_error_corpus.tsv");
    let mut groups: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for line in corpus
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut fields = line.splitn(3, '\t');
        let (group, exit, message) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next().unwrap(),
        );
        let error_type = classify(message, exit.parse().ok());
        groups
            .entry(group)
            .or_default()
            .push(signature(&error_type, message));
    }
    assert!(groups.len() >= 10);
    let mut seen = BTreeMap::new();
    for (group, signatures) in &groups {
        assert!(
            signatures.windows(2).all(|w| w[0] == w[1]),
            "{group} splits: {signatures:#?}"
        );
        if let Some(other) = seen.insert(signatures[0].clone(), group) {
            panic!("{group} and {other} share the signature {}", signatures[0]);
        }
    }
}

/// A named job that does not exist is an error in every `dlq` command, as in `list` and
/// `export` (`stats` printed a row of zeros and `purge` "nothing before …", both exit 0).
#[test]
fn a_job_that_does_not_exist_is_an_error_everywhere() {
    let env = Env::new();
    fill(&env);
    for args in [
        vec!["dlq", "stats", "nope", "--repo", "api"],
        vec![
            "dlq",
            "purge",
            "--job",
            "nope",
            "--older-than",
            "0s",
            "--yes",
            "--repo",
            "api",
        ],
        vec!["dlq", "list", "nope", "--repo", "api"],
    ] {
        let out = env.run(&args, b"");
        let stderr = assert_one_line_error(&out, 1);
        assert!(
            stderr.contains("no job 'nope' in repository 'api'"),
            "{args:?}: {stderr}"
        );
    }
    // A job that exists still has its stats.
    assert!(
        env.ok(&["dlq", "stats", "mr-1", "--repo", "api"], b"")
            .contains("mr-1")
    );
    // `inspect` shows every line of a failure's message (it showed the first alone).
    add(
        &env,
        "multi",
        "x",
        "first line\nsecond line",
        "1",
        "agent-1",
    );
    let shown = env.ok(
        &["dlq", "inspect", "x", "--job", "multi", "--repo", "api"],
        b"",
    );
    assert!(
        shown.contains("     first line\n     second line\n"),
        "{shown}"
    );
}
