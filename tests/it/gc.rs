//! `prodigy gc`: the grace period, `--prune now` beside running writers, and gc killed at
//! random moments.

use std::time::{Duration, Instant};

use crate::common::{
    Env, Rng, append_in_batches_of, assert_all_read, assert_one_line_error, blob, copy_dir,
    env_knob, packs, small_objects, transcript,
};
use crate::events_concurrency::spawn_four_appenders;

fn gc_json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["gc", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&env.ok(&all, b"")).unwrap()
}

/// Appends one `job_paused` event to job `job` of repo `api`.
fn append_paused(env: &Env, job: &str, n: u32) {
    env.ok(
        &["events", "append", "--job", job, "--repo", "api"],
        format!(r#"{{"event_type":"job_paused","job_id":"{job}","checkpoint_version":{n}}}"#)
            .as_bytes(),
    );
}

/// Events of job `job` of repo `api`.
fn event_count(env: &Env, job: &str) -> usize {
    env.ok(&["events", "show", job, "--repo", "api", "--json"], b"")
        .lines()
        .count()
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
fn young_objects_of_packs_no_ref_names_survive_a_rewrite_of_every_pack() {
    // `hash-object -w` of many objects writes them as a pack that nothing names yet; the
    // grace period keeps them as it keeps young loose objects, even when gc merges the
    // packs (there are more than MAX_PACKS of them): such a pack waits, with its own age.
    use prodigy::store::object::PACK_MIN_OBJECTS;
    let env = Env::new();
    let dir = env.scratch();
    let mut ids = Vec::new();
    for round in 0..prodigy::gc::MAX_PACKS {
        let mut paths = String::new();
        for n in 0..PACK_MIN_OBJECTS {
            let p = dir.join(format!("r{round}-{n}"));
            std::fs::write(&p, format!("round {round} object {n}")).unwrap();
            paths.push_str(&format!("{}\n", p.display()));
        }
        let out = env.ok(&["hash-object", "-w", "--stdin-paths"], paths.as_bytes());
        ids.extend(out.lines().map(str::to_owned));
    }
    // And an append whose batches and nodes make two packs a ref reaches.
    let lines: String = (0..2 * (PACK_MIN_OBJECTS + 1))
        .map(|n| format!("{{\"event_type\":\"agent_started\",\"item_id\":\"i{n}\"}}\n"))
        .collect();
    env.ok(&append_in_batches_of("2"), lines.as_bytes());
    assert_eq!(packs(&env).len(), prodigy::gc::MAX_PACKS + 2);
    let exists = |id: &str| env.run(&["cat-object", "-e", id], b"").status.success();
    let report = gc_json(&env, &[]);
    assert_eq!(report["pruned"], 0, "{report}");
    assert_eq!(report["kept_young"], ids.len(), "{report}");
    // The reachable packs (and the loose batch) merged into one; the others wait.
    assert_eq!(packs(&env).len(), prodigy::gc::MAX_PACKS + 1);
    assert!(ids.iter().all(|id| exists(id)));
    assert_eq!(event_count(&env, "j"), 2 * (PACK_MIN_OBJECTS + 1));
    assert_fsck_clean(&env);
    // Past the grace period they go, and the log stays.
    let report = gc_json(&env, &["--prune", "now"]);
    assert_eq!(report["pruned"], ids.len(), "{report}");
    assert!(ids.iter().all(|id| !exists(id)));
    assert_eq!(packs(&env).len(), 1);
    assert_eq!(event_count(&env, "j"), 2 * (PACK_MIN_OBJECTS + 1));
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
    // Each round started while an appender was alive (a loaded machine may fit all their
    // work around one round, since they wait for it).
    assert!(rounds >= 1, "gc never ran beside the appenders");
    let out = env.run(&["gc", "--prune", "now"], b"");
    assert!(out.status.success());
    let lines = env.ok(
        &["events", "show", "shared-job", "--repo", "api", "--json"],
        b"",
    );
    assert_eq!(lines.lines().count(), 8000);
    assert_fsck_clean(&env);
}

/// fsck beside four appenders and a gc in a loop finds nothing wrong: it reads the refs
/// before the objects (so a ref a writer moves meanwhile never names an object it has not
/// listed) and holds the home's gc lock shared (so gc never packs or removes what it is
/// reading, and waits for it).
#[test]
fn fsck_beside_appenders_and_gc_finds_nothing_wrong() {
    let env = Env::new();
    let mut children = spawn_four_appenders(&env);
    let alive = std::sync::atomic::AtomicBool::new(true);
    let mut checks = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            while alive.load(std::sync::atomic::Ordering::Relaxed) {
                let out = env.run(&["gc", "--prune", "now"], b"");
                assert!(out.status.success(), "{}", transcript(&out));
            }
        });
        let start = Instant::now();
        while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
            let out = env.run(&["fsck"], b"");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stop = !out.status.success() || stdout.lines().any(|l| l.starts_with("error"));
            if stop || start.elapsed() > Duration::from_secs(120) {
                alive.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            assert!(!stop, "fsck {checks}: {}", transcript(&out));
            checks += 1;
        }
        alive.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert!(checks >= 1, "fsck never ran beside the appenders");
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
    let total: usize = (0..5).map(|j| event_count(&env, &format!("j{j}"))).sum();
    assert_eq!(total as u64, trials);
}

