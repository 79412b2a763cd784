//! Packs with a dictionary (issue 25): a well-formed version 2 pack — any bytes as its
//! dictionary (zstd takes bytes that are not a trained dictionary as raw content), any
//! payloads compressed with it — then damaged where the input says. Opening, verifying
//! and reading it never panic, and every read through the store returns exactly the
//! payload that was packed or fails.
//!
//! Input: a u16 LE dictionary length and the dictionary; one byte of damage count `k` and
//! `k` damages of five bytes (a u32 LE position in the pack, or in the index when its high
//! bit is set, and a byte to XOR there); the rest is the payloads, split at each `\n`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodigy::ObjectType;
use prodigy::store::dict::Dictionary;
use prodigy::store::object::{ObjectId, PackEncoder};
use prodigy::store::pack::{self, Pack};

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let (dictionary, rest) = rest.split_at(len);
    let Some((&k, rest)) = rest.split_first() else {
        return;
    };
    let k = (k as usize % 8).min(rest.len() / 5);
    let (damages, payloads) = rest.split_at(k * 5);
    let dictionary = if dictionary.is_empty() {
        None
    } else {
        match Dictionary::new(dictionary.to_vec()) {
            Ok(d) => Some(d),
            Err(_) => return,
        }
    };
    let mut encoder = PackEncoder::new(dictionary.as_ref());
    let mut objects: Vec<(ObjectId, Vec<u8>, Vec<u8>)> = Vec::new();
    for payload in payloads.split(|b| *b == b'\n').take(64) {
        let id = ObjectId::hash(ObjectType::Blob, payload);
        let mut canonical = format!("blob {}\0", payload.len()).into_bytes();
        canonical.extend_from_slice(payload);
        // What the encoder hands out decodes back: it checks every frame it makes.
        let frame = encoder.encode(&id, &canonical).unwrap();
        objects.push((id, payload.to_vec(), frame));
    }
    objects.sort();
    objects.dedup_by(|a, b| a.0 == b.0);
    let dir = tempfile::tempdir().unwrap();
    let packs = dir.path().join("objects/pack");
    let idx_path = pack::write(
        &packs,
        &dir.path().join("objects/tmp/pack"),
        dictionary.as_ref().map(|d| d.bytes()),
        objects.iter().map(|(id, _, frame)| (*id, frame.clone())),
    )
    .unwrap();
    let pack_path = idx_path.with_extension("pack");
    let mut pack_bytes = std::fs::read(&pack_path).unwrap();
    let mut idx_bytes = std::fs::read(&idx_path).unwrap();
    for damage in damages.chunks_exact(5) {
        let at = u32::from_le_bytes([damage[0], damage[1], damage[2], damage[3]]);
        let bytes = if at & (1 << 31) == 0 {
            &mut pack_bytes
        } else {
            &mut idx_bytes
        };
        if !bytes.is_empty() {
            let at = (at & !(1 << 31)) as usize % bytes.len();
            bytes[at] ^= damage[4];
        }
    }
    std::fs::write(&pack_path, &pack_bytes).unwrap();
    std::fs::write(&idx_path, &idx_bytes).unwrap();
    if let Ok(p) = Pack::open(&idx_path) {
        let _ = p.verify();
        let _ = p.dictionary();
        let _ = p.entries();
    }
    let home = prodigy::Home::at(dir.path()).unwrap();
    let store = prodigy::ObjectStore::new(&home);
    for (id, payload, _) in &objects {
        if let Ok(o) = store.read(id) {
            assert_eq!(&o.payload, payload);
        }
    }
});
