//! The torture suite (issue 8), corruption: random single-bit flips and truncations of
//! loose objects, packs (version 2, and version 1 as older homes hold them), pack indexes,
//! pack dictionaries and refs. Every read afterwards either returns the right bytes or
//! fails naming the object: never a silent wrong answer.
//!
//! 2,000 trials in the suite (and 400 on a pack with a dictionary);
//! `PRODIGY_CORRUPTION_TRIALS=10000` for the long run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prodigy::lock::LockOptions;
use prodigy::{Home, ObjectId, ObjectStore, RefName, RefStore};

use crate::common::{Env, Rng, copy_dir, env_knob, packs, small_objects, transcript};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            files(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

#[test]
fn bit_flips_and_truncations_never_give_a_wrong_answer() {
    let trials = env_knob("PRODIGY_CORRUPTION_TRIALS", 2000);
    let mut rng = Rng(env_knob("PRODIGY_TORTURE_SEED", 0xb17f11b) | 1);
    let env = Env::new();
    // A store with loose and packed objects of every kind, and refs.
    for n in 0..6 {
        let events: String = (0..40)
            .map(|i| format!("{{\"event_type\":\"agent_progress\",\"n\":{n},\"i\":{i}}}\n"))
            .collect();
        env.ok(
            &[
                "events",
                "append",
                "--repo",
                "api",
                "--job",
                &format!("j{}", n % 3),
            ],
            events.as_bytes(),
        );
        env.ok(
            &[
                "dlq",
                "add",
                "--repo",
                "api",
                "--job",
                "j0",
                "--item",
                &format!("item-{n}"),
                "--error",
                "exit 1",
            ],
            b"",
        );
        if n == 3 {
            env.ok(&["gc", "--prune", "now"], b"");
        }
    }
    // And a version 1 pack, as homes made before version 2 hold them.
    copy_dir(
        Path::new("tests/fixtures/pack-v1/home/objects/pack"),
        &env.home().join("objects/pack"),
    );
    let home = Home::at(env.home()).unwrap();
    let refs = RefStore::new(&home, LockOptions::default());
    // What every object and ref holds, read before any damage.
    let mut objects: BTreeMap<ObjectId, Vec<u8>> = BTreeMap::new();
    let store = ObjectStore::new(&home);
    let (loose, _) = store.list_loose().unwrap();
    for (id, _) in loose {
        objects.insert(id, store.read(&id).unwrap().payload);
    }
    for pack in store.packs(true) {
        for (id, _, _) in pack.entries().unwrap() {
            objects.insert(id, store.read(&id).unwrap().payload);
        }
    }
    let named: Vec<(RefName, ObjectId)> = refs.list(None).unwrap();
    let versions: Vec<u8> = store.packs(false).iter().map(|p| p.version()).collect();
    assert!(
        versions.contains(&1) && versions.contains(&2),
        "{versions:?}"
    );
    let packs = versions.len();
    assert!(
        objects.len() > 20 && named.len() >= 4 && packs > 0,
        "{} objects, {} refs, {packs} packs",
        objects.len(),
        named.len()
    );
    let mut targets = Vec::new();
    files(&env.home().join("objects"), &mut targets);
    for kind in ["events", "dlq"] {
        let mut heads = Vec::new();
        files(&env.home().join(kind), &mut heads);
        targets.extend(
            heads
                .into_iter()
                .filter(|p| p.file_name().is_some_and(|n| n == "HEAD")),
        );
    }
    let (mut errors, mut right) = (0u64, 0u64);
    for trial in 0..trials {
        let path = &targets[rng.below(targets.len() as u64) as usize];
        let good = std::fs::read(path).unwrap();
        let mut bad = good.clone();
        let what = if rng.below(4) == 0 && !good.is_empty() {
            bad.truncate(rng.below(good.len() as u64) as usize);
            format!("truncated to {} of {}", bad.len(), good.len())
        } else {
            let at = rng.below(good.len() as u64) as usize;
            let bit = 1u8 << rng.below(8);
            bad[at] ^= bit;
            format!("byte {at} bit {bit:#x}")
        };
        std::fs::write(path, &bad).unwrap();
        // A fresh store (packs opened again) reads every object and every ref's object.
        let store = ObjectStore::new(&home);
        let refs = RefStore::new(&home, LockOptions::default());
        for (id, payload) in &objects {
            match store.read(id) {
                Ok(o) => {
                    assert_eq!(
                        &o.payload,
                        payload,
                        "trial {trial}: {} {what}: wrong bytes for {id}",
                        path.display()
                    );
                    right += 1;
                }
                Err(e) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&id.to_string()[..8])
                            || text.contains(&path.display().to_string()),
                        "trial {trial}: an error that names nothing: {text}"
                    );
                    errors += 1;
                }
            }
        }
        for (name, id) in &named {
            match refs.read(name) {
                Ok(Some(now)) if now == *id => right += 1,
                // A flip that turns the hex into another id: reading what it names fails.
                Ok(Some(now)) => {
                    let read = store.read(&now);
                    assert!(
                        read.is_err() || read.is_ok_and(|o| Some(&o.payload) == objects.get(id)),
                        "trial {trial}: {name} {what}: names {now}, which reads"
                    );
                    errors += 1;
                }
                Ok(None) => panic!("trial {trial}: {name} {what}: the ref vanished silently"),
                Err(_) => errors += 1,
            }
        }
        std::fs::write(path, &good).unwrap();
    }
    assert!(
        errors > trials / 2,
        "only {errors} errors in {trials} trials: the damage was not seen"
    );
    assert!(right > 0);
}

