//! Event records: our own parse, the id fast path and the original tool's line importer
//! never panic; the fast path agrees with the full parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodigy::events::EventRecord;
use prodigy::events::record::record_id;
use prodigy::migrate::legacy;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = serde_json::from_slice::<EventRecord>(data) {
        let fast = record_id(data);
        assert_eq!(fast.as_deref(), Some(record.id.as_str()));
        let _ = record.info();
    }
    for unterminated in [false, true] {
        if let legacy::Line::Event(e) = legacy::event_line(data, unterminated) {
            let mut line = Vec::new();
            let info = e.write_line(&mut line, "w", 0).unwrap();
            let back: EventRecord = serde_json::from_slice(&line).unwrap();
            assert_eq!(back.id, e.id);
            assert_eq!(back.event_type(), info.event_type);
        }
    }
    let _ = legacy::dlq_item(data);
    let _ = legacy::checkpoint(data, "fuzz");
});
