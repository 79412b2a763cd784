//! Bad input: each gets a one-line error, a non-zero exit, and changes nothing.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::common::{Env, assert_one_line_error, blob, hex, noise, snapshot};

/// Every file under `dir`, with its content, for "nothing changed" checks.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p.clone());
            }
            let content = if meta.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.push((p.display().to_string(), content));
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_ref_names_are_refused_before_any_file_is_touched() {
    let env = Env::new();
    let id = blob(&env, "x");
    let before = tree(env.dir.path());
    let long = format!("events/api/{}", "j".repeat(200));
    for name in [
        "events/../x",
        "events/api/..",
        "events/a/b/c/d",
        "dlq/a/b/c",
        "events//x",
        "/etc/passwd",
        "events/api/x.lock",
        "events/api/x.tmp",
        "events/api/-x",
        "objects/api/x",
        "",
        long.as_str(),
    ] {
        for args in [
            vec!["ref", "update", name, id.as_str()],
            vec!["ref", "show", name],
            vec!["ref", "log", name],
            vec!["ref", "delete", name],
        ] {
            let out = env.run(&args, b"");
            let stderr = assert_one_line_error(&out, 1);
            assert!(stderr.contains("invalid"), "{args:?}: {stderr}");
        }
    }
    assert_eq!(tree(env.dir.path()), before);
    let out = env.run(&["ref", "update", &long, &id], b"");
    snapshot("hostile_long_name", &out, &env.home());
    let out = env.run(&["ref", "update", "events/../x", &id], b"");
    snapshot("hostile_dotdot", &out, &env.home());
}

#[test]
fn flipped_and_truncated_objects_are_refused() {
    let env = Env::new();
    let id = blob(&env, &"some payload ".repeat(20));
    let path = env.home().join("objects").join(&id[..2]).join(&id[2..]);
    let good = fs::read(&path).unwrap();
    for (what, bytes) in [
        ("flipped", {
            let mut b = good.clone();
            b[good.len() / 2] ^= 1;
            b
        }),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("empty", Vec::new()),
        ("not zstd", b"blob 3\0abc".to_vec()),
    ] {
        fs::write(&path, &bytes).unwrap();
        for mode in ["-p", "-s", "-t", "-e"] {
            let out = env.run(&["cat-object", mode, &id], b"");
            let stderr = assert_one_line_error(&out, 1);
            assert!(stderr.contains("is corrupt"), "{what} {mode}: {stderr}");
            assert!(out.stdout.is_empty(), "{what}");
        }
        let out = env.run(&["cat-object", "--batch"], format!("{id}\n").as_bytes());
        assert_eq!(out.status.code(), Some(1), "{what}");
        assert!(out.stdout.is_empty(), "{what}");
        let out = env.run(&["fsck"], b"");
        assert_eq!(out.status.code(), Some(1), "{what}");
        // A ref can not be pointed at it either.
        let out = env.run(&["ref", "update", "events/api/j", &id], b"");
        assert_one_line_error(&out, 1);
        assert!(!env.home().join("events/api/j/HEAD").exists());
    }
    fs::write(&path, &good).unwrap();
    assert_eq!(env.run(&["fsck"], b"").status.code(), Some(0));
}

/// A 1 KiB zstd frame whose header declares 10 GiB of content (250 RLE blocks follow).
fn bomb() -> Vec<u8> {
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
    frame.extend_from_slice(&(10u64 << 30).to_le_bytes());
    for n in 0..250 {
        let last = u32::from(n == 249);
        let header = last | (1 << 1) | (131_072 << 3);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(b'A');
    }
    frame
}

