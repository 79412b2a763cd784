//! The remote store against a real S3-compatible server (`s3s-fs` on loopback, see
//! `s3.rs`): every command through it, the same objects as the local store, the cache,
//! agents on separate "hosts" (network namespaces) appending to one job, a job started on
//! one host and resumed on another after a SIGKILL, the lease, gc and fsck, push and pull,
//! and every bad input the issue lists.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Env, IDENTITY, env_knob, git, init_repo, transcript};
use crate::s3::{BUCKET, Host, S3, hosts};

/// `prodigy args…` for `env`'s home on the store `s3://BUCKET/prefix` (at the server, or
/// through the proxy once the test chose it).
fn cmd(env: &Env, s3: &S3, prefix: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = env.std_cmd();
    s3.configure(&mut cmd, &s3.endpoint(), prefix);
    cmd.args(args);
    cmd
}

fn run(env: &Env, s3: &S3, prefix: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut c = assert_cmd::Command::from_std(cmd(env, s3, prefix, args));
    c.write_stdin(stdin.to_vec()).output().unwrap()
}

fn ok(env: &Env, s3: &S3, prefix: &str, args: &[&str], stdin: &[u8]) -> String {
    let out = run(env, s3, prefix, args, stdin);
    assert!(out.status.success(), "{args:?}: {}", transcript(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Appends `events` to job `job` of repo `r`.
fn append(env: &Env, s3: &S3, prefix: &str, job: &str, events: String) {
    ok(
        env,
        s3,
        prefix,
        &["events", "append", "--repo", "r", "--job", job],
        events.as_bytes(),
    );
}

/// Stores `content` as a blob in the remote store; its id and the server's file for it.
fn store_blob(env: &Env, s3: &S3, prefix: &str, content: &[u8]) -> (String, PathBuf) {
    let id = ok(env, s3, prefix, &["hash-object", "-w", "--stdin"], content)
        .trim()
        .to_owned();
    let key = s3.file(prefix, &format!("objects/{}/{}", &id[..2], &id[2..]));
    (id, key)
}

/// `ok(…)` parsed as JSON.
fn json(env: &Env, s3: &S3, prefix: &str, args: &[&str]) -> Value {
    serde_json::from_str(&ok(env, s3, prefix, args, b"")).unwrap()
}

/// True when every ref of a `store push|pull --json` report had `outcome`.
fn all_refs(report: &Value, outcome: &str) -> bool {
    report["refs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r[2] == outcome)
}

/// Exit 1 and one `error:` line (hints may follow); returns stderr.
fn one_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", transcript(out));
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", transcript(out));
    assert!(
        stderr.lines().all(|l| l.starts_with("error:")
            || l.starts_with("hint:")
            || l.starts_with("warning:")),
        "{stderr}"
    );
    stderr
}

fn events(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| format!("{{\"event_type\":\"agent_completed\",\"agent_id\":\"{tag}\",\"item_id\":\"{tag}-{i}\",\"duration_ms\":{i}}}\n"))
        .collect()
}

fn item_ids(env: &Env, s3: &S3, prefix: &str, job: &str) -> Vec<String> {
    let out = ok(
        env,
        s3,
        prefix,
        &["events", "show", job, "--repo", "r", "--json"],
        b"",
    );
    let mut ids: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v.pointer("/event/item_id")?.as_str().map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn every_command_works_on_the_remote_store_with_the_same_objects_as_the_local_one() {
    let s3 = S3::start();
    let env = Env::new();
    let p = "t1";
    // The same canonical bytes and ids: hash-object -w on both, and the key's bytes are the
    // loose file's bytes.
    let remote_id = ok(&env, &s3, p, &["hash-object", "-w", "--stdin"], b"hello\n");
    let local_env = Env::new();
    let local_id = local_env.ok(&["hash-object", "-w", "--stdin"], b"hello\n");
    assert_eq!(remote_id, local_id);
    let id = remote_id.trim();
    let key = s3.file(p, &format!("objects/{}/{}", &id[..2], &id[2..]));
    let local = local_env
        .home()
        .join("objects")
        .join(&id[..2])
        .join(&id[2..]);
    assert_eq!(std::fs::read(&key).unwrap(), std::fs::read(&local).unwrap());
    // A second put is a no-op (the key's bytes and time unchanged).
    let before = std::fs::metadata(&key).unwrap().modified().unwrap();
    ok(&env, &s3, p, &["hash-object", "-w", "--stdin"], b"hello\n");
    assert_eq!(std::fs::metadata(&key).unwrap().modified().unwrap(), before);

    append(&env, &s3, p, "j", events(50, "a"));
    ok(
        &env,
        &s3,
        p,
        &[
            "dlq", "add", "--repo", "r", "--job", "j", "--item", "item-1", "--error", "boom",
        ],
        b"",
    );
    assert_eq!(item_ids(&env, &s3, p, "j").len(), 50);
    let refs = ok(&env, &s3, p, &["ref", "list"], b"");
    assert!(
        refs.contains("events/r/j") && refs.contains("dlq/r/j"),
        "{refs}"
    );
    // The append's writer has a ref of its own under the job's.
    let lane = refs
        .lines()
        .find_map(|l| l.split(' ').nth(1).filter(|n| n.starts_with("events/r/j/")))
        .unwrap_or_else(|| panic!("{refs}"));
    let log = ok(&env, &s3, p, &["ref", "log", lane], b"");
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(ok(&env, &s3, p, &["dlq", "list", "j", "--repo", "r"], b"").contains("item-1"));
    assert!(ok(&env, &s3, p, &["events", "stats", "j", "--repo", "r"], b"").contains("50"));
    assert!(ok(&env, &s3, p, &["cat-object", "-p", &id[..8]], b"").contains("hello"));
    let fsck = ok(&env, &s3, p, &["fsck", "--json"], b"");
    let fsck: Value = serde_json::from_str(&fsck).unwrap();
    assert_eq!(fsck["errors"], 0, "{fsck}");
    assert_eq!(fsck["refs"], 2, "{fsck}");
    // Nothing of the store went into the home: no refs, no objects (only the cache).
    assert!(!env.home().join("events").exists());
    assert!(!env.home().join("objects").exists());
    assert!(env.home().join("cache/objects").is_dir());
    // The local store is untouched by all of it, and `--store ""` picks it.
    let local_refs = ok(&env, &s3, p, &["--store", "", "ref", "list"], b"");
    assert!(local_refs.is_empty(), "{local_refs}");
}

#[test]
fn reads_verify_the_hash_and_the_cache_serves_what_was_fetched() {
    let s3 = S3::start();
    let writer = Env::new();
    let p = "t2";
    let (id, key) = store_blob(&writer, &s3, p, b"cached\n");
    let id = id.as_str();

    // A reader with a cold cache fetches and keeps it.
    let reader = Env::new();
    assert_eq!(
        ok(&reader, &s3, p, &["cat-object", "-p", id], b""),
        "cached\n"
    );
    let cached = reader
        .home()
        .join("cache/objects")
        .join(&id[..2])
        .join(&id[2..]);
    assert!(cached.is_file());

    // With the cache warm, the object is read with the server unreachable.
    let mut c = reader.std_cmd();
    s3.configure(&mut c, "http://127.0.0.1:1", p);
    let out = c.args(["cat-object", "-p", id]).output().unwrap();
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(out.stdout, b"cached\n");

    // A damaged cache copy is fetched again from the store.
    std::fs::remove_file(&cached).unwrap();
    std::fs::write(&cached, b"garbage").unwrap();
    assert_eq!(
        ok(&reader, &s3, p, &["cat-object", "-p", id], b""),
        "cached\n"
    );
    assert_ne!(std::fs::read(&cached).unwrap(), b"garbage");

    // A damaged remote object is refused, naming its address, and never cached.
    let mut bytes = std::fs::read(&key).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&key, &bytes).unwrap();
    let cold = Env::new();
    let out = run(&cold, &s3, p, &["cat-object", "-p", id], b"");
    let err = one_error(&out);
    assert!(
        err.contains("is corrupt") && err.contains(&format!("s3://{BUCKET}/{p}/objects/")),
        "{err}"
    );
    assert!(
        !cold
            .home()
            .join("cache/objects")
            .join(&id[..2])
            .join(&id[2..])
            .exists()
    );
    let fsck = run(&writer, &s3, p, &["fsck"], b"");
    assert_eq!(fsck.status.code(), Some(1), "{}", transcript(&fsck));
    assert!(
        String::from_utf8_lossy(&fsck.stdout).contains("corrupt"),
        "{}",
        transcript(&fsck)
    );
}

/// Starts `args` for `env` against the store, through `endpoint`, as a process (inside
/// `host`'s namespace when there is one).
fn spawn(
    env: &Env,
    s3: &S3,
    host: Option<&Host>,
    dir: &Path,
    prefix: &str,
    args: &[&str],
    extra: &[(&str, &str)],
) -> Child {
    let mut c = env.std_cmd();
    let endpoint = match host {
        Some(h) => s3.endpoint_from(h),
        None => s3.endpoint(),
    };
    s3.configure(&mut c, &endpoint, prefix);
    for (k, v) in extra {
        c.env(k, v);
    }
    c.args(args).current_dir(dir);
    let mut c = match host {
        Some(h) => h.wrap(&c),
        None => c,
    };
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    c.spawn().unwrap()
}

#[test]
fn agents_on_separate_hosts_appending_to_one_job_lose_nothing() {
    let s3 = S3::start();
    let p = "t3";
    let agents = env_knob("PRODIGY_REMOTE_AGENTS", 6) as usize;
    let appends = env_knob("PRODIGY_REMOTE_APPENDS", 15) as usize;
    // One namespace per agent where the machine allows it (root), else processes on
    // loopback.
    let hosts = hosts(agents);
    let hosts = &hosts.list;
    let envs: Vec<Env> = (0..agents).map(|_| Env::new()).collect();
    let script = format!(
        "for i in $(seq 1 {appends}); do printf '{{\"event_type\":\"agent_completed\",\"agent_id\":\"%s\",\"item_id\":\"%s-%s\",\"duration_ms\":1}}\\n' \"$AGENT\" \"$AGENT\" \"$i\" | \"$PRODIGY\" events append --repo r --job shared >/dev/null && echo \"$AGENT-$i\"; done"
    );
    let bin = assert_cmd::cargo::cargo_bin("prodigy");
    let mut children = Vec::new();
    for (n, (env, host)) in envs.iter().zip(hosts).enumerate() {
        let agent = format!("agent{n}");
        let mut c = env.std_cmd();
        let endpoint = match host {
            Some(h) => s3.endpoint_from(h),
            None => s3.endpoint(),
        };
        s3.configure(&mut c, &endpoint, p);
        c.env("AGENT", &agent)
            .env("PRODIGY", &bin)
            .args(["-c", &script]);
        // `sh -c` in place of prodigy itself.
        let mut c = {
            let mut sh = std::process::Command::new("sh");
            sh.args(c.get_args());
            for (k, v) in c.get_envs() {
                if let Some(v) = v {
                    sh.env(k, v);
                }
            }
            sh.current_dir(env.scratch());
            let mut sh = match host {
                Some(h) => h.wrap(&sh),
                None => sh,
            };
            sh.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            sh
        };
        children.push(c.spawn().unwrap());
    }
    let mut acknowledged = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", transcript(&out));
        assert!(out.stderr.is_empty(), "{}", transcript(&out));
        assert!(!out.stdout.is_empty(), "{}", transcript(&out));
        acknowledged.extend(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_owned),
        );
    }
    acknowledged.sort();
    assert_eq!(acknowledged.len(), agents * appends);
    let reader = Env::new();
    assert_eq!(item_ids(&reader, &s3, p, "shared"), acknowledged);
    // Each append was a writer of its own, with a ref of its own: no two writers ever
    // met on one key, so the server's ordering was never relied on.
    let lanes = ok(&reader, &s3, p, &["ref", "list", "events/r/shared"], b"");
    assert_eq!(lanes.lines().count(), agents * appends, "{lanes}");
    let fsck: Value = json(&reader, &s3, p, &["fsck", "--json"]);
    assert_eq!(fsck["errors"], 0, "{fsck}");
}

