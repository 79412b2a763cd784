//! What the benchmark programs share: knobs from the environment, a scratch directory on
//! the disk under test, medians, and timing whole `prodigy` processes.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A numeric knob from the environment (`EVENTS=…`, `ITEMS=…`), else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A scratch directory on `/var/tmp` (a real disk, not a tmpfs), removed on drop.
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// The median of some durations.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `prodigy ARGS` on `home` `runs` times, stdout to /dev/null, under
/// `/usr/bin/time`: the median wall time of the whole process and the last peak RSS (KiB).
pub fn time_cli(home: &Path, args: &[&str], runs: usize) -> (Duration, u64) {
    let exe = env!("CARGO_BIN_EXE_prodigy");
    let mut times = Vec::new();
    let mut rss = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let out = Command::new("/usr/bin/time")
            .args(["-f", "%M", exe])
            .args(args)
            .env("PRODIGY_HOME", home)
            .stdout(std::process::Stdio::null())
            .output()
            .unwrap();
        times.push(start.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        rss = String::from_utf8_lossy(&out.stderr)
            .trim()
            .lines()
            .last()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
    }
    (median(times), rss)
}

/// Runs `git -C dir args…` with a pinned identity; its standard output, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@example.com")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
