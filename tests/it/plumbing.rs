//! The plumbing commands end to end: hash-object, cat-object, ref, fsck.

use std::fs;

use crate::common::{Env, assert_one_line_error, blob, loose_path, packs, snapshot};

#[test]
fn hash_object_writes_one_frame_of_the_canonical_bytes() {
    let env = Env::new();
    let id = blob(&env, "hello\n");
    assert_eq!(id, blake3::hash(b"blob 6\0hello\n").to_hex().as_str());
    let path = env.home().join("objects").join(&id[..2]).join(&id[2..]);
    let frame = fs::read(&path).unwrap();
    assert_eq!(zstd::decode_all(&frame[..]).unwrap(), b"blob 6\0hello\n");
    // Without -w nothing is written.
    let other = env.ok(&["hash-object", "--stdin"], b"other");
    assert!(
        !env.home()
            .join("objects")
            .join(&other[..2])
            .join(&other[2..64])
            .exists()
    );
    // -t sets the type, and JSON types must hold JSON unless --literally.
    let log = env.ok(&["hash-object", "-w", "-t", "log", "--stdin"], b"{\"n\":1}");
    assert_eq!(env.ok(&["cat-object", "-t", log.trim()], b""), "log\n");
    let out = env.run(&["hash-object", "-w", "-t", "log", "--stdin"], b"not json");
    assert_one_line_error(&out, 1);
    env.ok(
        &["hash-object", "-w", "-t", "log", "--literally", "--stdin"],
        b"not json",
    );
}

#[test]
fn writing_again_writes_nothing() {
    let env = Env::new();
    let id = blob(&env, "same");
    let path = env.home().join("objects").join(&id[..2]).join(&id[2..]);
    let before = fs::metadata(&path).unwrap();
    let again = blob(&env, "same");
    let after = fs::metadata(&path).unwrap();
    assert_eq!(id, again);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );
    assert!(env.store().objects().temp_files().unwrap().is_empty());
}

#[test]
fn stdin_paths_and_files_print_ids_in_order() {
    let env = Env::new();
    let dir = env.scratch();
    let mut paths = String::new();
    let mut want = Vec::new();
    for n in 0..50 {
        let p = dir.join(format!("f{n}"));
        fs::write(&p, format!("file {n}")).unwrap();
        paths.push_str(&format!("{}\n", p.display()));
        want.push(
            blake3::hash(format!("blob {}\0file {n}", format!("file {n}").len()).as_bytes())
                .to_hex()
                .to_string(),
        );
    }
    let out = env.ok(&["hash-object", "-w", "--stdin-paths"], paths.as_bytes());
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    for id in &want {
        assert_eq!(
            env.run(&["cat-object", "-e", id], b"").status.code(),
            Some(0)
        );
    }
    let out = env.ok(&["hash-object", "f3", "f1"], b"");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![want[3].as_str(), want[1].as_str()]
    );
    let out = env.run(&["hash-object", "-w", "f1", "missing-file"], b"");
    assert_one_line_error(&out, 1);
    let out = env.run(&["hash-object"], b"");
    assert_one_line_error(&out, 2);
}

#[test]
fn many_objects_of_one_call_are_written_as_one_pack() {
    use prodigy::store::object::PACK_MIN_OBJECTS;
    let env = Env::new();
    let dir = env.scratch();
    let write = |numbers: std::ops::Range<usize>| -> Vec<String> {
        let mut paths = String::new();
        for n in numbers {
            let p = dir.join(format!("o{n}"));
            fs::write(&p, format!("object {n}")).unwrap();
            paths.push_str(&format!("{}\n", p.display()));
        }
        let out = env.ok(&["hash-object", "-w", "--stdin-paths"], paths.as_bytes());
        out.lines().map(str::to_owned).collect()
    };
    let loose = |id: &str| loose_path(&env, id);
    // Fewer than a pack's minimum: loose objects.
    let few = PACK_MIN_OBJECTS - 1;
    let first = write(0..few);
    assert!(first.iter().all(|id| loose(id).is_file()));
    assert!(packs(&env).is_empty());
    // Then as many again and more: the new ones, and only they, go into one pack.
    let all = write(0..few + PACK_MIN_OBJECTS);
    assert_eq!(all[..few], first[..]);
    let packs = packs(&env);
    assert_eq!(packs.len(), 1);
    assert_eq!(packs[0].len(), PACK_MIN_OBJECTS as u64);
    assert!(all[few..].iter().all(|id| !loose(id).exists()));
    assert!(env.store().objects().temp_files().unwrap().is_empty());
    for (n, id) in all.iter().enumerate() {
        assert_eq!(
            env.ok(&["cat-object", "-p", id], b""),
            format!("object {n}")
        );
    }
    let fsck = env.run(&["fsck"], b"");
    let said = String::from_utf8_lossy(&fsck.stderr);
    assert!(fsck.status.success(), "{said}");
    assert!(
        said.contains(&format!("checked {} objects", all.len())) && said.contains(" 0 errors"),
        "{said}"
    );
}