#[test]
fn decompression_bombs_are_refused_without_inflating() {
    let env = Env::new();
    let id = blob(&env, "victim");
    let path = env.home().join("objects").join(&id[..2]).join(&id[2..]);
    let frame = bomb();
    assert!(frame.len() <= 1100);
    fs::write(&path, &frame).unwrap();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kb=%M"])
        .arg(assert_cmd::cargo::cargo_bin("prodigy"))
        .args(["cat-object", "-p", &id])
        .env("PRODIGY_HOME", env.home())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(_) => env.run(&["cat-object", "-p", &id], b""),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("declares 10737418240 bytes, above the limit"),
        "{stderr}"
    );
    if let Some(kb) = stderr.lines().find_map(|l| l.strip_prefix("maxrss_kb=")) {
        let kb: u64 = kb.trim().parse().unwrap();
        assert!(kb < 64 * 1024, "peak memory {kb} KiB");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn planted_symlinks_are_never_followed() {
    let env = Env::new();
    let id = blob(&env, "inside");
    let outside = env.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    // An object file replaced by a symlink to a copy outside the home.
    let path = env.home().join("objects").join(&id[..2]).join(&id[2..]);
    fs::copy(&path, outside.join("copy")).unwrap();
    fs::remove_file(&path).unwrap();
    symlink(outside.join("copy"), &path).unwrap();
    let out = env.run(&["cat-object", "-p", &id], b"");
    let stderr = assert_one_line_error(&out, 1);
    assert!(stderr.contains("symlink"), "{stderr}");
    assert_eq!(env.run(&["fsck"], b"").status.code(), Some(1));
    // Writing the object again replaces the link with a real file.
    blob(&env, "inside");
    assert!(fs::symlink_metadata(&path).unwrap().is_file());
    // A ref directory that is a symlink out of the home.
    symlink(&outside, env.home().join("events")).unwrap();
    let out = env.run(&["ref", "update", "events/api/j", &id], b"");
    let stderr = assert_one_line_error(&out, 1);
    assert!(stderr.contains("symlink"), "{stderr}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        1,
        "wrote outside the home"
    );
    fs::remove_file(env.home().join("events")).unwrap();
    // A HEAD that is a symlink.
    env.ok(&["ref", "update", "state/api/j", &id], b"");
    let head = env.home().join("state/api/j/HEAD");
    fs::remove_file(&head).unwrap();
    fs::write(outside.join("HEAD"), format!("{id}\n")).unwrap();
    symlink(outside.join("HEAD"), &head).unwrap();
    for args in [
        vec!["ref", "show", "state/api/j"],
        vec!["ref", "update", "state/api/j", &id],
    ] {
        let out = env.run(&args, b"");
        let stderr = assert_one_line_error(&out, 1);
        assert!(stderr.contains("symlink"), "{stderr}");
    }
    assert_eq!(
        fs::read_to_string(outside.join("HEAD")).unwrap(),
        format!("{id}\n")
    );
}

#[test]
fn garbage_in_a_ref_is_an_error() {
    let env = Env::new();
    let id = blob(&env, "x");
    env.ok(&["ref", "update", "dlq/api/j", &id], b"");
    let head = env.home().join("dlq/api/j/HEAD");
    for garbage in [
        &b"garbage\n"[..],
        b"",
        &id.as_bytes()[..63],
        id.to_uppercase().as_bytes(),
    ] {
        fs::write(&head, garbage).unwrap();
        let out = env.run(&["ref", "show", "dlq/api/j"], b"");
        let stderr = assert_one_line_error(&out, 1);
        assert!(stderr.contains("is corrupt"), "{stderr}");
        let out = env.run(&["ref", "update", "dlq/api/j", &id], b"");
        assert_one_line_error(&out, 1);
        assert_eq!(fs::read(&head).unwrap(), garbage);
    }
    fs::write(&head, b"garbage\n").unwrap();
    let out = env.run(&["ref", "show", "dlq/api/j"], b"");
    snapshot("garbage_ref", &out, &env.home());
}

#[test]
fn a_held_lock_is_waited_for_then_times_out() {
    let env = Env::new();
    let a = blob(&env, "a");
    let b = blob(&env, "b");
    env.ok(&["ref", "update", "events/api/j", &a], b"");
    let lock = fs::File::options()
        .write(true)
        .open(env.home().join("events/api/j/lock"))
        .unwrap();
    lock.lock().unwrap();
    let out = env
        .cmd()
        .env("PRODIGY_LOCK_TIMEOUT", "300ms")
        .args(["ref", "update", "events/api/j", &b])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("waiting for lock on '"), "{stderr}");
    assert!(stderr.contains("error: timed out after"), "{stderr}");
    assert_eq!(env.ok(&["ref", "show", "events/api/j"], b"").trim(), a);
    // Released while a writer waits: the writer goes ahead. The lock is released only
    // once the writer has said it is waiting, whatever the machine's load.
    let mut child = env
        .std_cmd()
        .args(["ref", "update", "events/api/j", &b])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    assert!(first.starts_with("waiting for lock on '"), "{first}");
    drop(lock);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{first}{rest}");
    assert_eq!(env.ok(&["ref", "show", "events/api/j"], b"").trim(), b);
}