/// A repository named `name` under `parent` with one commit; returns it.
fn repo(parent: &Path, name: &str) -> PathBuf {
    init_repo(parent.join(name))
}

/// A workflow of `items` items, each taking `secs` seconds, leaving a mark and committing
/// a file; reduce commits how many of those files the job's branch holds.
fn slow_workflow(dir: &Path, items: usize, secs: &str, marks: &Path) -> PathBuf {
    let text = format!(
        "name: slow\nmode: mapreduce\n{IDENTITY}map:\n  input: seq 1 {items}\n  max_parallel: 2\n  agent_template:\n    - shell: sleep {secs}; echo ${{item}} >> {marks}/done-$$; echo ${{item}} > item-${{item}}; git add item-${{item}}; git commit -qm item-${{item}}\nreduce:\n  - shell: ls item-* | wc -l > count; git add count; git commit -qm count\n",
        marks = marks.display()
    );
    let path = dir.join("slow.yml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `prodigy resume job` for `env` (on `host`, in `dir`), waited for.
fn resume(
    env: &Env,
    s3: &S3,
    host: Option<&Host>,
    dir: &Path,
    prefix: &str,
    job: &str,
    extra: &[(&str, &str)],
) -> Output {
    spawn(env, s3, host, dir, prefix, &["resume", job], extra)
        .wait_with_output()
        .unwrap()
}

fn kill_group(child: &mut Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = child.wait();
}

#[test]
fn a_job_started_on_one_host_is_resumed_on_another_after_its_runner_is_killed() {
    let s3 = S3::start();
    let p = "t4";
    let two = hosts(2);
    let (host_a, host_b) = (&two.list[0], &two.list[1]);
    let (env_a, env_b) = (Env::new(), Env::new());
    let marks = env_a.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // Two clones of one repository, one per host, with the same name.
    let origin = repo(&env_a.scratch(), "proj");
    let clone_b = env_b.scratch().join("proj");
    git(
        &env_b.scratch(),
        &["clone", "-q", origin.to_str().unwrap(), "proj"],
    );
    let workflow = slow_workflow(&env_a.scratch(), 8, "0.3", &marks);
    // Long enough that the lease, renewed at most a second ago, outlives the 1 s a
    // resume waits for a holder before it gives up.
    let ttl = [("PRODIGY_LEASE_TTL", "3s")];

    let mut runner = spawn(
        &env_a,
        &s3,
        host_a.as_ref(),
        &origin,
        p,
        &["run", workflow.to_str().unwrap(), "--job-id", "far"],
        &ttl,
    );
    // Kill it once a few items are checkpointed.
    let start = Instant::now();
    loop {
        let out = run(&env_b, &s3, p, &["jobs", "--repo", "proj", "--json"], b"");
        let done = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array()?.first()?.get("done")?.as_u64())
            .unwrap_or(0);
        if done >= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the runner made no progress: {}",
            transcript(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(&mut runner);

    // At once, host B finds the job leased to host A.
    let early = resume(&env_b, &s3, host_b.as_ref(), &clone_b, p, "far", &ttl);
    let err = one_error(&early);
    assert!(
        err.contains("is running on host") && err.contains("lease"),
        "{err}"
    );
    // Once the lease has expired, host B resumes it from the store alone.
    std::thread::sleep(Duration::from_millis(3200));
    let resumed = resume(&env_b, &s3, host_b.as_ref(), &clone_b, p, "far", &ttl);
    assert!(resumed.status.success(), "{}", transcript(&resumed));
    let show: Value = json(
        &env_b,
        &s3,
        p,
        &["jobs", "show", "far", "--repo", "proj", "--json"],
    );
    assert_eq!(show["phase"], "complete", "{show}");
    assert_eq!(show["done"], 8, "{show}");
    // Host B worked in worktrees of its own home, and its branch has every item's file:
    // the items whose commits stayed on host A ran again there.
    assert!(env_b.home().join("worktrees/proj/far").is_dir());
    let count = std::process::Command::new("git")
        .args(["show", "prodigy/far:count"])
        .current_dir(&clone_b)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        "8",
        "{}",
        transcript(&count)
    );
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains("run again"),
        "{}",
        transcript(&resumed)
    );
    // Every item ran, on one host or the other.
    let mut ran: Vec<u64> = std::fs::read_dir(&marks)
        .unwrap()
        .flat_map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect::<Vec<u64>>()
        })
        .collect();
    ran.sort();
    ran.dedup();
    assert_eq!(ran, (1..=8).collect::<Vec<u64>>());
    let fsck: Value = json(&env_b, &s3, p, &["fsck", "--json"]);
    assert_eq!(fsck["errors"], 0, "{fsck}");
}

