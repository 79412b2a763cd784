//! The event log's speed beside its floor, in one run (`cargo bench --bench event_log`).
//!
//! 1. baseline: the same JSON Lines appended to one file, one `fdatasync` per 1,000 lines,
//!    timed before each run of every timed row, the ratios to the median of all its runs;
//! 2. one `EventLogger`, 1,000,000 events, one durable batch per 1,000 (median of 5);
//! 3. 8 writer processes at once, 125,000 events each, into one job (timed from all of them
//!    ready, their events built, to the last one exited; median of 5);
//! 4. `prodigy events stats` and `prodigy events show --json > /dev/null` on 1,000,000 events;
//! 5. bytes on disk per event against the raw JSON Lines; peak memory of `events show`.
//!
//! `EVENTS=N` changes the event count (default 1,000,000), `WRITERS=N` the process count.

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use prodigy::Home;
use prodigy::events::record::{EventRecord, Metadata, RECORD_VERSION, new_id, now_timestamp};
use prodigy::events::{EventLogger, MapReduceEvent, Thresholds};
use support::{env_number, scratch_dir, time_cli};

/// Runs of each timed row (and of the baseline beside each): 5, as the logger's median of 3
/// moved from 1.66x to 1.95x between runs of the same code.
const RUNS: usize = 5;

fn event(n: u64) -> MapReduceEvent {
    let item_id = format!("item-{n:07}");
    let agent_id = format!("agent-{}", n % 16);
    match n % 4 {
        0 => MapReduceEvent::AgentStarted {
            job_id: "bench".into(),
            agent_id,
            item_id,
            worktree: format!("agent-{}-wt", n % 16),
            attempt: 1,
        },
        1 => MapReduceEvent::AgentProgress {
            job_id: "bench".into(),
            agent_id,
            item_id,
            step: "analyze".into(),
            progress_pct: 50.0,
        },
        2 => MapReduceEvent::AgentCompleted {
            job_id: "bench".into(),
            agent_id,
            item_id,
            duration_ms: 1000 + n % 5000,
            commits: vec![format!("{:040x}", n * 7919)],
            json_log_location: None,
            attempt: None,
            output: None,
        },
        _ => MapReduceEvent::QueueDepthChanged {
            job_id: "bench".into(),
            pending: (n % 1000) as usize,
            active: 8,
            completed: n as usize,
        },
    }
}

fn write_events(
    home: &Path,
    job: &str,
    count: u64,
    max_merge: usize,
    before_clock: impl FnOnce(),
) -> Duration {
    let home = Home::at(home).unwrap();
    let thresholds = Thresholds {
        max_events: 1000,
        max_bytes: 64 << 20,
        max_delay: Duration::from_secs(3600),
        max_merge,
    };
    let logger = EventLogger::new(&home, "bench", job, thresholds).unwrap();
    // Built before the clock starts, as the baseline's lines are serialised before it.
    let events: Vec<MapReduceEvent> = (0..count).map(event).collect();
    before_clock();
    let start = Instant::now();
    for event in events {
        logger.log(event).unwrap();
    }
    logger.shutdown().unwrap();
    start.elapsed()
}

/// The floor: the same records as JSON Lines (serialized beforehand, outside the timing),
/// appended to one file, `fdatasync` every 1,000 lines.
fn baseline(path: &Path, count: u64) -> (Duration, u64) {
    let chunks = full_records(count);
    let mut file = std::fs::File::create(path).unwrap();
    let start = Instant::now();
    for chunk in &chunks {
        file.write_all(chunk).unwrap();
        file.sync_data().unwrap();
    }
    (start.elapsed(), std::fs::metadata(path).unwrap().len())
}

/// `count` full records of a new writer as JSON Lines, 1,000 lines a chunk: each call's
/// records are new (ids, writer, timestamps), the shape and size the same.
fn full_records(count: u64) -> Vec<Vec<u8>> {
    let metadata = Metadata {
        host: Some("bench".into()),
        pid: Some(std::process::id()),
        worktree: None,
        agent_id: None,
        extra: Default::default(),
    };
    let writer = new_id();
    let mut chunks = Vec::new();
    let mut buf = Vec::with_capacity(1 << 20);
    for n in 0..count {
        let record = EventRecord {
            v: RECORD_VERSION,
            id: new_id(),
            timestamp: now_timestamp(),
            writer: writer.clone(),
            seq: n,
            correlation_id: None,
            event: serde_json::to_value(event(n)).unwrap(),
            metadata: metadata.clone(),
        };
        serde_json::to_writer(&mut buf, &record).unwrap();
        buf.push(b'\n');
        if (n + 1) % 1000 == 0 || n + 1 == count {
            chunks.push(std::mem::take(&mut buf));
        }
    }
    chunks
}