/// gc packs reachable loose objects; reads, prefixes and fsck see packed objects; packs
/// merge once they pile up; a damaged pack is named with the offset and never read as data.
#[test]
fn packs_are_read_transparently_merged_and_checked() {
    let env = Env::new();
    for round in 0..6u32 {
        append_paused(&env, &format!("j{round}"), round);
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
        assert_eq!(event_count(&env, &format!("j{round}")), 1);
    }
    let head = env.ok(&["ref", "list", "events/api/j0"], b"");
    let head = head.split_whitespace().next().unwrap().to_owned();
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

/// Reflog expiry (`--reflog-expire`, or `"gc": {"reflog_expire"}` in config.json): an
/// object that only old reflog entries name goes once they expire; by default (90 days)
/// and with `never` it stays.
#[test]
fn reflog_expiry_frees_what_only_history_names() {
    let env = Env::new();
    let first = blob(&env, "the ref's first value");
    let second = blob(&env, "the ref's second value");
    env.ok(&["ref", "update", "dlq/api/j", &first], b"");
    env.ok(&["ref", "update", "dlq/api/j", &second], b"");
    env.ok(&["ref", "update", "dlq/api/gone", &first], b"");
    env.ok(&["ref", "delete", "dlq/api/gone"], b"");
    let exists = |id: &str| env.run(&["cat-object", "-e", id], b"").status.success();
    let log_lines = |name: &str| env.ok(&["ref", "log", name], b"").lines().count();
    // The default keeps 90 days of history: the first value stays.
    let report = gc_json(&env, &["--prune", "now"]);
    assert_eq!(report["reflog_expired"], 0, "{report}");
    assert!(exists(&first));
    assert_eq!(
        gc_json(&env, &["--prune", "now", "--reflog-expire", "never"])["reflog_expired"],
        0
    );
    // A dry run counts and keeps.
    let report = gc_json(
        &env,
        &["--prune", "now", "--reflog-expire", "now", "--dry-run"],
    );
    assert_eq!(report["reflog_expired"], 4, "{report}");
    assert_eq!(report["pruned"], 1, "{report}");
    assert_eq!(log_lines("dlq/api/j"), 2);
    assert!(exists(&first));
    // From config.json.
    std::fs::write(
        env.home().join("config.json"),
        r#"{"gc": {"reflog_expire": "now"}}"#,
    )
    .unwrap();
    let report = gc_json(&env, &["--prune", "now"]);
    assert_eq!(report["reflog_expired"], 4, "{report}");
    assert!(!exists(&first), "{report}");
    assert!(exists(&second));
    assert_eq!(log_lines("dlq/api/j"), 0);
    assert_eq!(env.ok(&["ref", "show", "dlq/api/j"], b"").trim(), second);
    assert_fsck_clean(&env);
    // Entries written after the expiry stay.
    let third = blob(&env, "the ref's third value");
    env.ok(&["ref", "update", "dlq/api/j", &third], b"");
    let report = gc_json(&env, &["--prune", "now", "--reflog-expire", "1h"]);
    assert_eq!(report["reflog_expired"], 0, "{report}");
    assert!(
        exists(&second),
        "the new entry's old value is history within the hour"
    );
    // Bad settings are errors before anything happens.
    let out = env.run(&["gc", "--reflog-expire", "soon"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    std::fs::write(
        env.home().join("config.json"),
        r#"{"gc": {"reflog_expire": "soon"}}"#,
    )
    .unwrap();
    let text = crate::common::assert_one_line_error(&env.run(&["gc"], b""), 1);
    assert!(text.contains("config.json"), "{text}");
    assert!(exists(&second));
}

/// The library reports gc's progress phase by phase, each ending at its total (the
/// command draws it as a bar on a terminal).
#[test]
fn gc_reports_progress_for_every_phase() {
    use std::sync::{Arc, Mutex};
    let env = Env::new();
    for i in 0..30 {
        blob(&env, &format!("garbage {i}"));
    }
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        br#"{"event_type":"job_paused","job_id":"j","checkpoint_version":1}"#,
    );
    let seen: Arc<Mutex<Vec<prodigy::gc::GcProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let home = prodigy::home::Home::at(env.home()).unwrap();
    let report = prodigy::gc::gc(
        &home,
        &env.store(),
        &prodigy::lock::LockOptions::default(),
        prodigy::gc::GcOptions {
            prune: Duration::ZERO,
            progress: Some(Arc::new(move |p: &prodigy::gc::GcProgress| {
                sink.lock().unwrap().push(*p)
            })),
            ..prodigy::gc::GcOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report.pruned, 30);
    let seen = seen.lock().unwrap();
    use prodigy::gc::GcPhase::*;
    for phase in [Scan, Prune, Pack, Remove] {
        let last = seen.iter().rfind(|p| p.phase == phase);
        let last = last.unwrap_or_else(|| panic!("no {phase:?} in {seen:?}"));
        assert_eq!(last.done, last.total, "{seen:?}");
        assert!(last.total > 0, "{seen:?}");
    }
    assert_eq!(
        seen.iter().rfind(|p| p.phase == Scan).unwrap().total,
        report.objects_before
    );
}

/// A gc killed after writing a merged pack but before removing the packs it merged leaves
/// both; the next gc merges again into a pack of the same name, and must keep it.
#[test]
fn a_merge_that_rewrites_an_existing_pack_keeps_it() {
    let env = Env::new();
    let pack_files = || -> Vec<std::path::PathBuf> {
        let mut v = walkdir(&env.home().join("objects/pack"));
        v.sort();
        v
    };
    for round in 0..prodigy::gc::MAX_PACKS as u32 {
        append_paused(&env, &format!("j{round}"), round);
        gc_json(&env, &[]);
    }
    let before: Vec<(std::path::PathBuf, Vec<u8>)> = pack_files()
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    assert_eq!(before.len(), 2 * prodigy::gc::MAX_PACKS);
    let report = gc_json(&env, &[]);
    assert_eq!(report["packs"], 1, "{report}");
    // Put the merged packs back, as a gc killed before removing them leaves them.
    for (p, bytes) in &before {
        std::fs::write(p, bytes).unwrap();
    }
    let report = gc_json(&env, &[]);
    assert_eq!(report["packs"], 1, "{report}");
    for round in 0..prodigy::gc::MAX_PACKS {
        assert_eq!(event_count(&env, &format!("j{round}")), 1);
    }
    assert_fsck_clean(&env);
}

/// A home written before pack version 2 (`tests/fixtures/pack-v1`): its version 1 pack
/// reads and passes fsck, and the next gc rewrites it as version 2, every object intact.
#[test]
fn a_version_1_pack_reads_and_the_next_gc_rewrites_it() {
    let env = Env::new();
    copy_dir(
        std::path::Path::new("tests/fixtures/pack-v1/home"),
        &env.home(),
    );
    let old = packs(&env);
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].version(), 1);
    let home = prodigy::Home::at(env.home()).unwrap();
    let store = prodigy::ObjectStore::new(&home);
    let objects: Vec<(prodigy::ObjectId, Vec<u8>)> = old[0]
        .entries()
        .unwrap()
        .into_iter()
        .map(|(id, _, _)| (id, store.read(&id).unwrap().payload))
        .collect();
    assert_eq!(objects.len(), 12);
    for j in 0..3 {
        assert_eq!(event_count(&env, &format!("j{j}")), 2);
    }
    assert_fsck_clean(&env);
    let report = gc_json(&env, &[]);
    assert_eq!(report["packed"], 12, "{report}");
    let new = packs(&env);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].version(), 2);
    assert!(!old[0].pack_path().exists());
    assert_all_read(&env, &objects, "after gc");
    for j in 0..3 {
        assert_eq!(event_count(&env, &format!("j{j}")), 2);
    }
    assert_eq!(
        env.ok(&["dlq", "list", "j0", "--repo", "api", "--json"], b"")
            .matches("item-")
            .count(),
        2
    );
    assert_fsck_clean(&env);
}