#[test]
fn malformed_object_names_are_refused() {
    let env = Env::new();
    for bad in [
        "xyz",
        "abc",
        "g".repeat(64).as_str(),
        "a".repeat(65).as_str(),
        "",
    ] {
        // A usage error, as every bad argument.
        let out = env.run(&["cat-object", "-p", bad], b"");
        assert_one_line_error(&out, 2);
    }
    let out = env.run(&["hash-object", "-t", "tree", "--stdin"], b"");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_full_disk_fails_cleanly_and_loses_nothing() {
    let env = Env::new();
    crate::common::on_tmpfs(&env.home(), "size=1m,nr_inodes=4096", || {
        let kept = blob(&env, "kept");
        env.ok(&["ref", "update", "events/api/j", &kept], b"");
        env.ok(
            &["events", "append", "--job", "e", "--repo", "api"],
            b"{\"event_type\":\"first\"}\n",
        );
        let out = env.run(&["hash-object", "-w", "--stdin"], &noise(0, 2 << 20));
        let stderr = assert_one_line_error(&out, 1);
        assert!(stderr.contains("No space left on device"), "{stderr}");
        assert!(stderr.contains("hint: free some space"), "{stderr}");
        // The path is named once (tempfile's own "at path …" is taken off).
        assert_eq!(stderr.matches("/objects/tmp/").count(), 1, "{stderr}");
        // An events append that does not fit appends nothing.
        let huge: String = (0..400)
            .map(|n| {
                format!(
                    "{{\"event_type\":\"x\",\"blob\":\"{}\"}}\n",
                    hex(&noise(n, 4096))
                )
            })
            .collect();
        let out = env.run(
            &["events", "append", "--job", "e", "--repo", "api"],
            huge.as_bytes(),
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The store still reads, refs are unchanged, no temp file is left.
        assert_eq!(env.ok(&["cat-object", "-p", &kept], b""), "kept");
        assert_eq!(env.ok(&["ref", "show", "events/api/j"], b"").trim(), kept);
        assert_eq!(
            env.ok(&["events", "show", "e", "--repo", "api", "--json"], b"")
                .lines()
                .count(),
            1
        );
        let fsck = env.run(&["fsck"], b"");
        assert_eq!(
            fsck.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        assert!(
            !String::from_utf8_lossy(&fsck.stdout).contains("temp "),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        // Once space is free again, appends work.
        env.ok(
            &["events", "append", "--job", "e", "--repo", "api"],
            b"{\"event_type\":\"after\"}\n",
        );
        assert_eq!(
            env.ok(&["events", "show", "e", "--repo", "api", "--json"], b"")
                .lines()
                .count(),
            2
        );
    });
}

/// Symlinks planted at a lock file, a job directory, a repo directory, a reflog, the temp
/// directory and the gc lock: every command refuses, and the victim outside the home stays
/// as it was, in every shape.
#[test]
fn symlinks_planted_anywhere_in_the_home_never_reach_outside() {
    let env = Env::new();
    let id = blob(&env, "inside");
    let outside = env.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let before = tree(&outside);
    let home = env.home();
    let plant = |link: &Path, target: &Path| {
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        match fs::symlink_metadata(link) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(link).unwrap(),
            Ok(_) => fs::remove_file(link).unwrap(),
            Err(_) => {}
        }
        symlink(target, link).unwrap();
    };
    let shapes: Vec<(&str, PathBuf, PathBuf, Vec<&str>)> = vec![
        (
            "lock file",
            home.join("events/api/a/lock"),
            victim.clone(),
            vec!["ref", "update", "events/api/a", &id],
        ),
        (
            "job directory",
            home.join("events/api/b"),
            outside.clone(),
            vec!["ref", "update", "events/api/b", &id],
        ),
        (
            "repo directory",
            home.join("dlq/api"),
            outside.clone(),
            vec![
                "dlq", "add", "--repo", "api", "--job", "j", "--item", "i", "--error", "boom",
            ],
        ),
        (
            "reflog",
            home.join("state/api/c/reflog"),
            victim.clone(),
            vec!["ref", "update", "state/api/c", &id],
        ),
        (
            "temp directory",
            home.join("objects/tmp"),
            outside.clone(),
            vec!["hash-object", "-w", "--stdin"],
        ),
        (
            "gc lock",
            home.join("gc.lock"),
            victim.clone(),
            vec!["events", "append", "--repo", "api", "--job", "e"],
        ),
    ];
    for (what, link, target, args) in shapes {
        plant(&link, &target);
        let out = env.run(&args, b"{\"event_type\":\"x\"}\n");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: {}",
            crate::common::transcript(&out)
        );
        assert_eq!(tree(&outside), before, "{what}: the victim outside changed");
        fs::remove_file(&link).unwrap();
    }
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
}

/// A home owned by someone else is refused before anything is read or written.
#[test]
fn a_store_owned_by_another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        return; // only root can give a directory away
    }
    let env = Env::new();
    let id = blob(&env, "mine");
    let home = env.home();
    std::os::unix::fs::chown(&home, Some(4242), Some(4242)).unwrap();
    for args in [
        vec!["ref", "list"],
        vec!["cat-object", "-p", &id],
        vec!["gc"],
    ] {
        let out = env.run(&args, b"");
        let stderr = assert_one_line_error(&out, 1);
        assert!(stderr.contains("belongs to user 4242"), "{stderr}");
    }
    std::os::unix::fs::chown(&home, Some(0), Some(0)).unwrap();
    assert_eq!(env.ok(&["cat-object", "-p", &id], b""), "mine");
}