fn disk_bytes(dir: &Path) -> (u64, u64) {
    let (mut size, mut blocks) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                use std::os::unix::fs::MetadataExt;
                size += m.len();
                blocks += m.blocks() * 512;
            }
        }
    }
    (size, blocks)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `--writer HOME JOB N [MAX_MERGE]`: one process's logger. `--writer-on-go`: the same,
    // once its events are built it says `ready` and waits for a line on standard input
    // (so that the processes' clock starts when all are ready to log).
    let mode = args.get(1).map(String::as_str);
    if mode == Some("--writer") || mode == Some("--writer-on-go") {
        let elapsed = write_events(
            Path::new(&args[2]),
            &args[3],
            args[4].parse().unwrap(),
            // A fifth argument sets the group commit's limit (1: every batch its own).
            args.get(5)
                .map_or(Thresholds::default().max_merge, |m| m.parse().unwrap()),
            || {
                if mode == Some("--writer-on-go") {
                    println!("ready");
                    std::io::stdout().flush().unwrap();
                    let mut go = String::new();
                    std::io::stdin().read_line(&mut go).unwrap();
                }
            },
        );
        println!("{}", elapsed.as_secs_f64());
        return;
    }
    let count = env_number("EVENTS", 1_000_000);
    let writers = env_number("WRITERS", 8);
    let dir = scratch_dir("prodigy-events-bench");
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();

    // The baseline is timed beside each timed row (before each of its runs), and every
    // ratio is to the median of all its runs: one run of it alone moved the ratios with
    // the disk's mood of the moment. Each run writes a file of its own (the first is the
    // full records' input below); none is removed before the end, as ext4 without a
    // journal slows every new file after a deletion.
    let raw = dir.path().join("baseline.jsonl");
    let mut base_times = Vec::new();
    let base_run = |base_times: &mut Vec<Duration>| -> u64 {
        let path = if base_times.is_empty() {
            raw.clone()
        } else {
            dir.path()
                .join(format!("baseline-{}.jsonl", base_times.len()))
        };
        let (time, bytes) = baseline(&path, count);
        base_times.push(time);
        bytes
    };
    let home = dir.path().join("home");
    let batches = |job: &str| {
        let refs = prodigy::RefStore::new(&Home::at(&home).unwrap(), Default::default());
        let log = prodigy::events::EventLog::new(refs, "bench", job).unwrap();
        let totals = log.totals().unwrap().unwrap();
        assert_eq!(totals.total.count, count, "events lost");
        totals.batches
    };
    // A home past its first job: a new home's first writes also make its temp directory
    // and fan-out directories (a mkdir and fsyncs each), once; the warm-up makes some of
    // them, and the timed jobs the rest.
    write_events(
        &home,
        "warm-up",
        count / 10,
        Thresholds::default().max_merge,
        || {},
    );
    let mut raw_bytes = 0;
    let strict = support::median(
        (0..RUNS)
            .map(|run| {
                raw_bytes = base_run(&mut base_times);
                let job = if run == 0 {
                    "strict".into()
                } else {
                    format!("strict-{run}")
                };
                write_events(&home, &job, count, 1, || {})
            })
            .collect(),
    );
    let single = write_events(
        &home,
        "single",
        count,
        Thresholds::default().max_merge,
        || {},
    );
    println!("| measurement | result |\n|---|---|");
    println!(
        "| baseline: JSON Lines + fdatasync per 1,000 (the first {RUNS} runs) | {:.0} events/s ({:.2} s) |",
        rate(count, support::median(base_times.clone())),
        support::median(base_times.clone()).as_secs_f64()
    );
    println!(
        "| one EventLogger, every 1,000 events its own durable batch (median of {RUNS}) | {:.0} events/s ({:.2} s, {} batches) |",
        rate(count, strict),
        strict.as_secs_f64(),
        batches("strict"),
    );
    println!(
        "| one EventLogger, default (backlog merged, up to 4,000 per batch) | {:.0} events/s ({:.2} s, {} batches) |",
        rate(count, single),
        single.as_secs_f64(),
        batches("single"),
    );
    // The jobs hold the same kind of events: (RUNS + 1.1) × count of them.
    let (size, blocks) = disk_bytes(&home.join("objects"));
    let stored = (RUNS as u64 + 1) * count + count / 10;
    println!(
        "| bytes on disk per event | {:.1} (file sizes; {:.1} in blocks) vs {:.1} raw JSONL: {:.3} of raw |",
        size as f64 / stored as f64,
        blocks as f64 / stored as f64,
        raw_bytes as f64 / count as f64,
        size as f64 / stored as f64 / (raw_bytes as f64 / count as f64)
    );
    let zstd3 = zstd::encode_all(std::fs::File::open(&raw).unwrap(), 3)
        .unwrap()
        .len();
    println!(
        "| whole-file zstd -3 of the raw JSONL (reference) | {:.3} of raw |",
        zstd3 as f64 / raw_bytes as f64
    );

    let (stats, _) = time_cli(&home, &["events", "stats", "--repo", "bench", "single"], 5);
    println!(
        "| `events stats` over {count} events (median of 5, whole process) | {:.1} ms |",
        stats.as_secs_f64() * 1000.0
    );
    let (show, show_rss) = time_cli(
        &home,
        &["events", "show", "--repo", "bench", "single", "--json"],
        3,
    );
    println!(
        "| `events show --json > /dev/null` (median of 3) | {:.0} events/s ({:.2} s), peak RSS {} KiB |",
        rate(count, show),
        show.as_secs_f64(),
        show_rss
    );
    let small = count / 10;
    write_events(
        &home,
        "small",
        small,
        Thresholds::default().max_merge,
        || {},
    );
    let (_, small_rss) = time_cli(
        &home,
        &["events", "show", "--repo", "bench", "small", "--json"],
        1,
    );
    println!(
        "| peak RSS of `events show` at {small} events vs {count} | {small_rss} KiB vs {show_rss} KiB |"
    );

    let per = count / writers;
    // The processes build their events first, as the baseline's lines are built before
    // its clock; the clock runs from all of them ready to log until the last has exited.
    let concurrent = |job: &str| -> Duration {
        let mut children: Vec<_> = (0..writers)
            .map(|_| {
                Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--writer-on-go",
                        home.to_str().unwrap(),
                        job,
                        &per.to_string(),
                    ])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in &mut children {
            let mut ready = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
                &mut ready,
            )
            .unwrap();
            assert_eq!(ready, "ready\n");
        }
        let start = Instant::now();
        for c in &mut children {
            c.stdin.take().unwrap().write_all(b"go\n").unwrap();
        }
        for c in children {
            assert!(c.wait_with_output().unwrap().status.success());
        }
        let wall = start.elapsed();
        let log = prodigy::events::EventLog::new(
            prodigy::RefStore::new(&Home::at(&home).unwrap(), Default::default()),
            "bench",
            job,
        )
        .unwrap();
        let total = log.totals().unwrap().unwrap().total.count;
        assert_eq!(total, per * writers, "events lost");
        wall
    };
    let wall = support::median(
        (0..RUNS)
            .map(|run| {
                base_run(&mut base_times);
                concurrent(&format!("concurrent-{run}"))
            })
            .collect(),
    );
    let total = per * writers;
    println!(
        "| {writers} writer processes, {per} events each, one job (median of {RUNS}) | {:.0} events/s aggregate ({:.2} s), {total} of {} present |",
        rate(per * writers, wall),
        wall.as_secs_f64(),
        per * writers
    );
    // Issue 25's targets: the commands users run, each beside its baseline in this run.
    let exe = env!("CARGO_BIN_EXE_prodigy");
    // Each run appends lines of its own, so that no run finds its batch objects stored
    // by the one before (full records: new writers and ids; bare events get them).
    let pipe = |base_times: &mut Vec<Duration>, job: &str, inputs: &[&Path]| {
        let mut times = Vec::new();
        for (run, input) in inputs.iter().enumerate() {
            base_run(base_times);
            let script = format!(
                "cat '{}' | '{exe}' events append --repo bench --job {job}-{run} > /dev/null",
                input.display()
            );
            let start = Instant::now();
            let out = Command::new("sh")
                .args(["-c", &script])
                .env("PRODIGY_HOME", &home)
                .output()
                .unwrap();
            times.push(start.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        support::median(times)
    };
    // The first run reads the baseline's first file; each other run, full records of
    // their own.
    let others: Vec<_> = (1..RUNS)
        .map(|run| {
            let path = dir.path().join(format!("full-{run}.jsonl"));
            std::fs::write(&path, full_records(count).concat()).unwrap();
            path
        })
        .collect();
    let full_inputs: Vec<&Path> = std::iter::once(raw.as_path())
        .chain(others.iter().map(|p| p.as_path()))
        .collect();
    let full = pipe(&mut base_times, "pipe-full", &full_inputs);
    let bare_path = dir.path().join("bare.jsonl");
    {
        let mut bare = std::io::BufWriter::new(std::fs::File::create(&bare_path).unwrap());
        for n in 0..count {
            serde_json::to_writer(&mut bare, &event(n)).unwrap();
            bare.write_all(b"\n").unwrap();
        }
    }
    let bare = pipe(&mut base_times, "pipe-bare", &[bare_path.as_path(); RUNS]);
    let base_time = support::median(base_times.clone());
    println!(
        "| the baseline, every run (median of {}, before each timed run above) | {:.2} s (fastest {:.2} s, slowest {:.2} s) |",
        base_times.len(),
        base_time.as_secs_f64(),
        base_times.iter().min().unwrap().as_secs_f64(),
        base_times.iter().max().unwrap().as_secs_f64(),
    );
    let ratio = |d: Duration| d.as_secs_f64() / base_time.as_secs_f64();
    println!(
        "| `prodigy events append` from a pipe, the baseline's full records (median of {RUNS}) | {:.2} s: {:.2}x the baseline |",
        full.as_secs_f64(),
        ratio(full)
    );
    println!(
        "| `prodigy events append` from a pipe, bare events (median of {RUNS}) | {:.2} s: {:.2}x the baseline |",
        bare.as_secs_f64(),
        ratio(bare)
    );
    // `events show --json` beside `zstd -dc` of the same output as one zstd -1 file.
    let shown = dir.path().join("shown.jsonl");
    let out = Command::new(exe)
        .args(["events", "show", "--repo", "bench", "strict", "--json"])
        .env("PRODIGY_HOME", &home)
        .stdout(std::fs::File::create(&shown).unwrap())
        .status()
        .unwrap();
    assert!(out.success());
    let packed = dir.path().join("shown.jsonl.zst");
    assert!(
        Command::new("zstd")
            .args(["-1", "-q", "-f", "-o"])
            .arg(&packed)
            .arg(&shown)
            .status()
            .unwrap()
            .success()
    );
    let mut unzstd = Vec::new();
    let mut show_times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let ok = Command::new("zstd")
            .args(["-dc", "-q"])
            .arg(&packed)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        unzstd.push(start.elapsed());
        assert!(ok);
        let (t, _) = time_cli(
            &home,
            &["events", "show", "--repo", "bench", "strict", "--json"],
            1,
        );
        show_times.push(t);
    }
    let (unzstd, show) = (support::median(unzstd), support::median(show_times));
    println!(
        "| `events show --json > /dev/null` beside `zstd -dc` of its output as one zstd -1 file (medians of 5) | {:.3} s vs {:.3} s: {:.2}x |",
        show.as_secs_f64(),
        unzstd.as_secs_f64(),
        show.as_secs_f64() / unzstd.as_secs_f64()
    );
    println!(
        "| one EventLogger, a durable batch per 1,000, beside the baseline | {:.2}x the baseline's time |",
        ratio(strict)
    );
    println!(
        "| {writers} writer processes, one job, beside the baseline (the same event count) | {:.2}x the baseline's time |",
        ratio(wall)
    );
    // `events ls` over many jobs: it reads one node per job, whatever their length.
    let jobs = env_number("LS_JOBS", 1000);
    if jobs > 0 {
        let per_job = 10_000;
        let ls_home = dir.path().join("ls-home");
        let start = Instant::now();
        for j in 0..jobs {
            write_events(
                &ls_home,
                &format!("job-{j:04}"),
                per_job,
                Thresholds::default().max_merge,
                || {},
            );
        }
        let filled = start.elapsed();
        let (ls, _) = time_cli(&ls_home, &["events", "ls", "--repo", "bench"], 5);
        println!(
            "| `events ls` over {jobs} jobs, {} events (median of 5, whole process) | {:.1} ms (filling took {:.1} s) |",
            jobs * per_job,
            ls.as_secs_f64() * 1000.0,
            filled.as_secs_f64()
        );
    }
    println!(
        "\nmachine: {} cores, {}; {count} events",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        String::from_utf8_lossy(&Command::new("uname").arg("-sr").output().unwrap().stdout).trim()
    );
}