/// Many small objects alike: gc packs them with a dictionary trained on them, each frame
/// much smaller than its loose file's; every object reads back, fsck checks them, and
/// merging packs trains a new dictionary over all of them.
#[test]
fn gc_packs_small_objects_with_a_dictionary() {
    let env = Env::new();
    let mut objects = small_objects(&env, "j0", 0, 3000);
    let loose_bytes: u64 = objects
        .iter()
        .take(3000)
        .map(|(id, _)| {
            let hex = id.to_string();
            let path = env.home().join("objects").join(&hex[..2]).join(&hex[2..]);
            std::fs::metadata(path).unwrap().len()
        })
        .sum();
    let report = gc_json(&env, &["--prune", "now"]);
    assert_eq!(report["packed"], objects.len(), "{report}");
    let pack = &packs(&env)[0];
    assert_eq!(pack.version(), 2);
    let dictionary = pack.dictionary().unwrap().expect("a dictionary");
    // The items' frames with the dictionary, against their loose files.
    let items: std::collections::HashSet<_> = objects.iter().take(3000).map(|o| o.0).collect();
    let packed_bytes: u64 = pack
        .entries()
        .unwrap()
        .iter()
        .filter(|e| items.contains(&e.0))
        .map(|e| e.2 as u64)
        .sum();
    assert!(
        packed_bytes * 2 < loose_bytes,
        "items: {packed_bytes} bytes packed, {loose_bytes} loose"
    );
    assert!(
        packed_bytes + (dictionary.bytes().len() as u64) < loose_bytes,
        "the dictionary ({} bytes) must pay for itself",
        dictionary.bytes().len()
    );
    assert_all_read(&env, &objects, "packed");
    assert_fsck_clean(&env);
    // More packs, until they are merged into one with a new dictionary.
    for round in 1..=prodigy::gc::MAX_PACKS as u64 {
        objects.extend(small_objects(
            &env,
            &format!("j{round}"),
            round * 1_000_000,
            500,
        ));
        let report = gc_json(&env, &[]);
        assert_eq!(report["reachable"], objects.len(), "{report}");
    }
    let merged = packs(&env);
    assert_eq!(merged.len(), 1, "the packs were not merged");
    let again = merged[0].dictionary().unwrap().expect("a dictionary");
    assert_ne!(again.bytes(), dictionary.bytes());
    assert_eq!(merged[0].len(), objects.len() as u64);
    assert_all_read(&env, &objects, "merged");
    assert_fsck_clean(&env);
}

