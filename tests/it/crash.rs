//! SIGKILL at random moments of object writes and ref updates: no torn ref, no ref naming a
//! missing object, nothing acknowledged lost, fsck clean apart from temp files.
//!
//! 200 trials in the suite; `PRODIGY_TORTURE_TRIALS=N` runs N.

use std::time::Duration;

use prodigy::fsck::{self, Severity};
use prodigy::{Home, RefName};

use crate::common::{Env, Rng};
use crate::worker;

#[test]
fn sigkill_during_writes_loses_nothing_acknowledged() {
    let trials: u64 = std::env::var("PRODIGY_TORTURE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed = std::env::var("PRODIGY_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = Rng(seed);
    let mut killed_mid_run = 0;
    for trial in 0..trials {
        let env = Env::new();
        let ack = env.dir.path().join("ack");
        let name: RefName = format!("state/api/t{trial}").parse().unwrap();
        let mut child = worker::spawn(
            "crash",
            &env.home(),
            &ack,
            &[
                ("PRODIGY_IT_REF", name.to_string()),
                ("PRODIGY_IT_ID", trial.to_string()),
            ],
        );
        // Kill at a random moment after the worker has acknowledged 0–3 updates: how long
        // a process takes to start and to fsync varies with the machine's load (the rest
        // of the suite runs beside this test), so wall-clock delays alone would mostly
        // kill workers that had not begun.
        let wanted = 1 + rng.below(4) as usize;
        let started = std::time::Instant::now();
        while std::fs::read_to_string(&ack).map_or(0, |t| t.lines().count()) < wanted {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "trial {trial}: the worker made no progress"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(rng.below(3_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked: Vec<u64> = std::fs::read_to_string(&ack)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        let refs = env.store();
        let head = refs
            .read(&name)
            .unwrap_or_else(|e| panic!("trial {trial}: torn ref: {e}"));
        if let Some(last) = acked.last() {
            killed_mid_run += 1;
            let head = head.unwrap_or_else(|| panic!("trial {trial}: acknowledged ref lost"));
            let object = refs
                .objects()
                .read(&head)
                .unwrap_or_else(|e| panic!("trial {trial}: ref names a bad object: {e}"));
            let value: serde_json::Value = serde_json::from_slice(&object.payload).unwrap();
            let seq = value["seq"].as_u64().unwrap();
            assert!(
                seq == *last || seq == last + 1,
                "trial {trial}: ref at seq {seq}, last acknowledged {last}"
            );
        }
        let home = Home::at(env.home()).unwrap();
        let report = fsck::fsck(&home, &refs).unwrap();
        let errors: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "trial {trial}: {errors:?}");
    }
    // The kills must land while the worker is writing (some may land before its first
    // acknowledgement, which tests nothing acknowledged but still checks the store).
    assert!(
        killed_mid_run * 4 > trials,
        "only {killed_mid_run} of {trials} trials hit a worker that had acknowledged work"
    );
}