#[test]
fn past_the_pack_limit_many_objects_are_written_loose() {
    use prodigy::store::object::{PACK_LIMIT, PACK_MIN_OBJECTS};
    let env = Env::new();
    let dir = env.scratch();
    let write = |call: usize| -> Vec<String> {
        let mut paths = String::new();
        for n in 0..PACK_MIN_OBJECTS {
            let p = dir.join(format!("c{call}-{n}"));
            fs::write(&p, format!("call {call} object {n}")).unwrap();
            paths.push_str(&format!("{}\n", p.display()));
        }
        let out = env.ok(&["hash-object", "-w", "--stdin-paths"], paths.as_bytes());
        out.lines().map(str::to_owned).collect()
    };
    for call in 0..PACK_LIMIT {
        write(call);
    }
    assert_eq!(packs(&env).len(), PACK_LIMIT);
    // Readers have as many packs to search as they should: the next call writes loose.
    let ids = write(PACK_LIMIT);
    assert_eq!(packs(&env).len(), PACK_LIMIT);
    for id in &ids {
        assert!(loose_path(&env, id).is_file());
    }
}

#[test]
fn stdin_paths_answers_each_line_before_the_next_arrives() {
    // A caller that waits for each id before sending the next path must not deadlock.
    use std::io::{BufRead, BufReader, Write};
    let env = Env::new();
    let dir = env.scratch();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("prodigy"))
        .args(["hash-object", "-w", "--stdin-paths"])
        .env("PRODIGY_HOME", env.home())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for n in 0..3 {
        let p = dir.join(format!("g{n}"));
        fs::write(&p, format!("g {n}")).unwrap();
        writeln!(stdin, "{}", p.display()).unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let id = line.trim();
        assert_eq!(id.len(), 64);
        // Acknowledged means durable and stored.
        assert!(loose_path(&env, id).is_file());
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn cat_object_modes_and_batch() {
    let env = Env::new();
    let id = blob(&env, "payload\n");
    assert_eq!(env.ok(&["cat-object", "-p", &id[..6]], b""), "payload\n");
    assert_eq!(env.ok(&["cat-object", "-s", &id], b""), "8\n");
    assert_eq!(env.ok(&["cat-object", "-t", &id[..4]], b""), "blob\n");
    assert_eq!(
        env.run(&["cat-object", "-e", &id], b"").status.code(),
        Some(0)
    );
    let absent = "ab".repeat(32);
    let out = env.run(&["cat-object", "-e", &absent], b"");
    assert_eq!(
        (out.status.code(), out.stdout.len(), out.stderr.len()),
        (Some(1), 0, 0)
    );
    let out = env.run(&["cat-object", "-p", &absent], b"");
    assert_one_line_error(&out, 1);
    let input = format!("{id}\n{absent}\n");
    let out = env.ok(&["cat-object", "--batch"], input.as_bytes());
    assert_eq!(out, format!("{id} blob 8\npayload\n\n{absent} missing\n"));
    let out = env.run(&["cat-object", "-t"], b"");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn ambiguous_prefix_lists_the_candidates() {
    let env = Env::new();
    // Find two payloads whose ids share 4 hex digits (deterministic: hashes are fixed).
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..100_000)
        .find_map(|n| {
            let text = format!("{n}");
            let id = blake3::hash(format!("blob {}\0{text}", text.len()).as_bytes())
                .to_hex()
                .to_string();
            seen.insert(id[..4].to_owned(), text.clone())
                .map(|other| (other, text))
        })
        .unwrap();
    let ida = blob(&env, &a);
    let idb = blob(&env, &b);
    let out = env.run(&["cat-object", "-p", &ida[..4]], b"");
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("ambiguous") && stderr.contains(&ida) && stderr.contains(&idb),
        "{stderr}"
    );
    snapshot("ambiguous_prefix", &out, &env.home());
}