/// A bad `PRODIGY_LOCK_TIMEOUT` is refused by name before anything runs (it was silently
/// replaced by the default), and `cat-object --batch` refuses a line over 16 MiB as
/// `events append` does, after reading no more of it.
#[test]
fn a_bad_lock_timeout_and_an_endless_batch_line_are_clear_errors() {
    let env = Env::new();
    for bad in ["abc", "10", "-1s", ""] {
        let out = env
            .cmd()
            .env("PRODIGY_LOCK_TIMEOUT", bad)
            .args(["jobs"])
            .output()
            .unwrap();
        let stderr = assert_one_line_error(&out, 2);
        assert!(stderr.contains("PRODIGY_LOCK_TIMEOUT"), "{bad}: {stderr}");
    }
    let out = env
        .cmd()
        .env("PRODIGY_LOCK_TIMEOUT", "2s")
        .args(["jobs"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::transcript(&out));
    let out = env.run(&["cat-object", "--batch"], &vec![b'a'; 20 << 20]);
    let stderr = assert_one_line_error(&out, 1);
    assert!(stderr.contains("longer than 16 MiB"), "{stderr}");
}

/// Inputs that never end, or are past what the store or a reader keeps, are refused after
/// reading at most their limit (they filled memory: `run --dry-run /dev/zero` took 9 GB in
/// 8 s): a workflow, a `--param-file` and an env file past 64 MiB, an object past 1 GiB
/// (a sparse file: refused before reading).
#[test]
fn endless_and_oversized_inputs_stop_at_their_limit() {
    let env = Env::new();
    for args in [
        vec!["run", "--dry-run", "/dev/zero"],
        vec!["run", "--dry-run", "w.yml", "--param-file", "/dev/zero"],
    ] {
        let out = env
            .cmd()
            .current_dir(env.dir.path())
            .args(&args)
            .output()
            .unwrap();
        let stderr = assert_one_line_error(&out, 1);
        assert!(
            stderr.contains("'/dev/zero': larger than 67108864 bytes"),
            "{args:?}: {stderr}"
        );
    }
    let big = env.dir.path().join("big");
    fs::File::create(&big)
        .unwrap()
        .set_len((1 << 30) + 1)
        .unwrap();
    let out = env.run(&["hash-object", "-w", big.to_str().unwrap()], b"");
    let stderr = assert_one_line_error(&out, 1);
    assert!(stderr.contains("larger than 1073741824 bytes"), "{stderr}");
    assert!(!env.home().join("objects").exists());
}

/// fsck goes on past what it cannot list or read, each one a finding (it stopped at the
/// first: `objects/tmp` made a file, a ref's `HEAD` made a directory), and warns of a ref
/// naming an object of another type than its kind's, which `ref update` (plumbing) may
/// set and every reader of that ref refuses (fsck called such a store clean).
#[test]
fn fsck_reports_odd_files_and_goes_on() {
    let env = Env::new();
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        b"{\"event_type\":\"a\"}\n",
    );
    let id = blob(&env, "x");
    env.ok(&["ref", "update", "state/api/b", &id], b"");
    let home = env.home();
    let _ = fs::remove_dir_all(home.join("objects/tmp"));
    fs::write(home.join("objects/tmp"), b"x").unwrap();
    fs::create_dir_all(home.join("dlq/api/d/HEAD")).unwrap();
    // A kind's directory made a file.
    fs::write(home.join("archive"), b"x").unwrap();
    let out = env.run(&["fsck", "--json"], b"");
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<(&str, &str, &str)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap(),
                f["severity"].as_str().unwrap(),
                f["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(found.len(), 4, "{report}");
    let archive = found.remove(0);
    assert!(
        archive.0 == "archive" && archive.1 == "error" && archive.2.contains("Not a directory"),
        "{report}"
    );
    assert!(
        found[0].0 == "dlq/api/d/HEAD"
            && found[0].1 == "error"
            && found[0].2.contains("Is a directory")
    );
    assert!(
        found[1].0 == "objects/tmp"
            && found[1].1 == "error"
            && found[1].2.contains("Not a directory")
    );
    assert_eq!(found[2].0, "state/api/b/HEAD");
    assert_eq!(found[2].1, "warning");
    assert!(
        found[2].2.contains(&format!(
            "names {id}, a blob object: its readers expect a checkpoint"
        )),
        "{report}"
    );
    // The events were checked all the same.
    assert_eq!(report["refs"], 2);
}

/// A bad value holding a line break is one whole `error:` line, the value escaped (it
/// ended at the break: `error: invalid value 'a`); an error quoting a huge input keeps its
/// start and end and says how much it left out (a 100 KB pattern was printed whole).
#[test]
fn bad_values_with_line_breaks_and_huge_inputs_are_one_short_line() {
    let env = Env::new();
    for (id, shown) in [("a\nb", "a\\nb"), ("a\u{1}b", "a\\u{1}b")] {
        let stderr = assert_one_line_error(&env.run(&["events", "show", id], b""), 2);
        assert!(
            stderr.contains(&format!(
                "invalid value '{shown}' for '<JOB>': invalid job id"
            )) && stderr.contains("only letters, digits"),
            "{stderr}"
        );
    }
    // A bad repo name and a malformed object id are usage errors, as a bad job id is; an
    // id that is well formed but names nothing is not.
    for (args, code) in [
        (vec!["jobs", "--repo", "../x"], 2),
        (vec!["events", "ls", "--repo", ""], 2),
        (vec!["dlq", "list", "--repo", "a/b"], 2),
        (vec!["cat-object", "-t", "zzzz"], 2),
        (vec!["cat-object", "-t", "abcd"], 1),
        (vec!["cat-object", "-e", "zzzz"], 2),
    ] {
        assert_one_line_error(&env.run(&args, b""), code);
    }
    // clap's own errors are cut to a line as well.
    let huge = "a".repeat(100_000);
    let stderr = assert_one_line_error(&env.run(&["jobs", "--repo", &huge], b""), 2);
    assert!(stderr.chars().count() < 2100, "{} characters", stderr.len());
    let pattern = "(".repeat(100_000);
    let stderr = assert_one_line_error(&env.run(&["events", "search", &pattern, "j"], b""), 2);
    let line = stderr.lines().next().unwrap();
    assert!(line.chars().count() < 2100, "{} characters", line.len());
    assert!(line.contains("characters left out"), "{line}");
}

/// A FIFO where the store keeps a file (a ref's `HEAD`, a loose object) is refused at
/// once: reading it blocked every reader until something wrote to it.
#[test]
fn a_fifo_in_the_home_is_refused_not_waited_on() {
    let env = Env::new();
    let id = blob(&env, "x");
    env.ok(&["ref", "update", "events/api/j", &id], b"");
    let head = env.home().join("events/api/j/HEAD");
    fs::remove_file(&head).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&head)
        .status()
        .unwrap();
    assert!(made.success());
    let object = env
        .home()
        .join(format!("objects/{}/{}", &id[..2], &id[2..]));
    fs::remove_file(&object).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&object)
        .status()
        .unwrap();
    assert!(made.success());
    for (args, says) in [
        (vec!["ref", "show", "events/api/j"], "not a regular file"),
        (vec!["cat-object", "-p", id.as_str()], "not a regular file"),
    ] {
        let mut child = env
            .std_cmd()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(30) {
                child.kill().unwrap();
                panic!("{args:?} blocked on the FIFO");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = assert_one_line_error(&out, 1);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// An agent's stderr full of terminal controls (set the title, clear the screen) and a
/// workflow `name:` with them reach the terminal as escapes: `dlq list` on a terminal (a
/// pty from `script`), and `run`'s diagnostics always; `--json` keeps them as JSON escapes.
#[test]
fn control_characters_never_reach_the_terminal() {
    crate::common::need_tool("script", "util-linux");
    let env = Env::new();
    let repo = crate::common::init_repo(env.scratch().join("ctl"));
    fs::write(
        repo.join("w.yml"),
        "name: \"ctl\\e]0;NAME\\a\"\nmap:\n  input: seq 1 1\n  agent_template:\n    - shell: printf '\\033]0;TITLE\\007\\033[2J' >&2; exit 1\nerror_policy:\n  on_item_failure: dlq\n",
    )
    .unwrap();
    let out = env
        .cmd()
        .current_dir(&repo)
        .args(["run", "w.yml", "--job-id", "c"])
        .output()
        .unwrap();
    // The workflow's name is printed by `run`: escaped, even off a terminal.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("workflow ctl\\x1b]0;NAME\\x07,"),
        "{stderr}"
    );
    assert!(!out.stderr.contains(&0x1b), "{stderr}");
    let json = env.ok(&["dlq", "list", "c", "--repo", "ctl", "--json"], b"");
    assert!(json.contains("\\u001b]<n>;TITLE\\u0007"), "{json}");
    let bin = assert_cmd::cargo::cargo_bin("prodigy");
    let mut cmd = std::process::Command::new("script");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PRODIGY_HOME", env.home())
        .env("HOME", env.dir.path())
        .args([
            "-qec",
            &format!("{} dlq list c --repo ctl", bin.display()),
            "/dev/null",
        ]);
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\\x1b]<n>;TITLE\\x07\\x1b[<n>J"), "{text}");
    assert!(!out.stdout.contains(&0x1b), "{text}");
}

/// A relative `PRODIGY_HOME` would put a store in whatever directory a command runs in (one
/// per worktree): it is refused by name, and nothing is created there.
#[test]
fn a_relative_prodigy_home_is_refused() {
    let env = Env::new();
    let out = env
        .cmd()
        .env("PRODIGY_HOME", "rel-home")
        .args(["events", "append", "--job", "j", "--repo", "r"])
        .write_stdin(b"{\"event_type\":\"x\"}\n".to_vec())
        .output()
        .unwrap();
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("PRODIGY_HOME 'rel-home' is a relative path"),
        "{stderr}"
    );
    assert!(!env.scratch().join("rel-home").exists());
}

