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
        cmd.env(k, v);
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
