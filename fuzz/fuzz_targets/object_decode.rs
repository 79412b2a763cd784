//! Object frames: decoding any bytes under any id never panics, and what decodes hashes to
//! its id (a corrupt object is never returned as data).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodigy::store::object::{self, ObjectId};

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
        object::decode_packed(&id, std::path::Path::new("fuzz.pack"), 0, frame),
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