/// `--since` further back than time goes means every event (as `events clean
/// --older-than` takes any age), not a library's range error.
#[test]
fn a_since_before_time_began_shows_everything() {
    let env = Env::new();
    env.ok(
        &["events", "append", "--job", "j", "--repo", "r"],
        b"{\"event_type\":\"x\"}\n",
    );
    let out = env.ok(
        &[
            "events",
            "show",
            "j",
            "--repo",
            "r",
            "--since",
            "9999999999y",
            "--json",
        ],
        b"",
    );
    assert_eq!(out.lines().count(), 1, "{out}");
}

/// A home on a read-only mount serves every command that only reads — `gc --dry-run`
/// included — and a command that writes fails with one line.
#[test]
fn a_read_only_home_serves_the_commands_that_only_read() {
    let env = Env::new();
    crate::common::on_tmpfs(&env.home(), "size=8m", || {
        env.ok(
            &["events", "append", "--job", "j", "--repo", "api"],
            b"{\"event_type\":\"agent_started\",\"agent_id\":\"a\"}\n",
        );
        let remount = |mode: &str| {
            let ok = std::process::Command::new("mount")
                .args(["-o", &format!("remount,{mode}")])
                .arg(env.home())
                .status()
                .unwrap()
                .success();
            assert!(ok, "remount {mode}");
        };
        remount("ro");
        let dry = env.ok(&["gc", "--dry-run"], b"");
        assert!(dry.contains("would remove 0 unreachable"), "{dry}");
        // From a directory this home has never named: the name it would get, unrecorded.
        assert!(
            env.ok(&["events", "show", "j", "--repo", "api"], b"")
                .contains("agent_started")
        );
        env.ok(&["jobs"], b"");
        env.ok(&["fsck"], b"");
        let out = env.run(&["gc"], b"");
        let stderr = assert_one_line_error(&out, 1);
        assert!(stderr.contains("Read-only file system"), "{stderr}");
        remount("rw");
    });
}