/// A pack of a few objects gets no dictionary: it would be larger than what it saves.
#[test]
fn a_small_pack_has_no_dictionary() {
    let env = Env::new();
    let objects = small_objects(&env, "j", 0, 20);
    gc_json(&env, &[]);
    let pack = &packs(&env)[0];
    assert!(pack.dictionary().unwrap().is_none());
    assert_all_read(&env, &objects, "packed");
    assert_fsck_clean(&env);
}

/// gc killed at random moments while it packs with a dictionary (training, compressing,
/// writing, removing loose copies, merging): every object written reads back right after
/// every kill, and the next gc and fsck are clean. `PRODIGY_GC_TRIALS=N` for more.
#[test]
fn sigkill_of_gc_packing_with_a_dictionary() {
    let trials = env_knob("PRODIGY_GC_TRIALS", 100) / 4;
    let mut rng = Rng(env_knob("PRODIGY_TORTURE_SEED", 0xd1c7) | 1);
    let env = Env::new();
    let mut objects = small_objects(&env, "base", 0, 2000);
    // How long one gc takes here: kills fall anywhere inside it.
    let started = Instant::now();
    gc_json(&env, &["--prune", "now"]);
    let span = started.elapsed().as_micros() as u64 * 3 / 2;
    for trial in 0..trials {
        objects.extend(small_objects(
            &env,
            &format!("t{trial}"),
            (trial + 1) * 1_000_000,
            200,
        ));
        let mut child = env
            .std_cmd()
            .args(["gc", "--prune", "now"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(span)));
        let _ = child.kill();
        let _ = child.wait();
        assert_all_read(&env, &objects, &format!("trial {trial}"));
    }
    let out = env.run(&["gc", "--prune", "now"], b"");
    assert!(out.status.success(), "{}", transcript(&out));
    assert_fsck_clean(&env);
    assert_all_read(&env, &objects, "after the last gc");
}

