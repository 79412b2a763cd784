//! The dead-letter queue at 10,000 items (`cargo bench --bench dlq`): one more failure, and
//! `prodigy dlq list` / `dlq stats`, each a median of several runs.
//!
//! `ITEMS=N` changes the queue's size.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

mod support;

use support::{env_number, median, scratch_dir, time_cli};

use prodigy::dlq::{DeadLetterQueue, Failure};
use prodigy::{Home, RefStore};

fn failure(n: u64) -> Failure {
    let messages = [
        "file /src/mod{n}.rs:{n} not found",
        "agent timed out after {n}s",
        "test tests::case_{n} failed at src/lib.rs:{n}:9",
        "API rate limit exceeded (429), retry after {n} seconds",
    ];
    Failure {
        error_message: messages[(n % 4) as usize].replace("{n}", &n.to_string()),
        exit_code: Some(if n % 4 == 1 { 124 } else { 1 }),
        agent_id: Some(format!("agent-{}", n % 16)),
        step: Some("test".into()),
        duration_ms: Some(1000 + n % 5000),
        ..Failure::default()
    }
}

fn main() {
    let items = env_number("ITEMS", 10_000);
    let dir = scratch_dir("prodigy-dlq-bench");
    let home = Home::at(dir.path()).unwrap();
    let queue =
        DeadLetterQueue::new(RefStore::new(&home, Default::default()), "bench", "job").unwrap();
    let start = Instant::now();
    let mut n = 0;
    while n < items {
        let chunk: Vec<_> = (n..(n + 1000).min(items))
            .map(|i| {
                (
                    format!("item-{i:05}"),
                    serde_json::json!({"id": i, "path": format!("src/mod{i}.rs")}),
                    failure(i),
                )
            })
            .collect();
        n += chunk.len() as u64;
        queue.add_many(chunk).unwrap();
    }
    let filled = start.elapsed();
    assert_eq!(queue.stats().unwrap().items, items);

    let mut adds = Vec::new();
    for i in 0..21 {
        let start = Instant::now();
        queue
            .add(
                &format!("item-{:05}", i * 97 % items),
                serde_json::Value::Null,
                failure(i),
            )
            .unwrap();
        adds.push(start.elapsed());
    }
    let cli = |args: &[&str]| time_cli(dir.path(), args, 7).0;
    let add_cli = cli(&[
        "dlq",
        "add",
        "--repo",
        "bench",
        "--job",
        "job",
        "--item",
        "item-00042",
        "--error",
        "boom",
        "--exit-code",
        "1",
    ]);
    let list = cli(&["dlq", "list", "job", "--repo", "bench"]);
    let stats = cli(&["dlq", "stats", "job", "--repo", "bench"]);
    let analyze = cli(&["dlq", "analyze", "job", "--repo", "bench"]);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| measurement ({items} items in one job) | median |\n|---|---|");
    println!(
        "| `DeadLetterQueue::add` of one more failure (library, 21 runs) | {:.1} ms |",
        ms(median(adds))
    );
    println!(
        "| `prodigy dlq add` of one more failure (whole process, 7 runs) | {:.1} ms |",
        ms(add_cli)
    );
    println!(
        "| `prodigy dlq list` (whole process, 7 runs) | {:.1} ms |",
        ms(list)
    );
    println!(
        "| `prodigy dlq stats` (whole process, 7 runs) | {:.1} ms |",
        ms(stats)
    );
    println!(
        "| `prodigy dlq analyze` (whole process, 7 runs) | {:.1} ms |",
        ms(analyze)
    );
    println!(
        "| filling the queue ({} snapshots of 1,000 failures) | {:.2} s |",
        items.div_ceil(1000),
        filled.as_secs_f64()
    );
}
