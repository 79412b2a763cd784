//! `prodigy gc`: the grace period, `--prune now` beside running writers, and gc killed at
//! random moments.

use std::time::{Duration, Instant};

use crate::common::{Env, Rng, blob, env_knob, transcript};
use crate::events_concurrency::spawn_four_appenders;

fn gc_json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["gc", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&env.ok(&all, b"")).unwrap()
}

fn assert_fsck_clean(env: &Env) {
    let out = env.run(&["fsck"], b"");
    assert!(out.status.success(), "{}", transcript(&out));
}

#[test]
fn the_grace_period_keeps_young_garbage_and_prune_now_removes_it() {
    let env = Env::new();
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        br#"{"event_type":"job_started","job_id":"j","config":{},"total_items":1,"timestamp":"2026-01-01T00:00:00Z"}"#,
    );
    let garbage = blob(&env, "nobody names me");
    let exists = |id: &str| env.run(&["cat-object", "-e", id], b"").status.success();
    let report = gc_json(&env, &[]);
    assert_eq!(report["pruned"], 0, "{report}");
    assert_eq!(report["kept_young"], 1);
    assert!(exists(&garbage));
    // A dry run says it would go and keeps it.
    assert_eq!(gc_json(&env, &["--prune", "now", "--dry-run"])["pruned"], 1);
    assert!(exists(&garbage));
    let report = gc_json(&env, &["--prune", "now"]);
    assert_eq!(report["pruned"], 1, "{report}");
    assert!(!exists(&garbage));
    // What a ref reaches stays, and so does what a reflog still names.
    assert_eq!(
        env.ok(&["events", "show", "j", "--repo", "api", "--json"], b"")
            .lines()
            .count(),
        1
    );
    assert_fsck_clean(&env);
    let out = env.run(&["gc", "--prune", "soon"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
}

#[test]
fn appenders_lose_nothing_while_gc_prunes_now_in_a_loop() {
    let env = Env::new();
    let mut children = spawn_four_appenders(&env);
    let mut rounds = 0;
    let start = Instant::now();
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        let out = env.run(&["gc", "--prune", "now"], b"");
        assert!(out.status.success(), "{}", transcript(&out));
        rounds += 1;
        assert!(start.elapsed() < Duration::from_secs(120));
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert!(rounds >= 2, "gc ran {rounds} times beside the appenders");
    let out = env.run(&["gc", "--prune", "now"], b"");
    assert!(out.status.success());
    let lines = env.ok(
        &["events", "show", "shared-job", "--repo", "api", "--json"],
        b"",
    );
    assert_eq!(lines.lines().count(), 8000);
    assert_fsck_clean(&env);
}

/// gc killed with SIGKILL at random moments: the store always reads, and the next gc and
/// fsck are clean. `PRODIGY_GC_TRIALS=N` for more (100 in the suite).
#[test]
fn sigkill_of_gc_at_random_moments() {
    let trials = env_knob("PRODIGY_GC_TRIALS", 100);
    let mut rng = Rng(env_knob("PRODIGY_TORTURE_SEED", 0x5eed));
    let env = Env::new();
    for trial in 0..trials {
        // Fresh garbage and fresh history each time.
        let mut input = String::new();
        for i in 0..50 {
            input.push_str(&format!("garbage {trial} {i}\n"));
        }
        let dir = env.scratch().join(format!("g{trial}"));
        std::fs::create_dir_all(&dir).unwrap();
        let paths: Vec<String> = (0..20)
            .map(|i| {
                let p = dir.join(format!("{i}"));
                std::fs::write(&p, format!("garbage {trial} {i}")).unwrap();
                p.display().to_string()
            })
            .collect();
        env.ok(
            &["hash-object", "-w", "--stdin-paths"],
            paths.join("\n").as_bytes(),
        );
        env.ok(
            &[
                "events",
                "append",
                "--job",
                &format!("j{}", trial % 5),
                "--repo",
                "api",
            ],
            format!(r#"{{"event_type":"job_paused","job_id":"j","checkpoint_version":{trial}}}"#)
                .as_bytes(),
        );
        let mut child = env
            .std_cmd()
            .args(["gc", "--prune", "now"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        let _ = child.kill();
        let _ = child.wait();
        let out = env.run(&["events", "show", "j0", "--repo", "api", "--json"], b"");
        assert!(out.status.success(), "trial {trial}: {}", transcript(&out));
    }
    let out = env.run(&["gc", "--prune", "now"], b"");
    assert!(out.status.success(), "{}", transcript(&out));
    assert_fsck_clean(&env);
    let total: usize = (0..5)
        .map(|j| {
            env.ok(
                &[
                    "events",
                    "show",
                    &format!("j{j}"),
                    "--repo",
                    "api",
                    "--json",
                ],
                b"",
            )
            .lines()
            .count()
        })
        .sum();
    assert_eq!(total as u64, trials);
}

/// gc packs reachable loose objects; reads, prefixes and fsck see packed objects; packs
/// merge once they pile up; a damaged pack is named with the offset and never read as data.
#[test]
fn packs_are_read_transparently_merged_and_checked() {
    let env = Env::new();
    let append = |job: &str, n: u32| {
        env.ok(
            &["events", "append", "--job", job, "--repo", "api"],
            format!(r#"{{"event_type":"job_paused","job_id":"{job}","checkpoint_version":{n}}}"#)
                .as_bytes(),
        );
    };
    for round in 0..6u32 {
        append(&format!("j{round}"), round);
        let report = gc_json(&env, &[]);
        assert!(
            report["packs"].as_u64().unwrap() <= prodigy::gc::MAX_PACKS as u64,
            "{report}"
        );
    }
    let loose: Vec<_> = walkdir(&env.home().join("objects"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/pack/"))
        .collect();
    assert!(loose.is_empty(), "left loose: {loose:?}");
    for round in 0..6u32 {
        let out = env.ok(
            &[
                "events",
                "show",
                &format!("j{round}"),
                "--repo",
                "api",
                "--json",
            ],
            b"",
        );
        assert_eq!(out.lines().count(), 1);
    }
    let head = std::fs::read_to_string(env.home().join("events/api/j0/HEAD")).unwrap();
    let prefix = &head.trim()[..8];
    assert_eq!(env.ok(&["cat-object", "-t", prefix], b"").trim(), "log");
    assert_fsck_clean(&env);
    // A damaged loose copy of a packed object: reads get the packed one, fsck names the
    // loose file.
    let id = head.trim();
    let loose = env.home().join("objects").join(&id[..2]).join(&id[2..]);
    std::fs::create_dir_all(loose.parent().unwrap()).unwrap();
    std::fs::write(&loose, b"garbage").unwrap();
    assert_eq!(env.ok(&["cat-object", "-t", id], b"").trim(), "log");
    let out = env.run(&["fsck"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&id[2..]),
        "{}",
        transcript(&out)
    );
    std::fs::remove_file(&loose).unwrap();
    assert_fsck_clean(&env);
    // Flip a byte inside the one pack's objects.
    let pack = walkdir(&env.home().join("objects/pack"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let mut perms = std::fs::metadata(&pack).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&pack, perms).unwrap();
    std::fs::write(&pack, bytes).unwrap();
    let out = env.run(&["fsck"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("corrupt pack"), "{}", transcript(&out));
    assert!(text.contains("at offset"), "{}", transcript(&out));
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