/// gc removes the fan-out and temp directories it empties (an emptied directory keeps the
/// blocks its entries took: 110 bytes an object after packing 1,000,000 on ext4), keeps
/// those that still hold something, and a writer afterwards makes its directory again.
#[test]
fn gc_removes_the_directories_it_empties() {
    let env = Env::new();
    for n in 0..20 {
        append_paused(&env, "j", n);
    }
    let young = blob(&env, "young garbage stays loose");
    gc_json(&env, &[]);
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(env.home().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let mut want = vec!["pack".to_owned(), "tmp".to_owned(), young[..2].to_owned()];
    want.sort();
    assert_eq!(names("objects"), want);
    assert_eq!(names("objects/tmp"), ["pack"]);
    // Written after gc, into a fan-out directory gc removed: made again.
    let id = blob(&env, "written after gc");
    assert_ne!(id[..2], young[..2]);
    assert_eq!(env.ok(&["cat-object", "-p", &id], b""), "written after gc");
    assert_eq!(event_count(&env, "j"), 20);
    assert_fsck_clean(&env);
}

/// A pack whose index is gone, or whose index names an object wrongly (one flipped byte),
/// still holds the objects the refs name: gc refuses and removes nothing (it removed the
/// pack as left by an interrupted gc, or rewrote it without the object, and exited 0: a
/// fifth hostile sweep). With the index put back, every event reads.
#[test]
fn gc_refuses_while_a_reachable_object_is_missing_and_keeps_the_pack() {
    let env = Env::new();
    let events: String = (0..300)
        .map(|n| format!("{{\"event_type\":\"agent_progress\",\"n\":{n}}}\n"))
        .collect();
    env.ok(&append_in_batches_of("10"), events.as_bytes());
    gc_json(&env, &["--prune", "now"]);
    let pack_dir = env.home().join("objects/pack");
    let idx = std::fs::read_dir(&pack_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "idx"))
        .unwrap();
    let good = std::fs::read(&idx).unwrap();
    let files = || walkdir(&pack_dir);
    let before = files();
    // The index gone.
    std::fs::remove_file(&idx).unwrap();
    let out = env.run(&["gc", "--prune", "now"], b"");
    assert_one_line_error(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be read, so gc removed nothing"),
        "{}",
        transcript(&out)
    );
    std::fs::write(&idx, &good).unwrap();
    assert_eq!(files(), before);
    assert_eq!(event_count(&env, "j"), 300);
    // One byte of an id in the index flipped.
    let mut bad = good.clone();
    bad[24 + 1024 + 32 * 10 + 5] ^= 1;
    std::fs::set_permissions(&idx, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&idx, &bad).unwrap();
    let out = env.run(&["gc", "--prune", "now"], b"");
    assert_one_line_error(&out, 1);
    std::fs::write(&idx, &good).unwrap();
    assert_eq!(files(), before);
    assert_eq!(event_count(&env, "j"), 300);
    assert_fsck_clean(&env);
}
