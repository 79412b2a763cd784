//! gc and packs beside git (issue 6): a home of N loose objects, all reachable (a DLQ
//! snapshot naming them); `prodigy gc` packs them; the time, the size on disk before and
//! after, and reads of random objects from loose files and from the pack. Beside it, the
//! same number of loose blobs (reachable from a commit) in a git repository and `git gc`.
//!
//! `cargo bench --bench gc`; knobs: OBJECTS (100000; the figure is 1000000),
//! READS (10000), BASELINE (1; 0 skips git, for repeated runs of ours);
//! `PRODIGY_LOG=prodigy=debug` shows gc's phases and their times.

#![allow(clippy::print_stdout)]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prodigy::home::Home;
use prodigy::lock::LockOptions;
use prodigy::store::object::{ObjectId, ObjectStore, ObjectType};
use prodigy::store::refs::{Expect, RefName, RefStore};
use support::{env_number, git, scratch_dir, time_cli};

const EXE: &str = env!("CARGO_BIN_EXE_prodigy");

fn payload(i: u64) -> Vec<u8> {
    // About 200 bytes, distinct, like a small event batch or item.
    format!(
        "{{\"item\":{i},\"error\":\"command failed with exit code {}\",\"pad\":\"{}\"}}",
        i % 7,
        "x".repeat(140)
    )
    .into_bytes()
}

/// Disk usage in KiB (blocks, as `du -sk` counts them).
fn du(dir: &Path) -> u64 {
    let out = Command::new("du").arg("-sk").arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0)
}

/// Where the bytes under an objects directory are after a gc: `(pack files, index files,
/// everything else)` in allocated bytes (`du`'s measure), and how many directories are
/// left (empty fan-out and temp directories keep the blocks their entries once took).
fn breakdown(objects: &Path, pack_ext: &str, idx_ext: &str) -> (u64, u64, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut pack, mut idx, mut other, mut dirs) = (0, 0, 0, 0);
    let mut stack = vec![objects.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = e.metadata().unwrap();
            let bytes = meta.blocks() * 512;
            let path = e.path();
            if meta.is_dir() {
                dirs += 1;
                other += bytes;
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == pack_ext) {
                pack += bytes;
            } else if path.extension().is_some_and(|x| x == idx_ext) {
                idx += bytes;
            } else {
                other += bytes;
            }
        }
    }
    (pack, idx, other, dirs)
}

/// One line of the breakdown: bytes per object of each part and of the whole.
fn per_object(who: &str, n: u64, (pack, idx, other, dirs): (u64, u64, u64, u64)) {
    let per = |b: u64| b as f64 / n as f64;
    println!(
        "{who}: bytes per object after gc: {:.1} in all = pack {:.1} + index {:.1} + the rest {:.1} ({dirs} directories, {} KiB)",
        per(pack + idx + other),
        per(pack),
        per(idx),
        per(other),
        other / 1024
    );
}

fn random_reads(store: &ObjectStore, ids: &[ObjectId], reads: usize) -> Duration {
    let mut x = 0x5eedu64;
    let start = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = &ids[(x % ids.len() as u64) as usize];
        store.read(id).unwrap();
    }
    start.elapsed()
}

