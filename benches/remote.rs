//! The remote store beside the local one, in one run. Run it with `benches/remote.sh`,
//! which starts the S3-compatible server (s3s-fs) on loopback and sets the AWS_* variables
//! and `REMOTE_STORE`; the baseline is the local store on /var/tmp in the same run.
//!
//! 1. durable appends, one after another, of 1 event and of 1,000 events: appends per
//!    second and the latency of each (median, p99), local and remote;
//! 2. `prodigy events show --json > /dev/null` on `EVENTS` events (default 100,000):
//!    local, remote with a cold cache (a fresh home each run), remote with a warm cache.
//!
//! `APPENDS=N` changes the number of appends timed (default 200).

// A benchmark program: its report is its output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

mod support;

use prodigy::events::{EventLogger, MapReduceEvent, Thresholds};
use prodigy::lock::LockOptions;
use prodigy::{Home, RefStore};
use support::{env_number, scratch_dir, time_cli};

fn event(n: u64) -> MapReduceEvent {
    MapReduceEvent::AgentCompleted {
        job_id: "bench".into(),
        agent_id: format!("agent-{}", n % 16),
        item_id: format!("item-{n:07}"),
        duration_ms: 1000 + n % 5000,
        commits: vec![format!("{:040x}", n * 7919)],
        json_log_location: None,
        attempt: None,
        output: None,
    }
}

fn thresholds() -> Thresholds {
    Thresholds {
        max_events: 1000,
        max_bytes: 64 << 20,
        max_delay: Duration::from_secs(3600),
        max_merge: 1,
    }
}

/// `appends` durable appends of `size` events each; the latency of each.
fn appends(home: &Home, job: &str, appends: u64, size: u64) -> Vec<Duration> {
    let refs = RefStore::new(home, LockOptions::from_env());
    let logger = EventLogger::with_refs(refs, "bench", job, thresholds()).unwrap();
    // The first append pays for the connection and the conditional-write check.
    logger.log(event(0)).unwrap();
    logger.flush().unwrap();
    let mut times = Vec::with_capacity(appends as usize);
    for a in 0..appends {
        for n in 0..size {
            logger.log(event(a * size + n)).unwrap();
        }
        let start = Instant::now();
        logger.flush().unwrap();
        times.push(start.elapsed());
    }
    logger.shutdown().unwrap();
    times.sort();
    times
}

fn report(label: &str, times: &[Duration]) {
    let total: Duration = times.iter().sum();
    let median = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!(
        "{label:<34} {:>9.0} appends/s   median {:>7.2} ms   p99 {:>7.2} ms",
        times.len() as f64 / total.as_secs_f64(),
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

fn refs_of(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn main() {
    let url = std::env::var("REMOTE_STORE")
        .expect("run this benchmark with benches/remote.sh (it starts the S3 server)");
    let n_appends = env_number("APPENDS", 200);
    let events = env_number("EVENTS", 100_000);
    let dir = scratch_dir("prodigy-bench-remote");
    let local = Home::at(dir.path().join("local")).unwrap();
    let remote = Home::at(dir.path().join("remote"))
        .unwrap()
        .with_store(Some(url.clone()));

    println!("durable appends, one after another ({n_appends} each):");
    for size in [1, 1000] {
        report(
            &format!("  local store, {size} event(s)"),
            &appends(&local, &format!("a{size}"), n_appends, size),
        );
        report(
            &format!("  remote store, {size} event(s)"),
            &appends(&remote, &format!("a{size}"), n_appends, size),
        );
    }

    // A log of `events` events in both stores.
    for home in [&local, &remote] {
        let refs = RefStore::new(home, LockOptions::from_env());
        let logger = EventLogger::with_refs(refs, "bench", "show", thresholds()).unwrap();
        for n in 0..events {
            logger.log(event(n)).unwrap();
        }
        logger.shutdown().unwrap();
    }
    println!("events show --json > /dev/null, {events} events (median of 5 runs):");
    let show = ["events", "show", "show", "--repo", "bench", "--json"];
    let with_store = |store: &str| -> Vec<String> {
        let mut args = vec!["--store".to_owned(), store.to_owned()];
        args.extend(show.iter().map(|s| s.to_string()));
        args
    };
    let local_args = with_store("");
    let (t, _) = time_cli(local.root(), &refs_of(&local_args), 5);
    let rate = |t: Duration| events as f64 / t.as_secs_f64();
    println!(
        "  {:<32} {:>8.3} s  {:>10.0} events/s",
        "local store",
        t.as_secs_f64(),
        rate(t)
    );
    let remote_args = with_store(&url);
    let mut cold = Vec::new();
    for run in 0..5 {
        let fresh = dir.path().join(format!("cold-{run}"));
        cold.push(time_cli(&fresh, &refs_of(&remote_args), 1).0);
    }
    let t = support::median(cold);
    println!(
        "  {:<32} {:>8.3} s  {:>10.0} events/s",
        "remote store, cold cache",
        t.as_secs_f64(),
        rate(t)
    );
    let warm = dir.path().join("cold-0");
    let (t, _) = time_cli(&warm, &refs_of(&remote_args), 5);
    println!(
        "  {:<32} {:>8.3} s  {:>10.0} events/s",
        "remote store, warm cache",
        t.as_secs_f64(),
        rate(t)
    );
}