/// A pack with a dictionary (issue 25), damaged where it counts: the dictionary's length,
/// the dictionary, its checksum, the frames, the index; bits flipped and files cut short.
/// Every read gives the right bytes or an error naming the object or the pack (a damaged
/// dictionary: every object of the pack is refused, the error saying so with the
/// offsets); fsck fails naming the pack. `PRODIGY_CORRUPTION_TRIALS` scales the trials.
#[test]
fn damage_to_a_pack_with_a_dictionary_is_never_read_as_data() {
    let trials = env_knob("PRODIGY_CORRUPTION_TRIALS", 2000) / 5;
    let mut rng = Rng(env_knob("PRODIGY_TORTURE_SEED", 0xd1c7) | 1);
    let env = Env::new();
    let objects = small_objects(&env, "j", 0, 1500);
    env.ok(&["gc", "--prune", "now"], b"");
    let pack = packs(&env).remove(0);
    let dict_len = pack
        .dictionary()
        .unwrap()
        .expect("a dictionary")
        .bytes()
        .len() as u64;
    let (pack_path, idx_path) = (pack.pack_path().to_owned(), pack.idx_path().to_owned());
    let pack_name = pack_path
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let pack_len = pack.pack_len();
    drop(pack);
    for path in [&pack_path, &idx_path] {
        let mut perms = std::fs::metadata(path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(path, perms).unwrap();
    }
    let idx_len = std::fs::metadata(&idx_path).unwrap().len();
    // (what, file, first byte, end) of each part.
    let parts = [
        ("the dictionary's length", &pack_path, 8, 12),
        ("the dictionary", &pack_path, 12, 12 + dict_len),
        (
            "the dictionary's checksum",
            &pack_path,
            12 + dict_len,
            44 + dict_len,
        ),
        ("the frames", &pack_path, 44 + dict_len, pack_len),
        ("the index", &idx_path, 0, idx_len),
    ];
    let home = Home::at(env.home()).unwrap();
    let (mut errors, mut right) = (0u64, 0u64);
    for trial in 0..trials {
        let (part, path, lo, hi) = parts[trial as usize % parts.len()];
        let good = std::fs::read(path).unwrap();
        let mut bad = good.clone();
        let what = if rng.below(5) == 0 {
            bad.truncate((lo + rng.below(hi - lo)) as usize);
            format!("{part}: cut to {} bytes", bad.len())
        } else {
            let at = (lo + rng.below(hi - lo)) as usize;
            let bit = 1u8 << rng.below(8);
            bad[at] ^= bit;
            format!("{part}: byte {at} bit {bit:#x}")
        };
        std::fs::write(path, &bad).unwrap();
        let store = ObjectStore::new(&home);
        let mut refused = 0;
        for (id, payload) in &objects {
            match store.read(id) {
                Ok(o) => {
                    assert_eq!(
                        &o.payload, payload,
                        "trial {trial}, {what}: wrong bytes for {id}"
                    );
                    right += 1;
                }
                Err(e) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&id.to_string()[..8]) || text.contains(&pack_name),
                        "trial {trial}, {what}: an error that names nothing: {text}"
                    );
                    let dictionary = part.starts_with("the dictionary") && !what.contains("cut");
                    if dictionary {
                        assert!(
                            text.contains("dictionary") && text.contains("at offset"),
                            "trial {trial}, {what}: {text}"
                        );
                    }
                    refused += 1;
                    errors += 1;
                }
            }
        }
        if part.starts_with("the dictionary") {
            assert_eq!(
                refused,
                objects.len(),
                "trial {trial}, {what}: a damaged dictionary is used"
            );
        }
        // fsck names the pack (its checksum, if nothing else, has changed).
        if trial % 4 == 0 {
            let out = env.run(&["fsck"], b"");
            assert_eq!(
                out.status.code(),
                Some(1),
                "trial {trial}, {what}: {}",
                transcript(&out)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&pack_name),
                "trial {trial}, {what}: {}",
                transcript(&out)
            );
        }
        std::fs::write(path, &good).unwrap();
    }
    assert!(
        errors > 0 && right > 0,
        "{errors} errors, {right} right reads"
    );
    let out = env.run(&["fsck"], b"");
    assert!(out.status.success(), "{}", transcript(&out));
}