#[test]
fn ref_commands_compare_and_swap() {
    let env = Env::new();
    let a = blob(&env, "a");
    let b = blob(&env, "b");
    env.ok(&["ref", "update", "events/api/mr-1", &a, "--old", ""], b"");
    assert_eq!(env.ok(&["ref", "show", "events/api/mr-1"], b"").trim(), a);
    // A stale --old fails with exit 1 and changes nothing.
    let out = env.run(&["ref", "update", "events/api/mr-1", &b, "--old", &b], b"");
    assert_one_line_error(&out, 1);
    assert_eq!(env.ok(&["ref", "show", "events/api/mr-1"], b"").trim(), a);
    snapshot("stale_old", &out, &env.home());
    env.ok(
        &[
            "ref",
            "update",
            "events/api/mr-1",
            &b[..8],
            "--old",
            &a,
            "-m",
            "move on",
        ],
        b"",
    );
    env.ok(&["ref", "update", "dlq/api/mr-1", &a], b"");
    let list = env.ok(&["ref", "list"], b"");
    assert_eq!(list, format!("{a} dlq/api/mr-1\n{b} events/api/mr-1\n"));
    assert_eq!(
        env.ok(&["ref", "list", "events"], b""),
        format!("{b} events/api/mr-1\n")
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["ref", "list", "--json"], b"")).unwrap();
    assert_eq!(json[1]["name"], "events/api/mr-1");
    let log = env.ok(&["ref", "log", "events/api/mr-1"], b"");
    let lines: Vec<_> = log.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with(&format!("{} {a} ", "0".repeat(64))));
    assert!(lines[1].starts_with(&format!("{a} {b} ")) && lines[1].ends_with(" move on"));
    // A ref never names a missing object.
    let missing = "cd".repeat(32);
    let out = env.run(&["ref", "update", "events/api/mr-1", &missing], b"");
    assert_one_line_error(&out, 1);
    env.ok(&["ref", "delete", "events/api/mr-1", "--old", &b], b"");
    let out = env.run(&["ref", "show", "events/api/mr-1"], b"");
    assert_one_line_error(&out, 1);
    let log = env.ok(&["ref", "log", "events/api/mr-1"], b"");
    assert!(
        log.lines()
            .last()
            .unwrap()
            .starts_with(&format!("{b} {} ", "0".repeat(64)))
    );
    assert_eq!(env.run(&["fsck"], b"").status.code(), Some(0));
}

#[test]
fn fsck_reports_each_problem_and_removes_temp_files() {
    let env = Env::new();
    let good = blob(&env, "good");
    let bad = blob(&env, "bad");
    env.ok(&["ref", "update", "state/api/j1", &bad], b"");
    let out = env.run(&["fsck"], b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Flip one byte of one object, plant a temp file and garbage in a ref.
    let bad_path = env.home().join("objects").join(&bad[..2]).join(&bad[2..]);
    let mut bytes = fs::read(&bad_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    fs::write(&bad_path, &bytes).unwrap();
    fs::write(env.home().join("objects/tmp/obj-stray.tmp"), b"half").unwrap();
    fs::create_dir_all(env.home().join("events/api/j2")).unwrap();
    fs::write(env.home().join("events/api/j2/HEAD"), b"garbage\n").unwrap();
    let out = env.run(&["fsck"], b"");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("error objects/{}/{}", &bad[..2], &bad[2..])),
        "{stdout}"
    );
    assert!(
        stdout.contains("error state/api/j1/HEAD: ref state/api/j1 names corrupt object"),
        "{stdout}"
    );
    assert!(
        stdout.contains("error events/api/j2/HEAD: ref events/api/j2 is corrupt"),
        "{stdout}"
    );
    assert!(
        stdout.contains("temp objects/tmp/obj-stray.tmp"),
        "{stdout}"
    );
    assert!(!stdout.contains(&good), "{stdout}");
    snapshot("fsck_problems", &out, &env.home());
    // The corrupt object is never returned as data.
    let out = env.run(&["cat-object", "-p", &bad], b"");
    let stderr = assert_one_line_error(&out, 1);
    assert!(stderr.contains("is corrupt"), "{stderr}");
    assert!(out.stdout.is_empty());
    // Young temp files stay unless asked; --temp-age now removes them.
    env.run(&["fsck", "--remove-temp"], b"");
    assert!(env.home().join("objects/tmp/obj-stray.tmp").exists());
    env.run(&["fsck", "--remove-temp", "--temp-age", "now"], b"");
    assert!(!env.home().join("objects/tmp/obj-stray.tmp").exists());
    let json: serde_json::Value =
        serde_json::from_slice(&env.run(&["fsck", "--json"], b"").stdout).unwrap();
    assert_eq!(json["errors"], 4);
    assert_eq!(json["temp_files"].as_array().unwrap().len(), 0);
}

