//! The torture suite (issue 8), process-crash part: eight processes mixing every kind of
//! write (event appends, DLQ adds, checkpoint saves, compare-and-swap ref updates) are
//! killed with SIGKILL at random moments; everything they acknowledged must be there, every
//! ref readable and naming a good object, fsck clean. And a killed lock holder never keeps
//! a waiter waiting.
//!
//! `PRODIGY_MIXED_TRIALS=1000` for the long run (the suite runs 12);
//! `PRODIGY_LOCK_TRIALS=N` for the lock test (100 by default).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use prodigy::fsck::{self, Severity};
use prodigy::state::JobStateManager;
use prodigy::{Expect, Home, RefName};

use crate::common::{Env, Rng, env_knob};
use crate::worker;

const WORKERS: u64 = 8;

/// The acknowledged lines of every worker.
fn acks(env: &Env) -> Vec<(u64, Vec<String>)> {
    (0..WORKERS)
        .map(|w| {
            let text = std::fs::read_to_string(env.dir.path().join(format!("ack-{w}")))
                .unwrap_or_default();
            // A line is acknowledged once it is whole (a kill can cut the last write).
            let lines = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .map(|l| l.trim_end().to_owned())
                .collect();
            (w, lines)
        })
        .collect()
}

fn check_trial(env: &Env, trial: u64) -> usize {
    let refs = env.store();
    let home = Home::at(env.home()).unwrap();
    let all = acks(env);
    let mut acknowledged = 0;
    // Events: every acknowledged (writer, seq) is in the shared job's log.
    let log = prodigy::events::EventLog::new(refs.clone(), "api", "mixed").unwrap();
    let mut have: BTreeMap<String, HashSet<u64>> = BTreeMap::new();
    prodigy::events::query::stream(
        &log,
        &prodigy::events::Filter::default(),
        false,
        true,
        |line| {
            let r = line.record.unwrap();
            assert!(
                have.entry(r.writer).or_default().insert(r.seq),
                "trial {trial}: a record stored twice"
            );
            Ok(true)
        },
    )
    .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
    let queue = prodigy::dlq::DeadLetterQueue::new(refs.clone(), "api", "mixed").unwrap();
    let states = JobStateManager::new(refs.clone(), "api").unwrap();
    let shared: RefName = "state/api/shared".parse().unwrap();
    let shared_log: HashSet<String> = match refs.log(&shared) {
        Ok(log) => log.entries.iter().map(|e| e.new.to_string()).collect(),
        Err(_) => HashSet::new(),
    };
    for (w, lines) in &all {
        let mut last_checkpoint = None;
        for line in lines {
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("e"), Some(writer), Some(seq)) => {
                    let seq: u64 = seq.parse().unwrap();
                    let got = have
                        .get(writer)
                        .map_or(0, |s| (0..=seq).filter(|q| s.contains(q)).count());
                    assert_eq!(
                        got as u64,
                        seq + 1,
                        "trial {trial}: worker {w} lost events up to seq {seq}"
                    );
                }
                (Some("d"), Some(item), Some(message)) => {
                    let found = queue
                        .get(item)
                        .unwrap_or_else(|e| panic!("trial {trial}: {e}"))
                        .is_some_and(|i| {
                            i.failure_history.iter().any(|f| f.error_message == message)
                        });
                    assert!(
                        found,
                        "trial {trial}: worker {w} lost the DLQ failure {message:?} of {item}"
                    );
                }
                (Some("c"), Some(version), Some(done)) => {
                    last_checkpoint = Some((
                        version.parse::<u32>().unwrap(),
                        done.parse::<usize>().unwrap(),
                    ));
                }
                (Some("r"), Some(id), None) => {
                    assert!(
                        shared_log.contains(id),
                        "trial {trial}: worker {w}'s ref update {id} is not in the reflog"
                    );
                }
                (Some("writer"), _, _) => continue,
                _ => panic!("trial {trial}: bad ack line {line:?}"),
            }
            acknowledged += 1;
        }
        if let Some((version, done)) = last_checkpoint {
            let state = states
                .load(&format!("job-{w}"))
                .unwrap_or_else(|e| panic!("trial {trial}: worker {w}'s job: {e}"));
            assert!(
                state.checkpoint.version >= version,
                "trial {trial}: worker {w}'s checkpoint went back"
            );
            assert!(
                state.results.len() >= done,
                "trial {trial}: worker {w} lost results"
            );
        }
    }
    // Every ref reads and names a good object; fsck finds no error.
    for (name, id) in refs.list(None).unwrap() {
        refs.objects()
            .read(&id)
            .unwrap_or_else(|e| panic!("trial {trial}: {name} names a bad object: {e}"));
    }
    let report = fsck::fsck(&home, &refs).unwrap();
    let errors: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "trial {trial}: {errors:?}");
    acknowledged
}

