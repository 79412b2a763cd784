//! Object frames: decoding any bytes under any id — without a dictionary, as loose objects
//! are, and with one, as the frames of a pack with a dictionary are — never panics, and
//! what decodes hashes to its id (a corrupt object is never returned as data).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodigy::store::dict::Dictionary;
use prodigy::store::object::{self, ObjectId};

/// A dictionary of raw content (what zstd makes of bytes that are not a trained one).
static DICTIONARY: std::sync::LazyLock<Dictionary> = std::sync::LazyLock::new(|| {
    Dictionary::new(br#"item 200{"item":1,"error":"command failed with exit code 3"}"#.to_vec())
        .unwrap()
});

fuzz_target!(|data: &[u8]| {
    if data.len() < 32 {
        return;
    }
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&data[..32]);
    let id = ObjectId::from_bytes(raw);
    let frame = &data[32..];
    for result in [
        object::decode(&id, std::path::Path::new("fuzz"), frame),
        object::decode_with(&id, std::path::Path::new("fuzz.pack"), frame, Some(&DICTIONARY)),
    ] {
        if let Ok(o) = result {
            assert_eq!(ObjectId::hash(o.kind, &o.payload), id);
        }
    }
    // A frame made here decodes to what went in.
    if let Ok((id, frame)) = object::encode(prodigy::ObjectType::Blob, frame) {
        let o = object::decode(&id, std::path::Path::new("fuzz"), &frame).unwrap();
        assert_eq!(o.payload, &data[32..]);
    }
});