/// `PRODIGY_LOG` turns on diagnostic logging on stderr (a lock wait shows); off, nothing is
/// logged; a filter that does not parse is a usage error.
#[test]
fn prodigy_log_shows_lock_waits_and_a_bad_filter_is_refused() {
    let env = Env::new();
    // Records of writer w1, whose chain's lock is then held.
    let record = |seq: u32| {
        format!(
            "{{\"v\":1,\"id\":\"e{seq}\",\"timestamp\":\"2026-01-01T00:00:0{seq}.000000Z\",\"writer\":\"w1\",\"seq\":{seq},\"event\":{{\"event_type\":\"x\"}},\"metadata\":{{}}}}\n"
        )
    };
    env.ok(
        &["events", "append", "--job", "j", "--repo", "api"],
        record(0).as_bytes(),
    );
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .open(env.home().join("events/api/j/writers/w1/lock"))
        .unwrap();
    lock.lock().unwrap();
    let run = |log: Option<&str>| {
        let mut cmd = env.cmd();
        cmd.env("PRODIGY_LOCK_TIMEOUT", "200ms");
        if let Some(log) = log {
            cmd.env("PRODIGY_LOG", log);
        }
        cmd.args(["events", "append", "--job", "j", "--repo", "api"])
            .write_stdin(record(1))
            .output()
            .unwrap()
    };
    let out = run(Some("prodigy=debug"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lock busy, waiting"), "{stderr}");
    let out = run(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("DEBUG"), "{stderr}");
    drop(lock);
    let out = run(Some("[[["));
    let stderr = assert_one_line_error(&out, 2);
    assert!(stderr.contains("PRODIGY_LOG"), "{stderr}");
}

/// Exports show an item's text and never make it a formula or markup: a CSV cell that a
/// spreadsheet would run starts with `'`, a Markdown cell escapes what would be HTML or a
/// link.
#[test]
fn exports_keep_item_text_as_text() {
    let env = Env::new();
    let formula = "=HYPERLINK(\"http://evil\",\"x\")";
    let html = "<img src=x onerror=alert(1)>[a](javascript:x)";
    let event = serde_json::json!({
        "event_type": "agent_completed",
        "job_id": "j",
        "agent_id": formula,
        "item_id": html,
    });
    env.ok(
        &["events", "append", "--repo", "r", "--job", "j"],
        format!("{event}\n").as_bytes(),
    );
    let csv = env.ok(
        &["events", "export", "j", "--repo", "r", "--format", "csv"],
        b"",
    );
    let row = csv.lines().nth(1).unwrap();
    assert!(
        row.contains(r#","'=HYPERLINK(""http://evil"",""x"")","#),
        "{row}"
    );
    let md = env.ok(
        &[
            "events", "export", "j", "--repo", "r", "--format", "markdown",
        ],
        b"",
    );
    let row = md.lines().nth(2).unwrap();
    assert!(
        row.contains(r"\<img src=x onerror=alert(1)\>\[a\](javascript:x)"),
        "{row}"
    );
    assert!(!row.contains(" <img"), "{row}");

    env.ok(
        &[
            "dlq",
            "add",
            "--repo",
            "r",
            "--job",
            "j",
            "--item",
            "@SUM(A1)",
            "--error=-2+3",
            "--exit-code",
            "1",
        ],
        b"",
    );
    let csv = env.ok(
        &["dlq", "export", "j", "--repo", "r", "--format", "csv"],
        b"",
    );
    let row = csv.lines().nth(1).unwrap();
    assert!(row.starts_with("'@SUM(A1),"), "{row}");
    assert!(row.contains(",'-2+3,"), "{row}");
}
