//! Workflow files: any text gives a plan or an error naming a line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = prodigy::workflow::Plan::parse(std::path::Path::new("fuzz.yml"), text);
    }
});