fn drop_caches() {
    // Best effort (root only): reads after it come from the disk, for both layouts alike.
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn ours(n: u64, reads: usize) {
    let scratch = scratch_dir("prodigy-bench-gc-");
    let home = Home::at(scratch.path().join("home")).unwrap();
    let refs = RefStore::new(&home, LockOptions::default());
    let store = refs.objects();
    let start = Instant::now();
    let mut ids = Vec::with_capacity(n as usize);
    let mut batch = store.batch();
    for i in 0..n {
        ids.push(batch.add(ObjectType::Item, &payload(i)).unwrap());
        if batch.len() == 65_536 {
            batch.commit().unwrap();
            batch = store.batch();
        }
    }
    batch.commit().unwrap();
    // One DLQ snapshot names them all (256 shards), so every object is reachable.
    let mut shards: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    for id in &ids {
        let hex = id.to_string();
        shards
            .entry(hex[..2].to_owned())
            .or_default()
            .insert(hex.clone(), serde_json::json!({ "object": hex }));
    }
    let mut shard_ids = serde_json::Map::new();
    let mut snapshot = Vec::new();
    for (key, items) in shards {
        let json = serde_json::json!({"shard": key, "items": items});
        let id = store
            .write(ObjectType::Dlq, json.to_string().as_bytes())
            .unwrap();
        shard_ids.insert(key, serde_json::Value::String(id.to_string()));
        snapshot.push(id);
    }
    let root = serde_json::json!({"parent": null, "items": n, "shards": shard_ids});
    let root = store
        .write(ObjectType::Dlq, root.to_string().as_bytes())
        .unwrap();
    snapshot.push(root);
    let name: RefName = "dlq/bench/j".parse().unwrap();
    refs.update(&name, root, Expect::Absent, "bench").unwrap();
    let made = start.elapsed();
    let objects_dir = home.objects_dir();
    let before = du(&objects_dir);
    let probe = ids[ids.len() / 2].to_string();
    let (cli_loose, _) = time_cli(home.root(), &["cat-object", "-p", &probe], 31);
    drop_caches();
    let loose_reads = random_reads(&ObjectStore::new(&home), &ids, reads);
    drop_caches();
    let start = Instant::now();
    let mut gc = Command::new(EXE);
    gc.args(["gc", "--json"]).env("PRODIGY_HOME", home.root());
    if std::env::var_os("PRODIGY_LOG").is_some() {
        // gc's phases and their times (PRODIGY_LOG=prodigy=debug).
        gc.stderr(Stdio::inherit());
    }
    let out = gc.output().unwrap();
    let gc_time = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let after = du(&objects_dir);
    let parts = breakdown(&objects_dir, "pack", "idx");
    let (cli_packed, _) = time_cli(home.root(), &["cat-object", "-p", &probe], 31);
    drop_caches();
    let packed_reads = random_reads(&ObjectStore::new(&home), &ids, reads);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / reads as f64;
    println!(
        "prodigy: {n} objects made in {:.1} s; gc packed {} in {:.1} s; objects/ {} KiB -> {} KiB ({:.2}x); {reads} random reads (cold): loose {:.1} µs, packed {:.1} µs each",
        made.as_secs_f64(),
        report["packed"],
        gc_time.as_secs_f64(),
        before,
        after,
        before as f64 / after.max(1) as f64,
        per(loose_reads),
        per(packed_reads)
    );
    per_object("prodigy", n, parts);
    // The snapshot that names every object (its 64-hex ids twice per item) is part of
    // the pack, as git's trees are part of its pack.
    let reader = ObjectStore::new(&home);
    let snapshot_bytes: u64 = snapshot
        .iter()
        .map(|id| {
            reader
                .find_packed(id)
                .unwrap()
                .map_or(0, |(_, _, len)| len as u64)
        })
        .sum();
    println!(
        "prodigy: of the pack, the DLQ snapshot naming the objects: {:.1} bytes per object",
        snapshot_bytes as f64 / n as f64
    );
    println!(
        "prodigy: `cat-object -p` (whole process, warm, median of 31): loose {:.2} ms, packed {:.2} ms",
        cli_loose.as_secs_f64() * 1e3,
        cli_packed.as_secs_f64() * 1e3
    );
}

fn baseline(n: u64) {
    let scratch = scratch_dir("prodigy-bench-gitgc-");
    // The same payloads as blobs of one commit, made with fast-import (a pack), then
    // exploded into loose objects in a fresh repository.
    let src = scratch.path().join("src");
    let repo = scratch.path().join("repo");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&repo).unwrap();
    git(&src, &["init", "-q"]);
    let mut fi = Command::new("git")
        .arg("-C")
        .arg(&src)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut w = std::io::BufWriter::new(fi.stdin.take().unwrap());
        for i in 0..n {
            let p = payload(i);
            write!(w, "blob\nmark :{}\ndata {}\n", i + 1, p.len()).unwrap();
            w.write_all(&p).unwrap();
            w.write_all(b"\n").unwrap();
        }
        write!(
            w,
            "commit refs/heads/main\ncommitter b <b@example.com> 0 +0000\ndata 1\nx\n"
        )
        .unwrap();
        for i in 0..n {
            writeln!(w, "M 100644 :{} d{}/f{i}", i + 1, i % 1000).unwrap();
        }
        w.write_all(b"\n").unwrap();
    }
    assert!(fi.wait().unwrap().success());
    git(&repo, &["init", "-q"]);
    let packs: Vec<_> = std::fs::read_dir(src.join(".git/objects/pack"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    for pack in packs {
        let status = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["unpack-objects", "-q"])
            .stdin(std::fs::File::open(pack).unwrap())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let head = git(&src, &["rev-parse", "main"]);
    git(&repo, &["update-ref", "refs/heads/main", &head]);
    let objects = repo.join(".git/objects");
    let before = du(&objects);
    drop_caches();
    let start = Instant::now();
    git(&repo, &["gc", "--quiet"]);
    let took = start.elapsed();
    let after = du(&objects);
    let parts = breakdown(&objects, "pack", "idx");
    println!(
        "git gc: {n} loose blobs (plus {} trees and a commit) packed in {:.1} s; .git/objects {} KiB -> {} KiB ({:.2}x)",
        n / 1000 + 1,
        took.as_secs_f64(),
        before,
        after,
        before as f64 / after.max(1) as f64
    );
    per_object("git", n, parts);
    // Packed bytes by object type: the blobs, and the trees that name them.
    let listing = git(
        &repo,
        &[
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objecttype) %(objectsize:disk)",
        ],
    );
    let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
    for line in listing.lines() {
        if let Some((kind, size)) = line.split_once(' ') {
            *by_type.entry(kind).or_default() += size.parse::<u64>().unwrap_or(0);
        }
    }
    let per: Vec<String> = by_type
        .iter()
        .map(|(kind, bytes)| format!("{kind} {:.1}", *bytes as f64 / n as f64))
        .collect();
    println!(
        "git: of the pack, bytes per object by type: {}",
        per.join(", ")
    );
}

fn main() {
    let n = env_number("OBJECTS", 100_000);
    let reads = env_number("READS", 10_000) as usize;
    ours(n, reads);
    if env_number("BASELINE", 1) != 0 {
        baseline(n);
    }
}