#[test]
#[allow(clippy::print_stderr)] // the figures of a long run
fn eight_mixed_writers_killed_at_random_lose_nothing_acknowledged() {
    let trials = env_knob("PRODIGY_MIXED_TRIALS", 12);
    let seed = env_knob("PRODIGY_TORTURE_SEED", 0x70_27_0e);
    let mut rng = Rng(seed | 1);
    let mut total = 0;
    for trial in 0..trials {
        let env = Env::new();
        let children: Vec<_> = (0..WORKERS)
            .map(|w| {
                worker::spawn(
                    "mixed",
                    &env.home(),
                    &env.dir.path().join(format!("ack-{w}")),
                    &[("PRODIGY_IT_ID", w.to_string())],
                )
            })
            .collect();
        // Kill once the workers together acknowledged a random amount of work, after a
        // random extra moment: loads vary too much for wall-clock delays alone.
        let wanted = 8 + rng.below(80) as usize;
        let started = Instant::now();
        while acks(&env).iter().map(|(_, l)| l.len()).sum::<usize>() < wanted {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "trial {trial}: no progress"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        for mut child in children {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
        total += check_trial(&env, trial);
    }
    eprintln!("{trials} trials, {total} acknowledged operations checked");
    assert!(
        total as u64 >= trials * 8,
        "only {total} operations acknowledged in {trials} trials"
    );
}

/// A waiter blocked on a ref's lock gets it within 100 ms of the holder's SIGKILL.
#[test]
#[allow(clippy::print_stderr)] // the figures of a long run
fn a_killed_lock_holder_releases_its_waiter_at_once() {
    let trials = env_knob("PRODIGY_LOCK_TRIALS", 100);
    let env = Env::new();
    let name: RefName = "events/api/locked".parse().unwrap();
    let refs = env.store();
    let id = refs
        .objects()
        .write(prodigy::ObjectType::Blob, b"x")
        .unwrap();
    let mut slowest = Duration::ZERO;
    for trial in 0..trials {
        let ack = env.dir.path().join(format!("lock-{trial}"));
        let mut holder = worker::spawn(
            "hold-lock",
            &env.home(),
            &ack,
            &[("PRODIGY_IT_REF", name.to_string())],
        );
        let started = Instant::now();
        while std::fs::read_to_string(&ack).map_or(true, |t| !t.contains("locked")) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the holder never locked"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let refs = refs.clone();
            let name = name.clone();
            std::thread::spawn(move || {
                refs.update(&name, id, Expect::Any, "after the holder died")
                    .unwrap();
                tx.send(Instant::now()).unwrap();
            })
        };
        // The waiter is blocked in the kernel on the lock.
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            rx.try_recv().is_err(),
            "trial {trial}: the waiter did not wait"
        );
        let killed = Instant::now();
        holder.kill().unwrap(); // SIGKILL
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiter never got the lock");
        holder.wait().unwrap();
        waiter.join().unwrap();
        let waited = got.saturating_duration_since(killed);
        slowest = slowest.max(waited);
        assert!(
            waited < Duration::from_millis(100),
            "trial {trial}: the waiter took {waited:?}"
        );
    }
    eprintln!("slowest of {trials}: {slowest:?}");
}
