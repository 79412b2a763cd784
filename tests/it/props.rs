//! Property tests: any payload round-trips; any single-byte corruption is detected.

use std::path::Path;

use proptest::prelude::*;

use prodigy::object::{self, ObjectId, ObjectType};

fn any_type() -> impl Strategy<Value = ObjectType> {
    prop::sample::select(ObjectType::ALL.to_vec())
}

proptest! {
    // PROPTEST_CASES=N runs more (the long version); 512 in the suite.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn any_payload_round_trips(kind in any_type(), payload in prop::collection::vec(any::<u8>(), 0..4096)) {
        let (id, frame) = object::encode(kind, &payload).unwrap();
        prop_assert_eq!(id, ObjectId::hash(kind, &payload));
        let back = object::decode(&id, Path::new("x"), &frame).unwrap();
        prop_assert_eq!(back.kind, kind);
        prop_assert_eq!(back.payload, payload);
    }

    #[test]
    fn any_single_byte_corruption_is_detected(
        payload in prop::collection::vec(any::<u8>(), 0..2048),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let (id, mut frame) = object::encode(ObjectType::Blob, &payload).unwrap();
        let i = at.index(frame.len());
        frame[i] ^= xor;
        let result = object::decode(&id, Path::new("x"), &frame);
        prop_assert!(result.is_err(), "byte {} ^ {:#x} of {} went unnoticed", i, xor, frame.len());
    }

    #[test]
    fn any_truncation_is_detected(payload in prop::collection::vec(any::<u8>(), 0..2048), cut in any::<prop::sample::Index>()) {
        let (id, frame) = object::encode(ObjectType::Blob, &payload).unwrap();
        let keep = cut.index(frame.len());
        prop_assert!(object::decode(&id, Path::new("x"), &frame[..keep]).is_err());
    }
}

#[test]
fn corruption_on_disk_is_detected_for_every_byte() {
    // Exhaustive over one real object file: every position, one bit flipped.
    let dir = tempfile::tempdir().unwrap();
    let home = prodigy::Home::at(dir.path()).unwrap();
    let store = prodigy::ObjectStore::new(&home);
    let payload = br#"{"event_type":"agent_completed","item_id":"item-7","duration_ms":1234}"#;
    let id = store.write(ObjectType::Item, payload).unwrap();
    let path = store.path(&id);
    let good = std::fs::read(&path).unwrap();
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= bit;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                store.read(&id).is_err(),
                "byte {i} bit {bit:#x} went unnoticed"
            );
        }
    }
}
