//! Worker processes for the concurrency and crash tests. The test binary re-runs itself
//! with `PRODIGY_IT_WORKER` set and only this test selected; the worker reports what it has
//! acknowledged by appending lines to a file (each line is one `write`, so it survives the
//! worker's SIGKILL).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use prodigy::lock::LockOptions;
use prodigy::{Expect, Home, ObjectType, RefError, RefStore};

/// Starts a worker process of `kind` on `home`, reporting to `ack`.
pub fn spawn(kind: &str, home: &Path, ack: &Path, extra: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "worker::worker",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("PRODIGY_IT_WORKER", kind)
    .env("PRODIGY_IT_HOME", home)
    .env("PRODIGY_IT_ACK", ack)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in extra {
        if *k == "CWD" {
            cmd.current_dir(v);
        } else {
            cmd.env(k, v);
        }
    }
    cmd.spawn().unwrap()
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// The worker's entry point; does nothing unless started by [`spawn`].
#[test]
#[ignore = "run only as a worker process by other tests"]
fn worker() {
    let Ok(kind) = std::env::var("PRODIGY_IT_WORKER") else {
        return;
    };
    let home = Home::at(var("PRODIGY_IT_HOME")).unwrap();
    let refs = RefStore::new(&home, LockOptions::default());
    let mut ack = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(var("PRODIGY_IT_ACK"))
        .unwrap();
    match kind.as_str() {
        "cas" => cas(&refs, &mut ack),
        "crash" => crash(&refs, &mut ack),
        "storage" => storage_dirs(&mut ack),
        "events" => events(&home, &mut ack),
        "events-crash" => events_crash(&home, &mut ack),
        "dlq" => dlq_adds(&home, &mut ack),
        "mixed" => mixed(&home, &refs, &mut ack),
        "hold-lock" => hold_lock(&refs, &mut ack),
        other => panic!("unknown worker {other}"),
    }
}

/// 200 (or PRODIGY_IT_COUNT) compare-and-swap updates of one ref, retrying on conflict.
fn cas(refs: &RefStore, ack: &mut std::fs::File) {
    let name = var("PRODIGY_IT_REF").parse().unwrap();
    let me = var("PRODIGY_IT_ID");
    let count: usize = var("PRODIGY_IT_COUNT").parse().unwrap_or(200);
    for i in 0..count {
        let id = refs
            .objects()
            .write(
                ObjectType::Blob,
                format!("worker {me} update {i}").as_bytes(),
            )
            .unwrap();
        loop {
            let old = refs.read(&name).unwrap();
            let expect = old.map_or(Expect::Absent, Expect::Value);
            match refs.update(&name, id, expect, &format!("worker {me} update {i}")) {
                Ok(_) => break,
                Err(RefError::Conflict { .. }) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        writeln!(ack, "{id}").unwrap();
    }
}

/// Forever: a single durable object, a batch of objects, and a compare-and-swap of the
/// trial's ref to a `seq N` object; each acknowledged ref update is reported as `N`.
fn crash(refs: &RefStore, ack: &mut std::fs::File) {
    let name = var("PRODIGY_IT_REF").parse().unwrap();
    let trial = var("PRODIGY_IT_ID");
    let store = refs.objects();
    writeln!(ack, "ready").unwrap();
    for seq in 0u64.. {
        let payload = format!(
            "{{\"trial\":\"{trial}\",\"seq\":{seq},\"pad\":\"{}\"}}",
            "x".repeat((seq % 7) as usize * 100)
        );
        let id = store.write(ObjectType::Item, payload.as_bytes()).unwrap();
        let mut batch = store.batch();
        for k in 0..(seq % 5) {
            batch
                .add(ObjectType::Blob, format!("{trial} {seq} {k}").as_bytes())
                .unwrap();
        }
        batch.commit().unwrap();
        let old = refs.read(&name).unwrap();
        refs.update(
            &name,
            id,
            old.map_or(Expect::Absent, Expect::Value),
            &format!("seq {seq}"),
        )
        .unwrap();
        writeln!(ack, "{seq}").unwrap();
    }
}

/// The directory API of `prodigy::storage`, which reads `PRODIGY_HOME` from the process
/// environment: reported by a worker so the test can set that environment.
fn storage_dirs(ack: &mut std::fs::File) {
    for dir in [
        prodigy::storage::get_global_events_dir("api"),
        prodigy::storage::get_global_dlq_dir("api"),
        prodigy::storage::get_global_state_dir("api"),
    ] {
        writeln!(ack, "{}", dir.unwrap().display()).unwrap();
    }
    let err = prodigy::storage::get_global_events_dir("../x").unwrap_err();
    writeln!(ack, "{err}").unwrap();
}

/// 40 appends of 50 events from the current directory's repository: one logger, one
/// writer, flushed by the size threshold.
fn events(home: &Home, ack: &mut std::fs::File) {
    use prodigy::events::{EventLogger, MapReduceEvent, Thresholds};
    let repo = prodigy::resolve_repo_name(home, &std::env::current_dir().unwrap()).unwrap();
    let thresholds = Thresholds {
        max_events: 50,
        max_bytes: 1 << 30,
        max_delay: std::time::Duration::from_secs(3600),
        // Exactly 40 appends of 50 events each.
        max_merge: 1,
    };
    let logger = EventLogger::new(home, &repo, "shared-job", thresholds).unwrap();
    for i in 0..2000u32 {
        logger
            .log(MapReduceEvent::AgentProgress {
                job_id: "shared-job".into(),
                agent_id: var("PRODIGY_IT_ID"),
                item_id: format!("item-{i}"),
                step: "step".into(),
                progress_pct: 1.0,
            })
            .unwrap();
    }
    writeln!(ack, "{}", logger.writer()).unwrap();
    logger.shutdown().unwrap();
}

/// Forever: log a few events, flush, and report the last seq that `flush` acknowledged.
fn events_crash(home: &Home, ack: &mut std::fs::File) {
    use prodigy::events::{EventLogger, MapReduceEvent, Thresholds};
    let thresholds = Thresholds {
        max_events: 1 << 20,
        max_bytes: 1 << 30,
        max_delay: std::time::Duration::from_secs(3600),
        ..Thresholds::default()
    };
    let logger = EventLogger::new(home, "api", &var("PRODIGY_IT_JOB"), thresholds).unwrap();
    writeln!(ack, "writer {}", logger.writer()).unwrap();
    let mut seq = 0u64;
    for round in 0u64.. {
        for _ in 0..(1 + round % 13) {
            logger
                .log(MapReduceEvent::CheckpointCreated {
                    job_id: "crash".into(),
                    version: seq as u32,
                    agents_completed: 0,
                })
                .unwrap();
            seq += 1;
        }
        logger.flush().unwrap();
        writeln!(ack, "{}", seq - 1).unwrap();
    }
}

/// Adds one failure for each of 50 items, in an order of its own.
fn dlq_adds(home: &Home, ack: &mut std::fs::File) {
    let queue = prodigy::dlq::DeadLetterQueue::new(
        RefStore::new(home, LockOptions::default()),
        "api",
        "contended",
    )
    .unwrap();
    let me: u64 = var("PRODIGY_IT_ID").parse().unwrap();
    for k in 0..50u64 {
        let item = (k * 7 + me * 13) % 50;
        let failure = prodigy::dlq::Failure {
            error_message: format!("worker {me} failed item {item}"),
            exit_code: Some(1),
            agent_id: Some(format!("worker-{me}")),
            ..Default::default()
        };
        queue
            .add(
                &format!("item-{item:02}"),
                serde_json::json!({"n": item}),
                failure,
            )
            .unwrap();
        writeln!(ack, "{item}").unwrap();
    }
}

/// Forever, in an order of its own: events logged and flushed to a shared job (`e WRITER
/// SEQ`), a DLQ failure added to a shared queue (`d ITEM N`), a checkpoint of its own job
/// saved (`c VERSION DONE`), a compare-and-swap of a shared ref (`r ID`). Each line is
/// written once the operation returned: acknowledged.
fn mixed(home: &Home, refs: &RefStore, ack: &mut std::fs::File) {
    use prodigy::events::{EventLogger, MapReduceEvent, Thresholds};
    use prodigy::state::{ItemResult, ItemStatus, JobSpec, JobStateManager};
    let me: u64 = var("PRODIGY_IT_ID").parse().unwrap();
    let thresholds = Thresholds {
        max_events: 1 << 20,
        max_bytes: 1 << 30,
        max_delay: std::time::Duration::from_secs(3600),
        ..Thresholds::default()
    };
    let logger = EventLogger::new(home, "api", "mixed", thresholds).unwrap();
    let queue = prodigy::dlq::DeadLetterQueue::new(refs.clone(), "api", "mixed").unwrap();
    let states = JobStateManager::new(refs.clone(), "api").unwrap();
    let job = format!("job-{me}");
    let mut state = states
        .create(JobSpec {
            target_branch: None,
            id: job.clone(),
            repo: "api".into(),
            repo_root: "/nowhere".into(),
            workflow_path: "/nowhere/w.yml".into(),
            workflow: serde_json::Value::Null,
            base_commit: "0".repeat(40),
            branch: format!("prodigy/{job}"),
            worktree: "/nowhere/wt".into(),
            agents_dir: "/nowhere/agents".into(),
            env: Default::default(),
            started: prodigy::events::record::now_timestamp(),
            workflow_source: String::new(),
            imported_from: None,
        })
        .unwrap();
    let shared: prodigy::RefName = "state/api/shared".parse().unwrap();
    writeln!(ack, "writer {}", logger.writer()).unwrap();
    let (mut seq, mut done) = (0u64, 0usize);
    for round in 0u64.. {
        match (round + me) % 4 {
            0 => {
                for _ in 0..(1 + round % 7) {
                    logger
                        .log(MapReduceEvent::QueueDepthChanged {
                            job_id: "mixed".into(),
                            pending: me as usize,
                            active: seq as usize,
                            completed: 0,
                        })
                        .unwrap();
                    seq += 1;
                }
                logger.flush().unwrap();
                writeln!(ack, "e {} {}", logger.writer(), seq - 1).unwrap();
            }
            1 => {
                let item = format!("item-{}", (round * 3 + me) % 20);
                let message = format!("worker {me} round {round}");
                queue
                    .add(
                        &item,
                        serde_json::json!({"round": round}),
                        prodigy::dlq::Failure {
                            error_message: message.clone(),
                            exit_code: Some(1),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                writeln!(ack, "d {item} {message}").unwrap();
            }
            2 => {
                let key = format!("k{done:06}");
                state.record(
                    &key,
                    ItemResult {
                        index: done,
                        status: ItemStatus::Done,
                        agent_id: format!("agent-{me}"),
                        attempts: 1,
                        duration_ms: 1,
                        commits: Vec::new(),
                        merged: false,
                        output: None,
                        error: None,
                    },
                );
                done += 1;
                states.save(&mut state, "item finished").unwrap();
                writeln!(ack, "c {} {done}", state.checkpoint.version).unwrap();
            }
            _ => {
                let id = refs
                    .objects()
                    .write(
                        ObjectType::Blob,
                        format!("worker {me} round {round}").as_bytes(),
                    )
                    .unwrap();
                let _gc = refs.write_guard().unwrap();
                loop {
                    let old = refs.read(&shared).unwrap();
                    match refs.update(
                        &shared,
                        id,
                        old.map_or(Expect::Absent, Expect::Value),
                        "cas",
                    ) {
                        Ok(_) => break,
                        Err(RefError::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
                writeln!(ack, "r {id}").unwrap();
            }
        }
    }
}

/// Takes the lock of `PRODIGY_IT_REF`, says `locked`, and holds it until killed.
fn hold_lock(refs: &RefStore, ack: &mut std::fs::File) {
    let name: prodigy::RefName = var("PRODIGY_IT_REF").parse().unwrap();
    let _ = refs.transact(&name, "held", |_| {
        writeln!(ack, "locked").unwrap();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    });
}
