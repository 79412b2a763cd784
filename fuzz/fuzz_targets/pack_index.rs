//! Pack indexes and packs: any bytes as an index (and its pack) never panic `Pack::open`,
//! lookups, listing or verification, and a read through the store either returns an object
//! whose hash is its id or fails.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodigy::ObjectId;
use prodigy::store::pack::Pack;

fuzz_target!(|data: &[u8]| {
    // The first two bytes say where the index ends and the pack begins.
    if data.len() < 2 {
        return;
    }
    let split = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (idx, pack) = data[2..].split_at(split);
    let dir = tempfile::tempdir().unwrap();
    let packs = dir.path().join("objects/pack");
    std::fs::create_dir_all(&packs).unwrap();
    std::fs::write(packs.join("pack-f.idx"), idx).unwrap();
    std::fs::write(packs.join("pack-f.pack"), pack).unwrap();
    let Ok(p) = Pack::open(&packs.join("pack-f.idx")) else {
        return;
    };
    let _ = p.verify();
    let entries = p.entries().unwrap_or_default();
    let home = prodigy::Home::at(dir.path()).unwrap();
    let store = prodigy::ObjectStore::new(&home);
    for (id, _, _) in entries.iter().take(16) {
        let _ = p.find(id);
        if let Ok(o) = store.read(id) {
            assert_eq!(ObjectId::hash(o.kind, &o.payload), *id);
        }
    }
    let _ = p.find(&ObjectId::from_bytes([0x5a; 32]));
});