#[test]
fn a_renewed_lease_keeps_a_long_job_from_being_taken_over() {
    let s3 = S3::start();
    let p = "t5";
    let env = Env::new();
    let other = Env::new();
    let marks = env.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let origin = repo(&env.scratch(), "proj");
    git(
        &other.scratch(),
        &["clone", "-q", origin.to_str().unwrap(), "proj"],
    );
    // Runs about 3 s with a 1 s lease: only renewal keeps it.
    let workflow = slow_workflow(&env.scratch(), 6, "1", &marks);
    let ttl = [("PRODIGY_LEASE_TTL", "1s")];
    let runner = spawn(
        &env,
        &s3,
        None,
        &origin,
        p,
        &["run", workflow.to_str().unwrap(), "--job-id", "long"],
        &ttl,
    );
    std::thread::sleep(Duration::from_millis(2000));
    let clone = other.scratch().join("proj");
    let resume_elsewhere = || resume(&other, &s3, None, &clone, p, "long", &ttl);
    let out = resume_elsewhere();
    let err = one_error(&out);
    assert!(err.contains("is running on host"), "{err}");
    let done = runner.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", transcript(&done));
    // Released on exit: a resume right after it is not refused (the job is complete).
    let again = resume_elsewhere();
    assert!(again.status.success(), "{}", transcript(&again));
}