#[test]
fn read_only_home_fails_cleanly() {
    let env = Env::new();
    let id = blob(&env, "kept");
    let home = env.home();
    // As root, permission bits do not stop writes: use a read-only bind mount when we may,
    // else (an ordinary user) a read-only mode.
    let mounted = std::process::Command::new("mount")
        .args(["--bind", "-o", "ro"])
        .arg(&home)
        .arg(&home)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        // A bind mount is writable until remounted read-only.
        std::process::Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&home)
            .status()
            .unwrap();
    } else {
        use std::os::unix::fs::PermissionsExt;
        for dir in [home.join("objects/tmp"), home.join("objects"), home.clone()] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        }
    }
    let out = env.run(&["hash-object", "-w", "--stdin"], b"new object");
    let out2 = env.run(&["ref", "update", "events/api/j", &id], b"");
    let read = env.run(&["cat-object", "-p", &id], b"");
    if mounted {
        std::process::Command::new("umount")
            .arg(&home)
            .status()
            .unwrap();
    } else {
        use std::os::unix::fs::PermissionsExt;
        for dir in [home.clone(), home.join("objects"), home.join("objects/tmp")] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let stderr = assert_one_line_error(&out, 1);
    assert!(
        stderr.contains("hint: the store's home must be writable"),
        "{stderr}"
    );
    assert_one_line_error(&out2, 1);
    assert_eq!(read.stdout, b"kept");
    assert!(!home.join("events").exists());
}

#[test]
fn storage_api_names_the_global_directories() {
    let env = Env::new();
    let ack = env.dir.path().join("dirs");
    let mut child = crate::worker::spawn(
        "storage",
        &env.home(),
        &ack,
        &[("PRODIGY_HOME", env.home().display().to_string())],
    );
    assert!(child.wait().unwrap().success());
    let home = env.home().display().to_string();
    let lines: Vec<String> = fs::read_to_string(&ack)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines[..3],
        [
            format!("{home}/events/api"),
            format!("{home}/dlq/api"),
            format!("{home}/state/api")
        ]
    );
    assert!(
        lines[3].starts_with("invalid repo name \"../x\""),
        "{}",
        lines[3]
    );
}

#[test]
fn hash_object_batch_reads_what_cat_object_batch_writes() {
    let src = Env::new();
    let ids: Vec<String> = ["one", "two\nlines", ""]
        .iter()
        .map(|t| blob(&src, t))
        .collect();
    let log = src.ok(&["hash-object", "-w", "-t", "log", "--stdin"], b"{\"a\":1}");
    let mut request = ids.join("\n");
    request.push('\n');
    request.push_str(&log);
    let dump = src
        .run(&["cat-object", "--batch"], request.as_bytes())
        .stdout;
    let dst = Env::new();
    let out = dst.ok(&["hash-object", "-w", "--batch"], &dump);
    let mut want = ids.clone();
    want.push(log.trim().to_owned());
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    assert_eq!(dst.ok(&["cat-object", "-t", log.trim()], b""), "log\n");
    assert_eq!(dst.ok(&["cat-object", "-p", &ids[1]], b""), "two\nlines");
    // A header whose id does not match its content, a short payload, a bad header.
    let lie = format!("{} blob 3\nabc\n", ids[0]);
    for bad in [
        lie.as_str(),
        "blob 10\nabc\n",
        "blob\nabc\n",
        "tree 3\nabc\n",
    ] {
        let out = dst.run(&["hash-object", "-w", "--batch"], bad.as_bytes());
        assert_one_line_error(&out, 1);
    }
}
