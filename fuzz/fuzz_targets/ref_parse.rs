//! Ref files, reflog lines and ref names: never a panic; what parses prints back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodigy::store::refs::{self, ReflogEntry};

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = refs::parse_ref_file(data) {
        assert_eq!(refs::parse_ref_file(format!("{id}\n").as_bytes()).unwrap(), id);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            if let Ok(entry) = ReflogEntry::parse(line) {
                let again = ReflogEntry::parse(&entry.to_line()).unwrap();
                assert_eq!(again.to_line(), entry.to_line());
            }
        }
        let _ = text.parse::<prodigy::RefName>();
    }
});