#[test]
fn gc_marks_from_the_remote_refs_and_sweeps_with_the_grace_rules() {
    let s3 = S3::start();
    let p = "t6";
    let env = Env::new();
    append(&env, &s3, p, "keep", events(20, "k"));
    let (_, key) = store_blob(&env, &s3, p, b"unreachable\n");
    // Young: kept by the default grace period.
    let report: Value = json(&env, &s3, p, &["gc", "--json"]);
    assert_eq!(report["kept_young"], 1, "{report}");
    assert_eq!(report["pruned"], 0, "{report}");
    assert!(key.exists());
    // A dry run removes nothing.
    let report: Value = json(
        &env,
        &s3,
        p,
        &["gc", "--prune", "now", "--dry-run", "--json"],
    );
    assert_eq!(report["pruned"], 1, "{report}");
    assert!(key.exists());
    let report: Value = json(
        &env,
        &s3,
        p,
        &["gc", "--prune", "now", "--reflog-expire", "never", "--json"],
    );
    assert_eq!(report["pruned"], 1, "{report}");
    assert_eq!(
        report["reachable"],
        report["objects_before"].as_u64().unwrap() - 1,
        "{report}"
    );
    assert!(!key.exists());
    // The job reads whole, and fsck finds nothing wrong.
    assert_eq!(item_ids(&env, &s3, p, "keep").len(), 20);
    let fsck: Value = json(&env, &s3, p, &["fsck", "--json"]);
    assert_eq!(fsck["errors"], 0, "{fsck}");
    // Reflog expiry deletes the entry keys; then a deleted ref's objects can go.
    let lane = ok(&env, &s3, p, &["ref", "list", "events/r/keep"], b"");
    let lane = lane.split_whitespace().nth(1).unwrap();
    ok(&env, &s3, p, &["ref", "delete", lane], b"");
    let report: Value = json(
        &env,
        &s3,
        p,
        &["gc", "--prune", "now", "--reflog-expire", "now", "--json"],
    );
    assert!(report["reflog_expired"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["reachable"], 0, "{report}");
    let left = std::fs::read_dir(s3.file(p, "objects"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count();
    assert_eq!(left, 0);
    // A ref naming a missing object is an fsck error.
    append(&env, &s3, p, "again", events(3, "a"));
    let head = ok(&env, &s3, p, &["ref", "list"], b"");
    let head = head.split(' ').next().unwrap();
    std::fs::remove_file(s3.file(p, &format!("objects/{}/{}", &head[..2], &head[2..]))).unwrap();
    let out = run(&env, &s3, p, &["fsck"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("missing object"),
        "{}",
        transcript(&out)
    );
    // ... and stops gc before it removes anything: what the missing object linked to is
    // unknown (it went on, and swept the job's batches as unreachable).
    let objects = || {
        std::fs::read_dir(s3.file(p, "objects"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .count()
    };
    let before = objects();
    assert!(before > 0);
    let out = run(&env, &s3, p, &["gc", "--prune", "now"], b"");
    let err = one_error(&out);
    assert!(err.contains(head) && err.contains("not found"), "{err}");
    assert_eq!(objects(), before);
    // A damaged ref key: reading it is one error naming its address; fsck reports it.
    let lane = ok(&env, &s3, p, &["ref", "list", "events/r/again"], b"");
    let lane = lane.split_whitespace().nth(1).unwrap().to_owned();
    let writer = lane.rsplit('/').next().unwrap();
    std::fs::write(
        s3.file(p, &format!("refs/events/r/again!/{writer}")),
        b"not an id\n",
    )
    .unwrap();
    let err = one_error(&run(&env, &s3, p, &["ref", "show", &lane], b""));
    assert!(
        err.contains(&format!("s3://{BUCKET}/{p}/refs/events/r/again!/{writer}"))
            && err.contains("corrupt"),
        "{err}"
    );
    let out = run(&env, &s3, p, &["fsck"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("ref {lane} is corrupt")),
        "{}",
        transcript(&out)
    );
    // `ref delete` without --old removes the broken key (by a conditional put on its
    // version), and its reflog says so.
    let out = run(&env, &s3, p, &["ref", "delete", &lane], b"");
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("deleted broken ref {lane}")),
        "{}",
        transcript(&out)
    );
    assert!(ok(&env, &s3, p, &["ref", "list", "events/r/again"], b"").is_empty());
    let log = ok(&env, &s3, p, &["ref", "log", &lane], b"");
    assert!(
        log.trim_end()
            .ends_with("ref delete (broken: expected 64 hex digits, found \"not an id\")"),
        "{log}"
    );
}

#[test]
fn push_and_pull_copy_a_job_idempotently_and_only_forward() {
    let s3 = S3::start();
    let p = "t7";
    let env = Env::new();
    // A job in the local home.
    env.ok(
        &["events", "append", "--repo", "r", "--job", "j"],
        events(30, "l").as_bytes(),
    );
    env.ok(
        &[
            "dlq", "add", "--repo", "r", "--job", "j", "--item", "bad", "--error", "x",
        ],
        b"",
    );
    let pushed = ok(
        &env,
        &s3,
        p,
        &["store", "push", "j", "--repo", "r", "--json"],
        b"",
    );
    let pushed: Value = serde_json::from_str(&pushed).unwrap();
    assert!(pushed["copied"].as_u64().unwrap() > 0, "{pushed}");
    assert_eq!(pushed["copied"], pushed["objects"], "{pushed}");
    // Again: nothing copied, refs up to date.
    let again: Value = json(
        &env,
        &s3,
        p,
        &["store", "push", "j", "--repo", "r", "--json"],
    );
    assert_eq!(again["copied"], 0, "{again}");
    assert!(all_refs(&again, "up_to_date"), "{again}");
    // The remote has the same refs as the local home.
    let local_refs = env.ok(&["ref", "list"], b"");
    assert_eq!(ok(&env, &s3, p, &["ref", "list"], b""), local_refs);
    // Another host appends remotely; a pull into a fresh home brings everything.
    let other = Env::new();
    append(&other, &s3, p, "j", events(5, "remote"));
    let pulled: Value = json(
        &other,
        &s3,
        p,
        &["store", "pull", "j", "--repo", "r", "--json"],
    );
    assert!(all_refs(&pulled, "created"), "{pulled}");
    let pulled_ids = other
        .ok(&["events", "show", "j", "--repo", "r", "--json"], b"")
        .lines()
        .count();
    assert_eq!(pulled_ids, 35);
    let fsck: Value = serde_json::from_str(&other.ok(&["fsck", "--json"], b"")).unwrap();
    assert_eq!(fsck["errors"], 0, "{fsck}");
    // The first home pulls the remote appends: the other writer's ref, new here.
    let pulled: Value = json(
        &env,
        &s3,
        p,
        &["store", "pull", "j", "--repo", "r", "--json"],
    );
    assert!(
        pulled["refs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r[2] == "created"),
        "{pulled}"
    );
    // Both sides append events: each writer has a ref of its own, so the logs join
    // without a conflict.
    env.ok(
        &["events", "append", "--repo", "r", "--job", "j"],
        events(1, "local2").as_bytes(),
    );
    append(&other, &s3, p, "j", events(1, "remote2"));
    ok(&env, &s3, p, &["store", "push", "j", "--repo", "r"], b"");
    assert_eq!(item_ids(&other, &s3, p, "j").len(), 37);
    // Both sides change the queue: the push is refused without --force, and changes
    // nothing.
    env.ok(
        &[
            "dlq", "add", "--repo", "r", "--job", "j", "--item", "local", "--error", "x",
        ],
        b"",
    );
    ok(
        &other,
        &s3,
        p,
        &[
            "dlq", "add", "--repo", "r", "--job", "j", "--item", "remote", "--error", "y",
        ],
        b"",
    );
    let remote_before = ok(&env, &s3, p, &["ref", "list"], b"");
    let out = run(&env, &s3, p, &["store", "push", "j", "--repo", "r"], b"");
    let err = one_error(&out);
    assert!(err.contains("differs") && err.contains("--force"), "{err}");
    assert_eq!(ok(&env, &s3, p, &["ref", "list"], b""), remote_before);
    ok(
        &env,
        &s3,
        p,
        &["store", "push", "j", "--repo", "r", "--force"],
        b"",
    );
    // Every local ref is on the remote now (which keeps the other writer's ref too).
    let remote = ok(&env, &s3, p, &["ref", "list"], b"");
    for line in env.ok(&["ref", "list"], b"").lines() {
        assert!(remote.contains(line), "{line} not in\n{remote}");
    }
    // Without a remote store, push is a usage error.
    let out = env.run(&["store", "push", "j", "--repo", "r"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    // With no payload kept from the walk (a job past PRODIGY_SYNC_KEEP_BYTES), every
    // object is read again when copied, and the copy is the same.
    let copy = |env: &Env, prefix: &str, verb: &str| -> Value {
        let mut c = cmd(
            env,
            &s3,
            prefix,
            &["store", verb, "j", "--repo", "r", "--json"],
        );
        c.env("PRODIGY_SYNC_KEEP_BYTES", "0")
            .stdin(std::process::Stdio::null());
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", transcript(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let pushed = copy(&env, "t7-again", "push");
    assert!(pushed["copied"].as_u64().unwrap() > 0, "{pushed}");
    assert_eq!(pushed["copied"], pushed["objects"], "{pushed}");
    let third = Env::new();
    let pulled = copy(&third, "t7-again", "pull");
    assert_eq!(pulled["copied"], pushed["objects"], "{pulled}");
    assert_eq!(
        third.ok(&["events", "show", "j", "--repo", "r", "--json"], b""),
        env.ok(&["events", "show", "j", "--repo", "r", "--json"], b"")
    );
    let fsck: Value = serde_json::from_str(&third.ok(&["fsck", "--json"], b"")).unwrap();
    assert_eq!(fsck["errors"], 0, "{fsck}");
}

/// A group of more objects than a remote group holds before uploading (64 MiB of frames)
/// uploads them ahead of its commit, and every one is there after it: a push of a job's
/// transcripts held them all, twice.
#[test]
fn a_group_past_the_upload_bound_stores_every_object() {
    let s3 = S3::start();
    let env = Env::new();
    let dir = env.scratch().join("big");
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = String::new();
    for n in 0..9 {
        let path = dir.join(format!("f{n}"));
        std::fs::write(&path, crate::common::noise(n, 8 << 20)).unwrap();
        paths.push_str(&format!("{}\n", path.display()));
    }
    let ids = ok(
        &env,
        &s3,
        "t-ahead",
        &["hash-object", "-w", "--stdin-paths"],
        paths.as_bytes(),
    );
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 9);
    // A fresh home reads each from the bucket, verified, byte for byte.
    let other = Env::new();
    for (n, id) in ids.iter().enumerate() {
        let out = run(&other, &s3, "t-ahead", &["cat-object", "-p", id], b"");
        assert!(out.status.success(), "{}", transcript(&out));
        assert!(
            out.stdout == crate::common::noise(n, 8 << 20),
            "object {n} differs"
        );
    }
}

#[test]
fn bad_stores_credentials_and_endpoints_are_one_clear_error() {
    let s3 = S3::start();
    let env = Env::new();
    // Wrong credentials.
    let mut c = cmd(&env, &s3, "t8", &["ref", "list"]);
    c.env("AWS_SECRET_ACCESS_KEY", "wrong");
    c.stdin(std::process::Stdio::null());
    let err = one_error(&c.output().unwrap());
    assert!(
        err.contains("SignatureDoesNotMatch") || err.contains("AccessDenied"),
        "{err}"
    );
    assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    // A bucket that does not exist.
    let out = run(
        &env,
        &s3,
        "t8",
        &["--store", "s3://no-such-bucket/x", "ref", "list"],
        b"",
    );
    let err = one_error(&out);
    assert!(
        err.contains("the bucket 'no-such-bucket' does not exist"),
        "{err}"
    );
    // An unreachable endpoint: bounded by the retry timeout.
    let mut c = env.std_cmd();
    s3.configure(&mut c, "http://127.0.0.1:1", "t8");
    c.env("PRODIGY_S3_RETRY_TIMEOUT", "1s");
    let start = Instant::now();
    let err = one_error(&c.args(["ref", "list"]).output().unwrap());
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(
        err.contains("cannot reach http://127.0.0.1:1 (connection refused)"),
        "{err}"
    );
    assert!(err.contains("hint: check AWS_ENDPOINT_URL"), "{err}");
    // A web server that is not S3 answers every request with a page: the error names the
    // status and the kind of reply, never the page.
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = web.local_addr().unwrap();
    std::thread::spawn(move || {
        let page = "<!DOCTYPE html><html><head><title>404 Not Found</title></head>\n<body><h1>Not Found</h1></body></html>\n";
        for stream in web.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let reply = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = std::io::Write::write_all(&mut stream, reply.as_bytes());
        }
    });
    let mut c = env.std_cmd();
    s3.configure(&mut c, &format!("http://{addr}"), "t8");
    c.env("PRODIGY_S3_RETRY_TIMEOUT", "1s");
    let err = one_error(&c.args(["ref", "list"]).output().unwrap());
    assert!(!err.contains('<'), "{err}");
    assert!(
        err.contains("404 Not Found, with an HTML page of") && err.contains("AWS_ENDPOINT_URL"),
        "{err}"
    );
    // Addresses that are not a store.
    for bad in [
        "s3://",
        "http://bucket/x",
        "s3://UPPER/x",
        "s3://ab",
        "s3://bucket/../x",
        "s3://bucket/a b",
    ] {
        let out = run(&env, &s3, "t8", &["--store", bad, "ref", "list"], b"");
        let err = one_error(&out);
        assert!(err.contains("cannot use the store"), "{bad}: {err}");
    }
    // Nothing was written anywhere.
    assert!(!env.home().join("events").exists());
}

#[test]
fn a_server_without_conditional_writes_is_refused_before_anything_is_written() {
    let s3 = S3::start_unsigned();
    s3.use_proxy();
    let env = Env::new();
    // The store works while the conditions reach the server…
    append(&env, &s3, "t9", "j", events(2, "a"));
    let before = ok(&env, &s3, "t9", &["ref", "list"], b"");
    // …and once they are dropped on the way, every write is refused.
    s3.proxy
        .faults
        .strip_conditions
        .store(true, Ordering::SeqCst);
    let out = run(
        &env,
        &s3,
        "t9",
        &["events", "append", "--repo", "r", "--job", "j"],
        events(2, "b").as_bytes(),
    );
    let err = one_error(&out);
    assert!(err.contains("does not honour conditional writes"), "{err}");
    assert!(
        err.contains("hint: use a server with conditional writes"),
        "{err}"
    );
    s3.proxy
        .faults
        .strip_conditions
        .store(false, Ordering::SeqCst);
    assert_eq!(ok(&env, &s3, "t9", &["ref", "list"], b""), before);
    assert_eq!(item_ids(&env, &s3, "t9", "j").len(), 2);
}

#[test]
fn throttling_is_retried_with_backoff_and_bounded() {
    let s3 = S3::start();
    s3.use_proxy();
    let env = Env::new();
    // A few 503 SlowDown answers: retried, and the append goes through.
    s3.proxy.faults.throttle.store(3, Ordering::SeqCst);
    append(&env, &s3, "t10", "j", events(4, "a"));
    assert_eq!(s3.proxy.faults.throttled.load(Ordering::SeqCst), 3);
    assert_eq!(item_ids(&env, &s3, "t10", "j").len(), 4);
    // Throttled without end: the retries stop at the bound, with a clear error.
    s3.proxy.faults.throttle.store(u32::MAX, Ordering::SeqCst);
    let start = Instant::now();
    let out = run(
        &env,
        &s3,
        "t10",
        &["events", "append", "--repo", "r", "--job", "j"],
        events(4, "b").as_bytes(),
    );
    let elapsed = start.elapsed();
    s3.proxy.faults.throttle.store(0, Ordering::SeqCst);
    let err = one_error(&out);
    assert!(err.contains("SlowDown"), "{err}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    assert_eq!(item_ids(&env, &s3, "t10", "j").len(), 4);
}

#[test]
fn a_timeout_mid_upload_acknowledges_nothing_and_leaves_the_ref() {
    let s3 = S3::start();
    s3.use_proxy();
    let env = Env::new();
    let p = "t11";
    append(&env, &s3, p, "j", events(3, "a"));
    let before = ok(&env, &s3, p, &["ref", "list"], b"");
    for stalled in ["/objects/", "/refs/"] {
        *s3.proxy.faults.stall.lock().unwrap() = Some(stalled.to_owned());
        let mut c = cmd(
            &env,
            &s3,
            p,
            &["events", "append", "--repo", "r", "--job", "j"],
        );
        c.env("PRODIGY_S3_TIMEOUT", "1s")
            .env("PRODIGY_S3_RETRY_TIMEOUT", "2s");
        let mut c = assert_cmd::Command::from_std(c);
        let out = c
            .write_stdin(events(3, "lost").into_bytes())
            .output()
            .unwrap();
        *s3.proxy.faults.stall.lock().unwrap() = None;
        let err = one_error(&out);
        assert!(
            err.contains("cannot write") || err.contains("timed out"),
            "{stalled}: {err}"
        );
        assert_eq!(ok(&env, &s3, p, &["ref", "list"], b""), before, "{stalled}");
        assert_eq!(item_ids(&env, &s3, p, "j").len(), 3, "{stalled}");
    }
}

#[test]
fn the_store_can_be_chosen_by_flag_variable_or_config() {
    let s3 = S3::start();
    let env = Env::new();
    append(&env, &s3, "t12", "viaenv", events(1, "a"));
    // config.json names the store when the variable is not set.
    std::fs::create_dir_all(env.home()).unwrap();
    std::fs::write(
        env.home().join("config.json"),
        format!("{{\"store\": \"s3://{BUCKET}/t12\"}}"),
    )
    .unwrap();
    let mut c = cmd(&env, &s3, "t12", &["ref", "list"]);
    c.env_remove("PRODIGY_STORE");
    let out = c.output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("events/r/viaenv"),
        "{}",
        transcript(&out)
    );
    // --store beats both.
    let other = ok(
        &env,
        &s3,
        "t12",
        &[
            "--store",
            &format!("s3://{BUCKET}/elsewhere"),
            "ref",
            "list",
        ],
        b"",
    );
    assert!(other.is_empty(), "{other}");
}

/// A Claude call's transcript is reached from the job's events: push and pull carry it,
/// and the pulled home reads it with `prodigy logs`.
#[test]
fn transcripts_travel_with_push_and_pull() {
    let s3 = S3::start();
    let p = "t21";
    let env = Env::new();
    let stream = "{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"fixed the docs\"}]}}\n\
                  {\"type\":\"result\",\"is_error\":false,\"result\":\"ok\",\"total_cost_usd\":0.25}\n";
    let id = env
        .ok(&["hash-object", "-w", "--stdin"], stream.as_bytes())
        .trim()
        .to_owned();
    let event = format!(
        "{{\"event_type\":\"claude_call_finished\",\"job_id\":\"j\",\"agent_id\":\"agent-0\",\"step\":\"map/1\",\"attempt\":1,\"exit_code\":0,\"duration_ms\":5,\"is_error\":false,\"usage\":{{\"input_tokens\":3,\"output_tokens\":4}},\"total_cost_usd\":0.25,\"transcript\":\"{id}\"}}\n"
    );
    env.ok(
        &["events", "append", "--repo", "r", "--job", "j"],
        event.as_bytes(),
    );
    ok(&env, &s3, p, &["store", "push", "j", "--repo", "r"], b"");
    let other = Env::new();
    ok(&other, &s3, p, &["store", "pull", "j", "--repo", "r"], b"");
    let logs = other.ok(&["logs", "j", "--repo", "r"], b"");
    assert!(logs.contains("fixed the docs"), "{logs}");
    assert_eq!(
        other.ok(&["logs", "j", "--repo", "r", "--json"], b""),
        stream
    );
    let fsck: Value = serde_json::from_str(&other.ok(&["fsck", "--json"], b"")).unwrap();
    assert_eq!(fsck["errors"], 0, "{fsck}");
}

/// Eight writers streaming records to one job straight at s3s-fs (no proxy ordering its
/// requests): every acknowledged record is there once, in order per writer, merged in one
/// order; each writer has its own ref.
#[test]
fn eight_writers_straight_at_the_server_lose_nothing() {
    use crate::events_concurrency::{check_merged, run_writers, writer_inputs};
    let s3 = S3::start();
    let p = "t13";
    let env = Env::new();
    let (writers, chunks, per) = (8, env_knob("PRODIGY_REMOTE_APPENDS", 6) as usize, 25);
    let inputs = env.dir.path().join("inputs");
    writer_inputs(&inputs, writers, chunks, per);
    run_writers(
        &cmd(&env, &s3, p, &[]),
        &inputs,
        (writers, chunks),
        "j",
        "r",
    );
    let shown = ok(
        &env,
        &s3,
        p,
        &["events", "show", "j", "--repo", "r", "--json"],
        b"",
    );
    let records: Vec<prodigy::events::EventRecord> = shown
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    check_merged(&records, writers, chunks * per);
    let refs = ok(&env, &s3, p, &["ref", "list", "events/r/j"], b"");
    assert_eq!(refs.lines().count(), writers, "{refs}");
    let fsck: Value = json(&env, &s3, p, &["fsck", "--json"]);
    assert_eq!(fsck["errors"], 0, "{fsck}");
}

/// Appends long enough that their batches let go of their lines (`--batch-size 1` and
/// `10`), on the remote store: a batch is then appended by its id, which the server must
/// hold (uploaded by this call, or by an earlier one), and a record repeated in the input
/// or overlapping stored records is read back (from the batch's frame, or its object).
#[test]
fn appends_whose_batches_let_go_of_their_lines_append_them_by_their_ids() {
    let s3 = S3::start();
    let p = "t14";
    let env = Env::new();
    let line = |seq: u64, n: u64| {
        format!(
            r#"{{"v":1,"id":"r{seq}","timestamp":"2026-01-01T00:00:00.000000Z","writer":"w","seq":{seq},"event":{{"event_type":"step","n":{n}}},"metadata":{{}}}}"#
        ) + "\n"
    };
    let append = |size: &str, seqs: &[u64], changed: Option<u64>| {
        let input: String = seqs
            .iter()
            .map(|&s| line(s, u64::from(Some(s) == changed)))
            .collect();
        let args = [
            "events",
            "append",
            "--repo",
            "r",
            "--job",
            "j",
            "--batch-size",
            size,
        ];
        run(&env, &s3, p, &args, input.as_bytes())
    };
    let appended = |size: &str, seqs: &[u64]| {
        let out = append(size, seqs, None);
        assert!(out.status.success(), "{}", transcript(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    // Twenty records, then records 0 and 1 again.
    let mut seqs: Vec<u64> = (0..20).collect();
    seqs.extend([0, 1]);
    let skipped = |n| format!("; skipped {n} records already there (same writer, seq and content)");
    assert_eq!(
        appended("1", &seqs),
        format!("appended 20 events to events/r/j{}", skipped(2))
    );
    // Again: every batch's object is already on the server.
    assert_eq!(
        appended("1", &seqs),
        format!("appended 0 events to events/r/j{}", skipped(22))
    );
    // A retry of 0..200 in batches of ten, record 12 changed: refused, nothing appended.
    let retry: Vec<u64> = (0..200).collect();
    let out = append("10", &retry, Some(12));
    let stderr = one_error(&out);
    assert!(
        stderr.contains("record r12 (writer w, seq 12) differs")
            && stderr.contains("nothing was appended"),
        "{stderr}"
    );
    assert_eq!(
        appended("10", &retry),
        format!("appended 180 events to events/r/j{}", skipped(20))
    );
    let shown = ok(
        &env,
        &s3,
        p,
        &["events", "show", "j", "--repo", "r", "--json"],
        b"",
    );
    let seqs: Vec<u64> = shown
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    let fsck: Value = json(&env, &s3, p, &["fsck", "--json"]);
    assert_eq!(fsck["errors"], 0, "{fsck}");
}
